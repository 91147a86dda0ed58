"""Float64 numpy oracles for every fastnn kernel, written from the textbook / PyTorch formulas.

Nothing here calls fastnn. Every function converts its inputs to float64 and returns
float64 arrays (or Python floats for reduced losses), whatever the input dtype, so a float32
kernel can be compared with an oracle that carries ~29 more bits. Where a textbook formula
cancels badly in floating point the mathematically identical, well-conditioned form is used
(erfc for GELU, logaddexp for softplus, the two-branch sigmoid, sum of two softplus terms for
binary cross-entropy): the oracle should be more accurate than the kernel, never the reverse.

Optimizer steps take the same argument names as ``fastnn.ops.*_step`` but do not update
anything in place: they return the new parameter and state arrays.
"""
import math

import numpy as np

__all__ = [
    "matmul",
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward",
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "gelu", "gelu_backward",
    "silu", "silu_backward", "softplus", "softplus_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "bias_add", "bias_grad",
    "mse_loss", "mse_loss_backward", "l1_loss", "l1_loss_backward",
    "huber_loss", "huber_loss_backward",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward",
    "cross_entropy", "cross_entropy_backward",
    "sgd_step", "adam_step", "adamw_step", "rmsprop_step", "adagrad_step",
    "conv2d", "conv2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "batch_norm", "batch_norm_backward",
    "layer_norm", "layer_norm_backward",
]

_erfc = np.vectorize(math.erfc, otypes=[np.float64])
_SQRT1_2 = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _f64(a):
    """a as a float64 ndarray (a copy when a is not already float64)."""
    return np.array(a, dtype=np.float64)


# ---- GEMM --------------------------------------------------------------------------------

def matmul(a, b, alpha=1.0, beta=0.0, c=None):
    """alpha * a @ b + beta * c (c is not read when beta == 0, as BLAS)."""
    out = alpha * (_f64(a) @ _f64(b))
    if beta != 0:
        out = out + beta * _f64(c)
    return out


# ---- activations ---------------------------------------------------------------------------

def relu(x):
    """max(x, 0); NaN propagates."""
    x = _f64(x)
    return np.where(x < 0, 0.0, x)


def relu_backward(dy, x):
    """dy where x > 0 else 0 (PyTorch's threshold_backward: a NaN x passes dy through)."""
    dy, x = _f64(dy), _f64(x)
    return np.where(x <= 0, 0.0, dy)


def leaky_relu(x, negative_slope=0.01):
    """x if x > 0 else negative_slope * x."""
    x = _f64(x)
    return np.where(x > 0, x, negative_slope * x)


def leaky_relu_backward(dy, x, negative_slope=0.01):
    """dy if x > 0 else negative_slope * dy."""
    dy, x = _f64(dy), _f64(x)
    return np.where(x > 0, dy, negative_slope * dy)


def sigmoid(x):
    """1 / (1 + exp(-x)), evaluated as exp(x) / (1 + exp(x)) for x < 0 (no overflow)."""
    x = _f64(x)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_backward(dy, x):
    """dy * s * (1 - s), s = sigmoid(x); 1 - s is computed as sigmoid(-x)."""
    return _f64(dy) * sigmoid(x) * sigmoid(-_f64(x))


def tanh(x):
    """tanh(x)."""
    return np.tanh(_f64(x))


def tanh_backward(dy, x):
    """dy * (1 - tanh(x)^2), evaluated as dy / cosh(x)^2 (no cancellation)."""
    x = _f64(x)
    with np.errstate(over="ignore"):
        return _f64(dy) / np.cosh(x) ** 2


def _gelu_tanh_u(x):
    """u = sqrt(2/pi) (x + 0.044715 x^3), the argument of tanh in GELU's approximation."""
    return _SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)


