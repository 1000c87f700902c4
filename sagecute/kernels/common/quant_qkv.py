"""Q, K and V preprocessing of one attention call in ONE launch.

Replaces the four launches of the standalone quantizers (Q int8, K mean, K int8,
V fp8) on the sm90 path. 128 threads per CTA (256 for K/V sub-splits: Note
[Sub-splits]), grid ``(2 C + ceil(nq / C) C, Hq, B)``
in clusters of ``C`` CTAs along x (``C`` = ``splits``: 8, or 16 from ``Lk >= 8192``
on, 4096 at head_dim 64: ``splits_for``, Note [Split count]); x picks the CTA's role:

  ``[0, C)``    K split ``s``: 128-token blocks ``s, s + C, ...`` of one (batch, kv head)
  ``[C, 2C)``   V split ``s``: the same blocks of V
  ``[2C, ..)``  Q: block ``x - 2C`` of one (batch, q head), as ``QuantizeInt8``

K/V clusters of heads >= Hkv (GQA) leave at once; a cluster's CTAs always take the
same branch, so no cluster barrier waits on a CTA that left.

K (Note [Split K mean]): pass 1 loads the split's blocks (``QuantizeInt8.load_rows``)
and sums their columns; pass 2 quantizes them in reverse order, so the block loaded
last is still in registers and earlier ones are re-read, most recently read first
(L2); one more block per split can wait in smem (Note [Stashed blocks]). K is read
once when ``Lk <= (stash + 1) * C * 128`` and at most twice beyond. With ``ring`` R
(``ring_for``) the blocks come through R smem slots filled by ``cp.async`` instead,
R of them in flight at once, and the last R stay there for pass 2 (Note [Block ring]).

V: pass 1 takes per-channel amax over the split's blocks
(``QuantizeVFp8.load_group``), the splits' maxima meet through distributed shared
memory like K's sums (max is exact in any order), then pass 2 quantizes in reverse
order (``QuantizeVFp8.store_group``; at head_dim 64 two lanes share each 16-token
group, Note [Half groups]). Same read counts as K.

Note [Stashed blocks]
--------------------
Pass 2 needs every block of the split again. The last one is still in registers; up to
``stash`` earlier ones are copied to shared memory in pass 1 (each thread its own 16-byte
vectors, so no barrier) and read back from there, and only the rest is re-read from
global memory (mostly DRAM: the K/V of the CTAs in flight is larger than L2). A slot is
128 threads x ``stash_rows`` vectors of 16 bytes: 32 KB at head_dim 128, 16 KB at 64
(8 rows per thread for K, and for V since Note [Half groups]). One slot keeps 4 CTAs
per SM (as many as the registers allow); 3 slots leave 2, too few loads in flight.
H100, B4 H32 bf16 K/V (perf/prep_bandwidth.py; D64 before Note [Half groups]): D128
L8k 406 -> 367 us with 1 slot (387 with 3), L16k 858 -> 818; D64 L8k 199 -> 186, L16k
440 -> 414.

Note [Half groups]
------------------
V's items: thread ``tid`` takes tokens ``(tid // vecs_per_row) * v_rows ..`` of a
block, channel vector ``tid % vecs_per_row``. At head_dim 128 that is a whole 16-token
group (16 vector loads), and ``QuantizeVFp8.store_group`` writes it: one 16-byte store
per channel. At head_dim 64 whole groups would leave half the CTA idle, so a thread
takes half of one (``part`` = bit 3 of ``tid``: 8 tokens, 8 loads) and lanes ``tid``
and ``tid ^ 8`` write the group together (``store_half_group``). Word ``w`` of a
channel's group holds tokens ``(2w, 2w + 1, 2w + 8, 2w + 9)`` (Note [V token
permutation] in ``quant_layout.py``): its low 16 bits come from part 0, its high 16
from part 1. Each lane converts its 8 channels x 4 token pairs exactly as
``store_group`` does (same products, same ``cvt``), channels ``c`` and ``c + 4`` in one
word; a ``prmt`` per two words picks the pairs of the channels the partner stores
(part 0 stores channels 0-3, part 1 channels 4-7), 8 ``shfl.bfly`` swap them, and a
``prmt`` per output word joins its own and the received pair. The byte selectors depend
only on ``part`` (registers), so no lane selects data. A warp's loads still read whole
128-byte rows, its stores 32 contiguous bytes (two groups) of 16 rows; the lanes of a
channel vector still differ only in the bits ``reduce_columns`` reduces over.

Note [Block ring]
----------------
With ``ring`` R > 0 a K/V split's blocks reach registers through shared memory instead
of straight loads: each thread ``cp.async``-copies its own 16-byte vectors of a block
into its part of one of R slots (the stash's layout), so no barrier guards a slot, only
the thread's own ``cp.async.wait_group R - 1``; every step commits exactly one group
(empty where there is nothing to copy), so "the block needed now" is always the group
R - 1 steps back. Pass 1 starts with blocks 0 .. R-1 in flight and refills block
``i``'s slot with block ``i + R`` once it has reduced ``i``, so the R - 1 blocks after
the one being reduced are on their way, at no register cost. The last R blocks stay in their
slots for pass 2 (the last one also in registers); pass 2 refills the slot it has just
quantized with the next block to re-read (``b - R`` after ``b``), and the first re-read
goes out while the cluster exchanges its statistics (``gather_splits``'s
``while_waiting``, after the releasing arrive: that one waits for the thread's
outstanding memory accesses). Every slot is rewritten only after the values read from
it were used, so the ``ld.shared`` has completed. The K stream without a mean runs
pass 1's loop with quantization as its body. Values are those of the register path.

Note [Short sequences]
----------------------
With one block per split (``Lk <= C * 128``: L1k, L2k) a K/V CTA is one latency chain
(load, reduce, cluster exchange, quantize, store), and the H200 stays at ~66% of its
1 GB copy rate (70% at D64). Part of that is the size: a plain copy of the same 100 MB
reaches 87% of it. Tried and not kept (H200, B4 H32, perf/results/2026-12-03b_h200_headloop/):
a cluster taking G (batch, head) pairs in turn with the next pair's block 0
``cp.async``-prefetched into a smem slot during this one's exchange and stores. D128
L1k 35.8 us -> 37.8 / 39.1 / 42.2 with G = 2 / 3 / 4, D64 16.5 -> 20.1-21.8, L2k no
better. At 4 CTAs per SM at most 62 clusters of 8 are resident (ncu): G = 4's 64
clusters need a second wave, and every G trades the hardware's fine-grained refill of
finished CTAs for coarser units, so the tail grows more than the prefetch hides. A
prefetch issued before the exchange's releasing arrive is also waited for there (as in
Note [Block ring]). Also tried (perf/results/2026-12-04_h200_fastcall/, best of 3
interleaved runs, each against the shipped plan in the same process; the extra split,
ring and warpgroup counts were allowed for the measurement only): fewer splits with
every block in a deeper ring, so less waits in lockstep, D128 L1k 35.5 us -> 36.1 (4
splits, ring 2), 43.5 (2, ring 4); D64 L1k 16.6 -> 18.5 (4, ring 2), 21.4 (2, ring 4),
26.2 (1 split, ring 8: no exchange at all, but 4 warps per SM); D128 L2k 61.8 -> 69.0
(4, ring 2), 82.0 (4, ring 4). Larger CTAs, the statistics meeting in the CTA instead
of the cluster (Note [Sub-splits] with the same 8 blocks per (batch, head)): D128 L1k
35.3 -> 36.9 (4 splits x 2 warpgroups; 32.0 even with no clusters at all), 40.6 (2 x
4); D64 L1k 16.3 -> 17.4, 20.6. More CTAs per SM (``min_blocks_per_mp`` 5, 6, 8 at D128;
6, 8, 12 at D64): equal at 5 and 6, then slower (spills). So the finest grain, one
128-thread CTA per block, stays the fastest, and what is left is the lockstep itself.

Note [Split count]
------------------
16 splits give each CTA half the blocks of 8, so pass 2's re-reads are more recent
and hit L2 more often; but 16 CTAs wait in one cluster for the slowest of them, and
below 64 blocks (D128) or 32 (D64) per (batch, head) that lockstep costs more than the
re-reads save. H200, B4 H32 bf16 K/V, best of 3 interleaved runs (perf/prep_bandwidth.py
--repeat, perf/results/2026-12-03c_h200_splits/prep_splits_ab.txt; "16s1": 16 splits,
a stashed block; a ring where ``ring_for`` gives one): D128 L2k 8s1 63.0 us, 16s0
70.6, 16s1 70.5; D128 L4k 8 splits (ring 2) 120.8, 16s1 121.2; D64 L2k 8s1 35.9,
16s1 38.7; D64 L4k 8s1 67.2, 16s1 64.1, so D64 keeps 16 there. D128 L8k, single
runs (an earlier process, output not kept): 16 splits (ring 2) 234.9, 8 with a stash
and sub-splits 250.0. The same
configuration varies by up to 5% from one process to the next (prep_auto.txt: D128
L2k 65.7). What the exchange costs at all, timed with ``DIAGNOSTIC`` (wrong results:
each split its own statistics, or no clusters; prep_diag.txt): D128 L1k 35.5 us as
shipped, 30.8 without the exchange, 29.6 without clusters; D128 L2k 63.3, 58.8, 58.2;
D64 L1k 16.7, 14.2, 13.1; D64 L2k 35.7, 31.3, 29.3. So even with no synchronisation
D128 L1k reaches only 80% of the 1 GB copy (a copy of its own 100 MB: 87%), and the
exchange plus the cluster launch are 10-20% of the time at 1-2 blocks per split.

Note [V mean]
-------------
With ``smooth_v`` V is quantized minus its per-channel sequence mean (fp32, ``sum /
Lk`` in ``div.rn``, the splits' sums added in rank order as K's), and the attention
kernel adds the mean back to O (softmax rows sum to 1). The scale needs ``max |v -
mean|`` before the mean is known, so pass 1 keeps three statistics per channel, the
sum, the max and the negated min of the true tokens (padding reads as 0 and must not
count), which meet over the cluster in one exchange; then ``max |v - mean| = max(max
- mean, mean - min)``, equal in fp32 to the reference's ``amax(|v - mean|)`` because
rounding is monotonic and odd. Pass 2 quantizes ``(v - mean) * inv`` and writes 0
for the padding, as the reference pads after quantizing. Payloads and scales equal
``reference.quantize_v_fp8(v, mean=v_mean)`` given the kernel's ``v_mean``; the mean
itself may differ from torch's ``v.float().mean`` in the last place (summation order).

Numerics: Note [Bit-exact quantizer arithmetic] in ``quant_math.py``; payloads and
scales equal the standalone kernels' (and the reference's) given the same mean.
CUDA cores and cluster barriers only: compiles for sm_90a, sm_100a and sm_120a.

Note [L2 cache operators]
-------------------------
Pass 2 re-reads most of a split's blocks (all but the one in registers and the stashed
one), and at L8k the re-reads missed L2 often enough that DRAM moved 1.0 GB for the
805 MB counted (ncu, H200: DRAM 78% busy, L2 hit rate 30%). The K/V CTAs in flight
hold more than L2 between their passes, so the hints decide which lines stay:
``el`` loads the blocks pass 2 will re-read with an L2 evict-last policy
(``createpolicy`` + ``.L2::cache_hint``), ``p1`` loads the blocks read only once with
``.cs`` (evict first), ``rr`` re-reads with ``.lu`` (last use) and ``st`` writes the
int8/fp8 output with ``.cs`` (the attention reads it much later). H200, B4 H32 D128
(``perf/results/2026-12-02_h200_hints/``): L8k 265 -> 248 us (71% -> 76% of copy),
L16k 584 -> 573, L1k unchanged (one block per split: nothing re-read); D64 L8k 128 ->
125. Cache operators change no value.

Note [Sub-splits]
-----------------
From L16k on (8 blocks per split) 6 of a split's 8 blocks were re-read in pass 2, and
the CTAs in flight held ~135 MB between their passes, more than L2: DRAM moved ~2.4 GB
for the 1.6 GB counted. With ``warpgroups`` 2 a K/V CTA has 256 threads and each
warpgroup is a split of its own (``sub = rank * 2 + wg``, blocks ``sub, sub + 2C,
...``): its own block scratch, stash slot and named barrier (``warpgroup_sync``: the
two block loops run different counts), while the column statistics still meet once
per CTA (``reduce_columns`` over 8 warps) and once per cluster. Same registers per
SM (2 CTAs of 256 at the 128 cap), half the blocks per split, and a head's data
spread over twice the threads, so half as many heads hold data between their
passes. H200, B4 H32 bf16 (perf/results/2026-12-02_h200_smoothq_fix/prep_subsplits.txt,
same run): D128 L16k 569 -> 510 us (67% -> 74% of copy), D64 L16k 283 -> 246 (67% ->
77%); L8k unchanged (250 / 247 us), L4k slower (122 -> 142), L1k much slower (one block
per split: half the warpgroups idle), hence the threshold. Values as with one
warpgroup (every preprocessing GPU test passes with sub-splits from 2 blocks per
split on); the K mean's fp32 sum runs in another order, which can move it by one ulp
(Note [Split K mean]). Not with smooth_v (~140 registers) or the Q role.

Note [delta_s in the K pass]
----------------------------
``smooth_q`` on sm90 (Note [smooth_q on sm90] in kernels/sm90/attn_fwd.py) needs, per
key ``j`` and q head ``h``, ``delta_s = qm_h . (k_j - km)`` with ``qm_h`` Q's sequence
mean (a ``KMean`` launch before this one) and ``km`` the K mean this kernel computes.
Pass 2 has ``k_j - km`` at hand for the rows it quantizes: each thread takes the dot
product over its 8 channels for each of the kv head's q heads, a butterfly over the
row's lanes adds the parts (fixed order: deterministic), and one lane stores it into
``delta`` [B, Hq, Lk padded to 128] (padding keys too: the attention masks them).
fp32 throughout; it differs from ``reference.smooth_q_delta_s`` (a torch matmul) only
in summation order.

Note [Split K mean]
-------------------
Each split sums its rows in fp32 (per thread in row order, then a butterfly over
the lanes sharing a channel, then the 4 warps in order) into smem. After a
cluster barrier every CTA of the (batch, head) adds the C split sums in rank
order through DSMEM, so all CTAs, and all runs, get the same bits; ``mean = sum /
Lk`` (``div.rn``) rounded to K's dtype is both what the quantizer subtracts and
what rank 0 stores as ``k_mean`` for the LSE correction. The sum order differs from
torch's ``k.mean`` (Note [K mean summation order] in ``quant_kmean.py``): the mean
may differ from the reference by one unit in the last place, which changes no
result beyond that (any per-head constant is an exact smoothing).
"""

