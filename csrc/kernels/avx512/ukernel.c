/* GEMM micro-kernels and packing for the avx512 table (float 8x32, double 14x16). */
#include <immintrin.h>
#include "fastnn/dispatch.h"
#include "../transpose8x8.h"

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
 * one element at a time; a partial panel (nb < 32 columns) transposes zeros for the missing
 * rows (the first layer's 27-column weight gradient spent a third of its time in the scalar
 * gather this replaced). Other layouts and the last depths: generic. */
static void spack_b_avx512_t(float *dst, const float *b, int64_t rsb, int64_t csb, int64_t p0,
                             int64_t kc, int64_t j0, int64_t nc, int64_t panel) {
    int64_t jr = panel * 32, nb = nc - jr < 32 ? nc - jr : 32;
    if (rsb != 1 || nb < 1) {
        spack_b_avx512(dst, b, rsb, csb, p0, kc, j0, nc, panel);
        return;
    }
    float *d = dst + panel * 32 * kc;
    const float *src = b + p0 + (j0 + jr) * csb;
    int64_t p = 0, kc16 = kc / 16 * 16;
    for (int h = 0; h < 2 && h * 16 < nb; h++) {   /* one 16-row band of W: 16 streams */
        int64_t rows = nb - h * 16 < 16 ? nb - h * 16 : 16;
        const float *band = src + h * 16 * csb;
        for (p = 0; p < kc16; p += 16) {
            /* rows by one pointer stepped by csb, and a full band without per-row tests:
             * GCC kept sixteen row offsets for the tested loads, spilled, 15 % slower */
            __m512 r[16];
            const float *q = band + p;
            if (rows == 16)
                for (int j = 0; j < 16; j++, q += csb) r[j] = _mm512_loadu_ps(q);
            else
                for (int j = 0; j < 16; j++, q += csb)
                    r[j] = j < rows ? _mm512_loadu_ps(q) : _mm512_setzero_ps();
            transpose16x16(r);
            for (int t = 0; t < 16; t++) _mm512_storeu_ps(d + (p + t) * 32 + h * 16, r[t]);
        }
    }
    if (nb <= 16)   /* the second band is all zeros */
        for (p = 0; p < kc16; p++) _mm512_storeu_ps(d + p * 32 + 16, _mm512_setzero_ps());
    for (p = kc16; p < kc; p++)
        for (int j = 0; j < 32; j++) d[p * 32 + j] = j < nb ? src[p + j * csb] : 0.0f;
}

/* A panels of a row-major A (csa == 1: x, or dZ in dX = dZ W): 8 rows x 16 depths at a time
 * through an 8 x 16 register transpose (32-bit, 64-bit, then two 128-bit rounds), instead of
 * 128 scalar stores at a stride of 8; a short panel (mb < 8 rows) transposes zeros for the
 * missing rows. Other layouts and the last depths: generic. */
