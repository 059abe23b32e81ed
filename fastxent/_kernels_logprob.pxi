# Included at the end of _kernels.pyx: per-token log-probabilities, their
# entropy and VJP, and the distillation divergences (forward/reverse KL,
# generalised JSD), alone or fused with a linear head.
#
# Same structure as the cross-entropy kernels: a row function per job that
# only reduces the row with the C loops of _logprob_t.h and hands the sums
# to _options.h's finishers (fx_finish_logprob_row, fx_finish_divergence_row:
# where temperature, entropy and the divergences' formulas live); one driver
# that runs it serially or as one timed chunk of rows per thread
# (_governor.h); entry points that check their ndarrays with NumPy's C API;
# and a chunk loop over x @ W.T through SciPy's BLAS (_gemm) for the fused
# linear variants.  Every row is computed on its own, in a fixed order, so
# the results are the same bits at every thread count.

cdef extern from "_options.h" nogil:
    ctypedef struct fx_lp_row:
        double logprob
        double entropy
        double a
        double c
        double c1
        double label_grad
    ctypedef struct fx_div_row:
        double loss
        double a
        double a2
        double c
    enum:
        FX_FORWARD_KL
        FX_REVERSE_KL
        FX_JSD
    void fx_set_temperature(fx_options *o, double temperature)
    double fx_inv_temperature(const fx_options *o)
    void fx_set_beta(fx_options *o, double beta)
    double fx_beta(const fx_options *o)
    fx_lp_row fx_finish_logprob_row(const fx_options *o, double d_y, double S, double log_s,
                                    double edot, double gl, double ge)
    fx_div_row fx_finish_divergence_row(const fx_options *o, int divergence, double b,
                                        double S_s, double log_ss, double S_t, double log_st,
                                        double edot, double xdot, double jsd, double qgamma)

cdef extern from "_rowops.h" nogil:
    double fx_lp_expsum_f(const float *z, Py_ssize_t n, float shift, float inv_t, float *out,
                          double *edot, const float *z2, float shift2, double *xdot)
    double fx_lp_expsum_d(const double *z, Py_ssize_t n, double shift, double inv_t,
                          double *out, double *edot, const double *z2, double shift2,
                          double *xdot)
    void fx_lp_grad_pass_f(float *g, Py_ssize_t n, float a, float c, float c1, const float *z1,
                           float sh1, float c2, const float *z2, float sh2, float inv_t,
                           const float *zc, float inv_c)
    void fx_lp_grad_pass_d(double *g, Py_ssize_t n, double a, double c, double c1,
                           const double *z1, double sh1, double c2, const double *z2,
                           double sh2, double inv_t, const double *zc, double inv_c)
    void fx_lp_axpby_f(float *g, const float *e, Py_ssize_t n, float a1, float a2)
    void fx_lp_axpby_d(double *g, const double *e, Py_ssize_t n, double a1, double a2)
    double fx_jsd_pass_f(const float *es, float *et, Py_ssize_t n, const float *s, float mxs,
                         const float *t, float mxt, float inv_t, double log_ss, double log_st,
                         double inv_ss, double inv_st, double beta, double *qgamma)
    double fx_jsd_pass_d(const double *es, double *et, Py_ssize_t n, const double *s,
                         double mxs, const double *t, double mxt, double inv_t, double log_ss,
                         double log_st, double inv_ss, double inv_st, double beta,
                         double *qgamma)
    void fx_lp_scaled_gap_f(float *g, const float *gamma, Py_ssize_t n, float a, float c)
    void fx_lp_scaled_gap_d(double *g, const double *gamma, Py_ssize_t n, double a, double c)


# ---- typed front ends ----

cdef inline double lp_expsum(const floating *z, Py_ssize_t m, floating shift, floating inv_t,
                             floating *out, double *edot, const floating *z2=NULL,
                             floating shift2=0, double *xdot=NULL) noexcept nogil:
    if floating is float:
        return fx_lp_expsum_f(z, m, shift, inv_t, out, edot, z2, shift2, xdot)
    else:
        return fx_lp_expsum_d(z, m, shift, inv_t, out, edot, z2, shift2, xdot)


