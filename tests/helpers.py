"""Shared test helpers: input builders, layouts, and dtype-aware comparisons
against the float64 reference (``reference.py``).

Tolerances follow the project's numerical requirements: float64 results match
the reference to ~1e-12 relative and float32 results to ~1e-5 relative.  An
absolute floor proportional to the size of the inputs covers values that
are small only by cancellation (``lse - z_y`` for a confident row, gradient
entries ``P - 1`` near 0), whose error is set by the size of the logits.
"""

from __future__ import annotations

import numpy as np
import pytest

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

# compute dtype -> (rtol, absolute floor per unit of scale)
TOL = {F32: (1e-5, 2e-6), F64: (1e-12, 1e-13)}

REDUCTIONS = ("mean", "sum", "none")
LAYOUTS = ("C", "F", "strided", "readonly")


def make_logits(rng, shape, dtype=np.float64, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def make_labels(rng, shape, m, dtype=np.int64):
    return rng.integers(0, m, size=shape).astype(dtype)


def make_probs(rng, shape, dtype=np.float64):
    p = rng.random(shape) ** 3  # some mass near 0
    p /= np.maximum(p.sum(axis=-1, keepdims=True), 1e-300)
    return p.astype(dtype)


def with_layout(a, layout):
    """The same values as ``a`` in another memory layout: Fortran order, a
    non-contiguous view (every other element of a bigger array), or a
    read-only array."""
    a = np.asarray(a)
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        if a.ndim == 0:
            return a
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., ::2] = a
        view = big[..., ::2]
        assert not view.flags.c_contiguous or a.size == 0 or a.shape[-1] <= 1
        return view
    if layout == "readonly":
        r = np.array(a)
        r.flags.writeable = False
        return r
    raise ValueError(layout)


def snapshot(*arrays):
    """Bytes, shapes and dtypes of arrays (and ``None``s), to check later
    that a call modified nothing."""
    return [
        None if a is None else (np.asarray(a).shape, np.asarray(a).dtype, np.asarray(a).tobytes())
        for a in arrays
    ]


def row_scale(logits):
    """Per-row size of the logits, ``1 + max |finite z|``: the absolute error
    of a row's logsumexp in a dtype is a few ulps of this."""
    z = np.asarray(logits, dtype=np.float64)
    z = z.reshape(-1, z.shape[-1]) if z.ndim else z.reshape(1, 1)
    fin = np.where(np.isfinite(z), np.abs(z), 0.0)
    return 1.0 + (fin.max(axis=1) if z.shape[0] else np.zeros(0)) + np.log(max(z.shape[1], 1))


def assert_close(actual, expected, dtype, scale=1.0, what=""):
    """``actual`` (computed in ``dtype``) against the float64 ``expected``:
    ``|a - e| <= rtol |e| + floor * scale`` elementwise; NaN matches NaN and
    infinities must match exactly.  ``scale`` broadcasts against the values."""
    dtype = np.dtype(dtype)
    rtol, floor = TOL[dtype]
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):
        # The best the compute dtype can do is the reference rounded to it
        # (what overflows float32 is inf there, what underflows is 0).
        e = e.astype(dtype).astype(np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    assert np.array_equal(np.isnan(a), np.isnan(e)), f"{what}: NaN positions differ"
    inf = np.isinf(e) | np.isinf(a)
    assert np.array_equal(a[inf], e[inf]), f"{what}: infinities differ"
    fin = ~(inf | np.isnan(e))
    # A NaN scale (from a NaN row that the call may skip, e.g. an ignored
    # sample) asks for an exact match.
    limit = rtol * np.abs(e) + np.nan_to_num(floor * np.broadcast_to(scale, e.shape), nan=0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(a - e)
    bad = fin & ~(err <= limit)
    if np.any(bad):
        idx = np.argwhere(bad)[0] if bad.ndim else ()
        idx = tuple(idx)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} values off; first at {idx}: "
            f"got {a[idx]!r}, expected {e[idx]!r}, |err|={err[idx]:.3g} > {limit[idx]:.3g}"
        )


