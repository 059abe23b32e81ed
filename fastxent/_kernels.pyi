# Stub for the compiled module fastxent/_kernels.pyx (checked against the
# built extension by ``python -m mypy.stubtest fastxent`` in .ci/lint.sh).
#
# The loss and softmax kernels take ndarrays: ``floating`` arrays are
# float32 or float64 (one dtype per call), labels int32 or int64, every
# array C-contiguous, aligned and native-endian (outputs writeable), checked
# with NumPy's C API.  Callers are the validating wrappers in _loss.py and
# _softmax.py, which guarantee all that.  The test hooks (exp_array, ...)
# are Cython fused functions over typed memoryviews.
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Floating = NDArray[np.floating[Any]]
# Logits and outputs: float32/float64, or the uint16 bits of float16/bfloat16.
_Values = NDArray[Any]
_Labels = NDArray[np.signedinteger[Any]]
_F64 = NDArray[np.float64]

# Cython adds a (here empty) table of the docstrings that hold doctests.
__test__: dict[str, str]

def cross_entropy_labels(
    z: _Values,
    labels: _Labels,
    class_weight: _Floating | None,
    sample_weight: _F64 | None,
    loss_out: _F64 | None,
    grad_out: _Values | None,
    hess_out: _Values | None,
    *,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    grad_denom: float,
    num_threads: int,
    half: int = ...,
) -> tuple[int, float, float]: ...
def cross_entropy_probs(
    z: _Values,
    target: _Values,
    class_weight: _Floating | None,
    sample_weight: _F64 | None,
    loss_out: _F64 | None,
    grad_out: _Values | None,
    hess_out: _Values | None,
    *,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    grad_denom: float,
    num_threads: int,
    half: int = ...,
) -> tuple[int, float, float]: ...
def mean_denominator(
    labels: _Labels,
    class_weight: _Floating | None,
    sample_weight: _F64 | None,
    ignore_index: int,
    m: int,
) -> tuple[int, float]: ...
def pairwise_sum(x: _F64, num_threads: int = 1) -> float: ...
def linear_cross_entropy_chunks(
    x: _Floating,
    W: _Floating,
    bias: _Floating | None,
    labels: _Labels | None,
    target: _Values | None,
    class_weight: _Floating | None,
    sample_weight: _F64 | None,
    buf: _Floating,
    loss_out: _F64,
    grad_x: _Floating | None,
    grad_W: _Floating | None,
    grad_b: _F64 | None,
    gemm: object,
    *,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    grad_denom: float,
    num_threads: int,
) -> float: ...
def softmax_rows(
    z: _Values,
    out: _Values | None,
    take_log: bool,
    lse_out: _F64 | None,
    num_threads: int,
    half: int = ...,
) -> None: ...
def loss_rows_unchecked(
    z: _Floating,
    labels: NDArray[np.int64],
    loss_out: _F64 | None,
    grad_out: _Floating | None,
    ignore_index: int,
    num_threads: int,
) -> float: ...
def exp_array(x: _Floating, out: _Floating) -> None: ...
def expneg_array(x: _Floating, out: _Floating) -> None: ...
def tanh_array(x: _Floating, out: _Floating) -> None: ...
def log1p_recip_unit_array(t: _F64, log1p_out: _F64, recip_out: _F64) -> None: ...
def half_to_float(src: NDArray[np.uint16], dst: NDArray[np.float32], bf16: bool) -> None: ...
def float_to_half(src: NDArray[np.float32], dst: NDArray[np.uint16], bf16: bool) -> None: ...
def openmp_enabled() -> bool: ...
def max_threads() -> int: ...
def default_threads() -> int: ...
def force_kernel(name: str) -> str: ...
def kernel_for(labels: bool, m: int, softcap: float, dtype: str) -> str: ...
def governor_state() -> tuple[int, float, float]: ...
def governor_reset() -> None: ...
def governor_report(started_ago: float, busy: list[float]) -> None: ...
def forked_child() -> bool: ...
def simd_dispatch() -> str: ...
def build_cflags() -> str: ...

SERIAL_BELOW: int

# _kernels_logprob.pxi: log-probabilities, entropy, distillation
def token_logprob_rows(
    z: _Floating,
    labels: NDArray[np.int64],
    ignore_index: int,
    softcap: float,
    temperature: float,
    lp_out: _F64,
    ent_out: _F64 | None,
    grad_logprobs: _F64 | None,
    grad_entropy: _F64 | None,
    grad_out: _Floating | None,
    num_threads: int,
) -> None: ...
def divergence_rows(
    student: _Floating,
    teacher: _Floating,
    labels: NDArray[np.int64] | None,
    ignore_index: int,
    divergence: int,
    beta: float,
    temperature: float,
    grad_denom: float,
    loss_out: _F64,
    grad_out: _Floating | None,
    num_threads: int,
) -> None: ...
def linear_logprob_chunks(
    x: _Floating,
    W: _Floating,
    bias: _Floating | None,
    labels: NDArray[np.int64],
    ignore_index: int,
    softcap: float,
    temperature: float,
    lp_out: _F64,
    ent_out: _F64 | None,
    grad_logprobs: _F64 | None,
    grad_entropy: _F64 | None,
    buf: _Floating,
    grad_x: _Floating | None,
    grad_W: _Floating | None,
    grad_b: _F64 | None,
    gemm: object,
    num_threads: int,
) -> None: ...
def linear_divergence_chunks(
    x: _Floating,
    W: _Floating,
    bias: _Floating | None,
    tx: _Floating,
    tW: _Floating,
    tbias: _Floating | None,
    labels: NDArray[np.int64] | None,
    ignore_index: int,
    divergence: int,
    beta: float,
    temperature: float,
    grad_denom: float,
    loss_out: _F64,
    buf: _Floating,
    tbuf: _Floating,
    grad_x: _Floating | None,
    grad_W: _Floating | None,
    grad_b: _F64 | None,
    gemm: object,
    num_threads: int,
) -> None: ...
