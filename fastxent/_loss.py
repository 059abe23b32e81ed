"""Softmax cross-entropy: loss, gradient, or both from one fused pass."""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _axis, _docs
from . import _validation as v
from ._spec import LossSpec, loss_spec
from ._typing import FloatArray, FloatScalar


def _run(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    want_loss: bool,
    want_grad: bool,
    reduction: object,
    weight: ArrayLike | None,
    sample_weight: ArrayLike | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    out: FloatArray | None,
    num_threads: int | None,
    grad_denom: float | None = None,
    axis: object = -1,
) -> tuple[FloatScalar | FloatArray | None, FloatArray | None, float, float]:
    """Validate everything, run one kernel, reduce.  Returns ``(loss, grad,
    total, denominator)``: the last two are the sum of the per-row losses
    and these rows' "mean" denominator.  ``grad_denom`` (a block of a
    larger batch) divides the gradient instead of the reduction's own.
    Classes on another ``axis`` than the last are moved last (see _axis)."""
    moved, dest = None, None
    if not _axis.is_last(axis):
        moved = _axis.class_axis(logits, axis)
        if moved is not None:
            # The rows run on the classes moved last; the gradient goes back
            # into ``dest`` (the caller's ``out``, or a new array) at the end.
            dest = moved.output(out, _axis.output_dtype(moved.z)) if want_grad else None
            logits, target, out = moved.z, moved.target(target), None
    reduction = v.check_reduction(reduction)
    z, shape, dtype, half = v.as_logits(logits)
    # float16/bfloat16 logits: computed in float32, gradient in their dtype.
    io = np.asarray(logits).dtype if half else dtype
    spec = loss_spec(
        target,
        shape,
        dtype,
        weight=weight,
        sample_weight=sample_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        keep=io if half else None,
        axis_hint=True,
    )
    nt = v.resolve_threads(num_threads, z.size)

    g: NDArray[Any] | None = None
    if want_grad and out is not None:
        g = v.check_out(out, shape, io)
        # Only exact aliasing with the logits is an in-place update; any
        # other overlap would have the kernel read what it just wrote.
        z = v.detach_from(z, g)
        spec = spec._replace(
            **{
                name: a.copy()
                for name, a in (
                    ("target", spec.target),
                    ("weight", spec.weight),
                    ("sample_weight", spec.sample_weight),
                )
                if a is not None and np.may_share_memory(a, g)
            }
        )
    losses, g, total, denom = run_spec(
        spec, z, reduction, want_grad, io, half, nt, grad_out=g, grad_denom=grad_denom
    )

    grad: FloatArray | None = None
    if want_grad:
        assert g is not None
        grad = out if out is not None else g.view(io).reshape(shape)
        if moved is not None and dest is not None:
            grad = moved.put_back(grad, dest)
    loss: FloatScalar | FloatArray | None = None
    if want_loss:
        if losses is not None:
            # A NumPy scalar, not a 0-d array, for 1-d logits (one sample).
            loss = losses.astype(dtype, copy=False).reshape(shape[:-1])[()]
        else:
            loss = reduce_total(total, denom, reduction, dtype)
    return loss, grad, total, denom


def run_spec(
    spec: LossSpec,
    z: NDArray[Any],
    reduction: str,
    want_grad: bool,
    io: np.dtype[Any],
    half: int,
    num_threads: int,
    *,
    grad_out: NDArray[Any] | None = None,
    grad_denom: float | None = None,
) -> tuple[NDArray[np.float64] | None, NDArray[Any] | None, float, float]:
    """The loss kernel on validated logits ``z`` (n, m) (from
    ``_validation.as_logits``: C-contiguous, in the compute dtype or as
    half-precision bits) and ``spec``; ``io`` is the gradient's dtype.
    Returns ``(losses, grad, total, denominator)``: the per-row losses under
    ``"none"`` (else None: the kernel keeps them in a buffer of its own and
    returns their sum), the gradient (``grad_out``, already checked, or a
    new array of ``io``; None without ``want_grad``), the sum of the losses
    and the "mean" denominator.  Front ends that validate their inputs
    themselves (the PyTorch adapter) call this after ``loss_spec``."""
    n, m = z.shape
    g = None
    if want_grad:
        g = grad_out if grad_out is not None else np.empty((n, m), dtype=io)
        if half:
            g = g.view(np.uint16)
    losses = np.empty(n, dtype=np.float64) if reduction == "none" else None
    if grad_denom is None:
        # NaN: the kernel divides the gradient by the "mean" denominator it sums.
        grad_denom = np.nan if reduction == "mean" else 1.0
    total, denom = spec.run(
        z,
        loss_out=losses,
        grad_out=g,
        grad_denom=grad_denom,
        num_threads=num_threads,
        half=half,
    )
    return losses, g, total, denom


