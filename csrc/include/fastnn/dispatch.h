/* Kernel tables: what differs between instruction sets.
 *
 * A table starts from the generic entries and each instruction set overrides what it has
 * (BLIS style). Today the tables hold the GEMM micro-kernels and their block sizes; the
 * element-wise kernels are shared C compiled for the baseline ISA.
 *
 * Micro-kernel contract (T = float or double):
 *   a: packed MR x k panel of op(A), column by column: a[p*MR + i]
 *   b: packed k x NR panel of op(B), row by row:       b[p*NR + j]
 *   c: a full MR x NR tile with row stride ldc
 *   c[i,j] = alpha * sum_p a[p*MR+i] * b[p*NR+j] + beta * c[i,j]   (beta == 0: c not read)
 *   then, in registers, + bias[j] when bias is not NULL, and max(., 0) when relu
 *   (NaN and -0 pass through, as relu()). k >= 1. The panels are 64-byte aligned.
 */
#ifndef FASTNN_DISPATCH_H
#define FASTNN_DISPATCH_H

#include "fastnn/fastnn.h"

typedef void (*fastnn_sukr)(int64_t k, const float *a, const float *b, float *c, int64_t ldc,
                            float alpha, float beta, const float *bias, int relu);
typedef void (*fastnn_dukr)(int64_t k, const double *a, const double *b, double *c,
                            int64_t ldc, double alpha, double beta, const double *bias, int relu);

/* The same kernel on unpacked operands: A(i, p) = a[p*as + i] (rows contiguous),
 * B(p, j) = b[p*bs + j] (columns contiguous); no alignment. */
typedef void (*fastnn_sukrs)(int64_t k, const float *a, int64_t as, const float *b, int64_t bs,
                             float *c, int64_t ldc, float alpha, float beta, const float *bias,
                             int relu);
typedef void (*fastnn_dukrs)(int64_t k, const double *a, int64_t as, const double *b,
                             int64_t bs, double *c, int64_t ldc, double alpha, double beta,
                             const double *bias, int relu);

/* mr x nr: register tile; kc: depth of a packed panel (A micro-panel + B micro-panel in L1);
 * mc: rows of the packed A block (L2); nc: columns of the packed B panel (L3). */
/* Packing: panel `panel` of the A block at (i0, p0) of op(A) (MR x kc, zero-padded rows,
 * A(i, p) = a[i*rsa + p*csa]), or of the B panel at (p0, j0) (kc x NR, zero-padded
 * columns, B(p, j) = b[p*rsb + j*csb]); see csrc/kernels/pack.inc. */
typedef void (*fastnn_spack_a)(float *dst, const float *a, int64_t rsa, int64_t csa, int64_t i0,
                               int64_t mc, int64_t p0, int64_t kc, int64_t panel);
typedef void (*fastnn_spack_b)(float *dst, const float *b, int64_t rsb, int64_t csb, int64_t p0,
                               int64_t kc, int64_t j0, int64_t nc, int64_t panel);
typedef void (*fastnn_dpack_a)(double *dst, const double *a, int64_t rsa, int64_t csa,
                               int64_t i0, int64_t mc, int64_t p0, int64_t kc, int64_t panel);
typedef void (*fastnn_dpack_b)(double *dst, const double *b, int64_t rsb, int64_t csb,
                               int64_t p0, int64_t kc, int64_t j0, int64_t nc, int64_t panel);

/* Direct convolution (csrc/kernels/dconv.inc): ROWS output channels x width pixels of one
 * output row into tile[ROWS][width], stride and dilation 1, from a zero-padded input whose
 * rows are readable for width + kw - 1 elements and weights packed
 * [(c * kh + r) * kw + s][ROWS]. */
typedef void (*fastnn_sdconv)(int64_t cin, int64_t kh, int64_t kw, const float *x, int64_t xcs,
                              int64_t xrs, const float *wp, float *tile);
typedef void (*fastnn_ddconv)(int64_t cin, int64_t kh, int64_t kw, const double *x,
                              int64_t xcs, int64_t xrs, const double *wp, double *tile);

/* Direct weight gradient (csrc/kernels/dconvw.inc): one input channel and kernel row of dW
 * for `rows` output channels, each output column in its own lane, over nb images x oh
 * output rows added to the lanes (dy rows padded to the kernel's width, x rows readable for
 * width + kw - 1). */
typedef void (*fastnn_sdconvw)(int64_t nb, int64_t oh, const float *dy, int64_t dyb,
                               int64_t dyc, const float *x, int64_t xb, int64_t xr,
                               float *lanes);
typedef void (*fastnn_ddconvw)(int64_t nb, int64_t oh, const double *dy, int64_t dyb,
                               int64_t dyc, const double *x, int64_t xb, int64_t xr,
                               double *lanes);

/* ukr: the MR x NR micro-kernel; tails: the same on the first 4, 2 and 1 rows of a packed
 * MR-row panel (the last rows of a block, so a 10-row product does not compute 16);
 * ukrs, tails_s: the same kernels on unpacked operands (the few-row path). */
