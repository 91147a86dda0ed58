"""Where a fastnn.cuda MLP step spends host time, cuBLAS TF32 entry points, and whether Numba
launches can be captured into a CUDA graph through CuPy's stream capture, on a GPU.
Run: python dev/gpu_profile.py (prints tables; about 30 s)."""
import cProfile
import io
import pstats
import time

import numpy as np

import fastnn.cuda as fc
from fastnn.cuda import ops
from fastnn.cuda.mlp import MLP
from numba import cuda


def per_call(f, n=500):
    f(); cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        f()
    cuda.synchronize()
    return 1e6 * (time.perf_counter() - t) / n


rng = np.random.default_rng(0)
x = fc.to_device(rng.standard_normal((256, 784)).astype(np.float32))
lab = fc.to_device(rng.integers(0, 10, 256))
for backend in ("cublas", "numba"):
    fc.set_gemm_backend(backend)
    net = MLP([784, 256, 256, 10], seed=0)
    print(f"{backend}: MLP step {per_call(lambda: net.train_step(x, lab, lr=0.01), 200):.0f} us")
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(100):
        net.train_step(x, lab, lr=0.01)
    cuda.synchronize()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
    print(s.getvalue()[-4500:])

small = fc.to_device(np.ones(1024, np.float32))
out = fc.to_device(np.ones(1024, np.float32))
print(f"ops.relu 1024: {per_call(lambda: ops.relu(small, out=out)):.1f} us")
from fastnn.cuda import _kernels as K
k = K.kernels(np.float32).act_forward
print(f"bare act_forward launch: {per_call(lambda: k[4, 256](out, small, 1, np.float32(0), np.float32(0))):.1f} us")
a = fc.to_device(np.ones((256, 784), np.float32)); w = fc.to_device(np.ones((256, 784), np.float32))
c = fc.to_device(np.ones((256, 256), np.float32))
fc.set_gemm_backend("cublas")
print(f"ops.matmul 256x784x256 nt cublas: {per_call(lambda: ops.matmul(a, w, out=c, trans_b=True)):.1f} us")
fc.set_gemm_backend("numba")
print(f"ops.matmul 256x784x256 nt numba: {per_call(lambda: ops.matmul(a, w, out=c, trans_b=True)):.1f} us")
fc.set_gemm_backend("auto")

# TF32: sgemm with the TF32 math mode vs gemmEx with CUBLAS_COMPUTE_32F_FAST_TF32, vs torch
import cupy as cp
import torch
from cupy_backends.cuda.libs import cublas
n = 4096
A = cp.random.standard_normal((n, n), dtype=cp.float32)
B = cp.random.standard_normal((n, n), dtype=cp.float32)
C = cp.empty((n, n), cp.float32)
h = cp.cuda.device.get_cublas_handle()
one, zero = np.array(1, np.float32), np.array(0, np.float32)


def ev(f, reps=10):
    f(); cp.cuda.Device().synchronize()
    ts = []
    for _ in range(7):
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record()
        for _ in range(reps):
            f()
        e.record(); e.synchronize()
        ts.append(cp.cuda.get_elapsed_time(s, e) / reps)
    return 2 * n ** 3 / np.median(ts) / 1e9


def sgemm_tf32():
    cublas.setMathMode(h, 3)
    cublas.sgemm(h, 0, 0, n, n, n, one.ctypes.data, B.data.ptr, n, A.data.ptr, n,
                 zero.ctypes.data, C.data.ptr, n)


def gemmex(algo):
    def f():
        cublas.setMathMode(h, 0)
        cublas.gemmEx(h, 0, 0, n, n, n, one.ctypes.data, B.data.ptr, 0, n, A.data.ptr, 0, n,
                      zero.ctypes.data, C.data.ptr, 0, n, 77, algo)
    return f


ta, tb = torch.as_tensor(A, device="cuda"), torch.as_tensor(B, device="cuda")
torch.backends.cuda.matmul.allow_tf32 = True
for name, f in [("sgemm TF32 math mode", sgemm_tf32), ("gemmEx FAST_TF32 default", gemmex(-1)),
                ("gemmEx FAST_TF32 tensor-op", gemmex(99)),
                ("torch TF32", lambda: torch.matmul(ta, tb)), ("sgemm TF32 math mode", sgemm_tf32)]:
    try:
        print(f"{name}: {ev(f):.1f} TFLOP/s")
    except Exception as e:
        print(f"{name}: {type(e).__name__}: {e}")


# Numba launches captured into a CUDA graph through CuPy's stream capture (what a per-step
# graph would need): launch on an external stream wrapping CuPy's, capture, replay
try:
    s = cp.cuda.Stream(non_blocking=True)
    ns = cuda.external_stream(s.ptr)
    with s:
        s.begin_capture()
        for _ in range(10):
            k[4, 256, ns](out, small, 1, np.float32(0), np.float32(0))
        g = s.end_capture()
    g.launch(s)
    s.synchronize()
    print("graph capture of numba launches: OK")
except Exception as e:
    print("graph capture:", type(e).__name__, str(e)[:300])