from __future__ import annotations

import functools
from typing import Optional, Type

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, const_expr
from cutlass.cutlass_dsl import Numeric

from ...quant_layout import QuantGeometry, QuantGranularity
from .quant_fp8 import GROUP, NUM_THREADS, NUM_WARPS, VEC, QuantizeVFp8, channel_inv
from .quant_int8 import QuantizeInt8
from .quant_math import (
    cp_async_16b, div_rn, gmem_load, gmem_store, gmem_vec, ld_shared_cluster_f32, pack_e4m3x4, prmt, warp_max_bfly,
    warp_sum_bfly,
    widen_row,
)

SPLIT_CHOICES = (8, 16)  # K/V splits per (batch, head) = cluster size; 16 is non-portable


STASH_CHOICES = (0, 1)  # blocks a split keeps in smem between its passes (Note [Stashed blocks])

RING_CHOICES = (0, 2, 3, 4)  # cp.async slots per K/V (sub-)split, 0: loads into registers (Note [Block ring])

# warpgroups per K/V CTA, each a sub-split of its own (Note [Sub-splits])
WARPGROUP_CHOICES = (1, 2)

# Note [L2 cache operators]: "+"-joined subset of "st", "rr", "p1", "el"; read when a
# QuantizeQKV is built (perf/prep_bandwidth.py --hints overrides it)
CACHE_HINTS = "st+rr+p1+el"