def gelu(x, approximate="none"):
    """x * Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2; approximate='tanh':
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) = x * sigmoid(2 u)."""
    x = _f64(x)
    if approximate == "none":
        return 0.5 * x * _erfc(-x * _SQRT1_2)
    if approximate == "tanh":
        with np.errstate(over="ignore", invalid="ignore"):
            return x * sigmoid(2.0 * _gelu_tanh_u(x))
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_backward(dy, x, approximate="none"):
    """dy * (Phi(x) + x phi(x)); for 'tanh': dy * (0.5 (1 + t) + 0.5 x (1 - t^2) u'(x))."""
    dy, x = _f64(dy), _f64(x)
    if approximate == "none":
        cdf = 0.5 * _erfc(-x * _SQRT1_2)
        pdf = np.exp(-0.5 * x * x) * _INV_SQRT_2PI
        return dy * (cdf + x * pdf)
    if approximate == "tanh":
        with np.errstate(over="ignore", invalid="ignore"):
            u = _gelu_tanh_u(x)
            du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
            half_1p_t = sigmoid(2.0 * u)                  # 0.5 (1 + tanh u)
            one_m_t2 = 4.0 * sigmoid(2.0 * u) * sigmoid(-2.0 * u)  # 1 - tanh(u)^2
            # x * (1 - t^2) * du is 0 * 0 * inf for huge |x|: the limit is 0
            term = np.where(one_m_t2 == 0, 0.0, 0.5 * x * one_m_t2 * du)
            return dy * (half_1p_t + term)
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def silu(x):
    """x * sigmoid(x)."""
    x = _f64(x)
    return x * sigmoid(x)


def silu_backward(dy, x):
    """dy * s * (1 + x (1 - s)), s = sigmoid(x)."""
    dy, x = _f64(dy), _f64(x)
    s = sigmoid(x)
    return dy * (s + x * s * sigmoid(-x))


