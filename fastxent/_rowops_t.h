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

/* A multiple of every vector length used (AVX-512 float); the lane folds
 * below are written for exactly 16 lanes. */
#define FX_TAIL 16

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

FX_CLONES void FX_NAME(fx_expneg_array)(const FX_T *x, ptrdiff_t n, FX_T *out)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k)
        out[k] = FX_EXPNEG(x[k]);
}

FX_CLONES void FX_NAME(fx_tanh_array)(const FX_T *x, ptrdiff_t n, FX_T *out)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k)
        out[k] = FX_TANH(x[k]);
}

/* The last r = n % FX_TAIL elements of a row (its tail) go through the same
 * vector loop as the rest, on a buffer of FX_TAIL elements: GCC's own
 * epilogue is scalar, and 15 scalar exps cost more than the rest of a row of
 * 100 classes.  The tail sits at the end of the buffer, after FX_TAIL - r
 * lanes of neutral padding (-inf for max and exp, zero target mass).  In a
 * row of at least FX_TAIL elements the buffer is the row's last FX_TAIL
 * elements with the lanes before the tail (already done by the main loop)
 * replaced: every load is in bounds, so the copy is a vector blend, and so
 * is writing the tail back.  Callers compute the tail before the main loop,
 * which may write over the input in place. */
FX_INLINE void FX_NAME(tail_in)(FX_T *buf, const FX_T *row, ptrdiff_t n, ptrdiff_t r,
                                FX_T pad)
{
    ptrdiff_t o = FX_TAIL - r;
    if (n >= FX_TAIL) {
        const FX_T *src = row + n - FX_TAIL;
#pragma omp simd
        for (ptrdiff_t k = 0; k < FX_TAIL; ++k)
            buf[k] = k < o ? pad : src[k];
    } else {
        for (ptrdiff_t k = 0; k < FX_TAIL; ++k)
            buf[k] = k < o ? pad : row[n - r + (k - o)];
    }
}

