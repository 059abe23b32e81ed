"""The benchmark cases: shapes, dtypes, the data, and the memory a run needs.

Part of :mod:`fastxent.bench`, which re-exports the public names: import
them from there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._linear import default_chunk_size

#: The benchmark shapes, (rows n, classes m), few to many classes: the
#: pytest-benchmark suite's cases and ``python -m fastxent bench --large``.
#: The float64 4 096 x 32 000 and 1 024 x 128 256 logits are 1 GiB each.
SHAPES: list[tuple[int, int]] = [
    (100_000, 10),
    (65_536, 100),
    (16_384, 1_000),
    (4_096, 32_000),
    (1_024, 128_256),
]
#: The most logits a case of the default run holds: that of 16 384 x 1 000.
DEFAULT_MAX_ELEMENTS = 16_384_000
#: ``python -m fastxent bench``'s default: the classes of ``SHAPES``,
#: with rows cut so that no case holds more than ``DEFAULT_MAX_ELEMENTS``
#: logits (the default run fits a laptop).
DEFAULT_SHAPES: list[tuple[int, int]] = [(min(n, DEFAULT_MAX_ELEMENTS // m), m) for n, m in SHAPES]
#: ``bench --quick``: tiny shapes, for the tests and a first look.
QUICK_SHAPES: list[tuple[int, int]] = [(2_000, 10), (500, 100), (64, 1_000)]
#: The dtypes every benchmark runs.
DTYPES: tuple[str, ...] = ("float32", "float64")
#: Logits are standard normal times this: a softmax that is neither flat
#: nor one-hot, and no row that under- or overflows.
LOGIT_SCALE = 3.0
#: Arrays of the logits' size a case of :func:`run_bench` holds throughout:
#: the logits and the ``out=`` gradient.
CASE_ARRAYS = 2
#: Arrays of the logits' size a timed call adds: fastxent allocating its
#: gradient, NumPy its shifted copy; torch its saved log-softmax, the
#: gradient and a temporary of backward; JAX the logits copied to its device,
#: the gradient and a temporary; scikit-learn its preallocated gradient_out.
CALL_ARRAYS = {"fastxent_alloc": 1, "numpy": 1, "torch": 3, "jax": 3, "sklearn": 1}
#: Per-row temporaries (labels, row maxima, sums, ...), in 8-byte values per row.
ROW_VALUES = 8


# ---------------------------------------------------------------------- the data


def make_case(
    n: int, m: int, dtype: str | np.dtype[Any] = "float64", *, seed: int = 0
) -> tuple[NDArray[Any], NDArray[np.intp]]:
    """Logits and labels of one benchmark case.

    ``z = LOGIT_SCALE * N(0, 1)`` of shape ``(n, m)`` in ``dtype`` and
    labels drawn uniformly from ``0 .. m-1``, both from
    ``numpy.random.default_rng(seed)`` (the logits first), so that every
    benchmark of the same shape sees the same numbers.

    Parameters
    ----------
    n, m : int
        Rows and classes, both at least 1.
    dtype : str or numpy.dtype, default "float64"
        The logits' floating dtype (float32 or float64).
    seed : int, default 0
        Seed of the random generator.

    Returns
    -------
    z : numpy.ndarray, shape (n, m), C-contiguous
        The logits.
    y : numpy.ndarray of numpy.intp, shape (n,)
        The labels.

    Raises
    ------
    ValueError
        If ``n`` or ``m`` is below 1 or ``dtype`` is not float32 or float64.

    Examples
    --------
    >>> from fastxent.bench import make_case
    >>> z, y = make_case(4, 3, "float32")
    >>> z.shape, z.dtype.name, y.dtype == "intp"
    ((4, 3), 'float32', True)
    """
    dt = np.dtype(dtype)
    if dt.name not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64; got {dt.name}.")
    if n < 1 or m < 1:
        raise ValueError(f"n and m must be at least 1; got n={n}, m={m}.")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, m), dtype=dt.type)
    z *= LOGIT_SCALE
    y = rng.integers(0, m, size=n).astype(np.intp)
    return z, y


class Case:
    """One benchmark case: logits, labels and a gradient buffer.

    ``z`` and ``y`` come from :func:`make_case`; ``out`` is a gradient
    buffer of ``z``'s shape and dtype whose pages are already touched, so
    that ``out=`` timings never include page faults.  Masked logits and
    probability targets are built on first use.

    Parameters
    ----------
    n, m : int
        Rows and classes.
    dtype : str or numpy.dtype
        The logits' dtype, float32 or float64.
    seed : int, default 0
        Seed of :func:`make_case`; the masked logits and the probability
        targets use ``seed + 1`` and ``seed + 2``.

    Attributes
    ----------
    n, m : int
        Rows and classes.
    dtype : numpy.dtype
        The logits' dtype.
    name : str
        ``"<n>x<m>"``.
    z : numpy.ndarray, shape (n, m)
        The logits.
    y : numpy.ndarray of numpy.intp, shape (n,)
        The labels.
    out : numpy.ndarray, shape (n, m)
        A zeroed gradient buffer.

    Examples
    --------
    >>> from fastxent.bench import Case
    >>> c = Case(8, 5, "float64")
    >>> c.name, c.nbytes, c.out.shape
    ('8x5', 320, (8, 5))
    """

    def __init__(self, n: int, m: int, dtype: str | np.dtype[Any], seed: int = 0) -> None:
        self.n, self.m = n, m
        self.dtype = np.dtype(dtype)
        self.name = f"{n}x{m}"
        self.z, self.y = make_case(n, m, self.dtype, seed=seed)
        self.out = np.zeros_like(self.z)
        self._seed = seed

    @property
    def nbytes(self) -> int:
        """Bytes of the logits."""
        return int(self.z.nbytes)

    @cached_property
    def masked(self) -> NDArray[Any]:
        """``z`` with about half the logits of every row -inf (never the target)."""
        rng = np.random.default_rng(self._seed + 1)
        zm: NDArray[Any] = self.z.copy()
        mask = rng.random(zm.shape) < 0.5
        mask[np.arange(self.n), self.y] = False
        zm[mask] = -np.inf
        return zm

    @cached_property
    def probs(self) -> NDArray[Any]:
        """Soft targets: each row a random probability vector (sums to 1)."""
        rng = np.random.default_rng(self._seed + 2)
        p = rng.random(self.z.shape, dtype=self.dtype.type)
        p /= p.sum(axis=1, keepdims=True)
        return p


def linear_chunk_rows(n: int, V: int, d: int, dtype: str | np.dtype[Any], buffers: int = 1) -> int:
    """Rows per chunk of the fused linear functions when ``chunk_size=None``.

    :func:`fastxent.linear_cross_entropy_with_grad` and its relatives form
    the logits ``chunk x V`` at a time in one buffer; a benchmark reports
    that buffer's share of the ``n x V`` logits it replaces.  The rule is
    documented under ``chunk_size`` in :func:`fastxent.linear_cross_entropy`.

    Parameters
    ----------
    n, V, d : int
        Rows of the features, classes (the head's rows) and features.
    dtype : str or numpy.dtype
        The features' dtype, float32 or float64.
    buffers : int, default 1
        ``chunk x V`` buffers a chunk holds: 2 for the fused linear
        distillation (the student's and the teacher's logits), whose default
        chunk keeps both within the budget.

    Returns
    -------
    int
        Rows per chunk, between 1 and ``max(n, 1)``.

    Examples
    --------
    >>> from fastxent.bench import linear_chunk_rows
    >>> linear_chunk_rows(1, 32_000, 512, "float32")
    1
    >>> 1 <= linear_chunk_rows(2_048, 32_000, 512, "float32") <= 2_048
    True
    """
    return default_chunk_size(n, V, d, np.dtype(dtype).itemsize, buffers)


# --------------------------------------------------------------------- memory


def case_bytes(n: int, m: int, dtype: str, peers: Sequence[str] = ()) -> int:
    """Estimated peak bytes of one case of :func:`run_bench`.

    The arrays of the logits' size it holds throughout (``CASE_ARRAYS``)
    and those of the hungriest timed call (``CALL_ARRAYS``, NumPy's or a
    peer's), and the per-row temporaries.  Cases and calls run one after
    the other, so a run's peak is its largest case's.

    Parameters
    ----------
    n, m : int
        The shape.
    dtype : str
        The logits' dtype, float32 or float64.
    peers : sequence of str, optional
        The peers timed beside fastxent.

    Returns
    -------
    int
        Bytes.

    Examples
    --------
    >>> from fastxent.bench import case_bytes
    >>> case_bytes(1_000, 1_000, "float64")
    24064000
    """
    arrays = CASE_ARRAYS + max(CALL_ARRAYS[c] for c in ("numpy", *peers))
    return arrays * n * m * np.dtype(dtype).itemsize + ROW_VALUES * 8 * n


def peak_bytes(
    shapes: Sequence[tuple[int, int]], dtypes: Sequence[str], peers: Sequence[str] = ()
) -> int:
    """Estimated peak bytes of :func:`run_bench` over these cases (the largest case).

    Parameters
    ----------
    shapes : sequence of (int, int)
        The shapes.
    dtypes : sequence of str
        The dtypes.
    peers : sequence of str, optional
        The peers timed beside fastxent.

    Returns
    -------
    int
        Bytes (0 for no case).

    Examples
    --------
    >>> from fastxent.bench import QUICK_SHAPES, peak_bytes
    >>> peak_bytes(QUICK_SHAPES, ["float64"]) < 5_000_000
    True
    """
    return max((case_bytes(n, m, dt, peers) for n, m in shapes for dt in dtypes), default=0)


def physical_memory() -> int | None:
    """Bytes of physical memory, where the OS says.

    Returns
    -------
    int or None
        None where ``os.sysconf`` does not tell.

    Examples
    --------
    >>> from fastxent.bench import physical_memory
    >>> total = physical_memory()
    """
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None
