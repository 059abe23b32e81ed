/*
 * Element-type-generic row loops, included by _rowops.c once per element
 * type with FX_T (float or double), FX_NAME(base) (adds _f or _d), FX_EXP
 * and FX_TANH defined.  Not a public header.
 *
 * Optional operands (class weights w, targets y, capped logits zc) are
 * NULL when absent.  Each exported function dispatches on which are
 * present to an always-inline body called with literal NULLs, so every
 * combination compiles to its own tight loop without a test per element.
 */

FX_INLINE void FX_NAME(exp_array_body)(const FX_T *x, ptrdiff_t n, FX_T *out)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k)
        out[k] = FX_EXP(x[k]);
}

FX_CLONES void FX_NAME(fx_exp_array)(const FX_T *x, ptrdiff_t n, FX_T *out)
{
    FX_NAME(exp_array_body)(x, n, out);
}

FX_CLONES void FX_NAME(fx_tanh_array)(const FX_T *x, ptrdiff_t n, FX_T *out)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k)
        out[k] = FX_TANH(x[k]);
}

FX_CLONES FX_T FX_NAME(fx_max)(const FX_T *z, ptrdiff_t n)
{
    FX_T mx = -(FX_T)INFINITY;
#pragma omp simd reduction(max : mx)
    for (ptrdiff_t k = 0; k < n; ++k)
        mx = z[k] > mx ? z[k] : mx;
    return mx;
}

FX_CLONES FX_T FX_NAME(fx_softcap_max)(const FX_T *z, ptrdiff_t n, FX_T c,
                                       FX_T *out)
{
    FX_T mx = -(FX_T)INFINITY;
#pragma omp simd reduction(max : mx)
    for (ptrdiff_t k = 0; k < n; ++k) {
        FX_T v = c * FX_TANH(z[k] / c);
        out[k] = v;
        mx = v > mx ? v : mx;
    }
    return mx;
}

FX_INLINE double FX_NAME(expsum_body)(const FX_T *z, ptrdiff_t n, FX_T shift,
                                      FX_T *out)
{
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (ptrdiff_t k = 0; k < n; ++k) {
        FX_T e = FX_EXP(z[k] - shift);
        if (out)
            out[k] = e;
        acc += (double)e;
    }
    return acc;
}

FX_CLONES double FX_NAME(fx_expsum)(const FX_T *z, ptrdiff_t n, FX_T shift,
                                    FX_T *out)
{
    if (out)
        return FX_NAME(expsum_body)(z, n, shift, out);
    return FX_NAME(expsum_body)(z, n, shift, NULL);
}

FX_INLINE double FX_NAME(target_dot_body)(const FX_T *z, ptrdiff_t n,
                                          FX_T shift, const FX_T *w,
                                          const FX_T *y, FX_T alpha, FX_T beta,
                                          double *qsum)
{
    double acc = 0.0, qacc = 0.0, dshift = (double)shift;
#pragma omp simd reduction(+ : acc, qacc)
    for (ptrdiff_t k = 0; k < n; ++k) {
        FX_T q = (w ? w[k] : (FX_T)1) * (y ? alpha * y[k] + beta : beta);
        double t = (double)q * ((double)z[k] - dshift);
        acc += q != 0 ? t : 0.0;
        qacc += (double)q;
    }
    *qsum = qacc;
    return acc;
}

FX_CLONES double FX_NAME(fx_target_dot)(const FX_T *z, ptrdiff_t n,
                                        FX_T shift, const FX_T *w,
                                        const FX_T *y, FX_T alpha, FX_T beta,
                                        double *qsum)
{
#define FX_TD(W, Y) FX_NAME(target_dot_body)(z, n, shift, W, Y, alpha, beta, qsum)
    if (w && y)
        return FX_TD(w, y);
    if (w)
        return FX_TD(w, NULL);
    if (y)
        return FX_TD(NULL, y);
    return FX_TD(NULL, NULL);
#undef FX_TD
}

FX_INLINE void FX_NAME(grad_pass_body)(FX_T *g, ptrdiff_t n, FX_T a, FX_T b,
                                       const FX_T *w, const FX_T *y,
                                       FX_T alpha, FX_T beta, const FX_T *zc,
                                       FX_T inv_c)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k) {
        FX_T q = (w ? w[k] : (FX_T)1) * (y ? alpha * y[k] + beta : beta);
        FX_T v = a * g[k] - b * q;
        if (zc) {
            FX_T t = zc[k] * inv_c;
            v = v * ((FX_T)1 - t * t);
        }
        g[k] = v;
    }
}

FX_CLONES void FX_NAME(fx_grad_pass)(FX_T *g, ptrdiff_t n, FX_T a, FX_T b,
                                     const FX_T *w, const FX_T *y, FX_T alpha,
                                     FX_T beta, const FX_T *zc, FX_T inv_c)
{
#define FX_GP(W, Y, ZC) FX_NAME(grad_pass_body)(g, n, a, b, W, Y, alpha, beta, ZC, inv_c)
    if (zc) {
        if (w && y) FX_GP(w, y, zc);
        else if (w) FX_GP(w, NULL, zc);
        else if (y) FX_GP(NULL, y, zc);
        else FX_GP(NULL, NULL, zc);
    } else {
        if (w && y) FX_GP(w, y, NULL);
        else if (w) FX_GP(w, NULL, NULL);
        else if (y) FX_GP(NULL, y, NULL);
        else FX_GP(NULL, NULL, NULL);
    }
#undef FX_GP
}

FX_CLONES void FX_NAME(fx_sub2)(const FX_T *z, ptrdiff_t n, FX_T shift1,
                                FX_T shift2, FX_T *out)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k)
        out[k] = (z[k] - shift1) - shift2;
}

FX_CLONES void FX_NAME(fx_scale)(FX_T *g, ptrdiff_t n, FX_T a)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k)
        g[k] *= a;
}
