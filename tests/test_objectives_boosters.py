"""fastxent.objectives.xgboost_multiclass and lightgbm_multiclass
with the real libraries (skipped without them; CI installs both).

* Each objective's output against the library's formula written out here in
  float64 from the textbook softmax (``reference.softmax``): XGBoost's
  ``max(2 s P (1 - P), 1e-16)``, LightGBM's ``k / (k - 1) s P (1 - P)``.
* Models trained for 20 rounds with the objective and with the built-in
  one (``multi:softprob``, ``multiclass``; same intercept, one thread)
  give the same predicted probabilities to 1e-6.
* Options change the model as they should: class weights train the model
  the built-in objective trains with per-sample weights ``w[y]``; label
  smoothing trains the model of an independent smoothed objective written
  here, and a less confident one.
* Errors: wrong score shapes, missing or non-integer labels, the
  scikit-learn wrappers' argument order, bad options.
"""

import numpy as np
import pytest
import reference as ref

from fastxent.objectives import lightgbm_multiclass, xgboost_multiclass

N, D, ROUNDS = 2000, 10, 20


def make_data(k, seed=0):
    from sklearn.datasets import make_classification

    X, y = make_classification(N, D, n_informative=6, n_classes=k, random_state=seed)
    s = np.random.default_rng(seed).uniform(0.2, 2.0, N)
    return X.astype(np.float32), y, s


def softmax_probs(margins):
    return ref.softmax(np.asarray(margins, np.float64)).reshape(np.shape(margins))


def textbook(scores, y, s, k, weight=None, smoothing=0.0):
    """Per-sample gradient ``s (Q P - q)`` and ``s Q P (1 - P)`` in float64,
    with the target masses ``q`` written out (PyTorch's label smoothing)."""
    n = len(y)
    w = np.ones(k) if weight is None else np.asarray(weight, np.float64)
    s = np.ones(n) if s is None else np.asarray(s, np.float64)
    q = np.zeros((n, k))
    q[np.arange(n), y] = (1 - smoothing) * w[y]
    q += smoothing / k * w
    P = softmax_probs(scores)
    Q = q.sum(axis=1, keepdims=True)
    return s[:, None] * (Q * P - q), s[:, None] * Q * P * (1 - P)


class XGBoost:
    """Training with XGBoost, its objective and its formula written out."""

    name, factory = "xgboost", staticmethod(xgboost_multiclass)

    def __init__(self, xgb):
        self.xgb = xgb

    def train(self, X, y, k, s=None, obj=None, **params):
        d = self.xgb.DMatrix(X, label=y, weight=s)
        # base_score: XGBoost >= 3.1 would estimate the built-in objective's
        # intercept (log class priors), which a custom objective cannot set.
        p = {"num_class": k, "nthread": 1, "base_score": 0.5, "disable_default_eval_metric": True}
        if obj is None:
            p["objective"] = "multi:softprob"
        return self.xgb.train({**p, **params}, d, ROUNDS, obj=obj).predict(d, output_margin=True)

    @staticmethod
    def textbook(weight=None, smoothing=0.0):
        def obj(predt, dtrain):
            y = dtrain.get_label().astype(np.int64)
            s = dtrain.get_weight()
            g, h = textbook(predt, y, s if s.size else None, predt.shape[1], weight, smoothing)
            return g, np.maximum(2 * h, 1e-16)

        return obj


class LightGBM:
    name, factory = "lightgbm", staticmethod(lightgbm_multiclass)

    def __init__(self, lgb):
        self.lgb = lgb

    def train(self, X, y, k, s=None, obj=None, **params):
        p = {"num_class": k, "num_threads": 1, "deterministic": True, "verbose": -1}
        # boost_from_average: the built-in objective would start from the log
        # class priors, a callable objective starts from 0.
        p["objective"] = obj if obj is not None else "multiclass"
        if obj is None:
            p["boost_from_average"] = False
        bst = self.lgb.train({**p, **params}, self.lgb.Dataset(X, label=y, weight=s), ROUNDS)
        return bst.predict(X, raw_score=True)

    @staticmethod
    def textbook(weight=None, smoothing=0.0):
        def obj(preds, train_data):
            k = preds.shape[1]
            y = train_data.get_label().astype(np.int64)
            g, h = textbook(preds, y, train_data.get_weight(), k, weight, smoothing)
            return g, k / (k - 1) * h

        return obj