def softplus(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta, and x itself where beta * x > threshold (PyTorch)."""
    x = _f64(x)
    bx = beta * x
    return np.where(bx > threshold, x, np.logaddexp(0.0, bx) / beta)


def softplus_backward(dy, x, beta=1.0, threshold=20.0):
    """dy * sigmoid(beta x), and dy where beta * x > threshold (PyTorch)."""
    dy, x = _f64(dy), _f64(x)
    bx = beta * x
    return np.where(bx > threshold, dy, dy * sigmoid(bx))


# ---- softmax and bias ------------------------------------------------------------------------

def _logsumexp(x):
    """log(sum(exp(x), -1)) with the row maximum factored out; keepdims. A NaN row gives NaN."""
    m = np.max(x, axis=-1, keepdims=True)          # np.max propagates NaN
    with np.errstate(invalid="ignore", over="ignore"):
        return m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def softmax(x):
    """exp(x - max) / sum(exp(x - max)) over the last axis."""
    x = _f64(x)
    m = np.max(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        e = np.exp(x - m)
        return e / np.sum(e, axis=-1, keepdims=True)


def log_softmax(x):
    """x - logsumexp(x) over the last axis."""
    x = _f64(x)
    return x - _logsumexp(x)


def softmax_backward(dy, y):
    """y * (dy - sum(dy * y, -1)), y = softmax(x)."""
    dy, y = _f64(dy), _f64(y)
    return y * (dy - np.sum(dy * y, axis=-1, keepdims=True))


def log_softmax_backward(dy, y):
    """dy - exp(y) * sum(dy, -1), y = log_softmax(x)."""
    dy, y = _f64(dy), _f64(y)
    return dy - np.exp(y) * np.sum(dy, axis=-1, keepdims=True)


def bias_add(x, b):
    """x (N, F) + b (F,) broadcast over rows."""
    return _f64(x) + _f64(b)[None, :]


def bias_grad(dy, out=None, beta=0.0):
    """Column sums of dy (N, F), plus beta * out when beta != 0."""
    s = np.sum(_f64(dy), axis=0)
    if beta != 0:
        s = s + beta * _f64(out)
    return s


# ---- losses ----------------------------------------------------------------------------------

def _reduce(per_item, reduction, divisor=None):
    """'none': the per-item array; 'sum': its sum; 'mean': sum / divisor (NaN if 0)."""
    if reduction == "none":
        return per_item
    total = float(np.sum(per_item))
    if reduction == "sum":
        return total
    if reduction == "mean":
        count = per_item.size if divisor is None else divisor
        return total / count if count != 0 else float("nan")
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _grad_scale(grad_sum, reduction, grad_output=None, divisor=None, per_row=False):
    """Gradient of the reduced loss from the gradient of the summed loss ('none': times
    grad_output, one value per element, or per row when per_row)."""
    if reduction == "none":
        go = _f64(grad_output)
        return grad_sum * (go.reshape(-1, 1) if per_row else go.reshape(grad_sum.shape))
    if reduction == "sum":
        return grad_sum
    if reduction == "mean":
        count = grad_sum.size if divisor is None else divisor
        return grad_sum / count if count != 0 else grad_sum * float("nan")
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def mse_loss(pred, target, reduction="mean"):
    """(pred - target)^2, reduced."""
    d = _f64(pred) - _f64(target)
    return _reduce(d * d, reduction)


def mse_loss_backward(pred, target, reduction="mean", grad_output=None):
    """2 (pred - target), scaled by the reduction."""
    d = _f64(pred) - _f64(target)
    return _grad_scale(2.0 * d, reduction, grad_output)


def l1_loss(pred, target, reduction="mean"):
    """|pred - target|, reduced."""
    return _reduce(np.abs(_f64(pred) - _f64(target)), reduction)


def l1_loss_backward(pred, target, reduction="mean", grad_output=None):
    """sign(pred - target) (0 at 0, NaN for NaN), scaled by the reduction."""
    return _grad_scale(np.sign(_f64(pred) - _f64(target)), reduction, grad_output)


def huber_loss(pred, target, delta=1.0, reduction="mean"):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta); d = pred - target."""
    d = _f64(pred) - _f64(target)
    ad = np.abs(d)
    with np.errstate(invalid="ignore"):
        per = np.where(ad < delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
    return _reduce(per, reduction)


def huber_loss_backward(pred, target, delta=1.0, reduction="mean", grad_output=None):
    """clip(d, -delta, delta), scaled by the reduction (NaN stays NaN)."""
    d = _f64(pred) - _f64(target)
    return _grad_scale(np.clip(d, -delta, delta), reduction, grad_output)


def _softplus0(z):
    """log(1 + exp(z)) for any z (no overflow)."""
    return np.logaddexp(0.0, z)


def _pos_weight(pos_weight):
    """1, or the per-column weights (they broadcast over the last axis)."""
    return 1.0 if pos_weight is None else _f64(pos_weight)


def binary_cross_entropy_with_logits(logits, target, pos_weight=None, reduction="mean"):
    """-[pw t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))]
    = pw t softplus(-z) + (1 - t) softplus(z), reduced (pos_weight along the last axis)."""
    z, t = _f64(logits), _f64(target)
    pw = _pos_weight(pos_weight)
    per = pw * t * _softplus0(-z) + (1.0 - t) * _softplus0(z)
    return _reduce(per, reduction)


def binary_cross_entropy_with_logits_backward(logits, target, pos_weight=None,
                                              reduction="mean", grad_output=None):
    """d/dz = (1 - t) sigmoid(z) - pw t sigmoid(-z), scaled by the reduction."""
    z, t = _f64(logits), _f64(target)
    pw = _pos_weight(pos_weight)
    g = (1.0 - t) * sigmoid(z) - pw * t * sigmoid(-z)
    return _grad_scale(g, reduction, grad_output)


def _ce_parts(logits, labels, weight, label_smoothing):
    """Per-row loss, log-probabilities, class weights and the 'mean' divisor sum_r w[y_r]."""
    z = _f64(logits)
    labels = np.asarray(labels, dtype=np.int64)
    rows, cols = z.shape
    w = np.ones(cols) if weight is None else _f64(weight)
    logp = z - _logsumexp(z)
    r = np.arange(rows)
    nll = -w[labels] * logp[r, labels]
    smooth = -np.sum(w[None, :] * logp, axis=1)
    eps = float(label_smoothing)
    per = (1.0 - eps) * nll + eps / cols * smooth
    return per, logp, w, float(np.sum(w[labels]))


def cross_entropy(logits, labels, weight=None, label_smoothing=0.0, reduction="mean"):
    """torch.nn.functional.cross_entropy on logits (N, C) with integer labels (N,):
    l_r = (1 - eps) w[y] (-log p_y) + eps / C sum_c w[c] (-log p_c); 'mean' divides the sum
    by sum_r w[y_r] (N without weights)."""
    per, _, _, wsum = _ce_parts(logits, labels, weight, label_smoothing)
    return _reduce(per, reduction, divisor=wsum)


def cross_entropy_backward(logits, labels, weight=None, label_smoothing=0.0, reduction="mean",
                           grad_output=None):
    """d l_r / d z_rc = p_c ((1 - eps) w[y] + eps / C sum_k w[k]) - (1 - eps) w[y] [c == y]
    - eps / C w[c], scaled by the reduction."""
    _, logp, w, wsum = _ce_parts(logits, labels, weight, label_smoothing)
    labels = np.asarray(labels, dtype=np.int64)
    rows, cols = logp.shape
    eps = float(label_smoothing)
    p = np.exp(logp)
    wy = w[labels]
    g = p * ((1.0 - eps) * wy[:, None] + eps / cols * np.sum(w)) - eps / cols * w[None, :]
    g[np.arange(rows), labels] -= (1.0 - eps) * wy
    return _grad_scale(g, reduction, grad_output, divisor=wsum, per_row=True)


# ---- optimizers (torch.optim single-tensor formulas; nothing updated in place) ---------------

def sgd_step(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, maximize=False, first_step=False):
    """torch.optim.SGD: returns (param, momentum_buffer)."""
    p, g = _f64(param), _f64(grad)
    d = -g if maximize else g
    if weight_decay != 0:
        d = d + weight_decay * p
    buf = None if momentum_buffer is None else _f64(momentum_buffer)
    if momentum != 0:
        buf = d.copy() if first_step else momentum * buf + (1.0 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, buf


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
              beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
              amsgrad=False, maximize=False):
    """torch.optim.Adam (AdamW when decoupled_weight_decay): returns
    (param, exp_avg, exp_avg_sq, max_exp_avg_sq)."""
    p, g, m, v = _f64(param), _f64(grad), _f64(exp_avg), _f64(exp_avg_sq)
    vmax = None if max_exp_avg_sq is None else _f64(max_exp_avg_sq)
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled_weight_decay:
            p = p * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * p
    m = m + (1.0 - beta1) * (g - m)                # exp_avg.lerp_(grad, 1 - beta1)
    v = v * beta2 + (1.0 - beta2) * g * g
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
    step_size = lr / bias_correction1
    if amsgrad:
        vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax) / bias_correction2_sqrt + eps
    else:
        denom = np.sqrt(v) / bias_correction2_sqrt + eps
    return p - step_size * (m / denom), m, v, vmax


def adamw_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
               beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, amsgrad=False,
               maximize=False):
    """torch.optim.AdamW (decoupled weight decay): returns as adam_step."""
    return adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr,
                     beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                     decoupled_weight_decay=True, amsgrad=amsgrad, maximize=maximize)


