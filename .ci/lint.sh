#!/usr/bin/env bash
# Lint, type and compiler-warning checks for fastxent.
#
#   bash .ci/lint.sh
#
# Runs in the active Python (>= 3.11, for tomllib), which must have fastxent
# installed, since stubtest imports the compiled module: in CI the virtualenv
# of .ci/run, locally an editable install.  Installs the tools of the `lint`
# extra itself.  Every check runs even when an earlier one fails; the exit
# status is 1 if any did.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

failed=()
check() {  # check NAME COMMAND...: run, report, remember a failure
    local name="$1"
    shift
    echo "::: $name"
    local t0=$SECONDS
    if "$@"; then
        echo "    ok ($((SECONDS - t0)) s)"
    else
        echo "    FAILED: $name ($((SECONDS - t0)) s)"
        failed+=("$name")
    fi
}

echo "::: install the lint tools (pyproject.toml, optional-dependencies.lint)"
mapfile -t TOOLS < <("$PY" - <<'EOF'
import tomllib

with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["lint"]))
EOF
)
"$PY" -m pip install -q "${TOOLS[@]}" || exit 1
"$PY" -m ruff --version
"$PY" -m mypy --version
echo "cython-lint $("$PY" -c 'import importlib.metadata as m; print(m.version("cython-lint"))')"

check "ruff check" "$PY" -m ruff check --output-format concise .
check "ruff format --check" "$PY" -m ruff format --check .
# cython-lint has no `python -m` entry point: its script sits beside the interpreter's.
SCRIPTS="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
check "cython-lint" "$SCRIPTS/cython-lint" fastxent/
check "mypy --strict" "$PY" -m mypy --strict fastxent examples/typed_usage.py

# stubtest compares the stubs with the module Python really imports.  An
# installed package (site-packages, found by mypy through its py.typed) is
# checked from an empty folder; an editable install or in-place build, which
# mypy cannot follow through setuptools' import hook, from its checkout.
stubtest() {
    local where
    where="$(cd "$WORK" && "$PY" -c '
import os, site, sysconfig, fastxent
top = os.path.dirname(os.path.dirname(os.path.realpath(fastxent.__file__)))
installed = {os.path.realpath(p) for p in site.getsitepackages()
             + [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]}
print(top, "installed" if top in installed else "checkout")')" || return 1
    echo "    fastxent imported from $where"
    local dir="${where% *}"
    [ "${where##* }" = installed ] && dir="$WORK"
    (cd "$dir" && "$PY" -m mypy.stubtest fastxent --mypy-config-file "$ROOT/pyproject.toml" \
        --allowlist "$ROOT/.ci/stubtest-allowlist.txt" --ignore-unused-allowlist)
}
check "mypy.stubtest fastxent" stubtest

# A -Wall -Wextra build of a copy of the tree (the files git tracks or does not
# ignore), so the checkout and its in-place build are left alone.  Any GCC/clang
# warning (file:line:col: warning:) or Cython warning fails.
warnings_build() {
    mkdir -p "$WORK/src"
    git ls-files -z --cached --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$WORK/src"
    local log="$WORK/build.log"
    if ! FASTXENT_WARNINGS=1 "$PY" -m pip wheel -v --no-deps -w "$WORK/wheel" "$WORK/src" \
        >"$log" 2>&1; then
        tail -n 80 "$log"
        return 1
    fi
    # The build output: the flags each file was compiled with, and any warning.
    local warn='\.(c|h|pyx|pxd):[0-9]+(:[0-9]+)?: warning:|^ *warning: .*\.(pyx|pxd):'
    grep -E "fastxent:|-Wextra|error:|$warn" "$log" | cut -c1-400
    local n
    n="$(grep -cE "$warn" "$log")"
    echo "    $n compiler/Cython warnings"
    [ "$n" -eq 0 ]
}
check "-Wall -Wextra build without warnings" warnings_build

if [ "${#failed[@]}" -gt 0 ]; then
    printf '::: lint FAILED: %s\n' "$(IFS=,; echo "${failed[*]}")"
    exit 1
fi
echo "::: lint passed"
