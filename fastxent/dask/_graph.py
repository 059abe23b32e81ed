"""Graph building for :mod:`fastxent.dask`: input checks, block tasks and
fixed-tree sums.

Design
------
* **Blocks are whole rows.**  Arrays are chunked along their batch axes
  only; a class (or feature) axis split over chunks is rechunked to one
  chunk, with a :class:`dask.array.PerformanceWarning`.  Every per-row array
  (targets, sample weights) must have the row chunks of the logits (a NumPy
  one is cut to them).  Shapes, dtypes, chunks and option values are checked
  here, on the client, before a graph exists; only what needs the data
  (labels in range, finite weights) is checked in the blocks.
* **Block tasks run the in-memory code** (``_loss._run``,
  ``_linear._linear_run``, ``estimators.data_term``) on NumPy blocks: the
  same validation, kernels and conventions as the in-memory functions.  A
  block task with several outputs (a gradient block and its loss sum)
  returns a tuple, and each output is picked from it by a small task that
  runs where the tuple is.
* **Fixed tree.**  What is reduced over blocks (loss sums, denominators,
  weight gradients) becomes one float64 *cell* per block, of shape
  ``(1, ..., 1) + payload``, so that the cells form a dask array of shape
  ``blocks + payload``; ``Array.sum(axis=<block axes>, split_every=8)`` sums
  them in a tree that dask builds from the number of blocks alone, before
  anything runs, each node adding its children in block order.  The result
  has the same bits under every scheduler, whatever order the blocks finish
  in.
* **"mean" and the global denominator.**  The gradient of every block is
  divided by the denominator of the whole batch, ``sum_i s_i w[y_i]``.  A
  first pass over the targets and weights only (never the logits) computes
  each block's share, checking every label (the error names its position in
  the whole target), and the fixed tree sums them to a 0-d dask array that
  enters every gradient task as a dependency: it never travels through the
  client.  Without a gradient, each block returns its (loss sum,
  denominator) pair and no first pass is needed (beyond the label check).
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
from dask.base import is_dask_collection

from .. import _linear
from .. import _validation as v
from .._loss import reduce_total
from .._spec import LossSpec, loss_spec

#: Children per node of the reduction trees.
SPLIT_EVERY = 8
#: blockwise indices of the batch (row) axes; the other axes use other letters.
BATCH = "abcdefghijklmn"


# ------------------------------------------------------------------ input checks


def check_known_chunks(a: da.Array, name: str) -> None:
    """Known chunk sizes, and blocks that are plain NumPy arrays (not
    masked: the blocks would be read without their masks)."""
    v.check_plain(getattr(a, "_meta", None), name)
    if any(math.isnan(c) for cs in a.chunks for c in cs):
        raise ValueError(
            f"{name} has unknown chunk sizes (NaN in {name}.chunks, e.g. after boolean "
            f"indexing or from a dataframe without lengths); fastxent.dask needs them to "
            f"line up the blocks: call {name}.compute_chunk_sizes() (or "
            f"dataframe.to_dask_array(lengths=True)) first."
        )


def as_dask(a: Any, name: str, what: str) -> da.Array:
    """``a`` as a dask array with known chunks: a dask array as it is, a
    NumPy array (or array-like) cut into row chunks, the ``what`` axis (the
    last) whole."""
    if isinstance(a, da.Array):
        check_known_chunks(a, name)
        return a
    if is_dask_collection(a):
        raise TypeError(
            f"{name} must be a dask array (or a NumPy array); got a {type(a).__name__}. "
            "Convert a dask dataframe with .to_dask_array(lengths=True)."
        )
    arr = v.as_array(a, name)
    if arr.ndim == 0:
        raise ValueError(
            f"{name} must have at least one dimension (..., {what}) with the {what}s last; "
            "got a 0-d array."
        )
    return da.from_array(arr, chunks=("auto",) * (arr.ndim - 1) + (-1,))


def whole_axis(a: da.Array, axis: int, name: str, what: str, stacklevel: int) -> da.Array:
    """``a`` with one chunk along ``axis``, rechunked with a warning if split."""
    if len(a.chunks[axis]) > 1:
        warnings.warn(
            f"{name} is split into {len(a.chunks[axis])} chunks along its {what} axis "
            f"(axis {axis}); fastxent.dask rechunks it to one chunk there, since every "
            f"block needs whole rows, which copies it. Chunk it along the rows only "
            f"(chunks=(..., -1) when it is made, or {name}.rechunk({{{axis}: -1}}) once).",
            da.PerformanceWarning,
            stacklevel=stacklevel + 1,
        )
        a = a.rechunk({axis: -1})
    return a


def per_row(
    a: Any,
    name: str,
    shape: tuple[int, ...],
    rows: da.Array,
    rows_name: str,
    stacklevel: int,
) -> da.Array:
    """``a`` (dask or NumPy) of ``shape`` = rows' batch shape + trailing axes,
    as a dask array with the row chunks of ``rows`` (whose last axis is not
    a row axis)."""
    nb = rows.ndim - 1
    row_chunks = rows.chunks[:nb]
    if isinstance(a, da.Array):
        check_known_chunks(a, name)
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape}; got shape {a.shape}.")
        for axis in range(nb, a.ndim):
            a = whole_axis(a, axis, name, "class", stacklevel + 1)
        if a.chunks[:nb] != row_chunks:
            raise ValueError(
                f"the row chunks of {name} do not line up with those of {rows_name}: "
                f"{name} is chunked {a.chunks[:nb]} along its rows, {rows_name} "
                f"{row_chunks}. Rechunk one like the other, e.g. "
                f"{name}.rechunk({rows_name}.chunks[:{nb}]{' + (-1,)' if a.ndim > nb else ''})."
            )
        return a
    if is_dask_collection(a):
        raise TypeError(f"{name} must be a dask array or a NumPy array; got {type(a).__name__}.")
    arr = v.as_array(a, name)
    if arr.shape != shape:
        raise ValueError(
            f"{name} must have shape {shape} ({rows_name} has shape {rows.shape}); "
            f"got shape {arr.shape}."
        )
    return da.from_array(arr, chunks=row_chunks + tuple((s,) for s in shape[nb:]))


def target_kind(t_dtype: np.dtype[Any], t_shape: tuple[int, ...], shape: tuple[int, ...]) -> str:
    """The kind, "labels" or "probs", of a target of this dtype and shape against
    logits of ``shape``, with cross_entropy's messages for what is neither."""
    stub = np.empty(0, dtype=t_dtype)
    if t_shape == shape[:-1]:
        if t_dtype.kind not in "iu":
            raise TypeError(v._non_integer_labels_message(stub, stub))
        return "labels"
    if t_shape == shape:
        if t_dtype.kind in "iu":
            raise ValueError(v._integer_target_message(t_dtype, shape))
        if t_dtype.kind != "f" and not v.half_kind(t_dtype):
            raise TypeError(
                f"class-probability targets must be floating-point numbers; got dtype={t_dtype}."
            )
        return "probs"
    raise ValueError(
        f"target must have shape {shape[:-1]} (class indices) or {shape} (class "
        f"probabilities) for logits of shape {shape}; got shape {t_shape}."
    )


