"""fastxent from PyTorch: differentiable, ``torch.compile``-friendly, zero-copy.

:func:`cross_entropy`, :func:`linear_cross_entropy` and
:class:`CrossEntropyLoss` take CPU tensors with PyTorch's conventions (those
of ``torch.nn.functional.cross_entropy`` and ``linear_cross_entropy``) and
run fastxent's fused kernels on them; :func:`token_logprobs`,
:func:`linear_token_logprobs`, :func:`distillation_loss` and
:func:`linear_distillation_loss` do the same for the per-token
log-probabilities, entropies and distillation divergences (classes on the
last dim).  They are built on ``torch.library`` custom operators
(``torch.ops.fastxent.cross_entropy``, ``linear_cross_entropy``,
``token_logprobs``, ``distillation_loss``, ... and their ``_backward``
operators) with fake kernels and autograd formulas, so
``torch.compile(fullgraph=True)`` traces code that calls them without a
graph break.

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
from ._distill import distillation_loss_with_grad as _np_distillation_loss_with_grad
from ._distill import linear_distillation_loss_with_grad as _np_linear_distillation_loss_with_grad
from ._linear import _chunk_size, _linear_run
from ._logprob import linear_token_logprobs as _np_linear_token_logprobs
from ._logprob import linear_token_logprobs_vjp as _np_linear_token_logprobs_vjp
from ._logprob import token_logprobs as _np_token_logprobs
from ._logprob import token_logprobs_vjp as _np_token_logprobs_vjp
from ._loss import reduce_total, run_spec
from ._spec import loss_spec

__all__ = [
    "CrossEntropyLoss",
    "cross_entropy",
    "distillation_loss",
    "linear_cross_entropy",
    "linear_distillation_loss",
    "linear_token_logprobs",
    "token_logprobs",
]

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


def _saved_backward(ctx: Any, upstream: torch.Tensor, rerun: Any) -> list[torch.Tensor]:
    """The backward of an operator whose forward computed the gradients of
    its loss (its outputs after the first, kept by :func:`_keep_gradients`):
    those gradients times ``upstream``.  ``rerun`` (the operator, called on
    the saved inputs and ``ctx.options``) computes them again when the
    first backward gave them away."""
    if ctx.traced:
        gs, owned = tuple(ctx.saved_tensors), False
    elif ctx.fresh is not None:
        gs, owned, ctx.fresh = ctx.fresh, True, None
    else:
        gs, owned = tuple(rerun(*ctx.saved_tensors, *ctx.options)[1:]), True
    return _scale(gs, upstream, owned)


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
    rerun = torch.ops.fastxent.cross_entropy
    return tuple(_saved_backward(ctx, upstream, rerun)) + (None,) * 9


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
        rerun = torch.ops.fastxent.linear_cross_entropy
        gx, gW, gb = _saved_backward(ctx, grad_loss, rerun)
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


# ---------------------------------------------------------------------------
# Log-probabilities, entropy and distillation: checks and plumbing shared by
# the four operators below


def _eager_function(name: str, impl: Any, setup: Any, backward: Any) -> Any:
    """An ``autograd.Function`` with an operator's forward (``impl``),
    ``setup_context`` and backward, for eager calls on plain tensors (as
    :class:`_EagerCrossEntropy`); ``ctx.eager`` tells the backward it may
    call the NumPy functions directly rather than through the dispatcher."""

    def forward(ctx: Any, *args: Any) -> Any:
        output = impl(*args)
        setup(ctx, args, output)
        ctx.eager = True
        return output

    def backward_(ctx: Any, *grads: Any) -> Any:
        return backward(ctx, *grads)

    doc = f"The eager twin of ``torch.ops.fastxent.{name}``."
    body = {"forward": staticmethod(forward), "backward": staticmethod(backward_), "__doc__": doc}
    # (Any to mypy: a class made at run time, which stubtest would compare
    # with a declared type[Function] and find a FunctionMeta.)
    return type(f"_Eager_{name}", (torch.autograd.Function,), body)


def _run_op(name: str, eager_fn: Any, impl: Any, tensors: tuple[Any, ...], args: Any) -> Any:
    """The operator ``torch.ops.fastxent.<name>`` on ``args``; for an eager
    call on plain tensors, ``eager_fn`` when a gradient is wanted (the last
    argument, ``compute_grad``), else ``impl`` alone."""
    if not _plain_eager(*tensors):
        return getattr(torch.ops.fastxent, name)(*args)
    if args[-1]:
        return eager_fn.apply(*args)
    return impl(*args)


def _backward_call(ctx: Any, name: str, impl: Any, *args: Any) -> Any:
    """A backward operator, called directly in an eager backward."""
    if getattr(ctx, "eager", False):
        return impl(*args)
    return getattr(torch.ops.fastxent, name)(*args)


def _check_labels(target: object, batch: tuple[int, ...], what: str) -> torch.Tensor:
    t = _check_tensor("target", target, floating=False)
    if t.dtype not in _LABEL_DTYPES:
        raise TypeError(
            f"{what} takes class indices: target must be an integer tensor; got dtype={t.dtype}."
        )
    if tuple(t.shape) != batch:
        raise ValueError(
            f"target must have shape {batch} (one class index per row); got {tuple(t.shape)}."
        )
    return t


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {value!r}.")
    return bool(value)


def _number(name: str, value: object) -> float:
    """A Python float for a ``float`` schema argument (the NumPy function
    checks its range)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{name} must be a real number; got {value!r}.")
    return float(value)


def _index(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"ignore_index must be an integer or None; got {value!r}.")
    return int(value)


