"""Kernel-only A/B of the d64 causal tile (two vs three consumer warpgroups) over L, on
the API's kernel path (bf16 Q quantized in the kernel). GPU.

    python perf/causal_d64_ab.py [--L 1024,2048,4096,8192]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sagecute.kernels.sm90.bench import _variant, make_runner, tops  # noqa: E402
from sagecute.perf.timing import loop_ms  # noqa: E402
from sagecute.quant_layout import QuantGranularity  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--L", default="1024,2048,4096,8192")
    p.add_argument("--configs", default="default,three_wg,default,three_wg")
    args = p.parse_args()
    for L in [int(x) for x in args.L.split(",")]:
        for name in args.configs.split(","):
            cfg, pv = _variant(name, 64)
            run = make_runner(4, 32, L, L, 64, True, QuantGranularity.PER_THREAD, pv, cfg, fused_q=True)
            ms = loop_ms(run, 20)
            print(f"{name:12s} d64 causal L{L:6d}: {ms:8.3f} ms {tops(4, 32, L, L, 64, True, ms):7.1f} TOPS", flush=True)


if __name__ == "__main__":
    main()
