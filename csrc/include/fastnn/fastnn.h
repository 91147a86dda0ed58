/* fastnn public C API.
 *
 * Conventions (see DESIGN.md section 4):
 *  - Every matrix is row-major. Sizes are int64_t and must be >= 0.
 *  - Every kernel takes a dtype (FASTNN_F32 or FASTNN_F64); pointers are to that type.
 *  - Outputs first, then inputs, then sizes. A kernel overwrites its outputs unless the
 *    comment says it accumulates (beta as in BLAS).
 *  - Kernels return a fastnn_status; they never print, exit or abort.
 *  - Work is split across threads over output elements only, and every reduction uses a
 *    fixed blocking, so results are bit-identical for any thread count.
 */
#ifndef FASTNN_H
#define FASTNN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "fastnn/status.h"   /* fastnn_status: FASTNN_OK = 0, every error non-zero */

typedef enum { FASTNN_F32 = 0, FASTNN_F64 = 1 } fastnn_dtype;

typedef enum {
    FASTNN_ACT_IDENTITY = 0,
    FASTNN_ACT_RELU = 1,
    FASTNN_ACT_LEAKY_RELU = 2, /* param = negative_slope */
    FASTNN_ACT_SIGMOID = 3,
    FASTNN_ACT_TANH = 4,
    FASTNN_ACT_GELU = 5,       /* x * Phi(x), Phi through erf */
    FASTNN_ACT_GELU_TANH = 6,  /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
    FASTNN_ACT_SILU = 7,
    FASTNN_ACT_SOFTPLUS = 8    /* param = beta, param2 = threshold: x where beta*x > threshold */
} fastnn_act;

typedef enum { FASTNN_LOSS_MSE = 0, FASTNN_LOSS_L1 = 1, FASTNN_LOSS_HUBER = 2 } fastnn_loss;

/* ---- library state ---------------------------------------------------------------- */
const char *fastnn_status_string(fastnn_status s);
int fastnn_openmp_enabled(void);
void fastnn_set_num_threads(int n);      /* n <= 0 resets to the OpenMP default */
int fastnn_get_num_threads(void);
const char *fastnn_arch(void);            /* name of the kernel table in use */
/* Kernel tables compiled in and supported by this CPU, best last, as "generic,avx2,avx512". */
const char *fastnn_available_archs(void);
fastnn_status fastnn_set_arch(const char *name);  /* "generic" | "avx2" | "avx512" */
/* GEMM blocking of the table in use: float32 mr, nr, mc, kc, nc, then the same for float64
 * (mc and kc fitted to the CPU's caches at load; see csrc/dispatch.c). */
void fastnn_gemm_blocking(int out[10]);

/* Flat index of the first NaN or infinity among x[0:n] (float32 or float64, contiguous), or -1
 * when all are finite (or n <= 0). One read of x, vectorized; fit checks its inputs with it. */
int64_t fastnn_first_nonfinite(fastnn_dtype dt, const void *x, int64_t n);
/* L1d and L2 sizes in bytes as the CPU reports them (0 when unknown). */
void fastnn_cache_sizes(long out[2]);

/* ---- GEMM --------------------------------------------------------------------------
 * C[m,n] = alpha * op(A)[m,k] @ op(B)[k,n] + beta * C[m,n]
 * op(A) = A (A is m x k, row stride lda >= k) or A^T (A is k x m, lda >= m) when transa.
 * op(B) = B (B is k x n, ldb >= n) or B^T (B is n x k, ldb >= k) when transb.
 * C is m x n with row stride ldc >= n. beta == 0 means C is not read (NaN in C is ignored).
 * C must not overlap A or B. */
fastnn_status fastnn_gemm(fastnn_dtype dt, int transa, int transb, int64_t m, int64_t n,
                          int64_t k, double alpha, const void *a, int64_t lda,
                          const void *b, int64_t ldb, double beta, void *c, int64_t ldc);

/* The same product computed by the naive reference kernel (the oracle and fallback). */
fastnn_status fastnn_gemm_ref(fastnn_dtype dt, int transa, int transb, int64_t m, int64_t n,
                              int64_t k, double alpha, const void *a, int64_t lda,
                              const void *b, int64_t ldb, double beta, void *c, int64_t ldc);

