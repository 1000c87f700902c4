"""Public torch API: ``sageattn`` and ``sageattn_varlen``.

Drop-in compatible with SageAttention's names and defaults. This module
validates, views layouts (never copies contiguous inputs), allocates outputs,
asks ``dispatch`` which implementation runs, and wraps the call in a
``torch.library`` custom op so ``torch.compile(fullgraph=True)`` traces it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import dispatch, fast_call, reference
from .plan_cache import cached_plan
from .preprocess import QuantizedInputs, quantize_inputs
from .quant_layout import FUSED_Q_GRANULARITIES, PvAccum, QuantGranularity

__all__ = ["sageattn", "sageattn_varlen", "prepare_inputs", "attention_prepared", "PreparedCall"]

_LAYOUTS = ("HND", "NHD")
_DTYPES = (torch.float16, torch.bfloat16)
_GRANULARITIES = ("per_thread", "per_warp")
_PV_ACCUM = ("fp32+fp32", "fp32", "fp32+fp16")
# Keywords SageAttention accepts that we take as they are; anything else is a TypeError.
_KNOWN_KWARGS = {"qk_quant_gran", "pv_accum_dtype", "smooth_k", "smooth_v", "smooth_q", "backend", "attn_mask"}


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Shapes:
    batch: int
    heads_q: int
    heads_kv: int
    len_q: int
    len_k: int
    head_dim: int


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be torch.float16 or torch.bfloat16, got {t.dtype}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D ([B, H, L, D] for HND or [B, L, H, D] for NHD), got shape {tuple(t.shape)}")
    if t.shape[-1] > 0 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dimension (stride 1), got strides {t.stride()}")


def _validate(q, k, v, tensor_layout: str) -> _Shapes:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
    if not isinstance(tensor_layout, str) or tensor_layout not in _LAYOUTS:
        raise ValueError(f"tensor_layout must be 'HND' or 'NHD', got {tensor_layout!r}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    qh, kh, vh = (reference.to_hnd(t, tensor_layout) for t in (q, k, v))
    b, hq, lq, d = qh.shape
    if kh.shape != vh.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if kh.shape[0] != b:
        raise ValueError(f"q and k must have the same batch size, got {b} and {kh.shape[0]}")
    if kh.shape[3] != d:
        raise ValueError(f"q and k must have the same head_dim, got {d} and {kh.shape[3]}")
    hkv, lk = kh.shape[1], kh.shape[2]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"the number of q heads ({hq}) must be a multiple of the number of k/v heads ({hkv})")
    if d == 0:
        raise ValueError("head_dim must be positive")
    if lk == 0 and lq > 0:
        raise ValueError("k and v must have at least one token (softmax over zero keys is undefined)")
    return _Shapes(b, hq, hkv, lq, lk, d)


def _check_options(kwargs: dict) -> dict:
    unknown = set(kwargs) - _KNOWN_KWARGS
    if unknown:
        raise TypeError(f"sageattn() got unexpected keyword argument(s) {sorted(unknown)}; known: {sorted(_KNOWN_KWARGS)}")
    opts = {
        "qk_quant_gran": kwargs.get("qk_quant_gran", "per_thread"),
        "pv_accum_dtype": kwargs.get("pv_accum_dtype", "fp32+fp32"),
        "smooth_k": kwargs.get("smooth_k", True),
        "smooth_v": kwargs.get("smooth_v", False),
        "smooth_q": kwargs.get("smooth_q", False),
        "backend": kwargs.get("backend", None) or "auto",
        "attn_mask": kwargs.get("attn_mask", None),
    }
    if opts["qk_quant_gran"] not in _GRANULARITIES:
        raise ValueError(f"qk_quant_gran must be one of {_GRANULARITIES}, got {opts['qk_quant_gran']!r}")
    if opts["pv_accum_dtype"] not in _PV_ACCUM:
        raise ValueError(f"pv_accum_dtype must be one of {_PV_ACCUM}, got {opts['pv_accum_dtype']!r}")
    for flag in ("smooth_k", "smooth_v", "smooth_q"):
        if not isinstance(opts[flag], bool):
            raise TypeError(f"{flag} must be a bool, got {type(opts[flag]).__name__}")
    if opts["backend"] not in dispatch.BACKENDS:
        raise ValueError(f"backend must be one of {dispatch.BACKENDS}, got {opts['backend']!r}")
    if opts["attn_mask"] is not None and not isinstance(opts["attn_mask"], torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(opts['attn_mask']).__name__}")
    return opts


def _check_scale(sm_scale, head_dim: int) -> float:
    if sm_scale is None:
        return head_dim**-0.5
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)):
        raise TypeError(f"sm_scale must be a float or None, got {type(sm_scale).__name__}")
    if not math.isfinite(sm_scale) or sm_scale <= 0:
        raise ValueError(f"sm_scale must be a positive finite number, got {sm_scale}")
    return float(sm_scale)


# --------------------------------------------------------------------------
# Implementations behind the custom op
# --------------------------------------------------------------------------
def _lse_exact(qh, kh, sm_scale: float, is_causal: bool) -> torch.Tensor:
    """Natural-log LSE in fp32, row-chunked so the score matrix stays small."""
    hq = qh.shape[1]
    kf = reference._expand_kv(kh, hq).float()
    out = []
    chunk = 1024
    for i0 in range(0, qh.shape[2], chunk):
        s = torch.matmul(qh[:, :, i0 : i0 + chunk].float(), kf.transpose(-1, -2)) * sm_scale
        if is_causal:
            mask = reference.causal_mask(qh.shape[2], kh.shape[2], qh.device)[i0 : i0 + chunk]
            s = s.masked_fill(~mask, float("-inf"))
        out.append(torch.logsumexp(s, dim=-1))
    return torch.cat(out, dim=2)


def _run_sdpa(q, k, v, layout, is_causal, sm_scale, return_lse, attn_mask):
    qh, kh, vh = (reference.to_hnd(t, layout) for t in (q, k, v))
    hq = qh.shape[1]
    kx, vx = reference._expand_kv(kh, hq), reference._expand_kv(vh, hq)
    o = F.scaled_dot_product_attention(qh, kx, vx, attn_mask=attn_mask, is_causal=is_causal, scale=sm_scale)
    o = reference.from_hnd(o, layout)
    lse = _lse_exact(qh, kh, sm_scale, is_causal) if return_lse else None
    return o, lse


@functools.cache
def _sm90_launch():
    """``kernels.sm90.launch``, imported on first use (it needs CuTe DSL)."""
    from .kernels.sm90 import launch

    return launch


def _sm90_config_after_preprocess(head_dim: int, is_causal: bool, granularity, seqlen_q: int, smooth_q=False):
    """The tuned sm90 config, launched as a programmatic dependent of the K/V
    preprocessing (Note [PDL after the preprocessing] in kernels/sm90/attn_fwd.py)."""
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90

    return _sm90_config_of_class(head_dim, is_causal, granularity, AttnFwdConfigSm90.length_class(seqlen_q), smooth_q)


@functools.lru_cache(maxsize=32)
def _sm90_config_of_class(head_dim: int, is_causal: bool, granularity, length_class: int, smooth_q: bool = False):
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90

    return AttnFwdConfigSm90.after_preprocess(head_dim, is_causal, granularity, length_class, smooth_q)


def _run_sm90_prepared(prep: "PreparedCall", out_hnd: torch.Tensor | None = None, after_preprocess: bool = False):
    """``after_preprocess``: the kernel right before this launch in the stream is the
    K/V preprocessing of ``prep`` (the API's path), so the attention kernel may overlap
    its tail."""
    qi = prep.quantized
    b, hq, lq, dp = qi.q.shape
    if out_hnd is None:
        out_hnd = torch.empty(b, hq, lq, dp, dtype=prep.dtype, device=qi.q.device)
    lse = torch.empty(b, hq, lq, dtype=torch.float32, device=qi.q.device) if prep.return_lse else None
    _sm90_launch().attn_fwd_sm90(
        qi.q,
        qi.q_scale,
        qi.k_int8,
        qi.k_scale,
        qi.v_fp8,
        qi.v_scale,
        out_hnd,
        lse,
        sm_scale=prep.sm_scale,
        is_causal=prep.is_causal,
        granularity=qi.granularity,
        pv_accum=qi.pv_accum,
        config=_sm90_config_after_preprocess(dp, prep.is_causal, qi.granularity, lq, qi.q_mean is not None)
        if after_preprocess else None,
        v_mean=qi.v_mean,
        q_mean=qi.q_mean,
        delta_s=qi.delta_s,
    )
    return out_hnd, lse


def _run_sm90(q, k, v, layout, is_causal, sm_scale, return_lse, gran, pv_accum, smooth_k, smooth_v, smooth_q=False):
    # the quantized tensors are this call's temporaries: reusable buffers
    prep = _prepare(q, k, v, layout, is_causal, sm_scale, return_lse, gran, pv_accum, smooth_k, smooth_v,
                    scratch=True, smooth_q=smooth_q)
    b, hq, lq, dp = prep.quantized.q.shape
    # Write straight into memory in the caller's layout; slice off head-dim padding.
    if layout == "HND":
        out = out_hnd = torch.empty(b, hq, lq, dp, dtype=q.dtype, device=q.device)
    else:
        out = torch.empty(b, lq, hq, dp, dtype=q.dtype, device=q.device)
        out_hnd = out.transpose(1, 2)
    lse = _run_sm90_prepared(prep, out_hnd, after_preprocess=True)[1]
    if dp != prep.head_dim:
        out = out[..., : prep.head_dim]
    if lse is not None and prep.quantized.k_mean is not None:
        lse = lse + reference.lse_smoothing_correction(reference.to_hnd(q, layout), prep.quantized.k_mean, sm_scale)
    return out, lse


def _forward(q, k, v, layout, is_causal, sm_scale, return_lse, gran, pv_accum, smooth_k, smooth_v, smooth_q, backend):
    """One call on ``backend``: ``(o, lse or None)``, o dense in the caller's layout."""
    if backend == "sm90":
        o, lse = _run_sm90(q, k, v, layout, is_causal, sm_scale, return_lse, gran, pv_accum, smooth_k, smooth_v,
                           smooth_q)
    elif backend == "reference":
        o, lse = reference.sageattn_reference(
            q, k, v, layout, is_causal, sm_scale, True,
            qk_quant_gran=gran.value, pv_accum_dtype=pv_accum.value,
            smooth_k=smooth_k, smooth_v=smooth_v, smooth_q=smooth_q,
        )  # fmt: skip
    else:
        o, lse = _run_sdpa(q, k, v, layout, is_causal, sm_scale, return_lse, None)
    # The kernels write a dense tensor in the caller's layout: no copy then.
    return o if o.is_contiguous() else o.contiguous(), lse


def _attn_fwd_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str,
    is_causal: bool,
    sm_scale: float,
    return_lse: bool,
    qk_quant_gran: str,
    pv_accum_dtype: str,
    smooth_k: bool,
    smooth_v: bool,
    smooth_q: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    o, lse = _forward(
        q, k, v, tensor_layout, is_causal, sm_scale, return_lse, QuantGranularity(qk_quant_gran),
        PvAccum(pv_accum_dtype), smooth_k, smooth_v, smooth_q, backend,
    )  # fmt: skip
    return o, lse if lse is not None else q.new_empty((0,), dtype=torch.float32)


# The custom op makes torch.compile(fullgraph=True) trace through the call;
# eager calls skip its dispatch (tens of microseconds a call, which short
# sequences feel) unless autograd needs it to raise on backward.
_attn_fwd_op = torch.library.custom_op("sagecute::attn_fwd", _attn_fwd_impl, mutates_args=())


def _no_backward(ctx, grad_o, grad_lse):
    raise NotImplementedError("sagecute.sageattn is forward-only (inference): no backward pass")


_attn_fwd_op.register_autograd(_no_backward)


@_attn_fwd_op.register_fake
def _(q, k, v, tensor_layout, is_causal, sm_scale, return_lse, qk_quant_gran, pv_accum_dtype, smooth_k, smooth_v, smooth_q, backend):
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    if return_lse:
        b, hq, lq = reference.to_hnd(q, tensor_layout).shape[:3]
        return o, q.new_empty((b, hq, lq), dtype=torch.float32)
    return o, q.new_empty((0,), dtype=torch.float32)


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------
def sageattn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    sm_scale: float | None = None,
    return_lse: bool = False,
    **kwargs,
):
    """Quantized scaled-dot-product attention (forward only).

    Args:
        q: ``[B, Hq, Lq, D]`` ("HND") or ``[B, Lq, Hq, D]`` ("NHD"), fp16/bf16.
        k, v: ``[B, Hkv, Lk, D]`` / ``[B, Lk, Hkv, D]``; ``Hq % Hkv == 0`` (GQA/MQA).
        tensor_layout: "HND" (default) or "NHD". Any strides with a unit last dim.
        is_causal: top-left causal mask, as ``scaled_dot_product_attention``:
            key ``j`` is visible to query ``i`` iff ``j <= i``, also when Lq != Lk.
        sm_scale: softmax scale, default ``D ** -0.5``.
        return_lse: also return the log-sum-exp (natural log) of the
            unsmoothed scaled scores, fp32 ``[B, Hq, Lq]``.

    Keyword options (SageAttention's): ``qk_quant_gran`` ("per_thread" |
    "per_warp"), ``pv_accum_dtype`` ("fp32+fp32" | "fp32" | "fp32+fp16"),
    ``smooth_k`` (True), ``smooth_v`` (False), ``smooth_q`` (False: Q block
    means with the ``delta_s`` correction); ``backend`` ("auto", "sm90",
    "reference", "sdpa", ...: a named backend raises instead of falling back);
    ``attn_mask`` (a mask is only served by the SDPA fallback).

    Returns ``o`` in q's layout and dtype, or ``(o, lse)``.
    """
    plan = _plan(q, k, v, tensor_layout, is_causal, sm_scale, kwargs)
    if plan.warn:
        dispatch.warn_fallback_once(plan.spec)
    if plan.len_q == 0:
        o = torch.empty_like(q)
        lse = q.new_empty((plan.batch, plan.heads_q, 0), dtype=torch.float32)
        return (o, lse) if return_lse else o
    opts = plan.opts
    if opts["attn_mask"] is not None:
        o, lse = _run_sdpa(q, k, v, tensor_layout, is_causal, plan.sm_scale, return_lse, opts["attn_mask"])
    elif torch.compiler.is_compiling() or (
        torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    ):
        o, lse = _attn_fwd_op(
            q, k, v, tensor_layout, is_causal, plan.sm_scale, return_lse, opts["qk_quant_gran"],
            opts["pv_accum_dtype"], opts["smooth_k"], opts["smooth_v"], opts["smooth_q"], plan.spec.backend,
        )  # fmt: skip
    else:
        o = _fast_call(plan, q, k, v, tensor_layout, is_causal, return_lse)
        if o is not None:
            return o
        o, lse = _forward(
            q, k, v, tensor_layout, is_causal, plan.sm_scale, return_lse, plan.gran, plan.pv_accum,
            opts["smooth_k"], opts["smooth_v"], opts["smooth_q"], plan.spec.backend,
        )  # fmt: skip
    return (o, lse) if return_lse else o


