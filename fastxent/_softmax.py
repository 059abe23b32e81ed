"""Row-wise softmax, log-softmax and logsumexp over the class axis (the last by default)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _axis, _kernels
from . import _validation as v
from ._typing import FloatArray


def _rows(
    logits: ArrayLike,
    out: FloatArray | None,
    take_log: bool,
    want_out: bool,
    num_threads: int | None,
    axis: object = -1,
) -> FloatArray:
    if not _axis.is_last(axis):
        # Classes off the last axis: computed with them moved last (see _axis).
        moved = _axis.class_axis(logits, axis)
        if moved is not None:
            dest = moved.output(out, _axis.output_dtype(moved.z)) if want_out else None
            rows = _rows(moved.z, None, take_log, want_out, num_threads)
            return rows if dest is None else moved.put_back(rows, dest)
    z, shape, dtype, half = v.as_logits(logits)
    # float16/bfloat16 logits: computed in float32, outputs in their dtype.
    io = np.asarray(logits).dtype if half else dtype
    nt = v.resolve_threads(num_threads, z.size)
    o: NDArray[Any] | None = None
    lse: NDArray[np.float64] | None = None
    if want_out:
        if out is None:
            o = np.empty(z.shape, dtype=io)
        else:
            o = v.check_out(out, shape, io)
            z = v.detach_from(z, o.view(z.dtype) if half else o)
    else:
        lse = np.empty(z.shape[0], dtype=np.float64)
    _kernels.softmax_rows(z, None if o is None else o.view(z.dtype), take_log, lse, nt, half)
    if o is not None:
        return out if out is not None else o.reshape(shape)
    assert lse is not None
    # [()] turns the 0-d result of 1-d logits into a NumPy scalar (a
    # reduction's result, as np.max gives), and leaves arrays alone.
    result: FloatArray = lse.astype(dtype, copy=False).reshape(shape[:-1])[()]
    return result


def log_softmax(
    logits: ArrayLike,
    *,
    axis: int = -1,
    out: FloatArray | None = None,
    num_threads: int | None = None,
) -> FloatArray:
    """Log-softmax over the class axis (the last by default): ``L = Z - lse(Z)``.

    Computed as ``(Z - max) - log sum_k exp(Z_k - max)``, which is exact near
    the row maximum; a ``-inf`` logit gives ``-inf``.

    Parameters
    ----------
    logits : array_like of shape (..., m)
        Float32/float64 computed natively, float16 in float32, integers in
        float64.
    axis : int, default -1
        The class axis, as in ``scipy.special.log_softmax`` (``axis=1`` for
        PyTorch's ``(N, C, ...)`` layout).  Classes off the last axis are
        computed in a contiguous copy with them last and the result copied
        back into the logits' shape: two transposing copies, which can cost
        more than the softmax itself, so keep the classes last where speed
        matters.
    out : ndarray, optional
        C-contiguous, writeable, of the logits' shape and compute dtype;
        ``out=logits`` works in place.
    num_threads : int >= 1, optional
        ``None`` uses OpenMP's default (``OMP_NUM_THREADS``, threadpoolctl).

    Returns
    -------
    log_p : ndarray of the logits' shape and the compute dtype
        ``out`` when given.

    Raises
    ------
    TypeError
        For non-numeric, complex or boolean logits, an ``out`` that is not a
        NumPy array, a non-integer ``axis`` or ``num_threads``, a masked
        array (its mask would be ignored) or a torch tensor that requires
        grad (pass ``.detach()``).
    ValueError
        For 0-d logits, ``m == 0``, an ``out`` of the wrong shape or dtype
        (or not C-contiguous, writeable and native-endian), or
        ``num_threads < 1``; an ``axis`` out of range is
        ``numpy.exceptions.AxisError`` (a ValueError).

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> fastxent.log_softmax(np.array([0.0, np.log(3.0)])).round(4)
    array([-1.3863, -0.2877])
    >>> fastxent.log_softmax(np.array([[0.0, 1.0], [np.log(3.0), 1.0]]), axis=0).round(4)
    array([[-1.3863, -0.6931],
           [-0.2877, -0.6931]])
    """
    return _rows(logits, out, True, True, num_threads, axis)


def softmax(
    logits: ArrayLike,
    *,
    axis: int = -1,
    out: FloatArray | None = None,
    num_threads: int | None = None,
) -> FloatArray:
    """Softmax over the class axis: ``P_ij = exp(Z_ij - max_i) / sum_k exp(Z_ik - max_i)``.

    Each row is computed with one ``exp`` per element; a ``-inf`` logit gets
    probability 0.

    Parameters
    ----------
    logits : array_like of shape (..., m)
        Float32/float64 computed natively, float16 in float32, integers in
        float64.
    axis : int, default -1
        The class axis, as in :func:`log_softmax`.
    out : ndarray, optional
        As in :func:`log_softmax`; ``out=logits`` works in place.
    num_threads : int >= 1, optional
        As in :func:`log_softmax`: ``None`` uses OpenMP's default.

    Returns
    -------
    p : ndarray of the logits' shape and the compute dtype
        Summing to 1 along ``axis``; ``out`` when given.

    Raises
    ------
    TypeError, ValueError
        As in :func:`log_softmax`.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> fastxent.softmax(np.array([[0.0, np.log(3.0)], [1.0, -np.inf]]))
    array([[0.25, 0.75],
           [1.  , 0.  ]])
    >>> fastxent.softmax(np.zeros((2, 4, 3)), axis=1)[0, :, 0]
    array([0.25, 0.25, 0.25, 0.25])
    """
    return _rows(logits, out, False, True, num_threads, axis)


def logsumexp(logits: ArrayLike, *, axis: int = -1, num_threads: int | None = None) -> FloatArray:
    """``lse_i = max_i + log sum_k exp(Z_ik - max_i)`` over the class axis (the last by default).

    A row of ``-inf`` gives ``-inf`` and a row holding ``+inf`` gives
    ``+inf`` (as ``scipy.special.logsumexp``).

    Parameters
    ----------
    logits : array_like of shape (..., m)
        Float32/float64 computed natively, float16 in float32, integers in
        float64.
    axis : int, default -1
        The axis reduced, as in ``scipy.special.logsumexp`` (one integer;
        a tuple of axes is not supported).
    num_threads : int >= 1, optional
        As in :func:`log_softmax`: ``None`` uses OpenMP's default.

    Returns
    -------
    lse : ndarray of the logits' shape without ``axis``, in the compute dtype
        A NumPy scalar (``np.float64``/``np.float32``) for 1-d input.

    Raises
    ------
    TypeError, ValueError
        As in :func:`log_softmax` (without ``out``).

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> fastxent.logsumexp(np.log([[1.0, 3.0], [2.0, 2.0]])).round(6)
    array([1.386294, 1.386294])
    >>> fastxent.logsumexp(np.log([1.0, 3.0]))  # doctest: +ELLIPSIS
    np.float64(1.386294361119890...)
    >>> fastxent.logsumexp(np.log([[1.0, 3.0], [2.0, 2.0]]), axis=0).round(6)
    array([1.098612, 1.609438])
    """
    return _rows(logits, None, False, False, num_threads, axis)
