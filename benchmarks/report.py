"""Turn a pytest-benchmark JSON file into Markdown tables (and a PNG plot).

Usage::

    python benchmarks/report.py bench.json [--stat median|min] [--plot bench.png]

Every ratio is between two numbers of the same run and the same
pytest-benchmark group (same case, dtype and thread count); see
``benchmarks/README.md``.  Times are the per-call ``--stat`` (default: the
median over rounds) in milliseconds.  Ratios: ``x copy`` = fastxent time /
``np.copyto`` time (1.00 = at the copy floor), ``x read`` = loss-only time /
``z.max()`` time, speed-ups = peer time / fastxent loss+grad time, like for like
(allocating peers against fastxent allocating, scikit-learn's ``gradient_out=``
against ``out=``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

from report_dask import dask_section
from report_objectives import objectives_section

from fastxent import bench

PEERS = [
    ("numpy_naive", "NumPy naive"),
    ("torch", "torch"),
    ("sklearn", "scikit-learn"),
    ("jax", "JAX"),
]
#: Like for like: peers that allocate their gradient are compared with
#: fastxent allocating its own (no out=), scikit-learn's preallocated
#: gradient_out= with fastxent's out=.
PREALLOCATED = {name for name, peer in bench.PEERS.items() if peer.preallocated}
#: The core benchmarks' names of what ``fastxent.bench`` records as these.
BENCH_IMPLS = {
    "fastxent_lossgrad_out": "fastxent",
    "fastxent_lossgrad_alloc": "fastxent_alloc",
    "numpy_naive": "numpy",
    **{name: name for name in bench.PEERS},
}
LABELS = {
    "copyto": "np.copyto",
    "copyto_threads": "copyto, T threads",
    "read_max": "z.max()",
    "fastxent_lossgrad_out": "fastxent loss+grad",
    "fastxent_lossgrad_alloc": "fastxent loss+grad (alloc)",
    "fastxent_loss": "fastxent loss",
    "numpy_naive": "NumPy naive",
    "torch": "torch",
    "sklearn": "scikit-learn",
    "jax": "JAX",
}


def load(path, stat):
    """Return (meta, {group: {impl: record}}) with record["t"] in seconds."""
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        info = dict(b.get("extra_info") or {})
        if "impl" not in info:
            continue
        info["t"] = b["stats"][stat]
        info["rounds"] = b["stats"]["rounds"]
        groups[b["group"]][info["impl"]] = info
    return data, groups


def case_key(case):
    n, m = case.split("x")
    return (int(m), int(n))


def ms(t):
    return "–" if t is None else (f"{t * 1e3:.3g}" if t * 1e3 < 100 else f"{t * 1e3:.0f}")


def ratio(a, b, suffix="×"):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}{suffix}"


def core_groups(groups):
    """{(dtype, threads): [(case, impls)]} for the core case groups, cases by m."""
    out = defaultdict(list)
    for impls in groups.values():
        any_rec = next(iter(impls.values()))
        if "fastxent_lossgrad_out" not in impls or "copyto" not in impls:
            continue
        out[(any_rec["dtype"], any_rec["threads"])].append((any_rec["case"], impls))
    for rows in out.values():
        rows.sort(key=lambda r: case_key(r[0]))
    return dict(sorted(out.items()))


def t_of(impls, name):
    rec = impls.get(name)
    return None if rec is None else rec["t"]


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def per_config(core, title, note, header, row):
    """A section with one table per (dtype, threads): ``row(case, impls)`` per case."""
    out = [f"## {title}", "", note, ""]
    for (dtype, threads), rows in core.items():
        out += [
            f"### {dtype}, {threads} thread{'s' if threads > 1 else ''}",
            "",
            table(header, [row(case, im) for case, im in rows]),
            "",
        ]
    return out


def floors_row(case, im):
    lg, copy = t_of(im, "fastxent_lossgrad_out"), t_of(im, "copyto")
    alloc, fresh = t_of(im, "fastxent_lossgrad_alloc"), t_of(im, "copy_fresh")
    extra = (
        f"{ms(alloc - lg)} vs {ms(fresh - copy)}" if None not in (alloc, lg, fresh, copy) else "–"
    )
    return [
        case,
        ms(copy),
        ms(lg),
        ratio(lg, copy),
        ratio(lg, t_of(im, "copyto_threads")),
        ms(t_of(im, "read_max")),
        ms(t_of(im, "fastxent_loss")),
        ratio(t_of(im, "fastxent_loss"), t_of(im, "read_max")),
        extra,
        ratio(t_of(im, "fastxent_lossgrad_masked"), lg),
    ]


def peers_row(case, im):
    fx_out = t_of(im, "fastxent_lossgrad_out")
    fx_alloc = t_of(im, "fastxent_lossgrad_alloc") or fx_out
    cells, best = [], None
    for key, _ in PEERS:
        t = t_of(im, key)
        fx = fx_out if key in PREALLOCATED else fx_alloc
        cells.append("–" if t is None or fx is None else f"{ms(t)} ({ratio(t, fx)})")
        if t is not None and fx and (best is None or t / fx < best[1]):
            best = (key, t / fx)
    best_cell = "–" if best is None else f"{best[1]:.2f}× ({LABELS[best[0]]})"
    return [case, ms(fx_out), ms(fx_alloc), *cells, best_cell]


def floors_section(core):
    return per_config(
        core,
        "fastxent against the memory floors",
        (
            "`× copy`: loss+grad (`out=`) / `np.copyto` (single-threaded); `× T-copy`: / the "
            "same copy split over T threads; `× read`: loss-only / `z.max()`.  `alloc extra`: "
            "(loss+grad without `out=`) − (with `out=`), next to `z.copy()` − `np.copyto` "
            "(what fresh pages cost).  `masked`: loss+grad with half the logits −inf / without."
        ),
        [
            "n×m",
            "copyto ms",
            "loss+grad ms",
            "× copy",
            "× T-copy",
            "z.max() ms",
            "loss ms",
            "× read",
            "alloc extra ms (fastxent vs z.copy)",
            "masked",
        ],
        floors_row,
    )


def peers_section(core):
    return per_config(
        core,
        "Speed-up of fastxent loss+grad over each peer, like for like",
        (
            "Each cell: peer time in ms (peer time / fastxent time), against fastxent "
            "allocating its gradient for the peers that allocate theirs (NumPy, torch, "
            "JAX), and against fastxent with `out=` for scikit-learn's preallocated "
            "`gradient_out=`.  `best peer`: the smallest of those ratios.  A training loop "
            "should pass `out=`: most of an allocating call's extra time is the kernel "
            "zeroing fresh pages (the floors table's `alloc extra`)."
        ),
        [
            "n×m",
            "fastxent out= ms",
            "fastxent alloc ms",
            *(label for _, label in PEERS),
            "best peer",
        ],
        peers_row,
    )


def threads_section(core):
    by_case = defaultdict(dict)
    for (dtype, threads), rows in core.items():
        for case, im in rows:
            by_case[(dtype, case)][threads] = im
    counts = sorted({t for (_, t) in core})
    if len(counts) < 2 or counts[0] != 1:
        return []
    out = ["## Thread scaling (time at 1 thread / time at T threads)", ""]
    header = ["dtype", "n×m"]
    for t in counts[1:]:
        header += [f"loss+grad {t}T", f"loss {t}T", f"copyto {t}T-split"]
    body = []
    for (dtype, case), per in sorted(
        by_case.items(), key=lambda kv: (kv[0][0], case_key(kv[0][1]))
    ):
        one = per.get(1)
        row = [dtype, case]
        for t in counts[1:]:
            im = per.get(t)
            if one is None or im is None:
                row += ["–"] * 3
                continue
            row += [
                ratio(t_of(one, "fastxent_lossgrad_out"), t_of(im, "fastxent_lossgrad_out")),
                ratio(t_of(one, "fastxent_loss"), t_of(im, "fastxent_loss")),
                ratio(t_of(one, "copyto"), t_of(im, "copyto_threads")),
            ]
        body.append(row)
    return out + [table(header, body), ""]


def options_section(groups):
    per_threads = {}
    case = None
    for g, impls in groups.items():
        if g.startswith("options-") and "option_plain" in impls:
            rec = impls["option_plain"]
            per_threads[rec["threads"]] = impls
            case = f"{rec['case']} {rec['dtype']}"
    if not per_threads:
        return []
    counts = sorted(per_threads)
    names = [k[len("option_") :] for k in per_threads[counts[0]]]
    names.sort(key=lambda s: (s != "plain", s))
    out = [f"## Option overhead at {case}, loss+grad with `out=` (option / plain)", ""]
    header = ["option"]
    for t in counts:
        header += [f"{t}T ms", f"{t}T × plain"]
    body = []
    for name in names:
        row = [name]
        for t in counts:
            im = per_threads[t]
            tt = t_of(im, f"option_{name}")
            row += [ms(tt), ratio(tt, t_of(im, "option_plain"))]
        body.append(row)
    return out + [table(header, body), ""]


def small_section(groups):
    out = []
    for g, impls in sorted(groups.items()):
        if g.startswith("small-") and "fastxent_lossgrad_alloc" in impls and "np_exp" in impls:
            fx, ex = t_of(impls, "fastxent_lossgrad_alloc"), t_of(impls, "np_exp")
            out += [
                f"## Small call ({g[len('small-') :]}, default threads, gradient allocated)",
                "",
                table(
                    ["fastxent loss+grad µs", "np.exp µs", "× np.exp"],
                    [[f"{fx * 1e6:.2f}", f"{ex * 1e6:.2f}", ratio(fx, ex)]],
                ),
                "",
            ]
    imp = groups.get("import", {})
    if "import_numpy" in imp and "import_fastxent" in imp:
        startup = t_of(imp, "import_startup")

        def own(key):
            return imp[key].get("importtime_median_us")

        def wall(key):
            return None if startup is None else imp[key]["t"] - startup

        rows = [
            [label, "–" if own(key) is None else f"{own(key) / 1e3:.1f}", ms(wall(key))]
            for key, label in (
                ("import_numpy", "import numpy"),
                ("import_fastxent", "import fastxent"),
            )
        ]
        rows.append(
            [
                "fastxent / numpy",
                ratio(own("import_fastxent"), own("import_numpy")),
                ratio(wall("import_fastxent"), wall("import_numpy")),
            ]
        )
        out += [
            "## Import cost (fresh interpreters; `import fastxent` includes numpy)",
            "",
            table(["", "-X importtime cumulative ms (median)", "wall − bare interpreter ms"], rows),
            "",
        ]
    return out


def fastxent_lines(fx):
    """Provenance recorded by benchmarks/conftest.py at the start of the run."""
    if not fx:
        return []
    dirty = " + uncommitted changes" if fx.get("dirty") else ""
    lines = [
        f"- fastxent {fx.get('version')} at the start of the run: commit "
        f"{(fx.get('commit') or '?')[:12]}{dirty}"
        f", extension sha256 {fx.get('extension_sha256', '?')[:12]}, {fx.get('simd')}, "
        f"{fx.get('max_threads')} OpenMP threads by default"
    ]
    if fx.get("loadavg") and fx.get("loadavg_end"):
        lines.append(
            f"- load average (1 min) at start / end of the run: {fx['loadavg'][0]:.1f} / "
            f"{fx['loadavg_end'][0]:.1f} (other processes competing for the cores)"
        )
    if fx.get("extension_changed_during_run"):
        lines.append(
            "- **WARNING: the compiled extension changed during the run (rebuilt); "
            "the numbers mix two builds**"
        )
    return lines


def header_lines(data, stat, path):
    cpu = data.get("machine_info", {}).get("cpu", {})
    commit = data.get("commit_info", {})
    versions = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info") or {}
        if "version" in info:
            versions[info["impl"]] = info["version"]
    lines = [
        f"# fastxent benchmarks ({path})",
        "",
        (
            f"- machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} logical CPUs, "
            f"{data.get('machine_info', {}).get('system', '')} "
            f"Python {data.get('machine_info', {}).get('python_version', '?')}"
        ),
        (
            f"- git commit at the end of the run (pytest-benchmark): "
            f"{commit.get('id', '?')[:12]}{' (dirty)' if commit.get('dirty') else ''}, "
            f"finished {data.get('datetime', '?')}"
        ),
        *fastxent_lines(data.get("fastxent")),
        f"- peers: {', '.join(f'{k} {v}' for k, v in sorted(versions.items())) or 'none'}",
        f"- statistic: per-call {stat} over rounds; all ratios within one run and group",
        "",
    ]
    return lines


def bench_records(core):
    """The core groups as ``fastxent.bench`` records (one per case, dtype,
    implementation and thread count; the copy floor the faster of
    ``copyto`` and ``copyto_threads``), for its figure."""
    records = []
    for (dtype, threads), rows in core.items():
        for case, im in rows:
            n, m = (int(v) for v in case.split("x"))
            nbytes = next(iter(im.values()))["nbytes"]
            # logits read, gradient written, int64 labels read, as the CLI counts
            base = {"n": n, "m": m, "dtype": dtype, "bytes": 2 * nbytes + 8 * n}
            times = {name: im[impl]["t"] for impl, name in BENCH_IMPLS.items() if impl in im}
            times["copy"] = min(t_of(im, k) for k in ("copyto", "copyto_threads") if k in im)
            records += [
                {**base, "impl": name, "threads": threads, "seconds": t}
                for name, t in times.items()
            ]
    return records


def plot(core, path, stat, machine):
    """``fastxent.bench``'s figure (the one ``python -m fastxent bench --plot``
    draws) of the core groups."""
    records = bench_records(core)
    peers = [p for p in bench.PEERS if any(r["impl"] == p for r in records)]
    bench.plot(path, records, peers, title=f"{machine}; per-call {stat} over rounds")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="file written by pytest --benchmark-json=FILE")
    ap.add_argument(
        "--stat",
        choices=["median", "min", "mean"],
        default="median",
        help="per-call statistic to use (default: median)",
    )
    ap.add_argument("--plot", metavar="PNG", help="also write a bandwidth plot (matplotlib)")
    args = ap.parse_args(argv)

    data, groups = load(args.json, args.stat)
    core = core_groups(groups)
    lines = header_lines(data, args.stat, args.json)
    if core:
        lines += floors_section(core) + peers_section(core) + threads_section(core)
    lines += options_section(groups) + small_section(groups) + objectives_section(groups)
    lines += dask_section(groups)
    print("\n".join(lines))
    if args.plot:
        if not core:
            print("no core benchmark groups: no plot", file=sys.stderr)
        else:
            cpu = data.get("machine_info", {}).get("cpu", {})
            plot(core, args.plot, args.stat, cpu.get("brand_raw", "?"))
            print(f"\nplot written to {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
