"""Multinomial logistic regression on a Dask cluster with fastxent.

Starts a ``distributed.LocalCluster`` (or connects to a running scheduler
with ``--scheduler tcp://HOST:8786``), makes a dataset larger than one
worker's memory limit as dask chunks (``dask.array.random``; the labels come
from a random linear model plus noise, so the problem is neither separable
nor flat), fits :class:`fastxent.dask.SoftmaxRegression` and prints the
training accuracy, the fit time and the dashboard address::

    pip install "fastxent[dask,sklearn]"
    python examples/dask_softmax_regression.py                 # ~1.2 GB of X, 2 workers of 1 GiB
    python examples/dask_softmax_regression.py --rows 200000   # a quick run
    python examples/dask_softmax_regression.py --scheduler tcp://scheduler:8786

On a real cluster the same code runs unchanged: only the Client differs.
"""

from __future__ import annotations

import argparse
import time

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

from fastxent.dask import SoftmaxRegression


def make_data(
    rows: int, features: int, classes: int, chunks: int, seed: int = 0
) -> tuple[da.Array, da.Array]:
    """X ~ N(0, 1) in ``chunks`` row chunks; y = argmax(X @ W + b + noise)."""
    rs = da.random.RandomState(seed)
    X = rs.standard_normal((rows, features), chunks=(-(-rows // chunks), features))
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((features, classes)) * 2.0 / np.sqrt(features)
    b = rng.standard_normal(classes)
    noise = rs.gumbel(size=(rows, classes), chunks=(X.chunks[0], classes))
    y = (X @ W + b + noise).argmax(axis=1)  # a draw from softmax(X @ W + b)
    return X, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scheduler", help="address of a running scheduler (default: LocalCluster)")
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--chunks", type=int, default=24, help="row chunks of X")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster workers")
    ap.add_argument("--memory-limit", default="1GiB", help="per LocalCluster worker")
    ap.add_argument("--max-iter", type=int, default=100)
    args = ap.parse_args()

    if args.scheduler:
        cluster = None
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            memory_limit=args.memory_limit,
            host="127.0.0.1",
            dashboard_address=":0",
        )
        client = Client(cluster)
    print(f"dashboard: {client.dashboard_link}")
    limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]

    X, y = make_data(args.rows, args.features, args.classes, args.chunks)
    print(
        f"X: {X.shape[0]} x {X.shape[1]} float64 = {X.nbytes / 2**30:.2f} GiB in "
        f"{X.numblocks[0]} chunks; worker memory limits "
        f"{', '.join(f'{m / 2**30:.2f} GiB' for m in limits)}"
    )

    t0 = time.perf_counter()
    X, y = dask.persist(X, y)  # generated on the workers, kept in their memory
    clf = SoftmaxRegression(C=1.0, max_iter=args.max_iter)
    clf.fit(X, y)  # L-BFGS runs here; every evaluation is one pass over the blocks
    fit_s = time.perf_counter() - t0
    accuracy = float((clf.predict(X) == y).mean().compute())
    print(
        f"data + fit: {fit_s:.1f} s, {clf.n_iter_[0]} L-BFGS iterations; "
        f"training accuracy {accuracy:.4f}; coef_ {clf.coef_.shape} ({type(clf.coef_).__name__})"
    )
    client.close()
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    main()
