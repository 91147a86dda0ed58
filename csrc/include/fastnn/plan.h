/* fastnn layer plan: one description of a Sequential model as a list of typed ops, read by
 * the fused training step (csrc/net.c, csrc/plan.c) and meant for every other consumer (the
 * C ABI, the ONNX exporter, the CUDA path). fastnn/plan.py builds it from a Sequential.
 *
 * Every op maps a per-sample input of shape in[3] to a per-sample output of shape out[3]:
 * (C, H, W) for images, (features, 1, 1) for vectors. Images are stored NCHW in the step's
 * arena, as at the Python boundary, so Flatten is free and each kernel reads the layout it
 * was written for (csrc/layers/: conv, pool, norm).
 *
 * Offsets:
 *  - w, b: element offsets of the weight and bias in the flat parameter buffer (and the same
 *    offsets in the gradient buffer); -1: none. Conv2d's weight is [c_out, c_in/groups, kh,
 *    kw], Linear's [out, in], BatchNorm's weight and bias [C].
 *  - rs: element offset of the running mean [C] in the running-statistics buffer; the running
 *    variance follows at rs + C. -1: no running statistics (batch statistics always).
 *  - y, aux: byte offsets per batch row into the plan region of the arena: the op's output for
 *    a batch of max_batch rows lives at plan_base + y * max_batch (-1: the output is the input
 *    itself, as for Flatten and an activation fused into the previous op's epilogue); aux
 *    (max pool: int64 argmax per output element; batch norm: saved mean and inverse standard
 *    deviation [2 C]) at plan_base + aux * max_batch. All regions lie inside row_bytes.
 */
#ifndef FASTNN_PLAN_H
#define FASTNN_PLAN_H

#include "fastnn/fastnn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    FASTNN_OP_LINEAR = 0,     /* y = x W^T + b, then act (act: epilogue, identity or relu) */
    FASTNN_OP_CONV2D = 1,     /* conv2d(x, W) + b, then act (identity or relu, in the epilogue) */
    FASTNN_OP_MAXPOOL2D = 2,  /* k, s, p; argmax kept in aux */
    FASTNN_OP_AVGPOOL2D = 3,  /* k, s, p, count_include_pad */
    FASTNN_OP_GLOBAL_AVGPOOL = 4,  /* AdaptiveAvgPool2d(1): (C, H, W) -> (C, 1, 1) */
    FASTNN_OP_BATCHNORM = 5,  /* per channel in[0] over the batch and in[1] * in[2] pixels,
                                 then act (identity or relu, in the same pass) */
    FASTNN_OP_ACT = 6,        /* act(x) elementwise; y == -1: fused into the previous op */
    FASTNN_OP_DROPOUT = 7,    /* drop */
    FASTNN_OP_FLATTEN = 8     /* (C, H, W) -> (C H W, 1, 1): the same memory (NCHW) */
} fastnn_op_kind;

typedef struct {
    fastnn_op_kind kind;
    int64_t in[3], out[3];          /* per-sample shapes (C, H, W) */
    int64_t w, b, rs;               /* parameter and running-statistics offsets (elements) */
    int64_t y, aux;                 /* arena offsets (bytes per batch row), see above */
    int64_t kh, kw, sh, sw, ph, pw; /* conv and pools: kernel, stride, top/left padding */
    int64_t dh, dw, groups;         /* conv: dilation, groups */
    int count_include_pad;          /* avg pool */
    fastnn_act act;                 /* ACT: its activation; LINEAR, CONV2D, BATCHNORM: the
                                       fused one (the next op, an aliased ReLU) */
    double p, p2;                   /* the activation's parameters */
    double drop;                    /* DROPOUT: probability in [0, 1) */
    double eps, momentum;           /* BATCHNORM */
} fastnn_op;

/* Elements of one sample's input or output of an op. */
static inline int64_t fastnn_op_size(const int64_t s[3]) { return s[0] * s[1] * s[2]; }

#ifdef __cplusplus
}
#endif
#endif
