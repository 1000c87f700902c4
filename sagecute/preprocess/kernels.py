"""Host wrappers of the CuTe DSL quantizers (device code in ``kernels/common/quant_*.py``).

Same return conventions as the torch oracles of ``sagecute.reference``
(docs/kernel-contract.md), bit-exact with the contract's IEEE arithmetic
(tests/test_preprocess_gpu.py, Note [IEEE oracles]):

* ``quantize_q_int8_cute(q, gran)`` -> ``(q_int8, q_scale)``
* ``quantize_k_int8_cute(k, gran, smooth_k, mean=None)`` -> ``(k_int8, k_scale, k_mean | None)``
* ``quantize_v_fp8_cute(v, scale_max=448.0)`` -> ``(v_fp8, v_scale)``
* ``k_mean_cute(k)`` -> ``k_mean`` (sum order differs from torch: Note [K mean
  summation order] in ``kernels/common/quant_kmean.py``)
* ``compile_all_preprocess(arch, out_dir=None, quick=False)``: every variant
  without a GPU, for ``python -m sagecute compile`` (``sagecute.compile_report``).

Inputs are bf16/fp16 HND views ``[B, H, L, D]`` with any strides and a unit last
stride (an NHD tensor is passed as its HND-permuted view). Views whose strides
or base pointer are not 16-byte aligned are copied to contiguous first.

Compile key: exactly (kernel, dtype, head_dim, granularity, is_k, has_mean,
geometry, arch) and the launch path (Note [Two launch paths]). Batch, heads,
seqlen, strides and ``scale_max`` are runtime arguments: a new sequence length
never recompiles.

``quantize_qkv_cute(q, k, v, gran, smooth_k, scale_max)`` does all three in one
launch (``kernels/common/quant_qkv.py``) on the TVM-FFI path; the API uses it with
``with_q=False`` (K and V only) where the attention kernel quantizes Q itself.
Standalone, K smoothing is two launches (``k_mean_cute`` reads K once, the
quantizer reads it again); Q is one launch, V is one launch reading V twice.
"""

from __future__ import annotations

import functools
import os
import re
import time
from typing import Optional
from dataclasses import dataclass, field

import torch

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64

from .. import reference
from ..kernels.common.quant_fp8 import QuantizeVFp8
from ..kernels.common.quant_int8 import QuantizeInt8
from ..kernels.common.quant_kmean import KMean
from ..kernels.common import quant_qkv
from ..kernels.common.quant_qkv import QuantizeQKV, ring_for, splits_for, stash_for, warpgroups_for
from ..launch_path import LaunchPath, tvm_ffi_available
from ..plan_cache import cached_plan
from ..quant_layout import FP8_E4M3_MAX, SM90_GEOMETRY, QuantGeometry, QuantGranularity

__all__ = [
    "quantize_q_int8_cute",
    "quantize_k_int8_cute",
    "quantize_v_fp8_cute",
    "k_mean_cute",
    "quantize_qkv_cute",
    "fused_qkv_supported",
    "clear_scratch",
    "tma_ready",
    "compile_all_preprocess",
    "preprocess_variants",
    "supported_head_dim",
    "launch_path",
    "set_launch_path",
    "tvm_ffi_available",
]

ARCHS = ("sm_90a", "sm_100a", "sm_120a")
_TORCH_TO_CUTE = {torch.bfloat16: cutlass.BFloat16, torch.float16: cutlass.Float16}
_CUTE_DTYPES = {"bf16": cutlass.BFloat16, "fp16": cutlass.Float16}
_ALIGN_ELEMS = 8  # 16 bytes of bf16/fp16


# --------------------------------------------------------------------------
# Compilation (GPU-free: fake pointers / fake tensors with symbolic dims)
# --------------------------------------------------------------------------
# Every kernel has two host entries over the same device code (Note [Two
# launch paths] in sagecute/launch_path.py): ``__call__`` takes raw pointers +
# sizes/strides, ``call_tensors`` takes tensors and is compiled with
# ``--enable-tvm-ffi``. SAGECUTE_PREPROCESS_TVM_FFI=0 forces the pointer path.
def _ptr(dtype, address: int = 0):
    return cute.runtime.make_ptr(dtype, address, cute.AddressSpace.gmem, assumed_align=16)


def _options(arch: str | None, extra: str = "") -> str:
    return (f"--gpu-arch {arch} " if arch else "") + extra


