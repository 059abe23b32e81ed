"""Input checking and normalisation for the public API.

Everything the compiled kernels assume (dtype, contiguity, native byte
order, label range, option ranges) is established here, with messages that
say what was expected and what came, so that no Cython buffer error ever
reaches a user.  Nothing here copies an n x m array unless it has to
(a dtype conversion, a non-contiguous layout, or aliasing with ``out``).
"""

from __future__ import annotations

import operator
import os
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels
from ._typing import FloatArray

REDUCTIONS: tuple[Literal["mean", "sum", "none"], ...] = ("mean", "sum", "none")
DEFAULT_IGNORE_INDEX = -100

_INT64_MAX = np.iinfo(np.int64).max
_F16 = np.dtype(np.float16)
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_NATIVE_LABELS = (np.dtype(np.int32), np.dtype(np.int64))


class LabelError(ValueError):
    """A class index outside ``[0, m)`` (and not ``ignore_index``, when one
    applies), with its value and flat position: a caller that checked part
    of a target (a Dask block) renames the position in the whole
    (:meth:`at`)."""

    def __init__(self, label: int, position: int, m: int, ignore: int | None = None) -> None:
        self.label, self.position, self.m, self.ignore = label, position, m, ignore
        unless = "" if ignore is None else f" that is not ignore_index={ignore}"
        super().__init__(
            f"target contains a label outside [0, {m}){unless}: {label} at flat position "
            f"{position}."
        )

    def __reduce__(self) -> tuple[Any, ...]:  # pickled by distributed
        return (type(self), (self.label, self.position, self.m, self.ignore))

    def at(self, position: int) -> LabelError:
        """The same error at another flat position."""
        return LabelError(self.label, position, self.m, self.ignore)


def half_kind(dtype: np.dtype[Any]) -> int:
    """1 for float16, 2 for bfloat16 (ml_dtypes' type, recognised by name so
    that ml_dtypes need not be imported), else 0."""
    if dtype == _F16:
        return 1
    if dtype.name == "bfloat16" and dtype.itemsize == 2:
        return 2
    return 0


def compute_dtype(dtype: np.dtype[Any], what: str = "logits") -> np.dtype[np.floating[Any]]:
    """The dtype fastxent computes in for an input of ``dtype``."""
    if dtype.kind == "f" and dtype.itemsize <= 8:
        return np.dtype(np.float64 if dtype.itemsize == 8 else np.float32)
    if dtype.kind in "iu":
        return np.dtype(np.float64)
    if half_kind(dtype):
        return _F32
    raise TypeError(
        f"{what} must be a real floating or integer array (float32 and float64 are "
        f"computed natively, float16 and bfloat16 in float32, integers in float64). "
        f"Got dtype={dtype}."
    )


def aligned(a: NDArray[Any]) -> NDArray[Any]:
    """``a``, copied if its data is misaligned for its dtype (e.g. a view
    at an odd byte offset of a buffer): the kernels load whole elements."""
    return a if a.flags.aligned else a.copy()


def check_plain(a: object, name: str) -> None:
    """Refuse what ``np.asarray`` would read without what makes it what it
    is: a masked array (the mask would be dropped: every value used, masked
    or not) and a torch tensor that requires grad (torch refuses the
    conversion with an error that does not say what to do).  Torch is
    recognised by the type's module, so it is never imported here."""
    if isinstance(a, np.ma.MaskedArray):
        if name == "target":
            how = (
                "For masked class indices pass target.filled(ignore_index) (those samples are "
                "then ignored), or drop the masked samples (np.ma.compressed, or indexing "
                "with ~target.mask)."
            )
        else:
            how = (
                f"Fill the masked entries ({name}.filled(value)) or drop them (np.ma.compressed, "
                f"or indexing with ~{name}.mask) first."
            )
        raise TypeError(
            f"{name} is a masked array (numpy.ma.MaskedArray); fastxent does not honour masks "
            f"and would use the masked values too. {how}"
        )
    if getattr(a, "requires_grad", False) is True and type(a).__module__.startswith("torch"):
        raise TypeError(
            f"{name} is a torch tensor that requires grad, which NumPy cannot read. Pass "
            f"{name}.detach() (fastxent's result then carries no autograd history), or use "
            "the PyTorch adapter fastxent.torch for a loss that backpropagates."
        )


