"""Pooling and normalization on the GPU (Numba CUDA): the kernels of fastnn.ops'
max_pool2d, avg_pool2d, adaptive_avg_pool2d, batch_norm and layer_norm, forward and backward,
with the same names, arguments and formulas, on device arrays (NCHW, C-contiguous, float32 or
float64; results are numba device arrays).

Determinism: every output is computed by one thread in a fixed order (pooling: one thread per
output, and per (n, c) plane for the scattering backward passes); the norms give one block of
BLOCK threads to each channel (batch norm) or row (layer norm), thread t sums the values
t, t + BLOCK, ... in float64 and the block adds the partial sums in a fixed tree order, so the
results do not depend on timing. Sums are in float64, as in the C kernels; the C kernels sum
in a different order, so results agree with fastnn.ops to rounding, not bit for bit.
"""
import numpy as np
from numba import cuda

from . import _count_launch, require

require()

from ._poolnorm_kernels import (  # noqa: E402
    BLOCK, _avgpool_bwd, _avgpool_fwd, _bn_bwd, _bn_fwd, _gap_bwd, _gap_fwd, _ln_bwd_cols,
    _ln_bwd_rows, _ln_fwd, _maxpool_bwd, _maxpool_fwd)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "batch_norm",
           "batch_norm_backward", "layer_norm", "layer_norm_backward"]


# ---- argument checks and launches ------------------------------------------------------------------

def _sig(fn, arg):
    return f"{fn}: argument '{arg}'"


def _dev(x, fn, arg, dtype=None, ndim=None):
    if getattr(x, "__cuda_ndarray__", False):
        a = x
    elif hasattr(x, "__cuda_array_interface__"):
        a = cuda.as_cuda_array(x)
    else:
        raise TypeError(f"{_sig(fn, arg)} must be a device array (fastnn.cuda.to_device), got "
                        f"{type(x).__name__}")
    if a.dtype not in _FLOATS and dtype != np.int64:
        raise TypeError(f"{_sig(fn, arg)} must be a float32 or float64 array, got dtype "
                        f"{a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{_sig(fn, arg)} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if ndim is not None and a.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{_sig(fn, arg)} must be a {ndim}-D array, got shape {a.shape}")
    if not a.is_c_contiguous():
        raise ValueError(f"{_sig(fn, arg)} must be C-contiguous")
    return a


def _flat(a):
    return a.reshape(a.size) if a.size else a


def _launch(name, kernel, n, per_block, *args):
    _count_launch(name)
    kernel[max(1, -(-n // per_block)), per_block](*args)


def _pair(v, fn, arg, low):
    t = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(t) != 2 or any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) for e in t):
        raise TypeError(f"{_sig(fn, arg)} must be an int or a pair of ints, got {v!r}")
    if min(t) < low:
        raise ValueError(f"{_sig(fn, arg)} must be >= {low}, got {v!r}")
    return int(t[0]), int(t[1])


def _geometry(fn, x, kernel_size, stride, padding):
    kh, kw = _pair(kernel_size, fn, "kernel_size", 1)
    sh, sw = (kh, kw) if stride is None else _pair(stride, fn, "stride", 1)
    ph, pw = _pair(padding, fn, "padding", 0)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"{_sig(fn, 'padding')} must be at most half of kernel_size")
    n, c, h, w = x.shape
    if h < 1 or w < 1 or h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"{_sig(fn, 'x')} of shape {x.shape} is smaller than kernel_size "
                         f"{(kh, kw)} with padding {(ph, pw)}")
    return kh, kw, sh, sw, ph, pw, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False):
    """fastnn.ops.max_pool2d on a device array x (N, C, H, W)."""
    fn = "max_pool2d"
    x = _dev(x, fn, "x", ndim=4)
    kh, kw, sh, sw, ph, pw, oh, ow = _geometry(fn, x, kernel_size, stride, padding)
    n, c, h, w = x.shape
    y = cuda.device_array((n, c, oh, ow), x.dtype)
    idx = cuda.device_array((n, c, oh, ow), np.int64)
    if y.size:
        _launch(fn, _maxpool_fwd, y.size, 128, _flat(y), _flat(idx), _flat(x), y.size, h, w,
                oh, ow, kh, kw, sh, sw, ph, pw)
    return (y, idx) if return_indices else y


