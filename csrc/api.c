/* The stable C ABI (include/fastnn/fastnn_api.h) over the fused executor (net.c): the same
 * plan, kernels and dropout generator that Python's fit and predict use.
 *
 * A model is a list of layers parsed from the architecture JSON (a table of layer readers:
 * see LAYER_TABLE), lowered to fastnn_net units over one flat float32 parameter buffer.
 * New layer kinds (Conv2d, pools, norms) join by adding a row to LAYER_TABLE, a lowering to
 * the plan they run on, and their tensors to tensor_slots().
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

typedef enum { L_FLATTEN, L_LINEAR, L_ACT, L_DROPOUT } layer_kind;

typedef struct {
    layer_kind kind;
    const char *cls;          /* the Python class name (static string) */
    int64_t in, out;          /* Linear */
    int bias;
    fastnn_act act;           /* activation */
    double p;                 /* LeakyReLU slope, Dropout probability */
    int approximate_tanh;     /* GELU */
} layer;

struct fastnn_model {
    int nlayers, nunits;
    layer layers[MAX_LAYERS];
    fastnn_unit units[FASTNN_NET_MAX_UNITS_API];
    int unit_layer[FASTNN_NET_MAX_UNITS_API];   /* index of each unit's Linear in layers */
    int64_t nparams;
    float *params;            /* 64-byte aligned */
    char *arch;               /* canonical architecture JSON, as fastnn.save writes it */
};

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
        m->unit_layer[m->nunits] = i;
        u->in = lin->in, u->out = lin->out, u->act = FASTNN_ACT_IDENTITY;
        if (m->nunits > 0 && u->in != m->units[m->nunits - 1].out)
            return fail(FASTNN_EFORMAT, "architecture: layer %d (Linear) has in_features %lld, "
                        "but the previous Linear has out_features %lld", i, (long long)u->in,
                        (long long)m->units[m->nunits - 1].out);
        u->w = off, off += u->in * u->out;
        u->b = lin->bias ? off : -1, off += lin->bias ? u->out : 0;
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
    free(m->arch);
    free(m);
}

/* A model (parameters allocated, zero) from a parsed architecture. */
static fastnn_status model_from_arch(const json_value *arch, fastnn_model **out) {
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
                      "GELU, SiLU, Dropout)", i, c->str);
            break;
        }
        layer *l = &m->layers[m->nlayers++];
        l->kind = LAYER_TABLE[t].kind, l->cls = LAYER_TABLE[t].cls, l->act = LAYER_TABLE[t].act;
        st = LAYER_TABLE[t].read(l, cfg, (int)i);
    }
    if (st == FASTNN_OK) st = lower(m);
    if (st == FASTNN_OK) {
        size_t bytes = ((size_t)m->nparams * sizeof(float) + 63) / 64 * 64;
        m->params = aligned_alloc(64, bytes);
        m->arch = canonical_arch(m);
        if (!m->params || !m->arch) st = fail(FASTNN_ENOMEM, "fastnn: out of memory for %lld "
                                              "parameters", (long long)m->nparams);
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
    fastnn_status st = model_from_arch(json_root(doc), &m);
    json_free(doc);
    if (st != FASTNN_OK) return st;
    /* PyTorch's default: weights and biases U(-1/sqrt(in), 1/sqrt(in)) */
    uint64_t key = mix64(seed);
    for (int i = 0; i < m->nunits; i++) {
        const fastnn_unit *u = &m->units[i];
        double bound = 1.0 / sqrt((double)u->in);
        int64_t end = u->w + u->in * u->out + (u->b >= 0 ? u->out : 0);   /* w then b */
        for (int64_t j = u->w; j < end; j++)
            m->params[j] = (float)((2 * uniform01(key, (uint64_t)j) - 1) * bound);
    }
    *out = m;
    return ok();
}

int64_t fastnn_model_input_size(const fastnn_model *m) { return m ? m->units[0].in : -1; }
int64_t fastnn_model_output_size(const fastnn_model *m) {
    return m ? m->units[m->nunits - 1].out : -1;
}
int64_t fastnn_model_num_parameters(const fastnn_model *m) { return m ? m->nparams : -1; }
const char *fastnn_model_architecture(const fastnn_model *m) { return m ? m->arch : NULL; }
void fastnn_model_free(fastnn_model *m) { model_free(m); }

/* A plan over the model's parameters; grads NULL for inference (the forward pass never
 * touches gradients, so the parameters stand in for the check). */
