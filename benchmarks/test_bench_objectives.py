"""Gradient-boosting objectives: XGBoost, n = 500 000, k = 10, float32.

Group ``"objective-500000x10-float32-<T>T"`` (XGBoost ``nthread=T``, fastxent
limited to T OpenMP threads with threadpoolctl):

- ``objective_fastxent``: ``xgboost_multiclass()(predt, dtrain)``, the whole
  call (labels and weights read from the DMatrix and checked, the fused
  kernel, XGBoost's Hessian factor and floor; fresh output arrays);
- ``objective_numpy``: XGBoost's demo objective
  (``demo/guide-python/custom_softmax.py``, ``softprob_obj``) vectorised
  with NumPy as a user would write it (``numpy_softprob_obj`` below);
- ``round_builtin``, ``round_fastxent``, ``round_numpy``: one boosting round
  (``Booster.update``, ``hist``, depth 6, 20 features) with
  ``objective="multi:softprob"``, with ``obj=xgboost_multiclass()`` and with
  the NumPy objective;
- ``round_given_grad``: one round from precomputed gradients
  (``Booster.boost(grad=, hess=)``): the round without any objective.
  ``round_builtin`` also records in ``extra_info["getgradient_s"]`` the
  built-in objective's own time per round, read from XGBoost's monitor
  (``GetGradient`` of ``Learner``, printed at ``verbosity=3``) in a separate
  short run.

Group ``"objective-5000x10-float32-<T>T"``: the two objectives and the demo's
objective exactly as written (``numpy_loop_softprob_obj``: Python loops over
rows and classes), which is too slow to time at 500 000 rows.

``python benchmarks/report.py bench.json`` prints the ratios (section
"Gradient-boosting objectives", from ``report_objectives.py``).
"""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pytest
from _common import measure

from fastxent.bench import LOGIT_SCALE
from fastxent.objectives import xgboost_multiclass

xgb = pytest.importorskip("xgboost")
threadpoolctl = pytest.importorskip("threadpoolctl")

N, K, D, DTYPE = 500_000, 10, 20, "float32"
N_LOOP = 5_000
# Boosting rounds with different objectives differ by a few per cent: more
# than measure()'s usual 3 rounds of a slow call.
ROUND_MIN_ROUNDS = 7
XGB_PARAMS = {"num_class": K, "base_score": 0.5, "tree_method": "hist", "max_depth": 6}


def numpy_softprob_obj(predt, dtrain):
    """XGBoost's demo ``softprob_obj`` vectorised: the same arithmetic (no
    max shift, the demo's Hessian floor 1e-6), whole arrays at a time."""
    labels = dtrain.get_label().astype(np.int64)
    weights = dtrain.get_weight()
    e = np.exp(predt)
    p = e / np.sum(e, axis=1, keepdims=True)
    grad = p.copy()
    grad[np.arange(len(labels)), labels] -= 1.0
    hess = np.maximum(2.0 * p * (1.0 - p), 1e-6)
    if weights.size:
        grad *= weights[:, None]
        hess *= weights[:, None]
    return grad, hess


def _softmax(x):
    e = np.exp(x)
    return e / np.sum(e)


def numpy_loop_softprob_obj(predt, dtrain):
    """XGBoost's demo ``softprob_obj`` as written (its module constants
    replaced by the shapes): Python loops over rows and classes.  One change:
    the default weights are ``np.ones(n)``, not the demo's ``np.ones((n, 1))``,
    whose rows are 1-element arrays that NumPy >= 2.4 no longer assigns to
    an element ("setting an array element with a sequence")."""
    n, k = predt.shape
    labels = dtrain.get_label()
    weights = dtrain.get_weight() if dtrain.get_weight().size else np.ones(n, dtype=float)
    grad = np.zeros((n, k), dtype=float)
    hess = np.zeros((n, k), dtype=float)
    eps = 1e-6
    for r in range(n):
        target = labels[r]
        p = _softmax(predt[r, :])
        for c in range(k):
            g = p[c] - 1.0 if c == target else p[c]
            g = g * weights[r]
            h = max((2.0 * p[c] * (1.0 - p[c]) * weights[r]).item(), eps)
            grad[r, c] = g
            hess[r, c] = h
    return grad, hess


