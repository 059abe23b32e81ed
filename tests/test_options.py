"""Loss options: weight, sample_weight, ignore_index,
label_smoothing, z_loss, softcap -- each alone and combined, for all three
functions, both dtypes, every reduction and both target kinds, against the
float64 reference, finite differences, and the semantics they promise
(PyTorch's for weight/ignore_index/label_smoothing, np.average's for
sample_weight)."""

import numpy as np
import pytest
import reference as ref
from helpers import (
    REDUCTIONS,
    assert_bitwise,
    check_cross_entropy,
    make_labels,
    make_logits,
    make_probs,
)
from hypothesis import given
from hypothesis import strategies as st

import fastxent

N, M = 7, 6


def options_for(name, rng, n=N, m=M):
    """A representative value of each option (and all of them together)."""
    w = rng.uniform(0.2, 2.0, m)
    w[1] = 0.0  # a zero class weight
    s = rng.uniform(0.0, 3.0, n)
    s[0] = 0.0  # a zero sample weight
    table = {
        "plain": {},
        "weight": dict(weight=w),
        "sample_weight": dict(sample_weight=s),
        "ignore_index": dict(ignore_index=2),
        "label_smoothing": dict(label_smoothing=0.3),
        "z_loss": dict(z_loss=0.05),
        "softcap": dict(softcap=2.5),
        "all": dict(
            weight=w,
            sample_weight=s,
            ignore_index=-1,
            label_smoothing=0.2,
            z_loss=1e-2,
            softcap=4.0,
        ),
    }
    return dict(table[name])


OPTIONS = (
    "plain",
    "weight",
    "sample_weight",
    "ignore_index",
    "label_smoothing",
    "z_loss",
    "softcap",
    "all",
)


def labels_with_ignored(rng, n, m, ignore):
    y = make_labels(rng, (n,), m)
    if ignore != -100:
        y[1::3] = ignore
    return y


def target_for(kind, rng, options, n=N, m=M, dtype=np.float64):
    if kind == "probs":
        options.pop("ignore_index", None)
        return make_probs(rng, (n, m), dtype)
    return labels_with_ignored(rng, n, m, options.get("ignore_index", -100)).astype(kind)


