"""Where quantization scales live: the contract between quantizers and kernels.

Pure Python (no torch, no CuTe DSL) so host code, the torch reference and the
device kernels all read the same definitions. See ``design/numerics.md`` §3-§4.

Shapes are in HND order. The quantizers always produce contiguous HND tensors:

* ``q_int8``  int8   [B, Hq,  Lq, D]
* ``q_scale`` fp32   [B, Hq,  num_q_scales(Lq)]
* ``k_int8``  int8   [B, Hkv, Lk, D]
* ``k_scale`` fp32   [B, Hkv, num_k_scales(Lk)]
* ``v_fp8``   e4m3   [B, Hkv, D, padded_kv_len(Lk)]  (token axis last, permuted per 16 tokens)
* ``v_scale`` fp32   [B, Hkv, D]

Note [Per-thread scale groups]
------------------------------
"Per-thread" groups follow the WGMMA accumulator fragment: in a warp's 16-row
slice, lane ``l`` owns rows ``l//4`` and ``l//4 + 8``, and in every 8-column
group the columns ``2*(l%4) + {0,1}``. So inside each ``warp_q``-row segment the
rows with the same index mod 8 share one Q scale (8 scales per segment), and
inside each ``warp_k``-token segment the tokens with ``(j % 8) // 2 == t``
share K scale ``t`` (4 scales per segment). Each thread then needs exactly one
``q_scale * k_scale`` product per row per KV block.

Note [V token permutation]
--------------------------
The FP8 WGMMA's A operand (P, from registers) reads the S accumulator's
columns {2t, 2t+1, 2t+8, 2t+9} of each 16-column chunk as k = 4t..4t+3. V's
token axis is permuted within every 16 tokens so that position ``p`` holds
token ``V_TOKEN_PERM[p]``; then P feeds the MMA with no shuffles.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Position p of every 16-token group of V^T holds token V_TOKEN_PERM[p].
V_TOKEN_PERM = (0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15)

INT8_MAX = 127.0
# Smallest amax a Q/K group is quantized with; an all-zero group gets this
# scale instead of 0 so the payload division stays finite.
INT8_AMAX_FLOOR = 1e-7
FP8_E4M3_MAX = 448.0
# scale_max for V when PV partial sums are kept in fp16 (fp32+fp16 mode):
# 64 tokens * 448 * 2.25 < 65504.
FP8_SCALE_MAX_FP16_ACCUM = 2.25
# fp32+fp16: keys per fp16 partial sum, the 64 of the bound above
FP16_ACC_KEYS = 64
# S_FP8_OFFSET = log2(448): the running max is kept this much below the true
# max so a row's largest P is 448, the e4m3 maximum.
P_FP8_OFFSET_LOG2 = 8.807
LOG2E = 1.4426950408889634


class QuantGranularity(enum.Enum):
    PER_BLOCK = "per_block"
    PER_WARP = "per_warp"
    PER_THREAD = "per_thread"


class PvAccum(enum.Enum):
    """How P @ V partial sums are accumulated (numerics.md §5)."""

    FP32 = "fp32"  # one FP8-MMA accumulation chain over all KV blocks
    FP32_FP32 = "fp32+fp32"  # fresh FP8-MMA chain per KV block, promoted with an fp32 add
    FP32_FP16 = "fp32+fp16"  # fp16 partial sums per 64 keys (V at +-2.25), promoted to fp32


def v_scale_max(pv_accum: PvAccum) -> float:
    """The largest |V| payload ``pv_accum`` allows: e4m3's max, or 2.25 for fp16 sums."""
    return FP8_SCALE_MAX_FP16_ACCUM if pv_accum is PvAccum.FP32_FP16 else FP8_E4M3_MAX


# Q granularities the sm90 kernel quantizes itself (Note [Fused Q quantization] in
# kernels/sm90/attn_fwd.py): their scale groups lie inside one thread's / warp's rows
FUSED_Q_GRANULARITIES = (QuantGranularity.PER_THREAD, QuantGranularity.PER_WARP)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class QuantGeometry:
    """Block sizes a kernel family quantizes with (numerics.md §3).

    ``blk_q`` rows of Q and ``blk_k`` tokens of K are the padding unit of the
    scale tensors; ``warp_q`` / ``warp_k`` are the per-warp / per-thread groups.
    """

    blk_q: int
    warp_q: int
    blk_k: int
    warp_k: int

    def __post_init__(self) -> None:
        if self.blk_q % self.warp_q or self.blk_k % self.warp_k:
            raise ValueError(f"blk must be a multiple of warp in {self}")

    # ---- Q ----
    def num_q_scales(self, lq: int, gran: QuantGranularity) -> int:
        blocks = cdiv(lq, self.blk_q)
        if gran is QuantGranularity.PER_BLOCK:
            return blocks
        per_block = self.blk_q // self.warp_q
        return blocks * per_block * (8 if gran is QuantGranularity.PER_THREAD else 1)

    def q_scale_index(self, row: int, gran: QuantGranularity) -> int:
        if gran is QuantGranularity.PER_BLOCK:
            return row // self.blk_q
        if gran is QuantGranularity.PER_WARP:
            return row // self.warp_q
        return (row // self.warp_q) * 8 + row % 8

    # ---- K ----
    def num_k_scales(self, lk: int, gran: QuantGranularity) -> int:
        blocks = cdiv(lk, self.blk_k)
        if gran is QuantGranularity.PER_BLOCK:
            return blocks
        per_block = self.blk_k // self.warp_k
        return blocks * per_block * (4 if gran is QuantGranularity.PER_THREAD else 1)

    def k_scale_index(self, token: int, gran: QuantGranularity) -> int:
        if gran is QuantGranularity.PER_BLOCK:
            return token // self.blk_k
        if gran is QuantGranularity.PER_WARP:
            return token // self.warp_k
        return (token // self.warp_k) * 4 + (token % 8) // 2

    # ---- V ----
    def padded_kv_len(self, lk: int) -> int:
        return cdiv(lk, self.blk_k) * self.blk_k


# sm90 kernel: CTA tile 128 query rows (two consumer warpgroups of 64) x 128 keys.
SM90_GEOMETRY = QuantGeometry(blk_q=128, warp_q=16, blk_k=128, warp_k=128)
# SageAttention2's sm89-style geometry, used by the reference for comparisons.
SM89_GEOMETRY = QuantGeometry(blk_q=128, warp_q=32, blk_k=64, warp_k=64)
