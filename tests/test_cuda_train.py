"""fit, evaluate and predict on a model moved with model.to("cuda") (fastnn.cuda.train)
against the same model trained on the CPU, the launches per step, and the errors. Runs under
the CUDA simulator unless NUMBA_ENABLE_CUDASIM=0 is set (small shapes: it is slow).

Tolerance: float32 throughout; the GPU sums the GEMMs and losses in another order than the
CPU, so weights, optimizer state and history agree to rtol 1e-5, atol 1e-6 (measured: about
3e-8 in the weights after two epochs)."""
from cuda_setup import fc, quiet  # first: it sets up the simulator

import collections

import numpy as np
import pytest

import fastnn as fn
from fastnn.cuda import ops
from cuda_setup import gemm_launches

pytestmark = quiet

RTOL, ATOL = 1e-5, 1e-6
N, BATCH, EPOCHS = 20, 12, 2          # two steps per epoch, the second a partial batch
STEPS = EPOCHS * -(-N // BATCH)


def data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 6)).astype(np.float32)
    y = (X[:, :3].argmax(1) + (rng.random(N) < 0.2)) % 3
    return X, y.astype(np.int64)


def mlp():
    """Both activation paths: ReLU fused in the GEMM epilogue, Tanh as a separate launch."""
    return fn.Sequential(fn.Linear(6, 8), fn.ReLU(), fn.Linear(8, 8), fn.Tanh(),
                         fn.Dropout(0.0), fn.Linear(8, 3), seed=1)


CASES = {
    "sgd": (lambda p: fn.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
            lambda: fn.CrossEntropyLoss()),
    "adam": (lambda p: fn.Adam(p, lr=0.01),
             lambda: fn.CrossEntropyLoss(weight=np.array([1.0, 2.0, 0.5]),
                                         label_smoothing=0.1)),
}


@pytest.fixture(scope="module")
def trained():
    """Per case: the CPU run and the cuda run (model still on cuda) of the same model."""
    X, y = data()
    out = {}
    for name, (make_opt, make_loss) in CASES.items():
        runs = {}
        for device in ("cpu", "cuda"):
            model = mlp()
            views = [p for p in model.parameters()]
            if device == "cuda":
                assert model.to("cuda") is model and model.device == "cuda"
            opt = make_opt(model.parameters())
            fc.reset_launch_count()
            hist = fn.fit(model, make_loss(), opt, X, y, epochs=EPOCHS, batch_size=BATCH,
                          seed=5, verbose=0)
            runs[device] = {"model": model, "opt": opt, "hist": hist.history,
                            "views": views, "launches": fc.launch_count(),
                            "loss": make_loss()}
        out[name] = runs
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_fit_on_cuda_matches_cpu(trained, case):
    cpu, gpu = trained[case]["cpu"], trained[case]["cuda"]
    assert gpu["model"].device == "cuda"
    sd_cpu, sd_gpu = cpu["model"].state_dict(), gpu["model"].state_dict()
    assert sd_cpu.keys() == sd_gpu.keys()
    init = mlp().state_dict()
    for k in sd_cpu:
        assert not np.allclose(sd_cpu[k], init[k])          # training changed every tensor
        np.testing.assert_allclose(sd_gpu[k], sd_cpu[k], rtol=RTOL, atol=ATOL, err_msg=k)
    # state_dict refreshed the CPU views of the cuda model
    np.testing.assert_array_equal(gpu["model"][0].weight, sd_gpu["0.weight"])
    assert cpu["hist"].keys() == gpu["hist"].keys() == {"loss", "accuracy", "lr",
                                                        "epoch_time"}
    for k in ("loss", "accuracy", "lr"):
        np.testing.assert_allclose(gpu["hist"][k], cpu["hist"][k], rtol=RTOL, atol=ATOL)
    o_cpu, o_gpu = cpu["opt"].state_dict(), gpu["opt"].state_dict()
    assert o_cpu["state"].keys() == o_gpu["state"].keys() and o_cpu["state"]
    for i, s in o_cpu["state"].items():
        assert o_gpu["state"][i]["step"] == s["step"] == STEPS
        assert o_gpu["state"][i].keys() == s.keys()
        for k in s:
            np.testing.assert_allclose(o_gpu["state"][i][k], s[k], rtol=RTOL, atol=ATOL)


