"""Fuzzing every public function with hypothesis, in a subprocess.

Hypothesis draws calls to each public function with arbitrary arguments:
every NumPy dtype (ints of every width, unsigned, float16/32/64, longdouble,
complex, bool, object, str/bytes, datetime64/timedelta64, structured),
ranks 0-4, zero-sized axes, Fortran order, negative, zero (broadcast) and
huge (MiB) strides, read-only, unaligned (``np.frombuffer`` at byte offset 1)
and byte-swapped buffers, nested lists, labels at the int64/uint64
extremes, NaN/+-inf/huge/subnormal values in every argument, weights as
lists, scalars or of the wrong length, options of the wrong type or range,
and ``out`` that is fresh, the logits themselves, the target, a view
overlapping the logits, or wrong in shape, dtype, order, writeability or
byte order.

Every call must do exactly one of two things (``check_case``):

* the arguments are valid by the documented rules (``problems``, an
  independent statement of the API's contract): the call returns, with the
  documented types, shapes and dtypes, values that match the float64 oracle
  ``reference.py`` (evaluated on the inputs rounded to the compute dtype,
  which is what the kernels see), and ``out`` when given;
* otherwise it raises ``ValueError`` or ``TypeError`` whose message is
  fastxent's own (no Cython buffer error leaks through).

Any other exception, a crash, or a mismatch fails.  Around every call the
bytes of every input array (and of the whole buffer under it, so a write
just outside a view is caught) are compared before and after: only ``out``
may change, and nothing at all changes when the call raises.

The fused linear functions (``linear_cross_entropy``,
``linear_cross_entropy_with_grad``) are fuzzed the same way: features ``x``
(in ``Case.logits``), the classifier ``W`` (``Case.W``) and the bias drawn
like the logits, with the loss options, ``chunk_size`` and the same
target; their contract is the loss's on the ``x.shape[:-1] + (V,)`` logits
plus the shapes and the one dtype of ``x``, ``W`` and ``b``.  Valid calls
with finite, moderate inputs are compared with the float64 composition
(``_check_linear_result``).

The examples run in a child process (``python -X faulthandler
tests/test_fuzz.py --worker FUNCTION``), so a segfault fails the test with
the Python traceback and the description of the example that crashed
(written to a file before every call) instead of killing pytest.  The child
prints a JSON summary: examples tried, how many were valid, how many raised
which error.

Knobs (environment): ``FASTXENT_FUZZ_EXAMPLES`` examples per function
(default 500; CI), ``FASTXENT_FUZZ_SEED`` an integer seed (default: hypothesis'
derandomized, fixed sequence).  For example
``FASTXENT_FUZZ_EXAMPLES=20000 FASTXENT_FUZZ_SEED=1 python -m pytest
tests/test_fuzz.py -s``.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import os
import subprocess
import sys
import warnings
from collections import Counter

import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:  # the worker runs this file as a script
    sys.path.insert(0, TESTS_DIR)

import reference as ref  # noqa: E402
from helpers import TOL, assert_close  # noqa: E402

import fastxent  # noqa: E402

LOSSES = ("cross_entropy", "cross_entropy_grad", "cross_entropy_with_grad")
ROWS = ("softmax", "log_softmax", "logsumexp")
LINEAR = ("linear_cross_entropy", "linear_cross_entropy_with_grad")
FUNCTIONS = LOSSES + ROWS + LINEAR
WITH_OUT = ("cross_entropy_grad", "cross_entropy_with_grad", "softmax", "log_softmax")

DEFAULT_EXAMPLES = 500

INT_DTYPES = [
    np.dtype(t)
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
]
FLOAT_DTYPES = [np.dtype(t) for t in (np.float16, np.float32, np.float64)]
OTHER_DTYPES = [
    np.dtype(t)
    for t in (
        np.longdouble,
        np.bool_,
        np.complex64,
        np.complex128,
        np.clongdouble,
        object,
        "U3",
        "S3",
        "datetime64[s]",
        "timedelta64[ms]",
        [("a", "<f8")],
    )
]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1

# Cython/NumPy internals that must never reach a user.
LEAKED_MESSAGES = (
    "Buffer dtype mismatch",
    "No matching signature",
    "is not C-contiguous",
    "memoryview",
    "buffer source array is read-only",
    "Cannot convert",
    "fastxent._kernels",  # the kernels' own checks of their arrays
)


@dataclasses.dataclass
class Case:
    fn: str
    logits: object
    target: object = None
    kwargs: dict = dataclasses.field(default_factory=dict)
    W: object = None  # the fused linear functions' linear_weight

    def call(self):
        f = getattr(fastxent, self.fn)
        if self.fn in LINEAR:
            return f(self.logits, self.W, self.target, **self.kwargs)
        if self.fn in LOSSES:
            return f(self.logits, self.target, **self.kwargs)
        return f(self.logits, **self.kwargs)


# ---------------------------------------------------------------------------
# The contract: which arguments are valid (independent of fastxent's code)
# ---------------------------------------------------------------------------


def compute_dtype(dtype):
    """float32/float64 natively, float16 in float32, integers in float64;
    anything else (bool, complex, longdouble wider than 8 bytes, ...) is
    not accepted."""
    if dtype.kind == "f" and dtype.itemsize <= 8:
        return np.dtype(np.float32 if dtype.itemsize <= 4 else np.float64)
    if dtype.kind in "iu":
        return np.dtype(np.float64)
    return None


def output_dtype(dtype):
    """The dtype of the array outputs (gradient, softmax, log-softmax): the
    logits' own for float16 (computed in float32), else the compute dtype.
    Losses and logsumexp are always in the compute dtype."""
    return np.dtype(np.float16) if dtype == np.float16 else compute_dtype(dtype)


def _as_array(obj):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(obj)
    except (ValueError, TypeError):
        return None


def _is_int(v):
    if isinstance(v, (bool, np.bool_)):
        return False
    try:
        operator.index(v)
    except TypeError:
        return False
    return True


def _real_number(v):
    """The float value of a real-number option, or None."""
    if isinstance(v, (bool, np.bool_, str, bytes)) or v is None:
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        try:
            return float(v)
        except OverflowError:
            return float("inf")
    return None


def _weight_problem(value, name, shape, cd=None):
    """Class weights (``cd`` given) are applied in the compute dtype, so they
    must stay finite there and non-zero ones must not underflow to 0.
    Negative weights are valid (PyTorch and scikit-learn semantics)."""
    a = _as_array(value)
    if a is None or a.dtype.kind not in "fiu":
        return f"{name}: not an array of real numbers"
    if a.shape != shape:
        return f"{name}: shape {a.shape} != {shape}"
    with np.errstate(all="ignore"):
        a64 = a.astype(np.float64)
    if not np.all(np.isfinite(a64)):
        return f"{name}: not finite"
    if cd is not None:
        with np.errstate(all="ignore"):
            ac = a64.astype(cd)
        if not np.all(np.isfinite(ac)) or np.any((a64 != 0) & (ac == 0)):
            return f"{name}: not representable in {cd}"
    return None


def _linear_problems(case):
    """The fused linear functions' contract: x, W (V, d) and b (V,) of one
    float dtype, any byte order (float16 computed in float32; integers are
    refused), x of shape (..., d), V >= 1,
    ``chunk_size`` None or an integer >= 1, and the loss's contract on the
    ``x.shape[:-1] + (V,)`` logits."""
    kw = dict(case.kwargs)
    b = kw.pop("linear_bias", None)
    chunk = kw.pop("chunk_size", None)
    arrays = {"x": _as_array(case.logits), "W": _as_array(case.W)}
    if b is not None:
        arrays["linear_bias"] = _as_array(b)
    missing = [k for k, a in arrays.items() if a is None]
    if missing:
        return [f"{', '.join(missing)}: not an array"]
    xa, Wa = arrays["x"], arrays["W"]
    # byte order does not matter (non-native arrays are copied to native)
    dtypes = {a.dtype.newbyteorder("=") for a in arrays.values()}
    if len(dtypes) != 1 or xa.dtype.newbyteorder("=") not in FLOAT_DTYPES:
        return [f"dtypes {sorted(map(str, dtypes))}"]
    if xa.ndim == 0 or Wa.ndim != 2:
        return [f"shapes x {xa.shape}, W {Wa.shape}"]
    V, d = Wa.shape
    why = []
    if xa.shape[-1] != d or V == 0:
        why.append(f"shapes x {xa.shape}, W {Wa.shape}")
    if b is not None and arrays["linear_bias"].shape != (V,):
        why.append(f"linear_bias shape {arrays['linear_bias'].shape}")
    if chunk is not None and (not _is_int(chunk) or operator.index(chunk) < 1):
        why.append(f"chunk_size {chunk!r}")
    if why:
        return why
    logits = np.zeros(xa.shape[:-1] + (V,), dtype=compute_dtype(xa.dtype))
    return problems(Case("cross_entropy", logits, case.target, kw))


def problems(case):
    """Why the call is invalid (an empty list: it must succeed)."""
    if case.fn in LINEAR:
        return _linear_problems(case)
    why = []
    z = _as_array(case.logits)
    if z is None:
        return ["logits: not an array"]
    cd = compute_dtype(z.dtype)
    if cd is None:
        why.append(f"logits: dtype {z.dtype}")
    if z.ndim == 0 or z.shape[-1] == 0:
        return why + ["logits: no class axis"]
    shape, batch, m = z.shape, z.shape[:-1], z.shape[-1]
    kw = case.kwargs
    known = {"out", "num_threads"}
    if case.fn in LOSSES:
        known |= {
            "reduction",
            "weight",
            "sample_weight",
            "ignore_index",
            "label_smoothing",
            "z_loss",
            "softcap",
        }
        if case.fn == "cross_entropy":
            known.discard("out")
    if case.fn == "logsumexp":
        known.discard("out")
    if set(kw) - known:
        why.append(f"unknown keyword {set(kw) - known}")
    if case.fn in LOSSES:
        kind = None
        t = _as_array(case.target)
        if t is None:
            why.append("target: not an array")
        elif t.shape == batch:
            kind = "labels"
            if t.dtype.kind not in "iu":
                why.append(f"labels: dtype {t.dtype}")
        elif t.shape == shape:
            kind = "probs"
            # Integer targets are always class indices: of the logits' own
            # shape they are a mistake, not probabilities.
            if t.dtype.kind != "f":
                why.append(f"probs: dtype {t.dtype}")
        else:
            why.append(f"target: shape {t.shape}")
        ignore = kw.get("ignore_index", -100)
        if ignore is None:  # no label is ignored
            pass
        elif not _is_int(ignore) or not INT64_MIN <= operator.index(ignore) <= INT64_MAX:
            why.append(f"ignore_index {ignore!r}")
        elif kind == "probs" and operator.index(ignore) != -100:
            why.append("ignore_index with probabilities")
        elif kind == "labels" and not why:
            lab = [int(x) for x in t.reshape(-1).tolist()]
            ig = operator.index(ignore)
            if any(not (0 <= x < m or x == ig) for x in lab):
                why.append("labels: out of range")
        if kw.get("reduction", "mean") not in ("mean", "sum", "none") or not isinstance(
            kw.get("reduction", "mean"), str
        ):
            why.append(f"reduction {kw.get('reduction')!r}")
        for name, lo, hi, lo_open in (
            ("label_smoothing", 0, 1, False),
            ("z_loss", 0, None, False),
            ("softcap", 0, None, True),
        ):
            if name not in kw or (name == "softcap" and kw[name] is None):
                continue
            v = _real_number(kw[name])
            if (
                v is None
                or not np.isfinite(v)
                or v < lo
                or (lo_open and v == lo)
                or (hi is not None and v > hi)
            ):
                why.append(f"{name} {kw[name]!r}")
            elif name == "softcap" and cd is not None:
                # Applied in the compute dtype: c and 1/c must be finite there.
                big = float(np.finfo(cd).max)
                if v > big or 1.0 / v > big:
                    why.append(f"softcap {v!r} out of {cd}'s range")
        if kw.get("weight") is not None:
            p = _weight_problem(kw["weight"], "weight", (m,), cd)
            why += [p] if p else []
        if kw.get("sample_weight") is not None:
            p = _weight_problem(kw["sample_weight"], "sample_weight", batch)
            why += [p] if p else []
    nt = kw.get("num_threads")
    if nt is not None and (not _is_int(nt) or operator.index(nt) < 1):
        why.append(f"num_threads {nt!r}")
    out = kw.get("out")
    if out is not None:
        if not isinstance(out, np.ndarray):
            why.append("out: not an ndarray")
        elif (
            out.shape != shape
            or out.dtype != output_dtype(z.dtype)
            or not out.flags.c_contiguous
            or not out.flags.writeable
            or not out.dtype.isnative
            or not out.flags.aligned
        ):
            why.append("out: wrong shape, dtype or layout, not writeable or misaligned")
    return why


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test extra
    st = None

SPECIAL_FLOATS = (
    np.nan,
    np.inf,
    -np.inf,
    0.0,
    -0.0,
    1e30,
    -1e30,
    1e300,
    -1e300,
    3e38,
    1e-310,
    1e-40,
    -88.0,
    710.0,
)


def _finite_float_values(draw, dtype, size):
    """Values of ``dtype`` (a float): mostly moderate, at some scale, with
    a few special values poked in."""
    scale = _choice(draw, [1.0, 1.0, 1.0, 20.0, 1e4, 1e30])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vals = rng.standard_normal(size) * scale
    for _ in range(_choice(draw, (0, 0, 1, 2, 3)) if size else 0):
        vals[draw(st.integers(0, size - 1))] = _choice(draw, SPECIAL_FLOATS)
    with np.errstate(over="ignore"):
        return vals.astype(dtype)


def _values(draw, dtype, shape):
    """An array of ``dtype`` and ``shape`` with adversarial content."""
    size = int(np.prod(shape))
    if dtype.kind == "f" or dtype.kind == "c":
        v = _finite_float_values(draw, np.float64, size)
        with np.errstate(all="ignore"):
            a = v.astype(dtype)
            if dtype.kind == "c" and size:
                a = a + 1j * v[::-1]
        return a.reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        hi = _choice(draw, [3, 100, int(info.max)])
        lo = max(int(info.min), -hi)
        a = rng.integers(lo, hi, size=size, dtype=dtype, endpoint=True)
        for _ in range(_choice(draw, (0, 1, 2)) if size else 0):
            a[draw(st.integers(0, size - 1))] = _choice(draw, (info.min, info.max, 0))
        return a.reshape(shape)
    if dtype.kind == "V":
        return np.zeros(shape, dtype=dtype)
    base = np.arange(size).reshape(shape) % 7
    if dtype.kind == "O":
        return base.astype(np.float64).astype(object)
    return base.astype(dtype)


def _layout(draw, a):
    """The same kind of array in an adversarial memory layout (values may
    change only for the broadcast layout)."""
    if not isinstance(a, np.ndarray):
        return a
    choices = ["C", "C", "F", "reversed", "strided", "readonly", "list"]
    if a.ndim >= 1 and a.shape[0] > 0:
        choices += ["huge_stride", "broadcast"]
    if a.dtype.kind not in "OV" and a.size:
        choices += ["unaligned", "unaligned_readonly"]
    if a.dtype.kind in "fiuc" and a.dtype.itemsize > 1:
        choices.append("byteswapped")
    how = _choice(draw, choices)
    if how == "C":
        return a
    if how == "F":
        return np.asfortranarray(a)
    if how == "readonly":
        r = a.copy()
        r.flags.writeable = False
        return r
    if how == "list":
        return a.tolist()
    if how == "byteswapped":
        return a.astype(a.dtype.newbyteorder())
    if a.ndim == 0:
        return a
    axis = draw(st.integers(0, a.ndim - 1))
    if how == "reversed":
        return np.flip(np.flip(a, axis=axis).copy(), axis=axis)  # same values, stride < 0
    if how == "strided":
        step = _choice(draw, [2, 3, 7])
        big_shape = list(a.shape)
        big_shape[axis] *= step
        big = np.zeros(big_shape, dtype=a.dtype)
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(None, None, step)
        big[tuple(idx)] = a
        return big[tuple(idx)]
    if how == "huge_stride":
        # Consecutive entries of the first axis one MiB apart in memory.
        step = max(1, (1 << 20) // a.itemsize)
        inner = tuple(a.itemsize * int(np.prod(a.shape[k + 1 :])) for k in range(1, a.ndim))
        buf = np.zeros(a.shape[0] * step + int(np.prod(a.shape[1:])), dtype=a.dtype)
        view = np.lib.stride_tricks.as_strided(
            buf, shape=a.shape, strides=(step * a.itemsize,) + inner
        )
        view[...] = a
        return view
    if how == "broadcast":
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(0, 1)
        return np.broadcast_to(a[tuple(idx)], a.shape)  # stride 0, read-only
    # unaligned: a view one byte into a buffer
    buf = bytearray(a.nbytes + 1)
    view = np.frombuffer(buf, dtype=a.dtype, offset=1, count=a.size).reshape(a.shape)
    view[...] = a
    if how == "unaligned_readonly":
        view = np.frombuffer(bytes(buf), dtype=a.dtype, offset=1, count=a.size)
        view = view.reshape(a.shape)
    return view


def _shape(draw):
    rank = _pick(draw, [1, 1, 2, 2, 3, 4], [0])
    if rank == 0:
        return ()
    batch = tuple(_choice(draw, (0, 1, 1, 2, 3, 4)) for _ in range(rank - 1))
    m = _pick(draw, [1, 2, 3, 5, 8, 16, 17, 33, 64], [0])
    return batch + (m,)


def _logits(draw):
    kind = _pick(draw, ["float"] * 4 + ["int"], ["other", "other", "junk"])
    if kind == "junk":
        return _choice(
            draw,
            [
                None,
                "abc",
                3.0,
                [],
                [[1.0, 2.0], [3.0]],
                {"a": 1},
                b"\x00\x01",
                [[1, "x"]],
                object(),
            ],
        )
    shape = _shape(draw)
    dtype = _choice(draw, {"float": FLOAT_DTYPES, "int": INT_DTYPES, "other": OTHER_DTYPES}[kind])
    return _layout(draw, _values(draw, dtype, shape))


def _labels(draw, batch, m, ignore):
    size = int(np.prod(batch))
    dtype = _pick(draw, INT_DTYPES, FLOAT_DTYPES + OTHER_DTYPES[1:])
    if dtype.kind not in "iu":
        return _layout(draw, _values(draw, dtype, batch))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vals = [int(x) for x in rng.integers(0, max(m, 1), size=size)]
    specials = [m, -1, INT64_MIN, INT64_MAX, UINT64_MAX, -100, m - 1]
    if _is_int(ignore):
        specials.append(operator.index(ignore))
    if size and _one_in(draw, 4):
        vals[draw(st.integers(0, size - 1))] = _choice(draw, specials)
    info = np.iinfo(dtype)
    vals = [v if info.min <= v <= info.max else 0 for v in vals]
    return _layout(draw, np.array(vals, dtype=dtype).reshape(batch))


def _probs(draw, shape):
    dtype = _pick(draw, FLOAT_DTYPES * 3 + INT_DTYPES[:2] + OTHER_DTYPES[:1], OTHER_DTYPES[1:4])
    if dtype.kind == "f":
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        p = rng.random(shape)
        size = p.size
        for _ in range(_choice(draw, (0, 0, 1, 2)) if size else 0):
            p.reshape(-1)[draw(st.integers(0, size - 1))] = _choice(
                draw, (np.nan, np.inf, -1.0, 0.0, 1e30, 1e-40)
            )
        with np.errstate(over="ignore"):
            return _layout(draw, p.astype(dtype))
    return _layout(draw, _values(draw, dtype, shape))


def _target(draw, logits, ignore):
    z = _as_array(logits)
    if z is None or z.ndim == 0:
        return _choice(draw, [0, [0], None, np.zeros(2)])
    batch, m = z.shape[:-1], z.shape[-1]
    kind = _pick(draw, ["labels"] * 3 + ["probs"] * 2, ["wrong_shape", "junk"])
    if kind == "labels":
        t = _labels(draw, batch, m, ignore)
        if batch == () and _coin(draw) and isinstance(t, np.ndarray):
            t = t.item() if t.dtype.kind in "iu" else t  # a Python/NumPy scalar label
        return t
    if kind == "probs":
        return _probs(draw, z.shape)
    if kind == "wrong_shape":
        return np.zeros(
            _choice(draw, [batch + (1,), (m,) + batch, batch + (m + 1,), (2,) + z.shape]),
            dtype=np.int64,
        )
    return _choice(draw, [None, "0", object(), [[0], [1, 2]]])


def _choice(draw, seq):
    """An element of ``seq``, uniformly (``st.integers`` would favour the
    first; and index strategies are cached, unlike ``st.sampled_from`` of a
    fresh list)."""
    return seq[draw(st.sampled_from(range(len(seq))))]


def _coin(draw):
    return draw(st.booleans())


def _one_in(draw, k):
    """True about one time in ``k``."""
    return draw(st.sampled_from(range(k))) == k - 1


def _pick(draw, good, bad, one_in=12):
    """One of ``good``, or (about one time in ``one_in``) one of ``bad``."""
    if _one_in(draw, one_in):
        return _choice(draw, bad)
    return _choice(draw, good)


def _class_weights(draw, shape):
    kind = _pick(draw, ["none", "ok"], ["scalar", "wrong_len", "bad_value", "bad_type"])
    if kind == "none":
        return None
    if kind == "scalar":
        return _choice(draw, [1.0, 2, np.float32(0.5)])
    if kind == "wrong_len":
        return np.ones(shape[:-1] + (shape[-1] + 1,) if shape else (2,))
    if kind == "bad_type":
        return _choice(
            draw, ["abc", np.ones(shape, dtype=np.complex128), np.ones(shape, dtype=bool), object()]
        )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Moderate scales up to 1e6, so that weight * probability (up to 1e30)
    # stays in float32 range (the kernels form it in the compute dtype);
    # 1e39 and 1e-50 overflow/underflow float32 (an error there).
    w = rng.random(shape) * _choice(draw, [1.0, 3.0, 1e6, 1e-3, 1e39, 1e-50])
    if w.size and _coin(draw):
        w.reshape(-1)[draw(st.integers(0, w.size - 1))] = 0.0
    if w.size and _one_in(draw, 3):
        # Negative weights (valid); sometimes cancelling to a zero "mean"
        # denominator, which gives inf/NaN as in PyTorch.
        sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
        w = -w if _coin(draw) else w * sign
        if w.size > 1 and _coin(draw):
            w.reshape(-1)[1] = -w.reshape(-1)[0]
    if kind == "bad_value" and w.size:
        w.reshape(-1)[draw(st.integers(0, w.size - 1))] = _choice(draw, [np.nan, np.inf, -np.inf])
    dtype = _choice(draw, [np.float64, np.float32, np.float16, np.int64, np.uint8])
    with np.errstate(all="ignore"):
        w = w.astype(dtype) if np.dtype(dtype).kind == "f" else np.ceil(w).astype(dtype)
    if _coin(draw):
        return w.tolist()
    return _layout(draw, w)


def _options(draw, fn, logits):
    z = _as_array(logits)
    shape = z.shape if z is not None and z.ndim >= 1 else (3,)
    kw = {}
    if fn in LOSSES:
        if _coin(draw):
            kw["reduction"] = _pick(draw, ["mean", "sum", "none"], ["MEAN", "", None, 1, b"sum"])
        if _coin(draw):
            kw["ignore_index"] = _pick(
                draw,
                [-100, 0, 1, -1, INT64_MIN, INT64_MAX, np.int64(2), np.uint8(0)],
                [True, 1.0, "0", 2**63, INT64_MIN - 1, None],
            )
        if _coin(draw):
            kw["weight"] = _class_weights(draw, shape[-1:])
        if _coin(draw):
            kw["sample_weight"] = _class_weights(draw, shape[:-1])
        if _coin(draw):
            kw["label_smoothing"] = _pick(
                draw,
                [0.0, 0.1, 1.0, np.float32(0.25), 1, np.float64(0.5)],
                [-0.1, 1.5, np.nan, np.inf, "abc", None, [0.1, 0.2], 1j],
            )
        if _coin(draw):
            # Huge Python ints (10**400) are a known bug: test_huge_int_option.
            kw["z_loss"] = _pick(
                draw, [0.0, 1e-4, 1.0, 1e3, 2, 1e30], [-1.0, -1e-300, np.nan, np.inf, "x", None]
            )
        if _coin(draw):
            # Soft-caps that over/underflow float32 are a known bug: see
            # test_softcap_outside_float32.
            # 1e300 and 1e-39 are valid for float64 only, 1e-310 for neither.
            kw["softcap"] = _pick(
                draw,
                [None, 0.5, 1.0, 5.0, 30.0, 1e6, 1e-3, 1e300, 1e-39],
                [0.0, -1.0, np.nan, np.inf, "y", 1e-310],
            )
    if _coin(draw):
        kw["num_threads"] = _pick(draw, [None, 1, 2, 3, 8, np.int32(2)], [0, -1, True, 1.5, "2"])
    if fn in WITH_OUT and _coin(draw):
        kw["out"] = None
    if _one_in(draw, 30):
        # Not a keyword of any function (PyTorch's name of what fastxent
        # calls axis=, which test_axis.py covers).
        kw["dim"] = 0
    return kw


def _out(draw, case):
    """Replace ``out`` (when the key is present) by something out-like."""
    z = _as_array(case.logits)
    cd = compute_dtype(z.dtype) if z is not None else None
    if z is None or cd is None or z.ndim == 0:
        case.kwargs["out"] = _choice(draw, [None, np.zeros(3), [0.0]])
        return
    shape = z.shape
    how = _pick(
        draw,
        ["fresh", "fresh", "logits", "target", "overlap"],
        [
            "wrong_shape",
            "wrong_dtype",
            "fortran",
            "readonly",
            "byteswapped",
            "strided",
            "unaligned",
            "list",
        ],
        one_in=6,
    )
    fresh = np.full(shape, np.nan, dtype=output_dtype(z.dtype))
    if how == "fresh":
        out = fresh
    elif how == "logits":
        out = case.logits
    elif how == "target":
        out = case.target
    elif how == "overlap":
        # logits and out both views of one buffer, shifted by k elements.
        k = draw(st.integers(1, max(1, z.size)))
        buf = np.zeros(z.size + k, dtype=cd)
        first = _coin(draw)
        zv = (buf[: z.size] if first else buf[k:]).reshape(shape)
        with np.errstate(all="ignore"):
            zv[...] = z
        case.logits = zv
        out = (buf[k:] if first else buf[: z.size]).reshape(shape)
    elif how == "wrong_shape":
        out = np.zeros(shape + (1,), dtype=cd)
    elif how == "wrong_dtype":
        out = np.zeros(shape, dtype=np.float32 if cd == np.float64 else np.float64)
    elif how == "fortran":
        out = np.asfortranarray(fresh)
    elif how == "readonly":
        out = fresh
        out.flags.writeable = False
    elif how == "byteswapped":
        out = fresh.astype(cd.newbyteorder())
    elif how == "strided":
        out = np.zeros(shape[:-1] + (2 * shape[-1],), dtype=cd)[..., ::2]
    elif how == "unaligned":
        out = np.frombuffer(
            bytearray(fresh.nbytes + 1), dtype=cd, offset=1, count=fresh.size
        ).reshape(shape)
    else:
        out = fresh.tolist()
    case.kwargs["out"] = out


def _moderate_values(draw, dtype, shape):
    """Standard normal values of ``dtype`` (a float) and ``shape``."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.standard_normal(shape).astype(dtype)


