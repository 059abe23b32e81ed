# cython: language_level=3
# cython: boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, freethreading_compatible=True
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
* Few classes (m <= 64, class indices, no soft-cap) take a tile kernel
  instead (``fx_small_labels``): 64 rows at a time, transposed so that every
  step vectorises across rows rather than along a short row.
* All loss options reduce to one per-row form.  With ``q_k`` the effective
  target mass of class ``k`` (labels: ``(1-eps) w_y [k=y] + eps/m w_k``;
  probabilities: ``w_k ((1-eps) Y_k + eps/m)``), ``Q = sum_k q_k`` and
  ``lse = max + log S``::

      loss_i = s_i * (sum_k q_k (lse - z_k) + zloss * lse**2)
      grad_i = s_i / D * ((Q + 2 zloss lse) softmax(z) - q) * cap'(z)

  where ``s_i`` is the sample weight, ``D`` the denominator under ``"mean"``
  (1 otherwise; +inf when it is 0, which makes that gradient 0), and
  ``cap'`` the derivative of the optional soft-cap.
* Per-row losses are written to a float64 array and summed pairwise in a
  fixed order after the parallel loop, so results do not depend on the
  number of threads.
* Errors (a failed scratch allocation) are flagged through a pointer, never
  raised inside the parallel region.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, log
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

cdef extern from "_rowops.h" nogil:
    float fx_max_f(const float *z, Py_ssize_t n)
    double fx_max_d(const double *z, Py_ssize_t n)
    float fx_softcap_max_f(const float *z, Py_ssize_t n, float c, float *out)
    double fx_softcap_max_d(const double *z, Py_ssize_t n, double c, double *out)
    double fx_expsum_f(const float *z, Py_ssize_t n, float shift, float *out,
                       const float *w, const float *y, float alpha, float beta,
                       double *tdot)
    double fx_expsum_d(const double *z, Py_ssize_t n, double shift, double *out,
                       const double *w, const double *y, double alpha,
                       double beta, double *tdot)
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
    void fx_exp_array_f(const float *x, Py_ssize_t n, float *out)
    void fx_exp_array_d(const double *x, Py_ssize_t n, double *out)
    void fx_expneg_array_f(const float *x, Py_ssize_t n, float *out)
    void fx_expneg_array_d(const double *x, Py_ssize_t n, double *out)
    void fx_tanh_array_f(const float *x, Py_ssize_t n, float *out)
    void fx_tanh_array_d(const double *x, Py_ssize_t n, double *out)
    const char *fx_simd_dispatch()
    double fx_log(double x)
    double fx_pairwise_sum(const double *x, Py_ssize_t n)
    enum:
        FX_TILE_ROWS
        FX_SMALL_M_MAX
    void fx_small_labels_f(const float *z, Py_ssize_t R, Py_ssize_t m,
                           const void *labels, int labels_64bit,
                           long long ignore_index, const float *w,
                           const double *sw, double smoothing, double zloss,
                           double grad_denom, double *loss_out, float *g)
    void fx_small_labels_d(const double *z, Py_ssize_t R, Py_ssize_t m,
                           const void *labels, int labels_64bit,
                           long long ignore_index, const double *w,
                           const double *sw, double smoothing, double zloss,
                           double grad_denom, double *loss_out, double *g)

# Builds without OpenMP (e.g. Apple clang without libomp) still compile:
# prange then runs serially, and this shim answers "one thread".
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FX_OPENMP 1
    #else
    #define FX_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    int FX_OPENMP
    int omp_get_max_threads() noexcept nogil

ctypedef fused label_t:
    int32_t
    int64_t

# Below this many logits a call runs on the calling thread: starting the
# OpenMP team costs a few microseconds, more than the work itself.
cdef enum:
    PARALLEL_MIN_ELEMENTS = 32768


# Below this many logits (n * m) the kernels run on the calling thread.
SERIAL_BELOW = PARALLEL_MIN_ELEMENTS


cdef struct LossOptions:
    double smoothing    # label smoothing epsilon
    double zloss        # coefficient of lse**2
    double softcap      # c of c*tanh(z/c); 0 when off
    double grad_denom   # the "mean" denominator (inf when it is 0), else 1


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
                              double *tdot) noexcept nogil:
    if floating is float:
        return fx_expsum_f(z, m, shift, out, w, y, alpha, beta, tdot)
    else:
        return fx_expsum_d(z, m, shift, out, w, y, alpha, beta, tdot)


