"""Smoothing and quantization of Q, K, V into the layouts a kernel reads.

``quantize_inputs`` is the one entry the API calls. It uses the CuTe DSL
kernels of ``preprocess/kernels.py`` when they are importable and the inputs
are on a GPU (K and V, and Q unless the attention kernel quantizes it, in one
launch where supported), else the torch quantizers of ``sagecute.reference`` (bit-exact
with them by contract, docs/kernel-contract.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import reference
from ..quant_layout import SM90_GEOMETRY, PvAccum, QuantGranularity, v_scale_max


@dataclass
class QuantizedInputs:
    """Everything an INT8-QK / FP8-PV kernel reads (HND, contiguous)."""

    # int8 [B, Hq, Lq, D] with q_scale fp32 [B, Hq, n_q]; or, with ``fuse_q``, the
    # bf16/fp16 Q itself (16-byte aligned HND view) and q_scale None: the sm90 kernel
    # quantizes it (Note [Fused Q quantization] in kernels/sm90/attn_fwd.py)
    q: torch.Tensor
    q_scale: torch.Tensor | None
    k_int8: torch.Tensor  # int8 [B, Hkv, Lk, D]
    k_scale: torch.Tensor  # fp32 [B, Hkv, n_k]
    v_fp8: torch.Tensor  # e4m3 [B, Hkv, D, Lk_pad]
    v_scale: torch.Tensor  # fp32 [B, Hkv, D]
    k_mean: torch.Tensor | None  # [B, Hkv, 1, D] input dtype, smooth_k only
    granularity: QuantGranularity
    pv_accum: PvAccum
    # fp32 [B, Hkv, D], smooth_v only: V was quantized minus it, the kernel adds it to O
    # (Note [V mean] in kernels/common/quant_qkv.py)
    v_mean: torch.Tensor | None = None
    # smooth_q (sm90): Q's sequence mean [B, Hq, 1, D] (input dtype), which the
    # attention kernel subtracts before quantizing Q, and delta_s fp32 [B, Hq, Lk padded
    # to 128], q_mean . (k_j - k_mean), which it adds to every score of key j (Note
    # [smooth_q on sm90] in kernels/sm90/attn_fwd.py)
    q_mean: torch.Tensor | None = None
    delta_s: torch.Tensor | None = None


@functools.lru_cache(maxsize=1)
def _cute_quantizers():
    """The CuTe DSL quantizers, or None where they cannot run."""
    try:
        from . import kernels
    except Exception:  # noqa: BLE001 - DSL missing or broken: use torch
        return None
    return kernels


def quantize_inputs(
    qh: torch.Tensor,
    kh: torch.Tensor,
    vh: torch.Tensor,
    *,
    granularity: QuantGranularity,
    pv_accum: PvAccum,
    smooth_k: bool,
    smooth_v: bool = False,
    use_cute: bool | None = None,
    scratch: bool = False,
    fuse_q: bool = False,
    smooth_q: bool = False,
) -> QuantizedInputs:
    """Quantize head-padded HND views (any strides, unit last stride). ``scratch``:
    outputs may live in buffers the next call with the same shapes reuses (the
    API's per-call temporaries; Note [Preprocess host cost] in ``kernels.py``).
    ``fuse_q``: leave Q to the attention kernel where the CuTe DSL path runs (else Q
    is quantized here as usual). ``smooth_q`` (sm90: one Q mean per head): also Q's
    mean and ``delta_s``; Q is then quantized minus its mean
    (here, or by the attention kernel with ``fuse_q``)."""
    scale_max = v_scale_max(pv_accum)
    cute = _cute_quantizers() if (use_cute is not False and qh.is_cuda) else None
    if cute is not None:
        # with fuse_q the attention kernel takes Q as is, TMA-ready: any copy that needs
        # is made first, so the K/V preprocessing stays the kernel right before the
        # attention (Note [PDL after the preprocessing] in kernels/sm90/attn_fwd.py)
        q_in = cute.tma_ready(qh) if fuse_q else None
        qm = delta = None
        if smooth_q:
            # Q's mean first (one more launch), then K/V with delta_s (Note [delta_s in
            # the K pass]); Q itself is quantized minus qm by the attention kernel or below
            qm = cute.k_mean_cute(qh)
            q8, qs, k8, ks, km, v8, vs, vm, delta = cute.quantize_qkv_cute(
                qh, kh, vh, granularity, smooth_k, scale_max, scratch=scratch, with_q=False, smooth_v=smooth_v,
                q_mean=qm,
            )  # fmt: skip
            if not fuse_q:
                q8, qs = reference.quantize_qk_int8(qh, granularity, SM90_GEOMETRY, is_k=False, mean=qm)
        else:
            # one launch where it can (``kernels/common/quant_qkv.py``), else the
            # standalone kernels; with fuse_q either path leaves Q out
            q8, qs, k8, ks, km, v8, vs, vm = cute.quantize_qkv_cute(
                qh, kh, vh, granularity, smooth_k, scale_max, scratch=scratch, with_q=not fuse_q, smooth_v=smooth_v
            )
        if fuse_q:
            q8 = q_in
    else:
        km = reference.k_mean(kh) if smooth_k else None
        qm = reference.q_mean(qh) if smooth_q else None
        delta = None
        if smooth_q:
            delta = reference.smooth_q_delta_s(qm, kh, km)
            delta = torch.nn.functional.pad(delta, (0, SM90_GEOMETRY.padded_kv_len(kh.shape[2]) - kh.shape[2]))
        q8, qs = reference.quantize_qk_int8(qh, granularity, SM90_GEOMETRY, is_k=False, mean=qm)
        k8, ks = reference.quantize_qk_int8(kh, granularity, SM90_GEOMETRY, is_k=True, mean=km)
        vm = reference.v_mean(vh) if smooth_v else None
        v8, vs = reference.quantize_v_fp8(vh, SM90_GEOMETRY, scale_max=scale_max, mean=vm)
    return QuantizedInputs(q8, qs, k8, ks, v8, vs, km, granularity, pv_accum, vm, qm, delta)
