"""2-D convolution: the implicit-GEMM kernels and the naive reference against the float64
oracle (tests/reference.py) on every kernel table, PyTorch parity, hypothesis over the
geometry, central-difference gradients in float64, 1 vs 2 threads bit-identical."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import ops

import reference as ref

EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}


def data(rng, n, cin, h, w, cout, k, groups, dtype, kw=None):
    kw = k if kw is None else kw
    x = rng.standard_normal((n, cin, h, w)).astype(dtype)
    wt = rng.standard_normal((cout, cin // groups, k, kw)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    return x, wt, b


def close(got, want, bound, terms, dtype):
    """|got - want| <= 2 (terms + 2) eps bound + tiny, element-wise (bound: the sum of |terms|)."""
    assert got.shape == want.shape
    tol = 2 * (terms + 2) * EPS[dtype] * bound + np.finfo(dtype).tiny
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= tol), (f"max excess {np.max(err - tol)} at "
                                f"{np.unravel_index(np.argmax(err - tol), err.shape)}")


def check_all(x, wt, b, dtype, reference=False, **kw):
    """forward and the three gradients against the oracle, with K-scaled bounds."""
    f = ops.conv2d_reference if reference else ops.conv2d
    fb = ops.conv2d_backward_reference if reference else ops.conv2d_backward
    y = f(x, wt, b, **kw)
    ax, aw = np.abs(x.astype(np.float64)), np.abs(wt.astype(np.float64))
    close(y, ref.conv2d(x, wt, b, **kw), ref.conv2d(ax, aw, np.abs(b), **kw),
          wt[0].size + 1, dtype)
    rng = np.random.default_rng(1)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = fb(dy, x, wt, **kw)
    rdx, rdw, rdb = ref.conv2d_backward(dy, x, wt, **kw)
    adx, adw, adb = ref.conv2d_backward(np.abs(dy.astype(np.float64)), ax, aw, **kw)
    close(dx, rdx, adx, wt.shape[0] * wt.shape[2] * wt.shape[3], dtype)
    close(dw, rdw, adw, dy.shape[0] * dy.shape[2] * dy.shape[3], dtype)
    close(db, rdb, adb, dy.shape[0] * dy.shape[2] * dy.shape[3], dtype)


CASES = [   # n, cin, h, w, cout, k, stride, padding, dilation, groups
    (2, 3, 9, 11, 5, 3, 1, 1, 1, 1),
    (1, 1, 28, 28, 6, 5, 1, 2, 1, 1),            # LeNet's first layer
    (3, 6, 14, 14, 16, 5, 1, 0, 1, 1),
    (2, 32, 8, 8, 64, 3, 1, 1, 1, 1),            # channels on the vector dimension
    (2, 8, 17, 13, 67, 3, 2, 1, 1, 1),
    (1, 12, 10, 10, 12, 3, 1, 1, 1, 12),         # depthwise
    (2, 8, 12, 9, 12, 3, (2, 1), (0, 2), 2, 4),
    (2, 5, 7, 8, 7, 4, 1, "same", (1, 2), 1),    # even kernel: asymmetric 'same'
    (1, 3, 1, 1, 4, 1, 1, 0, 1, 1),              # 1x1 image
    (2, 4, 6, 6, 3, 7, 3, 3, 1, 1),
    (1, 16, 40, 40, 40, 3, 1, 1, 1, 2),          # several pixel blocks per image
    (2, 16, 11, 9, 64, 3, 2, 1, 2, 2),           # NHWC path: groups, stride, dilation
    (13, 8, 5, 5, 32, 3, 1, "same", 1, 1),       # NHWC path: chunks of several images
    (3, 4, 20, 20, 96, 3, 1, 1, 1, 1),           # NHWC path: several row blocks per image
    # dW on the NHWC copy (>= 16 input channels a group): B panels inside one tap and across
    # taps, groups, stride and dilation, column ranges and channel panels cut short; dX as
    # the transposed convolution on the NHWC GEMM (stride 1, many channels)
    (2, 40, 9, 7, 24, 3, 1, 1, 1, 2),
    (2, 67, 6, 5, 19, 3, 1, (1, 2), 1, 1),
    (2, 24, 7, 6, 48, 3, 1, 1, 1, 1),
    (2, 32, 9, 9, 40, 3, 2, 1, 2, 1),
    (1, 17, 5, 6, 64, 2, 1, "same", 1, 1),
    (3, 64, 4, 4, 128, 3, 1, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_kernels_against_oracle(each_arch, dtype, case):
    n, cin, h, w, cout, k, s, p, d, g = case
    x, wt, b = data(np.random.default_rng(sum(case[:6])), n, cin, h, w, cout, k, g, dtype)
    check_all(x, wt, b, dtype, stride=s, padding=p, dilation=d, groups=g)


# The direct kernels (csrc/kernels/dconv.inc) take stride 1, dilation 1, one group, output
# rows up to 32 pixels (avx512: widths 16, 32 with 8 channels a block; avx2: 8, 16, 24 with 4
# channels and 32 with 2), and at most 16 output channels or rows filling 3/4 of the lanes. These shapes sit on both sides of
# every width and channel-block boundary, with odd kernels, asymmetric padding and rows
# longer than any direct kernel (the implicit GEMM again).
DIRECT = [   # n, cin, h, w, cout, (kh, kw), padding
    (2, 1, 5, 8, 1, (1, 1), 0), (1, 2, 6, 9, 2, (3, 2), (1, 0)), (2, 3, 7, 16, 3, (3, 3), 0),
    (1, 1, 4, 17, 4, (1, 2), (0, 1)), (2, 2, 9, 24, 5, (5, 1), (2, 0)),
    (1, 3, 6, 25, 7, (2, 3), 1), (1, 4, 5, 30, 8, (3, 3), 1), (2, 1, 3, 32, 9, (1, 1), 0),
    (1, 2, 4, 33, 13, (3, 5), (1, 2)), (1, 5, 8, 31, 16, (5, 5), 2), (1, 2, 3, 40, 6, (3, 3), 1),
    (2, 2, 5, 6, 17, (3, 3), 1),
    # many output channels on rows that fill at least 3/4 of a direct kernel's lanes
    (1, 3, 6, 14, 40, (3, 3), 1), (1, 4, 4, 30, 33, (3, 3), 1), (2, 5, 5, 24, 20, (3, 3), 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", DIRECT)
def test_direct_kernel_shapes_against_oracle(each_arch, dtype, case):
    n, cin, h, w, cout, (kh, kw), p = case
    rng = np.random.default_rng(h * 100 + w)
    x = rng.standard_normal((n, cin, h, w)).astype(dtype)
    wt = rng.standard_normal((cout, cin, kh, kw)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    check_all(x, wt, b, dtype, padding=p)
    # bias + ReLU on the direct tiles, as the GEMM epilogue gives them
    y = ops.conv2d(x, wt, b, padding=p, activation="relu")
    np.testing.assert_array_equal(y, np.maximum(ops.conv2d(x, wt, b, padding=p), 0))


def test_direct_kernel_non_finite_like_the_gemm():
    """inf and NaN spread through the direct kernel's sums as through any dot product: an inf
    input reaches every output whose window holds it, NaN likewise, and the zero padding
    times an infinite weight is NaN (as in the implicit GEMM and the reference)."""
    x = np.zeros((1, 1, 6, 10), np.float32)
    x[0, 0, 2, 3] = np.inf
    x[0, 0, 4, 8] = np.nan
    wt = np.ones((3, 1, 3, 3), np.float32)
    y = ops.conv2d(x, wt, padding=1)
    want = ref.conv2d(x.astype(np.float64), wt.astype(np.float64), None, padding=1)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(want))
    wt[1, 0, 0, 0] = np.inf
    y = ops.conv2d(np.ones((1, 1, 4, 5), np.float32), wt, padding=1)
    assert np.isnan(y[0, 1, 0, 0]) and np.isinf(y[0, 1, 1, 1]) and np.isfinite(y[0, 0]).all()


@pytest.mark.parametrize("case", CASES[:4] + CASES[5:9])
def test_reference_kernels_against_oracle(case):
    n, cin, h, w, cout, k, s, p, d, g = case
    x, wt, b = data(np.random.default_rng(3), n, cin, h, w, cout, k, g, np.float64)
    check_all(x, wt, b, np.float64, reference=True, stride=s, padding=p, dilation=d, groups=g)


@settings(max_examples=40)
@given(k=st.integers(1, 7), kw=st.integers(1, 7), stride=st.integers(1, 3),
       dil=st.integers(1, 2), pad=st.sampled_from([0, 1, 2, 3, "same", "valid"]),
       groups=st.sampled_from([1, 1, 2, 3]), cin=st.integers(1, 67), cout=st.integers(1, 67),
       h=st.integers(1, 12), w=st.integers(1, 12), n=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31))
def test_hypothesis_geometry(k, kw, stride, dil, pad, groups, cin, cout, h, w, n, dtype, seed):
    if pad == "same":
        stride = 1
    cin = max(cin // groups, 1) * groups          # channels 1..67, multiples of groups
    cout = max(cout // groups, 1) * groups
    extra_h = {"same": dil * (k - 1), "valid": 0}.get(pad, 2 * pad if isinstance(pad, int) else 0)
    extra_w = {"same": dil * (kw - 1), "valid": 0}.get(pad, 2 * pad if isinstance(pad, int) else 0)
    kwargs = dict(stride=stride, padding=pad, dilation=dil, groups=groups)
    if h + extra_h < dil * (k - 1) + 1 or w + extra_w < dil * (kw - 1) + 1:
        with pytest.raises(ValueError, match="larger than the padded input"):
            ops.conv2d(np.zeros((n, cin, h, w), dtype),
                       np.zeros((cout, cin // groups, k, kw), dtype), **kwargs)
        return
    x, wt, b = data(np.random.default_rng(seed), n, cin, h, w, cout, k, groups, dtype, kw=kw)
    check_all(x, wt, b, dtype, **kwargs)


def test_fused_activation_and_no_bias():
    rng = np.random.default_rng(5)
    x, wt, b = data(rng, 2, 4, 9, 9, 6, 3, 1, np.float64)
    y = ops.conv2d(x, wt, b, padding=1, activation="relu")
    np.testing.assert_allclose(y, np.maximum(ref.conv2d(x, wt, b, padding=1), 0), rtol=1e-12,
                               atol=1e-12)
    y = ops.conv2d(x, wt, None, padding=1, activation=("leaky_relu", 0.2))
    z = ref.conv2d(x, wt, None, padding=1)
    np.testing.assert_allclose(y, np.where(z < 0, 0.2 * z, z), rtol=1e-12, atol=1e-12)
    for cout in (32, 40):   # output channels on the vector dimension: ReLU in registers or not
        x2, w2, b2 = data(rng, 3, 8, 7, 7, cout, 3, 1, np.float32)
        z = ref.conv2d(x2, w2, b2, padding=1)
        for act, want in (("relu", np.maximum(z, 0)), ("tanh", np.tanh(z))):
            np.testing.assert_allclose(ops.conv2d(x2, w2, b2, padding=1, activation=act), want,
                                       rtol=1e-5, atol=1e-5)
    dx, dw, db = ops.conv2d_backward(np.ones_like(y), x, wt, padding=1, bias=False,
                                     input_grad=False)
    assert dx is None and db is None and dw.shape == wt.shape


@pytest.mark.parametrize("case", [(8, 1, 28, 28, 6, 5, 1, 2, 1, 1), (16, 32, 16, 16, 64, 3, 1, 1, 1, 1),
                                  (8, 8, 12, 9, 12, 3, (2, 1), (0, 2), 2, 4),
                                  (4, 16, 40, 40, 40, 3, 1, 1, 1, 2),
                                  (8, 64, 8, 8, 128, 3, 1, 1, 1, 1),
                                  (4, 32, 10, 10, 64, 3, 1, 1, 1, 2)])
def test_threads_bit_identical(threads, case):
    """Large enough for two threads in every kernel (forward, dW, dX)."""
    if not fastnn.openmp_enabled():
        pytest.skip("built without OpenMP")
    n, cin, h, w, cout, k, s, p, d, g = case
    x, wt, b = data(np.random.default_rng(7), n, cin, h, w, cout, k, g, np.float32)
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    dy = np.random.default_rng(8).standard_normal(ops.conv2d_output_shape(x.shape, wt.shape, **kw)
                                                  ).astype(np.float32)
    outs = []
    for nt in (1, 2):
        threads(nt)
        outs.append((ops.conv2d(x, wt, b, **kw), *ops.conv2d_backward(dy, x, wt, **kw)))
    for a, c in zip(*outs):
        assert a.tobytes() == c.tobytes()


def test_gradient_central_differences():
    """d sum(conv2d(x, w, b) * dy) by central differences in float64, x, w and b."""
    rng = np.random.default_rng(11)
    kw = dict(stride=(2, 1), padding="valid", dilation=(1, 2), groups=2)
    x, wt, b = data(rng, 2, 4, 7, 8, 6, 3, 2, np.float64)
    dy = rng.standard_normal(ops.conv2d_output_shape(x.shape, wt.shape, **kw))
    dx, dw, db = ops.conv2d_backward(dy, x, wt, **kw)
    f = lambda x_, w_, b_: float(np.sum(ops.conv2d(x_, w_, b_, **kw) * dy))
    h = 1e-6
    for arr, grad, idx in ((x, dx, [(0, 1, 3, 4), (1, 3, 0, 7), (1, 0, 6, 0)]),
                           (wt, dw, [(0, 0, 0, 0), (5, 1, 2, 1), (3, 1, 1, 2)]),
                           (b, db, [(0,), (5,)])):
        for i in idx:
            plus, minus = arr.copy(), arr.copy()
            plus[i] += h
            minus[i] -= h
            args = lambda a: (a, wt, b) if arr is x else (x, a, b) if arr is wt else (x, wt, a)
            num = (f(*args(plus)) - f(*args(minus))) / (2 * h)
            assert abs(num - grad[i]) <= 1e-6 * max(1.0, abs(num)), (i, num, grad[i])


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("case", CASES)
def test_pytorch_parity(case):
    torch = pytest.importorskip("torch")
    n, cin, h, w, cout, k, s, p, d, g = case
    x, wt, b = data(np.random.default_rng(13), n, cin, h, w, cout, k, g, np.float64)
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(wt, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, **kw)
    y = ops.conv2d(x, wt, b, **kw)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    dy = np.random.default_rng(14).standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    dx, dw, db = ops.conv2d_backward(dy, x, wt, **kw)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-10, atol=1e-10)
    # float32 too, within float32 rounding
    y32 = ops.conv2d(x.astype(np.float32), wt.astype(np.float32), b.astype(np.float32), **kw)
    t32 = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float32),
                                     torch.tensor(wt, dtype=torch.float32),
                                     torch.tensor(b, dtype=torch.float32), **kw)
    np.testing.assert_allclose(y32, t32.numpy(), rtol=1e-4, atol=1e-4 * np.sqrt(wt[0].size))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ops.conv2d(np.zeros((1, 3, 5, 5), np.float32), np.zeros((2, 3, 3, 3), np.float64)),
     TypeError, "'weight' must have dtype float32"),
    (lambda: ops.conv2d(np.zeros((1, 3, 5, 5), np.int32), np.zeros((2, 3, 3, 3))),
     TypeError, "'x' must be a float32 or float64 array"),
    (lambda: ops.conv2d(np.zeros((3, 5, 5)), np.zeros((2, 3, 3, 3))),
     ValueError, "'x' must be a 4-D array"),
    (lambda: ops.conv2d(np.zeros((1, 4, 5, 5)), np.zeros((2, 3, 3, 3))),
     ValueError, "C_in = weight.shape"),
    (lambda: ops.conv2d(np.zeros((1, 4, 5, 5)), np.zeros((3, 2, 3, 3)), groups=2),
     ValueError, "divisible by groups"),
    (lambda: ops.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3)), stride=0),
     ValueError, "'stride' must be an int >= 1"),
    (lambda: ops.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3)), padding=-1),
     ValueError, "'padding' must be an int >= 0"),
    (lambda: ops.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3)), padding="full"),
     ValueError, "'padding' must be 'same', 'valid'"),
    (lambda: ops.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3)), padding="same", stride=2),
     ValueError, "'same' needs stride 1"),
    (lambda: ops.conv2d(np.zeros((1, 3, 2, 2)), np.zeros((2, 3, 3, 3))),
     ValueError, "larger than the padded input"),
    (lambda: ops.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3)), np.zeros(3)),
     ValueError, "'bias' must have shape \\(2,\\)"),
    (lambda: ops.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3)), out=np.zeros((1, 2, 4, 4))),
     ValueError, "'out' must have shape \\(1, 2, 3, 3\\)"),
    (lambda: ops.conv2d_backward(np.zeros((1, 2, 4, 4)), np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3))),
     ValueError, "'dy' must have the output shape \\(1, 2, 3, 3\\)"),
])
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_empty_batch_and_out():
    x = np.zeros((0, 3, 5, 5), np.float32)
    wt = np.ones((2, 3, 3, 3), np.float32)
    assert ops.conv2d(x, wt).shape == (0, 2, 3, 3)
    dx, dw, db = ops.conv2d_backward(np.zeros((0, 2, 3, 3), np.float32), x, wt)
    assert dx.shape == x.shape and not dw.any() and not db.any()
    out = np.full((1, 2, 3, 3), np.nan, np.float32)
    y = ops.conv2d(np.ones((1, 3, 5, 5), np.float32), wt, out=out)
    assert y is out and np.all(out == 27)


# ---- the Conv2d layer ------------------------------------------------------------------------

def test_layer_arguments_init_and_repr():
    conv = fastnn.Conv2d(4, 8, (3, 5), stride=(1, 2), padding=(1, 2),
                         dilation=1, groups=2, seed=0)
    assert conv.weight.shape == (8, 2, 3, 5) and conv.bias.shape == (8,)
    bound = 1 / np.sqrt(2 * 3 * 5)          # PyTorch: kaiming_uniform(a=sqrt(5)), fan_in = 30
    assert np.abs(conv.weight).max() <= bound and np.abs(conv.bias).max() <= bound
    assert np.abs(conv.weight).max() > 0.8 * bound
    assert conv.kernel_size == (3, 5) and conv.stride == (1, 2) and conv.padding == (1, 2)
    assert "groups=2" in repr(conv)
    assert fastnn.Conv2d(3, 6, 3, padding="same", bias=False).bias is None
    depthwise = fastnn.Conv2d(6, 6, 3, groups=6)
    assert depthwise.weight.shape == (6, 1, 3, 3)
    for kwargs, match in [(dict(groups=4), "divisible by groups"),
                          (dict(kernel_size=0), "kernel_size must be an int >= 1"),
                          (dict(padding="full"), "padding must be 'same', 'valid'"),
                          (dict(padding="same", stride=2), "needs stride 1"),
                          (dict(stride=(1, 2, 3)), "stride must be an int >= 1 or a pair")]:
        args = dict(in_channels=6, out_channels=6, kernel_size=3)
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            fastnn.Conv2d(**args)
    conv = fastnn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\)"):
        conv.forward(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(TypeError, match="expected float32 input"):
        conv.forward(np.zeros((2, 3, 5, 5), np.float64))
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv.forward(np.zeros((2, 3, 2, 2), np.float32))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        fastnn.Conv2d(3, 4, 3).backward(np.zeros((2, 4, 3, 3), np.float32))


def lenet_like(dtype=np.float32, seed=0):
    return fastnn.Sequential(fastnn.Conv2d(1, 6, 3, padding=1), fastnn.ReLU(),
                             fastnn.Conv2d(6, 32, 3, stride=2, padding="valid", groups=2),
                             fastnn.Tanh(), fastnn.Flatten(), fastnn.Linear(32 * 3 * 3, 10),
                             dtype=dtype, seed=seed)


def test_layer_matches_pytorch_forward_and_backward():
    torch = pytest.importorskip("torch")
    model = lenet_like(np.float64)
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(),
                             torch.nn.Conv2d(6, 32, 3, stride=2, groups=2), torch.nn.Tanh(),
                             torch.nn.Flatten(), torch.nn.Linear(288, 10)).double()
    sd = model.state_dict()
    assert set(sd) == set(tm.state_dict())              # PyTorch's state_dict names
    tm.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8))
    out = model.forward(x)
    tx = torch.tensor(x, requires_grad=True)
    tout = tm(tx)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-10)
    dy = np.random.default_rng(1).standard_normal(out.shape)
    model.zero_grad()
    dx = model.backward(dy)
    tout.backward(torch.tensor(dy))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, dict(tm.named_parameters())[name].grad.numpy(),
                                   rtol=1e-10, atol=1e-10)
    assert model.backward(dy, input_grad=False) is None   # first layer: no dx


def test_layer_gradient_central_differences():
    """d(loss)/d(parameter) of a Conv2d model by central differences in float64."""
    model = lenet_like(np.float64, seed=3)
    loss = fastnn.CrossEntropyLoss()
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((4, 1, 8, 8)), rng.integers(0, 10, 4)
    model.zero_grad()
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    for layer in (model[0], model[2]):
        for p in (layer.weight, layer.bias):
            for idx in list(np.ndindex(p.shape))[::max(1, p.size // 6)]:
                old = p[idx]
                p[idx] = old + 1e-6
                fp = loss.forward(model.forward(x), y)
                p[idx] = old - 1e-6
                fm = loss.forward(model.forward(x), y)
                p[idx] = old
                num = (fp - fm) / 2e-6
                assert abs(num - p.grad[idx]) <= 1e-6 * max(1.0, abs(num)), (idx, num, p.grad[idx])


def test_save_load_round_trip(tmp_path):
    model = lenet_like()
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    fastnn.save(model, tmp_path / "m.safetensors")
    back = fastnn.load(tmp_path / "m.safetensors")
    assert [type(m) for m in back] == [type(m) for m in model]
    assert back[2].groups == 2 and back[2].stride == (2, 2) and back[2].padding == "valid"
    np.testing.assert_array_equal(back.forward(x), model.forward(x))


def test_fit_evaluate_predict_on_images():
    X, y = fastnn.datasets.load_digits()
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    model = lenet_like(seed=0)
    loss = fastnn.CrossEntropyLoss()
    opt = fastnn.Adam(model.parameters(), lr=3e-3)
    hist = fastnn.fit(model, loss, opt, X[:1400], y[:1400], epochs=4, batch_size=32, seed=0,
                      validation_data=(X[1400:], y[1400:]), verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    res = fastnn.evaluate(model, loss, X[1400:], y[1400:])
    assert res["accuracy"] > 0.85
    pred = model.predict(X[1400:], batch_size=100)
    assert pred.shape == (len(X) - 1400, 10)
    np.testing.assert_allclose(pred, model.eval().forward(X[1400:]), rtol=1e-6, atol=1e-6)
