"""The reports: the text table, the JSON, the machine and build facts, and
the bandwidth figure (matplotlib is imported only there).

Part of :mod:`fastxent.bench`, which re-exports the public names: import
them from there.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .. import _kernels
from .._config import config
from ._peers import PEERS, peer_version
from ._timing import Timing

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
