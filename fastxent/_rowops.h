/*
 * Vectorised row primitives for fastxent (declarations).
 *
 * Every function works on one contiguous row (or a slice of one) of n
 * elements and touches nothing else, so callers can apply them to any block
 * of rows with their own output pointers.  Sums are returned in double
 * whatever the element type, which keeps float32 rows of hundreds of
 * thousands of classes accurate.
 *
 * The bodies live in _rowops.c (and _rowops_t.h, instantiated for float and
 * double); they are compiled with `#pragma omp simd` and, where the
 * compiler supports it, with run-time dispatched AVX-512/AVX2 clones.
 */
#ifndef FASTXENT_ROWOPS_H
#define FASTXENT_ROWOPS_H

#include <stddef.h>
#include <stdint.h>

#include "_options.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Vectorisable exponentials, exposed for testing.  Accurate on the whole
 * range where the result is a normal number; exactly 0 below it (and for
 * -inf), +inf above it, NaN for NaN. */
float fx_expf(float x);
double fx_exp(double x);
float fx_tanhf(float x);
double fx_log(double x);
/* The two-class kernel's log1p(t) and 1 / (1 + t) for t in [0, 1] (tests). */
void fx_log1p_recip_unit_array(const double *t, ptrdiff_t n, double *log1p_out,
                               double *recip_out);
double fx_tanh(double x);

/* Array versions of the above (out may alias x); used by tests. */
void fx_exp_array_f(const float *x, ptrdiff_t n, float *out);
void fx_exp_array_d(const double *x, ptrdiff_t n, double *out);
/* The exp the kernels use (arguments <= 0, or NaN): results below the
 * smallest normal number are flushed to 0. */
void fx_expneg_array_f(const float *x, ptrdiff_t n, float *out);
void fx_expneg_array_d(const double *x, ptrdiff_t n, double *out);
void fx_tanh_array_f(const float *x, ptrdiff_t n, float *out);
void fx_tanh_array_d(const double *x, ptrdiff_t n, double *out);

/* max_k z[k] (-inf for n == 0). */
float fx_max_f(const float *z, ptrdiff_t n);
double fx_max_d(const double *z, ptrdiff_t n);

/* out[k] = c * tanh(z[k] / c); returns max_k out[k].  out may alias z. */
float fx_softcap_max_f(const float *z, ptrdiff_t n, float c, float *out);
double fx_softcap_max_d(const double *z, ptrdiff_t n, double c, double *out);

/* sum_k exp(z[k] - shift) for a shift >= max_k z[k] (the row max), summed
 * in double over blocks.  When out is not NULL it also receives
 * exp(z[k] - shift); out may alias z.  When tdot is not NULL the same pass
 * forms the target terms of the loss: with q[k] = w[k] * (alpha * y[k] + beta)
 * (w == NULL means w[k] = 1, y == NULL means the bracket is beta),
 * tdot[0] = sum_k q[k] * (z[k] - shift), skipping terms with q[k] == 0 (so a
 * masked -inf logit with no target mass adds nothing), and
 * tdot[1] = sum_k q[k].  When rest is not NULL (and shift is the row max,
 * attained), *rest receives the sum without one term at the max, accurate
 * even when it is far below 1 (for log1p: the sum itself would round
 * 1 + 4e-18 to 1). */
double fx_expsum_f(const float *z, ptrdiff_t n, float shift, float *out,
                   const float *w, const float *y, float alpha, float beta,
                   double *tdot, double *rest);
double fx_expsum_d(const double *z, ptrdiff_t n, double shift, double *out,
                   const double *w, const double *y, double alpha, double beta,
                   double *tdot, double *rest);

/* The gradient pass, in place on g (which holds exp(z - shift)):
 *   g[k] = (a * g[k] - b * q[k]) * f[k]
 * with q[k] as in fx_expsum and f[k] = 1 - (zc[k] * inv_c)^2 when zc
 * is not NULL (the derivative of the soft-cap c*tanh(z/c), given the capped
 * logits zc), else 1. */
void fx_grad_pass_f(float *g, ptrdiff_t n, float a, float b, const float *w,
                    const float *y, float alpha, float beta, const float *zc,
                    float inv_c);
void fx_grad_pass_d(double *g, ptrdiff_t n, double a, double b,
                    const double *w, const double *y, double alpha,
                    double beta, const double *zc, double inv_c);

/* out[k] = (z[k] - shift1) - shift2 (out may alias z).  Subtracting the
 * row max first is exact near the max, so log-softmax keeps full accuracy
 * for the likely classes. */
void fx_sub2_f(const float *z, ptrdiff_t n, float shift1, float shift2,
               float *out);
void fx_sub2_d(const double *z, ptrdiff_t n, double shift1, double shift2,
               double *out);

/* h[k] = c * p * (1 - p) with p = e[k] * inv_s: the diagonal of the
 * softmax cross-entropy Hessian (c = b Q) from the row's exp(z - max). */
