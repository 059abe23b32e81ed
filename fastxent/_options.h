/*
 * What every loss option means, written once for every kernel.
 *
 * The kernels differ only in how they reduce a row (row by row, in tiles of
 * rows transposed, or the two-class closed form); this header owns what
 * they do with the reductions: the options (fx_options, with the public
 * names), each class's target mass q_k, the gradient's scale of a row, and
 * the per-row finisher that turns a row's reductions into its loss and its
 * gradient's softmax weight.  The per-row form (see the module docstring of
 * _kernels.pyx) is, with q_k the target mass, Q = sum_k q_k,
 * dot = sum_k q_k (z_k - max), lse = max + log S and b = s / D:
 *
 *     loss = s (Q log S - dot + z_loss lse^2)
 *     grad_k = (b (Q + 2 z_loss lse) softmax_k - b q_k) cap'(z_k)
 *
 * Adding an option means a field here, its meaning in one of the functions
 * below, and the matching field of the Python spec (fastxent/_spec.py).
 */
#ifndef FASTXENT_OPTIONS_H
#define FASTXENT_OPTIONS_H

#include <stddef.h>

typedef struct fx_options {
    /* the public options */
    double label_smoothing; /* epsilon in [0, 1]; 0: off */
    double z_loss;          /* coefficient of lse^2; 0: off */
    double softcap;         /* c of c tanh(z / c); 0: off */
    double grad_denom;      /* the gradient's divisor D: 1, or the "mean" denominator */
    /* derived from those for rows of m classes by fx_options_for */
    double label_mass;   /* 1 - epsilon: the share of the label (or of the probabilities) */
    double uniform_mass; /* epsilon / m: every class's share of the smoothing */
    double unit_scale;   /* 1 / D: the gradient scale of a row of weight 1 */
    int scale_by_reciprocal; /* 1 / D is finite: b = s (1 / D) */
} fx_options;

static inline fx_options fx_options_for(double label_smoothing, double z_loss, double softcap,
                                        double grad_denom, ptrdiff_t m)
{
    fx_options o;
    o.label_smoothing = label_smoothing;
    o.z_loss = z_loss;
    o.softcap = softcap;
    /* IEEE division throughout, as PyTorch: a zero denominator (weights
     * that cancel, or all zero) gives inf/NaN gradients; ignored rows are
     * zeroed explicitly, so "everything ignored" still has a zero gradient. */
    o.grad_denom = grad_denom;
    o.label_mass = 1.0 - label_smoothing;
    o.uniform_mass = m > 0 ? label_smoothing / (double)m : 0.0;
    o.unit_scale = 1.0 / grad_denom;
    o.scale_by_reciprocal = o.unit_scale - o.unit_scale == 0.0;
    return o;
}

/* Target mass.  Class indices: the label's own term (w_label the label's
 * class weight, 1 without weights) plus every class's uniform term;
 * probabilities: w_k ((1 - epsilon) y_k + epsilon / m). */
static inline double fx_label_mass(const fx_options *o, double w_label)
{
    return o->label_mass * w_label;
}

static inline double fx_uniform_mass(const fx_options *o, double w_k)
{
    return o->uniform_mass * w_k;
}

static inline double fx_prob_mass(const fx_options *o, double w_k, double y_k)
{
    return w_k * (o->label_mass * y_k + o->uniform_mass);
}

/* b = s / D.  Multiplying by 1 / D taken once (a division a row costs the
 * few-class kernels most of their per-row arithmetic) unless 1 / D
 * overflows (a subnormal or zero D), where it divides. */
static inline double fx_grad_scale(const fx_options *o, double s)
{
    return o->scale_by_reciprocal ? s * o->unit_scale : s / o->grad_denom;
}

/* fx_grad_scale of n rows at once, the choice made once for all of them
 * (the few-class kernels: a select between the two inside their row loop
 * would compute the vector division for every row). */
static inline void fx_grad_scales(const fx_options *o, const double *s, ptrdiff_t n, double *b)
{
    if (o->scale_by_reciprocal) {
        const double u = o->unit_scale;
#pragma omp simd
        for (ptrdiff_t r = 0; r < n; ++r)
            b[r] = s[r] * u;
    } else {
        const double d = o->grad_denom;
#pragma omp simd
        for (ptrdiff_t r = 0; r < n; ++r)
            b[r] = s[r] / d;
    }
}

/* The per-row finisher.  From a row's reductions, its maximum mx, log_s
 * (log of the sum of exp(z - mx), by the kernel's own log), Q and dot, with
 * s its sample weight and b = fx_grad_scale(o, s): its loss, its gradient's
 * softmax weight b (Q + 2 z_loss lse) (the kernel multiplies it by
 * softmax_k and subtracts b q_k), and lse. */
typedef struct fx_row {
    double loss;
    double softmax_weight;
    double lse;
} fx_row;

static inline fx_row fx_finish_row(const fx_options *o, double s, double b, double mx,
                                   double log_s, double Q, double dot)
{
    fx_row r;
    r.lse = mx + log_s;
    double loss = Q * log_s - dot;
    /* skipped when off: 0 * lse^2 would be NaN for an infinite lse */
    loss = o->z_loss != 0.0 ? loss + o->z_loss * r.lse * r.lse : loss;
    r.loss = s * loss;
    r.softmax_weight = b * (Q + 2.0 * o->z_loss * r.lse);
    return r;
}

#endif
