"""fastxent.dask's token_logprobs and distillation_loss_with_grad: the
in-memory functions on blocks of whole rows (see ``fastxent.dask._graph`` for the
design: whole-row blocks, fixed-tree sums, a global denominator reaching the
gradient tasks as a dependency)."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .. import _distill, _logprob
from .. import _validation as v
from . import _graph as g
from ._loss import _threads, denominator_block

__all__ = ["distillation_loss_with_grad", "token_logprobs"]


def _rows(logits: Any, name: str, stacklevel: int) -> tuple[da.Array, np.dtype[Any], int]:
    z = g.as_dask(logits, name, "class")
    dtype = v.compute_dtype(z.dtype, name)
    m = z.shape[-1]
    if m == 0:
        raise ValueError(f"{name} must have at least one class (m >= 1); got shape {z.shape}.")
    return g.whole_axis(z, z.ndim - 1, name, "class", stacklevel + 1), dtype, m


def _labels(target: Any, z: da.Array, name: str, stacklevel: int) -> da.Array:
    t = g.per_row(target, "target", z.shape[:-1], z, name, stacklevel + 1)
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices; got dtype={t.dtype}.")
    return t


def _logprob_block(
    z: Any, t: Any, checked: Any, *, options: dict[str, Any], num_threads: Any
) -> Any:
    """The block's log-probabilities and entropies stacked on a last axis."""
    del checked  # a dependency only: the labels were checked first
    lp, ent = _logprob.token_logprobs(
        g.one(z), t, return_entropy=True, num_threads=num_threads, **options
    )
    return np.stack([lp, ent], axis=-1)


def token_logprobs(
    logits: Any,
    target: Any,
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
    num_threads: int | None = 1,
) -> da.Array | tuple[da.Array, da.Array]:
    """Per-token log-probabilities (and entropies) of a dask array of logits (lazy).

    :func:`fastxent.token_logprobs` block by block: ``logp[y]`` of each row
    of ``u = cap(z) / T``, 0 at ignored rows, and with ``return_entropy``
    the entropy ``-sum_j p_j logp_j``.

    Parameters
    ----------
    logits : dask array of shape (..., m)
        Chunked along the rows (any axis but the last); a NumPy array is cut
        into row chunks.  A class axis split over chunks is rechunked (with
        a PerformanceWarning).
    target : dask or NumPy array of int, shape ``logits.shape[:-1]``
        Class indices, with the logits' row chunks (a NumPy array is cut to
        them).
    temperature : float > 0, default 1.0
        Divides the (soft-capped) logits before the softmax.
    softcap : float > 0, optional
        Soft-caps the logits as ``softcap * tanh(logits / softcap)`` first.
    ignore_index : int, default -100
        Rows whose target equals it get 0.
    return_entropy : bool, default False
        Also return each row's entropy.
    num_threads : int >= 1, optional
        Threads per block, 1 by default (Dask runs one block per core);
        ``None`` uses OpenMP's default in every block.

    Returns
    -------
    logprobs : dask array of shape ``logits.shape[:-1]``
        In the compute dtype, with the logits' row chunks.
    entropy : dask array of shape ``logits.shape[:-1]``
        Only with ``return_entropy=True``.

    Raises
    ------
    TypeError, ValueError
        As :func:`fastxent.token_logprobs`, when the graph is built; labels
        outside ``[0, m)`` at compute time, with their position in the whole
        target.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np, fastxent, fastxent.dask
    >>> rng = np.random.default_rng(0)
    >>> z, y = rng.standard_normal((1000, 10)), rng.integers(0, 10, 1000)
    >>> lp = fastxent.dask.token_logprobs(da.from_array(z, chunks=(300, 10)), y)
    >>> with dask.config.set(scheduler="synchronous"):
    ...     bool(np.array_equal(lp.compute(), fastxent.token_logprobs(z, y)))
    True
    """
    z, dtype, m = _rows(logits, "logits", 2)
    t = _labels(target, z, "logits", 2)
    options = dict(
        temperature=_logprob.temperature_option(temperature, dtype),
        softcap=v.softcap(softcap, dtype),
        ignore_index=v.ignore_index(ignore_index, "labels"),
    )
    if options["softcap"] == 0.0:
        options["softcap"] = None
    if not isinstance(return_entropy, (bool, np.bool_)):
        raise TypeError(f"return_entropy must be a bool; got {return_entropy!r}.")
    num_threads = _threads(num_threads)
    nb = z.ndim - 1
    idx = g.BATCH[:nb] + "z"
    # Every label checked first, a bad one reported at its position in the
    # whole target (map_blocks knows where its block lies; blockwise does not).
    checked = da.map_blocks(
        denominator_block, t, m=m, compute_dtype=dtype, weight=None,
        ignore_index=options["ignore_index"], chunks=t.chunks, dtype=np.float64,
        meta=np.empty((0,) * nb),
    )  # fmt: skip
    both = da.blockwise(
        _logprob_block,
        g.BATCH[:nb] + "w",
        z,
        idx,
        t,
        idx[:nb],
        checked,
        idx[:nb],
        new_axes={"w": 2},
        options=options,
        num_threads=num_threads,
        dtype=dtype,
        meta=np.empty((0,) * (nb + 1), dtype=dtype),
    )
    lp = both[..., 0]
    return (lp, both[..., 1]) if return_entropy else lp


