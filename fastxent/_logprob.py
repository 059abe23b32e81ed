"""Per-token log-probabilities and entropies of softmax rows, their VJP, and
the same fused with a linear head (``x @ W.T + b`` in row chunks).

The kernels (``_kernels_logprob.pxi``, ``_logprob_t.h``) compute, for each
row ``z`` (soft-capped when ``softcap`` is set), ``u = z / T``,
``logp = log_softmax(u)``, ``logp[y]`` and ``-sum p logp`` in one pass over
the row, and the gradient of ``gl logp[y] + ge entropy`` in a second;
what the sums mean is ``_options.h``'s (``fx_finish_logprob_row``).
float16 and bfloat16 logits are computed in a float32 copy of the whole
array (its memory: twice the logits').
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _axis, _kernels, _linear
from . import _validation as v
from ._spec import NO_IGNORE
from ._typing import FloatArray

__all__ = [
    "linear_token_logprobs",
    "linear_token_logprobs_vjp",
    "token_logprobs",
    "token_logprobs_vjp",
]


def temperature_option(value: Any, dtype: np.dtype[Any]) -> float:
    """``T`` finite and > 0, with ``1 / T`` finite in the compute dtype."""
    if type(value) is float and value == 1.0:
        return value
    t = v.float_option(value, "temperature", 0.0, low_open=True)
    if 1.0 / t > float(np.finfo(dtype).max):
        raise ValueError(
            f"temperature must be at least {1.0 / float(np.finfo(dtype).max):.3g} for {dtype} "
            f"logits (1 / temperature must be finite there); got {value!r}."
        )
    return t


def float32_copy(z: NDArray[Any], io: np.dtype[Any]) -> NDArray[np.float32]:
    """The float32 copy that float16/bfloat16 logits (``z``: their bits as
    uint16, C-contiguous) are computed in."""
    return np.ascontiguousarray(z.view(io).astype(np.float32))


def labels_only(
    target: ArrayLike, shape: tuple[int, ...], dtype: np.dtype[Any], ignore_index: Any, what: str
) -> tuple[NDArray[np.int64], int]:
    """Class indices of shape ``shape[:-1]`` as int64 (every one in
    ``[0, m)`` or ``ignore_index``) and ``ignore_index``."""
    t = v.as_array(target, "target")
    if t.shape == shape and t.dtype.kind not in "iu":
        raise ValueError(
            f"{what} takes class indices of shape {shape[:-1]} (one label per row), not class "
            f"probabilities of the logits' shape {shape}."
        )
    kind, labels = v.as_labels_or_probs(target, shape, dtype)
    checked = v.ignore_index(ignore_index, kind)
    # None: no label is ignored (the kernels' "off" value, which no label
    # may then equal).
    ignore = NO_IGNORE if checked is None else checked
    hit = labels == NO_IGNORE if checked is None and labels.dtype == np.int64 else None
    if hit is not None and hit.any():
        bad = int(np.argmax(hit))
    else:
        bad, _ = _kernels.mean_denominator(labels, None, None, ignore, shape[-1])
    if bad >= 0:
        raise v.LabelError(int(labels[bad]), bad, shape[-1], checked)
    return labels.astype(np.int64, copy=False), ignore


def row_vector(
    value: ArrayLike | None, name: str, batch: tuple[int, ...]
) -> NDArray[np.float64] | None:
    """An upstream gradient of shape ``batch`` (one value per row) as a
    contiguous float64 vector; None stays None."""
    if value is None:
        return None
    a = v.as_array(value, name)
    if a.dtype.kind not in "fiu" and not v.half_kind(a.dtype):
        raise TypeError(f"{name} must be an array of real numbers; got dtype={a.dtype}.")
    if a.shape != batch:
        raise ValueError(
            f"{name} must have shape {batch} (one value per row: the target's shape); "
            f"got shape {a.shape}."
        )
    return np.ascontiguousarray(a, dtype=np.float64).reshape(-1)


def _logits(
    logits: ArrayLike,
) -> tuple[NDArray[Any], tuple[int, ...], np.dtype[Any], np.dtype[Any]]:
    """``(z2d, shape, dtype, io)``: the rows in the compute dtype (a float32
    copy for half precision) and the dtype gradients are returned in."""
    z, shape, dtype, half = v.as_logits(logits)
    io = np.asarray(logits).dtype if half else dtype
    if half:
        z = float32_copy(z, io)
    return z, shape, dtype, io


class GradOut:
    """Where a gradient of logits ``z`` (n, m) goes: the caller's ``out``
    (checked), or a new array; for float16/bfloat16 (``io`` is not the
    compute dtype) a float32 buffer converted at the end."""

    def __init__(
        self, out: Any, shape: tuple[int, ...], z: NDArray[Any], dtype: Any, io: Any
    ) -> None:
        self.out, self.shape, self.io = out, shape, io
        self.half = io != dtype
        self.o = None if out is None else v.check_out(out, shape, io)
        self.buffer: NDArray[Any] = (
            self.o if self.o is not None and not self.half else np.empty(z.shape, dtype=dtype)
        )

    def detach(self, a: NDArray[Any]) -> NDArray[Any]:
        """``a`` (an input), copied if it overlaps ``out`` without being it."""
        return a if self.o is None or self.half else v.detach_from(a, self.o)

    def result(self, moved: Any, dest: Any) -> FloatArray:
        g = self.buffer
        if self.half:
            if self.o is not None:
                self.o[...] = g
                g = self.o
            else:
                g = g.astype(self.io)
        grad: FloatArray = self.out if self.out is not None else g.reshape(self.shape)
        if moved is not None and dest is not None:
            grad = moved.put_back(grad, dest)
        return grad


def token_logprobs(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
    axis: int = -1,
    num_threads: int | None = None,
) -> FloatArray | tuple[FloatArray, FloatArray]:
    """Log-probability of each row's target class, and optionally the row's entropy.

    For a row ``z`` (``softcap * tanh(z / softcap)`` when ``softcap`` is
    set), ``u = z / temperature``, ``p = softmax(u)`` and
    ``logp = log_softmax(u)``::

        logprobs_i = logp_i[y_i] = u_{i, y_i} - logsumexp(u_i)
        entropy_i  = -sum_j p_ij logp_ij

    both 0 at rows whose target is ``ignore_index``.  One pass over each
    row computes both (the entropy adds one product a class); nothing of
    the logits' size is allocated (float16/bfloat16 logits: a float32 copy).

    Parameters
    ----------
    {logits}
    {target}
    {lp_options}
    return_entropy : bool, default False
        Also return each row's entropy.
    {axis}
    {num_threads}

    Returns
    -------
    logprobs : ndarray of the target's shape, in the compute dtype
        A NumPy scalar for 1-d logits.
    entropy : ndarray of the target's shape, in the compute dtype
        Only with ``return_entropy=True``.

    Raises
    ------
    TypeError
        For non-numeric logits, float or non-integer targets, a bool or
        string for a numeric option, masked arrays and torch tensors that
        require grad.
    ValueError
        For a target of the wrong shape (or class probabilities), labels
        outside ``[0, m)``, ``temperature`` or ``softcap`` not finite and
        positive.

    See Also
    --------
    token_logprobs_vjp : The gradient with respect to the logits.
    fastxent.log_softmax : Every class's log-probability.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> z = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    >>> fastxent.token_logprobs(z, [0, 2]).round(4)
    array([-0.2413, -1.0986])
    >>> lp, ent = fastxent.token_logprobs(z, [0, -100], return_entropy=True, temperature=2.0)
    >>> lp.round(4), ent.round(4)
    (array([-0.528,  0.   ]), array([0.9343, 0.    ]))
    """
    if not _axis.is_last(axis):
        moved = _axis.class_axis(logits, axis)
        if moved is not None:
            logits, target = moved.z, moved.target(target)
    z, shape, dtype, _ = _logits(logits)
    labels, ignore = labels_only(target, shape, dtype, ignore_index, "token_logprobs")
    cap = v.softcap(softcap, dtype)
    temp = temperature_option(temperature, dtype)
    if not isinstance(return_entropy, (bool, np.bool_)):
        raise TypeError(f"return_entropy must be a bool; got {return_entropy!r}.")
    nt = v.resolve_threads(num_threads, z.size)
    n = z.shape[0]
    lp = np.empty(n, dtype=np.float64)
    ent = np.empty(n, dtype=np.float64) if return_entropy else None
    _kernels.token_logprob_rows(z, labels, ignore, cap, temp, lp, ent, None, None, None, nt)
    lp_out: FloatArray = lp.astype(dtype, copy=False).reshape(shape[:-1])[()]
    if ent is None:
        return lp_out
    ent_out: FloatArray = ent.astype(dtype, copy=False).reshape(shape[:-1])[()]
    return lp_out, ent_out


def token_logprobs_vjp(
    logits: ArrayLike,
    target: ArrayLike,
    grad_logprobs: ArrayLike,
    grad_entropy: ArrayLike | None = None,
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    axis: int = -1,
    out: FloatArray | None = None,
    num_threads: int | None = None,
) -> FloatArray:
    """Gradient with respect to the logits of ``sum_i gl_i logprobs_i + ge_i entropy_i``.

    With ``logprobs`` and ``entropy`` as :func:`token_logprobs` defines them
    (``u = z / T``, ``p = softmax(u)``), ``gl = grad_logprobs`` and
    ``ge = grad_entropy`` (0 when None), each row's gradient is::

        d/du_k = gl [k = y] - p_k (gl + ge (logp_k + entropy))
        d/dz_k = d/du_k / T * (1 - tanh(z_k / softcap)**2 when softcap is set)

    computed in one pass (the row's sums, then the gradient written while
    the row is in cache); ignored rows get 0.  The entropy's gradient is
    the term ``-ge p_k (logp_k + entropy)``: pass ``grad_logprobs`` zeros
    to get it alone.

    Parameters
    ----------
    {logits}
    {target}
    grad_logprobs : array_like of the target's shape
        The upstream gradient of the log-probabilities.
    grad_entropy : array_like of the target's shape, optional
        The upstream gradient of the entropies; None: 0.
    {lp_options}
    {axis}
    out : ndarray, optional
        C-contiguous, writeable, of the logits' shape and dtype (the
        compute dtype; float16/bfloat16 stay in it); ``out=logits`` works
        in place.
    {num_threads}

    Returns
    -------
    grad : ndarray of the logits' shape
        ``out`` when given.

    Raises
    ------
    TypeError, ValueError
        As in :func:`token_logprobs`, and for upstream gradients that are
        not real arrays of the target's shape, or an ``out`` of the wrong
        shape, dtype or layout.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> z = np.array([[2.0, 0.5, -1.0]])
    >>> fastxent.token_logprobs_vjp(z, [0], np.ones(1)).round(4)  # onehot(y) - p
    array([[ 0.2144, -0.1753, -0.0391]])
    >>> g = fastxent.token_logprobs_vjp(z, [0], np.zeros(1), np.ones(1))  # entropy's gradient
    >>> bool(abs(g.sum()) < 1e-12)
    True
    """
    moved, dest = None, None
    if not _axis.is_last(axis):
        moved = _axis.class_axis(logits, axis)
        if moved is not None:
            dest = moved.output(out, _axis.output_dtype(moved.z))
            logits, target, out = moved.z, moved.target(target), None
    z, shape, dtype, io = _logits(logits)
    labels, ignore = labels_only(target, shape, dtype, ignore_index, "token_logprobs_vjp")
    gl = row_vector(grad_logprobs, "grad_logprobs", shape[:-1])
    ge = row_vector(grad_entropy, "grad_entropy", shape[:-1])
    cap = v.softcap(softcap, dtype)
    temp = temperature_option(temperature, dtype)
    nt = v.resolve_threads(num_threads, z.size)
    g = GradOut(out, shape, z, dtype, io)
    z = g.detach(z)
    lp = np.empty(z.shape[0], dtype=np.float64)
    _kernels.token_logprob_rows(z, labels, ignore, cap, temp, lp, None, gl, ge, g.buffer, nt)
    return g.result(moved, dest)


def _linear_logprob_run(
    x: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    grad_logprobs: ArrayLike | None,
    grad_entropy: ArrayLike | None,
    *,
    want_grad: bool,
    return_entropy: bool,
    linear_bias: ArrayLike | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int,
    chunk_size: Any,
    num_threads: int | None,
) -> tuple[Any, ...]:
    x2, W, b, x_shape, dtype, io = _linear._check_inputs(x, linear_weight, linear_bias)
    n, d = x2.shape
    V = W.shape[0]
    batch = x_shape[:-1]
    name = "linear_token_logprobs_vjp" if want_grad else "linear_token_logprobs"
    labels, ignore = labels_only(target, batch + (V,), dtype, ignore_index, name)
    gl = row_vector(grad_logprobs, "grad_logprobs", batch)
    ge = row_vector(grad_entropy, "grad_entropy", batch)
    cap = v.softcap(softcap, dtype)
    temp = temperature_option(temperature, dtype)
    r = _linear._chunk_size(chunk_size, n, V, d, dtype.itemsize)
    # As in the fused linear cross-entropy: the row kernels on the calling
    # thread unless asked, next to BLAS's threads.
    nt = v.resolve_threads(num_threads, n * V) if num_threads is not None else 1
    lp = np.empty(n, dtype=np.float64)
    ent = np.empty(n, dtype=np.float64) if return_entropy else None
    gx = gW = gb = None
    if want_grad:
        gx = np.empty((n, d), dtype=dtype)
        gW = np.zeros((V, d), dtype=dtype)
        gb = np.zeros(V, dtype=np.float64) if b is not None else None
    if n:
        buf = np.empty((r, V), dtype=dtype)
        _kernels.linear_logprob_chunks(
            x2, W, b, labels, ignore, cap, temp, lp, ent, gl, ge, buf, gx, gW, gb,
            _linear._gemm_capsule(dtype.char), nt,
        )  # fmt: skip
        del buf
    if want_grad:
        assert gx is not None and gW is not None
        return (
            gx.reshape(x_shape).astype(io, copy=False),
            gW.astype(io, copy=False),
            None if gb is None else gb.astype(io),
        )
    lp_out = lp.astype(dtype, copy=False).reshape(batch)[()]
    if ent is None:
        return (lp_out,)
    return lp_out, ent.astype(dtype, copy=False).reshape(batch)[()]


def linear_token_logprobs(
    x: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    *,
    linear_bias: ArrayLike | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    return_entropy: bool = False,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> FloatArray | tuple[FloatArray, FloatArray]:
    """:func:`token_logprobs` of the logits ``x @ W.T + b``, without forming them.

    Equal (to rounding) to ``token_logprobs(x @ linear_weight.T +
    linear_bias, target, ...)``, but the ``n x V`` logits never exist: they
    are formed ``chunk_size`` rows at a time in one buffer by SciPy's BLAS
    (one GEMM a chunk) and reduced there.

    Parameters
    ----------
    {head}
    {lin_target}
    linear_bias : array_like of shape (V,), optional
        The bias ``b``, of x's dtype.
    {lp_options}
    return_entropy : bool, default False
        Also return each row's entropy.
    {chunk}

    Returns
    -------
    logprobs : ndarray of shape ``x.shape[:-1]``
        ``log p[y]`` of each row of ``x @ W.T + b``, 0 at ignored rows.
    entropy : ndarray of shape ``x.shape[:-1]``
        Each row's entropy; only with ``return_entropy=True``.

    Raises
    ------
    TypeError, ValueError
        As in :func:`token_logprobs` and :func:`fastxent.linear_cross_entropy`.
    ImportError
        Without SciPy, whose BLAS computes the products.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> rng = np.random.default_rng(0)
    >>> x, W = rng.standard_normal((6, 4)), rng.standard_normal((10, 4))
    >>> y = np.array([0, 3, 9, 2, 2, 7])
    >>> lp = fastxent.linear_token_logprobs(x, W, y)
    >>> bool(np.allclose(lp, fastxent.token_logprobs(x @ W.T, y)))
    True
    """
    if not isinstance(return_entropy, (bool, np.bool_)):
        raise TypeError(f"return_entropy must be a bool; got {return_entropy!r}.")
    res = _linear_logprob_run(
        x, linear_weight, target, None, None, want_grad=False, return_entropy=bool(return_entropy),
        linear_bias=linear_bias, temperature=temperature, softcap=softcap,
        ignore_index=ignore_index, chunk_size=chunk_size, num_threads=num_threads,
    )  # fmt: skip
    return res[0] if len(res) == 1 else (res[0], res[1])


def linear_token_logprobs_vjp(
    x: ArrayLike,
    linear_weight: ArrayLike,
    target: ArrayLike,
    grad_logprobs: ArrayLike,
    grad_entropy: ArrayLike | None = None,
    *,
    linear_bias: ArrayLike | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Gradients of ``sum_i gl_i logprobs_i + ge_i entropy_i`` of ``x @ W.T + b``.

    With ``G`` the gradient :func:`token_logprobs_vjp` gives for the logits
    ``x @ W.T + b`` and the rows of ``x`` flattened::

        grad_x = G @ W          grad_W = G.T @ x          grad_b = G.sum(0)

    computed chunk by chunk (three GEMMs a chunk: the logits, ``grad_x``
    and ``grad_W``); no ``n x V`` array is held.

    Parameters
    ----------
    {head}
    {lin_target}
    grad_logprobs : array_like of shape ``x.shape[:-1]``
        The upstream gradient of the log-probabilities.
    grad_entropy : array_like of shape ``x.shape[:-1]``, optional
        The upstream gradient of the entropies; None: 0.
    linear_bias : array_like of shape (V,), optional
        The bias ``b``, of x's dtype.
    {lp_options}
    {chunk}

    Returns
    -------
    grad_x : ndarray of x's shape and dtype
        The gradient with respect to ``x``.
    grad_linear_weight : ndarray of shape (V, d)
        The gradient with respect to ``linear_weight``.
    grad_linear_bias : ndarray of shape (V,), or None without ``linear_bias``
        The gradient with respect to ``linear_bias``.

    Raises
    ------
    TypeError, ValueError, ImportError
        As in :func:`linear_token_logprobs` and :func:`token_logprobs_vjp`.

    Examples
    --------
    >>> import numpy as np, fastxent
    >>> rng = np.random.default_rng(0)
    >>> x, W = rng.standard_normal((6, 4)), rng.standard_normal((10, 4))
    >>> y, gl = np.array([0, 3, 9, 2, 2, 7]), np.ones(6)
    >>> gx, gW, gb = fastxent.linear_token_logprobs_vjp(x, W, y, gl)
    >>> G = fastxent.token_logprobs_vjp(x @ W.T, y, gl)
    >>> bool(np.allclose(gx, G @ W) and np.allclose(gW, G.T @ x)), gb is None
    (True, True)
    """
    gx, gW, gb = _linear_logprob_run(
        x, linear_weight, target, grad_logprobs, grad_entropy, want_grad=True,
        return_entropy=False, linear_bias=linear_bias, temperature=temperature,
        softcap=softcap, ignore_index=ignore_index, chunk_size=chunk_size,
        num_threads=num_threads,
    )  # fmt: skip
    return gx, gW, gb


