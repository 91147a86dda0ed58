/* Reference GEMM (the specification and oracle) and the GEMM argument checks. */
#include "common.h"

#define FASTNN_TEMPLATE "gemm_ref.inc"
#include "template.h"

fastnn_status fastnn_gemm_check(int transa, int transb, int64_t m, int64_t n, int64_t k,
                                const void *a, int64_t lda, const void *b, int64_t ldb,
                                const void *c, int64_t ldc) {
    if (m < 0 || n < 0 || k < 0) return FASTNN_EINVAL;
    if (lda < (transa ? (m > 1 ? m : 1) : (k > 1 ? k : 1))) return FASTNN_EINVAL;
    if (ldb < (transb ? (k > 1 ? k : 1) : (n > 1 ? n : 1))) return FASTNN_EINVAL;
    if (ldc < (n > 1 ? n : 1)) return FASTNN_EINVAL;
    /* each operand's extent in elements (and in bytes, times 8) must fit: offsets never wrap */
    int64_t span;
    if (fastnn_span_i64(&span, transa ? k : m, transa ? m : k, lda) || span > INT64_MAX / 8 ||
        fastnn_span_i64(&span, transb ? n : k, transb ? k : n, ldb) || span > INT64_MAX / 8 ||
        fastnn_span_i64(&span, m, n, ldc) || span > INT64_MAX / 8)
        return FASTNN_EINVAL;
    if (m > 0 && n > 0 && !c) return FASTNN_ENULL;
    if (m > 0 && n > 0 && k > 0 && (!a || !b)) return FASTNN_ENULL;
    return FASTNN_OK;
}

fastnn_status fastnn_gemm_ref(fastnn_dtype dt, int transa, int transb, int64_t m, int64_t n,
                              int64_t k, double alpha, const void *a, int64_t lda,
                              const void *b, int64_t ldb, double beta, void *c, int64_t ldc) {
    fastnn_status st = fastnn_gemm_check(transa, transb, m, n, k, a, lda, b, ldb, c, ldc);
    if (st != FASTNN_OK) return st;
    if (dt == FASTNN_F32)
        gemm_ref_f32(transa, transb, m, n, k, (float)alpha, a, lda, b, ldb, (float)beta, c, ldc);
    else if (dt == FASTNN_F64)
        gemm_ref_f64(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    else
        return FASTNN_EINVAL;
    return FASTNN_OK;
}
