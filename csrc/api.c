/* The stable C ABI (include/fastnn/fastnn_api.h) over the fused executor (net.c): the same
 * plan, kernels and dropout generator that Python's fit and predict use.
 *
 * A model is a list of layers parsed from the architecture JSON (a table of layer readers:
 * see LAYER_TABLE), lowered over one flat float32 parameter buffer: an MLP to fastnn_net
 * units (lower()), a model with Conv2d, a pool or BatchNorm to the layer plan's ops
 * (lower_plan(), the ops and offsets fastnn.plan.build makes, with a running-statistics
 * buffer). New layer kinds join by adding a row to LAYER_TABLE, a case in lower_plan(), their
 * config in canonical_arch() and their tensors in tensor_slots().
 */
#define _POSIX_C_SOURCE 200809L
#include "fastnn/fastnn_api.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fastnn/fastnn.h"
#include "fastnn/net.h"
#include "json.h"
#include "ref/common.h"

#ifndef FASTNN_VERSION_STRING
#define FASTNN_VERSION_STRING "0.0.0"
#endif

_Static_assert(sizeof(int64_t) == 8 && sizeof(float) == 4, "fastnn ABI: int64_t and float");

#define MAX_HEADER (100u << 20)   /* safetensors' own limit on the JSON header */
#define MAX_LAYERS 256
#define FASTNN_NET_MAX_UNITS_API 64   /* as net.c */

/* ---- errors ----------------------------------------------------------------------------- */

static _Thread_local char last_error[512];

const char *fastnn_last_error(void) { return last_error; }

__attribute__((format(printf, 2, 3)))
static fastnn_status fail(fastnn_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

static fastnn_status ok(void) {
    last_error[0] = '\0';
    return FASTNN_OK;
}

/* A kernel status with the caller's context. */
static fastnn_status kernel_fail(fastnn_status st, const char *fn) {
    return fail(st, "%s: %s", fn, fastnn_status_string(st));
}

const char *fastnn_version(void) { return FASTNN_VERSION_STRING; }
int fastnn_api_version(void) { return FASTNN_API_VERSION; }

/* ---- models ----------------------------------------------------------------------------- */

typedef enum {
    L_FLATTEN, L_LINEAR, L_ACT, L_DROPOUT,
    L_CONV, L_MAXPOOL, L_AVGPOOL, L_GAP, L_BATCHNORM   /* these run on the layer plan */
} layer_kind;

enum { PAD_LIST, PAD_SAME, PAD_VALID };

typedef struct {
    layer_kind kind;
    const char *cls;          /* the Python class name (static string) */
    int64_t in, out;          /* Linear: features; Conv2d: channels; BatchNorm: num_features */
    int bias;
    fastnn_act act;           /* activation */
    double p;                 /* LeakyReLU slope, Dropout probability */
    int approximate_tanh;     /* GELU */
    /* Conv2d and the pools: kernel, stride, dilation, padding as configured */
    int64_t kh, kw, sh, sw, dh, dw, groups, ph, pw;
    int pad_mode;             /* Conv2d: PAD_LIST, "same" or "valid" */
    int k_pair, s_pair, p_pair;   /* pools: the config gave a pair (else an int) */
    int count_include_pad;    /* AvgPool2d */
    int out_pair;             /* AdaptiveAvgPool2d: output_size [1, 1] (else 1) */
    int bn2d, affine, track;  /* BatchNorm */
    double eps, momentum;
    /* where its tensors live: element offsets in the parameter / statistics buffers (-1:
     * none) and BatchNorm's num_batches_tracked */
    int64_t w, b, rs, nbt;
} layer;

struct fastnn_model {
    int nlayers, nunits;
    layer layers[MAX_LAYERS];
    fastnn_unit units[FASTNN_NET_MAX_UNITS_API];
    int64_t nparams;
    float *params;            /* 64-byte aligned */
    char *arch;               /* canonical architecture JSON, as fastnn.save writes it */
    /* a model with Conv2d, pools or BatchNorm runs on the layer plan (fastnn/plan.h) */
    int nops;                 /* > 0: the plan (nunits == 0) */
    fastnn_op ops[MAX_LAYERS];
    int64_t row_bytes, nstats;
    float *stats;             /* running statistics (BatchNorm), nstats elements */
    int in_rank;              /* 0: input shape unknown; 1: (features,); 3: (C, H, W) */
    int64_t in_shape[3];
};

static int64_t model_in(const fastnn_model *m) {
    return m->nops ? fastnn_op_size(m->ops[0].in) : m->units[0].in;
}

static int64_t model_out(const fastnn_model *m) {
    return m->nops ? m->ops[m->nops - 1].out[0] : m->units[m->nunits - 1].out;
}

/* Readers of one layer's config; the table is what grows with new layer kinds. */
typedef fastnn_status (*layer_reader)(layer *l, const json_value *config, int index);

static int get_num(const json_value *cfg, const char *key, double *out) {
    const json_value *v = json_get(cfg, key);
    if (!v) return 0;
    if (v->type != JSON_NUMBER) return -1;
    *out = v->num;
    return 1;
}

static fastnn_status read_linear(layer *l, const json_value *cfg, int i) {
    const json_value *in = json_get(cfg, "in_features"), *out = json_get(cfg, "out_features");
    const json_value *bias = json_get(cfg, "bias"), *dtype = json_get(cfg, "dtype");
    if (!in || !out || in->type != JSON_NUMBER || !in->is_int || out->type != JSON_NUMBER ||
        !out->is_int || in->ival < 1 || out->ival < 1 || in->ival > (1 << 24) ||
        out->ival > (1 << 24))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (Linear) needs integer in_features "
                    "and out_features in [1, 2^24]", i);
    if (bias && bias->type != JSON_TRUE && bias->type != JSON_FALSE)
        return fail(FASTNN_EFORMAT, "architecture: layer %d (Linear): bias must be true or false", i);
    if (dtype && (dtype->type != JSON_STRING || strcmp(dtype->str, "float32") != 0))
        return fail(FASTNN_EUNSUPPORTED, "architecture: layer %d (Linear): the C API runs "
                    "float32 models only, got dtype %s", i,
                    dtype->type == JSON_STRING ? dtype->str : "(not a string)");
    l->in = in->ival, l->out = out->ival;
    l->bias = !bias || bias->type == JSON_TRUE;
    return FASTNN_OK;
}

static fastnn_status read_leaky(layer *l, const json_value *cfg, int i) {
    l->p = 0.01;
    if (get_num(cfg, "negative_slope", &l->p) < 0 || !isfinite(l->p))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (LeakyReLU): negative_slope must "
                    "be a finite number", i);
    return FASTNN_OK;
}

static fastnn_status read_gelu(layer *l, const json_value *cfg, int i) {
    const json_value *a = json_get(cfg, "approximate");
    if (a && (a->type != JSON_STRING || (strcmp(a->str, "none") && strcmp(a->str, "tanh"))))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (GELU): approximate must be "
                    "\"none\" or \"tanh\"", i);
    l->approximate_tanh = a && strcmp(a->str, "tanh") == 0;
    l->act = l->approximate_tanh ? FASTNN_ACT_GELU_TANH : FASTNN_ACT_GELU;
    return FASTNN_OK;
}

static fastnn_status read_dropout(layer *l, const json_value *cfg, int i) {
    l->p = 0.5;
    if (get_num(cfg, "p", &l->p) < 0 || !(l->p >= 0 && l->p < 1))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (Dropout): p must be a number in "
                    "[0, 1)", i);
    return FASTNN_OK;
}

/* An int in [lo, hi], or a pair of them (*pair = 1), from cfg[key]; absent: def (both). */
static int get_pair(const json_value *cfg, const char *key, int64_t lo, int64_t hi, int64_t def,
                    int64_t *a, int64_t *b, int *pair) {
    const json_value *v = json_get(cfg, key);
    *pair = 0;
    if (!v) {
        *a = *b = def;
        return 1;
    }
    if (v->type == JSON_ARRAY) {
        if (v->n != 2) return 0;
        *pair = 1;
        for (int k = 0; k < 2; k++) {
            const json_value *e = &v->items[k];
            if (e->type != JSON_NUMBER || !e->is_int || e->ival < lo || e->ival > hi) return 0;
        }
        *a = v->items[0].ival, *b = v->items[1].ival;
        return 1;
    }
    if (v->type != JSON_NUMBER || !v->is_int || v->ival < lo || v->ival > hi) return 0;
    *a = *b = v->ival;
    return 1;
}

static fastnn_status check_dtype(const json_value *cfg, int i, const char *cls) {
    const json_value *dtype = json_get(cfg, "dtype");
    if (dtype && (dtype->type != JSON_STRING || strcmp(dtype->str, "float32") != 0))
        return fail(FASTNN_EUNSUPPORTED, "architecture: layer %d (%s): the C API runs float32 "
                    "models only, got dtype %s", i, cls,
                    dtype->type == JSON_STRING ? dtype->str : "(not a string)");
    return FASTNN_OK;
}

static int get_bool(const json_value *cfg, const char *key, int def, int *out) {
    const json_value *v = json_get(cfg, key);
    if (!v) *out = def;
    else if (v->type == JSON_TRUE || v->type == JSON_FALSE) *out = v->type == JSON_TRUE;
    else return 0;
    return 1;
}

#define MAX_DIM (1 << 24)
#define MAX_KERNEL (1 << 12)

static fastnn_status read_conv(layer *l, const json_value *cfg, int i) {
    const json_value *in = json_get(cfg, "in_channels"), *out = json_get(cfg, "out_channels");
    const json_value *pad = json_get(cfg, "padding"), *groups = json_get(cfg, "groups");
    int pair;
    if (!in || !out || in->type != JSON_NUMBER || !in->is_int || out->type != JSON_NUMBER ||
        !out->is_int || in->ival < 1 || out->ival < 1 || in->ival > MAX_DIM || out->ival > MAX_DIM)
        return fail(FASTNN_EFORMAT, "architecture: layer %d (Conv2d) needs integer in_channels "
                    "and out_channels in [1, 2^24]", i);
    l->in = in->ival, l->out = out->ival, l->groups = 1;
    if (groups && (groups->type != JSON_NUMBER || !groups->is_int || groups->ival < 1 ||
                   l->in % groups->ival || l->out % groups->ival))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (Conv2d): groups must be an int >= 1 "
                    "dividing in_channels (%lld) and out_channels (%lld)", i, (long long)l->in,
                    (long long)l->out);
    if (groups) l->groups = groups->ival;
    if (!json_get(cfg, "kernel_size") ||
        !get_pair(cfg, "kernel_size", 1, MAX_KERNEL, 1, &l->kh, &l->kw, &pair) ||
        !get_pair(cfg, "stride", 1, MAX_KERNEL, 1, &l->sh, &l->sw, &pair) ||
        !get_pair(cfg, "dilation", 1, MAX_KERNEL, 1, &l->dh, &l->dw, &pair))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (Conv2d): kernel_size, stride and "
                    "dilation must be ints in [1, 4096] or pairs of them", i);
    l->pad_mode = PAD_LIST;
    if (pad && pad->type == JSON_STRING) {
        if (!strcmp(pad->str, "same")) l->pad_mode = PAD_SAME;
        else if (!strcmp(pad->str, "valid")) l->pad_mode = PAD_VALID;
        else return fail(FASTNN_EFORMAT, "architecture: layer %d (Conv2d): padding must be "
                         "\"same\", \"valid\", an int or a pair, got \"%.32s\"", i, pad->str);
        if (l->pad_mode == PAD_SAME && (l->sh != 1 || l->sw != 1))
            return fail(FASTNN_EFORMAT, "architecture: layer %d (Conv2d): padding \"same\" needs "
                        "stride 1", i);
    } else if (!get_pair(cfg, "padding", 0, MAX_KERNEL, 0, &l->ph, &l->pw, &pair)) {
        return fail(FASTNN_EFORMAT, "architecture: layer %d (Conv2d): padding must be \"same\", "
                    "\"valid\", an int in [0, 4096] or a pair of them", i);
    }
    if (!get_bool(cfg, "bias", 1, &l->bias))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (Conv2d): bias must be true or false", i);
    return check_dtype(cfg, i, "Conv2d");
}

