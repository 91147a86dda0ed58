"""The layer plan: a Sequential compiled into typed ops (csrc/include/fastnn/plan.h), which
the fused C training step runs (fit, evaluate and predict then make one native call per
chunk of mini-batches), and which other consumers may read.

``build(model, input_shape)`` returns a :class:`Plan` or None when the model holds anything
the plan does not describe (a user-written layer, LayerNorm, BatchNorm with momentum=None,
Dropout(p=1), a Linear on an image, ...): fit then keeps the per-op path. Supported layers:
Linear, Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), BatchNorm1d on (N, C) inputs,
BatchNorm2d, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, Dropout(p < 1) and Flatten. A ReLU
after a Linear or Conv2d runs in that layer's GEMM epilogue.

Ops are dicts with the fields of ``fastnn_op`` ('kind' and 'act' by name). Per-sample shapes
are (C, H, W) for images, (features, 1, 1) for vectors; images stay NCHW in the step, so the
kernels are the ones the per-op layers call and the numbers are the same.

The running statistics of every BatchNorm with track_running_stats live in one flat buffer
(``Plan.stats``): building a plan makes each layer's ``running_mean`` / ``running_var`` a
view of it (the values are kept), so the C step updates them in place.
"""
import numpy as np

from . import _kernels
from ._fused import FusedTraining, _activation, _loss_args, _optim_args
from .nn import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout,
                 Flatten, Linear, MaxPool2d, ReLU, Sequential)


def _pair(v):
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _align(n):
    return (n + 63) // 64 * 64


class Plan:
    """A compiled Sequential: ops, the flat parameter buffer, the running-statistics buffer
    (None without BatchNorm statistics), the arena bytes per batch row, the per-sample input
    shape and the BatchNorm layers whose num_batches_tracked the step advances."""

    def __init__(self, ops, buffer, stats, row_bytes, input_shape, norms):
        self.ops, self.buffer, self.stats = ops, buffer, stats
        self.row_bytes, self.input_shape, self.norms = row_bytes, input_shape, norms

    def fused_net(self, max_batch, **kwargs):
        """A fastnn._kernels.FusedNet that runs this plan."""
        return _kernels.FusedNet((), self.buffer.data, self.buffer.grad, ops=self.ops,
                                 stats=self.stats, row_bytes=self.row_bytes,
                                 max_batch=max_batch, **kwargs)


class _Unsupported(Exception):
    pass


def build(model, input_shape):
    """The Plan of model for samples of input_shape ((C, H, W) or (features,)), or None when
    the model has a layer or an arrangement the plan does not describe. Raises ValueError,
    naming the layer, when input_shape does not fit the model's layers."""
    try:
        return _build(model, tuple(int(v) for v in input_shape))
    except _Unsupported:
        return None