def _fake_in(dtype, head_dim: int):
    """(B, H, L, D) input view: symbolic sizes, strides divisible by 8 elements, 16-byte base."""
    shape = (cute.sym_int(), cute.sym_int(), cute.sym_int(), head_dim)
    stride = tuple(cute.sym_int64(divisibility=_ALIGN_ELEMS) for _ in range(3)) + (1,)
    return cute.runtime.make_fake_tensor(dtype, shape, stride=stride, assumed_align=16)


def _fake_out(dtype, rank: int, last: int | None = None):
    """Contiguous output with symbolic sizes (``last`` static if given)."""
    shape = tuple(cute.sym_int() for _ in range(rank - 1)) + (last if last is not None else cute.sym_int(),)
    return cute.runtime.make_fake_compact_tensor(
        dtype, shape, stride_order=tuple(reversed(range(rank))), assumed_align=16
    )


def _ffi_stream():
    return cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)


@functools.cache
def _compile_int8(
    dtype, head_dim: int, gran: QuantGranularity, is_k: bool, has_mean: bool, geom: QuantGeometry, arch, extra: str = ""
):
    op = QuantizeInt8(dtype, head_dim, gran, is_k, has_mean, geom)
    return cute.compile(
        op,
        _ptr(dtype), _ptr(dtype), _ptr(Int32), _ptr(Float32),
        Int32(1), Int32(1), Int64(8), Int64(8), Int64(8), Int64(8), Int64(8), Int32(1),
        cute.runtime.make_fake_stream(),
        options=_options(arch, extra),
    )  # fmt: skip


@functools.cache
def _compile_int8_ffi(
    dtype, head_dim: int, gran: QuantGranularity, is_k: bool, has_mean: bool, geom: QuantGeometry, arch, extra: str = ""
):
    op = QuantizeInt8(dtype, head_dim, gran, is_k, has_mean, geom)
    return cute.compile(
        op.call_tensors,
        _fake_in(dtype, head_dim), _fake_in(dtype, head_dim) if has_mean else None,
        _fake_out(cutlass.Int8, 4, head_dim), _fake_out(Float32, 3), _ffi_stream(),
        options=_options(arch, "--enable-tvm-ffi " + extra),
    )  # fmt: skip


@functools.cache
def _compile_kmean(dtype, head_dim: int, arch, extra: str = ""):
    return cute.compile(
        KMean(dtype, head_dim),
        _ptr(dtype), _ptr(dtype), Int32(1), Int32(1), Int64(8), Int64(8), Int64(8), Int32(1),
        cute.runtime.make_fake_stream(),
        options=_options(arch, extra),
    )  # fmt: skip


@functools.cache
def _compile_kmean_ffi(dtype, head_dim: int, arch, extra: str = ""):
    return cute.compile(
        KMean(dtype, head_dim).call_tensors,
        _fake_in(dtype, head_dim), _fake_out(dtype, 4, head_dim), _ffi_stream(),
        options=_options(arch, "--enable-tvm-ffi " + extra),
    )  # fmt: skip


@functools.cache
def _compile_v_fp8(dtype, head_dim: int, geom: QuantGeometry, arch, extra: str = ""):
    return cute.compile(
        QuantizeVFp8(dtype, head_dim, geom),
        _ptr(dtype), _ptr(Int32), _ptr(Float32),
        Int32(1), Int32(1), Int64(8), Int64(8), Int64(8), Float32(FP8_E4M3_MAX), Int32(1),
        cute.runtime.make_fake_stream(),
        options=_options(arch, extra),
    )  # fmt: skip


@functools.cache
def _compile_v_fp8_ffi(dtype, head_dim: int, geom: QuantGeometry, arch, extra: str = ""):
    return cute.compile(
        QuantizeVFp8(dtype, head_dim, geom).call_tensors,
        _fake_in(dtype, head_dim), _fake_out(cutlass.Uint8, 4), _fake_out(Float32, 3, head_dim),
        Float32(FP8_E4M3_MAX), _ffi_stream(),
        options=_options(arch, "--enable-tvm-ffi " + extra),
    )  # fmt: skip


