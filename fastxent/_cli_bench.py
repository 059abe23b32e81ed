"""``python -m fastxent bench``: fastxent against NumPy, the copy floor and peers.

For every case (shape, dtype, thread count) it times the mean cross-entropy
loss and its gradient with respect to the logits:

* ``fastxent``: :func:`fastxent.cross_entropy_with_grad` into a preallocated
  ``out=`` gradient, and (``fastxent_alloc``) the same call allocating its
  gradient, as NumPy, torch and JAX allocate theirs;
* ``numpy``: :func:`numpy_loss_grad`, the straightforward NumPy way in the
  logits' dtype (NumPy's ufuncs use one thread whatever the thread count, so
  it is timed once per shape and dtype);
* the floor: ``np.copyto`` of the logits into a buffer of the same size.  Any
  loss+gradient reads the logits and writes a gradient of the same size, so
  a copy is the least it can cost.  It is timed on one thread and, for
  each thread count T > 1, split into T row slices copied by T Python
  threads at once (NumPy releases the GIL while copying); a row's floor is
  the faster of the two at its thread count, and ``of floor`` is floor time /
  fastxent time (so at most 100 % unless fastxent beats a copy);
* peers, with ``--compare``: torch (``F.cross_entropy`` + ``backward``),
  scikit-learn (``HalfMultinomialLoss.loss_gradient``) and JAX
  (``jit(value_and_grad(...))``, timed once per shape and dtype: XLA sizes its
  thread pool at start-up).  A peer that is not installed is skipped with a
  note.

Speed-ups are like for like: NumPy, torch and JAX against fastxent
allocating its gradient, scikit-learn (which writes into a preallocated
``gradient_out=``) against fastxent's ``out=``.  A training loop should pass
``out=``; the ``alloc ms`` column shows what a fresh gradient costs.

Each time is the median of ``repeats`` timings after one warm-up call; calls
shorter than 20 ms are looped within a timing so that the clock's resolution
does not matter.  Effective bandwidth counts the logits read, the gradient
written and the labels read.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from ._config import config
from ._loss import cross_entropy_with_grad

#: The default shapes, (rows n, classes m): few to many classes, each case's
#: working set (see :func:`case_bytes`) well under 1 GB, so that the default
#: run fits a laptop.
DEFAULT_SHAPES: list[tuple[int, int]] = [
    (100_000, 10),
    (65_536, 100),
    (16_384, 1_000),
    (512, 32_000),
]
#: ``--large``: the shapes of the core benchmarks (benchmarks/), whose
#: biggest float64 case holds GBs.
LARGE_SHAPES: list[tuple[int, int]] = [
    (100_000, 10),
    (65_536, 100),
    (16_384, 1_000),
    (4_096, 32_000),
]
#: ``--quick``: tiny shapes, for the tests and a first look.
QUICK_SHAPES: list[tuple[int, int]] = [(2_000, 10), (500, 100), (64, 1_000)]
PEERS: tuple[str, ...] = ("torch", "jax", "sklearn")
#: Arrays of the logits' size a case holds throughout: the logits and the
#: out= gradient.
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
#: Logits are standard normal times this (a softmax that is neither flat nor one-hot).
LOGIT_SCALE = 3.0

Timing = dict[str, Any]
LossGrad = Callable[[], object]


def numpy_loss_grad(z: NDArray[Any], y: NDArray[np.intp]) -> tuple[Any, NDArray[Any]]:
    """Mean softmax cross-entropy and its gradient, the plain NumPy way.

    In the dtype of ``z`` (float64 in, float64 out: the self-check's
    reference), with in-place operations where an ordinary user would write
    them: max, shift, exp, sum, log, then ``(softmax - onehot) / n``.
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


# --------------------------------------------------------------------------- peers
# Each maker takes (z, y, threads) and returns a no-argument callable that
# computes the mean loss and the gradient, or raises ImportError.


def _torch(z: NDArray[Any], y: NDArray[np.intp], threads: int) -> LossGrad:
    torch = importlib.import_module("torch")
    F = importlib.import_module("torch.nn.functional")
    yt = torch.from_numpy(y.astype(np.int64))

    def run() -> object:
        torch.set_num_threads(threads)
        zt = torch.from_numpy(z).requires_grad_(True)
        loss = F.cross_entropy(zt, yt)
        loss.backward()
        return loss, zt.grad

    return run


def _sklearn(z: NDArray[Any], y: NDArray[np.intp], threads: int) -> LossGrad:
    from sklearn._loss.loss import HalfMultinomialLoss

    loss_fn = HalfMultinomialLoss(n_classes=z.shape[1])
    yf = y.astype(z.dtype)
    loss_out = np.empty(z.shape[0], dtype=z.dtype)
    grad_out = np.empty_like(z)

    def run() -> object:
        losses, grad = loss_fn.loss_gradient(
            y_true=yf, raw_prediction=z, loss_out=loss_out, gradient_out=grad_out, n_threads=threads
        )
        return losses.mean(), grad

    return run


def _jax(z: NDArray[Any], y: NDArray[np.intp], threads: int) -> LossGrad:
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

    return run


