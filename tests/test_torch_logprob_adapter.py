"""fastxent.torch's token_logprobs, linear_token_logprobs, distillation_loss
and linear_distillation_loss against PyTorch autograd of the plain formulas
(log_softmax + gather, the entropy, F.kl_div with log_target=True, the
generalised JSD), gradcheck, opcheck and torch.compile.

(test_torch_logprob.py checks the NumPy functions against stored PyTorch
values, without PyTorch.)
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
fxt = pytest.importorskip("fastxent.torch")

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}
DIVERGENCES = ["forward_kl", "reverse_kl", "jsd"]
REDUCTIONS = ["batchmean", "sum", "none"]
OPS = (
    torch.ops.fastxent.token_logprobs.default,
    torch.ops.fastxent.token_logprobs_backward.default,
    torch.ops.fastxent.linear_token_logprobs.default,
    torch.ops.fastxent.linear_token_logprobs_backward.default,
    torch.ops.fastxent.distillation_loss.default,
    torch.ops.fastxent.linear_distillation_loss.default,
    torch.ops.fastxent.linear_distillation_loss_backward.default,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _close(a, b, dtype=torch.float64):
    torch.testing.assert_close(a, b, **TOL[dtype])


def _labels(shape, C, ignore=-100, p=0.25):
    y = torch.randint(0, C, shape)
    if ignore is not None:
        y[torch.rand(shape) < p] = ignore
    return y


# ---------------------------------------------------------------------------
# The plain formulas, differentiated by torch


def ref_logprobs(z, y, temperature=1.0, softcap=None, ignore_index=-100):
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    logp = torch.log_softmax(z / temperature, -1)
    keep = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index
    lp = logp.gather(-1, torch.where(keep, y, 0).unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    zero = torch.zeros((), dtype=z.dtype)
    return torch.where(keep, lp, zero), torch.where(keep, ent, zero)


def ref_divergence(
    s, t, divergence="forward_kl", beta=0.5, temperature=1.0, reduction="batchmean", target=None
):
    ls = F.log_softmax(s / temperature, -1)
    lt = F.log_softmax(t / temperature, -1)
    if divergence == "forward_kl":
        rows = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    elif divergence == "reverse_kl":
        rows = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)
    else:
        P, Q = lt.exp(), ls.exp()
        lm = torch.log(beta * P + (1 - beta) * Q)
        rows = beta * (P * (lt - lm)).sum(-1) + (1 - beta) * (Q * (ls - lm)).sum(-1)
    keep = torch.ones(rows.shape, dtype=torch.bool) if target is None else target != -100
    rows = torch.where(keep, rows, torch.zeros((), dtype=rows.dtype))
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / keep.sum()


def _grads(fn, inputs, upstream):
    """Value and gradients of ``fn`` (one output or a tuple) at fresh leaf
    copies of ``inputs`` (None entries stay None), for ``upstream`` (one
    tensor per output; None: that output takes no part)."""
    xs = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*xs)
    outs = out if isinstance(out, tuple) else (out,)
    pairs = [(o, g) for o, g in zip(outs, upstream, strict=True) if g is not None]
    leaves = [x for x in xs if x is not None]
    grads = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs])
    return tuple(o.detach() for o in outs), grads


def _compare(fn_a, fn_b, inputs, upstream, dtype=torch.float64):
    (va, ga), (vb, gb) = _grads(fn_a, inputs, upstream), _grads(fn_b, inputs, upstream)
    for a, b in zip(va + ga, vb + gb, strict=True):
        _close(a, b, dtype)


# ---------------------------------------------------------------------------
# token_logprobs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(7,), (16, 7), (2, 5, 9)], ids=["C", "NC", "BTC"])
@pytest.mark.parametrize(
    "opts",
    [{}, {"temperature": 0.7}, {"softcap": 2.5}, {"temperature": 1.6, "softcap": 4.0}],
    ids=["plain", "temperature", "softcap", "both"],
)
@pytest.mark.parametrize("ignore_index", [-100, 3, None])
def test_token_logprobs_match_torch(dtype, shape, opts, ignore_index):
    z = torch.randn(shape, dtype=dtype) * 3
    y = _labels(shape[:-1], shape[-1], ignore_index)
    gl, ge = torch.randn(shape[:-1], dtype=dtype), torch.randn(shape[:-1], dtype=dtype)

    def ours(z):
        return fxt.token_logprobs(z, y, ignore_index=ignore_index, return_entropy=True, **opts)

    def ref(z):
        return ref_logprobs(z, y, ignore_index=ignore_index, **opts)

    _compare(ours, ref, (z,), (gl, ge), dtype)
    lp = fxt.token_logprobs(z, y, ignore_index=ignore_index, **opts)
    assert isinstance(lp, torch.Tensor) and lp.shape == shape[:-1] and lp.dtype == dtype
    _close(lp, ref(z)[0], dtype)


@pytest.mark.parametrize("which", ["logprobs", "entropy", "both_zero"])
def test_token_logprobs_each_output_on_its_own(which):
    # The entropy's gradient alone (the log-probabilities take no part), the
    # log-probabilities' alone, and zero upstream gradients.
    z = torch.randn(12, 9, dtype=torch.float64) * 2
    y = _labels((12,), 9)
    g = torch.randn(12, dtype=torch.float64)
    up = {"logprobs": (g, None), "entropy": (None, g), "both_zero": (g * 0, g * 0)}[which]

    def ours(z):
        return fxt.token_logprobs(z, y, temperature=0.9, return_entropy=True)

    _compare(ours, lambda z: ref_logprobs(z, y, temperature=0.9), (z,), up)
    if which == "both_zero":
        (_, (grad,)) = _grads(ours, (z,), up)
        assert not grad.any()


def test_token_logprobs_entropy_backward_calls_the_vjp_once(monkeypatch):
    calls = []
    vjp = fxt._logprob._np_token_logprobs_vjp

    def spy(*args, **kwargs):
        calls.append((args[2], args[3]))
        return vjp(*args, **kwargs)

    monkeypatch.setattr(fxt._logprob, "_np_token_logprobs_vjp", spy)
    z = torch.randn(6, 5, requires_grad=True)
    y = _labels((6,), 5)
    lp, ent = fxt.token_logprobs(z, y, return_entropy=True)
    (lp.sum() + ent.sum()).backward()
    assert len(calls) == 1 and calls[0][1] is not None
    calls.clear()
    z.grad = None
    fxt.token_logprobs(z, y, return_entropy=True)[0].sum().backward()
    assert len(calls) == 1 and calls[0][1] is None  # no entropy term when it took no part


def test_token_logprobs_backward_twice_and_non_contiguous():
    base = torch.randn(9, 12, dtype=torch.float64)
    z = base.t().requires_grad_()  # (12, 9), not contiguous
    y = _labels((12,), 9)
    lp = fxt.token_logprobs(z, y, softcap=3.0)
    g = torch.randn(12, dtype=torch.float64)
    (a,) = torch.autograd.grad(lp, z, g, retain_graph=True)
    (b,) = torch.autograd.grad(lp, z, g)
    ref = torch.autograd.grad(ref_logprobs(z, y, softcap=3.0)[0], z, g)[0]
    _close(a, ref)
    _close(b, ref)


# ---------------------------------------------------------------------------
# linear_token_logprobs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("opts", [{}, {"temperature": 0.8, "softcap": 3.0, "chunk_size": 3}])
def test_linear_token_logprobs_match_torch(dtype, bias, opts):
    pytest.importorskip("scipy")
    x = torch.randn(2, 7, 5, dtype=dtype)
    W = torch.randn(11, 5, dtype=dtype)
    b = torch.randn(11, dtype=dtype) if bias else None
    y = _labels((2, 7), 11)
    gl, ge = torch.randn(2, 7, dtype=dtype), torch.randn(2, 7, dtype=dtype)
    ref_opts = {k: v for k, v in opts.items() if k != "chunk_size"}

    def ours(x, W, b):
        return fxt.linear_token_logprobs(x, W, y, linear_bias=b, return_entropy=True, **opts)

    def ref(x, W, b):
        return ref_logprobs(F.linear(x, W, b), y, **ref_opts)

    _compare(ours, ref, (x, W, b), (gl, ge), dtype)
    _compare(ours, ref, (x, W, b), (None, ge), dtype)  # the entropy alone


def test_linear_token_logprobs_frozen_head():
    pytest.importorskip("scipy")
    x = torch.randn(6, 4, requires_grad=True)
    W = torch.randn(9, 4)
    lp = fxt.linear_token_logprobs(x, W, _labels((6,), 9))
    lp.sum().backward()
    assert x.grad is not None and W.grad is None


# ---------------------------------------------------------------------------
# distillation_loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("masked", [False, True])
def test_distillation_loss_matches_torch(dtype, divergence, reduction, masked):
    s = torch.randn(3, 6, 10, dtype=dtype) * 2
    t = torch.randn(3, 6, 10, dtype=dtype) * 2
    y = _labels((3, 6), 10) if masked else None
    opts = dict(divergence=divergence, beta=0.3, temperature=1.7, reduction=reduction)

    def ours(s):
        return fxt.distillation_loss(s, t, target=y, **opts)

    def ref(s):
        return ref_divergence(s, t, target=y, **opts)

    # A random upstream gradient: one value per row under "none".
    up = torch.randn((3, 6) if reduction == "none" else (), dtype=dtype)
    _compare(ours, ref, (s,), (up,), dtype)


def test_distillation_loss_none_upstream_is_used_row_by_row():
    s = torch.randn(8, 5, dtype=torch.float64)
    t = torch.randn(8, 5, dtype=torch.float64)
    up = torch.zeros(8, dtype=torch.float64)
    up[3] = 2.0
    (_, (g,)) = _grads(lambda s: fxt.distillation_loss(s, t, reduction="none"), (s,), (up,))
    assert not g[torch.arange(8) != 3].any() and g[3].abs().sum() > 0


def test_distillation_loss_backward_twice():
    s = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(7, 4, dtype=torch.float64)
    loss = fxt.distillation_loss(s, t, divergence="reverse_kl") * 3
    (a,) = torch.autograd.grad(loss, s, retain_graph=True)
    (b,) = torch.autograd.grad(loss, s)
    ref = torch.autograd.grad(ref_divergence(s, t, "reverse_kl") * 3, s)[0]
    _close(a, ref)
    _close(b, ref)


# ---------------------------------------------------------------------------
# linear_distillation_loss


def _heads(dtype=torch.float64, bias=True, n=(2, 5)):
    x = torch.randn(*n, 4, dtype=dtype)
    W = torch.randn(9, 4, dtype=dtype)
    tx = torch.randn(*n, 6, dtype=dtype)
    tW = torch.randn(9, 6, dtype=dtype)
    b = torch.randn(9, dtype=dtype) if bias else None
    tb = torch.randn(9, dtype=dtype) if bias else None
    return x, W, tx, tW, b, tb


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("upstream", ["random", "uniform"])
def test_linear_distillation_loss_matches_torch(dtype, divergence, reduction, upstream):
    pytest.importorskip("scipy")
    x, W, tx, tW, b, tb = _heads(dtype, bias=divergence != "reverse_kl")
    y = _labels((2, 5), 9)
    opts = dict(divergence=divergence, beta=0.6, temperature=0.9, reduction=reduction)

    def ours(x, W, b):
        return fxt.linear_distillation_loss(
            x, W, tx, tW, linear_bias=b, teacher_linear_bias=tb, target=y, chunk_size=3, **opts
        )

    def ref(x, W, b):
        return ref_divergence(F.linear(x, W, b), F.linear(tx, tW, tb), target=y, **opts)

    shape = (2, 5) if reduction == "none" else ()
    up = torch.randn(shape, dtype=dtype) if upstream == "random" else torch.full(shape, 0.5)
    _compare(ours, ref, (x, W, b), (up.to(dtype),), dtype)


def test_linear_distillation_loss_none_backward_twice():
    pytest.importorskip("scipy")
    x, W, tx, tW, _, _ = _heads()
    x.requires_grad_()
    loss = fxt.linear_distillation_loss(x, W, tx, tW, reduction="none")
    # The first backward (uniform upstream) takes the forward's gradients;
    # the second recomputes them.
    for up in (torch.ones(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)):
        (g,) = torch.autograd.grad(loss, x, up, retain_graph=True)
        ref = ref_divergence(F.linear(x, W), F.linear(tx, tW), reduction="none")
        _close(g, torch.autograd.grad(ref, x, up)[0])


# ---------------------------------------------------------------------------
# gradcheck (float64, small shapes)


def test_gradcheck_float64():
    pytest.importorskip("scipy")
    gc = torch.autograd.gradcheck
    z = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 5, -100, 2, 2])
    t = torch.randn(5, 6, dtype=torch.float64)
    assert gc(lambda z: fxt.token_logprobs(z, y, temperature=0.8, return_entropy=True), (z,))
    assert gc(lambda z: fxt.token_logprobs(z, y, softcap=2.0, return_entropy=True)[1], (z,))
    for div in DIVERGENCES:
        for red in REDUCTIONS:
            assert gc(
                lambda z, div=div, red=red: fxt.distillation_loss(
                    z, t, divergence=div, reduction=red, temperature=1.3, target=y
                ),
                (z,),
            )
    x, W, tx, tW, b, tb = (
        None if a is None else a.requires_grad_(i in (0, 1, 4))
        for i, a in enumerate(_heads(n=(4,)))
    )
    y4 = y[:4]
    assert gc(
        lambda x, W, b: fxt.linear_token_logprobs(
            x, W, y4, linear_bias=b, return_entropy=True, chunk_size=3
        ),
        (x, W, b),
    )
    for red in ("batchmean", "none"):
        assert gc(
            lambda x, W, b, red=red: fxt.linear_distillation_loss(
                x,
                W,
                tx,
                tW,
                linear_bias=b,
                teacher_linear_bias=tb,
                divergence="jsd",
                reduction=red,
                target=y4,
                chunk_size=3,
            ),
            (x, W, b),
        )


# ---------------------------------------------------------------------------
# no_grad, half precision, errors


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "no_requires_grad"])
def test_no_gradient_computed_without_grad(monkeypatch, mode):
    pytest.importorskip("scipy")
    seen = []

    def fail(*args, **kwargs):
        raise AssertionError("a gradient was computed")

    def loss_only(real):
        def spy(*args, want_grad=True, **kwargs):
            seen.append(want_grad)
            return real(*args, want_grad=want_grad, **kwargs)

        return spy

    monkeypatch.setattr(fxt._logprob, "_np_token_logprobs_vjp", fail)
    monkeypatch.setattr(fxt._linear_logprob, "_np_linear_token_logprobs_vjp", fail)
    monkeypatch.setattr(fxt._distill, "_np_distillation_loss_with_grad", fail)
    monkeypatch.setattr(fxt._distill, "_distill_run", loss_only(fxt._distill._distill_run))
    monkeypatch.setattr(
        fxt._linear_distill,
        "_linear_distill_run",
        loss_only(fxt._linear_distill._linear_distill_run),
    )
    wants = mode != "no_requires_grad"
    z = torch.randn(4, 3, requires_grad=wants)
    x, W, tx, tW, _, _ = _heads(torch.float32, n=(4,))
    x.requires_grad_(wants)
    y = torch.tensor([0, 1, 2, 0])
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode)
    with ctx() if ctx else torch.enable_grad():
        outs = [
            *fxt.token_logprobs(z, y, return_entropy=True),
            *fxt.linear_token_logprobs(x, W, y, return_entropy=True),
            fxt.distillation_loss(z, z.detach() * 2),
            fxt.linear_distillation_loss(x, W, tx, tW),
        ]
    assert not any(o.requires_grad for o in outs)
    # Both distillations took their loss-only route (no gradient, no
    # backward GEMMs).
    assert seen == [False, False]
    _close(outs[0], ref_logprobs(z, y)[0].detach(), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    if dtype == torch.bfloat16:
        pytest.importorskip("ml_dtypes")
    tol = dict(rtol=2e-2, atol=2e-2)
    z = (torch.randn(6, 8) * 2).to(dtype)
    t = torch.randn(6, 8).to(dtype)
    y = _labels((6,), 8)
    g = torch.randn(6)
    zf = z.float().requires_grad_()
    zh = z.clone().requires_grad_()
    lp, ent = fxt.token_logprobs(zh, y, temperature=0.9, return_entropy=True)
    assert lp.dtype == ent.dtype == dtype
    (lp.float() @ g + ent.float().sum()).backward()
    rl, re = ref_logprobs(zf, y, temperature=0.9)
    (rl @ g + re.sum()).backward()
    assert zh.grad.dtype == dtype
    torch.testing.assert_close(lp.float(), rl.detach(), **tol)
    torch.testing.assert_close(zh.grad.float(), zf.grad, **tol)
    zh.grad = zf.grad = None
    loss = fxt.distillation_loss(zh, t, divergence="jsd")
    loss.backward()
    ref = ref_divergence(zf, t.float(), divergence="jsd")
    ref.backward()
    assert loss.dtype == zh.grad.dtype == dtype
    torch.testing.assert_close(loss.float(), ref.detach(), **tol)
    torch.testing.assert_close(zh.grad.float(), zf.grad, **tol)


def test_errors_before_anything_is_written():
    z = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    t = torch.randn(4, 5)
    x, W, tx, tW, _, _ = _heads(torch.float32, bias=False, n=(4,))
    bad = [
        (ValueError, "device", lambda: fxt.token_logprobs(z.detach().to("meta"), y)),
        (ValueError, "shape", lambda: fxt.token_logprobs(z, y[:3])),
        (ValueError, "label", lambda: fxt.token_logprobs(z, torch.tensor([0, 1, 5, 0]))),
        (TypeError, "integer", lambda: fxt.token_logprobs(z, y.float())),
        (TypeError, "dtype", lambda: fxt.token_logprobs(z.int(), y)),
        (ValueError, "temperature", lambda: fxt.token_logprobs(z, y, temperature=0.0)),
        (TypeError, "return_entropy", lambda: fxt.token_logprobs(z, y, return_entropy=1)),
        (ValueError, "linear_weight", lambda: fxt.linear_token_logprobs(x, W.t(), y)),
        (ValueError, "label", lambda: fxt.linear_token_logprobs(x, W, y + 6)),
        (ValueError, "shape", lambda: fxt.distillation_loss(z, t[:3])),
        (ValueError, "divergence", lambda: fxt.distillation_loss(z, t, divergence="kl")),
        (ValueError, "reduction", lambda: fxt.distillation_loss(z, t, reduction="mean")),
        (ValueError, "beta", lambda: fxt.distillation_loss(z, t, divergence="jsd", beta=1.0)),
        (RuntimeError, "teacher_logits", lambda: fxt.distillation_loss(z, z * 2)),
        (ValueError, "target", lambda: fxt.distillation_loss(z, t, target=y[:2])),
        (RuntimeError, "teacher_linear_weight", lambda: fxt.linear_distillation_loss(
            x, W, tx, tW.requires_grad_())),
        (ValueError, "teacher", lambda: fxt.linear_distillation_loss(x, W, tx[:3], tW.detach())),
    ]  # fmt: skip
    for exc, words, call in bad:
        with pytest.raises(exc, match=words):
            call()
    assert z.grad is None


# ---------------------------------------------------------------------------
# torch.library registration, torch.compile


def _opcheck_cases():
    f64 = dict(dtype=torch.float64)
    z = torch.randn(6, 5, **f64, requires_grad=True)
    t = torch.randn(6, 5, **f64)
    y = torch.tensor([0, 4, -100, 1, 2, 3])
    gl, ge = torch.randn(6, **f64), torch.randn(6, **f64)
    x = torch.randn(6, 3, **f64, requires_grad=True)
    W = torch.randn(5, 3, **f64, requires_grad=True)
    b = torch.randn(5, **f64, requires_grad=True)
    tx, tW, tb = torch.randn(6, 4, **f64), torch.randn(5, 4, **f64), torch.randn(5, **f64)
    xd, Wd, bd, zd = x.detach(), W.detach(), b.detach(), z.detach()
    lp, lpb, lin, linb, dist, ldist, ldistb = OPS
    cases = [
        (lp, (z, y, 0.7, 3.0, -100, True, True)),
        (lp, (z, y.clamp(min=0), 1.0, None, None, False, True)),
        (lp, (zd, y, 1.0, None, -100, True, False)),
        (lpb, (zd, y, gl, ge, 0.7, 3.0, -100)),
        (lpb, (zd, y, None, ge, 1.0, None, -100)),
        (lin, (x, W, y, b, 0.8, None, -100, True, 4, True)),
        (lin, (x, W, y, None, 1.0, 2.0, -100, False, None, True)),
        (linb, (xd, Wd, y, bd, gl, ge, 0.8, None, -100, 4)),
        (linb, (xd, Wd, y, None, gl, None, 1.0, 2.0, -100, None)),
    ]
    for div in DIVERGENCES:
        for red in REDUCTIONS:
            cases.append((dist, (z, t, y, div, 0.3, 1.5, red, -100, True)))
            cases.append((ldist, (x, W, tx, tW, b, tb, y, div, 0.3, 1.5, red, -100, 4, True)))
    cases.append((dist, (zd, t, None, "jsd", 0.5, 1.0, "sum", -100, False)))
    cases.append((ldist, (x, W, tx, tW, None, None, None, "jsd", 0.5, 1.0, "none", -100, 4, False)))
    for g in (gl, torch.full((6,), 0.5, **f64)):  # the chunk loop, the fused shortcut
        cases.append((ldistb, (xd, Wd, tx, tW, bd, tb, y, g, "jsd", 0.3, 1.5, -100, 4)))
    cases.append(
        (ldistb, (xd, Wd, tx, tW, None, None, None, gl, "forward_kl", 0.5, 1.0, -100, None))
    )
    return cases


@pytest.mark.parametrize("case", range(len(_opcheck_cases())))
def test_opcheck(case):
    pytest.importorskip("scipy")
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_every_op_is_opchecked():
    assert {op for op, _ in _opcheck_cases()} == set(OPS)


def _compiled_step(backend, reduction, use_fastxent):
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 3, 7, generator=gen, requires_grad=True)
    y = torch.randint(0, 7, (4, 3), generator=gen)
    y[0, 1] = -100
    adv = torch.randn(4, 3, generator=gen)
    x = torch.randn(8, 5, generator=gen, requires_grad=True)
    W = torch.randn(7, 5, generator=gen, requires_grad=True)
    tx, tW = torch.randn(8, 6, generator=gen), torch.randn(7, 6, generator=gen)
    yl = torch.randint(0, 7, (8,), generator=gen)
    w = torch.rand(8, generator=gen)

    def step(z, x, W):
        if use_fastxent:
            lp, ent = fxt.token_logprobs(z, y, temperature=0.8, return_entropy=True)
            a = fxt.distillation_loss(z, z.detach().flip(-1), divergence="jsd", reduction=reduction)
            b = fxt.linear_token_logprobs(x, W, yl)
            c = fxt.linear_distillation_loss(x, W, tx, tW, reduction=reduction)
        else:
            lp, ent = ref_logprobs(z, y, temperature=0.8)
            a = ref_divergence(z, z.detach().flip(-1), divergence="jsd", reduction=reduction)
            b = ref_logprobs(F.linear(x, W), yl)[0]
            c = ref_divergence(F.linear(x, W), F.linear(tx, tW), reduction=reduction)
        if reduction == "none":
            a, c = a.sum(), c @ w  # a uniform and a per-row upstream gradient
        return (lp * adv).sum() + 0.1 * ent.sum() + a + b.sum() + c

    if backend != "eager":
        torch._dynamo.reset()
        step = torch.compile(step, fullgraph=True, backend=backend)
    out = step(z, x, W)
    return out, torch.autograd.grad(out, (z, x, W))


@pytest.mark.parametrize("reduction", ["batchmean", "none"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, reduction):
    pytest.importorskip("scipy")
    if backend == "inductor":
        pytest.importorskip("torch._inductor")
    out, grads = _compiled_step(backend, reduction, True)
    ref, ref_grads = _compiled_step("eager", reduction, False)
    _close(out, ref, torch.float32)
    for g, h in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-5)


def test_fake_tensors_go_through_the_operators():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        z = torch.empty(2, 5, 4, requires_grad=True)
        y = torch.zeros(2, 5, dtype=torch.long)
        lp, ent = fxt.token_logprobs(z, y, return_entropy=True)
        assert lp.shape == ent.shape == (2, 5)
        (lp.sum() + ent.sum()).backward()
        assert z.grad.shape == z.shape
        loss = fxt.distillation_loss(z, torch.empty(2, 5, 4), reduction="none")
        assert loss.shape == (2, 5)
        x, W = torch.empty(6, 2, requires_grad=True), torch.empty(7, 2, requires_grad=True)
        yl = torch.zeros(6, dtype=torch.long)
        assert fxt.linear_token_logprobs(x, W, yl).shape == (6,)
        tx, tW = torch.empty(6, 3), torch.empty(7, 3)
        assert fxt.linear_distillation_loss(x, W, tx, tW).shape == ()


def test_public_names():
    for name in ("token_logprobs", "linear_token_logprobs", "distillation_loss"):
        assert name in fxt.__all__
    assert "linear_distillation_loss" in fxt.__all__
    assert np.all([fxt.__dict__[n].__doc__ for n in fxt.__all__])


class _Passthrough(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("upstream", ["uniform", "random"])
def test_registered_operators_match_the_eager_shortcut(monkeypatch, upstream):
    # Under a dispatch mode the calls go through torch.ops.fastxent.* and
    # their registered autograd formulas, on real tensors.
    pytest.importorskip("scipy")
    z, t = torch.randn(6, 7, dtype=torch.float64), torch.randn(6, 7, dtype=torch.float64)
    y = _labels((6,), 7)
    x, W, tx, tW, b, tb = _heads(n=(6,))
    W = torch.randn(7, 4, dtype=torch.float64)
    b, tW, tb = b[:7], torch.randn(7, 6, dtype=torch.float64), tb[:7]
    up = torch.full((6,), 0.5, dtype=torch.float64) if upstream == "uniform" else torch.randn(6)
    up = up.to(torch.float64)
    calls = [
        (lambda z: fxt.token_logprobs(z, y, softcap=3.0, return_entropy=True), (z,), (up, up)),
        (lambda z: fxt.distillation_loss(z, t, reduction="none", target=y), (z,), (up,)),
        (
            lambda x, W, b: fxt.linear_token_logprobs(x, W, y, linear_bias=b, return_entropy=True),
            (x, W, b),
            (None, up),
        ),
        (
            lambda x, W, b: fxt.linear_distillation_loss(
                x, W, tx, tW, linear_bias=b, teacher_linear_bias=tb, reduction="none", target=y
            ),
            (x, W, b),
            (up,),
        ),
    ]
    refs = [_grads(fn, inputs, ups) for fn, inputs, ups in calls]
    for module, name in (
        (fxt._logprob, "TokenLogprobs"),
        (fxt._distill, "Distillation"),
        (fxt._linear_logprob, "LinearTokenLogprobs"),
        (fxt._linear_distill, "LinearDistillation"),
    ):
        monkeypatch.setattr(module, f"_Eager{name}", None)  # not the shortcut
    for (fn, inputs, ups), ref in zip(calls, refs, strict=True):
        with _Passthrough():
            got = _grads(fn, inputs, ups)
        for a, c in zip(got[0] + got[1], ref[0] + ref[1], strict=True):
            _close(a, c)
