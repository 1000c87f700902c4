"""Static persistent tile scheduler over (m_block, head, batch) work tiles.

Every role of a CTA (producer warp, consumer warpgroups) walks the same sequence
``tile = blockIdx.x, blockIdx.x + gridDim.x, ...`` and decodes it the same way,
so no communication is needed. Arch-agnostic: sm90/sm100/sm120 kernels use it.

Orders:
* ``lpt=False``: m_block fastest, so CTAs running together share one head's K/V in L2.
* ``lpt=True`` (causal): longest-processing-time first; tile index ``t`` maps to
  m_block ``num_m_blocks - 1 - t // (heads * batch)``, i.e. the tiles with the most KV
  blocks start in the first wave and the short ones fill the tail.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Int32, const_expr


class StaticTileScheduler:
    """Stateless decoder; the loop variable (tile index) lives in the caller.

    ::

        sched = StaticTileScheduler(num_m_blocks, num_heads, num_batch, lpt=...)
        tile = sched.first_tile()
        while tile < sched.num_tiles():
            m_block, head, batch = sched.decode(tile)
            ...
            tile += sched.grid_stride()
    """

    def __init__(self, num_m_blocks: Int32, num_heads: Int32, num_batch: Int32, lpt: bool):
        self.num_m_blocks = num_m_blocks
        self.num_heads = num_heads
        self.num_batch = num_batch
        self.lpt = lpt

    # Carried through dynamic loops: only the Int32 fields are runtime values.
    def __extract_mlir_values__(self):
        values = []
        for v in (self.num_m_blocks, self.num_heads, self.num_batch):
            values += cutlass.extract_mlir_values(v)
        return values

    def __new_from_mlir_values__(self, values):
        n = [len(cutlass.extract_mlir_values(v)) for v in (self.num_m_blocks, self.num_heads, self.num_batch)]
        fields, pos = [], 0
        for old, k in zip((self.num_m_blocks, self.num_heads, self.num_batch), n):
            fields.append(cutlass.new_from_mlir_values(old, values[pos:pos + k]))
            pos += k
        return StaticTileScheduler(*fields, lpt=self.lpt)

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
            hb = self.num_heads * self.num_batch
            m_block = self.num_m_blocks - 1 - tile // hb
            rest = tile % hb
            head = rest % self.num_heads
            batch = rest // self.num_heads
        else:
            m_block = tile % self.num_m_blocks
            rest = tile // self.num_m_blocks
            head = rest % self.num_heads
            batch = rest // self.num_heads
        return m_block, head, batch
