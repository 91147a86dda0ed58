"""Probe: CuPy's cuBLAS on Numba device memory (no copies), timed against torch.matmul."""
import time
import numpy as np
from numba import cuda
import fastnn.cuda  # noqa: F401  (NumPy compatibility fix first)
import cupy as cp
import torch

n = 4096
rng = np.random.default_rng(0)
a = cuda.to_device(rng.standard_normal((n, n), dtype=np.float32))
b = cuda.to_device(rng.standard_normal((n, n), dtype=np.float32))
c = cuda.device_array((n, n), np.float32)
A, B, C = cp.asarray(a), cp.asarray(b), cp.asarray(c)
assert A.data.ptr == a.device_ctypes_pointer.value, "cupy copied"
print("cupy", cp.__version__, "cuda runtime", cp.cuda.runtime.runtimeGetVersion())
print("numba default stream", cuda.default_stream(), "cupy stream", cp.cuda.get_current_stream())
cp.matmul(A, B, out=C); cp.cuda.Device().synchronize()
ref = a.copy_to_host().astype(np.float64) @ b.copy_to_host().astype(np.float64)
err = np.linalg.norm(c.copy_to_host() - ref) / np.linalg.norm(ref)
print(f"cupy matmul rel err {err:.2e}")
ta, tb = torch.as_tensor(A, device="cuda"), torch.as_tensor(B, device="cuda")
def bench(f, reps=20):
    f(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(7):
        s.record()
        for _ in range(reps): f()
        e.record(); e.synchronize(); out.append(s.elapsed_time(e) / reps)
    return np.median(out)
for tf32 in (False, True):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    cp_mode = "default"
    t_cp = bench(lambda: cp.matmul(A, B, out=C))
    t_t = bench(lambda: torch.matmul(ta, tb))
    print(f"tf32={tf32}: cupy {2*n**3/t_cp/1e9:.1f} TFLOP/s torch {2*n**3/t_t/1e9:.1f} TFLOP/s ratio {t_t/t_cp:.3f}")
# cuBLAS TF32 through CuPy: CUPY_TF32 env / cublas math mode
try:
    from cupy_backends.cuda.libs import cublas
    h = cp.cuda.device.get_cublas_handle()
    print("cublas math mode", cublas.getMathMode(h))
except Exception as e:
    print("math mode probe:", type(e).__name__, e)
# launch overhead: numba trivial kernel vs cupy elementwise
@cuda.jit
def k(x):
    i = cuda.grid(1)
    if i < x.size: x[i] += 1
x = cuda.device_array(1024, np.float32)
k[4, 256](x); cuda.synchronize()
t = time.perf_counter()
for _ in range(2000): k[4, 256](x)
cuda.synchronize(); print(f"numba launch {1e6*(time.perf_counter()-t)/2000:.1f} us")
X = cp.asarray(x)
t = time.perf_counter()
for _ in range(2000): X += 1
cp.cuda.Device().synchronize(); print(f"cupy elementwise launch {1e6*(time.perf_counter()-t)/2000:.1f} us")
small = cp.ones((256, 784), cp.float32); w = cp.ones((256, 784), cp.float32); o = cp.empty((256, 256), cp.float32)
cp.matmul(small, w.T, out=o)
t = time.perf_counter()
for _ in range(2000): cp.matmul(small, w.T, out=o)
cp.cuda.Device().synchronize(); print(f"cupy small matmul call {1e6*(time.perf_counter()-t)/2000:.1f} us")
# graph capture of numba launches through cupy's stream capture
try:
    s = cp.cuda.Stream(non_blocking=True)
    ns = cuda.external_stream(s.ptr)
    with s:
        s.begin_capture()
        for _ in range(10): k[4, 256, ns](x)
        g = s.end_capture()
    g.launch(s); s.synchronize(); print("graph capture of numba launches: OK")
except Exception as e:
    print("graph capture:", type(e).__name__, str(e)[:300])
