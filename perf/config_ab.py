"""Kernel-only A/B of sm90 kernel configs over L, on the API's kernel path (bf16 Q
quantized in the kernel), with each config's error against the reference first. GPU.

    python perf/config_ab.py [--D 64,128] [--L 1024,2048,4096,8192] [--modes causal,full]
        [--configs default,three_wg] [--rounds 2]

Configs are ``sagecute.kernels.sm90.bench.CONFIG_VARIANTS`` names, timed interleaved
(``rounds`` passes over the list) so clock drift hits them alike.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sagecute.kernels.sm90.bench import _variant, make_runner, tops  # noqa: E402
from sagecute.perf.timing import loop_ms  # noqa: E402
from sagecute.quant_layout import QuantGranularity  # noqa: E402


def check(name: str, d: int, causal: bool) -> None:
    """The config's output against the emulation and fp64 on a tail-length shape."""
    import torch

    from sagecute.metrics import error_metrics
    from tests.test_sm90_gpu import run_case

    cfg, pv = _variant(name, d)
    r = run_case(d, causal, 1000, 1000, 2, 8, 8, "HND", torch.bfloat16, QuantGranularity.PER_THREAD, pv,
                 kind="outlier", config=cfg, fused_q=True)
    lse_err = (r["lse"] - r["lse_ref"]).abs().max().item()
    print(f"check {name:16s} d{d} {'causal' if causal else 'full  '}: vs emulation {error_metrics(r['o'], r['o_ref'])}; "
          f"vs fp64 {error_metrics(r['o'], r['o_exact'])}; emulation vs fp64 "
          f"{error_metrics(r['o_ref'], r['o_exact'])}; lse max err {lse_err:.2e}; "
          f"nan {int(torch.isnan(r['o']).sum())}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--D", default="64")
    p.add_argument("--L", default="1024,2048,4096,8192")
    p.add_argument("--modes", default="causal")
    p.add_argument("--configs", default="default,three_wg")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-check", action="store_true")
    args = p.parse_args()
    names = args.configs.split(",")
    modes = [m == "causal" for m in args.modes.split(",")]
    dims = [int(x) for x in args.D.split(",")]
    if not args.no_check:
        for d in dims:
            for causal in modes:
                for name in names:
                    check(name, d, causal)
    for d in dims:
        for causal in modes:
            for L in [int(x) for x in args.L.split(",")]:
                for rnd in range(args.rounds):
                    for name in names:
                        cfg, pv = _variant(name, d)
                        run = make_runner(4, 32, L, L, d, causal, QuantGranularity.PER_THREAD, pv, cfg, fused_q=True)
                        ms = loop_ms(run, 20)
                        print(f"{name:16s} d{d} {'causal' if causal else 'full  '} L{L:6d} round {rnd}: {ms:8.3f} ms "
                              f"{tops(4, 32, L, L, d, causal, ms):7.1f} TOPS", flush=True)


if __name__ == "__main__":
    main()