# Q, K, V in one launch: TVM-FFI entry only (the pointer path runs the four
# standalone kernels instead).
@functools.cache
def _compile_qkv_ffi(
    dtype, head_dim: int, gran: QuantGranularity, smooth_k: bool, geom: QuantGeometry, splits: int, with_q: bool,
    stash: int, smooth_v: bool, smooth_q: bool, warpgroups: int, ring: int, arch, extra="",
    cache_hints: Optional[str] = None, diagnostic: Optional[str] = None,
):  # fmt: skip
    op = QuantizeQKV(dtype, head_dim, gran, smooth_k, geom, splits, with_q, stash, smooth_v, cache_hints, smooth_q,
                     warpgroups, ring, diagnostic)
    return cute.compile(
        op,
        _fake_in(dtype, head_dim) if with_q else None, _fake_in(dtype, head_dim), _fake_in(dtype, head_dim),
        _fake_out(cutlass.Int8, 4, head_dim) if with_q else None, _fake_out(Float32, 3) if with_q else None,
        _fake_out(cutlass.Int8, 4, head_dim), _fake_out(Float32, 3),
        _fake_out(dtype, 4, head_dim) if smooth_k else None,
        _fake_out(cutlass.Uint8, 4), _fake_out(Float32, 3, head_dim),
        _fake_out(Float32, 3, head_dim) if smooth_v else None,
        _fake_out(dtype, 4, head_dim) if smooth_q else None, _fake_out(Float32, 3) if smooth_q else None,
        Float32(FP8_E4M3_MAX), _ffi_stream(),
        options=_options(arch, "--enable-tvm-ffi " + extra),
    )  # fmt: skip


def supported_head_dim(head_dim: int) -> bool:
    """Head dims every preprocessing kernel handles (the API pads to 64 / 128).
    256 compiles but the INT8 kernel keeps 32 rows x 8 channels per thread in
    registers and spills there, so it is not offered."""
    return head_dim in (16, 32, 64, 128)


@dataclass
class PreprocessCompileResult:
    """One compiled variant, in the shape ``sagecute.compile_report`` gathers."""

    name: str
    ok: bool
    problem: str = ""
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)


def preprocess_variants(
    *,
    dtypes=("bf16", "fp16"),
    head_dims=(64, 128),
    grans=(QuantGranularity.PER_WARP, QuantGranularity.PER_THREAD),
    geom: QuantGeometry = SM90_GEOMETRY,
    ffi: bool = False,
):
    """(name, compile function, its arguments without ``arch``) of every shipped
    variant; ``ffi`` adds the TVM-FFI entries (Note [Two launch paths])."""
    for name in dtypes:
        dtype = _CUTE_DTYPES[name]
        for d in head_dims:
            for gran in grans:
                yield f"quant_q_int8-{name}-d{d}-{gran.value}", _compile_int8, (dtype, d, gran, False, False, geom)
                yield f"quant_k_int8-{name}-d{d}-{gran.value}", _compile_int8, (dtype, d, gran, True, False, geom)
                yield f"quant_k_int8_smooth-{name}-d{d}-{gran.value}", _compile_int8, (dtype, d, gran, True, True, geom)
            yield f"k_mean-{name}-d{d}", _compile_kmean, (dtype, d)
            yield f"quant_v_fp8-{name}-d{d}", _compile_v_fp8, (dtype, d, geom)
            if ffi:
                for gran in grans:
                    # the API's: K and V (the attention kernel quantizes Q), 8 splits and 16
                    # with a stashed block (Note [Stashed blocks]); the other (splits,
                    # stash) pairs of splits_for / stash_for compile on first use
                    yield (f"quant_kv-{name}-d{d}-{gran.value}-ffi", _compile_qkv_ffi,
                           (dtype, d, gran, True, geom, 8, False, 0, False, False, 1, 0))  # fmt: skip
                    yield (f"quant_kv16s1-{name}-d{d}-{gran.value}-ffi", _compile_qkv_ffi,
                           (dtype, d, gran, True, geom, 16, False, 1, False, False, 1, 0))  # fmt: skip
                # Note [Sub-splits]: the API's from L16k on
                yield (f"quant_kv16s1w2-{name}-d{d}-{grans[-1].value}-ffi", _compile_qkv_ffi,
                       (dtype, d, grans[-1], True, geom, 16, False, 1, False, False, 2, 0))  # fmt: skip
                # Note [Split count]: 8 splits with a stashed block (L2k)
                yield (f"quant_kv8s1-{name}-d{d}-{grans[-1].value}-ffi", _compile_qkv_ffi,
                       (dtype, d, grans[-1], True, geom, 8, False, 1, False, False, 1, 0))  # fmt: skip
                # Note [Block ring]: the API's cp.async ring (2 slots at head_dim 128, 4 at 64;
                # 8 splits at L4k) and the ring without a mean
                ring = 2 if d == 128 else 4
                if d == 128:
                    yield (f"quant_kv8r{ring}-{name}-d{d}-{grans[-1].value}-ffi", _compile_qkv_ffi,
                           (dtype, d, grans[-1], True, geom, 8, False, 0, False, False, 1, ring))  # fmt: skip
                yield (f"quant_kv16r{ring}-{name}-d{d}-{grans[-1].value}-ffi", _compile_qkv_ffi,
                       (dtype, d, grans[-1], True, geom, 16, False, 0, False, False, 1, ring))  # fmt: skip
                yield (f"quant_kv16r{ring}_nosmooth-{name}-d{d}-{grans[-1].value}-ffi", _compile_qkv_ffi,
                       (dtype, d, grans[-1], False, geom, 16, False, 0, False, False, 1, ring))  # fmt: skip
                yield (f"quant_qkv-{name}-d{d}-{grans[-1].value}-ffi", _compile_qkv_ffi,
                       (dtype, d, grans[-1], True, geom, 8, True, 0, False, False, 1, 0))  # fmt: skip
                yield (f"quant_kv_nosmooth-{name}-d{d}-{grans[-1].value}-ffi", _compile_qkv_ffi,
                       (dtype, d, grans[-1], False, geom, 8, False, 0, False, False, 1, 0))  # fmt: skip
                # smooth_v (Note [V mean]): both split counts, a stashed block with 16
                for splits, stash in ((8, 0), (16, 1)):
                    yield (f"quant_kv{splits}s{stash}_smoothv-{name}-d{d}-{grans[-1].value}-ffi", _compile_qkv_ffi,
                           (dtype, d, grans[-1], True, geom, splits, False, stash, True, False, 1, 0))  # fmt: skip
                # smooth_q (Note [delta_s in the K pass]): both split counts
                for splits, stash in ((8, 0), (16, 1)):
                    yield (f"quant_kv{splits}s{stash}_smoothq-{name}-d{d}-{grans[-1].value}-ffi",
                           _compile_qkv_ffi,
                           (dtype, d, grans[-1], True, geom, splits, False, stash, False, True, 1, 0))  # fmt: skip
                for gran in grans:
                    tag = f"{name}-d{d}-{gran.value}-ffi"
                    yield f"quant_q_int8-{tag}", _compile_int8_ffi, (dtype, d, gran, False, False, geom)
                    yield f"quant_k_int8_smooth-{tag}", _compile_int8_ffi, (dtype, d, gran, True, True, geom)
                yield f"k_mean-{name}-d{d}-ffi", _compile_kmean_ffi, (dtype, d)
                yield f"quant_v_fp8-{name}-d{d}-ffi", _compile_v_fp8_ffi, (dtype, d, geom)


