# Part of fastxent/_kernels.pyx (included there): the fused linear +
# cross-entropy chunk loop and its entry point.

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
# split into tiles on our threads could not, and were slower); the
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
    const fx_options *opt, double *loss_out, floating *buf, Py_ssize_t r,
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
    *, int64_t ignore_index, double label_smoothing, double z_loss, double softcap,
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
    cdef fx_options opt
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
    opt = fx_options_for(label_smoothing, z_loss, softcap, grad_denom, V)
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
