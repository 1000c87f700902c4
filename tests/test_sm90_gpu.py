"""sm90 kernel on a Hopper GPU vs the torch emulation (``sagecute.reference``) and exact attention."""

from __future__ import annotations

import pytest
import torch

from sagecute.quant_layout import FP8_E4M3_MAX, FP8_SCALE_MAX_FP16_ACCUM, SM90_GEOMETRY, PvAccum, QuantGranularity

pytestmark = pytest.mark.gpu

T, W = QuantGranularity.PER_THREAD, QuantGranularity.PER_WARP
BF16, FP16 = torch.bfloat16, torch.float16

# (head_dim, causal, lq, lk, batch, hq, hkv, layout, dtype, granularity, pv_accum)
CASES = [
    (128, False, 1, 1, 1, 2, 2, "HND", BF16, T, PvAccum.FP32_FP32),
    (64, False, 17, 1000, 2, 4, 1, "NHD", FP16, W, PvAccum.FP32_FP32),
    (64, True, 127, 127, 1, 8, 1, "HND", BF16, T, PvAccum.FP32_FP32),
    (128, True, 1000, 1000, 1, 8, 1, "NHD", BF16, T, PvAccum.FP32_FP32),
    (128, False, 128, 4096, 1, 4, 4, "HND", FP16, T, PvAccum.FP32_FP32),
    (128, True, 4096, 4096, 1, 4, 1, "HND", BF16, W, PvAccum.FP32_FP32),
    (64, True, 8199, 8199, 1, 2, 2, "NHD", BF16, T, PvAccum.FP32_FP32),
    (128, False, 1000, 17, 2, 2, 2, "HND", BF16, T, PvAccum.FP32_FP32),
    (128, True, 17, 1000, 1, 4, 4, "HND", FP16, T, PvAccum.FP32_FP32),
    (128, True, 1000, 127, 1, 4, 1, "NHD", BF16, W, PvAccum.FP32_FP32),
    (64, False, 1000, 1000, 1, 4, 1, "HND", BF16, T, PvAccum.FP32),
    (128, True, 128, 128, 3, 8, 8, "HND", FP16, W, PvAccum.FP32),
    (64, True, 300, 300, 1, 2, 1, "PADDED", BF16, T, PvAccum.FP32_FP32),
    (128, False, 200, 300, 1, 2, 2, "PADDED4", FP16, T, PvAccum.FP32_FP32),
    (128, True, 1000, 1000, 1, 4, 2, "NHD", BF16, T, PvAccum.FP32_FP16),
    (64, False, 17, 4096, 2, 4, 4, "HND", FP16, W, PvAccum.FP32_FP16),
]


def _ids(c):
    d, causal, lq, lk, b, hq, hkv, layout, dtype, gran, pv = c
    return (f"d{d}-{'causal' if causal else 'full'}-q{lq}-k{lk}-b{b}-h{hq}x{hkv}-{layout}-"
            f"{str(dtype)[6:]}-{gran.value}-{pv.value}")