# PTX each preprocessing kernel is expected to contain (Note [Bit-exact
# quantizer arithmetic]); counted when compile_all_preprocess keeps artifacts.
PTX_MARKERS = ("div.rn.f32", "div.approx", "div.full", "cvt.rni.sat.s8.f32", "add.rn.f32 a, a, 0f4B400000",
               "cvt.rn.satfinite.e4m3x2.f32",
               "ld.global.v4", "st.global.v4", "st.global.v2", ".local", "cp.async.cg.shared.global")


def compile_all_preprocess(arch: str, out_dir: str | None = None, quick: bool = False) -> list[PreprocessCompileResult]:
    """Compile every preprocessing variant for ``arch`` (sm_90a, sm_100a, sm_120a)
    without a GPU (plus the TVM-FFI entries where ``tvm_ffi`` is installed).
    ``quick``: bf16, head_dim 128 only. With ``out_dir`` the PTX
    and cubin of each variant are kept under ``out_dir/<name>`` and the summary
    has the SASS figures (registers, spills, local bytes) and ``PTX_MARKERS``
    counts. Failures are reported, not raised."""
    from ..kernels.common import sass_report

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    kwargs = {"dtypes": ("bf16",), "head_dims": (128,)} if quick else {}
    kwargs["ffi"] = tvm_ffi_available()
    results = []
    for name, fn, args in preprocess_variants(**kwargs):
        t0 = time.time()
        try:
            if out_dir is None:
                fn(*args, arch)
                summary = {}
            else:
                vdir = os.path.join(out_dir, name)
                with sass_report.keep_artifacts(vdir):
                    compiled = fn.__wrapped__(*args, arch)
                summary = _sass_summary(sass_report, vdir)
                summary["ptx"] = _ptx_counts(compiled)
            results.append(PreprocessCompileResult(name, True, "", time.time() - t0, summary))
        except Exception as e:  # noqa: BLE001 - reported, not raised
            results.append(PreprocessCompileResult(name, False, f"{type(e).__name__}: {e}", time.time() - t0))
    return results


