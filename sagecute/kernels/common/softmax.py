"""Row reductions for online softmax on register fragments (arch-agnostic).

``TensorSSA.reduce`` lowers to one dependent chain per row (32 FADDs deep for a
128-column sm90 fragment row). These helpers keep ``num_partials`` independent
chains and combine them as a tree, so the row max / row sum latency is ~log2 deep.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T, dsl_user_op


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


# Note [Polynomial exp2]
# ----------------------
# MUFU.EX2 issues one warp instruction per 8 cycles per SM sub-partition on Hopper (64
# per thread and KV block in the sm90 kernel), so some of the exponentials could run on
# the FMA pipe instead (measured: no gain on an H100, perf/NOTES.md; off by default): 2^x = 2^floor(x) * 2^f, f in [0, 1),
# 2^f by a cubic with p(0) = 1, p(1) = 2 (max relative error 1.0e-4, fitted for this
# project), 2^floor(x) added into the exponent bits. Nine instructions on the FMA/ALU
# pipes instead of one MUFU. The error is far below the e4m3 step P is rounded to
# (2^-4), and below ex2.approx's own where it matters little: a few P elements in ten
# thousand round to the neighbouring e4m3 value. x >= -127 after the clamp; larger
# than 127 never happens (x <= log2(448) by the FP8 offset).
EXP2_POLY3 = (1.0, 0.6954243183135986, 0.2263076901435852, 0.07826797664165497)
_ROUND_BIAS = 12582912.0  # 1.5 * 2^23: x + bias keeps floor(x) in the low mantissa bits


@dsl_user_op
def _add_round_down(a, b, *, loc=None, ip=None) -> Float32:
    return Float32(llvm.inline_asm(
        T.f32(), [Float32(a).ir_value(loc=loc, ip=ip), Float32(b).ir_value(loc=loc, ip=ip)],
        "add.rm.f32 $0, $1, $2;", "=f,f,f", has_side_effects=False, is_align_stack=False,
    ))  # fmt: skip


@dsl_user_op
def _scale_by_pow2(biased_floor, frac_pow2, *, loc=None, ip=None) -> Float32:
    """bits(frac_pow2) + (bits(biased_floor) << 23): the low bits of ``x + 1.5*2^23``
    hold floor(x) (two's complement); shifted into the exponent field, the bias bits
    leave through the top."""
    return Float32(llvm.inline_asm(
        T.f32(), [Float32(biased_floor).ir_value(loc=loc, ip=ip), Float32(frac_pow2).ir_value(loc=loc, ip=ip)],
        "{\n\t.reg .b32 e, m;\n\tmov.b32 e, $1;\n\tmov.b32 m, $2;\n\tshl.b32 e, e, 23;\n\t"
        "add.s32 m, m, e;\n\tmov.b32 $0, m;\n\t}",
        "=f,f,f", has_side_effects=False, is_align_stack=False,
    ))  # fmt: skip


def exp2_poly(x):
    """2^x on the FMA pipe (Note [Polynomial exp2]); x <= 127. Plain Python, inlined
    while a kernel is traced."""
    x = cute.arch.fmax(x, Float32(-127.0))
    biased = _add_round_down(x, Float32(_ROUND_BIAS))
    frac = x - (biased - Float32(_ROUND_BIAS))
    c0, c1, c2, c3 = EXP2_POLY3
    p = ((Float32(c3) * frac + Float32(c2)) * frac + Float32(c1)) * frac + Float32(c0)
    return _scale_by_pow2(biased, p)
