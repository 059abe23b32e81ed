/*
 * The one serial-or-parallel driver every kernel runs through.
 *
 * A job is a span function and a pointer to its arguments: fn(job, lo, hi,
 * scratch) does items [lo, hi) (rows, or blocks of rows) with `scratch`,
 * a private buffer of the job's size, and returns a combination of the
 * FX_* codes below.  The driver either calls it once on the calling thread
 * or splits the items into one contiguous chunk per thread of a team (the
 * static split of fx_span_start, so that every item is written by exactly
 * one thread and results do not depend on the split), gives each thread
 * its own scratch, times each chunk for the governor (_governor.h) and
 * combines the codes.  Whether to use a team is the caller's decision
 * (small inputs, a forked child and the governor all say no): it passes
 * threads <= 1 for a serial call.
 *
 * The span functions are the only per-kernel code: their row loops stay
 * inlined and type-specialised; one indirect call per chunk is all the
 * driver adds.
 */
#ifndef FASTXENT_DRIVER_H
#define FASTXENT_DRIVER_H

#include <stddef.h>
#include <stdlib.h>

#include "_governor.h"

/* What a span (and the driver) reports, bits combined with |: a scratch
 * allocation failed; a label was outside [0, m) when a kernel read it
 * although the check before had passed (another thread wrote to the labels
 * meanwhile). */
#define FX_OUT_OF_MEMORY 1
#define FX_LABEL_RACED 2

typedef int (*fx_span_fn)(void *job, ptrdiff_t lo, ptrdiff_t hi, void *scratch);

/* Items [0, n) of the job.  Serial (threads <= 1): one call, with
 * `own_scratch` if given, else scratch_bytes of fresh scratch (none when 0).
 * Parallel: a team of `threads`, each thread with scratch of its own; a
 * thread whose allocation fails skips its chunk and FX_OUT_OF_MEMORY is
 * returned.  threads must not exceed FX_TEAM_MAX. */
static inline int fx_run_spans(fx_span_fn fn, void *job, ptrdiff_t n, size_t scratch_bytes,
                               void *own_scratch, int threads)
{
    int code = 0;
#ifdef _OPENMP
    if (threads > 1) {
        double busy[FX_TEAM_MAX];
        double t0 = fx_wtime();
#pragma omp parallel num_threads(threads) reduction(| : code)
        {
            void *scratch = scratch_bytes ? malloc(scratch_bytes) : NULL;
            int ready = scratch_bytes == 0 || scratch != NULL;
            if (!ready)
                code |= FX_OUT_OF_MEMORY;
#pragma omp for schedule(static)
            for (int c = 0; c < threads; ++c) {
                double tc = fx_wtime();
                if (ready)
                    code |= fn(job, fx_span_start(c, threads, n),
                               fx_span_start(c + 1, threads, n), scratch);
                busy[c] = fx_wtime() - tc;
            }
            free(scratch);
        }
        fx_gov_report(t0, busy, threads);
        return code;
    }
#endif
    void *scratch = own_scratch;
    if (scratch == NULL && scratch_bytes) {
        scratch = malloc(scratch_bytes);
        if (scratch == NULL)
            return FX_OUT_OF_MEMORY;
    }
    code = fn(job, 0, n, scratch);
    if (scratch != own_scratch)
        free(scratch);
    return code;
}

#endif
