"""Optimizers, schedulers, gradient clipping and losses: PyTorch parity in float64 (same
initial weights, same batches, 60 steps), flat-buffer vs per-parameter updates, state_dict.

Measured max |w_fastnn - w_torch| after 60 steps (see test_optimizer_matches_torch): at most
4.7e-16 (Adam), 0.6e-16 to 3.3e-16 for the others; the tolerance is 1e-10.
"""
import math

import numpy as np
import pytest

import fastnn as fn

STEPS = 60
BATCH = 16


def make_data(n=64, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)


def make_model(seed=0):
    return fn.Sequential(fn.Linear(6, 8), fn.Tanh(), fn.Linear(8, 5), fn.ReLU(),
                         fn.Linear(5, 3), dtype=np.float64, seed=seed)


def torch_copy(model):
    torch = pytest.importorskip("torch")
    layers = []
    for layer in model:
        if isinstance(layer, fn.Linear):
            t = torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
            with torch.no_grad():
                t.weight.copy_(torch.from_numpy(np.array(layer.weight)))
                t.bias.copy_(torch.from_numpy(np.array(layer.bias)))
            layers.append(t)
        else:
            layers.append({"Tanh": torch.nn.Tanh, "ReLU": torch.nn.ReLU}[type(layer).__name__]())
    return torch.nn.Sequential(*layers)


def batch(step, X, y):
    i = (step * BATCH) % len(X)
    return X[i:i + BATCH], y[i:i + BATCH]


OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=0.1)),
    "sgd_momentum_wd": ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    "sgd_nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "sgd_maximize": ("SGD", dict(lr=0.01, momentum=0.5, maximize=True)),
    "adam": ("Adam", dict(lr=1e-2, weight_decay=1e-3)),
    "adam_amsgrad": ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), amsgrad=True)),
    "adamw": ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
    "adamw_amsgrad": ("AdamW", dict(lr=1e-2, amsgrad=True)),
    "rmsprop": ("RMSprop", dict(lr=1e-3)),
    "rmsprop_centered_momentum": ("RMSprop", dict(lr=1e-3, centered=True, momentum=0.9,
                                                  weight_decay=1e-3)),
    "adagrad": ("Adagrad", dict(lr=0.05, lr_decay=1e-2, weight_decay=1e-3,
                                initial_accumulator_value=0.1)),
}

SCHEDULERS = {
    "sgd": ("StepLR", dict(step_size=3, gamma=0.5)),
    "sgd_momentum_wd": ("CosineAnnealingLR", dict(T_max=5, eta_min=1e-3)),
    "sgd_nesterov": ("ExponentialLR", dict(gamma=0.9)),
    "adam": ("LinearLR", dict(start_factor=0.1, total_iters=4)),
    "adam_amsgrad": ("ReduceLROnPlateau", dict(factor=0.5, patience=0)),
    "adamw": ("CosineAnnealingLR", dict(T_max=12)),
    "rmsprop_centered_momentum": ("StepLR", dict(step_size=2, gamma=0.7)),
    "adagrad": ("LinearLR", dict()),
}


def run_both(name, steps=STEPS, clip=None):
    """Train the same MLP in fastnn and torch; returns the max weight deviation."""
    torch = pytest.importorskip("torch")
    X, y = make_data()
    model = make_model()
    tmodel = torch_copy(model)
    cls, kw = OPTIMIZERS[name]
    opt = getattr(fn, cls)(model.parameters(), **kw)
    topt = getattr(torch.optim, cls)(tmodel.parameters(), **kw)
    sched = tsched = None
    if name in SCHEDULERS:
        scls, skw = SCHEDULERS[name]
        sched = getattr(fn.lr_scheduler, scls)(opt, **skw)
        tsched = getattr(torch.optim.lr_scheduler, scls)(topt, **skw)
    loss, tloss = fn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for step in range(steps):
        xb, yb = batch(step, X, y)
        value = loss.forward(model.forward(xb), yb)
        opt.zero_grad()
        model.backward(loss.backward())
        topt.zero_grad()
        tvalue = tloss(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
        tvalue.backward()
        assert value == pytest.approx(tvalue.item(), rel=1e-9, abs=1e-12)
        if clip:
            norm = fn.clip_grad_norm_(model.parameters(), clip)
            tnorm = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), clip)
            assert norm == pytest.approx(tnorm.item(), rel=1e-12)
        opt.step()
        topt.step()
        if sched is not None and step % 4 == 3:  # an "epoch" of 4 batches
            if isinstance(sched, fn.ReduceLROnPlateau):
                sched.step(value)
                tsched.step(tvalue.item())
            else:
                sched.step()
                tsched.step()
            assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-14)
    ours = [np.array(p) for p in model.parameters()]
    theirs = [p.detach().numpy() for p in tmodel.parameters()]
    return max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_matches_torch(name):
    dev = run_both(name)
    print(f"max |fastnn - torch| after {STEPS} steps, {name}: {dev:.3g}")
    assert dev < 1e-10


