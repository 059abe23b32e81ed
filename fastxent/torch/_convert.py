"""Tensors to NumPy arrays and back, without copies where the memory allows."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


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


def _upstream(grad: torch.Tensor | None) -> Any:
    """An upstream gradient (one value per row) for the NumPy functions."""
    return None if grad is None else _np(grad.contiguous())


def _optional_np(t: torch.Tensor | None) -> Any:
    return None if t is None else _np(t.contiguous())


def _grads(
    x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, gx: Any, gW: Any, gb: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Distinct empty tensors: a custom op's outputs may not alias each other.
    return (
        x.new_empty((0,)) if gx is None else _torch(gx, x.dtype),
        x.new_empty((0,)) if gW is None else _torch(gW, W.dtype),
        x.new_empty((0,)) if gb is None or b is None else _torch(gb, b.dtype),
    )
