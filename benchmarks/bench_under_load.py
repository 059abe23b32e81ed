"""Under load: default threads against one thread beside another parallel program.

A second process runs fastxent loss+gradient calls with its default threads
in a loop (``--background``), the way a second job or a data loader shares
the cores; meanwhile this process times :func:`fastxent.cross_entropy_with_grad`
into ``out=`` with the default thread count and with ``num_threads=1``,
alternating, for several trials per shape.  The figure of merit is the ratio
default / one thread of each trial's median (and of its mean, which a single
slow call moves): the governor of the default thread count
(``fastxent/_governor.h``) keeps it near 1 where two OpenMP teams on the
same cores used to wait for each other.  Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_under_load.py [--trials 8] [--json FILE] [--no-background]

``--no-background`` measures the same on a quiet machine (the cost of the
governor when nothing competes).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import numpy as np

import fastxent
from fastxent.bench import machine, make_case

SHAPES = [(100_000, 10), (2_000, 100), (16_384, 1_000)]

BACKGROUND = """
import time, numpy as np, fastxent
z = np.random.default_rng(1).standard_normal((100000, 10)).astype(np.float32)
y = np.arange(100000) % 10
o = np.empty_like(z)
end = time.monotonic() + {seconds}
while time.monotonic() < end:
    fastxent.cross_entropy_with_grad(z, y, out=o)
"""


def trial(z, y, out, calls):
    """Per-call times of the default and of one thread, interleaved."""
    default, one = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        fastxent.cross_entropy_with_grad(z, y, out=out)
        t1 = time.perf_counter()
        fastxent.cross_entropy_with_grad(z, y, out=out, num_threads=1)
        t2 = time.perf_counter()
        default.append(t1 - t0)
        one.append(t2 - t1)
    return np.array(default), np.array(one)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-background", action="store_true")
    args = ap.parse_args(argv)
    records = []
    for n, m in SHAPES:
        z, y = make_case(n, m, "float32")
        out = np.empty_like(z)
        for t in range(args.trials):
            bg = None
            if not args.no_background:
                bg = subprocess.Popen([sys.executable, "-c", BACKGROUND.format(seconds=30)])
                time.sleep(0.3)
            try:
                default, one = trial(z, y, out, args.calls)
            finally:
                if bg is not None:
                    bg.kill()
                    bg.wait()
            rec = dict(
                shape=f"{n}x{m}",
                trial=t,
                default_median_ms=1e3 * np.median(default),
                one_median_ms=1e3 * np.median(one),
                default_mean_ms=1e3 * default.mean(),
                one_mean_ms=1e3 * one.mean(),
            )
            rec["ratio_median"] = rec["default_median_ms"] / rec["one_median_ms"]
            rec["ratio_mean"] = rec["default_mean_ms"] / rec["one_mean_ms"]
            records.append(rec)
            print(
                f"{rec['shape']:>10} trial {t}: default {rec['default_median_ms']:.3f} ms, "
                f"one thread {rec['one_median_ms']:.3f} ms (median ratio "
                f"{rec['ratio_median']:.2f}, mean ratio {rec['ratio_mean']:.2f})",
                flush=True,
            )
    for shape in dict.fromkeys(r["shape"] for r in records):
        rs = [r for r in records if r["shape"] == shape]
        print(
            f"{shape}: worst trial median ratio {max(r['ratio_median'] for r in rs):.2f}, "
            f"worst mean ratio {max(r['ratio_mean'] for r in rs):.2f}"
        )
    if args.json:
        meta = dict(
            machine=machine(),
            python=platform.python_version(),
            numpy=np.__version__,
            fastxent=fastxent.__version__,
            background=not args.no_background,
            date=time.strftime("%Y-%m-%d"),
            command="python benchmarks/bench_under_load.py " + " ".join(argv or sys.argv[1:]),
        )
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, records=records), f, indent=1)


if __name__ == "__main__":
    main()
