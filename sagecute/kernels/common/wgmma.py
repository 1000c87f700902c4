"""Warpgroup MMA (sm90 WGMMA) helpers: smem layouts, GEMM issue, accumulator views.

Kept free of torch; used by ``kernels/sm90`` (and by sm120's RS paths where the
accumulator fragment layout is the same).
"""

from __future__ import annotations

from typing import Optional, Type

import cutlass
import cutlass.cute as cute
import cutlass.utils.hopper_helpers as sm90_utils_basic
from cutlass import Float32, Int32, const_expr
from cutlass._mlir.dialects import llvm
from cutlass.cute.nvgpu import warpgroup
from cutlass.cutlass_dsl import Numeric, dsl_user_op
from cutlass.tensor_utils import LayoutEnum


def make_smem_layout_k_major(
    dtype: Type[Numeric], rows: int, cols: int, stages: Optional[int] = None, stage_stride: Optional[int] = None
):
    """Swizzled smem layout for a ``(rows, cols)`` tile whose ``cols`` axis is contiguous
    (the K axis of a K-major WGMMA operand), optionally with a trailing stage mode.
    ``stage_stride`` (elements, a multiple of the swizzle atom): stages that far apart
    instead of packed, e.g. the first ``rows`` rows of each stage of a taller buffer."""
    atom = warpgroup.make_smem_layout_atom(
        sm90_utils_basic.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, dtype, cols), dtype
    )
    shape = (rows, cols) if stages is None else (rows, cols, stages)
    order = (0, 1) if stages is None else (0, 1, 2)
    layout = cute.tile_to_shape(atom, shape, order=order)
    if stage_stride is None:
        return layout
    outer = layout.outer
    # the stage mode is (1, stages) : (0, packed stride)
    stride = (outer.stride[0], outer.stride[1], (outer.stride[2][0], stage_stride))
    return cute.make_composed_layout(layout.inner, 0, cute.make_layout(outer.shape, stride=stride))


@cute.jit
def gemm(
    tiled_mma: cute.TiledMma,
    acc: cute.Tensor,
    tCrA: cute.Tensor,
    tCrB: cute.Tensor,
    zero_init: cutlass.Constexpr[bool] = False,
    wg_wait: cutlass.Constexpr[int] = 0,
) -> None:
    """``acc (+)= A @ B`` over the K mode, as one committed WGMMA group.

    ``wg_wait >= 0`` waits until at most that many groups are in flight;
    ``wg_wait < 0`` returns with the group in flight (caller waits)."""
    gemm_split_k(tiled_mma, [acc], tCrA, tCrB, zero_init=zero_init, wg_wait=wg_wait)


@cute.jit
def gemm_split_k(
    tiled_mma: cute.TiledMma,
    accs: list,
    tCrA: cute.Tensor,
    tCrB: cute.Tensor,
    zero_init: cutlass.Constexpr[bool] = True,
    wg_wait: cutlass.Constexpr[int] = 0,
) -> None:
    """``accs[i] (+)= A @ B`` over the i-th of ``len(accs)`` equal slices of the K
    mode, as one committed WGMMA group; ``wg_wait`` as in :func:`gemm`."""
    per_acc = cute.size(tCrA.shape[2]) // len(accs)
    warpgroup.fence()
    mma_atom = cute.make_mma_atom(tiled_mma.op)
    for i in cutlass.range_constexpr(len(accs)):
        mma_atom.set(warpgroup.Field.ACCUMULATE, not zero_init)
        for k in cutlass.range_constexpr(i * per_acc, (i + 1) * per_acc):
            cute.gemm(mma_atom, accs[i], tCrA[None, None, k], tCrB[None, None, k], accs[i])
            mma_atom.set(warpgroup.Field.ACCUMULATE, True)
    warpgroup.commit_group()
    if const_expr(wg_wait >= 0):
        warpgroup.wait_group(wg_wait)


def acc_mn_view(acc: cute.Tensor) -> cute.Tensor:
    """View an sm90 accumulator ``((2, 2, N/8), MMA_M, MMA_N)`` as ``(rows, cols)``:
    rows ``(2, MMA_M)`` (row r and r+8), cols ``(2, N/8, MMA_N)``."""
    l = cute.make_layout(acc.layout.shape)
    shape = ((l.shape[0][1], l.shape[1]), (l.shape[0][0], l.shape[0][2], l.shape[2]))
    stride = ((l.stride[0][1], l.stride[1]), (l.stride[0][0], l.stride[0][2], l.stride[2]))
    return cute.make_tensor(acc.iterator, cute.composition(acc.layout, cute.make_layout(shape, stride=stride)))


def acc_as_fp8_operand_a(acc: cute.Tensor, tile_n: int) -> cute.Tensor:
    """View a 64 x tile_n fp32 accumulator fragment in the k32 8-bit A-operand order.

    Note [P fragment for the FP8 PV WGMMA] (design/sm90.md "P fragment"): register
    j of the A fragment holds accumulator elements {0,1,4,5} + 2j (mod the chunk):
    row r, columns {2t, 2t+1, 2t+8, 2t+9} of each 16-column chunk, read by the MMA
    as k = 4t..4t+3. V's token axis is permuted to match (quant_layout.V_TOKEN_PERM),
    so no shuffles are needed."""
    layout = cute.make_layout(
        (((2, 2), 2, 2), 1, tile_n // 32), stride=(((1, 4), 2, 8), 0, 16)
    )
    return cute.make_tensor(acc.iterator, layout)


@dsl_user_op
def fence_after(values: list, never: Int32, *, loc=None, ip=None) -> None:
    """Pin the next ``wgmma.wait_group`` below the computation of ``values``.

    ptxas moves a WGMMA wait (``WARPGROUP.DEPBAR``) up past plain arithmetic, as far
    as the previous side-effecting instruction. This emits one: a shared store
    predicated on ``never == -1`` (the caller passes a value that is never -1, so it
    never executes) and on each of ``values`` (fp32), so it cannot issue before they
    exist. Cost: ~5 instructions."""
    deps = [Float32(a).ir_value(loc=loc, ip=ip) for a in values]
    body = ["{", ".reg .pred p;", "setp.eq.s32 p, $0, -1;"]
    for j in range(len(deps)):
        body.append(f"setp.ne.and.f32 p, ${1 + j}, 0f3F800001, p;")
    body.append("@p st.shared.b32 [$0], $1;")
    body.append("}")
    llvm.inline_asm(None, [Int32(never).ir_value(loc=loc, ip=ip), *deps], "\n".join(body),
                    ",".join(["r"] + ["f"] * len(deps)), has_side_effects=True, is_align_stack=False)
