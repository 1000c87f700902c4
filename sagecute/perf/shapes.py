"""Shape grid, FLOP counting and bytes moved (no torch).

A point of the grid is one attention problem in HND order: q ``[B, H, Lq, D]``,
k/v ``[B, Hkv, Lk, D]`` (GQA when ``Hkv < H``).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

DEFAULT_B = 4
DEFAULT_H = 32
DEFAULT_L = (1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_D = (64, 128)
DEFAULT_CAUSAL = (False, True)

QUICK_B = 2
QUICK_L = (4096,)
QUICK_D = (128,)
QUICK_CAUSAL = (False, True)


@dataclass(frozen=True)
class Shape:
    B: int
    H: int
    Lq: int
    Lk: int
    D: int
    causal: bool
    Hkv: int | None = None  # None: same as H (no GQA)

    def __post_init__(self) -> None:
        for name in ("B", "H", "Lq", "Lk", "D"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 in {self}")
        if self.H % self.hkv:
            raise ValueError(f"H={self.H} must be a multiple of Hkv={self.hkv}")

    @property
    def hkv(self) -> int:
        return self.H if self.Hkv is None else self.Hkv

    @property
    def gqa(self) -> int:
        return self.H // self.hkv

    def label(self) -> str:
        kv = f"/{self.hkv}" if self.hkv != self.H else ""
        lk = f"x{self.Lk}" if self.Lk != self.Lq else ""
        return f"B{self.B} H{self.H}{kv} L{self.Lq}{lk} D{self.D}{' causal' if self.causal else ''}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["Hkv"] = self.hkv
        return d


def attention_flops(B: int, H: int, Lq: int, Lk: int, D: int, causal: bool) -> float:
    """4*B*H*Lq*Lk*D (QK^T and PV, 2 flops per MAC), halved for causal."""
    f = 4.0 * B * H * Lq * Lk * D
    return f / 2 if causal else f


def shape_flops(s: Shape) -> float:
    return attention_flops(s.B, s.H, s.Lq, s.Lk, s.D, s.causal)


def tops(flops: float, ms: float) -> float:
    """Tera-operations per second for ``flops`` done in ``ms`` milliseconds."""
    if not ms or ms <= 0:
        return float("nan")
    return flops / (ms * 1e-3) / 1e12


def bytes_e2e(B: int, H: int, Hkv: int, Lq: int, Lk: int, D: int, elem: int = 2) -> float:
    """Bytes an end-to-end call must move at least: q, k, v in and o out (bf16)."""
    return float(elem * (2 * B * H * Lq * D + 2 * B * Hkv * Lk * D))


def bytes_kernel(B: int, H: int, Hkv: int, Lq: int, Lk: int, D: int, out_elem: int = 2) -> float:
    """Bytes the attention kernel alone moves: int8 q, k + fp8 v in, bf16 o out.

    Scales (one fp32 per 16-128 rows) are below 1% and left out.
    """
    return float(B * H * Lq * D + 2 * B * Hkv * Lk * D + out_elem * B * H * Lq * D)


def row_bytes(row: dict) -> float:
    """Bytes moved for a results.json row (kernel rows: quantized operands)."""
    hkv = row.get("Hkv") or row["H"]
    args = (row["B"], row["H"], hkv, row["Lq"], row["Lk"], row["D"])
    if row.get("mode") == "kernel":
        return bytes_kernel(*args)
    return bytes_e2e(*args)


def row_flops(row: dict) -> float:
    return attention_flops(row["B"], row["H"], row["Lq"], row["Lk"], row["D"], bool(row["causal"]))


def input_set_bytes(s: Shape, elem: int = 2) -> int:
    """One set of q, k, v and an output, in the input dtype."""
    return int(bytes_e2e(s.B, s.H, s.hkv, s.Lq, s.Lk, s.D, elem))


def build_grid(
    B: Iterable[int] = (DEFAULT_B,),
    H: Iterable[int] = (DEFAULT_H,),
    L: Iterable[int] = DEFAULT_L,
    D: Iterable[int] = DEFAULT_D,
    causal: Iterable[bool] = DEFAULT_CAUSAL,
    Hkv: Iterable[int | None] = (None,),
) -> list[Shape]:
    """Cartesian grid, short sequences first across every (D, causal) group,
    so a run cut short by its time budget still covers every group.

    Points with an Hkv that does not divide H are dropped.
    """
    out = []
    for seq, d, c, b, h, hkv in itertools.product(L, D, causal, B, H, Hkv):
        if hkv is not None and (hkv < 1 or h % hkv):
            continue
        out.append(Shape(B=b, H=h, Lq=seq, Lk=seq, D=d, causal=bool(c), Hkv=None if hkv in (None, h) else hkv))
    return out


def parse_int_list(text: str | Sequence[int]) -> list[int]:
    """'1k,2k,4096' -> [1024, 2048, 4096]."""
    if not isinstance(text, str):
        return [int(x) for x in text]
    out = []
    for tok in text.replace(" ", "").split(","):
        if not tok:
            continue
        mult = 1
        if tok[-1] in "kK":
            mult, tok = 1024, tok[:-1]
        out.append(int(tok) * mult)
    return out


_TRUE = {"1", "t", "true", "y", "yes", "causal"}
_FALSE = {"0", "f", "false", "n", "no", "none", "noncausal"}


def parse_bool_list(text: str) -> list[bool]:
    """'F,T' / '0,1' / 'false,true' -> [False, True]."""
    out = []
    for tok in text.replace(" ", "").lower().split(","):
        if not tok:
            continue
        if tok in _TRUE:
            out.append(True)
        elif tok in _FALSE:
            out.append(False)
        else:
            raise ValueError(f"not a boolean: {tok!r}")
    return out
