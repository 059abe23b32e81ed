/*
 * Vectorised row primitives for fastxent: branch-free exp/tanh and the
 * row loops of the fused softmax cross-entropy kernels.
 *
 * Why our own exp: glibc only declares its SIMD expf/exp (libmvec) under
 * __FAST_MATH__, and -ffast-math is not an option (it breaks -inf/NaN
 * handling and, linked into a shared library, flips the whole process to
 * flush-to-zero).  libmvec also drops to scalar code for arguments below
 * about -87 and for -inf, i.e. exactly on masked logits.  The functions
 * below are written with selects instead of branches so that `omp simd`
 * vectorises them for any input, including -inf, NaN and huge values.
 *
 * exp(x): clamp x, n = round(x / ln 2) with the 1.5 * 2^p magic-number
 * trick (which also yields n's bits without a float-to-int instruction that
 * AVX2 lacks for doubles), Cody-Waite reduction r = x - n ln2 with ln 2
 * split into an exactly-representable head and a tail, a polynomial
 * 1 + r + r^2 p(r) for exp(r) on |r| <= ln2/2 (near-minimax for the relative
 * error, fitted by docs/fit_exp_polynomials.py: degree 6 for float, 3e-9
 * before rounding; degree 11 for double, 4e-18), and
 * the scale 2^n applied as 2^(n/2) * 2^(n - n/2) so that gradual underflow
 * and the top of the range stay exact.  Then selects: x below the
 * underflow threshold (and -inf) gives exactly 0, x above the overflow
 * threshold gives +inf, NaN stays NaN.
 *
 * tanh(x): for |x| < 0.625 Cephes' odd polynomial (float) or rational
 * function (double), which keeps full relative accuracy near 0; otherwise
 * 1 - 2 / (exp(2|x|) + 1) with the sign restored.  Both are evaluated and
 * selected, so there is no branch.
 *
 * The element-type-generic loops are in _rowops_t.h, included once for
 * float and once for double below: the loops are identical, only the
 * element type and its exp/tanh differ.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_rowops.h"

#if defined(__GNUC__)
#define FX_INLINE static inline __attribute__((always_inline))
#else
#define FX_INLINE static inline
#endif

/* Run-time dispatched clones: the same binary uses AVX-512 or AVX2+FMA
 * where the CPU has them.  Needs GCC >= 12 (clones by ISA level) and the C
 * library's ifunc, which glibc has and musl and uClibc (which also defines
 * __GLIBC__) do not; x86-64.  FASTXENT_NO_CLONES turns it off (e.g. for
 * sanitizer builds). */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && \
    defined(__linux__) && defined(__GLIBC__) && !defined(__UCLIBC__) && \
    !defined(FASTXENT_NO_CLONES)
#define FX_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FX_HAVE_CLONES 1
#else
#define FX_CLONES
#define FX_HAVE_CLONES 0
#endif

FX_INLINE float bits_to_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
FX_INLINE uint32_t f_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
FX_INLINE double bits_to_d(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }
FX_INLINE uint64_t d_to_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }

/* exp(r) * 2^-n with n = round(x / ln 2), r = x - n ln 2, for a clamped x:
 * the part shared by the general and the non-positive exponentials. */
FX_INLINE float expf_core(float xc, int32_t *n)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    float t = xc * 1.44269504088896341f + magic;
    float nf = t - magic;
    *n = (int32_t)(f_to_bits(t) - f_to_bits(magic));
    float r = xc - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    float p = 0.0013814959f;
    p = p * r + 0.008368721f;
    p = p * r + 0.04166838f;
    p = p * r + 0.16666521f;
    p = p * r + 0.49999994f;
    return p * (r * r) + r + 1.0f;
}

FX_INLINE double exp_core(double xc, int64_t *n)
{
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    double t = xc * 1.4426950408889634074 + magic;
    double nf = t - magic;
    *n = (int64_t)(d_to_bits(t) - d_to_bits(magic));
    double r = xc - nf * 6.93147180369123816490e-01;
    r = r - nf * 1.90821492927058770002e-10;
    double p = 2.499985785927218e-08;
    p = p * r + 2.7630263804221474e-07;
    p = p * r + 2.7557586914900633e-06;
    p = p * r + 2.4801493054200592e-05;
    p = p * r + 0.00019841269506192322;
    p = p * r + 0.0013888888943675423;
    p = p * r + 0.008333333333494456;
    p = p * r + 0.041666666666529975;
    p = p * r + 0.16666666666666413;
    p = p * r + 0.5000000000000011;
    return p * (r * r) + r + 1.0;
}

