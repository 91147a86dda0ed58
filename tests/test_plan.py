"""The layer plan (fastnn.plan, csrc/include/fastnn/plan.h) and the fused CNN training step
(csrc/plan.c run by csrc/net.c): the plans built for the bundled CNNs, the per-op fallback for
what the plan does not describe, and fit / predict / evaluate through the fused step against
the per-op path.

The fused step calls the same C kernels as the per-op layers with the same arguments, on NCHW
activations, in the same order: convolution (implicit GEMM, ReLU in its epilogue, which is
exact), pooling with its argmax, batch norm with batch statistics and PyTorch's running
update, the GEMMs of Linear, the loss and the optimizer over the one flat buffer. So the
results are compared bit for bit, not within a tolerance: weights, running statistics,
num_batches_tracked, optimizer state and the loss history."""
import numpy as np
import pytest

import fastnn as fn
from fastnn import _fused, models, plan


def images(n, shape, classes=10, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n,) + shape).astype(dtype)
    y = rng.integers(0, classes, n).astype(np.int64)
    return X, y


MODELS = {"lenet5": (models.lenet5, (1, 28, 28)), "cifar_net": (models.cifar_net, (3, 32, 32)),
          "digits_cnn": (models.digits_cnn, (1, 8, 8))}


def kinds(p):
    return [o["kind"] + ("+relu" if o.get("act") == "relu" and o["kind"] != "activation"
                         else "") for o in p.ops]


def test_plans_of_the_bundled_cnns():
    p = plan.build(models.lenet5(seed=0), (1, 28, 28))
    assert kinds(p) == ["conv2d+relu", "activation", "max_pool2d", "conv2d+relu", "activation",
                        "max_pool2d", "flatten", "linear+relu", "activation", "linear+relu",
                        "activation", "linear"]
    assert [o["out"] for o in p.ops[:7]] == [(6, 28, 28), (6, 28, 28), (6, 14, 14),
                                             (16, 10, 10), (16, 10, 10), (16, 5, 5), (400, 1, 1)]
    # the ReLU after a GEMM is its epilogue: no arena region of its own, nor has Flatten
    assert p.ops[1]["y"] == -1 and p.ops[6]["y"] == -1 and p.ops[2]["aux"] >= 0
    assert p.stats is None and p.norms == []
    m = models.cifar_net(seed=0)
    p = plan.build(m, (3, 32, 32))
    # the ReLU after BatchNorm2d runs in the normalization's pass (no region of its own)
    assert kinds(p)[:4] == ["conv2d", "batch_norm+relu", "activation", "max_pool2d"]
    assert p.ops[2]["y"] == -1
    assert p.ops[-1]["out"] == (10, 1, 1)
    # running statistics: one buffer, the layers' arrays are views of it (values kept)
    assert p.stats.size == 2 * (32 + 64 + 128) and len(p.norms) == 3
    bn = m[1]
    assert np.shares_memory(bn.running_mean, p.stats) and np.all(bn.running_var == 1)
    assert plan.build(m, (3, 32, 32)).stats is p.stats     # a second plan keeps the buffer
    p = plan.build(models.digits_cnn(seed=0), (1, 8, 8))
    assert p.ops[-1]["out"] == (10, 1, 1) and p.input_shape == (1, 8, 8)
    # a model of Linear, BatchNorm1d and ReLU on (N, features) rows
    p = plan.build(fn.Sequential(fn.Linear(6, 8), fn.BatchNorm1d(8), fn.ReLU(),
                                 fn.Linear(8, 3), seed=0), (6,))
    assert kinds(p) == ["linear", "batch_norm+relu", "activation", "linear"]


class Twice(fn.Module):
    def forward(self, x):
        return 2 * x

    def backward(self, dout):
        return 2 * dout


