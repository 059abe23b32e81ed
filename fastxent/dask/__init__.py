"""fastxent over Dask arrays: the fused cross-entropy on blocks of rows, and a
multinomial logistic regression that fits on a Dask cluster.

Needs the optional ``dask`` extra (``dask[array]`` and ``distributed``)::

    pip install "fastxent[dask]"

``import fastxent`` does not import this module (nor Dask); ``import
fastxent.dask`` or the attribute ``fastxent.dask`` does.
:class:`SoftmaxRegression` also needs scikit-learn and SciPy (the
``sklearn`` extra); it is imported on first use.

Every function takes dask arrays chunked along the rows (the batch axes:
any axis but the last) and returns lazy dask arrays.  Each block of rows
runs fastxent's in-memory kernels, on one thread by default (Dask already
runs one task per core).  A class axis (or feature axis) split over chunks
is rechunked to one chunk, with a :class:`dask.array.PerformanceWarning`.
NumPy inputs are accepted too (a NumPy target or sample weight is cut to
the logits' row chunks).

Reductions are exact to float64 rounding and independent of the scheduler:

* ``"mean"`` is the global mean: the blocks' (loss sum, denominator) pairs
  are summed in a fixed tree (``Array.sum(split_every=8)``, a tree set by the
  number of blocks alone, each node adding its children in block order), so
  the result has the same bits under the synchronous, threaded and
  distributed schedulers, and equals the in-memory result to ~1e-15
  relative.
* The gradient of every block is divided by the *global* denominator
  ``sum_i s_i w[y_i]``, summed first by a pass over the targets and weights
  only (never the logits), which also checks every label; it reaches the
  gradient tasks as a dependency of the graph, never through the client.
* Only per-block sums (and, for the fused linear head, the ``V x d`` weight
  gradient of each block) travel: the row logsumexps and the gradient
  blocks stay where they are computed.

Shapes, dtypes, chunk alignment and option values are checked when the
graph is built, before anything is sent to a scheduler; labels outside
``[0, m)`` and non-finite weights raise cross_entropy's own errors (the
position is in the whole target) when the first pass runs, before any
logits block is touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from numpy.typing import ArrayLike

from .._extras import missing

try:
    import dask.array as da
except ImportError as e:
    raise missing("fastxent.dask", "Dask (dask[array])", "dask", e) from e

from . import _loss as _dask_loss
from ._logprob import distillation_loss_with_grad, token_logprobs

if TYPE_CHECKING:
    from ._estimator import SoftmaxRegression
from .. import _docs

__all__ = [
    "SoftmaxRegression",
    "cross_entropy",
    "cross_entropy_with_grad",
    "distillation_loss_with_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "token_logprobs",
]


def __getattr__(name: str) -> object:
    # SoftmaxRegression needs scikit-learn and SciPy: imported on first use.
    if name == "SoftmaxRegression":
        from ._estimator import SoftmaxRegression

        return SoftmaxRegression
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cross_entropy(
    logits: Any,
    target: Any,
    *,
    reduction: str = "mean",
    weight: ArrayLike | None = None,
    sample_weight: Any = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    num_threads: int | None = 1,
) -> da.Array:
    """Softmax cross-entropy of a dask array of logits (lazy).

    The loss of :func:`fastxent.cross_entropy` with the same arguments,
    computed block by block: each block of rows returns its loss sum and its
    ``"mean"`` denominator (``sum_i s_i w[y_i]`` over its kept rows), and the
    pairs are summed in a fixed tree before one division.

    Parameters
    ----------
    {logits_target}
        Dask arrays chunked along the rows (any axis but the last); the
        target (and ``sample_weight``) with the logits' row chunks, or NumPy
        arrays (cut to those chunks).
    {options}
        Here ``num_threads`` is per block and defaults to 1: Dask runs one
        block per core; ``None`` uses OpenMP's default in every block.

    Returns
    -------
    loss : dask array
        0-d for ``"mean"`` and ``"sum"``, of shape ``logits.shape[:-1]``
        (the logits' row chunks) for ``"none"``; the compute dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`fastxent.cross_entropy`, when the graph is built; and for
        row chunks of the target or sample weights that differ from the
        logits', or unknown chunk sizes.  Labels outside ``[0, m)`` raise
        cross_entropy's ``ValueError`` at compute time.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np, fastxent, fastxent.dask
    >>> rng = np.random.default_rng(0)
    >>> z, y = rng.standard_normal((1000, 10)), rng.integers(0, 10, 1000)
    >>> loss = fastxent.dask.cross_entropy(da.from_array(z, chunks=(300, 10)), y)
    >>> type(loss).__name__, loss.shape, loss.dtype          # lazy: nothing computed yet
    ('Array', (), dtype('float64'))
    >>> with dask.config.set(scheduler="synchronous"):
    ...     bool(np.isclose(loss.compute(), fastxent.cross_entropy(z, y), rtol=1e-14))
    True
    """
    loss, _ = _dask_loss.loss_graph(
        logits,
        target,
        want_grad=False,
        reduction=reduction,
        weight=weight,
        sample_weight=sample_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        num_threads=num_threads,
        stacklevel=2,
    )
    return loss


def cross_entropy_with_grad(
    logits: Any,
    target: Any,
    *,
    reduction: str = "mean",
    weight: ArrayLike | None = None,
    sample_weight: Any = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    num_threads: int | None = 1,
) -> tuple[da.Array, da.Array]:
    """Loss and gradient of softmax cross-entropy over a dask array (lazy).

    What :func:`fastxent.cross_entropy_with_grad` returns for the same
    arguments, from one fused pass over each block.  Under ``"mean"`` every
    block's gradient is divided by the global denominator ``D = sum_i s_i
    w[y_i]`` (``n``, or ``sum_i s_i``, for probabilities): a first pass over
    the targets and weights (not the logits) sums it in a fixed tree and
    checks every label, and it enters the gradient tasks as a dependency.

    Parameters
    ----------
    {logits_target}
        Dask arrays chunked along the rows (any axis but the last); the
        target (and ``sample_weight``) with the logits' row chunks, or NumPy
        arrays (cut to those chunks).
    {options}
        Here ``num_threads`` is per block and defaults to 1: Dask runs one
        block per core; ``None`` uses OpenMP's default in every block.

    Returns
    -------
    loss : dask array
        As :func:`cross_entropy`.
    grad : dask array
        Of the logits' shape, chunks and compute dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`cross_entropy`.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np, fastxent, fastxent.dask
    >>> rng = np.random.default_rng(0)
    >>> z, y = rng.standard_normal((1000, 10)), rng.integers(0, 10, 1000)
    >>> loss, grad = fastxent.dask.cross_entropy_with_grad(da.from_array(z, chunks=(300, 10)), y)
    >>> grad.chunks
    ((300, 300, 300, 100), (10,))
    >>> with dask.config.set(scheduler="synchronous"):
    ...     loss, grad = dask.compute(loss, grad)
    >>> bool(np.allclose(grad, fastxent.cross_entropy_grad(z, y), rtol=1e-14, atol=0))
    True
    """
    loss, grad = _dask_loss.loss_graph(
        logits,
        target,
        want_grad=True,
        reduction=reduction,
        weight=weight,
        sample_weight=sample_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        num_threads=num_threads,
        stacklevel=2,
    )
    assert grad is not None
    return loss, grad


def linear_cross_entropy(
    x: Any,
    linear_weight: Any,
    target: Any,
    *,
    linear_bias: Any = None,
    reduction: str = "mean",
    weight: ArrayLike | None = None,
    sample_weight: Any = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    num_threads: int | None = 1,
) -> da.Array:
    """Softmax cross-entropy of a linear layer's logits, never formed (lazy).

    The logits are ``x @ W.T + b`` of a dask array of rows ``x``.

    Each block of rows runs :func:`fastxent.linear_cross_entropy`; the loss
    is reduced as in :func:`cross_entropy`.

    Parameters
    ----------
    {linear}
        ``x`` is a dask array chunked along its rows; ``linear_weight`` and
        ``linear_bias`` are NumPy arrays or dask arrays (made one chunk):
        one task that every block depends on.
    {options}
    chunk_size, num_threads : int, optional
        As :func:`fastxent.linear_cross_entropy`, within each block;
        ``num_threads`` defaults to 1 (Dask runs one block per core).

    Returns
    -------
    loss : dask array
        As :func:`cross_entropy`, of x's dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`fastxent.linear_cross_entropy` and :func:`cross_entropy`.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np, fastxent, fastxent.dask
    >>> rng = np.random.default_rng(0)
    >>> x, W = rng.standard_normal((900, 4)), rng.standard_normal((10, 4))
    >>> y = rng.integers(0, 10, 900)
    >>> loss = fastxent.dask.linear_cross_entropy(da.from_array(x, chunks=(300, 4)), W, y)
    >>> with dask.config.set(scheduler="synchronous"):
    ...     bool(np.isclose(loss.compute(), fastxent.linear_cross_entropy(x, W, y), rtol=1e-12))
    True
    """
    loss, *_ = _dask_loss.linear_graph(
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
        stacklevel=2,
    )
    return loss


def linear_cross_entropy_with_grad(
    x: Any,
    linear_weight: Any,
    target: Any,
    *,
    linear_bias: Any = None,
    reduction: str = "mean",
    weight: ArrayLike | None = None,
    sample_weight: Any = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    num_threads: int | None = 1,
) -> tuple[da.Array, da.Array, da.Array, da.Array | None]:
    """Loss and gradients of the fused linear cross-entropy (lazy).

    Over a dask array of rows.

    Each block of rows runs :func:`fastxent.linear_cross_entropy_with_grad`
    with its gradients divided by the global ``"mean"`` denominator; with
    ``G`` the gradient with respect to the logits,

        grad_x = G @ W                  one block per block of x
        grad_W = sum_blocks G_b.T @ x_b  (V, d), summed over blocks in a fixed tree
        grad_b = sum_blocks G_b.sum(0)   (V,), likewise

    The block sums of ``grad_W`` and ``grad_b`` are accumulated in float64
    and rounded to x's dtype once.

    Parameters
    ----------
    {linear}
        ``x`` is a dask array chunked along its rows; ``linear_weight`` and
        ``linear_bias`` are NumPy arrays or dask arrays (made one chunk):
        one task that every block depends on.
    {options}
    chunk_size, num_threads : int, optional
        As :func:`fastxent.linear_cross_entropy`, within each block;
        ``num_threads`` defaults to 1 (Dask runs one block per core).

    Returns
    -------
    loss : dask array
        As :func:`cross_entropy`.
    grad_x : dask array
        Of x's shape, row chunks and dtype.
    grad_linear_weight : dask array of shape (V, d)
        The gradient with respect to ``linear_weight``.
    grad_linear_bias : dask array of shape (V,), or None without ``linear_bias``
        The gradient with respect to ``linear_bias``.

    Raises
    ------
    TypeError, ValueError
        As :func:`linear_cross_entropy`.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np, fastxent, fastxent.dask
    >>> rng = np.random.default_rng(0)
    >>> x, W = rng.standard_normal((900, 4)), rng.standard_normal((10, 4))
    >>> y = rng.integers(0, 10, 900)
    >>> out = fastxent.dask.linear_cross_entropy_with_grad(da.from_array(x, chunks=(300, 4)), W, y)
    >>> with dask.config.set(scheduler="synchronous"):
    ...     loss, gx, gW, gb = dask.compute(*out)
    >>> want = fastxent.linear_cross_entropy_with_grad(x, W, y)
    >>> bool(np.allclose(gW, want[2], rtol=1e-12, atol=1e-15)), gb is None
    (True, True)
    """
    return _dask_loss.linear_graph(
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
        stacklevel=2,
    )


for _f, _opts in (
    (cross_entropy, "dask_options"),
    (cross_entropy_with_grad, "dask_options"),
    (linear_cross_entropy, "loss_options"),
    (linear_cross_entropy_with_grad, "loss_options"),
):
    _docs.fill(_f, options=_opts)
del _f, _opts
