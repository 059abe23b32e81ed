"""Compiled kernels of fastxent.

Design
------
* One row at a time.  Every public kernel is a ``prange`` over rows around a
  ``noexcept nogil`` row function that reads the row of logits, its target
  and writes its own outputs.  The row functions take raw pointers, so a
  caller can apply them to any block of rows (a chunk of a bigger matrix, a
  block of ``X @ W.T``) with its own output pointers.
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
  (``fx_small_labels``): 64 rows at a time, transposed (in 8 x 8 or 4 x 4
  register blocks) so that every step vectorises across rows rather than
  along a short row.  Two classes have their own (``fx_binary_labels``: one
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
* All loss options reduce to one per-row form.  With ``q_k`` the effective
  target mass of class ``k`` (labels: ``(1-eps) w_y [k=y] + eps/m w_k``;
  probabilities: ``w_k ((1-eps) Y_k + eps/m)``), ``Q = sum_k q_k`` and
  ``lse = max + log S``::

      loss_i = s_i * (sum_k q_k (lse - z_k) + zloss * lse**2)
      grad_i = s_i / D * ((Q + 2 zloss lse) softmax(z) - q) * cap'(z)

  where ``s_i`` is the sample weight, ``D`` the denominator under ``"mean"``
  (1 otherwise; +inf when it is 0, which makes that gradient 0), and
  ``cap'`` the derivative of the optional soft-cap.
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
* Every parallel loop gives each thread one contiguous chunk and times it;
  a region kept waiting far longer than its chunks worked (another
  parallel program spinning on the same cores) makes calls that asked for
  the default thread count run on one thread for a while (``_governor.h``).
"""
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer, PyCapsule_IsValid
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, NAN, log, log1p
from libc.stdint cimport int32_t, int64_t, uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cdef extern from "_governor.h" nogil:
    enum:
        FX_TEAM_MAX
    double fx_wtime()
    int fx_gov_serial()
    void fx_gov_report(double t0, const double *busy, Py_ssize_t T)
    void fx_gov_reset()
    void fx_span(Py_ssize_t c, Py_ssize_t T, Py_ssize_t n, Py_ssize_t *lo, Py_ssize_t *hi)
    long long fx_gov_waits
    long long fx_gov_backoff_ns
    long long fx_gov_serial_until_ns

cdef extern from "_rowops.h" nogil:
    float fx_max_f(const float *z, Py_ssize_t n)
    double fx_max_d(const double *z, Py_ssize_t n)
    float fx_softcap_max_f(const float *z, Py_ssize_t n, float c, float *out)
    double fx_softcap_max_d(const double *z, Py_ssize_t n, double c, double *out)
    double fx_expsum_f(const float *z, Py_ssize_t n, float shift, float *out,
                       const float *w, const float *y, float alpha, float beta,
                       double *tdot, double *rest)
    double fx_expsum_d(const double *z, Py_ssize_t n, double shift, double *out,
                       const double *w, const double *y, double alpha,
                       double beta, double *tdot, double *rest)
    void fx_grad_pass_f(float *g, Py_ssize_t n, float a, float b,
                        const float *w, const float *y, float alpha,
                        float beta, const float *zc, float inv_c)
    void fx_grad_pass_d(double *g, Py_ssize_t n, double a, double b,
                        const double *w, const double *y, double alpha,
                        double beta, const double *zc, double inv_c)
    void fx_sub2_f(const float *z, Py_ssize_t n, float s1, float s2, float *out)
    void fx_sub2_d(const double *z, Py_ssize_t n, double s1, double s2, double *out)
    void fx_scale_f(float *g, Py_ssize_t n, float a)
    void fx_scale_d(double *g, Py_ssize_t n, double a)
    void fx_hess_pass_f(const float *e, Py_ssize_t n, float inv_s, float c, float *h)
    void fx_hess_pass_d(const double *e, Py_ssize_t n, double inv_s, double c, double *h)
    void fx_exp_array_f(const float *x, Py_ssize_t n, float *out)
    void fx_exp_array_d(const double *x, Py_ssize_t n, double *out)
    void fx_expneg_array_f(const float *x, Py_ssize_t n, float *out)
    void fx_expneg_array_d(const double *x, Py_ssize_t n, double *out)
    void fx_tanh_array_f(const float *x, Py_ssize_t n, float *out)
    void fx_tanh_array_d(const double *x, Py_ssize_t n, double *out)
    int fx_masked_without_mass_f(const float *z, Py_ssize_t m, Py_ssize_t label,
                                 const float *y, const float *w, double smoothing)
    int fx_masked_without_mass_d(const double *z, Py_ssize_t m, Py_ssize_t label,
                                 const double *y, const double *w, double smoothing)
    double fx_softmax_coef_f(double b, Py_ssize_t m, Py_ssize_t label, const float *y,
                             const float *w, double smoothing, double zloss, double lse,
                             double S)
    double fx_softmax_coef_d(double b, Py_ssize_t m, Py_ssize_t label, const double *y,
                             const double *w, double smoothing, double zloss, double lse,
                             double S)
    void fx_half_to_float(const uint16_t *src, Py_ssize_t n, float *dst, int bf16)
    void fx_float_to_half(const float *src, Py_ssize_t n, uint16_t *dst, int bf16)
    const char *fx_simd_dispatch()
    double fx_log(double x)
    void fx_log1p_recip_unit_array(const double *t, Py_ssize_t n, double *log1p_out,
                                   double *recip_out)
    double fx_pairwise_sum(const double *x, Py_ssize_t n)
    Py_ssize_t fx_count_labels(const void *labels, int labels_64bit, Py_ssize_t n,
                               Py_ssize_t m, long long ignore_index,
                               Py_ssize_t *out_of_range)
    enum:
        FX_TILE_ROWS
        FX_SMALL_M_MAX
    int fx_small_labels_f(const float *z, Py_ssize_t R, Py_ssize_t m,
                          const void *labels, int labels_64bit,
                          long long ignore_index, const float *w,
                          const double *sw, double smoothing, double zloss,
                          double grad_denom, double *loss_out, float *g,
                          float *h)
    int fx_binary_labels_f(const float *z, Py_ssize_t R, const void *labels,
                           int labels_64bit, long long ignore_index, const float *w,
                           const double *sw, double smoothing, double zloss,
                           double grad_denom, double *loss_out, float *g, float *h)
    int fx_binary_labels_d(const double *z, Py_ssize_t R, const void *labels,
                           int labels_64bit, long long ignore_index, const double *w,
                           const double *sw, double smoothing, double zloss,
                           double grad_denom, double *loss_out, double *g, double *h)
    int fx_small_labels_d(const double *z, Py_ssize_t R, Py_ssize_t m,
                          const void *labels, int labels_64bit,
                          long long ignore_index, const double *w,
                          const double *sw, double smoothing, double zloss,
                          double grad_denom, double *loss_out, double *g,
                          double *h)