@pytest.mark.parametrize("model, shape", [
    (lambda: fn.Sequential(fn.Conv2d(1, 4, 3), fn.LayerNorm([4, 6, 6]), fn.Flatten(),
                           fn.Linear(144, 3)), (1, 8, 8)),
    (lambda: fn.Sequential(fn.Conv2d(1, 4, 3), Twice(), fn.Flatten(), fn.Linear(144, 3)),
     (1, 8, 8)),
    (lambda: fn.Sequential(fn.Conv2d(1, 4, 3), fn.BatchNorm2d(4, momentum=None), fn.Flatten(),
                           fn.Linear(144, 3)), (1, 8, 8)),
    (lambda: fn.Sequential(fn.Conv2d(1, 4, 3), fn.Dropout(1.0), fn.Flatten(),
                           fn.Linear(144, 3)), (1, 8, 8)),
    (lambda: fn.Sequential(fn.Conv2d(1, 4, 3), fn.Flatten(), fn.Linear(144, 3), fn.Softmax()),
     (1, 8, 8)),
    (lambda: fn.Sequential(fn.Conv2d(1, 3, 3)), (1, 8, 8)),       # output still an image
], ids=["layernorm", "user-layer", "bn-cumulative", "dropout-1", "softmax", "image-out"])
def test_unsupported_models_keep_the_per_op_path(model, shape):
    m = model()
    assert plan.build(m, shape) is None
    X, y = images(40, shape, classes=3)
    opt = fn.SGD(m.parameters(), lr=0.01)
    assert _fused.training_plan(m, fn.CrossEntropyLoss(), opt, X, y, 16, ["accuracy"]) is None
    if not isinstance(m[-1], fn.Conv2d):
        h = fn.fit(m, fn.CrossEntropyLoss(), opt, X, y, epochs=1, batch_size=16, verbose=0)
        assert len(h.history["loss"]) == 1


def test_fit_takes_the_plan_for_lenet5_and_cifar_net():
    for name in ("lenet5", "cifar_net"):
        make, shape = MODELS[name]
        m = make(seed=0)
        X, y = images(32, shape)
        t = _fused.training_plan(m, fn.CrossEntropyLoss(),
                                 fn.SGD(m.parameters(), lr=0.01, momentum=0.9), X, y, 16,
                                 ["accuracy"])
        assert isinstance(t, plan.PlanTraining), name
        assert t.net.input_shape == shape


OPTS = {"sgd-momentum": lambda p: fn.SGD(p, lr=0.05, momentum=0.9),
        "adam": lambda p: fn.Adam(p, lr=1e-3)}


def run(name, make_opt, X, y, dtype=np.float32, epochs=2, bs=16, **kw):
    make, _ = MODELS[name]
    m = make(seed=0)
    if dtype != np.float32:     # the same layers, parameters and statistics in dtype
        m = fn.Sequential(*list(m), dtype=dtype, seed=0)
    opt = make_opt(m.parameters())
    h = fn.fit(m, fn.CrossEntropyLoss(), opt, X, y, epochs=epochs, batch_size=bs, seed=5,
               verbose=0, **kw)
    return m, opt, h


def assert_same(a, b):
    (m1, o1, h1), (m2, o2, h2) = a, b
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:     # weights, running statistics, num_batches_tracked
        assert np.asarray(s1[k]).tobytes() == np.asarray(s2[k]).tobytes(), k
    assert h1.history["loss"] == h2.history["loss"]
    assert h1.history["accuracy"] == h2.history["accuracy"]
    st1, st2 = o1.state_dict()["state"], o2.state_dict()["state"]
    for i in st1:
        assert st1[i]["step"] == st2[i]["step"]
        for k in st1[i]:
            np.testing.assert_array_equal(st1[i][k], st2[i][k])


@pytest.mark.parametrize("opt", sorted(OPTS))
@pytest.mark.parametrize("name", ["lenet5", "cifar_net", "digits_cnn"])
def test_fused_cnn_step_equals_the_per_op_step(per_op, name, opt):
    X, y = images(40 if name == "cifar_net" else 72, MODELS[name][1])
    m = MODELS[name][0](seed=0)      # the first run takes the fused step
    assert isinstance(_fused.training_plan(m, fn.CrossEntropyLoss(), OPTS[opt](m.parameters()),
                                           X, y, 16, ["accuracy"]), plan.PlanTraining)
    fused = run(name, OPTS[opt], X, y, validation_split=0.2)
    per_op()
    assert_same(fused, run(name, OPTS[opt], X, y, validation_split=0.2))
    if name == "digits_cnn":    # the running statistics moved: batch norm ran in training
        assert not np.all(fused[0][1].running_mean == 0)
        assert int(fused[0][1].num_batches_tracked) == 2 * 4     # 2 epochs of 4 batches


