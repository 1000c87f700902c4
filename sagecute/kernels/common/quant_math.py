"""Scalar PTX helpers shared by the quantizers (IEEE division, RNE rounding, e4m3
packing, bf16/fp16 -> fp32 widening, global vector load/store views, per-thread async copies, DSMEM loads)
and the sm90 kernel's Q quantization (``recompute_here``).

Note [Bit-exact quantizer arithmetic]
-------------------------------------
The quantizers must match ``sagecute.reference`` bit for bit
(docs/kernel-contract.md, design/numerics.md §3-§4). Three operations decide
that, so each is spelled as explicit PTX instead of being left to the
compiler's choice of lowering:

* ``127 / amax``, ``amax / 127``, ``448 / amax``: ``div.rn.f32`` (IEEE, like
  torch's CUDA division), never ``div.approx``/``div.full`` or a reciprocal.
* ``clamp(round(x), -127, 127)``: ``cvt.rni.sat.s8.f32`` (round half to even, like
  ``torch.round``; Note [int8 rounding in one conversion]).
* ``e4m3(x)``: ``cvt.rn.satfinite.e4m3x2.f32`` (RNE, saturating at +-448, like
  the reference's clamp-then-cast).

Note [int8 rounding in one conversion]
--------------------------------------
``cvt.rni.sat.s8.f32`` rounds half to even and saturates to [-128, 127]: one F2I
instead of round, two clamps and a conversion, and three PRMTs pack four results
instead of an AND, a shift and an OR each. It equals the reference's
``clamp(round(x * inv), -127, 127)`` because ``|x| <= amax`` and ``inv = 127 / amax``
(IEEE) keep ``|x * inv| <= 127 (1 + 2^-23)``, which rounds to at most 127: -128 is never
produced. (A NaN input becomes 0, not -127; NaN has no defined int8 in the reference
either.) The Q tile's quantization inside the attention kernel and the K/Q
preprocessing share these helpers.

Note [int8 rounding by a magic add]
-----------------------------------
F2I (the conversion above) issues at 16 results per clock per SM, an eighth of the
FP32 rate: the Q tile's 64 per thread at the start of every attention tile took
~1000 cycles of the XU pipe while the tensor cores waited. Where every value is
within the amax (``|x * inv| <= 127 (1 + 2^-23)``, as above, so no saturation
happens), ``quantize_int8x4(..., saturate=False)`` rounds on the FMA pipe instead:
``v = x * inv`` (``mul.rn``) and ``w = v + 1.5 * 2^23`` (``add.rn``): for
``|v| < 2^22`` the sum lies in [2^23, 2^24), where fp32 steps are exactly 1, so
``add.rn`` rounds ``v`` half to even, and the low byte of ``w``'s bits is that integer's
two's complement int8 (``0x4B400000`` has a zero low byte). The same three PRMTs pack
the bytes. Both instructions carry ``.rn``, so ptxas cannot contract them into an FFMA
(which would round ``x * inv`` only once). Bit-identical to the F2I form wherever
that form does not saturate; a NaN becomes -1 instead of 0. Callers that quantize
values outside the amax (smooth_q's rows past Lq) keep ``saturate=True``.

Careful with torch oracles: ``127.0 / t`` in torch is ``t.reciprocal() * 127``
and, on CUDA, ``t / 127.0`` is ``t * fl(1/127)``; neither is the IEEE quotient
(tests/test_preprocess_gpu.py, Note [IEEE oracles]).

The arithmetic snippets are pure value computations (``has_side_effects=False``) so
LLVM may CSE and schedule them freely; ``ld_shared_cluster_f32`` and
``recompute_here`` are marked side-effecting on purpose (each says why). Everything here is a plain Python function
called while a kernel is traced (inlined; nothing is a separate ``@cute.jit``).
"""

from __future__ import annotations

from typing import Optional

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64
from cutlass._mlir import ir
from cutlass._mlir.dialects import llvm, vector
from cutlass.cutlass_dsl import T, dsl_user_op


def _asm(res_type, ptx: str, constraints: str, args):
    return llvm.inline_asm(res_type, args, ptx, constraints, has_side_effects=False, is_align_stack=False)


@dsl_user_op
def div_rn(a, b, *, loc=None, ip=None) -> Float32:
    """IEEE round-to-nearest fp32 division ``a / b``."""
    return Float32(
        _asm(
            T.f32(),
            "div.rn.f32 $0, $1, $2;",
            "=f,f,f",
            [Float32(a).ir_value(loc=loc, ip=ip), Float32(b).ir_value(loc=loc, ip=ip)],
        )
    )