def rmsprop_step(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *, lr=1e-2,
                 alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False):
    """torch.optim.RMSprop: returns (param, square_avg, momentum_buffer, grad_avg)."""
    p, g, sq = _f64(param), _f64(grad), _f64(square_avg)
    buf = None if momentum_buffer is None else _f64(momentum_buffer)
    ga = None if grad_avg is None else _f64(grad_avg)
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    sq = sq * alpha + (1.0 - alpha) * g * g
    if centered:
        ga = ga + (1.0 - alpha) * (g - ga)
        avg = np.sqrt(sq - ga * ga) + eps
    else:
        avg = np.sqrt(sq) + eps
    if momentum > 0:
        buf = buf * momentum + g / avg
        p = p - lr * buf
    else:
        p = p - lr * (g / avg)
    return p, sq, buf, ga


def adagrad_step(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False):
    """torch.optim.Adagrad: returns (param, state_sum)."""
    p, g, s = _f64(param), _f64(grad), _f64(state_sum)
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    clr = lr / (1.0 + (step - 1) * lr_decay)
    s = s + g * g
    return p - clr * (g / (np.sqrt(s) + eps)), s


# ---- 2-D convolution (NCHW, torch.nn.functional.conv2d) -----------------------------------

def _conv_pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv_pads(padding, kh, kw, dh, dw):
    """(top, bottom, left, right); 'same' puts an odd pixel at the bottom/right (PyTorch)."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = _conv_pair(padding)
    return ph, ph, pw, pw


def _conv_windows(xp, r, s, oh, ow, sh, sw, dh, dw):
    """xp[:, :, i*sh + r*dh, j*sw + s*dw] for i < oh, j < ow: the pixels kernel tap (r, s) reads."""
    return xp[:, :, r * dh: r * dh + sh * (oh - 1) + 1: sh, s * dw: s * dw + sw * (ow - 1) + 1: sw]


def _conv_setup(x, weight, stride, padding, dilation):
    x, w = _f64(x), _f64(weight)
    (sh, sw), (dh, dw) = _conv_pair(stride), _conv_pair(dilation)
    kh, kw = w.shape[2:]
    pt, pb, pl, pr = _conv_pads(padding, kh, kw, dh, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    return x, w, xp, (sh, sw, dh, dw), (pt, pl), oh, ow


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """y[b, o, i, j] = bias[o] + sum_{c, r, s} w[o, c, r, s] x_pad[b, g*Cg + c, i*sh + r*dh, j*sw + s*dw]."""
    x, w, xp, (sh, sw, dh, dw), _, oh, ow = _conv_setup(x, weight, stride, padding, dilation)
    cout, cg, kh, kw = w.shape
    og = cout // groups
    y = np.zeros((x.shape[0], cout, oh, ow))
    for g in range(groups):
        xg = xp[:, g * cg:(g + 1) * cg]
        for r in range(kh):
            for s in range(kw):
                win = _conv_windows(xg, r, s, oh, ow, sh, sw, dh, dw)
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", win,
                                                       w[g * og:(g + 1) * og, :, r, s])
    if bias is not None:
        y += _f64(bias)[None, :, None, None]
    return y


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1):
    """(dx, dweight, dbias) of sum(conv2d(x, weight, bias) * dy)."""
    x, w, xp, (sh, sw, dh, dw), (pt, pl), oh, ow = _conv_setup(x, weight, stride, padding,
                                                               dilation)
    dy = _f64(dy)
    cout, cg, kh, kw = w.shape
    og = cout // groups
    dxp = np.zeros_like(xp)
    dw_ = np.zeros_like(w)
    for g in range(groups):
        xg, dxg = xp[:, g * cg:(g + 1) * cg], dxp[:, g * cg:(g + 1) * cg]
        dyg = dy[:, g * og:(g + 1) * og]
        for r in range(kh):
            for s in range(kw):
                win = _conv_windows(xg, r, s, oh, ow, sh, sw, dh, dw)
                dw_[g * og:(g + 1) * og, :, r, s] = np.einsum("nohw,nchw->oc", dyg, win)
                _conv_windows(dxg, r, s, oh, ow, sh, sw, dh, dw)[...] += np.einsum(
                    "nohw,oc->nchw", dyg, w[g * og:(g + 1) * og, :, r, s])
    dx = dxp[:, :, pt:pt + x.shape[2], pl:pl + x.shape[3]]
    return dx, dw_, dy.sum(axis=(0, 2, 3))


# ---- pooling and normalization (NCHW) --------------------------------------------------------
# Windows as PyTorch: window (i, j) covers rows i*sh - ph ... + kh - 1 and columns
# j*sw - pw ... + kw - 1 of the image; positions outside it are padding.

def _pool_windows(x, kernel_size, stride, padding):
    """(x, xp, inside, geometry): x as float64, x zero-padded by (ph, pw) on each side, the
    mask of the padded plane's in-image positions, and (kh, kw, sh, sw, ph, pw, oh, ow)."""
    x = _f64(x)
    kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
    stride = kernel_size if stride is None else stride
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    n, c, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    inside = np.zeros((h + 2 * ph, w + 2 * pw), bool)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    inside[ph:ph + h, pw:pw + w] = True
    return x, xp, inside, (kh, kw, sh, sw, ph, pw, oh, ow)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """(y, indices): window maxima over in-image pixels (NaN wins, the first maximum wins
    ties) and their positions h*W + w in the input plane."""
    x, xp, inside, (kh, kw, sh, sw, ph, pw, oh, ow) = _pool_windows(x, kernel_size, stride,
                                                                     padding)
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow))
    idx = np.empty((n, c, oh, ow), np.int64)
    for i in range(oh):
        for j in range(ow):
            best = np.full((n, c), -np.inf)
            arg = np.full((n, c), -1, np.int64)
            for a in range(i * sh, i * sh + kh):
                for b in range(j * sw, j * sw + kw):
                    if not inside[a, b]:
                        continue
                    v = xp[:, :, a, b]
                    take = (arg < 0) | (v > best) | np.isnan(v)
                    best = np.where(take, v, best)
                    arg = np.where(take, (a - ph) * w + (b - pw), arg)
            y[:, :, i, j], idx[:, :, i, j] = best, arg
    return y, idx


