/* bfloat16 GEMM (entry point, CPU check, emulation): C = alpha op(A) op(B) + beta C for float32 A, B and C, with the elements of
 * A and B rounded to bfloat16 (round to nearest even) and the products summed in float32.
 *
 * Native path (AVX512-BF16 CPUs, the avx512 table in use): the BLIS loops of the float GEMM
 * with pairs of k as the unit. A and B are packed as 32-bit words holding the bf16 of two
 * consecutive k, which is what vdpbf16ps multiplies; B is packed once for all of k (half the
 * bytes of float32), A per block of MC rows and KCP pairs. Threads split the row blocks; each
 * tile of C is computed by one thread in one order, so results do not depend on the count.
 * Elsewhere: A and B are rounded to bf16 values in float32 copies and multiplied by the float
 * GEMM (the same products; the sums may round differently, within float32 accuracy). */
#include <string.h>
#include "ref/common.h"
#include "gemm/bf16.h"

#ifdef FASTNN_HAVE_AVX512BF16   /* csrc/kernels/avx512bf16/ukernel.c */
fastnn_status fastnn_gemm_bf16_avx512(int64_t m, int64_t n, int64_t k, float alpha,
                                      const float *a, int64_t rsa, int64_t csa, const float *b,
                                      int64_t rsb, int64_t csb, float beta, float *c,
                                      int64_t ldc);
#endif

int fastnn_bf16_native(void) {
#ifdef FASTNN_HAVE_AVX512BF16
    static int cpu = -1;
    if (cpu < 0) {
        __builtin_cpu_init();
        cpu = __builtin_cpu_supports("avx512bf16") ? 1 : 0;
    }
    return cpu && strcmp(fastnn_table()->name, "avx512") == 0;
#else
    return 0;
#endif
}

/* Float32 copies of A (m x k) and B (k x n), row-major, rounded to bf16 values. */
static fastnn_status gemm_bf16_emulated(int64_t m, int64_t n, int64_t k, float alpha,
                                        const float *a, int64_t rsa, int64_t csa,
                                        const float *b, int64_t rsb, int64_t csb, float beta,
                                        float *c, int64_t ldc) {
    size_t abytes, bbytes;
    if (fastnn_bytes3(&abytes, m, k, sizeof(float)) || fastnn_bytes3(&bbytes, k, n, sizeof(float)) ||
        abytes + bbytes < abytes)
        return FASTNN_ENOMEM;
    float *ar = malloc(abytes + bbytes);
    if (!ar) return FASTNN_ENOMEM;
    float *br = ar + m * k;
    for (int64_t i = 0; i < m; i++)
        for (int64_t p = 0; p < k; p++) {
            uint32_t u = fastnn_bf16_round(a[i * rsa + p * csa]);
            memcpy(&ar[i * k + p], &u, sizeof u);
        }
    for (int64_t p = 0; p < k; p++)
        for (int64_t j = 0; j < n; j++) {
            uint32_t u = fastnn_bf16_round(b[p * rsb + j * csb]);
            memcpy(&br[p * n + j], &u, sizeof u);
        }
    fastnn_status st = fastnn_gemm_run(FASTNN_F32, 0, 0, m, n, k, alpha, ar, k, br, n, beta, c,
                                       ldc, NULL);
    free(ar);
    return st;
}

fastnn_status fastnn_gemm_bf16(int transa, int transb, int64_t m, int64_t n, int64_t k,
                               float alpha, const float *a, int64_t lda, const float *b,
                               int64_t ldb, float beta, float *c, int64_t ldc) {
    fastnn_status st = fastnn_gemm_check(transa, transb, m, n, k, a, lda, b, ldb, c, ldc);
    if (st != FASTNN_OK) return st;
    if (m == 0 || n == 0 || k == 0 || alpha == 0)   /* no products: C = beta C */
        return fastnn_gemm_run(FASTNN_F32, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta,
                               c, ldc, NULL);
    int64_t rsa = transa ? 1 : lda, csa = transa ? lda : 1;
    int64_t rsb = transb ? 1 : ldb, csb = transb ? ldb : 1;
#ifdef FASTNN_HAVE_AVX512BF16
    if (fastnn_bf16_native())
        return fastnn_gemm_bf16_avx512(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, ldc);
#endif
    return gemm_bf16_emulated(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, ldc);
}
