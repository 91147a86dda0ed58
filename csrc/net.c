/* The fused training step (see include/fastnn/net.h): the same kernels as the per-op path,
 * called in one native loop over mini-batches with no Python in between.
 *
 * Arena, for B = max_batch rows:  x [B, in0] | targets | y_i [B, out_i] for each unit |
 * z_i [B, out_i] for units whose activation is applied separately | two gradient buffers
 * [B, widest]. A unit with ReLU or no activation and no dropout keeps only y: its forward is
 * one GEMM with bias and ReLU in the micro-kernel's registers, and relu'(z) = relu'(y).
 */
#include <math.h>
#include <string.h>
#include "fastnn/net.h"
#include "plan_exec.h"
#include "ref/common.h"

static size_t esize(fastnn_dtype dt) { return dt == FASTNN_F32 ? 4 : 8; }

static size_t align64(size_t n) { return (n + 63) / 64 * 64; }

/* Activation fused into the GEMM, keeping only y. */
static int fused(const fastnn_unit *u) {
    return u->drop == 0 && (u->act == FASTNN_ACT_IDENTITY || u->act == FASTNN_ACT_RELU);
}

typedef struct {
    char *x, *t, *d[2];
    char *y[64], *z[64];
    char *plan;     /* a layer plan's region: row_bytes per row (net->nops > 0) */
    int64_t row0;   /* data-parallel: the arena's first row is this row of the global batch */
    double denom;   /* data-parallel: > 0, the mean's denominator over the global batch */
    int disjoint;   /* fastnn_net_train: the units' W and b lie apart inside the buffer */
} layout;

#define FASTNN_NET_MAX_UNITS 64

/* Values per row of X and of the network's output; the output of the last layer. */
static int64_t net_in(const fastnn_net *net) {
    return net->nops > 0 ? fastnn_op_size(net->ops[0].in) : net->units[0].in;
}
static int64_t net_out(const fastnn_net *net) {
    return net->nops > 0 ? fastnn_op_size(net->ops[net->nops - 1].out)
                         : net->units[net->nunits - 1].out;
}
static char *net_y(const fastnn_net *net, const layout *L) {
    return net->nops > 0 ? fastnn_plan_output(net, L->plan, L->x) : L->y[net->nunits - 1];
}

/* Carve the arena (or, with base NULL, only count its bytes). Returns 0 when a size
 * overflows (every product is checked: sizes come from the caller). */
static size_t carve(const fastnn_net *net, char *base, layout *L) {
    size_t es = esize(net->dt), off = 0, bytes;
    L->disjoint = 0;
    int64_t B = net->max_batch, widest = 1;
    const fastnn_unit *u = net->units;
#define TAKE(ptr, rows, cols, size) do {                                                       \
        if (fastnn_bytes3(&bytes, rows, cols, size) || __builtin_add_overflow(off, bytes, &off)) \
            return 0;                                                                          \
        if (base) (ptr) = base + off - bytes;                                                  \
    } while (0)
    TAKE(L->x, B, net_in(net), es);
    if (net->loss == FASTNN_NET_CROSS_ENTROPY) TAKE(L->t, B, 1, sizeof(int64_t));
    else TAKE(L->t, B, net_out(net), es);
    if (net->nops > 0) {
        off = align64(off);
        TAKE(L->plan, B, net->row_bytes, 1);
        off = align64(off);
        widest = fastnn_plan_widest(net);
    }
    for (int i = 0; i < net->nunits; i++) {
        TAKE(L->y[i], B, u[i].out, es);
        if (!fused(&u[i])) TAKE(L->z[i], B, u[i].out, es);
        else if (base) L->z[i] = NULL;
        if (u[i].out > widest) widest = u[i].out;
    }
    TAKE(L->d[0], B, widest, es);
    TAKE(L->d[1], B, widest, es);
#undef TAKE
    if (base) L->row0 = 0, L->denom = 0;
    return off > (size_t)INT64_MAX ? 0 : off;
}

static int units_valid(const fastnn_net *net) {
    if (net && net->nops > 0)   /* a layer plan: its sizes, checked by fastnn_plan_check */
        return net->ops && net->nunits == 0 && net->max_batch >= 1 &&
               fastnn_plan_check(net) == FASTNN_OK;
    if (!net || !net->units || net->nunits < 1 || net->nunits > FASTNN_NET_MAX_UNITS ||
        net->max_batch < 1)
        return 0;
    for (int i = 0; i < net->nunits; i++)
        if (net->units[i].in < 1 || net->units[i].out < 1) return 0;
    return 1;
}

int64_t fastnn_net_arena_bytes(const fastnn_net *net) {
    layout L;
    if (!units_valid(net)) return 0;
    return (int64_t)carve(net, NULL, &L);   /* 0: too large */
}

static int finite_ge0(double v) { return v >= 0 && v <= 1.7976931348623157e308; }

/* The optimizer's and the loss's scalars, as the Python optimizers and losses check them. */
static int hyper_valid(const fastnn_net *net) {
    const fastnn_optim *o = &net->opt;
    if (!finite_ge0(o->lr) || !finite_ge0(o->weight_decay) || !finite_ge0(o->eps) ||
        !finite_ge0(o->momentum) || !finite_ge0(o->lr_decay) || !finite_ge0(o->alpha) ||
        !(o->dampening >= -1.7976931348623157e308 && o->dampening <= 1.7976931348623157e308))
        return 0;
    if (o->kind == FASTNN_OPT_ADAM && !(o->beta1 >= 0 && o->beta1 < 1 && o->beta2 >= 0 && o->beta2 < 1))
        return 0;
    if (o->kind == FASTNN_OPT_SGD && o->nesterov && (o->momentum <= 0 || o->dampening != 0))
        return 0;
    if (!(net->label_smoothing >= 0 && net->label_smoothing <= 1)) return 0;
    if (net->loss == FASTNN_NET_HUBER && !(net->delta > 0 && net->delta <= 1.7976931348623157e308))
        return 0;
    return 1;
}