def test_gradient_clipping_matches_torch():
    dev = run_both("sgd_momentum_wd", clip=0.5)
    assert dev < 1e-10


def test_param_groups_match_torch():
    torch = pytest.importorskip("torch")
    X, y = make_data()
    model = make_model()
    tmodel = torch_copy(model)
    groups = [{"params": list(model[0].parameters()), "lr": 0.01},
              {"params": list(model[2].parameters()) + list(model[4].parameters())}]
    tgroups = [{"params": list(tmodel[0].parameters()), "lr": 0.01},
               {"params": list(tmodel[2].parameters()) + list(tmodel[4].parameters())}]
    opt = fn.Adam(groups, lr=0.003)
    topt = torch.optim.Adam(tgroups, lr=0.003)
    loss, tloss = fn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for step in range(20):
        xb, yb = batch(step, X, y)
        loss.forward(model.forward(xb), yb)
        opt.zero_grad()
        model.backward(loss.backward())
        opt.step()
        topt.zero_grad()
        tloss(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
        topt.step()
    for a, b in zip(model.parameters(), tmodel.parameters()):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=0, atol=1e-10)


def train_steps(model, opt, steps, start=0):
    X, y = make_data()
    loss = fn.CrossEntropyLoss()
    for step in range(start, start + steps):
        xb, yb = batch(step, X, y)
        loss.forward(model.forward(xb), yb)
        opt.zero_grad()
        model.backward(loss.backward())
        opt.step()


@pytest.mark.parametrize("name", ["sgd_nesterov", "adam_amsgrad", "rmsprop_centered_momentum",
                                  "adagrad"])
def test_flat_buffer_and_per_parameter_updates_are_identical(name):
    cls, kw = OPTIMIZERS[name]
    a, b = make_model(), make_model()
    opt_flat = getattr(fn, cls)(a.parameters(), **kw)
    per_param = [{"params": [p]} for p in b.parameters()]  # one group each: no flat chunk
    opt_each = getattr(fn, cls)(per_param, **kw)
    assert len(opt_flat._groups_chunks[0]) == 1 and opt_flat._groups_chunks[0][0].data is \
        a[0].weight._buffer.data
    assert sum(len(c) for c in opt_each._groups_chunks) == 6
    train_steps(a, opt_flat, 25)
    train_steps(b, opt_each, 25)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("name", ["sgd_momentum_wd", "adam_amsgrad", "rmsprop_centered_momentum",
                                  "adagrad"])
def test_optimizer_state_dict_resumes_exactly(name):
    cls, kw = OPTIMIZERS[name]
    a = make_model()
    opt_a = getattr(fn, cls)(a.parameters(), **kw)
    train_steps(a, opt_a, 10)
    sd = opt_a.state_dict()
    assert sorted(sd["state"]) == list(range(6)) and sd["state"][0]["step"] == 10
    assert sd["param_groups"][0]["params"] == list(range(6))
    b = make_model(seed=5)
    b.load_state_dict(a.state_dict())
    per_param = [{"params": [p]} for p in b.parameters()]  # a different layout, same state
    opt_b = getattr(fn, cls)(per_param if name == "adagrad" else b.parameters(), **kw)
    if name == "adagrad":
        sd = {"state": sd["state"], "param_groups": [dict(sd["param_groups"][0], params=[i])
                                                     for i in range(6)]}
    opt_b.load_state_dict(sd)
    train_steps(a, opt_a, 10, start=10)
    train_steps(b, opt_b, 10, start=10)
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)


