"""fastxent.dask's loss functions against the in-memory functions on the same
data (float64 to 1e-12 relative, every option, reduction and target kind,
uneven, single, many and empty chunks), the same bits under the synchronous
and threaded schedulers and a LocalCluster, rechunking with a warning, and
every bad input rejected before any work is sent.  The estimator is in
test_dask_estimator.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import half_dtypes, make_labels, make_logits, make_probs, snapshot

import fastxent

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
pytest.importorskip("scipy")  # the fused linear function's BLAS
import fastxent.dask as fd  # noqa: E402

REDUCTIONS = ("mean", "sum", "none")
RTOL = {np.float64: 1e-12, np.float32: 2e-6}
N, M = 61, 9
CHUNKS = {
    "uneven": (7, 30, 1, 23),
    "single": (N,),
    "many": (4,) * 15 + (1,),
    "empty": (0, 20, 0, 41, 0),
}
OPTIONS = {
    "plain": {},
    "weight": dict(weight="w"),
    "sample_weight": dict(sample_weight="s"),
    "ignore_index": dict(ignore_index=2),
    "smoothing": dict(label_smoothing=0.15, weight="w"),
    "z_loss": dict(z_loss=1e-2),
    "softcap": dict(softcap=2.5),
    "all": dict(weight="w", sample_weight="s", label_smoothing=0.1, z_loss=1e-3, softcap=4.0),
}


def _fail():
    raise AssertionError("fastxent.dask computed data while checking its inputs")


def never_computed(shape, dtype, chunks):
    """A dask array whose blocks raise if anything computes them."""
    blocks = da.from_delayed(dask.delayed(_fail)(), shape, dtype)
    return blocks.rechunk(chunks) if chunks else blocks


def problem(rng, kind, options, n=N, m=M, dtype=np.float64, batch=None):
    batch = (n,) if batch is None else batch
    z = make_logits(rng, batch + (m,), dtype)
    t = make_labels(rng, batch, m) if kind == "labels" else make_probs(rng, batch + (m,), dtype)
    opts = dict(options)
    if opts.get("weight") == "w":
        opts["weight"] = rng.uniform(0.2, 2.0, m)
    if opts.get("sample_weight") == "s":
        opts["sample_weight"] = rng.uniform(0.0, 2.0, batch)
    if "ignore_index" in opts:
        if kind == "probs":
            opts.pop("ignore_index")
        else:
            t.reshape(-1)[::5] = opts["ignore_index"]
    return z, t, opts


def chunked(a, rows):
    return da.from_array(a, chunks=(rows,) + tuple((s,) for s in np.shape(a)[1:]))


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-300)
    return float(np.max(np.abs(got - want), initial=0.0)) / scale


def assert_matches(got, want, dtype=np.float64):
    assert np.asarray(got).dtype == np.asarray(want).dtype
    assert rel_err(got, want) <= RTOL[dtype], rel_err(got, want)


@pytest.mark.parametrize("chunks", list(CHUNKS), ids=list(CHUNKS))
@pytest.mark.parametrize("options", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_against_the_in_memory_functions(rng, chunks, options, kind, reduction):
    z, t, opts = problem(rng, kind, OPTIONS[options])
    rows = CHUNKS[chunks]
    sw = opts.pop("sample_weight", None)
    zd, td = chunked(z, rows), chunked(t, rows)
    sd = None if sw is None else chunked(sw, rows)
    before = snapshot(z, t, sw, opts.get("weight"))
    kw = dict(opts, reduction=reduction)
    lazy = fd.cross_entropy_with_grad(zd, td, sample_weight=sd, **kw)
    loss_only = fd.cross_entropy(zd, td, sample_weight=sd, **kw)
    assert isinstance(lazy[0], da.Array) and isinstance(lazy[1], da.Array)
    assert lazy[1].chunks == zd.chunks
    assert lazy[0].shape == (() if reduction != "none" else (N,))
    loss, grad, loss1 = dask.compute(*lazy, loss_only, scheduler="sync")
    want_loss, want_grad = fastxent.cross_entropy_with_grad(z, t, sample_weight=sw, **kw)
    assert_matches(loss, want_loss)
    assert_matches(loss1, want_loss)
    assert_matches(grad, want_grad)
    assert snapshot(z, t, sw, opts.get("weight")) == before


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32])
def test_other_dtypes_compute_as_in_memory(rng, reduction, dtype):
    z = make_logits(rng, (50, 70), np.float64).astype(dtype)
    t = make_labels(rng, (50,), 70)
    loss, grad = dask.compute(
        *fd.cross_entropy_with_grad(chunked(z, 13), t, reduction=reduction), scheduler="sync"
    )
    want_loss, want_grad = fastxent.cross_entropy_with_grad(z, t, reduction=reduction)
    compute = np.float64 if dtype == np.int32 else np.float32
    assert_matches(loss, want_loss, compute)
    assert_matches(grad, want_grad, compute)


@pytest.mark.parametrize("kind", ["labels", "probs"])
def test_batch_of_sequences_chunked_along_both_batch_axes(rng, kind):
    z, t, opts = problem(rng, kind, OPTIONS["all"], batch=(6, 11))
    chunks = ((2, 4), (5, 0, 6))
    zd = da.from_array(z, chunks=chunks + ((M,),))
    td = da.from_array(t, chunks=chunks + (() if kind == "labels" else ((M,),)))
    sd = da.from_array(opts.pop("sample_weight"), chunks=chunks)
    for reduction in REDUCTIONS:
        got = fd.cross_entropy_with_grad(zd, td, sample_weight=sd, reduction=reduction, **opts)
        want = fastxent.cross_entropy_with_grad(z, t, reduction=reduction, **opts, sample_weight=sd)
        for g_, w_ in zip(dask.compute(*got, scheduler="sync"), want, strict=True):
            assert_matches(g_, w_)


def test_one_sample_of_1d_logits(rng):
    z = make_logits(rng, (M,))
    zd = da.from_array(z, chunks=3)
    with pytest.warns(da.PerformanceWarning):
        got = dask.compute(*fd.cross_entropy_with_grad(zd, 4), scheduler="sync")
    for g_, w_ in zip(got, fastxent.cross_entropy_with_grad(z, 4), strict=True):
        assert_matches(g_, w_)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_against_the_in_memory_function(rng, reduction, kind, bias):
    x = rng.standard_normal((N, 6))
    W, b = rng.standard_normal((M, 6)) / 2, rng.standard_normal(M) if bias else None
    _, t, opts = problem(rng, kind, OPTIONS["all"] if kind == "probs" else OPTIONS["weight"])
    sw = opts.pop("sample_weight", None)
    rows = CHUNKS["empty"]
    kw = dict(opts, reduction=reduction, linear_bias=b)
    lazy = fd.linear_cross_entropy_with_grad(
        chunked(x, rows), W, chunked(t, rows), sample_weight=sw, chunk_size=8, **kw
    )
    assert lazy[1].chunks == chunked(x, rows).chunks and lazy[2].shape == W.shape
    loss_only = fd.linear_cross_entropy(chunked(x, rows), W, t, sample_weight=sw, **kw)
    got = dask.compute(*lazy[:3], loss_only, scheduler="sync")
    want = fastxent.linear_cross_entropy_with_grad(x, W, t, sample_weight=sw, **kw)
    for g_, w_ in zip(got, want[:3] + (want[0],), strict=True):
        assert_matches(g_, w_)
    if bias:
        assert_matches(lazy[3].compute(scheduler="sync"), want[3])
    else:
        assert lazy[3] is None


def test_linear_takes_byte_swapped_inputs_as_in_memory(rng):
    x, W = rng.standard_normal((40, 4)), rng.standard_normal((6, 4))
    y = make_labels(rng, (40,), 6)
    other = ">f8" if np.little_endian else "<f8"
    lazy = fd.linear_cross_entropy_with_grad(chunked(x.astype(other), 15), W.astype(other), y)
    got = dask.compute(*lazy[:3], scheduler="sync")
    for lazy_, g_, w_ in zip(
        lazy, got, fastxent.linear_cross_entropy_with_grad(x, W, y), strict=False
    ):
        assert lazy_.dtype == g_.dtype == np.float64
        assert_matches(g_, w_)


def test_linear_weight_as_a_split_dask_array_is_rechunked(rng):
    x, W = rng.standard_normal((40, 8)), rng.standard_normal((30, 8))
    y = make_labels(rng, (40,), 30)
    with pytest.warns(da.PerformanceWarning, match="linear_weight is split"):
        lazy = fd.linear_cross_entropy_with_grad(chunked(x, 9), da.from_array(W, chunks=10), y)
    got = dask.compute(*lazy[:3], scheduler="sync")
    for g_, w_ in zip(got, fastxent.linear_cross_entropy_with_grad(x, W, y)[:3], strict=True):
        assert_matches(g_, w_)


@pytest.mark.parametrize("half", half_dtypes())
def test_linear_half_precision_is_computed_in_float32_as_in_memory(rng, half):
    """float16/bfloat16 x: the blocks compute in float32, and so does the
    reduction over blocks (a float16 "sum" of 20 000 losses of ~5 overflows
    float16), with class weights checked in float32; the gradients come
    back in x's dtype, as in memory."""
    n, d, V = 20_000, 8, 50
    x = (rng.standard_normal((n, d)) * 2).astype(half)
    W = rng.standard_normal((V, d)).astype(half)
    y = make_labels(rng, (n,), V)
    xd = chunked(x, 5000)
    for kw in (dict(reduction="sum"), dict(weight=np.full(V, 1e5)), dict(reduction="none")):
        lazy = fd.linear_cross_entropy_with_grad(xd, W, y, **kw)
        got = dask.compute(*lazy[:3], scheduler="sync")
        want = fastxent.linear_cross_entropy_with_grad(x, W, y, **kw)
        assert lazy[0].dtype == np.float32 and np.isfinite(got[0]).all()
        for lazy_, g_, w_ in zip(lazy[:3], got, want[:3], strict=True):
            assert lazy_.dtype == g_.dtype == w_.dtype
            # relative to the largest entry: a 16-bit rounding of a sum over
            # blocks (float64) or over chunks (float32) differs by an ulp
            assert rel_err(g_, w_) <= (2e-6 if w_.dtype == np.float32 else 2**-7)


