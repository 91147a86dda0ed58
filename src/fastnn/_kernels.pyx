# fastnn._kernels: validate numpy arguments, release the GIL, call the C kernel, and turn a
# status code into an exception. Every public function here is re-exported by fastnn.ops.
#
# Rules for arguments (documented in fastnn.ops):
#  - arrays are float32 or float64 in native byte order and aligned to their item size, all
#    of one dtype; anything else (float16, '>f4', a view at an odd byte offset) raises
#    TypeError here, never reaching C; array-likes go through np.asarray. Integer arrays
#    (labels, row indices) are converted to aligned native int64;
#  - inputs that are not C-contiguous are copied (matmul instead reads strided views as they
#    are, when one of their strides is the element size);
#  - `out` is never copied: it must have the exact dtype and shape, be writable and
#    C-contiguous (matmul: rows may be strided), and must not overlap an input, except that
#    element-wise kernels may write in place over their first input (out is x).
cimport numpy as cnp
from libc.stdint cimport int64_t

import numpy as np

cnp.import_array()

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_REDUCTIONS = ("mean", "sum", "none")


# ---- library state -------------------------------------------------------------------------

def openmp_enabled():
    """True when the C kernels were built with OpenMP."""
    return bool(fastnn_openmp_enabled())


def set_num_threads(n):
    """Set the number of threads the kernels may use (an int >= 1)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: argument 'n' must be an int >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"set_num_threads: argument 'n' must be >= 1, got {n}")
    fastnn_set_num_threads(min(int(n), 1 << 16))


def get_num_threads():
    """The number of threads the kernels may use."""
    return fastnn_get_num_threads()


def arch():
    """Name of the kernel table in use: 'generic', 'avx2' or 'avx512'."""
    return fastnn_arch().decode()


def available_archs():
    """Kernel tables compiled in and supported by this CPU, best last."""
    return tuple(fastnn_available_archs().decode().split(","))


def set_arch(name):
    """Use the kernel table `name` (one of available_archs()) from now on."""
    if not isinstance(name, str):
        raise TypeError(f"set_arch: argument 'name' must be a str, got {type(name).__name__}")
    cdef bytes b = name.encode()
    if fastnn_set_arch(b) != FASTNN_OK:
        raise ValueError(f"set_arch: argument 'name' must be one of {available_archs()}, "
                         f"got {name!r}")


# ---- argument checks -----------------------------------------------------------------------

cdef inline tuple _shp(cnp.ndarray a):
    return (<object>a).shape


cdef inline tuple _strd(cnp.ndarray a):
    return (<object>a).strides


cdef inline str _sig(str fn, str arg):
    return f"{fn}: argument '{arg}'"


cdef _check_buffer(cnp.ndarray a, str fn, str arg):
    """The one check of what C may read or write: native byte order and aligned. (The type
    number alone ignores byte order: a '>f4' array has NPY_FLOAT32's number.)"""
    if not cnp.PyArray_ISNOTSWAPPED(a):
        raise TypeError(f"{_sig(fn, arg)} must be in native byte order, got dtype "
                        f"{a.dtype.str!r} (byte-swapped); convert it with "
                        f"a.astype(a.dtype.newbyteorder('='))")
    if not cnp.PyArray_ISALIGNED(a):
        raise TypeError(f"{_sig(fn, arg)} must be aligned to its item size "
                        f"({cnp.PyArray_ITEMSIZE(a)} bytes), got an unaligned array (e.g. "
                        f"np.frombuffer at an odd offset); copy it with np.array(a)")


cdef cnp.ndarray _array(object x, str fn, str arg):
    """x as an ndarray of float32/float64 (array-likes converted, not copied when possible),
    native byte order and aligned."""
    cdef cnp.ndarray a = x if type(x) is np.ndarray else np.asarray(x)
    cdef int tn = cnp.PyArray_TYPE(a)
    if tn != cnp.NPY_FLOAT32 and tn != cnp.NPY_FLOAT64:
        raise TypeError(f"{_sig(fn, arg)} must be a float32 or float64 array, got dtype {a.dtype}")
    _check_buffer(a, fn, arg)
    return a


cdef cnp.ndarray _int64(object x, str fn, str arg):
    """An integer array as C-contiguous, aligned, native int64 (converted when needed)."""
    cdef cnp.ndarray a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{_sig(fn, arg)} must hold integers, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{_sig(fn, arg)} holds a value above the int64 range")
    return np.require(a, np.int64, ["C", "A"])


cdef cnp.ndarray _input(object x, str fn, str arg, object dtype):
    """A C-contiguous float array of `dtype` (None: either float type)."""
    cdef cnp.ndarray a = _array(x, fn, arg)
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{_sig(fn, arg)} must have dtype {dtype} like the other arrays, "
                        f"got {a.dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        a = np.ascontiguousarray(a)
    return a


cdef inline fastnn_dtype _dt(cnp.ndarray a):
    return FASTNN_F32 if a.dtype == _F32 else FASTNN_F64


cdef inline void *_ptr(cnp.ndarray a):
    return cnp.PyArray_DATA(a)


cdef inline void _bounds(cnp.ndarray a, Py_ssize_t *lo, Py_ssize_t *hi):
    """[lo, hi) byte addresses that a's elements occupy (strides are non-negative here)."""
    cdef int d, nd = cnp.PyArray_NDIM(a)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp *strides = cnp.PyArray_STRIDES(a)
    lo[0] = <Py_ssize_t>cnp.PyArray_DATA(a)
    hi[0] = lo[0]
    if cnp.PyArray_SIZE(a) == 0:
        return
    for d in range(nd):
        hi[0] += (dims[d] - 1) * strides[d]
    hi[0] += cnp.PyArray_ITEMSIZE(a)


cdef bint _overlap(cnp.ndarray a, cnp.ndarray b):
    cdef Py_ssize_t alo, ahi, blo, bhi
    _bounds(a, &alo, &ahi)
    _bounds(b, &blo, &bhi)
    return alo < bhi and blo < ahi


cdef cnp.ndarray _output(object out, str fn, tuple shape, object dtype, list inputs,
                         bint allow_inplace_first):
    """Validate a caller's `out`, or allocate one. `inputs` is a list of (name, array)."""
    cdef cnp.ndarray o
    if out is None:
        return np.empty(shape, dtype=dtype)
    if type(out) is not np.ndarray and not isinstance(out, np.ndarray):
        raise TypeError(f"{_sig(fn, 'out')} must be a numpy array, got {type(out).__name__}")
    o = out
    if o.dtype != dtype:
        raise TypeError(f"{_sig(fn, 'out')} must have dtype {dtype}, got {o.dtype}")
    if _shp(o) != shape:
        raise ValueError(f"{_sig(fn, 'out')} must have shape {shape}, got {_shp(o)}")
    if not o.flags.writeable:
        raise ValueError(f"{_sig(fn, 'out')} must be writable, got a read-only array")
    _check_buffer(o, fn, "out")
    if not cnp.PyArray_IS_C_CONTIGUOUS(o):
        raise ValueError(f"{_sig(fn, 'out')} must be C-contiguous, got strides {_strd(o)}")
    _check_disjoint(o, "out", fn, inputs, allow_inplace_first)
    return o


cdef _check_disjoint(cnp.ndarray o, str oname, str fn, list inputs, bint allow_inplace_first):
    cdef int i
    cdef cnp.ndarray a
    for i, (name, a) in enumerate(inputs):
        if a is None or not _overlap(o, a):
            continue
        if (i == 0 and allow_inplace_first and cnp.PyArray_DATA(a) == cnp.PyArray_DATA(o)
                and _shp(a) == _shp(o) and cnp.PyArray_IS_C_CONTIGUOUS(a)):
            continue
        raise ValueError(f"{_sig(fn, oname)} overlaps input '{name}' in memory; "
                         f"pass a separate array" + (f" or '{name}' itself"
                                                     if i == 0 and allow_inplace_first else ""))


cdef _raise(fastnn_status st, str fn):
    if st == FASTNN_ENOMEM:
        raise MemoryError(f"{fn}: out of memory")
    raise ValueError(f"{fn}: {fastnn_status_string(st).decode()}")


cdef inline void _check(fastnn_status st, str fn) except *:
    if st != FASTNN_OK:
        _raise(st, fn)


cdef _same_shape(cnp.ndarray a, str an, cnp.ndarray b, str bn, str fn):
    if _shp(a) != _shp(b):
        raise ValueError(f"{_sig(fn, bn)} must have the shape of '{an}' {_shp(a)}, "
                         f"got {_shp(b)}")


cdef double _float_arg(object v, str fn, str arg) except? -1.0:
    if type(v) is float:
        return <double>v
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{_sig(fn, arg)} must be a real number, got {v!r}") from None


# ---- GEMM ----------------------------------------------------------------------------------

cdef int _gemm_layout(cnp.ndarray a, str fn, str arg, int64_t *ld) except -1:
    """trans (0 or 1) of a 2-D operand, its leading dimension in *ld: rows strided with unit
    columns (trans 0) or the transpose of such (trans 1, e.g. x.T). Anything else is refused."""
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp *strides = cnp.PyArray_STRIDES(a)
    cdef Py_ssize_t r = dims[0], c = dims[1], isz = cnp.PyArray_ITEMSIZE(a)
    cdef Py_ssize_t s0 = strides[0], s1 = strides[1]
    # strides of empty arrays and of dimensions of extent <= 1 do not matter
    if r == 0 or c == 0:
        ld[0] = max(c, 1)
        return 0
    if (c == 1 or s1 == isz) and (r == 1 or (s0 % isz == 0 and s0 >= c * isz)):
        ld[0] = c if r == 1 else max(s0 // isz, c)
        return 0
    if (r == 1 or s0 == isz) and (c == 1 or (s1 % isz == 0 and s1 >= r * isz)):
        ld[0] = r if c == 1 else max(s1 // isz, r)
        return 1
    raise ValueError(f"{_sig(fn, arg)} has unsupported strides {_strd(a)} for shape "
                     f"{_shp(a)} and itemsize {isz}: one stride must equal the item "
                     f"size (a row-major array, a view of its rows, or its transpose .T); "
                     f"use np.ascontiguousarray")


cdef cnp.ndarray _gemm_operand(object x, str fn, str arg, object dtype):
    cdef cnp.ndarray a = _array(x, fn, arg)
    if dtype is not None and cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(<cnp.ndarray>dtype):
        raise TypeError(f"{_sig(fn, arg)} must have dtype {dtype.dtype} like 'a', got {a.dtype}")
    if cnp.PyArray_NDIM(a) != 2:
        raise ValueError(f"{_sig(fn, arg)} must be a 2-D array, got shape {_shp(a)}")
    return a


cdef tuple _gemm_args(str fn, a, b, out, alpha, beta):
    """Validated (A, B, C, transa, lda, transb, ldb, ldc, alpha, beta) of a GEMM call."""
    cdef cnp.ndarray A = _gemm_operand(a, fn, "a", None)
    cdef cnp.ndarray B = _gemm_operand(b, fn, "b", A)
    cdef double al = _float_arg(alpha, fn, "alpha"), be = _float_arg(beta, fn, "beta")
    if A.shape[1] != B.shape[0]:
        raise ValueError(f"{fn}: inner dimensions differ: 'a' has shape {_shp(A)}, "
                         f"'b' has shape {_shp(B)} (a.shape[1] must equal b.shape[0])")
    cdef int64_t m = A.shape[0], n = B.shape[1]
    cdef int64_t lda, ldb, ldc
    cdef int ta = _gemm_layout(A, fn, "a", &lda)
    cdef int tb = _gemm_layout(B, fn, "b", &ldb)
    cdef cnp.ndarray C
    cdef cnp.npy_intp dims[2]
    if out is None:
        if be != 0:
            raise ValueError(f"{_sig(fn, 'beta')} must be 0 when 'out' is None, got {be}")
        dims[0] = m
        dims[1] = n
        C = cnp.PyArray_EMPTY(2, dims, cnp.PyArray_TYPE(A), 0)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"{_sig(fn, 'out')} must be a numpy array, got {type(out).__name__}")
        C = out
        if cnp.PyArray_TYPE(C) != cnp.PyArray_TYPE(A):
            raise TypeError(f"{_sig(fn, 'out')} must have dtype {A.dtype}, got {C.dtype}")
        _check_buffer(C, fn, "out")
        if C.ndim != 2 or C.shape[0] != m or C.shape[1] != n:
            raise ValueError(f"{_sig(fn, 'out')} must have shape {(m, n)}, got {_shp(C)}")
        if not C.flags.writeable:
            raise ValueError(f"{_sig(fn, 'out')} must be writable, got a read-only array")
        if _overlap(C, A) or _overlap(C, B):
            _check_disjoint(C, "out", fn, [("a", A), ("b", B)], False)
    if _gemm_layout(C, fn, "out", &ldc) != 0:
        raise ValueError(f"{_sig(fn, 'out')} must have rows of unit stride (row-major), "
                         f"got strides {_strd(C)}")
    return A, B, C, ta, lda, tb, ldb, ldc, al, be


def _matmul(a, b, out, alpha, beta, bint reference):
    fn = "matmul_reference" if reference else "matmul"
    A, B, C, ta, lda, tb, ldb, ldc, al, be = _gemm_args(fn, a, b, out, alpha, beta)
    cdef int64_t m = C.shape[0], n = C.shape[1], k = A.shape[1]
    cdef fastnn_dtype dt = _dt(A)
    cdef int ita = ta, itb = tb
    cdef int64_t ilda = lda, ildb = ldb, ildc = ldc
    cdef double dal = al, dbe = be
    cdef void *pa = _ptr(A)
    cdef void *pb = _ptr(B)
    cdef void *pc = _ptr(C)
    cdef fastnn_status st
    with nogil:
        if reference:
            st = fastnn_gemm_ref(dt, ita, itb, m, n, k, dal, pa, ilda, pb, ildb, dbe, pc, ildc)
        else:
            st = fastnn_gemm(dt, ita, itb, m, n, k, dal, pa, ilda, pb, ildb, dbe, pc, ildc)
    _check(st, fn)
    return C


cdef tuple _activation_spec(object activation, str fn):
    """'relu' | ('leaky_relu', slope) | ('softplus', beta, threshold) ... -> (code, p, p2)."""
    spec = (activation,) if isinstance(activation, str) else tuple(activation) \
        if isinstance(activation, (tuple, list)) else None
    if not spec or not isinstance(spec[0], str) or spec[0] not in _ACTS or len(spec) > 3:
        raise ValueError(f"{_sig(fn, 'activation')} must be one of {sorted(_ACTS)} or a tuple "
                         f"(name, *params) such as ('leaky_relu', 0.2), got {activation!r}")
    name = spec[0]
    defaults = {"leaky_relu": (0.01, 0.0), "softplus": (1.0, 20.0)}.get(name, (0.0, 0.0))
    params = [_float_arg(v, fn, "activation") for v in spec[1:]] + list(defaults[len(spec) - 1:])
    if name == "softplus" and (params[0] == 0 or params[0] != params[0]):
        raise ValueError(f"{_sig(fn, 'activation')}: softplus beta must be non-zero, "
                         f"got {params[0]}")
    return _ACTS[name], params[0], params[1]


def matmul_bias_act(a, b, bias=None, activation="identity", out=None, alpha=1.0, beta=0.0):
    """out = act(alpha * a @ b + beta * out + bias), fused: bias and activation are applied
    to each tile of out as soon as its product is complete (a Linear layer's forward is
    matmul_bias_act(x, weight.T, bias, 'relu')). bias has shape (N,) or is None;
    activation is a name of fastnn.ops ('relu', 'gelu', 'gelu_tanh', ...) or a tuple
    ('leaky_relu', slope) / ('softplus', beta, threshold)."""
    fn = "matmul_bias_act"
    A, B, C, ta, lda, tb, ldb, ldc, al, be = _gemm_args(fn, a, b, out, alpha, beta)
    code, p, p2 = _activation_spec(activation, fn)
    cdef int64_t m = C.shape[0], n = C.shape[1], k = A.shape[1]
    cdef cnp.ndarray Bias = None
    if bias is not None:
        Bias = _input(bias, fn, "bias", A.dtype)
        if Bias.ndim != 1 or Bias.shape[0] != n:
            raise ValueError(f"{_sig(fn, 'bias')} must have shape ({n},), got {_shp(Bias)}")
        if out is not None:
            _check_disjoint(C, "out", fn, [("bias", Bias)], False)
    cdef fastnn_dtype dt = _dt(A)
    cdef fastnn_act act = code
    cdef double dp = p, dp2 = p2, dal = al, dbe = be
    cdef int ita = ta, itb = tb
    cdef int64_t ilda = lda, ildb = ldb, ildc = ldc
    cdef void *pa = _ptr(A)
    cdef void *pb = _ptr(B)
    cdef void *pc = _ptr(C)
    cdef void *pbias = _ptr(Bias) if Bias is not None else NULL
    cdef fastnn_status st
    with nogil:
        st = fastnn_gemm_bias_act(dt, ita, itb, m, n, k, dal, pa, ilda, pb, ildb, dbe, pc, ildc,
                                  pbias, act, dp, dp2)
    _check(st, fn)
    return C


def matmul_act_backward(a, b, x, activation="relu", out=None, alpha=1.0, beta=0.0):
    """out = (alpha * a @ b + beta * out) * act'(x), fused: the gradient with respect to an
    activation's input x (M, N), given the gradient of its output as the product a @ b
    (dZ @ W of the next layer). activation as in matmul_bias_act. x must not overlap out."""
    fn = "matmul_act_backward"
    A, B, C, ta, lda, tb, ldb, ldc, al, be = _gemm_args(fn, a, b, out, alpha, beta)
    code, p, p2 = _activation_spec(activation, fn)
    cdef int64_t m = C.shape[0], n = C.shape[1], k = A.shape[1]
    cdef cnp.ndarray X = _gemm_operand(x, fn, "x", A)
    if X.shape[0] != m or X.shape[1] != n:
        raise ValueError(f"{_sig(fn, 'x')} must have shape {(m, n)} like the product, "
                         f"got {_shp(X)}")
    cdef int64_t ldx
    if _gemm_layout(X, fn, "x", &ldx) != 0:
        X = np.ascontiguousarray(X)
        ldx = max(n, 1)
    _check_disjoint(C, "out", fn, [("x", X)], False)
    cdef fastnn_dtype dt = _dt(A)
    cdef fastnn_act act = code
    cdef double dp = p, dp2 = p2, dal = al, dbe = be
    cdef int ita = ta, itb = tb
    cdef int64_t ilda = lda, ildb = ldb, ildc = ldc, ildx = ldx
    cdef void *pa = _ptr(A)
    cdef void *pb = _ptr(B)
    cdef void *pc = _ptr(C)
    cdef void *px = _ptr(X)
    cdef fastnn_status st
    with nogil:
        st = fastnn_gemm_act_backward(dt, ita, itb, m, n, k, dal, pa, ilda, pb, ildb, dbe, pc,
                                      ildc, px, ildx, act, dp, dp2)
    _check(st, fn)
    return C


def matmul(a, b, out=None, alpha=1.0, beta=0.0):
    """out = alpha * a @ b + beta * out, for 2-D float32/float64 arrays of one dtype.

    a (M, K) and b (K, N) may be row-major arrays, views of their rows, or transposes
    (x.T) of such: no copy is made. out (M, N), when given, must be writable with unit
    column stride and must not overlap a or b; beta != 0 needs out (beta == 0 never reads
    it). Returns out.
    """
    return _matmul(a, b, out, alpha, beta, False)


def matmul_bf16(a, b, out=None, alpha=1.0, beta=0.0):
    """out = alpha * a @ b + beta * out for float32 arrays, computed in bfloat16: the elements
    of a and b are rounded to bfloat16 (to nearest even) and the products summed in float32
    (torch.matmul on bfloat16 inputs with a float32 result). Native on CPUs with AVX512-BF16
    (bf16_native()), emulated elsewhere. Layouts and out as in matmul."""
    fn = "matmul_bf16"
    A, B, C, ta, lda, tb, ldb, ldc, al, be = _gemm_args(fn, a, b, out, alpha, beta)
    if A.dtype != np.float32:
        raise TypeError(f"{fn}: a and b must be float32 (they are rounded to bfloat16 inside), "
                        f"got {A.dtype}")
    cdef int64_t m = C.shape[0], n = C.shape[1], k = A.shape[1]
    cdef int ita = ta, itb = tb
    cdef int64_t ilda = lda, ildb = ldb, ildc = ldc
    cdef float fal = al, fbe = be
    cdef const float *pa = <const float *>_ptr(A)
    cdef const float *pb = <const float *>_ptr(B)
    cdef float *pc = <float *>_ptr(C)
    cdef fastnn_status st
    with nogil:
        st = fastnn_gemm_bf16(ita, itb, m, n, k, fal, pa, ilda, pb, ildb, fbe, pc, ildc)
    _check(st, fn)
    return C


def gemm_blocking():
    """The GEMM blocking of the kernel table in use: {'float32': (mr, nr, mc, kc, nc),
    'float64': (...)}, mc and kc fitted to the CPU's caches at load (or FASTNN_GEMM_BLOCKING),
    and the L1d and L2 sizes in bytes the CPU reports (0 when unknown)."""
    cdef int v[10]
    cdef long c[2]
    fastnn_gemm_blocking(v)
    fastnn_cache_sizes(c)
    return {"float32": tuple(v[i] for i in range(5)),
            "float64": tuple(v[i] for i in range(5, 10)), "l1d": c[0], "l2": c[1]}


def first_nonfinite(a):
    """Flat index (C order) of the first NaN or infinity of a, or -1 when every value is
    finite. a: a C-contiguous, aligned, native float32 or float64 array (TypeError otherwise).
    One read of a with the GIL released, no temporary (fastnn_first_nonfinite)."""
    cdef cnp.ndarray x = _array(a, "first_nonfinite", "a")
    if not x.flags.c_contiguous:
        raise TypeError(f"{_sig('first_nonfinite', 'a')} must be C-contiguous")
    cdef fastnn_dtype dt = _dt(x)
    cdef const void *p = _ptr(x)
    cdef int64_t n = x.size, r
    with nogil:
        r = fastnn_first_nonfinite(dt, p, n)
    return r


def bf16_native():
    """True when matmul_bf16 runs on AVX512-BF16 instructions (else it is emulated)."""
    return bool(fastnn_bf16_native())


def matmul_reference(a, b, out=None, alpha=1.0, beta=0.0):
    """matmul through the naive reference kernel (the oracle; slow)."""
    return _matmul(a, b, out, alpha, beta, True)


# ---- activations ---------------------------------------------------------------------------

cdef dict _ACTS = {
    "identity": FASTNN_ACT_IDENTITY, "relu": FASTNN_ACT_RELU,
    "leaky_relu": FASTNN_ACT_LEAKY_RELU, "sigmoid": FASTNN_ACT_SIGMOID,
    "tanh": FASTNN_ACT_TANH, "gelu": FASTNN_ACT_GELU, "gelu_tanh": FASTNN_ACT_GELU_TANH,
    "silu": FASTNN_ACT_SILU, "softplus": FASTNN_ACT_SOFTPLUS,
}


def _act_forward(str name, x, out, double p=0.0, double p2=0.0):
    cdef cnp.ndarray X = _input(x, name, "x", None)
    cdef cnp.ndarray Y = _output(out, name, _shp(X), X.dtype, [("x", X)], True)
    cdef fastnn_act act = _ACTS[name]
    cdef fastnn_dtype dt = _dt(X)
    cdef int64_t n = X.size
    cdef void *py = _ptr(Y)
    cdef void *px = _ptr(X)
    cdef fastnn_status st
    with nogil:
        st = fastnn_act_forward(dt, act, p, p2, py, px, n)
    _check(st, name)
    return Y


def _act_backward(str name, dy, x, out, double p=0.0, double p2=0.0):
    fn = name + "_backward"
    cdef cnp.ndarray DY = _input(dy, fn, "dy", None)
    cdef cnp.ndarray X = _input(x, fn, "x", DY.dtype)
    _same_shape(DY, "dy", X, "x", fn)
    cdef cnp.ndarray DX = _output(out, fn, _shp(X), X.dtype, [("dy", DY), ("x", X)], True)
    cdef fastnn_act act = _ACTS[name]
    cdef fastnn_dtype dt = _dt(X)
    cdef int64_t n = X.size
    cdef void *pdx = _ptr(DX)
    cdef void *pdy = _ptr(DY)
    cdef void *px = _ptr(X)
    cdef fastnn_status st
    with nogil:
        st = fastnn_act_backward(dt, act, p, p2, pdx, pdy, px, n)
    _check(st, fn)
    return DX


def relu(x, out=None):
    """max(x, 0) element-wise (NaN propagates)."""
    return _act_forward("relu", x, out)


def relu_backward(dy, x, out=None):
    """dy * (x > 0): the gradient through relu, given its input x."""
    return _act_backward("relu", dy, x, out)


def leaky_relu(x, negative_slope=0.01, out=None):
    """x if x > 0 else negative_slope * x."""
    return _act_forward("leaky_relu", x, out, _float_arg(negative_slope, "leaky_relu",
                                                         "negative_slope"))


def leaky_relu_backward(dy, x, negative_slope=0.01, out=None):
    return _act_backward("leaky_relu", dy, x, out,
                         _float_arg(negative_slope, "leaky_relu_backward", "negative_slope"))


def sigmoid(x, out=None):
    """1 / (1 + exp(-x))."""
    return _act_forward("sigmoid", x, out)


def sigmoid_backward(dy, x, out=None):
    return _act_backward("sigmoid", dy, x, out)


def tanh(x, out=None):
    return _act_forward("tanh", x, out)


def tanh_backward(dy, x, out=None):
    return _act_backward("tanh", dy, x, out)


cdef str _gelu_kind(object approximate, str fn):
    if approximate == "none":
        return "gelu"
    if approximate == "tanh":
        return "gelu_tanh"
    raise ValueError(f"{_sig(fn, 'approximate')} must be 'none' or 'tanh', got {approximate!r}")


def gelu(x, approximate="none", out=None):
    """x * Phi(x) (approximate='none', through erf) or its tanh approximation."""
    return _act_forward(_gelu_kind(approximate, "gelu"), x, out)


def gelu_backward(dy, x, approximate="none", out=None):
    return _act_backward(_gelu_kind(approximate, "gelu_backward"), dy, x, out)


def silu(x, out=None):
    """x * sigmoid(x)."""
    return _act_forward("silu", x, out)


def silu_backward(dy, x, out=None):
    return _act_backward("silu", dy, x, out)


cdef double _softplus_beta(object beta, str fn) except? -1.0:
    cdef double b = _float_arg(beta, fn, "beta")
    if b == 0 or b != b:
        raise ValueError(f"{_sig(fn, 'beta')} must be a non-zero number, got {beta!r}")
    return b


def softplus(x, beta=1.0, threshold=20.0, out=None):
    """log(1 + exp(beta x)) / beta, and x itself where beta * x > threshold (as PyTorch)."""
    return _act_forward("softplus", x, out, _softplus_beta(beta, "softplus"),
                        _float_arg(threshold, "softplus", "threshold"))


def softplus_backward(dy, x, beta=1.0, threshold=20.0, out=None):
    return _act_backward("softplus", dy, x, out, _softplus_beta(beta, "softplus_backward"),
                         _float_arg(threshold, "softplus_backward", "threshold"))


# ---- softmax and bias ----------------------------------------------------------------------

cdef cnp.ndarray _rows_input(object x, str fn, str arg, object dtype):
    cdef cnp.ndarray a = _input(x, fn, arg, dtype)
    if a.ndim < 1:
        raise ValueError(f"{_sig(fn, arg)} must have at least 1 dimension, got a scalar")
    return a


def _softmax(bint log_, x, out):
    fn = "log_softmax" if log_ else "softmax"
    cdef cnp.ndarray X = _rows_input(x, fn, "x", None)
    cdef cnp.ndarray Y = _output(out, fn, _shp(X), X.dtype, [("x", X)], True)
    cdef int64_t cols = X.shape[X.ndim - 1]
    cdef int64_t rows = X.size // cols if cols else 0
    cdef fastnn_dtype dt = _dt(X)
    cdef void *py = _ptr(Y)
    cdef void *px = _ptr(X)
    cdef fastnn_status st
    with nogil:
        st = fastnn_softmax(dt, log_, py, px, rows, cols)
    _check(st, fn)
    return Y


def softmax(x, out=None):
    """Softmax over the last axis."""
    return _softmax(False, x, out)


def log_softmax(x, out=None):
    """Log-softmax over the last axis."""
    return _softmax(True, x, out)


def _softmax_backward(bint log_, dy, y, out):
    fn = "log_softmax_backward" if log_ else "softmax_backward"
    cdef cnp.ndarray DY = _rows_input(dy, fn, "dy", None)
    cdef cnp.ndarray Y = _rows_input(y, fn, "y", DY.dtype)
    _same_shape(DY, "dy", Y, "y", fn)
    cdef cnp.ndarray DX = _output(out, fn, _shp(Y), Y.dtype, [("dy", DY), ("y", Y)], True)
    cdef int64_t cols = Y.shape[Y.ndim - 1]
    cdef int64_t rows = Y.size // cols if cols else 0
    cdef fastnn_dtype dt = _dt(Y)
    cdef void *pdx = _ptr(DX)
    cdef void *pdy = _ptr(DY)
    cdef void *py = _ptr(Y)
    cdef fastnn_status st
    with nogil:
        st = fastnn_softmax_backward(dt, log_, pdx, pdy, py, rows, cols)
    _check(st, fn)
    return DX


def softmax_backward(dy, y, out=None):
    """Gradient through softmax given its output y: y * (dy - sum(dy * y, -1))."""
    return _softmax_backward(False, dy, y, out)


def log_softmax_backward(dy, y, out=None):
    """Gradient through log_softmax given its output y: dy - exp(y) * sum(dy, -1)."""
    return _softmax_backward(True, dy, y, out)


def bias_add(x, bias, out=None):
    """x (N, F) + bias (F,) broadcast over rows."""
    fn = "bias_add"
    cdef cnp.ndarray X = _input(x, fn, "x", None)
    cdef cnp.ndarray B = _input(bias, fn, "bias", X.dtype)
    if X.ndim != 2:
        raise ValueError(f"{_sig(fn, 'x')} must be a 2-D array, got shape {_shp(X)}")
    if B.ndim != 1 or B.shape[0] != X.shape[1]:
        raise ValueError(f"{_sig(fn, 'bias')} must have shape ({X.shape[1]},), "
                         f"got {_shp(B)}")
    cdef cnp.ndarray Y = _output(out, fn, _shp(X), X.dtype, [("x", X), ("bias", B)], True)
    cdef int64_t rows = X.shape[0], cols = X.shape[1]
    cdef fastnn_dtype dt = _dt(X)
    cdef void *py = _ptr(Y)
    cdef void *px = _ptr(X)
    cdef void *pb = _ptr(B)
    cdef fastnn_status st
    with nogil:
        st = fastnn_bias_add(dt, py, px, pb, rows, cols)
    _check(st, fn)
    return Y


def bias_grad(dy, out=None, beta=0.0):
    """Column sums of dy (N, F): out = dy.sum(0) + beta * out. beta != 0 needs out."""
    fn = "bias_grad"
    cdef cnp.ndarray DY = _input(dy, fn, "dy", None)
    if DY.ndim != 2:
        raise ValueError(f"{_sig(fn, 'dy')} must be a 2-D array, got shape {_shp(DY)}")
    cdef double be = _float_arg(beta, fn, "beta")
    if out is None and be != 0:
        raise ValueError(f"{_sig(fn, 'beta')} must be 0 when 'out' is None, got {be}")
    cdef cnp.ndarray DB = _output(out, fn, (DY.shape[1],), DY.dtype, [("dy", DY)], False)
    cdef int64_t rows = DY.shape[0], cols = DY.shape[1]
    cdef fastnn_dtype dt = _dt(DY)
    cdef void *pdb = _ptr(DB)
    cdef void *pdy = _ptr(DY)
    cdef fastnn_status st
    with nogil:
        st = fastnn_bias_grad(dt, pdb, pdy, rows, cols, be)
    _check(st, fn)
    return DB


# ---- losses --------------------------------------------------------------------------------

cdef _check_reduction(object reduction, str fn):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{_sig(fn, 'reduction')} must be 'mean', 'sum' or 'none', "
                         f"got {reduction!r}")


cdef object _finish(str reduction, double total, double count, cnp.ndarray per_item):
    if reduction == "none":
        return per_item
    if reduction == "sum":
        return total
    return total / count if count != 0 else float("nan")


cdef cnp.ndarray _scale_none(cnp.ndarray grad, object grad_output, tuple item_shape, str fn,
                             bint per_row):
    """reduction='none': grad (of the sum) times the caller's grad_output per item."""
    if grad_output is None:
        raise ValueError(f"{_sig(fn, 'grad_output')} is required with reduction='none' "
                         f"(the gradient of each item's loss), got None")
    cdef cnp.ndarray go = _input(grad_output, fn, "grad_output", grad.dtype)
    if _shp(go) != item_shape:
        raise ValueError(f"{_sig(fn, 'grad_output')} must have shape {item_shape}, "
                         f"got {_shp(go)}")
    if per_row:
        grad *= go.reshape(-1, 1)
    else:
        grad *= go.reshape(_shp(grad))
    return grad


def _regression(str fn, fastnn_loss kind, pred, target, str reduction, double delta,
                bint backward, grad_output):
    _check_reduction(reduction, fn)
    cdef cnp.ndarray P = _input(pred, fn, "pred", None)
    cdef cnp.ndarray Tg = _input(target, fn, "target", P.dtype)
    _same_shape(P, "pred", Tg, "target", fn)
    cdef int64_t n = P.size
    cdef double scale = 1.0 / n if (reduction == "mean" and n > 0) else 1.0
    cdef double total = 0
    cdef cnp.ndarray L = None, G = None
    if backward:
        G = np.empty_like(P)
    elif reduction == "none":
        L = np.empty_like(P)
    cdef fastnn_dtype dt = _dt(P)
    cdef void *pl = _ptr(L) if L is not None else NULL
    cdef void *pg = _ptr(G) if G is not None else NULL
    cdef void *pp = _ptr(P)
    cdef void *pt = _ptr(Tg)
    cdef fastnn_status st
    with nogil:
        st = fastnn_regression_loss(dt, kind, delta, &total, pl, pg, scale, pp, pt, n)
    _check(st, fn)
    if backward:
        return _scale_none(G, grad_output, _shp(P), fn, False) if reduction == "none" else G
    return _finish(reduction, total, n, L)


def mse_loss(pred, target, reduction="mean"):
    """Mean (or sum, or per element) of (pred - target)**2."""
    return _regression("mse_loss", FASTNN_LOSS_MSE, pred, target, reduction, 0, False, None)


def mse_loss_backward(pred, target, reduction="mean", grad_output=None):
    """d mse_loss / d pred. reduction='none' needs grad_output (one value per element)."""
    return _regression("mse_loss_backward", FASTNN_LOSS_MSE, pred, target, reduction, 0, True,
                       grad_output)


def l1_loss(pred, target, reduction="mean"):
    """Mean (or sum, or per element) of |pred - target|."""
    return _regression("l1_loss", FASTNN_LOSS_L1, pred, target, reduction, 0, False, None)


def l1_loss_backward(pred, target, reduction="mean", grad_output=None):
    """sign(pred - target) scaled by the reduction (0 where pred == target)."""
    return _regression("l1_loss_backward", FASTNN_LOSS_L1, pred, target, reduction, 0, True,
                       grad_output)


cdef double _delta(object delta, str fn) except? -1.0:
    cdef double d = _float_arg(delta, fn, "delta")
    if not d > 0:
        raise ValueError(f"{_sig(fn, 'delta')} must be > 0, got {delta!r}")
    return d


def huber_loss(pred, target, delta=1.0, reduction="mean"):
    """0.5 d**2 where |d| < delta, else delta * (|d| - 0.5 delta); d = pred - target."""
    return _regression("huber_loss", FASTNN_LOSS_HUBER, pred, target, reduction,
                       _delta(delta, "huber_loss"), False, None)


def huber_loss_backward(pred, target, delta=1.0, reduction="mean", grad_output=None):
    return _regression("huber_loss_backward", FASTNN_LOSS_HUBER, pred, target, reduction,
                       _delta(delta, "huber_loss_backward"), True, grad_output)


def _bce(str fn, logits, target, pos_weight, str reduction, bint backward, grad_output):
    _check_reduction(reduction, fn)
    cdef cnp.ndarray Z = _input(logits, fn, "logits", None)
    cdef cnp.ndarray Tg = _input(target, fn, "target", Z.dtype)
    _same_shape(Z, "logits", Tg, "target", fn)
    cdef int64_t cols = Z.shape[Z.ndim - 1] if Z.ndim > 0 else 1
    cdef int64_t rows = Z.size // cols if cols else 0
    cdef cnp.ndarray PW = None
    if pos_weight is not None:
        PW = _input(pos_weight, fn, "pos_weight", Z.dtype)
        if PW.ndim != 1 or PW.shape[0] != cols:
            raise ValueError(f"{_sig(fn, 'pos_weight')} must have shape ({cols},) (one weight "
                             f"per column of 'logits'), got {_shp(PW)}")
    cdef int64_t n = Z.size
    cdef double scale = 1.0 / n if (reduction == "mean" and n > 0) else 1.0
    cdef double total = 0
    cdef cnp.ndarray L = None, G = None
    if backward:
        G = np.empty_like(Z)
    elif reduction == "none":
        L = np.empty_like(Z)
    cdef fastnn_dtype dt = _dt(Z)
    cdef void *pl = _ptr(L) if L is not None else NULL
    cdef void *pg = _ptr(G) if G is not None else NULL
    cdef void *pz = _ptr(Z)
    cdef void *pt = _ptr(Tg)
    cdef void *pw = _ptr(PW) if PW is not None else NULL
    cdef fastnn_status st
    with nogil:
        st = fastnn_bce_logits(dt, &total, pl, pg, scale, pz, pt, pw, rows, cols)
    _check(st, fn)
    if backward:
        return _scale_none(G, grad_output, _shp(Z), fn, False) if reduction == "none" else G
    return _finish(reduction, total, n, L)


def binary_cross_entropy_with_logits(logits, target, pos_weight=None, reduction="mean"):
    """Binary cross-entropy on logits, as torch.nn.functional.binary_cross_entropy_with_logits
    (pos_weight: one weight per class, the last axis)."""
    return _bce("binary_cross_entropy_with_logits", logits, target, pos_weight, reduction,
                False, None)


def binary_cross_entropy_with_logits_backward(logits, target, pos_weight=None, reduction="mean",
                                              grad_output=None):
    return _bce("binary_cross_entropy_with_logits_backward", logits, target, pos_weight,
                reduction, True, grad_output)


cdef cnp.ndarray _labels(object labels, str fn, int64_t rows):
    cdef cnp.ndarray lab = labels if isinstance(labels, np.ndarray) else np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"{_sig(fn, 'labels')} must hold integer class indices, "
                        f"got dtype {lab.dtype}")
    if lab.ndim != 1 or lab.shape[0] != rows:
        raise ValueError(f"{_sig(fn, 'labels')} must have shape ({rows},) (one label per row "
                         f"of 'logits'), got {_shp(lab)}")
    return _int64(lab, fn, "labels")