def run_case(d, causal, lq, lk, b, hq, hkv, layout, dtype, gran, pv, *, kind="outlier", seed=0, config=None,
             fused_q=False):  # fmt: skip
    from sagecute import reference as ref
    from sagecute.kernels.sm90.launch import attn_fwd_sm90

    dev = "cuda"
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(b, hq, lq, d, generator=g).to(dev, dtype)
    k = torch.randn(b, hkv, lk, d, generator=g)
    if kind == "outlier":
        k = k + 8.0 * torch.randn(b, hkv, 1, d, generator=g)
    k = k.to(dev, dtype)
    v = torch.randn(b, hkv, lk, d, generator=g).to(dev, dtype)
    sm_scale = d**-0.5

    km = ref.k_mean(k)
    q8, qs = ref.quantize_qk_int8(q, gran, SM90_GEOMETRY, is_k=False)
    k8, ks = ref.quantize_qk_int8(k, gran, SM90_GEOMETRY, is_k=True, mean=km)
    v_max = FP8_SCALE_MAX_FP16_ACCUM if pv is PvAccum.FP32_FP16 else FP8_E4M3_MAX  # Note [fp32+fp16 on sm90]
    v8, vs = ref.quantize_v_fp8(v, SM90_GEOMETRY, scale_max=v_max)

    if layout == "HND":
        o = torch.full((b, hq, lq, d), float("nan"), device=dev, dtype=dtype)
    elif layout == "PADDED":  # odd row stride: the kernel falls back to 16-bit stores
        o = torch.full((b, hq, lq, d + 1), float("nan"), device=dev, dtype=dtype)[..., :d]
    elif layout == "PADDED4":  # row stride not a 16-byte multiple: 32-bit stores, no TMA
        o = torch.full((b, hq, lq, d + 4), float("nan"), device=dev, dtype=dtype)[..., :d]
    else:
        o = torch.full((b, lq, hq, d), float("nan"), device=dev, dtype=dtype).transpose(1, 2)
    lse = torch.full((b, hq, lq), float("nan"), device=dev, dtype=torch.float32)
    if fused_q:  # the kernel quantizes Q (Note [Fused Q quantization]); NHD-strided for NHD cases
        q_in = q.transpose(1, 2).contiguous().transpose(1, 2) if layout == "NHD" else q
        q8, qs = q_in, None
    attn_fwd_sm90(q8, qs, k8, ks, v8, vs, o, lse, sm_scale=sm_scale, is_causal=causal,
                  granularity=gran, pv_accum=pv, config=config)
    torch.cuda.synchronize()
    # the host adds sm_scale * q . k_mean to the kernel's smoothed LSE
    kmx = km.float().repeat_interleave(hq // hkv, dim=1)
    lse = lse + sm_scale * (q.float() * kmx).sum(-1)

    # Note [Row sum on the tensor core]: the kernel's denominator
    rowsum_p8 = None if config is None else config.rowsum_mma and pv is not PvAccum.FP32
    o_ref, lse_ref = ref.sageattn_reference(q, k, v, is_causal=causal, sm_scale=sm_scale, return_lse=True,
                                            qk_quant_gran=gran.value, pv_accum_dtype=pv.value, arch="sm90",
                                            rowsum_p8=rowsum_p8)
    o_exact = ref.attention_exact(q, k, v, is_causal=causal, sm_scale=sm_scale)
    return dict(o=o, lse=lse, o_ref=o_ref, lse_ref=lse_ref, o_exact=o_exact,
                inputs=(q8, qs, k8, ks, v8, vs, sm_scale))


def _no_overlap():
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90

    return AttnFwdConfigSm90(intra_wg_overlap=False)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_sm90_vs_reference(case):
    _check(run_case(*case))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_sm90_fused_q_vs_reference(case):
    """bf16/fp16 Q quantized inside the kernel: the same bounds, and the same bits as
    the kernel fed the reference quantizer's int8 Q and scales."""
    import dataclasses

    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90

    fused = run_case(*case, fused_q=True, seed=1)
    _check(fused)
    # the same exp2 arithmetic as the fused run's tuned config (Note [Polynomial exp2])
    d, causal, lq, gran = case[0], case[1], case[2], case[9]
    poly = AttnFwdConfigSm90.tuned(d, causal, gran, True, lq).exp2_poly_every
    plain = run_case(*case, seed=1, config=dataclasses.replace(AttnFwdConfigSm90.default(d), exp2_poly_every=poly))
    assert torch.equal(fused["o"], plain["o"]), "fused Q quantization differs from the reference quantizer"


# several tiles per persistent CTA (more tiles than SMs), so the next tile's Q is loaded
# and quantized under the tile before it; lk 17: one KV block per tile (the load after
# the loop)
Q_PLACEMENT_CASES = [
    (128, False, 1000, 1000, 4, 16, 4, "NHD", BF16, T, PvAccum.FP32_FP32),
    (128, True, 2000, 1500, 2, 16, 16, "HND", BF16, W, PvAccum.FP32_FP32),
    (64, False, 1000, 17, 4, 32, 8, "HND", FP16, T, PvAccum.FP32_FP32),
    (64, True, 3000, 3000, 2, 16, 2, "NHD", BF16, T, PvAccum.FP32),
    # one tile per CTA (the first is the only one), and L=1
    (128, False, 100, 300, 1, 2, 1, "NHD", BF16, T, PvAccum.FP32_FP32),
    (64, False, 1, 77, 2, 4, 2, "HND", FP16, W, PvAccum.FP32_FP32),
]


@pytest.mark.parametrize("first_in_consumers", [True, False])
@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize("case", Q_PLACEMENT_CASES, ids=_ids)
def test_sm90_q_placement_is_bit_identical(case, pdl, first_in_consumers):
    """Note [Q quantized by the producer warpgroup] (with Note [Q one tile ahead]
    and Note [The first Q tile in the consumers]) changes which warps quantize Q and
    when it is loaded: the same bits as the consumers quantizing it, with the API's
    tuned configs (two and three consumer warpgroups, per_thread and per_warp scales,
    causal too, one tile per CTA, L=1)."""
    import dataclasses

    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90

    d, causal, lq, gran = case[0], case[1], case[2], case[9]
    cfg = dataclasses.replace(AttnFwdConfigSm90.tuned(d, causal, gran, True, lq), pdl=pdl,
                              q_quant_in_producer=False)
    moved = run_case(*case, fused_q=True, seed=2, config=dataclasses.replace(
        cfg, q_quant_in_producer=True, first_q_in_consumers=first_in_consumers))
    _check(moved)
    old = run_case(*case, fused_q=True, seed=2, config=cfg)
    assert torch.equal(moved["o"], old["o"]) and torch.equal(moved["lse"], old["lse"])


@pytest.mark.parametrize("case", [CASES[3], CASES[6], CASES[10]], ids=_ids)
def test_sm90_no_overlap_vs_reference(case):
    _check(run_case(*case, config=_no_overlap()))


CONFIG_VARIANTS = {
    # the kernel first verified on hardware: no ping-pong, I2FP + FMUL, chained reductions
    "baseline": dict(wg_pingpong=False, fused_scale_exp=False, magic_i2f=False, tree_reduce=False,
                     early_q_release=False, vec_o_store=False, tma_o_store=False),
    "no_early_q_release": dict(early_q_release=False),
    "no_pingpong": dict(wg_pingpong=False),
    "magic_i2f": dict(magic_i2f=True),
    "no_tree_reduce": dict(tree_reduce=False),
    "stages3": dict(num_stages=3),
    "no_vec_o_store": dict(vec_o_store=False, tma_o_store=False),
    "no_tma_o_store": dict(tma_o_store=False),
    "no_l2_sections": dict(l2_sections=False),
    # SageAttention2's softmax denominator (fp32 P summed in the softmax)
    "rowsum_fp32": dict(rowsum_mma=False),
}


@pytest.mark.parametrize("variant", list(CONFIG_VARIANTS))
@pytest.mark.parametrize("case", [CASES[3]], ids=_ids)
def test_sm90_config_variants_vs_reference(case, variant):
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90

    _check(run_case(*case, config=AttnFwdConfigSm90(**CONFIG_VARIANTS[variant])))


@pytest.mark.parametrize("case", [CASES[14], CASES[15]], ids=_ids)
def test_sm90_rowsum_fp32_fp16_accumulation(case):
    """The softmax-side row sum (``rowsum_mma=False``) with fp32+fp16 PV accumulation,
    against the reference with the same denominator."""
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90

    _check(run_case(*case, config=AttnFwdConfigSm90(rowsum_mma=False)))


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[6], CASES[15]], ids=_ids)
def test_sm90_three_consumer_warpgroups(case):
    """tile_m 192 (Note [Three consumer warpgroups]): causal with two masked blocks per
    tile, GQA, tails, fp32+fp16; with and without ping-pong (round robin); fused Q."""
    import dataclasses

    from sagecute.kernels.sm90.attn_fwd import THREE_CONSUMER_WG, AttnFwdConfigSm90

    cfg = AttnFwdConfigSm90(**THREE_CONSUMER_WG)
    _check(run_case(*case, config=cfg))
    _check(run_case(*case, config=cfg, fused_q=True))  # the API's kernel
    _check(run_case(*case, config=dataclasses.replace(cfg, wg_pingpong=False), fused_q=True))


