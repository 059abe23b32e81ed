# Part of fastxent/_kernels.pyx (included there): the half-precision drivers.

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
    const uint16_t *target_half, const float *w, const double *sw, const fx_options *opt,
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


cdef struct HalfLossJob:
    # The arguments of _half_loss_rows, for its span function.
    const uint16_t *z
    bint bf16
    Py_ssize_t n, m, block_rows
    const void *labels
    bint labels64
    int64_t ignore_index
    const float *target
    const uint16_t *target_half
    const float *w
    const double *sw
    const fx_options *opt
    double *loss_out
    uint16_t *grad
    uint16_t *hess


cdef inline int _half_loss_span_t(const HalfLossJob *j, const label_t *labels, ptrdiff_t lo,
                                  ptrdiff_t hi, float *buf) noexcept nogil:
    cdef Py_ssize_t blk
    cdef int failed = 0
    for blk in range(lo, hi):
        failed |= _half_loss_block(blk, j.block_rows, buf, j.z, j.bf16, j.n, j.m, labels,
                                   j.ignore_index, j.target, j.target_half, j.w, j.sw, j.opt,
                                   j.loss_out, j.grad, j.hess)
        if failed & FX_OUT_OF_MEMORY:
            break
    return failed


cdef int _half_loss_span(void *job, ptrdiff_t lo, ptrdiff_t hi, void *scratch) noexcept nogil:
    """Blocks of rows [lo, hi) of the job."""
    cdef const HalfLossJob *j = <const HalfLossJob *>job
    if j.labels64:
        return _half_loss_span_t(j, <const int64_t *>j.labels, lo, hi, <float *>scratch)
    return _half_loss_span_t(j, <const int32_t *>j.labels, lo, hi, <float *>scratch)


cdef int _half_loss_rows(
    const uint16_t *z, bint bf16, Py_ssize_t n, Py_ssize_t m, const label_t *labels,
    int64_t ignore_index, const float *target, const uint16_t *target_half,
    const float *w, const double *sw, const fx_options *opt, double *loss_out,
    uint16_t *grad, uint16_t *hess, int num_threads,
) noexcept nogil:
    """_loss_rows for half-precision logits (and outputs; probabilities in
    float32 ``target`` or in the logits' format ``target_half``).  Returns
    _loss_rows' codes (FX_OUT_OF_MEMORY also when a thread could not
    allocate its buffers)."""
    cdef bint tile = choose_kernel(labels != NULL, m, opt, True) != KERNEL_ROW
    cdef Py_ssize_t B = _half_block_rows(m, tile)
    # Per thread: a block of logits/gradient, of the Hessian and of half
    # targets, and a soft-cap row.
    cdef Py_ssize_t size = B * m * (1 + (hess != NULL) + (target_half != NULL)) + m
    cdef HalfLossJob job
    job.z = z
    job.bf16 = bf16
    job.n = n
    job.m = m
    job.block_rows = B
    job.labels = labels
    job.labels64 = label_t is int64_t
    job.ignore_index = ignore_index
    job.target = target
    job.target_half = target_half
    job.w = w
    job.sw = sw
    job.opt = opt
    job.loss_out = loss_out
    job.grad = grad
    job.hess = hess
    return fx_run_spans(_half_loss_span, &job, (n + B - 1) // B, size * sizeof(float), NULL,
                        _threads_for(n, m, num_threads))


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