FX_INLINE void FX_NAME(tail_out)(FX_T *row, const FX_T *buf, ptrdiff_t n, ptrdiff_t r)
{
    ptrdiff_t o = FX_TAIL - r;
    if (n >= FX_TAIL) {
        FX_T *dst = row + n - FX_TAIL;
#pragma omp simd
        for (ptrdiff_t k = 0; k < FX_TAIL; ++k)
            dst[k] = k < o ? dst[k] : buf[k];
    } else {
        for (ptrdiff_t k = 0; k < r; ++k)
            row[n - r + k] = buf[o + k];
    }
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
        /* Overlapping the main loop's last elements does not change a max. */
        FX_T zb[FX_TAIL], t;
        if (n >= FX_TAIL) {
            t = FX_NAME(max_body)(z + n - FX_TAIL, FX_TAIL);
        } else {
            FX_NAME(tail_in)(zb, z, n, n - nm, -(FX_T)INFINITY);
            t = FX_NAME(max_body)(zb, FX_TAIL);
        }
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
 * element type, in FX_TAIL lanes of 16 terms each for float (relative error
 * below 1e-6 even in the worst case), and added in double, so float32 rows
 * of any length stay accurate without converting every term.  The lanes are
 * explicit and folded in halves (a fixed order, the same at every thread
 * count): GCC ends an `omp simd reduction` by adding the lanes one after
 * another through memory, a chain of dependent scalar adds per block.  Rows
 * passed here are a multiple of FX_TAIL long (the main loop, or a tail
 * buffer). */
#ifndef FX_SUM_BLOCK
#define FX_SUM_BLOCK 256
#endif

#if defined(__GNUC__)
#define FX_UNROLL(text) _Pragma(text)
#else
#define FX_UNROLL(text)
#endif
#define FX_FOLD_LANES(v)                 \
    do {                                 \
        FX_UNROLL("GCC unroll 8")        \
        for (int j = 0; j < 8; ++j)      \
            (v)[j] += (v)[j + 8];        \
        FX_UNROLL("GCC unroll 4")        \
        for (int j = 0; j < 4; ++j)      \
            (v)[j] += (v)[j + 4];        \
        (v)[0] += (v)[2];                \
        (v)[1] += (v)[3];                \
        (v)[0] += (v)[1];                \
    } while (0)

FX_INLINE double FX_NAME(fold_lanes)(FX_T *v)
{
    FX_FOLD_LANES(v);
    return (double)v[0];
}

FX_INLINE double FX_NAME(fold_lanes_double)(double *v)
{
    FX_FOLD_LANES(v);
    return v[0];
}

FX_INLINE double FX_NAME(expsum_body)(const FX_T *z, ptrdiff_t n, FX_T shift,
                                      FX_T *out, const FX_T *w, const FX_T *y,
                                      FX_T alpha, FX_T beta, double *tdot,
                                      double *count)
{
    double acc = 0.0, dacc = 0.0, qacc = 0.0, cacc = 0.0;
    for (ptrdiff_t k0 = 0; k0 < n; k0 += FX_SUM_BLOCK) {
        ptrdiff_t k1 = n - k0 < FX_SUM_BLOCK ? n : k0 + FX_SUM_BLOCK;
        FX_T part[FX_TAIL], cpart[FX_TAIL];
        double dpart[FX_TAIL], qpart[FX_TAIL];
        for (int j = 0; j < FX_TAIL; ++j) {
            part[j] = cpart[j] = 0;
            dpart[j] = qpart[j] = 0.0;
        }
        for (ptrdiff_t k = k0; k < k1; k += FX_TAIL) {
#pragma omp simd
            for (int j = 0; j < FX_TAIL; ++j) {
                FX_T zk = z[k + j]; /* read before out (maybe z) is written */
                FX_T d = zk - shift;
                FX_T e = FX_EXPNEG(d);
                if (out)
                    out[k + j] = e;
                if (count) {
                    /* Terms equal to the shift (exactly 1) are counted, not
                     * added, so that the sum of the others keeps the bits a
                     * sum of 1 + tiny would round away (log1p below). */
                    FX_T top = d == (FX_T)0 ? (FX_T)1 : (FX_T)0;
                    part[j] += e - top;
                    cpart[j] += top;
                } else {
                    part[j] += e;
                }
                if (tdot) {
                    /* In double, gap included: a logit gap beyond the
                     * element type's range (3e38 - -3e38 in float32) and a
                     * large weight times a large gap must not overflow
                     * before the mean divides them down. */
                    double q = (double)((w ? w[k + j] : (FX_T)1) *
                                        (y ? alpha * y[k + j] + beta : beta));
                    double dd = (double)zk - (double)shift;
                    dpart[j] += q != 0.0 ? q * dd : 0.0;
                    qpart[j] += q;
                }
            }
        }
        acc += FX_NAME(fold_lanes)(part);
        if (count)
            cacc += FX_NAME(fold_lanes)(cpart);
        if (tdot) {
            dacc += FX_NAME(fold_lanes_double)(dpart);
            qacc += FX_NAME(fold_lanes_double)(qpart);
        }
    }
    if (tdot) {
        tdot[0] = dacc;
        tdot[1] = qacc;
    }
    if (count)
        *count = cacc;
    return acc;
}

FX_INLINE double FX_NAME(expsum_dispatch)(const FX_T *z, ptrdiff_t n, FX_T shift,
                                          FX_T *out, const FX_T *w, const FX_T *y,
                                          FX_T alpha, FX_T beta, double *tdot,
                                          double *count)
{
#define FX_ES(OUT, W, Y, TD, C) FX_NAME(expsum_body)(z, n, shift, OUT, W, Y, alpha, beta, TD, C)
#define FX_ES_TARGETS(OUT, C)                       \
    if (!tdot)                                      \
        return FX_ES(OUT, NULL, NULL, NULL, C);     \
    if (w && y)                                     \
        return FX_ES(OUT, w, y, tdot, C);           \
    if (w)                                          \
        return FX_ES(OUT, w, NULL, tdot, C);        \
    if (y)                                          \
        return FX_ES(OUT, NULL, y, tdot, C);        \
    return FX_ES(OUT, NULL, NULL, tdot, C);
    if (count) {
        if (out) {
            FX_ES_TARGETS(out, count)
        }
        FX_ES_TARGETS(NULL, count)
    }
    if (out) {
        FX_ES_TARGETS(out, NULL)
    }
    FX_ES_TARGETS(NULL, NULL)
#undef FX_ES_TARGETS
#undef FX_ES
}

FX_CLONES double FX_NAME(fx_expsum)(const FX_T *z, ptrdiff_t n, FX_T shift,
                                    FX_T *out, const FX_T *w, const FX_T *y,
                                    FX_T alpha, FX_T beta, double *tdot,
                                    double *rest)
{
    ptrdiff_t nm = n - n % FX_TAIL, r = n - nm;
    double s = 0.0, td[2] = {0.0, 0.0}, c_main = 0.0, c_tail = 0.0;
    double *count = rest ? &c_main : NULL;
    FX_T ob[FX_TAIL];
    if (r) {
        /* Padding: exp(-inf) = 0, and zero target mass (w = 0) so that the
         * padded -inf never meets a non-zero q. */
        FX_T zb[FX_TAIL], wb[FX_TAIL], yb[FX_TAIL];
        FX_NAME(tail_in)(zb, z, n, r, -(FX_T)INFINITY);
        if (w) {
            FX_NAME(tail_in)(wb, w, n, r, 0);
        } else {
            for (ptrdiff_t k = 0; k < FX_TAIL; ++k)
                wb[k] = k < FX_TAIL - r ? (FX_T)0 : (FX_T)1;
        }
        if (y)
            FX_NAME(tail_in)(yb, y, n, r, 0);
        s = FX_NAME(expsum_dispatch)(zb, FX_TAIL, shift, out ? ob : NULL, wb,
                                     y ? yb : NULL, alpha, beta, tdot ? td : NULL,
                                     rest ? &c_tail : NULL);
    }
    s += FX_NAME(expsum_dispatch)(z, nm, shift, out, w, y, alpha, beta, tdot, count);
    if (r && out)
        FX_NAME(tail_out)(out, ob, n, r);
    if (tdot) {
        tdot[0] += td[0];
        tdot[1] += td[1];
    }
    if (rest) {
        /* s holds the terms below the shift; with c terms at it, the whole
         * sum is s + c and the sum without one of them s + (c - 1), exact
         * when s is tiny (no 1 + s to round). */
        double c = c_main + c_tail;
        *rest = s + (c - 1.0);
        return s + c;
    }
    return s;
}

FX_INLINE void FX_NAME(grad_pass_body)(FX_T *g, ptrdiff_t n, FX_T a, FX_T b,
                                       const FX_T *w, const FX_T *y,
                                       FX_T alpha, FX_T beta, const FX_T *zc,
                                       FX_T inv_c, int has_q)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k) {
        FX_T v = a * g[k];
        if (has_q) {
            FX_T q = (w ? w[k] : (FX_T)1) * (y ? alpha * y[k] + beta : beta);
            v = v - b * q;
        }
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
#define FX_GP(W, Y, ZC, HQ) \
    FX_NAME(grad_pass_body)(g, n, a, b, W, Y, alpha, beta, ZC, inv_c, HQ)
    /* Without weights, targets and a uniform part there is no q term at all
     * (class indices without smoothing: the label's term is the caller's).
     * Leaving out b * 0 is also what keeps an infinite b (a zero "mean"
     * denominator) from making NaN of the other classes, as in PyTorch. */
    int has_q = w || y || beta != 0;
    if (zc) {
        if (w && y) FX_GP(w, y, zc, 1);
        else if (w) FX_GP(w, NULL, zc, 1);
        else if (y) FX_GP(NULL, y, zc, 1);
        else if (has_q) FX_GP(NULL, NULL, zc, 1);
        else FX_GP(NULL, NULL, zc, 0);
    } else {
        if (w && y) FX_GP(w, y, NULL, 1);
        else if (w) FX_GP(w, NULL, NULL, 1);
        else if (y) FX_GP(NULL, y, NULL, 1);
        else if (has_q) FX_GP(NULL, NULL, NULL, 1);
        else FX_GP(NULL, NULL, NULL, 0);
    }
#undef FX_GP
}

