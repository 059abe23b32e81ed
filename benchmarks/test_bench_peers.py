"""Peer benchmarks: mean cross-entropy loss + gradient w.r.t. the logits.

Each peer lands in the same group as fastxent's core benchmarks
(``"<case>-<dtype>-<T>T"``), so ``report.py`` prints speed-ups measured in one
run.  Peers that are not installed are skipped with a note.

- ``torch``: ``F.cross_entropy(zt, yt)`` then ``loss.backward()`` on
  ``zt = torch.from_numpy(z).requires_grad_()`` (no copy in; torch allocates
  the gradient), threads via ``torch.set_num_threads``.
- ``sklearn``: ``HalfMultinomialLoss(n_classes=m).loss_gradient`` with float
  labels of the logits' dtype, preallocated ``loss_out``/``gradient_out`` and
  ``n_threads``, then the mean of the per-sample losses.  Its gradient is per
  sample (not divided by n): one scaling pass fewer than the others do.
- ``jax``: ``jit(value_and_grad(mean(-take_along_axis(log_softmax(z), y))))``
  on arrays already on the device, ``block_until_ready`` on the result.
  XLA's CPU thread pool is sized at start-up, so JAX is measured only in the
  group whose thread count equals the usable cores.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from _common import measure

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

try:
    from sklearn._loss.loss import HalfMultinomialLoss
except ImportError:  # pragma: no cover
    HalfMultinomialLoss = None

try:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # float64 inputs stay float64
except ImportError:  # pragma: no cover
    jax = None

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.mark.skipif(torch is None, reason="torch not installed (pip install torch==2.13.0)")
def test_torch(benchmark, case, threads):
    yt = torch.from_numpy(case.y)
    z = case.z

    def fwd_bwd():
        zt = torch.from_numpy(z).requires_grad_(True)
        loss = F.cross_entropy(zt, yt)
        loss.backward()
        return loss, zt.grad

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        measure(
            benchmark, fwd_bwd, case=case, impl="torch", threads=threads, version=torch.__version__
        )
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(HalfMultinomialLoss is None, reason="scikit-learn not installed")
def test_sklearn(benchmark, case, threads):
    import sklearn

    loss_fn = HalfMultinomialLoss(n_classes=case.m)
    z = case.z
    y = case.y.astype(case.dtype)
    loss_out = np.empty(case.n, dtype=case.dtype)
    grad_out = case.out

    def loss_grad():
        losses, grad = loss_fn.loss_gradient(
            y_true=y, raw_prediction=z, loss_out=loss_out, gradient_out=grad_out, n_threads=threads
        )
        return losses.mean(), grad

    measure(
        benchmark,
        loss_grad,
        case=case,
        impl="sklearn",
        threads=threads,
        version=sklearn.__version__,
    )


@pytest.mark.skipif(jax is None, reason="jax not installed (pip install jax jaxlib)")
@pytest.mark.bench_when(lambda p: p["threads"] == CORES)
def test_jax(benchmark, case, threads):
    def mean_xent(z, y):
        logp = jax.nn.log_softmax(z, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))

    value_and_grad = jax.jit(jax.value_and_grad(mean_xent))
    zj = jax.device_put(case.z)
    yj = jax.device_put(case.y)
    assert zj.dtype == case.dtype

    def loss_grad():
        return jax.block_until_ready(value_and_grad(zj, yj))

    loss_grad()  # compile outside the warm-up that sizes the measurement
    measure(benchmark, loss_grad, case=case, impl="jax", threads=threads, version=jax.__version__)
