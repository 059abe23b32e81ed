"""fastxent.torch against torch.nn.functional: values, autograd, compile, opcheck."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
fxt = pytest.importorskip("fastxent.torch")

import fastxent  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}
OPS = (
    torch.ops.fastxent.cross_entropy.default,
    torch.ops.fastxent.linear_cross_entropy.default,
    torch.ops.fastxent.linear_cross_entropy_backward.default,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _close(a, b, dtype=torch.float64):
    torch.testing.assert_close(a, b, **TOL[dtype])


def _labels(shape, C, ignore=None, p=0.2):
    y = torch.randint(0, C, shape)
    if ignore is not None:
        y[torch.rand(shape) < p] = ignore
    return y


def _both(fn_a, fn_b, inputs, upstream_like=None):
    """Values and gradients of ``fn_a`` and ``fn_b`` at the same inputs, with
    a non-uniform upstream gradient (one drawn value per loss element)."""
    out = []
    go = None
    for fn in (fn_a, fn_b):
        xs = [t.detach().clone().requires_grad_() for t in inputs]
        loss = fn(*xs)
        if go is None:
            go = torch.randn_like(loss) if upstream_like is None else upstream_like(loss)
        grads = torch.autograd.grad(loss, xs, go)
        out.append((loss.detach(), grads))
    return out


# ---------------------------------------------------------------------------
# cross_entropy against F.cross_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "shape", [(7,), (16, 7), (4, 5, 3), (2, 3, 4, 5)], ids=["C", "NC", "NCd", "NCdd"]
)
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"weight": True},
        {"ignore_index": 2},
        {"label_smoothing": 0.15},
        {"weight": True, "ignore_index": 1, "label_smoothing": 0.3},
    ],
    ids=["plain", "weight", "ignore", "smooth", "all"],
)
def test_cross_entropy_matches_torch(dtype, reduction, shape, opts):
    C = shape[0] if len(shape) == 1 else shape[1]
    batch = shape[:0] if len(shape) == 1 else shape[:1] + shape[2:]
    z = torch.randn(shape, dtype=dtype) * 3
    ignore = opts.get("ignore_index", -100)
    y = _labels(batch, C, ignore if "ignore_index" in opts else None)
    kw = dict(reduction=reduction, label_smoothing=opts.get("label_smoothing", 0.0))
    if "ignore_index" in opts:
        kw["ignore_index"] = ignore
    w = torch.rand(C, dtype=dtype) + 0.5 if opts.get("weight") else None
    (a, ga), (b, gb) = _both(
        lambda t: fxt.cross_entropy(t, y, w, **kw), lambda t: F.cross_entropy(t, y, w, **kw), [z]
    )
    assert a.shape == b.shape and a.dtype == b.dtype
    _close(a, b, dtype)
    _close(ga[0], gb[0], dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(9, 6), (3, 6, 4)])
def test_probability_targets_match_torch(reduction, shape):
    z = torch.randn(shape, dtype=torch.float64)
    p = torch.softmax(torch.randn(shape, dtype=torch.float64), dim=1)
    w = torch.rand(6, dtype=torch.float64) + 0.5
    kw = dict(reduction=reduction, label_smoothing=0.2)
    (a, ga), (b, gb) = _both(
        lambda t: fxt.cross_entropy(t, p, w, **kw), lambda t: F.cross_entropy(t, p, w, **kw), [z]
    )
    _close(a, b)
    _close(ga[0], gb[0])


def test_reduction_none_uses_each_upstream_value():
    # The bug most reported in fused-loss libraries: a non-uniform upstream
    # gradient under reduction="none" (here also zeros and negatives).
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    go = torch.tensor([1.0, -2.0, 0.0, 3.5, 0.25, 10.0], dtype=torch.float64)
    (g,) = torch.autograd.grad(fxt.cross_entropy(z, y, reduction="none"), z, go)
    (ref,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="none"), z, go)
    _close(g, ref)
    assert torch.all(g[2] == 0)
    # A scaled mean (gradient accumulation) and a loss used twice.
    loss = fxt.cross_entropy(z, y)
    (g,) = torch.autograd.grad(loss / 4 + 3 * loss, z)
    (ref,) = torch.autograd.grad(F.cross_entropy(z, y) * 3.25, z)
    _close(g, ref)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fastxent_options_match_numpy(reduction):
    z = torch.randn(3, 8, 5, dtype=torch.float64)  # classes on dim 1
    y = _labels((3, 5), 8, -100)
    s = torch.rand(3, 5, dtype=torch.float64)
    kw = dict(reduction=reduction, z_loss=0.01, softcap=4.0, label_smoothing=0.1)
    zt = z.clone().requires_grad_()
    loss = fxt.cross_entropy(zt, y, sample_weight=s, **kw)
    go = torch.randn_like(loss)
    loss.backward(go)
    zn = np.moveaxis(z.numpy(), 1, -1)
    ref, g = fastxent.cross_entropy_with_grad(zn, y.numpy(), sample_weight=s.numpy(), **kw)
    g = g * (go.numpy()[..., None] if reduction == "none" else float(go))
    np.testing.assert_allclose(loss.detach().numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(zt.grad.numpy(), np.moveaxis(g, -1, 1), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_float64(reduction):
    z = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 5, -100, 2, 2])
    w = torch.rand(6, dtype=torch.float64) + 0.5
    for kw in ({}, dict(label_smoothing=0.2, z_loss=0.03, softcap=2.5)):
        assert torch.autograd.gradcheck(
            lambda t, kw=kw: fxt.cross_entropy(t, y, w, reduction=reduction, **kw), (z,)
        )
    z3 = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(torch.randn(2, 4, 3, dtype=torch.float64), dim=1)
    assert torch.autograd.gradcheck(lambda t: fxt.cross_entropy(t, p, reduction=reduction), (z3,))


def test_gradcheck_linear_float64():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 4, -100, 1, 1, 3])
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda x, W, b, r=reduction: fxt.linear_cross_entropy(
                x, W, y, linear_bias=b, reduction=r, label_smoothing=0.1, chunk_size=4
            ),
            (x, W, b),
        )


def test_backward_twice_and_after_the_gradient_is_modified():
    # The first backward hands out the forward's gradient itself; later ones
    # (retain_graph=True) compute it again.
    z = torch.randn(8, 5, requires_grad=True)
    y = _labels((8,), 5)
    loss = fxt.cross_entropy(z, y)
    loss.backward(retain_graph=True)
    g1 = z.grad.clone()
    loss.backward(retain_graph=True)
    z.grad.mul_(0.0)
    (loss * 2).backward()
    _close(z.grad, 2 * g1, torch.float32)
    _close(g1, torch.autograd.grad(F.cross_entropy(z, y), z)[0], torch.float32)


def test_zero_copy(monkeypatch):
    # The kernel reads the tensor's memory and writes the gradient into the
    # memory of the tensor that becomes z.grad.
    seen = {}
    real = fxt._loss.run_spec

    def spy(spec, z, *args, **kw):
        seen["z"] = z.__array_interface__["data"][0]
        losses, g, total, denom = real(spec, z, *args, **kw)
        seen["out"] = g.__array_interface__["data"][0]
        return losses, g, total, denom

    monkeypatch.setattr(fxt._loss, "run_spec", spy)
    z = torch.randn(64, 10, requires_grad=True)
    fxt.cross_entropy(z, _labels((64,), 10)).backward()
    assert seen["z"] == z.data_ptr()
    assert seen["out"] == z.grad.data_ptr()


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_backward_does_no_full_size_work(scale):
    # loss.backward() returns the forward's gradient as it is; a scaled loss
    # multiplies it in place.  No zeros for the gradient output, no copy.
    z = torch.randn(64, 10, requires_grad=True)
    loss = fxt.cross_entropy(z, _labels((64,), 10)) * scale
    with torch.profiler.profile(record_shapes=True) as prof:
        loss.backward()
    full = [
        (e.name, e.input_shapes)
        for e in prof.events()
        if e.name.startswith("aten::") and [64, 10] in e.input_shapes and e.name != "aten::detach"
    ]
    assert [name for name, _ in full] == ([] if scale == 1.0 else ["aten::mul_"]), full


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "no_requires_grad"])
def test_no_gradient_computed_without_grad(monkeypatch, mode):
    real = fxt._loss.run_spec

    def no_grad_wanted(spec, z, reduction, want_grad, *args, **kwargs):
        assert not want_grad, "a gradient was computed"
        return real(spec, z, reduction, want_grad, *args, **kwargs)

    monkeypatch.setattr(fxt._loss, "run_spec", no_grad_wanted)
    z = torch.randn(4, 3, requires_grad=mode != "no_requires_grad")
    y = torch.tensor([0, 1, 2, 0])
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode)
    if ctx is None:
        loss = fxt.cross_entropy(z, y)
    else:
        with ctx():
            loss = fxt.cross_entropy(z, y)
    assert not loss.requires_grad
    _close(loss, F.cross_entropy(z, y).detach(), torch.float32)


def test_non_contiguous_input():
    base = torch.randn(12, 14, dtype=torch.float64)
    for z in (base[:7, ::2], base.t()):  # strided columns, a transposed view
        z.requires_grad_()
        assert not z.is_contiguous()
        y = _labels(z.shape[:1], z.shape[1])
        go = torch.randn(z.shape[0], dtype=torch.float64)
        loss = fxt.cross_entropy(z, y, reduction="none")
        (g,) = torch.autograd.grad(loss, z, go)
        ref = F.cross_entropy(z, y, reduction="none")
        _close(loss, ref)
        _close(g, torch.autograd.grad(ref, z, go)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    z = torch.randn(32, 11).to(dtype).requires_grad_()
    y = _labels((32,), 11, -100)
    loss = fxt.cross_entropy(z, y, reduction="sum")
    loss.backward()
    assert loss.dtype == dtype and z.grad.dtype == dtype
    z32 = z.detach().float().requires_grad_()
    ref = F.cross_entropy(z32, y, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss.float(), ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(z.grad.float(), z32.grad, rtol=1e-2, atol=1e-2)


def test_bfloat16_without_ml_dtypes_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(ImportError, match="ml_dtypes"):
        fxt.cross_entropy(torch.zeros(2, 3, dtype=torch.bfloat16), torch.tensor([0, 1]))


def test_errors_before_anything_is_written():
    z = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match="label outside"):
        fxt.cross_entropy(z, torch.tensor([0, 1, 3, 0]))
    assert z.grad is None
    with pytest.raises(ValueError, match="CPU"):
        fxt.cross_entropy(torch.zeros(4, 3, device="meta"), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        fxt.cross_entropy(z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="probability targets"):
        fxt.cross_entropy(z, torch.rand(4, 4))
    with pytest.raises(TypeError, match="float32, float64"):
        fxt.cross_entropy(torch.zeros(4, 3, dtype=torch.int64), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        fxt.cross_entropy(np.zeros((4, 3)), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="reduction"):
        fxt.cross_entropy(z, torch.tensor([0, 1, 2, 0]), reduction="avg")
    with pytest.raises(ValueError, match="weight must have shape"):
        fxt.cross_entropy(z, torch.tensor([0, 1, 2, 0]), torch.ones(4))
    with pytest.raises(RuntimeError, match="weight"):
        fxt.cross_entropy(z, torch.tensor([0, 1, 2, 0]), torch.ones(3, requires_grad=True))
    with pytest.raises(RuntimeError, match="target"):
        fxt.cross_entropy(z, torch.rand(4, 3, requires_grad=True))
    with pytest.raises(ValueError, match="label_smoothing"):
        fxt.cross_entropy(z, torch.tensor([0, 1, 2, 0]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="0-d"):
        fxt.cross_entropy(torch.tensor(1.0), torch.tensor(0))
    x, W = torch.randn(4, 3), torch.randn(5, 2)
    with pytest.raises(ValueError, match="linear_weight"):
        fxt.linear_cross_entropy(x, W, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="label outside"):
        fxt.linear_cross_entropy(x, torch.randn(5, 3), torch.tensor([0, 1, 7, 0]))


def test_cross_entropy_loss_module():
    w = torch.rand(5) + 0.5
    ours = fxt.CrossEntropyLoss(w, ignore_index=0, label_smoothing=0.1)
    theirs = torch.nn.CrossEntropyLoss(w, ignore_index=0, label_smoothing=0.1)
    z = torch.randn(10, 5)
    y = _labels((10,), 5)
    (a, ga), (b, gb) = _both(lambda t: ours(t, y), lambda t: theirs(t, y), [z])
    _close(a, b, torch.float32)
    _close(ga[0], gb[0], torch.float32)
    assert "weight" in ours.state_dict()
    assert "label_smoothing=0.1" in repr(ours)
    with pytest.raises(ValueError, match="reduction"):
        fxt.CrossEntropyLoss(reduction="avg")


# ---------------------------------------------------------------------------
# linear_cross_entropy


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "opts",
    [{}, {"weight": True, "ignore_index": 3, "label_smoothing": 0.1}],
    ids=["plain", "options"],
)
def test_linear_matches_torch(reduction, bias, opts):
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    W = torch.randn(11, 6, dtype=torch.float64)
    b = torch.randn(11, dtype=torch.float64)
    y = _labels((3, 7), 11, 3 if opts else None)
    kw = dict(reduction=reduction, label_smoothing=opts.get("label_smoothing", 0.0))
    if opts:
        kw["ignore_index"] = 3
        kw["weight"] = torch.rand(11, dtype=torch.float64) + 0.5
    inputs = [x, W, b] if bias else [x, W]

    def ours(x, W, b=None):
        return fxt.linear_cross_entropy(x, W, y, linear_bias=b, chunk_size=5, **kw)

    def theirs(x, W, b=None):
        # torch's own takes 1-d or 2-d input only
        loss = F.linear_cross_entropy(x.reshape(-1, 6), W, y.reshape(-1), linear_bias=b, **kw)
        return loss.reshape(3, 7) if reduction == "none" else loss

    (a, ga), (r, gr) = _both(ours, theirs, inputs)
    _close(a, r)
    for g, h in zip(ga, gr, strict=True):
        _close(g, h)


def test_linear_probability_targets_and_frozen_head():
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    W = torch.randn(6, 4, dtype=torch.float64)  # frozen: no gradient asked
    p = torch.softmax(torch.randn(9, 6, dtype=torch.float64), -1)
    loss = fxt.linear_cross_entropy(x, W, p)
    (g,) = torch.autograd.grad(loss, x)
    x2 = x.detach().requires_grad_()
    (ref,) = torch.autograd.grad(F.cross_entropy(x2 @ W.T, p), x2)
    _close(g, ref)
    with torch.no_grad():
        _close(fxt.linear_cross_entropy(x, W, p), F.cross_entropy(x @ W.T, p))


def test_linear_backward_twice():
    x = torch.randn(5, 3, requires_grad=True)
    W = torch.randn(4, 3, requires_grad=True)
    y = _labels((5,), 4)
    loss = fxt.linear_cross_entropy(x, W, y)
    g1 = torch.autograd.grad(loss, (x, W), retain_graph=True)
    g2 = torch.autograd.grad(loss, (x, W))
    for a, b in zip(g1, g2, strict=True):
        _close(a, b, torch.float32)


# ---------------------------------------------------------------------------
# torch.library registration, torch.compile


def _opcheck_cases():
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 4, -100, 1, 2, 3])
    p = torch.softmax(torch.randn(6, 5, dtype=torch.float64), -1)
    w = torch.rand(5, dtype=torch.float64)
    s = torch.rand(6, dtype=torch.float64)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ce, lin, linb = OPS
    cases = []
    for red in ("mean", "sum", "none"):
        cases.append((ce, (z, y, w, s, -100, red, 0.1, 0.01, 3.0, True)))
        cases.append((ce, (z, p, None, None, -100, red, 0.0, 0.0, None, True)))
        cases.append((lin, (x, W, y, b, w, s, -100, red, 0.1, 0.0, None, 4, red != "none", True)))
    cases.append((ce, (z.detach(), y, None, None, -100, "mean", 0.0, 0.0, None, False)))
    cases.append((lin, (x, W, y, None, None, None, -100, "mean", 0.0, 0.0, None, None, True, True)))
    g = torch.randn(6, dtype=torch.float64)
    xd, Wd, bd = x.detach(), W.detach(), b.detach()
    cases.append((linb, (xd, Wd, y, bd, w, s, g, -100, 0.1, 0.0, None, 4, True)))
    cases.append((linb, (xd, Wd, y, None, None, None, g, -100, 0.0, 0.0, None, None, False)))
    return cases


@pytest.mark.parametrize("case", range(len(_opcheck_cases())))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_every_op_is_opchecked():
    assert {op for op, _ in _opcheck_cases()} == set(OPS)


def _compiled_step(backend, fn, reduction):
    z = torch.randn(8, 6, 3, requires_grad=True)
    y = _labels((8, 3), 6, -100)
    x = torch.randn(8, 5, requires_grad=True)
    W = torch.randn(6, 5, requires_grad=True)
    yl = _labels((8,), 6)

    def step(z, x, W):
        a = fn.cross_entropy(z, y, reduction=reduction, label_smoothing=0.1)
        c = fn.linear_cross_entropy(x, W, yl, reduction=reduction)
        return (a.sum() + 2 * c.sum()) * 0.5

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    out = compiled(z, x, W)
    grads = torch.autograd.grad(out, (z, x, W))
    ref = step(z, x, W) if fn is F else None
    return out, grads, ref


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, reduction):
    if backend == "inductor":
        pytest.importorskip("torch._inductor")
    out, grads, _ = _compiled_step(backend, fxt, reduction)
    torch.manual_seed(0)
    ref, ref_grads, _ = _compiled_step("eager", F, reduction)
    _close(out, ref, torch.float32)
    for g, h in zip(grads, ref_grads, strict=True):
        _close(g, h, torch.float32)


def test_fake_tensors_go_through_the_operator():
    # Under a dispatch mode (here fake tensors, as in export and tracing) the
    # registered operator and its fake kernel run, not the eager shortcut.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        z = torch.empty(5, 4, 3, requires_grad=True)
        y = torch.zeros(5, 3, dtype=torch.long)
        loss = fxt.cross_entropy(z, y, reduction="none")
        assert loss.shape == (5, 3)
        loss.sum().backward()
        assert z.grad.shape == z.shape
        x, W = torch.empty(6, 2, requires_grad=True), torch.empty(7, 2, requires_grad=True)
        assert fxt.linear_cross_entropy(x, W, torch.zeros(6, dtype=torch.long)).shape == ()


def test_training_loop_matches_torch():
    def train(loss_fn):
        torch.manual_seed(1)
        model = torch.nn.Sequential(
            torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 7)
        ).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        gen = torch.Generator().manual_seed(2)
        for _ in range(25):
            x = torch.randn(64, 10, dtype=torch.float64, generator=gen)
            y = torch.randint(0, 7, (64,), generator=gen)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        return [p.detach() for p in model.parameters()]

    ours = train(lambda z, y: fxt.cross_entropy(z, y, label_smoothing=0.05))
    theirs = train(lambda z, y: F.cross_entropy(z, y, label_smoothing=0.05))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_import_fastxent_does_not_import_torch():
    code = "import sys, fastxent; assert 'torch' not in sys.modules; fastxent.torch.cross_entropy"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
