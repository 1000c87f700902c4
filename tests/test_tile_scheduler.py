"""The persistent tile scheduler's orders (decoded with Python ints, no GPU)."""

import pytest

from sagecute.kernels.common.tile_scheduler import StaticTileScheduler


@pytest.mark.parametrize("m_blocks,heads,batch,section", [(5, 3, 2, 4), (7, 4, 1, 1), (3, 2, 3, 6), (4, 5, 2, 100)])
def test_lpt_sections_visit_every_tile_once_longest_first_per_section(m_blocks, heads, batch, section):
    s = StaticTileScheduler(m_blocks, heads, batch, lpt=True, section_heads=section)
    order = [s.decode(t) for t in range(s.num_tiles())]
    assert len(set(order)) == m_blocks * heads * batch
    assert all(0 <= m < m_blocks and 0 <= h < heads and 0 <= b < batch for m, h, b in order)
    hb = [b * heads + h for _, h, b in order]
    # a section's heads are contiguous in the order, and inside it m_block never grows
    for first in range(0, heads * batch, section):
        idx = [i for i, x in enumerate(hb) if first <= x < first + section]
        assert idx == list(range(idx[0], idx[0] + len(idx)))
        ms = [order[i][0] for i in idx]
        assert ms == sorted(ms, reverse=True)


def test_linear_order_m_block_fastest():
    s = StaticTileScheduler(3, 2, 2, lpt=False)
    assert [s.decode(t) for t in range(4)] == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0)]
