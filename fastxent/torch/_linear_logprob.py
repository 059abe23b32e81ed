"""``torch.ops.fastxent.linear_token_logprobs`` and its ``_backward``, and
:func:`linear_token_logprobs`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _docs
from .._logprob import linear_token_logprobs as _np_linear_token_logprobs
from .._logprob import linear_token_logprobs_vjp as _np_linear_token_logprobs_vjp
from ._autograd import _backward_call, _eager_function, _head_grads, _head_grads_fake, _run_op
from ._checks import _check_bool, _check_labels, _head, _index, _number
from ._convert import _grads, _np, _optional_np, _torch, _upstream


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


# The loss options' parameter docs, shared with the other adapter (_docs).
_docs.fill(linear_token_logprobs)