def _build(model, input_shape):
    if type(model) is not Sequential or len(input_shape) not in (1, 3):
        raise _Unsupported
    layers = list(model)
    if not layers:
        raise _Unsupported
    image = len(input_shape) == 3
    shape = input_shape if image else (input_shape[0], 1, 1)
    buffer, dtype = None, None
    ops, norms, stat_layers = [], [], []
    row, nstats = 0, 0

    def where(i, layer):
        return f"layer {i} ({type(layer).__name__})"

    def offset(p):
        nonlocal buffer
        if p is None:
            return -1
        if p._buffer is None or (buffer is not None and p._buffer is not buffer):
            raise _Unsupported
        buffer = p._buffer
        return int(p._offset)

    def out_region(op, size, esize):
        nonlocal row
        op["y"] = row
        row += _align(size * esize)

    for p in model.parameters():
        offset(p)
    if buffer is None:
        raise _Unsupported
    dtype = buffer.data.dtype
    es = dtype.itemsize
    i = 0
    while i < len(layers):
        layer, t = layers[i], type(layers[i])
        C, H, W = shape
        op = {"in": shape, "w": -1, "b": -1, "rs": -1, "y": -1, "aux": -1}
        if t is Flatten:
            op.update(kind="flatten", out=(C * H * W, 1, 1))
            image = False
        elif t is Linear:
            if image:
                raise _Unsupported      # the per-op Linear rejects a 4-D input
            if C != layer.in_features:
                raise ValueError(f"{where(i, layer)} expects {layer.in_features} input features, "
                                 f"got {C} (samples of shape {input_shape})")
            op.update(kind="linear", out=(layer.out_features, 1, 1), w=offset(layer.weight),
                      b=offset(layer.bias))
            out_region(op, layer.out_features, es)
        elif t is Conv2d:
            if not image or C != layer.in_channels:
                raise ValueError(f"{where(i, layer)} expects images of {layer.in_channels} "
                                 f"channels (C, H, W), got samples of shape "
                                 f"{shape if image else (C,)}")
            try:
                yshape, g = _kernels._conv_setup("Conv2d", (1, C, H, W),
                                                 tuple(layer.weight.shape), layer.stride,
                                                 layer.padding, layer.dilation, layer.groups)
            except ValueError as e:
                raise ValueError(f"{where(i, layer)}: {e}") from None
            op.update(kind="conv2d", out=tuple(yshape[1:]), w=offset(layer.weight),
                      b=offset(layer.bias), kh=g["kh"], kw=g["kw"], sh=g["stride_h"],
                      sw=g["stride_w"], ph=g["pad_h"], pw=g["pad_w"], dh=g["dilation_h"],
                      dw=g["dilation_w"], groups=g["groups"])
            out_region(op, int(np.prod(yshape[1:])), es)
        elif t in (MaxPool2d, AvgPool2d):
            if not image:
                raise _Unsupported
            (kh, kw), (sh, sw), (ph, pw) = (_pair(layer.kernel_size), _pair(layer.stride),
                                            _pair(layer.padding))
            oh = (H + 2 * ph - kh) // sh + 1 if 2 * ph <= kh and H + 2 * ph >= kh else -1
            ow = (W + 2 * pw - kw) // sw + 1 if 2 * pw <= kw and W + 2 * pw >= kw else -1
            if oh < 1 or ow < 1:
                raise ValueError(f"{where(i, layer)}: a {kh}x{kw} window with padding "
                                 f"({ph}, {pw}) does not fit an image of {H}x{W}")
            op.update(kind="max_pool2d" if t is MaxPool2d else "avg_pool2d", out=(C, oh, ow),
                      kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw)
            if t is AvgPool2d:
                op["count_include_pad"] = layer.count_include_pad
            out_region(op, C * oh * ow, es)
            if t is MaxPool2d:
                op["aux"] = row
                row += _align(C * oh * ow * 8)
        elif t is AdaptiveAvgPool2d:
            if not image:
                raise _Unsupported
            op.update(kind="global_avg_pool", out=(C, 1, 1))
            out_region(op, C, es)
        elif t in (BatchNorm1d, BatchNorm2d):
            if (t is BatchNorm2d) != image or layer.momentum is None:
                raise _Unsupported
            if C != layer.num_features:
                raise ValueError(f"{where(i, layer)} expects {layer.num_features} channels, "
                                 f"got samples of shape {shape if image else (C,)}")
            op.update(kind="batch_norm", out=shape, eps=layer.eps, momentum=layer.momentum,
                      w=offset(layer.weight), b=offset(layer.bias))
            if layer.track_running_stats:
                if layer.running_mean.dtype != dtype:
                    raise _Unsupported
                op["rs"] = nstats
                nstats += 2 * C
                stat_layers.append((layer, op["rs"]))
                norms.append(layer)
            out_region(op, C * H * W, es)
            op["aux"] = row
            row += _align(2 * C * es)
        elif t is Dropout:
            if layer.p >= 1.0:
                raise _Unsupported
            op.update(kind="dropout", out=shape, drop=layer.p)
            out_region(op, C * H * W, es)
        elif _activation(layer) is not None:
            act = _activation(layer)
            op.update(kind="activation", out=shape, act=act)
            prev = ops[-1] if ops else None
            if t is ReLU and prev is not None and prev["kind"] in ("linear", "conv2d",
                                                                   "batch_norm"):
                prev["act"] = "relu"      # in the previous op's pass; relu' from its output
            else:
                out_region(op, C * H * W, es)
        else:
            raise _Unsupported
        ops.append(op)
        shape = op["out"]
        i += 1
    if image or shape[1:] != (1, 1):
        raise _Unsupported      # the loss and predict take (N, outputs)
    stats = _stats_buffer(model, stat_layers, nstats, dtype)
    return Plan(ops, buffer, stats, row, input_shape, norms)


