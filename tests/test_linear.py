"""fastxent.linear_cross_entropy(_with_grad): against the unfused float64
composition (tests/reference.py on ``x @ W.T + b``, then the chain rule),
against PyTorch's fixtures, and its chunking, layouts, threads and errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import reference as ref
from helpers import make_labels, make_probs, snapshot

import fastxent

pytest.importorskip("scipy")  # the fused function's BLAS

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
REDUCTIONS = ("mean", "sum", "none")
# compute dtype -> relative tolerance against the float64 evaluation
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def unfused(x, W, target, b=None, **options):
    """The float64 composition the fused function must equal: the
    reference loss of x @ W.T + b and the chain rule through the product."""
    x64, W64 = np.asarray(x, np.float64), np.asarray(W, np.float64)
    z = x64 @ W64.T + (0.0 if b is None else np.asarray(b, np.float64))
    if options.get("weight") is not None:  # class weights act in the compute dtype
        options = dict(options, weight=np.asarray(options["weight"]).astype(np.asarray(x).dtype))
    loss, G = ref.cross_entropy(z, target, **options)
    G2 = G.reshape(-1, W64.shape[0])
    x2 = x64.reshape(-1, W64.shape[1])
    return loss, (G2 @ W64).reshape(x64.shape), G2.T @ x2, G2.sum(axis=0)


def assert_matches(got, want, dtype, what, floor=0.0):
    """Relative to the largest magnitude of the expected array (the sums in
    the products and the logits carry errors of that size), or to ``floor``
    when larger: the size of terms that cancel (a gradient that is 0 is the
    difference of softmax and target terms, each rounded)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN positions differ"
    got, want = np.where(np.isnan(want), 0.0, got), np.where(np.isnan(want), 0.0, want)
    scale = max(float(np.max(np.abs(want), initial=0.0)), floor, 1e-300)
    err = float(np.max(np.abs(got - want), initial=0.0)) / scale
    assert err <= 10 * RTOL[dtype], f"{what}: max error {err:.3g} relative to {scale:.3g}"


def make_problem(rng, batch, d, V, dtype, kind="labels", bias=True, scale=1.0):
    x = (rng.standard_normal(batch + (d,)) * scale).astype(dtype)
    W = (rng.standard_normal((V, d)) / np.sqrt(max(d, 1))).astype(dtype)
    b = rng.standard_normal(V).astype(dtype) if bias else None
    t = make_labels(rng, batch, V) if kind == "labels" else make_probs(rng, batch + (V,), dtype)
    return x, W, b, t


