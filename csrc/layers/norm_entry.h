/* The checked entry points of the norm kernels, stamped out for csrc/layers/norm.c
 * (suffix empty) and csrc/ref/norm.c (suffix _ref) so both check the same way. Internal. */
#ifndef FASTNN_LAYERS_NORM_ENTRY_H
#define FASTNN_LAYERS_NORM_ENTRY_H
#include "layers/geom.h"

#include "ref/vec.h"

/* The fixed blocking of every norm reduction: FASTNN_LANES interleaved partial sums. */
#define FASTNN_LANES 8
static inline double fastnn_lanes_total(const double *a) {
    double t = 0;
    for (int l = 0; l < FASTNN_LANES; l++) t += a[l];
    return t;
}
/* the same, of the lanes held in one vector (norm.inc's loops keep them so). Always
 * inlined, like vec.h's helpers: called out of line from an AVX-512 clone (-O0, or an inliner
 * that declines), the clone would pass the 64-byte vector in a zmm register while this
 * baseline function reads it from the stack, and sum garbage. */
_Static_assert(FASTNN_LANES == 8, "norm.inc keeps the lanes in one fastnn_v8d");
FASTNN_VEC_INLINE double fastnn_v8_total(fastnn_v8d a) {
    double t = 0;
    for (int l = 0; l < FASTNN_LANES; l++) t += a[l];
    return t;
}

/* Batch norm's reductions: FASTNN_BN_LANES interleaved partial sums (value j of a plane into
 * lane j mod FASTNN_BN_LANES), added in lane order. 32 lanes are four independent chains of
 * 8 doubles in the vector kernels: a single chain left the sums waiting on the add's latency
 * (4 cycles a vector of 8). */
#define FASTNN_BN_LANES 32
typedef struct { fastnn_v8d v[FASTNN_BN_LANES / 8]; } fastnn_bn_acc;
FASTNN_VEC_INLINE double fastnn_bn_lanes_total(const double *a) {
    double t = 0;
    for (int l = 0; l < FASTNN_BN_LANES; l++) t += a[l];
    return t;
}
FASTNN_VEC_INLINE double fastnn_bn_acc_total(const fastnn_bn_acc *a) {
    double t = 0;
    for (int v = 0; v < FASTNN_BN_LANES / 8; v++)
        for (int l = 0; l < 8; l++) t += a->v[v][l];
    return t;
}

