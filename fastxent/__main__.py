"""``python -m fastxent``: configuration, a self-check, and a benchmark table.

Commands::

    python -m fastxent [info]      # show_config() + self-check (exit 1 on failure)
    python -m fastxent bench ...   # timing table; see python -m fastxent bench --help
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import _kernels, bench
from ._config import config, show_config
from ._loss import cross_entropy_with_grad
from ._softmax import log_softmax, logsumexp, softmax

# Largest accepted error, relative to the largest reference value, per dtype.
_TOL = {"float32": 1e-5, "float64": 1e-12}


def _reference(
    z: NDArray[np.float64], t: NDArray[Any], sw: NDArray[np.float64] | None
) -> dict[str, Any]:
    """Float64 NumPy results for logits z, labels or probabilities t, sample weights sw."""
    z = z.astype(np.float64)
    zmax = z.max(axis=1, keepdims=True)
    e = np.exp(z - zmax)
    s = e.sum(axis=1, keepdims=True)
    lse = (np.log(s) + zmax)[:, 0]
    p = e / s
    if t.ndim == 1:
        loss, grad = bench.numpy_loss_grad(z, t)
    else:
        w = np.ones(z.shape[0]) if sw is None else sw
        losses = (t * (lse[:, None] - z)).sum(axis=1)
        loss = (w * losses).sum() / w.sum()
        grad = (p * t.sum(axis=1, keepdims=True) - t) * (w / w.sum())[:, None]
    return {
        "loss": loss,
        "grad": grad,
        "softmax": p,
        "log_softmax": z - lse[:, None],
        "logsumexp": lse,
    }


def _relerr(got: Any, want: Any) -> float:
    """Largest absolute error relative to the largest reference magnitude."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    scale = float(np.max(np.abs(want), initial=0.0)) or 1.0
    return float(np.max(np.abs(got - want), initial=0.0)) / scale


def self_check(file: Any = None) -> bool:
    """Compare every kernel with a float64 NumPy reference and print the worst errors.

    Class indices and class probabilities (with sample weights), softmax,
    log-softmax and logsumexp; float32 and float64; one thread and all; a
    small and a wide shape.  Also checks that the results are bitwise the
    same at every thread count.  Returns True when everything agrees.
    """
    out = file or sys.stdout
    rng = np.random.default_rng(20240611)
    threads = sorted({1, int(config()["default_threads"])})
    shapes = [(37, 5), (1_200, 1_000)]
    worst: dict[tuple[str, str], float] = {}
    same_bits = True
    for n, m in shapes:
        z64 = 4.0 * rng.standard_normal((n, m))
        y = rng.integers(0, m, size=n)
        probs = rng.random((n, m))
        probs /= probs.sum(axis=1, keepdims=True)
        sw = rng.random(n)
        for dt in ("float32", "float64"):
            z, pr = z64.astype(dt), probs.astype(dt)
            # the reference sees exactly the rounded inputs fastxent sees
            ref_y, ref_p = _reference(z, y, None), _reference(z, pr, sw)
            first: dict[str, Any] = {}
            for t in threads:
                got: dict[str, Any] = {
                    "labels": cross_entropy_with_grad(z, y, num_threads=t),
                    "probs": cross_entropy_with_grad(z, pr, sample_weight=sw, num_threads=t),
                    "softmax": softmax(z, num_threads=t),
                    "log_softmax": log_softmax(z, num_threads=t),
                    "logsumexp": logsumexp(z, num_threads=t),
                }
                errs = {
                    "loss, class indices": _relerr(got["labels"][0], ref_y["loss"]),
                    "grad, class indices": _relerr(got["labels"][1], ref_y["grad"]),
                    "loss, probabilities": _relerr(got["probs"][0], ref_p["loss"]),
                    "grad, probabilities": _relerr(got["probs"][1], ref_p["grad"]),
                    "softmax": _relerr(got["softmax"], ref_y["softmax"]),
                    "log_softmax": _relerr(got["log_softmax"], ref_y["log_softmax"]),
                    "logsumexp": _relerr(got["logsumexp"], ref_y["logsumexp"]),
                }
                for name, err in errs.items():
                    worst[name, dt] = max(worst.get((name, dt), 0.0), err)
                if not first:
                    first = got
                elif not _same_bits(first, got):
                    same_bits = False
                    print(
                        f"  FAILED: {n}x{m} {dt}: results differ between {threads[0]} and "
                        f"{t} threads",
                        file=out,
                    )
    print(
        f"self-check against a float64 NumPy reference (shapes "
        f"{', '.join(f'{n}x{m}' for n, m in shapes)}; threads "
        f"{', '.join(map(str, threads))}):",
        file=out,
    )
    ok = same_bits
    for (name, dt), err in worst.items():
        good = err <= _TOL[dt]
        ok &= good
        print(
            f"  {name:22s} {dt}  {'ok    ' if good else 'FAILED'}  max rel. error "
            f"{err:.1e} (tolerance {_TOL[dt]:.0e})",
            file=out,
        )
    if same_bits:
        print("  identical bits at every thread count: ok", file=out)
    print("self-check passed" if ok else "self-check FAILED", file=out)
    return ok


