"""Command line: ``python -m sagecute {demo,info,compile,bench}``."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import sys
import time

ARCHS = ("sm_90a", "sm_100a", "sm_120a")


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def cmd_info(_args) -> int:
    import torch

    from . import __version__, dispatch

    print(f"sagecute {__version__}, torch {torch.__version__}, nvidia-cutlass-dsl {_version('nvidia-cutlass-dsl')}")
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        print(f"GPU: {torch.cuda.get_device_name()} (compute capability {cap[0]}.{cap[1]})")
        archs = [dispatch.device_arch(torch.device("cuda"))]
    else:
        print("GPU: no GPU (every call falls back to scaled_dot_product_attention)")
        archs = ["sm90", "sm100", "sm120"]
    for arch in archs:
        print(f"\non {arch}, the kernel per configuration (bf16, per_thread, smooth_k):")
        for cfg, backend, reason in dispatch.describe(arch):
            print(f"  {cfg:32s} -> {backend:6s} ({reason})")
    return 0


def _metrics_line(name, out, ref) -> str:
    from .metrics import error_metrics

    m = error_metrics(out, ref)
    return f"  {name:28s} cos {m.cosine:.6f}  rel-L1 {m.rel_l1:.4%}  RMSE {m.rmse:.3e}"


def cmd_demo(args) -> int:
    import torch

    from . import reference, sageattn

    if torch.cuda.is_available():
        from .perf.timing import bench_ms

        b, h, length, d = 4, 32, args.seqlen, 128
        print(f"{torch.cuda.get_device_name()}: B={b} H={h} L={length} D={d} bf16")
        q, k, v = (torch.randn(b, h, length, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        k = k + 4 * torch.randn(1, h, 1, d, device="cuda", dtype=torch.bfloat16)  # channel outliers
        ref = reference.attention_exact(q[:1, :4], k[:1, :4], v[:1, :4], compute_dtype=torch.float32)
        o = sageattn(q, k, v)
        o_sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        print("accuracy vs fp32 attention (first 4 heads):")
        print(_metrics_line("sagecute", o[:1, :4], ref))
        print(_metrics_line("sdpa (bf16)", o_sdpa[:1, :4], ref))
        flops = 4 * b * h * length * length * d
        for name, fn in (("sagecute", lambda: sageattn(q, k, v)), ("sdpa", lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))):
            ms = bench_ms(fn)
            print(f"  {name:10s} {ms:8.3f} ms  {flops / ms / 1e9:7.1f} TOPS")
        return 0

    print("no GPU: running the sm90 reference emulation on the CPU")
    torch.manual_seed(0)
    b, h, length, d = 1, 4, 512, 128
    q, k, v = (torch.randn(b, h, length, d, dtype=torch.bfloat16) for _ in range(3))
    k = k + 4 * torch.randn(1, h, 1, d, dtype=torch.bfloat16)
    ref = reference.attention_exact(q, k, v)
    t0 = time.time()
    for smooth in (True, False):
        o = reference.sageattn_reference(q, k, v, smooth_k=smooth, arch="sm90")
        print(_metrics_line(f"sm90 emulation smooth_k={smooth}", o, ref))
    o = reference.sageattn_reference(q, k, v, arch="sm120")
    print(_metrics_line("sm120 NVFP4 emulation", o, ref))
    print(f"  ({time.time() - t0:.1f} s on the CPU)")
    if args.no_compile:
        return 0
    print("compiling the kernels for sm_90a (no GPU needed) ...")
    return cmd_compile(argparse.Namespace(arch="sm_90a", out=None, quick=True))


def cmd_compile(args) -> int:
    """Compile every kernel variant for one arch and print a SASS summary."""
    os.environ["CUTE_DSL_ARCH"] = args.arch
    from .compile_report import compile_arch, format_summary

    t0 = time.time()
    results = compile_arch(args.arch, out_dir=args.out, quick=getattr(args, "quick", False))
    print(format_summary(results))
    print(f"compiled {len(results)} kernel(s) for {args.arch} in {time.time() - t0:.0f} s")
    bad = [r for r in results if not r.ok]
    for r in bad:
        print(f"FAILED {r.name}: {r.problem}", file=sys.stderr)
    return 1 if bad else 0


def cmd_bench(argv) -> int:
    from .perf.cli import main

    return main(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    p = argparse.ArgumentParser(prog="python -m sagecute", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run sagecute next to SDPA (GPU) or the reference emulation (CPU)")
    d.add_argument("--seqlen", type=int, default=4096)
    d.add_argument("--no-compile", action="store_true", help="CPU: skip compiling the kernels")
    sub.add_parser("info", help="GPU, versions, and the kernel each configuration takes")
    c = sub.add_parser("compile", help="compile every kernel for an arch (no GPU needed)")
    c.add_argument("--arch", choices=ARCHS, default="sm_90a")
    c.add_argument("--out", default=None, help="keep PTX/cubin/SASS here")
    c.add_argument("--quick", action="store_true", help="one variant per kernel")
    sub.add_parser("bench", help="benchmarks and accuracy report (see --help of 'bench')")
    args = p.parse_args(argv)
    return {"demo": cmd_demo, "info": cmd_info, "compile": cmd_compile}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
