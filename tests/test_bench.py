"""fastxent.bench, the benchmark harness of ``python -m fastxent bench`` and
``benchmarks/``: its data, yardsticks, peers, timing, table and figure
(tiny shapes only: nothing here asserts a timing).  The command itself is
tested in test_main.py."""

from __future__ import annotations

import ast
import glob
import hashlib
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import reference as ref

import fastxent
from fastxent import bench
from fastxent.bench import _report, _timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
# The sdist ships the tests but not benchmarks/ (CI's packaging step runs
# these tests from it).
needs_benchmarks = pytest.mark.skipif(
    not os.path.isdir(BENCHMARKS), reason="benchmarks/ is not in this tree (an sdist)"
)


# ---- the shapes: one list for the command and the suite ----


def test_default_shapes_are_the_suite_shapes_with_fewer_rows():
    assert [m for _, m in bench.DEFAULT_SHAPES] == [m for _, m in bench.SHAPES]
    for (n, m), (dn, _) in zip(bench.SHAPES, bench.DEFAULT_SHAPES, strict=True):
        assert 1 <= dn <= n and dn * m <= bench.DEFAULT_MAX_ELEMENTS
        # rows are cut only as far as the budget needs
        assert dn == n or (dn + 1) * m > bench.DEFAULT_MAX_ELEMENTS


@needs_benchmarks
def test_the_benchmark_suite_uses_the_harness_shapes():
    """benchmarks/conftest.py parametrises its cases over fastxent.bench.SHAPES
    and DTYPES, not a list of its own."""
    with open(os.path.join(ROOT, "benchmarks", "conftest.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "fastxent.bench"
        for alias in node.names
    }
    assert {"SHAPES", "DTYPES", "Case"} <= imported


@needs_benchmarks
def test_benchmarks_use_only_public_fastxent_modules():
    """Nothing under benchmarks/ imports a private fastxent module or name."""
    bad = []
    for path in glob.glob(os.path.join(ROOT, "benchmarks", "*.py")):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fastxent"):
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("fastxent")]
            else:
                continue
            bad += [
                f"{os.path.basename(path)}: {name}"
                for name in names
                if any(part.startswith("_") for part in name.split(".")[1:])
            ]
    assert not bad, bad


# ---- the data ----


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_make_case_shapes_dtypes_and_seed(dtype):
    z, y = bench.make_case(300, 7, dtype)
    assert z.shape == (300, 7) and z.dtype == dtype and z.flags.c_contiguous
    assert y.shape == (300,) and y.dtype == np.intp
    assert y.min() >= 0 and y.max() < 7 and len(np.unique(y)) == 7
    # standard normal times LOGIT_SCALE
    assert abs(float(z.std()) - bench.LOGIT_SCALE) < 0.3
    z2, y2 = bench.make_case(300, 7, dtype)
    np.testing.assert_array_equal(z, z2)
    np.testing.assert_array_equal(y, y2)
    z3, _ = bench.make_case(300, 7, dtype, seed=1)
    assert not np.array_equal(z, z3)


@pytest.mark.parametrize(
    ("args", "match"),
    [((4, 3, "float16"), "float32 or float64"), ((0, 3), "at least 1"), ((4, 0), "at least 1")],
)
def test_make_case_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        bench.make_case(*args)


def test_case_holds_a_touched_buffer_masked_logits_and_probabilities():
    c = bench.Case(50, 6, "float32", seed=4)
    z, y = bench.make_case(50, 6, "float32", seed=4)
    np.testing.assert_array_equal(c.z, z)
    np.testing.assert_array_equal(c.y, y)
    assert c.name == "50x6" and c.nbytes == z.nbytes
    assert c.out.shape == z.shape and c.out.dtype == z.dtype and not c.out.any()
    rows = np.arange(50)
    assert np.isfinite(c.masked[rows, c.y]).all() and np.isneginf(c.masked).any()
    assert c.probs.dtype == np.float32
    np.testing.assert_allclose(c.probs.sum(axis=1), 1, rtol=1e-6)


# ---- the yardsticks ----


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_reference_agrees_with_fastxent(dtype):
    z, y = bench.make_case(200, 30, dtype)
    loss, grad = bench.numpy_loss_grad(z, y)
    want_loss, want_grad = fastxent.cross_entropy_with_grad(z, y)
    tol = {"float32": 1e-5, "float64": 1e-12}[dtype]
    assert loss.dtype == grad.dtype == np.dtype(dtype)
    assert float(loss) == pytest.approx(float(want_loss), rel=tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol / 200)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_copy_floor_copies_the_logits(threads):
    z, _ = bench.make_case(7, 5)
    out = np.zeros_like(z)
    with bench.copy_floor(out, z, threads) as copy:
        copy()
    np.testing.assert_array_equal(out, z)


