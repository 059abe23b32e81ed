"""Metrics on logits: scikit-learn's ``log_loss`` without clipped probabilities.

Pure NumPy + fastxent: importing it does not import scikit-learn.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike

from . import _validation as v
from ._loss import cross_entropy

__all__ = ["log_loss"]

#: How far from 1 the rows of a prediction may sum and still be taken for
#: probabilities (loose: float16 or rounded probabilities are still caught).
_PROBABILITY_SUM_TOL = 1e-2


def _check_no_nan(a: np.ndarray, name: str) -> None:
    """NaN is no class label (np.unique keeps it as one, and it equals
    nothing, not even itself)."""
    if a.dtype.kind == "f" and np.isnan(a).any():
        pos = int(np.argmax(np.isnan(a.reshape(-1))))
        raise ValueError(
            f"{name} contains NaN (first at position {pos}); class labels must not be NaN. "
            "Drop those samples, or give missing labels a class of their own."
        )


def _look_like_probabilities(z: np.ndarray) -> bool:
    """Whether every row of the 2-d predictions ``z`` (two or more columns)
    lies in [0, 1] and sums to 1: scikit-learn's ``predict_proba`` passed
    where logits belong (logits like that are no real classifier's)."""
    if z.ndim != 2 or z.shape[1] < 2 or not (z.dtype.kind in "fiu" or v.half_kind(z.dtype)):
        return False
    if not (z.min() >= 0 and z.max() <= 1):  # False for NaN too
        return False
    return bool(np.all(np.abs(z.sum(axis=1, dtype=np.float64) - 1) <= _PROBABILITY_SUM_TOL))


def log_loss(
    y_true: ArrayLike,
    logits: ArrayLike,
    *,
    normalize: bool = True,
    sample_weight: ArrayLike | None = None,
    labels: ArrayLike | None = None,
) -> float:
    """Log loss (cross-entropy) of class labels under the softmax of logits.

    The semantics of :func:`sklearn.metrics.log_loss` (label handling,
    ``normalize``, ``sample_weight``, ``labels``, the binary shortcut), but
    the predictions are logits (e.g. a classifier's ``decision_function``)
    instead of probabilities::

        log_loss = sum_i s_i * (logsumexp(logits_i) - logits_i[c_i]) / sum_i s_i

    where ``c_i`` is the column of ``y_true[i]`` among the sorted labels.  It
    never takes the logarithm of a probability, so there is no clipping: a
    confidently wrong prediction costs what it should (``sklearn``'s version
    clips probabilities to ``[eps, 1 - eps]``, which caps each sample's loss
    at ``-log(eps)``, about 36 in float64 and 16 in float32), and a true
    class with logit ``-inf`` gives ``inf``.

    .. warning:: The name is scikit-learn's but the predictions are logits,
       not probabilities: ``log_loss(y, clf.predict_proba(X))`` is a mistake
       that gives a wrong number.  Pass ``clf.decision_function(X)``,
       ``clf.predict_log_proba(X)`` or ``np.log(p)``, or use
       :func:`sklearn.metrics.log_loss` for probabilities.  Predictions whose
       rows all lie in ``[0, 1]`` and sum to 1 (within 1e-2) warn.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels: any sortable values (ints, strings, ...).
    logits : array-like of shape (n_samples, n_classes) or (n_samples,)
        Unnormalised log-probabilities (not probabilities), columns in the
        order of the sorted labels.  A 1-d array is the log-odds of the positive (second, larger)
        of two labels, as a binary classifier's ``decision_function`` returns;
        it is taken as the logits ``[0, logits]``.
    normalize : bool, default=True
        Return the (weighted) mean per-sample loss; otherwise the (weighted)
        sum.
    sample_weight : array-like of shape (n_samples,), default=None
        Finite sample weights (negative ones allowed, as in scikit-learn).
    labels : array-like, default=None
        All class labels (the columns of ``logits``, sorted).  Inferred from
        ``y_true`` when not given; needed when ``y_true`` lacks some classes.

    Returns
    -------
    loss : float
        The mean (or, with ``normalize=False``, the summed) log loss.

    Raises
    ------
    ValueError
        Fewer than two labels; NaN in ``y_true`` or ``labels``; ``y_true``
        with values not in ``labels``; a
        number of logit columns different from the number of labels;
        mismatched lengths; NaN or ``+inf`` logits; non-finite sample
        weights or (with ``normalize=True``) weights that sum to zero.
    TypeError
        Masked arrays (their masks would be ignored).

    Warns
    -----
    UserWarning
        When ``logits`` (two or more columns) look like probabilities: every
        row in ``[0, 1]`` and summing to 1 within 1e-2.  Also, as
        scikit-learn, when ``labels`` are not sorted.

    See Also
    --------
    sklearn.metrics.log_loss : The same on probabilities.
    fastxent.cross_entropy : The loss on class indices, with more options.

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.metrics import log_loss
    >>> logits = np.log([[0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.35, 0.65]])
    >>> round(log_loss(["spam", "ham", "ham", "spam"], logits), 5)
    0.21616
    >>> round(log_loss([0, 1], [-40.0, 40.0]), 3)  # not capped at -log(eps)
    0.0
    >>> round(log_loss([1, 0], [-40.0, 40.0]), 3)
    40.0
    """
    y = v.as_array(y_true, "y_true")
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-d (class labels). Got shape {y.shape} instead.")
    _check_no_nan(y, "y_true")
    if y.shape[0] == 0:
        raise ValueError("log_loss needs at least one sample; y_true is empty.")
    z = v.as_array(logits, "logits")
    if z.ndim not in (1, 2):
        raise ValueError(
            f"logits must have shape (n_samples,) or (n_samples, n_classes). Got {z.shape}."
        )
    if z.shape[0] != y.shape[0]:
        raise ValueError(
            f"y_true and logits have different numbers of samples: {y.shape[0]} vs {z.shape[0]}."
        )

    if labels is None:
        classes = np.unique(y)
        if classes.shape[0] == 1:
            raise ValueError(
                f"y_true contains only one label ({classes.tolist()[0]!r}). Please provide the "
                "list of all expected class labels explicitly through the labels argument."
            )
    else:
        given = v.as_array(labels, "labels")
        _check_no_nan(given, "labels")
        classes = np.unique(given)
        if classes.shape[0] < 2:
            raise ValueError(
                f"The labels array needs to contain at least two labels, got {classes.tolist()}."
            )
        if given.shape != classes.shape or np.any(given != classes):
            warnings.warn(
                f"Labels passed were {given.tolist()}. But this function assumes labels are "
                f"ordered lexicographically. Pass the ordered labels={classes.tolist()} "
                "and ensure that the columns of logits correspond to this ordering.",
                UserWarning,
                stacklevel=2,
            )
    idx = np.searchsorted(classes, y)
    bad = (idx >= classes.shape[0]) | (classes[np.minimum(idx, classes.shape[0] - 1)] != y)
    if np.any(bad):
        raise ValueError(
            f"y_true contains values {sorted(set(y[bad].tolist()))} not belonging to the "
            f"passed labels {classes.tolist()}."
        )

    if _look_like_probabilities(z):
        warnings.warn(
            "logits look like probabilities: every row lies in [0, 1] and sums to 1. "
            "fastxent.metrics.log_loss takes logits (unnormalised log-probabilities, e.g. a "
            "classifier's decision_function or predict_log_proba), not probabilities: pass "
            "np.log(p), or use sklearn.metrics.log_loss for probabilities.",
            UserWarning,
            stacklevel=2,
        )
    if z.ndim == 1 or z.shape[1] == 1:  # log-odds of the positive class
        z1 = z.reshape(-1)
        z = np.zeros((z1.shape[0], 2), dtype=np.result_type(z1.dtype, np.float32))
        z[:, 1] = z1
    if z.shape[1] != classes.shape[0]:
        what = "labels" if labels is not None else "y_true"
        raise ValueError(
            f"{what} has {classes.shape[0]} classes ({classes.tolist()}) but logits has "
            f"{z.shape[1]} columns. Pass labels= with every class, in the column order."
        )
    if (z.dtype.kind == "f" or v.half_kind(z.dtype)) and np.any(np.isnan(z) | (z == np.inf)):
        raise ValueError("logits must not contain NaN or +inf.")

    if sample_weight is not None:
        sample_weight = v.as_array(sample_weight, "sample_weight", np.float64)
        if sample_weight.shape != y.shape:
            raise ValueError(
                f"sample_weight must have shape {y.shape}. Got {sample_weight.shape} instead."
            )
    # The sum (accumulated in float64) checks the weights; the division is ours
    # so that zero total weight is an error rather than NaN.
    total = float(cross_entropy(z, idx, reduction="sum", sample_weight=sample_weight))
    if not normalize:
        return total
    denom = float(y.shape[0]) if sample_weight is None else float(sample_weight.sum())
    if denom == 0:
        raise ValueError("Weights sum to zero, can't be normalized.")
    return total / denom
