"""Quick sm90 kernel benchmark (GPU): ``python -m sagecute.kernels.sm90.bench``.

Times only the attention kernel (inputs pre-quantized) with CUDA events and
reports TOPS = 4 * B * H * Lq * Lk * D (/2 causal) / time.
"""

from __future__ import annotations

import argparse
import dataclasses

from sagecute.kernels.sm90.attn_fwd import THREE_CONSUMER_WG


def make_runner(b, h, lq, lk, d, causal, gran, pv, config=None, fused_q=False):
    """A zero-argument call of the sm90 kernel on fresh random inputs, K/V quantized
    once (V at the scale_max ``pv`` needs); ``fused_q``: bf16 Q quantized in the kernel
    (the API's path), else int8 Q from the reference quantizer."""
    import torch

    from sagecute import reference as ref
    from sagecute.kernels.sm90.launch import attn_fwd_sm90
    from sagecute.quant_layout import FP8_E4M3_MAX, FP8_SCALE_MAX_FP16_ACCUM, SM90_GEOMETRY, PvAccum

    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for n in (lq, lk, lk))
    k8, ks = ref.quantize_qk_int8(k, gran, SM90_GEOMETRY, is_k=True, mean=ref.k_mean(k))
    v_max = FP8_SCALE_MAX_FP16_ACCUM if pv is PvAccum.FP32_FP16 else FP8_E4M3_MAX
    v8, vs = ref.quantize_v_fp8(v, SM90_GEOMETRY, scale_max=v_max)
    q8, qs = (q, None) if fused_q else ref.quantize_qk_int8(q, gran, SM90_GEOMETRY, is_k=False)
    o = torch.empty_like(q)

    def run():
        attn_fwd_sm90(q8, qs, k8, ks, v8, vs, o, None, sm_scale=d**-0.5, is_causal=causal,
                      granularity=gran, pv_accum=pv, config=config)

    return run


def tops(b, h, lq, lk, d, causal, ms) -> float:
    return 4 * b * h * lq * lk * d / (2 if causal else 1) / ms / 1e9


def bench_one(b, h, l, d, causal, gran, pv, iters=20, config=None):
    from sagecute.perf.timing import loop_ms

    ms = loop_ms(make_runner(b, h, l, l, d, causal, gran, pv, config), iters, rounds=1)
    return ms, tops(b, h, l, l, d, causal, ms)