FX_CLONES void FX_NAME(fx_grad_pass)(FX_T *g, ptrdiff_t n, FX_T a, FX_T b,
                                     const FX_T *w, const FX_T *y, FX_T alpha,
                                     FX_T beta, const FX_T *zc, FX_T inv_c)
{
    ptrdiff_t nm = n - n % FX_TAIL, r = n - nm;
    FX_T gb[FX_TAIL];
    if (r) {
        FX_T wb[FX_TAIL], yb[FX_TAIL], cb[FX_TAIL];
        FX_NAME(tail_in)(gb, g, n, r, 0);
        if (w)
            FX_NAME(tail_in)(wb, w, n, r, 0);
        if (y)
            FX_NAME(tail_in)(yb, y, n, r, 0);
        if (zc)
            FX_NAME(tail_in)(cb, zc, n, r, 0);
        FX_NAME(grad_pass_dispatch)(gb, FX_TAIL, a, b, w ? wb : NULL, y ? yb : NULL,
                                    alpha, beta, zc ? cb : NULL, inv_c);
    }
    FX_NAME(grad_pass_dispatch)(g, nm, a, b, w, y, alpha, beta, zc, inv_c);
    if (r)
        FX_NAME(tail_out)(g, gb, n, r);
}

FX_CLONES void FX_NAME(fx_sub2)(const FX_T *z, ptrdiff_t n, FX_T shift1,
                                FX_T shift2, FX_T *out)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k)
        out[k] = (z[k] - shift1) - shift2;
}

