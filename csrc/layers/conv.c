/* 2-D convolution entry points (fastnn_conv2d*, see fastnn.h). */
#include <stdlib.h>
#include <string.h>
#include "ref/common.h"

/* The calling thread's buffer for a convolution's whole-call arrays (the NHWC copies of x
 * and y, the packed weight, the column buffer of dx), kept between calls: a scratch slot of
 * its own, since the GEMM's packing uses the default slot (fastnn_scratch) at the same time.
 * No allocation and no page faults per call; freed when the thread exits. */
static void *conv_buffer(size_t bytes) { return fastnn_scratch_slot(FASTNN_SCRATCH_CONV, bytes); }

#define FASTNN_MAX_TILE (16 * 32)   /* largest MR x NR of any table (as csrc/gemm/gemm.c) */

typedef fastnn_sgemm_cfg cfg_f32;
typedef fastnn_dgemm_cfg cfg_f64;
#define FASTNN_TEMPLATE "layers/conv.inc"   /* found through -I csrc */
#include "ref/template.h"

#define NX (g->n * g->c_in * g->h * g->w)
#define NY (g->n * g->c_out * g->oh * g->ow)

static int act_ok(fastnn_act act, double p) {
    return act >= FASTNN_ACT_IDENTITY && act <= FASTNN_ACT_SOFTPLUS &&
           !(act == FASTNN_ACT_SOFTPLUS && p == 0);
}

static fastnn_status conv2d_run(fastnn_dtype dt, void *y, const void *x, const void *w,
                                const void *bias, const fastnn_conv2d_geom *g, fastnn_act act,
                                double p, double p2) {
    const fastnn_kernel_table *t = fastnn_table();
    if (dt == FASTNN_F32) return conv_forward_f32(&t->s, y, x, w, bias, g, act, (float)p, (float)p2);
    return conv_forward_f64(&t->d, y, x, w, bias, g, act, p, p2);
}

fastnn_status fastnn_conv2d(fastnn_dtype dt, void *y, const void *x, const void *w,
                            const void *bias, const fastnn_conv2d_geom *g, fastnn_act act,
                            double p, double p2) {
    fastnn_status st = fastnn_conv2d_check(g);
    if (st != FASTNN_OK) return st;
    if (dt != FASTNN_F32 && dt != FASTNN_F64) return FASTNN_EINVAL;
    if (!act_ok(act, p)) return FASTNN_EINVAL;
    if (NY == 0) return FASTNN_OK;
    if (!y || !w || (!x && NX > 0)) return FASTNN_ENULL;
    fastnn_team *team = fastnn_cur_team;
    FASTNN_ON_THREAD0(team, st, conv2d_run(dt, y, x, w, bias, g, act, p, p2));
    return st;
}

static fastnn_status conv2d_bw_data_run(fastnn_dtype dt, void *dx, const void *dy, const void *w,
                                        const fastnn_conv2d_geom *g) {
    const fastnn_kernel_table *t = fastnn_table();
    if (dt == FASTNN_F32) return conv_backward_data_f32(&t->s, dt, dx, dy, w, g);
    return conv_backward_data_f64(&t->d, dt, dx, dy, w, g);
}

fastnn_status fastnn_conv2d_backward_data(fastnn_dtype dt, void *dx, const void *dy,
                                          const void *w, const fastnn_conv2d_geom *g) {
    fastnn_status st = fastnn_conv2d_check(g);
    if (st != FASTNN_OK) return st;
    if (dt != FASTNN_F32 && dt != FASTNN_F64) return FASTNN_EINVAL;
    if (NX == 0) return FASTNN_OK;
    if (!dx || !w || (!dy && NY > 0)) return FASTNN_ENULL;
    fastnn_team *team = fastnn_cur_team;
    FASTNN_ON_THREAD0(team, st, conv2d_bw_data_run(dt, dx, dy, w, g));
    return st;
}

static fastnn_status conv2d_bw_weight_run(fastnn_dtype dt, void *dw, void *db, const void *dy,
                                          const void *x, const fastnn_conv2d_geom *g,
                                          double beta) {
    const fastnn_kernel_table *t = fastnn_table();
    fastnn_status st;
    if (dt == FASTNN_F32) {
        st = conv_backward_weight_f32(&t->s, dw, dy, x, g, (float)beta);
        if (st == FASTNN_OK && db) conv_bias_grad_f32(db, dy, g, (float)beta);
    } else {
        st = conv_backward_weight_f64(&t->d, dw, dy, x, g, beta);
        if (st == FASTNN_OK && db) conv_bias_grad_f64(db, dy, g, beta);
    }
    return st;
}

fastnn_status fastnn_conv2d_backward_weight(fastnn_dtype dt, void *dw, void *db,
                                            const void *dy, const void *x,
                                            const fastnn_conv2d_geom *g, double beta) {
    fastnn_status st = fastnn_conv2d_check(g);
    if (st != FASTNN_OK) return st;
    if (dt != FASTNN_F32 && dt != FASTNN_F64) return FASTNN_EINVAL;
    if (!dw || (NY > 0 && (!dy || !x))) return FASTNN_ENULL;
    fastnn_team *team = fastnn_cur_team;
    FASTNN_ON_THREAD0(team, st, conv2d_bw_weight_run(dt, dw, db, dy, x, g, beta));
    return st;
}