def _stats_buffer(model, stat_layers, nstats, dtype):
    """One buffer for the running statistics, the layers' arrays becoming views of it (kept
    from an earlier plan of the same model when the layout still holds)."""
    if not stat_layers:
        return None
    old = getattr(model, "_plan_stats", None)
    def addr(a):
        return a.__array_interface__["data"][0]

    if old is not None and old.size == nstats and old.dtype == dtype and all(
            layer.running_mean.base is old and layer.running_var.base is old
            and addr(layer.running_mean) == addr(old[rs:])
            and addr(layer.running_var) == addr(old[rs + layer.num_features:])
            for layer, rs in stat_layers):
        return old
    stats = np.empty(nstats, dtype)
    for layer, rs in stat_layers:
        C = layer.num_features
        stats[rs:rs + C] = layer.running_mean
        stats[rs + C:rs + 2 * C] = layer.running_var
        layer.running_mean = stats[rs:rs + C]
        layer.running_var = stats[rs + C:rs + 2 * C]
    model._plan_stats = stats
    return stats


class PlanTraining(FusedTraining):
    """FusedTraining over a layer plan: takes X of shape (rows,) + input_shape, and advances
    the BatchNorm layers' num_batches_tracked by the batches their forward pass saw."""

    def __init__(self, net, chunk, group, plan, states, cross_entropy=True):
        super().__init__(net, chunk, group, plan.buffer, states, cross_entropy)
        self.plan = plan

    def train(self, X, y, index, batch_size, seed, dist=None, model=None):
        step0 = self.chunk.step
        seen = 0
        try:
            out = super().train(X, y, index, batch_size, seed, dist, model)
            seen = self.chunk.step - step0
            return out
        except _kernels.NonFiniteLossError:
            seen = self.chunk.step - step0 + 1      # that batch's forward ran too
            raise
        finally:
            for layer in self.plan.norms:
                layer.num_batches_tracked += seen


def training_plan(model, loss, optimizer, X, y, batch_size, metrics):
    """A PlanTraining for fit, or None (the per-op path). ValueError when X's samples do not
    fit the model's layers."""
    if X.ndim not in (2, 4):
        return None
    plan = build(model, X.shape[1:])
    if plan is None:
        return None
    if len(X) % batch_size == 1 and any(o["kind"] == "batch_norm" and o["in"][1:] == (1, 1)
                                        for o in plan.ops):
        return None     # a last batch of one row: the per-op BatchNorm1d raises its error
    dtype = plan.buffer.data.dtype
    largs = _loss_args(loss, dtype)
    oargs = _optim_args(optimizer, plan.buffer)
    if largs is None or oargs is None:
        return None
    outputs = plan.ops[-1]["out"][0]
    if largs["loss"] == "cross_entropy":
        if y.ndim != 1 or set(metrics) - {"accuracy"}:
            return None
    elif y.shape != (len(X), outputs):
        return None
    name, hyper, states, step, chunk = oargs
    net = plan.fused_net(batch_size, optim=name, hyper=hyper, states=states, step=step,
                         **largs)
    return PlanTraining(net, chunk, optimizer.param_groups[0], plan, states,
                        largs["loss"] == "cross_entropy")


def inference_net(model, input_shape, max_batch=256):
    """A FusedNet running model's forward pass in evaluation mode (BatchNorm with its running
    statistics) for samples of input_shape, or None."""
    try:
        plan = build(model, input_shape)
    except ValueError:
        return None     # the per-op path raises its own error
    if plan is None:
        return None
    if any(o["kind"] == "batch_norm" and o["rs"] < 0 and o["in"][1:] == (1, 1)
           for o in plan.ops):
        return None     # batch statistics of rows: the per-op layer raises for a batch of one
    return plan.fused_net(max_batch, optim="sgd", hyper={"lr": 0.0})
