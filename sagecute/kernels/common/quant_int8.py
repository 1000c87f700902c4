"""INT8 quantization of Q or K (optionally minus the K mean) in one launch.

Dataflow (one CTA per ``blk``-row block of one (batch, head)):
  1. every thread loads ``blk / rows_per_pass`` rows x 8 channels of x with 16-byte
     vector loads (rows past L read as zero) and keeps them in registers;
  2. row amax = max |x - mean| over the thread's 8 channels, then a butterfly over
     the ``head_dim / 8`` lanes sharing the row -> smem ``row_amax[blk]``;
  3. thread ``t`` reduces row ``t``'s value over its scale group (Note [Scale
     groups as bit masks]), clamps it to ``INT8_AMAX_FLOOR``, writes
     ``scale = amax / 127`` (group leaders) and ``inv = 127 / amax`` to smem;
  4. every thread quantizes its rows from registers, ``clamp(rne(xf * inv))``,
     and stores 8 int8 (one 8-byte store) per row.

Reads x once; writes int8 [B, H, L, D] and fp32 scales [B, H, n] contiguous.
Numerics: Note [Bit-exact quantizer arithmetic] in ``quant_math.py``.
CUDA cores only; compiles for sm_90a, sm_100a and sm_120a.

Note [Scale groups as bit masks]
--------------------------------
Every scale grouping of ``quant_layout.QuantGeometry`` inside one ``blk``-row
block is "rows whose index differs only in the bits of a mask F": per_warp ->
the low log2(warp) bits; per_block -> all bits; Q per_thread -> bits 3 ..
log2(warp_q)-1 (rows equal mod 8 within a warp segment); K per_thread -> bit 0
and bits 3 .. log2(warp_k)-1 (tokens with equal (j % 8) // 2). The group's
scale index within the block is the row index with the bits of F squeezed out.
Group amax = butterfly over the bits of F below 5 (lanes), then a max over the
warps named by the bits of F above 4 (smem). ``_group_mask`` derives F and
checks it against ``q_scale_index`` / ``k_scale_index`` for every row.
"""

from __future__ import annotations

from typing import Optional, Type

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, const_expr
from cutlass.cutlass_dsl import Numeric

from ...quant_layout import INT8_AMAX_FLOOR, INT8_MAX, QuantGeometry, QuantGranularity
from .quant_math import (
    div_rn, gmem_load, gmem_store, gmem_vec, quantize_int8x4, recompute_here, warp_max_bfly, widen_row
)

VEC = 8  # 16-byte vectors of bf16/fp16


def _group_mask(geom: QuantGeometry, gran: QuantGranularity, is_k: bool) -> tuple[int, int]:
    """(F, scales per block) for Note [Scale groups as bit masks], verified."""
    blk = geom.blk_k if is_k else geom.blk_q
    index = (lambda r: geom.k_scale_index(r, gran)) if is_k else (lambda r: geom.q_scale_index(r, gran))
    n_per_block = (geom.num_k_scales if is_k else geom.num_q_scales)(blk, gran)
    bits = blk.bit_length() - 1
    mask = 0
    for bit in range(bits):
        if all(index(r) == index(r ^ (1 << bit)) for r in range(blk)):
            mask |= 1 << bit
    for r in range(blk):
        if _squeeze(r, mask, bits) != index(r) % n_per_block or index(r) // n_per_block != 0:
            raise ValueError(f"scale grouping {gran} (is_k={is_k}) of {geom} is not a bit-mask grouping")
    return mask, n_per_block


def _warp_offsets(mask: int) -> list[int]:
    """Row offsets (all combinations, 0 included) of the bits of ``mask`` above the
    lane bits; empty when the group lives inside one warp."""
    high = [b for b in range(5, 31) if mask & (1 << b)]
    if not high:
        return []
    return [sum(1 << high[k] for k in range(len(high)) if s & (1 << k)) for s in range(1 << len(high))]


def _squeeze(r, mask: int, bits: int):
    """``r`` with the bits of ``mask`` removed (works on ints and DSL Int32)."""
    out, k = 0, 0
    for bit in range(bits):
        if not mask & (1 << bit):
            out = out | (((r >> bit) & 1) << k)
            k += 1
    return out