@dsl_user_op
def pack_e4m3x4(x0, x1, x2, x3, *, loc=None, ip=None) -> Int32:
    """Four fp32 -> four e4m3 (RNE, satfinite) in one 32-bit word, ``x0`` in byte 0.

    ``cvt.rn.satfinite.e4m3x2.f32 d, a, b`` puts ``a`` in the upper byte of ``d``.
    """
    return Int32(
        _asm(
            T.i32(),
            "{\n\t.reg .b16 lo, hi;\n\t"
            "cvt.rn.satfinite.e4m3x2.f32 lo, $2, $1;\n\t"
            "cvt.rn.satfinite.e4m3x2.f32 hi, $4, $3;\n\t"
            "mov.b32 $0, {lo, hi};\n\t}",
            "=r,f,f,f,f",
            [Float32(v).ir_value(loc=loc, ip=ip) for v in (x0, x1, x2, x3)],
        )
    )


@dsl_user_op
def prmt(a, b, sel, *, loc=None, ip=None) -> Int32:
    """``prmt.b32``: byte ``i`` of the result is byte ``(sel >> 4 i) & 15`` (0-7: no sign
    replication) of ``b:a`` (``a`` bytes 0-3, ``b`` bytes 4-7); ``sel`` may be a register."""
    args = [Int32(v).ir_value(loc=loc, ip=ip) for v in (a, b, sel)]
    return Int32(_asm(T.i32(), "prmt.b32 $0, $1, $2, $3;", "=r,r,r,r", args))


@dsl_user_op
def quantize_int8x4(x0, x1, x2, x3, inv, saturate: bool = True, *, loc=None, ip=None) -> Int32:
    """``clamp(round_even(x * inv), -127, 127)`` of four values, packed as int8x4
    (``x0`` in byte 0): one saturating conversion each (Note [int8 rounding in one
    conversion]); ``saturate=False``: a multiply and a magic add each, for values
    within the amax (Note [int8 rounding by a magic add])."""
    if not saturate:
        args = [Float32(v).ir_value(loc=loc, ip=ip) for v in (x0, x1, x2, x3, inv)]
        return Int32(
            _asm(
                T.i32(),
                "{\n\t.reg .f32 a, b, c, d;\n\t.reg .b32 lo, hi;\n\t"
                "mul.rn.f32 a, $1, $5;\n\tmul.rn.f32 b, $2, $5;\n\t"
                "mul.rn.f32 c, $3, $5;\n\tmul.rn.f32 d, $4, $5;\n\t"
                "add.rn.f32 a, a, 0f4B400000;\n\tadd.rn.f32 b, b, 0f4B400000;\n\t"
                "add.rn.f32 c, c, 0f4B400000;\n\tadd.rn.f32 d, d, 0f4B400000;\n\t"
                "prmt.b32 lo, a, b, 0x0040;\n\tprmt.b32 hi, c, d, 0x0040;\n\t"
                "prmt.b32 $0, lo, hi, 0x5410;\n\t}",
                "=r,f,f,f,f,f",
                args,
            )
        )
    xs = [(Float32(v) * Float32(inv)).ir_value(loc=loc, ip=ip) for v in (x0, x1, x2, x3)]
    return Int32(
        _asm(
            T.i32(),
            "{\n\t.reg .b32 a, b, c, d, lo, hi;\n\t"
            "cvt.rni.sat.s8.f32 a, $1;\n\tcvt.rni.sat.s8.f32 b, $2;\n\t"
            "cvt.rni.sat.s8.f32 c, $3;\n\tcvt.rni.sat.s8.f32 d, $4;\n\t"
            "prmt.b32 lo, a, b, 0x0040;\n\tprmt.b32 hi, c, d, 0x0040;\n\t"
            "prmt.b32 $0, lo, hi, 0x5410;\n\t}",
            "=r,f,f,f,f",
            xs,
        )
    )


def warp_max_bfly(x: Float32, lanes_mask: int) -> Float32:
    """Max over the lanes that differ from this one only in the bits of ``lanes_mask``."""
    for bit in range(5):
        if lanes_mask & (1 << bit):
            x = cute.arch.fmax(x, cute.arch.shuffle_sync_bfly(x, offset=1 << bit))
    return x