def test_copy_floor_rejects_bad_arguments():
    z = np.zeros((4, 3))
    with pytest.raises(ValueError, match="threads must be at least 1"):
        with bench.copy_floor(np.zeros_like(z), z, 0):
            pass
    with pytest.raises(ValueError, match=r"z's shape \(4, 3\)"):
        with bench.copy_floor(np.zeros((3, 4)), z):
            pass


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_exps_is_exp_on_non_positive_arguments(dtype):
    x = -np.abs(bench.make_case(100, 10, dtype)[0].reshape(-1))
    x[:3] = [0.0, -np.inf, np.nan]
    out = np.empty_like(x)
    bench.kernel_exps(x, out)
    np.testing.assert_allclose(out, np.exp(x), rtol={"float32": 1e-6, "float64": 1e-14}[dtype])
    bench.kernel_exps(x[:0], out[:0])  # nothing to do


@pytest.mark.parametrize(
    ("x", "out", "error", "match"),
    [
        (np.zeros(4), np.zeros(4, np.float32), TypeError, "one dtype"),
        (np.zeros(4, np.int64), np.zeros(4, np.int64), TypeError, "float32 or float64"),
        ([0.0], np.zeros(1), TypeError, "got list"),
        (np.zeros((2, 2)), np.zeros((2, 2)), ValueError, "1-D"),
        (np.zeros(8)[::2], np.zeros(4), ValueError, "C-contiguous"),
        (np.zeros(4), np.zeros(5), ValueError, "one length"),
        (np.zeros(4), None, None, None),  # out read-only: built in the test
    ],
)
def test_kernel_exps_rejects_bad_arrays(x, out, error, match):
    if error is None:  # a read-only buffer (parameters are built at collection)
        out = np.zeros(4)
        out.setflags(write=False)
        error, match = ValueError, "writable"
    with pytest.raises(error, match=match):
        bench.kernel_exps(x, out)


def test_linear_chunk_rows_follows_the_documented_bounds():
    assert bench.linear_chunk_rows(1, 32_000, 64, "float32") == 1
    for n in (2, 100, 5_000, 100_000):
        assert 1 <= bench.linear_chunk_rows(n, 32_000, 64, "float32") <= n
    # a tiny vocabulary: the whole batch in one cache-sized chunk
    assert bench.linear_chunk_rows(5_000, 10, 64, "float64") == 5_000
    # a large batch: chunks well below the n x V logits
    assert bench.linear_chunk_rows(100_000, 32_000, 64, "float32") < 100_000 // 4


