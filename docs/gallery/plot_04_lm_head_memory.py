"""
The fused LM head's memory against the logits it never holds
============================================================

A language-model head maps hidden states ``x`` (n × d) to logits over a
vocabulary of V tokens.  The unfused way forms the n × V logits and their
gradient (as large again, unless written in place); the fused
:func:`fastxent.linear_cross_entropy_with_grad` goes through the rows in
chunks and holds one ``chunk_size × V`` buffer.  The peak memory of each
path above its inputs and outputs is measured with :mod:`tracemalloc`
(NumPy reports its allocations to it), at a small size; the bars at a
Llama-3-sized head (n = 8 192, V = 128 256) are computed from the same
rules.
"""

import tracemalloc

import matplotlib.pyplot as plt
import numpy as np

import fastxent
from fastxent._linear import default_chunk_size

rng = np.random.default_rng(0)
n, d, V = 1024, 64, 32_000
x = rng.standard_normal((n, d), dtype=np.float32)
W = rng.standard_normal((V, d), dtype=np.float32) * 0.05
y = rng.integers(0, V, n)


def peak_mib(f):
    """Peak traced memory of f(), in MiB, above what was allocated before."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = f()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak / 2**20, out


def unfused():
    logits = x @ W.T  # n x V, held
    loss, G = fastxent.cross_entropy_with_grad(logits, y, out=logits)  # gradient in place
    return loss, G @ W, G.T @ x


def fused():
    loss, gx, gW, _ = fastxent.linear_cross_entropy_with_grad(x, W, y)
    return loss, gx, gW


outputs_mib = (n * d + V * d) * 4 / 2**20  # grad_x and grad_W: held by both
mem_unfused, (l_u, gx_u, gW_u) = peak_mib(unfused)
mem_fused, (l_f, gx_f, gW_f) = peak_mib(fused)
assert np.isclose(l_u, l_f, rtol=1e-5) and np.allclose(gx_u, gx_f, rtol=1e-3, atol=1e-6)
logits_mib = n * V * 4 / 2**20
print(f"n={n}, d={d}, V={V}: logits {logits_mib:.0f} MiB")
print(f"unfused peak above inputs {mem_unfused - outputs_mib:.0f} MiB")
print(f"fused peak above inputs {mem_fused - outputs_mib:.1f} MiB")

# A Llama-3-sized head, float32: the logits and their gradient, against the
# fused call's chunk buffer (the default chunk rule, as the function uses it).
N, D, VV = 8192, 1024, 128_256
big_logits = N * VV * 4 / 2**30
big_chunk = default_chunk_size(N, VV, D, 4) * VV * 4 / 2**30

fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
ax = axes[0]
ax.bar(
    ["logits\n(unfused, measured)", "fused chunk\nbuffer (measured)"],
    [mem_unfused - outputs_mib, mem_fused - outputs_mib],
    color=["tab:gray", "tab:blue"],
)
ax.set_ylabel("peak memory above inputs/outputs, MiB")
ax.set_title(f"n={n}, d={d}, V={V}")
ax = axes[1]
ax.bar(
    ["logits", "logits +\ngradient", "fused chunk\nbuffer"],
    [big_logits, 2 * big_logits, big_chunk],
    color=["tab:gray", "tab:gray", "tab:blue"],
)
ax.set_ylabel("GiB (float32)")
ax.set_title(f"Llama-3-sized head: n={N}, V={VV}")
fig.tight_layout()
plt.show()
