/* Helpers shared by the kernel sources. Internal. */
#ifndef FASTNN_COMMON_H
#define FASTNN_COMMON_H
#include <stdint.h>
#include <stdlib.h>
#include <stdatomic.h>
#include "fastnn/fastnn.h"
#include "fastnn/dispatch.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* Loops outside the kernel tables run on any x86-64 (SSE2) unless cloned for wider vectors:
 * target_clones builds an AVX2 and an AVX-512 version next to the baseline and picks one at
 * load time (GCC's ifunc). The clones give bit-identical results: -ffp-contract=off keeps
 * every operation IEEE-rounded, and a cloned loop keeps each element's operations in order.
 * GCC only: clang refuses (an error, not a warning) an AVX-512 clone that calls a baseline
 * helper with a 64-byte vector argument, always-inline or not, which is what the loops on
 * GCC vector types (vec.h, vexp.h, the norm kernels) do; clang builds them for the baseline. */
#ifndef FASTNN_CLONES
#if defined(__x86_64__) && defined(__has_attribute) && !defined(FASTNN_NO_CLONES) && \
    !defined(__clang__)
#if __has_attribute(target_clones)
#define FASTNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef FASTNN_CLONES
#define FASTNN_CLONES
#endif
#endif

/* Element count below which an element-wise kernel stays on one thread. */
#define FASTNN_PAR_MIN 65536
/* Fixed block of items summed sequentially before the block sums are added in order:
 * the partition of a reduction never depends on the thread count. */
#define FASTNN_SUM_BLOCK 1024

/* A size: >= 0 and its extent in bytes (8 per element at most) representable. */
#define FASTNN_CHECK_N(n) do { if ((n) < 0 || (n) > INT64_MAX / 8) return FASTNN_EINVAL; } while (0)
/* A [rows, cols] matrix: both sizes valid and rows * cols * 8 bytes representable. */
#define FASTNN_CHECK_2D(rows, cols) do {                                                  \
        int64_t n2d_;                                                                     \
        if ((rows) < 0 || (cols) < 0 || __builtin_mul_overflow((rows), (cols), &n2d_) ||  \
            n2d_ > INT64_MAX / 8)                                                         \
            return FASTNN_EINVAL;                                                         \
    } while (0)

/* Overflow-checked size arithmetic: 0 and *out set, or 1 when the true value does not fit.
 * Every size or offset computed from caller-given sizes goes through these, so a huge size
 * is refused instead of wrapping around to a small buffer. */
static inline int fastnn_mul3_i64(int64_t *out, int64_t a, int64_t b, int64_t c) {
    return __builtin_mul_overflow(a, b, out) || __builtin_mul_overflow(*out, c, out);
}
static inline int fastnn_madd_i64(int64_t *out, int64_t a, int64_t b, int64_t c) {
    /* *out = a * b + c */
    return __builtin_mul_overflow(a, b, out) || __builtin_add_overflow(*out, c, out);
}
static inline int fastnn_bytes3(size_t *out, int64_t a, int64_t b, size_t c) {
    /* *out = a * b * c bytes, rounded up to 64 */
    if (a < 0 || b < 0) return 1;
    return __builtin_mul_overflow((size_t)a, (size_t)b, out) ||
           __builtin_mul_overflow(*out, c, out) || __builtin_add_overflow(*out, (size_t)63, out) ||
           ((*out = *out / 64 * 64), 0);
}
/* The elements a row-major [rows, cols] matrix with row stride ld spans: (rows-1)*ld+cols. */
static inline int fastnn_span_i64(int64_t *out, int64_t rows, int64_t cols, int64_t ld) {
    if (rows == 0 || cols == 0) { *out = 0; return 0; }
    return fastnn_madd_i64(out, rows - 1, ld, cols);
}
#define FASTNN_CHECK_PTR(p, n) do { if ((n) > 0 && !(p)) return FASTNN_ENULL; } while (0)

/* GEMM tile epilogues (csrc/ref/activations.inc); see fastnn_epilogue. */
void fastnn_tile_bias_act_f32(fastnn_act act, float p, float p2, float *c, int64_t rsc,
                              int64_t csc, const float *bias, int64_t brs, int64_t bcs,
                              int64_t mb, int64_t nb);
void fastnn_tile_bias_act_f64(fastnn_act act, double p, double p2, double *c, int64_t rsc,
                              int64_t csc, const double *bias, int64_t brs, int64_t bcs,
                              int64_t mb, int64_t nb);
void fastnn_tile_act_backward_f32(fastnn_act act, float p, float p2, float *c, int64_t rsc,
                                  int64_t csc, const float *x, int64_t xrs, int64_t xcs,
                                  int64_t mb, int64_t nb);
void fastnn_tile_act_backward_f64(fastnn_act act, double p, double p2, double *c, int64_t rsc,
                                  int64_t csc, const double *x, int64_t xrs, int64_t xcs,
                                  int64_t mb, int64_t nb);
/* A 64-byte aligned scratch buffer of at least `bytes`, owned by the calling thread and
 * reused by its next call (freed when the thread exits); NULL when out of memory. */
void *fastnn_scratch(size_t bytes);
/* The same, from one of the thread's independent buffers (slot FASTNN_SCRATCH_GEMM is the
 * one fastnn_scratch returns). */