static fastnn_status read_pool(layer *l, const json_value *cfg, int i) {
    const json_value *st = json_get(cfg, "stride");
    if (!json_get(cfg, "kernel_size") ||
        !get_pair(cfg, "kernel_size", 1, MAX_KERNEL, 1, &l->kh, &l->kw, &l->k_pair) ||
        !get_pair(cfg, "padding", 0, MAX_KERNEL, 0, &l->ph, &l->pw, &l->p_pair))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (%s): kernel_size must be an int in "
                    "[1, 4096] or a pair, padding an int in [0, 4096] or a pair", i, l->cls);
    if (!st || st->type == JSON_NULL)   /* PyTorch's default: the kernel size */
        l->sh = l->kh, l->sw = l->kw, l->s_pair = l->k_pair;
    else if (!get_pair(cfg, "stride", 1, MAX_KERNEL, 1, &l->sh, &l->sw, &l->s_pair))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (%s): stride must be an int in "
                    "[1, 4096], a pair or null", i, l->cls);
    if (2 * l->ph > l->kh || 2 * l->pw > l->kw)
        return fail(FASTNN_EFORMAT, "architecture: layer %d (%s): padding (%lld, %lld) must be "
                    "at most half the kernel (%lld, %lld)", i, l->cls, (long long)l->ph,
                    (long long)l->pw, (long long)l->kh, (long long)l->kw);
    if (!get_bool(cfg, "count_include_pad", 1, &l->count_include_pad))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (%s): count_include_pad must be "
                    "true or false", i, l->cls);
    return FASTNN_OK;
}

static fastnn_status read_gap(layer *l, const json_value *cfg, int i) {
    int64_t a, b;
    if (!get_pair(cfg, "output_size", 1, 1, 1, &a, &b, &l->out_pair))
        return fail(FASTNN_EUNSUPPORTED, "architecture: layer %d (AdaptiveAvgPool2d): only "
                    "output_size 1 (global average pooling) is supported", i);
    return FASTNN_OK;
}

static fastnn_status read_batchnorm(layer *l, const json_value *cfg, int i) {
    const json_value *nf = json_get(cfg, "num_features"), *mom = json_get(cfg, "momentum");
    l->bn2d = !strcmp(l->cls, "BatchNorm2d");
    if (!nf || nf->type != JSON_NUMBER || !nf->is_int || nf->ival < 1 || nf->ival > MAX_DIM)
        return fail(FASTNN_EFORMAT, "architecture: layer %d (%s) needs an integer num_features "
                    "in [1, 2^24]", i, l->cls);
    l->in = l->out = nf->ival;
    l->eps = 1e-5, l->momentum = 0.1;
    if (get_num(cfg, "eps", &l->eps) < 0 || !(l->eps >= 0 && l->eps <= 1e300))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (%s): eps must be a number >= 0", i,
                    l->cls);
    if (mom && mom->type == JSON_NULL)
        return fail(FASTNN_EUNSUPPORTED, "architecture: layer %d (%s): momentum=None (a "
                    "cumulative average) is not supported by the C API", i, l->cls);
    if (get_num(cfg, "momentum", &l->momentum) < 0 || !(l->momentum >= 0 && l->momentum <= 1))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (%s): momentum must be a number in "
                    "[0, 1]", i, l->cls);
    if (!get_bool(cfg, "affine", 1, &l->affine) ||
        !get_bool(cfg, "track_running_stats", 1, &l->track))
        return fail(FASTNN_EFORMAT, "architecture: layer %d (%s): affine and "
                    "track_running_stats must be true or false", i, l->cls);
    return check_dtype(cfg, i, l->cls);
}

static fastnn_status read_none(layer *l, const json_value *cfg, int i) {
    (void)l, (void)cfg, (void)i;
    return FASTNN_OK;
}

static const struct {
    const char *cls;
    layer_kind kind;
    fastnn_act act;
    layer_reader read;
} LAYER_TABLE[] = {
    {"Flatten", L_FLATTEN, FASTNN_ACT_IDENTITY, read_none},
    {"Linear", L_LINEAR, FASTNN_ACT_IDENTITY, read_linear},
    {"ReLU", L_ACT, FASTNN_ACT_RELU, read_none},
    {"LeakyReLU", L_ACT, FASTNN_ACT_LEAKY_RELU, read_leaky},
    {"Sigmoid", L_ACT, FASTNN_ACT_SIGMOID, read_none},
    {"Tanh", L_ACT, FASTNN_ACT_TANH, read_none},
    {"GELU", L_ACT, FASTNN_ACT_GELU, read_gelu},
    {"SiLU", L_ACT, FASTNN_ACT_SILU, read_none},
    {"Dropout", L_DROPOUT, FASTNN_ACT_IDENTITY, read_dropout},
    {"Conv2d", L_CONV, FASTNN_ACT_IDENTITY, read_conv},
    {"MaxPool2d", L_MAXPOOL, FASTNN_ACT_IDENTITY, read_pool},
    {"AvgPool2d", L_AVGPOOL, FASTNN_ACT_IDENTITY, read_pool},
    {"AdaptiveAvgPool2d", L_GAP, FASTNN_ACT_IDENTITY, read_gap},
    {"BatchNorm1d", L_BATCHNORM, FASTNN_ACT_IDENTITY, read_batchnorm},
    {"BatchNorm2d", L_BATCHNORM, FASTNN_ACT_IDENTITY, read_batchnorm},
};

/* Lower layers to fused units (as fastnn._fused._units does): leading Flattens, then
 * Linear, an optional activation, an optional Dropout. */
static fastnn_status lower(fastnn_model *m) {
    int i = 0, n = m->nlayers;
    while (i < n && m->layers[i].kind == L_FLATTEN) i++;
    m->nunits = 0;
    int64_t off = 0;
    while (i < n) {
        layer *lin = &m->layers[i];
        if (lin->kind != L_LINEAR)
            return fail(FASTNN_EUNSUPPORTED, "architecture: layer %d (%s) must be a Linear: the "
                        "C API runs Linear [activation] [Dropout] units after leading Flattens",
                        i, lin->cls);
        if (m->nunits == FASTNN_NET_MAX_UNITS_API)
            return fail(FASTNN_EUNSUPPORTED, "architecture: more than %d Linear layers",
                        FASTNN_NET_MAX_UNITS_API);
        fastnn_unit *u = &m->units[m->nunits];
        memset(u, 0, sizeof *u);
        u->in = lin->in, u->out = lin->out, u->act = FASTNN_ACT_IDENTITY;
        if (m->nunits > 0 && u->in != m->units[m->nunits - 1].out)
            return fail(FASTNN_EFORMAT, "architecture: layer %d (Linear) has in_features %lld, "
                        "but the previous Linear has out_features %lld", i, (long long)u->in,
                        (long long)m->units[m->nunits - 1].out);
        u->w = off, off += u->in * u->out;
        u->b = lin->bias ? off : -1, off += lin->bias ? u->out : 0;
        lin->w = u->w, lin->b = u->b;
        i++;
        if (i < n && m->layers[i].kind == L_ACT) {
            u->act = m->layers[i].act;
            u->p = m->layers[i].act == FASTNN_ACT_LEAKY_RELU ? m->layers[i].p : 0;
            i++;
        }
        if (i < n && m->layers[i].kind == L_DROPOUT) u->drop = m->layers[i++].p;
        m->nunits++;
    }
    if (m->nunits == 0)
        return fail(FASTNN_EFORMAT, "architecture: the model has no Linear layer");
    if (off > ((int64_t)1 << 34))
        return fail(FASTNN_EUNSUPPORTED, "architecture: %lld parameters is too many", (long long)off);
    m->nparams = off;
    return FASTNN_OK;
}

static int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

/* Lower layers to the layer plan's ops (as fastnn.plan.build does, offsets in the same
 * order: each layer's weight then bias; running mean then variance per tracked BatchNorm;
 * arena regions in layer order) for samples of m->in_shape. */
