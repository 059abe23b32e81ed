"""``python -m fastxent``: info + self-check, and the bench command (``--quick``
and tiny shapes only: nothing here asserts a timing)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import reference as ref

import fastxent
from fastxent import __main__ as cli
from fastxent import _cli_bench as cb

TINY = ["--shapes", "64x10,8x300", "--repeats", "1", "--no-progress"]


def run_module(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "fastxent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_import_fastxent_imports_no_optional_dependency():
    code = (
        "import sys, fastxent; "
        "bad = [m for m in ('sklearn', 'scipy', 'matplotlib', 'tqdm', 'torch', 'jax') "
        "if m in sys.modules]; "
        "assert not bad, bad; "
        "import fastxent.metrics; "
        "assert 'sklearn' not in sys.modules and 'scipy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_submodules_load_on_attribute_access():
    assert fastxent.metrics.log_loss([0, 1], [[3.0, 0.0], [0.0, 3.0]]) > 0
    with pytest.raises(AttributeError, match="no_such_thing"):
        fastxent.no_such_thing  # noqa: B018


def test_python_m_fastxent_prints_config_and_passes_self_check():
    res = run_module()
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"fastxent {fastxent.__version__}" in res.stdout
    assert "OpenMP:" in res.stdout
    assert "self-check passed" in res.stdout
    assert "FAILED" not in res.stdout


def test_info_is_the_default_command(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "default threads:" in out
    for name in (
        "loss, class indices",
        "grad, probabilities",
        "softmax",
        "log_softmax",
        "logsumexp",
    ):
        assert f"  {name} " in out
    assert "identical bits at every thread count: ok" in out


def test_self_check_fails_on_a_wrong_kernel(monkeypatch, capsys):
    def off_by_a_bit(logits, target, **kwargs):
        loss, grad = fastxent.cross_entropy_with_grad(logits, target, **kwargs)
        return loss * (1 + 1e-3), grad

    monkeypatch.setattr(cli, "cross_entropy_with_grad", off_by_a_bit)
    assert cli.main([]) == 1
    out = capsys.readouterr().out
    assert "self-check FAILED" in out
    assert "FAILED  max rel. error" in out


def test_self_check_fails_when_threads_change_the_bits(monkeypatch, capsys):
    def thread_dependent(logits, **kwargs):
        out = fastxent.softmax(logits, **kwargs)
        if kwargs.get("num_threads", 1) > 1:
            out = np.nextafter(out, np.inf)
        return out

    monkeypatch.setattr(cli, "softmax", thread_dependent)
    monkeypatch.setattr(cli, "config", lambda: {"default_threads": 2})
    assert not cli.self_check()
    assert "results differ between 1 and 2 threads" in capsys.readouterr().out


def test_numpy_reference_matches_the_float64_oracle(rng):
    z = 3 * rng.standard_normal((50, 7))
    y = rng.integers(0, 7, size=50)
    loss, grad = cb.numpy_loss_grad(z, y)
    want_loss, want_grad = ref.cross_entropy(z, y)
    assert loss == pytest.approx(want_loss, rel=1e-14)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-17)
    z32 = z.astype(np.float32)
    loss32, grad32 = cb.numpy_loss_grad(z32, y)
    assert loss32.dtype == np.float32 and grad32.dtype == np.float32


def test_bench_quick_prints_a_table_and_writes_json_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    js, png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert (
        cli.main(["bench", *TINY, "--threads", "1,2", "--json", str(js), "--plot", str(png)]) == 0
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.split()[:1] == ["shape"]) :]
    assert table[0].split() == [
        "shape",
        "dtype",
        "threads",
        "fastxent",
        "ms",
        "alloc",
        "ms",
        "NumPy",
        "ms",
        "speed-up",
        "GB/s",
        "of",
        "floor",
    ]
    rows = [line.split() for line in table[2:] if line.strip() and "x" in line.split()[0]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (s, d, t) for s in ("64x10", "8x300") for d in ("float32", "float64") for t in "12"
    ]
    doc = json.loads(js.read_text())
    assert doc["fastxent"]["version"] == fastxent.__version__
    assert doc["options"]["threads"] == [1, 2]
    impls = {(r["impl"], r["threads"]) for r in doc["results"]}
    assert impls == {
        ("copy", 1),
        ("copy", 2),
        ("numpy", 1),
        ("fastxent", 1),
        ("fastxent", 2),
        ("fastxent_alloc", 1),
        ("fastxent_alloc", 2),
    }
    r0 = doc["results"][0]
    assert r0["bytes"] == 2 * 64 * 10 * 4 + 64 * np.dtype(np.intp).itemsize
    assert all(len(r["all_seconds"]) == 1 and r["seconds"] > 0 for r in doc["results"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_compare_skips_missing_peers_with_a_note(monkeypatch, capsys):
    monkeypatch.setattr(cb, "peer_version", lambda name: None)
    assert (
        cli.main(
            [
                "bench",
                *TINY,
                "--dtypes",
                "float64",
                "--threads",
                "1",
                "--compare",
                "torch,jax,sklearn",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for peer in ("torch", "jax", "sklearn"):
        assert f"note: {peer} is not installed: skipped" in out
        assert f"{peer} ms" not in out


@pytest.mark.parametrize("peer", ["sklearn", "torch", "jax"])
def test_bench_compare_adds_a_column_per_installed_peer(peer, capsys):
    pytest.importorskip(peer)
    assert (
        cli.main(
            [
                "bench",
                "--shapes",
                "32x10",
                "--repeats",
                "1",
                "--no-progress",
                "--dtypes",
                "float32",
                "--threads",
                "1",
                "--compare",
                peer,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"{peer} ms (x)" in out


def test_peers_compute_the_same_loss_and_gradient(rng):
    z, y = cb.make_case(20, 6, "float64")
    want_loss, want_grad = ref.cross_entropy(z, y)
    for peer in cb.PEERS:
        if cb.peer_version(peer) is None:
            continue
        loss, grad = cb._PEER_MAKERS[peer](z, y, 1)()
        loss, grad = (np.asarray(x.detach() if hasattr(x, "detach") else x) for x in (loss, grad))
        if peer == "sklearn":  # per-sample gradient and half-multinomial loss: undo n
            grad = grad / len(y)
        assert float(loss) == pytest.approx(want_loss, rel=1e-12), peer
        np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-15, err_msg=peer)


def test_progress_falls_back_to_plain_lines_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    cb.run_bench([(16, 4)], ["float64"], [1], repeats=1, progress=True, file=sys.stdout)
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
    lines = cb.format_table(recs, ["torch", "sklearn"]).splitlines()
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
    row = cb.format_table(recs, ["torch"]).splitlines()[2].split()
    assert row[3:5] == ["1000.000", "1000.000"] and row[6] == "4.0x" and row[-1] == "(3.0x)"


def test_time_call_loops_fast_calls_and_takes_the_median(monkeypatch):
    clock = iter(np.arange(0.0, 1.0, 1e-6).tolist())  # each reading 1 us after the last
    monkeypatch.setattr(cb.time, "perf_counter", lambda: next(clock))
    calls = []
    median, times = cb.time_call(lambda: calls.append(1), repeats=3)
    # the warm-up "took" 1 us, so each timing loops the call 10 000 times (the cap)
    assert len(calls) == 1 + 3 * 10_000
    assert times == [pytest.approx(1e-10)] * 3 and median == times[1]


def test_help_explains_the_options():
    res = run_module("bench", "--help")
    assert res.returncode == 0
    for opt in (
        "--shapes",
        "--dtypes",
        "--threads",
        "--repeats",
        "--quick",
        "--large",
        "--compare",
        "--plot",
        "--json",
    ):
        assert opt in res.stdout
    # What the default, --large and the peers need in memory.
    text = " ".join(res.stdout.split())
    assert "Memory:" in text and "the default shapes need about 0.4 GB" in text, text
    assert "--large about 3.1 GB" in text, text


@pytest.mark.parametrize(
    "args",
    [
        ["--shapes", "100"],
        ["--shapes", "0x10"],
        ["--threads", "0"],
        ["--threads", "two"],
        ["--compare", "tensorflow"],
        ["--dtypes", "float16"],
    ],
)
def test_bad_bench_options_exit_with_usage_error(args, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *args])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_repeats_must_be_positive(capsys):
    assert cli.main(["bench", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err


# ---- memory: the default fits a laptop, the big shapes behind --large ----


def test_default_shapes_fit_a_laptop():
    both = ["float32", "float64"]
    assert cb.peak_bytes(cb.DEFAULT_SHAPES, both) < 0.5e9
    assert cb.peak_bytes(cb.DEFAULT_SHAPES, both, cb.PEERS) < 1e9
    # --large is what the default was: GBs.
    assert cb.peak_bytes(cb.LARGE_SHAPES, both) > 3e9
    assert max(n * m for n, m in cb.LARGE_SHAPES) > max(n * m for n, m in cb.DEFAULT_SHAPES)


@pytest.mark.no_input_guard
@pytest.mark.parametrize(("n", "m"), [(20_000, 50), (400, 2_500)])
def test_memory_estimate_matches_the_traced_peak(n, m):
    """NumPy reports its allocations to tracemalloc: a case's traced peak
    is what case_bytes estimates, within a few per cent."""
    import tracemalloc

    cb.run_bench([(8, 4)], ["float64"], [1], repeats=1, progress=False)  # warm: imports, caches
    tracemalloc.start()
    try:
        cb.run_bench([(n, m)], ["float64"], [1, 2], repeats=1, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = cb.case_bytes(n, m, "float64")
    assert 0.8 * estimate < peak < 1.05 * estimate + (1 << 20), (peak, estimate)


@pytest.fixture
def shapes_run(monkeypatch):
    """Run ``cli.main(["bench", ...])`` without timing anything; returns the
    shapes run_bench was asked for and the output."""
    seen = []

    def fake_run_bench(shapes, *args, **kwargs):
        seen.append(list(shapes))
        return []

    monkeypatch.setattr(cb, "run_bench", fake_run_bench)
    monkeypatch.setattr(cli, "show_config", lambda: None)
    return seen


@pytest.mark.parametrize(
    ("args", "shapes", "note"),
    [
        ([], cb.DEFAULT_SHAPES, "note: needs about 0.4 GB of memory (the largest case; --quick"),
        (["--large"], cb.LARGE_SHAPES, "note: needs about 3.1 GB of memory"),
        (["--quick"], cb.QUICK_SHAPES, "note: needs about 2 MB of memory"),
        (["--shapes", "1000x1000"], [(1000, 1000)], "note: needs about 24 MB of memory"),
    ],
)
def test_bench_says_what_it_needs_before_it_runs(shapes_run, capsys, args, shapes, note):
    assert cli.main(["bench", "--no-progress", *args]) == 0
    assert shapes_run == [shapes]
    out = capsys.readouterr().out
    assert note in out, out
    assert "warning:" not in out


def test_bench_warns_when_the_run_may_not_fit(shapes_run, monkeypatch, capsys):
    monkeypatch.setattr(cb, "physical_memory", lambda: 4 * 10**9)
    assert cli.main(["bench", "--no-progress", "--large"]) == 0
    out = capsys.readouterr().out
    assert "warning: that is more than half of this machine's 4.0 GB of memory" in out, out


def test_quick_and_large_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--quick", "--large"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_plot_has_a_log_axis_and_labels_each_bar_with_its_time():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    records = cb.run_bench([(64, 10), (8, 300)], ["float32"], [1], repeats=1, progress=False)
    fig = cb.figure(records, [])
    try:
        (ax,) = fig.axes
        assert ax.get_yscale() == "log"
        labels = [t.get_text() for t in ax.texts]
        # fastxent out=, allocating and NumPy, for each of the two shapes.
        assert len(labels) == 3 * 2 and all(t.endswith(" ms") for t in labels), labels
    finally:
        plt.close(fig)


def test_bench_warns_when_regions_waited():
    from fastxent import __main__ as cli

    assert cli._busy_note(0) is None
    note = cli._busy_note(3)
    assert note is not None and "3 parallel region(s)" in note and "quiet machine" in note
