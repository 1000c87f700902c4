"""Note [Polynomial exp2]: the kernel's FMA-pipe 2^x, emulated bit for bit in numpy
(round-down add, the monic cubic, the integer exponent add), against exp2. CPU."""

import numpy as np

from sagecute.kernels.common.softmax import _ROUND_BIAS, EXP2_POLY_MONIC, EXP2_POLY_SHIFT


def _exp2_poly_emulated(x: np.ndarray) -> np.ndarray:
    f32 = np.float32
    x = np.maximum(x.astype(f32), f32(-120.0))
    bias = f32(_ROUND_BIAS - EXP2_POLY_SHIFT)
    exact = x.astype(np.float64) + float(bias)
    biased = exact.astype(f32)
    biased = np.where(biased.astype(np.float64) > exact, np.nextafter(biased, f32(-np.inf)), biased)  # add.rm
    frac = x - (biased - bias)
    a0, a1, a2 = (f32(c) for c in EXP2_POLY_MONIC)
    p = ((frac + a2) * frac + a1) * frac + a0
    with np.errstate(over="ignore"):
        return (p.view(np.int32) + (biased.view(np.int32) << 23)).view(f32)  # shl wraps as in PTX


def test_exp2_poly_relative_error():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-120, 9, 100_003), -20 * rng.random(50_000), rng.random(1000)]).astype(np.float32)
    got = _exp2_poly_emulated(x).astype(np.float64)
    want = np.exp2(x.astype(np.float64))
    assert np.all(np.isfinite(got)) and np.all(got > 0)
    assert np.max(np.abs(got / want - 1)) < 3.7e-4  # the fit's 3.6e-4, far below the e4m3 step of P


def test_exp2_poly_clamps_small_arguments():
    got = _exp2_poly_emulated(np.array([-1e30, -500.0, -121.0, -np.inf], dtype=np.float32))
    assert np.allclose(got, 2.0**-120, rtol=4e-4)  # 0 once rounded to e4m3, like exp2's own
