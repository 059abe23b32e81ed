"""The independent float64 NumPy reference: the oracle of the test suite.

Everything here is written the textbook way, straight from the maths in
``shared/seed/cross-entropy.md`` and PyTorch's documented formulas, and
shares no code or formulation with fastxent:

* ``log_softmax`` by the max shift, ``L = (Z - max) - log sum exp(Z - max)``;
* targets made explicit (one-hot rows for class indices), the loss written
  term by term as PyTorch writes it (main term, label-smoothing term, z-loss);
* the gradient assembled term by term from ``d(-L_ic)/dZ_ij = P_ij - [j = c]``,
  then the chain rule through the soft-cap ``c * tanh(Z / c)``.

All arithmetic is float64 whatever the input dtype (inputs are converted
exactly).  Batch shapes ``(..., m)`` are flattened to ``(n, m)`` and
restored; ``n = 0`` and ``m = 1`` need no special cases.  A term with zero
mass contributes exactly 0 (``0 * -inf`` is taken as 0, not NaN), so
masked (``-inf``) classes with no target mass add nothing.

Use it as ``from reference import ...`` (``tests/`` is on ``sys.path``
under pytest: see ``conftest.py``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cross_entropy",
    "cross_entropy_hessian_diag",
    "distillation",
    "finite_difference_grad",
    "log_softmax",
    "logsumexp",
    "softmax",
    "token_logprobs",
    "token_logprobs_vjp",
    "ulp_distance",
]


def _rows(logits):
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 0 or z.shape[-1] == 0:
        raise ValueError("reference: logits must have shape (..., m) with m >= 1")
    return z.reshape(-1, z.shape[-1]), z.shape


def _row_max(z):
    # np.max of an (n, m) array with n == 0 works along axis 1 (gives shape (0, 1)).
    return np.max(z, axis=1, keepdims=True)


def logsumexp(logits):
    """Row-wise ``max + log sum exp(Z - max)`` over the last axis (float64)."""
    z, shape = _rows(logits)
    mx = _row_max(z)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # A row whose max is +inf or -inf: shifting gives NaN; say what the
        # maths says instead (+inf row -> +inf; all -inf row -> -inf).
        finite = np.isfinite(mx)
        shift = np.where(finite, mx, 0.0)
        s = np.sum(np.exp(z - shift), axis=1, keepdims=True)
        out = shift + np.log(s)
        out = np.where(finite | np.isnan(mx), out, mx)
    return out.reshape(shape[:-1])


def log_softmax(logits):
    """Row-wise ``(Z - max) - log sum exp(Z - max)`` (float64)."""
    z, shape = _rows(logits)
    mx = _row_max(z)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        shifted = z - mx
        out = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    return out.reshape(shape)


def softmax(logits):
    """Row-wise ``exp(Z - max) / sum exp(Z - max)`` (float64)."""
    z, shape = _rows(logits)
    mx = _row_max(z)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        e = np.exp(z - mx)
        out = e / np.sum(e, axis=1, keepdims=True)
    return out.reshape(shape)


def _times(mass, value):
    """``mass * value`` with ``0 * inf = 0`` (zero-mass terms vanish, so a
    masked class with no target mass adds nothing); ``0 * NaN`` stays NaN
    (NaN anywhere in a row makes its loss NaN)."""
    with np.errstate(invalid="ignore"):
        return np.where((mass == 0) & ~np.isnan(value), 0.0, mass * value)


def cross_entropy(
    logits,
    target,
    *,
    reduction="mean",
    weight=None,
    sample_weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
):
    """Loss and gradient of softmax cross-entropy, PyTorch semantics, float64.

    Returns ``(loss, grad)``: ``loss`` a Python float (``"mean"``, ``"sum"``)
    or an array of shape ``logits.shape[:-1]`` (``"none"``); ``grad`` the
    derivative of the sum of the returned losses (``"none"``) or of the
    returned loss, of the logits' shape.

    Class indices ``y`` (PyTorch's ``F.cross_entropy`` with ``weight``,
    ``ignore_index``, ``label_smoothing=eps``), with ``L = log_softmax(Zc)``,
    ``Zc`` the (soft-capped) logits and ``keep_i = y_i != ignore_index``::

        nll_i    = -w[y_i] L[i, y_i]                     (0 if ignored)
        smooth_i = -sum_c w_c L[i, c]                    (0 if ignored)
        loss_i   = s_i ((1 - eps) nll_i + eps / m smooth_i + zl lse_i^2 keep_i)
        "mean"   = sum_i loss_i / sum_{i kept} s_i w[y_i]

    Class probabilities ``Y`` (``ignore_index`` does not apply)::

        Y'       = (1 - eps) Y + eps / m
        loss_i   = s_i (-sum_c w_c Y'_ic L_ic + zl lse_i^2)
        "mean"   = sum_i loss_i / sum_i s_i

    Weights may be negative (PyTorch and scikit-learn allow it).  ``"mean"``
    divides in IEEE arithmetic, as PyTorch: a zero denominator gives a NaN
    (0 / 0) or +-inf loss and a non-finite gradient in every kept row (the
    exact inf/NaN pattern is PyTorch's arithmetic, checked against its
    fixtures; here those rows are NaN); ignored rows keep a zero gradient.

    A fully masked row (every soft-capped logit ``-inf``) with no target mass
    (every ``q_c = 0``) is no example at all: loss 0, gradient 0, where the
    arithmetic would give ``-inf - -inf = NaN``.
    """
    z, shape = _rows(logits)
    n, m = z.shape
    batch = shape[:-1]
    t = np.asarray(target)
    eps = float(label_smoothing)
    zl = float(z_loss)
    w = np.ones(m) if weight is None else np.asarray(weight, dtype=np.float64)
    s = (
        np.ones(n)
        if sample_weight is None
        else (np.asarray(sample_weight, dtype=np.float64).reshape(n))
    )

    if softcap is not None:
        c = float(softcap)
        th = np.tanh(z / c)
        zc = c * th
        dzc = 1.0 - th * th  # d(c tanh(z/c))/dz
    else:
        zc = z
        dzc = np.ones_like(z)

    L = log_softmax(zc).reshape(n, m)
    P = softmax(zc).reshape(n, m)
    lse = logsumexp(zc).reshape(n)

    mean = reduction == "mean"
    if t.shape == batch and t.dtype.kind in "iu":
        labels = t.reshape(n).astype(np.int64)
        keep = labels != ignore_index
        safe = np.where(keep, labels, 0)
        onehot = np.zeros((n, m))
        onehot[np.arange(n), safe] = 1.0
        wy = np.where(keep, w[safe], 0.0)
        # Main term -w_y L_y, smoothing term -sum_c w_c L_c.
        nll = -_times(wy, L[np.arange(n), safe])
        smooth = -np.sum(_times(w[None, :], L), axis=1)
        smooth = np.where(keep, smooth, 0.0)
        main = np.where(keep, _times(1.0 - eps, nll) + _times(eps / m, smooth), 0.0)
        q = (1.0 - eps) * wy[:, None] * onehot + (eps / m) * w[None, :]
        denom = float(np.sum(s * wy))
    elif t.shape == shape:
        Y = t.astype(np.float64).reshape(n, m)
        Yp = (1.0 - eps) * Y + eps / m
        q = w[None, :] * Yp  # effective mass of class c
        main = -np.sum(_times(q, L), axis=1)
        keep = np.ones(n, dtype=bool)
        denom = float(np.sum(s))
    else:
        raise ValueError(f"reference: target shape {t.shape} fits neither {batch} nor {shape}")

    zterm = np.where(keep, zl * lse * lse, 0.0) if zl else np.zeros(n)
    per_sample = s * (main + zterm)  # "mean" below: np.average's sum(s l) / sum(s)

    # The gradient by the chain rule through L = log_softmax(Zc):
    #   dE/dZc_ij = gL_ij - P_ij sum_c gL_ic  (+ the z-loss's 2 zl lse_i P_ij),
    # with gL = dE/dL the (weighted) target mass times -gw, and gw_i the
    # sample's weight in the returned loss: s_i, over the denominator under
    # "mean" (IEEE: a zero denominator gives inf/NaN, as in PyTorch, whose
    # backward takes these same steps; the label's term is the only non-zero
    # entry of the main part, the smoothing part is dense).
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gw = s / denom if mean else s
        if t.shape == batch:
            gL = np.zeros((n, m))
            gL[np.arange(n), safe] = -(gw * ((1.0 - eps) * wy))
            if eps > 0:
                gL = gL - (gw[:, None] * (eps / m)) * w[None, :]
        else:
            gL = -(gw[:, None] * q)
        g = gL - P * np.sum(gL, axis=1, keepdims=True)
        if zl:
            g = g + (gw * 2.0 * zl * lse)[:, None] * P
        # Ignored samples get exactly zero, whatever their logits (NaN included).
        grad = np.where(keep[:, None], g * dzc, 0.0)
    # Fully masked rows without target mass: no example.
    dead = keep & np.all(zc == -np.inf, axis=1) & np.all(q == 0, axis=1)
    per_sample = np.where(dead, 0.0, per_sample)
    grad = np.where(dead[:, None], 0.0, grad)

    if reduction == "none":
        return per_sample.reshape(batch), grad.reshape(shape)
    if reduction == "sum":
        return float(np.sum(per_sample)), grad.reshape(shape)
    if reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.float64(np.sum(per_sample)) / np.float64(denom)), grad.reshape(shape)
    raise ValueError(f"reference: unknown reduction {reduction!r}")


def cross_entropy_hessian_diag(
    logits, target, *, weight=None, sample_weight=None, label_smoothing=0.0
):
    """Diagonal of each sample's Hessian of its own loss (float64).

    The per-sample loss ``E_i = s_i sum_c q_ic (lse_i - Z_ic)`` (that of
    ``cross_entropy(..., reduction="none")``, no z-loss or soft-cap) has the
    Hessian ``d2E_i / dZ_ij dZ_il = s_i Q_i (P_ij [j = l] - P_ij P_il)``
    with ``Q_i = sum_c q_ic``: the target terms are linear in ``Z`` and
    ``lse`` is the log-partition function, whose Hessian is the covariance
    of the one-hot class under ``P``.  The full ``m x m`` matrix is built
    per sample and its diagonal returned, with the target masses ``q`` made
    explicit as in ``cross_entropy`` (class indices: ``(1 - eps) w_y`` on the
    label plus ``eps / m w_c`` everywhere; probabilities:
    ``w_c ((1 - eps) Y_c + eps / m)``).  A fully masked row with no target
    mass is no example (0), as in ``cross_entropy``.
    """
    z, shape = _rows(logits)
    n, m = z.shape
    t = np.asarray(target)
    eps = float(label_smoothing)
    w = np.ones(m) if weight is None else np.asarray(weight, dtype=np.float64)
    s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64).reshape(n)
    if t.shape == shape[:-1] and t.dtype.kind in "iu":
        labels = t.reshape(n).astype(np.int64)
        q = (eps / m) * np.broadcast_to(w, (n, m)).copy()
        q[np.arange(n), labels] += (1.0 - eps) * w[labels]
    elif t.shape == shape:
        q = w[None, :] * ((1.0 - eps) * t.astype(np.float64).reshape(n, m) + eps / m)
    else:
        raise ValueError(f"reference: target shape {t.shape} fits neither {shape[:-1]} nor {shape}")
    P = softmax(z).reshape(n, m)
    with np.errstate(invalid="ignore", over="ignore"):
        cov = np.einsum("ij,jl->ijl", P, np.eye(m)) - np.einsum("ij,il->ijl", P, P)
        H = (s * q.sum(axis=1))[:, None, None] * cov
    diag = np.einsum("ijj->ij", H)
    dead = np.all(z == -np.inf, axis=1) & np.all(q == 0, axis=1)
    diag = np.where(dead[:, None], 0.0, diag)
    return diag.reshape(shape)


def finite_difference_grad(f, x, h=1e-4):
    """Gradient of the scalar function ``f`` at ``x`` (float64) by the
    fourth-order central stencil
    ``(-f(x+2h) + 8 f(x+h) - 8 f(x-h) + f(x-2h)) / (12 h)``, one coordinate
    at a time (``h`` is scaled by ``max(1, |x_j|)``)."""
    x = np.array(x, dtype=np.float64)
    g = np.empty_like(x)
    flat = x.reshape(-1)
    gflat = g.reshape(-1)
    for j in range(flat.size):
        x0 = flat[j]
        hj = h * max(1.0, abs(x0))
        vals = []
        for k in (2, 1, -1, -2):
            flat[j] = x0 + k * hj
            vals.append(float(f(x)))
        flat[j] = x0
        gflat[j] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * hj)
    return g


def ulp_distance(a, b):
    """Elementwise distance in units in the last place between two arrays of
    the same float dtype (0 for equal values, including equal infinities;
    a huge value where exactly one side is NaN)."""
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.dtype == b.dtype and a.dtype in (np.float32, np.float64)
    itype = np.int32 if a.dtype == np.float32 else np.int64

    def ordered(x):
        i = x.view(itype).astype(np.int64)
        # Map the sign-magnitude bit pattern to a monotonic integer line
        # (-0.0 and +0.0 both map to 0).
        return np.where(i < 0, np.iinfo(itype).min - i, i)

    oa, ob = ordered(a), ordered(b)
    same_side = (oa >= 0) == (ob >= 0)
    # Same sign: the integer difference is exact.  Opposite signs: the two
    # distances from zero add up (floats suffice, the result is huge or tiny).
    with np.errstate(over="ignore"):
        d = np.where(
            same_side,
            np.abs(np.where(same_side, oa - ob, 0)).astype(np.float64),
            np.abs(oa.astype(np.float64)) + np.abs(ob.astype(np.float64)),
        )
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    d = np.where(nan_a & nan_b, 0.0, d)
    return np.where(nan_a ^ nan_b, np.inf, d)


# ---- per-token log-probabilities, entropy, distillation ----


def _tempered(logits, temperature, softcap):
    """``u = cap(z) / T`` in float64 and ``cap'(z)`` (1 without a soft-cap)."""
    z = np.asarray(logits, dtype=np.float64)
    if softcap is None:
        return z / temperature, np.ones_like(z)
    t = np.tanh(z / softcap)
    return softcap * t / temperature, 1.0 - t * t


def _xlogy_rows(p, logq):
    """sum_j p_j logq_j with 0 * anything = 0."""
    return np.where(p > 0, p * np.where(p > 0, logq, 0.0), 0.0).sum(-1)


def token_logprobs(logits, target, *, temperature=1.0, softcap=None, ignore_index=-100):
    """``(logp[y], entropy)`` per row, 0 at ignored rows (float64)."""
    u, _ = _tempered(logits, temperature, softcap)
    lsm = log_softmax(u)
    y = np.asarray(target)
    keep = y != ignore_index
    safe = np.where(keep, y, 0)
    lp = np.take_along_axis(lsm, safe[..., None], -1)[..., 0]
    p = np.exp(lsm)
    ent = -_xlogy_rows(p, lsm)
    return np.where(keep, lp, 0.0), np.where(keep, ent, 0.0)


def token_logprobs_vjp(
    logits,
    target,
    grad_logprobs,
    grad_entropy=None,
    *,
    temperature=1.0,
    softcap=None,
    ignore_index=-100,
):
    """d/dz of sum_i gl_i logp_i[y_i] + ge_i H_i, term by term:
    dlogp_y/du = onehot(y) - p; dH/du_k = -p_k (logp_k + H)."""
    u, capd = _tempered(logits, temperature, softcap)
    lsm = log_softmax(u)
    p = np.exp(lsm)
    y = np.asarray(target)
    keep = y != ignore_index
    onehot = np.zeros_like(u)
    np.put_along_axis(onehot, np.where(keep, y, 0)[..., None], 1.0, -1)
    gl = np.asarray(grad_logprobs, dtype=np.float64)[..., None]
    du = gl * (onehot - p)
    if grad_entropy is not None:
        ge = np.asarray(grad_entropy, dtype=np.float64)[..., None]
        H = -_xlogy_rows(p, lsm)[..., None]
        du = du - ge * np.where(p > 0, p * (np.where(p > 0, lsm, 0.0) + H), 0.0)
    return np.where(keep[..., None], du / temperature * capd, 0.0)


def distillation(student, teacher, *, divergence="forward_kl", beta=0.5, temperature=1.0):
    """Per-row divergence (float64) between P = softmax(teacher / T) and
    Q = softmax(student / T), and its gradient with respect to the
    student's logits (of the sum of the rows), from the definitions:
    forward KL(P || Q), reverse KL(Q || P), and beta KL(P || M) +
    (1 - beta) KL(Q || M) with M = beta P + (1 - beta) Q."""
    lq = log_softmax(np.asarray(student, dtype=np.float64) / temperature)
    lp = log_softmax(np.asarray(teacher, dtype=np.float64) / temperature)
    q, p = np.exp(lq), np.exp(lp)
    if divergence == "forward_kl":
        loss = _xlogy_rows(p, lp) - _xlogy_rows(p, lq)
        dq_logit = q - p  # d/du of KL(P || Q)
    elif divergence == "reverse_kl":
        loss = _xlogy_rows(q, lq) - _xlogy_rows(q, lp)
        with np.errstate(invalid="ignore"):  # -inf - -inf where q = 0
            r = np.where(q > 0, lq - lp, 0.0)
        dq_logit = q * (r - loss[..., None])
    else:
        m = beta * p + (1 - beta) * q
        lm = np.log(np.where(m > 0, m, 1.0))
        loss = beta * (_xlogy_rows(p, lp) - _xlogy_rows(p, lm)) + (1 - beta) * (
            _xlogy_rows(q, lq) - _xlogy_rows(q, lm)
        )
        gam = np.where(q > 0, (1 - beta) * (lq - lm), 0.0)  # dL/dq
        dq_logit = q * (gam - (q * gam).sum(-1, keepdims=True))
    return loss, dq_logit / temperature
