"""GEMM against the float64 oracle: every layout, alpha/beta, shapes 0..67 around the
micro-kernel's MR/NR, shapes across the cache blocks, every kernel table, both dtypes."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import ops

EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}


def operand(rng, rows, cols, dtype, trans, pad):
    """A (rows, cols) operand stored row-major with `pad` extra columns, or as the transpose
    of a (cols, rows) array (x.T) with padding: the layouts matmul must read without a copy."""
    if trans:
        base = rng.standard_normal((cols, rows + pad)).astype(dtype)
        return base[:, :rows].T
    base = rng.standard_normal((rows, cols + pad)).astype(dtype)
    return base[:, :cols]


def check(a, b, c0, alpha, beta, dtype, got):
    """|got - oracle| <= 2 K eps (|alpha| |A||B| + |beta| |C|) + tiny, element-wise."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = alpha * (a64 @ b64)
    bound = abs(alpha) * (np.abs(a64) @ np.abs(b64))
    if beta != 0:
        want = want + beta * c0.astype(np.float64)
        bound = bound + abs(beta) * np.abs(c0.astype(np.float64))
    k = a.shape[1]
    tol = 2 * (k + 2) * EPS[dtype] * bound + np.finfo(dtype).tiny
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= tol), f"max excess {np.max(err - tol)} at {np.unravel_index(np.argmax(err - tol), err.shape)}"


@settings(max_examples=60)
@given(m=st.integers(0, 67), n=st.integers(0, 67), k=st.integers(0, 67),
       ta=st.booleans(), tb=st.booleans(), pad=st.integers(0, 3),
       alpha=st.sampled_from([1.0, -0.5, 2.0, 0.0]), beta=st.sampled_from([0.0, 1.0, -1.5]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**31))
def test_small_shapes_every_layout(each_arch, m, n, k, ta, tb, pad, alpha, beta, dtype, seed):
    rng = np.random.default_rng(seed)
    a = operand(rng, m, k, dtype, ta, pad)
    b = operand(rng, k, n, dtype, tb, pad)
    cbase = rng.standard_normal((m, n + pad)).astype(dtype)
    c = cbase[:, :n]                      # row-strided out
    c0 = c.copy()
    pad0 = cbase[:, n:].copy()
    if beta == 0:
        c[...] = np.nan                   # beta == 0 must not read out
    got = ops.matmul(a, b, out=c, alpha=alpha, beta=beta)
    assert got is c
    check(a, b, c0, alpha, beta, dtype, got)
    np.testing.assert_array_equal(cbase[:, n:], pad0)   # columns beyond out untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", [(300, 700, 500), (1, 5000, 10), (200, 33, 1000), (129, 257, 385),
                                   (5, 4500, 3), (700, 3, 900)])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_shapes_across_cache_blocks(each_arch, dtype, m, n, k, ta, tb):
    rng = np.random.default_rng(m * 7 + n * 3 + k)
    a = operand(rng, m, k, dtype, ta, 1)
    b = operand(rng, k, n, dtype, tb, 2)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    got = ops.matmul(a, b, out=c0.copy(), alpha=0.75, beta=0.5)
    check(a, b, c0, 0.75, 0.5, dtype, got)


def test_reference_kernel_is_an_oracle_too():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 19))
    b = rng.standard_normal((19, 41))
    np.testing.assert_allclose(ops.matmul_reference(a, b), a @ b, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ops.matmul(a.T.copy().T, b), ops.matmul_reference(a, b),
                               rtol=1e-13, atol=1e-13)