def as_array(a: ArrayLike, name: str, dtype: Any = None) -> NDArray[Any]:
    """``np.asarray(a, dtype)`` after :func:`check_plain`."""
    if type(a) is not np.ndarray:
        check_plain(a, name)
    return np.asarray(a, dtype=dtype)


def as_logits(
    logits: ArrayLike, name: str = "logits"
) -> tuple[NDArray[Any], tuple[int, ...], np.dtype[np.floating[Any]], int]:
    """Return ``(z2d, shape, dtype, half)``: the logits as a C-contiguous
    ``(n, m)`` array of the compute dtype, the original shape, that dtype,
    and 0, or for float16 (1) and bfloat16 (2) logits, which are computed in
    float32 a block at a time, that kind, with ``z2d`` the 16-bit values
    viewed as uint16 (C-contiguous)."""
    z = as_array(logits, name)
    dtype = z.dtype
    if (
        (dtype is _F32 or dtype is _F64)
        and z.ndim == 2
        and z.shape[1]
        and z.flags.c_contiguous
        and z.flags.aligned
    ):
        return z, z.shape, dtype, 0  # the common case, without the general checks
    half = half_kind(dtype)
    dtype = compute_dtype(dtype)
    if z.ndim == 0:
        raise ValueError(
            "logits must have at least one dimension (..., m) with the classes last; "
            "got a 0-d array."
        )
    m = z.shape[-1]
    if m == 0:
        raise ValueError(f"logits must have at least one class (m >= 1); got shape {z.shape}.")
    if half:
        zh = aligned(np.ascontiguousarray(z)).view(np.uint16)
        return zh.reshape(-1, m), z.shape, dtype, half
    z2 = aligned(np.ascontiguousarray(z, dtype=dtype))
    return z2.reshape(-1, m), z.shape, dtype, 0


def as_labels_or_probs(
    target: ArrayLike,
    shape: tuple[int, ...],
    dtype: np.dtype[np.floating[Any]],
    keep: np.dtype[Any] | None = None,
    axis_hint: bool = False,
) -> tuple[Literal["labels", "probs"], NDArray[Any]]:
    """Classify and normalise the target.

    Returns ``("labels", int32/int64 1-d array)`` for class indices of shape
    ``shape[:-1]``, or ``("probs", (n, m) array of dtype)`` for class
    probabilities of shape ``shape`` (probabilities of dtype ``keep``, the
    logits' half-precision dtype, stay in it, viewed as uint16).  A target
    of another shape is a ValueError; ``axis_hint`` (for the functions that
    take ``axis=``) says which ``axis=`` would make it fit, if one would.
    """
    t = as_array(target, "target")
    if t.shape == shape[:-1]:
        if t.dtype in _NATIVE_LABELS and t.ndim == 1 and t.flags.c_contiguous and t.flags.aligned:
            return "labels", t
        if t.dtype.kind not in "iu":
            raise TypeError(_non_integer_labels_message(target, t))
        if t.dtype.kind == "u" and t.dtype.itemsize >= 8 and t.size and t.max() > _INT64_MAX:
            pos = int(np.argmax(t.reshape(-1) > _INT64_MAX))
            raise LabelError(int(t.reshape(-1)[pos]), pos, shape[-1])
        if t.dtype not in _NATIVE_LABELS:
            t = t.astype(np.int64)
        return "labels", aligned(np.ascontiguousarray(t)).reshape(-1)
    if t.shape == shape:
        if t.dtype.kind in "iu":
            raise ValueError(_integer_target_message(t.dtype, shape))
        if keep is not None and t.dtype == keep:
            return "probs", aligned(np.ascontiguousarray(t)).view(np.uint16).reshape(-1, shape[-1])
        if t.dtype.kind != "f" and not half_kind(t.dtype):
            raise TypeError(
                f"class-probability targets must be floating-point numbers; got dtype={t.dtype}."
            )
        t2 = aligned(np.ascontiguousarray(t, dtype=dtype))
        return "probs", t2.reshape(-1, shape[-1])
    raise ValueError(target_shape_message(t.shape, shape, len(shape) - 1, -1, axis_hint))


