"""Kernel launches and host time of one ``sageattn`` call (torch profiler).

    python perf/launch_count.py [--L 1024] [--D 128]
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import sagecute


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--L", type=int, default=1024)
    p.add_argument("--D", type=int, default=128)
    a = p.parse_args()
    q, k, v = (torch.randn(a.B, a.H, a.L, a.D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for _ in range(3):
        sagecute.sageattn(q, k, v)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        sagecute.sageattn(q, k, v)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"B{a.B} H{a.H} L{a.L} D{a.D}: {len(kernels)} kernel launches per sageattn call:")
    for e in kernels:
        print(f"  {e.name[:90]:90s} {e.device_time_total:8.1f} us")
    n = 50
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        sagecute.sageattn(q, k, v)
    host = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    print(f"host time per call (enqueue only): {host:.1f} us")


if __name__ == "__main__":
    main()
