"""CuTe DSL preprocessing kernels compile for sm_90a, sm_100a and sm_120a without
a GPU, and their PTX uses the exact arithmetic the contract needs (Note
[Bit-exact quantizer arithmetic] in ``kernels/common/quant_math.py``)."""

from __future__ import annotations

import re

import pytest

from sagecute.quant_layout import SM89_GEOMETRY, SM90_GEOMETRY, V_TOKEN_PERM, QuantGranularity

ARCHS = ("sm_90a", "sm_100a", "sm_120a")


@pytest.mark.parametrize("arch", ARCHS)
def test_compile_quick_set(arch):
    """bf16 / head_dim 128: every kernel (Q, K, K smoothed per granularity; mean; V),
    the one-launch Q/K/V kernel, and their TVM-FFI entries where tvm_ffi is installed (Note [Two launch paths])."""
    from sagecute.preprocess.kernels import compile_all_preprocess, tvm_ffi_available

    results = compile_all_preprocess(arch, quick=True)
    # 21: with the sub-split K/V kernel, 8 splits with a stash, and the three cp.async ring ones
    assert len(results) == 8 + (21 if tvm_ffi_available() else 0)
    bad = [(r.name, r.problem) for r in results if not r.ok]
    assert not bad, bad


def test_compile_other_dtype_and_head_dim():
    from sagecute.preprocess import kernels as K

    fails = []
    for name, fn, args in K.preprocess_variants(dtypes=("fp16",), head_dims=(64,)):
        try:
            fn(*args, "sm_90a")
        except Exception as e:  # noqa: BLE001
            fails.append((name, repr(e)))
    assert not fails, fails


def test_ptx_uses_exact_arithmetic(tmp_path):
    from sagecute.preprocess.kernels import compile_all_preprocess

    results = {r.name: r for r in compile_all_preprocess("sm_90a", out_dir=str(tmp_path), quick=True)}
    for name, r in results.items():
        assert r.ok, (name, r.problem)
        ptx = r.summary["ptx"]
        assert ptx["div.approx"] == 0 and ptx["div.full"] == 0, name
        assert ptx["div.rn.f32"] >= 1, name
        assert ptx[".local"] == 0, f"{name}: local memory (spills or stack arrays)"
        if re.match(r"quant_kv\d+r\d", name):  # Note [Block ring]: 16-byte cp.async
            assert ptx["cp.async.cg.shared.global"] >= 16, f"{name}: no 16-byte async copies"
        else:
            assert ptx["ld.global.v4"] >= 1, f"{name}: no 16-byte loads"
        if "int8" in name:
            # Note [int8 rounding by a magic add]: the rounding on the FMA pipe
            assert ptx["add.rn.f32 a, a, 0f4B400000"] >= 8 and ptx["cvt.rni.sat.s8.f32"] == 0, name
            assert ptx["st.global.v2"] >= 1, name
        if "v_fp8" in name:
            assert ptx["cvt.rn.satfinite.e4m3x2.f32"] >= 8 and ptx["st.global.v4"] >= 1, name


@pytest.mark.parametrize("geom", [SM90_GEOMETRY, SM89_GEOMETRY], ids=["sm90", "sm89"])
@pytest.mark.parametrize("is_k", [False, True], ids=["q", "k"])
@pytest.mark.parametrize("gran", list(QuantGranularity), ids=lambda g: g.value)
def test_scale_group_bit_masks(geom, is_k, gran):
    """Note [Scale groups as bit masks]: the kernel's grouping is the geometry's."""
    from sagecute.kernels.common.quant_int8 import _group_mask, _squeeze, _warp_offsets

    mask, per_block = _group_mask(geom, gran, is_k)
    blk = geom.blk_k if is_k else geom.blk_q
    bits = blk.bit_length() - 1
    index = geom.k_scale_index if is_k else geom.q_scale_index
    for r in range(blk):
        assert _squeeze(r, mask, bits) == index(r, gran)
        # rows the kernel combines for row r: butterfly over the lane bits of the
        # mask, then the warps named by its high bits
        lanes = {r ^ m for m in range(32) if (m & ~mask) == 0}
        offsets = _warp_offsets(mask)
        rows = {(lr & ~(mask & ~31)) | w for lr in lanes for w in offsets} if offsets else lanes
        group = {j for j in range(blk) if index(j, gran) == index(r, gran)}
        assert rows == group


