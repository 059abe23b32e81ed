"""fastxent.dask.SoftmaxRegression: the in-memory estimator's optimum (1e-6
relative on the decision function) and predictions on iris, digits and a
7-class make_classification, under the synchronous and threaded schedulers
and on a LocalCluster; NumPy input; dask output for dask input; sample and
class weights; bad input rejected before any work is sent."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from sklearn.datasets import load_digits, load_iris, make_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import fastxent.dask as fd  # noqa: E402
from fastxent.estimators import SoftmaxRegression as InMemory  # noqa: E402

TIGHT = {"tol": 1e-10, "max_iter": 10_000}


@pytest.fixture(autouse=True)
def _single_threaded_blas():
    """One BLAS thread, as in test_estimators.py (small products, busy machine)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        yield


def _data(name):
    if name == "iris":
        X, y = load_iris(return_X_y=True)
    elif name == "digits":
        X, y = load_digits(return_X_y=True)
    else:
        X, y = make_classification(
            n_samples=1500, n_features=20, n_informative=12, n_classes=7, random_state=0
        )
    return StandardScaler().fit_transform(X), y


def _dask(X, y, rows=97):
    return da.from_array(X, chunks=(rows, -1)), da.from_array(y, chunks=rows)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# C = 0.1 for digits: at C = 1 its optimum is so flat that L-BFGS's own
# stopping point (ftol) moves the decision function by ~1e-6.
CASES = [("iris", 1.0), ("digits", 0.1), ("classification7", 1.0)]


@pytest.mark.parametrize(("name", "C"), CASES, ids=[c[0] for c in CASES])
def test_same_optimum_and_predictions_as_in_memory(name, C):
    X, y = _data(name)
    Xd, yd = _dask(X, y)
    for params in ({"C": C}, {"C": C, **TIGHT}):
        ours = InMemory(**params).fit(X, y)
        with dask.config.set(scheduler="threads", num_workers=2):
            theirs = fd.SoftmaxRegression(**params).fit(Xd, yd)
            got = theirs.decision_function(Xd)
            pred = theirs.predict(Xd)
            assert isinstance(got, da.Array) and isinstance(pred, da.Array)
            got, pred, proba = dask.compute(got, pred, theirs.predict_proba(Xd))
        assert isinstance(theirs.coef_, np.ndarray) and isinstance(theirs.classes_, np.ndarray)
        assert _rel(got, ours.decision_function(X)) < 1e-6
        np.testing.assert_array_equal(pred, ours.predict(X))
        np.testing.assert_allclose(proba, ours.predict_proba(X), rtol=1e-6, atol=1e-9)
        if "tol" not in params:  # the same L-BFGS path, to rounding
            np.testing.assert_array_equal(theirs.n_iter_, ours.n_iter_)


def test_fits_on_a_local_cluster_with_the_same_bits_as_locally(dask_client):
    X, y = _data("iris")
    Xd, yd = _dask(X, y, rows=40)
    sw = np.random.default_rng(0).uniform(0.5, 2.0, len(y))
    params = dict(class_weight="balanced", max_iter=500)
    with dask.config.set(scheduler="sync"):
        local = fd.SoftmaxRegression(**params).fit(Xd, yd, sample_weight=sw)
    with dask.config.set(scheduler=dask_client):
        remote = fd.SoftmaxRegression(**params).fit(Xd, yd, sample_weight=sw)
        proba = remote.predict_proba(Xd).compute()
    np.testing.assert_array_equal(remote.coef_, local.coef_)
    np.testing.assert_array_equal(remote.intercept_, local.intercept_)
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(proba, local.predict_proba(Xd).compute())
    ours = InMemory(**params).fit(X, y, sample_weight=sw)
    assert _rel(remote.decision_function(X), ours.decision_function(X)) < 1e-6