void fx_hess_pass_f(const float *e, ptrdiff_t n, float inv_s, float c, float *h);
void fx_hess_pass_d(const double *e, ptrdiff_t n, double inv_s, double c, double *h);

/* g[k] *= a. */
void fx_scale_f(float *g, ptrdiff_t n, float a);
void fx_scale_d(double *g, ptrdiff_t n, double a);

/* 1 if every z[k] is -inf and every target mass q[k] is 0 (_options.h),
 * else 0: class indices for label >= 0, probabilities y for label < 0.  w
 * may be NULL (all 1). */
int fx_masked_without_mass_f(const float *z, ptrdiff_t m, ptrdiff_t label,
                             const float *y, const float *w, const fx_options *o);
int fx_masked_without_mass_d(const double *z, ptrdiff_t m, ptrdiff_t label,
                             const double *y, const double *w, const fx_options *o);

/* (sum_k b q[k] + 2 zloss lse b) / S with b multiplied into each term:
 * the gradient's softmax coefficient for a row whose b = s / denominator is
 * not finite, so that its inf/NaN pattern is PyTorch's. */
double fx_softmax_coef_f(double b, ptrdiff_t m, ptrdiff_t label, const float *y,
                         const float *w, const fx_options *o, double lse, double S);
double fx_softmax_coef_d(double b, ptrdiff_t m, ptrdiff_t label, const double *y,
                         const double *w, const fx_options *o, double lse, double S);

/* Rows per block of the small-m kernel, and the largest m it takes. */
#define FX_TILE_ROWS 64
#define FX_SMALL_M_MAX 128

/* The tile kernel: fused loss (+ gradient) for R <= FX_TILE_ROWS rows of m <= FX_SMALL_M_MAX
 * classes with class-index targets.  The block is transposed into a tile
 * so that every step (max, exp, sums, log, loss, gradient) is vectorised
 * across rows instead of along a short row.  labels points at R int32 or
 * int64 labels (labels_64bit), already range-checked; rows whose label is
 * ignore_index get loss 0 and a zero gradient.  w (class weights) and sw
 * (sample weights) may be NULL.  Writes R losses (sample-weighted, before
 * any reduction) and, if g is not NULL, the R x m gradient divided by
 * grad_denom, and if h is not NULL (with g, no z-loss) the Hessian
 * diagonal likewise.  Same per-row formula as the general row kernel, no
 * soft-cap.  Returns the number of rows whose label was outside [0, m)
 * when read here (only a data race makes one): their loss and gradient
 * are NaN, never an out-of-bounds access. */
int fx_tile_kernel_f(const float *z, ptrdiff_t R, ptrdiff_t m, const void *labels,
                     int labels_64bit, long long ignore_index, const float *w,
                     const double *sw, const fx_options *o, double *loss_out, float *g,
                     float *h);
int fx_tile_kernel_d(const double *z, ptrdiff_t R, ptrdiff_t m, const void *labels,
                     int labels_64bit, long long ignore_index, const double *w,
                     const double *sw, const fx_options *o, double *loss_out, double *g,
                     double *h);

/* Half precision: dst[k] = src[k] widened to float32 (exact), or narrowed
 * from float32 rounding to nearest even (overflow to infinity, NaN stays a
 * quiet NaN); bf16 selects bfloat16, else IEEE float16.  The 16-bit values
 * are passed as their bits. */
void fx_half_to_float(const uint16_t *src, ptrdiff_t n, float *dst, int bf16);
void fx_float_to_half(const float *src, ptrdiff_t n, uint16_t *dst, int bf16);

/* fx_tile_kernel for m = 2, one exp and one log1p a row, on the
 * interleaved logits (same arguments without m). */
int fx_two_class_kernel_f(const float *z, ptrdiff_t R, const void *labels, int labels_64bit,
                          long long ignore_index, const float *w, const double *sw,
                          const fx_options *o, double *loss_out, float *g, float *h);
int fx_two_class_kernel_d(const double *z, ptrdiff_t R, const void *labels, int labels_64bit,
                          long long ignore_index, const double *w, const double *sw,
                          const fx_options *o, double *loss_out, double *g, double *h);

/* How many of the n labels (int64 if labels_64bit, else int32) equal
 * ignore_index; *out_of_range: how many others lie outside [0, m). */
ptrdiff_t fx_count_labels(const void *labels, int labels_64bit, ptrdiff_t n, ptrdiff_t m,
                          long long ignore_index, ptrdiff_t *out_of_range);

/* Sum of n doubles by pairwise summation, in a fixed order. */
double fx_pairwise_sum(const double *x, ptrdiff_t n);

/* Build facts for show_config(). */
const char *fx_simd_dispatch(void);

#ifdef __cplusplus
}
#endif

#endif /* FASTXENT_ROWOPS_H */
