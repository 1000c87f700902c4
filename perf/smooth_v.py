"""smooth_v on sm90 (GPU): what V mean subtraction costs and what it buys (Note [V mean]
in sagecute/kernels/common/quant_qkv.py).

    python perf/smooth_v.py [--L 1024,8192] [--D 128,64]

1. Accuracy against fp64 attention, with and without smooth_v, on the perf/accuracy.py
   input cases (B1 H8 L1024), for fp32+fp32 and fp32+fp16.
2. The K/V preprocessing alone (CUDA graph of 20 calls), and ``sageattn`` end to end
   (B4 H32 bf16), each with and without smooth_v, interleaved a/b/a/b.
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


def accuracy():
    print("accuracy vs fp64 exact, B1 H8 L1024 (cos / rel-L1), smooth_v off -> on")
    for d in (128, 64):
        for kind in ("normal", "outlier", "outlier_kv"):
            for pv in ("fp32+fp32", "fp32+fp16"):
                q, k, v = make_qkv(1, 8, 8, 1024, 1024, d, device="cuda", kind=kind)
                exact = reference.attention_exact(q, k, v)
                m = [error_metrics(sagecute.sageattn(q, k, v, smooth_v=sv, pv_accum_dtype=pv, backend="sm90"), exact)
                     for sv in (False, True)]
                print(f"  D{d} {kind:10s} {pv:9s}: cos {m[0].cosine:.6f} -> {m[1].cosine:.6f}, "
                      f"rel-L1 {m[0].rel_l1:.4%} -> {m[1].rel_l1:.4%}", flush=True)


def speed(lengths, dims):
    print("time, B4 H32 bf16: smooth_v off / on (a/b/a/b)")
    for d in dims:
        for length in lengths:
            q, k, v = (torch.randn(4, 32, length, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            v = v + torch.randn(4, 32, 1, d, device="cuda", dtype=torch.bfloat16)
            prep = [lambda sv=sv: kern.quantize_qkv_cute(q, k, v, QuantGranularity.PER_THREAD, True, with_q=False,
                                                         smooth_v=sv) for sv in (False, True)]
            e2e = [lambda sv=sv: sagecute.sageattn(q, k, v, smooth_v=sv, backend="sm90") for sv in (False, True)]
            p = [graph_ms(f) * 1e3 for f in prep + prep]
            e = [loop_ms(f) for f in e2e + e2e]
            tops = [4 * 4 * 32 * length * length * d / ms / 1e9 for ms in e]
            print(f"  D{d} L{length:5d}: prep {p[0]:7.1f} / {p[1]:7.1f} / {p[2]:7.1f} / {p[3]:7.1f} us; "
                  f"e2e {tops[0]:5.0f} / {tops[1]:5.0f} / {tops[2]:5.0f} / {tops[3]:5.0f} TOPS", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--L", default="1024,8192")
    p.add_argument("--D", default="128,64")
    args = p.parse_args()
    print(torch.cuda.get_device_name())
    accuracy()
    speed([int(x) for x in args.L.split(",")], [int(x) for x in args.D.split(",")])


if __name__ == "__main__":
    main()
