"""fastxent.estimators.SoftmaxRegression: scikit-learn's estimator checks, the
same optimum as LogisticRegression(solver="lbfgs"), and the sklearn tooling.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from scipy import optimize, sparse  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits, load_iris  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import log_loss as sk_log_loss  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastxent.estimators import SoftmaxRegression  # noqa: E402
from fastxent.metrics import log_loss  # noqa: E402


@pytest.fixture(autouse=True)
def _single_threaded_blas():
    """One BLAS thread: the matrix products here are small, and a multi-threaded
    OpenBLAS on a busy 2-core machine can slow these fits down 50-fold."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        yield


# Tight enough that both optimisers stop within ~1e-7 of the common optimum.
TIGHT = {"tol": 1e-8, "max_iter": 10_000}

# ---------------------------------------------------------------- estimator checks

#: Checks expected to fail, with the reason.  Empty: every check passes.
#: (check_array_api_input skips itself: it needs SCIPY_ARRAY_API=1 and an
#: array-API library; the estimator works on NumPy arrays and SciPy sparse.)
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def _expected_failed_checks(estimator):
    if not estimator.fit_intercept:
        # Without an intercept, class weights {0: 1000, 1: 1e-4} cannot move
        # the decision boundary of centred blobs far enough; LogisticRegression
        # (C=10, fit_intercept=False) fails this check in the same way.
        return {
            **EXPECTED_FAILED_CHECKS,
            "check_class_weight_classifiers": "needs an intercept, as in LogisticRegression",
        }
    return EXPECTED_FAILED_CHECKS


try:  # scikit-learn >= 1.6 takes the expected failures as an argument
    _checks = parametrize_with_checks(
        [SoftmaxRegression(), SoftmaxRegression(fit_intercept=False, C=10.0, num_threads=1)],
        expected_failed_checks=_expected_failed_checks,
    )
except TypeError:  # pragma: no cover - older scikit-learn
    _checks = parametrize_with_checks(
        [SoftmaxRegression(), SoftmaxRegression(fit_intercept=False, C=10.0, num_threads=1)]
    )


@_checks
# check_non_transformer_estimators_n_iter fits iris unscaled at max_iter=100
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ------------------------------------------------- the same optimum as LogisticRegression