def _cross_entropy(str fn, logits, labels, weight, label_smoothing, str reduction,
                   bint backward, grad_output):
    _check_reduction(reduction, fn)
    cdef cnp.ndarray Z = _input(logits, fn, "logits", None)
    if Z.ndim != 2:
        raise ValueError(f"{_sig(fn, 'logits')} must be a 2-D array (rows, classes), "
                         f"got shape {_shp(Z)}")
    cdef int64_t rows = Z.shape[0], cols = Z.shape[1]
    if cols == 0:
        raise ValueError(f"{_sig(fn, 'logits')} must have at least one class column, "
                         f"got shape {_shp(Z)}")
    cdef cnp.ndarray Y = _labels(labels, fn, rows)
    cdef cnp.ndarray W = None
    if weight is not None:
        W = _input(weight, fn, "weight", Z.dtype)
        if W.ndim != 1 or W.shape[0] != cols:
            raise ValueError(f"{_sig(fn, 'weight')} must have shape ({cols},) (one weight per "
                             f"class), got {_shp(W)}")
    cdef double eps = _float_arg(label_smoothing, fn, "label_smoothing")
    if not (0.0 <= eps <= 1.0):
        raise ValueError(f"{_sig(fn, 'label_smoothing')} must be in [0, 1], "
                         f"got {label_smoothing!r}")
    cdef double total = 0, wsum = 0, scale = 1.0
    cdef cnp.ndarray L = None, G = None
    cdef fastnn_dtype dt = _dt(Z)
    cdef void *pz = _ptr(Z)
    cdef int64_t *py = <int64_t *>_ptr(Y)
    cdef void *pw = _ptr(W) if W is not None else NULL
    cdef void *pl = NULL
    cdef void *pg = NULL
    cdef fastnn_status st
    if backward and reduction == "mean":
        # the divisor (sum of the label weights) is needed before the gradient is scaled
        with nogil:
            st = fastnn_cross_entropy(dt, NULL, &wsum, NULL, NULL, 1.0, pz, py, pw, eps,
                                      rows, cols)
        if st == FASTNN_OK and wsum != 0:
            scale = 1.0 / wsum
        elif st == FASTNN_OK:
            scale = float("nan")
    if backward:
        G = np.empty_like(Z)
        pg = _ptr(G)
    elif reduction == "none":
        L = np.empty(rows, dtype=Z.dtype)
        pl = _ptr(L)
    with nogil:
        st = fastnn_cross_entropy(dt, &total, &wsum, pl, pg, scale, pz, py, pw, eps, rows, cols)
    if st == FASTNN_ELABEL:
        bad = np.flatnonzero((Y < 0) | (Y >= cols))[0]
        raise ValueError(f"{_sig(fn, 'labels')} must be class indices in [0, {cols}), "
                         f"got {Y[bad]} at position {bad}")
    _check(st, fn)
    if backward:
        return _scale_none(G, grad_output, (rows,), fn, True) if reduction == "none" else G
    return _finish(reduction, total, wsum, L)