# Builds without OpenMP (e.g. Apple clang without libomp) still compile:
# prange then runs serially, and this shim answers "one thread".
#
# Fork safety: GNU OpenMP's thread pool does not survive fork(), so a child
# forked after the parent ran a parallel region blocks forever in its first
# one (there is no way to reset libgomp).  A pthread_atfork handler marks
# every forked child, and a marked process never enters the OpenMP runtime
# again: every kernel runs its serial loop (one thread).  It catches every
# fork, os.fork, multiprocessing's and C libraries' alike, at the cost of
# one thread in children of parents that never started a team (another
# library sharing libgomp could have).  PyTorch does the same
# (aten/src/ATen/ParallelOpenMP.cpp: one thread in a forked child).
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

# What the drivers report (bits, combined with |): a scratch allocation
# failed; a label was outside [0, m) when the kernel read it although the
# check before had passed (another thread wrote to the labels meanwhile).
cdef enum:
    OUT_OF_MEMORY = 1
    LABEL_RACED = 2


cdef int _raise_failed(int failed) except -1:
    if failed & OUT_OF_MEMORY:
        raise MemoryError("fastxent: could not allocate scratch memory")
    if failed & LABEL_RACED:
        raise RuntimeError(
            "fastxent: a label changed while the kernel read it (another thread wrote to "
            "the target array during the call); the rows concerned were set to NaN. "
            "Do not modify the target while a fastxent call uses it.")
    return 0


cdef struct LossOptions:
    double smoothing    # label smoothing epsilon
    double beta         # smoothing / m, the uniform part of the target mass
    double unit_b       # 1 / grad_denom: the gradient scale of a weight-1 row
    double zloss        # coefficient of lse**2
    double softcap      # c of c*tanh(z/c); 0 when off
    double grad_denom   # the "mean" denominator (may be 0 or negative), else 1


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
                                         const floating *w, double smoothing) noexcept nogil:
    if floating is float:
        return fx_masked_without_mass_f(z, m, label, y, w, smoothing)
    else:
        return fx_masked_without_mass_d(z, m, label, y, w, smoothing)


cdef inline double row_softmax_coef(double b, Py_ssize_t m, Py_ssize_t label,
                                    const floating *y, const floating *w,
                                    const LossOptions *opt, double lse, double S) noexcept nogil:
    if floating is float:
        return fx_softmax_coef_f(b, m, label, y, w, opt.smoothing, opt.zloss, lse, S)
    else:
        return fx_softmax_coef_d(b, m, label, y, w, opt.smoothing, opt.zloss, lse, S)


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


cdef inline int small_labels_block(
    const floating *z, Py_ssize_t R, Py_ssize_t m, const void *labels,
    bint labels_64bit, int64_t ignore_index, const floating *w,
    const double *sw, const LossOptions *opt, double *loss_out, floating *g,
    floating *h,
) noexcept nogil:
    """The few-class kernels on one block; returns how many of its labels
    were out of range when read (a data race; see fx_small_labels)."""
    if m == 2:  # one exp and one log1p a row
        if floating is float:
            return fx_binary_labels_f(z, R, labels, labels_64bit, ignore_index, w, sw,
                                      opt.smoothing, opt.zloss, opt.grad_denom, loss_out, g, h)
        else:
            return fx_binary_labels_d(z, R, labels, labels_64bit, ignore_index, w, sw,
                                      opt.smoothing, opt.zloss, opt.grad_denom, loss_out, g, h)
    elif floating is float:
        return fx_small_labels_f(z, R, m, labels, labels_64bit, ignore_index, w, sw,
                                 opt.smoothing, opt.zloss, opt.grad_denom, loss_out, g, h)
    else:
        return fx_small_labels_d(z, R, m, labels, labels_64bit, ignore_index, w, sw,
                                 opt.smoothing, opt.zloss, opt.grad_denom, loss_out, g, h)


# ---- the row kernels ----

cdef double cross_entropy_row(
    const floating *z, Py_ssize_t m, Py_ssize_t label, const floating *y,
    const floating *w, double s, const LossOptions *opt, floating *g,
    floating *h, floating *scratch,
) noexcept nogil:
    """Loss of one row, and its gradient into ``g`` unless ``g`` is NULL.

    ``label >= 0`` selects class-index targets, otherwise ``y`` points at
    the row of class probabilities.  ``w`` (class weights) may be NULL.
    ``scratch`` holds ``m`` elements and is used only with a soft-cap; it
    keeps the capped logits so that ``g`` may alias ``z`` (in place).
    ``h`` (NULL, or with ``g``; no z-loss or soft-cap) receives the diagonal
    of the Hessian, ``b Q P (1 - P)``.
    """
    cdef const floating *zc = z
    cdef floating mx, inv_c = 0
    cdef floating beta = <floating>opt.beta
    cdef double S, log_s, lse, Q, dot, loss, a, b
    cdef double c_main = 0, cap_y = 1
    if opt.softcap > 0:
        mx = row_softcap_max(z, m, <floating>opt.softcap, scratch)
        zc = scratch
        inv_c = <floating>(1.0 / opt.softcap)
    else:
        mx = row_max(z, m)
        # A fully masked row without target mass (padding, say) contributes
        # nothing, where the arithmetic would give -inf - -inf = NaN.  (The
        # soft-cap maps -inf to -c, so capped rows never get here.)
        if mx == -INFINITY and row_masked_without_mass(z, m, label, y, w, opt.smoothing):
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
        c_main = (1.0 - opt.smoothing) * (w[label] if w != NULL else 1.0)
        # Skipping zero-mass terms keeps a masked (-inf) class out.
        dot = c_main * (<double>zc[label] - <double>mx) if c_main != 0 else 0.0
        if opt.softcap > 0:
            cap_y = 1.0 - (<double>zc[label] * inv_c) ** 2
        S = row_expsum(zc, m, mx, g, w, <const floating *>NULL, 0, beta,
                       tdot if opt.smoothing > 0 else NULL)
        Q = c_main + tdot[1]
        dot += tdot[0]
    else:
        S = row_expsum(zc, m, mx, g, w, y, <floating>(1.0 - opt.smoothing),
                       beta, tdot)
        Q = tdot[1]
        dot = tdot[0]

    log_s = log(S)
    lse = mx + log_s
    loss = Q * log_s - dot
    if opt.zloss != 0:
        loss += opt.zloss * lse * lse
    if g != NULL:
        # Dividing (rather than multiplying by 1/denominator) stays finite
        # for a subnormal total weight; rows of weight 1 take the quotient
        # computed once per call (a division costs a row of 100 classes
        # several percent).
        b = s / opt.grad_denom if s != 1.0 else opt.unit_b
        if b - b == 0:
            a = b * (Q + 2.0 * opt.zloss * lse) / S
        else:  # b is +-inf or NaN (a zero "mean" denominator): PyTorch's pattern
            a = row_softmax_coef(b, m, label, y, w, opt, lse, S)
        if h != NULL:  # from exp(z - max), which g holds until the pass below
            row_hess_pass(g, m, <floating>(1.0 / S), <floating>(b * Q), h)
        if label >= 0:
            # Without smoothing the class weights only enter through c_main.
            row_grad_pass(g, m, <floating>a, <floating>b,
                          w if opt.smoothing > 0 else <const floating *>NULL,
                          <const floating *>NULL, 0, beta,
                          zc if opt.softcap > 0 else <const floating *>NULL,
                          inv_c)
            g[label] -= <floating>(b * c_main * cap_y)
        else:
            row_grad_pass(g, m, <floating>a, <floating>b, w, y,
                          <floating>(1.0 - opt.smoothing), beta,
                          zc if opt.softcap > 0 else <const floating *>NULL,
                          inv_c)
    return s * loss


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