fastnn_status fastnn_net_check(const fastnn_net *net) {
    fastnn_status st;
    if (!net || !(net->nops > 0 ? (void *)net->ops : (void *)net->units) || !net->params ||
        !net->grads || !net->arena)
        return FASTNN_ENULL;
    if (net->dt != FASTNN_F32 && net->dt != FASTNN_F64) return FASTNN_EINVAL;
    if (net->nops > 0 && (st = fastnn_plan_check(net)) != FASTNN_OK) return st;
    if (!units_valid(net) || net->nparams < 1 || carve(net, NULL, &(layout){0}) == 0)
        return FASTNN_EINVAL;
    for (int i = 0; i < net->nunits; i++) {
        const fastnn_unit *u = &net->units[i];
        int64_t end;
        if (i > 0 && u->in != net->units[i - 1].out) return FASTNN_EINVAL;
        /* [w, w + in*out) and [b, b + out) inside the buffer, with no wrap-around */
        if (u->w < 0 || fastnn_madd_i64(&end, u->in, u->out, u->w) || end > net->nparams)
            return FASTNN_EINVAL;
        if (u->b >= 0 && (__builtin_add_overflow(u->b, u->out, &end) || end > net->nparams))
            return FASTNN_EINVAL;
        if (u->act < FASTNN_ACT_IDENTITY || u->act > FASTNN_ACT_SOFTPLUS) return FASTNN_EINVAL;
        if (!(u->drop >= 0 && u->drop < 1)) return FASTNN_EINVAL;
    }
    if (!finite_ge0(net->l2)) return FASTNN_EINVAL;
    if (net->loss < FASTNN_NET_CROSS_ENTROPY || net->loss > FASTNN_NET_BCE_LOGITS)
        return FASTNN_EINVAL;
    const fastnn_optim *o = &net->opt;
    if (o->kind < FASTNN_OPT_SGD || o->kind > FASTNN_OPT_ADAGRAD || o->step < 0)
        return FASTNN_EINVAL;
    if (!hyper_valid(net)) return FASTNN_EINVAL;
    if (o->kind == FASTNN_OPT_SGD && o->momentum != 0 && !o->s1) return FASTNN_ENULL;
    if (o->kind == FASTNN_OPT_ADAM && (!o->s1 || !o->s2 || (o->amsgrad && !o->s3)))
        return FASTNN_ENULL;
    if (o->kind == FASTNN_OPT_RMSPROP &&
        (!o->s1 || (o->momentum > 0 && !o->s2) || (o->centered && !o->s3)))
        return FASTNN_ENULL;
    if (o->kind == FASTNN_OPT_ADAGRAD && !o->s1) return FASTNN_ENULL;
    return FASTNN_OK;
}

/* ---- small helpers -------------------------------------------------------------------- */

/* splitmix64: a counter-based generator, so a dropout mask depends only on its key. */
static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* v[i] *= keep(i) / (1 - p), keep(i) = uniform(key, i) >= p. */
/* i0: the element number of v[0] in the whole batch (data-parallel slices start past 0). */
static fastnn_status dropout_apply(fastnn_dtype dt, void *v, int64_t n, double p, uint64_t key,
                                   int64_t i0) {
    double scale = 1.0 / (1.0 - p);
    for (int64_t i = 0; i < n; i++) {
        double u = (double)(mix64(key ^ mix64((uint64_t)(i0 + i))) >> 11) * 0x1.0p-53;
        double m = u >= p ? scale : 0.0;
        if (dt == FASTNN_F32) ((float *)v)[i] *= (float)m;
        else ((double *)v)[i] *= m;
    }
    return FASTNN_OK;
}

/* The same, for the layer plan's Dropout op (csrc/plan.c). */
uint64_t fastnn_net_mix64(uint64_t x) { return mix64(x); }
fastnn_status fastnn_net_dropout(fastnn_dtype dt, void *v, int64_t n, double p, uint64_t key,
                                 int64_t i0) {
    return dropout_apply(dt, v, n, p, key, i0);
}

/* Rows whose argmax is the label; a row holding a NaN never counts (its argmax is no class). */
static int64_t count_correct(fastnn_dtype dt, const void *y, const int64_t *labels, int64_t rows,
                             int64_t cols) {
    int64_t ok = 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t best = 0;
        int nan = 0;   /* a row with a NaN output is never counted as correct */
        if (dt == FASTNN_F32) {
            const float *row = (const float *)y + r * cols;
            for (int64_t c = 0; c < cols; c++) {
                nan |= row[c] != row[c];
                if (row[c] > row[best]) best = c;
            }
        } else {
            const double *row = (const double *)y + r * cols;
            for (int64_t c = 0; c < cols; c++) {
                nan |= row[c] != row[c];
                if (row[c] > row[best]) best = c;
            }
        }
        ok += !nan && best == labels[r];
    }
    return ok;
}

/* fastnn_net.metric_sums over rows of outputs y and targets t (cols values a row). */
static void add_metrics(const fastnn_net *net, const void *y, const void *t, int64_t rows,
                        int64_t cols) {
    double *m = net->metric_sums;
    for (int64_t r = 0; r < rows; r++) {
        double a = 0, q = 0, hit = 0;
        for (int64_t c = 0; c < cols; c++) {
            double yv, e;
            if (net->dt == FASTNN_F32) {
                float yf = ((const float *)y)[r * cols + c], tf = ((const float *)t)[r * cols + c];
                yv = yf, e = (double)(yf - tf);
                hit += yf == yf && (yf > 0) == (tf > 0.5f);
            } else {
                double td = ((const double *)t)[r * cols + c];
                yv = ((const double *)y)[r * cols + c], e = yv - td;
                hit += yv == yv && (yv > 0) == (td > 0.5);
            }
            a += fabs(e), q += e * e;
        }
        m[0] += a / (double)cols, m[1] += q / (double)cols, m[2] += hit / (double)cols;
    }
}