_DOC = {
    "logits": """
    logits : array_like of shape (..., m)
        Classes on the last axis (or on ``axis``).  float32 and float64 are
        computed natively, float16 and bfloat16 in float32, integers in
        float64.""",
    "target": """
    target : array_like of int, shape ``logits.shape[:-1]``
        Class indices in ``[0, m)``, or ``ignore_index``.""",
    "lp_options": """
    temperature : float > 0, default 1.0
        Divides the (soft-capped) logits before the softmax.
    softcap : float > 0, optional
        Soft-caps the logits as ``softcap * tanh(logits / softcap)`` first.
    ignore_index : int, default -100
        Rows whose target equals it get 0.""",
    "axis": """
    axis : int, default -1
        The class axis, as in :func:`fastxent.cross_entropy` (classes off
        the last axis are computed in a contiguous copy).""",
    "num_threads": """
    num_threads : int >= 1, optional
        ``None`` uses OpenMP's default, as :func:`fastxent.cross_entropy`.
        The results are the same bits at every thread count.""",
    "head": """
    x : array_like of shape (..., d)
        Features, float32 or float64 (float16/bfloat16 computed in float32).
    linear_weight : array_like of shape (V, d)
        The head ``W`` (PyTorch's ``F.linear`` convention), of x's dtype.""",
    "lin_target": """
    target : array_like of int, shape ``x.shape[:-1]``
        Class indices in ``[0, V)``, or ``ignore_index``.""",
    "chunk": _linear._CHUNK_DOC,
}

for _f in (token_logprobs, token_logprobs_vjp, linear_token_logprobs, linear_token_logprobs_vjp):
    if _f.__doc__:  # None under python -OO
        for _key, _text in _DOC.items():
            _f.__doc__ = _f.__doc__.replace(f"    {{{_key}}}", _text.strip("\n"))
del _f, _key, _text
