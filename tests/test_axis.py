"""``axis=``: the class axis of the loss and softmax functions, as in NumPy
and SciPy.

Every function that takes it is checked on 2-d and 3-d logits at every
axis (negative ones too) against the float64 reference applied to the
logits with that axis moved last, against ``scipy.special`` (which takes
``axis=`` itself), bitwise against fastxent on an explicitly moved copy,
and with ``out=``; then the errors: an axis out of range, a non-integer
axis, a target or ``out`` of the wrong shape (with the hint that names the
``axis=`` that would fit).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from helpers import (
    assert_bitwise,
    assert_close,
    assert_grad_close,
    assert_loss_close,
    make_labels,
    make_logits,
    make_probs,
    row_scale,
)
from hypothesis import given
from hypothesis import strategies as st

import fastxent

SHAPES = [(7, 5), (3, 4, 5)]
CASES = [(shape, axis) for shape in SHAPES for axis in range(-len(shape), len(shape))]
DTYPES = [np.float32, np.float64]
SOFTMAX_FUNCS = ("softmax", "log_softmax", "logsumexp")


def _last(a, axis):
    """``a`` with ``axis`` moved last, C-contiguous (what the caller of a
    classes-last API does by hand)."""
    return np.ascontiguousarray(np.moveaxis(a, axis, -1))


def _ids(case):
    shape, axis = case
    return f"{'x'.join(map(str, shape))}-axis{axis}"


# ---- softmax, log_softmax, logsumexp ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("name", SOFTMAX_FUNCS)
def test_softmax_family_on_every_axis(rng, name, case, dtype):
    shape, axis = case
    z = make_logits(rng, shape, dtype, scale=5.0)
    got = getattr(fastxent, name)(z, axis=axis)
    zl = _last(z, axis)
    expected = getattr(ref, name)(zl)  # the float64 reference, classes last
    rs = row_scale(zl).reshape(zl.shape[:-1])
    if name == "logsumexp":
        assert got.shape == zl.shape[:-1]
        assert_close(got, expected, dtype, rs, what=name)
    else:
        assert got.shape == shape and got.dtype == dtype and got.flags.c_contiguous
        scale = 1.0 if name == "softmax" else rs[..., None]
        assert_close(np.moveaxis(got, axis, -1), expected, dtype, scale, what=name)
    # The same rows through the classes-last path: the same bits.
    same = getattr(fastxent, name)(zl)
    assert_bitwise(got if name == "logsumexp" else np.moveaxis(got, axis, -1), same, name)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("name", SOFTMAX_FUNCS)
def test_softmax_family_matches_scipy(rng, name, case):
    special = pytest.importorskip("scipy.special")
    shape, axis = case
    z = make_logits(rng, shape, np.float64, scale=5.0)
    z.flat[3] = -np.inf
    got = getattr(fastxent, name)(z, axis=axis)
    expected = getattr(special, name)(z, axis=axis)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_out_on_every_axis(rng, name, case):
    shape, axis = case
    z = make_logits(rng, shape, np.float32)
    f = getattr(fastxent, name)
    expected = f(z, axis=axis)
    out = np.full(shape, np.nan, dtype=np.float32)
    got = f(z, axis=axis, out=out)
    assert got is out
    assert_bitwise(out, expected, name)
    # out=logits: in place.
    zz = z.copy()
    assert f(zz, axis=axis, out=zz) is zz
    assert_bitwise(zz, expected, f"{name} in place")


def test_softmax_out_of_the_moved_shape_is_an_error_that_says_so(rng):
    z = make_logits(rng, (2, 5, 3))
    with pytest.raises(ValueError, match=r"logits' shape \(2, 5, 3\).*axis 1.*moved last"):
        fastxent.softmax(z, axis=1, out=np.empty((2, 3, 5)))
    with pytest.raises(ValueError, match=r"must have dtype float64"):
        fastxent.softmax(z, axis=1, out=np.empty((2, 5, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"C-contiguous"):
        fastxent.log_softmax(z, axis=1, out=np.empty((3, 5, 2)).T)
    with pytest.raises(TypeError, match=r"NumPy array"):
        fastxent.softmax(z, axis=0, out=[0.0] * 30)


def test_half_precision_on_another_axis(rng):
    z = make_logits(rng, (3, 6, 4)).astype(np.float16)
    p = fastxent.softmax(z, axis=1)
    assert p.dtype == np.float16 and p.shape == z.shape
    assert_bitwise(np.moveaxis(p, 1, -1), fastxent.softmax(_last(z, 1)), "float16 softmax")
    y = make_labels(rng, (3, 4), 6)
    loss, g = fastxent.cross_entropy_with_grad(z, y, axis=1)
    loss_last, g_last = fastxent.cross_entropy_with_grad(_last(z, 1), y)
    assert g.dtype == np.float16 and g.shape == z.shape
    assert_bitwise(loss, loss_last, "float16 loss")
    assert_bitwise(np.moveaxis(g, 1, -1), g_last, "float16 grad")


# ---- cross_entropy, cross_entropy_grad, cross_entropy_with_grad ----


def _target(rng, kind, shape, axis):
    """Class indices (the logits' shape without ``axis``) or probabilities
    (the logits' shape, classes on ``axis``), and the same moved last."""
    m = shape[axis]
    rest = tuple(np.delete(np.array(shape), axis % len(shape)))
    if kind == "labels":
        y = make_labels(rng, rest, m)
        return y, y
    p = np.moveaxis(make_probs(rng, rest + (m,)), -1, axis)
    return p, _last(p, axis)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_cross_entropy_on_every_axis(rng, case, dtype, kind, reduction):
    shape, axis = case
    z = make_logits(rng, shape, dtype)
    t, t_last = _target(rng, kind, shape, axis)
    zl = _last(z, axis)
    s = rng.random(zl.shape[:-1]) + 0.5  # sample_weight: the shape without axis
    kw = dict(reduction=reduction, sample_weight=s, label_smoothing=0.1)
    loss1 = fastxent.cross_entropy(z, t, axis=axis, **kw)
    grad1 = fastxent.cross_entropy_grad(z, t, axis=axis, **kw)
    loss, grad = fastxent.cross_entropy_with_grad(z, t, axis=axis, **kw)
    assert_bitwise(loss1, loss, "cross_entropy vs cross_entropy_with_grad")
    assert_bitwise(grad1, grad, "cross_entropy_grad vs cross_entropy_with_grad")
    assert grad.shape == shape and grad.dtype == dtype and grad.flags.c_contiguous
    if reduction == "none":
        assert loss.shape == zl.shape[:-1]

    expected_loss, expected_grad = ref.cross_entropy(zl, t_last, **kw)
    assert_loss_close(loss, expected_loss, zl, dtype, reduction, weight_scale=1.5)
    assert_grad_close(np.moveaxis(grad, axis, -1), expected_grad, dtype)
    # The same rows through the classes-last path: the same bits.
    loss_last, grad_last = fastxent.cross_entropy_with_grad(zl, t_last, **kw)
    assert_bitwise(loss, loss_last, "loss vs classes last")
    assert_bitwise(np.moveaxis(grad, axis, -1), grad_last, "grad vs classes last")


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_cross_entropy_out_on_every_axis(rng, case):
    shape, axis = case
    z = make_logits(rng, shape, np.float32)
    t, _ = _target(rng, "labels", shape, axis)
    expected = fastxent.cross_entropy_grad(z, t, axis=axis)
    out = np.full(shape, np.nan, dtype=np.float32)
    assert fastxent.cross_entropy_grad(z, t, axis=axis, out=out) is out
    assert_bitwise(out, expected, "grad out=")
    out[...] = np.nan
    _, g = fastxent.cross_entropy_with_grad(z, t, axis=axis, out=out)
    assert g is out
    assert_bitwise(out, expected, "with_grad out=")
    zz = z.copy()
    assert fastxent.cross_entropy_grad(zz, t, axis=axis, out=zz) is zz
    assert_bitwise(zz, expected, "grad in place")


def test_torch_layout_n_c_l(rng):
    """PyTorch's ``(N, C, L)`` with ``(N, L)`` targets is the loss of the
    ``N * L`` rows of classes (what ``F.cross_entropy`` computes)."""
    n, c, length = 4, 7, 6
    z = make_logits(rng, (n, c, length))
    y = make_labels(rng, (n, length), c)
    y[0, 2] = -100
    rows = z.transpose(0, 2, 1).reshape(-1, c)
    for reduction in ("mean", "sum", "none"):
        loss, grad = fastxent.cross_entropy_with_grad(z, y, axis=1, reduction=reduction)
        want_loss, want_grad = fastxent.cross_entropy_with_grad(
            rows, y.reshape(-1), reduction=reduction
        )
        assert_bitwise(np.reshape(loss, -1), np.reshape(want_loss, -1), reduction)
        assert_bitwise(grad.transpose(0, 2, 1).reshape(-1, c), want_grad, reduction)
        assert np.all(grad[0, :, 2] == 0)  # the ignored position


def test_cross_entropy_out_of_the_wrong_shape(rng):
    z = make_logits(rng, (2, 5, 3))
    y = make_labels(rng, (2, 3), 5)
    with pytest.raises(ValueError, match=r"logits' shape \(2, 5, 3\).*moved last"):
        fastxent.cross_entropy_grad(z, y, axis=1, out=np.empty((2, 3, 5)))
    with pytest.raises(ValueError, match=r"logits' shape \(2, 5, 3\).*got shape \(30,\)\.$"):
        fastxent.cross_entropy_with_grad(z, y, axis=1, out=np.empty(30))


def test_the_last_axis_named_any_way_is_the_default(rng):
    z = make_logits(rng, (4, 3, 5), np.float32)
    y = make_labels(rng, (4, 3), 5)
    base = fastxent.cross_entropy_with_grad(z, y)
    for axis in (2, -1, np.int64(2), np.intp(-1)):
        loss, grad = fastxent.cross_entropy_with_grad(z, y, axis=axis)
        assert_bitwise(loss, base[0], str(axis))
        assert_bitwise(grad, base[1], str(axis))
        assert_bitwise(fastxent.logsumexp(z, axis=axis), fastxent.logsumexp(z), str(axis))
    v = make_logits(rng, (6,))
    assert_bitwise(fastxent.softmax(v, axis=0), fastxent.softmax(v), "1-d axis=0")


def test_empty_batch_on_another_axis():
    z = np.zeros((0, 5, 3))
    assert fastxent.softmax(z, axis=1).shape == (0, 5, 3)
    assert fastxent.logsumexp(z, axis=1).shape == (0, 3)
    loss, grad = fastxent.cross_entropy_with_grad(z, np.zeros((0, 3), int), axis=1)
    assert np.isnan(loss) and grad.shape == (0, 5, 3)


# ---- errors ----

FUNCS = {
    "softmax": lambda z, **kw: fastxent.softmax(z, **kw),
    "log_softmax": lambda z, **kw: fastxent.log_softmax(z, **kw),
    "logsumexp": lambda z, **kw: fastxent.logsumexp(z, **kw),
    "cross_entropy": lambda z, **kw: fastxent.cross_entropy(z, np.zeros(3, int), **kw),
    "cross_entropy_grad": lambda z, **kw: fastxent.cross_entropy_grad(z, np.zeros(3, int), **kw),
    "cross_entropy_with_grad": lambda z, **kw: fastxent.cross_entropy_with_grad(
        z, np.zeros(3, int), **kw
    ),
}


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("axis", [2, -3, 10**20])
def test_axis_out_of_range_is_numpys_axis_error(name, axis):
    z = np.zeros((3, 4))
    match = r"out of bounds for logits of shape \(3, 4\)"
    with pytest.raises(np.exceptions.AxisError, match=match):
        FUNCS[name](z, axis=axis)
    # NumPy's AxisError is a ValueError (and an IndexError), as for np.sum.
    assert issubclass(np.exceptions.AxisError, ValueError)


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("axis", [1.0, True, "0", None, (0,)])
def test_axis_must_be_an_integer(name, axis):
    with pytest.raises(TypeError, match=r"axis must be an integer"):
        FUNCS[name](np.zeros((3, 4)), axis=axis)


def test_masked_arrays_and_tensors_needing_grad_are_refused_on_any_axis(rng):
    z = make_logits(rng, (2, 5, 3))
    p = np.moveaxis(make_probs(rng, (2, 3, 5)), -1, 1)
    with pytest.raises(TypeError, match=r"^logits is a masked array"):
        fastxent.softmax(np.ma.masked_array(z, mask=z > 1), axis=1)
    with pytest.raises(TypeError, match=r"^target is a masked array"):
        fastxent.cross_entropy(z, np.ma.masked_array(p, mask=p > 0.5), axis=1)
    with pytest.raises(TypeError, match=r"^target is a masked array"):
        fastxent.cross_entropy(z, np.ma.masked_array(np.zeros((2, 3), int)), axis=1)

    class TorchLike:  # a torch tensor that requires grad, as fastxent sees one
        requires_grad = True

        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("Can't call numpy() on Tensor that requires grad.")

    TorchLike.__module__ = "torch"
    with pytest.raises(TypeError, match=r"logits\.detach\(\)"):
        fastxent.log_softmax(TorchLike(), axis=0)
    with pytest.raises(TypeError, match=r"target\.detach\(\)"):
        fastxent.cross_entropy_grad(z, TorchLike(), axis=1)


def test_no_class_on_the_axis():
    with pytest.raises(ValueError, match=r"at least one class \(m >= 1\) on axis 1"):
        fastxent.softmax(np.zeros((2, 0, 3)), axis=1)


def test_wrong_target_shape_hints_at_axis(rng):
    z = make_logits(rng, (2, 5, 3))
    # PyTorch's (N, C, L) layout without axis=: the message says to pass axis=1.
    with pytest.raises(ValueError, match=r"got shape \(2, 3\)\..*pass axis=1\.") as info:
        fastxent.cross_entropy(z, np.zeros((2, 3), int))
    assert "target must have shape (2, 5) (class indices) or (2, 5, 3)" in str(info.value)
    # With an axis given, the expected shapes are those of that axis.
    match = r"shape \(5, 3\) .*on axis=0; got shape \(2, 3\)\..*axis=1"
    with pytest.raises(ValueError, match=match):
        fastxent.cross_entropy_grad(z, np.zeros((2, 3), int), axis=0)
    with pytest.raises(ValueError, match=r"without the last axis.*axis=-1 \(the default\)"):
        fastxent.cross_entropy_with_grad(z, np.zeros((2, 5), int), axis=1)
    # No axis fits: no hint.
    with pytest.raises(ValueError, match=r"got shape \(4,\)\.$"):
        fastxent.cross_entropy(z, np.zeros(4, int))


def test_no_axis_hint_where_there_is_no_axis_parameter(rng):
    # linear_cross_entropy has no axis=: its target message does not suggest one.
    x = make_logits(rng, (4, 3))
    w = make_logits(rng, (6, 3))
    with pytest.raises(ValueError, match=r"target must have shape \(4,\)") as info:
        fastxent.linear_cross_entropy(x, w, np.zeros(6, int))
    assert "axis=" not in str(info.value)


# ---- arbitrary shapes and axes ----


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
)
def test_any_shape_any_axis(shape, data, dtype):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    rng = np.random.default_rng(len(shape) * 7 + axis)
    z = make_logits(rng, shape, dtype)
    zl = _last(z, axis)
    p = fastxent.softmax(z, axis=axis)
    assert p.shape == shape and p.flags.c_contiguous
    assert_close(np.moveaxis(p, axis, -1), ref.softmax(zl), dtype, what="softmax")
    y = make_labels(rng, zl.shape[:-1], shape[axis])
    loss, grad = fastxent.cross_entropy_with_grad(z, y, axis=axis, reduction="sum")
    expected_loss, expected_grad = ref.cross_entropy(zl, y, reduction="sum")
    assert_loss_close(loss, expected_loss, zl, dtype, "sum")
    assert_grad_close(np.moveaxis(grad, axis, -1), expected_grad, dtype)