def test_optimizer_argument_errors():
    model = make_model()
    with pytest.raises(ValueError, match="invalid lr"):
        fn.SGD(model.parameters(), lr=-1)
    with pytest.raises(ValueError, match="nesterov"):
        fn.SGD(model.parameters(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        fn.Adam(model.parameters(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="empty parameter list"):
        fn.Adam([])
    with pytest.raises(TypeError, match="must be fastnn Parameters"):
        fn.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="more than one place"):
        fn.SGD([model[0].weight, model[0].weight], lr=0.1)
    opt = fn.Adam(model.parameters())
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict({"state": {}, "param_groups": []})
    with pytest.raises(ValueError, match="unknown options"):
        opt.load_state_dict(fn.SGD(model.parameters(), momentum=0.9).state_dict())


def test_zero_grad_and_step_before_any_state():
    model = make_model()
    opt = fn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert opt.state_dict()["state"] == {}
    for p in model.parameters():
        p.grad[...] = 1.0
    opt.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())


def test_clip_grad_norm_value_and_scaling():
    model = fn.Sequential(fn.Linear(2, 2), dtype=np.float64)
    w, b = model[0].weight, model[0].bias
    w.grad[...] = [[3.0, 0.0], [0.0, 0.0]]
    b.grad[...] = [0.0, 4.0]
    assert fn.clip_grad_norm_(model.parameters(), 10.0) == pytest.approx(5.0)
    assert w.grad[0, 0] == 3.0  # under the limit: unchanged
    assert fn.clip_grad_norm_(model.parameters(), 1.0) == pytest.approx(5.0)
    assert math.hypot(w.grad[0, 0], b.grad[1]) == pytest.approx(1.0, rel=1e-6)
    assert fn.clip_grad_norm_(model.parameters(), 1.0, norm_type=math.inf) == \
        pytest.approx(0.8, rel=1e-6)


def test_clip_grad_norm_rejects_bad_arguments_without_touching_the_gradients():
    """A negative max_norm would reverse the gradients (PyTorch does), NaN would wipe them."""
    model = fn.Sequential(fn.Linear(3, 2), seed=0)
    for p in model.parameters():
        p.grad[...] = np.arange(p.size).reshape(p.shape) + 1.0
    before = [p.grad.copy() for p in model.parameters()]
    cases = [((-1.0,), {}, ValueError, r"max_norm must be >= 0, got -1.0"),
             ((float("nan"),), {}, ValueError, "max_norm must be >= 0, got nan"),
             ((-math.inf,), {}, ValueError, "max_norm must be >= 0"),
             ((1.0,), {"norm_type": 0}, ValueError, "norm_type must be > 0 or inf, got 0.0"),
             ((1.0,), {"norm_type": -2.0}, ValueError, "norm_type must be > 0"),
             ((1.0,), {"norm_type": -math.inf}, ValueError, "norm_type must be > 0"),
             ((1.0,), {"norm_type": float("nan")}, ValueError, "norm_type must be > 0"),
             ((1.0,), {"norm_type": "fro"}, TypeError, "norm_type must be a number"),
             (("1",), {}, TypeError, "max_norm must be a number"),
             ((True,), {}, TypeError, "max_norm must be a number")]
    for args, kw, error, message in cases:
        with pytest.raises(error, match=message):
            fn.clip_grad_norm_(model.parameters(), *args, **kw)
    with pytest.raises(TypeError, match="must be fastnn Parameters"):
        fn.clip_grad_norm_([np.zeros(3)], 1.0)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.grad, b)
    # inf: never clip; 0: zero the gradients; a norm_type like 1.5 works
    norm = fn.clip_grad_norm_(model.parameters(), math.inf)
    assert norm > 0 and all(np.array_equal(p.grad, b)
                            for p, b in zip(model.parameters(), before))
    expected = sum(float(np.sum(np.abs(b) ** 1.5)) for b in before) ** (1 / 1.5)
    assert fn.clip_grad_norm_(model.parameters(), 1e9, norm_type=1.5) == \
        pytest.approx(expected, rel=1e-6)
    fn.clip_grad_norm_(model.parameters(), 0.0)
    assert all(not p.grad.any() for p in model.parameters())


# ---- schedulers ------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kw", [
    ("StepLR", dict(step_size=3, gamma=0.5)), ("ExponentialLR", dict(gamma=0.95)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01)), ("LinearLR", dict()),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.1, total_iters=10)),
])
def test_scheduler_rates_equal_torch(cls, kw):
    torch = pytest.importorskip("torch")
    opt = fn.SGD(make_model().parameters(), lr=0.3)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    s, ts = getattr(fn.lr_scheduler, cls)(opt, **kw), \
        getattr(torch.optim.lr_scheduler, cls)(topt, **kw)
    for _ in range(30):  # 30 epochs: past the cosine period's end and back
        assert s.get_last_lr() == ts.get_last_lr()  # the same formulas, to the bit
        topt.step()
        s.step()
        ts.step()


