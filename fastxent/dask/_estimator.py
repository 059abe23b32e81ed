"""fastxent.dask.SoftmaxRegression: the in-memory estimator's objective,
L-BFGS on the client, each loss+gradient evaluation one pass over the blocks.

It subclasses :class:`fastxent.estimators.SoftmaxRegression` and keeps all
of it (parameters and their checks, class weights, the L-BFGS options and
stopping rule, warm starts, the convergence warning, the fitted
attributes); what differs is where the data are and so how the data term is
summed:

1. ``fit`` checks shapes, dtypes and chunks on the client (nothing runs);
2. persists ``X``, ``y`` and the sample weights once (in the cluster's
   memory with a ``distributed`` client);
3. one pass over the blocks returns, per block, the labels present with
   their (sample-weighted) counts and whether ``X`` and the weights are
   finite: the classes, the class weights and the total weight
   ``S = sum_i s_i cw[y_i]`` follow on the client;
4. every evaluation of the objective at the flat parameters ``w`` (a few
   kilobytes, sent as one task) runs :func:`fastxent.estimators.data_term`
   with ``reduction="sum"`` on each block (the fused linear cross-entropy:
   no ``n x m`` logits) and sums the blocks' ``(value, gradient)`` in the
   fixed tree of ``_dask_graph``; the client divides by ``S`` and adds the
   penalty ``||W||^2 / (2 C S)``, exactly as the in-memory ``"mean"`` does.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
from numpy.typing import NDArray

from .._extras import missing
from . import _graph as g

try:
    from sklearn.utils.class_weight import compute_class_weight
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted

    from .. import estimators as _est
    from ..estimators import _FLOAT_DTYPES, check_two_classes, data_term
    from ..estimators import SoftmaxRegression as _InMemorySoftmaxRegression
except ImportError as e:
    raise missing(
        "fastxent.dask.SoftmaxRegression", "scikit-learn and SciPy", "sklearn,dask", e
    ) from e

__all__ = ["SoftmaxRegression"]


def _term_block(
    X: Any, y: Any, s: Any, w: Any, *, cw: Any, k: int, fit_intercept: bool, num_threads: Any
) -> NDArray[np.float64]:
    """``[value, gradient...]`` of one block's share of the data term (its sum)."""
    with g.one_blas_thread():
        value, grad = data_term(w, X, y, s, cw, k, fit_intercept, "sum", num_threads)
    return np.concatenate([[value], grad])


def _stats_block(X: Any, y: Any, s: Any) -> tuple[Any, ...]:
    """The labels of one block with their (weighted) counts, whether its X
    is finite, and whether its sample weights are finite and >= 0."""
    labels, inverse = np.unique(y, return_inverse=True)
    w = None if s is None else np.asarray(s, dtype=np.float64)
    counts = np.bincount(inverse.reshape(-1), weights=w, minlength=labels.shape[0])
    s_finite = w is None or bool(np.all(np.isfinite(w)))
    s_negative = w is not None and bool(np.any(w < 0))
    return labels, counts.astype(np.float64), bool(np.all(np.isfinite(X))), s_finite, s_negative


def _label_index(y: Any, classes: Any) -> Any:
    return np.searchsorted(classes, y).astype(np.intp)


def _predict_block(X: Any, *, estimator: Any, method: str) -> Any:
    return getattr(estimator, method)(g.one(X))


