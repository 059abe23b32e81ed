"""fastxent from PyTorch: differentiable, ``torch.compile``-friendly, zero-copy.

:func:`cross_entropy`, :func:`linear_cross_entropy` and
:class:`CrossEntropyLoss` take CPU tensors with PyTorch's conventions (those
of ``torch.nn.functional.cross_entropy`` and ``linear_cross_entropy``) and
run fastxent's fused kernels on them.  They are built on ``torch.library``
custom operators (``torch.ops.fastxent.cross_entropy``,
``torch.ops.fastxent.linear_cross_entropy`` and
``torch.ops.fastxent.linear_cross_entropy_backward``) with fake kernels and
autograd formulas, so ``torch.compile(fullgraph=True)`` traces code that
calls them without a graph break.

How the data moves:

* Contiguous float32/float64 tensors reach the kernels without a copy
  (``Tensor.numpy()`` shares their memory), and the gradient is written by
  the forward kernel straight into a tensor allocated with ``torch.empty``.
  float16 tensors go through as NumPy float16, bfloat16 tensors as
  ``ml_dtypes.bfloat16`` views of their bits (which needs ``ml_dtypes``);
  both are computed in float32 a block of rows at a time and their gradient
  is written in their own dtype.
* The forward of :func:`cross_entropy` computes the loss and the gradient
  with respect to the logits in one fused pass when the logits require a
  gradient (and grad mode is on); the backward multiplies that saved
  gradient by the upstream gradient: a scalar for ``"mean"``/``"sum"``
  (nothing at all when it is 1, as after ``loss.backward()``), one value
  per sample for ``"none"``.  Under ``torch.no_grad()`` or
  ``torch.inference_mode()`` only the loss is computed.
* Inputs with classes on dim 1 and more than two dims, ``(N, C, d1, ...)``,
  are copied once to put the classes last (the layout of the kernels); so
  are non-contiguous logits.

Errors (a CUDA tensor, a label out of range, mismatched shapes) are raised
as ``ValueError``/``TypeError``/``RuntimeError`` before anything is written.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import numpy as np

if importlib.util.find_spec("torch") is None:  # pragma: no cover - depends on the environment
    raise ImportError(
        'fastxent.torch needs PyTorch: pip install "fastxent[torch]" (or pip install torch).'
    )
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _docs
from . import _validation as v
from ._linear import _linear_run
from ._loss import reduce_total, run_spec
from ._spec import loss_spec

__all__ = ["CrossEntropyLoss", "cross_entropy", "linear_cross_entropy"]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


# ---------------------------------------------------------------------------
# Tensor <-> NumPy, without copies


def _bfloat16() -> np.dtype[Any]:
    try:
        import ml_dtypes
    except ImportError as exc:
        raise ImportError(
            "bfloat16 tensors need ml_dtypes (NumPy has no bfloat16): "
            'pip install "fastxent[ml_dtypes]" (or pip install ml_dtypes).'
        ) from exc
    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype


def _np(t: torch.Tensor) -> np.ndarray[Any, Any]:
    """A NumPy view of a CPU tensor (shared memory; bfloat16 as ml_dtypes')."""
    if t.requires_grad:
        t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bfloat16())
    return t.numpy()


def _torch(a: Any, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``dtype`` from a NumPy array or scalar (no copy when the
    array already has that dtype and is writeable)."""
    a = np.asarray(a)
    # ml_dtypes' bfloat16 is the one non-"f" float kind that comes back
    # (the dtype's name is slow to compute: this runs on every small call).
    if a.dtype.kind != "f":
        if dtype == torch.bfloat16:
            return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
        a = a.astype(np.float32)  # computed in bfloat16, wanted in another dtype
    if not a.flags.writeable:
        a = a.copy()
    t = torch.from_numpy(a)
    return t if t.dtype == dtype else t.to(dtype)


def _empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor, in memory NumPy allocates: NumPy advises
    the kernel to back large buffers with transparent huge pages, torch's
    CPU allocator does not, and a fresh gradient the size of the logits is
    written once, so its first-touch page faults would cost more than the
    kernel (the same reason the NumPy functions are fast when they allocate)."""
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.empty(shape, np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.empty(shape, _NUMPY_FLOATS[dtype]))


_NUMPY_FLOATS = {
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
}


# ---------------------------------------------------------------------------
# Checks shared by the wrappers (before any op runs, so also under compile)


def _check_tensor(name: str, t: object, *, floating: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}.")
    if t.device.type != "cpu":
        raise ValueError(
            f"fastxent runs on the CPU: {name} is on device {t.device}. Move it with "
            f".cpu() first (and the result back with .to({str(t.device)!r}))."
        )
    if floating and t.dtype not in _FLOATS:
        raise TypeError(
            f"{name} must be a float32, float64, float16 or bfloat16 tensor; got dtype={t.dtype}."
        )
    return t


def _check_no_grad(name: str, t: torch.Tensor | None) -> None:
    if t is not None and t.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"fastxent.torch computes no gradient with respect to {name}; it requires "
            f"grad: pass {name}.detach()."
        )