cdef inline void lp_grad_pass(floating *g, Py_ssize_t m, double a, double c, double c1,
                              const floating *z1, floating sh1, double c2,
                              const floating *z2, floating sh2, floating inv_t,
                              const floating *zc, floating inv_c) noexcept nogil:
    if floating is float:
        fx_lp_grad_pass_f(g, m, <float>a, <float>c, <float>c1, z1, sh1, <float>c2, z2, sh2,
                          inv_t, zc, inv_c)
    else:
        fx_lp_grad_pass_d(g, m, a, c, c1, z1, sh1, c2, z2, sh2, inv_t, zc, inv_c)


# ---- the row functions ----

cdef enum:
    # What a job computes: token log-probabilities (and entropy, and the
    # VJP), or a divergence (FX_FORWARD_KL + DIV_BASE, ...).
    JOB_LOGPROB = 0
    DIV_BASE = 1


cdef struct LpJob:
    Py_ssize_t n, m
    int kind              # JOB_LOGPROB, or DIV_BASE + divergence
    const void *z         # (n, m) logits (the student's for a divergence)
    const void *t         # (n, m) the teacher's logits, or NULL
    const int64_t *labels  # (n,) checked labels (NULL: every row counts for a divergence)
    int64_t ignore_index
    const double *gl      # (n,) upstream gradient of the log-probs, or NULL (all 0)
    const double *ge      # (n,) upstream gradient of the entropies, or NULL (all 0)
    double *out1          # (n,) log-probs, or the divergence of each row
    double *out2          # (n,) entropies, or NULL
    void *grad            # (n, m) gradient (may alias z), or NULL
    bint is_float         # z, t and grad are float32 (else float64)
    fx_options opt


cdef void lp_row(const floating *z, Py_ssize_t m, Py_ssize_t label, const fx_options *opt,
                 double gl, double ge, double *lp_out, double *ent_out, floating *g,
                 floating *scratch) noexcept nogil:
    """Log-probability of ``label`` in one row (and its entropy into
    ``ent_out`` unless NULL), and the gradient of ``gl logp + ge entropy``
    into ``g`` unless NULL (``g`` may alias ``z``).  ``scratch`` holds m
    elements: the capped logits, or a copy of the row that an in-place
    entropy gradient reads after ``g`` overwrote it."""
    cdef const floating *zc = z
    cdef floating mx, inv_c = 0
    cdef floating inv_t = <floating>fx_inv_temperature(opt)
    cdef bint want_edot = ent_out != NULL or (g != NULL and ge != 0)
    cdef double S, d_y, edot = 0, cap_y = 1
    cdef fx_lp_row r
    if opt.softcap > 0:
        mx = row_softcap_max(z, m, <floating>opt.softcap, scratch)
        zc = scratch
        inv_c = <floating>(1.0 / opt.softcap)
    else:
        mx = row_max(z, m)
        if g != NULL and ge != 0 and <const floating *>g == z:
            memcpy(scratch, z, m * sizeof(floating))
            zc = scratch
    # read before the exp pass writes g (which may be z)
    d_y = (<double>zc[label] - <double>mx) * <double>inv_t
    if opt.softcap > 0:
        cap_y = 1.0 - (<double>zc[label] * inv_c) ** 2
    S = lp_expsum(zc, m, mx, inv_t, g, &edot if want_edot else NULL)
    r = fx_finish_logprob_row(opt, d_y, S, log(S), edot, gl, ge)
    lp_out[0] = r.logprob
    if ent_out != NULL:
        ent_out[0] = r.entropy
    if g != NULL:
        lp_grad_pass(g, m, r.a, r.c, r.c1, zc if ge != 0 else <const floating *>NULL, mx,
                     0, <const floating *>NULL, 0, inv_t,
                     zc if opt.softcap > 0 else <const floating *>NULL, inv_c)
        g[label] += <floating>(r.label_grad * cap_y)


