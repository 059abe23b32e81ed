"""fastxent.dask.token_logprobs and distillation_loss_with_grad against the
in-memory functions: the same bits per row, the reductions to float64
rounding, errors at graph-build time (options) or with the whole target's
position (labels)."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
import fastxent  # noqa: E402
import fastxent.dask  # noqa: E402

SYNC = {"scheduler": "synchronous"}


def _data(dtype=np.float64):
    rng = np.random.default_rng(0)
    s = rng.standard_normal((3, 50, 12)).astype(dtype)
    t = rng.standard_normal((3, 50, 12)).astype(dtype)
    y = rng.integers(0, 12, (3, 50))
    y[0, :5] = -100
    return s, t, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", [{}, {"temperature": 1.7, "softcap": 4.0}])
def test_token_logprobs_blocks(dtype, opts):
    s, _, y = _data(dtype)
    lp, ent = fastxent.dask.token_logprobs(
        da.from_array(s, chunks=(1, 20, 12)), y, return_entropy=True, **opts
    )
    assert isinstance(lp, da.Array) and lp.shape == y.shape and lp.dtype == dtype
    rlp, rent = fastxent.token_logprobs(s, y, return_entropy=True, **opts)
    with dask.config.set(**SYNC):
        np.testing.assert_array_equal(lp.compute(), rlp)
        np.testing.assert_array_equal(ent.compute(), rent)
        lp_only = fastxent.dask.token_logprobs(da.from_array(s, chunks=(2, 25, 12)), y, **opts)
        np.testing.assert_array_equal(lp_only.compute(), rlp)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("with_target", [False, True])
def test_distillation_blocks(divergence, reduction, with_target):
    s, t, y = _data()
    kw = dict(divergence=divergence, reduction=reduction, temperature=1.5, beta=0.3)
    if with_target:
        kw["target"] = y
    loss, grad = fastxent.dask.distillation_loss_with_grad(
        da.from_array(s, chunks=(1, 20, 12)), t, **kw
    )
    rloss, rgrad = fastxent.distillation_loss_with_grad(s, t, **kw)
    with dask.config.set(**SYNC):
        np.testing.assert_array_equal(grad.compute(), rgrad)
        np.testing.assert_allclose(loss.compute(), rloss, rtol=1e-14)


def test_errors():
    s, t, y = _data()
    ds = da.from_array(s, chunks=(1, 20, 12))
    with pytest.raises(ValueError, match="divergence"):
        fastxent.dask.distillation_loss_with_grad(ds, t, divergence="kl")
    with pytest.raises(ValueError, match="temperature"):
        fastxent.dask.token_logprobs(ds, y, temperature=0)
    with pytest.raises(TypeError, match="integer"):
        fastxent.dask.token_logprobs(ds, y.astype(float))
    with pytest.raises(ValueError, match="teacher_logits must have shape"):
        fastxent.dask.distillation_loss_with_grad(ds, t[:2])
    bad = y.copy()
    bad[2, 30] = 12
    lp = fastxent.dask.token_logprobs(ds, bad)
    with dask.config.set(**SYNC), pytest.raises(ValueError, match="flat position 130"):
        lp.compute()
