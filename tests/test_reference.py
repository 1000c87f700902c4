"""The torch oracles: quantizer contract and emulation accuracy (CPU)."""

import math

import pytest
import torch
import torch.nn.functional as F
from tolerances import error_metrics, make_qkv

from sagecute import reference as R
from sagecute.quant_layout import (
    INT8_AMAX_FLOOR,
    SM89_GEOMETRY,
    SM90_GEOMETRY,
    V_TOKEN_PERM,
    QuantGranularity,
)

GRANS = [QuantGranularity.PER_THREAD, QuantGranularity.PER_WARP, QuantGranularity.PER_BLOCK]


# --------------------------------------------------------------------------
# Quantizers
# --------------------------------------------------------------------------
@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("is_k", [False, True])
@pytest.mark.parametrize("length", [1, 17, 128, 300])
@pytest.mark.parametrize("geom", [SM90_GEOMETRY, SM89_GEOMETRY])
def test_int8_groups_follow_layout(gran, is_k, length, geom):
    """Every scale is its group's amax / 127, groups as quant_layout defines them."""
    x = torch.randn(1, 2, length, 64, dtype=torch.bfloat16) * torch.rand(1, 2, length, 1).bfloat16() * 10
    x8, scale = R.quantize_qk_int8(x, gran, geom, is_k=is_k)
    n = geom.num_k_scales(length, gran) if is_k else geom.num_q_scales(length, gran)
    assert x8.shape == x.shape and x8.dtype == torch.int8 and x8.is_contiguous()
    assert scale.shape == (1, 2, n) and scale.dtype == torch.float32
    index = geom.k_scale_index if is_k else geom.q_scale_index
    amax = torch.full((1, 2, n), INT8_AMAX_FLOOR)
    for row in range(length):
        g = index(row, gran)
        amax[..., g] = torch.maximum(amax[..., g], x[:, :, row].float().abs().amax(-1))
    torch.testing.assert_close(scale, amax / torch.full_like(amax, 127), rtol=0, atol=0)  # IEEE
    # Round to nearest: dequantization error at most half a step.
    rows = torch.tensor([index(r, gran) for r in range(length)])
    step = scale[:, :, rows].unsqueeze(-1)
    err = (x.float() - x8.float() * step).abs()
    assert (err <= step * 0.5001).all(), (err / step).max()
    assert x8.abs().max() <= 127


