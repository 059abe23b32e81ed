"""Test configuration shared by the whole suite.

* ``tests/`` goes on ``sys.path`` so that every test module can do
  ``from reference import ...`` (the float64 oracle) and
  ``from helpers import ...`` whatever pytest's import mode.
* Hypothesis profiles: ``default`` (used in CI: small, no deadline, since
  the 2-core CI machine is shared and timings are noise), ``thorough``
  (many more examples, for a local hunt).  Pick one with
  ``FASTXENT_HYPOTHESIS_PROFILE=thorough python -m pytest tests``.
* Fixtures: ``rng``, a NumPy generator seeded per test from its node id, so
  every test sees the same data on every run and in any order.
* ``dask_client``: a ``distributed.LocalCluster`` of two single-threaded
  worker processes on the loopback interface and a Client to it, started
  by the first test of a module that asks for it and closed after the
  module (skips without ``distributed``).  It is not the default scheduler: a test
  opts in with ``dask.config.set(scheduler=dask_client)``.
* Tests marked ``@pytest.mark.slow`` (more than a few seconds each) are
  skipped unless ``--run-slow`` is given or ``FASTXENT_SLOW=1`` is set, so
  that the README's ``python -m pytest`` stays quick; CI runs them
  (``.ci/run``: ``python -m pytest -m slow --run-slow``).
* Every fastxent call of every test is checked not to modify its inputs
  (other than ``out``): an autouse fixture installs the guard of
  ``test_inputs_unmodified.py``; ``@pytest.mark.no_input_guard`` opts out
  (tests that measure memory).
"""

from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a test extra; modules that need it skip
    settings = None

if settings is not None:
    _common = dict(
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    # The default (and CI) profile draws the same examples on every run, so a
    # CI result does not depend on luck; "thorough" explores at random.
    settings.register_profile("default", max_examples=60, derandomize=True, **_common)
    settings.register_profile("thorough", max_examples=2000, **_common)
    settings.load_profile(os.environ.get("FASTXENT_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def rng(request):
    """A generator seeded from the test's node id (stable across runs)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="module")
def dask_client():
    """A Client of a LocalCluster(n_workers=2, threads_per_worker=1,
    processes=True) on 127.0.0.1, without a dashboard, for one test module.

    distributed's nannies set OMP_NUM_THREADS=1 (and the other variables of
    ``distributed.nanny.pre-spawn-environ``) in this process's own
    environment, for good, before they start their workers; the variables
    are put back as they were once the workers run, so that no later test
    (nor the subprocesses it starts) inherits them."""
    distributed = pytest.importorskip("distributed")
    import logging

    saved = dict(os.environ)

    def restore():
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)

    try:
        with distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit="1GiB",
            silence_logs=logging.CRITICAL,
        ) as cluster:
            restore()
            with distributed.Client(cluster, set_as_default=False) as client:
                yield client
    finally:
        restore()


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run the tests marked slow (or set FASTXENT_SLOW=1)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("FASTXENT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (or FASTXENT_SLOW=1)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "no_input_guard: do not check that fastxent leaves the inputs unmodified"
    )


@pytest.fixture(autouse=True)
def _inputs_unmodified(request, monkeypatch):
    """Fail any fastxent call that modifies an input other than ``out``."""
    if request.node.get_closest_marker("no_input_guard") is None:
        from test_inputs_unmodified import install_guard

        install_guard(monkeypatch)
