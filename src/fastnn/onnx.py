"""Export a model to ONNX with plain operators (needs the onnx extra:
``pip install "fastnn-core[onnx]"``)::

    import fastnn as fn, fastnn.onnx
    fn.onnx.export(model, "model.onnx")              # opset 17, batch dimension dynamic
    import onnxruntime as ort
    sess = ort.InferenceSession("model.onnx")
    y = sess.run(None, {"input": X.astype(np.float32)})[0]   # model.predict(X), within 1e-5

The graph is the model in evaluation mode: Linear -> Gemm (transB=1, W as stored), ReLU ->
Relu, LeakyReLU -> LeakyRelu, Sigmoid, Tanh, GELU -> Gelu from opset 20 (before: its
decomposition through Erf, or Tanh for approximate="tanh"), SiLU -> x * Sigmoid(x),
Softmax -> Softmax(axis=-1), Flatten -> Flatten(axis=1), Dropout -> Identity.

Convolutional layers take and give NCHW arrays, as fastnn's: Conv2d -> Conv (explicit pads,
also for padding="same"; strides, dilations, group, bias), MaxPool2d -> MaxPool,
AvgPool2d -> AveragePool (count_include_pad), AdaptiveAvgPool2d(1) -> GlobalAveragePool,
BatchNorm1d/2d -> BatchNormalization in its inference form (running_mean, running_var, eps;
weight 1 and bias 0 when affine=False), LayerNorm -> LayerNormalization from opset 17 (before:
ReduceMean, Sub, Mul, Add, Sqrt, Div). A model that starts with Conv2d needs
input_shape=(C, H, W).

The exporter is a table of per-layer converters (CONVERTERS): a new layer adds one function
that appends its nodes and initializers.
"""
import os

import numpy as np

from .nn import (GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout,
                 Flatten, LayerNorm, LeakyReLU, Linear, MaxPool2d, ReLU, Sequential, Sigmoid,
                 SiLU, Softmax, Tanh, param_dtype)

__all__ = ["export", "CONVERTERS"]

# The lowest IR version that carries each opset (onnx's own table), so current runtimes load it.
_IR_VERSION = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError("fastnn.onnx.export needs the onnx package: pip install "
                          "'fastnn-core[onnx]'") from None
    return onnx, helper, numpy_helper


class _Graph:
    """Nodes and initializers being built; fresh() names intermediate values."""

    def __init__(self, helper, numpy_helper, opset, dtype):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.opset, self.dtype = opset, dtype
        self.nodes, self.initializers, self._n = [], [], 0

    def fresh(self, stem):
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, name, value):
        self.initializers.append(self.numpy_helper.from_array(
            np.ascontiguousarray(value, dtype=self.dtype), name))
        return name

    def node(self, op, inputs, stem, **attrs):
        out = self.fresh(stem)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _linear(g, layer, x, prefix):
    inputs = [x, g.const(prefix + "weight", layer.weight)]
    if layer.bias is not None:
        inputs.append(g.const(prefix + "bias", layer.bias))
    return g.node("Gemm", inputs, "gemm", transB=1)


def _unary(op):
    return lambda g, layer, x, prefix: g.node(op, [x], op.lower())


def _leaky(g, layer, x, prefix):
    return g.node("LeakyRelu", [x], "leakyrelu", alpha=float(layer.negative_slope))


def _gelu(g, layer, x, prefix):
    if g.opset >= 20:
        return g.node("Gelu", [x], "gelu", approximate=layer.approximate)
    half = g.const(g.fresh("half"), 0.5)
    one = g.const(g.fresh("one"), 1.0)
    if layer.approximate == "tanh":   # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = g.node("Mul", [g.node("Mul", [x, x], "sq"), x], "cube")
        inner = g.node("Add", [x, g.node("Mul", [x3, g.const(g.fresh("c"), 0.044715)], "mul")],
                       "add")
        t = g.node("Tanh", [g.node("Mul", [inner, g.const(g.fresh("k"), np.sqrt(2 / np.pi))],
                                   "mul")], "tanh")
    else:                             # 0.5 x (1 + erf(x / sqrt(2)))
        t = g.node("Erf", [g.node("Div", [x, g.const(g.fresh("sqrt2"), np.sqrt(2.0))], "div")],
                   "erf")
    return g.node("Mul", [g.node("Mul", [x, half], "mul"), g.node("Add", [t, one], "add")], "gelu")


