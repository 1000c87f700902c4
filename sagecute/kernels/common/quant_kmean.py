"""Sequence mean of K per (batch, kv head, channel): the K smoothing vector.

One CTA per (16-channel chunk, head, batch), ``NUM_THREADS`` threads = 2 channel
vectors x 128 token lanes. Each thread sums its vector's 8 channels over tokens
``lane, lane + 128, ...`` with 16-byte loads (a token row's 16 channels are one
32-byte sector), then the token lanes are summed by a butterfly inside each warp
and over the warps in smem, in a fixed order. ``mean = sum / L`` (``div.rn``),
rounded to k's dtype (RNE) and stored as [B, H, 1, D] contiguous.

Note [K mean summation order]
-----------------------------
The reference is ``k.mean(dim=2)``: an fp32 sum in torch's own reduction order,
then rounded to k's dtype. This kernel sums in fp32 in the fixed order above,
so the fp32 sum may differ from torch's in the last bits, and the rounded mean
can, rarely, differ by one unit in the last place of the input dtype. That is
harmless (any per-head constant vector is an exact smoothing,
design/numerics.md §2, as long as the LSE correction uses the same mean, which
the caller gets back from the quantizer) and the result is deterministic. Tests
compare the INT8 payloads with the reference mean fed to the quantize step, and
the mean itself with a tolerance of one ulp.
"""

from __future__ import annotations

from typing import Type

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64
from cutlass.cutlass_dsl import Numeric

from .quant_math import div_rn, gmem_vec, warp_sum_bfly

VEC = 8
CHANNELS_PER_CTA = 16
NUM_THREADS = 256
TOKEN_LANES = NUM_THREADS // (CHANNELS_PER_CTA // VEC)  # 128
NUM_WARPS = NUM_THREADS // 32


class KMean:
    """``k.mean(dim=2, keepdim=True)`` for one (dtype, head_dim)."""

    def __init__(self, dtype: Type[Numeric], head_dim: int):
        if not self.can_implement(dtype, head_dim):
            raise ValueError(f"unsupported K mean config: {dtype}, head_dim={head_dim}")
        self.dtype = dtype
        self.head_dim = head_dim

    @staticmethod
    def can_implement(dtype, head_dim: int) -> bool:
        return dtype in (cutlass.BFloat16, cutlass.Float16) and head_dim % CHANNELS_PER_CTA == 0

    @cute.jit
    def __call__(
        self,
        k: cute.Pointer,  # dtype [B, H, L, D], strides (stride_b, stride_h, stride_l, 1), 16B aligned
        k_mean: cute.Pointer,  # dtype [B, H, 1, D] contiguous
        num_heads: Int32,
        seqlen: Int32,
        stride_b: Int64,
        stride_h: Int64,
        stride_l: Int64,
        batch: Int32,
        stream: cuda.CUstream,
    ):
        self.kernel(k, k_mean, num_heads, seqlen, stride_b, stride_h, stride_l).launch(
            grid=[self.head_dim // CHANNELS_PER_CTA, num_heads, batch],
            block=[NUM_THREADS, 1, 1],
            smem=NUM_WARPS * CHANNELS_PER_CTA * 4 + 64,
            stream=stream,
        )

    @cute.jit
    def call_tensors(self, k: cute.Tensor, k_mean: cute.Tensor, stream: cuda.CUstream):
        """Tensor-argument entry (TVM-FFI): k (B, H, L, D), k_mean (B, H, 1, D) contiguous."""
        self.__call__(
            k.iterator, k_mean.iterator, Int32(k.shape[1]), Int32(k.shape[2]),
            Int64(k.stride[0]), Int64(k.stride[1]), Int64(k.stride[2]), Int32(k.shape[0]), stream,
        )  # fmt: skip

    @cute.kernel
    def kernel(
        self,
        k: cute.Pointer,
        k_mean: cute.Pointer,
        num_heads: Int32,
        seqlen: Int32,
        stride_b: Int64,
        stride_h: Int64,
        stride_l: Int64,
    ):
        tid, _, _ = cute.arch.thread_idx()
        chunk, head, batch = cute.arch.block_idx()
        lane = tid % 32
        warp = tid // 32
        col = chunk * CHANNELS_PER_CTA + (tid % 2) * VEC
        token_lane = tid // 2

        smem = cutlass.memory.SmemAllocator()
        s_partial = smem.allocate_tensor(
            Float32, cute.make_layout((CHANNELS_PER_CTA, NUM_WARPS)), byte_alignment=16
        )  # (channel, warp)

        base = Int64(batch) * stride_b + Int64(head) * stride_h + Int64(col)
        acc = cute.make_rmem_tensor(cute.make_layout(VEC), Float32)
        acc.fill(0.0)
        for tok in cutlass.range(token_lane, seqlen, TOKEN_LANES, unroll=4):
            acc.store(acc.load() + gmem_vec(k, base + Int64(tok) * stride_l, VEC, VEC).load().to(Float32))

        # token lanes of a warp differ in lane bits 1..4
        for e in cutlass.range_constexpr(VEC):
            total = warp_sum_bfly(acc[e], 0b11110)
            if lane < 2:
                s_partial[(tid % 2) * VEC + e, warp] = total
        cute.arch.sync_threads()
        if tid < CHANNELS_PER_CTA:
            total = s_partial[tid, 0]
            for w in cutlass.range_constexpr(1, NUM_WARPS):
                total = total + s_partial[tid, w]
            mean = div_rn(total, Float32(seqlen))
            out = (Int64(batch) * Int64(num_heads) + Int64(head)) * Int64(self.head_dim)
            out = out + Int64(chunk * CHANNELS_PER_CTA + tid)
            gmem_vec(k_mean, out, 1, 1)[0] = mean.to(self.dtype)
