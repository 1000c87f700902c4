"""The command line works on a CPU-only machine."""

import subprocess
import sys


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "sagecute", *args], capture_output=True, text=True, timeout=timeout)


def test_info_without_gpu():
    r = _run("info")
    assert r.returncode == 0, r.stderr
    assert "nvidia-cutlass-dsl" in r.stdout
    assert "on sm90" in r.stdout and "on sm120" in r.stdout


def test_demo_without_gpu_runs_the_emulation():
    r = _run("demo", "--no-compile")
    assert r.returncode == 0, r.stderr
    assert "no GPU" in r.stdout and "sm90 emulation" in r.stdout and "cos 0.99" in r.stdout


def test_help_lists_commands():
    r = _run("--help")
    assert r.returncode == 0
    for cmd in ("demo", "info", "compile", "bench"):
        assert cmd in r.stdout
