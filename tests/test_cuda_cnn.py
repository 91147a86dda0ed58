"""fit, evaluate and predict of CNNs on a model moved with model.to("cuda"): the layer plan
(fastnn.plan) run on the device by fastnn.cuda.train, against the same model trained by the
CPU fit, the launches per step, batch norm's running statistics, and the errors. Runs under
the CUDA simulator unless NUMBA_ENABLE_CUDASIM=0 is set: tiny shapes (the simulator runs
each CUDA thread as a Python thread), so the bundled models only run on a real GPU.

Tolerances: the device sums convolutions, batch-norm statistics and GEMMs in another order
than the CPU: float64 weights agreed to 8e-16 (relative) after two epochs here, float32 to
2e-7; asserted: rtol 1e-9 / atol 1e-12 and rtol 1e-4 / atol 1e-5."""
from cuda_setup import fc, quiet  # first: it sets up the simulator

import collections

import numpy as np
import pytest

import fastnn as fn
from cuda_setup import gemm_launches

pytestmark = quiet

N, BATCH, EPOCHS = 5, 3, 2            # two steps per epoch, the second a partial batch
STEPS = EPOCHS * -(-N // BATCH)
TOL = {np.float64: dict(rtol=1e-9, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


def images(n=N, seed=0, dtype=np.float64, shape=(1, 6, 6), classes=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n,) + shape).astype(dtype)
    return X, rng.integers(0, classes, n).astype(np.int64)


def cnn(dtype=np.float64):
    """Every op kind of the plan, on few channels (the simulator runs a batch-norm channel
    as a block of 128 threads): convolution with batch norm and its fused ReLU, one without
    bias followed by a separate activation (Tanh), both pools, the global average pool,
    Flatten, Linear with a fused ReLU, Dropout(p=0)."""
    return fn.Sequential(
        fn.Conv2d(1, 1, 3, padding=1), fn.BatchNorm2d(1), fn.ReLU(), fn.MaxPool2d(2),
        fn.Conv2d(1, 2, 2, bias=False), fn.Tanh(),
        fn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        fn.AdaptiveAvgPool2d(1), fn.Flatten(), fn.Linear(2, 3), fn.ReLU(), fn.Dropout(0.0),
        fn.Linear(3, 3), dtype=dtype, seed=1)


def train(device, dtype, make_opt, epochs=EPOCHS):
    model = cnn(dtype).to(device)
    X, y = images(dtype=dtype)
    opt = make_opt(model.parameters())
    fc.reset_launch_count()
    hist = fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=epochs, batch_size=BATCH,
                  seed=5, verbose=0)
    return {"model": model, "opt": opt, "hist": hist.history, "launches": fc.launch_count()}


@pytest.fixture(scope="module")
def runs64():
    make = lambda p: fn.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3)
    return {d: train(d, np.float64, make) for d in ("cpu", "cuda")}


def assert_same_model(gpu, cpu, tol):
    sd_cpu, sd_gpu = cpu.state_dict(), gpu.state_dict()
    assert sd_cpu.keys() == sd_gpu.keys()
    init = cnn(sd_cpu["0.weight"].dtype.type).state_dict()
    for k in sd_cpu:
        if not k.endswith("num_batches_tracked"):
            assert not np.allclose(sd_cpu[k], init[k]), k     # training changed it
        np.testing.assert_allclose(sd_gpu[k], sd_cpu[k], err_msg=k, **tol)


