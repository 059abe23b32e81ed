"""scikit-learn estimators built on fastxent's fused loss and gradient.

Needs the optional ``sklearn`` extra (scikit-learn and SciPy)::

    pip install "fastxent[sklearn]"

``import fastxent`` does not import this module (nor scikit-learn or SciPy);
``import fastxent.estimators`` or ``fastxent.estimators`` does.

Design
------
:class:`SoftmaxRegression` minimises exactly the objective that
``sklearn.linear_model.LogisticRegression(solver="lbfgs")`` minimises, with
the same scaling, so that ``C`` and ``tol`` mean the same thing in both and
the two reach the same optimum::

    f(W, b) = sum_i s_i * loss_i / sum_i s_i  +  ||W||^2 / (2 * C * sum_i s_i)

(``s_i = 1`` without sample weights; the intercept ``b`` is not penalised).
This is ``(C * sum_i s_i * loss_i + ||W||^2 / 2) / (C * sum_i s_i)``, the
textbook ``C``-weighted objective divided by a constant.  The optimiser is
SciPy's L-BFGS-B with LogisticRegression's options (``gtol=tol``,
``ftol=64 * eps``, ``maxls=50``), started from zero (or from the previous
fit with ``warm_start=True``).

The loss and the gradient with respect to the logits come from one call of
:func:`fastxent.cross_entropy_with_grad` (``reduction="mean"``, weighted by
``sample_weight``), written in place over the logits; the gradient with
respect to ``W`` is ``G.T @ X`` (one BLAS call).

Two classes are handled as LogisticRegression handles them: one coefficient
row ``w`` (``coef_`` of shape (1, d)), the positive class is ``classes_[1]``
and ``decision_function`` returns the log-odds ``X @ w + b`` of shape (n,).
The binomial loss is the two-class cross-entropy of the logits ``[0, z]``,
so fastxent computes it too.  (A two-row multinomial model with the same
``C`` would be a different model: the penalty ``||w0||^2 + ||w1||^2`` of the
symmetric solution ``w1 = -w0 = w / 2`` is half of ``||w||^2``.)
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_scalar
from sklearn.utils.extmath import safe_sparse_dot
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from ._loss import cross_entropy_with_grad
from ._softmax import log_softmax, softmax

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - scikit-learn < 1.6

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


__all__ = ["SoftmaxRegression"]

_FLOAT_DTYPES: tuple[type[np.floating[Any]], ...] = (np.float64, np.float32)


class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression fitted with fastxent's fused loss+gradient.

    A drop-in for ``sklearn.linear_model.LogisticRegression(solver="lbfgs")``
    with an L2 penalty: the same objective, scaling and stopping rule, so the
    same ``C`` and ``tol`` give the same optimum.  The loss and gradient come
    from :func:`fastxent.cross_entropy_with_grad` on the logits
    ``X @ coef_.T + intercept_``; SciPy's L-BFGS-B minimises

        sum_i s_i loss_i / sum_i s_i + ||coef_||^2 / (2 C sum_i s_i),

    the mean cross-entropy of the softmax of the logits (weighted by the
    sample weights ``s_i``) plus the L2 penalty.  The intercept is not
    penalised.

    Parameters
    ----------
    C : float > 0, default=1.0
        Inverse of the L2 regularisation strength, as in LogisticRegression:
        smaller values regularise more.  ``np.inf`` fits without a penalty.
    fit_intercept : bool, default=True
        Whether to fit an (unpenalised) intercept per class.
    max_iter : int >= 0, default=100
        Maximum number of L-BFGS iterations.  Reaching it raises a
        :class:`~sklearn.exceptions.ConvergenceWarning`.
    tol : float >= 0, default=1e-4
        L-BFGS stops when the largest component of the projected gradient of
        the objective above is at most ``tol`` (LogisticRegression's meaning).
    warm_start : bool, default=False
        Start from the previous fit's ``coef_`` and ``intercept_`` (which must
        have the same shape) instead of from zero.
    num_threads : int >= 1, default=None
        Threads for fastxent's kernels; ``None`` uses OpenMP's default
        (``OMP_NUM_THREADS``, threadpoolctl limits).  The matrix products go
        through NumPy's BLAS, which has its own thread pool.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels (any hashable, sortable values), sorted.
    coef_ : ndarray of shape (n_classes, n_features) or (1, n_features)
        Coefficients; one row (of the positive class ``classes_[1]``) for a
        binary problem, as in LogisticRegression.
    intercept_ : ndarray of shape (n_classes,) or (1,)
        Intercepts (zeros when ``fit_intercept=False``).
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when ``X`` in ``fit`` was a DataFrame with string
        column names.
    n_iter_ : ndarray of shape (1,)
        Number of L-BFGS iterations run (LogisticRegression's format).

    See Also
    --------
    sklearn.linear_model.LogisticRegression : the reference implementation.
    fastxent.metrics.log_loss : the log-loss of logits such as
        ``decision_function``'s output.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from fastxent.estimators import SoftmaxRegression
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = SoftmaxRegression(max_iter=1000).fit(X, y)
    >>> clf.coef_.shape, clf.predict(X[:3]).tolist()
    ((3, 4), [0, 0, 0])
    >>> round(clf.score(X, y), 2)
    0.97
    """

    classes_: NDArray[Any]
    coef_: NDArray[np.float64]
    intercept_: NDArray[np.float64]
    n_iter_: NDArray[np.int32]

    def __init__(
        self,
        C: float = 1.0,
        *,
        fit_intercept: bool = True,
        max_iter: int = 100,
        tol: float = 1e-4,
        warm_start: bool = False,
        num_threads: int | None = None,
    ) -> None:
        self.C = C
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.num_threads = num_threads

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _check_params(self) -> None:
        check_scalar(self.C, "C", Real, min_val=0, include_boundaries="neither")
        check_scalar(self.max_iter, "max_iter", Integral, min_val=0)
        check_scalar(self.tol, "tol", Real, min_val=0)
        for name in ("fit_intercept", "warm_start"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool. Got {getattr(self, name)!r} instead.")
        if self.num_threads is not None:
            check_scalar(self.num_threads, "num_threads", Integral, min_val=1)

    def fit(
        self, X: Any, y: ArrayLike, sample_weight: ArrayLike | None = None
    ) -> SoftmaxRegression:
        """Fit the model by L-BFGS on fastxent's loss and gradient.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data; float32 stays float32 (the loss is computed in
            float32 with float64 accumulation), anything else becomes float64.
        y : array-like of shape (n_samples,)
            Class labels, at least two distinct values.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights, not all zero; ``None`` weighs every sample 1.

        Returns
        -------
        self : SoftmaxRegression
            The fitted estimator.
        """
        self._check_params()
        X, y = _validate_data(self, X, y, accept_sparse="csr", dtype=_FLOAT_DTYPES, order="C")
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        n_classes = classes.shape[0]
        if n_classes < 2:
            raise ValueError(
                "SoftmaxRegression needs samples of at least 2 classes in the data, "
                f"but the data contains only one class: {classes[0]!r}"
            )
        n, d = X.shape
        sw: NDArray[Any] | None = None
        if sample_weight is not None:
            # (ensure_non_negative= needs scikit-learn >= 1.6: check it here)
            sw = _check_sample_weight(sample_weight, X, dtype=X.dtype)
            if np.any(sw < 0):
                raise ValueError("Negative values in sample_weight are not allowed.")
            sw_sum = float(sw.sum(dtype=np.float64))
            if not sw_sum > 0:
                raise ValueError("Sample weights must contain at least one non-zero number.")
        else:
            sw_sum = float(n)
        l2 = 0.0 if np.isinf(self.C) else 1.0 / (self.C * sw_sum)

        k = 1 if n_classes == 2 else n_classes  # rows of coef_
        w0 = np.zeros(k * (d + int(self.fit_intercept)), dtype=np.float64)
        if self.warm_start and hasattr(self, "coef_"):
            if self.coef_.shape != (k, d):
                raise ValueError(
                    f"warm_start: the previous fit's coef_ has shape {self.coef_.shape}, "
                    f"this fit needs ({k}, {d}); set warm_start=False to start afresh."
                )
            w0[: k * d] = self.coef_.ravel()
            if self.fit_intercept:
                w0[k * d :] = self.intercept_

        res = optimize.minimize(
            self._objective,
            w0,
            method="L-BFGS-B",
            jac=True,
            args=(X, y_idx, sw, l2, k),
            options={
                "maxiter": self.max_iter,
                "maxls": 50,
                "gtol": self.tol,
                "ftol": 64 * np.finfo(float).eps,
            },
        )
        if res.status != 0:
            warnings.warn(
                f"L-BFGS failed to converge after {res.nit} iteration(s) (status="
                f"{res.status}): {res.message}. Increase max_iter, or scale the data "
                "(e.g. with sklearn.preprocessing.StandardScaler).",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.classes_ = classes
        self.coef_ = res.x[: k * d].reshape(k, d).copy()
        self.intercept_ = res.x[k * d :].copy() if self.fit_intercept else np.zeros(k)
        self.n_iter_ = np.array([min(res.nit, self.max_iter)], dtype=np.int32)
        return self

    def _objective(
        self,
        w: NDArray[np.float64],
        X: Any,
        y_idx: NDArray[np.intp],
        sample_weight: NDArray[Any] | None,
        l2: float,
        k: int,
    ) -> tuple[float, NDArray[np.float64]]:
        """LogisticRegression's objective and its gradient at the flat parameters w."""
        d = X.shape[1]
        W = w[: k * d].reshape(k, d)
        S = np.asarray(safe_sparse_dot(X, W.T.astype(X.dtype, copy=False)))
        if self.fit_intercept:
            S += w[k * d :].astype(X.dtype, copy=False)
        if k == 1:  # binomial: the two-class cross-entropy of [0, z]
            Z = np.zeros((X.shape[0], 2), dtype=X.dtype)
            Z[:, 1] = S[:, 0]
        else:
            Z = np.ascontiguousarray(S)
        loss, G = cross_entropy_with_grad(
            Z, y_idx, sample_weight=sample_weight, out=Z, num_threads=self.num_threads
        )
        if k == 1:
            G = G[:, 1:]
        grad = np.empty_like(w)
        grad[: k * d] = (np.asarray(safe_sparse_dot(G.T, X)) + l2 * W).ravel()
        if self.fit_intercept:
            grad[k * d :] = G.sum(axis=0, dtype=np.float64)
        return float(loss) + 0.5 * l2 * float(W.ravel() @ W.ravel()), grad

    def decision_function(self, X: Any) -> NDArray[np.floating[Any]]:
        """The logits ``X @ coef_.T + intercept_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes), or (n_samples,) for two classes
            For two classes, the log-odds of ``classes_[1]`` (as in
            LogisticRegression).
        """
        check_is_fitted(self)
        X = _validate_data(self, X, accept_sparse="csr", dtype=_FLOAT_DTYPES, reset=False)
        S = np.asarray(safe_sparse_dot(X, self.coef_.T)) + self.intercept_
        return S[:, 0] if S.shape[1] == 1 else S

    def _logits(self, X: Any) -> NDArray[np.floating[Any]]:
        """The logits of all classes: ``[0, z]`` for a binary problem."""
        S = self.decision_function(X)
        if S.ndim == 1:
            return np.column_stack([np.zeros_like(S), S])
        return np.ascontiguousarray(S)

    def predict(self, X: Any) -> NDArray[Any]:
        """Predict class labels: the class with the largest logit.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        S = self.decision_function(X)
        idx = (S > 0).astype(np.intp) if S.ndim == 1 else S.argmax(axis=1)
        labels: NDArray[Any] = self.classes_[idx]
        return labels

    def predict_proba(self, X: Any) -> NDArray[np.floating[Any]]:
        """Class probabilities: :func:`fastxent.softmax` of the logits.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``; rows sum to 1.
        """
        Z = self._logits(X)
        return softmax(Z, out=Z, num_threads=self.num_threads)

    def predict_log_proba(self, X: Any) -> NDArray[np.floating[Any]]:
        """Log class probabilities: :func:`fastxent.log_softmax` of the logits.

        Computed from the logits directly, so very small probabilities keep
        their logarithm instead of becoming ``log(0) = -inf``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        Z = self._logits(X)
        return log_softmax(Z, out=Z, num_threads=self.num_threads)
