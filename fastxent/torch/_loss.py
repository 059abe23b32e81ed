"""``torch.ops.fastxent.cross_entropy``, its eager twin, :func:`cross_entropy`
and :class:`CrossEntropyLoss`."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from .. import _validation as v
from .._loss import reduce_total, run_spec
from .._spec import loss_spec
from ._autograd import _keep_gradients, _plain_eager, _saved_backward
from ._checks import _check_no_grad, _check_reduction, _check_target, _check_tensor
from ._convert import _np, _torch


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
    loss: np.floating[Any] | np.ndarray[Any, Any]
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
