"""Public API on the CPU: validation, layouts, fallback, torch.compile, varlen."""

import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from tolerances import error_metrics, make_qkv

import sagecute
from sagecute import api, dispatch, reference


def _qkv(**kw):
    args = dict(b=2, hq=4, hkv=2, lq=33, lk=47, d=64)
    args.update(kw)
    return make_qkv(args.pop("b"), args.pop("hq"), args.pop("hkv"), args.pop("lq"), args.pop("lk"), args.pop("d"), **args)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda q, k, v: (q.float(), k, v), TypeError, "q must be torch.float16 or torch.bfloat16"),
        (lambda q, k, v: (q, k.half(), v), TypeError, "share one dtype"),
        (lambda q, k, v: (q[0], k, v), ValueError, "q must be 4-D"),
        (lambda q, k, v: ([1.0], k, v), TypeError, "q must be a torch.Tensor"),
        (lambda q, k, v: (q, k, v[:1]), ValueError, "same shape"),
        (lambda q, k, v: (q[:1], k, v), ValueError, "same batch"),
        (lambda q, k, v: (q[..., :32], k, v), ValueError, "same head_dim"),
        (lambda q, k, v: (q[:, :3], k, v), ValueError, "multiple of the number of k/v heads"),
        (lambda q, k, v: (q.transpose(-1, -2).contiguous().transpose(-1, -2), k, v), ValueError, "contiguous last dimension"),
        (lambda q, k, v: (q, k[:, :, :0], v[:, :, :0]), ValueError, "at least one token"),
    ],
)
def test_bad_tensors(mutate, exc, match):
    q, k, v = _qkv()
    with pytest.raises(exc, match=match):
        sagecute.sageattn(*mutate(q, k, v))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"tensor_layout": "BHLD"}, ValueError, "tensor_layout"),
        ({"qk_quant_gran": "per_tensor"}, ValueError, "qk_quant_gran"),
        ({"pv_accum_dtype": "fp16"}, ValueError, "pv_accum_dtype"),
        ({"smooth_k": 1}, TypeError, "smooth_k must be a bool"),
        ({"sm_scale": -1.0}, ValueError, "sm_scale"),
        ({"sm_scale": "x"}, TypeError, "sm_scale"),
        ({"is_causal": "yes"}, TypeError, "is_causal"),
        ({"backend": "cuda"}, ValueError, "backend"),
        ({"dropout": 0.1}, TypeError, "unexpected keyword"),
        ({"backend": "sm90"}, NotImplementedError, "needs a sm90 GPU"),
    ],
)
def test_bad_options(kwargs, exc, match):
    q, k, v = _qkv()
    with pytest.raises(exc, match=match):
        sagecute.sageattn(q, k, v, **kwargs)


def test_bad_varlen():
    q = torch.randn(10, 2, 64, dtype=torch.bfloat16)
    good = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(ValueError, match="non-decreasing"):
        sagecute.sageattn_varlen(q, q, q, torch.tensor([0, 6, 4, 10]), good, 6, 6)
    with pytest.raises(ValueError, match="must equal the number of packed tokens"):
        sagecute.sageattn_varlen(q, q, q, torch.tensor([0, 4, 9]), good, 6, 6)
    with pytest.raises(TypeError, match="int32/int64"):
        sagecute.sageattn_varlen(q, q, q, good.float(), good, 6, 6)
    with pytest.raises(ValueError, match="max_seqlen_q"):
        sagecute.sageattn_varlen(q, q, q, good, good, 3, 6)


def test_cached_call_plan_still_validates(monkeypatch):
    """A call signature seen before skips validation; anything that differs is checked again."""
    monkeypatch.setattr(api, "_PLANS", {})
    q, k, v = _qkv(hkv=4)
    good = dict(is_causal=True, sm_scale=1.0, smooth_k=True, backend="sdpa")
    sagecute.sageattn(q, k, v, **good)
    sagecute.sageattn(q, k, v, **good)
    assert len(api._PLANS) == 1
    bad = [
        (dict(good, is_causal=1), TypeError, "is_causal must be a bool"),  # 1 == True, yet not a bool
        (dict(good, sm_scale=True), TypeError, "sm_scale"),
        (dict(good, smooth_k=1), TypeError, "smooth_k must be a bool"),
        (dict(good, smooth_k=[True]), TypeError, "smooth_k must be a bool"),  # unhashable
    ]
    for kw, exc, match in bad:
        with pytest.raises(exc, match=match):
            sagecute.sageattn(q, k, v, **kw)
    with pytest.raises(TypeError, match="share one dtype"):
        sagecute.sageattn(q, k.half(), v, **good)
    with pytest.raises(ValueError, match="one device"):
        sagecute.sageattn(q, k.to("meta"), v, **good)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        sagecute.sageattn(q, k.float().numpy(), v, **good)
    assert len(api._PLANS) == 1


