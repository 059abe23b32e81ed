"""A missing optional dependency is an ImportError that names the extra to
install, and ``fastxent.SoftmaxRegression`` is fastxent.estimators' class,
imported on first access.

Each missing module is simulated in a fresh interpreter by putting ``None``
in ``sys.modules`` under its name before fastxent imports it (Python then
raises ModuleNotFoundError for it, as for a module that is not installed).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import fastxent


def _python(code, hidden=()):
    """Run ``code`` in a fresh interpreter with the modules ``hidden`` made
    unimportable (``sys`` imported)."""
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in hidden)
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _fails_with(code, hidden):
    """The last line of the traceback (the exception) of ``code`` run
    without ``hidden``; fails if it succeeded."""
    res = _python(code, hidden)
    assert res.returncode != 0, f"succeeded without {hidden}: {res.stdout}"
    return res.stderr.strip().splitlines()[-1]


SKLEARN = 'Install the extra: pip install "fastxent[sklearn]"'
DASK = 'Install the extra: pip install "fastxent[dask]"'


@pytest.mark.parametrize(
    ("code", "hidden", "expected"),
    [
        ("import fastxent.estimators", ["scipy"], ["fastxent.estimators needs", SKLEARN]),
        ("import fastxent.estimators", ["sklearn"], ["fastxent.estimators needs", SKLEARN]),
        ("import fastxent; fastxent.SoftmaxRegression", ["sklearn"], [SKLEARN]),
        ("from fastxent.estimators import SoftmaxRegression", ["scipy", "sklearn"], [SKLEARN]),
        ("import fastxent.dask", ["dask"], ["fastxent.dask needs Dask (dask[array])", DASK]),
        ("import fastxent; fastxent.dask", ["dask"], [DASK]),
        (
            "import fastxent, numpy as np; "
            "fastxent.linear_cross_entropy(np.ones((2, 3)), np.ones((4, 3)), [0, 1])",
            ["scipy"],
            ["SciPy's BLAS", '"fastxent[linear]"'],
        ),
    ],
    ids=[
        "estimators-scipy",
        "estimators-sklearn",
        "lazy-attribute",
        "from-import",
        "dask",
        "dask-attribute",
        "linear-scipy",
    ],
)
def test_missing_extra_names_it(code, hidden, expected):
    last = _fails_with(code, hidden)
    # An ImportError (ModuleNotFoundError) that names the extra, not only
    # Python's "No module named ...".
    assert last.startswith(("ModuleNotFoundError: ", "ImportError: ")), last
    for text in expected:
        assert text in last, last


def test_dask_estimator_without_sklearn_names_both_extras():
    pytest.importorskip("dask.array")
    last = _fails_with("import fastxent.dask as fd; fd.SoftmaxRegression", ["sklearn"])
    assert "fastxent.dask.SoftmaxRegression needs scikit-learn" in last, last
    assert 'pip install "fastxent[sklearn,dask]"' in last, last


def test_the_error_is_an_import_error_with_the_missing_name():
    code = (
        "try:\n"
        "    import fastxent.estimators\n"
        "except ModuleNotFoundError as e:\n"
        "    assert isinstance(e, ImportError) and e.name == 'scipy', (e.name, e)\n"
        "    assert isinstance(e.__cause__, ImportError)\n"
        "    print('ok')\n"
    )
    res = _python(code, ["scipy"])
    assert res.stdout.strip() == "ok", res.stderr


def test_fastxent_without_any_extra_still_works():
    code = (
        "import fastxent, numpy as np\n"
        "z = np.array([[1.0, 2.0], [0.5, -1.0]])\n"
        "print(round(float(fastxent.cross_entropy(z, [1, 0])), 6))\n"
        "assert sys.modules['sklearn'] is None and sys.modules['dask'] is None\n"
    )
    res = _python(code, ["scipy", "sklearn", "dask", "threadpoolctl", "ml_dtypes"])
    assert res.returncode == 0, res.stderr
    z = [[1.0, 2.0], [0.5, -1.0]]
    assert float(res.stdout) == round(float(fastxent.cross_entropy(z, [1, 0])), 6)


def test_softmax_regression_is_exported_lazily():
    pytest.importorskip("sklearn")
    import fastxent.estimators

    assert fastxent.SoftmaxRegression is fastxent.estimators.SoftmaxRegression
    # Not in __all__: `from fastxent import *` stays NumPy-only.
    assert "SoftmaxRegression" not in fastxent.__all__
    code = (
        "import fastxent; assert 'sklearn' not in sys.modules; "
        "from fastxent import *; assert 'sklearn' not in sys.modules; "
        "from fastxent import SoftmaxRegression; assert 'sklearn' in sys.modules; "
        "print(SoftmaxRegression.__module__)"
    )
    res = _python(code)
    assert res.stdout.strip() == "fastxent.estimators", res.stderr
