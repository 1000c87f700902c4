"""Smoke test of the sm90 kernel with step timings and a hang watchdog (GPU).

    python -m sagecute.kernels.sm90.smoke --lq 128 --lk 128 [--no-setmaxnreg] [--no-persistent]

Prints each step with a timestamp; a kernel that does not finish within
``--hang-s`` seconds is reported as HANG and the process exits with code 3.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import time

T0 = time.time()


def log(msg):
    print(f"[smoke {time.time() - T0:7.2f}s] {msg}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--b", type=int, default=1)
    p.add_argument("--hq", type=int, default=2)
    p.add_argument("--hkv", type=int, default=2)
    p.add_argument("--lq", type=int, default=128)
    p.add_argument("--lk", type=int, default=128)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--gran", default="per_thread")
    p.add_argument("--pv", default="fp32+fp32")
    p.add_argument("--no-setmaxnreg", action="store_true")
    p.add_argument("--no-persistent", action="store_true")
    p.add_argument("--no-overlap", action="store_true")
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--cfg", default="", help="extra config fields, e.g. wg_pingpong=False,num_stages=3")
    p.add_argument("--hang-s", type=float, default=20.0)
    p.add_argument("--py-timeout", type=float, default=150.0)
    args = p.parse_args()
    faulthandler.dump_traceback_later(args.py_timeout, exit=True)

    import torch

    torch.cuda.init()
    log(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    import cutlass  # noqa: F401  (import time is logged)

    log("imported cutlass")
    from sagecute import reference as ref
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90
    from sagecute.kernels.sm90.launch import attn_fwd_sm90
    from sagecute.metrics import error_metrics
    from sagecute.quant_layout import SM90_GEOMETRY, PvAccum, QuantGranularity

    log("imported sagecute")
    gran, pv = QuantGranularity(args.gran), PvAccum(args.pv)
    extra = {}
    for kv in filter(None, args.cfg.split(",")):
        key, val = kv.split("=")
        extra[key] = {"True": True, "False": False}.get(val, val if not val.isdigit() else int(val))
    config = AttnFwdConfigSm90(
        num_stages=args.stages,
        intra_wg_overlap=not args.no_overlap,
        persistent=not args.no_persistent,
        use_setmaxnreg=not args.no_setmaxnreg,
        **extra,
    )
    b, hq, hkv, lq, lk, d = args.b, args.hq, args.hkv, args.lq, args.lk, args.d
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, hq, lq, d, generator=g).cuda().bfloat16()
    k = (torch.randn(b, hkv, lk, d, generator=g) + 4 * torch.randn(b, hkv, 1, d, generator=g)).cuda().bfloat16()
    v = torch.randn(b, hkv, lk, d, generator=g).cuda().bfloat16()
    km = ref.k_mean(k)
    q8, qs = ref.quantize_qk_int8(q, gran, SM90_GEOMETRY, is_k=False)
    k8, ks = ref.quantize_qk_int8(k, gran, SM90_GEOMETRY, is_k=True, mean=km)
    v8, vs = ref.quantize_v_fp8(v, SM90_GEOMETRY)
    o = torch.full_like(q, float("nan"))
    lse = torch.full((b, hq, lq), float("nan"), device="cuda")
    torch.cuda.synchronize()
    log(f"quantized; config {config}")
    sm_scale = d**-0.5
    t = time.time()
    attn_fwd_sm90(q8, qs, k8, ks, v8, vs, o, lse, sm_scale=sm_scale, is_causal=args.causal,
                  granularity=gran, pv_accum=pv, config=config)
    log(f"compiled + launched in {time.time() - t:.2f}s")
    ev = torch.cuda.Event()
    ev.record()
    t = time.time()
    while not ev.query():
        if time.time() - t > args.hang_s:
            log("HANG: kernel did not finish")
            sys.stdout.flush()
            os._exit(3)
        time.sleep(0.01)
    log(f"kernel done after {time.time() - t:.3f}s wait")
    torch.cuda.synchronize()
    nan = torch.isnan(o).float().mean().item()
    o_ref, lse_ref = ref.sageattn_reference(q, k, v, is_causal=args.causal, sm_scale=sm_scale, return_lse=True,
                                            qk_quant_gran=gran.value, pv_accum_dtype=pv.value, arch="sm90")
    o_ex = ref.attention_exact(q, k, v, is_causal=args.causal, sm_scale=sm_scale)
    kmx = km.float().repeat_interleave(hq // hkv, dim=1)
    lse_full = lse + sm_scale * (q.float() * kmx).sum(-1)
    log(f"NaN fraction {nan:.4f}")
    log(f"kernel-vs-ref   {error_metrics(o.nan_to_num(), o_ref)}")
    log(f"ref-vs-exact    {error_metrics(o_ref, o_ex)}")
    log(f"kernel-vs-exact {error_metrics(o.nan_to_num(), o_ex)}")
    log(f"lse max err {(lse_full - lse_ref).abs().nan_to_num(1e9).max().item():.3e}")
    if nan > 0 or error_metrics(o.nan_to_num(), o_ref).rel_l1 > 1e-2:
        # where are the errors? per 16-row / 8-col block means of |diff|
        diff = (o.float().nan_to_num(1e3) - o_ref.float()).abs()[0, 0]
        rows = diff.mean(dim=1)
        log("row err (first 64): " + " ".join(f"{x:.2f}" for x in rows[:64].tolist()))
        cols = diff.mean(dim=0)
        log("col err: " + " ".join(f"{x:.2f}" for x in cols[:128].tolist()))
        log(f"o[0,0,0,:8] {o[0, 0, 0, :8].tolist()}")
        log(f"ref[0,0,0,:8] {o_ref[0, 0, 0, :8].tolist()}")
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main()
