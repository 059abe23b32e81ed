"""The "Dask" section of ``report.py``: the groups of
``test_bench_dask.py``, one row per thread count.  Every ratio divides two
numbers of the same group and run."""

from __future__ import annotations


def _ms(t):
    return "–" if t is None else f"{t * 1e3:.3g}"


def _ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def dask_section(groups):
    """Markdown lines for the dask groups (empty if there are none)."""
    rows = []
    for name, impls in sorted(groups.items()):
        if not name.startswith("dask-"):
            continue
        t = {impl: rec["t"] for impl, rec in impls.items()}
        threads = next(iter(impls.values()))["threads"]
        mem = t.get("fastxent")
        rows.append(
            f"| {threads} | {_ms(mem)} | {_ms(t.get('dask_compute'))} | "
            f"{_ratio(t.get('dask_compute'), mem)} | {_ms(t.get('dask_persist'))} | "
            f"{_ratio(t.get('dask_persist'), mem)} |"
        )
    if not rows:
        return []
    return [
        "## Dask (16384×1000 float32, 8 row chunks, threaded scheduler)",
        "",
        "Loss+grad with `fastxent.dask.cross_entropy_with_grad` (graph built and run in "
        "every call, one kernel thread per block, `num_workers` = T) against the "
        "in-memory `cross_entropy_with_grad(num_threads=T)`; `compute` returns the "
        "gradient as one NumPy array (Dask copies the blocks into it), `persist` "
        "leaves it in blocks.",
        "",
        "| T | in memory ms | `compute` ms | × | `persist` ms | × |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
