"""fit, evaluate, callbacks and progress output: accuracy on the bundled digits, determinism
(seeds, thread counts), equality with the textbook loop, and every bad input rejected before
any weight changes."""
import io
import math
import os

import numpy as np
import pytest

import fastnn as fn


@pytest.fixture(scope="module")
def digits():
    """Stratified 70/15/15 split of the bundled digits, standardised on the training part."""
    X, y = fn.datasets.load_digits()
    (X, y), (Xv, yv), (Xt, yt) = fn.train_val_test_split(X, y, 0.15, 0.15, seed=0,
                                                         stratify=True)
    s = fn.Standardizer().fit(X)
    return s.transform(X), y, s.transform(Xv), yv, s.transform(Xt), yt


def mlp(hidden=128, seed=0, dropout=0.0, dtype=np.float32):
    layers = [fn.Linear(64, hidden), fn.ReLU()]
    layers += [fn.Dropout(dropout)] if dropout else []
    return fn.Sequential(*layers, fn.Linear(hidden, 10), dtype=dtype, seed=seed)


def weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_digits_mlp_reaches_97_percent(digits):
    """64-128-10 ReLU, Adam(1e-3), 30 epochs of 32, seed 0: measured test accuracy 0.9778
    (264 of 270), val 0.956; seeds 0..7 gave 0.978..0.985 (mean 0.981)."""
    X, y, Xv, yv, Xt, yt = digits
    model = mlp()
    loss = fn.CrossEntropyLoss()
    history = fn.fit(model, loss, fn.Adam(model.parameters(), lr=1e-3), X, y, epochs=30,
                     batch_size=32, validation_data=(Xv, yv), seed=0, verbose=0)
    result = fn.evaluate(model, loss, Xt, yt)
    assert result["accuracy"] >= 0.97
    h = history.history
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_time"}
    assert len(h["loss"]) == 30 and h["loss"][-1] < h["loss"][0] / 10
    assert h["val_accuracy"][-1] > 0.93 and history.epoch == list(range(30))


def fit_once(digits, threads=None, seed=0, epochs=3):
    X, y, Xv, yv, _, _ = digits
    model = mlp(hidden=256, dropout=0.2)
    opt = fn.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = fn.StepLR(opt, step_size=1, gamma=0.5)
    h = fn.fit(model, fn.CrossEntropyLoss(label_smoothing=0.1), opt, X, y, epochs=epochs,
               batch_size=24, validation_data=(Xv, yv), seed=seed, scheduler=sched, verbose=0)
    del h.history["epoch_time"]
    return weights(model), h.history


def test_same_seed_gives_bit_identical_weights_and_history(digits):
    w1, h1 = fit_once(digits)
    w2, h2 = fit_once(digits)
    assert_same_weights(w1, w2)
    assert h1 == h2
    w3, h3 = fit_once(digits, seed=1)  # another seed: another shuffle and dropout
    assert not np.array_equal(w1["0.weight"], w3["0.weight"])


def test_one_and_two_threads_give_bit_identical_training(digits, threads):
    threads(1)
    w1, h1 = fit_once(digits)
    threads(2)
    w2, h2 = fit_once(digits)
    assert_same_weights(w1, w2)
    assert h1 == h2


