"""fastxent: fast, fused softmax cross-entropy for NumPy.

Cython + OpenMP kernels compute the row logsumexp, the loss and the gradient
``softmax(Z) - Y`` in one pass over the logits, with a vectorised exp that
keeps -inf and NaN semantics.  See :func:`cross_entropy_with_grad`.
"""

from typing import TYPE_CHECKING

from ._config import show_config
from ._distill import distillation_loss_with_grad, linear_distillation_loss_with_grad
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad
from ._logprob import (
    linear_token_logprobs,
    linear_token_logprobs_vjp,
    token_logprobs,
    token_logprobs_vjp,
)
from ._loss import cross_entropy, cross_entropy_grad, cross_entropy_with_grad
from ._softmax import log_softmax, logsumexp, softmax
from ._version import __version__

if TYPE_CHECKING:
    from .estimators import SoftmaxRegression as SoftmaxRegression

__all__ = [
    "__version__",
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "distillation_loss_with_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "linear_distillation_loss_with_grad",
    "linear_token_logprobs",
    "linear_token_logprobs_vjp",
    "log_softmax",
    "logsumexp",
    "show_config",
    "softmax",
    "token_logprobs",
    "token_logprobs_vjp",
]


def __getattr__(name: str) -> object:
    # fastxent.estimators, fastxent.metrics, fastxent.objectives,
    # fastxent.dask, fastxent.torch, fastxent.jax and fastxent.bench (the
    # benchmark harness) load on first access, so
    # that `import fastxent` imports NumPy only (never scikit-learn, SciPy,
    # xgboost, lightgbm, Dask, PyTorch or JAX); so does
    # fastxent.SoftmaxRegression (fastxent.estimators'), which is not in
    # __all__ so that `from fastxent import *` stays NumPy-only too.  A
    # missing extra is an ImportError that names it.
    if name in ("estimators", "metrics", "objectives", "dask", "torch", "jax", "bench"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name == "SoftmaxRegression":
        from .estimators import SoftmaxRegression

        return SoftmaxRegression
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
