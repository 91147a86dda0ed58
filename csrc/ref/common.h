/* Helpers shared by the kernel sources. Internal. */
#ifndef FASTNN_COMMON_H
#define FASTNN_COMMON_H
#include <stdint.h>
#include <stdlib.h>
#include "fastnn/fastnn.h"
#include "fastnn/dispatch.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* Element count below which an element-wise kernel stays on one thread. */
#define FASTNN_PAR_MIN 65536
/* Fixed block of items summed sequentially before the block sums are added in order:
 * the partition of a reduction never depends on the thread count. */
#define FASTNN_SUM_BLOCK 1024

#define FASTNN_CHECK_N(n) do { if ((n) < 0) return FASTNN_EINVAL; } while (0)
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
/* Argument checks shared by the GEMM entry points. */
fastnn_status fastnn_gemm_check(int transa, int transb, int64_t m, int64_t n, int64_t k,
                                const void *a, int64_t lda, const void *b, int64_t ldb,
                                const void *c, int64_t ldc);


static inline int64_t fastnn_min64(int64_t a, int64_t b) { return a < b ? a : b; }

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
 * With one thread it runs on [0, n) without entering OpenMP at all (no team set-up). Each
 * item is computed by one thread whatever the split, so results never depend on it. */
#define FASTNN_PARALLEL_RANGE(n, nthreads, ...)                                        \
    do {                                                                               \
        int nt_ = (nthreads);                                                          \
        if (nt_ <= 1) {                                                                \
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
    return n < FASTNN_PAR_MIN ? 1 : fastnn_threads_for((double)n * 16.0);
}
#endif