/* float32 GEMM in bfloat16: the same product with the elements of A and B rounded to
 * bfloat16 (round to nearest even) and the products summed in float32. Native with
 * AVX512-BF16 (vdpbf16ps) when fastnn_bf16_native() says so; otherwise emulated (rounded
 * float32 copies through the float GEMM: the same products, the sums may round differently). */
fastnn_status fastnn_gemm_bf16(int transa, int transb, int64_t m, int64_t n, int64_t k,
                               float alpha, const float *a, int64_t lda, const float *b,
                               int64_t ldb, float beta, float *c, int64_t ldc);
int fastnn_bf16_native(void);   /* 1: AVX512-BF16 CPU and the avx512 table in use */

/* GEMM with a fused epilogue, applied to each tile of C once its product is complete:
 * C = act(alpha op(A) op(B) + beta C + bias)   bias[n] broadcast over rows, may be NULL
 * (the forward of a Linear layer with its activation, in one pass over C). */
fastnn_status fastnn_gemm_bias_act(fastnn_dtype dt, int transa, int transb, int64_t m,
                                   int64_t n, int64_t k, double alpha, const void *a,
                                   int64_t lda, const void *b, int64_t ldb, double beta,
                                   void *c, int64_t ldc, const void *bias, fastnn_act act,
                                   double param, double param2);

/* C = (alpha op(A) op(B) + beta C) * act'(X), X[m, n] with row stride ldx: the gradient
 * with respect to an activation's input, given the gradient of its output as a product
 * (dZ W of the next layer) and the activation's input X. X must not overlap C. */
fastnn_status fastnn_gemm_act_backward(fastnn_dtype dt, int transa, int transb, int64_t m,
                                       int64_t n, int64_t k, double alpha, const void *a,
                                       int64_t lda, const void *b, int64_t ldb, double beta,
                                       void *c, int64_t ldc, const void *x, int64_t ldx,
                                       fastnn_act act, double param, double param2);

/* ---- activations (element-wise, n elements; y may be x) ----------------------------- */
/* y[i] = f(x[i]) */
fastnn_status fastnn_act_forward(fastnn_dtype dt, fastnn_act act, double param, double param2,
                                 void *y, const void *x, int64_t n);
/* dx[i] = dy[i] * f'(x[i]); x is the activation's input. dx may be dy. */
fastnn_status fastnn_act_backward(fastnn_dtype dt, fastnn_act act, double param, double param2,
                                  void *dx, const void *dy, const void *x, int64_t n);

/* ---- row-wise softmax over x[rows, cols] ------------------------------------------- */
/* y = softmax(x) or log_softmax(x) along each row; y may be x. */
fastnn_status fastnn_softmax(fastnn_dtype dt, int log, void *y, const void *x,
                             int64_t rows, int64_t cols);
/* softmax:     dx = y * (dy - sum_j dy*y)     (y = softmax output)
 * log_softmax: dx = dy - exp(y) * sum_j dy    (y = log_softmax output); dx may be dy. */
fastnn_status fastnn_softmax_backward(fastnn_dtype dt, int log, void *dx, const void *dy,
                                      const void *y, int64_t rows, int64_t cols);

/* ---- bias ---------------------------------------------------------------------------- */
/* y[r, c] = x[r, c] + b[c]; y may be x. */
fastnn_status fastnn_bias_add(fastnn_dtype dt, void *y, const void *x, const void *b,
                              int64_t rows, int64_t cols);
/* db[c] = sum_r dy[r, c] + beta * db[c]  (beta 0: overwrite, 1: accumulate). */
fastnn_status fastnn_bias_grad(fastnn_dtype dt, void *db, const void *dy, int64_t rows,
                               int64_t cols, double beta);

