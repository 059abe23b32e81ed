"""``python -m fastxent``: info + self-check, and the bench command (``--quick``
and tiny shapes only: nothing here asserts a timing)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import fastxent
from fastxent import __main__ as cli
from fastxent import bench

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
    monkeypatch.setattr(bench, "peer_version", lambda name: None)
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
    assert "--large about 3.2 GB" in text, text


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


@pytest.fixture
def shapes_run(monkeypatch):
    """Run ``cli.main(["bench", ...])`` without timing anything; returns the
    shapes run_bench was asked for and the output."""
    seen = []

    def fake_run_bench(shapes, *args, **kwargs):
        seen.append(list(shapes))
        return []

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    monkeypatch.setattr(cli, "show_config", lambda: None)
    return seen


@pytest.mark.parametrize(
    ("args", "shapes", "note"),
    [
        ([], bench.DEFAULT_SHAPES, "note: needs about 0.4 GB of memory (the largest case; --quick"),
        (["--large"], bench.SHAPES, "note: needs about 3.2 GB of memory"),
        (["--quick"], bench.QUICK_SHAPES, "note: needs about 2 MB of memory"),
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
    monkeypatch.setattr(bench, "physical_memory", lambda: 4 * 10**9)
    assert cli.main(["bench", "--no-progress", "--large"]) == 0
    out = capsys.readouterr().out
    assert "warning: that is more than half of this machine's 4.0 GB of memory" in out, out


def test_quick_and_large_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--quick", "--large"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_bench_warns_when_regions_waited():
    from fastxent import __main__ as cli

    assert cli._busy_note(0) is None
    note = cli._busy_note(3)
    assert note is not None and "3 parallel region(s)" in note and "quiet machine" in note