static fastnn_status lower_plan(fastnn_model *m) {
    int64_t shape[3], off = 0, row = 0, nstats = 0;
    int image = m->in_rank == 3;
    for (int d = 0; d < 3; d++) shape[d] = d < m->in_rank ? m->in_shape[d] : 1;
    m->nops = 0;
#define REGION(field, elems, size) do {                                                   \
        int64_t bytes_;                                                                    \
        if (fastnn_mul3_i64(&bytes_, elems, size, 1) || bytes_ > ((int64_t)1 << 43) ||      \
            row > ((int64_t)1 << 44))                                                      \
            return fail(FASTNN_EUNSUPPORTED, "architecture: layer %d (%s): the activations " \
                        "are too large", i, l->cls);                                       \
        o->field = row, row += align64(bytes_);                                            \
    } while (0)
    for (int i = 0; i < m->nlayers; i++) {
        layer *l = &m->layers[i];
        fastnn_op *o = &m->ops[m->nops];
        int64_t C = shape[0], H = shape[1], W = shape[2], n;
        memset(o, 0, sizeof *o);
        memcpy(o->in, shape, sizeof shape);
        o->w = o->b = o->rs = o->y = o->aux = -1;
        o->act = FASTNN_ACT_IDENTITY;
        if (fastnn_mul3_i64(&n, C, H, W) || n > ((int64_t)1 << 40))
            return fail(FASTNN_EUNSUPPORTED, "architecture: layer %d (%s): its input of shape "
                        "(%lld, %lld, %lld) is too large", i, l->cls, (long long)C, (long long)H,
                        (long long)W);
        switch (l->kind) {
        case L_FLATTEN:
            o->kind = FASTNN_OP_FLATTEN, o->out[0] = n, o->out[1] = o->out[2] = 1;
            image = 0;
            break;
        case L_LINEAR:
            if (image)
                return fail(FASTNN_EUNSUPPORTED, "architecture: layer %d (Linear) gets images "
                            "of shape (%lld, %lld, %lld): put a Flatten before it", i,
                            (long long)C, (long long)H, (long long)W);
            if (C != l->in)
                return fail(FASTNN_EFORMAT, "architecture: layer %d (Linear) has in_features "
                            "%lld, but gets %lld features", i, (long long)l->in, (long long)C);
            o->kind = FASTNN_OP_LINEAR, o->out[0] = l->out, o->out[1] = o->out[2] = 1;
            l->w = o->w = off, off += l->in * l->out;
            l->b = o->b = l->bias ? off : -1, off += l->bias ? l->out : 0;
            REGION(y, l->out, 4);
            break;
        case L_CONV: {
            if (!image || C != l->in)
                return fail(FASTNN_EFORMAT, "architecture: layer %d (Conv2d) expects images of "
                            "%lld channels, gets samples of shape (%lld, %lld, %lld)%s", i,
                            (long long)l->in, (long long)C, (long long)H, (long long)W,
                            image ? "" : " (not an image)");
            int64_t th = l->dh * (l->kh - 1), tw = l->dw * (l->kw - 1), pt, pl, pb, pr;
            if (l->pad_mode == PAD_SAME) pt = th / 2, pl = tw / 2, pb = th - pt, pr = tw - pl;
            else if (l->pad_mode == PAD_VALID) pt = pl = pb = pr = 0;
            else pt = pb = l->ph, pl = pr = l->pw;
            int64_t oh = H + pt + pb - th - 1, ow = W + pl + pr - tw - 1;
            oh = oh < 0 ? 0 : oh / l->sh + 1, ow = ow < 0 ? 0 : ow / l->sw + 1;
            if (H + pt + pb - th - 1 < 0 || W + pl + pr - tw - 1 < 0)
                return fail(FASTNN_EFORMAT, "architecture: layer %d (Conv2d): the kernel "
                            "(dilated: %lldx%lld) is larger than the padded input %lldx%lld", i,
                            (long long)(th + 1), (long long)(tw + 1), (long long)(H + pt + pb),
                            (long long)(W + pl + pr));
            o->kind = FASTNN_OP_CONV2D, o->out[0] = l->out, o->out[1] = oh, o->out[2] = ow;
            o->kh = l->kh, o->kw = l->kw, o->sh = l->sh, o->sw = l->sw, o->ph = pt, o->pw = pl;
            o->dh = l->dh, o->dw = l->dw, o->groups = l->groups;
            int64_t k;
            if (fastnn_mul3_i64(&k, l->out, oh, ow) || k > ((int64_t)1 << 40))
                return fail(FASTNN_EUNSUPPORTED, "architecture: layer %d (Conv2d): its output "
                            "is too large", i);
            if (fastnn_mul3_i64(&k, l->out, l->in / l->groups, l->kh * l->kw) ||
                k > ((int64_t)1 << 34))
                return fail(FASTNN_EUNSUPPORTED, "architecture: layer %d (Conv2d): too many "
                            "weights", i);
            l->w = o->w = off, off += k;
            l->b = o->b = l->bias ? off : -1, off += l->bias ? l->out : 0;
            REGION(y, l->out * oh * ow, 4);
            break;
        }
        case L_MAXPOOL:
        case L_AVGPOOL: {
            if (!image)
                return fail(FASTNN_EFORMAT, "architecture: layer %d (%s) needs images (C, H, W), "
                            "gets vectors of %lld features", i, l->cls, (long long)C);
            if (H + 2 * l->ph < l->kh || W + 2 * l->pw < l->kw)
                return fail(FASTNN_EFORMAT, "architecture: layer %d (%s): a %lldx%lld window "
                            "with padding (%lld, %lld) does not fit an image of %lldx%lld", i,
                            l->cls, (long long)l->kh, (long long)l->kw, (long long)l->ph,
                            (long long)l->pw, (long long)H, (long long)W);
            int64_t oh = fastnn_pool_out_size(H, l->kh, l->sh, l->ph);
            int64_t ow = fastnn_pool_out_size(W, l->kw, l->sw, l->pw);
            o->kind = l->kind == L_MAXPOOL ? FASTNN_OP_MAXPOOL2D : FASTNN_OP_AVGPOOL2D;
            o->out[0] = C, o->out[1] = oh, o->out[2] = ow;
            o->kh = l->kh, o->kw = l->kw, o->sh = l->sh, o->sw = l->sw, o->ph = l->ph, o->pw = l->pw;
            o->count_include_pad = l->kind == L_AVGPOOL ? l->count_include_pad : 0;
            REGION(y, C * oh * ow, 4);
            if (l->kind == L_MAXPOOL) REGION(aux, C * oh * ow, 8);
            break;
        }
        case L_GAP:
            if (!image)
                return fail(FASTNN_EFORMAT, "architecture: layer %d (AdaptiveAvgPool2d) needs "
                            "images (C, H, W), gets vectors of %lld features", i, (long long)C);
            o->kind = FASTNN_OP_GLOBAL_AVGPOOL, o->out[0] = C, o->out[1] = o->out[2] = 1;
            REGION(y, C, 4);
            break;
        case L_BATCHNORM:
            if (l->bn2d != image)
                return fail(FASTNN_EFORMAT, "architecture: layer %d (%s) needs %s, gets %s", i,
                            l->cls, l->bn2d ? "images (C, H, W)" : "vectors (features)",
                            image ? "images" : "vectors");
            if (C != l->in)
                return fail(FASTNN_EFORMAT, "architecture: layer %d (%s) has num_features %lld, "
                            "but gets %lld channels", i, l->cls, (long long)l->in, (long long)C);
            o->kind = FASTNN_OP_BATCHNORM;
            memcpy(o->out, shape, sizeof shape);
            o->eps = l->eps, o->momentum = l->momentum;
            if (l->affine) l->w = o->w = off, off += C, l->b = o->b = off, off += C;
            if (l->track) l->rs = o->rs = nstats, nstats += 2 * C;
            REGION(y, n, 4);
            REGION(aux, 2 * C, 4);
            break;
        case L_DROPOUT:
            o->kind = FASTNN_OP_DROPOUT, o->drop = l->p;
            memcpy(o->out, shape, sizeof shape);
            REGION(y, n, 4);
            break;
        case L_ACT: {
            o->kind = FASTNN_OP_ACT, o->act = l->act;
            o->p = l->act == FASTNN_ACT_LEAKY_RELU ? l->p : 0;
            memcpy(o->out, shape, sizeof shape);
            fastnn_op *prev = m->nops ? &m->ops[m->nops - 1] : NULL;
            if (l->act == FASTNN_ACT_RELU && prev &&
                (prev->kind == FASTNN_OP_LINEAR || prev->kind == FASTNN_OP_CONV2D ||
                 prev->kind == FASTNN_OP_BATCHNORM))
                prev->act = FASTNN_ACT_RELU;   /* the previous op's pass; relu' from its output */
            else
                REGION(y, n, 4);
            break;
        }
        }
        memcpy(shape, o->out, sizeof shape);
        m->nops++;
        if (off > ((int64_t)1 << 34))
            return fail(FASTNN_EUNSUPPORTED, "architecture: more than 2^34 parameters");
    }
#undef REGION
    if (image || shape[1] != 1 || shape[2] != 1)
        return fail(FASTNN_EUNSUPPORTED, "architecture: the model's output has shape (%lld, "
                    "%lld, %lld); the C API needs a vector per sample (end with a Flatten and "
                    "Linear layers)", (long long)shape[0], (long long)shape[1],
                    (long long)shape[2]);
    if (off == 0) return fail(FASTNN_EFORMAT, "architecture: the model has no parameters");
    m->nparams = off, m->nstats = nstats, m->row_bytes = row;
    return FASTNN_OK;
}

/* The per-sample input shape of a plan model: given (input_shape), or (features,) when the
 * first layer with a size is a Linear or BatchNorm1d. */
static fastnn_status plan_input(fastnn_model *m) {
    if (m->in_rank) return FASTNN_OK;
    for (int i = 0; i < m->nlayers; i++) {
        const layer *l = &m->layers[i];
        if (l->kind == L_ACT || l->kind == L_DROPOUT) continue;
        if (l->kind == L_LINEAR || (l->kind == L_BATCHNORM && !l->bn2d)) {
            m->in_rank = 1, m->in_shape[0] = l->in;
            return FASTNN_OK;
        }
        return fail(FASTNN_EUNSUPPORTED, "architecture: layer %d (%s) takes images, and the "
                    "input shape (C, H, W) is missing: save the model with fastnn.save after "
                    "fit or predict, or with fastnn.save(model, path, input_shape=(C, H, W)), or "
                    "give \"input_shape\": [C, H, W] in the architecture JSON", i, l->cls);
    }
    return fail(FASTNN_EFORMAT, "architecture: the model has no layer with a size");
}

/* Append printf output to a growing string; returns 0 on allocation failure. */
typedef struct { char *s; size_t len, cap; int bad; } strbuf;

__attribute__((format(printf, 2, 3)))
static void sb_printf(strbuf *b, const char *fmt, ...) {
    if (b->bad) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) { b->bad = 1; return; }
        if (b->s && b->len + (size_t)n < b->cap) { b->len += (size_t)n; return; }
        size_t cap = (b->cap ? b->cap : 256);
        while (cap <= b->len + (size_t)n) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) { b->bad = 1; return; }
        b->s = s, b->cap = cap;
    }
}

