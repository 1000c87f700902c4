"""K/V preprocessing bandwidth (GPU): the one-launch K mean + K int8 + V fp8 kernel
(``quantize_qkv_cute(with_q=False)``, the API's) against the device-to-device copy rate
measured in the same run, for each count of stashed blocks (Note [Stashed blocks]).

    python perf/prep_bandwidth.py [--stash auto,0,1,16s1] [--L 1024,8192,16384] [--D 128,64]
    python perf/prep_bandwidth.py --stash auto --hints none,st,st+rr,st+rr+p1   # Note [L2 cache operators]
    python perf/prep_bandwidth.py --L 2048 --stash 8s1,16s0 --ring 0,2 --repeat 5   # interleaved, best + median
    python perf/prep_bandwidth.py --L 1024 --stash auto --diag none,noexchange,nocluster   # what the exchange costs
    python perf/prep_bandwidth.py --ncu-one --L 1024 --D 128 [--wg 2]   # one call per shape, for ncu

Bytes counted once: K and V read (bf16), K int8 + V fp8 written (scales and the mean
are < 1%). Times: CUDA graph of 20 calls, best of 3 (the copies: a plain loop; a
captured copy_ is a memcpy node, 2.44 TB/s on an H100 against 3.0 launched). Each shape
also times a copy of as many bytes as the kernel moves: at L1k (100 MB) that copy
itself reaches only ~87% of the 1 GB copy's rate on an H200 (launch and tail).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sagecute.kernels.common import quant_qkv  # noqa: E402
from sagecute.preprocess import kernels as kern  # noqa: E402
from sagecute.perf.timing import graph_ms, loop_ms  # noqa: E402
from sagecute.quant_layout import QuantGranularity  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stash", default="auto,0,1",
                   help="stashed blocks per split; 'SsN' pins splits S and stash N (e.g. 4s1, 16s2), 'SsNrR' also ring R")
    p.add_argument("--hints", default="default",
                   help="comma-separated quant_qkv.CACHE_HINTS values to time ('none': no hint, 'default': as shipped)")
    p.add_argument("--wg", default="auto",
                   help="warpgroups per K/V CTA to time, comma-separated ('auto': warpgroups_for; Note [Sub-splits]); "
                        "each other count's outputs are compared with the first one's")
    p.add_argument("--ring", default="auto",
                   help="cp.async slots per K/V split to time, comma-separated ('auto': ring_for, 0: the register "
                        "path; Note [Block ring]); outputs compared with the first configuration's")
    p.add_argument("--diag", default="none",
                   help="comma-separated quant_qkv.DIAGNOSTIC values to time (perf only, outputs WRONG: 'noexchange' "
                        "skips the cluster exchange, 'nocluster' also launches without clusters; 'none': as shipped)")
    p.add_argument("--repeat", type=int, default=1,
                   help="time every configuration this many times, interleaved; report the best (and the median)")
    p.add_argument("--L", default="1024,8192,16384")
    p.add_argument("--D", default="128,64")
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--ncu-one", action="store_true", help="each (D, L) once after a warm-up call, no timing (for ncu)")
    args = p.parse_args()
    auto, auto_splits, shipped, auto_wg = kern.stash_for, kern.splits_for, quant_qkv.CACHE_HINTS, kern.warpgroups_for
    auto_ring = kern.ring_for

    def pin(stash: str, hints: str, wg: str, ring: str = "auto", diag: str = "none") -> None:
        """Plan the next calls with these stash / hints / warpgroups / ring / diagnostic
        (``auto``, ``none``: as shipped)."""
        stash, _, own_ring = stash.partition("r")  # "SsNrR": this stash token pins its ring too
        ring = own_ring or ring
        kern.ring_for = auto_ring if ring == "auto" else (lambda *a, r=int(ring): r)
        splits, _, n = stash.rpartition("s")
        kern.splits_for = auto_splits if not splits else (lambda *a, c=int(splits): c)
        kern.stash_for = auto if n == "auto" else (lambda *a, n=int(n): n)
        kern.warpgroups_for = auto_wg if wg == "auto" else (lambda *a, w=int(wg): w)
        quant_qkv.CACHE_HINTS = {"default": shipped, "none": ""}.get(hints, hints)
        quant_qkv.DIAGNOSTIC = "" if diag == "none" else diag
        kern._QKV_PLANS.clear()

    if args.ncu_one:  # the first --stash / --hints / --wg value
        pin(args.stash.split(",")[0], args.hints.split(",")[0], args.wg.split(",")[0], args.ring.split(",")[0],
            args.diag.split(",")[0])
        for d in (int(x) for x in args.D.split(",")):
            for length in (int(x) for x in args.L.split(",")):
                q, k, v = (torch.randn(args.B, args.H, length, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                for _ in range(2):
                    kern.quantize_qkv_cute(q, k, v, GRAN, True, with_q=False)
                torch.cuda.synchronize()
        return
    src = torch.empty(1024 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_tbs = 2 * src.numel() / loop_ms(lambda: dst.copy_(src)) / 1e9
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {copy_tbs:.2f} TB/s")
    for d in (int(x) for x in args.D.split(",")):
        for length in (int(x) for x in args.L.split(",")):
            q, k, v = (torch.randn(args.B, args.H, length, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            traffic = (k.numel() + v.numel()) * 3  # bf16 in, 1-byte out
            # a copy of as many bytes (read + write) as the kernel moves: what a plain copy
            # reaches at this size (launch and tail included), next to the 1 GB copy
            src_n = torch.empty(traffic // 2, dtype=torch.uint8, device="cuda")
            dst_n = torch.empty_like(src_n)
            same_tbs = traffic / (loop_ms(lambda: dst_n.copy_(src_n)) * 1e3) / 1e6
            del src_n, dst_n
            print(f"  D{d} L{length:6d}: a copy of the same {traffic / 1e6:.0f} MB: {same_tbs:.2f} TB/s = "
                  f"{same_tbs / copy_tbs:.0%} of the 1 GB copy", flush=True)
            first, times, diffs = None, {}, {}
            configs = [(s, h, w, r, x) for s in args.stash.split(",") for h in args.hints.split(",")
                       for w in args.wg.split(",") for r in args.ring.split(",") for x in args.diag.split(",")]
            for rep in range(args.repeat):  # configurations interleaved: drifts hit them all alike
                for config in configs:
                    pin(*config)
                    times.setdefault(config, []).append(
                        graph_ms(lambda: kern.quantize_qkv_cute(q, k, v, GRAN, True, with_q=False)) * 1e3)
                    if rep:
                        continue
                    outs = kern.quantize_qkv_cute(q, k, v, GRAN, True, with_q=False)
                    if first is None:
                        first = outs
                    else:
                        diffs[config] = [int((a.view(torch.uint8) != b.view(torch.uint8)).sum())
                                         if a.element_size() == 1 else int((a != b).sum())
                                         for a, b in zip(first, outs) if a is not None]
            for (stash, hints, wg, ring, diag), us_all in times.items():
                us = min(us_all)
                tbs = traffic / us / 1e6
                spread = (f" (median {statistics.median(us_all):.1f}, max {max(us_all):.1f} of {len(us_all)})"
                          if len(us_all) > 1 else "")
                diff = diffs.get((stash, hints, wg, ring, diag))
                same = f" differing elements vs the first (k8 ks km v8 vs): {diff}" if diff is not None else ""
                print(f"  D{d} L{length:6d} stash {stash:4s} hints {hints:9s} wg {wg:4s} ring {ring:4s}"
                      + (f" diag {diag:10s}" if diag != "none" else "") + ": "
                      f"{us:8.1f} us{spread} "
                      f"{tbs:5.2f} TB/s = {tbs / copy_tbs:4.0%} of copy{same}", flush=True)
            pin("auto", "default", "auto")


GRAN = QuantGranularity.PER_THREAD

if __name__ == "__main__":
    main()