cdef inline Py_ssize_t _tile_max_m(floating kind) noexcept nogil:
    """The largest m the tile kernel takes for this dtype: where it beats the
    row kernel (measured, 1 thread: float32 up to m = 100 at 0.94x the row
    kernel on an AVX-512 Xeon; float64 at m = 41-44 0.78x on that Xeon and
    0.83-0.97x on AVX2, but 1.04x at m = 48, where the row kernel has no
    tail, and 1.07-1.12x beyond m ~ 52 on AVX2)."""
    if floating is float:
        return TILE_MAX_M_FLOAT
    else:
        return TILE_MAX_M_DOUBLE


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


cdef inline int _small_block(
    Py_ssize_t blk, const floating *z, Py_ssize_t n, Py_ssize_t m,
    const label_t *labels, const floating *w, const double *sw,
    const LossOptions *opt, double *loss_out, floating *grad, floating *hess,
    int64_t ignore_index, double *block_sums,
) noexcept nogil:
    cdef Py_ssize_t r0 = blk * FX_TILE_ROWS
    cdef Py_ssize_t R = min(<Py_ssize_t>FX_TILE_ROWS, n - r0)
    cdef double block_loss[FX_TILE_ROWS]
    cdef double *rows_out = &block_loss[0] if block_sums != NULL else loss_out + r0
    cdef int raced = small_labels_block(
        z + r0 * m, R, m, labels + r0, label_t is int64_t, ignore_index, w,
        sw + r0 if sw != NULL else NULL, opt, rows_out,
        grad + r0 * m if grad != NULL else NULL,
        hess + r0 * m if hess != NULL else NULL)
    if block_sums != NULL:
        block_sums[blk] = fx_pairwise_sum(block_loss, R)
    return raced


cdef int _small_labels(
    const floating *z, Py_ssize_t n, Py_ssize_t m, const label_t *labels,
    const floating *w, const double *sw, const LossOptions *opt,
    double *loss_out, floating *grad, floating *hess, int64_t ignore_index,
    int num_threads, double *block_sums=NULL,
) noexcept nogil:
    """Few classes: blocks of FX_TILE_ROWS rows, vectorised across rows.
    With ``block_sums``, the sum of each block's losses goes there (blocks
    in row order) instead of per-row losses to ``loss_out``.  Returns
    LABEL_RACED if a label was out of range when read."""
    cdef Py_ssize_t nblocks = (n + FX_TILE_ROWS - 1) // FX_TILE_ROWS, blk, c, lo, hi
    cdef Py_ssize_t raced = 0
    cdef double busy[FX_TEAM_MAX]
    cdef double *busy_p = busy
    cdef double t0, tc
    if not _use_threads(n, m, num_threads):
        for blk in range(nblocks):
            raced += _small_block(blk, z, n, m, labels, w, sw, opt, loss_out, grad, hess,
                                  ignore_index, block_sums)
    else:
        # one chunk of blocks per thread, timed (see _governor.h)
        t0 = fx_wtime()
        for c in prange(num_threads, schedule='static', num_threads=num_threads):
            tc = fx_wtime()
            fx_span(c, num_threads, nblocks, &lo, &hi)
            for blk in range(lo, hi):
                raced += _small_block(blk, z, n, m, labels, w, sw, opt, loss_out, grad, hess,
                                      ignore_index, block_sums)
            busy_p[c] = fx_wtime() - tc
        fx_gov_report(t0, busy, num_threads)
    return LABEL_RACED if raced else 0


cdef LossOptions _options(double smoothing, double zloss, double softcap,
                          double grad_denom, Py_ssize_t m) noexcept nogil:
    cdef LossOptions opt
    opt.smoothing = smoothing
    opt.beta = smoothing / m
    opt.zloss = zloss
    opt.softcap = softcap
    # IEEE division throughout, as PyTorch: a zero denominator (weights that
    # cancel, or all zero) gives inf/NaN gradients; ignored rows are zeroed
    # explicitly, so "everything ignored" still has a zero gradient.
    opt.grad_denom = grad_denom
    opt.unit_b = 1.0 / opt.grad_denom
    return opt


