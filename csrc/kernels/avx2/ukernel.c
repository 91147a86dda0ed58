/* GEMM micro-kernels for the avx2 table (float 6x16, double 6x8). */
#include "fastnn/dispatch.h"

#define T float
#define IT int32_t
#define VL 8
#define MR 6
#define NV 2
#define NAME sgemm_ukr_avx2
#define PACK_A spack_a_avx2
#define PACK_B spack_b_avx2
#include "../ukernel.inc"
#include "../pack.inc"
#undef PACK_A
#undef PACK_B
#undef T
#undef IT
#undef VL
#undef MR
#undef NV
#undef NAME

#define T double
#define IT int64_t
#define VL 4
#define MR 6
#define NV 2
#define NAME dgemm_ukr_avx2
#define PACK_A dpack_a_avx2
#define PACK_B dpack_b_avx2
#include "../ukernel.inc"
#include "../pack.inc"

/* micro-kernel, mr, nr, mc, kc, nc, packing of A and B */
const fastnn_sgemm_cfg fastnn_sgemm_avx2 = {sgemm_ukr_avx2, 6, 16, 144, 256, 4096, spack_a_avx2, spack_b_avx2};
const fastnn_dgemm_cfg fastnn_dgemm_avx2 = {dgemm_ukr_avx2, 6, 8, 96, 256, 2048, dpack_a_avx2, dpack_b_avx2};