def _head(
    input: object, linear_weight: object, linear_bias: object, prefix: str = ""
) -> tuple[int, int]:
    """``(d, V)`` of a linear head ``input`` (..., d), ``linear_weight``
    (V, d) and ``linear_bias`` (V,)."""
    x = _check_tensor(prefix + "input", input)
    W = _check_tensor(prefix + "linear_weight", linear_weight)
    if x.dim() == 0 or W.dim() != 2 or x.shape[-1] != W.shape[1]:
        raise ValueError(
            f"{prefix}input must have shape (..., d) and {prefix}linear_weight (V, d); got "
            f"{tuple(x.shape)} and {tuple(W.shape)}."
        )
    V = W.shape[0]
    if linear_bias is not None:
        b = _check_tensor(prefix + "linear_bias", linear_bias)
        if tuple(b.shape) != (V,):
            raise ValueError(f"{prefix}linear_bias must have shape ({V},); got {tuple(b.shape)}.")
    return x.shape[-1], V


def _upstream(grad: torch.Tensor | None) -> Any:
    """An upstream gradient (one value per row) for the NumPy functions."""
    return None if grad is None else _np(grad.contiguous())


# ---------------------------------------------------------------------------
# torch.ops.fastxent.token_logprobs(_backward)


def _token_logprobs_impl(
    logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
    return_entropy: bool,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprobs, entropy)`` of rows ``logits`` (n, C); ``entropy`` is an
    empty tensor without ``return_entropy``.  ``compute_grad`` only chooses
    the eager path: the gradient is the backward's."""
    res = _np_token_logprobs(
        _np(logits.contiguous()),
        _np(target),
        temperature=temperature,
        softcap=softcap,
        ignore_index=ignore_index,  # type: ignore[arg-type]
        return_entropy=return_entropy,
    )
    if return_entropy:
        lp, ent = res
        return _torch(lp, logits.dtype), _torch(ent, logits.dtype)
    return _torch(res, logits.dtype), logits.new_empty((0,))


@torch.library.custom_op(
    "fastxent::token_logprobs",
    mutates_args=(),
    device_types="cpu",
    schema=(
        "(Tensor logits, Tensor target, float temperature, float? softcap, int? ignore_index, "
        "bool return_entropy, bool compute_grad) -> (Tensor, Tensor)"
    ),
)
def _token_logprobs_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
    return_entropy: bool,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _token_logprobs_impl(
        logits, target, temperature, softcap, ignore_index, return_entropy, compute_grad
    )


@_token_logprobs_op.register_fake
def _(
    logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
    return_entropy: bool,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    n = logits.shape[0]
    return logits.new_empty((n,)), logits.new_empty((n,) if return_entropy else (0,))


def _token_logprobs_backward_impl(
    logits: torch.Tensor,
    target: torch.Tensor,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
) -> torch.Tensor:
    """The gradient with respect to ``logits`` of ``sum gl logprobs + ge
    entropy``, in one pass (None: that output took no part)."""
    grad = _empty(logits.shape, logits.dtype)
    gl = _upstream(grad_logprobs)
    _np_token_logprobs_vjp(
        _np(logits.contiguous()),
        _np(target),
        np.zeros(logits.shape[0]) if gl is None else gl,
        _upstream(grad_entropy),
        temperature=temperature,
        softcap=softcap,
        ignore_index=ignore_index,  # type: ignore[arg-type]
        out=_np(grad),
    )
    return grad


@torch.library.custom_op(
    "fastxent::token_logprobs_backward",
    mutates_args=(),
    device_types="cpu",
    schema=(
        "(Tensor logits, Tensor target, Tensor? grad_logprobs, Tensor? grad_entropy, "
        "float temperature, float? softcap, int? ignore_index) -> Tensor"
    ),
)
def _token_logprobs_backward_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
) -> torch.Tensor:
    return _token_logprobs_backward_impl(
        logits, target, grad_logprobs, grad_entropy, temperature, softcap, ignore_index
    )


@_token_logprobs_backward_op.register_fake
def _(
    logits: torch.Tensor,
    target: torch.Tensor,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
) -> torch.Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _token_logprobs_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.eager = False
    ctx.options = inputs[2:5]
    ctx.save_for_backward(inputs[0], inputs[1])
    # An output that took no part in what is differentiated gets None, not
    # a tensor of zeros: the entropy's term is then skipped.
    ctx.set_materialize_grads(False)
    if not inputs[5]:
        ctx.mark_non_differentiable(output[1])


def _token_logprobs_backward(
    ctx: Any, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None
) -> tuple[Any, ...]:
    if grad_logprobs is None and grad_entropy is None:
        return (None,) * 7
    logits, target = ctx.saved_tensors
    grad = _backward_call(
        ctx,
        "token_logprobs_backward",
        _token_logprobs_backward_impl,
        logits,
        target,
        grad_logprobs,
        grad_entropy,
        *ctx.options,
    )
    return (grad,) + (None,) * 6


_token_logprobs_op.register_autograd(_token_logprobs_backward, setup_context=_token_logprobs_setup)
_EagerTokenLogprobs = _eager_function(
    "token_logprobs", _token_logprobs_impl, _token_logprobs_setup, _token_logprobs_backward
)