def target_shape_message(
    t_shape: tuple[int, ...],
    shape: tuple[int, ...],
    ax: int,
    axis: object,
    axis_hint: bool = True,
) -> str:
    """The error for a target that fits logits of ``shape`` with the classes
    on axis ``ax`` (given as ``axis``) neither as class indices nor as class
    probabilities; with ``axis_hint``, the ``axis=`` under which it would
    fit as class indices (PyTorch's ``(N, C, L)`` layout has them on 1)."""
    labels = shape[:ax] + shape[ax + 1 :]
    where = "" if ax == len(shape) - 1 else f" with the classes on axis={axis}"
    msg = (
        f"target must have shape {labels} (class indices) or {shape} "
        f"(class probabilities) for logits of shape {shape}{where}; got shape {t_shape}."
    )
    fits = [k for k in range(len(shape)) if k != ax and shape[:k] + shape[k + 1 :] == t_shape]
    if axis_hint and fits:
        k = fits[0]
        if k == len(shape) - 1:
            msg += (
                " It is the logits' shape without the last axis: if the classes are "
                "last, pass axis=-1 (the default)."
            )
        else:
            msg += (
                f" It is the logits' shape without axis {k}: if the classes are on axis {k} "
                f"(as in PyTorch's (N, C, ...) layout), pass axis={k}."
            )
    return msg


def _integer_target_message(dtype: np.dtype[Any], shape: tuple[int, ...]) -> str:
    """Integer targets are always class indices, whatever their shape: an
    integer array of the logits' own shape is a mistake, not probabilities."""
    if len(shape) == 1:
        return (
            f"integer targets are class indices and must have shape {shape[:-1]} "
            f"(logits.shape[:-1]); got an integer array of the logits' own shape {shape}. "
            f"1-d logits of shape {shape} are ONE sample of {shape[0]} classes. For a binary "
            "problem with one logit z per sample, pass the two-class logits "
            "np.stack([np.zeros_like(z), z], axis=-1) with the 0/1 labels."
        )
    return (
        f"integer targets are class indices and must have shape {shape[:-1]} "
        f"(logits.shape[:-1]); got an integer ({dtype}) array of the logits' own shape "
        f"{shape}. For one-hot rows pass target.argmax(-1); for class probabilities pass a "
        "floating-point array."
    )


def _non_integer_labels_message(target: object, t: NDArray[Any]) -> str:
    msg = f"class-index targets must be integers; got dtype={t.dtype}."
    if t.dtype.kind == "f":
        return msg + " Class-probability targets must have the full logits shape."
    if str(getattr(target, "dtype", "")) == "category":
        # A pandas Categorical or categorical Series: NumPy sees its values.
        codes = ".codes" if type(target).__name__ == "Categorical" else ".cat.codes"
        return msg + (
            f" This is a pandas categorical: pass its integer codes, target{codes}"
            " (with the categories in the order of the logits' columns)."
        )
    if t.dtype.kind in "OUS":
        return msg + (
            " Class names must be encoded as integers first, e.g. "
            "np.unique(y, return_inverse=True)[1] (or series.cat.codes for a pandas "
            "categorical)."
        )
    return msg


