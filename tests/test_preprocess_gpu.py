"""CuTe DSL quantizers on a GPU vs the torch oracles of ``sagecute.reference``:
payloads and scales must be bit-identical (docs/kernel-contract.md).

``python tests/test_preprocess_gpu.py`` also prints kernel timings.
"""

from __future__ import annotations


import pytest
import torch

from sagecute import reference as ref
from sagecute.quant_layout import SM89_GEOMETRY, SM90_GEOMETRY, QuantGranularity

pytestmark = pytest.mark.gpu

T, W, B = QuantGranularity.PER_THREAD, QuantGranularity.PER_WARP, QuantGranularity.PER_BLOCK
BF16, FP16 = torch.bfloat16, torch.float16


def _kernels():
    from sagecute.preprocess import kernels

    return kernels


# --------------------------------------------------------------------------
# inputs and comparisons
# --------------------------------------------------------------------------
def make_input(b, h, length, d, dtype, layout="HND", kind="randn", seed=0, offset=0):
    """HND view [b, h, length, d]; NHD storage for layout="NHD"; "strided" is a
    slice of a longer, wider buffer; ``offset`` elements of storage offset."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    if kind == "randn":
        x = torch.randn(b, h, length, d, generator=g)
    elif kind == "outlier":  # 1e4-magnitude channels
        x = torch.randn(b, h, length, d, generator=g)
        x[..., ::17] *= 1e4
    elif kind == "const":  # all-equal rows
        x = torch.full((b, h, length, d), 0.75)
    elif kind == "fp16max":  # near fp16 overflow
        x = torch.randn(b, h, length, d, generator=g).clamp(-1, 1) * 65000.0
        x[..., 0] = 65504.0
    elif kind == "zeros_channel":
        x = torch.randn(b, h, length, d, generator=g)
        x[..., 3] = 0.0
    else:
        raise ValueError(kind)
    x = x.to(dtype)
    if layout == "HND":
        buf = torch.zeros(offset + x.numel(), dtype=dtype)
        view = buf[offset:].view(b, h, length, d)
    elif layout == "NHD":
        buf = torch.zeros(offset + x.numel(), dtype=dtype)
        view = buf[offset:].view(b, length, h, d).transpose(1, 2)
    elif layout == "strided":  # [B, L+5, H+1, D+16] buffer, NHD-like, sliced
        full = torch.zeros(b, length + 5, h + 1, d + 16, dtype=dtype)
        view = full[:, 3 : 3 + length, 1:, 8 : 8 + d].transpose(1, 2)
    else:
        raise ValueError(layout)
    view.copy_(x)
    view = view.cuda() if layout == "HND" and offset == 0 else _to_cuda_keep_strides(view)
    assert torch.equal(view.cpu(), x)
    return view


def _to_cuda_keep_strides(view):
    base = view._base if view._base is not None else view
    storage_off = view.storage_offset()
    dev = base.cuda()
    return torch.as_strided(dev.reshape(-1), view.shape, view.stride(), storage_off)


def _bits(x):
    if x.dtype == torch.float32:
        return x.view(torch.int32)
    if x.dtype == torch.float8_e4m3fn:
        return x.view(torch.uint8)
    if x.dtype in (torch.bfloat16, torch.float16):
        return x.view(torch.int16)
    return x


def assert_bits_equal(out, want, what):
    assert out.shape == want.shape, f"{what}: shape {tuple(out.shape)} != {tuple(want.shape)}"
    assert out.dtype == want.dtype, f"{what}: dtype {out.dtype} != {want.dtype}"
    assert out.is_contiguous(), f"{what}: not contiguous"
    ob, wb = _bits(out), _bits(want)
    bad = ob != wb
    if bad.any():
        idx = bad.nonzero()[:4].tolist()
        vals = [(tuple(i), out[tuple(i)].float().item(), want[tuple(i)].float().item()) for i in idx]
        pytest.fail(f"{what}: {int(bad.sum())}/{bad.numel()} elements differ, first (index, got, want): {vals}")


def assert_finite(*ts):
    for t in ts:
        assert torch.isfinite(t.float()).all(), "inf/NaN in output"


# Note [IEEE oracles]
# The contract (docs/kernel-contract.md) divides in IEEE fp32: scale = amax / 127,
# inv = 127 / amax, v_scale = amax / scale_max, inv = scale_max / amax.
# sagecute.reference divides tensor by tensor for that (torch turns a division by
# a Python number into a multiply by a rounded reciprocal).
def oracle_qk_int8(x, gran, geom=SM90_GEOMETRY, *, is_k, mean=None):
    return ref.quantize_qk_int8(x, gran, geom, is_k=is_k, mean=mean)


def oracle_v_fp8(v, geom=SM90_GEOMETRY, *, scale_max=448.0):
    return ref.quantize_v_fp8(v, geom, scale_max=scale_max)


@pytest.fixture(params=["auto", "pointer"])
def launch_path(request):
    """Note [Two launch paths] in preprocess/kernels.py: default choice, and the pointer path."""
    kern = _kernels()
    kern.set_launch_path(None if request.param == "auto" else "pointer")
    yield kern.launch_path()[0]
    kern.set_launch_path(None)


@pytest.fixture(params=[0, 2, 4], ids=lambda r: f"ring{r}")
def block_ring(request, monkeypatch):
    """Note [Block ring] in quant_qkv.py: the one-launch K/V kernel with straight loads
    (0, sub-splits where ``warpgroups_for`` picks them) and with a cp.async ring of 2
    and 4 slots (what ``ring_for`` ships), at every case's length. smooth_v and the Q
    role keep the register path whatever ``ring_for`` says (``_qkv_plan``)."""
    kern = _kernels()
    monkeypatch.setattr(kern, "ring_for", lambda *a: request.param)
    kern._QKV_PLANS.clear()
    yield request.param
    kern._QKV_PLANS.clear()


# --------------------------------------------------------------------------
# Q and K INT8
# --------------------------------------------------------------------------
QK_CASES = [
    # (b, h, length, d, dtype, layout, gran)
    (1, 1, 1, 128, BF16, "HND", T),
    (2, 3, 17, 128, BF16, "NHD", T),
    (2, 3, 17, 64, FP16, "HND", W),
    (1, 2, 128, 128, FP16, "NHD", W),
    (1, 5, 1000, 128, BF16, "HND", W),
    (2, 2, 1000, 64, BF16, "NHD", T),
    (1, 8, 1000, 128, FP16, "strided", T),
    (1, 4, 4100, 64, BF16, "strided", W),
    (3, 1, 255, 128, BF16, "HND", B),
    (2, 2, 50, 32, FP16, "NHD", T),
]


def _qk_id(c):
    b, h, length, d, dtype, layout, gran = c
    return f"b{b}-h{h}-l{length}-d{d}-{str(dtype)[6:]}-{layout}-{gran.value}"


@pytest.mark.parametrize("case", QK_CASES, ids=_qk_id)
def test_q_int8_matches_reference(case, launch_path):
    b, h, length, d, dtype, layout, gran = case
    q = make_input(b, h, length, d, dtype, layout, seed=1)
    q8, qs = _kernels().quantize_q_int8_cute(q, gran)
    r8, rs = oracle_qk_int8(q, gran, is_k=False)
    assert_bits_equal(qs, rs, "q_scale")
    assert_bits_equal(q8, r8, "q_int8")


@pytest.mark.parametrize("case", QK_CASES, ids=_qk_id)
@pytest.mark.parametrize("smooth_k", [False, True], ids=["plain", "smooth"])
def test_k_int8_matches_reference(case, smooth_k, launch_path):
    b, h, length, d, dtype, layout, gran = case
    k = make_input(b, h, length, d, dtype, layout, kind="outlier" if smooth_k else "randn", seed=2)
    km = ref.k_mean(k) if smooth_k else None
    k8, ks, km_out = _kernels().quantize_k_int8_cute(k, gran, smooth_k, mean=km)
    r8, rs = oracle_qk_int8(k, gran, SM90_GEOMETRY, is_k=True, mean=km)
    assert (km_out is None) == (not smooth_k)
    assert_bits_equal(ks, rs, "k_scale")
    assert_bits_equal(k8, r8, "k_int8")


@pytest.mark.parametrize("case", QK_CASES[:6], ids=_qk_id)
def test_k_int8_with_kernel_mean(case):
    """Full smooth_k path: the kernel's own mean, and payloads exact given that mean."""
    b, h, length, d, dtype, layout, gran = case
    k = make_input(b, h, length, d, dtype, layout, kind="outlier", seed=3)
    k8, ks, km = _kernels().quantize_k_int8_cute(k, gran, True)
    assert km.shape == (b, h, 1, d) and km.dtype == dtype
    r8, rs = oracle_qk_int8(k, gran, SM90_GEOMETRY, is_k=True, mean=km)
    assert_bits_equal(ks, rs, "k_scale")
    assert_bits_equal(k8, r8, "k_int8")


