"""Fit time of fastxent.dask.SoftmaxRegression on a LocalCluster.

n = 1 000 000, d = 50, m = 10, float64 in 16 row chunks (labels drawn from
a softmax of a random linear model, as ``bench_estimator.py`` makes them),
on a ``LocalCluster`` of 2 single-threaded worker processes, against

* the in-memory ``fastxent.estimators.SoftmaxRegression`` on the same data
  in this process (default threads: both cores);
* ``dask_ml.linear_model.LogisticRegression(solver="lbfgs")`` on the same
  cluster, where installed.  dask-ml fits binary problems only (its
  ``multi_class`` is ignored, dask/dask-ml#761): it is timed on the
  *binary* problem "class 0 against the rest", one of the 10 fits a
  one-vs-rest model would need, and it is not the same model.

Every estimator gets the same ``C``, ``tol`` and ``max_iter``; the table
gives fit times (median of ``--repeats``), L-BFGS iterations and training
accuracy, and the optimum's agreement between the two fastxent fits.

Run (the machine's OpenBLAS tuning variables unset, as for every benchmark)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_dask_estimator.py

``--rows``/``--chunks`` change the size; ``--json FILE`` writes the numbers.
distributed's nannies set OMP_NUM_THREADS=1 in this process's environment
when the cluster starts: fastxent (and its OpenMP runtime) is imported, and
the in-memory fit runs, before that.
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
from bench_estimator import fit_time, make_problem

from fastxent.estimators import SoftmaxRegression


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    n, d, m = args.rows, args.features, args.classes
    X, y = make_problem(n, d, m, np.float64)
    params = dict(C=1.0, tol=args.tol, max_iter=args.max_iter)
    rows = []

    t_mem, _, mem = fit_time(lambda: SoftmaxRegression(**params), X, y, args.repeats)
    rows.append(("fastxent.estimators.SoftmaxRegression (in memory, 2 threads)", t_mem, mem))

    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    import fastxent.dask as fd

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, memory_limit="6GiB",
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        warnings.filterwarnings("ignore", message=".*[Ll]arge graph")  # X sent once, untimed
        Xd = da.from_array(X, chunks=(-(-n // args.chunks), d))
        yd = da.from_array(y, chunks=Xd.chunks[0])
        Xd, yd = dask.persist(Xd, yd)  # on the workers before the clock starts
        client.wait_for_workers(2)
        t_dask, _, dest = fit_time(lambda: fd.SoftmaxRegression(**params), Xd, yd, args.repeats)
        rows.append(("fastxent.dask.SoftmaxRegression (LocalCluster 2 x 1 thread)", t_dask, dest))
        dml = None
        try:
            from dask_ml.linear_model import LogisticRegression as DaskMLLogisticRegression
        except ImportError:
            print("dask_ml not installed: its row is left out")
        else:
            yb = (yd == 0).astype(np.int64).persist()
            t_dml, _, dml = fit_time(
                lambda: DaskMLLogisticRegression(
                    C=params["C"], tol=args.tol, max_iter=args.max_iter, solver="lbfgs"
                ),
                Xd,
                yb,
                args.repeats,
            )
        dec = dest.decision_function(Xd).compute()
        acc_dask = float((dest.predict(Xd) == yd).mean().compute())
        if dml is not None:
            acc_dml = float((dml.predict(Xd) == yb).mean().compute())

    ref = mem.decision_function(X)
    agreement = float(np.max(np.abs(dec - ref)) / np.max(np.abs(ref)))
    acc_mem = float((mem.predict(X) == y).mean())
    print(f"n = {n}, d = {d}, m = {m}, float64, {args.chunks} chunks; C=1, tol={args.tol}")
    print("| estimator | fit s | × in-memory | L-BFGS iterations | training accuracy |")
    print("|---|---|---|---|---|")
    out = {"rows": n, "features": d, "classes": m, "chunks": args.chunks, "fits": {}}
    for (name, t, est), acc in zip(rows, (acc_mem, acc_dask), strict=True):
        print(f"| {name} | {t:.2f} | {t / t_mem:.2f}× | {int(est.n_iter_[0])} | {acc:.4f} |")
        out["fits"][name] = {"median_s": t, "iterations": int(est.n_iter_[0]), "accuracy": acc}
    if dml is not None:
        name = "dask_ml LogisticRegression (binary only: class 0 vs rest, 1 of 10 OvR fits)"
        its = getattr(dml, "n_iter_", "?")
        print(f"| {name} | {t_dml:.2f} | {t_dml / t_mem:.2f}× | {its} | {acc_dml:.4f} (binary) |")
        out["fits"][name] = {"median_s": t_dml, "accuracy_binary": acc_dml}
    print(f"decision functions of the two fastxent fits agree to {agreement:.2g} relative")
    out["agreement"] = agreement
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