def test_tables_agree_with_each_other():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((150, 300)).astype(np.float32)
    b = rng.standard_normal((300, 90)).astype(np.float32)
    before = fastnn.arch()
    try:
        outs = {}
        for name in fastnn.available_archs():
            fastnn.set_arch(name)
            outs[name] = ops.matmul(a, b)
    finally:
        fastnn.set_arch(before)
    for name, out in outs.items():
        check(a, b, None, 1.0, 0.0, np.float32, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_and_degenerate(dtype):
    z = np.zeros
    assert ops.matmul(z((0, 5), dtype), z((5, 3), dtype)).shape == (0, 3)
    assert ops.matmul(z((4, 5), dtype), z((5, 0), dtype)).shape == (4, 0)
    # k == 0: the product is zero, out = beta * out
    out = np.full((2, 3), 4.0, dtype)
    ops.matmul(z((2, 0), dtype), z((0, 3), dtype), out=out, beta=0.5)
    np.testing.assert_array_equal(out, np.full((2, 3), 2.0))
    out[...] = np.nan
    ops.matmul(z((2, 0), dtype), z((0, 3), dtype), out=out)
    np.testing.assert_array_equal(out, 0)
    # alpha == 0 with beta == 0 clears even NaN (BLAS convention: out is not read)
    out[...] = np.nan
    ops.matmul(np.ones((2, 4), dtype), np.ones((4, 3), dtype), out=out, alpha=0.0)
    np.testing.assert_array_equal(out, 0)
    # 1 x 1 and vectors as 2-D
    np.testing.assert_allclose(ops.matmul(np.ones((1, 7), dtype), np.ones((7, 1), dtype)), [[7]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_propagate(each_arch, dtype):
    a = np.ones((20, 30), dtype)
    b = np.ones((30, 40), dtype)
    a[3, 7] = np.nan
    b[5, 11] = np.inf
    c = ops.matmul(a, b)
    assert np.all(np.isnan(c[3]))
    others = np.delete(np.arange(20), 3)
    assert np.all(np.isinf(c[others, 11]))
    assert np.all(np.isfinite(np.delete(c[others], 11, axis=1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True)])
def test_bit_identical_for_one_and_two_threads(threads, dtype, ta, tb):
    rng = np.random.default_rng(5)
    a = operand(rng, 500, 700, dtype, ta, 0)
    b = operand(rng, 700, 600, dtype, tb, 0)
    threads(1)
    one = ops.matmul(a, b)
    threads(2)
    two = ops.matmul(a, b)
    assert one.tobytes() == two.tobytes()


def test_inputs_never_modified_and_no_copy_needed_for_transposes():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 48)).astype(np.float32)
    b = rng.standard_normal((64, 32)).astype(np.float32)
    a0, b0 = a.copy(), b.copy()
    got = ops.matmul(a.T, b)            # the weight-gradient layout: x.T @ dy
    check(a.T, b, None, 1.0, 0.0, np.float32, got)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


# ---- fused epilogues --------------------------------------------------------------------------

import reference as ref  # noqa: E402  (tests/ is on sys.path under pytest's rootdir conftest)

ACTIVATIONS = [("identity", lambda z: z, None), ("relu", ref.relu, ref.relu_backward),
               (("leaky_relu", 0.2), lambda z: ref.leaky_relu(z, 0.2),
                lambda d, z: ref.leaky_relu_backward(d, z, 0.2)),
               ("sigmoid", ref.sigmoid, ref.sigmoid_backward), ("tanh", ref.tanh, ref.tanh_backward),
               ("gelu", ref.gelu, ref.gelu_backward),
               ("gelu_tanh", lambda z: ref.gelu(z, "tanh"), lambda d, z: ref.gelu_backward(d, z, "tanh")),
               ("silu", ref.silu, ref.silu_backward),
               (("softplus", 2.0, 5.0), lambda z: ref.softplus(z, 2.0, 5.0),
                lambda d, z: ref.softplus_backward(d, z, 2.0, 5.0))]
ACT_IDS = [a[0] if isinstance(a[0], str) else a[0][0] for a in ACTIVATIONS]


@pytest.mark.parametrize("act,fwd,bwd", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# (m, k, n): full tiles, edge tiles, the transposed path for small n, k == 0, blocks of k
@pytest.mark.parametrize("m,k,n", [(64, 96, 64), (37, 50, 45), (130, 40, 3), (5, 0, 7), (20, 900, 33)])
def test_matmul_bias_act(each_arch, act, fwd, bwd, dtype, m, k, n):
    rng = np.random.default_rng(m + k + n)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype) / max(k, 1) ** 0.5
    b = rng.standard_normal(n).astype(dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    for bias, beta in [(b, 0.0), (None, 0.5)]:
        out = c0.copy()
        got = ops.matmul_bias_act(x, w.T, bias, act, out=out, beta=beta)
        z = ref.matmul(x, w.T, beta=beta, c=c0) + (0 if bias is None else b.astype(np.float64))
        want = fwd(z)
        tol = 1e-12 if dtype == np.float64 else 2e-5
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * (1 + np.abs(z).max()))


@pytest.mark.parametrize("act,fwd,bwd", ACTIVATIONS[1:], ids=ACT_IDS[1:])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", [(64, 96, 64), (37, 50, 45), (130, 40, 3), (20, 900, 33)])
def test_matmul_act_backward(each_arch, act, fwd, bwd, dtype, m, k, n):
    rng = np.random.default_rng(m * k + n)
    dz = rng.standard_normal((m, k)).astype(dtype)        # gradient of the next layer's output
    w = rng.standard_normal((k, n)).astype(dtype) / k ** 0.5  # next layer's weight (out, in)
    pre = rng.standard_normal((m, n)).astype(dtype)        # this layer's pre-activation
    got = ops.matmul_act_backward(dz, w, pre, act)
    want = bwd(ref.matmul(dz, w), pre)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * (1 + np.abs(want).max()))


