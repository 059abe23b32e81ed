"""Compiled kernels of fastxent.

Design
------
* One row at a time.  Every kernel is a span function (rows, or blocks of
  rows, ``[lo, hi)``) around a ``noexcept nogil`` row function that reads
  the row of logits, its target and writes its own outputs, run by the one
  serial-or-parallel driver, ``fx_run_spans`` (``_driver.h``: the team, each
  thread's scratch, the timing, the error codes).  The row functions take
  raw pointers, so a caller can apply them to any block of rows (a chunk of
  a bigger matrix, a block of ``X @ W.T``) with its own output pointers.
* The inner loops (max, exp-and-sum with the target terms, gradient pass)
  are C functions in ``_rowops.c``: Cython cannot emit ``#pragma omp simd``,
  and without it (or ``-ffast-math``, which we refuse) GCC vectorises
  neither the exponential nor floating-point reductions.
* The fused loss+gradient row touches the logits three times (max; exp
  written straight into the gradient row while summing it and the target
  terms; final scaling of the gradient row, which is still in cache) and
  computes one exp per element.
* Few classes (class indices, no soft-cap; m <= 100 for float32, m <= 47
  for float64, where it beats the row kernel) take a tile kernel instead
  (``fx_tile_kernel``): 64 rows at a time, transposed (in 8 x 8 or 4 x 4
  register blocks) so that every step vectorises across rows rather than
  along a short row.  Two classes have their own (``fx_two_class_kernel``: one
  exp and one log1p a row on the interleaved logits).
* ``_loss_rows`` runs the right one of those on any block of rows with its
  own output pointers; every loss job goes through it: whole arrays, the
  chunks of ``x @ W.T`` of the fused linear cross-entropy (whose GEMMs are
  SciPy's BLAS through function pointers), Dask blocks (with the batch's
  own "mean" denominator), and float16/bfloat16 rows widened a block at a
  time into a per-thread float32 buffer.
* Small calls are cheap: the entry points check their ndarrays with NumPy's
  C API instead of acquiring typed memoryviews, do everything in one
  ``nogil`` block, and below ``PARALLEL_MIN_ELEMENTS`` logits run a plain
  loop that never enters the OpenMP runtime.
* All loss options reduce to one per-row form, written once in
  ``_options.h`` (the options struct, the target masses, the gradient scale
  and the per-row finisher every kernel calls).  With ``q_k`` the effective
  target mass of class ``k`` (labels: ``(1-eps) w_y [k=y] + eps/m w_k``;
  probabilities: ``w_k ((1-eps) Y_k + eps/m)``), ``Q = sum_k q_k`` and
  ``lse = max + log S``::

      loss_i = s_i * (sum_k q_k (lse - z_k) + zloss * lse**2)
      grad_i = s_i / D * ((Q + 2 zloss lse) softmax(z) - q) * cap'(z)

  where ``s_i`` is the sample weight, ``D`` the denominator under ``"mean"``
  (1 otherwise; +inf when it is 0, which makes that gradient 0), and
  ``cap'`` the derivative of the optional soft-cap.  The kernels differ
  only in how they reduce rows; ``choose_kernel`` picks one per job.
* Per-row losses are written to a float64 array (or, for a reduced loss
  in the few-class kernels, summed per block of FX_TILE_ROWS rows as each
  block is finished) and summed pairwise in a fixed order after the
  parallel loop, so results do not depend on the number of threads (the
  leaves of the sum's top levels run on the threads, with the serial sum's
  split points).  The label check before it (and an unweighted "mean"
  denominator, an integer count) splits over the threads too: at m = 2
  these serial passes had been a third of the call.
* Errors (a failed scratch allocation; a label found out of range where a
  kernel reads it, which only another thread writing to the labels after
  the check can cause) are flagged through return codes, never raised
  inside the parallel region.  Each label is read once by the kernel that
  uses it, and re-checked there: a data race never becomes an index.
* The driver gives each thread one contiguous chunk and times it; a
  region kept waiting far longer than its chunks worked (another
  parallel program spinning on the same cores) makes calls that asked for
  the default thread count run on one thread for a while (``_governor.h``).

Files
-----
``_kernels.pxd`` declares the C headers; this file holds the row kernel,
the loss and softmax jobs and their entry points; ``_kernels_half.pxi``
the half-precision drivers, ``_kernels_linear.pxi`` the fused linear chunk
loop, ``_kernels_hooks.pxi`` the test hooks (included below).
"""
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer, PyCapsule_IsValid
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY, NAN, log, log1p
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int32_t, int64_t, uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FX_OPENMP 1
    #else
    #define FX_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    #if defined(_WIN32)
    static int fx_forked = 0;
    static int fx_register_fork_handler(void) { return 0; }
    #else
    #include <pthread.h>
    static volatile int fx_forked = 0;
    static void fx_mark_forked_child(void) { fx_forked = 1; }
    static int fx_register_fork_handler(void)
    {
        return pthread_atfork(NULL, NULL, fx_mark_forked_child);
    }
    #endif
    """
    int FX_OPENMP
    int fx_forked
    int fx_register_fork_handler() noexcept nogil
    int omp_get_max_threads() noexcept nogil

if fx_register_fork_handler() != 0:
    raise ImportError("fastxent._kernels: pthread_atfork failed (out of memory)")

cnp.import_array()

ctypedef fused label_t:
    int32_t
    int64_t

# Below this many logits a call runs on the calling thread: starting the
# OpenMP team costs a few microseconds, more than the work itself.
cdef enum:
    PARALLEL_MIN_ELEMENTS = 32768
    # the tile kernel (class indices, no soft-cap) up to these m; FX_SMALL_M_MAX
    # (its tile's size) must be at least the larger
    TILE_MAX_M_FLOAT = 100
    TILE_MAX_M_DOUBLE = 47


# Below this many logits (n * m) the kernels run on the calling thread.
SERIAL_BELOW = PARALLEL_MIN_ELEMENTS

cdef int _raise_failed(int failed) except -1:
    if failed & FX_OUT_OF_MEMORY:
        raise MemoryError("fastxent: could not allocate scratch memory")
    if failed & FX_LABEL_RACED:
        raise RuntimeError(
            "fastxent: a label changed while the kernel read it (another thread wrote to "
            "the target array during the call); the rows concerned were set to NaN. "
            "Do not modify the target while a fastxent call uses it.")
    return 0


# ---- typed front ends of the C primitives (float or double) ----

cdef inline floating row_max(const floating *z, Py_ssize_t m) noexcept nogil:
    if floating is float:
        return fx_max_f(z, m)
    else:
        return fx_max_d(z, m)


cdef inline floating row_softcap_max(const floating *z, Py_ssize_t m,
                                     floating c, floating *out) noexcept nogil:
    if floating is float:
        return fx_softcap_max_f(z, m, c, out)
    else:
        return fx_softcap_max_d(z, m, c, out)


cdef inline double row_expsum(const floating *z, Py_ssize_t m, floating shift,
                              floating *out, const floating *w,
                              const floating *y, floating alpha, floating beta,
                              double *tdot, double *rest=NULL) noexcept nogil:
    if floating is float:
        return fx_expsum_f(z, m, shift, out, w, y, alpha, beta, tdot, rest)
    else:
        return fx_expsum_d(z, m, shift, out, w, y, alpha, beta, tdot, rest)


cdef inline void row_grad_pass(floating *g, Py_ssize_t m, floating a,
                               floating b, const floating *w,
                               const floating *y, floating alpha,
                               floating beta, const floating *zc,
                               floating inv_c) noexcept nogil:
    if floating is float:
        fx_grad_pass_f(g, m, a, b, w, y, alpha, beta, zc, inv_c)
    else:
        fx_grad_pass_d(g, m, a, b, w, y, alpha, beta, zc, inv_c)


cdef inline bint row_masked_without_mass(const floating *z, Py_ssize_t m,
                                         Py_ssize_t label, const floating *y,
                                         const floating *w, const fx_options *o) noexcept nogil:
    if floating is float:
        return fx_masked_without_mass_f(z, m, label, y, w, o)
    else:
        return fx_masked_without_mass_d(z, m, label, y, w, o)


cdef inline double row_softmax_coef(double b, Py_ssize_t m, Py_ssize_t label,
                                    const floating *y, const floating *w,
                                    const fx_options *opt, double lse, double S) noexcept nogil:
    if floating is float:
        return fx_softmax_coef_f(b, m, label, y, w, opt, lse, S)
    else:
        return fx_softmax_coef_d(b, m, label, y, w, opt, lse, S)


cdef inline void row_sub2(const floating *z, Py_ssize_t m, floating s1,
                          floating s2, floating *out) noexcept nogil:
    if floating is float:
        fx_sub2_f(z, m, s1, s2, out)
    else:
        fx_sub2_d(z, m, s1, s2, out)


cdef inline void row_scale(floating *g, Py_ssize_t m, floating a) noexcept nogil:
    if floating is float:
        fx_scale_f(g, m, a)
    else:
        fx_scale_d(g, m, a)


cdef inline void row_hess_pass(const floating *e, Py_ssize_t m, floating inv_s,
                               floating c, floating *h) noexcept nogil:
    if floating is float:
        fx_hess_pass_f(e, m, inv_s, c, h)
    else:
        fx_hess_pass_d(e, m, inv_s, c, h)


cdef inline int tile_block(
    const floating *z, Py_ssize_t R, Py_ssize_t m, const void *labels,
    bint labels_64bit, int64_t ignore_index, const floating *w,
    const double *sw, const fx_options *opt, double *loss_out, floating *g,
    floating *h, int kernel,
) noexcept nogil:
    """The tile or the two-class kernel (``kernel``) on one block; returns how
    many of its labels were out of range when read (a data race; see
    fx_tile_kernel)."""
    if kernel == KERNEL_TWO_CLASS:  # one exp and one log1p a row
        if floating is float:
            return fx_two_class_kernel_f(z, R, labels, labels_64bit, ignore_index, w, sw, opt,
                                         loss_out, g, h)
        else:
            return fx_two_class_kernel_d(z, R, labels, labels_64bit, ignore_index, w, sw, opt,
                                         loss_out, g, h)
    elif floating is float:
        return fx_tile_kernel_f(z, R, m, labels, labels_64bit, ignore_index, w, sw, opt,
                                loss_out, g, h)
    else:
        return fx_tile_kernel_d(z, R, m, labels, labels_64bit, ignore_index, w, sw, opt,
                                loss_out, g, h)


# ---- the row kernels ----

cdef double row_kernel(
    const floating *z, Py_ssize_t m, Py_ssize_t label, const floating *y,
    const floating *w, double s, const fx_options *opt, floating *g,
    floating *h, floating *scratch,
) noexcept nogil:
    """The row kernel: loss of one row, and its gradient into ``g`` unless
    ``g`` is NULL.

    ``label >= 0`` selects class-index targets, otherwise ``y`` points at
    the row of class probabilities.  ``w`` (class weights) may be NULL.
    ``scratch`` holds ``m`` elements and is used only with a soft-cap; it
    keeps the capped logits so that ``g`` may alias ``z`` (in place).
    ``h`` (NULL, or with ``g``; no z-loss or soft-cap) receives the diagonal
    of the Hessian, ``b Q P (1 - P)``.  The options' arithmetic is
    ``_options.h``'s; this function only reduces the row.
    """
    cdef const floating *zc = z
    cdef floating mx, inv_c = 0
    cdef floating uniform = <floating>opt.uniform_mass
    cdef bint smoothing = opt.label_smoothing > 0
    cdef double S, Q, dot, a, b
    cdef double c_main = 0, cap_y = 1
    cdef fx_row row
    if opt.softcap > 0:
        mx = row_softcap_max(z, m, <floating>opt.softcap, scratch)
        zc = scratch
        inv_c = <floating>(1.0 / opt.softcap)
    else:
        mx = row_max(z, m)
        # A fully masked row without target mass (padding, say) contributes
        # nothing, where the arithmetic would give -inf - -inf = NaN.  (The
        # soft-cap maps -inf to -c, so capped rows never get here.)
        if mx == -INFINITY and row_masked_without_mass(z, m, label, y, w, opt):
            if g != NULL:
                memset(g, 0, m * sizeof(floating))
            if h != NULL:
                memset(h, 0, m * sizeof(floating))
            return 0.0

    # The target terms come out of the exp pass (tdot: their dot product
    # with z - max, and their total mass); the label's own term is read
    # before that pass writes g, which may alias z.
    cdef double tdot[2]
    tdot[0] = 0
    tdot[1] = 0
    if label >= 0:
        c_main = fx_label_mass(opt, w[label] if w != NULL else 1.0)
        # Skipping zero-mass terms keeps a masked (-inf) class out.
        dot = c_main * (<double>zc[label] - <double>mx) if c_main != 0 else 0.0
        if opt.softcap > 0:
            cap_y = 1.0 - (<double>zc[label] * inv_c) ** 2
        S = row_expsum(zc, m, mx, g, w, <const floating *>NULL, 0, uniform,
                       tdot if smoothing else NULL)
        Q = c_main + tdot[1]
        dot += tdot[0]
    else:
        S = row_expsum(zc, m, mx, g, w, y, <floating>opt.label_mass, uniform, tdot)
        Q = tdot[1]
        dot = tdot[0]

    b = fx_grad_scale(opt, s)
    row = fx_finish_row(opt, s, b, mx, log(S), Q, dot)
    if g != NULL:
        if b - b == 0:
            a = row.softmax_weight / S
        else:  # b is +-inf or NaN (a zero "mean" denominator): PyTorch's pattern
            a = row_softmax_coef(b, m, label, y, w, opt, row.lse, S)
        if h != NULL:  # from exp(z - max), which g holds until the pass below
            row_hess_pass(g, m, <floating>(1.0 / S), <floating>(b * Q), h)
        if label >= 0:
            # Without smoothing the class weights only enter through c_main.
            row_grad_pass(g, m, <floating>a, <floating>b,
                          w if smoothing else <const floating *>NULL,
                          <const floating *>NULL, 0, uniform,
                          zc if opt.softcap > 0 else <const floating *>NULL,
                          inv_c)
            g[label] -= <floating>(b * c_main * cap_y)
        else:
            row_grad_pass(g, m, <floating>a, <floating>b, w, y,
                          <floating>opt.label_mass, uniform,
                          zc if opt.softcap > 0 else <const floating *>NULL,
                          inv_c)
    return row.loss


cdef inline double softmax_row(const floating *z, Py_ssize_t m, floating *out,
                               bint take_log) noexcept nogil:
    """softmax or log_softmax of one row into ``out`` (NULL: neither);
    returns the row's logsumexp.  ``out`` may alias ``z``."""
    cdef floating mx = row_max(z, m)
    cdef double S, rest
    cdef Py_ssize_t k
    if out == NULL and (mx == INFINITY or mx == -INFINITY):
        # All -inf, or some +inf: the shifted sum is NaN, but the limit is
        # mx itself (as in scipy and PyTorch) unless the row holds a NaN.
        for k in range(m):
            if z[k] != z[k]:
                return z[k]
        return mx
    if take_log or out == NULL:
        # log1p of the sum without the max's own term: lse = max + 4e-18
        # for [0, -40] (scipy, np.logaddexp), where log(1 + 4e-18) gives max.
        S = row_expsum(z, m, mx, <floating *>NULL, NULL, NULL, 0, 0, NULL, &rest)
        if out != NULL:
            row_sub2(z, m, mx, <floating>log1p(rest), out)
        return mx + log1p(rest)
    S = row_expsum(z, m, mx, out, NULL, NULL, 0, 0, NULL)
    row_scale(out, m, <floating>(1.0 / S))
    return mx + log(S)


