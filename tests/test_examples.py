"""The example scripts run, on small sizes, and do what they say."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name, *args):
    res = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_lm_head_finetune_lowers_the_loss():
    pytest.importorskip("scipy")
    out = run_example(
        "lm_head_finetune.py", "--n", "300", "--d", "16", "--V", "2000", "--steps", "3"
    )
    losses = [
        float(line.split("loss ")[1].split()[0]) for line in out.splitlines() if "loss " in line
    ]
    assert len(losses) == 3 and losses[2] < losses[0]
    assert "peak memory of the step" in out and "the unfused logits alone" in out
