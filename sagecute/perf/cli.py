"""``python -m sagecute bench``: ceilings, throughput grid, accuracy, report.

Everything runs in one process on one GPU. A peer that is missing, or raises
for a shape, becomes a note or a skip; results.json is rewritten after every
shape, so a run that is cut off still leaves its data, and ``--report-only``
re-renders report.md and the PNGs from it without a GPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from sagecute.perf import accuracy as acc_mod
from sagecute.perf import peers as peers_mod
from sagecute.perf import report as report_mod
from sagecute.perf.ceilings import datasheet_peaks, gpu_slug
from sagecute.perf.shapes import (
    DEFAULT_B,
    DEFAULT_D,
    DEFAULT_H,
    DEFAULT_L,
    QUICK_B,
    QUICK_CAUSAL,
    QUICK_D,
    QUICK_L,
    Shape,
    build_grid,
    input_set_bytes,
    parse_bool_list,
    parse_int_list,
    shape_flops,
    tops,
)
from sagecute.perf.timing import Progress, n_buffers, time_fns

DEFAULT_BUDGET_S = 540.0  # the device tool stops a command at 600 s
QUICK_BUDGET_S = 90.0
BENCH_BUDGET_SHARE = 0.75  # of the budget, when accuracy runs after the grid


def _csv(text: str) -> list[str]:
    return [t for t in (text or "").replace(" ", "").split(",") if t]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sagecute bench",
        description="Benchmark sagecute against FA4, cuDNN/flash SDPA and SageAttention; measure GEMM and copy "
                    "ceilings; check accuracy against exact attention; write results.json, report.md and plots.",
    )
    g = p.add_argument_group("grid")
    g.add_argument("--B", default=str(DEFAULT_B), help="batch sizes, comma list (default %(default)s)")
    g.add_argument("--H", default=str(DEFAULT_H), help="query heads, comma list (default %(default)s)")
    g.add_argument("--hkv", default="", help="KV heads for GQA, comma list (default: = H)")
    g.add_argument("--L", default=",".join(str(x) for x in DEFAULT_L), help="sequence lengths, '1k,2k' ok")
    g.add_argument("--D", default=",".join(str(x) for x in DEFAULT_D), help="head dims (default %(default)s)")
    g.add_argument("--causal", default="F,T", help="causal values: F,T / 0,1 (default %(default)s)")
    g.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    g = p.add_argument_group("implementations")
    g.add_argument("--impls", default="", help="only these impl names or prefixes, e.g. 'sagecute,fa4'")
    g.add_argument("--modes", default="e2e,kernel", help="sagecute modes: e2e (public API), kernel (pre-quantized)")
    g.add_argument("--pv", default=",".join(peers_mod.SAGECUTE_PV), help="sagecute pv_accum_dtype values")
    g.add_argument("--gran", default=peers_mod.DEFAULT_GRAN, help="sagecute qk_quant_gran values timed in the grid")
    g = p.add_argument_group("timing")
    g.add_argument("--timer", default="events", choices=("events", "do_bench"),
                   help="CUDA events per call (default) or triton.testing.do_bench; both report medians")
    g.add_argument("--warmup-ms", type=float, default=None, help="warm-up per point (default 25, quick 10)")
    g.add_argument("--rep-ms", type=float, default=None, help="timed window per point (default 100, quick 40)")
    g.add_argument("--bufs", type=int, default=0, help="rotated input sets (0: enough to cycle 3x L2, 2..8)")
    g.add_argument("--budget-s", type=float, default=None,
                   help=f"stop starting new work after this many seconds (default {DEFAULT_BUDGET_S:.0f}, "
                        f"quick {QUICK_BUDGET_S:.0f}; 0 = none); the grid gets {BENCH_BUDGET_SHARE * 100:.0f}%% of it "
                        "when accuracy follows")
    g = p.add_argument_group("phases")
    g.add_argument("--no-bench", action="store_true", help="skip the throughput grid")
    g.add_argument("--no-ceilings", action="store_true", help="skip GEMM / copy ceilings")
    g.add_argument("--no-accuracy", action="store_true", help="skip the accuracy report")
    g.add_argument("--gemm-n", type=int, default=None, help="GEMM ceiling size n^3 (default 8192)")
    g.add_argument("--copy-mb", type=int, default=1024, help="copy-bandwidth buffer size in MiB")
    g = p.add_argument_group("accuracy")
    g.add_argument("--acc-B", type=int, default=1)
    g.add_argument("--acc-H", type=int, default=8)
    g.add_argument("--acc-hkv", type=int, default=0, help="KV heads in accuracy shapes (0: = acc-H)")
    g.add_argument("--acc-L", default="1024", help="accuracy sequence lengths")
    g.add_argument("--acc-gran", default=",".join(peers_mod.SAGECUTE_GRAN), help="sagecute granularities checked")
    g.add_argument("--acc-causal", default=None, help="causal values in accuracy (default: --causal; quick: F)")
    g.add_argument("--cases", default=",".join(acc_mod.CASES), help="synthetic input cases")
    g.add_argument("--qkv", action="append", default=[], metavar="FILE",
                   help="safetensors with '<name>.q/.k/.v' HND tensors (repeatable)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help="output folder (default perf/results/<date>_<gpu>[-quick])")
    g.add_argument("--quick", action="store_true", help="a couple of shapes, fewer reps: under 2 minutes")
    g.add_argument("--report-only", metavar="RESULTS_JSON", default=None,
                   help="re-render report.md and PNGs from a recorded results.json (no GPU)")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--stall-s", type=float, default=240.0,
                   help="if one step (compile included) makes no progress for this long, write results and "
                        "report, name the step, and exit 3 (0 = never)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cuda")
    return p


# ------------------------------------------------------------------ environment

def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def source_hash(pkg: Path | None = None) -> str:
    """12 hex digits of a sha256 over the package's Python sources (relative paths and
    bytes, in path order): names the code a run measured even where the tree's .git is
    stale or absent (a GPU machine's copy). ``python -c "from sagecute.perf.cli import
    source_hash; print(source_hash())"`` at a checkout gives the same digits."""
    import hashlib

    pkg = pkg or Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def default_out_dir(device_name: str, quick: bool, date: str) -> Path:
    return repo_root() / "perf" / "results" / f"{date}_{gpu_slug(device_name)}{'-quick' if quick else ''}"


def _run(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None
    except Exception:  # noqa: BLE001
        return None


def device_info(device) -> dict:
    import torch

    idx = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(idx)
    driver = _run(["nvidia-smi", f"--id={idx}", "--query-gpu=driver_version", "--format=csv,noheader"])
    clock = _run(["nvidia-smi", f"--id={idx}", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"])
    return {
        "name": props.name,
        "slug": gpu_slug(props.name),
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_gb": props.total_memory / 1e9,
        "l2_bytes": getattr(props, "L2_cache_size", None),
        "max_sm_clock_mhz": int(clock) if clock and clock.isdigit() else None,
        "driver": driver or "-",
    }


def versions() -> dict:
    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__, "cuda (torch)": torch.version.cuda or "-"}
    try:
        v["cudnn"] = str(torch.backends.cudnn.version())
    except Exception:  # noqa: BLE001
        pass
    for label, names in (("nvidia-cutlass-dsl", ("nvidia-cutlass-dsl",)), ("triton", ("triton",)),
                         ("flash-attn-4", ("flash-attn-4", "flash_attn_4", "flash-attn-cute")),
                         ("sageattention", ("sageattention",)), ("sagecute", ("sagecute",))):
        ver = peers_mod.dist_version(*names)
        if ver:
            v[label] = ver
    if "sagecute" not in v:
        try:
            import sagecute

            v["sagecute"] = getattr(sagecute, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            v["sagecute"] = f"not importable ({type(e).__name__})"
    # a copy of the tree (a GPU machine's) may carry a stale .git: the caller can say
    sha = os.environ.get("SAGECUTE_GIT_SHA") or _run(["git", "-C", str(repo_root()), "rev-parse", "--short", "HEAD"])
    if sha:
        v["sagecute git"] = sha
    v["sagecute source"] = source_hash()
    return v


# ------------------------------------------------------------------ run state

class Run:
    """Results dict, output folder, deadlines, and what to do when CUDA breaks."""

    def __init__(self, args, argv, out_dir: Path, results: dict, progress_stream=None) -> None:
        self.args, self.argv, self.out_dir, self.results = args, argv, out_dir, results
        self.t0 = time.monotonic()
        self.cuda_dead = False
        self.stream = progress_stream or sys.stderr
        self.current = "start"
        self.last_beat = self.t0
        self.stop_watchdog = None

    def beat(self, what: str) -> None:
        """Progress heartbeat for the stall watchdog."""
        self.current, self.last_beat = what, time.monotonic()

    def start_watchdog(self, stall_s: float, plots: bool) -> None:
        """A hung kernel cannot be interrupted in-process: after ``stall_s``
        without a heartbeat, save what we have, write the report and exit."""
        import threading

        self.stop_watchdog = threading.Event()

        def watch():
            while not self.stop_watchdog.wait(min(5.0, stall_s / 4)):
                idle = time.monotonic() - self.last_beat
                if idle > stall_s:
                    try:
                        self.note(f"stalled for {idle:.0f}s in: {self.current}; aborting (exit 3)")
                        self.results["aborted"] = self.current
                        self.save()
                        report_mod.write_report(self.results, str(self.out_dir), plots=plots)
                    finally:
                        os._exit(3)
                    return  # only reached when os._exit is stubbed (tests)

        threading.Thread(target=watch, daemon=True, name="bench-watchdog").start()

    def log(self, msg: str) -> None:
        self.stream.write(msg + "\n")
        self.stream.flush()

    def note(self, msg: str) -> None:
        if msg in self.results["notes"]:
            return
        self.results["notes"].append(msg)
        self.log(f"note: {msg}")

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def save(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.out_dir / "results.json.tmp"
        with open(tmp, "w") as f:
            json.dump(self.results, f, indent=1, default=str)
        os.replace(tmp, self.out_dir / "results.json")

    def check_cuda(self, where: str) -> bool:
        """After an exception: is the CUDA context still usable?"""
        import torch

        try:
            torch.cuda.synchronize()
            torch.zeros(1, device=self.args.device).add_(1).item()
            return True
        except Exception as e:  # noqa: BLE001
            self.cuda_dead = True
            self.note(f"CUDA context unusable after {where} ({type(e).__name__}: {str(e)[:200]}); "
                      "remaining GPU work skipped")
            return False


def _free_cuda() -> None:
    import torch

    gc.collect()
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - a broken context is reported by Run.check_cuda
        pass


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"


# ------------------------------------------------------------------ phases

def phase_ceilings(run: Run) -> None:
    from sagecute.perf.ceilings import measure_all

    a = run.args
    n = a.gemm_n or (4096 if a.quick else 8192)
    kw = dict(warmup_ms=a.warmup_ms, rep_ms=a.rep_ms, timer=a.timer)
    run.beat("ceilings")

    def log(msg):
        run.log(msg)
        run.beat(f"ceilings after {msg}")

    run.results["ceilings"] = measure_all(n=n, copy_bytes=a.copy_mb << 20, device=a.device, log=log, **kw)
    if not run.check_cuda("ceilings"):
        return
    run.save()


def _availability(run: Run, adapters) -> list:
    ok = []
    for ad in adapters:
        avail, why = ad.is_available()
        entry = run.results["peers"].setdefault(ad.name, {})
        entry.update(available=avail, reason=why or None, version=ad.version() if avail else None)
        entry.setdefault("modes", [])
        if ad.mode not in entry["modes"]:
            entry["modes"].append(ad.mode)
        if avail:
            ok.append(ad)
        else:
            run.note(f"{ad.name} ({ad.mode}) skipped: {why}")
    return ok


def _make_inputs(shape: Shape, n: int, dtype, device, seed: int):
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    sets = []
    for _ in range(n):
        q = torch.randn(shape.B, shape.H, shape.Lq, shape.D, device=device, dtype=dtype, generator=g)
        k = torch.randn(shape.B, shape.hkv, shape.Lk, shape.D, device=device, dtype=dtype, generator=g)
        v = torch.randn(shape.B, shape.hkv, shape.Lk, shape.D, device=device, dtype=dtype, generator=g)
        sets.append((q, k, v))
    return sets


def phase_bench(run: Run, shapes: list[Shape], deadline: float | None) -> None:
    import torch

    a = run.args
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float16
    elem = 2
    adapters = peers_mod.select(
        peers_mod.bench_adapters(_csv(a.pv), _csv(a.gran), tuple(_csv(a.modes))), _csv(a.impls))
    adapters = _availability(run, [x for x in adapters if x.in_bench])
    if not adapters:
        run.note("no implementation available: throughput grid skipped")
        return
    l2 = run.results["device"].get("l2_bytes") or (50 << 20)
    prog = Progress(len(shapes) * len(adapters), stream=run.stream)
    rows, skips = run.results["rows"], run.results["skips"]
    timing_kw = dict(warmup_ms=a.warmup_ms, rep_ms=a.rep_ms, timer=a.timer, min_reps=3 if a.quick else 5)
    for si, shape in enumerate(shapes):
        if run.cuda_dead:
            break
        if deadline is not None and time.monotonic() > deadline:
            left = shapes[si:]
            run.note(f"time budget reached: {len(left)} shapes not timed ({', '.join(s.label() for s in left[:6])}"
                     f"{', ...' if len(left) > 6 else ''})")
            break
        run.beat(f"bench inputs {shape.label()}")
        set_bytes = input_set_bytes(shape, elem)
        nb = a.bufs or n_buffers(set_bytes, l2)
        free, _total = torch.cuda.mem_get_info()
        # inputs + per-impl copies (FA4's NHD copy, quantized sets, outputs) + margin
        need = lambda n: int(set_bytes * n * 2.5) + (1 << 30)  # noqa: E731
        while nb > 1 and need(nb) > free:
            nb -= 1
        if need(nb) > free:
            for ad in adapters:
                skips.append(dict(impl=ad.name, mode=ad.mode, shape=shape.label(),
                                  reason=f"needs ~{need(1) / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"))
                prog.step(f"{ad.name} {shape.label()}: skipped (memory)")
            continue
        try:
            sets = _make_inputs(shape, nb, dtype, a.device, a.seed + si)
        except Exception as e:  # noqa: BLE001
            _free_cuda()
            run.note(f"inputs for {shape.label()} failed: {_err(e)}")
            for ad in adapters:
                prog.step(f"{ad.name} {shape.label()}: skipped")
            if not run.check_cuda(f"inputs {shape.label()}"):
                break
            continue
        flops = shape_flops(shape)
        for ad in adapters:
            if run.cuda_dead:
                break
            what = f"{ad.name}{' [kernel]' if ad.mode == 'kernel' else ''} {shape.label()}"
            run.beat(f"bench {what}")
            fns = None
            try:
                fns = [ad.prepare(q, k, v, shape.causal) for (q, k, v) in sets]
                fns[0]()  # compile / first call, not timed
                torch.cuda.synchronize()
                t = time_fns(fns, **timing_kw)
                row = dict(impl=ad.name, mode=ad.mode, B=shape.B, H=shape.H, Hkv=shape.hkv, Lq=shape.Lq,
                           Lk=shape.Lk, D=shape.D, causal=shape.causal, dtype=a.dtype, ms=t.ms,
                           tops=tops(flops, t.ms), min_ms=t.min_ms, reps=t.reps, bufs=nb)
                rows.append(row)
                prog.step(f"{what}: {t.ms:.3f} ms {row['tops']:.0f} TOPS")
            except Exception as e:  # noqa: BLE001 - a peer raising is a skip
                fns = None
                skips.append(dict(impl=ad.name, mode=ad.mode, shape=shape.label(), reason=_err(e)))
                prog.step(f"{what}: skipped")
                prog.note(f"  skip {what}: {_err(e)}")
                if isinstance(e, torch.cuda.OutOfMemoryError):
                    _free_cuda()
                elif not run.check_cuda(what):
                    break
            finally:
                del fns
        del sets
        _free_cuda()
        run.save()


def _official_map(run: Run, sage_adapters) -> dict:
    s2 = peers_mod.Sage(2)
    s1 = peers_mod.Sage(1)
    out = {}
    for ad in sage_adapters:
        if s2.is_available()[0]:
            out[ad.name] = peers_mod.official_for(ad)
        elif s1.is_available()[0]:
            out[ad.name] = s1
    if not out and sage_adapters:
        run.note("no official SageAttention importable: no sagecute-vs-official comparison")
    return out


def phase_accuracy(run: Run, deadline: float | None) -> None:
    import torch

    a = run.args
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float16
    adapters = peers_mod.select(
        peers_mod.accuracy_adapters(_csv(a.pv), _csv(a.acc_gran)), _csv(a.impls))
    adapters = _availability(run, [x for x in adapters if x.in_accuracy])
    sage_ads = [x for x in adapters if isinstance(x, peers_mod.SagecuteE2E)]
    official = _official_map(run, sage_ads)
    ref_fn, ref_name = acc_mod.reference_fn()
    run.results["accuracy_reference"] = ref_name
    recs = run.results["accuracy"]
    hkv = a.acc_hkv or a.acc_H
    acc_causal = parse_bool_list(a.acc_causal or a.causal)
    shapes = build_grid(B=[a.acc_B], H=[a.acc_H], L=parse_int_list(a.acc_L), D=parse_int_list(a.D),
                        causal=acc_causal, Hkv=[hkv])
    jobs = [(case, s) for s in shapes for case in _csv(a.cases)]
    qkv_items = []
    for path in a.qkv:
        try:
            items, notes = acc_mod.load_qkv(path)
        except Exception as e:  # noqa: BLE001
            run.note(f"--qkv {path}: {_err(e)}")
            continue
        for n in notes:
            run.note(n)
        qkv_items += [(f"qkv:{name}", q, k, v) for name, q, k, v in items]
    total = len(jobs) + len(qkv_items) * len(acc_causal)
    prog = Progress(total, stream=run.stream)

    def over() -> bool:
        return deadline is not None and time.monotonic() > deadline

    for i, (case, s) in enumerate(jobs):
        if run.cuda_dead:
            return
        if over():
            run.note(f"time budget reached: {total - i} accuracy cases not run")
            return
        run.beat(f"accuracy {case} {s.label()}")
        info = dict(case=case, B=s.B, H=s.H, Hkv=s.hkv, Lq=s.Lq, Lk=s.Lk, D=s.D, causal=s.causal, dtype=a.dtype)
        try:
            q, k, v = acc_mod.make_inputs(case, s.B, s.H, s.hkv, s.Lq, s.D, causal=s.causal, Lk=s.Lk, dtype=dtype,
                                          device=a.device, seed=a.seed + i)
            recs += acc_mod.evaluate(adapters, q, k, v, causal=s.causal, sm_scale=None, info=info,
                                     official=official, ref_fn=ref_fn, log=prog.note,
                                     on_step=lambda n: run.beat(f"accuracy {n} {case} {s.label()}"))
        except Exception as e:  # noqa: BLE001
            run.note(f"accuracy {case} {s.label()}: {_err(e)}")
            if not run.check_cuda(f"accuracy {case}"):
                return
        prog.step(f"{case} {s.label()}")
        _free_cuda()
        run.save()
    for name, q0, k0, v0 in qkv_items:
        d = q0.shape[-1]
        dp = acc_mod.padded_head_dim(d)
        for causal in acc_causal:
            run.beat(f"accuracy {name}{' causal' if causal else ''}")
            if run.cuda_dead or over():
                run.note(f"time budget reached: {name} not run") if not run.cuda_dead else None
                return
            info = dict(case=name, B=q0.shape[0], H=q0.shape[1], Hkv=k0.shape[1], Lq=q0.shape[2], Lk=k0.shape[2],
                        D=d, causal=causal, dtype=a.dtype, padded_D=dp)
            try:
                q, k, v = (acc_mod.pad_head_dim(t.to(device=a.device, dtype=dtype), dp) for t in (q0, k0, v0))
                recs += acc_mod.evaluate(adapters, q, k, v, causal=causal, sm_scale=d ** -0.5, info=info,
                                         official=official, d_orig=d, ref_fn=ref_fn, log=prog.note,
                                         on_step=lambda n: run.beat(f"accuracy {n} {name}"))
            except Exception as e:  # noqa: BLE001
                run.note(f"accuracy {name}: {_err(e)}")
                if not run.check_cuda(f"accuracy {name}"):
                    return
            prog.step(f"{name} D={d}{'->' + str(dp) if dp != d else ''}{' causal' if causal else ''}")
            _free_cuda()
            run.save()


# ------------------------------------------------------------------ main

def _apply_quick(args) -> None:
    if args.quick:
        defaults = build_parser().parse_args([])
        if args.B == defaults.B:
            args.B = str(QUICK_B)
        if args.L == defaults.L:
            args.L = ",".join(str(x) for x in QUICK_L)
        if args.D == defaults.D:
            args.D = ",".join(str(x) for x in QUICK_D)
        if args.causal == defaults.causal:
            args.causal = ",".join("T" if c else "F" for c in QUICK_CAUSAL)
        if args.acc_causal is None:
            args.acc_causal = "F"
    if args.warmup_ms is None:
        args.warmup_ms = 10.0 if args.quick else 25.0
    if args.rep_ms is None:
        args.rep_ms = 40.0 if args.quick else 100.0
    if args.budget_s is None:
        args.budget_s = QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S


def report_only(path: str, out: str | None, plots: bool = True) -> int:
    results = report_mod.load(path)
    out_dir = out or os.path.dirname(os.path.abspath(path))
    r = report_mod.write_report(results, out_dir, plots=plots)
    print(f"wrote {r['report']}" + (f" and {len(r['plots'])} plots" if r["plots"] else ""))
    for n in r["notes"]:
        print(f"note: {n}")
    return 0


def _portable_path(value):
    """An absolute path as recorded in results: relative to the working directory
    when inside it, else its last component (results must not name this machine)."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    rel = os.path.relpath(value)
    return rel if not rel.startswith("..") else os.path.join("...", os.path.basename(value.rstrip("/")))


def _portable_config(args: dict, argv: list[str]) -> dict:
    return dict({k: _portable_path(v) for k, v in args.items()}, argv=[_portable_path(a) for a in argv])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.report_only:
        return report_only(args.report_only, args.out, plots=not args.no_plots)
    _apply_quick(args)

    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device; only --report-only works here", file=sys.stderr)
        return 2
    if args.device == "cuda":
        args.device = f"cuda:{torch.cuda.current_device()}"
    torch.cuda.set_device(torch.device(args.device))
    dev = device_info(args.device)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    out_dir = Path(args.out) if args.out else default_out_dir(dev["name"], args.quick, date)
    results = {
        "schema": report_mod.SCHEMA_VERSION,
        "date": date,
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": dev,
        "versions": versions(),
        "peaks": datasheet_peaks(dev["name"]),
        "config": _portable_config(vars(args), argv),
        "peers": {},
        "notes": [],
        "skips": [],
        "rows": [],
        "ceilings": {},
        "accuracy": [],
    }
    run = Run(args, argv, out_dir, results)
    if results["peaks"]["matched"] is None:
        run.note(f"no datasheet entry for '{dev['name']}': roofline uses measured ceilings only")
    run.log(f"[bench] {dev['name']} (sm_{dev['capability'].replace('.', '')}), driver {dev['driver']}, "
            f"torch {torch.__version__}; writing {out_dir}")
    run.save()
    if args.stall_s and args.stall_s > 0:
        run.start_watchdog(args.stall_s, plots=not args.no_plots)

    budget = args.budget_s or None
    t_end = run.t0 + budget if budget else None
    status = 0

    def guarded(name, fn, *fargs) -> None:
        nonlocal status
        try:
            fn(*fargs)
        except Exception as e:  # noqa: BLE001 - a crashed phase is reported, the others still run
            import traceback

            status = 1
            run.note(f"phase {name} crashed: {_err(e)}")
            traceback.print_exc(file=run.stream)
            run.check_cuda(f"phase {name}")

    try:
        if not args.no_ceilings:
            guarded("ceilings", phase_ceilings, run)
        if not args.no_bench and not run.cuda_dead:
            shapes = build_grid(B=parse_int_list(args.B), H=parse_int_list(args.H), L=parse_int_list(args.L),
                                D=parse_int_list(args.D), causal=parse_bool_list(args.causal),
                                Hkv=parse_int_list(args.hkv) or [None])
            bench_end = None
            if t_end is not None:
                bench_end = run.t0 + budget * (BENCH_BUDGET_SHARE if not args.no_accuracy else 1.0)
            guarded("bench", phase_bench, run, shapes, bench_end)
            run.save()
            guarded("report", lambda: report_mod.write_report(results, str(out_dir), plots=not args.no_plots))
        if not args.no_accuracy and not run.cuda_dead:
            guarded("accuracy", phase_accuracy, run, t_end)
    except KeyboardInterrupt:
        status = 130
        run.note("interrupted")
    finally:
        if run.stop_watchdog is not None:
            run.stop_watchdog.set()
        results["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        run.save()
        r = report_mod.write_report(results, str(out_dir), plots=not args.no_plots)
        run.log(f"[bench] {len(results['rows'])} rows, {len(results['skips'])} skips, "
                f"{len(results['accuracy'])} accuracy records in {run.elapsed():.0f}s -> {r['report']}")
    return status
