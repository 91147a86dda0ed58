/* Blocked GEMM driver and packing (baseline ISA); the micro-kernel comes from the table.
 * Public entry points: fastnn_gemm, fastnn_gemm_bias_act, fastnn_gemm_act_backward. */
#include <stdlib.h>
#include "ref/common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define FASTNN_MAX_TILE (16 * 32)   /* largest MR x NR of any table */
#define FASTNN_BPACK_BYTES (16 << 20) /* packed B of one column block, all of k */
#define FASTNN_SMALL_M 2              /* up to this many rows of C: the unpacked path */
#define FASTNN_FEW_ROWS_B (1 << 20)   /* bytes of B read in place by 2-4 MR rows (L2) */

/* Bias and ReLU or identity, applied with the store of a tile: by the micro-kernel (bias along
 * C's rows: brs 0, bcs 1) or by cfg->tstore for C^T tiles (brs 1, bcs 0). */
static int epilogue_fusable(const fastnn_epilogue *ep, int64_t brs, int64_t bcs) {
    return ep && !ep->backward && !ep->update && (!ep->bias || (ep->brs == brs && ep->bcs == bcs)) &&
           (ep->act == FASTNN_ACT_RELU || ep->act == FASTNN_ACT_IDENTITY);
}
static int epilogue_in_regs(const fastnn_epilogue *ep) { return epilogue_fusable(ep, 0, 1); }

typedef fastnn_sgemm_cfg cfg_f32;
typedef fastnn_dgemm_cfg cfg_f64;
#define FASTNN_TEMPLATE "gemm/gemm.inc"   /* found through -I csrc */
#include "ref/template.h"

static int cfg_ok(int mr, int nr, int mc, int kc, int nc) {
    return mr > 0 && nr > 0 && mr * nr <= FASTNN_MAX_TILE && mc > 0 && mc % mr == 0 && kc > 0 &&
           nc > 0 && nc % nr == 0;
}

fastnn_status fastnn_gemm_run(fastnn_dtype dt, int transa, int transb, int64_t m, int64_t n,
                              int64_t k, double alpha, const void *a, int64_t lda,
                              const void *b, int64_t ldb, double beta, void *c, int64_t ldc,
                              const fastnn_epilogue *ep) {
    const fastnn_kernel_table *t = fastnn_table();
    if (dt == FASTNN_F32) {
        if (!cfg_ok(t->s.mr, t->s.nr, t->s.mc, t->s.kc, t->s.nc)) return FASTNN_EINVAL;
        return gemm_driver_f32(&t->s, transa, transb, m, n, k, (float)alpha, a, lda, b, ldb,
                               (float)beta, c, ldc, ep);
    }
    if (dt == FASTNN_F64) {
        if (!cfg_ok(t->d.mr, t->d.nr, t->d.mc, t->d.kc, t->d.nc)) return FASTNN_EINVAL;
        return gemm_driver_f64(&t->d, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c,
                               ldc, ep);
    }
    return FASTNN_EINVAL;
}

fastnn_status fastnn_gemm(fastnn_dtype dt, int transa, int transb, int64_t m, int64_t n,
                          int64_t k, double alpha, const void *a, int64_t lda, const void *b,
                          int64_t ldb, double beta, void *c, int64_t ldc) {
    fastnn_status st = fastnn_gemm_check(transa, transb, m, n, k, a, lda, b, ldb, c, ldc);
    if (st != FASTNN_OK) return st;
    return fastnn_gemm_run(dt, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                           NULL);
}

static int act_ok(fastnn_act act, double p) {
    return act >= FASTNN_ACT_IDENTITY && act <= FASTNN_ACT_SOFTPLUS &&
           !(act == FASTNN_ACT_SOFTPLUS && p == 0);
}

fastnn_status fastnn_gemm_bias_act(fastnn_dtype dt, int transa, int transb, int64_t m,
                                   int64_t n, int64_t k, double alpha, const void *a,
                                   int64_t lda, const void *b, int64_t ldb, double beta,
                                   void *c, int64_t ldc, const void *bias, fastnn_act act,
                                   double p, double p2) {
    fastnn_status st = fastnn_gemm_check(transa, transb, m, n, k, a, lda, b, ldb, c, ldc);
    if (st != FASTNN_OK) return st;
    if (!act_ok(act, p)) return FASTNN_EINVAL;
    fastnn_epilogue ep = {0, act, p, p2, bias, 0, 1, NULL, 0, 0};
    return fastnn_gemm_run(dt, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                           &ep);
}

fastnn_status fastnn_gemm_act_backward(fastnn_dtype dt, int transa, int transb, int64_t m,
                                       int64_t n, int64_t k, double alpha, const void *a,
                                       int64_t lda, const void *b, int64_t ldb, double beta,
                                       void *c, int64_t ldc, const void *x, int64_t ldx,
                                       fastnn_act act, double p, double p2) {
    fastnn_status st = fastnn_gemm_check(transa, transb, m, n, k, a, lda, b, ldb, c, ldc);
    if (st != FASTNN_OK) return st;
    if (!act_ok(act, p)) return FASTNN_EINVAL;
    if (m > 0 && n > 0 && !x) return FASTNN_ENULL;
    if (ldx < (n > 1 ? n : 1)) return FASTNN_EINVAL;
    fastnn_epilogue ep = {1, act, p, p2, NULL, 0, 0, x, ldx, 1};
    return fastnn_gemm_run(dt, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                           &ep);
}

fastnn_status fastnn_gemm_update(fastnn_dtype dt, int transa, int transb, int64_t m, int64_t n,
                                 int64_t k, const void *a, int64_t lda, const void *b,
                                 int64_t ldb, void *c, int64_t ldc, const fastnn_update *u) {
    fastnn_status st = fastnn_gemm_check(transa, transb, m, n, k, a, lda, b, ldb, c, ldc);
    if (st != FASTNN_OK) return st;
    if (!u) return FASTNN_ENULL;
    fastnn_epilogue ep = {0};
    ep.update = u;
    return fastnn_gemm_run(dt, transa, transb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc, &ep);
}
