"""Per-token log-probabilities, entropy and distillation: ratios against the
cross-entropy kernels, PyTorch and the GEMM floor, measured side by side.

Every timing is the minimum of ``--repeats`` calls after a warm-up, the
implementations of one comparison interleaved call by call (so that load
from other programs on a shared machine hits them alike).  Printed:

* ``token_logprobs`` / ``cross_entropy(reduction="none")`` (same logits and labels);
* ``token_logprobs(return_entropy=True)`` / ``token_logprobs``;
* ``token_logprobs_vjp`` (with and without ``grad_entropy``) /
  ``cross_entropy_with_grad(out=)``;
* ``distillation_loss_with_grad(out=)`` per divergence / ``cross_entropy_with_grad(out=)``
  with probability targets;
* PyTorch's ``F.kl_div(F.log_softmax(s / T), F.log_softmax(t / T),
  log_target=True, reduction="batchmean")`` forward + backward /
  ``distillation_loss_with_grad`` (forward KL), when torch is installed
  (``torch.set_num_threads`` set to the same count);
* the fused linear variants / their GEMMs alone (three for the log-probs'
  VJP: logits, ``grad_x``, ``grad_W``; four for distillation: both heads'
  logits, ``grad_x``, ``grad_W``), with the chunk buffer's share of the
  ``n x V`` logits.

Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_logprob.py --threads 2

(``--shape 4096x32000``, ``--linear 2048x512x32000``, ``--repeats 7``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastxent
from fastxent.bench import linear_chunk_rows, make_case


def _min_times(fns: dict, repeats: int) -> dict:
    for f in fns.values():
        f()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _report(title: str, times: dict, base: str) -> None:
    print(f"\n{title}")
    for k, t in times.items():
        print(f"  {k:<48s} {t * 1e3:9.2f} ms  {t / times[base]:6.3f}x {base}")


def rows(n: int, m: int, nt: int, repeats: int) -> None:
    if not n:
        return
    z, y = make_case(n, m, "float32")
    t, _ = make_case(n, m, "float32", seed=1)
    rng = np.random.default_rng(2)
    gl, ge = rng.standard_normal(n), rng.standard_normal(n)
    out = np.empty_like(z)
    probs = fastxent.softmax(t, num_threads=nt)

    times = _min_times(
        {
            "cross_entropy(none)": lambda: fastxent.cross_entropy(
                z, y, reduction="none", num_threads=nt
            ),
            "token_logprobs": lambda: fastxent.token_logprobs(z, y, num_threads=nt),
            "token_logprobs(return_entropy)": lambda: fastxent.token_logprobs(
                z, y, return_entropy=True, num_threads=nt
            ),
        },
        repeats,
    )
    _report(f"forward, {n}x{m} float32, {nt} threads", times, "cross_entropy(none)")
    overhead = times["token_logprobs(return_entropy)"] / times["token_logprobs"]
    print(f"  entropy overhead: {overhead:.3f}x")

    times = _min_times(
        {
            "cross_entropy_with_grad(out=)": lambda: fastxent.cross_entropy_with_grad(
                z, y, out=out, num_threads=nt
            ),
            "token_logprobs_vjp(out=)": lambda: fastxent.token_logprobs_vjp(
                z, y, gl, out=out, num_threads=nt
            ),
            "token_logprobs_vjp(grad_entropy, out=)": lambda: fastxent.token_logprobs_vjp(
                z, y, gl, ge, out=out, num_threads=nt
            ),
        },
        repeats,
    )
    _report(f"VJP, {n}x{m} float32, {nt} threads", times, "cross_entropy_with_grad(out=)")

    fns = {
        "cross_entropy_with_grad(probs, out=)": lambda: fastxent.cross_entropy_with_grad(
            z, probs, out=out, num_threads=nt
        ),
    }
    for div in ("forward_kl", "reverse_kl", "jsd"):
        fns[f"distillation_loss_with_grad({div}, out=)"] = lambda div=div: (
            fastxent.distillation_loss_with_grad(
                z, t, divergence=div, temperature=2.0, out=out, num_threads=nt
            )
        )
    times = _min_times(fns, repeats)
    _report(
        f"distillation, {n}x{m} float32, {nt} threads",
        times,
        "cross_entropy_with_grad(probs, out=)",
    )

    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("\n(torch not installed: no PyTorch comparison)")
        return
    torch.set_num_threads(nt)
    zs, tt = torch.from_numpy(z), torch.from_numpy(t)

    def torch_kl():
        s = zs.detach().requires_grad_(True)
        loss = F.kl_div(
            F.log_softmax(s / 2.0, dim=-1),
            F.log_softmax(tt / 2.0, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        loss.backward()
        return loss, s.grad

    times = _min_times(
        {
            "distillation_loss_with_grad(forward_kl, out=)": lambda: (
                fastxent.distillation_loss_with_grad(z, t, temperature=2.0, out=out, num_threads=nt)
            ),
            f"torch {torch.__version__} F.kl_div fwd+bwd": torch_kl,
        },
        repeats,
    )
    _report(
        f"vs PyTorch, {n}x{m} float32, {nt} threads",
        times,
        "distillation_loss_with_grad(forward_kl, out=)",
    )


def linear(n: int, d: int, V: int, nt: int, repeats: int) -> None:
    from scipy.linalg import blas
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, d)).astype(np.float32)
    W = (rng.standard_normal((V, d)) / np.sqrt(d)).astype(np.float32)
    tx = rng.standard_normal((n, d)).astype(np.float32)
    tW = (rng.standard_normal((V, d)) / np.sqrt(d)).astype(np.float32)
    y = rng.integers(0, V, size=n)
    gl = rng.standard_normal(n)
    L = np.empty((n, V), np.float32)
    gx = np.empty((n, d), np.float32)
    gW = np.empty((V, d), np.float32)

    def gemms(k):
        # the floor: the products alone with SciPy's BLAS (the fused functions'
        # BLAS), on the transposes (Fortran views: no copies), as bench_linear.py
        for _ in range(k - 2):
            blas.sgemm(1.0, W.T, x.T, trans_a=1, c=L.T, overwrite_c=1)
        blas.sgemm(1.0, W.T, L.T, c=gx.T, overwrite_c=1)
        blas.sgemm(1.0, x.T, L.T, trans_b=1, c=gW.T, overwrite_c=1)

    r = linear_chunk_rows(n, V, d, "float32")
    with threadpool_limits(limits=nt, user_api="blas"):
        times = _min_times(
            {
                "3 GEMMs": lambda: gemms(3),
                "linear_token_logprobs_vjp": lambda: fastxent.linear_token_logprobs_vjp(
                    x, W, y, gl
                ),
                "linear_token_logprobs_vjp(chunk n/4)": (
                    lambda: fastxent.linear_token_logprobs_vjp(x, W, y, gl, chunk_size=n // 4)
                ),
                "linear_cross_entropy_with_grad": (
                    lambda: fastxent.linear_cross_entropy_with_grad(x, W, y)
                ),
                "4 GEMMs": lambda: gemms(4),
                "linear_distillation_loss_with_grad": (
                    lambda: fastxent.linear_distillation_loss_with_grad(x, W, tx, tW)
                ),
                "linear_distillation_loss_with_grad(chunk n/8)": (
                    lambda: fastxent.linear_distillation_loss_with_grad(
                        x, W, tx, tW, chunk_size=n // 8
                    )
                ),
            },
            repeats,
        )
    print(f"\nlinear, {n}x{d}x{V} float32, BLAS on {nt} threads, chunk {r} rows")
    vjp = times["linear_token_logprobs_vjp"]
    print(f"  linear_token_logprobs_vjp / 3 GEMMs: {vjp / times['3 GEMMs']:.3f}x"
          f"  ({vjp * 1e3:.1f} ms; buffer {r / n:.1%} of the logits)")  # fmt: skip
    for k in ("linear_token_logprobs_vjp(chunk n/4)", "linear_cross_entropy_with_grad"):
        print(f"  {k} / 3 GEMMs: {times[k] / times['3 GEMMs']:.3f}x")
    ratio = times["linear_distillation_loss_with_grad"] / times["4 GEMMs"]
    r2 = linear_chunk_rows(n, V, d, "float32", buffers=2)
    print(f"  linear_distillation_loss_with_grad / 4 GEMMs: {ratio:.3f}x"
          f"  ({times['linear_distillation_loss_with_grad'] * 1e3:.1f} ms; two buffers of "
          f"{r2} rows, {2 * r2 / n:.1%} of the logits)")  # fmt: skip
    k = "linear_distillation_loss_with_grad(chunk n/8)"
    print(f"  {k} / 4 GEMMs: {times[k] / times['4 GEMMs']:.3f}x  (two buffers, 25% of the logits)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shape", default="4096x32000")
    p.add_argument("--linear", default="2048x512x32000")
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    n, m = map(int, a.shape.split("x")) if a.shape else (0, 0)
    rows(n, m, a.threads, a.repeats)
    if a.linear:
        ln, d, V = map(int, a.linear.split("x"))
        linear(ln, d, V, a.threads, max(3, a.repeats // 2))


if __name__ == "__main__":
    main()