FX_CLONES void FX_NAME(fx_hess_pass)(const FX_T *e, ptrdiff_t n, FX_T inv_s, FX_T c,
                                     FX_T *h)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k) {
        FX_T p = e[k] * inv_s;
        h[k] = c * (p * ((FX_T)1 - p));
    }
}

FX_CLONES void FX_NAME(fx_scale)(FX_T *g, ptrdiff_t n, FX_T a)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; ++k)
        g[k] *= a;
}

/* Whether a row is fully masked (every logit -inf) and has no target mass
 * (every q[k] == 0; see fx_expsum): such a row has loss 0 and gradient 0,
 * where the arithmetic would give -inf - -inf = NaN.  Scalar: it runs only
 * for rows whose max is -inf. */
int FX_NAME(fx_masked_without_mass)(const FX_T *z, ptrdiff_t m, ptrdiff_t label,
                                    const FX_T *y, const FX_T *w, const fx_options *o)
{
    for (ptrdiff_t k = 0; k < m; ++k) {
        if (!(z[k] == -(FX_T)INFINITY))
            return 0;
        double wk = w ? (double)w[k] : 1.0;
        double q = label >= 0 ? (k == label ? fx_label_mass(o, wk) : 0.0) + fx_uniform_mass(o, wk)
                              : fx_prob_mass(o, wk, (double)y[k]);
        if (q != 0.0)
            return 0; /* NaN target mass too */
    }
    return 1;
}

/* The softmax coefficient a = (sum_k b q[k] + 2 zloss lse b) / S of a row,
 * with b multiplied into every term of the target mass separately (q[k] as
 * in fx_masked_without_mass).  Used only when b is not finite (a zero
 * "mean" denominator): b * (sum_k q[k]) would then be +-inf where PyTorch,
 * which differentiates each term on its own, gets inf - inf or 0 * inf =
 * NaN; this keeps the gradient's inf/NaN pattern PyTorch's. */
double FX_NAME(fx_softmax_coef)(double b, ptrdiff_t m, ptrdiff_t label, const FX_T *y,
                                const FX_T *w, const fx_options *o, double lse, double S)
{
    double total = 0.0;
    if (label >= 0) {
        total = b * fx_label_mass(o, w ? (double)w[label] : 1.0);
        if (o->label_smoothing > 0.0)
            for (ptrdiff_t k = 0; k < m; ++k)
                total += b * fx_uniform_mass(o, w ? (double)w[k] : 1.0);
    } else {
        for (ptrdiff_t k = 0; k < m; ++k)
            total += b * fx_prob_mass(o, w ? (double)w[k] : 1.0, (double)y[k]);
    }
    if (o->z_loss != 0.0)
        total += b * (2.0 * o->z_loss * lse);
    return total / S;
}

/* The small-m tile kernel's layout changes: the block of R rows of m
 * logits (row-major) to and from the column-major tile[j * FX_TILE_ROWS + r],
 * FX_VL x FX_VL sub-blocks at a time through registers (FX_TRANSPOSE).
 *
 * The last m % FX_VL columns of a group of FX_VL rows are moved as a whole
 * FX_VL-wide sub-block too, which reads (tile_in) or writes (tile_out)
 * past the end of each row into the next one.  Reading there is harmless:
 * the extra values land in the tile's FX_VL spare columns, which nothing
 * uses.  Writing there is made harmless by order: those columns of a group
 * are written before its full columns (and each group before the next), so
 * every overrun is overwritten later by the right values.  Nothing is read
 * or written past the end of the block (it may be the end of the array, and
 * the rows after it may belong to another thread): a group whose overrun
 * would get there, and the last R % FX_VL rows, go through a padded copy or
 * one element at a time.  Writing ahead needs rows of at least FX_VL
 * elements (a narrower row would be overrun by rows that are stored after
 * it within the same sub-block). */
