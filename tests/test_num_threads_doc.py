"""What ``num_threads=None`` means, said in every docstring that takes it.

``None`` is OpenMP's default (all cores unless ``OMP_NUM_THREADS`` or
threadpoolctl limits them) in every function without a matrix product; in
the fused linear functions and ``SoftmaxRegression.fit`` it is the calling
thread, because their products run on BLAS's threads and a second thread
pool taking turns with BLAS's spin-waits against it.  The functions that
differ must say so and why; the others must point at the exception.  The
behaviour itself is tested in test_threads.py and test_linear.py.
"""

from __future__ import annotations

import re

import pytest

import fastxent


def num_threads_entry(obj):
    """The text of the ``num_threads`` entry of ``obj``'s numpydoc
    Parameters section, whitespace collapsed."""
    doc = obj.__doc__ or ""
    m = re.search(r"^( *)num_threads[ ,:].*?\n(.*?)(?=^\1\S|\Z)", doc, re.M | re.S)
    if m is None:
        m = re.search(r"^( *)chunk_size, num_threads :.*?\n(.*?)(?=^\1\S|\Z)", doc, re.M | re.S)
    assert m is not None, f"{obj.__name__}: no num_threads entry"
    return " ".join(m.group(0).split())


OPENMP_DEFAULT = [
    fastxent.cross_entropy,
    fastxent.cross_entropy_grad,
    fastxent.cross_entropy_with_grad,
    fastxent.softmax,
    fastxent.log_softmax,
    fastxent.logsumexp,
]


@pytest.mark.parametrize("f", OPENMP_DEFAULT, ids=lambda f: f.__name__)
def test_none_is_openmps_default(f):
    entry = num_threads_entry(f)
    assert "None" in entry and "OpenMP" in entry, entry


@pytest.mark.parametrize("f", OPENMP_DEFAULT[:3], ids=lambda f: f.__name__)
def test_loss_functions_point_at_the_exception(f):
    entry = num_threads_entry(f)
    assert "linear_cross_entropy" in entry and "calling thread instead" in entry, entry


def test_objectives_none_is_openmps_default():
    from fastxent import objectives

    entry = num_threads_entry(objectives.softmax_grad_hess)
    assert "None" in entry and "OpenMP" in entry, entry


@pytest.mark.parametrize(
    "f",
    [fastxent.linear_cross_entropy, fastxent.linear_cross_entropy_with_grad],
    ids=lambda f: f.__name__,
)
def test_linear_says_none_is_the_calling_thread_and_why(f):
    entry = num_threads_entry(f)
    assert "``None`` runs them on the calling thread, unlike" in entry, entry
    assert "cross_entropy" in entry and "BLAS" in entry and "spin-wait" in entry, entry


def test_estimator_says_what_none_is_in_fit_and_predict():
    est = pytest.importorskip("fastxent.estimators")
    entry = num_threads_entry(est.SoftmaxRegression)
    assert "In ``fit``, ``None`` is the calling thread" in entry, entry
    assert "BLAS" in entry and "spin-wait" in entry, entry
    assert "``predict_proba``" in entry and "OpenMP's default" in entry, entry


def test_dask_estimator_says_why_none_is_one():
    pytest.importorskip("dask.array")
    pytest.importorskip("sklearn")
    import fastxent.dask as fd

    entry = num_threads_entry(fd.SoftmaxRegression)
    assert "``None`` means 1 here" in entry and "in-memory fit" in entry, entry
