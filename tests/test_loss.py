"""cross_entropy, cross_entropy_grad and cross_entropy_with_grad (no loss
options) against the float64 reference: dtypes, targets, reductions,
layouts, out=/in place, numerical extremes, finite differences and
hypothesis properties.  The options are in test_options.py."""

import numpy as np
import pytest
import reference as ref
from helpers import (
    F64,
    LAYOUTS,
    REDUCTIONS,
    assert_bitwise,
    check_cross_entropy,
    make_labels,
    make_logits,
    make_probs,
    snapshot,
    with_layout,
)
from hypothesis import given
from hypothesis import strategies as st

import fastxent

TARGETS = ("int32", "int64", "probs")


def make_target(rng, kind, shape, dtype=np.float64):
    if kind == "probs":
        return make_probs(rng, shape, dtype)
    return make_labels(rng, shape[:-1], shape[-1], np.dtype(kind))


# ---- the matrix: dtype x reduction x target x layout ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", TARGETS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("m", [10, 100])
def test_matrix(dtype, reduction, target_kind, layout, m, rng):
    shape = (6, 3, m) if layout == "F" else (7, m)
    z = with_layout(make_logits(rng, shape, dtype), layout)
    t = with_layout(make_target(rng, target_kind, shape, dtype), layout)
    check_cross_entropy(z, t, reduction=reduction)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("n", [1, 7, 9, 63, 64, 65, 130])
@pytest.mark.parametrize(
    "m", [1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 16, 17, 40, 47, 48, 63, 64, 65, 99, 100, 101]
)
def test_row_tiles(dtype, label_dtype, n, m, rng):
    """Class indices with few classes (float64 m <= 47, float32 m <= 100)
    are computed in tiles of 64 rows, moved in and out of the tile in 8 x 8
    (float32) or 4 x 4 (float64) register blocks: every row count (partial
    tiles, partial row groups), m on both sides of every block width and of
    each dtype's m limit, with masked entries, ties and a NaN row that must
    not leak into its tile; in place too."""
    z = make_logits(rng, (n, m), dtype)
    y = make_labels(rng, (n,), m, label_dtype)
    z[1::5] = 2.0  # all tied
    if m > 1:
        z[::3, 0] = -np.inf
        y[::3] = m - 1
    if n > 2:
        z[2, -1] = np.nan
    for reduction in REDUCTIONS:
        loss, grad = check_cross_entropy(z, y, reduction=reduction)
    if m > 1:
        assert np.all(grad[::3, 0] == 0)
    if n > 2:
        assert np.isnan(loss[2]) and np.isfinite(np.delete(loss, 2)).all()
        assert np.isfinite(np.delete(grad, 2, axis=0)).all()
    # In place, the gradient blocks are written over the logits they came
    # from (and the last columns of a row group run ahead into the next row).
    zz = z.copy()
    loss2, grad2 = fastxent.cross_entropy_with_grad(zz, y, reduction="none", out=zz)
    assert grad2 is zz
    assert_bitwise(grad2, grad)
    assert_bitwise(loss2, loss)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_batch_shape_is_rows(dtype, reduction, rng):
    """(batch, seq, vocab) gives the same numbers as the (batch*seq, vocab) matrix."""
    z = make_logits(rng, (3, 4, 50), dtype)
    y = make_labels(rng, (3, 4), 50)
    loss, grad = check_cross_entropy(z, y, reduction=reduction)
    loss2, grad2 = fastxent.cross_entropy_with_grad(
        z.reshape(12, 50), y.reshape(12), reduction=reduction
    )
    assert_bitwise(grad, grad2.reshape(3, 4, 50))
    assert_bitwise(np.reshape(loss, -1), np.reshape(loss2, -1))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_single_row_1d(reduction, rng):
    """1-d logits are one sample: a 0-d label, a 1-d probability row."""
    z = make_logits(rng, (9,))
    for t in (np.int64(4), 4, make_probs(rng, (9,))):
        loss, _ = check_cross_entropy(z, t, reduction=reduction)
        if reduction == "none":
            assert type(loss) is np.float64  # one sample: a NumPy scalar


