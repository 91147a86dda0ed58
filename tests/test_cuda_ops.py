"""fastnn.cuda.ops against the float64 oracles in tests/reference.py.

Where it runs: under Numba's CUDA simulator unless told otherwise (NUMBA_ENABLE_CUDASIM=1 is
set below, before anything imports numba), which is how CI runs it; on a real GPU with

    NUMBA_ENABLE_CUDASIM=0 python -m pytest tests/test_cuda_ops.py tests/test_cuda_mlp.py

The module is skipped with the reason when numba is not installed (pip install
fastnn[cuda]) or when no GPU (nor the simulator) is available. The simulator runs every CUDA
thread as a Python thread, so shapes stay small (a 64 x 64 GEMM tile takes ~0.3 s there);
they straddle the kernels' compile-time sizes: GEMM tiles of BM x BN = 64 x 64 with K steps
of BK = 16, 256-thread blocks, 8 rows of 32 threads in the row kernels.

Tolerances (float32 against round32 of the float64 oracle; float64 relative):

* Element-wise: ULPS32 = 8 ulp (float64: RTOL64 = 1e-12) plus K_ABS * eps * scale where the
  formula cancels (the same cancellation scales as tests/test_kernels.py), plus FLUSH near
  the underflow threshold. CUDA's float32 expf/tanhf/erff/log1pf are within 2 ulp (CUDA
  Math API, not fast-math); the kernels chain up to three of them, hence 8 ulp rather than
  the 4 of the CPU kernels. The simulator evaluates them in double, so only a GPU run
  exercises that margin.
* GEMM: 2 * K * eps * (|A| @ |B|) elementwise (float32 accumulation), as docs/DESIGN.md §5;
  plus the epilogue's element-wise tolerance on its result.
* softmax rows and cross-entropy sum in the array's dtype here (the CPU kernels sum in
  double): the scale term grows with the row length: (2 (1 + |x - max|) + cols) eps.
* Loss totals (float64 accumulation of per-item values in the dtype): relative to the sum of
  the per-item magnitudes, 8 eps of the dtype.
* Optimizers after several steps: float32 rtol 1e-5, float64 1e-12, with an atol of rtol *
  max |value|, as tests/test_kernels.py.
"""
from cuda_setup import fc, gemm_launches, quiet  # first: it sets up the simulator

import os
import subprocess
import sys

import numpy as np
import pytest

import reference as ref  # noqa: E402
from fastnn.cuda import ops as cops  # noqa: E402

pytestmark = quiet

DTYPES = [np.float32, np.float64]
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}
ULPS32 = 8
RTOL64 = 1e-12
K_ABS = 2.0
FLUSH = {np.float32: 1024 * float(np.finfo(np.float32).tiny),
         np.float64: 1024 * float(np.finfo(np.float64).tiny)}
OPT_RTOL = {np.float32: 1e-5, np.float64: 1e-12}

dev = fc.to_device
host = fc.to_host


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


def check(got, want, dtype, scale=None, what=""):
    """got (device or host array of `dtype`) against the float64 oracle `want`: NaN where the
    oracle has NaN, equal infinities, else ULPS32 ulp of round32(want) (float32) or RTOL64
    relative (float64), plus K_ABS * eps * scale and FLUSH."""
    got = host(got) if not isinstance(got, np.ndarray) else got
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    got = got.astype(np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_g, nan_w), (
        f"{what}: NaN positions differ at {np.flatnonzero(nan_g != nan_w)[:5]}")
    inf = np.isinf(got) | np.isinf(want)
    assert np.array_equal(got[inf], want[inf]), f"{what}: infinities differ"
    fin = ~(nan_w | inf)
    g, w = got[fin], want[fin]
    extra = 0.0 if scale is None else K_ABS * EPS[dtype] * np.broadcast_to(
        np.asarray(scale, dtype=np.float64), want.shape)[fin]
    if dtype == np.float64:
        err, tol = np.abs(g - w), RTOL64 * np.abs(w) + extra + FLUSH[dtype]
    else:
        err = np.abs(g - w.astype(np.float32).astype(np.float64))
        tol = ULPS32 * np.spacing(np.abs(w.astype(np.float32))).astype(np.float64) \
            + extra + FLUSH[dtype]
    bad = err > tol
    worst = np.argmax(np.where(bad, err / tol, -1.0)) if bad.any() else 0
    assert not bad.any(), (f"{what}: {bad.sum()} of {w.size} values out of tolerance; worst: "
                           f"got {g[worst]!r}, want {w[worst]!r}")


def check_value(value, want, abs_sum, dtype, what=""):
    """A reduced loss: a (1,) float64 device array within 8 eps(dtype) of abs_sum."""
    assert value.shape == (1,) and value.dtype == np.float64, f"{what}: {value.shape} {value.dtype}"
    got = float(host(value)[0])
    if np.isnan(want):
        assert np.isnan(got), f"{what}: got {got!r}, want NaN"
        return
    tol = 8 * EPS[dtype] * abs_sum + 1e-300
    assert abs(got - want) <= tol, f"{what}: got {got!r}, want {want!r} (tolerance {tol:.3g})"


def values(rng, n):
    """N(0, 4) mixed with wide values and the special magnitudes of tests/test_kernels.py."""
    x = rng.normal(0, 4, n)
    pick = rng.random(n)
    x[pick < 0.15] = rng.uniform(-120, 120, int((pick < 0.15).sum()))
    special = [0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 100.0, -100.0]
    x[pick > 0.95] = rng.choice(special, int((pick > 0.95).sum()))
    return x


# ---- availability and lazy import ------------------------------------------------------------

def _run(code, **env):
    e = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          timeout=120)


