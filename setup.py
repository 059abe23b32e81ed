"""Build script for fastxent's compiled kernels.

OpenMP is probed per compiler (GCC/clang ``-fopenmp``, Apple clang
``-Xpreprocessor -fopenmp -lomp``, MSVC ``/openmp``); when no flag works the
extension is built serially and says so.  Environment overrides:

``FASTXENT_OPENMP=0``       build without OpenMP (serial kernels)
``FASTXENT_SANITIZE=1``     AddressSanitizer + UndefinedBehaviorSanitizer build
``FASTXENT_NO_CLONES=1``    no run-time dispatched AVX-512/AVX2 clones

Never ``-ffast-math``: it breaks -inf/NaN handling, and in a shared library
it switches the whole process to flush-to-zero.

Editable installs (``pip install -e``) reuse the compiled module already in
the checkout when it was built from the same inputs: the README's second
set-up command then does not rebuild what the first one built.  The inputs
are everything that changes the binary: the sources and headers, this file,
the compiler (its command lines, which hold ``CC``, ``CFLAGS``,
``CPPFLAGS``, ``LDFLAGS`` and ``LDSHARED`` from the environment and
Python's own flags, the version it reports, and the environment variables
it reads itself), the flags set here, and the Python, NumPy and Cython it
is built with.  ``fastxent/_kernels.build-stamp`` records a digest of them
(delete it, or set ``FASTXENT_REBUILD=1``, to force a build).
"""

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import Cython
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _openmp_flag_candidates(compiler_type):
    if compiler_type == "msvc":
        return [(["/openmp"], [])]
    if sys.platform == "darwin":
        return [
            (["-Xpreprocessor", "-fopenmp"], ["-lomp"]),
            (["-fopenmp"], ["-fopenmp"]),
        ]
    return [(["-fopenmp"], ["-fopenmp"])]


class BuildExt(build_ext):
    """build_ext that finds the OpenMP flags of the compiler in use."""

    def _probe_openmp(self):
        if os.environ.get("FASTXENT_OPENMP", "").strip() == "0":
            print("fastxent: OpenMP disabled by FASTXENT_OPENMP=0; building serial kernels")
            return None
        for cflags, ldflags in _openmp_flag_candidates(self.compiler.compiler_type):
            with tempfile.TemporaryDirectory() as tmp:
                src = os.path.join(tmp, "probe.c")
                with open(src, "w") as f:
                    f.write(OPENMP_PROBE)
                try:
                    objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                    self.compiler.link_executable(
                        objs, os.path.join(tmp, "probe"), extra_postargs=ldflags
                    )
                except Exception:  # noqa: BLE001 - any failure means "not this flag"
                    continue
            return cflags, ldflags
        print(
            "fastxent: WARNING: the C compiler has no usable OpenMP; building SERIAL "
            "kernels (fastxent.show_config() will report it)"
        )
        return None

    def build_extensions(self):
        openmp = self._probe_openmp()
        msvc = self.compiler.compiler_type == "msvc"
        if msvc:
            cflags, ldflags = ["/O2"], []
        else:
            cflags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
            ldflags = []
            if _env_flag("FASTXENT_WARNINGS"):
                cflags += ["-Wall", "-Wextra"]
        if _env_flag("FASTXENT_NO_CLONES") or _env_flag("FASTXENT_SANITIZE"):
            cflags.append("-DFASTXENT_NO_CLONES")
        if _env_flag("FASTXENT_SANITIZE") and not msvc:
            san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
            cflags = [f for f in cflags if f != "-O3"] + san
            ldflags += ["-fsanitize=address,undefined"]
            print("fastxent: building with AddressSanitizer + UndefinedBehaviorSanitizer")
        if openmp is not None:
            cflags = cflags + openmp[0]
            ldflags = ldflags + openmp[1]
            print(f"fastxent: building with OpenMP ({' '.join(openmp[0])})")
        for ext in self.extensions:
            ext.extra_compile_args = cflags + list(ext.extra_compile_args)
            ext.extra_link_args = ldflags + list(ext.extra_link_args)
            ext.define_macros = list(ext.define_macros) + [
                ("FASTXENT_BUILD_CFLAGS", '"' + " ".join(cflags) + '"'),
            ]
        super().build_extensions()

    def build_extension(self, ext):
        editable = getattr(self, "editable_mode", False) and not _env_flag("FASTXENT_REBUILD")
        digest = _inputs_digest(ext, _compiler_facts(self))
        in_tree = os.path.join(HERE, self.get_ext_filename(ext.name))
        target = self.get_ext_fullpath(ext.name)
        if editable and _stamp_matches(in_tree, digest):
            print(
                f"fastxent: reusing {os.path.relpath(in_tree, HERE)}, built from these "
                f"sources and flags (delete {os.path.relpath(STAMP, HERE)} to rebuild)"
            )
            if os.path.abspath(target) != os.path.abspath(in_tree):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(in_tree, target)
            return
        # Cythonized here rather than at import, so that a reused build skips it.
        (ext_c,) = cythonize([ext], compiler_directives=CYTHON_DIRECTIVES)
        ext.sources = ext_c.sources
        super().build_extension(ext)
        if editable:
            # The editable install copies `target` into the checkout as is.
            with open(STAMP, "w") as f:
                json.dump({"inputs": digest, "module_sha256": _sha256_file(target)}, f)
                f.write("\n")