# Few classes with class indices take the kernels' row-tile path (blocks of
# 64 rows; 70 rows cross a block boundary), many classes the row path.
SHAPES = [(70, 6), (9, 70)]


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", ["int32", "int64", "probs"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_option_vs_reference(name, dtype, reduction, target_kind, shape, rng):
    n, m = shape
    opts = options_for(name, rng, n=n, m=m)
    t = target_for(target_kind, rng, opts, n=n, m=m, dtype=dtype)
    z = make_logits(rng, (n, m), dtype)
    if "label_smoothing" not in opts or "weight" in opts:
        # Mask class 1 in every 4th row (with smoothing, only where its
        # weight is 0: smoothing puts mass on every class).
        z[::4, 1] = -np.inf
        if target_kind == "probs":
            t[::4, 1] = 0
        else:
            t[::4][t[::4] == 1] = 0
    check_cross_entropy(z, t, reduction=reduction, **opts)


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_option_batch_shape(name, reduction, rng):
    """Options with (batch, seq, vocab) logits: sample_weight has the batch
    shape; results equal those of the flattened problem."""
    opts = options_for(name, rng, n=12)
    if "sample_weight" in opts:
        opts["sample_weight"] = opts["sample_weight"].reshape(3, 4)
    y = labels_with_ignored(rng, 12, M, opts.get("ignore_index", -100)).reshape(3, 4)
    z = make_logits(rng, (3, 4, M), np.float32)
    loss, grad = check_cross_entropy(z, y, reduction=reduction, **opts)
    flat = dict(opts)
    if "sample_weight" in flat:
        flat["sample_weight"] = flat["sample_weight"].reshape(12)
    loss2, grad2 = fastxent.cross_entropy_with_grad(
        z.reshape(12, M), y.reshape(12), reduction=reduction, **flat
    )
    assert_bitwise(np.reshape(loss, -1), np.reshape(loss2, -1))
    assert_bitwise(grad.reshape(12, M), grad2)


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", ["int64", "probs"])
@pytest.mark.parametrize("shape", [(4, 5), (3, 66)], ids=str)
def test_option_finite_differences(name, reduction, target_kind, shape, rng):
    n, m = shape
    opts = options_for(name, rng, n=n, m=m)
    t = target_for(target_kind, rng, opts, n=n, m=m)
    z = make_logits(rng, (n, m), scale=2.0)

    def f(x):
        return np.sum(fastxent.cross_entropy(x, t, reduction=reduction, **opts))

    fd = ref.finite_difference_grad(f, z)
    grad = fastxent.cross_entropy_grad(z, t, reduction=reduction, **opts)
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-9)
    _, rgrad = ref.cross_entropy(z, t, reduction=reduction, **opts)
    np.testing.assert_allclose(rgrad, fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", ["all", "softcap", "z_loss", "weight"])
@pytest.mark.parametrize("target_kind", ["int64", "probs"])
def test_option_in_place(name, target_kind, rng):
    opts = options_for(name, rng)
    t = target_for(target_kind, rng, opts)
    z = make_logits(rng, (N, M), np.float32)
    z[3, 4] = -np.inf
    loss0, grad0 = fastxent.cross_entropy_with_grad(z, t, **opts)
    loss, got = fastxent.cross_entropy_with_grad(z, t, out=z, **opts)
    assert got is z
    assert_bitwise(loss, loss0)
    assert_bitwise(z, grad0)


# ---- semantics ----


def test_class_weight_semantics(rng):
    """PyTorch: loss_i = w[y_i] nll_i; "mean" divides by sum w[y_i]."""
    z = make_logits(rng, (9, 4))
    y = make_labels(rng, (9,), 4)
    w = np.array([0.5, 2.0, 1.0, 3.0])
    nll = fastxent.cross_entropy(z, y, reduction="none")
    np.testing.assert_allclose(
        fastxent.cross_entropy(z, y, weight=w, reduction="none"), w[y] * nll, rtol=1e-14
    )
    np.testing.assert_allclose(
        fastxent.cross_entropy(z, y, weight=w), np.sum(w[y] * nll) / np.sum(w[y]), rtol=1e-14
    )
    # Probability targets: -sum_c w_c Y_c L_c, "mean" divides by n.
    Y = make_probs(rng, (9, 4))
    per = -np.sum(w * Y * ref.log_softmax(z), axis=1)
    np.testing.assert_allclose(
        fastxent.cross_entropy(z, Y, weight=w, reduction="none"), per, rtol=1e-13
    )
    np.testing.assert_allclose(fastxent.cross_entropy(z, Y, weight=w), per.mean(), rtol=1e-13)


@pytest.mark.parametrize("target_kind", ["int64", "probs"])
def test_sample_weight_is_np_average(target_kind, rng):
    z = make_logits(rng, (8, 5))
    t = make_labels(rng, (8,), 5) if target_kind == "int64" else make_probs(rng, (8, 5))
    s = rng.uniform(0, 2, 8)
    per = fastxent.cross_entropy(z, t, reduction="none")
    np.testing.assert_allclose(
        fastxent.cross_entropy(z, t, sample_weight=s), np.average(per, weights=s), rtol=1e-14
    )
    np.testing.assert_allclose(
        fastxent.cross_entropy(z, t, sample_weight=s, reduction="none"), s * per, rtol=1e-14
    )
    np.testing.assert_allclose(
        fastxent.cross_entropy_grad(z, t, sample_weight=s, reduction="sum"),
        s[:, None] * fastxent.cross_entropy_grad(z, t, reduction="sum"),
        rtol=1e-14,
    )


@pytest.mark.parametrize("target_kind", ["int64", "probs"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_integer_sample_weight_is_repetition(target_kind, reduction, rng):
    """Weight k is the same as k copies of the sample (scikit-learn)."""
    z = make_logits(rng, (5, 4))
    t = make_labels(rng, (5,), 4) if target_kind == "int64" else make_probs(rng, (5, 4))
    s = np.array([2, 0, 1, 3, 1])
    w = np.array([1.0, 0.5, 2.0, 1.5])
    rep = np.repeat(np.arange(5), s)
    opts = dict(weight=w, label_smoothing=0.1, z_loss=0.01, reduction=reduction)
    loss, grad = fastxent.cross_entropy_with_grad(z, t, sample_weight=s, **opts)
    loss_r, grad_r = fastxent.cross_entropy_with_grad(z[rep], t[rep], **opts)
    grad_sum = np.zeros_like(grad)
    np.add.at(grad_sum, rep, grad_r)
    if reduction == "none":
        loss_sum = np.zeros(5)
        np.add.at(loss_sum, rep, loss_r)
        np.testing.assert_allclose(loss, loss_sum, rtol=1e-13)
    else:
        np.testing.assert_allclose(loss, loss_r, rtol=1e-13)
    np.testing.assert_allclose(grad, grad_sum, rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ignore", [-100, -1, 0, 3, 2**40])
def test_ignore_index(dtype, ignore, rng):
    z = make_logits(rng, (8, 5), dtype)
    y = make_labels(rng, (8,), 5)
    y[y == ignore] = 4 if ignore != 4 else 1
    keep = np.ones(8, dtype=bool)
    keep[[1, 4, 5]] = False
    y[~keep] = ignore
    z[4] = np.nan  # an ignored row's logits are never looked at
    z[5, 0] = -np.inf
    w = rng.uniform(0.5, 2.0, 5)
    s = rng.uniform(0.5, 2.0, 8)
    opts = dict(ignore_index=ignore, weight=w, sample_weight=s, label_smoothing=0.1, z_loss=1e-3)
    loss, grad = check_cross_entropy(z, y, reduction="none", **opts)
    assert np.all(loss[~keep] == 0)
    assert np.all(grad[~keep] == 0)
    kept = fastxent.cross_entropy(
        z[keep], y[keep], reduction="sum", **dict(opts, sample_weight=s[keep])
    )
    mean = check_cross_entropy(z, y, reduction="mean", **opts)[0]
    np.testing.assert_allclose(
        mean, kept / np.sum(s[keep] * w[y[keep]]), rtol=1e-6 if dtype == np.float32 else 1e-14
    )


@pytest.mark.parametrize("what", ["ignored", "weight", "sample_weight", "cancelling"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_total_weight_mean_follows_pytorch(what, dtype, rng):
    """A zero "mean" denominator divides as IEEE (and PyTorch) does: 0 / 0 is
    NaN, x / 0 is +-inf; the gradient is zero in ignored rows and non-finite
    in every kept row (PyTorch's exact pattern: test_torch_parity)."""
    z = make_logits(rng, (4, 3), dtype)
    y = np.array([0, 1, 1, 0])
    opts = {
        "ignored": dict(ignore_index=0, weight=[1.0, 0.0, 1.0]),
        "weight": dict(weight=[0.0, 0.0, 1.0]),
        "sample_weight": dict(sample_weight=np.zeros(4)),
        "cancelling": dict(weight=[1.0, -1.0, 1.0]),  # 1 - 1 - 1 + 1 = 0
    }[what]
    if what == "ignored":
        y = np.array([0, 0, 0, 0])
    loss, grad = check_cross_entropy(z, y, **opts)
    assert loss.dtype == dtype
    total = check_cross_entropy(z, y, reduction="sum", **opts)[0]
    if what == "ignored":
        assert np.isnan(loss) and np.all(grad == 0) and total == 0
    elif what == "cancelling":
        assert loss == np.copysign(np.inf, total) and total != 0
        assert not np.isfinite(grad).any()
    else:
        assert np.isnan(loss) and total == 0
        assert not np.isfinite(grad).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("zero", ["weight", "sample_weight"])
def test_zero_total_weight_gradient_is_zero_only_where_ignored(dtype, zero, rng):
    """What the README's zero-denominator sentence must say: a "mean" over
    zero total weight is NaN; an ignored row's gradient is 0, a kept row of
    weight 0 has a NaN gradient row (0 / 0), as in PyTorch."""
    z = make_logits(rng, (5, 3), dtype)
    y = np.array([2, 0, 2, 1, 2])  # rows 0, 2, 4 ignored
    opts = dict(ignore_index=2)
    if zero == "weight":
        opts["weight"] = [0.0, 0.0, 1.0]
    else:
        opts["sample_weight"] = np.zeros(5)
    loss, grad = fastxent.cross_entropy_with_grad(z, y, **opts)
    assert np.isnan(loss)
    assert np.all(grad[[0, 2, 4]] == 0)
    assert np.isnan(grad[[1, 3]]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_negative_class_weights_as_pytorch(dtype):
    """PyTorch accepts negative class weights (its tests draw them from
    [-9, 9]); the issue's example, checked against torch 2.13's values."""
    z = np.array([[1.0, 2, 3], [0, 0, 1]], dtype=dtype)
    w = [1.0, -1.0, 2.0]
    tol = 1e-6 if dtype == np.float32 else 1e-12
    per, _ = check_cross_entropy(z, [0, 1], weight=w, reduction="none")
    np.testing.assert_allclose(per, [2.4076059644443806, -1.551444713932051], rtol=tol)
    total, _ = check_cross_entropy(z, [0, 1], weight=w, reduction="sum")
    assert total == pytest.approx(0.8561612505123295, rel=tol)
    # denominator 1 - 1 + 2 = 2 (labels 0, 1, 2), then -1 + 2 = 1 (labels 1, 2)
    for labels, denom in (([0, 1, 2], 2.0), ([1, 2, 2], 3.0), ([1, 1, 0], -1.0)):
        zz = np.array([[1.0, 2, 3], [0, 0, 1], [-1, 2, 0.5]], dtype=dtype)
        mean, _ = check_cross_entropy(zz, labels, weight=w)
        s, _ = check_cross_entropy(zz, labels, weight=w, reduction="sum")
        assert mean == pytest.approx(s / denom, rel=tol)


@pytest.mark.parametrize("kind", ["labels", "probs"])
def test_negative_sample_weights_as_numpy_average(kind, rng):
    """scikit-learn's semantics: "mean" is np.average of the per-sample
    losses with the (possibly negative) sample weights."""
    z = make_logits(rng, (6, 4))
    t = make_labels(rng, (6,), 4) if kind == "labels" else make_probs(rng, (6, 4))
    s = np.array([1.0, -0.5, 2.0, 0.25, -1.0, 3.0])
    per = fastxent.cross_entropy(z, t, reduction="none")
    mean, _ = check_cross_entropy(z, t, sample_weight=s)
    assert mean == pytest.approx(np.average(per, weights=s), rel=1e-12)


def test_label_smoothing_labels_equal_smoothed_one_hot(rng):
    """Without class weights, smoothing class indices equals the probability
    target (1 - eps) onehot + eps / m, and smoothing a probability target
    equals passing the smoothed target."""
    z = make_logits(rng, (6, 5))
    y = make_labels(rng, (6,), 5)
    eps = 0.25
    smoothed = (1 - eps) * np.eye(5)[y] + eps / 5
    for reduction in REDUCTIONS:
        a = fastxent.cross_entropy_with_grad(z, y, label_smoothing=eps, reduction=reduction)
        b = fastxent.cross_entropy_with_grad(z, smoothed, reduction=reduction)
        c = fastxent.cross_entropy_with_grad(
            z, np.eye(5)[y], label_smoothing=eps, reduction=reduction
        )
        for x, x2 in zip(a, b, strict=True):
            np.testing.assert_allclose(x, x2, rtol=1e-13, atol=1e-16)
        for x, x2 in zip(c, b, strict=True):
            np.testing.assert_allclose(x, x2, rtol=1e-13, atol=1e-16)


def test_full_label_smoothing_ignores_labels(rng):
    z = make_logits(rng, (5, 4))
    a = fastxent.cross_entropy_with_grad(z, make_labels(rng, (5,), 4), label_smoothing=1.0)
    b = fastxent.cross_entropy_with_grad(z, make_labels(rng, (5,), 4), label_smoothing=1.0)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-15)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-15, atol=1e-17)


@pytest.mark.parametrize("target_kind", ["int64", "probs"])
def test_z_loss_adds_lse_squared(target_kind, rng):
    """z_loss adds zl * lse^2 per sample, scaled by the sample weight but not
    by the class weight, and nothing for ignored samples."""
    z = make_logits(rng, (6, 4))
    t = make_labels(rng, (6,), 4) if target_kind == "int64" else make_probs(rng, (6, 4))
    s = rng.uniform(0.5, 2, 6)
    w = rng.uniform(0.5, 2, 4)
    zl = 0.3
    lse = ref.logsumexp(z)
    base = fastxent.cross_entropy(z, t, weight=w, sample_weight=s, reduction="none")
    with_z = fastxent.cross_entropy(z, t, weight=w, sample_weight=s, z_loss=zl, reduction="none")
    np.testing.assert_allclose(with_z - base, s * zl * lse**2, rtol=1e-12)
    g0 = fastxent.cross_entropy_grad(z, t, reduction="sum")
    g1 = fastxent.cross_entropy_grad(z, t, z_loss=zl, reduction="sum")
    np.testing.assert_allclose(
        g1 - g0, 2 * zl * lse[:, None] * ref.softmax(z), rtol=1e-12, atol=1e-15
    )
    if target_kind == "int64":
        y = t.copy()
        y[2] = -100
        per = fastxent.cross_entropy(z, y, z_loss=zl, reduction="none")
        assert per[2] == 0


@pytest.mark.parametrize("target_kind", ["int64", "probs"])
def test_softcap_is_tanh_of_logits(target_kind, rng):
    z = make_logits(rng, (6, 5), scale=8.0)
    t = make_labels(rng, (6,), 5) if target_kind == "int64" else make_probs(rng, (6, 5))
    c = 5.0
    capped = c * np.tanh(z / c)
    loss, grad = fastxent.cross_entropy_with_grad(z, t, softcap=c, reduction="none")
    loss_c, grad_c = fastxent.cross_entropy_with_grad(capped, t, reduction="none")
    np.testing.assert_allclose(loss, loss_c, rtol=1e-13)
    np.testing.assert_allclose(grad, grad_c * (1 - np.tanh(z / c) ** 2), rtol=1e-12, atol=1e-16)
    # Huge logits saturate: finite loss, zero gradient where tanh is flat.
    z[0, :] = [1e30, -1e30, 1e30, 0.0, -np.inf]
    loss, grad = check_cross_entropy(z, t, reduction="none", softcap=c)
    assert np.isfinite(loss[0])
    assert np.all(grad[0, [0, 1, 2, 4]] == 0)


@pytest.mark.parametrize("name", ["weight", "sample_weight", "label_smoothing", "z_loss"])
def test_neutral_option_values(name, rng):
    """weight=ones, sample_weight=ones, label_smoothing=0, z_loss=0 change nothing."""
    z = make_logits(rng, (5, 6))
    y = make_labels(rng, (5,), 6)
    neutral = {
        "weight": np.ones(6),
        "sample_weight": np.ones(5),
        "label_smoothing": 0.0,
        "z_loss": 0.0,
    }[name]
    for reduction in REDUCTIONS:
        a = fastxent.cross_entropy_with_grad(z, y, reduction=reduction)
        b = fastxent.cross_entropy_with_grad(z, y, reduction=reduction, **{name: neutral})
        np.testing.assert_allclose(a[0], b[0], rtol=1e-15)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-15, atol=1e-18)


def test_option_arrays_as_lists_and_other_dtypes(rng):
    z = make_logits(rng, (4, 3))
    y = np.array([0, 2, 1, 1])
    a = fastxent.cross_entropy_with_grad(z, y, weight=[1, 2, 3], sample_weight=[1, 0, 2, 1])
    b = fastxent.cross_entropy_with_grad(
        z, y, weight=np.array([1, 2, 3], np.float32), sample_weight=np.array([1, 0, 2, 1], np.int8)
    )
    assert_bitwise(a[0], b[0])
    assert_bitwise(a[1], b[1])
    check_cross_entropy(z, y, weight=[1, 2, 3], sample_weight=[1, 0, 2, 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_total_weight(dtype):
    """A subnormal total weight under "mean" still gives the gradient of a
    weighted mean (1/denominator would overflow); the loss is np.average's."""
    z = np.array([[0.0, 0.0], [1.0, 2.0]], dtype=dtype)
    s = [5e-324, 0.0]
    loss, grad = check_cross_entropy(z, [0, 1], sample_weight=s)
    np.testing.assert_array_equal(grad, np.array([[-0.5, 0.5], [0.0, 0.0]], dtype=dtype))
    per = fastxent.cross_entropy(z.astype(np.float64), [0, 1], reduction="none")
    assert loss == dtype(np.average(per, weights=s))


# ---- hypothesis over option combinations ----


@st.composite
def option_problems(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = draw(st.sampled_from([(0,), (1,), (3,), (6,), (2, 3)]))
    m = draw(st.integers(1, 12))
    shape = batch + (m,)
    n = int(np.prod(batch))
    vals = st.one_of(
        st.floats(-15, 15, width=32), st.sampled_from([0.0, -np.inf, 1e30, -1e30, 60.0])
    )
    z = (
        np.array(draw(st.lists(vals, min_size=n * m, max_size=n * m)), dtype=np.float64)
        .reshape(shape)
        .astype(dtype)
    )
    probs = draw(st.booleans())
    opts = {}
    nonneg = st.one_of(st.just(0.0), st.floats(0.0, 4.0))
    if draw(st.booleans()):
        # Class weights are used in the compute dtype, and positive weights
        # that underflow to 0 there are rejected (tested in test_validation).
        w = np.array(draw(st.lists(nonneg, min_size=m, max_size=m)))
        opts["weight"] = np.where(w < np.finfo(dtype).tiny, 0.0, w)
    if draw(st.booleans()):
        opts["sample_weight"] = np.array(draw(st.lists(nonneg, min_size=n, max_size=n))).reshape(
            batch
        )
    if draw(st.booleans()):
        opts["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    if draw(st.booleans()):
        opts["z_loss"] = draw(st.sampled_from([1e-4, 0.1, 1.0]))
    if draw(st.booleans()):
        opts["softcap"] = draw(st.sampled_from([0.5, 3.0, 30.0, 1e6]))
    if probs:
        mass = st.one_of(st.just(0.0), st.floats(0.0, 1.0, width=32))
        t = np.array(draw(st.lists(mass, min_size=n * m, max_size=n * m)), dtype=dtype).reshape(
            shape
        )
    else:
        ignore = draw(st.sampled_from([-100, -1, 0]))
        if ignore != -100:
            opts["ignore_index"] = ignore
        choices = st.one_of(st.integers(0, m - 1), st.just(ignore))
        t = np.array(
            draw(st.lists(choices, min_size=n, max_size=n)),
            dtype=draw(st.sampled_from([np.int32, np.int64])),
        ).reshape(batch)
    return z, t, opts


@given(problem=option_problems(), reduction=st.sampled_from(REDUCTIONS))
def test_property_options_vs_reference(problem, reduction):
    z, t, opts = problem
    check_cross_entropy(z, t, reduction=reduction, **opts)


@st.composite
def array_problems(draw):
    """Bigger problems built by NumPy from a drawn seed: up to 200 rows (so
    several 64-row tiles of the small-m path and a last partial tile) and up
    to 300 classes (the row path), with sprinkled specials (-inf masks,
    +-1e30, NaN), ties, and any option combination."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.one_of(st.integers(0, 200), st.sampled_from([63, 64, 65, 128, 129])))
    m = draw(st.one_of(st.integers(1, 80), st.sampled_from([1, 2, 3, 8, 16, 63, 64, 65, 257, 300])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    z = rng.standard_normal((n, m)) * draw(st.sampled_from([0.1, 3.0, 30.0]))
    if draw(st.booleans()):
        z = np.round(z)  # ties
    specials = draw(
        st.lists(
            st.sampled_from([-np.inf, 1e30, -1e30, np.nan, 80.0, -120.0]), min_size=1, max_size=3
        )
    )
    spot = rng.random((n, m)) < draw(st.sampled_from([0.0, 0.02, 0.3]))
    z[spot] = rng.choice(specials, int(spot.sum()))
    z = z.astype(dtype)
    opts = {}
    if draw(st.booleans()):
        opts["weight"] = rng.uniform(0, 2, m) * (rng.random(m) < 0.9)
    if draw(st.booleans()):
        opts["sample_weight"] = rng.uniform(0, 2, n) * (rng.random(n) < 0.9)
    if draw(st.booleans()):
        opts["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 1.0]))
    if draw(st.booleans()):
        opts["z_loss"] = draw(st.sampled_from([1e-4, 0.5]))
    if draw(st.booleans()):
        opts["softcap"] = draw(st.sampled_from([1.0, 30.0]))
    if draw(st.booleans()):
        t = (rng.random((n, m)) * (rng.random((n, m)) < 0.7)).astype(dtype)
    else:
        t = rng.integers(0, m, n).astype(draw(st.sampled_from([np.int32, np.int64])))
        ignore = draw(st.sampled_from([-100, 0]))
        if ignore != -100:
            opts["ignore_index"] = ignore
        t[rng.random(n) < 0.2] = ignore
    return z, t, opts


@given(
    problem=array_problems(),
    reduction=st.sampled_from(REDUCTIONS),
    num_threads=st.sampled_from([1, 2]),
)
def test_property_larger_problems_vs_reference(problem, reduction, num_threads):
    z, t, opts = problem
    check_cross_entropy(z, t, reduction=reduction, num_threads=num_threads, **opts)


@pytest.mark.parametrize("m", [5, 70])  # the small-m tile kernel and the row kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_denominator_gradient_pattern_is_pytorchs(m, dtype, rng):
    """Weights cancelling to a zero "mean" denominator: PyTorch's backward
    gives, in each kept row, +-inf (the sign of the row's weight) in every
    class other than the label, NaN at the label and where a probability is 0
    (0 * inf), and NaN everywhere with label smoothing (0 * inf in the
    smoothing term of a zero-weight class).  Both kernels reproduce it (the
    fixtures check m = 5 against torch itself)."""
    z = make_logits(rng, (6, m), dtype)
    z[0, 3] = -np.inf  # a masked class: probability 0
    y = np.array([0, 1, 0, 1, 0, 1])
    w = np.zeros(m)
    w[0], w[1] = 1.5, -1.5
    loss, g = fastxent.cross_entropy_with_grad(z, y, weight=w)
    assert np.isnan(loss) or np.isinf(loss)
    sign = np.where(y == 0, 1.0, -1.0)
    expected = np.broadcast_to(sign[:, None] * np.inf, (6, m)).copy()
    expected[np.arange(6), y] = np.nan
    expected[0, 3] = np.nan
    np.testing.assert_array_equal(g, expected)
    _, g_smooth = fastxent.cross_entropy_with_grad(z, y, weight=w, label_smoothing=0.1)
    assert np.isnan(g_smooth).all()


@pytest.mark.parametrize("m", [4, 70])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("in_place", [False, True])
def test_fully_masked_row_without_target_mass_is_no_example(m, dtype, in_place, rng):
    """A row whose logits are all -inf and whose target mass is zero (a
    padded example) has loss 0 and gradient 0; PyTorch and the plain
    arithmetic give NaN (-inf - -inf).  Rows of all -inf *with* target mass
    stay NaN, and so does a masked row holding a NaN."""
    z = make_logits(rng, (5, m), dtype)
    z[[1, 2, 4]] = -np.inf
    z[4, 0] = np.nan
    probs = make_probs(rng, (5, m), dtype)
    probs[[1, 4]] = 0.0  # rows 1 and 4 carry no mass; row 2 does
    w = np.ones(m)
    w[2] = 0.0
    labels = np.array([0, 2, 1, 0, 2])  # rows 1 and 4: class 2 weighs 0
    for target, kw in ((probs, {}), (labels, {"weight": w})):
        for reduction in ("none", "sum", "mean"):
            zz = z.copy()
            out = zz if in_place else None
            loss, g = fastxent.cross_entropy_with_grad(
                zz, target, reduction=reduction, out=out, **kw
            )
            g = np.asarray(g)
            assert np.all(g[1] == 0), (reduction, target.ndim)
            assert np.isnan(g[2]).all() and np.isnan(g[4]).all()
            assert np.isfinite(g[[0, 3]]).all()
            if reduction == "none":
                assert loss[1] == 0 and np.isnan(loss[2]) and np.isnan(loss[4])
        # With the NaN and the massed row removed, the loss is finite and
        # equals the loss of the other rows alone (row 1 adds nothing).
        keep = [0, 1, 3]
        s_all = fastxent.cross_entropy(z[keep], target[keep], reduction="sum", **kw)
        s_two = fastxent.cross_entropy(z[[0, 3]], target[[0, 3]], reduction="sum", **kw)
        assert s_all == s_two


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "options",
    [
        {},
        dict(weight=[0.3, 2.0]),
        dict(weight=[0.0, 1.5], label_smoothing=0.2),
        dict(sample_weight="s", z_loss=0.01),
        dict(ignore_index=1),
        dict(label_smoothing=1.0),
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_two_classes(dtype, options, reduction, rng):
    """m = 2 has a kernel of its own (one exp and one log1p a row, on the
    interleaved logits): every option against the reference, over several
    blocks of rows, with extreme and masked logits among them."""
    n = 300
    z = make_logits(rng, (n, 2), dtype, scale=8.0)
    z[0] = [-np.inf, 1.0]
    z[1] = [50.0, -50.0]
    z[2] = [3.0, 3.0]
    z[3] = [np.nan, 0.0]
    y = make_labels(rng, (n,), 2)
    y[0] = 1
    opts = dict(options)
    if opts.get("sample_weight") == "s":
        opts["sample_weight"] = rng.uniform(0.0, 3.0, n)
    _, grad = check_cross_entropy(z, y, reduction=reduction, **opts)
    # in place
    zz = z.copy()
    fastxent.cross_entropy_with_grad(zz, y, reduction=reduction, out=zz, **opts)
    assert zz.tobytes() == grad.tobytes()


def test_two_classes_unusual_blocks_take_the_general_kernel(rng):
    """Blocks with a fully masked row, a +inf logit or a zero 'mean'
    denominator go to the tile kernel: same results as with m = 2 logits
    padded to m = 3 by a class that can never win (-inf, zero weight)."""
    z = make_logits(rng, (200, 2))
    z[70] = -np.inf
    z[150, 0] = np.inf
    y = make_labels(rng, (200,), 2)
    w = np.array([1.0, 0.0])
    y[70] = 1  # a fully masked row whose class weighs 0: no example
    _, grad = check_cross_entropy(z, y, weight=w, reduction="sum")
    assert np.all(grad[70] == 0) and np.isnan(grad[150]).all()
    # weights that cancel: a zero denominator, the general kernel's inf/NaN pattern
    y0 = np.zeros(200, dtype=np.int64)
    y0[:100] = 1
    _, grad0 = fastxent.cross_entropy_with_grad(z[:, ::-1].copy(), y0, weight=[1.0, -1.0])
    assert not np.isfinite(grad0[:100]).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ignore_index_none_ignores_nothing(dtype, rng):
    """ignore_index=None is the real "off": every label counts, -100 is then
    an out-of-range label, and so is the int64 value the kernels use for
    "off" internally."""
    z = make_logits(rng, (5, 4), dtype)
    y = np.array([0, 1, 2, 3, 1])
    np.testing.assert_array_equal(
        fastxent.cross_entropy(z, y, ignore_index=None, reduction="none"),
        fastxent.cross_entropy(z, y, reduction="none"),
    )
    for bad in (-100, -(2**63)):
        y[2] = bad
        with pytest.raises(ValueError, match=rf"outside \[0, 4\): {bad} at flat position 2"):
            fastxent.cross_entropy_with_grad(z, y, ignore_index=None)
        with pytest.raises(ValueError, match="outside"):
            fastxent.linear_cross_entropy(z, np.eye(4, dtype=dtype), y, ignore_index=None)
    # with probabilities it is accepted (nothing to ignore there)
    fastxent.cross_entropy(z, np.full((5, 4), 0.25, dtype), ignore_index=None)
