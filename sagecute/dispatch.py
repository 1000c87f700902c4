"""Which implementation runs a call: the only module that reads the GPU's
compute capability.

sm90 -> ``kernels/sm90``; sm100 -> ``kernels/sm100``; sm120 -> ``kernels/sm120``.
Any other device, and any configuration the arch's kernel cannot run, falls
back to ``torch.nn.functional.scaled_dot_product_attention`` with a one-time
warning, unless the caller named a backend explicitly, which then raises
``NotImplementedError`` saying what is missing.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from dataclasses import dataclass

import torch

BACKENDS = ("auto", "sm90", "sm100", "sm120", "reference", "sdpa")


@dataclass(frozen=True)
class CallConfig:
    """What the kernel choice depends on (all static per call)."""

    head_dim: int
    dtype: torch.dtype
    is_causal: bool
    qk_quant_gran: str
    pv_accum_dtype: str
    smooth_k: bool
    smooth_v: bool
    smooth_q: bool
    has_mask: bool = False


@dataclass(frozen=True)
class KernelSpec:
    """The chosen implementation and why."""

    backend: str  # "sm90" | "reference" | "sdpa" | ...
    reason: str


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


def device_arch(device: torch.device) -> str | None:
    """'sm90', 'sm100', 'sm120', other 'smXY', or None for a non-CUDA device."""
    if device.type != "cuda":
        return None
    major, minor = _capability(device.index if device.index is not None else torch.cuda.current_device())
    return f"sm{major}{minor}"


def _arch_family(arch: str | None) -> str | None:
    if arch in ("sm90",):
        return "sm90"
    if arch in ("sm100", "sm103"):
        return "sm100"
    if arch in ("sm120", "sm121"):
        return "sm120"
    return None


def _can_implement(family: str, cfg: CallConfig) -> tuple[bool, str]:
    if cfg.has_mask:
        return False, "attn_mask is not supported by the quantized kernels"
    if cfg.head_dim > 128:
        return False, f"head_dim {cfg.head_dim} > 128 has no quantized kernel"
    # Each arch package answers without importing CuTe DSL.
    module = {"sm90": "sm90.support", "sm100": "sm100", "sm120": "sm120"}[family]
    return importlib.import_module(f".kernels.{module}", __package__).can_implement(cfg)


def select(device: torch.device, cfg: CallConfig, backend: str = "auto") -> KernelSpec:
    """Pick the implementation for one call (see module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("reference", "sdpa"):
        return KernelSpec(backend, "requested explicitly")
    return select_for_arch(device_arch(device), cfg, backend, device_type=device.type)


def select_for_arch(arch: str | None, cfg: CallConfig, backend: str = "auto", device_type: str = "cuda") -> KernelSpec:
    """``select`` for a given arch string ('sm90', ...; None: not a GPU)."""
    family = _arch_family(arch)
    if backend != "auto":
        if family != backend:
            raise NotImplementedError(
                f"backend={backend!r} needs a {backend} GPU, but the inputs are on "
                f"{arch or device_type}"
            )
    if family is None:
        reason = "inputs are not on a CUDA GPU" if arch is None else f"no quantized kernel for {arch}"
        return KernelSpec("sdpa", reason)
    ok, why = _can_implement(family, cfg)
    if ok:
        return KernelSpec(family, why)
    if backend != "auto":
        raise NotImplementedError(f"backend={backend!r} cannot run this call: {why}")
    return KernelSpec("sdpa", why)


_warned: set[str] = set()


def warn_fallback_once(spec: KernelSpec) -> None:
    """One warning per distinct reason, so a model's 1000 calls say it once."""
    if spec.reason in _warned:
        return
    _warned.add(spec.reason)
    msg = f"sagecute: falling back to scaled_dot_product_attention ({spec.reason})"
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def describe(arch: str | None) -> list[tuple[str, str, str]]:
    """(configuration, backend, reason) rows for ``python -m sagecute info``."""
    rows = []
    for hd in (64, 128, 256):
        for causal in (False, True):
            for pv in ("fp32+fp32", "fp32", "fp32+fp16"):
                cfg = CallConfig(hd, torch.bfloat16, causal, "per_thread", pv, True, False, False)
                spec = select_for_arch(arch, cfg)
                rows.append((f"hd{hd} causal={causal} pv={pv}", spec.backend, spec.reason))
    return rows
