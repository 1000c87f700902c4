"""Measured ceilings (FP8 / INT8 / bf16 GEMM, device copy bandwidth) and
datasheet peaks, for the roofline.

Datasheet numbers are dense (no 2:4 sparsity), in TFLOPS / TOPS and TB/s.
"""

from __future__ import annotations

import re

# Ordered: the first key contained in the (lower-cased) device name wins, so
# the more specific names come first.
DATASHEET: list[tuple[str, dict]] = [
    ("h200 nvl", dict(label="H200 NVL", bf16=835.0, fp8=1671.0, int8=1671.0, hbm_tbs=4.8)),
    ("h200", dict(label="H200 SXM", bf16=989.0, fp8=1979.0, int8=1979.0, hbm_tbs=4.8)),
    ("gh200", dict(label="GH200", bf16=989.0, fp8=1979.0, int8=1979.0, hbm_tbs=4.0)),
    ("h100 nvl", dict(label="H100 NVL", bf16=835.0, fp8=1671.0, int8=1671.0, hbm_tbs=3.9)),
    ("h100 pcie", dict(label="H100 PCIe", bf16=756.0, fp8=1513.0, int8=1513.0, hbm_tbs=2.0)),
    ("h100", dict(label="H100 SXM", bf16=989.0, fp8=1979.0, int8=1979.0, hbm_tbs=3.35)),
    ("h800", dict(label="H800 SXM", bf16=989.0, fp8=1979.0, int8=1979.0, hbm_tbs=3.35)),
    ("h20", dict(label="H20", bf16=148.0, fp8=296.0, int8=296.0, hbm_tbs=4.0)),
    ("gb200", dict(label="GB200", bf16=2500.0, fp8=5000.0, int8=5000.0, hbm_tbs=8.0)),
    ("b200", dict(label="B200", bf16=2250.0, fp8=4500.0, int8=4500.0, hbm_tbs=8.0)),
    ("b300", dict(label="B300", bf16=2250.0, fp8=4500.0, int8=None, hbm_tbs=8.0)),
    ("a100", dict(label="A100", bf16=312.0, fp8=None, int8=624.0, hbm_tbs=2.0)),
    ("l40s", dict(label="L40S", bf16=362.0, fp8=733.0, int8=733.0, hbm_tbs=0.864)),
    ("rtx 4090", dict(label="RTX 4090", bf16=165.0, fp8=330.0, int8=661.0, hbm_tbs=1.008)),
    ("rtx 5090", dict(label="RTX 5090", bf16=209.0, fp8=419.0, int8=838.0, hbm_tbs=1.79)),
]

FALLBACK = dict(label="unknown device", bf16=None, fp8=None, int8=None, hbm_tbs=None)


def datasheet_peaks(device_name: str) -> dict:
    """Peaks for ``device_name`` (e.g. 'NVIDIA H100 80GB HBM3'); the fallback
    has None everywhere (the report then uses the measured ceilings only)."""
    low = (device_name or "").lower()
    for key, peaks in DATASHEET:
        if key in low:
            return dict(peaks, matched=key)
    return dict(FALLBACK, matched=None)


def gpu_slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3'."""
    s = (device_name or "unknown").lower()
    s = re.sub(r"^nvidia\s+", "", s)
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    return s or "unknown"


def sage_compute_peak(peaks: dict) -> float | None:
    """Peak for sagecute's math: half the FLOPs INT8 (QK^T), half FP8 (PV)."""
    i8, f8 = peaks.get("int8"), peaks.get("fp8")
    if i8 and f8:
        return 2.0 / (1.0 / i8 + 1.0 / f8)
    return i8 or f8


def impl_precision(impl: str) -> str:
    """Which peak an implementation should be held against."""
    if impl.startswith("sagecute") or impl.startswith("sage2"):
        return "int8+fp8"
    if impl.startswith("sage1"):
        return "int8+fp16"  # QK INT8, PV fp16 (fp16 peak == bf16 peak)
    return "bf16"