def _check_reduction(reduction: object) -> str:
    if reduction not in v.REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}.")
    return str(reduction)


def _check_target(target: object, batch: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """True for probability targets (the logits' shape), False for labels
    (the batch shape); raises otherwise."""
    t = _check_tensor("target", target, floating=False)
    if t.is_floating_point():
        if tuple(t.shape) != shape:
            raise ValueError(
                f"probability targets must have the input's shape {shape}; got {tuple(t.shape)}."
            )
        return True
    if t.dtype not in _LABEL_DTYPES:
        raise TypeError(f"class-index targets must be an integer tensor; got dtype={t.dtype}.")
    if tuple(t.shape) != batch:
        raise ValueError(
            f"class-index targets must have shape {batch} (the input's shape {shape} "
            f"without its class dim); got {tuple(t.shape)}."
        )
    return False


def _eager(t: torch.Tensor | None) -> bool:
    """A plain tensor of an eager call: not a fake or functional tensor of
    ``torch.compile``/``opcheck`` tracing, whose data are not there."""
    return t is None or (type(t) is torch.Tensor and not torch.compiler.is_compiling())


def _keep_gradients(ctx: Any, grads: tuple[torch.Tensor, ...], inputs: tuple[Any, ...]) -> None:
    """Save what the backward needs: in an eager call, the gradients the
    forward computed, to hand out once without a copy, and the inputs, to
    compute them again should autograd run this backward a second time
    (``retain_graph=True``, ``gradcheck``: the first one gave them away);
    when traced, the gradients as saved tensors (the traced backward is pure)."""
    ctx.traced = not all(_eager(g) for g in grads)
    if ctx.traced:
        ctx.fresh = None
        ctx.save_for_backward(*grads)
    else:
        ctx.fresh = grads
        ctx.save_for_backward(*inputs)


def _is_one(t: torch.Tensor) -> bool:
    return t.numel() == 1 and bool(t.item() == 1.0)


def _scale(gs: tuple[torch.Tensor, ...], upstream: torch.Tensor, owned: bool) -> list[torch.Tensor]:
    """The gradients times the upstream gradient: nothing to do when it is 1
    (``loss.backward()``); in place when the gradients are ours to give away;
    else one multiplication each (traced)."""
    if not owned:
        return [g * upstream for g in gs]
    if not _is_one(upstream):
        for g in gs:
            g.mul_(upstream)
    return list(gs)


# ---------------------------------------------------------------------------
# torch.ops.fastxent.cross_entropy


def _cross_entropy_impl(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    sample_weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, grad)`` of logits ``(n, C)`` with classes last; ``grad`` is
    the gradient of the loss (of the sum of the per-sample losses under
    ``"none"``), or an empty tensor without ``compute_grad``."""
    # The NumPy functions' checks of the logits and their shape are done
    # (by the wrapper, or by the op's schema and fake kernel): validate the
    # target and options into the one spec and run the kernel, which is all
    # a small batch should pay for.
    zn = _np(logits.contiguous())
    z, shape, dtype, half = v.as_logits(zn, "input")
    io = zn.dtype if half else dtype
    spec = loss_spec(
        _np(target),
        shape,
        dtype,
        weight=None if weight is None else _np(weight),
        sample_weight=None if sample_weight is None else _np(sample_weight),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        keep=io if half else None,
    )
    losses, g, total, denom = run_spec(
        spec, z, reduction, compute_grad, io, half, v.resolve_threads(None, z.size)
    )
    if g is None:
        grad = logits.new_empty((0,))
    else:
        # NumPy allocated the gradient (see _empty); the tensor shares it.
        bits = g.view(np.int16) if half else g
        grad = torch.from_numpy(bits) if not half else torch.from_numpy(bits).view(logits.dtype)
    if losses is None:
        loss = reduce_total(total, denom, reduction, dtype)
    else:
        loss = losses.astype(dtype, copy=False)
    return _torch(loss, logits.dtype), grad


@torch.library.custom_op(
    "fastxent::cross_entropy",
    mutates_args=(),
    device_types="cpu",
    schema=(
        "(Tensor logits, Tensor target, Tensor? weight, Tensor? sample_weight, "
        "int ignore_index, str reduction, float label_smoothing, float z_loss, "
        "float? softcap, bool compute_grad) -> (Tensor, Tensor)"
    ),
)
def _cross_entropy_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    sample_weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _cross_entropy_impl(
        logits,
        target,
        weight,
        sample_weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        compute_grad,
    )


@_cross_entropy_op.register_fake
def _(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    sample_weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    loss = logits.new_empty((logits.shape[0],) if reduction == "none" else ())
    grad = logits.new_empty(logits.shape if compute_grad else (0,))
    return loss, grad


def _cross_entropy_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.options = inputs[4:]
    ctx.mark_non_differentiable(output[1])
    # No upstream gradient is ever given for the gradient output: without
    # this, autograd would fill a full-size tensor of zeros for it.
    ctx.set_materialize_grads(False)
    _keep_gradients(ctx, (output[1],), inputs[:4])


def _cross_entropy_backward(
    ctx: Any, grad_loss: torch.Tensor | None, _unused: Any
) -> tuple[Any, ...]:
    if not ctx.options[-1]:
        raise RuntimeError(
            "torch.ops.fastxent.cross_entropy ran with compute_grad=False and cannot be "
            "differentiated: call fastxent.torch.cross_entropy, which asks for the "
            "gradient when the logits require one."
        )
    if grad_loss is None:  # the loss took no part in what is differentiated
        return (None,) * 10
    # "none": one upstream value per sample, broadcast along the classes.
    upstream = grad_loss.unsqueeze(-1) if ctx.options[1] == "none" else grad_loss
    if ctx.traced:
        gs, owned = ctx.saved_tensors, False
    elif ctx.fresh is not None:
        gs, owned, ctx.fresh = ctx.fresh, True, None
    else:
        _, g = torch.ops.fastxent.cross_entropy(*ctx.saved_tensors, *ctx.options)
        gs, owned = (g,), True
    return tuple(_scale(gs, upstream, owned)) + (None,) * 9


_cross_entropy_op.register_autograd(_cross_entropy_backward, setup_context=_cross_entropy_setup)


class _EagerCrossEntropy(torch.autograd.Function):
    """The same forward and backward as the registered operator, for eager
    calls on plain tensors: the dispatcher's round trip through the custom
    operator costs more than the kernel on small batches.  apply() takes
    the four tensors and the options as one tuple, and returns the loss
    alone: autograd's bookkeeping is per argument and per output, a cost
    of its own on small batches."""

    # forward(ctx, ...) rather than a separate setup_context: apply() then
    # binds no signature.
    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        sample_weight: torch.Tensor | None,
        options: tuple[Any, ...],
    ) -> torch.Tensor:
        loss, grad = _cross_entropy_impl(logits, target, weight, sample_weight, *options)
        ctx.options = options
        # _keep_gradients for plain tensors, without its checks for tracing
        ctx.traced, ctx.fresh = False, (grad,)
        ctx.save_for_backward(logits, target, weight, sample_weight)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> Any:
        return _cross_entropy_backward(ctx, grad_loss, None)[:5]


def _plain_eager(*tensors: torch.Tensor | None) -> bool:
    """Whether an eager call on these tensors may skip the dispatcher: plain
    CPU tensors, no compilation, no tracing or other dispatch mode."""
    for t in tensors:  # a loop, not all(<generator>): this runs on every small call
        if t is not None and type(t) is not torch.Tensor:
            return False
    return not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum", "none"] = "mean",
    label_smoothing: float = 0.0,
    sample_weight: torch.Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy of CPU tensors, as ``torch.nn.functional.cross_entropy``.

    With ``p = softmax(z)`` over the classes (dim 1), a class index ``y`` and
    class weights ``w``, each sample's loss is ``w[y] * (logsumexp(z) - z[y])``
    (with label smoothing, z-loss and soft-capping as
    :func:`fastxent.cross_entropy` defines them), and ``"mean"`` divides the
    sum by ``sum w[y]`` over the samples not ignored.  The forward computes
    the gradient ``(p - onehot(y)) * w[y] / denominator`` in the same pass
    when ``input`` requires one; ``backward`` scales it by the upstream
    gradient (per sample under ``"none"``).

    Parameters
    ----------
    input : Tensor of shape (C,), (N, C) or (N, C, d1, ...)
        Logits, classes on dim 1 (dim 0 for 1-d input); a CPU tensor of
        float32 or float64 (no copy when contiguous), float16 or bfloat16
        (computed in float32; bfloat16 needs ``ml_dtypes``).  More than two
        dims, or a non-contiguous layout, cost one copy of the logits.
    target : Tensor
        Class indices, an integer tensor of shape (), (N) or (N, d1, ...)
        with values in ``[0, C)`` or ``ignore_index``; or class
        probabilities, a floating tensor of ``input``'s shape.  No gradient
        flows to ``target``.
    weight : Tensor of shape (C,), optional
        Class weights (no gradient flows to them).
    ignore_index : int, default -100
        Class index that contributes no loss and no gradient.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns one loss per sample, of shape ``target``'s batch
        shape.
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's label smoothing.
    sample_weight : Tensor of the batch shape, optional
        Per-sample weights (fastxent's option; ``"mean"`` divides by
        ``sum s w[y]``).
    z_loss : float >= 0, default 0.0
        Adds ``z_loss * logsumexp(z)**2`` to each sample's loss.
    softcap : float > 0, optional
        Soft-caps the logits as ``softcap * tanh(z / softcap)`` first.

    Returns
    -------
    Tensor
        The loss, of ``input``'s dtype: a scalar, or the per-sample losses
        under ``"none"``.

    Raises
    ------
    ValueError
        A tensor not on the CPU, mismatched shapes, a label out of range,
        options out of range.
    TypeError
        Tensors of unsupported dtypes.
    RuntimeError
        ``target``, ``weight`` or ``sample_weight`` requiring a gradient.

    See Also
    --------
    fastxent.cross_entropy_with_grad : The NumPy function underneath.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    >>> loss = fxt.cross_entropy(z, torch.tensor([0, 2]))
    >>> loss.backward()
    >>> bool(torch.allclose(loss, torch.nn.functional.cross_entropy(z, torch.tensor([0, 2]))))
    True
    >>> z.grad.shape
    torch.Size([2, 3])
    """
    _check_tensor("input", input)
    if input.dim() == 0:
        raise ValueError("input must have shape (C,), (N, C) or (N, C, d1, ...); got a 0-d tensor.")
    reduction = _check_reduction(reduction)  # type: ignore[assignment]
    shape = tuple(input.shape)
    cdim = 0 if input.dim() == 1 else 1
    C = shape[cdim]
    batch = shape[:cdim] + shape[cdim + 1 :]
    probs = _check_target(target, batch, shape)
    for name, t in (("weight", weight), ("sample_weight", sample_weight)):
        if t is not None:
            _check_tensor(name, t)
    if weight is not None and tuple(weight.shape) != (C,):
        raise ValueError(
            f"weight must have shape ({C},), one per class; got {tuple(weight.shape)}."
        )
    if sample_weight is not None and tuple(sample_weight.shape) != batch:
        raise ValueError(
            f"sample_weight must have the batch shape {batch}; got {tuple(sample_weight.shape)}."
        )
    _check_no_grad("target", target)
    _check_no_grad("weight", weight)
    _check_no_grad("sample_weight", sample_weight)

    # Classes last, rows flattened: a view of (N, C) and (C,) inputs, one copy
    # of (N, C, d1, ...) inputs (movedim, then the reshape copies).
    z, t, sw = input, target, sample_weight
    if input.dim() != 2:
        z = input.movedim(cdim, -1).reshape(-1, C)
        t = target.movedim(cdim, -1).reshape(-1, C) if probs else target.reshape(-1)
        sw = None if sample_weight is None else sample_weight.reshape(-1)
    compute_grad = input.requires_grad and torch.is_grad_enabled()
    args = (
        z.contiguous(),
        t,
        weight,
        sw,
        int(ignore_index),
        reduction,
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        compute_grad,
    )
    if not _plain_eager(input, target, weight, sample_weight):
        loss, _ = torch.ops.fastxent.cross_entropy(*args)
    elif compute_grad:
        loss = _EagerCrossEntropy.apply(*args[:4], args[4:])  # type: ignore[no-untyped-call]
    else:
        loss, _ = _cross_entropy_impl(*args)
    result: torch.Tensor = loss.reshape(batch) if reduction == "none" else loss
    return result


class CrossEntropyLoss(torch.nn.Module):
    """Cross-entropy as an ``nn.Module``, like ``torch.nn.CrossEntropyLoss``.

    ``loss_fn(input, target)`` is :func:`cross_entropy` with the options
    given here.

    Parameters
    ----------
    weight : Tensor of shape (C,), optional
        Class weights, kept as a buffer (moves with ``.to()``, saved in the
        ``state_dict``).
    ignore_index : int, default -100
        Class index that contributes no loss and no gradient.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns one loss per sample, else their sum or mean.
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's label smoothing.
    z_loss : float >= 0, default 0.0
        Adds ``z_loss * logsumexp(z)**2`` to each sample's loss.
    softcap : float > 0, optional
        Soft-caps the logits as ``softcap * tanh(z / softcap)`` first.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> loss_fn = fxt.CrossEntropyLoss(label_smoothing=0.1)
    >>> z = torch.zeros(4, 3, requires_grad=True)
    >>> loss = loss_fn(z, torch.tensor([0, 1, 2, 0]))
    >>> round(loss.item(), 4)
    1.0986
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: Literal["mean", "sum", "none"] = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = _check_reduction(reduction)
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``input`` against ``target``.

        Parameters
        ----------
        input : Tensor
            Logits, classes on dim 1 (see :func:`cross_entropy`).
        target : Tensor
            Class indices or class probabilities.

        Returns
        -------
        Tensor
            :func:`cross_entropy` with this module's options.
        """
        return cross_entropy(
            input,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,  # type: ignore[arg-type]
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"softcap={self.softcap}"
        )


# ---------------------------------------------------------------------------
# torch.ops.fastxent.linear_cross_entropy(_backward)


def _linear_np(
    x: torch.Tensor,
    W: torch.Tensor,
    target: torch.Tensor,
    b: torch.Tensor | None,
    weight: torch.Tensor | None,
    sample_weight: Any,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_size: int | None,
    want_grad: bool,
    want_grad_x: bool,
) -> tuple[Any, Any, Any, Any]:
    loss, gx, gW, gb, _, _ = _linear_run(
        _np(x),
        _np(W),
        _np(target),
        linear_bias=None if b is None else _np(b),
        want_grad=want_grad,
        reduction=reduction,
        weight=None if weight is None else _np(weight),
        sample_weight=sample_weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        chunk_size=chunk_size,
        num_threads=None,
        want_grad_x=want_grad_x,
    )
    return loss, gx, gW, gb


def _grads(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, gx: Any, gW: Any, gb: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Distinct empty tensors: a custom op's outputs may not alias each other.
    return (
        x.new_empty((0,)) if gx is None else _torch(gx, x.dtype),
        x.new_empty((0,)) if gW is None else _torch(gW, W.dtype),
        x.new_empty((0,)) if gb is None or b is None else _torch(gb, b.dtype),
    )


@torch.library.custom_op(
    "fastxent::linear_cross_entropy",
    mutates_args=(),
    device_types="cpu",
    schema=(
        "(Tensor input, Tensor linear_weight, Tensor target, Tensor? linear_bias, "
        "Tensor? weight, Tensor? sample_weight, int ignore_index, str reduction, "
        "float label_smoothing, float z_loss, float? softcap, int? chunk_size, "
        "bool compute_grad, bool grad_input) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
)
def _linear_op(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None,
    weight: torch.Tensor | None,
    sample_weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_size: int | None,
    compute_grad: bool,
    grad_input: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, grad_input, grad_linear_weight, grad_linear_bias)`` of rows
    ``input`` (n, d); the gradients (empty tensors without ``compute_grad``,
    ``grad_input`` empty without ``grad_input``) are those of the loss, for
    ``"mean"`` and ``"sum"`` only."""
    loss, gx, gW, gb = _linear_np(
        input.contiguous(),
        linear_weight.contiguous(),
        target,
        linear_bias,
        weight,
        None if sample_weight is None else _np(sample_weight),
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        chunk_size,
        compute_grad,
        grad_input,
    )
    return (_torch(loss, input.dtype),) + _grads(input, linear_weight, linear_bias, gx, gW, gb)


@_linear_op.register_fake
def _(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None,
    weight: torch.Tensor | None,
    sample_weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_size: int | None,
    compute_grad: bool,
    grad_input: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    loss = input.new_empty((input.shape[0],) if reduction == "none" else ())
    gx = input.new_empty(input.shape if compute_grad and grad_input else (0,))
    gW = linear_weight.new_empty(linear_weight.shape if compute_grad else (0,))
    gb = input.new_empty(linear_bias.shape if compute_grad and linear_bias is not None else (0,))
    return loss, gx, gW, gb


@torch.library.custom_op(
    "fastxent::linear_cross_entropy_backward",
    mutates_args=(),
    device_types="cpu",
    schema=(
        "(Tensor input, Tensor linear_weight, Tensor target, Tensor? linear_bias, "
        "Tensor? weight, Tensor? sample_weight, Tensor grad_loss, int ignore_index, "
        "float label_smoothing, float z_loss, float? softcap, int? chunk_size, "
        "bool grad_input) -> (Tensor, Tensor, Tensor)"
    ),
)
def _linear_backward_op(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None,
    weight: torch.Tensor | None,
    sample_weight: torch.Tensor | None,
    grad_loss: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_size: int | None,
    grad_input: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of ``sum_i grad_loss[i] * loss_i`` (the backward of
    ``reduction="none"``): the chunk loop again, with the upstream gradient
    folded into the per-sample weights, so no n x V array is ever held."""
    s = _np(grad_loss).astype(np.float64)
    if sample_weight is not None:
        s = s * _np(sample_weight)
    _, gx, gW, gb = _linear_np(
        input.contiguous(),
        linear_weight.contiguous(),
        target,
        linear_bias,
        weight,
        s,
        ignore_index,
        "sum",
        label_smoothing,
        z_loss,
        softcap,
        chunk_size,
        True,
        grad_input,
    )
    return _grads(input, linear_weight, linear_bias, gx, gW, gb)


@_linear_backward_op.register_fake
def _(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None,
    weight: torch.Tensor | None,
    sample_weight: torch.Tensor | None,
    grad_loss: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_size: int | None,
    grad_input: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gx = input.new_empty(input.shape if grad_input else (0,))
    gb = input.new_empty((0,) if linear_bias is None else linear_bias.shape)
    return gx, linear_weight.new_empty(linear_weight.shape), gb


def _linear_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.options = inputs[6:]
    ctx.has_bias = inputs[3] is not None
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # (as for the cross-entropy's gradient output)
    if inputs[7] == "none":
        # Computed in the backward, where the upstream gradient is known.
        ctx.traced = False
        ctx.save_for_backward(*inputs[:6])
    else:
        _keep_gradients(ctx, tuple(output[1:]), inputs[:6])


def _linear_backward(ctx: Any, grad_loss: torch.Tensor | None, *_unused: Any) -> tuple[Any, ...]:
    ignore_index, reduction, eps, zl, cap, chunk_size, computed, grad_input = ctx.options
    need_x = ctx.needs_input_grad[0]
    if grad_loss is None:  # the loss took no part in what is differentiated
        return (None,) * 14
    if reduction == "none":
        x, W, target, b, weight, sw = ctx.saved_tensors
        gx, gW, gb = torch.ops.fastxent.linear_cross_entropy_backward(
            x, W, target, b, weight, sw, grad_loss, ignore_index, eps, zl, cap, chunk_size, need_x
        )
    else:
        if not computed or (need_x and not grad_input):
            raise RuntimeError(
                "torch.ops.fastxent.linear_cross_entropy ran without the gradients this "
                "backward needs: call fastxent.torch.linear_cross_entropy, which asks for "
                "them when its inputs require a gradient."
            )
        if ctx.traced:
            gs, owned = ctx.saved_tensors, False
        elif ctx.fresh is not None:
            gs, owned, ctx.fresh = ctx.fresh, True, None
        else:
            again = torch.ops.fastxent.linear_cross_entropy(*ctx.saved_tensors, *ctx.options)
            gs, owned = again[1:], True
        gx, gW, gb = _scale(tuple(gs), grad_loss, owned)
    return (
        gx if need_x else None,
        gW if ctx.needs_input_grad[1] else None,
        None,
        gb if ctx.has_bias and ctx.needs_input_grad[3] else None,
    ) + (None,) * 10


_linear_op.register_autograd(_linear_backward, setup_context=_linear_setup)


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    sample_weight: torch.Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``input @ linear_weight.T + linear_bias``, never holding the logits.

    The semantics of ``torch.nn.functional.linear_cross_entropy`` (and of
    :func:`cross_entropy` on the logits), computed by
    :func:`fastxent.linear_cross_entropy_with_grad`: the n x V logits are
    formed ``chunk_size`` rows at a time in one buffer and reduced at once.
    Under ``"mean"``/``"sum"`` the forward computes the gradients with
    respect to ``input``, ``linear_weight`` and ``linear_bias`` in the same
    pass when one of them requires a gradient, and ``backward`` scales them;
    under ``"none"`` the forward computes only the losses and ``backward``
    runs the chunk loop again with the per-sample upstream gradient.

    Parameters
    ----------
    input : Tensor of shape (..., d)
        Features, float32 or float64 (float16/bfloat16 are computed in
        float32), on the CPU.
    linear_weight : Tensor of shape (V, d)
        The classifier head (``nn.Linear(d, V).weight``), of input's dtype.
    target : Tensor
        Class indices of shape ``input.shape[:-1]``, or class probabilities
        of shape ``input.shape[:-1] + (V,)``.
    linear_bias : Tensor of shape (V,), optional
        The head's bias (``nn.Linear(d, V).bias``), of input's dtype.
    {torch_linear_options}
    chunk_size : int >= 1, optional
        Rows per chunk (see :func:`fastxent.linear_cross_entropy`).

    Returns
    -------
    Tensor
        The loss, of ``input``'s dtype: a scalar, or of shape
        ``input.shape[:-1]`` under ``"none"``.

    Raises
    ------
    ValueError, TypeError, RuntimeError
        As :func:`cross_entropy`; also mismatched ``input``,
        ``linear_weight`` and ``linear_bias`` shapes or dtypes.
    ImportError
        Without SciPy, whose BLAS computes the products.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> x = torch.randn(8, 4, requires_grad=True)
    >>> head = torch.nn.Linear(4, 10)
    >>> y = torch.randint(0, 10, (8,))
    >>> loss = fxt.linear_cross_entropy(x, head.weight, y, linear_bias=head.bias)
    >>> loss.backward()
    >>> ref = torch.nn.functional.cross_entropy(head(x), y)
    >>> bool(torch.allclose(loss, ref, atol=1e-6)), head.weight.grad.shape
    (True, torch.Size([10, 4]))
    """
    _check_tensor("input", input)
    _check_tensor("linear_weight", linear_weight)
    if linear_bias is not None:
        _check_tensor("linear_bias", linear_bias)
    reduction = _check_reduction(reduction)  # type: ignore[assignment]
    if input.dim() == 0 or linear_weight.dim() != 2 or input.shape[-1] != linear_weight.shape[1]:
        raise ValueError(
            f"input must have shape (..., d) and linear_weight (V, d); got "
            f"{tuple(input.shape)} and {tuple(linear_weight.shape)}."
        )
    V = linear_weight.shape[0]
    batch = tuple(input.shape[:-1])
    probs = _check_target(target, batch, batch + (V,))
    for name, t in (("weight", weight), ("sample_weight", sample_weight)):
        if t is not None:
            _check_tensor(name, t)
    if sample_weight is not None and tuple(sample_weight.shape) != batch:
        raise ValueError(
            f"sample_weight must have the batch shape {batch}; got {tuple(sample_weight.shape)}."
        )
    _check_no_grad("target", target)
    _check_no_grad("weight", weight)
    _check_no_grad("sample_weight", sample_weight)
    params = (input, linear_weight) + (() if linear_bias is None else (linear_bias,))
    compute_grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
    loss, _, _, _ = torch.ops.fastxent.linear_cross_entropy(
        input.reshape(-1, input.shape[-1]),
        linear_weight,
        target.reshape(-1, V) if probs else target.reshape(-1),
        linear_bias,
        weight,
        None if sample_weight is None else sample_weight.reshape(-1),
        int(ignore_index),
        reduction,
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        None if chunk_size is None else int(chunk_size),
        compute_grad and reduction != "none",
        input.requires_grad,
    )
    result: torch.Tensor = loss.reshape(batch) if reduction == "none" else loss
    return result


# The loss options' parameter docs, shared with the other adapter (_docs).
_docs.fill(linear_cross_entropy)
