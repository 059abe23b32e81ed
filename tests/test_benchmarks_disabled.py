"""The benchmark suite runs as plain tests under ``--benchmark-disable``
(each benchmark called once, as a smoke test).  The whole suite takes
minutes; this runs its cheapest file, whose import benchmark once assumed a
warm-up round that a disabled benchmark does not have."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_small_benchmarks_pass_with_benchmark_disable():
    pytest.importorskip("pytest_benchmark")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            os.path.join("benchmarks", "test_bench_small.py"),
            "--benchmark-disable",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "5 passed" in res.stdout, res.stdout[-2000:]
