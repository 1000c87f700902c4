"""Blackwell datacenter (sm100, B200/GB200) kernels: tcgen05 + TMEM, NVFP4.

Not written yet: dispatch falls back to SDPA on sm100. The numerics they will
follow are emulated by ``sagecute.reference.sageattn_reference(arch="sm100")``.
"""


def can_implement(cfg) -> tuple[bool, str]:
    return False, "the sm100 kernel is not implemented yet"
