"""Where an end-to-end ``sageattn`` call's GPU time goes (GPU): the kernels of a few
back-to-back calls from a torch.profiler trace, each with its duration and the gap
before it, next to the kernel-only attention and the preprocessing timed alone.

    python perf/e2e_breakdown.py [--L 1024,8192] [--D 128,64] [--B 4] [--H 32] [--calls 4]
    python perf/e2e_breakdown.py --ab      # PDL A/B: e2e with and without it, kernel alone
    python perf/e2e_breakdown.py --after   # the attention kernel's duration after each predecessor
    python perf/e2e_breakdown.py --rotation  # e2e as the bench times it, 1 vs 2 input sets

``--ab`` times, interleaved (best of rounds): the kernel alone as the bench runs it
(no PDL), the kernel alone with the API's PDL config, the API call, and on the API's
normal path (Note [Fast call] off, as it reads the config per call) the call with the
attention launched without PDL, as shipped, and without its PDL wait (diagnostic:
wrong results, the bound on what finer-grained waits could overlap).

``--after`` asks why the attention runs slower right after the preprocessing than back
to back with itself: from profiler traces, the attention kernel's median duration when
each call is [predecessor; attention alone, no PDL] for the predecessors: none, the
preprocessing, the preprocessing then a ~200 us idle kernel (``torch.cuda._sleep``:
if the time recovers, it is the clocks or power, not the memory system), and a
device copy moving as many bytes as the preprocessing (any memory-bound kernel?).

``--rotation`` times the API call and the kernel alone as the bench does
(``time_fns``: median of per-call event intervals) with one input set and with two
rotated (the bench's choice when a set is larger than L2), twice, interleaved: does
the bench's end-to-end figure pay for the rotation itself?

Per call: prep = the K/V preprocessing kernel, attn = the attention kernel (its
duration in the trace starts at its launch, so with PDL it includes the time its
early CTAs waited on the preprocessing), span = first kernel start to last kernel end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import sagecute  # noqa: E402
from sagecute import api, fast_call  # noqa: E402
from sagecute.perf.timing import loop_ms  # noqa: E402


def _kernels(fn, calls: int) -> list[dict]:
    """GPU kernel events (name, ts, dur in us) of ``calls`` back-to-back ``fn()``."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    ks = [e for e in events if e.get("cat") == "kernel"]
    return sorted(({"name": e["name"], "ts": float(e["ts"]), "dur": float(e["dur"])} for e in ks), key=lambda e: e["ts"])


def _ab(q, k, v, flops, rounds: int = 4):
    prepared = api.prepare_inputs(q, k, v)
    api_config = api._sm90_config_after_preprocess

    def e2e_slow_path(**config):
        """The normal (not Note [Fast call]) path, which reads the config per call."""
        api._sm90_config_after_preprocess = lambda *a: dataclasses.replace(api_config(*a), **config)
        fast_call.ENABLED = False
        try:
            return sagecute.sageattn(q, k, v)
        finally:
            api._sm90_config_after_preprocess = api_config
            fast_call.ENABLED = True

    variants = {
        "kernel": lambda: api.attention_prepared(prepared),
        "kernel pdl": lambda: api._run_sm90_prepared(prepared, after_preprocess=True),
        "e2e": lambda: sagecute.sageattn(q, k, v),
        "e2e no pdl": lambda: e2e_slow_path(pdl=False),
        "e2e normal path": e2e_slow_path,
        # DIAGNOSTIC, wrong results: the attention does not wait for the preprocessing,
        # the most a per-head ready flag could overlap (AttnFwdConfigSm90.pdl_wait)
        "e2e no wait": lambda: e2e_slow_path(pdl_wait=False),
    }
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            best[name] = min(best[name], loop_ms(fn, 10, rounds=1))
    for name, ms in best.items():
        print(f"    {name:12s} {ms * 1e3:9.1f} us {flops / ms / 1e9:6.0f} TOPS")


