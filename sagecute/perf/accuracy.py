"""Accuracy: input generators, error metrics, the exact reference, ``--qkv`` loader.

Cases (HND, bf16 unless told):

* ``normal``: q, k, v ~ N(0, 1).
* ``outlier``: as normal, K plus a per-(batch, head, channel) bias of about
  8 sigma, the channel-outlier pattern smoothing K exists for.
* ``outlier_kv``: as ``outlier``, and V plus a per-(batch, head, channel) bias of
  about 1 sigma: K and V both carry channel biases, as SageAttention2 observed in
  real models. The output then no longer averages out to ~0, so FP8 P/V rounding
  errors are small relative to it (rel-L1 ~0.3% where ``outlier`` gives ~3.7%).
* ``peaked``: one Q row in 8 is a scaled copy of a visible K row, so that row's
  top logit stands ``PEAK_LOGIT`` above the rest and its softmax is sharp.

Metrics compare an output to fp32 exact attention over all elements: cosine
similarity, relative L1 (sum|a-b| / sum|b|), RMSE and max abs error.
"""

from __future__ import annotations

from typing import Callable

CASES = ("normal", "outlier", "outlier_kv", "peaked")
OUTLIER_SIGMA = 8.0
V_BIAS_SIGMA = 1.0
PEAK_LOGIT = 20.0
PEAK_EVERY = 8
REF_BLOCK_ELEMS = 1 << 27  # scores per reference block (512 MiB fp32)
REF_MAX_SCORES = 1 << 28  # above this, the project reference (all scores at once) is not used


# ------------------------------------------------------------------ inputs

