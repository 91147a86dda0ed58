/* GCC/Clang vector-extension types and helpers shared by the loops outside the kernel
 * tables (vexp.h, the norm kernels). Internal.
 *
 * A fixed number of lanes written as one vector type gives vector code on every target (the
 * baseline splits it into SSE2 operations, an AVX2 or AVX-512 clone uses wider registers)
 * with the same bits everywhere: each lane's operations happen in the written order. */
#ifndef FASTNN_VEC_H
#define FASTNN_VEC_H
#include <stdint.h>
#include <string.h>

typedef float fastnn_v16f __attribute__((vector_size(64)));
typedef float fastnn_v8f __attribute__((vector_size(32)));
typedef double fastnn_v8d __attribute__((vector_size(64)));
typedef int32_t fastnn_v16i __attribute__((vector_size(64)));
typedef uint32_t fastnn_v16u __attribute__((vector_size(64)));

#define FASTNN_VEC_INLINE static inline __attribute__((always_inline))

/* These helpers are always inlined, so no vector ever crosses a call: the warning that a
 * 64-byte vector argument has a different ABI without AVX-512 does not apply. */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi"
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* m ? a : b, lane by lane (m: all ones or zero per lane) */
FASTNN_VEC_INLINE fastnn_v16f fastnn_sel16(fastnn_v16i m, fastnn_v16f a, fastnn_v16f b) {
    return (fastnn_v16f)(((fastnn_v16i)a & m) | ((fastnn_v16i)b & ~m));
}

FASTNN_VEC_INLINE fastnn_v16f fastnn_splat16(float v) {
    return (fastnn_v16f){v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v};
}

/* 8 consecutive floats or doubles as 8 doubles (exact) */
FASTNN_VEC_INLINE fastnn_v8d fastnn_load8d_f32(const float *p) {
    fastnn_v8f v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, fastnn_v8d);
}
FASTNN_VEC_INLINE fastnn_v8d fastnn_load8d_f64(const double *p) {
    fastnn_v8d v;
    memcpy(&v, p, sizeof v);
    return v;
}

#endif
