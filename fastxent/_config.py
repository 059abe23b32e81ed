"""Build and run-time facts for bug reports: ``fastxent.show_config()``."""

from __future__ import annotations

import platform
import sys
from typing import TextIO, TypedDict

from . import _kernels
from ._version import __version__


class BuildConfig(TypedDict):
    """What :func:`config` returns."""

    version: str
    python: str
    platform: str
    openmp: bool
    default_threads: int
    forked_child: bool
    simd: str
    compile_flags: str


def config() -> BuildConfig:
    """The facts :func:`show_config` prints, as a dict."""
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "openmp": _kernels.openmp_enabled(),
        "default_threads": _kernels.max_threads(),
        "forked_child": _kernels.forked_child(),
        "simd": _kernels.simd_dispatch(),
        "compile_flags": _kernels.build_cflags(),
    }


def show_config(file: TextIO | None = None) -> None:
    """Print the version, OpenMP status, threads, SIMD variant and build flags.

    That is: fastxent's version, whether OpenMP is on, the default thread
    count, the SIMD variant in use and the compiler flags it was built with.
    Include its output in bug reports.  ``fastxent._config.config()``
    returns the same facts as a dict.

    Parameters
    ----------
    file : text stream, optional
        Where to print; ``sys.stdout`` by default.

    Examples
    --------
    >>> import io, fastxent
    >>> fastxent.show_config()  # doctest: +ELLIPSIS
    fastxent ...
    >>> buf = io.StringIO()
    >>> fastxent.show_config(file=buf)
    >>> "OpenMP:" in buf.getvalue()
    True
    """
    c = config()
    lines = [
        f"fastxent {c['version']} (Python {c['python']}, {c['platform']})",
        f"  OpenMP:          {'enabled' if c['openmp'] else 'DISABLED (serial build)'}",
        f"  default threads: {c['default_threads']}"
        + (
            " (forked child: one thread, OpenMP is not used after fork)"
            if c["forked_child"]
            else ""
        ),
        f"  SIMD:            {c['simd']}",
        f"  compile flags:   {c['compile_flags']}",
    ]
    print("\n".join(lines), file=file or sys.stdout)