def _linear_case(draw, fn):
    """x (batch + (d,)), W (V, d), an optional bias, options, chunk_size and
    a target, each in an adversarial layout; now and then a wrong dtype or
    shape, or not an array at all."""
    dtype = _pick(draw, FLOAT_DTYPES, [np.dtype(np.int64), np.dtype(np.longdouble)])
    batch = tuple(_choice(draw, (0, 1, 2, 3, 5)) for _ in range(_choice(draw, (0, 1, 1, 2))))
    d = _pick(draw, [1, 2, 3, 8], [0])
    V = _pick(draw, [1, 2, 3, 7, 17, 40], [0])
    # Half the examples in moderate values (no special ones), so that the
    # values of many valid calls are checked (_check_linear_result).
    values = _values if _coin(draw) else _moderate_values
    x = _layout(draw, values(draw, dtype, batch + (d,)))
    if _one_in(draw, 30):
        x = _choice(draw, [None, "abc", 3.0, np.float32(1.0)])
    w_dtype = _pick(draw, [dtype], FLOAT_DTYPES)
    w_shape = _pick(draw, [(V, d)], [(V, d + 1), (V,), (1, V, d)])
    W = _layout(draw, values(draw, w_dtype, w_shape))
    standin = np.zeros(batch + (V,))
    kw = _options(draw, "cross_entropy", standin)
    if _coin(draw):
        b_shape = _pick(draw, [(V,)], [(V + 1,), (1, V), ()])
        b_dtype = _pick(draw, [dtype], FLOAT_DTYPES)
        kw["linear_bias"] = _layout(draw, values(draw, b_dtype, b_shape))
    if _coin(draw):
        kw["chunk_size"] = _pick(draw, [None, 1, 2, 3, 64, np.int64(2)], [0, -1, True, 1.5, "2"])
    target = _target(draw, standin, kw.get("ignore_index", -100))
    return Case(fn, x, target, kw, W=W)