@pytest.fixture(params=[XGBoost, LightGBM], ids=["xgboost", "lightgbm"])
def booster(request):
    return request.param(pytest.importorskip(request.param.name))


@pytest.fixture(scope="module")
def xgb():
    return pytest.importorskip("xgboost")


@pytest.fixture(scope="module")
def lgb():
    return pytest.importorskip("lightgbm")


def assert_same_probabilities(got, expected):
    np.testing.assert_allclose(softmax_probs(got), softmax_probs(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("weighted", [False, True])
def test_trains_the_builtin_model(booster, k, weighted):
    X, y, s = make_data(k)
    s = s if weighted else None
    expected = booster.train(X, y, k, s)
    got = booster.train(X, y, k, s, obj=booster.factory())
    assert_same_probabilities(got, expected)
    if booster.name == "xgboost":
        # float32 gradients rounded differently by about an ulp: the margins
        # agree to a couple of float32 ulps, the probabilities to ~2e-7.
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
        # Without the common base_score the two differ (the test is not vacuous):
        default = booster.train(X, y, k, s, base_score=None)
        assert np.abs(softmax_probs(default) - softmax_probs(expected)).max() > 1e-4
    else:  # both in float64, rounded once to float32: the same model
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_class_weights_are_sample_weights_by_class(booster):
    k = 4
    X, y, _ = make_data(k, seed=1)
    w = np.array([0.5, 2.0, 1.0, 3.0])
    # XGBoost: tree_method="exact", since "hist" also weights the quantile
    # sketch of its bin edges by the sample weights.
    params = {"tree_method": "exact"} if booster.name == "xgboost" else {}
    expected = booster.train(X, y, k, w[y], **params)
    got = booster.train(X, y, k, obj=booster.factory(weight=w), **params)
    assert_same_probabilities(got, expected)


def test_label_smoothing(booster):
    k, eps = 4, 0.2
    X, y, s = make_data(k, seed=2)
    got = booster.train(X, y, k, s, obj=booster.factory(label_smoothing=eps))
    expected = booster.train(X, y, k, s, obj=booster.textbook(smoothing=eps))
    assert_same_probabilities(got, expected)
    plain = softmax_probs(booster.train(X, y, k, s, obj=booster.factory()))
    smooth = softmax_probs(got)
    assert smooth.max(axis=1).mean() < plain.max(axis=1).mean() - 0.02  # less confident
    assert (smooth.argmax(1) == y).mean() > 0.8


@pytest.mark.parametrize("weighted", [False, True])
def test_xgboost_objective_is_xgboosts_formula(xgb, rng, weighted):
    k = 4
    predt = (rng.standard_normal((50, k)) * 3).astype(np.float32)
    predt[0] = [30.0, -30.0, 0.0, -30.0]  # a confident row: Hessians at the 1e-16 floor
    y = rng.integers(0, k, 50)
    y[0] = 1
    s = rng.uniform(0.0, 2.0, 50) if weighted else None
    if weighted:
        s[1] = 0.0  # weight 0: gradient 0, Hessian at the floor, as XGBoost
    d = xgb.DMatrix(np.zeros((50, 1)), label=y, weight=s)
    grad, hess = xgboost_multiclass()(predt, d)
    assert grad.dtype == hess.dtype == np.float32 and grad.shape == hess.shape == (50, k)
    eg, eh = XGBoost.textbook()(predt, d)
    np.testing.assert_allclose(grad, eg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hess, eh, rtol=1e-5, atol=1e-6)
    assert hess[0, 1] == np.float32(1e-16) and hess.min() >= np.float32(1e-16)
    if weighted:
        assert np.all(grad[1] == 0) and np.all(hess[1] == np.float32(1e-16))


def test_lightgbm_objective_is_lightgbms_formula(lgb, rng):
    k, n = 5, 60
    preds = np.asfortranarray(rng.standard_normal((n, k)) * 3)  # as LightGBM passes them
    y = rng.integers(0, k, n)
    s = rng.uniform(0.0, 2.0, n)
    d = lgb.Dataset(np.zeros((n, 1)), label=y, weight=s).construct()
    grad, hess = lightgbm_multiclass()(preds, d)
    assert grad.dtype == hess.dtype == np.float32 and grad.shape == hess.shape == (n, k)
    assert grad.flags.f_contiguous and hess.flags.f_contiguous  # LightGBM copies neither
    eg, eh = LightGBM.textbook()(preds, d)
    np.testing.assert_allclose(grad, eg.astype(np.float32), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(hess, eh.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_xgboost_quantile_dmatrix_and_other_options(xgb):
    X, y, s = make_data(3)
    d = xgb.QuantileDMatrix(X, label=y, weight=s)
    params = {"num_class": 3, "nthread": 1, "max_depth": 3, "eta": 0.5}
    bst = xgb.train(params, d, 5, obj=xgboost_multiclass(weight=[1, 2, 3], label_smoothing=0.1))
    assert bst.predict(d, output_margin=True).shape == (N, 3)


def test_xgboost_errors(xgb):
    obj = xgboost_multiclass()
    z = np.zeros((4, 3), np.float32)
    X = np.zeros((4, 2))
    d = xgb.DMatrix(X, label=[0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"shape \(4, k\).*num_class"):
        obj(np.zeros(4, np.float32), d)  # num_class not set: one margin per row
    with pytest.raises(ValueError, match=r"shape \(4, k\)"):
        obj(np.zeros((5, 3), np.float32), d)
    with pytest.raises(ValueError, match="no labels"):
        obj(z, xgb.DMatrix(X))
    for bad in (1.5, 3.0, -1.0, 2**40):  # (XGBoost rejects NaN labels itself)
        with pytest.raises(ValueError, match=r"class indices 0, 1, \.\.\., 2.*at row 2"):
            obj(z, xgb.DMatrix(X, label=[0, 1, bad, 1]))
    with pytest.raises(TypeError, match=r"y_true, y_pred"):
        obj(np.array([0, 1, 2, 1.0]), z)  # XGBClassifier's (y_true, y_pred)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        xgboost_multiclass(weight=[1.0, 2.0])(z, d)
    with pytest.raises(ValueError, match="weight must be a 1-d"):
        xgboost_multiclass(weight=[[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="finite"):
        xgboost_multiclass(weight=[1.0, np.inf, 3.0])
    with pytest.raises(ValueError, match="label_smoothing"):
        xgboost_multiclass(label_smoothing=2.0)


def test_lightgbm_errors(lgb):
    obj = lightgbm_multiclass()
    X = np.zeros((4, 2))
    d = lgb.Dataset(X, label=[0, 1, 2, 1]).construct()
    z = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"shape \(4, k\).*num_class"):
        obj(np.zeros(4), d)
    with pytest.raises(ValueError, match=r"class indices 0, 1, \.\.\., 1.*at row 2"):
        obj(np.zeros((4, 2)), d)  # num_class=2 but a label 2
    with pytest.raises(ValueError, match=r"class indices .* got 0\.5 at row 1"):
        obj(z, lgb.Dataset(X, label=[0, 0.5, 2, 1]).construct())
    with pytest.raises(TypeError, match=r"LGBMClassifier|y_true, y_pred"):
        obj(np.array([0, 1, 2, 1.0]), z)  # LGBMClassifier's (y_true, y_pred)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        lightgbm_multiclass(weight=[1.0, 2.0])(z, d)
    with pytest.raises(ValueError, match="label_smoothing"):
        lightgbm_multiclass(label_smoothing=-0.1)
