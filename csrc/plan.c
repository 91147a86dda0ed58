/* The layer plan's executor (see include/fastnn/plan.h and plan_exec.h): forward, backward
 * and checks over the typed ops, calling the same kernels as the per-op Python layers
 * (csrc/layers/ conv, pool, norm; the GEMM with its bias+activation epilogue), on NCHW
 * activations in the fused step's arena. Inside the step's team every thread calls each op:
 * the pool and norm kernels share their planes and channels among the team, the GEMMs share
 * their tiles, the convolution runs on thread 0 (fastnn_conv2d's own team handling). */
#include <string.h>
#include "plan_exec.h"
#include "ref/common.h"

#define NOPS_MAX 256

static size_t esize(fastnn_dtype dt) { return dt == FASTNN_F32 ? 4 : 8; }

static char *param(const fastnn_net *net, void *base, int64_t off) {
    return off < 0 ? NULL : (char *)base + (size_t)off * esize(net->dt);
}

static int has_params(const fastnn_op *o) { return o->w >= 0 || o->b >= 0; }

/* The op's output / input in the arena (an output of -1 is the op's input itself). */
static char *out_of(const fastnn_net *net, char *plan, const char *x, int i) {
    for (; i >= 0; i--)
        if (net->ops[i].y >= 0) return plan + net->ops[i].y * net->max_batch;
    return (char *)x;
}

static char *in_of(const fastnn_net *net, char *plan, const char *x, int i) {
    return out_of(net, plan, x, i - 1);
}

char *fastnn_plan_output(const fastnn_net *net, char *plan, const char *x) {
    return out_of(net, plan, x, net->nops - 1);
}

static fastnn_conv2d_geom geom(const fastnn_op *o, int64_t B) {
    fastnn_conv2d_geom g = {B, o->in[0], o->in[1], o->in[2], o->out[0], o->kh, o->kw, o->sh,
                            o->sw, o->ph, o->pw, o->dh, o->dw, o->groups, o->out[1], o->out[2]};
    return g;
}

int64_t fastnn_plan_widest(const fastnn_net *net) {
    int64_t w = 1;
    for (int i = 0; i < net->nops; i++) {
        int64_t a = fastnn_op_size(net->ops[i].in), b = fastnn_op_size(net->ops[i].out);
        if (a > w) w = a;
        if (b > w) w = b;
    }
    return w;
}

double fastnn_plan_work(const fastnn_net *net, int64_t B) {
    double w = 0;
    int first = 1;
    for (int i = 0; i < net->nops; i++) {
        const fastnn_op *o = &net->ops[i];
        double macs = 0;
        if (o->kind == FASTNN_OP_LINEAR)
            macs = (double)B * (double)fastnn_op_size(o->in) * (double)o->out[0];
        else if (o->kind == FASTNN_OP_CONV2D)
            macs = (double)B * (double)fastnn_op_size(o->out) * (double)(o->in[0] / o->groups) *
                   (double)(o->kh * o->kw);
        else
            macs = (double)B * (double)fastnn_op_size(o->out) / 8;   /* memory-bound ops */
        w += macs * (first ? 2 : 3);
        if (has_params(o)) first = 0;
    }
    return 2 * w;
}

int fastnn_plan_own_teams(const fastnn_net *net) {
    for (int i = 0; i < net->nops; i++)
        if (net->ops[i].kind == FASTNN_OP_CONV2D) return 1;
    return 0;
}

/* ---- checks ----------------------------------------------------------------------------- */

static int same3(const int64_t a[3], const int64_t b[3]) {
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2];
}

/* [off, off + n) inside [0, limit) */
static int inside(int64_t off, int64_t n, int64_t limit) {
    int64_t end;
    return off >= 0 && n >= 0 && !__builtin_add_overflow(off, n, &end) && end <= limit;
}

/* An arena region of `bytes` per row at `off` bytes per row, 8-byte aligned. */
static int region_ok(const fastnn_net *net, int64_t off, int64_t elems, int64_t size) {
    int64_t bytes;
    return off % 8 == 0 && !fastnn_mul3_i64(&bytes, elems, size, 1) &&
           inside(off, bytes, net->row_bytes);
}

static int act_valid(fastnn_act a) { return a >= FASTNN_ACT_IDENTITY && a <= FASTNN_ACT_SOFTPLUS; }

