/* Cost of fastnn_model_predict beyond its arithmetic, at batch 1 on an IN-H-H-OUT ReLU MLP
 * (784-256-256-10 by default; a tiny one such as 8 8 2 shows the fixed cost alone):
 * the API call (checks, working memory, the fused forward) against the same three
 * GEMM+bias+ReLU kernel calls made directly on preallocated buffers. One thread; rounds
 * alternate A and B; the median per-call time of each and their difference are printed.
 *
 *   gcc -O2 benchmarks/c/predict_overhead.c -Icsrc/include \
 *       $(python -m fastnn.config --cflags --libs) -o predict_overhead && ./predict_overhead [rounds calls in hidden out]
 * (csrc/include for the kernel header fastnn.h: the kernels are exported by libfastnn but are
 * not part of the stable ABI.)
 */
#define _POSIX_C_SOURCE 200809L
#include <fastnn/fastnn_api.h>
#include "fastnn/fastnn.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 101, calls = argc > 2 ? atoi(argv[2]) : 500;
    int IN = argc > 3 ? atoi(argv[3]) : 784, H = argc > 4 ? atoi(argv[4]) : 256,
        OUT = argc > 5 ? atoi(argv[5]) : 10;
    if (rounds < 1 || rounds > 1001 || calls < 1 || IN < 1 || H < 1 || OUT < 1) return 2;
    char arch[1024];
    snprintf(arch, sizeof arch,
             "{\"class\": \"Sequential\", \"layers\": ["
             "{\"class\": \"Linear\", \"config\": {\"in_features\": %d, \"out_features\": %d}},"
             "{\"class\": \"ReLU\"},"
             "{\"class\": \"Linear\", \"config\": {\"in_features\": %d, \"out_features\": %d}},"
             "{\"class\": \"ReLU\"},"
             "{\"class\": \"Linear\", \"config\": {\"in_features\": %d, \"out_features\": %d}}]}",
             IN, H, H, H, H, OUT);
    fastnn_model *m;
    if (fastnn_model_create(arch, 0, &m)) {
        fprintf(stderr, "%s\n", fastnn_last_error());
        return 1;
    }
    fastnn_set_num_threads(1);
    /* weights of the same shapes for the direct kernel calls (any values do for timing) */
    float *w1 = calloc((size_t)H * IN, 4), *b1 = calloc(H, 4), *w2 = calloc((size_t)H * H, 4),
          *b2 = calloc(H, 4), *w3 = calloc((size_t)OUT * H, 4), *b3 = calloc(OUT, 4);
    float *h1 = calloc(H, 4), *h2 = calloc(H, 4), *y = calloc(OUT, 4), *x = calloc(IN, 4);
    for (int i = 0; i < IN; i++) x[i] = (float)(i % 17) / 17.0f;
    for (long i = 0; i < (long)H * IN; i++) w1[i] = (float)((i * 7919) % 200 - 100) / 3000.0f;
    for (long i = 0; i < (long)H * H; i++) w2[i] = (float)((i * 7919) % 200 - 100) / 1600.0f;
    for (long i = 0; i < (long)OUT * H; i++) w3[i] = (float)((i * 7919) % 200 - 100) / 1600.0f;
    double *ta = malloc(rounds * sizeof(double)), *tb = malloc(rounds * sizeof(double));
    for (int r = -1; r < rounds; r++) {   /* round -1 warms up */
        double t0 = now();
        for (int c = 0; c < calls; c++) fastnn_model_predict(m, x, 1, y);
        double t1 = now();
        for (int c = 0; c < calls; c++) {
            fastnn_gemm_bias_act(FASTNN_F32, 0, 1, 1, H, IN, 1.0, x, IN, w1, IN, 0.0, h1, H,
                                 b1, FASTNN_ACT_RELU, 0, 0);
            fastnn_gemm_bias_act(FASTNN_F32, 0, 1, 1, H, H, 1.0, h1, H, w2, H, 0.0, h2, H,
                                 b2, FASTNN_ACT_RELU, 0, 0);
            fastnn_gemm_bias_act(FASTNN_F32, 0, 1, 1, OUT, H, 1.0, h2, H, w3, H, 0.0, y, OUT,
                                 b3, FASTNN_ACT_IDENTITY, 0, 0);
        }
        double t2 = now();
        if (r >= 0) ta[r] = (t1 - t0) / calls * 1e6, tb[r] = (t2 - t1) / calls * 1e6;
    }
    double *d = malloc(rounds * sizeof(double));
    for (int r = 0; r < rounds; r++) d[r] = ta[r] - tb[r];
    qsort(ta, rounds, sizeof(double), cmp);
    qsort(tb, rounds, sizeof(double), cmp);
    qsort(d, rounds, sizeof(double), cmp);
    printf("fastnn %s, kernel table %s, 1 thread, MLP %d-%d-%d-%d, batch 1, %d rounds x %d "
           "calls, A/B alternating (medians)\n", fastnn_version(), fastnn_arch(), IN, H, H, OUT,
           rounds, calls);
    printf("fastnn_model_predict                 : %8.3f us/call\n", ta[rounds / 2]);
    printf("the 3 GEMM+bias+act calls directly   : %8.3f us/call\n", tb[rounds / 2]);
    printf("overhead (median of per-round diffs) : %8.3f us/call  (quartiles %.3f .. %.3f)\n",
           d[rounds / 2], d[rounds / 4], d[3 * rounds / 4]);
    free(d);
    fastnn_model_free(m);
    free(w1), free(b1), free(w2), free(b2), free(w3), free(b3), free(h1), free(h2), free(y), free(x);
    free(ta), free(tb);
    return 0;
}