def test_v_permutation_words():
    from sagecute.kernels.common.quant_fp8 import _perm_words

    words = _perm_words()
    assert [t for w in words for t in w] == list(V_TOKEN_PERM)
    # consecutive token pairs stay adjacent: one e4m3x2 conversion per pair
    assert all(w[1] == w[0] + 1 and w[3] == w[2] + 1 for w in words)


def test_rejects_unsupported_configs():
    import cutlass

    from sagecute.kernels.common.quant_fp8 import QuantizeVFp8
    from sagecute.kernels.common.quant_int8 import QuantizeInt8

    with pytest.raises(ValueError):
        QuantizeInt8(cutlass.BFloat16, 72, QuantGranularity.PER_THREAD, False, False, SM90_GEOMETRY)
    with pytest.raises(ValueError):
        QuantizeVFp8(cutlass.Float32, 128, SM90_GEOMETRY)
    from sagecute.kernels.common.quant_qkv import QuantizeQKV

    for with_q, warpgroups in ((True, 2), (False, 3)):  # Note [Sub-splits]: K/V roles only, 1 or 2
        with pytest.raises(ValueError, match="warpgroups"):
            QuantizeQKV(cutlass.BFloat16, 128, QuantGranularity.PER_THREAD, True, SM90_GEOMETRY, 16, with_q, 1,
                        warpgroups=warpgroups)
    for stash, ring in ((0, 1), (1, 2)):  # Note [Block ring]: 2-4 slots, instead of the stash
        with pytest.raises(ValueError, match="ring"):
            QuantizeQKV(cutlass.BFloat16, 128, QuantGranularity.PER_THREAD, True, SM90_GEOMETRY, 16, False, stash,
                        ring=ring)


def test_split_plan_per_length():
    """Note [Split count], Note [Stashed blocks], Note [Sub-splits]: splits, warpgroups
    and stash per (Lk, head_dim) (what the H200 measured best: 16 splits from 64 blocks,
    32 at head_dim 64; sub-splits from 8 blocks per split, i.e. L16k)."""
    from sagecute.kernels.common.quant_qkv import splits_for, stash_for, warpgroups_for

    plans = {}
    for d in (64, 128):
        for lk in (1, 1024, 2048, 4096, 8192, 16383, 16384, 65536):
            s = splits_for(lk, d)
            w = warpgroups_for(lk, s)
            plans[lk, d] = (s, w, stash_for(lk, s, 128, w))
    long = {(lk, d): (16, 2, 1) for lk in (16383, 16384, 65536) for d in (64, 128)}
    assert plans == {(1, 64): (8, 1, 0), (1, 128): (8, 1, 0), (1024, 64): (8, 1, 0), (1024, 128): (8, 1, 0),
                     (2048, 64): (8, 1, 1), (2048, 128): (8, 1, 1), (4096, 64): (16, 1, 1), (4096, 128): (8, 1, 1),
                     (8192, 64): (16, 1, 1), (8192, 128): (16, 1, 1), **long}
    # Note [Block ring]: cp.async slots per (Lk, head_dim); the plan drops the stash and
    # sub-splits where there is a ring
    from sagecute.kernels.common.quant_qkv import ring_for

    lengths = (1024, 2048, 4096, 6144, 8192, 16383, 16384)
    rings = {(lk, d): ring_for(lk, d, splits_for(lk, d)) for lk in lengths for d in (64, 128)}
    assert rings == {(1024, 64): 0, (1024, 128): 0, (2048, 64): 0, (2048, 128): 0, (4096, 64): 0, (4096, 128): 2,
                     (6144, 64): 0, (6144, 128): 2, (8192, 64): 0, (8192, 128): 2, (16383, 64): 4,
                     (16383, 128): 0, (16384, 64): 4, (16384, 128): 0}