# ---- drivers: a serial loop or a prange over the rows ----
#
# Small inputs run a plain loop on the calling thread: an OpenMP region
# with a false ``if`` clause still sets up a team in libgomp, which costs a
# small call more than its arithmetic.

cdef enum:
    # The loss kernels (choose_kernel); KERNEL_AUTO lets it choose.
    KERNEL_AUTO = 0
    KERNEL_ROW = 1
    KERNEL_TILE = 2
    KERNEL_TWO_CLASS = 3

# Tests force a kernel with force_kernel() to run every option through every
# kernel that takes the case; KERNEL_AUTO otherwise.
cdef int forced_kernel = KERNEL_AUTO


cdef inline int choose_kernel(bint labels, Py_ssize_t m, const fx_options *opt,
                              bint is_float) noexcept nogil:
    """The one place that picks the loss kernel of a job.  The tile kernel
    (and, for two classes, the two-class kernel) takes class indices
    without a soft-cap up to TILE_MAX_M_FLOAT / TILE_MAX_M_DOUBLE classes,
    where it beats the row kernel (benchmarks/bench_few_classes.py); the row
    kernel takes everything.  A forced kernel that cannot take the case
    leaves the choice to these rules."""
    cdef bint tile_ok = labels and opt.softcap == 0 and m <= FX_SMALL_M_MAX
    if forced_kernel == KERNEL_ROW:
        return KERNEL_ROW
    if forced_kernel == KERNEL_TILE and tile_ok:
        return KERNEL_TILE
    if forced_kernel == KERNEL_TWO_CLASS and tile_ok and m == 2:
        return KERNEL_TWO_CLASS
    if not tile_ok or m > (TILE_MAX_M_FLOAT if is_float else TILE_MAX_M_DOUBLE):
        return KERNEL_ROW
    return KERNEL_TWO_CLASS if m == 2 else KERNEL_TILE