cdef double div_row(const floating *s, const floating *t, Py_ssize_t m, int divergence,
                    const fx_options *opt, double b, floating *g,
                    floating *scratch) noexcept nogil:
    """One row's divergence between softmax(t / T) (teacher) and
    softmax(s / T) (student), and its gradient times ``b`` with respect to
    ``s`` into ``g`` (which may alias ``s``; NULL: the loss alone).
    ``scratch`` holds 2 m elements: the teacher's exponentials (then the
    JSD's gamma), and a copy of ``s`` when ``g`` aliases it and the gradient
    pass reads it (or, without ``g``, the student's exponentials)."""
    cdef floating inv_t = <floating>fx_inv_temperature(opt)
    cdef floating mxs = row_max(s, m)
    cdef floating mxt = row_max(t, m)
    cdef double Ss, St, edot = 0, xdot = 0, jsd = 0, qgamma = 0
    cdef floating *et = scratch
    cdef fx_div_row r
    if g == NULL:
        # The loss alone: the student's exponentials still need a row (and
        # the gradient pass below writes there, in cache, unread).
        g = scratch + m
    if divergence == FX_FORWARD_KL:
        # the teacher first: its cross term reads s before g (maybe s) is written
        St = lp_expsum(t, m, mxt, inv_t, et, &edot, s, mxs, &xdot)
        Ss = lp_expsum(s, m, mxs, inv_t, g, <double *>NULL)
    else:
        if <const floating *>g == s:  # the gradient pass reads s
            memcpy(scratch + m, s, m * sizeof(floating))
            s = scratch + m
        if divergence == FX_REVERSE_KL:
            Ss = lp_expsum(s, m, mxs, inv_t, g, &edot, t, mxt, &xdot)
            St = lp_expsum(t, m, mxt, inv_t, <floating *>NULL, <double *>NULL)
        else:
            Ss = lp_expsum(s, m, mxs, inv_t, g, <double *>NULL)
            St = lp_expsum(t, m, mxt, inv_t, et, <double *>NULL)
            if floating is float:
                jsd = fx_jsd_pass_f(g, et, m, s, mxs, t, mxt, inv_t, log(Ss), log(St),
                                    1.0 / Ss, 1.0 / St, fx_beta(opt), &qgamma)
            else:
                jsd = fx_jsd_pass_d(g, et, m, s, mxs, t, mxt, inv_t, log(Ss), log(St),
                                    1.0 / Ss, 1.0 / St, fx_beta(opt), &qgamma)
    r = fx_finish_divergence_row(opt, divergence, b, Ss, log(Ss), St, log(St), edot, xdot,
                                 jsd, qgamma)
    if divergence == FX_FORWARD_KL:
        if floating is float:
            fx_lp_axpby_f(g, et, m, <float>r.a, <float>r.a2)
        else:
            fx_lp_axpby_d(g, et, m, r.a, r.a2)
    elif divergence == FX_REVERSE_KL:
        lp_grad_pass(g, m, r.a, r.c, 1.0, s, mxs, -1.0, t, mxt, inv_t,
                     <const floating *>NULL, 0)
    elif floating is float:
        fx_lp_scaled_gap_f(g, et, m, <float>r.a, <float>r.c)
    else:
        fx_lp_scaled_gap_d(g, et, m, r.a, r.c)
    return r.loss


cdef inline void _lp_one_row(Py_ssize_t i, const LpJob *j, floating *scratch,
                             int *raced) noexcept nogil:
    cdef Py_ssize_t m = j.m
    cdef const floating *z = <const floating *>j.z + i * m
    cdef floating *g = <floating *>j.grad + i * m if j.grad != NULL else NULL
    cdef int64_t lab = -1
    if j.labels != NULL:
        # Read once: checked before, but a data race must never make an index.
        lab = j.labels[i]
        if lab == j.ignore_index:
            j.out1[i] = 0
            if j.out2 != NULL:
                j.out2[i] = 0
            if g != NULL:
                memset(g, 0, m * sizeof(floating))
            return
        if lab < 0 or lab >= m:
            j.out1[i] = NAN
            if j.out2 != NULL:
                j.out2[i] = NAN
            _nan_row(g, m)
            raced[0] = 1
            return
    if j.kind == JOB_LOGPROB:
        lp_row(z, m, <Py_ssize_t>lab, &j.opt, j.gl[i] if j.gl != NULL else 0.0,
               j.ge[i] if j.ge != NULL else 0.0, j.out1 + i,
               j.out2 + i if j.out2 != NULL else NULL, g, scratch)
    else:
        j.out1[i] = div_row(z, <const floating *>j.t + i * m, m, j.kind - DIV_BASE, &j.opt,
                            fx_grad_scale(&j.opt, 1.0), g, scratch)