def test_build_info_names_the_compiled_module():
    info = bench.build_info()
    assert info["version"] == fastxent.__version__
    with open(info["extension"], "rb") as f:
        assert info["extension_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert info["default_threads"] >= 1 and info["simd"]


# ---- the peers ----


def test_peer_registry():
    assert set(bench.PEERS) == {"torch", "jax", "sklearn"}
    for name, peer in bench.PEERS.items():
        assert peer.name == name and peer.install.startswith("pip install")
    assert bench.PEERS["sklearn"].preallocated and not bench.PEERS["torch"].preallocated
    assert not bench.PEERS["jax"].per_call_threads and bench.PEERS["torch"].per_call_threads


@pytest.mark.parametrize("name", ["torch", "jax", "sklearn"])
def test_a_missing_peer_is_skipped_with_a_note(monkeypatch, name):
    monkeypatch.setitem(sys.modules, bench.PEERS[name].module, None)  # import raises
    assert bench.peer_version(name) is None
    note = bench.missing_peer_note(name)
    assert note == f"{name} is not installed ({bench.PEERS[name].install})"
    z, y = bench.make_case(4, 3)
    with pytest.raises(ImportError, match=r"is not installed \(pip install"):
        bench.peer_loss_grad(name, z, y)


def test_an_unknown_peer_is_an_error():
    z, y = bench.make_case(4, 3)
    for call in (
        lambda: bench.peer_loss_grad("tensorflow", z, y),
        lambda: bench.peer_version("tensorflow"),
        lambda: bench.missing_peer_note("tensorflow"),
    ):
        with pytest.raises(ValueError, match="unknown peer 'tensorflow'; choose from torch"):
            call()


def test_harness_and_peers_are_imported_only_when_asked_for():
    """``import fastxent`` does not import the harness (``fastxent.bench``
    loads on first access), and the harness imports no peer, matplotlib or
    SciPy until one is asked for."""
    code = (
        "import sys, fastxent; "
        "assert 'fastxent.bench' not in sys.modules; "
        "b = fastxent.bench; "
        "z, y = b.make_case(8, 3); b.run_bench([(8, 3)], ['float64'], [1], 1, progress=False); "
        "bad = [m for m in ('sklearn', 'torch', 'jax', 'matplotlib', 'scipy') "
        "if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_sklearn_peer_writes_into_the_buffer_it_is_given():
    pytest.importorskip("sklearn")
    z, y = bench.make_case(20, 6)
    out = np.zeros_like(z)
    _, grad = bench.peer_loss_grad("sklearn", z, y, out=out)()
    assert grad is out and out.any()


# ---- the command's report files ----


def test_write_json_records_the_build_the_machine_and_the_peers(tmp_path, monkeypatch):
    # write_json looks peer_version up in its own module, not in the package.
    monkeypatch.setattr(_report, "peer_version", lambda name: "9.9")
    path = tmp_path / "b.json"
    recs = bench.run_bench([(8, 3)], ["float64"], [1], repeats=1, progress=False)
    bench.write_json(str(path), recs, {"compare": ["torch"]})
    doc = json.loads(path.read_text())
    assert doc["fastxent"]["version"] == fastxent.__version__
    assert doc["peers"] == {"torch": "9.9"} and doc["machine"] == bench.machine()
    assert len(doc["results"]) == len(recs)


@needs_benchmarks
def test_report_py_draws_the_harness_figure_from_a_suite_run(tmp_path):
    """benchmarks/report.py turns a pytest-benchmark run into fastxent.bench
    records and draws fastxent.bench's figure (one plotting code)."""
    pytest.importorskip("matplotlib")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        report = importlib.import_module("report")
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))

    def rec(impl, t, threads):
        return {
            "group": f"64x10-float32-{threads}T",
            "stats": {"median": t, "min": t, "mean": t, "rounds": 3},
            "extra_info": {
                "impl": impl,
                "case": "64x10",
                "dtype": "float32",
                "threads": threads,
                "nbytes": 2560,
            },
        }

    times = {
        "fastxent_lossgrad_out": 1e-5,
        "fastxent_lossgrad_alloc": 2e-5,
        "numpy_naive": 1e-4,
        "copyto": 4e-6,
        "sklearn": 3e-5,
    }
    data = {"benchmarks": [rec(i, t, 1) for i, t in times.items()]}
    data["benchmarks"].append(rec("copyto_threads", 3e-6, 1))
    src = tmp_path / "bench.json"
    src.write_text(json.dumps(data))
    _, groups = report.load(str(src), "median")
    records = report.bench_records(report.core_groups(groups))
    by_impl = {r["impl"]: r["seconds"] for r in records}
    assert by_impl == {
        "fastxent": 1e-5,
        "fastxent_alloc": 2e-5,
        "numpy": 1e-4,
        "sklearn": 3e-5,
        "copy": 3e-6,
    }
    table = bench.format_table(records, ["sklearn"]).splitlines()
    assert table[2].split()[:3] == ["64x10", "float32", "1"]
    png = tmp_path / "bench.png"
    report.plot(report.core_groups(groups), str(png), "median", "some CPU")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the command's timing, table, memory estimate and figure ----


def test_numpy_reference_matches_the_float64_oracle(rng):
    z = 3 * rng.standard_normal((50, 7))
    y = rng.integers(0, 7, size=50)
    loss, grad = bench.numpy_loss_grad(z, y)
    want_loss, want_grad = ref.cross_entropy(z, y)
    assert loss == pytest.approx(want_loss, rel=1e-14)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-17)
    z32 = z.astype(np.float32)
    loss32, grad32 = bench.numpy_loss_grad(z32, y)
    assert loss32.dtype == np.float32 and grad32.dtype == np.float32


def test_peers_compute_the_same_loss_and_gradient(rng):
    z, y = bench.make_case(20, 6, "float64")
    want_loss, want_grad = ref.cross_entropy(z, y)
    for peer in bench.PEERS:
        if bench.peer_version(peer) is None:
            continue
        loss, grad = bench.peer_loss_grad(peer, z, y, threads=1)()
        loss, grad = (np.asarray(x.detach() if hasattr(x, "detach") else x) for x in (loss, grad))
        if peer == "sklearn":  # per-sample gradient and half-multinomial loss: undo n
            grad = grad / len(y)
        assert float(loss) == pytest.approx(want_loss, rel=1e-12), peer
        np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-15, err_msg=peer)


def test_progress_falls_back_to_plain_lines_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    bench.run_bench([(16, 4)], ["float64"], [1], repeats=1, progress=True, file=sys.stdout)
    out = capsys.readouterr().out.splitlines()
    impls = ["copy", "numpy", "fastxent", "fastxent_alloc"]
    assert out == [f"[{i}/4] 16x4 float64 {impl} 1T" for i, impl in enumerate(impls, 1)]
    assert "\r" not in "".join(out)


