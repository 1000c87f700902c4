"""A handful of sm90 calls for compute-sanitizer (memcheck / racecheck).

    compute-sanitizer --tool memcheck --report-api-errors no python perf/sanitize_sm90.py
    compute-sanitizer --tool racecheck python perf/sanitize_sm90.py

(``--report-api-errors no``: CuTe DSL probes the driver with cuGetProcAddress while it
detects the GPU, which memcheck otherwise counts as errors; they are not the kernels'.)

Small shapes that hit the edges: Lq/Lk tails, L = 1, causal with Lq != Lk, GQA,
NHD strides. Exits non-zero if an output has NaN (every element is written).
"""

import sys

import torch

import sagecute

SHAPES = [
    # b, hq, hkv, lq, lk, d, causal, layout, smoothing ("": none, "v": smooth_v, "q": smooth_q)
    (1, 2, 2, 1, 1, 128, False, "HND", ""),
    (1, 4, 1, 130, 257, 128, True, "NHD", ""),
    (2, 4, 2, 257, 130, 64, True, "HND", ""),
    (1, 2, 2, 300, 300, 64, False, "NHD", ""),
    (1, 2, 1, 2100, 2300, 64, True, "HND", ""),  # three consumer warpgroups, causal (Lq >= 2048)
    (1, 4, 2, 130, 2100, 128, False, "HND", "v"),  # smooth_v, 8 splits with a stashed block
    (2, 2, 2, 77, 300, 64, True, "NHD", "v"),
    (1, 4, 2, 130, 2100, 128, True, "HND", "q"),  # smooth_q: delta_s bulk copies, 8 splits, a 2-slot ring
    (2, 2, 2, 77, 300, 128, False, "NHD", "q"),
    (2, 2, 2, 77, 300, 64, False, "NHD", "q"),  # once 1 racecheck hazard: the one-lane K release (release_k)
    # Note [Split count]: K/V plans per (Lk, head_dim)
    (1, 2, 1, 64, 4000, 128, False, "HND", ""),  # 8 splits, a 2-slot cp.async ring
    (1, 2, 2, 64, 4000, 64, False, "NHD", ""),  # 16 splits with a stashed block
    (1, 2, 2, 64, 8300, 128, False, "HND", "v"),  # smooth_v, 16 splits with a stashed block
]


def main() -> int:
    # ``python perf/sanitize_sm90.py q``: only the shapes with that smoothing
    only = sys.argv[1] if len(sys.argv) > 1 else None
    bad = 0
    for b, hq, hkv, lq, lk, d, causal, layout, smooth in SHAPES:
        if only is not None and smooth != only:
            continue
        print(f"run b{b} h{hq}/{hkv} q{lq} k{lk} d{d} causal={causal} {layout} {smooth}", flush=True)
        shape_q = (b, hq, lq, d) if layout == "HND" else (b, lq, hq, d)
        shape_k = (b, hkv, lk, d) if layout == "HND" else (b, lk, hkv, d)
        q = torch.randn(shape_q, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(shape_k, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(shape_k, device="cuda", dtype=torch.bfloat16)
        o, lse = sagecute.sageattn(q, k, v, layout, causal, return_lse=True, backend="sm90",
                                   smooth_v=smooth == "v", smooth_q=smooth == "q")
        torch.cuda.synchronize()
        ok = bool(torch.isfinite(o).all()) and bool(torch.isfinite(lse).all())
        bad += not ok
        print(f"b{b} h{hq}/{hkv} q{lq} k{lk} d{d} causal={causal} {layout}{' smooth_' + smooth if smooth else ''}: "
              f"{'ok' if ok else 'NON-FINITE'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
