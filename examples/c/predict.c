/* Load a model saved by Python (fastnn.save) and run it on raw float32 rows.
 *
 *   gcc predict.c -o predict $(python -m fastnn.config --cflags --libs)
 *   ./predict model.safetensors inputs.f32 outputs.f32
 *
 * inputs.f32 holds n x input_size float32 values (row-major, native byte order, e.g.
 * X.astype(np.float32).tofile(path)); outputs.f32 receives n x output_size values, the same
 * bits as model.predict(X) in Python.
 */
#include <fastnn/fastnn_api.h>

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s model.safetensors inputs.f32 outputs.f32\n", argv[0]);
        return 2;
    }
    fastnn_model *model = NULL;
    float *x = NULL, *y = NULL;
    FILE *f = NULL;
    int rc = 1;
    if (fastnn_model_load(argv[1], &model) != FASTNN_OK) {
        fprintf(stderr, "%s\n", fastnn_last_error());
        return 1;
    }
    int64_t in = fastnn_model_input_size(model), out = fastnn_model_output_size(model);
    if (!(f = fopen(argv[2], "rb"))) {
        perror(argv[2]);
        goto done;
    }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    rewind(f);
    int64_t n = bytes / (long)(in * sizeof(float));
    if (n < 1 || bytes != (long)(n * in * (long)sizeof(float))) {
        fprintf(stderr, "%s: %ld bytes is not a whole number of %lld-float rows\n", argv[2], bytes,
                (long long)in);
        goto done;
    }
    x = malloc((size_t)bytes);
    y = malloc((size_t)(n * out) * sizeof *y);
    if (!x || !y || fread(x, 1, (size_t)bytes, f) != (size_t)bytes) goto done;
    fclose(f);
    f = NULL;
    if (fastnn_model_predict(model, x, n, y) != FASTNN_OK) {
        fprintf(stderr, "%s\n", fastnn_last_error());
        goto done;
    }
    if (!(f = fopen(argv[3], "wb")) || fwrite(y, sizeof *y, (size_t)(n * out), f) != (size_t)(n * out)) {
        perror(argv[3]);
        goto done;
    }
    printf("%lld rows: %lld -> %lld features\n", (long long)n, (long long)in, (long long)out);
    rc = 0;
done:
    if (f) fclose(f);
    free(x);
    free(y);
    fastnn_model_free(model);
    return rc;
}
