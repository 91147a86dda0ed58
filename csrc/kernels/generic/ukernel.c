/* GEMM micro-kernels and packing for the generic table (float 6x8, double 6x4). */
#include "fastnn/dispatch.h"

#define T float
#define IT int32_t
#define VL 4
#define MR 6
#define NV 2
#define PFX(name) s##name##_generic
#include "../instantiate.inc"
#undef T
#undef IT
#undef VL
#undef MR
#undef NV
#undef PFX

#define T double
#define IT int64_t
#define VL 2
#define MR 6
#define NV 2
#define PFX(name) d##name##_generic
#include "../instantiate.inc"

/* micro-kernels (MR rows; 4, 2, 1 rows), mr, nr, mc, kc, nc, packing of A and B */
const fastnn_sgemm_cfg fastnn_sgemm_generic = {sukr_generic, {sukr4_generic, sukr2_generic, sukr1_generic},
                                            6, 8, 120, 256, 2048, spack_a_generic, spack_b_generic,
    sukrs_generic, {sukrs4_generic, sukrs2_generic, sukrs1_generic},
    .ukra = sukra_generic, .tails_a = {sukra4_generic, sukra2_generic, sukra1_generic}};
const fastnn_dgemm_cfg fastnn_dgemm_generic = {dukr_generic, {dukr4_generic, dukr2_generic, dukr1_generic},
                                            6, 4, 96, 256, 1024, dpack_a_generic, dpack_b_generic,
    dukrs_generic, {dukrs4_generic, dukrs2_generic, dukrs1_generic},
    .ukra = dukra_generic, .tails_a = {dukra4_generic, dukra2_generic, dukra1_generic}};
