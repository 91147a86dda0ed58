/* GEMM micro-kernels and packing for the avx2 table (float 6x16, double 6x8). */
#include <immintrin.h>
#include "fastnn/dispatch.h"

#define T float
#define IT int32_t
#define VL 8
#define MR 6
#define NV 2
#define PFX(name) s##name##_avx2
#include "../instantiate.inc"
#undef T
#undef IT
#undef VL
#undef MR
#undef NV
#undef PFX

#define T double
#define IT int64_t
#define VL 4
#define MR 6
#define NV 2
#define PFX(name) d##name##_avx2
#include "../instantiate.inc"
#undef T
#undef IT
#undef VL
#undef MR
#undef NV
#undef PFX

#include "../transpose8x8.h"

/* B panels of the x @ W.T layout (rsb == 1: each column of op(B) is a contiguous row of W):
 * 16 columns x 8 depths at a time through two 8 x 8 register transposes, instead of the
 * generic pack's gather of one element at a time (13 % of an MLP epoch at batch 32 on this
 * table); a partial panel transposes zeros for its missing columns. Other layouts and the
 * last depths: generic. */
static void spack_b_avx2_t(float *dst, const float *b, int64_t rsb, int64_t csb, int64_t p0,
                           int64_t kc, int64_t j0, int64_t nc, int64_t panel) {
    int64_t jr = panel * 16, nb = nc - jr < 16 ? nc - jr : 16;
    if (rsb != 1 || nb < 1) {
        spack_b_avx2(dst, b, rsb, csb, p0, kc, j0, nc, panel);
        return;
    }
    float *d = dst + panel * 16 * kc;
    const float *src = b + p0 + (j0 + jr) * csb;
    int64_t p = 0, kc8 = kc / 8 * 8;
    for (int h = 0; h < 2; h++) {   /* one band of 8 rows of W at a time */
        int64_t rows = nb - h * 8 < 0 ? 0 : nb - h * 8 < 8 ? nb - h * 8 : 8;
        const float *band = src + h * 8 * csb;
        for (p = 0; p < kc8; p += 8) {
            __m256 r[8];
            load_rows8(r, band + p, csb, rows);
            transpose8x8(r);
            for (int t = 0; t < 8; t++) _mm256_storeu_ps(d + (p + t) * 16 + h * 8, r[t]);
        }
    }
    for (p = kc8; p < kc; p++)
        for (int j = 0; j < 16; j++) d[p * 16 + j] = j < nb ? src[p + j * csb] : 0.0f;
}

/* A panels of a row-major A (csa == 1: x, or dZ in dX = dZ W): the 6 rows x 8 depths of a
 * panel through an 8 x 8 register transpose (two zero rows), each depth's 6 values stored
 * as an 8-wide vector into the next depth's place, which the next store overwrites (the last
 * depth of the block goes through the scalar tail, so nothing is written past the panel);
 * a short panel transposes zeros for its missing rows. Other layouts: generic. */
static void spack_a_avx2_t(float *dst, const float *a, int64_t rsa, int64_t csa, int64_t i0,
                           int64_t mc, int64_t p0, int64_t kc, int64_t panel) {
    int64_t ir = panel * 6, mb = mc - ir < 6 ? mc - ir : 6;
    if (csa != 1 || mb < 1) {
        spack_a_avx2(dst, a, rsa, csa, i0, mc, p0, kc, panel);
        return;
    }
    float *d = dst + panel * 6 * kc;
    const float *src = a + (i0 + ir) * rsa + p0;
    int64_t p = 0;
    for (; p + 9 <= kc; p += 8) {   /* p + 8 < kc: the 2 lanes past depth p + 7 stay inside */
        __m256 r[8];
        load_rows8(r, src + p, rsa, mb);
        transpose8x8(r);
        for (int q = 0; q < 8; q++) _mm256_storeu_ps(d + (p + q) * 6, r[q]);
    }
    for (; p < kc; p++)
        for (int i = 0; i < 6; i++) d[p * 6 + i] = i < mb ? src[i * rsa + p] : 0.0f;
}