static char *at(const fastnn_net *net, void *base, int64_t offset) {
    return (char *)base + (size_t)offset * esize(net->dt);
}

/* ---- forward, loss, backward, update --------------------------------------------------- */

static fastnn_status forward(const fastnn_net *net, const layout *L, const char *x, int64_t B,
                             int train, uint64_t key) {
    if (net->nops > 0) return fastnn_plan_forward(net, L->plan, x, B, train, key, L->row0);
    fastnn_dtype dt = net->dt;
    fastnn_team *team = fastnn_cur_team;
    const char *h = x;
    fastnn_status st;
    for (int i = 0; i < net->nunits; i++) {
        const fastnn_unit *u = &net->units[i];
        const char *w = at(net, net->params, u->w);
        const char *b = u->b >= 0 ? at(net, net->params, u->b) : NULL;
        if (fused(u)) {
            st = fastnn_gemm_bias_act(dt, 0, 1, B, u->out, u->in, 1.0, h, u->in, w, u->in, 0.0,
                                      L->y[i], u->out, b, u->act, u->p, u->p2);
        } else {
            st = fastnn_gemm_bias_act(dt, 0, 1, B, u->out, u->in, 1.0, h, u->in, w, u->in, 0.0,
                                      L->z[i], u->out, b, FASTNN_ACT_IDENTITY, 0, 0);
            if (st == FASTNN_OK)
                st = fastnn_act_forward(dt, u->act, u->p, u->p2, L->y[i], L->z[i], B * u->out);
            if (st == FASTNN_OK && train && u->drop > 0)
                FASTNN_ON_THREAD0(team, st, dropout_apply(dt, L->y[i], B * u->out, u->drop,
                                                   mix64(key ^ (uint64_t)i), L->row0 * u->out));
        }
        if (st != FASTNN_OK) return st;
        h = L->y[i];
    }
    return FASTNN_OK;
}

/* Loss of the last y against the targets; its gradient (scaled for the reduction) into g. */
static fastnn_status loss_and_grad(const fastnn_net *net, const layout *L, int64_t B, void *g,
                                   double *value) {
    fastnn_dtype dt = net->dt;
    int64_t outw = net_out(net);
    const char *y = net_y(net, L);
    int64_t n = B * outw;
    double total = 0, wsum = 0, nd = L->denom > 0 ? L->denom : (double)n;
    fastnn_status st;
    switch (net->loss) {
    case FASTNN_NET_CROSS_ENTROPY: {
        const int64_t *lab = (const int64_t *)L->t;
        double scale = 1.0;
        if (net->mean && L->denom > 0) {
            scale = 1.0 / L->denom;
        } else if (net->mean && !net->loss_weight) {
            scale = 1.0 / (double)B;   /* the weight sum of B rows of weight 1, exactly */
        } else if (net->mean) {
            st = fastnn_cross_entropy(dt, NULL, &wsum, NULL, NULL, 1.0, y, lab, net->loss_weight,
                                      net->label_smoothing, B, outw);
            if (st != FASTNN_OK) return st;
            scale = 1.0 / wsum;
        }
        st = fastnn_cross_entropy(dt, &total, &wsum, NULL, g, scale, y, lab, net->loss_weight,
                                  net->label_smoothing, B, outw);
        *value = net->mean ? total / (L->denom > 0 ? L->denom : wsum) : total;
        return st;
    }
    case FASTNN_NET_BCE_LOGITS:
        st = fastnn_bce_logits(dt, &total, NULL, g, net->mean ? 1.0 / nd : 1.0, y, L->t,
                               net->loss_weight, B, outw);
        break;
    default: {
        fastnn_loss kind = net->loss == FASTNN_NET_MSE ? FASTNN_LOSS_MSE
                           : net->loss == FASTNN_NET_L1 ? FASTNN_LOSS_L1 : FASTNN_LOSS_HUBER;
        st = fastnn_regression_loss(dt, kind, net->delta, &total, NULL, g,
                                    net->mean ? 1.0 / nd : 1.0, y, L->t, n);
    }
    }
    *value = net->mean ? total / nd : total;
    return st;
}

/* Range i of the units' parameters: W of unit i/2 for even i, its b for odd i (start, end in
 * *hi; -1 for no bias). */
static int64_t unit_range(const fastnn_net *net, int i, int64_t *hi) {
    const fastnn_unit *u = &net->units[i / 2];
    int64_t lo = i % 2 ? u->b : u->w, n = i % 2 ? u->out : u->in * u->out;
    if (hi) *hi = lo + n;
    return lo < 0 || n <= 0 ? -1 : lo;
}

/* W and b of every unit inside the buffer and apart (the rest, e.g. alignment padding, is
 * updated by update_rest): checked once per fastnn_net_train call. */
static int units_disjoint(const fastnn_net *net) {
    if (net->nops > 0) return 0;
    for (int i = 0; i < 2 * net->nunits; i++) {
        int64_t hi, lo = unit_range(net, i, &hi);
        if (lo < 0) continue;
        if (hi > net->nparams) return 0;
        for (int j = 0; j < i; j++) {
            int64_t hj, lj = unit_range(net, j, &hj);
            if (lj >= 0 && lo < hj && lj < hi) return 0;
        }
    }
    return 1;
}

/* The step's optimizer update as a fastnn_update for the weight-gradient GEMMs to apply
 * (backward, with the L2 term added to each gradient tile first), or NULL where update() must
 * run after the pass: a layer plan, optimizers other than SGD and Adam, arguments fastnn_sgd
 * or fastnn_adam would refuse, or units whose W and b overlap (L->disjoint). */
