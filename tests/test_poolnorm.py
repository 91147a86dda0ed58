"""Pooling and normalization: kernels against their float64 oracles (tests/reference.py) and
their naive C references, PyTorch parity, hypothesis over the geometry, float64
central-difference gradient checks of every layer, thread-count determinism, the layers'
PyTorch semantics (running statistics, state_dict names) and 4-D data through fit.

Tolerances: max pooling is exact (it selects). The other kernels sum in double and round
once, so float64 results agree with the oracle to RTOL64 and float32 results to a few float32
ulps of the output scale (normalized outputs are O(1): ATOL32 = 1e-5 covers the rounding of
x * scale + shift in float32 for |xhat| up to ~10).
"""
import os
import platform
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnn as fn
import reference as ref
from fastnn import _kernels, ops

DTYPES = [np.float32, np.float64]
RTOL64, ATOL64 = 1e-12, 1e-12
RTOL32, ATOL32 = 4e-7, 1e-5
HYP = settings(max_examples=25, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])

# (kernel_size, stride, padding): the LeNet/CIFAR 2x2 fast path, overlapping windows,
# rectangular windows, padding, a window as large as the padded image
GEOMETRIES = [(2, 2, 0), (3, 2, 1), (3, 1, 1), ((3, 2), (1, 2), (1, 0)), (5, 3, 2), (2, 1, 0),
              (7, 1, 3)]


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


def close(got, want, dtype, what=""):
    got = np.asarray(got)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}"
    assert got.shape == np.shape(want), f"{what}: shape {got.shape} != {np.shape(want)}"
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=RTOL64, atol=ATOL64, err_msg=what)
    else:
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=RTOL32, atol=ATOL32,
                                   err_msg=what)


def images(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


class reference_kernels:
    """Route fn.ops' pooling / normalization calls to the naive C references."""

    def __enter__(self):
        self.before = _kernels._use_reference(True)

    def __exit__(self, *exc):
        _kernels._use_reference(self.before)


def both(f):
    """f() with the kernels and with the naive references."""
    a = f()
    with reference_kernels():
        b = f()
    return a, b


def assert_same_bits(a, b, what=""):
    a, b = (a,) if isinstance(a, np.ndarray) else a, (b,) if isinstance(b, np.ndarray) else b
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and x.shape == y.shape, what
        assert x.tobytes() == y.tobytes(), f"{what}: output {i} differs"


# ---- kernels against the float64 oracles and the C references ---------------------------------

@pytest.mark.parametrize("k,s,p", GEOMETRIES)
def test_max_pool2d_matches_oracle(dtype, k, s, p):
    x = images((2, 3, 11, 9), dtype)
    y, idx = ops.max_pool2d(x, k, s, p, return_indices=True)
    want, want_idx = ref.max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(y, want.astype(dtype))      # a selection: exact
    np.testing.assert_array_equal(idx, want_idx)
    dy = images(y.shape, dtype, 1)
    close(ops.max_pool2d_backward(dy, x, idx, k, s, p), ref.max_pool2d_backward(dy, x, idx),
          dtype, "max_pool2d_backward")
    assert_same_bits(*both(lambda: ops.max_pool2d(x, k, s, p, return_indices=True)))
    assert_same_bits(*both(lambda: ops.max_pool2d_backward(dy, x, idx, k, s, p)))


@pytest.mark.parametrize("cip", [True, False])
@pytest.mark.parametrize("k,s,p", GEOMETRIES)
def test_avg_pool2d_matches_oracle(dtype, k, s, p, cip):
    x = images((2, 3, 11, 9), dtype)
    y = ops.avg_pool2d(x, k, s, p, count_include_pad=cip)
    close(y, ref.avg_pool2d(x, k, s, p, cip), dtype, "avg_pool2d")
    dy = images(y.shape, dtype, 1)
    close(ops.avg_pool2d_backward(dy, x, k, s, p, cip), ref.avg_pool2d_backward(dy, x, k, s, p, cip),
          dtype, "avg_pool2d_backward")
    assert_same_bits(*both(lambda: ops.avg_pool2d(x, k, s, p, cip)))
    assert_same_bits(*both(lambda: ops.avg_pool2d_backward(dy, x, k, s, p, cip)))


def test_adaptive_avg_pool2d_matches_oracle(dtype):
    x = images((3, 5, 7, 6), dtype)
    y = ops.adaptive_avg_pool2d(x)
    close(y, ref.adaptive_avg_pool2d(x), dtype, "adaptive_avg_pool2d")
    dy = images(y.shape, dtype, 1)
    close(ops.adaptive_avg_pool2d_backward(dy, x), ref.adaptive_avg_pool2d_backward(dy, x),
          dtype, "adaptive_avg_pool2d_backward")
    assert_same_bits(*both(lambda: ops.adaptive_avg_pool2d(x)))
    assert_same_bits(*both(lambda: ops.adaptive_avg_pool2d_backward(dy, x)))


BN_SHAPES = [(16, 5), (4, 6, 9), (4, 3, 7, 5), (2, 67, 3, 3)]


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_matches_oracle(dtype, shape, affine):
    c = shape[1]
    x = images(shape, dtype) * 3 + 2                      # a mean and a scale to remove
    w = images((c,), dtype, 2) if affine else None
    b = images((c,), dtype, 3) if affine else None
    rm0, rv0 = images((c,), dtype, 4), np.abs(images((c,), dtype, 5)) + 0.5
    rm, rv = rm0.copy(), rv0.copy()
    y, mean, invstd = ops.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, eps=1e-4,
                                     return_stats=True)
    want, wrm, wrv, wmean, winv = ref.batch_norm(x, rm0, rv0, w, b, True, 0.3, 1e-4)
    close(y, want, dtype, "y")
    close(rm, wrm, dtype, "running_mean")
    close(rv, wrv, dtype, "running_var")
    close(mean, wmean, dtype, "save_mean")
    close(invstd, winv, dtype, "save_invstd")
    dy = images(shape, dtype, 6)
    dx, dw, db = ops.batch_norm_backward(dy, x, mean, invstd, w, training=True)
    wdx, wdw, wdb = ref.batch_norm_backward(dy, x, mean, invstd, w, True)
    close(dx, wdx, dtype, "dx")
    close(dw, wdw, dtype, "dweight")
    close(db, wdb, dtype, "dbias")

    def run():
        r1, r2 = rm0.copy(), rv0.copy()
        out = ops.batch_norm(x, r1, r2, w, b, training=True, momentum=0.3, eps=1e-4,
                             return_stats=True)
        return out + (r1, r2) + ops.batch_norm_backward(dy, x, out[1], out[2], w)
    assert_same_bits(*both(run), "batch_norm training")