def cross_entropy(logits, labels, weight=None, label_smoothing=0.0, reduction="mean"):
    """Softmax cross-entropy of logits (N, C) against integer labels (N,), as
    torch.nn.functional.cross_entropy: class weights, label smoothing, and 'mean' divided by
    the sum of the label weights (N without weights)."""
    return _cross_entropy("cross_entropy", logits, labels, weight, label_smoothing, reduction,
                          False, None)


def cross_entropy_backward(logits, labels, weight=None, label_smoothing=0.0, reduction="mean",
                           grad_output=None):
    """d cross_entropy / d logits. reduction='none' needs grad_output (one value per row)."""
    return _cross_entropy("cross_entropy_backward", logits, labels, weight, label_smoothing,
                          reduction, True, grad_output)


# ---- optimizers ----------------------------------------------------------------------------

cdef cnp.ndarray _state(object a, str fn, str arg, cnp.ndarray p):
    """A buffer updated in place: same dtype and size as param, C-contiguous, writable."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{_sig(fn, arg)} must be a numpy array, got {type(a).__name__}")
    cdef cnp.ndarray s = a
    if s.dtype != p.dtype:
        raise TypeError(f"{_sig(fn, arg)} must have dtype {p.dtype} like 'param', got {s.dtype}")
    if s.size != p.size:
        raise ValueError(f"{_sig(fn, arg)} must have {p.size} elements like 'param', "
                         f"got shape {_shp(s)}")
    _check_buffer(s, fn, arg)
    if not cnp.PyArray_IS_C_CONTIGUOUS(s):
        raise ValueError(f"{_sig(fn, arg)} must be C-contiguous (it is updated in place), "
                         f"got strides {_strd(s)}")
    if not s.flags.writeable:
        raise ValueError(f"{_sig(fn, arg)} must be writable, got a read-only array")
    return s


cdef tuple _opt_args(str fn, param, grad, list states):
    """Validate param, grad and the named state buffers (None allowed where optional)."""
    cdef cnp.ndarray P = _array(param, fn, "param")
    P = _state(P, fn, "param", P)
    cdef cnp.ndarray G = _input(grad, fn, "grad", P.dtype)
    if G.size != P.size:
        raise ValueError(f"{_sig(fn, 'grad')} must have {P.size} elements like 'param', "
                         f"got shape {_shp(G)}")
    out = [P, G]
    written = [("param", P)]
    for name, s in states:
        S = None if s is None else _state(s, fn, name, P)
        if S is not None:
            for wname, W in written:
                if _overlap(S, W):
                    raise ValueError(f"{_sig(fn, name)} overlaps '{wname}' in memory")
            if _overlap(S, G):
                raise ValueError(f"{_sig(fn, name)} overlaps 'grad' in memory")
            written.append((name, S))
        out.append(S)
    if _overlap(P, G):
        raise ValueError(f"{_sig(fn, 'grad')} overlaps 'param' in memory")
    return tuple(out)


cdef inline void *_optr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


def sgd_step(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, maximize=False, first_step=False):
    """One torch.optim.SGD update of param in place (momentum_buffer needed if momentum != 0;
    first_step: the buffer is initialised to the gradient, as PyTorch does)."""
    fn = "sgd_step"
    P, G, B = _opt_args(fn, param, grad, [("momentum_buffer", momentum_buffer)])
    cdef double mu = _float_arg(momentum, fn, "momentum")
    cdef double damp = _float_arg(dampening, fn, "dampening")
    cdef double lr_ = _float_arg(lr, fn, "lr"), wd = _float_arg(weight_decay, fn, "weight_decay")
    if mu != 0 and B is None:
        raise ValueError(f"{_sig(fn, 'momentum_buffer')} is required when momentum != 0")
    if nesterov and (mu <= 0 or damp != 0):
        raise ValueError(f"{_sig(fn, 'nesterov')} requires momentum > 0 and dampening == 0, "
                         f"got momentum={mu}, dampening={damp}")
    cdef fastnn_dtype dt = _dt(P)
    cdef void *pp = _optr(P)
    cdef void *pb = _optr(B)
    cdef void *pg = _optr(G)
    cdef int64_t n = P.size
    cdef int nest = bool(nesterov), maxi = bool(maximize), first = bool(first_step)
    cdef fastnn_status st
    with nogil:
        st = fastnn_sgd(dt, pp, pb, pg, n, lr_, mu, damp, wd, nest, maxi, first)
    _check(st, fn)


cdef int64_t _step(object step, str fn) except -1:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{_sig(fn, 'step')} must be an int >= 1 (the count including this "
                         f"update), got {step!r}")
    return step


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
              beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
              amsgrad=False, maximize=False):
    """One torch.optim.Adam update (AdamW with decoupled_weight_decay=True) in place.
    step counts updates including this one (1 on the first call)."""
    fn = "adam_step"
    P, G, M, V, VM = _opt_args(fn, param, grad, [("exp_avg", exp_avg),
                                                 ("exp_avg_sq", exp_avg_sq),
                                                 ("max_exp_avg_sq", max_exp_avg_sq)])
    if M is None or V is None:
        raise ValueError(f"{fn}: arguments 'exp_avg' and 'exp_avg_sq' are required")
    if amsgrad and VM is None:
        raise ValueError(f"{_sig(fn, 'max_exp_avg_sq')} is required when amsgrad=True")
    cdef int64_t s = _step(step, fn)
    cdef double b1 = _float_arg(beta1, fn, "beta1"), b2 = _float_arg(beta2, fn, "beta2")
    for name, v in (("beta1", b1), ("beta2", b2)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{_sig(fn, name)} must be in [0, 1), got {v}")
    cdef double lr_ = _float_arg(lr, fn, "lr"), e = _float_arg(eps, fn, "eps")
    cdef double wd = _float_arg(weight_decay, fn, "weight_decay")
    cdef fastnn_dtype dt = _dt(P)
    cdef void *pp = _optr(P)
    cdef void *pm = _optr(M)
    cdef void *pv = _optr(V)
    cdef void *pvm = _optr(VM)
    cdef void *pg = _optr(G)
    cdef int64_t n = P.size
    cdef int dec = bool(decoupled_weight_decay), ams = bool(amsgrad), maxi = bool(maximize)
    cdef fastnn_status st
    with nogil:
        st = fastnn_adam(dt, pp, pm, pv, pvm, pg, n, lr_, b1, b2, e, wd, dec, ams, maxi, s)
    _check(st, fn)


def adamw_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
               beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, amsgrad=False,
               maximize=False):
    """One torch.optim.AdamW update in place (decoupled weight decay, default 0.01)."""
    adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr, beta1=beta1,
              beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True,
              amsgrad=amsgrad, maximize=maximize)


def rmsprop_step(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *, lr=1e-2,
                 alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False):
    """One torch.optim.RMSprop update in place."""
    fn = "rmsprop_step"
    P, G, SQ, B, GA = _opt_args(fn, param, grad, [("square_avg", square_avg),
                                                  ("momentum_buffer", momentum_buffer),
                                                  ("grad_avg", grad_avg)])
    if SQ is None:
        raise ValueError(f"{_sig(fn, 'square_avg')} is required")
    cdef double mu = _float_arg(momentum, fn, "momentum")
    if mu > 0 and B is None:
        raise ValueError(f"{_sig(fn, 'momentum_buffer')} is required when momentum > 0")
    if centered and GA is None:
        raise ValueError(f"{_sig(fn, 'grad_avg')} is required when centered=True")
    cdef double lr_ = _float_arg(lr, fn, "lr"), al = _float_arg(alpha, fn, "alpha")
    cdef double e = _float_arg(eps, fn, "eps"), wd = _float_arg(weight_decay, fn, "weight_decay")
    cdef fastnn_dtype dt = _dt(P)
    cdef void *pp = _optr(P)
    cdef void *psq = _optr(SQ)
    cdef void *pb = _optr(B)
    cdef void *pga = _optr(GA)
    cdef void *pg = _optr(G)
    cdef int64_t n = P.size
    cdef int cen = bool(centered), maxi = bool(maximize)
    cdef fastnn_status st
    with nogil:
        st = fastnn_rmsprop(dt, pp, psq, pb, pga, pg, n, lr_, al, e, wd, mu, cen, maxi)
    _check(st, fn)


def adagrad_step(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False):
    """One torch.optim.Adagrad update in place; step counts updates including this one."""
    fn = "adagrad_step"
    P, G, SS = _opt_args(fn, param, grad, [("state_sum", state_sum)])
    if SS is None:
        raise ValueError(f"{_sig(fn, 'state_sum')} is required")
    cdef int64_t s = _step(step, fn)
    cdef double lr_ = _float_arg(lr, fn, "lr"), dec = _float_arg(lr_decay, fn, "lr_decay")
    cdef double wd = _float_arg(weight_decay, fn, "weight_decay"), e = _float_arg(eps, fn, "eps")
    cdef fastnn_dtype dt = _dt(P)
    cdef void *pp = _optr(P)
    cdef void *pss = _optr(SS)
    cdef void *pg = _optr(G)
    cdef int64_t n = P.size
    cdef int maxi = bool(maximize)
    cdef fastnn_status st
    with nogil:
        st = fastnn_adagrad(dt, pp, pss, pg, n, lr_, dec, wd, e, maxi, s)
    _check(st, fn)


# ---- fused training executor -----------------------------------------------------------------

from libc.stdlib cimport malloc, free
from libc.string cimport memset

cdef dict _NET_LOSSES = {"cross_entropy": FASTNN_NET_CROSS_ENTROPY, "mse": FASTNN_NET_MSE,
                         "l1": FASTNN_NET_L1, "huber": FASTNN_NET_HUBER,
                         "bce_with_logits": FASTNN_NET_BCE_LOGITS}
cdef dict _NET_OPTIMS = {"sgd": FASTNN_OPT_SGD, "adam": FASTNN_OPT_ADAM,
                         "rmsprop": FASTNN_OPT_RMSPROP, "adagrad": FASTNN_OPT_ADAGRAD}
_OPT_FIELDS = ("lr", "momentum", "dampening", "weight_decay", "beta1", "beta2", "eps", "alpha",
               "lr_decay", "nesterov", "maximize", "decoupled", "amsgrad", "centered")


def _check_net_scalars(fn, optim, hyper, label_smoothing, loss, delta):
    """FusedNet's hyper-parameters checked as the optimizers and losses check theirs (C's
    fastnn_net_check repeats it), each with a message naming the argument."""
    import math
    for k in ("lr", "weight_decay", "eps", "momentum", "alpha", "lr_decay"):
        v = float(hyper.get(k, 0.0))
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{fn}: hyper[{k!r}] must be a finite number >= 0, got {v!r}")
    if not math.isfinite(float(hyper.get("dampening", 0.0))):
        raise ValueError(f"{fn}: hyper['dampening'] must be finite, got {hyper['dampening']!r}")
    if optim == "adam":
        for k in ("beta1", "beta2"):
            v = float(hyper.get(k, 0.0))
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{fn}: hyper[{k!r}] must be in [0, 1), got {v!r}")
    if optim == "sgd" and hyper.get("nesterov") and (float(hyper.get("momentum", 0.0)) <= 0
                                                    or float(hyper.get("dampening", 0.0)) != 0):
        raise ValueError(f"{fn}: nesterov momentum requires a momentum > 0 and zero dampening")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{_sig(fn, 'label_smoothing')} must be in [0, 1], got {label_smoothing!r}")
    if loss == "huber" and not (delta > 0 and math.isfinite(delta)):
        raise ValueError(f"{_sig(fn, 'delta')} must be a finite number > 0, got {delta!r}")


class NonFiniteLossError(FloatingPointError):
    """Training stopped because a batch's loss was NaN or infinite; no update was made for
    that batch. ``step`` is the optimizer's step count at the failing batch (updates made)."""

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step
cdef fastnn_status _reduce_grads(void *ctx, void *grads, int64_t n, int64_t step) noexcept nogil:
    """fastnn_net_dist's reduce: calls the Python reduce(grads_array, step) kept in ctx;
    an exception is kept for train_dist to raise and stops the loop."""
    with gil:
        holder = <list>ctx
        try:
            holder[0](holder[1], step)
        except BaseException as e:
            holder[2] = e
            return FASTNN_EINVAL
    return FASTNN_OK


