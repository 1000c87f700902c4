"""Blackwell consumer (sm120, RTX 50xx) kernels: mma.sync block-scaled NVFP4.

Not written yet: dispatch falls back to SDPA on sm120. The numerics they will
follow are emulated by ``sagecute.reference.sageattn_reference(arch="sm120")``.
"""


def can_implement(cfg) -> tuple[bool, str]:
    return False, "the sm120 kernel is not implemented yet"