def test_fit_float64_matches_cpu(runs64):
    cpu, gpu = runs64["cpu"], runs64["cuda"]
    assert gpu["model"].device == "cuda"
    assert_same_model(gpu["model"], cpu["model"], TOL[np.float64])
    # running statistics: downloaded into the layers' own arrays at the end of every epoch
    bn_cpu, bn_gpu = cpu["model"][1], gpu["model"][1]
    assert int(bn_gpu.num_batches_tracked) == int(bn_cpu.num_batches_tracked) == STEPS
    np.testing.assert_allclose(bn_gpu.running_var, bn_cpu.running_var, rtol=1e-9)
    assert not np.allclose(bn_gpu.running_mean, 0) and not np.allclose(bn_gpu.running_var, 1)
    assert cpu["hist"].keys() == gpu["hist"].keys()
    for k in ("loss", "accuracy", "lr"):
        np.testing.assert_allclose(gpu["hist"][k], cpu["hist"][k], rtol=1e-9)
    o_cpu, o_gpu = cpu["opt"].state_dict(), gpu["opt"].state_dict()
    for i, s in o_cpu["state"].items():
        assert o_gpu["state"][i]["step"] == s["step"] == STEPS
        for k in s:
            np.testing.assert_allclose(o_gpu["state"][i][k], s[k], **TOL[np.float64])


def test_launches_per_step(runs64):
    """The plan path's launches (docstring of fastnn.cuda.train), counted per op."""
    got = runs64["cuda"]["launches"]
    E = gemm_launches()
    per_step = collections.Counter({
        "gather_rows": 2, "conv2d": 2, "batch_norm": 1, "relu": 1, "max_pool2d": 1,
        "tanh": 1, "avg_pool2d": 1, "adaptive_avg_pool2d": 1, "matmul_bias_act": 2 * E,
        "cross_entropy_with_grad": 1, "correct_count_add": 1,
        "matmul_bias_grad": 2 * E, "matmul": 1, "matmul_act_backward": E,
        "relu_backward": 1,
        "batch_norm_backward": 1, "adaptive_avg_pool2d_backward": 1,
        "avg_pool2d_backward": 1, "tanh_backward": 1,
        # conv 2: dW and dX (no bias); conv 1: dW and db (no dX for the first layer)
        "conv2d_backward": 4, "max_pool2d_backward": 1, "sgd_step": 1})
    want = collections.Counter({k: v * STEPS for k, v in per_step.items()})
    # fit's one-sample predict (to check y): the forward in evaluation mode
    for k in ("conv2d", "batch_norm", "relu", "max_pool2d", "tanh", "avg_pool2d",
              "adaptive_avg_pool2d", "matmul_bias_act"):
        want[k] += per_step[k]
    assert got == want


def test_predict_and_evaluate_match_cpu(runs64):
    cpu, gpu = runs64["cpu"]["model"], runs64["cuda"]["model"]
    X, y = images(7, seed=1)
    out = gpu.predict(X, batch_size=4)              # two batches, the last partial
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (7, 3)
    np.testing.assert_allclose(out, cpu.predict(X), **TOL[np.float64])
    np.testing.assert_allclose(gpu.predict(X[2]), cpu.predict(X[2:3])[0],
                               **TOL[np.float64])   # one sample (C, H, W)
    loss = fn.CrossEntropyLoss()
    e_gpu, e_cpu = fn.evaluate(gpu, loss, X, y, batch_size=8), fn.evaluate(cpu, loss, X, y)
    assert e_gpu.keys() == e_cpu.keys() == {"loss", "accuracy"}
    np.testing.assert_allclose(e_gpu["loss"], e_cpu["loss"], rtol=1e-9)
    assert e_gpu["accuracy"] == e_cpu["accuracy"]
    with pytest.raises(RuntimeError, match="model is on cuda"):
        gpu.forward(X)
    with pytest.raises(ValueError, match=r"expects images of 1 channels"):
        gpu.predict(images(2, shape=(2, 6, 6))[0])


def test_eval_batch_norm_uses_running_statistics():
    """predict on the device normalizes with the running statistics (set here, not
    trained), as the CPU does in evaluation mode, and leaves them unchanged."""
    rng = np.random.default_rng(3)
    model = fn.Sequential(fn.Conv2d(1, 2, 2), fn.BatchNorm2d(2), fn.ReLU(), fn.Flatten(),
                          fn.Linear(8, 2), dtype=np.float64, seed=2)
    bn = model[1]
    bn.running_mean[...] = [0.5, -1.0]
    bn.running_var[...] = [2.0, 0.25]
    bn.weight[...] = [1.5, -0.5]
    X = rng.standard_normal((3, 1, 3, 3))
    model.eval()
    want = model.forward(X)
    model.train()
    model.to("cuda")
    got = model.predict(X)
    np.testing.assert_allclose(got, want, **TOL[np.float64])
    np.testing.assert_array_equal(bn.running_mean, [0.5, -1.0])
    np.testing.assert_array_equal(bn.running_var, [2.0, 0.25])
    assert int(bn.num_batches_tracked) == 0