_PEER_MAKERS: dict[str, Callable[[NDArray[Any], NDArray[np.intp], int], LossGrad]] = {
    "torch": _torch,
    "jax": _jax,
    "sklearn": _sklearn,
}
#: Peers whose thread count cannot be set per call: timed once per shape and dtype.
_THREADLESS = {"numpy", "jax"}
#: Peers that write into preallocated outputs: compared with fastxent's out=;
#: the others allocate their gradient and are compared with fastxent_alloc.
_PREALLOCATED = {"sklearn"}


def peer_version(name: str) -> str | None:
    """The installed version of a peer, or None when it cannot be imported."""
    module = {"sklearn": "sklearn"}.get(name, name)
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a broken install may raise anything: skip the peer
        return None
    return str(getattr(mod, "__version__", "?"))


# ------------------------------------------------------------------------ timing


def time_call(fn: LossGrad, repeats: int) -> tuple[float, list[float]]:
    """Median seconds per call of ``fn`` over ``repeats`` timings, after a warm-up."""
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


# --------------------------------------------------------------------------- run


def make_case(n: int, m: int, dtype: str, seed: int = 0) -> tuple[NDArray[Any], NDArray[np.intp]]:
    """Standard-normal logits (times LOGIT_SCALE) and uniform labels."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, m), dtype=np.dtype(dtype).type)
    z *= LOGIT_SCALE
    y = rng.integers(0, m, size=n).astype(np.intp)
    return z, y


def case_bytes(n: int, m: int, dtype: str, peers: Sequence[str] = ()) -> int:
    """Estimated peak bytes of one case of ``run_bench``: the arrays of the
    logits' size it holds throughout (``CASE_ARRAYS``) and those of the
    hungriest timed call (``CALL_ARRAYS``, NumPy's or a peer's), and the
    per-row temporaries.  Cases and calls run one after the other, so a
    run's peak is its largest case's."""
    arrays = CASE_ARRAYS + max(CALL_ARRAYS[c] for c in ("numpy", *peers))
    return arrays * n * m * np.dtype(dtype).itemsize + ROW_VALUES * 8 * n


def peak_bytes(
    shapes: Sequence[tuple[int, int]], dtypes: Sequence[str], peers: Sequence[str] = ()
) -> int:
    """Estimated peak bytes of ``run_bench`` over these cases (the largest case)."""
    return max((case_bytes(n, m, dt, peers) for n, m in shapes for dt in dtypes), default=0)


def physical_memory() -> int | None:
    """Bytes of physical memory, where the OS says (None elsewhere)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def _jobs(threads: Sequence[int], peers: Sequence[str]) -> list[tuple[str, int]]:
    """The timings to take for one case: (impl, threads)."""
    jobs = [("copy", t) for t in sorted({1, *threads})] + [("numpy", 1)]
    for impl in ("fastxent", "fastxent_alloc", *peers):
        jobs += [(impl, t) for t in ([max(threads)] if impl in _THREADLESS else threads)]
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
    """Take every timing; one record per (shape, dtype, impl, threads)."""
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
        if impl == "copy" and t > 1:
            with ThreadPoolExecutor(t) as pool:
                median, all_times = time_call(split_copy(out, z, t, pool), repeats)
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


def split_copy(
    out: NDArray[Any], z: NDArray[Any], threads: int, pool: ThreadPoolExecutor
) -> LossGrad:
    """``np.copyto(out, z)`` split into ``threads`` row slices copied at once
    by the threads of ``pool``: the copy floor at that thread count."""
    bounds = np.linspace(0, z.shape[0], threads + 1).astype(int)
    parts = [(out[a:b], z[a:b]) for a, b in itertools.pairwise(bounds)]

    def run() -> object:
        for f in [pool.submit(np.copyto, d, s) for d, s in parts]:
            f.result()
        return out

    return run


def _callable(
    impl: str, z: NDArray[Any], y: NDArray[np.intp], out: NDArray[Any], threads: int
) -> LossGrad:
    if impl == "fastxent":
        return lambda: cross_entropy_with_grad(z, y, out=out, num_threads=threads)
    if impl == "fastxent_alloc":
        return lambda: cross_entropy_with_grad(z, y, num_threads=threads)
    if impl == "numpy":
        return lambda: numpy_loss_grad(z, y)
    if impl == "copy":
        return lambda: np.copyto(out, z)
    return _PEER_MAKERS[impl](z, y, threads)


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


def format_table(records: Iterable[Timing], peers: Sequence[str]) -> str:
    """The text table ``python -m fastxent bench`` prints."""
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
            f"{tm[p] * 1e3:.3f} ({tm[p] / (fx if p in _PREALLOCATED else fx_alloc):.1f}x)"
            for p in peers
        ]
        body.append(cells)
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str, records: list[Timing], options: dict[str, Any]) -> None:
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
    """CPU model and usable cores, for the report."""
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


def _ms(seconds: float) -> str:
    """A time in ms with three significant digits."""
    return f"{seconds * 1e3:.3g} ms"


def plot(path: str, records: list[Timing], peers: Sequence[str]) -> None:
    """Save :func:`figure` to ``path`` (a PNG)."""
    import matplotlib.pyplot as plt

    fig = figure(records, peers)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(records: list[Timing], peers: Sequence[str]) -> Any:
    """Bars of effective GB/s per implementation on a log axis, each labelled
    with its time, and the np.copyto floor, per case; a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        f"gradient written; bars labelled with ms per call)\n{machine()}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