/* The architecture as Python's fastnn.io.architecture writes it. */
static char *canonical_arch(const fastnn_model *m) {
    strbuf b = {0};
    void *saved = json_c_locale_push();   /* "%.17g" writes a decimal point, not a comma */
    sb_printf(&b, "{\"class\": \"Sequential\", \"config\": {}, \"layers\": [");
    for (int i = 0; i < m->nlayers; i++) {
        const layer *l = &m->layers[i];
        sb_printf(&b, "%s{\"class\": \"%s\", \"config\": {", i ? ", " : "", l->cls);
        if (l->kind == L_LINEAR)
            sb_printf(&b, "\"in_features\": %lld, \"out_features\": %lld, \"bias\": %s, "
                      "\"dtype\": \"float32\"", (long long)l->in, (long long)l->out,
                      l->bias ? "true" : "false");
        else if (l->kind == L_DROPOUT) sb_printf(&b, "\"p\": %.17g", l->p);
        else if (l->act == FASTNN_ACT_LEAKY_RELU) sb_printf(&b, "\"negative_slope\": %.17g", l->p);
        else if (l->kind == L_ACT && (l->act == FASTNN_ACT_GELU || l->act == FASTNN_ACT_GELU_TANH))
            sb_printf(&b, "\"approximate\": \"%s\"", l->approximate_tanh ? "tanh" : "none");
        else if (l->kind == L_CONV) {
            sb_printf(&b, "\"in_channels\": %lld, \"out_channels\": %lld, \"kernel_size\": "
                      "[%lld, %lld], \"stride\": [%lld, %lld], \"padding\": ", (long long)l->in,
                      (long long)l->out, (long long)l->kh, (long long)l->kw, (long long)l->sh,
                      (long long)l->sw);
            if (l->pad_mode == PAD_LIST)
                sb_printf(&b, "[%lld, %lld]", (long long)l->ph, (long long)l->pw);
            else sb_printf(&b, "\"%s\"", l->pad_mode == PAD_SAME ? "same" : "valid");
            sb_printf(&b, ", \"dilation\": [%lld, %lld], \"groups\": %lld, \"bias\": %s, "
                      "\"dtype\": \"float32\"", (long long)l->dh, (long long)l->dw,
                      (long long)l->groups, l->bias ? "true" : "false");
        } else if (l->kind == L_MAXPOOL || l->kind == L_AVGPOOL) {
            const int64_t v[3][2] = {{l->kh, l->kw}, {l->sh, l->sw}, {l->ph, l->pw}};
            const int pair[3] = {l->k_pair, l->s_pair, l->p_pair};
            const char *key[3] = {"kernel_size", "stride", "padding"};
            for (int k = 0; k < 3; k++) {
                if (pair[k])
                    sb_printf(&b, "%s\"%s\": [%lld, %lld]", k ? ", " : "", key[k],
                              (long long)v[k][0], (long long)v[k][1]);
                else
                    sb_printf(&b, "%s\"%s\": %lld", k ? ", " : "", key[k], (long long)v[k][0]);
            }
            if (l->kind == L_AVGPOOL)
                sb_printf(&b, ", \"count_include_pad\": %s", l->count_include_pad ? "true" : "false");
        } else if (l->kind == L_GAP) {
            sb_printf(&b, "\"output_size\": %s", l->out_pair ? "[1, 1]" : "1");
        } else if (l->kind == L_BATCHNORM) {
            sb_printf(&b, "\"num_features\": %lld, \"eps\": %.17g, \"momentum\": %.17g, "
                      "\"affine\": %s, \"track_running_stats\": %s, \"dtype\": \"float32\"",
                      (long long)l->in, l->eps, l->momentum, l->affine ? "true" : "false",
                      l->track ? "true" : "false");
        }
        sb_printf(&b, "}}");
    }
    sb_printf(&b, "]}");
    json_c_locale_pop(saved);
    if (b.bad) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

static void model_free(fastnn_model *m) {
    if (!m) return;
    free(m->params);
    free(m->stats);
    free(m->arch);
    free(m);
}

/* The input shape [features] or [C, H, W] from a JSON array (shape may be NULL: unknown). */
static fastnn_status read_input_shape(fastnn_model *m, const json_value *shape) {
    m->in_rank = 0;
    if (!shape) return FASTNN_OK;
    if (shape->type != JSON_ARRAY || (shape->n != 1 && shape->n != 3))
        return fail(FASTNN_EFORMAT, "input_shape must be [features] or [C, H, W]");
    for (size_t d = 0; d < shape->n; d++) {
        const json_value *v = &shape->items[d];
        if (v->type != JSON_NUMBER || !v->is_int || v->ival < 1 || v->ival > MAX_DIM)
            return fail(FASTNN_EFORMAT, "input_shape must be [features] or [C, H, W], ints in "
                        "[1, 2^24]");
        m->in_shape[d] = v->ival;
    }
    m->in_rank = (int)shape->n;
    return FASTNN_OK;
}

/* A model (parameters allocated, zero; BatchNorm's running mean 0, variance 1) from a parsed
 * architecture and an optional input shape (a JSON array, may be NULL). */
static fastnn_status model_from_arch(const json_value *arch, const json_value *input_shape,
                                     fastnn_model **out) {
    *out = NULL;
    if (!arch || arch->type != JSON_OBJECT)
        return fail(FASTNN_EFORMAT, "architecture: expected a JSON object");
    const json_value *cls = json_get(arch, "class"), *layers = json_get(arch, "layers");
    if (!cls || cls->type != JSON_STRING || strcmp(cls->str, "Sequential") != 0)
        return fail(FASTNN_EUNSUPPORTED, "architecture: the model's class must be "
                    "\"Sequential\", got %s", cls && cls->type == JSON_STRING ? cls->str : "none");
    if (!layers || layers->type != JSON_ARRAY || layers->n == 0)
        return fail(FASTNN_EFORMAT, "architecture: \"layers\" must be a non-empty array");
    if (layers->n > MAX_LAYERS)
        return fail(FASTNN_EUNSUPPORTED, "architecture: %zu layers (at most %d)", layers->n,
                    MAX_LAYERS);
    fastnn_model *m = calloc(1, sizeof *m);
    if (!m) return fail(FASTNN_ENOMEM, "fastnn: out of memory");
    fastnn_status st = FASTNN_OK;
    for (size_t i = 0; i < layers->n && st == FASTNN_OK; i++) {
        const json_value *lj = &layers->items[i];
        const json_value *c = json_get(lj, "class"), *cfg = json_get(lj, "config");
        if (!c || c->type != JSON_STRING) {
            st = fail(FASTNN_EFORMAT, "architecture: layer %zu has no \"class\" string", i);
            break;
        }
        if (json_get(lj, "custom")) {
            st = fail(FASTNN_EUNSUPPORTED, "architecture: layer %zu is a user-defined class "
                      "(%s); the C API runs built-in layers only", i, c->str);
            break;
        }
        if (cfg && cfg->type != JSON_OBJECT) {
            st = fail(FASTNN_EFORMAT, "architecture: layer %zu (%s): config must be an object",
                      i, c->str);
            break;
        }
        size_t t = 0, nt = sizeof LAYER_TABLE / sizeof LAYER_TABLE[0];
        while (t < nt && strcmp(LAYER_TABLE[t].cls, c->str) != 0) t++;
        if (t == nt) {
            st = fail(FASTNN_EUNSUPPORTED, "architecture: layer %zu: %.64s is not supported by "
                      "the C API (supported: Flatten, Linear, ReLU, LeakyReLU, Sigmoid, Tanh, "
                      "GELU, SiLU, Dropout, Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, "
                      "BatchNorm1d, BatchNorm2d)", i, c->str);
            break;
        }
        layer *l = &m->layers[m->nlayers++];
        l->kind = LAYER_TABLE[t].kind, l->cls = LAYER_TABLE[t].cls, l->act = LAYER_TABLE[t].act;
        l->w = l->b = l->rs = -1;
        st = LAYER_TABLE[t].read(l, cfg, (int)i);
    }
    if (st == FASTNN_OK) st = read_input_shape(m, input_shape);
    int plan = 0;
    for (int i = 0; i < m->nlayers; i++) plan |= m->layers[i].kind >= L_CONV;
    if (st == FASTNN_OK) st = plan ? plan_input(m) : lower(m);
    if (st == FASTNN_OK && plan) st = lower_plan(m);
    if (st == FASTNN_OK && !plan && m->in_rank) {   /* an MLP: the shape must fit */
        int64_t n = m->in_shape[0] * (m->in_rank == 3 ? m->in_shape[1] * m->in_shape[2] : 1);
        if (n != m->units[0].in || (m->in_rank == 3 && m->layers[0].kind != L_FLATTEN))
            st = fail(FASTNN_EFORMAT, "architecture: input_shape (%lld features) does not fit "
                      "the first Linear layer (in_features %lld%s)", (long long)n,
                      (long long)m->units[0].in, m->in_rank == 3 ? ", after a Flatten" : "");
    }
    if (st == FASTNN_OK) {
        size_t bytes = ((size_t)m->nparams * sizeof(float) + 63) / 64 * 64;
        m->params = aligned_alloc(64, bytes);
        m->arch = canonical_arch(m);
        if (m->nstats && (m->stats = aligned_alloc(64, ((size_t)m->nstats * 4 + 63) / 64 * 64)))
            for (int i = 0; i < m->nlayers; i++) {
                const layer *l = &m->layers[i];
                for (int64_t c = 0; l->rs >= 0 && c < l->in; c++)
                    m->stats[l->rs + c] = 0, m->stats[l->rs + l->in + c] = 1;
            }
        if (!m->params || !m->arch || (m->nstats && !m->stats))
            st = fail(FASTNN_ENOMEM, "fastnn: out of memory for %lld parameters",
                      (long long)m->nparams);
        else memset(m->params, 0, bytes);
    }
    if (st != FASTNN_OK) {
        model_free(m);
        return st;
    }
    *out = m;
    return FASTNN_OK;
}

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static double uniform01(uint64_t key, uint64_t i) {
    return (double)(mix64(key ^ mix64(i)) >> 11) * 0x1.0p-53;
}

fastnn_status fastnn_model_create(const char *architecture_json, uint64_t seed,
                                  fastnn_model **out) {
    if (!out) return fail(FASTNN_ENULL, "fastnn_model_create: out is NULL");
    *out = NULL;
    if (!architecture_json) return fail(FASTNN_ENULL, "fastnn_model_create: architecture_json is NULL");
    char err[160];
    json_doc *doc = json_parse(architecture_json, strlen(architecture_json), err, sizeof err);
    if (!doc) return fail(FASTNN_EFORMAT, "fastnn_model_create: architecture_json is not valid "
                          "JSON: %s", err);
    fastnn_model *m;
    const json_value *root = json_root(doc);
    fastnn_status st = model_from_arch(root, root->type == JSON_OBJECT ?
                                       json_get(root, "input_shape") : NULL, &m);
    json_free(doc);
    if (st != FASTNN_OK) return st;
    /* PyTorch's default: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm's
     * weight 1, bias 0 */
    uint64_t key = mix64(seed);
    for (int i = 0; i < m->nlayers; i++) {
        const layer *l = &m->layers[i];
        if (l->kind == L_BATCHNORM && l->affine) {
            for (int64_t c = 0; c < l->in; c++) m->params[l->w + c] = 1, m->params[l->b + c] = 0;
            continue;
        }
        if (l->kind != L_LINEAR && l->kind != L_CONV) continue;
        int64_t fan_in = l->kind == L_LINEAR ? l->in : l->in / l->groups * l->kh * l->kw;
        int64_t nw = l->kind == L_LINEAR ? l->in * l->out : fan_in * l->out;
        double bound = 1.0 / sqrt((double)fan_in);
        for (int64_t j = l->w; j < l->w + nw; j++)
            m->params[j] = (float)((2 * uniform01(key, (uint64_t)j) - 1) * bound);
        for (int64_t j = l->b; l->b >= 0 && j < l->b + l->out; j++)
            m->params[j] = (float)((2 * uniform01(key, (uint64_t)j) - 1) * bound);
    }
    *out = m;
    return ok();
}

int64_t fastnn_model_input_size(const fastnn_model *m) { return m ? model_in(m) : -1; }
int64_t fastnn_model_output_size(const fastnn_model *m) { return m ? model_out(m) : -1; }
int64_t fastnn_model_num_parameters(const fastnn_model *m) { return m ? m->nparams : -1; }
const char *fastnn_model_architecture(const fastnn_model *m) { return m ? m->arch : NULL; }
void fastnn_model_free(fastnn_model *m) { model_free(m); }

/* A plan over the model's parameters; grads NULL for inference (the forward pass never
 * touches gradients, so the parameters stand in for the check). */
static void model_net(const fastnn_model *m, fastnn_net *net, float *grads, int64_t max_batch) {
    memset(net, 0, sizeof *net);
    net->dt = FASTNN_F32;
    net->nunits = m->nunits;
    net->units = m->nunits ? m->units : NULL;
    if (m->nops) {   /* the layer plan; the statistics are only read outside training */
        net->nops = m->nops, net->ops = m->ops, net->row_bytes = m->row_bytes;
        net->stats = m->stats, net->nstats = m->nstats;
    }
    net->nparams = m->nparams;
    net->params = m->params;
    net->grads = grads ? (void *)grads : (void *)m->params;
    net->loss = FASTNN_NET_CROSS_ENTROPY;
    net->mean = 1;
    net->delta = 1.0;
    net->opt.kind = FASTNN_OPT_SGD;
    net->max_batch = max_batch;
}

static int overlaps(const void *a, size_t an, const void *b, size_t bn) {
    const char *x = a, *y = b;
    return x < y + bn && y < x + an;
}

fastnn_status fastnn_model_predict(const fastnn_model *m, const float *x, int64_t n, float *out) {
    static const char *fn = "fastnn_model_predict";
    if (!m) return fail(FASTNN_ENULL, "%s: model is NULL", fn);
    if (!x) return fail(FASTNN_ENULL, "%s: x is NULL", fn);
    if (!out) return fail(FASTNN_ENULL, "%s: out is NULL", fn);
    if (n < 1) return fail(FASTNN_EINVAL, "%s: n must be >= 1, got %lld", fn, (long long)n);
    int64_t in = model_in(m), ow = model_out(m), xe, oe;
    if (fastnn_mul3_i64(&xe, n, in, 4) || fastnn_mul3_i64(&oe, n, ow, 4))
        return fail(FASTNN_EINVAL, "%s: n = %lld rows overflow the array size", fn, (long long)n);
    if (overlaps(x, (size_t)xe, out, (size_t)oe))
        return fail(FASTNN_EINVAL, "%s: out overlaps x", fn);
    /* Working memory of its own, so that threads can share the model: on the stack for small
     * batches (no allocation on the batch-1 path), else on the heap. */
    _Alignas(64) unsigned char small[32768];
    fastnn_net net;
    model_net(m, &net, NULL, n < 256 ? n : 256);
    int64_t bytes = fastnn_net_arena_bytes(&net);
    if (bytes <= 0) return fail(FASTNN_EINVAL, "%s: the model's sizes overflow", fn);
    void *heap = NULL;
    if ((size_t)bytes <= sizeof small) net.arena = small;
    else if (!(net.arena = heap = aligned_alloc(64, ((size_t)bytes + 63) / 64 * 64)))
        return fail(FASTNN_ENOMEM, "%s: out of memory (%lld bytes)", fn, (long long)bytes);
    fastnn_status st = fastnn_net_forward(&net, out, x, n);
    free(heap);
    return st == FASTNN_OK ? ok() : kernel_fail(st, fn);
}

/* ---- checksums (as fastnn.io: CRC-32 of every tensor's bytes and of the metadata) -------- */

static void crc_table(uint32_t t[256]) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        t[i] = c;
    }
}

