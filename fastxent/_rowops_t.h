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

#ifndef FX_TAIL
#define FX_TAIL 16 /* a multiple of every vector length used (AVX-512 float) */
#endif

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

/* The last n % FX_TAIL elements of a row go through the same vector loop on
 * a padded copy: GCC's own epilogue is scalar, and 15 scalar exps cost more
 * than the rest of a row of 100 classes.  Padding is chosen to be neutral
 * (-inf for max and exp, zero target mass). */
FX_INLINE void FX_NAME(pad_copy)(FX_T *dst, const FX_T *src, ptrdiff_t r, FX_T pad)
{
    for (ptrdiff_t k = 0; k < FX_TAIL; ++k)
        dst[k] = k < r ? src[k] : pad;
}

FX_INLINE FX_T FX_NAME(max_body)(const FX_T *z, ptrdiff_t n)
{
    FX_T mx = -(FX_T)INFINITY;
#pragma omp simd reduction(max : mx)
    for (ptrdiff_t k = 0; k < n; ++k)
        mx = z[k] > mx ? z[k] : mx;
    return mx;
}

FX_CLONES FX_T FX_NAME(fx_max)(const FX_T *z, ptrdiff_t n)
{
    ptrdiff_t nm = n - n % FX_TAIL;
    FX_T mx = FX_NAME(max_body)(z, nm);
    if (nm < n) {
        FX_T zb[FX_TAIL];
        FX_NAME(pad_copy)(zb, z + nm, n - nm, -(FX_T)INFINITY);
        FX_T t = FX_NAME(max_body)(zb, FX_TAIL);
        mx = t > mx ? t : mx;
    }
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

/* Partial sums over blocks of FX_SUM_BLOCK elements are formed in the
 * element type (16 lanes x 16 terms each for float: relative error below
 * 1e-6 even in the worst case) and added in double, so float32 rows of any
 * length stay accurate without converting every term, and the vector
 * reduction does not wait on one double accumulator. */
#ifndef FX_SUM_BLOCK
#define FX_SUM_BLOCK 256
#endif

FX_INLINE double FX_NAME(expsum_body)(const FX_T *z, ptrdiff_t n, FX_T shift,
                                      FX_T *out, const FX_T *w, const FX_T *y,
                                      FX_T alpha, FX_T beta, double *tdot)
{
    double acc = 0.0, dacc = 0.0, qacc = 0.0;
    for (ptrdiff_t k0 = 0; k0 < n; k0 += FX_SUM_BLOCK) {
        ptrdiff_t k1 = n - k0 < FX_SUM_BLOCK ? n : k0 + FX_SUM_BLOCK;
        FX_T part = 0;
        double dpart = 0.0, qpart = 0.0;
#pragma omp simd reduction(+ : part, dpart, qpart)
        for (ptrdiff_t k = k0; k < k1; ++k) {
            FX_T d = z[k] - shift; /* read before out[k] (maybe z[k]) is written */
            FX_T e = FX_EXPNEG(d);
            if (out)
                out[k] = e;
            part += e;
            if (tdot) {
                /* In double: a large weight times a large logit gap must
                 * not overflow float32 before the mean divides it down. */
                double q = (double)((w ? w[k] : (FX_T)1) *
                                    (y ? alpha * y[k] + beta : beta));
                dpart += q != 0.0 ? q * (double)d : 0.0;
                qpart += q;
            }
        }
        acc += (double)part;
        dacc += dpart;
        qacc += qpart;
    }
    if (tdot) {
        tdot[0] = dacc;
        tdot[1] = qacc;
    }
    return acc;
}

FX_INLINE double FX_NAME(expsum_dispatch)(const FX_T *z, ptrdiff_t n, FX_T shift,
                                          FX_T *out, const FX_T *w, const FX_T *y,
                                          FX_T alpha, FX_T beta, double *tdot)
{
#define FX_ES(OUT, W, Y, TD) FX_NAME(expsum_body)(z, n, shift, OUT, W, Y, alpha, beta, TD)
#define FX_ES_TARGETS(OUT)                          \
    if (!tdot)                                      \
        return FX_ES(OUT, NULL, NULL, NULL);        \
    if (w && y)                                     \
        return FX_ES(OUT, w, y, tdot);              \
    if (w)                                          \
        return FX_ES(OUT, w, NULL, tdot);           \
    if (y)                                          \
        return FX_ES(OUT, NULL, y, tdot);           \
    return FX_ES(OUT, NULL, NULL, tdot);
    if (out) {
        FX_ES_TARGETS(out)
    }
    FX_ES_TARGETS(NULL)
#undef FX_ES_TARGETS
#undef FX_ES
}

FX_CLONES double FX_NAME(fx_expsum)(const FX_T *z, ptrdiff_t n, FX_T shift,
                                    FX_T *out, const FX_T *w, const FX_T *y,
                                    FX_T alpha, FX_T beta, double *tdot)
{
    ptrdiff_t nm = n - n % FX_TAIL, r = n - nm;
    double s = FX_NAME(expsum_dispatch)(z, nm, shift, out, w, y, alpha, beta, tdot);
    if (r) {
        /* Padding: exp(-inf) = 0, and zero target mass (w = 0) so that the
         * padded -inf never meets a non-zero q. */
        FX_T zb[FX_TAIL], ob[FX_TAIL], wb[FX_TAIL], yb[FX_TAIL];
        double td[2];
        FX_NAME(pad_copy)(zb, z + nm, r, -(FX_T)INFINITY);
        for (ptrdiff_t k = 0; k < FX_TAIL; ++k)
            wb[k] = k < r ? (w ? w[nm + k] : (FX_T)1) : (FX_T)0;
        if (y)
            FX_NAME(pad_copy)(yb, y + nm, r, 0);
        s += FX_NAME(expsum_dispatch)(zb, FX_TAIL, shift, out ? ob : NULL, wb,
                                      y ? yb : NULL, alpha, beta, tdot ? td : NULL);
        if (out)
            for (ptrdiff_t k = 0; k < r; ++k)
                out[nm + k] = ob[k];
        if (tdot) {
            tdot[0] += td[0];
            tdot[1] += td[1];
        }
    }
    return s;
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

FX_INLINE void FX_NAME(grad_pass_dispatch)(FX_T *g, ptrdiff_t n, FX_T a, FX_T b,
                                           const FX_T *w, const FX_T *y,
                                           FX_T alpha, FX_T beta, const FX_T *zc,
                                           FX_T inv_c)
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

FX_CLONES void FX_NAME(fx_grad_pass)(FX_T *g, ptrdiff_t n, FX_T a, FX_T b,
                                     const FX_T *w, const FX_T *y, FX_T alpha,
                                     FX_T beta, const FX_T *zc, FX_T inv_c)
{
    ptrdiff_t nm = n - n % FX_TAIL, r = n - nm;
    FX_NAME(grad_pass_dispatch)(g, nm, a, b, w, y, alpha, beta, zc, inv_c);
    if (r) {
        FX_T gb[FX_TAIL], wb[FX_TAIL], yb[FX_TAIL], cb[FX_TAIL];
        FX_NAME(pad_copy)(gb, g + nm, r, 0);
        if (w)
            FX_NAME(pad_copy)(wb, w + nm, r, 0);
        if (y)
            FX_NAME(pad_copy)(yb, y + nm, r, 0);
        if (zc)
            FX_NAME(pad_copy)(cb, zc + nm, r, 0);
        FX_NAME(grad_pass_dispatch)(gb, FX_TAIL, a, b, w ? wb : NULL, y ? yb : NULL,
                                    alpha, beta, zc ? cb : NULL, inv_c);
        for (ptrdiff_t k = 0; k < r; ++k)
            g[nm + k] = gb[k];
    }
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

FX_CLONES void FX_NAME(fx_small_labels)(const FX_T *z, ptrdiff_t R, ptrdiff_t m,
                                        const void *labels, int labels_64bit,
                                        long long ignore_index, const FX_T *w,
                                        const double *sw, double smoothing,
                                        double zloss, double grad_denom,
                                        double *loss_out, FX_T *g)
{
    enum { TR = FX_TILE_ROWS };
    FX_T tile[FX_SMALL_M_MAX * TR]; /* column-major: tile[j * TR + r] */
    FX_T mx[TR], S[TR];
    double dot[TR], Q[TR], coef[TR], sr[TR], a[TR], b[TR];
    int32_t y[TR]; /* m <= FX_SMALL_M_MAX: 32-bit compares vectorise better */
    int32_t ign[TR];
    const double beta = smoothing / (double)m;
    double qs_total = 0.0;

    for (ptrdiff_t r = 0; r < R; ++r) {
        int64_t lab = labels_64bit ? ((const int64_t *)labels)[r]
                                   : (int64_t)((const int32_t *)labels)[r];
        int ig = lab == (int64_t)ignore_index;
        int64_t yy = ig ? 0 : lab;
        double s = sw ? sw[r] : 1.0;
        ign[r] = ig;
        y[r] = (int32_t)yy;
        sr[r] = ig ? 0.0 : s;
        coef[r] = (1.0 - smoothing) * (w ? (double)w[yy] : 1.0);
        mx[r] = -(FX_T)INFINITY;
    }

    /* Transpose in, with the row max. */
    for (ptrdiff_t j = 0; j < m; ++j) {
#pragma omp simd
        for (ptrdiff_t r = 0; r < R; ++r) {
            FX_T v = z[r * m + j];
            tile[j * TR + r] = v;
            mx[r] = v > mx[r] ? v : mx[r];
        }
    }

    /* Target terms, relative to the max (zero-mass terms skipped). */
    for (ptrdiff_t r = 0; r < R; ++r) {
        double zy = (double)z[r * m + y[r]] - (double)mx[r];
        dot[r] = coef[r] != 0.0 ? coef[r] * zy : 0.0;
        Q[r] = coef[r];
    }
    if (smoothing > 0.0) {
        for (ptrdiff_t j = 0; j < m; ++j) {
            double q = beta * (w ? (double)w[j] : 1.0);
            qs_total += q;
            if (q == 0.0)
                continue;
#pragma omp simd
            for (ptrdiff_t r = 0; r < R; ++r)
                dot[r] += q * ((double)tile[j * TR + r] - (double)mx[r]);
        }
    }

    /* exp(z - max) in place, and the row sums: at most FX_SMALL_M_MAX terms
     * in [0, 1], one of them 1, so the element type is accurate enough. */
    for (ptrdiff_t r = 0; r < R; ++r)
        S[r] = 0;
    for (ptrdiff_t j = 0; j < m; ++j) {
#pragma omp simd
        for (ptrdiff_t r = 0; r < R; ++r) {
            FX_T e = FX_EXPNEG(tile[j * TR + r] - mx[r]);
            tile[j * TR + r] = e;
            S[r] += e;
        }
    }

#pragma omp simd
    for (ptrdiff_t r = 0; r < R; ++r) {
        double q = Q[r] + qs_total;
        double log_s = log_inl((double)S[r]);
        double lse = (double)mx[r] + log_s;
        double loss = q * log_s - dot[r];
        loss = zloss != 0.0 ? loss + zloss * lse * lse : loss;
        loss_out[r] = ign[r] ? 0.0 : sr[r] * loss;
        b[r] = sr[r] / grad_denom;
        a[r] = b[r] * (q + 2.0 * zloss * lse) / (double)S[r];
    }
    if (!g)
        return;

    for (ptrdiff_t j = 0; j < m; ++j) {
        FX_T qj = (FX_T)(beta * (w ? (double)w[j] : 1.0));
#pragma omp simd
        for (ptrdiff_t r = 0; r < R; ++r) {
            FX_T q = qj + (y[r] == (int32_t)j ? (FX_T)coef[r] : (FX_T)0);
            FX_T v = (FX_T)a[r] * tile[j * TR + r] - (FX_T)b[r] * q;
            tile[j * TR + r] = ign[r] ? (FX_T)0 : v;
        }
    }
    /* Transpose out: contiguous writes of each gradient row. */
    for (ptrdiff_t r = 0; r < R; ++r) {
        FX_T *gr = g + r * m;
        for (ptrdiff_t j = 0; j < m; ++j)
            gr[j] = tile[j * TR + r];
    }
}