/* ---- losses ---------------------------------------------------------------------------
 * Each loss kernel writes, when the pointer is not NULL:
 *   *total        = sum of the per-item losses (double, fixed-blocking sum)
 *   loss[i]       = the per-item loss (element for mse/l1/huber/bce, row for cross-entropy)
 *   grad          = scale * d(total)/d(input), same shape as the input
 * so reduction "mean" is scale = 1/count and "sum" is scale = 1. */

/* Element-wise regression losses over n elements: mse (p-t)^2, l1 |p-t|,
 * huber 0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta). */
fastnn_status fastnn_regression_loss(fastnn_dtype dt, fastnn_loss kind, double delta,
                                     double *total, void *loss, void *grad, double scale,
                                     const void *pred, const void *target, int64_t n);

/* Binary cross-entropy on logits z[rows, cols] with targets t in [0, 1]:
 * l = (1 - t) z + (1 + (pw - 1) t) softplus(-z), pw = pos_weight[c] (NULL: 1). */
fastnn_status fastnn_bce_logits(fastnn_dtype dt, double *total, void *loss, void *grad,
                                double scale, const void *z, const void *t,
                                const void *pos_weight, int64_t rows, int64_t cols);

/* Softmax cross-entropy on logits z[rows, cols] with integer labels[rows] (int64):
 * l_r = (1-eps) w[y] (-log p_y) + (eps/cols) sum_c w[c] (-log p_c),  p = softmax(z_r),
 * w = weight[cols] (NULL: all 1), eps = label_smoothing in [0, 1].
 * *weight_sum (may be NULL) receives sum_r w[y_r], the divisor of PyTorch's "mean".
 * Returns FASTNN_ELABEL, writing nothing, when a label is outside [0, cols). */
fastnn_status fastnn_cross_entropy(fastnn_dtype dt, double *total, double *weight_sum,
                                   void *loss, void *grad, double scale, const void *z,
                                   const int64_t *labels, const void *weight,
                                   double label_smoothing, int64_t rows, int64_t cols);

/* ---- optimizer updates over one flat buffer of n parameters (PyTorch's formulas) ----
 * p is updated in place, g is read only, state buffers are updated in place. */

/* SGD: d = g + wd p; with momentum: buf = first ? d : mu buf + (1 - dampening) d,
 * d = nesterov ? d + mu buf : buf; p -= lr d (maximize: p += lr d). */
fastnn_status fastnn_sgd(fastnn_dtype dt, void *p, void *buf, const void *g, int64_t n,
                         double lr, double momentum, double dampening, double weight_decay,
                         int nesterov, int maximize, int first_step);

/* Adam / AdamW (decoupled != 0): step is the 1-based step count after this update.
 * AdamW: p *= 1 - lr wd; Adam: g += wd p. m += (1 - b1)(g - m); v = b2 v + (1 - b2) g^2;
 * amsgrad: vmax = max(vmax, v), v' = vmax; denom = sqrt(v') / sqrt(1 - b2^step) + eps;
 * p -= lr / (1 - b1^step) * m / denom. */
fastnn_status fastnn_adam(fastnn_dtype dt, void *p, void *m, void *v, void *vmax,
                          const void *g, int64_t n, double lr, double beta1, double beta2,
                          double eps, double weight_decay, int decoupled, int amsgrad,
                          int maximize, int64_t step);

/* RMSprop: g += wd p; sq = alpha sq + (1 - alpha) g^2; centered: ga += (1 - alpha)(g - ga),
 * avg = sqrt(sq - ga^2) + eps, else sqrt(sq) + eps; momentum > 0: buf = mu buf + g / avg,
 * p -= lr buf; else p -= lr g / avg. */
fastnn_status fastnn_rmsprop(fastnn_dtype dt, void *p, void *sq, void *buf, void *ga,
                             const void *g, int64_t n, double lr, double alpha, double eps,
                             double weight_decay, double momentum, int centered, int maximize);

/* Adagrad: g += wd p; clr = lr / (1 + (step - 1) lr_decay); sum += g^2;
 * p -= clr g / (sqrt(sum) + eps). step is the 1-based step count after this update. */
fastnn_status fastnn_adagrad(fastnn_dtype dt, void *p, void *sum, const void *g, int64_t n,
                             double lr, double lr_decay, double weight_decay, double eps,
                             int maximize, int64_t step);


