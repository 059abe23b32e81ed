"""Render recorded benchmark results (JSON) as tables at build time.

``docs/benchmarks/*.json`` hold what was measured, one file per machine::

    {"machine": {"machine": ..., "cpu": ..., "os": ...},
     "tables": [{"id", "title", "description", "date", "commit", "threads",
                 "versions": {...}, "command", "statistic", "columns": [...],
                 "rows": [[...], ...], "notes" (optional),
                 "conditions" (optional)}, ...]}

The directive ``.. bench-tables:: FILE.json`` renders every table of a file,
each as a section with its comparison, its table and what reproduces it
(machine, versions, threads, date, commit, command); ``:only: ID ID ...``
renders a few.  The figures are never typed into a page: a new measurement
is a new or edited JSON file.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

REQUIRED = ("id", "title", "date", "commit", "versions", "command", "columns", "rows")


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    for t in data["tables"]:
        missing = [k for k in REQUIRED if k not in t]
        if missing:
            raise ValueError(f"{path}: table {t.get('id')!r} lacks {missing}")
        for r in t["rows"]:
            if len(r) != len(t["columns"]):
                raise ValueError(
                    f"{path}: table {t['id']!r} has {len(t['columns'])} columns, "
                    f"a row has {len(r)}: {r}"
                )
    return data


def rst_text(text: str) -> str:
    """Markdown-ish text of the JSON files as reST: `code` and plain text escaped."""
    parts = re.split(r"(`[^`]+`)", str(text))
    out = []
    for p in parts:
        if p.startswith("`") and p.endswith("`") and len(p) > 1:
            out.append(f"``{p[1:-1]}``")
        else:
            out.append(re.sub(r"([*|_\\])", r"\\\1", p))
    return "".join(out)


def _cell(text: str) -> str:
    text = rst_text(text)
    return text if text else "\\ "


def table_rst(t: dict, machine: dict) -> list[str]:
    title = rst_text(t["title"])
    out = [title, "-" * (len(title) + 4), ""]
    if t.get("description"):
        out += [rst_text(t["description"]), ""]
    out += [".. list-table::", "   :header-rows: 1", "   :class: bench-table", ""]
    for row in [t["columns"], *t["rows"]]:
        out.append(f"   * - {_cell(row[0])}")
        out += [f"     - {_cell(c)}" for c in row[1:]]
    out.append("")
    if t.get("notes"):
        out += [rst_text(t["notes"]), ""]
    threads = t.get("threads")
    versions = ", ".join(f"{k} {rst_text(v)}" for k, v in t["versions"].items())
    out += [
        f":machine: {machine.get('cpu', machine.get('machine', ''))}, {machine.get('os', '')}",
        f":versions: {versions}",
        f":threads: {threads if threads is not None else 'as in the rows and columns'}",
        f":date: {t['date']} (commit ``{t['commit']}``)",
    ]
    if t.get("statistic"):
        out.append(f":statistic: {rst_text(t['statistic'])}")
    if t.get("conditions"):
        out.append(f":conditions: {rst_text(t['conditions'])}")
    out += [":command:", "", "   .. code-block:: sh", "", f"      {t['command']}", ""]
    return out


class BenchTables(SphinxDirective):
    required_arguments = 1
    option_spec: ClassVar[dict[str, Any]] = {"only": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        rel, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(rel)
        data = load(path)
        only = self.options.get("only")
        wanted = only.split() if only else None
        tables = [t for t in data["tables"] if wanted is None or t["id"] in wanted]
        if wanted is not None and len(tables) != len(wanted):
            raise self.error(f"{self.arguments[0]}: no table with id in {wanted}")
        lines: list[str] = []
        for t in tables:
            lines += table_rst(t, data["machine"])
        node = nodes.section() if wanted is None else nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=path), node)
        return node.children


def setup(app):
    app.add_directive("bench-tables", BenchTables)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
