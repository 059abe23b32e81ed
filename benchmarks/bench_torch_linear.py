"""fastxent.torch.linear_cross_entropy against the NumPy function it calls,
interleaved call by call.

pytest-benchmark (``test_bench_torch.py``) times each implementation's
rounds one after the other; on a shared machine the state the previous
implementation left (its memory, other thread pools) then weighs on the
next.  Here the implementations take turns, call by call, so that whatever
the machine does hits them alike: forward + backward of
``fastxent.torch.linear_cross_entropy`` on fresh leaf tensors,
``fastxent.linear_cross_entropy_with_grad`` on the same memory, and
torch's ``F.linear_cross_entropy``.  Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_torch_linear.py

(``--shape 1024x256x32000``, ``--rounds 6``, ``--threads 2``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import fastxent
import fastxent.torch as fxt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="1024x256x32000", help="n x d x V")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    n, d, V = map(int, args.shape.split("x"))
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, d), dtype=np.float32)
    W = rng.standard_normal((V, d), dtype=np.float32) / np.float32(np.sqrt(d))
    y = rng.integers(0, V, n)
    xt, Wt, yt = torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(y)

    def framework(loss_fn):
        def fwd_bwd():
            xl = xt.detach().requires_grad_(True)
            Wl = Wt.detach().requires_grad_(True)
            loss_fn(xl, Wl, yt).backward()

        return fwd_bwd

    fns = {
        "fastxent.torch.linear_cross_entropy": framework(fxt.linear_cross_entropy),
        "fastxent.linear_cross_entropy_with_grad": lambda: fastxent.linear_cross_entropy_with_grad(
            x, W, y
        ),
        "F.linear_cross_entropy": framework(F.linear_cross_entropy),
    }
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    ref = statistics.median(times["fastxent.linear_cross_entropy_with_grad"])
    print(f"{n}x{d}x{V} float32, forward + backward, {args.threads} threads, "
          f"medians of {args.rounds} interleaved calls")  # fmt: skip
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:42s} {med * 1e3:8.1f} ms  {med / ref:.3f}x the NumPy function")


if __name__ == "__main__":
    main()