/* ---- 2-D convolution (NCHW, PyTorch's conv2d) ---------------------------------------
 * x[n, c_in, h, w], weight[c_out, c_in/groups, kh, kw], y[n, c_out, oh, ow]:
 *   y[b, co, i, j] = bias[co] + sum_{ci, r, s} w[co, ci, r, s] x[b, g*c_in/groups + ci, ih, iw]
 *   ih = i*stride_h - pad_h + r*dilation_h, iw = j*stride_w - pad_w + s*dilation_w,
 *   g = co / (c_out/groups); x outside [0, h) x [0, w) reads as 0.
 * pad_h, pad_w are the top and left padding; oh, ow are given (the caller derives them, so
 * an asymmetric "same" padding is oh = h with the extra row at the bottom). */
typedef struct {
    int64_t n, c_in, h, w;          /* input */
    int64_t c_out, kh, kw;          /* weight */
    int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;
    int64_t oh, ow;                 /* output */
} fastnn_conv2d_geom;

/* y = act(conv2d(x, w) + bias); bias[c_out] may be NULL. y must not overlap x or w.
 * Implicit GEMM: the im2col gather happens in the packing, the GEMM micro-kernels do the
 * arithmetic; param/param2 as fastnn_act_forward. */
fastnn_status fastnn_conv2d(fastnn_dtype dt, void *y, const void *x, const void *w,
                            const void *bias, const fastnn_conv2d_geom *g, fastnn_act act,
                            double param, double param2);
/* dx = d(sum y*dy)/dx (overwrites dx[n, c_in, h, w]); dy[n, c_out, oh, ow]. */
fastnn_status fastnn_conv2d_backward_data(fastnn_dtype dt, void *dx, const void *dy,
                                          const void *w, const fastnn_conv2d_geom *g);
/* dw = sum over the batch of dy * x patches + beta dw; db[c_out] (may be NULL) =
 * sum_{b,i,j} dy + beta db. beta 0: overwrite, 1: accumulate. */
fastnn_status fastnn_conv2d_backward_weight(fastnn_dtype dt, void *dw, void *db,
                                            const void *dy, const void *x,
                                            const fastnn_conv2d_geom *g, double beta);
/* The naive reference kernels (loops in the order of the formula, sums in T). */
fastnn_status fastnn_conv2d_ref(fastnn_dtype dt, void *y, const void *x, const void *w,
                                const void *bias, const fastnn_conv2d_geom *g);
fastnn_status fastnn_conv2d_backward_data_ref(fastnn_dtype dt, void *dx, const void *dy,
                                              const void *w, const fastnn_conv2d_geom *g);
fastnn_status fastnn_conv2d_backward_weight_ref(fastnn_dtype dt, void *dw, void *db,
                                                const void *dy, const void *x,
                                                const fastnn_conv2d_geom *g, double beta);
/* FASTNN_OK when the geometry is valid (sizes >= 0, kernel/stride/dilation/groups >= 1,
 * groups dividing c_in and c_out, pads >= 0). */
fastnn_status fastnn_conv2d_check(const fastnn_conv2d_geom *g);

/* ---- pooling and normalization (csrc/layers/pool.c, norm.c; naive references with the
 * suffix _ref in csrc/ref/pool.c, norm.c) ----------------------------------------------
 * Images are NCHW, contiguous: x[n, c, h, w]. A pooling window of kh x kw moves by sh, sw
 * over the input padded by ph, pw on each side (0 <= ph <= kh / 2, 0 <= pw <= kw / 2, as
 * PyTorch); the output is y[n, c, oh, ow] with oh = (h + 2 ph - kh) / sh + 1 (floor) and
 * ow alike; h, w >= 1, h + 2 ph >= kh and w + 2 pw >= kw. Work is split over (n, c) planes (or rows for
 * layer norm); every reduction is summed in double in a fixed order, so the results are
 * bit-identical for any thread count. Outputs are overwritten, except the parameter
 * gradients of the norms, which take beta (0: overwrite, 1: accumulate) as fastnn_bias_grad. */