FX_INLINE float expf_inl(float x)
{
    const float lo = -103.972076f; /* exp(lo) < smallest subnormal / 2 */
    const float hi = 88.7228394f;  /* log(FLT_MAX) */
    float xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc; /* NaN passes both clamps unchanged */
    int32_t n;
    float p = expf_core(xc, &n);
    int32_t n1 = n >> 1, n2 = n - n1;
    float s1 = bits_to_f((uint32_t)(n1 + 127) << 23);
    float s2 = bits_to_f((uint32_t)(n2 + 127) << 23);
    float res = (p * s1) * s2;
    res = x < lo ? 0.0f : res;
    return x > hi ? HUGE_VALF : res;
}

FX_INLINE double exp_inl(double x)
{
    const double lo = -745.1332191019412; /* exp(lo) < smallest subnormal / 2 */
    const double hi = 709.782712893384;   /* log(DBL_MAX) */
    double xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    int64_t n;
    double p = exp_core(xc, &n);
    int64_t n1 = n >> 1, n2 = n - n1;
    double s1 = bits_to_d((uint64_t)(n1 + 1023) << 52);
    double s2 = bits_to_d((uint64_t)(n2 + 1023) << 52);
    double res = (p * s1) * s2;
    res = x < lo ? 0.0 : res;
    return x > hi ? HUGE_VAL : res;
}

/* exp(x) for x <= 0 or NaN, the only arguments the kernels produce
 * (logit minus its row max).  Dropping the overflow side and flushing
 * results below the smallest normal number (x < log(FLT_MIN)) to 0 lets the
 * scale be a single 2^n and saves a quarter of the work of expf_inl; the
 * flushed values are below 1.2e-38 (2.3e-308 for double), invisible next to
 * the row max's own term of 1. */
FX_INLINE float expnegf_inl(float x)
{
    const float lo = -87.3365448f; /* log(FLT_MIN) */
    float xc = x < lo ? lo : x;
    int32_t n;
    float p = expf_core(xc, &n);
    float res = p * bits_to_f((uint32_t)(n + 127) << 23);
    return x < lo ? 0.0f : res;
}

FX_INLINE double expneg_inl(double x)
{
    const double lo = -708.3964185322641; /* log(DBL_MIN) */
    double xc = x < lo ? lo : x;
    int64_t n;
    double p = exp_core(xc, &n);
    double res = p * bits_to_d((uint64_t)(n + 1023) << 52);
    return x < lo ? 0.0 : res;
}

FX_INLINE float tanhf_inl(float x)
{
    float ax = x < 0.0f ? -x : x;
    float z = x * x;
    float small = -5.70498872745e-3f;
    small = small * z + 2.06390887954e-2f;
    small = small * z - 5.37397155531e-2f;
    small = small * z + 1.33314422036e-1f;
    small = small * z - 3.33332819422e-1f;
    small = small * z * x + x;
    float big = 1.0f - 2.0f / (expf_inl(2.0f * ax) + 1.0f);
    big = x < 0.0f ? -big : big;
    return ax < 0.625f ? small : big; /* NaN: big, which is NaN */
}

FX_INLINE double tanh_inl(double x)
{
    double ax = x < 0.0 ? -x : x;
    double z = x * x;
    double pz = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
                - 1.61468768441708447952e3;
    double qz = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
                + 4.84406305325125486048e3;
    double small = x + x * z * (pz / qz);
    double big = 1.0 - 2.0 / (exp_inl(2.0 * ax) + 1.0);
    big = x < 0.0 ? -big : big;
    return ax < 0.625 ? small : big;
}

/* 2 atanh(s) = log((1 + s) / (1 - s)) for |s| <= 0.1716: the odd series to
 * s^23, below 1e-17 there. */
FX_INLINE double two_atanh_small(double s)
{
    double s2 = s * s;
    double p = 1.0 / 23.0;
    p = p * s2 + 1.0 / 21.0;
    p = p * s2 + 1.0 / 19.0;
    p = p * s2 + 1.0 / 17.0;
    p = p * s2 + 1.0 / 15.0;
    p = p * s2 + 1.0 / 13.0;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    return 2.0 * s + 2.0 * s * s2 * p;
}