def token_logprobs(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int | None = -100,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each row's target token, and optionally the row's entropy.

    For a row ``z`` of ``logits`` (``softcap * tanh(z / softcap)`` when
    ``softcap`` is set), ``u = z / temperature``, ``p = softmax(u)`` and
    ``logp = log_softmax(u)``::

        logprobs = logp[y] = u[y] - logsumexp(u)
        entropy  = -sum_j p_j logp_j

    both 0 at rows whose target is ``ignore_index``: the values of
    ``log_softmax(logits / temperature, -1).gather(-1, target[..., None])``
    and of the entropy, without the log-softmax's tensor.  Unlike
    :func:`cross_entropy`, **the classes are on the last dim** (the
    convention of :func:`fastxent.token_logprobs`, ``axis=-1``, and of a
    language model's ``(batch, seq, vocab)`` logits).  Both outputs are
    differentiable with respect to ``logits``: the backward computes the
    gradient of ``sum gl logprobs + ge entropy`` for the two upstream
    gradients in one pass (:func:`fastxent.token_logprobs_vjp`), leaving out
    the entropy's term when the entropy took no part.

    Parameters
    ----------
    logits : Tensor of shape (..., C)
        Classes on the last dim; a CPU tensor of float32 or float64 (no
        copy when contiguous), float16 or bfloat16 (computed in float32;
        bfloat16 needs ``ml_dtypes``).
    target : Tensor of shape ``logits.shape[:-1]``
        Class indices, an integer tensor with values in ``[0, C)`` or
        ``ignore_index``.
    {torch_lp_options}
    return_entropy : bool, default False
        Also return each row's entropy.

    Returns
    -------
    logprobs : Tensor of shape ``logits.shape[:-1]``
        Of ``logits``' dtype.
    entropy : Tensor of shape ``logits.shape[:-1]``
        Only with ``return_entropy=True``.

    Raises
    ------
    ValueError
        A tensor not on the CPU, mismatched shapes, a label out of range,
        ``temperature`` or ``softcap`` not finite and positive.
    TypeError
        Tensors of unsupported dtypes, a floating ``target``.

    See Also
    --------
    fastxent.token_logprobs, fastxent.token_logprobs_vjp : The NumPy functions underneath.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    >>> y = torch.tensor([0, 2])
    >>> lp, ent = fxt.token_logprobs(z, y, temperature=2.0, return_entropy=True)
    >>> ref = torch.log_softmax(z / 2.0, -1).gather(-1, y[:, None])[:, 0]
    >>> bool(torch.allclose(lp, ref))
    True
    >>> (lp.sum() + 0.01 * ent.sum()).backward()
    >>> z.grad.shape
    torch.Size([2, 3])
    """
    _check_tensor("logits", logits)
    if logits.dim() == 0:
        raise ValueError("logits must have shape (..., C); got a 0-d tensor.")
    C = logits.shape[-1]
    batch = tuple(logits.shape[:-1])
    _check_labels(target, batch, "token_logprobs")
    entropy = _check_bool("return_entropy", return_entropy)
    args = (
        logits.reshape(-1, C),
        target.reshape(-1),
        _number("temperature", temperature),
        None if softcap is None else _number("softcap", softcap),
        _index(ignore_index),
        entropy,
        logits.requires_grad and torch.is_grad_enabled(),
    )
    lp, ent = _run_op(
        "token_logprobs", _EagerTokenLogprobs, _token_logprobs_impl, (logits, target), args
    )
    if entropy:
        return lp.reshape(batch), ent.reshape(batch)
    result: torch.Tensor = lp.reshape(batch)
    return result


# ---------------------------------------------------------------------------
# torch.ops.fastxent.linear_token_logprobs(_backward)


def _optional_np(t: torch.Tensor | None) -> Any:
    return None if t is None else _np(t.contiguous())


def _linear_token_logprobs_impl(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
    return_entropy: bool,
    chunk_size: int | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprobs, entropy)`` of rows ``input`` (n, d) through the head;
    ``entropy`` is empty without ``return_entropy``."""
    res = _np_linear_token_logprobs(
        _np(input.contiguous()),
        _np(linear_weight.contiguous()),
        _np(target),
        linear_bias=_optional_np(linear_bias),
        temperature=temperature,
        softcap=softcap,
        ignore_index=ignore_index,  # type: ignore[arg-type]
        return_entropy=return_entropy,
        chunk_size=chunk_size,
    )
    if return_entropy:
        lp, ent = res
        return _torch(lp, input.dtype), _torch(ent, input.dtype)
    return _torch(res, input.dtype), input.new_empty((0,))


_LINEAR_LP_ARGS = "Tensor input, Tensor linear_weight, Tensor target, Tensor? linear_bias, "


@torch.library.custom_op(
    "fastxent::linear_token_logprobs",
    mutates_args=(),
    device_types="cpu",
    schema=(
        f"({_LINEAR_LP_ARGS}float temperature, float? softcap, int? ignore_index, "
        "bool return_entropy, int? chunk_size, bool compute_grad) -> (Tensor, Tensor)"
    ),
)
def _linear_token_logprobs_op(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
    return_entropy: bool,
    chunk_size: int | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _linear_token_logprobs_impl(
        input, linear_weight, target, linear_bias, temperature, softcap, ignore_index,
        return_entropy, chunk_size, compute_grad,
    )  # fmt: skip


@_linear_token_logprobs_op.register_fake
def _(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
    return_entropy: bool,
    chunk_size: int | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    n = input.shape[0]
    return input.new_empty((n,)), input.new_empty((n,) if return_entropy else (0,))


def _linear_token_logprobs_backward_impl(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_input, grad_linear_weight, grad_linear_bias)`` of ``sum gl
    logprobs + ge entropy``, the chunk loop again with the upstream
    gradients (grad_linear_bias empty without a bias)."""
    gl = _upstream(grad_logprobs)
    gx, gW, gb = _np_linear_token_logprobs_vjp(
        _np(input.contiguous()),
        _np(linear_weight.contiguous()),
        _np(target),
        np.zeros(input.shape[0]) if gl is None else gl,
        _upstream(grad_entropy),
        linear_bias=_optional_np(linear_bias),
        temperature=temperature,
        softcap=softcap,
        ignore_index=ignore_index,  # type: ignore[arg-type]
        chunk_size=chunk_size,
    )
    return _grads(input, linear_weight, linear_bias, gx, gW, gb)


@torch.library.custom_op(
    "fastxent::linear_token_logprobs_backward",
    mutates_args=(),
    device_types="cpu",
    schema=(
        f"({_LINEAR_LP_ARGS}Tensor? grad_logprobs, Tensor? grad_entropy, float temperature, "
        "float? softcap, int? ignore_index, int? chunk_size) -> (Tensor, Tensor, Tensor)"
    ),
)
def _linear_token_logprobs_backward_op(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _linear_token_logprobs_backward_impl(
        input, linear_weight, target, linear_bias, grad_logprobs, grad_entropy, temperature,
        softcap, ignore_index, chunk_size,
    )  # fmt: skip


def _head_grads_fake(
    input: torch.Tensor, linear_weight: torch.Tensor, linear_bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gb = input.new_empty((0,) if linear_bias is None else linear_bias.shape)
    return input.new_empty(input.shape), linear_weight.new_empty(linear_weight.shape), gb


@_linear_token_logprobs_backward_op.register_fake
def _(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None,
    grad_logprobs: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int | None,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _head_grads_fake(input, linear_weight, linear_bias)


def _linear_token_logprobs_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.eager = False
    ctx.options = inputs[4:7] + (inputs[8],)  # temperature, softcap, ignore_index, chunk_size
    ctx.has_bias = inputs[3] is not None
    ctx.save_for_backward(*inputs[:4])
    ctx.set_materialize_grads(False)  # (as for token_logprobs)
    if not inputs[7]:
        ctx.mark_non_differentiable(output[1])


def _head_grads(ctx: Any, bias_at: int, gx: Any, gW: Any, gb: Any) -> tuple[Any, Any, Any]:
    """The gradients of a head's ``(input, linear_weight, linear_bias)``
    (inputs 0, 1 and ``bias_at``) that autograd asked for, None for the
    others."""
    need = ctx.needs_input_grad
    return (
        gx if need[0] else None,
        gW if need[1] else None,
        gb if ctx.has_bias and need[bias_at] else None,
    )


def _linear_token_logprobs_backward(
    ctx: Any, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None
) -> tuple[Any, ...]:
    if grad_logprobs is None and grad_entropy is None:
        return (None,) * 10
    x, W, target, b = ctx.saved_tensors
    gx, gW, gb = _backward_call(
        ctx,
        "linear_token_logprobs_backward",
        _linear_token_logprobs_backward_impl,
        x,
        W,
        target,
        b,
        grad_logprobs,
        grad_entropy,
        *ctx.options,
    )
    hx, hW, hb = _head_grads(ctx, 3, gx, gW, gb)
    return (hx, hW, None, hb) + (None,) * 6


_linear_token_logprobs_op.register_autograd(
    _linear_token_logprobs_backward, setup_context=_linear_token_logprobs_setup
)
_EagerLinearTokenLogprobs = _eager_function(
    "linear_token_logprobs",
    _linear_token_logprobs_impl,
    _linear_token_logprobs_setup,
    _linear_token_logprobs_backward,
)


def linear_token_logprobs(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int | None = -100,
    return_entropy: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs` of the logits ``input @ linear_weight.T + linear_bias``, never held.

    Equal (to rounding) to ``token_logprobs(F.linear(input, linear_weight,
    linear_bias), target, ...)``: the forward forms the ``n x V`` logits
    ``chunk_size`` rows at a time in one buffer
    (:func:`fastxent.linear_token_logprobs`); the backward runs the chunk
    loop again with the upstream gradients of the log-probabilities and
    entropies (:func:`fastxent.linear_token_logprobs_vjp`, three matrix
    products a chunk), giving the gradients with respect to ``input``,
    ``linear_weight`` and ``linear_bias``.

    Parameters
    ----------
    input : Tensor of shape (..., d)
        Features, float32 or float64 (float16/bfloat16 are computed in
        float32), on the CPU.
    linear_weight : Tensor of shape (V, d)
        The head (``nn.Linear(d, V).weight``), of input's dtype.
    target : Tensor of shape ``input.shape[:-1]``
        Class indices, an integer tensor with values in ``[0, V)`` or
        ``ignore_index``.
    linear_bias : Tensor of shape (V,), optional
        The head's bias, of input's dtype.
    {torch_lp_options}
    return_entropy : bool, default False
        Also return each row's entropy.
    chunk_size : int >= 1, optional
        Rows per chunk (see :func:`fastxent.linear_cross_entropy`).

    Returns
    -------
    logprobs : Tensor of shape ``input.shape[:-1]``
        Of input's dtype.
    entropy : Tensor of shape ``input.shape[:-1]``
        Only with ``return_entropy=True``.

    Raises
    ------
    ValueError, TypeError
        As :func:`token_logprobs`; also mismatched ``input``,
        ``linear_weight`` and ``linear_bias`` shapes or dtypes.
    ImportError
        Without SciPy, whose BLAS computes the products.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> x = torch.randn(8, 4, requires_grad=True)
    >>> head = torch.nn.Linear(4, 10)
    >>> y = torch.randint(0, 10, (8,))
    >>> lp = fxt.linear_token_logprobs(x, head.weight, y, linear_bias=head.bias)
    >>> ref = torch.log_softmax(head(x), -1).gather(-1, y[:, None])[:, 0]
    >>> bool(torch.allclose(lp, ref, atol=1e-6))
    True
    >>> lp.sum().backward()
    >>> head.weight.grad.shape, head.bias.grad.shape
    (torch.Size([10, 4]), torch.Size([10]))
    """
    _head(input, linear_weight, linear_bias)
    batch = tuple(input.shape[:-1])
    _check_labels(target, batch, "linear_token_logprobs")
    entropy = _check_bool("return_entropy", return_entropy)
    params = (input, linear_weight) + (() if linear_bias is None else (linear_bias,))
    args = (
        input.reshape(-1, input.shape[-1]),
        linear_weight,
        target.reshape(-1),
        linear_bias,
        _number("temperature", temperature),
        None if softcap is None else _number("softcap", softcap),
        _index(ignore_index),
        entropy,
        None if chunk_size is None else int(chunk_size),
        torch.is_grad_enabled() and any(p.requires_grad for p in params),
    )
    lp, ent = _run_op(
        "linear_token_logprobs",
        _EagerLinearTokenLogprobs,
        _linear_token_logprobs_impl,
        (input, linear_weight, target, linear_bias),
        args,
    )
    if entropy:
        return lp.reshape(batch), ent.reshape(batch)
    result: torch.Tensor = lp.reshape(batch)
    return result


# ---------------------------------------------------------------------------
# torch.ops.fastxent.distillation_loss


def _distillation_impl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None,
    divergence: str,
    beta: float,
    temperature: float,
    reduction: str,
    ignore_index: int | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, grad)`` of rows (n, C): the gradient of the loss (of the
    sum of the rows under ``"none"``) with respect to the student's logits,
    written by the same pass, or an empty tensor without ``compute_grad``
    (the kernel writes it regardless, into memory then dropped)."""
    grad = _empty(student_logits.shape, student_logits.dtype) if compute_grad else None
    loss, _ = _np_distillation_loss_with_grad(
        _np(student_logits.contiguous()),
        _np(teacher_logits.contiguous()),
        divergence=divergence,  # type: ignore[arg-type]
        beta=beta,
        temperature=temperature,
        reduction=reduction,  # type: ignore[arg-type]
        target=_optional_np(target),
        ignore_index=ignore_index,  # type: ignore[arg-type]
        out=None if grad is None else _np(grad),
    )
    return _torch(loss, student_logits.dtype), (
        student_logits.new_empty((0,)) if grad is None else grad
    )


_DIVERGENCE_ARGS = "str divergence, float beta, float temperature"


@torch.library.custom_op(
    "fastxent::distillation_loss",
    mutates_args=(),
    device_types="cpu",
    schema=(
        f"(Tensor student_logits, Tensor teacher_logits, Tensor? target, {_DIVERGENCE_ARGS}, "
        "str reduction, int? ignore_index, bool compute_grad) -> (Tensor, Tensor)"
    ),
)
def _distillation_op(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None,
    divergence: str,
    beta: float,
    temperature: float,
    reduction: str,
    ignore_index: int | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _distillation_impl(
        student_logits, teacher_logits, target, divergence, beta, temperature, reduction,
        ignore_index, compute_grad,
    )  # fmt: skip


@_distillation_op.register_fake
def _(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None,
    divergence: str,
    beta: float,
    temperature: float,
    reduction: str,
    ignore_index: int | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    s = student_logits
    loss = s.new_empty((s.shape[0],) if reduction == "none" else ())
    return loss, s.new_empty(s.shape if compute_grad else (0,))


def _distillation_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.options = inputs[3:]
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # (as for the cross-entropy's gradient output)
    _keep_gradients(ctx, (output[1],), inputs[:3])


def _distillation_backward(
    ctx: Any, grad_loss: torch.Tensor | None, _unused: Any
) -> tuple[Any, ...]:
    if not ctx.options[-1]:
        raise RuntimeError(
            "torch.ops.fastxent.distillation_loss ran with compute_grad=False and cannot be "
            "differentiated: call fastxent.torch.distillation_loss, which asks for the "
            "gradient when the student's logits require one."
        )
    if grad_loss is None:
        return (None,) * 9
    # "none": row i's loss depends on row i of the student's logits alone,
    # so the gradient of sum_i g_i loss_i is row i of the saved gradient
    # times g_i.
    upstream = grad_loss.unsqueeze(-1) if ctx.options[3] == "none" else grad_loss
    (grad,) = _saved_backward(ctx, upstream, torch.ops.fastxent.distillation_loss)
    return (grad,) + (None,) * 8


_distillation_op.register_autograd(_distillation_backward, setup_context=_distillation_setup)
_EagerDistillation = _eager_function(
    "distillation_loss", _distillation_impl, _distillation_setup, _distillation_backward
)


def _distill_target(target: object, batch: tuple[int, ...]) -> torch.Tensor | None:
    if target is None:
        return None
    return _check_labels(target, batch, "distillation").reshape(-1)


def _divergence_args(
    divergence: object, beta: object, temperature: object, reduction: object
) -> tuple[Any, ...]:
    if not isinstance(divergence, str) or divergence not in ("forward_kl", "reverse_kl", "jsd"):
        raise ValueError(
            f"divergence must be one of 'forward_kl', 'reverse_kl' or 'jsd'; got {divergence!r}."
        )
    if not isinstance(reduction, str) or reduction not in ("batchmean", "sum", "none"):
        raise ValueError(
            f"reduction must be one of 'batchmean', 'sum' or 'none'; got {reduction!r}."
        )
    return divergence, _number("beta", beta), _number("temperature", temperature), reduction


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Literal["batchmean", "sum", "none"] = "batchmean",
    target: torch.Tensor | None = None,
    ignore_index: int | None = -100,
) -> torch.Tensor:
    """Divergence between the teacher's and the student's softmax rows, differentiable.

    With ``P = softmax(teacher_logits / T)`` and ``Q = softmax(student_logits
    / T)`` over the last dim::

        "forward_kl":  KL(P || Q) = sum_j P_j (log P_j - log Q_j)
        "reverse_kl":  KL(Q || P) = sum_j Q_j (log Q_j - log P_j)
        "jsd":         beta KL(P || M) + (1 - beta) KL(Q || M),  M = beta P + (1 - beta) Q

    ``"forward_kl"`` is ``F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t
    / T, -1), reduction="batchmean", log_target=True)``.  The forward
    computes the gradient with respect to ``student_logits`` in the same
    pass (:func:`fastxent.distillation_loss_with_grad`); ``backward`` scales
    it by the upstream gradient (row by row under ``"none"``).  No gradient
    flows to the teacher: ``teacher_logits`` requiring one is an error (pass
    ``teacher_logits.detach()``).  The loss is not multiplied by ``T**2``.
    The classes are on the last dim, as in :func:`token_logprobs`.  Under
    ``torch.no_grad()`` the kernel still writes the gradient (the
    divergence's pass has no loss-only mode), into memory then dropped.

    Parameters
    ----------
    student_logits : Tensor of shape (..., C)
        The student's logits, a CPU tensor of float32 or float64 (no copy
        when contiguous), float16 or bfloat16 (computed in float32).
    teacher_logits : Tensor of the student's shape
        The teacher's logits (converted to the student's compute dtype).
    {torch_distill_options}

    Returns
    -------
    Tensor
        Of the student's dtype: a scalar, or of shape
        ``student_logits.shape[:-1]`` under ``"none"``.

    Raises
    ------
    ValueError
        A tensor not on the CPU, mismatched shapes, an unknown
        ``divergence`` or ``reduction``, ``beta`` outside (0, 1),
        ``temperature`` not finite and positive.
    TypeError
        Tensors of unsupported dtypes, a floating ``target``.
    RuntimeError
        ``teacher_logits`` requiring a gradient.

    See Also
    --------
    fastxent.distillation_loss_with_grad : The NumPy function underneath.

    Examples
    --------
    >>> import torch, torch.nn.functional as F, fastxent.torch as fxt
    >>> s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    >>> t = torch.tensor([[1.0, 1.0, -1.0], [0.0, 1.0, 0.0]])
    >>> loss = fxt.distillation_loss(s, t, temperature=2.0)
    >>> ref = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1),
    ...                reduction="batchmean", log_target=True)
    >>> bool(torch.allclose(loss, ref))
    True
    >>> loss.backward()
    >>> s.grad.shape
    torch.Size([2, 3])
    """
    _check_tensor("student_logits", student_logits)
    _check_tensor("teacher_logits", teacher_logits)
    if student_logits.dim() == 0:
        raise ValueError("student_logits must have shape (..., C); got a 0-d tensor.")
    shape = tuple(student_logits.shape)
    if tuple(teacher_logits.shape) != shape:
        raise ValueError(
            f"teacher_logits must have the student's shape {shape}; "
            f"got {tuple(teacher_logits.shape)}."
        )
    _check_no_grad("teacher_logits", teacher_logits)
    C = shape[-1]
    t = _distill_target(target, shape[:-1])
    opts = _divergence_args(divergence, beta, temperature, reduction)
    args = (
        student_logits.reshape(-1, C),
        teacher_logits.reshape(-1, C),
        t,
        *opts,
        _index(ignore_index),
        student_logits.requires_grad and torch.is_grad_enabled(),
    )
    tensors = (student_logits, teacher_logits, target)
    loss, _ = _run_op("distillation_loss", _EagerDistillation, _distillation_impl, tensors, args)
    result: torch.Tensor = loss.reshape(shape[:-1]) if reduction == "none" else loss
    return result


# ---------------------------------------------------------------------------
# torch.ops.fastxent.linear_distillation_loss(_backward)

_TWO_HEADS = (
    "Tensor input, Tensor linear_weight, Tensor teacher_input, Tensor teacher_linear_weight, "
    "Tensor? linear_bias, Tensor? teacher_linear_bias, Tensor? target"
)


def _linear_distillation_impl(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    teacher_input: torch.Tensor,
    teacher_linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    teacher_linear_bias: torch.Tensor | None,
    target: torch.Tensor | None,
    divergence: str,
    beta: float,
    temperature: float,
    reduction: str,
    ignore_index: int | None,
    chunk_size: int | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, grad_input, grad_linear_weight, grad_linear_bias)`` of rows
    ``input`` (n, d); the gradients are those of the loss (of the sum of the
    rows under ``"none"``), empty tensors without ``compute_grad``."""
    loss, gx, gW, gb = _np_linear_distillation_loss_with_grad(
        _np(input.contiguous()),
        _np(linear_weight.contiguous()),
        _np(teacher_input.contiguous()),
        _np(teacher_linear_weight.contiguous()),
        linear_bias=_optional_np(linear_bias),
        teacher_linear_bias=_optional_np(teacher_linear_bias),
        divergence=divergence,  # type: ignore[arg-type]
        beta=beta,
        temperature=temperature,
        reduction=reduction,  # type: ignore[arg-type]
        target=_optional_np(target),
        ignore_index=ignore_index,  # type: ignore[arg-type]
        chunk_size=chunk_size,
    )
    grads = (gx, gW, gb) if compute_grad else (None, None, None)
    return (_torch(loss, input.dtype),) + _grads(input, linear_weight, linear_bias, *grads)


