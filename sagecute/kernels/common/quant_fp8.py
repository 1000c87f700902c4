"""FP8 e4m3 V, per channel, fused with the transpose to [B, H, D, Lpad], the zero
padding to ``Lpad`` (a multiple of ``blk_k``) and the per-16-token permutation
(Note [V token permutation] in ``quant_layout.py``). One launch.

One CTA per (16-channel chunk, head, batch), 128 threads = 2 channel vectors x
64 token-group lanes. Reads V twice (the second pass mostly from L2):
  1. amax per channel over the L true tokens: 16-byte loads of tokens
     ``lane, lane + 64, ...``; butterfly over the warp's token lanes, then a max
     over the warps in smem. ``v_scale = amax / scale_max`` and
     ``inv = scale_max / amax`` (0 when amax is 0), both ``div.rn``.
  2. each thread takes whole 16-token groups: 16 vector loads (8 channels x 16
     tokens; tokens >= L read as zero), then per channel four
     ``cvt.rn.satfinite.e4m3x2.f32`` pairs in permuted order -> one 16-byte store
     into that channel's row. Lanes of a warp write 16 consecutive groups of a
     row: 256 contiguous bytes per store instruction and channel.

Numerics: Note [Bit-exact quantizer arithmetic] in ``quant_math.py``.
"""

from __future__ import annotations

from typing import Optional, Type

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, const_expr
from cutlass.cutlass_dsl import Numeric

from ...quant_layout import V_TOKEN_PERM, QuantGeometry
from .quant_math import div_rn, gmem_load, gmem_store, gmem_vec, pack_e4m3x4, warp_max_bfly

VEC = 8
CHANNELS_PER_CTA = 16
NUM_THREADS = 128
TOKEN_LANES = NUM_THREADS // (CHANNELS_PER_CTA // VEC)  # 64
NUM_WARPS = NUM_THREADS // 32
GROUP = 16  # tokens per permutation group


