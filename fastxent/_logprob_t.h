/*
 * Element-type-generic row loops of the log-probability, entropy and
 * distillation kernels, included by _rowops.c once per element type after
 * _rowops_t.h (same macros: FX_T, FX_NAME, FX_EXPNEG; FX_TAIL lanes and
 * FX_SUM_BLOCK blocks from there).  Not a public header.
 *
 * All of them work on a row of tempered logits u = z / T through
 * d_k = (z_k - shift) * inv_t, the tempered gap to the row max: exactly
 * z_k - shift when T = 1.  Terms whose exponential is 0 (a masked -inf
 * logit, or one far below the max) are skipped wherever they would
 * multiply d_k, so that 0 * -inf never makes a NaN.  What the sums become
 * (log-probabilities, entropy, divergences, gradient coefficients) is
 * _options.h's (the fx_finish_* functions); these loops only reduce rows.
 */

/* Below this the kernels' exponential is 0 (FX_EXPNEG flushes there). */
#define FX_LP_EXP_LO (sizeof(FX_T) == 4 ? (FX_T)-87.3365448f : (FX_T)-708.3964185322641)

/* S = sum_k e_k with e_k = exp(d_k), summed like fx_expsum (lanes of the
 * element type per block, blocks in double).  Optionally: out[k] = e_k
 * (out may alias z: each z_k is read before out_k is written), edot =
 * sum_k e_k d_k, and, with a second row z2 (shift2), xdot = sum_k e_k d2_k
 * with d2_k = (z2_k - shift2) * inv_t. */
FX_INLINE double FX_NAME(lp_expsum_body)(const FX_T *z, ptrdiff_t n, FX_T shift, FX_T inv_t,
                                         FX_T *out, double *edot, const FX_T *z2, FX_T shift2,
                                         double *xdot, const int has_out, const int has_e,
                                         const int has_x)
{
    /* has_out, has_e, has_x: literal constants from the dispatch below, so
     * that each combination is a branch-free loop (a test of a pointer
     * inside the loop keeps GCC from vectorising the reductions) */
    double acc = 0.0, eacc = 0.0, xacc = 0.0;
    ptrdiff_t nm = n - n % FX_TAIL;
    for (ptrdiff_t k0 = 0; k0 < nm; k0 += FX_SUM_BLOCK) {
        ptrdiff_t k1 = nm - k0 < FX_SUM_BLOCK ? nm : k0 + FX_SUM_BLOCK;
        FX_T part[FX_TAIL], epart[FX_TAIL], xpart[FX_TAIL];
        for (int j = 0; j < FX_TAIL; ++j)
            part[j] = epart[j] = xpart[j] = 0;
        for (ptrdiff_t k = k0; k < k1; k += FX_TAIL) {
#pragma omp simd
            for (int j = 0; j < FX_TAIL; ++j) {
                FX_T d = (z[k + j] - shift) * inv_t;
                FX_T d2 = has_x ? (z2[k + j] - shift2) * inv_t : (FX_T)0;
                FX_T e = FX_EXPNEG(d);
                if (has_out)
                    out[k + j] = e;
                part[j] += e;
                /* e d with d clamped where the exponential flushes to 0
                 * (the clamp it makes itself): 0 for a masked class, where
                 * 0 * -inf would be NaN, without a select.  The cross term
                 * is NaN only as 0 * -inf (dropped) or for a NaN logit,
                 * which makes that row's own sum NaN anyway; testing the
                 * product, not e != 0, keeps GCC from threading the test
                 * into the exponential's select (a branch that stopped
                 * the loop from vectorising). */
                FX_T dc = d < FX_LP_EXP_LO ? FX_LP_EXP_LO : d;
                FX_T ed2 = e * d2;
                if (has_e)
                    epart[j] += e * dc;
                if (has_x)
                    xpart[j] += ed2 == ed2 ? ed2 : (FX_T)0;
            }
        }
        acc += FX_NAME(fold_lanes)(part);
        if (has_e)
            eacc += FX_NAME(fold_lanes)(epart);
        if (has_x)
            xacc += FX_NAME(fold_lanes)(xpart);
    }
    /* the last n % FX_TAIL elements, in order */
    for (ptrdiff_t k = nm; k < n; ++k) {
        FX_T d = (z[k] - shift) * inv_t;
        FX_T d2 = has_x ? (z2[k] - shift2) * inv_t : (FX_T)0;
        FX_T e = FX_EXPNEG(d);
        if (has_out)
            out[k] = e;
        acc += (double)e;
        if (has_e && e != (FX_T)0)
            eacc += (double)(e * d);
        if (has_x && e != (FX_T)0)
            xacc += (double)(e * d2);
    }
    if (has_e)
        *edot = eacc;
    if (has_x)
        *xdot = xacc;
    return acc;
}

