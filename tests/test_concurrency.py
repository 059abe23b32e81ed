"""Concurrency: many Python threads at once, any thread count, GIL released.

* Eight Python threads call the three loss functions at the same time, for
  a fixed number of iterations, each with its own dtype, target kind and
  options and its own ``num_threads``, 1 to 8 (36 OpenMP threads on the
  machine at once); every result is bitwise identical to the same call made
  serially with ``num_threads=1`` beforehand.  (test_threads.py covers every
  function and option at thread counts 1-4 one call at a time.)
* The GIL is released inside the kernels: with the interpreter's switch
  interval set to 1000 s, a Python thread can only run while another one
  has released the GIL, so a watcher thread that runs while a kernel is in
  progress proves it.  No timing is measured; a negative control (a C loop
  that keeps the GIL) shows that the watcher cannot run otherwise.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from helpers import assert_bitwise, make_labels, make_logits, make_probs

import fastxent

# n * m above the kernels' threshold (32768 elements) for using threads:
# long rows, and few classes (the kernels' tile path); odd thread splits.
SHAPES = [(300, 211), (1001, 33)]

# (function, dtype, target kind, options, num_threads): one per Python thread.
CONFIGS = [
    ("cross_entropy", np.float32, "labels", dict(), 1),
    ("cross_entropy_grad", np.float64, "labels", dict(label_smoothing=0.1), 2),
    ("cross_entropy_with_grad", np.float32, "probs", dict(reduction="sum"), 3),
    (
        "cross_entropy_with_grad",
        np.float64,
        "labels",
        dict(weight="w", ignore_index=0, reduction="none"),
        4,
    ),
    ("cross_entropy", np.float64, "probs", dict(z_loss=1e-3, softcap=5.0), 5),
    ("cross_entropy_grad", np.float32, "labels", dict(sample_weight="s", softcap=3.0), 6),
    (
        "cross_entropy_with_grad",
        np.float32,
        "labels",
        dict(z_loss=1e-2, label_smoothing=0.2, weight="w"),
        7,
    ),
    ("cross_entropy_grad", np.float64, "probs", dict(weight="w", reduction="mean"), 8),
]


def _inputs(rng, shape, dtype, kind, options):
    n, m = shape
    z = make_logits(rng, shape, dtype)
    z[::7, 3] = -np.inf  # masked classes
    t = make_labels(rng, (n,), m) if kind == "labels" else make_probs(rng, shape, dtype)
    opts = dict(options)
    if opts.get("weight") == "w":
        opts["weight"] = rng.random(m) + 0.5
    if opts.get("sample_weight") == "s":
        opts["sample_weight"] = rng.random(n)
    return z, t, opts


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def test_eight_python_threads_match_serial(rng):
    jobs = []
    for k, (fn, dtype, kind, options, nt) in enumerate(CONFIGS):
        z, t, opts = _inputs(rng, SHAPES[k % 2], dtype, kind, options)
        f = getattr(fastxent, fn)
        expected = _as_tuple(f(z, t, num_threads=1, **opts))
        jobs.append((f, z, t, opts, nt, expected))

    iterations = 40
    barrier = threading.Barrier(len(jobs))
    errors = []
    done = [0] * len(jobs)

    def work(k):
        f, z, t, opts, nt, expected = jobs[k]
        try:
            barrier.wait()
            for _ in range(iterations):
                got = _as_tuple(f(z, t, num_threads=nt, **opts))
                for a, b in zip(got, expected, strict=True):
                    assert_bitwise(a, b, f"{f.__name__} (thread {k})")
                done[k] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((k, repr(e)))
            barrier.abort()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert done == [iterations] * len(jobs)


class _Watcher:
    """Counts how often a second Python thread runs while ``inside`` is set.

    The switch interval is raised to 1000 s for the duration, so the
    calling thread never hands the GIL over on its own: the watcher runs
    only when the GIL is released (it blocks in ``time.sleep(0)`` between
    looks, so the calling thread gets the GIL back when it wants it)."""

    def __init__(self):
        self.inside = False
        self.seen = 0
        self._stop = False
        self._thread = threading.Thread(target=self._watch)

    def _watch(self):
        import time

        while not self._stop:
            if self.inside:
                self.seen += 1
            time.sleep(0)

    def __enter__(self):
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(1000.0)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        sys.setswitchinterval(self._interval)

    def wrap(self, f):
        def wrapped(*args, **kwargs):
            self.inside = True
            try:
                return f(*args, **kwargs)
            finally:
                self.inside = False

        return wrapped


def _seen_during(monkeypatch, kernel_name, call, attempts=20):
    """Largest watcher count while ``_kernels.<kernel_name>`` runs in
    ``call()``, over up to ``attempts`` calls (stops at the first > 0: the
    machine may be too busy to schedule the watcher in one short call)."""
    with _Watcher() as w:
        kernel = getattr(fastxent._kernels, kernel_name)
        monkeypatch.setattr(fastxent._kernels, kernel_name, w.wrap(kernel))
        for _ in range(attempts):
            call()
            if w.seen:
                break
        monkeypatch.undo()
    return w.seen


@pytest.fixture(scope="module")
def big():
    rng = np.random.default_rng(7)
    z = rng.standard_normal((1000, 4000)).astype(np.float32)
    y = rng.integers(0, 4000, 1000)
    return z, y


@pytest.mark.parametrize(
    "kernel,call",
    [
        (
            "cross_entropy_labels",
            lambda z, y: fastxent.cross_entropy_with_grad(z, y, num_threads=1),
        ),
        ("cross_entropy_probs", lambda z, y: fastxent.cross_entropy(z, z, num_threads=1)),
        ("softmax_rows", lambda z, y: fastxent.log_softmax(z, num_threads=1)),
    ],
)
def test_gil_released_during_kernel(kernel, call, big, monkeypatch):
    z, y = big
    assert _seen_during(monkeypatch, kernel, lambda: call(z, y)) > 0, (
        f"no other Python thread ran while {kernel} was running: the GIL is held"
    )


def test_gil_watcher_negative_control():
    """The same measurement around a C loop that keeps the GIL sees nothing."""

    def holds_gil():
        return sum(range(2_000_000))  # builtin sum over a range: no GIL release

    with _Watcher() as w:
        wrapped = w.wrap(holds_gil)
        for _ in range(5):
            wrapped()
    assert w.seen == 0