static uint32_t crc32_of(const uint32_t t[256], const void *data, size_t n) {
    const unsigned char *p = data;
    uint32_t c = 0xFFFFFFFFu;
    while (n--) c = t[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* s as Python's json.dumps writes a str (ensure_ascii): returns 0 on invalid UTF-8. */
static int sb_py_json_string(strbuf *b, const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    sb_printf(b, "\"");
    while (p < end) {
        uint32_t cp = *p;
        int extra = cp < 0x80 ? 0 : (cp >> 5) == 6 ? 1 : (cp >> 4) == 14 ? 2 : (cp >> 3) == 30 ? 3 : -1;
        if (extra < 0 || end - p <= extra) return 0;
        if (extra) cp &= 0x3Fu >> extra;
        for (int k = 1; k <= extra; k++) {
            if ((p[k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (p[k] & 0x3F);
        }
        p += 1 + extra;
        if (cp == '"') sb_printf(b, "\\\"");
        else if (cp == '\\') sb_printf(b, "\\\\");
        else if (cp == '\n') sb_printf(b, "\\n");
        else if (cp == '\r') sb_printf(b, "\\r");
        else if (cp == '\t') sb_printf(b, "\\t");
        else if (cp == '\b') sb_printf(b, "\\b");
        else if (cp == '\f') sb_printf(b, "\\f");
        else if (cp < 0x20 || cp > 0x7E) {   /* json's ESCAPE_ASCII: all but ' '..'~' */
            if (cp >= 0x10000) {
                cp -= 0x10000;
                sb_printf(b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                sb_printf(b, "\\u%04x", cp);
            }
        } else {
            sb_printf(b, "%c", (char)cp);
        }
    }
    sb_printf(b, "\"");
    return 1;
}

/* CRC-32 of json.dumps(meta without "checksums", sort_keys=True); 0 and *ok = 0 if the
 * metadata holds a value that is not a string or not UTF-8. */
static uint32_t meta_crc(const uint32_t t[256], const json_value *meta, int *ok) {
    strbuf b = {0};
    size_t n = meta->n, done = 0;
    const char *prev = NULL;
    *ok = 1;
    sb_printf(&b, "{");
    while (done < n) {   /* keys in sorted order (byte order of UTF-8 = code point order) */
        size_t best = n;
        for (size_t i = 0; i < n; i++)
            if (strcmp(meta->keys[i], "checksums") && (!prev || strcmp(meta->keys[i], prev) > 0) &&
                (best == n || strcmp(meta->keys[i], meta->keys[best]) < 0))
                best = i;
        if (best == n) break;
        const json_value *v = &meta->items[best];
        if (v->type != JSON_STRING) *ok = 0;
        if (prev) sb_printf(&b, ", ");
        if (!sb_py_json_string(&b, meta->keys[best], strlen(meta->keys[best]))) *ok = 0;
        sb_printf(&b, ": ");
        if (*ok && !sb_py_json_string(&b, v->str, v->len)) *ok = 0;
        prev = meta->keys[best];
        done++;
    }
    sb_printf(&b, "}");
    uint32_t c = (*ok && !b.bad) ? crc32_of(t, b.s, b.len) : 0;
    if (b.bad) *ok = 0;
    free(b.s);
    return c;
}

static int hex8(const json_value *v, uint32_t *out) {
    if (!v || v->type != JSON_STRING || v->len != 8) return 0;
    uint32_t x = 0;
    for (int i = 0; i < 8; i++) {
        char c = v->str[i];
        x <<= 4;
        if (c >= '0' && c <= '9') x |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') x |= (uint32_t)(c - 'a' + 10);
        else return 0;
    }
    *out = x;
    return 1;
}

/* ---- files ------------------------------------------------------------------------------ */

/* The tensors of a model's file, as Python's state_dict names them: the parameters
 * ("0.weight", "0.bias", ...: F32 in the parameter buffer), then BatchNorm's buffers
 * ("1.running_mean", "1.running_var": F32 in the statistics buffer; "1.num_batches_tracked":
 * an I64 scalar). */
typedef struct {
    char name[40];
    int rank;                 /* 0 (a scalar) to 4 */
    int64_t dims[4];
    int i64;                  /* I64 (else F32) */
    void *data;
} slot;

#define SLOTS_PER_LAYER 5

static int64_t slot_count(const slot *s) {
    int64_t n = 1;
    for (int d = 0; d < s->rank; d++) n *= s->dims[d];
    return n;
}

static size_t slot_bytes(const slot *s) { return (size_t)slot_count(s) * (s->i64 ? 8 : 4); }

static int tensor_slots(const fastnn_model *m, slot *s) {
    int k = 0;
#define SLOT(fmt, r, d0, d1, d2, d3, is64, ptr) do {                                              snprintf(s[k].name, sizeof s[k].name, fmt, i);                                             s[k].rank = r, s[k].dims[0] = d0, s[k].dims[1] = d1, s[k].dims[2] = d2;                    s[k].dims[3] = d3, s[k].i64 = is64, s[k].data = (void *)(ptr), k++;                    } while (0)
    for (int pass = 0; pass < 2; pass++)   /* parameters, then buffers */
        for (int i = 0; i < m->nlayers; i++) {
            const layer *l = &m->layers[i];
            if (pass == 0 && l->kind == L_LINEAR) {
                SLOT("%d.weight", 2, l->out, l->in, 0, 0, 0, m->params + l->w);
                if (l->b >= 0) SLOT("%d.bias", 1, l->out, 0, 0, 0, 0, m->params + l->b);
            } else if (pass == 0 && l->kind == L_CONV) {
                SLOT("%d.weight", 4, l->out, l->in / l->groups, l->kh, l->kw, 0, m->params + l->w);
                if (l->b >= 0) SLOT("%d.bias", 1, l->out, 0, 0, 0, 0, m->params + l->b);
            } else if (pass == 0 && l->kind == L_BATCHNORM && l->affine) {
                SLOT("%d.weight", 1, l->in, 0, 0, 0, 0, m->params + l->w);
                SLOT("%d.bias", 1, l->in, 0, 0, 0, 0, m->params + l->b);
            } else if (pass == 1 && l->kind == L_BATCHNORM && l->track) {
                SLOT("%d.running_mean", 1, l->in, 0, 0, 0, 0, m->stats + l->rs);
                SLOT("%d.running_var", 1, l->in, 0, 0, 0, 0, m->stats + l->rs + l->in);
                SLOT("%d.num_batches_tracked", 0, 0, 0, 0, 0, 1, &l->nbt);
            }
        }
#undef SLOT
    return k;
}

static fastnn_status read_all(int fd, void *buf, size_t n, int64_t at, const char *path) {
    char *p = buf;
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)at);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return fail(FASTNN_EIO, "fastnn_model_load: cannot read %s: %s", path,
                               strerror(errno));
        if (r == 0) return fail(FASTNN_EFORMAT, "fastnn_model_load: %s is truncated", path);
        p += r, n -= (size_t)r, at += r;
    }
    return FASTNN_OK;
}

static fastnn_status load_fd(int fd, const char *path, fastnn_model **out) {
    static const char *fn = "fastnn_model_load";
    struct stat sb;
    if (fstat(fd, &sb) != 0) return fail(FASTNN_EIO, "%s: cannot stat %s: %s", fn, path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) return fail(FASTNN_EIO, "%s: path %s is a directory, not a file", fn, path);
    if (!S_ISREG(sb.st_mode)) return fail(FASTNN_EIO, "%s: path %s is not a regular file", fn, path);
    int64_t size = (int64_t)sb.st_size;
    unsigned char len8[8];
    if (size < 8) return fail(FASTNN_EFORMAT, "%s: %s is not a safetensors file (truncated: %lld "
                              "bytes)", fn, path, (long long)size);
    fastnn_status st = read_all(fd, len8, 8, 0, path);
    if (st) return st;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | len8[i];
    if (hlen < 2 || hlen > MAX_HEADER || hlen > (uint64_t)(size - 8))
        return fail(FASTNN_EFORMAT, "%s: %s is not a safetensors file (header length %llu, file "
                    "size %lld: corrupt or truncated)", fn, path, (unsigned long long)hlen,
                    (long long)size);
    char *header = malloc(hlen);
    if (!header) return fail(FASTNN_ENOMEM, "%s: out of memory", fn);
    if ((st = read_all(fd, header, hlen, 8, path))) {
        free(header);
        return st;
    }
    char err[160];
    json_doc *doc = json_parse(header, hlen, err, sizeof err);
    free(header);
    if (!doc) return fail(FASTNN_EFORMAT, "%s: %s: corrupt safetensors header (%s)", fn, path, err);
    const json_value *root = json_root(doc), *meta = json_get(root, "__metadata__");
    const json_value *format = json_get(meta, "format"), *archs = json_get(meta, "architecture");
    fastnn_model *m = NULL;
    int64_t datalen = size - 8 - (int64_t)hlen;
    const char *prefix = "";
    json_doc *sdoc = NULL;            /* the "checksums" metadata (fastnn file version 2) */
    const json_value *tcrcs = NULL;
    uint32_t table[256];
    crc_table(table);
    if (root->type != JSON_OBJECT) {
        st = fail(FASTNN_EFORMAT, "%s: %s: the safetensors header is not a JSON object", fn, path);
        goto done;
    }
    if (!format || format->type != JSON_STRING ||
        (strcmp(format->str, "fastnn-model") && strcmp(format->str, "fastnn-checkpoint"))) {
        st = fail(FASTNN_EFORMAT, "%s: %s: a safetensors file, but not one written by fastnn "
                  "(no \"format\": \"fastnn-model\" metadata)", fn, path);
        goto done;
    }
    if (strcmp(format->str, "fastnn-checkpoint") == 0) prefix = "model.";
    {   /* version 1: no checksums; version 2: CRC-32 of the metadata and of every tensor */
        const json_value *ver = json_get(meta, "version"), *sums = json_get(meta, "checksums");
        int v2 = ver && ver->type == JSON_STRING && strcmp(ver->str, "2") == 0;
        if (!ver || ver->type != JSON_STRING || (!v2 && strcmp(ver->str, "1") != 0)) {
            st = fail(FASTNN_EFORMAT, "%s: %s: unknown fastnn file version (expected \"1\" or "
                      "\"2\")", fn, path);
            goto done;
        }
        if (v2) {
            uint32_t want, got;
            int ok = 0;
            if (sums && sums->type == JSON_STRING)
                sdoc = json_parse(sums->str, sums->len, NULL, 0);
            tcrcs = json_get(json_root(sdoc), "tensors");
            if (!sdoc || !tcrcs || tcrcs->type != JSON_OBJECT ||
                !hex8(json_get(json_root(sdoc), "metadata"), &want)) {
                st = fail(FASTNN_EFORMAT, "%s: %s: corrupt fastnn file: its \"checksums\" "
                          "metadata is missing or malformed", fn, path);
                goto done;
            }
            got = meta_crc(table, meta, &ok);
            if (!ok || got != want) {
                st = fail(FASTNN_EFORMAT, "%s: %s: checksum mismatch in the metadata (the file "
                          "is corrupt)", fn, path);
                goto done;
            }
        }
    }
    if (!archs || archs->type != JSON_STRING) {
        st = fail(FASTNN_EFORMAT, "%s: %s: no architecture in the metadata", fn, path);
        goto done;
    }
    json_doc *adoc = json_parse(archs->str, archs->len, err, sizeof err);
    if (!adoc) {
        st = fail(FASTNN_EFORMAT, "%s: %s: corrupt architecture metadata (%s)", fn, path, err);
        goto done;
    }
    {
        const json_value *shp = json_get(meta, "input_shape");
        json_doc *sdoc2 = NULL;
        if (shp && shp->type != JSON_STRING) {
            json_free(adoc);
            st = fail(FASTNN_EFORMAT, "%s: %s: corrupt input_shape metadata (not a string)", fn,
                      path);
            goto done;
        }
        if (shp && !(sdoc2 = json_parse(shp->str, shp->len, err, sizeof err))) {
            json_free(adoc);
            st = fail(FASTNN_EFORMAT, "%s: %s: corrupt input_shape metadata (%s)", fn, path, err);
            goto done;
        }
        st = model_from_arch(json_root(adoc), sdoc2 ? json_root(sdoc2) : NULL, &m);
        json_free(sdoc2);
    }
    json_free(adoc);
    if (st) {
        char copy[sizeof last_error];
        memcpy(copy, last_error, sizeof copy);
        st = fail(st, "%s: %s: %s", fn, path, copy);
        goto done;
    }
    /* every tensor the model needs: F32, its exact shape, inside the data section */
    slot *slots = malloc(sizeof(slot) * SLOTS_PER_LAYER * (size_t)m->nlayers);
    if (!slots) {
        st = fail(FASTNN_ENOMEM, "%s: out of memory", fn);
        goto done;
    }
    int ns = tensor_slots(m, slots), found = 0;
    for (size_t t = 0; t < root->n && st == FASTNN_OK; t++) {
        const char *name = root->keys[t];
        const json_value *tv = &root->items[t];
        if (strcmp(name, "__metadata__") == 0) continue;
        size_t pl = strlen(prefix);
        if (strncmp(name, prefix, pl) != 0) continue;   /* a checkpoint's optimizer state */
        int k = 0;
        while (k < ns && strcmp(slots[k].name, name + pl) != 0) k++;
        if (k == ns) {
            st = fail(FASTNN_EFORMAT, "%s: %s: unexpected tensor %.64s for this architecture",
                      fn, path, name);
            break;
        }
        const json_value *dt = json_get(tv, "dtype"), *shape = json_get(tv, "shape"),
                         *offs = json_get(tv, "data_offsets");
        if (!dt || dt->type != JSON_STRING || !shape || shape->type != JSON_ARRAY || !offs ||
            offs->type != JSON_ARRAY || offs->n != 2 || offs->items[0].type != JSON_NUMBER ||
            !offs->items[0].is_int || offs->items[1].type != JSON_NUMBER || !offs->items[1].is_int) {
            st = fail(FASTNN_EFORMAT, "%s: %s: tensor %s has a corrupt entry", fn, path, name);
            break;
        }
        const slot *s = &slots[k];
        if (strcmp(dt->str, s->i64 ? "I64" : "F32") != 0) {
            st = fail(s->i64 ? FASTNN_EFORMAT : FASTNN_EUNSUPPORTED, "%s: %s: tensor %s has dtype "
                      "%.16s; the C API reads %s", fn, path, name, dt->str,
                      s->i64 ? "it as I64" : "F32 models only");
            break;
        }
        int good = (int)shape->n == s->rank;
        for (size_t d = 0; good && d < shape->n; d++)
            good = shape->items[d].type == JSON_NUMBER && shape->items[d].is_int &&
                   shape->items[d].ival == s->dims[d];
        if (!good) {
            char want[128] = "[";
            for (int d = 0; d < s->rank; d++)
                snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "",
                         (long long)s->dims[d]);
            strcat(want, "]");
            st = fail(FASTNN_EFORMAT, "%s: %s: tensor %s must have shape %s, as the "
                      "architecture says", fn, path, name, want);
            break;
        }
        int64_t bytes = (int64_t)slot_bytes(s), b = offs->items[0].ival, e = offs->items[1].ival;
        if (b < 0 || e < b || e > datalen || e - b != bytes) {
            st = fail(FASTNN_EFORMAT, "%s: %s: tensor %s has data_offsets [%lld, %lld] outside "
                      "the data (%lld bytes) or not %lld bytes long: corrupt or truncated", fn,
                      path, name, (long long)b, (long long)e, (long long)datalen,
                      (long long)bytes);
            break;
        }
        st = read_all(fd, s->data, (size_t)(e - b), 8 + (int64_t)hlen + b, path);
        if (st == FASTNN_OK && s->i64 && *(int64_t *)s->data < 0)
            st = fail(FASTNN_EFORMAT, "%s: %s: tensor %s is negative", fn, path, name);
        if (st == FASTNN_OK && tcrcs) {
            uint32_t want;
            if (!hex8(json_get(tcrcs, name), &want))
                st = fail(FASTNN_EFORMAT, "%s: %s: no checksum for tensor %s", fn, path, name);
            else if (crc32_of(table, s->data, (size_t)(e - b)) != want)
                st = fail(FASTNN_EFORMAT, "%s: %s: checksum mismatch in tensor %s: its data "
                          "changed (the file is corrupt)", fn, path, name);
        }
        slots[k].name[0] = '\0';   /* a name appears once in a JSON object: mark it taken */
        found++;
    }
    if (st == FASTNN_OK && found != ns) {
        int k = 0;
        while (k < ns && !slots[k].name[0]) k++;
        st = fail(FASTNN_EFORMAT, "%s: %s: tensor %s%s is missing", fn, path, prefix,
                  k < ns ? slots[k].name : "?");
    }
    free(slots);
done:
    json_free(sdoc);
    json_free(doc);
    if (st != FASTNN_OK) {
        model_free(m);
        return st;
    }
    *out = m;
    return FASTNN_OK;
}

fastnn_status fastnn_model_load(const char *path, fastnn_model **out) {
    if (!out) return fail(FASTNN_ENULL, "fastnn_model_load: out is NULL");
    *out = NULL;
    if (!path) return fail(FASTNN_ENULL, "fastnn_model_load: path is NULL");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail(FASTNN_EIO, "fastnn_model_load: cannot open %s: %s", path, strerror(errno));
    fastnn_status st = load_fd(fd, path, out);
    close(fd);
    return st == FASTNN_OK ? ok() : st;
}

/* JSON string body of s (quotes, backslashes and control characters escaped). */
static void sb_json_string(strbuf *b, const char *s) {
    sb_printf(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') sb_printf(b, "\\%c", c);
        else if (c < 0x20) sb_printf(b, "\\u%04x", c);
        else sb_printf(b, "%c", c);
    }
    sb_printf(b, "\"");
}

static fastnn_status write_all(int fd, const void *buf, size_t n, const char *path) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return fail(FASTNN_EIO, "fastnn_model_save: cannot write %s: %s", path,
                               strerror(errno));
        p += w, n -= (size_t)w;
    }
    return FASTNN_OK;
}