def _silu(g, layer, x, prefix):
    return g.node("Mul", [x, g.node("Sigmoid", [x], "sigmoid")], "silu")


def _softmax(g, layer, x, prefix):
    return g.node("Softmax", [x], "softmax", axis=-1)


def _flatten(g, layer, x, prefix):
    return g.node("Flatten", [x], "flatten", axis=1)


def _dropout(g, layer, x, prefix):
    return g.node("Identity", [x], "dropout")   # evaluation mode


def _where(layer, prefix):
    return f"layer {prefix.rstrip('.') or 'the model'} ({type(layer).__name__})"


def _conv2d(g, layer, x, prefix):
    (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation
    if layer.padding == "valid":
        pads = [0, 0, 0, 0]
    elif layer.padding == "same":     # stride 1; PyTorch puts the odd pixel at the end
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = [th // 2, tw // 2, th - th // 2, tw - tw // 2]
    else:
        ph, pw = layer.padding
        pads = [ph, pw, ph, pw]
    inputs = [x, g.const(prefix + "weight", layer.weight)]
    if layer.bias is not None:
        inputs.append(g.const(prefix + "bias", layer.bias))
    return g.node("Conv", inputs, "conv", kernel_shape=[kh, kw], strides=list(layer.stride),
                  pads=pads, dilations=[dh, dw], group=layer.groups)


def _pair(v):   # the pooling layers keep an int as given
    return [int(v), int(v)] if isinstance(v, (int, np.integer)) else [int(e) for e in v]


def _pool_attrs(layer):
    ph, pw = _pair(layer.padding)
    return dict(kernel_shape=_pair(layer.kernel_size), strides=_pair(layer.stride),
                pads=[ph, pw, ph, pw])


def _max_pool(g, layer, x, prefix):
    return g.node("MaxPool", [x], "maxpool", **_pool_attrs(layer))


def _avg_pool(g, layer, x, prefix):
    return g.node("AveragePool", [x], "avgpool", count_include_pad=int(layer.count_include_pad),
                  **_pool_attrs(layer))


def _global_avg_pool(g, layer, x, prefix):
    return g.node("GlobalAveragePool", [x], "globalavgpool")


def _batch_norm(g, layer, x, prefix):
    if not layer.track_running_stats:
        raise ValueError(f"fastnn.onnx.export: {_where(layer, prefix)} has "
                         f"track_running_stats=False, so it normalizes with each batch's own "
                         f"statistics even in evaluation mode; ONNX BatchNormalization's "
                         f"inference form needs running statistics")
    c = layer.num_features
    if layer.affine:
        scale, bias = layer.weight, layer.bias
    else:
        scale, bias = np.ones(c), np.zeros(c)
    inputs = [x, g.const(prefix + ("weight" if layer.affine else "scale"), scale),
              g.const(prefix + "bias" if layer.affine else g.fresh(prefix + "zero_bias"), bias),
              g.const(prefix + "running_mean", layer.running_mean),
              g.const(prefix + "running_var", layer.running_var)]
    return g.node("BatchNormalization", inputs, "batchnorm", epsilon=float(layer.eps))


def _layer_norm(g, layer, x, prefix):
    k = len(layer.normalized_shape)
    shape = layer.normalized_shape
    if g.opset >= 17:
        scale = layer.weight if layer.weight is not None else np.ones(shape)
        inputs = [x, g.const(prefix + "weight" if layer.weight is not None
                             else g.fresh(prefix + "scale"), scale)]
        if layer.bias is not None:
            inputs.append(g.const(prefix + "bias", layer.bias))
        return g.node("LayerNormalization", inputs, "layernorm", axis=-k,
                      epsilon=float(layer.eps))
    # Before opset 17: (x - mean) / sqrt(var + eps) * weight + bias over the last k axes
    # (ReduceMean takes its axes as an attribute up to opset 17).
    axes = list(range(-k, 0))
    mean = g.node("ReduceMean", [x], "mean", axes=axes, keepdims=1)
    d = g.node("Sub", [x, mean], "centered")
    var = g.node("ReduceMean", [g.node("Mul", [d, d], "sq")], "var", axes=axes, keepdims=1)
    std = g.node("Sqrt", [g.node("Add", [var, g.const(g.fresh("eps"), layer.eps)], "add")],
                 "std")
    y = g.node("Div", [d, std], "normalized")
    if layer.weight is not None:
        y = g.node("Mul", [y, g.const(prefix + "weight", layer.weight)], "mul")
    if layer.bias is not None:
        y = g.node("Add", [y, g.const(prefix + "bias", layer.bias)], "layernorm")
    return y


def _sequential(g, layer, x, prefix):
    for i, sub in enumerate(layer):
        x = _convert(g, sub, x, f"{prefix}{i}.")
    return x


# layer class -> converter(graph, layer, input name, parameter-name prefix) -> output name
CONVERTERS = {
    Sequential: _sequential, Linear: _linear, ReLU: _unary("Relu"), LeakyReLU: _leaky,
    Sigmoid: _unary("Sigmoid"), Tanh: _unary("Tanh"), GELU: _gelu, SiLU: _silu,
    Softmax: _softmax, Flatten: _flatten, Dropout: _dropout,
    Conv2d: _conv2d, MaxPool2d: _max_pool, AvgPool2d: _avg_pool,
    AdaptiveAvgPool2d: _global_avg_pool, BatchNorm1d: _batch_norm, BatchNorm2d: _batch_norm,
    LayerNorm: _layer_norm,
}


def _convert(g, layer, x, prefix):
    fn = CONVERTERS.get(type(layer))
    if fn is None:
        names = ", ".join(sorted(c.__name__ for c in CONVERTERS))
        raise TypeError(f"fastnn.onnx.export: {_where(layer, prefix)} has no ONNX converter; "
                        f"supported layers: {names}")
    return fn(g, layer, x, prefix)


def _sample_shape(model, input_shape):
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"input_shape must be the shape of one sample (positive ints), "
                             f"got {input_shape!r}")
        return shape
    layers = list(model) if isinstance(model, Sequential) else [model]
    for layer in layers:
        if isinstance(layer, Linear):
            return (layer.in_features,)
        if isinstance(layer, Conv2d):
            raise ValueError(f"fastnn.onnx.export: the model starts with Conv2d, whose input "
                             f"size is not fixed; pass input_shape=({layer.in_channels}, H, W) "
                             f"for one NCHW sample")
        if not isinstance(layer, (ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, Dropout)):
            break
    raise ValueError("fastnn.onnx.export: cannot tell the input's shape from the model; pass "
                     "input_shape=(features...) for one sample")


def export(model, path, opset=17, input_shape=None, input_name="input", output_name="output"):
    """Write model (a fastnn Sequential, in evaluation mode) to path as an ONNX file.

    opset: 13 to 21 (17 by default; Gelu is a single operator from 20, LayerNormalization from
    17). input_shape: the shape of one sample, needed when the model does not start with a
    Linear (e.g. Flatten first; (C, H, W) for a model that starts with Conv2d, NCHW).
    The input is (batch, *input_shape) with a dynamic batch dimension; dtype float32 (float64
    for a float64 model). Returns the onnx.ModelProto, checked with onnx.checker.
    onnxruntime's CPU provider has no float64 Conv: a float64 CNN runs in other runtimes (onnx's
    reference evaluator) only.
    Raises TypeError naming a layer without a converter, ValueError for a bad opset or shape
    or for a layer configuration ONNX cannot express (BatchNorm with
    track_running_stats=False, which uses batch statistics in evaluation mode), ImportError
    without the onnx package.
    """
    onnx, helper, numpy_helper = _import_onnx()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in _IR_VERSION:
        raise ValueError(f"opset must be an int from {min(_IR_VERSION)} to {max(_IR_VERSION)}, "
                         f"got {opset!r}")
    from .nn import Module
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastnn Module, got {type(model).__name__}")
    dtype = np.dtype(param_dtype(model))
    shape = _sample_shape(model, input_shape)
    g = _Graph(helper, numpy_helper, opset, dtype)
    out = _convert(g, model, input_name, "")
    g.nodes.append(helper.make_node("Identity", [out], [output_name], name=output_name))
    elem = onnx.TensorProto.DOUBLE if dtype == np.float64 else onnx.TensorProto.FLOAT
    y = model.predict(np.zeros((1,) + shape, dtype=dtype))
    graph = helper.make_graph(
        g.nodes, "fastnn", [helper.make_tensor_value_info(input_name, elem, ["batch", *shape])],
        [helper.make_tensor_value_info(output_name, elem, ["batch", *y.shape[1:]])],
        initializer=g.initializers)
    proto = helper.make_model(graph, producer_name="fastnn",
                              opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=_IR_VERSION[opset])
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, os.fspath(path))
    return proto
