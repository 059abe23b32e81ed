"""fastxent.metrics.log_loss: scikit-learn's log_loss semantics on logits.

The oracle is the float64 reference (``tests/reference.py``) for the values
and ``sklearn.metrics.log_loss(y, softmax(logits))`` for the semantics
(label mapping, ``labels``, ``normalize``, ``sample_weight``, the binary
shortcut) wherever sklearn's clipping of probabilities does not bite.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import reference as ref
from helpers import half_dtypes
from hypothesis import given
from hypothesis import strategies as st

from fastxent.metrics import log_loss

LABELS = np.array(["ant", "bee", "cat", "dog"])


def sk_log_loss(*args, **kwargs):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    return sklearn_metrics.log_loss(*args, **kwargs)


def ref_log_loss(y_idx, logits, sample_weight=None, normalize=True):
    losses, _ = ref.cross_entropy(logits, y_idx, reduction="none")
    w = np.ones(len(y_idx)) if sample_weight is None else np.asarray(sample_weight, float)
    return float((w * losses).sum() / (w.sum() if normalize else 1.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_agrees_with_sklearn_on_probabilities(rng, dtype, normalize, weighted):
    logits = (3 * rng.standard_normal((200, 4))).astype(dtype)
    y = rng.choice(LABELS, size=200)
    sw = rng.random(200) if weighted else None
    got = log_loss(y, logits, normalize=normalize, sample_weight=sw)
    want = sk_log_loss(y, ref.softmax(logits), normalize=normalize, sample_weight=sw)
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-6 if dtype == np.float32 else 1e-12)
    y_idx = np.searchsorted(LABELS, y)
    assert got == pytest.approx(
        ref_log_loss(y_idx, logits, sw, normalize), rel=1e-6 if dtype == np.float32 else 1e-13
    )


def test_binary_1d_logits_are_log_odds_of_the_larger_label(rng):
    z = 2 * rng.standard_normal(100)
    y = rng.choice([-1, 1], size=100)
    p1 = 1 / (1 + np.exp(-z))
    assert log_loss(y, z) == pytest.approx(sk_log_loss(y, p1), rel=1e-12)
    # the same as the two-column logits [0, z], and as a (n, 1) column
    assert log_loss(y, z) == pytest.approx(log_loss(y, np.c_[np.zeros(100), z]), rel=1e-15)
    assert log_loss(y, z[:, None]) == log_loss(y, z)


def test_labels_argument_supplies_classes_missing_from_y_true(rng):
    logits = rng.standard_normal((30, 4))
    y = rng.choice([10, 30], size=30)  # classes 20 and 40 never occur
    labels = [10, 20, 30, 40]
    got = log_loss(y, logits, labels=labels)
    assert got == pytest.approx(sk_log_loss(y, ref.softmax(logits), labels=labels), rel=1e-12)
    assert got == pytest.approx(ref_log_loss(np.searchsorted(labels, y), logits), rel=1e-13)


def test_unsorted_labels_warn_as_sklearn_does(rng):
    logits = rng.standard_normal((5, 3))
    with pytest.warns(UserWarning, match="ordered lexicographically"):
        got = log_loss([0, 1, 2, 1, 0], logits, labels=[2, 0, 1])
    assert got == log_loss([0, 1, 2, 1, 0], logits, labels=[0, 1, 2])


def test_no_clipping_confident_mistakes_cost_their_full_log_loss():
    # sklearn clips probabilities to [eps, 1 - eps]: a mistake at logit
    # distance 100 costs -log(eps) ~ 36 there, 100 here.
    z = np.array([[100.0, 0.0], [0.0, 100.0]])
    y = [1, 0]
    assert log_loss(y, z) == pytest.approx(100.0, rel=1e-15)
    assert sk_log_loss(y, ref.softmax(z)) == pytest.approx(-np.log(np.finfo(float).eps))
    # and a confident correct prediction costs exp(-100), not eps
    assert log_loss([0, 1], z) == pytest.approx(np.exp(-100.0), rel=1e-12)


def test_minus_inf_logit_of_the_true_class_is_infinite_others_are_fine():
    z = np.array([[0.0, -np.inf, 1.0], [2.0, -np.inf, 0.0]])
    assert log_loss([0, 0], z, labels=[0, 1, 2]) == pytest.approx(
        ref_log_loss([0, 0], z), rel=1e-15
    )
    assert log_loss([1, 0], z, labels=[0, 1, 2]) == np.inf


@given(
    n=st.integers(1, 40),
    m=st.integers(2, 12),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([0.1, 3.0, 50.0]),
)
def test_matches_reference_for_any_shape(n, m, seed, scale):
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal((n, m))
    y = rng.integers(0, m, size=n)
    sw = rng.random(n) + 0.1
    got = log_loss(y, logits, sample_weight=sw, labels=np.arange(m))
    assert got == pytest.approx(ref_log_loss(y, logits, sw), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize(
    ("y", "logits", "kwargs", "match"),
    [
        ([1, 1, 1], np.zeros((3, 2)), {}, "only one label"),
        ([1, 1], np.zeros((2, 2)), {"labels": [1]}, "at least two labels"),
        ([0, 3], np.zeros((2, 2)), {"labels": [0, 1]}, r"values \[3\] not belonging"),
        ([0, 1, 2], np.zeros((3, 2)), {}, "3 classes .* 2 columns"),
        ([0, 1], np.zeros((2, 3)), {"labels": [0, 1]}, "labels has 2 classes"),
        ([0, 1, 1], np.zeros((2, 2)), {}, "different numbers of samples"),
        ([[0], [1]], np.zeros((2, 2)), {}, "y_true must be 1-d"),
        ([], np.zeros((0, 2)), {}, "at least one sample"),
        ([0, 1], np.zeros((2, 2, 2)), {}, "logits must have shape"),
        ([0, 1], [[0.0, np.nan], [0.0, 1.0]], {}, "NaN or \\+inf"),
        ([0, 1], [[0.0, np.inf], [0.0, 1.0]], {}, "NaN or \\+inf"),
        ([0, 1], np.zeros((2, 2)), {"sample_weight": [0, 0]}, "sum to zero"),
        ([0, 1], np.zeros((2, 2)), {"sample_weight": [1.0]}, "sample_weight must have shape"),
        # weights that cancel: scikit-learn raises ZeroDivisionError("Weights sum to zero")
        ([0, 1], np.zeros((2, 2)), {"sample_weight": [1.0, -1.0]}, "sum to zero"),
    ],
)
def test_bad_input_raises_value_error(y, logits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        log_loss(y, logits, **kwargs)


@pytest.mark.parametrize("half", half_dtypes())
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_half_precision_logits_raise_as_other_dtypes(half, bad):
    z = np.array([[0.0, bad], [0.0, 1.0]])
    for dtype in (np.float64, np.float32, half):
        with pytest.raises(ValueError, match=r"must not contain NaN or \+inf"):
            log_loss([0, 1], z.astype(dtype))


@pytest.mark.parametrize("where", ["y_true", "labels"])
def test_nan_labels_are_named_as_such(where):
    """NaN is no class: the message says so, not "not belonging to the
    passed labels [0.0, 1.0, nan]" (when no labels were passed)."""
    y = np.array([0.0, 1.0, np.nan])
    kw = {"labels": [0.0, 1.0, np.nan]} if where == "labels" else {}
    y = np.array([0.0, 1.0, 1.0]) if where == "labels" else y
    with pytest.raises(ValueError, match=rf"^{where} contains NaN \(first at position 2\)") as e:
        log_loss(y, np.zeros((3, 3)), **kw)
    assert "not belonging" not in str(e.value)


