/* fastnn_model_predict at batch 1 on a model file (e.g. LeNet-5 saved by Python with its
 * input shape): the median over rounds of the per-call time (wall and this thread's CPU
 * time) of `calls` predictions of one random sample. One thread.
 *
 *   python -c "import fastnn as fn; fn.save(fn.models.lenet5(seed=0), 'lenet.safetensors', input_shape=(1, 28, 28))"
 *   gcc -O2 benchmarks/c/predict_latency.c $(python -m fastnn.config --cflags --libs) -o predict_latency
 *   ./predict_latency lenet.safetensors [rounds calls]
 */
#define _POSIX_C_SOURCE 200809L
#include <fastnn/fastnn_api.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 4) {
        fprintf(stderr, "usage: %s model.safetensors [rounds calls]\n", argv[0]);
        return 2;
    }
    int rounds = argc == 4 ? atoi(argv[2]) : 101, calls = argc == 4 ? atoi(argv[3]) : 200;
    if (rounds < 1 || calls < 1) return 2;
    fastnn_model *m = NULL;
    fastnn_set_num_threads(1);
    if (fastnn_model_load(argv[1], &m)) {
        fprintf(stderr, "%s\n", fastnn_last_error());
        return 1;
    }
    int64_t in = fastnn_model_input_size(m), out = fastnn_model_output_size(m);
    float *x = malloc((size_t)in * sizeof *x), *y = malloc((size_t)out * sizeof *y);
    double *wall = malloc((size_t)rounds * sizeof *wall), *cpu = malloc((size_t)rounds * sizeof *cpu);
    if (!x || !y || !wall || !cpu) return 1;
    unsigned s = 1;
    for (int64_t i = 0; i < in; i++) x[i] = (float)((s = s * 1103515245u + 12345u) >> 16) / 32768.0f - 1;
    for (int i = 0; i < calls; i++) fastnn_model_predict(m, x, 1, y);   /* warm-up */
    for (int r = 0; r < rounds; r++) {
        double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
        for (int i = 0; i < calls; i++)
            if (fastnn_model_predict(m, x, 1, y)) {
                fprintf(stderr, "%s\n", fastnn_last_error());
                return 1;
            }
        cpu[r] = (clock_s(CLOCK_THREAD_CPUTIME_ID) - c0) / calls * 1e6;
        wall[r] = (clock_s(CLOCK_MONOTONIC) - w0) / calls * 1e6;
    }
    qsort(wall, (size_t)rounds, sizeof *wall, cmp);
    qsort(cpu, (size_t)rounds, sizeof *cpu, cmp);
    printf("fastnn %s, %lld -> %lld features, batch 1, %d rounds of %d calls: median %.2f us "
           "per call wall (quartiles %.2f .. %.2f), %.2f us CPU (quartiles %.2f .. %.2f)\n",
           fastnn_version(), (long long)in, (long long)out, rounds, calls, wall[rounds / 2],
           wall[rounds / 4], wall[3 * rounds / 4], cpu[rounds / 2], cpu[rounds / 4],
           cpu[3 * rounds / 4]);
    free(x), free(y), free(wall), free(cpu);
    fastnn_model_free(m);
    return 0;
}