def test_batch_norm_without_affine_or_running_statistics():
    """BatchNorm2d(affine=False, track_running_stats=False) (batch statistics in predict too,
    as PyTorch) and BatchNorm1d on (N, features) rows, against the CPU."""
    X, y = images(4, shape=(1, 3, 3), classes=2)
    runs = []
    for device in ("cpu", "cuda"):
        model = fn.Sequential(fn.Conv2d(1, 1, 2), fn.BatchNorm2d(1, affine=False,
                                                                 track_running_stats=False),
                              fn.Flatten(), fn.Linear(4, 1), fn.BatchNorm1d(1), fn.Tanh(),
                              fn.Linear(1, 2), dtype=np.float64, seed=4).to(device)
        fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.1), X, y,
               epochs=1, batch_size=4, verbose=0)
        runs.append((model.predict(X[:3]), model.state_dict()))
    (p_cpu, w_cpu), (p_gpu, w_gpu) = runs
    assert "1.running_mean" not in w_cpu and int(w_gpu["4.num_batches_tracked"]) == 1
    np.testing.assert_allclose(p_gpu, p_cpu, **TOL[np.float64])
    for k in w_cpu:
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], err_msg=k, **TOL[np.float64])


def test_batch_norm1d_without_running_statistics_trains_and_refuses_one_row():
    """BatchNorm1d(track_running_stats=False) uses batch statistics in predict too: fit (whose
    output probe took one row) trains it, and a batch of one row raises on cuda as on the
    CPU, where cuda gave the layer's bias for every such row."""
    X, y = images(5, shape=(2,), classes=3)
    for device in ("cpu", "cuda"):
        model = fn.Sequential(fn.Linear(2, 3), fn.BatchNorm1d(3, track_running_stats=False),
                              fn.Linear(3, 3), dtype=np.float64, seed=0).to(device)
        fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.1), X, y,
               epochs=1, batch_size=5, verbose=0)
        for rows, bs in ((1, 256), (5, 2)):
            with pytest.raises(ValueError, match=r"BatchNorm1d.* more than 1 value per channel"):
                model.predict(X[:rows], batch_size=bs)


def test_float32_matches_cpu():
    # SGD: Adam would divide the conv bias's gradient, zero but for rounding (batch norm
    # follows), by its own magnitude, and so compare rounding noise
    make = lambda p: fn.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                               weight_decay=1e-3)
    cpu, gpu = (train(d, np.float32, make, epochs=1) for d in ("cpu", "cuda"))
    assert_same_model(gpu["model"], cpu["model"], TOL[np.float32])
    np.testing.assert_allclose(gpu["hist"]["loss"], cpu["hist"]["loss"], **TOL[np.float32])
    X = images(4, seed=2, dtype=np.float32)[0]
    np.testing.assert_allclose(gpu["model"].predict(X), cpu["model"].predict(X),
                               **TOL[np.float32])


def test_to_cpu_returns_weights_and_running_statistics(runs64):
    model = runs64["cuda"]["model"]
    views = list(model.parameters())
    mean_view = model[1].running_mean
    expected = model.state_dict()
    model[0].weight[...] = 0                       # a stale CPU view: .to("cpu") overwrites it
    assert model.to("cpu") is model and model.device == "cpu"
    assert all(p is q for p, q in zip(model.parameters(), views))
    assert model[1].running_mean is mean_view
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, expected[k], err_msg=k)
    np.testing.assert_allclose(model.predict(images(3)[0]), runs64["cpu"]["model"].predict(
        images(3)[0]), **TOL[np.float64])          # the CPU path runs the trained model
    model.to("cuda")                               # and back, for the tests that follow