def _standardised(load):
    X, y = load(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _rel_diff(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize(
    "load", [load_iris, load_digits, load_breast_cancer], ids=["iris", "digits", "breast_cancer"]
)
@pytest.mark.parametrize("C", [0.1, 1.0])
def test_same_optimum_as_logistic_regression(load, C):
    X, y = _standardised(load)
    ours = SoftmaxRegression(C=C, **TIGHT).fit(X, y)
    theirs = LogisticRegression(C=C, solver="lbfgs", **TIGHT).fit(X, y)
    assert ours.coef_.shape == theirs.coef_.shape
    assert ours.intercept_.shape == theirs.intercept_.shape
    d_ours, d_theirs = ours.decision_function(X), theirs.decision_function(X)
    assert d_ours.shape == d_theirs.shape
    assert _rel_diff(d_ours, d_theirs) < 1e-4
    np.testing.assert_allclose(d_ours, d_theirs, rtol=1e-4, atol=1e-4 * np.max(np.abs(d_theirs)))
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-5)
    np.testing.assert_allclose(
        ours.coef_, theirs.coef_, rtol=1e-4, atol=1e-4 * np.max(np.abs(theirs.coef_))
    )
    assert ours.score(X, y) == theirs.score(X, y)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_same_optimum_with_sample_weight_and_string_labels(rng, fit_intercept):
    X, y = _standardised(load_iris)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    sw = rng.random(len(y)) * 3
    ours = SoftmaxRegression(fit_intercept=fit_intercept, **TIGHT).fit(X, labels, sw)
    theirs = LogisticRegression(fit_intercept=fit_intercept, **TIGHT).fit(X, labels, sw)
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    assert _rel_diff(ours.decision_function(X), theirs.decision_function(X)) < 1e-4
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert ours.predict(X).dtype == labels.dtype


@pytest.mark.parametrize("class_weight", ["balanced", {0: 3.0, 2: 0.25}, {1: 0.0}])
@pytest.mark.parametrize("with_sample_weight", [False, True])
@pytest.mark.parametrize("load", [load_iris, load_breast_cancer], ids=["iris", "binary"])
def test_class_weight_gives_logistic_regressions_optimum(
    class_weight, with_sample_weight, load, rng
):
    X, y = _standardised(load)
    X, y = X[:130], y[:130]  # iris: 50, 50, 30 (unbalanced, so "balanced" changes the fit)
    if isinstance(class_weight, dict) and load is load_breast_cancer:
        class_weight = {c: w for c, w in class_weight.items() if c < 2}
    sw = rng.random(len(y)) * 2 if with_sample_weight else None
    ours = SoftmaxRegression(class_weight=class_weight, **TIGHT).fit(X, y, sw)
    theirs = LogisticRegression(class_weight=class_weight, **TIGHT).fit(X, y, sw)
    assert _rel_diff(ours.decision_function(X), theirs.decision_function(X)) < 1e-5
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    # ...and it is not the unweighted optimum
    plain = SoftmaxRegression(**TIGHT).fit(X, y, sw)
    assert _rel_diff(ours.decision_function(X), plain.decision_function(X)) > 1e-3


def test_class_weight_with_string_labels_and_unknown_class():
    X, y = _standardised(load_iris)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    cw = {"setosa": 2.0, "virginica": 0.5}
    ours = SoftmaxRegression(class_weight=cw, **TIGHT).fit(X, names)
    theirs = LogisticRegression(class_weight=cw, **TIGHT).fit(X, names)
    assert _rel_diff(ours.decision_function(X), theirs.decision_function(X)) < 1e-5
    with pytest.raises(ValueError, match=r"not in class_weight"):
        SoftmaxRegression(class_weight={"daisy": 2.0}).fit(X, names)


def test_penalty_none_and_l2_spellings():
    X, y = _standardised(load_iris)
    # penalty=None: no penalty, like C=inf in LogisticRegression
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        none = SoftmaxRegression(penalty=None, max_iter=300).fit(X, y)
        inf = SoftmaxRegression(C=np.inf, max_iter=300).fit(X, y)
        theirs = LogisticRegression(C=np.inf, max_iter=300).fit(X, y)
    np.testing.assert_array_equal(none.coef_, inf.coef_)
    assert _rel_diff(none.decision_function(X), theirs.decision_function(X)) < 1e-3
    with pytest.warns(UserWarning, match="ignore the C parameter"):
        SoftmaxRegression(penalty=None, C=0.5).fit(X, y)
    l2 = SoftmaxRegression(penalty="l2", l1_ratio=0, C=0.3).fit(X, y)
    np.testing.assert_array_equal(l2.coef_, SoftmaxRegression(C=0.3).fit(X, y).coef_)
    assert (
        _rel_diff(l2.decision_function(X), LogisticRegression(C=0.3).fit(X, y).decision_function(X))
        < 1e-3
    )


@pytest.mark.parametrize(
    "params",
    [
        {"intercept_scaling": 5.0},
        {"random_state": 0},
        {"random_state": np.random.RandomState(3)},
        {"n_jobs": 2},
        {"n_jobs": -1},
        {"solver": "lbfgs"},
        {"dual": False},
        {"l1_ratio": None},
    ],
)
def test_logistic_regression_arguments_without_effect_are_accepted(params):
    """As in LogisticRegression's lbfgs fit, these change nothing."""
    X, y = _standardised(load_iris)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # LogisticRegression's deprecations
        ours = SoftmaxRegression(**params).fit(X, y)
        theirs = LogisticRegression(**params).fit(X, y)
    np.testing.assert_array_equal(ours.coef_, SoftmaxRegression().fit(X, y).coef_)
    assert _rel_diff(ours.decision_function(X), theirs.decision_function(X)) < 1e-3


def test_verbose_prints_the_iterations(capsys):
    X, y = _standardised(load_iris)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        SoftmaxRegression(verbose=1, max_iter=4).fit(X, y)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("L-BFGS")]
    assert len(lines) == 4 and "objective" in lines[0]
    SoftmaxRegression().fit(X, y)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"solver": "saga"}, "L-BFGS solver"),
        ({"solver": "liblinear"}, "L-BFGS solver"),
        ({"penalty": "l1"}, "penalty must be 'l2' or None"),
        ({"penalty": "elasticnet"}, "penalty must be 'l2' or None"),
        ({"l1_ratio": 0.5}, "pure L2 penalty"),
        ({"l1_ratio": 1}, "pure L2 penalty"),
        ({"dual": True}, "dual=True"),
        ({"class_weight": "balance"}, "class_weight must be"),
        ({"class_weight": [1.0, 2.0, 3.0]}, "class_weight must be"),
    ],
)
def test_arguments_that_need_another_solver_are_errors(params, match):
    X, y = _standardised(load_iris)
    with pytest.raises(ValueError, match=match):
        SoftmaxRegression(**params).fit(X, y)


