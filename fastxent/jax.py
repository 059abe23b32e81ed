"""fastxent from JAX: differentiable, usable under ``jit``, ``grad`` and ``vmap``.

:func:`cross_entropy` and :func:`linear_cross_entropy` take JAX arrays with
optax's convention (classes on the last axis) and run fastxent's fused CPU
kernels in a host callback wrapped in ``jax.custom_vjp``: with JAX >= 0.7,
``jax.experimental.buffer_callback``, whose kernels read XLA's input buffers
and write their results straight into XLA's output buffers; with older JAX,
``jax.pure_callback``, which copies the results:

* the forward of a differentiated call computes the loss and the gradient
  in one fused pass and keeps the gradient as the residual; the backward
  multiplies it by the upstream cotangent (per sample under
  ``reduction="none"``).  An undifferentiated call computes the loss only;
* under ``jax.vmap`` the callback runs once per batch element
  (``vmap_method="sequential"``), so a ``"mean"`` is the mean of each
  element's own rows;
* float32 and float64 (the latter with ``jax_enable_x64``) are computed
  natively, float16 and bfloat16 in float32.

The backward scales the saved gradient in place in its own buffer, and
not at all when the cotangent is 1.  Bad labels are found while the
callback runs, and are reported as the runtime error that JAX raises for a
failed callback, with fastxent's message in it; shapes and options are
checked when the function is traced.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

if importlib.util.find_spec("jax") is None:  # pragma: no cover - depends on the environment
    raise ImportError('fastxent.jax needs JAX: pip install "fastxent[jax]" (or pip install jax).')
import jax
import jax.numpy as jnp

from . import _docs
from . import _validation as v
from ._linear import _linear_run
from ._loss import cross_entropy as _np_cross_entropy
from ._loss import cross_entropy_with_grad as _np_cross_entropy_with_grad

__all__ = ["cross_entropy", "linear_cross_entropy"]

_VMAP = "sequential"


def _check_common(reduction: object, name: str, a: Any) -> str:
    if reduction not in v.REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}.")
    dt = np.dtype(a.dtype)
    if dt.kind != "f" and not v.half_kind(dt):
        raise TypeError(
            f"{name} must be a floating array (float32, float64; float16 and bfloat16 are "
            f"computed in float32); got dtype={dt}."
        )
    if a.ndim == 0:
        raise ValueError(f"{name} must have shape (..., classes); got a 0-d array.")
    return str(reduction)


def _check_labels(labels: Any, shape: tuple[int, ...]) -> bool:
    """True for probabilities (``shape``), False for class indices."""
    dt = np.dtype(labels.dtype)
    if dt.kind == "f" or v.half_kind(dt):
        if tuple(labels.shape) != shape:
            raise ValueError(
                f"probability labels must have the logits' shape {shape}; "
                f"got {tuple(labels.shape)}."
            )
        return True
    if dt.kind not in "iu":
        raise TypeError(f"labels must be integer class indices or probabilities; got {dt}.")
    if tuple(labels.shape) != shape[:-1]:
        raise ValueError(
            f"class-index labels must have shape {shape[:-1]} (the logits' shape without "
            f"the class axis); got {tuple(labels.shape)}."
        )
    return False


def _check_weights(weight: Any, sample_weight: Any, m: int, batch: tuple[int, ...]) -> None:
    if weight is not None and tuple(jnp.shape(weight)) != (m,):
        raise ValueError(f"weight must have shape ({m},), one per class; got {jnp.shape(weight)}.")
    if sample_weight is not None and tuple(jnp.shape(sample_weight)) != batch:
        raise ValueError(
            f"sample_weight must have the batch shape {batch}; got {jnp.shape(sample_weight)}."
        )


def _struct(shape: tuple[int, ...], dtype: Any) -> Any:
    return jax.ShapeDtypeStruct(shape, dtype)  # type: ignore[no-untyped-call]


def _loss_shape(reduction: str, batch: tuple[int, ...], dtype: Any) -> Any:
    return _struct(batch if reduction == "none" else (), dtype)


def _upstream(g: Any, reduction: str, extra: int = 1) -> Any:
    # "none": one cotangent per sample, broadcast along the classes.
    return g.reshape(g.shape + (1,) * extra) if reduction == "none" else g


_buffer_callback: Any
try:  # JAX >= 0.7: a callback that writes into XLA's own output buffers
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # pragma: no cover - older JAX: pure_callback, which copies the results
    _buffer_callback = None

_MADV_HUGEPAGE = 14
_HUGE_ABOVE = 4 << 20


@functools.lru_cache(maxsize=1)
def _madvise() -> Any:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - an unusual libc
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn


def _advise_huge_pages(a: np.ndarray[Any, Any]) -> None:
    """Ask Linux to back the whole pages of a large, not yet written output
    buffer with transparent huge pages, as NumPy does for the arrays it
    allocates: XLA's allocator does not, and a gradient the size of the
    logits, written once, would otherwise spend more in first-touch page
    faults than in the kernel.  Advice only: nothing is read or moved."""
    madvise = _madvise() if a.nbytes >= _HUGE_ABOVE else None
    if madvise is not None:
        p = a.__array_interface__["data"][0]
        start, end = (p + 4095) & ~4095, (p + a.nbytes) & ~4095
        madvise(start, end - start, _MADV_HUGEPAGE)


def _call(host: Callable[..., None], shapes: tuple[Any, ...], *args: Any) -> Any:
    """Run ``host(outs, *args)``, which fills the NumPy arrays ``outs`` (one
    per ``shapes``) from the NumPy arrays ``args`` (None stays None), as a
    JAX computation; under ``vmap`` once per batch element."""
    present = [i for i, a in enumerate(args) if a is not None]

    def numpy_args(given: Any) -> list[Any]:
        full: list[Any] = [None] * len(args)
        for i, a in zip(present, given, strict=True):
            full[i] = np.asarray(a)
        return full

    given = [args[i] for i in present]
    if _buffer_callback is not None:

        def in_place(ctx: Any, out: Any, *arrays: Any) -> None:
            host([np.asarray(o) for o in out], *numpy_args(arrays))

        return _buffer_callback(in_place, shapes, vmap_method=_VMAP)(*given)

    def returning(*arrays: Any) -> tuple[np.ndarray[Any, Any], ...]:
        outs = [np.empty(sd.shape, sd.dtype) for sd in shapes]
        host(outs, *numpy_args(arrays))
        return tuple(outs)

    return jax.pure_callback(returning, shapes, *given, vmap_method=_VMAP)


def _scaled(g: Any, ct: Any, reduction: str) -> Any:
    """``g`` times the upstream cotangent ``ct`` (one per sample under
    ``"none"``): in place in ``g``'s buffer, which the backward owns, and
    not at all when ``ct`` is 1 (``jax.grad`` of the loss itself)."""
    ct = _upstream(ct, reduction).astype(g.dtype)
    if _buffer_callback is None:  # pragma: no cover - older JAX
        return g * ct

    def scale(ctx: Any, out: Any, g_in: Any, c: Any) -> None:
        c = np.asarray(c)
        if c.size != 1 or c.reshape(()) != 1:
            np.multiply(np.asarray(out), c, out=np.asarray(out))

    return _buffer_callback(
        scale, _struct(g.shape, g.dtype), vmap_method=_VMAP, input_output_aliases={0: 0}
    )(g, ct)


# ---------------------------------------------------------------------------
# cross_entropy


@functools.lru_cache(maxsize=256)
def _cross_entropy_fn(
    reduction: str, ignore_index: int, eps: float, zl: float, cap: float | None
) -> Callable[..., Any]:
    options: dict[str, Any] = dict(
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=eps,
        z_loss=zl,
        softcap=cap,
    )

    def host(outs: list[Any], z: Any, t: Any, w: Any, s: Any) -> None:
        kw = dict(options, weight=w, sample_weight=s)
        if len(outs) == 1:
            outs[0][...] = _np_cross_entropy(z, t, **kw)
            return
        loss, g = outs
        _advise_huge_pages(g)
        loss[...], _ = _np_cross_entropy_with_grad(z, t, out=g, **kw)

    def call(z: Any, t: Any, w: Any, s: Any, grad: bool) -> Any:
        loss = _loss_shape(reduction, z.shape[:-1], z.dtype)
        shapes = (loss, _struct(z.shape, z.dtype)) if grad else (loss,)
        out = _call(host, shapes, z, t, w, s)
        return out if grad else out[0]

    @jax.custom_vjp
    def f(z: Any, t: Any, w: Any, s: Any) -> Any:
        return call(z, t, w, s, False)

    def f_fwd(z: Any, t: Any, w: Any, s: Any) -> Any:
        loss, g = call(z, t, w, s, True)
        return loss, g

    def f_bwd(g: Any, ct: Any) -> Any:
        return (_scaled(g, ct, reduction), None, None, None)

    f.defvjp(f_fwd, f_bwd)
    return f


def cross_entropy(
    logits: Any,
    labels: Any,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    sample_weight: Any = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Any:
    """Softmax cross-entropy of JAX arrays, computed by fastxent's fused kernel.

    With ``p = softmax(z)`` over the last axis, each sample's loss is
    ``w[y] * (logsumexp(z) - z[y])`` (with label smoothing, z-loss and
    soft-capping as :func:`fastxent.cross_entropy` defines them); ``"mean"``
    divides the sum by ``sum w[y]`` over the samples not ignored, so the
    default equals ``optax.softmax_cross_entropy_with_integer_labels(z,
    y).mean()``.  Differentiable with respect to ``logits`` (``jax.grad``
    gets the gradient the forward computed in the same pass), and usable
    under ``jax.jit`` and ``jax.vmap``.

    Parameters
    ----------
    logits : Array of shape (..., m)
        Classes on the last axis; float32 or float64 (float16 and bfloat16
        are computed in float32).
    labels : Array
        Class indices, integers of shape ``logits.shape[:-1]`` in ``[0, m)``
        (or ``ignore_index``); or class probabilities, floats of the logits'
        shape.  No gradient flows to them.
    {jax_options}

    Returns
    -------
    Array
        The loss, of the logits' dtype: a scalar, or of shape
        ``logits.shape[:-1]`` under ``"none"``.

    Raises
    ------
    ValueError, TypeError
        Mismatched shapes, unsupported dtypes, options out of range (when
        traced); labels out of range (when run: inside JAX's runtime error
        for a failed callback).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, fastxent.jax as fxj
    >>> z = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    >>> y = jnp.array([0, 2])
    >>> loss, g = jax.jit(jax.value_and_grad(fxj.cross_entropy))(z, y)
    >>> g.shape
    (2, 3)
    >>> ref = -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], -1).mean()
    >>> bool(jnp.allclose(loss, ref))
    True
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    reduction = _check_common(reduction, "logits", logits)  # type: ignore[assignment]
    shape = tuple(logits.shape)
    _check_labels(labels, shape)
    _check_weights(weight, sample_weight, shape[-1], shape[:-1])
    fn = _cross_entropy_fn(
        reduction,
        int(ignore_index),
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
    )
    return fn(logits, jax.lax.stop_gradient(labels), _const(weight), _const(sample_weight))