FX_INLINE void FX_NAME(tile_in)(const FX_T *z, ptrdiff_t R, ptrdiff_t m, FX_T *tile)
{
    enum { V = FX_VL, TR = FX_TILE_ROWS };
    ptrdiff_t Rv = R - R % V, mv = m - m % V;
    for (ptrdiff_t r0 = 0; r0 < Rv; r0 += V) {
        for (ptrdiff_t j0 = 0; j0 < mv; j0 += V)
            FX_TRANSPOSE(z + r0 * m + j0, m, tile + j0 * TR + r0, TR);
        if (mv == m)
            continue;
        if ((r0 + V - 1) * m + mv + V <= R * m) {
            FX_TRANSPOSE(z + r0 * m + mv, m, tile + mv * TR + r0, TR);
        } else {
            /* Only the rows whose read would leave the block are padded. */
            FX_T buf[V * V];
            for (ptrdiff_t i = 0; i < V; ++i) {
                const FX_T *src = z + (r0 + i) * m + mv;
                if ((r0 + i) * m + mv + V <= R * m) {
                    memcpy(buf + i * V, src, V * sizeof(FX_T));
                } else {
                    for (ptrdiff_t j = 0; j < V; ++j)
                        buf[i * V + j] = mv + j < m ? src[j] : (FX_T)0;
                }
            }
            FX_TRANSPOSE(buf, V, tile + mv * TR + r0, TR);
        }
    }
    for (ptrdiff_t j = 0; j < m; ++j)
        for (ptrdiff_t r = Rv; r < R; ++r)
            tile[j * TR + r] = z[r * m + j];
}

FX_INLINE void FX_NAME(tile_out)(const FX_T *tile, ptrdiff_t R, ptrdiff_t m, FX_T *g)
{
    enum { V = FX_VL, TR = FX_TILE_ROWS };
    ptrdiff_t Rv = R - R % V, mv = m - m % V;
    for (ptrdiff_t r0 = 0; r0 < Rv; r0 += V) {
        if (mv < m) {
            if (m >= V && (r0 + V - 1) * m + mv + V <= R * m) {
                FX_TRANSPOSE(tile + mv * TR + r0, TR, g + r0 * m + mv, m);
            } else {
                FX_T buf[V * V];
                FX_TRANSPOSE(tile + mv * TR + r0, TR, buf, V);
                for (ptrdiff_t i = 0; i < V; ++i)
                    for (ptrdiff_t j = 0; j < m - mv; ++j)
                        g[(r0 + i) * m + mv + j] = buf[i * V + j];
            }
        }
        for (ptrdiff_t j0 = 0; j0 < mv; j0 += V)
            FX_TRANSPOSE(tile + j0 * TR + r0, TR, g + r0 * m + j0, m);
    }
    for (ptrdiff_t r = Rv; r < R; ++r)
        for (ptrdiff_t j = 0; j < m; ++j)
            g[r * m + j] = tile[j * TR + r];
}

/* NaN outputs for the rows whose label (read again: these rows are rare,
 * and only a data race makes them) is outside [0, m) and not ignore_index;
 * returns how many there are (at least 1: the caller saw one). */
static int FX_NAME(fx_mark_raced_rows)(const void *labels, int labels_64bit,
                                       long long ignore_index, ptrdiff_t R, ptrdiff_t m,
                                       double *loss_out, FX_T *g, FX_T *h)
{
    int count = 0;
    for (ptrdiff_t r = 0; r < R; ++r) {
        int64_t lab = labels_64bit ? ((const int64_t *)labels)[r]
                                   : (int64_t)((const int32_t *)labels)[r];
        if (lab == (int64_t)ignore_index || (lab >= 0 && lab < (int64_t)m))
            continue;
        ++count;
        loss_out[r] = NAN;
        for (ptrdiff_t j = 0; g && j < m; ++j)
            g[r * m + j] = (FX_T)NAN;
        for (ptrdiff_t j = 0; h && j < m; ++j)
            h[r * m + j] = (FX_T)NAN;
    }
    return count > 0 ? count : 1;
}