@pytest.mark.parametrize("case", QK_CASES, ids=_qk_id)
def test_k_mean_within_one_ulp(case, launch_path):
    """Note [K mean summation order]: fp32 sum order differs from torch's."""
    b, h, length, d, dtype, layout, _ = case
    k = make_input(b, h, length, d, dtype, layout, kind="outlier", seed=4)
    km = _kernels().k_mean_cute(k)
    want = ref.k_mean(k)
    assert km.shape == want.shape and km.dtype == want.dtype
    # one unit in the last place of the input dtype, at the mean's magnitude
    ulp = (want.float().abs() * (2.0 ** -(7 if dtype == BF16 else 10))).clamp_min(1e-30)
    err = (km.float() - want.float()).abs()
    assert (err <= ulp).all(), f"max |mean - ref| = {err.max().item()}"
    frac_exact = (_bits(km) == _bits(want)).float().mean().item()
    assert frac_exact > 0.9, f"only {frac_exact:.1%} of the means are bit-identical"
    if length == 1:  # the mean of one token is that token
        assert_bits_equal(km, want, "k_mean")


@pytest.mark.parametrize("kind", ["const", "outlier", "fp16max", "zeros_channel"])
@pytest.mark.parametrize("gran", [T, W], ids=lambda g: g.value)
def test_int8_edge_values(kind, gran):
    dtype = FP16 if kind == "fp16max" else BF16
    x = make_input(2, 2, 300, 128, dtype, "HND", kind=kind, seed=5)
    kern = _kernels()
    q8, qs = kern.quantize_q_int8_cute(x, gran)
    r8, rs = oracle_qk_int8(x, gran, SM90_GEOMETRY, is_k=False)
    assert_finite(qs)
    assert_bits_equal(qs, rs, "q_scale")
    assert_bits_equal(q8, r8, "q_int8")
    km = ref.k_mean(x)
    k8, ks, _ = kern.quantize_k_int8_cute(x, gran, True, mean=km)
    r8, rs = oracle_qk_int8(x, gran, SM90_GEOMETRY, is_k=True, mean=km)
    assert_finite(ks)
    assert_bits_equal(ks, rs, "k_scale")
    assert_bits_equal(k8, r8, "k_int8")
    km_kernel = kern.k_mean_cute(x)
    assert_finite(km_kernel)
    if kind == "const":  # smoothed K is exactly zero: every group gets the floor scale
        k8, ks, _ = kern.quantize_k_int8_cute(x, gran, True)
        assert (k8 == 0).all()


