"""FusedNet's scikit-learn options: the weights-only L2 term and Adam's eps on the uncorrected
root of the second moment, against numpy formulas (float64)."""
import numpy as np
import pytest

import fastnn as fn
from fastnn import _fused


def _net(optim, l2, uncorrected, lr=0.05):
    model = fn.Sequential(fn.Linear(5, 4), fn.Tanh(), fn.Linear(4, 3), dtype=np.float64, seed=0)
    opt = (fn.Adam(model.parameters(), lr=lr) if optim == "adam"
           else fn.SGD(model.parameters(), lr=lr))
    X = np.random.default_rng(0).standard_normal((8, 5))
    y = np.arange(8) % 3
    plan = _fused.training_plan(model, fn.CrossEntropyLoss(), opt, X, y, 8, [], l2=l2,
                                adam_eps_uncorrected=uncorrected)
    return model, plan, X, y


def _grads(model, X, y):
    """Gradients of the mean cross-entropy (per-op path), in model.parameters() order."""
    out = model.forward(X)
    loss = fn.CrossEntropyLoss()
    loss.forward(out, y)
    for p in model.parameters():
        p.grad[...] = 0
    model.backward(loss.backward())
    return [np.array(p.grad) for p in model.parameters()]


def test_l2_acts_on_weights_only_divided_by_rows():
    model, plan, X, y = _net("sgd", l2=0.3, uncorrected=False)
    before = [np.array(p) for p in model.parameters()]
    g = _grads(model, X, y)
    plan.train(X, y, np.arange(8), 8, 0)
    for p, b, gi, name in zip(model.parameters(), before, g, ["w", "b", "w", "b"]):
        expect = gi + (0.3 * b / 8 if name == "w" else 0)
        np.testing.assert_allclose(p, b - 0.05 * expect, rtol=0, atol=1e-14)


def test_adam_eps_on_the_uncorrected_root():
    eps = 1e-2   # large, so that where it is added shows
    for uncorrected in (False, True):
        model, plan, X, y = _net("adam", l2=0.0, uncorrected=uncorrected)
        plan.net._set_hyper("eps", eps)
        before = [np.array(p) for p in model.parameters()]
        g = _grads(model, X, y)
        plan.train(X, y, np.arange(8), 8, 0)
        for p, b, gi in zip(model.parameters(), before, g):
            m, v = 0.1 * gi, 0.001 * gi * gi
            if uncorrected:   # scikit-learn: lr * sqrt(1 - b2) / (1 - b1) * m / (sqrt(v) + eps)
                step = 0.05 * np.sqrt(1 - 0.999) / (1 - 0.9) * m / (np.sqrt(v) + eps)
            else:             # PyTorch: lr / (1 - b1) * m / (sqrt(v) / sqrt(1 - b2) + eps)
                step = 0.05 / (1 - 0.9) * m / (np.sqrt(v) / np.sqrt(1 - 0.999) + eps)
            np.testing.assert_allclose(p, b - step, rtol=1e-12, atol=1e-15)


def test_negative_l2_is_refused():
    model = fn.Sequential(fn.Linear(2, 2), seed=0)
    opt = fn.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="l2"):
        _fused.training_plan(model, fn.MSELoss(), opt, np.zeros((4, 2), np.float32),
                             np.zeros((4, 2), np.float32), 4, [], l2=-1.0)


@pytest.mark.parametrize("threads_", [1, 2])
def test_l2_inside_the_fused_update_gives_the_same_bits(threads, threads_, each_arch):
    """The L2 term is added to each weight-gradient tile inside the GEMM that applies the
    optimizer step (csrc/net.c, fused_update): float32 results equal numpy's float32 formula
    g + float32(l2 / rows) * W, then W - lr * g, bit for bit, on a layer wide enough for the
    blocked GEMM."""
    threads(threads_)
    model = fn.Sequential(fn.Linear(40, 50), fn.ReLU(), fn.Linear(50, 3), seed=1)
    opt = fn.SGD(model.parameters(), lr=0.05)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((64, 40)).astype(np.float32)
    y = np.arange(64) % 3
    plan = _fused.training_plan(model, fn.CrossEntropyLoss(), opt, X, y, 64, [], l2=0.3)
    before = [np.array(p) for p in model.parameters()]
    g = _grads(model, X, y)
    plan.train(X, y, np.arange(64), 64, 0)
    for p, b, gi, name in zip(model.parameters(), before, g, ["w", "b", "w", "b"]):
        if name == "w":
            gi = gi + np.float32(0.3 / 64) * b
        np.testing.assert_array_equal(p, b - np.float32(0.05) * gi)