FX_CLONES int FX_NAME(fx_tile_kernel)(const FX_T *z, ptrdiff_t R, ptrdiff_t m,
                                       const void *labels, int labels_64bit,
                                       long long ignore_index, const FX_T *w,
                                       const double *sw, const fx_options *o,
                                       double *loss_out, FX_T *g, FX_T *h)
{
    const fx_options opt = *o; /* a local copy: no output store can change it */
    o = &opt;
    enum { TR = FX_TILE_ROWS };
    /* column-major: tile[j * TR + r], FX_VL spare columns for tile_in/out */
    FX_T tile[(FX_SMALL_M_MAX + FX_VL) * TR];
    FX_T mx[TR], zt[TR], S[TR], a[TR], b[TR], c[TR]; /* a, b, c: the gradient's */
    FX_T hs[TR], hc[TR]; /* the Hessian's 1 / S and b Q */
    double dot[TR], Q[TR], coef[TR], sr[TR], ignd[TR], lse_r[TR];
    int32_t y[TR]; /* m <= FX_SMALL_M_MAX: 32-bit compares vectorise better */
    int32_t ign[TR];
    const double smoothing = o->label_smoothing;
    double qs_total = 0.0;
    int raced = 0; /* labels out of range here, though checked before */

    for (ptrdiff_t r = 0; r < R; ++r) {
        /* Each label is read once.  The caller checked the range, but
         * another thread may have written the array since: such a row is
         * computed as ignored and its outputs set to NaN below, so that a
         * data race never turns into an index out of bounds. */
        int64_t lab = labels_64bit ? ((const int64_t *)labels)[r]
                                   : (int64_t)((const int32_t *)labels)[r];
        int ig = lab == (int64_t)ignore_index;
        /* one unsigned compare for lab < 0 or lab >= m; no branches */
        int bad = (!ig) & ((uint64_t)lab >= (uint64_t)m);
        raced += bad;
        ig |= bad;
        int64_t yy = ig ? 0 : lab;
        double s = sw ? sw[r] : 1.0;
        ign[r] = ig;
        ignd[r] = ig;
        y[r] = (int32_t)yy;
        sr[r] = ig ? 0.0 : s;
        coef[r] = fx_label_mass(o, w ? (double)w[yy] : 1.0);
        mx[r] = -(FX_T)INFINITY;
        zt[r] = 0;
    }

    /* The row max, and each row's target logit picked out by a select in
     * the same vectorised sweep (a gather per row costs more). */
    FX_NAME(tile_in)(z, R, m, tile);
    for (ptrdiff_t j = 0; j < m; ++j) {
#pragma omp simd
        for (ptrdiff_t r = 0; r < R; ++r) {
            FX_T v = tile[j * TR + r];
            mx[r] = v > mx[r] ? v : mx[r];
            zt[r] = y[r] == (int32_t)j ? v : zt[r];
        }
    }
    /* Fully masked rows without target mass are handled like ignored rows
     * (loss 0, zero gradient); z is still intact here even in place. */
    int any_masked = 0;
    for (ptrdiff_t r = 0; r < R; ++r)
        any_masked |= mx[r] == -(FX_T)INFINITY;
    if (any_masked) {
        for (ptrdiff_t r = 0; r < R; ++r) {
            if (mx[r] == -(FX_T)INFINITY && !ign[r] &&
                FX_NAME(fx_masked_without_mass)(z + r * m, m, y[r], NULL, w, o)) {
                ign[r] = 1;
                ignd[r] = 1.0;
            }
        }
    }

    /* Target terms, relative to the max (zero-mass terms skipped). */
#pragma omp simd
    for (ptrdiff_t r = 0; r < R; ++r) {
        double zy = (double)zt[r] - (double)mx[r];
        dot[r] = coef[r] != 0.0 ? coef[r] * zy : 0.0;
        Q[r] = coef[r];
    }
    if (smoothing > 0.0) {
        for (ptrdiff_t j = 0; j < m; ++j) {
            double q = fx_uniform_mass(o, w ? (double)w[j] : 1.0);
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

    /* The per-row log, loss and gradient coefficients.  Divisions cost most
     * here: one reciprocal of the row sum serves a and the Hessian, and the
     * gradient scale b = s / D multiplies by a reciprocal of D taken once,
     * unless that overflows (a subnormal or zero D), where it divides. */
    double bs[TR];
    fx_grad_scales(o, sr, R, bs);
    int odd = 0; /* a row whose b is not finite */
#pragma omp simd reduction(| : odd)
    for (ptrdiff_t r = 0; r < R; ++r) {
        double q = Q[r] + qs_total;
        double sum = (double)S[r], inv_sum = 1.0 / sum;
        double br = bs[r];
        fx_row row = fx_finish_row(o, sr[r], br, (double)mx[r], log_inl(sum), q, dot[r]);
        loss_out[r] = ignd[r] != 0.0 ? 0.0 : row.loss;
        b[r] = (FX_T)br;
        a[r] = (FX_T)(row.softmax_weight * inv_sum);
        c[r] = (FX_T)coef[r];
        lse_r[r] = row.lse;
        hs[r] = (FX_T)inv_sum;
        hc[r] = (FX_T)(br * q);
        odd |= ignd[r] == 0.0 && !(br - br == 0.0);
    }
    if (!g)
        return raced ? FX_NAME(fx_mark_raced_rows)(labels, labels_64bit, ignore_index, R, m,
                                                   loss_out, NULL, NULL)
                     : 0;
    for (ptrdiff_t r = 0; odd && r < R; ++r) {
        double br = (double)b[r];
        if (!ign[r] && !(br - br == 0.0)) /* b inf or NaN: see fx_softmax_coef */
            a[r] = (FX_T)FX_NAME(fx_softmax_coef)(br, m, y[r], NULL, w, o, lse_r[r],
                                                   (double)S[r]);
    }

    if (h) {
        /* The Hessian diagonal b Q P (1 - P) from exp(z - max), into a
         * tile of its own (tile_out below) before the gradient overwrites
         * the exps; h is written row-major through tile_out like g. */
        FX_T htile[(FX_SMALL_M_MAX + FX_VL) * TR];
        for (ptrdiff_t j = 0; j < m; ++j) {
#pragma omp simd
            for (ptrdiff_t r = 0; r < R; ++r) {
                FX_T p = tile[j * TR + r] * hs[r];
                FX_T v = hc[r] * (p * ((FX_T)1 - p));
                htile[j * TR + r] = ign[r] ? (FX_T)0 : v;
            }
        }
        FX_NAME(tile_out)(htile, R, m, h);
    }
    if (smoothing > 0.0) {
        for (ptrdiff_t j = 0; j < m; ++j) {
            FX_T qj = (FX_T)fx_uniform_mass(o, w ? (double)w[j] : 1.0);
#pragma omp simd
            for (ptrdiff_t r = 0; r < R; ++r) {
                FX_T q = qj + (y[r] == (int32_t)j ? c[r] : (FX_T)0);
                FX_T v = a[r] * tile[j * TR + r] - b[r] * q;
                tile[j * TR + r] = ign[r] ? (FX_T)0 : v;
            }
        }
    } else {
        /* Only the label's term: b * c subtracted there and nowhere else (no
         * b * 0, which an infinite b would turn into NaN; see grad_pass). */
        for (ptrdiff_t r = 0; r < R; ++r)
            c[r] = b[r] * c[r];
        for (ptrdiff_t j = 0; j < m; ++j) {
#pragma omp simd
            for (ptrdiff_t r = 0; r < R; ++r) {
                FX_T v = a[r] * tile[j * TR + r];
                v = y[r] == (int32_t)j ? v - c[r] : v;
                tile[j * TR + r] = ign[r] ? (FX_T)0 : v;
            }
        }
    }
    FX_NAME(tile_out)(tile, R, m, g);
    return raced ? FX_NAME(fx_mark_raced_rows)(labels, labels_64bit, ignore_index, R, m,
                                               loss_out, g, h)
                 : 0;
}

/* Two classes: the per-row work of the tile kernel reduced to one exp and
 * one log1p, vectorised across rows straight on the interleaved (R, 2)
 * logits.  With d = z1 - z0 and t = exp(-|d|), the row's sum of exps is
 * 1 + t, lse = max + log1p(t), the smaller logit's probability t / (1 + t)
 * and the larger's 1 / (1 + t); the rest is the general per-row form
 * (fx_tile_kernel' comments).  Rows this form would get wrong are left to
 * fx_tile_kernel, a whole block at a time: a non-finite gradient scale b
 * (a zero "mean" denominator: PyTorch's inf/NaN pattern), fully masked
 * rows (max -inf) and +inf logits (NaN there, as everywhere).  Same
 * arguments as fx_tile_kernel with m = 2. */
FX_CLONES int FX_NAME(fx_two_class_kernel)(const FX_T *z, ptrdiff_t R, const void *labels,
                                            int labels_64bit, long long ignore_index,
                                            const FX_T *w, const double *sw,
                                            const fx_options *o, double *loss_out, FX_T *g,
                                            FX_T *h)
{
    const fx_options opt = *o; /* a local copy: no output store can change it */
    o = &opt;
    enum { TR = FX_TILE_ROWS };
    int32_t y[TR], ign[TR];
    double s[TR];
    const double w0 = w ? (double)w[0] : 1.0, w1 = w ? (double)w[1] : 1.0;
    const double u0 = fx_uniform_mass(o, w0), u1 = fx_uniform_mass(o, w1);
    /* A reciprocal of D that overflows (a subnormal or zero denominator)
     * sends the block to the general kernel below. */
    const double inv_denom = o->unit_scale;
    int unusual = !(inv_denom - inv_denom == 0.0) || o->grad_denom == 0.0;
    for (ptrdiff_t r = 0; r < R; ++r) {
        int64_t lab = labels_64bit ? ((const int64_t *)labels)[r]
                                   : (int64_t)((const int32_t *)labels)[r];
        ign[r] = lab == (int64_t)ignore_index;
        /* a label changed since it was checked (a data race): the general
         * kernel below marks its row */
        unusual |= (!ign[r]) & ((uint64_t)lab > 1); /* lab outside {0, 1}; no branches */
        y[r] = ign[r] ? 0 : (int32_t)lab;
        s[r] = ign[r] ? 0.0 : (sw ? sw[r] : 1.0);
    }
    double bs[TR];
    fx_grad_scales(o, s, R, bs);
#pragma omp simd reduction(| : unusual)
    for (ptrdiff_t r = 0; r < R; ++r) {
        FX_T z0 = z[2 * r], z1 = z[2 * r + 1];
        double b = bs[r];
        unusual |= (z0 == -(FX_T)INFINITY && z1 == -(FX_T)INFINITY) | (z0 == (FX_T)INFINITY) |
                   (z1 == (FX_T)INFINITY) | !(b - b == 0.0);
    }
    if (unusual)
        return FX_NAME(fx_tile_kernel)(z, R, 2, labels, labels_64bit, ignore_index, w, sw, o,
                                       loss_out, g, h);
    /* Three vectorised sweeps, as in the tile kernel: the logits (element
     * type), the per-row arithmetic (double), the outputs (element type). */
    FX_T tr[TR], d0r[TR], d1r[TR], mxr[TR], hi1[TR], g0r[TR], g1r[TR], hr[TR];
#pragma omp simd
    for (ptrdiff_t r = 0; r < R; ++r) {
        FX_T z0 = z[2 * r], z1 = z[2 * r + 1];
        FX_T d = z1 - z0;
        FX_T mx = d >= (FX_T)0 ? z1 : z0;
        FX_T ad = d >= (FX_T)0 ? d : -d;
        tr[r] = FX_EXPNEG(-ad);
        mxr[r] = mx;
        d0r[r] = z0 - mx; /* exact: 0 or -|d| */
        d1r[r] = z1 - mx;
        hi1[r] = d >= (FX_T)0 ? (FX_T)1 : (FX_T)0; /* class 1 holds the max */
    }
#pragma omp simd
    for (ptrdiff_t r = 0; r < R; ++r) {
        double t = (double)tr[r], inv_u;
        double log_s = log1p_recip_unit(t, &inv_u);
        double p_hi = inv_u, p_lo = t * inv_u;
        double p1 = hi1[r] != (FX_T)0 ? p_hi : p_lo, p0 = hi1[r] != (FX_T)0 ? p_lo : p_hi;
        double c = fx_label_mass(o, y[r] ? w1 : w0);
        double q0 = u0 + (y[r] ? 0.0 : c), q1 = u1 + (y[r] ? c : 0.0);
        double Q = q0 + q1;
        /* target terms relative to the max; zero-mass terms skipped */
        double dot = (q0 != 0.0 ? q0 * (double)d0r[r] : 0.0) +
                     (q1 != 0.0 ? q1 * (double)d1r[r] : 0.0);
        double b = bs[r];
        fx_row row = fx_finish_row(o, s[r], b, (double)mxr[r], log_s, Q, dot);
        loss_out[r] = ign[r] ? 0.0 : row.loss;
        double a = row.softmax_weight;
        /* without smoothing the other class has no q term at all (no b * 0) */
        double g0 = a * p0 - (q0 != 0.0 ? b * q0 : 0.0);
        double g1 = a * p1 - (q1 != 0.0 ? b * q1 : 0.0);
        g0r[r] = ign[r] ? (FX_T)0 : (FX_T)g0;
        g1r[r] = ign[r] ? (FX_T)0 : (FX_T)g1;
        if (h) /* loop-invariant: GCC unswitches the loop */
            hr[r] = ign[r] ? (FX_T)0 : (FX_T)(b * Q * p0 * p1);
    }
    if (g) {
#pragma omp simd
        for (ptrdiff_t r = 0; r < R; ++r) {
            g[2 * r] = g0r[r];
            g[2 * r + 1] = g1r[r];
        }
    }
    if (h) {
#pragma omp simd
        for (ptrdiff_t r = 0; r < R; ++r) {
            h[2 * r] = hr[r];
            h[2 * r + 1] = hr[r];
        }
    }
    return 0;
}