def test_launches_per_step(trained):
    """3L + 3 + A + M per step (L=3 Linear, A=1 Tanh, M=1 accuracy), +1 with class weights
    and 'mean' (adam case); plus L + A for the one-sample predict fit runs to check y."""
    for case, weighted in (("sgd", 0), ("adam", 1)):
        got = trained[case]["cuda"]["launches"]
        optim = {"sgd": "sgd_step", "adam": "adam_step"}[case]
        E = gemm_launches()
        want = collections.Counter({
            "gather_rows": 2 * STEPS, "matmul_bias_act": E * (3 * STEPS + 3),
            "tanh": STEPS + 1, "cross_entropy_with_grad": (1 + weighted) * STEPS,
            "correct_count_add": STEPS, "matmul_bias_grad": E * 3 * STEPS,
            "matmul_act_backward": E * 2 * STEPS, optim: STEPS})
        assert got == want, case
        assert got.total() == (8 * E + 6 + weighted) * STEPS + 3 * E + 1
    assert not trained["sgd"]["cpu"]["launches"]            # the CPU run launched nothing


def test_predict_and_evaluate_on_cuda_match_cpu(trained):
    cpu, gpu = trained["sgd"]["cpu"], trained["sgd"]["cuda"]
    X, y = data(seed=1)
    X = X[:7]
    out = gpu["model"].predict(X, batch_size=4)             # two batches, the last partial
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (7, 3)
    np.testing.assert_allclose(out, cpu["model"].predict(X), rtol=RTOL, atol=ATOL)
    e_gpu = fn.evaluate(gpu["model"], cpu["loss"], X, y[:7], batch_size=8)
    e_cpu = fn.evaluate(cpu["model"], cpu["loss"], X, y[:7], batch_size=8)
    assert e_gpu.keys() == e_cpu.keys() == {"loss", "accuracy"}
    np.testing.assert_allclose(e_gpu["loss"], e_cpu["loss"], rtol=RTOL, atol=ATOL)
    assert e_gpu["accuracy"] == e_cpu["accuracy"]
    with pytest.raises(RuntimeError, match=r"model is on cuda: use fastnn.fit/evaluate/"
                                           r"predict, or model.to\('cpu'\)"):
        gpu["model"].forward(X)
    with pytest.raises(RuntimeError, match="model is on cuda"):
        gpu["model"][0].forward(X)
    with pytest.raises(RuntimeError, match="model is on cuda"):
        gpu["model"].backward(np.zeros((7, 3), np.float32))
    with pytest.raises(TypeError, match="X is a device array"):
        gpu["model"].predict(fc.to_device(X))
    with pytest.raises(TypeError, match="X is a device array"):
        fn.evaluate(gpu["model"], cpu["loss"], fc.to_device(X), y[:7])


def test_to_cpu_returns_weights_into_the_same_views(trained):
    gpu = trained["adam"]["cuda"]
    model = gpu["model"]
    expected = model.state_dict()
    model[0].weight[...] = 0           # a stale CPU view: .to("cpu") must overwrite it
    assert model.to("cpu") is model and model.device == "cpu" and model[1].device == "cpu"
    for p, q in zip(model.parameters(), gpu["views"]):
        assert p is q                  # the same Parameter objects, views of the same buffer
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, expected[k])
    np.testing.assert_array_equal(model[0].weight, expected["0.weight"])
    model.forward(data()[0])           # the CPU path works again


def test_load_state_dict_and_save_on_cuda(tmp_path):
    model = fn.Sequential(fn.Linear(3, 2), seed=0).to("cuda")
    new = {"0.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
           "0.bias": np.array([1.0, -1.0], np.float32)}
    model.load_state_dict(new)         # uploaded to the device copy
    model[0].weight[...] = 7           # stale host view, overwritten by the next sync
    fn.save(model, tmp_path / "m.safetensors")
    loaded = fn.load(tmp_path / "m.safetensors", model=fn.Sequential(fn.Linear(3, 2)))
    np.testing.assert_array_equal(loaded[0].weight, new["0.weight"])
    model.to("cpu")
    np.testing.assert_array_equal(model[0].weight, new["0.weight"])
    np.testing.assert_array_equal(model[0].bias, new["0.bias"])


