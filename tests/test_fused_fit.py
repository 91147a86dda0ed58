"""fit, evaluate and predict through the fused C step (fastnn._fused) against the per-op
path: the same numbers, bit for bit, and the per-op path kept where the plan cannot run."""
import numpy as np
import pytest

import fastnn as fn
from fastnn import _fused


@pytest.fixture
def per_op(monkeypatch):
    """Run fit on the per-op path."""
    def force():
        monkeypatch.setattr(_fused, "training_plan", lambda *a, **k: None)
    return force


def data(n=300, d=20, classes=5, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = (X[:, :classes].argmax(1) + (rng.random(n) < 0.1)) % classes
    return X, y.astype(np.int64)


def mlp(act=fn.ReLU, dtype=np.float32, dropout=0.0, seed=0):
    layers = [fn.Linear(20, 32), act(), fn.Linear(32, 16), act()]
    layers += [fn.Dropout(dropout)] if dropout else []
    return fn.Sequential(*layers, fn.Linear(16, 5), dtype=dtype, seed=seed)


OPTS = [lambda p: fn.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
        lambda p: fn.SGD(p, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
        lambda p: fn.Adam(p, lr=1e-2, amsgrad=True),
        lambda p: fn.AdamW(p, lr=1e-2),
        lambda p: fn.RMSprop(p, lr=1e-3, momentum=0.5, centered=True),
        lambda p: fn.Adagrad(p, lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1)]


def train(make_opt, loss, X, y, act=fn.ReLU, dtype=np.float32, epochs=3, bs=32, **kw):
    model = mlp(act, dtype)
    opt = make_opt(model.parameters())
    sched = fn.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    h = fn.fit(model, loss, opt, X, y, epochs=epochs, batch_size=bs, seed=3, verbose=0,
               scheduler=sched, **kw)
    return model, opt, h


@pytest.mark.parametrize("make_opt", OPTS, ids=["sgd-nesterov", "sgd-damp-wd", "adam-ams",
                                                "adamw", "rmsprop", "adagrad"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_fit_equals_per_op_fit(per_op, make_opt, dtype):
    X, y = data(dtype=dtype)
    loss = fn.CrossEntropyLoss(label_smoothing=0.1, weight=np.linspace(0.5, 1.5, 5))
    m1, o1, h1 = train(make_opt, loss, X, y, dtype=dtype, validation_split=0.2)
    per_op()
    m2, o2, h2 = train(make_opt, loss, X, y, dtype=dtype, validation_split=0.2)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert a.tobytes() == b.tobytes(), k
    for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        np.testing.assert_allclose(h1.history[k], h2.history[k], rtol=1e-12, err_msg=k)
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        assert s1[i]["step"] == s2[i]["step"]
        for k in s1[i]:
            np.testing.assert_array_equal(s1[i][k], s2[i][k])


@pytest.mark.parametrize("act", [fn.Tanh, fn.GELU, fn.SiLU, fn.Sigmoid,
                                 lambda: fn.LeakyReLU(0.2)])
def test_other_activations_and_regression_losses(monkeypatch, act):
    plan = _fused.training_plan
    X, _ = data()
    T = np.tanh(X[:, :5] * 0.5).astype(np.float32)
    for loss in (fn.MSELoss(), fn.HuberLoss(delta=0.3), fn.L1Loss(reduction="sum"),
                 fn.BCEWithLogitsLoss(pos_weight=np.full(5, 2.0))):
        target = (T > 0).astype(np.float32) if isinstance(loss, fn.BCEWithLogitsLoss) else T
        model = mlp(act)
        assert plan(model, loss, fn.SGD(model.parameters(), lr=0.1), X, target, 32,
                    []) is not None
        runs = []
        for force in (False, True):
            monkeypatch.setattr(_fused, "training_plan", (lambda *a, **k: None) if force else plan)
            m, _, h = train(lambda p: fn.SGD(p, lr=0.02, momentum=0.9), loss, X, target,
                            act=act, metrics=[])
            runs.append((m.state_dict(), h.history["loss"]))
        for k in runs[0][0]:
            assert runs[0][0][k].tobytes() == runs[1][0][k].tobytes(), (loss, k)
        np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("conv", [False, True])
def test_regression_metrics_counted_by_the_fused_step(monkeypatch, dtype, conv):
    """mae, mse and the binary accuracy of logits (fit's default metric of a regression loss
    is mae) are counted in the C step, MLP and layer plan alike: the weights the per-op path
    gives, bit for bit, and its metrics to rounding (sums in another order)."""
    plan = _fused.training_plan
    rng = np.random.default_rng(1)
    if conv:
        X = rng.standard_normal((200, 2, 6, 6)).astype(dtype)
        T = np.tanh(X[:, 0, :3, 0] * 0.7).astype(dtype)
        make = lambda: fn.Sequential(fn.Conv2d(2, 4, 3), fn.ReLU(), fn.MaxPool2d(2),  # noqa
                                     fn.Flatten(), fn.Linear(16, 3), dtype=dtype, seed=0)
    else:
        X = rng.standard_normal((200, 20)).astype(dtype)
        T = np.tanh(X[:, :3] * 0.7).astype(dtype)
        make = lambda: fn.Sequential(fn.Linear(20, 16), fn.Tanh(), fn.Linear(16, 3),  # noqa
                                     dtype=dtype, seed=0)
    for loss, target in ((fn.MSELoss(), T), (fn.BCEWithLogitsLoss(), (T > 0).astype(dtype))):
        runs = []
        for force in (False, True):
            model = make()
            opt = fn.SGD(model.parameters(), lr=0.05, momentum=0.9)
            assert plan(model, loss, opt, X, target, 32, ["mae", "mse", "accuracy"]) is not None
            monkeypatch.setattr(_fused, "training_plan", (lambda *a, **k: None) if force else plan)
            metrics = None if isinstance(loss, fn.MSELoss) else ["mae", "mse", "accuracy"]
            h = fn.fit(model, loss, opt, X, target, epochs=2, batch_size=32, seed=3, verbose=0,
                       metrics=metrics, validation_split=0.2)
            runs.append((model.state_dict(), h.history))
        for k in runs[0][0]:
            assert runs[0][0][k].tobytes() == runs[1][0][k].tobytes(), (loss, k)
        assert runs[0][1].keys() == runs[1][1].keys()
        for k in runs[0][1]:
            if k != "epoch_time":
                np.testing.assert_allclose(runs[0][1][k], runs[1][1][k], rtol=1e-6, err_msg=k)


def test_plan_falls_back_where_it_cannot_run():
    X, y = data()
    loss = fn.CrossEntropyLoss()

    class Double(fn.Module):
        def forward(self, x):
            return 2 * x

        def backward(self, d):
            return 2 * d

    supported = mlp()
    assert _fused.training_plan(supported, loss, fn.SGD(supported.parameters(), lr=0.1), X, y,
                                32, ["accuracy"]) is not None
    custom = fn.Sequential(fn.Linear(20, 5), Double())
    soft = fn.Sequential(fn.Linear(20, 5), fn.Softmax())
    two_acts = fn.Sequential(fn.Linear(20, 5), fn.ReLU(), fn.Tanh())
    for model in (custom, soft):
        assert _fused.training_plan(model, loss, fn.SGD(model.parameters(), lr=0.1), X, y,
                                    32, ["accuracy"]) is None
    # two activations in a row: not a unit chain, but the general layer plan (fastnn.plan)
    from fastnn.plan import PlanTraining
    assert isinstance(_fused.training_plan(two_acts, loss, fn.SGD(two_acts.parameters(), lr=0.1),
                                           X, y, 32, ["accuracy"]), PlanTraining)
    m = mlp()
    groups = [{"params": [m[0].weight]}, {"params": [p for p in m.parameters()
                                                     if p is not m[0].weight], "lr": 0.01}]
    assert _fused.training_plan(m, loss, fn.SGD(groups, lr=0.1), X, y, 32, []) is None
    probs = np.eye(5, dtype=np.float32)[y]
    assert _fused.training_plan(m, loss, fn.SGD(m.parameters(), lr=0.1), X, probs, 32,
                                []) is None
    # the fallbacks still train
    h = fn.fit(custom, loss, fn.SGD(custom.parameters(), lr=0.1), X, y, epochs=2, verbose=0)
    assert np.isfinite(h.history["loss"]).all()


def test_predict_and_evaluate_use_the_plan_with_the_same_numbers():
    X, y = data()
    model = mlp(fn.GELU)
    fused = model.predict(X, batch_size=64)
    per_op = fn.nn.Module.predict(model, X, batch_size=64)
    assert fused.tobytes() == per_op.tobytes()
    assert fn.evaluate(model, fn.CrossEntropyLoss(), X, y)["accuracy"] == pytest.approx(
        np.mean(per_op.argmax(1) == y))


def test_callbacks_see_every_batch_when_they_ask():
    X, y = data()
    seen = []

    class Batches(fn.Callback):
        def on_batch_end(self, batch, logs=None):
            seen.append((batch, logs["size"]))

    model = mlp()
    fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.1), X, y, epochs=1,
           batch_size=64, callbacks=[Batches()], verbose=0)
    assert seen == [(0, 64), (1, 64), (2, 64), (3, 64), (4, 44)]


def test_dropout_is_deterministic_in_the_fused_path(threads):
    X, y = data()
    results = []
    for t in (1, 2, 2):
        threads(t)
        model = mlp(dropout=0.3)
        opt = fn.Adam(model.parameters(), lr=1e-2)
        h = fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=3, batch_size=32, seed=11,
                   verbose=0)
        assert _fused.training_plan(model, fn.CrossEntropyLoss(), opt, X, y, 32,
                                    ["accuracy"]) is not None
        results.append((model.state_dict()["0.weight"].tobytes(), h.history["loss"]))
    assert results[0] == results[1] == results[2]
    # dropout is active: a model without it ends elsewhere
    model = mlp()
    fn.fit(model, fn.CrossEntropyLoss(), fn.Adam(model.parameters(), lr=1e-2), X, y, epochs=3,
           batch_size=32, seed=11, verbose=0)
    assert model.state_dict()["0.weight"].tobytes() != results[0][0]


@pytest.mark.parametrize("make_opt", [
    lambda p: fn.SGD(p, lr=0.02),
    lambda p: fn.SGD(p, lr=0.02, momentum=0.9, maximize=True, weight_decay=1e-2),
    lambda p: fn.Adam(p, lr=1e-3, weight_decay=1e-2),
    lambda p: fn.AdamW(p, lr=1e-3, amsgrad=True, maximize=True)],
    ids=["sgd", "sgd-max-wd", "adam-wd", "adamw-ams-max"])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_update_fused_into_the_weight_gradient_gemm(per_op, make_opt, nthreads, threads,
                                                    each_arch):
    """The fused step applies SGD and Adam inside the weight-gradient GEMMs (csrc/net.c,
    fused_update): on layers wide enough for the blocked GEMM (several row blocks and column
    ranges, two threads), a layer without bias and a buffer with padding after the last
    parameter, the weights, biases and optimizer state match the per-op path bit for bit, on
    every kernel table."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((300, 300)).astype(np.float32)
    y = rng.integers(0, 7, 300).astype(np.int64)

    def run():
        model = fn.Sequential(fn.Linear(300, 400), fn.ReLU(), fn.Linear(400, 130, bias=False),
                              fn.ReLU(), fn.Linear(130, 7), seed=2)
        opt = make_opt(model.parameters())
        threads(nthreads)
        fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=96, seed=1,
               verbose=0)
        return model, opt

    m1, o1 = run()
    per_op()
    m2, o2 = run()
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert a.tobytes() == b.tobytes(), k
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    for i in s1:
        for k in s1[i]:
            np.testing.assert_array_equal(s1[i][k], s2[i][k])
