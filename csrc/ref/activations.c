/* Activations, softmax and bias kernels (reference = implementation for every ISA). */
#include <math.h>
#include <tgmath.h>
#include "common.h"
#include "vexp.h"

#ifndef M_SQRT1_2
#define M_SQRT1_2 0.70710678118654752440
#endif
#define GELU_K 0.79788456080286535588      /* sqrt(2/pi) */
#define INV_SQRT_2PI 0.39894228040143267794 /* 1/sqrt(2 pi) */

#define FASTNN_TEMPLATE "activations.inc"
#include "template.h"

static int act_valid(fastnn_act act) {
    return act >= FASTNN_ACT_IDENTITY && act <= FASTNN_ACT_SOFTPLUS;
}

fastnn_status fastnn_act_forward(fastnn_dtype dt, fastnn_act act, double param, double param2,
                                 void *y, const void *x, int64_t n) {
    FASTNN_CHECK_N(n);
    FASTNN_CHECK_PTR(y, n);
    FASTNN_CHECK_PTR(x, n);
    if (!act_valid(act)) return FASTNN_EINVAL;
    if (act == FASTNN_ACT_SOFTPLUS && param == 0) return FASTNN_EINVAL;
    if (dt == FASTNN_F32) act_forward_f32(act, (float)param, (float)param2, y, x, n);
    else if (dt == FASTNN_F64) act_forward_f64(act, param, param2, y, x, n);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}

fastnn_status fastnn_act_backward(fastnn_dtype dt, fastnn_act act, double param, double param2,
                                  void *dx, const void *dy, const void *x, int64_t n) {
    FASTNN_CHECK_N(n);
    FASTNN_CHECK_PTR(dx, n);
    FASTNN_CHECK_PTR(dy, n);
    FASTNN_CHECK_PTR(x, n);
    if (!act_valid(act)) return FASTNN_EINVAL;
    if (dt == FASTNN_F32) act_backward_f32(act, (float)param, (float)param2, dx, dy, x, n);
    else if (dt == FASTNN_F64) act_backward_f64(act, param, param2, dx, dy, x, n);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}

fastnn_status fastnn_softmax(fastnn_dtype dt, int log_, void *y, const void *x, int64_t rows,
                             int64_t cols) {
    FASTNN_CHECK_2D(rows, cols);
    if (rows == 0 || cols == 0) return FASTNN_OK;
    FASTNN_CHECK_PTR(y, 1);
    FASTNN_CHECK_PTR(x, 1);
    if (dt == FASTNN_F32) softmax_f32(log_, y, x, rows, cols);
    else if (dt == FASTNN_F64) softmax_f64(log_, y, x, rows, cols);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}

fastnn_status fastnn_softmax_backward(fastnn_dtype dt, int log_, void *dx, const void *dy,
                                      const void *y, int64_t rows, int64_t cols) {
    FASTNN_CHECK_2D(rows, cols);
    if (rows == 0 || cols == 0) return FASTNN_OK;
    FASTNN_CHECK_PTR(dx, 1);
    FASTNN_CHECK_PTR(dy, 1);
    FASTNN_CHECK_PTR(y, 1);
    if (dt == FASTNN_F32) softmax_backward_f32(log_, dx, dy, y, rows, cols);
    else if (dt == FASTNN_F64) softmax_backward_f64(log_, dx, dy, y, rows, cols);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}

fastnn_status fastnn_bias_add(fastnn_dtype dt, void *y, const void *x, const void *b,
                              int64_t rows, int64_t cols) {
    FASTNN_CHECK_2D(rows, cols);
    if (rows == 0 || cols == 0) return FASTNN_OK;
    FASTNN_CHECK_PTR(y, 1);
    FASTNN_CHECK_PTR(x, 1);
    FASTNN_CHECK_PTR(b, 1);
    if (dt == FASTNN_F32) bias_add_f32(y, x, b, rows, cols);
    else if (dt == FASTNN_F64) bias_add_f64(y, x, b, rows, cols);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}

fastnn_status fastnn_bias_grad(fastnn_dtype dt, void *db, const void *dy, int64_t rows,
                               int64_t cols, double beta) {
    FASTNN_CHECK_2D(rows, cols);
    if (cols == 0) return FASTNN_OK;
    FASTNN_CHECK_PTR(db, 1);
    FASTNN_CHECK_PTR(dy, rows);
    if (dt == FASTNN_F32) bias_grad_f32(db, dy, rows, cols, (float)beta);
    else if (dt == FASTNN_F64) bias_grad_f64(db, dy, rows, cols, beta);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}
