"""The Python examples of the documentation's pages run as written.

Every ```python block of the Markdown pages under docs/ (the getting-started
page and the user guide) is executed, in order, one namespace per page (a
block may use names an earlier block of its page defined), with the
conventions of test_readme.py: a block whose first line is
``# needs: MODULE[, MODULE...]`` is skipped when one of those modules is
not installed, and ``# not run by the tests`` skips a block outright.
The gallery's scripts run when the documentation is built (.ci/run).
"""

from __future__ import annotations

import glob
import os
import re

import pytest
from helpers import run_python_blocks

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
PAGES = sorted(
    p
    for p in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True)
    if os.sep + "_build" + os.sep not in p
)


def python_blocks(path):
    with open(path, encoding="utf-8") as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


def test_the_guide_has_examples():
    guide = [p for p in PAGES if os.sep + "guide" + os.sep in p]
    assert len(guide) >= 8
    assert sum(len(python_blocks(p)) for p in guide) >= 15


@pytest.mark.parametrize("path", PAGES, ids=lambda p: os.path.relpath(p, DOCS))
def test_page_python_examples_run(path, capsys):
    run_python_blocks(python_blocks(path), path)
    capsys.readouterr()
