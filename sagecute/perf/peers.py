"""One adapter per implementation: sagecute (public API and kernel only) and peers.

Every adapter has ``name``, ``mode`` ("e2e" or "kernel"), ``is_available() ->
(bool, reason)``, ``version()`` and ``prepare(q, k, v, causal, sm_scale) ->
fn``: a zero-argument callable that runs one attention on the HND bf16/fp16
inputs it was given (layout copies, quantization for kernel-only mode and
clones are done in ``prepare``, outside the timed region). ``output_hnd(out)``
turns what ``fn()`` returned into an HND tensor for accuracy checks.

Nothing here imports a peer at module import time: each adapter imports its
library inside ``is_available``/``prepare``, so a missing peer is a skip with a
reason, never an ImportError of the harness.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from typing import Callable

SAGECUTE_PV = ("fp32+fp32", "fp32")
SAGECUTE_GRAN = ("per_thread", "per_warp")
DEFAULT_GRAN = "per_thread"


def dist_version(*names: str) -> str | None:
    """Installed version of the first distribution found among ``names``."""
    for n in names:
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            continue
        except Exception:  # noqa: BLE001 - broken metadata is 'unknown', not fatal
            continue
    return None


def _cuda_reason() -> str | None:
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return f"torch not importable: {e}"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _first_tensor(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class Adapter:
    name: str = "?"
    mode: str = "e2e"
    out_layout: str = "HND"
    # bench: timed in the grid; accuracy: compared to the exact reference
    in_bench: bool = True
    in_accuracy: bool = True

    def __init__(self) -> None:
        self._avail: tuple[bool, str] | None = None

    def _check(self) -> tuple[bool, str]:
        raise NotImplementedError

    def is_available(self) -> tuple[bool, str]:
        if self._avail is None:
            try:
                self._avail = self._check()
            except Exception as e:  # noqa: BLE001 - any failure is a skip with a reason
                self._avail = (False, f"{type(e).__name__}: {e}")
        return self._avail

    def version(self) -> str | None:
        return None

    def prepare(self, q, k, v, causal: bool, sm_scale: float | None = None) -> Callable[[], object]:
        raise NotImplementedError

    def output_hnd(self, out):
        t = _first_tensor(out)
        if self.out_layout == "NHD":
            t = t.transpose(1, 2)
        return t

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.mode}>"


# ---------------------------------------------------------------- sagecute

def sagecute_name(pv: str, gran: str = DEFAULT_GRAN) -> str:
    return f"sagecute-{pv}" if gran == DEFAULT_GRAN else f"sagecute-{pv}-{gran}"


def _sagecute_sageattn():
    import sagecute

    fn = getattr(sagecute, "sageattn", None)
    if fn is None:
        api = importlib.import_module("sagecute.api")
        fn = getattr(api, "sageattn", None)
    if fn is None:
        raise AttributeError("sagecute.sageattn not found")
    return fn


_ARCH_BACKEND = {(9, 0): "sm90", (10, 0): "sm100", (10, 3): "sm100", (12, 0): "sm120", (12, 1): "sm120"}


def sagecute_backend(device) -> str:
    """The explicit ``backend=`` for this GPU, so sagecute raises instead of
    silently falling back to SDPA (a fallback timed as 'sagecute' would lie)."""
    import torch

    cap = torch.cuda.get_device_capability(device)
    if cap not in _ARCH_BACKEND:
        raise NotImplementedError(f"no sagecute kernel for sm{cap[0]}{cap[1]}")
    return _ARCH_BACKEND[cap]


class SagecuteE2E(Adapter):
    """``sagecute.sageattn`` as a user calls it: quantization included, with
    ``backend=`` pinned to the GPU's arch (no silent SDPA fallback)."""

    def __init__(self, pv: str = "fp32+fp32", gran: str = DEFAULT_GRAN) -> None:
        super().__init__()
        self.pv, self.gran = pv, gran
        self.name = sagecute_name(pv, gran)

    def _check(self):
        r = _cuda_reason()
        if r:
            return False, r
        _sagecute_sageattn()
        return True, ""

    def version(self):
        return dist_version("sagecute")

    def kwargs(self, causal, sm_scale, device=None):
        kw = dict(tensor_layout="HND", is_causal=causal, sm_scale=sm_scale,
                  pv_accum_dtype=self.pv, qk_quant_gran=self.gran)
        if device is not None:
            kw["backend"] = sagecute_backend(device)
        return kw

    def prepare(self, q, k, v, causal, sm_scale=None):
        fn = _sagecute_sageattn()
        kw = self.kwargs(causal, sm_scale, q.device)
        return lambda: fn(q, k, v, **kw)


