"""fastxent.objectives.softmax_grad_hess: the per-sample gradient
and Hessian diagonal against the float64 reference (``reference.py``:
``cross_entropy(reduction="none")`` for the gradient, the textbook Hessian
``s Q (diag(P) - P P^T)`` for its diagonal), 4th-order finite differences,
every option, both target kinds, dtypes, layouts, thread counts, and errors.
The XGBoost and LightGBM objectives are in test_objectives_boosters.py."""

import subprocess
import sys

import numpy as np
import pytest
import reference as ref
from helpers import (
    LAYOUTS,
    TOL,
    assert_bitwise,
    assert_close,
    make_labels,
    make_logits,
    make_probs,
    row_scale,
    with_layout,
)
from hypothesis import given
from hypothesis import strategies as st

import fastxent
from fastxent.objectives import lightgbm_multiclass, softmax_grad_hess, xgboost_multiclass

OPTIONS = ("plain", "weight", "sample_weight", "label_smoothing", "all")


def options_for(name, rng, n, m):
    w = rng.uniform(0.2, 2.0, m)
    w[0] = 0.0  # a zero class weight
    s = rng.uniform(0.0, 3.0, n)
    s[0] = 0.0  # a zero sample weight
    s[-1] = -0.5  # negative sample weights are allowed
    table = {
        "plain": {},
        "weight": dict(weight=w),
        "sample_weight": dict(sample_weight=s),
        "label_smoothing": dict(label_smoothing=0.3),
        "all": dict(weight=w, sample_weight=s, label_smoothing=0.2),
    }
    return table[name]


def check_grad_hess(logits, target, num_threads=None, **options):
    """softmax_grad_hess against the reference: dtype, shape, layout of the
    results, gradient and Hessian diagonal to the compute dtype's tolerance
    (an absolute floor scaled by what rounding can disturb: ``|s| Q`` times
    ``1 + |z|`` relative in ``P``; probabilities below the dtype's smallest
    normal number may come out as 0)."""
    z = np.asarray(logits)
    cd = np.dtype(np.float64 if z.dtype.kind in "iu" or z.dtype.itemsize == 8 else np.float32)
    with np.errstate(all="ignore"):
        grad, hess = softmax_grad_hess(logits, target, num_threads=num_threads, **options)
        ref_opts = dict(options)
        if options.get("weight") is not None:  # class weights are used in the compute dtype
            ref_opts["weight"] = np.asarray(options["weight"], np.float64).astype(cd)
        _, eg = ref.cross_entropy(logits, target, reduction="none", **ref_opts)
        eh = ref.cross_entropy_hessian_diag(logits, target, **ref_opts)
    for a in (grad, hess):
        assert a.dtype == cd and a.shape == z.shape
        assert a.flags.c_contiguous and a.flags.writeable
    m = z.shape[-1]
    n = z.size // m if m else 0
    zz = z.reshape(n, m).astype(np.float64)
    t = np.asarray(target)
    w = np.abs(np.asarray(ref_opts.get("weight", np.ones(m)), np.float64))
    s = np.abs(np.asarray(options.get("sample_weight", np.ones(n)), np.float64)).reshape(n)
    mass = np.ones(n) if t.shape == z.shape[:-1] else np.abs(t.reshape(n, m)).sum(axis=1) + 1
    sq = (s * w.max(initial=0.0) * mass)[:, None]
    p = ref.softmax(zz).reshape(n, m) if n else np.zeros((0, m))
    rs = row_scale(zz)[:, None] if n else np.zeros((0, 1))
    assert_close(grad.reshape(n, m), eg.reshape(n, m), cd, sq * (1 + rs * p), what="grad")
    tiny = np.finfo(cd).tiny / TOL[cd][1]
    assert_close(hess.reshape(n, m), eh.reshape(n, m), cd, sq * (p * (1 + rs) + tiny), what="hess")
    return grad, hess


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("m", [3, 10, 100])  # tile kernel (m <= 64, labels) and row kernel
def test_against_reference(rng, dtype, kind, option, m):
    n = 67
    z = make_logits(rng, (n, m), dtype)
    t = make_labels(rng, n, m) if kind == "labels" else make_probs(rng, (n, m), dtype)
    check_grad_hess(z, t, **options_for(option, rng, n, m))


