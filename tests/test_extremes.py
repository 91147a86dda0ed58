"""Numerics at the extremes, where PyTorch is wrong too: each case against a float64 oracle
written in the stable form (log-sum-exp relative to the maximum, erfc for the normal tail).
Also the guards of training: a non-finite loss stops fit with the last finite weights."""
import math

import numpy as np
import pytest

import fastnn as fn
from fastnn import ops
from fastnn._kernels import FusedNet, NonFiniteLossError

DTYPES = [np.float32, np.float64]
BIG = [1e8, 1e15, 1e30]


def lse_oracle(z):
    """log-sum-exp of each row, in float64, relative to the row's maximum."""
    z = np.asarray(z, np.float64)
    m = z.max(axis=1, keepdims=True)
    return m[:, 0], np.log(np.exp(z - m).sum(axis=1))


def log_softmax_oracle(z):
    z = np.asarray(z, np.float64)
    m, ls = lse_oracle(z)
    return (z - m[:, None]) - ls[:, None]


def ce_oracle(z, labels):
    """cross-entropy per row: (max - z_y) + log(sum exp(z - max))."""
    z = np.asarray(z, np.float64)
    m, ls = lse_oracle(z)
    return (m - z[np.arange(len(z)), labels]) + ls


def _logits(dtype, big):
    return np.array([[big, big], [big, -big], [-big, big], [big, big - big / 4],
                     [-big, -big]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_equal_large_logits(dtype):
    """The reported case: log_softmax([[1e8, 1e8]]) was 0 (right: -log 2)."""
    got = ops.log_softmax(np.array([[1e8, 1e8]], dtype))
    np.testing.assert_allclose(got, [[-math.log(2)] * 2], rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", BIG)
def test_log_softmax_large(dtype, big):
    z = _logits(dtype, big)
    np.testing.assert_allclose(ops.log_softmax(z), log_softmax_oracle(z), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", BIG)
def test_cross_entropy_labels_large(dtype, big):
    z = _logits(dtype, big)
    for label in (0, 1):
        y = np.full(len(z), label, np.int64)
        want = ce_oracle(z, y)
        got = ops.cross_entropy(z, y, reduction="none")
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        # the mean, and the gradient: softmax - onehot, finite
        np.testing.assert_allclose(ops.cross_entropy(z, y), want.mean(), rtol=1e-6, atol=1e-6)
        g = ops.cross_entropy_backward(z, y)
        assert np.isfinite(g).all()
        sm = np.exp(log_softmax_oracle(z))
        sm[np.arange(len(z)), y] -= 1
        np.testing.assert_allclose(g, sm / len(z), atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", BIG)
def test_cross_entropy_label_smoothing_large(dtype, big):
    z = _logits(dtype, big)
    y = np.zeros(len(z), np.int64)
    eps = 0.1
    lsm = log_softmax_oracle(z)
    want = -((1 - eps) * lsm[np.arange(len(z)), y] + eps / 2 * lsm.sum(axis=1))
    got = ops.cross_entropy(z, y, label_smoothing=eps, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", BIG)
def test_cross_entropy_probability_targets_large(dtype, big):
    z = _logits(dtype, big)
    t = np.tile(np.array([[0.25, 0.75]], dtype), (len(z), 1))
    loss = fn.CrossEntropyLoss(reduction="none")
    want = -(t.astype(np.float64) * log_softmax_oracle(z)).sum(axis=1)
    np.testing.assert_allclose(loss.forward(z, t), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", BIG)
def test_cross_entropy_fused_large(dtype, big):
    """The fused step's loss (one Linear whose output is the logits; lr 0 keeps it fixed)."""
    z = _logits(dtype, big)
    params = np.array([1, 0, 0, 1], dtype)      # W = I (2x2), no bias: logits = X
    for label in (0, 1):
        y = np.full(len(z), label, np.int64)
        net = FusedNet([(2, 2, 0, -1, "identity", 0.0)], params, np.zeros(4, dtype),
                       loss="cross_entropy", optim="sgd", hyper={"lr": 0.0},
                       max_batch=len(z))
        total, _ = net.train(z, y, np.arange(len(z)), len(z))   # sum of (batch mean * rows)
        np.testing.assert_allclose(total, ce_oracle(z, y).sum(), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_with_logits_at_infinity(dtype):
    """BCE with logits at +-inf was NaN where the answer is 0 (or inf)."""
    z = np.array([np.inf, -np.inf, np.inf, -np.inf], dtype)
    t = np.array([1, 0, 0, 1], dtype)
    got = ops.binary_cross_entropy_with_logits(z, t, reduction="none")
    np.testing.assert_array_equal(got, [0, 0, np.inf, np.inf])
    g = ops.binary_cross_entropy_with_logits_backward(z, t, reduction="sum")
    np.testing.assert_array_equal(g, [0, 0, 1, -1])
    loss = fn.BCEWithLogitsLoss()
    assert loss.forward(z[:2], t[:2]) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", BIG)
def test_bce_with_logits_large(dtype, big):
    z = np.array([big, -big, big, -big, 0.5], dtype)
    t = np.array([1, 0, 0.25, 0.75, 0.5], dtype)
    pw = np.array([2.0], dtype)
    zz, tt = z.astype(np.float64), t.astype(np.float64)
    # (1 - t) z + lw softplus(-z), lw = 1 + (pw - 1) t, softplus(-z) = max(-z, 0) + log1p(e^-|z|)
    lw = 1 + (2.0 - 1) * tt
    want = (1 - tt) * zz + lw * (np.maximum(-zz, 0) + np.log1p(np.exp(-np.abs(zz))))
    got = ops.binary_cross_entropy_with_logits(z.reshape(-1, 1), t.reshape(-1, 1), pw,
                                               reduction="none")
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-6, atol=1e-6)
    assert np.isfinite(ops.binary_cross_entropy_with_logits_backward(
        z.reshape(-1, 1), t.reshape(-1, 1), pw)).all()


def test_rmsprop_centered_constant_gradient_stays_finite():
    """With a constant gradient, rounding made square_avg - grad_avg^2 negative (float32,
    defaults: step 1208) and the update NaN. The variance is clamped at 0, as the math says."""
    p = np.zeros(1000, np.float32)
    g = np.full(1000, 0.3, np.float32)
    sq, ga = np.zeros_like(p), np.zeros_like(p)
    for _ in range(3000):
        ops.rmsprop_step(p, g, sq, None, ga, centered=True)
    assert np.isfinite(p).all()
    # the Python optimizer (same kernel) too
    w = fn.Parameter(np.zeros(4, np.float32))
    opt = fn.RMSprop([w], centered=True)
    for _ in range(3000):
        w.grad[...] = 0.3
        opt.step()
    assert np.isfinite(w).all()


def gelu_oracle(x, approximate="none"):
    x = np.asarray(x, np.float64)
    if approximate == "tanh":
        u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
        return x / (1 + np.exp(-2 * u))             # = 0.5 x (1 + tanh u), without cancelling
    from math import erfc
    return np.array([0.5 * v * erfc(-v / math.sqrt(2)) for v in x])


def gelu_grad_oracle(x, approximate="none"):
    h = 1e-6
    x = np.asarray(x, np.float64)
    return (gelu_oracle(x + h * np.abs(x), approximate) - gelu_oracle(x - h * np.abs(x),
            approximate)) / (2 * h * np.abs(x))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_negative_tail(approximate, dtype):
    """float32 GELU lost its negative tail (tanh form 30 % off at -5, exactly 0 below -5.16)."""
    x = np.array([-3.0, -5.0, -5.2, -6.0, -8.0, -10.0, -12.0], dtype)
    want = gelu_oracle(x, approximate)
    got = ops.gelu(x, approximate=approximate)
    representable = np.abs(want) > 2 * np.finfo(dtype).smallest_subnormal
    assert (got[representable] < 0).all()
    np.testing.assert_allclose(got, want, rtol=2e-5 if dtype == np.float32 else 1e-12,
                               atol=2 * np.finfo(dtype).smallest_subnormal)
    grad = ops.gelu_backward(np.ones_like(x), x, approximate=approximate)
    np.testing.assert_allclose(grad, gelu_grad_oracle(x, approximate),
                               rtol=1e-4 if dtype == np.float32 else 1e-6,
                               atol=2 * np.finfo(dtype).smallest_subnormal)


# ---- training that cannot silently fail ---------------------------------------------------

def _digits():
    X, y = fn.datasets.load_digits()
    return (X / 16).astype(np.float32), y


def _mlp(extra=()):
    return fn.Sequential(fn.Linear(64, 32), fn.ReLU(), *extra, fn.Linear(32, 10), seed=0)


@pytest.mark.parametrize("case", ["lr", "inputs", "per-op", "adam"])
def test_fit_stops_at_nonfinite_loss(case):
    """lr=1e3 or inputs scaled by 1e30 made fit return with every weight NaN; evaluate then
    counted the NaN rows as class 0. fit now stops at the first non-finite loss, names the
    epoch and batch, and keeps the last finite weights (fused and per-op paths)."""
    X, y = _digits()
    m = _mlp()
    if case == "inputs":       # cross-entropy, fused
        loss, target, kw = fn.CrossEntropyLoss(), y, {}
        opt = fn.SGD(m.parameters(), lr=0.1)
        X = X * np.float32(1e30)
    else:                      # regression on one-hot targets diverges geometrically
        loss, target = fn.MSELoss(), fn.one_hot(y, 10)
        kw = {"metrics": ["mae"]} if case == "per-op" else {}   # regression metrics: per-op
        opt = fn.Adam(m.parameters(), lr=1e30) if case == "adam" else \
            fn.SGD(m.parameters(), lr=1e3)
    with pytest.raises(FloatingPointError, match=r"epoch \d+, batch \d+ of \d+"):
        fn.fit(m, loss, opt, X, target, epochs=50, batch_size=32, verbose=0, seed=0, **kw)
    assert all(np.isfinite(p).all() for p in m.parameters())


def test_fit_nonfinite_opt_out_trains_on():
    X, y = _digits()
    m = _mlp()
    h = fn.fit(m, fn.CrossEntropyLoss(), fn.SGD(m.parameters(), lr=1e30), X * np.float32(1e30),
               y, epochs=2, verbose=0, seed=0, error_if_nonfinite=False)
    assert not np.isfinite(h.history["loss"][-1])


def test_nan_outputs_are_never_correct():
    """The fused step's accuracy count: a NaN row is not class 0."""
    params = np.array([1, 0, 0, 1], np.float32)
    net = FusedNet([(2, 2, 0, -1, "identity", 0.0)], params, np.zeros(4, np.float32),
                   loss="cross_entropy", optim="sgd", hyper={"lr": 0.0}, max_batch=4)
    net.nonfinite_ok = True
    X = np.array([[np.nan, 0], [1, 0], [np.nan, np.nan], [0, 1]], np.float32)
    y = np.array([0, 0, 0, 1])
    _, correct = net.train(X, y, np.arange(4), 4)
    assert correct == 2
    net.nonfinite_ok = False
    with pytest.raises(NonFiniteLossError) as e:
        net.train(X, y, np.arange(4), 2)
    assert e.value.step == 1 and net.step == 1      # the first call made one update


def test_fused_stop_is_before_the_update():
    """The batch whose loss is not finite makes no update; the earlier ones stay applied."""
    p0 = np.array([1, 0, 0, 1], np.float32)
    params = p0.copy()
    net = FusedNet([(2, 2, 0, -1, "identity", 0.0)], params, np.zeros(4, np.float32),
                   loss="cross_entropy", optim="sgd", hyper={"lr": 0.5}, max_batch=2)
    X = np.array([[1, 0], [0, 1], [np.inf, 0], [0, 1]], np.float32)
    with pytest.raises(NonFiniteLossError) as e:
        net.train(X, np.array([0, 1, 0, 1]), np.arange(4), 2)
    assert e.value.step == 1 and net.step == 1
    assert np.isfinite(params).all() and not np.array_equal(params, p0)


# ---- FusedNet's plan and hyper-parameters --------------------------------------------------

P, G = np.zeros(10, np.float32), np.zeros(10, np.float32)


@pytest.mark.parametrize("units", [
    [(1, 1, 2 ** 63 - 1, -1, "identity", 0.0)],     # the reported case: offset + in*out wraps
    [(1, 1, 0, 2 ** 63 - 1, "identity", 0.0)],
    [(2 ** 32, 2 ** 32, 0, -1, "identity", 0.0)],
    [(3, 2, 0, -1, "identity", 0.0), (3, 1, 6, -1, "identity", 0.0)],
    [(0, 1, 0, -1, "identity", 0.0)],
])
def test_fused_plan_overflow_refused(units):
    with pytest.raises(ValueError, match="units"):
        FusedNet(units, P, G, loss="mse", optim="sgd", hyper={"lr": 1.0}, max_batch=1)


@pytest.mark.parametrize("kw,word", [
    ({"hyper": {"lr": -1.0}}, "lr"),
    ({"hyper": {"lr": float("nan")}}, "lr"),
    ({"hyper": {"lr": float("inf")}}, "lr"),
    ({"hyper": {"lr": 0.1, "weight_decay": -1}}, "weight_decay"),
    ({"hyper": {"lr": 0.1, "momentum": -0.5}}, "momentum"),
    ({"optim": "adam", "hyper": {"lr": 0.1, "beta1": 1.5, "beta2": 0.9}}, "beta1"),
    ({"optim": "adam", "hyper": {"lr": 0.1, "beta1": 0.9, "beta2": 1.0}}, "beta2"),
    ({"hyper": {"lr": 0.1}, "label_smoothing": 5}, "label_smoothing"),
    ({"hyper": {"lr": 0.1}, "loss": "huber", "delta": 0}, "delta"),
    ({"hyper": {"lr": 0.1, "nesterov": True}}, "nesterov"),
])
def test_fused_hyper_validated(kw, word):
    kw = dict({"loss": "mse", "optim": "sgd"}, **kw)
    states = [np.zeros(10, np.float32), np.zeros(10, np.float32)] if kw["optim"] == "adam" else \
        (None, None, None)
    with pytest.raises(ValueError, match=word):
        FusedNet([(2, 2, 0, -1, "identity", 0.0)], P, G, states=states, max_batch=1, **kw)


# ---- the C checks on their own (the Python front end refuses these first) -------------------

from fastnn import _kernels as K  # noqa: E402

BIGI = 2 ** 63 - 1


@pytest.mark.parametrize("units,nparams,max_batch", [
    ([(1, 1, BIGI, -1)], 10, 1),                 # offset + in*out wraps around
    ([(1, 1, 0, BIGI)], 10, 1),                  # bias offset + out wraps
    ([(2 ** 32, 2 ** 32, 0, -1)], 10, 1),        # in*out overflows
    ([(2 ** 40, 2 ** 40, 0, -1)], BIGI, 1),
    ([(4, 4, 0, -1)], 16, 2 ** 62),              # arena: max_batch * width * 4 overflows
    ([(2 ** 61, 1, 0, -1)], BIGI, 8),
])
def test_c_net_check_refuses_overflow(units, nparams, max_batch):
    nbytes, status = K._c_net_check(units, nparams, max_batch)
    assert status == "invalid argument"


def test_c_net_check_accepts_valid():
    nbytes, status = K._c_net_check([(4, 3, 0, 12), (3, 2, 15, -1)], 21, 8)
    assert status == "ok" and nbytes > 0


@pytest.mark.parametrize("args", [
    (0, 0, 2 ** 40, 2 ** 40, 2 ** 40, 2 ** 40, 2 ** 40, 2 ** 40),   # extents overflow
    (0, 0, 2, 2, 2, BIGI, 2, 2),                                    # (rows-1)*ld wraps
    (1, 1, 2, 2, 2, 2, BIGI, 2),
    (0, 0, 3, 2, 2, 2, 2, BIGI // 2),
    (0, 0, -1, 2, 2, 2, 2, 2),
])
def test_c_gemm_refuses_overflow(args):
    assert K._c_gemm_status(*args) == "invalid argument"


@pytest.mark.parametrize("n", [-1, BIGI, BIGI // 4])
def test_c_elementwise_refuses_huge(n):
    assert K._c_elementwise_status(n) == "invalid argument"
