"""smooth_v / smooth_q on sm90 (GPU): what the V mean subtraction (Note [V mean] in
sagecute/kernels/common/quant_qkv.py) or the Q mean subtraction with delta_s (Note
[smooth_q on sm90] in sagecute/kernels/sm90/attn_fwd.py) costs and what it buys.

    python perf/smoothing.py [--flag smooth_v|smooth_q] [--L 1024,8192] [--D 128,64]

1. Accuracy against fp64 attention, with and without the flag, on the perf/accuracy.py
   input cases plus the flag's own (V or Q channel offsets; B1 H8 L1024), for
   fp32+fp32 and fp32+fp16.
2. The preprocessing alone (CUDA graph of 20 calls: K/V, and with smooth_q Q's mean
   too), and ``sageattn`` end to end (B4 H32 bf16), each without and with the flag,
   interleaved a/b/a/b.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import sagecute  # noqa: E402
from sagecute import reference  # noqa: E402
from sagecute.metrics import error_metrics  # noqa: E402
from sagecute.perf.timing import graph_ms, loop_ms  # noqa: E402
from sagecute.preprocess import kernels as kern  # noqa: E402
from sagecute.quant_layout import QuantGranularity  # noqa: E402
from tolerances import make_qkv  # noqa: E402


def accuracy(flag: str, dims, pvs):
    print(f"accuracy vs fp64 exact, B1 H8 L1024 (cos / rel-L1), {flag} off -> on")
    own = "outlier_kv" if flag == "smooth_v" else "outlier_q"
    for d in dims:
        for kind in ("normal", "outlier", own):
            for pv in pvs:
                q, k, v = make_qkv(1, 8, 8, 1024, 1024, d, device="cuda", kind=kind)
                exact = reference.attention_exact(q, k, v)
                m = [error_metrics(sagecute.sageattn(q, k, v, pv_accum_dtype=pv, backend="sm90", **{flag: on}), exact)
                     for on in (False, True)]
                print(f"  D{d} {kind:10s} {pv:9s}: cos {m[0].cosine:.6f} -> {m[1].cosine:.6f}, "
                      f"rel-L1 {m[0].rel_l1:.4%} -> {m[1].rel_l1:.4%}", flush=True)


def _prep(q, k, v, flag: str, on: bool):
    """The API's preprocessing launches for the flag off or on."""
    gran = QuantGranularity.PER_THREAD
    if flag == "smooth_q" and on:
        return kern.quantize_qkv_cute(q, k, v, gran, True, with_q=False, q_mean=kern.k_mean_cute(q))
    return kern.quantize_qkv_cute(q, k, v, gran, True, with_q=False, **({flag: on} if flag == "smooth_v" else {}))


def speed(flag: str, lengths, dims):
    print(f"time, B4 H32 bf16: {flag} off / on (a/b/a/b)")
    for d in dims:
        for length in lengths:
            q, k, v = (torch.randn(4, 32, length, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            v = v + torch.randn(4, 32, 1, d, device="cuda", dtype=torch.bfloat16)
            prep = [lambda on=on: _prep(q, k, v, flag, on) for on in (False, True)]
            e2e = [lambda on=on: sagecute.sageattn(q, k, v, backend="sm90", **{flag: on}) for on in (False, True)]
            p = [graph_ms(f) * 1e3 for f in prep + prep]
            e = [loop_ms(f) for f in e2e + e2e]
            tops = [4 * 4 * 32 * length * length * d / ms / 1e9 for ms in e]
            print(f"  D{d} L{length:5d}: prep {p[0]:7.1f} / {p[1]:7.1f} / {p[2]:7.1f} / {p[3]:7.1f} us; "
                  f"e2e {tops[0]:5.0f} / {tops[1]:5.0f} / {tops[2]:5.0f} / {tops[3]:5.0f} TOPS", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--flag", default="smooth_v", choices=("smooth_v", "smooth_q"))
    p.add_argument("--L", default="1024,8192")
    p.add_argument("--D", default="128,64")
    p.add_argument("--pv", default="fp32+fp32,fp32+fp16", help="PV accumulations of the accuracy table")
    args = p.parse_args()
    print(torch.cuda.get_device_name())
    dims = [int(x) for x in args.D.split(",")]
    accuracy(args.flag, dims, args.pv.split(","))
    speed(args.flag, [int(x) for x in args.L.split(",")], dims)


if __name__ == "__main__":
    main()