_LARGEST = {4: float(np.finfo(np.float32).max), 8: float(np.finfo(np.float64).max)}


def reduce_total(
    total: float, denom: float, reduction: str, dtype: np.dtype[np.floating[Any]]
) -> FloatScalar:
    """The "sum" or "mean" loss from the summed per-row losses."""
    value: FloatScalar
    if reduction == "sum":
        value = dtype.type(total)
        return value
    if denom != 0.0:
        quotient = total / denom  # Python floats: IEEE binary64, as np.float64
        if not abs(quotient) > _LARGEST[dtype.itemsize]:  # no overflow to warn of
            value = dtype.type(quotient)
            return value
    # IEEE division, as PyTorch: a zero denominator gives NaN (n == 0,
    # every sample ignored, all weights 0) or +-inf (weights that
    # cancel); the kernel's gradient follows the same arithmetic.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        value = dtype.type(np.float64(total) / np.float64(denom))
    return value


@overload
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = ...,
    reduction: Literal["mean", "sum"] = ...,
    weight: ArrayLike | None = ...,
    sample_weight: ArrayLike | None = ...,
    ignore_index: int | None = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    num_threads: int | None = ...,
) -> FloatScalar: ...
@overload
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = ...,
    reduction: Literal["none"],
    weight: ArrayLike | None = ...,
    sample_weight: ArrayLike | None = ...,
    ignore_index: int | None = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    num_threads: int | None = ...,
) -> FloatArray: ...
def cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = -1,
    reduction: Literal["mean", "sum", "none"] = "mean",
    weight: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    num_threads: int | None = None,
) -> FloatScalar | FloatArray:
    """Softmax cross-entropy loss of logits against class indices or probabilities.

    For logits ``Z`` of shape ``(..., m)`` (classes last, or on ``axis``) and
    ``lse_i = max_i + log sum_k exp(Z_ik - max_i)``, the per-sample loss is

        E_i = lse_i - Z_{i, y_i}                       (class indices y)
        E_i = -sum_j Y_ij (Z_ij - lse_i)               (class probabilities Y)

    extended by the options below.  It is computed in one pass over each
    row with one ``exp`` per element; sums are accumulated in float64.

    Parameters
    ----------
    {logits_target}
    {axis}
    {options}

    Returns
    -------
    loss : scalar of the compute dtype, or ndarray of shape ``logits.shape[:-1]``
        The reduced loss, or the per-sample losses for ``reduction="none"``.

    Raises
    ------
    TypeError
        For non-numeric, complex or boolean logits, float class indices,
        non-integer ``axis``, ``num_threads`` or ``ignore_index``, a bool or
        string for a numeric option, a masked array (its mask would be
        ignored: pass ``target.filled(ignore_index)``), or a torch tensor
        that requires grad (pass ``.detach()``).
    ValueError
        For mismatched shapes, ``m == 0``, labels outside ``[0, m)``, an
        unknown reduction, or an option out of its range; an ``axis`` out
        of range is ``numpy.exceptions.AxisError`` (a ValueError).

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    >>> float(fastxent.cross_entropy(logits, [0, 2]))  # doctest: +ELLIPSIS
    0.6699...
    >>> fastxent.cross_entropy(logits, [0, 2], reduction="none").round(4)
    array([0.2413, 1.0986])

    PyTorch's ``(N, C, L)`` layout: classes on axis 1, targets ``(N, L)``.

    >>> z = np.zeros((2, 4, 3))
    >>> fastxent.cross_entropy(z, np.zeros((2, 3), dtype=int), axis=1).round(4)
    np.float64(1.3863)
    """
    loss, _, _, _ = _run(
        logits,
        target,
        want_loss=True,
        want_grad=False,
        reduction=reduction,
        weight=weight,
        sample_weight=sample_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        out=None,
        num_threads=num_threads,
        axis=axis,
    )
    assert loss is not None  # want_loss=True
    return loss


