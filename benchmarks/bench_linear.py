"""Fused linear + cross-entropy: time and peak memory against the GEMM floor,
the unfused NumPy composition and PyTorch's three paths.

For each shape (n tokens, d features, V classes) and dtype, every
implementation runs forward + backward (the loss and the gradients with
respect to x and W) in a child process of its own, so that its peak
resident memory is its own:

* ``gemms``: the three GEMMs alone, ``x @ W.T``, ``G @ W`` and ``G.T @ x``,
  into preallocated outputs with SciPy's BLAS (the BLAS the fused function
  calls), at the same thread count: the floor;
* ``numpy``: the unfused composition ``L = x @ W.T``, fastxent's loss and
  gradient in place, ``G @ W``, ``G.T @ x`` (NumPy's matmul);
* ``fastxent``: :func:`fastxent.linear_cross_entropy_with_grad` with the
  default chunk size; ``fastxent-R`` with ``chunk_size=R`` (any R, e.g.
  ``fastxent-1024``);
* ``torch``: ``F.linear`` + ``F.cross_entropy`` and ``backward()``;
  ``torch-fused``: PyTorch's ``F.linear_cross_entropy`` (2.13+), its
  reference path (``options=None``), and ``backward()``; ``torch-chunked``:
  the same with ``options=torch.nn.LinearCrossEntropyOptions()``, its
  batch-chunked path with its per-device defaults; all three skipped when
  torch is not installed.

Time is the median of ``--repeats`` calls after one warm-up (the range is
printed too).  Memory is the peak resident set of the calls: after the
inputs are built and the warm-up call is freed, the process's peak (VmHWM)
is reset to its resident set (on Linux, ``5`` written to
``/proc/self/clear_refs``) and read after the calls; ``peak`` is that peak
minus the resident set before the calls, i.e. the call's own memory with
its outputs (for the floor: with its preallocated logits and outputs), and
``extra`` is ``peak`` less the gradients returned (grad_x and grad_W): the
working memory beyond the outputs.  The report divides each time by the
floor's and each memory by the n x V logits' size.  Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_linear.py --threads 2

(``--shapes 2048x512x32000``, ``--dtypes float32 float64``, ``--impls
gemms fastxent torch-chunked``, ``--json FILE``).  The machine is shared:
take the ratios of one run, and rerun before believing a difference under
~10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DEFAULT_SHAPES = ["2048x512x32000", "4096x1024x32000", "8192x256x128256"]
IMPLS = [
    "gemms", "numpy", "fastxent", "fastxent-1024", "torch", "torch-fused", "torch-chunked",
]  # fmt: skip


def _status(key: str) -> int:
    """A VmRSS/VmHWM figure of this process, in bytes (Linux)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def child(impl: str, n: int, d: int, V: int, dtype: str, threads: int, repeats: int) -> dict:
    """Run one implementation in this process and return its figures."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32).astype(dtype)
    W = (rng.standard_normal((V, d), dtype=np.float32) / np.sqrt(d)).astype(dtype)
    y = rng.integers(0, V, n)
    out_bytes = x.nbytes + W.nbytes  # grad_x and grad_W
    prealloc = 0

    if impl == "gemms":
        from scipy.linalg import blas
        from threadpoolctl import threadpool_limits

        gemm = blas.sgemm if dtype == "float32" else blas.dgemm
        L = np.empty((n, V), dtype=dtype)
        gx, gW = np.empty_like(x), np.empty_like(W)
        limits = threadpool_limits(limits=threads, user_api="blas")

        def run():
            gemm(1.0, W.T, x.T, trans_a=1, c=L.T, overwrite_c=1)
            gemm(1.0, W.T, L.T, c=gx.T, overwrite_c=1)
            gemm(1.0, x.T, L.T, trans_b=1, c=gW.T, overwrite_c=1)

        prealloc = L.nbytes + gx.nbytes + gW.nbytes  # made before the reset: added back
    elif impl == "numpy":
        from threadpoolctl import threadpool_limits

        import fastxent

        limits = threadpool_limits(limits=threads, user_api="blas")

        def run():
            L = x @ W.T
            fastxent.cross_entropy_with_grad(L, y, out=L, num_threads=threads)
            return L @ W, L.T @ x
    elif impl.startswith("fastxent"):
        from threadpoolctl import threadpool_limits

        import fastxent

        chunk = int(impl.split("-")[1]) if "-" in impl else None
        # BLAS (the GEMMs) at the thread count given, as for the floor: SciPy's
        # BLAS loaded first (fastxent loads it on the first call), or the
        # limit would miss it.
        from scipy.linalg import cython_blas  # noqa: F401

        limits = threadpool_limits(limits=threads, user_api="blas")

        def run():
            return fastxent.linear_cross_entropy_with_grad(
                x, W, y, chunk_size=chunk, num_threads=threads
            )
    else:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
        xt, Wt, yt = torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(y)
        limits = None
        # None: the reference path; an options object opts in to the chunked one.
        options = torch.nn.LinearCrossEntropyOptions() if impl == "torch-chunked" else None

        def run():
            xx = xt.detach().requires_grad_(True)
            WW = Wt.detach().requires_grad_(True)
            if impl == "torch":
                loss = F.cross_entropy(F.linear(xx, WW), yt)
            else:
                loss = F.linear_cross_entropy(xx, WW, yt, options=options)
            loss.backward()
            return loss, xx.grad, WW.grad

    result = run()  # warm-up: first-touch pages, BLAS buffers, lazy imports
    del result
    # What the warm-up freed goes back to the system (the parent runs us with
    # a fixed mmap threshold, so glibc does not keep large blocks mapped).
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss0 = _status("VmRSS")
    _reset_peak()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del result
    peak = _status("VmHWM")
    if limits is not None:
        limits.restore_original_limits()
    peak_bytes = max(0, peak - rss0) + prealloc
    return {
        "seconds": statistics.median(times),
        "all_seconds": times,
        "cpu_seconds": statistics.median(cpu),
        "peak_bytes": peak_bytes,
        "extra_bytes": max(0, peak_bytes - out_bytes),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="n x d x V")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--rounds", type=int, default=1,
        help="processes per implementation, the implementations in turn (order reversed "
        "every other round): the time is the median of the rounds' medians",
    )  # fmt: skip
    p.add_argument("--impls", nargs="+", default=IMPLS, help=f"of {IMPLS} or fastxent-R")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for impl in args.impls:
        if impl not in IMPLS and not (impl.startswith("fastxent-") and impl[9:].isdigit()):
            p.error(f"--impls: {impl!r} is not one of {IMPLS} or fastxent-R (R an integer)")
    if args.child:
        impl, n, d, V, dtype, threads, repeats = args.child
        print(json.dumps(child(impl, int(n), int(d), int(V), dtype, int(threads), int(repeats))))
        return

    records = []
    for shape in args.shapes:
        n, d, V = (int(s) for s in shape.split("x"))
        for dtype in args.dtypes:
            runs: dict[str, list[dict]] = {}
            for k in range(args.rounds):
                for impl in args.impls if k % 2 == 0 else args.impls[::-1]:
                    cmd = [sys.executable, __file__, "--child", impl, str(n), str(d), str(V),
                           dtype, str(args.threads), str(args.repeats)]  # fmt: skip
                    # A fixed mmap threshold: glibc otherwise raises it after a large
                    # block is freed and keeps the next ones of that size resident.
                    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
                    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if res.returncode != 0:
                        last = (res.stderr.strip().splitlines() or ["?"])[-1]
                        print(f"  {impl}: skipped ({last})", file=sys.stderr)
                        continue
                    out = res.stdout.strip().splitlines()[-1]
                    runs.setdefault(impl, []).append(json.loads(out))
            row = {impl: _merge(runs[impl]) for impl in args.impls if impl in runs}
            for impl, r in row.items():
                records.append({"n": n, "d": d, "V": V, "dtype": dtype, "impl": impl,
                                "threads": args.threads, **r})  # fmt: skip
            _print_row(n, d, V, dtype, row)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threads": args.threads, "results": records}, f, indent=1)


def _merge(runs: list[dict]) -> dict:
    """One implementation's rounds: the median of their median times (and
    every call's time), the largest of their peaks."""
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "all_seconds": [t for r in runs for t in r["all_seconds"]],
        "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
        "peak_bytes": max(r["peak_bytes"] for r in runs),
        "extra_bytes": max(r["extra_bytes"] for r in runs),
    }


def _print_row(n: int, d: int, V: int, dtype: str, row: dict) -> None:
    logits = n * V * (4 if dtype == "float32" else 8)
    floor = row.get("gemms", {}).get("seconds")
    cpu_floor = row.get("gemms", {}).get("cpu_seconds")
    print(f"{n} x {d} x {V} {dtype} (logits {logits / 2**20:.0f} MiB)")
    for impl, r in row.items():
        ratio = f"{r['seconds'] / floor:5.2f}x floor" if floor else ""
        if cpu_floor:  # CPU time: less disturbed by a busy machine (at 1 thread)
            ratio += f" (CPU {r['cpu_seconds'] / cpu_floor:5.2f}x)"
        spread = f"[{min(r['all_seconds']):.3f}-{max(r['all_seconds']):.3f}]"
        print(
            f"  {impl:>14s}: {r['seconds']:8.3f} s {spread:>15s} {ratio}   peak "
            f"{r['peak_bytes'] / 2**20:8.1f} MiB, extra {r['extra_bytes'] / 2**20:8.1f} MiB"
            f" = {r['extra_bytes'] / logits:6.1%} of the logits"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
