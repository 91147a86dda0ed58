"""Adversarial checks of the fused training step (the optimizer applied inside the weight
gradient GEMM), the GEMM's in-place row-major A and swapped x @ W.T, and fit's finite check
in C: odd shapes against the per-op / packed / numpy paths, bit for bit where they are meant
to agree."""
import numpy as np
import pytest

import fastnn as fn
from fastnn import _fused, ops
from fastnn._kernels import first_nonfinite
from fastnn.loss import _check_finite


SGD_OR_ADAM = pytest.mark.parametrize(
    "make_opt", [lambda p: fn.SGD(p, lr=0.05, momentum=0.9),
                 lambda p: fn.Adam(p, lr=1e-2, amsgrad=True)], ids=["sgd-momentum", "adam-ams"])


def _both_paths(run, per_op):
    """run() (a fresh model and optimizer, trained) on the fused path, then on the per-op path:
    (model, optimizer) of each."""
    fused = run()
    per_op()
    return fused, run()


def _same_state(m1, o1, m2, o2):
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert a.tobytes() == b.tobytes(), k
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        for k in s1[i]:
            np.testing.assert_array_equal(s1[i][k], s2[i][k], err_msg=f"{i} {k}")


# (n samples, batch size, input width, hidden widths, biases, classes, activation, optimizer)
FIT_CASES = [
    (37, 12, 9, [17, 1030], [True, False, True], 3, fn.ReLU,
     lambda p: fn.SGD(p, lr=0.01, momentum=0.9, dampening=0.2, weight_decay=1e-3,
                      maximize=True)),
    (34, 16, 33, [65, 7], [False, True, False], 10, fn.Tanh,
     lambda p: fn.SGD(p, lr=0.01, momentum=0.8, nesterov=True, weight_decay=1e-2)),
    (35, 32, 15, [129], [False, False], 17, fn.GELU,
     lambda p: fn.Adam(p, lr=1e-3, amsgrad=True, weight_decay=1e-3, maximize=True)),
    (66, 64, 31, [200, 33], [True, True, False], 2, fn.SiLU,
     lambda p: fn.AdamW(p, lr=1e-3, amsgrad=True)),
    (7, 5, 47, [2, 9], [True, False, True], 2, lambda: fn.LeakyReLU(0.1),
     lambda p: fn.SGD(p, lr=0.05)),
    (100, 96, 300, [400, 130], [True, False, True], 7, fn.Sigmoid,
     lambda p: fn.Adam(p, lr=1e-3)),
]