def test_float32_coefficients_like_logistic_regression():
    X, y = _standardised(load_iris)
    X32 = X.astype(np.float32)
    ours = SoftmaxRegression().fit(X32, y)
    theirs = LogisticRegression().fit(X32, y)
    assert ours.coef_.dtype == theirs.coef_.dtype == np.float32
    assert ours.intercept_.dtype == theirs.intercept_.dtype == np.float32
    assert SoftmaxRegression().fit(X, y).coef_.dtype == np.float64


def test_binary_has_one_coefficient_row_like_logistic_regression():
    X, y = _standardised(load_breast_cancer)
    yl = np.where(y == 1, "benign", "malignant")
    clf = SoftmaxRegression(**TIGHT).fit(X, yl)
    assert clf.coef_.shape == (1, X.shape[1]) and clf.intercept_.shape == (1,)
    d = clf.decision_function(X)
    assert d.shape == (X.shape[0],)
    proba = clf.predict_proba(X)
    # column 1 is classes_[1], the class of positive log-odds
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-d)), rtol=1e-12)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[(d > 0).astype(int)])


def test_gradient_matches_finite_differences(rng):
    """The objective's gradient, including the penalty, weights and intercepts."""
    X = rng.standard_normal((40, 3))
    sw = rng.random(40)
    l2 = 1 / (0.7 * sw.sum())
    clf = SoftmaxRegression()

    def f(v, *args):
        return clf._objective(v, *args)[0]

    def g(v, *args):
        return clf._objective(v, *args)[1]

    for n_classes in (2, 4):
        y = rng.integers(0, n_classes, size=40)
        k = 1 if n_classes == 2 else n_classes
        w = rng.standard_normal(k * 4)
        for Xi in (X, sparse.csr_matrix(X)):
            assert optimize.check_grad(f, g, w, Xi, y, sw, l2, k) < 1e-6


# --------------------------------------------------------------------- behaviour


def test_predict_log_proba_is_log_softmax_without_underflow():
    X, y = _standardised(load_iris)
    clf = SoftmaxRegression(C=100.0, **TIGHT).fit(X, y)
    np.testing.assert_allclose(
        np.exp(clf.predict_log_proba(X)), clf.predict_proba(X), rtol=1e-10, atol=1e-300
    )
    far = 200 * X[:5]  # probabilities that underflow to 0: log_softmax keeps them finite
    assert np.any(clf.predict_proba(far) == 0)
    assert np.all(np.isfinite(clf.predict_log_proba(far)))


def test_log_loss_of_decision_function_agrees_with_sklearn():
    X, y = _standardised(load_digits)
    clf = SoftmaxRegression(max_iter=50).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        got = log_loss(y, clf.decision_function(X))
    assert got == pytest.approx(sk_log_loss(y, clf.predict_proba(X)), rel=1e-9)


