"""``torch.ops.fastxent.distillation_loss`` and :func:`distillation_loss`."""

from __future__ import annotations

from typing import Any, Literal

import torch

from .. import _docs
from .._distill import _run as _distill_run
from .._distill import distillation_loss_with_grad as _np_distillation_loss_with_grad
from ._autograd import _eager_function, _keep_gradients, _run_op, _saved_backward
from ._checks import _check_labels, _check_no_grad, _check_tensor, _index, _number
from ._convert import _empty, _np, _optional_np, _torch


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
    (then the kernel computes the loss alone)."""
    options: dict[str, Any] = dict(
        divergence=divergence,
        beta=beta,
        temperature=temperature,
        reduction=reduction,
        target=_optional_np(target),
        ignore_index=ignore_index,
    )
    s, t = _np(student_logits.contiguous()), _np(teacher_logits.contiguous())
    if not compute_grad:
        loss, _ = _distill_run(
            s, t, **options, axis=-1, out=None, num_threads=None, want_grad=False
        )
        return _torch(loss, student_logits.dtype), student_logits.new_empty((0,))
    grad = _empty(student_logits.shape, student_logits.dtype)
    loss, _ = _np_distillation_loss_with_grad(s, t, **options, out=_np(grad))
    return _torch(loss, student_logits.dtype), grad


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
    ``torch.no_grad()`` (or when ``student_logits`` does not require a
    gradient) the loss alone is computed.

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


# The loss options' parameter docs, shared with the other adapter (_docs).
_docs.fill(distillation_loss)
