"""GPU timing: medians of CUDA-event intervals, inputs rotated across buffers.

``fns`` is a list of zero-argument callables, one per input buffer set; call
``i`` runs ``fns[i % len(fns)]``, so consecutive calls read different memory
and L2 does not flatter small shapes. The first call (JIT compile) is done by
the caller or by the warm-up here, never timed.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass
class Timing:
    ms: float  # median
    min_ms: float
    mean_ms: float
    reps: int
    timer: str

    def as_dict(self) -> dict:
        return {"ms": self.ms, "min_ms": self.min_ms, "mean_ms": self.mean_ms, "reps": self.reps, "timer": self.timer}


def n_buffers(set_bytes: int, l2_bytes: int, *, factor: float = 3.0, lo: int = 2, hi: int = 8) -> int:
    """Buffer sets so that ``factor`` x L2 is cycled through (at least ``lo``)."""
    if set_bytes <= 0:
        return lo
    need = -(-int(factor * l2_bytes) // int(set_bytes))
    return max(lo, min(hi, need))


def _events_median(fns: Sequence[Callable[[], object]], warmup_ms: float, rep_ms: float,
                   min_reps: int, max_reps: int) -> Timing:
    import torch

    nb = len(fns)
    torch.cuda.synchronize()
    # Estimate one call from a short batch.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(max(nb, 3)):
        fns[i % nb]()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end) / max(nb, 3), 1e-3)
    # Warm-up (clocks, caches, allocator).
    n_warm = max(1, min(10_000, int(warmup_ms / est)))
    for i in range(n_warm):
        fns[i % nb]()
    n = max(min_reps, min(max_reps, int(rep_ms / est)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    torch.cuda.synchronize()
    for i in range(n):
        starts[i].record()
        fns[i % nb]()
        ends[i].record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return Timing(ms=statistics.median(times), min_ms=min(times), mean_ms=statistics.fmean(times),
                  reps=n, timer="events")


def _do_bench_median(fns: Sequence[Callable[[], object]], warmup_ms: float, rep_ms: float) -> Timing:
    import torch
    from triton.testing import do_bench

    nb = len(fns)
    counter = [0]

    def call():
        fns[counter[0] % nb]()
        counter[0] += 1

    # do_bench flushes L2 between calls on its own; rotation is kept anyway.
    ms = do_bench(call, warmup=max(1, int(warmup_ms)), rep=max(1, int(rep_ms)), return_mode="median")
    torch.cuda.synchronize()
    return Timing(ms=float(ms), min_ms=float("nan"), mean_ms=float("nan"), reps=counter[0], timer="do_bench")


def time_fns(fns: Sequence[Callable[[], object]], *, warmup_ms: float = 25.0, rep_ms: float = 100.0,
             min_reps: int = 5, max_reps: int = 2000, timer: str = "events") -> Timing:
    """Median milliseconds of one call (see module doc)."""
    if not fns:
        raise ValueError("nothing to time")
    if timer == "do_bench":
        try:
            return _do_bench_median(fns, warmup_ms, rep_ms)
        except ImportError:
            pass  # no triton: fall back to events
    return _events_median(fns, warmup_ms, rep_ms, min_reps, max_reps)


def bench_ms(fn: Callable[[], object] | Sequence[Callable[[], object]], *, warmup_ms: float = 25.0,
             rep_ms: float = 100.0, timer: str = "events") -> float:
    """Median milliseconds of ``fn()`` (or of a list of callables, rotated).
    The first call is made here, untimed (JIT compile)."""
    import torch

    fns = list(fn) if isinstance(fn, (list, tuple)) else [fn]
    fns[0]()
    torch.cuda.synchronize()
    return time_fns(fns, warmup_ms=warmup_ms, rep_ms=rep_ms, timer=timer).ms


class Progress:
    """Plain-text progress bar on stderr: one rewritten line on a terminal,
    one line per step otherwise (logs stay readable)."""

    def __init__(self, total: int, stream=None, width: int = 24) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.width = width
        self.t0 = time.monotonic()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def _bar(self) -> str:
        frac = min(self.done / self.total, 1.0)
        fill = int(round(frac * self.width))
        el = time.monotonic() - self.t0
        eta = el / self.done * (self.total - self.done) if self.done else float("nan")
        eta_s = f"{eta:5.0f}s" if eta == eta else "    ?"
        return f"[{'#' * fill}{'.' * (self.width - fill)}] {self.done:4d}/{self.total} {el:5.0f}s eta {eta_s}"

    def step(self, msg: str = "") -> None:
        self.done += 1
        line = f"{self._bar()} {msg}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[:200])
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, msg: str) -> None:
        """A line that stays (e.g. a skip), without breaking the bar."""
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(msg + "\n")
        self.stream.flush()


def loop_ms(fn: Callable[[], object], iters: int = 20, rounds: int = 3) -> float:
    """Best of ``rounds`` plain loops of ``iters`` calls, ms per call (one warm-up call
    first): the diagnostic scripts' quick A/B timer (perf/, ``kernels/sm90/bench.py``)."""
    import torch

    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / iters)
    return best


def graph_ms(fn: Callable[[], object], iters: int = 20) -> float:
    """ms per call of ``fn`` with ``iters`` calls captured in one CUDA graph (GPU time
    alone, no launch gaps). A captured ``copy_`` becomes a memcpy node (2.44 TB/s on an
    H100 against 3.0 launched): time copies with :func:`loop_ms`."""
    import torch

    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(iters):
            fn()
    return loop_ms(g.replay, 1) / iters