@pytest.mark.parametrize("gran", [T, W], ids=lambda g: g.value)
def test_int8_sm89_geometry(gran):
    """The kernels follow any bit-mask geometry (warp_q 32, blk_k 64 here)."""
    x = make_input(1, 3, 333, 64, BF16, "NHD", seed=6)
    kern = _kernels()
    q8, qs = kern.quantize_q_int8_cute(x, gran, SM89_GEOMETRY)
    r8, rs = oracle_qk_int8(x, gran, SM89_GEOMETRY, is_k=False)
    assert_bits_equal(qs, rs, "q_scale")
    assert_bits_equal(q8, r8, "q_int8")
    km = ref.k_mean(x)
    k8, ks, _ = kern.quantize_k_int8_cute(x, gran, True, SM89_GEOMETRY, mean=km)
    r8, rs = oracle_qk_int8(x, gran, SM89_GEOMETRY, is_k=True, mean=km)
    assert_bits_equal(ks, rs, "k_scale")
    assert_bits_equal(k8, r8, "k_int8")


# --------------------------------------------------------------------------
# V FP8
# --------------------------------------------------------------------------
V_CASES = [
    # (b, h, length, d, dtype, layout, scale_max)
    (1, 1, 1, 128, BF16, "HND", 448.0),
    (2, 3, 17, 64, FP16, "NHD", 448.0),
    (1, 2, 128, 128, BF16, "NHD", 2.25),
    (2, 2, 1000, 128, FP16, "HND", 448.0),
    (1, 4, 1000, 64, BF16, "strided", 448.0),
    (1, 2, 4100, 128, BF16, "NHD", 2.25),
    (2, 1, 300, 32, FP16, "strided", 448.0),
]


def _v_id(c):
    b, h, length, d, dtype, layout, smax = c
    return f"b{b}-h{h}-l{length}-d{d}-{str(dtype)[6:]}-{layout}-smax{smax}"


