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
# per thread and KV block in the sm90 kernel), so some of the exponentials can run on
# the FMA pipe instead (the sm90 kernel's d64 three-warpgroup tile, every 16th score:
# +5% at L8k on an H200; Note [Three consumer warpgroups]). 2^x = 2^floor(x) * 2^f,
# f in [0, 1), 2^floor(x) added into the exponent bits. 2^f is 2^-4 * (f^3 + a2 f^2 + a1 f + a0): a cubic whose leading
# coefficient is fixed at 2^-4 (fitted minimax for this project, max relative error
# 3.6e-4), so it evaluates as one FADD and two FFMAs that each take one immediate, and
# the 2^-4 joins the exponent. A free cubic (error 0.8e-4) needs its leading coefficient
# in a register, and at d64 with three consumer warpgroups that one register spilled.
# Eight instructions on the FMA/ALU pipes instead of one MUFU. The error is far below
# the e4m3 step P is rounded to (2^-4 relative): a few P elements in a thousand of those
# computed this way round to the neighbouring e4m3 value. x is clamped at -120 (the
# result 2^-120 is 0 in e4m3 like the exact one); x <= log2(448) by the FP8 offset.
EXP2_POLY_MONIC = (16.005699157714844, 11.001639366149902, 3.9812610149383545)  # a0, a1, a2
EXP2_POLY_SHIFT = 4  # the fixed leading coefficient is 2^-EXP2_POLY_SHIFT
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
    x = cute.arch.fmax(x, Float32(-120.0))
    # the low bits of ``biased`` hold floor(x) - SHIFT: the exponent of 2^floor(x) * 2^-SHIFT
    bias = Float32(_ROUND_BIAS - EXP2_POLY_SHIFT)
    biased = _add_round_down(x, bias)
    frac = x - (biased - bias)
    a0, a1, a2 = EXP2_POLY_MONIC
    p = ((frac + Float32(a2)) * frac + Float32(a1)) * frac + Float32(a0)
    return _scale_by_pow2(biased, p)