class QuantizeInt8:
    """INT8 Q/K quantizer for one (dtype, head_dim, granularity, is_k, has_mean, geometry)."""

    def __init__(
        self,
        dtype: Type[Numeric],
        head_dim: int,
        gran: QuantGranularity,
        is_k: bool,
        has_mean: bool,
        geom: QuantGeometry,
    ):
        self.dtype = dtype
        self.head_dim = head_dim
        self.gran = gran
        self.is_k = is_k
        self.has_mean = has_mean
        self.blk = geom.blk_k if is_k else geom.blk_q
        self.group_mask, self.scales_per_block = _group_mask(geom, gran, is_k)
        self.num_threads = self.blk  # thread t owns row t of the block in step 3
        self.threads_per_row = head_dim // VEC
        if not self.can_implement(dtype, head_dim, self.blk):
            raise ValueError(f"unsupported INT8 quantizer config: {dtype}, head_dim={head_dim}, blk={self.blk}")
        self.rows_per_pass = self.num_threads // self.threads_per_row
        self.rows_per_thread = self.blk // self.rows_per_pass
        self.warp_offsets = _warp_offsets(self.group_mask)
        self.blk_bits = self.blk.bit_length() - 1


    @staticmethod
    def can_implement(dtype, head_dim: int, blk: int) -> bool:
        tpr = head_dim // VEC
        return (
            dtype in (cutlass.BFloat16, cutlass.Float16)
            and head_dim % VEC == 0
            and 1 <= tpr <= 32
            and tpr & (tpr - 1) == 0
            and blk in (32, 64, 128)
            and tpr <= blk
        )

    @cute.jit
    def __call__(
        self,
        x: cute.Pointer,  # dtype [B, H, L, D], strides (stride_b, stride_h, stride_l, 1), 16B aligned
        mean: cute.Pointer,  # dtype [B, H, 1, D], strides (mean_stride_b, mean_stride_h, -, 1); unused without has_mean
        x_int8: cute.Pointer,  # int8 [B, H, L, D] contiguous, viewed as Int32 words
        scale: cute.Pointer,  # fp32 [B, H, n] contiguous
        num_heads: Int32,
        seqlen: Int32,
        stride_b: Int64,
        stride_h: Int64,
        stride_l: Int64,
        mean_stride_b: Int64,
        mean_stride_h: Int64,
        batch: Int32,
        stream: cuda.CUstream,
    ):
        num_blocks = (seqlen + self.blk - 1) // self.blk
        self.kernel(
            x, mean, x_int8, scale, num_heads, seqlen, stride_b, stride_h, stride_l, mean_stride_b, mean_stride_h
        ).launch(
            grid=[num_blocks, num_heads, batch],
            block=[self.num_threads, 1, 1],
            smem=3 * self.blk * 4 + 64,
            stream=stream,
        )

    @cute.jit
    def call_tensors(
        self,
        x: cute.Tensor,  # dtype (B, H, L, D), strides divisible by 8, unit last stride
        mean: Optional[cute.Tensor],  # dtype (B, H, 1, D), or None
        x_int8: cute.Tensor,  # int8 (B, H, L, D) contiguous
        scale: cute.Tensor,  # fp32 (B, H, n) contiguous
        stream: cuda.CUstream,
    ):
        """Tensor-argument entry (TVM-FFI): the same launch as ``__call__``."""
        mean_ptr, mean_stride_b, mean_stride_h = x.iterator, Int64(0), Int64(0)
        if const_expr(mean is not None):
            mean_ptr, mean_stride_b, mean_stride_h = mean.iterator, Int64(mean.stride[0]), Int64(mean.stride[1])
        self.__call__(
            x.iterator, mean_ptr, cute.recast_ptr(x_int8.iterator, dtype=Int32), scale.iterator,
            Int32(x.shape[1]), Int32(x.shape[2]), Int64(x.stride[0]), Int64(x.stride[1]), Int64(x.stride[2]),
            mean_stride_b, mean_stride_h, Int32(x.shape[0]), stream,
        )  # fmt: skip

    @cute.kernel
    def kernel(
        self,
        x: cute.Pointer,
        mean: cute.Pointer,
        x_int8: cute.Pointer,
        scale: cute.Pointer,
        num_heads: Int32,
        seqlen: Int32,
        stride_b: Int64,
        stride_h: Int64,
        stride_l: Int64,
        mean_stride_b: Int64,
        mean_stride_h: Int64,
    ):
        tid, _, _ = cute.arch.thread_idx()
        blk_idx, head, batch = cute.arch.block_idx()
        smem = cutlass.memory.SmemAllocator()
        s_block = self.allocate_smem(smem)
        x_base = Int64(batch) * stride_b + Int64(head) * stride_h
        rX = cute.make_rmem_tensor(cute.make_layout((VEC, self.rows_per_thread)), self.dtype)
        self.load_rows(rX, x, x_base, stride_l, blk_idx, seqlen, tid)
        mean_f32 = cute.make_rmem_tensor(cute.make_layout(VEC), Float32)
        mean_f32.fill(0.0)
        if const_expr(self.has_mean):
            m_off = Int64(batch) * mean_stride_b + Int64(head) * mean_stride_h + Int64(self.col(tid))
            mean_f32.store(gmem_vec(mean, m_off, VEC, VEC).load().to(Float32))
        bh = Int64(batch) * Int64(num_heads) + Int64(head)
        self.quantize_rows(rX, mean_f32, x_int8, scale, bh, blk_idx, seqlen, tid, s_block)

    # ============================================================ device pieces
    # @cute.jit methods inlined into a kernel (this one and ``quant_qkv.QuantizeQKV``).
    def col(self, tid):
        """First of the 8 channels thread ``tid`` owns."""
        return (tid % self.threads_per_row) * VEC

    def allocate_smem(self, smem, copies: int = 1) -> tuple:
        """(row_amax, partial, inv), ``blk`` fp32 each; ``copies`` > 1: (blk, copies),
        one column per group of ``blk`` threads that quantizes blocks on its own."""
        layout = cute.make_layout(self.blk) if copies == 1 else cute.make_layout((self.blk, copies))
        return tuple(smem.allocate_tensor(Float32, layout, byte_alignment=16) for _ in range(3))

    @cute.jit
    def load_rows(
        self, rX: cute.Tensor, x: cute.Pointer, x_base: Int64, stride_l: Int64, blk_idx, seqlen, tid,
        cop: cutlass.Constexpr = None,
    ):  # fmt: skip
        """Step 1 into ``rX`` (VEC, rpt): rows ``blk_idx * blk + tid // tpr + rpp * i`` of
        the (batch, head) at ``x_base``, this thread's 8 channels; rows past ``seqlen``
        read as zero. ``cop``: the loads' cache operator (``gmem_load``)."""
        rpp, rpt = self.rows_per_pass, self.rows_per_thread
        row0 = blk_idx * self.blk + tid // self.threads_per_row
        base = x_base + Int64(self.col(tid))
        rX.fill(0.0)
        for i in cutlass.range_constexpr(rpt):
            if row0 + rpp * i < seqlen:
                rX[None, i].store(gmem_load(x, base + Int64(row0 + rpp * i) * stride_l, VEC, cop))

    @cute.jit
    def quantize_rows(
        self, rX: cute.Tensor, mean_f32: cute.Tensor, x_int8: cute.Pointer, scale: cute.Pointer,
        bh: Int64, blk_idx, seqlen, tid, s_block: tuple, store_cop: cutlass.Constexpr = None,
        sync: cutlass.Constexpr = None,
    ):  # fmt: skip
        """Steps 2-4 for the block ``load_rows`` read: scales of (batch*heads + head)
        ``bh`` and its int8 rows (stored with cache operator ``store_cop``). Ends with
        the CTA's smem free again. ``sync``: the barrier of the ``blk`` threads taking
        part (a warpgroup's named barrier where a CTA holds several; default the CTA's)."""
        blk, tpr, rpp, rpt = self.blk, self.threads_per_row, self.rows_per_pass, self.rows_per_thread
        s_row_amax, s_partial, s_inv = s_block
        col = self.col(tid)
        row_in_pass = tid // tpr
        row0 = blk_idx * blk

        # 2. row amax over |x - mean|; padding rows count as 0
        for i in cutlass.range_constexpr(rpt):
            xf = self._smoothed(rX, i, mean_f32)
            amax = Float32(0.0)
            for e in cutlass.range_constexpr(VEC):
                amax = cute.arch.fmax(amax, abs(xf[e]))
            amax = warp_max_bfly(amax, tpr - 1)
            row = row0 + row_in_pass + rpp * i
            if row >= seqlen:
                amax = Float32(0.0)
            if tid % tpr == 0:
                s_row_amax[row_in_pass + rpp * i] = amax
        self._sync(sync)

        # 3. group amax -> scale (leaders) and inv (every row)
        amax = warp_max_bfly(s_row_amax[tid], self.group_mask & 31)
        if const_expr(len(self.warp_offsets) > 0):
            s_partial[tid] = amax
            self._sync(sync)
            # this row's lane bits, group's first warp; recomputed per block (not hoisted:
            # two addresses live through the K/V kernel's block loop cost a spill at 128
            # registers)
            row_in_warp0 = recompute_here(tid) & ~(self.group_mask & ~31)
            for k in cutlass.range_constexpr(len(self.warp_offsets)):
                amax = cute.arch.fmax(amax, s_partial[row_in_warp0 | self.warp_offsets[k]])
        amax = cute.arch.fmax(amax, Float32(INT8_AMAX_FLOOR))
        s_inv[tid] = div_rn(Float32(INT8_MAX), amax)
        if (tid & self.group_mask) == 0:
            n_scales = ((seqlen + blk - 1) // blk) * self.scales_per_block
            s_off = bh * Int64(n_scales)
            s_off = s_off + Int64(blk_idx * self.scales_per_block + _squeeze(tid, self.group_mask, self.blk_bits))
            gmem_vec(scale, s_off, 1, 1)[0] = div_rn(amax, Float32(INT8_MAX))
        self._sync(sync)

        # 4. quantize from registers, 8 int8 = 2 words per row
        words_per_row = self.head_dim // 4
        o_base = bh * Int64(seqlen) * Int64(words_per_row)
        o_first = o_base + Int64(row0 + row_in_pass) * Int64(words_per_row) + Int64(col // 4)
        rOut = cute.make_rmem_tensor(cute.make_layout(2), Int32)
        for i in cutlass.range_constexpr(rpt):
            row = row0 + row_in_pass + rpp * i
            if row < seqlen:
                inv = s_inv[row_in_pass + rpp * i]
                # spelling 1: not merged with step 2's conversions (fewer live registers)
                xq = [self._minus_mean(x, mean_f32, e) for e, x in enumerate(widen_row(rX[None, i], 1))]
                # step 2's amax covers these very values (rows past seqlen are not
                # stored): Note [int8 rounding by a magic add]
                rOut[0] = quantize_int8x4(xq[0], xq[1], xq[2], xq[3], inv, saturate=False)
                rOut[1] = quantize_int8x4(xq[4], xq[5], xq[6], xq[7], inv, saturate=False)
                gmem_store(x_int8, o_first + Int64(rpp * i * words_per_row), rOut.load(), store_cop)
        # the next block's step 2 rewrites s_row_amax / s_inv
        self._sync(sync)

    @staticmethod
    def _sync(sync):
        if const_expr(sync is None):
            cute.arch.sync_threads()
        else:
            sync()

    def _minus_mean(self, x: Float32, mean_f32: cute.Tensor, e: int) -> Float32:
        return x - mean_f32[e] if const_expr(self.has_mean) else x

    def _smoothed(self, rX: cute.Tensor, i: int, mean_f32: cute.Tensor) -> list:
        """fp32 ``x - mean`` (or ``x``) of the thread's ``i``-th row (VEC values)."""
        return [self._minus_mean(x, mean_f32, e) for e, x in enumerate(widen_row(rX[None, i], 0))]