def _sass_summary(sass_report, vdir: str) -> dict:
    """What ``python -m sagecute compile`` prints for a kernel (the attention
    kernels' columns: registers, spills, local bytes, a few SASS counts)."""
    cubin = sass_report.find_cubin(vdir)
    if cubin is None:
        return {"error": "no cubin was written"}
    s = sass_report.summarize_cubin(cubin)
    out = {"registers": s.get("registers"), "local_bytes": s.get("local_bytes", 0)}
    if "error" in s:
        out["error"] = s["error"]
    else:
        out["spills"] = s["spill_ldl"] + s["spill_stl"]
        out["sass"] = {k: s[k] for k in ("instructions",) if k in s}
    return out


def _ptx_counts(compiled) -> dict:
    ptx = compiled.__ptx__ or ""
    if os.path.exists(ptx):
        with open(ptx) as f:
            ptx = f.read()
    # vector accesses count with any cache qualifiers (Note [L2 cache operators]):
    # "ld.global.v4" also matches ld.global.cs.v4, ld.global.L2::cache_hint.v4, ...
    counts = {}
    for m in PTX_MARKERS:
        op, _, vec = m.rpartition(".")
        if m.startswith(("ld.global.", "st.global.")) and vec.startswith("v"):
            counts[m] = len(re.findall(re.escape(op) + r"(?:\.[A-Za-z0-9_:]+)*?\." + vec + r"\.", ptx))
        else:
            counts[m] = ptx.count(m)
    return counts


# --------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------
_PATH = LaunchPath("preprocess", "SAGECUTE_PREPROCESS_TVM_FFI")  # Note [Two launch paths]
launch_path = _PATH.current
set_launch_path = _PATH.force
_launch = _PATH.launch


_streams: dict = {}


def _stream(device):
    handle = torch.cuda.current_stream(device).cuda_stream
    st = _streams.get(handle)
    if st is None:
        import cuda.bindings.driver as cuda

        st = _streams[handle] = cuda.CUstream(handle)
    return st