@pytest.mark.parametrize("shape", BN_SHAPES[:3])
def test_batch_norm_eval_matches_oracle(dtype, shape):
    c = shape[1]
    x = images(shape, dtype)
    w, b = images((c,), dtype, 2), images((c,), dtype, 3)
    rm, rv = images((c,), dtype, 4), np.abs(images((c,), dtype, 5)) + 0.5
    rm_before, rv_before = rm.copy(), rv.copy()
    y, mean, invstd = ops.batch_norm(x, rm, rv, w, b, training=False, return_stats=True)
    want, _, _, wmean, winv = ref.batch_norm(x, rm, rv, w, b, False)
    close(y, want, dtype, "y")
    np.testing.assert_array_equal(rm, rm_before)          # eval leaves them alone
    np.testing.assert_array_equal(rv, rv_before)
    dy = images(shape, dtype, 6)
    got = ops.batch_norm_backward(dy, x, mean, invstd, w, training=False)
    for g, wnt, what in zip(got, ref.batch_norm_backward(dy, x, mean, invstd, w, False),
                            ("dx", "dweight", "dbias")):
        close(g, wnt, dtype, what)
    assert_same_bits(*both(lambda: ops.batch_norm(x, rm, rv, w, b, return_stats=True)))


@pytest.mark.parametrize("shape,ns", [((6, 10), 10), ((3, 4, 5), (4, 5)), ((2, 3, 70), 70),
                                      ((5, 1), 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_oracle(dtype, shape, ns, affine):
    nshape = (ns,) if isinstance(ns, int) else ns
    x = images(shape, dtype) * 2 - 1
    w = images(nshape, dtype, 2) if affine else None
    b = images(nshape, dtype, 3) if affine else None
    y, mean, rstd = ops.layer_norm(x, ns, w, b, eps=1e-5, return_stats=True)
    want, wmean, wrstd = ref.layer_norm(x, ns, w, b, 1e-5)
    close(y, want, dtype, "y")
    close(mean, wmean, dtype, "mean")
    close(rstd, wrstd, dtype, "rstd")
    dy = images(shape, dtype, 4)
    got = ops.layer_norm_backward(dy, x, ns, mean, rstd, w)
    for g, wnt, what in zip(got, ref.layer_norm_backward(dy, x, ns, w, 1e-5),
                            ("dx", "dweight", "dbias")):
        close(g, wnt, dtype, what)

    def run():
        out = ops.layer_norm(x, ns, w, b, return_stats=True)
        return out + ops.layer_norm_backward(dy, x, ns, out[1], out[2], w)
    assert_same_bits(*both(run), "layer_norm")


# ---- semantics at the edges -------------------------------------------------------------------

@pytest.mark.parametrize("h", [2, 5, 7, 30])
@pytest.mark.parametrize("w", [2, 3, 8, 9, 10, 15, 16, 17, 18, 19, 28, 31, 32, 33, 34, 62, 64,
                               66, 129, 130])
def test_max_pool2d_2x2_row_lengths_against_the_reference_kernel(dtype, h, w):
    """The 2x2 stride-2 fast path runs chunks of 64 outputs, each rounded up to 16 lanes
    (short rows through zero-padded copies; rows under 16 outputs gathered several to a
    chunk): every row length around those boundaries, planes of one to 15 output rows and of
    several chunks, odd sizes, ties, NaN in any of the four window positions and in the last
    lanes, against the naive reference kernel bit for bit (values and argmax)."""
    rng = np.random.default_rng(w * h)
    x = rng.integers(-3, 3, (2, 3, h, w)).astype(dtype)      # small integers: many ties
    x[rng.random(x.shape) < 0.05] = np.nan
    x[0, 0, :, -2:] = np.nan
    got = ops.max_pool2d(x, 2, return_indices=True)
    before = _kernels._use_reference(True)
    try:
        want = ops.max_pool2d(x, 2, return_indices=True)
    finally:
        _kernels._use_reference(before)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_max_pool2d_ties_keep_the_first_and_nan_propagates(dtype):
    x = np.zeros((1, 1, 4, 4), dtype)
    x[0, 0, 1, 1] = 5                      # one maximum in window (0, 0), ties elsewhere
    x[0, 0, 2, 3] = np.nan
    for route in (False, True):
        before = _kernels._use_reference(route)
        try:
            y, idx = ops.max_pool2d(x, 2, return_indices=True)
        finally:
            _kernels._use_reference(before)
        assert y[0, 0, 0, 0] == 5 and idx[0, 0, 0, 0] == 5
        assert y[0, 0, 0, 1] == 0 and idx[0, 0, 0, 1] == 2         # all zero: the first
        assert np.isnan(y[0, 0, 1, 1]) and idx[0, 0, 1, 1] == 11     # NaN wins
        assert y[0, 0, 1, 0] == 0 and idx[0, 0, 1, 0] == 8
    y, idx = ops.max_pool2d(np.full((1, 1, 3, 3), -np.inf, dtype), 3, 1, 1,
                            return_indices=True)
    assert np.all(y == -np.inf) and idx[0, 0, 0, 0] == 0             # padding never chosen


def test_images_down_to_one_pixel(dtype):
    x = images((2, 3, 1, 1), dtype)
    np.testing.assert_array_equal(ops.max_pool2d(x, 1), x)
    np.testing.assert_array_equal(ops.max_pool2d(x, 3, 1, 1), x)
    close(ops.avg_pool2d(x, 3, 1, 1), x.astype(np.float64) / 9, dtype)
    close(ops.avg_pool2d(x, 3, 1, 1, count_include_pad=False), x, dtype)
    close(ops.adaptive_avg_pool2d(x), x, dtype)


def test_bad_arguments_raise_clear_errors():
    x = images((2, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="'x' must be a 4-D array"):
        ops.max_pool2d(x[0], 2)
    with pytest.raises(ValueError, match="'padding' must be at most half"):
        ops.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="'kernel_size' must be >= 1"):
        ops.avg_pool2d(x, 0)
    with pytest.raises(TypeError, match="'stride' must be an int or a pair"):
        ops.avg_pool2d(x, 2, stride=1.5)
    with pytest.raises(ValueError, match="smaller than kernel_size"):
        ops.max_pool2d(x, 7)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.max_pool2d(x.astype(np.int32), 2)
    y, idx = ops.max_pool2d(x, 2, return_indices=True)
    with pytest.raises(ValueError, match="'indices' must hold positions in"):
        ops.max_pool2d_backward(np.ones_like(y), x, idx + 100, 2)
    with pytest.raises(TypeError, match="'indices' must hold integers"):
        ops.max_pool2d_backward(np.ones_like(y), x, idx.astype(np.float32), 2)
    with pytest.raises(ValueError, match="'dy' must have the pooled shape"):
        ops.avg_pool2d_backward(np.ones((2, 3, 5, 5), np.float32), x, 2)
    with pytest.raises(ValueError, match="output_size"):
        ops.adaptive_avg_pool2d(x, 2)
    c = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ops.batch_norm(x[:1, :, :1, :1], c.copy(), c + 1, training=True)
    with pytest.raises(ValueError, match="'running_mean' is required"):
        ops.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match=r"'running_var' must have shape \(3,\)"):
        ops.batch_norm(x, c.copy(), np.ones(4, np.float32), training=True)
    with pytest.raises(TypeError, match="'running_mean' must have dtype float32"):
        ops.batch_norm(x, c.astype(np.float64), c + 1, training=True)
    with pytest.raises(ValueError, match="'momentum' must be in"):
        ops.batch_norm(x, c.copy(), c + 1, training=True, momentum=2)
    with pytest.raises(ValueError, match="must end with the normalized_shape"):
        ops.layer_norm(x, (4, 5))
    with pytest.raises(TypeError, match="normalized_shape"):
        ops.layer_norm(x, "5")
    with pytest.raises(ValueError, match="MaxPool2d: kernel_size"):
        fn.MaxPool2d(0)
    with pytest.raises(ValueError, match="BatchNorm2d: num_features"):
        fn.BatchNorm2d(0)
    with pytest.raises(ValueError, match="momentum"):
        fn.BatchNorm1d(3, momentum=1.5)
    with pytest.raises(ValueError, match="LayerNorm: normalized_shape"):
        fn.LayerNorm(())
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3.*expected a 4-D input with 3 "):
        fn.BatchNorm2d(3)(x[:, :2])
    with pytest.raises(ValueError, match="expected a 4-D input"):
        fn.MaxPool2d(2)(x[0])
    with pytest.raises(TypeError, match="like the weights"):
        fn.BatchNorm2d(3)(x.astype(np.float64))


# ---- hypothesis over the geometry ------------------------------------------------------------

@st.composite
def pool_case(draw):
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(1, kh - 2 * ph), max(1, kh - 2 * ph) + 6))
    w = draw(st.integers(max(1, kw - 2 * pw), max(1, kw - 2 * pw) + 6))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 67))
    return (n, c, h, w), (kh, kw), (sh, sw), (ph, pw), draw(st.integers(0, 2 ** 31))


