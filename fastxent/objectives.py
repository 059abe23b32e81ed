"""Gradient-boosting objectives: softmax cross-entropy gradient and Hessian diagonal.

XGBoost and LightGBM take a custom multiclass objective as a function that
returns the gradient and the diagonal of the Hessian of the loss with
respect to the raw scores (margins).  :func:`softmax_grad_hess` computes
both from one fused pass over the scores (one ``exp`` per element), with
fastxent's options (class weights, sample weights, label smoothing) and
validation; :func:`xgboost_multiclass` and :func:`lightgbm_multiclass` wrap
it in each library's objective conventions, so that with the default
options they train the same model as the library's built-in objective.

Neither this module nor its objectives import xgboost or lightgbm: an
objective recognises the library's training data through the module the
caller has already imported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _validation as v
from ._spec import loss_spec
from ._typing import FloatArray

__all__ = ["lightgbm_multiclass", "softmax_grad_hess", "xgboost_multiclass"]

#: ``objective(raw_scores, training_data) -> (grad, hess)``, the callable
#: objective of ``xgboost.train(obj=...)`` and of LightGBM's ``objective``.
BoosterObjective: TypeAlias = Callable[[NDArray[Any], Any], tuple[FloatArray, FloatArray]]


# XGBoost's floor of the Hessian (kEps in SoftmaxMultiClassObj::GetGradient).
_XGB_HESS_FLOOR = 1e-16


def softmax_grad_hess(
    raw_scores: ArrayLike,
    target: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    num_threads: int | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Per-sample gradient and Hessian diagonal of softmax cross-entropy.

    For scores ``Z`` of shape ``(..., m)``, ``P = softmax(Z)`` along the last
    axis and the effective target mass ``q_i`` of sample ``i`` (class
    indices ``y``: ``q_ik = (1 - eps) w[y_i] [k = y_i] + (eps / m) w_k``;
    class probabilities ``Y``: ``q_ik = w_k ((1 - eps) Y_ik + eps / m)``),
    ``Q_i = sum_k q_ik``, the per-sample loss is
    ``E_i = s_i sum_k q_ik (lse_i - Z_ik)`` (:func:`fastxent.cross_entropy`
    with ``reduction="none"``) and, for each sample and class,

        grad_ij = dE_i / dZ_ij     = s_i (Q_i P_ij - q_ij)
        hess_ij = d2E_i / dZ_ij^2  = s_i Q_i P_ij (1 - P_ij)

    ``hess`` is the exact diagonal of each sample's ``m x m`` Hessian
    ``s_i Q_i (diag(P_i) - P_i P_i^T)``, the form gradient-boosting
    libraries take.  Nothing is averaged: row ``i`` is sample ``i``'s own
    derivative.  Both come from one pass over the scores with one ``exp``
    per element (the kernel of :func:`fastxent.cross_entropy_grad`).

    Parameters
    ----------
    raw_scores : array_like of shape (..., m)
        Raw scores (margins, logits), classes on the last axis.  float32 and
        float64 are computed natively, other dtypes as in
        :func:`fastxent.cross_entropy` (float16 in float32, integers in
        float64).
    target : array_like
        Class indices: an integer array of shape ``raw_scores.shape[:-1]``
        with values in ``[0, m)``; or class probabilities: a floating-point
        array of shape ``raw_scores.shape``.
    weight : array_like of shape (m,), optional
        Finite class weights ``w`` (PyTorch's ``weight``).
    sample_weight : array_like of shape ``raw_scores.shape[:-1]``, optional
        Finite per-sample weights ``s``.
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's label smoothing ``eps`` (above).
    num_threads : int >= 1, optional
        Threads to use; ``None`` follows OpenMP's default
        (``OMP_NUM_THREADS``, threadpoolctl).

    Returns
    -------
    grad, hess : ndarray of the shape of ``raw_scores`` and the compute dtype
        The gradient and the Hessian diagonal, C-contiguous.

    Raises
    ------
    TypeError
        For non-numeric logits or float class indices (as
        :func:`fastxent.cross_entropy`).
    ValueError
        For mismatched shapes, labels outside ``[0, m)``, an integer target of
        the scores' own shape, or an option out of its range.

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.objectives import softmax_grad_hess
    >>> z = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    >>> grad, hess = softmax_grad_hess(z, [0, 2])
    >>> grad.round(4)                     # softmax(z) - onehot(y)
    array([[-0.2144,  0.1753,  0.0391],
           [ 0.3333,  0.3333, -0.6667]])
    >>> hess.round(4)                     # P (1 - P)
    array([[0.1684, 0.1446, 0.0376],
           [0.2222, 0.2222, 0.2222]])
    """
    g, h, shape = _grad_hess(
        raw_scores, target, weight, sample_weight, label_smoothing, num_threads
    )
    return g.reshape(shape), h.reshape(shape)