def test_fit_equals_the_textbook_loop():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((50, 4)), rng.integers(0, 3, 50)
    a = fn.Sequential(fn.Linear(4, 6), fn.Tanh(), fn.Linear(6, 3), dtype=np.float64, seed=1)
    b = fn.Sequential(fn.Linear(4, 6), fn.Tanh(), fn.Linear(6, 3), dtype=np.float64, seed=1)
    loss = fn.CrossEntropyLoss()
    opt_a, opt_b = fn.Adam(a.parameters(), lr=0.01), fn.Adam(b.parameters(), lr=0.01)
    h = fn.fit(a, loss, opt_a, X, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    values = []
    for _ in range(2):
        for xb, yb in fn.batches(X, y, batch_size=16):
            out = b.forward(xb)
            values.append(loss.forward(out, yb) * len(xb))
            opt_b.zero_grad()
            b.backward(loss.backward())
            opt_b.step()
    assert_same_weights(weights(a), weights(b))
    assert h.history["loss"][1] == pytest.approx(sum(values[4:]) / 50, rel=1e-14)


def test_shuffle_changes_the_order_but_keeps_determinism():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 3)), rng.integers(0, 2, 40)

    def run(shuffle, seed):
        m = fn.Sequential(fn.Linear(3, 2), seed=0)
        fn.fit(m, fn.CrossEntropyLoss(), fn.SGD(m.parameters(), lr=0.1), X, y, epochs=1,
               batch_size=8, shuffle=shuffle, seed=seed, verbose=0)
        return m[0].weight.copy()

    assert not np.array_equal(run(True, 0), run(False, 0))
    np.testing.assert_array_equal(run(True, 3), run(True, 3))


def test_validation_split_regression_metrics_and_scheduler():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1
    model = fn.Sequential(fn.Linear(3, 1), dtype=np.float64, seed=0)
    opt = fn.SGD(model.parameters(), lr=0.1)
    h = fn.fit(model, fn.MSELoss(), opt, X, y, epochs=20, batch_size=10,
               validation_split=0.2, seed=0, verbose=0,
               scheduler=fn.ExponentialLR(opt, gamma=0.9), metrics=["mae", "mse"])
    hist = h.history
    assert set(hist) == {"loss", "mae", "mse", "val_loss", "val_mae", "val_mse", "lr",
                         "epoch_time"}
    assert hist["lr"][:3] == pytest.approx([0.1, 0.09, 0.081])
    assert hist["val_mae"][-1] < 0.05 and hist["val_loss"][-1] == pytest.approx(
        hist["val_mse"][-1])
    result = fn.evaluate(model, fn.MSELoss(), X[80:], y[80:])
    assert set(result) == {"loss", "mae"}
    assert result["loss"] == pytest.approx(hist["val_loss"][-1], rel=1e-12)


def test_binary_classifier_accuracy_and_plateau_scheduler():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 2))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.float64).reshape(-1, 1)
    model = fn.Sequential(fn.Linear(2, 1), seed=0)
    opt = fn.Adam(model.parameters(), lr=0.05)
    h = fn.fit(model, fn.BCEWithLogitsLoss(), opt, X, y, epochs=15, batch_size=20, seed=0,
               verbose=0, scheduler=fn.ReduceLROnPlateau(opt, patience=100))
    assert h.history["accuracy"][-1] > 0.95
    assert fn.evaluate(model, fn.BCEWithLogitsLoss(), X, y[:, 0])["accuracy"] > 0.95


# ---- callbacks -------------------------------------------------------------------------------

class Recorder(fn.Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin", self.params["steps"]))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, logs["size"]))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, sorted(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end",))


def small_problem(n=30):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((n, 3)).astype(np.float32), rng.integers(0, 2, n)
    model = fn.Sequential(fn.Linear(3, 4), fn.ReLU(), fn.Linear(4, 2), seed=0)
    return model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.1), X, y


def test_callback_hooks_in_order():
    model, loss, opt, X, y = small_problem(25)
    rec = Recorder()
    fn.fit(model, loss, opt, X, y, epochs=2, batch_size=10, callbacks=[rec], verbose=0)
    keys = ["accuracy", "epoch_time", "loss", "lr"]
    assert rec.calls == [("train_begin", 3),
                         ("epoch_begin", 0), ("batch_end", 0, 10), ("batch_end", 1, 10),
                         ("batch_end", 2, 5), ("epoch_end", 0, keys),
                         ("epoch_begin", 1), ("batch_end", 0, 10), ("batch_end", 1, 10),
                         ("batch_end", 2, 5), ("epoch_end", 1, keys), ("train_end",)]


