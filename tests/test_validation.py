"""Bad input: a ValueError/TypeError whose message says what was expected,
nothing modified (inputs and ``out``), never a crash -- for every public
function the argument applies to (the "bad input" and option-validation promises)."""

import numpy as np
import pytest
from helpers import snapshot

import fastxent

LOSS_FUNCS = {
    "cross_entropy": fastxent.cross_entropy,
    "cross_entropy_grad": fastxent.cross_entropy_grad,
    "cross_entropy_with_grad": fastxent.cross_entropy_with_grad,
}
ROW_FUNCS = {
    "softmax": fastxent.softmax,
    "log_softmax": fastxent.log_softmax,
    "logsumexp": fastxent.logsumexp,
}
OUT_FUNCS = {
    "cross_entropy_grad": fastxent.cross_entropy_grad,
    "cross_entropy_with_grad": fastxent.cross_entropy_with_grad,
    "softmax": fastxent.softmax,
    "log_softmax": fastxent.log_softmax,
}
N, M = 3, 4
REDUCTIONS = ("mean", "sum", "none")


def _z():
    return np.linspace(-2, 2, N * M).reshape(N, M)


def _call(fn, *args, **kwargs):
    """Call ``fn`` on ``args``; a loss function gets valid labels unless
    ``args`` brings its own target."""
    if fn in LOSS_FUNCS.values() and len(args) == 1:
        args = args + (np.array([0, 1, 2]),)
    return fn(*args, **kwargs)