def _grad_hess(
    raw_scores: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    sample_weight: ArrayLike | None,
    label_smoothing: float,
    num_threads: int | None,
) -> tuple[FloatArray, FloatArray, tuple[int, ...]]:
    """Validate (with the loss functions' own checks), run the loss kernel
    for its gradient and Hessian outputs, and return ``(grad, hess, shape)``
    with ``grad`` and ``hess`` of shape ``(n, m)``."""
    z, shape, dtype, half = v.as_logits(raw_scores, "raw_scores")
    n, m = z.shape
    # float16/bfloat16 scores: computed in float32, outputs in their dtype.
    io = np.asarray(raw_scores).dtype if half else dtype
    spec = loss_spec(
        target,
        shape,
        dtype,
        weight=weight,
        sample_weight=sample_weight,
        # No label is ignored (boosters have no such rows).
        ignore_index=None,
        label_smoothing=label_smoothing,
        z_loss=0.0,
        softcap=None,
        keep=io if half else None,
    )
    nt = v.resolve_threads(num_threads, z.size)
    g = np.empty((n, m), dtype=io)
    h = np.empty((n, m), dtype=io)
    gk, hk = (g.view(np.uint16), h.view(np.uint16)) if half else (g, h)
    # grad_denom=1: each row is its sample's own derivative (no "mean").
    spec.run(z, loss_out=None, grad_out=gk, hess_out=hk, grad_denom=1.0, num_threads=nt, half=half)
    return g, h, shape


def xgboost_multiclass(
    *, weight: ArrayLike | None = None, label_smoothing: float = 0.0
) -> BoosterObjective:
    """XGBoost custom objective: ``multi:softprob`` with fastxent's options.

    Pass the result as ``xgboost.train(params, dtrain, obj=...)`` with
    ``params["num_class"] = k``.  XGBoost (>= 2) calls it as
    ``obj(predt, dtrain)`` with the raw margins ``predt``, float32 of shape
    ``(n, k)``; it reads the labels (class indices ``0 .. k-1``, stored as
    floats) and the sample weights ``s`` from ``dtrain`` and returns, with
    ``P``, ``q`` and ``Q`` as in :func:`softmax_grad_hess`,

        grad_ij = s_i (Q_i P_ij - q_ij)
        hess_ij = max(2 s_i Q_i P_ij (1 - P_ij), 1e-16)

    as arrays of ``predt``'s shape and dtype.  With the default options
    (``Q_i = 1``, ``q_i = onehot(y_i)``) these are XGBoost's own
    ``multi:softprob`` gradient and Hessian.

    Parameters
    ----------
    weight : array_like of shape (k,), optional
        Class weights (PyTorch's ``weight``, as in
        :func:`fastxent.cross_entropy`).  Sample weights come from ``dtrain``.
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's label smoothing.

    Returns
    -------
    obj : callable ``obj(predt, dtrain) -> (grad, hess)``
        The objective, for ``xgboost.train(obj=...)``.

    Notes
    -----
    The conventions are those of ``SoftmaxMultiClassObj::GetGradient`` in
    XGBoost's ``src/objective/multiclass_obj.cu`` (3.x releases; on the
    master branch ``MulticlassGradientCpu`` in ``multiclass_obj.cc``): the
    softmax of each row in float32, ``g = (p - [k = y]) * w`` and
    ``h = fmax(2.0f * p * (1.0f - p) * w, 1e-16f)``, so the Hessian is twice
    the exact diagonal and floored at ``1e-16`` (also for weights of 0);
    sample weights scale both.  Labels must be integers in ``[0, k)``
    (XGBoost's ``ValidateLabel``); anything else is a ``ValueError`` here.

    *Intercept.*  Since XGBoost 3.1 ``multi:softprob`` starts from an
    estimated intercept, the centred log class priors
    (``SoftmaxMultiClassObj::InitEstimation``), which a custom objective
    cannot set: XGBoost then starts every class at ``base_score`` (0.5).  To
    train the model the built-in objective trains, pass the same
    ``base_score`` to both, as XGBoost's ``demo/guide-python/custom_softmax.py``
    does; a constant for every class does not change the softmax.

    *Precision.*  XGBoost computes in float32 and so does this objective.
    The two round ``p`` differently by about an ulp, so after 20 rounds the
    margins agree to a couple of float32 ulps (~1e-6 at margins near 4) and
    the probabilities to ~2e-7 (the tests); float64 here would come no
    closer, since XGBoost itself rounds in float32.

    Threads: OpenMP's default (``OMP_NUM_THREADS``, ``threadpoolctl``), not
    XGBoost's ``nthread``; the results do not depend on it.  The
    scikit-learn wrapper's ``objective(y_true, y_pred)`` is a ``TypeError``.

    Examples
    --------
    >>> import numpy as np, pytest
    >>> from fastxent.objectives import xgboost_multiclass
    >>> xgb = pytest.importorskip("xgboost")          # the rest needs xgboost
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((300, 4))
    >>> y = np.argmax(X[:, :3] + 0.5 * rng.standard_normal((300, 3)), axis=1)
    >>> dtrain = xgb.DMatrix(X, label=y)
    >>> params = {"num_class": 3, "base_score": 0.5, "disable_default_eval_metric": True}
    >>> bst = xgb.train(params, dtrain, 10, obj=xgboost_multiclass(label_smoothing=0.1))
    >>> bst.predict(dtrain, output_margin=True).shape
    (300, 3)
    """
    w = _class_weights(weight)
    eps = v.float_option(label_smoothing, "label_smoothing", 0.0, 1.0)

    def objective(predt: NDArray[Any], dtrain: Any) -> tuple[FloatArray, FloatArray]:
        g, h, _ = _booster_grad_hess("xgboost", predt, dtrain, w, eps)
        np.multiply(h, 2, out=h)  # XGBoost's factor (exact in binary floating point)
        np.maximum(h, _XGB_HESS_FLOOR, out=h)  # and floor; NaN (from NaN margins) stays NaN
        return g, h

    return objective