def cross_entropy_grad(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = -1,
    reduction: Literal["mean", "sum", "none"] = "mean",
    weight: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    out: FloatArray | None = None,
    num_threads: int | None = None,
) -> FloatArray:
    """Gradient of :func:`cross_entropy` with respect to the logits.

    For class indices and no options this is ``(softmax(Z) - onehot(y)) / n``
    under ``"mean"`` (``/ 1`` under ``"sum"``); in general it is the exact
    derivative of the loss :func:`cross_entropy` returns with the same
    arguments (for ``"none"``: of the sum of the per-sample losses).

    Parameters
    ----------
    {logits_target}
    {axis}
    {out}
    {options}

    Returns
    -------
    grad : ndarray of the logits' shape and the compute dtype
        ``out`` when given.

    Raises
    ------
    TypeError, ValueError
        As in :func:`cross_entropy`, and for an ``out`` that is not a NumPy
        array of the logits' shape and compute dtype, C-contiguous and
        writeable.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    >>> fastxent.cross_entropy_grad(logits, [0, 2], reduction="sum").round(4)
    array([[-0.2144,  0.1753,  0.0391],
           [ 0.3333,  0.3333, -0.6667]])

    Classes on axis 0 (one column per sample): the gradient keeps that layout.

    >>> fastxent.cross_entropy_grad(logits.T, [0, 2], axis=0, reduction="sum").round(4)
    array([[-0.2144,  0.3333],
           [ 0.1753,  0.3333],
           [ 0.0391, -0.6667]])
    """
    _, grad, _, _ = _run(
        logits,
        target,
        want_loss=False,
        want_grad=True,
        reduction=reduction,
        weight=weight,
        sample_weight=sample_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        out=out,
        num_threads=num_threads,
        axis=axis,
    )
    assert grad is not None  # want_grad=True
    return grad


@overload
def cross_entropy_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = ...,
    reduction: Literal["mean", "sum"] = ...,
    weight: ArrayLike | None = ...,
    sample_weight: ArrayLike | None = ...,
    ignore_index: int | None = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    out: FloatArray | None = ...,
    num_threads: int | None = ...,
) -> tuple[FloatScalar, FloatArray]: ...
@overload
def cross_entropy_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = ...,
    reduction: Literal["none"],
    weight: ArrayLike | None = ...,
    sample_weight: ArrayLike | None = ...,
    ignore_index: int | None = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    out: FloatArray | None = ...,
    num_threads: int | None = ...,
) -> tuple[FloatArray, FloatArray]: ...
def cross_entropy_with_grad(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = -1,
    reduction: Literal["mean", "sum", "none"] = "mean",
    weight: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    out: FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[FloatScalar | FloatArray, FloatArray]:
    """Loss and gradient of softmax cross-entropy from one fused pass.

    Returns exactly what :func:`cross_entropy` and :func:`cross_entropy_grad`
    return with the same arguments, but reads the logits once for both
    (the row max, the sum of exponentials, the loss and ``P - Y`` come out
    of the same row kernel).

    Parameters
    ----------
    {logits_target}
    {axis}
    {out}
    {options}

    Returns
    -------
    loss : scalar or ndarray
        As :func:`cross_entropy`.
    grad : ndarray
        As :func:`cross_entropy_grad`.

    Raises
    ------
    TypeError, ValueError
        As in :func:`cross_entropy_grad`.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    >>> loss, grad = fastxent.cross_entropy_with_grad(logits, [0, 2])
    >>> loss.dtype, grad.shape
    (dtype('float32'), (2, 3))
    """
    loss, grad, _, _ = _run(
        logits,
        target,
        want_loss=True,
        want_grad=True,
        reduction=reduction,
        weight=weight,
        sample_weight=sample_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        out=out,
        num_threads=num_threads,
        axis=axis,
    )
    assert loss is not None and grad is not None  # want_loss=want_grad=True
    return loss, grad


for _f in (cross_entropy, cross_entropy_grad, cross_entropy_with_grad):
    _docs.fill(_f)
del _f
