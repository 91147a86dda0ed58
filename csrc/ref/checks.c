/* Input checks that read a whole training set: one pass, no temporary. */
#include "common.h"

#define FASTNN_TEMPLATE "checks.inc"
#include "template.h"

int64_t fastnn_first_nonfinite(fastnn_dtype dt, const void *x, int64_t n) {
    if (!x || n <= 0) return -1;
    return dt == FASTNN_F64 ? first_nonfinite_f64(x, n) : first_nonfinite_f32(x, n);
}