cdef int _lp_span(void *job, ptrdiff_t lo, ptrdiff_t hi, void *scratch) noexcept nogil:
    """Rows [lo, hi) of the job."""
    cdef const LpJob *j = <const LpJob *>job
    cdef Py_ssize_t i
    cdef int raced = 0
    if j.is_float:
        for i in range(lo, hi):
            _lp_one_row(i, j, <float *>scratch, &raced)
    else:
        for i in range(lo, hi):
            _lp_one_row(i, j, <double *>scratch, &raced)
    return FX_LABEL_RACED if raced else 0


cdef int _lp_run(const LpJob *j, int num_threads, void *own_scratch=NULL) noexcept nogil:
    """The job's rows, through the driver (two scratch rows per thread;
    ``own_scratch`` serves a serial call).  Returns FX_OUT_OF_MEMORY and/or
    FX_LABEL_RACED, or 0."""
    return fx_run_spans(_lp_span, <void *>j, j.n,
                        2 * j.m * (sizeof(float) if j.is_float else sizeof(double)),
                        own_scratch, _threads_for(j.n, j.m, num_threads))


# ---- entry points (called from _logprob.py and _distill.py with validated arrays) ----

cdef int _lp_take_logits(LpJob *j, object z, object grad_out) except -1:
    cdef int ft = _float_type(z)
    if cnp.PyArray_NDIM(<cnp.ndarray>z) != 2:
        raise ValueError("fastxent._kernels: logits must be 2-d")
    j.n = cnp.PyArray_DIM(<cnp.ndarray>z, 0)
    j.m = cnp.PyArray_DIM(<cnp.ndarray>z, 1)
    if j.m < 1:
        raise ValueError("fastxent._kernels: m >= 1 needed")
    _take(z, ft, j.n, j.m, False, <void **>&j.z)
    _take(grad_out, ft, j.n, j.m, True, &j.grad)
    j.is_float = ft == cnp.NPY_FLOAT
    return ft


def token_logprob_rows(object z, object labels, int64_t ignore_index, double softcap,
                       double temperature, object lp_out, object ent_out, object grad_logprobs,
                       object grad_entropy, object grad_out, int num_threads):
    """Log-probabilities of the checked int64 ``labels`` (n,) in the rows
    of ``z`` (n, m) float32/float64 into ``lp_out`` (n,) float64, entropies
    into ``ent_out`` (n,) float64 or None, and (``grad_out`` (n, m) of z's
    dtype, or None; may be ``z``) the gradient of ``sum_i gl_i lp_i + ge_i
    ent_i`` with ``grad_logprobs``/``grad_entropy`` (n,) float64 or None
    (zeros).  ``softcap`` 0: off."""
    cdef LpJob j
    cdef int ft = _lp_take_logits(&j, z, grad_out)
    cdef int failed = 0
    j.kind = JOB_LOGPROB
    j.t = NULL
    j.ignore_index = ignore_index
    _take(labels, cnp.NPY_INT64, j.n, -1, False, <void **>&j.labels)
    _take(lp_out, cnp.NPY_DOUBLE, j.n, -1, True, <void **>&j.out1)
    _take(ent_out, cnp.NPY_DOUBLE, j.n, -1, True, <void **>&j.out2)
    _take(grad_logprobs, cnp.NPY_DOUBLE, j.n, -1, False, <void **>&j.gl)
    _take(grad_entropy, cnp.NPY_DOUBLE, j.n, -1, False, <void **>&j.ge)
    if j.labels == NULL or j.out1 == NULL:
        raise ValueError("fastxent._kernels: labels and lp_out needed")
    j.opt = fx_options_for(0.0, 0.0, softcap, 1.0, j.m)
    fx_set_temperature(&j.opt, temperature)
    if j.n == 0:
        return
    with nogil:
        failed = _lp_run(&j, num_threads)
    _raise_failed(failed)


