# C contract of csrc/include/fastnn/fastnn.h, declared once for Cython.
from libc.stdint cimport int64_t, uint64_t

cdef extern from "fastnn/fastnn.h" nogil:
    ctypedef enum fastnn_status:
        FASTNN_OK, FASTNN_EINVAL, FASTNN_ENULL, FASTNN_ENOMEM, FASTNN_ELABEL, FASTNN_EARCH
        FASTNN_ENONFINITE
    ctypedef enum fastnn_dtype:
        FASTNN_F32, FASTNN_F64
    ctypedef enum fastnn_act:
        FASTNN_ACT_IDENTITY, FASTNN_ACT_RELU, FASTNN_ACT_LEAKY_RELU, FASTNN_ACT_SIGMOID,
        FASTNN_ACT_TANH, FASTNN_ACT_GELU, FASTNN_ACT_GELU_TANH, FASTNN_ACT_SILU,
        FASTNN_ACT_SOFTPLUS
    ctypedef enum fastnn_loss:
        FASTNN_LOSS_MSE, FASTNN_LOSS_L1, FASTNN_LOSS_HUBER

    const char *fastnn_status_string(fastnn_status s)
    int fastnn_openmp_enabled()
    void fastnn_set_num_threads(int n)
    int fastnn_get_num_threads()
    const char *fastnn_arch()
    const char *fastnn_available_archs()
    fastnn_status fastnn_set_arch(const char *name)

    fastnn_status fastnn_gemm(fastnn_dtype dt, int transa, int transb, int64_t m, int64_t n,
                              int64_t k, double alpha, const void *a, int64_t lda,
                              const void *b, int64_t ldb, double beta, void *c, int64_t ldc)
    fastnn_status fastnn_gemm_bf16(int transa, int transb, int64_t m, int64_t n, int64_t k,
                                   float alpha, const float *a, int64_t lda, const float *b,
                                   int64_t ldb, float beta, float *c, int64_t ldc)
    int fastnn_bf16_native()
    void fastnn_gemm_blocking(int *out)
    int64_t fastnn_first_nonfinite(fastnn_dtype dt, const void *x, int64_t n) nogil
    void fastnn_cache_sizes(long *out)
    fastnn_status fastnn_gemm_ref(fastnn_dtype dt, int transa, int transb, int64_t m,
                                  int64_t n, int64_t k, double alpha, const void *a,
                                  int64_t lda, const void *b, int64_t ldb, double beta,
                                  void *c, int64_t ldc)
    fastnn_status fastnn_gemm_bias_act(fastnn_dtype dt, int transa, int transb, int64_t m,
                                       int64_t n, int64_t k, double alpha, const void *a,
                                       int64_t lda, const void *b, int64_t ldb, double beta,
                                       void *c, int64_t ldc, const void *bias, fastnn_act act,
                                       double param, double param2)
    fastnn_status fastnn_gemm_act_backward(fastnn_dtype dt, int transa, int transb, int64_t m,
                                           int64_t n, int64_t k, double alpha, const void *a,
                                           int64_t lda, const void *b, int64_t ldb, double beta,
                                           void *c, int64_t ldc, const void *x, int64_t ldx,
                                           fastnn_act act, double param, double param2)
    fastnn_status fastnn_act_forward(fastnn_dtype dt, fastnn_act act, double param,
                                     double param2, void *y, const void *x, int64_t n)
    fastnn_status fastnn_act_backward(fastnn_dtype dt, fastnn_act act, double param,
                                      double param2, void *dx, const void *dy, const void *x,
                                      int64_t n)
    fastnn_status fastnn_softmax(fastnn_dtype dt, int log, void *y, const void *x,
                                 int64_t rows, int64_t cols)
    fastnn_status fastnn_softmax_backward(fastnn_dtype dt, int log, void *dx, const void *dy,
                                          const void *y, int64_t rows, int64_t cols)
    fastnn_status fastnn_bias_add(fastnn_dtype dt, void *y, const void *x, const void *b,
                                  int64_t rows, int64_t cols)
    fastnn_status fastnn_bias_grad(fastnn_dtype dt, void *db, const void *dy, int64_t rows,
                                   int64_t cols, double beta)
    fastnn_status fastnn_regression_loss(fastnn_dtype dt, fastnn_loss kind, double delta,
                                         double *total, void *loss, void *grad, double scale,
                                         const void *pred, const void *target, int64_t n)
    fastnn_status fastnn_bce_logits(fastnn_dtype dt, double *total, void *loss, void *grad,
                                    double scale, const void *z, const void *t,
                                    const void *pos_weight, int64_t rows, int64_t cols)
    fastnn_status fastnn_cross_entropy(fastnn_dtype dt, double *total, double *weight_sum,
                                       void *loss, void *grad, double scale, const void *z,
                                       const int64_t *labels, const void *weight,
                                       double label_smoothing, int64_t rows, int64_t cols)
    fastnn_status fastnn_sgd(fastnn_dtype dt, void *p, void *buf, const void *g, int64_t n,
                             double lr, double momentum, double dampening, double weight_decay,
                             int nesterov, int maximize, int first_step)
    fastnn_status fastnn_adam(fastnn_dtype dt, void *p, void *m, void *v, void *vmax,
                              const void *g, int64_t n, double lr, double beta1, double beta2,
                              double eps, double weight_decay, int decoupled, int amsgrad,
                              int maximize, int64_t step)
    fastnn_status fastnn_rmsprop(fastnn_dtype dt, void *p, void *sq, void *buf, void *ga,
                                 const void *g, int64_t n, double lr, double alpha, double eps,
                                 double weight_decay, double momentum, int centered,
                                 int maximize)
    fastnn_status fastnn_adagrad(fastnn_dtype dt, void *p, void *sum, const void *g, int64_t n,
                                 double lr, double lr_decay, double weight_decay, double eps,
                                 int maximize, int64_t step)

    # pooling and normalization (csrc/layers/pool.c, norm.c; references csrc/ref/pool.c, norm.c)
    int64_t fastnn_pool_out_size(int64_t inp, int64_t k, int64_t stride, int64_t pad)
    fastnn_status fastnn_maxpool2d(fastnn_dtype dt, void *y, int64_t *argmax, const void *x,
                                   int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh,
                                   int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw)
    fastnn_status fastnn_maxpool2d_backward(fastnn_dtype dt, void *dx, const void *dy,
                                            const int64_t *argmax, int64_t n, int64_t c,
                                            int64_t h, int64_t w, int64_t kh, int64_t kw,
                                            int64_t sh, int64_t sw, int64_t ph, int64_t pw)
    fastnn_status fastnn_avgpool2d(fastnn_dtype dt, void *y, const void *x, int64_t n,
                                   int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,
                                   int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                   int count_include_pad)
    fastnn_status fastnn_avgpool2d_backward(fastnn_dtype dt, void *dx, const void *dy,
                                            int64_t n, int64_t c, int64_t h, int64_t w,
                                            int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                            int64_t ph, int64_t pw, int count_include_pad)
    fastnn_status fastnn_global_avgpool(fastnn_dtype dt, void *y, const void *x, int64_t n,
                                        int64_t c, int64_t hw)
    fastnn_status fastnn_global_avgpool_backward(fastnn_dtype dt, void *dx, const void *dy,
                                                 int64_t n, int64_t c, int64_t hw)
    fastnn_status fastnn_batchnorm(fastnn_dtype dt, int training, void *y, void *save_mean,
                                   void *save_invstd, void *running_mean, void *running_var,
                                   const void *x, const void *weight, const void *bias,
                                   int64_t n, int64_t c, int64_t hw, double momentum,
                                   double eps)
    fastnn_status fastnn_batchnorm_backward(fastnn_dtype dt, int training, void *dx,
                                            void *dweight, void *dbias, const void *dy,
                                            const void *x, const void *save_mean,
                                            const void *save_invstd, const void *weight,
                                            int64_t n, int64_t c, int64_t hw, double beta)
    fastnn_status fastnn_layernorm(fastnn_dtype dt, void *y, void *save_mean, void *save_rstd,
                                   const void *x, const void *weight, const void *bias,
                                   int64_t rows, int64_t d, double eps)
    fastnn_status fastnn_layernorm_backward(fastnn_dtype dt, void *dx, void *dweight,
                                            void *dbias, const void *dy, const void *x,
                                            const void *save_mean, const void *save_rstd,
                                            const void *weight, int64_t rows, int64_t d,
                                            double beta)
    fastnn_status fastnn_maxpool2d_ref(fastnn_dtype dt, void *y, int64_t *argmax,
                                       const void *x, int64_t n, int64_t c, int64_t h,
                                       int64_t w, int64_t kh, int64_t kw, int64_t sh,
                                       int64_t sw, int64_t ph, int64_t pw)
    fastnn_status fastnn_maxpool2d_backward_ref(fastnn_dtype dt, void *dx, const void *dy,
                                                const int64_t *argmax, int64_t n, int64_t c,
                                                int64_t h, int64_t w, int64_t kh, int64_t kw,
                                                int64_t sh, int64_t sw, int64_t ph, int64_t pw)
    fastnn_status fastnn_avgpool2d_ref(fastnn_dtype dt, void *y, const void *x, int64_t n,
                                       int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw,
                                       int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                       int count_include_pad)
    fastnn_status fastnn_avgpool2d_backward_ref(fastnn_dtype dt, void *dx, const void *dy,
                                                int64_t n, int64_t c, int64_t h, int64_t w,
                                                int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                                                int64_t ph, int64_t pw, int count_include_pad)
    fastnn_status fastnn_global_avgpool_ref(fastnn_dtype dt, void *y, const void *x,
                                            int64_t n, int64_t c, int64_t hw)
    fastnn_status fastnn_global_avgpool_backward_ref(fastnn_dtype dt, void *dx,
                                                     const void *dy, int64_t n, int64_t c,
                                                     int64_t hw)
    fastnn_status fastnn_batchnorm_ref(fastnn_dtype dt, int training, void *y, void *save_mean,
                                       void *save_invstd, void *running_mean,
                                       void *running_var, const void *x, const void *weight,
                                       const void *bias, int64_t n, int64_t c, int64_t hw,
                                       double momentum, double eps)
    fastnn_status fastnn_batchnorm_backward_ref(fastnn_dtype dt, int training, void *dx,
                                                void *dweight, void *dbias, const void *dy,
                                                const void *x, const void *save_mean,
                                                const void *save_invstd, const void *weight,
                                                int64_t n, int64_t c, int64_t hw, double beta)
    fastnn_status fastnn_layernorm_ref(fastnn_dtype dt, void *y, void *save_mean,
                                       void *save_rstd, const void *x, const void *weight,
                                       const void *bias, int64_t rows, int64_t d, double eps)
    fastnn_status fastnn_layernorm_backward_ref(fastnn_dtype dt, void *dx, void *dweight,
                                                void *dbias, const void *dy, const void *x,
                                                const void *save_mean, const void *save_rstd,
                                                const void *weight, int64_t rows, int64_t d,
                                                double beta)