def test_probabilities_passed_as_logits_warn(rng):
    """The natural mistake, log_loss(y, clf.predict_proba(X)), returns a
    wrong number: it warns, saying what to pass."""
    p = ref.softmax(3 * rng.standard_normal((50, 3)))
    y = rng.integers(0, 3, 50)
    for probs in (p, p.astype(np.float32), np.round(p, 3), np.eye(3)[y]):
        with pytest.warns(UserWarning, match=r"look like probabilities.*np\.log\(p\).*sklearn"):
            log_loss(y, probs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log_loss(y, np.log(p))  # the right call
        log_loss(y, p * 0.9)  # rows that do not sum to 1: logits, however odd
        log_loss([0, 1], np.array([[0.2, 0.8], [0.5, 0.4]]))  # one row does not
        log_loss(y % 2, p[:, 0])  # 1-d: log-odds, never probabilities here


def test_zero_weights_are_fine_without_normalising():
    assert log_loss([0, 1], np.zeros((2, 2)), sample_weight=[0, 0], normalize=False) == 0.0


def test_inputs_are_not_modified(rng):
    z = rng.standard_normal(6)
    y = np.array([0, 1, 0, 1, 1, 0])
    z0, y0 = z.copy(), y.copy()
    log_loss(y, z)
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(y, y0)


def test_negative_sample_weights_as_in_scikit_learn():
    """scikit-learn's log_loss takes negative sample weights (np.average)."""
    from sklearn.metrics import log_loss as sk_log_loss

    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    sw = [1.0, -0.5, 2.0]
    got = log_loss([0, 1, 1], np.log(p), sample_weight=sw)
    assert got == pytest.approx(sk_log_loss([0, 1, 1], p, sample_weight=sw), rel=1e-12)


def test_messages_show_plain_values():
    """No NumPy reprs (np.int64(2), arrays without commas) in messages."""
    with pytest.raises(ValueError, match=r"only one label \(2\)\.") as e:
        log_loss([2, 2, 2], np.zeros((3, 2)))
    assert "np." not in str(e.value)
    with pytest.raises(ValueError, match=r"only one label \('spam'\)\."):
        log_loss(["spam", "spam"], np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"got \[1\]\.") as e:
        log_loss([1, 1], np.zeros((2, 2)), labels=[1])
    with pytest.warns(UserWarning, match=r"Labels passed were \['spam', 'eggs', 'ham'\]\.") as w:
        log_loss(["spam", "eggs"], np.zeros((2, 3)), labels=["spam", "eggs", "ham"])
    assert "np." not in str(w[0].message)