def lightgbm_multiclass(
    *, weight: ArrayLike | None = None, label_smoothing: float = 0.0
) -> BoosterObjective:
    """LightGBM callable objective: ``multiclass`` with fastxent's options.

    Pass the result as ``params["objective"]`` (with ``params["num_class"]
    = k``) to ``lightgbm.train(params, train_set)``.  LightGBM (>= 4) calls
    it as ``obj(preds, train_data)`` with the raw scores ``preds``, float64 of
    shape ``(n, k)``; it reads the labels (class indices ``0 .. k-1``) and the
    sample weights ``s`` from ``train_data`` and returns, with ``P``, ``q``
    and ``Q`` as in :func:`softmax_grad_hess`,

        grad_ij = s_i (Q_i P_ij - q_ij)
        hess_ij = k / (k - 1) s_i Q_i P_ij (1 - P_ij)

    computed in float64, as float32 arrays of shape ``(n, k)`` in Fortran
    order: what LightGBM converts them to (``score_t`` is float;
    ``Booster.__boost`` flattens them by columns), so it copies neither.

    Parameters
    ----------
    weight : array_like of shape (k,), optional
        Class weights (PyTorch's ``weight``, as in
        :func:`fastxent.cross_entropy`).  Sample weights come from the
        ``Dataset``.
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's label smoothing.

    Returns
    -------
    obj : callable ``obj(preds, train_data) -> (grad, hess)``
        The objective, for LightGBM's ``params["objective"]``.

    Notes
    -----
    The conventions are those of ``MulticlassSoftmax`` in LightGBM's
    ``src/objective/multiclass_objective.hpp`` (v4.6.0 and master): the
    softmax in double (``Common::Softmax``), ``g = (p - [k = y]) * w`` and
    ``h = factor_ * p * (1 - p) * w`` with ``factor_ = k / (k - 1)``, which
    "rescales the redundant form of K-classification to the non-redundant
    form" (Friedman's GBDT paper), no floor; sample weights scale both.
    With the default options the model is the built-in objective's (the
    tests find identical margins).  LightGBM truncates float labels to
    integers; here a non-integer label is a ``ValueError``.

    *Intercept.*  With ``boost_from_average`` (the default) the built-in
    objective starts from the log class priors
    (``MulticlassSoftmax::BoostFromScore``); ``GBDT::BoostFromAverage``
    does that for built-in objectives only, so a callable objective starts
    from 0.  To train the model the built-in objective trains, pass
    ``boost_from_average=False`` to the built-in one.

    Threads, and the scikit-learn wrapper, as in :func:`xgboost_multiclass`.

    Examples
    --------
    >>> import numpy as np, pytest
    >>> from fastxent.objectives import lightgbm_multiclass
    >>> lgb = pytest.importorskip("lightgbm")         # the rest needs lightgbm
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((300, 4))
    >>> y = np.argmax(X[:, :3] + 0.5 * rng.standard_normal((300, 3)), axis=1)
    >>> params = {"objective": lightgbm_multiclass(weight=[1.0, 2.0, 1.0]),
    ...           "num_class": 3, "verbose": -1}
    >>> bst = lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=10)
    >>> bst.predict(X, raw_score=True).shape
    (300, 3)
    """
    w = _class_weights(weight)
    eps = v.float_option(label_smoothing, "label_smoothing", 0.0, 1.0)

    def objective(preds: NDArray[Any], train_data: Any) -> tuple[FloatArray, FloatArray]:
        g, h, k = _booster_grad_hess("lightgbm", preds, train_data, w, eps)
        grad = np.empty(g.shape, dtype=np.float32, order="F")
        hess = np.empty(g.shape, dtype=np.float32, order="F")
        with np.errstate(over="ignore"):  # beyond float32: inf, as LightGBM's own cast
            np.copyto(grad, g, casting="same_kind")
            np.multiply(h, k / (k - 1), out=hess, casting="same_kind")
        return grad, hess

    return objective