def assert_loss_close(actual, expected, logits, dtype, reduction, weight_scale=1.0):
    """Loss vs reference; the absolute floor is a few ulps of each row's
    logsumexp, times ``weight_scale`` (the size of the weights/denominator
    factors), summed over rows for a reduced loss."""
    rs = row_scale(logits) * weight_scale
    if reduction == "none":
        scale = rs.reshape(np.shape(expected))
    elif reduction == "sum":
        scale = rs.sum()
    else:
        scale = rs.max() if rs.size else 1.0
    assert_close(actual, expected, dtype, scale, what=f"loss ({reduction})")


def assert_grad_close(actual, expected, dtype, scale=None):
    """Gradient vs reference; the absolute floor is relative to the largest
    reference entry (or ``scale``)."""
    e = np.asarray(expected)
    if scale is None:
        fin = e[np.isfinite(e)]
        scale = float(np.abs(fin).max()) if fin.size else 1.0
    assert_close(actual, expected, dtype, max(scale, 1e-300), what="grad")


def assert_bitwise(a, b, what=""):
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (
        f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    )
    assert a.tobytes() == b.tobytes(), f"{what}: not bitwise identical"


def compute_dtype(logits):
    dt = np.asarray(logits).dtype
    return F64 if dt.kind in "iu" or dt.itemsize == 8 else F32


def _error_scales(
    logits, target, reduction, weight, sample_weight, ignore_index, label_smoothing, z_loss, softcap
):
    """Per-row bounds on the size of what rounding can disturb: the loss of
    row i is ``s_i (Q_i (lse_i - <z>) + zl lse_i^2)`` and its gradient
    ``b_i ((Q_i + 2 zl lse_i) P - q) cap'``, with ``Q_i <= max w * |Y_i|``
    and ``|z|, |lse| <= row_scale`` (of the capped logits).  Entry (i, j)
    of the gradient is off by ~eps (1 + |z_ij - max_i|) relative in P (the
    rounding of ``z - max`` in the compute dtype) and by ~eps Q_i absolute
    where ``P Q - q`` cancels."""
    import reference as ref

    shape = np.shape(logits)
    m = shape[-1]
    n = int(np.prod(shape[:-1]))
    z = np.asarray(logits, dtype=np.float64).reshape(n, m)
    if softcap is not None:
        with np.errstate(invalid="ignore"):
            z = softcap * np.tanh(z / softcap)
    rs = row_scale(z)
    # Weights may be negative: the error scales are magnitudes.
    wmax = 1.0 if weight is None else max(float(np.max(np.abs(weight), initial=0.0)), 1e-300)
    s = (
        np.ones(n)
        if sample_weight is None
        else np.abs(np.asarray(sample_weight, dtype=np.float64).reshape(n))
    )
    s_signed = (
        np.ones(n)
        if sample_weight is None
        else np.asarray(sample_weight, dtype=np.float64).reshape(n)
    )
    t = np.asarray(target)
    if t.shape == shape[:-1]:
        labels = t.reshape(n).astype(np.int64)
        keep = labels != ignore_index
        mass = np.ones(n)
        wy = (
            np.ones(n)
            if weight is None
            else np.asarray(weight, np.float64)[np.where(keep, labels, 0)]
        )
        denom = float(np.sum(s_signed * np.where(keep, wy, 0.0)))
    else:
        y = np.abs(t.astype(np.float64).reshape(n, m))
        mass = (1 - label_smoothing) * y.sum(axis=1) + label_smoothing
        denom = float(s_signed.sum())
    q = wmax * mass
    loss_scale = s * (2 * q * rs + z_loss * rs * rs)
    b = s / abs(denom) if (reduction == "mean" and denom != 0) else s
    p = ref.softmax(z).reshape(n, m) if n else np.zeros((0, m))
    grad_scale = (b * (q + 2 * z_loss * rs))[:, None] * (1 + rs[:, None] * p)
    return loss_scale, grad_scale, denom