cdef extern from "fastnn/plan.h" nogil:
    ctypedef enum fastnn_op_kind:
        FASTNN_OP_LINEAR, FASTNN_OP_CONV2D, FASTNN_OP_MAXPOOL2D, FASTNN_OP_AVGPOOL2D,
        FASTNN_OP_GLOBAL_AVGPOOL, FASTNN_OP_BATCHNORM, FASTNN_OP_ACT, FASTNN_OP_DROPOUT,
        FASTNN_OP_FLATTEN
    ctypedef struct fastnn_op:
        fastnn_op_kind kind
        int64_t in_ "in"[3]
        int64_t out[3]
        int64_t w, b, rs, y, aux, kh, kw, sh, sw, ph, pw, dh, dw, groups
        int count_include_pad
        fastnn_act act
        double p, p2, drop, eps, momentum

cdef extern from "fastnn/net.h" nogil:
    ctypedef struct fastnn_unit:
        int64_t in_ "in"
        int64_t out, w, b
        fastnn_act act
        double p, p2, drop
    ctypedef enum fastnn_net_loss:
        FASTNN_NET_CROSS_ENTROPY, FASTNN_NET_MSE, FASTNN_NET_L1, FASTNN_NET_HUBER,
        FASTNN_NET_BCE_LOGITS
    ctypedef enum fastnn_opt_kind:
        FASTNN_OPT_SGD, FASTNN_OPT_ADAM, FASTNN_OPT_RMSPROP, FASTNN_OPT_ADAGRAD
    ctypedef struct fastnn_optim:
        fastnn_opt_kind kind
        double lr, momentum, dampening, weight_decay, beta1, beta2, eps, alpha, lr_decay
        int nesterov, maximize, decoupled, amsgrad, centered
        int64_t step
        void *s1
        void *s2
        void *s3
    ctypedef struct fastnn_net:
        fastnn_dtype dt
        int nunits
        const fastnn_unit *units
        int64_t nparams
        void *params
        void *grads
        fastnn_net_loss loss
        int mean
        double delta, label_smoothing
        const void *loss_weight
        fastnn_optim opt
        int nonfinite_ok
        int64_t max_batch
        void *arena
        double l2
        int adam_eps_uncorrected
        int nops
        const fastnn_op *ops
        void *stats
        int64_t nstats
        int64_t row_bytes
        double *metric_sums
    int64_t fastnn_net_arena_bytes(const fastnn_net *net)
    fastnn_status fastnn_net_check(const fastnn_net *net)
    int fastnn_net_threads(const fastnn_net *net, int64_t batch_size)
    fastnn_status fastnn_net_train(fastnn_net *net, const void *X, const void *Y, int64_t rows,
                                   const int64_t *index, int64_t n, int64_t batch_size,
                                   uint64_t seed, double *loss_sum, int64_t *correct)
    fastnn_status fastnn_net_forward(fastnn_net *net, void *out, const void *X, int64_t rows)
    ctypedef fastnn_status (*fastnn_net_reduce_fn)(void *ctx, void *grads, int64_t n,
                                                   int64_t step) noexcept nogil
    ctypedef struct fastnn_net_dist:
        int rank, size
        int64_t shards
        void *scratch
        fastnn_net_reduce_fn reduce
        void *ctx
        void *reduced
    int64_t fastnn_net_dist_scratch(const fastnn_net *net, const fastnn_net_dist *d)
    fastnn_status fastnn_net_train_dist(fastnn_net *net, const fastnn_net_dist *d,
                                        const void *X, const void *Y, int64_t rows,
                                        const int64_t *index, int64_t n, int64_t batch_size,
                                        uint64_t seed, double *loss_sum, int64_t *correct)