def _const(a: Any) -> Any:
    return None if a is None else jax.lax.stop_gradient(jnp.asarray(a))


# ---------------------------------------------------------------------------
# linear_cross_entropy


@functools.lru_cache(maxsize=256)
def _linear_fn(
    reduction: str,
    ignore_index: int,
    eps: float,
    zl: float,
    cap: float | None,
    chunk_size: int | None,
) -> Callable[..., Any]:
    options: dict[str, Any] = dict(
        ignore_index=ignore_index,
        label_smoothing=eps,
        z_loss=zl,
        softcap=cap,
        chunk_size=chunk_size,
        num_threads=None,
    )

    def host(outs: list[Any], x: Any, W: Any, b: Any, t: Any, w: Any, s: Any, ct: Any) -> None:
        grad = len(outs) > 1 or ct is not None
        if ct is not None:  # the backward of "none": the cotangents weight the samples
            ct = ct.astype(np.float64)
            s = ct if s is None else ct * s
        loss, gx, gW, gb, _, _ = _linear_run(
            x,
            W,
            t,
            linear_bias=b,
            want_grad=grad,
            reduction="sum" if ct is not None else reduction,
            weight=w,
            sample_weight=s,
            **options,
        )
        results = [] if ct is not None else [loss]
        if grad:
            results += [gx, gW] if gb is None else [gx, gW, gb]
        for out, r in zip(outs, results, strict=True):
            out[...] = r

    def call(x: Any, W: Any, b: Any, t: Any, w: Any, s: Any, ct: Any, grad: bool) -> Any:
        loss = _loss_shape(reduction, x.shape[:-1], x.dtype)
        grads = tuple(_struct(a.shape, a.dtype) for a in (x, W, b) if a is not None)
        shapes = (loss,) if not grad else grads if ct is not None else (loss, *grads)
        out = _call(host, shapes, x, W, b, t, w, s, ct)
        return out if grad else out[0]

    @jax.custom_vjp
    def f(x: Any, W: Any, b: Any, t: Any, w: Any, s: Any) -> Any:
        return call(x, W, b, t, w, s, None, False)

    def f_fwd(x: Any, W: Any, b: Any, t: Any, w: Any, s: Any) -> Any:
        if reduction == "none":
            # The gradients are computed in the backward, where the
            # per-sample cotangents are known (never the n x V logits).
            return call(x, W, b, t, w, s, None, False), (x, W, b, t, w, s)
        loss, *grads = call(x, W, b, t, w, s, None, True)
        return loss, tuple(grads)

    def f_bwd(res: Any, ct: Any) -> Any:
        if reduction == "none":
            x, W, b, t, w, s = res
            grads = call(x, W, b, t, w, s, ct, True)
        else:
            grads = tuple(g * ct.astype(g.dtype) for g in res)
        gb = grads[2] if len(grads) == 3 else None
        return (grads[0], grads[1], gb, None, None, None)

    f.defvjp(f_fwd, f_bwd)
    return f