cdef int _div_setup(LpJob *j, object teacher, object labels, int64_t ignore_index,
                    int divergence, double beta, double temperature, double grad_denom,
                    object loss_out, int ft) except -1:
    if divergence not in (FX_FORWARD_KL, FX_REVERSE_KL, FX_JSD):
        raise ValueError("fastxent._kernels: unknown divergence")
    j.kind = DIV_BASE + divergence
    _take(teacher, ft, j.n, j.m, False, <void **>&j.t)
    _take(labels, cnp.NPY_INT64, j.n, -1, False, <void **>&j.labels)
    _take(loss_out, cnp.NPY_DOUBLE, j.n, -1, True, <void **>&j.out1)
    if j.out1 == NULL:
        raise ValueError("fastxent._kernels: loss_out needed")
    j.ignore_index = ignore_index
    j.out2 = NULL
    j.gl = NULL
    j.ge = NULL
    j.opt = fx_options_for(0.0, 0.0, 0.0, grad_denom, j.m)
    fx_set_temperature(&j.opt, temperature)
    fx_set_beta(&j.opt, beta)
    return 0


def divergence_rows(object student, object teacher, object labels, int64_t ignore_index,
                    int divergence, double beta, double temperature, double grad_denom,
                    object loss_out, object grad_out, int num_threads):
    """Per-row divergence (0 forward KL, 1 reverse KL, 2 JSD) between
    softmax(teacher / T) and softmax(student / T), both (n, m) of one
    dtype, into ``loss_out`` (n,) float64, and its gradient with respect to
    the student's logits divided by ``grad_denom`` into ``grad_out`` (n, m;
    may be ``student``; None: the losses alone).  Rows whose int64 ``labels`` (or None) equal
    ``ignore_index`` get 0."""
    cdef LpJob j
    cdef int ft = _lp_take_logits(&j, student, grad_out)
    cdef int failed = 0
    _div_setup(&j, teacher, labels, ignore_index, divergence, beta, temperature, grad_denom,
               loss_out, ft)
    if j.t == NULL:
        raise ValueError("fastxent._kernels: teacher logits needed")
    if j.n == 0:
        return
    with nogil:
        failed = _lp_run(&j, num_threads)
    _raise_failed(failed)


# ---- fused with the linear head: x @ W.T + b in row chunks (see _linear_chunks) ----

cdef void _lp_logits(void *gemm, const floating *x, Py_ssize_t ldx, const floating *W,
                     Py_ssize_t ldw, const floating *bias, Py_ssize_t rr, Py_ssize_t d,
                     Py_ssize_t V, floating *buf, int num_threads) noexcept nogil:
    """buf (rr x V) := x (rr rows) @ W.T + bias."""
    if bias != NULL:
        _fill_rows(buf, rr, V, bias, num_threads)
    _gemm(gemm, c'T', c'N', <int>V, <int>rr, <int>d, W, <int>ldw, x, <int>ldx,
          1 if bias != NULL else 0, buf, <int>V)


cdef void _lp_backward(void *gemm, const floating *x, Py_ssize_t ldx, const floating *W,
                       Py_ssize_t ldw, Py_ssize_t c0, Py_ssize_t rr, Py_ssize_t d,
                       Py_ssize_t V, const floating *buf, floating *grad_x, floating *grad_W,
                       double *grad_b, int num_threads) noexcept nogil:
    """The chunk's gradient G (buf) into grad_x[c0:c0+rr] = G @ W,
    grad_W += G.T @ x_c (set on the first chunk) and grad_b += G.sum(0)."""
    # grad_x[c]^T (d x rr) = W^T (d x V) G^T (V x rr)
    _gemm(gemm, c'N', c'N', <int>d, <int>rr, <int>V, W, <int>ldw, buf, <int>V, 0,
          grad_x + c0 * d, <int>d)
    # grad_W^T (d x V) += x_c^T (d x rr) G (rr x V)
    _gemm(gemm, c'N', c'T', <int>d, <int>V, <int>rr, x + c0 * ldx, <int>ldx, buf, <int>V,
          0 if c0 == 0 else 1, grad_W, <int>d)
    if grad_b != NULL:
        _add_column_sums(buf, rr, V, grad_b, num_threads)