if st is not None:

    @st.composite
    def cases(draw, fn):
        if fn in LINEAR:
            return _linear_case(draw, fn)
        logits = _logits(draw)
        kw = _options(draw, fn, logits)
        case = Case(fn, logits, None, kw)
        if fn in LOSSES:
            case.target = _target(draw, logits, kw.get("ignore_index", -100))
        if "out" in kw:
            _out(draw, case)
        return case


# ---------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------


def _rounded(a, cd):
    with np.errstate(all="ignore"):
        return np.asarray(a).astype(cd).astype(np.float64)


def _row_terms(z, kind, t, w, s, ignore, eps, zl, cap):
    """Per-row sizes of the terms that make up each loss and gradient row
    (the kernels' rounding error is a few ulps of these), without the
    sample weight ``s`` and the ``"mean"`` factor: ``(loss_size, grad_size,
    coef)`` where ``coef`` bounds the softmax coefficient ``Q + 2 zl lse``."""
    n, m = z.shape
    with np.errstate(all="ignore"):
        zc = cap * np.tanh(z / cap) if cap else z
        fin = np.where(np.isfinite(zc), zc, 0.0)
        mx = np.max(fin, axis=1) if n else np.zeros(0)
        shifted = np.abs(fin - mx[:, None])
        log_s = np.log(np.maximum(1.0, float(m)))
        wv = np.ones(m) if w is None else w
        if kind == "labels":
            lab = t.reshape(n).astype(np.int64)
            keep = lab != ignore
            q = np.broadcast_to(eps / m * wv, (n, m)).copy()
            q[np.arange(n)[keep], lab[keep]] += (1 - eps) * wv[lab[keep]]
            q[~keep] = 0.0
            q = np.abs(q)  # weights may be negative: sizes are magnitudes
        else:
            q = np.abs(wv * ((1 - eps) * t.reshape(n, m) + eps / m))
            q = np.where(np.isfinite(q), q, 0.0)
        big = np.abs(mx) + np.max(np.abs(fin), axis=1, initial=0.0) + log_s + 1.0
        qsum, qmax = q.sum(axis=1), q.max(axis=1, initial=0.0)
        loss = (
            qsum * (log_s + 1.0) + np.sum(q * shifted, axis=1) + qmax * big + 3.0 * zl * big * big
        )
        grad = qsum + qmax + 4.0 * zl * big + 1e-300
        coef = qsum + 2.0 * zl * big
    return loss, grad, coef


