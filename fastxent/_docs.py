"""Shared parameter documentation: one text per parameter, filled into the
public docstrings by :func:`fill` (as SciPy's ``_lib.doccer`` does).

A docstring line holding only ``{name}`` (indented like a parameter) is
replaced by the text registered under ``name``; a group name stands for
several parameters in order.  Each module registers the texts it owns
(the loss options here, the fused linear ones in ``_linear``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

PARAMS: dict[str, str] = {}
GROUPS: dict[str, tuple[str, ...]] = {}


def register(name: str, text: str) -> None:
    """Register the text of a parameter (or several) under ``name``."""
    if name in PARAMS or name in GROUPS:
        raise ValueError(f"parameter doc {name!r} registered twice")
    PARAMS[name] = text.strip("\n")


def group(name: str, *names: str) -> None:
    """Let ``{name}`` stand for the registered ``names`` in order."""
    GROUPS[name] = names


def text(name: str) -> str:
    if name in GROUPS:
        return "\n".join(text(n) for n in GROUPS[name])
    return PARAMS[name]


def fill(func: F, **aliases: str) -> F:
    """Replace each ``    {name}`` line of ``func``'s docstring by the text
    registered under ``name`` (or under ``aliases[name]``, for a function
    whose ``{options}`` are another group's); usable as a decorator."""
    doc = func.__doc__
    if doc:  # None under python -OO
        lines = []
        for line in doc.split("\n"):
            key = line.strip()
            if line.startswith("    {") and key.startswith("{") and key.endswith("}"):
                lines.append(text(aliases.get(key[1:-1], key[1:-1])))
            else:
                lines.append(line)
        func.__doc__ = "\n".join(lines)
    return func


register(
    "logits_target",
    """
    logits : array_like of shape (..., m)
        Classes on the last axis.  float32 and float64 are computed natively,
        float16 in float32 and integer arrays in float64.
    target : array_like
        Either class indices: an *integer* array of shape ``logits.shape[:-1]``
        with values in ``[0, m)`` (or ``ignore_index``); or class
        probabilities: a *floating-point* array of shape ``logits.shape``
        (rows need not sum to 1).  Integer targets are always class indices:
        an integer array of the logits' own shape (a one-hot matrix, or 1-d
        logits with one label per element) is an error, not probabilities.""",
)
register(
    "axis",
    """
    axis : int, default -1
        The class axis of ``logits``, as in NumPy and SciPy (``axis=1`` for
        PyTorch's ``(N, C, ...)`` layout).  The shapes above are written for
        the default: with another axis, class probabilities have the logits'
        shape, class indices and ``sample_weight`` the logits' shape without
        that axis (``logits.shape[:-1]`` reads as that), and the gradient
        the logits' shape, in C order.  Classes off the last axis are
        computed in a contiguous copy with them last, and the gradient is
        copied back: two transposing copies, which can cost more than the
        loss itself, so keep the classes last where speed matters.""",
)
register(
    "out",
    """
    out : ndarray, optional
        C-contiguous, writeable array of the logits' shape and compute dtype
        that receives the gradient.  ``out=logits`` computes in place.""",
)
register(
    "weight",
    """
    weight : array_like of shape (m,), optional
        Finite class weights ``w`` (PyTorch's ``weight``; negative weights
        are allowed, with PyTorch's semantics).""",
)
register(
    "sample_weight",
    """
    sample_weight : array_like of shape ``logits.shape[:-1]``, optional
        Finite per-sample weights ``s`` (scikit-learn's ``sample_weight``,
        negative allowed): each sample's loss and gradient are multiplied
        by ``s_i`` and ``"mean"`` divides by ``sum_i s_i w[y_i]``.  A
        ``"mean"`` denominator of 0 gives NaN or +-inf, as in PyTorch.""",
)
register(
    "ignore_index",
    """
    ignore_index : int or None, default -100
        Class-index targets equal to it contribute no loss and no gradient
        and are left out of the ``"mean"`` denominator.  ``None``: no
        label is ignored (every label must lie in ``[0, m)``).  Not allowed
        (other than the default or ``None``) with class-probability targets.""",
)
register(
    "label_smoothing",
    """
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's label smoothing ``eps``: the target becomes
        ``(1 - eps) * onehot(y) + eps / m`` (with class weights applied as
        PyTorch does).""",
)
register(
    "z_loss",
    """
    z_loss : float >= 0, default 0.0
        Adds ``z_loss * lse_i**2`` to each (non-ignored) sample's loss.""",
)
register(
    "softcap",
    """
    softcap : float > 0, optional
        Soft-caps the logits as ``softcap * tanh(logits / softcap)`` before
        the softmax (the gradient includes the chain rule).""",
)
register(
    "reduction",
    """
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides the summed loss by the number of (non-ignored)
        samples, or by the total weight when weights are given.""",
)
register(
    "num_threads",
    """
    num_threads : int >= 1, optional
        Threads to use.  ``None`` uses OpenMP's current default (all cores
        unless ``OMP_NUM_THREADS`` or a ``threadpoolctl`` limit says fewer),
        as in every fastxent function that does no matrix product; in
        :func:`fastxent.linear_cross_entropy` and ``SoftmaxRegression.fit``,
        whose products run on BLAS's threads, ``None`` is the calling
        thread instead (their docstrings say why).  Small inputs run on the
        calling thread regardless.""",
)
register(
    "num_threads_dask",
    """
    num_threads : int >= 1 or None, default 1
        Threads to use.  ``None`` uses OpenMP's current default (all cores
        unless ``OMP_NUM_THREADS`` or a ``threadpoolctl`` limit says fewer),
        as in every fastxent function that does no matrix product; in
        :func:`fastxent.linear_cross_entropy` and ``SoftmaxRegression.fit``,
        whose products run on BLAS's threads, ``None`` is the calling
        thread instead (their docstrings say why).  Small inputs run on the
        calling thread regardless.""",
)
# The loss options, as cross_entropy documents them.
group(
    "options",
    "weight",
    "sample_weight",
    "ignore_index",
    "label_smoothing",
    "z_loss",
    "softcap",
    "reduction",
    "num_threads",
)
# Without num_threads: the fused linear functions document their own.
group(
    "loss_options",
    "weight",
    "sample_weight",
    "ignore_index",
    "label_smoothing",
    "z_loss",
    "softcap",
    "reduction",
)
group(
    "dask_options",
    "weight",
    "sample_weight",
    "ignore_index",
    "label_smoothing",
    "z_loss",
    "softcap",
    "reduction",
    "num_threads_dask",
)


def _framework_options(array: str, classes: str, batch: str) -> str:
    """The loss options of the PyTorch and JAX adapters, whose arrays are
    ``array`` (Tensor, Array) and whose shapes are written differently."""
    return f"""
    reduction : {{"mean", "sum", "none"}}, default "mean"
        ``"none"`` returns one loss per sample, else their sum or mean.
    weight : {array} of shape {classes}, optional
        Class weights (no gradient flows to them).
    ignore_index : int, default -100
        Class index that contributes no loss and no gradient.
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's label smoothing.
    sample_weight : {array} of shape {batch}, optional
        Per-sample weights (fastxent's option; no gradient flows to them).
    z_loss : float >= 0, default 0.0
        Adds ``z_loss * logsumexp(z)**2`` to each sample's loss.
    softcap : float > 0, optional
        Soft-caps the logits as ``softcap * tanh(z / softcap)`` first."""


register("jax_options", _framework_options("Array", "(m,)", "``logits.shape[:-1]``"))
register("jax_linear_options", _framework_options("Array", "(V,)", "``x.shape[:-1]``"))
register("torch_linear_options", _framework_options("Tensor", "(V,)", "``input.shape[:-1]``"))
register(
    "torch_lp_options",
    """
    temperature : float > 0, default 1.0
        Divides the (soft-capped) logits before the softmax.
    softcap : float > 0, optional
        Soft-caps the logits as ``softcap * tanh(z / softcap)`` first.
    ignore_index : int or None, default -100
        Rows whose target equals it get 0 (and no gradient); None: no
        label is ignored.""",
)
register(
    "torch_distill_options",
    """
    divergence : {"forward_kl", "reverse_kl", "jsd"}, default "forward_kl"
        The divergence, as above.
    beta : float in (0, 1), default 0.5
        The generalised JSD's weight (0.5: the symmetric Jensen-Shannon
        divergence); unused by the KLs.
    temperature : float > 0, default 1.0
        Divides both logits before the softmax.
    reduction : {"batchmean", "sum", "none"}, default "batchmean"
        ``"batchmean"``: the sum over rows divided by the number of rows
        that count (``torch.nn.KLDivLoss(reduction="batchmean")``);
        ``"none"``: one value per row.
    target : Tensor of int, shape: the rows' batch shape, optional
        Rows whose target equals ``ignore_index`` get 0 (loss and gradient)
        and leave ``"batchmean"``'s count; other values are not used.
    ignore_index : int or None, default -100
        The value of ``target`` that marks a row that does not count.""",
)
