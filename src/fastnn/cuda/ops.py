"""fastnn.ops on the GPU: the same kernels, names, arguments and formulas, on device arrays.

Arrays are device arrays: numba device arrays, or anything with ``__cuda_array_interface__``
(CuPy, PyTorch CUDA tensors; used in place, without a copy). Host numpy arrays are refused
(move them with ``fastnn.cuda.to_device``). Results are numba device arrays. float32 and
float64, one dtype per call. Everything runs on the default stream, asynchronously: nothing
here waits for the GPU except where a docstring says so.

Differences from fastnn.ops, all due to keeping data on the device:

* Reduced losses ('mean', 'sum') return a float64 device array of shape (1,), not a Python
  float: ``float(fastnn.cuda.to_host(v)[0])`` reads it (and waits for the GPU).
* ``*_with_grad(...)`` computes the loss value and its gradient in one kernel (the training
  path); ``loss(...)`` and ``loss_backward(...)`` are the same kernel with one half off.
* ``cross_entropy*``: labels are an int32/int64 device array. A label outside [0, C) gives
  NaN loss and gradient for its row; ``check_labels=True`` (default) copies the labels to
  the host first and raises ValueError naming the first bad one (pass False in a training
  loop whose labels were checked once).
* numba's ``device_array.T`` is a copy, not a view, so the GEMMs take ``trans_a``/``trans_b``
  flags (op(a) = a.T) in addition to reading strided views (e.g. a PyTorch ``t.T``).
* ``matmul_bias_grad`` (no fastnn.ops twin) also returns the row sums of ``a``: the bias
  gradient that goes with ``dW = dZ.T @ X``, in the same launch.
* Element-wise inputs must be C-contiguous (fastnn.ops copies them; a device copy would be
  a hidden launch and allocation).
* Per-item losses and the row statistics of softmax/cross-entropy are computed in the
  array's dtype (fastnn.ops uses double inside); loss totals are accumulated in float64.

Every launch is counted per function name: ``fastnn.cuda.launch_count()``.

Keep arrays from other libraries as numba views made once (``fastnn.cuda.to_device(t)``):
each conversion inside a call goes through ``numba.cuda.as_cuda_array``, which synchronizes
with the producer's stream. The module is for one host thread at a time: the reductions
share one scratch buffer on the default stream.
"""
import math
import warnings

import numpy as np
from numba import cuda

from . import _count_launch, require
from . import _cublas
from . import _kernels as K

require()

# Small grids are deliberate here (a 256 x 256 GEMM is 16 tiles, a 10-class loss one block);
# numba would warn on every such launch.
# (numba-cuda raises its own NumbaPerformanceWarning class, not numba.core's: match the text)
warnings.filterwarnings("ignore", r"Grid size \d+ will likely result in GPU under-utilization")

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_REDUCTIONS = ("mean", "sum", "none")

__all__ = [
    "matmul", "matmul_bias_act", "matmul_act_backward", "matmul_bias_grad",
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid",
    "sigmoid_backward", "tanh", "tanh_backward", "gelu", "gelu_backward", "silu",
    "silu_backward", "softplus", "softplus_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "bias_add", "bias_grad",
    "mse_loss", "mse_loss_backward", "mse_loss_with_grad",
    "l1_loss", "l1_loss_backward", "l1_loss_with_grad",
    "huber_loss", "huber_loss_backward", "huber_loss_with_grad",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward",
    "binary_cross_entropy_with_logits_with_grad",
    "cross_entropy", "cross_entropy_backward", "cross_entropy_with_grad",
    "sgd_step", "adam_step", "adamw_step", "rmsprop_step", "adagrad_step", "copy",
    "gather_rows", "correct_count_add", "row_error_add",
]


# ---- launching -------------------------------------------------------------------------------

def _launch(name, kernel, grid, block, *args):
    _count_launch(name)
    kernel[grid, block](*args)


