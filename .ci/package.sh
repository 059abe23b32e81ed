#!/usr/bin/env bash
# Packaging check for fastxent: build the sdist and the wheel, check what each
# holds, install the sdist into a fresh virtualenv and exercise the installed
# package from outside the source tree (a smoke test, the docstring examples
# and the test suite shipped in the sdist).  A header or .pyx missing from the
# sdist fails here, not on a user's machine.
#
#   bash .ci/package.sh          (any Python >= 3.10 with pip; reaches PyPI)
#
# The source tree is not written to: everything is built from a copy of it
# (the files git tracks or does not ignore) in a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "::: copy of the source tree in $WORK/src"
mkdir -p "$WORK/src"
git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$WORK/src"

echo "::: python -m build (sdist, then a wheel built from that sdist)"
"$PY" -m pip install -q "build>=1.2"
LOG="$WORK/build.log"
if ! "$PY" -m build --outdir "$WORK/dist" "$WORK/src" >"$LOG" 2>&1; then
    tail -n 80 "$LOG"
    exit 1
fi
grep -E "fastxent:|Successfully built" "$LOG" || true
SDIST="$(ls "$WORK"/dist/fastxent-*.tar.gz)"
WHEEL="$(ls "$WORK"/dist/fastxent-*.whl)"
VERSION="$("$PY" -c 'import sys; exec(open(sys.argv[1]).read()); print(__version__)' \
    "$ROOT/fastxent/_version.py")"

echo "::: contents"
"$PY" - "$SDIST" "$WHEEL" "$VERSION" <<'EOF'
import sys
import tarfile
import zipfile

sdist, wheel, version = sys.argv[1:]
top = f"fastxent-{version}/"
with tarfile.open(sdist) as t:
    snames = {n[len(top):] for n in t.getnames() if n.startswith(top)}
with zipfile.ZipFile(wheel) as z:
    wnames = set(z.namelist())

problems = []
for name in ["setup.py", "pyproject.toml", "README.md", "CHANGELOG.md", "MANIFEST.in",
             "fastxent/__init__.py", "fastxent/_version.py", "fastxent/_kernels.pyx",
             "fastxent/_kernels.pyi", "fastxent/py.typed", "fastxent/_rowops.c",
             "fastxent/_rowops.h", "fastxent/_rowops_t.h", "fastxent/_logprob_t.h",
             "fastxent/_kernels_logprob.pxi", "fastxent/bench/__init__.py",
             "fastxent/dask/__init__.py", "fastxent/torch/__init__.py", "tests/conftest.py"]:
    if name not in snames:
        problems.append(f"sdist lacks {name}")
for name in sorted(snames):
    if name == "fastxent/_kernels.c" or name.endswith((".so", ".pyd", ".o", ".pyc")):
        problems.append(f"sdist holds a build product: {name}")
    if name.startswith(("benchmarks/", ".ci/", "build/")):
        problems.append(f"sdist holds {name}")
for name in ["fastxent/__init__.py", "fastxent/_kernels.pyi", "fastxent/py.typed",
             "fastxent/bench/__init__.py", "fastxent/dask/__init__.py",
             "fastxent/torch/__init__.py"]:
    if name not in wnames:
        problems.append(f"wheel lacks {name}")
if not any(n.startswith("fastxent/_kernels.") and n.endswith((".so", ".pyd")) for n in wnames):
    problems.append("wheel lacks the compiled fastxent/_kernels extension")
if "fastxent/_kernels.c" in wnames:
    problems.append("wheel holds the generated fastxent/_kernels.c")
if any(n.startswith("tests/") for n in wnames):
    problems.append("wheel holds the tests")

print(f"{sdist.rsplit('/', 1)[-1]}: {len(snames)} files; {wheel.rsplit('/', 1)[-1]}: "
      f"{len(wnames)} files")
for p in problems:
    print("  PROBLEM:", p)
sys.exit(1 if problems else 0)
EOF

echo "::: install the sdist (with its test and dask extras) into a fresh virtualenv"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip
LOG="$WORK/install.log"
# The "dask" extra too: the doctests of fastxent.dask import dask, and the
# extra must resolve from the sdist's own metadata.
if ! "$VPY" -m pip install -v "${SDIST}[test,dask]" >"$LOG" 2>&1; then
    tail -n 80 "$LOG"
    exit 1
fi
grep -E "^ *fastxent:" "$LOG" || true

# Everything below runs in an empty folder: `import fastxent` must find the
# installed package, never a checkout.
mkdir -p "$WORK/outside"
cd "$WORK/outside"

echo "::: smoke test of the installed package"
"$VPY" - "$WORK/venv" "$VERSION" <<'EOF'
import os
import sys

import numpy as np

import fastxent

venv, version = sys.argv[1:]
assert os.path.realpath(fastxent.__file__).startswith(os.path.realpath(venv)), fastxent.__file__
assert fastxent.__version__ == version, (fastxent.__version__, version)
assert "sklearn" not in sys.modules, "import fastxent must not import scikit-learn"
assert "dask" not in sys.modules, "import fastxent must not import dask"
fastxent.show_config()

z = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
y = np.array([0, 2])
lse = np.log(np.exp(z).sum(axis=1))
loss, grad = fastxent.cross_entropy_with_grad(z, y)
p = np.exp(z - lse[:, None])
p[np.arange(2), y] -= 1.0
assert np.isclose(loss, np.mean(lse - z[np.arange(2), y])), loss
assert np.allclose(grad, p / 2), grad
print(f"installed fastxent {fastxent.__version__} at {os.path.dirname(fastxent.__file__)}: OK")
EOF

echo "::: docstring examples of the installed package"
# fastxent.torch and fastxent.jax import their framework: without it (not in
# this venv's extras) their docstrings are not collected.
# (--ignore with the module's path, the fastxent/torch/ package's folder or
# fastxent/jax.py: pytest applies no --ignore-glob to --pyargs)
mapfile -t SKIP < <("$VPY" -c '
import importlib.util, os, fastxent
for mod in ("torch", "jax"):
    if importlib.util.find_spec(mod) is None:
        path = os.path.join(os.path.dirname(fastxent.__file__), mod)
        print("--ignore=" + (path if os.path.isdir(path) else path + ".py"))
')
"$VPY" -m pytest -q -p no:cacheprovider --doctest-modules --pyargs fastxent "${SKIP[@]}"

echo "::: the sdist's test suite against the installed package"
tar -xzf "$SDIST" -C "$WORK"
"$VPY" -m pytest -q -p no:cacheprovider --rootdir "$WORK/fastxent-$VERSION" \
    "$WORK/fastxent-$VERSION/tests"