HERE = os.path.dirname(os.path.abspath(__file__))
STAMP = os.path.join(HERE, "fastxent", "_kernels.build-stamp")
# The one place the Cython directives are set (_kernels.pyx has no
# "# cython:" header): the build and its cache key both see them here.
CYTHON_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "freethreading_compatible": True,
}


def _sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# Environment variables the compiler and linker read themselves (GCC/clang,
# macOS, MSVC), which their command lines do not show.
COMPILER_ENV = (
    "CPATH", "C_INCLUDE_PATH", "LIBRARY_PATH", "GCC_EXEC_PREFIX", "COMPILER_PATH",
    "ARCHFLAGS", "MACOSX_DEPLOYMENT_TARGET", "SDKROOT", "CL", "_CL_", "LINK", "INCLUDE", "LIB",
)  # fmt: skip


def _compiler_version(command):
    """What ``CC --version`` prints (``CC``: the words of ``command`` before
    its first flag, so that a wrapper such as ccache asks the compiler), and
    which file it ran; or why it could not be asked."""
    program = list(itertools.takewhile(lambda word: not word.startswith("-"), command))
    if not program:
        return None
    try:
        done = subprocess.run(
            program + ["--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"not asked: {type(e).__name__}"
    return [shutil.which(program[0]), done.returncode, done.stdout]


def _compiler_facts(build):
    """What identifies the compiler of the build_ext command ``build``:
    its command lines (setuptools has put ``CC``, ``CFLAGS``, ``CPPFLAGS``,
    ``LDFLAGS`` and ``LDSHARED`` from the environment into them), the
    version it reports, the variables of COMPILER_ENV, and build_ext's own
    directories and macros."""
    compiler = build.compiler
    commands = [list(getattr(compiler, name, None) or []) for name in ("compiler_so", "linker_so")]
    return [
        compiler.compiler_type,
        commands,
        _compiler_version(commands[0]),
        {name: os.environ.get(name) for name in COMPILER_ENV},
        [build.include_dirs, build.library_dirs, build.libraries, build.define, build.undef],
    ]


def _inputs_digest(ext, compiler_facts):
    """What a build depends on: the sources and headers, this file, the
    flags, the compiler (``_compiler_facts``), and the Python, NumPy and
    Cython it is built with."""
    h = hashlib.sha256()
    folder = os.path.join(HERE, "fastxent")
    inputs = sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if name.endswith((".pyx", ".pxd", ".pxi", ".c", ".h")) and name != "_kernels.c"
    )
    for path in inputs + [os.path.join(HERE, "setup.py")]:
        h.update(os.path.basename(path).encode() + b"\0" + open(path, "rb").read())
    facts = [
        ext.extra_compile_args,
        ext.extra_link_args,
        ext.define_macros,
        compiler_facts,
        sys.version,
        numpy.__version__,
        Cython.__version__,
    ]
    h.update(repr(facts).encode())
    return h.hexdigest()


def _stamp_matches(module, digest):
    """Whether ``module`` is the very file a build with ``digest`` made."""
    try:
        with open(STAMP) as f:
            stamp = json.load(f)
        return stamp["inputs"] == digest and stamp["module_sha256"] == _sha256_file(module)
    except (OSError, ValueError, KeyError, TypeError):
        return False


extensions = [
    Extension(
        "fastxent._kernels",
        sources=["fastxent/_kernels.pyx", "fastxent/_rowops.c"],
        # Headers too: a change to them must rebuild the objects.
        depends=[
            "fastxent/_rowops.h",
            "fastxent/_rowops_t.h",
            "fastxent/_governor.h",
            "fastxent/_driver.h",
            "fastxent/_options.h",
            "fastxent/_kernels.pxd",
            "fastxent/_kernels_half.pxi",
            "fastxent/_kernels_linear.pxi",
            "fastxent/_kernels_hooks.pxi",
            "fastxent/_logprob_t.h",
            "fastxent/_kernels_logprob.pxi",
        ],
        # NumPy's C API checks the arrays at the kernel entry points (see
        # _kernels.pyx); no deprecated API is used.
        include_dirs=["fastxent", numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
