"""The validated loss spec: one object, with the public option names, that
every front end (the loss functions, the fused linear cross-entropy, the
Dask blocks, the boosting objectives, the estimator and the PyTorch/JAX
adapters through them) builds once with :func:`loss_spec` and hands to the
kernels, which take its fields by keyword.

Adding a loss option means a field here, its check in ``_validation``, its
parameter doc in ``_docs`` and its meaning in ``_options.h`` (the one C
header every kernel calls): see the architecture notes in
``docs/contributing.md``.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernels
from . import _validation as v
from ._typing import FloatArray

# ignore_index=None ("no label is ignored") as the kernels see it: a value
# no valid label has; an int64 label equal to it is reported as out of
# range before the kernels run (see LossSpec.check_no_ignore).
NO_IGNORE = -(2**63)


class LossSpec(NamedTuple):
    """A validated target and loss options, for rows of ``m`` classes."""

    target_kind: Literal["labels", "probs"]
    target: NDArray[Any]  # (n,) int32/int64 labels, or (n, m) probabilities
    ignore_index: int | None  # None: no label is ignored
    label_smoothing: float
    z_loss: float
    softcap: float  # 0.0: off
    weight: FloatArray | None
    sample_weight: NDArray[np.float64] | None

    @property
    def kernel_ignore_index(self) -> int:
        return NO_IGNORE if self.ignore_index is None else self.ignore_index

    def kernel_options(self) -> dict[str, Any]:
        """The option keywords of the kernel entry points."""
        opts: dict[str, Any] = dict(
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap
        )
        if self.target_kind == "labels":
            opts["ignore_index"] = self.kernel_ignore_index
        return opts

    def label_error(self, position: int, m: int) -> v.LabelError:
        """The one bad-label error: the label at flat ``position``."""
        return v.LabelError(int(self.target[position]), position, m, self.ignore_index)

    def check_no_ignore(self, m: int) -> None:
        """With ignore_index=None, an int64 label equal to NO_IGNORE is out of
        range (the kernels would take it for the ignored value)."""
        t = self.target
        if self.ignore_index is None and t.dtype == np.int64 and t.size:
            hit = t == NO_IGNORE
            if hit.any():
                raise self.label_error(int(np.argmax(hit)), m)

    def run(
        self,
        z: NDArray[Any],
        *,
        loss_out: NDArray[np.float64] | None,
        grad_out: NDArray[Any] | None,
        hess_out: NDArray[Any] | None = None,
        grad_denom: float,
        num_threads: int,
        half: int = 0,
    ) -> tuple[float, float]:
        """The loss kernel on logits ``z`` (n, m); returns ``(total,
        denominator)`` (see ``_kernels.cross_entropy_labels``), raising the
        bad-label error before anything is written."""
        m = z.shape[-1]
        common = dict(
            class_weight=self.weight,
            sample_weight=self.sample_weight,
            loss_out=loss_out,
            grad_out=grad_out,
            hess_out=hess_out,
            grad_denom=grad_denom,
            num_threads=num_threads,
            half=half,
            **self.kernel_options(),
        )
        if self.target_kind == "labels":
            self.check_no_ignore(m)
            bad, total, denom = _kernels.cross_entropy_labels(z, self.target, **common)
            if bad >= 0:
                raise self.label_error(bad, m)
        else:
            _, total, denom = _kernels.cross_entropy_probs(z, self.target, **common)
        return total, denom

    def mean_denominator(self, m: int) -> float:
        """The "mean" denominator of these rows: ``sum_i s_i w[y_i]`` over the
        kept rows for class indices (after checking every label), ``sum_i
        s_i`` (or ``n``) for probabilities."""
        if self.target_kind == "labels":
            self.check_no_ignore(m)
            bad, denom = _kernels.mean_denominator(
                self.target, self.weight, self.sample_weight, self.kernel_ignore_index, m
            )
            if bad >= 0:
                raise self.label_error(bad, m)
            return float(denom)
        if self.sample_weight is not None:
            return float(_kernels.pairwise_sum(self.sample_weight))
        return float(self.target.shape[0])


def loss_spec(
    target: ArrayLike,
    shape: tuple[int, ...],
    dtype: np.dtype[np.floating[Any]],
    *,
    weight: ArrayLike | None,
    sample_weight: ArrayLike | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    keep: np.dtype[Any] | None = None,
    axis_hint: bool = False,
) -> LossSpec:
    """Validate the target and every loss option against logits of ``shape``
    computed in ``dtype``.  Probabilities of dtype ``keep`` (the logits'
    half-precision dtype) stay in it, as uint16 bits.  ``axis_hint``: a
    target of the wrong shape says which ``axis=`` would fit it."""
    kind, t = v.as_labels_or_probs(target, shape, dtype, keep, axis_hint)
    return LossSpec(
        target_kind=kind,
        target=t,
        ignore_index=v.ignore_index(ignore_index, kind),
        label_smoothing=v.float_option(label_smoothing, "label_smoothing", 0.0, 1.0),
        z_loss=v.float_option(z_loss, "z_loss", 0.0),
        softcap=v.softcap(softcap, dtype),
        weight=v.class_weight(weight, shape[-1], dtype),
        sample_weight=v.sample_weight(sample_weight, shape[:-1]),
    )