def raises_unchanged(exc, match, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises ``exc`` matching ``match`` and leaves
    every array argument (out included) as it was."""
    arrays = [a for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]
    before = snapshot(*arrays)
    with pytest.raises(exc, match=match):
        _call(fn, *args, **kwargs)
    assert snapshot(*arrays) == before, "an argument was modified"


ALL_FUNCS = {**LOSS_FUNCS, **ROW_FUNCS}


# ---- logits ----


@pytest.mark.parametrize("name", list(ALL_FUNCS))
@pytest.mark.parametrize(
    "logits, exc, match",
    [
        (np.float64(1.0), ValueError, r"at least one dimension .*0-d"),
        (np.zeros((3, 0)), ValueError, r"at least one class \(m >= 1\); got shape \(3, 0\)"),
        (np.zeros((3, 4), complex), TypeError, r"real floating or integer.*dtype=complex128"),
        (np.zeros((3, 4), bool), TypeError, r"real floating or integer.*dtype=bool"),
        (np.zeros((3, 4), object), TypeError, r"real floating or integer.*dtype=object"),
        (np.full((3, 4), "a"), TypeError, r"real floating or integer.*dtype=<U1"),
        (np.zeros((3, 4), np.longdouble), TypeError, r"float32 and float64.*dtype=float128"),
    ],
    ids=["0d", "m0", "complex", "bool", "object", "str", "longdouble"],
)
def test_bad_logits(name, logits, exc, match):
    if logits.dtype == np.longdouble and np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("longdouble is float64 here")
    fn = ALL_FUNCS[name]
    if name in LOSS_FUNCS:
        target = np.zeros(logits.shape[:-1], dtype=np.int64) if logits.ndim else 0
        raises_unchanged(exc, match, fn, logits, target)
    else:
        raises_unchanged(exc, match, fn, logits)


# ---- targets ----


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize(
    "target, exc, match",
    [
        (
            np.zeros(4, np.int64),
            ValueError,
            r"target must have shape \(3,\) \(class indices\) or \(3, 4\) \(class probabilities\)"
            r".*got shape \(4,\)",
        ),
        (np.zeros((3, 5)), ValueError, r"got shape \(3, 5\)"),
        (np.zeros((1, 3), np.int64), ValueError, r"got shape \(1, 3\)"),
        (np.int64(0), ValueError, r"got shape \(\)"),
        (np.zeros((3, 4, 1)), ValueError, r"got shape \(3, 4, 1\)"),
        (
            np.array([0.0, 1.0, 2.0]),
            TypeError,
            r"class-index targets must be integers; got dtype=float64",
        ),
        (np.array([0.0, 1.0, 2.0], np.float32), TypeError, r"must be integers.*float32"),
        (np.array([True, False, True]), TypeError, r"class-index targets must be integers"),
        (np.array(["a", "b", "c"]), TypeError, r"class-index targets must be integers"),
        (np.zeros((3, 4), bool), TypeError, r"class-probability targets must be floating-point"),
        (np.zeros((3, 4), complex), TypeError, r"class-probability targets must be floating"),
        (
            np.eye(4, dtype=np.int64)[[0, 1, 3]],
            ValueError,
            r"integer targets are class indices.*shape \(3,\).*target\.argmax\(-1\)",
        ),
        (np.zeros((3, 4), np.uint8), ValueError, r"integer \(uint8\) array of the logits' own"),
        (
            np.array([0, 1, 4]),
            ValueError,
            r"label outside \[0, 4\).*ignore_index=-100: 4 at flat position 2",
        ),
        (np.array([0, -1, 2], np.int32), ValueError, r"outside \[0, 4\).*-1 at flat position 1"),
        (np.array([0, 1, -100 - 1]), ValueError, r"-101 at flat position 2"),
        (np.array([7, 9, 0], np.uint8), ValueError, r"7 at flat position 0"),
        (
            np.array([0, 2**63 + 5, 1], np.uint64),
            ValueError,
            r"outside \[0, 4\).*9223372036854775813 at flat position 1",
        ),
    ],
    ids=[
        "short",
        "wide",
        "rank",
        "scalar",
        "rank+1",
        "float",
        "float32",
        "bool",
        "str",
        "bool-probs",
        "complex-probs",
        "int-onehot",
        "uint8-probs",
        "too-big",
        "negative",
        "near-ignore",
        "uint8",
        "uint64-huge",
    ],
)
def test_bad_targets(name, target, exc, match):
    out = np.full((N, M), 7.0) if name != "cross_entropy" else None
    kwargs = {} if out is None else {"out": out}
    raises_unchanged(exc, match, LOSS_FUNCS[name], _z(), target, **kwargs)


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_binary_one_logit_per_sample_is_an_error(name, label_dtype):
    """The common binary mistake: one logit per sample, shape (n,), with n
    integer labels.  Read as one sample of n classes with integer
    "probabilities" it used to return a number; it is an error that says how
    to pass a binary problem."""
    z = np.array([0.3, -1.2, 2.0, 0.1])
    y = np.array([1, 0, 1, 1], dtype=label_dtype)
    raises_unchanged(
        ValueError,
        r"ONE sample of 4 classes.*np\.stack\(\[np\.zeros_like\(z\), z\], axis=-1\)",
        LOSS_FUNCS[name],
        z,
        y,
    )
    # ...and the way the message says works: the two-class logits.
    z2 = np.stack([np.zeros_like(z), z], axis=-1)
    LOSS_FUNCS[name](z2, y)


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
def test_integer_one_hot_matrix_is_an_error(name):
    """Integer targets are always class indices: a one-hot integer matrix is
    not taken as probabilities; the message names both fixes, and both give
    the same loss."""
    z = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    onehot = np.array([[1, 0, 0], [0, 0, 1]])
    raises_unchanged(
        ValueError, r"target\.argmax\(-1\).*floating-point array", LOSS_FUNCS[name], z, onehot
    )
    by_index = fastxent.cross_entropy(z, onehot.argmax(-1))
    by_probs = fastxent.cross_entropy(z, onehot.astype(np.float64))
    assert by_index == pytest.approx(by_probs, rel=1e-15)


def test_string_labels_get_an_encoding_hint():
    raises_unchanged(
        TypeError,
        r"must be integers; got dtype=<U1.*np\.unique\(y, return_inverse=True\)",
        fastxent.cross_entropy,
        _z(),
        np.array(["a", "b", "a"]),
    )


def test_pandas_categorical_labels_get_a_codes_hint():
    pd = pytest.importorskip("pandas")
    cat = pd.Categorical(["spam", "ham", "spam"])
    raises_unchanged(
        TypeError, r"pandas categorical.*target\.codes", fastxent.cross_entropy, _z(), cat
    )
    series = pd.Series(cat)
    raises_unchanged(
        TypeError, r"pandas categorical.*target\.cat\.codes", fastxent.cross_entropy, _z(), series
    )
    # The hint works: the codes are accepted.
    fastxent.cross_entropy(_z(), series.cat.codes.to_numpy())


def test_bad_label_position_is_flat_in_batch_shape():
    z = np.zeros((2, 3, 5))
    y = np.zeros((2, 3), np.int64)
    y[1, 1] = 5
    raises_unchanged(ValueError, r"5 at flat position 4", fastxent.cross_entropy, z, y)


def test_first_bad_label_is_named():
    y = np.array([0, 9, -3])
    raises_unchanged(ValueError, r"9 at flat position 1", fastxent.cross_entropy, _z(), y)


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
def test_out_of_range_label_with_custom_ignore_index(name):
    # ignore_index=-1 makes -1 fine, but -100 is now out of range.
    LOSS_FUNCS[name](_z(), np.array([0, -1, 2]), ignore_index=-1)
    raises_unchanged(
        ValueError,
        r"not ignore_index=-1: -100 at flat position 1",
        LOSS_FUNCS[name],
        _z(),
        np.array([0, -100, 2]),
        ignore_index=-1,
    )


# ---- reduction, num_threads ----


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize("reduction", ["avg", "MEAN", "", None, 0, ("mean",)])
def test_bad_reduction(name, reduction):
    raises_unchanged(
        ValueError,
        r"reduction must be one of 'mean', 'sum' or 'none'",
        LOSS_FUNCS[name],
        _z(),
        reduction=reduction,
    )


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_numpy_string_reduction_is_accepted(name, reduction):
    """np.str_ (what an array of names yields) is a str."""
    fn = LOSS_FUNCS[name]
    got = fn(_z(), np.array([0, 1, 2]), reduction=np.str_(reduction))
    want = fn(_z(), np.array([0, 1, 2]), reduction=reduction)
    for g, w in zip(*(r if isinstance(r, tuple) else (r,) for r in (got, want)), strict=True):
        np.testing.assert_array_equal(g, w)
        assert type(g) is type(w)


@pytest.mark.parametrize("name", list(ALL_FUNCS))
@pytest.mark.parametrize(
    "num_threads, exc",
    [
        (0, ValueError),
        (-1, ValueError),
        (np.int32(0), ValueError),
        (2.0, TypeError),
        (1.5, TypeError),
        ("2", TypeError),
        (True, TypeError),
        (np.bool_(True), TypeError),
        ([2], TypeError),
    ],
)
def test_bad_num_threads(name, num_threads, exc):
    raises_unchanged(
        exc,
        r"num_threads must be None or an integer >= 1",
        ALL_FUNCS[name],
        _z(),
        num_threads=num_threads,
    )


@pytest.mark.parametrize("name", list(ALL_FUNCS))
@pytest.mark.parametrize("num_threads", [None, 1, 2, np.int64(3), np.uint8(2), 10_000])
def test_good_num_threads(name, num_threads):
    _call(ALL_FUNCS[name], _z(), num_threads=num_threads)


# ---- out ----


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("name", list(OUT_FUNCS))
@pytest.mark.parametrize(
    "out, exc, match",
    [
        (np.zeros((3, 5)), ValueError, r"out must have shape \(3, 4\); got \(3, 5\)"),
        (np.zeros(12), ValueError, r"out must have shape \(3, 4\); got \(12,\)"),
        (np.zeros((1, 3, 4)), ValueError, r"out must have shape \(3, 4\)"),
        (
            np.zeros((3, 4), np.float32),
            ValueError,
            r"out must have dtype float64; got dtype=float32",
        ),
        (np.zeros((3, 4), np.int64), ValueError, r"out must have dtype float64"),
        (np.zeros((3, 4), ">f8"), ValueError, r"out must have dtype float64"),
        (np.zeros((4, 3)).T, ValueError, r"out must be C-contiguous"),
        (np.zeros((3, 8))[:, ::2], ValueError, r"out must be C-contiguous"),
        (_readonly(np.zeros((3, 4))), ValueError, r"out must be writeable"),
        ([[0.0] * 4] * 3, TypeError, r"out must be a NumPy array; got list"),
    ],
    ids=[
        "shape",
        "flat",
        "rank",
        "float32",
        "int",
        "byteswapped",
        "F",
        "strided",
        "readonly",
        "list",
    ],
)
def test_bad_out(name, out, exc, match):
    raises_unchanged(exc, match, OUT_FUNCS[name], _z(), out=out)


@pytest.mark.parametrize("name", list(OUT_FUNCS))
def test_out_dtype_follows_the_output_dtype(name):
    """float16 logits are computed in float32 and give float16 outputs: out
    must be float16 (and out=logits works in place); integer logits give
    float64 outputs."""
    z = _z().astype(np.float16)
    raises_unchanged(
        ValueError,
        r"out must have dtype float16; got dtype=float32",
        OUT_FUNCS[name],
        z,
        out=np.empty((N, M), np.float32),
    )
    out = np.empty((N, M), np.float16)
    res = _call(OUT_FUNCS[name], z, out=out)
    assert (res[1] if name == "cross_entropy_with_grad" else res) is out
    zi = np.arange(N * M).reshape(N, M)
    raises_unchanged(
        ValueError, r"out must have dtype float64; got dtype=int64", OUT_FUNCS[name], zi, out=zi
    )


@pytest.mark.parametrize("name", ["cross_entropy_grad", "cross_entropy_with_grad"])
def test_error_after_out_check_leaves_out_alone(name):
    """Labels are checked before the kernel writes anything into out."""
    out = np.full((N, M), 7.0)
    raises_unchanged(
        ValueError, r"label outside", LOSS_FUNCS[name], _z(), np.array([0, 1, 9]), out=out
    )
    z = _z()
    raises_unchanged(ValueError, r"label outside", LOSS_FUNCS[name], z, np.array([0, 1, 9]), out=z)


# ---- loss options ----


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (
            dict(weight=[1.0, 2.0]),
            ValueError,
            r"weight must have shape \(4,\) \(one per class\); got shape \(2,\)",
        ),
        (dict(weight=np.ones((1, 4))), ValueError, r"weight must have shape \(4,\)"),
        (dict(weight=1.0), ValueError, r"weight must have shape \(4,\)"),
        (dict(weight=[1.0, np.nan, 0.0, 1.0]), ValueError, r"weight must be finite"),
        (dict(weight=[1.0, np.inf, 0.0, 1.0]), ValueError, r"weight must be finite"),
        (dict(weight=["a", "b", "c", "d"]), TypeError, r"weight must be an array of real"),
        (dict(weight=np.ones(4, complex)), TypeError, r"weight must be an array of real"),
        (
            dict(sample_weight=[1.0, 2.0]),
            ValueError,
            r"sample_weight must have shape \(3,\) \(logits.shape\[:-1\]\); got shape \(2,\)",
        ),
        (dict(sample_weight=np.ones((3, 1))), ValueError, r"sample_weight must have shape"),
        (dict(sample_weight=[1.0, np.nan, 1.0]), ValueError, r"sample_weight must be finite"),
        (dict(sample_weight=[1.0, -np.inf, 1.0]), ValueError, r"sample_weight must be finite"),
        (dict(label_smoothing=-0.1), ValueError, r"label_smoothing must be finite and in \[0"),
        (dict(label_smoothing=1.5), ValueError, r"label_smoothing must be finite and in \[0"),
        (dict(label_smoothing=np.nan), ValueError, r"label_smoothing must be finite"),
        (dict(label_smoothing="0.1x"), TypeError, r"label_smoothing must be a real number"),
        (dict(label_smoothing=None), TypeError, r"label_smoothing must be a real number"),
        (dict(z_loss=-1e-4), ValueError, r"z_loss must be finite and in \[0"),
        (dict(z_loss=np.inf), ValueError, r"z_loss must be finite"),
        (dict(z_loss=None), TypeError, r"z_loss must be a real number"),
        (dict(softcap=0.0), ValueError, r"softcap must be finite and in \(0"),
        (dict(softcap=-3.0), ValueError, r"softcap must be finite and in \(0"),
        (dict(softcap=np.inf), ValueError, r"softcap must be finite"),
        (dict(softcap=np.nan), ValueError, r"softcap must be finite"),
        (dict(softcap="big"), TypeError, r"softcap must be a real number"),
        (dict(ignore_index=1.0), TypeError, r"ignore_index must be an integer"),
        (dict(ignore_index=True), TypeError, r"ignore_index must be an integer"),
        (dict(ignore_index=2**64), ValueError, r"ignore_index must fit in int64"),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None,
)
def test_bad_options(name, kwargs, exc, match):
    out = {} if name == "cross_entropy" else {"out": np.full((N, M), 7.0)}
    raises_unchanged(exc, match, LOSS_FUNCS[name], _z(), np.array([0, 1, 2]), **kwargs, **out)


NUMERIC_OPTIONS = ("label_smoothing", "z_loss", "softcap", "ignore_index")


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize("option", NUMERIC_OPTIONS)
@pytest.mark.parametrize(
    "value", [True, False, np.True_, "0.1", np.str_("1"), b"1", np.array(True)], ids=repr
)
def test_bools_and_strings_are_not_numbers(name, option, value):
    """float() takes True as 1.0 and "0.1" as 0.1; an option does not."""
    raises_unchanged(
        TypeError, rf"^{option} must be (a real number|an integer)", LOSS_FUNCS[name], _z(),
        **{option: value},
    )  # fmt: skip


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(label_smoothing=np.float32(0.1), z_loss=np.float16(0.01), softcap=np.int64(5)),
        dict(ignore_index=np.int32(2), softcap=np.uint8(5), label_smoothing=np.array(0.1)),
    ],
    ids=["floats", "integers"],
)
def test_numpy_scalar_options_are_numbers(name, kwargs):
    fn = LOSS_FUNCS[name]
    plain = {k: v.item() for k, v in kwargs.items()}
    got, want = fn(_z(), np.array([0, 1, 2]), **kwargs), fn(_z(), np.array([0, 1, 2]), **plain)
    for g, w in zip(*(r if isinstance(r, tuple) else (r,) for r in (got, want)), strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize(
    "dtype, weight, match",
    [
        (np.float32, [1e39, 1.0, 1.0, 1.0], r"weight must be finite in the compute dtype float32"),
        (
            np.float32,
            [1e-46, 1.0, 1.0, 1.0],
            r"weight has non-zero entries that underflow to 0 "
            r"in the compute dtype float32 \(smallest magnitude 1e-46\)",
        ),
        (np.float64, [1e-46, 1.0, 1.0, 1.0], None),
        (np.float64, [1e-320, 1.0, 0.0, 1.0], None),  # subnormal in float64: still positive
    ],
)
def test_weights_must_survive_the_compute_dtype(name, dtype, weight, match):
    """Class weights are used in the compute dtype: a weight that overflows or
    (if positive) underflows to 0 there is an error, never a NaN loss."""
    z = _z().astype(dtype)
    if match is None:
        result = LOSS_FUNCS[name](z, np.array([0, 1, 2]), weight=weight)
        for part in result if isinstance(result, tuple) else (result,):
            assert np.isfinite(part).all()
    else:
        raises_unchanged(ValueError, match, LOSS_FUNCS[name], z, np.array([0, 1, 2]), weight=weight)


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
@pytest.mark.parametrize("ignore", [0, -1, 3, np.int64(-100) + 1])
def test_ignore_index_with_probabilities(name, ignore):
    probs = np.full((N, M), 0.25)
    raises_unchanged(
        ValueError,
        r"ignore_index applies to class-index targets only",
        LOSS_FUNCS[name],
        _z(),
        probs,
        ignore_index=ignore,
    )
    LOSS_FUNCS[name](_z(), probs, ignore_index=-100)  # the default is fine


@pytest.mark.parametrize("name", list(LOSS_FUNCS))
def test_sample_weight_shape_is_batch_shape(name):
    z = np.zeros((2, 3, 4))
    y = np.zeros((2, 3), np.int64)
    raises_unchanged(
        ValueError,
        r"sample_weight must have shape \(2, 3\)",
        LOSS_FUNCS[name],
        z,
        y,
        sample_weight=np.ones(6),
    )


@pytest.mark.parametrize("name", list(ALL_FUNCS))
def test_positional_options_are_rejected(name):
    """Everything after the data is keyword-only."""
    args = (_z(), np.array([0, 1, 2])) if name in LOSS_FUNCS else (_z(),)
    with pytest.raises(TypeError):
        ALL_FUNCS[name](*args, "sum")
    with pytest.raises(TypeError, match="unexpected keyword"):
        ALL_FUNCS[name](*args, no_such_option=1)


def test_kernel_entry_points_check_their_arrays():
    """The private kernels take ndarrays and check them with NumPy's C API
    (instead of acquiring typed memoryviews): misuse raises, never reads or
    writes out of bounds."""
    from fastxent import _kernels

    z = np.zeros((4, 3))
    y = np.zeros(4, dtype=np.int64)
    g = np.zeros_like(z)
    args = dict(
        ignore_index=-100,
        label_smoothing=0.0,
        z_loss=0.0,
        softcap=0.0,
        grad_denom=np.nan,
        num_threads=1,
    )
    assert _kernels.cross_entropy_labels(z, y, None, None, None, g, None, **args)[0] == -1
    bad_calls = [
        (TypeError, (z.astype(np.float16), y, None, None, None, None)),
        (TypeError, ([[0.0]], y, None, None, None, None)),
        (TypeError, (z, None, None, None, None, None)),
        (ValueError, (z, y.astype(np.int16), None, None, None, None)),
        (ValueError, (z, y[:3], None, None, None, None)),
        (ValueError, (z, y, np.ones(2), None, None, None)),
        (ValueError, (z, y, np.ones(3, dtype=np.float32), None, None, None)),
        (ValueError, (z, y, None, np.ones(5), None, None)),
        (ValueError, (z, y, None, None, np.zeros(3), None)),
        (ValueError, (z, y, None, None, None, np.zeros((4, 4)))),
        (ValueError, (z, y, None, None, None, np.zeros((3, 4)).T)),
        (ValueError, (z, y, None, None, None, np.zeros((4, 3), dtype=np.float32))),
        (ValueError, (z, y, None, None, None, np.zeros((4, 3), order="F"))),
        (ValueError, (z[:, :2], y, None, None, None, None)),
        (ValueError, (z.astype(">f8"), y, None, None, None, None)),
        (ValueError, (z.reshape(-1), y, None, None, None, None)),
    ]
    ro = np.zeros_like(z)
    ro.flags.writeable = False
    bad_calls.append((ValueError, (z, y, None, None, None, ro)))
    bad_calls.append((ValueError, (z, y, None, None, None, None, np.zeros_like(z))))  # no grad
    bad_calls.append((ValueError, (z, y, None, None, None, g, np.zeros((4, 2)))))
    for exc, arrays in bad_calls:
        with pytest.raises(exc):
            _kernels.cross_entropy_labels(*arrays, *((None,) * (7 - len(arrays))), **args)
    with pytest.raises(ValueError):
        _kernels.cross_entropy_probs(
            z,
            z[:, :2],
            None,
            None,
            None,
            None,
            None,
            **{k: v for k, v in args.items() if k != "ignore_index"},
        )
    with pytest.raises(ValueError):
        _kernels.softmax_rows(z, np.zeros((4, 3), dtype=np.float32), False, None, 1)
    with pytest.raises(ValueError):
        _kernels.softmax_rows(z, None, False, np.zeros(5), 1)


# ---- arrays NumPy would misread: masked arrays, torch tensors that require grad ----


def _entries():
    """Every public entry and its array arguments, as pytest params ``(call,
    args, arg)``: ``call(args)`` runs the entry on valid input, so that
    replacing ``args[arg]`` shows how that argument is checked."""
    import fastxent.metrics
    import fastxent.objectives

    z, y, p = _z(), np.array([0, 1, 2]), np.full((N, M), 0.25)
    x, W, b = np.ones((N, 2)), np.ones((M, 2)), np.zeros(M)
    w, s = np.ones(M), np.ones(N)
    table = []  # (label, function, positional argument names, arguments)
    for name, fn in LOSS_FUNCS.items():
        table.append((name, fn, 2, dict(logits=z, target=y, weight=w, sample_weight=s)))
        table.append((name + "-probs", fn, 2, dict(logits=z, target=p)))
    for name in ("cross_entropy_grad", "cross_entropy_with_grad"):
        table.append((name + "-out", LOSS_FUNCS[name], 2, dict(logits=z, target=y, out=z * 0)))
    for name, fn in ROW_FUNCS.items():
        table.append((name, fn, 1, dict(logits=z)))
    for name in ("softmax", "log_softmax"):
        table.append((name + "-out", ROW_FUNCS[name], 1, dict(logits=z, out=z * 0)))
    for fn in (fastxent.linear_cross_entropy, fastxent.linear_cross_entropy_with_grad):
        args = dict(x=x, linear_weight=W, target=y, linear_bias=b, weight=w, sample_weight=s)
        table.append((fn.__name__, fn, 3, args))
    args = dict(y_true=y, logits=z, sample_weight=s, labels=np.arange(M))
    table.append(("log_loss", fastxent.metrics.log_loss, 2, args))
    args = dict(raw_scores=z, target=y, weight=w, sample_weight=s)
    table.append(("softmax_grad_hess", fastxent.objectives.softmax_grad_hess, 2, args))
    table.append(("xgboost_multiclass", fastxent.objectives.xgboost_multiclass, 0, dict(weight=w)))

    def caller(fn, npos):
        def call(args):
            values = list(args.values())
            return fn(*values[:npos], **dict(list(args.items())[npos:]))

        return call

    return [
        pytest.param(caller(fn, npos), args, arg, id=f"{label}-{arg}")
        for label, fn, npos, args in table
        for arg in args
    ]


ENTRIES = _entries()


@pytest.mark.parametrize("call, args, arg", ENTRIES)
def test_the_entries_run_on_valid_input(call, args, arg):
    call(args)


@pytest.mark.parametrize("call, args, arg", ENTRIES)
def test_masked_arrays_are_rejected_with_a_fix(call, args, arg):
    """np.asarray drops a mask: a masked array would silently use every
    value.  Each entry refuses it, naming the argument and the fix."""
    a = args[arg]
    masked = np.ma.masked_array(a, mask=np.zeros(a.shape, bool))
    masked.mask.flat[-1] = True
    before = snapshot(*[v for v in args.values()])
    how = r"target\.filled\(ignore_index\)" if arg == "target" else rf"{arg}\.filled\(value\)"
    with pytest.raises(TypeError, match=rf"^{arg} is a masked array .*{how}.*np\.ma\.compressed"):
        call(dict(args, **{arg: masked}))
    assert snapshot(*[v for v in args.values()]) == before


class _TorchLike:
    """What a torch tensor that requires grad looks like to fastxent (which
    never imports torch): its type's module, its flag, and torch's refusal."""

    requires_grad = True

    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("Can't call numpy() on Tensor that requires grad.")


_TorchLike.__module__ = "torch"


@pytest.mark.parametrize("call, args, arg", [e for e in ENTRIES if not e.id.endswith("-out")])
def test_tensors_that_require_grad_get_a_type_error_saying_detach(call, args, arg):
    with pytest.raises(
        TypeError, match=rf"^{arg} is a torch tensor that requires grad.*{arg}\.detach\(\)"
    ):
        call(dict(args, **{arg: _TorchLike(args[arg])}))


def test_a_real_torch_tensor_that_requires_grad():
    torch = pytest.importorskip("torch")
    z = torch.zeros((3, 4), requires_grad=True)
    with pytest.raises(TypeError, match=r"logits\.detach\(\).*fastxent\.torch"):
        fastxent.cross_entropy(z, np.array([0, 1, 2]))
    assert np.isfinite(fastxent.cross_entropy(z.detach(), np.array([0, 1, 2])))