@HYP
@given(case=pool_case(), cip=st.booleans())
def test_pooling_hypothesis(dtype, case, cip):
    shape, k, s, p, seed = case
    x = images(shape, dtype, seed)
    y, idx = ops.max_pool2d(x, k, s, p, return_indices=True)
    want, want_idx = ref.max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(y, want.astype(dtype))
    np.testing.assert_array_equal(idx, want_idx)
    dy = images(y.shape, dtype, seed + 1)
    close(ops.max_pool2d_backward(dy, x, idx, k, s, p), ref.max_pool2d_backward(dy, x, idx),
          dtype, "max_pool2d_backward")
    close(ops.avg_pool2d(x, k, s, p, cip), ref.avg_pool2d(x, k, s, p, cip), dtype, "avg")
    close(ops.avg_pool2d_backward(dy, x, k, s, p, cip),
          ref.avg_pool2d_backward(dy, x, k, s, p, cip), dtype, "avg backward")


@HYP
@given(n=st.integers(1, 4), c=st.integers(1, 67), hw=st.sampled_from([(), (1,), (3,), (1, 1),
                                                                      (2, 3), (5, 4)]),
       seed=st.integers(0, 2 ** 31))
def test_batch_norm_hypothesis(dtype, n, c, hw, seed):
    shape = (n, c) + hw
    if n * int(np.prod(hw)) < 2:
        n, shape = 2, (2, c) + hw
    x = images(shape, dtype, seed)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    y, mean, invstd = ops.batch_norm(x, rm, rv, training=True, return_stats=True)
    want, wrm, wrv, _, _ = ref.batch_norm(x, np.zeros(c), np.ones(c), None, None, True)
    # a channel of 2 values normalizes to +-1 / sqrt(1 + eps / var): fine in float32 too
    close(y, want, dtype, "y")
    close(rv, wrv, dtype, "running_var")
    dy = images(shape, dtype, seed + 1)
    dx, _, _ = ops.batch_norm_backward(dy, x, mean, invstd)
    wdx = ref.batch_norm_backward(dy, x, mean, invstd)[0]
    scale = np.abs(dy).max() * float(invstd.max())
    np.testing.assert_allclose(dx, wdx, rtol=0, atol=(1e-11 if dtype == np.float64 else 1e-5)
                               * max(1.0, scale))


