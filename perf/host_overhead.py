"""Host (CPU) time of one ``sageattn`` call: total, per stage, cProfile, kernel launches.

    python perf/host_overhead.py [--B 4] [--H 32] [--L 1024] [--D 128] [--n 100]
    python perf/host_overhead.py --fake      # no GPU: the API's Python path alone

* Host time per call: after warm-up the GPU is put to sleep (``torch.cuda._sleep``)
  for longer than the timed loop, then ``n`` calls are enqueued with no sync, so the
  CPU never waits for the GPU; loop wall time / n, median of ``--rounds``.
* Stages: the same loop with timers around ``api.quantize_inputs`` (preprocessing),
  ``launch.attn_fwd_sm90`` (attention host code) and the TVM-FFI calls inside each;
  "API" is the rest. The timers cost ~0.3 us each.
* cProfile top entries (its overhead inflates small functions; compare shares).
* Launches: torch.profiler over one call: GPU kernels, and the aten ops on the CPU.
* ``--fake``: CPU tensors; dispatch answers sm90, ``quantize_inputs`` only allocates
  its outputs and the attention kernel is a no-op.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
import warnings
from collections import defaultdict

import torch

import sagecute
from sagecute import api, dispatch, fast_call, preprocess


def _install_fakes() -> None:
    """CUDA-free stand-ins for the device parts (``--fake``)."""
    from sagecute.kernels.sm90 import launch

    g = preprocess.SM90_GEOMETRY

    def quantize_inputs(qh, kh, vh, *, granularity, pv_accum, smooth_k, smooth_v=False, use_cute=None, scratch=False,
                        fuse_q=False, smooth_q=False):
        b, h, lq, d = qh.shape
        hk, lk = kh.shape[1], kh.shape[2]
        e = torch.empty
        q, q_scale = (qh, None) if fuse_q else (e(b, h, lq, d, dtype=torch.int8), e(b, h, g.num_q_scales(lq, granularity)))
        return preprocess.QuantizedInputs(
            q, q_scale,
            e(b, hk, lk, d, dtype=torch.int8), e(b, hk, g.num_k_scales(lk, granularity)),
            e(b, hk, d, g.padded_kv_len(lk), dtype=torch.float8_e4m3fn), e(b, hk, d),
            e(b, hk, 1, d, dtype=qh.dtype) if smooth_k else None, granularity, pv_accum,
            e(b, hk, d) if smooth_v else None,
        )  # fmt: skip

    dispatch.device_arch = lambda device: "sm90"
    api.quantize_inputs = quantize_inputs
    launch._num_sms = lambda index: 132
    launch.compile_attn_fwd_sm90_ffi = lambda *key: (lambda *args: None)


class _Timers:
    """Accumulated wall time of wrapped callables, by stage name."""

    def __init__(self) -> None:
        self.total = defaultdict(float)

    def wrap(self, name, fn):
        total, clock = self.total, time.perf_counter

        def timed(*args, **kwargs):
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                total[name] += clock() - t0

        return timed


def _ffi_classes() -> list:
    """The CuTe DSL classes whose ``__call__`` enters a TVM-FFI kernel."""
    try:
        from cutlass.cutlass_dsl import tvm_ffi_provider as m
    except ImportError:
        return []
    names = ("TVMFFIJitCompiledFunction", "TVMFFIJitCompiledFunctionWithKwargs")
    return [getattr(m, n) for n in names if hasattr(m, n)]


def _host_loop(call, n: int, cuda: bool, sleep_cycles: int) -> tuple[float, bool]:
    """Seconds per call of ``n`` enqueued calls; and whether the GPU was still busy at the end."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda._sleep(sleep_cycles)
        busy = torch.cuda.Event()
        busy.record()
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    dt = (time.perf_counter() - t0) / n
    never_waited = (not busy.query()) if cuda else True
    if cuda:
        torch.cuda.synchronize()
    return dt, never_waited


