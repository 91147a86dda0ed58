/* exp over vectors, and the row helpers of the softmax and cross-entropy kernels. Internal.
 *
 * fastnn_expf16(x): exp of 16 floats. Written with GCC/Clang vector extensions, so it is
 * vector code on every target (four SSE2 operations per step on the baseline, two on AVX2,
 * one on AVX-512: the FASTNN_CLONES of the row helpers), where libm's scalar expf cost ~5 ns
 * an element. Method (Cephes expf, S. L. Moshier): n = round(x / ln 2) by the 1.5 * 2^23
 * trick, r = x - n ln 2 in two parts (Cody-Waite: n * 0.693359375 is exact), exp(r) on
 * |r| <= ln 2 / 2 by a degree-6 polynomial, and the scale 2^n built in the exponent bits, applied as
 * 2^(n-1) * 2 so that n = 128 still gives a finite result. Range: +inf for x > 88.7228 (as
 * expf), 0 for x < -86.64 (results below about 2.3e-38, next to FLT_MIN, flush to zero
 * instead of going subnormal), NaN stays NaN. Only IEEE +, *, compares and integer bit
 * operations: every target gives the same bits. Error: under 1 ulp against exp in double
 * over [-86.64, 88.72] (0.991 ulp at most over every float32 there; 0.27 on average at 2
 * million points; tests/test_kernels.py holds it under 1 ulp at 2.2 million points and to
 * 2 ulp through softmax).
 *
 * Helpers for T = float and double (S(row_max), S(vexp), S(row_sum) in the kernel
 * templates). float runs whole 16-lane vectors, reduces the lanes in a fixed order and
 * finishes with a scalar tail, so results depend on the length only, never on the target
 * or the thread count. double keeps libm's exp and plain ordered loops (the reference
 * precision the float64 parity tests ask of it). A softmax over few classes (10) exps a
 * block of rows in one S(vexp) call: one call per 10-element row cost more than the exps. */
#ifndef FASTNN_VEXP_H
#define FASTNN_VEXP_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "common.h"
#include "vec.h"

/* Elements a kernel exponentiates at a time into a buffer on its stack. */
#define FASTNN_EXP_CHUNK 1024

#define VEXP_INLINE FASTNN_VEC_INLINE

VEXP_INLINE fastnn_v16f fastnn_expf16(fastnn_v16f x) {
    const float lo = -86.64f, hi = 88.72283f;
    const float big = 12582912.0f;                       /* 1.5 * 2^23 */
    fastnn_v16i below = x < lo, above = x > hi;
    fastnn_v16f xc = fastnn_sel16(below, fastnn_splat16(lo), x);
    xc = fastnn_sel16(above, fastnn_splat16(hi), xc);
    fastnn_v16f t = xc * 1.44269504088896341f + big;    /* big + round(x / ln 2) */
    fastnn_v16f n = t - big;
    fastnn_v16f r = xc - n * 0.693359375f;               /* ln 2 = 0.693359375 - 2.12194440e-4 */
    r = r + n * 2.12194440e-4f;
    fastnn_v16f p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    fastnn_v16u sb = ((fastnn_v16u)t - 0x4B400000u + 126u) << 23;   /* 2^(n-1), n in [-125, 128] */
    fastnn_v16f y = (p * (fastnn_v16f)sb) * 2.0f;
    y = fastnn_sel16(below, fastnn_splat16(0.0f), y);
    return fastnn_sel16(above, fastnn_splat16(INFINITY), y);
}

/* y[i] = exp(x[i] - s), i < n; y may be x */
FASTNN_CLONES static void vexp_f32(float *y, const float *x, float s, int64_t n) {
    fastnn_v16f v;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        memcpy(&v, x + i, sizeof v);
        v = fastnn_expf16(v - s);
        memcpy(y + i, &v, sizeof v);
    }
    if (i < n) {   /* the tail through a padded copy: still vector code */
        float t[16] = {0};
        memcpy(t, x + i, (size_t)(n - i) * sizeof(float));
        memcpy(&v, t, sizeof v);
        v = fastnn_expf16(v - s);
        memcpy(y + i, &v, (size_t)(n - i) * sizeof(float));
    }
}

