"""Fixtures and options of the benchmark suite (pytest-benchmark).

Run with ``python -m pytest benchmarks --benchmark-json=bench.json`` and turn
the JSON into tables with ``python benchmarks/report.py bench.json`` (see
``benchmarks/README.md``).  The plain ``python -m pytest`` run never collects
this directory (``testpaths = ["tests"]``).

``case`` is session-scoped and parametrised over the core shapes and dtypes:
pytest orders the tests so that each case is built once and dropped before
the next one is built, so the run never holds more than one large case (the
float64 4096 x 32000 logits alone are 1 GiB).  ``threads`` is parametrised
from ``--bench-threads`` (default ``1,2``).
"""

from __future__ import annotations

import os
import subprocess

import pytest
from _common import case_name

import fastxent
from fastxent.bench import DTYPES, SHAPES, Case, build_info


def pytest_addoption(parser):
    group = parser.getgroup("fastxent-bench", "fastxent benchmarks")
    group.addoption(
        "--bench-threads",
        default="1,2",
        help="comma-separated thread counts to measure (default: 1,2)",
    )


def pytest_generate_tests(metafunc):
    if "threads" in metafunc.fixturenames:
        raw = metafunc.config.getoption("--bench-threads")
        counts = sorted({int(t) for t in str(raw).split(",") if t.strip()})
        if not counts or counts[0] < 1:
            raise pytest.UsageError(f"--bench-threads needs integers >= 1, got {raw!r}")
        metafunc.parametrize("threads", counts, ids=[f"{t}T" for t in counts])


@pytest.fixture(
    scope="session",
    params=[(n, m, d) for (n, m) in SHAPES for d in DTYPES],
    ids=[f"{case_name(n, m)}-{d}" for (n, m) in SHAPES for d in DTYPES],
)
def case(request):
    """One core case (logits, labels, gradient buffer) at a time."""
    n, m, dtype = request.param
    return Case(n, m, dtype)


def _provenance():
    """What is being measured: the git commit and the compiled extension."""

    def git(*args):
        try:
            return subprocess.run(
                ["git", *args],
                capture_output=True,
                text=True,
                check=True,
                cwd=os.path.dirname(os.path.abspath(fastxent.__file__)),
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    info = build_info()
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "version": info["version"],
        "commit": git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "extension": info["extension"],
        "extension_sha256": info["extension_sha256"],
        "extension_mtime": os.path.getmtime(info["extension"]),
        "simd": info["simd"],
        "max_threads": info["default_threads"],
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def pytest_sessionstart(session):
    session.config._fastxent_start = _provenance()


@pytest.hookimpl(optionalhook=True)  # a pytest-benchmark hook; absent without it
def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Record the commit and extension as they were when the run *started*
    (pytest-benchmark's own commit_info is taken at the end), and whether the
    extension file changed during the run (someone rebuilt it)."""
    start = getattr(config, "_fastxent_start", None)
    if start is not None:
        end = _provenance()
        output_json["fastxent"] = {
            **start,
            "loadavg_end": end["loadavg"],
            "extension_changed_during_run": end["extension_sha256"] != start["extension_sha256"],
        }


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "bench_when(predicate): run this benchmark only for the parameter sets "
        "(dict of callspec params) the predicate accepts; the others are deselected",
    )


def pytest_collection_modifyitems(config, items):
    """Deselect parameter combinations a benchmark does not apply to; skip
    everything when the pytest-benchmark plugin is missing or disabled."""
    if not config.pluginmanager.hasplugin("benchmark"):
        skip = pytest.mark.skip(
            reason="pytest-benchmark is not installed or disabled (pip install '.[bench]')"
        )
        for item in items:
            item.add_marker(skip)
    keep, drop = [], []
    for item in items:
        mark = item.get_closest_marker("bench_when")
        params = getattr(getattr(item, "callspec", None), "params", {})
        (keep if mark is None or mark.args[0](params) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