enum { FASTNN_SCRATCH_GEMM = 0, FASTNN_SCRATCH_CONV = 1, FASTNN_SCRATCH_SLOTS = 2 };
void *fastnn_scratch_slot(int slot, size_t bytes);
/* Argument checks shared by the GEMM entry points. */
fastnn_status fastnn_gemm_check(int transa, int transb, int64_t m, int64_t n, int64_t k,
                                const void *a, int64_t lda, const void *b, int64_t ldb,
                                const void *c, int64_t ldc);


static inline int64_t fastnn_min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- teams: one parallel region around many kernels (the fused training step) ----------
 * Inside a team every thread calls the same kernels in the same order (SPMD). A kernel that
 * finds fastnn_cur_team set shares its work among the team instead of opening a parallel
 * region, and returns after a team barrier, so its results are visible to every thread.
 * Serial work inside a team runs on thread 0 with fastnn_cur_team cleared, then meets the
 * others in fastnn_team_share, which also hands thread 0's status (or pointer) to all, so
 * every thread takes the same branches. The barrier spins briefly, then sleeps. */
typedef struct {
    int nthreads;
    _Atomic unsigned gen;          /* barrier generation: the word sleepers wait on */
    _Atomic int arrived, sleepers;
    _Atomic int64_t next;          /* work counter for dynamic scheduling */
    void *ptr[2];                  /* thread 0's value, by barrier generation parity */
    double waited;                 /* seconds thread 0 spent waiting in barriers */
} fastnn_team;

extern _Thread_local fastnn_team *fastnn_cur_team;

void fastnn_team_init(fastnn_team *t, int nthreads);
double fastnn_now(void);   /* monotonic seconds */
/* Wait until every thread of the team has arrived; returns the generation waited on. */
unsigned fastnn_team_barrier(fastnn_team *t);
/* Barrier; then every thread gets the value thread 0 passed. */
fastnn_status fastnn_team_share(fastnn_team *t, fastnn_status st);
void *fastnn_team_share_ptr(fastnn_team *t, void *p);

/* Serial work: st = expr, computed once. Inside the team (team not NULL) thread 0 computes
 * it with fastnn_cur_team cleared (its kernels run alone) and every thread gets its status. */
#define FASTNN_ON_THREAD0(team, st, expr)                                                 \
    do {                                                                                  \
        fastnn_status s0_ = FASTNN_OK;                                                    \
        if (!(team)) {                                                                    \
            (st) = (expr);                                                                \
            break;                                                                        \
        }                                                                                 \
        if (fastnn_thread_id() == 0) {                                                    \
            fastnn_cur_team = NULL;                                                       \
            s0_ = (expr);                                                                 \
            fastnn_cur_team = (team);                                                     \
        }                                                                                 \
        (st) = fastnn_team_share((team), s0_);                                            \
    } while (0)

static inline int fastnn_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* This thread's contiguous share [*lo, *hi) of [0, n) inside a parallel region. */
static inline void fastnn_thread_range(int64_t n, int64_t *lo, int64_t *hi) {
#ifdef _OPENMP
    int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    int64_t t = 0, nt = 1;
#endif
    int64_t chunk = (n + nt - 1) / nt;
    *lo = fastnn_min64(n, t * chunk);
    *hi = fastnn_min64(n, *lo + chunk);
}

/* Run the statement (the variadic part) once per thread on its range [lo_, hi_) of [0, n).
 * With one thread it runs on [0, n) without entering OpenMP at all (no team set-up); inside
 * a fastnn_team it uses the team's threads. Each
 * item is computed by one thread whatever the split, so results never depend on it. */
#define FASTNN_PARALLEL_RANGE(n, want, ...)                                        \
    do {                                                                               \
        int nt_ = (want);                                                              \
        fastnn_team *tm_ = fastnn_cur_team;                                            \
        if (tm_) {   /* inside a team: the first nt_ threads share [0, n), all meet */   \
            int use_ = nt_ < tm_->nthreads ? (nt_ > 0 ? nt_ : 1) : tm_->nthreads;       \
            int id_ = fastnn_thread_id();                                              \
            if (id_ < use_) {                                                          \
                int64_t n_ = (n), chunk_ = (n_ + use_ - 1) / use_;                     \
                int64_t lo_ = fastnn_min64(n_, id_ * chunk_);                          \
                int64_t hi_ = fastnn_min64(n_, lo_ + chunk_);                          \
                __VA_ARGS__;                                                           \
            }                                                                          \
            fastnn_team_barrier(tm_);                                                  \
        } else if (nt_ <= 1) {                                                         \
            int64_t lo_ = 0, hi_ = (n);                                                \
            __VA_ARGS__;                                                               \
        } else {                                                                       \
            _Pragma("omp parallel num_threads(nt_)")                                   \
            {                                                                          \
                int64_t lo_, hi_;                                                      \
                fastnn_thread_range((n), &lo_, &hi_);                                  \
                __VA_ARGS__;                                                           \
            }                                                                          \
        }                                                                              \
    } while (0)

/* Threads for an element-wise loop over n items. */
static inline int fastnn_threads_elem(int64_t n) {
    return n < (fastnn_cur_team ? 4096 : FASTNN_PAR_MIN) ? 1 : fastnn_threads_for((double)n * 16.0);
}
#endif
