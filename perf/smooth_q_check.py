"""smooth_q on sm90 (GPU), a determinism and LSE check: the same call 20 times must give
the same bits; and the LSE against the emulation and exact attention, for normal and
Q-offset inputs (tests/test_api_gpu.py::test_sageattn_smooth_q's cases, printed).

    python perf/smooth_q_check.py
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import sagecute  # noqa: E402
from sagecute import api, reference  # noqa: E402
from sagecute.metrics import error_metrics  # noqa: E402
from tolerances import make_qkv  # noqa: E402


def main():
    print(torch.cuda.get_device_name())
    for d, kind, smooth_k in ((128, "outlier_q", True), (128, "normal", True), (128, "outlier_q", False)):
        q, k, v = make_qkv(2, 8, 2, 1000, 1000, d, device="cuda", kind=kind)
        runs = [sagecute.sageattn(q, k, v, smooth_q=True, return_lse=True, backend="sm90", smooth_k=smooth_k)
                for _ in range(20)]
        same = all(torch.equal(o, runs[0][0]) and torch.equal(lse, runs[0][1]) for o, lse in runs)
        o, lse = runs[0]
        # the emulation given the preprocessing's own Q and K means (each torch's within
        # one ulp, which on Q-offset inputs moves the LSE by ~ its quantization error)
        qi = api.prepare_inputs(q, k, v, smooth_q=True, smooth_k=smooth_k).quantized
        emu, lse_emu = reference.sageattn_reference(q, k, v, return_lse=True, smooth_q=True, smooth_k=smooth_k,
                                                    q_mean=qi.q_mean, k_mean=qi.k_mean)
        emu_t, lse_emu_t = reference.sageattn_reference(q, k, v, return_lse=True, smooth_q=True, smooth_k=smooth_k)
        plain_o, plain_lse = sagecute.sageattn(q, k, v, return_lse=True, backend="sm90", smooth_k=smooth_k)
        exact, lse_exact = reference.attention_exact(q, k, v, return_lse=True)
        print(f"D{d} {kind:9s} smooth_k={smooth_k}: 20 runs identical {same}; O rel-L1 vs emu "
              f"{error_metrics(o, emu).rel_l1:.2e}, vs exact {error_metrics(o, exact).rel_l1:.4%} "
              f"(no smooth_q {error_metrics(plain_o, exact).rel_l1:.4%}); max |LSE - x|: emu "
              f"{(lse - lse_emu).abs().max():.4f} (emu with torch's means {(lse - lse_emu_t).abs().max():.4f}), "
              f"exact {(lse - lse_exact).abs().max():.4f}, emu vs exact "
              f"{(lse_emu - lse_exact).abs().max():.4f}, "
              f"no smooth_q vs exact {(plain_lse - lse_exact).abs().max():.4f}",
              flush=True)


if __name__ == "__main__":
    main()
