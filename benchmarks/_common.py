"""Shared data, timing helper and NumPy reference for the benchmarks.

Every measurement is tagged in ``benchmark.extra_info`` with ``impl`` (what
was timed), ``case``, ``dtype``, ``threads`` and ``nbytes`` (size of the
logits), and lands in the pytest-benchmark group ``"<case>-<dtype>-<T>T"`` so
that all ratios ``report.py`` prints are between numbers measured side by
side in the same run.
"""

from __future__ import annotations

import math
import time
from functools import cached_property

import numpy as np

from fastxent._cli_bench import numpy_loss_grad

# (n, m) of the core benchmark table plus a large-vocabulary case.
CORE_SHAPES = [(100_000, 10), (65_536, 100), (16_384, 1_000), (4_096, 32_000), (1_024, 128_256)]
DTYPES = ["float32", "float64"]
# Logit scale: standard normal times this.  Large enough that the softmax is
# not flat, small enough that no row under- or overflows.
LOGIT_SCALE = 3.0
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


class Case:
    """Logits ``z`` (n, m), int64 labels ``y``, a written-once gradient ``out``."""

    def __init__(self, n, m, dtype, seed=0):
        self.n, self.m = n, m
        self.dtype = np.dtype(dtype)
        self.name = case_name(n, m)
        rng = np.random.default_rng(seed)
        self.z = rng.standard_normal((n, m), dtype=self.dtype)
        self.z *= LOGIT_SCALE
        self.y = rng.integers(0, m, size=n, dtype=np.int64)
        # Touch every page now so that `out=` timings never include page faults.
        self.out = np.zeros_like(self.z)
        self._seed = seed

    @property
    def nbytes(self):
        return self.z.nbytes

    @cached_property
    def masked(self):
        """``z`` with half the logits of every row set to -inf (never the target)."""
        rng = np.random.default_rng(self._seed + 1)
        zm = self.z.copy()
        mask = rng.random(zm.shape) < 0.5
        mask[np.arange(self.n), self.y] = False
        zm[mask] = -np.inf
        return zm

    @cached_property
    def probs(self):
        """Soft targets: each row a random probability vector (sums to 1)."""
        rng = np.random.default_rng(self._seed + 2)
        p = rng.random(self.z.shape, dtype=self.dtype)
        p /= p.sum(axis=1, keepdims=True)
        return p


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


# The plain NumPy loss+gradient (max, shift, exp, sum, log; in the dtype of
# ``z``, in place where an ordinary user would be) is the same one
# ``python -m fastxent bench`` times: one definition for both.
numpy_naive_loss_grad = numpy_loss_grad
