"""``torch.ops.fastxent.token_logprobs`` and its ``_backward``, and
:func:`token_logprobs`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import _docs
from .._logprob import token_logprobs as _np_token_logprobs
from .._logprob import token_logprobs_vjp as _np_token_logprobs_vjp
from ._autograd import _backward_call, _eager_function, _run_op
from ._checks import _check_bool, _check_labels, _check_tensor, _index, _number
from ._convert import _empty, _np, _torch, _upstream


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


# The loss options' parameter docs, shared with the other adapter (_docs).
_docs.fill(token_logprobs)