static const fastnn_update *fused_update(const fastnn_net *net, const layout *L, int64_t step,
                                        int64_t B, fastnn_update *u) {
    const fastnn_optim *o = &net->opt;
    if (!L->disjoint || step < 1 || B < 1) return NULL;
    memset(u, 0, sizeof *u);
    u->dt = net->dt;
    u->p = net->params, u->g = net->grads, u->s1 = o->s1, u->s2 = o->s2, u->s3 = o->s3;
    u->lr = o->lr, u->weight_decay = o->weight_decay, u->maximize = o->maximize;
    u->l2 = net->l2 != 0 ? net->l2 / (double)B : 0;   /* as backward adds it */
    if (o->kind == FASTNN_OPT_SGD) {
        if (o->nesterov && (o->momentum <= 0 || o->dampening != 0)) return NULL;
        if (o->momentum != 0 && !o->s1) return NULL;
        u->momentum = o->momentum, u->dampening = o->dampening, u->nesterov = o->nesterov;
        u->first = step == 1;
        return u;
    }
    if (o->kind != FASTNN_OPT_ADAM || !o->s1 || !o->s2 || (o->amsgrad && !o->s3) ||
        !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1))
        return NULL;
    /* as update() and fastnn_adam compute them */
    u->adam = 1, u->beta1 = o->beta1, u->beta2 = o->beta2;
    u->eps = net->adam_eps_uncorrected ? o->eps / sqrt(1.0 - pow(o->beta2, (double)step)) : o->eps;
    u->decoupled = o->decoupled, u->amsgrad = o->amsgrad;
    u->step_size = o->lr / (1 - pow(o->beta1, (double)step));
    u->bc2_sqrt = sqrt(1 - pow(o->beta2, (double)step));
    return u;
}

/* What a fused update leaves after the weight GEMMs: the biases and any element of the buffer
 * outside every unit's W and b. */
static fastnn_status update_rest(const fastnn_net *net, const fastnn_update *weights) {
    fastnn_update b = *weights, *upd = &b;
    b.l2 = 0;   /* the L2 term is the weights' */
    for (int64_t pos = 0; pos < net->nparams;) {
        int64_t next = net->nparams, end = -1;
        int bias = 0;
        for (int i = 0; i < 2 * net->nunits; i++) {
            int64_t hi, lo = unit_range(net, i, &hi);
            if (lo == pos) end = hi, bias = i % 2;
            else if (lo > pos && lo < next) next = lo;
        }
        if (end < 0) {   /* a gap, up to the next range */
            fastnn_update_block(upd, pos, 0, 1, next - pos);
            pos = next;
        } else {
            if (bias) fastnn_update_block(upd, pos, 0, 1, end - pos);
            pos = end;
        }
    }
    return FASTNN_OK;
}

/* Backpropagation through the units. With upd (see fused_update), each weight gradient's GEMM
 * also applies the optimizer step to its tiles as they finish, while they are in cache, and the
 * biases are updated at the end: the step's update() is then done. dx is computed before dW,
 * so it uses the weights before the step either way. */
static fastnn_status backward(const fastnn_net *net, const layout *L, const char *x, int64_t B,
                              uint64_t key, const fastnn_update *upd) {
    if (net->nops > 0)
        return fastnn_plan_backward(net, L->plan, x, L->d[0], L->d[1], B, key, L->row0);
    fastnn_dtype dt = net->dt;
    fastnn_team *team = fastnn_cur_team;
    int cur = 0;   /* L->d[cur] holds d loss / d y_i on entry to unit i, then d loss / d z_i */
    fastnn_status st = FASTNN_OK;
    for (int i = net->nunits - 1; i >= 0; i--) {
        const fastnn_unit *u = &net->units[i];
        char *g = L->d[cur];
        int64_t n = B * u->out;
        /* d y -> d z, unless the GEMM that produced g already applied act' (see below) */
        if (i == net->nunits - 1 || !fused(u)) {
            if (u->drop > 0)
                FASTNN_ON_THREAD0(team, st, dropout_apply(dt, g, n, u->drop, mix64(key ^ (uint64_t)i),
                                                         L->row0 * u->out));
            if (st == FASTNN_OK && u->act != FASTNN_ACT_IDENTITY)
                st = fastnn_act_backward(dt, u->act, u->p, u->p2, g, g, fused(u) ? L->y[i] : L->z[i],
                                         n);
            if (st != FASTNN_OK) return st;
        }
        const char *w = at(net, net->params, u->w);
        if (i > 0) {
            /* d y_{i-1} = dZ W; when unit i-1 is fused its act' is applied in the same GEMM */
            const fastnn_unit *p = &net->units[i - 1];
            if (fused(p) && p->act == FASTNN_ACT_RELU)
                st = fastnn_gemm_act_backward(dt, 0, 0, B, u->in, u->out, 1.0, g, u->out, w, u->in,
                                              0.0, L->d[1 - cur], u->in, L->y[i - 1], u->in,
                                              FASTNN_ACT_RELU, 0, 0);
            else
                st = fastnn_gemm(dt, 0, 0, B, u->in, u->out, 1.0, g, u->out, w, u->in, 0.0,
                                 L->d[1 - cur], u->in);
            if (st != FASTNN_OK) return st;
        }
        /* dW = dZ^T h, db = column sums of dZ */
        const char *h = i > 0 ? L->y[i - 1] : x;
        char *dw = at(net, net->grads, u->w);
        if (upd)
            st = fastnn_gemm_update(dt, 1, 0, u->out, u->in, B, g, u->out, h, u->in, dw, u->in,
                                    upd);
        else
            st = fastnn_gemm(dt, 1, 0, u->out, u->in, B, 1.0, g, u->out, h, u->in, 0.0, dw,
                             u->in);
        if (st == FASTNN_OK && net->l2 != 0 && !upd)   /* else in the update */
            FASTNN_ON_THREAD0(team, st, (fastnn_add_l2(dt, dw, w, u->in * u->out,
                                                       net->l2 / (double)B), FASTNN_OK));
        if (st == FASTNN_OK && u->b >= 0)
            st = fastnn_bias_grad(dt, at(net, net->grads, u->b), g, B, u->out, 0.0);
        if (st != FASTNN_OK) return st;
        cur = 1 - cur;
    }
    if (upd)
        FASTNN_ON_THREAD0(team, st, update_rest(net, upd));
    return st;
}