# ---- threads and kernel tables ------------------------------------------------------------------

def _everything(dtype):
    """Every kernel on inputs large enough (> 64 Ki elements) to be split across threads."""
    x = images((8, 16, 32, 32), dtype)
    y, idx = ops.max_pool2d(x, 3, 2, 1, return_indices=True)
    dy = images(y.shape, dtype, 1)
    outs = [y, idx, ops.max_pool2d_backward(dy, x, idx, 3, 2, 1),
            ops.avg_pool2d(x, 3, 2, 1), ops.avg_pool2d_backward(dy, x, 3, 2, 1),
            ops.adaptive_avg_pool2d(x),
            ops.adaptive_avg_pool2d_backward(images((8, 16, 1, 1), dtype, 2), x)]
    rm, rv = np.zeros(16, dtype), np.ones(16, dtype)
    bn = ops.batch_norm(x, rm, rv, images((16,), dtype, 3), None, training=True,
                        return_stats=True)
    outs += list(bn) + [rm, rv]
    outs += list(ops.batch_norm_backward(images(x.shape, dtype, 4), x, bn[1], bn[2]))
    rows = x.reshape(128, 1024)
    ln = ops.layer_norm(rows, 1024, images((1024,), dtype, 5), None, return_stats=True)
    outs += list(ln)
    outs += list(ops.layer_norm_backward(images(rows.shape, dtype, 6), rows, 1024, ln[1], ln[2],
                                         images((1024,), dtype, 5)))
    return outs


def test_one_and_two_threads_give_the_same_bits(dtype, threads):
    threads(1)
    one = _everything(dtype)
    threads(2)
    two = _everything(dtype)
    assert len(one) == len(two)
    for i, (a, b) in enumerate(zip(one, two)):
        assert a.tobytes() == b.tobytes(), f"output {i} differs between 1 and 2 threads"