class SagecuteKernel(SagecuteE2E):
    """Kernel only: ``sagecute.api.prepare_inputs`` once (outside the timing),
    then ``sagecute.api.attention_prepared(prepared)`` is timed."""

    mode = "kernel"
    in_accuracy = False  # same numerics as e2e; kept out of the accuracy table

    def _check(self):
        r = _cuda_reason()
        if r:
            return False, r
        api = importlib.import_module("sagecute.api")
        missing = [n for n in ("prepare_inputs", "attention_prepared") if not hasattr(api, n)]
        if missing:
            return False, f"sagecute.api lacks {', '.join(missing)}: kernel-only mode skipped"
        return True, ""

    def prepare(self, q, k, v, causal, sm_scale=None):
        api = importlib.import_module("sagecute.api")
        sagecute_backend(q.device)  # same arch check as e2e
        prepared = api.prepare_inputs(q, k, v, **self.kwargs(causal, sm_scale))
        run = api.attention_prepared
        return lambda: run(prepared)


# ---------------------------------------------------------------- FA4

def _fa4_func():
    try:
        from flash_attn.cute import flash_attn_func
    except ImportError:
        from flash_attn.cute.interface import flash_attn_func
    return flash_attn_func


class FA4(Adapter):
    """flash-attn-4 (CuTe DSL), bf16, its native NHD layout (copied in prepare)."""

    name = "fa4"
    out_layout = "NHD"

    def _check(self):
        r = _cuda_reason()
        if r:
            return False, r
        _fa4_func()
        return True, ""

    def version(self):
        return dist_version("flash-attn-4", "flash_attn_4", "flash-attn-cute", "flash_attn")

    def prepare(self, q, k, v, causal, sm_scale=None):
        f = _fa4_func()
        qn, kn, vn = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        return lambda: f(qn, kn, vn, softmax_scale=sm_scale, causal=causal)


# ---------------------------------------------------------------- SDPA

class Sdpa(Adapter):
    """torch SDPA pinned to one backend with ``sdpa_kernel`` (no fallback)."""

    def __init__(self, backend: str, name: str) -> None:
        super().__init__()
        self.backend, self.name = backend, name

    def _check(self):
        r = _cuda_reason()
        if r:
            return False, r
        from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401

        if not hasattr(SDPBackend, self.backend):
            return False, f"torch has no SDPBackend.{self.backend}"
        return True, ""

    def version(self):
        import torch

        if self.backend == "CUDNN_ATTENTION":
            try:
                return f"cudnn {torch.backends.cudnn.version()}"
            except Exception:  # noqa: BLE001
                return None
        return f"torch {torch.__version__}"

    def prepare(self, q, k, v, causal, sm_scale=None):
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, self.backend)
        kw = dict(is_causal=causal, scale=sm_scale)
        if q.shape[1] != k.shape[1]:
            kw["enable_gqa"] = True

        def fn():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, **kw)

        return fn


# ---------------------------------------------------------------- SageAttention

def sageattention_major() -> tuple[int | None, str | None]:
    """(major version, version string) of the importable ``sageattention``."""
    ver = dist_version("sageattention")
    if ver is None:
        mod = importlib.import_module("sageattention")  # raises if absent
        ver = getattr(mod, "__version__", None)
        if ver is None:  # a source tree on PYTHONPATH: tell by its API
            ver = "2.x (local)" if hasattr(mod, "sageattn_qk_int8_pv_fp16_cuda") else "1.x (local)"
    try:
        major = int(str(ver).split(".")[0])
    except ValueError:
        major = None
    return major, ver