def _after(q, k, v, calls: int = 6):
    prepared = api.prepare_inputs(q, k, v)
    n = (k.numel() + v.numel()) * 3 // 2  # bytes the preprocessing moves, over 2 (read + write)
    src = torch.empty(n, dtype=torch.uint8, device=q.device)
    dst = torch.empty_like(src)
    cycles = 400_000  # torch.cuda._sleep counts SM clocks: ~200 us at ~2 GHz
    predecessors = {
        "none": lambda: None,
        "preprocessing": lambda: api.prepare_inputs(q, k, v),
        "prep + 200 us idle": lambda: (api.prepare_inputs(q, k, v), torch.cuda._sleep(cycles)),
        "copy": lambda: dst.copy_(src),
    }
    for name, before in predecessors.items():
        def call(before=before):
            before()
            api.attention_prepared(prepared)

        call()
        ks = [e for e in _kernels(call, calls) if "attn_fwd" in e["name"]]
        durs = sorted(e["dur"] for e in ks)
        med = durs[len(durs) // 2] if durs else float("nan")
        print(f"    after {name:20s}: attention {med:8.1f} us (median of {len(durs)})")


def _rotation(q, k, v, flops, rounds: int = 2):
    from sagecute.perf.timing import time_fns

    sets = [(q, k, v)] + [tuple(torch.randn_like(x) for x in (q, k, v))]
    prepared = [api.prepare_inputs(*s) for s in sets]
    variants = {
        "e2e 1 set": [lambda: sagecute.sageattn(q, k, v, backend="sm90")],
        "e2e 2 sets": [lambda s=s: sagecute.sageattn(*s, backend="sm90") for s in sets],
        "kernel 1 set": [lambda: api.attention_prepared(prepared[0])],
        "kernel 2 sets": [lambda p=p: api.attention_prepared(p) for p in prepared],
    }
    for r in range(rounds):
        for name, fns in variants.items():
            fns[0]()
            t = time_fns(fns, warmup_ms=25.0, rep_ms=100.0)
            print(f"    round {r} {name:14s} median {t.ms * 1e3:8.1f} us (min {t.min_ms * 1e3:8.1f}) "
                  f"{flops / t.ms / 1e9:6.0f} TOPS")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--L", default="1024,8192")
    p.add_argument("--D", default="128,64")
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--ab", action="store_true")
    p.add_argument("--after", action="store_true")
    p.add_argument("--rotation", action="store_true")
    args = p.parse_args()
    print(torch.cuda.get_device_name())
    for d in (int(x) for x in args.D.split(",")):
        for length in (int(x) for x in args.L.split(",")):
            q, k, v = (torch.randn(args.B, args.H, length, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            flops = 4 * args.B * args.H * length * length * d
            if args.ab or args.after or args.rotation:
                print(f"D{d} L{length}:")
                if args.ab:
                    _ab(q, k, v, flops)
                if args.after:
                    _after(q, k, v)
                if args.rotation:
                    _rotation(q, k, v, flops)
                continue
            e2e = lambda: sagecute.sageattn(q, k, v)  # noqa: E731
            prepared = api.prepare_inputs(q, k, v)
            kernel = lambda: api.attention_prepared(prepared)  # noqa: E731
            prep = lambda: api.prepare_inputs(q, k, v)  # noqa: E731
            for _ in range(3):
                e2e(), kernel(), prep()
            t_e2e, t_kernel, t_prep = (loop_ms(f, 10, rounds=1) for f in (e2e, kernel, prep))
            print(f"D{d} L{length}: events e2e {t_e2e * 1e3:8.1f} us ({flops / t_e2e / 1e9:5.0f} TOPS), "
                  f"kernel {t_kernel * 1e3:8.1f} us ({flops / t_kernel / 1e9:5.0f}), prep alone {t_prep * 1e3:7.1f} us; "
                  f"e2e - kernel = {(t_e2e - t_kernel) * 1e3:6.1f} us")
            ks = _kernels(e2e, args.calls)
            prev_end = None
            for e in ks:
                gap = "" if prev_end is None else f"gap {e['ts'] - prev_end:7.1f}"
                print(f"    {e['name'][:60]:60s} {e['dur']:8.1f} us {gap}")
                prev_end = e["ts"] + e["dur"]
            if ks:
                span = ks[-1]["ts"] + ks[-1]["dur"] - ks[0]["ts"]
                print(f"    {len(ks)} kernels in {args.calls} calls, span {span / args.calls:8.1f} us per call")
            kk = _kernels(kernel, args.calls)
            if kk:
                print(f"    kernel only: {[round(e['dur'], 1) for e in kk]} us")


if __name__ == "__main__":
    main()