def check_options(
    kind: str,
    t_dtype: np.dtype[Any],
    s_dtype: np.dtype[Any] | None,
    nb: int,
    m: int,
    dtype: np.dtype[np.floating[Any]],
    options: dict[str, Any],
) -> LossSpec:
    """Every option checked by ``loss_spec`` itself, on empty stand-ins of
    the target and sample weights (no data is touched)."""
    if is_dask_collection(options["weight"]):
        raise TypeError(
            "weight (the m class weights) must be a NumPy array or a list, not a dask "
            "collection: pass weight.compute()."
        )
    batch = (0,) * nb
    t_stub = np.zeros(batch if kind == "labels" else batch + (m,), dtype=t_dtype)
    s_stub = None if s_dtype is None else np.zeros(batch, dtype=s_dtype)
    return loss_spec(t_stub, batch + (m,), dtype, **dict(options, sample_weight=s_stub))


# ------------------------------------------------------------------ block tasks


def aligned(a: Any) -> Any:
    """``a`` copied if its data are misaligned for its dtype, as blocks that
    ``distributed`` deserialised may be (a view into a received frame)."""
    return None if a is None else v.aligned(a)


def one(block: Any) -> Any:
    """A block that blockwise passed as a (nested) one-element list: the
    chunk along an axis absent from the output (there is only one)."""
    while isinstance(block, list):
        (block,) = block
    return block


# BLAS on one thread while any block task of the process runs: the fused
# linear cross-entropy's process-wide, counted limit (safe when the tasks of
# several threads overlap).
one_blas_thread = _linear.one_blas_thread


def _identity(block: Any) -> Any:
    return block


def _cell(block: Any, *, pick: Callable[[Any], Any], shape: tuple[int, ...]) -> Any:
    return np.asarray(pick(one(block)), dtype=np.float64).reshape(shape)


def _pick(block: Any, *, index: int) -> Any:
    return one(block)[index]


def pick(res: da.Array, res_index: str, index: int, out_index: str, dtype: Any) -> da.Array:
    """Output ``index`` of the tuples of ``res``, as an array of ``out_index``."""
    return da.blockwise(
        _pick,
        out_index,
        res,
        res_index,
        index=index,
        dtype=dtype,
        meta=np.empty((0,) * len(out_index), dtype=dtype),
    )


def tree_sum(
    res: da.Array,
    res_index: str,
    nb: int,
    index: int | None,
    payload_index: str = "",
    payload_shape: tuple[int, ...] = (),
) -> da.Array:
    """The sum over the blocks of ``res`` of output ``index`` of each block
    (the block itself for None), in float64, in the fixed tree: a dask array
    of ``payload_shape`` (indices ``payload_index``; letters absent from
    ``res_index`` are new axes)."""
    out_index = res_index[:nb] + payload_index
    new_axes = {
        c: n for c, n in zip(payload_index, payload_shape, strict=True) if c not in res_index
    }
    cells = da.blockwise(
        _cell,
        out_index,
        res,
        res_index,
        adjust_chunks={c: 1 for c in res_index[:nb]},
        new_axes=new_axes,
        pick=_identity if index is None else operator.itemgetter(index),
        shape=(1,) * nb + payload_shape,
        dtype=np.float64,
        meta=np.empty((0,) * len(out_index)),
    )
    if nb == 0:
        return cells
    return cells.sum(axis=tuple(range(nb)), split_every=SPLIT_EVERY, dtype=np.float64)


def _finish(total: Any, denom: Any, *, reduction: str, out_dtype: np.dtype[Any]) -> Any:
    return np.asarray(reduce_total(float(total), float(denom), reduction, out_dtype))


def reduced_loss(total: da.Array, denom: Any, reduction: str, dtype: Any) -> da.Array:
    """The 0-d "sum" or "mean" loss from the tree-summed loss sum and
    denominator (a 0-d dask array or a number), as cross_entropy makes it."""
    return da.blockwise(
        _finish,
        "",
        total,
        "",
        denom,
        "" if isinstance(denom, da.Array) else None,
        reduction=reduction,
        out_dtype=dtype,
        dtype=dtype,
        meta=np.empty((), dtype=dtype),
    )