def test_int8_zero_and_smoothing():
    k = torch.zeros(1, 1, 130, 64, dtype=torch.float16)
    k8, ks = R.quantize_qk_int8(k, QuantGranularity.PER_THREAD, is_k=True)
    assert (k8 == 0).all() and torch.isfinite(ks).all() and (ks > 0).all()
    k = torch.randn(2, 3, 77, 64, dtype=torch.bfloat16) + 50
    km = R.k_mean(k)
    assert km.shape == (2, 3, 1, 64) and km.dtype == k.dtype
    k8, ks = R.quantize_qk_int8(k, QuantGranularity.PER_WARP, is_k=True, mean=km)
    deq = k8.float() * ks[:, :, torch.arange(77) // 128].unsqueeze(-1)
    assert (deq - (k.float() - km.float())).abs().max() < 0.1


def test_int8_rounds_half_to_even():
    x = torch.zeros(1, 1, 1, 64)
    x[..., 0] = 127.0  # scale exactly 1
    x[..., 1:4] = torch.tensor([2.5, 3.5, -2.5])
    x8, scale = R.quantize_qk_int8(x, QuantGranularity.PER_BLOCK, is_k=False)
    assert scale.item() == 1.0
    assert x8[0, 0, 0, :4].tolist() == [127, 2, 4, -2]


@pytest.mark.parametrize("length", [1, 16, 129, 1000])
def test_v_fp8_layout_roundtrip(length):
    v = torch.randn(2, 2, length, 64, dtype=torch.bfloat16) * 3
    v[0, 0, :, 5] = 0  # an all-zero channel must not give NaN
    v8, vs = R.quantize_v_fp8(v, SM90_GEOMETRY)
    lp = SM90_GEOMETRY.padded_kv_len(length)
    assert v8.shape == (2, 2, 64, lp) and v8.dtype == torch.float8_e4m3fn
    assert vs.shape == (2, 2, 64)
    assert vs[0, 0, 5] == 0 and torch.isfinite(v8.float()).all()
    assert v8.float().abs().max() <= 448
    # Token permutation within every 16: position p holds token V_TOKEN_PERM[p].
    amax = v.float().abs().amax(dim=2)
    c = torch.full_like(amax, 448)  # tensor / tensor: IEEE, as the contract says
    torch.testing.assert_close(vs, amax / c, rtol=0, atol=0)
    inv = torch.where(amax > 0, c / amax, torch.zeros_like(amax))
    plain = R.e4m3_round(v.float() * inv.unsqueeze(2))
    vt = F.pad(plain.transpose(2, 3), (0, lp - length))
    p = torch.tensor(V_TOKEN_PERM)
    for g in range(lp // 16):
        assert torch.equal(v8.float()[..., g * 16 : (g + 1) * 16], vt[..., g * 16 + p])
    assert torch.equal(R.unpermute_v_fp8(v8, length), vt[..., :length].transpose(2, 3))
    assert (v8.float()[..., -(-length // 16) * 16 :] == 0).all()  # whole padding groups are zero


@pytest.mark.parametrize("kind", ["biased", "positive", "negative", "const", "fp16max"])
def test_v_mean_amax_identity(kind):
    """Note [V mean] (kernels/common/quant_qkv.py): the kernel's scale comes from
    max(max - mean, mean - min) in fp32, which must equal the reference's amax of
    |v - mean| bit for bit on any input (rounding is monotonic and odd)."""
    g = torch.Generator().manual_seed(5)
    v = torch.randn(2, 3, 777, 64, generator=g)
    if kind == "biased":
        v = v + 4 * torch.randn(2, 3, 1, 64, generator=g)
    elif kind == "positive":
        v = v.abs() + 10.0
    elif kind == "negative":
        v = -v.abs() - 3.0
    elif kind == "const":
        v = torch.full_like(v, -0.3)
    else:
        v = v.clamp(-1, 1) * 65000.0
    vf = v.to(torch.float16 if kind == "fp16max" else torch.bfloat16).float()
    mean = vf.sum(dim=2) / torch.full_like(vf[:, :, 0], vf.shape[2])  # some fp32 mean
    want = (vf - mean.unsqueeze(2)).abs().amax(dim=2)
    got = torch.maximum(vf.amax(dim=2) - mean, mean + (-vf).amax(dim=2))
    assert torch.equal(got, want)
    _, vs = R.quantize_v_fp8(vf, SM90_GEOMETRY, mean=mean)
    assert torch.equal(vs, want / torch.full_like(want, 448.0))


def test_e4m3_saturates_and_e2m1_ties():
    assert R.e4m3_round(torch.tensor([480.0, -1e6, 448.0])).tolist() == [448.0, -448.0, 448.0]
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.75])
    assert R.e2m1_round(x).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -1.0]


def test_nvfp4_roundtrip_bound():
    x = torch.randn(4, 256) * 5
    payload, s = R.quantize_nvfp4(x)
    assert s.shape == (4, 16)
    deq = R.dequantize_nvfp4(payload, s)
    rel = (deq - x).norm() / x.norm()
    assert rel < 0.15
    zero_p, zero_s = R.quantize_nvfp4(torch.zeros(1, 16))
    assert (zero_p == 0).all() and (zero_s == 0).all()


# --------------------------------------------------------------------------
# Exact attention
# --------------------------------------------------------------------------
@pytest.mark.parametrize("lq,lk", [(7, 33), (33, 7), (64, 64)])
def test_exact_matches_sdpa_top_left_causal(lq, lk):
    q, k, v = make_qkv(1, 2, 2, lq, lk, 64, dtype=torch.float32)
    o = R.attention_exact(q, k, v, is_causal=True)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    torch.testing.assert_close(o, ref)


# --------------------------------------------------------------------------
# Emulation accuracy (the numbers the SageAttention papers report)
# --------------------------------------------------------------------------
def _err(kind, arch="sm90", lq=512, lk=512, d=128, **kw):
    q, k, v = make_qkv(1, 4, 4, lq, lk, d, kind=kind)
    causal = kw.pop("is_causal", False)
    ref = R.attention_exact(q, k, v, is_causal=causal)
    out = R.sageattn_reference(q, k, v, is_causal=causal, arch=arch, **kw)
    return error_metrics(out, ref)


@pytest.mark.parametrize("arch", ["sm90", "sm89"])
def test_int8_fp8_emulation_error_in_paper_range(arch):
    normal = _err("normal", arch)
    assert normal.rel_l1 < 0.05 and normal.cosine > 0.998, normal
    outlier = _err("outlier", arch)
    assert outlier.rel_l1 < 0.05 and outlier.cosine > 0.998, outlier
    peaked = _err("peaked", arch)
    assert peaked.rel_l1 < 0.03 and peaked.cosine > 0.999, peaked


@pytest.mark.parametrize("arch", ["sm90", "sm89", "sm120"])
def test_k_smoothing_reduces_outlier_error(arch):
    smoothed = _err("outlier", arch, smooth_k=True)
    raw = _err("outlier", arch, smooth_k=False)
    assert smoothed.rel_l1 < 0.8 * raw.rel_l1, (smoothed, raw)


@pytest.mark.parametrize("pv", ["fp32+fp32", "fp32+fp16"])
def test_v_smoothing_reduces_v_bias_error(pv):
    """smooth_v (Note [V mean]): on V channel biases the FP8 V keeps more of the
    part that varies; the mean comes back exactly through the softmax row sum."""
    smoothed = _err("outlier_kv", "sm90", smooth_v=True, pv_accum_dtype=pv)
    raw = _err("outlier_kv", "sm90", smooth_v=False, pv_accum_dtype=pv)
    assert smoothed.rel_l1 < 0.95 * raw.rel_l1, (smoothed, raw)


def test_q_smoothing_with_delta_s_reduces_error():
    q, k, v = make_qkv(1, 4, 4, 300, 300, 128)
    q = (q.float() + 6 * torch.randn(1, 4, 1, 128)).bfloat16()  # a shared offset per channel
    ref = R.attention_exact(q, k, v)
    plain = error_metrics(R.sageattn_reference(q, k, v, smooth_q=False), ref)
    smooth = error_metrics(R.sageattn_reference(q, k, v, smooth_q=True), ref)
    assert smooth.rel_l1 < plain.rel_l1, (smooth, plain)
    fp4 = error_metrics(R.sageattn_reference(q, k, v, smooth_q=True, arch="sm120"), ref)
    assert fp4.cosine > 0.95


def test_fp4_emulation_error():
    m = _err("normal", "sm120")
    assert m.cosine > 0.97 and m.rel_l1 < 0.25, m
    m = _err("peaked", "sm100")
    assert m.cosine > 0.99, m


@pytest.mark.parametrize("pv", ["fp32+fp32", "fp32", "fp32+fp16"])
@pytest.mark.parametrize("gran", ["per_thread", "per_warp"])
def test_modes_run_and_agree(pv, gran):
    m = _err("outlier", pv_accum_dtype=pv, qk_quant_gran=gran, lq=200, lk=300)
    assert m.rel_l1 < 0.05 and m.cosine > 0.998, m


@pytest.mark.parametrize("lq,lk", [(1, 1), (1, 300), (300, 1), (130, 257), (257, 130)])
@pytest.mark.parametrize("causal", [False, True])
def test_lengths_causal_and_lse(lq, lk, causal):
    q, k, v = make_qkv(2, 4, 2, lq, lk, 64, kind="outlier")
    ref, lse_ref = R.attention_exact(q, k, v, is_causal=causal, return_lse=True)
    out, lse = R.sageattn_reference(q, k, v, is_causal=causal, return_lse=True)
    assert out.shape == q.shape and lse.shape == (2, 4, lq) and lse.dtype == torch.float32
    assert torch.isfinite(out.float()).all() and torch.isfinite(lse).all()
    m = error_metrics(out, ref)
    assert m.cosine > 0.995, m
    # LSE of the *unsmoothed* scores: the q . k_mean correction is added back.
    assert (lse - lse_ref).abs().max() < 0.05


def test_gqa_equals_repeated_heads():
    q, k, v = make_qkv(1, 8, 2, 100, 150, 64)
    out = R.sageattn_reference(q, k, v)
    rep = R.sageattn_reference(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1))
    assert torch.equal(out, rep)


def test_layouts_agree_and_head_dim_padding():
    q, k, v = make_qkv(1, 2, 2, 70, 90, 80)
    hnd = R.sageattn_reference(q, k, v, is_causal=True)
    nhd = R.sageattn_reference(*(t.transpose(1, 2) for t in (q, k, v)), tensor_layout="NHD", is_causal=True)
    assert torch.equal(hnd, nhd.transpose(1, 2))
    assert hnd.shape[-1] == 80
    m = error_metrics(hnd, R.attention_exact(q, k, v, is_causal=True))
    assert m.cosine > 0.998
    with pytest.raises(NotImplementedError, match="head_dim 256"):
        R.sageattn_reference(*make_qkv(1, 1, 1, 8, 8, 256))


def test_sm_scale_is_honoured():
    q, k, v = make_qkv(1, 2, 2, 64, 64, 64, kind="peaked")
    for scale in (0.05, 0.3):
        m = error_metrics(R.sageattn_reference(q, k, v, sm_scale=scale), R.attention_exact(q, k, v, sm_scale=scale))
        assert m.cosine > 0.998, (scale, m)
    assert not math.isclose(
        R.sageattn_reference(q, k, v, sm_scale=0.05).float().norm(), R.sageattn_reference(q, k, v, sm_scale=0.3).float().norm()
    )