@pytest.mark.parametrize("case", V_CASES, ids=_v_id)
def test_v_fp8_matches_reference(case, launch_path):
    b, h, length, d, dtype, layout, smax = case
    v = make_input(b, h, length, d, dtype, layout, seed=7)
    v8, vs = _kernels().quantize_v_fp8_cute(v, scale_max=smax)
    r8, rs = oracle_v_fp8(v, SM90_GEOMETRY, scale_max=smax)
    assert_bits_equal(vs, rs, "v_scale")
    assert_bits_equal(v8, r8, "v_fp8")


@pytest.mark.parametrize("kind", ["const", "outlier", "fp16max", "zeros_channel"])
def test_v_fp8_edge_values(kind):
    dtype = FP16 if kind == "fp16max" else BF16
    v = make_input(1, 2, 300, 64, dtype, "NHD", kind=kind, seed=8)
    v8, vs = _kernels().quantize_v_fp8_cute(v)
    r8, rs = oracle_v_fp8(v, SM90_GEOMETRY)
    assert_finite(vs, v8)
    assert_bits_equal(vs, rs, "v_scale")
    assert_bits_equal(v8, r8, "v_fp8")
    if kind == "zeros_channel":
        assert vs[..., 3].eq(0).all() and v8[..., 3, :].view(torch.uint8).eq(0).all()


QKV_CASES = [
    # (b, hq, hkv, lq, lk, d, dtype, layout, gran, smooth_k, k_kind)
    (2, 8, 2, 1000, 777, 128, BF16, "HND", T, True, "outlier"),
    (1, 4, 4, 1, 1, 64, FP16, "NHD", W, True, "randn"),
    (1, 2, 1, 129, 3000, 128, BF16, "strided", B, True, "outlier"),  # 16 splits of 2 blocks: one in registers, one stashed
    (1, 4, 4, 8199, 8199, 64, BF16, "HND", T, False, "randn"),
    (1, 2, 2, 17, 2049, 128, FP16, "NHD", T, True, "fp16max"),
    (3, 3, 3, 300, 1024, 128, BF16, "NHD", W, True, "zeros_channel"),  # exactly one block per split
    # Note [Stashed blocks]: 6 and 4 blocks per split, one of them from smem
    (1, 4, 2, 300, 12000, 128, BF16, "HND", T, True, "outlier"),
    (1, 2, 2, 64, 8192, 64, FP16, "HND", W, True, "randn"),
    # 9 blocks per split: sub-splits (ring 0), or a ring refilled with re-reads
    (1, 2, 1, 33, 16500, 64, BF16, "NHD", T, True, "outlier"),
]


def _qkv_id(c):
    b, hq, hkv, lq, lk, d, dtype, layout, gran, smooth, kind = c
    return f"b{b}-h{hq}/{hkv}-lq{lq}-lk{lk}-d{d}-{str(dtype)[6:]}-{layout}-{gran.value}-{'smooth' if smooth else 'plain'}-{kind}"


@pytest.mark.parametrize("case", QKV_CASES, ids=_qkv_id)
def test_qkv_one_launch_matches_reference(case, block_ring):
    """quant_qkv.py: Q, K, V in one launch == the reference quantizers (K given the
    kernel's own mean, which is within one ulp of torch's: Note [Split K mean])."""
    b, hq, hkv, lq, lk, d, dtype, layout, gran, smooth_k, kind = case
    kern = _kernels()
    q = make_input(b, hq, lq, d, dtype, layout, seed=11)
    k = make_input(b, hkv, lk, d, dtype, layout, kind=kind, seed=12)
    v = make_input(b, hkv, lk, d, dtype, layout, kind=kind, seed=13)
    assert kern.fused_qkv_supported(q, k, v) and kern.launch_path()[0] == "tvm-ffi"
    q_in, k_in, v_in = (t.clone() for t in (q, k, v))
    q8, qs, k8, ks, km, v8, vs, vm = kern.quantize_qkv_cute(q, k, v, gran, smooth_k)
    assert vm is None  # smooth_v off
    for before, after in ((q_in, q), (k_in, k), (v_in, v)):
        assert torch.equal(before, after), "an input was modified"
    r8, rs = oracle_qk_int8(q, gran, is_k=False)
    assert_bits_equal(qs, rs, "q_scale")
    assert_bits_equal(q8, r8, "q_int8")
    if smooth_k:
        want = ref.k_mean(k)
        assert km.shape == want.shape and km.dtype == want.dtype
        ulp = (want.float().abs() * (2.0 ** -(7 if dtype == BF16 else 10))).clamp_min(1e-30)
        assert ((km.float() - want.float()).abs() <= ulp).all(), "k_mean off by more than one ulp"
    else:
        assert km is None
    r8, rs = oracle_qk_int8(k, gran, SM90_GEOMETRY, is_k=True, mean=km)
    assert_bits_equal(ks, rs, "k_scale")
    assert_bits_equal(k8, r8, "k_int8")
    r8, rs = oracle_v_fp8(v, SM90_GEOMETRY)
    assert_finite(vs, v8, ks, qs)
    assert_bits_equal(vs, rs, "v_scale")
    assert_bits_equal(v8, r8, "v_fp8")
    # deterministic: the same bits again; and without Q (the API's call: the attention
    # kernel quantizes Q) the same K and V
    again = kern.quantize_qkv_cute(q, k, v, gran, smooth_k)
    kv_only = kern.quantize_qkv_cute(q, k, v, gran, smooth_k, with_q=False)
    assert kv_only[0] is None and kv_only[1] is None
    for x, y, z in zip((q8, qs, k8, ks, km, v8, vs), again, (q8, qs) + tuple(kv_only[2:])):
        if x is not None:
            assert torch.equal(_bits(x), _bits(y)) and torch.equal(_bits(x), _bits(z))


