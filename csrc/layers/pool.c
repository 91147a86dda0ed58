/* Pooling over NCHW images: max (with its argmax), average, global average; forward and
 * backward. The naive references are in csrc/ref/pool.c. */
#include <math.h>
#include "ref/common.h"
#include "layers/geom.h"

#define FASTNN_TEMPLATE "layers/pool.inc"
#include "ref/template.h"

int64_t fastnn_pool_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad) {
    if (in < 0 || k < 1 || stride < 1 || pad < 0 || 2 * pad > k || in + 2 * pad < k) return -1;
    return (in + 2 * pad - k) / stride + 1;
}

fastnn_status fastnn_maxpool2d(fastnn_dtype dt, void *y, int64_t *argmax, const void *x,
                               int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh,
                               int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
    FASTNN_POOL_CHECK();
    FASTNN_CHECK_PTR(y, planes * oh * ow);
    FASTNN_CHECK_PTR(x, planes * h * w);
    if (planes * oh * ow == 0) return FASTNN_OK;
    if (dt == FASTNN_F32) maxpool2d_f32(y, argmax, x, planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw);
    else if (dt == FASTNN_F64) maxpool2d_f64(y, argmax, x, planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}

/* check_argmax: range-check every index (the public entry); the layer plan skips it, its
 * argmax being the one its own forward wrote into the arena (a pass over 8 bytes per
 * output saved). The geometry is checked either way. */
static fastnn_status maxpool2d_backward_entry(fastnn_dtype dt, void *dx, const void *dy,
                                              const int64_t *argmax, int64_t n, int64_t c,
                                              int64_t h, int64_t w, int64_t kh, int64_t kw,
                                              int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                              int check_argmax) {
    FASTNN_POOL_CHECK();
    FASTNN_CHECK_PTR(dx, planes * h * w);
    FASTNN_CHECK_PTR(dy, planes * oh * ow);
    FASTNN_CHECK_PTR(argmax, planes * oh * ow);
    if (dt != FASTNN_F32 && dt != FASTNN_F64) return FASTNN_EINVAL;
    if (check_argmax)
        for (int64_t i = 0; i < planes * oh * ow; i++)
            if (argmax[i] < 0 || argmax[i] >= h * w) return FASTNN_EINVAL;
    if (planes * h * w == 0) return FASTNN_OK;
    if (dt == FASTNN_F32) maxpool2d_backward_f32(dx, dy, argmax, planes, h * w, oh * ow);
    else maxpool2d_backward_f64(dx, dy, argmax, planes, h * w, oh * ow);
    return FASTNN_OK;
}

fastnn_status fastnn_maxpool2d_backward(fastnn_dtype dt, void *dx, const void *dy,
                                        const int64_t *argmax, int64_t n, int64_t c,
                                        int64_t h, int64_t w, int64_t kh, int64_t kw,
                                        int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
    return maxpool2d_backward_entry(dt, dx, dy, argmax, n, c, h, w, kh, kw, sh, sw, ph, pw, 1);
}

/* The layer plan's max-pool backward (csrc/plan_exec.h). */
fastnn_status fastnn_maxpool2d_backward_plan(fastnn_dtype dt, void *dx, const void *dy,
                                             const int64_t *argmax, int64_t n, int64_t c,
                                             int64_t h, int64_t w, int64_t kh, int64_t kw,
                                             int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
    return maxpool2d_backward_entry(dt, dx, dy, argmax, n, c, h, w, kh, kw, sh, sw, ph, pw, 0);
}

fastnn_status fastnn_avgpool2d(fastnn_dtype dt, void *y, const void *x, int64_t n, int64_t c,
                               int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                               int64_t sw, int64_t ph, int64_t pw, int count_include_pad) {
    FASTNN_POOL_CHECK();
    FASTNN_CHECK_PTR(y, planes * oh * ow);
    FASTNN_CHECK_PTR(x, planes * h * w);
    if (planes * oh * ow == 0) return FASTNN_OK;
    int cip = count_include_pad != 0;
    if (dt == FASTNN_F32) avgpool2d_f32(y, x, planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, cip);
    else if (dt == FASTNN_F64) avgpool2d_f64(y, x, planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, cip);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}

fastnn_status fastnn_avgpool2d_backward(fastnn_dtype dt, void *dx, const void *dy, int64_t n,
                                        int64_t c, int64_t h, int64_t w, int64_t kh,
                                        int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                                        int64_t pw, int count_include_pad) {
    FASTNN_POOL_CHECK();
    FASTNN_CHECK_PTR(dx, planes * h * w);
    FASTNN_CHECK_PTR(dy, planes * oh * ow);
    if (planes * h * w == 0) return FASTNN_OK;
    int cip = count_include_pad != 0;
    if (dt == FASTNN_F32)
        avgpool2d_backward_f32(dx, dy, planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, cip);
    else if (dt == FASTNN_F64)
        avgpool2d_backward_f64(dx, dy, planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, cip);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}

fastnn_status fastnn_global_avgpool(fastnn_dtype dt, void *y, const void *x, int64_t n,
                                    int64_t c, int64_t hw) {
    FASTNN_CHECK_N(n);
    FASTNN_CHECK_N(c);
    if (hw < 1) return FASTNN_EINVAL;
    FASTNN_CHECK_PTR(y, n * c);
    FASTNN_CHECK_PTR(x, n * c);
    if (dt == FASTNN_F32) global_avgpool_f32(y, x, n * c, hw);
    else if (dt == FASTNN_F64) global_avgpool_f64(y, x, n * c, hw);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}

fastnn_status fastnn_global_avgpool_backward(fastnn_dtype dt, void *dx, const void *dy,
                                             int64_t n, int64_t c, int64_t hw) {
    FASTNN_CHECK_N(n);
    FASTNN_CHECK_N(c);
    if (hw < 1) return FASTNN_EINVAL;
    FASTNN_CHECK_PTR(dx, n * c);
    FASTNN_CHECK_PTR(dy, n * c);
    if (dt == FASTNN_F32) global_avgpool_backward_f32(dx, dy, n * c, hw);
    else if (dt == FASTNN_F64) global_avgpool_backward_f64(dx, dy, n * c, hw);
    else return FASTNN_EINVAL;
    return FASTNN_OK;
}