def _fast_call(plan: _CallPlan, q, k, v, layout, is_causal, return_lse):
    """``o`` through the signature's FastCall, or None for the normal path (Note [Fast call])."""
    if return_lse or not fast_call.ENABLED:  # the plan's key leaves return_lse out
        return None
    fast = plan.fast
    if fast is None:
        opts = plan.opts
        try:
            fast = plan.spec.backend == "sm90" and not opts["smooth_q"] and fast_call.build(
                q, k, v, layout, is_causal, plan.sm_scale, plan.gran, plan.pv_accum, opts["smooth_k"],
                opts["smooth_v"], _sm90_config_after_preprocess,
            )  # fmt: skip
        except Exception:  # noqa: BLE001 - the normal path raises or falls back as it always did
            fast = None
        plan.fast = fast = fast or False
    if not fast:
        return None
    try:
        return fast(q, k, v)
    except Exception:  # noqa: BLE001 - a failed launch: the normal path retries, falls back and says why
        plan.fast = False
        return None


@dataclass(eq=False)
class _CallPlan:
    """What validation and dispatch concluded for one call signature."""

    batch: int
    heads_q: int
    len_q: int
    sm_scale: float
    opts: dict
    gran: QuantGranularity
    pv_accum: PvAccum
    spec: dispatch.KernelSpec
    warn: bool  # auto dispatch fell back to SDPA: warn once per reason
    # Note [Fast call]: the signature's FastCall once made, False where it serves none
    fast: object = None


