/* GEMM micro-kernels and packing for the avx2 table (float 6x16, double 6x8). */
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
const fastnn_sgemm_cfg fastnn_sgemm_avx2 = {sukr_avx2, {sukr4_avx2, sukr2_avx2, sukr1_avx2},
                                            6, 16, 144, 256, 4096, spack_a_avx2, spack_b_avx2,
    sukrs_avx2, {sukrs4_avx2, sukrs2_avx2, sukrs1_avx2},
    {sdconv1_avx2, sdconv2_avx2, sdconv3_avx2, sdconv4_avx2}, {4, 4, 4, 2}, {8, 16, 24, 32},
    {sdconvw1_avx2, sdconvw2_avx2, sdconvw3_avx2, sdconvw4_avx2, sdconvw5_avx2, NULL}, {5, 5, 3, 3, 3, 0}, {8, 16, 8, 16, 24, 0}, {2, 1, 2, 1, 1, 0}};
const fastnn_dgemm_cfg fastnn_dgemm_avx2 = {dukr_avx2, {dukr4_avx2, dukr2_avx2, dukr1_avx2},
                                            6, 8, 96, 256, 2048, dpack_a_avx2, dpack_b_avx2,
    dukrs_avx2, {dukrs4_avx2, dukrs2_avx2, dukrs1_avx2}};