@pytest.mark.parametrize("sparse_X", [False, True])
def test_float32_and_sparse_input_reach_the_float64_optimum(sparse_X):
    X, y = _standardised(load_iris)
    ref = SoftmaxRegression(**TIGHT).fit(X, y)
    X32 = X.astype(np.float32)
    X_in = sparse.csr_matrix(X32) if sparse_X else X32
    with warnings.catch_warnings():
        # float32 objectives can end L-BFGS on an 'abnormal' line search near the optimum
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = SoftmaxRegression(tol=1e-5, max_iter=1000).fit(X_in, y)
    assert _rel_diff(clf.decision_function(X_in), ref.decision_function(X)) < 1e-3
    dense = SoftmaxRegression(**TIGHT).fit(X, y)
    sp = SoftmaxRegression(**TIGHT).fit(sparse.csr_matrix(X), y)
    np.testing.assert_allclose(sp.coef_, dense.coef_, rtol=1e-6, atol=1e-9)


def test_thread_count_does_not_change_the_fit():
    X, y = _standardised(load_digits)
    a = SoftmaxRegression(num_threads=1, max_iter=30)
    b = SoftmaxRegression(num_threads=2, max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a.fit(X, y)
        b.fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.intercept_, b.intercept_)


def test_max_iter_reached_warns_and_n_iter_is_capped():
    X, y = _standardised(load_digits)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        clf = SoftmaxRegression(max_iter=3).fit(X, y)
    assert clf.n_iter_.shape == (1,) and clf.n_iter_[0] == 3


def test_warm_start_continues_from_the_previous_fit():
    X, y = _standardised(load_digits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cold = SoftmaxRegression(max_iter=500, tol=1e-6).fit(X, y)
        warm = SoftmaxRegression(max_iter=500, tol=1e-6, warm_start=True)
        warm.fit(X, y).fit(X, y)
    assert cold.n_iter_[0] > 20
    assert warm.n_iter_[0] <= 2
    np.testing.assert_allclose(warm.decision_function(X), cold.decision_function(X), atol=1e-3)
    with pytest.raises(ValueError, match="warm_start"):
        warm.fit(X[:, :10], y)


def test_not_fitted_error():
    with pytest.raises(NotFittedError):
        SoftmaxRegression().predict(np.zeros((2, 3)))


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"C": 0.0}, ValueError),
        ({"C": -1.0}, ValueError),
        ({"C": "1"}, TypeError),
        ({"max_iter": -1}, ValueError),
        ({"max_iter": 1.5}, TypeError),
        ({"tol": -1e-4}, ValueError),
        ({"num_threads": 0}, ValueError),
        ({"num_threads": 1.0}, TypeError),
        ({"fit_intercept": "yes"}, TypeError),
        ({"warm_start": 1}, TypeError),
        ({"dual": "no"}, TypeError),
        ({"verbose": -1}, ValueError),
        ({"verbose": 0.5}, TypeError),
        ({"n_jobs": 1.5}, TypeError),
        ({"intercept_scaling": "1"}, TypeError),
        ({"l1_ratio": "0"}, TypeError),
    ],
)
def test_bad_parameters_raise_at_fit(params, error):
    X, y = _standardised(load_iris)
    with pytest.raises(error):
        SoftmaxRegression(**params).fit(X, y)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        # NaN passes every range comparison: LogisticRegression rejects it
        ({"C": np.nan}, ValueError),
        ({"C": np.float32("nan")}, ValueError),
        ({"tol": np.nan}, ValueError),
        ({"intercept_scaling": np.nan}, ValueError),
        ({"l1_ratio": np.nan}, ValueError),
        # a bool is a number to check_scalar (True == 1), not a value of C
        ({"C": True}, TypeError),
        ({"tol": np.True_}, TypeError),
        ({"max_iter": True}, TypeError),
        ({"verbose": False}, TypeError),
        ({"num_threads": True}, TypeError),
        ({"n_jobs": True}, TypeError),
        ({"intercept_scaling": True}, TypeError),
        ({"tol": np.str_("1e-4")}, TypeError),
    ],
    ids=repr,
)
def test_nan_and_bool_parameters_raise_naming_the_parameter(params, error):
    X, y = _standardised(load_iris)
    (name,) = params
    with pytest.raises(error, match=f"'{name}' parameter of SoftmaxRegression"):
        SoftmaxRegression(**params).fit(X, y)


