"""matmul_bf16: float32 operands rounded to bfloat16 (nearest even), products summed in
float32; native (AVX512-BF16) and emulated paths against a float64 oracle on the rounded
operands."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastnn
from fastnn import ops


def to_bf16(x):
    """float32 -> the float32 value of its bfloat16 (round to nearest even; NaN kept)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    out = r.view(np.float32).reshape(np.shape(x))
    return np.where(np.isnan(x), np.float32(np.nan), out)


@pytest.fixture(params=["native", "emulated"])
def path(request):
    """The native path where this CPU has it (avx512 table), and the emulated one (avx2)."""
    before = fastnn.arch()
    if request.param == "native":
        if "avx512" not in fastnn.available_archs():
            pytest.skip("no avx512 table on this CPU")
        fastnn.set_arch("avx512")
    else:
        fastnn.set_arch(fastnn.available_archs()[0])   # generic: never native
        assert not fastnn.bf16_native()
    yield request.param
    fastnn.set_arch(before)


def operand(rng, rows, cols, trans):
    if trans:
        return rng.standard_normal((cols, rows)).astype(np.float32).T
    return rng.standard_normal((rows, cols)).astype(np.float32)


def check(a, b, c0, alpha, beta, got):
    a64, b64 = to_bf16(a).astype(np.float64), to_bf16(b).astype(np.float64)
    want = alpha * (a64 @ b64)
    bound = abs(alpha) * (np.abs(a64) @ np.abs(b64))
    if beta != 0:
        want = want + beta * c0.astype(np.float64)
        bound = bound + abs(beta) * np.abs(c0.astype(np.float64))
    tol = 2 * (a.shape[1] + 2) * np.finfo(np.float32).eps * bound + 1e-30
    assert np.all(np.abs(got - want) <= tol), np.max(np.abs(got - want) - tol)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(0, 45), n=st.integers(0, 70), k=st.integers(0, 70), ta=st.booleans(),
       tb=st.booleans(), alpha=st.sampled_from([1.0, -0.5]), beta=st.sampled_from([0.0, 1.0, 0.5]),
       seed=st.integers(0, 2**16))
def test_small_shapes_every_layout(path, m, n, k, ta, tb, alpha, beta, seed):
    rng = np.random.default_rng(seed)
    a, b = operand(rng, m, k, ta), operand(rng, k, n, tb)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    got = ops.matmul_bf16(a, b, out=c0.copy() if beta else None, alpha=alpha, beta=beta)
    check(a, b, c0, alpha, beta, got)


@pytest.mark.parametrize("m,k,n", [(300, 1100, 200), (161, 513, 33), (8, 2, 32), (1, 3, 1)])
def test_shapes_across_blocks(path, m, k, n):
    rng = np.random.default_rng(m + k + n)
    a, b = operand(rng, m, k, False), operand(rng, k, n, True)
    check(a, b, None, 1.0, 0.0, ops.matmul_bf16(a, b))


def test_rounding_is_to_nearest_even(path):
    one = np.ones((1, 1), np.float32)
    for x, want in [(1 + 2**-8, 1.0),                  # halfway, to the even 1.0
                    (1 + 3 * 2**-8, 1 + 2**-6),        # halfway, to the even 1 + 2^-6
                    (1 + 2**-8 + 2**-20, 1 + 2**-7),   # above halfway: up
                    (-(1 + 2**-8), -1.0)]:
        got = ops.matmul_bf16(np.full((1, 1), x, np.float32), one)
        assert got[0, 0] == np.float32(want), (x, got[0, 0])


def test_exact_for_small_integers(path):
    """Integers of bf16 range: every product and sum is exact in float32."""
    rng = np.random.default_rng(1)
    a = rng.integers(-8, 9, (70, 130)).astype(np.float32)
    b = rng.integers(-8, 9, (130, 90)).astype(np.float32)
    np.testing.assert_array_equal(ops.matmul_bf16(a, b), (a.astype(np.float64) @ b).astype(np.float32))


def test_nan_and_inf_propagate(path):
    a = np.ones((20, 40), np.float32)
    b = np.ones((40, 50), np.float32)
    a[3, 7] = np.nan
    b[9, 11] = np.inf
    c = ops.matmul_bf16(a, b)
    assert np.all(np.isnan(c[3]))
    assert np.all(np.isinf(np.delete(c[:, 11], 3)))


def test_bit_identical_for_one_and_two_threads(path, threads):
    rng = np.random.default_rng(2)
    a, b = operand(rng, 400, 700, False), operand(rng, 700, 500, False)
    threads(1)
    one = ops.matmul_bf16(a, b)
    threads(2)
    assert ops.matmul_bf16(a, b).tobytes() == one.tobytes()


def test_bad_input():
    a64 = np.ones((3, 4))
    with pytest.raises(TypeError, match="matmul_bf16: a and b must be float32"):
        ops.matmul_bf16(a64, a64.T)
    with pytest.raises(ValueError, match="matmul_bf16"):
        ops.matmul_bf16(np.ones((3, 4), np.float32), np.ones((5, 2), np.float32))