@pytest.mark.parametrize("half", half_dtypes())
@pytest.mark.parametrize("logits_dtype", ["half", np.float32])
def test_half_precision_probability_targets_as_in_memory(rng, half, logits_dtype):
    """float16/bfloat16 probabilities are targets in memory, so here too."""
    z = make_logits(rng, (40, 7)).astype(half if logits_dtype == "half" else logits_dtype)
    p = make_probs(rng, (40, 7)).astype(half)
    x, W = rng.standard_normal((40, 3)).astype(np.float32), rng.standard_normal((7, 3))
    got = dask.compute(
        *fd.cross_entropy_with_grad(chunked(z, 15), chunked(p, 15)), scheduler="sync"
    )
    want = fastxent.cross_entropy_with_grad(z, p)
    for g_, w_ in zip(got, want, strict=True):
        assert g_.dtype == w_.dtype
        np.testing.assert_array_equal(g_, w_)
    lazy = fd.linear_cross_entropy(chunked(x, 15), W.astype(np.float32), p)
    want = fastxent.linear_cross_entropy(x, W.astype(np.float32), p)
    assert_matches(lazy.compute(scheduler="sync"), want, np.float32)


@pytest.mark.parametrize("half", half_dtypes())
def test_half_precision_gradient_is_declared_in_its_dtype(rng, half):
    """The lazy gradient's dtype is the one its blocks have (the logits'
    float16/bfloat16), the loss's the compute dtype float32."""
    z = make_logits(rng, (40, 7)).astype(half)
    loss, grad = fd.cross_entropy_with_grad(chunked(z, 15), make_labels(rng, (40,), 7))
    assert (loss.dtype, grad.dtype) == (np.float32, half)
    got = dask.compute(loss, grad, scheduler="sync")
    assert (got[0].dtype, got[1].dtype) == (np.float32, half)


