"""Inputs are never modified unless passed as ``out=``.

``install_guard`` wraps the functions every public function goes through
(``fastxent._loss._run``, ``fastxent._softmax._rows``,
``fastxent._linear._linear_run`` and ``fastxent.objectives._grad_hess``,
looked up at call time, so it catches
calls however the public function was imported): the bytes of every array
argument other than ``out`` (up to 64 MiB each; arrays that overlap
``out`` excepted) are compared before and after the call, whether it
returns or raises.  ``conftest.py`` installs it for every test of the
suite (autouse fixture); tests that measure memory opt out with
``@pytest.mark.no_input_guard`` (the snapshots are traced allocations).

This module checks the guard itself (it fires on a modifying function, it
is installed) and runs a deterministic matrix of every public function x
dtype x memory layout x target kind x options x ``out`` through it.  The
fuzzer (test_fuzz.py) checks the same property on arbitrary inputs,
including the whole buffer under each view.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from helpers import make_labels, make_logits, make_probs

import fastxent
from fastxent import _linear, _loss, _softmax, objectives

MAX_BYTES = 64 << 20  # bigger arrays (bigmem) are not copied


def _guarded(f, out_of):
    """``f`` checking that no array argument but ``out_of(args, kwargs)``
    changes."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        out = out_of(args, kwargs)
        named = [(f"argument {i}", a) for i, a in enumerate(args)] + list(kwargs.items())
        before = [
            (name, a, a.tobytes())
            for name, a in named
            if isinstance(a, np.ndarray)
            and a is not out
            and a.dtype.kind != "O"
            and a.nbytes <= MAX_BYTES
            and not (isinstance(out, np.ndarray) and np.may_share_memory(a, out))
        ]
        try:
            return f(*args, **kwargs)
        finally:
            for name, a, data in before:
                if a.tobytes() != data:
                    raise AssertionError(f"fastxent modified its input {name} ({f.__name__})")

    wrapper.__wrapped_by_input_guard__ = True
    return wrapper


def install_guard(monkeypatch):
    """Check every fastxent call of the current test (see the module doc)."""
    monkeypatch.setattr(_loss, "_run", _guarded(_loss._run, lambda a, kw: kw.get("out")))
    monkeypatch.setattr(
        _softmax, "_rows", _guarded(_softmax._rows, lambda a, kw: a[1] if len(a) > 1 else None)
    )
    monkeypatch.setattr(_linear, "_linear_run", _guarded(_linear._linear_run, lambda a, kw: None))
    monkeypatch.setattr(
        objectives, "_grad_hess", _guarded(objectives._grad_hess, lambda a, kw: None)
    )


def _guard_installed():
    return all(
        getattr(f, "__wrapped_by_input_guard__", False)
        for f in (_loss._run, _softmax._rows, _linear._linear_run, objectives._grad_hess)
    )


def test_guard_is_installed_for_the_suite():
    assert _guard_installed(), "conftest.py should install the input guard (autouse fixture)"


def test_guard_fires_on_a_modifying_call(monkeypatch):
    def modifies(logits, target, *, out=None):
        logits[0] += 1

    guarded = _guarded(modifies, lambda a, kw: kw.get("out"))
    z = np.zeros((2, 3))
    with pytest.raises(AssertionError, match="modified its input argument 0"):
        guarded(z, None)
    guarded(z, None, out=z)  # out may change


# ---- every function x dtype x layout x target x options x out ----

LAYOUTS = ("C", "F", "reversed", "strided", "readonly", "unaligned", "byteswapped", "broadcast")


def _layout(a, how):
    a = np.asarray(a)
    if how == "C":
        return a.copy()
    if how == "F":
        return np.asfortranarray(a)
    if how == "reversed":
        return np.flip(np.flip(a, axis=-1).copy(), axis=-1)
    if how == "strided":
        big = np.zeros(a.shape[:-1] + (3 * a.shape[-1],), dtype=a.dtype)
        big[..., ::3] = a
        return big[..., ::3]
    if how == "readonly":
        r = a.copy()
        r.flags.writeable = False
        return r
    if how == "unaligned":
        buf = bytearray(a.nbytes + 1)
        v = np.frombuffer(buf, dtype=a.dtype, offset=1, count=a.size).reshape(a.shape)
        v[...] = a
        return v
    if how == "byteswapped":
        return a.astype(a.dtype.newbyteorder())
    assert how == "broadcast"
    return np.broadcast_to(a[:1], a.shape)


