"""The pytest-benchmark glue of the benchmarks: groups, tags and ``measure``.

Every measurement is tagged in ``benchmark.extra_info`` with ``impl`` (what
was timed), ``case``, ``dtype``, ``threads`` and ``nbytes`` (size of the
logits), and lands in the pytest-benchmark group ``"<case>-<dtype>-<T>T"`` so
that all ratios ``report.py`` prints are between numbers measured side by
side in the same run.  The shapes, the data, the NumPy reference, the
peers, the copy floor and the plot are ``fastxent.bench``'s, the harness
``python -m fastxent bench`` uses too.
"""

from __future__ import annotations

import math
import time

# Calls faster than this go through pytest-benchmark's own calibration (many
# iterations per round); slower ones run one call per round (pedantic mode).
PEDANTIC_ABOVE_S = 5e-3
# A first warm-up call slower than this is not repeated.
SLOW_WARMUP_S = 0.2
# The fewest rounds a slow (pedantic) benchmark gets.
MIN_SLOW_ROUNDS = 3


def case_name(n, m):
    return f"{n}x{m}"


def group_name(case, dtype, threads):
    return f"{case}-{dtype}-{threads}T"


def measure(
    benchmark,
    fn,
    *,
    case,
    impl,
    threads,
    group=None,
    dtype=None,
    nbytes=None,
    min_rounds=MIN_SLOW_ROUNDS,
    **extra,
):
    """Time ``fn()`` under ``benchmark`` and tag the result for the report.

    ``fn`` is called twice first (warm-up: JIT compilation, lazy imports,
    caches; once when that call took over ``SLOW_WARMUP_S``) and the last
    warm-up call sets the method: calls that take under
    ``PEDANTIC_ABOVE_S`` use pytest-benchmark's calibrated loop (honours the
    ``--benchmark-*`` options); slower ones run one call per round for
    ``--benchmark-max-time`` seconds, at least ``min_rounds`` rounds.
    Returns the last result of ``fn``.
    """
    cname = case if isinstance(case, str) else case.name
    dtype = str(dtype if dtype is not None else case.dtype)
    nbytes = int(nbytes if nbytes is not None else case.nbytes)
    benchmark.group = group or group_name(cname, dtype, threads)
    benchmark.extra_info.update(
        impl=impl, case=cname, dtype=dtype, threads=int(threads), nbytes=nbytes, **extra
    )

    t0 = time.perf_counter()
    fn()
    est = time.perf_counter() - t0
    if est < SLOW_WARMUP_S:  # second warm-up call, unless one is expensive
        t0 = time.perf_counter()
        fn()
        est = time.perf_counter() - t0
    if est < PEDANTIC_ABOVE_S:
        return benchmark(fn)
    budget = benchmark._max_time  # --benchmark-max-time (default 1 s)
    rounds = max(min_rounds, min(100, math.ceil(budget / est)))
    return benchmark.pedantic(fn, rounds=rounds, iterations=1)
