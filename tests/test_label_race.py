"""A label changed by another thread while a kernel reads it.

The Python layer checks every label before the kernels run; the kernels
then read the labels again without the GIL, so another Python thread can
write to the array in between.  That is the caller's data race, but it must
never become an index out of bounds: every kernel reads each label once and
re-checks it, sets the row's outputs to NaN and the call raises.

* Deterministic: the test hook ``_kernels.loss_rows_unchecked`` runs the
  kernels on labels that skipped the check, so each kernel (two-class, tile,
  row; one and two threads; per-row losses or only their sum) meets an
  out-of-range label exactly as after a race.
* The race itself, in a subprocess (a crash there fails the test instead of
  killing pytest): one thread flips a label to 10**12 and back while another
  calls the public functions in a loop.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastxent import _kernels

# m = 2: the two-class kernel; 10: the tile kernel; 211: the row kernel.
KERNEL_M = [2, 10, 211]


@pytest.mark.parametrize("m", KERNEL_M)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("per_row", [True, False])
def test_out_of_range_label_in_kernel_raises(rng, m, dtype, num_threads, per_row):
    n = 400  # above the threads' threshold at m = 211 only
    z = rng.standard_normal((n, m)).astype(dtype)
    y = np.arange(n, dtype=np.int64) % m
    grad = np.empty_like(z)
    loss = np.empty(n) if per_row else None
    # In range: a finite sum, no error.
    assert np.isfinite(_kernels.loss_rows_unchecked(z, y, loss, grad, -100, num_threads))
    bad_rows = [5, 77, n - 1]
    y[bad_rows] = [10**12, -3, m]
    with pytest.raises(RuntimeError, match="label changed while the kernel read it"):
        _kernels.loss_rows_unchecked(z, y, loss, grad, -100, num_threads)
    assert np.isnan(grad[bad_rows]).all()
    good = np.setdiff1d(np.arange(n), bad_rows)
    assert np.isfinite(grad[good]).all()
    if per_row:
        assert np.isnan(loss[bad_rows]).all()
        assert np.isfinite(loss[good]).all()


def test_ignore_index_is_not_a_race(rng):
    z = rng.standard_normal((64, 10)).astype(np.float32)
    y = np.arange(64, dtype=np.int64) % 10
    y[3] = -100
    grad = np.empty_like(z)
    _kernels.loss_rows_unchecked(z, y, None, grad, -100, 1)
    assert (grad[3] == 0).all()


RACE_SCRIPT = textwrap.dedent(
    """
    import threading, time
    import numpy as np
    import fastxent as fx

    def race(call, m, n, seconds=0.6):
        rng = np.random.default_rng(0)
        z = rng.standard_normal((n, m)).astype(np.float32)
        y = (np.arange(n) % m).astype(np.int64)
        stop = threading.Event()

        def flip():
            i = 0
            while not stop.is_set():
                k = i % n
                y[k] = 10**12
                y[k] = k % m
                i += 1

        t = threading.Thread(target=flip)
        t.start()
        outcomes = set()
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                try:
                    call(z, y)
                    outcomes.add("ok")
                except RuntimeError as e:
                    assert "label changed" in str(e), e
                    outcomes.add("race")
                except ValueError as e:  # caught by the check before the kernels
                    assert "outside [0," in str(e), e
                    outcomes.add("checked")
        finally:
            stop.set()
            t.join()
        return outcomes

    out = np.empty((20000, 128), np.float32)
    W = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    x = np.random.default_rng(2).standard_normal((20000, 16)).astype(np.float32)
    calls = {
        "row": (lambda z, y: fx.cross_entropy_grad(z, y, out=out, num_threads=1), 128, 20000),
        "row2": (lambda z, y: fx.cross_entropy_grad(z, y, out=out, num_threads=2), 128, 20000),
        "tile": (lambda z, y: fx.cross_entropy_with_grad(z, y, num_threads=1), 10, 20000),
        "binary": (lambda z, y: fx.cross_entropy_with_grad(z, y, num_threads=1), 2, 20000),
        "half": (lambda z, y: fx.cross_entropy_with_grad(z.astype(np.float16), y), 128, 4000),
        "linear": (
            lambda z, y: fx.linear_cross_entropy_with_grad(x[: len(y)], W, y, chunk_size=512),
            64, 4000,
        ),
    }
    for name, (call, m, n) in calls.items():
        print(name, sorted(race(call, m, n)), flush=True)
    """
)


@pytest.mark.slow
def test_label_race_never_crashes():
    proc = subprocess.run(
        [sys.executable, "-c", RACE_SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert proc.stdout.count("\n") == 6, proc.stdout
