/* Train a small MLP on a CSV of digits with fastnn's C ABI, report the test accuracy, save
 * the model, reload it and check that the reloaded model predicts the same bits.
 *
 *   gcc train_digits.c -o train_digits $(python -m fastnn.config --cflags --libs)
 *   ./train_digits train.csv test.csv model.safetensors [epochs] [seed]
 *
 * CSV: one sample per line, the features then the class label (an integer) last, e.g. the
 * bundled 8x8 digits: zcat src/fastnn/datasets/data/digits.csv.gz. Pixels are scaled by 1/16.
 * The saved file loads in Python with fastnn.load(path).
 */
#include <fastnn/fastnn_api.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                        \
    do {                                                                                   \
        fastnn_status st_ = (call);                                                        \
        if (st_ != FASTNN_OK) {                                                            \
            fprintf(stderr, "%s failed (status %d): %s\n", #call, (int)st_, fastnn_last_error()); \
            goto fail;                                                                     \
        }                                                                                  \
    } while (0)

typedef struct {
    float *x;
    int64_t *y;
    int64_t n, features;
} dataset;

/* Read "f1,f2,...,label" lines; every line must have the same number of fields. */
static int read_csv(const char *path, dataset *d) {
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return 0;
    }
    char line[1 << 16];
    int64_t cap = 0;
    memset(d, 0, sizeof *d);
    d->features = -1;
    while (fgets(line, sizeof line, f)) {
        float vals[4096];
        int64_t k = 0;
        for (char *p = line, *end; *p && *p != '\n' && k < 4096; p = end + (*end == ',')) {
            vals[k++] = strtof(p, &end);
            if (end == p) break;
        }
        if (k < 2) continue;   /* blank line */
        if (d->features < 0) d->features = k - 1;
        if (k - 1 != d->features) {
            fprintf(stderr, "%s: line %lld has %lld fields, expected %lld\n", path,
                    (long long)d->n + 1, (long long)k, (long long)d->features + 1);
            fclose(f);
            return 0;
        }
        if (d->n == cap) {
            cap = cap ? 2 * cap : 1024;
            float *x = realloc(d->x, (size_t)(cap * d->features) * sizeof *x);
            int64_t *y = realloc(d->y, (size_t)cap * sizeof *y);
            if (x) d->x = x;
            if (y) d->y = y;
            if (!x || !y) {
                fclose(f);
                return 0;
            }
        }
        for (int64_t j = 0; j < d->features; j++) d->x[d->n * d->features + j] = vals[j] / 16.0f;
        d->y[d->n++] = (int64_t)vals[d->features];
    }
    fclose(f);
    return d->n > 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s train.csv test.csv model.safetensors [epochs] [seed]\n", argv[0]);
        return 2;
    }
    int epochs = argc > 4 ? atoi(argv[4]) : 20;
    uint64_t seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 0;
    dataset tr = {0}, te = {0};
    fastnn_model *model = NULL, *again = NULL;
    fastnn_trainer *trainer = NULL;
    float *p1 = NULL, *p2 = NULL;
    int rc = 1;
    if (!read_csv(argv[1], &tr) || !read_csv(argv[2], &te) || tr.features != te.features) {
        fprintf(stderr, "cannot read the data\n");
        goto fail;
    }
    int64_t classes = 0;
    for (int64_t i = 0; i < tr.n; i++) classes = tr.y[i] + 1 > classes ? tr.y[i] + 1 : classes;
    printf("fastnn %s (C API %d): %lld training and %lld test samples, %lld features, %lld "
           "classes\n", fastnn_version(), fastnn_api_version(), (long long)tr.n, (long long)te.n,
           (long long)tr.features, (long long)classes);

    char arch[512];
    snprintf(arch, sizeof arch,
             "{\"class\": \"Sequential\", \"layers\": ["
             "{\"class\": \"Linear\", \"config\": {\"in_features\": %lld, \"out_features\": 64}},"
             "{\"class\": \"ReLU\"},"
             "{\"class\": \"Linear\", \"config\": {\"in_features\": 64, \"out_features\": %lld}}]}",
             (long long)tr.features, (long long)classes);
    CHECK(fastnn_model_create(arch, seed, &model));
    CHECK(fastnn_trainer_create(model, "cross_entropy", "sgd", "{\"lr\": 0.1, \"momentum\": 0.9}",
                                32, seed, &trainer));
    for (int e = 0; e < epochs; e++) {
        double loss, acc;
        CHECK(fastnn_trainer_epoch(trainer, tr.x, tr.y, tr.n, &loss, &acc));
        if (e == 0 || e == epochs - 1 || (e + 1) % 5 == 0)
            printf("epoch %3d  loss %.4f  accuracy %.4f\n", e + 1, loss, acc);
    }
    double test_loss, test_acc;
    CHECK(fastnn_trainer_evaluate(trainer, te.x, te.y, te.n, &test_loss, &test_acc));
    printf("test loss %.4f  test accuracy %.4f\n", test_loss, test_acc);

    CHECK(fastnn_model_save(model, argv[3]));
    CHECK(fastnn_model_load(argv[3], &again));
    int64_t out = fastnn_model_output_size(again);
    p1 = malloc((size_t)(te.n * out) * sizeof *p1);
    p2 = malloc((size_t)(te.n * out) * sizeof *p2);
    if (!p1 || !p2) goto fail;
    CHECK(fastnn_model_predict(model, te.x, te.n, p1));
    CHECK(fastnn_model_predict(again, te.x, te.n, p2));
    if (memcmp(p1, p2, (size_t)(te.n * out) * sizeof *p1) != 0) {
        fprintf(stderr, "the reloaded model predicts different numbers\n");
        goto fail;
    }
    printf("saved %s, reloaded: %lld -> %lld, predictions identical\n", argv[3],
           (long long)fastnn_model_input_size(again), (long long)out);
    rc = 0;
fail:
    free(p1);
    free(p2);
    fastnn_trainer_free(trainer);
    fastnn_model_free(model);
    fastnn_model_free(again);
    free(tr.x), free(tr.y), free(te.x), free(te.y);
    return rc;
}
