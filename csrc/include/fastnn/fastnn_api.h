/* fastnn stable C ABI: load, save, predict and train fastnn models from C, C++, Rust, Go...
 *
 *     #include <fastnn/fastnn_api.h>
 *     cc prog.c $(python -m fastnn.config --cflags --libs)      (or pkg-config / find_package)
 *
 * Rules
 *  - Every function that can fail returns a fastnn_status: FASTNN_OK (0) on success, a
 *    non-zero code otherwise, and then fastnn_last_error() returns a message naming the
 *    argument and the problem. The message is thread-local: it belongs to the calling thread
 *    and stays valid until that thread's next fastnn call.
 *  - Handles are opaque. No struct layout is part of the ABI; the API only grows (new
 *    functions, new status codes, new option keys). FASTNN_API_VERSION counts the additions.
 *  - Arrays are caller-owned, row-major float32 (labels int64). Nothing is retained after a
 *    call returns.
 *  - Threads: the library has no global state but the thread count
 *    (fastnn_set_num_threads). A model that no trainer is changing may run predict from
 *    several threads at once (predict takes a const model and uses its own working memory).
 *    A trainer, and the model it trains, belong to one thread at a time: do not predict with
 *    a model while a trainer of it runs an epoch in another thread.
 *  - Results are bit-identical for any thread count, and equal to Python's fastnn.fit /
 *    model.predict for the same weights, batch order and dropout key (the same C code runs).
 */
#ifndef FASTNN_API_H
#define FASTNN_API_H

#include <stdint.h>
#include "fastnn/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1: the first release of this header. Incremented whenever something is added. */
#define FASTNN_API_VERSION 1

#if defined(_WIN32)
#define FASTNN_API
#else
#define FASTNN_API __attribute__((visibility("default")))
#endif

typedef struct fastnn_model fastnn_model;       /* a Sequential: weights + architecture */
typedef struct fastnn_trainer fastnn_trainer;   /* loss, optimizer state, batch size, RNG */

/* ---- library ---------------------------------------------------------------------------- */
FASTNN_API const char *fastnn_version(void);       /* the package version, e.g. "0.1.0" */
FASTNN_API int fastnn_api_version(void);           /* FASTNN_API_VERSION of the library */
FASTNN_API const char *fastnn_last_error(void);    /* this thread's last error ("" if none) */
FASTNN_API void fastnn_set_num_threads(int n);     /* threads per call; n <= 0: the default */
FASTNN_API int fastnn_get_num_threads(void);

/* ---- models ----------------------------------------------------------------------------- */
/* Read a .safetensors file written by fastnn.save (or fastnn_model_save; a checkpoint's
 * model too). The CRC-32 checksums of fastnn's version-2 files (metadata and every tensor)
 * are verified. Errors: FASTNN_ENULL, FASTNN_EIO (missing, unreadable, a directory),
 * FASTNN_EFORMAT (corrupt, truncated, a checksum mismatch, not fastnn's),
 * FASTNN_EUNSUPPORTED (a layer or dtype the C ABI lacks; a convolutional network whose file
 * does not record its input shape: the metadata key "input_shape", which fastnn.save writes
 * after fit or predict, or given as fastnn.save(model, path, input_shape=(C, H, W))). */
FASTNN_API fastnn_status fastnn_model_load(const char *path, fastnn_model **out);

/* A new model from the architecture JSON that fastnn.save stores in the file's metadata
 * ("architecture"), e.g.
 *   {"class": "Sequential", "config": {}, "layers": [
 *     {"class": "Linear", "config": {"in_features": 784, "out_features": 256, "bias": true}},
 *     {"class": "ReLU", "config": {}}, {"class": "Dropout", "config": {"p": 0.1}},
 *     {"class": "Linear", "config": {"in_features": 256, "out_features": 10}}]}
 * Weights are drawn like PyTorch's defaults (kaiming-uniform with a = sqrt(5): U(-1/sqrt(in),
 * 1/sqrt(in)) for weights and biases) from a generator seeded by seed; the numbers differ
 * from Python's initialiser (load a Python-saved file to start from the same weights).
 * Conv2d weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels / groups * kh * kw;
 * BatchNorm: weight 1, bias 0, running mean 0, running variance 1.
 * Layers: Flatten, Linear, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, Dropout, Conv2d,
 * MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), BatchNorm1d, BatchNorm2d (float32; BatchNorm
 * with a numeric momentum), with PyTorch's arguments as fastnn's get_config writes them.
 * A model with Conv2d, a pool or BatchNorm runs on the layer plan; it needs the per-sample
 * input shape unless its first sized layer is a Linear or BatchNorm1d: a top-level key
 * "input_shape": [C, H, W] (or [features]) in the JSON. Inputs x are then n x (C * H * W)
 * values, each row one NCHW sample (C-order, as a NumPy (n, C, H, W) array). */
FASTNN_API fastnn_status fastnn_model_create(const char *architecture_json, uint64_t seed,
                                             fastnn_model **out);

FASTNN_API int64_t fastnn_model_input_size(const fastnn_model *model);  /* -1 if NULL */
FASTNN_API int64_t fastnn_model_output_size(const fastnn_model *model); /* -1 if NULL */
FASTNN_API int64_t fastnn_model_num_parameters(const fastnn_model *model); /* -1 if NULL */

