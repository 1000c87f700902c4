"""Public API on an H100/H200: sageattn end to end vs the emulation and fp64."""

import warnings

import pytest
import torch
from tolerances import error_metrics, make_qkv

import sagecute
from sagecute import dispatch, reference

pytestmark = pytest.mark.gpu


def _on_sm90() -> bool:
    return torch.cuda.is_available() and dispatch.device_arch(torch.device("cuda")) == "sm90"


needs_sm90 = pytest.mark.skipif(not _on_sm90(), reason="needs an sm90 GPU")

CASES = [
    # b, hq, hkv, lq, lk, d, causal, layout, dtype, kind
    (2, 8, 8, 1000, 1000, 128, False, "HND", torch.bfloat16, "normal"),
    (1, 8, 2, 127, 4096, 64, True, "NHD", torch.float16, "outlier"),
    (1, 4, 1, 1, 17, 128, False, "HND", torch.bfloat16, "peaked"),
    (2, 4, 4, 300, 129, 80, True, "NHD", torch.bfloat16, "outlier"),
]


@needs_sm90
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}h{c[1]}/{c[2]}q{c[3]}k{c[4]}d{c[5]}{'c' if c[6] else ''}{c[7]}-{c[9]}")
def test_sageattn_matches_emulation_and_exact(case):
    b, hq, hkv, lq, lk, d, causal, layout, dtype, kind = case
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d, dtype=dtype, device="cuda", kind=kind, layout=layout)
    before = [t.clone() for t in (q, k, v)]
    o, lse = sagecute.sageattn(q, k, v, tensor_layout=layout, is_causal=causal, return_lse=True, backend="sm90")
    for t, t0 in zip((q, k, v), before):
        assert torch.equal(t, t0), "an input was modified"
    assert o.shape == q.shape and o.dtype == q.dtype and torch.isfinite(o).all()
    emu, lse_emu = reference.sageattn_reference(q, k, v, layout, causal, return_lse=True, arch="sm90")
    exact, lse_exact = reference.attention_exact(q, k, v, layout, causal, return_lse=True)
    vs_emu, vs_exact, emu_exact = error_metrics(o, emu), error_metrics(o, exact), error_metrics(emu, exact)
    # A correct kernel differs from the emulation by accumulation order only.
    assert vs_emu.rel_l1 <= max(0.1 * emu_exact.rel_l1, 2e-3), (vs_emu, emu_exact)
    assert vs_exact.rel_l1 <= 1.1 * emu_exact.rel_l1 + 1e-3, (vs_exact, emu_exact)
    # LSE: the kernel tracks the emulation; both carry the INT8 score error, which
    # grows with the logits (peaked rows reach ~30).
    emu_lse_err = (lse_emu - lse_exact).abs().max().item()
    assert (lse - lse_emu).abs().max() <= 1e-2, (lse - lse_emu).abs().max()
    assert (lse - lse_exact).abs().max() <= 1.5 * emu_lse_err + 0.02


# Issue #3's accuracy bounds vs exact attention: rel-L1 <= 4% on normal inputs; on
# channel-outlier inputs (K and V channel biases) rel-L1 <= 0.7% and cosine >= 0.9999.
# K-only channel outliers ("outlier") stay at the normal inputs' ~3.7%: smoothing K
# removes the bias exactly, so what is left is the FP8 P/V rounding of a near-zero
# average (perf/accuracy.py).
ISSUE_BOUNDS = {"normal": (0.04, 0.999), "outlier": (0.04, 0.999), "outlier_kv": (0.007, 0.9999)}


@needs_sm90
@pytest.mark.parametrize("kind", list(ISSUE_BOUNDS))
@pytest.mark.parametrize("d,causal", [(128, False), (64, True)])
def test_sageattn_meets_the_accuracy_bounds(kind, d, causal):
    q, k, v = make_qkv(2, 8, 2, 1500, 1500, d, device="cuda", kind=kind)
    o = sagecute.sageattn(q, k, v, is_causal=causal, backend="sm90")
    m = error_metrics(o, reference.attention_exact(q, k, v, is_causal=causal))
    max_rel_l1, min_cos = ISSUE_BOUNDS[kind]
    assert m.rel_l1 <= max_rel_l1 and m.cosine >= min_cos, m