static void model_net(const fastnn_model *m, fastnn_net *net, float *grads, int64_t max_batch) {
    memset(net, 0, sizeof *net);
    net->dt = FASTNN_F32;
    net->nunits = m->nunits;
    net->units = m->units;
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
    int64_t in = m->units[0].in, ow = m->units[m->nunits - 1].out, xe, oe;
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

/* Tensor name -> (offset, count) in the parameter buffer; returns 0 if not a name of m. */
typedef struct { char name[32]; int64_t off, rows, cols; } slot;

static int tensor_slots(const fastnn_model *m, slot *s) {
    int k = 0;
    for (int i = 0; i < m->nunits; i++) {
        const fastnn_unit *u = &m->units[i];
        snprintf(s[k].name, sizeof s[k].name, "%d.weight", m->unit_layer[i]);
        s[k].off = u->w, s[k].rows = u->out, s[k].cols = u->in, k++;
        if (u->b >= 0) {
            snprintf(s[k].name, sizeof s[k].name, "%d.bias", m->unit_layer[i]);
            s[k].off = u->b, s[k].rows = u->out, s[k].cols = 0, k++;
        }
    }
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
    st = model_from_arch(json_root(adoc), &m);
    json_free(adoc);
    if (st) {
        char copy[sizeof last_error];
        memcpy(copy, last_error, sizeof copy);
        st = fail(st, "%s: %s: %s", fn, path, copy);
        goto done;
    }
    /* every tensor the model needs: F32, its exact shape, inside the data section */
    slot *slots = malloc(sizeof(slot) * 2 * (size_t)m->nunits);
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
        if (strcmp(dt->str, "F32") != 0) {
            st = fail(FASTNN_EUNSUPPORTED, "%s: %s: tensor %s has dtype %.16s; the C API reads "
                      "F32 models only", fn, path, name, dt->str);
            break;
        }
        const slot *s = &slots[k];
        int rank = s->cols ? 2 : 1;
        int good = (int)shape->n == rank;
        for (size_t d = 0; good && d < shape->n; d++)
            good = shape->items[d].type == JSON_NUMBER && shape->items[d].is_int &&
                   shape->items[d].ival == (d == 0 ? s->rows : s->cols);
        if (!good) {
            if (s->cols)
                st = fail(FASTNN_EFORMAT, "%s: %s: tensor %s must have shape [%lld, %lld], as "
                          "the architecture says", fn, path, name, (long long)s->rows,
                          (long long)s->cols);
            else
                st = fail(FASTNN_EFORMAT, "%s: %s: tensor %s must have shape [%lld], as the "
                          "architecture says", fn, path, name, (long long)s->rows);
            break;
        }
        int64_t count = s->rows * (s->cols ? s->cols : 1), b = offs->items[0].ival,
                e = offs->items[1].ival;
        if (b < 0 || e < b || e > datalen || e - b != count * 4) {
            st = fail(FASTNN_EFORMAT, "%s: %s: tensor %s has data_offsets [%lld, %lld] outside "
                      "the data (%lld bytes) or not %lld bytes long: corrupt or truncated", fn,
                      path, name, (long long)b, (long long)e, (long long)datalen,
                      (long long)count * 4);
            break;
        }
        st = read_all(fd, m->params + s->off, (size_t)(e - b), 8 + (int64_t)hlen + b, path);
        if (st == FASTNN_OK && tcrcs) {
            uint32_t want;
            if (!hex8(json_get(tcrcs, name), &want))
                st = fail(FASTNN_EFORMAT, "%s: %s: no checksum for tensor %s", fn, path, name);
            else if (crc32_of(table, m->params + s->off, (size_t)(e - b)) != want)
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
    slot slots[2 * FASTNN_NET_MAX_UNITS_API];
    int ns = tensor_slots(m, slots);
    strbuf h = {0};
    int64_t at = 0;
    sb_printf(&h, "{");
    for (int k = 0; k < ns; k++) {
        int64_t bytes = slots[k].rows * (slots[k].cols ? slots[k].cols : 1) * 4;
        sb_printf(&h, "\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld", slots[k].name,
                  (long long)slots[k].rows);
        if (slots[k].cols) sb_printf(&h, ",%lld", (long long)slots[k].cols);
        sb_printf(&h, "],\"data_offsets\":[%lld,%lld]},", (long long)at, (long long)(at + bytes));
        at += bytes;
    }
    /* version 2: CRC-32 of each tensor and of json.dumps(metadata, sort_keys=True) */
    uint32_t table[256];
    crc_table(table);
    strbuf meta = {0}, sums = {0};
    sb_printf(&meta, "{\"architecture\": ");
    sb_py_json_string(&meta, m->arch, strlen(m->arch));   /* ASCII: the canonical text */
    sb_printf(&meta, ", \"format\": \"fastnn-model\", \"version\": \"2\"}");
    sb_printf(&sums, "{\"metadata\": \"%08x\", \"tensors\": {",
              meta.bad ? 0u : crc32_of(table, meta.s, meta.len));
    for (int k = 0; k < ns; k++)
        sb_printf(&sums, "%s\"%s\": \"%08x\"", k ? ", " : "", slots[k].name,
                  crc32_of(table, m->params + slots[k].off,
                           (size_t)(slots[k].rows * (slots[k].cols ? slots[k].cols : 1)) * 4));
    sb_printf(&sums, "}}");
    sb_printf(&h, "\"__metadata__\":{\"format\":\"fastnn-model\",\"version\":\"2\",\"architecture\":");
    sb_json_string(&h, m->arch);
    sb_printf(&h, ",\"checksums\":");
    sb_json_string(&h, sums.s ? sums.s : "");
    sb_printf(&h, "}}");
    if (meta.bad || sums.bad) h.bad = 1;
    free(meta.s);
    free(sums.s);
    while (!h.bad && h.len % 8) sb_printf(&h, " ");   /* safetensors pads with spaces */
    if (h.bad) {
        free(h.s);
        return fail(FASTNN_ENOMEM, "%s: out of memory", fn);
    }
    /* a temporary file in the target's folder, then rename over the target */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) {
        free(h.s);
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
            st = write_all(fd, m->params + slots[k].off,
                           (size_t)(slots[k].rows * (slots[k].cols ? slots[k].cols : 1)) * 4, tmp);
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
    if (fastnn_mul3_i64(&e, n, t->model->units[0].in, 8) ||
        fastnn_mul3_i64(&e, n, t->model->units[t->model->nunits - 1].out, 8))
        return fail(FASTNN_EINVAL, "%s: n = %lld rows overflow the array size", fn, (long long)n);
    if (t->net.loss == FASTNN_NET_CROSS_ENTROPY) {
        const int64_t *lab = y;
        int64_t C = t->model->units[t->model->nunits - 1].out;
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
    int64_t C = t->model->units[t->model->nunits - 1].out;
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