#define FX_LN2_HI 6.93147180369123816490e-01
#define FX_LN2_LO 1.90821492927058770002e-10

/* log(x) for the row sums (x >= 1 in practice; any positive normal x
 * works): x = 2^e * u with u in [sqrt(1/2), sqrt(2)), log u = 2 atanh(s),
 * s = (u - 1) / (u + 1), |s| <= 0.1716.  Vectorisable, unlike libm's log
 * without -ffast-math; the small-m kernel needs one log per row, which at
 * m = 10 would otherwise cost more than the row itself.  NaN, 0 and
 * negative inputs give NaN / -inf. */
FX_INLINE double log_inl(double x)
{
    uint64_t b = d_to_bits(x);
    /* The biased exponent as a double through the 2^52 magic number:
     * AVX2 has no int64 -> double conversion, and a conversion would keep
     * the tile kernel's per-row loop from vectorising. */
    double e = bits_to_d((b >> 52) | 0x4330000000000000ULL) - (4503599627370496.0 + 1023.0);
    double u = bits_to_d((b & 0x000FFFFFFFFFFFFFULL) | 0x3FF0000000000000ULL);
    int big = u > 1.4142135623730951;
    u = big ? u * 0.5 : u;
    e = big ? e + 1.0 : e;
    double s = (u - 1.0) / (u + 1.0);
    double res = e * FX_LN2_HI + (two_atanh_small(s) + e * FX_LN2_LO);
    res = x == 0.0 ? -HUGE_VAL : res;
    res = x == HUGE_VAL ? x : res;
    return (x < 0.0 || x != x) ? NAN : res;
}

/* log1p(t) and, in *inv_1pt, 1 / (1 + t), for t in [0, 1] (the two-class
 * kernel's t = exp(-|z1 - z0|)), from one division: u = 1 + t is halved
 * at most once into v in [sqrt(1/2), sqrt(2)), and r = 1 / ((v + 1) u)
 * gives both 1 / (v + 1) = u r, for log_inl's s, and 1 / u = (v + 1) r.
 * Each is within 2 ulp; log(u) is then corrected for the rounding of
 * u = 1 + t (exact log1p for tiny t).  The division is the costliest
 * instruction of the two-class kernel's per-row arithmetic. */
FX_INLINE double log1p_recip_unit(double t, double *inv_1pt)
{
    double u = 1.0 + t;
    int big = u > 1.4142135623730951;
    double v = big ? 0.5 * u : u;
    double e = big ? 1.0 : 0.0;
    double r = 1.0 / ((v + 1.0) * u);
    double inv_u = (v + 1.0) * r;
    double s = (v - 1.0) * (u * r);
    *inv_1pt = inv_u;
    double log_u = e * FX_LN2_HI + (two_atanh_small(s) + e * FX_LN2_LO);
    return log_u - ((u - 1.0) - t) * inv_u;
}

void fx_log1p_recip_unit_array(const double *t, ptrdiff_t n, double *log1p_out,
                                double *recip_out)
{
    for (ptrdiff_t k = 0; k < n; ++k)
        log1p_out[k] = log1p_recip_unit(t[k], &recip_out[k]);
}

float fx_expf(float x) { return expf_inl(x); }
double fx_log(double x) { return log_inl(x); }
double fx_exp(double x) { return exp_inl(x); }
float fx_tanhf(float x) { return tanhf_inl(x); }
double fx_tanh(double x) { return tanh_inl(x); }

/* ---- square block transposes for the small-m tile kernel ----
 *
 * transpose_X(src, ss, dst, ds): dst[j * ds + i] = src[i * ss + j] for
 * i, j < V (V = 8 floats or 4 doubles: one 32-byte vector a row), with
 * unaligned loads and stores.  GCC and clang lower the generic vector
 * shuffles below to each clone's own instructions (unpack/shuffle/permute
 * on AVX2 and AVX-512, pairs of 128-bit shuffles on baseline x86-64 and
 * NEON), so one source serves every target; other compilers get the
 * scalar loop.  Moving the block through registers instead of one element
 * at a time is what makes the tile kernel's transposes cheap. */
