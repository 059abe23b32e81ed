"""softmax, log_softmax and logsumexp against the float64 reference."""

import numpy as np
import pytest
import reference as ref
from helpers import (
    F64,
    LAYOUTS,
    assert_bitwise,
    assert_close,
    compute_dtype,
    make_logits,
    row_scale,
    snapshot,
    with_layout,
)
from hypothesis import given
from hypothesis import strategies as st

import fastxent

FUNCS = {
    "softmax": (fastxent.softmax, ref.softmax),
    "log_softmax": (fastxent.log_softmax, ref.log_softmax),
    "logsumexp": (fastxent.logsumexp, ref.logsumexp),
}


def _scale(name, z):
    """Absolute error floor: softmax is bounded by 1; log_softmax and
    logsumexp carry a few ulps of the row's size."""
    rs = row_scale(z)
    if name == "softmax":
        return 1.0
    if name == "logsumexp":
        return rs.reshape(np.shape(z)[:-1])
    return rs.reshape(np.shape(z)[:-1] + (1,))


def check(name, z, **kw):
    fx, rf = FUNCS[name]
    z = np.asarray(z)
    before = snapshot(z)
    got = fx(z, **kw)
    assert snapshot(z) == before, "input modified"
    dtype = compute_dtype(z)
    assert got.dtype == dtype
    expected = ref_expected = rf(z)
    assert got.shape == np.shape(ref_expected)
    assert_close(got, expected, dtype, _scale(name, z), what=name)
    return got


# ---- the reference itself, cross-checked with scipy ----


def test_reference_matches_scipy(rng):
    special = pytest.importorskip("scipy.special")
    z = make_logits(rng, (7, 13), scale=20.0)
    z[1, 3] = -np.inf
    z[2] = 1e300
    np.testing.assert_allclose(ref.logsumexp(z), special.logsumexp(z, axis=-1), rtol=1e-14)
    np.testing.assert_allclose(
        ref.log_softmax(z), special.log_softmax(z, axis=-1), rtol=1e-14, atol=1e-14 * 20
    )
    np.testing.assert_allclose(ref.softmax(z), special.softmax(z, axis=-1), rtol=1e-13, atol=1e-300)
    inf_rows = np.array([[-np.inf, -np.inf], [np.inf, 0.0], [np.nan, 0.0]])
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(ref.logsumexp(inf_rows), special.logsumexp(inf_rows, axis=-1))


# ---- dtypes, layouts, shapes ----


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtypes_and_layouts(name, dtype, layout, rng):
    z = with_layout(make_logits(rng, (9, 17), dtype), layout)
    check(name, z)


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize(
    "in_dtype, out_dtype",
    [
        (np.int8, np.float64),
        (np.int32, np.float64),
        (np.int64, np.float64),
        (np.uint16, np.float64),
    ],
)
def test_converted_dtypes(name, in_dtype, out_dtype, rng):
    z = (rng.standard_normal((4, 6)) * 4).astype(in_dtype)
    got = check(name, z)
    assert got.dtype == out_dtype


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_native_byte_order(name, dtype, rng):
    z = make_logits(rng, (5, 7), dtype)
    swapped = z.astype(z.dtype.newbyteorder())
    got = check(name, swapped)
    assert got.dtype.isnative
    assert_bitwise(got, FUNCS[name][0](z))