def warp_sum_bfly(x: Float32, lanes_mask: int) -> Float32:
    """Sum over the lanes that differ from this one only in the bits of ``lanes_mask``
    (a fixed butterfly order, so the result is deterministic)."""
    for bit in range(5):
        if lanes_mask & (1 << bit):
            x = x + cute.arch.shuffle_sync_bfly(x, offset=1 << bit)
    return x


def gmem_vec(ptr: cute.Pointer, offset: Int64, n: int, align_elems: int) -> cute.Tensor:
    """``n`` contiguous elements at ``ptr + offset``; ``offset`` is promised to be a
    multiple of ``align_elems`` so loads/stores through it vectorize."""
    return cute.make_tensor(ptr + cute.assume(offset, divby=align_elems), cute.make_layout(n))


def gmem_load(ptr: cute.Pointer, offset: Int64, n: int, cop: Optional[str] = None) -> cute.TensorSSA:
    """``n`` contiguous elements at ``ptr + offset`` (a multiple of ``n``) in one vector
    load, with the PTX cache operator ``cop`` ("cs": evict first, "lu": last use,
    "evict_last": default caching with an L2 evict-last policy) or the default one
    (None)."""
    if cop is None:
        return gmem_vec(ptr, offset, n, n).load()
    if cop == "evict_last":
        return _ld_global_16b_evict_last(ptr + cute.assume(offset, divby=n), n)
    vec = ir.VectorType.get([n], ptr.dtype.mlir_type)
    return cute.TensorSSA(cute.arch.load(ptr + cute.assume(offset, divby=n), vec, cop=cop), (n,), ptr.dtype)


@dsl_user_op
def _ld_global_16b_evict_last(ptr: cute.Pointer, n: int, *, loc=None, ip=None) -> cute.TensorSSA:
    """16 bytes at ``ptr`` with ``.L2::cache_hint`` and an evict-last policy."""
    addr = Int64(ptr.toint(loc=loc, ip=ip)).ir_value(loc=loc, ip=ip)
    words = llvm.inline_asm(
        llvm.StructType.get_literal([T.i32()] * 4), [addr],
        "{\n\t.reg .b64 pol;\n\tcreatepolicy.fractional.L2::evict_last.b64 pol, 1.0;\n\t"
        "ld.global.L2::cache_hint.v4.b32 {$0, $1, $2, $3}, [$4], pol;\n\t}",
        "=r,=r,=r,=r,l", has_side_effects=False, is_align_stack=False,
    )  # fmt: skip
    vec = vector.from_elements(
        ir.VectorType.get([4], T.i32()), [llvm.extractvalue(T.i32(), words, [i], loc=loc, ip=ip) for i in range(4)],
        loc=loc, ip=ip,
    )  # fmt: skip
    vec = vector.bitcast(ir.VectorType.get([n], ptr.dtype.mlir_type), vec, loc=loc, ip=ip)
    return cute.TensorSSA(vec, (n,), ptr.dtype)


def gmem_store(ptr: cute.Pointer, offset: Int64, val: cute.TensorSSA, cop: Optional[str] = None) -> None:
    """``val`` (n elements) to ``ptr + offset`` (a multiple of n) in one vector store,
    with the PTX cache operator ``cop`` ("cs": streaming) or the default one (None)."""
    n = cute.size(val.shape)
    if cop is None:
        gmem_vec(ptr, offset, n, n).store(val)
    else:
        cute.arch.store(ptr + cute.assume(offset, divby=n), val.ir_value(), cop=cop)


@dsl_user_op
def cp_async_16b(dst: cute.Pointer, src: cute.Pointer, valid, policy: Optional[str] = None, *, loc=None,
                 ip=None) -> None:
    """16 bytes from global ``src`` to shared ``dst`` without waiting (``cp.async.cg``,
    one commit group per ``cute.arch.cp_async_commit_group``); zeros where not
    ``valid`` (source size 0: nothing is read, but ``src`` must still be an address
    of the tensor). ``policy``: an L2 eviction policy ("evict_last", "evict_first")
    through ``.L2::cache_hint``, or the default caching (None)."""
    dst_addr = Int32(dst.toint(loc=loc, ip=ip)).ir_value(loc=loc, ip=ip)
    src_addr = Int64(src.toint(loc=loc, ip=ip)).ir_value(loc=loc, ip=ip)
    src_bytes = cutlass.select_(valid, Int32(16), Int32(0)).ir_value(loc=loc, ip=ip)
    if policy is None:
        ptx = "cp.async.cg.shared.global [$0], [$1], 16, $2;"
    else:
        ptx = (f"{{\n\t.reg .b64 pol;\n\tcreatepolicy.fractional.L2::{policy}.b64 pol, 1.0;\n\t"
               "cp.async.cg.shared.global.L2::cache_hint [$0], [$1], 16, $2, pol;\n\t}")
    # side-effecting: it writes shared memory the compiler does not see
    llvm.inline_asm(None, [dst_addr, src_addr, src_bytes], ptx, "r,l,r", has_side_effects=True, is_align_stack=False)


