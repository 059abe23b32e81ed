"""Distillation divergences between a teacher's and a student's softmax
rows (forward KL, reverse KL, generalised Jensen-Shannon), with their
gradient with respect to the student's logits, alone or fused with both
linear heads.

The row kernel (``div_row`` in ``_kernels_logprob.pxi``) reads the two
rows twice each (their maxima, then their exponentials and the divergence's
sums) and writes the gradient once; the formulas are ``_options.h``'s
(``fx_finish_divergence_row``).  float16 and bfloat16 logits are computed
in float32 copies.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _axis, _kernels, _linear
from . import _validation as v
from ._logprob import GradOut, float32_copy, temperature_option
from ._typing import FloatArray, FloatScalar

__all__ = ["distillation_loss_with_grad", "linear_distillation_loss_with_grad"]

DIVERGENCES = {"forward_kl": 0, "reverse_kl": 1, "jsd": 2}
REDUCTIONS = ("batchmean", "sum", "none")


def _options(divergence: Any, beta: Any, reduction: Any) -> tuple[int, float, str]:
    if not isinstance(divergence, str) or divergence not in DIVERGENCES:
        raise ValueError(
            f"divergence must be one of 'forward_kl', 'reverse_kl' or 'jsd'; got {divergence!r}."
        )
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"reduction must be one of 'batchmean', 'sum' or 'none'; got {reduction!r}."
        )
    b = v.real_number(beta, "beta")
    if not 0.0 < b < 1.0:
        raise ValueError(f"beta must lie in the open interval (0, 1); got {beta!r}.")
    return DIVERGENCES[divergence], b, str(reduction)


def _row_mask(
    target: ArrayLike | None, batch: tuple[int, ...], ignore_index: Any
) -> tuple[NDArray[np.int64] | None, float]:
    """The kernel's labels (0 for a row that counts, -1 for one that does
    not, with ignore_index -1) and the number of rows that count."""
    n = int(np.prod(batch))
    if target is None:
        return None, float(n)
    t = v.as_array(target, "target")
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"target must be an integer array (the class indices, used only to find the rows "
            f"equal to ignore_index); got dtype={t.dtype}."
        )
    if t.shape != batch:
        raise ValueError(
            f"target must have shape {batch} (one per row of the logits); got shape {t.shape}."
        )
    ignore = v.ignore_index(ignore_index, "labels")
    drop = (t == ignore).reshape(-1)
    return np.where(drop, -1, 0).astype(np.int64), float(n - int(drop.sum()))


def _reduce(
    losses: NDArray[np.float64], count: float, reduction: str, dtype: Any, batch: Any
) -> Any:
    if reduction == "none":
        return losses.astype(dtype, copy=False).reshape(batch)[()]
    total = float(_kernels.pairwise_sum(losses))
    if reduction == "sum":
        return dtype.type(total)
    # IEEE division, as PyTorch: no row that counts gives NaN.
    with np.errstate(divide="ignore", invalid="ignore"):
        return dtype.type(np.float64(total) / np.float64(count))


def _run(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    divergence: Any,
    beta: Any,
    temperature: Any,
    reduction: Any,
    target: ArrayLike | None,
    ignore_index: Any,
    axis: Any,
    out: Any,
    num_threads: Any,
    grad_denom: float | None = None,
    want_grad: bool = True,
) -> tuple[Any, FloatArray | None]:
    """distillation_loss_with_grad, with the gradient divided by
    ``grad_denom`` instead of the reduction's own (a Dask block of a
    larger batch: its global count); without ``want_grad`` the loss alone
    (the gradient None: no n x m array written)."""
    div, b, red = _options(divergence, beta, reduction)
    moved, dest = None, None
    if not _axis.is_last(axis):
        moved = _axis.class_axis(student_logits, axis)
        if moved is not None:
            dest = moved.output(out, _axis.output_dtype(moved.z))
            t_arr = v.as_array(teacher_logits, "teacher_logits")
            if t_arr.shape != moved.shape:
                raise ValueError(
                    f"teacher_logits must have the student's shape {moved.shape}; "
                    f"got shape {t_arr.shape}."
                )
            student_logits, out = moved.z, None
            teacher_logits = np.moveaxis(t_arr, moved.ax, -1)
    s, shape, dtype, half = v.as_logits(student_logits, "student_logits")
    io = np.asarray(student_logits).dtype if half else dtype
    if half:
        s = float32_copy(s, io)
    t_in = v.as_array(teacher_logits, "teacher_logits")
    if t_in.shape != shape:
        raise ValueError(
            f"teacher_logits must have the student's shape {shape}; got shape {t_in.shape}."
        )
    v.compute_dtype(t_in.dtype, "teacher_logits")  # a TypeError for non-numbers
    with np.errstate(over="ignore"):
        t = v.aligned(np.ascontiguousarray(t_in, dtype=dtype)).reshape(s.shape)
    temp = temperature_option(temperature, dtype)
    labels, count = _row_mask(target, shape[:-1], ignore_index)
    nt = v.resolve_threads(num_threads, s.size)
    losses = np.empty(s.shape[0], dtype=np.float64)
    if grad_denom is None:
        grad_denom = count if red == "batchmean" else 1.0
    if not want_grad:
        _kernels.divergence_rows(s, t, labels, -1, div, b, temp, grad_denom, losses, None, nt)
        return _reduce(losses, count, red, dtype, shape[:-1]), None
    g = GradOut(out, shape, s, dtype, io)
    s = g.detach(s)
    if g.o is not None and np.may_share_memory(t, g.o):
        t = t.copy()
    _kernels.divergence_rows(s, t, labels, -1, div, b, temp, grad_denom, losses, g.buffer, nt)
    return _reduce(losses, count, red, dtype, shape[:-1]), g.result(moved, dest)


def distillation_loss_with_grad(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Literal["batchmean", "sum", "none"] = "batchmean",
    target: ArrayLike | None = None,
    ignore_index: int = -100,
    axis: int = -1,
    out: FloatArray | None = None,
    num_threads: int | None = None,
) -> tuple[FloatScalar | FloatArray, FloatArray]:
    """Divergence between teacher and student softmax rows, and its gradient.

    With ``P = softmax(teacher_logits / T)`` and ``Q = softmax(student_logits
    / T)`` row by row::

        "forward_kl":  KL(P || Q) = sum_j P_j (log P_j - log Q_j)
        "reverse_kl":  KL(Q || P) = sum_j Q_j (log Q_j - log P_j)
        "jsd":         beta KL(P || M) + (1 - beta) KL(Q || M),  M = beta P + (1 - beta) Q

    The gradient with respect to the student's logits is, for the forward
    KL, ``(Q - P) / T``; every divergence is computed in one pass over the
    two rows (the JSD takes one ``log`` a class).  The loss is **not**
    multiplied by ``T**2`` (Hinton et al.'s factor, which keeps gradient
    sizes comparable across temperatures): multiply the loss and the
    gradient yourself if you want it.

    Parameters
    ----------
    student_logits : array_like of shape (..., m)
        The student's logits, classes on the last axis (or ``axis``).
        float32 and float64 are computed natively, float16 and bfloat16 in
        float32, integers in float64.
    teacher_logits : array_like of the student's shape
        The teacher's logits (converted to the student's compute dtype).
    divergence : {"forward_kl", "reverse_kl", "jsd"}, default "forward_kl"
        The divergence, as above.
    beta : float in (0, 1), default 0.5
        The generalised JSD's weight (Liger-Kernel's ``beta``); 0.5 is the
        symmetric Jensen-Shannon divergence.  Unused by the KLs.
    temperature : float > 0, default 1.0
        Divides both logits before the softmax.
    reduction : {"batchmean", "sum", "none"}, default "batchmean"
        ``"batchmean"``: the sum over rows divided by the number of rows
        that count (``torch.nn.KLDivLoss(reduction="batchmean")``);
        ``"sum"``; ``"none"``: one value per row.
    target : array_like of int, shape ``student_logits.shape[:-1]``, optional
        Rows whose target equals ``ignore_index`` get 0 (loss and gradient)
        and are left out of ``"batchmean"``'s count; other values are not
        used (the class indices of a language model's batch, say).
    ignore_index : int, default -100
        The value of ``target`` that marks a row that does not count.
    axis : int, default -1
        The class axis, as in :func:`fastxent.cross_entropy`.
    out : ndarray, optional
        Receives the gradient: C-contiguous, writeable, of the logits' shape
        and dtype; ``out=student_logits`` works in place.
    num_threads : int >= 1, optional
        ``None`` uses OpenMP's default.  The same bits at every thread count.

    Returns
    -------
    loss : scalar of the compute dtype, or ndarray of shape ``student_logits.shape[:-1]``
        The reduced divergence, or one value per row for ``"none"``.
    grad : ndarray of the student's shape
        The gradient of ``loss`` (of the sum of the rows for ``"none"``)
        with respect to ``student_logits``; ``out`` when given.

    Raises
    ------
    TypeError
        For non-numeric logits, a non-integer ``target``, a bool or string
        for a number, masked arrays and torch tensors that require grad.
    ValueError
        For logits of different shapes, an unknown ``divergence`` or
        ``reduction``, ``beta`` outside (0, 1), ``temperature`` not finite
        and positive, a ``target`` or ``out`` of the wrong shape.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> s = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    >>> t = np.array([[1.0, 1.0, -1.0], [0.0, 0.0, 0.0]])
    >>> loss, grad = fastxent.distillation_loss_with_grad(s, t)
    >>> float(loss.round(4)), grad.round(4)[0]
    (0.1243, array([ 0.1586, -0.1465, -0.0121]))
    >>> float(fastxent.distillation_loss_with_grad(s, t, divergence="jsd")[0].round(4))
    0.0282
    """
    loss, grad = _run(
        student_logits, teacher_logits, divergence=divergence, beta=beta,
        temperature=temperature, reduction=reduction, target=target,
        ignore_index=ignore_index, axis=axis, out=out, num_threads=num_threads,
    )  # fmt: skip
    assert grad is not None
    return loss, grad


def linear_distillation_loss_with_grad(
    x: ArrayLike,
    linear_weight: ArrayLike,
    teacher_x: ArrayLike,
    teacher_linear_weight: ArrayLike,
    *,
    linear_bias: ArrayLike | None = None,
    teacher_linear_bias: ArrayLike | None = None,
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Literal["batchmean", "sum", "none"] = "batchmean",
    target: ArrayLike | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> tuple[FloatScalar | FloatArray, FloatArray, FloatArray, FloatArray | None]:
    """:func:`distillation_loss_with_grad` of two linear heads, without their logits.

    The student's logits are ``x @ W.T + b`` and the teacher's
    ``teacher_x @ teacher_W.T + teacher_b``; both are formed ``chunk_size``
    rows at a time in two buffers by SciPy's BLAS, the divergence and its
    gradient ``G`` with respect to the student's logits computed there, and
    ``G`` consumed at once::

        grad_x = G @ W          grad_W = G.T @ x          grad_b = G.sum(0)

    four GEMMs a chunk; neither ``n x V`` array of logits is held.

    Parameters
    ----------
    x : array_like of shape (..., d)
        The student's features, float32 or float64 (float16/bfloat16
        computed in float32).
    linear_weight : array_like of shape (V, d)
        The student's head, of x's dtype.
    teacher_x : array_like of shape (..., d_teacher)
        The teacher's features, the same rows as ``x`` (converted to x's
        compute dtype).
    teacher_linear_weight : array_like of shape (V, d_teacher)
        The teacher's head.
    linear_bias : array_like of shape (V,), optional
        The student's bias.
    teacher_linear_bias : array_like of shape (V,), optional
        The teacher's bias.
    divergence : {"forward_kl", "reverse_kl", "jsd"}, default "forward_kl"
        As in :func:`distillation_loss_with_grad`.
    beta : float in (0, 1), default 0.5
        The generalised JSD's weight.
    temperature : float > 0, default 1.0
        Divides both heads' logits before the softmax.
    reduction : {"batchmean", "sum", "none"}, default "batchmean"
        As in :func:`distillation_loss_with_grad`.
    target : array_like of int, shape ``x.shape[:-1]``, optional
        Rows whose target equals ``ignore_index`` do not count.
    ignore_index : int, default -100
        The value of ``target`` that marks a row that does not count.
    {chunk}

    Returns
    -------
    loss : scalar or ndarray of shape ``x.shape[:-1]``
        As :func:`distillation_loss_with_grad` returns it.
    grad_x : ndarray of x's shape and dtype
        The gradient with respect to ``x``.
    grad_linear_weight : ndarray of shape (V, d)
        The gradient with respect to ``linear_weight``.
    grad_linear_bias : ndarray of shape (V,), or None without ``linear_bias``
        The gradient with respect to ``linear_bias``.

    Raises
    ------
    TypeError, ValueError
        As in :func:`distillation_loss_with_grad` and
        :func:`fastxent.linear_cross_entropy`.
    ImportError
        Without SciPy, whose BLAS computes the products.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> rng = np.random.default_rng(0)
    >>> x, W = rng.standard_normal((6, 4)), rng.standard_normal((10, 4))
    >>> tx, tW = rng.standard_normal((6, 8)), rng.standard_normal((10, 8))
    >>> loss, gx, gW, gb = fastxent.linear_distillation_loss_with_grad(x, W, tx, tW)
    >>> ref, G = fastxent.distillation_loss_with_grad(x @ W.T, tx @ tW.T)
    >>> bool(np.isclose(loss, ref) and np.allclose(gx, G @ W) and np.allclose(gW, G.T @ x))
    True
    """
    loss, gx, gW, gb = _linear_run(
        x, linear_weight, teacher_x, teacher_linear_weight, linear_bias=linear_bias,
        teacher_linear_bias=teacher_linear_bias, divergence=divergence, beta=beta,
        temperature=temperature, reduction=reduction, target=target,
        ignore_index=ignore_index, chunk_size=chunk_size, num_threads=num_threads,
    )  # fmt: skip
    assert gx is not None and gW is not None
    return loss, gx, gW, gb


def _linear_run(
    x: ArrayLike,
    linear_weight: ArrayLike,
    teacher_x: ArrayLike,
    teacher_linear_weight: ArrayLike,
    *,
    linear_bias: ArrayLike | None,
    teacher_linear_bias: ArrayLike | None,
    divergence: Any,
    beta: Any,
    temperature: Any,
    reduction: Any,
    target: ArrayLike | None,
    ignore_index: Any,
    chunk_size: Any,
    num_threads: Any,
    want_grad: bool = True,
) -> tuple[Any, FloatArray | None, FloatArray | None, FloatArray | None]:
    """linear_distillation_loss_with_grad; without ``want_grad`` the loss
    alone (the gradients None: no backward GEMMs)."""

    div, b, red = _options(divergence, beta, reduction)
    x2, W, bias, x_shape, dtype, io = _linear._check_inputs(x, linear_weight, linear_bias)
    n, d = x2.shape
    V = W.shape[0]
    tx = v.as_array(teacher_x, "teacher_x")
    tW = v.as_array(teacher_linear_weight, "teacher_linear_weight")
    if tx.ndim == 0 or tx.shape[:-1] != x_shape[:-1]:
        raise ValueError(
            f"teacher_x must have shape {x_shape[:-1]} + (d_teacher,) (the rows of x); got "
            f"shape {tx.shape}."
        )
    if tW.ndim != 2 or tW.shape != (V, tx.shape[-1]):
        raise ValueError(
            f"teacher_linear_weight must have shape ({V}, {tx.shape[-1]}) (the student's V "
            f"classes, teacher_x's features); got shape {tW.shape}."
        )
    for name, a in (("teacher_x", tx), ("teacher_linear_weight", tW)):
        v.compute_dtype(a.dtype, name)
    td = tx.shape[-1]
    tx2 = _linear._rows_for_blas(tx.reshape(n, td), dtype)
    tW2 = _linear._rows_for_blas(tW, dtype)
    tb = None
    if teacher_linear_bias is not None:
        tba = v.as_array(teacher_linear_bias, "teacher_linear_bias")
        if tba.shape != (V,):
            raise ValueError(f"teacher_linear_bias must have shape ({V},); got shape {tba.shape}.")
        tb = v.aligned(np.ascontiguousarray(tba, dtype=dtype))
    temp = temperature_option(temperature, dtype)
    labels, count = _row_mask(target, x_shape[:-1], ignore_index)
    r = _linear._chunk_size(chunk_size, n, V, d, dtype.itemsize, buffers=2)
    nt = v.resolve_threads(num_threads, n * V) if num_threads is not None else 1
    losses = np.empty(n, dtype=np.float64)
    gx = np.empty((n, d), dtype=dtype) if want_grad else None
    gW = np.zeros((V, d), dtype=dtype) if want_grad else None
    gb = np.zeros(V, dtype=np.float64) if bias is not None and want_grad else None
    grad_denom = count if red == "batchmean" else 1.0
    if n:
        buf = np.empty((r, V), dtype=dtype)
        tbuf = np.empty((r, V), dtype=dtype)
        _kernels.linear_divergence_chunks(
            x2, W, bias, tx2, tW2, tb, labels, -1, div, b, temp, grad_denom, losses, buf,
            tbuf, gx, gW, gb, _linear._gemm_capsule(dtype.char), nt,
        )  # fmt: skip
        del buf, tbuf
    loss = _reduce(losses, count, red, dtype, x_shape[:-1])
    return (
        loss,
        None if gx is None else gx.reshape(x_shape).astype(io, copy=False),
        None if gW is None else gW.astype(io, copy=False),
        None if gb is None else gb.astype(io),
    )


if linear_distillation_loss_with_grad.__doc__:  # None under python -OO
    from ._linear import _CHUNK_DOC

    # Two buffers here (both heads' logits), which share the default's budget.
    _TWO_BUFFERS = (
        (
            "one ``chunk_size x V``\n        buffer of logits.  ``None`` picks the largest chunk "
            "whose working\n        memory (the buffer and the per-row losses)"
        ),
        (
            "two ``chunk_size x V``\n        buffers of logits (the student's and the teacher's).  "
            "``None``\n        picks the largest chunk whose working memory (the two buffers and"
            "\n        the per-row losses)"
        ),
    )
    linear_distillation_loss_with_grad.__doc__ = linear_distillation_loss_with_grad.__doc__.replace(
        "    {chunk}", _CHUNK_DOC.strip("\n").replace(*_TWO_BUFFERS)
    )