@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("option", OPTIONS)
def test_gradient_is_cross_entropy_grad(rng, kind, option):
    """The gradient is bitwise what cross_entropy_grad(reduction="sum")
    returns: the same fused pass, which also writes the Hessian."""
    n, m = 300, 12
    z = make_logits(rng, (n, m), np.float32)
    t = make_labels(rng, n, m) if kind == "labels" else make_probs(rng, (n, m), np.float32)
    opts = options_for(option, rng, n, m)
    grad, _ = softmax_grad_hess(z, t, **opts)
    assert_bitwise(grad, fastxent.cross_entropy_grad(z, t, reduction="sum", **opts))


@given(
    n=st.integers(0, 40),
    m=st.integers(1, 80),
    dtype=st.sampled_from([np.float32, np.float64]),
    kind=st.sampled_from(["labels", "probs"]),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
    smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_against_reference(n, m, dtype, kind, scale, smoothing, weighted, seed):
    rng = np.random.default_rng(seed)
    z = make_logits(rng, (n, m), dtype, scale=scale)
    t = make_labels(rng, n, m) if kind == "labels" else make_probs(rng, (n, m), dtype)
    opts = dict(label_smoothing=smoothing)
    if weighted:
        opts.update(weight=rng.uniform(0.0, 2.0, m), sample_weight=rng.uniform(-1.0, 3.0, n))
    check_grad_hess(z, t, **opts)


def _partial(f, z, i, j, h=1e-4):
    """4th-order central difference of the array ``f(z)`` along ``z[i, j]``."""
    vals = []
    for k in (2, 1, -1, -2):
        zz = z.copy()
        zz[i, j] += k * h
        vals.append(f(zz))
    return (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * h)


@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("option", OPTIONS)
def test_finite_differences(rng, kind, option):
    """grad is the derivative of the reference per-sample loss, hess the
    derivative of grad along the same coordinate (float64)."""
    n, m = 4, 5
    z = make_logits(rng, (n, m), np.float64, scale=1.5)
    t = make_labels(rng, n, m) if kind == "labels" else make_probs(rng, (n, m))
    opts = options_for(option, rng, n, m)
    grad, hess = softmax_grad_hess(z, t, **opts)

    def losses(zz):
        return ref.cross_entropy(zz, t, reduction="none", **opts)[0]

    def grads(zz):
        return softmax_grad_hess(zz, t, **opts)[0]

    for i in range(n):
        for j in range(m):
            dloss = _partial(losses, z, i, j)[i]
            dgrad = _partial(grads, z, i, j)[i, j]
            assert grad[i, j] == pytest.approx(dloss, rel=1e-8, abs=1e-9)
            assert hess[i, j] == pytest.approx(dgrad, rel=1e-8, abs=1e-9)


def test_batch_shapes_and_dtypes(rng):
    z = make_logits(rng, (2, 3, 5), np.float64)
    y = make_labels(rng, (2, 3), 5)
    g, h = check_grad_hess(z, y)
    g2, h2 = softmax_grad_hess(z.reshape(6, 5), y.reshape(6))
    assert_bitwise(g, g2.reshape(2, 3, 5))
    assert_bitwise(h, h2.reshape(2, 3, 5))
    check_grad_hess(z[0, 0], y[0, 0])  # 1-d scores: one sample
    check_grad_hess(np.arange(10).reshape(2, 5), [1, 4])  # integers: in float64
    for label_dtype in (np.int8, np.uint16, np.int32, np.uint64):
        check_grad_hess(z, y.astype(label_dtype))
    g0, h0 = softmax_grad_hess(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert g0.shape == h0.shape == (0, 4) and g0.dtype == np.float32


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", ["labels", "probs"])
def test_layouts(rng, layout, kind):
    n, m = 20, 7
    z = make_logits(rng, (n, m), np.float32)
    t = make_labels(rng, n, m) if kind == "labels" else make_probs(rng, (n, m), np.float32)
    s = rng.uniform(0, 2, n)
    expected = softmax_grad_hess(z, t, sample_weight=s)
    got = softmax_grad_hess(with_layout(z, layout), with_layout(t, layout), sample_weight=s)
    for a, b in zip(got, expected, strict=True):
        assert_bitwise(a, b, layout)


@pytest.mark.parametrize(("n", "m"), [(5_000, 10), (500, 100)])  # parallel tile / row kernel
@pytest.mark.parametrize("kind", ["labels", "probs"])
def test_thread_counts_give_identical_bits(rng, n, m, kind):
    z = make_logits(rng, (n, m), np.float32)
    t = make_labels(rng, n, m) if kind == "labels" else make_probs(rng, (n, m), np.float32)
    opts = dict(weight=rng.uniform(0.5, 2, m), label_smoothing=0.1)
    g1, h1 = check_grad_hess(z, t, num_threads=1, **opts)
    for nt in (2, 3):
        g, h = softmax_grad_hess(z, t, num_threads=nt, **opts)
        assert_bitwise(g, g1, f"grad, {nt} threads")
        assert_bitwise(h, h1, f"hess, {nt} threads")


@pytest.mark.parametrize("m", [6, 100])
def test_masked_classes_and_nan_rows(rng, m):
    z = make_logits(rng, (4, m), np.float64)
    z[0, 1:3] = -np.inf  # masked classes: probability 0, Hessian 0
    z[2, 4] = np.nan  # a NaN row: NaN gradient and Hessian, the others unaffected
    z[3, :] = -np.inf  # fully masked, no target mass (weight 0 on its label)
    y = np.array([0, 1, 2, 3])
    w = np.ones(m)
    w[3] = 0.0
    g, h = check_grad_hess(z, y, weight=w)
    assert np.all(h[0, 1:3] == 0) and np.all(g[0, 1:3] == 0)
    assert np.all(np.isnan(g[2])) and np.all(np.isnan(h[2]))
    assert np.all(g[3] == 0) and np.all(h[3] == 0)
    assert np.all(np.isfinite(g[[0, 1]])) and np.all(np.isfinite(h[[0, 1]]))


def test_extreme_scores():
    z = np.array([[1e30, 0.0, -1e30], [-1e30, -1e30, 1e30]], np.float32)
    g, h = check_grad_hess(z, [0, 1])
    assert np.all(h == 0) and np.all(np.isfinite(g))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((np.zeros((3, 4)), [0, 1, 4]), {}, ValueError, r"outside \[0, 4\): 4 at flat position 2"),
        ((np.zeros((3, 4)), [0, -1, 2]), {}, ValueError, r"outside \[0, 4\): -1"),
        # cross_entropy's default ignore_index is no label here: it is out of range
        ((np.zeros((3, 4)), [0, -100, 2]), {}, ValueError, r"outside \[0, 4\): -100"),
        ((np.zeros((2, 4)), np.array([0, -(2**63)])), {}, ValueError, r"outside \[0, 4\)"),
        ((np.zeros((2, 4)), np.array([0.0, 1.0])), {}, TypeError, "must be integers"),
        ((np.zeros((2, 4)), np.eye(4, dtype=int)[:2]), {}, ValueError, "argmax"),
        ((np.zeros((2, 4)), [0, 1, 2]), {}, ValueError, "must have shape"),
        ((np.zeros((2, 4), complex), [0, 1]), {}, TypeError, "real floating"),
        ((np.float64(1.0), []), {}, ValueError, "0-d"),
        ((np.zeros((2, 0)), [0, 0]), {}, ValueError, "at least one class"),
        ((np.zeros((2, 4)), [0, 1]), dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        ((np.zeros((2, 4)), [0, 1]), dict(weight=[1.0, 2.0]), ValueError, r"weight must have"),
        ((np.zeros((2, 4)), [0, 1]), dict(sample_weight=[1.0]), ValueError, "sample_weight"),
        ((np.zeros((2, 4)), [0, 1]), dict(sample_weight=[1.0, np.nan]), ValueError, "finite"),
        ((np.zeros((2, 4)), [0, 1]), dict(num_threads=0), ValueError, "num_threads"),
        ((np.zeros((2, 4)), [0, 1]), dict(z_loss=0.1), TypeError, "z_loss"),
        ((np.zeros((2, 4)), [0, 1]), dict(label_smoothing=True), TypeError, "label_smoothing"),
        ((np.zeros((2, 4)), [0, 1]), dict(label_smoothing="0.1"), TypeError, "label_smoothing"),
    ],
)
def test_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        softmax_grad_hess(*args, **kwargs)


@pytest.mark.parametrize("make", [xgboost_multiclass, lightgbm_multiclass])
@pytest.mark.parametrize("value", [True, "0.1"])
def test_booster_objectives_check_their_options_when_made(make, value):
    with pytest.raises(TypeError, match="label_smoothing must be a real number"):
        make(label_smoothing=value)


def test_import_is_lazy_and_numpy_only():
    code = (
        "import sys, fastxent; assert 'fastxent.objectives' not in sys.modules; "
        "fastxent.objectives.softmax_grad_hess([[0.0, 1.0]], [1]); "
        "bad = [m for m in ('xgboost', 'lightgbm', 'sklearn', 'scipy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
