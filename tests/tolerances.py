"""Shared accuracy checks: cosine, relative L1, RMSE (numerics.md §8)."""

from __future__ import annotations

import torch

from sagecute.metrics import ErrorMetrics, error_metrics
from sagecute.perf.accuracy import OUTLIER_SIGMA, V_BIAS_SIGMA  # the bench's input cases

Q_BIAS_SIGMA = 6.0  # "outlier_q": a per-(batch, head) Q channel offset

__all__ = ["ErrorMetrics", "error_metrics", "assert_close_metrics", "make_qkv"]


def assert_close_metrics(out, ref, *, max_rel_l1: float, min_cos: float = 0.0, label: str = "") -> ErrorMetrics:
    assert not torch.isnan(out).any(), f"{label}: output has NaN"
    m = error_metrics(out, ref)
    assert m.rel_l1 <= max_rel_l1, f"{label}: rel-L1 {m.rel_l1:.3e} > {max_rel_l1:.1e} ({m})"
    assert m.cosine >= min_cos, f"{label}: cosine {m.cosine:.6f} < {min_cos} ({m})"
    return m


def make_qkv(b, hq, hkv, lq, lk, d, *, dtype=torch.bfloat16, device="cpu", kind="normal", layout="HND"):
    """Random Q, K, V. kind: "normal"; "outlier" (K channel bias ~8 sigma, as
    in real LLM/DiT activations); "outlier_kv" (that, and a V channel bias ~1 sigma);
    "outlier_q" (K's and a Q channel bias ~6 sigma: what smooth_q removes); "peaked" (some queries aligned with keys,
    so softmax rows are sharp)."""
    def rnd(h, length):
        return torch.randn(b, h, length, d, device=device, dtype=torch.float32)

    q, k, v = rnd(hq, lq), rnd(hkv, lk), rnd(hkv, lk)
    if kind in ("outlier", "outlier_kv", "outlier_q"):
        k = k + OUTLIER_SIGMA * torch.randn(b, hkv, 1, d, device=device)
        if kind == "outlier_kv":
            v = v + V_BIAS_SIGMA * torch.randn(b, hkv, 1, d, device=device)
        if kind == "outlier_q":
            q = q + Q_BIAS_SIGMA * torch.randn(b, hq, 1, d, device=device)
    elif kind == "peaked":
        idx = torch.randint(0, lk, (lq,), device=device)
        kx = k.repeat_interleave(hq // hkv, dim=1)
        q = 0.3 * q + 3.0 * kx[:, :, idx] / kx[:, :, idx].norm(dim=-1, keepdim=True) * d**0.5
    elif kind != "normal":
        raise ValueError(kind)
    out = [t.to(dtype) for t in (q, k, v)]
    if layout == "NHD":
        out = [t.transpose(1, 2).contiguous() for t in out]
    return out
