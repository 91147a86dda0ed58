"""Float64 central-difference gradient checks of every fastnn backward kernel.

Each backward kernel is compared with (F(x + h e_i) - F(x - h e_i)) / (2 h) of the matching
fastnn forward kernel, h = H * max(1, |x_i|) with H = 1e-6:

    |analytic - numeric| <= RTOL * |numeric| + ATOL * scale,   RTOL = 1e-6, ATOL = 1e-9

where scale is max(1, |F|) (F's rounding error eps |F| / h, about 2e-10 |F|, is the floor of a
central difference; truncation error h^2 |F'''| / 6 is ~1e-12 here). Measured worst
|analytic - numeric| / (|numeric| + scale) on these inputs is 1.5e-10 (bias_add, weighted
cross-entropy), i.e. at most 8% of the tolerance; a gradient off by 1e-5 relative fails
(test_numeric_grad_detects_a_wrong_gradient).

Inputs stay away from the kinks by at least 1e-3: relu/leaky_relu at 0, softplus where
beta * x crosses threshold (the function jumps there, as in PyTorch), l1 at pred == target,
huber at |pred - target| == delta.
"""
import numpy as np
import pytest

from fastnn import ops

H = 1e-6
RTOL = 1e-6
ATOL = 1e-9
KINK_GAP = 1e-3
SEEDS = [0, 1, 2]
REDUCTIONS = ["mean", "sum", "none"]


def away_from(x, kinks):
    """Move entries of x that lie within KINK_GAP of a kink (array broadcastable to x)."""
    x = x.copy()
    for _ in range(10):
        near = np.zeros(x.shape, bool)
        for k in kinks:
            near |= np.abs(x - k) < KINK_GAP
        if not near.any():
            return x
        x[near] += 10 * KINK_GAP
    raise AssertionError("could not move the inputs away from the kinks")


def numeric_grad(f, x):
    """Central differences of the scalar function f at x, one coordinate at a time."""
    g = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        step = H * max(1.0, abs(x[idx]))
        xp, xm = x.copy(), x.copy()
        xp[idx] += step
        xm[idx] -= step
        g[idx] = (f(xp) - f(xm)) / (xp[idx] - xm[idx])
    return g


def numeric_grad_elementwise(f, x):
    """Central differences of an element-wise f (y_i depends on x_i only), all at once."""
    step = H * np.maximum(1.0, np.abs(x))
    xp, xm = x + step, x - step
    return (f(xp) - f(xm)) / (xp - xm)


def assert_grad(analytic, numeric, scale, what):
    analytic = np.asarray(analytic, dtype=np.float64)
    assert analytic.shape == numeric.shape, what
    assert np.isfinite(analytic).all() and np.isfinite(numeric).all(), what
    tol = RTOL * np.abs(numeric) + ATOL * np.maximum(1.0, scale)
    err = np.abs(analytic - numeric)
    i = np.unravel_index(np.argmax(err / tol), err.shape)
    assert (err <= tol).all(), (f"{what}: analytic {analytic[i]!r} vs numeric {numeric[i]!r} "
                                f"at {i} (err {err[i]:.3g} > tol {tol[i]:.3g})")


# ---- activations -----------------------------------------------------------------------------

# id -> (name, kwargs, kinks (x values where the derivative jumps))
ACTS = {
    "relu": ("relu", {}, [0.0]),
    "leaky_relu": ("leaky_relu", {"negative_slope": 0.01}, [0.0]),
    "leaky_relu_0.3": ("leaky_relu", {"negative_slope": 0.3}, [0.0]),
    "sigmoid": ("sigmoid", {}, []),
    "tanh": ("tanh", {}, []),
    "gelu": ("gelu", {"approximate": "none"}, []),
    "gelu_tanh": ("gelu", {"approximate": "tanh"}, []),
    "silu": ("silu", {}, []),
    "softplus": ("softplus", {}, [20.0]),
    "softplus_b2_t5": ("softplus", {"beta": 2.0, "threshold": 5.0}, [2.5]),
    "softplus_b0.5_t3": ("softplus", {"beta": 0.5, "threshold": 3.0}, [6.0]),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(ACTS))
def test_activation_backward(case, seed):
    name, kw, kinks = ACTS[case]
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(-8, 8, 200), rng.normal(0, 1, 100),
                        rng.uniform(-25, 25, 50), [1e-2, -1e-2, 19.5, 20.5, 2.4, 2.6]])
    x = away_from(x, kinks)
    dy = rng.uniform(-3, 3, x.size)
    fwd = getattr(ops, name)
    numeric = dy * numeric_grad_elementwise(lambda v: fwd(v, **kw), x)
    analytic = getattr(ops, name + "_backward")(dy, x, **kw)
    assert_grad(analytic, numeric, np.abs(dy) * np.abs(fwd(x, **kw)), f"{case} backward")


