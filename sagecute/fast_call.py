"""The API's per-signature fast path for the common sm90 call.

Note [Fast call]
----------------
A short call's host time could be as long as its GPU time: B4 H32 L1k, 96 us per call
at head_dim 64 (GPU 97 us) and 112 us at 128 (GPU 142 us) on one H200 machine, 54-55 us
on another (perf/results/2026-12-04_h200_fastcall/: host_first_machine.txt,
host_d*.txt), spread over ~120 small Python steps through the API, the preprocessing
and the sm90 launch (plan lookups, each layer's key, config, stream and path checks).
Every one of them depends only on the call's signature, which the API's plan already
keys on (Note [Plan caches]). So a ``FastCall``, made once per API plan where the call
is one the two TVM-FFI kernels serve directly, keeps what those layers decided (the
compiled K/V preprocessing, the attention kernel, its grid cap and scalars), and each
call does only what depends on more than the signature (23-24 us a call on the second
machine):

  * the inputs' base alignment (16 bytes, the kernels' vector loads and TMA) and
    whether a CUDA graph is being captured; either sends the call down the normal path;
  * the current stream, which picks the scratch outputs (``kernels.qkv_scratch``,
    the same buffers the normal path reuses: Note [Preprocess host cost]);
  * the output tensor, and the two launches, with the same arguments as the normal
    path's (``perf/host_overhead.py``; tests/test_api_gpu.py compares the two bit for bit).

Served: backend sm90, no mask, no LSE, no ``smooth_q``, head_dim 64 or 128 (no
padding), HND or NHD, 16-byte multiple strides, the fused K/V kernel
(``fused_qkv_supported``) and both launch paths on TVM-FFI. Anything else, and any
exception from a launch (the normal path then retries and falls back as it does, Note
[Two launch paths]), takes the normal path; a plan that cannot be served remembers it.
``SAGECUTE_FAST_CALL=0`` (read at import) or ``ENABLED = False`` turns it off.
"""

from __future__ import annotations

import os

import torch

from . import reference
from .quant_layout import FUSED_Q_GRANULARITIES, PvAccum, v_scale_max

ENABLED = os.environ.get("SAGECUTE_FAST_CALL", "1") != "0"

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


class FastCall:
    """One API signature's launches, decided once (Note [Fast call])."""

    __slots__ = ("qkv_key", "qkv", "scratch", "attn", "max_ctas", "scale_max", "scale_log2", "nhd", "out_shape",
                 "dtype", "device", "device_index")

    def __call__(self, q, k, v):
        """``o`` of the call, or None where the normal path must serve it."""
        if (q.data_ptr() | k.data_ptr() | v.data_ptr()) % 16 or torch.cuda.is_current_stream_capturing():
            return None
        if _raw_stream is not None:
            stream = _raw_stream(self.device_index)
        else:
            stream = torch.cuda.current_stream(self.device).cuda_stream
        outs = self.scratch(self.qkv_key, stream)
        if outs is None:
            return None  # the normal path makes them
        _, _, k8, ks, km, v8, vs, vm, _ = outs  # no delta_s: no smooth_q
        if self.nhd:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        v8 = v8.view(torch.uint8)
        self.qkv(None, k, v, None, None, k8, ks, km, v8, vs, vm, None, None, self.scale_max)
        out = torch.empty(self.out_shape, dtype=self.dtype, device=self.device)
        self.attn(q, None, k8, ks, v8, vs, out.transpose(1, 2) if self.nhd else out, None, vm, None, None,
                  self.scale_log2, self.max_ctas)
        return out


def build(q, k, v, layout: str, is_causal: bool, sm_scale: float, gran, pv_accum: PvAccum, smooth_k: bool,
          smooth_v: bool, config_after_preprocess):
    """The ``FastCall`` of this signature, or None if it is not one Note [Fast call]
    serves. Compiles what the normal path would (the first call of a signature)."""
    if not (q.is_cuda and layout in ("HND", "NHD") and q.shape[-1] in (64, 128) and gran in FUSED_Q_GRANULARITIES):
        return None
    from .kernels.sm90 import launch
    from .preprocess import kernels as kern

    if kern.launch_path()[0] != "tvm-ffi" or launch.launch_path()[0] != "tvm-ffi":
        return None
    qh, kh, vh = (reference.to_hnd(t, layout) for t in (q, k, v))
    if not kern.fused_qkv_supported(qh, kh, vh, kern.SM90_GEOMETRY):
        return None
    key, plan = kern.qkv_call_plan(qh, kh, vh, gran, smooth_k, kern.SM90_GEOMETRY, False, smooth_v)
    if plan.compile_args is None or not plan.aligned_strides:  # q's strides too: TMA reads it as is
        return None
    fast = FastCall()
    fast.qkv_key, fast.qkv, fast.scratch = key, kern.qkv_compiled(plan), kern.qkv_scratch
    # the attention plan of the normal path's arguments: scratch-shaped K/V, a dense o
    _, _, k8, ks, km, v8, vs, vm, _ = kern._qkv_outputs(plan, key, q.device, True)  # this stream's scratch
    b, hq, lq, d = qh.shape
    out = torch.empty((b, lq, hq, d) if layout == "NHD" else (b, hq, lq, d), dtype=q.dtype, device=q.device)
    o_hnd = out.transpose(1, 2) if layout == "NHD" else out
    config = config_after_preprocess(d, is_causal, gran, lq, False)
    attn = launch.launch_plan((qh, None, k8, ks, v8, vs, o_hnd, None, vm, None, None), is_causal, gran, pv_accum,
                              config)
    if attn.key is None:
        return None
    fast.attn, fast.max_ctas = launch.plan_ffi(attn), attn.max_ctas
    fast.scale_max = v_scale_max(pv_accum)
    fast.scale_log2 = float(sm_scale * launch.LOG2E)
    fast.nhd = layout == "NHD"
    fast.out_shape, fast.dtype, fast.device, fast.device_index = tuple(out.shape), q.dtype, q.device, q.device.index
    return fast
