"""Timing helpers of the perf/ scripts (GPU): best of 3, CUDA events."""

from __future__ import annotations

import torch


def loop_ms(fn, iters: int = 20) -> float:
    """ms per call of ``fn`` launched ``iters`` times in a plain loop (after one warm-up)."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / iters)
    return best


def graph_ms(fn, iters: int = 20) -> float:
    """ms per call of ``fn`` with ``iters`` calls captured in one CUDA graph (GPU time
    alone, no launch gaps). A captured ``copy_`` becomes a memcpy node: time copies
    with :func:`loop_ms`."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(iters):
            fn()
    return loop_ms(g.replay, 1) / iters
