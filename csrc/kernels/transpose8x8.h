/* Shared by the avx2 and avx512 kernel files (compiled with their own ISA flags). */
#ifndef FASTNN_TRANSPOSE8X8_H
#define FASTNN_TRANSPOSE8X8_H
#include <immintrin.h>

/* 8 x 8 float transpose in AVX registers: r[i] holds row i; on return r[i] holds column i
 * (32-bit and 64-bit interleaves within 128-bit lanes, then a swap of the lanes). */
static inline void transpose8x8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* rows <= 8 rows of 8 floats from q, stride apart, into r (zeros for the missing rows): by one
 * pointer stepped by the stride, and without per-row tests when all 8 are there (GCC kept a
 * register per row offset for the tested loads, and spilled them in the 16-row AVX-512 pack). */
static inline void load_rows8(__m256 r[8], const float *q, int64_t stride, int64_t rows) {
    if (rows == 8)
        for (int j = 0; j < 8; j++, q += stride) r[j] = _mm256_loadu_ps(q);
    else
        for (int j = 0; j < 8; j++, q += stride)
            r[j] = j < rows ? _mm256_loadu_ps(q) : _mm256_setzero_ps();
}

/* A full MR x NR tile of C^T (row-major, row stride NR; MR <= 8 rows, NR a multiple of 8)
 * into C: c[j*ldc + i] = act(alpha * tile[i][j] + beta * c[j*ldc + i] + bias[i]) for i < MR,
 * j < NR, act ReLU (relu != 0: NaN and -0 pass) or identity, in the order of the
 * micro-kernels' own epilogue (so the same bits as the unswapped product); bias may be NULL.
 * Used where C = x @ W.T is computed as C^T = W @ x^T (gemm.inc), 8 x 8 blocks through
 * registers. */
static inline void tstore8(const float *tile, int mr, int nr, float *c, int64_t ldc,
                           float alpha, float beta, const float *bias, int relu) {
    __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(mr),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 vb = bias ? _mm256_maskload_ps(bias, lanes) : _mm256_setzero_ps();
    __m256 va = _mm256_set1_ps(alpha), vbeta = _mm256_set1_ps(beta), zero = _mm256_setzero_ps();
    for (int j0 = 0; j0 < nr; j0 += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; i++) r[i] = i < mr ? _mm256_loadu_ps(tile + i * nr + j0) : zero;
        transpose8x8(r);
        for (int q = 0; q < 8; q++) {
            float *cq = c + (j0 + q) * ldc;
            __m256 v = _mm256_mul_ps(r[q], va);
            if (beta != 0) v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_maskload_ps(cq, lanes), vbeta));
            if (bias) v = _mm256_add_ps(v, vb);
            if (relu) v = _mm256_andnot_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ), v);
            if (mr == 8) _mm256_storeu_ps(cq, v);
            else _mm256_maskstore_ps(cq, lanes, v);
        }
    }
}
#endif