# ------------------------------------------------------------ scheduler independence


def _all_results(rng):
    z, t, opts = problem(rng, "labels", OPTIONS["all"], n=400, m=50)
    rows = (90, 0, 130, 57, 123)
    sw = chunked(opts.pop("sample_weight"), rows)
    x, W, b = rng.standard_normal((400, 12)), rng.standard_normal((50, 12)), np.zeros(50)
    out = []
    for reduction in REDUCTIONS:
        kw = dict(opts, reduction=reduction, sample_weight=sw)
        out += fd.cross_entropy_with_grad(chunked(z, rows), t, **kw)
        out.append(fd.cross_entropy(chunked(z, rows), t, **kw))
        out += fd.linear_cross_entropy_with_grad(chunked(x, rows), W, t, linear_bias=b, **kw)
    return out


def test_the_same_bits_under_every_scheduler(rng, dask_client):
    lazy = _all_results(rng)
    sync = dask.compute(*lazy, scheduler="sync")
    with dask.config.set(scheduler="threads", num_workers=2):
        threads = dask.compute(*lazy)
    with dask.config.set(scheduler=dask_client):
        cluster = dask.compute(*lazy)
    assert len(sync) == len(threads) == len(cluster) == 21
    for a, b, c in zip(sync, threads, cluster, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes() == np.asarray(c).tobytes()


def test_a_bad_label_is_reported_at_its_global_position(rng, dask_client):
    z, t, _ = problem(rng, "labels", {}, n=200)
    t[150] = M + 3
    with pytest.raises(ValueError, match="outside") as in_memory:
        fastxent.cross_entropy(z, t)
    for scheduler in ("sync", "threads", dask_client):
        with dask.config.set(scheduler=scheduler):
            for lazy in (
                fd.cross_entropy(chunked(z, 45), t, reduction="sum"),
                fd.cross_entropy_with_grad(chunked(z, 45), t)[1],
            ):
                with pytest.raises(ValueError) as got:
                    lazy.compute()
                assert str(got.value) == str(in_memory.value)


@pytest.mark.parametrize("bad", [2**63 + 5, M, -1])
@pytest.mark.parametrize("linear", [False, True])
def test_every_bad_label_is_reported_at_its_global_position(rng, bad, linear):
    """A uint64 label beyond int64, caught before the kernel, and one the
    kernel catches: both at their position in the whole target (44 here,
    not 4 in the fifth block of 10)."""
    z, t, _ = problem(rng, "labels", {}, n=60)
    t = t.astype(np.uint64 if bad > 0 else np.int64)
    t[44] = bad
    x, W = rng.standard_normal((60, 3)), rng.standard_normal((M, 3))
    if linear:
        args, lazy_args = (x, W, t), (chunked(x, 10), W, chunked(t, 10))
        fn, lazy_fn = fastxent.linear_cross_entropy, fd.linear_cross_entropy_with_grad
    else:
        args, lazy_args = (z, t), (chunked(z, 10), chunked(t, 10))
        fn, lazy_fn = fastxent.cross_entropy, fd.cross_entropy_with_grad
    with pytest.raises(ValueError, match="at flat position 44") as in_memory:
        fn(*args)
    for lazy in (lazy_fn(*lazy_args)[1], lazy_fn(*lazy_args, reduction="sum")[0]):
        with pytest.raises(ValueError) as got:
            lazy.compute(scheduler="sync")
        assert str(got.value) == str(in_memory.value)


def test_blas_threads_are_restored_after_concurrent_linear_blocks(rng):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
    x, W = rng.standard_normal((2000, 32)), rng.standard_normal((40, 32))
    y = make_labels(rng, (2000,), 40)
    lazy = fd.linear_cross_entropy_with_grad(chunked(x, 50), W, y)
    with dask.config.set(scheduler="threads", num_workers=4):
        for _ in range(3):
            dask.compute(*lazy[:3])
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info()] == before