def expected_loss_and_grad(case):
    """The oracle's loss and gradient for a valid loss call, with the
    absolute error allowed on each and the rows allowed to be non-finite
    (``Expected``)."""
    z0 = np.asarray(case.logits)
    cd = compute_dtype(z0.dtype)
    z = _rounded(z0, cd)
    kw = case.kwargs
    t = np.asarray(case.target)
    kind = "labels" if t.shape == z.shape[:-1] else "probs"
    if kind == "probs":
        t = _rounded(t, cd)
    w = None if kw.get("weight") is None else _rounded(kw["weight"], cd)
    s = (
        None
        if kw.get("sample_weight") is None
        else np.asarray(kw["sample_weight"], dtype=np.float64)
    )
    opts = dict(
        reduction=kw.get("reduction", "mean"),
        weight=w,
        sample_weight=s,
        ignore_index=operator.index(kw.get("ignore_index", -100)),
        label_smoothing=float(kw.get("label_smoothing", 0.0)),
        z_loss=float(kw.get("z_loss", 0.0)),
        softcap=kw.get("softcap"),
    )
    with np.errstate(all="ignore"):
        loss, grad = ref.cross_entropy(z, t, **opts)
    batch, m = z.shape[:-1], z.shape[-1]
    z2 = z.reshape(-1, m)
    n = z2.shape[0]
    s_flat = np.ones(n) if s is None else s.reshape(n)
    loss_size, grad_size, coef = _row_terms(
        z2,
        kind,
        t,
        w,
        s_flat,
        opts["ignore_index"],
        opts["label_smoothing"],
        opts["z_loss"],
        None if opts["softcap"] is None else float(opts["softcap"]),
    )
    factor = np.abs(s_flat)
    if opts["reduction"] == "mean":
        if kind == "labels":
            lab = t.reshape(n).astype(np.int64)
            keep = lab != opts["ignore_index"]
            wy = np.ones(n) if w is None else w[np.where(keep, lab, 0)]
            denom = float(np.sum(np.where(keep, s_flat * wy, 0.0)))
        else:
            denom = float(s_flat.sum())
        factor = factor / abs(denom) if denom != 0 else factor
    loss_tol = factor * loss_size
    loss_tol = loss_tol.reshape(batch) if opts["reduction"] == "none" else loss_tol.sum()
    # Rows allowed to come out non-finite where the oracle is finite (or
    # NaN where it is +-inf): garbage in, and no finite answer either way.
    # * An infinite target probability: the kernels' Q log S - sum_k q_k
    #   (z_k - max) form gives inf * 0 = NaN where the oracle gives +-inf.
    # * A softmax coefficient b (Q + 2 zl lse) beyond the compute dtype's
    #   range (huge z_loss times huge logits): the kernels form it in that
    #   dtype, inf * exp(-big) = inf * 0 = NaN where the oracle has 0.
    with np.errstate(all="ignore"):
        overflow = factor * coef > np.finfo(cd).max
    # * A zero "mean" denominator (weights that cancel): every kept row's
    #   gradient is non-finite, its exact inf/NaN pattern PyTorch's
    #   arithmetic (checked against PyTorch fixtures, not here).
    zero_denom = opts["reduction"] == "mean" and denom == 0
    lenient = (
        overflow
        | zero_denom
        | (np.isinf(t.reshape(n, m)).any(axis=1) if kind == "probs" else np.zeros(n, dtype=bool))
    )
    loss_lenient = lenient.reshape(batch) if opts["reduction"] == "none" else lenient.any()
    # The gradient pass takes b = s_i / denominator and a = b (Q + ...) / S
    # in the compute dtype: when they are subnormal there (tiny sample
    # weights), each carries an absolute error of up to one subnormal step.
    grad_tol = (factor * grad_size + 4.0 * _subnormal_steps(cd) * (grad_size + 1.0))[:, None]
    return cd, (loss, loss_tol, loss_lenient), (grad, grad_tol, lenient[:, None])


