/* Test helper (tests/test_poolnorm.py): the cloned loops of csrc/ref (softmax, cross-entropy)
 * and csrc/layers/norm.c, compiled into this program another way than the library (gcc -O0,
 * where nothing is inlined unless it must be; clang) and linked against libfastnn for the
 * runtime (threads). The program's own definitions of the kernels take precedence over the
 * library's; it writes their outputs to stdout as raw bytes, float32 then float64, for the
 * test to compare bit for bit with the library through fastnn.ops on the same inputs.
 *
 *   cloned_loops rows cols
 * Inputs (the same float64 operations in C and numpy, so both get the same values):
 * x[i] = ((i * 7919) % 2003) / 173.0 - 5.8, dy[i] = ((i * 104729) % 1009) / 97.0 - 5.2,
 * w[c] = 0.5 + (c % 7) / 4.0, b[c] = (c % 5) / 8.0 - 0.25, labels[r] = (r * 31) % cols. */
#include <stdio.h>
#include <stdlib.h>
#include "fastnn/fastnn.h"

static void out(const void *p, size_t n) { fwrite(p, 1, n, stdout); }

#define RUN(T, DT)                                                                          \
    do {                                                                                    \
        T *x = malloc(n * sizeof(T)), *dy = malloc(n * sizeof(T)), *y = malloc(n * sizeof(T)); \
        T *g = malloc(n * sizeof(T)), *w = malloc(cols * sizeof(T)), *b = malloc(cols * sizeof(T)); \
        T *dw = malloc(cols * sizeof(T)), *db = malloc(cols * sizeof(T));                   \
        T *s1 = malloc(cols * sizeof(T) + rows * sizeof(T)), *s2 = malloc(cols * sizeof(T) + rows * sizeof(T)); \
        for (int64_t i = 0; i < n; i++) {                                                   \
            x[i] = (T)((double)((i * 7919) % 2003) / 173.0 - 5.8);                          \
            dy[i] = (T)((double)((i * 104729) % 1009) / 97.0 - 5.2);                        \
        }                                                                                   \
        for (int64_t c = 0; c < cols; c++) {                                                \
            w[c] = (T)(0.5 + (double)(c % 7) / 4.0);                                        \
            b[c] = (T)((double)(c % 5) / 8.0 - 0.25);                                       \
        }                                                                                   \
        for (int lg = 0; lg < 2; lg++) {                                                    \
            st |= fastnn_softmax(DT, lg, y, x, rows, cols); out(y, n * sizeof(T));           \
            st |= fastnn_softmax_backward(DT, lg, g, dy, y, rows, cols); out(g, n * sizeof(T)); \
        }                                                                                   \
        double total = 0, wsum = 0;                                                         \
        st |= fastnn_cross_entropy(DT, &total, &wsum, NULL, g, 1.0, x, labels, w, 0.1, rows, cols); \
        out(&total, sizeof total); out(g, n * sizeof(T));                                   \
        st |= fastnn_layernorm(DT, y, s1, s2, x, w, b, rows, cols, 1e-5); out(y, n * sizeof(T)); \
        st |= fastnn_layernorm_backward(DT, g, dw, db, dy, x, s1, s2, w, rows, cols, 0.0);  \
        out(g, n * sizeof(T)); out(dw, cols * sizeof(T)); out(db, cols * sizeof(T));        \
        /* batch norm of x as (rows, 1, cols): one channel, images of cols values */        \
        st |= fastnn_batchnorm(DT, 1, y, s1, s2, NULL, NULL, x, NULL, NULL, rows, 1, cols, 0.1, 1e-5); \
        out(y, n * sizeof(T));                                                              \
        st |= fastnn_batchnorm_backward(DT, 1, g, dw, db, dy, x, s1, s2, NULL, rows, 1, cols, 0.0); \
        out(g, n * sizeof(T)); out(dw, sizeof(T)); out(db, sizeof(T));                      \
        free(x); free(dy); free(y); free(g); free(w); free(b); free(dw); free(db); free(s1); free(s2); \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int64_t rows = atoll(argv[1]), cols = atoll(argv[2]), n = rows * cols;
    if (rows < 2 || cols < 1) return 2;
    int64_t *labels = malloc(rows * sizeof(int64_t));
    for (int64_t r = 0; r < rows; r++) labels[r] = (r * 31) % cols;
    int st = 0;
    RUN(float, FASTNN_F32);
    RUN(double, FASTNN_F64);
    free(labels);
    return st != 0;
}
