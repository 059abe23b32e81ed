"""Fused linear + softmax cross-entropy: ``CE(x @ W.T + b, target)`` and its
gradients with respect to ``x``, ``W`` and ``b``, without the n x V logits.

The rows are processed in chunks: for each chunk one GEMM forms its logits
in a buffer of ``chunk_size x V`` (allocated once per call), the row kernels
turn them into the loss and, in place, the gradient ``G`` with respect to
the logits, and two more GEMMs consume ``G``: ``grad_x[chunk] = G @ W`` and
``grad_W += G.T @ x[chunk]`` (BLAS's beta = 1, no V x d temporary).  BLAS is
SciPy's (``scipy.linalg.cython_blas``, called without the GIL through the
function pointers SciPy exports); SciPy is imported on the first call, so
``import fastxent`` stays NumPy-only.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _docs, _kernels
from . import _validation as v
from ._loss import reduce_total
from ._spec import loss_spec
from ._typing import FloatArray, FloatScalar

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad"]

_BLAS_INT_MAX = 2**31 - 1
#: The default chunk rule (see default_chunk_size): the share of the n x V
#: logits the call's working memory may take, a size that is always fine
#: (cache-sized), and the rows past which larger chunks gain little.
_MEMORY_FRACTION = 0.25
_CHUNK_SMALL_BYTES = 4 * 2**20
_CHUNK_EFFICIENT_ROWS = 1024


def default_chunk_size(n: int, V: int, d: int, itemsize: int, buffers: int = 1) -> int:
    """Rows per chunk when ``chunk_size=None``.

    Every chunk's GEMMs pack all of ``W`` twice (for the logits and for
    ``grad_x``) and read and write ``grad_W`` once, a cost that does not
    shrink with the chunk, while the chunk's arithmetic grows with its rows:
    the overhead over the three GEMMs alone falls as about one over the
    rows per chunk, and past about a thousand rows it is a few per cent.
    The ``rows x V`` buffer of logits is what a chunk costs in memory.  The
    rule takes the largest chunk that keeps the call's working memory (the
    buffer, plus the float64 per-row losses and bias sums) within a quarter
    of the n x V logits it replaces, or within 4 MiB (a cache-sized buffer,
    which any machine has to spare) when that is larger; at most 1 024 rows
    unless 4 MiB holds more, and at most ``n``.  The rows are then split
    into chunks of equal size (the last one at most a row shorter), so that
    no chunk is a small, inefficient remainder.  ``d`` does not enter: the
    GEMMs' work and their per-chunk cost both grow with it.  ``buffers``:
    how many ``rows x V`` buffers a chunk holds (two for a distillation,
    the student's and the teacher's logits), which share the budget.
    Measured figures: docs/guide/linear.md.
    """
    del d  # documented: the rule does not depend on it
    if n <= 1:
        return 1
    row_bytes = max(1, buffers * V * itemsize)
    small = _CHUNK_SMALL_BYTES // row_bytes
    logits_bytes = n * V * itemsize
    budget = max(_MEMORY_FRACTION * logits_bytes, _CHUNK_SMALL_BYTES) - 8 * (n + V)
    rows = min(int(budget // row_bytes), max(_CHUNK_EFFICIENT_ROWS, small), n)
    chunks = -(-n // max(1, rows))
    return -(-n // chunks)


@functools.cache
def _gemm_capsule(dtype_char: str) -> object:
    try:
        from scipy.linalg import cython_blas
    except ImportError:  # pragma: no cover - SciPy is an extra
        raise ImportError(
            "the fused linear cross-entropy calls SciPy's BLAS: pip install scipy "
            '(or "fastxent[linear]")'
        ) from None
    return cython_blas.__pyx_capi__[{"f": "sgemm", "d": "dgemm"}[dtype_char]]


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's controller of the loaded BLAS libraries (SciPy's among
    them: made after its import)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        raise ImportError(
            "the fused linear cross-entropy runs BLAS on one thread per GEMM tile, which "
            'threadpoolctl sets: pip install threadpoolctl (or "fastxent[linear]")'
        ) from None
    return ThreadpoolController().select(user_api="blas")


def blas_threads(num_threads: int | None) -> Any:
    """A context that limits BLAS to ``num_threads`` threads (None: no
    change), through threadpoolctl."""
    _gemm_capsule("d")  # SciPy's BLAS loaded before the controller looks
    if num_threads is None:
        return contextlib.nullcontext()
    return _blas_controller().limit(limits=num_threads)


_one_thread_lock = threading.Lock()
_one_thread_users = 0
_one_thread_limit: Any = None


def _clear_controlling_thread() -> None:
    """Let the calling thread set OpenBLAS's thread count: threadpoolctl
    (>= 3.6) lets only the first thread that set it change a process-wide
    OpenBLAS pool, and the other threads' limits silently do nothing."""
    from threadpoolctl import OpenBLASController

    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread while any user of this limit runs in the process:
    for tasks that run in parallel themselves, one per core (Dask's blocks),
    whose GEMMs must not each start BLAS's threads.

    A plain limit per task is not safe when tasks overlap in several Python
    threads (Dask's threaded scheduler): threadpoolctl records the count it
    finds, sets 1 and restores what it recorded, so a task can record
    another's 1 and restore it after that one restored the original, leaving
    BLAS on one thread for the rest of the process.  This limit is
    process-wide and counted: set by the first user, restored by the last
    (in whichever thread)."""
    global _one_thread_users, _one_thread_limit
    with _one_thread_lock:
        if _one_thread_users == 0:
            _clear_controlling_thread()
            _one_thread_limit = blas_threads(1)
            _one_thread_limit.__enter__()
        _one_thread_users += 1
    try:
        yield
    finally:
        with _one_thread_lock:
            _one_thread_users -= 1
            if _one_thread_users == 0:
                _clear_controlling_thread()  # the last call may run in another thread
                _one_thread_limit.__exit__(None, None, None)
                _one_thread_limit = None
                _clear_controlling_thread()


def _rows_for_blas(a: NDArray[Any], dtype: np.dtype[Any]) -> NDArray[Any]:
    """``a`` as it is when BLAS can take it (contiguous rows, any row stride
    >= the row length, aligned, native), else a C-contiguous copy."""
    if a.dtype != dtype:
        a = a.astype(dtype)
    ok = (
        a.ndim == 2
        and (a.shape[1] <= 1 or a.strides[1] == a.itemsize)
        and (a.shape[0] <= 1 or a.strides[0] >= a.shape[1] * a.itemsize)
        and a.strides[0] % a.itemsize == 0
        and a.flags.aligned
        and a.dtype.isnative
    )
    # (a misaligned view, e.g. of a received network frame, is copied too)
    return a if ok else v.aligned(np.ascontiguousarray(a))


def _check_inputs(
    x: ArrayLike, linear_weight: ArrayLike, linear_bias: ArrayLike | None
) -> tuple[
    NDArray[Any], NDArray[Any], NDArray[Any] | None, tuple[int, ...], np.dtype[Any], np.dtype[Any]
]:
    """``(x2d, W, b, x_shape, dtype, io)`` after the shape and dtype checks:
    the inputs in the compute dtype ``dtype`` and the dtype ``io`` of the
    outputs (the inputs' own; float16/bfloat16 are computed in float32, as
    BLAS has no 16-bit GEMM: x, W and b are converted, temporaries of their
    size in float32)."""
    xa = v.as_array(x, "x")
    Wa = v.as_array(linear_weight, "linear_weight")
    ba = None if linear_bias is None else v.as_array(linear_bias, "linear_bias")
    given = {"x": xa, "linear_weight": Wa}
    if ba is not None:
        given["linear_bias"] = ba
    # Byte order aside (byte-swapped inputs are converted, as cross_entropy
    # converts them; the outputs are native).
    dtypes = {a.dtype if a.dtype.isnative else a.dtype.newbyteorder("=") for a in given.values()}
    io = xa.dtype if xa.dtype.isnative else xa.dtype.newbyteorder("=")
    half = v.half_kind(io)
    if len(dtypes) != 1 or (io not in (np.float32, np.float64) and not half):
        got = ", ".join(f"{k}={a.dtype}" for k, a in given.items())
        raise TypeError(
            "x, linear_weight and linear_bias must all have one dtype, float32 or float64 "
            f"(or float16/bfloat16, computed in float32); got {got}. Convert with "
            ".astype(...) first."
        )
    dtype = np.dtype(np.float32) if half else io
    if xa.ndim == 0:
        raise ValueError("x must have shape (..., d) with the features last; got a 0-d array.")
    if Wa.ndim != 2:
        raise ValueError(
            f"linear_weight must have shape (V, d) (PyTorch's F.linear convention); "
            f"got shape {Wa.shape}."
        )
    V, d = Wa.shape
    if xa.shape[-1] != d:
        raise ValueError(
            f"x has {xa.shape[-1]} features (shape {xa.shape}) but linear_weight has shape "
            f"{Wa.shape}: it must be (V, {xa.shape[-1]})."
        )
    if V == 0:
        raise ValueError("linear_weight must have at least one row (V >= 1 classes).")
    if ba is not None and ba.shape != (V,):
        raise ValueError(f"linear_bias must have shape ({V},) (one per class); got {ba.shape}.")
    if max(V, d) > _BLAS_INT_MAX:
        raise ValueError(f"V and d must be below 2**31 (BLAS's 32-bit sizes); got V={V}, d={d}.")
    x2 = xa.reshape(int(np.prod(xa.shape[:-1])), d)
    if x2.shape[0] > _BLAS_INT_MAX:
        raise ValueError(f"x has {x2.shape[0]} rows; at most 2**31 - 1 are supported.")
    b = None if ba is None else v.aligned(np.ascontiguousarray(ba, dtype=dtype))
    return _rows_for_blas(x2, dtype), _rows_for_blas(Wa, dtype), b, xa.shape, dtype, io


def _chunk_size(value: Any, n: int, V: int, d: int, itemsize: int, buffers: int = 1) -> int:
    if value is None:
        return default_chunk_size(n, V, d, itemsize, buffers)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"chunk_size must be None or an integer >= 1; got {value!r}.")
    if value < 1:
        raise ValueError(f"chunk_size must be None or an integer >= 1; got {value}.")
    return max(1, min(int(value), n))


def _linear_run(
    x: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None,
    want_grad: bool,
    reduction: object,
    weight: ArrayLike | None,
    sample_weight: ArrayLike | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_size: Any,
    num_threads: int | None,
    grad_denom: float | None = None,
    want_grad_x: bool = True,
) -> tuple[Any, Any, Any, Any, float, float]:
    """Validate, run the chunk loop, reduce.  Returns ``(loss, grad_x,
    grad_W, grad_b, total, denominator)``; ``grad_denom`` (for blocks of a
    larger batch) divides the gradients instead of the reduction's own, and
    ``want_grad_x=False`` skips the GEMM of ``grad_x`` (None then: an
    estimator needs only the parameters' gradients)."""
    reduction = v.check_reduction(reduction)
    x2, W, b, x_shape, dtype, io = _check_inputs(x, linear_weight, linear_bias)
    n, d = x2.shape
    V = W.shape[0]
    batch = x_shape[:-1]
    spec = loss_spec(
        target,
        batch + (V,),
        dtype,
        weight=weight,
        sample_weight=sample_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    r = _chunk_size(chunk_size, n, V, d, dtype.itemsize)
    # The row kernels run on the calling thread unless asked: BLAS's threads
    # and an OpenMP team taking turns on the same cores each spin-wait while
    # the other works (benchmarks/bench_linear.py --threads shows it), and
    # next to the GEMMs the row kernels are a few per cent of the time.
    nt = v.resolve_threads(num_threads, n * V) if num_threads is not None else 1
    # Every label is checked (and the "mean" denominator summed) before any
    # GEMM runs, so bad input costs nothing and leaves nothing half done.
    denom = spec.mean_denominator(V)
    if grad_denom is None:
        grad_denom = denom if reduction == "mean" else 1.0

    losses = np.empty(n, dtype=np.float64)
    gx = gW = gb = None
    if want_grad:
        gx = np.empty((n, d), dtype=dtype) if want_grad_x else None
        gW = np.zeros((V, d), dtype=dtype) if n == 0 else np.empty((V, d), dtype=dtype)
        gb = np.zeros(V, dtype=np.float64) if b is not None else None
    total = 0.0
    if n:
        buf = np.empty((r, V), dtype=dtype)
        labels = spec.target if spec.target_kind == "labels" else None
        probs = spec.target if spec.target_kind == "probs" else None
        # BLAS threads its GEMMs as it is set to (threadpoolctl); num_threads
        # is the row kernels' (the two take turns, never run at once).
        total = _kernels.linear_cross_entropy_chunks(
            x2, W, b, labels, probs, spec.weight, spec.sample_weight, buf, losses, gx, gW, gb,
            _gemm_capsule(dtype.char), ignore_index=spec.kernel_ignore_index,
            label_smoothing=spec.label_smoothing, z_loss=spec.z_loss, softcap=spec.softcap,
            grad_denom=grad_denom, num_threads=nt,
        )  # fmt: skip
        del buf

    loss: Any
    if reduction == "none":
        loss = losses.astype(dtype, copy=False).reshape(batch)[()]
    else:
        loss = reduce_total(total, denom, reduction, dtype)
    if not want_grad:
        return loss, None, None, None, total, denom
    grad_b = None if gb is None else gb.astype(io)
    grad_x = None if gx is None else gx.reshape(x_shape).astype(io, copy=False)
    assert gW is not None
    return loss, grad_x, gW.astype(io, copy=False), grad_b, total, denom


_LINEAR_DOC = """
    x : array_like of shape (..., d)
        Features (hidden states), float32 or float64; rows may have any
        stride (rows that are not contiguous are copied).
    linear_weight : array_like of shape (V, d)
        The classifier head ``W`` (PyTorch's ``F.linear`` convention), of
        x's dtype.
    target : array_like
        Integer class indices of shape ``x.shape[:-1]`` in ``[0, V)`` (or
        ``ignore_index``), or floating-point class probabilities of shape
        ``x.shape[:-1] + (V,)``: as in :func:`fastxent.cross_entropy`.
    linear_bias : array_like of shape (V,), optional
        The bias ``b``, of x's dtype."""

_CHUNK_DOC = """
    chunk_size : int >= 1, optional
        Rows of ``x`` per chunk; the call holds one ``chunk_size x V``
        buffer of logits.  ``None`` picks the largest chunk whose working
        memory (the buffer and the per-row losses) is at most a quarter of
        the n x V logits, or 4 MiB if that is more, at most 1 024 rows
        (unless 4 MiB holds more) and at most ``n``, then evens the chunks
        out: every chunk re-reads ``W`` and ``grad_W``, so fewer, larger
        chunks are faster and cost memory, and past about a thousand rows
        they gain little.  Results do not depend on the thread count for a
        fixed ``chunk_size``, and the default does not depend on it; two
        chunk sizes agree to rounding (``grad_W`` is summed over the chunks
        in another order).
    num_threads : int >= 1, optional
        Threads for fastxent's row kernels between the GEMMs.  ``None`` runs
        them on the calling thread, unlike :func:`fastxent.cross_entropy`,
        where ``None`` is OpenMP's default (all cores unless limited): here
        the GEMMs, nearly all of the work, run on BLAS's own threads, as
        BLAS is set (its default, or ``threadpoolctl.threadpool_limits``),
        and a second thread pool taking turns with BLAS's on the same cores
        makes both spin-wait, which costs more than the row kernels' threads
        gain.  Give the row kernels threads only when BLAS runs on one.
        Results are the same bits at every ``num_threads``; OpenBLAS's own
        can change in the last bits with its thread count."""

_docs.register("linear", _LINEAR_DOC)
_docs.register("chunk", _CHUNK_DOC)


@overload
def linear_cross_entropy(
    x: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = ...,
    reduction: Literal["mean", "sum"] = ...,
    weight: ArrayLike | None = ...,
    sample_weight: ArrayLike | None = ...,
    ignore_index: int | None = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    chunk_size: int | None = ...,
    num_threads: int | None = ...,
) -> FloatScalar: ...
@overload
def linear_cross_entropy(
    x: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = ...,
    reduction: Literal["none"],
    weight: ArrayLike | None = ...,
    sample_weight: ArrayLike | None = ...,
    ignore_index: int | None = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    chunk_size: int | None = ...,
    num_threads: int | None = ...,
) -> FloatArray: ...
def linear_cross_entropy(
    x: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
    weight: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> FloatScalar | FloatArray:
    """Softmax cross-entropy of the logits ``x @ W.T + b``, without forming them.

    Equal (to rounding) to ``cross_entropy(x @ linear_weight.T + linear_bias,
    target, **options)``, but the ``n x V`` logits never exist: they are
    formed ``chunk_size`` rows at a time in one buffer, by BLAS, and reduced
    to the loss by the fused row kernels.

    Parameters
    ----------
    {linear}
    {options}
    {chunk}

    Returns
    -------
    loss : scalar of x's dtype, or ndarray of shape ``x.shape[:-1]``
        As :func:`fastxent.cross_entropy` returns it.

    Raises
    ------
    TypeError
        For inputs of different dtypes or not float32/float64, float class
        indices, a non-integer ``chunk_size``, ``num_threads`` or
        ``ignore_index``, a bool or string for a numeric option, masked
        arrays and torch tensors that require grad.
    ValueError
        For shape mismatches between ``x``, ``linear_weight``,
        ``linear_bias`` and ``target``, labels outside ``[0, V)``,
        ``chunk_size < 1`` and options out of range.
    ImportError
        Without SciPy, whose BLAS computes the products.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> rng = np.random.default_rng(0)
    >>> x, W = rng.standard_normal((6, 4)), rng.standard_normal((10, 4))
    >>> y = np.array([0, 3, 9, 2, 2, 7])
    >>> loss = fastxent.linear_cross_entropy(x, W, y)
    >>> bool(np.isclose(loss, fastxent.cross_entropy(x @ W.T, y)))
    True
    """
    loss, *_ = _linear_run(
        x,
        linear_weight,
        target,
        linear_bias=linear_bias,
        want_grad=False,
        reduction=reduction,
        weight=weight,
        sample_weight=sample_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        chunk_size=chunk_size,
        num_threads=num_threads,
    )
    result: FloatScalar | FloatArray = loss
    return result


def linear_cross_entropy_with_grad(
    x: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
    weight: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> tuple[FloatScalar | FloatArray, FloatArray, FloatArray, FloatArray | None]:
    """Loss and all gradients of ``CE(x @ W.T + b, target)`` in one chunked pass.

    With ``G`` the gradient of the loss with respect to the logits (as
    :func:`fastxent.cross_entropy_grad` returns it; for ``"none"``, of the
    sum of the per-sample losses) and the rows of ``x`` flattened::

        grad_x = G @ W          grad_W = G.T @ x          grad_b = G.sum(0)

    computed chunk by chunk: no ``n x V`` array is ever held, only a
    ``chunk_size x V`` buffer.

    Parameters
    ----------
    {linear}
    {options}
    {chunk}

    Returns
    -------
    loss : scalar or ndarray
        As :func:`linear_cross_entropy`.
    grad_x : ndarray of x's shape and dtype
        The gradient with respect to ``x``.
    grad_linear_weight : ndarray of shape (V, d)
        The gradient with respect to ``linear_weight``.
    grad_linear_bias : ndarray of shape (V,), or None without ``linear_bias``
        The gradient with respect to ``linear_bias``.

    Raises
    ------
    TypeError, ValueError, ImportError
        As in :func:`linear_cross_entropy`.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> rng = np.random.default_rng(0)
    >>> x, W, b = rng.standard_normal((6, 4)), rng.standard_normal((10, 4)), np.zeros(10)
    >>> y = np.array([0, 3, 9, 2, 2, 7])
    >>> loss, gx, gW, gb = fastxent.linear_cross_entropy_with_grad(x, W, y, linear_bias=b)
    >>> G = fastxent.cross_entropy_grad(x @ W.T, y)
    >>> bool(np.allclose(gx, G @ W) and np.allclose(gW, G.T @ x) and np.allclose(gb, G.sum(0)))
    True
    """
    loss, gx, gW, gb, _, _ = _linear_run(
        x,
        linear_weight,
        target,
        linear_bias=linear_bias,
        want_grad=True,
        reduction=reduction,
        weight=weight,
        sample_weight=sample_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        chunk_size=chunk_size,
        num_threads=num_threads,
    )
    return loss, gx, gW, gb


# The loss options as cross_entropy documents them (num_threads is "chunk"'s).
for _f in (linear_cross_entropy, linear_cross_entropy_with_grad):
    _docs.fill(_f, options="loss_options")
del _f