def test_fast_call_serves_no_cpu_call_and_remembers_it(monkeypatch):
    """Note [Fast call]: only CUDA inputs on the sm90 backend; a plan it cannot serve
    is marked once (False), and the normal path answers."""
    from sagecute import fast_call
    from sagecute.quant_layout import PvAccum, QuantGranularity

    monkeypatch.setattr(api, "_PLANS", {})
    q, k, v = _qkv(hkv=4)
    assert fast_call.build(q, k, v, "HND", False, 0.1, QuantGranularity.PER_THREAD, PvAccum.FP32_FP32, True, False,
                           None) is None
    o = sagecute.sageattn(q, k, v, backend="sdpa")
    (plan,) = api._PLANS.values()
    assert plan.fast is False and o.shape == q.shape


def test_sm90_host_path_layouts_padding_lse(monkeypatch):
    """The API around the sm90 kernel, without a GPU: the kernel is a stand-in that
    copies the INT8 Q payload to o, so o shows where each row and channel went."""
    from sagecute.kernels.sm90 import support

    monkeypatch.setattr(api, "_PLANS", {})
    monkeypatch.setattr(dispatch, "device_arch", lambda device: "sm90")
    monkeypatch.setattr(support, "_kernel_available", lambda: True)
    seen = []

    def attn_fwd_sm90(q8, qs, k8, ks, v8, vs, o, lse, **kw):
        seen.append(kw)
        o.copy_(q8)
        lse.zero_()

    monkeypatch.setattr(api, "_sm90_launch", lambda: types.SimpleNamespace(attn_fwd_sm90=attn_fwd_sm90))
    q, k, v = _qkv(d=80, layout="NHD", kind="outlier")  # head_dim 80 runs padded to 128
    for _ in range(2):
        o, lse = sagecute.sageattn(q, k, v, "NHD", is_causal=True, return_lse=True, backend="sm90")
    assert len(api._PLANS) == 1 and len(seen) == 2 and seen[0]["is_causal"] is True
    qh, kh = (reference._pad_last(reference.to_hnd(t, "NHD"), 128) for t in (q, k))
    q8 = reference.quantize_qk_int8(qh, sagecute.QuantGranularity.PER_THREAD, reference.SM90_GEOMETRY, is_k=False)[0]
    assert o.shape == q.shape and o.is_contiguous()
    assert torch.equal(o, reference.from_hnd(q8[..., :80].to(q.dtype), "NHD"))
    corr = reference.lse_smoothing_correction(reference.to_hnd(q, "NHD"), reference.k_mean(kh), 80**-0.5)
    torch.testing.assert_close(lse, corr)


