/* Helpers shared by the kernel sources. Internal. */
#ifndef FASTNN_COMMON_H
#define FASTNN_COMMON_H
#include <stdint.h>
#include <stdlib.h>
#include "fastnn/fastnn.h"
#include "fastnn/dispatch.h"

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

/* Threads for an element-wise loop over n items. */
static inline int fastnn_threads_elem(int64_t n) {
    return n < FASTNN_PAR_MIN ? 1 : fastnn_threads_for((double)n * 16.0);
}
#endif
