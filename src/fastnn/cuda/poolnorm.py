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
import math

import numpy as np
from numba import cuda, float64 as nb_float64

from . import _count_launch, require

require()

BLOCK = 128          # threads per channel (batch norm) or row (layer norm); a power of two
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "batch_norm",
           "batch_norm_backward", "layer_norm", "layer_norm_backward"]


# ---- kernels -------------------------------------------------------------------------------------

@cuda.jit
def _maxpool_fwd(y, idx, x, total, H, W, OH, OW, kh, kw, sh, sw, ph, pw):
    o = cuda.grid(1)
    if o >= total:
        return
    p, r = o // (OH * OW), o % (OH * OW)
    i, j = r // OW, r % OW
    h0, w0 = max(i * sh - ph, 0), max(j * sw - pw, 0)
    h1, w1 = min(i * sh - ph + kh, H), min(j * sw - pw + kw, W)
    best = x[p * H * W + h0 * W + w0]
    arg = h0 * W + w0
    for a in range(h0, h1):
        for b in range(w0, w1):
            v = x[p * H * W + a * W + b]
            if v > best or v != v:
                best = v
                arg = a * W + b
    y[o] = best
    idx[o] = arg


@cuda.jit
def _maxpool_bwd(dx, dy, idx, planes, HW, OHW):
    p = cuda.grid(1)
    if p >= planes:
        return
    for i in range(HW):
        dx[p * HW + i] = 0
    for o in range(OHW):
        dx[p * HW + idx[p * OHW + o]] += dy[p * OHW + o]


@cuda.jit(device=True)
def _avg_window(i, j, H, W, kh, kw, sh, sw, ph, pw, cip):
    h0, w0 = max(i * sh - ph, 0), max(j * sw - pw, 0)
    h1, w1 = min(i * sh - ph + kh, H), min(j * sw - pw + kw, W)
    div = float(kh * kw) if cip else float((h1 - h0) * (w1 - w0))
    return h0, h1, w0, w1, div


@cuda.jit
def _avgpool_fwd(y, x, total, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cip):
    o = cuda.grid(1)
    if o >= total:
        return
    p, r = o // (OH * OW), o % (OH * OW)
    i, j = r // OW, r % OW
    h0, h1, w0, w1, div = _avg_window(i, j, H, W, kh, kw, sh, sw, ph, pw, cip)
    acc = 0.0
    for a in range(h0, h1):
        for b in range(w0, w1):
            acc += x[p * H * W + a * W + b]
    y[o] = acc / div


@cuda.jit
def _avgpool_bwd(dx, dy, planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw, cip):
    p = cuda.grid(1)
    if p >= planes:
        return
    for i in range(H * W):
        dx[p * H * W + i] = 0
    for i in range(OH):
        for j in range(OW):
            h0, h1, w0, w1, div = _avg_window(i, j, H, W, kh, kw, sh, sw, ph, pw, cip)
            v = dy[p * OH * OW + i * OW + j] / div
            for a in range(h0, h1):
                for b in range(w0, w1):
                    dx[p * H * W + a * W + b] += v


@cuda.jit
def _gap_fwd(y, x, planes, HW):
    p = cuda.grid(1)
    if p < planes:
        acc = 0.0
        for i in range(HW):
            acc += x[p * HW + i]
        y[p] = acc / HW