cdef int _lp_linear(void *gemm, const floating *x, Py_ssize_t ldx, const floating *W,
                    Py_ssize_t ldw, const floating *bias, const floating *tx, Py_ssize_t ldtx,
                    const floating *tW, Py_ssize_t ldtw, const floating *tbias,
                    Py_ssize_t n, Py_ssize_t d, Py_ssize_t td, Py_ssize_t V, LpJob *j,
                    floating *buf, floating *tbuf, Py_ssize_t r, floating *grad_x,
                    floating *grad_W, double *grad_b, int num_threads) noexcept nogil:
    """The chunk loop: the job's rows (log-probabilities, or a divergence
    against the teacher's head when ``tx`` is not NULL) over x @ W.T + b,
    ``r`` rows at a time; the gradient (written over the logits in ``buf``)
    goes back through W when ``grad_W`` is not NULL."""
    cdef Py_ssize_t c0 = 0, rr
    cdef int failed = 0
    cdef LpJob cj = j[0]
    cj.is_float = floating is float
    cdef floating *scratch = <floating *>malloc(2 * V * sizeof(floating))
    if scratch == NULL:
        return FX_OUT_OF_MEMORY
    while c0 < n:
        rr = min(r, n - c0)
        _lp_logits(gemm, x + c0 * ldx, ldx, W, ldw, bias, rr, d, V, buf, num_threads)
        if tx != NULL:
            _lp_logits(gemm, tx + c0 * ldtx, ldtx, tW, ldtw, tbias, rr, td, V, tbuf,
                       num_threads)
        cj.n = rr
        cj.z = buf
        cj.t = tbuf
        cj.grad = buf if grad_W != NULL else NULL
        cj.labels = j.labels + c0 if j.labels != NULL else NULL
        cj.gl = j.gl + c0 if j.gl != NULL else NULL
        cj.ge = j.ge + c0 if j.ge != NULL else NULL
        cj.out1 = j.out1 + c0
        cj.out2 = j.out2 + c0 if j.out2 != NULL else NULL
        failed |= _lp_run(&cj, num_threads, scratch)
        if grad_W != NULL:
            _lp_backward(gemm, x, ldx, W, ldw, c0, rr, d, V, buf, grad_x, grad_W, grad_b,
                         num_threads)
        c0 += rr
    free(scratch)
    return failed


cdef int _lp_take_head(object x, object W, object bias, int ft, Py_ssize_t n, Py_ssize_t V,
                       void **xp, Py_ssize_t *ldx, void **Wp, Py_ssize_t *ldw,
                       void **bp, Py_ssize_t *d) except -1:
    if cnp.PyArray_NDIM(<cnp.ndarray>x) != 2 or not cnp.PyArray_Check(W) \
            or cnp.PyArray_NDIM(<cnp.ndarray>W) != 2:
        raise ValueError("fastxent._kernels: x and W must be 2-d arrays")
    d[0] = cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    _take_rows(x, ft, n, d[0], xp, ldx)
    _take_rows(W, ft, V, d[0], Wp, ldw)
    if max(ldx[0], ldw[0], d[0]) >= 2**31:
        raise ValueError("fastxent._kernels: sizes or row strides out of range")
    _take(bias, ft, V, -1, False, bp)
    return 0


