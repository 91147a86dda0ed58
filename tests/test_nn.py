"""Layers, models and initialisers: float64 gradient checks (central differences), the Module
API (flat parameter buffer, state_dict, repr, indexing), user-defined layers, errors."""
import math

import numpy as np
import pytest

import fastnn as fn

H = 1e-6


def numeric_grad(f, x):
    """Central differences of the scalar function f() with respect to the array x (in place)."""
    g = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        step = H * max(1.0, abs(old))
        x[idx] = old + step
        fp = f()
        x[idx] = old - step
        fm = f()
        x[idx] = old
        g[idx] = (fp - fm) / (2 * step)
    return g


def assert_grad(analytic, numeric, rtol=1e-6, atol=1e-8):
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def check_module(module, x, seed=0):
    """Gradient check of every parameter and of the input of `module` on
    loss = sum(forward(x) * R) with a fixed random R."""
    out = module.forward(x)
    R = np.random.default_rng(seed).standard_normal(out.shape)

    def f():
        return float(np.sum(module.forward(x) * R))

    module.zero_grad()
    module.forward(x)
    dx = module.backward(R.copy())
    grads = {name: p.grad.copy() for name, p in module.named_parameters()}
    assert_grad(dx, numeric_grad(f, x))
    for name, p in module.named_parameters():
        assert_grad(grads[name], numeric_grad(f, p), atol=1e-7)


def away_from_zero(x, gap=1e-3):
    return np.where(np.abs(x) < gap, x + 10 * gap, x)


LAYERS64 = {
    "Linear": lambda: fn.Linear(5, 4, dtype=np.float64, seed=1),
    "Linear-nobias": lambda: fn.Linear(5, 4, bias=False, dtype=np.float64, seed=1),
    "ReLU": fn.ReLU,
    "LeakyReLU": lambda: fn.LeakyReLU(0.2),
    "Sigmoid": fn.Sigmoid,
    "Tanh": fn.Tanh,
    "GELU": fn.GELU,
    "GELU-tanh": lambda: fn.GELU("tanh"),
    "SiLU": fn.SiLU,
    "Softmax": fn.Softmax,
    "Flatten": fn.Flatten,
}


@pytest.mark.parametrize("name", list(LAYERS64))
def test_layer_gradients(name):
    x = away_from_zero(np.random.default_rng(3).standard_normal((6, 5)))
    check_module(LAYERS64[name](), x)


def test_flatten_shapes_and_gradient():
    x = np.random.default_rng(0).standard_normal((3, 2, 4))
    layer = fn.Flatten()
    assert layer.forward(x).shape == (3, 8)
    assert layer.backward(np.ones((3, 8))).shape == (3, 2, 4)
    check_module(layer, x)


def test_dropout_gradient_mask_and_modes():
    x = np.random.default_rng(0).standard_normal((50, 40))
    d = fn.Dropout(0.25, seed=3)
    y = d.forward(x)
    kept = y != 0
    assert 0.65 < kept.mean() < 0.85  # 2000 draws around 0.75
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-15)
    dx = d.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx, kept / 0.75)
    d.eval()
    assert d.forward(x) is x or np.array_equal(d.forward(x), x)
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), np.ones_like(x))
    assert np.all(fn.Dropout(1.0, seed=0).forward(x) == 0)
    np.testing.assert_array_equal(fn.Dropout(0.0).forward(x), x)
    # seeded: the same masks again
    a, b = fn.Dropout(0.5, seed=7), fn.Dropout(0.5, seed=7)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


class FixedMaskDropout(fn.Dropout):
    """Dropout drawing the same mask at every forward (so central differences apply)."""

    def forward(self, x):
        self.generator = np.random.default_rng(5)
        return super().forward(x)


def test_dropout_numeric_gradient_with_a_fixed_mask():
    x = np.random.default_rng(3).standard_normal((6, 5))
    layer = FixedMaskDropout(0.4)
    assert 0 < np.count_nonzero(layer.forward(x)) < x.size
    check_module(layer, x)


def test_whole_model_gradient_float64():
    model = fn.Sequential(fn.Linear(6, 8), fn.Tanh(), fn.Linear(8, 7), fn.GELU(),
                          fn.Linear(7, 5), fn.LeakyReLU(0.1), fn.Linear(5, 3), fn.Softmax(),
                          dtype=np.float64, seed=0)
    x = np.random.default_rng(1).standard_normal((4, 6))
    check_module(model, x)


@pytest.mark.parametrize("loss_name", ["mse", "l1", "huber", "bce", "bce_pw", "ce", "ce_w_ls",
                                       "ce_probs", "ce_probs_w_ls", "ce_sum", "mse_none"])