class Sage(Adapter):
    """Official SageAttention ``sageattn`` (1.x from PyPI or a local 2.x build).

    Both install as ``sageattention``; the adapter whose major version does not
    match is skipped. 1.0.6 subtracts the K mean *in place*, so k is cloned.
    """

    def __init__(self, major: int) -> None:
        super().__init__()
        self.major = major
        self.name = f"sage{major}"

    def _check(self):
        r = _cuda_reason()
        if r:
            return False, r
        try:
            major, ver = sageattention_major()
        except ImportError as e:
            return False, f"sageattention not importable ({e})"
        if major != self.major:
            return False, f"sageattention {ver} installed, not {self.major}.x"
        importlib.import_module("sageattention")
        return True, ""

    def version(self):
        try:
            return sageattention_major()[1]
        except Exception:  # noqa: BLE001
            return None

    def prepare(self, q, k, v, causal, sm_scale=None):
        sa = importlib.import_module("sageattention")
        kc = k.clone()
        return lambda: sa.sageattn(q, kc, v, tensor_layout="HND", is_causal=causal, sm_scale=sm_scale)


class Sage2Mode(Adapter):
    """SageAttention2 pinned to one sagecute mode, for sagecute-vs-official diffs.

    sm90 + fp32+fp32 -> ``sageattn_qk_int8_pv_fp8_cuda_sm90``; otherwise
    ``sageattn_qk_int8_pv_fp8_cuda`` (its sm89 kernel) with the same options.
    """

    in_bench = False

    def __init__(self, pv: str, gran: str) -> None:
        super().__init__()
        self.pv, self.gran = pv, gran
        self.name = f"sage2-{pv}-{gran}"

    def _check(self):
        ok, why = Sage(2).is_available()
        return ok, why

    def version(self):
        return Sage(2).version()

    def prepare(self, q, k, v, causal, sm_scale=None):
        import torch

        sa = importlib.import_module("sageattention")
        kw = dict(tensor_layout="HND", is_causal=causal, sm_scale=sm_scale,
                  qk_quant_gran=self.gran, pv_accum_dtype=self.pv)
        fn = None
        if torch.cuda.get_device_capability(q.device) == (9, 0) and self.pv == "fp32+fp32":
            fn = getattr(sa, "sageattn_qk_int8_pv_fp8_cuda_sm90", None)
        if fn is None:
            fn = sa.sageattn_qk_int8_pv_fp8_cuda
        kc = k.clone()
        return lambda: fn(q, kc, v, **kw)


# ---------------------------------------------------------------- registry

def bench_adapters(pvs=SAGECUTE_PV, grans=(DEFAULT_GRAN,), modes=("e2e", "kernel")) -> list[Adapter]:
    """Everything timed in the grid: sagecute modes first, then the peers."""
    out: list[Adapter] = []
    for pv in pvs:
        for gran in grans:
            if "e2e" in modes:
                out.append(SagecuteE2E(pv, gran))
            if "kernel" in modes:
                out.append(SagecuteKernel(pv, gran))
    return out + peer_adapters()  # peers are always end to end; filter them with --impls


def peer_adapters() -> list[Adapter]:
    return [FA4(), Sdpa("CUDNN_ATTENTION", "sdpa-cudnn"), Sdpa("FLASH_ATTENTION", "sdpa-flash"), Sage(1), Sage(2)]


def accuracy_adapters(pvs=SAGECUTE_PV, grans=SAGECUTE_GRAN) -> list[Adapter]:
    out: list[Adapter] = [SagecuteE2E(pv, g) for pv in pvs for g in grans]
    return out + peer_adapters()


def official_for(adapter: Adapter) -> Adapter | None:
    """The official SageAttention2 call matching a sagecute e2e mode."""
    if isinstance(adapter, SagecuteE2E) and adapter.mode == "e2e":
        return Sage2Mode(adapter.pv, adapter.gran)
    return None


def select(adapters: list[Adapter], patterns: list[str] | None) -> list[Adapter]:
    """Keep adapters whose name starts with one of ``patterns`` (None: all)."""
    if not patterns:
        return adapters
    return [a for a in adapters if any(a.name == p or a.name.startswith(p) for p in patterns)]
