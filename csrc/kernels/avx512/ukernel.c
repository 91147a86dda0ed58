/* GEMM micro-kernels and packing for the avx512 table (float 8x32, double 14x16). */
#include <immintrin.h>
#include "fastnn/dispatch.h"

#define T float
#define IT int32_t
#define VL 16
#define MR 8
#define NV 2
#define PFX(name) s##name##_avx512
#include "../instantiate.inc"
#undef T
#undef IT
#undef VL
#undef MR
#undef NV
#undef PFX

/* 16 x 16 float transpose in AVX-512 registers: r[i] holds row i; on return r[i] holds
 * column i. Three rounds: 32-bit, 64-bit and 128-bit interleaves. */
static inline void transpose16x16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
        __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
}

/* B panels of the x @ W.T layout (rsb == 1: each column of op(B) is a contiguous row of W):
 * 32 columns x 16 depths at a time through two register transposes, instead of gathering
 * one element at a time. Other layouts, partial panels and the last depths: generic. */
static void spack_b_avx512_t(float *dst, const float *b, int64_t rsb, int64_t csb, int64_t p0,
                             int64_t kc, int64_t j0, int64_t nc, int64_t panel) {
    int64_t jr = panel * 32;
    if (rsb != 1 || nc - jr < 32) {
        spack_b_avx512(dst, b, rsb, csb, p0, kc, j0, nc, panel);
        return;
    }
    float *d = dst + panel * 32 * kc;
    const float *src = b + p0 + (j0 + jr) * csb;
    int64_t p = 0;
    for (; p + 16 <= kc; p += 16)
        for (int h = 0; h < 2; h++) {
            __m512 r[16];
            for (int j = 0; j < 16; j++) r[j] = _mm512_loadu_ps(src + (h * 16 + j) * csb + p);
            transpose16x16(r);
            for (int q = 0; q < 16; q++) _mm512_storeu_ps(d + (p + q) * 32 + h * 16, r[q]);
        }
    for (; p < kc; p++)
        for (int j = 0; j < 32; j++) d[p * 32 + j] = src[p + j * csb];
}

#define T double
#define IT int64_t
#define VL 8
#define MR 14
#define NV 2
#define PFX(name) d##name##_avx512
#include "../instantiate.inc"

/* micro-kernels (MR rows; 4, 2, 1 rows), mr, nr, mc, kc, nc, packing of A and B */
const fastnn_sgemm_cfg fastnn_sgemm_avx512 = {sukr_avx512, {sukr4_avx512, sukr2_avx512, sukr1_avx512},
                                            8, 32, 160, 384, 4096, spack_a_avx512, spack_b_avx512_t,
    sukrs_avx512, {sukrs4_avx512, sukrs2_avx512, sukrs1_avx512}};
const fastnn_dgemm_cfg fastnn_dgemm_avx512 = {dukr_avx512, {dukr4_avx512, dukr2_avx512, dukr1_avx512},
                                            14, 16, 112, 256, 2048, dpack_a_avx512, dpack_b_avx512,
    dukrs_avx512, {dukrs4_avx512, dukrs2_avx512, dukrs1_avx512}};