cdef inline void row_grad_pass(floating *g, Py_ssize_t m, floating a,
                               floating b, const floating *w,
                               const floating *y, floating alpha,
                               floating beta, const floating *zc,
                               floating inv_c) noexcept nogil:
    if floating is float:
        fx_grad_pass_f(g, m, a, b, w, y, alpha, beta, zc, inv_c)
    else:
        fx_grad_pass_d(g, m, a, b, w, y, alpha, beta, zc, inv_c)


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


cdef inline void small_labels_block(
    const floating *z, Py_ssize_t R, Py_ssize_t m, const void *labels,
    bint labels_64bit, int64_t ignore_index, const floating *w,
    const double *sw, const LossOptions *opt, double *loss_out, floating *g,
) noexcept nogil:
    if floating is float:
        fx_small_labels_f(z, R, m, labels, labels_64bit, ignore_index, w, sw,
                          opt.smoothing, opt.zloss, opt.grad_denom, loss_out, g)
    else:
        fx_small_labels_d(z, R, m, labels, labels_64bit, ignore_index, w, sw,
                          opt.smoothing, opt.zloss, opt.grad_denom, loss_out, g)


# ---- the row kernels ----

cdef double cross_entropy_row(
    const floating *z, Py_ssize_t m, Py_ssize_t label, const floating *y,
    const floating *w, double s, const LossOptions *opt, floating *g,
    floating *scratch,
) noexcept nogil:
    """Loss of one row, and its gradient into ``g`` unless ``g`` is NULL.

    ``label >= 0`` selects class-index targets, otherwise ``y`` points at
    the row of class probabilities.  ``w`` (class weights) may be NULL.
    ``scratch`` holds ``m`` elements and is used only with a soft-cap; it
    keeps the capped logits so that ``g`` may alias ``z`` (in place).
    """
    cdef const floating *zc = z
    cdef floating mx, inv_c = 0
    cdef floating beta = <floating>(opt.smoothing / m)
    cdef double S, log_s, lse, Q, dot, loss, a, b
    cdef double c_main = 0, cap_y = 1
    if opt.softcap > 0:
        mx = row_softcap_max(z, m, <floating>opt.softcap, scratch)
        zc = scratch
        inv_c = <floating>(1.0 / opt.softcap)
    else:
        mx = row_max(z, m)

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
        # for a subnormal total weight.
        b = s / opt.grad_denom
        a = b * (Q + 2.0 * opt.zloss * lse) / S
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
    cdef double S
    cdef Py_ssize_t k
    if out == NULL and (mx == INFINITY or mx == -INFINITY):
        # All -inf, or some +inf: the shifted sum is NaN, but the limit is
        # mx itself (as in scipy and PyTorch) unless the row holds a NaN.
        for k in range(m):
            if z[k] != z[k]:
                return z[k]
        return mx
    if take_log or out == NULL:
        S = row_expsum(z, m, mx, <floating *>NULL, NULL, NULL, 0, 0, NULL)
        if out != NULL:
            row_sub2(z, m, mx, <floating>log(S), out)
    else:
        S = row_expsum(z, m, mx, out, NULL, NULL, 0, 0, NULL)
        row_scale(out, m, <floating>(1.0 / S))
    return mx + log(S)


# ---- prange drivers (called from Python with validated arrays) ----
#
# Optional arrays (class weights, sample weights, the gradient, the
# softmax output, the logsumexp output) are passed as None when absent:
# Python then skips acquiring a buffer, which matters for small calls.

cdef inline bint _use_threads(Py_ssize_t n, Py_ssize_t m, int num_threads) noexcept nogil:
    return num_threads > 1 and n > 1 and n * m >= PARALLEL_MIN_ELEMENTS


cdef Py_ssize_t _label_pass(const label_t[::1] labels, Py_ssize_t m,
                            int64_t ignore_index, const floating *w,
                            const double *sw, double *denom) noexcept nogil:
    """Position of the first label outside [0, m) that is not ignore_index
    (-1 if none), and in *denom the "mean" denominator sum_i s_i w[y_i] over
    the kept rows, summed in row order (so it is the same for any thread
    count)."""
    cdef Py_ssize_t i
    cdef int64_t lab
    cdef double total = 0, term
    for i in range(labels.shape[0]):
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


