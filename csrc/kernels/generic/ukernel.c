/* GEMM micro-kernels for the generic table (float 6x8, double 6x4). */
#include "fastnn/dispatch.h"

#define T float
#define IT int32_t
#define VL 4
#define MR 6
#define NV 2
#define NAME sgemm_ukr_generic
#define PACK_A spack_a_generic
#define PACK_B spack_b_generic
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
#define VL 2
#define MR 6
#define NV 2
#define NAME dgemm_ukr_generic
#define PACK_A dpack_a_generic
#define PACK_B dpack_b_generic
#include "../ukernel.inc"
#include "../pack.inc"

/* micro-kernel, mr, nr, mc, kc, nc, packing of A and B */
const fastnn_sgemm_cfg fastnn_sgemm_generic = {sgemm_ukr_generic, 6, 8, 120, 256, 2048, spack_a_generic, spack_b_generic};
const fastnn_dgemm_cfg fastnn_dgemm_generic = {dgemm_ukr_generic, 6, 4, 96, 256, 1024, dpack_a_generic, dpack_b_generic};
