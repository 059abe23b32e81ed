"""fastxent.jax against jax.grad of a plain JAX reference, under jit, grad and vmap."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy
fxj = pytest.importorskip("fastxent.jax")


def reference(z, y, *, reduction="mean", weight=None, ignore_index=-100, label_smoothing=0.0):
    """Plain JAX cross-entropy with PyTorch's semantics (class indices or
    probabilities, class weights, ignore_index, label smoothing)."""
    m = z.shape[-1]
    logp = jax.nn.log_softmax(z, axis=-1)
    w = jnp.ones(m, z.dtype) if weight is None else weight
    eps = label_smoothing
    if jnp.issubdtype(y.dtype, jnp.floating):
        per = -(logp * w * ((1 - eps) * y + eps / m)).sum(-1)
        return {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    keep = y != ignore_index
    yc = jnp.where(keep, y, 0)
    nll = -jnp.take_along_axis(logp, yc[..., None], -1)[..., 0] * w[yc]
    smooth = -(logp * w).sum(-1)
    per = jnp.where(keep, (1 - eps) * nll + eps / m * smooth, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / jnp.where(keep, w[yc], 0.0).sum()


def _data(shape, seed=0, ignore=True):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    z = 3 * jax.random.normal(k1, shape)
    y = jax.random.randint(k2, shape[:-1], 0, shape[-1])
    if ignore:
        y = jnp.where(jax.random.uniform(k3, shape[:-1]) < 0.2, -100, y)
    return z, y


def _grads(f, z, reduction, seed=5):
    """Value and vector-Jacobian product with a non-uniform cotangent."""
    out, vjp = jax.vjp(f, z)
    ct = jax.random.normal(jax.random.key(seed), out.shape, out.dtype)
    return out, vjp(ct)[0]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "opts",
    [{}, {"weight": True}, {"label_smoothing": 0.2}, {"weight": True, "label_smoothing": 0.1}],
    ids=["plain", "weight", "smooth", "both"],
)
@pytest.mark.parametrize("shape", [(16, 7), (3, 5, 6)])
def test_matches_reference_under_jit(reduction, opts, shape):
    z, y = _data(shape)
    kw = dict(reduction=reduction, label_smoothing=opts.get("label_smoothing", 0.0))
    if opts.get("weight"):
        kw["weight"] = jax.random.uniform(jax.random.key(9), (shape[-1],)) + 0.5
    a, ga = jax.jit(lambda z: _grads(lambda t: fxj.cross_entropy(t, y, **kw), z, reduction))(z)
    b, gb = _grads(lambda t: reference(t, y, **kw), z, reduction)
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(ga, gb, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_probability_labels(reduction):
    z, _ = _data((10, 4))
    p = jax.nn.softmax(jax.random.normal(jax.random.key(3), (10, 4)))
    a, ga = _grads(lambda t: fxj.cross_entropy(t, p, reduction=reduction), z, reduction)
    b, gb = _grads(lambda t: reference(t, p, reduction=reduction), z, reduction)
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(ga, gb, rtol=2e-5, atol=1e-6)


def test_grad_value_and_grad_and_optax():
    optax = pytest.importorskip("optax")
    z, y = _data((32, 10), ignore=False)
    loss, g = jax.jit(jax.value_and_grad(fxj.cross_entropy))(z, y)

    def ref(t):
        return optax.softmax_cross_entropy_with_integer_labels(t, y).mean()

    np.testing.assert_allclose(loss, ref(z), rtol=1e-6)
    np.testing.assert_allclose(g, jax.grad(ref)(z), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_vmap(reduction):
    z, y = _data((4, 9, 6))  # a batch of 4 problems of 9 rows
    ours = jax.vmap(lambda t, u: fxj.cross_entropy(t, u, reduction=reduction))(z, y)
    ref = jax.vmap(lambda t, u: reference(t, u, reduction=reduction))(z, y)
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-6)
    if reduction != "none":
        g = jax.jit(jax.vmap(jax.grad(lambda t, u: fxj.cross_entropy(t, u, reduction=reduction))))
        gr = jax.vmap(jax.grad(lambda t, u: reference(t, u, reduction=reduction)))
        np.testing.assert_allclose(g(z, y), gr(z, y), rtol=2e-5, atol=1e-6)


def test_vmap_of_a_per_sample_cotangent():
    z, y = _data((3, 5, 4))
    ct = jax.random.normal(jax.random.key(1), (3, 5))

    def vjp(loss_fn):
        def one(z, y, c):
            return jax.vjp(lambda t: loss_fn(t, y, reduction="none"), z)[1](c)[0]

        return one

    ours = jax.jit(jax.vmap(vjp(fxj.cross_entropy)))(z, y, ct)
    np.testing.assert_allclose(ours, jax.vmap(vjp(reference))(z, y, ct), rtol=2e-5, atol=1e-6)


def test_pure_callback_path_of_older_jax(monkeypatch):
    # JAX without jax.experimental.buffer_callback runs the same host code
    # through jax.pure_callback (results copied, the backward a plain multiply).
    monkeypatch.setattr(fxj, "_buffer_callback", None)
    fxj._cross_entropy_fn.cache_clear()
    fxj._linear_fn.cache_clear()
    try:
        z, y = _data((7, 5))
        for reduction in ("mean", "none"):
            a, ga = _grads(
                lambda t, r=reduction: fxj.cross_entropy(t, y, reduction=r), z, reduction
            )
            b, gb = _grads(lambda t, r=reduction: reference(t, y, reduction=r), z, reduction)
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(ga, gb, rtol=2e-5, atol=1e-6)
        W = jax.random.normal(jax.random.key(2), (5, 5))
        g = jax.grad(lambda W: fxj.linear_cross_entropy(z, W, y))(W)
        np.testing.assert_allclose(
            g, jax.grad(lambda W: reference(z @ W.T, y))(W), rtol=2e-4, atol=1e-6
        )
    finally:
        fxj._cross_entropy_fn.cache_clear()
        fxj._linear_fn.cache_clear()


def test_fastxent_options_match_numpy():
    import fastxent

    z, y = _data((12, 5))
    s = jax.random.uniform(jax.random.key(4), (12,))
    kw = dict(z_loss=0.02, softcap=3.0, label_smoothing=0.1)
    loss, g = jax.value_and_grad(lambda t: fxj.cross_entropy(t, y, sample_weight=s, **kw))(z)
    ref, rg = fastxent.cross_entropy_with_grad(
        np.asarray(z), np.asarray(y), sample_weight=np.asarray(s), **kw
    )
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_allclose(g, rg, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_reference(reduction, bias):
    k = jax.random.split(jax.random.key(1), 4)
    x = jax.random.normal(k[0], (2, 7, 5))
    W = jax.random.normal(k[1], (11, 5))
    b = jax.random.normal(k[2], (11,)) if bias else None
    y = jnp.where(jax.random.uniform(k[3], (2, 7)) < 0.2, -100, jnp.arange(14).reshape(2, 7) % 11)
    w = jnp.linspace(0.5, 1.5, 11)
    kw = dict(reduction=reduction, weight=w, label_smoothing=0.1)

    def ours(x, W, b):
        return fxj.linear_cross_entropy(x, W, y, linear_bias=b, chunk_size=3, **kw)

    def ref(x, W, b):
        return reference(x @ W.T + (0 if b is None else b), y, **kw)

    args = (x, W, b)
    a, vjp_a = jax.vjp(jax.jit(ours), *args)
    r, vjp_r = jax.vjp(ref, *args)
    ct = jax.random.normal(jax.random.key(7), a.shape)
    np.testing.assert_allclose(a, r, rtol=2e-5, atol=1e-5)
    for ga, gr in zip(vjp_a(ct), vjp_r(ct), strict=True):
        if gr is None:
            assert ga is None
        else:
            np.testing.assert_allclose(ga, gr, rtol=2e-4, atol=1e-5)


def test_linear_under_vmap_and_grad():
    x = jax.random.normal(jax.random.key(0), (3, 6, 4))
    W = jax.random.normal(jax.random.key(1), (8, 4))
    y = jnp.arange(18).reshape(3, 6) % 8

    def ours(x, y):
        return fxj.linear_cross_entropy(x, W, y)

    def ref(x, y):
        return reference(x @ W.T, y)

    np.testing.assert_allclose(jax.vmap(ours)(x, y), jax.vmap(ref)(x, y), rtol=2e-5)
    np.testing.assert_allclose(
        jax.vmap(jax.grad(ours))(x, y), jax.vmap(jax.grad(ref))(x, y), rtol=2e-4, atol=1e-6
    )


def test_errors():
    z = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        fxj.cross_entropy(z, jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction"):
        fxj.cross_entropy(z, jnp.array([0, 1, 2, 0]), reduction="avg")
    with pytest.raises(TypeError, match="floating"):
        fxj.cross_entropy(jnp.zeros((4, 3), jnp.int32), jnp.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="weight must have shape"):
        fxj.cross_entropy(z, jnp.array([0, 1, 2, 0]), weight=jnp.ones(4))
    with pytest.raises(ValueError, match="linear_weight"):
        fxj.linear_cross_entropy(z, jnp.zeros((5, 2)), jnp.array([0, 1, 2, 0]))
    # A label out of range is found when the callback runs.
    with pytest.raises(jax.errors.JaxRuntimeError, match="label outside"):
        jax.block_until_ready(fxj.cross_entropy(z, jnp.array([0, 1, 3, 0])))


def test_float64_in_a_subprocess():
    # jax_enable_x64 is process-wide: it must not leak into the other tests.
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        import fastxent.jax as fxj
        z = jax.random.normal(jax.random.key(0), (9, 5), jnp.float64)
        y = jnp.array([0, 1, 2, 3, 4, -100, 1, 1, 0])
        x = jax.random.normal(jax.random.key(1), (9, 3), jnp.float64)
        W = jax.random.normal(jax.random.key(2), (5, 3), jnp.float64)

        def ref(t):
            keep = y != -100
            logp = jax.nn.log_softmax(t)
            nll = -jnp.take_along_axis(logp, jnp.where(keep, y, 0)[:, None], -1)[:, 0]
            return jnp.where(keep, nll, 0.0).sum() / keep.sum()

        loss, g = jax.jit(jax.value_and_grad(fxj.cross_entropy))(z, y)
        assert loss.dtype == jnp.float64 and g.dtype == jnp.float64, (loss.dtype, g.dtype)
        np.testing.assert_allclose(loss, ref(z), rtol=1e-13)
        np.testing.assert_allclose(g, jax.grad(ref)(z), rtol=1e-12, atol=1e-15)
        gx, gW = jax.grad(lambda x, W: fxj.linear_cross_entropy(x, W, y), (0, 1))(x, W)
        rx, rW = jax.grad(lambda x, W: ref(x @ W.T), (0, 1))(x, W)
        np.testing.assert_allclose(gx, rx, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gW, rW, rtol=1e-12, atol=1e-15)
        print("ok")
        """
    )
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr


def test_import_fastxent_does_not_import_jax():
    code = "import sys, fastxent; assert 'jax' not in sys.modules; fastxent.jax.cross_entropy"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