fastnn_status fastnn_model_save(const fastnn_model *m, const char *path) {
    static const char *fn = "fastnn_model_save";
    if (!m) return fail(FASTNN_ENULL, "%s: model is NULL", fn);
    if (!path) return fail(FASTNN_ENULL, "%s: path is NULL", fn);
    if (!path[0]) return fail(FASTNN_EINVAL, "%s: path is empty", fn);
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return fail(FASTNN_EIO, "%s: path %s is a directory", fn, path);
    slot *slots = malloc(sizeof(slot) * SLOTS_PER_LAYER * (size_t)m->nlayers);
    if (!slots) return fail(FASTNN_ENOMEM, "%s: out of memory", fn);
    int ns = tensor_slots(m, slots);
    strbuf h = {0};
    int64_t at = 0;
    sb_printf(&h, "{");
    for (int k = 0; k < ns; k++) {
        int64_t bytes = (int64_t)slot_bytes(&slots[k]);
        sb_printf(&h, "\"%s\":{\"dtype\":\"%s\",\"shape\":[", slots[k].name,
                  slots[k].i64 ? "I64" : "F32");
        for (int d = 0; d < slots[k].rank; d++)
            sb_printf(&h, "%s%lld", d ? "," : "", (long long)slots[k].dims[d]);
        sb_printf(&h, "],\"data_offsets\":[%lld,%lld]},", (long long)at, (long long)(at + bytes));
        at += bytes;
    }
    char shape[96] = "";
    if (m->in_rank == 1) snprintf(shape, sizeof shape, "[%lld]", (long long)m->in_shape[0]);
    else if (m->in_rank == 3)
        snprintf(shape, sizeof shape, "[%lld, %lld, %lld]", (long long)m->in_shape[0],
                 (long long)m->in_shape[1], (long long)m->in_shape[2]);
    /* version 2: CRC-32 of each tensor and of json.dumps(metadata, sort_keys=True) */
    uint32_t table[256];
    crc_table(table);
    strbuf meta = {0}, sums = {0};
    sb_printf(&meta, "{\"architecture\": ");
    sb_py_json_string(&meta, m->arch, strlen(m->arch));   /* ASCII: the canonical text */
    sb_printf(&meta, ", \"format\": \"fastnn-model\"");
    if (shape[0]) sb_printf(&meta, ", \"input_shape\": \"%s\"", shape);
    sb_printf(&meta, ", \"version\": \"2\"}");
    sb_printf(&sums, "{\"metadata\": \"%08x\", \"tensors\": {",
              meta.bad ? 0u : crc32_of(table, meta.s, meta.len));
    for (int k = 0; k < ns; k++)
        sb_printf(&sums, "%s\"%s\": \"%08x\"", k ? ", " : "", slots[k].name,
                  crc32_of(table, slots[k].data, slot_bytes(&slots[k])));
    sb_printf(&sums, "}}");
    sb_printf(&h, "\"__metadata__\":{\"format\":\"fastnn-model\",\"version\":\"2\",\"architecture\":");
    sb_json_string(&h, m->arch);
    if (shape[0]) {
        sb_printf(&h, ",\"input_shape\":");
        sb_json_string(&h, shape);
    }
    sb_printf(&h, ",\"checksums\":");
    sb_json_string(&h, sums.s ? sums.s : "");
    sb_printf(&h, "}}");
    if (meta.bad || sums.bad) h.bad = 1;
    free(meta.s);
    free(sums.s);
    while (!h.bad && h.len % 8) sb_printf(&h, " ");   /* safetensors pads with spaces */
    if (h.bad) {
        free(h.s);
        free(slots);
        return fail(FASTNN_ENOMEM, "%s: out of memory", fn);
    }
    /* a temporary file in the target's folder, then rename over the target */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) {
        free(h.s);
        free(slots);
        return fail(FASTNN_ENOMEM, "%s: out of memory", fn);
    }
    snprintf(tmp, plen + 16, "%s.tmpXXXXXX", path);
    int fd = mkstemp(tmp);
    fastnn_status st = FASTNN_OK;
    if (fd < 0) {
        st = fail(FASTNN_EIO, "%s: cannot create a temporary file next to %s: %s", fn, path,
                  strerror(errno));
    } else {
        unsigned char len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
        st = write_all(fd, len8, 8, tmp);
        if (!st) st = write_all(fd, h.s, h.len, tmp);
        for (int k = 0; k < ns && !st; k++)
            st = write_all(fd, slots[k].data, slot_bytes(&slots[k]), tmp);
        if (!st && fsync(fd) != 0)
            st = fail(FASTNN_EIO, "%s: fsync of %s failed: %s", fn, tmp, strerror(errno));
        if (close(fd) != 0 && !st)
            st = fail(FASTNN_EIO, "%s: closing %s failed: %s", fn, tmp, strerror(errno));
        if (!st && rename(tmp, path) != 0)
            st = fail(FASTNN_EIO, "%s: cannot rename %s to %s: %s", fn, tmp, path, strerror(errno));
        if (st) unlink(tmp);
    }
    free(tmp);
    free(h.s);
    free(slots);
    return st == FASTNN_OK ? ok() : st;
}