def test_stop_training_from_a_callback_stops_after_the_batch():
    class StopAt(fn.Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    model, loss, opt, X, y = small_problem()
    rec = Recorder()
    h = fn.fit(model, loss, opt, X, y, epochs=5, batch_size=5, callbacks=[StopAt(), rec],
               verbose=0)
    assert len(h.epoch) == 1 and sum(c[0] == "batch_end" for c in rec.calls) == 2


def test_early_stopping_restores_the_best_weights():
    class Fake(fn.Callback):  # a val_loss that improves twice, then gets worse
        values = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])

        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = next(self.values)
            if epoch == 1:
                self.best = weights(self.model)

    model, loss, opt, X, y = small_problem()
    fake = Fake()
    stop = fn.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    stop.set_params({})  # the fake val_loss is not in fit's metric list
    h = fn.fit(model, loss, opt, X, y, epochs=6, batch_size=10, verbose=0,
               callbacks=[fake, _NoCheck(stop)])
    assert h.epoch == [0, 1, 2, 3] and stop.stopped_epoch == 3 and stop.best_epoch == 1
    assert_same_weights(weights(model), fake.best)


class _NoCheck(fn.Callback):
    """Forwards to a callback without fit's params (so its monitor check is skipped)."""

    def __init__(self, inner):
        self.inner = inner

    def set_model(self, model):
        self.inner.set_model(model)

    def on_train_begin(self, logs=None):
        self.inner.on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        self.inner.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        self.inner.on_train_end(logs)


def test_early_stopping_on_accuracy_with_min_delta(digits):
    X, y, Xv, yv, _, _ = digits
    model = mlp(hidden=32)
    stop = fn.EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.5)
    h = fn.fit(model, fn.CrossEntropyLoss(), fn.Adam(model.parameters()), X, y, epochs=10,
               validation_data=(Xv, yv), callbacks=[stop], verbose=0, seed=0)
    assert stop.mode == "max" and len(h.epoch) == 2  # no later epoch gains 0.5


def test_monitor_that_fit_does_not_log_is_rejected_first():
    model, loss, opt, X, y = small_problem()
    before = weights(model)
    with pytest.raises(ValueError, match="monitor 'val_loss' is not logged"):
        fn.fit(model, loss, opt, X, y, batch_size=10, callbacks=[fn.EarlyStopping()],
               verbose=0)
    assert_same_weights(before, weights(model))


def test_model_checkpoint_saves_every_epoch_or_the_best(tmp_path):
    model, loss, opt, X, y = small_problem()
    fn.fit(model, loss, opt, X, y, epochs=3, batch_size=10, verbose=0,
           callbacks=[fn.ModelCheckpoint(tmp_path / "m-{epoch:02d}.safetensors",
                                         monitor="loss")])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m-01.safetensors", "m-02.safetensors", "m-03.safetensors"]
    assert_same_weights(weights(fn.load(tmp_path / "m-03.safetensors")), weights(model))
    best = tmp_path / "best.safetensors"
    model, loss, opt, X, y = small_problem()
    ck = fn.ModelCheckpoint(best, monitor="val_loss", save_best_only=True)
    h = fn.fit(model, loss, fn.SGD(model.parameters(), lr=5.0), X, y, epochs=6, batch_size=7,
               validation_split=0.3, callbacks=[ck], verbose=0, seed=0)
    assert best.exists() and ck.best == min(h.history["val_loss"])


def test_terminate_on_nan(capsys):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 2)) * 1e3, rng.standard_normal(40) * 1e3
    model = fn.Sequential(fn.Linear(2, 1), seed=0)
    h = fn.fit(model, fn.MSELoss(), fn.SGD(model.parameters(), lr=1e6), X, y, epochs=5,
               batch_size=4, callbacks=[fn.TerminateOnNaN()], verbose=0)
    assert len(h.epoch) == 1 and not math.isfinite(h.history["loss"][0])
    assert "invalid loss" in capsys.readouterr().out


