"""smooth_q LSE on Q-offset inputs (GPU diagnostic): where does the kernel's LSE leave
the emulation's? Per-row differences against the emulation, split by head, by row
position in the tile and by how peaked the row is, for smooth_q on and off and for
one KV block (no online rescaling) against several.

    python perf/smooth_q_lse_diag.py
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import sagecute  # noqa: E402
from sagecute import api, reference  # noqa: E402
from tolerances import make_qkv  # noqa: E402


def stats(name, diff):
    d = diff.flatten()
    print(f"  {name:34s} mean {d.mean():+.4f} std {d.std():.4f} min {d.min():+.4f} max {d.max():+.4f}", flush=True)


def main():
    print(torch.cuda.get_device_name())
    torch.manual_seed(0)
    for d, lk, smooth_k in ((128, 1000, True), (128, 128, True), (128, 1000, False)):
        q, k, v = make_qkv(1, 4, 1, 1000, lk, d, device="cuda", kind="outlier_q")
        for smooth_q in (True, False):
            o, lse = sagecute.sageattn(q, k, v, smooth_q=smooth_q, return_lse=True, backend="sm90", smooth_k=smooth_k)
            qi = api.prepare_inputs(q, k, v, smooth_q=smooth_q, smooth_k=smooth_k).quantized
            emu, lse_emu = reference.sageattn_reference(
                q, k, v, return_lse=True, smooth_q=smooth_q, smooth_k=smooth_k,
                q_mean=qi.q_mean if smooth_q else None, k_mean=qi.k_mean)
            _, lse_x = reference.attention_exact(q, k, v, return_lse=True)
            diff = (lse - lse_emu).float()
            print(f"D{d} Lk{lk} smooth_k={smooth_k} smooth_q={smooth_q}: |O - emu| max "
                  f"{(o.float() - emu.float()).abs().max():.3e}", flush=True)
            stats("LSE kernel - emu", diff)
            stats("LSE emu - exact", (lse_emu - lse_x).float())
            stats("LSE kernel - exact", (lse - lse_x).float())
            for h in range(diff.shape[1]):
                stats(f"  head {h}", diff[0, h])
            rows = torch.arange(diff.shape[-1], device=diff.device)
            for name, sel in (("rows % 128 < 64", rows % 128 < 64), ("rows % 128 >= 64", rows % 128 >= 64),
                              ("rows % 16 < 8", rows % 16 < 8), ("rows % 16 >= 8", rows % 16 >= 8)):
                stats(name, diff[..., sel])
            # peakedness: the top key's softmax weight (exact)
            qf, kf = q.float(), k.float().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            s = torch.matmul(qf, kf.transpose(-1, -2)) / d**0.5
            top = torch.softmax(s, dim=-1).amax(dim=-1)
            for lo, hi in ((0, 0.3), (0.3, 0.6), (0.6, 0.9), (0.9, 1.01)):
                sel = (top >= lo) & (top < hi)
                if sel.any():
                    stats(f"top weight in [{lo}, {hi}) n={int(sel.sum())}", diff[sel])
            # the emulation's P in fp32 instead of e4m3-rounded row sum
            _, lse_emu32 = reference.sageattn_reference(
                q, k, v, return_lse=True, smooth_q=smooth_q, smooth_k=smooth_k, rowsum_p8=False,
                q_mean=qi.q_mean if smooth_q else None, k_mean=qi.k_mean)
            stats("LSE kernel - emu(rowsum fp32)", (lse - lse_emu32).float())


if __name__ == "__main__":
    main()