def test_loss_gradients(loss_name):
    rng = np.random.default_rng(4)
    out = rng.standard_normal((5, 3))
    reg = out + away_from_zero(rng.standard_normal((5, 3)) * 0.7)  # no kinks of l1/huber
    labels = rng.integers(0, 3, 5)
    probs = rng.dirichlet(np.ones(3), 5)
    cases = {
        "mse": (fn.MSELoss(), reg), "l1": (fn.L1Loss(), reg),
        "huber": (fn.HuberLoss(delta=0.5), reg),
        "bce": (fn.BCEWithLogitsLoss(), rng.random((5, 3))),
        "bce_pw": (fn.BCEWithLogitsLoss(pos_weight=[1.0, 2.0, 0.5]), rng.random((5, 3))),
        "ce": (fn.CrossEntropyLoss(), labels),
        "ce_w_ls": (fn.CrossEntropyLoss(weight=[0.2, 1.0, 3.0], label_smoothing=0.1), labels),
        "ce_probs": (fn.CrossEntropyLoss(), probs),
        "ce_probs_w_ls": (fn.CrossEntropyLoss(weight=[0.2, 1.0, 3.0], label_smoothing=0.2),
                          probs),
        "ce_sum": (fn.CrossEntropyLoss(reduction="sum"), labels),
        "mse_none": (fn.MSELoss(reduction="none"), reg),
    }
    loss, target = cases[loss_name]

    def f():
        return float(np.sum(loss.forward(out, target)))

    f()
    g = loss.backward()
    assert_grad(g, numeric_grad(f, out))


def test_model_and_loss_gradient_end_to_end():
    model = fn.Sequential(fn.Linear(4, 6), fn.SiLU(), fn.Linear(6, 3), dtype=np.float64, seed=2)
    loss = fn.CrossEntropyLoss(label_smoothing=0.05)
    x = np.random.default_rng(0).standard_normal((7, 4))
    y = np.array([0, 1, 2, 2, 1, 0, 1])

    def f():
        return loss.forward(model.forward(x), y)

    model.zero_grad()
    f()
    model.backward(loss.backward())
    for p in model.parameters():
        assert_grad(p.grad.copy(), numeric_grad(f, p), atol=1e-8)


# ---- flat buffer, Parameter, gradient accumulation ---------------------------------------

def test_parameters_live_in_one_flat_buffer():
    model = fn.Sequential(fn.Linear(3, 4), fn.ReLU(), fn.Linear(4, 2))
    params = list(model.parameters())
    assert [p.shape for p in params] == [(4, 3), (4,), (2, 4), (2,)]
    buf = params[0]._buffer
    assert all(p._buffer is buf for p in params)
    for p in params:
        assert np.shares_memory(p, buf.data) and np.shares_memory(p.grad, buf.grad)
    buf.data[:] = 7.0
    assert np.all(model[2].bias == 7.0)
    model[0].weight.grad[...] = 1.0
    assert buf.grad.sum() == 12


def test_sequential_keeps_initial_values_and_casts_dtype():
    a = fn.Linear(3, 2, seed=5)
    w = np.array(a.weight)
    model = fn.Sequential(a, dtype=np.float64)
    assert model[0].weight.dtype == np.float64 and model[0].bias.dtype == np.float64
    np.testing.assert_array_equal(model[0].weight, w.astype(np.float64))
    assert model[0].weight.grad.dtype == np.float64


def test_parameter_arithmetic_gives_plain_arrays():
    p = fn.Linear(3, 2).weight
    assert isinstance(p, fn.Parameter)
    for r in (p * 2, p + p, np.exp(p), p.T @ np.ones(2)):
        assert type(r) is np.ndarray
    assert isinstance(p.sum(), (float, np.floating))


def test_assigning_a_weight_copies_into_the_view():
    model = fn.Sequential(fn.Linear(3, 2), fn.Linear(2, 1))
    view = model[0].weight
    model[0].weight = np.ones((2, 3), np.float32)
    assert model[0].weight is view and np.all(view == 1)
    assert np.all(view._buffer.data[:6] == 1)
    with pytest.raises(ValueError, match=r"weight: expected an array of shape \(2, 3\)"):
        model[0].weight = np.ones((3, 2), np.float32)
    with pytest.raises(TypeError, match="expected dtype float32, got float64"):
        model[0].weight = np.ones((2, 3))


def test_gradients_accumulate_until_zero_grad():
    model = fn.Sequential(fn.Linear(3, 2), fn.Tanh(), fn.Linear(2, 2), dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 3))
    dout = np.ones((4, 2))
    model.forward(x)
    model.backward(dout)
    once = [p.grad.copy() for p in model.parameters()]
    model.forward(x)
    model.backward(dout)
    for g, p in zip(once, model.parameters()):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-14)
    model.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())