def check_reduction(reduction: object) -> Literal["mean", "sum", "none"]:
    # Any str (np.str_ too, as from an array of names), returned as a plain str.
    if isinstance(reduction, str):
        for r in REDUCTIONS:
            if reduction == r:
                return r
    raise ValueError(f"reduction must be one of 'mean', 'sum' or 'none'; got {reduction!r}.")


# More threads than this only oversubscribe the machine (and a request for
# thousands can make libgomp abort the process when it cannot create them).
_MAX_THREADS = max(8, 4 * (os.cpu_count() or 1))


def resolve_threads(num_threads: Any, size: int | None = None) -> int:
    """``None`` -> ``omp_get_max_threads()`` now (so OMP_NUM_THREADS and
    threadpoolctl limits are honoured), or 1 when ``size`` (the number of
    logits) is below the kernels' serial threshold anyway, or while the
    kernels find their threads kept waiting by another parallel program
    (``_kernels.default_threads``); otherwise an integer >= 1, capped at
    ``max(8, 4 * os.cpu_count())``."""
    if num_threads is None:
        if size is not None and size < _kernels.SERIAL_BELOW:
            return 1
        return max(1, int(_kernels.default_threads()))
    if isinstance(num_threads, (bool, np.bool_)):
        raise TypeError(f"num_threads must be None or an integer >= 1; got {num_threads!r}.")
    try:
        nt = operator.index(num_threads)
    except TypeError:
        raise TypeError(
            f"num_threads must be None or an integer >= 1; got {num_threads!r}."
        ) from None
    if nt < 1:
        raise ValueError(f"num_threads must be None or an integer >= 1; got {nt}.")
    return min(nt, _MAX_THREADS)


def _real_vector(
    value: ArrayLike, name: str, length: tuple[int, ...], shape_text: str
) -> NDArray[np.float64]:
    a = as_array(value, name)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be an array of real numbers; got dtype={a.dtype}.")
    if a.shape != length:
        raise ValueError(f"{name} must have shape {shape_text}; got shape {a.shape}.")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite; it contains NaN or inf.")
    # Negative weights are allowed, as PyTorch (class weights) and
    # scikit-learn (sample weights) allow them.
    return a


def class_weight(
    weight: ArrayLike | None, m: int, dtype: np.dtype[np.floating[Any]]
) -> FloatArray | None:
    """``(m,)`` class weights in the compute dtype (the kernel also sums the
    ``"mean"`` denominator from these), or ``None``."""
    if weight is None:
        return None
    w = _real_vector(weight, "weight", (m,), f"({m},) (one per class)")
    with np.errstate(over="ignore"):  # overflow is reported below, as an error
        w_native = np.ascontiguousarray(w, dtype=dtype)
    if not np.all(np.isfinite(w_native)):
        raise ValueError(f"weight must be finite in the compute dtype {dtype}; it overflows.")
    if np.any((w != 0) & (w_native == 0)):
        tiny = float(np.abs(w[w != 0]).min())
        raise ValueError(
            f"weight has non-zero entries that underflow to 0 in the compute dtype {dtype} "
            f"(smallest magnitude {tiny!r}); rescale the weights."
        )
    return w_native


def sample_weight(
    value: ArrayLike | None, batch_shape: tuple[int, ...]
) -> NDArray[np.float64] | None:
    if value is None:
        return None
    s = _real_vector(value, "sample_weight", batch_shape, f"{batch_shape} (logits.shape[:-1])")
    return np.ascontiguousarray(s).reshape(-1)


def softcap(value: Any, dtype: np.dtype[np.floating[Any]]) -> float:
    """The soft-cap ``c`` (0.0 for ``None``); ``c`` and ``1/c`` must be finite
    in the compute dtype, in which the kernel applies them."""
    if value is None:
        return 0.0
    c = float_option(value, "softcap", 0.0, low_open=True)
    info = np.finfo(dtype)
    if c > float(info.max) or 1.0 / c > float(info.max):
        raise ValueError(
            f"softcap must lie in [{1.0 / float(info.max):.3g}, {float(info.max):.3g}] "
            f"for {dtype} logits (c and 1/c must be finite there); got {value!r}."
        )
    return c