/* max_c x[c], NaN when any x[c] is NaN; -inf for n = 0. The lanes keep the max of the
 * numbers and, apart, the sum of v - v (NaN once an inf or a NaN went by); only then does
 * the ordered loop decide. (One compare per step: or-ing two compare masks has no
 * AVX-512F instruction, and GCC turned that into scalar code.) */
FASTNN_CLONES static float row_max_f32_v(const float *x, int64_t n) {
    float mx = -INFINITY, zs = 0;
    int64_t c = 0;
    if (n >= 16) {
        fastnn_v16f m, z = fastnn_splat16(0.0f), v;
        memcpy(&m, x, sizeof m);
        for (c = 16; c + 16 <= n; c += 16) {
            memcpy(&v, x + c, sizeof v);
            m = fastnn_sel16(v > m, v, m);
            z += v - v;
        }
        mx = m[0];
        for (int j = 0; j < 16; j++) {
            mx = m[j] > mx ? m[j] : mx;
            zs += z[j] + (m[j] - m[j]);
        }
    }
    for (; c < n; c++) {   /* branch-free (a compare-and-branch mispredicts on half the rows) */
        mx = x[c] > mx ? x[c] : mx;
        zs += x[c] - x[c];
    }
    if (zs != 0) {   /* an inf or a NaN went by: the ordered loop decides */
        mx = -INFINITY;
        for (c = 0; c < n; c++) mx = (x[c] > mx || x[c] != x[c]) ? x[c] : mx;
    }
    return mx;
}

/* sum_c x[c] in double: 16 lanes over whole vectors, then the tail */
FASTNN_CLONES static double row_sum_f32_v(const float *x, int64_t n) {
    double sum = 0;
    int64_t c = 0;
    if (n >= 16) {
        fastnn_v8d a0 = {0}, a1 = {0};
        fastnn_v8f h;
        for (; c + 16 <= n; c += 16) {
            memcpy(&h, x + c, sizeof h);
            a0 += __builtin_convertvector(h, fastnn_v8d);
            memcpy(&h, x + c + 8, sizeof h);
            a1 += __builtin_convertvector(h, fastnn_v8d);
        }
        for (int j = 0; j < 8; j++) sum += a0[j];
        for (int j = 0; j < 8; j++) sum += a1[j];
    }
    for (; c < n; c++) sum += (double)x[c];
    return sum;
}

/* rows under 16 elements stay inline (no call through the clone dispatch) */
VEXP_INLINE float row_max_f32(const float *x, int64_t n) {
    if (n >= 16) return row_max_f32_v(x, n);
    float mx = -INFINITY, zs = 0;
    for (int64_t c = 0; c < n; c++) {
        mx = x[c] > mx ? x[c] : mx;
        zs += x[c] - x[c];
    }
    if (zs != 0) {
        mx = -INFINITY;
        for (int64_t c = 0; c < n; c++) mx = (x[c] > mx || x[c] != x[c]) ? x[c] : mx;
    }
    return mx;
}

VEXP_INLINE double row_sum_f32(const float *x, int64_t n) {
    if (n >= 16) return row_sum_f32_v(x, n);
    double sum = 0;
    for (int64_t c = 0; c < n; c++) sum += (double)x[c];
    return sum;
}

static inline double row_max_f64(const double *x, int64_t n) {
    double mx = -INFINITY;
    for (int64_t c = 0; c < n; c++) mx = (x[c] > mx || x[c] != x[c]) ? x[c] : mx;
    return mx;
}

static inline void vexp_f64(double *y, const double *x, double s, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = exp(x[i] - s);
}

static inline double row_sum_f64(const double *x, int64_t n) {
    double sum = 0;
    for (int64_t c = 0; c < n; c++) sum += x[c];
    return sum;
}

#endif