def _perm_words() -> list[tuple[int, int, int, int]]:
    """Tokens (within a 16-token group) of bytes 0..3 of each of the 4 output words."""
    return [tuple(V_TOKEN_PERM[4 * w + b] for b in range(4)) for w in range(GROUP // 4)]


def channel_inv(amax: Float32, scale_max: Float32) -> Float32:
    """``scale_max / amax`` (``div.rn``); an all-zero channel gets 0 (payload 0), not
    ``scale_max / 0``. The channel's ``v_scale`` is ``div_rn(amax, scale_max)``."""
    return Float32(cutlass.select_(amax > Float32(0.0), div_rn(scale_max, amax), Float32(0.0)))


class QuantizeVFp8:
    """Per-channel FP8 V quantizer for one (dtype, head_dim, geometry)."""

    def __init__(self, dtype: Type[Numeric], head_dim: int, geom: QuantGeometry):
        if not self.can_implement(dtype, head_dim, geom):
            raise ValueError(f"unsupported FP8 V quantizer config: {dtype}, head_dim={head_dim}, {geom}")
        self.dtype = dtype
        self.head_dim = head_dim
        self.blk_k = geom.blk_k
        self.perm_words = _perm_words()

    @staticmethod
    def can_implement(dtype, head_dim: int, geom: QuantGeometry) -> bool:
        return (
            dtype in (cutlass.BFloat16, cutlass.Float16)
            and head_dim % CHANNELS_PER_CTA == 0
            and geom.blk_k % GROUP == 0
        )

    @cute.jit
    def __call__(
        self,
        v: cute.Pointer,  # dtype [B, H, L, D], strides (stride_b, stride_h, stride_l, 1), 16B aligned
        v_fp8: cute.Pointer,  # e4m3 [B, H, D, Lpad] contiguous, viewed as Int32 words
        v_scale: cute.Pointer,  # fp32 [B, H, D] contiguous
        num_heads: Int32,
        seqlen: Int32,
        stride_b: Int64,
        stride_h: Int64,
        stride_l: Int64,
        scale_max: Float32,
        batch: Int32,
        stream: cuda.CUstream,
    ):
        self.kernel(v, v_fp8, v_scale, num_heads, seqlen, stride_b, stride_h, stride_l, scale_max).launch(
            grid=[self.head_dim // CHANNELS_PER_CTA, num_heads, batch],
            block=[NUM_THREADS, 1, 1],
            smem=(NUM_WARPS + 1) * CHANNELS_PER_CTA * 4 + 64,
            stream=stream,
        )

    @cute.jit
    def call_tensors(
        self,
        v: cute.Tensor,  # dtype (B, H, L, D), strides divisible by 8, unit last stride
        v_fp8: cute.Tensor,  # uint8 view of e4m3 (B, H, D, Lpad) contiguous
        v_scale: cute.Tensor,  # fp32 (B, H, D) contiguous
        scale_max: Float32,
        stream: cuda.CUstream,
    ):
        """Tensor-argument entry (TVM-FFI): the same launch as ``__call__``."""
        self.__call__(
            v.iterator, cute.recast_ptr(v_fp8.iterator, dtype=Int32), v_scale.iterator,
            Int32(v.shape[1]), Int32(v.shape[2]), Int64(v.stride[0]), Int64(v.stride[1]), Int64(v.stride[2]),
            scale_max, Int32(v.shape[0]), stream,
        )  # fmt: skip

    @cute.kernel
    def kernel(
        self,
        v: cute.Pointer,
        v_fp8: cute.Pointer,
        v_scale: cute.Pointer,
        num_heads: Int32,
        seqlen: Int32,
        stride_b: Int64,
        stride_h: Int64,
        stride_l: Int64,
        scale_max: Float32,
    ):
        tid, _, _ = cute.arch.thread_idx()
        chunk, head, batch = cute.arch.block_idx()
        lane = tid % 32
        warp = tid // 32
        vec_in_chunk = tid % 2
        col = chunk * CHANNELS_PER_CTA + vec_in_chunk * VEC
        token_lane = tid // 2
        bh = Int64(batch) * Int64(num_heads) + Int64(head)

        smem = cutlass.memory.SmemAllocator()
        s_partial = smem.allocate_tensor(
            Float32, cute.make_layout((CHANNELS_PER_CTA, NUM_WARPS)), byte_alignment=16
        )  # (channel, warp)
        s_inv = smem.allocate_tensor(Float32, cute.make_layout(CHANNELS_PER_CTA), byte_alignment=16)

        # 1. per-channel amax over the true tokens
        base = Int64(batch) * stride_b + Int64(head) * stride_h + Int64(col)
        amax = cute.make_rmem_tensor(cute.make_layout(VEC), Float32)
        amax.fill(0.0)
        for tok in cutlass.range(token_lane, seqlen, TOKEN_LANES, unroll=4):
            x = gmem_vec(v, base + Int64(tok) * stride_l, VEC, VEC).load().to(Float32)
            for e in cutlass.range_constexpr(VEC):
                amax[e] = cute.arch.fmax(amax[e], abs(x[e]))
        for e in cutlass.range_constexpr(VEC):
            m = warp_max_bfly(amax[e], 0b11110)
            if lane < 2:
                s_partial[vec_in_chunk * VEC + e, warp] = m
        cute.arch.sync_threads()
        scale_off = bh * Int64(self.head_dim) + Int64(chunk * CHANNELS_PER_CTA + tid)
        if tid < CHANNELS_PER_CTA:
            m = s_partial[tid, 0]
            for other_warp in cutlass.range_constexpr(1, NUM_WARPS):
                m = cute.arch.fmax(m, s_partial[tid, other_warp])
            s_inv[tid] = channel_inv(m, scale_max)
            gmem_vec(v_scale, scale_off, 1, 1)[0] = div_rn(m, scale_max)
        cute.arch.sync_threads()
        rInv = cute.make_rmem_tensor(cute.make_layout(VEC), Float32)
        for e in cutlass.range_constexpr(VEC):
            rInv[e] = s_inv[vec_in_chunk * VEC + e]

        # 2. quantize, transpose, pad, permute: whole 16-token groups per thread
        padded_len = (seqlen + self.blk_k - 1) // self.blk_k * self.blk_k
        words_per_row = padded_len // 4
        rX = cute.make_rmem_tensor(cute.make_layout((VEC, GROUP)), self.dtype)  # (channel, token)
        for group in cutlass.range(token_lane, padded_len // GROUP, TOKEN_LANES):
            self.load_group(rX, v, base, stride_l, group, seqlen)
            self.store_group(rX, rInv, v_fp8, bh * Int64(self.head_dim) + Int64(col), group, words_per_row)

    # ============================================================ device pieces
    # @cute.jit methods inlined into a kernel (this one and ``quant_qkv.QuantizeQKV``).
    @cute.jit
    def load_group(
        self, rX: cute.Tensor, v: cute.Pointer, base: Int64, stride_l: Int64, group, seqlen, part=0,
        cop: cutlass.Constexpr = None,
    ):  # fmt: skip
        """Into ``rX`` (channel, token): tokens ``16 group .. 16 group + 15`` of the 8
        channels at ``base``, or with ``n = size(rX, 1) < 16`` tokens, the ``n`` of part
        ``part`` of the group (Note [Half groups] in ``quant_qkv.py``); tokens >=
        ``seqlen`` read as zero. ``cop``: the loads' cache operator (``gmem_load``)."""
        n = cute.size(rX, mode=[1])
        tok0 = group * GROUP + part * n
        rX.fill(0.0)
        for j in cutlass.range_constexpr(n):
            if tok0 + j < seqlen:
                rX[None, j].store(gmem_load(v, base + Int64(tok0 + j) * stride_l, VEC, cop))

    @cute.jit
    def scaled(self, rX: cute.Tensor, e: cutlass.Constexpr[int], j: cutlass.Constexpr[int], rInv: cute.Tensor,
               mean: Optional[cute.Tensor] = None, tok0=0, seqlen=0) -> Float32:
        """Element (channel ``e``, token ``j``) of ``rX`` times its channel's ``inv``; with
        ``mean`` (smooth_v, Note [V mean] in ``quant_qkv.py``) ``(x - mean) * inv`` for
        true tokens (``tok0 + j < seqlen``) and 0 for the padding, as the reference pads
        after quantizing."""
        x = rX[e, j].to(Float32)
        if const_expr(mean is not None):
            x = cutlass.select_(tok0 + j < seqlen, x - mean[e], Float32(0.0))
        return x * rInv[e]

    @cute.jit
    def store_group(self, rX: cute.Tensor, rInv: cute.Tensor, v_fp8: cute.Pointer, row0: Int64, group, words_per_row,
                    mean: Optional[cute.Tensor] = None, seqlen=0, cop: cutlass.Constexpr = None):
        """``rX * rInv`` (or ``(rX - mean) * rInv``: ``scaled``) in e4m3, permuted (Note
        [V token permutation]), as one 16-byte store (cache operator ``cop``) into each
        of the rows ``row0 .. row0 + 7`` of the [.., D, Lpad] output."""
        rOut = cute.make_rmem_tensor(cute.make_layout(GROUP // 4), Int32)
        tok0 = group * GROUP
        for e in cutlass.range_constexpr(VEC):
            for w in cutlass.range_constexpr(GROUP // 4):
                t = self.perm_words[w]
                rOut[w] = pack_e4m3x4(
                    self.scaled(rX, e, t[0], rInv, mean, tok0, seqlen),
                    self.scaled(rX, e, t[1], rInv, mean, tok0, seqlen),
                    self.scaled(rX, e, t[2], rInv, mean, tok0, seqlen),
                    self.scaled(rX, e, t[3], rInv, mean, tok0, seqlen),
                )
            row = row0 + Int64(e)
            gmem_store(v_fp8, row * Int64(words_per_row) + Int64(group * (GROUP // 4)), rOut.load(), cop)