# Per library: its training-data class, the name of the scores argument, and
# how an objective is passed to it.
_BOOSTERS = {
    "xgboost": ("DMatrix", "predt", "xgboost.train(params, dtrain, obj=...)"),
    "lightgbm": ("Dataset", "preds", "lightgbm.train({'objective': obj, ...}, train_set)"),
}


def _booster_grad_hess(
    lib: str, scores: NDArray[Any], data: Any, w: FloatArray | None, eps: float
) -> tuple[FloatArray, FloatArray, int]:
    """A boosting library's call checked (the data's class, the scores'
    shape, the labels) and its per-sample gradient and Hessian diagonal,
    ``(grad, hess, k)``, with the labels and sample weights of ``data``."""
    cls, name, usage = _BOOSTERS[lib]
    module = sys.modules.get(lib)
    if module is None or not isinstance(data, getattr(module, cls)):
        # The scikit-learn wrappers call objective(y_true, y_pred): labels
        # where the scores belong, and no sample weights.
        raise TypeError(
            f"the objective expects a {lib}.{cls} as its second argument, as {usage} passes "
            f"it; got {type(data).__name__}. The scikit-learn wrappers' calling convention "
            f"objective(y_true, y_pred) is not supported: use {usage}."
        )
    if lib == "xgboost":
        n = int(data.num_row())
        s = data.get_weight()  # empty without weights
        s = s if s.size else None
    else:
        n = int(data.num_data())
        s = data.get_weight()  # None without weights
    ok = isinstance(scores, np.ndarray) and scores.ndim == 2
    if not (ok and scores.shape[0] == n and scores.shape[1] >= 2):
        raise ValueError(
            f"{name} must be an array of shape ({n}, k) with k >= 2, the raw scores {lib} "
            f"passes to a custom objective; got {getattr(scores, 'shape', None)}. Set "
            "params['num_class'] to the number of classes (>= 2)."
        )
    k = int(scores.shape[1])
    labels = _class_indices(data.get_label(), n, k, cls)
    g, h, _ = _grad_hess(scores, labels, w, s, eps, None)
    return g, h, k


def _class_weights(weight: ArrayLike | None) -> FloatArray | None:
    """The class weights, checked now (dtype, values) rather than in the first
    boosting round, and copied (later changes by the caller do not reach the
    objective); their length is checked against ``k`` at each call."""
    if weight is None:
        return None
    w = np.array(v.as_array(weight, "weight"))
    if w.ndim != 1:
        raise ValueError(f"weight must be a 1-d array (one weight per class); got shape {w.shape}.")
    return v.class_weight(w, w.shape[0], np.dtype(np.float64))


def _class_indices(label: Any, n: int, k: int, where: str) -> NDArray[np.int32]:
    """The labels as int32 class indices, checked: integers in ``[0, k)``."""
    if label is None or np.size(label) == 0:
        raise ValueError(f"the training {where} has no labels: set them (label=y).")
    y = np.asarray(label)
    if y.shape != (n,):
        raise ValueError(
            f"the {where}'s labels must be one class index per row, shape ({n},); "
            f"got shape {y.shape}."
        )
    with np.errstate(invalid="ignore"):  # NaN, inf and huge values are caught below
        yi = y.astype(np.int32)
    bad = (yi != y) | (yi < 0) | (yi >= k)
    if bad.any():
        pos = int(np.argmax(bad))
        raise ValueError(
            f"the {where}'s labels must be class indices 0, 1, ..., {k - 1} (integers stored "
            f"as floats, for num_class={k}); got {float(y[pos])!r} at row {pos}."
        )
    return yi
