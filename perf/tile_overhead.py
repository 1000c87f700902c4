"""Where the sm90 kernel's time goes per work tile (GPU): kernel-only timings over
shapes of equal FLOPs that differ in KV blocks per tile, and config A/B.

    python perf/tile_overhead.py [--configs default,no_l2_sections] [--iters 20]
    python perf/tile_overhead.py --ncu-one 1024   # one launch, for ncu to profile

Q goes in as bf16 (quantized in the kernel, as the API runs it); K/V pre-quantized.
For each head_dim, ``t(Lq, Lk)`` at B4 H32 is timed for (1k,1k), (8k,1k), (1k,8k),
(8k,8k). With a per-tile cost of ``x`` blocks and ``c`` per block,
t ~ tiles/SMs * (blocks + x) * c; the fit of x uses (8k,1k) [8 blocks per tile] and
(8k,8k) [64]: same tile count, so waves and launch costs cancel.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sagecute.kernels.sm90.bench import _variant, make_runner as _make_runner  # noqa: E402
from sagecute.perf.timing import loop_ms  # noqa: E402
from sagecute.quant_layout import QuantGranularity  # noqa: E402


def make_runner(b, h, lq, lk, d, causal, config, pv):
    """The API's kernel path: bf16 Q quantized in the kernel, per_thread scales."""
    return _make_runner(b, h, lq, lk, d, causal, QuantGranularity.PER_THREAD, pv, config, fused_q=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default="default")
    p.add_argument("--dims", default="128,64")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--causal-only", action="store_true")
    p.add_argument("--only-8k", action="store_true", help="just L8k: full and causal (config A/B)")
    p.add_argument("--ncu-one", type=int, default=0, help="L: run B4 H32 L D128 once (after warm-up)")
    args = p.parse_args()
    b, h = 4, 32
    if args.ncu_one:
        cfg, pv = _variant("default", 128)
        run = make_runner(b, h, args.ncu_one, args.ncu_one, 128, False, cfg, pv)
        run()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push("profiled")
        run()
        torch.cuda.synchronize()
        return
    K = 1024
    for d in [int(x) for x in args.dims.split(",")]:
        for name in args.configs.split(","):
            cfg, pv = _variant(name, d)
            if args.only_8k:
                for causal in (False, True):
                    ms = loop_ms(make_runner(b, h, 8 * K, 8 * K, d, causal, cfg, pv), args.iters)
                    tops = 4 * b * h * (8 * K) ** 2 * d / ms / 1e9 / (2 if causal else 1)
                    print(f"{name:16s} d{d} L8192 {'causal' if causal else 'full  '}: {ms:8.3f} ms {tops:7.1f} TOPS",
                          flush=True)
                continue
            if not args.causal_only:
                t = {}
                for lq, lk in ((K, K), (8 * K, K), (K, 8 * K), (8 * K, 8 * K)):
                    ms = loop_ms(make_runner(b, h, lq, lk, d, False, cfg, pv), args.iters)
                    t[(lq, lk)] = ms
                    tops = 4 * b * h * lq * lk * d / ms / 1e9
                    print(f"{name:16s} d{d} Lq{lq:5d} Lk{lk:5d} full  : {ms:8.3f} ms {tops:7.1f} TOPS", flush=True)
                # t ~ (blocks + x) * c at equal tile counts: 8 and 64 blocks per tile
                r = t[(8 * K, 8 * K)] / t[(8 * K, K)]
                x = (64 - 8 * r) / (r - 1)
                print(f"{name:16s} d{d} per-tile cost ~ {x:.2f} KV blocks", flush=True)
            for l in (8 * K, 16 * K):
                ms = loop_ms(make_runner(b, h, l, l, d, True, cfg, pv), args.iters)
                tops = 2 * b * h * l * l * d / ms / 1e9
                print(f"{name:16s} d{d} L{l:5d} causal: {ms:8.3f} ms {tops:7.1f} TOPS", flush=True)


if __name__ == "__main__":
    main()
