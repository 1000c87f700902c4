"""Error metrics of the SageAttention papers (numerics.md §8)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ErrorMetrics:
    cosine: float
    rel_l1: float
    rmse: float
    max_abs: float

    def __str__(self) -> str:
        return f"cos {self.cosine:.6f} rel-L1 {self.rel_l1:.3e} RMSE {self.rmse:.3e} max {self.max_abs:.3e}"


def error_metrics(out: torch.Tensor, ref: torch.Tensor) -> ErrorMetrics:
    """Cosine similarity, relative L1, RMSE and max |error| of ``out`` vs ``ref``
    (flattened, computed in fp64). NaN anywhere makes every metric NaN."""
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: {tuple(out.shape)} vs {tuple(ref.shape)}")
    a = ref.detach().double().flatten()
    b = out.detach().double().flatten().to(a.device)
    diff = a - b
    cos = (a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300)
    rel_l1 = diff.abs().sum() / a.abs().sum().clamp_min(1e-300)
    rmse = diff.pow(2).mean().sqrt()
    return ErrorMetrics(float(cos), float(rel_l1), float(rmse), float(diff.abs().max()))