@pytest.fixture(scope="module")
def data():
    """Features with a linear-model signal, labels, the training DMatrix, and
    float32 margins of the logit scale of the other benchmarks."""
    rng = np.random.default_rng(12)
    X = rng.standard_normal((N, D), dtype=np.float32)
    y = np.argmax(X @ rng.standard_normal((D, K)) + rng.standard_normal((N, K)), axis=1)
    predt = rng.standard_normal((N, K), dtype=np.float32) * np.float32(LOGIT_SCALE)
    return {"X": X, "y": y, "dtrain": xgb.DMatrix(X, label=y), "predt": predt}


def _group(n, threads):
    return f"objective-{n}x{K}-{DTYPE}-{threads}T"


def _measure(benchmark, fn, n, impl, threads, **extra):
    with threadpoolctl.threadpool_limits(limits=threads, user_api="openmp"):
        return measure(
            benchmark,
            fn,
            case=f"{n}x{K}",
            impl=impl,
            threads=threads,
            group=_group(n, threads),
            dtype=DTYPE,
            nbytes=n * K * 4,
            min_rounds=ROUND_MIN_ROUNDS,
            **extra,
        )


OBJECTIVES = {
    "fastxent": lambda: xgboost_multiclass(),
    "numpy": lambda: numpy_softprob_obj,
    "numpy_loop": lambda: numpy_loop_softprob_obj,
}


# The demo's Python loops would take about a minute a call at 500 000 rows.
@pytest.mark.bench_when(lambda p: not (p["which"] == "numpy_loop" and p["n"] == N))
@pytest.mark.parametrize("n", [N, N_LOOP])
@pytest.mark.parametrize("which", list(OBJECTIVES))
def test_objective(benchmark, data, which, n, threads):
    obj = OBJECTIVES[which]()
    predt = np.ascontiguousarray(data["predt"][:n])
    dtrain = data["dtrain"] if n == N else xgb.DMatrix(data["X"][:n], label=data["y"][:n])
    grad, hess = _measure(benchmark, lambda: obj(predt, dtrain), n, f"objective_{which}", threads)
    assert grad.shape == hess.shape == (n, K)


def _getgradient_seconds(dtrain, threads, rounds=3):
    """The built-in objective's own time per round, from XGBoost's monitor
    (printed when the booster is freed, at verbosity 3)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        bst = xgb.Booster(
            {**XGB_PARAMS, "objective": "multi:softprob", "nthread": threads, "verbosity": 3},
            [dtrain],
        )
        for i in range(rounds):
            bst.update(dtrain, i)
        del bst
    found = re.findall(r"GetGradient: ([0-9.e+-]+)s, (\d+) calls", out.getvalue())
    return float(found[-1][0]) / int(found[-1][1]) if found else None


ROUNDS = ("builtin", "fastxent", "numpy", "given_grad")


@pytest.mark.parametrize("which", ROUNDS)
def test_round(benchmark, data, which, threads):
    dtrain = data["dtrain"]
    params = {**XGB_PARAMS, "nthread": threads, "disable_default_eval_metric": True}
    if which == "builtin":
        params["objective"] = "multi:softprob"
    bst = xgb.Booster(params, [dtrain])
    bst.update(dtrain, 0, fobj=None if which == "builtin" else xgboost_multiclass())
    it = iter(range(1, 10**6))
    if which == "given_grad":
        g, h = xgboost_multiclass()(bst.predict(dtrain, output_margin=True), dtrain)

        def step():
            bst.boost(dtrain, next(it), grad=g, hess=h)
    else:
        fobj = {"builtin": None, "fastxent": xgboost_multiclass(), "numpy": numpy_softprob_obj}
        obj = fobj[which]

        def step():
            bst.update(dtrain, next(it), fobj=obj)

    extra = {}
    if which == "builtin":
        extra["getgradient_s"] = _getgradient_seconds(dtrain, threads)
    _measure(benchmark, step, N, f"round_{which}", threads, **extra)
