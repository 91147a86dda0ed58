"""GEMMs through cuBLAS on Numba device memory (CuPy's cuBLAS bindings; no copies).

Numba reaches neither the tensor cores nor cuBLAS, and a SIMT tiled GEMM written in Numba runs
far below cuBLAS. When CuPy is installed and a real GPU is in use, fastnn.cuda.ops hands the
product of each GEMM to cuBLAS (s/dgemm on the same device pointers, on the legacy default
stream that Numba launches on too, so the order of work is kept), and a Numba kernel applies
the epilogue (bias, activation, activation derivative, row sums) afterwards.

Backends (``fastnn.cuda.set_gemm_backend`` or the environment variable ``FASTNN_CUDA_GEMM``):
``"auto"`` (cuBLAS when available, else Numba), ``"cublas"`` (RuntimeError when unavailable),
``"numba"`` (always the Numba kernels; the CUDA simulator always uses them).

TF32: cuBLAS's default math mode computes float32 products in float32 (TF32 off), as
``torch.backends.cuda.matmul.allow_tf32 = False``; ``fastnn.cuda.set_tf32(True)`` switches the
handle to CUBLAS_TF32_TENSOR_OP_MATH (tensor cores, 10-bit mantissa inputs).

Row-major to column-major: a row-major (r, c) array with leading dimension ld is the
column-major (c, r) array with the same ld, so C = op(A) op(B) is computed as
C^T = op(B)^T op(A)^T (the standard trick; cuBLAS documentation, "cublas<t>gemm").
"""
import os

import numpy as np

_BACKENDS = ("auto", "cublas", "numba")
_state = {"backend": None, "tf32": False, "lib": None, "why": None}

_OP_N, _OP_T = 0, 1                     # cublasOperation_t
_DEFAULT_MATH, _TF32_MATH = 0, 3        # cublasMath_t
_POINTER_MODE_HOST = 0


def _load():
    """(cupy, cublas module) or None, with the reason kept in _state['why']."""
    if _state["lib"] is None:
        from . import simulator
        if simulator():
            _state["lib"], _state["why"] = False, "the CUDA simulator is in use"
        else:
            try:
                import cupy
                from cupy_backends.cuda.libs import cublas
                cupy.cuda.device.get_cublas_handle()
                _state["lib"] = (cupy, cublas)
            except Exception as e:  # no CuPy, or a CuPy that cannot reach the GPU
                _state["lib"], _state["why"] = False, f"{type(e).__name__}: {e}"[:300]
    return _state["lib"] or None


def set_backend(name):
    """'auto', 'cublas' or 'numba'. RuntimeError for 'cublas' when cuBLAS cannot be used."""
    if name not in _BACKENDS:
        raise ValueError(f"set_gemm_backend: argument 'name' must be one of {_BACKENDS}, "
                         f"got {name!r}")
    if name == "cublas" and _load() is None:
        raise RuntimeError(f"set_gemm_backend: cuBLAS cannot be used ({_state['why']}); "
                           f"install CuPy for your CUDA version (pip install cupy-cuda12x "
                           f"or cupy-cuda13x) and run on a GPU")
    _state["backend"] = name


def backend():
    """The backend in use: 'cublas' or 'numba'."""
    if _state["backend"] is None:
        name = os.environ.get("FASTNN_CUDA_GEMM", "auto")
        if name not in _BACKENDS:
            raise ValueError(f"FASTNN_CUDA_GEMM must be one of {_BACKENDS}, got {name!r}")
        set_backend(name)
    if _state["backend"] == "numba":
        return "numba"
    return "cublas" if _load() is not None else "numba"


def set_tf32(enabled):
    """TF32 tensor-core math for float32 products through cuBLAS (off by default)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_tf32: argument 'enabled' must be a bool, got {enabled!r}")
    _state["tf32"] = enabled


def tf32():
    return _state["tf32"]


def _ld(a):
    """The leading dimension of a row-major 2-D device array (unit stride along rows), or None
    when cuBLAS cannot read it in place (negative or non-unit column strides)."""
    rows, cols = a.shape
    item = a.dtype.itemsize
    s0, s1 = a.strides
    if cols > 1 and s1 != item:
        return None
    if rows <= 1:
        return max(cols, 1)
    if s0 <= 0 or s0 % item or s0 // item < max(cols, 1):
        return None
    return s0 // item


def _ptr(a):
    return a.__cuda_array_interface__["data"][0]


def gemm(A, ta, B, tb, C, alpha, beta):
    """C = alpha op(A) op(B) + beta C through cuBLAS (beta == 0 never reads C). A, B, C are
    Numba device arrays of one float dtype; op(X) = X.T when tX. Returns False, doing
    nothing, when the strides do not suit cuBLAS or K is 0 (the caller falls back)."""
    lib = _load()
    lda, ldb, ldc = _ld(A), _ld(B), _ld(C)
    if lib is None or None in (lda, ldb, ldc):
        return False
    m, n = C.shape
    k = A.shape[0] if ta else A.shape[1]
    if k == 0 or max(m, n, k, lda, ldb, ldc) >= 2 ** 31:
        return False
    cupy, cublas = lib
    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setPointerMode(handle, _POINTER_MODE_HOST)
    single = A.dtype == np.float32
    cublas.setMathMode(handle, _TF32_MATH if single and _state["tf32"] else _DEFAULT_MATH)
    al = np.array(alpha, A.dtype)
    be = np.array(beta, A.dtype)
    fn = cublas.sgemm if single else cublas.dgemm
    # C^T (n, m) = op(B)^T op(A)^T; stored row-major X is X^T column-major, so op(B)^T needs
    # no transpose when op(B) = B (tb False)
    fn(handle, _OP_T if tb else _OP_N, _OP_T if ta else _OP_N, n, m, k, al.ctypes.data,
       _ptr(B), ldb, _ptr(A), lda, be.ctypes.data, _ptr(C), ldc)
    return True
