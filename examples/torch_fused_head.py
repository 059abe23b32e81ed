"""Train a small PyTorch model on the CPU with fastxent's fused classifier head.

A two-layer encoder feeds a large-vocabulary classifier head.  The same
model, from the same initial weights and on the same batches, is trained
twice with SGD:

* ``F.cross_entropy``: ``F.cross_entropy(head(h), y)``, which holds the
  n x V logits, their log-softmax and their gradient;
* ``fastxent.torch``: ``fastxent.torch.linear_cross_entropy(h, head.weight,
  y, linear_bias=head.bias)``, which never holds the n x V logits (they are
  formed a chunk of rows at a time, loss and gradients in one pass).

It prints each step's loss, each run's time per step and the peak memory
the training loop added (Linux: the process's peak resident set, reset
before each run), and checks that both runs end with the same weights.
Run::

    python examples/torch_fused_head.py --n 1024 --d 64 --V 8000 --steps 5
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import fastxent.torch as fxt


def _status(key):
    """A VmRSS/VmHWM figure of this process in bytes, or None (not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)
    except OSError:
        pass


def make_model(d_in, d, V, seed):
    torch.manual_seed(seed)
    encoder = torch.nn.Sequential(torch.nn.Linear(d_in, d), torch.nn.GELU(), torch.nn.Linear(d, d))
    head = torch.nn.Linear(d, V)
    return encoder, head


def train(fused, batches, d_in, d, V, lr):
    encoder, head = make_model(d_in, d, V, seed=0)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=lr)
    losses = []
    _reset_peak()
    rss0 = _status("VmRSS")
    t0 = time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        h = encoder(x)
        if fused:
            loss = fxt.linear_cross_entropy(h, head.weight, y, linear_bias=head.bias)
        else:
            loss = F.cross_entropy(head(h), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    added = None if peak is None or rss0 is None else peak - rss0
    return losses, seconds, added, [p.detach() for p in params]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1024, help="rows (tokens) per batch")
    ap.add_argument("--d-in", type=int, default=32, help="input features")
    ap.add_argument("--d", type=int, default=64, help="hidden size")
    ap.add_argument("--V", type=int, default=8000, help="classes (vocabulary)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.5)
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(args.n, args.d_in, generator=gen),
            torch.randint(0, args.V, (args.n,), generator=gen),
        )
        for _ in range(args.steps)
    ]
    # fastxent's first call registers its torch operators: not in the timing.
    fxt.linear_cross_entropy(
        torch.zeros(1, 1), torch.zeros(2, 1), torch.zeros(1, dtype=torch.int64)
    )
    runs = {}
    for name, fused in (("F.cross_entropy", False), ("fastxent.torch", True)):
        runs[name] = train(fused, batches, args.d_in, args.d, args.V, args.lr)

    logits_mib = args.n * args.V * 4 / 2**20
    print(f"{args.steps} SGD steps, batch {args.n} x {args.d_in} -> {args.d} -> {args.V} classes")
    print(f"(the n x V float32 logits alone: {logits_mib:.1f} MiB)")
    for name, (losses, _, _, _) in runs.items():
        for step, loss in enumerate(losses):
            print(f"  {name:16s} step {step}: loss {loss:.5f}")
    for name, (_, seconds, added, _) in runs.items():
        mem = "n/a" if added is None else f"{added / 2**20:7.1f} MiB"
        print(
            f"{name:16s} {1e3 * seconds / args.steps:8.1f} ms per step, "
            f"peak memory added by the training loop {mem}"
        )
    ref, ours = runs["F.cross_entropy"][3], runs["fastxent.torch"][3]
    same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(ref, ours, strict=True))
    print(f"same weights after {args.steps} steps: {same}")
    if not same:
        raise SystemExit("the two runs diverged")


if __name__ == "__main__":
    main()