def linear_logprob_chunks(
    object x, object W, object bias, object labels, int64_t ignore_index, double softcap,
    double temperature, object lp_out, object ent_out, object grad_logprobs,
    object grad_entropy, object buf, object grad_x, object grad_W, object grad_b,
    object gemm, int num_threads,
):
    """:func:`token_logprob_rows` over ``x @ W.T + bias`` in chunks of
    ``buf``'s rows (``x`` (n, d), ``W`` (V, d), contiguous rows; ``gemm``
    the SciPy BLAS capsule of sgemm/dgemm), and with ``grad_W`` (V, d) the
    gradients into it, ``grad_x`` (n, d) and ``grad_b`` (V,) float64
    (accumulated into: pass zeros; or None)."""
    cdef LpJob j
    cdef int ft = _float_type(x)
    cdef Py_ssize_t n, d, V, r, ldx, ldw
    cdef void *xp
    cdef void *Wp
    cdef void *bp
    cdef void *bufp
    cdef void *gx
    cdef void *gW
    cdef double *gb
    cdef void *fn
    cdef int failed = 0
    if cnp.PyArray_NDIM(<cnp.ndarray>x) != 2 or not cnp.PyArray_Check(buf) \
            or cnp.PyArray_NDIM(<cnp.ndarray>buf) != 2:
        raise ValueError("fastxent._kernels: x and buf must be 2-d arrays")
    n = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
    V, r = cnp.PyArray_DIM(<cnp.ndarray>buf, 1), cnp.PyArray_DIM(<cnp.ndarray>buf, 0)
    if V < 1 or r < 1 or max(n, V, r) >= 2**31:
        raise ValueError("fastxent._kernels: sizes out of range")
    _lp_take_head(x, W, bias, ft, n, V, &xp, &ldx, &Wp, &ldw, &bp, &d)
    _take(buf, ft, r, V, True, &bufp)
    _take(grad_x, ft, n, d, True, &gx)
    _take(grad_W, ft, V, d, True, &gW)
    _take(grad_b, cnp.NPY_DOUBLE, V, -1, True, <void **>&gb)
    if gW == NULL and (gx != NULL or gb != NULL) or gW != NULL and gx == NULL:
        raise ValueError("fastxent._kernels: grad_x and grad_W go together; grad_b needs them")
    j.n, j.m = n, V
    j.kind = JOB_LOGPROB
    j.z = NULL
    j.t = NULL
    j.grad = NULL
    j.ignore_index = ignore_index
    _take(labels, cnp.NPY_INT64, n, -1, False, <void **>&j.labels)
    _take(lp_out, cnp.NPY_DOUBLE, n, -1, True, <void **>&j.out1)
    _take(ent_out, cnp.NPY_DOUBLE, n, -1, True, <void **>&j.out2)
    _take(grad_logprobs, cnp.NPY_DOUBLE, n, -1, False, <void **>&j.gl)
    _take(grad_entropy, cnp.NPY_DOUBLE, n, -1, False, <void **>&j.ge)
    if j.labels == NULL or j.out1 == NULL:
        raise ValueError("fastxent._kernels: labels and lp_out needed")
    if not PyCapsule_IsValid(gemm, PyCapsule_GetName(gemm)):
        raise TypeError("fastxent._kernels: gemm must be a BLAS function capsule")
    fn = PyCapsule_GetPointer(gemm, PyCapsule_GetName(gemm))
    j.opt = fx_options_for(0.0, 0.0, softcap, 1.0, V)
    fx_set_temperature(&j.opt, temperature)
    if n == 0:
        return
    with nogil:
        if ft == cnp.NPY_FLOAT:
            failed = _lp_linear(fn, <float *>xp, ldx, <float *>Wp, ldw, <float *>bp,
                                <float *>NULL, 0, <float *>NULL, 0, <float *>NULL, n, d, 0, V,
                                &j, <float *>bufp, <float *>NULL, r, <float *>gx,
                                <float *>gW, gb, num_threads)
        else:
            failed = _lp_linear(fn, <double *>xp, ldx, <double *>Wp, ldw, <double *>bp,
                                <double *>NULL, 0, <double *>NULL, 0, <double *>NULL, n, d, 0,
                                V, &j, <double *>bufp, <double *>NULL, r, <double *>gx,
                                <double *>gW, gb, num_threads)
    _raise_failed(failed)


