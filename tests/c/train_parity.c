/* Test helper (tests/test_capi.py): train a Python-saved model through the C ABI with the
 * batch orders and dropout keys Python's fit used, save it, print each epoch's loss/accuracy.
 *
 *   train_parity init.safetensors X.f32 y.bin n orders.i64 keys.u64 epochs loss optimizer
 *                options batch_size out.safetensors
 * y.bin: int64 labels [n] for cross_entropy, else float32 targets [n, outputs].
 */
#include <fastnn/fastnn_api.h>

#include <stdio.h>
#include <stdlib.h>

static void *slurp(const char *path, long *bytes) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *bytes = ftell(f);
    rewind(f);
    void *p = malloc(*bytes ? (size_t)*bytes : 1);
    if (p && fread(p, 1, (size_t)*bytes, f) != (size_t)*bytes) {
        free(p);
        p = NULL;
    }
    fclose(f);
    return p;
}

int main(int argc, char **argv) {
    if (argc != 13) {
        fprintf(stderr, "usage: see the comment at the top\n");
        return 2;
    }
    long bx, by, bo, bk;
    float *x = slurp(argv[2], &bx);
    void *y = slurp(argv[3], &by);
    int64_t n = atoll(argv[4]);
    int64_t *orders = slurp(argv[5], &bo);
    uint64_t *keys = slurp(argv[6], &bk);
    int epochs = atoi(argv[7]);
    fastnn_model *m = NULL;
    fastnn_trainer *t = NULL;
    int rc = 1;
    if (!x || !y || !orders || !keys || bo != (long)(8 * n * epochs) || bk != 8L * epochs) {
        fprintf(stderr, "bad inputs\n");
        goto done;
    }
    if (fastnn_model_load(argv[1], &m) ||
        fastnn_trainer_create(m, argv[8], argv[9], argv[10], atoll(argv[11]), 0, &t)) {
        fprintf(stderr, "%s\n", fastnn_last_error());
        goto done;
    }
    for (int e = 0; e < epochs; e++) {
        double loss, acc;
        if (fastnn_trainer_epoch_ordered(t, x, y, n, orders + (int64_t)e * n, keys[e], &loss, &acc)) {
            fprintf(stderr, "%s\n", fastnn_last_error());
            goto done;
        }
        printf("%.17g %.17g\n", loss, acc);
    }
    if (fastnn_model_save(m, argv[12])) {
        fprintf(stderr, "%s\n", fastnn_last_error());
        goto done;
    }
    rc = 0;
done:
    fastnn_trainer_free(t);
    fastnn_model_free(m);
    free(x), free(y), free(orders), free(keys);
    return rc;
}