static void spack_a_avx512_t(float *dst, const float *a, int64_t rsa, int64_t csa, int64_t i0,
                             int64_t mc, int64_t p0, int64_t kc, int64_t panel) {
    int64_t ir = panel * 8, mb = mc - ir < 8 ? mc - ir : 8;
    if (csa != 1 || mb < 1) {
        spack_a_avx512(dst, a, rsa, csa, i0, mc, p0, kc, panel);
        return;
    }
    float *d = dst + panel * 8 * kc;
    const float *src = a + (i0 + ir) * rsa + p0;
    int64_t p = 0;
    for (; p + 16 <= kc; p += 16) {
        __m512 r[8], t[8], u[8], w[8];
        const float *s = src + p;   /* rows by one pointer (see spack_b_avx512_t) */
        if (mb == 8)
            for (int i = 0; i < 8; i++, s += rsa) r[i] = _mm512_loadu_ps(s);
        else
            for (int i = 0; i < 8; i++, s += rsa)
                r[i] = i < mb ? _mm512_loadu_ps(s) : _mm512_setzero_ps();
        for (int i = 0; i < 8; i += 2) {   /* t: rows i, i+1 interleaved */
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int h = 0; h < 8; h += 4) {   /* u[h + j]: depth 4L + j of rows h..h+3, lane L */
            __m512d a0 = _mm512_castps_pd(t[h]), a1 = _mm512_castps_pd(t[h + 1]);
            __m512d b0 = _mm512_castps_pd(t[h + 2]), b1 = _mm512_castps_pd(t[h + 3]);
            u[h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
            u[h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
            u[h + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
            u[h + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
        }
        for (int j = 0; j < 4; j++) {      /* w[j]: lanes 0-1, w[4 + j]: lanes 2-3, both halves */
            w[j] = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x44);
            w[4 + j] = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xEE);
        }
        for (int q = 0; q < 8; q++) {      /* depths 2q, 2q + 1, all 8 rows each */
            int L = q / 2, j0 = 2 * (q % 2);
            __m512 x = L < 2 ? w[j0] : w[4 + j0], y = L < 2 ? w[j0 + 1] : w[4 + j0 + 1];
            __m512 o = (L % 2 == 0) ? _mm512_shuffle_f32x4(x, y, 0x88)
                                    : _mm512_shuffle_f32x4(x, y, 0xDD);
            _mm512_storeu_ps(d + (p + 2 * q) * 8, o);
        }
    }
    for (; p < kc; p++)
        for (int i = 0; i < 8; i++) d[p * 8 + i] = i < mb ? src[i * rsa + p] : 0.0f;
}

#define T double
#define IT int64_t
#define VL 8
#define MR 14
#define NV 2
#define PFX(name) d##name##_avx512
#include "../instantiate.inc"
#undef T
#undef IT
#undef VL
#undef MR
#undef NV
#undef PFX

/* direct convolution kernels (float): csrc/kernels/dconv.inc */
#define T float
#define VL 16
#define ROWS 8
#define NV 1
#define NAME sdconv1_avx512
#include "../dconv.inc"
#undef ROWS
#undef NV
#undef NAME
#define ROWS 8
#define NV 2
#define NAME sdconv2_avx512
#include "../dconv.inc"
#undef ROWS
#undef NV
#undef NAME
#undef T
#undef VL

/* direct weight-gradient kernels (float): csrc/kernels/dconvw.inc; rows x kw x nv
 * accumulators + rows x nv dy vectors + nv x vectors within the register file */
#define T float
#define VL 16
#define ROWS 4
#define KWC 5
#define NV 1
#define NAME sdconvw1_avx512
#include "../dconvw.inc"
#undef ROWS
#undef KWC
#undef NV
#undef NAME
#define ROWS 2
#define KWC 5
#define NV 2
#define NAME sdconvw2_avx512
#include "../dconvw.inc"
#undef ROWS
#undef KWC
#undef NV
#undef NAME
#define ROWS 4
#define KWC 3
#define NV 1
#define NAME sdconvw3_avx512
#include "../dconvw.inc"
#undef ROWS
#undef KWC
#undef NV
#undef NAME
#define ROWS 2
#define KWC 3
#define NV 2
#define NAME sdconvw4_avx512
#include "../dconvw.inc"
#undef ROWS
#undef KWC
#undef NV
#undef NAME
#undef T
#undef VL

/* micro-kernels (MR rows; 4, 2, 1 rows), mr, nr, mc, kc, nc, packing of A and B */
/* C^T tiles of the swapped x @ W.T (gemm.inc) into C: see tstore8. */
static void ststore_avx512(const float *tile, float *c, int64_t ldc, float alpha, float beta,
                          const float *bias, int relu) {
    tstore8(tile, 8, 32, c, ldc, alpha, beta, bias, relu);
}

const fastnn_sgemm_cfg fastnn_sgemm_avx512 = {sukr_avx512, {sukr4_avx512, sukr2_avx512, sukr1_avx512},
                                            8, 32, 160, 384, 4096, spack_a_avx512_t, spack_b_avx512_t,
    sukrs_avx512, {sukrs4_avx512, sukrs2_avx512, sukrs1_avx512},
    {sdconv1_avx512, sdconv2_avx512, NULL, NULL}, {8, 8, 0, 0}, {16, 32, 0, 0},
    {sdconvw1_avx512, sdconvw2_avx512, sdconvw3_avx512, sdconvw4_avx512, NULL, NULL}, {5, 5, 3, 3, 0, 0}, {16, 32, 16, 32, 0, 0}, {4, 2, 4, 2, 0, 0},
    .ukra = sukra_avx512, .tails_a = {sukra4_avx512, sukra2_avx512, sukra1_avx512},
    .tstore = ststore_avx512};
const fastnn_dgemm_cfg fastnn_dgemm_avx512 = {dukr_avx512, {dukr4_avx512, dukr2_avx512, dukr1_avx512},
                                            14, 16, 112, 256, 2048, dpack_a_avx512, dpack_b_avx512,
    dukrs_avx512, {dukrs4_avx512, dukrs2_avx512, dukrs1_avx512},
    .ukra = dukra_avx512, .tails_a = {dukra4_avx512, dukra2_avx512, dukra1_avx512}};