def linear_divergence_chunks(
    object x, object W, object bias, object tx, object tW, object tbias, object labels,
    int64_t ignore_index, int divergence, double beta, double temperature,
    double grad_denom, object loss_out, object buf, object tbuf, object grad_x,
    object grad_W, object grad_b, object gemm, int num_threads,
):
    """:func:`divergence_rows` between the teacher's head ``tx @ tW.T +
    tbias`` and the student's ``x @ W.T + bias`` in chunks of ``buf``'s
    rows (``tbuf`` of its shape), with the gradients with respect to x, W
    and bias (``grad_b`` float64 zeros, or None) as in
    :func:`linear_logprob_chunks`."""
    cdef LpJob j
    cdef int ft = _float_type(x)
    cdef Py_ssize_t n, d, td, V, r, ldx, ldw, ldtx, ldtw
    cdef void *xp
    cdef void *Wp
    cdef void *bp
    cdef void *txp
    cdef void *tWp
    cdef void *tbp
    cdef void *bufp
    cdef void *tbufp
    cdef void *gx
    cdef void *gW
    cdef double *gb
    cdef void *fn
    cdef int failed = 0
    if cnp.PyArray_NDIM(<cnp.ndarray>x) != 2 or not cnp.PyArray_Check(buf) \
            or cnp.PyArray_NDIM(<cnp.ndarray>buf) != 2 or not cnp.PyArray_Check(tx) \
            or cnp.PyArray_NDIM(<cnp.ndarray>tx) != 2:
        raise ValueError("fastxent._kernels: x, tx and buf must be 2-d arrays")
    n = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
    V, r = cnp.PyArray_DIM(<cnp.ndarray>buf, 1), cnp.PyArray_DIM(<cnp.ndarray>buf, 0)
    if V < 1 or r < 1 or max(n, V, r) >= 2**31:
        raise ValueError("fastxent._kernels: sizes out of range")
    _lp_take_head(x, W, bias, ft, n, V, &xp, &ldx, &Wp, &ldw, &bp, &d)
    _lp_take_head(tx, tW, tbias, ft, n, V, &txp, &ldtx, &tWp, &ldtw, &tbp, &td)
    _take(buf, ft, r, V, True, &bufp)
    _take(tbuf, ft, r, V, True, &tbufp)
    _take(grad_x, ft, n, d, True, &gx)
    _take(grad_W, ft, V, d, True, &gW)
    _take(grad_b, cnp.NPY_DOUBLE, V, -1, True, <void **>&gb)
    if tbufp == NULL or (gW == NULL) != (gx == NULL) or gW == NULL and gb != NULL:
        raise ValueError("fastxent._kernels: tbuf needed; grad_x and grad_W go together; "
                         "grad_b needs them")
    j.n, j.m = n, V
    j.z = NULL
    j.grad = NULL
    _div_setup(&j, None, labels, ignore_index, divergence, beta, temperature, grad_denom,
               loss_out, ft)
    if not PyCapsule_IsValid(gemm, PyCapsule_GetName(gemm)):
        raise TypeError("fastxent._kernels: gemm must be a BLAS function capsule")
    fn = PyCapsule_GetPointer(gemm, PyCapsule_GetName(gemm))
    if n == 0:
        return
    with nogil:
        if ft == cnp.NPY_FLOAT:
            failed = _lp_linear(fn, <float *>xp, ldx, <float *>Wp, ldw, <float *>bp,
                                <float *>txp, ldtx, <float *>tWp, ldtw, <float *>tbp, n, d, td,
                                V, &j, <float *>bufp, <float *>tbufp, r, <float *>gx,
                                <float *>gW, gb, num_threads)
        else:
            failed = _lp_linear(fn, <double *>xp, ldx, <double *>Wp, ldw, <double *>bp,
                                <double *>txp, ldtx, <double *>tWp, ldtw, <double *>tbp, n, d,
                                td, V, &j, <double *>bufp, <double *>tbufp, r, <double *>gx,
                                <double *>gW, gb, num_threads)
    _raise_failed(failed)