#if defined(__GNUC__) && (defined(__clang__) || __GNUC__ >= 12)
#define FX_VEC_TRANSPOSE 1
typedef float fx_v8f __attribute__((vector_size(32)));
typedef double fx_v4d __attribute__((vector_size(32)));
#define FX_SHUF __builtin_shufflevector

/* Named vectors, not arrays: GCC keeps arrays of vectors in memory, which
 * doubled the instruction count of the transposes. */
#define FX_LD(v, p) memcpy(&(v), (p), sizeof(v))
#define FX_ST(p, v) memcpy((p), &(v), sizeof(v))

FX_INLINE void transpose_f(const float *src, ptrdiff_t ss, float *dst, ptrdiff_t ds)
{
    fx_v8f r0, r1, r2, r3, r4, r5, r6, r7;
    FX_LD(r0, src);
    FX_LD(r1, src + ss);
    FX_LD(r2, src + 2 * ss);
    FX_LD(r3, src + 3 * ss);
    FX_LD(r4, src + 4 * ss);
    FX_LD(r5, src + 5 * ss);
    FX_LD(r6, src + 6 * ss);
    FX_LD(r7, src + 7 * ss);
    /* interleave pairs of rows, then pairs of pairs, then the 128-bit halves */
#define FX_IL(a, b) FX_SHUF(a, b, 0, 8, 1, 9, 4, 12, 5, 13)
#define FX_IH(a, b) FX_SHUF(a, b, 2, 10, 3, 11, 6, 14, 7, 15)
#define FX_PL(a, b) FX_SHUF(a, b, 0, 1, 8, 9, 4, 5, 12, 13)
#define FX_PH(a, b) FX_SHUF(a, b, 2, 3, 10, 11, 6, 7, 14, 15)
#define FX_HL(a, b) FX_SHUF(a, b, 0, 1, 2, 3, 8, 9, 10, 11)
#define FX_HH(a, b) FX_SHUF(a, b, 4, 5, 6, 7, 12, 13, 14, 15)
    fx_v8f t0 = FX_IL(r0, r1), t1 = FX_IH(r0, r1), t2 = FX_IL(r2, r3), t3 = FX_IH(r2, r3);
    fx_v8f t4 = FX_IL(r4, r5), t5 = FX_IH(r4, r5), t6 = FX_IL(r6, r7), t7 = FX_IH(r6, r7);
    fx_v8f u0 = FX_PL(t0, t2), u1 = FX_PH(t0, t2), u2 = FX_PL(t1, t3), u3 = FX_PH(t1, t3);
    fx_v8f u4 = FX_PL(t4, t6), u5 = FX_PH(t4, t6), u6 = FX_PL(t5, t7), u7 = FX_PH(t5, t7);
    fx_v8f c0 = FX_HL(u0, u4), c1 = FX_HL(u1, u5), c2 = FX_HL(u2, u6), c3 = FX_HL(u3, u7);
    fx_v8f c4 = FX_HH(u0, u4), c5 = FX_HH(u1, u5), c6 = FX_HH(u2, u6), c7 = FX_HH(u3, u7);
#undef FX_IL
#undef FX_IH
#undef FX_PL
#undef FX_PH
#undef FX_HL
#undef FX_HH
    /* In row order: tile_out's write-ahead relies on it. */
    FX_ST(dst, c0);
    FX_ST(dst + ds, c1);
    FX_ST(dst + 2 * ds, c2);
    FX_ST(dst + 3 * ds, c3);
    FX_ST(dst + 4 * ds, c4);
    FX_ST(dst + 5 * ds, c5);
    FX_ST(dst + 6 * ds, c6);
    FX_ST(dst + 7 * ds, c7);
}