cdef inline void _nan_row(floating *row, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t k
    if row != NULL:
        for k in range(m):
            row[k] = NAN


cdef inline double _one_row(
    Py_ssize_t i, const floating *z, Py_ssize_t m, const label_t *labels,
    int64_t ignore_index, const floating *target, const floating *w,
    const double *sw, const LossOptions *opt, floating *grad, floating *hess,
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
    return cross_entropy_row(z + i * m, m, label, y, w,
                             sw[i] if sw != NULL else 1.0, opt, g, h, scratch)


cdef int _rows(
    const floating *z, Py_ssize_t n, Py_ssize_t m, const label_t *labels,
    int64_t ignore_index, const floating *target, const floating *w,
    const double *sw, const LossOptions *opt, double *loss_out,
    floating *grad, floating *hess, int num_threads, floating *own_scratch,
) noexcept nogil:
    """The general path: cross_entropy_row over the rows, for class indices
    (``labels``) or probabilities (``target``, ``labels`` NULL).  A serial
    call uses ``own_scratch`` (m elements) for a soft-cap if given.  Returns
    OUT_OF_MEMORY if a thread could not allocate its soft-cap scratch row,
    LABEL_RACED if a label was out of range when read (or both)."""
    cdef Py_ssize_t i, c, lo, hi
    cdef floating *scratch = NULL
    cdef int failed = 0
    cdef int *failed_p = &failed
    cdef int raced = 0
    cdef int *raced_p = &raced
    cdef double busy[FX_TEAM_MAX]
    cdef double *busy_p = busy
    cdef double t0, tc
    if not _use_threads(n, m, num_threads):
        if opt.softcap > 0 and own_scratch == NULL:
            scratch = <floating *>malloc(m * sizeof(floating))
            if scratch == NULL:
                return OUT_OF_MEMORY
        for i in range(n):
            loss_out[i] = _one_row(i, z, m, labels, ignore_index, target, w, sw, opt,
                                   grad, hess, own_scratch if own_scratch != NULL else scratch,
                                   raced_p)
        free(scratch)
        return LABEL_RACED if raced else 0
    t0 = fx_wtime()
    with parallel(num_threads=num_threads):
        scratch = NULL
        if opt.softcap > 0:
            scratch = <floating *>malloc(m * sizeof(floating))
            if scratch == NULL:
                failed_p[0] = OUT_OF_MEMORY
        # one chunk of rows per thread, timed (see _governor.h)
        for c in prange(num_threads, schedule='static'):
            tc = fx_wtime()
            fx_span(c, num_threads, n, &lo, &hi)
            if opt.softcap == 0 or scratch != NULL:
                for i in range(lo, hi):
                    loss_out[i] = _one_row(i, z, m, labels, ignore_index, target, w,
                                           sw, opt, grad, hess, scratch, raced_p)
            busy_p[c] = fx_wtime() - tc
        free(scratch)
    fx_gov_report(t0, busy, num_threads)
    return failed | (LABEL_RACED if raced else 0)


cdef int _loss_rows(
    const floating *z, Py_ssize_t n, Py_ssize_t m, const label_t *labels,
    int64_t ignore_index, const floating *target, const floating *w,
    const double *sw, const LossOptions *opt, double *loss_out,
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
    buffer of their own.  Returns a combination of OUT_OF_MEMORY (then the
    total is not computed) and LABEL_RACED, or 0."""
    cdef Py_ssize_t nsums = n
    cdef double *sums = loss_out
    cdef bint small = labels != NULL and m <= _tile_max_m(<floating>0) and opt.softcap == 0
    cdef int failed
    if loss_out == NULL:
        if small:
            nsums = (n + FX_TILE_ROWS - 1) // FX_TILE_ROWS
        sums = <double *>malloc(max(nsums, 1) * sizeof(double))
        if sums == NULL:
            return OUT_OF_MEMORY
    if small:
        failed = _small_labels(z, n, m, labels, w, sw, opt, loss_out, grad, hess,
                               ignore_index, num_threads, sums if loss_out == NULL else NULL)
    else:
        failed = _rows(z, n, m, labels, ignore_index, target, w, sw, opt, sums,
                       grad, hess, num_threads, scratch)
    if total != NULL and not (failed & OUT_OF_MEMORY):
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
                     int64_t ignore_index, double smoothing, double zloss,
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
    cdef LossOptions opt
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
            opt = _options(smoothing, zloss, softcap,
                           denom if grad_denom != grad_denom else grad_denom, m)
            if floating is float and a.half:
                # Reduced losses: the per-row values go to a buffer of our own.
                if rows == NULL:
                    rows = <double *>malloc(n * sizeof(double))
                if rows == NULL:
                    failed = OUT_OF_MEMORY
                else:
                    # z, grad, hess hold 16-bit values (and target, if target_half).
                    failed = _half_loss_rows(
                        <const uint16_t *>z, a.half == 2, n, m, labels, ignore_index,
                        <const float *>NULL if a.target_half else target,
                        <const uint16_t *>target if a.target_half else <const uint16_t *>NULL,
                        w, a.sw, &opt, rows, <uint16_t *>grad, <uint16_t *>hess, num_threads)
                    if not (failed & OUT_OF_MEMORY):
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
    int64_t ignore_index,
    double smoothing,
    double zloss,
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
                             ignore_index, smoothing, zloss, softcap, grad_denom, num_threads)
        return _run_loss(<float *>a.z, <int64_t *>a.labels, <float *>NULL, &a,
                         ignore_index, smoothing, zloss, softcap, grad_denom, num_threads)
    if lt == cnp.NPY_INT32:
        return _run_loss(<double *>a.z, <int32_t *>a.labels, <double *>NULL, &a,
                         ignore_index, smoothing, zloss, softcap, grad_denom, num_threads)
    return _run_loss(<double *>a.z, <int64_t *>a.labels, <double *>NULL, &a,
                     ignore_index, smoothing, zloss, softcap, grad_denom, num_threads)


def cross_entropy_probs(
    object z,
    object target,
    object class_weight,
    object sample_weight,
    object loss_out,
    object grad_out,
    object hess_out,
    double smoothing,
    double zloss,
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
                         0, smoothing, zloss, softcap, grad_denom, num_threads)
    return _run_loss(<double *>a.z, <int64_t *>NULL, <double *>a.target, &a,
                     0, smoothing, zloss, softcap, grad_denom, num_threads)


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


# ---- half precision: float16 and bfloat16 logits, computed in float32 ----
#
# The rows go through the float32 kernels a block at a time: each thread
# widens a block of rows into a float32 buffer of its own, runs the row (or
# tile) kernels there with the gradient written in place, and narrows the
# outputs back.  Every pass over a row after the first reads the float32
# buffer from cache, so the arrays in memory are read and written once at
# 2 bytes an element.  (Converting in the kernels' own vector loads would
# need every row primitive twice; the buffer costs a cache-resident copy.)

cdef inline Py_ssize_t _half_block_rows(Py_ssize_t m, bint tile) noexcept nogil:
    """Rows per block: whole tiles for the small-m kernel, else about 32 K
    elements (128 KiB of float32, at least one row)."""
    if tile:
        return FX_TILE_ROWS
    return max(<Py_ssize_t>1, 32768 // m)


cdef int _half_loss_block(
    Py_ssize_t blk, Py_ssize_t B, float *buf, const uint16_t *z, bint bf16, Py_ssize_t n,
    Py_ssize_t m, const label_t *labels, int64_t ignore_index, const float *target,
    const uint16_t *target_half, const float *w, const double *sw, const LossOptions *opt,
    double *loss_out, uint16_t *grad, uint16_t *hess,
) noexcept nogil:
    """Block ``blk`` of B rows: widen, run the float32 kernels in ``buf``
    (logits/gradient, Hessian, targets and a soft-cap row, in that order),
    narrow the outputs.  Returns _loss_rows' code."""
    cdef Py_ssize_t per = B * m, r0 = blk * B, R = min(B, n - r0)
    cdef float *zf = buf
    cdef float *hf = buf + per
    cdef float *tf = buf + per * (1 + (hess != NULL))
    cdef float *cap = tf + (per if target_half != NULL else 0)
    cdef int failed
    fx_half_to_float(z + r0 * m, R * m, zf, bf16)
    if target_half != NULL:
        fx_half_to_float(target_half + r0 * m, R * m, tf, bf16)
    elif target != NULL:
        tf = <float *>target + r0 * m
    else:
        tf = NULL
    failed = _loss_rows(zf, R, m, labels + r0 if labels != NULL else NULL, ignore_index, tf,
                        w, sw + r0 if sw != NULL else NULL, opt, loss_out + r0,
                        zf if grad != NULL else NULL, hf if hess != NULL else NULL, 1, cap)
    if grad != NULL:
        fx_float_to_half(zf, R * m, grad + r0 * m, bf16)
    if hess != NULL:
        fx_float_to_half(hf, R * m, hess + r0 * m, bf16)
    return failed


cdef int _half_loss_rows(
    const uint16_t *z, bint bf16, Py_ssize_t n, Py_ssize_t m, const label_t *labels,
    int64_t ignore_index, const float *target, const uint16_t *target_half,
    const float *w, const double *sw, const LossOptions *opt, double *loss_out,
    uint16_t *grad, uint16_t *hess, int num_threads,
) noexcept nogil:
    """_loss_rows for half-precision logits (and outputs; probabilities in
    float32 ``target`` or in the logits' format ``target_half``).  Returns
    _loss_rows' codes (OUT_OF_MEMORY also when a thread could not allocate
    its buffers)."""
    cdef bint tile = labels != NULL and m <= TILE_MAX_M_FLOAT and opt.softcap == 0
    cdef Py_ssize_t B = _half_block_rows(m, tile)
    cdef Py_ssize_t nb = (n + B - 1) // B, blk, c, lo, hi
    cdef Py_ssize_t size = B * m * (1 + (hess != NULL) + (target_half != NULL)) + m
    cdef double busy[FX_TEAM_MAX]
    cdef double *busy_p = busy
    cdef double t0, tc
    cdef int failed = 0, code
    cdef int oom = 0, raced = 0
    cdef int *oom_p = &oom
    cdef int *raced_p = &raced
    cdef float *buf = NULL
    if not _use_threads(n, m, num_threads):
        buf = <float *>malloc(size * sizeof(float))
        if buf == NULL:
            return OUT_OF_MEMORY
        for blk in range(nb):
            failed |= _half_loss_block(blk, B, buf, z, bf16, n, m, labels, ignore_index, target,
                                       target_half, w, sw, opt, loss_out, grad, hess)
        free(buf)
        return failed
    t0 = fx_wtime()
    with parallel(num_threads=num_threads):
        buf = <float *>malloc(size * sizeof(float))
        if buf == NULL:
            oom_p[0] = 1
        # one chunk of blocks per thread, timed (see _governor.h)
        for c in prange(num_threads, schedule='static'):
            tc = fx_wtime()
            fx_span(c, num_threads, nb, &lo, &hi)
            for blk in range(lo, hi):
                if buf == NULL:
                    break
                code = _half_loss_block(blk, B, buf, z, bf16, n, m, labels, ignore_index,
                                        target, target_half, w, sw, opt, loss_out, grad, hess)
                if code & OUT_OF_MEMORY:
                    oom_p[0] = 1
                if code & LABEL_RACED:
                    raced_p[0] = 1
            busy_p[c] = fx_wtime() - tc
        free(buf)
    fx_gov_report(t0, busy, num_threads)
    return (OUT_OF_MEMORY if oom else 0) | (LABEL_RACED if raced else 0)


cdef void _half_softmax_block(Py_ssize_t blk, Py_ssize_t B, float *buf, const uint16_t *z,
                              bint bf16, Py_ssize_t n, Py_ssize_t m, uint16_t *out,
                              bint take_log, double *lse) noexcept nogil:
    cdef Py_ssize_t r0 = blk * B, R = min(B, n - r0), i
    cdef double v
    fx_half_to_float(z + r0 * m, R * m, buf, bf16)
    for i in range(R):
        v = softmax_row(buf + i * m, m, buf + i * m if out != NULL else <float *>NULL, take_log)
        if lse != NULL:
            lse[r0 + i] = v
    if out != NULL:
        fx_float_to_half(buf, R * m, out + r0 * m, bf16)


cdef int _half_softmax_rows(const uint16_t *z, bint bf16, Py_ssize_t n, Py_ssize_t m,
                            uint16_t *out, bint take_log, double *lse,
                            int num_threads) noexcept nogil:
    """softmax_row over half-precision rows, a block at a time in float32."""
    cdef Py_ssize_t B = _half_block_rows(m, False)
    cdef Py_ssize_t nb = (n + B - 1) // B, blk, c, lo, hi
    cdef int failed = 0
    cdef int *failed_p = &failed
    cdef float *buf = NULL
    cdef double busy[FX_TEAM_MAX]
    cdef double *busy_p = busy
    cdef double t0, tc
    if not _use_threads(n, m, num_threads):
        buf = <float *>malloc(B * m * sizeof(float))
        if buf == NULL:
            return 1
        for blk in range(nb):
            _half_softmax_block(blk, B, buf, z, bf16, n, m, out, take_log, lse)
        free(buf)
        return 0
    t0 = fx_wtime()
    with parallel(num_threads=num_threads):
        buf = <float *>malloc(B * m * sizeof(float))
        if buf == NULL:
            failed_p[0] = 1
        # one chunk of blocks per thread, timed (see _governor.h)
        for c in prange(num_threads, schedule='static'):
            tc = fx_wtime()
            fx_span(c, num_threads, nb, &lo, &hi)
            if buf != NULL:
                for blk in range(lo, hi):
                    _half_softmax_block(blk, B, buf, z, bf16, n, m, out, take_log, lse)
            busy_p[c] = fx_wtime() - tc
        free(buf)
    fx_gov_report(t0, busy, num_threads)
    return failed


# ---- the fused linear + cross-entropy: x @ W.T consumed in row chunks ----
#
# For each chunk of r rows: the logits x_c @ W.T (+ b) by one GEMM into a
# buffer of r x V, the row kernels over it (loss, and the gradient written
# over the logits), then the chunk's gradient consumed by two more GEMMs:
# grad_x[c] = G @ W and grad_W += G.T @ x_c (beta = 1: no V x d temporary),
# and grad_b += the column sums of G.  The n x V logits never exist.  BLAS
# is SciPy's (scipy.linalg.cython_blas, what scikit-learn uses from Cython),
# reached through the function pointers its module exports, so this module
# needs SciPy neither to build nor to import.  BLAS runs its own threads
# inside each GEMM (sharing the packed operands among them, which GEMMs
# split into tiles on our threads could not: measured 1.3-1.4x slower); the
# row kernels run ours between GEMMs, never both at once.  All arrays are
# row-major; the GEMMs are written for column-major BLAS as the transposed
# products.

ctypedef void (*sgemm_t)(char *transa, char *transb, int *m, int *n, int *k,
                         float *alpha, float *a, int *lda, float *b, int *ldb,
                         float *beta, float *c, int *ldc) noexcept nogil
ctypedef void (*dgemm_t)(char *transa, char *transb, int *m, int *n, int *k,
                         double *alpha, double *a, int *lda, double *b, int *ldb,
                         double *beta, double *c, int *ldc) noexcept nogil


cdef inline void _gemm(void *fn, char ta, char tb, int M, int N, int K,
                       const floating *A, int lda, const floating *B, int ldb,
                       floating beta, floating *C, int ldc) noexcept nogil:
    """Column-major C = op(A) op(B) + beta C with alpha = 1."""
    cdef floating alpha = 1
    if floating is float:
        (<sgemm_t>fn)(&ta, &tb, &M, &N, &K, &alpha, <float *>A, &lda,
                      <float *>B, &ldb, &beta, C, &ldc)
    else:
        (<dgemm_t>fn)(&ta, &tb, &M, &N, &K, &alpha, <double *>A, &lda,
                      <double *>B, &ldb, &beta, C, &ldc)


cdef void _fill_rows(floating *buf, Py_ssize_t r, Py_ssize_t V,
                     const floating *bias, int num_threads) noexcept nogil:
    """Every row of ``buf`` := ``bias`` (the GEMM then adds x @ W.T to it
    with beta = 1, which costs no more than the zeroing beta = 0 does)."""
    cdef Py_ssize_t i
    if not _use_threads(r, V, num_threads):
        for i in range(r):
            memcpy(buf + i * V, bias, V * sizeof(floating))
        return
    for i in prange(r, schedule='static', num_threads=num_threads):
        memcpy(buf + i * V, bias, V * sizeof(floating))


cdef void _add_column_sums(const floating *buf, Py_ssize_t r, Py_ssize_t V,
                           double *acc, int num_threads) noexcept nogil:
    """``acc[k] += sum_i buf[i, k]`` in double, rows in order (threads split
    the columns, so the result does not depend on their number)."""
    cdef Py_ssize_t blk, nblk = (V + 511) // 512, k0, k1, i, k
    if not _use_threads(r, V, num_threads):
        nblk = 1
    for blk in prange(nblk, schedule='static', num_threads=num_threads,
                      use_threads_if=nblk > 1):
        k0 = blk * 512 if nblk > 1 else 0
        k1 = min(k0 + 512, V) if nblk > 1 else V
        for i in range(r):
            for k in range(k0, k1):
                acc[k] += buf[i * V + k]


cdef int _linear_chunks(
    void *gemm, const floating *x, Py_ssize_t ldx, const floating *W,
    Py_ssize_t ldw, const floating *bias, Py_ssize_t n, Py_ssize_t d,
    Py_ssize_t V, const label_t *labels, int64_t ignore_index,
    const floating *target, const floating *w, const double *sw,
    const LossOptions *opt, double *loss_out, floating *buf, Py_ssize_t r,
    floating *grad_x, floating *grad_W, double *grad_b, int num_threads,
) noexcept nogil:
    """The chunk loop (gradients when ``grad_W`` is not NULL; ``grad_x`` and
    ``grad_b`` may be NULL then).  Returns _loss_rows' codes, OR-ed over
    the chunks."""
    cdef Py_ssize_t c0 = 0, rr
    cdef int failed = 0
    while c0 < n:
        rr = min(r, n - c0)
        if bias != NULL:
            _fill_rows(buf, rr, V, bias, num_threads)
        # logits^T (V x rr) = W (V x d) x_c^T: W is col-major d x V (lda
        # ldw), x_c col-major d x rr (ldb ldx), the buffer col-major V x rr.
        _gemm(gemm, c'T', c'N', <int>V, <int>rr, <int>d, W, <int>ldw,
              x + c0 * ldx, <int>ldx, 1 if bias != NULL else 0, buf, <int>V)
        failed |= _loss_rows(
            buf, rr, V, labels + c0 if labels != NULL else NULL, ignore_index,
            target + c0 * V if target != NULL else NULL, w,
            sw + c0 if sw != NULL else NULL, opt, loss_out + c0,
            buf if grad_W != NULL else NULL, <floating *>NULL, num_threads)
        if grad_W == NULL:
            c0 += rr
            continue
        if grad_x != NULL:
            # grad_x[c]^T (d x rr) = W^T (d x V) G^T (V x rr)
            _gemm(gemm, c'N', c'N', <int>d, <int>rr, <int>V, W, <int>ldw, buf,
                  <int>V, 0, grad_x + c0 * d, <int>d)
        # grad_W^T (d x V) += x_c^T (d x rr) G (rr x V)
        _gemm(gemm, c'N', c'T', <int>d, <int>V, <int>rr, x + c0 * ldx, <int>ldx,
              buf, <int>V, 0 if c0 == 0 else 1, grad_W, <int>d)
        if grad_b != NULL:
            _add_column_sums(buf, rr, V, grad_b, num_threads)
        c0 += rr
    return failed


cdef int _take_rows(object a, int typenum, Py_ssize_t d0, Py_ssize_t d1,
                    void **data, Py_ssize_t *ld) except -1:
    """A (d0, d1) array of ``typenum`` whose rows are contiguous (any row
    stride >= d1, as BLAS takes it): its data pointer and row stride in
    elements."""
    cdef cnp.ndarray arr
    if not cnp.PyArray_Check(a):
        raise TypeError("fastxent._kernels: expected an ndarray")
    arr = <cnp.ndarray>a
    cdef Py_ssize_t size = cnp.PyArray_ITEMSIZE(arr)
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != 2
            or cnp.PyArray_DIM(arr, 0) != d0 or cnp.PyArray_DIM(arr, 1) != d1
            or (d1 > 1 and cnp.PyArray_STRIDE(arr, 1) != size)
            or cnp.PyArray_STRIDE(arr, 0) % size != 0
            or (d0 > 1 and cnp.PyArray_STRIDE(arr, 0) < d1 * size)
            or not cnp.PyArray_ISALIGNED(arr) or not cnp.PyArray_ISNOTSWAPPED(arr)):
        raise ValueError("fastxent._kernels: array of the wrong dtype, shape or layout")
    data[0] = cnp.PyArray_DATA(arr)
    ld[0] = max(cnp.PyArray_STRIDE(arr, 0) // size, max(d1, 1)) if d0 > 1 else max(d1, 1)
    return 0


def linear_cross_entropy_chunks(
    object x, object W, object bias, object labels, object target,
    object class_weight, object sample_weight, object buf, object loss_out,
    object grad_x, object grad_W, object grad_b, object gemm,
    int64_t ignore_index, double smoothing, double zloss, double softcap,
    double grad_denom, int num_threads,
):
    """Per-row losses of ``x @ W.T + bias`` into ``loss_out`` (n,) float64,
    and if ``grad_W`` (V, d) is given the gradients: it, ``grad_x`` (n, d)
    of x's dtype (or None: not wanted), ``grad_b`` (V,) float64 (accumulated
    into: pass zeros; or None), through the row-chunk ``buf`` (r, V).  ``x`` (n, d) and
    ``W`` (V, d) float32 or float64 with contiguous rows (any row stride),
    ``bias`` (V,) or None, ``labels`` (n,) int32/int64 (range-checked
    already) or ``target`` (n, V) probabilities; ``gemm`` the SciPy BLAS
    capsule of sgemm/dgemm.  The gradients are divided by ``grad_denom``.
    Returns the pairwise sum of the per-row losses."""
    cdef int ft = _float_type(x)
    cdef Py_ssize_t n, d, V, r, ldx, ldw, lt = cnp.NPY_INT64
    cdef void *xp
    cdef void *Wp
    cdef void *bp
    cdef void *lab = NULL
    cdef void *tp
    cdef void *wp
    cdef double *sw
    cdef void *bufp
    cdef double *rows
    cdef void *gx
    cdef void *gW
    cdef double *gb
    cdef void *fn
    cdef int failed = 0
    cdef double total = 0
    cdef LossOptions opt
    if cnp.PyArray_NDIM(<cnp.ndarray>x) != 2 or not cnp.PyArray_Check(W) \
            or cnp.PyArray_NDIM(<cnp.ndarray>W) != 2 or not cnp.PyArray_Check(buf) \
            or cnp.PyArray_NDIM(<cnp.ndarray>buf) != 2:
        raise ValueError("fastxent._kernels: x, W and buf must be 2-d arrays")
    n, d = cnp.PyArray_DIM(<cnp.ndarray>x, 0), cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    V, r = cnp.PyArray_DIM(<cnp.ndarray>W, 0), cnp.PyArray_DIM(<cnp.ndarray>buf, 0)
    if V < 1 or r < 1 or max(n, d, V, r) >= 2**31:
        raise ValueError("fastxent._kernels: sizes out of range")
    _take_rows(x, ft, n, d, &xp, &ldx)
    _take_rows(W, ft, V, d, &Wp, &ldw)
    if max(ldx, ldw) >= 2**31:
        raise ValueError("fastxent._kernels: row strides out of range")
    _take(bias, ft, V, -1, False, &bp)
    if labels is not None:
        if cnp.PyArray_Check(labels) and cnp.PyArray_TYPE(<cnp.ndarray>labels) == cnp.NPY_INT32:
            lt = cnp.NPY_INT32
        _take(labels, lt, n, -1, False, &lab)
        _take(None, ft, n, V, False, &tp)
    else:
        _take(target, ft, n, V, False, &tp)
        if tp == NULL and n > 0:
            raise TypeError("fastxent._kernels: labels or target needed")
    _take(class_weight, ft, V, -1, False, &wp)
    _take(sample_weight, cnp.NPY_DOUBLE, n, -1, False, <void **>&sw)
    _take(buf, ft, r, V, True, &bufp)
    _take(loss_out, cnp.NPY_DOUBLE, n, -1, True, <void **>&rows)
    _take(grad_x, ft, n, d, True, &gx)
    _take(grad_W, ft, V, d, True, &gW)
    _take(grad_b, cnp.NPY_DOUBLE, V, -1, True, <void **>&gb)
    if rows == NULL or (gW == NULL and (gx != NULL or gb != NULL)):
        raise ValueError("fastxent._kernels: loss_out needed; grad_x and grad_b need grad_W")
    if not PyCapsule_IsValid(gemm, PyCapsule_GetName(gemm)):
        raise TypeError("fastxent._kernels: gemm must be a BLAS function capsule")
    fn = PyCapsule_GetPointer(gemm, PyCapsule_GetName(gemm))
    if n == 0:
        return 0.0
    opt = _options(smoothing, zloss, softcap, grad_denom, V)
    with nogil:
        if ft == cnp.NPY_FLOAT:
            if lt == cnp.NPY_INT32:
                failed = _linear_chunks(
                    fn, <float *>xp, ldx, <float *>Wp, ldw, <float *>bp, n, d, V,
                    <int32_t *>lab, ignore_index, <float *>tp, <float *>wp, sw, &opt,
                    rows, <float *>bufp, r, <float *>gx, <float *>gW, gb, num_threads)
            else:
                failed = _linear_chunks(
                    fn, <float *>xp, ldx, <float *>Wp, ldw, <float *>bp, n, d, V,
                    <int64_t *>lab, ignore_index, <float *>tp, <float *>wp, sw, &opt,
                    rows, <float *>bufp, r, <float *>gx, <float *>gW, gb, num_threads)
        elif lt == cnp.NPY_INT32:
            failed = _linear_chunks(
                fn, <double *>xp, ldx, <double *>Wp, ldw, <double *>bp, n, d, V,
                <int32_t *>lab, ignore_index, <double *>tp, <double *>wp, sw, &opt,
                rows, <double *>bufp, r, <double *>gx, <double *>gW, gb, num_threads)
        else:
            failed = _linear_chunks(
                fn, <double *>xp, ldx, <double *>Wp, ldw, <double *>bp, n, d, V,
                <int64_t *>lab, ignore_index, <double *>tp, <double *>wp, sw, &opt,
                rows, <double *>bufp, r, <double *>gx, <double *>gW, gb, num_threads)
        if not failed:
            total = _pairwise_sum(rows, n, num_threads)
    _raise_failed(failed)
    return total


cdef void _softmax_run(const floating *z, const Arrays *a, bint take_log,
                       int num_threads) noexcept nogil:
    cdef Py_ssize_t n = a.n, m = a.m, i, c, lo, hi
    cdef floating *o = <floating *>a.grad
    cdef double *lse = a.loss
    cdef double v
    cdef double busy[FX_TEAM_MAX]
    cdef double *busy_p = busy
    cdef double t0, tc
    if not _use_threads(n, m, num_threads):
        for i in range(n):
            v = softmax_row(z + i * m, m, o + i * m if o != NULL else NULL, take_log)
            if lse != NULL:
                lse[i] = v
        return
    # one chunk of rows per thread, timed (see _governor.h)
    t0 = fx_wtime()
    for c in prange(num_threads, schedule='static', num_threads=num_threads):
        tc = fx_wtime()
        fx_span(c, num_threads, n, &lo, &hi)
        for i in range(lo, hi):
            v = softmax_row(z + i * m, m, o + i * m if o != NULL else NULL, take_log)
            if lse != NULL:
                lse[i] = v
        busy_p[c] = fx_wtime() - tc
    fx_gov_report(t0, busy, num_threads)


def softmax_rows(object z, object out, bint take_log, object lse_out, int num_threads,
                 int half=0):
    """Row-wise softmax (or log_softmax) of ``z`` (n, m) into ``out`` (n, m,
    z's dtype) and logsumexp into ``lse_out`` (n,) float64; either may be
    None.  ``half`` as in :func:`cross_entropy_labels`."""
    cdef Arrays a
    cdef int ft = _take_common(&a, z, None, None, lse_out, out, None, half)
    cdef int failed = 0
    if a.n == 0:
        return
    with nogil:
        if half:
            failed = _half_softmax_rows(<uint16_t *>a.z, half == 2, a.n, a.m,
                                        <uint16_t *>a.grad, take_log, a.loss, num_threads)
        elif ft == cnp.NPY_FLOAT:
            _softmax_run(<float *>a.z, &a, take_log, num_threads)
        else:
            _softmax_run(<double *>a.z, &a, take_log, num_threads)
    if failed:
        raise MemoryError("fastxent: could not allocate scratch memory")


cdef double _unchecked_rows(const floating *z, const int64_t *labels, const Arrays *a,
                            int64_t ignore_index, int num_threads) except? -1:
    cdef LossOptions opt = _options(0.0, 0.0, 0.0, 1.0, a.m)
    cdef double total = 0
    cdef int failed
    with nogil:
        failed = _loss_rows(z, a.n, a.m, labels, ignore_index, <const floating *>NULL,
                            <const floating *>NULL, NULL, &opt, a.loss, <floating *>a.grad,
                            <floating *>NULL, num_threads, <floating *>NULL, &total)
    _raise_failed(failed)
    return total


def loss_rows_unchecked(object z, object labels, object loss_out, object grad_out,
                        int64_t ignore_index, int num_threads):
    """The loss kernels on labels that skipped the range check (for tests: what
    a kernel does with a label that another thread changed after the check).
    ``z`` (n, m) float32/float64, ``labels`` (n,) int64, ``loss_out`` (n,)
    float64 or None, ``grad_out`` like ``z`` or None; plain options.  Returns
    the summed loss; raises RuntimeError if a label was out of range."""
    cdef Arrays a
    cdef int ft = _take_common(&a, z, None, None, loss_out, grad_out)
    _take(labels, cnp.NPY_INT64, a.n, -1, False, &a.labels)
    if a.labels == NULL or a.n == 0:
        raise ValueError("fastxent._kernels: labels needed, n > 0")
    if ft == cnp.NPY_FLOAT:
        return _unchecked_rows(<float *>a.z, <int64_t *>a.labels, &a, ignore_index, num_threads)
    return _unchecked_rows(<double *>a.z, <int64_t *>a.labels, &a, ignore_index, num_threads)


def exp_array(const floating[::1] x, floating[::1] out):
    """The vectorised exponential used by the kernels (for tests)."""
    if floating is float:
        fx_exp_array_f(&x[0], x.shape[0], &out[0])
    else:
        fx_exp_array_d(&x[0], x.shape[0], &out[0])


def expneg_array(const floating[::1] x, floating[::1] out):
    """The exponential the kernels apply to ``z - max`` (for tests): as
    :func:`exp_array` on non-positive arguments, but 0 below the smallest
    normal result."""
    if floating is float:
        fx_expneg_array_f(&x[0], x.shape[0], &out[0])
    else:
        fx_expneg_array_d(&x[0], x.shape[0], &out[0])


def log1p_recip_unit_array(const double[::1] t, double[::1] log1p_out, double[::1] recip_out):
    """The two-class kernel's log1p(t) and 1 / (1 + t), t in [0, 1] (for tests)."""
    if t.shape[0] != log1p_out.shape[0] or t.shape[0] != recip_out.shape[0]:
        raise ValueError("fastxent._kernels: arrays of different lengths")
    if t.shape[0]:
        fx_log1p_recip_unit_array(&t[0], t.shape[0], &log1p_out[0], &recip_out[0])


def half_to_float(const uint16_t[::1] src, float[::1] dst, bint bf16):
    """The kernels' widening of float16 (or bfloat16) bits (for tests)."""
    fx_half_to_float(&src[0], src.shape[0], &dst[0], bf16)


def float_to_half(const float[::1] src, uint16_t[::1] dst, bint bf16):
    """The kernels' rounding of float32 to float16 (or bfloat16) bits (for tests)."""
    fx_float_to_half(&src[0], src.shape[0], &dst[0], bf16)


def tanh_array(const floating[::1] x, floating[::1] out):
    """The vectorised tanh used by the soft-cap (for tests)."""
    if floating is float:
        fx_tanh_array_f(&x[0], x.shape[0], &out[0])
    else:
        fx_tanh_array_d(&x[0], x.shape[0], &out[0])


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


def governor_state():
    """``(regions found waiting, current back-off in seconds, seconds until
    default-thread calls use threads again)`` (for tests and diagnostics)."""
    return (int(fx_gov_waits), fx_gov_backoff_ns * 1e-9,
            max(0.0, fx_gov_serial_until_ns * 1e-9 - fx_wtime()))


def governor_reset():
    """Forget what the governor has seen (for tests)."""
    fx_gov_reset()


def governor_report(double started_ago, busy):
    """Report a region that started ``started_ago`` seconds ago and whose chunks
    worked ``busy`` seconds each, as the kernels do (for tests)."""
    cdef double b[FX_TEAM_MAX]
    cdef Py_ssize_t k, T = min(len(busy), FX_TEAM_MAX)
    for k in range(T):
        b[k] = busy[k]
    fx_gov_report(fx_wtime() - started_ago, b, T)


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