# ---- 2-D convolution (csrc/include/fastnn/fastnn.h) ----
cdef extern from "fastnn/fastnn.h" nogil:
    ctypedef struct fastnn_conv2d_geom:
        int64_t n, c_in, h, w, c_out, kh, kw
        int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, oh, ow
    fastnn_status fastnn_conv2d(fastnn_dtype dt, void *y, const void *x, const void *w,
                                const void *bias, const fastnn_conv2d_geom *g, fastnn_act act,
                                double param, double param2)
    fastnn_status fastnn_conv2d_backward_data(fastnn_dtype dt, void *dx, const void *dy,
                                              const void *w, const fastnn_conv2d_geom *g)
    fastnn_status fastnn_conv2d_backward_weight(fastnn_dtype dt, void *dw, void *db,
                                                const void *dy, const void *x,
                                                const fastnn_conv2d_geom *g, double beta)
    fastnn_status fastnn_conv2d_ref(fastnn_dtype dt, void *y, const void *x, const void *w,
                                    const void *bias, const fastnn_conv2d_geom *g)
    fastnn_status fastnn_conv2d_backward_data_ref(fastnn_dtype dt, void *dx, const void *dy,
                                                  const void *w, const fastnn_conv2d_geom *g)
    fastnn_status fastnn_conv2d_backward_weight_ref(fastnn_dtype dt, void *dw, void *db,
                                                    const void *dy, const void *x,
                                                    const fastnn_conv2d_geom *g, double beta)
