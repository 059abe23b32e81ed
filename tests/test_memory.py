"""Memory: no hidden n x m temporaries, no per-call leak.

* Peak extra memory, traced: NumPy reports its allocations to
  ``tracemalloc``, so the traced peak during a call bounds every array
  fastxent allocates.  For the loss and gradient it is the gradient itself
  plus the per-row float64 loss vector (``n * 8`` bytes, reduced in a fixed
  order for bit-identical results at any thread count) plus, for
  ``reduction="none"`` in float32, its ``n * 4``-byte cast; with ``out=`` or
  for the loss alone it is just that vector.  Class and sample weights add
  their validated O(m) and O(n) copies.  The slack allowed is 4 KiB.
* Peak extra memory, resident: the per-thread scratch rows are ``malloc``'d
  in C, out of tracemalloc's sight; the peak resident set size (Linux's
  ``VmHWM``, reset through ``/proc/self/clear_refs``) during a call must
  stay within the gradient plus ``O(threads * m)`` plus a few MiB of noise,
  far below one more ``n x m`` array.  (glibc's ``mallopt`` fixes the mmap
  threshold first, so that a freed big array really leaves the resident
  set instead of being reused unseen.)
* Leaks: 100 000 small calls (and 10 000 failing ones, and 300 threaded
  ones with 64 KiB of per-thread scratch) must not grow the resident set
  size by more than 2 MiB (a leak of one small array per call would be
  ~25 MiB, of the scratch ~37 MiB).
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import numpy as np
import pytest
from helpers import make_labels, make_logits, make_probs

import fastxent

# The suite-wide input guard copies the inputs of every call: not here.
pytestmark = pytest.mark.no_input_guard

SLACK = 4096  # bytes: Python objects, array headers, small index arrays
N, M = 400, 1000

OPTIONS = [
    dict(),
    dict(weight="w", sample_weight="s", label_smoothing=0.1, z_loss=1e-3, softcap=10.0),
    dict(reduction="none"),
]


def _problem(dtype, kind, opts, n=N, m=M):
    rng = np.random.default_rng(0)
    z = make_logits(rng, (n, m), dtype)
    t = make_labels(rng, (n,), m) if kind == "labels" else make_probs(rng, (n, m), dtype)
    opts = dict(opts)
    if opts.get("weight") == "w":
        opts["weight"] = rng.random(m)
    if opts.get("sample_weight") == "s":
        opts["sample_weight"] = rng.random(n)
    return z, t, opts


def _traced_peak(call):
    """Peak traced memory (bytes) above what was allocated before ``call()``,
    and its result."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = call()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return peak, result


def _small_bytes(n, m, dtype, opts):
    """What a call may allocate besides the gradient: the per-row float64
    losses, their cast for reduction="none", and the validated copies of
    the class weights (float64 and compute dtype) and sample weights."""
    total = n * 8
    if opts.get("reduction") == "none" and dtype != np.float64:
        total += n * np.dtype(dtype).itemsize
    if opts.get("weight") is not None:
        total += 3 * m * 8
    if opts.get("sample_weight") is not None:
        total += 2 * n * 8
    return total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("opt_index", range(len(OPTIONS)))
def test_traced_peak_of_loss_and_grad(dtype, kind, opt_index):
    z, t, opts = _problem(dtype, kind, OPTIONS[opt_index])
    fastxent.cross_entropy_with_grad(z, t, **opts)  # warm up (thread team, caches)
    vec = _small_bytes(N, M, dtype, opts)

    peak, (loss, grad) = _traced_peak(lambda: fastxent.cross_entropy_with_grad(z, t, **opts))
    assert grad.nbytes <= peak <= grad.nbytes + vec + SLACK, (peak, grad.nbytes, vec)
    del loss, grad

    peak, _ = _traced_peak(lambda: fastxent.cross_entropy(z, t, **opts))
    assert peak <= vec + SLACK, (peak, vec)

    zz = z.copy()
    peak, (_, grad) = _traced_peak(lambda: fastxent.cross_entropy_with_grad(zz, t, out=zz, **opts))
    assert grad is zz
    assert peak <= vec + SLACK, (peak, vec)

    out = np.empty_like(z)
    peak, _ = _traced_peak(lambda: fastxent.cross_entropy_grad(z, t, out=out, **opts))
    assert peak <= vec + SLACK, (peak, vec)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_traced_peak_of_rows(dtype):
    z = make_logits(np.random.default_rng(1), (N, M), dtype)
    for name in ("softmax", "log_softmax"):
        f = getattr(fastxent, name)
        peak, p = _traced_peak(lambda f=f: f(z))
        assert p.nbytes <= peak <= p.nbytes + SLACK, (name, peak)
        peak, _ = _traced_peak(lambda f=f: f(z, out=z))
        assert peak <= SLACK, (name, peak)
    peak, _ = _traced_peak(lambda: fastxent.logsumexp(z))
    assert peak <= N * 8 + N * np.dtype(dtype).itemsize + SLACK, peak


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") <= _status_kib("VmRSS") + 64


