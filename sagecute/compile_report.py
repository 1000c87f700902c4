"""``python -m sagecute compile``: build every kernel for one arch without a
GPU and summarise its SASS (registers, spills, shared memory, key instructions).

Each kernel family exposes a ``compile_all_*`` function returning results
with ``name``, ``ok``, ``problem`` and a ``summary`` dict; this module only
gathers and prints them, and says which instructions must be present.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field

# Instructions each attention kernel must contain, per arch (a missing one
# means the kernel silently took a slower path).
REQUIRED_SASS = {"sm_90a": {"attn": ("IGMMA", "QGMMA", "UTMALDG")}}


@dataclass
class CompileResult:
    name: str
    arch: str
    ok: bool
    problem: str = ""
    summary: dict = field(default_factory=dict)


def _collect(module: str, func: str, arch: str, out_dir, quick: bool, kind: str) -> list[CompileResult]:
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        return [CompileResult(f"{kind} (not built)", arch, True, f"skipped: {e}")]
    results = []
    try:
        accepted = inspect.signature(fn).parameters
        kwargs = {k: v for k, v in {"arch": arch, "out_dir": out_dir, "quick": quick}.items() if k in accepted}
        raw = fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - report, don't crash the report
        return [CompileResult(kind, arch, False, f"{type(e).__name__}: {e}")]
    for r in raw:
        res = CompileResult(
            getattr(r, "name", kind), arch, bool(getattr(r, "ok", True)), getattr(r, "problem", ""), dict(getattr(r, "summary", {}) or {})
        )
        required = REQUIRED_SASS.get(arch, {}).get(kind, ())
        counts = res.summary.get("sass", {})
        missing = [ins for ins in required if counts.get(ins, 0) == 0]
        if res.ok and missing:
            res.ok, res.problem = False, f"missing SASS instructions {missing}"
        if res.ok and res.summary.get("spills"):
            res.ok, res.problem = False, f"register spills ({res.summary['spills']})"
        results.append(res)
    return results


def compile_arch(arch: str, out_dir=None, quick: bool = False) -> list[CompileResult]:
    results = []
    if arch == "sm_90a":
        results += _collect("sagecute.kernels.sm90.launch", "compile_all_sm90", arch, out_dir, quick, "attn")
    results += _collect("sagecute.preprocess.kernels", "compile_all_preprocess", arch, out_dir, quick, "preprocess")
    return results


def format_summary(results: list[CompileResult]) -> str:
    lines = [f"{'kernel':44s} {'ok':3s} {'regs':>5s} {'spill':>6s} {'smem':>7s}  key SASS"]
    for r in results:
        s = r.summary
        sass = " ".join(f"{k}={v}" for k, v in sorted(s.get("sass", {}).items()))
        lines.append(
            f"{r.name[:44]:44s} {'yes' if r.ok else 'NO':3s} {str(s.get('registers', '-')):>5s} "
            f"{str(s.get('spills', '-')):>6s} {str(s.get('smem_bytes', '-')):>7s}  {sass}{('  ' + r.problem) if r.problem else ''}"
        )
    return "\n".join(lines)