def test_mse_rmsprop_last_activation_matches_cpu():
    """MSELoss, RMSprop (momentum, centered), an activation after the last Linear, the mae
    metric, and a scheduler changing lr between epochs."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((N, 5)).astype(np.float32)
    Y = np.tanh(X[:, :2] - X[:, 2:4]).astype(np.float32)
    results = []
    for device in ("cpu", "cuda"):
        model = fn.Sequential(fn.Linear(5, 2), fn.Tanh(), seed=3).to(device)
        opt = fn.RMSprop(model.parameters(), lr=0.01, momentum=0.5, centered=True)
        sched = fn.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        fc.reset_launch_count()
        h = fn.fit(model, fn.MSELoss(), opt, X, Y, epochs=2, batch_size=BATCH, seed=1,
                   verbose=0, scheduler=sched)
        results.append((h.history, model.state_dict(), fc.launch_count()))
    (h_cpu, w_cpu, _), (h_gpu, w_gpu, launches) = results
    assert h_gpu["lr"] == h_cpu["lr"] == [0.01, 0.005]
    for k in ("loss", "mae"):
        np.testing.assert_allclose(h_gpu[k], h_cpu[k], rtol=RTOL, atol=ATOL)
    for k in w_cpu:
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], rtol=RTOL, atol=ATOL)
    # per step: 2 gather, 1 GEMM + 1 tanh, 1 loss, 1 mae, 1 tanh_backward, 1 dW, 1 update
    E = gemm_launches()
    assert launches.total() == 9 * STEPS + 2 + (E - 1) * (2 * STEPS + 1)
    assert launches["tanh_backward"] == STEPS and launches["row_error_add"] == STEPS


@pytest.mark.parametrize("loss", [fn.L1Loss(), fn.HuberLoss(delta=0.3),
                                  fn.BCEWithLogitsLoss(pos_weight=np.array([2.0, 0.5]))],
                         ids=["l1", "huber", "bce"])
def test_other_losses_match_cpu(loss):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((N, 5)).astype(np.float32)
    Y = np.tanh(X[:, :2] - X[:, 2:4]).astype(np.float32)
    if isinstance(loss, fn.BCEWithLogitsLoss):
        Y = (Y > 0).astype(np.float32)
    results = []
    for device in ("cpu", "cuda"):
        model = fn.Sequential(fn.Linear(5, 4), fn.ReLU(), fn.Linear(4, 2), seed=3).to(device)
        opt = fn.SGD(model.parameters(), lr=0.05, momentum=0.9)
        h = fn.fit(model, loss, opt, X, Y, epochs=2, batch_size=BATCH, seed=1, verbose=0,
                   metrics=[])
        results.append((h.history["loss"], model.state_dict()))
    (l_cpu, w_cpu), (l_gpu, w_gpu) = results
    np.testing.assert_allclose(l_gpu, l_cpu, rtol=RTOL, atol=ATOL)
    for k in w_cpu:
        np.testing.assert_allclose(w_gpu[k], w_cpu[k], rtol=RTOL, atol=ATOL)


def test_to_requires_cuda(monkeypatch):
    def missing():
        raise RuntimeError("fastnn.cuda cannot run: numba with CUDA support is not installed")
    monkeypatch.setattr(fc, "require", missing)
    model = fn.Sequential(fn.Linear(3, 2), seed=0)
    with pytest.raises(RuntimeError, match="numba with CUDA support is not installed"):
        model.to("cuda")
    assert model.device == "cpu" and model._device_params is None


def test_to_rejects_bad_devices_and_models():
    model = fn.Sequential(fn.Linear(3, 2), seed=0)
    for bad in ("gpu", "cuda:1", 0, None):
        with pytest.raises(ValueError, match="argument 'device' must be 'cpu', 'cuda'"):
            model.to(bad)
    with pytest.raises(TypeError, match=r"Softmax\(dim=-1\) at index 1 is not supported"):
        fn.Sequential(fn.Linear(3, 2), fn.Softmax()).to("cuda")
    with pytest.raises(ValueError, match=r"Dropout.* has p=0.5; Dropout with p > 0 is not "
                                         r"supported on cuda"):
        fn.Sequential(fn.Linear(3, 4), fn.ReLU(), fn.Dropout(0.5), fn.Linear(4, 2)).to("cuda")
    with pytest.raises(TypeError, match="only a Sequential"):
        fn.Linear(3, 2).to("cuda")
    with pytest.raises(TypeError, match="must be units of Linear"):
        fn.Sequential(fn.Linear(3, 2), fn.ReLU(), fn.Tanh()).to("cuda")
    inner = fn.Sequential(fn.Linear(3, 2), seed=0).to("cuda")
    with pytest.raises(RuntimeError, match="call .to\\(\\) on that model"):
        inner[0].to("cpu")
    assert inner.to("cuda:0") is inner and inner.device == "cuda"


def test_fit_on_cuda_rejects_unsupported_loss_optimizer_and_metrics():
    def fit(model, loss, opt, X, y, **kw):
        return fn.fit(model, loss, opt, X, y, batch_size=BATCH, verbose=0, **kw)

    X, y = data()
    model = fn.Sequential(fn.Linear(6, 3), seed=0).to("cuda")
    params = list(model.parameters())
    Y = np.zeros((N, 3), np.float32)
    with pytest.raises(NotImplementedError, match="loss SoftMargin is not supported"):
        class SoftMargin(fn.MSELoss):
            pass
        fit(model, SoftMargin(), fn.SGD(params, lr=0.1), X, Y)
    with pytest.raises(NotImplementedError, match=r"metrics \['accuracy'\] are not supported"):
        fit(model, fn.BCEWithLogitsLoss(), fn.SGD(params, lr=0.1), X, Y)
    two_groups = fn.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1)
    with pytest.raises(NotImplementedError, match="one parameter group holding every"):
        fit(model, fn.CrossEntropyLoss(), two_groups, X, y)

    class MySGD(fn.SGD):
        pass
    with pytest.raises(NotImplementedError, match="optimizer MySGD is not supported"):
        fit(model, fn.CrossEntropyLoss(), MySGD(params, lr=0.1), X, y)
    with pytest.raises(NotImplementedError, match=r"metrics \['mae'\] are not supported"):
        fit(model, fn.CrossEntropyLoss(), fn.SGD(params, lr=0.1), X, y, metrics=["mae"])
    with pytest.raises(NotImplementedError, match="class probabilities are not supported"):
        fit(model, fn.CrossEntropyLoss(), fn.SGD(params, lr=0.1), X,
            np.eye(3, dtype=np.float32)[y])
    with pytest.raises(TypeError, match="X is a device array"):
        fit(model, fn.CrossEntropyLoss(), fn.SGD(params, lr=0.1), fc.to_device(X), y)
    sgd = fn.SGD(params, lr=0.1, momentum=0.9)
    with pytest.raises(NotImplementedError):
        fit(model, fn.BCEWithLogitsLoss(), sgd, X, Y)
    assert sgd.state_dict()["state"] == {} and not sgd._groups_chunks[0][0].state


def test_gather_rows():
    X = np.arange(15, dtype=np.float64).reshape(5, 3)
    labels = np.array([4, 0, 1, 2, 3])
    index = np.array([3, 3, 0, 4], np.int32)
    got = fc.to_host(ops.gather_rows(fc.to_device(X), fc.to_device(index)))
    np.testing.assert_array_equal(got, X[index])
    out = fc.to_device(np.zeros(4, np.int64))
    ops.gather_rows(fc.to_device(labels), fc.to_device(index), out=out)
    np.testing.assert_array_equal(fc.to_host(out), labels[index])
    with pytest.raises(ValueError, match=r"gather_rows: argument 'index' must hold row "
                                         r"numbers in \[0, 5\), got 5 at position 1"):
        ops.gather_rows(fc.to_device(X), fc.to_device(np.array([0, 5])))
    with pytest.raises(TypeError, match="host numpy array"):
        ops.gather_rows(X, fc.to_device(index))
    with pytest.raises(ValueError, match="argument 'out' must have shape"):
        ops.gather_rows(fc.to_device(X), fc.to_device(index), out=fc.to_device(np.zeros(4)))