FX_CLONES double FX_NAME(fx_lp_expsum)(const FX_T *z, ptrdiff_t n, FX_T shift, FX_T inv_t,
                                       FX_T *out, double *edot, const FX_T *z2, FX_T shift2,
                                       double *xdot)
{
#define FX_LE(HO, HE, HX) \
    FX_NAME(lp_expsum_body)(z, n, shift, inv_t, out, edot, z2, shift2, xdot, HO, HE, HX)
    int ho = out != NULL, he = edot != NULL;
    if (z2 && xdot) {
        if (ho)
            return he ? FX_LE(1, 1, 1) : FX_LE(1, 0, 1);
        return he ? FX_LE(0, 1, 1) : FX_LE(0, 0, 1);
    }
    if (ho)
        return he ? FX_LE(1, 1, 0) : FX_LE(1, 0, 0);
    return he ? FX_LE(0, 1, 0) : FX_LE(0, 0, 0);
#undef FX_LE
}

/* The gradient pass, in place on g (which holds e_k):
 *   g_k = (a e_k) (c + c1 d1_k + c2 d2_k) cap'_k
 * with d1_k, d2_k the tempered gaps of rows z1 (shift sh1) and z2 (shift
 * sh2), each term present only when its row is not NULL, and cap'_k =
 * 1 - (zc_k inv_c)^2 when zc is not NULL.  With z1 or z2, a term whose e_k
 * is 0 is 0 (its d may be -inf). */
FX_INLINE void FX_NAME(lp_grad_body)(FX_T *g, ptrdiff_t n, FX_T a, FX_T c, FX_T c1,
                                     const FX_T *z1, FX_T sh1, FX_T c2, const FX_T *z2,
                                     FX_T sh2, FX_T inv_t, const FX_T *zc, FX_T inv_c)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k) {
        FX_T e = g[k];
        FX_T v = c;
        if (z1)
            v += c1 * ((z1[k] - sh1) * inv_t);
        if (z2)
            v += c2 * ((z2[k] - sh2) * inv_t);
        FX_T r = (a * e) * v;
        if (z1 || z2)
            r = e != (FX_T)0 ? r : (FX_T)0;
        if (zc) {
            FX_T t = zc[k] * inv_c;
            r = r * ((FX_T)1 - t * t);
        }
        g[k] = r;
    }
}

FX_CLONES void FX_NAME(fx_lp_grad_pass)(FX_T *g, ptrdiff_t n, FX_T a, FX_T c, FX_T c1,
                                        const FX_T *z1, FX_T sh1, FX_T c2, const FX_T *z2,
                                        FX_T sh2, FX_T inv_t, const FX_T *zc, FX_T inv_c)
{
#define FX_LG(Z1, Z2, ZC) FX_NAME(lp_grad_body)(g, n, a, c, c1, Z1, sh1, c2, Z2, sh2, inv_t, ZC, inv_c)
    if (zc) {
        if (z1 && z2) FX_LG(z1, z2, zc);
        else if (z1) FX_LG(z1, NULL, zc);
        else FX_LG(NULL, NULL, zc);
    } else {
        if (z1 && z2) FX_LG(z1, z2, NULL);
        else if (z1) FX_LG(z1, NULL, NULL);
        else FX_LG(NULL, NULL, NULL);
    }
#undef FX_LG
}

/* g_k = a1 g_k - a2 e_k (the forward KL's gradient, Q - P scaled). */
FX_CLONES void FX_NAME(fx_lp_axpby)(FX_T *g, const FX_T *e, ptrdiff_t n, FX_T a1, FX_T a2)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k)
        g[k] = a1 * g[k] - a2 * e[k];
}

#ifndef FX_LP_LOGF
#define FX_LP_LOGF
/* log(x) in float for the JSD's mixture, vectorisable: x = 2^e u with u in
 * [sqrt(1/2), sqrt(2)), log u = 2 atanh(s), s = (u - 1) / (u + 1),
 * |s| <= 0.1716, the odd series to s^9 (below 1e-9 there).  For positive
 * normal x; callers use it only where x > 0 and multiply it by a weight of
 * the order of x, so the meaningless result for a subnormal x (or 0)
 * vanishes in the product. */