def _subnormal_steps(cd):
    """The smallest subnormal of ``cd`` in units of assert_close's absolute
    floor (which multiplies the scale it is given)."""
    return float(np.finfo(cd).smallest_subnormal) / TOL[np.dtype(cd)][1]


def _assert_matches(got, expected, cd, tol, lenient, what):
    """``got`` against the float64 ``expected`` (rounded to ``cd``), where
    ``lenient`` entries may be non-finite instead."""
    with np.errstate(all="ignore"):
        e = np.asarray(expected, dtype=np.float64).astype(cd).astype(np.float64)
    g = np.asarray(got, dtype=np.float64)
    e = np.where(np.broadcast_to(lenient, e.shape) & ~np.isfinite(g), g, e)
    assert_close(g, e, cd, tol, what=what)


def _check_loss_value(got, expected, cd, reduction, batch):
    loss, tol, lenient = expected
    if reduction == "none":
        # per-sample losses; a NumPy scalar for one sample (1-d logits)
        kind = np.ndarray if batch else np.generic
        assert isinstance(got, kind) and got.shape == batch, (type(got), np.shape(got))
    else:
        assert isinstance(got, np.generic), type(got)
    assert got.dtype == cd, (got.dtype, cd)
    _assert_matches(got, loss, cd, tol, lenient, f"loss ({reduction})")