def test_float64(per_op):
    X, y = images(48, (1, 8, 8), dtype=np.float64)
    fused = run("digits_cnn", OPTS["adam"], X, y, dtype=np.float64)
    assert fused[0][0].weight.dtype == np.float64
    assert fused[0][1].running_mean.dtype == np.float64
    per_op()
    assert_same(fused, run("digits_cnn", OPTS["adam"], X, y, dtype=np.float64))


def test_one_thread_and_two_threads_are_bit_identical(threads):
    X, y = images(64, (3, 32, 32))
    out = []
    for t in (1, 2):
        threads(t)
        m = models.cifar_net(seed=0)
        opt = fn.SGD(m.parameters(), lr=0.05, momentum=0.9)
        tp = _fused.training_plan(m, fn.CrossEntropyLoss(), opt, X, y, 32, ["accuracy"])
        assert tp.net.threads(32) == t     # the step runs in a team of t threads
        h = fn.fit(m, fn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=32, seed=1,
                   verbose=0)
        out.append(({k: np.asarray(v).tobytes() for k, v in m.state_dict().items()},
                    h.history["loss"], m.predict(X).tobytes()))
    assert out[0] == out[1]


def test_predict_and_evaluate_in_eval_mode_use_the_running_statistics(per_op):
    X, y = images(80, (1, 8, 8))
    m, _, _ = run("digits_cnn", OPTS["sgd-momentum"], X, y)
    assert _fused.inference_net(m, 64, X.shape[1:]) is not None
    fused = m.predict(X, batch_size=64)
    ev = fn.evaluate(m, fn.CrossEntropyLoss(), X, y, batch_size=64) \
        if hasattr(fn, "evaluate") else None
    per_op()
    np.testing.assert_array_equal(fused, m.predict(X, batch_size=64))
    if ev is not None:
        assert ev == fn.evaluate(m, fn.CrossEntropyLoss(), X, y, batch_size=64)
    # eval mode: the running statistics, not the batch's: one row alone gives the same output
    # (up to the convolution's blocking, which depends on the batch's size)
    np.testing.assert_allclose(fused[:1], m.predict(X[:1]), rtol=1e-4, atol=1e-5)


def test_a_nonfinite_loss_stops_before_its_update(per_op):
    X, y = images(64, (1, 8, 8))
    X[40] = 3e38        # batch 3 of 4 (batch size 16, no shuffling): inf in the convolution
    res = []
    for force in (False, True):
        if force:
            per_op()
        m = models.digits_cnn(seed=0)
        opt = fn.SGD(m.parameters(), lr=0.05, momentum=0.9)
        with pytest.raises(FloatingPointError, match="batch 3 of 4"):
            fn.fit(m, fn.CrossEntropyLoss(), opt, X, y, epochs=1, batch_size=16, shuffle=False,
                   error_if_nonfinite=True, verbose=0)
        assert opt.state_dict()["state"][0]["step"] == 2
        res.append(m)
    assert np.all(np.isfinite(res[0][0].weight))
    for k, v in res[0].state_dict().items():
        if "running" not in k:   # batch 3's forward pass put its NaN into the statistics
            assert np.asarray(v).tobytes() == np.asarray(res[1].state_dict()[k]).tobytes(), k
    assert int(res[0][1].num_batches_tracked) == int(res[1][1].num_batches_tracked) == 3


def test_bad_input_shapes_raise_before_c():
    m = models.lenet5(seed=0)
    X, y = images(32, (1, 32, 32))
    with pytest.raises(ValueError, match=r"index 7: expected input with 400 features, got 576"):
        fn.fit(m, fn.CrossEntropyLoss(), fn.SGD(m.parameters(), lr=0.01), X, y, verbose=0)
    X, y = images(32, (3, 28, 28))
    with pytest.raises(ValueError, match="3"):
        fn.fit(m, fn.CrossEntropyLoss(), fn.SGD(m.parameters(), lr=0.01), X, y, verbose=0)
    X, y = images(32, (1, 28, 28))
    tp = _fused.training_plan(m, fn.CrossEntropyLoss(), fn.SGD(m.parameters(), lr=0.01), X, y,
                              16, [])
    with pytest.raises(ValueError, match=r"X.*must have shape \(rows, 1, 28, 28\), got "
                                         r"\(32, 1, 24, 24\)"):
        tp.net.train(X[:, :, :24, :24].copy(), y, np.arange(32), 16)
    with pytest.raises(ValueError, match=r"must have shape \(rows, 1, 28, 28\)"):
        tp.net.forward(np.zeros((4, 10), np.float32))
    with pytest.raises(TypeError, match="float32"):
        tp.net.train(X.astype(np.float64), y, np.arange(32), 16)


