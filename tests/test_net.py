"""The fused training executor (fastnn._kernels.FusedNet) against the same step composed
from fastnn.ops calls in Python: forward, loss, backward, optimizer."""
import numpy as np
import pytest

import fastnn
from fastnn import ops
from fastnn._kernels import FusedNet

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(x):
    """splitmix64 on uint64 arrays (wrapping arithmetic), as csrc/net.c."""
    with np.errstate(over="ignore"):
        x = (np.asarray(x, np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & M64
        return x ^ (x >> np.uint64(31))


def dropout_mask(seed, step, unit, n, p):
    key = mix64(np.uint64(seed) ^ mix64(np.uint64(step)))
    key = mix64(key ^ np.uint64(unit))
    u = (mix64(key ^ mix64(np.arange(n, dtype=np.uint64))) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return np.where(u >= p, 1.0 / (1.0 - p), 0.0)


ACT_FWD = {"identity": lambda z: z, "relu": ops.relu, "tanh": ops.tanh, "gelu": ops.gelu,
           "sigmoid": ops.sigmoid}
ACT_BWD = {"relu": ops.relu_backward, "tanh": ops.tanh_backward, "gelu": ops.gelu_backward,
           "sigmoid": ops.sigmoid_backward}


class Reference:
    """The training step written with per-op kernels, on the same flat buffers."""

    def __init__(self, units, params, dtype):
        self.units, self.p, self.dtype = units, params, dtype
        self.g = np.zeros_like(params)

    def views(self, buf, u):
        fin, fout, w, b = u[:4]
        W = buf[w:w + fin * fout].reshape(fout, fin)
        B = buf[b:b + fout] if b >= 0 else None
        return W, B

    def forward(self, x, train, seed=0, step=0):
        hs, zs = [x], []
        for i, (fin, fout, w, b, act, drop) in enumerate(self.units):
            W, B = self.views(self.p, self.units[i])
            z = ops.matmul_bias_act(hs[-1], W.T, B, "identity")
            y = ACT_FWD[act](z)
            if train and drop > 0:
                y = (y * dropout_mask(seed, step, i, y.size, drop).reshape(y.shape)).astype(self.dtype)
            zs.append(z)
            hs.append(y)
        return hs, zs

    def step(self, x, t, loss, opt, state, step, seed=0):
        hs, zs = self.forward(x, True, seed, step)
        out = hs[-1]
        if loss == "cross_entropy":
            value = ops.cross_entropy(out, t)
            g = ops.cross_entropy_backward(out, t)
        else:
            value = ops.mse_loss(out, t)
            g = ops.mse_loss_backward(out, t)
        for i in range(len(self.units) - 1, -1, -1):
            fin, fout, w, b, act, drop = self.units[i]
            if drop > 0:
                g = (g * dropout_mask(seed, step, i, g.size, drop).reshape(g.shape)).astype(self.dtype)
            if act != "identity":
                g = ACT_BWD[act](g, zs[i])
            GW, GB = self.views(self.g, self.units[i])
            ops.matmul(g.T, hs[i], out=GW)
            if GB is not None:
                ops.bias_grad(g, out=GB)
            W, _ = self.views(self.p, self.units[i])
            g = ops.matmul(g, W)
        name, hyper = opt
        if name == "sgd":
            ops.sgd_step(self.p, self.g, state[0], first_step=step == 0, **hyper)
        elif name == "adam":
            h = dict(hyper)
            dec = h.pop("decoupled", False)
            ops.adam_step(self.p, self.g, state[0], state[1], state[2], step=step + 1,
                          decoupled_weight_decay=dec, **h)
        elif name == "rmsprop":
            ops.rmsprop_step(self.p, self.g, state[0], state[1], state[2], **hyper)
        else:
            ops.adagrad_step(self.p, self.g, state[0], step=step + 1, **hyper)
        return value


def make(dtype, acts=("relu", "relu", "identity"), drops=(0, 0, 0), sizes=(20, 16, 12, 5), seed=0):
    rng = np.random.default_rng(seed)
    units, off = [], 0
    for i in range(len(sizes) - 1):
        fin, fout = sizes[i], sizes[i + 1]
        units.append((fin, fout, off, off + fin * fout, acts[i], drops[i]))
        off += fin * fout + fout
    params = (rng.standard_normal(off) * 0.3).astype(dtype)
    return units, params


OPTIMS = [("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}),
          ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
          ("sgd", {"lr": 0.1}),
          ("adam", {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
          ("adam", {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.01,
                    "decoupled": True, "amsgrad": True}),
          ("rmsprop", {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "momentum": 0.5, "centered": True}),
          ("adagrad", {"lr": 0.05, "lr_decay": 0.01, "eps": 1e-10})]


def states_for(name, hyper, params):
    z = lambda: np.zeros_like(params)  # noqa: E731
    if name == "sgd":
        return [z() if hyper.get("momentum") else None, None, None]
    if name == "adam":
        return [z(), z(), z() if hyper.get("amsgrad") else None]
    if name == "rmsprop":
        return [z(), z() if hyper.get("momentum") else None, z() if hyper.get("centered") else None]
    return [z(), None, None]


@pytest.mark.parametrize("opt", OPTIMS, ids=[f"{o[0]}-{i}" for i, o in enumerate(OPTIMS)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_equals_per_op_steps(each_arch, opt, dtype):
    name, hyper = opt
    units, params = make(dtype)
    ref = Reference(units, params.copy(), dtype)
    ref_state = states_for(name, hyper, params)
    fused_params, grads = params.copy(), np.zeros_like(params)
    fused_state = states_for(name, hyper, params)
    net = FusedNet(units, fused_params, grads, loss="cross_entropy", optim=name,
                   hyper=hyper, states=fused_state, max_batch=8)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 20)).astype(dtype)
    y = rng.integers(0, 5, 40)
    index = rng.permutation(40)
    loss_sum, correct = net.train(X, y, index, 8)
    ref_sum = 0.0
    for s in range(5):
        b = index[8 * s:8 * s + 8]
        ref_sum += 8 * ref.step(X[b], y[b], "cross_entropy", opt, ref_state, s)
    assert net.step == 5
    # same kernels in the same order: bit-identical
    assert fused_params.tobytes() == ref.p.tobytes()
    assert grads.tobytes() == ref.g.tobytes()
    for a, b in zip(fused_state, ref_state):
        assert (a is None) == (b is None) and (a is None or a.tobytes() == b.tobytes())
    assert loss_sum == pytest.approx(ref_sum, rel=1e-12)
    assert 0 <= correct <= 40


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_other_activations_dropout_and_mse(dtype):
    acts, drops = ("tanh", "gelu", "sigmoid"), (0.25, 0.5, 0.0)
    units, params = make(dtype, acts, drops)
    hyper = {"lr": 0.05, "momentum": 0.9}
    ref = Reference(units, params.copy(), dtype)
    ref_state = states_for("sgd", hyper, params)
    p, g = params.copy(), np.zeros_like(params)
    st = states_for("sgd", hyper, params)
    net = FusedNet(units, p, g, loss="mse", optim="sgd", hyper=hyper, states=st, max_batch=10)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 20)).astype(dtype)
    T = rng.random((30, 5)).astype(dtype)
    index = np.arange(30)
    loss_sum, _ = net.train(X, T, index, 10, seed=7)
    ref_sum = sum(10 * ref.step(X[10 * s:10 * s + 10], T[10 * s:10 * s + 10], "mse", ("sgd", hyper),
                                ref_state, s, seed=7) for s in range(3))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(p, ref.p, rtol=tol, atol=tol)
    assert loss_sum == pytest.approx(ref_sum, rel=tol)
    # inference: no dropout
    hs, _ = ref.forward(X, False)
    np.testing.assert_allclose(net.forward(X), hs[-1], rtol=tol, atol=tol)


def test_short_last_batch_and_threads(threads):
    units, params = make(np.float32, sizes=(64, 48, 10))
    X = np.random.default_rng(3).standard_normal((203, 64)).astype(np.float32)
    y = np.random.default_rng(4).integers(0, 10, 203)
    results = []
    for t in (1, 2):
        threads(t)
        p, g = params.copy(), np.zeros_like(params)
        buf = np.zeros_like(params)
        net = FusedNet(units, p, g, optim="sgd", hyper={"lr": 0.1, "momentum": 0.9},
                       states=(buf, None, None), max_batch=32)
        out = net.train(X, y, np.arange(203), 32)
        assert net.step == 7     # 6 full batches and one of 11 rows
        results.append((p.tobytes(), out))
    assert results[0] == results[1]


def test_bad_input():
    units, params = make(np.float32)
    g = np.zeros_like(params)
    net = FusedNet(units, params, g, optim="sgd", hyper={"lr": 0.1}, max_batch=8)
    X = np.zeros((4, 20), np.float32)
    before = params.copy()
    with pytest.raises(ValueError, match="'X' must have shape \\(rows, 20\\)"):
        net.train(np.zeros((4, 19), np.float32), np.zeros(4, np.int64), np.arange(4), 4)
    with pytest.raises(ValueError, match="'labels'.*\\[0, 5\\)|class indices"):
        net.train(X, np.array([0, 1, 5, 2]), np.arange(4), 4)
    with pytest.raises(ValueError, match="'index'"):
        net.train(X, np.zeros(4, np.int64), np.array([0, 4]), 4)
    with pytest.raises(ValueError, match="'batch_size'"):
        net.train(X, np.zeros(4, np.int64), np.arange(4), 9)
    with pytest.raises(TypeError, match="'X'.*float32"):
        net.train(X.astype(np.float64), np.zeros(4, np.int64), np.arange(4), 4)
    np.testing.assert_array_equal(params, before)
    with pytest.raises(ValueError, match="'units'\\[1\\] has in=15.*chain"):
        FusedNet([(20, 16, 0, -1, "relu", 0), (15, 5, 400, -1, "identity", 0)], params, g)
    with pytest.raises(ValueError, match="plan is invalid"):
        FusedNet(units, params, g, optim="adam", hyper={"lr": 0.1})   # no state buffers
    with pytest.raises(ValueError, match="'loss'"):
        FusedNet(units, params, g, loss="hinge")


@pytest.mark.parametrize("opt", [OPTIMS[1], OPTIMS[4], OPTIMS[5]], ids=["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize("acts,drops,loss", [(("relu", "relu", "identity"), (0, 0, 0), "cross_entropy"),
                                             (("tanh", "relu", "identity"), (0.2, 0.1, 0), "cross_entropy"),
                                             (("relu", "gelu", "identity"), (0, 0, 0), "mse")],
                         ids=["relu-ce", "dropout-ce", "gelu-mse"])
def test_one_parallel_region_is_bit_identical_to_one_thread(threads, opt, acts, drops, loss):
    """Steps big enough for a team (all steps of a call in one parallel region, the kernels
    sharing the work) give the bytes of the one-thread run: parameters, state, sums."""
    name, hyper = opt
    units, params = make(np.float32, acts, drops, sizes=(300, 256, 256, 10))
    rng = np.random.default_rng(8)
    X = rng.standard_normal((300, 300)).astype(np.float32)
    Y = rng.integers(0, 10, 300) if loss == "cross_entropy" else rng.random((300, 10)).astype(np.float32)
    index = rng.permutation(300)
    results = []
    for t in (1, 2):
        threads(t)
        p, g = params.copy(), np.zeros_like(params)
        states = states_for(name, hyper, params)
        net = FusedNet(units, p, g, loss=loss, optim=name, hyper=hyper, states=states, max_batch=128)
        assert net.threads(128) == t       # the step is big enough for a team of two
        out = net.train(X, Y, index, 128, seed=5)
        assert net.step == 3
        results.append((p.tobytes(), g.tobytes(), [s.tobytes() for s in states if s is not None], out))
    assert results[0] == results[1]
    assert np.isfinite(results[0][3][0])


def test_threads_bad_input():
    units, params = make(np.float32)
    net = FusedNet(units, params, np.zeros_like(params), optim="sgd", hyper={"lr": 0.1}, max_batch=8)
    assert net.threads(8) == 1             # a tiny step stays on one thread
    with pytest.raises(ValueError, match="batch_size"):
        net.threads(0)


def test_team_on_a_busy_core_gives_the_same_bits(threads):
    """With another process spinning on a core, a team of two may stop after its check and
    finish the call on one thread: the bytes stay those of one thread."""
    import subprocess
    import sys

    units, params = make(np.float32, sizes=(300, 256, 256, 10))
    rng = np.random.default_rng(4)
    X = rng.standard_normal((6000, 300)).astype(np.float32)
    Y = rng.integers(0, 10, 6000)
    results = []
    for t in (1, 2):
        threads(t)
        p, g, buf = params.copy(), np.zeros_like(params), np.zeros_like(params)
        net = FusedNet(units, p, g, optim="sgd", hyper={"lr": 0.05, "momentum": 0.9},
                       states=(buf, None, None), max_batch=100)
        busy = None
        if t == 2:
            busy = subprocess.Popen([sys.executable, "-c", "print(flush=True)\nwhile True: pass"],
                                    stdout=subprocess.PIPE)
            busy.stdout.readline()   # spinning from here on
        try:
            out = net.train(X, Y, np.arange(6000), 100, seed=3)   # 60 steps: checked after 4
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        results.append((p.tobytes(), buf.tobytes(), out, net.step))
    assert results[0] == results[1]
