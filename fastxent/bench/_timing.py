"""The timing: the copy floor and the exp yardstick, ``time_call``, and the
run of ``python -m fastxent bench`` (``run_bench``).

Part of :mod:`fastxent.bench`, which re-exports the public names: import
them from there.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from .. import _kernels
from .._loss import cross_entropy_with_grad
from ._cases import DTYPES, make_case
from ._peers import PEERS, LossGrad, numpy_loss_grad, peer_loss_grad

#: A timing of a fast call loops it until at least this long.
MIN_TIMING_S = 0.02

Timing = dict[str, Any]


# ------------------------------------------------------------------ yardsticks


@contextlib.contextmanager
def copy_floor(out: NDArray[Any], z: NDArray[Any], threads: int = 1) -> Iterator[LossGrad]:
    """The copy floor: ``np.copyto(out, z)``, split over ``threads`` threads.

    Any loss + gradient reads the logits and writes a gradient of the same
    size, so a copy is the least it can cost.  With ``threads > 1`` the rows
    are cut into ``threads`` slices copied at once by as many Python threads
    (NumPy releases the GIL while copying): the floor a kernel on that many
    threads can reach.  A context manager, since the threads live until it
    exits.

    Parameters
    ----------
    out : numpy.ndarray, shape (n, m)
        Destination, the shape and dtype of ``z`` (touched beforehand, so
        that no timing includes page faults).
    z : numpy.ndarray, shape (n, m)
        The logits.
    threads : int, default 1
        Python threads copying at once.

    Yields
    ------
    copy : callable
        No arguments; copies ``z`` into ``out``.

    Raises
    ------
    ValueError
        If ``threads`` is below 1 or the shapes differ.

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.bench import copy_floor
    >>> z, out = np.arange(12.0).reshape(4, 3), np.zeros((4, 3))
    >>> with copy_floor(out, z, threads=2) as copy:
    ...     _ = copy()
    >>> bool((out == z).all())
    True
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1; got {threads}.")
    if out.shape != z.shape:
        raise ValueError(f"out must have z's shape {z.shape}; got {out.shape}.")
    if threads == 1:
        yield lambda: np.copyto(out, z)
        return
    bounds = np.linspace(0, z.shape[0], threads + 1).astype(int)
    parts = [(out[a:b], z[a:b]) for a, b in itertools.pairwise(bounds)]
    with ThreadPoolExecutor(threads) as pool:

        def run() -> object:
            for f in [pool.submit(np.copyto, d, s) for d, s in parts]:
                f.result()
            return out

        yield run


def kernel_exps(x: NDArray[Any], out: NDArray[Any]) -> None:
    """``out = exp(x)`` with the kernels' vectorised exp, on one thread.

    The arithmetic yardstick of a softmax: the exps alone, over as many
    elements as the logits hold, without the reductions and the writes of a
    loss + gradient.  The kernels apply this exp to ``z - max(z)``, so it
    is built for arguments at most 0: results below the smallest normal
    number are 0, and arguments above 0 give unspecified values (they are
    not checked, so that a timing holds the exps alone).

    Parameters
    ----------
    x : numpy.ndarray, shape (k,)
        C-contiguous float32 or float64 values, at most 0 (NaN and -inf
        allowed).
    out : numpy.ndarray, shape (k,)
        C-contiguous and writable, of ``x``'s dtype.

    Raises
    ------
    TypeError
        If ``x`` or ``out`` is not a float32 or float64 array, or their
        dtypes differ.
    ValueError
        If they are not 1-D and C-contiguous of one length, or ``out`` is
        read-only.

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.bench import kernel_exps
    >>> x = np.array([0.0, -1.0, -np.inf])
    >>> out = np.empty_like(x)
    >>> kernel_exps(x, out)
    >>> out
    array([1.        , 0.36787944, 0.        ])
    """
    for name, a in (("x", x), ("out", out)):
        if not isinstance(a, np.ndarray) or a.dtype.name not in DTYPES:
            got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise TypeError(f"{name} must be a float32 or float64 array; got {got}.")
        if a.ndim != 1 or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be 1-D and C-contiguous; got shape {a.shape}.")
    if x.dtype != out.dtype:
        raise TypeError(f"x and out must have one dtype; got {x.dtype} and {out.dtype}.")
    if x.shape != out.shape:
        raise ValueError(f"x and out must have one length; got {x.shape} and {out.shape}.")
    if not out.flags.writeable:
        raise ValueError("out must be writable; got a read-only array.")
    if x.size:
        _kernels.expneg_array(x, out)


# ------------------------------------------------------------------------ timing


