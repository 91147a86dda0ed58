/* GEMM micro-kernels for the avx512 table (float 8x32, double 14x16). */
#include "fastnn/dispatch.h"

#define T float
#define IT int32_t
#define VL 16
#define MR 8
#define NV 2
#define NAME sgemm_ukr_avx512
#define PACK_A spack_a_avx512
#define PACK_B spack_b_avx512
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
#define VL 8
#define MR 14
#define NV 2
#define NAME dgemm_ukr_avx512
#define PACK_A dpack_a_avx512
#define PACK_B dpack_b_avx512
#include "../ukernel.inc"
#include "../pack.inc"

/* micro-kernel, mr, nr, mc, kc, nc, packing of A and B */
const fastnn_sgemm_cfg fastnn_sgemm_avx512 = {sgemm_ukr_avx512, 8, 32, 160, 384, 4096, spack_a_avx512, spack_b_avx512};
const fastnn_dgemm_cfg fastnn_dgemm_avx512 = {dgemm_ukr_avx512, 14, 16, 112, 256, 2048, dpack_a_avx512, dpack_b_avx512};