cdef inline bint _use_threads(Py_ssize_t n, Py_ssize_t m, int num_threads) noexcept nogil:
    # fx_forked: never enter the OpenMP runtime in a forked child (above).
    return (num_threads > 1 and n > 1 and n * m >= PARALLEL_MIN_ELEMENTS and not fx_forked
            and num_threads <= FX_TEAM_MAX)


cdef enum:
    # Labels per task of the parallel label count (a fixed split: the count
    # is an integer, the same for any split, but the tasks stay coarse).
    LABEL_CHUNK = 65536
    # The parallel pairwise sum splits the top PAIRWISE_LEVELS levels of the
    # recursion, 2**PAIRWISE_LEVELS leaves; below PAIRWISE_PARALLEL_MIN
    # values one thread is faster than starting a team.
    PAIRWISE_LEVELS = 3
    PAIRWISE_LEAVES = 8
    PAIRWISE_PARALLEL_MIN = 65536


cdef inline Py_ssize_t _count_label_chunk(const label_t *labels, Py_ssize_t c, Py_ssize_t n,
                                          Py_ssize_t m, int64_t ignore_index,
                                          Py_ssize_t *bad) noexcept nogil:
    """fx_count_labels over chunk c."""
    cdef Py_ssize_t i0 = c * LABEL_CHUNK
    return fx_count_labels(labels + i0, label_t is int64_t, min(n - i0, <Py_ssize_t>LABEL_CHUNK),
                           m, ignore_index, bad)


