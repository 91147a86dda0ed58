/* Optimizer kernels. */
#include <math.h>
#include <tgmath.h>
#include "common.h"

#define FASTNN_TEMPLATE "optim.inc"
#include "template.h"

#define DISPATCH(dt, call_f32, call_f64)                                     \
    do {                                                                      \
        if ((dt) == FASTNN_F32) { call_f32; }                                 \
        else if ((dt) == FASTNN_F64) { call_f64; }                            \
        else return FASTNN_EINVAL;                                            \
    } while (0)

fastnn_status fastnn_sgd(fastnn_dtype dt, void *p, void *buf, const void *g, int64_t n,
                         double lr, double momentum, double dampening, double weight_decay,
                         int nesterov, int maximize, int first_step) {
    FASTNN_CHECK_N(n);
    FASTNN_CHECK_PTR(p, n);
    FASTNN_CHECK_PTR(g, n);
    if (momentum != 0) FASTNN_CHECK_PTR(buf, n);
    if (nesterov && (momentum <= 0 || dampening != 0)) return FASTNN_EINVAL;
    DISPATCH(dt,
             sgd_f32(p, buf, g, n, (float)lr, (float)momentum, (float)dampening,
                     (float)weight_decay, nesterov, maximize, first_step),
             sgd_f64(p, buf, g, n, lr, momentum, dampening, weight_decay, nesterov, maximize,
                     first_step));
    return FASTNN_OK;
}

fastnn_status fastnn_adam(fastnn_dtype dt, void *p, void *m, void *v, void *vmax,
                          const void *g, int64_t n, double lr, double beta1, double beta2,
                          double eps, double weight_decay, int decoupled, int amsgrad,
                          int maximize, int64_t step) {
    FASTNN_CHECK_N(n);
    FASTNN_CHECK_PTR(p, n);
    FASTNN_CHECK_PTR(m, n);
    FASTNN_CHECK_PTR(v, n);
    FASTNN_CHECK_PTR(g, n);
    if (amsgrad) FASTNN_CHECK_PTR(vmax, n);
    if (step < 1 || !(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1)) return FASTNN_EINVAL;
    double step_size = lr / (1 - pow(beta1, (double)step));
    double bc2_sqrt = sqrt(1 - pow(beta2, (double)step));
    DISPATCH(dt,
             adam_f32(p, m, v, vmax, g, n, (float)lr, (float)beta1, (float)beta2, (float)eps,
                      (float)weight_decay, decoupled, amsgrad, maximize, (float)step_size,
                      (float)bc2_sqrt),
             adam_f64(p, m, v, vmax, g, n, lr, beta1, beta2, eps, weight_decay, decoupled,
                      amsgrad, maximize, step_size, bc2_sqrt));
    return FASTNN_OK;
}

fastnn_status fastnn_rmsprop(fastnn_dtype dt, void *p, void *sq, void *buf, void *ga,
                             const void *g, int64_t n, double lr, double alpha, double eps,
                             double weight_decay, double momentum, int centered, int maximize) {
    FASTNN_CHECK_N(n);
    FASTNN_CHECK_PTR(p, n);
    FASTNN_CHECK_PTR(sq, n);
    FASTNN_CHECK_PTR(g, n);
    if (momentum > 0) FASTNN_CHECK_PTR(buf, n);
    if (centered) FASTNN_CHECK_PTR(ga, n);
    DISPATCH(dt,
             rmsprop_f32(p, sq, buf, ga, g, n, (float)lr, (float)alpha, (float)eps,
                         (float)weight_decay, (float)momentum, centered, maximize),
             rmsprop_f64(p, sq, buf, ga, g, n, lr, alpha, eps, weight_decay, momentum, centered,
                         maximize));
    return FASTNN_OK;
}

fastnn_status fastnn_adagrad(fastnn_dtype dt, void *p, void *sum, const void *g, int64_t n,
                             double lr, double lr_decay, double weight_decay, double eps,
                             int maximize, int64_t step) {
    FASTNN_CHECK_N(n);
    FASTNN_CHECK_PTR(p, n);
    FASTNN_CHECK_PTR(sum, n);
    FASTNN_CHECK_PTR(g, n);
    if (step < 1) return FASTNN_EINVAL;
    double clr = lr / (1 + (double)(step - 1) * lr_decay);
    DISPATCH(dt,
             adagrad_f32(p, sum, g, n, (float)clr, (float)weight_decay, (float)eps, maximize),
             adagrad_f64(p, sum, g, n, clr, weight_decay, eps, maximize));
    return FASTNN_OK;
}

void fastnn_add_l2(fastnn_dtype dt, void *g, const void *p, int64_t n, double c) {
    if (dt == FASTNN_F32) {
        float *gf = g, cf = (float)c;
        const float *pf = p;
        for (int64_t k = 0; k < n; k++) gf[k] += cf * pf[k];
    } else {
        double *gd = g;
        const double *pd = p;
        for (int64_t k = 0; k < n; k++) gd[k] += c * pd[k];
    }
}

void fastnn_update_block(const fastnn_update *u, int64_t off, int64_t ld, int64_t rows,
                         int64_t cols) {
    double sign = u->maximize ? -1 : 1;
    int64_t es = u->dt == FASTNN_F32 ? 4 : 8;
    if (u->l2 != 0)
        for (int64_t r = 0; r < rows; r++)
            fastnn_add_l2(u->dt, (char *)u->g + (off + r * ld) * es,
                          (const char *)u->p + (off + r * ld) * es, cols, u->l2);
    if (u->dt == FASTNN_F32) {
        if (u->adam)
            adam_block_f32(u->p, u->s1, u->s2, u->s3, u->g, off, ld, rows, cols, (float)u->lr,
                           (float)u->beta1, (float)u->beta2, (float)u->eps,
                           (float)u->weight_decay, (float)sign, (float)u->step_size,
                           (float)u->bc2_sqrt, u->decoupled, u->amsgrad);
        else
            sgd_block_f32(u->p, u->s1, u->g, off, ld, rows, cols, (float)u->lr,
                          (float)u->momentum, (float)u->dampening, (float)u->weight_decay,
                          (float)sign, u->nesterov, u->first);
    } else {
        if (u->adam)
            adam_block_f64(u->p, u->s1, u->s2, u->s3, u->g, off, ld, rows, cols, u->lr,
                           u->beta1, u->beta2, u->eps, u->weight_decay, sign, u->step_size,
                           u->bc2_sqrt, u->decoupled, u->amsgrad);
        else
            sgd_block_f64(u->p, u->s1, u->g, off, ld, rows, cols, u->lr, u->momentum,
                          u->dampening, u->weight_decay, sign, u->nesterov, u->first);
    }
}