# perf/prep_bandwidth.py --diag only, results WRONG: "noexchange" skips the cluster
# exchange (each split uses its own statistics), "nocluster" also launches without
# clusters; what the exchange and the cluster launch cost. "": as shipped. Read, like
# CACHE_HINTS, when a QuantizeQKV is built and part of the compile cache's key
DIAGNOSTIC = ""


# 16 splits (smaller chunks per CTA, so pass 2's re-reads more often hit L2) from this
# many blocks per (batch, head) on, per head_dim, else 8 (Note [Split count])
SIXTEEN_SPLITS_MIN_BLOCKS = {128: 64, 64: 32}


def splits_for(seqlen_k: int, head_dim: int = 128, blk: int = 128) -> int:
    """K/V splits for ``seqlen_k`` (Note [Split count])."""
    return 16 if -(-seqlen_k // blk) >= SIXTEEN_SPLITS_MIN_BLOCKS[head_dim] else 8


def stash_for(seqlen_k: int, splits: int, blk: int = 128, warpgroups: int = 1) -> int:
    """Note [Stashed blocks]: smem slots for a (sub-)split's blocks besides the last one."""
    n_blocks = -(-seqlen_k // blk)
    blocks_per_split = -(-n_blocks // (splits * warpgroups))
    return max(c for c in STASH_CHOICES if c <= max(blocks_per_split - 1, 0))


# Note [Sub-splits]: from this many blocks per split on (L16k with 16 splits), a K/V
# CTA takes two warpgroups (0: never)
SUB_SPLIT_MIN_BLOCKS = 8


def ring_for(seqlen_k: int, head_dim: int, splits: int, blk: int = 128) -> int:
    """Note [Block ring]: cp.async slots per K/V split (0: the register path), where
    the H200 measured a gain: head_dim 128 with 3 to 7 blocks per split (2 slots: 3
    CTAs per SM), head_dim 64 from 8 on (4 slots, instead of sub-splits)."""
    n_blocks = -(-seqlen_k // blk)
    blocks_per_split = -(-n_blocks // splits)
    if head_dim == 128:
        return 2 if 3 <= blocks_per_split < SUB_SPLIT_MIN_BLOCKS else 0
    return 4 if blocks_per_split >= SUB_SPLIT_MIN_BLOCKS else 0


def warpgroups_for(seqlen_k: int, splits: int, blk: int = 128) -> int:
    """Note [Sub-splits]: warpgroups per K/V CTA for ``seqlen_k``."""
    n_blocks = -(-seqlen_k // blk)
    blocks_per_split = -(-n_blocks // splits)
    return 2 if SUB_SPLIT_MIN_BLOCKS and blocks_per_split >= SUB_SPLIT_MIN_BLOCKS else 1


class QuantizeQKV:
    """Q int8, K (smoothed) int8 and V fp8 for one (dtype, head_dim, granularity,
    smooth_k, geometry) in one launch."""

    def __init__(
        self,
        dtype: Type[Numeric],
        head_dim: int,
        gran: QuantGranularity,
        smooth_k: bool,
        geom: QuantGeometry,
        splits: int = SPLIT_CHOICES[0],
        with_q: bool = True,
        stash: int = 0,
        smooth_v: bool = False,
        cache_hints: Optional[str] = None,
        smooth_q: bool = False,
        warpgroups: int = 1,
        ring: int = 0,
        diagnostic: Optional[str] = None,
    ):
        if (not self.can_implement(dtype, head_dim, geom) or splits not in SPLIT_CHOICES or stash not in STASH_CHOICES
                or warpgroups not in WARPGROUP_CHOICES or (with_q and warpgroups > 1) or ring not in RING_CHOICES
                or (ring and stash)):
            raise ValueError(f"unsupported fused QKV quantizer config: {dtype}, head_dim={head_dim}, {geom}, "
                             f"splits={splits}, stash={stash}, warpgroups={warpgroups}, with_q={with_q}, ring={ring}")
        # Note [Block ring]: K/V blocks through R cp.async slots (0: straight loads)
        self.ring = ring
        # Note [Sub-splits]: each warpgroup of a K/V CTA is a split of its own
        self.warpgroups = warpgroups
        self.sub_splits = splits * warpgroups
        self.num_threads = NUM_THREADS * warpgroups
        self.dtype = dtype
        self.head_dim = head_dim
        self.smooth_k = smooth_k
        # Note [V mean]: V minus its per-channel sequence mean, which the attention
        # kernel adds back to O
        self.smooth_v = smooth_v
        self.splits = splits
        # Note [delta_s in the K pass]: with smooth_q, pass 2 also writes each key's
        # qm . (k - km) for every q head of the kv head
        self.smooth_q = smooth_q
        if smooth_q and with_q:
            raise ValueError("smooth_q: K and V only (the attention kernel quantizes Q minus its mean)")
        # D128 K/V: cap at 128 registers for 4 CTAs per SM (ptxas would take 130, i.e. 3
        # per SM; spill-free at 128, H200 L1k 39.9 -> 35.6 us). smooth_v needs ~140 and
        # D64 fits anyway: no cap (0)
        self.min_ctas_per_sm = 4 // warpgroups if head_dim == 128 and not smooth_v else 0
        # False: K and V only (the attention kernel quantizes Q itself, Note [Fused Q
        # quantization] in kernels/sm90/attn_fwd.py); the grid then has Hkv rows
        self.with_q = with_q
        self.blk = geom.blk_k
        self.q_quant = QuantizeInt8(dtype, head_dim, gran, False, False, geom)
        self.k_quant = QuantizeInt8(dtype, head_dim, gran, True, smooth_k, geom)
        self.v_quant = QuantizeVFp8(dtype, head_dim, geom)
        self.vecs_per_row = head_dim // VEC
        self.groups_per_block = self.blk // GROUP
        # V: tokens per thread of a block, a 16-token group or half of one (Note [Half groups])
        self.v_rows = self.blk * self.vecs_per_row // NUM_THREADS
        # Note [Half groups]: the partners' exchange assumes word w = tokens (2w, 2w+1, 2w+8, 2w+9)
        assert self.v_quant.perm_words == [(2 * w, 2 * w + 1, 2 * w + 8, 2 * w + 9) for w in range(GROUP // 4)]
        # Note [Stashed blocks]: slots of (VEC, stash_rows) vectors per thread
        self.stash = stash
        self.stash_rows = max(self.k_quant.rows_per_thread, self.v_rows)
        # smem slots of that shape: the stash's or the ring's
        self.slots = ring or stash
        if ring and head_dim == 128:
            # the ring's smem, not registers, bounds the CTAs per SM: let ptxas use what they leave
            self.min_ctas_per_sm = max(1, min(4, (227 * 1024) // (self.smem_bytes() + 1024)))
        hints = set((CACHE_HINTS if cache_hints is None else cache_hints).split("+")) - {""}
        if hints - {"st", "rr", "p1", "el"}:
            raise ValueError(f"unknown cache hints {hints}")
        self.store_cop = "cs" if "st" in hints else None
        self.reread_cop = "lu" if "rr" in hints else None
        # p1 / el load pass 1's blocks through two branches (read once or re-read): only
        # with a stashed block, where a split has several blocks; without one the D128
        # K/V kernel spills at its 128-register cap, and smooth_v grows by ~30 registers
        per_block = stash > 0 and not smooth_v
        self.once_cop = "cs" if "p1" in hints and per_block else None
        self.keep_cop = "evict_last" if "el" in hints and per_block else None
        # Note [Block ring]: the ring's copies take an L2 policy, not a cache operator
        self.ring_once_policy = "evict_first" if hints & {"p1", "rr"} else None
        self.ring_keep_policy = "evict_last" if "el" in hints else None
        diagnostic = DIAGNOSTIC if diagnostic is None else diagnostic
        if diagnostic not in ("", "noexchange", "nocluster"):
            raise ValueError(f"unknown diagnostic {diagnostic!r}")
        self.exchange = not diagnostic
        self.cluster = [1, 1, 1] if diagnostic == "nocluster" else [splits, 1, 1]

    @staticmethod
    def can_implement(dtype, head_dim: int, geom: QuantGeometry) -> bool:
        # one 128-row block per CTA of 128 threads for Q and K; V's items of a block, one
        # per thread, are whole 16-token groups or halves (Note [Half groups])
        return (
            dtype in (cutlass.BFloat16, cutlass.Float16)
            and head_dim in (64, 128)
            and geom.blk_q == geom.blk_k == NUM_THREADS
            and geom.blk_k * (head_dim // VEC) // NUM_THREADS in (GROUP // 2, GROUP)
        )

    # ============================================================ host
    @cute.jit
    def __call__(
        self,
        mQ: Optional[cute.Tensor],  # dtype (B, Hq, Lq, D), strides divisible by 8, unit last stride
        mK: cute.Tensor,  # dtype (B, Hkv, Lk, D), likewise
        mV: cute.Tensor,  # dtype (B, Hkv, Lk, D), likewise
        mQ8: Optional[cute.Tensor],  # int8 (B, Hq, Lq, D) contiguous (None: with_q False)
        mQs: Optional[cute.Tensor],  # fp32 (B, Hq, nq) contiguous
        mK8: cute.Tensor,  # int8 (B, Hkv, Lk, D) contiguous
        mKs: cute.Tensor,  # fp32 (B, Hkv, nk) contiguous
        mKm: Optional[cute.Tensor],  # dtype (B, Hkv, 1, D) contiguous, smooth_k only
        mV8: cute.Tensor,  # uint8 view of e4m3 (B, Hkv, D, Lpad) contiguous
        mVs: cute.Tensor,  # fp32 (B, Hkv, D) contiguous
        mVm: Optional[cute.Tensor],  # fp32 (B, Hkv, D) contiguous, smooth_v only
        mQm: Optional[cute.Tensor],  # dtype (B, Hq, 1, D) contiguous: Q's mean, smooth_q only
        mDelta: Optional[cute.Tensor],  # fp32 (B, Hq, Lk padded to blk) contiguous, smooth_q only
        scale_max: Float32,
        stream: cuda.CUstream,
    ):
        q_ctas, heads = 0, mK.shape[1]
        if const_expr(self.with_q):
            q_blocks = (mQ.shape[2] + self.blk - 1) // self.blk
            q_ctas, heads = (q_blocks + self.splits - 1) // self.splits * self.splits, mQ.shape[1]
        self.kernel(mQ, mK, mV, mQ8, mQs, mK8, mKs, mKm, mV8, mVs, mVm, mQm, mDelta, scale_max).launch(
            grid=[2 * self.splits + q_ctas, heads, mK.shape[0]],
            block=[self.num_threads, 1, 1],
            cluster=self.cluster,
            smem=self.smem_bytes(),
            stream=stream,
            min_blocks_per_mp=self.min_ctas_per_sm,
            # with a CTA count the DSL asks the driver for the SM's smem unless a carveout
            # is given (no GPU at compile time): -1, the driver's default
            preferred_smem_carveout=-1 if const_expr(self.min_ctas_per_sm) else None,
        )

    def num_stats(self) -> int:
        """Per-channel statistics a split reduces: K's sum, V's amax; with smooth_v, V's
        sum, max and negated min (Note [V mean])."""
        return 3 if self.smooth_v else 1

    def smem_bytes(self) -> int:
        d, n, w = self.head_dim, self.num_stats(), self.warpgroups
        stash = w * self.slots * NUM_THREADS * self.stash_rows * VEC * self.dtype.width // 8
        mean = d * self.dtype.width // 8
        return w * 3 * self.blk * 4 + d * w * NUM_WARPS * 4 * n + (n + 2) * d * 4 + mean + 6 * 16 + stash + 16

    # ============================================================ device
    @cute.kernel
    def kernel(
        self,
        mQ: Optional[cute.Tensor],
        mK: cute.Tensor,
        mV: cute.Tensor,
        mQ8: Optional[cute.Tensor],
        mQs: Optional[cute.Tensor],
        mK8: cute.Tensor,
        mKs: cute.Tensor,
        mKm: Optional[cute.Tensor],
        mV8: cute.Tensor,
        mVs: cute.Tensor,
        mVm: Optional[cute.Tensor],
        mQm: Optional[cute.Tensor],
        mDelta: Optional[cute.Tensor],
        scale_max: Float32,
    ):
        # the attention kernel after this one may launch now (Note [PDL after the
        # preprocessing] in kernels/sm90/attn_fwd.py); it waits for our writes anyway
        cute.arch.griddepcontrol_launch_dependents()
        tid, _, _ = cute.arch.thread_idx()
        x, head, batch = cute.arch.block_idx()
        smem = cutlass.memory.SmemAllocator()
        # Note [Sub-splits]: per warpgroup, its thread index ``t`` and its own block
        # scratch and stash slot (one warpgroup: the CTA's, as before)
        wg = tid // NUM_THREADS if const_expr(self.warpgroups > 1) else 0
        t = tid % NUM_THREADS if const_expr(self.warpgroups > 1) else tid
        s_block = self.k_quant.allocate_smem(smem, self.warpgroups)  # the int8 quantizers' block scratch
        if const_expr(self.warpgroups > 1):
            s_block = tuple(part[None, wg] for part in s_block)
        n_stats = self.num_stats()
        s_warp = smem.allocate_tensor(
            Float32, cute.make_layout((self.head_dim, NUM_WARPS * self.warpgroups, n_stats)), byte_alignment=16
        )
        s_split = smem.allocate_tensor(Float32, cute.make_layout((self.head_dim, n_stats)), byte_alignment=16)
        # V: each channel's inv (and with smooth_v its mean), for pass 2
        s_chan = smem.allocate_tensor(Float32, cute.make_layout((self.head_dim, 2)), byte_alignment=16)
        s_mean = smem.allocate_tensor(self.dtype, cute.make_layout(self.head_dim), byte_alignment=16)
        s_stash = None
        if const_expr(self.slots > 0):
            # (vector element, row, thread, slot[, warpgroup]): a thread's 16-byte vectors,
            # warps contiguous
            rows, slot = self.stash_rows, NUM_THREADS * self.stash_rows * VEC
            shape, stride = (VEC, rows, NUM_THREADS, self.slots), (1, NUM_THREADS * VEC, VEC, slot)
            if const_expr(self.warpgroups > 1):
                shape, stride = shape + (self.warpgroups,), stride + (slot * self.slots,)
            s_stash = smem.allocate_tensor(self.dtype, cute.make_layout(shape, stride=stride), byte_alignment=16)
            if const_expr(self.warpgroups > 1):
                s_stash = s_stash[None, None, None, None, wg]

        role = x // self.splits
        split = x % self.splits
        sub = split * self.warpgroups + wg  # this warpgroup's (sub-)split
        if role == 0:
            if head < mK.shape[1]:
                self.k_split(mK, mK8, mKs, mKm, mQm, mDelta, batch, head, split, sub, tid, t, wg, s_block, s_warp,
                             s_split, s_mean, s_stash)
        elif role == 1:
            if head < mV.shape[1]:
                self.v_split(mV, mV8, mVs, mVm, scale_max, batch, head, split, sub, tid, t, s_warp, s_split, s_chan,
                             s_stash)
        else:
            if const_expr(self.with_q):
                self.q_block(mQ, mQ8, mQs, batch, head, x - 2 * self.splits, tid, s_block)

    @cute.jit
    def q_block(self, mQ: cute.Tensor, mQ8: cute.Tensor, mQs: cute.Tensor, batch, head, blk_idx, tid, s_block):
        if blk_idx * self.blk < mQ.shape[2]:
            base = Int64(batch) * Int64(mQ.stride[0]) + Int64(head) * Int64(mQ.stride[1])
            rX = cute.make_rmem_tensor(cute.make_layout((VEC, self.q_quant.rows_per_thread)), self.dtype)
            self.q_quant.load_rows(rX, mQ.iterator, base, Int64(mQ.stride[2]), blk_idx, mQ.shape[2], tid)
            no_mean = cute.make_rmem_tensor(cute.make_layout(VEC), Float32)
            no_mean.fill(0.0)
            bh = Int64(batch) * Int64(mQ.shape[1]) + Int64(head)
            self.q_quant.quantize_rows(
                rX, no_mean, cute.recast_ptr(mQ8.iterator, dtype=Int32), mQs.iterator, bh, blk_idx, mQ.shape[2], tid,
                s_block,
            )  # fmt: skip

    @cute.jit
    def k_split(
        self, mK: cute.Tensor, mK8: cute.Tensor, mKs: cute.Tensor, mKm: Optional[cute.Tensor],
        mQm: Optional[cute.Tensor], mDelta: Optional[cute.Tensor],
        batch, head, split, sub, tid, t, wg, s_block, s_warp: cute.Tensor, s_split: cute.Tensor, s_mean: cute.Tensor,
        s_stash: Optional[cute.Tensor],
    ):  # fmt: skip
        """K of (batch, head): ``split`` is the CTA's cluster rank, ``sub`` and ``t`` the
        warpgroup's (sub-)split and thread index in it, ``tid`` the CTA's thread index."""
        seqlen = mK.shape[2]
        n_mine = self.blocks_of_split(seqlen, sub)
        sync = self.warpgroup_sync(wg)
        base = Int64(batch) * Int64(mK.stride[0]) + Int64(head) * Int64(mK.stride[1])
        stride_l = Int64(mK.stride[2])
        rX = cute.make_rmem_tensor(cute.make_layout((VEC, self.k_quant.rows_per_thread)), self.dtype)
        mean_f32 = cute.make_rmem_tensor(cute.make_layout(VEC), Float32)
        mean_f32.fill(0.0)
        # a block loaded into rX and quantized from rX (by its index in the head), or copied
        # into a slot (by its index in the split); partials, not closures: a staged loop
        # cannot call a closure over dynamic values
        load_block = functools.partial(self.k_quant.load_rows, rX, mK.iterator, base, stride_l)
        copy_block = functools.partial(self.k_copy_block, mK.iterator, base, stride_l, sub, seqlen, t)

        def quantizer():  # made where it is used: its values would stay live through pass 1
            bh = Int64(batch) * Int64(mK.shape[1]) + Int64(head)
            return functools.partial(self.k_quantize_block, rX, mean_f32, cute.recast_ptr(mK8.iterator, dtype=Int32),
                                     mKs.iterator, bh, seqlen, t, s_block, mQm, mDelta, mK.shape[1], batch, head, sync)

        if const_expr(self.smooth_k):
            # pass 1: column sums of the split's blocks (Note [Split K mean])
            acc = cute.make_rmem_tensor(cute.make_layout(VEC), Float32)
            acc.fill(0.0)
            self.ring_fill(copy_block, n_mine, s_stash, t)
            for i in cutlass.range(n_mine):
                blk_idx = sub + i * self.sub_splits
                self.pass1_block(functools.partial(load_block, blk_idx, seqlen, t), rX, s_stash, i, n_mine, t)
                for r in cutlass.range_constexpr(self.k_quant.rows_per_thread):
                    for e, x in enumerate(widen_row(rX[None, r])):
                        acc[e] = acc[e] + x
                self.pass1_done(copy_block, rX, s_stash, i, n_mine, t)
            self.reduce_columns([acc], (False,), tid, s_warp, s_split)
            total = self.gather_splits(
                s_split, tid, (False,), lambda: self.ring_first_reread(copy_block, n_mine, s_stash, t)
            )[0]
            self.publish_mean(total, seqlen, mKm, batch, head, split, tid, s_mean)
            col = self.k_quant.col(t)
            for e in cutlass.range_constexpr(VEC):
                mean_f32[e] = s_mean[col + e].to(Float32)
            # pass 2, last loaded first (it is still in rX)
            quantize_block = quantizer()
            for j in cutlass.range(n_mine):
                i = n_mine - 1 - j
                blk_idx = sub + i * self.sub_splits
                if j > 0:
                    self.pass2_block(functools.partial(load_block, blk_idx, seqlen, t), rX, s_stash, i, t)
                quantize_block(blk_idx)
                if j > 0:
                    self.pass2_done(copy_block, i, s_stash, t)
            if const_expr(self.exchange):
                cute.arch.cluster_wait()  # no CTA leaves while another still reads its s_split
        elif const_expr(self.ring > 0):
            # no mean: one pass, blocks in order through the ring (Note [Block ring])
            self.ring_fill(copy_block, n_mine, s_stash, t, rereads=False)
            quantize_block = quantizer()
            for i in cutlass.range(n_mine):
                self.ring_take(rX, s_stash, i, t)
                quantize_block(sub + i * self.sub_splits)
                self.pass1_done(copy_block, rX, s_stash, i, n_mine, t, rereads=False)
        else:
            quantize_block = quantizer()
            for j in cutlass.range(n_mine):
                blk_idx = sub + (n_mine - 1 - j) * self.sub_splits
                load_block(blk_idx, seqlen, t, self.once_cop)
                quantize_block(blk_idx)

    @cute.jit
    def k_copy_block(self, x, base, stride_l, sub, seqlen, t, i, dst, policy: cutlass.Constexpr):
        row0 = (sub + i * self.sub_splits) * self.blk + t // self.k_quant.threads_per_row
        self.copy_rows_async(dst, x, base + Int64(self.k_quant.col(t)), stride_l, row0, self.k_quant.rows_per_pass,
                             self.k_quant.rows_per_thread, seqlen, policy)

    @cute.jit
    def k_quantize_block(
        self, rX, mean_f32, k8, ks, bh, seqlen, t, s_block, mQm, mDelta, hkv, batch, head, sync: cutlass.Constexpr,
        blk_idx,
    ):  # fmt: skip
        self.k_quant.quantize_rows(rX, mean_f32, k8, ks, bh, blk_idx, seqlen, t, s_block, self.store_cop, sync)
        if const_expr(self.smooth_q):
            self.delta_rows(rX, mean_f32, mQm, mDelta, mQm.shape[1] // hkv, batch, head, blk_idx, t)

    @cute.jit
    def v_split(
        self, mV: cute.Tensor, mV8: cute.Tensor, mVs: cute.Tensor, mVm: Optional[cute.Tensor], scale_max: Float32,
        batch, head, split, sub, tid, t, s_warp: cute.Tensor, s_split: cute.Tensor, s_chan: cute.Tensor,
        s_stash: Optional[cute.Tensor],
    ):  # fmt: skip
        """V of (batch, head); ``split``, ``sub``, ``tid`` and ``t`` as ``k_split``'s."""
        seqlen = mV.shape[2]
        n_mine = self.blocks_of_split(seqlen, sub)
        # item ``tid``: tokens ``(tid // vecs_per_row) * v_rows ..`` of a block, channel vector
        # ``tid % vecs_per_row``; that is part ``part`` of 16-token group ``group_in_block``
        # (the whole group, or one half: Note [Half groups])
        parts = GROUP // self.v_rows
        cvec = t % self.vecs_per_row
        group_in_block = t // (self.vecs_per_row * parts)
        part = (t // self.vecs_per_row) % parts if const_expr(parts > 1) else 0
        base = Int64(batch) * Int64(mV.stride[0]) + Int64(head) * Int64(mV.stride[1]) + Int64(cvec * VEC)
        stride_l = Int64(mV.stride[2])
        rX = cute.make_rmem_tensor(cute.make_layout((VEC, self.v_rows)), self.dtype)  # (channel, token)
        rX.fill(0.0)
        # pass 1: per-channel amax of the split's blocks (smooth_v: sum, max and negated
        # min of the true tokens, Note [V mean])
        stats = [cute.make_rmem_tensor(cute.make_layout(VEC), Float32) for _ in range(self.num_stats())]
        stats[0].fill(0.0)  # amax, or smooth_v's sum
        for extreme in stats[1:]:
            extreme.fill(-Float32.inf)

        # a block's group loaded into rX, or copied into a slot (by the block's index in the
        # split; partials, as k_split's)
        load_block = functools.partial(self.v_quant.load_group, rX, mV.iterator, base, stride_l)
        copy_block = functools.partial(self.v_copy_block, mV.iterator, base, stride_l, sub, group_in_block, seqlen,
                                       part)

        self.ring_fill(copy_block, n_mine, s_stash, t)
        for i in cutlass.range(n_mine):
            group = self.v_group(sub, group_in_block, i)
            self.pass1_block(functools.partial(load_block, group, seqlen, part), rX, s_stash, i, n_mine, t)
            for j in cutlass.range_constexpr(self.v_rows):
                if const_expr(self.smooth_v):
                    v_sum, v_max, v_nmin = stats
                    # tokens past seqlen read as 0: they count in no max or min
                    valid = group * GROUP + part * self.v_rows + j < seqlen
                    for e, x in enumerate(widen_row(rX[None, j])):
                        v_sum[e] = v_sum[e] + x
                        v_max[e] = cute.arch.fmax(v_max[e], cutlass.select_(valid, x, -Float32.inf))
                        v_nmin[e] = cute.arch.fmax(v_nmin[e], cutlass.select_(valid, -x, -Float32.inf))
                else:
                    amax = stats[0]
                    for e, x in enumerate(widen_row(rX[None, j])):
                        amax[e] = cute.arch.fmax(amax[e], abs(x))
            self.pass1_done(copy_block, rX, s_stash, i, n_mine, t)
        is_max = (False, True, True) if const_expr(self.smooth_v) else (True,)
        self.reduce_columns(stats, is_max, tid, s_warp, s_split)
        totals = self.gather_splits(s_split, tid, is_max,
                                    lambda: self.ring_first_reread(copy_block, n_mine, s_stash, t))
        m = totals[0]
        bh = Int64(batch) * Int64(mV.shape[1]) + Int64(head)
        dim = self.head_dim
        if tid < dim:
            if const_expr(self.smooth_v):
                # Note [V mean]: max |v - mean| = max(max - mean, mean - min), also in fp32
                mean = div_rn(totals[0], Float32(seqlen))
                m = cute.arch.fmax(totals[1] - mean, mean + totals[2])
                s_chan[tid, 1] = mean
                if split == 0:
                    gmem_vec(mVm.iterator, bh * Int64(dim) + Int64(tid), 1, 1)[0] = mean
            s_chan[tid, 0] = channel_inv(m, scale_max)
            if split == 0:
                gmem_vec(mVs.iterator, bh * Int64(dim) + Int64(tid), 1, 1)[0] = div_rn(m, scale_max)
        cute.arch.sync_threads()
        rInv = cute.make_rmem_tensor(cute.make_layout(VEC), Float32)
        for e in cutlass.range_constexpr(VEC):
            rInv[e] = s_chan[cvec * VEC + e, 0]
        rMean = None
        if const_expr(self.smooth_v):
            rMean = cute.make_rmem_tensor(cute.make_layout(VEC), Float32)
            for e in cutlass.range_constexpr(VEC):
                rMean[e] = s_chan[cvec * VEC + e, 1]
        # pass 2, last loaded first (it is still in rX)
        padded_len = (seqlen + self.blk - 1) // self.blk * self.blk
        row0 = bh * Int64(self.head_dim) + Int64(cvec * VEC)
        v8 = cute.recast_ptr(mV8.iterator, dtype=Int32)
        for j in cutlass.range(n_mine):
            i = n_mine - 1 - j
            group = self.v_group(sub, group_in_block, i)
            if j > 0:
                self.pass2_block(functools.partial(load_block, group, seqlen, part), rX, s_stash, i, t)
            if const_expr(parts == 1):
                self.v_quant.store_group(rX, rInv, v8, row0, group, padded_len // 4, rMean, seqlen, self.store_cop)
            else:
                self.store_half_group(rX, rInv, v8, row0, group, part, padded_len // 4, rMean, seqlen)
            if j > 0:
                self.pass2_done(copy_block, i, s_stash, t)
        if const_expr(self.exchange):
            cute.arch.cluster_wait()  # no CTA leaves while another still reads its s_split

    def v_group(self, sub, group_in_block, i):
        """This thread's 16-token group of block ``i`` of (sub-)split ``sub``."""
        return (sub + i * self.sub_splits) * self.groups_per_block + group_in_block

    @cute.jit
    def v_copy_block(self, v, base, stride_l, sub, group_in_block, seqlen, part, i, dst, policy: cutlass.Constexpr):
        tok0 = self.v_group(sub, group_in_block, i) * GROUP + part * self.v_rows
        self.copy_rows_async(dst, v, base, stride_l, tok0, 1, self.v_rows, seqlen, policy)

    @cute.jit
    def store_half_group(
        self, rX: cute.Tensor, rInv: cute.Tensor, v_fp8: cute.Pointer, row0: Int64, group, part, words_per_row,
        mean: Optional[cute.Tensor] = None, seqlen=0,
    ):
        """Note [Half groups]: ``rX`` (channel, token) holds half ``part`` of group
        ``group``, lane ``tid ^ vecs_per_row`` the other half; together they store what
        ``QuantizeVFp8.store_group`` would, this lane rows ``row0 + 4 part .. + 3``."""
        half = VEC // 2
        words = GROUP // 4
        # e4m3 pairs of tokens (2w, 2w + 1): channel c in the low 16 bits, c + 4 in the high
        rPair = cute.make_rmem_tensor(cute.make_layout((half, words)), Int32)  # (c, w)
        tok0 = group * GROUP + part * self.v_rows
        for c in cutlass.range_constexpr(half):
            for w in cutlass.range_constexpr(words):
                rPair[c, w] = pack_e4m3x4(
                    self.v_quant.scaled(rX, c, 2 * w, rInv, mean, tok0, seqlen),
                    self.v_quant.scaled(rX, c, 2 * w + 1, rInv, mean, tok0, seqlen),
                    self.v_quant.scaled(rX, c + half, 2 * w, rInv, mean, tok0, seqlen),
                    self.v_quant.scaled(rX, c + half, 2 * w + 1, rInv, mean, tok0, seqlen),
                )
        # byte selectors (``prmt``): part 0 sends its channels 4-7 and keeps 0-3, part 1 the
        # reverse; a stored word is (part 0's pair, part 1's pair) of tokens (2w, 2w + 1)
        first = part == 0
        send = cutlass.select_(first, Int32(0x7632), Int32(0x5410))
        even = cutlass.select_(first, Int32(0x5410), Int32(0x3254))
        odd = cutlass.select_(first, Int32(0x7610), Int32(0x3276))
        rOut = cute.make_rmem_tensor(cute.make_layout(words), Int32)
        for c in cutlass.range_constexpr(half):
            for m in cutlass.range_constexpr(words // 2):
                got = cute.arch.shuffle_sync_bfly(
                    prmt(rPair[c, 2 * m], rPair[c, 2 * m + 1], send), offset=self.vecs_per_row
                )  # the partner's pairs (2m, 2m + 1) of the channel this lane stores
                rOut[2 * m] = prmt(rPair[c, 2 * m], got, even)
                rOut[2 * m + 1] = prmt(rPair[c, 2 * m + 1], got, odd)
            row = row0 + Int64(c + half * part)
            gmem_store(v_fp8, row * Int64(words_per_row) + Int64(group * words), rOut.load(), self.store_cop)

    @cute.jit
    def delta_rows(
        self, rX: cute.Tensor, mean_f32: cute.Tensor, mQm: cute.Tensor, mDelta: cute.Tensor, q_per_kv, batch, head,
        blk_idx, tid,
    ):  # fmt: skip
        """Note [delta_s in the K pass]: ``delta[b, hq, j] = qm[b, hq] . (k_j - km)`` for
        this thread's rows of block ``blk_idx`` (in ``rX``) and every q head ``hq`` of kv
        head ``head``: 8 channels per thread, then a butterfly over the row's lanes."""
        tpr, rpp = self.k_quant.threads_per_row, self.k_quant.rows_per_pass
        col = self.k_quant.col(tid)
        padded = mDelta.shape[2]
        row0 = blk_idx * self.blk + tid // tpr
        bh0 = Int64(batch) * Int64(mQm.shape[1]) + Int64(head * q_per_kv)
        for i in cutlass.range_constexpr(self.k_quant.rows_per_thread):
            ksm = [x - mean_f32[e] for e, x in enumerate(widen_row(rX[None, i], 1))]
            # the q heads innermost, one runtime loop per row: hoisting anything out of
            # a loop over heads would keep every row's fp32 values live
            for g in cutlass.range(q_per_kv, unroll=1):
                bhq = bh0 + Int64(g)
                qm = gmem_load(mQm.iterator, bhq * Int64(self.head_dim) + Int64(col), VEC).to(Float32)
                d = Float32(0.0)
                for e in cutlass.range_constexpr(VEC):
                    d = d + ksm[e] * qm[e]
                d = warp_sum_bfly(d, tpr - 1)
                if tid % tpr == 0:
                    gmem_vec(mDelta.iterator, bhq * Int64(padded) + Int64(row0 + rpp * i), 1, 1)[0] = d

    @cute.jit
    def publish_mean(self, total: Float32, seqlen, mKm: cute.Tensor, batch, head, split, tid, s_mean: cute.Tensor):
        """``mean = total / seqlen`` in K's dtype into ``s_mean``; rank 0 also stores it."""
        dim = self.head_dim
        if tid < dim:
            s_mean[tid] = div_rn(total, Float32(seqlen)).to(self.dtype)
            if split == 0:
                off = (Int64(batch) * Int64(mKm.shape[1]) + Int64(head)) * Int64(dim) + Int64(tid)
                gmem_vec(mKm.iterator, off, 1, 1)[0] = s_mean[tid]
        cute.arch.sync_threads()

    # ------------------------------------------------------------ split helpers
    @cute.jit
    def pass1_block(self, load_block: cutlass.Constexpr, rX: cute.Tensor, s_slots, i, n_mine, tid):
        """Pass 1: block ``i`` of the split into ``rX``: from its ring slot (Note [Block
        ring]), or loaded (``load_block(cop)``) with the cache operator Note [L2 cache
        operators] gives it (a compile-time property of the instruction, so with hints
        both forms are emitted behind the runtime ``read_once`` branch)."""
        if const_expr(self.ring > 0):
            self.ring_take(rX, s_slots, i, tid)
        elif const_expr(self.once_cop is None and self.keep_cop is None):
            load_block(None)
        elif self.read_once(i, n_mine):
            load_block(self.once_cop)
        else:
            load_block(self.keep_cop)

    @cute.jit
    def pass1_done(self, copy_block: cutlass.Constexpr, rX: cute.Tensor, s_slots, i, n_mine, tid,
                   rereads: cutlass.Constexpr = True):
        """Pass 1 is done with block ``i`` (in ``rX``). Ring: its slot takes block ``i +
        ring`` (one commit group, except after the last block: ``ring_first_reread``
        commits that one; ``rereads`` False: no block is read twice). Register path:
        the block goes to its stash slot if it has one (Note [Stashed blocks]); the last
        one stays in registers instead."""
        if const_expr(self.ring > 0):
            nxt = i + self.ring
            if nxt < n_mine:
                last_read = self.read_once(nxt, n_mine) if const_expr(rereads) else True
                self.ring_copy(copy_block, nxt, s_slots, tid, last_read)
            if const_expr(not rereads):
                cute.arch.cp_async_commit_group()
            elif i < n_mine - 1:
                cute.arch.cp_async_commit_group()
        elif const_expr(self.stash > 0):
            if i < n_mine - 1 and i < self.stash:
                for r in cutlass.range_constexpr(cute.size(rX, mode=[1])):
                    s_slots[None, r, tid, i].store(rX[None, r].load())

    @cute.jit
    def pass2_block(self, load_block: cutlass.Constexpr, rX: cute.Tensor, s_slots, i, tid):
        """Pass 2: block ``i`` of the split (not the last one, still in ``rX``) into
        ``rX``: from its ring slot, its stash slot, or re-read from global memory."""
        if const_expr(self.ring > 0):
            self.ring_take(rX, s_slots, i, tid)
        else:
            stashed = cutlass.Boolean(False)
            if const_expr(self.stash > 0):
                if i < self.stash:
                    for r in cutlass.range_constexpr(cute.size(rX, mode=[1])):
                        rX[None, r].store(s_slots[None, r, tid, i].load())
                    stashed = cutlass.Boolean(True)
            if not stashed:
                load_block(self.reread_cop)

    @cute.jit
    def pass2_done(self, copy_block: cutlass.Constexpr, i, s_slots, tid):
        """Pass 2 is done with block ``i``: with a ring, its slot takes the next block to
        re-read, ``i - ring`` (one commit group)."""
        if const_expr(self.ring > 0):
            if i >= self.ring:
                self.ring_copy(copy_block, i - self.ring, s_slots, tid, True)
            cute.arch.cp_async_commit_group()

    # ------------------------------------------------------------ the ring (Note [Block ring])
    @cute.jit
    def ring_fill(self, copy_block: cutlass.Constexpr, n_mine, s_slots, tid, rereads: cutlass.Constexpr = True):
        """Blocks ``0 .. ring - 1`` of the split on their way, one commit group each
        (empty past the split's last block)."""
        if const_expr(self.ring > 0):
            for i in cutlass.range_constexpr(self.ring):
                if i < n_mine:
                    last_read = self.read_once(i, n_mine) if const_expr(rereads) else True
                    self.ring_copy(copy_block, i, s_slots, tid, last_read)
                cute.arch.cp_async_commit_group()

    @cute.jit
    def ring_first_reread(self, copy_block: cutlass.Constexpr, n_mine, s_slots, tid):
        """After pass 1: the last block's slot (that block stays in registers) takes the
        first block pass 2 re-reads, ``n_mine - 1 - ring``; the commit group pass 1's
        last step left out."""
        if const_expr(self.ring > 0):
            if n_mine - 1 - self.ring >= 0:
                self.ring_copy(copy_block, n_mine - 1 - self.ring, s_slots, tid, True)
            cute.arch.cp_async_commit_group()

    @cute.jit
    def ring_copy(self, copy_block: cutlass.Constexpr, i, s_slots, tid, last_read):
        """``copy_block(i, slot, policy)`` into block ``i``'s slot, with the L2 policy of
        a block read for the last time (``last_read``) or one to be read again."""
        dst = s_slots[None, None, tid, i % self.ring]
        if const_expr(self.ring_once_policy == self.ring_keep_policy):
            copy_block(i, dst, self.ring_keep_policy)
        elif const_expr(isinstance(last_read, bool)):
            copy_block(i, dst, self.ring_once_policy if last_read else self.ring_keep_policy)
        elif last_read:
            copy_block(i, dst, self.ring_once_policy)
        else:
            copy_block(i, dst, self.ring_keep_policy)

    @cute.jit
    def ring_take(self, rX: cute.Tensor, s_slots, i, tid):
        """Block ``i`` of the split from its slot into ``rX`` once this thread's copies
        of it have landed: its group is ``ring - 1`` commits back."""
        cute.arch.cp_async_wait_group(self.ring - 1)
        for r in cutlass.range_constexpr(cute.size(rX, mode=[1])):
            rX[None, r].store(s_slots[None, r, tid, i % self.ring].load())

    @cute.jit
    def copy_rows_async(
        self, dst: cute.Tensor, src: cute.Pointer, base: Int64, stride_l: Int64, row0, row_step: cutlass.Constexpr,
        n_rows: cutlass.Constexpr, seqlen, policy: cutlass.Constexpr,
    ):  # fmt: skip
        """``cp.async`` of rows ``row0 + row_step * r`` (``r < n_rows``) of 8 channels at
        ``src + base`` into ``dst`` (VEC, rows); rows past ``seqlen`` become zeros."""
        for r in cutlass.range_constexpr(n_rows):
            row = row0 + row_step * r
            valid = row < seqlen
            off = cutlass.select_(valid, base + Int64(row) * stride_l, base)
            cp_async_16b(dst[None, r].iterator, src + off, valid, policy)

    def read_once(self, i, n_mine):
        """Pass 1: block ``i`` is not re-read from global memory in pass 2 (the last one
        stays in registers, the first ``stash`` wait in smem; with a ring, the last
        ``ring`` wait in their slots)."""
        if const_expr(self.ring > 0):
            return i >= n_mine - self.ring
        return (i == n_mine - 1) | (i < self.stash)

    def blocks_of_split(self, seqlen, sub):
        """How many of the ``ceil(seqlen / blk)`` blocks (sub-)split ``sub`` owns:
        blocks ``sub, sub + sub_splits, ...``."""
        n_blocks = (seqlen + self.blk - 1) // self.blk
        return (n_blocks - sub + self.sub_splits - 1) // self.sub_splits

    def warpgroup_sync(self, wg):
        """Note [Sub-splits]: the barrier of one warpgroup's 128 threads, whose block
        loop runs as often as its own sub-split has blocks (None: the CTA's)."""
        if self.warpgroups == 1:
            return None
        return lambda: cute.arch.barrier(barrier_id=1 + wg, number_of_threads=NUM_THREADS)

    @cute.jit
    def reduce_columns(self, stats: list, is_max: tuple, tid, s_warp: cute.Tensor, s_split: cute.Tensor):
        """Each ``stats[i]`` (VEC) holds channels ``(tid % vecs_per_row) * 8 ..`` of this
        thread's rows: sum it (or max it, ``is_max[i]``) over the CTA into ``s_split[:, i]``
        (head_dim), in a fixed order: butterfly over the lanes of a channel vector, then
        the warps in order."""
        lane, warp = tid % 32, tid // 32
        col = (tid % self.vecs_per_row) * VEC
        lanes_mask = 31 & ~(self.vecs_per_row - 1)
        for i, vals in enumerate(stats):
            for e in cutlass.range_constexpr(VEC):
                if const_expr(is_max[i]):
                    v = warp_max_bfly(vals[e], lanes_mask)
                else:
                    v = warp_sum_bfly(vals[e], lanes_mask)
                if lane < self.vecs_per_row:
                    s_warp[col + e, warp, i] = v
        cute.arch.sync_threads()
        if tid < self.head_dim:
            for i in cutlass.range_constexpr(len(stats)):
                v = s_warp[tid, 0, i]
                for w in cutlass.range_constexpr(1, NUM_WARPS * self.warpgroups):
                    if const_expr(is_max[i]):
                        v = cute.arch.fmax(v, s_warp[tid, w, i])
                    else:
                        v = v + s_warp[tid, w, i]
                s_split[tid, i] = v

    @cute.jit
    def gather_splits(self, s_split: cute.Tensor, tid, is_max: tuple, while_waiting: cutlass.Constexpr = None) -> list:
        """Channel ``tid``'s sum (or max, ``is_max[i]``) of each statistic over the
        cluster's splits, in rank order (threads >= head_dim get 0 or -inf). Arrives on
        the cluster barrier once it has read: the caller waits on it before leaving.
        ``while_waiting()`` runs between the arrive and the wait (Note [Block ring])."""
        if const_expr(not self.exchange):  # DIAGNOSTIC: this split's own statistics
            if const_expr(while_waiting is not None):
                while_waiting()
            return [cutlass.select_(tid < self.head_dim, s_split[tid % self.head_dim, i],
                                    Float32(-Float32.inf) if const_expr(is_max[i]) else Float32(0.0))
                    for i in range(len(is_max))]
        cute.arch.cluster_arrive()  # s_split written (release)
        if const_expr(while_waiting is not None):
            while_waiting()
        cute.arch.cluster_wait()  # every split's s_split written (acquire)
        totals = []
        for i in cutlass.range_constexpr(len(is_max)):
            v = Float32(-Float32.inf) if const_expr(is_max[i]) else Float32(0.0)
            if tid < self.head_dim:
                for rank in cutlass.range_constexpr(self.splits):
                    remote = ld_shared_cluster_f32(
                        cute.arch.map_dsmem_ptr(s_split.iterator + (tid + i * self.head_dim), Int32(rank))
                    )
                    if const_expr(is_max[i]):
                        v = cute.arch.fmax(v, remote)
                    else:
                        v = v + remote
            totals.append(v)
        # done reading the other splits' s_split. Relaxed: the remote values are already
        # in ``v`` (no memory to order), and a releasing arrive waited on every
        # outstanding memory access of the thread (ERRBAR: 5% of stall samples at L1k)
        cute.arch.cluster_arrive_relaxed()
        return totals