cdef void _small_labels(
    const floating[:, ::1] z, const label_t[::1] labels, const floating *w,
    const double *sw, const LossOptions *opt, double *loss_out,
    floating *grad, int64_t ignore_index, int num_threads,
) noexcept nogil:
    """Few classes: blocks of FX_TILE_ROWS rows, vectorised across rows."""
    cdef Py_ssize_t n = z.shape[0], m = z.shape[1]
    cdef Py_ssize_t nblocks = (n + FX_TILE_ROWS - 1) // FX_TILE_ROWS
    cdef Py_ssize_t blk, r0, R
    for blk in prange(nblocks, schedule='static', num_threads=num_threads,
                      use_threads_if=_use_threads(n, m, num_threads)):
        r0 = blk * FX_TILE_ROWS
        R = min(<Py_ssize_t>FX_TILE_ROWS, n - r0)
        small_labels_block(
            &z[r0, 0], R, m, &labels[r0], label_t is int64_t, ignore_index, w,
            sw + r0 if sw != NULL else NULL, opt, loss_out + r0,
            grad + r0 * m if grad != NULL else NULL)


cdef LossOptions _options(double smoothing, double zloss, double softcap,
                          double denom, bint mean) noexcept nogil:
    cdef LossOptions opt
    opt.smoothing = smoothing
    opt.zloss = zloss
    opt.softcap = softcap
    # A zero denominator makes the mean NaN (computed by the caller) and
    # its gradient zero: dividing by +inf gives exactly that.
    opt.grad_denom = (denom if denom > 0 else INFINITY) if mean else 1.0
    return opt


cdef int _rows(
    const floating *z, Py_ssize_t n, Py_ssize_t m, const label_t *labels,
    int64_t ignore_index, const floating *target, const floating *w,
    const double *sw, const LossOptions *opt, double *loss_out,
    floating *grad, int num_threads,
) noexcept nogil:
    """The general path: a prange over rows of cross_entropy_row, for class
    indices (``labels``) or probabilities (``target``, ``labels`` NULL).
    Returns 1 if a thread could not allocate its soft-cap scratch row."""
    cdef Py_ssize_t i, label
    cdef floating *scratch = NULL
    cdef floating *g
    cdef const floating *y
    cdef int failed = 0
    cdef int *failed_p = &failed
    with parallel(num_threads=num_threads,
                  use_threads_if=_use_threads(n, m, num_threads)):
        scratch = NULL
        if opt.softcap > 0:
            scratch = <floating *>malloc(m * sizeof(floating))
            if scratch == NULL:
                failed_p[0] = 1
        for i in prange(n, schedule='static'):
            if opt.softcap > 0 and scratch == NULL:
                continue
            g = grad + i * m if grad != NULL else NULL
            y = NULL
            if labels != NULL:
                if labels[i] == ignore_index:
                    loss_out[i] = 0
                    if g != NULL:
                        memset(g, 0, m * sizeof(floating))
                    continue
                label = <Py_ssize_t>labels[i]
            else:
                label = -1
                y = target + i * m
            loss_out[i] = cross_entropy_row(
                z + i * m, m, label, y, w, sw[i] if sw != NULL else 1.0, opt,
                g, scratch)
        free(scratch)
    return failed


cdef double *_loss_rows(double[::1] loss_out, Py_ssize_t n) except NULL:
    """Where the per-row losses go: ``loss_out``, or (for reduced losses,
    where the caller passes None) a buffer of our own that
    :func:`_total_and_free` releases, which saves the caller an array."""
    cdef double *p
    if loss_out is not None:
        return &loss_out[0]
    p = <double *>malloc(n * sizeof(double))
    if p == NULL:
        raise MemoryError("fastxent: could not allocate the per-row losses")
    return p


cdef double _total_and_free(double[::1] loss_out, double *rows, Py_ssize_t n,
                            int failed) except? -1.0:
    """The pairwise sum of the per-row losses; frees our own buffer; raises
    if a thread could not allocate its scratch row."""
    cdef double total = fx_pairwise_sum(rows, n)
    if loss_out is None:
        free(rows)
    if failed:
        raise MemoryError("fastxent: could not allocate per-thread scratch memory")
    return total