def test_state_dict_keys_and_round_trip():
    model = fn.Sequential(fn.Linear(3, 4), fn.ReLU(), fn.Linear(4, 2, bias=False), seed=0)
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight"]
    assert type(sd["0.weight"]) is np.ndarray and not np.shares_memory(sd["0.weight"],
                                                                       model[0].weight)
    other = fn.Sequential(fn.Linear(3, 4), fn.ReLU(), fn.Linear(4, 2, bias=False), seed=1)
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


def test_load_state_dict_errors_change_nothing():
    model = fn.Sequential(fn.Linear(3, 4), fn.Linear(4, 2), seed=0)
    before = model.state_dict()
    good = {k: v + 1 for k, v in before.items()}
    bad_shape = dict(good, **{"1.weight": np.zeros((4, 2), np.float32)})
    with pytest.raises(ValueError, match=r"'1.weight' has shape \(4, 2\), the model expects "
                                         r"\(2, 4\)"):
        model.load_state_dict(bad_shape)
    with pytest.raises(TypeError, match="'0.bias' has dtype float64"):
        model.load_state_dict(dict(good, **{"0.bias": np.zeros(4)}))
    with pytest.raises(KeyError, match=r"missing keys \['1.bias'\].*unexpected keys \['x'\]"):
        model.load_state_dict({**{k: v for k, v in good.items() if k != "1.bias"},
                               "x": np.zeros(1)})
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    model.load_state_dict({"0.bias": good["0.bias"]}, strict=False)
    np.testing.assert_array_equal(model[0].bias, good["0.bias"])


def test_repr_like_pytorch():
    model = fn.Sequential(fn.Linear(784, 256), fn.ReLU(), fn.Dropout(0.2), fn.GELU("tanh"),
                          fn.Sequential(fn.Linear(256, 10, bias=False), fn.Softmax()))
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Linear(in_features=784, out_features=256, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Dropout(p=0.2)\n"
        "  (3): GELU(approximate='tanh')\n"
        "  (4): Sequential(\n"
        "    (0): Linear(in_features=256, out_features=10, bias=False)\n"
        "    (1): Softmax(dim=-1)\n"
        "  )\n"
        ")")


def test_indexing_slicing_len_iteration_append():
    layers = [fn.Linear(3, 4), fn.ReLU(), fn.Linear(4, 2)]
    model = fn.Sequential(*layers)
    assert len(model) == 3 and list(model) == layers and model[-1] is layers[2]
    head = model[:2]
    assert isinstance(head, fn.Sequential) and list(head) == layers[:2]
    assert head[0].weight is model[0].weight  # a slice shares the layers and the buffer
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(model.forward(x), model[2].forward(head.forward(x)))
    model.append(fn.Sigmoid())
    assert len(model) == 4 and model.forward(x).min() > 0
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight",
                                                        "2.bias"]


def test_train_eval_flags_are_recursive():
    model = fn.Sequential(fn.Linear(2, 2), fn.Sequential(fn.Dropout(0.5)))
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_predict_restores_mode_and_batches():
    model = fn.Sequential(fn.Linear(3, 5), fn.Dropout(0.5), fn.Linear(5, 2), seed=0)
    x = np.random.default_rng(0).standard_normal((10, 3))
    out = model.predict(x, batch_size=3)
    assert out.dtype == np.float32 and out.shape == (10, 2)
    assert model.training and model[1].training
    model.eval()
    np.testing.assert_allclose(out, model.forward(x.astype(np.float32)), rtol=1e-6)
    model.predict(x)
    assert not model.training


def test_shape_errors_name_the_layer():
    model = fn.Sequential(fn.Linear(784, 256), fn.ReLU(), fn.Linear(256, 10))
    with pytest.raises(ValueError, match=r"^Linear\(784, 256\) at index 0: expected input "
                                         r"with 784 features, got 100$"):
        model.forward(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match=r"^Linear\(3, 2\): expected input with 3 features"):
        fn.Linear(3, 2).forward(np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match=r"Linear\(784, 256\) at index 0: expected float32 "
                                        r"input like the weights, got float64"):
        model.forward(np.zeros((2, 784)))
    with pytest.raises(TypeError, match=r"ReLU\(\) at index 1: expected a float32 or float64"):
        model[1].forward(np.zeros((2, 3), np.int64))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        fn.Linear(2, 2).backward(np.zeros((1, 2), np.float32))
    with pytest.raises(TypeError, match="layer 1 must be a fastnn Module"):
        fn.Sequential(fn.Linear(2, 2), lambda x: x)
    with pytest.raises(ValueError, match="in_features must be an int >= 1"):
        fn.Linear(0, 3)


# ---- user-defined layers --------------------------------------------------------------------

class Scale(fn.Module):
    """y = x * s, one learned scale per feature (the example of fastnn.nn's docstring)."""

    def __init__(self, features, dtype=np.float64):
        super().__init__()
        self.s = fn.Parameter(np.linspace(0.5, 1.5, features).astype(dtype))

    def forward(self, x):
        self.x = x
        return x * self.s

    def backward(self, dout):
        self.s.grad += (dout * self.x).sum(axis=0)
        return dout * self.s