def _make_plan(q, k, v, tensor_layout, is_causal, sm_scale, kwargs) -> _CallPlan:
    shapes = _validate(q, k, v, tensor_layout)
    opts = _check_options(kwargs)
    sm_scale = _check_scale(sm_scale, shapes.head_dim)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    cfg = dispatch.CallConfig(
        shapes.head_dim, q.dtype, is_causal, opts["qk_quant_gran"], opts["pv_accum_dtype"],
        opts["smooth_k"], opts["smooth_v"], opts["smooth_q"], opts["attn_mask"] is not None,
    )  # fmt: skip
    spec = dispatch.select(q.device, cfg, opts["backend"])
    return _CallPlan(
        shapes.batch, shapes.heads_q, shapes.len_q, sm_scale, opts, QuantGranularity(opts["qk_quant_gran"]),
        PvAccum(opts["pv_accum_dtype"]), spec, spec.backend == "sdpa" and opts["backend"] == "auto",
    )  # fmt: skip


# Call signature -> _CallPlan (Note [Plan caches]). Validation and dispatch read only
# what the key holds (tensor classes, shapes, strides, dtypes, devices; the options
# with their types, so 1 is not taken for True).
_PLANS: dict = {}


def _plan(q, k, v, tensor_layout, is_causal, sm_scale, kwargs) -> _CallPlan:
    def build() -> _CallPlan:
        return _make_plan(q, k, v, tensor_layout, is_causal, sm_scale, kwargs)

    if torch.compiler.is_compiling() or kwargs.get("attn_mask") is not None:
        return build()  # nothing cached
    try:
        key = (
            q.__class__, q.shape, q.stride(), q.dtype, q.device,
            k.__class__, k.shape, k.stride(), k.dtype, k.device,
            v.__class__, v.shape, v.stride(), v.dtype, v.device,
            tensor_layout, is_causal, is_causal.__class__, sm_scale, sm_scale.__class__,
            tuple((name, x, x.__class__) for name, x in kwargs.items()) if kwargs else (),
        )  # fmt: skip
        hash(key)
    except Exception:  # noqa: BLE001 - not tensors, unhashable options: the checks say what is wrong
        return build()
    return cached_plan(_PLANS, key, build)