class SoftmaxRegression(_InMemorySoftmaxRegression):
    """Multinomial logistic regression fitted over a Dask array of rows.

    The same estimator as :class:`fastxent.estimators.SoftmaxRegression`
    (and so ``LogisticRegression(solver="lbfgs")``): the same parameters,
    objective

        sum_i s_i cw[y_i] loss_i / S + ||coef_||^2 / (2 C S),   S = sum_i s_i cw[y_i],

    L-BFGS options and stopping rule, so it reaches the same optimum.
    L-BFGS runs on the client; each evaluation of the objective and its
    gradient is one pass over the blocks of ``X`` (the fused linear
    cross-entropy of each block, the blocks' sums added in a fixed tree), and
    only the ``n_classes x (n_features + 1)`` parameters and gradient sums
    travel.  ``X`` is persisted once, at the start of ``fit``.

    Parameters
    ----------
    C, penalty, l1_ratio, dual, tol, fit_intercept, intercept_scaling, class_weight, \
random_state, solver, max_iter, verbose, warm_start, n_jobs : as in SoftmaxRegression
        As :class:`fastxent.estimators.SoftmaxRegression`.
        ``class_weight="balanced"`` counts the classes weighted by the
        sample weights (scikit-learn >= 1.6's rule).
    num_threads : int >= 1, default=None
        Threads of fastxent's kernels in each block; ``None`` means 1 here,
        as in the in-memory fit, and for a second reason: Dask runs one
        block per core.

    Attributes
    ----------
    classes_, coef_, intercept_, n_features_in_, n_iter_
        NumPy arrays, as in :class:`fastxent.estimators.SoftmaxRegression`.

    Notes
    -----
    ``fit(X, y, sample_weight=None)`` takes a dask array ``X`` of shape
    (n_samples, n_features) chunked along its rows, ``y`` and
    ``sample_weight`` as dask arrays with the same row chunks or NumPy
    arrays; NumPy ``X`` works too (one block).  ``predict``,
    ``predict_proba``, ``predict_log_proba`` and ``decision_function``
    return dask arrays (with X's row chunks) for dask input and NumPy arrays
    for NumPy input.  Computations use Dask's current scheduler: a
    ``distributed.Client`` when one is active.

    Examples
    --------
    >>> import dask, dask.array as da
    >>> from sklearn.datasets import load_iris
    >>> from fastxent.dask import SoftmaxRegression
    >>> X, y = load_iris(return_X_y=True)
    >>> Xd, yd = da.from_array(X, chunks=(50, 4)), da.from_array(y, chunks=50)
    >>> with dask.config.set(scheduler="synchronous"):
    ...     clf = SoftmaxRegression(max_iter=1000).fit(Xd, yd)
    ...     clf.predict(Xd[:3]).compute().tolist()
    [0, 0, 0]
    >>> clf.coef_.shape, type(clf.coef_).__name__
    ((3, 4), 'ndarray')
    """

    _sw_sum: float = 1.0

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> SoftmaxRegression:
        """Fit the model by L-BFGS on the client.

        Each evaluation of the loss and gradient is one pass over the blocks.

        Parameters
        ----------
        X : dask array of shape (n_samples, n_features), or array-like
            Chunked along its rows (a feature axis split over chunks is
            rechunked, with a warning).  float32 stays float32; other
            dtypes become float64.
        y : dask array of shape (n_samples,) with X's row chunks, or array-like
            Class labels, at least two distinct values.
        sample_weight : dask array or array-like of shape (n_samples,), optional
            Non-negative weights, not all zero.

        Returns
        -------
        self : SoftmaxRegression
            The fitted estimator.
        """
        penalty_inv_c = self._check_params()
        X, y, sw = self._dask_data(X, y, sample_weight)
        # X persisted once, for every pass.  Blocks that distributed received
        # over the network can be misaligned views of a frame, which every
        # evaluation would copy again: they are copied once, here (aligned
        # blocks are kept as they are).
        X = X.map_blocks(g.aligned, dtype=X.dtype, meta=np.empty((0, 0), dtype=X.dtype))
        X, y, sw = dask.persist(X, y, sw)
        classes, counts = self._label_stats(X, y, sw)
        y_idx = y.map_blocks(_label_index, classes, dtype=np.intp).persist()
        del y
        cw: NDArray[Any] | None = None
        if self.class_weight == "balanced":
            cw = (counts.sum() / (classes.shape[0] * counts)).astype(X.dtype)
        elif self.class_weight is not None:
            cw = np.asarray(
                compute_class_weight(self.class_weight, classes=classes, y=classes), X.dtype
            )
        total = counts if cw is None else counts * cw.astype(np.float64)
        self._sw_sum = float(total.sum())
        self._fit_lbfgs(X, y_idx, sw, cw, classes, self._sw_sum, penalty_inv_c)
        return self

    def _dask_data(self, X: Any, y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
        """X, y and the sample weights as dask arrays with the same row
        chunks, after every check that needs no data."""
        _est.check_plain_inputs(X=X, y=y, sample_weight=sample_weight)
        if not isinstance(X, da.Array):
            if dask.is_dask_collection(X) or dask.is_dask_collection(y):
                raise TypeError(
                    "X must be a dask array (or X and y both NumPy arrays); got X of type "
                    f"{type(X).__name__} and y of type {type(y).__name__}."
                )
            X, y = _est._validate_data(self, X, y, dtype=_FLOAT_DTYPES, order="C")  # type: ignore[attr-defined]
            X = da.from_array(X, chunks=X.shape)
        else:
            g.check_known_chunks(X, "X")
            if X.ndim != 2:
                raise ValueError(
                    f"X must be a 2-d dask array (n_samples, n_features); got shape {X.shape}."
                )
            if X.dtype.kind not in "fiub":
                raise TypeError(f"X must hold real numbers; got dtype={X.dtype}.")
            if X.shape[0] == 0 or X.shape[1] == 0:
                raise ValueError(f"X must have at least one sample and one feature; got {X.shape}.")
            if X.dtype not in _FLOAT_DTYPES:
                X = X.astype(np.float64)
            X = g.whole_axis(X, 1, "X", "feature", stacklevel=3)
            self.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        y = g.per_row(y, "y", (X.shape[0],), X, "X", stacklevel=3)
        if sample_weight is not None and np.ndim(sample_weight) == 0:
            sample_weight = da.full(X.shape[0], float(sample_weight), chunks=X.chunks[0])
        sw = None
        if sample_weight is not None:
            sw = g.per_row(sample_weight, "sample_weight", (X.shape[0],), X, "X", stacklevel=3)
            if sw.dtype.kind not in "fiu":
                raise TypeError(f"sample_weight must hold real numbers; got dtype={sw.dtype}.")
        return X, y, sw

    def _label_stats(self, X: Any, y: Any, sw: Any) -> tuple[NDArray[Any], NDArray[np.float64]]:
        """One pass: the sorted classes and their (weighted) counts; checks
        that X and the sample weights are finite and the weights >= 0."""
        stats = da.blockwise(
            _stats_block,
            "ij",
            X,
            "ij",
            y,
            "i",
            sw,
            None if sw is None else "i",
            dtype=np.float64,
            meta=np.empty((0, 0)),
        )
        blocks = dask.compute(*stats.to_delayed().ravel())
        if not all(b[2] for b in blocks):
            raise ValueError("Input X contains NaN or infinity.")
        if not all(b[3] for b in blocks):
            raise ValueError("sample_weight must be finite; it contains NaN or infinity.")
        if any(b[4] for b in blocks):
            raise ValueError("Negative values in sample_weight are not allowed.")
        classes = np.unique(np.concatenate([b[0] for b in blocks]))
        check_classification_targets(classes)
        check_two_classes(classes)
        counts = np.zeros(classes.shape[0])
        for labels, c, *_ in blocks:  # in block order: the same sums every time
            counts[np.searchsorted(classes, labels)] += c
        return classes, counts

    def _data_term(
        self,
        w: NDArray[np.float64],
        X: Any,
        y_idx: Any,
        sample_weight: Any,
        k: int,
        class_weight: NDArray[Any] | None,
    ) -> tuple[float, NDArray[np.float64]]:
        """The weighted mean cross-entropy and its gradient: one pass over
        the blocks, the blocks' sums added in the fixed tree, divided by
        ``S = sum_i s_i cw[y_i]``."""
        res = da.blockwise(
            _term_block,
            "ij",
            X,
            "ij",
            y_idx,
            "i",
            sample_weight,
            None if sample_weight is None else "i",
            dask.delayed(w),
            None,
            cw=class_weight,
            k=k,
            fit_intercept=self.fit_intercept,
            num_threads=self.num_threads or 1,
            dtype=np.float64,
            meta=np.empty((0, 0)),
        )
        (total,) = dask.compute(g.tree_sum(res, "ij", 1, None, "p", (w.size + 1,)))
        return float(total[0]) / self._sw_sum, total[1:] / self._sw_sum

    # ------------------------------------------------------------ prediction

    def _in_memory(self) -> _InMemorySoftmaxRegression:
        """The fitted model as the in-memory estimator (what each block runs)."""
        est = _InMemorySoftmaxRegression(**self.get_params())
        est.set_params(num_threads=self.num_threads or 1)
        for name in ("classes_", "coef_", "intercept_", "n_iter_", "n_features_in_"):
            setattr(est, name, getattr(self, name))
        return est

    def _map(self, X: da.Array, method: str, width: int | None, dtype: Any) -> da.Array:
        """``method`` of the in-memory model on every block of X: columns of
        ``width`` (None: one value per row)."""
        check_is_fitted(self)
        g.check_known_chunks(X, "X")
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {X.shape}, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        X = g.whole_axis(X, 1, "X", "feature", stacklevel=4)
        out = "ij" if width is not None else "i"
        return da.blockwise(
            _predict_block,
            out,
            X,
            "ij",
            adjust_chunks=None if width is None else {"j": width},
            estimator=self._in_memory(),
            method=method,
            dtype=dtype,
            meta=np.empty((0,) * len(out), dtype=dtype),
        )

    def _float_dtype(self, X: da.Array) -> Any:
        """The dtype of the in-memory model's logits for X."""
        x_dtype = X.dtype if X.dtype in _FLOAT_DTYPES else np.dtype(np.float64)
        return np.result_type(x_dtype, self.coef_.dtype)

    def decision_function(self, X: Any) -> Any:
        """The logits ``X @ coef_.T + intercept_`` (log-odds for two classes).

        Parameters
        ----------
        X : dask array of shape (n_samples, n_features), or array-like
            Chunked along its rows.

        Returns
        -------
        dask array or ndarray of shape (n_samples, n_classes), or (n_samples,)
            A dask array for dask ``X`` (one block per row block), else NumPy.
        """
        if not isinstance(X, da.Array):
            return super().decision_function(X)
        k = self.coef_.shape[0]
        return self._map(X, "decision_function", None if k == 1 else k, self._float_dtype(X))

    def predict(self, X: Any) -> Any:
        """Class labels: the class with the largest logit.

        Parameters
        ----------
        X : dask array of shape (n_samples, n_features), or array-like
            Chunked along its rows.

        Returns
        -------
        dask array or ndarray of shape (n_samples,)
            Labels from ``classes_``: a dask array for dask ``X``, else NumPy.
        """
        if not isinstance(X, da.Array):
            return super().predict(X)
        return self._map(X, "predict", None, self.classes_.dtype)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities: :func:`fastxent.softmax` of the logits.

        Parameters
        ----------
        X : dask array of shape (n_samples, n_features), or array-like
            Chunked along its rows.

        Returns
        -------
        dask array or ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``: a dask array for dask ``X``, else NumPy.
        """
        if not isinstance(X, da.Array):
            return super().predict_proba(X)
        return self._map(X, "predict_proba", self.classes_.shape[0], self._float_dtype(X))

    def predict_log_proba(self, X: Any) -> Any:
        """Log class probabilities: :func:`fastxent.log_softmax` of the logits.

        Parameters
        ----------
        X : dask array of shape (n_samples, n_features), or array-like
            Chunked along its rows.

        Returns
        -------
        dask array or ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``: a dask array for dask ``X``, else NumPy.
        """
        if not isinstance(X, da.Array):
            return super().predict_log_proba(X)
        return self._map(X, "predict_log_proba", self.classes_.shape[0], self._float_dtype(X))
