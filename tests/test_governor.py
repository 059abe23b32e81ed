"""The default thread count's governor (fastxent/_governor.h).

A parallel region whose wall time far exceeds its longest chunk's working
time was kept waiting for the cores (another parallel program spinning on
them); calls that asked for the default thread count then run on one thread
for a back-off period.  These tests drive the governor through its test hook
with the timings a kernel would report, so they do not depend on the load of
the machine; the kernels' own reports are exercised by every threaded test
(results are the same bits at any thread count, so the switch is invisible
except in time: benchmarks/bench_under_load.py measures that).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import fastxent
from fastxent import _kernels
from fastxent import _validation as v

pytestmark = pytest.mark.skipif(
    _kernels.max_threads() < 2, reason="one thread: the governor never has a choice"
)


@pytest.fixture(autouse=True)
def fresh_governor():
    _kernels.governor_reset()
    yield
    _kernels.governor_reset()


def test_quiet_regions_keep_threads():
    # wall = longest chunk + a little: working, not waiting
    _kernels.governor_report(0.0021, [0.002, 0.0019])
    # a chunk preempted while it worked lengthens itself: fair sharing
    _kernels.governor_report(0.030, [0.029, 0.001])
    # tiny regions: starting a team costs up to the slack
    _kernels.governor_report(0.00015, [0.00001, 0.00001])
    assert _kernels.governor_state()[0] == 0
    assert _kernels.default_threads() == _kernels.max_threads()


def test_waiting_region_sends_default_calls_to_one_thread():
    _kernels.governor_report(0.030, [0.0005, 0.0004])  # 30 ms for 0.5 ms of work
    waits, backoff, remaining = _kernels.governor_state()
    assert waits == 1
    assert 0.0 < remaining <= 0.05
    assert backoff == pytest.approx(0.1)  # doubled for the next time
    assert _kernels.default_threads() == 1
    assert v.resolve_threads(None) == 1
    # an explicit request is honoured
    assert v.resolve_threads(2) == 2


def test_backoff_doubles_and_is_bounded():
    for _ in range(10):
        _kernels.governor_report(0.030, [0.0005, 0.0005])
    waits, backoff, remaining = _kernels.governor_state()
    assert waits == 10
    assert backoff == pytest.approx(2.0)
    assert 0.5 < remaining <= 2.0


def test_threads_return_after_the_backoff_and_it_resets():
    _kernels.governor_report(0.030, [0.0005, 0.0005])
    assert _kernels.default_threads() == 1
    time.sleep(0.06)
    assert _kernels.default_threads() == _kernels.max_threads()
    # a quiet region after the deadline forgets the doubled back-off
    _kernels.governor_report(0.0011, [0.001, 0.001])
    assert _kernels.governor_state()[1] == pytest.approx(0.05)


def test_same_bits_whether_or_not_the_governor_intervenes(rng):
    z = rng.standard_normal((4000, 37)).astype(np.float32)
    y = rng.integers(0, 37, 4000)
    loss0, grad0 = fastxent.cross_entropy_with_grad(z, y)
    _kernels.governor_report(0.030, [0.0005, 0.0005])
    assert _kernels.default_threads() == 1
    loss1, grad1 = fastxent.cross_entropy_with_grad(z, y)
    assert loss0.tobytes() == loss1.tobytes()
    assert grad0.tobytes() == grad1.tobytes()


def test_kernels_report_quiet_regions(rng):
    # A real threaded call on a machine that is not overloaded by this test:
    # whatever else runs, an explicit two-thread call returns and leaves the
    # governor in a consistent state (a count, a back-off within bounds).
    z = rng.standard_normal((20000, 50)).astype(np.float32)
    y = rng.integers(0, 50, 20000)
    for _ in range(3):
        fastxent.cross_entropy_with_grad(z, y, num_threads=2)
        fastxent.softmax(z, num_threads=2)
    waits, backoff, remaining = _kernels.governor_state()
    assert waits >= 0 and 0.05 <= backoff <= 2.0 and 0.0 <= remaining <= 2.0
