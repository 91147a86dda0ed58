/* GEMM micro-kernels for the avx512 table (float 8x32, double 14x16). */
#include "fastnn/dispatch.h"

#define T float
#define IT int32_t
#define VL 16
#define MR 8
#define NV 2
#define NAME sgemm_ukr_avx512
#include "../ukernel.inc"
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
#include "../ukernel.inc"

/*                                             ukr             mr   nr   mc   kc   nc */
const fastnn_sgemm_cfg fastnn_sgemm_avx512 = {sgemm_ukr_avx512, 8, 32, 160, 384, 4096};
const fastnn_dgemm_cfg fastnn_dgemm_avx512 = {dgemm_ukr_avx512, 14, 16, 112, 256, 2048};
