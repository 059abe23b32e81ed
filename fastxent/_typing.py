"""Type aliases shared by the public API's annotations."""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

#: A loss under ``reduction="mean"``/``"sum"``: a NumPy scalar of the compute
#: dtype (float32 or float64).
FloatScalar: TypeAlias = np.floating[Any]
#: An array of the compute dtype (float32 or float64).
FloatArray: TypeAlias = NDArray[np.floating[Any]]
