"""Peer benchmarks: mean cross-entropy loss + gradient w.r.t. the logits.

Each peer lands in the same group as fastxent's core benchmarks
(``"<case>-<dtype>-<T>T"``), so ``report.py`` prints speed-ups measured in one
run.  The peers are ``fastxent.bench.PEERS``, the ones ``python -m fastxent
bench --compare`` times; those not installed are skipped with a note.

- ``torch``: ``F.cross_entropy(zt, yt)`` then ``loss.backward()`` on
  ``zt = torch.from_numpy(z).requires_grad_()`` (no copy in; torch allocates
  the gradient), threads via ``torch.set_num_threads``.
- ``sklearn``: ``HalfMultinomialLoss(n_classes=m).loss_gradient`` with float
  labels of the logits' dtype, preallocated ``loss_out``/``gradient_out`` and
  ``n_threads``, then the mean of the per-sample losses.  Its gradient is per
  sample (not divided by n): one scaling pass fewer than the others do.
- ``jax``: ``jit(value_and_grad(mean(-take_along_axis(log_softmax(z), y))))``
  on arrays already on the device, ``block_until_ready`` on the result.
  XLA's CPU thread pool is sized at start-up, so JAX is measured only in the
  group whose thread count equals the usable cores.
"""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
from _common import measure

from fastxent.bench import PEERS, missing_peer_note, peer_loss_grad, peer_version

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@contextlib.contextmanager
def _torch_threads_kept():
    """peer_loss_grad sets torch's global thread count: put it back after."""
    torch = sys.modules.get("torch")
    before = None if torch is None else torch.get_num_threads()
    try:
        yield
    finally:
        if before is not None:
            torch.set_num_threads(before)


# One benchmark per entry of the registry that ``python -m fastxent bench
# --compare`` uses: a peer added there is measured here too.
@pytest.mark.parametrize("name", list(PEERS))
# A peer whose thread count is fixed at start-up (JAX) runs only in the group
# whose thread count is the usable cores.
@pytest.mark.bench_when(lambda p: PEERS[p["name"]].per_call_threads or p["threads"] == CORES)
def test_peer(benchmark, case, threads, name):
    note = missing_peer_note(name)
    if note is not None:
        pytest.skip(note)
    # scikit-learn writes its gradient into a preallocated buffer: the case's.
    out = case.out if PEERS[name].preallocated else None
    with _torch_threads_kept():
        fn = peer_loss_grad(name, case.z, case.y, threads=threads, out=out)
        measure(benchmark, fn, case=case, impl=name, threads=threads, version=peer_version(name))
