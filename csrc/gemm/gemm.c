/* Blocked GEMM driver and packing (baseline ISA); the micro-kernel comes from the table. */
#include <stdlib.h>
#include "../ref/common.h"

#define FASTNN_MAX_TILE (16 * 32)   /* largest MR x NR of any table */

typedef fastnn_sgemm_cfg cfg_f32;
typedef fastnn_dgemm_cfg cfg_f64;

#define FASTNN_TEMPLATE "gemm/gemm.inc"   /* found through -I csrc */
#include "../ref/template.h"

static int cfg_ok(int mr, int nr, int mc, int kc, int nc) {
    return mr > 0 && nr > 0 && mr * nr <= FASTNN_MAX_TILE && mc % mr == 0 && kc > 0 && nc % nr == 0 &&
           mc > 0 && nc > 0;
}

fastnn_status fastnn_sgemm_blocked(const fastnn_sgemm_cfg *cfg, int transa, int transb,
                                   int64_t m, int64_t n, int64_t k, float alpha,
                                   const float *a, int64_t lda, const float *b, int64_t ldb,
                                   float beta, float *c, int64_t ldc) {
    if (!cfg_ok(cfg->mr, cfg->nr, cfg->mc, cfg->kc, cfg->nc)) return FASTNN_EINVAL;
    return gemm_blocked_f32(cfg, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

fastnn_status fastnn_dgemm_blocked(const fastnn_dgemm_cfg *cfg, int transa, int transb,
                                   int64_t m, int64_t n, int64_t k, double alpha,
                                   const double *a, int64_t lda, const double *b, int64_t ldb,
                                   double beta, double *c, int64_t ldc) {
    if (!cfg_ok(cfg->mr, cfg->nr, cfg->mc, cfg->kc, cfg->nc)) return FASTNN_EINVAL;
    return gemm_blocked_f64(cfg, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
