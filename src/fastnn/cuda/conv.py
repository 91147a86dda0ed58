"""2-D convolution on the GPU (Numba CUDA): fastnn.ops.conv2d / conv2d_backward on device
arrays, NCHW, float32 and float64, with the same arguments, checks and semantics.

These are direct kernels, one CUDA thread per output element, each summing its terms in a
fixed order (so results do not depend on the launch configuration): the forward over
(c, r, s), the input gradient over (r, s, c_out) by gathering (no atomics), the weight
gradient over (batch, i, j), the bias gradient over (batch, i, j). Sums are accumulated in
float64 whatever the dtype. They are the reference for the GPU path, small and exact, not
yet the implicit-GEMM tiling of the CPU kernels.
"""
import math

from numba import cuda

from . import _count_launch, require
from .ops import _float
from .._kernels import _conv_setup

require()

__all__ = ["conv2d", "conv2d_backward"]

_THREADS = 128


@cuda.jit
def _forward(y, x, w, b, has_bias, sh, sw, ph, pw, dh, dw, cig, cog):
    idx = cuda.grid(1)
    n, cout, oh, ow = y.shape
    if idx >= n * cout * oh * ow:
        return
    j = idx % ow
    i = (idx // ow) % oh
    co = (idx // (ow * oh)) % cout
    bb = idx // (ow * oh * cout)
    c0 = (co // cog) * cig
    h, wd = x.shape[2], x.shape[3]
    acc = 0.0
    for c in range(cig):
        for r in range(w.shape[2]):
            ih = i * sh - ph + r * dh
            if ih < 0 or ih >= h:
                continue
            for s in range(w.shape[3]):
                iw = j * sw - pw + s * dw
                if iw >= 0 and iw < wd:
                    acc += w[co, c, r, s] * x[bb, c0 + c, ih, iw]
    if has_bias:
        acc += b[co]
    y[bb, co, i, j] = acc


@cuda.jit
def _backward_data(dx, dy, w, sh, sw, ph, pw, dh, dw, cig, cog):
    idx = cuda.grid(1)
    n, cin, h, wd = dx.shape
    if idx >= n * cin * h * wd:
        return
    iw = idx % wd
    ih = (idx // wd) % h
    c = (idx // (wd * h)) % cin
    bb = idx // (wd * h * cin)
    gr = c // cig
    cl = c % cig
    oh, ow = dy.shape[2], dy.shape[3]
    acc = 0.0
    for r in range(w.shape[2]):
        ti = ih + ph - r * dh
        if ti < 0 or ti % sh != 0 or ti // sh >= oh:
            continue
        i = ti // sh
        for s in range(w.shape[3]):
            tj = iw + pw - s * dw
            if tj < 0 or tj % sw != 0 or tj // sw >= ow:
                continue
            j = tj // sw
            for co in range(gr * cog, (gr + 1) * cog):
                acc += w[co, cl, r, s] * dy[bb, co, i, j]
    dx[bb, c, ih, iw] = acc


@cuda.jit
def _backward_weight(dw_, dy, x, sh, sw, ph, pw, dh, dw, cig, cog):
    idx = cuda.grid(1)
    cout, _, kh, kw = dw_.shape
    if idx >= cout * cig * kh * kw:
        return
    s = idx % kw
    r = (idx // kw) % kh
    c = (idx // (kw * kh)) % cig
    co = idx // (kw * kh * cig)
    c0 = (co // cog) * cig
    n, oh, ow = dy.shape[0], dy.shape[2], dy.shape[3]
    h, wd = x.shape[2], x.shape[3]
    acc = 0.0
    for bb in range(n):
        for i in range(oh):
            ih = i * sh - ph + r * dh
            if ih < 0 or ih >= h:
                continue
            for j in range(ow):
                iw = j * sw - pw + s * dw
                if iw >= 0 and iw < wd:
                    acc += dy[bb, co, i, j] * x[bb, c0 + c, ih, iw]
    dw_[co, c, r, s] = acc


@cuda.jit
def _backward_bias(db, dy):
    co = cuda.grid(1)
    if co >= db.shape[0]:
        return
    acc = 0.0
    for bb in range(dy.shape[0]):
        for i in range(dy.shape[2]):
            for j in range(dy.shape[3]):
                acc += dy[bb, co, i, j]
    db[co] = acc


def _launch(kernel, size, *args):
    if size:
        kernel[max(1, math.ceil(size / _THREADS)), _THREADS](*args)


def _setup(fn, x, weight, stride, padding, dilation, groups):
    X = _float(x, fn, "x")
    Wt = _float(weight, fn, "weight", dtype=X.dtype)
    yshape, g = _conv_setup(fn, tuple(X.shape), tuple(Wt.shape), stride, padding, dilation,
                            groups)
    geo = (g["stride_h"], g["stride_w"], g["pad_h"], g["pad_w"], g["dilation_h"],
           g["dilation_w"], g["c_in"] // g["groups"], g["c_out"] // g["groups"])
    return X, Wt, yshape, geo


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """y = conv2d(x, weight) + bias on device arrays: x (N, C_in, H, W), weight
    (C_out, C_in/groups, kH, kW), bias (C_out,) or None; arguments, errors and output shape as
    fastnn.ops.conv2d. Returns a new device array (N, C_out, H_out, W_out). One launch."""
    fn = "conv2d"
    X, Wt, yshape, geo = _setup(fn, x, weight, stride, padding, dilation, groups)
    B = None
    if bias is not None:
        B = _float(bias, fn, "bias", dtype=X.dtype, ndim=1)
        if B.shape[0] != yshape[1]:
            raise ValueError(f"{fn}: argument 'bias' must have shape ({yshape[1]},), got "
                             f"{B.shape}")
    Y = cuda.device_array(yshape, dtype=X.dtype)
    _count_launch(fn)
    _launch(_forward, Y.size, Y, X, Wt, B if B is not None else Wt.reshape(Wt.size),
            B is not None, *geo)
    return Y


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, bias=True,
                    input_grad=True):
    """(dx, dweight, dbias) of conv2d on device arrays, as fastnn.ops.conv2d_backward: dx is
    None when input_grad is False, dbias None when bias is False. Up to three launches."""
    fn = "conv2d_backward"
    X, Wt, yshape, geo = _setup(fn, x, weight, stride, padding, dilation, groups)
    DY = _float(dy, fn, "dy", dtype=X.dtype)
    if tuple(DY.shape) != yshape:
        raise ValueError(f"{fn}: argument 'dy' must have the output shape {yshape}, got "
                         f"{tuple(DY.shape)}")
    DW = cuda.device_array(Wt.shape, dtype=X.dtype)
    _count_launch(fn)
    _launch(_backward_weight, DW.size, DW, DY, X, *geo)
    DB = None
    if bias:
        DB = cuda.device_array(yshape[1], dtype=X.dtype)
        _launch(_backward_bias, DB.size, DB, DY)
    DX = None
    if input_grad:
        DX = cuda.device_array(X.shape, dtype=X.dtype)
        _launch(_backward_data, DX.size, DX, DY, Wt, *geo)
    return DX, DW, DB