@dsl_user_op
def ld_shared_cluster_f32(remote: cute.Pointer, *, loc=None, ip=None) -> Float32:
    """fp32 load from another CTA's shared memory (``remote`` from
    ``cute.arch.map_dsmem_ptr``). Has side effects so it is never moved above the
    cluster barrier that publishes the value."""
    addr = Int32(remote.toint(loc=loc, ip=ip))
    return Float32(
        llvm.inline_asm(
            T.f32(), [addr.ir_value(loc=loc, ip=ip)], "ld.shared::cluster.f32 $0, [$1];", "=f,r",
            has_side_effects=True, is_align_stack=False,
        )
    )  # fmt: skip


@dsl_user_op
def widen_f32(x, *, loc=None, ip=None) -> Float32:
    """bf16/fp16 -> fp32 (exact) through inline PTX. Same value as ``.to(Float32)``,
    but the compiler cannot merge it with an earlier conversion of the same
    register: ``widen_row``'s second fp16 spelling, so the INT8 quantizers convert a
    row once for its amax and again to quantize it, instead of keeping every fp32 copy
    live across the block's barriers (both are exact)."""
    src = "bf16" if isinstance(x, cutlass.BFloat16) else "f16"
    bits = llvm.bitcast(T.i16(), x.ir_value(loc=loc, ip=ip), loc=loc, ip=ip)
    return Float32(_asm(T.f32(), f"cvt.f32.{src} $0, $1;", "=f,h", [bits]))


# Note [bf16 pairs to fp32]: a 16-byte vector holds 4 words of 2 bf16; the low one
# is ``word << 16`` and the high one ``word & 0xffff0000`` as fp32 bits: one
# instruction per element, where a per-element conversion costs a PRMT (extract the
# half) and an IMAD (shift it). Exact, like every bf16 -> fp32 conversion. Two
# spellings of the same values (shift/mask, or PRMT with zero bytes) so the
# compiler cannot merge a row's conversion for its amax with the later one that
# quantizes it (which would keep every fp32 copy live across the block's barriers).
_BF16_PAIR_PTX = (
    ("shl.b32 $0, $1, 16;", "and.b32 $0, $1, 0xffff0000;"),
    ("prmt.b32 $0, $1, 0, 0x1044;", "prmt.b32 $0, $1, 0, 0x3244;"),
)


@dsl_user_op
def _bits_op(ptx: str, word, *, loc=None, ip=None) -> Float32:
    bits = _asm(T.i32(), ptx, "=r,r", [Int32(word).ir_value(loc=loc, ip=ip)])
    return Float32(llvm.bitcast(T.f32(), bits, loc=loc, ip=ip))


def widen_row(row: cute.Tensor, spelling: int = 0) -> list:
    """The 8 bf16/fp16 of a 16-byte register vector as fp32 (exact), in order.
    bf16: Note [bf16 pairs to fp32] (``spelling`` 0 or 1); fp16: ``cvt`` per element
    (``spelling`` 1 through ``widen_f32``, for the same no-merge reason)."""
    if row.element_type is cutlass.BFloat16:
        words = cute.recast_tensor(row, Int32)
        lo, hi = _BF16_PAIR_PTX[spelling]
        out = []
        for w in range(cute.size(words)):
            out += [_bits_op(lo, words[w]), _bits_op(hi, words[w])]
        return out
    if spelling == 0:
        xf = row.load().to(Float32)
        return [xf[e] for e in range(cute.size(row))]
    return [widen_f32(row[e]) for e in range(cute.size(row))]


@dsl_user_op
def recompute_here(x, *, loc=None, ip=None) -> Int32:
    """``x`` through a side-effecting ``mov``: values derived from it are computed
    where this is called, not hoisted out of an enclosing loop (addresses that only
    depend on the thread index would otherwise stay live through a whole mainloop)."""
    return Int32(
        llvm.inline_asm(
            T.i32(), [Int32(x).ir_value(loc=loc, ip=ip)], "mov.b32 $0, $1;", "=r,r",
            has_side_effects=True, is_align_stack=False,
        )
    )  # fmt: skip
