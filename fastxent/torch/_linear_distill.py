"""``torch.ops.fastxent.linear_distillation_loss`` and its ``_backward``, and
:func:`linear_distillation_loss`."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from .. import _docs
from .._distill import _linear_run as _linear_distill_run
from .._distill import distillation_loss_with_grad as _np_distillation_loss_with_grad
from .._linear import _chunk_size
from ._autograd import (
    _backward_call,
    _eager,
    _eager_function,
    _head_grads,
    _head_grads_fake,
    _keep_gradients,
    _run_op,
    _saved_backward,
    _scale,
)
from ._checks import _check_no_grad, _head, _index
from ._convert import _grads, _np, _optional_np, _torch
from ._distill import _DIVERGENCE_ARGS, _distill_target, _divergence_args

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
    # Without compute_grad, the loss alone: no backward GEMMs.
    loss, gx, gW, gb = _linear_distill_run(
        _np(input.contiguous()),
        _np(linear_weight.contiguous()),
        _np(teacher_input.contiguous()),
        _np(teacher_linear_weight.contiguous()),
        linear_bias=_optional_np(linear_bias),
        teacher_linear_bias=_optional_np(teacher_linear_bias),
        divergence=divergence,
        beta=beta,
        temperature=temperature,
        reduction=reduction,
        target=_optional_np(target),
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        num_threads=None,
        want_grad=compute_grad,
    )
    return (_torch(loss, input.dtype),) + _grads(input, linear_weight, linear_bias, gx, gW, gb)


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
    r = _chunk_size(chunk_size, n, V, d, np.dtype(ct).itemsize, buffers=2)
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
    (or when none of them requires a gradient) the loss alone is computed:
    the two heads' logits a chunk at a time, no backward products.

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
_docs.fill(linear_distillation_loss)