/* The optimizer step number `step` (1 for the first update) over the flat buffers. */
static fastnn_status update(const fastnn_net *net, int64_t step) {
    const fastnn_optim *o = &net->opt;
    fastnn_dtype dt = net->dt;
    int64_t n = net->nparams;
    switch (o->kind) {
    case FASTNN_OPT_SGD:
        return fastnn_sgd(dt, net->params, o->s1, net->grads, n, o->lr, o->momentum, o->dampening,
                          o->weight_decay, o->nesterov, o->maximize, step == 1);
    case FASTNN_OPT_ADAM:
        /* (sqrt(v) + eps) / sqrt(bc2) = sqrt(v) / sqrt(bc2) + eps / sqrt(bc2) */
        return fastnn_adam(dt, net->params, o->s1, o->s2, o->s3, net->grads, n, o->lr, o->beta1,
                           o->beta2,
                           net->adam_eps_uncorrected
                               ? o->eps / sqrt(1.0 - pow(o->beta2, (double)step)) : o->eps,
                           o->weight_decay, o->decoupled, o->amsgrad,
                           o->maximize, step);
    case FASTNN_OPT_RMSPROP:
        return fastnn_rmsprop(dt, net->params, o->s1, o->s2, o->s3, net->grads, n, o->lr,
                              o->alpha, o->eps, o->weight_decay, o->momentum, o->centered,
                              o->maximize);
    default:
        return fastnn_adagrad(dt, net->params, o->s1, net->grads, n, o->lr, o->lr_decay,
                              o->weight_decay, o->eps, o->maximize, step);
    }
}

/* Rows index[0:B] of X and Y into the arena (inside a team, each thread copies its share). */
static void gather(const fastnn_net *net, const layout *L, const void *X, const void *Y,
                   const int64_t *idx, int64_t B) {
    size_t es = esize(net->dt);
    size_t xrow = (size_t)net_in(net) * es;
    size_t trow = net->loss == FASTNN_NET_CROSS_ENTROPY
                      ? sizeof(int64_t)
                      : (size_t)net_out(net) * es;
    FASTNN_PARALLEL_RANGE(B, fastnn_cur_team ? fastnn_cur_team->nthreads : 1,
    for (int64_t r = lo_; r < hi_; r++) {
        memcpy(L->x + r * xrow, (const char *)X + idx[r] * xrow, xrow);
        memcpy(L->t + r * trow, (const char *)Y + idx[r] * trow, trow);
    });
}

/* Loss, its gradient into d[0], the running sums: serial (the last layer is small). */
static fastnn_status loss_step(const fastnn_net *net, const layout *L, int64_t B,
                               double *loss_sum, int64_t *correct) {
    double value = 0;
    fastnn_status st = loss_and_grad(net, L, B, L->d[0], &value);
    if (st != FASTNN_OK) return st;
    if (!net->nonfinite_ok && !(value - value == 0))
        return FASTNN_ENONFINITE;   /* NaN or +-inf: no update */
    if (correct && net->loss == FASTNN_NET_CROSS_ENTROPY)
        *correct += count_correct(net->dt, net_y(net, L), (const int64_t *)L->t, B,
                                  net_out(net));
    if (net->metric_sums && net->loss != FASTNN_NET_CROSS_ENTROPY)
        add_metrics(net, net_y(net, L), L->t, B, net_out(net));
    if (loss_sum) *loss_sum += value * (double)B;
    return FASTNN_OK;
}

/* One step on the batch index[0:B]: optimizer step number step + 1. Inside a team every
 * thread runs it; thread 0 alone writes net->opt.step and the sums. */
static fastnn_status one_step(fastnn_net *net, const layout *L, const void *X, const void *Y,
                              const int64_t *index, int64_t B, int64_t step, uint64_t seed,
                              double *loss_sum, int64_t *correct) {
    fastnn_team *team = fastnn_cur_team;
    fastnn_status st;
    gather(net, L, X, Y, index, B);
    uint64_t key = mix64(seed ^ mix64((uint64_t)step));
    if ((st = forward(net, L, L->x, B, 1, key)) != FASTNN_OK) return st;
    FASTNN_ON_THREAD0(team, st, loss_step(net, L, B, loss_sum, correct));
    if (st != FASTNN_OK) return st;
    fastnn_update u;
    const fastnn_update *upd = fused_update(net, L, step + 1, B, &u);
    if ((st = backward(net, L, L->x, B, key, upd)) != FASTNN_OK) return st;
    if (!upd && (st = update(net, step + 1)) != FASTNN_OK) return st;
    if (!team || fastnn_thread_id() == 0) net->opt.step = step + 1;
    return FASTNN_OK;
}

/* The mini-batch loop; inside a team every thread runs it.
 *
 * A team is slower than one thread when the OS gives its other threads' core to another
 * program: thread 0 then waits for them at every barrier. So a call of 8 or more steps checks
 * after steps 1-3: if thread 0 waited more than 15 % of that time, steps 4-6 run on thread 0
 * alone (the others wait), and the faster way runs the rest of the call. Either way the
 * numbers are the same. */
