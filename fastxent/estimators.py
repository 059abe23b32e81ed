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

from ._extras import missing

try:
    from scipy import optimize
    from scipy import sparse as sp
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_scalar
    from sklearn.utils.class_weight import compute_class_weight
    from sklearn.utils.extmath import safe_sparse_dot
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted
except ImportError as e:
    raise missing("fastxent.estimators", "scikit-learn and SciPy", "sklearn", e) from e

from . import _validation as v
from ._linear import _linear_run
from ._loss import cross_entropy_with_grad
from ._softmax import log_softmax, softmax

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - scikit-learn < 1.6

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


__all__ = ["SoftmaxRegression"]

_FLOAT_DTYPES: tuple[type[np.floating[Any]], ...] = (np.float64, np.float32)


def data_term(
    w: NDArray[np.float64],
    X: Any,
    y_idx: NDArray[np.intp],
    sample_weight: NDArray[Any] | None,
    class_weight: NDArray[Any] | None,
    k: int,
    fit_intercept: bool,
    reduction: str,
    num_threads: int | None,
) -> tuple[float, NDArray[np.float64]]:
    """The data term of the objective (the cross-entropy of the logits
    ``X @ W.T + b``, weighted, reduced by ``reduction``: ``"mean"`` for a
    fit, ``"sum"`` for one block of a larger one) and its gradient with
    respect to the flat parameters ``w = [W.ravel(), b]``.

    Dense X goes through :func:`fastxent.linear_cross_entropy_with_grad`'s
    chunked GEMMs (the logits never exist as a whole, and no gradient with
    respect to X is formed); sparse X through a sparse product and
    :func:`fastxent.cross_entropy_with_grad` on the (n, k) logits.  Two
    classes (``k == 1``): the two-class cross-entropy of the logits
    ``[0, z]``, so the first row of the two-row head is zero.
    """
    d = X.shape[1]
    W = w[: k * d].reshape(k, d)
    b = w[k * d :] if fit_intercept else None
    if k == 1:
        W = np.vstack([np.zeros((1, d)), W])
        b = None if b is None else np.concatenate([[0.0], b])
    W = W.astype(X.dtype)
    b = None if b is None else b.astype(X.dtype)
    options = dict(weight=class_weight, sample_weight=sample_weight, num_threads=num_threads)
    if not sp.issparse(X):
        loss, _, gW, gb, _, _ = _linear_run(
            X,
            W,
            y_idx,
            linear_bias=b,
            want_grad=True,
            want_grad_x=False,
            reduction=reduction,
            ignore_index=-100,
            label_smoothing=0.0,
            z_loss=0.0,
            softcap=None,
            chunk_size=None,
            **options,  # type: ignore[arg-type]
        )
    else:
        Z = np.asarray(X @ W.T)
        if b is not None:
            Z += b
        loss, G = cross_entropy_with_grad(Z, y_idx, reduction=reduction, out=Z, **options)  # type: ignore[call-overload]
        gW = np.asarray(X.T @ G).T
        gb = G.sum(axis=0) if b is not None else None
    rows = slice(1, 2) if k == 1 else slice(None)
    grad = np.empty_like(w)
    grad[: k * d] = gW[rows].ravel()
    if fit_intercept:
        assert gb is not None
        grad[k * d :] = gb[rows]
    return float(loss), grad


def check_plain_inputs(**arrays: Any) -> None:
    """No masked arrays (scikit-learn's checks would drop their masks) and
    no torch tensors that require grad."""
    for name, a in arrays.items():
        v.check_plain(a, name)


