"""sm90 kernel compiles for sm_90a without a GPU (CUTE_DSL_ARCH=sm_90a) and its SASS
has the expected shape: IGMMA (int8 QK), QGMMA (fp8 PV), TMA loads, no spills."""

from __future__ import annotations

import dataclasses
import os

import pytest

cutlass = pytest.importorskip("cutlass")

from sagecute.quant_layout import PvAccum, QuantGranularity  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _arch_sm90():
    old = os.environ.get("CUTE_DSL_ARCH")
    os.environ["CUTE_DSL_ARCH"] = "sm_90a"
    try:
        from cutlass.cutlass_dsl import CuTeDSL

        env = CuTeDSL._get_dsl().envar
        saved = env.arch
        env.arch = "sm_90a"
    except Exception:  # noqa: BLE001
        env = saved = None
    yield
    if env is not None and saved is not None:
        env.arch = saved
    if old is None:
        os.environ.pop("CUTE_DSL_ARCH", None)
    else:
        os.environ["CUTE_DSL_ARCH"] = old


def _variants():
    from sagecute.kernels.sm90.attn_fwd import THREE_CONSUMER_WG, AttnFwdConfigSm90
    from sagecute.kernels.sm90.launch import Sm90Variant as V

    T, W = QuantGranularity.PER_THREAD, QuantGranularity.PER_WARP
    cfg = AttnFwdConfigSm90()
    return [
        V(cutlass.BFloat16, 128, False, T, PvAccum.FP32_FP32, True, cfg),
        V(cutlass.BFloat16, 128, True, W, PvAccum.FP32_FP32, False, cfg),
        V(cutlass.Float16, 64, True, T, PvAccum.FP32_FP32, True, cfg),
        V(cutlass.BFloat16, 64, False, W, PvAccum.FP32, False, cfg),
        # Q quantized in the kernel (Note [Fused Q quantization]): the API's path
        V(cutlass.BFloat16, 128, False, T, PvAccum.FP32_FP32, True, cfg, cutlass.BFloat16),
        V(cutlass.Float16, 64, True, W, PvAccum.FP32_FP32, False, cfg, cutlass.Float16),
        # the API's launch after the preprocessing (PDL), fp16 PV accumulators
        V(cutlass.BFloat16, 128, True, T, PvAccum.FP32_FP16, True, dataclasses.replace(cfg, pdl=True),
          cutlass.BFloat16),
        # three consumer warpgroups at 160 registers (Note [Three consumer warpgroups])
        V(cutlass.BFloat16, 64, True, T, PvAccum.FP32, False, dataclasses.replace(cfg, tile_m=192, mainloop_unroll=1),
          cutlass.BFloat16),
        # smooth_v: the V mean added back in the epilogue (Note [V mean] in kernels/common/quant_qkv.py)
        V(cutlass.BFloat16, 128, False, T, PvAccum.FP32_FP32, True, dataclasses.replace(cfg, pdl=True),
          cutlass.BFloat16, True),
        # Note [Q quantized by the producer warpgroup]: per_warp scales; three consumer warpgroups
        V(cutlass.BFloat16, 128, True, W, PvAccum.FP32_FP32, False,
          dataclasses.replace(cfg, pdl=True, q_quant_in_producer=True), cutlass.BFloat16),
        V(cutlass.BFloat16, 64, False, T, PvAccum.FP32_FP32, False,
          AttnFwdConfigSm90(**THREE_CONSUMER_WG, pdl=True, q_quant_in_producer=True), cutlass.BFloat16),
    ]