def _check_input(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-d HND view [B, H, L, D], got shape {tuple(x.shape)}")
    if x.dtype not in _TORCH_TO_CUTE:
        raise ValueError(f"{name} must be bf16 or fp16, got {x.dtype}")
    if not x.is_cuda:
        raise ValueError(f"{name} must be a CUDA tensor")
    if not supported_head_dim(x.shape[-1]):
        raise ValueError(f"{name}: head_dim {x.shape[-1]} not supported (16, 32, 64 or 128)")


def _strides_aligned(x: torch.Tensor) -> bool:
    """Unit last stride, every other stride a multiple of 8 elements (16 bytes)."""
    return x.stride(-1) == 1 and all(st % _ALIGN_ELEMS == 0 for st in x.stride()[:-1])


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if its base is 16-byte aligned and every stride but the
    last (1) is a multiple of 8 elements, else a contiguous copy."""
    if x.data_ptr() % 16 == 0 and _strides_aligned(x):
        return x
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)


def tma_ready(x: torch.Tensor) -> torch.Tensor:
    """``x`` if TMA can read it (16-byte aligned base and strides, unit last stride),
    else a contiguous copy: for Q handed to the attention kernel unquantized."""
    return _aligned(x)


def _geom_n_scales(length: int, gran: QuantGranularity, is_k: bool, geom: QuantGeometry) -> int:
    return geom.num_k_scales(length, gran) if is_k else geom.num_q_scales(length, gran)


def _quantize_int8(x, gran, is_k: bool, mean, geom):
    gran = QuantGranularity(gran)
    b, h, length, d = x.shape
    if b == 0 or h == 0 or length == 0:
        return reference.quantize_qk_int8(x, gran, geom, is_k=is_k, mean=mean)
    x = _aligned(x)
    dtype = _TORCH_TO_CUTE[x.dtype]
    x_int8 = torch.empty((b, h, length, d), dtype=torch.int8, device=x.device)
    scale = torch.empty((b, h, _geom_n_scales(length, gran, is_k, geom)), dtype=torch.float32, device=x.device)
    has_mean = mean is not None
    if has_mean:
        mean = _aligned(mean.to(x.dtype).expand(b, h, 1, d))

    def ffi():
        _compile_int8_ffi(dtype, d, gran, is_k, has_mean, geom, None)(x, mean, x_int8, scale)

    def pointer():
        fn = _compile_int8(dtype, d, gran, is_k, has_mean, geom, None)
        m = mean if has_mean else x
        fn(
            _ptr(dtype, x.data_ptr()), _ptr(dtype, m.data_ptr()),
            _ptr(Int32, x_int8.data_ptr()), _ptr(Float32, scale.data_ptr()),
            Int32(h), Int32(length), Int64(x.stride(0)), Int64(x.stride(1)), Int64(x.stride(2)),
            Int64(m.stride(0) if has_mean else 0), Int64(m.stride(1) if has_mean else 0), Int32(b),
            _stream(x.device),
        )  # fmt: skip

    _launch(ffi, pointer)
    return x_int8, scale


def quantize_q_int8_cute(q: torch.Tensor, gran, geom: QuantGeometry = SM90_GEOMETRY):
    """INT8 Q -> (q_int8 [B,H,L,D] contiguous, q_scale fp32 [B,H,n]); == ``reference.quantize_qk_int8(is_k=False)``."""
    _check_input(q, "q")
    return _quantize_int8(q, gran, False, None, geom)


def k_mean_cute(k: torch.Tensor) -> torch.Tensor:
    """Sequence mean [B,H,1,D] in k's dtype (Note [K mean summation order])."""
    _check_input(k, "k")
    b, h, length, d = k.shape
    if b == 0 or h == 0 or length == 0:
        return reference.k_mean(k)
    k = _aligned(k)
    dtype = _TORCH_TO_CUTE[k.dtype]
    mean = torch.empty((b, h, 1, d), dtype=k.dtype, device=k.device)

    def ffi():
        _compile_kmean_ffi(dtype, d, None)(k, mean)

    def pointer():
        _compile_kmean(dtype, d, None)(
            _ptr(dtype, k.data_ptr()), _ptr(dtype, mean.data_ptr()),
            Int32(h), Int32(length), Int64(k.stride(0)), Int64(k.stride(1)), Int64(k.stride(2)), Int32(b),
            _stream(k.device),
        )  # fmt: skip

    _launch(ffi, pointer)
    return mean


def quantize_k_int8_cute(
    k: torch.Tensor,
    gran,
    smooth_k: bool,
    geom: QuantGeometry = SM90_GEOMETRY,
    *,
    mean: torch.Tensor | None = None,
):
    """INT8 K (minus its sequence mean with ``smooth_k``) -> (k_int8, k_scale, k_mean or None).

    ``mean`` ([B,H,1,D], k's dtype) overrides the computed mean (tests feed the
    reference mean here to compare payloads bit for bit).
    """
    _check_input(k, "k")
    km = None
    if smooth_k:
        km = mean if mean is not None else k_mean_cute(k)
    k_int8, k_scale = _quantize_int8(k, gran, True, km, geom)
    return k_int8, k_scale, km


def quantize_v_fp8_cute(v: torch.Tensor, scale_max: float = FP8_E4M3_MAX, geom: QuantGeometry = SM90_GEOMETRY):
    """FP8 V -> (v_fp8 e4m3 [B,H,D,Lpad], v_scale fp32 [B,H,D]); == ``reference.quantize_v_fp8``."""
    _check_input(v, "v")
    b, h, length, d = v.shape
    if b == 0 or h == 0 or length == 0:
        return reference.quantize_v_fp8(v, geom, scale_max=scale_max)
    v = _aligned(v)
    dtype = _TORCH_TO_CUTE[v.dtype]
    padded = geom.padded_kv_len(length)
    v_fp8 = torch.empty((b, h, d, padded), dtype=torch.float8_e4m3fn, device=v.device)
    v_scale = torch.empty((b, h, d), dtype=torch.float32, device=v.device)

    def ffi():
        _compile_v_fp8_ffi(dtype, d, geom, None)(v, v_fp8.view(torch.uint8), v_scale, float(scale_max))

    def pointer():
        _compile_v_fp8(dtype, d, geom, None)(
            _ptr(dtype, v.data_ptr()), _ptr(Int32, v_fp8.data_ptr()), _ptr(Float32, v_scale.data_ptr()),
            Int32(h), Int32(length), Int64(v.stride(0)), Int64(v.stride(1)), Int64(v.stride(2)),
            Float32(scale_max), Int32(b), _stream(v.device),
        )  # fmt: skip

    _launch(ffi, pointer)
    return v_fp8, v_scale


def fused_qkv_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geom: QuantGeometry = SM90_GEOMETRY) -> bool:
    """Whether ``quantize_qkv_cute`` runs the one-launch kernel for these inputs (``q``
    is checked even when it is left to the attention kernel)."""
    return (
        q.dtype == k.dtype == v.dtype
        and q.dtype in _TORCH_TO_CUTE
        and QuantizeQKV.can_implement(_TORCH_TO_CUTE[q.dtype], q.shape[-1], geom)
        and k.shape == v.shape
        and q.shape[-1] == k.shape[-1]
        and q.shape[0] == k.shape[0]
        and q.shape[1] % k.shape[1] == 0
        and min(q.shape[2], k.shape[2], q.shape[0], k.shape[1]) > 0
    )