def max_pool2d_backward(dy, x, indices, kernel_size, stride=None, padding=0):
    """fastnn.ops.max_pool2d_backward on device arrays (indices from max_pool2d)."""
    fn = "max_pool2d_backward"
    x = _dev(x, fn, "x", ndim=4)
    kh, kw, sh, sw, ph, pw, oh, ow = _geometry(fn, x, kernel_size, stride, padding)
    n, c, h, w = x.shape
    dy = _dev(dy, fn, "dy", x.dtype, 4)
    indices = _dev(indices, fn, "indices", np.int64, 4)
    for a, name in ((dy, "dy"), (indices, "indices")):
        if a.shape != (n, c, oh, ow):
            raise ValueError(f"{_sig(fn, name)} must have shape {(n, c, oh, ow)}, got {a.shape}")
    dx = cuda.device_array(x.shape, x.dtype)
    if dx.size:
        _launch(fn, _maxpool_bwd, n * c, 64, _flat(dx), _flat(dy), _flat(indices), n * c,
                h * w, oh * ow)
    return dx


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """fastnn.ops.avg_pool2d on a device array x (N, C, H, W)."""
    fn = "avg_pool2d"
    x = _dev(x, fn, "x", ndim=4)
    kh, kw, sh, sw, ph, pw, oh, ow = _geometry(fn, x, kernel_size, stride, padding)
    n, c, h, w = x.shape
    y = cuda.device_array((n, c, oh, ow), x.dtype)
    if y.size:
        _launch(fn, _avgpool_fwd, y.size, 128, _flat(y), _flat(x), y.size, h, w, oh, ow, kh,
                kw, sh, sw, ph, pw, bool(count_include_pad))
    return y


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """fastnn.ops.avg_pool2d_backward on device arrays."""
    fn = "avg_pool2d_backward"
    x = _dev(x, fn, "x", ndim=4)
    kh, kw, sh, sw, ph, pw, oh, ow = _geometry(fn, x, kernel_size, stride, padding)
    n, c, h, w = x.shape
    dy = _dev(dy, fn, "dy", x.dtype, 4)
    if dy.shape != (n, c, oh, ow):
        raise ValueError(f"{_sig(fn, 'dy')} must have shape {(n, c, oh, ow)}, got {dy.shape}")
    dx = cuda.device_array(x.shape, x.dtype)
    if dx.size:
        _launch(fn, _avgpool_bwd, n * c, 64, _flat(dx), _flat(dy), n * c, h, w, oh, ow, kh, kw,
                sh, sw, ph, pw, bool(count_include_pad))
    return dx


def adaptive_avg_pool2d(x, output_size=1):
    """fastnn.ops.adaptive_avg_pool2d (output size 1) on a device array."""
    fn = "adaptive_avg_pool2d"
    if output_size not in (1, (1, 1), [1, 1]):
        raise ValueError(f"{_sig(fn, 'output_size')} must be 1 or (1, 1), got {output_size!r}")
    x = _dev(x, fn, "x", ndim=4)
    n, c, h, w = x.shape
    y = cuda.device_array((n, c, 1, 1), x.dtype)
    if y.size:
        _launch(fn, _gap_fwd, n * c, 128, _flat(y), _flat(x), n * c, h * w)
    return y


def adaptive_avg_pool2d_backward(dy, x, output_size=1):
    """fastnn.ops.adaptive_avg_pool2d_backward on device arrays."""
    fn = "adaptive_avg_pool2d_backward"
    x = _dev(x, fn, "x", ndim=4)
    n, c, h, w = x.shape
    dy = _dev(dy, fn, "dy", x.dtype, 4)
    if dy.shape != (n, c, 1, 1):
        raise ValueError(f"{_sig(fn, 'dy')} must have shape {(n, c, 1, 1)}, got {dy.shape}")
    dx = cuda.device_array(x.shape, x.dtype)
    if dx.size:
        _launch(fn, _gap_bwd, dx.size, 128, _flat(dx), _flat(dy), dx.size, h * w)
    return dx


def _bn_dims(x):
    hw = 1
    for d in x.shape[2:]:
        hw *= d
    return x.shape[0], x.shape[1], hw


def _vec(v, fn, arg, dtype, c):
    if v is None:
        return None
    a = _dev(v, fn, arg, dtype, 1)
    if a.shape != (c,):
        raise ValueError(f"{_sig(fn, arg)} must have shape ({c},), got {a.shape}")
    return a


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, return_stats=False):
    """fastnn.ops.batch_norm on device arrays (running statistics updated in place)."""
    fn = "batch_norm"
    x = _dev(x, fn, "x", ndim=(2, 3, 4))
    n, c, hw = _bn_dims(x)
    rm, rv = (_vec(v, fn, a, x.dtype, c) for v, a in ((running_mean, "running_mean"),
                                                    (running_var, "running_var")))
    w, b = (_vec(v, fn, a, x.dtype, c) for v, a in ((weight, "weight"), (bias, "bias")))
    if (rm is None) != (rv is None):
        raise ValueError(f"{fn}: pass both 'running_mean' and 'running_var' or neither")
    if not training and rm is None:
        raise ValueError(f"{_sig(fn, 'running_mean')} is required when training=False")
    if (w is None) != (b is None):
        raise ValueError(f"{fn}: pass both 'weight' and 'bias' or neither")
    if training and n * hw < 2:
        raise ValueError(f"{fn}: expected more than 1 value per channel when training")
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"{_sig(fn, 'momentum')} must be in [0, 1], got {momentum!r}")
    y = cuda.device_array(x.shape, x.dtype)
    sm, si = cuda.device_array(c, x.dtype), cuda.device_array(c, x.dtype)
    dummy = sm
    if c and x.size:
        _count_launch(fn)
        _bn_fwd[c, BLOCK](_flat(y), sm, si, rm if rm is not None else dummy,
                          rv if rv is not None else dummy, _flat(x),
                          w if w is not None else dummy, b if b is not None else dummy, n, c,
                          hw, bool(training), rm is not None, w is not None, float(momentum),
                          float(eps))
    return (y, sm, si) if return_stats else y


