"""Write the local intersphinx inventories that conf.py lists first.

The build machines reach no documentation site, so the inventories of the
projects these pages link to (NumPy, SciPy, scikit-learn, PyTorch, Dask, ...)
are written here, when the extension loads, from the names and URLs in
``intersphinx_objects.py``: each link points at the project's real page, and
the build needs no network.  The files are Sphinx's ``objects.inv`` format
(version 2: four header lines, then zlib-compressed lines of
``name domain:role priority uri display-name``).
"""

from __future__ import annotations

import os
import zlib

from intersphinx_objects import OBJECTS

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "_build", "intersphinx")


def inventory_bytes(project: str, entries: list[tuple[str, str, str]]) -> bytes:
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        "# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    lines = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(entries))
    return header + zlib.compress(lines.encode())


def write_inventories(out: str = OUT) -> None:
    os.makedirs(out, exist_ok=True)
    for project, entries in OBJECTS.items():
        data = inventory_bytes(project, entries)
        path = os.path.join(out, f"{project}.inv")
        # Rewrite only on change: Sphinx re-reads an inventory whose file is newer.
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    continue
        except FileNotFoundError:
            pass
        with open(path, "wb") as f:
            f.write(data)


def setup(app):
    write_inventories()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