@dataclass
class _QkvPlan:
    """What one argument signature of ``quantize_qkv_cute`` needs (Note [Preprocess
    host cost]): the one-launch kernel's compile arguments, or None for the standalone
    kernels (compiled on first use on the TVM-FFI path), and the output shapes."""

    compile_args: Optional[tuple]
    # (shape, dtype) of q8, qs (None without q), k8, ks, k_mean (None without smooth_k), v8, vs,
    # v_mean (None without smooth_v)
    shapes: tuple
    aligned_strides: bool
    compiled: object = None


_QKV_PLANS: dict = {}
_SCRATCH: dict = {}
_SCRATCH_KEEP = 2  # scratch sets kept (per device, stream and signature), oldest dropped


def clear_scratch() -> None:
    """Drop the reusable output buffers of ``quantize_qkv_cute(scratch=True)``."""
    _SCRATCH.clear()


def _qkv_plan(
    q, k, v, gran, smooth_k: bool, geom: QuantGeometry, with_q: bool, smooth_v: bool, smooth_q: bool = False
) -> _QkvPlan:
    gran = QuantGranularity(gran)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_input(t, name)
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    shapes = (
        ((b, hq, lq, d), torch.int8) if with_q else None,
        ((b, hq, geom.num_q_scales(lq, gran)), torch.float32) if with_q else None,
        ((b, hkv, lk, d), torch.int8),
        ((b, hkv, geom.num_k_scales(lk, gran)), torch.float32),
        ((b, hkv, 1, d), q.dtype) if smooth_k else None,
        ((b, hkv, d, geom.padded_kv_len(lk)), torch.float8_e4m3fn),
        ((b, hkv, d), torch.float32),
        ((b, hkv, d), torch.float32) if smooth_v else None,
        ((b, hq, geom.padded_kv_len(lk)), torch.float32) if smooth_q else None,
    )
    compile_args = None
    if fused_qkv_supported(q, k, v, geom):
        splits = splits_for(lk, d, geom.blk_k)
        # Note [Block ring]: K and V only (the Q role's CTAs would share the ring's smem
        # size), and not measured with smooth_v, which keeps the register path
        ring = 0 if with_q or smooth_v else ring_for(lk, d, splits, geom.blk_k)
        # Note [Sub-splits]: K and V only (the Q role keeps one block per CTA), not with
        # smooth_v (~140 registers: one 256-thread CTA per SM) nor with a ring
        wgs = 1 if with_q or smooth_v or ring else warpgroups_for(lk, splits, geom.blk_k)
        stash = 0 if ring else stash_for(lk, splits, geom.blk_k, wgs)
        compile_args = (_TORCH_TO_CUTE[q.dtype], d, gran, bool(smooth_k), geom, splits, with_q,
                        stash, bool(smooth_v), bool(smooth_q), wgs, ring, None)  # fmt: skip
    return _QkvPlan(compile_args, shapes, all(_strides_aligned(t) for t in (q, k, v)))


def qkv_call_plan(q, k, v, gran, smooth_k: bool, geom: QuantGeometry, with_q: bool, smooth_v: bool,
                  smooth_q: bool = False):
    """``(key, plan)`` of ``quantize_qkv_cute``'s argument signature (Note [Preprocess
    host cost]); the key also names its scratch outputs (``qkv_scratch``)."""
    key = (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype,
           q.device, gran, bool(smooth_k), geom, with_q, bool(smooth_v), smooth_q)  # fmt: skip
    return key, cached_plan(_QKV_PLANS, key, lambda: _qkv_plan(q, k, v, gran, smooth_k, geom, with_q, smooth_v,
                                                               smooth_q))


def qkv_compiled(plan: _QkvPlan):
    """The plan's one-launch TVM-FFI kernel, compiled on first use (``compile_args`` set)."""
    if plan.compiled is None:
        plan.compiled = _compile_qkv_ffi(*plan.compile_args, cache_hints=quant_qkv.CACHE_HINTS,
                                         diagnostic=quant_qkv.DIAGNOSTIC)
    return plan.compiled


def qkv_scratch(key, stream: int):
    """The scratch outputs of signature ``key`` on raw stream ``stream``, or None if none
    are kept (``_qkv_outputs(scratch=True)`` makes them)."""
    return _SCRATCH.get((key, stream))


def _qkv_outputs(plan: _QkvPlan, key, device, scratch: bool):
    if scratch and not torch.cuda.is_current_stream_capturing():
        skey = (key, torch.cuda.current_stream(device).cuda_stream)
        outs = _SCRATCH.get(skey)
        if outs is None:
            if len(_SCRATCH) >= _SCRATCH_KEEP:
                _SCRATCH.pop(next(iter(_SCRATCH)))
            outs = _SCRATCH[skey] = _qkv_outputs(plan, key, device, False)
        return outs
    return tuple(None if s is None else torch.empty(s[0], dtype=s[1], device=device) for s in plan.shapes)


