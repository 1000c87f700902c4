"""Quick sm90 kernel benchmark (GPU): ``python -m sagecute.kernels.sm90.bench``.

Times only the attention kernel (inputs pre-quantized) with CUDA events and
reports TOPS = 4 * B * H * Lq * Lk * D (/2 causal) / time.
"""

from __future__ import annotations

import argparse


def bench_one(b, h, l, d, causal, gran, pv, iters=20, config=None):
    import torch

    from sagecute import reference as ref
    from sagecute.kernels.sm90.launch import attn_fwd_sm90
    from sagecute.quant_layout import SM90_GEOMETRY

    dev = "cuda"
    q = torch.randn(b, h, l, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(b, h, l, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn(b, h, l, d, device=dev, dtype=torch.bfloat16)
    km = ref.k_mean(k)
    q8, qs = ref.quantize_qk_int8(q, gran, SM90_GEOMETRY, is_k=False)
    k8, ks = ref.quantize_qk_int8(k, gran, SM90_GEOMETRY, is_k=True, mean=km)
    v8, vs = ref.quantize_v_fp8(v, SM90_GEOMETRY)
    o = torch.empty_like(q)

    def run():
        attn_fwd_sm90(q8, qs, k8, ks, v8, vs, o, None, sm_scale=d**-0.5, is_causal=causal,
                      granularity=gran, pv_accum=pv, config=config)

    run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        run()
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / iters
    flops = 4 * b * h * l * l * d / (2 if causal else 1)
    return ms, flops / ms / 1e9


def bench_fa4(b, h, l, d, causal, iters=20):
    import torch
    from flash_attn.cute import flash_attn_func

    q, k, v = (torch.randn(b, l, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flash_attn_func(q, k, v, causal=causal)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        flash_attn_func(q, k, v, causal=causal)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / iters
    return ms, 4 * b * h * l * l * d / (2 if causal else 1) / ms / 1e9


def main():
    from sagecute.quant_layout import PvAccum, QuantGranularity

    p = argparse.ArgumentParser()
    p.add_argument("--seqlens", default="1024,8192")
    p.add_argument("--configs", default="default,baseline")
    p.add_argument("--fa4", action="store_true", help="also time FlashAttention-4 bf16 (d128)")
    args = p.parse_args()
    if args.fa4:
        for l in [int(x) for x in args.seqlens.split(",")]:
            for causal in (False, True):
                try:
                    ms, tops = bench_fa4(max(1, 32768 // l), 16, l, 128, causal)
                    print(f"fa4-bf16   b{max(1, 32768 // l)} h16 L{l} d128 {'causal' if causal else 'full  '}: "
                          f"{ms:8.3f} ms {tops:7.1f} TFLOPS", flush=True)
                except Exception as e:  # noqa: BLE001
                    print(f"fa4 failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
    from sagecute.kernels.sm90.attn_fwd import AttnFwdConfigSm90

    configs = {"default": AttnFwdConfigSm90(), "no_overlap": AttnFwdConfigSm90(intra_wg_overlap=False),
               "stages3": AttnFwdConfigSm90(num_stages=3),
               "no_pingpong": AttnFwdConfigSm90(wg_pingpong=False),
               "magic": AttnFwdConfigSm90(magic_i2f=True),
               "no_tree": AttnFwdConfigSm90(tree_reduce=False),
               "baseline": AttnFwdConfigSm90(wg_pingpong=False, fused_scale_exp=False, magic_i2f=False,
                                             tree_reduce=False, early_q_release=False, vec_o_store=False),
               "no_early_q": AttnFwdConfigSm90(early_q_release=False)}
    for l in [int(x) for x in args.seqlens.split(",")]:
        b, h = max(1, 32768 // l), 16
        for d in (128, 64):
            for causal in (False, True):
                for name in filter(None, args.configs.split(",")):
                    ms, tops = bench_one(b, h, l, d, causal, QuantGranularity.PER_THREAD, PvAccum.FP32_FP32,
                                         config=configs[name])
                    print(f"sm90 {name:10s} b{b} h{h} L{l} d{d} {'causal' if causal else 'full  '}: "
                          f"{ms:8.3f} ms {tops:7.1f} TOPS", flush=True)


if __name__ == "__main__":
    main()