@torch.library.custom_op(
    "fastxent::linear_distillation_loss",
    mutates_args=(),
    device_types="cpu",
    schema=(
        f"({_TWO_HEADS}, {_DIVERGENCE_ARGS}, str reduction, int? ignore_index, int? chunk_size, "
        "bool compute_grad) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
)
def _linear_distillation_op(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    teacher_input: torch.Tensor,
    teacher_linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    teacher_linear_bias: torch.Tensor | None,
    target: torch.Tensor | None,
    divergence: str,
    beta: float,
    temperature: float,
    reduction: str,
    ignore_index: int | None,
    chunk_size: int | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _linear_distillation_impl(
        input, linear_weight, teacher_input, teacher_linear_weight, linear_bias,
        teacher_linear_bias, target, divergence, beta, temperature, reduction, ignore_index,
        chunk_size, compute_grad,
    )  # fmt: skip


@_linear_distillation_op.register_fake
def _(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    teacher_input: torch.Tensor,
    teacher_linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    teacher_linear_bias: torch.Tensor | None,
    target: torch.Tensor | None,
    divergence: str,
    beta: float,
    temperature: float,
    reduction: str,
    ignore_index: int | None,
    chunk_size: int | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    loss = input.new_empty((input.shape[0],) if reduction == "none" else ())
    if not compute_grad:
        return loss, input.new_empty((0,)), input.new_empty((0,)), input.new_empty((0,))
    return (loss,) + _head_grads_fake(input, linear_weight, linear_bias)


def _linear_distillation_backward_impl(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    teacher_input: torch.Tensor,
    teacher_linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    teacher_linear_bias: torch.Tensor | None,
    target: torch.Tensor | None,
    grad_loss: torch.Tensor,
    divergence: str,
    beta: float,
    temperature: float,
    ignore_index: int | None,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of ``sum_i grad_loss[i] * loss_i`` (the backward of
    ``reduction="none"``).  One value for every row that counts (as after
    ``loss.sum()`` or ``loss.mean()``): the fused ``"sum"`` gradients times
    it.  Else the rows' gradients differ in weight, which the fused kernel
    cannot take: the chunk loop in NumPy (the two heads' products a chunk,
    the divergence's gradient of each row scaled by its upstream value,
    then the two products of the backward), still never holding n x V."""
    g = _np(grad_loss.contiguous()).astype(np.float64).reshape(-1)
    counts = np.ones(g.shape, bool)
    if target is not None and ignore_index is not None:
        counts = _np(target) != ignore_index
    weights = g[counts]
    heads = (input, linear_weight, teacher_input, teacher_linear_weight)
    biases = (linear_bias, teacher_linear_bias)
    if weights.size == 0 or bool(np.all(weights == weights[0])):
        c = float(weights[0]) if weights.size else 0.0
        _, gx, gW, gb = _linear_distillation_impl(
            *heads, *biases, target, divergence, beta, temperature, "sum", ignore_index,
            chunk_size, True,
        )  # fmt: skip
        if c != 1.0:
            for t in (gx, gW, gb):
                t.mul_(c)
        return gx, gW, gb
    # float16/bfloat16 are computed in float32, as the fused kernels do.
    ct = np.float64 if input.dtype == torch.float64 else np.float32
    X, W, TX, TW = (_np(t.contiguous()).astype(ct, copy=False) for t in heads)
    B, TB = (None if t is None else _np(t).astype(ct) for t in biases)
    labels = None if target is None else _np(target)
    n, d = X.shape
    V = W.shape[0]
    r = _chunk_size(chunk_size, n, V, d, np.dtype(ct).itemsize)
    Gx = np.empty((n, d), ct)
    GW = np.zeros((V, d), ct)
    Gb = np.zeros(V, ct) if B is not None else None
    for c0 in range(0, n, r):
        rows = slice(c0, min(c0 + r, n))
        zs = X[rows] @ W.T
        zt = TX[rows] @ TW.T
        if B is not None:
            zs += B
        if TB is not None:
            zt += TB
        _np_distillation_loss_with_grad(
            zs,
            zt,
            divergence=divergence,  # type: ignore[arg-type]
            beta=beta,
            temperature=temperature,
            reduction="none",
            target=None if labels is None else labels[rows],
            ignore_index=ignore_index,  # type: ignore[arg-type]
            out=zs,
        )
        zs *= g[rows, None].astype(ct)
        Gx[rows] = zs @ W
        GW += zs.T @ X[rows]
        if Gb is not None:
            Gb += zs.sum(0)
    return _grads(input, linear_weight, linear_bias, Gx, GW, Gb)


@torch.library.custom_op(
    "fastxent::linear_distillation_loss_backward",
    mutates_args=(),
    device_types="cpu",
    schema=(
        f"({_TWO_HEADS}, Tensor grad_loss, {_DIVERGENCE_ARGS}, int? ignore_index, "
        "int? chunk_size) -> (Tensor, Tensor, Tensor)"
    ),
)
def _linear_distillation_backward_op(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    teacher_input: torch.Tensor,
    teacher_linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    teacher_linear_bias: torch.Tensor | None,
    target: torch.Tensor | None,
    grad_loss: torch.Tensor,
    divergence: str,
    beta: float,
    temperature: float,
    ignore_index: int | None,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _linear_distillation_backward_impl(
        input, linear_weight, teacher_input, teacher_linear_weight, linear_bias,
        teacher_linear_bias, target, grad_loss, divergence, beta, temperature, ignore_index,
        chunk_size,
    )  # fmt: skip


@_linear_distillation_backward_op.register_fake
def _(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    teacher_input: torch.Tensor,
    teacher_linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    teacher_linear_bias: torch.Tensor | None,
    target: torch.Tensor | None,
    grad_loss: torch.Tensor,
    divergence: str,
    beta: float,
    temperature: float,
    ignore_index: int | None,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _head_grads_fake(input, linear_weight, linear_bias)


def _linear_distillation_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.eager = False
    ctx.options = inputs[7:]
    ctx.has_bias = inputs[4] is not None
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # (as for the cross-entropy's gradient output)
    if inputs[10] == "none":
        # The forward's gradients are those of the rows' sum: the answer
        # when every row's upstream value is the same (loss.sum(),
        # loss.mean()); kept for that case in an eager call.
        ctx.traced = False
        grads = tuple(output[1:])
        ctx.fresh = grads if inputs[-1] and all(_eager(g) for g in grads) else None
        ctx.save_for_backward(*inputs[:7])
    else:
        _keep_gradients(ctx, tuple(output[1:]), inputs[:7])


def _uniform(grad: torch.Tensor) -> torch.Tensor | None:
    """The one value of an upstream gradient, or None if its values differ."""
    flat = grad.reshape(-1)
    if flat.numel() == 0 or not bool((flat == flat[0]).all()):
        return None
    return flat[0]


def _linear_distillation_backward(
    ctx: Any, grad_loss: torch.Tensor | None, *_unused: Any
) -> tuple[Any, ...]:
    divergence, beta, temperature, reduction, ignore_index, chunk_size, computed = ctx.options
    if grad_loss is None:
        return (None,) * 14
    if reduction == "none":
        fresh, ctx.fresh = getattr(ctx, "fresh", None), None
        c = None if fresh is None else _uniform(grad_loss)
        if fresh is not None and c is not None:
            gx, gW, gb = _scale(fresh, c, True)
        else:
            gx, gW, gb = _backward_call(
                ctx,
                "linear_distillation_loss_backward",
                _linear_distillation_backward_impl,
                *ctx.saved_tensors,
                grad_loss,
                divergence,
                beta,
                temperature,
                ignore_index,
                chunk_size,
            )
    else:
        if not computed:
            raise RuntimeError(
                "torch.ops.fastxent.linear_distillation_loss ran with compute_grad=False and "
                "cannot be differentiated: call fastxent.torch.linear_distillation_loss, which "
                "asks for the gradients when the student's head requires one."
            )
        rerun = torch.ops.fastxent.linear_distillation_loss
        gx, gW, gb = _saved_backward(ctx, grad_loss, rerun)
    hx, hW, hb = _head_grads(ctx, 4, gx, gW, gb)
    return (hx, hW, None, None, hb) + (None,) * 9


_linear_distillation_op.register_autograd(
    _linear_distillation_backward, setup_context=_linear_distillation_setup
)
_EagerLinearDistillation = _eager_function(
    "linear_distillation_loss",
    _linear_distillation_impl,
    _linear_distillation_setup,
    _linear_distillation_backward,
)


def linear_distillation_loss(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    teacher_input: torch.Tensor,
    teacher_linear_weight: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    teacher_linear_bias: torch.Tensor | None = None,
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: Literal["batchmean", "sum", "none"] = "batchmean",
    target: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """:func:`distillation_loss` of two linear heads, never holding their logits.

    Equal (to rounding) to ``distillation_loss(F.linear(input,
    linear_weight, linear_bias), F.linear(teacher_input,
    teacher_linear_weight, teacher_linear_bias), ...)``, computed by
    :func:`fastxent.linear_distillation_loss_with_grad`: both heads' logits
    are formed ``chunk_size`` rows at a time, and the forward computes the
    gradients with respect to ``input``, ``linear_weight`` and
    ``linear_bias`` in the same pass when one of them requires a gradient
    (under ``"batchmean"``/``"sum"``, ``backward`` scales them).  Under
    ``"none"``, ``backward`` uses them when every row's upstream gradient
    is the same (``loss.sum()``, ``loss.mean()``); otherwise it runs the
    chunk loop again with each row's upstream value.  The teacher's tensors
    get no gradient: one requiring it is an error.  Under ``torch.no_grad()``
    the gradients are still computed (as by :func:`distillation_loss`), then
    dropped.

    Parameters
    ----------
    input : Tensor of shape (..., d)
        The student's features, float32 or float64 (float16/bfloat16 are
        computed in float32), on the CPU.
    linear_weight : Tensor of shape (V, d)
        The student's head, of input's dtype.
    teacher_input : Tensor of shape (..., d_teacher)
        The teacher's features, the same rows as ``input``.
    teacher_linear_weight : Tensor of shape (V, d_teacher)
        The teacher's head.
    linear_bias : Tensor of shape (V,), optional
        The student's bias.
    teacher_linear_bias : Tensor of shape (V,), optional
        The teacher's bias.
    {torch_distill_options}
    chunk_size : int >= 1, optional
        Rows per chunk (see :func:`fastxent.linear_cross_entropy`).

    Returns
    -------
    Tensor
        Of input's dtype: a scalar, or of shape ``input.shape[:-1]`` under
        ``"none"``.

    Raises
    ------
    ValueError, TypeError, RuntimeError
        As :func:`distillation_loss`; also mismatched heads.
    ImportError
        Without SciPy, whose BLAS computes the products.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> x, tx = torch.randn(8, 4, requires_grad=True), torch.randn(8, 6)
    >>> student, teacher = torch.nn.Linear(4, 10), torch.nn.Linear(6, 10).requires_grad_(False)
    >>> loss = fxt.linear_distillation_loss(
    ...     x, student.weight, tx, teacher.weight, linear_bias=student.bias,
    ...     teacher_linear_bias=teacher.bias, divergence="jsd")
    >>> ref = fxt.distillation_loss(student(x), teacher(tx), divergence="jsd")
    >>> bool(torch.allclose(loss, ref, atol=1e-6))
    True
    >>> loss.backward()
    >>> student.weight.grad.shape
    torch.Size([10, 4])
    """
    _, V = _head(input, linear_weight, linear_bias)
    _, tV = _head(teacher_input, teacher_linear_weight, teacher_linear_bias, "teacher_")
    batch = tuple(input.shape[:-1])
    if tuple(teacher_input.shape[:-1]) != batch or tV != V:
        raise ValueError(
            f"the teacher's head must give the student's logits' shape {batch + (V,)}: "
            f"teacher_input {tuple(teacher_input.shape)} and teacher_linear_weight "
            f"{tuple(teacher_linear_weight.shape)} give {tuple(teacher_input.shape[:-1]) + (tV,)}."
        )
    for name, t in (
        ("teacher_input", teacher_input),
        ("teacher_linear_weight", teacher_linear_weight),
        ("teacher_linear_bias", teacher_linear_bias),
    ):
        _check_no_grad(name, t)
    tgt = _distill_target(target, batch)
    opts = _divergence_args(divergence, beta, temperature, reduction)
    params = (input, linear_weight) + (() if linear_bias is None else (linear_bias,))
    args = (
        input.reshape(-1, input.shape[-1]),
        linear_weight,
        teacher_input.reshape(-1, teacher_input.shape[-1]),
        teacher_linear_weight,
        linear_bias,
        teacher_linear_bias,
        tgt,
        *opts,
        _index(ignore_index),
        None if chunk_size is None else int(chunk_size),
        torch.is_grad_enabled() and any(p.requires_grad for p in params),
    )
    tensors = (input, linear_weight, teacher_input, teacher_linear_weight, linear_bias)
    loss, _, _, _ = _run_op(
        "linear_distillation_loss",
        _EagerLinearDistillation,
        _linear_distillation_impl,
        tensors + (teacher_linear_bias, target),
        args,
    )
    result: torch.Tensor = loss.reshape(batch) if reduction == "none" else loss
    return result


# The loss options' parameter docs, shared with the other adapter (_docs).
for _f in (token_logprobs, linear_token_logprobs, distillation_loss, linear_distillation_loss):
    _docs.fill(_f)
del _f