def test_table_arithmetic():
    """Speed-ups are like for like: NumPy and torch (which allocate their
    gradient) against fastxent allocating, scikit-learn (gradient_out=)
    against fastxent's out=; GB/s and the floor against out=."""
    recs = [
        {
            "n": 10,
            "m": 5,
            "dtype": "float32",
            "impl": impl,
            "threads": t,
            "seconds": s,
            "bytes": 2_000_000_000,
        }
        for impl, t, s in [
            ("copy", 1, 0.5),
            ("copy", 2, 0.4),
            ("numpy", 1, 4.0),
            ("fastxent", 1, 1.0),
            ("fastxent", 2, 0.5),
            ("fastxent_alloc", 1, 2.0),
            ("fastxent_alloc", 2, 1.0),
            ("torch", 1, 3.0),
            ("torch", 2, 2.0),
            ("sklearn", 1, 5.0),
            ("sklearn", 2, 4.0),
        ]
    ]
    lines = bench.format_table(recs, ["torch", "sklearn"]).splitlines()
    assert lines[2].split() == [
        "10x5",
        "float32",
        "1",
        "1000.000",
        "2000.000",
        "4000.000",
        "2.0x",
        "2.0",
        "50%",
        "3000.000",
        "(1.5x)",
        "5000.000",
        "(5.0x)",
    ]
    assert lines[3].split() == [
        "10x5",
        "float32",
        "2",
        "500.000",
        "1000.000",
        "4000.000",
        "4.0x",
        "4.0",
        "80%",
        "2000.000",
        "(2.0x)",
        "4000.000",
        "(8.0x)",
    ]
    # 1 thread: the 1-thread copy (0.5 s); 2 threads: the faster 2-thread copy (0.4 s)


def test_table_of_out_only_records():
    """Records without fastxent_alloc (an older JSON): speed-ups against out=."""
    recs = [
        {"n": 4, "m": 3, "dtype": "float64", "impl": impl, "threads": 1, "seconds": s, "bytes": 1}
        for impl, s in [("copy", 0.5), ("numpy", 4.0), ("fastxent", 1.0), ("torch", 3.0)]
    ]
    row = bench.format_table(recs, ["torch"]).splitlines()[2].split()
    assert row[3:5] == ["1000.000", "1000.000"] and row[6] == "4.0x" and row[-1] == "(3.0x)"


def test_time_call_loops_fast_calls_and_takes_the_median(monkeypatch):
    clock = iter(np.arange(0.0, 1.0, 1e-6).tolist())  # each reading 1 us after the last
    monkeypatch.setattr(_timing.time, "perf_counter", lambda: next(clock))
    calls = []
    median, times = bench.time_call(lambda: calls.append(1), repeats=3)
    # the warm-up "took" 1 us, so each timing loops the call 10 000 times (the cap)
    assert len(calls) == 1 + 3 * 10_000
    assert times == [pytest.approx(1e-10)] * 3 and median == times[1]


def test_default_shapes_fit_a_laptop():
    both = ["float32", "float64"]
    assert bench.peak_bytes(bench.DEFAULT_SHAPES, both) < 0.5e9
    assert bench.peak_bytes(bench.DEFAULT_SHAPES, both, bench.PEERS) < 1e9
    # --large is what the default was: GBs.
    assert bench.peak_bytes(bench.SHAPES, both) > 3e9
    assert max(n * m for n, m in bench.SHAPES) > max(n * m for n, m in bench.DEFAULT_SHAPES)


@pytest.mark.no_input_guard
@pytest.mark.parametrize(("n", "m"), [(20_000, 50), (400, 2_500)])
def test_memory_estimate_matches_the_traced_peak(n, m):
    """NumPy reports its allocations to tracemalloc: a case's traced peak
    is what case_bytes estimates, within a few per cent."""
    import tracemalloc

    bench.run_bench([(8, 4)], ["float64"], [1], repeats=1, progress=False)  # warm: imports, caches
    tracemalloc.start()
    try:
        bench.run_bench([(n, m)], ["float64"], [1, 2], repeats=1, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = bench.case_bytes(n, m, "float64")
    assert 0.8 * estimate < peak < 1.05 * estimate + (1 << 20), (peak, estimate)


def test_plot_has_a_log_axis_and_labels_each_bar_with_its_time():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    records = bench.run_bench([(64, 10), (8, 300)], ["float32"], [1], repeats=1, progress=False)
    fig = bench.figure(records, [])
    try:
        (ax,) = fig.axes
        assert ax.get_yscale() == "log"
        labels = [t.get_text() for t in ax.texts]
        # fastxent out=, allocating and NumPy, for each of the two shapes.
        assert len(labels) == 3 * 2 and all(t.endswith(" ms") for t in labels), labels
    finally:
        plt.close(fig)