cdef Py_ssize_t _label_pass(const label_t *labels, Py_ssize_t n, Py_ssize_t m,
                            int64_t ignore_index, const floating *w,
                            const double *sw, double *denom,
                            int num_threads) noexcept nogil:
    """Position of the first label outside [0, m) that is not ignore_index
    (-1 if none), and in *denom the "mean" denominator sum_i s_i w[y_i] over
    the kept rows, summed in row order (so it is the same for any thread
    count).  Unweighted, the denominator is the count of kept rows, an exact
    integer: that pass is branch-free and splits over the threads (at m = 2
    the serial, branchy pass took 12 % of a call)."""
    cdef Py_ssize_t i, c, nchunks = (n + LABEL_CHUNK - 1) // LABEL_CHUNK
    cdef Py_ssize_t ignored = 0, bad = 0, chunk_bad = 0
    cdef int64_t lab
    cdef double total = 0, term
    if w == NULL and sw == NULL:
        if _use_threads(n, 1, num_threads):
            for c in prange(nchunks, schedule='static', num_threads=num_threads):
                chunk_bad = 0  # assigned in the loop: private to each thread
                ignored += _count_label_chunk(labels, c, n, m, ignore_index, &chunk_bad)
                bad += chunk_bad
        else:
            for c in range(nchunks):
                ignored += _count_label_chunk(labels, c, n, m, ignore_index, &chunk_bad)
                bad += chunk_bad
        if bad == 0:
            denom[0] = <double>(n - ignored)
            return -1
    for i in range(n):
        lab = labels[i]
        if lab == ignore_index:
            continue
        if lab < 0 or lab >= m:
            denom[0] = total
            return i
        term = <double>w[lab] if w != NULL else 1.0
        if sw != NULL:
            term = term * sw[i]
        total += term
    denom[0] = total
    return -1


