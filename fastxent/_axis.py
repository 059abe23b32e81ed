"""The class axis of the loss and softmax functions (``axis=``).

The kernels take rows of classes that are contiguous in memory.  Classes on
another axis (PyTorch's ``(N, C, L)`` layout with ``axis=1``) are moved last
in one contiguous copy, the rows are computed there, and a result of the
logits' shape (a gradient, a softmax) is copied back into an array of the
logits' shape in C order (the caller's ``out`` when given).  The copies are
what a caller's ``np.moveaxis`` + ``np.ascontiguousarray`` and the move back
cost: two transposing copies, which NumPy makes at a fraction of a plain
copy's bandwidth, so they can cost more than the fused pass itself (a
transposing copy in C, or a kernel over strided classes, would cut that;
neither exists yet).  ``axis=-1`` (the default) never comes here, so the
last-axis path is unchanged.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _validation as v


def is_last(axis: object) -> bool:
    """Whether ``axis`` is the default ``-1`` (cheap: no array conversion)."""
    return type(axis) is int and axis == -1


class ClassAxis:
    """Logits whose classes lie on axis ``ax``, not the last one.

    ``z`` is the logits moved to ``(..., m)`` (a view: the validation that
    follows makes its contiguous copy), ``shape`` the logits' own shape.
    """

    def __init__(self, z: NDArray[Any], ax: int, axis: object) -> None:
        self.ax = ax
        self.axis = axis
        self.shape: tuple[int, ...] = z.shape
        self.z = np.moveaxis(z, ax, -1)
        self.batch_shape = self.z.shape[:-1]

    def target(self, target: ArrayLike) -> ArrayLike:
        """The target moved like the logits: class probabilities (the
        logits' shape) move their class axis last; class indices (the
        logits' shape without the class axis) are already in place."""
        t = v.as_array(target, "target")  # refuses masked arrays, tensors needing grad
        if t.shape == self.shape:
            return np.moveaxis(t, self.ax, -1)
        if t.shape == self.batch_shape:
            return target  # as given: its messages may name its type (pandas)
        raise ValueError(v.target_shape_message(t.shape, self.shape, self.ax, self.axis))

    def output(self, out: object, dtype: np.dtype[Any]) -> NDArray[Any]:
        """The array of the logits' shape that receives a gradient or a
        softmax: ``out`` once checked, or a new C-ordered array."""
        if out is None:
            return np.empty(self.shape, dtype=dtype)
        if isinstance(out, np.ndarray) and out.shape != self.shape:
            moved = " (the shape with the classes moved last)" if out.shape == self.z.shape else ""
            raise ValueError(
                f"out must have the logits' shape {self.shape}, with the classes on axis "
                f"{self.ax} as in the logits; got shape {out.shape}{moved}."
            )
        v.check_out(out, self.shape, dtype)
        assert isinstance(out, np.ndarray)  # check_out raised otherwise
        return out

    def put_back(self, rows: NDArray[Any], result: NDArray[Any]) -> NDArray[Any]:
        """Copy ``rows`` (classes last) into ``result`` (classes on ``ax``)."""
        np.moveaxis(result, self.ax, -1)[...] = rows.reshape(self.z.shape)
        return result


def class_axis(logits: ArrayLike, axis: object) -> ClassAxis | None:
    """``None`` when ``axis`` names the logits' last axis (nothing to move),
    else the logits with that axis moved last.

    ``axis`` must be an integer in ``[-ndim, ndim)``: a bool or a non-integer
    is a TypeError, an integer out of range NumPy's ``AxisError`` (a
    ValueError and an IndexError).
    """
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"axis must be an integer (the class axis); got {axis!r}.")
    try:
        ax = operator.index(axis)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"axis must be an integer (the class axis); got {axis!r}.") from None
    z = v.as_array(logits, "logits")
    if z.ndim == 0:
        return None  # the logits' own check says they need a class axis
    if not -z.ndim <= ax < z.ndim:
        raise np.exceptions.AxisError(
            f"axis={ax} is out of bounds for logits of shape {z.shape} "
            f"(ndim={z.ndim}: axis must be in [{-z.ndim}, {z.ndim - 1}])."
        )
    ax %= z.ndim
    if ax == z.ndim - 1:
        return None
    if z.shape[ax] == 0:
        raise ValueError(
            f"logits must have at least one class (m >= 1) on axis {ax}; got shape {z.shape}."
        )
    return ClassAxis(z, ax, axis)


def output_dtype(z: NDArray[Any]) -> np.dtype[Any]:
    """The dtype of a gradient or softmax of logits ``z``: float16 and
    bfloat16 stay in it, other dtypes become the compute dtype."""
    return z.dtype if v.half_kind(z.dtype) else v.compute_dtype(z.dtype)
