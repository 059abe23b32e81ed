"""The benchmark harness behind ``python -m fastxent bench`` and ``benchmarks/``.

One module owns what a measurement of fastxent's loss + gradient is made
of, so that the command-line table and the pytest-benchmark suite time the
same things on the same data:

* the shapes: ``SHAPES`` (the suite's and ``bench --large``'s), and
  ``DEFAULT_SHAPES``, the same classes with fewer rows (the command's
  default, which fits a laptop); ``QUICK_SHAPES`` for a smoke run;
* the data: :func:`make_case` and :class:`Case` (standard-normal logits
  times ``LOGIT_SCALE``, uniform labels, a fixed seed);
* the yardsticks: :func:`numpy_loss_grad` (the plain NumPy way) and
  :func:`copy_floor` (a copy of the logits: the least any loss + gradient
  costs);
* the peers: ``PEERS``, a registry of other libraries' loss + gradient
  (torch, JAX, scikit-learn), each imported only when asked for;
  :func:`peer_loss_grad` builds one's callable and :func:`missing_peer_note`
  says how to install one that is missing;
* the timing of the command (:func:`time_call`, :func:`run_bench`), its
  table (:func:`format_table`), its JSON (:func:`write_json`) and the
  bandwidth figure both draw (:func:`figure`, :func:`plot`; matplotlib is
  imported only there).

It imports NumPy and fastxent only; ``import fastxent`` does not import it
(``fastxent.bench`` loads on first access).  The pytest-benchmark glue
(``measure``, groups, fixtures) stays in ``benchmarks/``.

Examples
--------
>>> import fastxent
>>> from fastxent import bench
>>> z, y = bench.make_case(64, 10, "float32")
>>> loss, grad = bench.numpy_loss_grad(z, y)
>>> bool(abs(loss - fastxent.cross_entropy(z, y)) < 1e-5)
True
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from . import _kernels
from ._config import config
from ._linear import default_chunk_size
from ._loss import cross_entropy_with_grad

__all__ = [
    "DEFAULT_SHAPES",
    "DTYPES",
    "LOGIT_SCALE",
    "PEERS",
    "QUICK_SHAPES",
    "SHAPES",
    "Case",
    "Peer",
    "build_info",
    "case_bytes",
    "copy_floor",
    "figure",
    "format_table",
    "kernel_exps",
    "linear_chunk_rows",
    "machine",
    "make_case",
    "missing_peer_note",
    "numpy_loss_grad",
    "peak_bytes",
    "peer_loss_grad",
    "peer_version",
    "physical_memory",
    "plot",
    "run_bench",
    "time_call",
    "write_json",
]

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
#: A timing of a fast call loops it until at least this long.
MIN_TIMING_S = 0.02

Timing = dict[str, Any]
LossGrad = Callable[[], object]


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


# ------------------------------------------------------------------ yardsticks


def numpy_loss_grad(z: NDArray[Any], y: NDArray[Any]) -> tuple[Any, NDArray[Any]]:
    """Mean softmax cross-entropy and its gradient, the plain NumPy way.

    .. math::

        \\ell = \\frac{1}{n} \\sum_i \\Big(\\log \\sum_j e^{z_{ij}} - z_{i y_i}\\Big),
        \\qquad
        \\frac{\\partial \\ell}{\\partial z_{ij}}
        = \\frac{\\mathrm{softmax}(z_i)_j - [j = y_i]}{n}

    In the dtype of ``z`` (float64 in, float64 out: the self-check's
    reference), with in-place operations where an ordinary user would write
    them: max, shift, exp, sum, log, then ``(softmax - onehot) / n``.  One
    thread (NumPy's ufuncs do not thread).

    Parameters
    ----------
    z : numpy.ndarray, shape (n, m)
        Logits, float32 or float64.
    y : numpy.ndarray of int, shape (n,)
        Class indices in ``0 .. m-1``.

    Returns
    -------
    loss : numpy scalar
        The mean loss, in ``z``'s dtype.
    grad : numpy.ndarray, shape (n, m)
        Its gradient with respect to ``z``, in ``z``'s dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.bench import numpy_loss_grad
    >>> loss, grad = numpy_loss_grad(np.zeros((2, 4)), np.array([0, 3]))
    >>> round(float(loss), 6), grad[0]
    (1.386294, array([-0.375,  0.125,  0.125,  0.125]))
    """
    n = z.shape[0]
    rows = np.arange(n)
    zmax = z.max(axis=1, keepdims=True)
    p = z - zmax
    np.exp(p, out=p)
    s = p.sum(axis=1, keepdims=True)
    lse = np.log(s[:, 0]) + zmax[:, 0]
    loss = np.mean(lse - z[rows, y])
    p /= s * n
    p[rows, y] -= z.dtype.type(1.0 / n)
    return loss, p


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


def linear_chunk_rows(n: int, V: int, d: int, dtype: str | np.dtype[Any]) -> int:
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
    return default_chunk_size(n, V, d, np.dtype(dtype).itemsize)


# ------------------------------------------------------------------------ peers


@dataclass(frozen=True)
class Peer:
    """A library whose loss + gradient the benchmarks set beside fastxent's.

    Parameters
    ----------
    name : str
        The name ``--compare`` and the benchmark records use.
    module : str
        What to import to tell whether it is installed.
    install : str
        The command that installs it.
    build : callable
        ``build(z, y, threads, out)`` imports the library and returns a
        callable of no arguments that computes the mean loss and the
        gradient of ``z`` for labels ``y`` on ``threads`` threads
        (``out``: a gradient buffer, used by peers that write into one).
    per_call_threads : bool
        Whether its thread count can be set per call (JAX's is fixed at
        start-up: timed once per shape and dtype).
    preallocated : bool
        Whether it writes into a preallocated gradient (compared with
        fastxent's ``out=``; the others with fastxent allocating).
    """

    name: str
    module: str
    install: str
    build: Callable[[NDArray[Any], NDArray[Any], int, NDArray[Any] | None], LossGrad]
    per_call_threads: bool = True
    preallocated: bool = False


def _torch(z: NDArray[Any], y: NDArray[Any], threads: int, out: NDArray[Any] | None) -> LossGrad:
    torch = importlib.import_module("torch")
    F = importlib.import_module("torch.nn.functional")
    yt = torch.from_numpy(y.astype(np.int64))
    # A global setting: set once here, right before the callable is timed.
    torch.set_num_threads(threads)

    def run() -> object:
        zt = torch.from_numpy(z).requires_grad_(True)
        loss = F.cross_entropy(zt, yt)
        loss.backward()
        return loss, zt.grad

    return run


def _sklearn(z: NDArray[Any], y: NDArray[Any], threads: int, out: NDArray[Any] | None) -> LossGrad:
    loss_module = importlib.import_module("sklearn._loss.loss")
    loss_fn = loss_module.HalfMultinomialLoss(n_classes=z.shape[1])
    yf = y.astype(z.dtype)
    loss_out = np.empty(z.shape[0], dtype=z.dtype)
    grad_out = np.empty_like(z) if out is None else out

    def run() -> object:
        losses, grad = loss_fn.loss_gradient(
            y_true=yf, raw_prediction=z, loss_out=loss_out, gradient_out=grad_out, n_threads=threads
        )
        return losses.mean(), grad

    return run


def _jax(z: NDArray[Any], y: NDArray[Any], threads: int, out: NDArray[Any] | None) -> LossGrad:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    jax.config.update("jax_enable_x64", True)  # float64 stays float64

    def mean_xent(zj: Any, yj: Any) -> Any:
        logp = jax.nn.log_softmax(zj, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, yj[:, None], axis=-1))

    value_and_grad = jax.jit(jax.value_and_grad(mean_xent))
    zj, yj = jax.device_put(z), jax.device_put(y)

    def run() -> object:
        return jax.block_until_ready(value_and_grad(zj, yj))

    run()  # compile now, so that no warm-up call of a timing is the compilation
    return run


#: The peers, by name: torch (``F.cross_entropy`` + ``backward``), JAX
#: (``jit(value_and_grad(...))``) and scikit-learn
#: (``HalfMultinomialLoss.loss_gradient``, per-sample gradient).
PEERS: dict[str, Peer] = {
    "torch": Peer("torch", "torch", "pip install torch", _torch),
    "jax": Peer("jax", "jax", "pip install jax", _jax, per_call_threads=False),
    "sklearn": Peer("sklearn", "sklearn", "pip install scikit-learn", _sklearn, preallocated=True),
}


def _peer(name: str) -> Peer:
    try:
        return PEERS[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}.") from None


def peer_version(name: str) -> str | None:
    """The installed version of a peer, or None when it cannot be imported.

    Parameters
    ----------
    name : str
        A key of ``PEERS``.

    Returns
    -------
    str or None
        Its ``__version__`` (``"?"`` when it has none).

    Raises
    ------
    ValueError
        If ``name`` is not a peer.

    Examples
    --------
    >>> from fastxent.bench import peer_version
    >>> v = peer_version("sklearn")  # None without scikit-learn
    """
    peer = _peer(name)
    try:
        mod = importlib.import_module(peer.module)
    except Exception:  # noqa: BLE001 - a broken install may raise anything: skip the peer
        return None
    return str(getattr(mod, "__version__", "?"))


def missing_peer_note(name: str) -> str | None:
    """Why a peer cannot run here and how to install it, or None if it can.

    Parameters
    ----------
    name : str
        A key of ``PEERS``.

    Returns
    -------
    str or None
        For example ``"torch is not installed (pip install torch)"``.

    Raises
    ------
    ValueError
        If ``name`` is not a peer.

    Examples
    --------
    >>> from fastxent.bench import missing_peer_note
    >>> note = missing_peer_note("jax")  # None where JAX is installed
    """
    if peer_version(name) is not None:
        return None
    return f"{name} is not installed ({PEERS[name].install})"


def peer_loss_grad(
    name: str,
    z: NDArray[Any],
    y: NDArray[Any],
    *,
    threads: int = 1,
    out: NDArray[Any] | None = None,
) -> LossGrad:
    """A callable computing a peer's mean loss and gradient of ``z``.

    The peer is imported here, not before.  torch's thread count is a
    global setting: this sets it, so build the callable right before timing
    it (and restore ``torch.set_num_threads`` afterwards if it matters).
    JAX's function is compiled here, so the callable's first call is not
    the compilation.

    Parameters
    ----------
    name : str
        A key of ``PEERS``.
    z : numpy.ndarray, shape (n, m)
        Logits, float32 or float64 (JAX runs float64 with ``jax_enable_x64``).
    y : numpy.ndarray of int, shape (n,)
        Labels.
    threads : int, default 1
        The peer's thread count (ignored by JAX: see :class:`Peer`).
    out : numpy.ndarray, optional
        Gradient buffer for the peers that write into one (scikit-learn).

    Returns
    -------
    callable
        No arguments; returns the peer's ``(loss, gradient)`` in its own
        types (scikit-learn's gradient is per sample: not divided by n).

    Raises
    ------
    ValueError
        If ``name`` is not a peer.
    ImportError
        If the peer is not installed; the message says how to install it.

    Examples
    --------
    >>> from fastxent.bench import make_case, missing_peer_note, peer_loss_grad
    >>> z, y = make_case(16, 4)
    >>> if missing_peer_note("sklearn") is None:
    ...     loss, grad = peer_loss_grad("sklearn", z, y)()
    """
    peer = _peer(name)
    note = missing_peer_note(name)
    if note is not None:
        raise ImportError(f"peer {note}")
    return peer.build(z, y, threads, out)


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


# ----------------------------------------------------------------------- reports


def _rows(records: Iterable[Timing]) -> list[dict[str, Any]]:
    """One row per (shape, dtype, threads) with fastxent's threads; others joined in."""
    recs = list(records)
    by = {(r["n"], r["m"], r["dtype"], r["impl"], r["threads"]): r for r in recs}
    any_t = {(r["n"], r["m"], r["dtype"], r["impl"]): r for r in recs}
    rows = []
    for r in recs:
        if r["impl"] != "fastxent":
            continue
        n, m, dt, t = r["n"], r["m"], r["dtype"], r["threads"]
        row = {
            "n": n,
            "m": m,
            "dtype": dt,
            "threads": t,
            "bytes": r["bytes"],
            "times": {"fastxent": r["seconds"]},
        }
        for other in {x[3] for x in any_t if x[:3] == (n, m, dt)} - {"fastxent"}:
            hit = by.get((n, m, dt, other, t)) or any_t[(n, m, dt, other)]
            row["times"][other] = hit["seconds"]
        # The floor at this thread count: the faster of the 1-thread copy and
        # the copy split over t threads.
        copies = [
            by[k]["seconds"] for k in ((n, m, dt, "copy", 1), (n, m, dt, "copy", t)) if k in by
        ]
        if copies:
            row["times"]["copy"] = min(copies)
        rows.append(row)
    return rows


def _preallocated(name: str) -> bool:
    return name in PEERS and PEERS[name].preallocated


def format_table(records: Iterable[Timing], peers: Sequence[str]) -> str:
    """The text table ``python -m fastxent bench`` prints.

    One row per shape, dtype and thread count: fastxent's ``out=`` and
    allocating times, NumPy's, the speed-up over NumPy (like for like:
    against fastxent allocating), the effective bandwidth, the copy floor
    as a share of fastxent's time, and each peer's time with its ratio to
    fastxent (scikit-learn against ``out=``, the others against allocating).

    Parameters
    ----------
    records : iterable of dict
        What :func:`run_bench` returns (or ``"results"`` of its JSON).
    peers : sequence of str
        The peers to add columns for.

    Returns
    -------
    str
        The table, one line per row, with a header and a rule.

    Examples
    --------
    >>> from fastxent.bench import format_table, run_bench
    >>> recs = run_bench([(16, 4)], ["float64"], [1], repeats=1, progress=False)
    >>> format_table(recs, []).split()[:3]
    ['shape', 'dtype', 'threads']
    """
    head = [
        "shape",
        "dtype",
        "threads",
        "fastxent ms",
        "alloc ms",
        "NumPy ms",
        "speed-up",
        "GB/s",
        "of floor",
        *[f"{p} ms (x)" for p in peers],
    ]
    body = []
    for row in _rows(records):
        tm = row["times"]
        fx = tm["fastxent"]
        fx_alloc = tm.get("fastxent_alloc", fx)  # records of older versions: out= only
        cells = [
            f"{row['n']}x{row['m']}",
            row["dtype"],
            str(row["threads"]),
            f"{fx * 1e3:.3f}",
            f"{fx_alloc * 1e3:.3f}",
            f"{tm['numpy'] * 1e3:.3f}",
            f"{tm['numpy'] / fx_alloc:.1f}x",
            f"{row['bytes'] / fx / 1e9:.1f}",
            f"{tm['copy'] / fx:.0%}",
        ]
        cells += [
            f"{tm[p] * 1e3:.3f} ({tm[p] / (fx if _preallocated(p) else fx_alloc):.1f}x)"
            for p in peers
        ]
        body.append(cells)
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str, records: list[Timing], options: dict[str, Any]) -> None:
    """Write a run's records with the build, the machine and the peers' versions.

    Parameters
    ----------
    path : str
        The JSON file to write.
    records : list of dict
        What :func:`run_bench` returns.
    options : dict
        The run's options (``"compare"``: the peers asked for).

    Examples
    --------
    >>> import json, os, tempfile
    >>> from fastxent.bench import write_json
    >>> path = os.path.join(tempfile.mkdtemp(), "bench.json")
    >>> write_json(path, [], {"compare": []})
    >>> sorted(json.load(open(path)))
    ['fastxent', 'machine', 'options', 'peers', 'results']
    """
    doc = {
        "fastxent": config(),
        "machine": machine(),
        "options": options,
        "peers": {p: peer_version(p) for p in options.get("compare", [])},
        "results": records,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def machine() -> str:
    """CPU model and usable cores, for a report.

    Returns
    -------
    str
        For example ``"<CPU model>, 2 usable cores"``.

    Examples
    --------
    >>> from fastxent.bench import machine
    >>> "usable cores" in machine()
    True
    """
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} usable cores"


def build_info() -> dict[str, Any]:
    """What is being measured: fastxent's build facts and its compiled module.

    The facts :func:`fastxent.show_config` prints (version, OpenMP, default
    threads, SIMD variant, compile flags), plus the compiled module's path
    and SHA-256, so that a benchmark record names the exact build it timed.

    Returns
    -------
    dict
        Keys ``version``, ``python``, ``platform``, ``openmp``,
        ``default_threads``, ``forked_child``, ``simd``, ``compile_flags``,
        ``extension`` and ``extension_sha256``.

    Examples
    --------
    >>> from fastxent.bench import build_info
    >>> info = build_info()
    >>> len(info["extension_sha256"])
    64
    """
    so = str(_kernels.__file__)
    with open(so, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {**config(), "extension": so, "extension_sha256": digest}


def _ms(seconds: float) -> str:
    """A time in ms with three significant digits."""
    return f"{seconds * 1e3:.3g} ms"


def plot(
    path: str, records: list[Timing], peers: Sequence[str] = (), *, title: str | None = None
) -> None:
    """Save :func:`figure` to ``path`` (a PNG).

    Parameters
    ----------
    path : str
        The image file to write.
    records : list of dict
        What :func:`run_bench` returns.
    peers : sequence of str, optional
        The peers to draw beside fastxent and NumPy.
    title : str, optional
        The machine line of the title (default: :func:`machine`).

    Raises
    ------
    ImportError
        Without matplotlib (``pip install "fastxent[bench]"``).

    Examples
    --------
    >>> from fastxent.bench import plot, run_bench
    >>> recs = run_bench([(16, 4)], ["float64"], [1], repeats=1, progress=False)
    >>> plot("bench.png", recs)  # doctest: +SKIP
    """
    plt = _pyplot()
    fig = figure(records, peers, title=title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pyplot() -> Any:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise ImportError(
            'the benchmark plots need matplotlib: pip install "fastxent[bench]"'
        ) from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def figure(records: list[Timing], peers: Sequence[str] = (), *, title: str | None = None) -> Any:
    """Bars of effective bandwidth per implementation against the copy floor.

    One panel per dtype; per case and thread count, a bar (log axis, GB/s
    of logits read + gradient written + labels read) for fastxent into
    ``out=``, fastxent allocating, NumPy and each peer, each labelled with
    its time, and the copy floor as a black tick.  Implementations missing
    from some case are left out.

    Parameters
    ----------
    records : list of dict
        What :func:`run_bench` returns (``benchmarks/report.py`` turns a
        pytest-benchmark run into the same records).
    peers : sequence of str, optional
        The peers to draw.
    title : str, optional
        The machine line of the title (default: :func:`machine`).

    Returns
    -------
    matplotlib.figure.Figure
        The figure (close it with ``matplotlib.pyplot.close``).

    Raises
    ------
    ImportError
        Without matplotlib (``pip install "fastxent[bench]"``).

    Examples
    --------
    >>> from fastxent.bench import figure, run_bench
    >>> recs = run_bench([(16, 4)], ["float64"], [1], repeats=1, progress=False)
    >>> fig = figure(recs)  # doctest: +SKIP
    """
    plt = _pyplot()
    rows = _rows(records)
    # fastxent both ways: out= (against the floor and scikit-learn's
    # gradient_out=) and allocating (against the peers that allocate).
    wanted = ["fastxent", "fastxent_alloc", "numpy", *peers]
    impls = [i for i in wanted if all(i in r["times"] for r in rows)]
    labels = {"fastxent": "fastxent out=", "fastxent_alloc": "fastxent allocating"}
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    per_panel = max(sum(r["dtype"] == dt for r in rows) for dt in dtypes)
    width = 0.8 / len(impls)
    fig, axes = plt.subplots(
        len(dtypes),
        1,
        squeeze=False,
        sharey=True,
        figsize=(min(16.0, 1.0 * per_panel + 3), 2.2 + 2.6 * len(dtypes)),
    )
    for ax, dt in zip(axes[:, 0], dtypes, strict=True):
        sub = [r for r in rows if r["dtype"] == dt]
        x = np.arange(len(sub))
        for i, impl in enumerate(impls):
            gbs = [r["bytes"] / r["times"][impl] / 1e9 for r in sub]
            bars = ax.bar(x - 0.4 + width * (i + 0.5), gbs, width, label=labels.get(impl, impl))
            # Each bar's time, since the bandwidth alone hides the slow ones.
            ax.bar_label(
                bars,
                [_ms(r["times"][impl]) for r in sub],
                rotation=90,
                fontsize=5,
                padding=2,
            )
        floor = [r["bytes"] / r["times"]["copy"] / 1e9 for r in sub]
        ax.scatter(
            x,
            floor,
            marker="_",
            s=1500 / max(1, len(sub)) ** 0.5 + 300,
            color="black",
            zorder=3,
            label="np.copyto floor",
        )
        ax.set_xticks(x, [f"{r['n']}x{r['m']}, {r['threads']}T" for r in sub], fontsize=7)
        # A log axis: peers at a few GB/s stay readable beside tens of GB/s.
        ax.set_yscale("log")
        ax.set_ylabel(f"{dt}: GB/s (log)")
        ax.margins(y=0.25)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0, 0].legend(
        fontsize=7,
        ncol=len(impls) + 1,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        frameon=False,
        markerscale=0.4,
    )
    fig.suptitle(
        "mean cross-entropy loss + gradient: effective bandwidth (logits read + "
        f"gradient written; bars labelled with ms per call)\n{title or machine()}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
