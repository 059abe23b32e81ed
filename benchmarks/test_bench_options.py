"""Option overhead: loss+grad with each option alone vs plain loss+grad.

At (16384, 1000) float32, preallocated ``out=``, loss ``"mean"``, one group
``"options-16384x1000-float32-<T>T"`` per thread count.  The issue's target is
at most 1.10x plain loss+grad for every option.  ``probs`` (probability
targets) reads a second n x m array, so its floor is higher than the others'.
"""

from __future__ import annotations

import numpy as np
import pytest
from _common import measure

import fastxent
from fastxent.bench import Case

N, M, DTYPE = 16_384, 1_000, "float32"
IGNORE = -100
IGNORED_FRACTION = 0.1


@pytest.fixture(scope="module")
def opt_case():
    c = Case(N, M, DTYPE, seed=10)
    rng = np.random.default_rng(11)
    c.weight = rng.uniform(0.5, 2.0, size=M).astype(DTYPE)
    c.sample_weight = rng.uniform(0.0, 2.0, size=N).astype(DTYPE)
    c.y_ignored = c.y.copy()
    c.y_ignored[rng.random(N) < IGNORED_FRACTION] = IGNORE
    return c


OPTIONS = {
    "plain": lambda c: (c.y, {}),
    "weight": lambda c: (c.y, {"weight": c.weight}),
    "sample_weight": lambda c: (c.y, {"sample_weight": c.sample_weight}),
    "ignore_index": lambda c: (c.y_ignored, {"ignore_index": IGNORE}),
    "label_smoothing": lambda c: (c.y, {"label_smoothing": 0.1}),
    "z_loss": lambda c: (c.y, {"z_loss": 1e-4}),
    "softcap": lambda c: (c.y, {"softcap": 30.0}),
    "probs": lambda c: (c.probs, {}),
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_option(benchmark, opt_case, option, threads):
    c = opt_case
    target, kwargs = OPTIONS[option](c)
    z, out = c.z, c.out
    loss, grad = measure(
        benchmark,
        lambda: fastxent.cross_entropy_with_grad(z, target, out=out, num_threads=threads, **kwargs),
        case=c,
        impl=f"option_{option}",
        threads=threads,
        group=f"options-{c.name}-{DTYPE}-{threads}T",
        option=option,
    )
    assert grad is out and np.isfinite(loss)
