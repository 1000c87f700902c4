"""Host side of the sm90 attention kernel: compile cache, torch entry point, AOT compile.

* :func:`attn_fwd_sm90` runs the kernel on torch tensors (docs/kernel-contract.md).
* :func:`compile_attn_fwd_sm90` is the compile cache; its key is exactly what changes
  code generation (output dtype, head_dim, is_causal, granularity, pv_accum, has_lse,
  config). Batch, heads, sequence lengths and strides are dynamic: no recompiles.
  :func:`compile_attn_fwd_sm90_ffi` is the same kernel behind ``--enable-tvm-ffi``
  (the default, Note [Two launch paths]).
* :func:`compile_all_sm90` compiles every variant from fake tensors, no GPU needed
  (``CUTE_DSL_ARCH=sm_90a`` is set for it), and summarises each one's SASS.
* :func:`can_implement` says whether a problem is supported, and why not.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import cutlass
import cutlass.cute as cute

from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90, SageAttnFwdSm90
from sagecute.launch_path import LaunchPath, tvm_ffi_available  # noqa: F401 - re-exported for tests
from sagecute.plan_cache import cached_plan
from sagecute.quant_layout import (
    LOG2E,
    SM90_GEOMETRY,
    PvAccum,
    QuantGranularity,
)

_OUT_DTYPES = {"bfloat16": cutlass.BFloat16, "float16": cutlass.Float16}
# q as the kernel takes it: int8 (quantized, with q_scale), or bf16/fp16 quantized in
# the kernel (Note [Fused Q quantization] in attn_fwd.py)
_Q_DTYPES = {"int8": cutlass.Int8, "bfloat16": cutlass.BFloat16, "float16": cutlass.Float16}


def _cutlass_dtype(dtype, table: dict, what: str) -> type:
    """torch dtype / cutlass type / name -> the cutlass type ``table`` allows."""
    if isinstance(dtype, type) and issubclass(dtype, cutlass.Numeric):
        return dtype
    name = str(dtype).replace("torch.", "")
    if name not in table:
        raise ValueError(f"{what} must be {' or '.join(table)}, got {dtype}")
    return table[name]


def _q_dtype(dtype) -> type:
    return _cutlass_dtype(dtype, _Q_DTYPES, "q")


def _out_dtype(dtype) -> type:
    return _cutlass_dtype(dtype, _OUT_DTYPES, "output dtype")


def can_implement(
    head_dim: int,
    dtype,
    granularity: QuantGranularity = QuantGranularity.PER_THREAD,
    pv_accum: PvAccum = PvAccum.FP32_FP32,
    **_ignored,
) -> tuple[bool, str]:
    """Whether the sm90 kernel supports this problem; ``(False, reason)`` otherwise."""
    try:
        out = _out_dtype(dtype)
    except ValueError as e:
        return False, str(e)
    return SageAttnFwdSm90.can_implement(out, head_dim, granularity, pv_accum)


# ----------------------------------------------------------------------------- fake tensors
def _sym():
    return cute.sym_int()


def _fake_args(out_dtype, head_dim: int, has_lse: bool, ffi: bool = False, o_div: int = 1, q_dtype=cutlass.Int8,
               smooth_v: bool = False, smooth_q: bool = False):
    """Fake tensors with symbolic sizes/strides (last stride 1). ``ffi``: the TVM-FFI
    entry's contract (V as uint8, TMA operands with 16-byte multiple strides). A
    bf16/fp16 ``q_dtype`` (fused Q quantization) has no q_scale; ``smooth_v`` adds
    v_mean, ``smooth_q`` q_mean and delta_s (16-byte aligned rows)."""
    B, Hq, Hkv, Lq, Lk, Lp = (_sym() for _ in range(6))
    nq, nk = _sym(), _sym()
    D = head_dim
    fake = cute.runtime.make_fake_tensor

    def contig(dtype, shape, align, div=1):
        # 4-d/3-d tensors, last stride 1, other strides dynamic
        strides = tuple(cute.sym_int64(divisibility=div) for _ in shape[:-1]) + (1,)
        return fake(dtype, shape, stride=strides, assumed_align=align)

    tma_div = 16 if ffi else 1  # elements of 1 byte: 16-byte strides for TMA
    if q_dtype is cutlass.Int8:
        q = contig(cutlass.Int8, (B, Hq, Lq, D), 16, tma_div)
        qs = contig(cutlass.Float32, (B, Hq, nq), 4)
    else:
        q, qs = contig(q_dtype, (B, Hq, Lq, D), 16, 8), None
    k = contig(cutlass.Int8, (B, Hkv, Lk, D), 16, tma_div)
    ks = contig(cutlass.Float32, (B, Hkv, nk), 4)
    v = contig(cutlass.Uint8 if ffi else cutlass.Float8E4M3FN, (B, Hkv, D, Lp), 16, tma_div)
    vs = contig(cutlass.Float32, (B, Hkv, D), 4)
    o = contig(out_dtype, (B, Hq, Lq, D), 16, o_div)
    lse = contig(cutlass.Float32, (B, Hq, Lq), 4) if has_lse else None
    vm = contig(cutlass.Float32, (B, Hkv, D), 4) if smooth_v else None
    qm = contig(q_dtype, (B, Hq, 1, D), 16, 8) if smooth_q else None
    delta = contig(cutlass.Float32, (B, Hq, Lp), 16, 4) if smooth_q else None
    return q, qs, k, ks, v, vs, o, lse, vm, qm, delta


def _o_stride_div(config: AttnFwdConfigSm90) -> int:
    """What the config's O store needs of o's strides, in (2-byte) elements."""
    return 8 if config.tma_o_store else 2 if config.vec_o_store else 1


def _fit_o_store(config: AttnFwdConfigSm90, o) -> AttnFwdConfigSm90:
    """The config's O store, or the widest one o's strides allow (o's base is 16-byte
    aligned: _check_pointers)."""
    strides = o.stride()[:-1]
    if config.tma_o_store and any(st % 8 for st in strides):
        config = dataclasses.replace(config, tma_o_store=False)  # TMA: 16-byte strides
    if config.vec_o_store and any(st % 2 for st in strides):
        config = dataclasses.replace(config, vec_o_store=False)  # odd strides: 16-bit stores
    return config


_COMPILED: dict = {}


def _compile_key(out_dtype, head_dim, is_causal, granularity, pv_accum, has_lse, config, q_dtype=cutlass.Int8,
                 smooth_v=False, smooth_q=False) -> "Sm90Variant":
    """Exactly what changes the generated code (STYLE.md): nothing shape-dependent; the
    dtypes as cutlass types."""
    return Sm90Variant(_out_dtype(out_dtype), head_dim, bool(is_causal), granularity, pv_accum, has_lse, config,
                       _q_dtype(q_dtype), bool(smooth_v), bool(smooth_q))  # fmt: skip


def _kernel_and_fake_args(key: "Sm90Variant", ffi: bool = False) -> tuple:
    """The kernel of a compile key and fake arguments with symbolic shapes for it."""
    kernel = SageAttnFwdSm90(*key)
    args = _fake_args(key.out_dtype, key.head_dim, key.has_lse, ffi=ffi, o_div=_o_stride_div(key.config),
                      q_dtype=key.q_dtype, smooth_v=key.smooth_v, smooth_q=key.smooth_q)
    return kernel, args


def compile_attn_fwd_sm90(
    out_dtype,
    head_dim: int,
    is_causal: bool,
    granularity: QuantGranularity,
    pv_accum: PvAccum,
    has_lse: bool,
    config: AttnFwdConfigSm90,
    q_dtype=cutlass.Int8,
    smooth_v: bool = False,
    smooth_q: bool = False,
    example_args: Optional[tuple] = None,
):
    """Compile (cached) one kernel variant; the cache key is exactly the arguments
    before ``example_args``. ``example_args`` are the runtime arguments of the first
    call (cute tensors with dynamic layouts, scalars, stream); without them the
    variant is compiled from fake tensors with symbolic shapes (no GPU needed)."""
    key = _compile_key(out_dtype, head_dim, is_causal, granularity, pv_accum, has_lse, config, q_dtype, smooth_v,
                       smooth_q)
    if example_args is not None and key in _COMPILED:
        return _COMPILED[key]
    kernel, fake_args = _kernel_and_fake_args(key)
    if example_args is None:
        # AOT check only: not cached, the runtime path compiles from its real arguments
        return cute.compile(kernel, *fake_args, cutlass.Float32(1.0), cutlass.Int32(1), cute.runtime.make_fake_stream())
    compiled = cute.compile(kernel, *example_args)
    _COMPILED[key] = compiled
    return compiled


_COMPILED_FFI: dict = {}


def compile_attn_fwd_sm90_ffi(
    out_dtype,
    head_dim: int,
    is_causal: bool,
    granularity: QuantGranularity,
    pv_accum: PvAccum,
    has_lse: bool,
    config: AttnFwdConfigSm90,
    q_dtype=cutlass.Int8,
    smooth_v: bool = False,
    smooth_q: bool = False,
):
    """The TVM-FFI entry of the same kernel (Note [Two launch paths]): compiled once per
    key from fake tensors with symbolic shapes; takes torch tensors directly."""
    key = _compile_key(out_dtype, head_dim, is_causal, granularity, pv_accum, has_lse, config, q_dtype, smooth_v,
                       smooth_q)
    if key not in _COMPILED_FFI:
        kernel, args = _kernel_and_fake_args(key, ffi=True)
        _COMPILED_FFI[key] = cute.compile(
            kernel, *args, cutlass.Float32(1.0), cutlass.Int32(1),
            cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True),
            options="--enable-tvm-ffi",
        )
    return _COMPILED_FFI[key]


def num_compiled() -> int:
    """Number of cached compiled variants (tests check a new seqlen adds none)."""
    return len(_COMPILED) + len(_COMPILED_FFI)


_PATH = LaunchPath("sm90", "SAGECUTE_SM90_TVM_FFI")  # Note [Two launch paths]
launch_path = _PATH.current
set_launch_path = _PATH.force


# ----------------------------------------------------------------------------- torch entry
def _to_cute(t, align=16):
    import torch
    from cutlass.cute.runtime import from_dlpack

    if t.dtype == torch.float8_e4m3fn:
        ct = from_dlpack(t.view(torch.uint8).detach(), assumed_align=align)
        ct.element_type = cutlass.Float8E4M3FN
    else:
        ct = from_dlpack(t.detach(), assumed_align=align)
    return ct.mark_layout_dynamic(leading_dim=t.ndim - 1)


def _check_layouts(q_int8, q_scale, k_int8, k_scale, v_fp8, v_scale, o, lse, v_mean=None, q_mean=None,
                   delta_s=None) -> None:
    """dtypes, devices, and what TMA needs of strides: last stride 1, 16-byte multiples."""
    import torch

    want = {"k_int8": (k_int8, torch.int8), "v_fp8": (v_fp8, torch.float8_e4m3fn),
            "k_scale": (k_scale, torch.float32), "v_scale": (v_scale, torch.float32)}
    if q_scale is None:  # fused Q quantization: q is bf16/fp16
        if q_int8.dtype == torch.int8:
            raise ValueError("q_scale is None but q is int8: pass its fp32 q_scale [B,Hq,nq], "
                             "or a bf16/fp16 q for the kernel to quantize")
        want["q"] = (q_int8, q_int8.dtype if q_int8.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16)
    else:
        want.update(q_int8=(q_int8, torch.int8), q_scale=(q_scale, torch.float32))
    if lse is not None:
        want["lse"] = (lse, torch.float32)
        if tuple(lse.shape) != tuple(q_int8.shape[:3]):
            raise ValueError(f"lse must be [B,Hq,Lq], got {tuple(lse.shape)}")
    if v_mean is not None:
        want["v_mean"] = (v_mean, torch.float32)
        if tuple(v_mean.shape) != tuple(v_scale.shape):
            raise ValueError(f"v_mean must be [B,Hkv,D] like v_scale, got {tuple(v_mean.shape)}")
    if (q_mean is None) != (delta_s is None):
        raise ValueError("smooth_q needs both q_mean and delta_s")
    if q_mean is not None:
        if q_scale is not None:
            raise ValueError("smooth_q needs the fused Q quantization: a bf16/fp16 q and q_scale None")
        b, hq, _, d = q_int8.shape
        want.update(q_mean=(q_mean, q_int8.dtype), delta_s=(delta_s, torch.float32))
        if tuple(q_mean.shape) != (b, hq, 1, d):
            raise ValueError(f"q_mean must be [B,Hq,1,D] = {(b, hq, 1, d)}, got {tuple(q_mean.shape)}")
        if tuple(delta_s.shape) != (b, hq, v_fp8.shape[-1]):
            raise ValueError(f"delta_s must be [B,Hq,Lpad] = {(b, hq, v_fp8.shape[-1])}, got {tuple(delta_s.shape)}")
        if any(st % 8 for st in q_mean.stride()[:-1]) or any(st % 4 for st in delta_s.stride()[:-1]):
            raise ValueError("q_mean and delta_s need 16-byte multiple strides")
    for name, (t, dtype) in want.items():
        if t.dtype != dtype:
            raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
        if t.device != o.device:
            raise ValueError(f"{name} is on {t.device}, o on {o.device}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} needs a contiguous last dim")
    for name, t in (("q_int8", q_int8), ("k_int8", k_int8), ("v_fp8", v_fp8)):
        if any((st * t.element_size()) % 16 for st in t.stride()[:-1]):
            raise ValueError(f"{name} must be 16-byte aligned with 16-byte multiple strides (TMA)")


def _check_pointers(q_int8, k_int8, v_fp8, o, q_mean=None, delta_s=None) -> None:
    """16-byte aligned bases (TMA, and o's vector stores); the one check that
    depends on more than the argument signature, so it runs on every call."""
    extra = (q_mean.data_ptr() | delta_s.data_ptr()) if q_mean is not None else 0
    if (q_int8.data_ptr() | k_int8.data_ptr() | v_fp8.data_ptr() | o.data_ptr() | extra) % 16 == 0:
        return
    named = (("q_int8", q_int8), ("k_int8", k_int8), ("v_fp8", v_fp8))
    if q_mean is not None:
        named += (("q_mean", q_mean), ("delta_s", delta_s))
    for name, t in named:
        if t.data_ptr() % 16:
            raise ValueError(f"{name} must be 16-byte aligned with 16-byte multiple strides (TMA)")
    raise ValueError("o must be 16-byte aligned")


@functools.lru_cache(maxsize=16)
def _num_sms(device_index: int) -> int:
    import torch

    return torch.cuda.get_device_properties(device_index).multi_processor_count


class _LaunchPlan:
    """What the checks of one argument signature concluded: the compile key, the
    grid cap, and the TVM-FFI function once compiled (None: nothing to launch)."""

    __slots__ = ("key", "max_ctas", "ffi")

    def __init__(self, key, max_ctas) -> None:
        self.key, self.max_ctas, self.ffi = key, max_ctas, None


# Signature -> _LaunchPlan. Shapes, strides, dtypes and devices decide every check
# but the pointers' alignment, and the compile key; re-deriving them (and hashing
# the key) on every call was a third of a short call's host time.
_PLANS: dict = {}


def _signature(tensors, is_causal, granularity, pv_accum, config) -> tuple:
    return (
        *[(t.shape, t.stride(), t.dtype, t.device) if t is not None else None for t in tensors],
        is_causal, granularity, pv_accum, config,
    )  # fmt: skip


def _plan(q_int8, q_scale, k_int8, k_scale, v_fp8, v_scale, o, lse, v_mean, q_mean, delta_s, is_causal, granularity,
          pv_accum, config):
    B, Hq, Lq, D = q_int8.shape
    Bk, Hkv, Lk, Dk = k_int8.shape
    if (Bk, Dk) != (B, D) or Hq % Hkv != 0:
        raise ValueError(f"bad q/k shapes {tuple(q_int8.shape)} {tuple(k_int8.shape)}")
    g = SM90_GEOMETRY
    if tuple(v_fp8.shape) != (B, Hkv, D, g.padded_kv_len(Lk)):
        raise ValueError(f"v_fp8 must be [B,Hkv,D,{g.padded_kv_len(Lk)}], got {tuple(v_fp8.shape)}")
    q_short = q_scale is not None and q_scale.shape[-1] < g.num_q_scales(Lq, granularity)
    if q_short or k_scale.shape[-1] < g.num_k_scales(Lk, granularity):
        raise ValueError("q_scale/k_scale too short for the granularity")
    if o.shape != q_int8.shape or o.stride(-1) != 1:
        raise ValueError("o must be [B,Hq,Lq,D] with last stride 1")
    _check_layouts(q_int8, q_scale, k_int8, k_scale, v_fp8, v_scale, o, lse, v_mean, q_mean, delta_s)
    if Lq == 0 or Lk == 0 or B == 0:
        return _LaunchPlan(None, 0)
    q_dtype = _q_dtype(q_int8.dtype)
    ok, why = SageAttnFwdSm90.can_implement(_out_dtype(o.dtype), D, granularity, pv_accum, q_dtype)
    if not ok:
        raise ValueError(why)
    if config is None and q_mean is not None:  # smooth_q's spill-free config, without PDL
        config = dataclasses.replace(AttnFwdConfigSm90.after_preprocess(D, is_causal, granularity, Lq, True), pdl=False)
    config = config or AttnFwdConfigSm90.tuned(D, is_causal, granularity, q_dtype is not cutlass.Int8, Lq)
    config = _fit_o_store(config, o)
    key = _compile_key(o.dtype, D, is_causal, granularity, pv_accum, lse is not None, config, q_dtype,
                       v_mean is not None, q_mean is not None)
    return _LaunchPlan(key, _num_sms(o.device.index or 0) if config.persistent else 2**30)


def attn_fwd_sm90(
    q_int8,
    q_scale,
    k_int8,
    k_scale,
    v_fp8,
    v_scale,
    o,
    lse,
    *,
    sm_scale: float,
    is_causal: bool,
    granularity: QuantGranularity,
    pv_accum: PvAccum,
    config: Optional[AttnFwdConfigSm90] = None,
    v_mean=None,
    q_mean=None,
    delta_s=None,
) -> None:
    """Run the sm90 kernel; writes ``o`` (and ``lse`` when given) in place.

    Shapes (HND): q_int8 [B,Hq,Lq,D] int8 with q_scale [B,Hq,nq] fp32, or q_int8 the
    bf16/fp16 Q itself with q_scale None (quantized in the kernel, per_thread/per_warp
    only: Note [Fused Q quantization] in attn_fwd.py), k_int8 [B,Hkv,Lk,D],
    k_scale [B,Hkv,nk], v_fp8 [B,Hkv,D,Lpad] e4m3, v_scale [B,Hkv,D], o [B,Hq,Lq,D]
    bf16/fp16 with any strides (last stride 1), lse None or fp32 [B,Hq,Lq], v_mean None
    or fp32 [B,Hkv,D]: V was quantized minus it (smooth_v), the kernel adds it to O.
    ``q_mean`` [B,Hq,1,D] (q's dtype) and ``delta_s`` fp32 [B,Hq,Lpad], both or neither,
    with a bf16/fp16 q (smooth_q, Note [smooth_q on sm90] in attn_fwd.py): Q is
    quantized minus q_mean and every score of key j gets delta_s[j] back.
    """
    args = (q_int8, q_scale, k_int8, k_scale, v_fp8, v_scale, o, lse, v_mean, q_mean, delta_s)
    plan = launch_plan(args, is_causal, granularity, pv_accum, config)
    _check_pointers(q_int8, k_int8, v_fp8, o, q_mean, delta_s)
    if plan.key is None:
        return
    scale_log2 = float(sm_scale * LOG2E)
    _PATH.launch(
        lambda: _launch_ffi(plan, *args, scale_log2),
        lambda: _launch_pointer(plan.key, *args, sm_scale, plan.max_ctas),
    )  # fmt: skip


def launch_plan(args: tuple, is_causal, granularity, pv_accum, config) -> _LaunchPlan:
    """The checked plan of ``attn_fwd_sm90``'s arguments ``args`` (``q_int8 .. delta_s``)."""
    sig = _signature(args, is_causal, granularity, pv_accum, config)
    return cached_plan(_PLANS, sig, lambda: _plan(*args, is_causal, granularity, pv_accum, config))


def plan_ffi(plan: _LaunchPlan):
    """The plan's TVM-FFI kernel, compiled on first use; its arguments are
    ``_launch_ffi``'s: ``(q .. delta_s with v_fp8 as uint8, scale_log2, max_ctas)``."""
    if plan.ffi is None:
        plan.ffi = compile_attn_fwd_sm90_ffi(*plan.key)
    return plan.ffi


def _launch_ffi(plan, q_int8, q_scale, k_int8, k_scale, v_fp8, v_scale, o, lse, v_mean, q_mean, delta_s,
                scale_log2) -> None:
    import torch

    plan_ffi(plan)(q_int8, q_scale, k_int8, k_scale, v_fp8.view(torch.uint8), v_scale, o, lse, v_mean, q_mean,
                   delta_s, scale_log2, plan.max_ctas)


def _launch_pointer(key, q_int8, q_scale, k_int8, k_scale, v_fp8, v_scale, o, lse, v_mean, q_mean, delta_s, sm_scale,
                    max_ctas) -> None:
    import torch
    import cuda.bindings.driver as cuda

    stream = cuda.CUstream(torch.cuda.current_stream(o.device).cuda_stream)
    args = (
        _to_cute(q_int8),
        _to_cute(q_scale, 4) if q_scale is not None else None,
        _to_cute(k_int8),
        _to_cute(k_scale, 4),
        _to_cute(v_fp8),
        _to_cute(v_scale, 4),
        _to_cute(o),
        _to_cute(lse, 4) if lse is not None else None,
        _to_cute(v_mean, 4) if v_mean is not None else None,
        _to_cute(q_mean) if q_mean is not None else None,
        _to_cute(delta_s) if delta_s is not None else None,
        cutlass.Float32(sm_scale * LOG2E),
        cutlass.Int32(max_ctas),
        stream,
    )
    compiled = compile_attn_fwd_sm90(*key, example_args=args)
    compiled(*args)


# ----------------------------------------------------------------------------- AOT compile
@dataclass
class CompileResult:
    """One compiled variant. ``summary`` is what ``python -m sagecute compile`` prints:
    registers, spills (LDL+STL instructions), smem_bytes (dynamic), local_bytes and
    ``sass`` (IGMMA, QGMMA, HGMMA, UTMALDG, MUFU.EX2, ... counts)."""

    name: str
    ok: bool
    seconds: float
    problem: str = ""
    cubin: Optional[str] = None
    summary: dict = field(default_factory=dict)

    @property
    def error(self) -> str:  # alias
        return self.problem


class Sm90Variant(NamedTuple):
    """One compiled kernel of the compile list (``all_variants``, ``compile_one_to_cubin``)."""

    out_dtype: Any  # cutlass.BFloat16 / Float16 (or the torch dtype)
    head_dim: int
    is_causal: bool
    granularity: QuantGranularity
    pv_accum: PvAccum
    has_lse: bool
    config: AttnFwdConfigSm90
    q_dtype: Any = cutlass.Int8  # Int8: pre-quantized Q; bf16/fp16: Q quantized in the kernel
    smooth_v: bool = False  # V mean added back to O (Note [V mean] in kernels/common/quant_qkv.py)
    smooth_q: bool = False  # Q minus its mean, delta_s per score (Note [smooth_q on sm90] in attn_fwd.py)


def variant_name(out_dtype, head_dim, is_causal, granularity, pv_accum, has_lse, config, q_dtype=cutlass.Int8,
                 smooth_v=False, smooth_q=False) -> str:
    default = AttnFwdConfigSm90.default(head_dim)
    tweaks = "".join(
        f"_{f}={getattr(config, f)}" for f in config.__dataclass_fields__ if getattr(config, f) != getattr(default, f)
    )
    return (
        f"sm90_{_out_dtype(out_dtype).__name__.lower()}_d{head_dim}"
        f"_{'causal' if is_causal else 'full'}_{granularity.value}"
        f"_{pv_accum.value.replace('+', '_')}{'_lse' if has_lse else ''}{tweaks}"
        f"{'' if _q_dtype(q_dtype) is cutlass.Int8 else '_fusedq'}{'_smoothv' if smooth_v else ''}"
        f"{'_smoothq' if smooth_q else ''}"
    )


def all_variants(quick: bool = False):
    """The variants ``compile_all_sm90`` builds (bf16 output; fp16 differs only in the
    final conversion)."""
    for head_dim in (128, 64):
        for is_causal in (False, True):
            for gran in (QuantGranularity.PER_THREAD, QuantGranularity.PER_WARP):
                if quick and (gran is QuantGranularity.PER_WARP or is_causal == (head_dim == 128)):
                    continue
                # the API's path: Q quantized in the kernel (Note [Fused Q quantization]),
                # launched after the preprocessing (Note [PDL after the preprocessing]);
                # short and long sequences where the tuned config differs (causal d64)
                lengths = (0,) if quick else AttnFwdConfigSm90.length_classes()
                configs = {AttnFwdConfigSm90.after_preprocess(head_dim, is_causal, gran, lq): None for lq in lengths}
                for cfg in configs:
                    yield Sm90Variant(cutlass.BFloat16, head_dim, is_causal, gran, PvAccum.FP32_FP32, True, cfg,
                                      cutlass.BFloat16)
                if not quick:  # pre-quantized Q: direct attn_fwd_sm90 callers (tests, bench, smoke)
                    yield Sm90Variant(cutlass.BFloat16, head_dim, is_causal, gran, PvAccum.FP32_FP32, True,
                                      AttnFwdConfigSm90.default(head_dim))
    if not quick:  # the other PV accumulations (Note [fp32+fp16 on sm90])
        for pv in (PvAccum.FP32_FP16, PvAccum.FP32):
            yield Sm90Variant(cutlass.BFloat16, 128, False, QuantGranularity.PER_THREAD, pv, True,
                              AttnFwdConfigSm90.after_preprocess(128), cutlass.BFloat16)
    # smooth_v (Note [V mean]): the API's d128 and d64 (three consumer warpgroups) paths
    for head_dim in () if quick else (128, 64):
        yield Sm90Variant(cutlass.BFloat16, head_dim, False, QuantGranularity.PER_THREAD, PvAccum.FP32_FP32, True,
                          AttnFwdConfigSm90.after_preprocess(head_dim), cutlass.BFloat16, True)
    # smooth_q (Note [smooth_q on sm90]): the API's d128 and d64 paths, causal d128
    for head_dim, causal in () if quick else ((128, False), (64, False), (128, True)):
        yield Sm90Variant(cutlass.BFloat16, head_dim, causal, QuantGranularity.PER_THREAD, PvAccum.FP32_FP32, True,
                          AttnFwdConfigSm90.after_preprocess(head_dim, causal, smooth_q=True), cutlass.BFloat16,
                          False, True)


def _summary(sass: dict, kernel: SageAttnFwdSm90) -> dict:
    keys = ("IGMMA", "QGMMA", "HGMMA", "UTMALDG", "MUFU.EX2", "USETMAXREG", "BAR.SYNC", "instructions")
    return {
        "registers": sass.get("registers"),
        "spills": (sass.get("spill_ldl") or 0) + (sass.get("spill_stl") or 0),
        "local_bytes": sass.get("local_bytes", 0),
        "smem_bytes": kernel.smem_bytes(),
        "sass": {k: sass[k] for k in keys if k in sass},
    }


def compile_one_to_cubin(variant: Sm90Variant, out_dir: str) -> CompileResult:
    """Compile one variant from fake tensors, keep its PTX/cubin in ``out_dir/<name>/``
    and summarise the SASS (``sass_report.summarize_cubin``)."""
    from sagecute.kernels.common import sass_report

    name = variant_name(*variant)
    vdir = os.path.join(out_dir, name)
    os.makedirs(vdir, exist_ok=True)
    t0 = time.time()
    try:
        kernel, args = _kernel_and_fake_args(_compile_key(*variant))
        with sass_report.keep_artifacts(vdir):
            cute.compile(kernel, *args, cutlass.Float32(1.0), cutlass.Int32(1), cute.runtime.make_fake_stream())
        cubin = sass_report.find_cubin(vdir)
        if cubin is None:
            return CompileResult(name, False, time.time() - t0, problem="no cubin was written")
        sass = sass_report.summarize_cubin(cubin)
        res = CompileResult(name, True, time.time() - t0, cubin=cubin, summary=_summary(sass, kernel))
        res.summary["raw"] = sass
        if "error" in sass:
            res.problem = sass["error"]
        return res
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return CompileResult(name, False, time.time() - t0, problem=f"{type(e).__name__}: {e}")


def compile_all_sm90(out_dir: Optional[str] = None, quick: bool = False, arch: str = "sm_90a") -> list[CompileResult]:
    """Compile every shipped sm90 variant for sm_90a without a GPU (fake tensors with
    symbolic shapes) and summarise each one's SASS. Artifacts go to ``out_dir`` (a
    temporary folder when None). ``quick``: two variants only."""
    import tempfile

    if arch not in ("sm_90a", "sm90", "sm_90"):
        return []
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
    from cutlass.cutlass_dsl import CuTeDSL

    env = CuTeDSL._get_dsl().envar
    saved_arch = env.arch
    env.arch = "sm_90a"
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sagecute_sm90_")
        out_dir = tmp.name
    try:
        results = [compile_one_to_cubin(v, out_dir) for v in all_variants(quick)]
        if tmp is not None:
            for r in results:
                r.cubin = None
        return results
    finally:
        env.arch = saved_arch
        if tmp is not None:
            tmp.cleanup()