def test_fused_equals_unfused_bits_for_relu():
    """Same products, same rounding: the fused ReLU forward is the GEMM then bias then ReLU."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((64, 200)).astype(np.float32)
    w = rng.standard_normal((96, 200)).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32)
    fused = ops.matmul_bias_act(x, w.T, b, "relu")
    sep = ops.relu(ops.bias_add(ops.matmul(x, w.T), b))
    assert fused.tobytes() == sep.tobytes()


def test_fused_bad_input():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="'activation'.*'swish'"):
        ops.matmul_bias_act(x, x.T, None, "swish")
    with pytest.raises(ValueError, match=r"'bias' must have shape \(4,\), got \(3,\)"):
        ops.matmul_bias_act(x, x.T, np.ones(3, np.float32), "relu")
    with pytest.raises(ValueError, match=r"'x' must have shape \(4, 4\)"):
        ops.matmul_act_backward(x, x.T, np.ones((4, 3), np.float32), "relu")
    out = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="'out' overlaps input 'x'"):
        ops.matmul_act_backward(x, x.T, out, "relu", out=out)


# ---- the few-row path: M <= 2 MR (or N, through C^T) with B read in place ------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# (m, k, n): 2 MR rows or less; up to 4 MR with k >= 32 and a B of <= 1 MiB; blocks of k
@pytest.mark.parametrize("m,k,n", [(10, 70, 75), (16, 33, 64), (3, 130, 40), (7, 5, 200),
                                   (30, 40, 64), (24, 900, 75), (12, 1000, 40)])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("swap", [False, True], ids=["c", "cT"])
def test_few_row_path_with_epilogues(each_arch, dtype, m, k, n, ta, swap):
    """Few rows of C with unpacked B, plus the C^T form (few columns, a.T @ b with a strided
    C), with the forward and backward epilogues applied tile by tile."""
    if swap:
        m, n = 5 * n, m
    rng = np.random.default_rng(m * n + k)
    a = operand(rng, m, k, dtype, ta, 0)
    b = rng.standard_normal((k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for act, fwd in [("identity", lambda z: z), ("relu", ref.relu), ("sigmoid", ref.sigmoid)]:
        for bv, beta in [(bias, 0.0), (None, 0.5)]:
            got = ops.matmul_bias_act(a, b, bv, act, out=c0.copy(), beta=beta)
            z = ref.matmul(a, b, beta=beta, c=c0) + (0 if bv is None else bias.astype(np.float64))
            np.testing.assert_allclose(got, fwd(z), rtol=tol, atol=tol * (1 + np.abs(z).max()))
    pre = rng.standard_normal((m, n)).astype(dtype)
    for act, bwd in [("relu", ref.relu_backward), ("tanh", ref.tanh_backward)]:
        got = ops.matmul_act_backward(a, b, pre, act)
        want = bwd(ref.matmul(a, b), pre)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * (1 + np.abs(want).max()))


@pytest.mark.parametrize("ta", [False, True])
def test_few_row_path_bit_identical_for_one_and_two_threads(threads, ta):
    rng = np.random.default_rng(11)
    a = operand(rng, 10, 3000, np.float32, ta, 0)
    b = rng.standard_normal((3000, 2000)).astype(np.float32)
    threads(1)
    one = ops.matmul(a, b)
    threads(2)
    two = ops.matmul(a, b)
    assert one.tobytes() == two.tobytes()
    check(a, b, None, 1.0, 0.0, np.float32, one)


def test_gemm_blocking_fits_the_micro_tile():
    """The blocking in use (fitted to the caches at load): MC a multiple of MR, NC of NR."""
    from fastnn._kernels import gemm_blocking
    b = gemm_blocking()
    for dt in ("float32", "float64"):
        mr, nr, mc, kc, nc = b[dt]
        assert mr > 0 and nr > 0 and kc > 0
        assert mc % mr == 0 and nc % nr == 0, (dt, b[dt])


def test_gemm_blocking_override_gives_the_same_products():
    """FASTNN_GEMM_BLOCKING="MC,KC,NC" (rounded to the micro-tile) on every compiled table, with
    blocks far smaller than any tuned one (a 13-deep k block, one NR-wide B panel): the
    driver's edges everywhere, and the product still agrees with the float64 oracle."""
    import os
    import subprocess
    import sys
    code = r'''
import numpy as np, fastnn
from fastnn._kernels import gemm_blocking
mr, nr, mc, kc, nc = gemm_blocking()["float32"]
assert (mc, kc, nc) == (max(mr, 7 // mr * mr), 13, max(nr, 40 // nr * nr)), gemm_blocking()
rng = np.random.default_rng(0)
for m, k, n in [(37, 50, 71), (5, 29, 3), (64, 100, 130)]:
    for ta in (0, 1):
        for tb in (0, 1):
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
            A, B = (a.T if ta else a), (b.T if tb else b)
            got = fastnn.ops.matmul(A, B)
            ref = A.astype(np.float64) @ B.astype(np.float64)
            bound = 2 * k * np.finfo(np.float32).eps * (np.abs(A) @ np.abs(B))
            assert np.all(np.abs(got - ref) <= bound), (m, k, n, ta, tb)
print("ok", fastnn.arch())
'''
    for arch in fastnn.available_archs():
        if arch == "generic":
            continue
        env = dict(os.environ, FASTNN_GEMM_BLOCKING="7,13,40", FASTNN_ARCH=arch)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-3000:]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n", [(128, 784, 256), (37, 50, 45), (203, 900, 70), (61, 33, 129),
                                   (32, 784, 256), (40, 300, 203), (19, 900, 64),
                                   (45, 1024, 70), (130, 1024, 33)])
@pytest.mark.parametrize("tb", [False, True])
def test_row_major_a_read_in_place_gives_the_packed_bits(each_arch, dtype, m, k, n, tb):
    """A row-major A (rows not a multiple of 4 KiB apart) is read in place by the micro-kernels
    (gemm.inc, arows), a column-major one is packed first: the same products in the same order,
    so the same bits, across k blocks, the last rows of a block, partial column panels and the
    fused bias + ReLU (rows 4 KiB apart: the transposing A pack against the generic one). With
    tb and n >= 3 m, x @ W.T runs as C^T = W @ x^T (W read in place,
    C^T's tiles stored through registers): the same bits again."""
    rng = np.random.default_rng(m + n)
    a = operand(rng, m, k, dtype, False, 0 if k == 1024 else 3)   # 1024: rows 4 KiB apart, packed
    b = operand(rng, k, n, dtype, tb, 0)
    bias = rng.standard_normal(n).astype(dtype)
    a_packed = np.asfortranarray(a)
    assert ops.matmul(a, b).tobytes() == ops.matmul(a_packed, b).tobytes()
    assert (ops.matmul_bias_act(a, b, bias, "relu").tobytes()
            == ops.matmul_bias_act(a_packed, b, bias, "relu").tobytes())