static fastnn_status train_steps(fastnn_net *net, const layout *L, const void *X, const void *Y,
                                 const int64_t *index, int64_t n, int64_t batch_size,
                                 uint64_t seed, double *loss_sum, int64_t *correct) {
    fastnn_team *team = fastnn_cur_team;
    int64_t step = net->opt.step;   /* read by every thread before thread 0 first writes it */
    int64_t nsteps = (n + batch_size - 1) / batch_size;
    int check = team && nsteps >= 8, solo = 0, first = fastnn_thread_id() == 0;
    double mark = 0, waited_mark = 0, team_step = 0;
    fastnn_status st = FASTNN_OK;
    for (int64_t s = 0, done = 0; s < n; s += batch_size, done++) {
        int64_t B = fastnn_min64(batch_size, n - s);
        if (check && first && done == 1) mark = fastnn_now(), waited_mark = team->waited;
        if (check && done == 4) {
            int slow = 0;
            if (first) {
                double now = fastnn_now();
                team_step = (now - mark) / 3;
                slow = team->waited - waited_mark > 0.15 * (now - mark);
                mark = now;
            }
            solo = fastnn_team_share_ptr(team, slow ? (void *)team : NULL) != NULL;
        }
        if (check && solo && done == 7) {
            int alone = first && (fastnn_now() - mark) / 3 < team_step;
            check = solo = 0;
            if (fastnn_team_share_ptr(team, alone ? (void *)team : NULL)) {
                if (!first) return FASTNN_OK;   /* thread 0 goes on alone */
                fastnn_cur_team = team = NULL;
            }
        }
        if (solo)
            FASTNN_ON_THREAD0(team, st, one_step(net, L, X, Y, index + s, B, step, seed, loss_sum,
                                          correct));
        else
            st = one_step(net, L, X, Y, index + s, B, step, seed, loss_sum, correct);
        if (st != FASTNN_OK) return st;
        step++;
    }
    return FASTNN_OK;
}

/* Multiply-adds of one step: forward, weight gradient and (but for the first unit) the
 * input gradient of every unit. */
static double step_work(const fastnn_net *net, int64_t B) {
    double w = 0;
    if (net->nops > 0) return fastnn_plan_work(net, B);
    for (int i = 0; i < net->nunits; i++)
        w += (double)B * (double)net->units[i].in * (double)net->units[i].out * (i > 0 ? 3 : 2);
    return 2 * w;
}

int fastnn_net_threads(const fastnn_net *net, int64_t batch_size) {
    if (!net || (net->nunits < 1 && net->nops < 1) || batch_size < 1) return 1;
    return fastnn_threads_for(step_work(net, batch_size));
}

fastnn_status fastnn_net_train(fastnn_net *net, const void *X, const void *Y, int64_t rows,
                               const int64_t *index, int64_t n, int64_t batch_size,
                               uint64_t seed, double *loss_sum, int64_t *correct) {
    fastnn_status st = fastnn_net_check(net);
    if (st != FASTNN_OK) return st;
    if (n < 0 || rows < 0 || batch_size < 1 || batch_size > net->max_batch) return FASTNN_EINVAL;
    int64_t ext;   /* X [rows, in0] and T [rows, out] must have representable extents */
    if (fastnn_mul3_i64(&ext, rows, net_in(net), 8) ||
        fastnn_mul3_i64(&ext, rows, net_out(net), 8))
        return FASTNN_EINVAL;
    if (n > 0 && (!X || !Y || !index)) return FASTNN_ENULL;
    for (int64_t i = 0; i < n; i++)
        if (index[i] < 0 || index[i] >= rows) return FASTNN_EINVAL;
    layout L;
    carve(net, net->arena, &L);
    L.disjoint = units_disjoint(net);
    /* One parallel region for all the steps of this call, when a step is big enough. */
    int nt = fastnn_net_threads(net, fastnn_min64(batch_size, n));
    if (nt <= 1 || fastnn_cur_team || (net->nops > 0 && fastnn_plan_own_teams(net)))
        return train_steps(net, &L, X, Y, index, n, batch_size, seed, loss_sum, correct);
    fastnn_team team;
    fastnn_team_init(&team, nt);
    st = FASTNN_OK;
    #pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int full = omp_get_num_threads() == nt;   /* fewer threads (nested): thread 0 alone */
#else
        int full = 0;
#endif
        if (full) {
            fastnn_cur_team = &team;
            fastnn_status s = train_steps(net, &L, X, Y, index, n, batch_size, seed, loss_sum,
                                          correct);
            fastnn_cur_team = NULL;
            if (fastnn_thread_id() == 0) st = s;
        } else if (fastnn_thread_id() == 0) {
            st = train_steps(net, &L, X, Y, index, n, batch_size, seed, loss_sum, correct);
        }
    }
    return st;
}

fastnn_status fastnn_net_forward(fastnn_net *net, void *out, const void *X, int64_t rows) {
    fastnn_status st = fastnn_net_check(net);
    if (st != FASTNN_OK) return st;
    int64_t ext;
    if (rows < 0 || fastnn_mul3_i64(&ext, rows, net_in(net), 8) ||
        fastnn_mul3_i64(&ext, rows, net_out(net), 8))
        return FASTNN_EINVAL;
    if (rows > 0 && (!out || !X)) return FASTNN_ENULL;
    layout L;
    carve(net, net->arena, &L);
    size_t es = esize(net->dt);
    int64_t in = net_in(net), outw = net_out(net);
    for (int64_t s = 0; s < rows; s += net->max_batch) {
        int64_t B = fastnn_min64(net->max_batch, rows - s);
        if ((st = forward(net, &L, (const char *)X + (size_t)(s * in) * es, B, 0, 0)) != FASTNN_OK)
            return st;
        memcpy((char *)out + (size_t)(s * outw) * es, net_y(net, &L), (size_t)(B * outw) * es);
    }
    return FASTNN_OK;
}

/* ---- data-parallel steps (fastnn.distributed) ------------------------------------------- *
 * Every rank holds all of X and Y and the same index; the batch index[s : s + B] is the global
 * batch. This rank computes the gradient of its rows of it (the mean's denominator taken over
 * the whole global batch, so the ranks' gradients add up to the batch gradient), d->reduce
 * combines the ranks' gradients in place, and the optimizer update runs here in C. */

