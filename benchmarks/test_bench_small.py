"""Small calls and import cost.

- group ``small-32x10-float64``: ``cross_entropy_with_grad(z, y)`` on a 32 x 10
  float64 array (default threads, gradient allocated: the whole Python-side
  cost an optimiser pays per call) against ``np.exp(z)`` on the same array.
  Target: under 3x ``np.exp``.
- group ``import``: fresh interpreters running ``python -X importtime -c
  "import numpy"`` / ``"import fastxent"`` (and ``"pass"`` for the start-up
  cost).  The benchmark time is the interpreter's wall time; the import's own
  cumulative time from ``-X importtime`` is kept per round in
  ``extra_info["importtime_us"]`` (the report uses its median).  Target:
  ``import fastxent`` (numpy included) under 1.5x ``import numpy``.

Run this file as a script for a quick import-time reading without pytest.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

import numpy as np
import pytest
from _common import measure

import fastxent
from fastxent.bench import make_case

SMALL_N, SMALL_M = 32, 10
IMPORT_ROUNDS = 15


def import_time_us(module):
    """Run a fresh ``python -X importtime -c "import module"``; return the
    cumulative import time of ``module`` in microseconds (None for ``pass``)."""
    code = "pass" if module is None else f"import {module}"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    if module is None:
        return None
    for line in proc.stderr.splitlines():
        # "import time: self [us] | cumulative | imported package"
        parts = line.split("|")
        if len(parts) == 3 and parts[2].rstrip() == f" {module}":
            return int(parts[1])
    raise RuntimeError(f"no top-level import-time line for {module!r}:\n{proc.stderr[-2000:]}")


def median_import_times(modules=("numpy", "fastxent"), repeats=IMPORT_ROUNDS):
    """Median cumulative import time (us) of each module, fresh interpreters."""
    for m in modules:  # warm the OS file cache
        import_time_us(m)
    return {m: statistics.median(import_time_us(m) for _ in range(repeats)) for m in modules}


@pytest.fixture(scope="module")
def small():
    return make_case(SMALL_N, SMALL_M, "float64", seed=3)


def _small(benchmark, fn, impl, z):
    return measure(
        benchmark,
        fn,
        case=f"{SMALL_N}x{SMALL_M}",
        dtype=z.dtype,
        nbytes=z.nbytes,
        threads=0,
        impl=impl,
        group=f"small-{SMALL_N}x{SMALL_M}-{z.dtype}",
    )


def test_small_fastxent(benchmark, small):
    z, y = small
    loss, grad = _small(
        benchmark, lambda: fastxent.cross_entropy_with_grad(z, y), "fastxent_lossgrad_alloc", z
    )
    assert grad.shape == z.shape and np.isfinite(loss)


def test_small_np_exp(benchmark, small):
    z, _ = small
    _small(benchmark, lambda: np.exp(z), "np_exp", z)


@pytest.mark.parametrize(
    "module", [None, "numpy", "fastxent"], ids=["startup", "numpy", "fastxent"]
)
def test_import(benchmark, module):
    times = []
    benchmark.group = "import"
    benchmark.extra_info.update(impl=f"import_{module or 'startup'}", importtime_us=times)

    def fresh_import():
        times.append(import_time_us(module))

    benchmark.pedantic(fresh_import, rounds=IMPORT_ROUNDS, warmup_rounds=1, iterations=1)
    if module is not None:
        # Drop the warm-up round, when there was one: --benchmark-disable
        # runs the function once, without warm-up or rounds.
        del times[: max(0, len(times) - IMPORT_ROUNDS)]
        benchmark.extra_info["importtime_median_us"] = statistics.median(times)
    else:
        benchmark.extra_info.pop("importtime_us")


if __name__ == "__main__":
    t = median_import_times()
    print(f"import numpy    {t['numpy'] / 1e3:8.2f} ms (median of {IMPORT_ROUNDS}, -X importtime)")
    print(
        f"import fastxent {t['fastxent'] / 1e3:8.2f} ms ({t['fastxent'] / t['numpy']:.2f}x numpy)"
    )