SMOOTH_V_CASES = [
    # (b, hkv, lk, d, dtype, layout, kind, with_q)
    (1, 2, 1, 128, BF16, "HND", "randn", False),
    (2, 3, 17, 64, FP16, "NHD", "outlier", False),
    (1, 2, 1000, 128, BF16, "strided", "randn", True),
    (2, 1, 300, 64, BF16, "HND", "const", False),  # v == mean: zero payload and scale
    (1, 2, 777, 128, BF16, "NHD", "zeros_channel", False),
    (1, 2, 3000, 128, BF16, "HND", "outlier", False),  # 16 splits, a stashed block
    (1, 2, 4100, 64, FP16, "NHD", "fp16max", False),
    (2, 2, 12000, 64, BF16, "HND", "randn", False),  # 6 blocks a split, re-read from gmem
]


@pytest.mark.parametrize("case", SMOOTH_V_CASES, ids=lambda c: f"b{c[0]}h{c[1]}-l{c[2]}-d{c[3]}-{str(c[4])[6:]}-"
                         f"{c[5]}-{c[6]}{'-q' if c[7] else ''}")
def test_qkv_smooth_v_matches_reference(case, block_ring):
    """Note [V mean] (quant_qkv.py): V minus the kernel's fp32 mean == the reference
    quantizer given that mean; the mean within rounding of torch's; K unchanged."""
    b, hkv, lk, d, dtype, layout, kind, with_q = case
    kern = _kernels()
    q = make_input(b, 2 * hkv, 33, d, dtype, layout, seed=21)
    k = make_input(b, hkv, lk, d, dtype, layout, seed=22)
    v = make_input(b, hkv, lk, d, dtype, layout, kind=kind, seed=23)
    if kind == "randn":  # channel biases, as in real V (perf/accuracy.py outlier_kv)
        v = (v.float() + torch.randn(b, hkv, 1, d, device="cuda")).to(dtype)
    v_in = v.clone()
    out = kern.quantize_qkv_cute(q, k, v, T, True, with_q=with_q, smooth_v=True)
    plain = kern.quantize_qkv_cute(q, k, v, T, True, with_q=with_q)
    assert torch.equal(v, v_in), "v was modified"
    v8, vs, vm = out[5:]
    assert vm.shape == (b, hkv, d) and vm.dtype == torch.float32 and vm.is_contiguous()
    want = v.float().mean(dim=2)
    tol = v.float().abs().amax(dim=2) * 2.0**-20 + 1e-30  # summation order only
    assert ((vm - want).abs() <= tol).all(), (vm - want).abs().max()
    r8, rs = ref.quantize_v_fp8(v, SM90_GEOMETRY, mean=vm)
    assert_finite(vs, v8, vm)
    assert_bits_equal(vs, rs, "v_scale")
    assert_bits_equal(v8, r8, "v_fp8")
    if kind == "const":
        assert vs.eq(0).all() and v8.view(torch.uint8).eq(0).all()
    for i, name in enumerate(("q_int8", "q_scale", "k_int8", "k_scale", "k_mean")):
        if out[i] is not None:
            assert_bits_equal(out[i], plain[i], name)
    again = kern.quantize_qkv_cute(q, k, v, T, True, with_q=with_q, smooth_v=True)
    for x, y in zip(out, again):
        if x is not None:
            assert torch.equal(_bits(x), _bits(y)), "not deterministic"