def check(x, W, t, b=None, chunk_size=None, num_threads=None, **options):
    """Run both functions, compare with the unfused composition, check dtypes
    and shapes and that nothing was modified.  Returns the fused results."""
    dtype = np.asarray(x).dtype.type
    before = snapshot(x, W, t, b, options.get("weight"), options.get("sample_weight"))
    kw = dict(options, linear_bias=b, chunk_size=chunk_size, num_threads=num_threads)
    loss1 = fastxent.linear_cross_entropy(x, W, t, **kw)
    loss, gx, gW, gb = fastxent.linear_cross_entropy_with_grad(x, W, t, **kw)
    assert snapshot(x, W, t, b, options.get("weight"), options.get("sample_weight")) == before
    np.testing.assert_array_equal(loss1, loss)
    want = unfused(x, W, t, b, **options)
    # The size of one row's gradient terms (s_i / D) * (target mass), before
    # they cancel: the floor of the gradients' errors.
    sw = np.abs(np.asarray(options.get("sample_weight", 1.0), np.float64))
    cw = np.abs(np.asarray(options.get("weight", 1.0), np.float64))
    n = int(np.prod(np.shape(x)[:-1]))
    denom = 1.0
    if options.get("reduction", "mean") == "mean" and n:
        denom = abs(float(np.sum(np.broadcast_to(sw.reshape(-1), (n,)))) * float(np.mean(cw)))
        denom = denom or 1.0
    g_floor = float(np.max(sw, initial=1.0)) * float(np.max(cw, initial=1.0)) / denom
    x_size = float(np.max(np.abs(x), initial=0.0))
    W_size = float(np.max(np.abs(W), initial=0.0))
    assert_matches(loss, want[0], dtype, "loss")
    assert_matches(gx, want[1], dtype, "grad_x", g_floor * W_size)
    assert_matches(gW, want[2], dtype, "grad_W", g_floor * x_size)
    if b is None:
        assert gb is None
    else:
        assert_matches(gb, want[3], dtype, "grad_b", g_floor)
        assert gb.dtype == dtype and gb.shape == np.shape(b)
    assert np.asarray(loss).dtype == dtype
    assert gx.dtype == dtype and gx.shape == np.shape(x)
    assert gW.dtype == dtype and gW.shape == np.shape(W)
    return loss, gx, gW, gb


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("bias", [True, False])
def test_against_the_unfused_composition(dtype, reduction, kind, bias, rng):
    x, W, b, t = make_problem(rng, (37,), 12, 300, dtype, kind, bias)
    loss, *_ = check(x, W, t, b, reduction=reduction, chunk_size=8)
    if reduction == "none":
        assert loss.shape == (37,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "options",
    [
        dict(weight="w"),
        dict(sample_weight="s"),
        dict(ignore_index=2),
        dict(label_smoothing=0.2, weight="w"),
        dict(z_loss=1e-2),
        dict(softcap=3.0),
        dict(weight="w", sample_weight="s", label_smoothing=0.1, z_loss=1e-3, softcap=5.0),
    ],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_option(dtype, options, reduction, rng):
    V = 40  # <= 64: the small-m tile kernel; test_large_vocabulary covers the row kernel
    x, W, b, t = make_problem(rng, (3, 11), 6, V, dtype)
    opts = dict(options)
    if opts.get("weight") == "w":
        opts["weight"] = rng.uniform(-0.5, 2.0, V)
    if opts.get("sample_weight") == "s":
        opts["sample_weight"] = rng.uniform(0.0, 2.0, (3, 11))
    if "ignore_index" in opts:
        t = t.copy()
        t[0, :3] = opts["ignore_index"]
    check(x, W, t, b, reduction=reduction, chunk_size=5, **opts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_vocabulary_and_features(dtype, rng):
    """V beyond the tile kernel's limit (the row kernel), in several chunks
    and in one."""
    x, W, b, t = make_problem(rng, (70,), 200, 4500, dtype)
    check(x, W, t, b, chunk_size=32, label_smoothing=0.1)
    check(x, W, t, b, chunk_size=None, reduction="sum")


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 64, 1000, None])
def test_chunk_sizes_agree(chunk_size, rng):
    x, W, b, t = make_problem(rng, (130,), 9, 70, np.float64)
    check(x, W, t, b, chunk_size=chunk_size)