def _check_array(got, shape, cd, out):
    assert isinstance(got, np.ndarray), type(got)
    assert got.shape == shape and got.dtype == cd, (got.shape, got.dtype, shape, cd)
    if out is not None:
        assert got is out, "the result is not `out`"


def _half_rounding(got, expected, cd):
    """For float16 outputs (computed in float32, then rounded once): the
    float32 result rounded to float16 is within half an ulp of it, so
    ``got`` may be compared as a float32 result when the expected values
    are first rounded to float16 and half an ulp of slack is allowed.
    Returns ``(got, expected)`` to compare, and the float16 ulps of the
    expected values (the extra absolute error allowed)."""
    with np.errstate(all="ignore"):
        e16 = np.asarray(expected, np.float64).astype(np.float16)
        ulp = np.abs(np.spacing(e16).astype(np.float64))
    return np.asarray(got, np.float64), e16.astype(np.float64), ulp


#: Error allowed on the fused linear functions' results, relative to the
#: sum of the magnitudes of the terms that make each up (the logits then
#: carry errors of a few ulps of |x| |W|^T + |b| <= LINEAR_LOGIT_SIZE).
LINEAR_REL = {np.dtype(np.float32): 1e-2, np.dtype(np.float64): 1e-8}
LINEAR_LOGIT_SIZE = 100.0


def _bounded(arrays, limit):
    """All ``arrays`` (None skipped) finite with magnitudes <= ``limit``."""
    with np.errstate(all="ignore"):
        return all(
            a is None
            or (
                np.all(np.isfinite(np.asarray(a, np.float64)))
                and np.max(np.abs(np.asarray(a, np.float64)), initial=0.0) <= limit
            )
            for a in arrays
        )


def _mean_well_defined(kw, t, batch, V):
    """The ``"mean"`` denominator far from 0 compared with its terms (when
    weights cancel, rounding decides its size and sign)."""
    if kw.get("reduction", "mean") != "mean":
        return True
    n = int(np.prod(batch))
    s = np.ones(n) if kw.get("sample_weight") is None else np.asarray(kw["sample_weight"], float)
    s = s.reshape(n)
    w = np.ones(V) if kw.get("weight") is None else np.asarray(kw["weight"], np.float64)
    if t.shape == batch + (V,):  # probabilities
        terms = s
    else:
        lab = t.reshape(n).astype(np.int64)
        keep = lab != operator.index(kw.get("ignore_index", -100))
        terms = np.where(keep, s * w[np.where(keep, lab, 0)], 0.0)
    return abs(float(terms.sum())) > 1e-6 * float(np.abs(terms).sum())