/* Output extent of a pooling window: (in + 2 pad - k) / stride + 1, or -1 when the
 * arguments are out of range (k, stride >= 1, 0 <= pad <= k / 2, in + 2 pad >= k). */
int64_t fastnn_pool_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad);

/* Max pool: y = the window maximum (padding counts as -inf); argmax[n, c, oh, ow] (int64,
 * may be NULL) = h_in * w + w_in of the first maximum in row-major window order (a NaN in
 * the window is the maximum, as PyTorch). */
fastnn_status fastnn_maxpool2d(fastnn_dtype dt, void *y, int64_t *argmax, const void *x,
                               int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh,
                               int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw);
/* dx[n, c, h, w] = sum of dy over the outputs whose argmax is that pixel (overwrites dx).
 * Returns FASTNN_EINVAL, writing nothing, when an index is outside [0, h w). */
fastnn_status fastnn_maxpool2d_backward(fastnn_dtype dt, void *dx, const void *dy,
                                        const int64_t *argmax, int64_t n, int64_t c,
                                        int64_t h, int64_t w, int64_t kh, int64_t kw,
                                        int64_t sh, int64_t sw, int64_t ph, int64_t pw);
/* Average pool: y = (sum of the window's input pixels) / divisor, divisor = kh kw when
 * count_include_pad, else the number of the window's pixels inside the image. */
fastnn_status fastnn_avgpool2d(fastnn_dtype dt, void *y, const void *x, int64_t n, int64_t c,
                               int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                               int64_t sw, int64_t ph, int64_t pw, int count_include_pad);
/* dx[n, c, h, w] = sum over the windows holding the pixel of dy / divisor (overwrites dx). */
fastnn_status fastnn_avgpool2d_backward(fastnn_dtype dt, void *dx, const void *dy, int64_t n,
                                        int64_t c, int64_t h, int64_t w, int64_t kh,
                                        int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                                        int64_t pw, int count_include_pad);
/* Global average pool: y[n, c] = mean of x[n, c, :] over its hw pixels (hw >= 1). */
fastnn_status fastnn_global_avgpool(fastnn_dtype dt, void *y, const void *x, int64_t n,
                                    int64_t c, int64_t hw);
/* dx[n, c, i] = dy[n, c] / hw. */
fastnn_status fastnn_global_avgpool_backward(fastnn_dtype dt, void *dx, const void *dy,
                                             int64_t n, int64_t c, int64_t hw);

/* Batch norm over x[n, c, hw] per channel c (BatchNorm1d: hw = 1 or the length,
 * BatchNorm2d: hw = h w). weight, bias [c] may be NULL (no affine: 1 and 0).
 * training != 0: mean = the batch mean over m = n hw values, var = mean((x - mean)^2)
 * (two passes), y = (x - mean) / sqrt(var + eps) * weight + bias; save_mean = mean,
 * save_invstd = 1 / sqrt(var + eps); when running_mean / running_var are not NULL they become
 * (1 - momentum) running + momentum batch, with the unbiased var * m / (m - 1) for
 * running_var. Needs m >= 2 (FASTNN_EINVAL otherwise, writing nothing).
 * training == 0: the running statistics (not NULL) are used and left unchanged; save_mean and
 * save_invstd receive running_mean and 1 / sqrt(running_var + eps). save_* may be NULL. */
fastnn_status fastnn_batchnorm(fastnn_dtype dt, int training, void *y, void *save_mean,
                               void *save_invstd, void *running_mean, void *running_var,
                               const void *x, const void *weight, const void *bias, int64_t n,
                               int64_t c, int64_t hw, double momentum, double eps);
/* Gradients of fastnn_batchnorm given its input x and its save_mean / save_invstd:
 * xhat = (x - mean) invstd, dbias = sum dy, dweight = sum dy xhat (per channel, beta as
 * fastnn_bias_grad; each may be NULL); training: dx = weight invstd (dy - dbias / m
 * - xhat dweight / m), the batch statistics' own gradient included; training == 0:
 * dx = weight invstd dy (fixed running statistics). dx may be NULL. */