cdef double _pairwise_sum(const double *x, Py_ssize_t n, int num_threads) noexcept nogil:
    """fx_pairwise_sum with the leaves of its top levels summed on the threads:
    the same split points and the same tree of additions, so the same bits at
    every thread count."""
    cdef Py_ssize_t start[PAIRWISE_LEAVES + 1]
    cdef double part[PAIRWISE_LEAVES]
    cdef Py_ssize_t k, width, half, nleaves = 1
    cdef int _level
    if not _use_threads(n, 1, num_threads) or n < PAIRWISE_PARALLEL_MIN:
        return fx_pairwise_sum(x, n)
    # Split every segment where fx_pairwise_sum splits it; with n at least
    # PAIRWISE_PARALLEL_MIN every segment above the leaves exceeds its
    # 128-value base case, so the recursion splits them all too.
    start[0] = 0
    start[1] = n
    for _level in range(PAIRWISE_LEVELS):
        for k in range(nleaves, 0, -1):
            start[2 * k] = start[k]
        for k in range(nleaves):
            width = start[2 * k + 2] - start[2 * k]
            half = (width // 2) & ~(<Py_ssize_t>7)
            start[2 * k + 1] = start[2 * k] + half
        nleaves *= 2
    for k in prange(nleaves, schedule='static', num_threads=num_threads):
        part[k] = fx_pairwise_sum(x + start[k], start[k + 1] - start[k])
    while nleaves > 1:
        nleaves //= 2
        for k in range(nleaves):
            part[k] = part[2 * k] + part[2 * k + 1]
    return part[0]


cdef inline void _nan_row(floating *row, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t k
    if row != NULL:
        for k in range(m):
            row[k] = NAN


cdef inline double _one_row(
    Py_ssize_t i, const floating *z, Py_ssize_t m, const label_t *labels,
    int64_t ignore_index, const floating *target, const floating *w,
    const double *sw, const fx_options *opt, floating *grad, floating *hess,
    floating *scratch, int *raced,
) noexcept nogil:
    """Row ``i`` of the general path: its loss, and its gradient row."""
    cdef floating *g = grad + i * m if grad != NULL else NULL
    cdef floating *h = hess + i * m if hess != NULL else NULL
    cdef Py_ssize_t label = -1
    cdef int64_t lab
    cdef const floating *y = NULL
    if labels != NULL:
        # Read once: checked before, but another thread may have written
        # it since (a data race), and an index out of [0, m) must never
        # reach the row kernel.
        lab = labels[i]
        if lab == ignore_index:
            if g != NULL:
                memset(g, 0, m * sizeof(floating))
            if h != NULL:
                memset(h, 0, m * sizeof(floating))
            return 0.0
        if lab < 0 or lab >= m:
            _nan_row(g, m)
            _nan_row(h, m)
            raced[0] = 1
            return NAN
        label = <Py_ssize_t>lab
    else:
        y = target + i * m
    return row_kernel(z + i * m, m, label, y, w,
                      sw[i] if sw != NULL else 1.0, opt, g, h, scratch)


cdef struct LossJob:
    # The arguments of _loss_rows, for its span function.
    const void *z
    Py_ssize_t n, m
    const void *labels
    bint labels64, is_float
    int64_t ignore_index
    const void *target
    const void *w
    const double *sw
    const fx_options *opt
    double *loss_out
    void *grad
    void *hess
    double *block_sums
    int kernel


cdef inline int _loss_span_t(const LossJob *j, const floating *z, const label_t *labels,
                             ptrdiff_t lo, ptrdiff_t hi, floating *scratch) noexcept nogil:
    """Rows (row kernel) or blocks of FX_TILE_ROWS rows (tile and two-class
    kernels) [lo, hi) of the job."""
    # Locals, not loads through j in the loop: the outputs are written
    # through pointers the compiler cannot prove distinct from *j.
    cdef Py_ssize_t i, r0, R, n = j.n, m = j.m
    cdef int64_t ignore_index = j.ignore_index
    cdef const floating *target = <const floating *>j.target
    cdef const floating *w = <const floating *>j.w
    cdef const double *sw = j.sw
    cdef const fx_options *opt = j.opt
    cdef double *loss_out = j.loss_out
    cdef double *block_sums = j.block_sums
    cdef floating *grad = <floating *>j.grad
    cdef floating *hess = <floating *>j.hess
    cdef int raced = 0, kernel = j.kernel
    cdef double block_loss[FX_TILE_ROWS]
    if kernel == KERNEL_ROW:
        for i in range(lo, hi):
            loss_out[i] = _one_row(i, z, m, labels, ignore_index, target, w, sw, opt,
                                   grad, hess, scratch, &raced)
        return FX_LABEL_RACED if raced else 0
    # Blocks of rows, written out here rather than in a function of their
    # own: a call per block of a few hundred logits is a cost at small m.
    # With block_sums, each block's losses are summed into it (in row order)
    # instead of written per row.
    for i in range(lo, hi):
        r0 = i * FX_TILE_ROWS
        R = min(<Py_ssize_t>FX_TILE_ROWS, n - r0)
        raced |= tile_block(
            z + r0 * m, R, m, labels + r0, label_t is int64_t, ignore_index, w,
            sw + r0 if sw != NULL else NULL, opt,
            &block_loss[0] if block_sums != NULL else loss_out + r0,
            grad + r0 * m if grad != NULL else NULL,
            hess + r0 * m if hess != NULL else NULL, kernel)
        if block_sums != NULL:
            block_sums[i] = fx_pairwise_sum(block_loss, R)
    return FX_LABEL_RACED if raced else 0


cdef int _loss_span(void *job, ptrdiff_t lo, ptrdiff_t hi, void *scratch) noexcept nogil:
    cdef const LossJob *j = <const LossJob *>job
    if j.is_float:
        if j.labels64:
            return _loss_span_t(j, <const float *>j.z, <const int64_t *>j.labels, lo, hi,
                                <float *>scratch)
        return _loss_span_t(j, <const float *>j.z, <const int32_t *>j.labels, lo, hi,
                            <float *>scratch)
    if j.labels64:
        return _loss_span_t(j, <const double *>j.z, <const int64_t *>j.labels, lo, hi,
                            <double *>scratch)
    return _loss_span_t(j, <const double *>j.z, <const int32_t *>j.labels, lo, hi,
                        <double *>scratch)


cdef inline int _threads_for(Py_ssize_t n, Py_ssize_t m, int num_threads) noexcept nogil:
    """The team size for fx_run_spans: 1 (serial) unless the job is worth a team."""
    return num_threads if _use_threads(n, m, num_threads) else 1


cdef int _loss_rows(
    const floating *z, Py_ssize_t n, Py_ssize_t m, const label_t *labels,
    int64_t ignore_index, const floating *target, const floating *w,
    const double *sw, const fx_options *opt, double *loss_out,
    floating *grad, floating *hess, int num_threads,
    floating *scratch=NULL, double *total=NULL,
) noexcept nogil:
    """Per-row losses (and gradient, and Hessian diagonal) of any block of
    rows with its own output pointers: the one driver every loss job uses
    (whole arrays, chunks of ``x @ W.T``, Dask blocks, half-precision
    blocks converted to float32).  Labels must be range-checked already.
    ``scratch`` (m elements, optional) serves a serial soft-cap.

    ``total`` (optional) gets the fixed-order pairwise sum of the losses.
    With ``loss_out`` NULL only that sum is wanted (``total`` is then
    required): the few-class kernels sum each block of FX_TILE_ROWS rows as
    they go, so a row costs no float64 written and read back (at m = 2 that
    buffer was a quarter of the bytes a call moved); the row kernels use a
    buffer of their own.  Returns a combination of FX_OUT_OF_MEMORY (then the
    total is not computed) and FX_LABEL_RACED, or 0."""
    cdef Py_ssize_t nsums = n
    cdef double *sums = loss_out
    cdef int kernel = choose_kernel(labels != NULL, m, opt, floating is float)
    cdef bint small = kernel != KERNEL_ROW
    cdef int failed
    if loss_out == NULL:
        if small:
            nsums = (n + FX_TILE_ROWS - 1) // FX_TILE_ROWS
        sums = <double *>malloc(max(nsums, 1) * sizeof(double))
        if sums == NULL:
            return FX_OUT_OF_MEMORY
    cdef LossJob job
    job.z = z
    job.n = n
    job.m = m
    job.labels = labels
    job.labels64 = label_t is int64_t
    job.is_float = floating is float
    job.ignore_index = ignore_index
    job.target = target
    job.w = w
    job.sw = sw
    job.opt = opt
    job.loss_out = sums
    job.grad = grad
    job.hess = hess
    job.block_sums = sums if small and loss_out == NULL else NULL
    job.kernel = kernel
    # The tile kernels' items are blocks of rows; a soft-cap (row kernel
    # only) needs a scratch row per thread.
    failed = fx_run_spans(_loss_span, &job,
                          (n + FX_TILE_ROWS - 1) // FX_TILE_ROWS if small else n,
                          m * sizeof(floating) if opt.softcap > 0 else 0, scratch,
                          _threads_for(n, m, num_threads))
    if total != NULL and not (failed & FX_OUT_OF_MEMORY):
        total[0] = _pairwise_sum(sums, nsums, num_threads)
    if loss_out == NULL:
        free(sums)
    return failed


# ---- entry points (called from Python with validated arrays) ----
#
# Arrays come in as plain ndarrays (or None when absent) and are checked
# with the NumPy C API, not acquired as typed memoryviews: a buffer
# acquisition costs about half a microsecond per array, most of a small
# call.  The checks only guard against misuse of this private module (the
# wrappers in _loss.py and _softmax.py guarantee dtype, layout and shape),
# so their messages are terse.

cdef struct Arrays:
    Py_ssize_t n, m
    void *z          # (n, m) logits
    void *labels     # (n,) int32 / int64 class indices, or NULL
    void *target     # (n, m) class probabilities, or NULL
    void *w          # (m,) class weights, or NULL
    double *sw       # (n,) float64 sample weights, or NULL
    double *loss     # (n,) float64 per-row losses, or NULL
    void *grad       # (n, m) gradient or softmax output, or NULL
    void *hess       # (n, m) Hessian diagonal, or NULL
    int half         # 0, or the 16-bit format of z, grad, hess: 1 float16, 2 bfloat16
    bint target_half  # the probabilities are in that format too (else float32)


cdef int _float_type(object z, int half=0) except -1:
    """The type number of the logits: float32, float64, or (``half``, the
    bits of float16 or bfloat16 values) uint16."""
    if not cnp.PyArray_Check(z):
        raise TypeError("fastxent._kernels: logits must be an ndarray")
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>z)
    if half not in (0, 1, 2) or (half and t != cnp.NPY_UINT16):
        raise TypeError("fastxent._kernels: half-precision logits must come as uint16 bits")
    if not half and t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE:
        raise TypeError("fastxent._kernels: logits must be float32 or float64")
    return t


cdef int _take(object a, int typenum, Py_ssize_t d0, Py_ssize_t d1,
               bint writeable, void **data) except -1:
    """Check ``a`` (None, or a C-contiguous, aligned, native-endian array of
    ``typenum`` and shape ``(d0,)`` or ``(d0, d1)``; writeable if asked)
    and store its data pointer (NULL for None)."""
    cdef cnp.ndarray arr
    data[0] = NULL
    if a is None:
        return 0
    if not cnp.PyArray_Check(a):
        raise TypeError("fastxent._kernels: expected an ndarray or None")
    arr = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(arr) != typenum
            or cnp.PyArray_NDIM(arr) != (1 if d1 < 0 else 2)
            or cnp.PyArray_DIM(arr, 0) != d0
            or (d1 >= 0 and cnp.PyArray_DIM(arr, 1) != d1)
            or not cnp.PyArray_ISCARRAY_RO(arr)
            or (writeable and not cnp.PyArray_ISWRITEABLE(arr))):
        raise ValueError("fastxent._kernels: array of the wrong dtype, shape or layout")
    data[0] = cnp.PyArray_DATA(arr)
    return 0