def sageattn_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    is_causal: bool = False,
    sm_scale: float | None = None,
    smooth_k: bool = True,
    **kwargs,
) -> torch.Tensor:
    """Packed variable-length attention, SageAttention's signature.

    q: ``[total_q, Hq, D]``; k, v: ``[total_k, Hkv, D]``; ``cu_seqlens_*``:
    int32/int64 ``[B + 1]`` prefix sums starting at 0. Each sequence is
    attended on its own, with its own K mean (finer than SageAttention's
    global mean). Returns ``[total_q, Hq, D]``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D [total_tokens, heads, head_dim], got shape {tuple(t.shape)}")
    cq = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0])
    ck = _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0])
    if len(cq) != len(ck):
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length, got {len(cq)} and {len(ck)}")
    for name, val, lens in (("max_seqlen_q", max_seqlen_q, cq), ("max_seqlen_k", max_seqlen_k, ck)):
        longest = max((b - a for a, b in zip(lens[:-1], lens[1:])), default=0)
        if not isinstance(val, int) or val < longest:
            raise ValueError(f"{name} must be an int >= the longest sequence ({longest}), got {val!r}")
    out = torch.empty_like(q)
    for i in range(len(cq) - 1):
        qs, ks = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        if cq[i + 1] == cq[i]:
            continue
        out[qs] = sageattn(
            q[qs].unsqueeze(0), k[ks].unsqueeze(0), v[ks].unsqueeze(0), tensor_layout="NHD",
            is_causal=is_causal, sm_scale=sm_scale, smooth_k=smooth_k, **kwargs,
        )[0]  # fmt: skip
    return out


def _check_cu_seqlens(name: str, t, total: int) -> list[int]:
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
        raise TypeError(f"{name} must be a 1-D int32/int64 tensor")
    vals = t.tolist()
    if len(vals) < 2 or vals[0] != 0:
        raise ValueError(f"{name} must start at 0 and have at least 2 entries, got {vals[:4]}")
    if any(b < a for a, b in zip(vals[:-1], vals[1:])):
        raise ValueError(f"{name} must be non-decreasing, got {vals}")
    if vals[-1] != total:
        raise ValueError(f"{name}[-1] must equal the number of packed tokens ({total}), got {vals[-1]}")
    return vals


# --------------------------------------------------------------------------
# Pre-quantized calls (kernel-only benchmarks)
# --------------------------------------------------------------------------
@dataclass
class PreparedCall:
    quantized: QuantizedInputs
    dtype: torch.dtype
    is_causal: bool
    sm_scale: float
    return_lse: bool
    head_dim: int


def _prepare(
    q, k, v, layout, is_causal, sm_scale, return_lse, gran, pv_accum, smooth_k, smooth_v=False, scratch=False,
    smooth_q=False,
) -> PreparedCall:
    qh, kh, vh = (reference.to_hnd(t, layout) for t in (q, k, v))
    head_dim = qh.shape[-1]
    dp = reference.padded_head_dim(head_dim)
    if dp != head_dim:
        qh, kh, vh = (reference._pad_last(t, dp) for t in (qh, kh, vh))
    # the sm90 kernel quantizes Q itself at these granularities (the ones dispatch offers)
    fuse_q = gran in FUSED_Q_GRANULARITIES
    qi = quantize_inputs(
        qh, kh, vh, granularity=gran, pv_accum=pv_accum, smooth_k=smooth_k, smooth_v=smooth_v, scratch=scratch,
        fuse_q=fuse_q, smooth_q=smooth_q,
    )
    return PreparedCall(qi, q.dtype, is_causal, sm_scale, return_lse, head_dim)


def prepare_inputs(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, **kwargs) -> PreparedCall:
    """Quantize K and V once (for timing the attention kernel alone; Q stays bf16/fp16
    and is quantized inside the kernel, Note [Fused Q quantization])."""
    shapes = _validate(q, k, v, tensor_layout)
    opts = _check_options(kwargs)
    return _prepare(
        q, k, v, tensor_layout, is_causal, _check_scale(sm_scale, shapes.head_dim), False,
        QuantGranularity(opts["qk_quant_gran"]), PvAccum(opts["pv_accum_dtype"]), opts["smooth_k"], opts["smooth_v"],
        smooth_q=opts["smooth_q"],
    )  # fmt: skip


def attention_prepared(prep: PreparedCall) -> torch.Tensor:
    """Run the sm90 attention kernel on ``prepare_inputs``' quantized K/V (Q quantized
    in the kernel); HND output (head-padded)."""
    return _run_sm90_prepared(prep)[0]