OPTIONS = [
    dict(),
    dict(weight="w", sample_weight="s", label_smoothing=0.1, z_loss=1e-3, softcap=5.0),
    dict(reduction="none", ignore_index=1),
]


def _cases(targets, rng, shape, layout):
    """``(target, options)`` for every target kind and entry of OPTIONS,
    with the weights drawn in ``layout``."""
    for kind, t in targets.items():
        for opts in OPTIONS:
            opts = dict(opts)
            if kind == "probs":
                opts.pop("ignore_index", None)
            if opts.get("weight") == "w":
                opts["weight"] = _layout(rng.random(shape[-1]), layout)
                opts["sample_weight"] = _layout(rng.random(shape[:-1]), layout)
            yield t, opts


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_loss_inputs_unmodified(dtype, layout):
    rng = np.random.default_rng(5)
    shape = (2, 7, 9)
    z = _layout(make_logits(rng, shape, np.float64).astype(dtype), layout)
    targets = {
        "labels": _layout(make_labels(rng, shape[:-1], shape[-1]).astype(np.int32), layout),
        "probs": _layout(make_probs(rng, shape, np.float32), layout),
    }
    for t, opts in _cases(targets, rng, shape, layout):
        keep = [np.array(a, copy=True) for a in (z, t, opts.get("weight"))]
        with np.errstate(all="ignore"):
            fastxent.cross_entropy(z, t, **opts)
            _, grad = fastxent.cross_entropy_with_grad(z, t, **opts)
            out = np.empty_like(grad)
            assert fastxent.cross_entropy_grad(z, t, out=out, **opts) is out
        for a, k in zip((z, t, opts.get("weight")), keep, strict=True):
            np.testing.assert_array_equal(a, k)  # values too, not only the guard


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_row_inputs_unmodified(dtype, layout):
    z = _layout(make_logits(np.random.default_rng(6), (3, 4, 11)).astype(dtype), layout)
    keep = np.array(z, copy=True)
    with np.errstate(all="ignore"):
        for name in ("softmax", "log_softmax", "logsumexp"):
            getattr(fastxent, name)(z)
        p = fastxent.softmax(z)
        assert fastxent.log_softmax(z, out=np.empty_like(p)) is not None
    np.testing.assert_array_equal(z, keep)


# Every layout, byte-swapped included (the fused linear function takes it too).
LINEAR_LAYOUTS = LAYOUTS


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", LINEAR_LAYOUTS)
def test_linear_inputs_unmodified(dtype, layout):
    """The fused linear functions leave x, W, b, the target and the weights
    as they were, whichever of them BLAS takes as they are and which are
    copied first."""
    pytest.importorskip("scipy")
    pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(9)
    batch, d, V = (2, 7), 5, 9
    x = _layout(rng.standard_normal(batch + (d,)).astype(dtype), layout)
    W = _layout(rng.standard_normal((V, d)).astype(dtype), layout)
    b = _layout(rng.standard_normal(V).astype(dtype), layout)
    targets = {
        "labels": _layout(make_labels(rng, batch, V).astype(np.int32), layout),
        "probs": _layout(make_probs(rng, batch + (V,), np.float32).astype(dtype), layout),
    }
    for t, opts in _cases(targets, rng, batch + (V,), layout):
        arrays = (x, W, b, t, opts.get("weight"), opts.get("sample_weight"))
        keep = [None if a is None else np.array(a, copy=True) for a in arrays]
        with np.errstate(all="ignore"):
            fastxent.linear_cross_entropy(x, W, t, linear_bias=b, chunk_size=5, **opts)
            fastxent.linear_cross_entropy_with_grad(x, W, t, linear_bias=b, **opts)
        for a, k in zip(arrays, keep, strict=True):
            np.testing.assert_array_equal(a, k)  # values too, not only the guard


def test_out_aliasing_the_target_changes_only_out():
    """``out`` may be the probability target (it is read first) or the
    logits (in place); nothing else changes."""
    rng = np.random.default_rng(8)
    z = make_logits(rng, (5, 6))
    p = make_probs(rng, (5, 6))
    z_keep, p_keep = z.copy(), p.copy()
    expected = fastxent.cross_entropy_grad(z, p)
    got = fastxent.cross_entropy_grad(z, p, out=p)
    assert got is p
    np.testing.assert_array_equal(z, z_keep)
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-15)
    p = p_keep.copy()
    fastxent.cross_entropy_grad(z, p, out=z)
    np.testing.assert_array_equal(p, p_keep)