def test_import_fastnn_does_not_import_numba():
    r = _run("import sys, fastnn, fastnn.cuda\n"
             "assert 'numba' not in sys.modules, 'numba imported'\n"
             "fastnn.cuda.launch_count(); fastnn.cuda.simulator()\n"
             "assert 'numba' not in sys.modules, 'numba imported by launch_count'\n"
             "print('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_without_numba_is_available_is_false_and_require_says_pip_install():
    r = _run("import sys; sys.modules['numba'] = None\n"
             "import fastnn.cuda as fc\n"
             "assert fc.is_available() is False\n"
             "try:\n    fc.require()\nexcept RuntimeError as e:\n    print(e)\n"
             "try:\n    fc.ops\nexcept RuntimeError as e:\n    print('ops:', e)\n")
    assert r.returncode == 0, r.stderr
    assert "pip install fastnn-core[cuda]" in r.stdout and "ops:" in r.stdout, r.stdout


def test_without_gpu_is_available_is_false_and_require_names_the_gpu():
    r = _run("import fastnn.cuda as fc\n"
             "print(fc.is_available())\n"
             "try:\n    fc.require()\nexcept RuntimeError as e:\n    print(e)\n",
             NUMBA_ENABLE_CUDASIM="0")
    assert r.returncode == 0, r.stderr
    if r.stdout.startswith("True"):
        pytest.skip("a real GPU is present: the no-GPU message cannot be produced here")
    assert r.stdout.startswith("False") and "no usable CUDA GPU" in r.stdout, r.stdout
    assert "NUMBA_ENABLE_CUDASIM" in r.stdout


def test_to_device_to_host_round_trip_and_device_arrays_pass_through():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = dev(x)
    assert dev(d) is d
    np.testing.assert_array_equal(host(d), x)
    np.testing.assert_array_equal(host(dev(x.T)), x.T)     # non-contiguous input is copied
    with pytest.raises(TypeError, match="device array"):
        host(x)


def test_launch_count_counts_per_function_and_resets():
    fc.reset_launch_count()
    x = dev(np.ones(5, np.float32))
    cops.relu(x)
    cops.relu(x)
    cops.sigmoid(x)
    cops.relu(dev(np.ones(0, np.float32)))          # empty: nothing launched
    assert fc.launch_count() == {"relu": 2, "sigmoid": 1}
    assert fc.launch_count().total() == 3
    fc.reset_launch_count()
    assert fc.launch_count().total() == 0


# ---- GEMM ------------------------------------------------------------------------------------

def _operand(rng, rows, cols, trans, dtype):
    """A host array whose op() is (rows, cols): stored transposed when trans."""
    a = rng.standard_normal((cols, rows) if trans else (rows, cols)).astype(dtype)
    return a, (a.T if trans else a)


def gemm_tol(a_op, b_op, dtype):
    k = a_op.shape[1]
    return 2 * max(k, 1) * EPS[dtype] * (np.abs(a_op.astype(np.float64)) @
                                          np.abs(b_op.astype(np.float64)))


def check_gemm(got, want, tol, what=""):
    got = host(got).astype(np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.abs(got - want)
    assert np.all(err <= tol + 1e-30), f"{what}: max error {err.max():.3g}, tol {tol.max():.3g}"


LAYOUTS = [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.mark.parametrize("ta,tb", LAYOUTS, ids=["NN", "NT", "TN", "TT"])
def test_matmul_every_layout(dtype, ta, tb):
    rng = np.random.default_rng(1)
    m, k, n = 5, 7, 3
    a, a_op = _operand(rng, m, k, ta, dtype)
    b, b_op = _operand(rng, k, n, tb, dtype)
    c = cops.matmul(dev(a), dev(b), trans_a=ta, trans_b=tb)
    assert c.dtype == dtype
    check_gemm(c, ref.matmul(a_op, b_op), gemm_tol(a_op, b_op, dtype))


# M, K, N around the 64 x 64 x 16 tiles: 1, tile - 1, tile, tile + 1
EDGE_SHAPES = [(1, 1, 1), (63, 15, 63), (64, 16, 64), (65, 17, 65), (1, 33, 65), (65, 1, 1),
               (2, 48, 70)]


@pytest.mark.parametrize("m,k,n", EDGE_SHAPES)
def test_matmul_edge_shapes(m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    ta, tb = (m + k) % 2, (k + n) % 2          # vary the layouts across shapes
    a, a_op = _operand(rng, m, k, ta, np.float32)
    b, b_op = _operand(rng, k, n, tb, np.float32)
    c = cops.matmul(dev(a), dev(b), trans_a=ta, trans_b=tb)
    check_gemm(c, ref.matmul(a_op, b_op), gemm_tol(a_op, b_op, np.float32), f"{m}x{k}x{n}")


def test_matmul_float64_two_k_tiles():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((9, 33)), rng.standard_normal((33, 66))
    check_gemm(cops.matmul(dev(a), dev(b)), ref.matmul(a, b), gemm_tol(a, b, np.float64))


def test_matmul_alpha_beta_and_out(dtype):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((6, 20)).astype(dtype), rng.standard_normal((20, 5)).astype(dtype)
    c0 = rng.standard_normal((6, 5)).astype(dtype)
    out = dev(c0)
    r = cops.matmul(dev(a), dev(b), out=out, alpha=-0.5, beta=2.0)
    assert r is out
    want = ref.matmul(a, b, alpha=-0.5, beta=2.0, c=c0)
    check_gemm(out, want, gemm_tol(a, b, dtype) + 4 * EPS[dtype] * np.abs(c0))


def test_matmul_beta_zero_never_reads_out_and_nan_propagates():
    a = np.ones((4, 3), np.float32)
    a[1, 2] = np.nan
    b = np.ones((3, 5), np.float32)
    out = dev(np.full((4, 5), np.nan, np.float32))
    c = host(cops.matmul(dev(a), dev(b), out=out))
    assert np.isnan(c[1]).all() and not np.isnan(np.delete(c, 1, axis=0)).any()
    np.testing.assert_array_equal(np.delete(c, 1, axis=0), 3.0)


def test_matmul_k_zero_gives_beta_out():
    c0 = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = dev(c0)
    cops.matmul(dev(np.ones((2, 0), np.float32)), dev(np.ones((0, 3), np.float32)), out=out,
                beta=0.5)
    np.testing.assert_array_equal(host(out), 0.5 * c0)
    fc.reset_launch_count()
    e = cops.matmul(dev(np.ones((0, 4), np.float32)), dev(np.ones((4, 3), np.float32)))
    assert e.shape == (0, 3) and fc.launch_count().total() == 0


def test_matmul_reads_strided_views_without_flags():
    """Column-major and row-sliced operands, as a __cuda_array_interface__ view or the
    simulator's numpy-backed arrays present them."""
    rng = np.random.default_rng(4)
    big = rng.standard_normal((10, 12)).astype(np.float32)
    bt = rng.standard_normal((4, 7)).astype(np.float32)
    a_view = dev(big)[2:8, 1:8]                     # rows of a wider array
    b_view = cops._transpose_view(dev(bt))          # (7, 4), column-major
    c = cops.matmul(a_view, b_view)
    check_gemm(c, ref.matmul(big[2:8, 1:8], bt.T), gemm_tol(big[2:8, 1:8], bt.T, np.float32))


# every activation of the fused epilogues: (name spec, oracle fwd, oracle bwd)
EPILOGUES = {
    "identity": ("identity", lambda x: x, lambda dy, x: dy),
    "relu": ("relu", ref.relu, ref.relu_backward),
    "leaky_relu_0.2": (("leaky_relu", 0.2), lambda x: ref.leaky_relu(x, 0.2),
                       lambda dy, x: ref.leaky_relu_backward(dy, x, 0.2)),
    "sigmoid": ("sigmoid", ref.sigmoid, ref.sigmoid_backward),
    "tanh": ("tanh", ref.tanh, ref.tanh_backward),
    "gelu": ("gelu", ref.gelu, ref.gelu_backward),
    "gelu_tanh": ("gelu_tanh", lambda x: ref.gelu(x, "tanh"),
                  lambda dy, x: ref.gelu_backward(dy, x, "tanh")),
    "silu": ("silu", ref.silu, ref.silu_backward),
    "softplus_b2_t5": (("softplus", 2.0, 5.0), lambda x: ref.softplus(x, 2.0, 5.0),
                       lambda dy, x: ref.softplus_backward(dy, x, 2.0, 5.0)),
}


@pytest.mark.parametrize("act", list(EPILOGUES))
def test_matmul_bias_act_epilogue(act):
    """act(a @ b.T + bias) against the oracle applied to the float64 product: the GEMM error
    (gemm_tol) passes through the activation with slope <= ~1.2, plus the activation's own
    element-wise tolerance."""
    spec, f, df = EPILOGUES[act]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 19)).astype(np.float32)
    w = rng.standard_normal((6, 19)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    z = ref.matmul(x, w.T) + bias
    tol = 1.2 * (gemm_tol(x, w.T, np.float32) + 2 * EPS[np.float32] * np.abs(bias))
    got = host(cops.matmul_bias_act(dev(x), dev(w), dev(bias), spec, trans_b=True))
    err = np.abs(got - f(z))
    elem = ULPS32 * np.spacing(np.abs(f(z)).astype(np.float32)) + \
        K_ABS * EPS[np.float32] * (np.abs(z) + 1)
    assert np.all(err <= tol + elem), f"{act}: max error {err.max():.3g}"


def test_matmul_bias_act_float64_alpha_beta_no_bias():
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((5, 18)), rng.standard_normal((18, 4))
    c0 = rng.standard_normal((5, 4))
    out = dev(c0)
    cops.matmul_bias_act(dev(a), dev(b), None, "tanh", out=out, alpha=0.5, beta=-1.0)
    z = ref.matmul(a, b, 0.5, -1.0, c0)
    check(out, np.tanh(z), np.float64, scale=gemm_tol(a, b, np.float64) / EPS[np.float64] + 4)
    bias = rng.standard_normal(4)
    got = cops.matmul_bias_act(dev(a), dev(b), dev(bias))          # identity: plain + bias
    check(got, ref.matmul(a, b) + bias, np.float64,
          scale=gemm_tol(a, b, np.float64) / EPS[np.float64] + 4)


@pytest.mark.parametrize("act", list(EPILOGUES))
def test_matmul_act_backward_epilogue(act):
    spec, f, df = EPILOGUES[act]
    rng = np.random.default_rng(7)
    dz, w = rng.standard_normal((7, 9)), rng.standard_normal((9, 6))
    x = values(rng, 42).reshape(7, 6)
    got = cops.matmul_act_backward(dev(dz), dev(w), dev(x), spec)
    dy = ref.matmul(dz, w)
    # the GEMM error times |f'(x)| <= 1.2, plus the derivative's cancellation scale
    scale = 1.2 * gemm_tol(dz, w, np.float64) / EPS[np.float64] + np.abs(dy) * (1 + np.abs(x))
    check(got, df(dy, x), np.float64, scale=scale, what=act)


@pytest.mark.parametrize("ta,tb", LAYOUTS, ids=["NN", "NT", "TN", "TT"])
def test_matmul_bias_grad_every_layout(dtype, ta, tb):
    """dW = dZ.T @ X and db = dZ.sum(0) in one launch; db_beta accumulates."""
    rng = np.random.default_rng(8)
    m, k, n = 6, 21, 4
    a, a_op = _operand(rng, m, k, ta, dtype)
    b, b_op = _operand(rng, k, n, tb, dtype)
    db0 = rng.standard_normal(m).astype(dtype)
    db = dev(db0)
    fc.reset_launch_count()
    c, d = cops.matmul_bias_grad(dev(a), dev(b), db=db, db_beta=1.0, trans_a=ta, trans_b=tb)
    assert d is db and fc.launch_count() == {"matmul_bias_grad": gemm_launches()}
    check_gemm(c, ref.matmul(a_op, b_op), gemm_tol(a_op, b_op, dtype))
    check(d, a_op.astype(np.float64).sum(1) + db0, dtype,
          scale=k * (np.abs(a_op).sum(1) + np.abs(db0)))


def test_matmul_bias_grad_over_several_row_blocks_and_empty_n():
    rng = np.random.default_rng(9)
    a = rng.standard_normal((70, 17)).astype(np.float32)
    b = rng.standard_normal((17, 3)).astype(np.float32)
    c, d = cops.matmul_bias_grad(dev(a), dev(b))
    check_gemm(c, ref.matmul(a, b), gemm_tol(a, b, np.float32))
    check(d, a.astype(np.float64).sum(1), np.float32, scale=17 * np.abs(a).sum(1))
    c, d = cops.matmul_bias_grad(dev(a), dev(np.ones((17, 0), np.float32)))
    assert c.shape == (70, 0)
    check(d, a.astype(np.float64).sum(1), np.float32, scale=17 * np.abs(a).sum(1))


# ---- activations -----------------------------------------------------------------------------

def _gelu_tanh_du(x):
    return np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * x * x)


# id -> (ops name, kwargs, forward cancellation scale(x), backward scale(dy, x)), as
# tests/test_kernels.py
ACTS = {
    "relu": ("relu", {}, None, None),
    "leaky_relu_0.2": ("leaky_relu", {"negative_slope": 0.2}, None, None),
    "sigmoid": ("sigmoid", {}, None, lambda dy, x: np.abs(dy) * ref.sigmoid(x)),
    "tanh": ("tanh", {}, None, lambda dy, x: np.abs(dy)),
    "gelu": ("gelu", {"approximate": "none"}, lambda x: np.abs(x), lambda dy, x: np.abs(dy)),
    "gelu_tanh": ("gelu", {"approximate": "tanh"}, lambda x: np.abs(x),
                  lambda dy, x: np.abs(dy) * (1 + 0.5 * np.abs(x) * _gelu_tanh_du(x))),
    "silu": ("silu", {}, None, lambda dy, x: np.abs(dy) * ref.sigmoid(x) * (1 + np.abs(x))),
    "softplus": ("softplus", {}, None, None),
    "softplus_b2_t5": ("softplus", {"beta": 2.0, "threshold": 5.0}, None, None),
}


@pytest.mark.parametrize("act", list(ACTS))
def test_activation_forward_backward(act, dtype):
    name, kw, fscale, bscale = ACTS[act]
    rng = np.random.default_rng(10)
    x = values(rng, 300).astype(dtype)
    x[:3] = [np.nan, np.inf, -np.inf]
    dy = rng.uniform(-4, 4, 300).astype(dtype)
    dx, ddy = dev(x), dev(dy)
    y = getattr(cops, name)(dx, **kw)
    check(y, getattr(ref, name)(x, **kw), dtype, fscale and fscale(x.astype(np.float64)),
          what=f"{act} forward")
    g = getattr(cops, name + "_backward")(ddy, dx, **kw)
    want = getattr(ref, name + "_backward")(dy, x, **kw)
    fin = np.isfinite(x)           # the derivative at +-inf is a limit the formulas do not take
    check(host(g)[fin], want[fin], dtype,
          bscale and bscale(dy[fin].astype(np.float64), x[fin].astype(np.float64)),
          what=f"{act} backward")


def test_activation_in_place_and_nd_shapes():
    x0 = np.linspace(-3, 3, 24).reshape(2, 3, 4).astype(np.float32)
    x = dev(x0)
    assert cops.relu(x, out=x) is x
    np.testing.assert_array_equal(host(x), np.maximum(x0, 0))
    dy = dev(np.ones((2, 3, 4), np.float32))
    g = cops.tanh_backward(dy, dev(x0), out=dy)
    check(g, ref.tanh_backward(np.ones_like(x0), x0), np.float32, scale=1.0)


def test_relu_nan_propagation():
    x = np.array([np.nan, -1.0, 2.0], np.float32)
    np.testing.assert_array_equal(host(cops.relu(dev(x))), [np.nan, 0, 2])
    g = host(cops.relu_backward(dev(np.full(3, 5.0, np.float32)), dev(x)))
    np.testing.assert_array_equal(g, [5.0, 0.0, 5.0])      # as PyTorch: NaN x passes dy


# ---- softmax, bias ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 1), (9, 33), (2, 3, 5)])
def test_softmax_log_softmax_and_backward(shape, dtype):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    spread = np.abs(x - x.max(-1, keepdims=True)).astype(np.float64)
    cols = shape[-1]
    y = cops.softmax(dev(x))
    want = ref.softmax(x)
    check(y, want, dtype, scale=(2 * (1 + spread) + cols) * want, what="softmax")
    ly = cops.log_softmax(dev(x))
    lse = np.abs(ref._logsumexp(x.astype(np.float64)))
    check(ly, ref.log_softmax(x), dtype, scale=lse + np.abs(x) + cols, what="log_softmax")
    yh = host(y)
    g = cops.softmax_backward(dev(dy), y)
    s = np.abs(dy * yh).sum(-1, keepdims=True)
    check(g, ref.softmax_backward(dy, yh), dtype, scale=yh * (np.abs(dy) + cols * s),
          what="softmax_backward")
    lyh = host(ly)
    g = cops.log_softmax_backward(dev(dy), ly)
    check(g, ref.log_softmax_backward(dy, lyh), dtype,
          scale=np.abs(dy) + cols * np.exp(lyh) * np.abs(dy).sum(-1, keepdims=True),
          what="log_softmax_backward")


def test_softmax_nan_row_and_many_row_blocks():
    x = np.random.default_rng(12).standard_normal((20, 4)).astype(np.float32)
    x[3, 2] = np.nan
    y = host(cops.softmax(dev(x)))
    assert np.isnan(y[3]).all() and not np.isnan(np.delete(y, 3, axis=0)).any()
    np.testing.assert_allclose(np.delete(y, 3, axis=0).sum(1), 1.0, rtol=1e-6)


def test_bias_add_and_bias_grad(dtype):
    rng = np.random.default_rng(13)
    x, b = rng.standard_normal((20, 33)).astype(dtype), rng.standard_normal(33).astype(dtype)
    check(cops.bias_add(dev(x), dev(b)), ref.bias_add(x, b), dtype, what="bias_add")
    db0 = rng.standard_normal(33).astype(dtype)
    out = dev(db0)
    r = cops.bias_grad(dev(x), out=out, beta=0.5)
    assert r is out
    check(out, ref.bias_grad(x, db0, 0.5), dtype,
          scale=20 * (np.abs(x).sum(0) + np.abs(db0)), what="bias_grad")
    check(cops.bias_grad(dev(x)), ref.bias_grad(x), dtype, scale=20 * np.abs(x).sum(0))


# ---- losses ----------------------------------------------------------------------------------

REGRESSION = {
    "mse": ("mse_loss", {}),
    "l1": ("l1_loss", {}),
    "huber": ("huber_loss", {"delta": 1.0}),
    "huber_d0.3": ("huber_loss", {"delta": 0.3}),
}


def _regression_case(loss, reduction, dtype):
    name, kw = REGRESSION[loss]
    rng = np.random.default_rng(14)
    p, t = rng.standard_normal((13, 7)).astype(dtype), rng.standard_normal((13, 7)).astype(dtype)
    t[0, 0] = p[0, 0]                                       # sign(0) = 0 for l1
    want = getattr(ref, name)(p, t, reduction=reduction, **kw)
    abs_sum = np.abs(getattr(ref, name)(p, t, reduction="none", **kw)).sum()
    gwant = getattr(ref, name + "_backward")(p, t, reduction=reduction, **kw)
    gscale = (np.abs(p.astype(np.float64)) + np.abs(t)) * (2 if loss == "mse" else 1) / (
        p.size if reduction == "mean" else 1)
    return name, kw, dev(p), dev(t), want, abs_sum, gwant, gscale


@pytest.mark.parametrize("loss", list(REGRESSION))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_regression_loss_with_grad(loss, reduction, dtype):
    name, kw, dp, dt, want, abs_sum, gwant, gscale = _regression_case(loss, reduction, dtype)
    fc.reset_launch_count()
    v, g = getattr(cops, name + "_with_grad")(dp, dt, reduction=reduction, **kw)
    assert fc.launch_count().total() == 1
    check_value(v, want, abs_sum, dtype)
    check(g, gwant, dtype, scale=gscale)


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_regression_loss_value_only_and_backward_only(loss, dtype):
    name, kw, dp, dt, want, abs_sum, gwant, gscale = _regression_case(loss, "mean", dtype)
    check_value(getattr(cops, name)(dp, dt, **kw), want, abs_sum, dtype)
    check(getattr(cops, name + "_backward")(dp, dt, **kw), gwant, dtype, scale=gscale)


@pytest.mark.parametrize("loss", ["mse", "huber_d0.3"])
def test_regression_loss_none(loss, dtype):
    name, kw = REGRESSION[loss]
    rng = np.random.default_rng(15)
    p, t = rng.standard_normal(11).astype(dtype), rng.standard_normal(11).astype(dtype)
    go = rng.standard_normal(11).astype(dtype)
    items = getattr(cops, name)(dev(p), dev(t), reduction="none", **kw)
    d = np.abs(p.astype(np.float64) - t)
    check(items, getattr(ref, name)(p, t, reduction="none", **kw), dtype, scale=d * (d + 1))
    g = getattr(cops, name + "_backward")(dev(p), dev(t), reduction="none", grad_output=dev(go),
                                         **kw)
    check(g, getattr(ref, name + "_backward")(p, t, reduction="none", grad_output=go, **kw),
          dtype, scale=2 * d * np.abs(go) + np.abs(go))


def test_loss_total_over_many_blocks_is_repeatable():
    """1100 items: 5 blocks, each writing a partial sum that the last block adds in order;
    the block counter is reset, so calling again gives the same bits."""
    rng = np.random.default_rng(16)
    p, t = (rng.standard_normal(1100).astype(np.float32) for _ in range(2))
    dp, dt = dev(p), dev(t)
    v1 = host(cops.mse_loss(dp, dt))[0]
    v2 = host(cops.mse_loss(dp, dt))[0]
    assert v1 == v2
    want = ref.mse_loss(p, t)
    assert abs(v1 - want) <= 8 * EPS[np.float32] * want
    assert host(cops._work())[0] == 0.0       # the block counter is back to 0


def test_loss_of_empty_arrays():
    e = dev(np.ones((0, 3), np.float32))
    assert np.isnan(host(cops.mse_loss(e, e))[0])
    assert host(cops.l1_loss(e, e, reduction="sum"))[0] == 0.0
    assert cops.mse_loss_backward(e, e).shape == (0, 3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("pos_weight", [False, True])
def test_bce_with_logits(reduction, pos_weight, dtype):
    rng = np.random.default_rng(17)
    z = values(rng, 60).reshape(10, 6).astype(dtype)
    t = rng.uniform(0, 1, (10, 6)).astype(dtype)
    pw = rng.uniform(0.5, 2, 6).astype(dtype) if pos_weight else None
    dz, dt, dpw = dev(z), dev(t), (dev(pw) if pos_weight else None)
    z64 = z.astype(np.float64)
    lw = 1 + ((pw if pos_weight else 1.0) - 1) * t
    scale_l = np.abs(1 - t) * np.abs(z64) + lw * (np.abs(z64) + 1)    # (1 - t) z + lw sp
    want = ref.binary_cross_entropy_with_logits(z, t, pw, reduction)
    got = cops.binary_cross_entropy_with_logits(dz, dt, dpw, reduction)
    if reduction == "none":
        check(got, want, dtype, scale=scale_l)
        go = rng.standard_normal((10, 6)).astype(dtype)
        g = cops.binary_cross_entropy_with_logits_backward(dz, dt, dpw, "none",
                                                           grad_output=dev(go))
        gw = ref.binary_cross_entropy_with_logits_backward(z, t, pw, "none", grad_output=go)
        check(g, gw, dtype, scale=(np.abs(1 - t) + lw) * np.abs(go))
        return
    check_value(got, want, scale_l.sum(), dtype)
    gw = ref.binary_cross_entropy_with_logits_backward(z, t, pw, reduction)
    div = z.size if reduction == "mean" else 1
    v, g = cops.binary_cross_entropy_with_logits_with_grad(dz, dt, dpw, reduction)
    check_value(v, want, scale_l.sum(), dtype)
    check(g, gw, dtype, scale=(np.abs(1 - t) + lw) / div)


def _ce_scales(z, labels, weight, eps):
    """Cancellation scales of the per-row loss and of the gradient (the row sums run in the
    dtype: the row length enters)."""
    z = z.astype(np.float64)
    rows, cols = z.shape
    w = np.ones(cols) if weight is None else weight.astype(np.float64)
    lse = np.abs(ref._logsumexp(z)[:, 0])
    wy = w[labels]
    row = (np.abs(wy) + eps * np.abs(w).sum()) * (lse + np.abs(z).max(1) + cols)
    coef = np.abs(wy) + eps / cols * np.abs(w).sum()
    grad = (coef[:, None] * (1 + cols + np.abs(z - z.max(1, keepdims=True)))
            + eps / cols * np.abs(w)[None, :])
    return row, grad


def _ce_case(weighted, eps, reduction, dtype, rows=7, cols=7):
    rng = np.random.default_rng(18)
    z = (rng.standard_normal((rows, cols)) * 3).astype(dtype)
    labels = rng.integers(0, cols, rows)
    w = rng.uniform(0.2, 2, cols).astype(dtype) if weighted else None
    per = ref.cross_entropy(z, labels, w, eps, "none")
    row_scale, grad_scale = _ce_scales(z, labels, w, eps)
    wsum = (w.astype(np.float64)[labels].sum() if weighted else rows)
    div = wsum if reduction == "mean" else 1.0
    return (z, labels, w, ref.cross_entropy(z, labels, w, eps, reduction),
            ref.cross_entropy_backward(z, labels, w, eps, reduction),
            (row_scale + np.abs(per)).sum() / div, grad_scale / div)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_with_grad(weighted, eps, reduction, dtype):
    z, labels, w, want, gwant, vscale, gscale = _ce_case(weighted, eps, reduction, dtype)
    fc.reset_launch_count()
    v, g = cops.cross_entropy_with_grad(dev(z), dev(labels), w if w is None else dev(w), eps,
                                        reduction, check_labels=False)
    launches = 2 if (weighted and reduction == "mean") else 1
    assert fc.launch_count() == {"cross_entropy_with_grad": launches}
    check_value(v, want, vscale, dtype)
    check(g, gwant, dtype, scale=gscale)


@pytest.mark.parametrize("weighted,eps", [(False, 0.0), (True, 0.1)],
                         ids=["unweighted", "weighted_smoothed"])
def test_cross_entropy_value_only_and_backward_only(weighted, eps):
    """The same kernel with the gradient (value) half switched off."""
    z, labels, w, want, gwant, vscale, gscale = _ce_case(weighted, eps, "mean", np.float32,
                                                         rows=11)
    dz, dl, dw = dev(z), dev(labels), (dev(w) if weighted else None)
    check_value(cops.cross_entropy(dz, dl, dw, eps), want, vscale, np.float32)
    check(cops.cross_entropy_backward(dz, dl, dw, eps), gwant, np.float32, scale=gscale)


def test_cross_entropy_none_int32_labels_and_many_row_blocks(dtype):
    rng = np.random.default_rng(19)
    rows, cols = 20, 3                           # 3 blocks of 8 rows
    z = rng.standard_normal((rows, cols)).astype(dtype)
    labels = rng.integers(0, cols, rows).astype(np.int32)
    go = rng.standard_normal(rows).astype(dtype)
    row_scale, grad_scale = _ce_scales(z, labels, None, 0.0)
    got = cops.cross_entropy(dev(z), dev(labels), reduction="none")
    check(got, ref.cross_entropy(z, labels, reduction="none"), dtype, scale=row_scale)
    g = cops.cross_entropy_backward(dev(z), dev(labels), reduction="none", grad_output=dev(go))
    check(g, ref.cross_entropy_backward(z, labels, reduction="none", grad_output=go), dtype,
          scale=grad_scale * np.abs(go)[:, None])
    v = cops.cross_entropy(dev(z), dev(labels))
    check_value(v, ref.cross_entropy(z, labels), (row_scale.sum() + 1) / rows, dtype)


def test_cross_entropy_nan_logit_and_bad_labels():
    z = np.zeros((3, 4), np.float32)
    z[1, 2] = np.nan
    labels = dev(np.array([0, 1, 2]))
    v, g = cops.cross_entropy_with_grad(dev(z), labels)
    g = host(g)
    assert np.isnan(host(v)[0]) and np.isnan(g[1]).all() and not np.isnan(g[[0, 2]]).any()
    bad = dev(np.array([0, 4, -1]))
    with pytest.raises(ValueError, match=r"labels.*\[0, 4\).*got 4 at position 1"):
        cops.cross_entropy(dev(np.zeros((3, 4), np.float32)), bad)
    # unchecked: the bad rows get NaN, the others stay exact; nothing reads out of bounds
    v, g = cops.cross_entropy_with_grad(dev(np.zeros((3, 4), np.float32)), bad,
                                        reduction="sum", check_labels=False)
    g = host(g)
    assert np.isnan(host(v)[0]) and np.isnan(g[1:]).all()
    check(g[0], ref.cross_entropy_backward(np.zeros((1, 4)), [0], reduction="sum")[0],
          np.float32)


# ---- optimizers ------------------------------------------------------------------------------

def check_opt(got, want, dtype, what):
    want = np.asarray(want, np.float64)
    got = host(got).astype(np.float64)
    rtol = OPT_RTOL[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max(),
                               err_msg=what)


SGD_CASES = [dict(lr=0.1), dict(lr=0.05, momentum=0.9),
             dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
             dict(lr=0.02, momentum=0.5, dampening=0.3, maximize=True)]


@pytest.mark.parametrize("kw", SGD_CASES, ids=["plain", "momentum", "nesterov_wd", "damp_max"])
def test_sgd_steps(kw, dtype):
    rng = np.random.default_rng(20)
    n = 300
    p = rng.standard_normal(n).astype(dtype)
    buf = np.zeros(n, dtype)
    dp, dbuf = dev(p), dev(buf)
    wp, wbuf = p.astype(np.float64), buf.astype(np.float64)
    for step in range(5):
        g = rng.standard_normal(n).astype(dtype)
        first = step == 0
        cops.sgd_step(dp, dev(g), dbuf if kw.get("momentum") else None, first_step=first, **kw)
        wp, wbuf = ref.sgd_step(wp, g, wbuf, first_step=first, **kw)
    check_opt(dp, wp, dtype, f"sgd {kw}")


ADAM_CASES = [dict(), dict(weight_decay=0.1, amsgrad=True),
              dict(decoupled_weight_decay=True, weight_decay=0.05, maximize=True)]


@pytest.mark.parametrize("kw", ADAM_CASES, ids=["plain", "wd_amsgrad", "adamw_max"])
def test_adam_steps(kw, dtype):
    rng = np.random.default_rng(21)
    n = 257
    p = rng.standard_normal(n).astype(dtype)
    st = [np.zeros(n, dtype) for _ in range(3)]
    dp, dst = dev(p), [dev(s) for s in st]
    wp, wst = p.astype(np.float64), [s.astype(np.float64) for s in st]
    for step in range(1, 6):
        g = rng.standard_normal(n).astype(dtype)
        cops.adam_step(dp, dev(g), dst[0], dst[1], dst[2], step=step, lr=0.01, **kw)
        wp, *wst = ref.adam_step(wp, g, *wst, step=step, lr=0.01, **kw)
        if wst[2] is None:
            wst[2] = np.zeros(n)
    check_opt(dp, wp, dtype, f"adam {kw}")
    check_opt(dst[1], wst[1], dtype, "exp_avg_sq")


def test_adamw_step_is_adam_with_decoupled_decay(dtype):
    rng = np.random.default_rng(22)
    p, g = rng.standard_normal(50).astype(dtype), rng.standard_normal(50).astype(dtype)
    m, v = dev(np.zeros(50, dtype)), dev(np.zeros(50, dtype))
    dp = dev(p)
    fc.reset_launch_count()
    cops.adamw_step(dp, dev(g), m, v, step=1, lr=0.1)
    assert fc.launch_count() == {"adamw_step": 1}
    wp, *_ = ref.adamw_step(p, g, np.zeros(50), np.zeros(50), step=1, lr=0.1)
    check_opt(dp, wp, dtype, "adamw")


RMSPROP_CASES = [dict(), dict(momentum=0.9, weight_decay=0.01),
                 dict(centered=True, momentum=0.5, maximize=True)]


@pytest.mark.parametrize("kw", RMSPROP_CASES, ids=["plain", "momentum_wd", "centered"])
def test_rmsprop_steps(kw, dtype):
    rng = np.random.default_rng(23)
    n = 130
    p = rng.standard_normal(n).astype(dtype)
    dp, sq, buf, ga = dev(p), *(dev(np.zeros(n, dtype)) for _ in range(3))
    wp, wsq, wbuf, wga = p.astype(np.float64), np.zeros(n), np.zeros(n), np.zeros(n)
    for _ in range(5):
        g = rng.standard_normal(n).astype(dtype)
        cops.rmsprop_step(dp, dev(g), sq, buf, ga, lr=0.01, **kw)
        wp, wsq, wbuf, wga = ref.rmsprop_step(wp, g, wsq, wbuf, wga, lr=0.01, **kw)
    check_opt(dp, wp, dtype, f"rmsprop {kw}")


@pytest.mark.parametrize("kw", [dict(), dict(lr_decay=0.1, weight_decay=0.05, maximize=True)],
                         ids=["plain", "decay_wd_max"])
def test_adagrad_steps(kw, dtype):
    rng = np.random.default_rng(24)
    n = 90
    p = rng.standard_normal(n).astype(dtype)
    dp, s = dev(p), dev(np.zeros(n, dtype))
    wp, ws = p.astype(np.float64), np.zeros(n)
    for step in range(1, 6):
        g = rng.standard_normal(n).astype(dtype)
        cops.adagrad_step(dp, dev(g), s, step=step, lr=0.1, **kw)
        wp, ws = ref.adagrad_step(wp, g, ws, step=step, lr=0.1, **kw)
    check_opt(dp, wp, dtype, f"adagrad {kw}")


def test_optimizer_over_views_of_a_flat_buffer():
    """One launch updates every parameter of a model kept in one flat buffer; views of it see
    the update."""
    flat = dev(np.ones(10, np.float32))
    w = flat[:6].reshape(2, 3)
    fc.reset_launch_count()
    cops.sgd_step(flat, dev(np.full(10, 2.0, np.float32)), lr=0.25)
    assert fc.launch_count().total() == 1
    np.testing.assert_array_equal(host(w), np.full((2, 3), 0.5, np.float32))


# ---- bad input -------------------------------------------------------------------------------

def test_host_array_is_refused_with_a_hint():
    x = np.ones((2, 2), np.float32)
    with pytest.raises(TypeError, match=r"relu: argument 'x' is a host numpy array.*"
                                        r"fastnn\.cuda\.to_device\(x\)"):
        cops.relu(x)
    with pytest.raises(TypeError, match="matmul: argument 'b' is a host numpy array"):
        cops.matmul(dev(x), x)
    with pytest.raises(TypeError, match="argument 'labels' is a host numpy array"):
        cops.cross_entropy(dev(x), np.array([0, 1]))
    with pytest.raises(TypeError, match="must be a device array"):
        cops.sigmoid([1.0, 2.0])


def test_dtype_and_shape_mismatches_name_the_argument():
    a32, a64 = dev(np.ones((2, 3), np.float32)), dev(np.ones((3, 2), np.float64))
    with pytest.raises(TypeError, match="matmul: argument 'b' must have dtype float32"):
        cops.matmul(a32, a64)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        cops.matmul(a32, a32)
    with pytest.raises(TypeError, match="float32 or float64"):
        cops.relu(dev(np.ones(3, np.int32)))
    with pytest.raises(ValueError, match="argument 'x' must have the shape of 'dy'"):
        cops.relu_backward(dev(np.ones(3, np.float32)), dev(np.ones(4, np.float32)))
    with pytest.raises(ValueError, match="argument 'out' must have shape \\(2, 2\\)"):
        cops.matmul(a32, dev(np.ones((3, 2), np.float32)), out=dev(np.ones((2, 3), np.float32)))
    with pytest.raises(ValueError, match="argument 'bias' must have shape \\(2,\\)"):
        cops.matmul_bias_act(a32, dev(np.ones((3, 2), np.float32)),
                             dev(np.ones(3, np.float32)), "relu")
    with pytest.raises(ValueError, match="argument 'activation' must be one of"):
        cops.matmul_bias_act(a32, dev(np.ones((3, 2), np.float32)), None, "swish")
    with pytest.raises(ValueError, match="argument 'beta' must be 0 when 'out' is None"):
        cops.matmul(a32, dev(np.ones((3, 2), np.float32)), beta=1.0)
    with pytest.raises(ValueError, match="argument 'x' must have shape \\(2, 2\\)"):
        cops.matmul_act_backward(a32, dev(np.ones((3, 2), np.float32)), a32)


def test_overlap_and_layout_errors():
    x = dev(np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="argument 'out' overlaps input 'a'"):
        cops.matmul(x, x, out=x)
    with pytest.raises(ValueError, match="argument 'out' overlaps input 'x'"):
        cops.relu(x[:2], out=x[1:3])
    with pytest.raises(ValueError, match="argument 'x' must be C-contiguous"):
        cops.relu(x[:, :2])
    with pytest.raises(ValueError, match="argument 'momentum_buffer' overlaps 'param'"):
        cops.sgd_step(x, dev(np.ones((4, 4), np.float32)), x, lr=0.1, momentum=0.9)


def test_loss_and_optimizer_argument_errors():
    p = dev(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="argument 'reduction' must be 'mean', 'sum' or 'none'"):
        cops.mse_loss(p, p, reduction="avg")
    with pytest.raises(ValueError, match="argument 'reduction' must be 'mean' or 'sum'"):
        cops.mse_loss_with_grad(p, p, reduction="none")
    with pytest.raises(ValueError, match="argument 'grad_output' is required"):
        cops.l1_loss_backward(p, p, reduction="none")
    with pytest.raises(ValueError, match="argument 'value_out' must be a float64 device array"):
        cops.mse_loss_with_grad(p, p, value_out=dev(np.zeros(1, np.float32)))
    with pytest.raises(ValueError, match="argument 'delta' must be > 0"):
        cops.huber_loss(p, p, delta=0)
    z = dev(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="argument 'labels' must hold int32 or int64"):
        cops.cross_entropy(z, dev(np.zeros(2, np.float32)))
    with pytest.raises(ValueError, match="argument 'labels' must have shape \\(2,\\)"):
        cops.cross_entropy(z, dev(np.zeros(3, np.int64)))
    with pytest.raises(ValueError, match="argument 'label_smoothing' must be in \\[0, 1\\]"):
        cops.cross_entropy(z, dev(np.zeros(2, np.int64)), label_smoothing=1.5)
    with pytest.raises(ValueError, match="argument 'momentum_buffer' is required"):
        cops.sgd_step(p, dev(np.ones(4, np.float32)), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="argument 'step' must be an int >= 1"):
        cops.adam_step(p, dev(np.ones(4, np.float32)), dev(np.zeros(4, np.float32)),
                       dev(np.zeros(4, np.float32)), step=0)
    with pytest.raises(ValueError, match="argument 'grad' must have 4 elements"):
        cops.adagrad_step(p, dev(np.ones(5, np.float32)), dev(np.zeros(4, np.float32)), step=1)
    with pytest.raises(TypeError, match="argument 'lr' must be a real number"):
        cops.sgd_step(p, dev(np.ones(4, np.float32)), lr="0.1")


def test_correct_count_never_counts_a_row_holding_a_nan(dtype):
    nan = np.nan
    z = np.array([[2.0, 1.0, 0.0], [nan, 1.0, 0.0], [2.0, nan, 0.0], [0.0, 1.0, nan],
                  [0.0, 3.0, 1.0], [nan, nan, nan]], dtype)
    labels = np.array([0, 0, 0, 1, 1, 0], np.int64)
    acc = dev(np.zeros(1))
    cops.correct_count_add(dev(z), dev(labels), acc)
    assert host(acc)[0] == 2.0          # rows 0 and 4; numpy's argmax would add 4 more


def test_gemm_backend_choice():
    """set_gemm_backend validates its argument; cuBLAS is refused with the reason where it
    cannot run (always under the simulator); 'numba' always works; TF32 takes a bool."""
    with pytest.raises(ValueError, match="argument 'name' must be one of"):
        fc.set_gemm_backend("blas")
    if fc.simulator():
        with pytest.raises(RuntimeError, match="cuBLAS cannot be used"):
            fc.set_gemm_backend("cublas")
    from fastnn.cuda import _cublas
    setting, before = _cublas._state["backend"], fc.gemm_backend()
    try:
        fc.set_gemm_backend("numba")
        assert fc.gemm_backend() == "numba"
        fc.set_gemm_backend("auto")
        if fc.simulator():                       # the simulator never reaches cuBLAS
            assert fc.gemm_backend() == "numba"
    finally:
        _cublas._state["backend"] = setting
    assert fc.gemm_backend() == before
    with pytest.raises(TypeError, match="argument 'enabled' must be a bool"):
        fc.set_tf32(1)


def test_numpy_without_row_stack_gets_it_back(monkeypatch):
    """numba-cuda 0.30 overloads np.row_stack at its first compile; NumPy 2.5 removed that
    alias and every compile on a GPU failed. fastnn.cuda puts it back where it is missing
    (and leaves a NumPy that has it alone)."""
    kept = np.row_stack if "row_stack" in np.__dict__ else None
    fc._numpy_compat()
    if kept is not None:
        assert np.row_stack is kept
    monkeypatch.delitem(np.__dict__, "row_stack", raising=False)
    fc._numpy_compat()
    assert np.row_stack is np.vstack
