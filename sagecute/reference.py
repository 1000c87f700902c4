"""Pure-torch oracles: exact attention and a step-by-step emulation of each
arch's quantized scheme (``design/numerics.md`` §8).

Runs on CPU or GPU and needs no CuTe DSL. The quantizers here are the
bit-exact contract the CuTe DSL preprocessing kernels are tested against; the
attention emulation matches a correct kernel up to accumulation order, the
approximate exp2/rcp/lg2 of the hardware and rare one-code FP8 rounding flips.

Tensors are HND ``[B, H, L, D]`` unless ``tensor_layout="NHD"`` is passed to
the public-style entry points.
"""

from __future__ import annotations

import math

import torch

from .quant_layout import (
    FP8_E4M3_MAX,
    FP16_ACC_KEYS,
    INT8_AMAX_FLOOR,
    INT8_MAX,
    LOG2E,
    P_FP8_OFFSET_LOG2,
    SM89_GEOMETRY,
    SM90_GEOMETRY,
    V_TOKEN_PERM,
    PvAccum,
    QuantGeometry,
    QuantGranularity,
    v_scale_max,
    cdiv,
)

__all__ = [
    "attention_exact",
    "sageattn_reference",
    "k_mean",
    "quantize_qk_int8",
    "quantize_v_fp8",
    "quantize_nvfp4",
    "e4m3_round",
    "e2m1_round",
    "padded_head_dim",
    "geometry_for_arch",
]

LN2 = math.log(2.0)
# FP4 path (Sage3, numerics.md §7): a row's largest P is 448 * 6.
FP4_P_MAX_LOG2 = math.log2(448.0 * 6.0)
FP4_E2M1_MAX = 6.0
FP4_BLOCK = 16
FP4_TILE = 128


