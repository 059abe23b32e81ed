"""The README's Python examples run as written.

Every ```python block of README.md is executed, in order, in one namespace
(later blocks may use names an earlier one defined).  A block whose first
line is the comment ``# needs: MODULE[, MODULE...]`` is skipped when one of
those modules is not installed; ``# not run by the tests`` skips a block
outright (one that needs a real cluster, say).
"""

from __future__ import annotations

import os
import re

from helpers import run_python_blocks

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_examples():
    assert len(_blocks()) >= 3


def test_readme_python_examples_run(capsys):
    ran = run_python_blocks(_blocks(), README)
    capsys.readouterr()
    assert ran >= 3
