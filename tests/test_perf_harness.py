"""CPU tests of the benchmark / accuracy harness (sagecute.perf). No GPU, fast."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

torch = pytest.importorskip("torch")

from sagecute.perf import accuracy, ceilings, cli, peers, report, shapes, timing  # noqa: E402


# ------------------------------------------------------------------ shapes

def test_grid_default_and_order():
    g = shapes.build_grid()
    assert len(g) == 6 * 2 * 2
    assert {s.Lq for s in g} == {1024, 2048, 4096, 8192, 16384, 32768}
    assert {s.D for s in g} == {64, 128} and {s.causal for s in g} == {False, True}
    assert all(s.B == 4 and s.H == 32 and s.hkv == 32 and s.Lq == s.Lk for s in g)
    # short sequences first across every (D, causal) group
    assert [s.Lq for s in g[:4]] == [1024] * 4
    assert [s.Lq for s in g] == sorted(s.Lq for s in g)


def test_grid_gqa_drops_non_divisors():
    g = shapes.build_grid(B=[1], H=[32], L=[1024], D=[128], causal=[False], Hkv=[None, 8, 5])
    assert [s.hkv for s in g] == [32, 8]
    assert g[1].gqa == 4 and "H32/8" in g[1].label()
    with pytest.raises(ValueError):
        shapes.Shape(B=1, H=32, Lq=8, Lk=8, D=64, causal=False, Hkv=5)


def test_flops_causal_halves():
    f = shapes.attention_flops(4, 32, 1024, 1024, 128, False)
    assert f == 4 * 4 * 32 * 1024 * 1024 * 128
    assert shapes.attention_flops(4, 32, 1024, 1024, 128, True) == f / 2
    s = shapes.Shape(B=2, H=8, Lq=512, Lk=256, D=64, causal=False)
    assert shapes.shape_flops(s) == 4 * 2 * 8 * 512 * 256 * 64
    assert shapes.tops(1e12, 1.0) == pytest.approx(1000.0)
    assert math.isnan(shapes.tops(1e12, 0.0))


def test_bytes_moved():
    # e2e: bf16 q + o [B,H,Lq,D], k + v [B,Hkv,Lk,D]
    assert shapes.bytes_e2e(1, 4, 2, 8, 16, 64) == 2 * (2 * 4 * 8 * 64 + 2 * 2 * 16 * 64)
    # kernel: int8 q, int8 k, fp8 v, bf16 o
    assert shapes.bytes_kernel(1, 4, 2, 8, 16, 64) == 4 * 8 * 64 + 2 * 2 * 16 * 64 + 2 * 4 * 8 * 64
    row = dict(impl="x", mode="kernel", B=1, H=4, Hkv=2, Lq=8, Lk=16, D=64, causal=True)
    assert shapes.row_bytes(row) == shapes.bytes_kernel(1, 4, 2, 8, 16, 64)
    assert shapes.row_flops(row) == 4 * 4 * 8 * 16 * 64 / 2


def test_parse_lists():
    assert shapes.parse_int_list("1k,2K, 4096") == [1024, 2048, 4096]
    assert shapes.parse_bool_list("F,T") == [False, True]
    assert shapes.parse_bool_list("0,1,true") == [False, True, True]
    with pytest.raises(ValueError):
        shapes.parse_bool_list("maybe")


def test_n_buffers():
    assert timing.n_buffers(10 << 20, 50 << 20) == 8  # small sets: capped
    assert timing.n_buffers(1 << 30, 50 << 20) == 2  # huge sets: floor
    assert timing.n_buffers(50 << 20, 50 << 20) == 3


def test_progress_plain_text(capsys):
    import io

    buf = io.StringIO()
    p = timing.Progress(2, stream=buf)
    p.step("a")
    p.note("skip x")
    p.step("b")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3 and "1/2" in lines[0] and "2/2" in lines[2] and lines[1] == "skip x"


# ------------------------------------------------------------------ metrics

def test_metrics_known_values():
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0])
    m = accuracy.metrics(ref.clone(), ref)
    assert m["cos"] == pytest.approx(1.0) and m["rel_l1"] == 0 and m["rmse"] == 0 and m["max_abs"] == 0
    out = torch.tensor([1.0, 2.0, 3.0, 5.0])
    m = accuracy.metrics(out, ref)
    assert m["rel_l1"] == pytest.approx(1 / 10)
    assert m["rmse"] == pytest.approx(math.sqrt(1 / 4))
    assert m["max_abs"] == pytest.approx(1.0)
    assert m["cos"] == pytest.approx(float(out @ ref) / (out.norm() * ref.norm()).item())
    assert accuracy.metrics(-ref, ref)["cos"] == pytest.approx(-1.0)
    assert accuracy.metrics(torch.tensor([1.0, float("nan")]), torch.ones(2))["nonfinite"] == 1
    with pytest.raises(ValueError):
        accuracy.metrics(torch.ones(3), torch.ones(4))


def test_exact_attention_matches_sdpa():
    q, k, v = accuracy.make_inputs("normal", 1, 4, 2, 32, 16, dtype=torch.float32, seed=1)
    for causal in (False, True):
        got = accuracy.exact_attention_torch(q, k, v, causal)
        kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        want = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, is_causal=causal)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # row blocks (long sequences) give the same result
    full = accuracy.exact_attention_torch(q, k, v, True)
    import unittest.mock as _m

    with _m.patch.object(accuracy, "REF_BLOCK_ELEMS", 32 * 5):
        torch.testing.assert_close(accuracy.exact_attention_torch(q, k, v, True), full, atol=1e-6, rtol=1e-6)
    # exact_attention() with whatever the project reference is, or the local one
    out = accuracy.exact_attention(q, k, v, True, 0.3)
    want = accuracy.exact_attention_torch(q, k, v, True, 0.3)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)


def test_input_cases():
    B, H, Hkv, L, D = 1, 4, 2, 64, 32
    n = accuracy.make_inputs("normal", B, H, Hkv, L, D, seed=3)
    assert [t.shape for t in n] == [(B, H, L, D), (B, Hkv, L, D), (B, Hkv, L, D)]
    assert n[0].dtype == torch.bfloat16
    o = accuracy.make_inputs("outlier", B, H, Hkv, L, D, seed=3, dtype=torch.float32)
    ch_mean = o[1].mean(dim=2).abs()  # per-channel bias ~ 8 sigma
    assert ch_mean.mean() > 3.0
    p = accuracy.make_inputs("peaked", B, H, Hkv, L, D, causal=True, seed=3, dtype=torch.float32)
    q, k, _ = p
    s = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * D ** -0.5
    s = s.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf"))
    rows = torch.arange(0, L, accuracy.PEAK_EVERY)
    top = s[:, :, rows].max(-1).values
    assert torch.allclose(top, torch.full_like(top, accuracy.PEAK_LOGIT), atol=1e-3)
    pmax = torch.softmax(s[:, :, rows], -1).max(-1).values
    assert pmax.min() > 0.9  # sharp
    with pytest.raises(ValueError):
        accuracy.make_inputs("bogus", 1, 1, 1, 8, 8)


def test_head_dim_padding():
    assert accuracy.padded_head_dim(40) == 64 and accuracy.padded_head_dim(64) == 64
    assert accuracy.padded_head_dim(96) == 128 and accuracy.padded_head_dim(128) == 128
    with pytest.raises(ValueError):
        accuracy.padded_head_dim(256)
    t = torch.ones(1, 1, 2, 40)
    p = accuracy.pad_head_dim(t, 64)
    assert p.shape[-1] == 64 and p[..., 40:].abs().sum() == 0


class _FakeAdapter(peers.Adapter):
    def __init__(self, name, noise=0.0, fail=False):
        super().__init__()
        self.name, self.noise, self.fail = name, noise, fail

    def _check(self):
        return True, ""

    def prepare(self, q, k, v, causal, sm_scale=None):
        if self.fail:
            raise RuntimeError("unsupported shape")

        def fn():
            o = accuracy.exact_attention_torch(q, k, v, causal, sm_scale)
            return o + self.noise
        return fn


def test_evaluate_records_errors_and_official_diff():
    q, k, v = accuracy.make_inputs("normal", 1, 2, 2, 16, 8, dtype=torch.float32)
    a, b, bad = _FakeAdapter("sagecute-x"), _FakeAdapter("sage2-x", noise=0.01), _FakeAdapter("fa4", fail=True)
    recs = accuracy.evaluate([a, bad], q, k, v, causal=False, sm_scale=None, info={"case": "normal"},
                             official={"sagecute-x": b})
    by = {(r["impl"], r["ref"]): r for r in recs}
    assert by[("sagecute-x", "exact")]["rmse"] < 1e-6
    assert "unsupported shape" in by[("fa4", "exact")]["error"]
    assert by[("sage2-x", "exact")]["max_abs"] == pytest.approx(0.01, rel=1e-3)
    assert by[("sagecute-x", "sage2-x")]["max_abs"] == pytest.approx(0.01, rel=1e-3)


# ------------------------------------------------------------------ --qkv loader

def test_qkv_loader_pads_and_scales(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    g = torch.Generator().manual_seed(0)
    tensors = {
        "layer0.q": torch.randn(1, 2, 16, 40, generator=g),
        "layer0.k": torch.randn(1, 2, 16, 40, generator=g),
        "layer0.v": torch.randn(1, 2, 16, 40, generator=g),
        "blk.attn.q": torch.randn(2, 8, 64, generator=g),  # 3-D: [H, L, D]
        "blk.attn.k": torch.randn(1, 8, 64, generator=g),
        "blk.attn.v": torch.randn(1, 8, 64, generator=g),
        "lonely.q": torch.randn(1, 1, 4, 8, generator=g),
        "huge.q": torch.randn(1, 1, 4, 192), "huge.k": torch.randn(1, 1, 4, 192), "huge.v": torch.randn(1, 1, 4, 192),
    }
    path = tmp_path / "qkv.safetensors"
    st.save_file(tensors, str(path))
    items, notes = accuracy.load_qkv(str(path))
    names = [n for n, *_ in items]
    assert names == ["blk.attn", "layer0"]
    assert items[0][1].shape == (1, 2, 8, 64) and items[0][2].shape == (1, 1, 8, 64)  # GQA kept
    assert any("lonely" in n for n in notes) and any("huge" in n for n in notes)
    # padded run: outputs and reference on the original 40 channels, sm_scale of D=40
    name, q, k, v = items[1]
    d = q.shape[-1]
    dp = accuracy.padded_head_dim(d)
    qp, kp, vp = (accuracy.pad_head_dim(t, dp) for t in (q, k, v))
    assert qp.shape[-1] == 64
    recs = accuracy.evaluate([_FakeAdapter("sagecute-x")], qp, kp, vp, causal=True, sm_scale=d ** -0.5,
                             info={"case": f"qkv:{name}"}, d_orig=d)
    assert recs[0]["rmse"] < 1e-6 and recs[0]["cos"] == pytest.approx(1.0)


# ------------------------------------------------------------------ peers

def test_peers_missing_are_skipped_with_reason(monkeypatch):
    # no CUDA here: every adapter is unavailable, with a reason, never raising
    for ad in peers.bench_adapters() + peers.accuracy_adapters():
        ok, why = ad.is_available()
        if not torch.cuda.is_available():
            assert ok is False and why
    # a peer whose import fails is a skip with the ImportError as reason
    monkeypatch.setattr(peers, "_cuda_reason", lambda: None)
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", None)
    ok, why = peers.FA4().is_available()
    assert not ok and "Error" in why
    # sageattention of the other major version
    monkeypatch.setattr(peers, "sageattention_major", lambda: (1, "1.0.6"))
    monkeypatch.setitem(sys.modules, "sageattention", type(sys)("sageattention"))
    ok1, _ = peers.Sage(1).is_available()
    ok2, why2 = peers.Sage(2).is_available()
    assert ok1 and not ok2 and "1.0.6" in why2


def test_sagecute_kernel_mode_needs_prepare_api(monkeypatch):
    monkeypatch.setattr(peers, "_cuda_reason", lambda: None)
    fake_api = type(sys)("sagecute.api")
    fake_api.sageattn = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "sagecute.api", fake_api)
    ok, why = peers.SagecuteKernel().is_available()
    assert not ok and "prepare_inputs" in why and "kernel-only" in why
    fake_api.prepare_inputs = lambda q, k, v, **kw: ("prepared", kw)
    fake_api.attention_prepared = lambda p: p
    ad = peers.SagecuteKernel("fp32", "per_warp")
    assert ad.is_available()[0] and ad.name == "sagecute-fp32-per_warp" and ad.mode == "kernel"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    t = torch.zeros(1)
    fn = ad.prepare(t, t, t, True)
    _, kw = fn()
    assert kw["pv_accum_dtype"] == "fp32" and kw["qk_quant_gran"] == "per_warp" and kw["is_causal"] is True
    # e2e pins backend= to the arch: no silent SDPA fallback timed as sagecute
    calls = []
    monkeypatch.setattr(peers, "_sagecute_sageattn", lambda: lambda q, k, v, **kw: calls.append(kw))
    peers.SagecuteE2E("fp32+fp32").prepare(t, t, t, False)()
    assert calls[0]["backend"] == "sm90" and calls[0]["pv_accum_dtype"] == "fp32+fp32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    with pytest.raises(NotImplementedError, match="sm80"):
        peers.SagecuteE2E().prepare(t, t, t, False)


def test_adapter_names_and_selection():
    names = [a.name for a in peers.bench_adapters()]
    assert names.count("sagecute-fp32+fp32") == 2  # e2e + kernel
    assert {"fa4", "sdpa-cudnn", "sdpa-flash", "sage1", "sage2"} <= set(names)
    sel = peers.select(peers.bench_adapters(), ["sagecute-fp32+", "fa4"])
    assert {a.name for a in sel} == {"sagecute-fp32+fp32", "fa4"}
    acc = [a.name for a in peers.accuracy_adapters()]
    assert "sagecute-fp32-per_warp" in acc and "sagecute-fp32+fp32" in acc


def test_nhd_output_to_hnd():
    ad = peers.FA4()
    out = torch.zeros(2, 5, 3, 4)  # B, L, H, D
    assert ad.output_hnd((out, None)).shape == (2, 3, 5, 4)


# ------------------------------------------------------------------ ceilings

def test_datasheet_and_slug():
    p = ceilings.datasheet_peaks("NVIDIA H100 80GB HBM3")
    assert p["bf16"] == 989 and p["fp8"] == 1979 and p["int8"] == 1979
    assert ceilings.datasheet_peaks("NVIDIA H200")["fp8"] == 1979
    assert ceilings.datasheet_peaks("NVIDIA H100 PCIe")["bf16"] == 756
    assert ceilings.datasheet_peaks("Some Future GPU")["bf16"] is None
    assert ceilings.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert ceilings.sage_compute_peak({"int8": 1979, "fp8": 1979}) == pytest.approx(1979)
    assert ceilings.impl_precision("sagecute-fp32") == "int8+fp8"
    assert ceilings.impl_precision("fa4") == "bf16"


# ------------------------------------------------------------------ report

def synthetic_results():
    rows = []
    for causal in (False, True):
        for L in (1024, 2048):
            for impl, mode, t in (("fa4", "e2e", 500.0), ("sagecute-fp32+fp32", "e2e", 600.0),
                                  ("sagecute-fp32+fp32", "kernel", 750.0), ("sdpa-cudnn", "e2e", 450.0)):
                tt = t * (0.8 if causal else 1.0) * (1.0 if L == 2048 else 0.9)
                f = shapes.attention_flops(4, 32, L, L, 128, causal)
                rows.append(dict(impl=impl, mode=mode, B=4, H=32, Hkv=32, Lq=L, Lk=L, D=128, causal=causal,
                                 dtype="bf16", ms=f / (tt * 1e12) * 1e3, tops=tt))
    return {
        "schema": 1, "date": "2026-11-22",
        "device": {"name": "NVIDIA H100 80GB HBM3", "driver": "580.00", "capability": "9.0", "sm_count": 132,
                   "memory_gb": 85.0},
        "versions": {"torch": "2.11.0", "nvidia-cutlass-dsl": "4.8.1", "flash-attn-4": "4.0.0b36"},
        "peaks": ceilings.datasheet_peaks("NVIDIA H100 80GB HBM3"),
        "config": {"argv": ["--quick"], "timer": "events", "bufs": 0},
        "peers": {"fa4": {"available": True, "version": "4.0.0b36"},
                  "sage2": {"available": False, "reason": "sageattention 1.0.6 installed, not 2.x"}},
        "notes": ["sage2 (e2e) skipped: sageattention 1.0.6 installed, not 2.x"],
        "skips": [{"impl": "sdpa-flash", "mode": "e2e", "shape": "B4 H32 L1024 D128", "reason": "RuntimeError: x"}],
        "rows": rows,
        "ceilings": {"fp8_gemm": {"ms": 1.0, "tops": 1300.0, "shape": [8192] * 3, "op": "torch._scaled_mm e4m3"},
                     "int8_gemm": {"error": "RuntimeError: not supported"},
                     "bf16_gemm": {"ms": 1.6, "tops": 700.0, "shape": [8192] * 3, "op": "torch.mm bf16"},
                     "copy": {"ms": 0.7, "tbs": 3.0, "size_bytes": 1 << 30, "op": "Tensor.copy_"}},
        "accuracy": [
            {"case": "normal", "B": 1, "H": 8, "Hkv": 8, "Lq": 1024, "Lk": 1024, "D": 128, "causal": False,
             "impl": "sagecute-fp32+fp32", "ref": "exact", "cos": 0.99995, "rel_l1": 0.012, "rmse": 0.0004,
             "max_abs": 0.01},
            {"case": "peaked", "B": 1, "H": 8, "Hkv": 8, "Lq": 1024, "Lk": 1024, "D": 128, "causal": True,
             "impl": "fa4", "ref": "exact", "error": "RuntimeError: boom"},
            {"case": "normal", "B": 1, "H": 8, "Hkv": 8, "Lq": 1024, "Lk": 1024, "D": 128, "causal": False,
             "impl": "sagecute-fp32+fp32", "ref": "sage1", "cos": 0.9999, "rel_l1": 0.02, "rmse": 0.001,
             "max_abs": 0.02},
        ],
    }


def test_row_schema():
    res = synthetic_results()
    for r in res["rows"]:
        report.check_row(r)
        assert r["impl"].startswith(("sagecute", "fa4", "sdpa-cudnn", "sdpa-flash", "sage1", "sage2"))
    bad = dict(res["rows"][0], mode="both")
    with pytest.raises(ValueError):
        report.check_row(bad)
    with pytest.raises(ValueError):
        report.check_row({k: v for k, v in res["rows"][0].items() if k != "tops"})
    json.dumps(res)  # serializable


def test_report_rendering(tmp_path):
    res = synthetic_results()
    r = report.write_report(res, str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "NVIDIA H100 80GB HBM3" in md and "2026-11-22" in md
    assert "### D=128 non-causal (B=4 H=32)" in md and "### D=128 causal (B=4 H=32)" in md
    # sagecute 600 vs fa4 500 at L=2048 non-causal -> 1.20x; kernel 750 -> 1.50x
    assert "| 2048 | 600 (1.20x) | 750 (1.50x) | 500 | 450 (0.90x) |" in md
    assert "sagecute-fp32+fp32 [kernel]" in md
    assert "1300 TOPS" in md and "error: RuntimeError: not supported" in md  # ceilings
    assert "0.999950" in md and "RuntimeError: boom" in md  # accuracy, errors included
    assert "against the official SageAttention" in md
    assert "sage2" in md and "not 2.x" in md
    assert "% peak" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r["plots"] == []
    else:
        for name in ("tops_vs_L.png", "roofline.png"):
            p = tmp_path / name
            assert p.exists() and 1000 < p.stat().st_size < 150_000
            assert f"]({name})" in md


def test_roofline_points():
    pts = report.roofline_points(synthetic_results())
    k = next(p for p in pts if p["label"] == "sagecute-fp32+fp32 [kernel]")
    assert k["precision"] == "int8+fp8" and k["peak"] == pytest.approx(1979)
    assert k["ai"] == pytest.approx(shapes.row_flops(dict(B=4, H=32, Lq=k["Lq"], Lk=k["Lk"], D=128,
                                                          causal=False if k["key"][1] is False else True))
                                    / shapes.bytes_kernel(4, 32, 32, k["Lq"], k["Lk"], 128))
    f = next(p for p in pts if p["impl"] == "fa4" and p["Lq"] == 2048)
    assert f["peak"] == 989 and f["ceiling"] == 700 and f["bound"] == "compute" and f["exp_roof"] is None
    res = synthetic_results()
    res["device"]["max_sm_clock_mhz"] = 1980
    pts = report.roofline_points(res)
    k = next(p for p in pts if p["label"] == "sagecute-fp32+fp32 [kernel]" and p["Lq"] == 2048)
    assert k["exp_roof"] == pytest.approx(132 * 1.98e9 * 16 * 4 * 128 / 1e12)  # ~2141 TOPS at D=128
    assert k["bound"] == "compute"  # 1979 < 2141


def test_report_only_cli(tmp_path, capsys):
    res = synthetic_results()
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    assert cli.main(["--report-only", str(path), "--no-plots"]) == 0
    assert (tmp_path / "report.md").exists()
    out_dir = tmp_path / "other"
    assert cli.main(["--report-only", str(path), "--out", str(out_dir)]) == 0
    assert (out_dir / "report.md").exists()
    assert "wrote" in capsys.readouterr().out


def test_cli_parser_and_quick_defaults():
    assert "--report-only" in cli.build_parser().format_help()
    args = cli.build_parser().parse_args(["--quick"])
    cli._apply_quick(args)
    assert shapes.parse_int_list(args.L) == list(shapes.QUICK_L)
    assert args.budget_s == cli.QUICK_BUDGET_S and args.rep_ms < 100
    args = cli.build_parser().parse_args(["--L", "2k", "--hkv", "8", "--qkv", "a.st", "--qkv", "b.st"])
    cli._apply_quick(args)
    assert shapes.parse_int_list(args.L) == [2048] and args.qkv == ["a.st", "b.st"]
    assert args.budget_s == cli.DEFAULT_BUDGET_S
    p = cli.default_out_dir("NVIDIA H100 80GB HBM3", True, "2026-11-22")
    assert p.name == "2026-11-22_h100-80gb-hbm3-quick" and p.parent.name == "results"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_cli_without_gpu_exits_cleanly(capsys):
    assert cli.main(["--quick"]) == 2
    assert "no CUDA" in capsys.readouterr().err


# ------------------------------------------------------------------ orchestration on CPU

class _Timed(_FakeAdapter):
    def __init__(self, name, mode="e2e", fail_d=None):
        super().__init__(name)
        self.mode, self.fail_d = mode, fail_d

    def prepare(self, q, k, v, causal, sm_scale=None):
        if q.shape[-1] == self.fail_d:
            raise RuntimeError(f"head_dim {self.fail_d} not supported")
        return super().prepare(q, k, v, causal, sm_scale)


def _cpu_run(tmp_path, monkeypatch, argv):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a, **k: (80 << 30, 80 << 30))
    monkeypatch.setattr(cli, "time_fns", lambda fns, **kw: timing.Timing(2.0, 1.9, 2.1, 5, "fake"))
    fakes = [_Timed("sagecute-fp32+fp32"), _Timed("sagecute-fp32+fp32", "kernel"), _Timed("fa4"),
             _Timed("sdpa-flash", fail_d=32)]
    monkeypatch.setattr(peers, "bench_adapters", lambda *a, **k: fakes)
    monkeypatch.setattr(peers, "accuracy_adapters", lambda *a, **k: [fakes[0], fakes[2], fakes[3]])
    args = cli.build_parser().parse_args(argv + ["--device", "cpu", "--out", str(tmp_path)])
    cli._apply_quick(args)
    results = {"device": {"name": "cpu", "l2_bytes": 1 << 20}, "peers": {}, "notes": [], "skips": [], "rows": [],
               "ceilings": {}, "accuracy": [], "config": {}}
    import io

    return cli.Run(args, argv, tmp_path, results, progress_stream=io.StringIO()), results


def test_bench_and_accuracy_phases_on_cpu(tmp_path, monkeypatch):
    run, res = _cpu_run(tmp_path, monkeypatch, ["--B", "1", "--H", "2", "--L", "64,128", "--D", "32,64",
                                                 "--causal", "F,T", "--acc-L", "32", "--acc-H", "2",
                                                 "--cases", "normal,peaked"])
    shp = shapes.build_grid(B=[1], H=[2], L=[64, 128], D=[32, 64], causal=[False, True])
    cli.phase_bench(run, shp, deadline=None)
    assert len(res["rows"]) == 8 * 4 - 4 and len(res["skips"]) == 4  # sdpa-flash raises at D=32
    assert all("head_dim 32" in s["reason"] for s in res["skips"])
    for r in res["rows"]:
        report.check_row(r)
    r0 = res["rows"][0]
    assert r0["tops"] == pytest.approx(shapes.attention_flops(1, 2, 64, 64, 32, False) / 2e-3 / 1e12)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == len(res["rows"])
    cli.phase_accuracy(run, deadline=None)
    acc = res["accuracy"]
    assert {a["case"] for a in acc} == {"normal", "peaked"}
    ok = [a for a in acc if "error" not in a]
    assert ok and all(a["cos"] > 0.9999 for a in ok)
    assert sum("error" in a for a in acc) == 4  # sdpa-flash at D=32: 2 cases x 2 causal
    md = report.write_report(res, str(tmp_path), plots=False)["report"]
    assert "fa4" in open(md).read()


def test_bench_budget_and_qkv_on_cpu(tmp_path, monkeypatch):
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "real.safetensors"
    st.save_file({"l0.q": torch.randn(1, 2, 32, 40), "l0.k": torch.randn(1, 2, 32, 40),
                  "l0.v": torch.randn(1, 2, 32, 40)}, str(path))
    run, res = _cpu_run(tmp_path, monkeypatch, ["--causal", "T", "--qkv", str(path), "--cases", "normal",
                                                 "--acc-L", "32", "--acc-H", "2", "--D", "64"])
    cli.phase_bench(run, shapes.build_grid(B=[1], H=[2], L=[64], D=[64], causal=[True]), deadline=0.0)
    assert res["rows"] == [] and any("time budget" in n for n in res["notes"])
    cli.phase_accuracy(run, deadline=None)
    real = [a for a in res["accuracy"] if a["case"] == "qkv:l0"]
    assert real and all(a["D"] == 40 and a["padded_D"] == 64 and a["causal"] for a in real)
    assert all(a["rmse"] < 1e-5 for a in real if "error" not in a)


def test_safetensors_fallback_reader(tmp_path):
    import struct

    q = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
    k = torch.arange(24, dtype=torch.bfloat16).reshape(1, 2, 3, 4)
    blobs, header, off = [], {}, 0
    for name, t in (("a.q", q), ("a.k", k), ("a.v", k)):
        raw = t.contiguous().view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": {torch.float32: "F32", torch.bfloat16: "BF16"}[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    path = tmp_path / "hand.safetensors"
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    got = accuracy.read_safetensors(str(path))
    assert torch.equal(got["a.q"], q) and torch.equal(got["a.k"], k) and got["a.v"].dtype == torch.bfloat16
    try:
        import safetensors.torch as st
    except ImportError:
        return
    assert torch.equal(st.load_file(str(path))["a.q"], q)  # the real reader agrees


def test_stall_watchdog_saves_and_exits(tmp_path, monkeypatch):
    import time as _time

    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    run, res = _cpu_run(tmp_path, monkeypatch, [])
    run.beat("bench sagecute-fp32 B1 H2 L64 D64")
    run.start_watchdog(0.2, plots=False)
    for _ in range(100):
        if exits:
            break
        _time.sleep(0.05)
    assert exits == [3]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["aborted"].startswith("bench sagecute-fp32") and any("stalled" in n for n in saved["notes"])
    assert "stalled" in (tmp_path / "report.md").read_text()


def test_main_end_to_end_on_cpu(tmp_path, monkeypatch):
    """main() with CUDA calls stubbed and fake adapters: every phase, files written."""
    _cpu_run(tmp_path, monkeypatch, [])  # installs the stubs and fake adapters
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a: None)
    monkeypatch.setattr(cli, "device_info", lambda dev: {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0",
                                                        "driver": "x", "l2_bytes": 50 << 20})
    monkeypatch.setattr(ceilings, "measure_all", lambda **kw: {"bf16_gemm": {"ms": 1.0, "tops": 700.0},
                                                              "copy": {"ms": 1.0, "tbs": 3.0}})
    out = tmp_path / "run"
    rc = cli.main(["--device", "cpu", "--out", str(out), "--B", "1", "--H", "2", "--L", "64,128", "--D", "64",
                   "--acc-L", "32", "--acc-H", "2", "--no-plots", "--stall-s", "0"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["device"]["name"] == "NVIDIA H100 80GB HBM3" and res["peaks"]["bf16"] == 989
    assert len(res["rows"]) == 2 * 2 * 4 and res["accuracy"] and res["ceilings"]["bf16_gemm"]["tops"] == 700
    assert {"torch", "python"} <= set(res["versions"])
    md = (out / "report.md").read_text()
    assert "(1.00x)" in md and "## Accuracy" in md


def test_exact_attention_uses_project_reference_in_fp32(monkeypatch):
    seen = {}

    def fake_ref(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, compute_dtype=torch.float64):
        seen.update(is_causal=is_causal, sm_scale=sm_scale, compute_dtype=compute_dtype)
        return accuracy.exact_attention_torch(q, k, v, is_causal, sm_scale).to(compute_dtype)

    q, k, v = accuracy.make_inputs("normal", 1, 2, 2, 16, 8, dtype=torch.float32)
    out = accuracy.exact_attention(q, k, v, True, 0.25, fn=fake_ref)
    assert seen == {"is_causal": True, "sm_scale": 0.25, "compute_dtype": torch.float32}
    assert out.dtype == torch.float32
    seen.clear()
    monkeypatch.setattr(accuracy, "REF_MAX_SCORES", 10)  # too big for the all-at-once reference
    accuracy.exact_attention(q, k, v, True, 0.25, fn=fake_ref)
    assert seen == {}


def test_bench_ms_is_exported():
    assert callable(timing.bench_ms)  # used by `python -m sagecute demo`


def test_host_overhead_fake_mode_runs():
    """perf/host_overhead.py --fake: the API's Python path with CUDA-free stand-ins."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "perf" / "host_overhead.py"
    r = subprocess.run([sys.executable, str(script), "--fake", "--n", "5", "--rounds", "1", "--top", "3"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "host time per call" in r.stdout



def test_source_hash_names_the_sources(tmp_path):
    """versions() records a hash of the package sources (a GPU machine's .git may be
    stale): stable, blind to caches, changed by any source byte or file name."""
    assert cli.versions()["sagecute source"] == cli.source_hash()
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    first = cli.source_hash(tmp_path)
    assert len(first) == 12 and cli.source_hash(tmp_path) == first
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "c.py").write_text("z = 3\n")
    assert cli.source_hash(tmp_path) == first
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    assert cli.source_hash(tmp_path) != first
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "sub" / "b.py").rename(tmp_path / "sub" / "c.py")
    assert cli.source_hash(tmp_path) != first
