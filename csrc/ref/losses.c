/* Loss kernels: value and gradient in one pass. */
#include <math.h>
#include "common.h"
#include "vexp.h"

#define FASTNN_TEMPLATE "losses.inc"
#include "template.h"

fastnn_status fastnn_regression_loss(fastnn_dtype dt, fastnn_loss kind, double delta,
                                     double *total, void *loss, void *grad, double scale,
                                     const void *pred, const void *target, int64_t n) {
    FASTNN_CHECK_N(n);
    FASTNN_CHECK_PTR(pred, n);
    FASTNN_CHECK_PTR(target, n);
    if (kind < FASTNN_LOSS_MSE || kind > FASTNN_LOSS_HUBER) return FASTNN_EINVAL;
    if (kind == FASTNN_LOSS_HUBER && !(delta > 0)) return FASTNN_EINVAL;
    if (dt == FASTNN_F32)
        return regression_loss_f32(kind, delta, total, loss, grad, scale, pred, target, n);
    if (dt == FASTNN_F64)
        return regression_loss_f64(kind, delta, total, loss, grad, scale, pred, target, n);
    return FASTNN_EINVAL;
}

fastnn_status fastnn_bce_logits(fastnn_dtype dt, double *total, void *loss, void *grad,
                                double scale, const void *z, const void *t,
                                const void *pos_weight, int64_t rows, int64_t cols) {
    FASTNN_CHECK_2D(rows, cols);
    FASTNN_CHECK_PTR(z, rows * cols);
    FASTNN_CHECK_PTR(t, rows * cols);
    if (dt == FASTNN_F32)
        return bce_logits_f32(total, loss, grad, scale, z, t, pos_weight, rows, cols);
    if (dt == FASTNN_F64)
        return bce_logits_f64(total, loss, grad, scale, z, t, pos_weight, rows, cols);
    return FASTNN_EINVAL;
}

fastnn_status fastnn_cross_entropy(fastnn_dtype dt, double *total, double *weight_sum,
                                   void *loss, void *grad, double scale, const void *z,
                                   const int64_t *labels, const void *weight,
                                   double label_smoothing, int64_t rows, int64_t cols) {
    FASTNN_CHECK_2D(rows, cols);
    if (rows > 0 && cols == 0) return FASTNN_EINVAL;
    FASTNN_CHECK_PTR(z, rows);
    FASTNN_CHECK_PTR(labels, rows);
    if (!(label_smoothing >= 0 && label_smoothing <= 1)) return FASTNN_EINVAL;
    if (dt == FASTNN_F32)
        return cross_entropy_f32(total, weight_sum, loss, grad, scale, z, labels, weight,
                                 label_smoothing, rows, cols);
    if (dt == FASTNN_F64)
        return cross_entropy_f64(total, weight_sum, loss, grad, scale, z, labels, weight,
                                 label_smoothing, rows, cols);
    return FASTNN_EINVAL;
}