#define FASTNN_NORM_ENTRY(suffix)                                                                   \
static fastnn_status batchnorm_entry##suffix(fastnn_dtype dt, int training, void *y, void *save_mean, \
                               void *save_invstd, void *running_mean, void *running_var,     \
                               const void *x, const void *weight, const void *bias, int64_t n, \
                               int64_t c, int64_t hw, double momentum, double eps, int relu) { \
    FASTNN_BN_CHECK();                                                                       \
    if (training && n * hw < 2 && c > 0) return FASTNN_EINVAL;                               \
    if (!training && c > 0 && (!running_mean || !running_var)) return FASTNN_ENULL;          \
    if (!(eps >= 0) || !(momentum >= 0 && momentum <= 1)) return FASTNN_EINVAL;              \
    FASTNN_CHECK_PTR(y, n * c * hw);                                                         \
    if (dt == FASTNN_F32)                                                                    \
        batchnorm##suffix##_f32(training, y, save_mean, save_invstd, running_mean, running_var, \
                                x, weight, bias, n, c, hw, momentum, eps, relu);             \
    else                                                                                     \
        batchnorm##suffix##_f64(training, y, save_mean, save_invstd, running_mean, running_var, \
                                x, weight, bias, n, c, hw, momentum, eps, relu);             \
    return FASTNN_OK;                                                                        \
}                                                                                            \
fastnn_status fastnn_batchnorm##suffix(fastnn_dtype dt, int training, void *y, void *save_mean, \
                               void *save_invstd, void *running_mean, void *running_var,     \
                               const void *x, const void *weight, const void *bias, int64_t n, \
                               int64_t c, int64_t hw, double momentum, double eps) {         \
    return batchnorm_entry##suffix(dt, training, y, save_mean, save_invstd, running_mean,    \
                                   running_var, x, weight, bias, n, c, hw, momentum, eps, 0); \
}                                                                                            \
fastnn_status fastnn_batchnorm_relu##suffix(fastnn_dtype dt, int training, void *y,           \
                               void *save_mean, void *save_invstd, void *running_mean,       \
                               void *running_var, const void *x, const void *weight,         \
                               const void *bias, int64_t n, int64_t c, int64_t hw,           \
                               double momentum, double eps) {                                \
    return batchnorm_entry##suffix(dt, training, y, save_mean, save_invstd, running_mean,    \
                                   running_var, x, weight, bias, n, c, hw, momentum, eps, 1); \
}                                                                                            \
static fastnn_status bn_backward_entry##suffix(fastnn_dtype dt, int training, void *dx,       \
                                        void *dweight, void *dbias, const void *dy,          \
                                        const void *x, const void *save_mean,                \
                                        const void *save_invstd, const void *weight,         \
                                        int64_t n, int64_t c, int64_t hw, double beta,       \
                                        const void *relu_y) {                                \
    FASTNN_BN_CHECK();                                                                       \
    FASTNN_CHECK_PTR(dy, n * c * hw);                                                        \
    FASTNN_CHECK_PTR(save_mean, c);                                                          \
    FASTNN_CHECK_PTR(save_invstd, c);                                                        \
    if (dt == FASTNN_F32)                                                                    \
        batchnorm_backward##suffix##_f32(training, dx, dweight, dbias, dy, x, save_mean,     \
                                         save_invstd, weight, n, c, hw, beta, relu_y);       \
    else                                                                                     \
        batchnorm_backward##suffix##_f64(training, dx, dweight, dbias, dy, x, save_mean,     \
                                         save_invstd, weight, n, c, hw, beta, relu_y);       \
    return FASTNN_OK;                                                                        \
}                                                                                            \
fastnn_status fastnn_batchnorm_backward##suffix(fastnn_dtype dt, int training, void *dx,      \
                                        void *dweight, void *dbias, const void *dy,          \
                                        const void *x, const void *save_mean,                \
                                        const void *save_invstd, const void *weight,         \
                                        int64_t n, int64_t c, int64_t hw, double beta) {     \
    return bn_backward_entry##suffix(dt, training, dx, dweight, dbias, dy, x, save_mean,     \
                                     save_invstd, weight, n, c, hw, beta, NULL);             \
}                                                                                            \
fastnn_status fastnn_batchnorm_relu_backward##suffix(fastnn_dtype dt, int training, void *dx, \
                                        void *dweight, void *dbias, const void *dy,          \
                                        const void *x, const void *save_mean,                \
                                        const void *save_invstd, const void *weight,         \
                                        int64_t n, int64_t c, int64_t hw, double beta,       \
                                        const void *relu_y) {                                \
    FASTNN_CHECK_PTR(relu_y, n * c * hw);                                                    \
    return bn_backward_entry##suffix(dt, training, dx, dweight, dbias, dy, x, save_mean,     \
                                     save_invstd, weight, n, c, hw, beta, relu_y);           \
}                                                                                            \
fastnn_status fastnn_layernorm##suffix(fastnn_dtype dt, void *y, void *save_mean,            \
                               void *save_rstd, const void *x, const void *weight,           \
                               const void *bias, int64_t rows, int64_t d, double eps) {      \
    FASTNN_LN_CHECK();                                                                       \
    if (!(eps >= 0)) return FASTNN_EINVAL;                                                   \
    FASTNN_CHECK_PTR(y, rows * d);                                                           \
    if (dt == FASTNN_F32)                                                                    \
        layernorm##suffix##_f32(y, save_mean, save_rstd, x, weight, bias, rows, d, eps);     \
    else                                                                                     \
        layernorm##suffix##_f64(y, save_mean, save_rstd, x, weight, bias, rows, d, eps);     \
    return FASTNN_OK;                                                                        \
}                                                                                            \
fastnn_status fastnn_layernorm_backward##suffix(fastnn_dtype dt, void *dx, void *dweight,    \
                                        void *dbias, const void *dy, const void *x,          \
                                        const void *save_mean, const void *save_rstd,        \
                                        const void *weight, int64_t rows, int64_t d,         \
                                        double beta) {                                       \
    FASTNN_LN_CHECK();                                                                       \
    FASTNN_CHECK_PTR(dy, rows * d);                                                          \
    FASTNN_CHECK_PTR(save_mean, rows);                                                       \
    FASTNN_CHECK_PTR(save_rstd, rows);                                                       \
    if (dt == FASTNN_F32)                                                                    \
        layernorm_backward##suffix##_f32(dx, dweight, dbias, dy, x, save_mean, save_rstd,    \
                                         weight, rows, d, beta);                             \
    else                                                                                     \
        layernorm_backward##suffix##_f64(dx, dweight, dbias, dy, x, save_mean, save_rstd,    \
                                         weight, rows, d, beta);                             \
    return FASTNN_OK;                                                                        \
}

#endif
