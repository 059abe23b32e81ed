# Declarations of the C headers the kernels use (cimported by _kernels.pyx,
# whose .pxd this is): the options and the per-row finisher (_options.h),
# the thread governor (_governor.h), the serial-or-parallel driver
# (_driver.h) and the vectorised row primitives and
# few-class kernels (_rowops.h).
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport uint16_t


cdef extern from "_options.h" nogil:
    ctypedef struct fx_options:
        double label_smoothing
        double z_loss
        double softcap
        double grad_denom
        double label_mass
        double uniform_mass
        double unit_scale
    ctypedef struct fx_row:
        double loss
        double softmax_weight
        double lse
    fx_options fx_options_for(double label_smoothing, double z_loss, double softcap,
                              double grad_denom, Py_ssize_t m)
    double fx_label_mass(const fx_options *o, double w_label)
    double fx_grad_scale(const fx_options *o, double s)
    fx_row fx_finish_row(const fx_options *o, double s, double b, double mx, double log_s,
                         double Q, double dot)

cdef extern from "_governor.h" nogil:
    enum:
        FX_TEAM_MAX
    double fx_wtime()
    int fx_gov_serial()
    void fx_gov_report(double t0, const double *busy, Py_ssize_t T)
    void fx_gov_reset()
    Py_ssize_t fx_span_start(Py_ssize_t c, Py_ssize_t T, Py_ssize_t n)
    long long fx_gov_waits
    long long fx_gov_backoff_ns
    long long fx_gov_serial_until_ns

cdef extern from "_driver.h" nogil:
    enum:
        FX_OUT_OF_MEMORY
        FX_LABEL_RACED
    ctypedef int (*fx_span_fn)(void *job, ptrdiff_t lo, ptrdiff_t hi, void *scratch) noexcept nogil
    int fx_run_spans(fx_span_fn fn, void *job, ptrdiff_t n, size_t scratch_bytes,
                     void *own_scratch, int threads)

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
                                 const float *y, const float *w, const fx_options *o)
    int fx_masked_without_mass_d(const double *z, Py_ssize_t m, Py_ssize_t label,
                                 const double *y, const double *w, const fx_options *o)
    double fx_softmax_coef_f(double b, Py_ssize_t m, Py_ssize_t label, const float *y,
                             const float *w, const fx_options *o, double lse, double S)
    double fx_softmax_coef_d(double b, Py_ssize_t m, Py_ssize_t label, const double *y,
                             const double *w, const fx_options *o, double lse, double S)
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
    int fx_tile_kernel_f(const float *z, Py_ssize_t R, Py_ssize_t m, const void *labels,
                         int labels_64bit, long long ignore_index, const float *w,
                         const double *sw, const fx_options *o, double *loss_out, float *g,
                         float *h)
    int fx_tile_kernel_d(const double *z, Py_ssize_t R, Py_ssize_t m, const void *labels,
                         int labels_64bit, long long ignore_index, const double *w,
                         const double *sw, const fx_options *o, double *loss_out, double *g,
                         double *h)
    int fx_two_class_kernel_f(const float *z, Py_ssize_t R, const void *labels,
                              int labels_64bit, long long ignore_index, const float *w,
                              const double *sw, const fx_options *o, double *loss_out,
                              float *g, float *h)
    int fx_two_class_kernel_d(const double *z, Py_ssize_t R, const void *labels,
                              int labels_64bit, long long ignore_index, const double *w,
                              const double *sw, const fx_options *o, double *loss_out,
                              double *g, double *h)

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
