"""Threads: bitwise-identical results for any num_threads (fixed reduction
order), num_threads=None following OpenMP's default (threadpoolctl), and a
small check that concurrent calls from Python threads agree with serial
ones.  The heavier stress tests are in test_concurrency.py."""

import math
import threading

import numpy as np
import pytest
from helpers import assert_bitwise, check_cross_entropy, make_labels, make_logits, make_probs

import fastxent
from fastxent import _kernels

# Big enough for the kernels to use their thread team (n * m >= 32768), with
# a row count that does not split evenly between threads.
N, M = 131, 257
assert N * M >= 32768 and 1001 * 33 >= 32768

OPTIONS = [
    {},
    dict(label_smoothing=0.1, z_loss=1e-3, softcap=20.0),
    dict(weight="w", sample_weight="s", ignore_index=3),
]


def _resolve(opts, rng, shape):
    out = dict(opts)
    if out.get("weight") == "w":
        out["weight"] = rng.uniform(0, 2, shape[-1])
    if out.get("sample_weight") == "s":
        out["sample_weight"] = rng.uniform(0, 2, shape[:-1])
    return out


def _problem(rng, dtype, target_kind, shape=(N, M)):
    z = make_logits(rng, shape, dtype)
    z[::7, ::5] = -np.inf
    if target_kind == "labels":
        t = make_labels(rng, shape[:-1], shape[-1])
        t[(t % 5) == 0] = 1  # never a masked class
    else:
        t = make_probs(rng, shape, dtype)
        t[::7, ::5] = 0.0
    return z, t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("target_kind", ["labels", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opt_index", range(len(OPTIONS)))
@pytest.mark.parametrize("shape", [(N, M), (1001, 33)], ids=["rows", "tiles"])
def test_loss_bitwise_for_any_thread_count(dtype, target_kind, reduction, opt_index, shape, rng):
    """Both kernel paths: long rows, and few classes (tiles of 64 rows)."""
    z, t = _problem(rng, dtype, target_kind, shape)
    opts = _resolve(OPTIONS[opt_index], rng, z.shape)
    if target_kind == "probs":
        opts.pop("ignore_index", None)
    loss1, grad1 = fastxent.cross_entropy_with_grad(
        z, t, reduction=reduction, num_threads=1, **opts
    )
    for nt in (2, 3, 4, None):
        loss, grad = fastxent.cross_entropy_with_grad(
            z, t, reduction=reduction, num_threads=nt, **opts
        )
        assert_bitwise(loss, loss1, f"loss, num_threads={nt}")
        assert_bitwise(grad, grad1, f"grad, num_threads={nt}")
        assert_bitwise(
            fastxent.cross_entropy(z, t, reduction=reduction, num_threads=nt, **opts),
            loss1,
            f"cross_entropy, {nt}",
        )
        assert_bitwise(
            fastxent.cross_entropy_grad(z, t, reduction=reduction, num_threads=nt, **opts),
            grad1,
            f"cross_entropy_grad, {nt}",
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_result_matches_reference(dtype, rng):
    z, t = _problem(rng, dtype, "labels", shape=(4, 67, M))
    check_cross_entropy(z, t, reduction="mean", num_threads=4, label_smoothing=0.05)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_rows_bitwise_for_any_thread_count(dtype, name, rng):
    fn = getattr(fastxent, name)
    z, _ = _problem(rng, dtype, "labels")
    first = fn(z, num_threads=1)
    for nt in (2, 3, 4, None):
        assert_bitwise(fn(z, num_threads=nt), first, f"{name}, num_threads={nt}")


@pytest.mark.parametrize("nt", [1, 2, 3, 4])
def test_in_place_bitwise_for_any_thread_count(nt, rng):
    z, t = _problem(rng, np.float32, "labels")
    expected = fastxent.cross_entropy_grad(z, t, num_threads=1)
    fastxent.cross_entropy_grad(z, t, out=z, num_threads=nt)
    assert_bitwise(z, expected)


def test_more_threads_than_rows(rng):
    z = make_logits(rng, (3, 20_000), np.float32)
    y = make_labels(rng, (3,), 20_000)
    first = fastxent.cross_entropy_with_grad(z, y, num_threads=1)
    for nt in (2, 4, 16):
        loss, grad = fastxent.cross_entropy_with_grad(z, y, num_threads=nt)
        assert_bitwise(loss, first[0])
        assert_bitwise(grad, first[1])


def test_none_follows_threadpoolctl(rng):
    """num_threads=None is resolved at call time from omp_get_max_threads(),
    which threadpoolctl (and OMP_NUM_THREADS) control."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    z, t = _problem(rng, np.float64, "labels")
    expected = fastxent.cross_entropy_with_grad(z, t, num_threads=1)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert _kernels.max_threads() == 1
        loss, grad = fastxent.cross_entropy_with_grad(z, t)
    assert_bitwise(loss, expected[0])
    assert_bitwise(grad, expected[1])
    assert _kernels.max_threads() >= 1


def test_concurrent_python_threads_match_serial(rng):
    """Several Python threads calling at once (each with its own data and
    its own OpenMP team) get exactly the serial results."""
    problems = []
    for i in range(4):
        dtype = (np.float32, np.float64)[i % 2]
        z, t = _problem(rng, dtype, ("labels", "probs")[i // 2 % 2], shape=(129, M))
        problems.append((z, t, dict(z_loss=1e-3 * i, label_smoothing=0.05 * i)))
    serial = [fastxent.cross_entropy_with_grad(z, t, num_threads=1, **o) for z, t, o in problems]
    results = [[] for _ in problems]
    errors = []
    barrier = threading.Barrier(len(problems))

    def work(i):
        try:
            z, t, o = problems[i]
            barrier.wait()
            for _ in range(5):
                results[i].append(fastxent.cross_entropy_with_grad(z, t, num_threads=2, **o))
                results[i].append((fastxent.logsumexp(z, num_threads=2),))
        except Exception as exc:  # noqa: BLE001 -- reported by the assert below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(problems))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors
    for i, (z, _, _) in enumerate(problems):
        lse = fastxent.logsumexp(z, num_threads=1)
        assert len(results[i]) == 10
        for loss, grad in results[i][::2]:
            assert_bitwise(loss, serial[i][0], f"thread {i} loss")
            assert_bitwise(grad, serial[i][1], f"thread {i} grad")
        for (got,) in results[i][1::2]:
            assert_bitwise(got, lse, f"thread {i} logsumexp")


def test_huge_thread_count_is_capped():
    """A request for far more threads than the machine has is capped (libgomp
    would otherwise try to create them all, and can abort the process when it
    cannot): the result is the same as with one thread."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((256, 300))
    y = rng.integers(0, 300, 256)
    one = fastxent.cross_entropy_with_grad(z, y, num_threads=1)
    many = fastxent.cross_entropy_with_grad(z, y, num_threads=100_000)
    assert_bitwise(one[0], many[0])
    assert_bitwise(one[1], many[1])


# Many rows: the label check and the reductions over rows split over the
# threads too (in chunks of 65 536 labels and the pairwise sum's top levels).
MANY = 200_003


@pytest.mark.parametrize("n", [65_535, 65_536, 65_537, MANY, 1_048_583])
def test_pairwise_sum_bitwise_for_any_thread_count(n, rng):
    x = rng.standard_normal(n) * np.exp(rng.uniform(-30, 30, n))
    first = _kernels.pairwise_sum(x, 1)
    for nt in (2, 3, 4, 8):
        assert_bitwise(_kernels.pairwise_sum(x, nt), first, f"num_threads={nt}")
    assert abs(first - math.fsum(x)) <= 1e-13 * np.abs(x).sum()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("m", [2, 3, 40])
def test_many_rows_bitwise_and_exact_mean(dtype, label_dtype, m, rng):
    z = make_logits(rng, (MANY, m), dtype)
    y = make_labels(rng, (MANY,), m, label_dtype)
    y[::9] = 1  # ignored rows in every chunk: the denominator counts the rest
    first = fastxent.cross_entropy_with_grad(z, y, ignore_index=1, num_threads=1)
    for nt in (2, 3):
        loss, grad = fastxent.cross_entropy_with_grad(z, y, ignore_index=1, num_threads=nt)
        assert_bitwise(loss, first[0], f"num_threads={nt}")
        assert_bitwise(grad, first[1], f"num_threads={nt}")
    kept = y != 1
    assert first[1][~kept].max() == 0 and first[1][~kept].min() == 0
    per_row = fastxent.cross_entropy(z, y, ignore_index=1, reduction="none")
    total = math.fsum(per_row[kept].astype(np.float64))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.isclose(float(first[0]), total / kept.sum(), rtol=rtol)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("nt", [1, 2, 3])
@pytest.mark.parametrize("where", [0, 65_535, 65_536, 150_001, MANY - 1])
def test_many_rows_first_bad_label_reported(label_dtype, nt, where, rng):
    z = make_logits(rng, (MANY, 2), np.float32)
    y = make_labels(rng, (MANY,), 2, label_dtype)
    y[::7] = -100
    y[where] = 2
    y[where + 1 :: 50_000] = -1  # later bad labels: the first one is named
    with pytest.raises(ValueError, match=rf"2 at flat position {where}\b"):
        fastxent.cross_entropy_with_grad(z, y, num_threads=nt)


@pytest.mark.parametrize("case", ["row", "tile", "probs", "softmax", "half"], ids=lambda c: c)
def test_every_chunk_is_written(case, rng):
    """Each thread takes one chunk of the rows: every element of the output
    is written on every call (a loop bound shared between threads once let
    one chunk be done twice and another skipped, now and then)."""
    m = {"row": 211, "tile": 10}.get(case, 97)
    n = 48_000 // m
    z = rng.standard_normal((n, m)).astype(np.float32)
    y = rng.integers(0, m, n)
    for _ in range(150):
        if case == "half":
            out = np.full((n, m), np.nan, np.float16)
            fastxent.cross_entropy_grad(z.astype(np.float16), y, out=out, num_threads=2)
        else:
            out = np.full((n, m), np.nan, np.float32)
            if case == "softmax":
                fastxent.softmax(z, out=out, num_threads=2)
            elif case == "probs":
                fastxent.cross_entropy_grad(z, fastxent.softmax(z), out=out, num_threads=2)
            else:
                fastxent.cross_entropy_grad(z, y, out=out, num_threads=2)
        assert not np.isnan(out).any()