@pytest.mark.parametrize("case", range(len(FIT_CASES)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_fused_update_odd_shapes_and_tiny_last_batch(per_op, threads, case, dtype, nthreads):
    """Last batches of 1, 2, 3 rows, layers of 2 to 1030 units that are not multiples of the
    register tile, layers without bias, every SGD/Adam option the fused update takes, a
    scheduler: the fused step (update inside the dW GEMM) gives the per-op path's bits."""
    n, bs, d, widths, biases, classes, act, make_opt = FIT_CASES[case]
    rng = np.random.default_rng(case)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.integers(0, classes, n).astype(np.int64)

    def run():
        layers, prev = [], d
        for w, b in zip(widths, biases):
            layers += [fn.Linear(prev, w, bias=b), act()]
            prev = w
        model = fn.Sequential(*layers, fn.Linear(prev, classes, bias=biases[-1]), dtype=dtype,
                              seed=1)
        opt = make_opt(model.parameters())
        threads(nthreads)
        sched = fn.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=bs, seed=3,
               verbose=0, scheduler=sched)
        return model, opt

    (m1, o1), (m2, o2) = _both_paths(run, per_op)
    _same_state(m1, o1, m2, o2)


@SGD_OR_ADAM
def test_step_with_infinite_loss_leaves_model_and_state_untouched(make_opt):
    """error_if_nonfinite: the batch whose loss is infinite raises before its update, so the
    weights and optimizer state are those of the steps before it (here: one batch)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((48, 20)).astype(np.float32)
    T = rng.standard_normal((48, 3)).astype(np.float32)
    X[20] = 3e38   # second batch of 16: the first layer's products overflow float32

    def model_opt():
        m = fn.Sequential(fn.Linear(20, 40), fn.ReLU(), fn.Linear(40, 3), seed=4)
        return m, make_opt(m.parameters())

    m1, o1 = model_opt()
    assert _fused.training_plan(m1, fn.MSELoss(), o1, X, T, 16, []) is not None
    with pytest.raises(FloatingPointError, match="batch 2 of 3"):
        fn.fit(m1, fn.MSELoss(), o1, X, T, epochs=1, batch_size=16, shuffle=False, verbose=0,
               metrics=[])
    m2, o2 = model_opt()
    fn.fit(m2, fn.MSELoss(), o2, X[:16], T[:16], epochs=1, batch_size=16, shuffle=False,
           verbose=0, metrics=[])
    _same_state(m1, o1, m2, o2)


def _variants(A, W):
    """x @ W.T four ways: A in place or packed (column-major), W.T (swappable) or a
    C-contiguous (k, n) copy (never swapped)."""
    return [(A, W.T), (np.asfortranarray(A), W.T), (A, np.ascontiguousarray(W.T)),
            (np.asfortranarray(A), np.ascontiguousarray(W.T))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", [(13, 1, 39), (17, 7, 51), (17, 33, 52), (25, 100, 74),
                                   (29, 17, 87), (33, 513, 99), (49, 300, 250), (65, 8, 196),
                                   (97, 3, 291), (31, 16, 100)])
@pytest.mark.parametrize("alpha,beta,act", [(1.0, 0.0, "relu"), (-2.0, 0.25, "identity"),
                                            (0.5, 1.0, "relu")])
def test_swapped_and_in_place_a_give_the_packed_bits(each_arch, threads, dtype, m, k, n,
                                                     alpha, beta, act):
    """Around the swap threshold (n = 3m - 1, 3m, 3m + 1), m just past 2 MR, k = 1, rows of A
    and W with padding, out= a view with a row stride, alpha != 1, beta != 0: the same bits
    whichever path, the padding of out untouched, and within the float64 bound of numpy."""
    rng = np.random.default_rng(m * 1000 + n)
    A = rng.standard_normal((m, k + 3)).astype(dtype)[:, :k]
    W = rng.standard_normal((n, k + 1)).astype(dtype)[:, :k]
    bias = rng.standard_normal(n).astype(dtype)
    C0 = rng.standard_normal((m, n + 5)).astype(dtype)
    for t in (1, 2):
        threads(t)
        results = []
        for a, b in _variants(A, W):
            buf = C0.copy()
            ops.matmul_bias_act(a, b, bias, act, out=buf[:, :n], alpha=alpha, beta=beta)
            assert buf[:, n:].tobytes() == C0[:, n:].tobytes()
            buf2 = C0.copy()
            ops.matmul(a, b, out=buf2[:, :n], alpha=alpha, beta=beta)
            results.append((buf[:, :n].tobytes(), buf2[:, :n].copy()))
        assert all(r[0] == results[0][0] for r in results)
        assert all(r[1].tobytes() == results[0][1].tobytes() for r in results)
    ref = alpha * (A.astype(np.float64) @ W.T.astype(np.float64)) + beta * C0[:, :n]
    bound = 4 * k * np.finfo(dtype).eps * (abs(alpha) * (np.abs(A) @ np.abs(W.T))
                                           + abs(beta) * np.abs(C0[:, :n]))
    assert np.all(np.abs(results[0][1] - ref) <= bound + np.finfo(dtype).tiny)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_swapped_x_wt_propagates_nan_and_inf(each_arch, dtype):
    """A NaN in x and an infinity in W reach exactly the entries they touch, on the swapped
    path as on the packed one; the ReLU epilogue does not turn a NaN into 0 ... nor leave
    the rest differently rounded."""
    rng = np.random.default_rng(1)
    m, k, n = 33, 40, 120
    A = rng.standard_normal((m, k)).astype(dtype)
    W = rng.standard_normal((n, k)).astype(dtype)
    A[5, 7] = np.nan
    W[9, 3] = np.inf
    ref = A.astype(np.float64) @ W.T.astype(np.float64)
    outs = [ops.matmul(a, b) for a, b in _variants(A, W)]
    for o in outs:
        np.testing.assert_array_equal(np.isnan(o), np.isnan(ref))
        np.testing.assert_array_equal(np.isposinf(o), np.isposinf(ref))
        np.testing.assert_array_equal(np.isneginf(o), np.isneginf(ref))
        np.testing.assert_array_equal(o, outs[-1])
    bias = np.zeros(n, dtype)
    fused = [ops.matmul_bias_act(a, b, bias, "relu") for a, b in _variants(A, W)]
    for f in fused:
        np.testing.assert_array_equal(f, fused[-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_nonfinite_every_position_near_vector_edges(each_arch, dtype):
    """The first NaN, +inf, -inf or NaN with a payload and the sign bit, at every position of
    arrays whose lengths straddle the vector widths; the largest finite values, subnormals
    and -0 are not flagged."""
    fi = np.finfo(dtype)
    uint = np.uint32 if dtype == np.float32 else np.uint64
    neg_nan = 0xFF800001 if dtype == np.float32 else 0xFFF0000000000001
    rng = np.random.default_rng(2)
    for n in [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129]:
        a = rng.standard_normal(n).astype(dtype)
        a[::3] = fi.max
        a[1::5] = -fi.max
        a[2::7] = fi.tiny / 8
        a[4::6] = -0.0
        assert first_nonfinite(a) == -1
        for pos in range(n):
            for v in (np.nan, np.inf, -np.inf):
                b = a.copy()
                b[pos] = v
                b[min(n - 1, pos + 5)] = np.nan
                assert first_nonfinite(b) == pos, (n, pos, v)
            b = a.copy()
            b.view(uint)[pos] = neg_nan
            assert first_nonfinite(b) == pos


def test_finite_check_message_same_in_c_and_numpy_fallback(tmp_path):
    """fit's check of X names the first bad element (C order) the same way whether the C scan
    runs (contiguous native float32/64, a memmap) or the numpy fallback (Fortran order,
    big-endian, float16, a strided view)."""
    X = np.ones((7, 5, 3), np.float32)
    X[4, 2, 1] = np.nan
    X[5, 0, 0] = np.inf
    X[6, 4, 2] = -np.inf
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                   shape=X.shape)
    mm[...] = X
    strided = np.ones((14, 5, 3), np.float32)
    strided[::2] = X
    inputs = [X, X.astype(np.float64), mm, np.asfortranarray(X), X.astype(">f4"),
              X.astype(np.float16), strided[::2]]
    for arr in inputs:
        with pytest.raises(ValueError, match=r"^X contains NaN or Inf \(first at index "
                                             r"\(4, 2, 1\)\)$"):
            _check_finite(arr, "X")
    with pytest.raises(TypeError):
        first_nonfinite(np.asfortranarray(X))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 2, 3, 32])
def test_one_row_w_transpose_is_the_same_product_however_seen(each_arch, dtype, rows):
    """W.T of a one-row W is a (k, 1) array that fastnn.ops takes as a row-major B (ldb 1)
    while the fused step passes it as W^T (transb): the same column, the same bits, and the
    same as that column of the product with a wider W (batches of 1 and 2 rows took the
    unpacked path's two branches, which sum in different orders)."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 33)).astype(dtype)
    W = rng.standard_normal((2, 33)).astype(dtype)
    one = ops.matmul(x, W[:1].T)
    assert one.tobytes() == ops.matmul(x, W.T)[:, :1].tobytes()
    assert one.tobytes() == ops.matmul(x, np.ascontiguousarray(W[:1].T)).tobytes()
    bias = rng.standard_normal(1).astype(dtype)
    assert (ops.matmul_bias_act(x, W[:1].T, bias, "relu").tobytes()
            == ops.matmul_bias_act(x, W.T, np.r_[bias, bias], "relu")[:, :1].tobytes())


@pytest.mark.parametrize("make_opt", [lambda p: fn.SGD(p, lr=0.01),
                                      lambda p: fn.RMSprop(p, lr=0.01),
                                      lambda p: fn.Adam(p, lr=0.01)],
                         ids=["sgd", "rmsprop", "adam"])
@pytest.mark.parametrize("bs", [1, 2, 3])
def test_hidden_layer_of_one_unit_fused_equals_per_op(per_op, each_arch, make_opt, bs):
    """A hidden layer of one unit (its forward product has one column) with batches of 1 to
    3 rows: the fused step gives the per-op path's bits."""
    rng = np.random.default_rng(126)
    X = rng.standard_normal((11, 33))
    y = rng.integers(0, 2, 11).astype(np.int64)

    def run():
        model = fn.Sequential(fn.Linear(33, 1), fn.ReLU(), fn.Linear(1, 2), dtype=np.float64,
                              seed=1)
        opt = make_opt(model.parameters())
        fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=bs, seed=3,
               verbose=0)
        return model, opt

    (m1, o1), (m2, o2) = _both_paths(run, per_op)
    _same_state(m1, o1, m2, o2)


@SGD_OR_ADAM
@pytest.mark.parametrize("mode", ["terminate", "train-on"])
def test_nan_gradients_through_the_fused_update_as_per_op(per_op, each_arch, make_opt, mode):
    """A batch whose loss is NaN, trained on (TerminateOnNaN: that batch's update, then stop;
    error_if_nonfinite=False: every batch): the NaN gradients go through the update inside
    the dW GEMM to the same weights and optimizer state (NaN where per-op has NaN)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((48, 20)).astype(np.float32)
    T = rng.standard_normal((48, 3)).astype(np.float32)
    X[20] = 3e38

    def run():
        m = fn.Sequential(fn.Linear(20, 40), fn.ReLU(), fn.Linear(40, 3), seed=4)
        o = make_opt(m.parameters())
        kw = ({"callbacks": [fn.callbacks.TerminateOnNaN()]} if mode == "terminate"
              else {"error_if_nonfinite": False})
        fn.fit(m, fn.MSELoss(), o, X, T, epochs=2, batch_size=16, shuffle=False, verbose=0,
               metrics=[], **kw)
        return m, o

    (m1, o1), (m2, o2) = _both_paths(run, per_op)
    assert np.isnan(m1.state_dict()["0.weight"]).any()
    for k, a in m1.state_dict().items():
        np.testing.assert_array_equal(a, m2.state_dict()[k], err_msg=k)
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    for i in s1:
        for k in s1[i]:
            np.testing.assert_array_equal(s1[i][k], s2[i][k], err_msg=f"{i} {k}")
