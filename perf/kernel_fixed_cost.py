"""The sm90 kernel's fixed cost per launch (GPU): kernel-only time at L1k over batch
sizes, fitted as t = fixed + per_wave * waves, to split a short call's time into the
work, the partial last wave and what every launch pays once (CTA start, the first
tile's Q load and quantization, pipeline fill, the last tile's drain).

    python perf/kernel_fixed_cost.py [--configs default,q_producer] [--D 128] [--L 1024]

Timed in a CUDA graph (no launch gaps, no host time) and as a plain loop.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sagecute.kernels.sm90.bench import _variant, make_runner  # noqa: E402
from sagecute.perf.timing import graph_ms, loop_ms  # noqa: E402
from sagecute.quant_layout import QuantGranularity  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default="default,q_producer")
    p.add_argument("--D", type=int, default=128)
    p.add_argument("--L", type=int, default=1024)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--B", default="1,2,4,8,16")
    args = p.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(), f"{sms} SMs")
    tiles_per_head = math.ceil(args.L / 128)
    for name in args.configs.split(","):
        cfg, pv = _variant(name, args.D)
        pts = []
        for b in (int(x) for x in args.B.split(",")):
            run = make_runner(b, args.H, args.L, args.L, args.D, False, QuantGranularity.PER_THREAD, pv, cfg,
                              fused_q=True)
            g, lp = graph_ms(run, 20), loop_ms(run, 20)
            tiles = b * args.H * tiles_per_head
            waves = math.ceil(tiles / sms)
            pts.append((waves, g))
            flops = 4 * b * args.H * args.L * args.L * args.D
            print(f"{name:12s} d{args.D} L{args.L} B{b:3d}: {tiles:5d} tiles ({tiles / sms:6.2f} waves): graph "
                  f"{g * 1e3:8.1f} us ({flops / g / 1e9:4.0f} TOPS), loop {lp * 1e3:8.1f} us", flush=True)
        # least squares t = fixed + per_wave * ceil(waves) over the points
        n = len(pts)
        mx, my = sum(w for w, _ in pts) / n, sum(t for _, t in pts) / n
        sxx = sum((w - mx) ** 2 for w, _ in pts)
        slope = sum((w - mx) * (t - my) for w, t in pts) / sxx
        fixed = my - slope * mx
        print(f"{name:12s} fit: fixed {fixed * 1e3:6.1f} us, per wave {slope * 1e3:6.1f} us")


if __name__ == "__main__":
    main()