@needs_sm90
def test_deterministic_and_no_recompile_for_new_lengths():
    q, k, v = make_qkv(1, 4, 4, 513, 700, 128, device="cuda")
    a = sagecute.sageattn(q, k, v, backend="sm90")
    b = sagecute.sageattn(q, k, v, backend="sm90")
    assert torch.equal(a, b)
    from sagecute.kernels.sm90 import launch

    n = launch.num_compiled()
    q, k, v = make_qkv(3, 4, 4, 77, 1500, 128, device="cuda")
    sagecute.sageattn(q, k, v, backend="sm90")
    assert launch.num_compiled() == n


@needs_sm90
def test_auto_dispatch_on_sm90_and_fallbacks():
    q, k, v = make_qkv(1, 4, 4, 256, 256, 128, device="cuda")
    cfg = dispatch.CallConfig(128, q.dtype, False, "per_thread", "fp32+fp32", True, False, False)
    assert dispatch.select(q.device, cfg).backend == "sm90"
    mask = torch.ones(256, 256, dtype=torch.bool, device="cuda").tril()
    with pytest.warns(RuntimeWarning, match="attn_mask"):
        o = sagecute.sageattn(q, k, v, attn_mask=mask)
    assert torch.isfinite(o).all()
    with pytest.raises(NotImplementedError, match="attn_mask"):
        sagecute.sageattn(q, k, v, attn_mask=mask, backend="sm90")


def _kernels_k_mean(x):
    from sagecute.preprocess import kernels

    return kernels.k_mean_cute(x)


def _sm90_checked(q, k, v, **kw):
    """``sageattn`` on the sm90 kernel (a fallback warning is an error) with the LSE:
    inputs untouched, output of q's shape and dtype, finite."""
    before = [t.clone() for t in (q, k, v)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        o, lse = sagecute.sageattn(q, k, v, return_lse=True, backend="sm90", **kw)
    for t, t0 in zip((q, k, v), before):
        assert torch.equal(t, t0), "an input was modified"
    assert o.shape == q.shape and o.dtype == q.dtype and torch.isfinite(o).all()
    return o, lse


SMOOTH_V_CASES = [
    # b, hq, hkv, lq, lk, d, causal, layout, dtype, kind, pv
    (2, 8, 2, 1000, 1000, 128, False, "HND", torch.bfloat16, "outlier_kv", "fp32+fp32"),
    (1, 8, 8, 127, 4100, 64, True, "NHD", torch.float16, "outlier_kv", "fp32+fp32"),
    (1, 4, 1, 1, 17, 128, False, "NHD", torch.bfloat16, "normal", "fp32"),
    (2, 4, 4, 300, 129, 80, True, "HND", torch.bfloat16, "outlier_kv", "fp32+fp16"),
    (1, 8, 2, 2500, 2500, 64, False, "HND", torch.bfloat16, "normal", "fp32+fp32"),  # three consumer warpgroups
]


@needs_sm90
@pytest.mark.parametrize("case", SMOOTH_V_CASES,
                         ids=lambda c: f"b{c[0]}h{c[1]}/{c[2]}q{c[3]}k{c[4]}d{c[5]}{'c' if c[6] else ''}{c[7]}-{c[9]}-{c[10]}")
def test_sageattn_smooth_v(case):
    """Note [V mean]: the kernel adds back the V mean the preprocessing removed; it
    tracks the emulation, and on V channel biases it is more accurate than without."""
    b, hq, hkv, lq, lk, d, causal, layout, dtype, kind, pv = case
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d, dtype=dtype, device="cuda", kind=kind, layout=layout)
    kw = dict(tensor_layout=layout, is_causal=causal, pv_accum_dtype=pv)
    o, lse = _sm90_checked(q, k, v, smooth_v=True, **kw)
    emu, lse_emu = reference.sageattn_reference(q, k, v, layout, causal, return_lse=True, arch="sm90",
                                                smooth_v=True, pv_accum_dtype=pv)
    exact = reference.attention_exact(q, k, v, layout, causal)
    vs_emu, emu_exact = error_metrics(o, emu), error_metrics(emu, exact)
    assert vs_emu.rel_l1 <= max(0.1 * emu_exact.rel_l1, 2e-3), (vs_emu, emu_exact)
    assert (lse - lse_emu).abs().max() <= 1e-2  # smooth_v leaves the LSE alone
    plain = sagecute.sageattn(q, k, v, backend="sm90", **kw)
    m_smooth, m_plain = error_metrics(o, exact), error_metrics(plain, exact)
    assert m_smooth.rel_l1 <= 1.1 * m_plain.rel_l1 + 1e-4, (m_smooth, m_plain)
    again = sagecute.sageattn(q, k, v, smooth_v=True, backend="sm90", **kw)
    assert torch.equal(o, again)