/* The denominator of the mean loss over the global batch idx[0:B], as loss_and_grad computes it
 * for the whole batch in one process (cross-entropy: the label weights summed in blocks of
 * FASTNN_SUM_BLOCK / 16 rows, as fastnn_cross_entropy does). 0 for reduction 'sum'. */
static fastnn_status global_denom(const fastnn_net *net, const void *Y, const int64_t *idx,
                                  int64_t B, double *denom) {
    int64_t out = net_out(net);
    *denom = 0;
    if (!net->mean) return FASTNN_OK;
    if (net->loss != FASTNN_NET_CROSS_ENTROPY) {
        *denom = (double)(B * out);
        return FASTNN_OK;
    }
    const int64_t *lab = (const int64_t *)Y;
    for (int64_t r = 0; r < B; r++)
        if (lab[idx[r]] < 0 || lab[idx[r]] >= out) return FASTNN_ELABEL;
    if (!net->loss_weight) {
        *denom = (double)B;
        return FASTNN_OK;
    }
    enum { RB = FASTNN_SUM_BLOCK / 16 };
    double wsum = 0;
    for (int64_t b0 = 0; b0 < B; b0 += RB) {
        double ws = 0;
        for (int64_t r = b0; r < fastnn_min64(B, b0 + RB); r++)
            ws += net->dt == FASTNN_F32 ? (double)((const float *)net->loss_weight)[lab[idx[r]]]
                                        : ((const double *)net->loss_weight)[lab[idx[r]]];
        wsum += ws;
    }
    *denom = wsum;
    return FASTNN_OK;
}

static void fill_zero(const fastnn_net *net, void *g) {
    size_t es = esize(net->dt);
    FASTNN_PARALLEL_RANGE(net->nparams, fastnn_cur_team ? fastnn_cur_team->nthreads : 1,
                          memset((char *)g + lo_ * es, 0, (size_t)(hi_ - lo_) * es));
}

/* dst += src, element by element (the same bits whoever computes it). */
static void add_into(const fastnn_net *net, void *dst, const void *src) {
    FASTNN_PARALLEL_RANGE(net->nparams, fastnn_cur_team ? fastnn_cur_team->nthreads : 1,
    if (net->dt == FASTNN_F32) {
        float *d = (float *)dst; const float *s = (const float *)src;
        for (int64_t i = lo_; i < hi_; i++) d[i] += s[i];
    } else {
        double *d = (double *)dst; const double *s = (const double *)src;
        for (int64_t i = lo_; i < hi_; i++) d[i] += s[i];
    });
}

/* The gradient of rows [r0, r1) of the global batch idx[0:B] into g (written, not added). */
static fastnn_status rows_grad(const fastnn_net *net, const layout *L, const void *X,
                               const void *Y, const int64_t *idx, int64_t B, int64_t r0,
                               int64_t r1, double denom, uint64_t key, void *g,
                               double *loss_sum, int64_t *correct) {
    fastnn_team *team = fastnn_cur_team;
    fastnn_status st = FASTNN_OK;
    if (r1 <= r0) {
        fill_zero(net, g);
        return FASTNN_OK;
    }
    layout Ls = *L;          /* per thread: the slice's place in the batch */
    fastnn_net ns = *net;    /* per thread: where this slice's gradient goes */
    Ls.row0 = r0;
    Ls.denom = denom;
    ns.grads = g;
    int64_t n = r1 - r0;
    gather(&ns, &Ls, X, Y, idx + r0, n);
    if ((st = forward(&ns, &Ls, Ls.x, n, 1, key)) != FASTNN_OK) return st;
    double value = 0;
    FASTNN_ON_THREAD0(team, st, loss_and_grad(&ns, &Ls, n, Ls.d[0], &value));
    if (st != FASTNN_OK) return st;
    if (!team || fastnn_thread_id() == 0) {
        /* value: this slice's share of the batch loss, weighted by the batch as one_step does */
        if (loss_sum) *loss_sum += value * (double)B;
        if (correct && net->loss == FASTNN_NET_CROSS_ENTROPY)
            *correct += count_correct(net->dt, net_y(&ns, &Ls), (const int64_t *)Ls.t, n,
                                      net_out(net));
        if (net->metric_sums && net->loss != FASTNN_NET_CROSS_ENTROPY)
            add_metrics(net, net_y(&ns, &Ls), Ls.t, n, net_out(net));
    }
    return backward(&ns, &Ls, Ls.x, n, key, NULL);
}

/* Exact mode: the sum over shards [lo, hi) of the fixed pairwise tree over the batch's
 * `shards` shards (shard j: rows [B j / K, B (j+1) / K)), into dst; scratch holds one
 * buffer of nparams elements per further level. */
static fastnn_status shard_tree(const fastnn_net *net, const layout *L, const void *X,
                                const void *Y, const int64_t *idx, int64_t B, int64_t K,
                                int64_t lo, int64_t hi, double denom, uint64_t key, char *dst,
                                char *scratch, double *loss_sum, int64_t *correct) {
    if (hi - lo == 1)
        return rows_grad(net, L, X, Y, idx, B, B * lo / K, B * (lo + 1) / K, denom, key, dst,
                         loss_sum, correct);
    int64_t mid = lo + (hi - lo) / 2;
    size_t bytes = (size_t)net->nparams * esize(net->dt);
    fastnn_status st = shard_tree(net, L, X, Y, idx, B, K, lo, mid, denom, key, dst, scratch,
                                  loss_sum, correct);
    if (st == FASTNN_OK)
        st = shard_tree(net, L, X, Y, idx, B, K, mid, hi, denom, key, scratch, scratch + bytes,
                        loss_sum, correct);
    if (st == FASTNN_OK) add_into(net, dst, scratch);
    return st;
}

