"""fastnn.cuda: the fastnn kernels on NVIDIA GPUs, written with Numba CUDA.

Importing fastnn (or this package) never imports numba; ``fastnn.cuda.ops`` does, on first
access. Install the GPU extra with ``pip install fastnn-core[cuda]`` (numba, numba-cuda; a CUDA
toolkit for numba-cuda, e.g. ``pip install numba-cuda[cu12]``, where none is installed).

    import fastnn.cuda as fc
    fc.require()                                   # RuntimeError naming what is missing
    x = fc.to_device(x_host)                       # numpy -> device array
    y = fc.ops.matmul_bias_act(x, w, b, "relu", trans_b=True)
    fc.to_host(y)                                  # device -> numpy (waits for the GPU)
    fc.launch_count()                              # Counter: kernel launches per function

The CUDA simulator: with ``NUMBA_ENABLE_CUDASIM=1`` in the environment before numba is
imported, every kernel runs in Python threads on the CPU (slowly) and ``is_available()`` is
True; ``simulator()`` tells which one is in use. The tests run there in CI.
"""
import collections
import importlib
import os
import sys

__all__ = ["is_available", "require", "simulator", "to_device", "to_host", "launch_count",
           "reset_launch_count", "set_gemm_backend", "gemm_backend", "set_tf32", "ops", "mlp",
           "conv"]

_launches = collections.Counter()


def _numpy_compat():
    """numba-cuda 0.30 registers an overload for ``np.row_stack`` when it first compiles a
    kernel; NumPy 2.5 removed that alias of ``np.vstack`` (deprecated since 2.0), so every
    compile failed with AttributeError on a real GPU (seen on an H200: numba-cuda 0.30.4,
    numpy 2.5.2). Restore the alias, only where it is missing, before any kernel compiles."""
    import numpy as np
    if "row_stack" not in np.__dict__:
        try:
            np.row_stack
        except AttributeError:
            np.row_stack = np.vstack


_numpy_compat()


def _count_launch(name):
    _launches[name] += 1


def launch_count():
    """Kernel launches since the last reset, per fastnn.cuda.ops function (a Counter:
    ``launch_count().total()`` is the sum)."""
    return collections.Counter(_launches)


def reset_launch_count():
    _launches.clear()


def _why_unavailable():
    """None when fastnn.cuda can run, else what is missing."""
    try:
        from numba import cuda
    except ImportError as e:
        return (f"numba with CUDA support is not installed ({e}); install the GPU extra: "
                f"pip install fastnn-core[cuda]")
    try:
        if cuda.is_available():
            return None
        reason = ""
    except Exception as e:  # a broken driver or toolkit: report it, never raise here
        reason = f": {type(e).__name__}: {e}"
    return (f"no usable CUDA GPU: numba found no GPU or driver{reason} (to run the kernels "
            f"on the CPU instead, slowly, set NUMBA_ENABLE_CUDASIM=1 before numba is "
            f"imported)")


def is_available():
    """True when numba is installed and a CUDA GPU (or the CUDA simulator) can be used.
    Never raises."""
    return _why_unavailable() is None


def require():
    """Raise RuntimeError naming what is missing unless fastnn.cuda can run."""
    why = _why_unavailable()
    if why is not None:
        raise RuntimeError(f"fastnn.cuda cannot run: {why}")


def simulator():
    """True when numba runs CUDA kernels in its CPU simulator (NUMBA_ENABLE_CUDASIM=1)."""
    if "numba" in sys.modules:
        from numba import config
        return bool(config.ENABLE_CUDASIM)
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def to_device(array):
    """A numpy array (or anything np.asarray accepts) copied to a new device array; a device
    array is returned as it is."""
    require()
    from numba import cuda
    if getattr(array, "__cuda_ndarray__", False):
        return array
    if hasattr(array, "__cuda_array_interface__"):
        return cuda.as_cuda_array(array)
    import numpy as np
    return cuda.to_device(np.ascontiguousarray(array))


def to_host(array):
    """A device array (numba's, or with __cuda_array_interface__) copied to a numpy array;
    waits for the GPU."""
    require()
    from numba import cuda
    if not getattr(array, "__cuda_ndarray__", False):
        if not hasattr(array, "__cuda_array_interface__"):
            raise TypeError(f"to_host: argument 'array' must be a device array, got "
                            f"{type(array).__name__}")
        array = cuda.as_cuda_array(array)
    return array.copy_to_host()


def set_gemm_backend(name):
    """Where fastnn.cuda's GEMMs run: 'auto' (cuBLAS through CuPy when both are usable, else
    the Numba kernels; the default, or the environment variable FASTNN_CUDA_GEMM), 'cublas'
    (RuntimeError when CuPy or the GPU is missing) or 'numba'."""
    from . import _cublas
    _cublas.set_backend(name)


def gemm_backend():
    """'cublas' or 'numba': the backend the next GEMM uses."""
    from . import _cublas
    return _cublas.backend()


def set_tf32(enabled):
    """TF32 tensor-core math for float32 GEMMs through cuBLAS (False by default, like
    torch.backends.cuda.matmul.allow_tf32); the Numba GEMM always computes in float32."""
    from . import _cublas
    _cublas.set_tf32(enabled)


def __getattr__(name):
    if name in ("ops", "mlp", "conv", "poolnorm"):   # the modules that import numba
        require()
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
