"""Core benchmarks: fastxent against the memory floors and NumPy.

For every (n, m) of ``fastxent.bench.SHAPES``, float32 and float64, at each
``--bench-threads`` count, one pytest-benchmark group holds:

- ``fastxent_loss``: ``cross_entropy`` (mean), loss only;
- ``fastxent_lossgrad_out``: ``cross_entropy_with_grad`` into a preallocated,
  pre-touched ``out=`` (the issue-4 target);
- ``fastxent_lossgrad_alloc``: the same without ``out=`` (allocates the gradient);
- ``numpy_naive``: the straightforward NumPy loss+grad in the same dtype
  (``fastxent.bench.numpy_loss_grad``);
- ``copyto``: ``np.copyto(dst, z)`` into a pre-touched array, the floor for
  anything that reads z and writes an array of its size (single-threaded, as
  NumPy copies are; ``fastxent.bench.copy_floor`` with one thread);
- ``copyto_threads``: the same copy split over ``threads`` Python threads
  (NumPy releases the GIL while copying), only for threads > 1: the copy
  floor a 2-thread kernel can actually reach (``copy_floor`` with
  ``threads``);
- ``copy_fresh``: ``z.copy()``, a copy into fresh pages (page faults
  included), the yardstick for what allocating the gradient may cost;
- ``read_max``: ``z.max()``, the read floor for loss-only;
- ``fastxent_lossgrad_masked``: loss+grad with ``out=`` on logits whose rows
  have half their entries -inf (two float32 shapes).
"""

from __future__ import annotations

import numpy as np
import pytest
from _common import measure

import fastxent
from fastxent.bench import copy_floor, numpy_loss_grad

# Masked rows are measured at these (n, m, dtype) only.
MASKED_CASES = {(16_384, 1_000, "float32"), (4_096, 32_000, "float32")}


def test_fastxent_loss(benchmark, case, threads):
    z, y = case.z, case.y
    measure(
        benchmark,
        lambda: fastxent.cross_entropy(z, y, num_threads=threads),
        case=case,
        impl="fastxent_loss",
        threads=threads,
    )


def test_fastxent_lossgrad_out(benchmark, case, threads):
    z, y, out = case.z, case.y, case.out
    loss, grad = measure(
        benchmark,
        lambda: fastxent.cross_entropy_with_grad(z, y, out=out, num_threads=threads),
        case=case,
        impl="fastxent_lossgrad_out",
        threads=threads,
    )
    assert grad is out and np.isfinite(loss)


def test_fastxent_lossgrad_alloc(benchmark, case, threads):
    z, y = case.z, case.y
    measure(
        benchmark,
        lambda: fastxent.cross_entropy_with_grad(z, y, num_threads=threads),
        case=case,
        impl="fastxent_lossgrad_alloc",
        threads=threads,
    )


@pytest.mark.bench_when(lambda p: p["case"] in MASKED_CASES)
def test_fastxent_lossgrad_masked(benchmark, case, threads):
    zm, y, out = case.masked, case.y, case.out
    loss, _ = measure(
        benchmark,
        lambda: fastxent.cross_entropy_with_grad(zm, y, out=out, num_threads=threads),
        case=case,
        impl="fastxent_lossgrad_masked",
        threads=threads,
    )
    assert np.isfinite(loss)


def test_numpy_naive(benchmark, case, threads):
    # Single-threaded whatever `threads` says (NumPy ufuncs do not thread);
    # measured in every group so that each group's ratios are same-run.
    z, y = case.z, case.y
    measure(
        benchmark,
        lambda: numpy_loss_grad(z, y),
        case=case,
        impl="numpy_naive",
        threads=threads,
    )


def test_copyto(benchmark, case, threads):
    with copy_floor(case.out, case.z) as copy:
        measure(benchmark, copy, case=case, impl="copyto", threads=threads)


@pytest.mark.bench_when(lambda p: p["threads"] > 1)  # with 1 thread it is copyto
def test_copyto_threads(benchmark, case, threads):
    with copy_floor(case.out, case.z, threads) as copy:
        measure(benchmark, copy, case=case, impl="copyto_threads", threads=threads)


def test_copy_fresh(benchmark, case, threads):
    z = case.z
    measure(benchmark, z.copy, case=case, impl="copy_fresh", threads=threads)


def test_read_max(benchmark, case, threads):
    z = case.z
    measure(benchmark, z.max, case=case, impl="read_max", threads=threads)
