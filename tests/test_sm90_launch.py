"""Host side of the sm90 launch without a GPU: argument checks and the launch-plan
cache (the compiled kernel is a stand-in that records its arguments)."""

from __future__ import annotations

import pytest
import torch

cutlass = pytest.importorskip("cutlass")

from sagecute.kernels.sm90 import launch  # noqa: E402
from sagecute.quant_layout import LOG2E, SM90_GEOMETRY, PvAccum, QuantGranularity  # noqa: E402

T = QuantGranularity.PER_THREAD


@pytest.fixture
def calls(monkeypatch):
    """Compiles and launches seen by the stand-in TVM-FFI kernel."""
    seen = {"compiles": [], "launches": []}

    def compile_ffi(*key):
        seen["compiles"].append(key)
        return lambda *args: seen["launches"].append(args)

    monkeypatch.setattr(launch, "compile_attn_fwd_sm90_ffi", compile_ffi)
    monkeypatch.setattr(launch, "_num_sms", lambda index: 132)
    monkeypatch.setattr(launch, "_PLANS", {})
    launch.set_launch_path("tvm-ffi")
    yield seen
    launch.set_launch_path(None)


def _aligned_empty(*shape, dtype, offset=0):
    """Empty tensor whose data starts ``offset`` bytes past a 64-byte boundary."""
    n = 1
    for s in shape:
        n *= s
    buf = torch.empty(n * torch.tensor([], dtype=dtype).element_size() + 128, dtype=torch.uint8)
    start = (-buf.data_ptr()) % 64 + offset
    return buf[start : start + n * torch.tensor([], dtype=dtype).element_size()].view(dtype).view(*shape)


def _args(b=1, hq=4, hkv=2, lq=100, lk=200, d=128, *, q_offset=0, o=None, lse=True):
    g = SM90_GEOMETRY
    return dict(
        q_int8=_aligned_empty(b, hq, lq, d, dtype=torch.int8, offset=q_offset),
        q_scale=torch.empty(b, hq, g.num_q_scales(lq, T)),
        k_int8=_aligned_empty(b, hkv, lk, d, dtype=torch.int8),
        k_scale=torch.empty(b, hkv, g.num_k_scales(lk, T)),
        v_fp8=_aligned_empty(b, hkv, d, g.padded_kv_len(lk), dtype=torch.float8_e4m3fn),
        v_scale=torch.empty(b, hkv, d),
        o=_aligned_empty(b, hq, lq, d, dtype=torch.bfloat16) if o is None else o,
        lse=torch.empty(b, hq, lq) if lse else None,
    )


def _run(args, sm_scale=0.125, is_causal=False):
    launch.attn_fwd_sm90(**args, sm_scale=sm_scale, is_causal=is_causal, granularity=T, pv_accum=PvAccum.FP32_FP32)


def test_launch_args_and_plan_cache(calls):
    args = _args()
    _run(args)
    _run(args, sm_scale=0.5)
    assert len(launch._PLANS) == 1 and len(calls["compiles"]) == 1
    first, second = calls["launches"]
    assert first[4].dtype == torch.uint8 and first[4].data_ptr() == args["v_fp8"].data_ptr()
    assert first[8] is None and first[9] is None and first[10] is None  # v_mean, q_mean, delta_s: no smoothing
    assert first[11] == pytest.approx(0.125 * LOG2E) and second[11] == pytest.approx(0.5 * LOG2E)
    assert first[12] == 132  # persistent grid capped at the SM count
    # a new sequence length is a new plan, not a new kernel
    _run(_args(lq=33, lk=1000))
    assert len(launch._PLANS) == 2 and calls["compiles"][0] == calls["compiles"][-1]


def test_checks_still_run_with_a_cached_plan(calls):
    _run(_args())
    with pytest.raises(ValueError, match="q_int8 must be 16-byte aligned"):
        _run(_args(q_offset=1))  # same signature, misaligned base
    bad = _args()
    bad["q_scale"] = bad["q_scale"].double()
    with pytest.raises(ValueError, match="q_scale must be torch.float32"):
        _run(bad)
    bad = _args()
    bad["lse"] = torch.empty(1, 4, 99)
    with pytest.raises(ValueError, match="lse must be"):
        _run(bad)
    bad = _args()
    bad["q_scale"] = None  # int8 q needs its scales
    with pytest.raises(ValueError, match="q_scale is None but q is int8"):
        _run(bad)
    assert len(calls["launches"]) == 1


def test_odd_output_strides_use_16_bit_stores(calls):
    o = _aligned_empty(1, 4, 100, 129, dtype=torch.bfloat16)[..., :128]  # odd row stride
    _run(_args(o=o))
    _run(_args())
    odd, even = calls["compiles"]
    assert odd[6].vec_o_store is False and even[6].vec_o_store is True  # key[6]: the config
    assert odd[6].tma_o_store is False and even[6].tma_o_store is True