static int op_ok(const fastnn_net *net, int i) {
    const fastnn_op *o = &net->ops[i], *next = i + 1 < net->nops ? &net->ops[i + 1] : NULL;
    size_t es = esize(net->dt);
    int64_t C = o->in[0], nin, nout, k;
    for (int d = 0; d < 3; d++)
        if (o->in[d] < 1 || o->out[d] < 1) return 0;
    if (fastnn_mul3_i64(&nin, o->in[0], o->in[1], o->in[2]) ||
        fastnn_mul3_i64(&nout, o->out[0], o->out[1], o->out[2]))
        return 0;
    if (i > 0 && !same3(o->in, net->ops[i - 1].out)) return 0;
    if (o->w < -1 || o->b < -1 || o->rs < -1) return 0;
    /* an output region of its own, except Flatten and a fused activation */
    if (o->y >= 0 ? !region_ok(net, o->y, nout, (int64_t)es) : o->y != -1) return 0;
    int aliased = o->kind == FASTNN_OP_FLATTEN ||
                  (o->kind == FASTNN_OP_ACT && i > 0 && o->y == -1);
    if ((o->y == -1) != aliased) return 0;
    switch (o->kind) {
    case FASTNN_OP_LINEAR:
    case FASTNN_OP_CONV2D:
        if (o->act != FASTNN_ACT_IDENTITY && o->act != FASTNN_ACT_RELU) return 0;
        /* a ReLU epilogue is the next op, an aliased ReLU that forms relu' in backward */
        if (o->act == FASTNN_ACT_RELU &&
            !(next && next->kind == FASTNN_OP_ACT && next->y == -1 && next->act == FASTNN_ACT_RELU))
            return 0;
        if (o->kind == FASTNN_OP_LINEAR) {
            if (o->in[1] != 1 || o->in[2] != 1 || o->out[1] != 1 || o->out[2] != 1) return 0;
            if (fastnn_mul3_i64(&k, o->in[0], o->out[0], 1) || !inside(o->w, k, net->nparams))
                return 0;
        } else {
            fastnn_conv2d_geom g = geom(o, 1);
            if (fastnn_conv2d_check(&g) != FASTNN_OK) return 0;
            if (fastnn_mul3_i64(&k, o->out[0], o->in[0] / o->groups, o->kh * o->kw) ||
                !inside(o->w, k, net->nparams))
                return 0;
        }
        if (o->b >= 0 && !inside(o->b, o->out[0], net->nparams)) return 0;
        return o->rs == -1;
    case FASTNN_OP_MAXPOOL2D:
    case FASTNN_OP_AVGPOOL2D:
        if (o->out[0] != C || o->out[1] != fastnn_pool_out_size(o->in[1], o->kh, o->sh, o->ph) ||
            o->out[2] != fastnn_pool_out_size(o->in[2], o->kw, o->sw, o->pw))
            return 0;
        if (o->kind == FASTNN_OP_MAXPOOL2D && !region_ok(net, o->aux, nout, 8)) return 0;
        return o->w == -1 && o->b == -1 && o->rs == -1;
    case FASTNN_OP_GLOBAL_AVGPOOL:
        return o->out[0] == C && o->out[1] == 1 && o->out[2] == 1 && o->w == -1 &&
               o->b == -1 && o->rs == -1;
    case FASTNN_OP_BATCHNORM:
        if (!same3(o->in, o->out) || !region_ok(net, o->aux, 2 * C, (int64_t)es)) return 0;
        /* a fused ReLU as for Linear / Conv2d: the next op, aliased */
        if (o->act != FASTNN_ACT_IDENTITY &&
            !(o->act == FASTNN_ACT_RELU && next && next->kind == FASTNN_OP_ACT &&
              next->y == -1 && next->act == FASTNN_ACT_RELU))
            return 0;
        if ((o->w >= 0) != (o->b >= 0)) return 0;
        if (o->w >= 0 && (!inside(o->w, C, net->nparams) || !inside(o->b, C, net->nparams)))
            return 0;
        if (o->rs >= 0 && (!net->stats || !inside(o->rs, 2 * C, net->nstats))) return 0;
        return o->eps >= 0 && o->eps <= 1e300 && o->momentum >= 0 && o->momentum <= 1;
    case FASTNN_OP_ACT:
        if (!same3(o->in, o->out) || !act_valid(o->act)) return 0;
        if (o->y == -1) {   /* fused into the previous Linear / Conv2d / BatchNorm: ReLU only */
            const fastnn_op *p = &net->ops[i - 1];
            if (o->act != FASTNN_ACT_RELU || p->act != FASTNN_ACT_RELU ||
                (p->kind != FASTNN_OP_LINEAR && p->kind != FASTNN_OP_CONV2D &&
                 p->kind != FASTNN_OP_BATCHNORM))
                return 0;
        }
        return o->w == -1 && o->b == -1 && o->rs == -1;
    case FASTNN_OP_DROPOUT:
        return same3(o->in, o->out) && o->drop >= 0 && o->drop < 1 && o->w == -1 &&
               o->b == -1 && o->rs == -1;
    case FASTNN_OP_FLATTEN:
        return o->out[0] == nin && o->out[1] == 1 && o->out[2] == 1 && o->w == -1 &&
               o->b == -1 && o->rs == -1;
    default:
        return 0;
    }
}