@pytest.mark.parametrize(
    "weights",
    ["sample_weight", "class_weight_dict", "balanced", "balanced_and_sample_weight"],
)
def test_weights_reach_the_in_memory_optimum(weights):
    X, y = _data("classification7")
    rng = np.random.default_rng(1)
    sw = rng.uniform(0.0, 3.0, len(y)) if "sample_weight" in weights else None
    cw = {0: 3.0, 4: 0.5} if weights == "class_weight_dict" else None
    cw = "balanced" if weights.startswith("balanced") else cw
    ours = InMemory(class_weight=cw, **TIGHT).fit(X, y, sample_weight=sw)
    Xd, yd = _dask(X, y, rows=300)
    with dask.config.set(scheduler="sync"):
        sd = None if sw is None else da.from_array(sw, chunks=300)
        theirs = fd.SoftmaxRegression(class_weight=cw, **TIGHT).fit(Xd, yd, sample_weight=sd)
    assert _rel(theirs.decision_function(X), ours.decision_function(X)) < 1e-6


def test_binary_string_labels_and_numpy_input():
    X, y = _data("classification7")
    labels = np.where(y < 3, "small", "large")
    ours = InMemory(**TIGHT).fit(X, labels)
    with dask.config.set(scheduler="sync"):
        theirs = fd.SoftmaxRegression(**TIGHT).fit(X, labels)  # NumPy in, NumPy out
        dec = theirs.decision_function(X)
        assert isinstance(dec, np.ndarray) and isinstance(theirs.predict(X), np.ndarray)
        lazy = theirs.predict(da.from_array(X, chunks=(400, -1)))
        log_proba = theirs.predict_log_proba(da.from_array(X, chunks=(400, -1))).compute()
    assert theirs.coef_.shape == (1, X.shape[1]) and dec.shape == (X.shape[0],)
    np.testing.assert_array_equal(theirs.classes_, ours.classes_)
    assert _rel(dec, ours.decision_function(X)) < 1e-6
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), ours.predict(X))
    np.testing.assert_allclose(log_proba, ours.predict_log_proba(X), rtol=1e-6, atol=1e-9)


def test_float32_stays_float32_and_reaches_the_float64_optimum():
    X, y = _data("iris")
    ref = InMemory(**TIGHT).fit(X, y)
    with dask.config.set(scheduler="sync"), warnings.catch_warnings():
        # float32 objectives can end L-BFGS on an 'abnormal' line search (as in memory)
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = fd.SoftmaxRegression(tol=1e-5, max_iter=1000).fit(*_dask(X.astype(np.float32), y))
        dec = clf.decision_function(da.from_array(X.astype(np.float32), chunks=(60, -1)))
        assert dec.dtype == np.float32
        dec = dec.compute()
    assert clf.coef_.dtype == np.float32 and clf.intercept_.dtype == np.float32
    assert _rel(dec, ref.decision_function(X)) < 1e-3


def test_warm_start_convergence_warning_and_n_iter():
    X, y = _data("digits")
    Xd, yd = _dask(X, y, rows=500)
    with dask.config.set(scheduler="sync"):
        clf = fd.SoftmaxRegression(max_iter=3, warm_start=True)
        with pytest.warns(ConvergenceWarning, match="failed to converge"):
            clf.fit(Xd, yd)
        assert clf.n_iter_.tolist() == [3]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.set_params(max_iter=200).fit(Xd, yd)
    ours = InMemory(max_iter=3, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y)
        ours.set_params(max_iter=200).fit(X, y)
    assert _rel(clf.decision_function(X), ours.decision_function(X)) < 1e-6


def test_a_split_feature_axis_is_rechunked_with_a_warning():
    X, y = _data("iris")
    Xd = da.from_array(X, chunks=(50, 2))
    with dask.config.set(scheduler="sync"):
        with pytest.warns(da.PerformanceWarning, match="X is split into 2 chunks along its"):
            clf = fd.SoftmaxRegression().fit(Xd, da.from_array(y, chunks=50))
        with pytest.warns(da.PerformanceWarning):
            assert clf.predict(Xd).compute().shape == y.shape


def _fail():
    raise AssertionError("SoftmaxRegression computed data while checking its inputs")


