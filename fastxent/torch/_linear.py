"""``torch.ops.fastxent.linear_cross_entropy`` and its ``_backward``, and
:func:`linear_cross_entropy`."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from .. import _docs
from .._linear import _linear_run
from ._autograd import _keep_gradients, _saved_backward
from ._checks import _check_no_grad, _check_reduction, _check_target, _check_tensor
from ._convert import _grads, _np, _torch


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