def test_output_strides_not_16_byte_multiples_use_32_bit_stores(calls):
    o = _aligned_empty(1, 4, 100, 130, dtype=torch.bfloat16)[..., :128]  # row stride 260 bytes
    _run(_args(o=o))
    (key,) = calls["compiles"]
    assert key[6].tma_o_store is False and key[6].vec_o_store is True


def test_empty_problem_launches_nothing(calls):
    _run(_args(lq=0))
    assert not calls["launches"] and not calls["compiles"]


def test_launch_path_falls_back_once_with_a_warning(monkeypatch):
    from sagecute.launch_path import LaunchPath

    monkeypatch.setattr("sagecute.launch_path.tvm_ffi_available", lambda: True)
    path, ran = LaunchPath("x", "SAGECUTE_TEST_TVM_FFI"), []

    def broken():
        raise RuntimeError("no")

    path.launch(lambda: ran.append("ffi"), lambda: ran.append("pointer"))
    with pytest.warns(UserWarning, match="TVM-FFI call failed: RuntimeError: no"):
        path.launch(broken, lambda: ran.append("pointer"))
    path.launch(broken, lambda: ran.append("pointer"))  # stays on the pointer path
    assert ran == ["ffi", "pointer", "pointer"] and path.current()[0] == "pointer"


def test_fused_q_launch(calls):
    """bf16 Q with no q_scale: the kernel quantizes Q (Note [Fused Q quantization])."""
    args = _args()
    args["q_int8"] = _aligned_empty(*args["q_int8"].shape, dtype=torch.bfloat16)
    args["q_scale"] = None
    _run(args)
    (key,) = calls["compiles"]
    assert key[7] is cutlass.BFloat16  # q dtype (then smooth_v)
    assert calls["launches"][0][1] is None
    with pytest.raises(ValueError, match="fused Q"):
        launch.attn_fwd_sm90(**args, sm_scale=0.1, is_causal=False, granularity=QuantGranularity.PER_BLOCK,
                             pv_accum=PvAccum.FP32_FP32)  # fmt: skip


def test_v_mean_is_passed_and_checked(calls):
    """smooth_v (Note [V mean]): v_mean reaches the kernel, selects its own variant,
    and a wrong shape or dtype names the argument."""
    args = _args()
    _run(args)
    vm = torch.empty(1, 2, 128)
    launch.attn_fwd_sm90(**args, v_mean=vm, sm_scale=0.1, is_causal=False, granularity=T,
                         pv_accum=PvAccum.FP32_FP32)
    assert calls["launches"][-1][8] is vm
    assert len(calls["compiles"]) == 2 and calls["compiles"][0][-2] is False and calls["compiles"][1][-2] is True
    for bad in (torch.empty(1, 2, 64), torch.empty(1, 2, 128, dtype=torch.float16)):
        with pytest.raises(ValueError, match="v_mean"):
            launch.attn_fwd_sm90(**args, v_mean=bad, sm_scale=0.1, is_causal=False, granularity=T,
                                 pv_accum=PvAccum.FP32_FP32)


def test_smooth_q_is_passed_and_checked(calls):
    """smooth_q (Note [smooth_q on sm90]): q_mean and delta_s reach the kernel, select
    its own variant with its spill-free config, and bad ones name the argument."""
    args = _args()
    args["q_int8"] = _aligned_empty(*args["q_int8"].shape, dtype=torch.bfloat16)
    args["q_scale"] = None
    b, hq, _, d = args["q_int8"].shape
    lpad = args["v_fp8"].shape[-1]
    qm, delta = _aligned_empty(b, hq, 1, d, dtype=torch.bfloat16), _aligned_empty(b, hq, lpad, dtype=torch.float32)
    kw = dict(sm_scale=0.1, is_causal=False, granularity=T, pv_accum=PvAccum.FP32_FP32)
    launch.attn_fwd_sm90(**args, q_mean=qm, delta_s=delta, **kw)
    (key,) = calls["compiles"]
    assert key[-1] is True and key[6].tile_m == 128 and key[6].promote_before_softmax and not key[6].pdl
    assert calls["launches"][-1][9] is qm and calls["launches"][-1][10] is delta
    with pytest.raises(ValueError, match="both q_mean and delta_s"):
        launch.attn_fwd_sm90(**args, q_mean=qm, **kw)
    with pytest.raises(ValueError, match="delta_s must be"):
        launch.attn_fwd_sm90(**args, q_mean=qm, delta_s=delta[..., :128], **kw)
    with pytest.raises(ValueError, match="q_mean must be"):
        launch.attn_fwd_sm90(**args, q_mean=qm.float(), delta_s=delta, **kw)
    int8 = _args()
    with pytest.raises(ValueError, match="fused Q"):
        launch.attn_fwd_sm90(**int8, q_mean=qm, delta_s=delta, **kw)