def test_small_vocabulary_many_rows_in_one_chunk(rng):
    """Few classes and features, many rows (the estimator's case): the
    default chunk takes all 5 000 rows, so each GEMM sums over all of them
    at once (grad_W = G.T @ x with an inner dimension of 5 000)."""
    x, W, b, t = make_problem(rng, (5000,), 20, 7, np.float64)
    for itemsize in (4, 8):
        assert fastxent._linear.default_chunk_size(5000, 7, 20, itemsize) == 5000
    check(x, W, t, b)
    check(x.astype(np.float32), W.astype(np.float32), t, b.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identical_at_every_thread_count(dtype, rng):
    """Same bits for a fixed chunk_size at any num_threads: num_threads is
    the row kernels' (here the row kernel, V beyond the tile kernel's limit,
    each chunk large enough to be split among the threads), and the GEMMs
    run on BLAS's threads whatever it is."""
    x, W, b, t = make_problem(rng, (1000,), 16, 2500, dtype)
    for chunk in (None, 300):
        first = fastxent.linear_cross_entropy_with_grad(
            x, W, t, linear_bias=b, chunk_size=chunk, num_threads=1
        )
        for nt in (2, 3):
            again = fastxent.linear_cross_entropy_with_grad(
                x, W, t, linear_bias=b, chunk_size=chunk, num_threads=nt
            )
            for a, c in zip(first, again, strict=True):
                assert np.asarray(a).tobytes() == np.asarray(c).tobytes()


def test_batch_shapes(rng):
    x, W, b, t = make_problem(rng, (2, 5, 3), 4, 11, np.float64)
    loss, gx, _, _ = check(x, W, t, b, reduction="none", chunk_size=4)
    assert loss.shape == (2, 5, 3) and gx.shape == (2, 5, 3, 4)
    x1 = x[0, 0, 0]
    loss1, gx1, _, _ = check(x1, W, t[0, 0, 0], b, reduction="none")
    assert np.shape(loss1) == () and gx1.shape == (4,)


def test_layouts_are_taken_or_copied(rng):
    """Rows with a stride (taken as they are by BLAS), Fortran order, a
    transposed W and negative strides (copied) all give the same result."""
    x, W, b, t = make_problem(rng, (50,), 8, 30, np.float64)
    want = fastxent.linear_cross_entropy_with_grad(x, W, t, linear_bias=b)
    big_x = np.zeros((50, 20))
    big_x[:, 3:11] = x
    big_W = np.zeros((30, 13))
    big_W[:, :8] = W
    variants = [
        (big_x[:, 3:11], big_W[:, :8]),
        (np.asfortranarray(x), np.asfortranarray(W)),
        (x, np.ascontiguousarray(W.T).T),
        (x[::-1][::-1], W[::-1][::-1]),
        (np.repeat(x, 2, axis=0)[::2], W),
    ]
    for xv, Wv in variants:
        got = fastxent.linear_cross_entropy_with_grad(xv, Wv, t, linear_bias=b)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-14)
        for a, c in zip(got[1:], want[1:], strict=True):
            np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-15)


def test_degenerate_sizes(rng):
    W = rng.standard_normal((4, 3))
    b = rng.standard_normal(4)
    # n = 0: "sum" 0, "mean" NaN, "none" empty; zero gradients
    x0 = np.zeros((0, 3))
    loss, gx, gW, gb = fastxent.linear_cross_entropy_with_grad(
        x0, W, np.zeros(0, int), linear_bias=b
    )
    assert np.isnan(loss) and gx.shape == (0, 3) and np.all(gW == 0) and np.all(gb == 0)
    assert fastxent.linear_cross_entropy(x0, W, np.zeros(0, int), reduction="sum") == 0
    assert fastxent.linear_cross_entropy(x0, W, np.zeros(0, int), reduction="none").shape == (0,)
    # V = 1: loss 0, gradients 0
    x = rng.standard_normal((5, 3))
    loss, gx, gW, gb = fastxent.linear_cross_entropy_with_grad(
        x, W[:1], np.zeros(5, int), linear_bias=b[:1]
    )
    assert loss == 0 and np.all(gx == 0) and np.all(gW == 0) and np.all(gb == 0)
    # d = 0: the logits are the bias
    xe = np.zeros((5, 0))
    y = np.array([0, 1, 2, 3, 0])
    loss, gx, gW, gb = fastxent.linear_cross_entropy_with_grad(
        xe, np.zeros((4, 0)), y, linear_bias=b
    )
    want, G = fastxent.cross_entropy_with_grad(np.tile(b, (5, 1)), y)
    assert loss == pytest.approx(want, rel=1e-14)
    assert gx.shape == (5, 0) and gW.shape == (4, 0)
    np.testing.assert_allclose(gb, G.sum(axis=0), rtol=1e-14)


def test_ignored_and_masked_rows(rng):
    x, W, b, t = make_problem(rng, (20,), 5, 9, np.float64)
    t = t.copy()
    t[:] = -100
    loss, gx, gW, gb = fastxent.linear_cross_entropy_with_grad(x, W, t, linear_bias=b)
    assert np.isnan(loss) and np.all(gx == 0) and np.all(gW == 0) and np.all(gb == 0)


