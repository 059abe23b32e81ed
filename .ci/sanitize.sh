#!/usr/bin/env bash
# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer.
#
# Builds fastxent with FASTXENT_SANITIZE=1 (setup.py: -fsanitize=address,undefined
# -fno-omit-frame-pointer -g -O1, no target_clones) from a copy of the tree into
# a fresh virtualenv, then runs the tests with the compiler's own ASan/UBSan
# runtimes preloaded (CPython itself is not instrumented, so the ASan runtime
# has to come first in the library list).  Any sanitizer report fails the run:
# ASan and UBSan abort the process on their first report, and the log is also
# searched for reports, in case one was printed by a child process.
#
#   bash .ci/sanitize.sh                 # the default subset (a few minutes)
#   bash .ci/sanitize.sh tests/test_fuzz.py -k softmax   # any pytest arguments
#
# Paths are relative to the repository root, as usual.
#
# Environment: CC (default gcc), FASTXENT_SANITIZE_DIR (work directory, default
# a fresh temporary one), FASTXENT_FUZZ_EXAMPLES (default 150 here).
# Linux with GCC or clang; the runtimes are found with `$CC -print-file-name`.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC_TREE="$PWD"
CC="${CC:-gcc}"
export CC

ASAN_LIB="$("$CC" -print-file-name=libasan.so)"
UBSAN_LIB="$("$CC" -print-file-name=libubsan.so)"
for lib in "$ASAN_LIB" "$UBSAN_LIB"; do
    if [ ! -e "$lib" ]; then
        echo "sanitize: $CC has no sanitizer runtime ($lib); install libasan/libubsan" >&2
        exit 2
    fi
done

WORK="${FASTXENT_SANITIZE_DIR:-$(mktemp -d)}"
mkdir -p "$WORK"
echo "::: sanitizer work directory: $WORK"

# A copy of the tree without build products, so that neither an in-place
# build (fastxent/*.so, fastxent/_kernels.c, build/) is used nor overwritten.
rm -rf "$WORK/src"
mkdir -p "$WORK/src"
tar -C "$SRC_TREE" --exclude=./.git --exclude=./build --exclude='./*.egg-info' \
    --exclude='*.so' --exclude=./fastxent/_kernels.c --exclude=__pycache__ \
    --exclude=.hypothesis --exclude=.pytest_cache --exclude=.benchmarks \
    --exclude='./.venv*' --exclude='./venv*' -cf - . | tar -C "$WORK/src" -xf -

rm -rf "$WORK/venv"
python3 -m venv "$WORK/venv"
# shellcheck disable=SC1091
. "$WORK/venv/bin/activate"

echo "::: sanitized build (FASTXENT_SANITIZE=1)"
LOG="$WORK/build.log"
# --no-cache-dir and --no-binary: never reuse a wheel built without sanitizers.
if ! FASTXENT_SANITIZE=1 python -m pip install -v --no-cache-dir --no-binary=fastxent \
        "$WORK/src[test]" >"$LOG" 2>&1; then
    tail -n 80 "$LOG"
    exit 1
fi
grep -E "fastxent:|warning:" "$LOG" || true
echo "    built in ${SECONDS} s"

export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
# CPython does not free everything at exit: no leak checking.  Stop at the
# first error of either sanitizer, with a stack trace.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
# Python objects through malloc too, so that ASan sees them.
export PYTHONMALLOC=malloc
export FASTXENT_FUZZ_EXAMPLES="${FASTXENT_FUZZ_EXAMPLES:-150}"

# `import fastxent` must be the sanitized installed package: the copied
# sources go (only the tests and the pytest configuration are needed).
rm -rf "$WORK/src/fastxent"
cd "$WORK/src"
python - <<'EOF'
import fastxent, fastxent._kernels as k
flags = k.build_cflags()
print(f"fastxent from {fastxent.__file__}\n  cflags: {flags}")
assert "site-packages" in fastxent.__file__, "not the installed package"
assert "-fsanitize=address,undefined" in flags, "not a sanitized build"
EOF

if [ "$#" -gt 0 ]; then
    ARGS=("$@")
else
    # Everything but the huge-array and timing-heavy tests.
    ARGS=(tests -m "not bigmem and not slow")
fi

echo "::: tests under ASan + UBSan: pytest ${ARGS[*]}"
TLOG="$WORK/pytest.log"
set +e
python -m pytest -p no:cacheprovider -q "${ARGS[@]}" 2>&1 | tee "$TLOG"
status=${PIPESTATUS[0]}
set -e
if grep -qE "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|UndefinedBehaviorSanitizer" "$TLOG"; then
    echo "sanitize: FAILED: a sanitizer report is in $TLOG" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "sanitize: FAILED: pytest exited with $status after ${SECONDS} s" >&2
    exit "$status"
fi
echo "sanitize: OK (no sanitizer report; ${SECONDS} s in all)"
