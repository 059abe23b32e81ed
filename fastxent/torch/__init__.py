"""fastxent from PyTorch: differentiable, ``torch.compile``-friendly, zero-copy.

:func:`cross_entropy`, :func:`linear_cross_entropy` and
:class:`CrossEntropyLoss` take CPU tensors with PyTorch's conventions (those
of ``torch.nn.functional.cross_entropy`` and ``linear_cross_entropy``) and
run fastxent's fused kernels on them; :func:`token_logprobs`,
:func:`linear_token_logprobs`, :func:`distillation_loss` and
:func:`linear_distillation_loss` do the same for the per-token
log-probabilities, entropies and distillation divergences (classes on the
last dim).  They are built on ``torch.library`` custom operators
(``torch.ops.fastxent.cross_entropy``, ``linear_cross_entropy``,
``token_logprobs``, ``distillation_loss``, ... and their ``_backward``
operators) with fake kernels and autograd formulas, so
``torch.compile(fullgraph=True)`` traces code that calls them without a
graph break.

How the data moves:

* Contiguous float32/float64 tensors reach the kernels without a copy
  (``Tensor.numpy()`` shares their memory), and the gradient is written by
  the forward kernel straight into a tensor allocated with ``torch.empty``.
  float16 tensors go through as NumPy float16, bfloat16 tensors as
  ``ml_dtypes.bfloat16`` views of their bits (which needs ``ml_dtypes``);
  both are computed in float32 a block of rows at a time and their gradient
  is written in their own dtype.
* The forward of :func:`cross_entropy` computes the loss and the gradient
  with respect to the logits in one fused pass when the logits require a
  gradient (and grad mode is on); the backward multiplies that saved
  gradient by the upstream gradient: a scalar for ``"mean"``/``"sum"``
  (nothing at all when it is 1, as after ``loss.backward()``), one value
  per sample for ``"none"``.  Under ``torch.no_grad()`` or
  ``torch.inference_mode()`` only the loss is computed.
* Inputs with classes on dim 1 and more than two dims, ``(N, C, d1, ...)``,
  are copied once to put the classes last (the layout of the kernels); so
  are non-contiguous logits.

Errors (a CUDA tensor, a label out of range, mismatched shapes) are raised
as ``ValueError``/``TypeError``/``RuntimeError`` before anything is written.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("torch") is None:  # pragma: no cover - depends on the environment
    raise ImportError(
        'fastxent.torch needs PyTorch: pip install "fastxent[torch]" (or pip install torch).'
    )

from ._distill import distillation_loss
from ._linear import linear_cross_entropy
from ._linear_distill import linear_distillation_loss
from ._linear_logprob import linear_token_logprobs
from ._logprob import token_logprobs
from ._loss import CrossEntropyLoss, cross_entropy

__all__ = [
    "CrossEntropyLoss",
    "cross_entropy",
    "distillation_loss",
    "linear_cross_entropy",
    "linear_distillation_loss",
    "linear_token_logprobs",
    "token_logprobs",
]