cdef int _take_common(Arrays *a, object z, object class_weight,
                      object sample_weight, object loss_out,
                      object grad_out, object hess_out=None, int half=0) except -1:
    """The logits and the arrays every loss kernel shares; returns the
    logits' type number (uint16 for half precision, whose class weights are
    float32)."""
    cdef int ft = _float_type(z, half)
    a.half = half
    a.target_half = False
    a.n = cnp.PyArray_DIM(<cnp.ndarray>z, 0) if cnp.PyArray_NDIM(<cnp.ndarray>z) == 2 else -1
    a.m = cnp.PyArray_DIM(<cnp.ndarray>z, 1) if a.n >= 0 else -1
    _take(z, ft, a.n, a.m, False, &a.z)
    _take(class_weight, cnp.NPY_FLOAT if half else ft, a.m, -1, False, &a.w)
    _take(sample_weight, cnp.NPY_DOUBLE, a.n, -1, False, <void **>&a.sw)
    _take(loss_out, cnp.NPY_DOUBLE, a.n, -1, True, <void **>&a.loss)
    _take(grad_out, ft, a.n, a.m, True, &a.grad)
    _take(hess_out, ft, a.n, a.m, True, &a.hess)
    if a.hess != NULL and a.grad == NULL:
        raise ValueError("fastxent._kernels: hess_out needs grad_out")
    return ft


cdef tuple _run_loss(const floating *z, const label_t *labels,
                     const floating *target, const Arrays *a,
                     int64_t ignore_index, double label_smoothing, double z_loss,
                     double softcap, double grad_denom, int num_threads):
    """One loss kernel call: class indices (``labels``) or probabilities
    (``target``).  Returns ``(bad, total, denominator)``."""
    cdef Py_ssize_t n = a.n, m = a.m, bad = -1
    cdef const floating *w = <const floating *>a.w
    cdef floating *grad = <floating *>a.grad
    cdef floating *hess = <floating *>a.hess
    cdef double *rows = a.loss
    cdef double denom = 0, total = 0
    cdef int failed = 0
    cdef fx_options opt
    if n == 0:
        return -1, 0.0, 0.0
    with nogil:
        if labels != NULL:
            bad = _label_pass(labels, n, m, ignore_index, w, a.sw, &denom, num_threads)
        elif a.sw != NULL:
            denom = _pairwise_sum(a.sw, n, num_threads)
        else:
            denom = <double>n
        if bad < 0:
            # NaN: divide the gradient by this call's own "mean" denominator.
            opt = fx_options_for(label_smoothing, z_loss, softcap,
                                 denom if grad_denom != grad_denom else grad_denom, m)
            if floating is float and a.half:
                # Reduced losses: the per-row values go to a buffer of our own.
                if rows == NULL:
                    rows = <double *>malloc(n * sizeof(double))
                if rows == NULL:
                    failed = FX_OUT_OF_MEMORY
                else:
                    # z, grad, hess hold 16-bit values (and target, if target_half).
                    failed = _half_loss_rows(
                        <const uint16_t *>z, a.half == 2, n, m, labels, ignore_index,
                        <const float *>NULL if a.target_half else target,
                        <const uint16_t *>target if a.target_half else <const uint16_t *>NULL,
                        w, a.sw, &opt, rows, <uint16_t *>grad, <uint16_t *>hess, num_threads)
                    if not (failed & FX_OUT_OF_MEMORY):
                        total = _pairwise_sum(rows, n, num_threads)
                    if a.loss == NULL:
                        free(rows)
            else:
                failed = _loss_rows(z, n, m, labels, ignore_index, target, w,
                                    a.sw, &opt, rows, grad, hess, num_threads,
                                    <floating *>NULL, &total)
    _raise_failed(failed)
    return bad, total, denom