# ---- progress output -------------------------------------------------------------------------

class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_verbose_lines_when_not_a_terminal(verbose, capsys):
    model, loss, opt, X, y = small_problem()
    fn.fit(model, loss, opt, X, y, epochs=2, batch_size=10, verbose=verbose)
    out = capsys.readouterr().out
    lines = out.splitlines()
    if verbose == 0:
        assert out == ""
    else:
        assert len(lines) == 2 and "\r" not in out
        assert lines[1].startswith("Epoch 2/2 - ") and " - loss: " in lines[1] \
            and " - accuracy: " in lines[1]


def test_progress_bar_on_a_terminal(monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr("sys.stdout", tty)
    model, loss, opt, X, y = small_problem()
    fn.fit(model, loss, opt, X, y, epochs=1, batch_size=5, verbose=1)
    out = tty.getvalue()
    assert "\r" in out and "ETA" in out and "batch/s" in out and "6/6" in out
    assert "[==============================]" in out
    assert out.endswith("\n") and "Epoch 1/1 - " in out.splitlines()[-1]


# ---- bad input is rejected before any weight changes -------------------------------------------

def _bad_cases():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3)).astype(np.float32)
    y = rng.integers(0, 2, 30)
    x_nan = X.copy()
    x_nan[7, 1] = np.nan
    x_inf = X.copy()
    x_inf[3, 0] = np.inf
    return [
        ("X NaN", dict(X=x_nan), ValueError, r"X contains NaN or Inf \(first at index \(7, 1\)\)"),
        ("X Inf", dict(X=x_inf), ValueError, "X contains NaN or Inf"),
        ("X strings", dict(X=np.array([["a"] * 3] * 30)), TypeError, "X must be a numeric"),
        ("X 1-D", dict(X=X[:, 0]), ValueError, r"X must have shape \(samples, features"),
        ("X empty", dict(X=X[:0], y=y[:0]), ValueError, "X is empty"),
        ("X width", dict(X=X[:, :2]), ValueError, r"Linear\(3, 4\) at index 0: expected input "
                                                  r"with 3 features, got 2"),
        ("length", dict(y=y[:29]), ValueError, "X and y have different lengths: 30 and 29"),
        ("label range", dict(y=np.where(np.arange(30) == 5, 2, y)), ValueError,
         r"y must hold class labels in \[0, 2\), got 2 at index 5"),
        ("negative label", dict(y=-y), ValueError, r"y must hold class labels in \[0, 2\)"),
        ("label dtype", dict(y=y.astype(np.float64)), TypeError,
         "y must hold integer class labels, got dtype float64"),
        ("batch 0", dict(batch_size=0), ValueError, "batch_size must be an int between 1 and 30"),
        ("batch > n", dict(batch_size=31), ValueError, "batch_size must be an int between 1 and"),
        ("batch float", dict(batch_size=2.5), ValueError, "batch_size must be an int"),
        ("epochs", dict(epochs=-1), ValueError, "epochs must be an int >= 0"),
        ("val width", dict(validation_data=(X[:5, :2], y[:5])), ValueError,
         r"validation_data\[0\] has samples of shape \(2,\), expected \(3,\)"),
        ("val NaN", dict(validation_data=(x_nan[5:10], y[:5])), ValueError,
         r"validation_data\[0\] contains NaN"),
        ("val labels", dict(validation_data=(X[:5], np.array([0, 1, 9, 0, 1]))), ValueError,
         r"validation_data\[1\] must hold class labels in \[0, 2\), got 9"),
        ("val length", dict(validation_data=(X[:5], y[:4])), ValueError,
         r"validation_data\[0\] and validation_data\[1\] have different lengths"),
        ("val pair", dict(validation_data=X[:5]), ValueError, "must be a pair"),
        ("split", dict(validation_split=1.5), ValueError, "validation_split must be a fraction"),
        ("split and data", dict(validation_split=0.2, validation_data=(X, y)), ValueError,
         "not both"),
        ("metric", dict(metrics=["f1"]), ValueError, "unknown metric 'f1'"),
        ("verbose", dict(verbose=3), ValueError, "verbose must be an int between 0 and 2"),
        ("seed", dict(seed=-1), ValueError, "seed must be an int >= 0"),
        ("callback", dict(callbacks=[print]), TypeError, "callbacks must be fastnn Callback"),
        ("loss none", dict(loss=fn.CrossEntropyLoss(reduction="none")), ValueError,
         "got 'none'"),
        ("loss type", dict(loss=len), TypeError, "loss must be a fastnn loss"),
        ("initial_epoch", dict(initial_epoch=5, epochs=3), ValueError,
         "initial_epoch must be an int between 0 and 3"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises_before_weights_change(case):
    _, changes, exc, match = case
    model, loss, opt, X, y = small_problem()
    opt = fn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = weights(model)
    kwargs = dict(model=model, loss=loss, optimizer=opt, X=X, y=y, epochs=2, batch_size=10,
                  verbose=0)
    kwargs.update(changes)
    with pytest.raises(exc, match=match):
        fn.fit(**kwargs)
    assert_same_weights(before, weights(model))
    assert opt.state_dict()["state"] == {}


def test_scheduler_of_another_optimizer_is_rejected():
    model, loss, opt, X, y = small_problem()
    other = fn.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="scheduler must be"):
        fn.fit(model, loss, opt, X, y, scheduler=fn.StepLR(other, 1), verbose=0)


def test_evaluate_checks_and_modes():
    model, loss, _, X, y = small_problem()
    model.train()
    r = fn.evaluate(model, loss, X, y, batch_size=7)
    assert set(r) == {"loss", "accuracy"} and 0 <= r["accuracy"] <= 1 and model.training
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 2\)"):
        fn.evaluate(model, loss, X, y + 5)