@cuda.jit
def _gap_bwd(dx, dy, total, HW):
    o = cuda.grid(1)
    if o < total:
        dx[o] = dy[o // HW] / HW


@cuda.jit(device=True)
def _block_sum(shared, t):
    """Tree sum of shared[0:BLOCK] in a fixed order; every thread gets the total."""
    cuda.syncthreads()
    s = BLOCK // 2
    while s > 0:
        if t < s:
            shared[t] += shared[t + s]
        cuda.syncthreads()
        s //= 2
    total = shared[0]
    cuda.syncthreads()
    return total


@cuda.jit
def _bn_fwd(y, smean, sinv, rm, rv, x, g, b, N, C, HW, training, has_running, affine,
            momentum, eps):
    ch = cuda.blockIdx.x
    t = cuda.threadIdx.x
    sh = cuda.shared.array(BLOCK, nb_float64)
    M = N * HW
    if training:
        acc = 0.0
        for k in range(t, M, BLOCK):
            acc += x[((k // HW) * C + ch) * HW + k % HW]
        sh[t] = acc
        mean = _block_sum(sh, t) / M
        acc = 0.0
        for k in range(t, M, BLOCK):
            d = x[((k // HW) * C + ch) * HW + k % HW] - mean
            acc += d * d
        sh[t] = acc
        var = _block_sum(sh, t) / M
        invstd = 1.0 / math.sqrt(var + eps)
        if t == 0 and has_running:
            rm[ch] = (1.0 - momentum) * rm[ch] + momentum * mean
            rv[ch] = (1.0 - momentum) * rv[ch] + momentum * (var * M / (M - 1))
    else:
        mean = nb_float64(rm[ch])
        invstd = 1.0 / math.sqrt(nb_float64(rv[ch]) + eps)
    if t == 0:
        smean[ch] = mean
        sinv[ch] = invstd
    scale = invstd * (nb_float64(g[ch]) if affine else 1.0)
    shift = nb_float64(b[ch]) if affine else 0.0
    for k in range(t, M, BLOCK):
        at = ((k // HW) * C + ch) * HW + k % HW
        y[at] = (x[at] - mean) * scale + shift


@cuda.jit
def _bn_bwd(dx, dw, db, dy, x, smean, sinv, g, N, C, HW, training, affine):
    ch = cuda.blockIdx.x
    t = cuda.threadIdx.x
    sh = cuda.shared.array(BLOCK, nb_float64)
    M = N * HW
    mean = smean[ch]
    invstd = nb_float64(sinv[ch])
    acc = 0.0
    for k in range(t, M, BLOCK):
        acc += dy[((k // HW) * C + ch) * HW + k % HW]
    sh[t] = acc
    sdy = _block_sum(sh, t)
    acc = 0.0
    for k in range(t, M, BLOCK):
        at = ((k // HW) * C + ch) * HW + k % HW
        acc += nb_float64(dy[at]) * nb_float64(x[at] - mean)
    sh[t] = acc
    sdyx = _block_sum(sh, t)
    if t == 0:
        dw[ch] = sdyx * invstd
        db[ch] = sdy
    a = (nb_float64(g[ch]) if affine else 1.0) * invstd
    k1 = -a * invstd * invstd * sdyx / M if training else 0.0
    off = -a * sdy / M if training else 0.0
    for k in range(t, M, BLOCK):
        at = ((k // HW) * C + ch) * HW + k % HW
        dx[at] = dy[at] * a + nb_float64(x[at] - mean) * k1 + off


@cuda.jit
def _ln_fwd(y, smean, srstd, x, w, b, D, affine_w, affine_b, eps):
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    sh = cuda.shared.array(BLOCK, nb_float64)
    acc = 0.0
    for j in range(t, D, BLOCK):
        acc += x[r * D + j]
    sh[t] = acc
    mean = _block_sum(sh, t) / D
    acc = 0.0
    for j in range(t, D, BLOCK):
        d = x[r * D + j] - mean
        acc += d * d
    sh[t] = acc
    rstd = 1.0 / math.sqrt(_block_sum(sh, t) / D + eps)
    if t == 0:
        smean[r] = mean
        srstd[r] = rstd
    for j in range(t, D, BLOCK):
        v = (x[r * D + j] - mean) * rstd
        if affine_w:
            v = v * w[j]
        if affine_b:
            v = v + b[j]
        y[r * D + j] = v


@cuda.jit
def _ln_bwd_rows(dx, dy, x, smean, srstd, w, D, affine_w):
    r = cuda.blockIdx.x
    t = cuda.threadIdx.x
    sh = cuda.shared.array(BLOCK, nb_float64)
    mu, rs = nb_float64(smean[r]), nb_float64(srstd[r])
    a1 = 0.0
    for j in range(t, D, BLOCK):
        a1 += nb_float64(dy[r * D + j]) * (nb_float64(w[j]) if affine_w else 1.0)
    sh[t] = a1
    mg = _block_sum(sh, t) / D
    a2 = 0.0
    for j in range(t, D, BLOCK):
        gj = nb_float64(dy[r * D + j]) * (nb_float64(w[j]) if affine_w else 1.0)
        a2 += gj * (x[r * D + j] - mu) * rs
    sh[t] = a2
    mgx = _block_sum(sh, t) / D
    for j in range(t, D, BLOCK):
        gj = nb_float64(dy[r * D + j]) * (nb_float64(w[j]) if affine_w else 1.0)
        dx[r * D + j] = rs * (gj - mg - (x[r * D + j] - mu) * rs * mgx)


@cuda.jit
def _ln_bwd_cols(dw, db, dy, x, smean, srstd, rows, D):
    j = cuda.grid(1)
    if j >= D:
        return
    aw = 0.0
    ab = 0.0
    for r in range(rows):
        ab += dy[r * D + j]
        aw += nb_float64(dy[r * D + j]) * (x[r * D + j] - nb_float64(smean[r])) * srstd[r]
    dw[j] = aw
    db[j] = ab


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
