/*
 * When to stop using threads: the default thread count's governor.
 *
 * A parallel region whose threads share the cores with another parallel
 * program can take far longer than any of its threads worked: OpenMP
 * runtimes keep idle threads spinning for a while after each region
 * (libgomp's GOMP_SPINCOUNT), so two such programs on the same cores keep
 * every core busy, and a static split of the rows then waits for a thread
 * that the scheduler has not run yet.  One thread would have finished the
 * whole call in the time the team spent waiting.
 *
 * Each instrumented region records its start and every chunk's working
 * time.  A region whose wall time exceeds twice its longest chunk plus a
 * slack (the cost of starting and joining a team) was kept waiting; the
 * governor then has calls that asked for the default thread count run on
 * one thread for a back-off period, doubled while it keeps happening (up
 * to a bound) and reset by a region that was not kept waiting.  A thread
 * that was merely preempted while working lengthens its own chunk, so a
 * fairly shared machine does not count.  Results are the same bits at
 * every thread count, so switching changes nothing but time.
 *
 * The state is process-wide and updated with relaxed atomics (several
 * Python threads may call at once; a lost update only shifts a deadline).
 */
#ifndef FASTXENT_GOVERNOR_H
#define FASTXENT_GOVERNOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
static inline double fx_wtime(void) { return omp_get_wtime(); }
#else
static inline double fx_wtime(void) { return 0.0; }
#endif

/* Chunks (threads) whose times a region records: larger teams are not
 * instrumented. */
#define FX_TEAM_MAX 256
/* A region longer than 2 x its longest chunk + this is waiting, not working. */
#define FX_GOV_SLACK_NS 200000
#define FX_GOV_MIN_BACKOFF_NS 50000000    /* 50 ms */
#define FX_GOV_MAX_BACKOFF_NS 2000000000  /* 2 s */

#if defined(__GNUC__) || defined(__clang__)
#define FX_LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define FX_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#else /* MSVC: aligned 64-bit loads and stores are atomic on x64 and ARM64 */
#define FX_LOAD(p) (*(volatile int64_t *)(p))
#define FX_STORE(p, v) (*(volatile int64_t *)(p) = (v))
#endif

static int64_t fx_gov_serial_until_ns = 0;
static int64_t fx_gov_backoff_ns = FX_GOV_MIN_BACKOFF_NS;
static int64_t fx_gov_waits = 0; /* regions found waiting (diagnostics, tests) */

static inline int64_t fx_now_ns(void) { return (int64_t)(fx_wtime() * 1e9); }

/* Whether a call that asked for the default thread count should use one. */
static inline int fx_gov_serial(void)
{
    return fx_now_ns() < FX_LOAD(&fx_gov_serial_until_ns);
}

/* The end of a region that started at t0 (fx_wtime()) and whose T chunks
 * worked busy[0..T-1] seconds. */
static inline void fx_gov_report(double t0, const double *busy, ptrdiff_t T)
{
    double longest = 0.0;
    for (ptrdiff_t c = 0; c < T; ++c)
        longest = busy[c] > longest ? busy[c] : longest;
    int64_t now = fx_now_ns();
    int64_t wall = now - (int64_t)(t0 * 1e9);
    if (wall > (int64_t)(2.0 * longest * 1e9) + FX_GOV_SLACK_NS) {
        int64_t backoff = FX_LOAD(&fx_gov_backoff_ns);
        FX_STORE(&fx_gov_serial_until_ns, now + backoff);
        FX_STORE(&fx_gov_backoff_ns,
                 2 * backoff < FX_GOV_MAX_BACKOFF_NS ? 2 * backoff : FX_GOV_MAX_BACKOFF_NS);
        FX_STORE(&fx_gov_waits, FX_LOAD(&fx_gov_waits) + 1);
    } else if (now >= FX_LOAD(&fx_gov_serial_until_ns)) {
        FX_STORE(&fx_gov_backoff_ns, (int64_t)FX_GOV_MIN_BACKOFF_NS);
    }
}

static inline void fx_gov_reset(void)
{
    FX_STORE(&fx_gov_serial_until_ns, (int64_t)0);
    FX_STORE(&fx_gov_backoff_ns, (int64_t)FX_GOV_MIN_BACKOFF_NS);
    FX_STORE(&fx_gov_waits, (int64_t)0);
}

/* Where chunk c of T over n items starts (chunk c is [start(c), start(c + 1)):
 * contiguous, sizes differing by at most one, the static split).  A value,
 * not output pointers: a loop variable assigned in a Cython prange is
 * private to its thread, one written through a pointer would be shared. */
static inline ptrdiff_t fx_span_start(ptrdiff_t c, ptrdiff_t T, ptrdiff_t n)
{
    ptrdiff_t q = n / T, r = n % T;
    return c * q + (c < r ? c : r);
}

#endif
