"""fastnn.onnx.export: plain operators, explicit opset and IR version; the file passes
onnx.checker, and onnx's reference evaluator and onnxruntime reproduce model.predict within
1e-5 (skipped without the onnx extra)."""
import numpy as np
import pytest

import fastnn as fn

onnx = pytest.importorskip("onnx")
from fastnn.onnx import export  # noqa: E402


def _models():
    return {
        "relu": fn.Sequential(fn.Linear(12, 32, seed=0), fn.ReLU(), fn.Dropout(0.3),
                              fn.Linear(32, 16, seed=1), fn.ReLU(), fn.Linear(16, 4, seed=2)),
        "mixed": fn.Sequential(fn.Linear(12, 24, seed=3), fn.LeakyReLU(0.2),
                               fn.Linear(24, 24, bias=False, seed=4), fn.Sigmoid(),
                               fn.Linear(24, 24, seed=5), fn.Tanh(), fn.Linear(24, 24, seed=6),
                               fn.SiLU(), fn.Linear(24, 4, seed=7), fn.Softmax()),
        "gelu": fn.Sequential(fn.Linear(12, 24, seed=8), fn.GELU(), fn.Linear(24, 24, seed=9),
                              fn.GELU("tanh"), fn.Linear(24, 4, seed=10)),
        "flatten": fn.Sequential(fn.Flatten(), fn.Linear(12, 8, seed=11), fn.ReLU(),
                                 fn.Linear(8, 3, seed=12)),
    }


def _run_all(model, path, X):
    from onnx.reference import ReferenceEvaluator
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    outs = [ReferenceEvaluator(proto).run(None, {"input": X})[0]]
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {"input": X})[0])
    return proto, outs


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("name", ["relu", "mixed", "gelu", "flatten"])
def test_export_matches_predict(tmp_path, name, opset):
    model = _models()[name]
    shape = (3, 4) if name == "flatten" else (12,)
    X = np.random.default_rng(1).normal(size=(37,) + shape).astype(np.float32)
    path = tmp_path / "m.onnx"
    export(model, path, opset=opset, input_shape=shape if name == "flatten" else None)
    proto, outs = _run_all(model, path, X)
    assert proto.opset_import[0].version == opset
    assert proto.ir_version == {17: 8, 20: 9}[opset]
    ops = {n.op_type for n in proto.graph.node}
    assert ops <= {"Gemm", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Erf", "Mul", "Add",
                   "Div", "Softmax", "Flatten", "Identity"}
    if name == "gelu":
        assert ("Gelu" in ops) == (opset >= 20)
    assert all(n.attribute[0].i == 1 for n in proto.graph.node if n.op_type == "Gemm")
    expected = model.predict(X)
    for got in outs:
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_dynamic_batch(tmp_path):
    model = _models()["relu"]
    export(model, tmp_path / "m.onnx")
    for n in (1, 5):
        X = np.ones((n, 12), np.float32)
        _, outs = _run_all(model, tmp_path / "m.onnx", X)
        np.testing.assert_allclose(outs[0], model.predict(X), rtol=1e-5, atol=1e-5)


def test_unsupported_layer_named(tmp_path):
    class Twice(fn.Module):
        def forward(self, x):
            return 2 * x

    model = fn.Sequential(fn.Linear(4, 4), Twice())
    with pytest.raises(TypeError, match=r"layer 1 \(Twice\) has no ONNX converter"):
        export(model, tmp_path / "m.onnx")


def test_bad_arguments(tmp_path):
    model = _models()["relu"]
    with pytest.raises(ValueError, match="opset"):
        export(model, tmp_path / "m.onnx", opset=9)
    with pytest.raises(ValueError, match="input_shape"):
        export(_models()["flatten"], tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="fastnn Module"):
        export("model", tmp_path / "m.onnx")


# ---- convolutional layers (NCHW at the boundary) ----------------------------------------------

_CNN_OPS = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization",
            "LayerNormalization", "Relu", "Flatten", "Gemm", "Identity", "ReduceMean", "Sub",
            "Mul", "Add", "Sqrt", "Div"}


def _check_cnn(model, shape, tmp_path, opset=17, n=6, seed=2):
    X = np.random.default_rng(seed).normal(size=(n,) + shape).astype(np.float32)
    path = tmp_path / "m.onnx"
    export(model, path, opset=opset, input_shape=shape)
    proto, outs = _run_all(model, path, X)
    assert {n.op_type for n in proto.graph.node} <= _CNN_OPS
    expected = model.predict(X)
    for got in outs:
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    return proto


def _ops(proto):
    return [n.op_type for n in proto.graph.node]


def test_lenet5(tmp_path):
    model = fn.models.lenet5(seed=0)
    proto = _check_cnn(model, (1, 28, 28), tmp_path, n=4)
    assert _ops(proto).count("Conv") == 2 and _ops(proto).count("MaxPool") == 2
    assert _ops(proto).count("Gemm") == 3
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    attrs = {a.name: list(a.ints) or a.i for a in conv.attribute}
    assert attrs["pads"] == [2, 2, 2, 2] and attrs["kernel_shape"] == [5, 5]
    assert proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 1   # NCHW