# ---- training that cannot silently fail ------------------------------------------------------

def small_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 8)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


class EveryBatch(fn.Callback):
    """Runs `action` at the first batch end (chunk of one batch per native call)."""

    def __init__(self, action=None):
        self.action, self.done = action, False

    def on_batch_end(self, batch, logs=None):
        if self.action is not None and not self.done:
            self.done = True
            self.action()


def test_a_second_thread_cannot_use_a_model_that_is_training():
    import threading

    X, y = small_data()
    loss = fn.CrossEntropyLoss()

    def run(action):
        model = fn.Sequential(fn.Linear(8, 16), fn.ReLU(), fn.Linear(16, 2), seed=0)
        opt = fn.Adam(model.parameters(), lr=1e-2)
        fn.fit(model, loss, opt, X, y, epochs=3, batch_size=32, seed=0, verbose=0,
               callbacks=[EveryBatch(action and (lambda: action(model, opt)))])
        return model, opt

    errors, others = [], []

    def intruder(model, opt):
        other = fn.Sequential(fn.Linear(8, 2), seed=1)
        calls = {
            "fit": lambda: fn.fit(model, loss, fn.SGD(model.parameters()), X, y, verbose=0),
            "evaluate": lambda: fn.evaluate(model, loss, X, y),
            "predict": lambda: model.predict(X),
            "step": opt.step,
            "slice": lambda: model[:1].predict(X),            # a view sharing the buffer
            "other model": lambda: others.append(
                fn.fit(other, loss, fn.SGD(other.parameters()), X, y, verbose=0)),
        }
        for name, call in calls.items():
            t = threading.Thread(target=lambda: _record(call, errors, name))
            t.start()
            t.join()

    reference, ref_opt = run(None)
    model, opt = run(intruder)
    assert [name for name, _ in errors] == ["fit", "evaluate", "predict", "step", "slice"]
    for name, e in errors:
        assert isinstance(e, RuntimeError), (name, e)
        assert "in use by fit in another thread" in str(e), (name, str(e))
    assert len(others) == 1  # an unrelated model trains beside it
    # the first fit finished as if alone: same weights and step count
    assert_same_weights(weights(model), weights(reference))
    assert opt.state_dict()["state"][0]["step"] == ref_opt.state_dict()["state"][0]["step"]


