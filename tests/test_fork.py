"""Fork safety: a process forked after fastxent ran a parallel region gets
the right results, on one thread, and never hangs.

GNU OpenMP's thread pool does not survive fork(): a child that enters a
parallel region the parent had used blocks forever.  fastxent marks forked
children (pthread_atfork) and runs their kernels serially.  Every scenario
runs in a fresh interpreter under a timeout, so that a regression fails
here instead of hanging the test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")

TIMEOUT_S = 120

# Computes every public function on arrays large enough to start the OpenMP
# team (n * m >= SERIAL_BELOW) in the parent, then `SCENARIO` runs `child()`
# in forked processes; child() recomputes everything and compares bit for
# bit (results do not depend on the thread count).
PRELUDE = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import fastxent as fx
    from fastxent import _kernels

    rng = np.random.default_rng(0)
    Z = rng.standard_normal((20000, 100)).astype(np.float32)
    Y = rng.integers(0, 100, 20000)
    P = rng.random((20000, 100)).astype(np.float32)
    Zs = rng.standard_normal((4000, 10))  # the small-m tile kernel
    Ys = rng.integers(0, 10, 4000)

    def results():
        out = {}
        out["ce"] = fx.cross_entropy(Z, Y, num_threads=2)
        out["ce_default"] = fx.cross_entropy(Z, Y)
        out["grad"] = fx.cross_entropy_grad(Z, P, num_threads=2)
        l, g = fx.cross_entropy_with_grad(Zs, Ys, num_threads=2, label_smoothing=0.1)
        out["small_loss"], out["small_grad"] = l, g
        out["softmax"] = fx.softmax(Z, num_threads=2)
        out["log_softmax"] = fx.log_softmax(Z, num_threads=2)
        out["logsumexp"] = fx.logsumexp(Z, num_threads=2)
        return out

    assert _kernels.max_threads() > 1 or not _kernels.openmp_enabled() or os.cpu_count() == 1
    PARENT = results()  # starts the OpenMP team
    assert not _kernels.forked_child()

    def child(_=None):
        assert _kernels.forked_child(), "the child is not marked"
        assert _kernels.max_threads() == 1
        got = results()
        for k, v in PARENT.items():
            a, b = np.asarray(got[k]), np.asarray(v)
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), k
        return "ok"
    """
)

SCENARIOS = {
    "os.fork": """
        pid = os.fork()
        if pid == 0:
            try:
                child()
                os._exit(0)
            except BaseException as e:
                print("child failed:", repr(e), flush=True)
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        """,
    "multiprocessing fork pool": """
        import multiprocessing as mp
        with mp.get_context("fork").Pool(2) as pool:
            assert pool.map(child, range(4)) == ["ok"] * 4
        """,
    "joblib multiprocessing backend": """
        from joblib import Parallel, delayed
        res = Parallel(n_jobs=2, backend="multiprocessing")(delayed(child)(i) for i in range(4))
        assert res == ["ok"] * 4
        """,
    "grandchild": """
        pid = os.fork()
        if pid == 0:
            pid2 = os.fork()
            if pid2 == 0:
                try:
                    child()
                    os._exit(0)
                except BaseException:
                    os._exit(1)
            _, st = os.waitpid(pid2, 0)
            os._exit(os.waitstatus_to_exitcode(st))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        """,
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_forked_children_compute_without_hanging(scenario):
    if scenario.startswith("joblib"):
        pytest.importorskip("joblib")
    code = PRELUDE + textwrap.dedent(SCENARIOS[scenario]) + "\nprint('parent ok')\n"
    try:
        res = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{scenario}: no result within {TIMEOUT_S} s (a forked child hung)")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "parent ok" in res.stdout


def test_parent_keeps_its_threads_after_forking():
    """Only the child is marked: the parent goes on using its threads."""
    code = PRELUDE + textwrap.dedent(
        """
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        assert not _kernels.forked_child()
        again = results()
        assert again["ce"] == PARENT["ce"]
        print("parent ok")
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_show_config_reports_a_forked_child():
    code = textwrap.dedent(
        """
        import os, io, fastxent
        pid = os.fork()
        if pid == 0:
            buf = io.StringIO()
            fastxent.show_config(file=buf)
            ok = "forked child" in buf.getvalue() and fastxent._config.config()["forked_child"]
            os._exit(0 if ok else 1)
        _, st = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(st) == 0
        assert not fastxent._config.config()["forked_child"]
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert res.returncode == 0, res.stdout + res.stderr
