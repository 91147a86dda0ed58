/* Test helper (tests/test_capi.py, .ci/capi under ASan/UBSan/LSan): bad input through the C
 * ABI returns an error status with a message and never crashes or leaks.
 *
 *   bad_input model.safetensors scratch_dir [fuzz_iterations]
 * model.safetensors: a valid fastnn model file of a Linear-first MLP. Exit status 0 when
 * every check passed; each failure is printed.
 */
#define _GNU_SOURCE   /* memmem */
#include <fastnn/fastnn_api.h>

#include <locale.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0, checks = 0;

#define EXPECT_ERR(call)                                                                   \
    do {                                                                                   \
        fastnn_status st_ = (call);                                                        \
        checks++;                                                                          \
        if (st_ == FASTNN_OK || !fastnn_last_error()[0]) {                                 \
            failures++;                                                                    \
            fprintf(stderr, "line %d: %s returned %d without an error message\n", __LINE__, \
                    #call, (int)st_);                                                      \
        }                                                                                  \
    } while (0)

#define EXPECT_OK(call)                                                                    \
    do {                                                                                   \
        fastnn_status st_ = (call);                                                        \
        checks++;                                                                          \
        if (st_ != FASTNN_OK) {                                                            \
            failures++;                                                                    \
            fprintf(stderr, "line %d: %s failed: %s\n", __LINE__, #call, fastnn_last_error()); \
        }                                                                                  \
    } while (0)

static unsigned char *slurp(const char *path, long *bytes) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *bytes = ftell(f);
    rewind(f);
    unsigned char *p = malloc((size_t)*bytes);
    if (p && fread(p, 1, (size_t)*bytes, f) != (size_t)*bytes) {
        free(p);
        p = NULL;
    }
    fclose(f);
    return p;
}

static void spit(const char *path, const void *p, long n) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(p, 1, (size_t)n, f);
        fclose(f);
    }
}

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static uint64_t rnd(void) {
    uint64_t x = (rng_state += 0x9E3779B97F4A7C15ull);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Several threads predict with one const model at once: each must get the serial bits, and
 * each thread's error message is its own. */
typedef struct {
    const fastnn_model *m;
    const float *x;
    const float *expect;
    int64_t n, out;
    int bad;
} job;

static void *predict_job(void *arg) {
    job *j = arg;
    float *y = malloc((size_t)(j->n * j->out) * sizeof *y);
    for (int rep = 0; rep < 50 && y; rep++) {
        if (fastnn_model_predict(j->m, j->x, j->n, y) != FASTNN_OK ||
            memcmp(y, j->expect, (size_t)(j->n * j->out) * sizeof *y) != 0)
            j->bad = 1;
        if (fastnn_model_predict(j->m, j->x, 0, y) == FASTNN_OK ||
            !strstr(fastnn_last_error(), "n must be >= 1"))
            j->bad = 1;
    }
    if (!y) j->bad = 1;
    free(y);
    return NULL;
}

static void threads_check(const fastnn_model *m) {
    int64_t in = fastnn_model_input_size(m), out = fastnn_model_output_size(m), n = 300;
    float *x = malloc((size_t)(n * in) * sizeof *x), *expect = malloc((size_t)(n * out) * sizeof *x);
    for (int64_t i = 0; i < n * in; i++) x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1;
    fastnn_model_predict(m, x, n, expect);
    pthread_t th[4];
    job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (job){m, x, expect, n, out, 0};
        pthread_create(&th[i], NULL, predict_job, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        checks++;
        if (jobs[i].bad) {
            failures++;
            fprintf(stderr, "thread %d: predict from several threads went wrong\n", i);
        }
    }
    free(x);
    free(expect);
}

/* Load path; if it loads, it must be usable (predict one row) and freed. */
static void load_any(const char *path) {
    fastnn_model *m = NULL;
    if (fastnn_model_load(path, &m) == FASTNN_OK) {
        int64_t in = fastnn_model_input_size(m), out = fastnn_model_output_size(m);
        float *x = calloc((size_t)in, sizeof *x), *y = calloc((size_t)out, sizeof *y);
        if (x && y) fastnn_model_predict(m, x, 1, y);
        free(x), free(y);
        fastnn_model_free(m);
    } else if (m != NULL || !fastnn_last_error()[0]) {
        failures++;
        fprintf(stderr, "%s: a failed load left a handle or no message\n", path);
    }
}

/* A small CNN (Conv2d, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten,
 * BatchNorm1d, Linear) through the ABI: its input shape required, trained, saved, reloaded
 * with the same predictions; bad input refused. */
#define CNN_LAYERS                                                                          \
    "\"layers\": [{\"class\": \"Conv2d\", \"config\": {\"in_channels\": 2, \"out_channels\": 4, " \
    "\"kernel_size\": [3, 3], \"padding\": \"same\"}}, "                                     \
    "{\"class\": \"BatchNorm2d\", \"config\": {\"num_features\": 4}}, "                      \
    "{\"class\": \"ReLU\", \"config\": {}}, "                                                \
    "{\"class\": \"MaxPool2d\", \"config\": {\"kernel_size\": 2}}, "                         \
    "{\"class\": \"Conv2d\", \"config\": {\"in_channels\": 4, \"out_channels\": 6, "         \
    "\"kernel_size\": 3, \"stride\": 1, \"padding\": [1, 1], \"groups\": 2}}, "             \
    "{\"class\": \"AvgPool2d\", \"config\": {\"kernel_size\": 2, \"stride\": 1}}, "          \
    "{\"class\": \"AdaptiveAvgPool2d\", \"config\": {\"output_size\": 1}}, "                 \
    "{\"class\": \"Flatten\", \"config\": {}}, "                                             \
    "{\"class\": \"BatchNorm1d\", \"config\": {\"num_features\": 6}}, "                      \
    "{\"class\": \"Linear\", \"config\": {\"in_features\": 6, \"out_features\": 3}}]"

static void cnn_checks(const char *scratch) {
    char path[4096], path2[4096];
    fastnn_model *m = NULL, *m2 = NULL;
    fastnn_trainer *t = NULL;
    EXPECT_ERR(fastnn_model_create("{\"class\": \"Sequential\", " CNN_LAYERS "}", 0, &m));
    checks++;
    if (m || !strstr(fastnn_last_error(), "input_shape")) failures++;
    EXPECT_ERR(fastnn_model_create("{\"class\": \"Sequential\", \"input_shape\": [2, 8], "
                                   CNN_LAYERS "}", 0, &m));
    EXPECT_ERR(fastnn_model_create("{\"class\": \"Sequential\", \"input_shape\": [3, 8, 8], "
                                   CNN_LAYERS "}", 0, &m));
    EXPECT_ERR(fastnn_model_create("{\"class\": \"Sequential\", \"input_shape\": [2, 1, 1], "
                                   CNN_LAYERS "}", 0, &m));
    EXPECT_ERR(fastnn_model_create("{\"class\": \"Sequential\", \"input_shape\": [128], "
                                   CNN_LAYERS "}", 0, &m));
    EXPECT_ERR(fastnn_model_create("{\"class\": \"Sequential\", \"input_shape\": [2, 8, 8], "
                                   "\"layers\": [{\"class\": \"Conv2d\", \"config\": "
                                   "{\"in_channels\": 2, \"out_channels\": 4, \"kernel_size\": 3, "
                                   "\"groups\": 3}}]}", 0, &m));
    EXPECT_ERR(fastnn_model_create("{\"class\": \"Sequential\", \"input_shape\": [2, 8, 8], "
                                   "\"layers\": [{\"class\": \"Conv2d\", \"config\": "
                                   "{\"in_channels\": 2, \"out_channels\": 4, \"kernel_size\": 3}}]}",
                                   0, &m));   /* images out: no Flatten */
    EXPECT_ERR(fastnn_model_create("{\"class\": \"Sequential\", \"input_shape\": [2, 8, 8], "
                                   "\"layers\": [{\"class\": \"MaxPool2d\", \"config\": "
                                   "{\"kernel_size\": 2, \"padding\": 2}}]}", 0, &m));
    EXPECT_ERR(fastnn_model_create("{\"class\": \"Sequential\", \"input_shape\": [2, 8, 8], "
                                   "\"layers\": [{\"class\": \"BatchNorm2d\", \"config\": "
                                   "{\"num_features\": 2, \"momentum\": null}}]}", 0, &m));
    EXPECT_OK(fastnn_model_create("{\"class\": \"Sequential\", \"input_shape\": [2, 8, 8], "
                                  CNN_LAYERS "}", 7, &m));
    if (!m) return;
    checks++;
    if (fastnn_model_input_size(m) != 128 || fastnn_model_output_size(m) != 3) failures++;
    enum { N = 10 };
    static float x[N * 128], y0[N * 3], y1[N * 3];
    int64_t labels[N];
    for (int i = 0; i < N * 128; i++) x[i] = (float)((int)(rnd() % 2001) - 1000) / 500.0f;
    for (int i = 0; i < N; i++) labels[i] = i % 3;
    EXPECT_OK(fastnn_trainer_create(m, "cross_entropy", "sgd", "{\"lr\": 0.1, \"momentum\": 0.9}",
                                    4, 1, &t));
    double loss, acc;
    EXPECT_OK(fastnn_trainer_epoch(t, x, labels, N, &loss, &acc));
    EXPECT_OK(fastnn_trainer_evaluate(t, x, labels, N, &loss, &acc));
    checks++;
    if (fastnn_trainer_steps(t) != 3 || !(loss == loss)) failures++;
    labels[3] = 3;
    EXPECT_ERR(fastnn_trainer_epoch(t, x, labels, N, &loss, &acc));
    EXPECT_ERR(fastnn_model_predict(m, x, 0, y0));
    EXPECT_ERR(fastnn_model_predict(m, x, N, x + 1));   /* out overlaps x */
    EXPECT_OK(fastnn_model_predict(m, x, N, y0));
    snprintf(path, sizeof path, "%s/cnn.safetensors", scratch);
    EXPECT_OK(fastnn_model_save(m, path));
    EXPECT_OK(fastnn_model_load(path, &m2));
    if (m2) {
        EXPECT_OK(fastnn_model_predict(m2, x, N, y1));
        checks++;
        if (memcmp(y0, y1, sizeof y0) != 0) failures++;
        threads_check(m2);
        fastnn_model_free(m2);
        m2 = NULL;
    }
    /* the file without its input_shape metadata (version 1: no checksums to fix) */
    long n = 0;
    unsigned char *raw = slurp(path, &n);
    if (raw && n > 8) {
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--) hlen = hlen << 8 | raw[i];
        char *h = (char *)raw + 8, *k = memmem(h, hlen, "\"input_shape\":", 14);
        char *c = memmem(h, hlen, ",\"checksums\":", 13), *v = memmem(h, hlen, "\"version\":\"2\"", 13);
        if (k && c && v && c > k) {
            memset(k - 1, ' ', (size_t)(c - (k - 1)));   /* ,"input_shape":"[..]" -> spaces */
            char *end = h + hlen;   /* the header ends with the metadata's "}}", then spaces */
            while (end > c && end[-1] == ' ') end--;
            memset(c, ' ', (size_t)(end - 2 - c));       /* ,"checksums":"..." -> spaces */
            v[11] = '1';
            snprintf(path2, sizeof path2, "%s/cnn_noshape.safetensors", scratch);
            spit(path2, raw, n);
            EXPECT_ERR(fastnn_model_load(path2, &m2));
            checks++;
            if (m2 || !strstr(fastnn_last_error(), "input shape")) {
                failures++;
                fprintf(stderr, "no-input-shape file: %s\n", fastnn_last_error());
            }
        } else {
            checks++, failures++;
            fprintf(stderr, "cnn.safetensors: no input_shape metadata\n");
        }
        /* every truncation of the CNN file is refused */
        for (long cut = 0; cut < n; cut += 1 + cut / 7) {
            snprintf(path2, sizeof path2, "%s/cnn_cut.safetensors", scratch);
            unsigned char *copy = slurp(path, &n);
            if (!copy) break;
            spit(path2, copy, cut);
            free(copy);
            EXPECT_ERR(fastnn_model_load(path2, &m2));
            fastnn_model_free(m2);
            m2 = NULL;
        }
    }
    free(raw);
    fastnn_trainer_free(t);
    fastnn_model_free(m);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s model.safetensors scratch_dir [fuzz_iterations]\n", argv[0]);
        return 2;
    }
    const char *good = argv[1], *dir = argv[2];
    int iters = argc > 3 ? atoi(argv[3]) : 2000;
    char path[4096];
    fastnn_model *m = NULL, *m2 = NULL;
    fastnn_trainer *t = NULL;

    /* ---- load ---- */
    EXPECT_ERR(fastnn_model_load(NULL, &m));
    EXPECT_ERR(fastnn_model_load(good, NULL));
    EXPECT_OK(fastnn_model_load(good, &m));
    if (m) threads_check(m);
    fastnn_model_free(m);
    m = NULL;
    EXPECT_ERR(fastnn_model_load(dir, &m));                  /* a directory */
    snprintf(path, sizeof path, "%s/does-not-exist.safetensors", dir);
    EXPECT_ERR(fastnn_model_load(path, &m));
    long size = 0;
    unsigned char *bytes = slurp(good, &size);
    if (!bytes || size < 16) {
        fprintf(stderr, "cannot read %s\n", good);
        return 2;
    }
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    for (long cut = 0; cut < size; cut += (cut < 64 ? 1 : 1 + size / 97)) {   /* truncated */
        spit(path, bytes, cut);
        EXPECT_ERR(fastnn_model_load(path, &m));
    }
    {   /* foreign: a valid safetensors file without fastnn's metadata */
        const char hdr[] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
        unsigned char buf[128] = {0};
        uint64_t n = sizeof hdr - 1;
        for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(n >> (8 * i));
        memcpy(buf + 8, hdr, n);
        spit(path, buf, (long)(8 + n + 4));
        EXPECT_ERR(fastnn_model_load(path, &m));
        memset(buf, 0xFF, 8);                                   /* header length 2^64 - 1 */
        spit(path, buf, (long)(8 + n + 4));
        EXPECT_ERR(fastnn_model_load(path, &m));
        spit(path, "garbage, not a model file at all", 32);
        EXPECT_ERR(fastnn_model_load(path, &m));
    }
    /* fuzz: flip bytes of the header (and sometimes the length), load what loads */
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | bytes[i];
    unsigned char *mut = malloc((size_t)size);
    for (int it = 0; it < iters; it++) {
        memcpy(mut, bytes, (size_t)size);
        int flips = 1 + (int)(rnd() % 4);
        for (int k = 0; k < flips; k++) {
            long at = rnd() % 16 == 0 ? (long)(rnd() % 8) : 8 + (long)(rnd() % (hlen ? hlen : 1));
            static const char tokens[] = "{}[]\",:0123456789-.eE \\tfnu\x01\xff";
            mut[at] = rnd() % 2 ? (unsigned char)tokens[rnd() % (sizeof tokens - 1)]
                                : (unsigned char)rnd();
        }
        spit(path, mut, rnd() % 8 == 0 ? (long)(rnd() % (unsigned long)size) : size);
        load_any(path);
    }
    free(mut);

    /* ---- create ---- */
    EXPECT_ERR(fastnn_model_create(NULL, 0, &m));
    EXPECT_ERR(fastnn_model_create("{}", 0, NULL));
    const char *bad_arch[] = {
        "", "not json", "{", "[]", "{\"class\": \"Sequential\"}",
        "{\"class\": \"Sequential\", \"layers\": []}",
        "{\"class\": \"Sequential\", \"layers\": [{\"class\": \"Conv2d\", \"config\": {}}]}",
        "{\"class\": \"Sequential\", \"layers\": [{\"class\": \"ReLU\"}]}",
        "{\"class\": \"Sequential\", \"layers\": [{\"class\": \"Linear\", \"config\": "
        "{\"in_features\": -3, \"out_features\": 2}}]}",
        "{\"class\": \"Sequential\", \"layers\": [{\"class\": \"Linear\", \"config\": "
        "{\"in_features\": 3, \"out_features\": 0}}]}",
        "{\"class\": \"Sequential\", \"layers\": [{\"class\": \"Linear\", \"config\": "
        "{\"in_features\": 3, \"out_features\": 2}}, {\"class\": \"Linear\", \"config\": "
        "{\"in_features\": 5, \"out_features\": 2}}]}",
        "{\"class\": \"Sequential\", \"layers\": [{\"class\": \"Linear\", \"config\": "
        "{\"in_features\": 3, \"out_features\": 2, \"dtype\": \"float64\"}}]}",
        "{\"class\": \"Sequential\", \"layers\": [{\"class\": \"Linear\", \"config\": "
        "{\"in_features\": 3, \"out_features\": 2}}, {\"class\": \"Dropout\", \"config\": {\"p\": 1}}]}",
        "{\"class\": \"Sequential\", \"layers\": [{\"class\": \"Linear\", \"config\": "
        "{\"in_features\": 3.5, \"out_features\": 2}}]}",
        "{\"class\": \"Sequential\", \"class\": \"Sequential\", \"layers\": []}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        "{\"a\": \"\\ud800\"}", "{\"a\": \"\\uZZZZ\"}", "{\"a\": 1e}", "{\"a\": 01}", "{\"a\": 1} x",
    };
    for (size_t i = 0; i < sizeof bad_arch / sizeof *bad_arch; i++) {
        EXPECT_ERR(fastnn_model_create(bad_arch[i], 0, &m));
        if (m) failures++;
    }
    const char *arch = "{\"class\": \"Sequential\", \"layers\": [{\"class\": \"Linear\", \"config\": "
                       "{\"in_features\": 3, \"out_features\": 4}}, {\"class\": \"ReLU\"}, "
                       "{\"class\": \"Linear\", \"config\": {\"in_features\": 4, \"out_features\": 2}}]}";
    for (int it = 0; it < iters; it++) {   /* fuzz the architecture text */
        char buf[512];
        size_t n = strlen(arch);
        memcpy(buf, arch, n + 1);
        for (int k = 0; k < 1 + (int)(rnd() % 3); k++)
            buf[rnd() % n] = "{}[]\",:0123456789-.eE aZ\\"[rnd() % 25];
        if (fastnn_model_create(buf, 1, &m) == FASTNN_OK) fastnn_model_free(m);
        m = NULL;
    }
    EXPECT_OK(fastnn_model_create(arch, 1, &m));
    if (!m) return 1;

    /* ---- sizes, predict ---- */
    checks++;
    if (fastnn_model_input_size(NULL) != -1 || fastnn_model_output_size(NULL) != -1) failures++;
    float x[6] = {1, 2, 3, 4, 5, 6}, y[4];
    EXPECT_ERR(fastnn_model_predict(NULL, x, 1, y));
    EXPECT_ERR(fastnn_model_predict(m, NULL, 1, y));
    EXPECT_ERR(fastnn_model_predict(m, x, 1, NULL));
    EXPECT_ERR(fastnn_model_predict(m, x, 0, y));
    EXPECT_ERR(fastnn_model_predict(m, x, -1, y));
    EXPECT_ERR(fastnn_model_predict(m, x, INT64_MAX / 2, y));
    EXPECT_ERR(fastnn_model_predict(m, x, 2, x + 1));         /* out overlaps x */
    EXPECT_OK(fastnn_model_predict(m, x, 2, y));

    /* ---- save ---- */
    EXPECT_ERR(fastnn_model_save(NULL, path));
    EXPECT_ERR(fastnn_model_save(m, NULL));
    EXPECT_ERR(fastnn_model_save(m, ""));
    EXPECT_ERR(fastnn_model_save(m, dir));                    /* a directory */
    snprintf(path, sizeof path, "%s/no/such/folder/m.safetensors", dir);
    EXPECT_ERR(fastnn_model_save(m, path));
    snprintf(path, sizeof path, "%s/roundtrip.safetensors", dir);
    EXPECT_OK(fastnn_model_save(m, path));
    EXPECT_OK(fastnn_model_load(path, &m2));
    fastnn_model_free(m2);

    /* ---- trainer ---- */
    EXPECT_ERR(fastnn_trainer_create(NULL, "cross_entropy", "sgd", NULL, 2, 0, &t));
    EXPECT_ERR(fastnn_trainer_create(m, NULL, "sgd", NULL, 2, 0, &t));
    EXPECT_ERR(fastnn_trainer_create(m, "cross_entropy", NULL, NULL, 2, 0, &t));
    EXPECT_ERR(fastnn_trainer_create(m, "cross_entropy", "sgd", NULL, 2, 0, NULL));
    EXPECT_ERR(fastnn_trainer_create(m, "hinge", "sgd", NULL, 2, 0, &t));
    EXPECT_ERR(fastnn_trainer_create(m, "cross_entropy", "lbfgs", NULL, 2, 0, &t));
    EXPECT_ERR(fastnn_trainer_create(m, "cross_entropy", "sgd", NULL, 0, 0, &t));
    EXPECT_ERR(fastnn_trainer_create(m, "cross_entropy", "sgd", NULL, -5, 0, &t));
    const char *bad_opts[] = {"not json", "[]", "{\"lr\": -1}", "{\"lr\": \"big\"}",
                              "{\"learning_rate\": 0.1}", "{\"betas\": [0.9, 0.999]}",
                              "{\"nesterov\": true}", "{\"reduction\": \"none\"}",
                              "{\"label_smoothing\": 2}", "{\"delta\": 0}"};
    for (size_t i = 0; i < sizeof bad_opts / sizeof *bad_opts; i++) {
        EXPECT_ERR(fastnn_trainer_create(m, "cross_entropy", "sgd", bad_opts[i], 2, 0, &t));
        if (t) failures++;
    }
    EXPECT_ERR(fastnn_trainer_create(m, "cross_entropy", "adam", "{\"betas\": [1.5, 0.9]}", 2, 0, &t));
    EXPECT_OK(fastnn_trainer_create(m, "cross_entropy", "adam", "{\"lr\": 0.01}", 2, 7, &t));
    if (!t) return 1;
    int64_t labels[2] = {0, 1}, bad_labels[2] = {0, 2}, order[2] = {1, 0}, bad_order[2] = {0, 5};
    double loss, acc;
    EXPECT_ERR(fastnn_trainer_epoch(NULL, x, labels, 2, &loss, &acc));
    EXPECT_ERR(fastnn_trainer_epoch(t, NULL, labels, 2, &loss, &acc));
    EXPECT_ERR(fastnn_trainer_epoch(t, x, NULL, 2, &loss, &acc));
    EXPECT_ERR(fastnn_trainer_epoch(t, x, labels, 0, &loss, &acc));
    EXPECT_ERR(fastnn_trainer_epoch(t, x, labels, -2, &loss, &acc));
    EXPECT_ERR(fastnn_trainer_epoch(t, x, bad_labels, 2, &loss, &acc));
    EXPECT_ERR(fastnn_trainer_epoch_ordered(t, x, labels, 2, bad_order, 0, &loss, &acc));
    EXPECT_ERR(fastnn_trainer_evaluate(t, x, labels, -1, &loss, &acc));
    EXPECT_ERR(fastnn_trainer_evaluate(NULL, x, labels, 2, &loss, &acc));
    EXPECT_ERR(fastnn_trainer_set_lr(t, -1));
    EXPECT_ERR(fastnn_trainer_set_lr(NULL, 0.1));
    checks++;
    if (fastnn_trainer_steps(t) != 0 || fastnn_trainer_steps(NULL) != -1) failures++;
    EXPECT_OK(fastnn_trainer_epoch(t, x, labels, 2, &loss, &acc));
    EXPECT_OK(fastnn_trainer_epoch_ordered(t, x, labels, 2, order, 3, NULL, NULL));
    EXPECT_OK(fastnn_trainer_evaluate(t, x, labels, 2, &loss, &acc));
    checks++;
    if (fastnn_trainer_steps(t) != 2) failures++;
    {   /* a non-finite loss stops training before the update */
        fastnn_trainer *t2 = NULL;
        EXPECT_OK(fastnn_trainer_create(m, "mse", "sgd", NULL, 2, 0, &t2));
        float targets[4] = {__builtin_inff(), 0, 0, 0};   /* an infinite loss */
        int64_t before = fastnn_trainer_steps(t2);
        EXPECT_ERR(fastnn_trainer_epoch(t2, x, targets, 2, &loss, NULL));
        checks++;
        if (fastnn_trainer_steps(t2) != before) failures++;
        fastnn_trainer_free(t2);
    }
    {   /* a host program with a decimal-comma locale: JSON numbers keep their point */
        const char *names[] = {"de_DE.UTF-8", "fr_FR.UTF-8", "de_DE.utf8", "fr_FR.utf8"};
        int set = 0;
        for (int i = 0; i < 4 && !set; i++) set = setlocale(LC_NUMERIC, names[i]) != NULL;
        if (set) {
            const char *a = "{\"class\": \"Sequential\", \"layers\": [{\"class\": \"Linear\", "
                            "\"config\": {\"in_features\": 3, \"out_features\": 2}}, "
                            "{\"class\": \"Dropout\", \"config\": {\"p\": 0.25}}]}";
            EXPECT_OK(fastnn_model_create(a, 0, &m2));
            checks++;
            if (!m2 || !strstr(fastnn_model_architecture(m2), "\"p\": 0.25")) failures++;
            fastnn_model_free(m2);
            setlocale(LC_NUMERIC, "C");
        }
        printf("decimal-comma locale check: %s\n", set ? "run" : "skipped (no such locale)");
    }
    fastnn_trainer_free(t);
    fastnn_trainer_free(NULL);
    fastnn_model_free(m);
    fastnn_model_free(NULL);
    free(bytes);
    cnn_checks(argv[2]);
    printf("%d checks, %d failures, %d fuzz iterations each\n", checks, failures, iters);
    return failures != 0;
}