@pytest.mark.parametrize("arg", ["X", "y", "sample_weight", "predict"])
def test_masked_arrays_are_rejected(arg):
    """scikit-learn's checks would drop the mask and use every value."""
    X, y = _standardised(load_iris)
    args = dict(X=X, y=y, sample_weight=np.ones(len(y)))
    clf = SoftmaxRegression()
    if arg == "predict":
        clf.fit(X, y)
        with pytest.raises(TypeError, match=r"^X is a masked array"):
            clf.predict(np.ma.masked_array(X, mask=X > 2))
        return
    args[arg] = np.ma.masked_array(args[arg], mask=np.zeros(args[arg].shape, bool))
    with pytest.raises(TypeError, match=f"^{arg} is a masked array"):
        clf.fit(**args)


def test_numpy_scalar_parameters_are_accepted():
    X, y = _standardised(load_iris)
    params = dict(C=np.float32(2.0), tol=np.float64(1e-4), max_iter=np.int64(200))
    want = SoftmaxRegression(C=2.0, max_iter=200).fit(X, y).coef_
    np.testing.assert_array_equal(SoftmaxRegression(**params).fit(X, y).coef_, want)


def test_one_class_and_zero_weights_raise():
    X = np.ones((4, 2))
    with pytest.raises(ValueError, match="only one class"):
        SoftmaxRegression().fit(X, [3, 3, 3, 3])
    with pytest.raises(ValueError, match="non-zero"):
        SoftmaxRegression().fit(X, [0, 1, 0, 1], sample_weight=np.zeros(4))
    with pytest.raises(ValueError, match="Negative"):
        SoftmaxRegression().fit(X, [0, 1, 0, 1], sample_weight=[1, -1, 1, 1])


def test_feature_names_from_a_dataframe():
    pd = pytest.importorskip("pandas")
    X, y = _standardised(load_iris)
    df = pd.DataFrame(X, columns=["sl", "sw", "pl", "pw"])
    clf = SoftmaxRegression().fit(df, y)
    np.testing.assert_array_equal(clf.feature_names_in_, ["sl", "sw", "pl", "pw"])
    assert clf.n_features_in_ == 4
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(X)


# --------------------------------------------------------------- sklearn tooling


def test_pipeline_with_standard_scaler():
    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), SoftmaxRegression(**TIGHT)).fit(X, y)
    alone = SoftmaxRegression(**TIGHT).fit(StandardScaler().fit_transform(X), y)
    np.testing.assert_array_equal(pipe.predict(X), alone.predict(StandardScaler().fit_transform(X)))
    assert pipe.score(X, y) > 0.99


def test_grid_search_over_C_scores_like_logistic_regression():
    X, y = load_iris(return_X_y=True)
    grid = {"logisticregression__C": [0.01, 0.1, 1.0]}
    ours = GridSearchCV(
        make_pipeline(StandardScaler(), SoftmaxRegression(**TIGHT)),
        {"softmaxregression__C": grid["logisticregression__C"]},
        cv=3,
    )
    theirs = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(**TIGHT)), grid, cv=3)
    ours.fit(X, y)
    theirs.fit(X, y)
    np.testing.assert_array_equal(
        ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"]
    )
    assert ours.best_params_["softmaxregression__C"] == theirs.best_params_["logisticregression__C"]
    assert isinstance(ours.best_estimator_[-1], SoftmaxRegression)
