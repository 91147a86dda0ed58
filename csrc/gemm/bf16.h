/* Rounding to bfloat16, shared by the bf16 GEMM's packing and its emulation. Internal. */
#ifndef FASTNN_BF16_H
#define FASTNN_BF16_H
#include <stdint.h>
#include <string.h>

/* The bits of x rounded to bfloat16 (nearest even), low 16 bits zero; NaN stays a quiet NaN.
 * Branch-free, so packing loops vectorize. */
static inline uint32_t fastnn_bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    uint32_t q = (u | 0x00400000u) & 0xffff0000u;
    return (u & 0x7fffffffu) > 0x7f800000u ? q : r;
}

/* The 32-bit word vdpbf16ps multiplies: bf16(even) in the low half, bf16(odd) in the high. */
static inline uint32_t fastnn_bf16_pair(float even, float odd) {
    return (fastnn_bf16_round(even) >> 16) | fastnn_bf16_round(odd);
}
#endif