def _same_bits(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def flat(d: dict[str, Any]) -> list[Any]:
        items: list[Any] = []
        for v in d.values():
            items.extend(v if isinstance(v, tuple) else (v,))
        return [np.asarray(x) for x in items]

    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(flat(a), flat(b), strict=True))


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected shapes like 100000x10,4096x32000; got {text!r}")
    return [(s[0], s[1]) for s in shapes]


def _threads(text: str) -> list[int]:
    counts = set()
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            counts.add(int(config()["default_threads"]))
        elif part.isdigit() and int(part) >= 1:
            counts.add(int(part))
        else:
            raise argparse.ArgumentTypeError(
                f"expected thread counts like 1,all or 1,2; got {text!r}"
            )
    return sorted(counts)


def _names(allowed: Sequence[str], what: str) -> Any:
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in names if s not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {bad or text!r}; choose from {', '.join(allowed)}"
            )
        return list(dict.fromkeys(names))

    return parse


_DTYPES = bench.DTYPES
_PEERS = tuple(bench.PEERS)


def _gb(nbytes: int) -> str:
    """Bytes in GB (MB below 0.1 GB), for the memory notes."""
    if nbytes < 100e6:
        return f"{max(1, round(nbytes / 1e6))} MB"
    return f"{nbytes / 1e9:.1f} GB"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastxent",
        description="fastxent's build configuration, a self-check of its kernels against a "
        "float64 NumPy reference, and a benchmark table.",
    )
    sub = p.add_subparsers(dest="command", metavar="{info,bench}")
    sub.add_parser(
        "info",
        help="show_config() and the self-check (the default command); "
        "exits 1 if the self-check fails",
    )
    b = sub.add_parser(
        "bench",
        help="time loss+gradient against NumPy, the copy floor and peers",
        description="Time the mean cross-entropy loss and its gradient (fastxent with a "
        "preallocated out=, and allocating its gradient) against the plain NumPy way, "
        "the np.copyto floor (a copy of the logits: the least any loss+gradient costs) "
        "and, with --compare, other libraries, like for like: NumPy, torch and JAX "
        "allocate their gradient and are compared with fastxent allocating, "
        "scikit-learn writes into gradient_out= and is compared with out=. Each time is "
        "the median of --repeats timings after a warm-up. 'of floor' is copy time / "
        "fastxent out= time, with the copy on 1 thread or split over the same number "
        "of threads, whichever is faster. Memory: the cases run one at a time and each "
        "holds about three arrays of the logits' size (torch and JAX add about three "
        "more, scikit-learn one): the default shapes need about "
        f"{_gb(bench.peak_bytes(bench.DEFAULT_SHAPES, _DTYPES))} "
        f"({_gb(bench.peak_bytes(bench.DEFAULT_SHAPES, _DTYPES, _PEERS))} with --compare "
        f"torch or jax), --large about {_gb(bench.peak_bytes(bench.SHAPES, _DTYPES))} "
        f"({_gb(bench.peak_bytes(bench.SHAPES, _DTYPES, _PEERS))} with torch or jax), "
        "--quick a few MB. The run prints its estimate before it starts.",
        epilog="Examples: python -m fastxent bench --quick (a few seconds); "
        "python -m fastxent bench --compare torch,sklearn --plot bench.png",
    )
    b.add_argument(
        "--shapes",
        type=_shapes,
        default=None,
        metavar="NxM,...",
        help="logits shapes (default: "
        + ",".join(f"{n}x{m}" for n, m in bench.DEFAULT_SHAPES)
        + "; overrides --quick and --large)",
    )
    b.add_argument(
        "--dtypes",
        type=_names(_DTYPES, "dtype"),
        default=list(_DTYPES),
        metavar="D,...",
        help="float32 and/or float64 (default: both)",
    )
    b.add_argument(
        "--threads",
        type=_threads,
        default=None,
        metavar="T,...",
        help="thread counts; 'all' = OpenMP's default (default: 1,all)",
    )
    b.add_argument(
        "--repeats",
        type=int,
        default=5,
        metavar="R",
        help="timings per measurement, median reported (default: 5)",
    )
    size = b.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and 3 repeats: a smoke run of a few seconds",
    )
    size.add_argument(
        "--large",
        action="store_true",
        help="the benchmark suite's shapes ("
        + ",".join(f"{n}x{m}" for n, m in bench.SHAPES)
        + f"): about {_gb(bench.peak_bytes(bench.SHAPES, _DTYPES))} of memory",
    )
    b.add_argument(
        "--compare",
        type=_names(_PEERS, "peer"),
        default=[],
        metavar="P,...",
        help="peers to add columns for: "
        + ", ".join(bench.PEERS)
        + " (those not installed are skipped with a note)",
    )
    b.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw throughput against the copy floor (needs matplotlib)",
    )
    b.add_argument("--json", metavar="FILE", help="write the raw timings as JSON")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _busy_note(waits: int) -> str | None:
    """A warning when parallel regions of the run waited on other programs."""
    if waits <= 0:
        return None
    return (
        f"warning: {waits} parallel region(s) of this run waited for cores that another "
        "program kept busy: the figures of more than one thread are not what this machine "
        "does when it is free (the benchmark asks for its thread counts explicitly; the "
        "default thread count would have stepped down to one thread). Rerun on a quiet machine."
    )