/* out [n, output_size] = model(x [n, input_size]) in evaluation mode (no dropout; BatchNorm
 * with its running statistics). n >= 1;
 * x and out must not overlap. Safe to call from several threads on one model. */
FASTNN_API fastnn_status fastnn_model_predict(const fastnn_model *model, const float *x,
                                              int64_t n, float *out);

/* Write the model to path as fastnn.save does (safetensors, architecture and CRC-32
 * checksums in the metadata: file version 2):
 * a temporary file in the same folder, fsync, then rename, so a failure leaves any previous
 * file intact. fastnn.load reads the result. */
FASTNN_API fastnn_status fastnn_model_save(const fastnn_model *model, const char *path);

/* The architecture JSON (owned by the model, valid until fastnn_model_free). */
FASTNN_API const char *fastnn_model_architecture(const fastnn_model *model);

FASTNN_API void fastnn_model_free(fastnn_model *model);   /* NULL is allowed */

/* ---- training --------------------------------------------------------------------------- */
/* A trainer of model (which it updates in place; the model must outlive the trainer).
 * loss: "cross_entropy" (y: int64 labels [n]), "mse", "l1", "huber", "bce_with_logits"
 *       (y: float32 targets [n, output_size]).
 * optimizer: "sgd", "adam", "adamw", "rmsprop", "adagrad".
 * options: NULL or a JSON object of hyper-parameters with PyTorch's names and defaults:
 *   lr, momentum, dampening, nesterov, weight_decay, betas ([b1, b2]), eps, amsgrad, alpha,
 *   centered, lr_decay, initial_accumulator_value, maximize; and for the loss: reduction
 *   ("mean"|"sum"), label_smoothing, delta. An unknown key is an error (FASTNN_EINVAL).
 * batch_size >= 1; seed keys the trainer's own shuffling and dropout (fastnn_trainer_epoch).
 * BatchNorm trains on batch statistics and updates the model's running statistics (and
 * num_batches_tracked), as Python's fit. */
FASTNN_API fastnn_status fastnn_trainer_create(fastnn_model *model, const char *loss,
                                               const char *optimizer, const char *options,
                                               int64_t batch_size, uint64_t seed,
                                               fastnn_trainer **out);

/* One epoch over x [n, input_size] and y (see fastnn_trainer_create), in mini-batches of
 * batch_size rows in an order shuffled by the trainer's generator (seed, epoch number); one
 * optimizer step per batch. *loss (may be NULL) gets the mean training loss over the
 * epoch's batches (computed before each update); *accuracy (may be NULL) the fraction of
 * rows whose argmax matches the label (cross-entropy; NaN for other losses).
 * FASTNN_ENONFINITE: a batch's loss was NaN or infinite; training stopped before its update. */
FASTNN_API fastnn_status fastnn_trainer_epoch(fastnn_trainer *trainer, const float *x,
                                              const void *y, int64_t n, double *loss,
                                              double *accuracy);

/* The same with the batch order and the dropout key given by the caller: order [n] is a
 * permutation (or any list) of row indices in [0, n), NULL for 0..n-1. Python's fastnn.fit
 * with seed s runs, in epoch e, order = np.random.default_rng(
 * np.random.SeedSequence([s, e]).spawn(2)[0]).permutation(n) and dropout_key =
 * np.random.SeedSequence([s, e, 1]).generate_state(1, np.uint64)[0]: passing them gives
 * Python's weights bit for bit. */
FASTNN_API fastnn_status fastnn_trainer_epoch_ordered(fastnn_trainer *trainer, const float *x,
                                                      const void *y, int64_t n,
                                                      const int64_t *order, uint64_t dropout_key,
                                                      double *loss, double *accuracy);

/* Loss and accuracy (NaN for losses other than cross-entropy) of the model on (x, y), in
 * evaluation mode, as fastnn.evaluate computes them. */
FASTNN_API fastnn_status fastnn_trainer_evaluate(fastnn_trainer *trainer, const float *x,
                                                 const void *y, int64_t n, double *loss,
                                                 double *accuracy);

FASTNN_API fastnn_status fastnn_trainer_set_lr(fastnn_trainer *trainer, double lr);
FASTNN_API int64_t fastnn_trainer_steps(const fastnn_trainer *trainer);  /* updates so far */
FASTNN_API void fastnn_trainer_free(fastnn_trainer *trainer);  /* NULL is allowed */

#ifdef __cplusplus
}
#endif

/* What must not move: the status values are part of the ABI. */
#ifdef __cplusplus
static_assert(FASTNN_OK == 0 && FASTNN_EINVAL == 1 && FASTNN_ENULL == 2 && FASTNN_ENOMEM == 3,
              "fastnn status values are ABI");
static_assert(FASTNN_EIO == 7 && FASTNN_EFORMAT == 8 && FASTNN_EUNSUPPORTED == 9,
              "fastnn status values are ABI");
#else
_Static_assert(FASTNN_OK == 0 && FASTNN_EINVAL == 1 && FASTNN_ENULL == 2 && FASTNN_ENOMEM == 3,
               "fastnn status values are ABI");
_Static_assert(FASTNN_EIO == 7 && FASTNN_EFORMAT == 8 && FASTNN_EUNSUPPORTED == 9,
               "fastnn status values are ABI");
#endif

#endif