SMOOTH_Q_CASES = [
    # (b, hq, hkv, lq, lk, d, dtype, layout, smooth_k)
    (1, 4, 4, 1, 1, 128, BF16, "HND", True),
    (2, 8, 2, 333, 1000, 128, BF16, "NHD", True),
    (1, 4, 1, 100, 3000, 64, FP16, "strided", True),  # 16 splits, a stashed block, MQA-like group of 4
    (1, 2, 2, 700, 12000, 128, BF16, "HND", True),  # blocks re-read in pass 2
    (1, 6, 2, 129, 2049, 64, BF16, "HND", False),
]


@pytest.mark.parametrize("case", SMOOTH_Q_CASES, ids=lambda c: f"b{c[0]}h{c[1]}/{c[2]}-lq{c[3]}-lk{c[4]}-d{c[5]}-"
                         f"{str(c[6])[6:]}-{c[7]}{'' if c[8] else '-plain'}")
def test_qkv_smooth_q_delta_s(case, block_ring):
    """Note [delta_s in the K pass]: with Q's mean the K/V kernel also writes
    delta_s = q_mean . (k - k_mean) per (q head, key), equal to the reference's up to
    summation order, and leaves every other output as without it."""
    b, hq, hkv, lq, lk, d, dtype, layout, smooth_k = case
    kern = _kernels()
    q = make_input(b, hq, lq, d, dtype, layout, seed=31)
    q = (q.float() + 3 * torch.randn(b, hq, 1, d, device="cuda")).to(dtype)  # channel offsets
    k = make_input(b, hkv, lk, d, dtype, layout, kind="outlier", seed=32)
    v = make_input(b, hkv, lk, d, dtype, layout, seed=33)
    qm = kern.k_mean_cute(q)
    ulp = (ref.q_mean(q).float().abs() * (2.0 ** -(7 if dtype == BF16 else 10))).clamp_min(1e-30)
    assert ((qm.float() - ref.q_mean(q).float()).abs() <= ulp).all(), "q_mean off by more than one ulp"
    out = kern.quantize_qkv_cute(q, k, v, T, smooth_k, with_q=False, q_mean=qm)
    plain = kern.quantize_qkv_cute(q, k, v, T, smooth_k, with_q=False)
    assert len(out) == 9
    for i, name in enumerate(("q_int8", "q_scale", "k_int8", "k_scale", "k_mean", "v_fp8", "v_scale", "v_mean")):
        if out[i] is not None:
            assert_bits_equal(out[i], plain[i], name)
    delta = out[8]
    lpad = SM90_GEOMETRY.padded_kv_len(lk)
    assert delta.shape == (b, hq, lpad) and delta.dtype == torch.float32 and delta.is_contiguous()
    assert torch.isfinite(delta).all()
    want = ref.smooth_q_delta_s(qm, k, out[4])
    scale = (qm.float().abs() @ ref._expand_kv((k.float() - (out[4].float() if smooth_k else 0)).abs(), hq)
             .transpose(-1, -2))[:, :, 0]  # fmt: skip
    err = (delta[..., :lk] - want).abs()
    assert (err <= scale * 2.0**-16 + 1e-30).all(), (err / scale).max()  # summation order only
    again = kern.quantize_qkv_cute(q, k, v, T, smooth_k, with_q=False, q_mean=qm)
    assert torch.equal(_bits(delta), _bits(again[8])), "not deterministic"


def test_qkv_scratch_reuse_and_plan_cache():
    """Note [Preprocess host cost]: scratch outputs are reused per (signature,
    stream), fresh outputs are not, and a cached plan still sees a new input's
    misalignment (copied, still exact). With smooth_v, so every output is a tensor."""
    kern = _kernels()
    kern.clear_scratch()
    q, k, v = (make_input(1, 2, 300, 128, BF16, "HND", seed=s) for s in (21, 22, 23))
    a = kern.quantize_qkv_cute(q, k, v, T, True, scratch=True, smooth_v=True)
    want = [x.clone() for x in a]
    b = kern.quantize_qkv_cute(q, k, v, T, True, scratch=True, smooth_v=True)
    assert all(x.data_ptr() == y.data_ptr() for x, y in zip(a, b))
    for x, y in zip(want, b):
        assert torch.equal(_bits(x), _bits(y))
    fresh = kern.quantize_qkv_cute(q, k, v, T, True, smooth_v=True)
    assert all(x.data_ptr() != y.data_ptr() for x, y in zip(a, fresh))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        c = kern.quantize_qkv_cute(q, k, v, T, True, scratch=True, smooth_v=True)
    torch.cuda.current_stream().wait_stream(side)
    assert c[0].data_ptr() != a[0].data_ptr(), "another stream must not share the scratch"
    # same shapes and strides, storage offset 1 element: not 16-byte aligned
    q2 = make_input(1, 2, 300, 128, BF16, "HND", seed=21, offset=1)
    assert q2.shape == q.shape and q2.stride() == q.stride() and q2.data_ptr() % 16
    d = kern.quantize_qkv_cute(q2, k, v, T, True)
    r8, rs = oracle_qk_int8(q2, T, is_k=False)
    assert_bits_equal(d[1], rs, "q_scale")
    assert_bits_equal(d[0], r8, "q_int8")
    kern.clear_scratch()