def test_cifar_net_trained_batchnorm(tmp_path):
    model = fn.models.cifar_net(seed=0)
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(32, 3, 32, 32)) * 2 + 0.5).astype(np.float32)
    y = rng.integers(0, 10, 32)
    fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.05), X, y, epochs=1,
           batch_size=16, seed=0, verbose=0)
    bns = [m for m in model if isinstance(m, fn.BatchNorm2d)]
    assert all(int(b.num_batches_tracked) == 2 for b in bns)
    assert all(np.abs(b.running_mean).max() > 1e-3 and np.abs(b.running_var - 1).max() > 1e-3
               for b in bns)   # statistics (and weights) moved away from their start
    model.eval()
    proto = _check_cnn(model, (3, 32, 32), tmp_path, n=3)
    assert _ops(proto).count("BatchNormalization") == 3
    assert all(n.attribute[0].f == pytest.approx(1e-5) for n in proto.graph.node
               if n.op_type == "BatchNormalization")


def _edge_models():
    def bn(layer, seed):   # non-trivial running statistics and affine parameters
        r = np.random.default_rng(seed)
        c = layer.num_features
        layer.running_mean[...] = r.normal(size=c)
        layer.running_var[...] = r.uniform(0.2, 3.0, size=c)
        if layer.affine:
            layer.weight[...] = r.normal(size=c)
            layer.bias[...] = r.normal(size=c)
        return layer

    def ln(layer, seed):
        r = np.random.default_rng(seed)
        if layer.weight is not None:
            layer.weight[...] = r.normal(size=layer.weight.shape)
        if layer.bias is not None:
            layer.bias[...] = r.normal(size=layer.bias.shape)
        return layer

    return {
        "stride2": ((3, 9, 10), fn.Sequential(
            fn.Conv2d(3, 4, 3, stride=2, padding=1, seed=0), fn.ReLU(),
            fn.Conv2d(4, 5, (3, 2), stride=(2, 1), seed=1))),
        "same": ((3, 9, 8), fn.Sequential(
            fn.Conv2d(3, 4, 4, padding="same", seed=2),             # even kernel: odd pad at end
            fn.Conv2d(4, 4, (3, 4), padding="same", dilation=(1, 2), seed=3),
            fn.Conv2d(4, 2, 3, padding="valid", dilation=2, seed=4))),
        "groups": ((4, 8, 8), fn.Sequential(
            fn.Conv2d(4, 8, 3, padding=1, groups=2, seed=5), fn.ReLU(),
            fn.Conv2d(8, 8, 3, groups=8, bias=False, seed=6))),       # depthwise
        "pools": ((3, 11, 9), fn.Sequential(
            fn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
            fn.MaxPool2d((3, 2), stride=(1, 2), padding=(1, 1)),
            fn.AvgPool2d(2, stride=1, padding=1), fn.Conv2d(3, 4, 1, seed=7),
            fn.AdaptiveAvgPool2d(1), fn.Flatten(), fn.Linear(4, 3, seed=8))),
        "batchnorm": ((3, 6, 6), fn.Sequential(
            bn(fn.BatchNorm2d(3, eps=1e-3), 0), fn.Conv2d(3, 4, 3, seed=9),
            bn(fn.BatchNorm2d(4, affine=False), 1), fn.Flatten(), fn.Linear(64, 8, seed=10),
            bn(fn.BatchNorm1d(8), 2))),
        "batchnorm1d_3d": ((5, 7), fn.Sequential(bn(fn.BatchNorm1d(5), 3), fn.Flatten())),
        "layernorm": ((3, 5, 4), fn.Sequential(
            ln(fn.LayerNorm((3, 5, 4), eps=1e-4), 4), fn.Conv2d(3, 2, 2, seed=11),
            ln(fn.LayerNorm(3, elementwise_affine=False), 5), fn.Flatten(),
            fn.Linear(24, 6, seed=12), ln(fn.LayerNorm(6, bias=False), 6))),
    }


@pytest.mark.parametrize("name", ["stride2", "same", "groups", "pools", "batchnorm",
                                  "batchnorm1d_3d", "layernorm"])
def test_cnn_edge_cases(tmp_path, name):
    shape, model = _edge_models()[name]
    _check_cnn(model, shape, tmp_path)


@pytest.mark.parametrize("opset", [13, 17])
def test_layernorm_operator_or_decomposition(tmp_path, opset):
    shape, model = _edge_models()["layernorm"]
    proto = _check_cnn(model, shape, tmp_path, opset=opset)
    assert ("LayerNormalization" in _ops(proto)) == (opset >= 17)
    assert ("ReduceMean" in _ops(proto)) == (opset < 17)


def test_batchnorm_before_opset14(tmp_path):
    """Opset 13 keeps BatchNormalization (one output: the inference form). onnx's reference
    evaluator (1.23) mis-evaluates that form before opset 14 (it applies the schema's default
    momentum to the running statistics; onnx/onnx PR 8442), so this checks onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    shape, model = _edge_models()["batchnorm"]
    export(model, tmp_path / "m.onnx", opset=13, input_shape=shape)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert _ops(proto).count("BatchNormalization") == 3
    assert all(len(n.output) == 1 for n in proto.graph.node if n.op_type == "BatchNormalization")
    X = np.random.default_rng(3).normal(size=(6,) + shape).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": X})[0], model.predict(X), rtol=1e-5,
                               atol=1e-5)


def test_cnn_errors_name_the_layer(tmp_path):
    model = fn.Sequential(fn.Conv2d(3, 4, 3), fn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match=r"input_shape=\(3, H, W\)"):
        export(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"layer 1 \(BatchNorm2d\) has track_running_stats"):
        export(model, tmp_path / "m.onnx", input_shape=(3, 8, 8))
    assert not (tmp_path / "m.onnx").exists()