def check_two_classes(classes: NDArray[Any]) -> None:
    if classes.shape[0] < 2:
        raise ValueError(
            "SoftmaxRegression needs samples of at least 2 classes in the data, "
            f"but the data contains only one class: {classes[0]!r}"
        )


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

    Every parameter of ``LogisticRegression`` is accepted with its meaning
    for the lbfgs solver; those that only matter to other solvers are
    accepted and have no effect there either (``intercept_scaling``,
    ``random_state``, ``n_jobs``), and values that would need another solver
    (an L1 or elastic-net penalty, ``dual=True``, ``solver="saga"``...) are
    a ``ValueError`` that says so.

    Parameters
    ----------
    C : float > 0, default=1.0
        Inverse of the L2 regularisation strength, as in LogisticRegression:
        smaller values regularise more.  ``np.inf`` fits without a penalty.
    penalty : {"l2", None}, default="l2"
        ``None`` fits without a penalty (and ignores ``C``), like ``C=np.inf``.
        (scikit-learn >= 1.8 deprecates ``penalty`` in LogisticRegression in
        favour of ``C`` and ``l1_ratio``; both spellings work here.)
    l1_ratio : {0, 0.0, None}, default=0.0
        Only a pure L2 penalty (``0``) is available: L-BFGS cannot minimise
        an L1 term.
    dual : False, default=False
        The primal problem is solved; ``dual=True`` (liblinear only) is an
        error.
    tol : float >= 0, default=1e-4
        L-BFGS stops when the largest component of the projected gradient of
        the objective above is at most ``tol`` (LogisticRegression's meaning).
    fit_intercept : bool, default=True
        Whether to fit an (unpenalised) intercept per class.
    intercept_scaling : float, default=1
        Accepted for compatibility; as in LogisticRegression, it only matters
        to the liblinear solver and has no effect here.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes, with scikit-learn's semantics: a dict
        ``{class_label: weight}`` (classes not named weigh 1), or
        ``"balanced"`` for ``n_samples / (n_classes * np.bincount(y))``
        (computed with the sample weights when given).  They multiply the
        sample weights, as in LogisticRegression; fastxent applies them as its
        ``weight=`` class weights.
    random_state : int, RandomState instance or None, default=None
        Accepted for compatibility; L-BFGS is deterministic (it has no effect
        in LogisticRegression's lbfgs solver either).
    solver : "lbfgs", default="lbfgs"
        The only solver; any other is an error.
    max_iter : int >= 0, default=100
        Maximum number of L-BFGS iterations.  Reaching it raises a
        :class:`~sklearn.exceptions.ConvergenceWarning`.
    verbose : int >= 0, default=0
        L-BFGS progress output, as in LogisticRegression (SciPy's ``iprint``).
    warm_start : bool, default=False
        Start from the previous fit's ``coef_`` and ``intercept_`` (which must
        have the same shape) instead of from zero.
    n_jobs : int or None, default=None
        Accepted for compatibility; as in LogisticRegression's multinomial
        lbfgs fit it has no effect.  Use ``num_threads`` for fastxent's
        kernels.
    num_threads : int >= 1, default=None
        Threads for fastxent's row kernels.  In ``fit``, ``None`` is the
        calling thread, as in :func:`fastxent.linear_cross_entropy` and
        unlike :func:`fastxent.cross_entropy` (OpenMP's default, all cores):
        the products between the row kernels, most of the work, run on the
        threads of SciPy's BLAS, as it is set (threadpoolctl), the BLAS that
        L-BFGS uses too, and a second thread pool taking turns with BLAS's
        on the same cores makes both spin-wait.  In ``predict_proba`` and
        ``predict_log_proba`` (one product, then one softmax), ``None`` is
        OpenMP's default, as in :func:`fastxent.softmax`.

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
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Column names, when ``X`` in ``fit`` was a DataFrame with string
        column names.
    n_iter_ : ndarray of shape (1,)
        Number of L-BFGS iterations run (LogisticRegression's format).

    See Also
    --------
    sklearn.linear_model.LogisticRegression : The reference implementation.
    fastxent.metrics.log_loss : The log-loss of logits such as
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
        penalty: str | None = "l2",
        l1_ratio: float | None = 0.0,
        dual: bool = False,
        tol: float = 1e-4,
        fit_intercept: bool = True,
        intercept_scaling: float = 1,
        class_weight: dict[Any, float] | str | None = None,
        random_state: Any = None,
        solver: str = "lbfgs",
        max_iter: int = 100,
        verbose: int = 0,
        warm_start: bool = False,
        n_jobs: int | None = None,
        num_threads: int | None = None,
    ) -> None:
        self.C = C
        self.penalty = penalty
        self.l1_ratio = l1_ratio
        self.dual = dual
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.intercept_scaling = intercept_scaling
        self.class_weight = class_weight
        self.random_state = random_state
        self.solver = solver
        self.max_iter = max_iter
        self.verbose = verbose
        self.warm_start = warm_start
        self.n_jobs = n_jobs
        self.num_threads = num_threads

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _check_params(self) -> float:
        """Check the parameters; return the penalty's ``1 / C`` (0 for none)."""
        owner = type(self).__name__
        for name in (
            "C", "tol", "intercept_scaling", "l1_ratio", "max_iter", "verbose", "num_threads",
            "n_jobs",
        ):  # fmt: skip
            if getattr(self, name) is not None:
                v.number_param(getattr(self, name), name, owner)
        check_scalar(self.C, "C", Real, min_val=0, include_boundaries="neither")
        check_scalar(self.max_iter, "max_iter", Integral, min_val=0)
        check_scalar(self.tol, "tol", Real, min_val=0)
        check_scalar(self.verbose, "verbose", Integral, min_val=0)
        check_scalar(self.intercept_scaling, "intercept_scaling", Real)
        for name in ("fit_intercept", "warm_start", "dual"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool. Got {getattr(self, name)!r} instead.")
        if self.num_threads is not None:
            check_scalar(self.num_threads, "num_threads", Integral, min_val=1)
        if self.n_jobs is not None:
            check_scalar(self.n_jobs, "n_jobs", Integral)
        if self.solver != "lbfgs":
            raise ValueError(
                f"SoftmaxRegression always uses the L-BFGS solver; got solver={self.solver!r}. "
                "Use sklearn.linear_model.LogisticRegression for the other solvers."
            )
        if self.dual:
            raise ValueError(
                "dual=True needs LogisticRegression's liblinear solver; SoftmaxRegression "
                "solves the primal problem (dual=False)."
            )
        if self.penalty not in ("l2", None, "deprecated"):
            raise ValueError(
                f"SoftmaxRegression fits an L2 penalty or none: penalty must be 'l2' or None; "
                f"got {self.penalty!r}. L1 and elastic-net penalties need LogisticRegression's "
                "saga or liblinear solvers."
            )
        if self.l1_ratio is not None:
            check_scalar(self.l1_ratio, "l1_ratio", Real)
        if self.l1_ratio not in (None, 0):
            raise ValueError(
                f"SoftmaxRegression fits a pure L2 penalty (l1_ratio=0); got l1_ratio="
                f"{self.l1_ratio!r}. L1 and elastic-net penalties need LogisticRegression's "
                "saga or liblinear solvers."
            )
        cw = self.class_weight
        if not (cw is None or isinstance(cw, dict) or (isinstance(cw, str) and cw == "balanced")):
            raise ValueError(
                f"class_weight must be a dict, 'balanced' or None; got {self.class_weight!r}."
            )
        if self.penalty is None:
            if self.C != 1.0:
                warnings.warn(
                    "Setting penalty=None will ignore the C parameter.", UserWarning, stacklevel=3
                )
            return 0.0
        return 0.0 if np.isinf(self.C) else 1.0 / float(self.C)

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
            fastxent's loss functions accept negative weights; the estimator
            does not: with them the objective can be unbounded below.

        Returns
        -------
        self : SoftmaxRegression
            The fitted estimator.
        """
        penalty_inv_c = self._check_params()
        check_plain_inputs(X=X, y=y, sample_weight=sample_weight)
        X, y = _validate_data(self, X, y, accept_sparse="csr", dtype=_FLOAT_DTYPES, order="C")
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        check_two_classes(classes)
        n = X.shape[0]
        sw: NDArray[Any] | None = None
        if sample_weight is not None:
            # (ensure_non_negative= needs scikit-learn >= 1.6: check it here)
            sw = _check_sample_weight(sample_weight, X, dtype=X.dtype)
            if np.any(sw < 0):
                raise ValueError("Negative values in sample_weight are not allowed.")
        cw = self._class_weights(classes, np.asarray(y), sw, X.dtype)
        # LogisticRegression scales the penalty by the total weight after the
        # class weights multiply the sample weights; so does the "mean" of
        # cross_entropy with weight=cw: it divides by sum_i s_i cw[y_i].
        per_sample = np.ones(n) if sw is None else sw.astype(np.float64)
        if cw is not None:
            per_sample = per_sample * cw.astype(np.float64)[y_idx]
        return self._fit_lbfgs(X, y_idx, sw, cw, classes, float(per_sample.sum()), penalty_inv_c)

    def _fit_lbfgs(
        self,
        X: Any,
        y_idx: Any,
        sw: Any,
        cw: NDArray[Any] | None,
        classes: NDArray[Any],
        sw_sum: float,
        penalty_inv_c: float,
    ) -> SoftmaxRegression:
        """The rest of ``fit`` once the data are checked (shared with
        :class:`fastxent.dask.SoftmaxRegression`, whose ``X`` is a Dask
        array): the penalty scale, the start point, L-BFGS on
        :meth:`_objective`, the convergence warning and the fitted attributes.
        ``sw_sum`` is ``sum_i s_i cw[y_i]``."""
        if not sw_sum > 0:
            raise ValueError("Sample weights must contain at least one non-zero number.")
        l2 = penalty_inv_c / sw_sum
        d = X.shape[1]
        n_classes = classes.shape[0]

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

        # Threads: the products run on BLAS's (SciPy's, as L-BFGS's own: one
        # BLAS thread pool, so no second one spins against it; README), the
        # row kernels on the calling thread unless num_threads says otherwise.
        self._fit_threads = self.num_threads
        res = optimize.minimize(
            self._objective,
            w0,
            method="L-BFGS-B",
            jac=True,
            args=(X, y_idx, sw, l2, k, cw),
            options={
                "maxiter": self.max_iter,
                "maxls": 50,
                "gtol": self.tol,
                "ftol": 64 * np.finfo(float).eps,
            },
            callback=self._progress_printer() if self.verbose else None,
        )
        if res.status != 0:
            warnings.warn(
                f"L-BFGS failed to converge after {res.nit} iteration(s) (status="
                f"{res.status}): {res.message}. Increase max_iter, or scale the data "
                "(e.g. with sklearn.preprocessing.StandardScaler).",
                ConvergenceWarning,
                stacklevel=3,  # the caller of fit
            )
        self.classes_ = classes
        # In X's dtype, as LogisticRegression (float32 X: float32 coef_).
        self.coef_ = res.x[: k * d].reshape(k, d).astype(X.dtype)
        self.intercept_ = (res.x[k * d :] if self.fit_intercept else np.zeros(k)).astype(X.dtype)
        self.n_iter_ = np.array([min(res.nit, self.max_iter)], dtype=np.int32)
        return self

    def _class_weights(
        self, classes: NDArray[Any], y: NDArray[Any], sw: NDArray[Any] | None, dtype: Any
    ) -> NDArray[Any] | None:
        """``class_weight`` as one weight per sorted class, or None."""
        if self.class_weight is None:
            return None
        try:  # scikit-learn >= 1.6 weighs "balanced" counts by the sample weights
            cw = compute_class_weight(self.class_weight, classes=classes, y=y, sample_weight=sw)
        except TypeError:  # pragma: no cover - older scikit-learn
            cw = compute_class_weight(self.class_weight, classes=classes, y=y)
        return np.asarray(cw, dtype=dtype)

    def _progress_printer(self) -> Any:
        """An L-BFGS callback printing one line per iteration (``verbose``)."""
        count = [0]

        def show(intermediate_result: Any) -> None:
            count[0] += 1
            print(f"L-BFGS iteration {count[0]}: objective {intermediate_result.fun:.10g}")

        return show

    _fit_threads: int | None = None

    def _objective(
        self,
        w: NDArray[np.float64],
        X: Any,
        y_idx: NDArray[np.intp],
        sample_weight: NDArray[Any] | None,
        l2: float,
        k: int,
        class_weight: NDArray[Any] | None = None,
    ) -> tuple[float, NDArray[np.float64]]:
        """LogisticRegression's objective and its gradient at the flat parameters w."""
        loss, grad = self._data_term(w, X, y_idx, sample_weight, k, class_weight)
        W = w[: k * X.shape[1]]
        grad[: W.size] += l2 * W
        return loss + 0.5 * l2 * float(W @ W), grad

    def _data_term(
        self,
        w: NDArray[np.float64],
        X: Any,
        y_idx: Any,
        sample_weight: Any,
        k: int,
        class_weight: NDArray[Any] | None,
    ) -> tuple[float, NDArray[np.float64]]:
        """The weighted mean cross-entropy and its gradient (a distributed
        pass in :class:`fastxent.dask.SoftmaxRegression`)."""
        return data_term(
            w,
            X,
            y_idx,
            sample_weight,
            class_weight,
            k,
            self.fit_intercept,
            "mean",
            self._fit_threads,
        )

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
        check_plain_inputs(X=X)
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
            Columns in the order of ``classes_``.
        """
        Z = self._logits(X)
        return log_softmax(Z, out=Z, num_threads=self.num_threads)