/* ---- training --------------------------------------------------------------------------- */

struct fastnn_trainer {
    fastnn_model *model;
    fastnn_net net;
    float *grads, *state[3];
    void *arena;
    int64_t batch_size, epoch;
    uint64_t seed;
};

static const struct { const char *name; fastnn_net_loss loss; } LOSSES[] = {
    {"cross_entropy", FASTNN_NET_CROSS_ENTROPY}, {"mse", FASTNN_NET_MSE}, {"l1", FASTNN_NET_L1},
    {"huber", FASTNN_NET_HUBER}, {"bce_with_logits", FASTNN_NET_BCE_LOGITS},
};

/* Option keys and the optimizers they apply to ("*": all; loss keys: "L"). */
static const struct { const char *key, *applies; } OPTIONS[] = {
    {"lr", "*"}, {"weight_decay", "*"}, {"maximize", "*"},
    {"momentum", "sgd rmsprop"}, {"dampening", "sgd"}, {"nesterov", "sgd"},
    {"betas", "adam adamw"}, {"amsgrad", "adam adamw"}, {"eps", "adam adamw rmsprop adagrad"},
    {"alpha", "rmsprop"}, {"centered", "rmsprop"}, {"lr_decay", "adagrad"},
    {"initial_accumulator_value", "adagrad"},
    {"reduction", "L"}, {"label_smoothing", "L"}, {"delta", "L"},
};

static int word_in(const char *word, const char *list) {
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)); p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) return 1;
    return 0;
}

static fastnn_status opt_number(const json_value *v, const char *key, double *out, int ge0) {
    if (v->type != JSON_NUMBER || !isfinite(v->num) || (ge0 && v->num < 0))
        return fail(FASTNN_EINVAL, "fastnn_trainer_create: options[\"%s\"] must be a finite "
                    "number%s", key, ge0 ? " >= 0" : "");
    *out = v->num;
    return FASTNN_OK;
}

static fastnn_status opt_bool(const json_value *v, const char *key, int *out) {
    if (v->type != JSON_TRUE && v->type != JSON_FALSE)
        return fail(FASTNN_EINVAL, "fastnn_trainer_create: options[\"%s\"] must be true or false", key);
    *out = v->type == JSON_TRUE;
    return FASTNN_OK;
}

static fastnn_status apply_options(fastnn_net *net, const char *optname, const json_value *o,
                                   double *init_acc) {
    static const char *fn = "fastnn_trainer_create";
    fastnn_optim *p = &net->opt;
    fastnn_status st = FASTNN_OK;
    if (o->type != JSON_OBJECT) return fail(FASTNN_EINVAL, "%s: options must be a JSON object", fn);
    for (size_t i = 0; i < o->n && !st; i++) {
        const char *k = o->keys[i];
        const json_value *v = &o->items[i];
        size_t j = 0, nk = sizeof OPTIONS / sizeof OPTIONS[0];
        while (j < nk && strcmp(OPTIONS[j].key, k)) j++;
        if (j == nk)
            return fail(FASTNN_EINVAL, "%s: unknown option \"%.40s\" (expected lr, momentum, "
                        "dampening, nesterov, weight_decay, betas, eps, amsgrad, alpha, centered, "
                        "lr_decay, initial_accumulator_value, maximize, reduction, "
                        "label_smoothing, delta)", fn, k);
        const char *ap = OPTIONS[j].applies;
        if (strcmp(ap, "*") && strcmp(ap, "L") && !word_in(optname, ap))
            return fail(FASTNN_EINVAL, "%s: option \"%s\" does not apply to optimizer \"%s\"",
                        fn, k, optname);
        if (!strcmp(k, "lr")) st = opt_number(v, k, &p->lr, 1);
        else if (!strcmp(k, "weight_decay")) st = opt_number(v, k, &p->weight_decay, 1);
        else if (!strcmp(k, "maximize")) st = opt_bool(v, k, &p->maximize);
        else if (!strcmp(k, "momentum")) st = opt_number(v, k, &p->momentum, 1);
        else if (!strcmp(k, "dampening")) st = opt_number(v, k, &p->dampening, 0);
        else if (!strcmp(k, "nesterov")) st = opt_bool(v, k, &p->nesterov);
        else if (!strcmp(k, "amsgrad")) st = opt_bool(v, k, &p->amsgrad);
        else if (!strcmp(k, "eps")) st = opt_number(v, k, &p->eps, 1);
        else if (!strcmp(k, "alpha")) st = opt_number(v, k, &p->alpha, 1);
        else if (!strcmp(k, "centered")) st = opt_bool(v, k, &p->centered);
        else if (!strcmp(k, "lr_decay")) st = opt_number(v, k, &p->lr_decay, 1);
        else if (!strcmp(k, "initial_accumulator_value")) st = opt_number(v, k, init_acc, 1);
        else if (!strcmp(k, "label_smoothing")) {
            st = opt_number(v, k, &net->label_smoothing, 1);
            if (!st && net->label_smoothing > 1)
                st = fail(FASTNN_EINVAL, "%s: options[\"label_smoothing\"] must be in [0, 1]", fn);
        } else if (!strcmp(k, "delta")) {
            st = opt_number(v, k, &net->delta, 1);
            if (!st && net->delta == 0)
                st = fail(FASTNN_EINVAL, "%s: options[\"delta\"] must be > 0", fn);
        } else if (!strcmp(k, "reduction")) {
            if (v->type != JSON_STRING || (strcmp(v->str, "mean") && strcmp(v->str, "sum")))
                st = fail(FASTNN_EINVAL, "%s: options[\"reduction\"] must be \"mean\" or \"sum\"", fn);
            else net->mean = strcmp(v->str, "mean") == 0;
        } else {   /* betas */
            if (v->type != JSON_ARRAY || v->n != 2 || v->items[0].type != JSON_NUMBER ||
                v->items[1].type != JSON_NUMBER || !(v->items[0].num >= 0 && v->items[0].num < 1) ||
                !(v->items[1].num >= 0 && v->items[1].num < 1))
                st = fail(FASTNN_EINVAL, "%s: options[\"betas\"] must be [beta1, beta2], each in "
                          "[0, 1)", fn);
            else p->beta1 = v->items[0].num, p->beta2 = v->items[1].num;
        }
    }
    if (!st && p->kind == FASTNN_OPT_SGD && p->nesterov && (p->momentum <= 0 || p->dampening != 0))
        st = fail(FASTNN_EINVAL, "%s: nesterov momentum requires a momentum > 0 and zero "
                  "dampening", fn);
    return st;
}

void fastnn_trainer_free(fastnn_trainer *t) {
    if (!t) return;
    free(t->grads);
    for (int i = 0; i < 3; i++) free(t->state[i]);
    free(t->arena);
    free(t);
}

static float *zeros(int64_t n, float value) {
    float *p = aligned_alloc(64, ((size_t)n * 4 + 63) / 64 * 64);
    if (p)
        for (int64_t i = 0; i < n; i++) p[i] = value;
    return p;
}

