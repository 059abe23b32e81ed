"""The branch-free vectorised exp and tanh of the C row primitives, through
their test hooks ``fastxent._kernels.exp_array`` / ``tanh_array``.

Accuracy is measured in ulps: float32 against the float64 result rounded to
float32 (the correctly rounded value but for rare double roundings), float64
against NumPy and the C library (``math``).  Special values must be exact:
``exp(-inf) = 0`` and 0 below the underflow threshold, ``+inf`` above the
overflow threshold, NaN in -> NaN out; ``tanh(+-inf) = +-1``.
"""

import math

import numpy as np
import pytest
from reference import ulp_distance

import fastxent
from fastxent import _kernels

F32_EXP_LO, F32_EXP_HI = -103.972076, 88.7228394  # exp underflows to 0 / overflows
F64_EXP_LO, F64_EXP_HI = -745.1332191019412, 709.782712893384


def fx(fn, x):
    x = np.ascontiguousarray(x)
    out = np.full_like(x, 12345.0)
    fn(x, out)
    return out


def grid(rng, lo, hi, dtype, n=200_000):
    x = np.concatenate(
        [
            rng.uniform(lo, hi, n),
            np.linspace(lo, hi, n // 4 + 1),
            np.arange(math.ceil(lo), math.floor(hi) + 1.0),
            np.log(2.0) * np.arange(int(lo / 0.7), int(hi / 0.7)),
        ]
    )
    x = x[(x >= lo) & (x <= hi)]
    return x.astype(dtype)


def f64_exp_rounded_to_f32(x):
    with np.errstate(over="ignore"):
        return np.exp(x.astype(np.float64)).astype(np.float32)


# ---- exp ----


@pytest.mark.parametrize(
    "lo, hi", [(-87.0, 0.0), (0.0, F32_EXP_HI), (F32_EXP_LO, -87.0), (-1e-3, 1e-3)]
)
def test_exp_float32_within_1ulp_of_rounded_float64(lo, hi, rng):
    x = grid(rng, lo, hi, np.float32)
    d = ulp_distance(fx(_kernels.exp_array, x), f64_exp_rounded_to_f32(x))
    assert d.max() <= 1, f"{d.max()} ulp at x={x[np.argmax(d)]!r}"


def test_exp_float32_vs_numpy(rng):
    """NumPy's own float32 exp is up to ~2.5 ulp off; ours is within 1 ulp of
    the rounded value, hence within ~3.5 of NumPy's."""
    x = grid(rng, F32_EXP_LO, F32_EXP_HI, np.float32)
    with np.errstate(over="ignore"):
        d = ulp_distance(fx(_kernels.exp_array, x), np.exp(x))
    assert d.max() <= 4


@pytest.mark.parametrize(
    "lo, hi", [(-708.0, 0.0), (0.0, F64_EXP_HI), (F64_EXP_LO, -708.0), (-1e-6, 1e-6)]
)
def test_exp_float64_within_2ulp(lo, hi, rng):
    x = grid(rng, lo, hi, np.float64)
    got = fx(_kernels.exp_array, x)
    with np.errstate(over="ignore"):
        d = ulp_distance(got, np.exp(x))
    assert d.max() <= 2, f"{d.max()} ulp vs np.exp at x={x[np.argmax(d)]!r}"
    sub = x[:: max(1, x.size // 20_000)]
    libm = np.array([math.exp(v) if v < F64_EXP_HI else math.inf for v in sub])
    d = ulp_distance(got[:: max(1, x.size // 20_000)], libm)
    assert d.max() <= 2, f"{d.max()} ulp vs math.exp"


# The kernels' own exp (of z - max <= 0): flushes below the smallest normal.
F32_EXPNEG_LO, F64_EXPNEG_LO = -87.3365448, -708.3964185322641


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_expneg_matches_exp_on_its_range(dtype, rng):
    """The kernels' exp is within 1 ulp of the correctly rounded value
    (float32, on a dense grid) / 2 ulp of NumPy
    (float64) from its flush threshold to 0, and exactly 0 below it."""
    lo = F32_EXPNEG_LO if dtype == np.float32 else F64_EXPNEG_LO
    x = grid(rng, lo * 0.99999, 0.0, dtype)
    got = fx(_kernels.expneg_array, x)
    if dtype == np.float32:
        d = ulp_distance(got, f64_exp_rounded_to_f32(x))
        assert d.max() <= 1, f"{d.max()} ulp at x={x[np.argmax(d)]!r}"
    else:
        d = ulp_distance(got, np.exp(x))
        assert d.max() <= 2, f"{d.max()} ulp vs np.exp at x={x[np.argmax(d)]!r}"
    below = np.array([-np.inf, np.finfo(dtype).min, -1e30, 1.001 * lo], dtype=dtype)
    got = fx(_kernels.expneg_array, below)
    assert np.all(got == 0) and not np.any(np.signbit(got))
    special = fx(_kernels.expneg_array, np.array([np.nan, -0.0, 0.0], dtype=dtype))
    assert np.isnan(special[0]) and np.all(special[1:] == 1)


@pytest.mark.parametrize(
    "dtype, lo, hi", [(np.float32, F32_EXP_LO, F32_EXP_HI), (np.float64, F64_EXP_LO, F64_EXP_HI)]
)
def test_exp_special_values(dtype, lo, hi):
    lo_, hi_ = dtype(lo), dtype(hi)
    below = [-np.inf, np.finfo(dtype).min, -1e30, 10 * lo, np.nextafter(lo_, dtype(-np.inf))]
    above = [np.inf, np.finfo(dtype).max, 1e30, 10 * hi, np.nextafter(hi_, dtype(np.inf))]
    x = np.array(below + above + [np.nan, -np.nan, 0.0, -0.0], dtype=dtype)
    got = fx(_kernels.exp_array, x)
    k = len(below)
    assert np.all(got[:k] == 0) and not np.any(np.signbit(got[:k])), got[:k]
    assert np.all(got[k : 2 * k] == np.inf), got[k : 2 * k]
    assert np.all(np.isnan(got[2 * k : 2 * k + 2]))
    assert np.all(got[-2:] == 1)
    # Just inside the range the result is finite (largest) / positive (tiny).
    inside = np.array(
        [np.nextafter(hi_, dtype(0)) * dtype(0.9999), lo_ * dtype(0.999)], dtype=dtype
    )
    got = fx(_kernels.exp_array, inside)
    assert np.isfinite(got[0]) and got[0] > np.finfo(dtype).max / 2
    assert 0 < got[1] < np.finfo(dtype).tiny


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_monotonic(dtype, rng):
    x = np.sort(rng.uniform(-110 if dtype == np.float32 else -750, 5, 100_000)).astype(dtype)
    got = fx(_kernels.exp_array, x)
    assert np.all(np.diff(got) >= 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 63, 65, 129])
def test_lengths_and_misaligned(dtype, n, rng):
    """Vector bodies and scalar tails give the same values (elementwise
    functions must not depend on an element's position)."""
    base = (rng.standard_normal(n + 1) * 20).astype(dtype)
    base[::5] = -np.inf
    x = base[1:]  # misaligned by one element
    for fn in (_kernels.exp_array, _kernels.tanh_array):
        got = fx(fn, x)
        one_by_one = np.array([fx(fn, x[i : i + 1])[0] for i in range(n)], dtype=dtype)
        assert got.tobytes() == one_by_one.tobytes()


# ---- tanh ----


@pytest.mark.parametrize("lo, hi", [(-20.0, 20.0), (-1.0, 1.0), (0.55, 0.7), (-1e-4, 1e-4)])
def test_tanh_float32_within_1ulp_of_rounded_float64(lo, hi, rng):
    x = grid(rng, lo, hi, np.float32)
    got = fx(_kernels.tanh_array, x)
    d = ulp_distance(got, np.tanh(x.astype(np.float64)).astype(np.float32))
    assert d.max() <= 1, f"{d.max()} ulp at x={x[np.argmax(d)]!r}"
    assert ulp_distance(got, np.tanh(x)).max() <= 2


@pytest.mark.parametrize("lo, hi", [(-40.0, 40.0), (-1.0, 1.0), (0.55, 0.7), (-1e-4, 1e-4)])
def test_tanh_float64_within_2ulp(lo, hi, rng):
    x = grid(rng, lo, hi, np.float64)
    got = fx(_kernels.tanh_array, x)
    d = ulp_distance(got, np.tanh(x))
    assert d.max() <= 2, f"{d.max()} ulp vs np.tanh at x={x[np.argmax(d)]!r}"
    step = max(1, x.size // 20_000)
    libm = np.array([math.tanh(v) for v in x[::step]])
    assert ulp_distance(got[::step], libm).max() <= 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_special_values(dtype, rng):
    x = np.array([np.inf, -np.inf, 1e30, -1e30, 50.0, -50.0, np.nan, 0.0], dtype=dtype)
    got = fx(_kernels.tanh_array, x)
    np.testing.assert_array_equal(got[:6], [1, -1, 1, -1, 1, -1])
    assert np.isnan(got[6]) and got[7] == 0
    tiny = np.array([1e-30, -1e-30, np.finfo(dtype).tiny, 1e-10], dtype=dtype)
    np.testing.assert_array_equal(fx(_kernels.tanh_array, tiny), tiny)
    # Odd and bounded.
    x = (rng.standard_normal(10_000) * 5).astype(dtype)
    pos, neg = fx(_kernels.tanh_array, x), fx(_kernels.tanh_array, -x)
    assert pos.tobytes() == (-neg).tobytes()
    assert np.all(np.abs(pos) <= 1)


# ---- the exp of non-positive arguments inside the row kernels ----


@pytest.mark.parametrize(
    "dtype, lo, flush", [(np.float32, -87.0, -87.3365448), (np.float64, -708.0, -708.3964185322641)]
)
def test_row_exp_of_nonpositive_arguments(dtype, lo, flush, rng):
    """The kernels use a cheaper exp for ``z - max <= 0`` (no overflow side,
    results below the smallest normal number flushed to 0).  It is observable
    through softmax: in a row ``[0, x_1, ..., x_k]`` with every
    ``x_j <= -45`` the sum of exponentials is exactly 1 in double, so
    ``softmax(row)[j] == exp(x_j)`` as the kernel computes it."""
    x = np.concatenate([rng.uniform(lo, -45.0, 3000), np.linspace(lo, -45.0, 1001)])
    x = x.astype(dtype)
    row = np.concatenate([[0.0], x]).astype(dtype)[None, :]
    p = fastxent.softmax(row)[0]
    assert p[0] == 1
    if dtype == np.float32:
        d = ulp_distance(p[1:], f64_exp_rounded_to_f32(x))
        assert d.max() <= 1, f"{d.max()} ulp at x={x[np.argmax(d)]!r}"
    else:
        d = ulp_distance(p[1:], np.exp(x))
        assert d.max() <= 2, f"{d.max()} ulp at x={x[np.argmax(d)]!r}"
    # Below log(smallest normal) (and -inf): exactly 0.
    deep = np.array(
        [
            0.0,
            np.nextafter(dtype(flush), dtype(-np.inf)),
            2 * flush,
            -1e30,
            -np.inf,
            np.finfo(dtype).min,
        ],
        dtype=dtype,
    )[None, :]
    np.testing.assert_array_equal(fastxent.softmax(deep)[0], [1, 0, 0, 0, 0, 0])
    just_above = np.array([[0.0, dtype(flush) * dtype(0.9999)]], dtype=dtype)
    assert fastxent.softmax(just_above)[0, 1] >= np.finfo(dtype).tiny


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_exp_near_zero_via_softmax(dtype, rng):
    """softmax([0, x]) = 1 / (1 + exp(-x)) for x in [-45, 0]: a few ulps."""
    x = np.concatenate([rng.uniform(-45.0, 0.0, 5000), -np.logspace(-8, 1.6, 500)])
    x = x.astype(dtype)
    rows = np.stack([np.zeros_like(x), x], axis=1)
    p = fastxent.softmax(rows)[:, 1]
    x64 = x.astype(np.float64)
    expected = (np.exp(x64) / (1.0 + np.exp(x64))).astype(dtype)
    assert ulp_distance(p, expected).max() <= 4


def test_two_class_log1p_and_reciprocal(rng):
    """The two-class kernel's per-row log1p(t) and 1 / (1 + t), t = exp(-|d|)
    in [0, 1], share one division: within 4 and 2 ulp of libm's log1p and of
    the correctly rounded reciprocal, exact for t below the rounding of 1 + t,
    and on both sides of the sqrt(2) - 1 reduction boundary."""
    edge = math.sqrt(2) - 1
    t = np.concatenate(
        [
            rng.random(200_000),
            np.logspace(-320, 0, 4001),
            np.linspace(edge - 1e-9, edge + 1e-9, 2001),
            [0.0, 1.0, edge, 5e-324, 1e-300, 2.0**-54, 2.0**-53, 2.0**-52],
        ]
    )
    lg, rc = np.full_like(t, np.nan), np.full_like(t, np.nan)
    _kernels.log1p_recip_unit_array(t, lg, rc)
    assert ulp_distance(lg, np.log1p(t)).max() <= 4
    assert ulp_distance(rc, 1.0 / (1.0 + t)).max() <= 2
    tiny = t < 2.0**-54
    assert np.array_equal(lg[tiny], t[tiny]) and np.all(rc[tiny] == 1.0)
    assert lg[t == 0.0][0] == 0.0 and rc[t == 1.0][0] == 0.5