def test_defaults_and_known_value():
    z = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    expected = (np.log(np.exp(2.0) + np.exp(0.5) + np.exp(-1.0)) - 2.0 + np.log(3.0)) / 2
    loss = fastxent.cross_entropy(z, [0, 2])
    assert loss == pytest.approx(expected, rel=1e-15)
    g = fastxent.cross_entropy_grad(z, [0, 2], reduction="sum")
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(g, p - np.eye(3)[[0, 2]], rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize(
    "in_dtype, out_dtype",
    [
        (np.int8, np.float64),
        (np.int16, np.float64),
        (np.int32, np.float64),
        (np.int64, np.float64),
        (np.uint8, np.float64),
    ],
)
@pytest.mark.parametrize("target_kind", TARGETS)
def test_converted_logit_dtypes(in_dtype, out_dtype, target_kind, rng):
    z = (rng.standard_normal((5, 8)) * 4).astype(in_dtype)
    t = make_target(rng, target_kind, z.shape, np.float64)
    loss, grad = check_cross_entropy(z, t, reduction="sum")
    assert loss.dtype == out_dtype and grad.dtype == out_dtype


@pytest.mark.parametrize(
    "label_dtype", [np.int8, np.int16, np.uint8, np.uint16, np.uint32, np.uint64, np.intp]
)
def test_other_label_dtypes(label_dtype, rng):
    z = make_logits(rng, (6, 7))
    y = make_labels(rng, (6,), 7, label_dtype)
    loss, grad = check_cross_entropy(z, y)
    loss64, grad64 = fastxent.cross_entropy_with_grad(z, y.astype(np.int64))
    assert_bitwise(loss, loss64)
    assert_bitwise(grad, grad64)


@pytest.mark.parametrize("t_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probability_target_dtypes(t_dtype, dtype, rng):
    """Probability targets of any floating dtype are converted to the logits' dtype."""
    z = make_logits(rng, (5, 6), dtype)
    check_cross_entropy(z, make_probs(rng, (5, 6)).astype(t_dtype))
    check_cross_entropy(z, np.eye(6, dtype=t_dtype)[[0, 1, 2, 3, 5]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("target_kind", ["int32", "int64", "probs"])
def test_non_native_byte_order(dtype, target_kind, rng):
    """Byte-swapped logits, targets and weights are read correctly."""
    z = make_logits(rng, (6, 9), dtype)
    t = make_target(rng, target_kind, z.shape, dtype)
    w = rng.uniform(0.5, 2, 9)
    s = rng.uniform(0.5, 2, 6)
    swapped = [a.astype(a.dtype.newbyteorder()) for a in (z, t, w, s)]
    assert not swapped[0].dtype.isnative
    expected = fastxent.cross_entropy_with_grad(z, t, weight=w, sample_weight=s)
    loss, grad = check_cross_entropy(
        swapped[0], swapped[1], weight=swapped[2], sample_weight=swapped[3]
    )
    assert_bitwise(loss, expected[0])
    assert_bitwise(grad, expected[1])
    assert grad.dtype.isnative


def test_list_inputs():
    loss, _ = check_cross_entropy([[1.0, 2.0, 3.0], [1.0, 1.0, 0.0]], [2, 0])
    assert loss.dtype == F64


def test_label_and_one_hot_agree(rng):
    z = make_logits(rng, (8, 12))
    y = make_labels(rng, (8,), 12)
    onehot = np.eye(12)[y]
    for reduction in REDUCTIONS:
        l1, g1 = fastxent.cross_entropy_with_grad(z, y, reduction=reduction)
        l2, g2 = fastxent.cross_entropy_with_grad(z, onehot, reduction=reduction)
        np.testing.assert_allclose(l1, l2, rtol=1e-14)
        np.testing.assert_allclose(g1, g2, rtol=1e-14, atol=1e-17)


def test_unnormalised_probability_rows(rng):
    """Rows need not sum to 1: the gradient is then P * sum(Y) - Y."""
    z = make_logits(rng, (4, 5))
    y = rng.random((4, 5)) * 3
    _, grad = check_cross_entropy(z, y, reduction="sum")
    p = ref.softmax(z)
    np.testing.assert_allclose(grad, p * y.sum(axis=1, keepdims=True) - y, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("target_kind", ["int64", "probs"])
def test_vocab_128256(dtype, target_kind, rng):
    shape = (3, 128256)
    z = make_logits(rng, shape, dtype, scale=4.0)
    t = make_target(rng, target_kind, shape, dtype)
    for reduction in ("mean", "none"):
        check_cross_entropy(z, t, reduction=reduction)


# ---- out= and in place ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("target_kind", ["int32", "probs"])
@pytest.mark.parametrize("shape", [(6, 9), (2, 3, 9)])
@pytest.mark.parametrize("with_loss", [False, True])
def test_out(dtype, target_kind, shape, with_loss, rng):
    z = make_logits(rng, shape, dtype)
    t = make_target(rng, target_kind, shape, dtype)
    loss0, grad0 = fastxent.cross_entropy_with_grad(z, t)
    out = np.full(shape, np.nan, dtype=dtype)
    before = snapshot(z, t)
    if with_loss:
        loss, got = fastxent.cross_entropy_with_grad(z, t, out=out)
        assert_bitwise(loss, loss0)
    else:
        got = fastxent.cross_entropy_grad(z, t, out=out)
    assert got is out and np.shares_memory(got, out)
    assert snapshot(z, t) == before
    assert_bitwise(out, grad0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("target_kind", ["int64", "probs"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_in_place(dtype, target_kind, reduction, rng):
    """out=logits overwrites the logits with the gradient: same bits as
    out of place, for both functions."""
    z = make_logits(rng, (5, 3, 20), dtype)
    z[0, 1, 4] = -np.inf
    t = make_target(rng, target_kind, z.shape, dtype)
    loss0, grad0 = fastxent.cross_entropy_with_grad(z, t, reduction=reduction)
    z1 = z.copy()
    got = fastxent.cross_entropy_grad(z1, t, reduction=reduction, out=z1)
    assert got is z1
    assert_bitwise(z1, grad0)
    z2 = z.copy()
    loss, got = fastxent.cross_entropy_with_grad(z2, t, reduction=reduction, out=z2)
    assert got is z2
    assert_bitwise(z2, grad0)
    assert_bitwise(loss, loss0)


def test_out_is_probability_target(rng):
    """out aliasing the probability target: the target is read before it is
    overwritten (the answer is that of the original target)."""
    z = make_logits(rng, (4, 6))
    y = make_probs(rng, (4, 6))
    grad0 = fastxent.cross_entropy_grad(z, y)
    got = fastxent.cross_entropy_grad(z, y, out=y)
    assert got is y
    assert_bitwise(y, grad0)


def test_out_overlapping_logits(rng):
    buf = make_logits(rng, (7, 5))
    z = buf[1:6].copy()
    y = make_labels(rng, (5,), 5)
    grad0 = fastxent.cross_entropy_grad(z, y)
    got = fastxent.cross_entropy_grad(buf[1:6], y, out=buf[:5])
    assert_bitwise(got, grad0)


# ---- numerical extremes ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_huge_logits_and_ties(dtype, reduction):
    z = np.array(
        [
            [1e30, -1e30, 0.0, 1e30],
            [-1e30, -1e30, -1e30, -1e30],
            [1e30, 1e30, 1e30, 1e30],
            [3.0, 3.0, -3.0, -3.0],
            [-1e30, 5.0, -1e30, 1e29],
        ],
        dtype=dtype,
    )
    y = np.array([0, 2, 3, 1, 1])
    loss, grad = check_cross_entropy(z, y, reduction="none")
    assert loss[0] == dtype(np.log(2.0))
    assert loss[1] == loss[2] == dtype(np.log(4.0))
    assert loss[4] == dtype(1e29) - dtype(5.0)
    assert np.all(np.isfinite(grad))
    check_cross_entropy(z, y, reduction=reduction)
    check_cross_entropy(z, ref.softmax(z[::-1]).astype(dtype), reduction=reduction)


@pytest.mark.parametrize("m", [3, 100, 101, 2000])
@pytest.mark.parametrize("target", ["probs", "smoothing"])
def test_float32_gap_beyond_range(m, target):
    """A row whose logit gap (max - min) exceeds float32's range: the target
    terms are formed in double, so the float32 loss is the float64 one
    rounded (not inf), whichever kernel takes the row."""
    z = np.zeros((2, m), np.float32)
    z[:, 0], z[:, 1] = 3e38, -3e38
    if target == "probs":
        t = np.zeros((2, m), np.float32)
        t[:, 0], t[:, 1] = 1.0, 1e-3
        opts = {}
    else:
        t = np.array([0, 2])
        opts = dict(label_smoothing=0.1)
    loss32 = fastxent.cross_entropy(z, t, reduction="none", **opts)
    loss64 = fastxent.cross_entropy(
        z.astype(np.float64),
        t if target != "probs" else t.astype(np.float64),
        reduction="none",
        **opts,
    )
    assert np.isfinite(loss64).all() and loss64.max() > 1e34
    np.testing.assert_allclose(loss32, loss64, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("target_kind", ["int64", "probs"])
def test_masked_classes(dtype, target_kind, rng):
    """-inf logits: probability 0, gradient exactly 0, no NaN."""
    z = make_logits(rng, (6, 10), dtype)
    y = make_labels(rng, (6,), 10)
    mask = rng.random((6, 10)) < 0.4
    mask[np.arange(6), y] = False
    z[mask] = -np.inf
    t = (
        y
        if target_kind == "int64"
        else np.eye(10, dtype=dtype)[y] * 0.5
        + np.where(mask, 0.0, 0.5 / (~mask).sum(axis=1, keepdims=True)).astype(dtype)
    )
    for reduction in REDUCTIONS:
        loss, grad = check_cross_entropy(z, t, reduction=reduction)
        assert np.all(np.isfinite(loss))
        assert np.all(grad[mask] == 0)
        assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_target_class_gives_inf(dtype, rng):
    z = make_logits(rng, (3, 5), dtype)
    z[1, 2] = -np.inf
    y = np.array([0, 2, 4])
    loss, _ = check_cross_entropy(z, y, reduction="none")
    assert loss[1] == np.inf and np.isfinite(loss[[0, 2]]).all()
    for reduction in ("mean", "sum"):
        assert check_cross_entropy(z, y, reduction=reduction)[0] == np.inf
    # Probability target with mass on a masked class: +inf too.
    loss, _ = check_cross_entropy(z, np.eye(5, dtype=dtype)[y], reduction="none")
    assert loss[1] == np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("target_kind", ["int64", "probs"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_row(dtype, target_kind, bad, rng):
    """NaN (or +inf) in a row: that row's loss is NaN, the others are right."""
    z = make_logits(rng, (4, 7), dtype)
    z[2, 3] = bad
    t = make_target(rng, target_kind, z.shape, dtype)
    loss, grad = check_cross_entropy(z, t, reduction="none")
    assert np.isnan(loss[2]) and np.isfinite(loss[[0, 1, 3]]).all()
    assert np.isfinite(grad[[0, 1, 3]]).all()
    for reduction in ("mean", "sum"):
        assert np.isnan(check_cross_entropy(z, t, reduction=reduction)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_one_class(dtype, reduction, rng):
    z = make_logits(rng, (5, 1), dtype)
    for t in (np.zeros(5, dtype=np.int64), np.ones((5, 1), dtype)):
        loss, grad = check_cross_entropy(z, t, reduction=reduction)
        assert np.all(loss == 0)
        assert np.all(grad == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(0, 5), (0, 1), (2, 0, 3)])
@pytest.mark.parametrize("target_kind", ["int64", "probs"])
def test_no_samples(dtype, shape, target_kind):
    z = np.zeros(shape, dtype)
    t = np.zeros(shape[:-1], np.int64) if target_kind == "int64" else np.zeros(shape, dtype)
    loss, grad = check_cross_entropy(z, t, reduction="sum")
    assert loss == 0 and grad.shape == shape
    loss, grad = check_cross_entropy(z, t, reduction="mean")
    assert np.isnan(loss) and grad.shape == shape
    loss, grad = check_cross_entropy(z, t, reduction="none")
    assert loss.shape == shape[:-1] and grad.shape == shape


# ---- gradients against finite differences (float64) ----


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", ["int64", "probs"])
def test_finite_differences(reduction, target_kind, rng):
    z = make_logits(rng, (3, 5), scale=2.0)
    t = make_target(rng, target_kind, z.shape)

    def f(x):
        return np.sum(fastxent.cross_entropy(x, t, reduction=reduction))

    fd = ref.finite_difference_grad(f, z)
    grad = fastxent.cross_entropy_grad(z, t, reduction=reduction)
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-9)
    # The oracle's own gradient passes the same check.
    _, rgrad = ref.cross_entropy(z, t, reduction=reduction)
    np.testing.assert_allclose(rgrad, fd, rtol=1e-7, atol=1e-9)


# ---- properties over shapes, values and dtypes ----

_values = st.one_of(
    st.floats(-20, 20, width=32),
    st.sampled_from([0.0, 1.0, -np.inf, 1e30, -1e30, 80.0, -120.0]),
)


@st.composite
def problems(draw, allow_probs=True):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = draw(st.sampled_from([(0,), (1,), (2,), (5,), (2, 3)]))
    m = draw(st.integers(1, 20))
    shape = batch + (m,)
    size = int(np.prod(shape))
    z = (
        np.array(draw(st.lists(_values, min_size=size, max_size=size)), dtype=np.float64)
        .reshape(shape)
        .astype(dtype)
    )
    n = size // m
    if draw(st.booleans()) or not allow_probs:
        labels = np.array(
            draw(st.lists(st.integers(0, m - 1), min_size=n, max_size=n)),
            dtype=draw(st.sampled_from([np.int32, np.int64])),
        )
        t = labels.reshape(batch)
    else:
        mass = st.one_of(st.just(0.0), st.floats(0, 1, width=32))
        t = np.array(draw(st.lists(mass, min_size=size, max_size=size)), dtype=dtype).reshape(shape)
    return z, t


@given(problem=problems(), reduction=st.sampled_from(REDUCTIONS), layout=st.sampled_from(LAYOUTS))
def test_property_vs_reference(problem, reduction, layout):
    z, t = problem
    check_cross_entropy(with_layout(z, layout), t, reduction=reduction)