def _never_computed(shape, dtype, rows):
    lazy = da.from_delayed(dask.delayed(_fail)(), shape, dtype)
    return lazy.rechunk((rows,) + shape[1:])


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("y chunks", ValueError, "row chunks of y do not line up"),
        ("numpy y length", ValueError, r"y must have shape \(100,\)"),
        ("unknown chunks", ValueError, "unknown chunk sizes"),
        ("sample_weight chunks", ValueError, "row chunks of sample_weight"),
        ("1-d X", ValueError, "2-d dask array"),
        ("C", ValueError, "C == -1"),
        ("C nan", ValueError, "'C' parameter of SoftmaxRegression must be a number, not NaN"),
        ("tol nan", ValueError, "'tol' parameter of SoftmaxRegression must be a number, not NaN"),
        ("C bool", TypeError, "'C' parameter of SoftmaxRegression must be a number, not a bool"),
        ("masked y", TypeError, "y is a masked array"),
        ("masked X blocks", TypeError, "X is a masked array"),
        ("solver", ValueError, "L-BFGS"),
        ("dask dataframe", TypeError, "dask array"),
    ],
)
def test_bad_input_is_an_error_before_any_work(case, error, match):
    X = _never_computed((100, 4), np.float64, 25)
    y = _never_computed((100,), np.int64, 25)
    kw = {}
    clf = fd.SoftmaxRegression()
    if case == "y chunks":
        y = y.rechunk(50)
    elif case == "numpy y length":
        y = np.zeros(90, dtype=np.int64)
    elif case == "unknown chunks":
        X = X[X[:, 0] > 0]
    elif case == "sample_weight chunks":
        kw["sample_weight"] = _never_computed((100,), np.float64, 30)
    elif case == "1-d X":
        X = X[:, 0]
    elif case == "C":
        clf.set_params(C=-1.0)
    elif case == "C nan":
        clf.set_params(C=np.nan)
    elif case == "tol nan":
        clf.set_params(tol=np.nan)
    elif case == "C bool":
        clf.set_params(C=True)
    elif case == "masked y":
        y = np.ma.masked_array(np.zeros(100, np.int64), mask=False)
    elif case == "masked X blocks":
        X = da.ma.masked_equal(X, 0.0)
    elif case == "solver":
        clf.set_params(solver="saga")
    else:
        dd = pytest.importorskip("dask.dataframe")
        X = dd.from_dask_array(X)
    with pytest.raises(error, match=match):
        clf.fit(X, y, **kw)


@pytest.mark.parametrize(
    ("case", "match"),
    [("nan", "NaN or infinity"), ("negative", "Negative"), ("one class", "only one class")],
)
def test_bad_data_is_an_error_before_the_optimisation(case, match):
    X, y = _data("iris")
    sw = None
    if case == "nan":
        X = X.copy()
        X[77, 2] = np.nan
    elif case == "negative":
        sw = np.ones(len(y))
        sw[5] = -1.0
    else:
        y = np.zeros_like(y)
    with dask.config.set(scheduler="sync"), pytest.raises(ValueError, match=match):
        fd.SoftmaxRegression().fit(*_dask(X, y), sample_weight=sw)


def test_predict_checks_the_features_before_any_work():
    X, y = _data("iris")
    with dask.config.set(scheduler="sync"):
        clf = fd.SoftmaxRegression().fit(*_dask(X, y))
    with pytest.raises(ValueError, match="expecting 4 features"):
        clf.predict(_never_computed((10, 3), np.float64, 5))


def test_the_objective_gradient_matches_finite_differences():
    from scipy import optimize

    rng = np.random.default_rng(3)
    X, sw = rng.standard_normal((40, 3)), rng.random(40)
    Xd, sd = da.from_array(X, chunks=(13, 3)), da.from_array(sw, chunks=13)
    clf = fd.SoftmaxRegression()
    for n_classes in (2, 4):
        y = da.from_array(rng.integers(0, n_classes, size=40), chunks=13)
        k = 1 if n_classes == 2 else n_classes
        w = rng.standard_normal(k * 4)
        args = (Xd, y, sd, 0.3, k)
        with dask.config.set(scheduler="sync"):
            err = optimize.check_grad(
                lambda v, *a: clf._objective(v, *a)[0],
                lambda v, *a: clf._objective(v, *a)[1],
                w,
                *args,
            )
            scale = np.linalg.norm(clf._objective(w, *args)[1])
        assert err < 1e-6 * scale