def make_inputs(case: str, B: int, H: int, Hkv: int, L: int, D: int, *, causal: bool = False,
                Lk: int | None = None, dtype=None, device="cpu", seed: int = 0, sm_scale: float | None = None):
    """(q, k, v) for one accuracy case, HND."""
    import torch

    dtype = dtype or torch.bfloat16
    Lk = Lk or L
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g)
    k = torch.randn(B, Hkv, Lk, D, generator=g)
    v = torch.randn(B, Hkv, Lk, D, generator=g)
    if case == "normal":
        pass
    elif case in ("outlier", "outlier_kv"):
        k = k + OUTLIER_SIGMA * torch.randn(B, Hkv, 1, D, generator=g)
        if case == "outlier_kv":
            v = v + V_BIAS_SIGMA * torch.randn(B, Hkv, 1, D, generator=g)
    elif case == "peaked":
        scale = sm_scale if sm_scale is not None else D ** -0.5
        rows = torch.arange(0, L, PEAK_EVERY)
        hi = (torch.minimum(rows, torch.tensor(Lk - 1)) + 1) if causal else torch.full_like(rows, Lk)
        cols = (torch.rand(len(rows), generator=g) * hi).long().clamp_max(Lk - 1)
        kk = k.repeat_interleave(H // Hkv, dim=1)[:, :, cols, :]  # [B, H, n, D]
        norm2 = (kk * kk).sum(-1, keepdim=True).clamp_min(1e-6)
        q[:, :, rows, :] = kk * (PEAK_LOGIT / (scale * norm2))
    else:
        raise ValueError(f"unknown case {case!r}; expected one of {CASES}")
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


# ------------------------------------------------------------------ metrics

def metrics(out, ref) -> dict:
    """cos, rel_l1, rmse, max_abs (``sagecute.metrics``) plus the count of non-finite outputs."""
    import torch

    from sagecute.metrics import error_metrics

    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch {tuple(out.shape)} vs {tuple(ref.shape)}")
    m = error_metrics(out, ref)
    return {
        "cos": m.cosine,
        "rel_l1": m.rel_l1,
        "rmse": m.rmse,
        "max_abs": m.max_abs,
        "nonfinite": int((~torch.isfinite(out.detach())).sum().item()),
    }


# ------------------------------------------------------------------ reference

def exact_attention_torch(q, k, v, causal: bool = False, sm_scale: float | None = None):
    """fp32 softmax(q k^T * scale) v, head by head; causal is top-left (j <= i)."""
    import torch

    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    g = H // Hkv
    scale = sm_scale if sm_scale is not None else D ** -0.5
    out = torch.empty(B, H, Lq, v.shape[-1], dtype=torch.float32, device=q.device)
    rows = max(1, min(Lq, REF_BLOCK_ELEMS // max(Lk, 1)))
    cols = torch.arange(Lk, device=q.device)
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32 in the reference
    try:
        for b in range(B):
            for h in range(H):
                kf, vf = k[b, h // g].float(), v[b, h // g].float()
                for r0 in range(0, Lq, rows):
                    s = (q[b, h, r0:r0 + rows].float() @ kf.T) * scale
                    if causal:
                        qi = torch.arange(r0, r0 + s.shape[0], device=q.device)
                        s = s.masked_fill(cols[None, :] > qi[:, None], float("-inf"))
                    out[b, h, r0:r0 + rows] = torch.softmax(s, dim=-1) @ vf
    finally:
        torch.set_float32_matmul_precision(prev)
    return out


def reference_fn() -> tuple[Callable, str]:
    """The project's exact attention and its name (for the report)."""
    from sagecute.reference import attention_exact

    return attention_exact, "sagecute.reference.attention_exact"


def exact_attention(q, k, v, causal=False, sm_scale=None, fn: Callable | None = None):
    """fp32 exact attention via the project reference (``fn``, signature of
    ``sagecute.reference.attention_exact``); problems too big for its
    all-scores-at-once matmul go to the row-blocked ``exact_attention_torch``."""
    import torch

    fn = fn or reference_fn()[0]
    B, H, Lq = q.shape[:3]
    if fn is exact_attention_torch or B * H * Lq * k.shape[2] > REF_MAX_SCORES:
        return exact_attention_torch(q, k, v, causal, sm_scale)
    return fn(q, k, v, is_causal=causal, sm_scale=sm_scale, compute_dtype=torch.float32).float()


# ------------------------------------------------------------------ real tensors

def padded_head_dim(d: int) -> int:
    """Head dim a quantized kernel takes (``sagecute.reference.padded_head_dim``)."""
    from sagecute.reference import padded_head_dim as padded

    if d < 1:
        raise ValueError(f"head_dim must be positive, got {d}")
    try:
        return padded(d)
    except NotImplementedError as e:
        raise ValueError(str(e)) from None


def pad_head_dim(t, d: int):
    import torch.nn.functional as F

    extra = d - t.shape[-1]
    return F.pad(t, (0, extra)) if extra > 0 else t


_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def read_safetensors(path: str) -> dict:
    """Minimal safetensors reader (8-byte little-endian header size, JSON
    header, raw little-endian data), used when the package is not installed."""
    import json
    import struct

    import torch

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        dtype = getattr(torch, _ST_DTYPES[meta["dtype"]])
        begin, end = meta["data_offsets"]
        buf = bytearray(data[begin:end])
        t = torch.frombuffer(buf, dtype=dtype) if end > begin else torch.empty(0, dtype=dtype)
        out[key] = t.reshape(meta["shape"]).clone()
    return out


def load_qkv(path: str) -> tuple[list[tuple[str, object, object, object]], list[str]]:
    """Tensors from a safetensors file with keys ``<name>.q``, ``<name>.k``,
    ``<name>.v`` (HND, [B,H,L,D] or [H,L,D]). Returns ([(name, q, k, v)], notes);
    incomplete or unsupported entries become notes."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = read_safetensors
    tensors = load_file(path)
    groups: dict[str, dict] = {}
    for key, t in tensors.items():
        name, _, part = key.rpartition(".")
        if part in ("q", "k", "v") and name:
            groups.setdefault(name, {})[part] = t
    out, notes = [], []
    for name in sorted(groups):
        g = groups[name]
        if set(g) != {"q", "k", "v"}:
            notes.append(f"qkv {name}: missing {sorted({'q', 'k', 'v'} - set(g))}, skipped")
            continue
        q, k, v = (g[p].unsqueeze(0) if g[p].dim() == 3 else g[p] for p in ("q", "k", "v"))
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            notes.append(f"qkv {name}: expected 3-D or 4-D HND tensors, got {tuple(g['q'].shape)}, skipped")
            continue
        if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1] or q.shape[1] % k.shape[1]:
            notes.append(f"qkv {name}: inconsistent shapes q{tuple(q.shape)} k{tuple(k.shape)} "
                         f"v{tuple(v.shape)}, skipped")
            continue
        if q.shape[-1] > 128:
            notes.append(f"qkv {name}: head_dim {q.shape[-1]} > 128, skipped")
            continue
        out.append((name, q, k, v))
    if not groups:
        notes.append(f"qkv {path}: no '<name>.q/.k/.v' keys")
    return out, notes


# ------------------------------------------------------------------ running

def evaluate(adapters, q, k, v, *, causal: bool, sm_scale: float | None, info: dict,
             official: dict | None = None, d_orig: int | None = None, ref_fn: Callable | None = None,
             log: Callable[[str], None] | None = None,
             on_step: Callable[[str], None] | None = None) -> list[dict]:
    """Run every adapter on (q, k, v) and compare to the exact reference.

    ``official`` maps a sagecute adapter name to an official SageAttention
    adapter; both outputs are then also compared with each other. ``d_orig``:
    inputs were zero-padded on the head dim; outputs and the reference use the
    first ``d_orig`` channels. ``on_step(name)`` is called before each
    implementation runs (a heartbeat). Returns result records (errors included).
    """
    import torch

    d = d_orig or q.shape[-1]
    qr, kr, vr = (t[..., :d] for t in (q, k, v))
    ref = exact_attention(qr, kr, vr, causal, sm_scale, ref_fn)
    recs: list[dict] = []
    outs: dict[str, object] = {}

    def run(a):
        fn = a.prepare(q, k, v, causal, sm_scale)
        o = a.output_hnd(fn())[..., :d].float()
        torch.cuda.synchronize() if o.is_cuda else None
        return o

    todo = list(adapters)
    for off in (official or {}).values():
        if off is not None and off.name not in {a.name for a in todo}:
            todo.append(off)
    for a in todo:
        ok, why = a.is_available()
        if not ok:
            continue
        if on_step:
            on_step(a.name)
        rec = dict(info, impl=a.name, ref="exact")
        try:
            o = run(a)
            rec.update(metrics(o, ref))
            outs[a.name] = o
        except Exception as e:  # noqa: BLE001 - a peer raising is a note
            rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            if log:
                log(f"accuracy {a.name} {info.get('case')}: {rec['error']}")
        recs.append(rec)
    for name, off in (official or {}).items():
        if off is None or name not in outs or off.name not in outs:
            continue
        rec = dict(info, impl=name, ref=off.name)
        rec.update(metrics(outs[name], outs[off.name]))
        recs.append(rec)
    return recs
