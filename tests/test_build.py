"""The build: setup.py's cache key of editable builds, the Cython
directives, the packages the wheel ships, and the name ``show_config``
gives the run-time dispatched clone.

The setup.py tests need a source checkout (setup.py beside tests/) and
setuptools; they compile nothing.
"""

from __future__ import annotations

import ctypes
import os
import re
import runpy
import shutil
import subprocess
import sys
import types

import pytest

from fastxent import _kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_PY = os.path.join(ROOT, "setup.py")
PYX = os.path.join(ROOT, "fastxent", "_kernels.pyx")


@pytest.fixture
def setup_py(monkeypatch):
    """setup.py's namespace, loaded without running ``setup()`` (and with a
    stand-in for Cython, a build requirement the test extras lack)."""
    if not os.path.exists(SETUP_PY) or not os.path.exists(PYX):
        pytest.skip("not a source checkout (no setup.py and fastxent/ beside tests/)")
    setuptools = pytest.importorskip("setuptools")
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)
    cython = types.ModuleType("Cython")
    cython.__version__ = "test"
    build = types.ModuleType("Cython.Build")
    build.cythonize = None
    cython.Build = build
    monkeypatch.setitem(sys.modules, "Cython", cython)
    monkeypatch.setitem(sys.modules, "Cython.Build", build)
    monkeypatch.chdir(ROOT)
    return runpy.run_path(SETUP_PY, run_name="fastxent_setup")


def _digest(ns):
    """The cache key setup.py computes for the extension, with the compiler
    set up from the environment as build_ext does."""
    from setuptools import Distribution
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    (ext,) = ns["extensions"]
    build = ns["BuildExt"](Distribution({"ext_modules": [ext]}))
    build.finalize_options()
    build.compiler = new_compiler()
    customize_compiler(build.compiler)
    return ns["_inputs_digest"](ext, ns["_compiler_facts"](build))


def test_cache_key_is_stable(setup_py):
    """The same inputs give the same key (or the cache would never hit)."""
    assert _digest(setup_py) == _digest(setup_py)


@pytest.mark.parametrize("name", ["CFLAGS", "CPPFLAGS", "LDFLAGS", "CC", "CPATH"])
def test_cache_key_covers_the_environment(setup_py, monkeypatch, name):
    """A flag or compiler from the environment (the README's forced-AVX2
    build sets CFLAGS) changes the key, so the old module is not reused."""
    if os.name == "nt" and name != "CPATH":
        pytest.skip("MSVC's command lines do not take these variables")
    before = _digest(setup_py)
    value = {"CC": "cc-of-another-name", "CPATH": "/nonexistent"}.get(name, "-march=x86-64-v3")
    monkeypatch.setenv(name, value)
    assert _digest(setup_py) != before


@pytest.mark.skipif(os.name == "nt", reason="a shell script as the compiler")
def test_cache_key_covers_the_compiler_version(setup_py, monkeypatch, tmp_path):
    """The same compiler command at another version (an upgrade in place)
    changes the key."""
    cc = tmp_path / "cc"
    monkeypatch.setenv("CC", str(cc))
    keys = []
    for version in ("12.2.0", "13.1.0"):
        cc.write_text(f"#!/bin/sh\necho 'cc (test) {version}'\n")
        cc.chmod(0o755)
        keys.append(_digest(setup_py))
    assert keys[0] != keys[1]


def test_cython_directives_set_once():
    """setup.py's CYTHON_DIRECTIVES is the only place: no "# cython:"
    header in the Cython sources (.pyx, .pxd, .pxi)."""
    folder = os.path.dirname(PYX)
    if not os.path.exists(PYX):
        pytest.skip("no Cython sources beside the tests")
    pyx = [n for n in os.listdir(folder) if n.endswith((".pyx", ".pxd", ".pxi"))]
    for name in pyx:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            assert not re.search(r"^#\s*cython:", f.read(), re.MULTILINE), name


def test_every_subpackage_is_listed_for_the_wheel():
    """pyproject.toml names each package setuptools puts in the wheel: a
    folder of fastxent/ with an ``__init__.py`` that it does not list
    (fastxent.bench, fastxent.dask) would be missing from an installed
    fastxent, while the checkout's tests pass."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = os.path.join(ROOT, "pyproject.toml")
    if not os.path.exists(pyproject) or not os.path.exists(PYX):
        pytest.skip("not a source checkout (no pyproject.toml and fastxent/ beside tests/)")
    with open(pyproject, "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    top = os.path.dirname(PYX)
    found = {"fastxent"} | {
        f"fastxent.{name}"
        for name in os.listdir(top)
        if os.path.isfile(os.path.join(top, name, "__init__.py"))
    }
    assert found <= listed, sorted(found - listed)


def _clones():
    """The clone names the dispatcher can report, or a reason to skip."""
    if not sys.platform.startswith("linux"):
        pytest.skip("ifunc clones are Linux-only")
    if "target_clones" not in _kernels.simd_dispatch():
        pytest.skip(f"no run-time dispatch in this build: {_kernels.simd_dispatch()}")
    if shutil.which("nm") is None:
        pytest.skip("needs nm (binutils) to read the module's symbol table")


def test_show_config_names_the_clone_the_loader_picked():
    """``simd_dispatch()`` (``show_config``'s SIMD line) names the clone the
    ifunc resolver really chose for a cloned kernel of this very module:
    the address dlsym resolves ``fx_count_labels`` to is the address of one
    clone in the symbol table."""
    _clones()
    path = _kernels.__file__
    symbols = {}
    for line in subprocess.run(
        ["nm", path], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            symbols[parts[2]] = int(parts[0], 16)
    clones = {
        name.split(".", 1)[1]: addr
        for name, addr in symbols.items()
        if name.startswith("fx_count_labels.") and not name.endswith(".resolver")
    }
    if not clones or "PyInit__kernels" not in symbols:
        pytest.skip("the module's symbol table is stripped")
    lib = ctypes.CDLL(path)  # the module already loaded: the same mapping
    base = ctypes.cast(lib.PyInit__kernels, ctypes.c_void_p).value - symbols["PyInit__kernels"]
    picked = ctypes.cast(lib.fx_count_labels, ctypes.c_void_p).value - base
    (chosen,) = [name for name, addr in clones.items() if addr == picked]
    # Clone suffixes: arch_x86_64_v4, arch_x86_64_v3, default.
    named = _kernels.simd_dispatch().split()[0]
    assert chosen == {"x86-64-v4": "arch_x86_64_v4", "x86-64-v3": "arch_x86_64_v3"}.get(
        named, named
    ), (chosen, _kernels.simd_dispatch())