# ------------------------------------------------------------ chunks and bad input


def test_a_split_class_axis_is_rechunked_with_a_warning(rng):
    z, t, _ = problem(rng, "probs", {})
    zd = da.from_array(z, chunks=(20, 4))
    td = da.from_array(t, chunks=(20, 5))
    with pytest.warns(da.PerformanceWarning, match="logits is split into 3 chunks along its class"):
        with pytest.warns(da.PerformanceWarning, match="target is split into 2 chunks"):
            loss, grad = fd.cross_entropy_with_grad(zd, td)
    assert grad.chunks == ((20, 20, 20, 1), (M,))
    got = dask.compute(loss, grad, scheduler="sync")
    for g_, w_ in zip(got, fastxent.cross_entropy_with_grad(z, t), strict=True):
        assert_matches(g_, w_)


def test_numpy_logits_work_too(rng):
    z, t, _ = problem(rng, "labels", {})
    got = dask.compute(*fd.cross_entropy_with_grad(z, t), scheduler="sync")
    for g_, w_ in zip(got, fastxent.cross_entropy_with_grad(z, t), strict=True):
        assert_matches(g_, w_)


BAD = [
    ("target chunks", lambda z: (z, never_computed((N,), np.int64, 30)), ValueError, "line up"),
    ("target length", lambda z: (z, np.zeros(N - 1, np.int64)), ValueError, r"shape \(61,\)"),
    ("float labels", lambda z: (z, np.zeros(N)), TypeError, "must be integers"),
    ("one-hot", lambda z: (z, np.zeros((N, M), np.int64)), ValueError, "argmax"),
    ("unknown", lambda z: (z[z[:, 0] > 0], np.zeros(N, np.int64)), ValueError, "unknown chunk"),
    ("complex", lambda z: (z.astype(complex), np.zeros(N, np.int64)), TypeError, "Got dtype"),
]


