"""Benchmark and accuracy harness for sagecute (``python -m sagecute bench``).

Pure host code: no kernels live here, and no peer library is imported at module
import time (adapters in ``peers.py`` import lazily). ``report.py`` needs neither
torch nor a GPU, so ``--report-only`` re-renders a recorded ``results.json``
anywhere.

Modules: ``shapes`` (grid, FLOPs, bytes), ``timing`` (CUDA-event / do_bench
medians with rotated buffers), ``peers`` (one adapter per implementation),
``ceilings`` (GEMM / copy ceilings, datasheet peaks), ``accuracy`` (input
generators, metrics, ``--qkv`` loader), ``report`` (markdown + PNG), ``cli``.
"""