def test_sm90_causal_lpt_in_several_l2_sections():
    """Lk 16k at D128 puts 8 heads in an L2 section (Note [LPT in L2 sections]): 20
    heads make 3 sections, the last one narrower."""
    _check(run_case(128, True, 1024, 16384, 1, 20, 20, "HND", BF16, T, PvAccum.FP32_FP32, kind="normal"))


def _check(r):
    from sagecute.metrics import error_metrics

    o = r["o"]
    assert not torch.isnan(o).any(), "output not fully written (NaN poison left)"
    assert not torch.isnan(r["lse"]).any(), "lse not fully written"
    vs_ref = error_metrics(o, r["o_ref"])
    ref_vs_exact = error_metrics(r["o_ref"], r["o_exact"])
    vs_exact = error_metrics(o, r["o_exact"])
    msg = f"kernel-vs-ref {vs_ref}; ref-vs-exact {ref_vs_exact}; kernel-vs-exact {vs_exact}"
    assert vs_ref.rel_l1 <= max(2e-3, 0.1 * ref_vs_exact.rel_l1), msg
    assert vs_exact.rel_l1 <= 1.1 * ref_vs_exact.rel_l1 + 1e-3, msg
    assert vs_exact.cosine >= 0.999, msg
    lse_err = (r["lse"] - r["lse_ref"]).abs().max().item()
    assert lse_err <= 2e-3 * max(1.0, r["lse_ref"].abs().max().item()), f"lse max err {lse_err}; {msg}"


