"""The checks of the public functions' arguments, made before any operator
runs (so also under ``torch.compile``)."""

from __future__ import annotations

import numpy as np
import torch

from .. import _validation as v

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


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