def max_pool2d_backward(dy, x, indices):
    """dx: dy summed into the argmax positions."""
    dy, x = _f64(dy), _f64(x)
    n, c, h, w = x.shape
    dx = np.zeros((n * c, h * w))
    flat_dy, flat_i = dy.reshape(n * c, -1), np.asarray(indices).reshape(n * c, -1)
    for p in range(n * c):
        np.add.at(dx[p], flat_i[p], flat_dy[p])
    return dx.reshape(x.shape)


def _avg_divisors(inside, geom, count_include_pad):
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    div = np.empty((oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = inside[i * sh:i * sh + kh, j * sw:j * sw + kw]
            div[i, j] = kh * kw if count_include_pad else win.sum()
    return div


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Window sums (padding adds zero) over kh*kw or over the in-image pixel count."""
    x, xp, inside, geom = _pool_windows(x, kernel_size, stride, padding)
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    y = np.empty(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].sum(axis=(2, 3))
    return y / _avg_divisors(inside, geom, count_include_pad)


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, count_include_pad=True):
    x, xp, inside, geom = _pool_windows(x, kernel_size, stride, padding)
    kh, kw, sh, sw, ph, pw, oh, ow = geom
    g = _f64(dy) / _avg_divisors(inside, geom, count_include_pad)
    dxp = np.zeros_like(xp)
    for i in range(oh):
        for j in range(ow):
            dxp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += g[:, :, i:i + 1, j:j + 1]
    n, c, h, w = x.shape
    return dxp[:, :, ph:ph + h, pw:pw + w]


def adaptive_avg_pool2d(x):
    """Global average pool: (N, C, 1, 1)."""
    return _f64(x).mean(axis=(2, 3), keepdims=True)


def adaptive_avg_pool2d_backward(dy, x):
    x = _f64(x)
    return np.broadcast_to(_f64(dy) / (x.shape[2] * x.shape[3]), x.shape).copy()


def _bn_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bn_bcast(v, x):
    return np.asarray(v, np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """(y, new_running_mean, new_running_var, mean, invstd) as PyTorch's batch_norm; x of
    shape (N, C), (N, C, L) or (N, C, H, W); the running statistics are returned, not
    updated (None stays None)."""
    x = _f64(x)
    ax = _bn_axes(x)
    if training:
        m = x.size // x.shape[1]
        mean = x.mean(axis=ax)
        var = ((x - _bn_bcast(mean, x)) ** 2).mean(axis=ax)
        rm = None if running_mean is None else \
            (1 - momentum) * _f64(running_mean) + momentum * mean
        rv = None if running_var is None else \
            (1 - momentum) * _f64(running_var) + momentum * var * m / (m - 1)
    else:
        mean, var = _f64(running_mean), _f64(running_var)
        rm, rv = mean, var
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - _bn_bcast(mean, x)) * _bn_bcast(invstd, x)
    if weight is not None:
        y = y * _bn_bcast(weight, x)
    if bias is not None:
        y = y + _bn_bcast(bias, x)
    return y, rm, rv, mean, invstd


def batch_norm_backward(dy, x, mean, invstd, weight=None, training=True):
    """(dx, dweight, dbias) of batch_norm (training: through the batch statistics)."""
    dy, x = _f64(dy), _f64(x)
    ax = _bn_axes(x)
    m = x.size // x.shape[1]
    xhat = (x - _bn_bcast(mean, x)) * _bn_bcast(invstd, x)
    dbias = dy.sum(axis=ax)
    dweight = (dy * xhat).sum(axis=ax)
    g = _bn_bcast(1.0 if weight is None else np.full(x.shape[1], 1.0) * _f64(weight), x)
    if training:
        dx = g * _bn_bcast(invstd, x) * (dy - _bn_bcast(dbias / m, x)
                                         - xhat * _bn_bcast(dweight / m, x))
    else:
        dx = g * _bn_bcast(invstd, x) * dy
    return dx, dweight, dbias


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """(y, mean, rstd) over the trailing normalized_shape axes."""
    x = _f64(x)
    ns = (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape)
    ax = tuple(range(x.ndim - len(ns), x.ndim))
    mean = x.mean(axis=ax, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=ax, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if weight is not None:
        y = y * _f64(weight)
    if bias is not None:
        y = y + _f64(bias)
    lead = x.shape[:x.ndim - len(ns)]
    return y, mean.reshape(lead), rstd.reshape(lead)


def layer_norm_backward(dy, x, normalized_shape, weight=None, eps=1e-5):
    """(dx, dweight, dbias) of layer_norm (statistics recomputed in float64)."""
    dy, x = _f64(dy), _f64(x)
    ns = (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape)
    ax = tuple(range(x.ndim - len(ns), x.ndim))
    lead_ax = tuple(range(x.ndim - len(ns)))
    mean = x.mean(axis=ax, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=ax, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dy if weight is None else dy * _f64(weight)
    dx = rstd * (g - g.mean(axis=ax, keepdims=True)
                 - xhat * (g * xhat).mean(axis=ax, keepdims=True))
    return dx, (dy * xhat).sum(axis=lead_ax), dy.sum(axis=lead_ax)
