"""The benchmark harness behind ``python -m fastxent bench`` and ``benchmarks/``.

One module owns what a measurement of fastxent's loss + gradient is made
of, so that the command-line table and the pytest-benchmark suite time the
same things on the same data:

* the shapes: ``SHAPES`` (the suite's and ``bench --large``'s), and
  ``DEFAULT_SHAPES``, the same classes with fewer rows (the command's
  default, which fits a laptop); ``QUICK_SHAPES`` for a smoke run;
* the data: :func:`make_case` and :class:`Case` (standard-normal logits
  times ``LOGIT_SCALE``, uniform labels, a fixed seed);
* the yardsticks: :func:`numpy_loss_grad` (the plain NumPy way) and
  :func:`copy_floor` (a copy of the logits: the least any loss + gradient
  costs);
* the peers: ``PEERS``, a registry of other libraries' loss + gradient
  (torch, JAX, scikit-learn), each imported only when asked for;
  :func:`peer_loss_grad` builds one's callable and :func:`missing_peer_note`
  says how to install one that is missing;
* the timing of the command (:func:`time_call`, :func:`run_bench`), its
  table (:func:`format_table`), its JSON (:func:`write_json`) and the
  bandwidth figure both draw (:func:`figure`, :func:`plot`; matplotlib is
  imported only there).

It imports NumPy and fastxent only; ``import fastxent`` does not import it
(``fastxent.bench`` loads on first access).  The pytest-benchmark glue
(``measure``, groups, fixtures) stays in ``benchmarks/``.

Examples
--------
>>> import fastxent
>>> from fastxent import bench
>>> z, y = bench.make_case(64, 10, "float32")
>>> loss, grad = bench.numpy_loss_grad(z, y)
>>> bool(abs(loss - fastxent.cross_entropy(z, y)) < 1e-5)
True
"""

# The public names, and (as `X as X`) names outside __all__ that were
# attributes of fastxent.bench when it was one module: DEFAULT_MAX_ELEMENTS
# (the docs name it), the memory estimate's and the timing's constants and
# the type aliases.
from ._cases import CALL_ARRAYS as CALL_ARRAYS
from ._cases import CASE_ARRAYS as CASE_ARRAYS
from ._cases import DEFAULT_MAX_ELEMENTS as DEFAULT_MAX_ELEMENTS
from ._cases import (
    DEFAULT_SHAPES,
    DTYPES,
    LOGIT_SCALE,
    QUICK_SHAPES,
    SHAPES,
    Case,
    case_bytes,
    linear_chunk_rows,
    make_case,
    peak_bytes,
    physical_memory,
)
from ._cases import ROW_VALUES as ROW_VALUES
from ._peers import (
    PEERS,
    Peer,
    missing_peer_note,
    numpy_loss_grad,
    peer_loss_grad,
    peer_version,
)
from ._peers import LossGrad as LossGrad
from ._report import build_info, figure, format_table, machine, plot, write_json
from ._timing import MIN_TIMING_S as MIN_TIMING_S
from ._timing import Timing as Timing
from ._timing import copy_floor, kernel_exps, run_bench, time_call

__all__ = [
    "DEFAULT_SHAPES",
    "DTYPES",
    "LOGIT_SCALE",
    "PEERS",
    "QUICK_SHAPES",
    "SHAPES",
    "Case",
    "Peer",
    "build_info",
    "case_bytes",
    "copy_floor",
    "figure",
    "format_table",
    "kernel_exps",
    "linear_chunk_rows",
    "machine",
    "make_case",
    "missing_peer_note",
    "numpy_loss_grad",
    "peak_bytes",
    "peer_loss_grad",
    "peer_version",
    "physical_memory",
    "plot",
    "run_bench",
    "time_call",
    "write_json",
]
