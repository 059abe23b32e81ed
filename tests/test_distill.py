"""distillation_loss_with_grad and linear_distillation_loss_with_grad against
the float64 reference (reference.py), finite differences and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import distillation as ref_div
from reference import finite_difference_grad

import fastxent

TOL = {np.float32: dict(rtol=5e-5, atol=5e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}
DIVS = ["forward_kl", "reverse_kl", "jsd"]


def _pair(rng, shape, dtype, scale=3.0):
    s = (rng.standard_normal(shape) * scale).astype(dtype)
    t = (rng.standard_normal(shape) * scale).astype(dtype)
    return s, t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("opts", [{}, {"temperature": 2.0, "beta": 0.2}, {"temperature": 0.6}])
@pytest.mark.parametrize("shape", [(6, 17), (2, 3, 40), (9,)])
def test_matches_reference(dtype, divergence, opts, shape):
    rng = np.random.default_rng(0)
    s, t = _pair(rng, shape, dtype)
    loss, grad = fastxent.distillation_loss_with_grad(
        s, t, divergence=divergence, reduction="none", **opts
    )
    kw = {k: v for k, v in opts.items()}
    rloss, rgrad = ref_div(s, t, divergence=divergence, **kw)
    assert loss.shape == shape[:-1] and grad.shape == shape and grad.dtype == dtype
    np.testing.assert_allclose(loss, rloss, **TOL[dtype])
    np.testing.assert_allclose(grad, rgrad, **TOL[dtype])


@pytest.mark.parametrize("divergence", DIVS)
def test_reductions_and_ignored_rows(divergence):
    rng = np.random.default_rng(1)
    s, t = _pair(rng, (7, 11), np.float64)
    y = rng.integers(0, 11, size=7)
    y[[2, 5]] = -100
    keep = y != -100
    rloss, rgrad = ref_div(s, t, divergence=divergence)
    rloss, rgrad = np.where(keep, rloss, 0.0), np.where(keep[:, None], rgrad, 0.0)
    none, g_none = fastxent.distillation_loss_with_grad(
        s, t, divergence=divergence, reduction="none", target=y
    )
    np.testing.assert_allclose(none, rloss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g_none, rgrad, rtol=1e-12, atol=1e-14)
    total, g_sum = fastxent.distillation_loss_with_grad(
        s, t, divergence=divergence, reduction="sum", target=y
    )
    np.testing.assert_allclose(total, rloss.sum(), rtol=1e-12)
    np.testing.assert_array_equal(g_sum, g_none)
    mean, g_mean = fastxent.distillation_loss_with_grad(s, t, divergence=divergence, target=y)
    np.testing.assert_allclose(mean, rloss.sum() / 5, rtol=1e-12)
    np.testing.assert_allclose(g_mean, rgrad / 5, rtol=1e-12, atol=1e-14)
    # without a target every row counts: batchmean divides by n
    mean_all, _ = fastxent.distillation_loss_with_grad(s, t, divergence=divergence)
    np.testing.assert_allclose(mean_all, ref_div(s, t, divergence=divergence)[0].mean())
    # every row ignored: NaN, as PyTorch's 0 / 0
    nan, g = fastxent.distillation_loss_with_grad(s, t, target=np.full(7, -100))
    assert np.isnan(nan) and not g.any()


@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("temperature", [1.0, 1.8])
def test_gradient_against_finite_differences(divergence, temperature):
    rng = np.random.default_rng(2)
    s, t = _pair(rng, (3, 7), np.float64)

    def f(ss):
        return float(
            fastxent.distillation_loss_with_grad(
                ss, t, divergence=divergence, temperature=temperature, beta=0.3
            )[0]
        )

    _, g = fastxent.distillation_loss_with_grad(
        s, t, divergence=divergence, temperature=temperature, beta=0.3
    )
    np.testing.assert_allclose(g, finite_difference_grad(f, s), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("divergence", DIVS)
def test_extremes(dtype, divergence):
    ninf = -np.inf
    s = np.array(
        [
            [0.0, ninf, 1.0, ninf],  # masked in both
            [1e30, -1e30, 0.0, 1e30],
            [3.0, 3.0, 3.0, 3.0],
        ],
        dtype=dtype,
    )
    t = np.array(
        [[2.0, ninf, 0.0, ninf], [1e30, 0.0, -1e30, 1e30], [3.0, 3.0, 3.0, 3.0]], dtype=dtype
    )
    loss, g = fastxent.distillation_loss_with_grad(s, t, divergence=divergence, reduction="none")
    rloss, rg = ref_div(s, t, divergence=divergence)
    assert np.isfinite(loss).all() and np.isfinite(g).all()
    np.testing.assert_allclose(loss, rloss, **TOL[dtype])
    np.testing.assert_allclose(g, rg, **TOL[dtype])
    assert loss[2] == 0 and not g[2].any()  # identical rows
    assert (g[0, [1, 3]] == 0).all()


@pytest.mark.parametrize("divergence", DIVS)
def test_same_bits_at_every_thread_count(divergence):
    rng = np.random.default_rng(3)
    s, t = _pair(rng, (300, 257), np.float32)
    ref = fastxent.distillation_loss_with_grad(
        s, t, divergence=divergence, reduction="none", num_threads=1
    )
    for nt in (2, 3, 4):
        got = fastxent.distillation_loss_with_grad(
            s, t, divergence=divergence, reduction="none", num_threads=nt
        )
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


@pytest.mark.parametrize("divergence", DIVS)
def test_out_and_in_place(divergence):
    rng = np.random.default_rng(4)
    s, t = _pair(rng, (5, 33), np.float64)
    loss, expected = fastxent.distillation_loss_with_grad(s, t, divergence=divergence)
    out = np.empty_like(s)
    l2, g = fastxent.distillation_loss_with_grad(s, t, divergence=divergence, out=out)
    assert g is out and l2 == loss
    np.testing.assert_array_equal(out, expected)
    ss = s.copy()
    l3, g = fastxent.distillation_loss_with_grad(ss, t, divergence=divergence, out=ss)
    assert g is ss and l3 == loss
    np.testing.assert_array_equal(ss, expected)


def test_axis_and_half_precision():
    rng = np.random.default_rng(5)
    s, t = _pair(rng, (2, 13, 3), np.float64)
    loss, g = fastxent.distillation_loss_with_grad(s, t, axis=1, divergence="jsd")
    l2, g2 = fastxent.distillation_loss_with_grad(
        np.moveaxis(s, 1, -1), np.moveaxis(t, 1, -1), divergence="jsd"
    )
    assert loss == l2
    np.testing.assert_array_equal(np.moveaxis(g, 1, -1), g2)
    sh, th = s.astype(np.float16), t.astype(np.float16)
    lh, gh = fastxent.distillation_loss_with_grad(sh, th, reduction="none")
    l32, g32 = fastxent.distillation_loss_with_grad(
        sh.astype(np.float32), th.astype(np.float32), reduction="none"
    )
    assert gh.dtype == np.float16 and lh.dtype == np.float32
    np.testing.assert_array_equal(lh, l32)
    np.testing.assert_array_equal(gh, g32.astype(np.float16))


def test_errors_before_anything_is_written():
    rng = np.random.default_rng(6)
    s, t = _pair(rng, (4, 5), np.float64)
    out = np.full_like(s, 7.0)
    f = fastxent.distillation_loss_with_grad
    with pytest.raises(ValueError, match="divergence must be one of"):
        f(s, t, divergence="kl", out=out)
    with pytest.raises(ValueError, match="reduction must be one of"):
        f(s, t, reduction="mean", out=out)
    with pytest.raises(ValueError, match="beta"):
        f(s, t, divergence="jsd", beta=1.0, out=out)
    with pytest.raises(TypeError, match="beta"):
        f(s, t, beta="0.5", out=out)
    with pytest.raises(ValueError, match="teacher_logits must have the student's shape"):
        f(s, t[:, :4], out=out)
    with pytest.raises(ValueError, match="temperature"):
        f(s, t, temperature=0.0, out=out)
    with pytest.raises(ValueError, match="target must have shape"):
        f(s, t, target=np.zeros(3, int), out=out)
    with pytest.raises(TypeError, match="target must be an integer"):
        f(s, t, target=np.zeros(4), out=out)
    with pytest.raises(ValueError, match="out must have dtype"):
        f(s, t, out=np.empty((4, 5), np.float32))
    assert (out == 7.0).all()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5),
    m=st.integers(1, 30),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
    temperature=st.floats(0.3, 4.0),
    beta=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**31 - 1),
)
def test_properties(n, m, scale, temperature, beta, seed):
    rng = np.random.default_rng(seed)
    s, t = _pair(rng, (n, m), np.float64, scale)
    for div in DIVS:
        loss, g = fastxent.distillation_loss_with_grad(
            s, t, divergence=div, reduction="none", temperature=temperature, beta=beta
        )
        assert (loss >= -1e-9).all()  # divergences are non-negative
        np.testing.assert_allclose(g.sum(-1), 0.0, atol=1e-9 * max(1.0, np.abs(g).max()))
        same, g0 = fastxent.distillation_loss_with_grad(
            s, s, divergence=div, reduction="none", temperature=temperature, beta=beta
        )
        np.testing.assert_allclose(same, 0.0, atol=1e-9)
        np.testing.assert_allclose(g0, 0.0, atol=1e-9)
    # the generalised JSD is at most the entropy of (beta, 1 - beta), so at most log 2
    jsd, _ = fastxent.distillation_loss_with_grad(
        s, t, divergence="jsd", reduction="none", temperature=temperature, beta=beta
    )
    assert (jsd <= np.log(2) + 1e-9).all()


# ---- fused with the linear heads ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_unfused(dtype, divergence, bias):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 10, 6)).astype(dtype)
    W = rng.standard_normal((29, 6)).astype(dtype)
    tx = rng.standard_normal((3, 10, 9)).astype(dtype)
    tW = rng.standard_normal((29, 9)).astype(dtype)
    b = rng.standard_normal(29).astype(dtype) if bias else None
    tb = rng.standard_normal(29).astype(dtype) if bias else None
    y = rng.integers(0, 29, size=(3, 10))
    y[1, 4] = -100
    s = x @ W.T + (b if bias else 0)
    t = tx @ tW.T + (tb if bias else 0)
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    ref_loss, G = fastxent.distillation_loss_with_grad(
        s, t, divergence=divergence, target=y, temperature=1.5
    )
    G = G.reshape(-1, 29).astype(np.float64)
    for chunk in (None, 4):
        loss, gx, gW, gb = fastxent.linear_distillation_loss_with_grad(
            x, W, tx, tW, linear_bias=b, teacher_linear_bias=tb, divergence=divergence,
            target=y, temperature=1.5, chunk_size=chunk,
        )  # fmt: skip
        np.testing.assert_allclose(loss, ref_loss, **tol)
        np.testing.assert_allclose(gx.reshape(-1, 6), G @ W, **tol)
        np.testing.assert_allclose(gW, G.T @ x.reshape(-1, 6), **tol)
        assert gx.shape == x.shape and gx.dtype == dtype
        if bias:
            np.testing.assert_allclose(gb, G.sum(0), **tol)
        else:
            assert gb is None


def test_linear_errors():
    rng = np.random.default_rng(8)
    x, W = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    tx, tW = rng.standard_normal((4, 2)), rng.standard_normal((5, 2))
    f = fastxent.linear_distillation_loss_with_grad
    with pytest.raises(ValueError, match="teacher_x must have shape"):
        f(x, W, tx[:3], tW)
    with pytest.raises(ValueError, match="teacher_linear_weight must have shape"):
        f(x, W, tx, tW[:4])
    with pytest.raises(ValueError, match="teacher_linear_bias"):
        f(x, W, tx, tW, teacher_linear_bias=np.zeros(4))
    with pytest.raises(ValueError, match="divergence"):
        f(x, W, tx, tW, divergence="kl")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("divergence", DIVS)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_loss_alone_is_the_same_loss(dtype, divergence, reduction):
    # The loss-only route (the PyTorch adapter's under no_grad) writes no
    # gradient and gives the bits of the loss computed with it, plain and
    # fused with the linear heads, with masked and ignored rows.
    from fastxent import _distill

    rng = np.random.default_rng(7)
    s = rng.standard_normal((70, 300)).astype(dtype) * 4
    t = rng.standard_normal((70, 300)).astype(dtype) * 4
    s[3, :150] = -np.inf
    target = rng.integers(0, 5, 70)
    target[::9] = -100
    opts = dict(divergence=divergence, beta=0.3, temperature=1.7, reduction=reduction,
                target=target, ignore_index=-100)  # fmt: skip
    want, _ = fastxent.distillation_loss_with_grad(s, t, **opts)
    got, grad = _distill._run(s, t, **opts, axis=-1, out=None, num_threads=2, want_grad=False)
    assert grad is None
    np.testing.assert_array_equal(got, want)

    x, W = s[:, :20].copy(), rng.standard_normal((50, 20)).astype(dtype)
    tx, tW = t[:, :9].copy(), rng.standard_normal((50, 9)).astype(dtype)
    b = rng.standard_normal(50).astype(dtype)
    want, *_ = fastxent.linear_distillation_loss_with_grad(
        x, W, tx, tW, linear_bias=b, chunk_size=16, **opts
    )
    got, *grads = _distill._linear_run(
        x, W, tx, tW, linear_bias=b, teacher_linear_bias=None, chunk_size=16, num_threads=2,
        want_grad=False, **opts,
    )  # fmt: skip
    assert grads == [None, None, None]
    np.testing.assert_array_equal(got, want)
