"""Scale: indexing past 2**31 elements, and the cheap ends of n and m.

``test_past_2_31_elements`` (marked ``bigmem``, skipped unless
``FASTXENT_BIGMEM=1`` and ~10 GiB of memory are available) computes the
loss and gradient of a float32 array of 16386 x 131071 = 2 147 729 406
elements (8.6 GB; > 2**31 = 2 147 483 648), in place (``out=logits``) to
halve the memory, then logsumexp and log_softmax (in place) of the result.
Rows are checked against the float64 reference: the first, the middle, the
last fully below 2**31, the one straddling 2**31 (m is odd, so a row
crosses the boundary), the last, and random ones.  A 32-bit element index
anywhere would corrupt or crash the rows past the boundary.  Run it with

    FASTXENT_BIGMEM=1 python -m pytest tests/test_bigmem.py -m bigmem -s

The cheap ends run always: a million classes with two rows, 200 000 rows
with one or three classes (with the options that need per-thread
scratch).  m = 1 and n = 0 are covered by test_loss.py (test_one_class,
test_no_samples) and test_softmax.py; the expensive middle (n up to 10**7)
by the benchmarks.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import reference as ref
from helpers import assert_close, check_cross_entropy, make_labels, make_logits, row_scale

import fastxent

BIG_N, BIG_M = 16386, 131071
BOUNDARY = 2**31


def _available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _check_rows(got, expected, dtype, scale, what):
    assert_close(got, expected, dtype, scale, what=what)


@pytest.mark.bigmem
@pytest.mark.skipif(
    os.environ.get("FASTXENT_BIGMEM") != "1", reason="set FASTXENT_BIGMEM=1 to run (needs ~10 GiB)"
)
def test_past_2_31_elements():
    n, m = BIG_N, BIG_M
    assert n * m > BOUNDARY and (n - 2) * m < BOUNDARY < (n - 1) * m
    need = n * m * 4 + (1 << 30)
    if _available_bytes() < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of available memory")

    rng = np.random.default_rng(31)
    z = np.empty((n, m), dtype=np.float32)
    for start in range(0, n, 512):  # fill in blocks: no float64 temporary
        block = z[start : start + 512]
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        block *= 3.0
    y = rng.integers(0, m, n).astype(np.int32)
    y[-1] = m - 1  # the very last element of the array is a target
    straddle = BOUNDARY // m
    rows = np.unique(
        np.concatenate(
            [[0, 1, n // 2, straddle - 1, straddle, straddle + 1, n - 1], rng.integers(0, n, 8)]
        )
    )
    assert rows[-1] == n - 1 and straddle * m < BOUNDARY < (straddle + 1) * m
    z_rows = z[rows].copy()

    # Loss and gradient, in place.
    loss, grad = fastxent.cross_entropy_with_grad(z, y, reduction="none", out=z)
    assert grad is z and loss.shape == (n,)
    exp_loss, exp_grad = ref.cross_entropy(z_rows, y[rows], reduction="none")
    _check_rows(loss[rows], exp_loss, np.float32, row_scale(z_rows), "per-row loss")
    _check_rows(z[rows], exp_grad, np.float32, 1.0, "gradient rows")
    # Each gradient row sums to ~0 (softmax minus one-hot); a row skipped or
    # written twice because of a wrapped index would not.
    np.testing.assert_allclose(z[rows].sum(axis=1, dtype=np.float64), 0.0, atol=1e-3)
    total = float(np.sum(loss, dtype=np.float64))
    assert np.isfinite(total)

    # logsumexp and log_softmax (in place) of the gradient array.
    g_rows = z[rows].copy()
    lse = fastxent.logsumexp(z)
    _check_rows(lse[rows], ref.logsumexp(g_rows), np.float32, row_scale(g_rows), "logsumexp")
    fastxent.log_softmax(z, out=z)
    _check_rows(
        z[rows], ref.log_softmax(g_rows), np.float32, row_scale(g_rows)[:, None], "log_softmax rows"
    )
    print(
        f"\nbigmem: {n} x {m} = {n * m} float32 elements ({z.nbytes / 1e9:.2f} GB), "
        f"rows checked: {rows.tolist()}; sum of losses {total:.6g}"
    )


# ---- the cheap ends ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_million_classes(dtype):
    rng = np.random.default_rng(6)
    z = make_logits(rng, (2, 1_000_000), dtype)
    z[1, ::3] = -np.inf
    y = np.array([1, 999_999])
    # The plain path in float64, the one with per-thread scratch in float32.
    options = dict(label_smoothing=0.1, softcap=20.0, z_loss=1e-4) if dtype == np.float32 else {}
    check_cross_entropy(z, y, reduction="none", num_threads=2, **options)
    for name in ("softmax", "log_softmax", "logsumexp"):
        got = getattr(fastxent, name)(z, num_threads=2)
        expected = getattr(ref, name)(z)
        scale = (
            1.0
            if name == "softmax"
            else (row_scale(z) if name == "logsumexp" else row_scale(z)[:, None])
        )
        assert_close(got, expected, dtype, scale, what=name)


@pytest.mark.parametrize("m", [1, 3])
def test_many_rows(m):
    rng = np.random.default_rng(7)
    n = 200_000
    z = make_logits(rng, (n, m), np.float32)
    y = make_labels(rng, (n,), m)
    y[::97] = -100
    check_cross_entropy(
        z, y, reduction="mean", num_threads=2, sample_weight=rng.random(n), softcap=10.0
    )