@pytest.mark.parametrize(("case", "make", "error", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_an_error_before_any_work(case, make, error, match):
    z = never_computed((N, M), np.float64, (20, M))
    zz, t = make(z)
    with pytest.raises(error, match=match):
        fd.cross_entropy_with_grad(zz, t)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(label_smoothing=2.0), ValueError, "label_smoothing"),
        (dict(weight=np.ones(M + 1)), ValueError, "weight must have shape"),
        (dict(sample_weight=np.ones(N + 1)), ValueError, "sample_weight must have shape"),
        (dict(sample_weight="sw chunks"), ValueError, "row chunks of sample_weight"),
        (dict(ignore_index=2.5), TypeError, "ignore_index"),
        (dict(label_smoothing=True), TypeError, "label_smoothing must be a real number"),
        (dict(softcap="2"), TypeError, "softcap must be a real number"),
        (dict(softcap=-1.0), ValueError, "softcap"),
        (dict(num_threads=0), ValueError, "num_threads"),
        (dict(weight="dask"), TypeError, "weight"),
    ],
)
def test_bad_options_are_errors_before_any_work(options, error, match):
    z = never_computed((N, M), np.float64, (20, M))
    t = never_computed((N,), np.int64, (20,))
    if isinstance(options.get("sample_weight"), str):
        options = dict(sample_weight=never_computed((N,), np.float64, (30,)))
    if isinstance(options.get("weight"), str):
        options = dict(weight=da.ones(M))
    with pytest.raises(error, match=match):
        fd.cross_entropy_with_grad(z, t, **options)
    with pytest.raises(error, match=match):
        fd.cross_entropy(z, t, **options)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_numpy_string_reduction_is_accepted(rng, reduction):
    z, t, _ = problem(rng, "labels", {})
    x, W = rng.standard_normal((N, 4)), rng.standard_normal((M, 4))
    for fn, args in (
        (fd.cross_entropy, (chunked(z, 20), t)),
        (fd.linear_cross_entropy, (chunked(x, 20), W, t)),
    ):
        got = fn(*args, reduction=np.str_(reduction)).compute(scheduler="sync")
        assert_matches(got, fn(*args, reduction=reduction).compute(scheduler="sync"))


@pytest.mark.parametrize("arg", ["logits", "target", "sample_weight", "weight", "x", "W"])
@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
def test_masked_arrays_are_rejected_when_the_graph_is_built(rng, arg, lazy):
    """A masked NumPy array, or a dask array of masked blocks, would be read
    without its mask: refused before any graph exists."""
    if lazy and arg == "weight":
        pytest.skip("class weights are NumPy only")
    z, t, _ = problem(rng, "labels", {})
    x, W = rng.standard_normal((N, 4)), rng.standard_normal((M, 4))
    args = dict(logits=z, target=t, sample_weight=np.ones(N), weight=np.ones(M), x=x, W=W)
    a = np.ma.masked_array(args[arg], mask=np.zeros(args[arg].shape, bool))
    args[arg] = da.from_array(a, chunks=(20,) + a.shape[1:]) if lazy else a
    for a in args.values():
        if isinstance(a, np.ndarray) and not isinstance(a, np.ma.MaskedArray):
            a.flags.writeable = False  # nothing computed or changed
    if arg in ("x", "W"):
        call = lambda: fd.linear_cross_entropy(  # noqa: E731
            args["x"], args["W"], args["target"], sample_weight=args["sample_weight"]
        )
    else:
        call = lambda: fd.cross_entropy(  # noqa: E731
            args["logits"], args["target"], sample_weight=args["sample_weight"],
            weight=args["weight"],
        )  # fmt: skip
    name = "linear_weight" if arg == "W" else arg
    with pytest.raises(TypeError, match=rf"^{name} is a masked array"):
        call()


def test_linear_bad_input_is_an_error_before_any_work():
    x = never_computed((N, 5), np.float64, (20, 5))
    y = never_computed((N,), np.int64, (20,))
    with pytest.raises(ValueError, match="features"):
        fd.linear_cross_entropy_with_grad(x, np.zeros((M, 4)), y)
    with pytest.raises(TypeError, match="must all have one dtype"):
        fd.linear_cross_entropy_with_grad(x, np.zeros((M, 5), np.float32), y)
    with pytest.raises(ValueError, match="line up"):
        fd.linear_cross_entropy_with_grad(x, np.zeros((M, 5)), y.rechunk(30))
    with pytest.raises(ValueError, match="linear_bias"):
        fd.linear_cross_entropy_with_grad(x, np.zeros((M, 5)), y, linear_bias=np.zeros(2))


def test_import_fastxent_does_not_import_dask():
    code = (
        "import sys, fastxent; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]; "
        "assert not bad, bad; fastxent.dask; assert 'dask' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