def quantize_qkv_cute(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gran,
    smooth_k: bool,
    scale_max: float = FP8_E4M3_MAX,
    geom: QuantGeometry = SM90_GEOMETRY,
    *,
    scratch: bool = False,
    with_q: bool = True,
    smooth_v: bool = False,
    q_mean: Optional[torch.Tensor] = None,
):
    """Q int8, K (smoothed) int8 and V fp8 -> ``(q_int8, q_scale, k_int8, k_scale,
    k_mean | None, v_fp8, v_scale, v_mean | None)``, each as the standalone quantizers
    return it; ``with_q=False``: K and V only, ``q_int8`` and ``q_scale`` are None.
    ``smooth_v``: V minus its per-channel mean, returned as fp32 ``v_mean`` [B, Hkv, D]
    (Note [V mean] in ``kernels/common/quant_qkv.py``; the standalone path quantizes V
    with the torch reference then).
    ``q_mean`` (sm90 smooth_q, with ``with_q=False``): Q's sequence mean
    [B, Hq, 1, D] (``k_mean_cute(q)``); a ninth element ``delta_s`` fp32 [B, Hq, Lk padded
    to 128] is returned, ``q_mean . (k_j - k_mean)`` per key (Note [delta_s in the K
    pass]; the standalone path computes it with ``reference.smooth_q_delta_s``).

    One launch (``kernels/common/quant_qkv.py``) on the TVM-FFI path when
    ``fused_qkv_supported``; otherwise, or on the pointer path, the standalone kernels.
    ``scratch``: write into buffers reused by the next call with the same signature
    on the same stream (the API's own temporaries; never for results a caller keeps).

    Note [Preprocess host cost]
    ---------------------------
    On the GPU hosts a ``torch.empty`` costs ~10 us of CPU, and checking three
    inputs and deciding the path ~30 us: as much as the GPU work at L=1k. So the
    checks run once per argument signature (shapes, strides, dtypes, device,
    options; ``_QKV_PLANS``, Note [Plan caches]), only the pointers' alignment is checked
    per call, and the API's calls reuse their output buffers (``scratch``; stream
    order makes that safe: the next call's kernel runs after this call's attention
    has read them). Not during CUDA graph capture.
    """
    smooth_q = q_mean is not None
    if smooth_q and with_q:
        raise ValueError("q_mean (smooth_q) needs with_q=False")
    key, plan = qkv_call_plan(q, k, v, gran, smooth_k, geom, with_q, smooth_v, smooth_q)

    def standalone():
        g = QuantGranularity(gran)
        q8, qs = _quantize_int8(q, g, False, None, geom) if with_q else (None, None)
        k8, ks, km = quantize_k_int8_cute(k, g, smooth_k, geom)
        if smooth_v:  # no standalone V kernel takes a mean: the torch quantizer (same numerics)
            vm = reference.v_mean(v)
            v8, vs = reference.quantize_v_fp8(v, geom, scale_max=scale_max, mean=vm)
        else:
            v8, vs, vm = *quantize_v_fp8_cute(v, scale_max, geom), None
        if not smooth_q:
            return q8, qs, k8, ks, km, v8, vs, vm
        delta = reference.smooth_q_delta_s(q_mean, k, km)
        delta = torch.nn.functional.pad(delta, (0, geom.padded_kv_len(k.shape[2]) - k.shape[2]))
        return q8, qs, k8, ks, km, v8, vs, vm, delta

    if plan.compile_args is None or not _PATH.use_ffi():
        return standalone()
    qkv_compiled(plan)  # the pointer path never needs it
    if plan.aligned_strides and not (q.data_ptr() % 16 or k.data_ptr() % 16 or v.data_ptr() % 16):
        qa, ka, va = q, k, v
    else:
        qa, ka, va = _aligned(q) if with_q else q, _aligned(k), _aligned(v)
    out = _qkv_outputs(plan, key, q.device, scratch)
    q8, qs, k8, ks, km, v8, vs, vm, delta = out
    result = []

    def ffi():
        plan.compiled(qa if with_q else None, ka, va, q8, qs, k8, ks, km, v8.view(torch.uint8), vs, vm,
                      _aligned(q_mean) if smooth_q else None, delta, float(scale_max))
        result.append(out if smooth_q else out[:8])

    _PATH.launch(ffi, lambda: result.append(standalone()))
    return result[0]