def _record(call, errors, name):
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the test inspects it
        errors.append((name, e))


class Gate(fn.Module):
    """Identity whose first forward waits until released (to hold a predict open)."""

    def __init__(self):
        super().__init__()
        import threading
        self.entered, self.release, self.first = threading.Event(), threading.Event(), True

    def forward(self, x):
        if self.first:
            self.first = False
            self.entered.set()
            assert self.release.wait(30)
        return x


@pytest.mark.parametrize("eval_mode", [True, False])
def test_concurrent_predict_needs_evaluation_mode(eval_mode):
    import threading

    X, _ = small_data(16)
    model = fn.Sequential(fn.Linear(8, 4), Gate(), seed=0)
    if eval_mode:
        model.eval()
    expected = model[:1].predict(X)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("a", model.predict(X)))
    t.start()
    assert model[1].entered.wait(30)
    try:
        if eval_mode:
            np.testing.assert_array_equal(model.predict(X), expected)
        else:
            with pytest.raises(RuntimeError, match=r"in use by predict in another thread.*"
                                                   r"only in evaluation mode"):
                model.predict(X)
            with pytest.raises(RuntimeError, match="in use by predict"):
                fn.fit(model, fn.MSELoss(), fn.SGD(model.parameters()), X, X[:, :4],
                       verbose=0)
    finally:
        model[1].release.set()
        t.join()
    np.testing.assert_array_equal(out["a"], expected)
    assert all(m.training is not eval_mode for m in model.modules())


def test_callback_arguments_are_checked_before_any_weight_changes(tmp_path):
    X, y = small_data()
    loss = fn.CrossEntropyLoss()
    model = fn.Sequential(fn.Linear(8, 2), seed=0)
    before = weights(model)
    opt = fn.Adam(model.parameters())
    path = str(tmp_path / "m-{epoch:02d}-{val_loss:.2f}.safetensors")
    cases = [
        (fn.ModelCheckpoint(path), r"uses \{val_loss\}, which this fit does not log "
                                   r"\(logged: epoch, loss, accuracy, lr, epoch_time\)"),
        (fn.ModelCheckpoint(str(tmp_path / "{loss:d}.safetensors")),
         "cannot be formatted .*Unknown format code 'd'"),
        (fn.ModelCheckpoint(str(tmp_path / "{lss}.safetensors")), r"uses \{lss\}"),
        (fn.ModelCheckpoint(str(tmp_path / "m.safetensors"), monitor="val_accuracy",
                            save_best_only=True), "monitor 'val_accuracy' is not logged"),
        (fn.EarlyStopping(monitor="val_loss"), "monitor 'val_loss' is not logged"),
    ]
    for callback, message in cases:
        with pytest.raises(ValueError, match=message):
            fn.fit(model, loss, opt, X, y, epochs=2, verbose=0, callbacks=[callback])
        assert_same_weights(weights(model), before)
        assert opt.state_dict()["state"] == {}
    assert os.listdir(tmp_path) == []
    for bad, message in ((lambda: fn.ModelCheckpoint(str(tmp_path / "{}.st")), "name its"),
                         (lambda: fn.ModelCheckpoint(str(tmp_path / "{0}.st")), "name its"),
                         (lambda: fn.ModelCheckpoint(str(tmp_path / "{x.st")), "not a valid"),
                         (lambda: fn.EarlyStopping(patience=-1), "patience"),
                         (lambda: fn.EarlyStopping(min_delta=float("nan")), "min_delta")):
        with pytest.raises(ValueError, match=message):
            bad()
    with pytest.raises(TypeError, match="monitor must be the name"):
        fn.EarlyStopping(monitor=3)
    with pytest.raises(TypeError, match="filepath must be a str"):
        fn.ModelCheckpoint(None)
    # with validation data the same path works
    fn.fit(model, loss, opt, X, y, epochs=2, verbose=0, validation_split=0.25,
           callbacks=[fn.ModelCheckpoint(path)])
    assert len(os.listdir(tmp_path)) == 2