def test_every_kernel_table_gives_the_same_bits(each_arch):
    """Pooling and normalization are plain C with no per-ISA micro-kernel: the table in use
    must not change a bit."""
    before = fn.arch()
    got = _everything(np.float32)
    fn.set_arch("generic")
    try:
        want = _everything(np.float32)
    finally:
        fn.set_arch(before)
    for a, b in zip(got, want):
        assert a.tobytes() == b.tobytes()


def _clone_inputs(rows, cols, dtype):
    """The inputs tests/c/cloned_loops.c builds (the same float64 arithmetic)."""
    i, c = np.arange(rows * cols), np.arange(cols)
    x = (((i * 7919) % 2003) / 173.0 - 5.8).astype(dtype).reshape(rows, cols)
    dy = (((i * 104729) % 1009) / 97.0 - 5.2).astype(dtype).reshape(rows, cols)
    w = (0.5 + (c % 7) / 4.0).astype(dtype)
    b = ((c % 5) / 8.0 - 0.25).astype(dtype)
    return x, dy, w, b, (np.arange(rows) * 31) % cols


def _clone_outputs(rows, cols, dtype):
    """What tests/c/cloned_loops.c writes for one dtype, from the library through fastnn.ops."""
    x, dy, w, b, labels = _clone_inputs(rows, cols, dtype)
    outs = []
    for fwd, bwd in ((ops.softmax, ops.softmax_backward),
                     (ops.log_softmax, ops.log_softmax_backward)):
        y = fwd(x)
        outs += [y, bwd(dy, y)]
    outs += [np.float64(ops.cross_entropy(x, labels, w, 0.1, "sum")),
             ops.cross_entropy_backward(x, labels, w, 0.1, "sum")]
    y, mean, rstd = ops.layer_norm(x, cols, w, b, 1e-5, return_stats=True)
    outs += [y, *ops.layer_norm_backward(dy, x, cols, mean, rstd, w)]
    x3, dy3 = x.reshape(rows, 1, cols), dy.reshape(rows, 1, cols)
    y, sm, si = ops.batch_norm(x3, None, None, training=True, eps=1e-5, return_stats=True)
    outs += [y, *ops.batch_norm_backward(dy3, x3, sm, si, None, True)]
    return b"".join(np.ascontiguousarray(o).tobytes() for o in outs)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 clones")
