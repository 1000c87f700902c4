"""Static persistent tile scheduler over (m_block, head, batch) work tiles.

Every role of a CTA (producer warp, consumer warpgroups) walks the same sequence
``tile = blockIdx.x, blockIdx.x + gridDim.x, ...`` and decodes it the same way,
so no communication is needed. Arch-agnostic: sm90/sm100/sm120 kernels use it.

Orders:
* ``lpt=False``: m_block fastest, so CTAs running together share one head's K/V in L2.
* ``lpt=True`` (causal): longest-processing-time first inside L2 sections (Note [LPT
  in L2 sections]).
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32, const_expr

# Note [LPT in L2 sections]
# -------------------------
# Causal tiles differ in length (m_block + 1 KV blocks), so the long ones go first and
# the short ones fill the tail. Ordering the whole grid that way (m_block slowest) puts
# every (batch, head) of the top m_block in the first wave: the CTAs running together
# then stream as many different K/V heads as there are SMs, which does not fit in L2,
# and the causal kernel becomes DRAM bound. So the (batch, head) pairs are cut into
# sections of ``section_heads`` whose K/V fit in ``L2_KV_BUDGET`` bytes; inside a
# section the order is m_block descending, heads fastest. CTAs running together work on
# one section's few heads (L2 hits), and each section still runs longest first.
L2_KV_BUDGET = 32 * 1024 * 1024  # of the 50 MB L2 of an H100/H200


class StaticTileScheduler:
    """Stateless decoder; the loop variable (tile index) lives in the caller.

    ::

        sched = StaticTileScheduler(num_m_blocks, num_heads, num_batch, lpt=..., section_heads=...)
        tile = sched.first_tile()
        while tile < sched.num_tiles():
            m_block, head, batch = sched.decode(tile)
            ...
            tile += sched.grid_stride()
    """

    def __init__(self, num_m_blocks: Int32, num_heads: Int32, num_batch: Int32, lpt: bool,
                 section_heads: Int32 = None):
        self.num_m_blocks = num_m_blocks
        self.num_heads = num_heads
        self.num_batch = num_batch
        self.lpt = lpt
        # lpt only: (batch, head) pairs per L2 section (>= 1); None: one section
        self.section_heads = section_heads if section_heads is not None else num_heads * num_batch

    def _fields(self):
        return (self.num_m_blocks, self.num_heads, self.num_batch, self.section_heads)

    # Carried through dynamic loops: only the Int32 fields are runtime values.
    def __extract_mlir_values__(self):
        values = []
        for v in self._fields():
            values += cutlass.extract_mlir_values(v)
        return values

    def __new_from_mlir_values__(self, values):
        fields, pos = [], 0
        for old in self._fields():
            k = len(cutlass.extract_mlir_values(old))
            fields.append(cutlass.new_from_mlir_values(old, values[pos:pos + k]))
            pos += k
        return StaticTileScheduler(*fields[:3], lpt=self.lpt, section_heads=fields[3])

    @staticmethod
    def section_heads_for(kv_bytes_per_head, qhead_per_kvhead) -> Int32:
        """(batch, head) pairs whose K/V fit in ``L2_KV_BUDGET`` (q heads of one KV
        head share it), at least 1."""
        return cutlass.max(Int32(L2_KV_BUDGET) // cutlass.max(kv_bytes_per_head, 1) * qhead_per_kvhead, 1)

    @staticmethod
    def grid_size(num_tiles, max_ctas):
        """Host side: number of persistent CTAs."""
        return cutlass.min(num_tiles, max_ctas)

    def num_tiles(self) -> Int32:
        return self.num_m_blocks * self.num_heads * self.num_batch

    def first_tile(self) -> Int32:
        return Int32(cute.arch.block_idx()[0])

    def grid_stride(self) -> Int32:
        return Int32(cute.arch.grid_dim()[0])

    def decode(self, tile: Int32):
        """-> (m_block, head, batch)."""
        if const_expr(self.lpt):
            hb_total = self.num_heads * self.num_batch
            section_tiles = self.section_heads * self.num_m_blocks
            section = tile // section_tiles
            in_section = tile - section * section_tiles
            first_hb = section * self.section_heads
            width = cutlass.min(self.section_heads, hb_total - first_hb)  # the last one may be narrower
            m_block = self.num_m_blocks - 1 - in_section // width
            hb = first_hb + in_section % width
            head = hb % self.num_heads
            batch = hb // self.num_heads
        else:
            m_block = tile % self.num_m_blocks
            rest = tile // self.num_m_blocks
            head = rest % self.num_heads
            batch = rest // self.num_heads
        return m_block, head, batch