SMOOTH_Q_CASES = [
    # b, hq, hkv, lq, lk, d, causal, layout, dtype, kind, pv, gran, smooth_k
    (2, 8, 2, 1000, 1000, 128, False, "HND", torch.bfloat16, "outlier_q", "fp32+fp32", "per_thread", True),
    (1, 8, 8, 127, 4100, 128, True, "NHD", torch.float16, "outlier_q", "fp32+fp32", "per_thread", True),
    (1, 4, 1, 1, 17, 128, False, "NHD", torch.bfloat16, "normal", "fp32", "per_thread", True),
    (2, 4, 4, 300, 129, 80, True, "HND", torch.bfloat16, "outlier_q", "fp32+fp16", "per_warp", True),
    (1, 8, 2, 2500, 2500, 128, False, "HND", torch.bfloat16, "peaked", "fp32+fp32", "per_thread", True),
    (1, 8, 1, 777, 3001, 128, True, "HND", torch.bfloat16, "outlier_q", "fp32+fp32", "per_thread", False),
    (2, 4, 2, 1000, 1000, 64, False, "HND", torch.bfloat16, "outlier_q", "fp32+fp32", "per_thread", True),
    (1, 4, 2, 200, 300, 64, True, "NHD", torch.float16, "normal", "fp32+fp32", "per_warp", True),
]


@needs_sm90
@pytest.mark.parametrize("case", SMOOTH_Q_CASES,
                         ids=lambda c: f"b{c[0]}h{c[1]}/{c[2]}q{c[3]}k{c[4]}d{c[5]}{'c' if c[6] else ''}{c[7]}-{c[9]}-"
                                       f"{c[10]}-{c[11]}{'' if c[12] else '-nosmoothk'}")
def test_sageattn_smooth_q(case):
    """Note [smooth_q on sm90]: Q quantized minus its per-head mean, delta_s added per
    score: tracks the emulation, and on Q channel offsets it is more accurate than
    without."""
    b, hq, hkv, lq, lk, d, causal, layout, dtype, kind, pv, gran, smooth_k = case
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d, dtype=dtype, device="cuda", kind=kind, layout=layout)
    kw = dict(tensor_layout=layout, is_causal=causal, pv_accum_dtype=pv, qk_quant_gran=gran, smooth_k=smooth_k)
    o, lse = _sm90_checked(q, k, v, smooth_q=True, **kw)
    # the emulation given the kernel's Q mean (the API's: head-padded HND, then KMean),
    # which may differ from torch's by one unit in the last place and so move every
    # row's INT8 rounding of Q (LSE differences of ~2x the quantization error)
    qh = reference._pad_last(reference.to_hnd(q, layout), reference.padded_head_dim(d))
    qm = _kernels_k_mean(qh)
    emu, lse_emu = reference.sageattn_reference(q, k, v, layout, causal, return_lse=True, arch="sm90",
                                                smooth_q=True, pv_accum_dtype=pv, qk_quant_gran=gran,
                                                smooth_k=smooth_k, q_mean=qm)
    exact, lse_exact = reference.attention_exact(q, k, v, layout, causal, return_lse=True)
    vs_emu, emu_exact = error_metrics(o, emu), error_metrics(emu, exact)
    assert vs_emu.rel_l1 <= max(0.1 * emu_exact.rel_l1, 2e-3), (vs_emu, emu_exact)
    emu_lse_err = (lse_emu - lse_exact).abs().max().item()
    # every row: a Q tail row sharing its scale with rows past Lq once widened it (the
    # zero padding read as -q_mean), 1.0 off in the LSE of those rows only. Without
    # smooth_k the LSE error is large (~0.35 on outlier_q) and the Q-mean ulp above moves
    # the kernel's by up to a few hundredths (0.009 and 0.020 in two runs of one case)
    assert (lse - lse_emu).abs().max() <= max(1e-2, 0.1 * emu_lse_err), ((lse - lse_emu).abs().max(), emu_lse_err)
    assert (lse - lse_exact).abs().max() <= 1.5 * emu_lse_err + 0.02, ((lse - lse_exact).abs().max(), emu_lse_err)
    worst_row = ((o.float() - emu.float()).abs().amax(dim=-1) / emu.float().abs().amax(dim=-1).clamp_min(1e-3)).max()
    assert worst_row <= 0.03, worst_row  # ~2 bf16 steps; the bug above: 0.04
    m_smooth = error_metrics(o, exact)
    if kind == "outlier_q":
        plain = sagecute.sageattn(q, k, v, backend="sm90", **kw)
        m_plain = error_metrics(plain, exact)
        assert m_smooth.rel_l1 < m_plain.rel_l1, (m_smooth, m_plain)
    again = sagecute.sageattn(q, k, v, smooth_q=True, backend="sm90", **kw)
    assert torch.equal(o, again)