# --------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", "reference", "sdpa"])
def test_never_mutates_inputs(backend):
    q, k, v = _qkv(kind="outlier")
    before = [t.clone() for t in (q, k, v)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sagecute.sageattn(q, k, v, is_causal=True, return_lse=True, backend=backend, smooth_q=True)
    for t, b in zip((q, k, v), before):
        assert torch.equal(t, b)


def test_fallback_warns_once_and_matches_sdpa():
    dispatch._warned.clear()
    q, k, v = _qkv(hkv=4)
    with pytest.warns(RuntimeWarning, match="falling back to scaled_dot_product_attention"):
        o = sagecute.sageattn(q, k, v, is_causal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sagecute.sageattn(q, k, v, is_causal=True)  # second call: silent
    torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("causal", [False, True])
def test_layouts_gqa_lse(backend, causal):
    q, k, v = _qkv(kind="outlier")
    ref, lse_ref = reference.attention_exact(q, k, v, is_causal=causal, return_lse=True)
    o, lse = sagecute.sageattn(q, k, v, is_causal=causal, return_lse=True, backend=backend)
    assert o.shape == q.shape and o.dtype == q.dtype
    assert lse.shape == (2, 4, 33) and lse.dtype == torch.float32
    assert error_metrics(o, ref).cosine > 0.995
    assert (lse - lse_ref).abs().max() < 0.05
    on, lsen = sagecute.sageattn(*(t.transpose(1, 2) for t in (q, k, v)), "NHD", causal, None, True, backend=backend)
    assert on.shape == (2, 33, 4, 64) and on.is_contiguous()
    torch.testing.assert_close(on.transpose(1, 2), o)
    torch.testing.assert_close(lsen, lse)


def test_strided_inputs_and_odd_head_dim():
    q, k, v = _qkv(d=96)
    big = torch.randn(2, 4, 64, 96, dtype=torch.bfloat16)
    qs = big[:, :, 5:38]  # a view with a non-dense stride
    o = sagecute.sageattn(qs, k, v, backend="reference")
    assert o.shape == (2, 4, 33, 96)
    assert error_metrics(o, reference.attention_exact(qs, k, v)).cosine > 0.995


def test_empty_queries():
    q, k, v = _qkv(lq=0)
    o, lse = sagecute.sageattn(q, k, v, return_lse=True, backend="reference")
    assert o.shape == q.shape and lse.shape == (2, 4, 0)


def test_attn_mask_goes_to_sdpa():
    q, k, v = _qkv(hkv=4)
    mask = torch.rand(33, 47) > 0.3
    mask[:, 0] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = sagecute.sageattn(q, k, v, attn_mask=mask)
    torch.testing.assert_close(o, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_torch_compile_fullgraph_through_fake():
    q, k, v = _qkv()

    def f(q, k, v):
        o, lse = sagecute.sageattn(q, k, v, is_causal=True, return_lse=True, backend="reference")
        return o * 2, lse + 1

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    o, lse = compiled(q, k, v)
    o_ref, lse_ref = f(q, k, v)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(lse, lse_ref)
    torch.library.opcheck(
        torch.ops.sagecute.attn_fwd.default,
        (q, k, v, "HND", True, 0.125, True, "per_thread", "fp32+fp32", True, False, False, "reference"),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_varlen_matches_per_sequence():
    cu = torch.tensor([0, 5, 5, 40, 41], dtype=torch.int32)
    cuk = torch.tensor([0, 9, 12, 60, 61], dtype=torch.int64)
    q = torch.randn(41, 4, 64, dtype=torch.bfloat16)
    k = torch.randn(61, 2, 64, dtype=torch.bfloat16)
    v = torch.randn(61, 2, 64, dtype=torch.bfloat16)
    o = sagecute.sageattn_varlen(q, k, v, cu, cuk, 35, 48, is_causal=True, backend="reference")
    assert o.shape == q.shape
    for i in range(4):
        a, b, c, d = cu[i], cu[i + 1], cuk[i], cuk[i + 1]
        if a == b:
            continue
        ref = reference.attention_exact(q[a:b].unsqueeze(0), k[c:d].unsqueeze(0), v[c:d].unsqueeze(0), "NHD", True)[0]
        assert error_metrics(o[a:b], ref).cosine > 0.99


def test_dispatch_maps_archs():
    cfg = dispatch.CallConfig(128, torch.bfloat16, False, "per_thread", "fp32+fp32", True, False, False)
    assert dispatch.select_for_arch("sm80", cfg).backend == "sdpa"
    assert dispatch.select_for_arch(None, cfg).backend == "sdpa"
    assert dispatch.select_for_arch("sm100", cfg).backend == "sdpa"  # no sm100 kernel yet
    with pytest.raises(NotImplementedError, match="sm120 kernel is not implemented"):
        dispatch.select_for_arch("sm120", cfg, backend="sm120")
    fp16acc = dispatch.CallConfig(128, torch.bfloat16, False, "per_thread", "fp32+fp16", True, False, False)
    assert dispatch.select_for_arch("sm90", fp16acc).backend == "sm90"  # Note [fp32+fp16 on sm90]
    smooth_v = dispatch.CallConfig(128, torch.bfloat16, False, "per_thread", "fp32+fp32", True, True, False)
    assert dispatch.select_for_arch("sm90", smooth_v).backend == "sm90"  # Note [V mean]
    smooth_q = dispatch.CallConfig(128, torch.bfloat16, False, "per_thread", "fp32+fp32", True, False, True)
    assert dispatch.select_for_arch("sm90", smooth_q).backend == "sm90"  # Note [smooth_q on sm90]
    smooth_q64 = dispatch.CallConfig(64, torch.bfloat16, False, "per_thread", "fp32+fp32", True, False, True)
    assert dispatch.select_for_arch("sm90", smooth_q64).backend == "sm90"
    big = dispatch.CallConfig(256, torch.bfloat16, False, "per_thread", "fp32+fp32", True, False, False)
    assert "head_dim 256" in dispatch.select_for_arch("sm90", big).reason


def test_backward_says_forward_only():
    q, k, v = _qkv(hkv=4)
    q.requires_grad_(True)
    o = sagecute.sageattn(q, k, v, backend="reference")
    with pytest.raises(NotImplementedError, match="forward-only"):
        o.float().sum().backward()


@pytest.mark.parametrize("nhd", [False, True])
def test_fast_call_launch_arguments(monkeypatch, nhd):
    """Note [Fast call]: a FastCall hands the two kernels what the normal path does (the
    stream's scratch outputs, v as uint8, the HND views), and declines misaligned bases
    and a stream without scratch outputs. CPU tensors and stand-in kernels."""
    from sagecute import fast_call
    from sagecute.preprocess import kernels as kern

    b, h, length, d = 1, 2, 8, 64
    calls = []
    scratch = (None, None, torch.empty(b, h, length, d, dtype=torch.int8), torch.empty(b, h, 1),
               torch.empty(b, h, 1, d, dtype=torch.bfloat16), torch.empty(b, h, d, 128, dtype=torch.float8_e4m3fn),
               torch.empty(b, h, d), None, None)  # fmt: skip
    monkeypatch.setattr(kern, "_SCRATCH", {(("sig",), 7): scratch})
    monkeypatch.setattr(fast_call, "_raw_stream", lambda index: 7)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    fast = fast_call.FastCall()
    fast.qkv_key, fast.scratch = ("sig",), kern.qkv_scratch
    fast.qkv, fast.attn = (lambda *a: calls.append(("qkv", a))), (lambda *a: calls.append(("attn", a)))
    fast.max_ctas, fast.scale_max, fast.scale_log2, fast.nhd = 132, 448.0, 0.18, nhd
    fast.out_shape = (b, length, h, d) if nhd else (b, h, length, d)
    fast.dtype, fast.device, fast.device_index = torch.bfloat16, torch.device("cpu"), 0
    shape = (b, length, h, d) if nhd else (b, h, length, d)
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16) for _ in range(3))
    o = fast(q, k, v)
    assert o.shape == shape and o.dtype == torch.bfloat16 and o.is_contiguous()
    (_, pre), (_, att) = calls
    hnd = (lambda t: t.transpose(1, 2)) if nhd else (lambda t: t)
    _, _, k8, ks, km, v8, vs, _, _ = scratch
    assert pre[0] is None and pre[3] is None and pre[4] is None and pre[11] is None and pre[12] is None
    assert all(torch.equal(x, y) and x.stride() == y.stride() for x, y in ((pre[1], hnd(k)), (pre[2], hnd(v))))
    assert pre[5] is k8 and pre[6] is ks and pre[7] is km and pre[9] is vs and pre[10] is None and pre[13] == 448.0
    assert pre[8].dtype == torch.uint8 and pre[8].data_ptr() == v8.data_ptr() and att[4] is pre[8]
    assert torch.equal(att[0], hnd(q)) and att[0].stride() == hnd(q).stride() and att[1] is None
    assert att[2] is k8 and att[3] is ks and att[5] is vs and att[7] is None and att[8] is None
    assert att[6].data_ptr() == o.data_ptr() and att[6].shape == (b, h, length, d)
    assert att[9] is None and att[10] is None and att[11:] == (0.18, 132)
    # declined: a base off 16 bytes, a stream with no scratch outputs
    buf = torch.empty(q.numel() + 8, dtype=q.dtype)
    assert fast(buf[1 : 1 + q.numel()].view(shape), k, v) is None
    monkeypatch.setattr(fast_call, "_raw_stream", lambda index: 8)
    assert fast(q, k, v) is None and len(calls) == 2
