"""What the sm90 kernel supports: asked by ``sagecute.dispatch``.

Must not import CuTe DSL (dispatch stays cheap and works where it is missing).
"""

import functools
import importlib.util

SUPPORTED_HEAD_DIMS = (64, 128)  # smaller head dims are zero padded by the API
SUPPORTED_PV_ACCUM = ("fp32+fp32", "fp32", "fp32+fp16")
SUPPORTED_GRANULARITY = ("per_thread", "per_warp")


@functools.lru_cache(maxsize=1)
def _kernel_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("cutlass", "sagecute.kernels.sm90.launch"))


def can_implement(cfg) -> tuple[bool, str]:
    """(ok, reason) for a ``dispatch.CallConfig``."""
    if cfg.pv_accum_dtype not in SUPPORTED_PV_ACCUM:
        return False, f"pv_accum_dtype={cfg.pv_accum_dtype!r} has no sm90 kernel (supported: {', '.join(SUPPORTED_PV_ACCUM)})"
    if cfg.qk_quant_gran not in SUPPORTED_GRANULARITY:
        return False, f"qk_quant_gran={cfg.qk_quant_gran!r} has no sm90 kernel"
    if not _kernel_available():
        return False, "the sm90 kernel or nvidia-cutlass-dsl is not installed"
    return True, "sm90 INT8-QK/FP8-PV kernel"