def cross_entropy_labels(
    object z,
    object labels,
    object class_weight,
    object sample_weight,
    object loss_out,
    object grad_out,
    object hess_out,
    *,
    int64_t ignore_index,
    double label_smoothing,
    double z_loss,
    double softcap,
    double grad_denom,
    int num_threads,
    int half=0,
):
    """Per-row losses into ``loss_out`` (and the gradient into ``grad_out``,
    the Hessian diagonal into ``hess_out``) for class-index targets: ``z``
    (n, m) float32/float64, ``labels`` (n,) int32/int64, ``class_weight``
    (m,) of z's dtype, ``sample_weight`` and ``loss_out`` (n,) float64,
    ``grad_out`` and ``hess_out`` (n, m) of z's dtype; all C-contiguous.
    ``loss_out`` (when only their sum is wanted), ``class_weight``,
    ``sample_weight``, ``grad_out`` and ``hess_out`` may be None
    (``hess_out`` needs ``grad_out``, and ``zloss = softcap = 0``).

    The gradient (and Hessian) rows are divided by ``grad_denom``: 1 for a
    sum, the "mean" denominator of a larger batch these rows belong to, or
    NaN for this call's own "mean" denominator.

    Returns ``(bad, total, denominator)``.  ``bad`` is the position of the
    first label outside ``[0, m)`` that is not ``ignore_index`` (then nothing
    else was computed) or -1; ``total`` is the pairwise sum of the per-row
    losses; ``denominator`` is this call's ``sum_i s_i w[y_i]`` over the kept
    rows.  Ignored rows get loss 0 and a zero gradient.

    ``half`` (1 float16, 2 bfloat16): ``z``, ``grad_out`` and ``hess_out``
    hold the 16-bit values as uint16, computed in float32 (class weights
    float32).
    """
    cdef Arrays a
    cdef int ft = _take_common(&a, z, class_weight, sample_weight, loss_out,
                               grad_out, hess_out, half)
    cdef int lt = cnp.NPY_INT64
    if cnp.PyArray_Check(labels) and cnp.PyArray_TYPE(<cnp.ndarray>labels) == cnp.NPY_INT32:
        lt = cnp.NPY_INT32
    _take(labels, lt, a.n, -1, False, &a.labels)
    if a.labels == NULL and a.n != 0:
        raise TypeError("fastxent._kernels: labels must be an int32 or int64 array")
    if ft == cnp.NPY_FLOAT or half:
        if lt == cnp.NPY_INT32:
            return _run_loss(<float *>a.z, <int32_t *>a.labels, <float *>NULL, &a,
                             ignore_index, label_smoothing, z_loss, softcap, grad_denom,
                             num_threads)
        return _run_loss(<float *>a.z, <int64_t *>a.labels, <float *>NULL, &a,
                         ignore_index, label_smoothing, z_loss, softcap, grad_denom, num_threads)
    if lt == cnp.NPY_INT32:
        return _run_loss(<double *>a.z, <int32_t *>a.labels, <double *>NULL, &a,
                         ignore_index, label_smoothing, z_loss, softcap, grad_denom, num_threads)
    return _run_loss(<double *>a.z, <int64_t *>a.labels, <double *>NULL, &a,
                     ignore_index, label_smoothing, z_loss, softcap, grad_denom, num_threads)


def cross_entropy_probs(
    object z,
    object target,
    object class_weight,
    object sample_weight,
    object loss_out,
    object grad_out,
    object hess_out,
    *,
    double label_smoothing,
    double z_loss,
    double softcap,
    double grad_denom,
    int num_threads,
    int half=0,
):
    """As :func:`cross_entropy_labels` for class-probability targets of the
    shape and dtype of ``z`` (which must not overlap ``grad_out``; with
    ``half``, float32 or the logits' 16-bit format).  Returns ``(-1, total,
    denominator)`` with the denominator ``sum_i s_i`` (``n`` without sample
    weights)."""
    cdef Arrays a
    cdef int ft = _take_common(&a, z, class_weight, sample_weight, loss_out,
                               grad_out, hess_out, half)
    if half and cnp.PyArray_Check(target) and \
            cnp.PyArray_TYPE(<cnp.ndarray>target) == cnp.NPY_UINT16:
        a.target_half = True
    _take(target, ft if not half or a.target_half else cnp.NPY_FLOAT, a.n, a.m, False,
          &a.target)
    if a.target == NULL:
        raise TypeError("fastxent._kernels: target must be an array")
    if ft == cnp.NPY_FLOAT or half:
        return _run_loss(<float *>a.z, <int64_t *>NULL, <float *>a.target, &a,
                         0, label_smoothing, z_loss, softcap, grad_denom, num_threads)
    return _run_loss(<double *>a.z, <int64_t *>NULL, <double *>a.target, &a,
                     0, label_smoothing, z_loss, softcap, grad_denom, num_threads)


