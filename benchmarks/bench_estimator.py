"""Fit time: fastxent's SoftmaxRegression against LogisticRegression(solver="lbfgs").

The issue-5 benchmark: a synthetic multinomial problem of n = 200 000
samples, d = 100 features and m = 50 classes (labels drawn from a softmax
of a random linear model, so the problem is neither separable nor flat),
both estimators at the same C, tol and max_iter.  Both minimise the same
objective with the same L-BFGS options, so they take (nearly) the same
iterations; the ratio is the cost of the loss+gradient evaluations, where
fastxent's fused kernel replaces scikit-learn's HalfMultinomialLoss (the
two BLAS products per evaluation are the same in both).

Run (the machine's OpenBLAS tuning variables unset, as for every benchmark
against NumPy or scikit-learn)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_estimator.py

It prints one line per fit and the ratio of the median times; ``--json``
writes the numbers.  The machine is shared: run it more than once before
believing a difference under ~20 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from fastxent.estimators import SoftmaxRegression


def make_problem(n, d, m, dtype, seed=0):
    """Standard-normal features; labels sampled from softmax(X @ W.T + b)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    W = rng.standard_normal((m, d)) / np.sqrt(d) * 2.0
    b = rng.standard_normal(m)
    z = X @ W.T + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    u = rng.random((n, 1))
    y = np.minimum((p.cumsum(axis=1) < u).sum(axis=1), m - 1)
    return X, y


def fit_time(make_estimator, X, y, repeats):
    times, est = [], None
    for _ in range(repeats):
        est = make_estimator()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            est.fit(X, y)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times, est


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=100)
    p.add_argument("--m", type=int, default=50)
    p.add_argument("--C", type=float, default=1.0)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--repeats", type=int, default=1, help="fits per estimator (median)")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="limit BLAS to this many threads for both estimators (threadpoolctl); on a "
        "busy machine a multi-threaded BLAS can be many times slower than one thread",
    )
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.blas_threads, user_api="blas"):
            return run(args)
    return run(args)


def run(args):

    X, y = make_problem(args.n, args.d, args.m, args.dtype)
    common = {"C": args.C, "tol": args.tol, "max_iter": args.max_iter}
    results = {}
    for name, make in [
        ("SoftmaxRegression", lambda: SoftmaxRegression(**common)),
        ("LogisticRegression", lambda: LogisticRegression(solver="lbfgs", **common)),
    ]:
        median, times, est = fit_time(make, X, y, args.repeats)
        results[name] = {
            "seconds": median,
            "all_seconds": times,
            "n_iter": int(est.n_iter_[0]),
            "train_accuracy": float(est.score(X, y)),
            "decision": est.decision_function(X[:2000]),
        }
        r = results[name]
        print(
            f"{name:>19s}: {median:8.2f} s  {r['n_iter']:4d} iterations  "
            f"{median / max(r['n_iter'], 1) * 1e3:7.1f} ms/iteration  "
            f"train accuracy {r['train_accuracy']:.4f}"
        )
    ours, theirs = results["SoftmaxRegression"], results["LogisticRegression"]
    diff = np.max(np.abs(ours["decision"] - theirs["decision"])) / np.max(
        np.abs(theirs["decision"])
    )
    ratio = theirs["seconds"] / ours["seconds"]
    print(
        f"n={args.n} d={args.d} m={args.m} {args.dtype} C={args.C} tol={args.tol}: "
        f"LogisticRegression / SoftmaxRegression fit time = {ratio:.2f}x "
        f"(max relative difference of decision functions {diff:.1e})"
    )
    if args.json:
        for r in results.values():
            del r["decision"]
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"options": vars(args), "results": results, "ratio": ratio}, f, indent=1)
    return ratio


if __name__ == "__main__":
    main()