_OP_KINDS = {"linear": FASTNN_OP_LINEAR, "conv2d": FASTNN_OP_CONV2D,
             "max_pool2d": FASTNN_OP_MAXPOOL2D, "avg_pool2d": FASTNN_OP_AVGPOOL2D,
             "global_avg_pool": FASTNN_OP_GLOBAL_AVGPOOL, "batch_norm": FASTNN_OP_BATCHNORM,
             "activation": FASTNN_OP_ACT, "dropout": FASTNN_OP_DROPOUT,
             "flatten": FASTNN_OP_FLATTEN}


cdef class FusedNet:
    """A compiled plan for the fused training step (csrc/include/fastnn/net.h).

    units: sequence of (in_features, out_features, weight_offset, bias_offset or -1,
    activation spec as for matmul_bias_act, dropout probability), offsets in elements of the
    flat `params`/`grads` buffers (1-D, C-contiguous, one float dtype). loss: a name of
    _NET_LOSSES with reduction ('mean'|'sum'), label_smoothing, weight (class weights or
    pos_weight), delta. optim: a name of _NET_OPTIMS, its hyperparameters (torch names:
    lr, momentum, ..., betas as beta1/beta2, decoupled for AdamW), its state buffers
    (s1, s2, s3: arrays like params, or None) and step (updates done so far). The arrays are
    used in place, never copied: the model and the optimizer see every update. l2 (>= 0):
    adds l2 * W / batch rows to every weight gradient, biases untouched (scikit-learn's
    alpha; not part of the returned loss). adam_eps_uncorrected: Adam adds eps to the
    uncorrected root of the second moment, as scikit-learn does (default: PyTorch's form).
    """
    cdef fastnn_net net
    cdef fastnn_unit *units
    cdef fastnn_op *ops
    cdef readonly object input_shape
    cdef object keep
    cdef object dist_scratch
    cdef readonly object dtype
    cdef readonly object metric_sums
    cdef readonly int64_t in_features, out_features, max_batch

    def __cinit__(self):
        self.units = NULL
        self.ops = NULL

    def __dealloc__(self):
        free(self.units)
        self.units = NULL
        free(self.ops)
        self.ops = NULL

    def __init__(self, units, params, grads, *, loss="cross_entropy", reduction="mean",
                 label_smoothing=0.0, weight=None, delta=1.0, optim="sgd", hyper=None,
                 states=(None, None, None), step=0, max_batch=256, l2=0.0,
                 adam_eps_uncorrected=False, ops=None, stats=None, row_bytes=0):
        """ops (instead of units, which must then be empty): a layer plan, a sequence of
        dicts with the fields of fastnn_op (csrc/include/fastnn/plan.h; 'kind' and 'act'
        by name, as fastnn.plan builds them), stats: the running-statistics buffer (like
        params, or None), row_bytes: the ops' arena bytes per batch row."""
        fn = "FusedNet"
        cdef cnp.ndarray P = _array(params, fn, "params")
        P = _state(P, fn, "params", P)
        cdef cnp.ndarray G = _state(grads, fn, "grads", P)
        if _overlap(P, G):
            raise ValueError(f"{_sig(fn, 'grads')} overlaps 'params' in memory")
        units = [tuple(u) for u in units]
        if ops is not None:
            if units:
                raise ValueError(f"{_sig(fn, 'units')} must be empty when 'ops' is given")
        elif not units or len(units) > 64:
            raise ValueError(f"{_sig(fn, 'units')} must hold 1 to 64 units, got {len(units)}")
        if loss not in _NET_LOSSES:
            raise ValueError(f"{_sig(fn, 'loss')} must be one of {sorted(_NET_LOSSES)}, got {loss!r}")
        if optim not in _NET_OPTIMS:
            raise ValueError(f"{_sig(fn, 'optim')} must be one of {sorted(_NET_OPTIMS)}, got {optim!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"{_sig(fn, 'reduction')} must be 'mean' or 'sum', got {reduction!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise ValueError(f"{_sig(fn, 'max_batch')} must be an int >= 1, got {max_batch!r}")
        self.units = <fastnn_unit *>malloc(len(units) * sizeof(fastnn_unit))
        if self.units == NULL:
            raise MemoryError(fn)
        cdef int i
        prev = None
        for i, u in enumerate(units):
            if len(u) != 6:
                raise ValueError(f"{_sig(fn, 'units')}[{i}] must be (in, out, weight_offset, "
                                 f"bias_offset, activation, dropout), got {u!r}")
            fin, fout, w, b, act, drop = u
            for name, v in (("in", fin), ("out", fout), ("weight_offset", w), ("bias_offset", b)):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise TypeError(f"{_sig(fn, 'units')}[{i}] {name} must be an int, got {v!r}")
            # Python ints do not wrap: check the extents before C sees them
            if fin < 1 or fout < 1 or (prev is not None and fin != prev):
                raise ValueError(f"{_sig(fn, 'units')}[{i}] has in={fin}, out={fout}: sizes must "
                                 f"be >= 1 and chain (in = the previous unit's out {prev})")
            if w < 0 or w + fin * fout > P.size or b < -1 or (b >= 0 and b + fout > P.size):
                raise ValueError(f"{_sig(fn, 'units')}[{i}] has weight_offset={w}, "
                                 f"bias_offset={b} for a {fout}x{fin} layer: the weights and "
                                 f"bias must lie inside 'params' ({P.size} elements)")
            prev = fout
            code, p, p2 = _activation_spec(act, fn)
            self.units[i].in_ = fin
            self.units[i].out = fout
            self.units[i].w = w
            self.units[i].b = b
            self.units[i].act = code
            self.units[i].p = p
            self.units[i].p2 = p2
            self.units[i].drop = _float_arg(drop, fn, "units")
        keep = [P, G]
        self.net.nops = 0
        self.net.ops = NULL
        self.net.stats = NULL
        self.net.nstats = 0
        self.net.row_bytes = 0
        self.input_shape = None
        if ops is not None:
            last_out = self._set_ops(fn, ops, P, stats, row_bytes, keep)
        else:
            last_out = units[len(units) - 1][1]
        self.net.dt = _dt(P)
        self.net.nunits = len(units)
        self.net.units = self.units
        self.net.nparams = P.size
        self.net.params = _ptr(P)
        self.net.grads = _ptr(G)
        self.net.loss = _NET_LOSSES[loss]
        self.net.mean = reduction == "mean"
        self.net.delta = _float_arg(delta, fn, "delta")
        self.net.label_smoothing = _float_arg(label_smoothing, fn, "label_smoothing")
        self.net.loss_weight = NULL
        if weight is not None:
            W = _input(weight, fn, "weight", P.dtype)
            if W.ndim != 1 or W.shape[0] != last_out:
                raise ValueError(f"{_sig(fn, 'weight')} must have shape ({last_out},), "
                                 f"got {_shp(W)}")
            keep.append(W)
            self.net.loss_weight = _ptr(W)
        self.net.opt.kind = _NET_OPTIMS[optim]
        hyper = dict(hyper or {})
        unknown = set(hyper) - set(_OPT_FIELDS)
        if unknown:
            raise ValueError(f"{_sig(fn, 'hyper')} has unknown keys {sorted(unknown)}")
        self.net.opt.lr = self.net.opt.momentum = self.net.opt.dampening = 0
        self.net.opt.weight_decay = self.net.opt.beta1 = self.net.opt.beta2 = 0
        self.net.opt.eps = self.net.opt.alpha = self.net.opt.lr_decay = 0
        self.net.opt.nesterov = self.net.opt.maximize = self.net.opt.decoupled = 0
        self.net.opt.amsgrad = self.net.opt.centered = 0
        for k, v in hyper.items():
            self._set_hyper(k, v)
        _check_net_scalars(fn, optim, hyper, self.net.label_smoothing, loss, self.net.delta)
        slots = []
        for j, s in enumerate(states):
            S = None if s is None else _state(s, fn, f"states[{j}]", P)
            if S is not None:
                for other in [P, G] + [x for x in slots if x is not None]:
                    if _overlap(S, other):
                        raise ValueError(f"{_sig(fn, f'states[{j}]')} overlaps another buffer")
                keep.append(S)
            slots.append(S)
        slots += [None] * (3 - len(slots))
        self.net.opt.s1 = _optr(slots[0])
        self.net.opt.s2 = _optr(slots[1])
        self.net.opt.s3 = _optr(slots[2])
        self.net.opt.step = _step(step + 1, fn) - 1
        self.net.max_batch = max_batch
        self.net.l2 = _float_arg(l2, fn, "l2")
        if not self.net.l2 >= 0:
            raise ValueError(f"{_sig(fn, 'l2')} must be >= 0, got {l2!r}")
        self.net.adam_eps_uncorrected = bool(adam_eps_uncorrected)
        self.net.nonfinite_ok = 0
        cdef int64_t nbytes = fastnn_net_arena_bytes(&self.net)
        if nbytes <= 0:
            raise ValueError(f"{_sig(fn, 'units')}: the plan's sizes are invalid or too large "
                             f"for max_batch={max_batch} (a size overflows)")
        cdef cnp.ndarray arena = np.empty(nbytes // 8 + 8, dtype=np.float64)  # + 64-byte alignment
        cdef Py_ssize_t off = (64 - (<size_t>cnp.PyArray_DATA(arena)) % 64) % 64  # C %: unsigned
        self.net.arena = <char *>cnp.PyArray_DATA(arena) + off
        keep.append(arena)
        self.keep = keep
        # losses other than cross-entropy: train() adds the rows' mae, mse and binary accuracy
        self.metric_sums = np.zeros(3, dtype=np.float64)
        self.net.metric_sums = <double *>cnp.PyArray_DATA(self.metric_sums)
        self.dtype = P.dtype
        self.in_features = units[0][0] if ops is None else int(np.prod(self.input_shape))
        self.out_features = last_out
        self.max_batch = max_batch
        st = fastnn_net_check(&self.net)
        if st != FASTNN_OK:
            raise ValueError(f"{fn}: the plan is invalid ({fastnn_status_string(st).decode()}): "
                             f"units must chain (each in_features = previous out_features), "
                             f"offsets must lie inside 'params' ({P.size} elements), dropout in "
                             f"[0, 1), and the optimizer's state buffers must be given")

    def _set_ops(self, fn, ops, cnp.ndarray P, stats, row_bytes, list keep):
        ops = list(ops)
        if not 1 <= len(ops) <= 256:
            raise ValueError(f"{_sig(fn, 'ops')} must hold 1 to 256 ops, got {len(ops)}")
        if isinstance(row_bytes, bool) or not isinstance(row_bytes, (int, np.integer)) \
                or row_bytes < 0:
            raise ValueError(f"{_sig(fn, 'row_bytes')} must be an int >= 0, got {row_bytes!r}")
        self.ops = <fastnn_op *>malloc(len(ops) * sizeof(fastnn_op))
        if self.ops == NULL:
            raise MemoryError(fn)
        memset(self.ops, 0, len(ops) * sizeof(fastnn_op))
        cdef int i, d
        cdef cnp.ndarray S
        for i, o in enumerate(ops):
            kind = _OP_KINDS.get(o.get("kind"))
            if kind is None:
                raise ValueError(f"{_sig(fn, 'ops')}[{i}] kind must be one of "
                                 f"{sorted(_OP_KINDS)}, got {o.get('kind')!r}")
            self.ops[i].kind = kind
            for d in range(3):
                self.ops[i].in_[d] = o["in"][d]
                self.ops[i].out[d] = o["out"][d]
            self.ops[i].w = o.get("w", -1)
            self.ops[i].b = o.get("b", -1)
            self.ops[i].rs = o.get("rs", -1)
            self.ops[i].y = o.get("y", -1)
            self.ops[i].aux = o.get("aux", -1)
            for name in ("kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "groups"):
                v = o.get(name, 1 if name in ("kh", "kw", "sh", "sw", "dh", "dw", "groups") else 0)
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise TypeError(f"{_sig(fn, 'ops')}[{i}] {name} must be an int, got {v!r}")
            self.ops[i].kh, self.ops[i].kw = o.get("kh", 1), o.get("kw", 1)
            self.ops[i].sh, self.ops[i].sw = o.get("sh", 1), o.get("sw", 1)
            self.ops[i].ph, self.ops[i].pw = o.get("ph", 0), o.get("pw", 0)
            self.ops[i].dh, self.ops[i].dw = o.get("dh", 1), o.get("dw", 1)
            self.ops[i].groups = o.get("groups", 1)
            self.ops[i].count_include_pad = bool(o.get("count_include_pad", True))
            code, p, p2 = _activation_spec(o.get("act", "identity"), fn)
            self.ops[i].act = code
            self.ops[i].p = p
            self.ops[i].p2 = p2
            self.ops[i].drop = _float_arg(o.get("drop", 0.0), fn, "ops")
            self.ops[i].eps = _float_arg(o.get("eps", 0.0), fn, "ops")
            self.ops[i].momentum = _float_arg(o.get("momentum", 0.0), fn, "ops")
        self.net.nops = len(ops)
        self.net.ops = self.ops
        self.net.nunits = 0
        self.net.row_bytes = row_bytes
        if stats is not None:
            if not isinstance(stats, np.ndarray):
                raise TypeError(f"{_sig(fn, 'stats')} must be a numpy array, got "
                                f"{type(stats).__name__}")
            S = stats
            if S.dtype != P.dtype or S.ndim != 1 or not S.flags.c_contiguous or not S.flags.writeable:
                raise ValueError(f"{_sig(fn, 'stats')} must be a writable 1-D C-contiguous "
                                 f"{P.dtype} array, got {S.dtype} {_shp(S)}")
            keep.append(S)
            self.net.stats = _ptr(S)
            self.net.nstats = S.size
        self.input_shape = tuple(int(v) for v in ops[0]["in"])
        last = ops[len(ops) - 1]["out"]
        return int(last[0]) * int(last[1]) * int(last[2])

    def _flat_x(self, fn, X):
        """X as rows of in_features values: a layer plan takes (rows,) + input_shape too."""
        cdef cnp.ndarray Xa = _input(X, fn, "X", self.dtype)
        if self.input_shape is not None and Xa.ndim == 4:
            if tuple((<object>Xa).shape)[1:] != self.input_shape:
                raise ValueError(f"{_sig(fn, 'X')} must have shape (rows, "
                                 f"{', '.join(map(str, self.input_shape))}), got {_shp(Xa)}")
            Xa = Xa.reshape(Xa.shape[0], -1)
        if Xa.ndim != 2 or Xa.shape[1] != self.in_features:
            want = (f"(rows, {self.in_features})" if self.input_shape is None else
                    f"(rows, {', '.join(map(str, self.input_shape))})")
            raise ValueError(f"{_sig(fn, 'X')} must have shape {want}, got {_shp(Xa)}")
        return Xa

    def _set_hyper(self, str k, v):
        cdef double d = _float_arg(v, "FusedNet", "hyper")
        if k == "lr": self.net.opt.lr = d
        elif k == "momentum": self.net.opt.momentum = d
        elif k == "dampening": self.net.opt.dampening = d
        elif k == "weight_decay": self.net.opt.weight_decay = d
        elif k == "beta1": self.net.opt.beta1 = d
        elif k == "beta2": self.net.opt.beta2 = d
        elif k == "eps": self.net.opt.eps = d
        elif k == "alpha": self.net.opt.alpha = d
        elif k == "lr_decay": self.net.opt.lr_decay = d
        elif k == "nesterov": self.net.opt.nesterov = bool(v)
        elif k == "maximize": self.net.opt.maximize = bool(v)
        elif k == "decoupled": self.net.opt.decoupled = bool(v)
        elif k == "amsgrad": self.net.opt.amsgrad = bool(v)
        elif k == "centered": self.net.opt.centered = bool(v)
        else:
            raise ValueError(f"FusedNet: unknown hyperparameter {k!r}")

    property buffer_size:
        """Elements of the flat parameter (and gradient) buffer."""
        def __get__(self):
            return self.keep[0].size

    property step:
        """Optimizer updates done so far (the next step is step + 1)."""
        def __get__(self):
            return self.net.opt.step
        def __set__(self, v):
            self.net.opt.step = _step(v + 1, "FusedNet") - 1

    property nonfinite_ok:
        """False (default): train() stops at the first batch whose loss is NaN or infinite,
        before its update, and raises NonFiniteLossError. True: it trains on regardless."""
        def __get__(self):
            return bool(self.net.nonfinite_ok)
        def __set__(self, v):
            self.net.nonfinite_ok = bool(v)

    property lr:
        def __get__(self):
            return self.net.opt.lr
        def __set__(self, v):
            self.net.opt.lr = _float_arg(v, "FusedNet", "lr")

    def threads(self, batch_size):
        """Threads a train() call with this batch size uses: 1, or a team that runs all of its
        steps in one parallel region (chosen by the step's size, capped by set_num_threads)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"FusedNet.threads: batch_size must be a positive int, got {batch_size!r}")
        return fastnn_net_threads(&self.net, batch_size)

    def train(self, X, Y, index, int64_t batch_size, seed=0):
        """One optimizer step per mini-batch index[0:bs], index[bs:2bs], ... of X, Y rows.
        Returns (sum of batch loss * batch rows, correctly classified rows). With a loss
        other than cross-entropy the rows' training metrics are added to metric_sums
        (float64 [mae, mse, binary accuracy], each a sum over rows of the row's mean over
        outputs; see fastnn_net.metric_sums): zero it to start counting."""
        fn = "FusedNet.train"
        cdef cnp.ndarray Xa = self._flat_x(fn, X)
        cdef int64_t rows = Xa.shape[0]
        cdef cnp.ndarray Ya
        if self.net.loss == FASTNN_NET_CROSS_ENTROPY:
            Ya = _labels(Y, fn, rows)
        else:
            Ya = _input(Y, fn, "Y", self.dtype)
            if Ya.ndim != 2 or Ya.shape[0] != rows or Ya.shape[1] != self.out_features:
                raise ValueError(f"{_sig(fn, 'Y')} must have shape ({rows}, {self.out_features}), "
                                 f"got {_shp(Ya)}")
        cdef cnp.ndarray I = _int64(index, fn, "index")
        if I.ndim != 1:
            raise ValueError(f"{_sig(fn, 'index')} must be 1-D, got shape {_shp(I)}")
        if I.size and (I.min() < 0 or I.max() >= rows):
            raise ValueError(f"{_sig(fn, 'index')} must hold row numbers in [0, {rows})")
        if batch_size < 1 or batch_size > self.max_batch:
            raise ValueError(f"{_sig(fn, 'batch_size')} must be in [1, {self.max_batch}], "
                             f"got {batch_size}")
        cdef double loss_sum = 0
        cdef int64_t correct = 0, n = I.size
        cdef uint64_t s = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)
        cdef void *px = _ptr(Xa)
        cdef void *py = _ptr(Ya)
        cdef int64_t *pi = <int64_t *>_ptr(I)
        cdef fastnn_status st
        with nogil:
            st = fastnn_net_train(&self.net, px, py, rows, pi, n, batch_size, s, &loss_sum,
                                  &correct)
        if st == FASTNN_ELABEL:
            raise ValueError(f"{_sig(fn, 'Y')} must be class indices in [0, {self.out_features})")
        if st == FASTNN_ENONFINITE:
            raise NonFiniteLossError(f"{fn}: the loss of the batch after optimizer step "
                                     f"{self.net.opt.step} is not finite; that batch made no "
                                     f"update", self.net.opt.step)
        _check(st, fn)
        return loss_sum, correct

    def _train_args(self, fn, X, Y, index, int64_t batch_size):
        cdef cnp.ndarray Xa = self._flat_x(fn, X)
        rows = Xa.shape[0]
        if self.net.loss == FASTNN_NET_CROSS_ENTROPY:
            Ya = _labels(Y, fn, rows)
        else:
            Ya = _input(Y, fn, "Y", self.dtype)
            if Ya.ndim != 2 or Ya.shape[0] != rows or Ya.shape[1] != self.out_features:
                raise ValueError(f"{_sig(fn, 'Y')} must have shape ({rows}, {self.out_features}), "
                                 f"got {_shp(Ya)}")
        I = np.ascontiguousarray(index, dtype=np.int64)
        if I.ndim != 1:
            raise ValueError(f"{_sig(fn, 'index')} must be 1-D, got shape {_shp(I)}")
        if I.size and (I.min() < 0 or I.max() >= rows):
            raise ValueError(f"{_sig(fn, 'index')} must hold row numbers in [0, {rows})")
        if batch_size < 1 or batch_size > self.max_batch:
            raise ValueError(f"{_sig(fn, 'batch_size')} must be in [1, {self.max_batch}], "
                             f"got {batch_size}")
        return Xa, Ya, I

    def train_dist(self, X, Y, index, int64_t batch_size, seed=0, *, reduce=None, int rank=0,
                   int size=1, int64_t shards=0, grads=None, reduced=None):
        """Data-parallel train(): index[0:bs], index[bs:2bs], ... are global batches; this rank
        computes the gradient of its part of each (rows [B rank / size, B (rank+1) / size),
        or with shards > 0 its block of shards summed over a fixed tree: see
        fastnn_net_train_dist), then calls reduce(grads, step) with the flat gradient array,
        which must leave the gradient of the whole batch in it (in place), and updates the
        parameters. reduce's exception is raised here. Returns this rank's shares
        (loss sum, correct rows): sum them over the ranks.
        grads: an array (like the net's gradient buffer: same dtype and size, C-contiguous)
        that the gradients go to during this call instead of the net's own buffer, e.g. one in
        memory the ranks share; its padding must be zero. At the end (also on an error) the
        net's own buffer gets its contents, the last gradient, as train() leaves it.
        reduced: an array like grads where reduce leaves the batch gradient instead of in
        grads (e.g. one sum the ranks share); the update reads it, and the net's own buffer
        gets its contents at the end."""
        fn = "FusedNet.train_dist"
        cdef cnp.ndarray own = self.keep[1]
        cdef cnp.ndarray G = own
        if grads is not None:
            G = _state(grads, fn, "grads", own)
            for other in self.keep:
                if other is not own and isinstance(other, cnp.ndarray) and _overlap(G, other):
                    raise ValueError(f"{_sig(fn, 'grads')} overlaps the net's parameters, "
                                     f"optimizer state or working memory")
        cdef cnp.ndarray R = None
        if reduced is not None:
            R = _state(reduced, fn, "reduced", own)
            for other in self.keep + [G]:
                if other is not own and isinstance(other, cnp.ndarray) and _overlap(R, other):
                    raise ValueError(f"{_sig(fn, 'reduced')} overlaps 'grads', the net's "
                                     f"parameters, optimizer state or working memory")
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"{_sig(fn, 'rank')} must be in [0, size={size}), got {rank}")
        if shards < 0 or (shards and shards % size):
            raise ValueError(f"{_sig(fn, 'shards')} must be 0 or a multiple of size ({size}), "
                             f"got {shards}")
        if reduce is None and size > 1:
            raise ValueError(f"{_sig(fn, 'reduce')} is required with size > 1")
        Xa, Ya, I = self._train_args(fn, X, Y, index, batch_size)
        if G is not own and (_overlap(G, Xa) or _overlap(G, Ya) or _overlap(G, I)):
            raise ValueError(f"{_sig(fn, 'grads')} overlaps 'X', 'Y' or 'index' in memory")
        if R is not None and (_overlap(R, Xa) or _overlap(R, Ya) or _overlap(R, I)):
            raise ValueError(f"{_sig(fn, 'reduced')} overlaps 'X', 'Y' or 'index' in memory")
        cdef fastnn_net_dist d
        d.rank = rank
        d.size = size
        d.shards = shards
        d.scratch = NULL
        d.reduce = NULL
        d.ctx = NULL
        d.reduced = NULL if R is None else _ptr(R)
        holder = [reduce, G, None]
        if reduce is not None:
            d.reduce = _reduce_grads
            d.ctx = <void *>holder
        cdef int64_t nscratch = fastnn_net_dist_scratch(&self.net, &d)
        cdef cnp.ndarray S
        if nscratch > 0:
            # zeros: the kernels never write the buffer's padding, which the tree adds up
            if self.dist_scratch is None or self.dist_scratch.size < nscratch:
                self.dist_scratch = np.zeros(nscratch, dtype=self.dtype)
            S = self.dist_scratch
            d.scratch = cnp.PyArray_DATA(S)
        cdef double loss_sum = 0
        cdef int64_t correct = 0, n = I.size, rows = Xa.shape[0]
        cdef uint64_t s = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)
        cdef void *px = _ptr(Xa)
        cdef void *py = _ptr(Ya)
        cdef int64_t *pi = <int64_t *>_ptr(I)
        cdef fastnn_status st
        cdef void *own_ptr = self.net.grads
        self.net.grads = _ptr(G)
        try:
            with nogil:
                st = fastnn_net_train_dist(&self.net, &d, px, py, rows, pi, n, batch_size, s,
                                           &loss_sum, &correct)
        finally:
            self.net.grads = own_ptr
            if R is not None:
                np.copyto(own, R)
            elif G is not own:
                np.copyto(own, G)
        if holder[2] is not None:
            raise holder[2]
        if st == FASTNN_ELABEL:
            raise ValueError(f"{_sig(fn, 'Y')} must be class indices in [0, {self.out_features})")
        if st == FASTNN_ENONFINITE:
            raise NonFiniteLossError(f"{fn}: the loss of the global batch after optimizer "
                                     f"step {self.net.opt.step} is not finite (on some rank); "
                                     f"no rank made that update", self.net.opt.step)
        _check(st, fn)
        return loss_sum, correct

    def forward(self, X, out=None):
        """The network on X (rows, in_features) without dropout."""
        fn = "FusedNet.forward"
        cdef cnp.ndarray Xa = self._flat_x(fn, X)
        cdef int64_t rows = Xa.shape[0]
        cdef cnp.ndarray O = _output(out, fn, (rows, self.out_features), self.dtype, [("X", Xa)],
                                     False)
        cdef void *po = _ptr(O)
        cdef void *px = _ptr(Xa)
        cdef fastnn_status st
        with nogil:
            st = fastnn_net_forward(&self.net, po, px, rows)
        _check(st, fn)
        return O


# ---- pooling and normalization (NCHW) ------------------------------------------------------
# Each function calls the kernel of csrc/layers/ or, after _use_reference(True), its naive
# reference of csrc/ref/ (the tests compare the two).

cdef bint _POOLNORM_REF = False


def _use_reference(flag):
    """Route the pooling and normalization functions below to their naive C references
    (True) or to the kernels (False); returns the previous setting. For tests."""
    global _POOLNORM_REF
    cdef bint old = _POOLNORM_REF
    _POOLNORM_REF = bool(flag)
    return old


cdef tuple _pair(object v, str fn, str arg, int64_t low):
    """An int or a pair of ints, each >= low, as (a, b)."""
    cdef tuple t
    if isinstance(v, (tuple, list)):
        t = tuple(v)
    else:
        t = (v, v)
    if len(t) != 2 or any(isinstance(e, bool) or not isinstance(e, (int, np.integer))
                          for e in t):
        raise TypeError(f"{_sig(fn, arg)} must be an int or a pair of ints, got {v!r}")
    if t[0] < low or t[1] < low:
        raise ValueError(f"{_sig(fn, arg)} must be >= {low}, got {v!r}")
    return (int(t[0]), int(t[1]))


cdef cnp.ndarray _image(object x, str fn, str arg, object dtype):
    cdef cnp.ndarray X = _input(x, fn, arg, dtype)
    if X.ndim != 4:
        raise ValueError(f"{_sig(fn, arg)} must be a 4-D array (N, C, H, W), got shape "
                         f"{_shp(X)}")
    if X.shape[2] < 1 or X.shape[3] < 1:
        raise ValueError(f"{_sig(fn, arg)} must have H and W >= 1, got shape {_shp(X)}")
    return X


cdef tuple _pool_geometry(str fn, cnp.ndarray X, kernel_size, stride, padding):
    """(kh, kw, sh, sw, ph, pw, oh, ow) checked against X (N, C, H, W)."""
    kh, kw = _pair(kernel_size, fn, "kernel_size", 1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        sh, sw = kh, kw
    else:
        sh, sw = _pair(stride, fn, "stride", 1)
    ph, pw = _pair(padding, fn, "padding", 0)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"{_sig(fn, 'padding')} must be at most half of kernel_size "
                         f"{(kh, kw)}, got {(ph, pw)}")
    cdef int64_t oh = fastnn_pool_out_size(X.shape[2], kh, sh, ph)
    cdef int64_t ow = fastnn_pool_out_size(X.shape[3], kw, sw, pw)
    if oh < 1 or ow < 1:
        raise ValueError(f"{_sig(fn, 'x')} of shape {_shp(X)} is smaller than kernel_size "
                         f"{(kh, kw)} with padding {(ph, pw)}")
    return kh, kw, sh, sw, ph, pw, oh, ow


def max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False):
    """Max pooling of x (N, C, H, W) float32/float64 over kernel_size windows (int or pair)
    moved by stride (default: kernel_size) over x padded by padding (<= kernel_size / 2) with
    -inf: y (N, C, OH, OW), OH = (H + 2 padding - kernel) // stride + 1. The first maximum
    of a window wins ties; a NaN in a window is its maximum. return_indices: also the int64
    array (N, C, OH, OW) of each maximum's position h * W + w in its input plane, which
    max_pool2d_backward needs. Raises TypeError (dtype, argument types), ValueError (shapes,
    padding, window larger than the padded image)."""
    fn = "max_pool2d"
    cdef cnp.ndarray X = _image(x, fn, "x", None)
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(fn, X, kernel_size, stride, padding)
    cdef int64_t n = X.shape[0], c = X.shape[1], h = X.shape[2], w = X.shape[3]
    cdef cnp.ndarray Y = np.empty((n, c, oh, ow), X.dtype)
    cdef cnp.ndarray I = np.empty((n, c, oh, ow), np.int64)
    cdef fastnn_dtype dt = _dt(X)
    cdef void *py = _ptr(Y)
    cdef void *px = _ptr(X)
    cdef int64_t *pi = <int64_t *>_ptr(I)
    cdef int64_t kh_ = kh, kw_ = kw, sh_ = sh, sw_ = sw, ph_ = ph, pw_ = pw
    cdef bint ref = _POOLNORM_REF
    cdef fastnn_status st
    with nogil:
        if ref:
            st = fastnn_maxpool2d_ref(dt, py, pi, px, n, c, h, w, kh_, kw_, sh_, sw_, ph_, pw_)
        else:
            st = fastnn_maxpool2d(dt, py, pi, px, n, c, h, w, kh_, kw_, sh_, sw_, ph_, pw_)
    _check(st, fn)
    return (Y, I) if return_indices else Y


def max_pool2d_backward(dy, x, indices, kernel_size, stride=None, padding=0):
    """Gradient of max_pool2d with respect to x (N, C, H, W): dy (N, C, OH, OW) summed into
    the positions given by indices (from max_pool2d(..., return_indices=True)). Returns dx of
    x's shape and dtype. Raises ValueError when an index is outside [0, H W)."""
    fn = "max_pool2d_backward"
    cdef cnp.ndarray X = _image(x, fn, "x", None)
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(fn, X, kernel_size, stride, padding)
    cdef int64_t n = X.shape[0], c = X.shape[1], h = X.shape[2], w = X.shape[3]
    cdef cnp.ndarray DY = _input(dy, fn, "dy", X.dtype)
    if _shp(DY) != (n, c, oh, ow):
        raise ValueError(f"{_sig(fn, 'dy')} must have the pooled shape {(n, c, oh, ow)}, "
                         f"got {_shp(DY)}")
    cdef cnp.ndarray I = _int64(indices, fn, "indices")   # converted to native int64
    if _shp(I) != (n, c, oh, ow):
        raise ValueError(f"{_sig(fn, 'indices')} must have shape {(n, c, oh, ow)}, got "
                         f"{_shp(I)}")
    cdef cnp.ndarray DX = np.empty((n, c, h, w), X.dtype)
    cdef fastnn_dtype dt = _dt(X)
    cdef void *pdx = _ptr(DX)
    cdef void *pdy = _ptr(DY)
    cdef int64_t *pi = <int64_t *>_ptr(I)
    cdef int64_t kh_ = kh, kw_ = kw, sh_ = sh, sw_ = sw, ph_ = ph, pw_ = pw
    cdef bint ref = _POOLNORM_REF
    cdef fastnn_status st
    with nogil:
        if ref:
            st = fastnn_maxpool2d_backward_ref(dt, pdx, pdy, pi, n, c, h, w, kh_, kw_, sh_,
                                               sw_, ph_, pw_)
        else:
            st = fastnn_maxpool2d_backward(dt, pdx, pdy, pi, n, c, h, w, kh_, kw_, sh_, sw_,
                                           ph_, pw_)
    if st == FASTNN_EINVAL:
        raise ValueError(f"{_sig(fn, 'indices')} must hold positions in [0, {h * w}) of the "
                         f"input planes")
    _check(st, fn)
    return DX


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Average pooling of x (N, C, H, W) float32/float64: each window's sum over its pixels
    inside the image, divided by kernel_h * kernel_w (count_include_pad=True, zero padding
    counted) or by the number of its pixels inside the image. Geometry and errors as
    max_pool2d. Returns y (N, C, OH, OW)."""
    fn = "avg_pool2d"
    cdef cnp.ndarray X = _image(x, fn, "x", None)
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(fn, X, kernel_size, stride, padding)
    cdef int64_t n = X.shape[0], c = X.shape[1], h = X.shape[2], w = X.shape[3]
    cdef cnp.ndarray Y = np.empty((n, c, oh, ow), X.dtype)
    cdef fastnn_dtype dt = _dt(X)
    cdef void *py = _ptr(Y)
    cdef void *px = _ptr(X)
    cdef int64_t kh_ = kh, kw_ = kw, sh_ = sh, sw_ = sw, ph_ = ph, pw_ = pw
    cdef int cip = 1 if count_include_pad else 0
    cdef bint ref = _POOLNORM_REF
    cdef fastnn_status st
    with nogil:
        if ref:
            st = fastnn_avgpool2d_ref(dt, py, px, n, c, h, w, kh_, kw_, sh_, sw_, ph_, pw_, cip)
        else:
            st = fastnn_avgpool2d(dt, py, px, n, c, h, w, kh_, kw_, sh_, sw_, ph_, pw_, cip)
    _check(st, fn)
    return Y


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Gradient of avg_pool2d with respect to x (N, C, H, W) given dy (N, C, OH, OW)."""
    fn = "avg_pool2d_backward"
    cdef cnp.ndarray X = _image(x, fn, "x", None)
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(fn, X, kernel_size, stride, padding)
    cdef int64_t n = X.shape[0], c = X.shape[1], h = X.shape[2], w = X.shape[3]
    cdef cnp.ndarray DY = _input(dy, fn, "dy", X.dtype)
    if _shp(DY) != (n, c, oh, ow):
        raise ValueError(f"{_sig(fn, 'dy')} must have the pooled shape {(n, c, oh, ow)}, "
                         f"got {_shp(DY)}")
    cdef cnp.ndarray DX = np.empty((n, c, h, w), X.dtype)
    cdef fastnn_dtype dt = _dt(X)
    cdef void *pdx = _ptr(DX)
    cdef void *pdy = _ptr(DY)
    cdef int64_t kh_ = kh, kw_ = kw, sh_ = sh, sw_ = sw, ph_ = ph, pw_ = pw
    cdef int cip = 1 if count_include_pad else 0
    cdef bint ref = _POOLNORM_REF
    cdef fastnn_status st
    with nogil:
        if ref:
            st = fastnn_avgpool2d_backward_ref(dt, pdx, pdy, n, c, h, w, kh_, kw_, sh_, sw_,
                                               ph_, pw_, cip)
        else:
            st = fastnn_avgpool2d_backward(dt, pdx, pdy, n, c, h, w, kh_, kw_, sh_, sw_, ph_,
                                           pw_, cip)
    _check(st, fn)
    return DX


cdef _check_output_size_one(object output_size, str fn):
    if output_size not in (1, (1, 1), [1, 1]):
        raise ValueError(f"{_sig(fn, 'output_size')} must be 1 or (1, 1) (global average "
                         f"pooling; other sizes are not supported), got {output_size!r}")


def adaptive_avg_pool2d(x, output_size=1):
    """Global average pooling: y (N, C, 1, 1) = the mean of each plane of x (N, C, H, W).
    Only output_size 1 / (1, 1) is supported (ValueError otherwise)."""
    fn = "adaptive_avg_pool2d"
    _check_output_size_one(output_size, fn)
    cdef cnp.ndarray X = _image(x, fn, "x", None)
    cdef int64_t n = X.shape[0], c = X.shape[1], hw = X.shape[2] * X.shape[3]
    cdef cnp.ndarray Y = np.empty((n, c, 1, 1), X.dtype)
    cdef fastnn_dtype dt = _dt(X)
    cdef void *py = _ptr(Y)
    cdef void *px = _ptr(X)
    cdef bint ref = _POOLNORM_REF
    cdef fastnn_status st
    with nogil:
        if ref:
            st = fastnn_global_avgpool_ref(dt, py, px, n, c, hw)
        else:
            st = fastnn_global_avgpool(dt, py, px, n, c, hw)
    _check(st, fn)
    return Y


def adaptive_avg_pool2d_backward(dy, x, output_size=1):
    """Gradient of adaptive_avg_pool2d: dx (N, C, H, W) = dy (N, C, 1, 1) / (H W)."""
    fn = "adaptive_avg_pool2d_backward"
    _check_output_size_one(output_size, fn)
    cdef cnp.ndarray X = _image(x, fn, "x", None)
    cdef int64_t n = X.shape[0], c = X.shape[1], hw = X.shape[2] * X.shape[3]
    cdef cnp.ndarray DY = _input(dy, fn, "dy", X.dtype)
    if _shp(DY) != (n, c, 1, 1):
        raise ValueError(f"{_sig(fn, 'dy')} must have shape {(n, c, 1, 1)}, got {_shp(DY)}")
    cdef cnp.ndarray DX = np.empty(_shp(X), X.dtype)
    cdef fastnn_dtype dt = _dt(X)
    cdef void *pdx = _ptr(DX)
    cdef void *pdy = _ptr(DY)
    cdef bint ref = _POOLNORM_REF
    cdef fastnn_status st
    with nogil:
        if ref:
            st = fastnn_global_avgpool_backward_ref(dt, pdx, pdy, n, c, hw)
        else:
            st = fastnn_global_avgpool_backward(dt, pdx, pdy, n, c, hw)
    _check(st, fn)
    return DX


cdef tuple _bn_shape(cnp.ndarray X, str fn):
    """(n, c, hw) of a batch-norm input (N, C), (N, C, L) or (N, C, H, W)."""
    if X.ndim < 2 or X.ndim > 4:
        raise ValueError(f"{_sig(fn, 'x')} must be (N, C), (N, C, L) or (N, C, H, W), got "
                         f"shape {_shp(X)}")
    cdef int64_t hw = 1
    for d in _shp(X)[2:]:
        hw *= d
    return X.shape[0], X.shape[1], hw


cdef cnp.ndarray _channel_vec(object v, str fn, str arg, object dtype, int64_t c, bint inplace):
    """None, or a (c,) array of dtype; inplace: it is updated, so it must be the caller's
    own writable C-contiguous array (never a copy)."""
    if v is None:
        return None
    cdef cnp.ndarray a
    if inplace:
        if not isinstance(v, np.ndarray):
            raise TypeError(f"{_sig(fn, arg)} must be a numpy array (updated in place), got "
                            f"{type(v).__name__}")
        a = _array(v, fn, arg)     # float32/float64, native byte order, aligned
        if a.dtype != dtype:
            raise TypeError(f"{_sig(fn, arg)} must have dtype {dtype} like 'x', got {a.dtype}")
        if not a.flags.writeable or not cnp.PyArray_IS_C_CONTIGUOUS(a):
            raise ValueError(f"{_sig(fn, arg)} must be writable and C-contiguous (it is "
                             f"updated in place)")
    else:
        a = _input(v, fn, arg, dtype)
    if _shp(a) != (c,):
        raise ValueError(f"{_sig(fn, arg)} must have shape ({c},) (one value per channel), "
                         f"got {_shp(a)}")
    return a


cdef inline void *_ptr_or_null(cnp.ndarray a):
    return NULL if a is None else cnp.PyArray_DATA(a)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, return_stats=False):
    """Batch normalization of x (N, C), (N, C, L) or (N, C, H, W) per channel, as
    torch.nn.functional.batch_norm: training uses the batch mean and (biased, two-pass)
    variance over N*L or N*H*W values and, when running_mean / running_var (C,) arrays are
    given, updates them in place to (1 - momentum) running + momentum batch (unbiased batch
    variance); training=False normalizes with the running statistics (required).
    y = (x - mean) / sqrt(var + eps) * weight + bias (weight, bias (C,) or None).
    return_stats: return (y, save_mean, save_invstd), the (C,) statistics used, which
    batch_norm_backward needs. Raises ValueError for fewer than 2 values per channel in
    training (as PyTorch), for bad shapes or momentum outside [0, 1]; TypeError for dtypes."""
    fn = "batch_norm"
    cdef cnp.ndarray X = _input(x, fn, "x", None)
    n, c, hw = _bn_shape(X, fn)
    cdef bint tr = bool(training)
    cdef cnp.ndarray RM = _channel_vec(running_mean, fn, "running_mean", X.dtype, c, True)
    cdef cnp.ndarray RV = _channel_vec(running_var, fn, "running_var", X.dtype, c, True)
    cdef cnp.ndarray W = _channel_vec(weight, fn, "weight", X.dtype, c, False)
    cdef cnp.ndarray B = _channel_vec(bias, fn, "bias", X.dtype, c, False)
    if (RM is None) != (RV is None):
        raise ValueError(f"{fn}: pass both 'running_mean' and 'running_var' or neither")
    if not tr and RM is None:
        raise ValueError(f"{_sig(fn, 'running_mean')} is required when training=False")
    cdef double mom = _float_arg(momentum, fn, "momentum")
    cdef double ep = _float_arg(eps, fn, "eps")
    if not 0.0 <= mom <= 1.0:
        raise ValueError(f"{_sig(fn, 'momentum')} must be in [0, 1], got {momentum!r}")
    if not ep >= 0.0:
        raise ValueError(f"{_sig(fn, 'eps')} must be >= 0, got {eps!r}")
    if tr and c > 0 and n * hw < 2:
        raise ValueError(f"{fn}: expected more than 1 value per channel when training, got "
                         f"input of shape {_shp(X)}")
    for a, name in ((RM, "running_mean"), (RV, "running_var")):
        if a is not None and _overlap(a, X):
            raise ValueError(f"{_sig(fn, name)} overlaps input 'x' in memory")
    cdef cnp.ndarray Y = np.empty(_shp(X), X.dtype)
    cdef cnp.ndarray SM = np.empty(c, X.dtype)
    cdef cnp.ndarray SI = np.empty(c, X.dtype)
    cdef fastnn_dtype dt = _dt(X)
    cdef void *py = _ptr(Y)
    cdef void *psm = _ptr(SM)
    cdef void *psi = _ptr(SI)
    cdef void *prm = _ptr_or_null(RM)
    cdef void *prv = _ptr_or_null(RV)
    cdef void *px = _ptr(X)
    cdef void *pw = _ptr_or_null(W)
    cdef void *pb = _ptr_or_null(B)
    cdef int64_t n_ = n, c_ = c, hw_ = hw
    cdef bint ref = _POOLNORM_REF
    cdef fastnn_status st
    with nogil:
        if ref:
            st = fastnn_batchnorm_ref(dt, tr, py, psm, psi, prm, prv, px, pw, pb, n_, c_, hw_,
                                      mom, ep)
        else:
            st = fastnn_batchnorm(dt, tr, py, psm, psi, prm, prv, px, pw, pb, n_, c_, hw_,
                                  mom, ep)
    _check(st, fn)
    return (Y, SM, SI) if return_stats else Y


def batch_norm_backward(dy, x, save_mean, save_invstd, weight=None, training=True):
    """Gradients of batch_norm given dy and x (same shape), the save_mean / save_invstd (C,)
    that batch_norm(..., return_stats=True) returned and its weight (None: 1). Returns
    (dx, dweight, dbias): dbias = sum of dy per channel, dweight = sum of dy * xhat;
    training=True includes the gradient through the batch statistics, training=False treats
    the statistics as constants (evaluation mode)."""
    fn = "batch_norm_backward"
    cdef cnp.ndarray X = _input(x, fn, "x", None)
    n, c, hw = _bn_shape(X, fn)
    cdef cnp.ndarray DY = _input(dy, fn, "dy", X.dtype)
    _same_shape(X, "x", DY, "dy", fn)
    cdef cnp.ndarray SM = _channel_vec(save_mean, fn, "save_mean", X.dtype, c, False)
    cdef cnp.ndarray SI = _channel_vec(save_invstd, fn, "save_invstd", X.dtype, c, False)
    if SM is None or SI is None:
        raise ValueError(f"{fn}: 'save_mean' and 'save_invstd' are required (from "
                         f"batch_norm(..., return_stats=True))")
    cdef cnp.ndarray W = _channel_vec(weight, fn, "weight", X.dtype, c, False)
    cdef bint tr = bool(training)
    cdef cnp.ndarray DX = np.empty(_shp(X), X.dtype)
    cdef cnp.ndarray DW = np.empty(c, X.dtype)
    cdef cnp.ndarray DB = np.empty(c, X.dtype)
    cdef fastnn_dtype dt = _dt(X)
    cdef void *pdx = _ptr(DX)
    cdef void *pdw = _ptr(DW)
    cdef void *pdb = _ptr(DB)
    cdef void *pdy = _ptr(DY)
    cdef void *px = _ptr(X)
    cdef void *psm = _ptr(SM)
    cdef void *psi = _ptr(SI)
    cdef void *pw = _ptr_or_null(W)
    cdef int64_t n_ = n, c_ = c, hw_ = hw
    cdef bint ref = _POOLNORM_REF
    cdef fastnn_status st
    with nogil:
        if ref:
            st = fastnn_batchnorm_backward_ref(dt, tr, pdx, pdw, pdb, pdy, px, psm, psi, pw,
                                               n_, c_, hw_, 0.0)
        else:
            st = fastnn_batchnorm_backward(dt, tr, pdx, pdw, pdb, pdy, px, psm, psi, pw, n_,
                                           c_, hw_, 0.0)
    _check(st, fn)
    return DX, DW, DB


cdef tuple _ln_shape(cnp.ndarray X, object normalized_shape, str fn):
    """(rows, d, tuple(normalized_shape)): the trailing axes of X must equal it."""
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
        ns = (int(normalized_shape),)
    elif isinstance(normalized_shape, (tuple, list)) and all(
            isinstance(e, (int, np.integer)) and not isinstance(e, bool)
            for e in normalized_shape) and len(normalized_shape) > 0:
        ns = tuple(int(e) for e in normalized_shape)
    else:
        raise TypeError(f"{_sig(fn, 'normalized_shape')} must be an int or a non-empty tuple "
                        f"of ints, got {normalized_shape!r}")
    k = len(ns)
    if X.ndim < k or _shp(X)[X.ndim - k:] != ns or any(e < 1 for e in ns):
        raise ValueError(f"{_sig(fn, 'x')} must end with the normalized_shape {ns}, got shape "
                         f"{_shp(X)}")
    cdef int64_t d = 1, rows = 1
    for e in ns:
        d *= e
    for e in _shp(X)[:X.ndim - k]:
        rows *= e
    return rows, d, ns


cdef cnp.ndarray _elem_param(object v, str fn, str arg, object dtype, tuple ns):
    if v is None:
        return None
    cdef cnp.ndarray a = _input(v, fn, arg, dtype)
    if _shp(a) != ns:
        raise ValueError(f"{_sig(fn, arg)} must have the normalized_shape {ns}, got "
                         f"{_shp(a)}")
    return a


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, return_stats=False):
    """Layer normalization over the trailing normalized_shape axes of x (..., *shape), as
    torch.nn.functional.layer_norm: y = (x - mean) / sqrt(var + eps) * weight + bias with the
    mean and (biased, two-pass) variance of each row of prod(shape) values; weight and bias of
    shape normalized_shape or None. return_stats: (y, mean, rstd), the statistics of each row
    with shape x.shape[:-len(normalized_shape)], which layer_norm_backward needs."""
    fn = "layer_norm"
    cdef cnp.ndarray X = _input(x, fn, "x", None)
    rows, d, ns = _ln_shape(X, normalized_shape, fn)
    cdef cnp.ndarray W = _elem_param(weight, fn, "weight", X.dtype, ns)
    cdef cnp.ndarray B = _elem_param(bias, fn, "bias", X.dtype, ns)
    cdef double ep = _float_arg(eps, fn, "eps")
    if not ep >= 0.0:
        raise ValueError(f"{_sig(fn, 'eps')} must be >= 0, got {eps!r}")
    lead = _shp(X)[:X.ndim - len(ns)]
    cdef cnp.ndarray Y = np.empty(_shp(X), X.dtype)
    cdef cnp.ndarray M = np.empty(lead, X.dtype)
    cdef cnp.ndarray R = np.empty(lead, X.dtype)
    cdef fastnn_dtype dt = _dt(X)
    cdef void *py = _ptr(Y)
    cdef void *pm = _ptr(M)
    cdef void *pr = _ptr(R)
    cdef void *px = _ptr(X)
    cdef void *pw = _ptr_or_null(W)
    cdef void *pb = _ptr_or_null(B)
    cdef int64_t rows_ = rows, d_ = d
    cdef bint ref = _POOLNORM_REF
    cdef fastnn_status st
    with nogil:
        if ref:
            st = fastnn_layernorm_ref(dt, py, pm, pr, px, pw, pb, rows_, d_, ep)
        else:
            st = fastnn_layernorm(dt, py, pm, pr, px, pw, pb, rows_, d_, ep)
    _check(st, fn)
    return (Y, M, R) if return_stats else Y


def layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight=None):
    """Gradients of layer_norm given dy and x (same shape) and the mean / rstd it returned
    with return_stats=True. Returns (dx, dweight, dbias), the last two of normalized_shape
    (sums over the rows of dy * xhat and of dy)."""
    fn = "layer_norm_backward"
    cdef cnp.ndarray X = _input(x, fn, "x", None)
    rows, d, ns = _ln_shape(X, normalized_shape, fn)
    cdef cnp.ndarray DY = _input(dy, fn, "dy", X.dtype)
    _same_shape(X, "x", DY, "dy", fn)
    lead = _shp(X)[:X.ndim - len(ns)]
    cdef cnp.ndarray M = _input(mean, fn, "mean", X.dtype)
    cdef cnp.ndarray R = _input(rstd, fn, "rstd", X.dtype)
    if _shp(M) != lead or _shp(R) != lead:
        raise ValueError(f"{fn}: 'mean' and 'rstd' must have shape {lead}, got {_shp(M)} and "
                         f"{_shp(R)}")
    cdef cnp.ndarray W = _elem_param(weight, fn, "weight", X.dtype, ns)
    cdef cnp.ndarray DX = np.empty(_shp(X), X.dtype)
    cdef cnp.ndarray DW = np.empty(ns, X.dtype)
    cdef cnp.ndarray DB = np.empty(ns, X.dtype)
    cdef fastnn_dtype dt = _dt(X)
    cdef void *pdx = _ptr(DX)
    cdef void *pdw = _ptr(DW)
    cdef void *pdb = _ptr(DB)
    cdef void *pdy = _ptr(DY)
    cdef void *px = _ptr(X)
    cdef void *pm = _ptr(M)
    cdef void *pr = _ptr(R)
    cdef void *pw = _ptr_or_null(W)
    cdef int64_t rows_ = rows, d_ = d
    cdef bint ref = _POOLNORM_REF
    cdef fastnn_status st
    with nogil:
        if ref:
            st = fastnn_layernorm_backward_ref(dt, pdx, pdw, pdb, pdy, px, pm, pr, pw, rows_,
                                               d_, 0.0)
        else:
            st = fastnn_layernorm_backward(dt, pdx, pdw, pdb, pdy, px, pm, pr, pw, rows_, d_,
                                           0.0)
    _check(st, fn)
    return DX, DW, DB


# ---- test hooks: the C checks on their own, without the Python checks in front -------------

def _c_net_check(units, int64_t nparams, int64_t max_batch, int loss=0):
    """fastnn_net_arena_bytes and fastnn_net_check of a plan with these raw unit tuples
    (in, out, w, b) over dummy buffers (never read): (arena bytes, status string). For tests
    of the overflow checks that the Python front end would catch first."""
    cdef fastnn_unit us[64]
    cdef fastnn_net net
    cdef char dummy[64]
    cdef int i
    if not 1 <= len(units) <= 64:
        raise ValueError("1 to 64 units")
    for i, (fin, fout, w, b) in enumerate(units):
        us[i].in_ = fin
        us[i].out = fout
        us[i].w = w
        us[i].b = b
        us[i].act = FASTNN_ACT_IDENTITY
        us[i].p = us[i].p2 = 0
        us[i].drop = 0
    memset(&net, 0, sizeof(net))
    net.dt = FASTNN_F32
    net.nunits = len(units)
    net.units = us
    net.nparams = nparams
    net.params = net.grads = net.arena = dummy
    net.loss = <fastnn_net_loss>loss
    net.opt.kind = FASTNN_OPT_SGD
    net.max_batch = max_batch
    nbytes = fastnn_net_arena_bytes(&net)
    return nbytes, fastnn_status_string(fastnn_net_check(&net)).decode()


def _c_gemm_status(int transa, int transb, int64_t m, int64_t n, int64_t k, int64_t lda,
                   int64_t ldb, int64_t ldc):
    """fastnn_gemm's status for these sizes over a dummy buffer. Only for sizes that its
    checks must refuse (the buffer is 64 bytes): tests of the overflow checks."""
    cdef char dummy[64]
    return fastnn_status_string(fastnn_gemm(FASTNN_F32, transa, transb, m, n, k, 1.0, dummy,
                                            lda, dummy, ldb, 0.0, dummy, ldc)).decode()


def _c_elementwise_status(int64_t n):
    """fastnn_act_forward's status for n elements over a dummy buffer (refused sizes only)."""
    cdef char dummy[64]
    return fastnn_status_string(fastnn_act_forward(FASTNN_F32, FASTNN_ACT_RELU, 0, 0, dummy,
                                                   dummy, n)).decode()


# ---- 2-D convolution -----------------------------------------------------------------------

def _conv_pair(v, str fn, str arg, int lo):
    """An int or a pair of ints, each >= lo, as a 2-tuple."""
    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    ok = len(pair) == 2 and all(isinstance(e, (int, np.integer)) and not isinstance(e, bool)
                                and e >= lo for e in pair)
    if not ok:
        raise ValueError(f"{_sig(fn, arg)} must be an int >= {lo} or a pair of such ints, "
                         f"got {v!r}")
    return int(pair[0]), int(pair[1])


def _conv_padding(padding, str fn, kh, kw, dh, dw, sh, sw):
    """(top, left, bottom, right) padding from an int, a pair, 'valid' or 'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            if sh != 1 or sw != 1:
                raise ValueError(f"{_sig(fn, 'padding')} 'same' needs stride 1 (as PyTorch), "
                                 f"got stride {(sh, sw)}")
            th, tw = dh * (kh - 1), dw * (kw - 1)   # PyTorch: the odd pixel at the bottom/right
            return th // 2, tw // 2, th - th // 2, tw - tw // 2
        raise ValueError(f"{_sig(fn, 'padding')} must be 'same', 'valid', an int >= 0 or a pair, "
                         f"got {padding!r}")
    ph, pw = _conv_pair(padding, fn, "padding", 0)
    return ph, pw, ph, pw


def conv2d_output_shape(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """(N, C_out, H_out, W_out) of conv2d on x of shape input_shape (N, C_in, H, W) and a weight
    of shape weight_shape (C_out, C_in/groups, kH, kW); raises ValueError as conv2d does."""
    return _conv_setup("conv2d", tuple(input_shape), tuple(weight_shape), stride, padding,
                       dilation, groups)[0]


def _conv_setup(str fn, tuple xs, tuple ws, stride, padding, dilation, groups):
    """Validated geometry: (output shape, dict of the fastnn_conv2d_geom fields)."""
    if len(xs) != 4:
        raise ValueError(f"{_sig(fn, 'x')} must be a 4-D array (N, C_in, H, W), got shape {xs}")
    if len(ws) != 4:
        raise ValueError(f"{_sig(fn, 'weight')} must be a 4-D array (C_out, C_in/groups, kH, kW), "
                         f"got shape {ws}")
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{_sig(fn, 'groups')} must be an int >= 1, got {groups!r}")
    groups = int(groups)
    n, cin, h, w = (int(v) for v in xs)
    cout, cig, kh, kw = (int(v) for v in ws)
    if cout < 1 or cig < 1 or kh < 1 or kw < 1:
        raise ValueError(f"{_sig(fn, 'weight')} must have non-zero sizes, got shape {ws}")
    if cout % groups:
        raise ValueError(f"{_sig(fn, 'weight')}: C_out {cout} must be divisible by groups "
                         f"{groups}")
    if cin != cig * groups:
        raise ValueError(f"{_sig(fn, 'x')} must have C_in = weight.shape[1] * groups = "
                         f"{cig * groups} channels, got shape {xs}")
    sh, sw = _conv_pair(stride, fn, "stride", 1)
    dh, dw = _conv_pair(dilation, fn, "dilation", 1)
    pt, pl, pb, pr = _conv_padding(padding, fn, kh, kw, dh, dw, sh, sw)
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{fn}: the kernel (dilated: {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1}) "
                         f"is larger than the padded input {h + pt + pb}x{w + pl + pr}: "
                         f"output size {oh}x{ow}")
    geom = dict(n=n, c_in=cin, h=h, w=w, c_out=cout, kh=kh, kw=kw, stride_h=sh, stride_w=sw,
                pad_h=pt, pad_w=pl, dilation_h=dh, dilation_w=dw, groups=groups, oh=oh, ow=ow)
    return (n, cout, oh, ow), geom


cdef tuple _conv_arrays(str fn, x, weight, stride, padding, dilation, groups):
    cdef cnp.ndarray X = _input(x, fn, "x", None)
    cdef cnp.ndarray Wt = _input(weight, fn, "weight", X.dtype)
    yshape, geom = _conv_setup(fn, _shp(X), _shp(Wt), stride, padding, dilation, groups)
    return X, Wt, yshape, geom


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           activation="identity", out=None):
    """y = act(conv2d(x, weight) + bias), torch.nn.functional.conv2d's semantics.

    x (N, C_in, H, W), weight (C_out, C_in/groups, kH, kW), bias (C_out,) or None, one
    float dtype; stride, dilation: int or pair (>= 1); padding: int or pair (>= 0), 'valid'
    or 'same' (stride 1; an odd total padding puts the extra row/column at the bottom/right,
    as PyTorch). activation as in matmul_bias_act, applied in the same pass. Returns
    y (N, C_out, H_out, W_out). Implicit GEMM: no im2col buffer is built.
    Raises TypeError (dtype) and ValueError (shapes, arguments, an output smaller than 1x1).
    """
    return _conv2d("conv2d", x, weight, bias, stride, padding, dilation, groups, activation,
                   out, False)


def conv2d_reference(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d through the naive reference kernel (the oracle; slow)."""
    return _conv2d("conv2d_reference", x, weight, bias, stride, padding, dilation, groups,
                   "identity", None, True)


def _conv2d(str fn, x, weight, bias, stride, padding, dilation, groups, activation, out,
            bint reference):
    X, Wt, yshape, geom = _conv_arrays(fn, x, weight, stride, padding, dilation, groups)
    code, p, p2 = _activation_spec(activation, fn)
    cdef cnp.ndarray Bias = None
    if bias is not None:
        Bias = _input(bias, fn, "bias", X.dtype)
        if Bias.ndim != 1 or Bias.shape[0] != yshape[1]:
            raise ValueError(f"{_sig(fn, 'bias')} must have shape ({yshape[1]},), "
                             f"got {_shp(Bias)}")
    cdef cnp.ndarray Y = _output(out, fn, yshape, X.dtype,
                                 [("x", X), ("weight", Wt), ("bias", Bias)], False)
    cdef fastnn_conv2d_geom g = geom
    cdef fastnn_dtype dt = _dt(X)
    cdef fastnn_act act = code
    cdef double dp = p, dp2 = p2
    cdef void *py = _ptr(Y)
    cdef void *px = _ptr(X)
    cdef void *pw = _ptr(Wt)
    cdef void *pb = _ptr(Bias) if Bias is not None else NULL
    cdef fastnn_status st
    with nogil:
        if reference:
            st = fastnn_conv2d_ref(dt, py, px, pw, pb, &g)
        else:
            st = fastnn_conv2d(dt, py, px, pw, pb, &g, act, dp, dp2)
    _check(st, fn)
    return Y


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, bias=True,
                    input_grad=True):
    """Gradients of conv2d: (dx, dweight, dbias) for the output gradient dy.

    dy (N, C_out, H_out, W_out), x (N, C_in, H, W) and weight as given to conv2d, with the
    same stride/padding/dilation/groups. dx (x's shape) is None when input_grad is False (a
    first layer); dbias (C_out,) is None when bias is False. dweight is computed by the
    implicit GEMM with a reduction blocking fixed by the shape, dbias by a fixed-order sum and
    dx, at stride 1, as the transposed convolution (else by a deterministic col2im gather):
    bit-identical for any thread count.
    Raises TypeError (dtype) and ValueError (shapes, arguments).
    """
    return _conv2d_backward("conv2d_backward", dy, x, weight, stride, padding, dilation, groups,
                            bias, input_grad, False)


def conv2d_backward_reference(dy, x, weight, stride=1, padding=0, dilation=1, groups=1,
                              bias=True, input_grad=True):
    """conv2d_backward through the naive reference kernels (the oracle; slow)."""
    return _conv2d_backward("conv2d_backward_reference", dy, x, weight, stride, padding,
                            dilation, groups, bias, input_grad, True)


def _conv2d_backward(str fn, dy, x, weight, stride, padding, dilation, groups, bias,
                     input_grad, bint reference):
    X, Wt, yshape, geom = _conv_arrays(fn, x, weight, stride, padding, dilation, groups)
    cdef cnp.ndarray DY = _input(dy, fn, "dy", X.dtype)
    if _shp(DY) != yshape:
        raise ValueError(f"{_sig(fn, 'dy')} must have the output shape {yshape}, got {_shp(DY)}")
    cdef cnp.ndarray DW = np.empty_like(Wt)
    cdef cnp.ndarray DB = np.empty(yshape[1], dtype=X.dtype) if bias else None
    cdef cnp.ndarray DX = np.empty_like(X) if input_grad else None
    cdef fastnn_conv2d_geom g = geom
    cdef fastnn_dtype dt = _dt(X)
    cdef void *pdy = _ptr(DY)
    cdef void *px = _ptr(X)
    cdef void *pw = _ptr(Wt)
    cdef void *pdw = _ptr(DW)
    cdef void *pdb = _ptr(DB) if DB is not None else NULL
    cdef void *pdx = _ptr(DX) if DX is not None else NULL
    cdef fastnn_status st = FASTNN_OK
    with nogil:
        if reference:
            st = fastnn_conv2d_backward_weight_ref(dt, pdw, pdb, pdy, px, &g, 0.0)
            if st == FASTNN_OK and pdx != NULL:
                st = fastnn_conv2d_backward_data_ref(dt, pdx, pdy, pw, &g)
        else:
            st = fastnn_conv2d_backward_weight(dt, pdw, pdb, pdy, px, &g, 0.0)
            if st == FASTNN_OK and pdx != NULL:
                st = fastnn_conv2d_backward_data(dt, pdx, pdy, pw, &g)
    _check(st, fn)
    return DX, DW, DB
