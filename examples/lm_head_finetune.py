"""A language-model head fine-tuning step on the CPU with fastxent's fused
linear + cross-entropy.

Synthetic hidden states ``x`` (n tokens x d) from a frozen model, a head
``W`` (V x d) at Llama-3's vocabulary size, next-token labels with some
positions ignored (padding, -100): each step computes the mean loss and the
gradients of ``CE(x @ W.T + b, y)`` without ever holding the n x V logits,
then takes a plain SGD step on the head.  It prints the loss, the time and
the peak memory of each step beside what the unfused computation would
need for its logits and their gradient.

    python examples/lm_head_finetune.py                 # n = 8192, d = 1024, V = 128256
    python examples/lm_head_finetune.py --n 2048 --steps 3

Needs SciPy (fastxent calls its BLAS) and threadpoolctl.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

import fastxent


def memory_bytes(key: str) -> int:
    """This process's resident memory now ("VmRSS") or at its peak since the
    last reset ("VmHWM"), from Linux's /proc; elsewhere the peak over the
    process's life (getrusage)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> None:
    """Start the peak (VmHWM) afresh from the current resident memory (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8192, help="tokens per step")
    p.add_argument("--d", type=int, default=1024, help="hidden size")
    p.add_argument("--V", type=int, default=128_256, help="vocabulary size (Llama 3)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    n, d, V = args.n, args.d, args.V

    rng = np.random.default_rng(0)
    # A frozen model's hidden states and a head whose logits carry a signal
    # about the labels, so that the loss falls as the head is trained.
    x = rng.standard_normal((n, d), dtype=np.float32)
    W = (rng.standard_normal((V, d), dtype=np.float32) * (0.5 / np.sqrt(d))).astype(np.float32)
    b = np.zeros(V, dtype=np.float32)
    y = np.argmax(x[:, : min(d, 64)] @ W[: min(V, 4096), : min(d, 64)].T, axis=1)
    y[rng.random(n) < 0.05] = -100  # ignored positions (padding)

    inputs = x.nbytes + W.nbytes + b.nbytes
    logits = n * V * 4
    print(f"n = {n} tokens, d = {d}, V = {V}: x and W take {inputs / 2**30:.2f} GiB")
    print(
        f"the unfused step would hold the {n} x {V} float32 logits, {logits / 2**30:.2f} GiB, "
        f"and their gradient, another {logits / 2**30:.2f} GiB (in place: the same array)"
    )
    for step in range(args.steps):
        base = memory_bytes("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        loss, _, grad_W, grad_b = fastxent.linear_cross_entropy_with_grad(
            x, W, y, linear_bias=b, num_threads=args.threads
        )
        seconds = time.perf_counter() - t0
        extra = max(0, memory_bytes("VmHWM") - base)
        W -= args.lr * grad_W  # the SGD step on the head
        b -= args.lr * grad_b
        print(
            f"step {step}: loss {float(loss):.5f}  {seconds:6.2f} s  peak memory of the step "
            f"{extra / 2**30:.2f} GiB, {inputs / 2**30:.2f} GiB of it the gradients it returns "
            f"(the unfused logits alone: {logits / 2**30:.2f} GiB)"
        )
        del grad_W, grad_b


if __name__ == "__main__":
    main()