def compute_peak(peaks: dict, precision: str) -> float | None:
    if precision == "int8+fp8":
        return sage_compute_peak(peaks)
    if precision == "int8+fp16":
        i8, b = peaks.get("int8"), peaks.get("bf16")
        return 2.0 / (1.0 / i8 + 1.0 / b) if i8 and b else b
    return peaks.get("bf16")


def measured_compute_ceiling(ceilings: dict, precision: str) -> float | None:
    """Same combination as ``compute_peak`` from the measured GEMM TOPS."""
    get = lambda k: (ceilings.get(k) or {}).get("tops")  # noqa: E731
    return compute_peak({"bf16": get("bf16_gemm"), "fp8": get("fp8_gemm"), "int8": get("int8_gemm")}, precision)


# ------------------------------------------------------------------ measuring

def _measure(fns, flops=None, nbytes=None, **timing_kw) -> dict:
    from sagecute.perf.timing import time_fns

    t = time_fns(fns, **timing_kw)
    out = {"ms": t.ms}
    if flops:
        out["tops"] = flops / (t.ms * 1e-3) / 1e12
        out["flops"] = flops
    if nbytes:
        out["tbs"] = nbytes / (t.ms * 1e-3) / 1e12
        out["bytes"] = nbytes
    return out


def gemm_fp8(n: int = 8192, device="cuda", **kw) -> dict:
    """``torch._scaled_mm`` e4m3 x e4m3 -> bf16, unit scales, B column-major.

    Fast accumulation (no extra fp32 promotion) is what a plain WGMMA chain
    does, so it is the hardware ceiling."""
    import torch

    a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()  # column-major
    one = torch.tensor(1.0, device=device)
    fn = lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,  # noqa: E731
                                  use_fast_accum=True)
    return dict(_measure([fn], flops=2.0 * n ** 3, **kw), shape=[n, n, n], op="torch._scaled_mm e4m3 fast-accum")


def gemm_int8(n: int = 8192, device="cuda", **kw) -> dict:
    """``torch._int_mm`` int8 x int8 -> int32, B column-major."""
    import torch

    a = torch.randint(-64, 64, (n, n), device=device, dtype=torch.int8)
    b = torch.randint(-64, 64, (n, n), device=device, dtype=torch.int8).t()
    op = "torch._int_mm (B col-major)"
    try:
        torch._int_mm(a, b)
    except RuntimeError:  # some builds want both row-major
        b, op = b.contiguous(), "torch._int_mm"
    fn = lambda: torch._int_mm(a, b)  # noqa: E731
    return dict(_measure([fn], flops=2.0 * n ** 3, **kw), shape=[n, n, n], op=op)


def gemm_bf16(n: int = 8192, device="cuda", **kw) -> dict:
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    fn = lambda: torch.mm(a, b)  # noqa: E731
    return dict(_measure([fn], flops=2.0 * n ** 3, **kw), shape=[n, n, n], op="torch.mm bf16")


def copy_bandwidth(nbytes: int = 1 << 30, device="cuda", **kw) -> dict:
    """Device-to-device ``copy_``; bandwidth counts bytes read + written."""
    import torch

    n = nbytes // 4
    src = torch.empty(n, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)  # noqa: E731
    return dict(_measure([fn], nbytes=2.0 * n * 4, **kw), size_bytes=n * 4, op="Tensor.copy_ (read+write)")


def measure_all(n: int = 8192, copy_bytes: int = 1 << 30, device="cuda", log=None, **kw) -> dict:
    """All ceilings; one that raises is recorded as ``{"error": ...}``."""
    import torch

    out: dict = {}
    for key, f, arg in (("fp8_gemm", gemm_fp8, n), ("int8_gemm", gemm_int8, n),
                        ("bf16_gemm", gemm_bf16, n), ("copy", copy_bandwidth, copy_bytes)):
        try:
            out[key] = f(arg, device=device, **kw)
        except Exception as e:  # noqa: BLE001 - a missing op is a note, not a failure
            out[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        finally:
            try:
                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001
                pass
        if log:
            r = out[key]
            val = f"{r['tops']:.0f} TOPS" if "tops" in r else f"{r['tbs']:.2f} TB/s" if "tbs" in r else r.get("error")
            log(f"ceiling {key}: {val}")
    return out