def linear_cross_entropy(
    x: Any,
    linear_weight: Any,
    labels: Any,
    *,
    linear_bias: Any = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    sample_weight: Any = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> Any:
    """Cross-entropy of the logits ``x @ linear_weight.T + linear_bias``, never formed whole.

    :func:`cross_entropy` of those logits, computed by
    :func:`fastxent.linear_cross_entropy_with_grad` (the logits exist
    ``chunk_size`` rows at a time).  Differentiable with respect to ``x``,
    ``linear_weight`` and ``linear_bias``: under ``"mean"``/``"sum"`` the
    forward computes all three gradients in the same pass; under ``"none"``
    the backward runs the chunk loop again with the per-sample cotangents.

    Parameters
    ----------
    x : Array of shape (..., d)
        Features, float32 or float64.
    linear_weight : Array of shape (V, d)
        The classifier head (PyTorch's ``F.linear`` convention), of x's dtype.
    labels : Array
        Class indices of shape ``x.shape[:-1]``, or probabilities of shape
        ``x.shape[:-1] + (V,)``.
    linear_bias : Array of shape (V,), optional
        The head's bias, of x's dtype.
    {jax_linear_options}
    chunk_size : int >= 1, optional
        Rows per chunk (see :func:`fastxent.linear_cross_entropy`).

    Returns
    -------
    Array
        The loss, of x's dtype: a scalar, or of shape ``x.shape[:-1]``
        under ``"none"``.

    Raises
    ------
    ValueError, TypeError
        As :func:`cross_entropy`; also mismatched shapes or dtypes of
        ``x``, ``linear_weight`` and ``linear_bias``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, fastxent.jax as fxj
    >>> x = jax.random.normal(jax.random.key(0), (8, 4))
    >>> W = jax.random.normal(jax.random.key(1), (10, 4))
    >>> y = jnp.arange(8)
    >>> gx, gW = jax.grad(fxj.linear_cross_entropy, argnums=(0, 1))(x, W, y)
    >>> gx.shape, gW.shape
    ((8, 4), (10, 4))
    """
    x = jnp.asarray(x)
    W = jnp.asarray(linear_weight)
    b = None if linear_bias is None else jnp.asarray(linear_bias)
    reduction = _check_common(reduction, "x", x)  # type: ignore[assignment]
    if W.ndim != 2 or W.shape[1] != x.shape[-1] or (b is not None and b.shape != W.shape[:1]):
        raise ValueError(
            f"x must have shape (..., d), linear_weight (V, d) and linear_bias (V,); got "
            f"{x.shape}, {W.shape} and {None if b is None else b.shape}."
        )
    if W.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
        raise TypeError(
            f"x, linear_weight and linear_bias must have one dtype; got {x.dtype}, {W.dtype}"
            f" and {None if b is None else b.dtype}."
        )
    batch = tuple(x.shape[:-1])
    _check_labels(labels := jnp.asarray(labels), batch + (W.shape[0],))
    _check_weights(weight, sample_weight, W.shape[0], batch)
    fn = _linear_fn(
        reduction,
        int(ignore_index),
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        None if chunk_size is None else int(chunk_size),
    )
    return fn(x, W, b, jax.lax.stop_gradient(labels), _const(weight), _const(sample_weight))


# The loss options' parameter docs, shared with the other adapter (_docs).
_docs.fill(cross_entropy)
_docs.fill(linear_cross_entropy)
