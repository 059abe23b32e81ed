"""The names the documentation links to in other projects' docs.

``OBJECTS[project]`` lists ``(name, domain:role, uri)``, the uri relative to
that project's base URL in conf.py's ``intersphinx_mapping`` (``$`` at the
end stands for the name, as in Sphinx inventories).  A cross-reference that
the build cannot resolve (a warning under ``-n``) means a name is missing
here: add it with the URL of its page on the project's site.
"""

from __future__ import annotations


def _gen(names, role, prefix, anchor=True):
    return [(n, role, f"{prefix}{n}.html" + ("#$" if anchor else "")) for n in names]


OBJECTS: dict[str, list[tuple[str, str, str]]] = {
    "python": [
        *[
            (n, "py:class", f"library/functions.html#{n}")
            for n in ("int", "float", "bool", "str", "tuple", "list", "dict", "object")
        ],
        ("None", "py:data", "library/constants.html#None"),
        ("ValueError", "py:exception", "library/exceptions.html#$"),
        ("TypeError", "py:exception", "library/exceptions.html#$"),
        ("RuntimeWarning", "py:exception", "library/exceptions.html#$"),
        ("os.fork", "py:function", "library/os.html#$"),
        ("tracemalloc", "py:module", "library/tracemalloc.html#module-$"),
        ("multiprocessing", "py:module", "library/multiprocessing.html#module-$"),
        ("collections.abc.Callable", "py:class", "library/collections.abc.html#$"),
    ],
    "numpy": [
        *_gen(
            (
                "numpy.ndarray",
                "numpy.dtype",
                "numpy.float32",
                "numpy.float64",
                "numpy.float16",
                "numpy.intp",
                "numpy.int64",
                "numpy.int32",
                "numpy.floating",
            ),
            "py:class",
            "reference/generated/",
        ),
        *_gen(
            (
                "numpy.copyto",
                "numpy.exp",
                "numpy.logaddexp",
                "numpy.average",
                "numpy.shares_memory",
                "numpy.argmax",
                "numpy.random.default_rng",
            ),
            "py:function",
            "reference/generated/",
        ),
        ("numpy.typing.ArrayLike", "py:data", "reference/typing.html#$"),
        ("numpy.typing.NDArray", "py:data", "reference/typing.html#$"),
        ("numpy.random.Generator", "py:class", "reference/random/generator.html#$"),
    ],
    "scipy": [
        *_gen(
            (
                "scipy.special.logsumexp",
                "scipy.special.softmax",
                "scipy.special.log_softmax",
                "scipy.optimize.minimize",
            ),
            "py:function",
            "reference/generated/",
        ),
        ("scipy.linalg.cython_blas", "py:module", "reference/linalg.cython_blas.html#module-$"),
        ("scipy.sparse.csr_matrix", "py:class", "reference/generated/$.html#$"),
    ],
    "sklearn": [
        *_gen(
            (
                "sklearn.linear_model.LogisticRegression",
                "sklearn.preprocessing.StandardScaler",
                "sklearn.pipeline.Pipeline",
            ),
            "py:class",
            "modules/generated/",
        ),
        *_gen(
            (
                "sklearn.metrics.log_loss",
                "sklearn.datasets.load_digits",
                "sklearn.pipeline.make_pipeline",
                "sklearn.model_selection.train_test_split",
                "sklearn.utils.estimator_checks.parametrize_with_checks",
            ),
            "py:function",
            "modules/generated/",
        ),
        ("sklearn.base.BaseEstimator", "py:class", "modules/generated/$.html#$"),
        ("sklearn.base.ClassifierMixin", "py:class", "modules/generated/$.html#$"),
        ("sklearn.exceptions.ConvergenceWarning", "py:class", "modules/generated/$.html#$"),
    ],
    "torch": [
        *_gen(
            ("torch.nn.functional.cross_entropy", "torch.nn.functional.linear"),
            "py:function",
            "generated/",
        ),
        ("torch.nn.CrossEntropyLoss", "py:class", "generated/$.html#$"),
    ],
    "dask": [
        ("dask.array.Array", "py:class", "generated/$.html#$"),
        ("dask.array.from_array", "py:function", "generated/$.html#$"),
        ("dask.compute", "py:function", "api.html#$"),
        ("dask.persist", "py:function", "api.html#$"),
        ("dask.array.PerformanceWarning", "py:class", "array-chunks.html#$"),
    ],
    "distributed": [
        ("distributed.Client", "py:class", "api.html#$"),
        ("distributed.LocalCluster", "py:class", "api.html#$"),
    ],
}
