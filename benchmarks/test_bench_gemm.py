"""pytest-benchmark suite: GEMM, fastnn against numpy, single thread.

  pytest benchmarks/test_bench_gemm.py --benchmark-group-by=param:shape

For the interleaved side-by-side comparison with ratios, use `fastnn bench-gemm`."""
import numpy as np
import pytest

import fastnn

SQUARES = [(n, n, n) for n in (256, 512, 1024, 2048)]
# (M, K, N, layout) of an MLP's forward (nn), input gradient (nt) and weight gradient (tn)
TRAINING = [(32, 784, 256, "nt"), (128, 784, 256, "nt"), (256, 1024, 1024, "nt"),
            (128, 256, 256, "nt"), (128, 256, 10, "nt"), (128, 256, 784, "nn"),
            (256, 128, 784, "tn"), (1024, 256, 1024, "tn")]
CASES = [(m, k, n, "nn") for m, k, n in SQUARES] + TRAINING


def operands(m, k, n, layout, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if layout[0] == "t" else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if layout[1] == "t" else (k, n)).astype(dtype)
    return (a.T if layout[0] == "t" else a), (b.T if layout[1] == "t" else b)


@pytest.mark.parametrize("lib", ["fastnn", "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m,k,n,layout", CASES, ids=[f"{m}x{k}x{n}-{l}" for m, k, n, l in CASES])
def test_gemm(benchmark, lib, dtype, m, k, n, layout):
    a, b = operands(m, k, n, layout, dtype)
    out = np.empty((m, n), dtype)
    f = (lambda: fastnn.ops.matmul(a, b, out=out)) if lib == "fastnn" else \
        (lambda: np.matmul(a, b, out=out))
    benchmark.group = f"gemm {dtype} {m}x{k}x{n}-{layout}"
    benchmark.extra_info["gflop"] = 2 * m * n * k / 1e9
    benchmark(f)


@pytest.mark.parametrize("m,k,n,layout", CASES, ids=[f"{m}x{k}x{n}-{l}" for m, k, n, l in CASES])
def test_gemm_bf16(benchmark, m, k, n, layout):
    """matmul_bf16 (float32 arrays, products in bfloat16); compare with test_gemm's float32."""
    a, b = operands(m, k, n, layout, "float32")
    out = np.empty((m, n), np.float32)
    benchmark.group = f"gemm bfloat16 {m}x{k}x{n}-{layout}"
    benchmark.extra_info["gflop"] = 2 * m * n * k / 1e9
    benchmark.extra_info["native"] = fastnn.bf16_native()
    benchmark(lambda: fastnn.ops.matmul_bf16(a, b, out=out))