def test_errors():
    conv = lambda: fn.Conv2d(1, 2, 3)
    with pytest.raises(ValueError, match=r"Dropout.* has p=0.5; Dropout with p > 0 is not "
                                         r"supported on cuda"):
        fn.Sequential(conv(), fn.Dropout(0.5), fn.Flatten(), fn.Linear(2, 2)).to("cuda")
    with pytest.raises(TypeError, match=r"LayerNorm.* at index 1 is not supported on cuda "
                                        r"\(supported layers: Linear, Conv2d"):
        fn.Sequential(conv(), fn.LayerNorm([2, 1, 1]), fn.Flatten(), fn.Linear(2, 2)).to("cuda")
    with pytest.raises(TypeError, match=r"Softmax.* at index 2 is not supported on cuda"):
        fn.Sequential(conv(), fn.Flatten(), fn.Softmax()).to("cuda")
    with pytest.raises(ValueError, match=r"BatchNorm2d.* has momentum=None"):
        fn.Sequential(conv(), fn.BatchNorm2d(2, momentum=None), fn.Flatten()).to("cuda")
    X, y = images(4, shape=(1, 3, 3))
    model = fn.Sequential(conv(), fn.ReLU(), fn.Linear(2, 2), dtype=np.float64,
                          seed=0).to("cuda")              # no Flatten before the Linear
    with pytest.raises(TypeError, match=r"do not form a layer plan for samples of shape "
                                        r"\(1, 3, 3\).*Flatten"):
        fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.1), X, y,
               verbose=0)
    model = fn.Sequential(conv(), fn.Flatten(), fn.Linear(2, 2), dtype=np.float64,
                          seed=0).to("cuda")
    with pytest.raises(ValueError, match=r"layer 2 \(Linear\) expects 2 input features, "
                                         r"got 4"):
        model.predict(images(2, shape=(1, 4, 3))[0])
    model = fn.Sequential(fn.Conv2d(1, 2, 3), fn.Flatten(), fn.BatchNorm1d(2),
                          fn.Linear(2, 2), dtype=np.float64, seed=0).to("cuda")
    X, y = images(5, shape=(1, 3, 3), classes=2)
    with pytest.raises(ValueError, match=r"BatchNorm1d.* at index 2: expected more than 1 "
                                         r"value per channel when training, got a batch of 1"):
        fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.1), X, y,
               batch_size=2, verbose=0)


@pytest.mark.skipif(fc.simulator(), reason="the bundled CNNs are too large for the CUDA "
                                           "simulator (run with NUMBA_ENABLE_CUDASIM=0 on a GPU)")
@pytest.mark.parametrize("name, shape", [("lenet5", (1, 28, 28)), ("digits_cnn", (1, 8, 8)),
                                         ("cifar_net", (3, 32, 32))])
def test_bundled_cnns_match_cpu_on_a_gpu(name, shape):
    """fastnn.models' CNNs, float32: two epochs of three steps, then evaluate and predict."""
    X, y = images(64, shape=shape, dtype=np.float32, classes=10)
    loss = fn.CrossEntropyLoss()
    runs = {}
    for device in ("cpu", "cuda"):
        model = getattr(fn.models, name)(seed=0).to(device)
        opt = fn.SGD(model.parameters(), lr=0.05, momentum=0.9)
        hist = fn.fit(model, loss, opt, X[:48], y[:48], epochs=2, batch_size=16, seed=1,
                      verbose=0)
        runs[device] = (model.state_dict(), hist.history["loss"],
                        fn.evaluate(model, loss, X[48:], y[48:])["loss"], model.predict(X[48:]))
    tol = dict(rtol=2e-3, atol=2e-4)
    (w_cpu, *cpu), (w_gpu, *gpu) = runs["cpu"], runs["cuda"]
    for k in w_cpu:
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], err_msg=k, **tol)
    for a, b in zip(gpu, cpu):
        np.testing.assert_allclose(a, b, **tol)