def _rss_bytes():
    return _status_kib("VmRSS") * 1024


# AddressSanitizer keeps freed memory in quarantine (hundreds of MiB): RSS
# growth means nothing under it.
SANITIZED = "-fsanitize" in fastxent._kernels.build_cflags()

needs_proc = pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs") or SANITIZED,
    reason="needs Linux /proc/self/clear_refs, and no sanitizer",
)


@pytest.fixture(scope="module")
def fixed_mmap_threshold():
    """Big allocations always mmap'd (and unmapped when freed): glibc's
    dynamic threshold would otherwise keep a freed 32 MB array resident in
    the heap and hand it to the next allocation without a page fault."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        ok = 0
    if ok != 1:
        pytest.skip("needs glibc's mallopt (not under sanitizers)")


@needs_proc
@pytest.mark.parametrize("opt_index", range(len(OPTIONS)))
def test_resident_peak_of_loss_and_grad(opt_index, fixed_mmap_threshold):
    """C-level scratch included: the resident peak of a call is the
    gradient plus little; one hidden n x m temporary would double it."""
    n, m = 2000, 4000  # 32 MB of float32 logits
    z, t, opts = _problem(np.float32, "labels", OPTIONS[opt_index], n, m)
    fastxent.cross_entropy_with_grad(z, t, **opts)
    gc.collect()
    if not _reset_peak_rss():
        pytest.skip("cannot reset the peak RSS")
    before = _rss_bytes()
    _, grad = fastxent.cross_entropy_with_grad(z, t, **opts)
    peak = _status_kib("VmHWM") * 1024 - before
    threads = max(1, fastxent._kernels.max_threads())
    bound = grad.nbytes + _small_bytes(n, m, np.float32, opts) + threads * m * 8 + (4 << 20)
    assert peak <= bound, (peak, grad.nbytes, bound)
    assert peak >= grad.nbytes // 2  # the measurement does see the gradient


def _rss_growth(call, repeats, warmup=1000):
    for _ in range(warmup):
        call()
    gc.collect()
    before = _rss_bytes()
    for _ in range(repeats):
        call()
    gc.collect()
    return _rss_bytes() - before


@needs_proc
def test_no_leak_over_100k_small_calls():
    rng = np.random.default_rng(2)
    z = make_logits(rng, (4, 16), np.float32)
    y = make_labels(rng, (4,), 16)
    p = make_probs(rng, (4, 16), np.float32)
    out = np.empty_like(z)
    calls = [
        lambda: fastxent.cross_entropy_with_grad(z, y),
        lambda: fastxent.cross_entropy_grad(z, p, softcap=5.0, out=out),
        lambda: fastxent.cross_entropy(z, y, reduction="none", label_smoothing=0.1),
        lambda: fastxent.log_softmax(z),
        lambda: fastxent.logsumexp(z),
    ]

    def mixed():
        for c in calls:
            c()

    growth = _rss_growth(mixed, 20_000)  # 100 000 calls
    assert growth < (2 << 20), f"RSS grew by {growth / 2**20:.1f} MiB over 100 000 calls"


@needs_proc
def test_no_leak_on_errors():
    z = np.zeros((4, 16), np.float32)
    bad = np.array([0, 1, 99, 2])

    def failing():
        with pytest.raises(ValueError):
            fastxent.cross_entropy_with_grad(z, bad, weight=np.ones(16))

    growth = _rss_growth(failing, 10_000)
    assert growth < (2 << 20), f"RSS grew by {growth / 2**20:.1f} MiB over 10 000 errors"


@needs_proc
def test_no_leak_with_thread_scratch():
    """The threaded path with per-thread scratch rows (soft-cap)."""
    rng = np.random.default_rng(3)
    n, m = 4, 16384  # 64 KiB of scratch per thread and call
    z = make_logits(rng, (n, m), np.float32)
    y = make_labels(rng, (n,), m)
    out = np.empty_like(z)

    def call():
        fastxent.cross_entropy_with_grad(z, y, softcap=10.0, out=out, num_threads=2)

    growth = _rss_growth(call, 300, warmup=20)
    assert growth < (2 << 20), f"RSS grew by {growth / 2**20:.1f} MiB over 300 calls"