def test_e4m3_rounding_and_saturation():
    """Ties to even, subnormals and zero: amax 448 makes inv exactly 1, so the
    payload is e4m3(v) of bf16 values placed on e4m3 rounding midpoints."""
    vals = [448.0, 0.0, 1.0625, 1.1875, -1.0625, 17.0, 19.0, 0.53125, 3 * 2.0**-10, 2.0**-10, 2.0**-11, -447.9]
    col = torch.tensor(vals * 3)
    v = col.reshape(1, 1, -1, 1).expand(1, 1, col.numel(), 64).contiguous().to(BF16).cuda()
    v8, vs = _kernels().quantize_v_fp8_cute(v)
    r8, rs = oracle_v_fp8(v, SM90_GEOMETRY)
    assert vs.eq(1.0).all()
    assert_bits_equal(vs, rs, "v_scale")
    assert_bits_equal(v8, r8, "v_fp8")
    got = ref.unpermute_v_fp8(v8, col.numel())[0, 0, : len(vals), 0].cpu().tolist()
    assert got[:11] == [448.0, 0.0, 1.0, 1.25, -1.0, 16.0, 20.0, 0.5, 2.0**-8, 0.0, 0.0]


def test_unaligned_input_falls_back_to_copy():
    """Storage offset of 1 element: not 16-byte aligned, still exact."""
    x = make_input(1, 2, 77, 64, BF16, "HND", seed=9, offset=1)
    assert x.data_ptr() % 16 != 0
    q8, qs = _kernels().quantize_q_int8_cute(x, T)
    r8, rs = oracle_qk_int8(x, T, SM90_GEOMETRY, is_k=False)
    assert_bits_equal(qs, rs, "q_scale")
    assert_bits_equal(q8, r8, "q_int8")
    v8, vs = _kernels().quantize_v_fp8_cute(x)
    r8, rs = oracle_v_fp8(x, SM90_GEOMETRY)
    assert_bits_equal(v8, r8, "v_fp8")


def test_reference_uses_ieee_division():
    """Note [IEEE oracles]: does sagecute.reference itself match the kernels?"""
    x = make_input(2, 4, 1000, 128, BF16, "HND", kind="outlier", seed=11)
    v8, vs = _kernels().quantize_v_fp8_cute(x)
    q8, qs = _kernels().quantize_q_int8_cute(x, T)
    r8, rs = ref.quantize_qk_int8(x, T, SM90_GEOMETRY, is_k=False)
    w8, ws = ref.quantize_v_fp8(x, SM90_GEOMETRY)
    diffs = {
        "q_scale": int((_bits(qs) != _bits(rs)).sum()),
        "q_int8": int((q8 != r8).sum()),
        "v_scale": int((_bits(vs) != _bits(ws)).sum()),
        "v_fp8": int((_bits(v8) != _bits(w8)).sum()),
    }
    assert not any(diffs.values()), f"reference.py and the kernels differ: {diffs}"


def test_tvm_ffi_path_is_used_when_installed():
    kern = _kernels()
    kern.set_launch_path(None)
    if not kern.tvm_ffi_available():
        pytest.skip("tvm_ffi not installed")
    x = make_input(1, 2, 100, 64, BF16, "NHD", seed=12)
    kern.quantize_q_int8_cute(x, T)
    kern.quantize_k_int8_cute(x, W, True)
    kern.quantize_v_fp8_cute(x)
    assert kern.launch_path()[0] == "tvm-ffi", kern.launch_path()


def test_new_seqlen_does_not_recompile():
    kern = _kernels()
    caches = (kern._compile_int8, kern._compile_kmean, kern._compile_v_fp8,
              kern._compile_int8_ffi, kern._compile_kmean_ffi, kern._compile_v_fp8_ffi)  # fmt: skip
    for length in (5, 129):
        x = make_input(1, 2, length, 128, BF16, "HND", seed=10)
        kern.quantize_q_int8_cute(x, T)
        kern.quantize_k_int8_cute(x, T, True)
        kern.quantize_v_fp8_cute(x)
    before = [c.cache_info().misses for c in caches]
    for length in (1, 33, 1000, 3000):
        x = make_input(2, 3, length, 128, BF16, "NHD", seed=10)
        kern.quantize_q_int8_cute(x, T)
        kern.quantize_k_int8_cute(x, T, True)
        kern.quantize_v_fp8_cute(x)
    torch.cuda.synchronize()
    assert [c.cache_info().misses for c in caches] == before