FX_INLINE void transpose_d(const double *src, ptrdiff_t ss, double *dst, ptrdiff_t ds)
{
    fx_v4d r0, r1, r2, r3;
    FX_LD(r0, src);
    FX_LD(r1, src + ss);
    FX_LD(r2, src + 2 * ss);
    FX_LD(r3, src + 3 * ss);
    fx_v4d t0 = FX_SHUF(r0, r1, 0, 4, 2, 6), t1 = FX_SHUF(r0, r1, 1, 5, 3, 7);
    fx_v4d t2 = FX_SHUF(r2, r3, 0, 4, 2, 6), t3 = FX_SHUF(r2, r3, 1, 5, 3, 7);
    fx_v4d c0 = FX_SHUF(t0, t2, 0, 1, 4, 5), c1 = FX_SHUF(t1, t3, 0, 1, 4, 5);
    fx_v4d c2 = FX_SHUF(t0, t2, 2, 3, 6, 7), c3 = FX_SHUF(t1, t3, 2, 3, 6, 7);
    FX_ST(dst, c0);
    FX_ST(dst + ds, c1);
    FX_ST(dst + 2 * ds, c2);
    FX_ST(dst + 3 * ds, c3);
}
#undef FX_LD
#undef FX_ST
#undef FX_SHUF
#else
#define FX_VEC_TRANSPOSE 0
#define FX_SCALAR_TRANSPOSE(NAME, T, V)                                         \
    FX_INLINE void NAME(const T *src, ptrdiff_t ss, T *dst, ptrdiff_t ds)      \
    {                                                                          \
        for (int i = 0; i < V; ++i)                                            \
            for (int j = 0; j < V; ++j)                                        \
                dst[j * ds + i] = src[i * ss + j];                             \
    }
FX_SCALAR_TRANSPOSE(transpose_f, float, 8)
FX_SCALAR_TRANSPOSE(transpose_d, double, 4)
#undef FX_SCALAR_TRANSPOSE
#endif

/* ---- the row loops, once per element type ---- */
#define FX_T float
#define FX_NAME(base) base##_f
#define FX_EXP expf_inl
#define FX_EXPNEG expnegf_inl
#define FX_TANH tanhf_inl
#define FX_VL 8
#define FX_TRANSPOSE transpose_f
#include "_rowops_t.h"
#include "_logprob_t.h"
#undef FX_T
#undef FX_NAME
#undef FX_EXP
#undef FX_EXPNEG
#undef FX_TANH
#undef FX_VL
#undef FX_TRANSPOSE

#define FX_T double
#define FX_NAME(base) base##_d
#define FX_EXP exp_inl
#define FX_EXPNEG expneg_inl
#define FX_TANH tanh_inl
#define FX_VL 4
#define FX_TRANSPOSE transpose_d
#include "_rowops_t.h"
#include "_logprob_t.h"
#undef FX_T
#undef FX_NAME
#undef FX_EXP
#undef FX_EXPNEG
#undef FX_TANH
#undef FX_VL
#undef FX_TRANSPOSE

/* ---- half precision (IEEE float16 and bfloat16) <-> float32 ----
 *
 * Branch-free (selects only), so that `omp simd` vectorises them; the
 * kernels convert blocks of rows to float32, compute there, and convert
 * the outputs back.  float16 -> float32 is exact: the half's exponent and
 * mantissa shifted into float position and rescaled by 2^112 (which also
 * turns half subnormals into the right float normals), infinities and NaNs
 * given the all-ones exponent.  float32 -> float16 rounds to nearest even
 * (the method of F. Giesen's float_to_half_fast3_rtne): overflow to
 * infinity, results below the smallest normal through a magic-number
 * addition whose rounding is the hardware's, NaN to a quiet NaN.
 * bfloat16 is the top half of a float32: widening is a shift, narrowing
 * rounds to nearest even by adding 0x7fff plus the lowest kept bit, and
 * keeps NaNs quiet. */
FX_INLINE float f16_to_f(uint16_t h)
{
    uint32_t em = (uint32_t)(h & 0x7fffu);
    uint32_t shifted = em << 13;
    float scaled = bits_to_f(shifted) * 5.192296858534828e33f; /* 2^112 */
    uint32_t r = em >= 0x7c00u ? (shifted | 0x7f800000u) : f_to_bits(scaled);
    return bits_to_f(r | ((uint32_t)(h & 0x8000u) << 16));
}

FX_INLINE uint16_t f_to_f16(float f)
{
    const uint32_t f32_inf = 255u << 23, f16_max = (127u + 16u) << 23;
    const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    uint32_t u = f_to_bits(f);
    uint32_t sign = u & 0x80000000u;
    u ^= sign;
    uint32_t special = u > f32_inf ? 0x7e00u : 0x7c00u; /* NaN, or overflow */
    uint32_t sub = f_to_bits(bits_to_f(u) + bits_to_f(denorm_magic)) - denorm_magic;
    uint32_t mant_odd = (u >> 13) & 1u;
    uint32_t norm = (u + ((uint32_t)(15 - 127) << 23) + 0xfffu + mant_odd) >> 13;
    uint32_t o = u >= f16_max ? special : (u < (113u << 23) ? sub : norm);
    return (uint16_t)(o | (sign >> 16));
}