@needs_sm90
def test_fp32_fp16_accumulation_runs_on_sm90():
    """Note [fp32+fp16 on sm90]: the sm90 kernel, matching the reference's emulation."""
    q, k, v = make_qkv(2, 4, 2, 300, 777, 128, device="cuda", kind="outlier")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning
        o = sagecute.sageattn(q, k, v, is_causal=True, pv_accum_dtype="fp32+fp16")
    ref = sagecute.sageattn(q, k, v, is_causal=True, pv_accum_dtype="fp32+fp16", backend="reference")
    exact = reference.attention_exact(q, k, v, is_causal=True)
    m_ref, m_exact = error_metrics(o, ref), error_metrics(ref, exact)
    assert m_ref.rel_l1 <= max(2e-3, 0.1 * m_exact.rel_l1), (m_ref, m_exact)
    assert torch.isfinite(o).all()


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_reference_and_sdpa_backends_on_gpu(backend):
    q, k, v = make_qkv(1, 8, 2, 200, 333, 128, device="cuda", kind="outlier")
    o, lse = sagecute.sageattn(q, k, v, is_causal=True, return_lse=True, backend=backend)
    exact, lse_exact = reference.attention_exact(q, k, v, is_causal=True, return_lse=True)
    assert error_metrics(o, exact).cosine > 0.998
    assert (lse - lse_exact).abs().max() < 0.05


# Note [Fast call]: the per-signature fast path vs the normal path, bit for bit
FAST_CASES = [
    # b, hq, hkv, lq, lk, d, causal, layout, dtype, kind, options
    (2, 8, 8, 1000, 1000, 128, False, "HND", torch.bfloat16, "normal", {}),
    (1, 8, 2, 127, 4096, 64, True, "NHD", torch.float16, "outlier", {}),
    (1, 4, 1, 1, 17, 128, False, "HND", torch.bfloat16, "peaked", {}),
    (2, 4, 4, 300, 129, 64, True, "HND", torch.bfloat16, "outlier_kv", {"smooth_v": True}),
    (1, 4, 4, 513, 700, 128, True, "HND", torch.bfloat16, "normal",
     {"qk_quant_gran": "per_warp", "pv_accum_dtype": "fp32+fp16"}),
    (1, 4, 2, 2048, 2048, 128, False, "NHD", torch.bfloat16, "normal", {"smooth_k": False}),
]


def _fast_plans():
    from sagecute import api, fast_call

    return [p.fast for p in api._PLANS.values() if isinstance(p.fast, fast_call.FastCall)]


@needs_sm90
@pytest.mark.parametrize("case", FAST_CASES, ids=lambda c: f"b{c[0]}h{c[1]}/{c[2]}q{c[3]}k{c[4]}d{c[5]}"
                         f"{'c' if c[6] else ''}{c[7]}-{c[9]}-{'-'.join(c[10]) or 'default'}")