def _check_linear_result(case, result):
    """Types, shapes and dtypes of a valid fused linear call's results, and,
    for finite inputs whose logits stay moderate, their values against the
    float64 composition (the loss oracle on x @ W.T + b, then the chain
    rule), within LINEAR_REL of the sizes of the terms."""
    x, W = np.asarray(case.logits), np.asarray(case.W)
    b = case.kwargs.get("linear_bias")
    b = None if b is None else np.asarray(b)
    # results in native byte order, whatever the inputs'
    io = x.dtype.newbyteorder("=")
    cd = compute_dtype(io)
    batch, (V, d) = x.shape[:-1], W.shape
    loss = result
    with_grad = case.fn == "linear_cross_entropy_with_grad"
    if with_grad:
        assert isinstance(result, tuple) and len(result) == 4, type(result)
        loss, gx, gW, gb = result
        _check_array(gx, x.shape, io, None)
        _check_array(gW, (V, d), io, None)
        if b is None:
            assert gb is None, type(gb)
        else:
            _check_array(gb, (V,), io, None)
    kw = {k: v for k, v in case.kwargs.items() if k not in ("linear_bias", "chunk_size")}
    reduction = kw.get("reduction", "mean")
    if reduction == "none":
        assert isinstance(loss, np.ndarray if batch else np.generic), type(loss)
        assert loss.shape == batch, (loss.shape, batch)
    else:
        assert isinstance(loss, np.generic), type(loss)
    assert loss.dtype == cd, (loss.dtype, cd)

    t = np.asarray(case.target)
    n = int(np.prod(batch))
    x2, W64 = _rounded(x, cd).reshape(n, d), _rounded(W, cd)
    b64 = 0.0 if b is None else _rounded(b, cd)
    weights = [kw.get("weight"), kw.get("sample_weight")] + ([t] if t.dtype.kind == "f" else [])
    if not (
        _bounded([x2, W64, b64], LINEAR_LOGIT_SIZE)
        and _bounded([np.abs(x2) @ np.abs(W64).T + np.abs(b64)], LINEAR_LOGIT_SIZE)
        and _bounded(weights, 1e6)
        and float(kw.get("z_loss", 0.0)) <= 1.0
        and _mean_well_defined(kw, t, batch, V)
    ):
        return
    z = (x2 @ W64.T + b64).reshape(batch + (V,))
    _, (l_want, l_size, l_len), (G, g_size, g_len) = expected_loss_and_grad(
        Case("cross_entropy_with_grad", z, case.target, kw)
    )
    if np.any(l_len) or np.any(g_len) or not np.all(np.isfinite(G)):
        return
    rel = LINEAR_REL[cd]

    def near(got, want, size, what):
        top = float(np.finfo(cd if what == "loss" else io).max)
        got = np.asarray(got, np.float64)
        # Entries at the edge of the output dtype's range (float16
        # gradients) may come out +-inf.
        edge = (np.abs(want) >= (1 - rel) * top) & (np.sign(got) == np.sign(want))
        err = np.where(edge, 0.0, np.abs(got - want))
        limit = rel * size + 1e-300
        assert np.all(err <= limit), (
            f"{what}: max error/limit {float(np.max(err / limit)):.3g} (limit {rel} of the "
            f"size of the terms)"
        )

    # The oracle's tolerances are the sizes of the terms (assert_close
    # multiplies them by its floor).
    near(loss, l_want, l_size + np.abs(l_want), "loss")
    if not with_grad:
        return
    G2 = G.reshape(n, V)
    G_size = np.abs(G2) + g_size.reshape(n, 1)
    near(gx.reshape(n, d), G2 @ W64, G_size @ np.abs(W64), "grad_x")
    near(gW, G2.T @ x2, G_size.T @ np.abs(x2), "grad_W")
    if b is not None:
        near(gb, G2.sum(axis=0), G_size.sum(axis=0), "grad_b")


def check_result(case, result, out):
    """``result`` of the call ``case`` (whose arrays are copies taken before
    the call) against the oracle."""
    if case.fn in LINEAR:
        _check_linear_result(case, result)
        return
    z0 = np.asarray(case.logits)
    cd = compute_dtype(z0.dtype)
    shape = z0.shape
    if case.fn in LOSSES:
        cd, exp_loss, (grad, grad_tol, grad_lenient) = expected_loss_and_grad(case)
        reduction = case.kwargs.get("reduction", "mean")
        if case.fn == "cross_entropy":
            _check_loss_value(result, exp_loss, cd, reduction, shape[:-1])
            return
        if case.fn == "cross_entropy_with_grad":
            assert isinstance(result, tuple) and len(result) == 2
            _check_loss_value(result[0], exp_loss, cd, reduction, shape[:-1])
            result = result[1]
        _check_array(result, shape, output_dtype(z0.dtype), out)
        g = result.reshape(-1, shape[-1])
        if z0.dtype == np.float16:
            g, grad, ulp = _half_rounding(g, grad.reshape(g.shape), cd)
            grad_tol = grad_tol + ulp / TOL[np.dtype(cd)][1]  # in the floor's units
        _assert_matches(g, grad.reshape(g.shape), cd, grad_tol, grad_lenient, "grad")
        return
    z = _rounded(z0, cd)
    z2 = z.reshape(-1, shape[-1])
    with np.errstate(all="ignore"):
        fin = np.where(np.isfinite(z2), np.abs(z2), 0.0)
        big = 2 * np.max(fin, axis=1, keepdims=True, initial=0.0) + np.log(shape[-1]) + 1
        if case.fn == "logsumexp":
            if len(shape) == 1:  # one row reduces to a NumPy scalar
                assert isinstance(result, np.generic) and result.dtype == cd, type(result)
            else:
                _check_array(result, shape[:-1], cd, None)
            expected = ref.logsumexp(z).astype(cd)
            assert_close(result, expected, cd, big.reshape(shape[:-1]), what="logsumexp")
            return
        _check_array(result, shape, output_dtype(z0.dtype), out)
        fn = ref.softmax if case.fn == "softmax" else ref.log_softmax
        scale = 1.0 if case.fn == "softmax" else big
        got, want = result.reshape(z2.shape), fn(z2).astype(cd)
        if z0.dtype == np.float16:
            got, want, ulp = _half_rounding(got, want, cd)
            scale = scale + ulp / TOL[np.dtype(cd)][1]
        assert_close(got, want, cd, scale, what=case.fn)


# ---------------------------------------------------------------------------
# One call, checked
# ---------------------------------------------------------------------------