FX_INLINE float lp_logf(float x)
{
    uint32_t b;
    memcpy(&b, &x, 4);
    float e = (float)((int32_t)(b >> 23) - 127);
    float u = bits_to_f((b & 0x007FFFFFu) | 0x3F800000u);
    int big = u > 1.41421356f;
    u = big ? u * 0.5f : u;
    e = big ? e + 1.0f : e;
    float t = (u - 1.0f) / (u + 1.0f), t2 = t * t;
    float q = 1.0f / 9.0f;
    q = q * t2 + 1.0f / 7.0f;
    q = q * t2 + 1.0f / 5.0f;
    q = q * t2 + 1.0f / 3.0f;
    return e * 0.693145751953125f + (2.0f * t + 2.0f * t * t2 * q + e * 1.428606765330187e-06f);
}
#endif

/* The log of the JSD's mixture in the element type. */
#define FX_LP_LOG(x) (sizeof(FX_T) == 4 ? (FX_T)lp_logf((float)(x)) : (FX_T)log_inl((double)(x)))

/* One class of the generalised Jensen-Shannon pass (see fx_jsd_pass). */
#define FX_JSD_TERM(k, lane)                                                   \
    do {                                                                       \
        FX_T q = es[k] * iss, p = et[k] * ist;                                 \
        FX_T lq = (s[k] - mxs) * inv_t - lss, lp = (t[k] - mxt) * inv_t - lst;  \
        FX_T lm = FX_LP_LOG(bt * p + wq * q);                                  \
        FX_T gam = q > (FX_T)0 ? wq * (lq - lm) : (FX_T)0;                     \
        FX_T qg = q * gam;                                                     \
        lpart[lane] += (p > (FX_T)0 ? bt * p * (lp - lm) : (FX_T)0) + qg;      \
        gpart[lane] += qg;                                                     \
        et[k] = gam;                                                           \
    } while (0)

/* The generalised Jensen-Shannon pass.  es holds exp of the student's
 * tempered gaps (d^s), et the teacher's (d^t); with q = es / S_s,
 * p = et / S_t, log q = d^s - log S_s, log p = d^t - log S_t (from the
 * logits s and t, exact where the ratio would round) and
 * m = beta p + (1 - beta) q, returns
 *   sum_k [beta p (log p - log m) + (1 - beta) q (log q - log m)]
 * (terms of p = 0 or q = 0 left out), overwrites et with
 * gamma_k = (1 - beta)(log q_k - log m_k) (0 where q_k = 0), and puts
 * sum_k q_k gamma_k in *qgamma.  One log a class, in the element type;
 * sums in lanes of it per block, blocks in double (as fx_expsum). */
FX_CLONES double FX_NAME(fx_jsd_pass)(const FX_T *es, FX_T *et, ptrdiff_t n, const FX_T *s,
                                      FX_T mxs, const FX_T *t, FX_T mxt, FX_T inv_t,
                                      double log_ss, double log_st, double inv_ss,
                                      double inv_st, double beta, double *qgamma)
{
    double loss = 0.0, qgs = 0.0;
    const FX_T bt = (FX_T)beta, wq = (FX_T)(1.0 - beta);
    const FX_T iss = (FX_T)inv_ss, ist = (FX_T)inv_st, lss = (FX_T)log_ss, lst = (FX_T)log_st;
    ptrdiff_t nm = n - n % FX_TAIL;
    for (ptrdiff_t k0 = 0; k0 < n; k0 += FX_SUM_BLOCK) {
        ptrdiff_t k1 = n - k0 < FX_SUM_BLOCK ? n : k0 + FX_SUM_BLOCK;
        FX_T lpart[FX_TAIL], gpart[FX_TAIL];
        for (int j = 0; j < FX_TAIL; ++j)
            lpart[j] = gpart[j] = 0;
        ptrdiff_t kv = k1 < nm ? k1 : nm;
        ptrdiff_t k = k0;
        for (; k < kv; k += FX_TAIL) {
#pragma omp simd
            for (int j = 0; j < FX_TAIL; ++j)
                FX_JSD_TERM(k + j, j);
        }
        for (; k < k1; ++k) /* the row's last n % FX_TAIL elements */
            FX_JSD_TERM(k, 0);
        loss += FX_NAME(fold_lanes)(lpart);
        qgs += FX_NAME(fold_lanes)(gpart);
    }
    *qgamma = qgs;
    return loss;
}
#undef FX_JSD_TERM
#undef FX_LP_LOG

/* g_k = a g_k (gamma_k - c): the JSD gradient from q's exponentials in g. */
FX_CLONES void FX_NAME(fx_lp_scaled_gap)(FX_T *g, const FX_T *gamma, ptrdiff_t n, FX_T a, FX_T c)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k)
        g[k] = (a * g[k]) * (gamma[k] - c);
}
