# Part of fastxent/_kernels.pyx (included there): test hooks, the kernels
# and their primitives reached directly.

cdef double _unchecked_rows(const floating *z, const int64_t *labels, const Arrays *a,
                            int64_t ignore_index, int num_threads) except? -1:
    cdef fx_options opt = fx_options_for(0.0, 0.0, 0.0, 1.0, a.m)
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


_KERNEL_NAMES = {"auto": KERNEL_AUTO, "row": KERNEL_ROW, "tile": KERNEL_TILE,
                 "two_class": KERNEL_TWO_CLASS}


def force_kernel(str name):
    """Make every loss job that the kernel ``name`` ("row", "tile",
    "two_class") can take run on it; "auto" restores the normal choice.
    Process-wide, for tests.  Returns the previous setting's name."""
    global forced_kernel
    if name not in _KERNEL_NAMES:
        raise ValueError(f"fastxent._kernels: kernel must be one of {sorted(_KERNEL_NAMES)}")
    previous = [k for k, v in _KERNEL_NAMES.items() if v == forced_kernel][0]
    forced_kernel = _KERNEL_NAMES[name]
    return previous


def kernel_for(bint labels, Py_ssize_t m, double softcap, str dtype):
    """The kernel a loss job of ``m`` classes would run on now ("row", "tile"
    or "two_class"): class indices if ``labels``, ``dtype`` "float32" (also
    half precision) or "float64"."""
    cdef fx_options opt = fx_options_for(0.0, 0.0, softcap, 1.0, m)
    cdef int k = choose_kernel(labels, m, &opt, dtype != "float64")
    return [n for n, v in _KERNEL_NAMES.items() if v == k][0]


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