/* direct convolution kernels (float): csrc/kernels/dconv.inc */
#define T float
#define VL 8
#define ROWS 4
#define NV 1
#define NAME sdconv1_avx2
#include "../dconv.inc"
#undef ROWS
#undef NV
#undef NAME
#define ROWS 4
#define NV 2
#define NAME sdconv2_avx2
#include "../dconv.inc"
#undef ROWS
#undef NV
#undef NAME
#define ROWS 4
#define NV 3
#define NAME sdconv3_avx2
#include "../dconv.inc"
#undef ROWS
#undef NV
#undef NAME
#define ROWS 2
#define NV 4
#define NAME sdconv4_avx2
#include "../dconv.inc"
#undef ROWS
#undef NV
#undef NAME
#undef T
#undef VL

/* direct weight-gradient kernels (float): csrc/kernels/dconvw.inc; rows x kw x nv
 * accumulators + rows x nv dy vectors + nv x vectors within the register file */
#define T float
#define VL 8
#define ROWS 2
#define KWC 5
#define NV 1
#define NAME sdconvw1_avx2
#include "../dconvw.inc"
#undef ROWS
#undef KWC
#undef NV
#undef NAME
#define ROWS 1
#define KWC 5
#define NV 2
#define NAME sdconvw2_avx2
#include "../dconvw.inc"
#undef ROWS
#undef KWC
#undef NV
#undef NAME
#define ROWS 2
#define KWC 3
#define NV 1
#define NAME sdconvw3_avx2
#include "../dconvw.inc"
#undef ROWS
#undef KWC
#undef NV
#undef NAME
#define ROWS 1
#define KWC 3
#define NV 2
#define NAME sdconvw4_avx2
#include "../dconvw.inc"
#undef ROWS
#undef KWC
#undef NV
#undef NAME
#define ROWS 1
#define KWC 3
#define NV 3
#define NAME sdconvw5_avx2
#include "../dconvw.inc"
#undef ROWS
#undef KWC
#undef NV
#undef NAME
#undef T
#undef VL

/* micro-kernels (MR rows; 4, 2, 1 rows), mr, nr, mc, kc, nc, packing of A and B */
/* C^T tiles of the swapped x @ W.T (gemm.inc) into C: see tstore8. */
static void ststore_avx2(const float *tile, float *c, int64_t ldc, float alpha, float beta,
                          const float *bias, int relu) {
    tstore8(tile, 6, 16, c, ldc, alpha, beta, bias, relu);
}

const fastnn_sgemm_cfg fastnn_sgemm_avx2 = {sukr_avx2, {sukr4_avx2, sukr2_avx2, sukr1_avx2},
                                            6, 16, 144, 256, 4096, spack_a_avx2_t, spack_b_avx2_t,
    sukrs_avx2, {sukrs4_avx2, sukrs2_avx2, sukrs1_avx2},
    {sdconv1_avx2, sdconv2_avx2, sdconv3_avx2, sdconv4_avx2}, {4, 4, 4, 2}, {8, 16, 24, 32},
    {sdconvw1_avx2, sdconvw2_avx2, sdconvw3_avx2, sdconvw4_avx2, sdconvw5_avx2, NULL}, {5, 5, 3, 3, 3, 0}, {8, 16, 8, 16, 24, 0}, {2, 1, 2, 1, 1, 0},
    .ukra = sukra_avx2, .tails_a = {sukra4_avx2, sukra2_avx2, sukra1_avx2},
    .tstore = ststore_avx2};
const fastnn_dgemm_cfg fastnn_dgemm_avx2 = {dukr_avx2, {dukr4_avx2, dukr2_avx2, dukr1_avx2},
                                            6, 8, 96, 256, 2048, dpack_a_avx2, dpack_b_avx2,
    dukrs_avx2, {dukrs4_avx2, dukrs2_avx2, dukrs1_avx2},
    .ukra = dukra_avx2, .tails_a = {dukra4_avx2, dukra2_avx2, dukra1_avx2}};
