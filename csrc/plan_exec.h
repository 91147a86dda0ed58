/* The layer plan's executor (csrc/plan.c), called by the fused step (csrc/net.c) when
 * net->nops > 0. Internal. */
#ifndef FASTNN_PLAN_EXEC_H
#define FASTNN_PLAN_EXEC_H
#include "fastnn/net.h"

/* FASTNN_OK when the ops chain and every offset lies inside its buffer (sizes checked for
 * overflow); FASTNN_EINVAL or FASTNN_ENULL otherwise. */
fastnn_status fastnn_plan_check(const fastnn_net *net);
/* The widest per-sample input or output of any op (the gradient buffers' width). */
int64_t fastnn_plan_widest(const fastnn_net *net);
/* Multiply-adds of one training step of B rows (forward, dW, dX but for the first layer). */
double fastnn_plan_work(const fastnn_net *net, int64_t B);
/* 1 when the step should run outside a team, each kernel forming its own: the convolution
 * runs on one thread inside a team (its whole-call buffers are per thread), so a team would
 * leave the other threads waiting through most of a CNN's step. */
int fastnn_plan_own_teams(const fastnn_net *net);
/* The last op's output for the arena's plan region `plan` and gathered input x. */
char *fastnn_plan_output(const fastnn_net *net, char *plan, const char *x);
/* Forward of B rows of x; train: batch statistics (running ones updated), dropout on. */
fastnn_status fastnn_plan_forward(const fastnn_net *net, char *plan, const char *x, int64_t B,
                                  int train, uint64_t key, int64_t row0);
/* Backward from d loss / d output in d[0]; writes the parameter gradients (not accumulated);
 * d[1] is the second gradient buffer. No input gradient is formed below the first op that
 * has parameters. */
fastnn_status fastnn_plan_backward(const fastnn_net *net, char *plan, const char *x,
                                   char *d0, char *d1, int64_t B, uint64_t key, int64_t row0);

/* From csrc/layers/norm.c: fastnn_batchnorm followed by ReLU in the same pass (the plan's
 * BatchNorm with a fused ReLU; the same bits as the two kernels one after the other). */
fastnn_status fastnn_batchnorm_relu(fastnn_dtype dt, int training, void *y, void *save_mean,
                                    void *save_invstd, void *running_mean, void *running_var,
                                    const void *x, const void *weight, const void *bias,
                                    int64_t n, int64_t c, int64_t hw, double momentum,
                                    double eps);

/* Its backward: dy is first multiplied by relu'(relu_y), relu_y the fused pass's output
 * (the same bits as relu_backward and then fastnn_batchnorm_backward). */
fastnn_status fastnn_batchnorm_relu_backward(fastnn_dtype dt, int training, void *dx,
                                             void *dweight, void *dbias, const void *dy,
                                             const void *x, const void *save_mean,
                                             const void *save_invstd, const void *weight,
                                             int64_t n, int64_t c, int64_t hw, double beta,
                                             const void *relu_y);

/* From csrc/layers/pool.c: fastnn_maxpool2d_backward without the range check of each
 * argmax (the plan's own forward wrote them). */
fastnn_status fastnn_maxpool2d_backward_plan(fastnn_dtype dt, void *dx, const void *dy,
                                             const int64_t *argmax, int64_t n, int64_t c,
                                             int64_t h, int64_t w, int64_t kh, int64_t kw,
                                             int64_t sh, int64_t sw, int64_t ph, int64_t pw);

/* From csrc/net.c: the counter-based dropout shared with the unit path. */
uint64_t fastnn_net_mix64(uint64_t x);
fastnn_status fastnn_net_dropout(fastnn_dtype dt, void *v, int64_t n, double p, uint64_t key,
                                 int64_t i0);
#endif
