/* Argument checks shared by the pooling kernels and their references. Internal. */
#ifndef FASTNN_LAYERS_GEOM_H
#define FASTNN_LAYERS_GEOM_H
#include "fastnn/fastnn.h"

/* Declares planes, oh, ow from the pooling arguments in scope, or returns FASTNN_EINVAL. */
#define FASTNN_POOL_CHECK()                                                              \
    if (n < 0 || c < 0 || h < 1 || w < 1) return FASTNN_EINVAL;                          \
    int64_t oh = fastnn_pool_out_size(h, kh, sh, ph), ow = fastnn_pool_out_size(w, kw, sw, pw); \
    if (oh < 0 || ow < 0) return FASTNN_EINVAL;                                          \
    int64_t planes = n * c

/* Shapes and dtype of the batch-norm and layer-norm kernels. */
#define FASTNN_BN_CHECK()                                                                \
    if (n < 0 || c < 0 || hw < 0) return FASTNN_EINVAL;                                  \
    if (dt != FASTNN_F32 && dt != FASTNN_F64) return FASTNN_EINVAL;                      \
    FASTNN_CHECK_PTR(x, n * c * hw);                                                     \
    if (c == 0) return FASTNN_OK

#define FASTNN_LN_CHECK()                                                                \
    if (rows < 0 || d < 1) return FASTNN_EINVAL;                                         \
    if (dt != FASTNN_F32 && dt != FASTNN_F64) return FASTNN_EINVAL;                      \
    FASTNN_CHECK_PTR(x, rows * d);                                                       \
    if (rows == 0) return FASTNN_OK

#endif
