# Stub for the compiled module fastxent/_kernels.pyx (checked against the
# built extension by ``python -m mypy.stubtest fastxent`` in .ci/lint.sh).
#
# The kernels are Cython fused functions: ``floating`` arrays are float32 or
# float64 (one dtype per call), labels int32 or int64, and every array is a
# typed memoryview (C-contiguous; outputs writeable).  Callers are the
# validating wrappers in _loss.py and _softmax.py, which guarantee all that.
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Floating = NDArray[np.floating[Any]]
_Labels = NDArray[np.signedinteger[Any]]
_F64 = NDArray[np.float64]

# Cython adds a (here empty) table of the docstrings that hold doctests.
__test__: dict[str, str]

def cross_entropy_labels(
    z: _Floating,
    labels: _Labels,
    class_weight: _Floating,
    sample_weight: _F64,
    loss_out: _F64,
    grad_out: _Floating,
    want_grad: bool,
    ignore_index: int,
    smoothing: float,
    zloss: float,
    softcap: float,
    grad_denom: float,
    num_threads: int,
) -> int: ...
def cross_entropy_probs(
    z: _Floating,
    target: _Floating,
    class_weight: _Floating,
    sample_weight: _F64,
    loss_out: _F64,
    grad_out: _Floating,
    want_grad: bool,
    smoothing: float,
    zloss: float,
    softcap: float,
    grad_denom: float,
    num_threads: int,
) -> int: ...
def softmax_rows(
    z: _Floating,
    out: _Floating,
    want_out: bool,
    take_log: bool,
    lse_out: _F64,
    num_threads: int,
) -> None: ...
def check_labels(
    labels: _Labels,
    m: int,
    ignore_index: int,
    class_weight: _F64,
    sample_weight: _F64,
) -> tuple[int, float]: ...
def exp_array(x: _Floating, out: _Floating) -> None: ...
def tanh_array(x: _Floating, out: _Floating) -> None: ...
def openmp_enabled() -> bool: ...
def max_threads() -> int: ...
def simd_dispatch() -> str: ...
def build_cflags() -> str: ...
