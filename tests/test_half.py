"""float16 and bfloat16 logits: computed in float32 by the same row kernels a
block of rows at a time, gradients and softmax outputs in the input dtype,
losses (and logsumexp) in float32.

Accuracy, as the issue asks: against a float64 evaluation of the same
(rounded) inputs, losses within 1e-5 relative and every gradient or softmax
entry within one unit in the last place of the output dtype."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import reference as ref
from helpers import half_dtypes, make_labels, make_probs, snapshot

import fastxent
from fastxent import _kernels

HALF = half_dtypes()


def ulp(values, dtype):
    """One unit in the last place of ``dtype`` at ``values`` (float64):
    2**(exponent - mantissa bits), down to the smallest subnormal."""
    nmant, minexp = (10, -14) if dtype == np.float16 else (7, -126)  # float16, bfloat16
    a = np.abs(np.asarray(values, np.float64))
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    return np.exp2(np.maximum(e, minexp) - nmant)


def assert_within_one_ulp(got, want64, dtype, what, terms=0.0):
    """Each entry of ``got`` (of the half dtype) within one ulp of the float64
    ``want64`` rounded to that dtype (NaN where NaN, same infinities), plus
    the float32 rounding of the terms that cancel in it: a gradient entry
    ``b (Q P - q)`` whose two terms nearly cancel carries float32's relative
    error of the terms, ``terms`` (their size), which no float32 computation
    avoids and which may be many ulps of a tiny result."""
    assert got.dtype == dtype, (what, got.dtype)
    g = got.astype(np.float64)
    with np.errstate(all="ignore"):
        w = np.asarray(want64, np.float64).astype(dtype).astype(np.float64)
    assert np.array_equal(np.isnan(g), np.isnan(w)), f"{what}: NaN positions differ"
    fin = np.isfinite(w)
    assert np.array_equal(g[~fin & ~np.isnan(w)], w[~fin & ~np.isnan(w)]), f"{what}: infinities"
    err = np.abs(g[fin] - w[fin])
    tol = ulp(w[fin], dtype) + 8 * 2.0**-24 * np.broadcast_to(terms, w.shape)[fin]
    bad = err > tol
    assert not np.any(bad), (
        f"{what}: {int(np.sum(bad))} entries beyond one ulp, worst {float(np.max(err / tol)):.3f} "
        f"ulp: got {g[fin][bad][:3]}, want {w[fin][bad][:3]}, "
        f"float64 {np.asarray(want64, np.float64)[fin][bad][:3]}"
    )


def test_float16_conversions_match_numpy(rng):
    """Widening is exact (every float16 bit pattern); narrowing rounds to
    nearest even like NumPy, including ties, subnormals, overflow and NaN."""
    bits = np.arange(65536, dtype=np.uint16)
    wide = np.empty(65536, np.float32)
    _kernels.half_to_float(bits, wide, False)
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(wide), nan)
    assert np.array_equal(wide.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    exact = np.unique(want[np.isfinite(want)])
    f = np.concatenate(
        [
            rng.standard_normal(100_000).astype(np.float32)
            * (10 ** rng.uniform(-9, 6, 100_000)).astype(np.float32),
            exact,
            exact[:-1] + np.diff(exact) / 2,  # ties between neighbours
            np.array(
                [
                    0.0,
                    -0.0,
                    65504.0,
                    65519.99,
                    65520.0,
                    1e30,
                    -1e30,
                    np.inf,
                    -np.inf,
                    6e-8,
                    2.9e-8,
                    3e-8,
                    1e-45,
                ],
                np.float32,
            ),
        ]
    ).astype(np.float32)
    out = np.empty(f.size, np.uint16)
    _kernels.float_to_half(f, out, False)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(out, f.astype(np.float16).view(np.uint16))
    out2 = np.empty(2, np.uint16)
    _kernels.float_to_half(np.array([np.nan, -np.nan], np.float32), out2, False)
    assert np.all(np.isnan(out2.view(np.float16)))


def test_bfloat16_conversions_match_ml_dtypes(rng):
    md = pytest.importorskip("ml_dtypes")
    bits = np.arange(65536, dtype=np.uint16)
    wide = np.empty(65536, np.float32)
    _kernels.half_to_float(bits, wide, True)
    np.testing.assert_array_equal(wide.view(np.uint32), bits.astype(np.uint32) << 16)
    f = np.concatenate(
        [
            rng.standard_normal(100_000).astype(np.float32)
            * (10 ** rng.uniform(-30, 30, 100_000)).astype(np.float32),
            wide[np.isfinite(wide)],
            np.array([3.3895314e38, 3.4028235e38, np.inf, -np.inf, 1e-45, 0.0], np.float32),
        ]
    ).astype(np.float32)
    out = np.empty(f.size, np.uint16)
    _kernels.float_to_half(f, out, True)
    np.testing.assert_array_equal(out, f.astype(md.bfloat16).view(np.uint16))
    out2 = np.empty(1, np.uint16)
    _kernels.float_to_half(np.array([np.nan], np.float32), out2, True)
    assert np.isnan(out2.view(md.bfloat16).astype(np.float32)[0])


def _problem(rng, dtype, n, m, kind):
    z = (rng.standard_normal((n, m)) * 3).astype(dtype)
    t = make_labels(rng, (n,), m) if kind == "labels" else make_probs(rng, (n, m))
    return z, t


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("m", [10, 300, 5000])  # the tile kernel, row blocks, one row a block
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_and_gradients_against_float64(dtype, m, kind, reduction, rng):
    z, t = _problem(rng, dtype, 257, m, kind)
    opts = dict(reduction=reduction, label_smoothing=0.1)
    before = snapshot(z, t)
    loss, grad = fastxent.cross_entropy_with_grad(z, t, **opts)
    assert snapshot(z, t) == before
    want_loss, want_grad = ref.cross_entropy(z.astype(np.float64), t, **opts)
    assert np.asarray(loss).dtype == np.float32
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
    assert grad.dtype == dtype and grad.shape == z.shape
    # the softmax and target terms of a gradient entry are at most 1 / n
    # ("mean") or 1 each (no weights)
    terms = 1.0 / z.shape[0] if reduction == "mean" else 1.0
    assert_within_one_ulp(grad, want_grad, dtype, "grad", terms)
    np.testing.assert_array_equal(fastxent.cross_entropy(z, t, **opts), loss)
    g2 = fastxent.cross_entropy_grad(z, t, **opts)
    assert g2.tobytes() == grad.tobytes()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(
    "options",
    [
        dict(weight="w", ignore_index=3),
        dict(sample_weight="s", z_loss=1e-3),
        dict(softcap=5.0),
        dict(weight="w", sample_weight="s", label_smoothing=0.2, softcap=8.0),
    ],
)
def test_options(dtype, options, rng):
    z, t = _problem(rng, dtype, 130, 40, "labels")
    opts = dict(options)
    if opts.get("weight") == "w":
        opts["weight"] = rng.uniform(0.0, 2.0, 40)
    if opts.get("sample_weight") == "s":
        opts["sample_weight"] = rng.uniform(0.0, 2.0, 130)
    loss, grad = fastxent.cross_entropy_with_grad(z, t, **opts)
    ref_opts = dict(opts)
    if "weight" in opts:
        ref_opts["weight"] = opts["weight"].astype(np.float32)  # class weights act in float32
    want_loss, want_grad = ref.cross_entropy(z.astype(np.float64), t, **ref_opts)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    # the terms of a gradient entry: at most (max weight)^2 * 2 / (total weight)
    w_max = float(np.max(opts.get("weight", 1.0))) * float(np.max(opts.get("sample_weight", 1.0)))
    denom = np.sum(opts.get("sample_weight", np.ones(130)))
    assert_within_one_ulp(grad, want_grad, dtype, "grad", 4 * w_max / denom)


@pytest.mark.parametrize("dtype", HALF)
def test_probabilities_in_the_logits_dtype_stay_there(dtype, rng):
    """Half-precision probabilities are widened a block at a time too; the
    result is that of the same probabilities given in float32."""
    z, t = _problem(rng, dtype, 100, 70, "probs")
    th = t.astype(dtype)
    a = fastxent.cross_entropy_with_grad(z, th, reduction="sum")
    b = fastxent.cross_entropy_with_grad(z, th.astype(np.float32), reduction="sum")
    assert a[0] == b[0] and a[1].tobytes() == b[1].tobytes()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("m", [7, 3000])
def test_softmax_log_softmax_logsumexp(dtype, m, rng):
    z = (rng.standard_normal((91, m)) * 4).astype(dtype)
    z[0, :] = -np.inf
    z[0, 1] = 0.0  # one finite logit: probability 1
    z64 = z.astype(np.float64)
    p = fastxent.softmax(z)
    assert_within_one_ulp(p, ref.softmax(z64), dtype, "softmax")
    lp = fastxent.log_softmax(z)
    assert_within_one_ulp(lp, ref.log_softmax(z64), dtype, "log_softmax")
    lse = fastxent.logsumexp(z)
    assert lse.dtype == np.float32
    np.testing.assert_allclose(lse, ref.logsumexp(z64), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF)
def test_out_and_in_place(dtype, rng):
    z, t = _problem(rng, dtype, 64, 33, "labels")
    want = fastxent.cross_entropy_grad(z, t)
    out = np.empty_like(z)
    assert fastxent.cross_entropy_grad(z, t, out=out) is out
    assert out.tobytes() == want.tobytes()
    zz = z.copy()
    fastxent.cross_entropy_grad(zz, t, out=zz)
    assert zz.tobytes() == want.tobytes()
    p = fastxent.softmax(z)
    zz = z.copy()
    assert fastxent.softmax(zz, out=zz) is zz and zz.tobytes() == p.tobytes()


def test_wrong_out_dtypes_are_errors(rng):
    md = pytest.importorskip("ml_dtypes")
    z32 = rng.standard_normal((4, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    bf = np.empty((4, 5), md.bfloat16)
    with pytest.raises(ValueError, match="out must have dtype float32; got dtype=bfloat16"):
        fastxent.cross_entropy_grad(z32, y, out=bf)
    zb = z32.astype(md.bfloat16)
    with pytest.raises(ValueError, match="out must have dtype bfloat16; got dtype=float16"):
        fastxent.cross_entropy_grad(zb, y, out=np.empty((4, 5), np.float16))
    with pytest.raises(ValueError, match="out must have dtype bfloat16; got dtype=float32"):
        fastxent.softmax(zb, out=np.empty((4, 5), np.float32))


@pytest.mark.parametrize("dtype", HALF)
def test_identical_at_every_thread_count(dtype, rng):
    z, t = _problem(rng, dtype, 3000, 200, "labels")
    a = fastxent.cross_entropy_with_grad(z, t, num_threads=1)
    b = fastxent.cross_entropy_with_grad(z, t, num_threads=2)
    assert a[0] == b[0] and a[1].tobytes() == b[1].tobytes()
    assert (
        fastxent.softmax(z, num_threads=1).tobytes() == fastxent.softmax(z, num_threads=2).tobytes()
    )


@pytest.mark.parametrize("dtype", HALF)
def test_gradient_boosting_objective(dtype, rng):
    from fastxent.objectives import softmax_grad_hess

    z, t = _problem(rng, dtype, 200, 6, "labels")
    g, h = softmax_grad_hess(z, t)
    assert g.dtype == h.dtype == dtype
    g64, h64 = softmax_grad_hess(z.astype(np.float64), t)
    assert_within_one_ulp(g, g64, dtype, "grad")
    assert_within_one_ulp(h, h64, dtype, "hess")


@pytest.mark.parametrize("dtype", HALF)
def test_linear_cross_entropy(dtype, rng):
    pytest.importorskip("scipy")
    x = rng.standard_normal((60, 8)).astype(dtype)
    W = rng.standard_normal((30, 8)).astype(dtype)
    b = rng.standard_normal(30).astype(dtype)
    y = rng.integers(0, 30, 60)
    loss, gx, gW, gb = fastxent.linear_cross_entropy_with_grad(x, W, y, linear_bias=b)
    assert np.asarray(loss).dtype == np.float32
    assert gx.dtype == gW.dtype == gb.dtype == dtype
    x64, W64, b64 = (a.astype(np.float64) for a in (x, W, b))
    L, G = ref.cross_entropy(x64 @ W64.T + b64, y)
    np.testing.assert_allclose(loss, L, rtol=1e-5)
    assert_within_one_ulp(gx, G @ W64, dtype, "grad_x")
    assert_within_one_ulp(gW, G.T @ x64, dtype, "grad_W")
    assert_within_one_ulp(gb, G.sum(axis=0), dtype, "grad_b")


def test_import_fastxent_does_not_import_ml_dtypes():
    code = "import sys, fastxent; assert 'ml_dtypes' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