def _count_block(t: Any, *, ignore_index: int) -> Any:
    """How many rows of the block count, as a block of one element."""
    t = np.asarray(t)
    return np.full((1,) * t.ndim, float(np.count_nonzero(t != ignore_index)))


def _distill_block(
    s: Any, t: Any, y: Any, count: Any, *, options: dict[str, Any], num_threads: Any
) -> tuple[Any, Any, float]:
    """``(gradient divided by the global count, per-row losses, loss sum)``."""
    losses, grad = _distill._run(
        s, t, reduction="none", target=y, axis=-1, out=None, num_threads=num_threads,
        grad_denom=None if count is None else float(count), **options,
    )  # fmt: skip
    losses = np.asarray(losses)
    return grad, losses, float(np.sum(losses, dtype=np.float64))


def distillation_loss_with_grad(
    student_logits: Any,
    teacher_logits: Any,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    target: Any = None,
    ignore_index: int = -100,
    num_threads: int | None = 1,
) -> tuple[da.Array, da.Array]:
    """Distillation divergence and its gradient over dask arrays of logits (lazy).

    :func:`fastxent.distillation_loss_with_grad` block by block: each block
    of rows returns its gradient and its loss sum; ``"batchmean"`` divides
    the tree-summed total, and every gradient block, by the global number of
    rows that count (from ``target`` alone, summed first).

    Parameters
    ----------
    student_logits : dask array of shape (..., m)
        Chunked along the rows (a NumPy array is cut into row chunks).
    teacher_logits : dask or NumPy array of the student's shape
        With the student's row chunks.
    divergence : {"forward_kl", "reverse_kl", "jsd"}, default "forward_kl"
        As in :func:`fastxent.distillation_loss_with_grad`.
    beta : float in (0, 1), default 0.5
        The generalised JSD's weight.
    temperature : float > 0, default 1.0
        Divides both logits before the softmax (the loss is not multiplied
        by ``T**2``).
    reduction : {"batchmean", "sum", "none"}, default "batchmean"
        As in :func:`fastxent.distillation_loss_with_grad`.
    target : dask or NumPy array of int, shape ``student_logits.shape[:-1]``, optional
        Rows whose target equals ``ignore_index`` do not count.
    ignore_index : int, default -100
        The value of ``target`` that marks a row that does not count.
    num_threads : int >= 1, optional
        Threads per block, 1 by default; ``None`` uses OpenMP's default.

    Returns
    -------
    loss : dask array
        0-d for ``"batchmean"`` and ``"sum"``, one value per row for
        ``"none"``; the compute dtype.
    grad : dask array of the student's shape and chunks
        The gradient with respect to ``student_logits``.

    Raises
    ------
    TypeError, ValueError
        As :func:`fastxent.distillation_loss_with_grad`, when the graph is
        built.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np, fastxent, fastxent.dask
    >>> rng = np.random.default_rng(0)
    >>> s, t = rng.standard_normal((1000, 10)), rng.standard_normal((1000, 10))
    >>> loss, grad = fastxent.dask.distillation_loss_with_grad(da.from_array(s, chunks=300), t)
    >>> ref_loss, ref_grad = fastxent.distillation_loss_with_grad(s, t)
    >>> with dask.config.set(scheduler="synchronous"):
    ...     bool(np.isclose(loss.compute(), ref_loss, rtol=1e-14)), bool(
    ...         np.allclose(grad.compute(), ref_grad, rtol=1e-14))
    (True, True)
    """
    div, b, red = _distill._options(divergence, beta, reduction)
    s, dtype, _ = _rows(student_logits, "student_logits", 2)
    t = g.per_row(teacher_logits, "teacher_logits", s.shape, s, "student_logits", 2)
    v.compute_dtype(t.dtype, "teacher_logits")
    temp = _logprob.temperature_option(temperature, dtype)
    ignore = v.ignore_index(ignore_index, "labels")
    num_threads = _threads(num_threads)
    nb = s.ndim - 1
    idx = g.BATCH[:nb] + "z"
    y = None if target is None else _labels(target, s, "student_logits", 2)
    count: Any = None
    if red == "batchmean":
        if y is None:
            count = float(np.prod(s.shape[:-1]))
        else:
            per_block = y.map_blocks(
                _count_block, ignore_index=ignore, dtype=np.float64,
                chunks=tuple((1,) * len(c) for c in y.chunks), meta=np.empty((0,) * nb),
            )  # fmt: skip
            count = g.tree_sum(per_block, g.BATCH[:nb], nb, None)
    options = dict(divergence=divergence, beta=b, temperature=temp, ignore_index=ignore)
    res = da.blockwise(
        _distill_block,
        idx,
        s,
        idx,
        t,
        idx,
        y,
        None if y is None else idx[:nb],
        count,
        "" if isinstance(count, da.Array) else None,
        options=options,
        num_threads=num_threads,
        dtype=dtype,
        meta=np.empty((0,) * (nb + 1), dtype=dtype),
    )
    io = s.dtype if v.half_kind(s.dtype) else dtype
    grad = g.pick(res, idx, 0, idx, io)
    del div  # checked above; the blocks take the name
    if red == "none":
        return g.pick(res, idx, 1, idx[:nb], dtype), grad
    total = g.tree_sum(res, idx, nb, 2)
    if red == "sum":
        return g.reduced_loss(total, 1.0, "sum", dtype), grad
    return g.reduced_loss(total, count, "mean", dtype), grad