@pytest.mark.parametrize("name", list(FUNCS))
def test_list_input(name):
    got = check(name, [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert got.dtype == F64


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize(
    "shape", [(5,), (1, 1), (3, 1), (0, 4), (2, 3, 5), (2, 0, 3), (1, 2, 2, 3)]
)
def test_shapes(name, shape, rng):
    z = make_logits(rng, shape)
    got = check(name, z)
    if name == "logsumexp":
        assert got.shape == shape[:-1]
    else:
        assert got.shape == shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_of_one_row_is_a_numpy_scalar(dtype):
    """Like np.max and scipy's logsumexp, a 1-d input reduces to a NumPy
    scalar of the compute dtype, not a 0-d array."""
    got = fastxent.logsumexp(np.log(np.array([1.0, 3.0], dtype=dtype)))
    assert type(got) is np.dtype(dtype).type
    assert got == pytest.approx(np.log(4.0), rel=1e-6)
    assert isinstance(fastxent.logsumexp(np.zeros((1, 2), dtype)), np.ndarray)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_m1(dtype):
    z = np.array([[3.0], [-1e30], [0.0]], dtype=dtype)
    assert_bitwise(fastxent.softmax(z), np.ones((3, 1), dtype))
    assert_bitwise(fastxent.log_softmax(z), np.zeros((3, 1), dtype))
    assert_bitwise(fastxent.logsumexp(z), z[:, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vocab_128256(dtype, rng):
    z = make_logits(rng, (3, 128256), dtype, scale=4.0)
    for name in FUNCS:
        check(name, z)


# ---- out= and in place ----


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 11), (2, 3, 7)])
def test_out(name, dtype, shape, rng):
    fx = FUNCS[name][0]
    z = make_logits(rng, shape, dtype)
    expected = fx(z)
    out = np.full(shape, np.nan, dtype=dtype)
    before = snapshot(z)
    got = fx(z, out=out)
    assert got is out
    assert np.shares_memory(got, out)
    assert snapshot(z) == before
    assert_bitwise(out, expected, name)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place(name, dtype, rng):
    fx = FUNCS[name][0]
    z = make_logits(rng, (7, 33), dtype)
    z[2, 5] = -np.inf
    expected = fx(z)
    got = fx(z, out=z)
    assert got is z
    assert_bitwise(z, expected, name)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_out_overlapping_input(name, rng):
    """``out`` overlapping the logits without being them: the answer is
    still that of the untouched logits."""
    fx = FUNCS[name][0]
    buf = make_logits(rng, (8, 5))
    z = buf[:4].copy()
    expected = fx(z)
    buf[1:5] = z
    got = fx(buf[1:5], out=buf[:4])
    assert_bitwise(got, expected, name)


# ---- numerical extremes ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extremes(dtype):
    z = np.array(
        [
            [1e30, -1e30, 0.0, 1e30],  # huge, ties at the top
            [-np.inf, 0.0, 1.0, -np.inf],  # masked classes
            [2.0, 2.0, 2.0, 2.0],  # all tied
            [-1e30, -1e30, -1e30, -1e29],
            [-50.0, 50.0, -50.0, 0.0],  # underflowing exps
        ],
        dtype=dtype,
    )
    for name in FUNCS:
        check(name, z)
    p = fastxent.softmax(z)
    assert_bitwise(p[1, [0, 3]], np.zeros(2, dtype), "masked prob")
    assert np.all(fastxent.log_softmax(z)[1, [0, 3]] == -np.inf)
    assert p[0, 0] == p[0, 3] == dtype(0.5)
    assert np.all(p[2] == dtype(0.25))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_row_is_nan_and_other_rows_unaffected(dtype, rng):
    z = make_logits(rng, (4, 9), dtype)
    z[1, 4] = np.nan
    for name in FUNCS:
        got = check(name, z)
        assert np.all(np.isnan(got[1]))
        assert not np.any(np.isnan(np.delete(got, 1, axis=0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_infinite_rows(dtype):
    """As scipy and torch: an all -inf row has logsumexp -inf, a row with
    +inf has +inf, NaN wins over both."""
    z = np.array(
        [[-np.inf, -np.inf], [np.inf, 0.0], [np.inf, -np.inf], [np.inf, np.nan], [-np.inf, np.nan]],
        dtype=dtype,
    )
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(fastxent.logsumexp(z), ref.logsumexp(z))
        np.testing.assert_array_equal(
            fastxent.logsumexp(z), [-np.inf, np.inf, np.inf, np.nan, np.nan]
        )


# ---- properties over shapes and values ----

_values = st.one_of(
    st.floats(-30, 30, width=32),
    st.sampled_from([0.0, 1.0, -np.inf, 1e30, -1e30, 88.0, -104.0, 700.0, -750.0]),
)


@st.composite
def _logits(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = draw(st.sampled_from([(), (0,), (1,), (3,), (2, 3)]))
    m = draw(st.integers(1, 24))
    shape = batch + (m,)
    size = int(np.prod(shape))
    vals = draw(st.lists(_values, min_size=size, max_size=size))
    z = np.array(vals, dtype=np.float64).reshape(shape)
    if z.size:  # keep every row with at least one finite entry
        z[..., draw(st.integers(0, m - 1))] = draw(st.floats(-30, 30, width=32))
    return z.astype(dtype)


@given(z=_logits(), name=st.sampled_from(list(FUNCS)))
def test_property_vs_reference(z, name):
    with np.errstate(all="ignore"):
        check(name, z)


def test_logsumexp_keeps_the_terms_below_the_max():
    """lse = max + log1p(sum of the other terms): for [0, -40] that is
    4.248e-18, where max + log(1 + 4.2e-18) rounds to 0 (scipy gh-18295);
    np.logaddexp and scipy agree."""
    got = fastxent.logsumexp(np.array([0.0, -40.0]))
    assert got == pytest.approx(np.logaddexp(0.0, -40.0), rel=1e-15)
    assert got == pytest.approx(4.248354255291589e-18, rel=1e-15)
    lsm = fastxent.log_softmax(np.array([0.0, -40.0]))
    assert lsm[0] == pytest.approx(-4.248354255291589e-18, rel=1e-15)
    # ties at the max: each of c maxima contributes exp(0) = 1 exactly
    assert fastxent.logsumexp(np.array([0.0, 0.0, -50.0])) == pytest.approx(
        np.log(2.0) + np.exp(-50.0) / 2, rel=1e-15
    )
    # float32: log1p(1e-20) is 1e-20, not 0
    got32 = fastxent.logsumexp(np.array([[0.0, -46.0]], dtype=np.float32))
    assert got32[0] == pytest.approx(np.exp(-46.0), rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_relative_accuracy_near_the_max(dtype, rng):
    """Rows dominated by one logit: relative accuracy of lse - max (the part
    log1p keeps) against scipy's logsumexp in float64."""
    scipy_special = pytest.importorskip("scipy.special")
    z = (rng.standard_normal((200, 50)) - 30.0).astype(dtype)
    z[:, 7] = 0.0
    got = fastxent.logsumexp(z).astype(np.float64)
    want = scipy_special.logsumexp(z.astype(np.float64), axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-13)
    assert np.all(want > 0) and np.all(want < 1e-10)