def _sleep_cycles_per_ms() -> float:
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    torch.cuda._sleep(20_000_000)
    b.record()
    torch.cuda.synchronize()
    return 20_000_000 / a.elapsed_time(b)


def _stages(call, n: int, cuda: bool, sleep_cycles: int) -> dict:
    from sagecute.kernels.sm90 import launch

    timers = _Timers()
    saved = [(api, "quantize_inputs", api.quantize_inputs), (launch, "attn_fwd_sm90", launch.attn_fwd_sm90)]
    saved += [(cls, "__call__", cls.__dict__["__call__"]) for cls in _ffi_classes() if "__call__" in cls.__dict__]
    stage = {"quantize_inputs": "preprocess", "attn_fwd_sm90": "attention", "__call__": "tvm-ffi"}
    current = ["api"]

    for obj, attr, fn in saved:
        name = stage[attr]
        if name == "tvm-ffi":
            # attribute each TVM-FFI call to the stage it runs in
            def ffi_call(*args, _fn=fn):
                t0 = time.perf_counter()
                try:
                    return _fn(*args)
                finally:
                    timers.total[f"{current[0]}: tvm-ffi calls"] += time.perf_counter() - t0

            setattr(obj, attr, ffi_call)
        else:

            def entered(*args, _fn=timers.wrap(name, fn), _name=name, **kwargs):
                current[0] = _name
                try:
                    return _fn(*args, **kwargs)
                finally:
                    current[0] = "api"

            setattr(obj, attr, entered)
    try:
        total, _ = _host_loop(call, n, cuda, sleep_cycles)
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)
    per_call = {k: v / n for k, v in timers.total.items()}
    per_call["api (rest)"] = total - per_call.get("preprocess", 0) - per_call.get("attention", 0)
    per_call["total (with timers)"] = total
    return per_call


def _import_path(file: str) -> str:
    """``file`` relative to the ``sys.path`` entry it was imported from (no machine
    paths in the recorded output), without the ``sagecute/`` prefix."""
    for root in sorted((p for p in sys.path if p), key=len, reverse=True):
        if file.startswith(root.rstrip("/") + "/"):
            file = file[len(root.rstrip("/")) + 1 :]
            break
    return file.removeprefix("sagecute/")


def _profile(call, n: int, cuda: bool, sleep_cycles: int, top: int) -> str:
    """cProfile of ``n`` calls (the GPU asleep, as in the timed loop), in us per call."""
    prof = cProfile.Profile()
    _host_loop(lambda: (prof.enable(), call(), prof.disable()), n, cuda, sleep_cycles)
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, ncalls, tottime, cumtime, callers)
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    lines = [f"{'calls':>6} {'self us':>8} {'cum us':>8}  function"]
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in rows:
        where = f"{_import_path(file)}:{line}" if line else ""
        lines.append(f"{ncalls / n:6.1f} {tottime / n * 1e6:8.2f} {cumtime / n * 1e6:8.2f}  {name} {where}")
    return "\n".join(lines)


def _primitives(q) -> dict:
    """Host cost (us) of the torch primitives a call is made of, on this machine."""
    x8 = torch.empty(q.shape, dtype=torch.int8, device=q.device)
    f8 = x8.view(torch.float8_e4m3fn)
    cases = {
        "torch.empty (int8 like q)": lambda: torch.empty(q.shape, dtype=torch.int8, device=q.device),
        "Tensor.view(torch.uint8)": lambda: f8.view(torch.uint8),
        "Tensor.transpose(1, 2)": lambda: q.transpose(1, 2),
        "Tensor.shape + stride() + dtype + device": lambda: (q.shape, q.stride(), q.dtype, q.device),
    }
    out = {}
    for name, fn in cases.items():
        best = float("inf")
        for _ in range(20):
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            best = min(best, (time.perf_counter() - t0) / 200)
        out[name] = best * 1e6
    return out


