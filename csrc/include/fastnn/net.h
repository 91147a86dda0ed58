/* fastnn fused training executor: a whole mini-batch step — forward, loss, backward,
 * optimizer update — in one call, over a plan compiled from a Sequential model.
 *
 * The plan is a list of units. Unit i is
 *     z = h W^T + b      (W [out, in] and b [out] live in the flat parameter buffer)
 *     y = act(z)         (FASTNN_ACT_IDENTITY when the Linear has no activation)
 *     y = y * mask / (1 - drop)   (dropout in training, when drop > 0)
 * and its output y is the next unit's input h. The network's output is the last y.
 * Gradients are written (not accumulated) to the flat gradient buffer, like zero_grad()
 * followed by backward(). Everything is float32 or float64 as net->dt says.
 */
#ifndef FASTNN_NET_H
#define FASTNN_NET_H

#include "fastnn/fastnn.h"
#include "fastnn/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t in, out;      /* features */
    int64_t w, b;         /* element offsets of W and b in the parameter buffer; b < 0: no bias */
    fastnn_act act;       /* activation after the product */
    double p, p2;         /* its parameters (leaky slope; softplus beta, threshold) */
    double drop;          /* dropout probability in [0, 1) */
} fastnn_unit;

typedef enum {
    FASTNN_NET_CROSS_ENTROPY = 0,  /* targets: int64 labels; weight[out], label_smoothing */
    FASTNN_NET_MSE = 1,            /* targets: T [batch, out] */
    FASTNN_NET_L1 = 2,
    FASTNN_NET_HUBER = 3,          /* delta */
    FASTNN_NET_BCE_LOGITS = 4      /* targets: T [batch, out]; pos_weight[out] */
} fastnn_net_loss;

typedef enum {
    FASTNN_OPT_SGD = 0,      /* state: s1 = momentum buffer (if momentum != 0) */
    FASTNN_OPT_ADAM = 1,     /* state: s1 = exp_avg, s2 = exp_avg_sq, s3 = max_exp_avg_sq */
    FASTNN_OPT_RMSPROP = 2,  /* state: s1 = square_avg, s2 = momentum buffer, s3 = grad_avg */
    FASTNN_OPT_ADAGRAD = 3   /* state: s1 = state_sum */
} fastnn_opt_kind;

typedef struct {
    fastnn_opt_kind kind;
    double lr, momentum, dampening, weight_decay;   /* SGD, RMSprop (momentum), all (wd) */
    double beta1, beta2, eps;                       /* Adam; eps also RMSprop, Adagrad */
    double alpha, lr_decay;                         /* RMSprop alpha; Adagrad lr_decay */
    int nesterov, maximize, decoupled, amsgrad, centered;
    int64_t step;     /* updates done so far; each training step adds one */
    void *s1, *s2, *s3;
} fastnn_optim;

typedef struct {
    fastnn_dtype dt;
    int nunits;
    const fastnn_unit *units;
    int64_t nparams;
    void *params, *grads;           /* flat buffers of nparams elements */
    fastnn_net_loss loss;
    int mean;                       /* reduction: 1 mean, 0 sum */
    double delta, label_smoothing;  /* huber; cross-entropy */
    const void *loss_weight;        /* cross-entropy class weights or BCE pos_weight; may be NULL */
    fastnn_optim opt;
    int nonfinite_ok;               /* 1: a NaN/inf loss does not stop training (0: it does) */
    int64_t max_batch;              /* the arena holds batches up to this size */
    void *arena;                    /* fastnn_net_arena_bytes(net) bytes, 64-byte aligned */
    double l2;                      /* >= 0: adds l2 * W / batch rows to each weight gradient,
                                       biases untouched (scikit-learn's alpha); 0: off */
    int adam_eps_uncorrected;       /* 1: Adam adds eps to the uncorrected root of the second
                                       moment, as scikit-learn does (PyTorch: the corrected) */
    /* A layer plan (fastnn/plan.h) in place of the units: nops >= 1 with nunits == 0 (units
     * may be NULL). X rows are then the first op's input, C H W values (NCHW); the output is
     * the last op's. l2 must be 0; data-parallel training refuses a plan with a batch norm
     * (FASTNN_EINVAL). */
    int nops;
    const fastnn_op *ops;
    void *stats;                    /* running statistics (BatchNorm), nstats elements */
    int64_t nstats;
    int64_t row_bytes;              /* bytes per batch row of the ops' arena region */
    /* NULL, or (losses other than cross-entropy) the training metrics of the rows trained are
     * added here, each a sum over rows of a mean over the row's outputs y against targets t:
     * [0] |y - t| (mae), [1] (y - t)^2 (mse), [2] (y > 0) == (t > 0.5), a NaN y never
     * (binary accuracy of logits); y - t in the network's dtype, the sums in double. */
    double *metric_sums;
} fastnn_net;