def batch_norm_backward(dy, x, save_mean, save_invstd, weight=None, training=True):
    """fastnn.ops.batch_norm_backward on device arrays: (dx, dweight, dbias)."""
    fn = "batch_norm_backward"
    x = _dev(x, fn, "x", ndim=(2, 3, 4))
    n, c, hw = _bn_dims(x)
    dy = _dev(dy, fn, "dy", x.dtype)
    if dy.shape != x.shape:
        raise ValueError(f"{_sig(fn, 'dy')} must have the shape of 'x' {x.shape}, got {dy.shape}")
    sm, si = (_vec(v, fn, a, x.dtype, c) for v, a in ((save_mean, "save_mean"),
                                                    (save_invstd, "save_invstd")))
    w = _vec(weight, fn, "weight", x.dtype, c)
    dx = cuda.device_array(x.shape, x.dtype)
    dw, db = cuda.device_array(c, x.dtype), cuda.device_array(c, x.dtype)
    if c and x.size:
        _count_launch(fn)
        _bn_bwd[c, BLOCK](_flat(dx), dw, db, _flat(dy), _flat(x), sm, si,
                          w if w is not None else sm, n, c, hw, bool(training), w is not None)
    return dx, dw, db


def _ln_dims(fn, x, normalized_shape):
    ns = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) \
        else tuple(normalized_shape)
    k = len(ns)
    if k == 0 or x.ndim < k or tuple(x.shape[x.ndim - k:]) != ns:
        raise ValueError(f"{_sig(fn, 'x')} must end with the normalized_shape {ns}, got shape "
                         f"{x.shape}")
    d = int(np.prod(ns))
    return x.size // d if d else 0, d, ns, tuple(x.shape[:x.ndim - k])


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, return_stats=False):
    """fastnn.ops.layer_norm on device arrays."""
    fn = "layer_norm"
    x = _dev(x, fn, "x")
    rows, d, ns, lead = _ln_dims(fn, x, normalized_shape)
    w = None if weight is None else _dev(weight, fn, "weight", x.dtype)
    b = None if bias is None else _dev(bias, fn, "bias", x.dtype)
    for a, name in ((w, "weight"), (b, "bias")):
        if a is not None and tuple(a.shape) != ns:
            raise ValueError(f"{_sig(fn, name)} must have shape {ns}, got {a.shape}")
    y = cuda.device_array(x.shape, x.dtype)
    m, r = cuda.device_array(lead, x.dtype), cuda.device_array(lead, x.dtype)
    if rows:
        _count_launch(fn)
        _ln_fwd[rows, BLOCK](_flat(y), _flat(m), _flat(r), _flat(x),
                             _flat(w) if w is not None else _flat(m),
                             _flat(b) if b is not None else _flat(m), d, w is not None,
                             b is not None, float(eps))
    return (y, m, r) if return_stats else y


def layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight=None):
    """fastnn.ops.layer_norm_backward on device arrays: (dx, dweight, dbias)."""
    fn = "layer_norm_backward"
    x = _dev(x, fn, "x")
    rows, d, ns, lead = _ln_dims(fn, x, normalized_shape)
    dy = _dev(dy, fn, "dy", x.dtype)
    m, r = _dev(mean, fn, "mean", x.dtype), _dev(rstd, fn, "rstd", x.dtype)
    if dy.shape != x.shape or tuple(m.shape) != lead or tuple(r.shape) != lead:
        raise ValueError(f"{fn}: 'dy' must have shape {x.shape} and 'mean', 'rstd' {lead}")
    w = None if weight is None else _dev(weight, fn, "weight", x.dtype)
    dx = cuda.device_array(x.shape, x.dtype)
    dw, db = cuda.device_array(ns, x.dtype), cuda.device_array(ns, x.dtype)
    if rows:
        _count_launch(fn)
        _ln_bwd_rows[rows, BLOCK](_flat(dx), _flat(dy), _flat(x), _flat(m), _flat(r),
                                  _flat(w) if w is not None else _flat(m), d, w is not None)
        _launch(fn, _ln_bwd_cols, d, 128, _flat(dw), _flat(db), _flat(dy), _flat(x), _flat(m),
                _flat(r), rows, d)
    return dx, dw, db