fastnn_status fastnn_plan_check(const fastnn_net *net) {
    if (!net->ops) return FASTNN_ENULL;
    if (net->nops < 1 || net->nops > NOPS_MAX || net->nunits != 0 || net->row_bytes < 0 ||
        net->nstats < 0 || net->l2 != 0)
        return FASTNN_EINVAL;
    for (int i = 0; i < net->nops; i++)
        if (!op_ok(net, i)) return FASTNN_EINVAL;
    return FASTNN_OK;
}

/* ---- forward ---------------------------------------------------------------------------- */

fastnn_status fastnn_plan_forward(const fastnn_net *net, char *plan, const char *x, int64_t B,
                                  int train, uint64_t key, int64_t row0) {
    fastnn_dtype dt = net->dt;
    fastnn_team *team = fastnn_cur_team;
    size_t es = esize(dt);
    fastnn_status st = FASTNN_OK;
    for (int i = 0; i < net->nops && st == FASTNN_OK; i++) {
        const fastnn_op *o = &net->ops[i];
        const char *h = in_of(net, plan, x, i);
        char *y = out_of(net, plan, x, i);
        char *aux = o->aux >= 0 ? plan + o->aux * net->max_batch : NULL;
        const char *w = param(net, net->params, o->w), *b = param(net, net->params, o->b);
        int64_t C = o->in[0], H = o->in[1], W = o->in[2], n = B * fastnn_op_size(o->out);
        switch (o->kind) {
        case FASTNN_OP_LINEAR:
            st = fastnn_gemm_bias_act(dt, 0, 1, B, o->out[0], C, 1.0, h, C, w, C, 0.0, y,
                                      o->out[0], b, o->act, o->p, o->p2);
            break;
        case FASTNN_OP_CONV2D: {
            fastnn_conv2d_geom g = geom(o, B);
            st = fastnn_conv2d(dt, y, h, w, b, &g, o->act, o->p, o->p2);
            break;
        }
        case FASTNN_OP_MAXPOOL2D:
            st = fastnn_maxpool2d(dt, y, (int64_t *)aux, h, B, C, H, W, o->kh, o->kw, o->sh,
                                  o->sw, o->ph, o->pw);
            break;
        case FASTNN_OP_AVGPOOL2D:
            st = fastnn_avgpool2d(dt, y, h, B, C, H, W, o->kh, o->kw, o->sh, o->sw, o->ph, o->pw,
                                  o->count_include_pad);
            break;
        case FASTNN_OP_GLOBAL_AVGPOOL:
            st = fastnn_global_avgpool(dt, y, h, B, C, H * W);
            break;
        case FASTNN_OP_BATCHNORM: {
            /* training, or no running statistics: the batch's (PyTorch's rule) */
            int batch = train || o->rs < 0;
            void *rm = o->rs >= 0 ? param(net, net->stats, o->rs) : NULL;
            void *rv = o->rs >= 0 ? param(net, net->stats, o->rs + C) : NULL;
            /* training updates rm, rv; eval reads them unchanged */
            st = (o->act == FASTNN_ACT_RELU ? fastnn_batchnorm_relu : fastnn_batchnorm)(
                dt, batch, y, aux, aux + (size_t)C * es, rm, rv, h, w, b, B, C, H * W,
                o->momentum, o->eps);
            break;
        }
        case FASTNN_OP_ACT:
            if (o->y >= 0) st = fastnn_act_forward(dt, o->act, o->p, o->p2, y, h, n);
            break;
        case FASTNN_OP_DROPOUT:
            FASTNN_ON_THREAD0(team, st, (memcpy(y, h, (size_t)n * es),
                              train && o->drop > 0
                                  ? fastnn_net_dropout(dt, y, n, o->drop,
                                                       fastnn_net_mix64(key ^ (uint64_t)i),
                                                       row0 * fastnn_op_size(o->out))
                                  : FASTNN_OK));
            break;
        case FASTNN_OP_FLATTEN:
            break;
        }
    }
    return st;
}

