/* Reference 2-D convolution (the specification and oracle) and the geometry check. */
#include "common.h"

#define FASTNN_TEMPLATE "conv.inc"
#include "template.h"

fastnn_status fastnn_conv2d_check(const fastnn_conv2d_geom *g) {
    if (!g) return FASTNN_ENULL;
    if (g->n < 0 || g->c_in < 1 || g->h < 0 || g->w < 0 || g->c_out < 1 || g->kh < 1 ||
        g->kw < 1 || g->stride_h < 1 || g->stride_w < 1 || g->pad_h < 0 || g->pad_w < 0 ||
        g->dilation_h < 1 || g->dilation_w < 1 || g->groups < 1 || g->oh < 0 || g->ow < 0)
        return FASTNN_EINVAL;
    if (g->c_in % g->groups || g->c_out % g->groups) return FASTNN_EINVAL;
    return FASTNN_OK;
}

#define CONV_PTRS(...) do { if (!(__VA_ARGS__)) return FASTNN_ENULL; } while (0)
#define NX (g->n * g->c_in * g->h * g->w)
#define NY (g->n * g->c_out * g->oh * g->ow)

fastnn_status fastnn_conv2d_ref(fastnn_dtype dt, void *y, const void *x, const void *w,
                                const void *bias, const fastnn_conv2d_geom *g) {
    fastnn_status st = fastnn_conv2d_check(g);
    if (st != FASTNN_OK) return st;
    if (NY == 0) return FASTNN_OK;
    CONV_PTRS(y && w && (x || NX == 0));
    if (dt == FASTNN_F32) conv2d_ref_f32(y, x, w, bias, g);
    else if (dt == FASTNN_F64) conv2d_ref_f64(y, x, w, bias, g);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}

fastnn_status fastnn_conv2d_backward_data_ref(fastnn_dtype dt, void *dx, const void *dy,
                                              const void *w, const fastnn_conv2d_geom *g) {
    fastnn_status st = fastnn_conv2d_check(g);
    if (st != FASTNN_OK) return st;
    if (NX == 0) return FASTNN_OK;
    CONV_PTRS(dx && w && (dy || NY == 0));
    if (dt == FASTNN_F32) conv2d_backward_data_ref_f32(dx, dy, w, g);
    else if (dt == FASTNN_F64) conv2d_backward_data_ref_f64(dx, dy, w, g);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}

fastnn_status fastnn_conv2d_backward_weight_ref(fastnn_dtype dt, void *dw, void *db,
                                                const void *dy, const void *x,
                                                const fastnn_conv2d_geom *g, double beta) {
    fastnn_status st = fastnn_conv2d_check(g);
    if (st != FASTNN_OK) return st;
    CONV_PTRS(dw && ((dy && x) || NY == 0 || NX == 0));
    if (dt == FASTNN_F32) conv2d_backward_weight_ref_f32(dw, db, dy, x, g, (float)beta);
    else if (dt == FASTNN_F64) conv2d_backward_weight_ref_f64(dw, db, dy, x, g, beta);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}