def bench_fa4(b, h, l, d, causal, iters=20):
    import torch
    from flash_attn.cute import flash_attn_func

    from sagecute.perf.timing import loop_ms

    q, k, v = (torch.randn(b, l, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ms = loop_ms(lambda: flash_attn_func(q, k, v, causal=causal), iters, rounds=1)
    return ms, tops(b, h, l, l, d, causal, ms)


CONFIG_VARIANTS = {
    # name: (AttnFwdConfigSm90 kwargs, pv_accum override or None)
    "default": ({}, None),
    "pv32": ({}, "fp32"),  # the fp32 PV accumulation user mode (frees acc_O_tmp's 64 registers)
    "pv16": ({}, "fp32+fp16"),  # Note [fp32+fp16 on sm90]
    "no_l2_sections": (dict(l2_sections=False), None),
    "no_tma_o_store": (dict(tma_o_store=False), None),
    "no_overlap": (dict(intra_wg_overlap=False), None),
    "stages3": (dict(num_stages=3), None),
    "no_pingpong": (dict(wg_pingpong=False), None),
    "pv32_no_pingpong": (dict(wg_pingpong=False), "fp32"),
    "pv32_skip": (dict(skip_unit_rescale=True), "fp32"),
    "pv32_noskip": (dict(skip_unit_rescale=False), "fp32"),
    "unroll1": (dict(mainloop_unroll=1), None),
    "unroll2": (dict(mainloop_unroll=2), None),
    "p8": (dict(reduce_partials=8), None),
    "p16": (dict(reduce_partials=16), None),
    "magic": (dict(magic_i2f=True), None),
    "no_tree": (dict(tree_reduce=False), None),
    "baseline": (dict(wg_pingpong=False, fused_scale_exp=False, magic_i2f=False, tree_reduce=False,
                      early_q_release=False, vec_o_store=False, tma_o_store=False), None),
    "no_early_q": (dict(early_q_release=False), None),
    "q_producer": (dict(q_quant_in_producer=True), None),
    # Note [The first Q tile in the consumers] off: the producer warps quantize every tile
    "q_producer_all": (dict(q_quant_in_producer=True, first_q_in_consumers=False), None),
    # the default before int_row_max and reduce_partials 4
    "old": (dict(int_row_max=False, reduce_partials=8), None),
    "no_int_max": (dict(int_row_max=False), None),
    "fence": (dict(pv_wait_fence=True), None),
    "early_promote": (dict(early_promote=True), None),
    "poly4": (dict(exp2_poly_every=4), None),
    "poly8": (dict(exp2_poly_every=8), None),
    "poly3": (dict(exp2_poly_every=3), None),
    "poly16": (dict(exp2_poly_every=16), None),
    "rowsum_fp32": (dict(rowsum_mma=False), None),  # Note [Row sum on the tensor core] off
    # Note [Three consumer warpgroups]: what tuned() picks for d64 non-causal per_thread
    "three_wg": (THREE_CONSUMER_WG, None),
    "three_wg_no_pingpong": (dict(THREE_CONSUMER_WG, wg_pingpong=False), None),
    "three_wg_q_producer": (dict(THREE_CONSUMER_WG, q_quant_in_producer=True), None),
    "three_wg_q_producer_all": (dict(THREE_CONSUMER_WG, q_quant_in_producer=True, first_q_in_consumers=False), None),
    "three_wg_mufu": (dict(THREE_CONSUMER_WG, exp2_poly_every=0), None),  # every exp2 on MUFU
    "three_wg_poly8": (dict(THREE_CONSUMER_WG, exp2_poly_every=8), None),
    "three_wg_poly4": (dict(THREE_CONSUMER_WG, exp2_poly_every=4), None),
    "three_wg_poly6": (dict(THREE_CONSUMER_WG, exp2_poly_every=6), None),
    "three_wg_poly10": (dict(THREE_CONSUMER_WG, exp2_poly_every=10), None),
    "three_wg_poly32": (dict(THREE_CONSUMER_WG, exp2_poly_every=32), None),
    "pf": (dict(promote_before_softmax=True), None),
}


def _variant(name, d):
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90
    from sagecute.quant_layout import PvAccum

    kw, pv = CONFIG_VARIANTS[name]
    base = AttnFwdConfigSm90.default(d)
    cfg = dataclasses.replace(base, **kw)
    return cfg, (PvAccum(pv) if pv else PvAccum.FP32_FP32)


def verify(names):
    """Run tests/test_sm90_gpu.py's CASES with each named variant (pass/fail per case)."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
    from tests import test_sm90_gpu as t

    for name in names:
        npass = nfail = 0
        for case in t.CASES:
            cfg, pv = _variant(name, case[0])
            if CONFIG_VARIANTS[name][1] is None:
                pv = case[10]  # keep the case's own PV mode
            case = case[:10] + (pv,)
            try:
                t._check(t.run_case(*case, config=cfg))
                npass += 1
            except Exception as e:  # noqa: BLE001
                nfail += 1
                print(f"verify {name} FAIL {t._ids(case)}: {type(e).__name__}: {str(e)[:300]}", flush=True)
        print(f"verify {name}: {npass} passed, {nfail} failed", flush=True)


def main():
    from sagecute.quant_layout import QuantGranularity

    p = argparse.ArgumentParser()
    p.add_argument("--seqlens", default="1024,8192")
    p.add_argument("--dims", default="128,64")
    p.add_argument("--modes", default="full,causal")
    p.add_argument("--configs", default="default,baseline",
                   help="comma list of " + ",".join(CONFIG_VARIANTS) + "; timed side by side; "
                   "NAME/full, NAME/d64 etc. restrict a variant to non-causal / one head_dim")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--verify", default="", help="comma list of variants to check against the reference")
    p.add_argument("--fa4", action="store_true", help="also time FlashAttention-4 bf16 (d128)")
    args = p.parse_args()
    if args.verify:
        verify([n for n in args.verify.split(",") if n])
    if args.fa4:
        for l in [int(x) for x in args.seqlens.split(",")]:
            for causal in (False, True):
                try:
                    ms, tops = bench_fa4(max(1, 32768 // l), 16, l, 128, causal)
                    print(f"fa4-bf16   b{max(1, 32768 // l)} h16 L{l} d128 {'causal' if causal else 'full  '}: "
                          f"{ms:8.3f} ms {tops:7.1f} TFLOPS", flush=True)
                except Exception as e:  # noqa: BLE001
                    print(f"fa4 failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
    names = [n for n in args.configs.split(",") if n]
    for l in [int(x) for x in args.seqlens.split(",") if x]:
        b, h = max(1, 32768 // l), 16
        for d in [int(x) for x in args.dims.split(",") if x]:
            for mode in [m for m in args.modes.split(",") if m]:
                causal = mode == "causal"
                ref_tops = None
                for spec in names:
                    name, *only = spec.split("/")
                    if any(o not in (mode, f"d{d}", f"L{l}") for o in only):
                        continue
                    cfg, pv = _variant(name, d)
                    try:
                        ms, tops = bench_one(b, h, l, d, causal, QuantGranularity.PER_THREAD, pv,
                                             iters=args.iters, config=cfg)
                    except Exception as e:  # noqa: BLE001
                        print(f"sm90 {name:16s} b{b} h{h} L{l} d{d} {mode}: failed {type(e).__name__}: "
                              f"{str(e)[:200]}", flush=True)
                        continue
                    ref_tops = ref_tops or tops
                    print(f"sm90 {name:16s} b{b} h{h} L{l} d{d} {'causal' if causal else 'full  '}: "
                          f"{ms:8.3f} ms {tops:7.1f} TOPS  x{tops / ref_tops:5.3f}", flush=True)


if __name__ == "__main__":
    main()