fastnn_status fastnn_batchnorm_backward(fastnn_dtype dt, int training, void *dx,
                                        void *dweight, void *dbias, const void *dy,
                                        const void *x, const void *save_mean,
                                        const void *save_invstd, const void *weight,
                                        int64_t n, int64_t c, int64_t hw, double beta);

/* Layer norm over the last d values of each of the rows of x[rows, d]: mean, var =
 * mean((x - mean)^2) (two passes), y = (x - mean) rstd * weight + bias with
 * rstd = 1 / sqrt(var + eps); weight, bias [d] may be NULL; save_mean, save_rstd [rows] may
 * be NULL. d >= 1. */
fastnn_status fastnn_layernorm(fastnn_dtype dt, void *y, void *save_mean, void *save_rstd,
                               const void *x, const void *weight, const void *bias,
                               int64_t rows, int64_t d, double eps);
/* g = dy weight; dx = rstd (g - mean(g) - xhat mean(g xhat)) per row; dweight = sum over
 * rows of dy xhat, dbias = sum of dy (beta as fastnn_bias_grad; each may be NULL). */
fastnn_status fastnn_layernorm_backward(fastnn_dtype dt, void *dx, void *dweight, void *dbias,
                                        const void *dy, const void *x, const void *save_mean,
                                        const void *save_rstd, const void *weight,
                                        int64_t rows, int64_t d, double beta);

/* The naive references of the kernels above: same arguments and results (up to the
 * rounding of sums, which they add in the same order), one thread, written to be read. */
fastnn_status fastnn_maxpool2d_ref(fastnn_dtype dt, void *y, int64_t *argmax, const void *x,
                                   int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh,
                                   int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw);
fastnn_status fastnn_maxpool2d_backward_ref(fastnn_dtype dt, void *dx, const void *dy,
                                            const int64_t *argmax, int64_t n, int64_t c,
                                            int64_t h, int64_t w, int64_t kh, int64_t kw,
                                            int64_t sh, int64_t sw, int64_t ph, int64_t pw);
fastnn_status fastnn_avgpool2d_ref(fastnn_dtype dt, void *y, const void *x, int64_t n,
                                   int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,
                                   int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                   int count_include_pad);
fastnn_status fastnn_avgpool2d_backward_ref(fastnn_dtype dt, void *dx, const void *dy,
                                            int64_t n, int64_t c, int64_t h, int64_t w,
                                            int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                            int64_t ph, int64_t pw, int count_include_pad);
fastnn_status fastnn_global_avgpool_ref(fastnn_dtype dt, void *y, const void *x, int64_t n,
                                        int64_t c, int64_t hw);
fastnn_status fastnn_global_avgpool_backward_ref(fastnn_dtype dt, void *dx, const void *dy,
                                                 int64_t n, int64_t c, int64_t hw);
fastnn_status fastnn_batchnorm_ref(fastnn_dtype dt, int training, void *y, void *save_mean,
                                   void *save_invstd, void *running_mean, void *running_var,
                                   const void *x, const void *weight, const void *bias,
                                   int64_t n, int64_t c, int64_t hw, double momentum,
                                   double eps);
fastnn_status fastnn_batchnorm_backward_ref(fastnn_dtype dt, int training, void *dx,
                                            void *dweight, void *dbias, const void *dy,
                                            const void *x, const void *save_mean,
                                            const void *save_invstd, const void *weight,
                                            int64_t n, int64_t c, int64_t hw, double beta);
fastnn_status fastnn_layernorm_ref(fastnn_dtype dt, void *y, void *save_mean, void *save_rstd,
                                   const void *x, const void *weight, const void *bias,
                                   int64_t rows, int64_t d, double eps);
fastnn_status fastnn_layernorm_backward_ref(fastnn_dtype dt, void *dx, void *dweight,
                                            void *dbias, const void *dy, const void *x,
                                            const void *save_mean, const void *save_rstd,
                                            const void *weight, int64_t rows, int64_t d,
                                            double beta);

#ifdef __cplusplus
}
#endif
#endif