def mean_denominator(object labels, object class_weight, object sample_weight,
                     int64_t ignore_index, Py_ssize_t m):
    """``(bad, denominator)`` of class-index targets without computing any
    loss: the label check and "mean" denominator of :func:`cross_entropy_labels`
    (``class_weight`` float32 or float64, or None)."""
    cdef Py_ssize_t n, bad = -1
    cdef double denom = 0
    cdef void *lab
    cdef void *w
    cdef double *sw
    cdef int lt = cnp.NPY_INT64, wt = cnp.NPY_DOUBLE
    if not cnp.PyArray_Check(labels) or cnp.PyArray_NDIM(<cnp.ndarray>labels) != 1:
        raise TypeError("fastxent._kernels: labels must be a 1-d array")
    n = cnp.PyArray_DIM(<cnp.ndarray>labels, 0)
    if cnp.PyArray_TYPE(<cnp.ndarray>labels) == cnp.NPY_INT32:
        lt = cnp.NPY_INT32
    _take(labels, lt, n, -1, False, &lab)
    if class_weight is not None and cnp.PyArray_Check(class_weight) and \
            cnp.PyArray_TYPE(<cnp.ndarray>class_weight) == cnp.NPY_FLOAT:
        wt = cnp.NPY_FLOAT
    _take(class_weight, wt, m, -1, False, &w)
    _take(sample_weight, cnp.NPY_DOUBLE, n, -1, False, <void **>&sw)
    with nogil:
        if wt == cnp.NPY_FLOAT and lt == cnp.NPY_INT32:
            bad = _label_pass(<int32_t *>lab, n, m, ignore_index, <float *>w, sw, &denom, 1)
        elif wt == cnp.NPY_FLOAT:
            bad = _label_pass(<int64_t *>lab, n, m, ignore_index, <float *>w, sw, &denom, 1)
        elif lt == cnp.NPY_INT32:
            bad = _label_pass(<int32_t *>lab, n, m, ignore_index, <double *>w, sw, &denom, 1)
        else:
            bad = _label_pass(<int64_t *>lab, n, m, ignore_index, <double *>w, sw, &denom, 1)
    return bad, denom


def pairwise_sum(object x, int num_threads=1):
    """The kernels' fixed-order pairwise sum of a 1-d float64 array (the same
    bits for every ``num_threads``)."""
    cdef void *data
    cdef double total
    if not cnp.PyArray_Check(x) or cnp.PyArray_NDIM(<cnp.ndarray>x) != 1:
        raise TypeError("fastxent._kernels: expected a 1-d float64 array")
    cdef Py_ssize_t n = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
    _take(x, cnp.NPY_DOUBLE, n, -1, False, &data)
    with nogil:
        total = _pairwise_sum(<double *>data, n, num_threads)
    return total


include "_kernels_half.pxi"


include "_kernels_linear.pxi"


cdef struct SoftmaxJob:
    const void *z
    Py_ssize_t n, m
    void *out           # (n, m) softmax or log-softmax, or NULL
    double *lse         # (n,) logsumexp, or NULL
    bint take_log
    int half            # 0: float32/float64 (is_float), 1: float16, 2: bfloat16
    bint is_float
    Py_ssize_t block_rows  # half precision: rows per block (the items)


cdef inline void _softmax_span_t(const SoftmaxJob *j, const floating *z, ptrdiff_t lo,
                                 ptrdiff_t hi) noexcept nogil:
    cdef Py_ssize_t i, m = j.m
    cdef floating *o = <floating *>j.out
    cdef double *lse = j.lse
    cdef bint take_log = j.take_log
    cdef double v
    for i in range(lo, hi):
        v = softmax_row(z + i * m, m, o + i * m if o != NULL else NULL, take_log)
        if lse != NULL:
            lse[i] = v


cdef int _softmax_span(void *job, ptrdiff_t lo, ptrdiff_t hi, void *scratch) noexcept nogil:
    """Rows [lo, hi), or for half precision blocks of rows [lo, hi)."""
    cdef const SoftmaxJob *j = <const SoftmaxJob *>job
    cdef Py_ssize_t blk
    if j.half:
        for blk in range(lo, hi):
            _half_softmax_block(blk, j.block_rows, <float *>scratch, <const uint16_t *>j.z,
                                j.half == 2, j.n, j.m, <uint16_t *>j.out, j.take_log, j.lse)
    elif j.is_float:
        _softmax_span_t(j, <const float *>j.z, lo, hi)
    else:
        _softmax_span_t(j, <const double *>j.z, lo, hi)
    return 0


def softmax_rows(object z, object out, bint take_log, object lse_out, int num_threads,
                 int half=0):
    """Row-wise softmax (or log_softmax) of ``z`` (n, m) into ``out`` (n, m,
    z's dtype) and logsumexp into ``lse_out`` (n,) float64; either may be
    None.  ``half`` as in :func:`cross_entropy_labels`."""
    cdef Arrays a
    cdef int ft = _take_common(&a, z, None, None, lse_out, out, None, half)
    cdef int failed = 0
    cdef SoftmaxJob job
    if a.n == 0:
        return
    job.z = a.z
    job.n = a.n
    job.m = a.m
    job.out = a.grad
    job.lse = a.loss
    job.take_log = take_log
    job.half = half
    job.is_float = ft == cnp.NPY_FLOAT
    job.block_rows = _half_block_rows(a.m, False)
    with nogil:
        failed = fx_run_spans(
            _softmax_span, &job,
            (a.n + job.block_rows - 1) // job.block_rows if half else a.n,
            job.block_rows * a.m * sizeof(float) if half else 0, NULL,
            _threads_for(a.n, a.m, num_threads))
    _raise_failed(failed)


def openmp_enabled():
    return bool(FX_OPENMP)


def max_threads():
    """``omp_get_max_threads()`` now (1 without OpenMP, and in a forked child)."""
    return 1 if fx_forked else omp_get_max_threads()


def default_threads():
    """The thread count of a call that asked for the default: ``max_threads()``,
    or 1 while the governor (``_governor.h``) has found parallel regions kept
    waiting for the cores by another parallel program."""
    if fx_forked or fx_gov_serial():
        return 1
    return omp_get_max_threads()


def forked_child():
    """Whether this process was forked (after this module was imported): it
    then runs every kernel on one thread."""
    return bool(fx_forked)


def simd_dispatch():
    return fx_simd_dispatch().decode()


cdef extern from *:
    """
    #ifndef FASTXENT_BUILD_CFLAGS
    #define FASTXENT_BUILD_CFLAGS "unknown"
    #endif
    """
    const char *FASTXENT_BUILD_CFLAGS


def build_cflags():
    return FASTXENT_BUILD_CFLAGS.decode()


include "_kernels_hooks.pxi"
include "_kernels_logprob.pxi"
