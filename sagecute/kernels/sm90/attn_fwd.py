"""SageAttention-style forward attention for Hopper (sm_90a): INT8 QK, FP8 PV.

Dataflow per CTA work tile (128 query rows of one (batch, head)):

* producer warpgroup, warp 0: TMA Q (once per tile: int8, or bf16/fp16 that each
  consumer warpgroup quantizes into the int8 tile, Note [Fused Q quantization]), then for every KV block
  K (int8 ``[tile_n, D]``) and V^T (e4m3 ``[D, tile_n]``, token axis permuted per 16)
  through ``num_stages``-deep ``PipelineTmaAsync`` mbarrier pipelines.
* two consumer warpgroups (64 rows each), KV blocks in ascending order:
    S   = Q K^T            SS ``wgmma m64n128k32 s32.s8.s8`` (IGMMA)
    t   = S * q_scale * k_scale * sm_scale * log2e   (one scale product per thread
          and block, folded into the exp2 FFMA)
    online softmax in the exp2 domain with the FP8 offset (numerics.md §5-§6)
    P   = e4m3(exp2(t - m)) straight from the accumulator registers (RS operand)
    O  += P V              RS ``wgmma m64nDk32 f32.e4m3.e4m3`` (QGMMA); "fp32+fp32":
          fresh accumulator per KV block, then O = O * alpha + O_blk
  epilogue: O / rowsum * v_scale[channel] -> bf16/fp16 -> smem -> TMA store (Note [TMA O
  store]; register stores where o's strides do not allow TMA);
  optional LSE.

Warp roles: WG0 = producer (``setmaxnreg 24``), WG1/WG2 = consumers (``240``); with
``tile_m=192`` a third consumer warpgroup, 160 registers each (Note [Three consumer
warpgroups], opt-in).
Overlap: QK(n) and PV(n-1) in flight together, softmax(n) under PV(n-1) (intra-warpgroup);
the two consumer warpgroups alternate GEMM issue through named barriers (ping-pong).
Persistent: grid = min(#tiles, #SMs), static stride scheduler, LPT order for causal
inside L2-sized head sections (Note [LPT in L2 sections], kernels/common/tile_scheduler.py).

Limits: head_dim 64 or 128; Lq, Lk >= 1 arbitrary; V padded to a multiple of tile_n
(``quant_layout.padded_kv_len``); causal is top-left (key j visible to query i iff
j <= i). Scale layouts: ``quant_layout.SM90_GEOMETRY`` (per_thread, per_warp, per_block).

Hardware status: the whole GPU suite (tests/*_gpu.py, 211 tests, smooth_v included)
passed on an H200 at a13fae1 (192 on an H100 at e505c2a); compute-sanitizer memcheck
(device errors; the DSL's host cuGetProcAddress probe is reported as an API error)
and racecheck clean on an H200 at a13fae1 (perf/sanitize_sm90.py, with two smooth_v
shapes).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Type

import cuda.bindings.driver as cuda

import cutlass
import cutlass.cute as cute
import cutlass.utils.hopper_helpers as sm90_utils_basic
from cutlass import Float32, Int32, Int64, const_expr
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import dsl_user_op
from cutlass import pipeline
from cutlass.cute.nvgpu import cpasync, warpgroup
from cutlass.cute.nvgpu.warp import StMatrix8x8x16bOp

from sagecute.kernels.common import softmax as softmax_utils
from sagecute.kernels.common import wgmma
from sagecute.kernels.common.tile_scheduler import StaticTileScheduler
from sagecute.kernels.common.quant_math import div_rn, gmem_load, quantize_int8x4, recompute_here, warp_max_bfly
from sagecute.quant_layout import (
    FUSED_Q_GRANULARITIES,
    INT8_AMAX_FLOOR,
    INT8_MAX,
    P_FP8_OFFSET_LOG2,
    SM90_GEOMETRY,
    PvAccum,
    QuantGranularity,
)


# 1.5 * 2^23: fp32 with bits 0x4B400000; x = S + MAGIC_I2F_BIAS is exact for |S| < 2^22
MAGIC_I2F_BIAS = 12582912.0


# Note [Fused Q quantization]
# ---------------------------
# With bf16/fp16 Q (``q_dtype``) the producer TMAs the Q tile as is and each consumer
# warpgroup quantizes its own 64 rows into the int8 operand tile, once per tile:
# thread (warp w, lane l) takes rows w*16 + l//4 and +8 -- the rows its S accumulator
# holds -- and channels (l%4)*8 + 32j. per_thread Q scale groups are exactly those two
# rows (``QuantGeometry.q_scale_index``), so their amax is a max over the quad; per_warp
# groups are the warp's 16 rows, a max over the warp. Each thread so gets its own rows'
# q_scale in registers. The arithmetic is the reference quantizer's (Note [Bit-exact
# quantizer arithmetic]): rows past Lq are TMA zero fill, as the reference pads them.
# The int8 rows go to smem with generic stores, so a proxy fence and a warpgroup barrier
# come before the first QK WGMMA reads them. per_block groups span both warpgroups: not
# fused. Saves the preprocessing's Q pass (read bf16, write int8 and scales).


# Note [TMA O store]
# ------------------
# Each consumer warpgroup writes its 64 rows of O (normalized, in the output dtype)
# into its own sO stage with stmatrix, fences, and its warp 0 issues one TMA store,
# which runs on while the next tile starts. Rows past Lq are clipped by TMA. The stage
# is rewritten one tile later, after warp 0 (the issuer) saw the previous store's smem
# reads finish (``cp.async.bulk.wait_group.read``) and a warpgroup barrier. Replaces
# 32 strided 32-bit global stores per thread, which filled the LSU queue and held
# their address registers into the next tile (ncu, L=1k: 13% of stall samples;
# kernel only 491 -> 551 TOPS). Needs o's strides to be 16-byte multiples; launch.py
# falls back to the register stores otherwise.


# Note [fp32+fp16 on sm90]
# ------------------------
# The PV MMA of a 128-key block accumulates in fp16 (QGMMA ...F16.E4M3.E4M3), in two
# accumulators of 64 keys each, promoted into the fp32 O together: O = O * alpha + h0
# + h1. 64 keys keep SageAttention2++'s bound: with V quantized to +-2.25
# (scale_max), |sum| <= 64 * 448 * 2.25 = 64512 < 65504, no fp16 overflow; a single
# 128-key fp16 sum could overflow on degenerate rows (equal scores, a constant V
# channel). The hardware rounds the accumulator to fp16 after each k=32 MMA step, as
# ``reference._emulate_int8_fp8`` does. Slower than fp32+fp32 on Hopper (fp16 and fp32
# accumulation run at the same rate, and the promotion adds one FADD per element):
# H100 L8192 d128 820 vs 864 TOPS, causal 735 vs 817. It exists so the mode runs on
# this kernel instead of falling back to SDPA.


# Note [Row sum on the tensor core]
# ---------------------------------
# With ``rowsum_mma`` each V^T stage has ROWSUM_COLS = 8 more rows (N = D + 8), filled
# once per CTA with e4m3 1.0 (TMA only ever writes the first D rows). The PV WGMMA then
# also accumulates sum_j P8[i, j] into O's extra columns, where P8 is the e4m3 P that
# multiplies V: the online softmax drops its 64 FADDs per thread and block (~12% of a
# consumer warp's instructions at d128), the extra columns take O's rescale and two-level
# promotion like any channel, and every thread of a quad holds its rows' whole sum (no
# quad reduction). The denominator is the sum of the rounded P instead of the unrounded
# fp32 P (numerics.md §5 for SageAttention), so O is a true weighted mean of the
# quantized V rows: a V channel mean passes through exactly. Measured on the reference
# emulation (fp32 CPU, L1024): rel-L1 vs exact attention equal or lower for every input
# kind, 0.29% -> 0.25% with a V mean of 1. ``reference._emulate_int8_fp8`` emulates it
# (its ``rowsum_p8``). fp32+fp16: a 64-key fp16 sum of e4m3 P is at most 64*448 < 65504.
# Two-level PV modes only: pv_accum "fp32" accumulates across all blocks inside the FP8
# MMA, whose accumulator is not full fp32 (numerics.md §5); a denominator summed there
# over many blocks missed the reference's bound (H100, d64 Lk 1000).
ROWSUM_COLS = 8


# Note [Three consumer warpgroups]
# --------------------------------
# ``tile_m=192``: three consumer warpgroups of 64 rows, 160 registers each (what the
# register file leaves beside the producer's 24). Each SMSP then interleaves three
# consumer warps instead of two, which is what a latency-bound softmax needs
# (perf/NOTES.md). H100, d64 fp32+fp32, kernel only with Q quantized in it (the API's
# path), B4 H32 (perf/tile_overhead.py): L8192 full 567 -> 680 TOPS, L1024 380 -> 408
# (GEMM issue in round robin over the three; without it 620 and 392).
# Registers: QK(n) and PV(n-1) in flight together hold S (64), P (16), the fresh PV
# accumulator (36) and O (36). Fitting 160 took: the PV(n-1) wait and promotion before
# the softmax (promote_before_softmax; ptxas hoists that wait anyway, Note [PV wait
# hoisting]); the stage releases after that wait (an mbarrier arrive needs a register);
# the thread's row/column recomputed from the thread index where they are used
# (position_here, quantize_q) instead of held through the tile; and the ping-pong
# barriers named by immediates behind warp-uniform branches (no id registers).
# Spill-free (the compile gate) for d64 with Q quantized in the kernel and per_thread
# scales, every PV mode and output store, causal too; ``AttnFwdConfigSm90.tuned``
# uses it there (causal from Lq 2048: THREE_CONSUMER_WG_MIN_CAUSAL_LQ). Still spilling
# (2-4 registers): per_warp, int8 Q; d128 does not fit. A 192-row causal tile's
# diagonal crosses two 128-key blocks, so its last two blocks are masked
# (first_masked_block).


# Note [PDL after the preprocessing]
# ----------------------------------
# In a ``sageattn`` call the K/V preprocessing kernel runs right before this one. With
# ``pdl`` the kernel is launched with programmatic stream serialization and the
# preprocessing triggers its dependents as each CTA starts, so this grid launches while
# the preprocessing's last wave still runs: CTA setup and the first tile's Q load and
# quantization overlap it. The producer issues the first Q, then ``griddepcontrol.wait``
# (the preprocessing finished and its writes are visible) before any K/V load; the
# consumers wait too before reading K/V scales. Q itself must not come from the kernel
# right before (it is read before the wait): true in the API, where that kernel is the
# K/V preprocessing and Q was written before it started (``preprocess.quantize_inputs``
# makes any TMA-ready copy of Q before launching it). Off for direct calls.
# (At L=1k the preprocessing is ~1/4 of a call.)


# Note [Q one tile ahead]
# -----------------------
# Q has one smem stage. The producer loads a tile's Q right after that tile's first K
# block, i.e. once the previous tile's second-to-last K stage is free: about 1.5 KV
# blocks before the consumers need it. With ``q_prefetch`` (set by q_in_producer) it
# loads the next tile's Q right after this tile's second K/V block instead (the first
# tile's before the loop, then the PDL wait). That needs Q's stage released at the
# start of the tile, which only the producer-warp quantization does (Note [Q quantized
# by the producer warpgroup]): an int8 Q is released after the tile's last QK, and
# waiting for it there would hold the K/V loads that QK needs. With the consumers'
# quantization it was no faster (H200 d128 kernel only, B4 H32: L1k 629 vs 628 TOPS,
# L8k -1.5%, causal L8k -2..7%; perf/results/2026-12-04b_h200_qproducer/ab128_prefetch.txt):
# Q's latency was not what the tile start waited for.


# Note [Q quantized by the producer warpgroup]
# --------------------------------------------
# The fused Q quantization (Note [Fused Q quantization]) at the start of each tile cost
# about one KV block of time per tile (H200 d128, perf/tile_overhead.py with the
# quantization skipped: 2.5 -> 1.5 blocks per tile; at L=1k a tile is 8 blocks): both
# consumer warpgroups load, reduce, round and store, fence and meet at a barrier while
# the tensor cores wait. Of the producer warpgroup only warp 0 works (it issues the
# TMA loads); with ``q_quant_in_producer`` warps 1-3 quantize instead, one tile ahead:
#   * TMA -> sQin (bf16/fp16) as before; its pipeline's consumers are the three warps;
#   * the warps write the int8 tile into one of two sQ stages and each row's q_scale
#     into ``sQScale``, fence the proxies (the WGMMA reads sQ through the async one) and
#     commit the stage (``pipeline_q8``, every thread arrives);
#   * the consumers wait for the stage, read their q_scale, and release the stage once
#     the tile's last QK has retired (early_q_release), so the next-but-one tile can
#     be written while this one's PV and epilogue run.
# Same arithmetic as quantize_q (amax, IEEE 127 / amax, the magic-add rounding), so the
# same bits. At 24 registers (the producer's setmaxnreg) each thread makes two passes
# over its two rows in smem instead of holding them. Not with smooth_q (the mean and the
# row mask stay in quantize_q).
# It needs Note [Q one tile ahead]: without it the next Q arrived late in the tile and
# the warps' slow serial passes then made the consumers wait (d128 L1k 630 -> 542 TOPS,
# per-tile cost 2.0 -> 4.8 blocks). With it (H200, kernel only, B4 H32, interleaved;
# perf/results/2026-12-04b_h200_qproducer/): d128 full L1k 626 -> 632, L2k 772 -> 795,
# L8k 901 -> 913 TOPS; d64 (three consumer warpgroups) L1k 412 -> 429, L2k 546 -> 557,
# L8k 647 -> 649; but causal loses (d128 L1k 454 -> 430, L2k 645 -> 612, L8k 887 ->
# 845: tiles near the diagonal are a block or two long, too short to hide the next
# Q's quantization), so ``tuned`` turns it on for non-causal only.


# Note [The first Q tile in the consumers]
# ----------------------------------------
# The producer warps' quantization (24 registers, two serial passes over smem) is slow,
# and before the CTA's first tile nothing hides it: the kernel's fixed cost per launch
# (perf/kernel_fixed_cost.py, H200 d128 L1k, t = fixed + per wave * waves over B = 1..16)
# was 9.7 us with it against 6.3 us with the consumers quantizing every tile, while its
# per-wave time was lower (11.7 against 12.3 us). So the consumers, idle at the start,
# quantize the first tile themselves (quantize_q into int8 stage 0, its q_scale in
# registers), and the quantizing warps take the tiles after it. The warps still
# acquire, release and commit tile 0's stages, after a named barrier the consumers
# arrive at (Q_FIRST), so every mbarrier sees the same phases as before; the consumers
# do not wait for stage 0's first commit, and cannot mistake it later: they wait for
# stage 0 again only after stage 1's first commit, which the warps make after it.
# Same arithmetic on either side (the same bits, tests/test_sm90_gpu.py placement tests).
# H200 d128, perf/results/2026-12-04c_h200_firstq/: fixed cost 9.7 -> 7.0 us (per wave
# 11.6 -> 11.8), B1 L1k 30.2 -> 27.2 us; kernel only B4 H32 L1k +1.5% (interleaved, both
# orders), L8k within noise; d64 three warpgroups within noise.


# Note [smooth_q on sm90]
# -----------------------
# With ``smooth_q`` Q is quantized minus one mean per (batch, head), ``qm`` (Q's
# sequence mean in its dtype, from a KMean launch before the K/V preprocessing),
# and every score of key j gets ``delta_s[j] = qm . (k_j - km)`` back (fp32, written
# by the K/V preprocessing: Note [delta_s in the K pass] in
# kernels/common/quant_qkv.py). The reference's sm90 smooth_q is that per-head form
# (``reference.q_mean``, ``smooth_q_delta_s``); SageAttention2's per-64/128-row block
# means would need a delta_s row per Q block and key ([B, H, Lq/128, Lk] fp32, more
# bytes than Q) or an extra M=64 MMA per block. In the kernel:
#   * the fused Q quantization subtracts ``qm`` (fp32) before the amax
#     (quantize_q), as ``reference.quantize_qk_int8(q, mean=qm)``;
#   * the producer copies block n's 128 delta_s values (512 bytes, one
#     ``cp.async.bulk``) into the K stage's ``sDelta`` slot on the K barrier (its
#     transaction count includes them);
#   * right after QK(n) retires and before the K stage is released, the consumer
#     forms the score ``u = S * q_scale * k_scale + delta_s`` in fp32 (add_delta_s:
#     one FFMA), and the softmax takes the float row max of u (the int32 row max no
#     longer orders it) and ``exp2(u * sm_scale * log2e - m)``: one FFMA and one
#     FMNMX more per score than the int32-max path.
# The LSE correction is unchanged (u is q . (k - km) again, up to quantization).
# Two details: Q rows past Lq (TMA's zero rows) read as -qm once the mean is
# subtracted, so quantize_q leaves them out of the scale they share with true rows
# (per_thread: rows r and r + 8), as the reference pads after centering; and every
# consumer thread fences the proxies and releases the K stage itself (release_k),
# since the next bulk copy (async proxy) overwrites the delta_s slot it read
# (generic proxy).


@dsl_user_op
def bulk_copy_g2s(dst: cute.Pointer, src: cute.Pointer, num_bytes: int, mbar: cute.Pointer, *, loc=None, ip=None):
    """``cp.async.bulk`` of ``num_bytes`` (a multiple of 16, 16-byte aligned ends) from
    global to shared memory, completing as transaction bytes on ``mbar``."""
    args = [
        Int32(dst.toint(loc=loc, ip=ip)).ir_value(loc=loc, ip=ip),
        Int64(src.toint(loc=loc, ip=ip)).ir_value(loc=loc, ip=ip),
        Int32(mbar.toint(loc=loc, ip=ip)).ir_value(loc=loc, ip=ip),
    ]
    llvm.inline_asm(
        None, args,
        f"cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [$0], [$1], {num_bytes}, [$2];",
        "r,l,r", has_side_effects=True, is_align_stack=False,
    )  # fmt: skip


def tma_load(pipe: pipeline.PipelineAsync, tma_atom: cute.CopyAtom, src: cute.Tensor, dst: cute.Tensor,
             state: pipeline.PipelineState) -> None:
    """Producer: wait for the stage ``state`` to be free, then TMA ``src`` -> ``dst`` on
    its barrier (plain Python: inlined while the kernel is traced)."""
    pipe.producer_acquire(state)
    cute.copy(tma_atom, src, dst, tma_bar_ptr=pipe.producer_get_barrier(state))


class WarpRole(enum.IntEnum):
    PRODUCER_WG = 0  # warpgroup 0; its warp 0 issues TMA; consumers are 1..


MAX_CONSUMER_WG = 3
# Note [Q quantized by the producer warpgroup]: warps 1-3 of the producer warpgroup
Q_QUANT_WARPS = 3


class NamedBarrier(enum.IntEnum):
    """First id of each per-consumer-warpgroup barrier (id + wg_idx); 0 is __syncthreads."""

    WARP_SCHEDULER = 1  # ping-pong: this warpgroup's turn to issue GEMMs
    Q_QUANT = WARP_SCHEDULER + MAX_CONSUMER_WG  # fused Q quantization: its int8 rows are in smem
    EPILOGUE = Q_QUANT + MAX_CONSUMER_WG  # TMA O store: its stage of sO is free / written
    # Note [The first Q tile in the consumers]: the consumers have read the first bf16 Q
    # tile and written its int8 stage (they arrive, the quantizing warps wait)
    Q_FIRST = EPILOGUE + MAX_CONSUMER_WG


@dataclass(frozen=True)
class AttnFwdConfigSm90:
    """Static tiling of :class:`SageAttnFwdSm90` (part of the compile key)."""

    # Note [Three consumer warpgroups]: 192 = three consumer warpgroups of 64 rows
    tile_m: int = 128
    tile_n: int = 128
    num_stages: int = 2
    intra_wg_overlap: bool = True  # issue QK(n+1) before PV(n); softmax(n+1) under PV(n)
    producer_regs: int = 24
    consumer_regs: int = 240  # capped by what the register file leaves (160 for tile_m 192)
    persistent: bool = True  # grid = min(#tiles, #SMs); False: one CTA per tile
    # overlap path only: named barriers alternate the two consumer warpgroups' GEMM
    # issue (FA3 ping-pong), so one warpgroup's softmax runs under the other's GEMMs
    wg_pingpong: bool = True
    # t = S * scale folded into the exp2 FFMA (each thread's row max is taken on its
    # unscaled S, then scaled before the quad reduction)
    fused_scale_exp: bool = True
    # int32 S -> fp32 by an integer add of a magic bias instead of I2FP; needs
    # fused_scale_exp. Off by default: measured slower on H200 (797 -> 765 TOPS, d128 8k)
    magic_i2f: bool = False
    # row max / row sum as 8 independent chains + a tree instead of one 32-deep chain
    tree_reduce: bool = True
    # overlap path: release sQ right after the tile's last QK GEMM, so the next tile's
    # Q load runs under the last PV and the epilogue
    early_q_release: bool = True
    # Note [Q quantized by the producer warpgroup]: the fused Q quantization runs on the
    # producer warpgroup's three idle warps, one tile ahead, into two int8 Q stages
    # (with Note [Q one tile ahead]); on in ``tuned`` for non-causal
    q_quant_in_producer: bool = False
    # Note [The first Q tile in the consumers]: with q_quant_in_producer, the CTA's first
    # tile is quantized by the consumers (idle then), the rest by the producer warps
    first_q_in_consumers: bool = True
    # 32-bit O stores (column pairs); needs o's row/head/batch strides even
    vec_o_store: bool = True
    # Note [TMA O store]: O goes registers -> smem (stmatrix) -> gmem (TMA, async);
    # needs o's strides to be 16-byte multiples (launch.py falls back otherwise)
    tma_o_store: bool = True
    # Note [PDL after the preprocessing]: launched as a programmatic dependent of the
    # kernel before it; only where that kernel wrote K/V and not Q (the API's path)
    pdl: bool = False
    # DIAGNOSTIC (wrong results): with pdl, skip griddepcontrol.wait, so K/V may be read
    # before the preprocessing wrote them. Times the most that finer-grained waits (a
    # ready flag per head) could overlap (perf/e2e_breakdown.py --ab)
    pdl_wait: bool = True
    use_setmaxnreg: bool = True
    # pv_accum "fp32": skip O *= alpha when alpha == 1 for every row of the warp (no row
    # max grew; exp2(0) is exactly 1, so this is exact). A warp-uniform vote and branch.
    # No effect on "fp32+fp32" (its promotion is one FFMA either way). H200, fp32 mode:
    # +3% at L8192, +9% at b32 L1024 d128.
    skip_unit_rescale: bool = True
    # independent chains per row in the tree_reduce row max / row sum. With int_row_max,
    # 4 instead of 8: H100 L8192 d128 full +4%, causal +5%; d64 full +1%, causal +2%
    reduce_partials: int = 4
    # unroll factor of the overlap path's steady-state KV loop. head_dim 64 default 2
    # (470 instead of 492 SASS instructions per KV block, no spills; H200 +13% at L8192
    # and b32 L1024). head_dim 128 with fp32+fp32: 2 spills (329 instructions); with
    # pv_accum fp32 it compiles without spills (untimed).
    mainloop_unroll: int = 1
    # overlap path: pin the wait for PV(n-1) below the softmax of block n (Note [PV
    # wait hoisting]); ~20 more instructions per block (16 P register moves). Off:
    # measured slower (H100 L8192: d128 -7.5%, d64 -4%)
    pv_wait_fence: bool = False
    # overlap path, fp32+fp32: fold PV(n-2) into O right after issuing QK(n), under that
    # GEMM (and inside the ping-pong issue turn), instead of after the PV(n-1) wait.
    # Off: no consistent gain (H100 L8192, -5%..+2% across d64/d128 causal/full)
    early_promote: bool = False
    # overlap path, two-level PV modes: wait for PV(n-1) and promote it before the
    # softmax of block n instead of after; frees the fresh accumulator's registers
    # during the softmax (needed for tile_m 192 at 160 registers)
    promote_before_softmax: bool = False
    # unmasked blocks: row max on the int32 scores (exact: I2FP and the positive scale are
    # monotonic); ptxas pairs the maxes into 3-input VIMNMX3 (30 instead of 62 per block).
    # Together with reduce_partials 4 (alone it is not faster at d128), H100 L8192 vs
    # neither: d128 full +0%, causal +4..9%; d64 full +4%, causal +7%
    int_row_max: bool = True
    # causal: LPT order inside L2-sized sections of (batch, head) pairs (Note [LPT in L2
    # sections]); False: one section (every head's longest tile in the first wave)
    l2_sections: bool = True
    # fused_scale_exp: every k-th score's exp2 on the FMA pipe instead of MUFU (Note
    # [Polynomial exp2] in kernels/common/softmax.py); 0: all on MUFU. 16 with three
    # consumer warpgroups (THREE_CONSUMER_WG); d128 gains nothing (H200 L8192: 16 even,
    # 8 -5%), its MUFU time is half its block period
    exp2_poly_every: int = 0
    # Note [Row sum on the tensor core]: V^T gets ROWSUM_COLS extra rows of e4m3 1.0, so
    # the PV MMA also yields each row's sum of the e4m3 P (no FADDs in the softmax).
    # fp32+fp32 and fp32+fp16 only (ignored for pv_accum "fp32"). H100, kernel only,
    # d128: L8192 +7..12%, L1024 +5%, causal +-1%; d64 full +2..4%, causal -1%
    rowsum_mma: bool = True

    def __post_init__(self) -> None:
        if self.tile_m not in (128, 192):
            raise ValueError("tile_m must be 128 or 192 (two or three consumer warpgroups of 64 rows)")
        if self.tile_n != SM90_GEOMETRY.blk_k:
            raise ValueError(f"tile_n must equal the K scale block {SM90_GEOMETRY.blk_k}")
        if self.reduce_partials < 1 or self.mainloop_unroll < 1:
            raise ValueError("reduce_partials and mainloop_unroll must be >= 1")
        if self.num_stages < 1 or self.num_stages > 4:
            raise ValueError("num_stages must be in 1..4")
        if self.magic_i2f and not self.fused_scale_exp:
            raise ValueError("magic_i2f needs fused_scale_exp")

    @staticmethod
    def default(head_dim: int) -> "AttnFwdConfigSm90":
        if head_dim == 64:
            # reduce_partials 8: H100 L8192 +2..3% full, +3..4% causal over 4 (two runs each,
            # perf/tile_overhead.py --only-8k); at d128 8 was within noise of 4 (877/836 vs 862)
            return AttnFwdConfigSm90(mainloop_unroll=2, reduce_partials=8)
        return AttnFwdConfigSm90()

    @staticmethod
    def tuned(
        head_dim: int, is_causal: bool, granularity: QuantGranularity, fused_q: bool, seqlen_q: int = 0
    ) -> "AttnFwdConfigSm90":
        """The fastest measured config for a problem: three consumer warpgroups where
        they compile without spills and were faster (Note [Three consumer warpgroups]:
        d64, per_thread scales, Q quantized in the kernel; causal from Lq 2048 on),
        else the default."""
        cfg = AttnFwdConfigSm90.default(head_dim)
        if head_dim == 64 and granularity is QuantGranularity.PER_THREAD and fused_q:
            if not is_causal or seqlen_q >= THREE_CONSUMER_WG_MIN_CAUSAL_LQ:
                cfg = dataclasses.replace(cfg, **THREE_CONSUMER_WG)
        if fused_q and not is_causal:
            # Note [Q quantized by the producer warpgroup]: causal loses (its short tiles)
            cfg = dataclasses.replace(cfg, q_quant_in_producer=True)
        return cfg

    @staticmethod
    def length_class(seqlen_q: int) -> int:
        """The representative query length of ``seqlen_q``'s class: ``tuned`` picks the
        same config for every length of a class (callers key caches by it)."""
        return THREE_CONSUMER_WG_MIN_CAUSAL_LQ if seqlen_q >= THREE_CONSUMER_WG_MIN_CAUSAL_LQ else 0

    @staticmethod
    def length_classes() -> tuple[int, ...]:
        """Every ``length_class`` (the compile list builds one config per class)."""
        return (0, THREE_CONSUMER_WG_MIN_CAUSAL_LQ)

    @staticmethod
    def after_preprocess(
        head_dim: int, is_causal: bool = False, granularity: QuantGranularity = QuantGranularity.PER_THREAD,
        seqlen_q: int = 0, smooth_q: bool = False,
    ) -> "AttnFwdConfigSm90":
        """The API's (Q quantized in the kernel): ``tuned``, launched as a programmatic
        dependent of the K/V preprocessing (Note [PDL after the preprocessing]).
        ``smooth_q`` (Note [smooth_q on sm90]): two consumer warpgroups, and at d128 the
        PV(n-1) promotion before the softmax: the spill-free forms (the float row max
        and delta_s cost registers: three warpgroups spill 34, d128's default 2)."""
        if smooth_q:
            cfg = AttnFwdConfigSm90.default(head_dim)
            if head_dim == 128:
                cfg = dataclasses.replace(cfg, promote_before_softmax=True)
        else:
            cfg = AttnFwdConfigSm90.tuned(head_dim, is_causal, granularity, True, seqlen_q)
        return dataclasses.replace(cfg, pdl=True)

    @staticmethod
    def all_configs() -> list["AttnFwdConfigSm90"]:
        """The default and the simplest (no overlap, no ping-pong) configurations."""
        return [AttnFwdConfigSm90(), AttnFwdConfigSm90(intra_wg_overlap=False)]


# Note [Three consumer warpgroups]: 160 registers need the PV(n-1) promotion before the
# softmax; GEMM issue in round robin (ping-pong over three). d64 is exp-bound (MUFU
# 1584 cycles per SMSP and KV block against 1212 issue slots), so every 16th score's
# exp2 runs on the FMA pipe (then 1488 and 1296; Note [Polynomial exp2]). H200 kernel
# only, B4 H32 L8192: full 615 -> 648 TOPS, causal 578 -> 587
# (perf/results/2026-12-02_h200_poly/ab_d64.txt)
THREE_CONSUMER_WG = dict(tile_m=192, mainloop_unroll=1, promote_before_softmax=True, exp2_poly_every=16)
# causal: shorter sequences lose to 192-row tiles' quantization (H100 d64 kernel only,
# perf/config_ab.py: L1024 -8.5%, L2048 +6.5%, L8192 +8.5%, L16384 +9.5%)
THREE_CONSUMER_WG_MIN_CAUSAL_LQ = 2048


class BlockCtx(NamedTuple):
    """Per-tile state the KV-block steps of a consumer warpgroup share."""

    tSrQ: cute.Tensor
    tSrK: cute.Tensor
    tOrP: cute.Tensor
    tOrVt: cute.Tensor
    acc_O: cute.Tensor
    # two-level PV modes: this block's fresh accumulators, promoted into acc_O (fp32+fp32:
    # one fp32; fp32+fp16: two fp16 of 64 keys, Note [fp32+fp16 on sm90]); "fp32": ()
    acc_O_parts: tuple
    acc_S: cute.Tensor
    acc_S_f: cute.Tensor
    row_max: cute.Tensor
    row_sum: cute.Tensor
    row_scale: cute.Tensor
    row_scale_prev: cute.Tensor
    tScS_mn: cute.Tensor
    tOcO_mn: cute.Tensor
    mKScale: cute.Tensor  # this (batch, head_kv)'s K scales
    mVScale: cute.Tensor  # this (batch, head_kv)'s V scales
    v_scale: cute.Tensor  # the V scales of this thread's O columns (loaded under the last PV)
    mVMean: Optional[cute.Tensor]  # smooth_v: this (batch, head_kv)'s V means (Note [V mean])
    v_mean: Optional[cute.Tensor]  # smooth_v: the V means of this thread's O columns, as v_scale
    sDelta: Optional[cute.Tensor]  # smooth_q: (tile_n, stage) delta_s of the K stages (Note [smooth_q on sm90])
    delta_scale: Float32  # smooth_q: sm_scale * log2(e), the softmax's factor on u = S * scales + delta_s
    k_scale_idx0: Int32  # k_scale_index(col_in_block): block n reads idx0 + n * step
    qk_scale_log2: Float32
    col_in_block: Int32
    row_in_tile: Int32
    wg_idx: Int32
    m_block: Int32
    seqlen_k: Int32


class SageAttnFwdSm90:
    """INT8-QK / FP8-PV attention forward, sm_90a. See the module docstring."""

    num_threads_per_wg = 128

    def __init__(
        self,
        out_dtype: Type[cutlass.Numeric],
        head_dim: int,
        is_causal: bool,
        granularity: QuantGranularity,
        pv_accum: PvAccum,
        has_lse: bool,
        config: AttnFwdConfigSm90,
        q_dtype: Type[cutlass.Numeric] = cutlass.Int8,
        smooth_v: bool = False,
        smooth_q: bool = False,
    ):
        ok, why = self.can_implement(out_dtype, head_dim, granularity, pv_accum, q_dtype)
        if not ok:
            raise ValueError(why)
        if smooth_q and q_dtype is cutlass.Int8:
            raise ValueError("smooth_q needs the fused Q quantization (a bf16/fp16 q)")
        if smooth_q and config.tile_n != SM90_GEOMETRY.blk_k:
            raise ValueError("smooth_q reads delta_s in 128-key blocks: tile_n must be 128")
        # Note [smooth_q on sm90]: Q minus its per-head mean, delta_s added per score
        self.smooth_q = smooth_q
        # Int8: Q arrives quantized (q_scale given); bf16/fp16: the consumers quantize
        # it (Note [Fused Q quantization])
        self.q_dtype = q_dtype
        self.fuse_q = q_dtype is not cutlass.Int8
        self.out_dtype = out_dtype
        self.head_dim = head_dim
        self.is_causal = is_causal
        self.granularity = granularity
        self.pv_accum = pv_accum
        self.has_lse = has_lse
        # V was quantized minus its per-channel mean (mVMean): O gets it back in the
        # epilogue (Note [V mean] in kernels/common/quant_qkv.py)
        self.smooth_v = smooth_v
        self.config = config
        self.tile_m = config.tile_m
        self.tile_n = config.tile_n
        self.num_stages = config.num_stages
        self.intra_wg_overlap = config.intra_wg_overlap
        # "fp32+fp32" / "fp32+fp16": fresh PV accumulators per KV block (acc_O_parts, fp32
        # or fp16), promoted into the fp32 O (numerics.md §5)
        self.two_level = pv_accum in (PvAccum.FP32_FP32, PvAccum.FP32_FP16)
        self.promote_under_qk = config.early_promote and self.two_level
        self.promote_first = config.promote_before_softmax and self.two_level and not self.promote_under_qk
        # Note [Q quantized by the producer warpgroup] (not with smooth_q: its mean and
        # row mask stay in the consumers' quantize_q)
        self.q_in_producer = config.q_quant_in_producer and self.fuse_q and not smooth_q
        self.quantize_q_in_consumer = self.fuse_q and not self.q_in_producer
        self.q_stages = 2 if self.q_in_producer else 1
        self.first_q_in_consumers = self.q_in_producer and config.first_q_in_consumers
        # Note [Q one tile ahead]: with q_in_producer (its quantization then has the tile
        # to run under)
        self.q_prefetch = self.q_in_producer
        # release sQ after the tile's last QK (a fused Q's input tile is released as
        # soon as it is quantized instead)
        self.early_q_release = (config.intra_wg_overlap and config.early_q_release
                                and not self.quantize_q_in_consumer)
        self.num_consumer_wg = self.tile_m // 64
        # Q_FIRST's threads: every consumer and the quantizing warps
        self.q_first_threads = self.num_threads_per_wg * self.num_consumer_wg + 32 * Q_QUANT_WARPS
        # N of the PV MMA: O's D columns, plus the row-sum columns (Note [Row sum on the
        # tensor core]; two-level PV modes only)
        self.rowsum_mma = config.rowsum_mma and self.two_level
        self.pv_n = head_dim + (ROWSUM_COLS if self.rowsum_mma else 0)
        self.num_threads = self.num_threads_per_wg * (1 + self.num_consumer_wg)
        # what the register file leaves each consumer thread after the producer's
        # setmaxnreg decrease (a multiple of 8): 240 with two consumer warpgroups, 160 with three
        free = (65536 // self.num_threads_per_wg - config.producer_regs) // self.num_consumer_wg
        self.consumer_regs = min(config.consumer_regs, free // 8 * 8)

    @staticmethod
    def can_implement(
        out_dtype, head_dim: int, granularity: QuantGranularity, pv_accum: PvAccum, q_dtype=cutlass.Int8
    ):
        if q_dtype not in (cutlass.Int8, cutlass.BFloat16, cutlass.Float16):
            return False, f"q must be int8 (quantized) or bf16/fp16, got {q_dtype}"
        if q_dtype is not cutlass.Int8 and granularity not in FUSED_Q_GRANULARITIES:
            return False, f"fused Q quantization supports {[g.value for g in FUSED_Q_GRANULARITIES]}"
        if head_dim not in (64, 128):
            return False, f"head_dim must be 64 or 128, got {head_dim}"
        if out_dtype not in (cutlass.BFloat16, cutlass.Float16):
            return False, f"output dtype must be bf16 or fp16, got {out_dtype}"
        if pv_accum not in (PvAccum.FP32, PvAccum.FP32_FP32, PvAccum.FP32_FP16):
            return False, f"pv_accum {pv_accum} is not implemented on sm90 (fp32, fp32+fp32, fp32+fp16)"
        if not isinstance(granularity, QuantGranularity):
            return False, f"bad granularity {granularity!r}"
        return True, ""

    def smem_bytes(self) -> int:
        """Dynamic shared memory: mbarriers (padded to 1 KiB), Q (plus the bf16/fp16 Q
        tile when fused; two int8 stages and their q_scales with q_in_producer), K and
        V^T stages."""
        d = self.head_dim
        q_in = self.tile_m * d * 2 if self.fuse_q else 0
        o_stage = self.tile_m * d * self.out_dtype.width // 8 if self.config.tma_o_store else 0
        delta = self.num_stages * self.tile_n * 4 if self.smooth_q else 0
        q_scales = self.q_stages * self.tile_m * 4  # sQScale (read only with q_in_producer)
        return (1024 + self.q_stages * self.tile_m * d + q_in + o_stage + delta + q_scales
                + self.num_stages * (self.tile_n * d + self.pv_n * self.tile_n))

    # ------------------------------------------------------------------ host
    def make_tiled_mma_pv(self, num_wg: int, acc_dtype=Float32, n: Optional[int] = None) -> cute.TiledMma:
        """P (registers) x V^T (smem) -> ``acc_dtype``, ``num_wg`` warpgroups of 64 rows,
        ``n`` output columns (default D; the accumulator's (row, column) layout is the
        same for fp32 and fp16, and its first D columns are O's for any ``n``)."""
        return sm90_utils_basic.make_trivial_tiled_mma(
            cutlass.Float8E4M3FN,
            cutlass.Float8E4M3FN,
            cute.nvgpu.OperandMajorMode.K,
            cute.nvgpu.OperandMajorMode.K,
            acc_dtype,
            atom_layout_mnk=(num_wg, 1, 1),
            tiler_mn=(64, self.head_dim if n is None else n),
            a_source=warpgroup.OperandSource.RMEM,
        )

    @cute.jit
    def __call__(
        self,
        mQ: cute.Tensor,  # int8 [B, Hq, Lq, D], or q_dtype bf16/fp16 when fused
        mQScale: Optional[cute.Tensor],  # fp32 [B, Hq, nq]; None when fused
        mK: cute.Tensor,  # int8 [B, Hkv, Lk, D]
        mKScale: cute.Tensor,  # fp32 [B, Hkv, nk]
        mV: cute.Tensor,  # e4m3 [B, Hkv, D, Lpad] (or its uint8 view)
        mVScale: cute.Tensor,  # fp32 [B, Hkv, D]
        mO: cute.Tensor,  # bf16/fp16 [B, Hq, Lq, D], any strides, last stride 1
        mLSE: Optional[cute.Tensor],  # fp32 [B, Hq, Lq] or None
        mVMean: Optional[cute.Tensor],  # fp32 [B, Hkv, D] with smooth_v, else None
        mQMean: Optional[cute.Tensor],  # q_dtype [B, Hq, 1, D] with smooth_q, else None
        mDelta: Optional[cute.Tensor],  # fp32 [B, Hq, Lk padded to 128] with smooth_q, else None
        softmax_scale_log2: Float32,  # sm_scale * log2(e)
        max_ctas: Int32,  # persistent grid cap (#SMs)
        stream: cuda.CUstream,
    ):
        D = self.head_dim
        if const_expr(mV.element_type == cutlass.Uint8):
            # TVM-FFI entry: V crosses as the uint8 view of the e4m3 payload
            mV = cute.make_tensor(cute.recast_ptr(mV.iterator, dtype=cutlass.Float8E4M3FN), mV.layout)
        # (L, D, H, B) views: TMA and tiling walk (seq, dim) inside one (head, batch).
        mQ = cute.make_tensor(mQ.iterator, cute.select(mQ.layout, mode=[2, 3, 1, 0]))
        mK = cute.make_tensor(mK.iterator, cute.select(mK.layout, mode=[2, 3, 1, 0]))
        mO = cute.make_tensor(mO.iterator, cute.select(mO.layout, mode=[2, 3, 1, 0]))
        # V^T as (D, Lpad, Hkv, B): the PV B operand (N = D, K = tokens), K-major.
        mVt = cute.make_tensor(mV.iterator, cute.select(mV.layout, mode=[2, 3, 1, 0]))

        tiled_mma_qk = sm90_utils_basic.make_trivial_tiled_mma(
            cutlass.Int8,
            cutlass.Int8,
            cute.nvgpu.OperandMajorMode.K,
            cute.nvgpu.OperandMajorMode.K,
            Int32,
            atom_layout_mnk=(self.num_consumer_wg, 1, 1),
            tiler_mn=(64, self.tile_n),
        )
        # fp32+fp16: the per-block PV accumulator is fp16 (the only GEMM into O's side)
        tiled_mma_pv = self.make_tiled_mma_pv(
            self.num_consumer_wg, cutlass.Float16 if const_expr(self.pv_accum == PvAccum.FP32_FP16) else Float32,
            n=self.pv_n,
        )
        # O's D columns of one warpgroup's PV accumulator: partitions O for the epilogue
        tiled_mma_o = self.make_tiled_mma_pv(1)

        sQ_layout = wgmma.make_smem_layout_k_major(
            cutlass.Int8, self.tile_m, D, self.q_stages if const_expr(self.q_in_producer) else None
        )
        # TMA destination of Q: the int8 operand itself, or the bf16/fp16 tile to quantize
        sQin_layout = wgmma.make_smem_layout_k_major(self.q_dtype, self.tile_m, D) if const_expr(
            self.fuse_q
        ) else sQ_layout
        sK_layout = wgmma.make_smem_layout_k_major(cutlass.Int8, self.tile_n, D, self.num_stages)
        # V^T stages of pv_n rows (the MMA's B operand); TMA fills the first D of each
        sVt_layout = wgmma.make_smem_layout_k_major(
            cutlass.Float8E4M3FN, self.pv_n, self.tile_n, self.num_stages
        )
        sVt_tma_layout = wgmma.make_smem_layout_k_major(
            cutlass.Float8E4M3FN, D, self.tile_n, self.num_stages, stage_stride=self.pv_n * self.tile_n
        )
        sK_tile = cute.select(sK_layout, mode=[0, 1])
        sVt_tile = cute.select(sVt_tma_layout, mode=[0, 1])
        # Note [TMA O store]: one (64, D) stage per consumer warpgroup
        sO_layout = wgmma.make_smem_layout_k_major(self.out_dtype, 64, D, self.num_consumer_wg)

        tma_op = cpasync.CopyBulkTensorTileG2SOp()
        tma_atom_Q, tma_Q = cpasync.make_tiled_tma_atom(tma_op, mQ, sQin_layout, (self.tile_m, D))
        tma_atom_K, tma_K = cpasync.make_tiled_tma_atom(tma_op, mK, sK_tile, (self.tile_n, D))
        tma_atom_V, tma_Vt = cpasync.make_tiled_tma_atom(tma_op, mVt, sVt_tile, (D, self.tile_n))
        tma_atom_O, tma_O = None, None
        if const_expr(self.config.tma_o_store):
            tma_atom_O, tma_O = cpasync.make_tiled_tma_atom(
                cpasync.CopyBulkTensorTileS2GOp(), mO, cute.select(sO_layout, mode=[0, 1]), (64, D)
            )
        self.tma_bytes_Q = self.tile_m * D * self.q_dtype.width // 8
        sQin_size = cute.cosize(sQin_layout) if const_expr(self.fuse_q) else 64
        sO_size = cute.cosize(sO_layout) if const_expr(self.config.tma_o_store) else 64
        # smooth_q: block n's delta_s rides on the K barrier (Note [smooth_q on sm90])
        self.tma_bytes_K = self.tile_n * D + (self.tile_n * 4 if const_expr(self.smooth_q) else 0)
        sDelta_size = self.num_stages * self.tile_n if const_expr(self.smooth_q) else 4
        self.tma_bytes_V = D * self.tile_n

        @cute.struct
        class SharedStorage:
            mbar_Q: cute.struct.MemRange[cutlass.Int64, 2]
            mbar_Q8: cute.struct.MemRange[cutlass.Int64, 2 * self.q_stages]  # q_in_producer only
            mbar_K: cute.struct.MemRange[cutlass.Int64, self.num_stages * 2]
            mbar_V: cute.struct.MemRange[cutlass.Int64, self.num_stages * 2]
            sQ: cute.struct.Align[cute.struct.MemRange[cutlass.Int8, cute.cosize(sQ_layout)], 1024]
            sQin: cute.struct.Align[cute.struct.MemRange[self.q_dtype, sQin_size], 1024]  # fused Q only
            sO: cute.struct.Align[cute.struct.MemRange[self.out_dtype, sO_size], 1024]  # TMA O store only
            sK: cute.struct.Align[cute.struct.MemRange[cutlass.Int8, cute.cosize(sK_layout)], 1024]
            sVt: cute.struct.Align[
                cute.struct.MemRange[cutlass.Float8E4M3FN, cute.cosize(sVt_layout)], 1024
            ]
            sDelta: cute.struct.Align[cute.struct.MemRange[Float32, sDelta_size], 128]  # smooth_q only
            # q_in_producer: each Q stage's q_scale per row
            sQScale: cute.struct.Align[cute.struct.MemRange[Float32, self.q_stages * self.tile_m], 128]

        num_m_blocks = cute.ceil_div(cute.size(mQ.shape[0]), self.tile_m)
        num_heads = cute.size(mQ.shape[2])
        num_batch = cute.size(mQ.shape[3])
        num_tiles = num_m_blocks * num_heads * num_batch
        grid_x = cutlass.min(num_tiles, max_ctas)

        self.kernel(
            tma_Q,
            tma_K,
            tma_Vt,
            mQScale,
            mKScale,
            mVScale,
            mO,
            tma_O,
            mLSE,
            mVMean,
            mQMean,
            mDelta,
            tma_atom_Q,
            tma_atom_K,
            tma_atom_V,
            tma_atom_O,
            tiled_mma_qk,
            tiled_mma_pv,
            tiled_mma_o,
            sQ_layout,
            sQin_layout,
            sK_layout,
            sVt_layout,
            sVt_tma_layout,
            sO_layout,
            softmax_scale_log2,
            num_m_blocks,
            SharedStorage,
        ).launch(
            grid=[grid_x, 1, 1],
            block=[self.num_threads, 1, 1],
            stream=stream,
            min_blocks_per_mp=1,
            use_pdl=self.config.pdl,
        )

    # ---------------------------------------------------------------- device
    @cute.kernel
    def kernel(
        self,
        mQ: cute.Tensor,  # TMA tensor (Lq, D, Hq, B)
        mK: cute.Tensor,  # TMA tensor (Lk, D, Hkv, B)
        mVt: cute.Tensor,  # TMA tensor (D, Lpad, Hkv, B)
        mQScale: Optional[cute.Tensor],
        mKScale: cute.Tensor,
        mVScale: cute.Tensor,
        mO: cute.Tensor,  # (Lq, D, Hq, B)
        mO_tma: Optional[cute.Tensor],  # TMA tensor (Lq, D, Hq, B) when tma_o_store
        mLSE: Optional[cute.Tensor],
        mVMean: Optional[cute.Tensor],
        mQMean: Optional[cute.Tensor],
        mDelta: Optional[cute.Tensor],
        tma_atom_Q: cute.CopyAtom,
        tma_atom_K: cute.CopyAtom,
        tma_atom_V: cute.CopyAtom,
        tma_atom_O: Optional[cute.CopyAtom],
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        tiled_mma_o: cute.TiledMma,
        sQ_layout: cute.ComposedLayout,
        sQin_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
        sVt_layout: cute.ComposedLayout,
        sVt_tma_layout: cute.ComposedLayout,
        sO_layout: cute.ComposedLayout,
        softmax_scale_log2: Float32,
        num_m_blocks: Int32,
        SharedStorage: cutlass.Constexpr,
    ):
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if warp_idx == 0:
            cpasync.prefetch_descriptor(tma_atom_Q)
            cpasync.prefetch_descriptor(tma_atom_K)
            cpasync.prefetch_descriptor(tma_atom_V)
            if const_expr(self.config.tma_o_store):
                cpasync.prefetch_descriptor(tma_atom_O)

        smem = cutlass.memory.SmemAllocator()
        storage = smem.allocate(SharedStorage)

        tma_warp = pipeline.CooperativeGroup(pipeline.Agent.Thread, 1)
        # PipelineTmaAsync consumers release with one elected lane per warp.
        consumer_warps = pipeline.CooperativeGroup(pipeline.Agent.Thread, self.num_consumer_wg * 4)
        # smooth_q: every consumer thread releases a K stage (release_k)
        consumer_threads = pipeline.CooperativeGroup(
            pipeline.Agent.Thread, self.num_consumer_wg * self.num_threads_per_wg
        )

        def tma_pipeline(barrier, num_stages: int, tx_count: int, consumers=consumer_warps):
            return pipeline.PipelineTmaAsync.create(
                barrier_storage=barrier.data_ptr(),
                num_stages=num_stages,
                producer_group=tma_warp,
                consumer_group=consumers,
                tx_count=tx_count,
                defer_sync=True,
            )

        # Note [Q quantized by the producer warpgroup]: the quantizing warps consume the
        # bf16 Q tile and produce the int8 stages the consumers read
        quant_warps = pipeline.CooperativeGroup(pipeline.Agent.Thread, Q_QUANT_WARPS)
        pipeline_q = tma_pipeline(storage.mbar_Q, 1, self.tma_bytes_Q,
                                  quant_warps if const_expr(self.q_in_producer) else consumer_warps)
        pipeline_q8 = None
        if const_expr(self.q_in_producer):
            pipeline_q8 = pipeline.PipelineAsync.create(
                barrier_storage=storage.mbar_Q8.data_ptr(),
                num_stages=self.q_stages,
                producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, Q_QUANT_WARPS * 32),
                consumer_group=consumer_threads,
                defer_sync=True,
            )
        pipeline_k = tma_pipeline(storage.mbar_K, self.num_stages, self.tma_bytes_K,
                                  consumer_threads if const_expr(self.smooth_q) else consumer_warps)
        pipeline_v = tma_pipeline(storage.mbar_V, self.num_stages, self.tma_bytes_V)
        if const_expr(self.rowsum_mma):
            self.fill_rowsum_ones(storage.sVt.data_ptr())
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()

        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sQin = sQ  # where TMA puts Q
        if const_expr(self.fuse_q):
            sQin = storage.sQin.get_tensor(sQin_layout.outer, swizzle=sQin_layout.inner)
        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sVt = storage.sVt.get_tensor(sVt_layout.outer, swizzle=sVt_layout.inner)
        sVt_tma = storage.sVt.get_tensor(sVt_tma_layout.outer, swizzle=sVt_tma_layout.inner)
        sO = None
        if const_expr(self.config.tma_o_store):
            sO = storage.sO.get_tensor(sO_layout.outer, swizzle=sO_layout.inner)
        sDelta = None
        if const_expr(self.smooth_q):
            sDelta = storage.sDelta.get_tensor(cute.make_layout((self.tile_n, self.num_stages)))
        sQScale = storage.sQScale.get_tensor(cute.make_layout((self.tile_m, self.q_stages)))

        seqlen_q = cute.size(mQ.shape[0])
        seqlen_k = cute.size(mK.shape[0])
        qhead_per_kvhead = cute.size(mQ.shape[2]) // cute.size(mK.shape[2])
        section_heads = None
        if const_expr(self.is_causal and self.config.l2_sections):
            # int8 K + e4m3 V of one KV head
            section_heads = StaticTileScheduler.section_heads_for(seqlen_k * (2 * self.head_dim), qhead_per_kvhead)
        sched = StaticTileScheduler(
            num_m_blocks, cute.size(mQ.shape[2]), cute.size(mQ.shape[3]), lpt=self.is_causal,
            section_heads=section_heads,
        )

        if warp_idx // 4 == int(WarpRole.PRODUCER_WG):
            if const_expr(self.config.use_setmaxnreg):
                cute.arch.setmaxregister_decrease(self.config.producer_regs)
            if warp_idx == 0:
                self.load(
                    mQ, mK, mVt, sQin, sK, sVt_tma, tma_atom_Q, tma_atom_K, tma_atom_V,
                    pipeline_q, pipeline_k, pipeline_v, sched, seqlen_k, qhead_per_kvhead, mDelta, sDelta,
                )
            if const_expr(self.q_in_producer):
                if warp_idx >= 1:
                    self.quantize_q_tiles(sQin, sQ, sQScale, pipeline_q, pipeline_q8, sched)
        else:
            if const_expr(self.config.use_setmaxnreg):
                cute.arch.setmaxregister_increase(self.consumer_regs)
            tidx = cute.arch.thread_idx()[0] - self.num_threads_per_wg
            self.consumer(
                tidx, sQ, sQin, sK, sVt, sO, mQScale, mKScale, mVScale, mO, mO_tma, mLSE, mVMean, mQMean, sDelta,
                sQScale, tma_atom_O,
                tiled_mma_qk, tiled_mma_pv, tiled_mma_o,
                pipeline_q8 if const_expr(self.q_in_producer) else pipeline_q, pipeline_k, pipeline_v,
                sched, seqlen_q, seqlen_k, qhead_per_kvhead, softmax_scale_log2,
                pipeline_q if const_expr(self.first_q_in_consumers) else None,
            )

    @cute.jit
    def fill_rowsum_ones(self, sVt_ptr: cute.Pointer):
        """Note [Row sum on the tensor core]: e4m3 1.0 (0x38) into rows D.. of every V^T
        stage, made visible to the WGMMA (async proxy) before the kernel's first
        barrier. All bytes are equal, so the swizzle does not matter."""
        words = ROWSUM_COLS * self.tile_n // 4
        tidx = cute.arch.thread_idx()[0]
        if tidx < words:
            for s in cutlass.range_constexpr(self.num_stages):
                rows = cute.make_tensor(
                    cute.recast_ptr(sVt_ptr + (s * self.pv_n + self.head_dim) * self.tile_n, dtype=Int32),
                    cute.make_layout(words),
                )
                rows[tidx] = Int32(0x38383838)
            cute.arch.fence_proxy("async.shared", space="cta")

    # ============================================================ producer
    @cute.jit
    def n_block_max(self, m_block: Int32, seqlen_k: Int32) -> Int32:
        """Number of KV blocks a query tile visits (causal: top-left diagonal)."""
        n_max = cute.ceil_div(seqlen_k, self.tile_n)
        if const_expr(self.is_causal):
            # last key visible to the tile's last row: (m_block + 1) * tile_m - 1
            n_max = cutlass.min(n_max, cute.ceil_div((m_block + 1) * self.tile_m, self.tile_n))
        return n_max

    @cute.jit
    def first_masked_block(self, m_block: Int32, n_block_max: Int32) -> Int32:
        """Blocks from this one on need a mask: the last (key tail, causal diagonal), and
        with causal tile_m > tile_n every block past the tile's first row's diagonal:
        block b is fully visible to row r0 = m_block * tile_m iff its last key
        b * tile_n + tile_n - 1 <= r0 (a 192-row tile's diagonal crosses two blocks)."""
        n = n_block_max - 1
        if const_expr(self.is_causal and self.tile_m > self.tile_n):
            n = cutlass.min(n, (m_block * self.tile_m + 1) // self.tile_n)
        return n

    @cute.jit
    def load(
        self,
        mQ: cute.Tensor,
        mK: cute.Tensor,
        mVt: cute.Tensor,
        sQ: cute.Tensor,
        sK: cute.Tensor,
        sVt: cute.Tensor,
        tma_atom_Q: cute.CopyAtom,
        tma_atom_K: cute.CopyAtom,
        tma_atom_V: cute.CopyAtom,
        pipeline_q: pipeline.PipelineAsync,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        sched: StaticTileScheduler,
        seqlen_k: Int32,
        qhead_per_kvhead: Int32,
        mDelta: Optional[cute.Tensor] = None,
        sDelta: Optional[cute.Tensor] = None,
    ):
        D = self.head_dim
        q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, 1)
        kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.num_stages)
        cta_layout = cute.make_layout(1)
        tile = sched.first_tile()
        if const_expr(self.q_prefetch):
            # Note [Q one tile ahead]: the first tile's Q here, every later one under
            # the tile before it
            if tile < sched.num_tiles():
                self.load_q(mQ, sQ, tma_atom_Q, pipeline_q, q_state, sched, tile)
                q_state.advance()
                if const_expr(self.config.pdl and self.config.pdl_wait):
                    cute.arch.griddepcontrol_wait()  # Note [PDL after the preprocessing]
        while tile < sched.num_tiles():
            m_block, head, batch = sched.decode(tile)
            head_kv = head // qhead_per_kvhead
            # (tile_m, D)
            gQ = cute.local_tile(mQ[None, None, head, batch], (self.tile_m, D), (m_block, 0))
            # (tile_n, D, n_blocks)
            gK = cute.local_tile(mK[None, None, head_kv, batch], (self.tile_n, D), (None, 0))
            # (D, tile_n, n_blocks)
            gVt = cute.local_tile(mVt[None, None, head_kv, batch], (D, self.tile_n), (0, None))
            tQsQ, tQgQ = cpasync.tma_partition(
                tma_atom_Q, 0, cta_layout, cute.group_modes(sQ, 0, 2), cute.group_modes(gQ, 0, 2)
            )
            tKsK, tKgK = cpasync.tma_partition(
                tma_atom_K, 0, cta_layout, cute.group_modes(sK, 0, 2), cute.group_modes(gK, 0, 2)
            )
            tVsV, tVgV = cpasync.tma_partition(
                tma_atom_V, 0, cta_layout, cute.group_modes(sVt, 0, 2), cute.group_modes(gVt, 0, 2)
            )
            n_block_max = self.n_block_max(m_block, seqlen_k)

            if const_expr(self.q_prefetch):
                tma_load(pipeline_k, tma_atom_K, tKgK[None, 0], tKsK[None, kv_state.index], kv_state)
                self.load_delta_s(mDelta, sDelta, pipeline_k, kv_state, batch, head, 0)
            else:
                # Note [PDL after the preprocessing]: the first tile's Q, then wait for K/V
                q_first = const_expr(self.config.pdl) and tile == sched.first_tile()
                if q_first:
                    tma_load(pipeline_q, tma_atom_Q, tQgQ, tQsQ, q_state)
                    if const_expr(self.config.pdl_wait):
                        cute.arch.griddepcontrol_wait()
                tma_load(pipeline_k, tma_atom_K, tKgK[None, 0], tKsK[None, kv_state.index], kv_state)
                self.load_delta_s(mDelta, sDelta, pipeline_k, kv_state, batch, head, 0)
                if not q_first:
                    tma_load(pipeline_q, tma_atom_Q, tQgQ, tQsQ, q_state)
                q_state.advance()
            tma_load(pipeline_v, tma_atom_V, tVgV[None, 0], tVsV[None, kv_state.index], kv_state)
            kv_state.advance()
            next_tile = tile + sched.grid_stride()
            for n in cutlass.range(1, n_block_max, unroll=1):
                tma_load(pipeline_k, tma_atom_K, tKgK[None, n], tKsK[None, kv_state.index], kv_state)
                self.load_delta_s(mDelta, sDelta, pipeline_k, kv_state, batch, head, n)
                tma_load(pipeline_v, tma_atom_V, tVgV[None, n], tVsV[None, kv_state.index], kv_state)
                kv_state.advance()
                if const_expr(self.q_prefetch):
                    if n == 1 and next_tile < sched.num_tiles():
                        self.load_q(mQ, sQ, tma_atom_Q, pipeline_q, q_state, sched, next_tile)
                        q_state.advance()
            if const_expr(self.q_prefetch):
                if n_block_max < 2 and next_tile < sched.num_tiles():
                    self.load_q(mQ, sQ, tma_atom_Q, pipeline_q, q_state, sched, next_tile)
                    q_state.advance()
            tile = next_tile
        # Wait for the last releases before exiting. producer_tail advances the state
        # it is given: one tail only (K is always released before V of a stage).
        pipeline_v.producer_tail(kv_state)

    @cute.jit
    def quantize_q_tiles(
        self,
        sQin: cute.Tensor,  # (tile_m, D) bf16/fp16, TMA's
        sQ: cute.Tensor,  # (tile_m, D, q_stages) int8, the QK WGMMA's A operand
        sQScale: cute.Tensor,  # (tile_m, q_stages) fp32
        pipeline_q: pipeline.PipelineAsync,
        pipeline_q8: pipeline.PipelineAsync,
        sched: StaticTileScheduler,
    ):
        """Note [Q quantized by the producer warpgroup]: for every tile of this CTA, the
        bf16/fp16 Q tile -> an int8 stage and its per-row q_scale. Thread ``t`` of the
        three warps owns the row pair (16 (t // 8) + t % 8, + 8): the rows that share a
        per_thread scale (per_warp: the 8 pairs of a warp's 16 rows, 8 adjacent lanes)."""
        D = self.head_dim
        n_chunks = D // 8  # 16-byte vectors of 8 elements per row
        qtid = cute.arch.thread_idx()[0] - 32
        n_pairs = self.tile_m // 2
        row0 = (qtid // 8) * 16 + qtid % 8
        q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 1)
        q8_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.q_stages)
        tile = sched.first_tile()
        if const_expr(self.first_q_in_consumers):
            if tile < sched.num_tiles():
                # Note [The first Q tile in the consumers]: they read sQin and write stage 0
                pipeline_q.consumer_wait(q_state)
                pipeline_q8.producer_acquire(q8_state)
                cute.arch.barrier(barrier_id=int(NamedBarrier.Q_FIRST), number_of_threads=self.q_first_threads)
                pipeline_q.consumer_release(q_state)
                pipeline_q8.producer_commit(q8_state)
                q_state.advance()
                q8_state.advance()
                tile += sched.grid_stride()
        while tile < sched.num_tiles():
            pipeline_q.consumer_wait(q_state)
            pipeline_q8.producer_acquire(q8_state)
            if qtid < n_pairs:
                # two passes over smem instead of holding the 2 D values: 24 registers
                part = [Float32(0.0)] * 2
                for r in cutlass.range_constexpr(2):
                    for c in cutlass.range(n_chunks, unroll=2):
                        x = cute.local_tile(sQin[row0 + 8 * r, None], (8,), (c,)).load().to(Float32)
                        for e in cutlass.range_constexpr(8):
                            part[e % 2] = cute.arch.fmax(part[e % 2], abs(x[e]))
                amax = cute.arch.fmax(part[0], part[1])
                if const_expr(self.granularity != QuantGranularity.PER_THREAD):
                    amax = warp_max_bfly(amax, 0b111)  # the 8 pairs of 16 rows: one per_warp group
                amax = cute.arch.fmax(amax, Float32(INT8_AMAX_FLOOR))
                inv = div_rn(Float32(INT8_MAX), amax)
                q_scale = div_rn(amax, Float32(INT8_MAX))
                sQ_stage = sQ[None, None, q8_state.index]
                q8 = cute.make_rmem_tensor(cute.make_layout(2), Int32)  # 8 int8, packed
                for r in cutlass.range_constexpr(2):
                    row = row0 + 8 * r
                    sQScale[row, q8_state.index] = q_scale
                    for c in cutlass.range(n_chunks, unroll=2):
                        x = cute.local_tile(sQin[row, None], (8,), (c,)).load().to(Float32)
                        for w in cutlass.range_constexpr(2):
                            # Note [int8 rounding by a magic add]: all within the amax
                            q8[w] = quantize_int8x4(x[4 * w], x[4 * w + 1], x[4 * w + 2], x[4 * w + 3], inv,
                                                    saturate=False)
                        cute.autovec_copy(cute.recast_tensor(q8, cutlass.Int8),
                                          cute.local_tile(sQ_stage[row, None], (8,), (c,)))
                # the QK WGMMAs (async proxy) read what these generic stores wrote
                cute.arch.fence_proxy("async.shared", space="cta")
            cute.arch.sync_warp()  # every lane's sQin reads are done before lane 0 releases it
            pipeline_q.consumer_release(q_state)
            pipeline_q8.producer_commit(q8_state)
            q_state.advance()
            q8_state.advance()
            tile += sched.grid_stride()

    @cute.jit
    def load_q(self, mQ: cute.Tensor, sQ: cute.Tensor, tma_atom_Q: cute.CopyAtom, pipeline_q, q_state,
               sched: StaticTileScheduler, tile: Int32):
        """TMA the Q tile of ``tile`` into its (single) stage."""
        m_block, head, batch = sched.decode(tile)
        gQ = cute.local_tile(mQ[None, None, head, batch], (self.tile_m, self.head_dim), (m_block, 0))
        tQsQ, tQgQ = cpasync.tma_partition(
            tma_atom_Q, 0, cute.make_layout(1), cute.group_modes(sQ, 0, 2), cute.group_modes(gQ, 0, 2)
        )
        tma_load(pipeline_q, tma_atom_Q, tQgQ, tQsQ, q_state)

    @cute.jit
    def load_delta_s(self, mDelta: Optional[cute.Tensor], sDelta: Optional[cute.Tensor], pipeline_k, kv_state,
                     batch, head, n_block):
        """smooth_q: block ``n_block``'s delta_s of (batch, q head) into the K stage's
        slot, on the K barrier (Note [smooth_q on sm90]); nothing otherwise."""
        if const_expr(self.smooth_q):
            off = (Int64(batch) * Int64(mDelta.shape[1]) + Int64(head)) * Int64(mDelta.shape[2]) + Int64(
                n_block * self.tile_n
            )
            with cute.arch.elect_one():  # a plain bulk copy: one thread issues it (TMA elects itself)
                bulk_copy_g2s(sDelta.iterator + kv_state.index * self.tile_n, mDelta.iterator + off, self.tile_n * 4,
                              pipeline_k.producer_get_barrier(kv_state))

    # ============================================================ consumer
    @cute.jit
    def consumer(
        self,
        tidx: Int32,
        sQ: cute.Tensor,
        sQin: cute.Tensor,
        sK: cute.Tensor,
        sVt: cute.Tensor,
        sO: Optional[cute.Tensor],
        mQScale: Optional[cute.Tensor],
        mKScale: cute.Tensor,
        mVScale: cute.Tensor,
        mO: cute.Tensor,
        mO_tma: Optional[cute.Tensor],
        mLSE: Optional[cute.Tensor],
        mVMean: Optional[cute.Tensor],
        mQMean: Optional[cute.Tensor],
        sDelta: Optional[cute.Tensor],
        sQScale: cute.Tensor,
        tma_atom_O: Optional[cute.CopyAtom],
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        tiled_mma_o: cute.TiledMma,
        pipeline_q: pipeline.PipelineAsync,  # q_in_producer: the int8 stages' pipeline
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        sched: StaticTileScheduler,
        seqlen_q: Int32,
        seqlen_k: Int32,
        qhead_per_kvhead: Int32,
        softmax_scale_log2: Float32,
        pipeline_q_in: Optional[pipeline.PipelineAsync] = None,  # first_q_in_consumers: TMA's bf16 Q
    ):
        D = self.head_dim
        wg_idx = cute.arch.make_warp_uniform(tidx // self.num_threads_per_wg)
        warp_in_wg = cute.arch.make_warp_uniform((tidx // 32) % 4)
        lane = tidx % 32
        # WGMMA operand descriptors are per warpgroup: partition A/B with the WG's slice.
        wg_mma_qk = tiled_mma_qk.get_slice(wg_idx * self.num_threads_per_wg)
        wg_mma_pv = tiled_mma_pv.get_slice(wg_idx * self.num_threads_per_wg)
        thr_mma_qk = tiled_mma_qk.get_slice(tidx)
        thr_mma_pv = tiled_mma_pv.get_slice(tidx)
        tSrQ = wg_mma_qk.make_fragment_A(wg_mma_qk.partition_A(sQ))
        tSrK = wg_mma_qk.make_fragment_B(wg_mma_qk.partition_B(sK))  # (.., .., k, stage)
        tOrVt = wg_mma_pv.make_fragment_B(wg_mma_pv.partition_B(sVt))  # (.., .., k, stage)
        tOrP = wg_mma_pv.make_fragment_A(wg_mma_pv.partition_shape_A((self.tile_m, self.tile_n)))
        acc_shape_S = thr_mma_qk.partition_shape_C((self.tile_m, self.tile_n))
        acc_shape_O = thr_mma_pv.partition_shape_C((self.tile_m, self.pv_n))
        acc_O = cute.make_rmem_tensor(acc_shape_O, Float32)
        # O's D columns: a prefix of the PV accumulator (Note [Row sum on the tensor core])
        acc_O_out = cute.make_tensor(
            acc_O.iterator, cute.make_layout(tiled_mma_o.get_slice(0).partition_shape_C((64, D)))
        )
        acc_O_mn = wgmma.acc_mn_view(acc_O_out)
        # coordinates of this thread's accumulator elements inside the tile
        # Static coordinates of thread 0's accumulator elements; thread t adds
        # (row_in_tile, col_in_block) below. Keeps index math out of registers.
        tScS_mn = wgmma.acc_mn_view(
            tiled_mma_qk.get_slice(0).partition_C(cute.make_identity_tensor((self.tile_m, self.tile_n)))
        )
        tOcO_mn = wgmma.acc_mn_view(tiled_mma_o.get_slice(0).partition_C(cute.make_identity_tensor((64, D))))
        num_rows = cute.size(acc_O_mn, mode=[0])  # 2: rows r and r + 8
        row_max = cute.make_rmem_tensor((num_rows,), Float32)
        row_sum = cute.make_rmem_tensor((num_rows,), Float32)
        row_scale = cute.make_rmem_tensor((num_rows,), Float32)
        row_scale_prev = cute.make_rmem_tensor((num_rows,), Float32)
        acc_S = cute.make_rmem_tensor(acc_shape_S, Int32)
        v_scale = cute.make_rmem_tensor((cute.size(acc_O_mn, mode=[1]),), Float32)
        v_mean = cute.make_rmem_tensor((cute.size(acc_O_mn, mode=[1]),), Float32) if const_expr(
            self.smooth_v
        ) else None
        acc_S_f = cute.make_rmem_tensor(acc_shape_S, Float32)
        acc_O_parts = ()
        if const_expr(self.pv_accum == PvAccum.FP32_FP32):
            acc_O_parts = (cute.make_rmem_tensor(acc_shape_O, Float32),)
        if const_expr(self.pv_accum == PvAccum.FP32_FP16):
            # Note [fp32+fp16 on sm90]: one fp16 accumulator per 64-key half block
            acc_O_parts = tuple(cute.make_rmem_tensor(acc_shape_O, cutlass.Float16) for _ in range(2))

        q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.q_stages)
        kv_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.num_stages)

        row_in_tile, col_in_block = self.thread_position(tidx)

        self.pingpong_init(wg_idx)
        tile = sched.first_tile()
        while tile < sched.num_tiles():
            m_block, head, batch = sched.decode(tile)
            head_kv = head // qhead_per_kvhead
            n_block_max = self.n_block_max(m_block, seqlen_k)
            tSrQ_tile = tSrQ
            if const_expr(self.q_in_producer):
                tSrQ_tile = tSrQ[None, None, None, q_state.index]
                q_scale = Float32(0.0)
                if const_expr(self.first_q_in_consumers):
                    if tile == sched.first_tile():
                        q_scale = self.quantize_first_q(sQin, sQ, pipeline_q_in, wg_idx)
                    else:
                        q_scale = self.producer_q_scale(sQScale, pipeline_q, q_state, row_in_tile)
                else:
                    q_scale = self.producer_q_scale(sQScale, pipeline_q, q_state, row_in_tile)
            elif const_expr(self.fuse_q):
                pipeline_q.consumer_wait(q_state)
                q_scale = self.quantize_q(
                    sQin, sQ, wg_idx, mQMean[batch, head, 0, None] if const_expr(self.smooth_q) else None,
                    seqlen_q - m_block * self.tile_m,
                )
                pipeline_q.consumer_release(q_state)  # the bf16/fp16 tile is consumed
            else:
                row0 = m_block * self.tile_m + row_in_tile
                q_scale = Float32(mQScale[batch, head, self.q_scale_index(row0)])
            if const_expr(self.config.pdl and self.config.pdl_wait):
                # K/V scales come from the preprocessing. The first tile only: a wait
                # per tile costs (H200 D128 L8k kernel alone 4713 -> 4797 us)
                if tile == sched.first_tile():
                    cute.arch.griddepcontrol_wait()
            # smooth_q: the softmax applies sm_scale * log2e itself (add_delta_s)
            qk_scale_log2 = q_scale if const_expr(self.smooth_q) else q_scale * softmax_scale_log2
            row_max.fill(-Float32.inf)
            if const_expr(not self.rowsum_mma):
                row_sum.fill(0.0)  # else finish_row_sum reads it off the PV accumulator
            acc_O.fill(0.0)

            ctx = BlockCtx(
                tSrQ=tSrQ_tile, tSrK=tSrK, tOrP=tOrP, tOrVt=tOrVt, acc_O=acc_O, acc_O_parts=acc_O_parts,
                acc_S=acc_S, acc_S_f=acc_S_f, row_max=row_max, row_sum=row_sum,
                row_scale=row_scale, row_scale_prev=row_scale_prev,
                tScS_mn=tScS_mn, tOcO_mn=tOcO_mn, mKScale=mKScale[batch, head_kv, None],
                mVScale=mVScale[batch, head_kv, None], v_scale=v_scale,
                mVMean=mVMean[batch, head_kv, None] if const_expr(self.smooth_v) else None, v_mean=v_mean,
                sDelta=sDelta, delta_scale=softmax_scale_log2,
                k_scale_idx0=self.k_scale_index(col_in_block),
                qk_scale_log2=qk_scale_log2, col_in_block=col_in_block, row_in_tile=row_in_tile,
                wg_idx=wg_idx,
                m_block=m_block, seqlen_k=seqlen_k,
            )
            if const_expr(not self.fuse_q):
                pipeline_q.consumer_wait(q_state)
            if const_expr(self.intra_wg_overlap):
                kv_state = self.mainloop_overlap(
                    ctx, kv_state, n_block_max, tiled_mma_qk, tiled_mma_pv, pipeline_k, pipeline_v,
                    pipeline_q, q_state,
                )
            else:
                n_masked = self.first_masked_block(m_block, n_block_max)
                for n in cutlass.range(n_masked, unroll=1):
                    kv_state = self.mma_one_block(
                        ctx, kv_state, n, tiled_mma_qk, tiled_mma_pv, pipeline_k, pipeline_v, mask=False
                    )
                for n in cutlass.range(n_masked, n_block_max, unroll=1):
                    kv_state = self.mma_one_block(
                        ctx, kv_state, n, tiled_mma_qk, tiled_mma_pv, pipeline_k, pipeline_v, mask=True
                    )
                self.load_v_scale(ctx)
            if const_expr(not (self.quantize_q_in_consumer or self.early_q_release)):
                pipeline_q.consumer_release(q_state)
            q_state.advance()

            self.finish_row_sum(acc_O, row_sum)
            row_pos, col_pos = self.position_here(ctx)
            self.epilogue(
                acc_O_out, tOcO_mn, row_max, row_sum, v_scale, v_mean, mO, mLSE,
                m_block, head, head_kv, batch, seqlen_q, col_pos // 2, row_pos, col_pos,
                sO, mO_tma, tma_atom_O, tiled_mma_o, wg_idx, warp_in_wg,
            )
            tile += sched.grid_stride()
        if const_expr(self.config.tma_o_store):
            if warp_in_wg == 0:
                cute.arch.cp_async_bulk_wait_group(0, read=True)  # sO outlives the last store

    @cute.jit
    def producer_q_scale(self, sQScale: cute.Tensor, pipeline_q: pipeline.PipelineAsync,
                         q_state: pipeline.PipelineState, row_in_tile: Int32) -> Float32:
        """Note [Q quantized by the producer warpgroup]: wait for the tile's int8 Q stage,
        then this thread's q_scale from it."""
        pipeline_q.consumer_wait(q_state)
        row_here = row_in_tile
        if const_expr(self.num_consumer_wg > 2):
            # recomputed, not held through the tile (Note [Three consumer warpgroups])
            row_here, _ = self.thread_position(recompute_here(cute.arch.thread_idx()[0]) - self.num_threads_per_wg)
        return sQScale[row_here, q_state.index]

    @cute.jit
    def quantize_first_q(self, sQin: cute.Tensor, sQ: cute.Tensor, pipeline_q_in: pipeline.PipelineAsync,
                         wg_idx: Int32) -> Float32:
        """Note [The first Q tile in the consumers]: the CTA's first bf16/fp16 Q tile
        (TMA's phase 0) into int8 stage 0, then the quantizing warps may release sQin and
        commit the stage. Returns this thread's q_scale."""
        pipeline_q_in.consumer_wait(pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 1))
        q_scale = self.quantize_q(sQin, sQ[None, None, 0], wg_idx)
        cute.arch.barrier_arrive(barrier_id=int(NamedBarrier.Q_FIRST), number_of_threads=self.q_first_threads)
        return q_scale

    @cute.jit
    def quantize_q(
        self, sQin: cute.Tensor, sQ: cute.Tensor, wg_idx: Int32, q_mean: Optional[cute.Tensor] = None,
        rows_in_tile: Int32 = 0,
    ):
        """Note [Fused Q quantization]: this thread's share of its warpgroup's rows,
        sQin -> sQ int8; returns the q_scale of this thread's S rows. ``q_mean`` (D,
        smooth_q): quantize ``q - q_mean`` in fp32 (Note [smooth_q on sm90]); rows from
        ``rows_in_tile`` on (past Lq) then count as 0 in the scale, as the reference's
        padding (TMA's zero rows would read as ``-q_mean``)."""
        D = self.head_dim
        n_vec = D // 32  # 8-channel vectors per row and thread
        # from the thread index here: the 16 smem addresses are per tile, and nothing
        # they derive from stays live through the mainloop
        tidx = recompute_here(cute.arch.thread_idx()[0]) - self.num_threads_per_wg
        row, _ = self.thread_position(tidx)
        col0 = (tidx % 4) * 8
        rX = cute.make_rmem_tensor(cute.make_layout((8, 2, n_vec)), self.q_dtype)
        for r in cutlass.range_constexpr(2):
            for j in cutlass.range_constexpr(n_vec):
                src = cute.local_tile(sQin[row + 8 * r, None], (8,), (col0 // 8 + 4 * j,))
                rX[None, r, j].store(src.load())
        rMean = None
        if const_expr(q_mean is not None):
            # this thread's channels col0 + 32 j + (0..7), as fp32
            rMean = cute.make_rmem_tensor(cute.make_layout((8, n_vec)), Float32)
            for j in cutlass.range_constexpr(n_vec):
                rMean[None, j].store(gmem_load(q_mean.iterator, Int64(col0 + 32 * j), 8).to(Float32))
        amax = Float32(0.0)
        if const_expr(rMean is None):
            # four independent max chains, then a tree: a 64-deep FMNMX chain was ~300
            # cycles of latency at the tile's start
            part = [Float32(0.0)] * 4
            for i in cutlass.range_constexpr(cute.size(rX)):
                part[i % 4] = cute.arch.fmax(part[i % 4], abs(rX[i].to(Float32)))
            amax = cute.arch.fmax(cute.arch.fmax(part[0], part[1]), cute.arch.fmax(part[2], part[3]))
        else:
            for r in cutlass.range_constexpr(2):
                amax_row = Float32(0.0)
                for j in cutlass.range_constexpr(n_vec):
                    for e in cutlass.range_constexpr(8):
                        amax_row = cute.arch.fmax(amax_row, abs(rX[e, r, j].to(Float32) - rMean[e, j]))
                # a row past Lq shares its scale with a true row (per_thread: rows r and
                # r + 8): it must not widen it
                amax = cute.arch.fmax(amax, cutlass.select_(row + 8 * r < rows_in_tile, amax_row, Float32(0.0)))
        amax = warp_max_bfly(amax, 0b11 if const_expr(self.granularity == QuantGranularity.PER_THREAD) else 31)
        amax = cute.arch.fmax(amax, Float32(INT8_AMAX_FLOOR))
        inv = div_rn(Float32(INT8_MAX), amax)
        # int8 elements copied into the swizzled view (one STS.64 per vector): recasting
        # that view to Int32 put rows other than 0 at the wrong addresses
        q8 = cute.make_rmem_tensor(cute.make_layout(2), Int32)  # 8 int8, packed
        for r in cutlass.range_constexpr(2):
            for j in cutlass.range_constexpr(n_vec):
                x = rX[None, r, j].load().to(Float32)
                if const_expr(rMean is not None):
                    x = x - rMean[None, j].load()
                for w in cutlass.range_constexpr(2):
                    # Note [int8 rounding by a magic add]: every value is within the amax,
                    # except smooth_q's rows past Lq (left out of it)
                    q8[w] = quantize_int8x4(x[4 * w], x[4 * w + 1], x[4 * w + 2], x[4 * w + 3], inv,
                                            saturate=rMean is not None)
                dst = cute.local_tile(sQ[row + 8 * r, None], (8,), (col0 // 8 + 4 * j,))
                cute.autovec_copy(cute.recast_tensor(q8, cutlass.Int8), dst)
        # the QK WGMMAs (async proxy) read what these generic stores wrote
        cute.arch.fence_proxy("async.shared", space="cta")
        cute.arch.barrier(barrier_id=int(NamedBarrier.Q_QUANT) + wg_idx, number_of_threads=self.num_threads_per_wg)
        return div_rn(amax, Float32(INT8_MAX))

    @cute.jit
    def q_scale_index(self, row: Int32) -> Int32:
        g = SM90_GEOMETRY
        idx = row // g.blk_q
        if const_expr(self.granularity == QuantGranularity.PER_WARP):
            idx = row // g.warp_q
        if const_expr(self.granularity == QuantGranularity.PER_THREAD):
            idx = (row // g.warp_q) * 8 + row % 8
        return idx

    @cute.jit
    def k_scale_index(self, token: Int32) -> Int32:
        g = SM90_GEOMETRY
        idx = token // g.blk_k
        if const_expr(self.granularity == QuantGranularity.PER_WARP):
            idx = token // g.warp_k
        if const_expr(self.granularity == QuantGranularity.PER_THREAD):
            idx = (token // g.warp_k) * 4 + (token % 8) // 2
        return idx

    # ------------------------------------------------------------------ one KV block
    @cute.jit
    def load_qk_scale(self, ctx: "BlockCtx", n_block: Int32) -> Float32:
        """q_scale * k_scale * sm_scale * log2e for this thread's rows/columns of block n."""
        # k_scale_index(n * tile_n + c) = k_scale_index(c) + n * step for every layout
        # (tile_n is a multiple of warp_k and of 8): no per-block index math
        k_scale = Float32(ctx.mKScale[ctx.k_scale_idx0 + n_block * self.k_scale_step()])
        return ctx.qk_scale_log2 * k_scale

    def k_scale_step(self) -> int:
        g = SM90_GEOMETRY
        assert self.tile_n % g.warp_k == 0 and self.tile_n % 8 == 0
        if self.granularity == QuantGranularity.PER_THREAD:
            return self.tile_n // g.warp_k * 4
        if self.granularity == QuantGranularity.PER_WARP:
            return self.tile_n // g.warp_k
        return self.tile_n // g.blk_k

    @cute.jit
    def softmax_step(self, ctx: "BlockCtx", scale: Float32, n_block: Int32, mask: cutlass.Constexpr[bool]):
        """acc_S (int32) -> P (fp32, in acc_S_f); updates row_max (and row_sum without
        ``rowsum_mma``); row_scale = alpha.

        Note [FP8 offset] (numerics.md §5): the running max is kept 8.807 = log2(448)
        below the true max, so a row's largest P is 448, the e4m3 maximum; the offset
        cancels in O / rowsum."""
        if const_expr(self.smooth_q):
            # acc_S_f holds u = S * q_scale * k_scale + delta_s already (add_delta_s): the
            # softmax takes it as the fused-scale path does S, with scale = sm_scale * log2e
            scale = ctx.delta_scale
        elif const_expr(self.config.magic_i2f):
            # Note [int32 -> fp32 without I2FP]: |S| <= 127^2 * D < 2^22, so the bits of
            # S + 0x4B400000 read as fp32 are exactly x = S + 1.5 * 2^23 (one IADD on the
            # ALU pipe instead of an I2FP on the pipe MUFU.EX2 also uses). The row max is
            # taken on x; the bias is folded into the per-row exp2 offset below.
            ctx.acc_S.store(ctx.acc_S.load() + Int32(0x4B400000))
            ctx.acc_S_f.store(cute.recast_tensor(ctx.acc_S, Float32).load())
        elif const_expr(self.config.fused_scale_exp):
            # scale > 0 and uniform within a thread, so a thread's max(S * scale) is
            # max(S) * scale: one FFMA per score below
            ctx.acc_S_f.store(ctx.acc_S.load().to(Float32))
        else:
            ctx.acc_S_f.store(ctx.acc_S.load().to(Float32) * scale)
        s_mn = wgmma.acc_mn_view(ctx.acc_S_f)
        if const_expr(mask):
            self.apply_mask(s_mn, ctx, n_block)
        int_max = (self.config.int_row_max and self.config.fused_scale_exp and not self.config.magic_i2f and not mask
                   and not self.smooth_q)
        for r in cutlass.range_constexpr(cute.size(ctx.row_max)):
            row = s_mn[r, None].load()
            if const_expr(int_max):
                m_thr = Float32(softmax_utils.row_max_int(wgmma.acc_mn_view(ctx.acc_S)[r, None],
                                                          num_partials=self.config.reduce_partials))
            elif const_expr(self.config.tree_reduce):
                m_thr = softmax_utils.row_reduce(s_mn[r, None], is_max=True,
                                                 num_partials=self.config.reduce_partials)
            else:
                m_thr = row.reduce(cute.ReductionOp.MAX, -Float32.inf, 0)
            # This thread's max of t. Scale before the quad reduction: with per-thread K
            # scales the 4 threads of a row scale their columns differently.
            if const_expr(self.config.magic_i2f and not self.smooth_q):
                m_thr = (m_thr - Float32(MAGIC_I2F_BIAS)) * scale
            elif const_expr(self.config.fused_scale_exp or self.smooth_q):
                m_thr = m_thr * scale
            m_cur = cute.arch.warp_reduction_max(m_thr, threads_in_group=4)
            m_old = ctx.row_max[r]
            m_new = cute.arch.fmax(m_old, m_cur - Float32(P_FP8_OFFSET_LOG2))
            if const_expr(self.config.magic_i2f and not self.smooth_q):
                # exp2(S * scale - m) = exp2(x * scale - (bias * scale + m)), one FFMA; the
                # product is exact inside the FFMA, only the row offset is rounded (~1e-4
                # in log2 units, far below the e4m3 step of P)
                row_offset = Float32(MAGIC_I2F_BIAS) * scale + m_new
                p = cute.math.exp2(row * scale - row_offset, fastmath=True)
            elif const_expr(self.config.fused_scale_exp or self.smooth_q):
                if const_expr(self.config.exp2_poly_every > 0):
                    # every k-th column on the FMA pipe (Note [Polynomial exp2])
                    k = self.config.exp2_poly_every
                    s_mn[r, None].store(row * scale - m_new)
                    for c in cutlass.range_constexpr(cute.size(s_mn, mode=[1])):
                        if const_expr(c % k == k - 1):
                            s_mn[r, c] = softmax_utils.exp2_poly(s_mn[r, c])
                        else:
                            s_mn[r, c] = cute.math.exp2(s_mn[r, c], fastmath=True)
                    p = s_mn[r, None].load()
                else:
                    p = cute.math.exp2(row * scale - m_new, fastmath=True)
            else:
                p = cute.math.exp2(row - m_new, fastmath=True)
            alpha = cute.math.exp2(m_old - m_new, fastmath=True)
            s_mn[r, None].store(p)
            if const_expr(not self.rowsum_mma):
                # per-thread partial row sum; the quad reduction happens once, after the
                # last block (finish_row_sum)
                if const_expr(self.config.tree_reduce):
                    p_sum = softmax_utils.row_reduce(s_mn[r, None], is_max=False,
                                                     num_partials=self.config.reduce_partials)
                else:
                    p_sum = p.reduce(cute.ReductionOp.ADD, Float32(0.0), 0)
                ctx.row_sum[r] = ctx.row_sum[r] * alpha + p_sum
            ctx.row_max[r] = m_new
            ctx.row_scale[r] = alpha

    @cute.jit
    def add_delta_s(self, ctx: "BlockCtx", scale: Float32, stage: Int32):
        """smooth_q: the score ``u = S * q_scale * k_scale + delta_s[key]`` (``scale`` is
        q_scale * k_scale here: ``qk_scale_log2`` leaves out sm_scale * log2e with
        smooth_q) into acc_S_f, from the K stage's delta_s slot, before that stage is
        released (Note [smooth_q on sm90]); nothing otherwise."""
        if const_expr(self.smooth_q):
            ctx.acc_S_f.store(ctx.acc_S.load().to(Float32))
            s_mn = wgmma.acc_mn_view(ctx.acc_S_f)
            _, col_in_block = self.position_here(ctx)
            for c in cutlass.range_constexpr(cute.size(s_mn, mode=[1])):
                d = ctx.sDelta[col_in_block + ctx.tScS_mn[0, c][1], stage]
                for r in cutlass.range_constexpr(cute.size(s_mn, mode=[0])):
                    s_mn[r, c] = s_mn[r, c] * scale + d
            # the producer's next bulk copy (async proxy) overwrites this slot once the
            # stage is released: a proxy fence orders this thread's generic reads before
            # that write (PTX memory model), and release_k has every thread arrive
            cute.arch.fence_proxy("async.shared", space="cta")

    @cute.jit
    def release_k(self, pipeline_k: pipeline.PipelineAsync, state: pipeline.PipelineState):
        """Release a K stage: one elected lane per warp, or with smooth_q every consumer
        thread, each after its own reads of the stage's delta_s slot (add_delta_s). With
        one lane per warp, racecheck reported the next bulk copy into the slot against
        the other lanes' reads (128 per read site, at every stage reuse)."""
        if const_expr(self.smooth_q):
            pipeline.PipelineAsync.consumer_release(pipeline_k, state)
        else:
            pipeline_k.consumer_release(state)

    @cute.jit
    def convert_p(self, ctx: "BlockCtx"):
        """fp32 P -> e4m3 A operand of the PV WGMMA (Note [P fragment ...] in common/wgmma.py)."""
        ctx.tOrP.store(wgmma.acc_as_fp8_operand_a(ctx.acc_S_f, self.tile_n).load().to(cutlass.Float8E4M3FN))

    @cute.jit
    def rescale_o(self, acc_O: cute.Tensor, row_scale: cute.Tensor):
        acc_O_mn = wgmma.acc_mn_view(acc_O)
        if const_expr(self.config.skip_unit_rescale):
            unit = row_scale[0] == Float32(1.0)
            for r in cutlass.range_constexpr(1, cute.size(row_scale)):
                unit = unit & (row_scale[r] == Float32(1.0))
            if not cute.arch.vote_all_sync(unit):
                for r in cutlass.range_constexpr(cute.size(row_scale)):
                    acc_O_mn[r, None].store(acc_O_mn[r, None].load() * row_scale[r])
        else:
            for r in cutlass.range_constexpr(cute.size(row_scale)):
                acc_O_mn[r, None].store(acc_O_mn[r, None].load() * row_scale[r])

    @cute.jit
    def promote_o(self, acc_O: cute.Tensor, acc_O_parts: tuple, row_scale: cute.Tensor):
        """fp32+fp32 / fp32+fp16 (numerics.md §5): O = O * alpha + this block's fresh
        FP8-MMA accumulations (one fp32; or two fp16 halves, Note [fp32+fp16 on sm90])."""
        acc_O_mn = wgmma.acc_mn_view(acc_O)
        for r in cutlass.range_constexpr(cute.size(row_scale)):
            o = acc_O_mn[r, None].load() * row_scale[r]
            for part in acc_O_parts:
                o = o + wgmma.acc_mn_view(part)[r, None].load().to(Float32)
            acc_O_mn[r, None].store(o)

    @cute.jit
    def issue_pv(self, ctx: "BlockCtx", tiled_mma_pv: cute.TiledMma, stage: Int32, wg_wait: cutlass.Constexpr[int]):
        if const_expr(self.pv_accum == PvAccum.FP32):
            wgmma.gemm(tiled_mma_pv, ctx.acc_O, ctx.tOrP, ctx.tOrVt[None, None, None, stage],
                       zero_init=False, wg_wait=wg_wait)
        else:
            wgmma.gemm_split_k(tiled_mma_pv, list(ctx.acc_O_parts), ctx.tOrP, ctx.tOrVt[None, None, None, stage],
                               wg_wait=wg_wait)

    @cute.jit
    def finish_pv(self, ctx: "BlockCtx", row_scale: cute.Tensor):
        """After the PV WGMMA of a block retired: fold it into O (fp32+fp32)."""
        if const_expr(self.two_level):
            self.promote_o(ctx.acc_O, ctx.acc_O_parts, row_scale)

    @cute.jit
    def mma_one_block(
        self,
        ctx: "BlockCtx",
        kv_state: pipeline.PipelineState,
        n_block: Int32,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        mask: cutlass.Constexpr[bool],
    ) -> pipeline.PipelineState:
        """One KV block, no overlap: QK, softmax, PV in sequence."""
        scale = self.load_qk_scale(ctx, n_block)
        pipeline_k.consumer_wait(kv_state)
        wgmma.gemm(tiled_mma_qk, ctx.acc_S, ctx.tSrQ, ctx.tSrK[None, None, None, kv_state.index],
                   zero_init=True, wg_wait=0)
        self.add_delta_s(ctx, scale, kv_state.index)
        self.release_k(pipeline_k, kv_state)
        self.softmax_step(ctx, scale, n_block, mask=mask)
        self.convert_p(ctx)
        if const_expr(self.pv_accum == PvAccum.FP32):
            self.rescale_o(ctx.acc_O, ctx.row_scale)
        pipeline_v.consumer_wait(kv_state)
        self.issue_pv(ctx, tiled_mma_pv, kv_state.index, wg_wait=0)
        pipeline_v.consumer_release(kv_state)
        self.finish_pv(ctx, ctx.row_scale)
        kv_state.advance()
        return kv_state

    @cute.jit
    def mainloop_overlap(
        self,
        ctx: "BlockCtx",
        kv_state: pipeline.PipelineState,
        n_block_max: Int32,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        pipeline_q: pipeline.PipelineAsync,
        q_state: pipeline.PipelineState,
    ) -> pipeline.PipelineState:
        """Intra-warpgroup overlap: QK(n) and PV(n-1) are in flight together and
        softmax(n) runs under PV(n-1). Blocks run in ascending order (the order the
        reference's online softmax uses); only the last block is masked."""
        # ---- block 0: QK, softmax; its PV is issued in the next step
        scale = self.load_qk_scale(ctx, 0)
        pipeline_k.consumer_wait(kv_state)
        wgmma.gemm(tiled_mma_qk, ctx.acc_S, ctx.tSrQ, ctx.tSrK[None, None, None, kv_state.index],
                   zero_init=True, wg_wait=0)
        self.add_delta_s(ctx, scale, kv_state.index)
        self.release_k(pipeline_k, kv_state)
        if const_expr(self.early_q_release):
            if n_block_max == 1:
                pipeline_q.consumer_release(q_state)  # that was the tile's last QK
        # only the last blocks can need a mask (key tail, causal diagonal)
        n_masked = self.first_masked_block(ctx.m_block, n_block_max)
        if n_masked == 0:
            self.softmax_step(ctx, scale, 0, mask=True)
        else:
            self.softmax_step(ctx, scale, 0, mask=False)
        self.convert_p(ctx)
        if const_expr(self.pv_accum == PvAccum.FP32):
            self.rescale_o(ctx.acc_O, ctx.row_scale)
        if const_expr(self.promote_under_qk):
            # nothing pending yet: the first promotion computes O = O * 1 + 0 (O = 0)
            for part in ctx.acc_O_parts:
                part.fill(0.0)
            ctx.row_scale_prev.fill(1.0)
        else:
            ctx.row_scale_prev.store(ctx.row_scale.load())
        v_state = kv_state.clone()
        kv_state.advance()
        for n in cutlass.range(1, n_masked, unroll=self.config.mainloop_unroll):
            self.overlap_step(ctx, kv_state, v_state, n, tiled_mma_qk, tiled_mma_pv,
                              pipeline_k, pipeline_v, mask=False)
            v_state = kv_state.clone()
            kv_state.advance()
        if const_expr(self.is_causal and self.tile_m > self.tile_n):
            # masked blocks before the last one (a 192-row tile's diagonal)
            for n in cutlass.range(cutlass.max(n_masked, 1), n_block_max - 1, unroll=1):
                self.overlap_step(ctx, kv_state, v_state, n, tiled_mma_qk, tiled_mma_pv,
                                  pipeline_k, pipeline_v, mask=True)
                v_state = kv_state.clone()
                kv_state.advance()
        if n_block_max > 1:
            self.overlap_step(ctx, kv_state, v_state, n_block_max - 1, tiled_mma_qk, tiled_mma_pv,
                              pipeline_k, pipeline_v, mask=True,
                              pipeline_q=pipeline_q if const_expr(self.early_q_release) else None,
                              q_state=q_state)
            v_state = kv_state.clone()
            kv_state.advance()
        # ---- PV of the last block
        if const_expr(self.promote_under_qk):
            self.finish_pv(ctx, ctx.row_scale_prev)
        pipeline_v.consumer_wait(v_state)
        self.issue_pv(ctx, tiled_mma_pv, v_state.index, wg_wait=-1)
        # the epilogue's V scales load under the last PV instead of after it
        self.load_v_scale(ctx)
        warpgroup.wait_group(0)
        pipeline_v.consumer_release(v_state)
        self.finish_pv(ctx, ctx.row_scale if const_expr(self.promote_under_qk) else ctx.row_scale_prev)
        return kv_state

    @cute.jit
    def load_v_scale(self, ctx: "BlockCtx"):
        """The per-channel V scale (and with smooth_v the V mean) of each O column this
        thread owns (numerics.md §4)."""
        _, col_in_block = self.position_here(ctx)
        for c in cutlass.range_constexpr(cute.size(ctx.v_scale)):
            ctx.v_scale[c] = Float32(ctx.mVScale[col_in_block + ctx.tOcO_mn[0, c][1]])
            if const_expr(self.smooth_v):
                ctx.v_mean[c] = Float32(ctx.mVMean[col_in_block + ctx.tOcO_mn[0, c][1]])

    @cute.jit
    def thread_position(self, tidx: Int32):
        """(first row this thread owns inside the tile (its other row is +8), first key
        column it owns inside a KV block), from its consumer thread index."""
        lane = tidx % 32
        row_in_tile = (tidx // self.num_threads_per_wg) * 64 + ((tidx // 32) % 4) * 16 + lane // 4
        return row_in_tile, 2 * (lane % 4)

    @cute.jit
    def position_here(self, ctx: "BlockCtx"):
        """``ctx``'s (row_in_tile, col_in_block); with three consumer warpgroups (160
        registers) recomputed here from the thread index, so they are not held through
        the tile (Note [Three consumer warpgroups])."""
        pos = (ctx.row_in_tile, ctx.col_in_block)
        if const_expr(self.num_consumer_wg > 2):
            pos = self.thread_position(recompute_here(cute.arch.thread_idx()[0]) - self.num_threads_per_wg)
        return pos

    @cute.jit
    def pingpong_init(self, wg_idx: Int32):
        """Consumer warpgroup 0 issues first (Note [ping-pong], FA3 §3.1)."""
        if const_expr(self.intra_wg_overlap and self.config.wg_pingpong):
            if wg_idx == 0:
                cute.arch.barrier_arrive(
                    barrier_id=int(NamedBarrier.WARP_SCHEDULER), number_of_threads=2 * self.num_threads_per_wg
                )

    @cute.jit
    def pingpong_sync(self, wg_idx: Int32):
        """Wait for this warpgroup's turn to issue GEMMs."""
        if const_expr(self.config.wg_pingpong):
            self.scheduler_barrier(wg_idx, 0, arrive=False)

    @cute.jit
    def pingpong_arrive(self, wg_idx: Int32):
        """Hand the GEMM issue turn to the next consumer warpgroup (round robin)."""
        if const_expr(self.config.wg_pingpong):
            self.scheduler_barrier(wg_idx, 1, arrive=True)

    @cute.jit
    def scheduler_barrier(self, wg_idx: Int32, shift: cutlass.Constexpr[int], arrive: cutlass.Constexpr[bool]):
        """Sync on / arrive at the ping-pong barrier of consumer warpgroup
        ``(wg_idx + shift) % num_consumer_wg``."""
        op = cute.arch.barrier_arrive if const_expr(arrive) else cute.arch.barrier
        n = self.num_consumer_wg
        if const_expr(n > 2):
            # immediate barrier ids behind warp-uniform branches: no id register live
            # through the mainloop (Note [Three consumer warpgroups])
            for w in cutlass.range_constexpr(n):
                if wg_idx == w:
                    op(barrier_id=int(NamedBarrier.WARP_SCHEDULER) + (w + shift) % n,
                       number_of_threads=2 * self.num_threads_per_wg)
        else:
            op(barrier_id=int(NamedBarrier.WARP_SCHEDULER) + ((wg_idx + shift) % n if const_expr(shift) else wg_idx),
               number_of_threads=2 * self.num_threads_per_wg)

    @cute.jit
    def overlap_step(
        self,
        ctx: "BlockCtx",
        k_state: pipeline.PipelineState,
        v_state: pipeline.PipelineState,
        n_block: Int32,
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        pipeline_k: pipeline.PipelineAsync,
        pipeline_v: pipeline.PipelineAsync,
        mask: cutlass.Constexpr[bool],
        pipeline_q: Optional[pipeline.PipelineAsync] = None,
        q_state: Optional[pipeline.PipelineState] = None,
    ):
        """One overlapped block; with ``pipeline_q`` this is the tile's last QK and
        sQ is released as soon as it retires."""
        scale = self.load_qk_scale(ctx, n_block)
        pipeline_k.consumer_wait(k_state)
        self.pingpong_sync(ctx.wg_idx)
        wgmma.gemm(tiled_mma_qk, ctx.acc_S, ctx.tSrQ, ctx.tSrK[None, None, None, k_state.index],
                   zero_init=True, wg_wait=-1)
        if const_expr(self.promote_under_qk):
            # fold PV(n-2) into O under QK(n), before PV(n-1) overwrites acc_O_parts
            self.finish_pv(ctx, ctx.row_scale_prev)
            ctx.row_scale_prev.store(ctx.row_scale.load())
        pipeline_v.consumer_wait(v_state)
        self.issue_pv(ctx, tiled_mma_pv, v_state.index, wg_wait=-1)
        self.pingpong_arrive(ctx.wg_idx)
        if const_expr(self.promote_first):
            # wait for PV(n-1) too and fold it into O before the softmax, so its fresh
            # accumulator and P are dead while the scores are live (Note [PV wait
            # hoisting]: ptxas puts the wait here anyway)
            warpgroup.wait_group(0)
        else:
            warpgroup.wait_group(1)  # QK(n) retired, PV(n-1) may still run
        self.add_delta_s(ctx, scale, k_state.index)
        self.release_k(pipeline_k, k_state)
        if const_expr(pipeline_q is not None):
            pipeline_q.consumer_release(q_state)
        if const_expr(self.promote_first):
            pipeline_v.consumer_release(v_state)
            self.finish_pv(ctx, ctx.row_scale_prev)
        self.softmax_step(ctx, scale, n_block, mask=mask)
        # Note [PV wait hoisting] (SASS, 4.8.1): ptxas moves this wait (WARPGROUP.DEPBAR.LE
        # gsb0, 0x0) up past all arithmetic, to just below the previous side-effecting
        # instruction (the K release above), so in SASS PV(n-1) overlaps only row 0's max
        # (d128 fp32+fp32: after 0-1 of 66 MUFU.EX2; d64: 2-6 and 20; fp32 mode: 29).
        # It is not a register-reuse effect: a fake read of P after the wait did not
        # stop it. pv_wait_fence (a never-executed shared store that depends on this
        # block's row sums) keeps the wait below every MUFU.EX2, but P(n) is then
        # converted before the wait and moved into P's registers after it (16 MOVs), and
        # it measured 4-8% slower (H100): the early wait is not what limits the kernel.
        if const_expr(self.config.pv_wait_fence):
            wgmma.fence_after([ctx.row_scale[0], ctx.row_scale[1]], ctx.seqlen_k)
        if const_expr(not self.promote_first):
            warpgroup.wait_group(0)  # PV(n-1) retired: its P registers and V stage are free
            pipeline_v.consumer_release(v_state)
            if const_expr(not self.promote_under_qk):
                self.finish_pv(ctx, ctx.row_scale_prev)
        self.convert_p(ctx)
        if const_expr(self.pv_accum == PvAccum.FP32):
            self.rescale_o(ctx.acc_O, ctx.row_scale)
        if const_expr(not self.promote_under_qk):
            ctx.row_scale_prev.store(ctx.row_scale.load())

    @cute.jit
    def apply_mask(self, s_mn: cute.Tensor, ctx: "BlockCtx", n_block: Int32):
        """Keys >= Lk, and (causal, top-left) keys after the query row, get -inf."""
        row_in_tile, col_in_block = self.position_here(ctx)
        # column c of this thread is col_in_block + (static column of thread 0)
        col_limit = ctx.seqlen_k - n_block * self.tile_n - col_in_block
        for r in cutlass.range_constexpr(cute.size(s_mn, mode=[0])):
            limit = col_limit
            if const_expr(self.is_causal):
                row = ctx.m_block * self.tile_m + row_in_tile + ctx.tScS_mn[r, 0][0]
                limit = cutlass.min(limit, row + 1 - n_block * self.tile_n - col_in_block)
            for c in cutlass.range_constexpr(cute.size(s_mn, mode=[1])):
                s_mn[r, c] = s_mn[r, c] if ctx.tScS_mn[r, c][1] < limit else -Float32.inf

    @cute.jit
    def finish_row_sum(self, acc_O: cute.Tensor, row_sum: cute.Tensor):
        """After the tile's last block: each row's whole softmax denominator in
        ``row_sum``, from the PV accumulator's row-sum columns (Note [Row sum on the
        tensor core]) or as the quad's sum of the per-thread partial sums."""
        acc_O_mn = wgmma.acc_mn_view(acc_O)
        for r in cutlass.range_constexpr(cute.size(row_sum)):
            if const_expr(self.rowsum_mma):
                row_sum[r] = acc_O_mn[r, cute.size(acc_O_mn, mode=[1]) - 1]
            else:
                row_sum[r] = cute.arch.warp_reduction_sum(row_sum[r], threads_in_group=4)

    # ============================================================ epilogue
    @cute.jit
    def epilogue(
        self,
        acc_O: cute.Tensor,  # O's D columns
        tOcO_mn: cute.Tensor,
        row_max: cute.Tensor,
        row_sum: cute.Tensor,  # whole row sums (finish_row_sum)
        v_scale: cute.Tensor,  # per owned O column (load_v_scale)
        v_mean: Optional[cute.Tensor],  # likewise, smooth_v only
        mO: cute.Tensor,
        mLSE: Optional[cute.Tensor],
        m_block: Int32,
        head: Int32,
        head_kv: Int32,
        batch: Int32,
        seqlen_q: Int32,
        quad_lane: Int32,  # lane % 4: the quad's lane 0 writes the LSE
        row_in_tile: Int32,
        col_in_block: Int32,
        sO: Optional[cute.Tensor],
        mO_tma: Optional[cute.Tensor],
        tma_atom_O: Optional[cute.CopyAtom],
        tiled_mma_o: cute.TiledMma,
        wg_idx: Int32,
        warp_in_wg: Int32,
    ):
        acc_O_mn = wgmma.acc_mn_view(acc_O)
        num_rows = cute.size(acc_O_mn, mode=[0])
        inv_d = cute.make_rmem_tensor((num_rows,), Float32)
        for r in cutlass.range_constexpr(num_rows):
            inv_d[r] = cute.arch.rcp_approx(row_sum[r])
        if const_expr(self.config.tma_o_store):
            self.store_o_tma(acc_O, inv_d, v_scale, v_mean, sO, mO_tma, tma_atom_O, tiled_mma_o,
                             m_block, head, batch, wg_idx, warp_in_wg)
        mO_cur = mO[None, None, head, batch]  # (Lq, D)
        for r in cutlass.range_constexpr(num_rows):
            row = m_block * self.tile_m + row_in_tile + tOcO_mn[r, 0][0]
            if row < seqlen_q:
                if const_expr(not self.config.tma_o_store):
                    self.store_o_row(acc_O_mn, inv_d, v_scale, v_mean, mO_cur, tOcO_mn, r, row, col_in_block)
                if const_expr(self.has_lse):
                    if quad_lane == 0:
                        # natural-log LSE of the smoothed scores: (m + log2 d) * ln2
                        lse = (row_max[r] + cute.math.log2(row_sum[r], fastmath=True)) * Float32(math.log(2.0))
                        mLSE[batch, head, row] = lse

    @cute.jit
    def normalized_o(self, acc_O_mn, inv_d, v_scale, v_mean, r: cutlass.Constexpr[int], c: cutlass.Constexpr[int]):
        """O[r, c] / rowsum * v_scale[c] (+ v_mean[c] with smooth_v), in fp32."""
        o = acc_O_mn[r, c] * inv_d[r] * v_scale[c]
        if const_expr(self.smooth_v):
            o = o + v_mean[c]
        return o

    @cute.jit
    def store_o_row(self, acc_O_mn, inv_d, v_scale, v_mean, mO_cur, tOcO_mn, r: cutlass.Constexpr[int], row: Int32,
                    col_in_block: Int32):
        """Without TMA (o's strides not 16-byte multiples): this thread's columns of
        row ``r`` straight from registers."""
        num_cols = cute.size(acc_O_mn, mode=[1])
        if const_expr(self.config.vec_o_store):
            # columns c, c+1 of the fragment are adjacent in memory: one 32-bit
            # store per pair (launch.py checks o's strides are even)
            pair = cute.make_rmem_tensor((2,), self.out_dtype)
            for c in cutlass.range_constexpr(0, num_cols, 2):
                pair[0] = self.normalized_o(acc_O_mn, inv_d, v_scale, v_mean, r, c).to(self.out_dtype)
                pair[1] = self.normalized_o(acc_O_mn, inv_d, v_scale, v_mean, r, c + 1).to(self.out_dtype)
                col = col_in_block + tOcO_mn[r, c][1]
                elem = mO_cur.iterator + cute.crd2idx((row, col), mO_cur.layout)
                dst = cute.make_tensor(
                    cute.make_ptr(self.out_dtype, elem.toint(), cute.AddressSpace.gmem, assumed_align=4),
                    cute.make_layout(2),
                )
                dst.store(pair.load())
        else:
            for c in cutlass.range_constexpr(num_cols):
                val = self.normalized_o(acc_O_mn, inv_d, v_scale, v_mean, r, c).to(self.out_dtype)
                mO_cur[row, col_in_block + tOcO_mn[r, c][1]] = val

    @cute.jit
    def store_o_tma(
        self,
        acc_O: cute.Tensor,
        inv_d: cute.Tensor,
        v_scale: cute.Tensor,
        v_mean: Optional[cute.Tensor],
        sO: cute.Tensor,
        mO_tma: cute.Tensor,
        tma_atom_O: cute.CopyAtom,
        tiled_mma_o: cute.TiledMma,
        m_block: Int32,
        head: Int32,
        batch: Int32,
        wg_idx: Int32,
        warp_in_wg: Int32,
    ):
        """This warpgroup's 64 rows of O, normalized, to gmem (Note [TMA O store])."""
        acc_O_mn = wgmma.acc_mn_view(acc_O)
        for r in cutlass.range_constexpr(cute.size(acc_O_mn, mode=[0])):
            for c in cutlass.range_constexpr(cute.size(acc_O_mn, mode=[1])):
                acc_O_mn[r, c] = self.normalized_o(acc_O_mn, inv_d, v_scale, v_mean, r, c)
        rO = cute.make_rmem_tensor(acc_O.layout, self.out_dtype)
        rO.store(acc_O.load().to(self.out_dtype))
        barrier_id = int(NamedBarrier.EPILOGUE) + wg_idx
        if warp_in_wg == 0:
            cute.arch.cp_async_bulk_wait_group(0, read=True)  # the previous tile's store
        cute.arch.barrier(barrier_id=barrier_id, number_of_threads=self.num_threads_per_wg)
        sO_wg = sO[None, None, wg_idx]
        store_atom = cute.make_copy_atom(StMatrix8x8x16bOp(False, 4), self.out_dtype)
        thr_copy = cute.make_tiled_copy_C(store_atom, tiled_mma_o).get_slice(
            cute.arch.thread_idx()[0] % self.num_threads_per_wg
        )
        cute.copy(store_atom, thr_copy.retile(rO), thr_copy.partition_D(sO_wg))
        # the TMA engine (async proxy) reads what stmatrix (generic proxy) wrote
        cute.arch.fence_proxy("async.shared", space="cta")
        cute.arch.barrier(barrier_id=barrier_id, number_of_threads=self.num_threads_per_wg)
        if warp_in_wg == 0:
            gO = cute.local_tile(mO_tma[None, None, head, batch], (64, self.head_dim),
                                 (m_block * self.num_consumer_wg + wg_idx, 0))
            tOsO, tOgO = cpasync.tma_partition(
                tma_atom_O, 0, cute.make_layout(1), cute.group_modes(sO_wg, 0, 2), cute.group_modes(gO, 0, 2)
            )
            cute.copy(tma_atom_O, tOsO, tOgO)
            cute.arch.cp_async_bulk_commit_group()