def _torch_cases(dtype_name):
    with np.load(os.path.join(FIXTURES, f"torch_linear_{dtype_name}.npz")) as f:
        flat = {k: f[k] for k in f.files}
    cases = []
    for e in json.loads(str(flat["index"])):
        data = {k: flat[k][a:z].reshape(shape) for k, (a, z, shape) in e["fields"].items()}
        cases.append((f"{dtype_name}-{e['id']}", e, data))
    return cases


TORCH_CASES = _torch_cases("float32") + _torch_cases("float64")


def test_torch_fixtures_loaded():
    assert len(TORCH_CASES) == 2 * 180


@pytest.mark.parametrize("case", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_against_pytorch(case):
    _, e, data = case
    target = data["labels"] if e["kind"] == "labels" else data["probs"]
    options = dict(
        reduction=e["reduction"],
        weight=data.get("weight"),
        ignore_index=e["ignore_index"],
        label_smoothing=e["label_smoothing"],
        z_loss=e["z_loss"],
        softcap=e["softcap"],
    )
    loss, gx, gW, gb = fastxent.linear_cross_entropy_with_grad(
        data["x"], data["W"], target, linear_bias=data.get("b"), chunk_size=3, **options
    )
    tol = (
        dict(rtol=2e-6, atol=2e-6)
        if data["x"].dtype == np.float32
        else dict(rtol=1e-12, atol=1e-14)
    )
    np.testing.assert_allclose(loss, data["loss"], **tol)
    np.testing.assert_allclose(gx, data["grad_x"], **tol)
    np.testing.assert_allclose(gW, data["grad_W"], **tol)
    if "b" in data:
        np.testing.assert_allclose(gb, data["grad_b"], **tol)


FUNCS = [fastxent.linear_cross_entropy, fastxent.linear_cross_entropy_with_grad]


@pytest.mark.parametrize("swapped", ["x", "W", "all"])
@pytest.mark.parametrize("dtype", ["f8", "f4"])
def test_byte_swapped_inputs_work_as_in_cross_entropy(rng, swapped, dtype):
    """'>f8' data (e.g. from a big-endian file) is converted, as
    cross_entropy converts it; results are native and the same."""
    x, W = rng.standard_normal((7, 4)).astype(dtype), rng.standard_normal((5, 4)).astype(dtype)
    b, y = rng.standard_normal(5).astype(dtype), rng.integers(0, 5, 7)
    other = ">" if np.little_endian else "<"
    sx, sW, sb = (
        a.astype(other + dtype) if swapped in (k, "all") else a
        for a, k in ((x, "x"), (W, "W"), (b, "all"))
    )
    want = fastxent.linear_cross_entropy_with_grad(x, W, y, linear_bias=b)
    got = fastxent.linear_cross_entropy_with_grad(sx, sW, y, linear_bias=sb)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.dtype.isnative
        np.testing.assert_array_equal(g, w)
    loss = fastxent.linear_cross_entropy(sx, sW, y, linear_bias=sb)
    assert loss == want[0] and loss.dtype == np.dtype(dtype)


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        (("x32", "W", "y"), {}, TypeError, r"must all have one dtype.*x=float32"),
        (("x", "W", "y"), {"linear_bias": "b32"}, TypeError, r"linear_bias=float32"),
        (("xi", "Wi", "y"), {}, TypeError, r"must all have one dtype, float32 or float64"),
        (("x", "W3", "y"), {}, ValueError, r"x has 4 features .* must be \(V, 4\)"),
        (("x", "W1d", "y"), {}, ValueError, r"linear_weight must have shape \(V, d\)"),
        (
            ("x", "W", "y"),
            {"linear_bias": "b_short"},
            ValueError,
            r"linear_bias must have shape \(6,\)",
        ),
        (("x0d", "W", "y"), {}, ValueError, r"0-d"),
        (("x", "W0", "y"), {}, ValueError, r"at least one row"),
        (("x", "W", "y_big"), {}, ValueError, r"label outside \[0, 6\).*6 at flat position 2"),
        (("x", "W", "y_short"), {}, ValueError, r"target must have shape \(5,\)"),
        (("x", "W", "y_float"), {}, TypeError, r"must be integers"),
        (("x", "W", "y"), {"weight": "w_nan"}, ValueError, r"weight must be finite"),
        (
            ("x", "W", "y"),
            {"chunk_size": 0},
            ValueError,
            r"chunk_size must be None or an integer >= 1",
        ),
        (("x", "W", "y"), {"chunk_size": 2.5}, TypeError, r"chunk_size must be None or an integer"),
        (("x", "W", "y"), {"chunk_size": True}, TypeError, r"chunk_size"),
        (("x", "W", "y"), {"reduction": "avg"}, ValueError, r"reduction must be one of"),
        (("x", "W", "y"), {"num_threads": 0}, ValueError, r"num_threads"),
        (("x", "W", "y"), {"label_smoothing": 2.0}, ValueError, r"label_smoothing"),
        (("x", "W", "y"), {"label_smoothing": True}, TypeError, r"label_smoothing must be a real"),
        (("x", "W", "y"), {"softcap": "30"}, TypeError, r"softcap must be a real number"),
        (("x", "W", "y"), {"z_loss": np.False_}, TypeError, r"z_loss must be a real number"),
        (("x", "W", "y"), {"chunk_size": "2"}, TypeError, r"chunk_size must be None or an integer"),
        (("x", "W", "y"), {"ignore_index": True}, TypeError, r"ignore_index must be an integer"),
    ],
)
def test_bad_input_is_a_clear_error_and_modifies_nothing(fn, args, kwargs, exc, match, rng):
    values = {
        "x": rng.standard_normal((5, 4)),
        "x32": rng.standard_normal((5, 4)).astype(np.float32),
        "xi": np.ones((5, 4), dtype=np.int64),
        "x0d": np.float64(1.0),
        "W": rng.standard_normal((6, 4)),
        "Wi": np.ones((6, 4), dtype=np.int64),
        "W3": rng.standard_normal((6, 3)),
        "W1d": rng.standard_normal(4),
        "W0": np.zeros((0, 4)),
        "y": np.array([0, 1, 2, 3, 5]),
        "y_big": np.array([0, 1, 6, 3, 5]),
        "y_short": np.array([0, 1]),
        "y_float": np.array([0.0, 1, 2, 3, 5]),
        "b32": np.zeros(6, dtype=np.float32),
        "b_short": np.zeros(5),
        "w_nan": np.array([1.0, np.nan, 1, 1, 1, 1]),
    }
    a = [values[k] for k in args]
    kw = {k: values.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    before = snapshot(*[x for x in a + list(kw.values()) if isinstance(x, np.ndarray)])
    with pytest.raises(exc, match=match):
        fn(*a, **kw)
    assert snapshot(*[x for x in a + list(kw.values()) if isinstance(x, np.ndarray)]) == before


def test_default_chunk_size_rule():
    from fastxent._linear import default_chunk_size

    # a quarter of the logits less the per-row losses: 509 rows, in 5 even chunks
    assert default_chunk_size(2048, 32000, 512, 4) == 410
    assert default_chunk_size(2048, 32000, 512, 8) == 410
    assert default_chunk_size(4096, 32000, 1024, 4) == 820
    # at most 1 024 rows, unless 4 MiB holds more ...
    assert default_chunk_size(8192, 128256, 256, 4) == 1024
    assert default_chunk_size(10**6, 32000, 100, 4) == 1024
    assert default_chunk_size(10**6, 50, 100, 8) == -(-(10**6) // 96)  # 4 MiB: 10 485 rows
    # ... at least 4 MiB when the logits are small, and at most n
    assert default_chunk_size(512, 10000, 256, 4) == 103
    assert default_chunk_size(64, 1000, 8, 8) == 64
    assert default_chunk_size(50, 32000, 8, 4) == 25  # 4 MiB: 32 rows, in 2 even chunks
    assert default_chunk_size(50, 3200, 8, 4) == 50
    assert default_chunk_size(1, 32000, 8, 4) == default_chunk_size(0, 32000, 8, 4) == 1
    # two buffers a chunk (a distillation's two heads) share the same budget
    for n, V, itemsize in [(2048, 32000, 4), (4096, 32000, 8), (8192, 128256, 4)]:
        r = default_chunk_size(n, V, 64, itemsize, buffers=2)
        assert 2 * r * V * itemsize + 8 * (n + V) <= n * V * itemsize / 4
        assert r >= default_chunk_size(n, V, 64, itemsize) // 2 - 64  # not needlessly small
    assert default_chunk_size(2048, 32000, 512, 4, buffers=2) == 228


SHAPES = [
    (n, V, itemsize)
    for n in (1, 2, 3, 100, 512, 1000, 2048, 4095, 4096, 8192, 16384, 10**5, 10**6)
    for V in (1, 2, 10, 100, 1000, 10000, 32000, 128256, 256000)
    for itemsize in (4, 8)
]


@pytest.mark.parametrize("n, V, itemsize", SHAPES)
def test_default_chunk_size_within_the_memory_budget(n, V, itemsize):
    """The default chunk: working memory (buffer, float64 per-row losses and
    bias sums) within a quarter of the logits or 4 MiB; chunks of equal size;
    and as few chunks as those bounds and the 1 024-row cap allow (fewer,
    larger chunks re-read W less often)."""
    from fastxent._linear import default_chunk_size

    r = default_chunk_size(n, V, 256, itemsize)
    row = V * itemsize
    budget = max(n * row / 4, 4 * 2**20)
    cap = max(1024, 4 * 2**20 // row)

    def allowed(rows):
        return (rows <= cap and rows * row + 8 * (n + V) <= budget) or rows == 1

    assert 1 <= r <= max(n, 1)
    assert allowed(r), (r, r * row / (n * row))
    chunks = -(-n // r)
    assert n - (chunks - 1) * r >= r - chunks  # the last chunk is not a remainder
    if chunks > 1:  # one chunk fewer would break a bound
        assert not allowed(-(-n // (chunks - 1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_default_chunk_is_an_explicit_chunk(dtype, rng):
    """chunk_size=None is the same bits as chunk_size=default_chunk_size(...)
    (the default only picks the rows per chunk), and agrees to rounding with
    other chunk sizes, which sum grad_W over the chunks in another order."""
    from fastxent._linear import default_chunk_size

    x, W, b, t = make_problem(rng, (3000,), 40, 1500, dtype)
    r = default_chunk_size(3000, 1500, 40, np.dtype(dtype).itemsize)
    assert 1 < r < 3000  # several chunks
    got = fastxent.linear_cross_entropy_with_grad(x, W, t, linear_bias=b)
    same = fastxent.linear_cross_entropy_with_grad(x, W, t, linear_bias=b, chunk_size=r)
    for a, c in zip(got, same, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(c).tobytes()
    for other in (r - 1, 3000):
        again = fastxent.linear_cross_entropy_with_grad(x, W, t, linear_bias=b, chunk_size=other)
        for what, a, c in zip(("loss", "grad_x", "grad_W", "grad_b"), got, again, strict=True):
            assert_matches(a, c, dtype, what)


def test_import_fastxent_does_not_import_scipy():
    import subprocess
    import sys

    code = "import sys, fastxent; assert 'scipy' not in sys.modules, 'scipy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.given(
    n=st.integers(0, 40),
    d=st.integers(1, 9),
    V=st.integers(1, 90),
    dtype=st.sampled_from([np.float32, np.float64]),
    kind=st.sampled_from(["labels", "probs"]),
    reduction=st.sampled_from(REDUCTIONS),
    bias=st.booleans(),
    chunk=st.one_of(st.none(), st.integers(1, 50)),
    smoothing=st.sampled_from([0.0, 0.3]),
    z_loss=st.sampled_from([0.0, 1e-2]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_against_the_unfused_composition(
    n, d, V, dtype, kind, reduction, bias, chunk, smoothing, z_loss, weighted, seed
):
    rng = np.random.default_rng(seed)
    x, W, b, t = make_problem(rng, (n,), d, V, dtype, kind, bias, scale=3.0)
    opts = dict(reduction=reduction, label_smoothing=smoothing, z_loss=z_loss)
    if weighted:
        opts["weight"] = rng.uniform(0.1, 2.0, V)
        opts["sample_weight"] = rng.uniform(0.1, 2.0, n)
    with np.errstate(all="ignore"):
        check(x, W, t, b, chunk_size=chunk, **opts)


@pytest.mark.slow
def test_more_than_2_31_logits_in_little_memory(rng):
    """n * V > 2**31 (70 000 x 32 000): the logits would take 9 GB in
    float32; the fused call holds one chunk.  Per-sample losses of a few
    rows match the reference, and the weight gradient the unfused
    computation done chunk by chunk here (NumPy products of fastxent's
    logits gradient, which the rest of the suite checks)."""
    n, d, V = 70_000, 4, 32_000
    assert n * V > 2**31
    x = rng.standard_normal((n, d)).astype(np.float32)
    W = (rng.standard_normal((V, d)) * 0.5).astype(np.float32)
    y = rng.integers(0, V, n)
    per = fastxent.linear_cross_entropy(x, W, y, reduction="none")
    loss, _, gW, _ = fastxent.linear_cross_entropy_with_grad(x, W, y, reduction="sum")
    rows = np.array([0, 1, 2**16 + 7, n - 1])
    z = x[rows].astype(np.float64) @ W.T.astype(np.float64)
    want = ref.cross_entropy(z, y[rows], reduction="none")[0]
    np.testing.assert_allclose(per[rows], want, rtol=1e-5)
    assert float(loss) == pytest.approx(float(np.sum(per, dtype=np.float64)), rel=1e-5)
    gW_ref = np.zeros((V, d))
    for i in range(0, n, 4000):
        xc = x[i : i + 4000]
        G = fastxent.cross_entropy_grad(xc @ W.T, y[i : i + 4000], reduction="sum")
        gW_ref += G.T.astype(np.float64) @ xc.astype(np.float64)
    assert_matches(gW, gW_ref, np.float32, "grad_W", float(np.abs(x).max()))


def test_misaligned_inputs_are_copied(rng):
    """A C-contiguous view at an odd address (as a block received over the
    network can be) is copied, not handed to the kernel."""
    x, W, b, t = make_problem(rng, (20,), 6, 9, np.float64)
    want = fastxent.linear_cross_entropy_with_grad(x, W, t, linear_bias=b)

    def misaligned(a):
        buf = np.zeros(a.nbytes + 1, np.uint8)
        view = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
        view[...] = a
        assert not view.flags.aligned and view.flags.c_contiguous
        return view

    got = fastxent.linear_cross_entropy_with_grad(
        misaligned(x), misaligned(W), t, linear_bias=misaligned(b)
    )
    for a, c in zip(got, want, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(c).tobytes()


def test_concurrent_calls_leave_blas_threads_as_they_were(rng):
    """Calls from several Python threads at once give the same results as
    one at a time, and BLAS's own thread count is what it was afterwards
    (a per-call limit could record another call's 1 and restore it)."""
    from concurrent.futures import ThreadPoolExecutor

    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg.cython_blas  # noqa: F401 - loaded before the first look

    before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    x, W, b, t = make_problem(rng, (600,), 40, 700, np.float64)
    want = fastxent.linear_cross_entropy_with_grad(x, W, t, linear_bias=b, num_threads=1)
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(
                fastxent.linear_cross_entropy_with_grad, x, W, t, linear_bias=b, num_threads=1
            )
            for _ in range(16)
        ]
        results = [f.result() for f in futures]
    for got in results:
        for a, c in zip(got, want, strict=True):
            assert np.asarray(a).tobytes() == np.asarray(c).tobytes()
    after = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert after == before
