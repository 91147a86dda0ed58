/* bfloat16 GEMM on AVX512-BF16 (see csrc/gemm/bf16.c): packing and the BLIS loops here, so
 * that they are compiled with AVX-512, and the micro-kernel (vdpbf16ps): an 8 x 32 tile of
 * C in float32.
 * a: packed A panel, one 32-bit word per row and pair of k: bf16 of A(i, 2q) in the low half,
 *    of A(i, 2q + 1) in the high half, at a[q*8 + i];
 * b: packed B panel, the same pairs per column, at b[q*32 + j];
 * c[i, j] = alpha * sum_q (A(i,2q) B(2q,j) + A(i,2q+1) B(2q+1,j)) + beta * c[i, j]
 * (beta == 0: c not read). Each vdpbf16ps adds both products of a pair to the float32 sum. */
#include <immintrin.h>
#include <stdint.h>
#include "ref/common.h"
#include "gemm/bf16.h"

#define BF16_MR 8
#define BF16_NR 32
#define BF16_MC 160
#define BF16_KCP 256   /* pairs of k per block of A (512 k) */

static void ukr_bf16(int64_t kp, const uint32_t *a, const uint32_t *b, float *c,
                            int64_t ldc, float alpha, float beta) {
    __m512 acc[8][2];
    for (int i = 0; i < 8; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int64_t q = 0; q < kp; q++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
        for (int i = 0; i < 8; i++) {
            __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
        }
        a += 8;
        b += 32;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int i = 0; i < 8; i++)
        for (int v = 0; v < 2; v++) {
            float *ci = c + i * ldc + v * 16;
            __m512 r = _mm512_mul_ps(acc[i][v], va);
            if (beta != 0) r = _mm512_fmadd_ps(_mm512_loadu_ps(ci), vb, r);
            _mm512_storeu_ps(ci, r);
        }
}

/* Panel jp of B (all kp pairs, columns zero-padded): dst[q*NR + j]. */
static void pack_b_bf16(uint32_t *dst, const float *b, int64_t rsb, int64_t csb, int64_t k,
                        int64_t n, int64_t kp, int64_t jp) {
    static const float zeros[BF16_NR];
    for (int64_t q = 0; q < kp; q++) {
        const float *r0 = b + 2 * q * rsb + jp * BF16_NR * csb;
        const float *r1 = 2 * q + 1 < k ? r0 + rsb : zeros;
        uint32_t *d = dst + q * BF16_NR;
        if (csb == 1 && (jp + 1) * BF16_NR <= n) {   /* rows of B: vectorized */
            for (int j = 0; j < BF16_NR; j++) d[j] = fastnn_bf16_pair(r0[j], r1[j]);
        } else {
            int64_t s1 = r1 == zeros ? 0 : csb;
            for (int64_t j = 0; j < BF16_NR; j++)
                d[j] = jp * BF16_NR + j < n ? fastnn_bf16_pair(r0[j * csb], r1[j * s1]) : 0;
        }
    }
}

/* Panel ip (MR rows from i0, zero-padded) of A for pairs [q0, q0 + kq): dst[q*MR + i]. */
static void pack_a_bf16(uint32_t *dst, const float *a, int64_t rsa, int64_t csa, int64_t k,
                        int64_t i0, int64_t mb, int64_t q0, int64_t kq) {
    for (int64_t q = 0; q < kq; q++) {
        int64_t p = 2 * (q0 + q);
        int odd = p + 1 < k;
        for (int64_t i = 0; i < BF16_MR; i++) {
            const float *ai = a + (i0 + i) * rsa + p * csa;
            dst[q * BF16_MR + i] = i < mb ? fastnn_bf16_pair(ai[0], odd ? ai[csa] : 0.0f) : 0;
        }
    }
}

fastnn_status fastnn_gemm_bf16_avx512(int64_t m, int64_t n, int64_t k, float alpha,
                                      const float *a, int64_t rsa, int64_t csa, const float *b,
                                      int64_t rsb, int64_t csb, float beta, float *c,
                                      int64_t ldc) {
    int64_t kp = (k + 1) / 2, npan = (n + BF16_NR - 1) / BF16_NR;
    int64_t kcp = fastnn_min64(BF16_KCP, kp), nib = (m + BF16_MC - 1) / BF16_MC;
    int nt = fastnn_threads_for(2.0 * (double)m * (double)n * (double)k);
    size_t bwords = (size_t)(npan * kp * BF16_NR + 15) / 16 * 16;
    size_t awords = (size_t)(BF16_MC * kcp + 15) / 16 * 16;
    uint32_t *scratch = fastnn_scratch((bwords + (size_t)nt * awords) * sizeof(uint32_t));
    if (!scratch) return FASTNN_ENOMEM;
    uint32_t *bpack = scratch;
    FASTNN_PARALLEL_RANGE(npan, nt,
        for (int64_t jp = lo_; jp < hi_; jp++)
            pack_b_bf16(bpack + jp * kp * BF16_NR, b, rsb, csb, k, n, kp, jp));
    FASTNN_PARALLEL_RANGE(nib, nt, {
        uint32_t *apack = scratch + bwords + (size_t)fastnn_thread_id() * awords;
        for (int64_t ib = lo_; ib < hi_; ib++) {
            int64_t i0 = ib * BF16_MC, mc = fastnn_min64(BF16_MC, m - i0);
            int64_t npa = (mc + BF16_MR - 1) / BF16_MR;
            for (int64_t q0 = 0; q0 < kp; q0 += kcp) {
                int64_t kq = fastnn_min64(kcp, kp - q0);
                float be = q0 == 0 ? beta : 1.0f;
                for (int64_t ip = 0; ip < npa; ip++)
                    pack_a_bf16(apack + ip * BF16_MR * kq, a, rsa, csa, k, i0 + ip * BF16_MR,
                                fastnn_min64(BF16_MR, mc - ip * BF16_MR), q0, kq);
                for (int64_t jp = 0; jp < npan; jp++) {
                    int64_t nb = fastnn_min64(BF16_NR, n - jp * BF16_NR);
                    const uint32_t *bp = bpack + (jp * kp + q0) * BF16_NR;
                    for (int64_t ip = 0; ip < npa; ip++) {
                        int64_t mb = fastnn_min64(BF16_MR, mc - ip * BF16_MR);
                        const uint32_t *ap = apack + ip * BF16_MR * kq;
                        float *cij = c + (i0 + ip * BF16_MR) * ldc + jp * BF16_NR;
                        if (mb == BF16_MR && nb == BF16_NR) {
                            ukr_bf16(kq, ap, bp, cij, ldc, alpha, be);
                            continue;
                        }
                        float tile[BF16_MR * BF16_NR];
                        ukr_bf16(kq, ap, bp, tile, BF16_NR, 1.0f, 0.0f);
                        for (int64_t i = 0; i < mb; i++)
                            for (int64_t j = 0; j < nb; j++) {
                                float v = alpha * tile[i * BF16_NR + j];
                                float *cv = cij + i * ldc + j;
                                *cv = be == 0 ? v : v + be * *cv;
                            }
                    }
                }
            }
        }
    });
    return FASTNN_OK;
}