# ---- softmax, log_softmax, bias --------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_backward(log, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, (4, 7))
    dy = rng.normal(0, 1, x.shape)
    fwd = ops.log_softmax if log else ops.softmax
    bwd = ops.log_softmax_backward if log else ops.softmax_backward
    loss = lambda v: float(np.sum(dy * fwd(v)))  # noqa: E731
    assert_grad(bwd(dy, fwd(x)), numeric_grad(loss, x), abs(loss(x)),
                f"{'log_' if log else ''}softmax backward")


@pytest.mark.parametrize("seed", SEEDS)
def test_bias_grad(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, (6, 5))
    b = rng.normal(0, 1, 5)
    dy = rng.normal(0, 1, x.shape)
    loss = lambda v: float(np.sum(dy * ops.bias_add(x, v)))  # noqa: E731
    assert_grad(ops.bias_grad(dy), numeric_grad(loss, b), abs(loss(b)), "bias_grad")
    # and d/dx of the same loss is dy itself (bias_add is x + b)
    loss_x = lambda v: float(np.sum(dy * ops.bias_add(v, b)))  # noqa: E731
    assert_grad(dy, numeric_grad(loss_x, x), abs(loss_x(x)), "bias_add d/dx")


# ---- losses ----------------------------------------------------------------------------------

def reduced(forward, reduction, go):
    """The scalar whose gradient the backward kernel returns: the reduced loss, or
    sum(grad_output * per-item loss) for reduction='none'."""
    if reduction == "none":
        return lambda v: float(np.sum(go * forward(v, "none")))
    return lambda v: forward(v, reduction)


# id -> (name, kwargs, kinks of d = pred - target)
REG = {
    "mse": ("mse_loss", {}, []),
    "l1": ("l1_loss", {}, [0.0]),
    "huber": ("huber_loss", {"delta": 1.0}, [-1.0, 1.0]),
    "huber_0.25": ("huber_loss", {"delta": 0.25}, [-0.25, 0.25]),
    "huber_3": ("huber_loss", {"delta": 3.0}, [-3.0, 3.0]),
}


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(REG))
def test_regression_loss_backward(case, reduction, seed):
    name, kw, kinks = REG[case]
    rng = np.random.default_rng(seed)
    target = rng.normal(0, 2, (3, 5))
    pred = target + away_from(rng.normal(0, 2, target.shape), kinks)
    go = rng.normal(0, 1, target.shape)
    fwd = getattr(ops, name)
    f = reduced(lambda v, r: fwd(v, target, reduction=r, **kw), reduction, go)
    analytic = getattr(ops, name + "_backward")(pred, target, reduction=reduction,
                                                grad_output=go if reduction == "none" else None,
                                                **kw)
    assert_grad(analytic, numeric_grad(f, pred), abs(f(pred)), f"{case} {reduction}")


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("pos_weight", [False, True], ids=["no_pos_weight", "pos_weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_backward(reduction, pos_weight, seed):
    rng = np.random.default_rng(seed)
    z = np.concatenate([rng.normal(0, 3, (3, 4)), [[12.0, -12.0, 0.1, -0.1]]])
    t = rng.uniform(0, 1, z.shape)
    t[0] = [0.0, 1.0, 0.0, 1.0]
    pw = rng.uniform(0.2, 4, z.shape[1]) if pos_weight else None
    go = rng.normal(0, 1, z.shape)
    f = reduced(lambda v, r: ops.binary_cross_entropy_with_logits(v, t, pw, r), reduction, go)
    analytic = ops.binary_cross_entropy_with_logits_backward(
        z, t, pw, reduction, go if reduction == "none" else None)
    assert_grad(analytic, numeric_grad(f, z), abs(f(z)), f"bce {reduction} pw={pos_weight}")


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_backward(reduction, weighted, smoothing, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, (5, 4))
    labels = rng.integers(0, 4, 5)
    w = rng.uniform(0.2, 3, 4) if weighted else None
    go = rng.normal(0, 1, 5)
    f = reduced(lambda v, r: ops.cross_entropy(v, labels, w, smoothing, r), reduction, go)
    analytic = ops.cross_entropy_backward(z, labels, w, smoothing, reduction,
                                          go if reduction == "none" else None)
    assert_grad(analytic, numeric_grad(f, z), abs(f(z)),
                f"cross_entropy {reduction} weighted={weighted} smoothing={smoothing}")


def test_numeric_grad_detects_a_wrong_gradient():
    """The checker itself: a gradient off by 1e-5 relative must be rejected."""
    x = np.linspace(-2, 2, 9)
    numeric = numeric_grad_elementwise(ops.tanh, x)
    with pytest.raises(AssertionError):
        assert_grad(ops.tanh_backward(np.ones_like(x), x) * (1 + 1e-5), numeric, 1.0, "tanh")