def _blocks(n, per_block, cap):
    return max(1, min(cap, -(-n // per_block)))


_work_buffer = []


def _work():
    """float64 scratch of the reduction kernels (block counter, partial sums); the last block
    of each reduction resets the counter, so it stays zero between launches."""
    if not _work_buffer:
        _work_buffer.append(cuda.to_device(np.zeros(K.WORK_SIZE, np.float64)))
    return _work_buffer[0]


# ---- argument checks -------------------------------------------------------------------------

def _sig(fn, arg):
    return f"{fn}: argument '{arg}'"


def _device(x, fn, arg):
    """x as a device array (numba's own, or a view of a __cuda_array_interface__ object)."""
    if getattr(x, "__cuda_ndarray__", False):
        return x
    if hasattr(x, "__cuda_array_interface__"):
        return cuda.as_cuda_array(x)
    if isinstance(x, np.ndarray):
        raise TypeError(f"{_sig(fn, arg)} is a host numpy array; fastnn.cuda.ops needs a "
                        f"device array: move it with fastnn.cuda.to_device({arg})")
    raise TypeError(f"{_sig(fn, arg)} must be a device array (a numba device array or an "
                    f"object with __cuda_array_interface__), got {type(x).__name__}")


def _float(x, fn, arg, dtype=None, ndim=None, contiguous=True):
    a = _device(x, fn, arg)
    if a.dtype not in _FLOATS:
        raise TypeError(f"{_sig(fn, arg)} must be a float32 or float64 array, got dtype "
                        f"{a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{_sig(fn, arg)} must have dtype {dtype} like the other arrays, "
                        f"got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{_sig(fn, arg)} must be a {ndim}-D array, got shape {a.shape}")
    if contiguous and not a.is_c_contiguous():
        raise ValueError(f"{_sig(fn, arg)} must be C-contiguous, got strides {a.strides} "
                         f"for shape {a.shape}")
    return a


def _span(a):
    """[lo, hi) device addresses of a's elements."""
    cai = getattr(a, "__cuda_array_interface__", None)
    ptr = cai["data"][0] if cai else a.__array_interface__["data"][0]  # simulator: numpy
    if a.size == 0:
        return ptr, ptr
    lo = ptr + sum(min(0, (d - 1) * s) for d, s in zip(a.shape, a.strides))
    hi = ptr + sum(max(0, (d - 1) * s) for d, s in zip(a.shape, a.strides)) + a.dtype.itemsize
    return lo, hi


def _overlap(a, b):
    alo, ahi = _span(a)
    blo, bhi = _span(b)
    return alo < bhi and blo < ahi


def _disjoint(o, oname, fn, inputs, inplace_first=False):
    """o must not overlap any (name, array) input; with inplace_first it may be the first
    input itself (same start, shape and strides)."""
    for i, (name, a) in enumerate(inputs):
        if a is None or not _overlap(o, a):
            continue
        if (i == 0 and inplace_first and _span(a) == _span(o) and a.shape == o.shape
                and a.strides == o.strides):
            continue
        raise ValueError(f"{_sig(fn, oname)} overlaps input '{name}' in memory; pass a "
                         f"separate array" + (f" or '{name}' itself" if i == 0 and
                                              inplace_first else ""))


def _out(out, fn, shape, dtype, inputs, inplace_first=False, name="out", contiguous=True):
    """Validate a caller's output array, or allocate one."""
    if out is None:
        return cuda.device_array(shape, dtype)
    o = _device(out, fn, name)
    if o.dtype != dtype:
        raise TypeError(f"{_sig(fn, name)} must have dtype {dtype}, got {o.dtype}")
    if tuple(o.shape) != tuple(shape):
        raise ValueError(f"{_sig(fn, name)} must have shape {tuple(shape)}, got {o.shape}")
    if contiguous and not o.is_c_contiguous():
        raise ValueError(f"{_sig(fn, name)} must be C-contiguous, got strides {o.strides}")
    _disjoint(o, name, fn, inputs, inplace_first)
    return o


def _same_shape(a, an, b, bn, fn):
    if a.shape != b.shape:
        raise ValueError(f"{_sig(fn, bn)} must have the shape of '{an}' {a.shape}, "
                         f"got {b.shape}")


def _num(v, fn, arg):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{_sig(fn, arg)} must be a real number, got {v!r}")
    return float(v)


def _flat(a):
    return a.reshape(a.size)


# ---- GEMM ------------------------------------------------------------------------------------

def _transpose_view(a):
    """a.T as a view (numba's DeviceNDArray.T copies)."""
    if not hasattr(a, "gpu_data"):            # the simulator's arrays wrap numpy: .T is a view
        return a.T
    return type(a)(shape=a.shape[::-1], strides=a.strides[::-1], dtype=a.dtype,
                   stream=a.stream, gpu_data=a.gpu_data)


def _gemm_operand(x, fn, arg, dtype, trans):
    """(stored, t): op(x) = stored.T if t else stored, with stored's rows of unit stride when
    op(x) has unit stride along either axis (what the kernel's tile loads coalesce on)."""
    a = _float(x, fn, arg, dtype, ndim=2, contiguous=False)
    op = _transpose_view(a) if trans else a
    r, c = op.shape
    s0, s1 = op.strides
    if r > 1 and c > 1 and abs(s0) < abs(s1):  # column-major: read op(x).T's rows
        return _transpose_view(op), True
    return op, False


def _gemm_args(fn, a, b, out, alpha, beta, trans_a, trans_b):
    A, ta = _gemm_operand(a, fn, "a", None, trans_a)
    B, tb = _gemm_operand(b, fn, "b", A.dtype, trans_b)
    m, k = A.shape[::-1] if ta else A.shape
    k2, n = B.shape[::-1] if tb else B.shape
    if k != k2:
        raise ValueError(f"{fn}: inner dimensions differ: op(a) has shape {(m, k)}, op(b) has "
                         f"shape {(k2, n)} (op(a).shape[1] must equal op(b).shape[0])")
    al, be = _num(alpha, fn, "alpha"), _num(beta, fn, "beta")
    if out is None and be != 0:
        raise ValueError(f"{_sig(fn, 'beta')} must be 0 when 'out' is None, got {be}")
    C = _out(out, fn, (m, n), A.dtype, [("a", A), ("b", B)], contiguous=False)
    T = A.dtype.type
    return A, B, C, ta, tb, T(al), T(be)


def _dummy(dtype, ndim):
    key = (np.dtype(dtype), ndim)
    if key not in _dummies:
        _dummies[key] = cuda.device_array((1,) * ndim, dtype)
    return _dummies[key]


_dummies = {}


def _cublas_launch(fn, A, B, C, ta, tb, epilogue, args):
    """The product through cuBLAS, then the epilogue as one Numba kernel; False when cuBLAS
    is not in use or cannot take these strides (the Numba GEMM then does it all)."""
    if _cublas.backend() != "cublas":
        return False
    if epilogue == K.PLAIN:
        al, be = args
    elif epilogue == K.BIAS_ACT:
        bias, al, be, code, p, p2 = args
    elif epilogue == K.ACT:
        al, be, code, p, p2 = args
    elif epilogue == K.ACT_BACKWARD:
        x, al, be, code, p, p2 = args
    else:
        D, al, be, dbb = args
    if not _cublas.gemm(A, ta, B, tb, C, al, be):
        return False
    _count_launch(fn)
    ks = K.kernels(A.dtype)
    if epilogue == K.ROWSUM:      # db = op(A).sum(1) + dbb db: column sums of op(A).T
        _launch(fn, ks.bias_grad, -(-C.shape[0] // K.LANES), (K.LANES, K.LANES), D,
                A if ta else _transpose_view(A), dbb)
    elif epilogue != K.PLAIN and C.size:
        T = A.dtype.type
        b = bias if epilogue == K.BIAS_ACT else _dummy(A.dtype, 1)
        xx = x if epilogue == K.ACT_BACKWARD else _dummy(A.dtype, 2)
        _launch(fn, ks.epilogue, _blocks(C.size, K.THREADS, K.MAX_BLOCKS), K.THREADS, C, b, xx,
                epilogue, code, T(p), T(p2))
    return True


def _gemm_launch(fn, A, B, C, ta, tb, epilogue, *args):
    m, n = C.shape
    if m == 0 or (n == 0 and epilogue != K.ROWSUM):
        return
    if n and _cublas_launch(fn, A, B, C, ta, tb, epilogue, args):
        return
    grid = (max(1, -(-n // K.BN)), -(-m // K.BM))
    if grid[1] > 65535:
        raise ValueError(f"{fn}: op(a) has {m} rows, more than the {65535 * K.BM} one launch "
                         f"covers; split the rows")
    _launch(fn, K.kernels(A.dtype).gemm(ta, tb, epilogue), grid, (K.TX, K.TY), A, B, C, *args)


def _activation_spec(activation, fn):
    """'relu' | ('leaky_relu', slope) | ('softplus', beta, threshold) ... -> (code, p, p2)."""
    spec = (activation,) if isinstance(activation, str) else tuple(activation) \
        if isinstance(activation, (tuple, list)) else None
    if (not spec or not isinstance(spec[0], str) or spec[0] not in K.ACTIVATIONS
            or len(spec) > 3):
        raise ValueError(f"{_sig(fn, 'activation')} must be one of {sorted(K.ACTIVATIONS)} "
                         f"or a tuple (name, *params) such as ('leaky_relu', 0.2), "
                         f"got {activation!r}")
    name = spec[0]
    defaults = {"leaky_relu": (0.01, 0.0), "softplus": (1.0, 20.0)}.get(name, (0.0, 0.0))
    params = [_num(v, fn, "activation") for v in spec[1:]] + list(defaults[len(spec) - 1:])
    if name == "softplus" and (params[0] == 0 or params[0] != params[0]):
        raise ValueError(f"{_sig(fn, 'activation')}: softplus beta must be non-zero, "
                         f"got {params[0]}")
    return K.ACTIVATIONS[name], params[0], params[1]


def matmul(a, b, out=None, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """out = alpha * op(a) @ op(b) + beta * out, op(x) = x.T when trans_x, else x.

    a, b: 2-D device arrays of one float dtype, any strides (row-major, views of rows,
    transposes; unit stride along one axis is the fast case). out (M, N), when given, must
    not overlap a or b; beta != 0 needs out (beta == 0 never reads it). Returns out."""
    fn = "matmul"
    A, B, C, ta, tb, al, be = _gemm_args(fn, a, b, out, alpha, beta, trans_a, trans_b)
    _gemm_launch(fn, A, B, C, ta, tb, K.PLAIN, al, be)
    return C


def matmul_bias_act(a, b, bias=None, activation="identity", out=None, alpha=1.0, beta=0.0,
                    trans_a=False, trans_b=False):
    """out = act(alpha * op(a) @ op(b) + beta * out + bias), bias and activation applied in
    the GEMM's epilogue (a Linear layer's forward is matmul_bias_act(x, W, b, 'relu',
    trans_b=True)). bias: (N,) or None; activation: a name ('relu', 'gelu', 'gelu_tanh',
    ...) or a tuple ('leaky_relu', slope) / ('softplus', beta, threshold)."""
    fn = "matmul_bias_act"
    A, B, C, ta, tb, al, be = _gemm_args(fn, a, b, out, alpha, beta, trans_a, trans_b)
    code, p, p2 = _activation_spec(activation, fn)
    T = A.dtype.type
    n = C.shape[1]
    if bias is not None:
        Bias = _float(bias, fn, "bias", A.dtype, contiguous=False)
        if Bias.shape != (n,):
            raise ValueError(f"{_sig(fn, 'bias')} must have shape ({n},), got {Bias.shape}")
        _disjoint(C, "out", fn, [("bias", Bias)])
        _gemm_launch(fn, A, B, C, ta, tb, K.BIAS_ACT, Bias, al, be, code, T(p), T(p2))
    elif code != K.IDENTITY:
        _gemm_launch(fn, A, B, C, ta, tb, K.ACT, al, be, code, T(p), T(p2))
    else:
        _gemm_launch(fn, A, B, C, ta, tb, K.PLAIN, al, be)
    return C


def matmul_act_backward(a, b, x, activation="relu", out=None, alpha=1.0, beta=0.0,
                        trans_a=False, trans_b=False):
    """out = (alpha * op(a) @ op(b) + beta * out) * act'(x): the gradient with respect to an
    activation's input x (M, N) given its output's gradient as a product (dZ @ W of the
    next layer). For relu, x may be the activation's output (relu'(z) = [relu(z) > 0])."""
    fn = "matmul_act_backward"
    A, B, C, ta, tb, al, be = _gemm_args(fn, a, b, out, alpha, beta, trans_a, trans_b)
    code, p, p2 = _activation_spec(activation, fn)
    X = _float(x, fn, "x", A.dtype, ndim=2, contiguous=False)
    if X.shape != C.shape:
        raise ValueError(f"{_sig(fn, 'x')} must have shape {C.shape} like the product, "
                         f"got {X.shape}")
    _disjoint(C, "out", fn, [("x", X)])
    T = A.dtype.type
    _gemm_launch(fn, A, B, C, ta, tb, K.ACT_BACKWARD, X, al, be, code, T(p), T(p2))
    return C


def matmul_bias_grad(a, b, out=None, db=None, alpha=1.0, beta=0.0, db_beta=0.0,
                     trans_a=False, trans_b=False):
    """out = alpha * op(a) @ op(b) + beta * out and db = op(a).sum(axis=1) + db_beta * db in
    one launch: a Linear layer's dW and db are matmul_bias_grad(dZ, X, dW, db, trans_a=True)
    (db is not scaled by alpha). Returns (out, db)."""
    fn = "matmul_bias_grad"
    A, B, C, ta, tb, al, be = _gemm_args(fn, a, b, out, alpha, beta, trans_a, trans_b)
    dbb = _num(db_beta, fn, "db_beta")
    if db is None and dbb != 0:
        raise ValueError(f"{_sig(fn, 'db_beta')} must be 0 when 'db' is None, got {dbb}")
    D = _out(db, fn, (C.shape[0],), A.dtype, [("a", A), ("b", B), ("out", C)], name="db",
             contiguous=False)
    _gemm_launch(fn, A, B, C, ta, tb, K.ROWSUM, D, al, be, A.dtype.type(dbb))
    return C, D


# ---- activations -----------------------------------------------------------------------------

def _act_forward(fn, code, x, out, p=0.0, p2=0.0):
    X = _float(x, fn, "x")
    Y = _out(out, fn, X.shape, X.dtype, [("x", X)], inplace_first=True)
    if X.size:
        T = X.dtype.type
        _launch(fn, K.kernels(X.dtype).act_forward, _blocks(X.size, K.THREADS, K.MAX_BLOCKS),
                K.THREADS, _flat(Y), _flat(X), code, T(p), T(p2))
    return Y


def _act_backward(fn, code, dy, x, out, p=0.0, p2=0.0):
    DY = _float(dy, fn, "dy")
    X = _float(x, fn, "x", DY.dtype)
    _same_shape(DY, "dy", X, "x", fn)
    DX = _out(out, fn, X.shape, X.dtype, [("dy", DY), ("x", X)], inplace_first=True)
    if X.size:
        T = X.dtype.type
        _launch(fn, K.kernels(X.dtype).act_backward, _blocks(X.size, K.THREADS, K.MAX_BLOCKS),
                K.THREADS, _flat(DX), _flat(DY), _flat(X), code, T(p), T(p2))
    return DX


def relu(x, out=None):
    """max(x, 0) element-wise (NaN propagates)."""
    return _act_forward("relu", K.RELU, x, out)


def relu_backward(dy, x, out=None):
    """dy * (x > 0), given relu's input (or output) x."""
    return _act_backward("relu_backward", K.RELU, dy, x, out)


def leaky_relu(x, negative_slope=0.01, out=None):
    return _act_forward("leaky_relu", K.LEAKY_RELU, x, out,
                        _num(negative_slope, "leaky_relu", "negative_slope"))


def leaky_relu_backward(dy, x, negative_slope=0.01, out=None):
    return _act_backward("leaky_relu_backward", K.LEAKY_RELU, dy, x, out,
                         _num(negative_slope, "leaky_relu_backward", "negative_slope"))


def sigmoid(x, out=None):
    return _act_forward("sigmoid", K.SIGMOID, x, out)


def sigmoid_backward(dy, x, out=None):
    return _act_backward("sigmoid_backward", K.SIGMOID, dy, x, out)


def tanh(x, out=None):
    return _act_forward("tanh", K.TANH, x, out)


def tanh_backward(dy, x, out=None):
    return _act_backward("tanh_backward", K.TANH, dy, x, out)


def _gelu_code(approximate, fn):
    if approximate == "none":
        return K.GELU
    if approximate == "tanh":
        return K.GELU_TANH
    raise ValueError(f"{_sig(fn, 'approximate')} must be 'none' or 'tanh', got {approximate!r}")


def gelu(x, approximate="none", out=None):
    """x * Phi(x) (approximate='none', through erf) or its tanh approximation."""
    return _act_forward("gelu", _gelu_code(approximate, "gelu"), x, out)


def gelu_backward(dy, x, approximate="none", out=None):
    return _act_backward("gelu_backward", _gelu_code(approximate, "gelu_backward"), dy, x, out)


def silu(x, out=None):
    return _act_forward("silu", K.SILU, x, out)


def silu_backward(dy, x, out=None):
    return _act_backward("silu_backward", K.SILU, dy, x, out)


def _softplus_args(beta, threshold, fn):
    b = _num(beta, fn, "beta")
    if b == 0 or b != b:
        raise ValueError(f"{_sig(fn, 'beta')} must be a non-zero number, got {beta!r}")
    return b, _num(threshold, fn, "threshold")


def softplus(x, beta=1.0, threshold=20.0, out=None):
    """log(1 + exp(beta x)) / beta, and x itself where beta * x > threshold (as PyTorch)."""
    return _act_forward("softplus", K.SOFTPLUS, x, out,
                        *_softplus_args(beta, threshold, "softplus"))


def softplus_backward(dy, x, beta=1.0, threshold=20.0, out=None):
    return _act_backward("softplus_backward", K.SOFTPLUS, dy, x, out,
                         *_softplus_args(beta, threshold, "softplus_backward"))


# ---- softmax and bias ------------------------------------------------------------------------

def _rows(a):
    """a (..., cols) as a 2-D (rows, cols) view."""
    cols = a.shape[a.ndim - 1]         # (the simulator's shapes refuse index -1)
    return a.reshape(a.size // cols if cols else 0, cols)


def _softmax(fn, log_, x, out):
    X = _float(x, fn, "x")
    if X.ndim < 1:
        raise ValueError(f"{_sig(fn, 'x')} must have at least 1 dimension, got a scalar")
    Y = _out(out, fn, X.shape, X.dtype, [("x", X)], inplace_first=True)
    if X.size:
        X2 = _rows(X)
        _launch(fn, K.kernels(X.dtype).softmax, _blocks(X2.shape[0], K.ROWS, K.MAX_BLOCKS),
                (K.LANES, K.ROWS), _rows(Y), X2, log_)
    return Y


def _softmax_backward(fn, log_, dy, y, out):
    DY = _float(dy, fn, "dy")
    Y = _float(y, fn, "y", DY.dtype)
    _same_shape(DY, "dy", Y, "y", fn)
    if Y.ndim < 1:
        raise ValueError(f"{_sig(fn, 'y')} must have at least 1 dimension, got a scalar")
    DX = _out(out, fn, Y.shape, Y.dtype, [("dy", DY), ("y", Y)], inplace_first=True)
    if Y.size:
        Y2 = _rows(Y)
        _launch(fn, K.kernels(Y.dtype).softmax_backward,
                _blocks(Y2.shape[0], K.ROWS, K.MAX_BLOCKS), (K.LANES, K.ROWS),
                _rows(DX), _rows(DY), Y2, log_)
    return DX


def softmax(x, out=None):
    """Softmax over the last axis."""
    return _softmax("softmax", False, x, out)


def log_softmax(x, out=None):
    """Log-softmax over the last axis."""
    return _softmax("log_softmax", True, x, out)


def softmax_backward(dy, y, out=None):
    """y * (dy - sum(dy * y, -1)), y = softmax(x)."""
    return _softmax_backward("softmax_backward", False, dy, y, out)


def log_softmax_backward(dy, y, out=None):
    """dy - exp(y) * sum(dy, -1), y = log_softmax(x)."""
    return _softmax_backward("log_softmax_backward", True, dy, y, out)


def bias_add(x, bias, out=None):
    """x (N, F) + bias (F,) broadcast over rows."""
    fn = "bias_add"
    X = _float(x, fn, "x", ndim=2)
    B = _float(bias, fn, "bias", X.dtype)
    if B.shape != (X.shape[1],):
        raise ValueError(f"{_sig(fn, 'bias')} must have shape ({X.shape[1]},), got {B.shape}")
    Y = _out(out, fn, X.shape, X.dtype, [("x", X), ("bias", B)], inplace_first=True)
    if X.size:
        _launch(fn, K.kernels(X.dtype).bias_add, _blocks(X.size, K.THREADS, K.MAX_BLOCKS),
                K.THREADS, Y, X, B)
    return Y


def bias_grad(dy, out=None, beta=0.0):
    """Column sums of dy (N, F): out = dy.sum(0) + beta * out (beta != 0 needs out)."""
    fn = "bias_grad"
    DY = _float(dy, fn, "dy", ndim=2, contiguous=False)
    be = _num(beta, fn, "beta")
    if out is None and be != 0:
        raise ValueError(f"{_sig(fn, 'beta')} must be 0 when 'out' is None, got {be}")
    DB = _out(out, fn, (DY.shape[1],), DY.dtype, [("dy", DY)], contiguous=False)
    if DY.shape[1]:
        _launch(fn, K.kernels(DY.dtype).bias_grad, -(-DY.shape[1] // K.LANES),
                (K.LANES, K.LANES), DB, DY, DY.dtype.type(be))
    return DB


# ---- losses ----------------------------------------------------------------------------------

def _check_reduction(reduction, fn, allow_none=True):
    allowed = _REDUCTIONS if allow_none else _REDUCTIONS[:2]
    if reduction not in allowed:
        names = ", ".join(repr(r) for r in allowed[:-1]) + f" or {allowed[-1]!r}"
        raise ValueError(f"{_sig(fn, 'reduction')} must be {names}, got {reduction!r}")


def _value_out(value_out, fn):
    if value_out is None:
        return cuda.device_array(1, np.float64)
    v = _device(value_out, fn, "value_out")
    if v.dtype != np.float64 or v.shape != (1,):
        raise ValueError(f"{_sig(fn, 'value_out')} must be a float64 device array of shape "
                         f"(1,), got dtype {v.dtype} shape {v.shape}")
    return v


def _empty_value(value, reduction):
    """The value of an empty reduction ('mean' of nothing is NaN, as fastnn.ops)."""
    value.copy_to_device(np.array([np.nan if reduction == "mean" else 0.0]))
    return value


def _elementwise_loss(fn, kind, pred, target, reduction, delta, want_value, want_grad,
                      grad_output=None, pos_weight=None, grad_out=None, value_out=None,
                      names=("pred", "target")):
    """Value (device (1,) float64, or per item for 'none') and/or gradient of an element-wise
    loss, in one launch. Returns (value, grad) with None for what was not asked."""
    _check_reduction(reduction, fn, allow_none=not (want_value and want_grad))
    P = _float(pred, fn, names[0])
    Tg = _float(target, fn, names[1], P.dtype)
    _same_shape(P, names[0], Tg, names[1], fn)
    T = P.dtype.type
    n = P.size
    cols = P.shape[P.ndim - 1] if P.ndim else 1
    PW = None
    if pos_weight is not None:
        PW = _float(pos_weight, fn, "pos_weight", P.dtype)
        if PW.shape != (cols,):
            raise ValueError(f"{_sig(fn, 'pos_weight')} must have shape ({cols},) (one weight "
                             f"per column of '{names[0]}'), got {PW.shape}")
    GO = None
    if want_grad and reduction == "none":
        if grad_output is None:
            raise ValueError(f"{_sig(fn, 'grad_output')} is required with reduction='none' "
                             f"(the gradient of each item's loss), got None")
        GO = _float(grad_output, fn, "grad_output", P.dtype)
        _same_shape(P, names[0], GO, "grad_output", fn)
    inputs = [(names[0], P), (names[1], Tg), ("pos_weight", PW), ("grad_output", GO)]
    G = _out(grad_out, fn, P.shape, P.dtype, inputs, name="grad_out") if want_grad else None
    items = want_value and reduction == "none"
    L = cuda.device_array(P.shape, P.dtype) if items else None
    value = _value_out(value_out, fn) if want_value and not items else None
    if n == 0:
        return (L if items else value and _empty_value(value, reduction)), G
    ns = K.kernels(P.dtype)
    scale = T(1.0 / n if reduction == "mean" else 1.0)
    grid = _blocks(n, K.THREADS, K.RED_BLOCKS)
    Pf, Tf = _flat(P), _flat(Tg)
    Gf = _flat(G) if G is not None else Pf
    if not items and GO is None and PW is None:
        _launch(fn, ns.loss, grid, K.THREADS, Pf, Tf, Gf,
                value if value is not None else _work(), _work(), kind, T(delta), scale,
                value is not None, G is not None, reduction == "mean")
    else:
        _launch(fn, ns.loss_full, grid, K.THREADS, Pf, Tf, Gf,
                _flat(L) if items else Pf, _flat(GO) if GO is not None else Pf,
                PW if PW is not None else Pf, value if value is not None else _work(),
                _work(), kind, T(delta), scale, cols, value is not None, G is not None,
                items, GO is not None, PW is not None, reduction == "mean")
    return (L if items else value), G


def _delta(delta, fn):
    d = _num(delta, fn, "delta")
    if not d > 0:
        raise ValueError(f"{_sig(fn, 'delta')} must be > 0, got {delta!r}")
    return d


def mse_loss(pred, target, reduction="mean"):
    """Mean (or sum: device (1,) float64; or per element) of (pred - target)**2."""
    return _elementwise_loss("mse_loss", K.MSE, pred, target, reduction, 0.0, True, False)[0]


def mse_loss_backward(pred, target, reduction="mean", grad_output=None, out=None):
    """2 (pred - target) scaled by the reduction ('none': times grad_output)."""
    return _elementwise_loss("mse_loss_backward", K.MSE, pred, target, reduction, 0.0, False,
                             True, grad_output, grad_out=out)[1]


def mse_loss_with_grad(pred, target, reduction="mean", grad_out=None, value_out=None):
    """(value, grad) of mse_loss in one launch ('mean' or 'sum')."""
    return _elementwise_loss("mse_loss_with_grad", K.MSE, pred, target, reduction, 0.0, True,
                             True, grad_out=grad_out, value_out=value_out)


def l1_loss(pred, target, reduction="mean"):
    """Mean (or sum, or per element) of |pred - target|."""
    return _elementwise_loss("l1_loss", K.L1, pred, target, reduction, 0.0, True, False)[0]


def l1_loss_backward(pred, target, reduction="mean", grad_output=None, out=None):
    """sign(pred - target) scaled by the reduction (0 where pred == target)."""
    return _elementwise_loss("l1_loss_backward", K.L1, pred, target, reduction, 0.0, False,
                             True, grad_output, grad_out=out)[1]


def l1_loss_with_grad(pred, target, reduction="mean", grad_out=None, value_out=None):
    return _elementwise_loss("l1_loss_with_grad", K.L1, pred, target, reduction, 0.0, True,
                             True, grad_out=grad_out, value_out=value_out)


def huber_loss(pred, target, delta=1.0, reduction="mean"):
    """0.5 d**2 where |d| < delta, else delta * (|d| - 0.5 delta); d = pred - target."""
    fn = "huber_loss"
    return _elementwise_loss(fn, K.HUBER, pred, target, reduction, _delta(delta, fn), True,
                             False)[0]


def huber_loss_backward(pred, target, delta=1.0, reduction="mean", grad_output=None,
                        out=None):
    fn = "huber_loss_backward"
    return _elementwise_loss(fn, K.HUBER, pred, target, reduction, _delta(delta, fn), False,
                             True, grad_output, grad_out=out)[1]


def huber_loss_with_grad(pred, target, delta=1.0, reduction="mean", grad_out=None,
                         value_out=None):
    fn = "huber_loss_with_grad"
    return _elementwise_loss(fn, K.HUBER, pred, target, reduction, _delta(delta, fn), True,
                             True, grad_out=grad_out, value_out=value_out)


_BCE_NAMES = ("logits", "target")


def binary_cross_entropy_with_logits(logits, target, pos_weight=None, reduction="mean"):
    """As torch.nn.functional.binary_cross_entropy_with_logits (pos_weight: one weight per
    class, the last axis)."""
    return _elementwise_loss("binary_cross_entropy_with_logits", K.BCE, logits, target,
                             reduction, 0.0, True, False, pos_weight=pos_weight,
                             names=_BCE_NAMES)[0]


def binary_cross_entropy_with_logits_backward(logits, target, pos_weight=None,
                                              reduction="mean", grad_output=None, out=None):
    return _elementwise_loss("binary_cross_entropy_with_logits_backward", K.BCE, logits,
                             target, reduction, 0.0, False, True, grad_output, pos_weight,
                             grad_out=out, names=_BCE_NAMES)[1]


def binary_cross_entropy_with_logits_with_grad(logits, target, pos_weight=None,
                                               reduction="mean", grad_out=None,
                                               value_out=None):
    return _elementwise_loss("binary_cross_entropy_with_logits_with_grad", K.BCE, logits,
                             target, reduction, 0.0, True, True, pos_weight=pos_weight,
                             grad_out=grad_out, value_out=value_out, names=_BCE_NAMES)


def _labels(labels, fn, rows, cols, check):
    Y = _device(labels, fn, "labels")
    if Y.dtype.kind not in "iu" or Y.dtype.itemsize not in (4, 8):
        raise TypeError(f"{_sig(fn, 'labels')} must hold int32 or int64 class indices, "
                        f"got dtype {Y.dtype}")
    if Y.shape != (rows,):
        raise ValueError(f"{_sig(fn, 'labels')} must have shape ({rows},) (one label per row "
                         f"of 'logits'), got {Y.shape}")
    if check and rows:
        host = Y.copy_to_host()
        bad = np.flatnonzero((host < 0) | (host >= cols))
        if bad.size:
            raise ValueError(f"{_sig(fn, 'labels')} must be class indices in [0, {cols}), "
                             f"got {host[bad[0]]} at position {bad[0]}")
    return Y


def _cross_entropy(fn, logits, labels, weight, label_smoothing, reduction, want_value,
                   want_grad, grad_output=None, grad_out=None, value_out=None,
                   check_labels=True):
    _check_reduction(reduction, fn, allow_none=not (want_value and want_grad))
    Z = _float(logits, fn, "logits", ndim=2)
    rows, cols = Z.shape
    if cols == 0:
        raise ValueError(f"{_sig(fn, 'logits')} must have at least one class column, "
                         f"got shape {Z.shape}")
    Y = _labels(labels, fn, rows, cols, check_labels)
    W = None
    if weight is not None:
        W = _float(weight, fn, "weight", Z.dtype)
        if W.shape != (cols,):
            raise ValueError(f"{_sig(fn, 'weight')} must have shape ({cols},) (one weight per "
                             f"class), got {W.shape}")
    eps = _num(label_smoothing, fn, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"{_sig(fn, 'label_smoothing')} must be in [0, 1], "
                         f"got {label_smoothing!r}")
    GO = None
    if want_grad and reduction == "none":
        if grad_output is None:
            raise ValueError(f"{_sig(fn, 'grad_output')} is required with reduction='none' "
                             f"(the gradient of each row's loss), got None")
        GO = _float(grad_output, fn, "grad_output", Z.dtype)
        if GO.shape != (rows,):
            raise ValueError(f"{_sig(fn, 'grad_output')} must have shape ({rows},), "
                             f"got {GO.shape}")
    inputs = [("logits", Z), ("labels", Y), ("weight", W), ("grad_output", GO)]
    G = _out(grad_out, fn, Z.shape, Z.dtype, inputs, name="grad_out") if want_grad else None
    rows_out = want_value and reduction == "none"
    L = cuda.device_array(rows, Z.dtype) if rows_out else None
    value = _value_out(value_out, fn) if want_value and not rows_out else None
    if rows == 0:
        return (L if rows_out else value and _empty_value(value, reduction)), G
    ns = K.kernels(Z.dtype)
    T = Z.dtype.type
    mean = reduction == "mean"
    grid = _blocks(rows, K.ROWS, K.RED_BLOCKS)
    block = (K.LANES, K.ROWS)
    from_work = G is not None and mean and W is not None
    if from_work:     # the gradient's divisor sum_r w[y_r] is needed before any row is done
        _launch(fn, ns.label_weight_sum, 1, K.THREADS, Y, W, _work())
    scale = T(1.0 / rows if mean else 1.0)
    vout = value if value is not None else _work()
    if not rows_out and GO is None and W is None:
        _launch(fn, ns.cross_entropy, grid, block, Z, Y, G if G is not None else Z, vout,
                _work(), T(eps), scale, value is not None, G is not None, mean)
    else:
        _launch(fn, ns.cross_entropy_full, grid, block, Z, Y, W if W is not None else Z[0],
                G if G is not None else Z, L if rows_out else Z[0],
                GO if GO is not None else Z[0], vout, _work(), T(eps), scale,
                value is not None, G is not None, rows_out, W is not None, GO is not None,
                from_work, mean)
    return (L if rows_out else value), G


def cross_entropy(logits, labels, weight=None, label_smoothing=0.0, reduction="mean",
                  check_labels=True):
    """Softmax cross-entropy of logits (N, C) against integer labels (N,), as
    torch.nn.functional.cross_entropy: class weights, label smoothing, and 'mean' divided by
    the sum of the label weights (N without weights). Returns a (1,) float64 device array
    ('none': the per-row losses)."""
    return _cross_entropy("cross_entropy", logits, labels, weight, label_smoothing, reduction,
                          True, False, check_labels=check_labels)[0]


def cross_entropy_backward(logits, labels, weight=None, label_smoothing=0.0, reduction="mean",
                           grad_output=None, out=None, check_labels=True):
    """d cross_entropy / d logits. reduction='none' needs grad_output (one value per row)."""
    return _cross_entropy("cross_entropy_backward", logits, labels, weight, label_smoothing,
                          reduction, False, True, grad_output, grad_out=out,
                          check_labels=check_labels)[1]


def cross_entropy_with_grad(logits, labels, weight=None, label_smoothing=0.0,
                            reduction="mean", grad_out=None, value_out=None,
                            check_labels=True):
    """(value, d value / d logits) in one kernel ('mean' or 'sum'; two launches for 'mean'
    with class weights, whose divisor is summed first)."""
    return _cross_entropy("cross_entropy_with_grad", logits, labels, weight, label_smoothing,
                          reduction, True, True, grad_out=grad_out, value_out=value_out,
                          check_labels=check_labels)


# ---- optimizers ------------------------------------------------------------------------------

def _opt_args(fn, param, grad, states):
    """Validated (P, G, *states) flattened to 1-D; None stays None."""
    P = _float(param, fn, "param")
    G = _float(grad, fn, "grad", P.dtype)
    if G.size != P.size:
        raise ValueError(f"{_sig(fn, 'grad')} must have {P.size} elements like 'param', "
                         f"got shape {G.shape}")
    if _overlap(P, G):
        raise ValueError(f"{_sig(fn, 'grad')} overlaps 'param' in memory")
    written = [("param", P)]
    out = [_flat(P), _flat(G)]
    for name, s in states:
        if s is None:
            out.append(None)
            continue
        S = _float(s, fn, name, P.dtype)
        if S.size != P.size:
            raise ValueError(f"{_sig(fn, name)} must have {P.size} elements like 'param', "
                             f"got shape {S.shape}")
        for wname, W in written + [("grad", G)]:
            if _overlap(S, W):
                raise ValueError(f"{_sig(fn, name)} overlaps '{wname}' in memory")
        written.append((name, S))
        out.append(_flat(S))
    return out


def _opt_launch(fn, kernel, P, *args):
    if P.size:
        _launch(fn, kernel, _blocks(P.size, K.THREADS, K.MAX_BLOCKS), K.THREADS, P, *args)


def sgd_step(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, maximize=False, first_step=False):
    """One torch.optim.SGD update of param in place (momentum_buffer needed if momentum != 0;
    first_step: the buffer is initialised to the gradient, as PyTorch does)."""
    fn = "sgd_step"
    P, G, B = _opt_args(fn, param, grad, [("momentum_buffer", momentum_buffer)])
    mu, damp = _num(momentum, fn, "momentum"), _num(dampening, fn, "dampening")
    lr_, wd = _num(lr, fn, "lr"), _num(weight_decay, fn, "weight_decay")
    if mu != 0 and B is None:
        raise ValueError(f"{_sig(fn, 'momentum_buffer')} is required when momentum != 0")
    if nesterov and (mu <= 0 or damp != 0):
        raise ValueError(f"{_sig(fn, 'nesterov')} requires momentum > 0 and dampening == 0, "
                         f"got momentum={mu}, dampening={damp}")
    T = P.dtype.type
    _opt_launch(fn, K.kernels(P.dtype).sgd, P, G, B if B is not None else P, T(lr_), T(mu),
                T(damp), T(wd), bool(nesterov), bool(maximize), bool(first_step))


def _step(step, fn):
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{_sig(fn, 'step')} must be an int >= 1 (the count including this "
                         f"update), got {step!r}")
    return int(step)


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
              beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
              amsgrad=False, maximize=False):
    """One torch.optim.Adam update (AdamW with decoupled_weight_decay=True) in place.
    step counts updates including this one (1 on the first call)."""
    fn = "adamw_step" if decoupled_weight_decay else "adam_step"
    P, G, M, V, VM = _opt_args(fn, param, grad, [("exp_avg", exp_avg),
                                                 ("exp_avg_sq", exp_avg_sq),
                                                 ("max_exp_avg_sq", max_exp_avg_sq)])
    if M is None or V is None:
        raise ValueError(f"{fn}: arguments 'exp_avg' and 'exp_avg_sq' are required")
    if amsgrad and VM is None:
        raise ValueError(f"{_sig(fn, 'max_exp_avg_sq')} is required when amsgrad=True")
    s = _step(step, fn)
    b1, b2 = _num(beta1, fn, "beta1"), _num(beta2, fn, "beta2")
    for name, v in (("beta1", b1), ("beta2", b2)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{_sig(fn, name)} must be in [0, 1), got {v}")
    lr_, e = _num(lr, fn, "lr"), _num(eps, fn, "eps")
    wd = _num(weight_decay, fn, "weight_decay")
    step_size = lr_ / (1 - b1 ** s)
    bc2_sqrt = math.sqrt(1 - b2 ** s)
    T = P.dtype.type
    _opt_launch(fn, K.kernels(P.dtype).adam, P, G, M, V, VM if VM is not None else M, T(lr_),
                T(b1), T(b2), T(e), T(wd), bool(decoupled_weight_decay), bool(amsgrad),
                bool(maximize), T(step_size), T(bc2_sqrt))


def adamw_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
               beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, amsgrad=False,
               maximize=False):
    """One torch.optim.AdamW update in place (decoupled weight decay, default 0.01)."""
    adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr, beta1=beta1,
              beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True,
              amsgrad=amsgrad, maximize=maximize)


def rmsprop_step(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *, lr=1e-2,
                 alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False):
    """One torch.optim.RMSprop update in place."""
    fn = "rmsprop_step"
    P, G, SQ, B, GA = _opt_args(fn, param, grad, [("square_avg", square_avg),
                                                  ("momentum_buffer", momentum_buffer),
                                                  ("grad_avg", grad_avg)])
    if SQ is None:
        raise ValueError(f"{_sig(fn, 'square_avg')} is required")
    mu = _num(momentum, fn, "momentum")
    if mu > 0 and B is None:
        raise ValueError(f"{_sig(fn, 'momentum_buffer')} is required when momentum > 0")
    if centered and GA is None:
        raise ValueError(f"{_sig(fn, 'grad_avg')} is required when centered=True")
    lr_, al = _num(lr, fn, "lr"), _num(alpha, fn, "alpha")
    e, wd = _num(eps, fn, "eps"), _num(weight_decay, fn, "weight_decay")
    T = P.dtype.type
    _opt_launch(fn, K.kernels(P.dtype).rmsprop, P, G, SQ, B if B is not None else SQ,
                GA if GA is not None else SQ, T(lr_), T(al), T(e), T(wd), T(mu),
                bool(centered), bool(maximize))


def adagrad_step(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False):
    """One torch.optim.Adagrad update in place; step counts updates including this one."""
    fn = "adagrad_step"
    P, G, SS = _opt_args(fn, param, grad, [("state_sum", state_sum)])
    if SS is None:
        raise ValueError(f"{_sig(fn, 'state_sum')} is required")
    s = _step(step, fn)
    lr_, dec = _num(lr, fn, "lr"), _num(lr_decay, fn, "lr_decay")
    wd, e = _num(weight_decay, fn, "weight_decay"), _num(eps, fn, "eps")
    clr = lr_ / (1 + (s - 1) * dec)
    T = P.dtype.type
    _opt_launch(fn, K.kernels(P.dtype).adagrad, P, G, SS, T(clr), T(wd), T(e), bool(maximize))


def copy(x, out=None):
    """out = x (device to device, one element-wise launch): the bandwidth yardstick."""
    fn = "copy"
    X = _float(x, fn, "x")
    Y = _out(out, fn, X.shape, X.dtype, [("x", X)])
    if X.size:
        _launch(fn, K.kernels(X.dtype).copy, _blocks(X.size, K.THREADS, K.MAX_BLOCKS),
                K.THREADS, _flat(Y), _flat(X))
    return Y


# ---- mini-batch gathering and metric sums (the GPU training loop, fastnn.cuda.train) -------

@cuda.jit
def _gather_rows_kernel(src, index, out, cols):
    """out (flat, rows * cols) = src rows index[r] (src flat, C order)."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        r = i // cols
        out[i] = src[index[r] * cols + (i - r * cols)]


def _small_block(n):
    """Threads per block for a launch over n items: a warp multiple, at most THREADS."""
    return max(32, min(K.THREADS, -(-n // 32) * 32))


def gather_rows(src, index, out=None, check_index=True):
    """out[r] = src[index[r]] for every r: the rows of a mini-batch gathered on the device in
    one launch. src: a C-contiguous device array (1-D: elements, N-D: rows along axis 0) of
    any numeric dtype; index: an int32/int64 1-D device array; out: (len(index),
    *src.shape[1:]), src's dtype. check_index=True copies index to the host and raises
    ValueError naming the first value outside [0, len(src)) (a training loop passes False for
    an index it built itself; an out-of-range index then reads undefined memory)."""
    fn = "gather_rows"
    S = _device(src, fn, "src")
    if S.ndim < 1 or not S.is_c_contiguous():
        raise ValueError(f"{_sig(fn, 'src')} must be a C-contiguous array with at least one "
                         f"axis, got shape {S.shape} strides {S.strides}")
    idx = _device(index, fn, "index")
    if idx.dtype.kind not in "iu" or idx.ndim != 1:
        raise TypeError(f"{_sig(fn, 'index')} must be a 1-D int32/int64 array, got dtype "
                        f"{idx.dtype} shape {idx.shape}")
    rows = S.shape[0]
    if check_index and idx.size:
        host = idx.copy_to_host()
        bad = np.flatnonzero((host < 0) | (host >= rows))
        if bad.size:
            raise ValueError(f"{_sig(fn, 'index')} must hold row numbers in [0, {rows}), got "
                             f"{host[bad[0]]} at position {bad[0]}")
    O = _out(out, fn, (idx.size,) + tuple(S.shape[1:]), S.dtype, [("src", S), ("index", idx)])
    if O.size:
        cols = O.size // idx.size
        _launch(fn, _gather_rows_kernel, _blocks(O.size, K.THREADS, K.MAX_BLOCKS),
                _small_block(O.size), _flat(S), idx, _flat(O), cols)
    return O


@cuda.jit
def _correct_count_kernel(Z, Y, acc):
    r = cuda.grid(1)
    if r < Z.shape[0]:
        best = 0
        nan = Z[r, 0] != Z[r, 0]
        for c in range(1, Z.shape[1]):
            if Z[r, c] != Z[r, c]:
                nan = True            # a row holding a NaN never counts as correct
            elif Z[r, c] > Z[r, best]:
                best = c
        if not nan and best == Y[r]:
            cuda.atomic.add(acc, 0, 1.0)


@cuda.jit
def _row_error_kernel(P, T, acc, squared):
    r = cuda.grid(1)
    if r < P.shape[0]:
        s = 0.0
        for c in range(P.shape[1]):
            d = np.float64(P[r, c]) - np.float64(T[r, c])
            s += d * d if squared else abs(d)
        cuda.atomic.add(acc, 0, s / P.shape[1])


def _acc_out(acc, fn):
    a = _device(acc, fn, "acc")
    if a.dtype != np.float64 or a.shape != (1,):
        raise ValueError(f"{_sig(fn, 'acc')} must be a float64 device array of shape (1,), "
                         f"got dtype {a.dtype} shape {a.shape}")
    return a


def correct_count_add(logits, labels, acc):
    """acc[0] += the number of rows of logits (N, C) whose first maximum is at labels[r]
    (numpy's argmax), in one launch; a row holding a NaN never counts. acc: a float64 (1,)
    device array. Returns acc."""
    fn = "correct_count_add"
    Z = _float(logits, fn, "logits", ndim=2, contiguous=False)
    Y = _labels(labels, fn, Z.shape[0], Z.shape[1], False)
    A = _acc_out(acc, fn)
    if Z.shape[0] and Z.shape[1]:
        b = _small_block(Z.shape[0])
        _launch(fn, _correct_count_kernel, -(-Z.shape[0] // b), b, Z, Y, A)
    return A


def row_error_add(pred, target, acc, squared=False):
    """acc[0] += sum over rows of mean(|pred - target|) (squared=True: of the squares) for
    2-D pred and target, in float64, in one launch: the sums behind fit's 'mae' and 'mse'
    metrics. Returns acc."""
    fn = "row_error_add"
    P = _float(pred, fn, "pred", ndim=2, contiguous=False)
    Tg = _float(target, fn, "target", P.dtype, ndim=2, contiguous=False)
    _same_shape(P, "pred", Tg, "target", fn)
    A = _acc_out(acc, fn)
    if P.shape[0] and P.shape[1]:
        b = _small_block(P.shape[0])
        _launch(fn, _row_error_kernel, -(-P.shape[0] // b), b, P, Tg, A, bool(squared))
    return A