def test_reduce_lr_on_plateau_equals_torch():
    torch = pytest.importorskip("torch")
    opt = fn.SGD(make_model().parameters(), lr=1.0)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    kw = dict(mode="max", factor=0.5, patience=1, threshold=0.01, threshold_mode="abs",
              cooldown=1, min_lr=0.1)
    s, ts = fn.ReduceLROnPlateau(opt, **kw), torch.optim.lr_scheduler.ReduceLROnPlateau(topt,
                                                                                         **kw)
    for metric in [1, 2, 2, 2, 2.005, 3, 3, 3, 3, 3, 3, 3, 3, 3]:
        s.step(metric)
        ts.step(metric)
        assert s.get_last_lr() == ts.get_last_lr()
    assert s.get_last_lr() == [0.1]  # reduced, then held at min_lr


def test_scheduler_state_dict_round_trip():
    opt = fn.SGD(make_model().parameters(), lr=0.3)
    s = fn.CosineAnnealingLR(opt, T_max=10)
    for _ in range(4):
        s.step()
    opt2 = fn.SGD(make_model().parameters(), lr=0.3)
    s2 = fn.CosineAnnealingLR(opt2, T_max=10)
    opt2.load_state_dict(opt.state_dict())
    s2.load_state_dict(s.state_dict())
    for _ in range(4):
        s.step()
        s2.step()
        assert s.get_last_lr() == s2.get_last_lr()
    with pytest.raises(ValueError, match="expected keys"):
        s2.load_state_dict({"last_epoch": 3})


# ---- losses against torch --------------------------------------------------------------------

def torch_grad(fn_torch, out, target):
    torch = pytest.importorskip("torch")
    o = torch.tensor(out, requires_grad=True)
    value = fn_torch(o, torch.as_tensor(target))
    value.sum().backward()
    return value.detach().numpy(), o.grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", ["labels", "weights_smoothing", "probs",
                                  "probs_weights_smoothing"])
def test_cross_entropy_matches_torch(case, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    out = rng.standard_normal((9, 4)) * 3
    target = rng.integers(0, 4, 9) if case in ("labels", "weights_smoothing") \
        else rng.dirichlet(np.ones(4), 9)
    kw = dict(weight=[0.5, 1.0, 2.0, 0.1], label_smoothing=0.15) if "smoothing" in case else {}
    tkw = dict(kw, weight=torch.tensor(kw["weight"], dtype=torch.float64)) if kw else {}
    loss = fn.CrossEntropyLoss(reduction=reduction, **kw)
    value = loss.forward(out, target)
    grad = loss.backward()
    tvalue, tgrad = torch_grad(torch.nn.CrossEntropyLoss(reduction=reduction, **tkw), out, target)
    np.testing.assert_allclose(value, tvalue, rtol=1e-12)
    np.testing.assert_allclose(grad, tgrad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    out, target = rng.standard_normal((7, 3)) * 4, rng.random((7, 3))
    pw = [0.5, 2.0, 1.0]
    loss = fn.BCEWithLogitsLoss(reduction=reduction, pos_weight=pw)
    value, grad = loss.forward(out, target), loss.backward()
    tvalue, tgrad = torch_grad(torch.nn.BCEWithLogitsLoss(
        reduction=reduction, pos_weight=torch.tensor(pw, dtype=torch.float64)), out, target)
    np.testing.assert_allclose(value, tvalue, rtol=1e-12)
    np.testing.assert_allclose(grad, tgrad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("cls,kw", [("HuberLoss", dict(delta=0.7)), ("MSELoss", {}),
                                    ("L1Loss", {})])
def test_regression_losses_match_torch(cls, kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    out, target = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    loss = getattr(fn, cls)(**kw)
    value, grad = loss.forward(out, target), loss.backward()
    tvalue, tgrad = torch_grad(getattr(torch.nn, cls)(**kw), out, target)
    np.testing.assert_allclose(value, tvalue, rtol=1e-12)
    np.testing.assert_allclose(grad, tgrad, rtol=1e-12)


def test_loss_target_checks():
    loss = fn.CrossEntropyLoss()
    out = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"class labels in \[0, 4\), got 4 at index 2"):
        loss.forward(out, [0, 1, 4])
    with pytest.raises(TypeError, match="integer class labels, got dtype float64"):
        loss.forward(out, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        loss.forward(out, [0, 1])
    with pytest.raises(ValueError, match="NaN or Inf"):
        fn.MSELoss().forward(np.zeros((2, 1)), [1.0, np.nan])
    with pytest.raises(RuntimeError, match="before forward"):
        fn.MSELoss().backward()
    # (N,) targets for an (N, 1) output, and float32 outputs keep float32 gradients
    mse = fn.MSELoss()
    assert mse.forward(np.ones((2, 1), np.float32), [0, 2]) == 1.0
    assert mse.backward().dtype == np.float32
