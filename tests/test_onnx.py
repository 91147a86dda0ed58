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
