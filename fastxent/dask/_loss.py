"""The graphs of :mod:`fastxent.dask`'s loss functions: the inputs checked
and lined up, the block tasks, and the outputs (see ``_dask_graph`` for the
design: whole-row blocks, fixed-tree sums, the global denominator)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np

from .. import _kernels, _loss
from .. import _validation as v
from .._linear import _check_inputs, _linear_run
from .._spec import loss_spec
from . import _graph as g

__all__ = ["linear_graph", "loss_graph"]


class Rows(NamedTuple):
    """The checked inputs of a call: the row array (logits or x, its last
    axis whole), the target and sample weights with its row chunks, the
    validated options (class weights in the compute dtype)."""

    rows: da.Array
    t: da.Array
    kind: str
    s: da.Array | None
    options: dict[str, Any]
    dtype: np.dtype[np.floating[Any]]
    m: int


def _options(
    weight: Any, ignore_index: Any, label_smoothing: Any, z_loss: Any, softcap: Any
) -> dict[str, Any]:
    return dict(
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )


def _targets(
    rows: da.Array,
    rows_name: str,
    target: Any,
    sample_weight: Any,
    m: int,
    dtype: np.dtype[np.floating[Any]],
    options: dict[str, Any],
    stacklevel: int,
) -> Rows:
    nb = rows.ndim - 1
    shape = rows.shape[:-1] + (m,)
    t = target
    if not dask.is_dask_collection(t):
        t = v.as_array(t, "target")
    elif not isinstance(t, da.Array):
        raise TypeError(f"target must be a dask array or a NumPy array; got {type(t).__name__}.")
    kind = g.target_kind(np.dtype(t.dtype), tuple(t.shape), shape)
    t = g.per_row(t, "target", tuple(t.shape), rows, rows_name, stacklevel + 1)
    s = None
    if sample_weight is not None:
        s = g.per_row(
            sample_weight, "sample_weight", rows.shape[:-1], rows, rows_name, stacklevel + 1
        )
    spec = g.check_options(kind, t.dtype, None if s is None else s.dtype, nb, m, dtype, options)
    return Rows(rows, t, kind, s, dict(options, weight=spec.weight), dtype, m)


def _threads(num_threads: Any) -> Any:
    if num_threads is not None:
        v.resolve_threads(num_threads)  # the checks only
    return num_threads


def global_position(local: int, info: Any) -> int:
    """The flat position in the whole target of flat position ``local`` in
    the block that ``info`` (blockwise's ``block_info``) describes."""
    if not (info and info[0]["shape"]):
        return local
    loc = info[0]["array-location"]
    index = np.unravel_index(local, tuple(b - a for a, b in loc))
    return int(
        np.ravel_multi_index(
            tuple(i + a for i, (a, _) in zip(index, loc, strict=True)), info[0]["shape"]
        )
    )


def weight_sum_block(s: Any) -> float:
    """This block's "mean" denominator for class probabilities: ``sum_i s_i``
    (after checking the weights)."""
    checked = v.sample_weight(s, np.shape(s))
    assert checked is not None  # s is an array
    return float(_kernels.pairwise_sum(checked))


def denominator_block(
    t: Any,
    s: Any = None,
    *,
    m: int,
    compute_dtype: np.dtype[np.floating[Any]],
    weight: Any,
    ignore_index: int | None,
    block_info: Any = None,
) -> float:
    """This block's "mean" denominator ``sum_i s_i w[y_i]`` over its kept
    rows, after checking every label (a bad one is reported at its
    position in the whole target)."""
    try:
        spec = loss_spec(
            t,
            np.shape(t) + (m,),
            compute_dtype,
            weight=weight,
            sample_weight=s,
            ignore_index=ignore_index,
            label_smoothing=0.0,
            z_loss=0.0,
            softcap=None,
        )
        return spec.mean_denominator(m)
    except v.LabelError as e:
        raise e.at(global_position(e.position, block_info)) from None


def _denominators(r: Rows, want_global: bool) -> tuple[da.Array | None, Any]:
    """``(checked, denom)``: per-block label checks (class indices; None
    for probabilities), and the global "mean" denominator when
    ``want_global`` (a 0-d dask array, or the row count for unweighted
    probabilities), else None."""
    nb = r.rows.ndim - 1
    checked = None
    if r.kind == "labels":
        arrays = [r.t] if r.s is None else [r.t, r.s]
        checked = da.map_blocks(
            denominator_block,
            *arrays,
            m=r.m,
            compute_dtype=r.dtype,
            weight=r.options["weight"],
            ignore_index=r.options["ignore_index"],
            chunks=r.t.chunks,
            dtype=np.float64,
            meta=np.empty((0,) * nb),
        )
    if not want_global:
        return checked, None
    if checked is not None:
        return checked, g.tree_sum(checked, g.BATCH[:nb], nb, None)
    if r.s is not None:
        sums = r.s.map_blocks(weight_sum_block, dtype=np.float64, meta=np.empty((0,) * nb))
        return None, g.tree_sum(sums, g.BATCH[:nb], nb, None)
    return None, float(math.prod(r.rows.shape[:-1]))


def _block_args(r: Rows, checked: Any, denom: Any, t_index: str) -> list[Any]:
    """blockwise's (array, index) pairs after the row array: target,
    sample weights, label check, global denominator (None where absent)."""
    b = g.BATCH[: r.rows.ndim - 1]
    return [
        r.t,
        t_index,
        r.s,
        None if r.s is None else b,
        checked,
        None if checked is None else b,
        denom,
        "" if isinstance(denom, da.Array) else None,
    ]


def _loss_output(
    res: da.Array, res_index: str, nb: int, reduction: str, r: Rows, denom: Any, at: int
) -> da.Array:
    """The loss from the tuples of ``res``: per-row losses at ``at``, the loss
    sum at ``at + 1`` and the block's denominator at ``at + 2``."""
    if reduction == "none":
        return g.pick(res, res_index, at, res_index[:nb], r.dtype)
    total = g.tree_sum(res, res_index, nb, at + 1)
    if reduction == "sum":
        return g.reduced_loss(total, 1.0, "sum", r.dtype)
    if denom is None:  # no gradient: the blocks' own (sum, denominator) pairs
        denom = g.tree_sum(res, res_index, nb, at + 2)
    return g.reduced_loss(total, denom, "mean", r.dtype)


def loss_block(
    z: Any,
    t: Any,
    s: Any,
    checked: Any,
    denom: Any,
    *,
    want_grad: bool,
    reduction: str,
    options: dict[str, Any],
    num_threads: Any,
) -> tuple[Any, Any, float, float]:
    """``(gradient or None, per-row losses or None, loss sum, denominator)``
    of one block, the gradient divided by ``denom`` (the global one)."""
    del checked  # a dependency only: the labels were checked first
    # Looked up at call time, so that the test suite's input guard sees it.
    loss, grad, total, dsum = _loss._run(
        z,
        t,
        want_loss=reduction == "none",
        want_grad=want_grad,
        reduction="none" if reduction == "none" else "sum",
        sample_weight=s,
        out=None,
        num_threads=num_threads,
        grad_denom=None if denom is None else float(denom),
        **options,
    )
    return grad, (None if loss is None else np.asarray(loss)), total, dsum


def loss_graph(
    logits: Any,
    target: Any,
    *,
    want_grad: bool,
    reduction: Any,
    weight: Any,
    sample_weight: Any,
    ignore_index: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    num_threads: Any,
    stacklevel: int,
) -> tuple[da.Array, da.Array | None]:
    """``(loss, grad or None)`` of fastxent.dask.cross_entropy(_with_grad)."""
    reduction = v.check_reduction(reduction)
    num_threads = _threads(num_threads)
    z = g.as_dask(logits, "logits", "class")
    dtype = v.compute_dtype(z.dtype)
    if z.ndim == 0:
        raise ValueError("logits must have at least one dimension (..., m); got a 0-d array.")
    m = z.shape[-1]
    if m == 0:
        raise ValueError(f"logits must have at least one class (m >= 1); got shape {z.shape}.")
    z = g.whole_axis(z, z.ndim - 1, "logits", "class", stacklevel + 1)
    options = _options(weight, ignore_index, label_smoothing, z_loss, softcap)
    r = _targets(z, "logits", target, sample_weight, m, dtype, options, stacklevel + 1)
    nb = z.ndim - 1
    idx = g.BATCH[:nb] + "z"
    checked, denom = _denominators(r, want_grad and reduction == "mean")
    res = da.blockwise(
        loss_block,
        idx,
        z,
        idx,
        *_block_args(r, checked, denom, idx if r.kind == "probs" else idx[:nb]),
        want_grad=want_grad,
        reduction=reduction,
        options=r.options,
        num_threads=num_threads,
        dtype=dtype,
        meta=np.empty((0,) * (nb + 1), dtype=dtype),
    )
    # The gradient blocks come in the logits' dtype when it is float16 or
    # bfloat16 (computed in float32), as in memory.
    io = z.dtype if v.half_kind(z.dtype) else dtype
    grad = g.pick(res, idx, 0, idx, io) if want_grad else None
    return _loss_output(res, idx, nb, reduction, r, denom, 1), grad


def linear_block(
    x: Any,
    t: Any,
    s: Any,
    checked: Any,
    denom: Any,
    W: Any,
    b: Any,
    *,
    want_grad: bool,
    reduction: str,
    options: dict[str, Any],
    chunk_size: Any,
    num_threads: Any,
) -> tuple[Any, ...]:
    """``(grad_x, grad_W, grad_b, per-row losses or None, loss sum,
    denominator)`` of one block of rows; gradients divided by ``denom``."""
    del checked  # a dependency only: the labels were checked first
    with g.one_blas_thread():
        loss, gx, gW, gb, total, dsum = _linear_run(
            x,
            W,
            g.one(t),
            linear_bias=b,
            want_grad=want_grad,
            reduction="none" if reduction == "none" else "sum",
            sample_weight=s,
            chunk_size=chunk_size,
            num_threads=num_threads,
            grad_denom=None if denom is None else float(denom),
            **options,
        )
    return gx, gW, gb, (np.asarray(loss) if reduction == "none" else None), total, dsum


def _small_operand(a: Any, name: str, stacklevel: int) -> tuple[Any, tuple[int, ...], Any]:
    """``(delayed value, shape, dtype)`` of the weight or bias: one task that
    every block depends on (a dask array is first made one chunk)."""
    if isinstance(a, da.Array):
        g.check_known_chunks(a, name)
        for axis in range(a.ndim):
            a = g.whole_axis(a, axis, name, "row" if axis == 0 else "feature", stacklevel + 1)
        return a.to_delayed().ravel()[0], a.shape, a.dtype
    if dask.is_dask_collection(a):
        raise TypeError(f"{name} must be a dask or NumPy array; got {type(a).__name__}.")
    arr = v.as_array(a, name)
    return dask.delayed(arr), arr.shape, arr.dtype


def linear_graph(
    x: Any,
    linear_weight: Any,
    target: Any,
    *,
    linear_bias: Any,
    want_grad: bool,
    reduction: Any,
    weight: Any,
    sample_weight: Any,
    ignore_index: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    chunk_size: Any,
    num_threads: Any,
    stacklevel: int,
) -> tuple[Any, ...]:
    """``(loss, grad_x, grad_W, grad_b)`` of fastxent.dask.linear_cross_entropy(_with_grad)."""
    reduction = v.check_reduction(reduction)
    num_threads = _threads(num_threads)
    xd = g.as_dask(x, "x", "feature")
    Wd, W_shape, W_dtype = _small_operand(linear_weight, "linear_weight", stacklevel + 1)
    bd: Any = None
    b_shape: tuple[int, ...] = ()
    b_dtype: Any = None
    if linear_bias is not None:
        bd, b_shape, b_dtype = _small_operand(linear_bias, "linear_bias", stacklevel + 1)
    nb = xd.ndim - 1
    # _linear_run's own checks of dtypes and shapes, on stand-ins of the same
    # dtypes and shapes (with no rows; np.empty touches no memory); and its
    # dtypes: the compute dtype (float32 for float16/bfloat16 x, as BLAS has
    # no 16-bit GEMM), which the loss and its reduction over blocks keep,
    # and x's own, which the gradients come back in.
    *_, dtype, io = _check_inputs(
        np.empty((0,) * nb + xd.shape[-1:], xd.dtype),
        np.empty(W_shape, W_dtype),
        None if bd is None else np.empty(b_shape, b_dtype),
    )
    if chunk_size is not None:
        from .._linear import _chunk_size

        _chunk_size(chunk_size, 1, 1, 1, 1)
    V, d = W_shape
    xd = g.whole_axis(xd, nb, "x", "feature", stacklevel + 1)
    options = _options(weight, ignore_index, label_smoothing, z_loss, softcap)
    r = _targets(xd, "x", target, sample_weight, V, dtype, options, stacklevel + 1)
    b = g.BATCH[:nb]
    idx = b + "f"
    checked, denom = _denominators(r, want_grad and reduction == "mean")
    res = da.blockwise(
        linear_block,
        idx,
        xd,
        idx,
        *_block_args(r, checked, denom, b + "v" if r.kind == "probs" else b),
        Wd,
        None,
        bd,
        None,
        want_grad=want_grad,
        reduction=reduction,
        options=r.options,
        chunk_size=chunk_size,
        num_threads=num_threads,
        dtype=dtype,
        meta=np.empty((0,) * (nb + 1), dtype=dtype),
    )
    loss = _loss_output(res, idx, nb, reduction, r, denom, 3)
    if not want_grad:
        return loss, None, None, None
    gx = g.pick(res, idx, 0, idx, io)
    gW = g.tree_sum(res, idx, nb, 1, "vf", (V, d)).astype(io)
    gb = None if bd is None else g.tree_sum(res, idx, nb, 2, "v", (V,)).astype(io)
    return loss, gx, gW, gb