def _root(a):
    """The object that owns the memory under an array (a bigger array, a
    bytearray, bytes)."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def _snapshot(obj):
    """The bytes of an array and of the whole buffer under it (or a list's repr)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "O":
            return ("O", repr(obj.tolist()))
        root = _root(obj)
        if isinstance(root, np.ndarray):
            whole = root.tobytes() if root.dtype.kind != "O" else b""
        elif isinstance(root, (bytes, bytearray)):
            whole = bytes(root)
        else:
            whole = b""
        return ("A", obj.tobytes(), whole)
    if isinstance(obj, list):
        return ("L", repr(obj))
    return None


def check_case(case):
    """Call, classify and check one case; returns "ok", "ValueError" or
    "TypeError"."""
    why = problems(case)
    out = case.kwargs.get("out")
    inputs = {
        "logits": case.logits,
        "target": case.target,
        "weight": case.kwargs.get("weight"),
        "sample_weight": case.kwargs.get("sample_weight"),
        "W": case.W,
        "linear_bias": case.kwargs.get("linear_bias"),
        "out": out,
    }
    before = {k: _snapshot(v) for k, v in inputs.items()}
    # Copies of the arguments the oracle needs: out may alias them.
    orig = (
        case
        if why
        else dataclasses.replace(
            case,
            logits=np.array(case.logits),
            target=np.array(case.target) if isinstance(case.target, np.ndarray) else case.target,
        )
    )
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = case.call()
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert why, f"valid call raised {type(e).__name__}: {msg}"
        assert not any(s in msg for s in LEAKED_MESSAGES), f"internal error leaked: {msg}"
        for k, v in inputs.items():
            assert _snapshot(v) == before[k], f"{k} modified by a call that raised"
        return type(e).__name__
    assert not why, f"invalid call accepted ({'; '.join(why)}); returned {result!r}"
    for k, v in inputs.items():
        if k == "out" or (
            isinstance(out, np.ndarray)
            and isinstance(v, np.ndarray)
            and np.may_share_memory(_root(v), out)
        ):
            continue
        assert _snapshot(v) == before[k], f"input {k} modified"
    check_result(orig, result, out)
    return "ok"


def describe(case):
    """A reproducible description of a case (repr of every argument)."""

    def one(v):
        if isinstance(v, np.ndarray):
            return (
                f"ndarray(dtype={v.dtype}, shape={v.shape}, strides={v.strides}, "
                f"C={v.flags.c_contiguous}, writeable={v.flags.writeable}, "
                f"aligned={v.flags.aligned}) {np.array2string(v, threshold=10**6)}"
            )
        return repr(v)

    if case.fn in LINEAR:
        lines = [f"fastxent.{case.fn}(", f"  x={one(case.logits)},", f"  W={one(case.W)},"]
    else:
        lines = [f"fastxent.{case.fn}(", f"  logits={one(case.logits)},"]
    if case.fn in LOSSES + LINEAR:
        lines.append(f"  target={one(case.target)},")
    lines += [f"  {k}={one(v)}," for k, v in case.kwargs.items()] + [")"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The worker (child process) and the tests
# ---------------------------------------------------------------------------


def run_worker(fn, examples, seed, last_path):
    counts = Counter()
    # A test hook of the harness: crash for real after this many examples.
    crash_after = int(os.environ.get("FASTXENT_FUZZ_CRASH_AFTER", "-1"))

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(case=cases(fn))
    def fuzz(case):
        # Rewritten before every call; the page cache keeps it if we crash.
        last.seek(0)
        last.write(describe(case))
        last.truncate()
        last.flush()
        if sum(counts.values()) == crash_after:
            import faulthandler

            faulthandler._sigsegv()
        counts[check_case(case)] += 1

    if seed is not None:
        fuzz = hypothesis_seed(seed)(fuzz)
    with open(last_path, "w") as last:
        fuzz()
    return {"function": fn, "examples": sum(counts.values()), **counts}


def _run_child(fn, examples, seed, tmp_path, env=None):
    last = tmp_path / f"last_{fn}.txt"
    cmd = [
        sys.executable,
        "-X",
        "faulthandler",
        os.path.abspath(__file__),
        "--worker",
        fn,
        str(examples),
        "" if seed is None else str(seed),
        str(last),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=1800, env=dict(os.environ, **(env or {}))
    )
    if proc.returncode != 0:
        last_case = last.read_text() if last.exists() else "(none)"
        err = proc.stderr
        if len(err) > 10000:  # a sanitizer report starts with its verdict
            err = f"{err[:4000]}\n[...]\n{err[-6000:]}"
        pytest.fail(
            f"fuzz child for {fn} exited with {proc.returncode}"
            f"{' (killed by a signal: a crash)' if proc.returncode < 0 else ''}.\n"
            f"--- stderr ---\n{err}\n"
            f"--- last example tried ---\n{last_case}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_fuzz(fn, tmp_path):
    pytest.importorskip("hypothesis")
    examples = int(os.environ.get("FASTXENT_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
    seed = os.environ.get("FASTXENT_FUZZ_SEED")
    summary = _run_child(fn, examples, None if not seed else int(seed), tmp_path)
    print(f"fuzz {json.dumps(summary)}")
    assert summary["examples"] >= examples * 0.9
    # Both sides of the contract were exercised (typically 40-85% valid).
    assert summary.get("ok", 0) >= examples * 0.2, summary
    assert summary.get("ValueError", 0) + summary.get("TypeError", 0) >= examples * 0.05


# Under AddressSanitizer the deliberate SIGSEGV below is ASan's to report: it
# prints a SEGV report and exits with status 1 (on some kernels after a
# "nested bug" abort) instead of dying by the signal, and .ci/sanitize.sh
# rightly fails on any ASan report.  The normal run checks the harness.
_SANITIZED = "-fsanitize=" in fastxent._kernels.build_cflags()


@pytest.mark.skipif(_SANITIZED, reason="a deliberate segfault is a sanitizer report")
def test_child_catches_a_crash(tmp_path):
    """The harness itself: a child that segfaults in the middle of the
    examples fails the test (pytest survives) with the Python traceback and
    the example it was about to run."""
    with pytest.raises(pytest.fail.Exception) as info:
        _run_child("softmax", 50, None, tmp_path, env={"FASTXENT_FUZZ_CRASH_AFTER": "5"})
    msg = str(info.value)
    assert "killed by a signal" in msg and "Segmentation fault" in msg, msg
    assert "--- last example tried ---\nfastxent.softmax(" in msg, msg


# ---- regressions for bugs the fuzzer found (fixed) ----


def test_huge_int_option():
    """float(10**400) raises OverflowError; the option check turns it into a
    ValueError."""
    with pytest.raises(ValueError):
        fastxent.cross_entropy(np.zeros((2, 3)), [0, 1], z_loss=10**400)


def test_weight_overflowing_float32():
    """Weights finite in float64 but inf in float32 (1e39): a clear error or
    the float64 answer, never NaN."""
    z = np.array([[0.5, 1.0, -1.0]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            got = fastxent.cross_entropy(z, [0], weight=[1e39, 1.0, 1.0])
        except ValueError:
            return
    expected, _ = ref.cross_entropy(z, [0], weight=[1e39, 1.0, 1.0])
    assert np.isclose(got, expected, rtol=1e-5)


def test_weight_underflowing_float32():
    """A positive weight that underflows to 0 in float32 (1e-46) would make a
    'mean' denominator 0 (NaN loss): a clear error instead."""
    z = np.array([[0.0, 1.0]], dtype=np.float32)
    try:
        got = fastxent.cross_entropy(z, [0], weight=[1e-46, 1.0])
    except ValueError:
        return
    expected, _ = ref.cross_entropy(z, [0], weight=[1e-46, 1.0])
    assert np.isclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "dtype,cap", [(np.float32, 1e300), (np.float32, 1e-40), (np.float64, 1e-310)]
)
def test_softcap_outside_compute_dtype(dtype, cap):
    """c or 1/c not finite in the compute dtype: an error, not NaN."""
    z = np.array([[0.5, 1.0, -1.0]], dtype=dtype)
    try:
        loss, grad = fastxent.cross_entropy_with_grad(z, [0], softcap=cap)
    except ValueError:
        return
    exp_loss, exp_grad = ref.cross_entropy(z, [0], softcap=cap)
    np.testing.assert_allclose(loss, exp_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, exp_grad, rtol=1e-5, atol=1e-6)


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _fn, _n, _seed, _last = sys.argv[2:]
    print(json.dumps(run_worker(_fn, int(_n), int(_seed) if _seed else None, _last)))
