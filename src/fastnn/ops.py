"""Every fastnn kernel on numpy arrays.

Arrays are float32 or float64 (one dtype per call), in native byte order and aligned to
their item size: anything else (float16, a byte-swapped '>f4' array, a view at an odd byte
offset) raises TypeError naming the argument. Inputs that are not C-contiguous are
copied; ``out`` is never copied: it must have the exact dtype and shape, be writable and
C-contiguous, and must not overlap an input, except that element-wise kernels accept
``out`` being their first input (in place). ``matmul`` reads row-major arrays, views of their
rows and transposes (``x.T``) without copying. Errors raise TypeError/ValueError naming the
argument, what was expected and what came.

Backward kernels take the forward input ``x`` (softmax/log_softmax: the forward output
``y``). Loss kernels follow torch.nn.functional: ``reduction`` is 'mean', 'sum' or 'none';
``*_backward`` returns the gradient of the reduced loss with respect to the first argument
(with 'none' it needs ``grad_output``, the gradient of each item's loss). Optimizer steps
update ``param`` and their state buffers in place with PyTorch's formulas.
"""
from ._kernels import (
    adagrad_step,
    adam_step,
    adamw_step,
    bf16_native,
    bias_add,
    bias_grad,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_backward,
    conv2d,
    conv2d_backward,
    conv2d_backward_reference,
    conv2d_output_shape,
    conv2d_reference,
    cross_entropy,
    cross_entropy_backward,
    gelu,
    gelu_backward,
    huber_loss,
    huber_loss_backward,
    l1_loss,
    l1_loss_backward,
    leaky_relu,
    leaky_relu_backward,
    log_softmax,
    log_softmax_backward,
    matmul,
    matmul_act_backward,
    matmul_bf16,
    matmul_bias_act,
    matmul_reference,
    mse_loss,
    mse_loss_backward,
    relu,
    relu_backward,
    rmsprop_step,
    sgd_step,
    sigmoid,
    sigmoid_backward,
    silu,
    silu_backward,
    softmax,
    softmax_backward,
    softplus,
    softplus_backward,
    tanh,
    tanh_backward,
)
from ._kernels import (  # pooling and normalization (NCHW)
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    batch_norm,
    batch_norm_backward,
    layer_norm,
    layer_norm_backward,
    max_pool2d,
    max_pool2d_backward,
)

__all__ = [name for name in dir() if not name.startswith("_")]
