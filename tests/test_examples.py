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


def test_torch_fused_head_trains_like_f_cross_entropy():
    pytest.importorskip("torch")
    pytest.importorskip("scipy")
    out = run_example("torch_fused_head.py", "--n", "256", "--V", "2000", "--steps", "3")
    assert "same weights after 3 steps: True" in out
    for name in ("F.cross_entropy", "fastxent.torch"):
        assert f"{name}" in out and "ms per step" in out
    steps = [line for line in out.splitlines() if " step " in line and "loss " in line]
    assert len(steps) == 6