fastnn_status fastnn_trainer_create(fastnn_model *model, const char *loss, const char *optimizer,
                                    const char *options, int64_t batch_size, uint64_t seed,
                                    fastnn_trainer **out) {
    static const char *fn = "fastnn_trainer_create";
    if (!out) return fail(FASTNN_ENULL, "%s: out is NULL", fn);
    *out = NULL;
    if (!model) return fail(FASTNN_ENULL, "%s: model is NULL", fn);
    if (!loss) return fail(FASTNN_ENULL, "%s: loss is NULL", fn);
    if (!optimizer) return fail(FASTNN_ENULL, "%s: optimizer is NULL", fn);
    if (batch_size < 1 || batch_size > (1 << 24))
        return fail(FASTNN_EINVAL, "%s: batch_size must be in [1, 2^24], got %lld", fn,
                    (long long)batch_size);
    size_t li = 0, nl = sizeof LOSSES / sizeof LOSSES[0];
    while (li < nl && strcmp(LOSSES[li].name, loss)) li++;
    if (li == nl)
        return fail(FASTNN_EINVAL, "%s: loss must be one of \"cross_entropy\", \"mse\", \"l1\", "
                    "\"huber\", \"bce_with_logits\", got \"%.40s\"", fn, loss);
    fastnn_trainer *t = calloc(1, sizeof *t);
    if (!t) return fail(FASTNN_ENOMEM, "%s: out of memory", fn);
    t->model = model, t->batch_size = batch_size, t->seed = seed;
    fastnn_net *net = &t->net;
    model_net(model, net, NULL, batch_size);
    net->loss = LOSSES[li].loss;
    fastnn_optim *p = &net->opt;
    double init_acc = 0;
    if (!strcmp(optimizer, "sgd")) p->kind = FASTNN_OPT_SGD, p->lr = 1e-3;
    else if (!strcmp(optimizer, "adam") || !strcmp(optimizer, "adamw")) {
        p->kind = FASTNN_OPT_ADAM, p->lr = 1e-3, p->beta1 = 0.9, p->beta2 = 0.999, p->eps = 1e-8;
        p->decoupled = optimizer[4] == 'w';
        p->weight_decay = p->decoupled ? 1e-2 : 0;
    } else if (!strcmp(optimizer, "rmsprop"))
        p->kind = FASTNN_OPT_RMSPROP, p->lr = 1e-2, p->alpha = 0.99, p->eps = 1e-8;
    else if (!strcmp(optimizer, "adagrad"))
        p->kind = FASTNN_OPT_ADAGRAD, p->lr = 1e-2, p->eps = 1e-10;
    else {
        free(t);
        return fail(FASTNN_EINVAL, "%s: optimizer must be one of \"sgd\", \"adam\", \"adamw\", "
                    "\"rmsprop\", \"adagrad\", got \"%.40s\"", fn, optimizer);
    }
    fastnn_status st = FASTNN_OK;
    if (options) {
        char err[160];
        json_doc *doc = json_parse(options, strlen(options), err, sizeof err);
        if (!doc) st = fail(FASTNN_EINVAL, "%s: options is not valid JSON: %s", fn, err);
        else st = apply_options(net, optimizer, json_root(doc), &init_acc);
        json_free(doc);
    }
    int64_t n = model->nparams;
    if (!st) {
        int need[3] = {0, 0, 0};
        switch (p->kind) {
        case FASTNN_OPT_SGD: need[0] = p->momentum != 0; break;
        case FASTNN_OPT_ADAM: need[0] = need[1] = 1, need[2] = p->amsgrad; break;
        case FASTNN_OPT_RMSPROP: need[0] = 1, need[1] = p->momentum > 0, need[2] = p->centered; break;
        default: need[0] = 1;
        }
        t->grads = zeros(n, 0);
        int bad = !t->grads;
        for (int i = 0; i < 3; i++)
            if (need[i] && !(t->state[i] = zeros(n, p->kind == FASTNN_OPT_ADAGRAD ? (float)init_acc : 0)))
                bad = 1;
        net->grads = t->grads;
        p->s1 = t->state[0], p->s2 = t->state[1], p->s3 = t->state[2];
        int64_t bytes = bad ? 0 : fastnn_net_arena_bytes(net);
        if (bad || bytes <= 0 || !(t->arena = aligned_alloc(64, ((size_t)bytes + 63) / 64 * 64)))
            st = fail(FASTNN_ENOMEM, "%s: out of memory for the optimizer state and a batch of "
                      "%lld rows", fn, (long long)batch_size);
        net->arena = t->arena;
    }
    if (!st && (st = fastnn_net_check(net)) != FASTNN_OK)
        st = fail(st, "%s: the hyper-parameters are out of range (%s)", fn, fastnn_status_string(st));
    if (st) {
        fastnn_trainer_free(t);
        return st;
    }
    *out = t;
    return ok();
}

static fastnn_status check_xy(const fastnn_trainer *t, const float *x, const void *y, int64_t n,
                              const char *fn) {
    if (!t) return fail(FASTNN_ENULL, "%s: trainer is NULL", fn);
    if (!x) return fail(FASTNN_ENULL, "%s: x is NULL", fn);
    if (!y) return fail(FASTNN_ENULL, "%s: y is NULL", fn);
    if (n < 1) return fail(FASTNN_EINVAL, "%s: n must be >= 1, got %lld", fn, (long long)n);
    int64_t e;
    if (fastnn_mul3_i64(&e, n, model_in(t->model), 8) ||
        fastnn_mul3_i64(&e, n, model_out(t->model), 8))
        return fail(FASTNN_EINVAL, "%s: n = %lld rows overflow the array size", fn, (long long)n);
    if (t->net.loss == FASTNN_NET_CROSS_ENTROPY) {
        const int64_t *lab = y;
        int64_t C = model_out(t->model);
        for (int64_t i = 0; i < n; i++)
            if (lab[i] < 0 || lab[i] >= C)
                return fail(FASTNN_ELABEL, "%s: y[%lld] = %lld is not a class label in [0, %lld)",
                            fn, (long long)i, (long long)lab[i], (long long)C);
    }
    return FASTNN_OK;
}

static fastnn_status run_epoch(fastnn_trainer *t, const float *x, const void *y, int64_t n,
                               const int64_t *order, uint64_t key, double *loss, double *acc,
                               const char *fn) {
    fastnn_status st = check_xy(t, x, y, n, fn);
    if (st) return st;
    int64_t *own = NULL;
    if (!order) {
        if (!(own = malloc((size_t)n * sizeof *own))) return fail(FASTNN_ENOMEM, "%s: out of memory", fn);
        for (int64_t i = 0; i < n; i++) own[i] = i;
        order = own;
    } else {
        for (int64_t i = 0; i < n; i++)
            if (order[i] < 0 || order[i] >= n)
                return fail(FASTNN_EINVAL, "%s: order[%lld] = %lld is not a row index in [0, %lld)",
                            fn, (long long)i, (long long)order[i], (long long)n);
    }
    double loss_sum = 0;
    int64_t correct = 0, step0 = t->net.opt.step;
    st = fastnn_net_train(&t->net, x, y, n, order, n, t->batch_size, key, &loss_sum, &correct);
    free(own);
    /* BatchNorm's num_batches_tracked: the training batches its forward pass saw (a batch
     * stopped by a non-finite loss included), as fastnn.plan.PlanTraining counts them */
    int64_t seen = t->net.opt.step - step0 + (st == FASTNN_ENONFINITE);
    for (int i = 0; i < t->model->nlayers; i++)
        if (t->model->layers[i].kind == L_BATCHNORM && t->model->layers[i].track)
            t->model->layers[i].nbt += seen;
    if (st == FASTNN_ENONFINITE)
        return fail(st, "%s: the training loss is not finite (NaN or infinity) at batch %lld of "
                    "this epoch: training stopped before that batch's update", fn,
                    (long long)(t->net.opt.step - step0 + 1));
    if (st) return kernel_fail(st, fn);
    t->epoch++;
    if (loss) *loss = loss_sum / (double)n;
    if (acc) *acc = t->net.loss == FASTNN_NET_CROSS_ENTROPY ? (double)correct / (double)n : NAN;
    return ok();
}

fastnn_status fastnn_trainer_epoch_ordered(fastnn_trainer *t, const float *x, const void *y,
                                           int64_t n, const int64_t *order, uint64_t dropout_key,
                                           double *loss, double *accuracy) {
    return run_epoch(t, x, y, n, order, dropout_key, loss, accuracy, "fastnn_trainer_epoch_ordered");
}

fastnn_status fastnn_trainer_epoch(fastnn_trainer *t, const float *x, const void *y, int64_t n,
                                   double *loss, double *accuracy) {
    static const char *fn = "fastnn_trainer_epoch";
    fastnn_status st = check_xy(t, x, y, n, fn);
    if (st) return st;
    int64_t *order = malloc((size_t)n * sizeof *order);
    if (!order) return fail(FASTNN_ENOMEM, "%s: out of memory", fn);
    /* Fisher-Yates with the trainer's generator keyed by (seed, epoch) */
    uint64_t key = mix64(t->seed ^ mix64((uint64_t)t->epoch));
    for (int64_t i = 0; i < n; i++) order[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(uniform01(key, (uint64_t)i) * (double)(i + 1));
        if (j > i) j = i;
        int64_t tmp = order[i];
        order[i] = order[j], order[j] = tmp;
    }
    st = run_epoch(t, x, y, n, order, mix64(key ^ 1), loss, accuracy, fn);
    free(order);
    return st;
}

fastnn_status fastnn_trainer_evaluate(fastnn_trainer *t, const float *x, const void *y,
                                      int64_t n, double *loss, double *accuracy) {
    static const char *fn = "fastnn_trainer_evaluate";
    fastnn_status st = check_xy(t, x, y, n, fn);
    if (st) return st;
    int64_t C = model_out(t->model);
    float *out = malloc((size_t)(n * C) * sizeof *out);
    if (!out) return fail(FASTNN_ENOMEM, "%s: out of memory", fn);
    if ((st = fastnn_model_predict(t->model, x, n, out))) {
        free(out);
        return st;
    }
    double total = 0, wsum = 0;
    int64_t correct = 0;
    switch (t->net.loss) {
    case FASTNN_NET_CROSS_ENTROPY:
        st = fastnn_cross_entropy(FASTNN_F32, &total, &wsum, NULL, NULL, 1.0, out, y, NULL,
                                  t->net.label_smoothing, n, C);
        if (t->net.mean) total /= wsum;
        for (int64_t r = 0; r < n; r++) {
            int64_t best = 0;
            int nan = 0;
            for (int64_t c = 0; c < C; c++) {
                nan |= out[r * C + c] != out[r * C + c];
                if (out[r * C + c] > out[r * C + best]) best = c;
            }
            correct += !nan && best == ((const int64_t *)y)[r];
        }
        break;
    case FASTNN_NET_BCE_LOGITS:
        st = fastnn_bce_logits(FASTNN_F32, &total, NULL, NULL, 1.0, out, y, NULL, n, C);
        if (t->net.mean) total /= (double)(n * C);
        break;
    default: {
        fastnn_loss kind = t->net.loss == FASTNN_NET_MSE ? FASTNN_LOSS_MSE
                           : t->net.loss == FASTNN_NET_L1 ? FASTNN_LOSS_L1 : FASTNN_LOSS_HUBER;
        st = fastnn_regression_loss(FASTNN_F32, kind, t->net.delta, &total, NULL, NULL, 1.0, out,
                                    y, n * C);
        if (t->net.mean) total /= (double)(n * C);
    }
    }
    free(out);
    if (st) return kernel_fail(st, fn);
    if (loss) *loss = total;
    if (accuracy)
        *accuracy = t->net.loss == FASTNN_NET_CROSS_ENTROPY ? (double)correct / (double)n : NAN;
    return ok();
}

fastnn_status fastnn_trainer_set_lr(fastnn_trainer *t, double lr) {
    if (!t) return fail(FASTNN_ENULL, "fastnn_trainer_set_lr: trainer is NULL");
    if (!(lr >= 0 && isfinite(lr)))
        return fail(FASTNN_EINVAL, "fastnn_trainer_set_lr: lr must be a finite number >= 0, got %g", lr);
    t->net.opt.lr = lr;
    return ok();
}

int64_t fastnn_trainer_steps(const fastnn_trainer *t) { return t ? t->net.opt.step : -1; }