@pytest.mark.parametrize("variant", range(11))
def test_sm90_compiles_without_spills(variant, tmp_path):
    from sagecute.kernels.sm90.launch import compile_one_to_cubin

    v = _variants()[variant]
    r = compile_one_to_cubin(v, str(tmp_path))
    assert r.ok, r.problem
    assert r.cubin, "no cubin was dumped"
    raw = r.summary["raw"]
    if "error" in raw:
        pytest.skip(f"nvdisasm unavailable: {raw['error']}")
    s = r.summary["sass"]
    head_dim = v.head_dim
    assert s["IGMMA"] > 0 and s["IGMMA"] % (head_dim // 32) == 0, s  # k32 steps over D
    assert s["QGMMA"] > 0 and s["QGMMA"] % 4 == 0, s  # tile_n 128 = 4 k32 steps
    assert s["HGMMA"] == 0, s
    assert s["UTMALDG"] >= 3, s  # Q, K, V^T
    assert s["MUFU.EX2"] > 0, s
    assert s["USETMAXREG"] == 2, s
    assert r.summary["spills"] == 0 and r.summary["local_bytes"] == 0, r.summary
    assert r.summary["smem_bytes"] <= 227 * 1024
    if v.q_dtype is not cutlass.Int8:  # fused Q: 16-byte bf16 reads of the Q tile
        assert raw["LDS.128"] >= 2 * (head_dim // 32), raw


def test_sm90_can_implement():
    from sagecute.kernels.sm90.launch import can_implement

    assert can_implement(128, "bfloat16")[0]
    assert can_implement(64, "float16", QuantGranularity.PER_WARP, PvAccum.FP32)[0]
    ok, why = can_implement(96, "bfloat16")
    assert not ok and "head_dim" in why
    ok, why = can_implement(128, "float32")
    assert not ok and "dtype" in why
    assert can_implement(128, "bfloat16", pv_accum=PvAccum.FP32_FP16)[0]  # Note [fp32+fp16 on sm90]
    from sagecute.kernels.sm90.attn_fwd import SageAttnFwdSm90

    ok, why = SageAttnFwdSm90.can_implement(
        cutlass.BFloat16, 128, QuantGranularity.PER_BLOCK, PvAccum.FP32_FP32, cutlass.BFloat16
    )
    assert not ok and "fused Q" in why


def test_sm90_config_validation():
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90

    with pytest.raises(ValueError, match="tile_n"):
        AttnFwdConfigSm90(tile_n=64)
    with pytest.raises(ValueError, match="tile_m"):
        AttnFwdConfigSm90(tile_m=64)
    assert AttnFwdConfigSm90() in AttnFwdConfigSm90.all_configs()
    with pytest.raises(ValueError, match="magic_i2f"):
        AttnFwdConfigSm90(magic_i2f=True, fused_scale_exp=False)


def test_sm90_compile_all_quick():
    from sagecute.kernels.sm90.launch import compile_all_sm90

    results = compile_all_sm90(quick=True)
    assert len(results) == 2 and all(r.ok for r in results), [(r.name, r.problem) for r in results]
    assert all(r.summary["sass"]["QGMMA"] > 0 for r in results)


def test_sm90_tvm_ffi_entry_compiles():
    from sagecute.kernels.sm90 import launch
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90

    if not launch.tvm_ffi_available():
        pytest.skip("tvm_ffi not installed")
    fn = launch.compile_attn_fwd_sm90_ffi(
        cutlass.BFloat16, 128, True, QuantGranularity.PER_THREAD, PvAccum.FP32_FP32, True, AttnFwdConfigSm90()
    )
    assert fn is not None


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("is_causal", [False, True])
def test_length_class_picks_the_same_config(head_dim, is_causal):
    """The API caches configs by ``AttnFwdConfigSm90.length_class``: a class's
    representative must get the config of every length in the class."""
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90 as C

    assert set(C.length_class(n) for n in range(0, 70000, 97)) <= set(C.length_classes())
    for gran in QuantGranularity:
        for lq in (1, 17, 1000, 2047, 2048, 2049, 8192, 100000):
            rep = C.length_class(lq)
            assert C.after_preprocess(head_dim, is_causal, gran, lq) == C.after_preprocess(head_dim, is_causal, gran, rep)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_producer_q_quantization_where_it_pays(head_dim):
    """Note [Q quantized by the producer warpgroup]: the API's configs quantize Q on the
    producer warps without a mask only; smooth_q and an int8 Q keep it off in the kernel."""
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90 as C
    from sagecute.kernels.sm90.attn_fwd import SageAttnFwdSm90

    T = QuantGranularity.PER_THREAD
    assert C.after_preprocess(head_dim, False, T, 1024).q_quant_in_producer
    assert not C.after_preprocess(head_dim, True, T, 1024).q_quant_in_producer
    assert not C.tuned(head_dim, False, T, fused_q=False).q_quant_in_producer

    def kernel(cfg, q_dtype=cutlass.BFloat16, smooth_q=False):
        return SageAttnFwdSm90(cutlass.BFloat16, head_dim, False, T, PvAccum.FP32_FP32, False, cfg,
                               q_dtype=q_dtype, smooth_q=smooth_q)

    on = C(q_quant_in_producer=True)
    k = kernel(on)
    assert k.q_in_producer and k.q_prefetch and k.q_stages == 2 and k.early_q_release
    assert k.smem_bytes() - kernel(C()).smem_bytes() == 128 * head_dim + 128 * 4  # the second int8 stage
    for k in (kernel(on, smooth_q=True), kernel(on, q_dtype=cutlass.Int8)):
        assert not k.q_in_producer and not k.q_prefetch and k.q_stages == 1
        assert not k.first_q_in_consumers
    # Note [The first Q tile in the consumers]: on with the producer warps' quantization
    assert kernel(on).first_q_in_consumers
    assert not kernel(C(q_quant_in_producer=True, first_q_in_consumers=False)).first_q_in_consumers
    assert not kernel(C()).first_q_in_consumers