# --------------------------------------------------------------------------
# Rounding helpers
# --------------------------------------------------------------------------
def e4m3_round(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> e4m3 (RNE, saturating at +-448) -> fp32.

    torch's cast does not saturate (480 and up become NaN), so clamp first.
    """
    return x.float().clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).float()


# e2m1 magnitudes and the decision boundaries between them: a value exactly on
# a boundary goes to the even code (0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2,
# 3.5->4, 5->4), i.e. boundaries alternate between "<" and "<=".
_E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_E2M1_UPPER = ((0.25, True), (0.75, False), (1.25, True), (1.75, False), (2.5, True), (3.5, False), (5.0, True))


def e2m1_round(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> e2m1 grid {0,.5,1,1.5,2,3,4,6} (RNE, ties to the even code,
    saturating at 6) -> fp32."""
    x = x.float()
    a = x.abs()
    out = torch.full_like(a, _E2M1_GRID[-1])
    # Walk boundaries from the top so lower codes overwrite.
    for (bound, inclusive), value in reversed(list(zip(_E2M1_UPPER, _E2M1_GRID))):
        below = a <= bound if inclusive else a < bound
        out = torch.where(below, torch.full_like(a, value), out)
    return torch.copysign(out, x)


# --------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------
def to_hnd(x: torch.Tensor, tensor_layout: str) -> torch.Tensor:
    """View (no copy) of a [B,H,L,D] or [B,L,H,D] tensor as HND."""
    return x if tensor_layout == "HND" else x.transpose(1, 2)


def from_hnd(x: torch.Tensor, tensor_layout: str) -> torch.Tensor:
    return x if tensor_layout == "HND" else x.transpose(1, 2)


def padded_head_dim(head_dim: int) -> int:
    """Kernels run head_dim 64 or 128; smaller head dims are zero padded."""
    if head_dim <= 64:
        return 64
    if head_dim <= 128:
        return 128
    raise NotImplementedError(f"head_dim {head_dim} > 128 has no quantized kernel")


def _pad_last(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else torch.nn.functional.pad(x, (0, size - x.shape[-1]))


def _pad_seq(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero pad dim 2 (the sequence of an HND tensor) to ``size``."""
    if x.shape[2] == size:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, size - x.shape[2]))


def geometry_for_arch(arch: str) -> QuantGeometry:
    if arch == "sm90":
        return SM90_GEOMETRY
    if arch in ("sm89", "sm120_fp8"):
        return SM89_GEOMETRY
    raise ValueError(f"arch must be one of 'sm90', 'sm89', 'sm100', 'sm120', got {arch!r}")


# --------------------------------------------------------------------------
# Quantizers (bit-exact contract, docs/kernel-contract.md)
# --------------------------------------------------------------------------
def k_mean(k: torch.Tensor) -> torch.Tensor:
    """Sequence mean of K per (batch, head, channel), [B,H,1,D] in k's dtype."""
    return k.mean(dim=2, keepdim=True)


def q_mean(q: torch.Tensor) -> torch.Tensor:
    """sm90 ``smooth_q``: one sequence mean of Q per (batch, head, channel), [B,H,1,D] in
    q's dtype (as ``k_mean``)."""
    return k_mean(q)


def smooth_q_delta_s(qm: torch.Tensor, k: torch.Tensor, km: torch.Tensor | None) -> torch.Tensor:
    """sm90 ``smooth_q``: ``delta_s[b, h, j] = qm[b, h] . (k[b, h_kv, j] - km[b, h_kv])`` in
    fp32, [B,Hq,Lk]: what quantizing ``q - qm`` instead of ``q`` removed from every score of
    key ``j``, added back per score by the kernel."""
    ksm = k.float() - (km.float() if km is not None else 0.0)
    return torch.matmul(qm.float(), _expand_kv(ksm, qm.shape[1]).transpose(-1, -2))[:, :, 0]


def v_mean(v: torch.Tensor) -> torch.Tensor:
    """Sequence mean of V per (batch, head, channel), fp32 [B,H,D] (smooth_v)."""
    return v.float().mean(dim=2)


def _group_index(length_padded: int, gran: QuantGranularity, geom: QuantGeometry, is_k: bool, device):
    rows = torch.arange(length_padded, device=device)
    if gran is QuantGranularity.PER_BLOCK:
        return rows // (geom.blk_k if is_k else geom.blk_q)
    if is_k:
        if gran is QuantGranularity.PER_WARP:
            return rows // geom.warp_k
        return (rows // geom.warp_k) * 4 + (rows % 8) // 2
    if gran is QuantGranularity.PER_WARP:
        return rows // geom.warp_q
    return (rows // geom.warp_q) * 8 + rows % 8


def _quantize_int8_float(xf: torch.Tensor, gran: QuantGranularity, geom: QuantGeometry, is_k: bool):
    """INT8-quantize an fp32 HND tensor by scale groups along the sequence."""
    b, h, length, _ = xf.shape
    blk = geom.blk_k if is_k else geom.blk_q
    lp = cdiv(max(length, 1), blk) * blk
    n = geom.num_k_scales(length, gran) if is_k else geom.num_q_scales(length, gran)
    n = max(n, geom.num_k_scales(1, gran) if is_k else geom.num_q_scales(1, gran))
    row_amax = _pad_seq(xf.abs().amax(dim=-1, keepdim=True), lp)[..., 0]  # [B,H,Lp]
    idx = _group_index(lp, gran, geom, is_k, xf.device).expand(b, h, lp)
    amax = torch.zeros(b, h, n, device=xf.device, dtype=torch.float32)
    amax.scatter_reduce_(2, idx, row_amax, reduce="amax", include_self=True)
    amax = amax.clamp_min(INT8_AMAX_FLOOR)
    # Tensor / tensor: torch turns division by a Python scalar into a multiply
    # by its rounded reciprocal, which is not the IEEE quotient the kernels use.
    c = torch.full_like(amax, INT8_MAX)
    scale = amax / c
    inv = c / amax
    inv_row = torch.gather(inv, 2, idx[..., :length]).unsqueeze(-1)
    x8 = torch.round(xf * inv_row).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return x8.contiguous(), scale


def quantize_qk_int8(
    x: torch.Tensor,
    gran: QuantGranularity,
    geom: QuantGeometry = SM90_GEOMETRY,
    *,
    is_k: bool,
    mean: torch.Tensor | None = None,
):
    """INT8 Q or K (HND) -> (int8 [B,H,L,D] contiguous, fp32 scale [B,H,n]).

    ``mean`` (K smoothing; broadcastable to x) is subtracted in fp32.
    """
    xf = x.float()
    if mean is not None:
        xf = xf - mean.float()
    return _quantize_int8_float(xf, QuantGranularity(gran), geom, is_k)


def quantize_v_fp8(
    v: torch.Tensor,
    geom: QuantGeometry = SM90_GEOMETRY,
    *,
    scale_max: float = FP8_E4M3_MAX,
    mean: torch.Tensor | None = None,
):
    """FP8 e4m3 V, per channel -> (payload [B,H,D,Lpad] float8_e4m3fn, v_scale [B,H,D]).

    Transposed so the token axis (the PV reduction) is contiguous, zero padded
    to ``geom.padded_kv_len(L)`` and permuted per 16 tokens (Note [V token
    permutation] in quant_layout.py). ``mean`` is fp32 [B,H,D] (smooth_v).
    """
    b, h, length, d = v.shape
    vf = v.float()
    if mean is not None:
        vf = vf - mean.float().unsqueeze(2)
    amax = vf.abs().amax(dim=2)  # [B,H,D]
    c = torch.full_like(amax, scale_max)  # IEEE division, see _quantize_int8_float
    v_scale = amax / c
    inv = torch.where(amax > 0, c / amax, torch.zeros_like(amax))
    payload = e4m3_round(vf * inv.unsqueeze(2))  # [B,H,L,D]
    lp = geom.padded_kv_len(max(length, 1))
    vt = _pad_last(payload.transpose(2, 3), lp)  # [B,H,D,Lp]
    perm = torch.tensor(V_TOKEN_PERM, device=v.device)
    vt = vt.reshape(b, h, d, lp // 16, 16)[..., perm].reshape(b, h, d, lp)
    return vt.to(torch.float8_e4m3fn).contiguous(), v_scale


def unpermute_v_fp8(v_fp8: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of quantize_v_fp8's layout: fp32 payload [B,H,L,D] (unscaled)."""
    b, h, d, lp = v_fp8.shape
    inv_perm = torch.argsort(torch.tensor(V_TOKEN_PERM, device=v_fp8.device))
    vt = v_fp8.float().reshape(b, h, d, lp // 16, 16)[..., inv_perm].reshape(b, h, d, lp)
    return vt[..., :length].transpose(2, 3)


def quantize_nvfp4(x: torch.Tensor):
    """NVFP4 along the last dim (numerics.md §7): blocks of 16 share an e4m3
    scale s = e4m3(amax/6); payload e2m1(x * (1/s)), 1/s := 0 when s = 0.

    Returns (payload values on the e2m1 grid, fp32 scales [..., last/16]).
    """
    shape = x.shape
    xb = x.float().reshape(*shape[:-1], shape[-1] // FP4_BLOCK, FP4_BLOCK)
    amax = xb.abs().amax(dim=-1)
    s = e4m3_round(amax / FP4_E2M1_MAX)
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    payload = e2m1_round(xb * inv.unsqueeze(-1))
    return payload.reshape(shape), s


def dequantize_nvfp4(payload: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    shape = payload.shape
    xb = payload.reshape(*shape[:-1], shape[-1] // FP4_BLOCK, FP4_BLOCK) * scale.unsqueeze(-1)
    return xb.reshape(shape)


# --------------------------------------------------------------------------
# Exact attention
# --------------------------------------------------------------------------
def _expand_kv(x: torch.Tensor, hq: int) -> torch.Tensor:
    """GQA: query head h reads kv head h // (Hq / Hkv)."""
    hkv = x.shape[1]
    return x if hkv == hq else x.repeat_interleave(hq // hkv, dim=1)


def causal_mask(lq: int, lk: int, device) -> torch.Tensor:
    """Top-left causal (as torch SDPA): key j visible to query i iff j <= i."""
    i = torch.arange(lq, device=device).unsqueeze(1)
    j = torch.arange(lk, device=device).unsqueeze(0)
    return j <= i


def attention_exact(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    sm_scale: float | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype = torch.float64,
):
    """Unquantized attention in ``compute_dtype`` (fp64 by default); output in
    ``compute_dtype`` and q's layout, lse (natural log) [B,Hq,Lq] fp32."""
    qh, kh, vh = (to_hnd(t, tensor_layout).to(compute_dtype) for t in (q, k, v))
    hq, d = qh.shape[1], qh.shape[-1]
    sm_scale = d**-0.5 if sm_scale is None else sm_scale
    kh, vh = _expand_kv(kh, hq), _expand_kv(vh, hq)
    s = torch.matmul(qh, kh.transpose(-1, -2)) * sm_scale
    if is_causal:
        s = s.masked_fill(~causal_mask(s.shape[-2], s.shape[-1], s.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.matmul(torch.softmax(s, dim=-1), vh)
    o = from_hnd(o, tensor_layout)
    return (o, lse.float()) if return_lse else o


# --------------------------------------------------------------------------
# Quantized emulation
# --------------------------------------------------------------------------
def _q_block_means(q: torch.Tensor, blk: int) -> torch.Tensor:
    """Per blk-row block mean of Q over its true rows, [B,H,nblk,D] in q's dtype."""
    b, h, length, d = q.shape
    nblk = cdiv(length, blk)
    qf = _pad_seq(q.float(), nblk * blk).reshape(b, h, nblk, blk, d)
    counts = torch.clamp(length - torch.arange(nblk, device=q.device) * blk, max=blk)
    return (qf.sum(dim=3) / counts.view(1, 1, nblk, 1)).to(q.dtype)


def _online_softmax_step(t, m, d, offset):
    """One KV block of the exp2-domain online softmax. Returns (p, m_new, d_new, alpha)."""
    m_new = torch.maximum(m, t.amax(dim=-1) - offset)
    # Rows with nothing visible yet keep m = -inf; exp2 against 0 then gives P = 0.
    m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
    alpha = torch.where(torch.isinf(m), torch.zeros_like(m), torch.exp2(m - m_safe))
    p = torch.exp2(t - m_safe.unsqueeze(-1))
    return p, m_new, d * alpha + p.sum(dim=-1), alpha


def lse_smoothing_correction(qh: torch.Tensor, km: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """``sm_scale * q . k_mean`` [B,Hq,Lq] fp32: what K smoothing removed from
    every score of a row, added back to the LSE (numerics.md §2)."""
    kmx = _expand_kv(km[..., : qh.shape[-1]].float(), qh.shape[1])  # [B,Hq,1,D]
    return sm_scale * torch.matmul(qh.float(), kmx.transpose(-1, -2))[..., 0]


def _emulate_int8_fp8(
    qh, kh, vh, *, is_causal, sm_scale, gran, pv_accum, smooth_k, smooth_v, smooth_q, geom, lq, lk, rowsum_p8=False,
    q_mean_per_head=False, q_mean_override=None, k_mean_override=None,
):
    """Sage2 INT8-QK / FP8-PV emulation on head-padded HND inputs (numerics.md §8).

    ``smooth_q``: Q minus its per-``blk_q``-row block means (SageAttention2's), or with
    ``q_mean_per_head`` minus one mean per (batch, head) (sagecute's sm90 kernel: the
    correction ``delta_s`` is then one value per key, Note [smooth_q on sm90] in
    kernels/sm90/attn_fwd.py); either way ``delta_s`` is added to the dequantized scores.

    ``rowsum_p8``: the softmax denominator is the sum of the e4m3-rounded P, accumulated
    by the PV MMA as one more V channel of 1.0 (sagecute's sm90 kernel, Note [Row sum on
    the tensor core] in kernels/sm90/attn_fwd.py); otherwise the unrounded fp32 P
    (SageAttention2, numerics.md §5)."""
    b, hq, _, d = qh.shape
    hkv = kh.shape[1]
    c = sm_scale * LOG2E
    km = (k_mean(kh) if k_mean_override is None else k_mean_override) if smooth_k else None
    k8, ks = quantize_qk_int8(kh, gran, geom, is_k=True, mean=km)
    if smooth_q and q_mean_per_head:
        qm = q_mean(qh) if q_mean_override is None else q_mean_override  # [B,H,1,D]
        q8, qs = quantize_qk_int8(qh, gran, geom, is_k=False, mean=qm)
        delta_s_rows = smooth_q_delta_s(qm, kh, km)[:, :, None]  # [B,H,1,Lk]
    elif smooth_q:
        qm = _q_block_means(qh, geom.blk_q)  # [B,H,nblk,D]
        row_blk = torch.arange(lq, device=qh.device) // geom.blk_q
        qf = qh.float() - qm.float()[:, :, row_blk]
        q8, qs = _quantize_int8_float(qf, gran, geom, is_k=False)
        ksm = kh.float() - (km.float() if km is not None else 0.0)
        delta_s = torch.matmul(qm.float(), _expand_kv(ksm, hq).transpose(-1, -2))  # [B,H,nblk,Lk]
        delta_s_rows = delta_s[:, :, row_blk]  # [B,H,Lq,Lk]
    else:
        q8, qs = quantize_qk_int8(qh, gran, geom, is_k=False)
        delta_s_rows = None
    vm = v_mean(vh) if smooth_v else None
    scale_max = v_scale_max(pv_accum)
    v8, vs = quantize_v_fp8(vh, geom, scale_max=scale_max, mean=vm)
    v8 = unpermute_v_fp8(v8, lk)  # fp32 payload [B,Hkv,Lk,D]
    if rowsum_p8:
        v8 = torch.cat([v8, torch.ones_like(v8[..., :1])], dim=-1)  # channel d: 1.0

    qidx = _group_index(max(lq, 1), gran, geom, False, qh.device)[:lq]
    kidx = _group_index(geom.padded_kv_len(max(lk, 1)), gran, geom, True, qh.device)[:lk]
    qs_row = torch.gather(qs, 2, qidx.expand(b, hq, lq))  # [B,Hq,Lq]
    ks_col = _expand_kv(torch.gather(ks, 2, kidx.expand(b, hkv, lk)), hq)  # [B,Hq,Lk]
    k8f = _expand_kv(k8.float(), hq)
    v8f = _expand_kv(v8, hq)
    q8f = q8.float()

    m = torch.full((b, hq, lq), float("-inf"), device=qh.device)
    dsum = torch.zeros(b, hq, lq, device=qh.device)
    o = torch.zeros(b, hq, lq, v8.shape[-1], device=qh.device)
    rows = torch.arange(lq, device=qh.device).unsqueeze(1)
    for j0 in range(0, lk, geom.blk_k):
        j1 = min(j0 + geom.blk_k, lk)
        s_int = torch.matmul(q8f, k8f[:, :, j0:j1].transpose(-1, -2))  # exact: |S| < 2^24
        t = s_int * qs_row.unsqueeze(-1) * ks_col[:, :, None, j0:j1]
        if delta_s_rows is not None:
            t = t + delta_s_rows[..., j0:j1]
        t = t * c
        if is_causal:
            cols = torch.arange(j0, j1, device=qh.device).unsqueeze(0)
            t = t.masked_fill(cols > rows, float("-inf"))
        p, m, dsum, alpha = _online_softmax_step(t, m, dsum, P_FP8_OFFSET_LOG2)
        p8 = e4m3_round(p)
        v_blk = v8f[:, :, j0:j1]
        if pv_accum is PvAccum.FP32_FP16:
            # one fp16 accumulator per FP16_ACC_KEYS keys, rounded after every 32-key MMA
            # step; O = O * alpha + h0 + h1 (Note [fp32+fp16 on sm90])
            o = o * alpha.unsqueeze(-1)
            for h0 in range(0, j1 - j0, FP16_ACC_KEYS):
                part = torch.zeros_like(o, dtype=torch.float16)
                for s0 in range(h0, min(h0 + FP16_ACC_KEYS, j1 - j0), 32):
                    s1 = min(s0 + 32, j1 - j0)
                    part = (part.float() + torch.matmul(p8[..., s0:s1], v_blk[:, :, s0:s1])).half()
                o = o + part.float()
        else:
            o = o * alpha.unsqueeze(-1) + torch.matmul(p8, v_blk)
    if rowsum_p8:
        o, dsum = o[..., :d], o[..., d]
    o = o / dsum.unsqueeze(-1) * _expand_kv(vs.unsqueeze(2), hq)
    if vm is not None:
        o = o + _expand_kv(vm.unsqueeze(2), hq)
    lse = (m + torch.log2(dsum)) * LN2
    if km is not None:
        lse = lse + lse_smoothing_correction(qh, km, sm_scale)
    return o, lse


def _emulate_fp4(qh, kh, vh, *, is_causal, sm_scale, smooth_k, smooth_q, lq, lk):
    """Sage3 NVFP4 emulation (numerics.md §7-§8) on head-padded HND inputs."""
    b, hq, _, d = qh.shape
    c = sm_scale * LOG2E
    km = k_mean(kh) if smooth_k else None
    ksm = (kh - km) if km is not None else kh  # input dtype, on a copy
    lqp, lkp = cdiv(max(lq, 1), FP4_TILE) * FP4_TILE, cdiv(max(lk, 1), FP4_TILE) * FP4_TILE
    qp = _pad_seq(qh, lqp)
    ksp = _pad_seq(ksm, lkp)
    vp = _pad_seq(vh, lkp)
    if smooth_q:
        nblk = lqp // FP4_TILE
        qm = qp.reshape(b, hq, nblk, FP4_TILE, d).float().mean(dim=3).to(qh.dtype)
        qsm = qp - qm.repeat_interleave(FP4_TILE, dim=2)
        delta_s = torch.matmul(qm, _expand_kv(ksp, hq).transpose(-1, -2)).float()
        delta_rows = delta_s.repeat_interleave(FP4_TILE, dim=2)  # [B,H,Lqp,Lkp]
    else:
        qsm, delta_rows = qp, None
    qd = dequantize_nvfp4(*quantize_nvfp4(qsm))
    kd = _expand_kv(dequantize_nvfp4(*quantize_nvfp4(ksp)), hq)
    # V: blocks of 16 along tokens of a channel.
    vq, vsf = quantize_nvfp4(vp.transpose(2, 3))
    vd = _expand_kv(dequantize_nvfp4(vq, vsf).transpose(2, 3), hq)  # [B,H,Lkp,D]

    m = torch.full((b, hq, lqp), float("-inf"), device=qh.device)
    dsum = torch.zeros(b, hq, lqp, device=qh.device)
    o = torch.zeros(b, hq, lqp, d, device=qh.device)
    rows = torch.arange(lqp, device=qh.device).unsqueeze(1)
    for j0 in reversed(range(0, lkp, FP4_TILE)):  # Sage3 runs KV tiles last to first
        j1 = j0 + FP4_TILE
        s = torch.matmul(qd, kd[:, :, j0:j1].transpose(-1, -2))
        if delta_rows is not None:
            s = s + delta_rows[..., j0:j1]
        t = s * c
        cols = torch.arange(j0, j1, device=qh.device).unsqueeze(0)
        masked = cols >= lk
        if is_causal:
            masked = masked | (cols > rows)
        t = t.masked_fill(masked, float("-inf"))
        p, m, dsum, alpha = _online_softmax_step(t, m, dsum, FP4_P_MAX_LOG2)
        # Level 2: per-16-key block scale s_b = max_b(P) / 6, payload on the e2m1 grid.
        pb = p.reshape(*p.shape[:-1], FP4_TILE // FP4_BLOCK, FP4_BLOCK)
        s_b = pb.amax(dim=-1, keepdim=True) / FP4_E2M1_MAX
        inv = torch.where(s_b > 0, 1.0 / s_b, torch.zeros_like(s_b))
        p4 = (e2m1_round(pb * inv) * e4m3_round(s_b)).reshape(p.shape)
        o = o * alpha.unsqueeze(-1) + torch.matmul(p4, vd[:, :, j0:j1].float())
    inv_d = torch.where((dsum > 0) & ~torch.isnan(dsum), 1.0 / dsum, torch.zeros_like(dsum))
    o = (o * inv_d.unsqueeze(-1))[:, :, :lq]
    lse = ((m + torch.log2(dsum)) * LN2)[:, :, :lq]
    if km is not None:
        lse = lse + lse_smoothing_correction(qh, km, sm_scale)
    return o, lse


def sageattn_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    sm_scale: float | None = None,
    return_lse: bool = False,
    *,
    qk_quant_gran: str = "per_thread",
    pv_accum_dtype: str = "fp32+fp32",
    smooth_k: bool = True,
    smooth_v: bool = False,
    smooth_q: bool = False,
    arch: str = "sm90",
    rowsum_p8: bool | None = None,
    q_mean: torch.Tensor | None = None,
    k_mean: torch.Tensor | None = None,
    **_ignored,
):
    """Emulate, step by step, the quantized attention ``arch``'s kernel computes.

    ``arch``: "sm90" (INT8 QK, FP8 PV; tiles 128x128, per-thread scales by
    the WGMMA fragment, softmax denominator from the e4m3 P), "sm89"
    (SageAttention2's 128x64 geometry), "sm100" /
    "sm120" (NVFP4 Q, K, P, V with Sage3's two-level P scaling; ``smooth_q``
    adds the per-128-row Q mean back through ``delta_s``). On "sm90" ``smooth_q``
    subtracts one Q mean per (batch, head) (``q_mean``, ``smooth_q_delta_s``); on "sm89"
    per-128-row block means, as SageAttention2.
    ``rowsum_p8``: INT8/FP8 archs only, the softmax denominator from the e4m3 P (the
    sm90 kernel's default with two-level PV accumulation) or the fp32 P (SageAttention2's;
    the sm90 kernel with ``rowsum_mma=False`` or pv_accum "fp32"); None: the arch's own.
    ``q_mean``: sm90 smooth_q only, the Q mean [B,Hq,1,D_padded] to subtract instead of
    ``q_mean(q)`` (e.g. the kernel's, which may differ from torch's by one unit in the
    last place, enough to move Q's INT8 rounding). ``k_mean``: INT8/FP8 archs with
    smooth_k, likewise the K mean [B,Hkv,1,D_padded] (e.g. the K/V preprocessing's).
    Returns the output in q's dtype and layout (and lse fp32 [B,Hq,Lq]).
    """
    qh, kh, vh = (to_hnd(t, tensor_layout) for t in (q, k, v))
    b, hq, lq, d = qh.shape
    lk = kh.shape[2]
    sm_scale = d**-0.5 if sm_scale is None else float(sm_scale)
    dp = padded_head_dim(d)
    qh, kh, vh = (_pad_last(t, dp) for t in (qh, kh, vh))
    if arch in ("sm100", "sm120"):
        o, lse = _emulate_fp4(
            qh, kh, vh, is_causal=is_causal, sm_scale=sm_scale, smooth_k=smooth_k, smooth_q=smooth_q, lq=lq, lk=lk
        )
    else:
        o, lse = _emulate_int8_fp8(
            qh,
            kh,
            vh,
            is_causal=is_causal,
            sm_scale=sm_scale,
            gran=QuantGranularity(qk_quant_gran),
            pv_accum=PvAccum(pv_accum_dtype),
            smooth_k=smooth_k,
            smooth_v=smooth_v,
            smooth_q=smooth_q,
            geom=geometry_for_arch(arch),
            lq=lq,
            lk=lk,
            rowsum_p8=(arch == "sm90" and pv_accum_dtype != "fp32") if rowsum_p8 is None else rowsum_p8,
            q_mean_per_head=arch == "sm90", q_mean_override=q_mean, k_mean_override=k_mean,
        )
    o = from_hnd(o[..., :d].to(q.dtype), tensor_layout)
    return (o, lse.float()) if return_lse else o
