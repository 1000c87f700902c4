"""Row reductions for online softmax on register fragments (arch-agnostic).

``TensorSSA.reduce`` lowers to one dependent chain per row (32 FADDs deep for a
128-column sm90 fragment row). These helpers keep ``num_partials`` independent
chains and combine them as a tree, so the row max / row sum latency is ~log2 deep.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32


def _tree(vals: list, op):
    # plain Python: runs at trace time on a list of DSL values
    while len(vals) > 1:
        nxt = []
        for i in range(0, len(vals) - 1, 2):
            nxt.append(op(vals[i], vals[i + 1]))
        if len(vals) % 2 == 1:
            nxt.append(vals[-1])
        vals = nxt
    return vals[0]


def _fmax(a, b):
    return cute.arch.fmax(a, b)


def _fadd(a, b):
    return a + b


def row_reduce(row: cute.Tensor, is_max: bool, num_partials: int = 8) -> Float32:
    """max (``is_max``) or sum of a 1-D register tensor with ``num_partials`` chains.

    Plain Python (unrolled at trace time); call it from ``@cute.jit`` code."""
    n = cute.size(row)
    k = min(num_partials, n)
    op = _fmax if is_max else _fadd
    parts = [row[i] for i in range(k)]
    for i in range(k, n):
        parts[i % k] = op(parts[i % k], row[i])
    return _tree(parts, op)


def _imax(a, b):
    return cutlass.max(a, b)


def row_max_int(row: cute.Tensor, num_partials: int = 8):
    """Max of a 1-D int32 register tensor as ``num_partials`` chains that each take two
    new elements per step, then a 3-way tree: ptxas fuses each ``max(max(a, b), c)``
    into one sm90 ``VIMNMX3`` (about half the instructions of a 2-input float tree)."""
    n = cute.size(row)
    k = min(num_partials, n)
    parts = [row[i] for i in range(k)]
    rest = list(range(k, n))
    j = 0
    while rest:
        if len(rest) >= 2:
            parts[j % k] = _imax(_imax(parts[j % k], row[rest[0]]), row[rest[1]])
            rest = rest[2:]
        else:
            parts[j % k] = _imax(parts[j % k], row[rest[0]])
            rest = rest[1:]
        j += 1
    while len(parts) > 1:
        nxt = []
        for i in range(0, len(parts) - 2, 3):
            nxt.append(_imax(_imax(parts[i], parts[i + 1]), parts[i + 2]))
        tail = len(parts) % 3
        if tail == 2:
            nxt.append(_imax(parts[-2], parts[-1]))
        elif tail == 1:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]