def test_fast_call_matches_the_normal_path(case, monkeypatch):
    from sagecute import api, fast_call

    b, hq, hkv, lq, lk, d, causal, layout, dtype, kind, opts = case
    monkeypatch.setattr(api, "_PLANS", {})
    served = []
    run_fast = fast_call.FastCall.__call__
    monkeypatch.setattr(fast_call.FastCall, "__call__", lambda self, *a: served.append(run_fast(self, *a)) or served[-1])
    for call in range(2):  # the first call makes the FastCall, the second reuses it and its scratch
        q, k, v = make_qkv(b, hq, hkv, lq, lk, d, dtype=dtype, device="cuda", kind=kind, layout=layout)
        before = [t.clone() for t in (q, k, v)]
        monkeypatch.setattr(fast_call, "ENABLED", True)
        fast = sagecute.sageattn(q, k, v, tensor_layout=layout, is_causal=causal, backend="sm90", **opts)
        assert len(_fast_plans()) == 1 and len(served) == call + 1 and served[-1] is fast, \
            "the fast path did not serve the call"
        monkeypatch.setattr(fast_call, "ENABLED", False)
        normal = sagecute.sageattn(q, k, v, tensor_layout=layout, is_causal=causal, backend="sm90", **opts)
        for t, t0 in zip((q, k, v), before):
            assert torch.equal(t, t0), "an input was modified"
        assert fast.shape == q.shape and fast.dtype == q.dtype and fast.is_contiguous()
        assert torch.isfinite(fast).all()
        assert torch.equal(fast, normal), (call, (fast.float() - normal.float()).abs().max())
    emu = reference.sageattn_reference(q, k, v, layout, causal, arch="sm90", **opts)
    exact = reference.attention_exact(q, k, v, layout, causal)
    vs_emu, emu_exact = error_metrics(fast, emu), error_metrics(emu, exact)
    assert vs_emu.rel_l1 <= max(0.1 * emu_exact.rel_l1, 2e-3), (vs_emu, emu_exact)


def _fast_served_call(monkeypatch):
    from sagecute import api, fast_call

    monkeypatch.setattr(api, "_PLANS", {})
    monkeypatch.setattr(fast_call, "ENABLED", True)
    q, k, v = make_qkv(1, 4, 4, 256, 384, 128, device="cuda")
    expect = sagecute.sageattn(q, k, v, backend="sm90")
    assert len(_fast_plans()) == 1
    return q, k, v, expect


@needs_sm90
def test_fast_call_declines_misaligned_inputs(monkeypatch):
    q, k, v, expect = _fast_served_call(monkeypatch)
    # same signature (shape, strides), base 2 bytes off 16: the normal path copies q
    buf = torch.empty(q.numel() + 8, dtype=q.dtype, device="cuda")
    q_off = buf[1 : 1 + q.numel()].view(q.shape)
    q_off.copy_(q)
    assert q_off.stride() == q.stride() and q_off.data_ptr() % 16
    got = sagecute.sageattn(q_off, k, v, backend="sm90")
    assert torch.equal(got, expect), (got.float() - expect.float()).abs().max()


@needs_sm90
def test_fast_call_leaves_lse_calls_to_the_normal_path(monkeypatch):
    q, k, v, expect = _fast_served_call(monkeypatch)
    # the same API plan (its key leaves return_lse out) with its FastCall, yet the normal path
    o, lse = sagecute.sageattn(q, k, v, backend="sm90", return_lse=True)
    assert len(_fast_plans()) == 1
    # another attention kernel (it also writes the LSE): equal up to its own rounding
    assert error_metrics(o, expect).rel_l1 <= 1e-3 and torch.isfinite(lse).all()


@needs_sm90
def test_fast_call_declines_graph_capture(monkeypatch):
    q, k, v, expect = _fast_served_call(monkeypatch)
    # CUDA graph capture: fresh outputs each call, not the stream's scratch
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        warm = sagecute.sageattn(q, k, v, backend="sm90")  # this stream's scratch, through the fast call
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            captured = sagecute.sageattn(q, k, v, backend="sm90")
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(warm, expect), (warm.float() - expect.float()).abs().max()
    assert torch.equal(captured, expect), (captured.float() - expect.float()).abs().max()
