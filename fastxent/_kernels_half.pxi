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


cdef int _half_loss_rows(
    const uint16_t *z, bint bf16, Py_ssize_t n, Py_ssize_t m, const label_t *labels,
    int64_t ignore_index, const float *target, const uint16_t *target_half,
    const float *w, const double *sw, const fx_options *opt, double *loss_out,
    uint16_t *grad, uint16_t *hess, int num_threads,
) noexcept nogil:
    """_loss_rows for half-precision logits (and outputs; probabilities in
    float32 ``target`` or in the logits' format ``target_half``).  Returns
    _loss_rows' codes (OUT_OF_MEMORY also when a thread could not allocate
    its buffers)."""
    cdef bint tile = choose_kernel(labels != NULL, m, opt, True) != KERNEL_ROW
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
            lo = fx_span_start(c, num_threads, nb)
            hi = fx_span_start(c + 1, num_threads, nb)
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
            lo = fx_span_start(c, num_threads, nb)
            hi = fx_span_start(c + 1, num_threads, nb)
            if buf != NULL:
                for blk in range(lo, hi):
                    _half_softmax_block(blk, B, buf, z, bf16, n, m, out, take_log, lse)
            busy_p[c] = fx_wtime() - tc
        free(buf)
    fx_gov_report(t0, busy, num_threads)
    return failed
