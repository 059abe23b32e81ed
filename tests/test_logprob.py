"""token_logprobs, token_logprobs_vjp and their fused linear variants against
the float64 reference (reference.py), finite differences and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import finite_difference_grad
from reference import token_logprobs as ref_logprobs
from reference import token_logprobs_vjp as ref_vjp

import fastxent

TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}
OPTIONS = [
    {},
    {"temperature": 0.7},
    {"temperature": 2.5, "softcap": 5.0},
    {"softcap": 2.0},
]


def _data(rng, shape, dtype, ignore=True):
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    y = rng.integers(0, shape[-1], size=shape[:-1])
    if ignore and y.size > 1:
        y.reshape(-1)[1] = -100
    return z, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 13), (3, 4, 33), (50,), (5, 1)])
@pytest.mark.parametrize("opts", OPTIONS)
def test_logprobs_and_entropy_match_reference(dtype, shape, opts):
    rng = np.random.default_rng(0)
    z, y = _data(rng, shape, dtype)
    lp, ent = fastxent.token_logprobs(z, y, return_entropy=True, **opts)
    rlp, rent = ref_logprobs(z, y, **opts)
    assert lp.shape == y.shape and ent.shape == y.shape and lp.dtype == dtype
    np.testing.assert_allclose(lp, rlp, **TOL[dtype])
    np.testing.assert_allclose(ent, rent, **TOL[dtype])
    np.testing.assert_array_equal(fastxent.token_logprobs(z, y, **opts), lp)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("with_entropy", [False, True])
def test_vjp_matches_reference(dtype, opts, with_entropy):
    rng = np.random.default_rng(1)
    z, y = _data(rng, (9, 21), dtype)
    gl = rng.standard_normal(9)
    ge = rng.standard_normal(9) if with_entropy else None
    g = fastxent.token_logprobs_vjp(z, y, gl, ge, **opts)
    assert g.dtype == dtype and g.shape == z.shape
    np.testing.assert_allclose(g, ref_vjp(z, y, gl, ge, **opts), **TOL[dtype])
    assert not g[1].any()  # the ignored row


@pytest.mark.parametrize("opts", OPTIONS)
def test_vjp_against_finite_differences(opts):
    rng = np.random.default_rng(2)
    z, y = _data(rng, (4, 6), np.float64, ignore=False)
    gl, ge = rng.standard_normal(4), rng.standard_normal(4)

    def f(zz):
        lp, ent = fastxent.token_logprobs(zz, y, return_entropy=True, **opts)
        return float(gl @ lp + ge @ ent)

    g = fastxent.token_logprobs_vjp(z, y, gl, ge, **opts)
    np.testing.assert_allclose(g, finite_difference_grad(f, z), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_entropy_gradient_alone(temperature):
    """The entropy's own gradient (zero upstream log-prob gradient) against
    finite differences of the entropy: the term RL libraries have dropped."""
    rng = np.random.default_rng(3)
    z, y = _data(rng, (5, 8), np.float64, ignore=False)
    ge = rng.standard_normal(5)

    def f(zz):
        _, ent = fastxent.token_logprobs(zz, y, return_entropy=True, temperature=temperature)
        return float(ge @ ent)

    g = fastxent.token_logprobs_vjp(z, y, np.zeros(5), ge, temperature=temperature)
    assert np.abs(g).max() > 1e-3
    np.testing.assert_allclose(g, finite_difference_grad(f, z), rtol=1e-6, atol=1e-8)
    # without softcap each row's gradient sums to 0 (softmax is shift-invariant)
    np.testing.assert_allclose(g.sum(-1), 0.0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extremes(dtype):
    ninf = -np.inf
    z = np.array(
        [
            [0.0, ninf, 1.0, ninf],  # masked classes
            [1e30, -1e30, 0.0, 1e30],  # huge, tied at the max
            [3.0, 3.0, 3.0, 3.0],  # all tied
            [ninf, 0.0, ninf, ninf],  # one class left
            [2.0, ninf, 0.0, 1.0],  # the label masked
        ],
        dtype=dtype,
    )
    y = np.array([2, 0, 1, 1, 1])
    lp, ent = fastxent.token_logprobs(z, y, return_entropy=True)
    rlp, rent = ref_logprobs(z, y)
    np.testing.assert_allclose(lp, rlp, **TOL[dtype])
    np.testing.assert_allclose(ent, rent, **TOL[dtype])
    assert lp[4] == -np.inf and np.isfinite(ent).all()
    assert abs(lp[1] - np.log(0.5)) < 1e-6  # two tied maxima of 1e30
    gl, ge = np.ones(5), np.ones(5)
    g = fastxent.token_logprobs_vjp(z, y, gl, ge)
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, ref_vjp(z, y, gl, ge), **TOL[dtype])
    assert (g[0, [1, 3]] == 0).all()


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_half_precision_in_float32(kind):
    if kind == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dt = np.dtype(ml_dtypes.bfloat16)
    else:
        dt = np.dtype(np.float16)
    rng = np.random.default_rng(4)
    z, y = _data(rng, (6, 40), np.float32)
    zh = z.astype(dt)
    z32 = zh.astype(np.float32)
    lp, ent = fastxent.token_logprobs(zh, y, return_entropy=True, temperature=1.3)
    assert lp.dtype == np.float32
    rlp, rent = fastxent.token_logprobs(z32, y, return_entropy=True, temperature=1.3)
    np.testing.assert_array_equal(lp, rlp)
    np.testing.assert_array_equal(ent, rent)
    gl = rng.standard_normal(6)
    g = fastxent.token_logprobs_vjp(zh, y, gl, temperature=1.3)
    assert g.dtype == dt
    g32 = fastxent.token_logprobs_vjp(z32, y, gl, temperature=1.3)
    np.testing.assert_array_equal(g, g32.astype(dt))
    out = np.empty_like(zh)
    assert fastxent.token_logprobs_vjp(zh, y, gl, temperature=1.3, out=out) is out
    np.testing.assert_array_equal(out, g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", [{}, {"softcap": 3.0, "temperature": 0.8}])
def test_same_bits_at_every_thread_count(dtype, opts):
    rng = np.random.default_rng(5)
    z, y = _data(rng, (301, 257), dtype)  # above the serial threshold
    gl, ge = rng.standard_normal(301), rng.standard_normal(301)
    ref = fastxent.token_logprobs(z, y, return_entropy=True, num_threads=1, **opts)
    gref = fastxent.token_logprobs_vjp(z, y, gl, ge, num_threads=1, **opts)
    for nt in (2, 3, 4):
        got = fastxent.token_logprobs(z, y, return_entropy=True, num_threads=nt, **opts)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
        g = fastxent.token_logprobs_vjp(z, y, gl, ge, num_threads=nt, **opts)
        np.testing.assert_array_equal(g, gref)


@pytest.mark.parametrize("opts", [{}, {"softcap": 3.0}])
def test_vjp_out_and_in_place(opts):
    rng = np.random.default_rng(6)
    z, y = _data(rng, (8, 30), np.float64)
    gl, ge = rng.standard_normal(8), rng.standard_normal(8)
    expected = fastxent.token_logprobs_vjp(z, y, gl, ge, **opts)
    out = np.empty_like(z)
    assert fastxent.token_logprobs_vjp(z, y, gl, ge, out=out, **opts) is out
    np.testing.assert_array_equal(out, expected)
    zz = z.copy()
    assert fastxent.token_logprobs_vjp(zz, y, gl, ge, out=zz, **opts) is zz
    np.testing.assert_array_equal(zz, expected)


def test_axis():
    rng = np.random.default_rng(7)
    z = rng.standard_normal((3, 11, 4))  # classes on axis 1
    y = rng.integers(0, 11, size=(3, 4))
    gl = rng.standard_normal((3, 4))
    zl = np.moveaxis(z, 1, -1)
    lp, ent = fastxent.token_logprobs(z, y, axis=1, return_entropy=True)
    rlp, rent = fastxent.token_logprobs(zl, y, return_entropy=True)
    np.testing.assert_array_equal(lp, rlp)
    np.testing.assert_array_equal(ent, rent)
    g = fastxent.token_logprobs_vjp(z, y, gl, gl, axis=1)
    np.testing.assert_array_equal(np.moveaxis(g, 1, -1), fastxent.token_logprobs_vjp(zl, y, gl, gl))


def test_errors_before_anything_is_written():
    rng = np.random.default_rng(8)
    z, y = _data(rng, (4, 5), np.float64)
    out = np.full_like(z, 7.0)
    gl = np.ones(4)
    with pytest.raises(ValueError, match="class indices"):
        fastxent.token_logprobs(z, np.full((4, 5), 0.2))
    with pytest.raises(TypeError, match="integers"):
        fastxent.token_logprobs(z, y.astype(float))
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        fastxent.token_logprobs_vjp(z, np.array([0, 1, 5, 2]), gl, out=out)
    with pytest.raises(ValueError, match="temperature"):
        fastxent.token_logprobs(z, y, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        fastxent.token_logprobs_vjp(z, y, gl, temperature=-1.0, out=out)
    with pytest.raises(TypeError, match="temperature"):
        fastxent.token_logprobs(z, y, temperature="1")
    with pytest.raises(ValueError, match="softcap"):
        fastxent.token_logprobs(z, y, softcap=0.0)
    with pytest.raises(ValueError, match=r"grad_logprobs must have shape \(4,\)"):
        fastxent.token_logprobs_vjp(z, y, np.ones(3), out=out)
    with pytest.raises(ValueError, match=r"grad_entropy must have shape"):
        fastxent.token_logprobs_vjp(z, y, gl, np.ones(5), out=out)
    with pytest.raises(ValueError, match="dtype"):
        fastxent.token_logprobs_vjp(z, y, gl, out=np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match="return_entropy"):
        fastxent.token_logprobs(z, y, return_entropy=1)
    assert (out == 7.0).all()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    m=st.integers(1, 40),
    scale=st.sampled_from([0.1, 3.0, 50.0]),
    temperature=st.floats(0.2, 5.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_properties(n, m, scale, temperature, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, m)) * scale
    y = rng.integers(0, m, size=n)
    lp, ent = fastxent.token_logprobs(z, y, return_entropy=True, temperature=temperature)
    assert (lp <= 1e-12).all()
    assert (ent >= -1e-12).all() and (ent <= np.log(m) + 1e-9).all()
    # the probabilities of every label sum to 1
    every = np.stack(
        [fastxent.token_logprobs(z, np.full(n, k), temperature=temperature) for k in range(m)]
    )
    np.testing.assert_allclose(np.exp(every).sum(0), 1.0, rtol=1e-9)
    # the VJP's rows sum to 0 (shift invariance), and it is linear in (gl, ge)
    gl, ge = rng.standard_normal(n), rng.standard_normal(n)
    g = fastxent.token_logprobs_vjp(z, y, gl, ge, temperature=temperature)
    np.testing.assert_allclose(g.sum(-1), 0.0, atol=1e-9 * max(1.0, np.abs(g).max()))
    g1 = fastxent.token_logprobs_vjp(z, y, gl, None, temperature=temperature)
    g2 = fastxent.token_logprobs_vjp(z, y, np.zeros(n), ge, temperature=temperature)
    np.testing.assert_allclose(g, g1 + g2, rtol=1e-9, atol=1e-12)


# ---- the fused linear variants ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("opts", [{}, {"temperature": 1.7, "softcap": 4.0}])
def test_linear_matches_unfused(dtype, bias, opts):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 25, 8)).astype(dtype)
    W = rng.standard_normal((37, 8)).astype(dtype)
    b = rng.standard_normal(37).astype(dtype) if bias else None
    y = rng.integers(0, 37, size=(2, 25))
    y[0, 3] = -100
    gl, ge = rng.standard_normal((2, 25)), rng.standard_normal((2, 25))
    z = x @ W.T + (b if bias else 0)
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    for chunk in (None, 7):
        lp, ent = fastxent.linear_token_logprobs(
            x, W, y, linear_bias=b, return_entropy=True, chunk_size=chunk, **opts
        )
        rlp, rent = fastxent.token_logprobs(z, y, return_entropy=True, **opts)
        np.testing.assert_allclose(lp, rlp, **tol)
        np.testing.assert_allclose(ent, rent, **tol)
        assert fastxent.linear_token_logprobs(x, W, y, linear_bias=b, **opts).shape == (2, 25)
        gx, gW, gb = fastxent.linear_token_logprobs_vjp(
            x, W, y, gl, ge, linear_bias=b, chunk_size=chunk, **opts
        )
        G = fastxent.token_logprobs_vjp(z, y, gl, ge, **opts).reshape(-1, 37).astype(np.float64)
        np.testing.assert_allclose(gx.reshape(-1, 8), G @ W, **tol)
        np.testing.assert_allclose(gW, G.T @ x.reshape(-1, 8), **tol)
        assert gx.dtype == dtype and gW.dtype == dtype
        if bias:
            np.testing.assert_allclose(gb, G.sum(0), **tol)
        else:
            assert gb is None


def test_linear_same_bits_at_every_thread_count():
    rng = np.random.default_rng(10)
    x, W = rng.standard_normal((200, 16)), rng.standard_normal((300, 16))
    y = rng.integers(0, 300, size=200)
    gl = rng.standard_normal(200)
    r1 = fastxent.linear_token_logprobs_vjp(x, W, y, gl, gl, chunk_size=64, num_threads=1)
    r3 = fastxent.linear_token_logprobs_vjp(x, W, y, gl, gl, chunk_size=64, num_threads=3)
    for a, b in zip(r1[:2], r3[:2], strict=True):
        np.testing.assert_array_equal(a, b)


def test_linear_errors():
    rng = np.random.default_rng(11)
    x, W = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        fastxent.linear_token_logprobs(x, W, np.array([0, 1, 9, 2]))
    with pytest.raises(TypeError, match="one dtype"):
        fastxent.linear_token_logprobs(x.astype(np.float32), W, np.zeros(4, int))
    with pytest.raises(ValueError, match="grad_logprobs"):
        fastxent.linear_token_logprobs_vjp(x, W, np.zeros(4, int), np.ones(2))
    with pytest.raises(ValueError, match="chunk_size"):
        fastxent.linear_token_logprobs(x, W, np.zeros(4, int), chunk_size=0)


def test_linear_half_precision_in_float32():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 9, 5)).astype(np.float16)
    W = rng.standard_normal((13, 5)).astype(np.float16)
    y = rng.integers(0, 13, size=(2, 9))
    gl = rng.standard_normal((2, 9))
    lp = fastxent.linear_token_logprobs(x, W, y)
    ref = fastxent.linear_token_logprobs(x.astype(np.float32), W.astype(np.float32), y)
    assert lp.dtype == np.float32
    np.testing.assert_array_equal(lp, ref)
    gx, gW, _ = fastxent.linear_token_logprobs_vjp(x, W, y, gl)
    rx, rW, _ = fastxent.linear_token_logprobs_vjp(
        x.astype(np.float32), W.astype(np.float32), y, gl
    )
    assert gx.dtype == gW.dtype == np.float16
    np.testing.assert_array_equal(gx, rx.astype(np.float16))
    np.testing.assert_array_equal(gW, rW.astype(np.float16))