def _bench(args: argparse.Namespace) -> int:
    sizes = bench.QUICK_SHAPES if args.quick else bench.SHAPES if args.large else None
    shapes = args.shapes or sizes or bench.DEFAULT_SHAPES
    repeats = 3 if args.quick and args.repeats == 5 else args.repeats
    if repeats < 1:
        print("error: --repeats must be at least 1", file=sys.stderr)
        return 2
    threads = args.threads or _threads("1,all")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("error: --plot needs matplotlib (pip install 'fastxent[bench]')", file=sys.stderr)
            return 2
    peers, notes = [], []
    for name in args.compare:
        version = bench.peer_version(name)
        if version is None:
            notes.append(f"note: {name} is not installed: skipped")
        else:
            peers.append(name)
            notes.append(f"note: {name} {version}")
    if "jax" in peers:
        notes.append("note: jax uses XLA's own thread pool (all cores) in every row")
    need = bench.peak_bytes(shapes, args.dtypes, peers)
    notes.append(
        f"note: needs about {_gb(need)} of memory (the largest case"
        + ("; --quick: a few seconds" if not args.quick and not args.shapes else "")
        + ("; --large: the benchmark suite's shapes" if shapes is bench.DEFAULT_SHAPES else "")
        + ")"
    )
    total = bench.physical_memory()
    if total is not None and need > total // 2:
        notes.append(
            f"warning: that is more than half of this machine's {_gb(total)} of memory; "
            "pass smaller --shapes (or leave out --large) if it swaps"
        )
    show_config()
    print(f"machine: {bench.machine()}")
    for line in notes:
        print(line)
    sys.stdout.flush()
    waits_before = _kernels.governor_state()[0]
    records = bench.run_bench(
        shapes, args.dtypes, threads, repeats, peers, progress=not args.no_progress
    )
    print()
    busy_note = _busy_note(_kernels.governor_state()[0] - waits_before)
    if busy_note:
        print(busy_note)
    print(
        "mean cross-entropy loss + gradient w.r.t. the logits; median of "
        f"{repeats} timings; fastxent ms: into a preallocated out=; alloc ms: allocating "
        "the gradient; speed-up = NumPy / fastxent allocating (like for like); GB/s = "
        "(logits + gradient + labels) / out= time; of floor = copy floor / out= time, "
        "where the floor is the faster of np.copyto on 1 thread and split over the row's "
        "thread count; peer (x) = peer / fastxent, like for like: torch and jax allocate "
        "(against alloc ms), sklearn writes into gradient_out= (against out=). A "
        "training loop should pass out=."
    )
    print(bench.format_table(records, peers))
    if args.json:
        bench.write_json(
            args.json,
            records,
            {
                "shapes": shapes,
                "dtypes": args.dtypes,
                "threads": threads,
                "repeats": repeats,
                "compare": args.compare,
            },
        )
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot(args.plot, records, peers)
        print(f"wrote {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fastxent``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    show_config()
    return 0 if self_check() else 1


if __name__ == "__main__":
    sys.exit(main())