FX_INLINE float bf16_to_f(uint16_t h) { return bits_to_f((uint32_t)h << 16); }

FX_INLINE uint16_t f_to_bf16(float f)
{
    uint32_t u = f_to_bits(f);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

FX_CLONES void fx_half_to_float(const uint16_t *src, ptrdiff_t n, float *dst, int bf16)
{
    if (bf16) {
#pragma omp simd
        for (ptrdiff_t k = 0; k < n; ++k)
            dst[k] = bf16_to_f(src[k]);
    } else {
#pragma omp simd
        for (ptrdiff_t k = 0; k < n; ++k)
            dst[k] = f16_to_f(src[k]);
    }
}

FX_CLONES void fx_float_to_half(const float *src, ptrdiff_t n, uint16_t *dst, int bf16)
{
    if (bf16) {
#pragma omp simd
        for (ptrdiff_t k = 0; k < n; ++k)
            dst[k] = f_to_bf16(src[k]);
    } else {
#pragma omp simd
        for (ptrdiff_t k = 0; k < n; ++k)
            dst[k] = f_to_f16(src[k]);
    }
}

/* Labels r in [0, n) equal to ignore_index, and in *out_of_range those
 * that are neither ignore_index nor in [0, m): one branch-free pass that
 * vectorises (the label check of an unweighted "mean" at few classes). */
FX_CLONES ptrdiff_t fx_count_labels(const void *labels, int labels_64bit, ptrdiff_t n,
                                    ptrdiff_t m, long long ignore_index,
                                    ptrdiff_t *out_of_range)
{
    ptrdiff_t ignored = 0, bad = 0;
    if (labels_64bit) {
        const int64_t *y = (const int64_t *)labels;
#pragma omp simd reduction(+ : ignored, bad)
        for (ptrdiff_t r = 0; r < n; ++r) {
            ignored += y[r] == (int64_t)ignore_index;
            bad += (y[r] != (int64_t)ignore_index) & ((uint64_t)y[r] >= (uint64_t)m);
        }
    } else {
        const int32_t *y = (const int32_t *)labels;
#pragma omp simd reduction(+ : ignored, bad)
        for (ptrdiff_t r = 0; r < n; ++r) {
            ignored += (int64_t)y[r] == (int64_t)ignore_index;
            bad += ((int64_t)y[r] != (int64_t)ignore_index) &
                   ((uint64_t)(int64_t)y[r] >= (uint64_t)m);
        }
    }
    *out_of_range = bad;
    return ignored;
}

/* Pairwise summation in a fixed order (blocks of 8 summed in lanes, then
 * halves recursively), as NumPy does: error O(log n * eps) instead of
 * O(n * eps), and the same bits whatever the thread count. */
double fx_pairwise_sum(const double *x, ptrdiff_t n)
{
    if (n <= 128) {
        double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        ptrdiff_t k = 0;
        for (; k + 8 <= n; k += 8)
            for (int j = 0; j < 8; ++j)
                lane[j] += x[k + j];
        double s = ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
                   ((lane[4] + lane[5]) + (lane[6] + lane[7]));
        for (; k < n; ++k)
            s += x[k];
        return s;
    }
    ptrdiff_t half = (n / 2) & ~(ptrdiff_t)7;
    return fx_pairwise_sum(x, half) + fx_pairwise_sum(x + half, n - half);
}

const char *fx_simd_dispatch(void)
{
#if FX_HAVE_CLONES
    /* The tests of GCC's target_clones resolver, in its order (it reads the
     * same ISA-level bits of libgcc's CPU model), so that this names the
     * clone the loader really picked. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return "x86-64-v4 (AVX-512) of target_clones x86-64-v4/x86-64-v3/default";
    if (__builtin_cpu_supports("x86-64-v3"))
        return "x86-64-v3 (AVX2+FMA) of target_clones x86-64-v4/x86-64-v3/default";
    return "default (baseline) of target_clones x86-64-v4/x86-64-v3/default";
#else
    return "single variant (compile-time ISA, no run-time dispatch)";
#endif
}
