/* Input checks that read a whole training set: one pass, no temporary. */
#include "common.h"

#define FASTNN_TEMPLATE "checks.inc"
#include "template.h"

int64_t fastnn_first_nonfinite(fastnn_dtype dt, const void *x, int64_t n) {
    if (!x || n <= 0) return -1;
    return dt == FASTNN_F64 ? first_nonfinite_f64(x, n) : first_nonfinite_f32(x, n);
}

/* The same for float64 values about to be rounded to float32: the first that is not a finite
 * float32 once rounded (NaN, an infinity, or beyond FLT_MAX), in blocks as above. */
FASTNN_CLONES static int64_t first_nonfinite_as_f32(const double *x, int64_t n) {
    for (int64_t b = 0; b < n; b += 4096) {
        int64_t e = fastnn_min64(n, b + 4096);
        int bad = 0;
        for (int64_t i = b; i < e; i++) {
            float f = (float)x[i];
            bad |= !(f - f == 0);
        }
        if (bad)
            for (int64_t i = b; i < e; i++) {
                float f = (float)x[i];
                if (!(f - f == 0)) return i;
            }
    }
    return -1;
}

int64_t fastnn_first_nonfinite_as_f32(const double *x, int64_t n) {
    if (!x || n <= 0) return -1;
    return first_nonfinite_as_f32(x, n);
}
