"""What the operators' autograd formulas share: the gradients a forward
computed, kept for the backward to hand out; and the eager shortcut, which
runs an operator's forward and backward on plain tensors without the
dispatcher."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


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
# The eager shortcut


def _plain_eager(*tensors: torch.Tensor | None) -> bool:
    """Whether an eager call on these tensors may skip the dispatcher: plain
    CPU tensors, no compilation, no tracing or other dispatch mode."""
    for t in tensors:  # a loop, not all(<generator>): this runs on every small call
        if t is not None and type(t) is not torch.Tensor:
            return False
    return not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None


def _eager_function(name: str, impl: Any, setup: Any, backward: Any) -> Any:
    """An ``autograd.Function`` with an operator's forward (``impl``),
    ``setup_context`` and backward, for eager calls on plain tensors (as
    ``_loss._EagerCrossEntropy``); ``ctx.eager`` tells the backward it may
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


# ---------------------------------------------------------------------------
# A linear head's gradients (input, linear_weight, linear_bias)


def _head_grads_fake(
    input: torch.Tensor, linear_weight: torch.Tensor, linear_bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gb = input.new_empty((0,) if linear_bias is None else linear_bias.shape)
    return input.new_empty(input.shape), linear_weight.new_empty(linear_weight.shape), gb


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