def _launches(call) -> tuple[list, dict]:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Profiler clears events at the end of each cycle"
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
    kernels, ops = [], defaultdict(int)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels.append((e.name, e.device_time_total))
        elif e.name.startswith("aten::"):
            ops[e.name] += 1
    return kernels, dict(ops)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--L", type=int, default=1024)
    p.add_argument("--D", type=int, default=128)
    p.add_argument("--n", type=int, default=100, help="calls per timed loop")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--top", type=int, default=25, help="cProfile entries shown")
    p.add_argument("--fake", action="store_true", help="no GPU: stand-ins for the device parts")
    a = p.parse_args()

    cuda = not a.fake
    if a.fake:
        _install_fakes()
    device = "cuda" if cuda else "cpu"
    q, k, v = (torch.randn(a.B, a.H, a.L, a.D, device=device, dtype=torch.bfloat16) for _ in range(3))

    def call():
        return sagecute.sageattn(q, k, v)

    for _ in range(3):  # compile, fill caches
        o = call()
    from sagecute.kernels.sm90 import launch

    name = torch.cuda.get_device_name() if cuda else "CPU (--fake)"
    paths = f"sm90 {launch.launch_path()}"
    if cuda:
        from sagecute.preprocess import kernels as prep_kernels

        paths += f", preprocess {prep_kernels.launch_path()}"
    print(f"{name}, torch {torch.__version__}; B{a.B} H{a.H} L{a.L} D{a.D} bf16, non-causal, HND")
    print(f"launch paths: {paths}")
    if cuda:
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        cos = torch.nn.functional.cosine_similarity(o.flatten().float(), ref.flatten().float(), dim=0).item()
        print(f"sanity: cosine vs SDPA {cos:.5f}")

    sleep_cycles = 0
    if cuda:
        # sleep long enough to cover the host loop even at 1 ms a call
        sleep_cycles = int(_sleep_cycles_per_ms() * a.n * 1.0)
    for fast in (True, False):  # Note [Fast call]: the shipped path, then the normal one
        fast_call.ENABLED = fast
        times, waited = [], False
        for _ in range(a.rounds):
            dt, never_waited = _host_loop(call, a.n, cuda, sleep_cycles)
            times.append(dt)
            waited |= not never_waited
        host = statistics.median(times) * 1e6
        print(f"\nhost time per call, {'fast call' if fast else 'normal path (fast call off)'}: {host:.1f} us "
              f"(median of {a.rounds} x {a.n} calls; min {min(times) * 1e6:.1f}, max {max(times) * 1e6:.1f})"
              + ("  WARNING: the GPU went idle during a loop" if waited else ""))
    fast_call.ENABLED = True
    if cuda:
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(a.n):
            call()
        e.record()
        torch.cuda.synchronize()
        print(f"GPU time per call (back to back): {s.elapsed_time(e) / a.n * 1e3:.1f} us")

    print("\nper-call stages of the normal path (us; the fast call skips the staged functions):")
    fast_call.ENABLED = False
    for k_, v_ in sorted(_stages(call, a.n, cuda, sleep_cycles).items()):
        print(f"  {k_:32s} {v_ * 1e6:8.1f}")
    fast_call.ENABLED = True

    if cuda:
        kernels, ops = _launches(call)
        print(f"\nlaunches per call: {len(kernels)} GPU kernels")
        for kname, t in kernels:
            print(f"  {kname[:80]:80s} {t:8.1f} us")
        print("aten ops per call: " + ", ".join(f"{k_} x{c}" for k_, c in sorted(ops.items())))

    print("\nhost cost of torch primitives (us, best of 20 x 200):")
    for k_, v_ in _primitives(q).items():
        print(f"  {k_:42s} {v_:6.2f}")

    print(f"\ncProfile, top {a.top} by self time (per call; the profiler inflates small functions):")
    print(_profile(call, a.n, cuda, sleep_cycles, a.top))


if __name__ == "__main__":
    main()
