"""report.md and PNG plots from a results dict (the results.json schema).

Needs neither torch nor a GPU (``--report-only``); plots need matplotlib and
are skipped with a note when it is missing.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict

from sagecute.perf.ceilings import (
    compute_peak,
    datasheet_peaks,
    impl_precision,
    measured_compute_ceiling,
)
from sagecute.perf.shapes import row_bytes, row_flops

SCHEMA_VERSION = 1
ROW_KEYS = ("impl", "mode", "B", "H", "Lq", "Lk", "D", "causal", "dtype", "ms", "tops")
BASELINE = "fa4"
PLOT_DPI = 80
# MUFU ex2 results per SM per clock (sm80 / sm90 / sm100): softmax needs one
# exp per score, i.e. one per 4*D FLOPs, so exp throughput caps attention too.
MUFU_EX2_PER_SM_CLK = 16


# ------------------------------------------------------------------ helpers

def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def check_row(row: dict) -> None:
    """Raise ValueError unless ``row`` follows the results.json row schema."""
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise ValueError(f"row lacks {missing}: {row}")
    if row["mode"] not in ("e2e", "kernel"):
        raise ValueError(f"mode must be e2e or kernel: {row}")
    for k in ("B", "H", "Lq", "Lk", "D"):
        if not isinstance(row[k], int):
            raise ValueError(f"{k} must be an int: {row}")
    if not isinstance(row["causal"], bool):
        raise ValueError(f"causal must be a bool: {row}")
    for k in ("ms", "tops"):
        if not isinstance(row[k], (int, float)):
            raise ValueError(f"{k} must be a number: {row}")


def _fmt(x, nd=1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}"


def _sci(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _hkv(row) -> int:
    return row.get("Hkv") or row["H"]


def group_key(row) -> tuple:
    return (row["D"], row["causal"], row["B"], row["H"], _hkv(row))


def group_title(key) -> str:
    D, causal, B, H, Hkv = key
    gqa = f" Hkv={Hkv}" if Hkv != H else ""
    return f"D={D} {'causal' if causal else 'non-causal'} (B={B} H={H}{gqa})"


def column(row) -> str:
    return row["impl"] if row["mode"] == "e2e" else f"{row['impl']} [kernel]"


def _impl_order(names) -> list[str]:
    def rank(n):
        base = n.replace(" [kernel]", "")
        kernel = n.endswith("[kernel]")
        if base.startswith("sagecute"):
            return (0, base, kernel)
        order = ["fa4", "sdpa-cudnn", "sdpa-flash", "sage2", "sage1"]
        return (1, order.index(base) if base in order else 99, base, kernel)

    return sorted(set(names), key=rank)


def fa4_index(rows) -> dict:
    """(shape key) -> FA4 e2e TOPS."""
    out = {}
    for r in rows:
        if r["impl"] == BASELINE and r["mode"] == "e2e":
            out[(group_key(r), r["Lq"], r["Lk"])] = r["tops"]
    return out


def exp_roof_tops(device: dict, D: int) -> float | None:
    """TOPS at which MUFU exp throughput alone saturates (4*D FLOPs per exp)."""
    sms, mhz = device.get("sm_count"), device.get("max_sm_clock_mhz")
    if not sms or not mhz:
        return None
    return sms * mhz * 1e6 * MUFU_EX2_PER_SM_CLK * 4 * D / 1e12


def roofline_points(results: dict) -> list[dict]:
    """Every timed row placed against ceilings and the datasheet peak."""
    peaks = results.get("peaks") or datasheet_peaks(results.get("device", {}).get("name", ""))
    device = results.get("device", {})
    ceil = results.get("ceilings") or {}
    bw_meas = (ceil.get("copy") or {}).get("tbs")
    bw_sheet = peaks.get("hbm_tbs")
    pts = []
    for r in results.get("rows", []):
        flops, nbytes = row_flops(r), row_bytes(r)
        ai = flops / nbytes if nbytes else float("nan")
        prec = impl_precision(r["impl"])
        peak = compute_peak(peaks, prec)
        mceil = measured_compute_ceiling(ceil, prec)
        bw = bw_meas or bw_sheet
        mem_roof = ai * bw if bw else None  # TB/s * flop/B = TFLOPS
        exp_roof = exp_roof_tops(device, r["D"])
        cands = [x for x in (peak or mceil, mem_roof, exp_roof) if x]
        roof = min(cands) if cands else None
        pts.append(dict(
            impl=r["impl"], mode=r["mode"], label=column(r), key=group_key(r), Lq=r["Lq"], Lk=r["Lk"],
            ai=ai, tops=r["tops"], ms=r["ms"], precision=prec, peak=peak,
            pct_peak=(100 * r["tops"] / peak) if peak else None,
            ceiling=mceil, pct_ceiling=(100 * r["tops"] / mceil) if mceil else None, mem_roof=mem_roof,
            exp_roof=exp_roof,
            bound=("memory" if roof and roof == mem_roof else "exp" if roof and roof == exp_roof else "compute"),
            roof=roof,
        ))
    return pts


# ------------------------------------------------------------------ markdown

def _table(header, rows) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def perf_tables(rows: list[dict]) -> list[str]:
    """One table per (D, causal, B, H, Hkv): TOPS per impl, '(r x)' = ratio to FA4 e2e."""
    out = []
    fa4 = fa4_index(rows)
    groups: dict = OrderedDict()
    for r in sorted(rows, key=lambda r: (group_key(r), r["Lq"], r["Lk"])):
        groups.setdefault(group_key(r), []).append(r)
    for key, rs in groups.items():
        cols = _impl_order(column(r) for r in rs)
        by_l: dict = OrderedDict()
        for r in rs:
            by_l.setdefault((r["Lq"], r["Lk"]), {})[column(r)] = r
        body = []
        for (lq, lk), cells in by_l.items():
            base = fa4.get((key, lq, lk))
            line = [str(lq) if lq == lk else f"{lq}x{lk}"]
            for c in cols:
                r = cells.get(c)
                if r is None:
                    line.append("-")
                elif base and r["impl"] != BASELINE:
                    line.append(f"{r['tops']:.0f} ({r['tops'] / base:.2f}x)")
                else:
                    line.append(f"{r['tops']:.0f}")
            body.append(line)
        out += ["", f"### {group_title(key)}", ""]
        out += _table(["L"] + cols, body)
    if out:
        out = ["TOPS (dense-equivalent, FLOPs = 4·B·H·Lq·Lk·D, halved for causal); "
               f"`(r x)` = ratio to `{BASELINE}` at the same shape; `[kernel]` = pre-quantized inputs."] + out
    return out


def ceilings_table(results: dict) -> list[str]:
    ceil = results.get("ceilings") or {}
    peaks = results.get("peaks") or {}
    sheet = {"fp8_gemm": peaks.get("fp8"), "int8_gemm": peaks.get("int8"), "bf16_gemm": peaks.get("bf16"),
             "copy": peaks.get("hbm_tbs")}
    body = []
    for key in ("fp8_gemm", "int8_gemm", "bf16_gemm", "copy"):
        c = ceil.get(key)
        if c is None:
            continue
        unit = "TB/s" if key == "copy" else "TOPS"
        if "error" in c:
            body.append([key, c.get("op", ""), "error: " + c["error"][:120],
                         f"{_fmt(sheet[key], 2 if unit == 'TB/s' else 0)} {unit}" if sheet[key] else "-", "-"])
            continue
        val = c.get("tbs") if key == "copy" else c.get("tops")
        pct = f"{100 * val / sheet[key]:.0f}%" if val and sheet[key] else "-"
        shape = "x".join(str(s) for s in c.get("shape", [])) or f"{c.get('size_bytes', 0) / 2**30:.1f} GiB"
        body.append([key, f"{c.get('op', '')} {shape}", f"{_fmt(val, 2 if unit == 'TB/s' else 0)} {unit}",
                     f"{_fmt(sheet[key], 2 if unit == 'TB/s' else 0)} {unit}" if sheet[key] else "-", pct])
    if not body:
        return ["(no ceilings measured)"]
    return _table(["ceiling", "op", "measured", f"datasheet ({peaks.get('label', '?')})", "% of datasheet"], body)


def roofline_table(results: dict) -> list[str]:
    pts = roofline_points(results)
    if not pts:
        return []
    body = []
    for p in sorted(pts, key=lambda p: (p["key"], p["Lq"], p["label"])):
        body.append([p["label"], group_title(p["key"]).split(" (")[0], p["Lq"], _fmt(p["ai"], 0), _fmt(p["tops"], 0),
                     p["precision"], _fmt(p["peak"], 0), _fmt(p["pct_peak"], 0), _fmt(p["ceiling"], 0),
                     _fmt(p["pct_ceiling"], 0), _fmt(p["mem_roof"], 0), _fmt(p["exp_roof"], 0), p["bound"]])
    out = ["Arithmetic intensity (AI) from bytes really moved: bf16 q, k, v in + o out for e2e rows; "
           "int8 q, k + fp8 v in + bf16 o out for `[kernel]` rows. Peak for `int8+fp8` = harmonic mean of the "
           "INT8 and FP8 peaks (half the FLOPs each); memory roof = AI x measured copy bandwidth; exp roof = "
           f"SMs x max SM clock x {MUFU_EX2_PER_SM_CLK} ex2/clk x 4·D (one exp per score); "
           "bound = the lowest roof.", "",
           "<details><summary>all points</summary>", ""]
    out += _table(["impl", "shape", "L", "AI flop/B", "TOPS", "math", "peak", "% peak", "GEMM ceiling",
                   "% ceiling", "mem roof", "exp roof", "bound"], body)
    out += ["", "</details>"]
    best = {}
    for p in pts:
        if p["pct_peak"] is not None and (p["label"] not in best or p["pct_peak"] > best[p["label"]]["pct_peak"]):
            best[p["label"]] = p
    if best:
        out += ["", "Best point per implementation:", ""]
        out += _table(["impl", "TOPS", "% datasheet peak", "% GEMM ceiling", "at"],
                      [[b["label"], _fmt(b["tops"], 0), _fmt(b["pct_peak"], 0), _fmt(b["pct_ceiling"], 0),
                        f"{group_title(b['key']).split(' (')[0]} L={b['Lq']}"]
                       for b in (best[k] for k in _impl_order(best))])
    return out


def accuracy_tables(acc: list[dict]) -> list[str]:
    if not acc:
        return ["(no accuracy results)"]

    def shape(r):
        kv = f"/{r['Hkv']}" if r.get("Hkv") not in (None, r.get("H")) else ""
        return f"B{r.get('B')} H{r.get('H')}{kv} L{r.get('Lq')} D{r.get('D')}{' causal' if r.get('causal') else ''}"

    def rows_for(recs):
        body = []
        for r in recs:
            if "error" in r:
                body.append([r.get("case"), shape(r), r["impl"], r.get("ref", ""), "error", r["error"][:80], "", ""])
            else:
                body.append([r.get("case"), shape(r), r["impl"], r.get("ref", ""), f"{r['cos']:.6f}",
                             _sci(r["rel_l1"]), _sci(r["rmse"]), _sci(r["max_abs"])])
        return body

    header = ["case", "shape", "impl", "vs", "cos sim", "rel L1", "RMSE", "max abs"]
    exact = [r for r in acc if r.get("ref") == "exact"]
    offic = [r for r in acc if r.get("ref") not in (None, "exact")]
    out = ["Against fp32 exact attention (`sagecute.reference.attention_exact` when present):", ""]
    out += _table(header, rows_for(exact))
    if offic:
        out += ["", "sagecute against the official SageAttention output (same inputs and mode):", ""]
        out += _table(header, rows_for(offic))
    return out


def render_markdown(results: dict, plots: list[str]) -> str:
    dev = results.get("device", {})
    ver = results.get("versions", {})
    lines = [f"# sagecute benchmark: {dev.get('name', '?')}, {results.get('date', '?')}", ""]
    env = [["device", dev.get("name", "?")], ["capability", dev.get("capability", "-")],
           ["SMs / memory", f"{dev.get('sm_count', '-')} / {_fmt(dev.get('memory_gb'), 0)} GB"],
           ["driver", dev.get("driver", "-")]]
    env += [[k, v] for k, v in ver.items()]
    cfg = results.get("config", {})
    if cfg.get("argv") is not None:
        env.append(["command", "`python -m sagecute bench " + " ".join(cfg.get("argv", [])) + "`"])
    if cfg.get("timer"):
        bufs = cfg.get("bufs") or "auto (>= 3x L2, 2..8)"
        env.append(["timer", f"{cfg['timer']}, median after warm-up, {bufs} rotated input sets"])
    lines += _table(["", ""], env)
    peers = results.get("peers", {})
    if peers:
        lines += ["", "## Implementations", ""]
        lines += _table(["impl", "available", "version / reason"],
                        [[n, "yes" if p.get("available") else "no", p.get("version") or p.get("reason") or ""]
                         for n, p in peers.items()])
    lines += ["", "## Ceilings", ""] + ceilings_table(results)
    rows = results.get("rows", [])
    lines += ["", "## Throughput", ""]
    lines += perf_tables(rows) or ["(no timed rows)"]
    for p in plots:
        if p.startswith("tops"):
            lines += ["", f"![TOPS vs L]({p})"]
    lines += ["", "## Roofline", ""] + (roofline_table(results) or ["(no timed rows)"])
    for p in plots:
        if p.startswith("roofline"):
            lines += ["", f"![roofline]({p})"]
    lines += ["", "## Accuracy", ""] + accuracy_tables(results.get("accuracy", []))
    notes = results.get("notes", [])
    skips = results.get("skips", [])
    if notes or skips:
        lines += ["", "## Notes and skips", ""]
        lines += [f"- {n}" for n in notes[:80]]
        if len(notes) > 80:
            lines.append(f"- ... {len(notes) - 80} more notes in results.json")
        for s in skips[:80]:
            lines.append(f"- skipped {s.get('impl')} {s.get('mode', '')} {s.get('shape', '')}: {s.get('reason', '')}")
        if len(skips) > 80:
            lines.append(f"- ... {len(skips) - 80} more skips in results.json")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ plots

def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return None
    return plt


def _styles(labels):
    cmap = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#1f77b4", "#2ca02c", "#17becf", "#7f7f7f", "#bcbd22",
            "#e377c2"]
    bases = _impl_order(lab.replace(" [kernel]", "") for lab in labels)
    color = {b: cmap[i % len(cmap)] for i, b in enumerate(bases)}
    return {lab: dict(color=color[lab.replace(" [kernel]", "")], ls="--" if lab.endswith("[kernel]") else "-",
                      marker="s" if lab.endswith("[kernel]") else "o") for lab in labels}


def plot_tops(rows, path) -> bool:
    plt = _plt()
    if plt is None or not rows:
        return False
    groups: dict = OrderedDict()
    for r in sorted(rows, key=lambda r: (group_key(r), r["Lq"])):
        groups.setdefault(group_key(r), []).append(r)
    n = len(groups)
    ncol = 2 if n > 1 else 1
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.0 * ncol, 3.4 * nrow), squeeze=False)
    styles = _styles({column(r) for r in rows})
    for ax, (key, rs) in zip(axes.flat, groups.items()):
        series: dict = OrderedDict()
        for r in rs:
            series.setdefault(column(r), []).append((r["Lq"], r["tops"]))
        for lab in _impl_order(series):
            xs, ys = zip(*sorted(series[lab]))
            ax.plot(xs, ys, label=lab, lw=1.4, ms=3.5, **styles[lab])
        ax.set_xscale("log", base=2)
        ls = sorted({r["Lq"] for r in rs})
        ax.set_xticks(ls)
        ax.set_xticklabels([f"{x // 1024}k" if x % 1024 == 0 else str(x) for x in ls])
        ax.minorticks_off()
        ax.set_title(group_title(key), fontsize=9)
        ax.set_xlabel("L", fontsize=8)
        ax.set_ylabel("TOPS", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in list(axes.flat)[1:n]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(4, len(seen)), fontsize=7,
               frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(seen) / 4), 1, 1))
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return True


def plot_roofline(results, path) -> bool:
    plt = _plt()
    pts = roofline_points(results)
    if plt is None or not pts:
        return False
    peaks = results.get("peaks") or {}
    ceil = results.get("ceilings") or {}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ais = [p["ai"] for p in pts if p["ai"] and math.isfinite(p["ai"])]
    lo, hi = min(ais) / 4, max(ais) * 4
    bw = (ceil.get("copy") or {}).get("tbs") or peaks.get("hbm_tbs")
    roofs = []
    for label, val, ls in (("bf16 peak", peaks.get("bf16"), ":"),
                           ("fp8/int8 peak", peaks.get("fp8") or peaks.get("int8"), ":"),
                           ("bf16 GEMM", (ceil.get("bf16_gemm") or {}).get("tops"), "-."),
                           ("fp8 GEMM", (ceil.get("fp8_gemm") or {}).get("tops"), "-."),
                           ("int8 GEMM", (ceil.get("int8_gemm") or {}).get("tops"), "--")):
        if val:
            roofs.append(val)
            ax.axhline(val, color="0.45", ls=ls, lw=0.9)
            ax.text(hi, val, f" {label} {val:.0f}", fontsize=6.5, va="bottom", ha="right", color="0.3")
    for d in sorted({r["D"] for r in results.get("rows", [])}):
        er = exp_roof_tops(results.get("device", {}), d)
        if er:
            ax.axhline(er, color="tab:green", ls=":", lw=0.9)
            ax.text(lo, er, f" exp roof D={d} {er:.0f}", fontsize=6.5, va="bottom", color="tab:green")
    if bw:
        top = max(roofs) if roofs else max(p["tops"] for p in pts) * 2
        x_knee = top / bw
        xs = [lo, min(hi, x_knee)]
        ax.plot(xs, [x * bw for x in xs], color="0.45", lw=0.9)
        ax.text(lo, lo * bw, f" copy {bw:.2f} TB/s", fontsize=6.5, color="0.3", va="bottom")
    styles = _styles({p["label"] for p in pts})
    for lab in _impl_order({p["label"] for p in pts}):
        ps = [p for p in pts if p["label"] == lab]
        st = styles[lab]
        ax.scatter([p["ai"] for p in ps], [p["tops"] for p in ps], s=14, color=st["color"], marker=st["marker"],
                   label=lab, alpha=0.85)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi * 1.2)
    ax.set_xlabel("arithmetic intensity (flop / byte moved)", fontsize=8)
    ax.set_ylabel("TOPS", fontsize=8)
    ax.set_title(f"Roofline, {results.get('device', {}).get('name', '?')}", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25, which="both")
    ax.legend(fontsize=6.5, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return True


# ------------------------------------------------------------------ entry

def write_report(results: dict, out_dir: str, *, plots: bool = True) -> dict:
    """Write report.md (and PNGs) into ``out_dir``; returns {"report", "plots", "notes"}."""
    os.makedirs(out_dir, exist_ok=True)
    made, notes = [], []
    if plots:
        if _plt() is None:
            notes.append("matplotlib not installed: no plots")
        else:
            for name, fn in (("tops_vs_L.png", lambda p: plot_tops(results.get("rows", []), p)),
                             ("roofline.png", lambda p: plot_roofline(results, p))):
                try:
                    if fn(os.path.join(out_dir, name)):
                        made.append(name)
                except Exception as e:  # noqa: BLE001 - a plot never fails the report
                    notes.append(f"plot {name} failed: {type(e).__name__}: {e}")
    md = render_markdown(results, made)
    if notes:
        md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(md)
    return {"report": path, "plots": [os.path.join(out_dir, p) for p in made], "notes": notes}