def check_cross_entropy(logits, target, *, reduction="mean", num_threads=None, **options):
    """Call all three loss functions with the same arguments and check:
    each against the float64 reference (dtype-aware tolerances), the loss of
    ``cross_entropy`` bitwise equal to that of ``cross_entropy_with_grad``,
    the gradients of ``cross_entropy_grad`` and ``cross_entropy_with_grad``
    bitwise equal, result dtypes and shapes, and inputs left untouched.
    ``num_threads`` goes to fastxent only.  Returns ``(loss, grad)`` from
    ``cross_entropy_with_grad``."""
    import reference as ref

    import fastxent

    dtype = compute_dtype(logits)
    shape = np.shape(logits)
    arrays = (logits, target, options.get("weight"), options.get("sample_weight"))
    before = snapshot(*arrays)
    with np.errstate(all="ignore"):
        kw = dict(options, reduction=reduction, num_threads=num_threads)
        loss1 = fastxent.cross_entropy(logits, target, **kw)
        grad1 = fastxent.cross_entropy_grad(logits, target, **kw)
        loss2, grad2 = fastxent.cross_entropy_with_grad(logits, target, **kw)
        # Class weights are used in the compute dtype (PyTorch requires a
        # weight of the input's dtype), so a float64 weight that underflows
        # float32 is 0 there: give the reference the same weights.
        ref_options = dict(options)
        if options.get("weight") is not None:
            ref_options["weight"] = np.asarray(options["weight"], dtype=np.float64).astype(dtype)
        expected_loss, expected_grad = ref.cross_entropy(
            logits, target, reduction=reduction, **ref_options
        )
    assert snapshot(*arrays) == before, "an input was modified"

    assert_bitwise(loss1, loss2, "loss of cross_entropy vs cross_entropy_with_grad")
    assert_bitwise(grad1, grad2, "cross_entropy_grad vs cross_entropy_with_grad")
    assert grad2.dtype == dtype and grad2.shape == shape
    assert grad2.flags.c_contiguous and grad2.flags.writeable
    if reduction == "none":
        # per-sample losses: an array, or a NumPy scalar for one sample (1-d logits)
        kind = np.ndarray if len(shape) > 1 else np.generic
        assert isinstance(loss2, kind) and loss2.dtype == dtype, type(loss2)
        assert loss2.shape == shape[:-1]
    else:
        assert isinstance(loss2, np.generic) and loss2.dtype == dtype, type(loss2)

    full = dict(
        weight=None,
        sample_weight=None,
        ignore_index=-100,
        label_smoothing=0.0,
        z_loss=0.0,
        softcap=None,
    )
    full.update(options)
    loss_scale, grad_scale, denom = _error_scales(logits, target, reduction, **full)
    if reduction == "none":
        lscale = loss_scale.reshape(shape[:-1])
    elif reduction == "sum":
        lscale = loss_scale.sum()
    else:
        lscale = loss_scale.sum() / abs(denom) if denom != 0 else 1.0
    assert_close(loss2, expected_loss, dtype, lscale, what=f"loss ({reduction})")
    n = int(np.prod(shape[:-1]))
    assert_close(
        grad2.reshape(n, shape[-1]),
        np.reshape(expected_grad, (n, shape[-1])),
        dtype,
        grad_scale,
        what=f"grad ({reduction})",
    )
    return loss2, grad2


def half_dtypes():
    """float16 always; bfloat16 when ml_dtypes (which defines it) is installed."""
    out = [pytest.param(np.dtype(np.float16), id="float16")]
    try:
        import ml_dtypes as md

        out.append(pytest.param(np.dtype(md.bfloat16), id="bfloat16"))
    except ImportError:
        out.append(pytest.param(None, id="bfloat16", marks=pytest.mark.skip("needs ml_dtypes")))
    return out


def run_python_blocks(blocks, filename):
    """Execute Markdown ```python blocks in order, in one namespace.

    The conventions of the README's and the documentation's examples: a
    block whose first line is ``# needs: MODULE[, MODULE...]`` is skipped
    when one of those modules is not installed, and ``# not run by the
    tests`` skips a block outright.  Returns the number of blocks run.
    """
    import importlib.util

    namespace: dict[str, object] = {"__name__": "docs"}
    ran = 0
    for block in blocks:
        first = block.splitlines()[0] if block.strip() else ""
        if first.startswith("# not run by the tests"):
            continue
        if first.startswith("# needs:"):
            mods = [m.strip() for m in first.split(":", 1)[1].split(",")]
            if any(importlib.util.find_spec(m) is None for m in mods):
                continue
        exec(compile(block, filename, "exec"), namespace)
        ran += 1
    return ran