/* Bytes of working memory (activations, gradients, the gathered batch) for max_batch rows. */
int64_t fastnn_net_arena_bytes(const fastnn_net *net);

/* Check the plan: sizes chain, offsets inside the parameter buffer (all size arithmetic
 * overflow-checked), the optimizer's and loss's scalars in range (lr, weight_decay, eps,
 * momentum, alpha, lr_decay finite and >= 0; Adam's betas in [0, 1); label_smoothing in
 * [0, 1]; Huber delta > 0), the state buffers given. */
fastnn_status fastnn_net_check(const fastnn_net *net);

/* Train on the mini-batches index[0:bs], index[bs:2bs], ... of index[0:n] (the last one may
 * be short): rows of X [*, in0] and targets Y (int64 labels [*] for cross-entropy, else
 * T [*, out]) are gathered by index (every index in [0, rows), checked first). One
 * optimizer step per batch. Dropout masks come from
 * a counter-based generator keyed by (seed, opt.step, element): the same for any thread count.
 * Adds to *loss_sum the sum over batches of (batch loss * batch rows), to *correct the rows
 * whose argmax matches the label (cross-entropy only). Returns FASTNN_ELABEL, before any
 * change, if a label of a batch is out of range (earlier batches stay applied), and
 * FASTNN_ENONFINITE when a batch's loss is NaN or infinite: that batch makes no update, so
 * opt.step counts the updates made and the parameters are those of the last finite step. */
/* Threads one training call uses for batches of batch_size rows: 1, or a team that runs all
 * of the call's steps in one parallel region (by the step's size, capped by
 * fastnn_set_num_threads). Every thread count gives bit-identical results. */
int fastnn_net_threads(const fastnn_net *net, int64_t batch_size);

fastnn_status fastnn_net_train(fastnn_net *net, const void *X, const void *Y, int64_t rows,
                               const int64_t *index, int64_t n, int64_t batch_size, uint64_t seed,
                               double *loss_sum, int64_t *correct);

/* Data-parallel training (fastnn.distributed). Every rank passes the same X, Y and index;
 * index[s : s + batch_size] is the global batch. Default mode (shards == 0): rank r computes
 * the gradient of rows [B r / size, B (r+1) / size) of each global batch of B rows. Exact mode
 * (shards > 0): the batch is cut into `shards` shards (shard j: rows [B j / K, B (j+1) / K)),
 * each shard's gradient is computed alone and the shards are summed over a fixed pairwise
 * tree (sum(lo, hi) = sum(lo, mid) + sum(mid, hi), mid = lo + (hi - lo) / 2); rank r computes
 * the subtree of shards [m r, m (r+1)), m = shards / size; with size a power of two these
 * blocks are nodes of the tree, so the result does not depend on size when reduce adds the
 * tree's top levels (fastnn.distributed: recursive doubling). In both
 * modes the loss is normalised by the whole global batch (the ranks' gradients add up to the
 * batch gradient). After each backward pass thread 0 calls reduce(ctx, grads, nparams, step)
 * (step: the update about to run, from 1), which must leave in grads the gradient of the
 * whole batch; then the optimizer update runs. Dropout masks are keyed by the row's place in
 * the global batch. *loss_sum and *correct get this rank's share (sum them over ranks).
 * Units and layer plans alike, but FASTNN_EINVAL for a plan with a batch norm (its batch
 * statistics would be those of a rank's rows, not of the global batch) and for l2 != 0. */
typedef fastnn_status (*fastnn_net_reduce_fn)(void *ctx, void *grads, int64_t n, int64_t step);

typedef struct {
    int rank, size;                /* this process among size ranks */
    int64_t shards;                /* 0: default mode; > 0: exact mode with this many shards */
    void *scratch;                 /* exact mode: fastnn_net_dist_scratch(net, d) elements */
    fastnn_net_reduce_fn reduce;   /* may be NULL with size 1 */
    void *ctx;
    void *reduced;                 /* NULL: reduce leaves the batch gradient in grads; else
                                    * it leaves it here (nparams elements, e.g. a buffer the
                                    * ranks share and sum into), where the update reads it */
} fastnn_net_dist;

/* Elements of scratch the exact mode needs (0 in the default mode). */
int64_t fastnn_net_dist_scratch(const fastnn_net *net, const fastnn_net_dist *d);

fastnn_status fastnn_net_train_dist(fastnn_net *net, const fastnn_net_dist *d, const void *X,
                                    const void *Y, int64_t rows, const int64_t *index,
                                    int64_t n, int64_t batch_size, uint64_t seed,
                                    double *loss_sum, int64_t *correct);

/* Inference: out [rows, out_last] = the network on X [rows, in0], no dropout, in batches of
 * at most max_batch rows. */
fastnn_status fastnn_net_forward(fastnn_net *net, void *out, const void *X, int64_t rows);

#ifdef __cplusplus
}
#endif
#endif