/* ---- backward --------------------------------------------------------------------------- */

fastnn_status fastnn_plan_backward(const fastnn_net *net, char *plan, const char *x,
                                   char *d0, char *d1, int64_t B, uint64_t key, int64_t row0) {
    fastnn_dtype dt = net->dt;
    fastnn_team *team = fastnn_cur_team;
    size_t es = esize(dt);
    char *d[2] = {d0, d1};
    int cur = 0, first = net->nops;   /* first: the first op with parameters */
    for (int i = 0; i < net->nops; i++)
        if (has_params(&net->ops[i])) { first = i; break; }
    fastnn_status st = FASTNN_OK;
    for (int i = net->nops - 1; i >= first && st == FASTNN_OK; i--) {
        const fastnn_op *o = &net->ops[i];
        const char *h = in_of(net, plan, x, i);
        char *aux = o->aux >= 0 ? plan + o->aux * net->max_batch : NULL;
        char *g = d[cur], *dx = i > first ? d[1 - cur] : NULL;
        const char *w = param(net, net->params, o->w);
        char *gw = param(net, net->grads, o->w), *gb = param(net, net->grads, o->b);
        int64_t C = o->in[0], H = o->in[1], W = o->in[2], n = B * fastnn_op_size(o->out);
        switch (o->kind) {
        case FASTNN_OP_LINEAR: {
            int64_t out = o->out[0];
            st = fastnn_gemm(dt, 1, 0, out, C, B, 1.0, g, out, h, C, 0.0, gw, C);
            if (st == FASTNN_OK && gb) st = fastnn_bias_grad(dt, gb, g, B, out, 0.0);
            if (st == FASTNN_OK && dx)
                st = fastnn_gemm(dt, 0, 0, B, C, out, 1.0, g, out, w, C, 0.0, dx, C);
            break;
        }
        case FASTNN_OP_CONV2D: {
            fastnn_conv2d_geom gm = geom(o, B);
            st = fastnn_conv2d_backward_weight(dt, gw, gb, g, h, &gm, 0.0);
            if (st == FASTNN_OK && dx) st = fastnn_conv2d_backward_data(dt, dx, g, w, &gm);
            break;
        }
        case FASTNN_OP_MAXPOOL2D:
            st = fastnn_maxpool2d_backward_plan(dt, dx, g, (const int64_t *)aux, B, C, H, W,
                                                o->kh, o->kw, o->sh, o->sw, o->ph, o->pw);
            break;
        case FASTNN_OP_AVGPOOL2D:
            st = fastnn_avgpool2d_backward(dt, dx, g, B, C, H, W, o->kh, o->kw, o->sh, o->sw,
                                           o->ph, o->pw, o->count_include_pad);
            break;
        case FASTNN_OP_GLOBAL_AVGPOOL:
            st = fastnn_global_avgpool_backward(dt, dx, g, B, C, H * W);
            break;
        case FASTNN_OP_BATCHNORM:
            if (o->act == FASTNN_ACT_RELU)   /* relu' from its own output, inside its passes */
                st = fastnn_batchnorm_relu_backward(dt, 1, dx, gw, gb, g, h, aux,
                                                    aux + (size_t)C * es, w, B, C, H * W, 0.0,
                                                    out_of(net, plan, x, i));
            else
                st = fastnn_batchnorm_backward(dt, 1, dx, gw, gb, g, h, aux,
                                               aux + (size_t)C * es, w, B, C, H * W, 0.0);
            break;
        case FASTNN_OP_ACT:   /* in place; a fused ReLU reads its output (relu' alike) */
            if (o->y == -1 && i > 0 && net->ops[i - 1].kind == FASTNN_OP_BATCHNORM)
                continue;     /* done by the BatchNorm's backward */
            if (o->act != FASTNN_ACT_IDENTITY)
                st = fastnn_act_backward(dt, o->act, o->p, o->p2, g, g, h, n);
            continue;
        case FASTNN_OP_DROPOUT:
            if (o->drop > 0)
                FASTNN_ON_THREAD0(team, st, fastnn_net_dropout(dt, g, n, o->drop,
                                                               fastnn_net_mix64(key ^ (uint64_t)i),
                                                               row0 * fastnn_op_size(o->out)));
            continue;
        case FASTNN_OP_FLATTEN:
            continue;
        }
        if (dx) cur = 1 - cur;
    }
    return st;
}
