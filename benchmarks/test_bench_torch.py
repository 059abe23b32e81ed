"""fastxent.torch and fastxent.jax: the frameworks' front ends against the
NumPy functions they call and against the frameworks' own losses.

Forward + backward of a mean cross-entropy, every implementation at the
default thread count (the usable cores; torch with ``set_num_threads`` to
the same), measured side by side in one run:

- group ``adapter-<n>x<m>-float32`` for 4096 x 32000 and 64 x 10:
  ``fastxent_torch`` (``fastxent.torch.cross_entropy`` on a tensor that
  requires grad, then ``backward()``), ``torch`` (``F.cross_entropy``, then
  ``backward()``) and ``fastxent_alloc`` (``fastxent.cross_entropy_with_grad``
  on the same memory, gradient allocated: what the front end calls);
- group ``adapter-linear-1024x256x32000-float32``: ``fastxent_torch_linear``
  (``fastxent.torch.linear_cross_entropy`` + ``backward()``, gradients for
  the features and the head) against ``fastxent_linear``
  (``fastxent.linear_cross_entropy_with_grad`` on the same arrays), and
  ``torch_linear`` (``F.linear_cross_entropy``); the peak of the memory
  NumPy allocates in one call (``tracemalloc``, which sees the NumPy
  buffers both fastxent paths use, not torch's) is kept in
  ``extra_info["peak_bytes"]``;
- group ``adapter-logprob-4096x32000-float32``: forward + backward of
  ``fastxent.torch.token_logprobs`` (``fastxent_torch_logprobs``, upstream
  gradient one advantage per row) against ``log_softmax(...).gather(...)``
  (``torch_logprobs``), and of ``fastxent.torch.distillation_loss``
  (``fastxent_torch_distill``, forward KL, ``"batchmean"``) against
  ``F.kl_div(F.log_softmax(s), F.log_softmax(t), log_target=True)``
  (``torch_distill``);
- group ``adapter-jax-4096x32000-float32``: ``jit(value_and_grad(...))`` of
  ``fastxent.jax.cross_entropy`` against
  ``optax.softmax_cross_entropy_with_integer_labels(...).mean()`` and the
  plain ``jax.nn.log_softmax`` loss (``jax_nn``).

``python benchmarks/test_bench_torch.py bench.json`` prints each group's
medians divided by its references' (``torch``, ``fastxent_alloc``,
``fastxent_linear``, ``torch_logprobs``, ``torch_distill``, ``optax``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tracemalloc

import numpy as np
import pytest
from _common import measure

import fastxent
from fastxent.bench import LOGIT_SCALE, make_case

torch = pytest.importorskip("torch")
F = torch.nn.functional
fxt = pytest.importorskip("fastxent.torch")

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
SHAPES = [(4096, 32000), (64, 10)]
LINEAR = (1024, 256, 32000)


@pytest.fixture(scope="module", autouse=True)
def _torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(CORES)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=SHAPES, ids=[f"{n}x{m}" for n, m in SHAPES])
def logits(request):
    n, m = request.param
    return make_case(n, m, "float32")


def _group(z):
    return f"adapter-{z.shape[0]}x{z.shape[1]}-float32"


def _measure(benchmark, fn, impl, z, group=None, **extra):
    return measure(
        benchmark,
        fn,
        case=f"{z.shape[0]}x{z.shape[1]}",
        dtype=z.dtype,
        nbytes=z.nbytes,
        threads=CORES,
        impl=impl,
        group=group or _group(z),
        **extra,
    )


@pytest.mark.parametrize("impl", ["fastxent_torch", "torch", "fastxent_alloc"])
def test_cross_entropy(benchmark, logits, impl):
    z, y = logits
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)

    def framework(loss_fn):
        def fwd_bwd():
            leaf = zt.detach().requires_grad_(True)
            loss = loss_fn(leaf, yt)
            loss.backward()
            return loss, leaf.grad

        return fwd_bwd

    fn = {
        "fastxent_torch": framework(fxt.cross_entropy),
        "torch": framework(F.cross_entropy),
        "fastxent_alloc": lambda: fastxent.cross_entropy_with_grad(z, y),
    }[impl]
    loss, grad = _measure(benchmark, fn, impl, z)
    assert tuple(grad.shape) == z.shape and np.isfinite(float(loss))


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def linear():
    n, d, V = LINEAR
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, d), dtype=np.float32)
    W = rng.standard_normal((V, d), dtype=np.float32) / np.float32(np.sqrt(d))
    y = rng.integers(0, V, n)
    return x, W, y


@pytest.mark.parametrize("impl", ["fastxent_torch_linear", "fastxent_linear", "torch_linear"])
def test_linear_cross_entropy(benchmark, linear, impl):
    pytest.importorskip("scipy")
    x, W, y = linear
    xt, Wt, yt = torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(y)

    def framework(loss_fn):
        def fwd_bwd():
            xl = xt.detach().requires_grad_(True)
            Wl = Wt.detach().requires_grad_(True)
            loss_fn(xl, Wl, yt).backward()
            return xl.grad, Wl.grad

        return fwd_bwd

    fn = {
        "fastxent_torch_linear": framework(fxt.linear_cross_entropy),
        "torch_linear": framework(F.linear_cross_entropy),
        "fastxent_linear": lambda: fastxent.linear_cross_entropy_with_grad(x, W, y)[1:3],
    }[impl]
    fn()  # first-use costs (the operators' registration) are not the call's memory
    peak = _peak_bytes(fn)
    n, d, V = LINEAR
    gx, gW = measure(
        benchmark,
        fn,
        case=f"{n}x{d}x{V}",
        dtype="float32",
        nbytes=n * V * 4,  # the logits never formed
        threads=CORES,
        impl=impl,
        group=f"adapter-linear-{n}x{d}x{V}-float32",
        peak_bytes=peak,
    )
    assert tuple(gx.shape) == x.shape and tuple(gW.shape) == W.shape


@pytest.mark.parametrize(
    "impl", ["fastxent_torch_logprobs", "torch_logprobs", "fastxent_torch_distill", "torch_distill"]
)
def test_logprob_and_distillation(benchmark, impl):
    n, m = SHAPES[0]
    rng = np.random.default_rng(2)
    zt = torch.from_numpy(rng.standard_normal((n, m), dtype=np.float32) * LOGIT_SCALE)
    teacher = torch.from_numpy(rng.standard_normal((n, m), dtype=np.float32) * LOGIT_SCALE)
    yt = torch.from_numpy(rng.integers(0, m, n))
    adv = torch.from_numpy(rng.standard_normal(n, dtype=np.float32))

    def torch_logprobs(z):
        return torch.log_softmax(z, -1).gather(-1, yt[:, None])[:, 0]

    def torch_distill(z):
        logq, logp = F.log_softmax(z, -1), F.log_softmax(teacher, -1)
        return F.kl_div(logq, logp, reduction="batchmean", log_target=True)

    loss_fn = {
        "fastxent_torch_logprobs": lambda z: (fxt.token_logprobs(z, yt) * adv).sum(),
        "torch_logprobs": lambda z: (torch_logprobs(z) * adv).sum(),
        "fastxent_torch_distill": lambda z: fxt.distillation_loss(z, teacher),
        "torch_distill": torch_distill,
    }[impl]

    def fwd_bwd():
        leaf = zt.detach().requires_grad_(True)
        loss = loss_fn(leaf)
        loss.backward()
        return loss, leaf.grad

    loss, grad = _measure(
        benchmark, fwd_bwd, impl, zt.numpy(), group=f"adapter-logprob-{n}x{m}-float32"
    )
    assert tuple(grad.shape) == (n, m) and np.isfinite(float(loss))


@pytest.mark.parametrize("impl", ["fastxent_jax", "optax", "jax_nn"])
def test_jax(benchmark, impl):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    if impl == "fastxent_jax":
        from fastxent.jax import cross_entropy as loss_fn
    elif impl == "optax":
        optax = pytest.importorskip("optax")

        def loss_fn(z, y):
            return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
    else:

        def loss_fn(z, y):
            logp = jax.nn.log_softmax(z, axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))

    n, m = SHAPES[0]
    z, y = make_case(n, m, "float32")
    zj = jax.device_put(z)
    yj = jax.device_put(y.astype(np.int32))
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))

    def call():
        return jax.block_until_ready(value_and_grad(zj, yj))

    call()  # compile outside the warm-up that sizes the measurement
    loss, g = _measure(benchmark, call, impl, z, group=f"adapter-jax-{n}x{m}-float32")
    assert g.shape == z.shape and np.isfinite(float(loss))


REFERENCES = (
    "torch",
    "fastxent_alloc",
    "fastxent_linear",
    "torch_logprobs",
    "torch_distill",
    "optax",
)


def report(path):
    """Each group's medians (ms) and their ratios to the group's references."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    groups = {}
    for b in data["benchmarks"]:
        if b["group"].startswith("adapter-"):
            groups.setdefault(b["group"], {})[b["extra_info"]["impl"]] = b
    for group, impls in sorted(groups.items()):
        print(f"{group}:")
        med = {k: statistics.median(b["stats"]["data"]) for k, b in impls.items()}
        for impl, t in med.items():
            ratios = ", ".join(
                f"{t / med[r]:.2f}x {r}" for r in REFERENCES if r in med and r != impl
            )
            peak = impls[impl]["extra_info"].get("peak_bytes")
            mem = "" if peak is None else f", peak {peak / 2**20:.0f} MiB (tracemalloc)"
            print(f"  {impl:22s} {t * 1e3:9.3f} ms  ({ratios}){mem}")


if __name__ == "__main__":
    report(sys.argv[1])