def test_the_c_check_refuses_a_broken_plan():
    m = models.lenet5(seed=0)
    p = plan.build(m, (1, 28, 28))
    bad = [dict(o) for o in p.ops]
    bad[3] = dict(bad[3], w=p.buffer.data.size)     # weight past the buffer
    with pytest.raises(ValueError, match="invalid"):
        fn._kernels.FusedNet((), p.buffer.data, p.buffer.grad, ops=bad, row_bytes=p.row_bytes)
    bad = [dict(o) for o in p.ops]
    bad[1] = dict(bad[1], y=-1)
    bad[0] = dict(bad[0], act="identity")    # an aliased ReLU without the epilogue
    with pytest.raises(ValueError, match="invalid"):
        fn._kernels.FusedNet((), p.buffer.data, p.buffer.grad, ops=bad, row_bytes=p.row_bytes)
    with pytest.raises(ValueError, match="invalid"):     # arena regions past row_bytes
        fn._kernels.FusedNet((), p.buffer.data, p.buffer.grad, ops=p.ops,
                             row_bytes=p.row_bytes // 2)


def bn_mlp(seed=0, dtype=np.float32):
    return fn.Sequential(fn.Linear(12, 16), fn.BatchNorm1d(16), fn.ReLU(), fn.Dropout(0.0),
                         fn.Linear(16, 8), fn.Tanh(), fn.Linear(8, 4), dtype=dtype, seed=seed)


def test_batchnorm1d_rows_through_the_plan(per_op):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((100, 12)).astype(np.float32)
    y = rng.integers(0, 4, 100)
    out = []
    for force in (False, True):
        if force:
            per_op()
        m = bn_mlp()
        opt = fn.Adam(m.parameters(), lr=1e-2)
        if not force:
            assert isinstance(_fused.training_plan(m, fn.CrossEntropyLoss(), opt, X, y, 16,
                                                   ["accuracy"]), plan.PlanTraining)
        h = fn.fit(m, fn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=16, seed=2,
                   verbose=0)
        out.append(({k: np.asarray(v).tobytes() for k, v in m.state_dict().items()},
                    h.history["loss"], m.predict(X).tobytes()))
    assert out[0] == out[1]
    # a last batch of one row: BatchNorm1d cannot train on it; the per-op path says so
    m = bn_mlp()
    opt = fn.SGD(m.parameters(), lr=0.1)
    assert plan.training_plan(m, fn.CrossEntropyLoss(), opt, X[:33], y[:33], 16, []) is None
    assert plan.training_plan(m, fn.CrossEntropyLoss(), opt, X[:34], y[:34], 16,
                              []) is not None


def test_a_plan_without_convolution_runs_in_one_team_with_the_same_bits(threads):
    """BatchNorm1d makes this MLP a layer plan; with no convolution its step runs inside one
    team of threads (pool, norm and GEMM kernels share it), and gives the one-thread bits."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((256, 256)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    out = []
    for t in (1, 2):
        threads(t)
        m = fn.Sequential(fn.Linear(256, 512), fn.BatchNorm1d(512), fn.ReLU(),
                          fn.Linear(512, 10), seed=0)
        opt = fn.SGD(m.parameters(), lr=0.05, momentum=0.9)
        tp = _fused.training_plan(m, fn.CrossEntropyLoss(), opt, X, y, 64, ["accuracy"])
        assert isinstance(tp, plan.PlanTraining) and tp.net.threads(64) == t
        h = fn.fit(m, fn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=64, seed=1,
                   verbose=0)
        out.append(({k: np.asarray(v).tobytes() for k, v in m.state_dict().items()},
                    h.history["loss"]))
    assert out[0] == out[1]