int64_t fastnn_net_dist_scratch(const fastnn_net *net, const fastnn_net_dist *d) {
    if (!net || !d || d->shards <= 0 || d->size < 1) return 0;
    int64_t m = d->shards / d->size, depth = 0;
    while (((int64_t)1 << depth) < m) depth++;
    return depth * net->nparams;
}

static fastnn_status dist_steps(fastnn_net *net, const fastnn_net_dist *d, const layout *L,
                                const void *X, const void *Y, const int64_t *index, int64_t n,
                                int64_t batch_size, uint64_t seed, double *loss_sum,
                                int64_t *correct) {
    fastnn_team *team = fastnn_cur_team;
    int64_t step = net->opt.step;   /* read by every thread before thread 0 first writes it */
    fastnn_status st = FASTNN_OK;
    for (int64_t s = 0; s < n; s += batch_size, step++) {
        int64_t B = fastnn_min64(batch_size, n - s);
        const int64_t *idx = index + s;
        uint64_t key = mix64(seed ^ mix64((uint64_t)step));
        double denom, part = 0;   /* part: this rank's share of the step's loss (thread 0) */
        if ((st = global_denom(net, Y, idx, B, &denom)) != FASTNN_OK) return st;
        if (d->shards > 0) {
            int64_t m = d->shards / d->size;
            st = shard_tree(net, L, X, Y, idx, B, d->shards, m * d->rank, m * (d->rank + 1),
                            denom, key, net->grads, d->scratch, &part, correct);
        } else {
            st = rows_grad(net, L, X, Y, idx, B, B * d->rank / d->size,
                           B * (d->rank + 1) / d->size, denom, key, net->grads, &part,
                           correct);
        }
        if (st != FASTNN_OK) return st;
        /* A non-finite loss on any rank stops every rank at this step, before its update: the
         * rank marks its gradient's first element NaN, and the reduction carries the mark to
         * all ranks, which all see the same reduced buffer and so take the same branch. */
        if (!team || fastnn_thread_id() == 0) {
            if (!net->nonfinite_ok && !(part - part == 0)) {
                if (net->dt == FASTNN_F32) ((float *)net->grads)[0] = NAN;
                else ((double *)net->grads)[0] = NAN;
            }
            if (loss_sum) *loss_sum += part;
        }
        if (d->reduce)
            FASTNN_ON_THREAD0(team, st, d->reduce(d->ctx, net->grads, net->nparams, step + 1));
        else if (team)
            fastnn_team_barrier(team);
        if (st != FASTNN_OK) return st;
        fastnn_net nu = *net;   /* the update reads the reduced gradient */
        if (d->reduced) nu.grads = d->reduced;
        if (!net->nonfinite_ok) {
            double g0 = net->dt == FASTNN_F32 ? (double)((const float *)nu.grads)[0]
                                              : ((const double *)nu.grads)[0];
            if (g0 != g0) return FASTNN_ENONFINITE;
        }
        if ((st = update(&nu, step + 1)) != FASTNN_OK) return st;
        if (!team || fastnn_thread_id() == 0) net->opt.step = step + 1;
    }
    return FASTNN_OK;
}

fastnn_status fastnn_net_train_dist(fastnn_net *net, const fastnn_net_dist *d, const void *X,
                                    const void *Y, int64_t rows, const int64_t *index,
                                    int64_t n, int64_t batch_size, uint64_t seed,
                                    double *loss_sum, int64_t *correct) {
    fastnn_status st = fastnn_net_check(net);
    if (st != FASTNN_OK) return st;
    if (!d) return FASTNN_ENULL;
    if (d->size < 1 || d->rank < 0 || d->rank >= d->size || d->shards < 0) return FASTNN_EINVAL;
    if (net->l2 != 0) return FASTNN_EINVAL;   /* l2 * W / rows: per-rank rows would scale it */
    for (int i = 0; i < net->nops; i++)   /* batch statistics of a rank's rows alone */
        if (net->ops[i].kind == FASTNN_OP_BATCHNORM) return FASTNN_EINVAL;
    if (d->shards > 0) {
        if (d->shards % d->size != 0)
            return FASTNN_EINVAL;   /* each rank: a block of whole shards */
        if (fastnn_net_dist_scratch(net, d) > 0 && !d->scratch) return FASTNN_ENULL;
    }
    if (n < 0 || rows < 0 || batch_size < 1 || batch_size > net->max_batch) return FASTNN_EINVAL;
    if (n > 0 && (!X || !Y || !index)) return FASTNN_ENULL;
    for (int64_t i = 0; i < n; i++)
        if (index[i] < 0 || index[i] >= rows) return FASTNN_EINVAL;
    layout L;
    carve(net, net->arena, &L);
    /* rows one rank computes at once: its slice, or one shard */
    int64_t local = d->shards > 0 ? (batch_size + d->shards - 1) / d->shards
                                  : (batch_size + d->size - 1) / d->size;
    int nt = fastnn_net_threads(net, fastnn_min64(local, n));
    if (nt <= 1 || fastnn_cur_team || (net->nops > 0 && fastnn_plan_own_teams(net)))
        return dist_steps(net, d, &L, X, Y, index, n, batch_size, seed, loss_sum, correct);
    fastnn_team team;
    fastnn_team_init(&team, nt);
    st = FASTNN_OK;
    #pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int full = omp_get_num_threads() == nt;
#else
        int full = 0;
#endif
        if (full) {
            fastnn_cur_team = &team;
            fastnn_status s = dist_steps(net, d, &L, X, Y, index, n, batch_size, seed, loss_sum,
                                         correct);
            fastnn_cur_team = NULL;
            if (fastnn_thread_id() == 0) st = s;
        } else if (fastnn_thread_id() == 0) {
            st = dist_steps(net, d, &L, X, Y, index, n, batch_size, seed, loss_sum, correct);
        }
    }
    return st;
}