def cross_entropy_labels(
    const floating[:, ::1] z,
    const label_t[::1] labels,
    const floating[::1] class_weight,
    const double[::1] sample_weight,
    double[::1] loss_out,
    floating[:, ::1] grad_out,
    int64_t ignore_index,
    double smoothing,
    double zloss,
    double softcap,
    bint mean,
    int num_threads,
):
    """Per-row losses into ``loss_out`` (and the gradient into ``grad_out``)
    for class-index targets; ``loss_out`` (when only their sum is wanted),
    ``class_weight``, ``sample_weight`` and ``grad_out`` may be None.

    Returns ``(bad, total, denominator)``.  ``bad`` is the position of the
    first label outside ``[0, m)`` that is not ``ignore_index`` (then nothing
    else was computed) or -1; ``total`` is the pairwise sum of the per-row
    losses; ``denominator`` is ``sum_i s_i w[y_i]`` over the kept rows, by
    which the gradient was divided if ``mean``.  Ignored rows get loss 0
    and a zero gradient.
    """
    cdef Py_ssize_t n = z.shape[0], m = z.shape[1], bad
    cdef LossOptions opt
    cdef const floating *w = &class_weight[0] if class_weight is not None else NULL
    cdef const double *sw = NULL
    cdef floating *grad = NULL
    cdef double denom = 0
    cdef double *rows
    cdef int failed = 0
    if n == 0:
        return -1, 0.0, 0.0
    if sample_weight is not None:
        sw = &sample_weight[0]
    if grad_out is not None:
        grad = &grad_out[0, 0]
    with nogil:
        bad = _label_pass(labels, m, ignore_index, w, sw, &denom)
    if bad >= 0:
        return bad, 0.0, denom
    opt = _options(smoothing, zloss, softcap, denom, mean)
    rows = _loss_rows(loss_out, n)
    with nogil:
        if m <= FX_SMALL_M_MAX and softcap == 0:
            _small_labels(z, labels, w, sw, &opt, rows, grad, ignore_index,
                          num_threads)
        else:
            failed = _rows(&z[0, 0], n, m, &labels[0], ignore_index,
                           <const floating *>NULL, w, sw, &opt, rows, grad,
                           num_threads)
    return -1, _total_and_free(loss_out, rows, n, failed), denom


def cross_entropy_probs(
    const floating[:, ::1] z,
    const floating[:, ::1] target,
    const floating[::1] class_weight,
    const double[::1] sample_weight,
    double[::1] loss_out,
    floating[:, ::1] grad_out,
    double smoothing,
    double zloss,
    double softcap,
    bint mean,
    int num_threads,
):
    """As :func:`cross_entropy_labels` for class-probability targets of the
    shape of ``z`` (which must not overlap ``grad_out``).  Returns
    ``(-1, total, denominator)`` with the denominator ``sum_i s_i`` (``n``
    without sample weights)."""
    cdef Py_ssize_t n = z.shape[0], m = z.shape[1]
    cdef LossOptions opt
    cdef const floating *w = &class_weight[0] if class_weight is not None else NULL
    cdef const double *sw = NULL
    cdef floating *grad = NULL
    cdef double denom
    cdef double *rows
    cdef int failed
    if n == 0:
        return -1, 0.0, 0.0
    if sample_weight is not None:
        sw = &sample_weight[0]
        denom = fx_pairwise_sum(sw, n)
    else:
        denom = <double>n
    if grad_out is not None:
        grad = &grad_out[0, 0]
    opt = _options(smoothing, zloss, softcap, denom, mean)
    rows = _loss_rows(loss_out, n)
    with nogil:
        failed = _rows(&z[0, 0], n, m, <const int64_t *>NULL, 0, &target[0, 0],
                       w, sw, &opt, rows, grad, num_threads)
    return -1, _total_and_free(loss_out, rows, n, failed), denom


def softmax_rows(const floating[:, ::1] z, floating[:, ::1] out, bint take_log,
                 double[::1] lse_out, int num_threads):
    """Row-wise softmax (or log_softmax) into ``out`` and logsumexp into
    ``lse_out``; either may be None."""
    cdef Py_ssize_t n = z.shape[0], m = z.shape[1], i
    cdef floating *o = NULL
    cdef double *lse = NULL
    cdef double v
    if n == 0:
        return
    if out is not None:
        o = &out[0, 0]
    if lse_out is not None:
        lse = &lse_out[0]
    with nogil:
        for i in prange(n, schedule='static', num_threads=num_threads,
                        use_threads_if=_use_threads(n, m, num_threads)):
            v = softmax_row(&z[i, 0], m, o + i * m if o != NULL else NULL, take_log)
            if lse != NULL:
                lse[i] = v


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


def tanh_array(const floating[::1] x, floating[::1] out):
    """The vectorised tanh used by the soft-cap (for tests)."""
    if floating is float:
        fx_tanh_array_f(&x[0], x.shape[0], &out[0])
    else:
        fx_tanh_array_d(&x[0], x.shape[0], &out[0])


def openmp_enabled():
    return bool(FX_OPENMP)


def max_threads():
    """``omp_get_max_threads()`` now (1 without OpenMP)."""
    return omp_get_max_threads()


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
