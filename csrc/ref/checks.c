/* Input checks that read a whole training set: one pass, no temporary. */
#include "common.h"

/* Blocks of 4096 elements, each reduced to one flag without a branch (x - x is 0 for a finite
 * x and NaN for an infinity or NaN, and NaN == NaN is false), so that the loop vectorizes;
 * the first flagged block is then searched element by element. */
#define FINITE_BLOCK 4096

FASTNN_CLONES static int64_t first_nonfinite_f32(const float *x, int64_t n) {
    for (int64_t b = 0; b < n; b += FINITE_BLOCK) {
        int64_t e = fastnn_min64(n, b + FINITE_BLOCK);
        int bad = 0;
        for (int64_t i = b; i < e; i++) bad |= !(x[i] - x[i] == 0);
        if (bad)
            for (int64_t i = b; i < e; i++)
                if (!(x[i] - x[i] == 0)) return i;
    }
    return -1;
}

FASTNN_CLONES static int64_t first_nonfinite_f64(const double *x, int64_t n) {
    for (int64_t b = 0; b < n; b += FINITE_BLOCK) {
        int64_t e = fastnn_min64(n, b + FINITE_BLOCK);
        int bad = 0;
        for (int64_t i = b; i < e; i++) bad |= !(x[i] - x[i] == 0);
        if (bad)
            for (int64_t i = b; i < e; i++)
                if (!(x[i] - x[i] == 0)) return i;
    }
    return -1;
}

int64_t fastnn_first_nonfinite(fastnn_dtype dt, const void *x, int64_t n) {
    if (!x || n <= 0) return -1;
    return dt == FASTNN_F64 ? first_nonfinite_f64(x, n) : first_nonfinite_f32(x, n);
}