def time_call(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Median seconds per call of ``fn`` over ``repeats`` timings, after a warm-up.

    A call faster than ``MIN_TIMING_S`` (20 ms) is looped within each timing
    (at most 10 000 times) so that the clock's resolution does not matter;
    the loop count follows from the warm-up call.

    Parameters
    ----------
    fn : callable
        No arguments.
    repeats : int
        Timings taken, at least 1.

    Returns
    -------
    median : float
        Median seconds per call.
    times : list of float
        Seconds per call of each timing.

    Raises
    ------
    ValueError
        If ``repeats`` is below 1.

    Examples
    --------
    >>> from fastxent.bench import time_call
    >>> median, times = time_call(lambda: sum(range(100)), repeats=3)
    >>> len(times), median > 0
    (3, True)
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1; got {repeats}.")
    t0 = time.perf_counter()
    fn()  # warm-up: JIT compilation, lazy imports, first-touch page faults
    first = time.perf_counter() - t0
    number = max(1, min(10_000, math.ceil(MIN_TIMING_S / max(first, 1e-7))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times), times


class _Progress:
    """tqdm when installed; otherwise one plain line per step (no cursor tricks)."""

    def __init__(self, total: int, enabled: bool, file: TextIO) -> None:
        self._bar: Any = None
        self._n, self._total, self._file, self._enabled = 0, total, file, enabled
        if enabled:
            try:
                tqdm = importlib.import_module("tqdm").tqdm
            except ImportError:
                return
            self._bar = tqdm(
                total=total,
                file=file,
                unit="step",
                leave=False,
                bar_format="{desc:<34}{bar:30}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]",
            )

    def start(self, what: str) -> None:
        """Show the step now starting; the count moves when it is done."""
        self._n += 1
        if self._bar is not None:
            self._bar.set_description_str(what)
        elif self._enabled:
            print(f"[{self._n}/{self._total}] {what}", file=self._file, flush=True)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ------------------------------------------------------------------------- run


def _jobs(threads: Sequence[int], peers: Sequence[str]) -> list[tuple[str, int]]:
    """The timings to take for one case: (impl, threads)."""
    jobs = [("copy", t) for t in sorted({1, *threads})] + [("numpy", 1)]
    for impl in ("fastxent", "fastxent_alloc", *peers):
        fixed = impl in PEERS and not PEERS[impl].per_call_threads
        jobs += [(impl, t) for t in ([max(threads)] if fixed else threads)]
    return jobs


def run_bench(
    shapes: Sequence[tuple[int, int]],
    dtypes: Sequence[str],
    threads: Sequence[int],
    repeats: int,
    peers: Sequence[str] = (),
    progress: bool = True,
    file: TextIO = sys.stderr,
) -> list[Timing]:
    """Time fastxent, NumPy, the copy floor and peers on every case.

    For every shape and dtype (one :func:`make_case` at a time): the copy
    floor on one thread and on each thread count, :func:`numpy_loss_grad`
    once, :func:`fastxent.cross_entropy_with_grad` into ``out=``
    (``"fastxent"``) and allocating its gradient (``"fastxent_alloc"``) at
    each thread count, and each peer (JAX once, at the largest count).
    Each with :func:`time_call`.

    Parameters
    ----------
    shapes : sequence of (int, int)
        Logits shapes.
    dtypes : sequence of str
        The logits' dtypes, float32 and/or float64.
    threads : sequence of int
        Thread counts.
    repeats : int
        Timings per measurement.
    peers : sequence of str, optional
        Keys of ``PEERS``, installed.
    progress : bool, default True
        Show progress (tqdm when installed, else a line per step).
    file : text stream, default sys.stderr
        Where progress goes.

    Returns
    -------
    list of dict
        One record per (shape, dtype, impl, threads): ``n``, ``m``,
        ``dtype``, ``impl``, ``threads``, ``seconds`` (the median),
        ``all_seconds`` and ``bytes`` (logits read, gradient written,
        labels read).

    Examples
    --------
    >>> from fastxent.bench import run_bench
    >>> recs = run_bench([(16, 4)], ["float64"], [1], repeats=1, progress=False)
    >>> sorted(r["impl"] for r in recs)
    ['copy', 'fastxent', 'fastxent_alloc', 'numpy']
    """
    jobs = _jobs(threads, peers)
    bar = _Progress(len(shapes) * len(dtypes) * len(jobs), progress, file)
    records: list[Timing] = []
    try:
        for n, m in shapes:
            for dt in dtypes:
                records += _run_case(n, m, dt, jobs, repeats, bar)
                gc.collect()  # the case's arrays (up to GiBs) go before the next is built
    finally:
        bar.close()
    return records


def _run_case(
    n: int, m: int, dt: str, jobs: list[tuple[str, int]], repeats: int, bar: _Progress
) -> list[Timing]:
    z, y = make_case(n, m, dt)
    out = np.zeros_like(z)  # touched: no page faults inside the timings
    records = []
    for impl, t in jobs:
        bar.start(f"{n}x{m} {dt} {impl} {t}T")
        if impl == "copy":
            with copy_floor(out, z, t) as copy:
                median, all_times = time_call(copy, repeats)
        else:
            median, all_times = time_call(_callable(impl, z, y, out, t), repeats)
        bar.done()
        records.append(
            {
                "n": n,
                "m": m,
                "dtype": dt,
                "impl": impl,
                "threads": t,
                "seconds": median,
                "all_seconds": all_times,
                "bytes": 2 * z.nbytes + y.nbytes,
            }
        )
    return records


def _callable(
    impl: str, z: NDArray[Any], y: NDArray[np.intp], out: NDArray[Any], threads: int
) -> LossGrad:
    if impl == "fastxent":
        return lambda: cross_entropy_with_grad(z, y, out=out, num_threads=threads)
    if impl == "fastxent_alloc":
        return lambda: cross_entropy_with_grad(z, y, num_threads=threads)
    if impl == "numpy":
        return lambda: numpy_loss_grad(z, y)
    return peer_loss_grad(impl, z, y, threads=threads)