def test_rejects_bad_input():
    kern = _kernels()
    with pytest.raises(ValueError, match="bf16 or fp16"):
        kern.quantize_q_int8_cute(torch.zeros(1, 1, 4, 64, device="cuda"), T)
    with pytest.raises(ValueError, match="head_dim"):
        kern.quantize_v_fp8_cute(torch.zeros(1, 1, 4, 72, device="cuda", dtype=BF16))
    with pytest.raises(ValueError, match="head_dim"):
        kern.quantize_q_int8_cute(torch.zeros(1, 1, 4, 256, device="cuda", dtype=BF16), T)


# --------------------------------------------------------------------------
# timings (python tests/test_preprocess_gpu.py)
# --------------------------------------------------------------------------
def _bench(fn, iters=20, graph=False):
    """us per call: of the call loop (host bound for small problems), or, with
    ``graph``, of a CUDA graph replaying ``iters`` calls (GPU time only)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    run = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(iters):
                fn()
        run, iters_per_run = g.replay, iters
    else:
        iters_per_run = 1
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = max(1, iters // iters_per_run)
    start.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (reps * iters_per_run) * 1e3


def main():
    kern = _kernels()
    print(torch.cuda.get_device_name(), "launch path:", kern.launch_path())
    src = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = _bench(lambda: dst.copy_(src))  # not in a graph: a captured copy_ is a slower memcpy node
    print(f"device-to-device copy: {2 * src.numel() / us / 1e6:.2f} TB/s")
    for b, h, hkv, length, d in ((4, 32, 8, 1024, 128), (4, 32, 32, 8192, 128), (1, 32, 8, 1000, 64)):
        q = torch.randn(b, h, length, d, device="cuda", dtype=BF16)
        k = torch.randn(b, hkv, length, d, device="cuda", dtype=BF16)
        v = torch.randn(b, hkv, length, d, device="cuda", dtype=BF16)
        mb = lambda *ts: sum(t.numel() * t.element_size() for t in ts) / 1e6  # noqa: E731
        rows = [
            ("q int8 per_thread", lambda: kern.quantize_q_int8_cute(q, T), mb(q) * 1.5),
            ("k mean", lambda: kern.k_mean_cute(k), mb(k)),
            ("k int8 smooth (mean+quant)", lambda: kern.quantize_k_int8_cute(k, T, True), mb(k) * 2.5),
            ("v fp8", lambda: kern.quantize_v_fp8_cute(v), mb(v) * 2.5),
            ("q+k+v one launch", lambda: kern.quantize_qkv_cute(q, k, v, T, True), mb(q, k, v) * 1.5),
            ("torch ref q+k+v", lambda: (ref.quantize_qk_int8(q, T, is_k=False),
                                        ref.quantize_qk_int8(k, T, is_k=True, mean=ref.k_mean(k)),
                                        ref.quantize_v_fp8(v)), None),
        ]  # fmt: skip
        print(f"B{b} H{h}/{hkv} L{length} D{d}: us per call (GPU-bound value in a CUDA graph-free loop)")
        for name, fn, traffic in rows:
            line = f"  {name:28s}"
            for path in ("tvm-ffi", "pointer") if traffic else ("-",):
                if traffic:
                    kern.set_launch_path(path)
                us = _bench(fn)
                bw = f" {traffic / us:5.2f} TB/s" if traffic else ""
                line += f"  {path:8s}{us:8.1f}{bw}"
                if traffic and path == "tvm-ffi":  # GPU time alone
                    us = _bench(fn, graph=True)
                    line += f" (graph {us:7.1f} {traffic / us:5.2f} TB/s)"
            print(line)
        kern.set_launch_path(None)
    # host time per call: many calls on a tiny problem
    x = torch.randn(1, 1, 16, 64, device="cuda", dtype=BF16)
    for path in ("tvm-ffi", "pointer"):
        kern.set_launch_path(path)
        print(f"tiny call ({path}): q {_bench(lambda: kern.quantize_q_int8_cute(x, T), 200):.1f} us, "
              f"v {_bench(lambda: kern.quantize_v_fp8_cute(x), 200):.1f} us")
    kern.set_launch_path(None)


if __name__ == "__main__":
    main()