def test_sm90_deterministic_and_no_recompile():
    from sagecute.kernels.sm90.launch import attn_fwd_sm90, num_compiled

    case = (128, True, 1000, 1000, 1, 4, 2, "HND", BF16, T, PvAccum.FP32_FP32)
    r = run_case(*case)
    q8, qs, k8, ks, v8, vs, sm_scale = r["inputs"]
    o2 = torch.empty_like(r["o"])
    lse2 = torch.empty_like(r["lse"])
    attn_fwd_sm90(q8, qs, k8, ks, v8, vs, o2, lse2, sm_scale=sm_scale, is_causal=True,
                  granularity=T, pv_accum=PvAccum.FP32_FP32)
    torch.cuda.synchronize()
    assert torch.equal(o2, r["o"]), "not deterministic run to run"
    # a new sequence length / batch must not recompile
    n = num_compiled()
    run_case(128, True, 777, 555, 2, 4, 2, "HND", BF16, T, PvAccum.FP32_FP32)
    assert num_compiled() == n


def test_sm90_tvm_ffi_path_matches_pointer_path():
    """The opt-in TVM-FFI launch (Note [Two launch paths] in launch.py) gives the same bits."""
    from sagecute.kernels.sm90 import launch

    if not launch.tvm_ffi_available():
        pytest.skip("tvm_ffi not installed")
    case = (128, True, 1000, 1000, 2, 4, 2, "NHD", BF16, T, PvAccum.FP32_FP32)
    try:
        launch.set_launch_path("pointer")
        r_ptr = run_case(*case)
        launch.set_launch_path("tvm-ffi")
        r_ffi = run_case(*case)
        path, why = launch.launch_path()
    finally:
        launch.set_launch_path(None)
    assert path == "tvm-ffi", why
    assert torch.equal(r_ffi["o"], r_ptr["o"])
    assert torch.equal(r_ffi["lse"], r_ptr["lse"])