typedef struct {
    fastnn_sukr ukr, tails[3]; int mr, nr, mc, kc, nc; fastnn_spack_a pack_a; fastnn_spack_b pack_b;
    fastnn_sukrs ukrs, tails_s[3];
    /* direct convolution kernels by output width (NULL where the table has none), with
     * their output channels (rows) and widths in pixels; increasing widths */
    fastnn_sdconv dconv[4]; int dconv_rows[4], dconv_width[4];
    /* direct weight-gradient kernels: kernel width, output width and channels of each */
    fastnn_sdconvw dconvw[6]; int dconvw_kw[6], dconvw_width[6], dconvw_rows[6];
    /* ukr and tails reading a row-major A where it lies, A(i, p) = a[i*as + p], B packed (bs
     * unused): no A packing for x in x @ W.T or dY in dY @ W. NULL: A is packed. */
    fastnn_sukrs ukra, tails_a[3];
    /* a full MR x NR tile of C^T (row stride NR) into C with stride ldc, as the micro-kernel
     * would store it with its epilogue (bias along the tile's rows, ReLU or not); NULL:
     * element by element */
    void (*tstore)(const float *tile, float *c, int64_t ldc, float alpha, float beta,
                   const float *bias, int relu);
    /* bytes of L2 the CPU reports (set at load; 0: unknown), for the driver's prefetch */
    long l2;
} fastnn_sgemm_cfg;
typedef struct {
    fastnn_dukr ukr, tails[3]; int mr, nr, mc, kc, nc; fastnn_dpack_a pack_a; fastnn_dpack_b pack_b;
    fastnn_dukrs ukrs, tails_s[3];
    fastnn_ddconv dconv[4]; int dconv_rows[4], dconv_width[4];
    fastnn_ddconvw dconvw[6]; int dconvw_kw[6], dconvw_width[6], dconvw_rows[6];
    fastnn_dukrs ukra, tails_a[3];
    void (*tstore)(const double *tile, double *c, int64_t ldc, double alpha, double beta,
                   const double *bias, int relu);
    long l2;
} fastnn_dgemm_cfg;

typedef struct {
    const char *name;
    fastnn_sgemm_cfg s;
    fastnn_dgemm_cfg d;
} fastnn_kernel_table;

/* Defined in csrc/kernels/<isa>/. */
extern const fastnn_sgemm_cfg fastnn_sgemm_generic, fastnn_sgemm_avx2, fastnn_sgemm_avx512;
extern const fastnn_dgemm_cfg fastnn_dgemm_generic, fastnn_dgemm_avx2, fastnn_dgemm_avx512;

const fastnn_kernel_table *fastnn_table(void);   /* the table in use */

/* Threads for a parallel region doing `work` scalar operations (1 below a threshold). */
int fastnn_threads_for(double work);

/* What the GEMM driver applies to each finished tile of C (see fastnn_gemm_bias_act and
 * fastnn_gemm_act_backward). Strides map C(i, j) to bias[i*brs + j*bcs], aux[i*ars + j*acs]. */
typedef struct {
    int backward;              /* 0: c = act(c + bias); 1: c = c * act'(aux) */
    fastnn_act act;
    double p, p2;              /* activation parameters */
    const void *bias;          /* may be NULL */
    int64_t brs, bcs;
    const void *aux;           /* the activation's input, for backward */
    int64_t ars, acs;
    const struct fastnn_update *update;   /* not NULL: C is a weight gradient, updated in place */
} fastnn_epilogue;

/* One optimizer step (SGD or Adam) over flat buffers, applied by blocks: the fused training
 * step (net.c) has the GEMM that computes a weight gradient update each finished tile of it
 * while the tile is in cache. Element e of p (and the state buffers) is updated from g[e],
 * exactly as fastnn_sgd / fastnn_adam update it. */
typedef struct fastnn_update {
    fastnn_dtype dt;
    int adam;                  /* 0: SGD, 1: Adam */
    void *p, *s1, *s2, *s3;    /* parameters; momentum buffer, or exp_avg, exp_avg_sq, max */
    void *g;                   /* gradients */
    double lr, momentum, dampening, weight_decay;
    double beta1, beta2, eps, step_size, bc2_sqrt;   /* Adam at this step */
    int nesterov, maximize, first, decoupled, amsgrad;
    double l2;                 /* != 0: g += l2 * p first (net.c's weights-only L2 term) */
} fastnn_update;

/* g[0:n] += c * p[0:n] (c rounded to the dtype first): the L2 term of a weight gradient, in
 * the fused update and in net.c's unfused step alike. */
void fastnn_add_l2(fastnn_dtype dt, void *g, const void *p, int64_t n, double c);

/* Elements off + r*ld + [0, cols) for r in [0, rows), on the calling thread. */
void fastnn_update_block(const fastnn_update *u, int64_t off, int64_t ld, int64_t rows,
                         int64_t cols);

/* GEMM with the table in use; arguments as fastnn_gemm, ep may be NULL. Unchecked. */
fastnn_status fastnn_gemm_run(fastnn_dtype dt, int transa, int transb, int64_t m, int64_t n,
                              int64_t k, double alpha, const void *a, int64_t lda,
                              const void *b, int64_t ldb, double beta, void *c, int64_t ldc,
                              const fastnn_epilogue *ep);

/* C = op(A) op(B) (alpha 1, beta 0), C a weight gradient inside u->g: each finished tile of C
 * then gets the optimizer step u (fastnn_update_block). Checked as fastnn_gemm. */
fastnn_status fastnn_gemm_update(fastnn_dtype dt, int transa, int transb, int64_t m, int64_t n,
                                 int64_t k, const void *a, int64_t lda, const void *b,
                                 int64_t ldb, void *c, int64_t ldc, const fastnn_update *u);

#endif
