"""The suite's own configuration (conftest.py)."""

from __future__ import annotations

import os

import pytest


def test_slow_tests_are_skipped_unless_asked(request):
    """``@pytest.mark.slow`` tests skip under the README's plain
    ``python -m pytest`` and run with ``--run-slow`` or ``FASTXENT_SLOW=1``
    (as CI runs them)."""
    run_slow = request.config.getoption("--run-slow") or os.environ.get("FASTXENT_SLOW") == "1"
    slow = [item for item in request.session.items if item.get_closest_marker("slow")]
    if not slow:
        pytest.skip("no test marked slow was collected in this run")
    for item in slow:
        skipped = any(m.name == "skip" for m in item.iter_markers())
        assert skipped != run_slow, (item.nodeid, run_slow)