def test_user_defined_layer_in_a_sequential():
    model = fn.Sequential(fn.Linear(4, 5, dtype=np.float64), Scale(5), fn.Tanh(),
                          fn.Linear(5, 2, dtype=np.float64), seed=0)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.s", "3.weight", "3.bias"]
    s = model[1].s
    assert s._buffer is model[0].weight._buffer  # joined the flat buffer
    x = np.random.default_rng(0).standard_normal((3, 4))
    check_module(model, x)
    # one optimizer step over the flat buffer moves the user's parameter too
    opt = fn.SGD(model.parameters(), lr=0.1)
    model.zero_grad()
    model.forward(x)
    model.backward(np.ones((3, 2)))
    expected = np.array(s) - 0.1 * s.grad
    opt.step()
    np.testing.assert_allclose(model[1].s, expected, rtol=1e-15)


def test_module_without_init_call_is_explained():
    class Bad(fn.Module):
        def __init__(self):
            self.w = 1

    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\)"):
        Bad()


# ---- initialisers ---------------------------------------------------------------------------

def test_default_linear_init_is_pytorch_like():
    layer = fn.Linear(400, 300, seed=0)
    bound = 1 / math.sqrt(400)
    for a in (layer.weight, layer.bias):
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
    assert abs(np.std(layer.weight) - bound / math.sqrt(3)) < 0.02 * bound


@pytest.mark.parametrize("name,std", [
    ("xavier_uniform", math.sqrt(2 / (400 + 300))), ("xavier_normal", math.sqrt(2 / 700)),
    ("kaiming_uniform", math.sqrt(2 / 400)), ("kaiming_normal", math.sqrt(2 / 400)),
    ("normal", 1.0), ("uniform", 1 / math.sqrt(3)),
])
def test_named_initialisers_have_the_textbook_spread(name, std):
    layer = fn.Linear(400, 300, init=name, seed=0)
    assert abs(np.std(layer.weight) / std - 1) < 0.02  # 120000 draws: ~0.3% sampling error
    assert abs(np.mean(layer.weight)) < 0.02 * std
    assert not layer.bias.any()


def test_init_functions_and_callables():
    rng = np.random.default_rng(0)
    u = fn.init.uniform((1000,), rng, a=2.0, b=3.0)
    assert u.min() >= 2 and u.max() < 3 and u.dtype == np.float32
    assert not fn.init.zeros((3, 3)).any()
    layer = fn.Linear(3, 2, init=lambda shape, rng: np.full(shape, 0.5))
    assert np.all(layer.weight == 0.5)
    assert fn.init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    with pytest.raises(ValueError, match="init must be one of"):
        fn.Linear(3, 2, init="glorot")


def test_seeds_make_models_reproducible():
    def build(seed):
        return fn.Sequential(fn.Linear(5, 4), fn.ReLU(), fn.Linear(4, 3), seed=seed)

    a, b, c = build(3), build(3), build(4)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    assert not np.array_equal(a[0].weight, c[0].weight)
    fn.manual_seed(11)
    w1 = np.array(fn.Linear(5, 4).weight)
    fn.manual_seed(11)
    np.testing.assert_array_equal(fn.Linear(5, 4).weight, w1)
    np.testing.assert_array_equal(fn.Linear(5, 4, seed=2).weight, fn.Linear(5, 4, seed=2).weight)


def test_deepcopy_and_pickle_give_independent_models():
    import copy
    import pickle

    model = fn.Sequential(fn.Linear(3, 2), fn.ReLU(), seed=0)
    model[0].weight.grad[...] = 1.0
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        w = twin[0].weight
        assert isinstance(w, fn.Parameter) and np.all(w.grad == 1.0)
        assert not np.shares_memory(w, model[0].weight)
        assert not np.shares_memory(w.grad, model[0].weight.grad)
        before = np.array(model[0].weight)
        fn.SGD(twin.parameters(), lr=0.5).step()
        np.testing.assert_array_equal(model[0].weight, before)
        np.testing.assert_allclose(w, before - 0.5, rtol=1e-6)


def test_backward_without_the_input_gradient_gives_the_same_parameter_gradients():
    model = fn.Sequential(fn.Linear(4, 5), fn.ReLU(), fn.Linear(5, 2), dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((3, 4))
    dout = np.random.default_rng(1).standard_normal((3, 2))
    model.forward(x)
    assert model.backward(dout).shape == (3, 4)
    full = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model.forward(x)
    assert model.backward(dout, input_grad=False) is None
    for g, p in zip(full, model.parameters()):
        np.testing.assert_array_equal(p.grad, g)