def test_nan_outputs_never_count_as_correct():
    X, y = small_data(64)
    model = fn.Sequential(fn.Linear(8, 2), seed=0)
    model[0].weight[0, 0] = np.nan
    zeros = np.zeros(64, np.int64)
    result = fn.evaluate(model, fn.CrossEntropyLoss(), X, zeros)
    assert result["accuracy"] == 0.0 and math.isnan(result["loss"])
    # only the NaN rows are wrong
    out = np.array([[1.0, 0.0], [np.nan, 0.0], [0.0, np.nan], [0.0, 1.0]])
    sums = fn.train._metric_sums(["accuracy"], out, np.array([0, 0, 1, 1]),
                                 fn.CrossEntropyLoss())
    assert sums["accuracy"] == 2.0
    binary = fn.train._metric_sums(["accuracy"], np.array([[-1.0], [np.nan], [2.0]]),
                                   np.array([[0.0], [0.0], [1.0]]), fn.BCEWithLogitsLoss())
    assert binary["accuracy"] == 2.0
    model = fn.Sequential(fn.Linear(8, 1), seed=0)
    model[0].bias[...] = np.nan
    assert fn.evaluate(model, fn.BCEWithLogitsLoss(), X, np.zeros((64, 1)))["accuracy"] == 0.0


def test_fused_step_never_counts_a_nan_row_as_correct():
    """The training accuracy that the fused C step counts skips rows holding a NaN too."""
    X, _ = small_data(64)
    model = fn.Sequential(fn.Linear(8, 3), seed=0)
    opt = fn.SGD(model.parameters(), lr=0.0)
    labels = np.zeros(64, np.int64)
    plan = fn._fused.training_plan(model, fn.CrossEntropyLoss(), opt, X, labels, 64,
                                   ["accuracy"])
    assert plan is not None
    expected = int(np.sum(model.predict(X).argmax(axis=1) == 0))
    assert plan.train(X, labels, np.arange(64), 64, 0)[1] == expected > 0
    model[0].weight[0, 0] = np.nan     # column 0, the label, is NaN in every output row:
    plan.net.nonfinite_ok = True       # (the loss is NaN: train on to count the accuracy)
    assert plan.train(X, labels, np.arange(64), 64, 0)[1] == 0    # no comparison wins it


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_nonfinite_finds_the_first_nan_or_inf(dtype):
    """fit's check of X and y (fastnn_first_nonfinite: blocks of 4096 reduced without branches,
    then the flagged block searched) against numpy, at block edges and the last element, with
    -0, subnormals and the largest finite values not flagged."""
    from fastnn._kernels import first_nonfinite

    rng = np.random.default_rng(3)
    x = rng.standard_normal(3 * 4096 + 5).astype(dtype)
    x[:4] = [-0.0, np.finfo(dtype).tiny / 4, np.finfo(dtype).max, -np.finfo(dtype).max]
    assert first_nonfinite(x) == -1
    for pos in (0, 4095, 4096, 8191, 3 * 4096 + 4):
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[pos] = bad
            y[-1] = np.nan   # a later one does not win
            assert first_nonfinite(y) == min(pos, y.size - 1) == np.flatnonzero(~np.isfinite(y))[0]
    assert first_nonfinite(x.reshape(-1, 1)[:0]) == -1
    with pytest.raises(TypeError, match="C-contiguous"):
        first_nonfinite(np.ones((4, 4), dtype)[:, ::2])
    with pytest.raises(TypeError):
        first_nonfinite(np.ones(4, np.int64))