def _not_a_number(value: Any) -> bool:
    """Bools and strings, which ``float()`` and ``numbers.Real`` checks
    take for numbers (``True`` is 1.0, ``"0.1"`` is 0.1)."""
    return isinstance(value, (bool, np.bool_, str, bytes)) or (
        isinstance(value, np.ndarray) and value.dtype.kind not in "iuf"
    )


def real_number(value: Any, name: str) -> float:
    """``float(value)`` for a real number: a Python or NumPy integer or
    float (or a 0-d array of one); a bool, a string or anything else is a
    TypeError that names ``name``."""
    if _not_a_number(value):
        raise TypeError(
            f"{name} must be a real number; got {value!r} of type {type(value).__name__}."
        )
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be finite; got {value!r}.") from None
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number; got {value!r}.") from None


def number_param(value: Any, name: str, owner: str) -> None:
    """An estimator's numeric parameter before its range check: a bool or a
    string is a TypeError and NaN a ValueError (NaN passes every range
    comparison, so a range check alone lets it through)."""
    if _not_a_number(value):
        raise TypeError(
            f"The {name!r} parameter of {owner} must be a number, not a "
            f"{type(value).__name__}. Got {value!r} instead."
        )
    if isinstance(value, (float, np.floating)) and np.isnan(value):
        raise ValueError(
            f"The {name!r} parameter of {owner} must be a number, not NaN. Got {value!r} instead."
        )


def float_option(
    value: Any, name: str, low: float, high: float | None = None, *, low_open: bool = False
) -> float:
    if type(value) is float and value == low and not low_open:
        return value  # the default of every option
    v = real_number(value, name)
    bad = not np.isfinite(v) or v < low or (low_open and v == low)
    if high is not None and v > high:
        bad = True
    if bad:
        lo = "(" if low_open else "["
        hi = f"{high}]" if high is not None else "inf)"
        raise ValueError(f"{name} must be finite and in {lo}{low}, {hi}; got {value!r}.")
    return v


def ignore_index(value: Any, kind: str) -> int | None:
    """An int64 class index to ignore, or None: no label is ignored."""
    if value is None:
        return None
    if type(value) is int:
        v = value
    elif isinstance(value, (bool, np.bool_)):
        raise TypeError(f"ignore_index must be an integer; got {value!r}.")
    else:
        try:
            v = operator.index(value)
        except TypeError:
            raise TypeError(f"ignore_index must be an integer; got {value!r}.") from None
    if kind == "probs" and v != DEFAULT_IGNORE_INDEX:
        raise ValueError(
            "ignore_index applies to class-index targets only; it cannot be used "
            "with class-probability targets."
        )
    if not -(2**63) <= v < 2**63:
        raise ValueError(f"ignore_index must fit in int64; got {v}.")
    return v


def check_out(
    out: object, shape: tuple[int, ...], dtype: np.dtype[Any], name: str = "out"
) -> NDArray[Any]:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array; got {type(out).__name__}.")
    check_plain(out, name)
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {out.shape}.")
    if out.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}; got dtype={out.dtype}.")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous.")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable; got a read-only array.")
    if not out.dtype.isnative:
        raise ValueError(f"{name} must be in native byte order.")
    if not out.flags.aligned:
        raise ValueError(f"{name} must be aligned; got a view at a misaligned address.")
    return out.reshape(-1, shape[-1])


def detach_from(arr: FloatArray, out: FloatArray | None) -> FloatArray:
    """``arr``, copied if it overlaps ``out`` without being ``out`` itself
    (exact aliasing of logits and out is the supported in-place mode)."""
    if out is None or not np.may_share_memory(arr, out):
        return arr
    same = (
        arr.shape == out.shape
        and arr.__array_interface__["data"][0] == out.__array_interface__["data"][0]
    )
    return arr if same else arr.copy()