@pytest.mark.parametrize("cc, opt", [("gcc", "-O0"), ("clang", "-O1")])
def test_cloned_loops_built_otherwise_give_the_same_bits(tmp_path, cc, opt):
    """The loops cloned for AVX2 / AVX-512 (FASTNN_CLONES) on GCC vector types, built another
    way into a C program (tests/c/cloned_loops.c) linked to the library, must compile
    and give the library's bits for softmax, cross-entropy and the norm kernels:
    - gcc -O0: nothing is inlined unless it must be. A helper taking a 64-byte vector called
      out of line from an AVX-512 clone passes it in a zmm register while the baseline callee
      reads the stack (the lane total of the norm kernels did: garbage statistics);
    - clang: it rejects such a call outright (an error), so it builds these loops without
      clones (common.h); `CC=clang pip install .` failed on it.
    Rows of 133 and 1100 columns cover the vector bodies, the tails, the 64-column strips of
    layer norm and the chunks of long rows."""
    if shutil.which(cc) is None:
        pytest.skip(f"no {cc}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lib = fn.get_library_dir()
    exe = str(tmp_path / "cloned_loops")
    srcs = ["tests/c/cloned_loops.c", "csrc/ref/activations.c", "csrc/ref/losses.c",
            "csrc/layers/norm.c"]
    build = subprocess.run(
        [cc, "-std=gnu11", opt, "-ffp-contract=off", "-fno-math-errno", "-Wno-unknown-pragmas",
         *(f"-I{os.path.join(root, d)}" for d in ("csrc", "csrc/include", "csrc/ref")),
         *(os.path.join(root, s) for s in srcs), "-o", exe, f"-L{lib}", "-lfastnn",
         f"-Wl,-rpath,{lib}", "-lm"], capture_output=True, text=True)
    assert build.returncode == 0, f"{cc} {opt} failed:\n{build.stderr[-3000:]}"
    for rows, cols in ((6, 133), (3, 1100)):
        got = subprocess.run([exe, str(rows), str(cols)], check=True, capture_output=True,
                             timeout=60).stdout
        want = b"".join(_clone_outputs(rows, cols, dt) for dt in DTYPES)
        assert len(got) == len(want)
        assert got == want, f"({rows}, {cols}): the {cc} {opt} build differs from the library"


# ---- PyTorch parity -------------------------------------------------------------------------------

def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("k,s,p", GEOMETRIES)
def test_pooling_matches_pytorch(k, s, p):
    torch = _torch()
    F = torch.nn.functional
    x = images((2, 4, 13, 10), np.float32)
    dy_seed = 1
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = F.max_pool2d(tx, k, s, p, return_indices=True)
    dy = images(tuple(ty.shape), np.float32, dy_seed)
    ty.backward(torch.tensor(dy))
    y, idx = ops.max_pool2d(x, k, s, p, return_indices=True)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    np.testing.assert_allclose(ops.max_pool2d_backward(dy, x, idx, k, s, p), tx.grad.numpy(),
                               rtol=1e-6, atol=1e-6)
    for cip in (True, False):
        tx = torch.tensor(x, requires_grad=True)
        ty = F.avg_pool2d(tx, k, s, p, count_include_pad=cip)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(ops.avg_pool2d(x, k, s, p, cip), ty.detach().numpy(),
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ops.avg_pool2d_backward(dy, x, k, s, p, cip),
                                   tx.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_max_pool2d_nan_matches_pytorch():
    torch = _torch()
    x = images((1, 2, 6, 6), np.float32)
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = x[0, 1, 4, 4] = np.nan
    ty, tidx = torch.nn.functional.max_pool2d(torch.tensor(x), 3, 1, 1, return_indices=True)
    y, idx = ops.max_pool2d(x, 3, 1, 1, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_pytorch(shape, training):
    torch = _torch()
    c = shape[1]
    x = images(shape, np.float32) * 2 + 1
    w, b = images((c,), np.float32, 2), images((c,), np.float32, 3)
    rm, rv = images((c,), np.float32, 4), np.abs(images((c,), np.float32, 5)) + 0.5
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training, 0.2, 1e-5)
    dy = images(shape, np.float32, 6)
    ty.backward(torch.tensor(dy))
    y, mean, invstd = ops.batch_norm(x, rm, rv, w, b, training, 0.2, 1e-5, return_stats=True)
    dx, dw, db = ops.batch_norm_backward(dy, x, mean, invstd, w, training)
    for got, want in ((y, ty), (rm, trm), (rv, trv), (dx, tx.grad), (dw, tw.grad),
                      (db, tb.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("shape,ns", [((6, 10), 10), ((3, 4, 5), (4, 5))])
def test_layer_norm_matches_pytorch(shape, ns):
    torch = _torch()
    nshape = (ns,) if isinstance(ns, int) else ns
    x = images(shape, np.float32) * 3
    w, b = images(nshape, np.float32, 2), images(nshape, np.float32, 3)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.layer_norm(tx, nshape, tw, tb, 1e-5)
    dy = images(shape, np.float32, 4)
    ty.backward(torch.tensor(dy))
    y, mean, rstd = ops.layer_norm(x, ns, w, b, 1e-5, return_stats=True)
    dx, dw, db = ops.layer_norm_backward(dy, x, ns, mean, rstd, w)
    for got, want in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=2e-5)


def test_layers_match_pytorch_over_training_steps():
    """The same CNN-style model (no Conv2d: pools, norms, Linear) in fastnn and PyTorch,
    trained 5 SGD steps in train() mode, then compared in eval(): weights, running
    statistics and outputs agree; the state_dict names are PyTorch's."""
    torch = _torch()
    nn = torch.nn
    model = fn.Sequential(fn.BatchNorm2d(3), fn.MaxPool2d(2), fn.AvgPool2d(3, 1, 1),
                          fn.Flatten(), fn.Linear(48, 16), fn.BatchNorm1d(16, momentum=None),
                          fn.ReLU(), fn.LayerNorm(16), fn.Linear(16, 4), seed=0)
    tmodel = nn.Sequential(nn.BatchNorm2d(3), nn.MaxPool2d(2), nn.AvgPool2d(3, 1, 1),
                           nn.Flatten(), nn.Linear(48, 16), nn.BatchNorm1d(16, momentum=None),
                           nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 4))
    tmodel.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    loss, tloss = fn.CrossEntropyLoss(), nn.CrossEntropyLoss()
    opt = fn.SGD(model.parameters(), lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
        y = rng.integers(0, 4, 8)
        value = loss.forward(model.forward(x), y)
        opt.zero_grad()
        model.backward(loss.backward())
        opt.step()
        topt.zero_grad()
        tvalue = tloss(tmodel(torch.tensor(x)), torch.tensor(y))
        tvalue.backward()
        topt.step()
        assert abs(value - tvalue.item()) < 1e-5
    tstate = tmodel.state_dict()
    assert set(tstate) == set(model.state_dict())
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, tstate[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    tmodel.eval()
    x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), tmodel(torch.tensor(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


# ---- float64 central-difference gradient checks of every layer ----------------------------------

def numeric_grad(f, x, h=1e-6):
    g = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        step = h * max(1.0, abs(x[idx]))
        xp, xm = x.copy(), x.copy()
        xp[idx] += step
        xm[idx] -= step
        g[idx] = (f(xp) - f(xm)) / (xp[idx] - xm[idx])
    return g


LAYER_CASES = [
    ("max", lambda: fn.MaxPool2d(2), (2, 2, 4, 4)),
    ("max-overlap-pad", lambda: fn.MaxPool2d(3, 2, 1), (1, 2, 5, 4)),
    ("avg", lambda: fn.AvgPool2d(3, 2, 1), (2, 2, 5, 4)),
    ("avg-no-pad-count", lambda: fn.AvgPool2d((3, 2), 1, (1, 1), count_include_pad=False),
     (1, 2, 4, 3)),
    ("global", lambda: fn.AdaptiveAvgPool2d(1), (2, 3, 3, 2)),
    ("bn1d", lambda: fn.BatchNorm1d(3, dtype=np.float64), (5, 3)),
    ("bn1d-ncl", lambda: fn.BatchNorm1d(2, dtype=np.float64), (3, 2, 4)),
    ("bn2d", lambda: fn.BatchNorm2d(3, dtype=np.float64), (2, 3, 2, 3)),
    ("bn2d-no-affine", lambda: fn.BatchNorm2d(2, affine=False, dtype=np.float64), (3, 2, 2, 2)),
    ("bn2d-eval", lambda: fn.BatchNorm2d(2, dtype=np.float64).eval(), (2, 2, 2, 2)),
    ("bn2d-no-running", lambda: fn.BatchNorm2d(2, track_running_stats=False,
                                               dtype=np.float64).eval(), (2, 2, 2, 2)),
    ("ln", lambda: fn.LayerNorm(5, dtype=np.float64), (4, 5)),
    ("ln-2d", lambda: fn.LayerNorm((2, 3), dtype=np.float64), (2, 2, 2, 3)),
    ("flatten-4d", lambda: fn.Flatten(), (2, 3, 2, 2)),
]


@pytest.mark.parametrize("name,make,shape", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_layer_gradients_central_differences(name, make, shape):
    rng = np.random.default_rng(0)
    layer = make()
    params = list(layer.parameters())
    for p in params:   # away from the initial 1 / 0 so weight and bias matter
        p[...] = rng.standard_normal(p.shape)
    if getattr(layer, "running_mean", None) is not None:
        layer.running_mean[...] = rng.standard_normal(layer.running_mean.shape)
        layer.running_var[...] = rng.uniform(0.5, 2, layer.running_var.shape)
    # distinct values at least 1e-3 apart: no max-pool tie flips under a 1e-6 step
    x = rng.permutation(np.arange(np.prod(shape))).reshape(shape) * 0.01 + \
        rng.uniform(0, 1e-3, shape)
    x = x.astype(np.float64)
    out = layer.forward(x)
    r = rng.standard_normal(out.shape)
    state = [None if b is None else b.copy() for b in
             (getattr(layer, "running_mean", None), getattr(layer, "running_var", None))]

    def f(xv):
        if state[0] is not None:   # a forward in train() updates the running statistics
            layer.running_mean[...], layer.running_var[...] = state
        return float(np.sum(layer.forward(xv) * r))

    f(x)
    layer.zero_grad()
    dx = layer.backward(r)
    grads = [p.grad.copy() for p in params]
    np.testing.assert_allclose(dx, numeric_grad(f, x), rtol=1e-6, atol=1e-8, err_msg="dx")
    for p, g in zip(params, grads):
        def fp(pv, p=p):
            old = p.copy()
            p[...] = pv
            try:
                return f(x)
            finally:
                p[...] = old
        np.testing.assert_allclose(g, numeric_grad(fp, np.array(p)), rtol=1e-6, atol=1e-8,
                                   err_msg="parameter gradient")


# ---- layers: running statistics, persistence, fit on 4-D data -----------------------------------

def test_batchnorm_running_statistics_train_and_eval():
    bn = fn.BatchNorm2d(2, momentum=0.5)
    x = images((4, 2, 3, 3), np.float32) * 2 + 3
    bn.forward(x)
    m = x.mean(axis=(0, 2, 3), dtype=np.float64)
    v = x.var(axis=(0, 2, 3), ddof=1, dtype=np.float64)
    np.testing.assert_allclose(bn.running_mean, 0.5 * m, rtol=1e-6)
    np.testing.assert_allclose(bn.running_var, 0.5 + 0.5 * v, rtol=1e-6)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    before = bn.running_mean.copy()
    y = bn.forward(x)
    np.testing.assert_array_equal(bn.running_mean, before)
    assert int(bn.num_batches_tracked) == 1
    want = (x - bn.running_mean[None, :, None, None]) / np.sqrt(
        bn.running_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def _cnn(seed=0, dtype=None):
    return fn.Sequential(fn.BatchNorm2d(1), fn.AvgPool2d(2, 1), fn.MaxPool2d(2), fn.Flatten(),
                         fn.Linear(9, 16), fn.BatchNorm1d(16), fn.ReLU(), fn.LayerNorm(16),
                         fn.Linear(16, 10), seed=seed, dtype=dtype)


def _digits():
    X, y = fn.datasets.load_digits(images=True)
    return X[:400], y[:400]


def test_fit_evaluate_predict_on_4d_images():
    X, y = _digits()
    assert X.shape == (400, 1, 8, 8) and X.dtype == np.float32
    model = _cnn()
    loss = fn.CrossEntropyLoss()
    history = fn.fit(model, loss, fn.Adam(model.parameters(), lr=1e-2), X[:300], y[:300],
                     epochs=8, batch_size=32, validation_data=(X[300:], y[300:]), seed=0,
                     verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    scores = fn.evaluate(model, loss, X[300:], y[300:])
    assert scores["accuracy"] > 0.6
    assert model.predict(X[300:]).shape == (100, 10)


def test_save_load_and_checkpoint_resume_bit_exact(tmp_path):
    X, y = _digits()
    loss = fn.CrossEntropyLoss()
    full = _cnn()
    opt = fn.SGD(full.parameters(), lr=0.05, momentum=0.9)
    fn.fit(full, loss, opt, X, y, epochs=4, batch_size=50, seed=3, verbose=0)

    part = _cnn()
    opt2 = fn.SGD(part.parameters(), lr=0.05, momentum=0.9)
    fn.fit(part, loss, opt2, X, y, epochs=2, batch_size=50, seed=3, verbose=0)
    path = tmp_path / "ck.safetensors"
    fn.save_checkpoint(path, part, opt2, epoch=2)
    resumed = _cnn(seed=99)
    opt3 = fn.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
    state = fn.load_checkpoint(path, resumed, opt3)
    fn.fit(resumed, loss, opt3, X, y, epochs=4, initial_epoch=state["epoch"], batch_size=50,
           seed=3, verbose=0)
    a, b = full.state_dict(), resumed.state_dict()
    assert "0.running_mean" in a and "5.num_batches_tracked" in a
    assert int(a["5.num_batches_tracked"]) == 4 * 8
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k

    fn.save(full, tmp_path / "m.safetensors")
    loaded = fn.load(tmp_path / "m.safetensors")
    assert isinstance(loaded[0], fn.BatchNorm2d) and isinstance(loaded[7], fn.LayerNorm)
    np.testing.assert_array_equal(loaded[0].running_var, full[0].running_var)
    assert loaded[5].num_batches_tracked.shape == ()
    np.testing.assert_array_equal(loaded.predict(X), full.predict(X))


def test_sequential_dtype_casts_running_statistics():
    model = _cnn(dtype=np.float64)
    assert model[0].running_mean.dtype == np.float64
    assert model[0].num_batches_tracked.dtype == np.int64
    X, _ = _digits()
    assert model.predict(X[:4].astype(np.float64)).dtype == np.float64


def test_flatten_after_4d_round_trips():
    x = images((2, 3, 4, 5), np.float32)
    f = fn.Flatten()
    y = f.forward(x)
    assert y.shape == (2, 60)
    np.testing.assert_array_equal(f.backward(y), x)


# ---- data sets ------------------------------------------------------------------------------------

def test_load_digits_as_images():
    X, y = fn.datasets.load_digits(images=True)
    flat, y2 = fn.datasets.load_digits()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    np.testing.assert_array_equal(X.reshape(1797, 64), flat)
    np.testing.assert_array_equal(y, y2)


@pytest.mark.skipif(not __import__("os").path.isdir(fn.datasets.FASHION_MNIST_DIR),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_load_fashion_mnist_from_the_debian_package():
    (xtr, ytr), (xte, yte) = fn.datasets.load_fashion_mnist()
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert 0.0 <= xtr.min() and xtr.max() <= 1.0 and xtr.max() > 0.99
    np.testing.assert_array_equal(np.bincount(ytr), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(yte), np.full(10, 1000))


def test_load_fashion_mnist_missing_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fn.datasets.load_fashion_mnist(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fn.datasets.load_fashion_mnist(tmp_path)          # a folder without the files


# ---- model builders and `fastnn train --model` ---------------------------------------------------

def test_model_builders_shapes():
    rng = np.random.default_rng(0)
    for build, shape in ((fn.models.lenet5, (2, 1, 28, 28)), (fn.models.digits_cnn, (2, 1, 8, 8)),
                         (fn.models.cifar_net, (2, 3, 32, 32))):
        model = build(seed=0)
        assert model.predict(rng.standard_normal(shape).astype(np.float32)).shape == (2, 10)


def test_cli_trains_the_digits_cnn(capsys, tmp_path):
    from fastnn import cli
    assert cli.main(["train", "--model", "cnn", "--epochs", "2", "--verbose", "0",
                     "--save", str(tmp_path / "cnn.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "digits (1x8x8 images)" in out and "test accuracy" in out
    loaded = fn.load(tmp_path / "cnn.safetensors", model=fn.models.digits_cnn())
    assert int(loaded[1].num_batches_tracked) > 0     # the running statistics were saved


def test_cli_lenet_without_fashion_mnist_names_the_package(tmp_path, capsys):
    from fastnn import cli
    assert cli.main(["train", "--model", "lenet", "--data", str(tmp_path / "absent"),
                     "--verbose", "0"]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err
