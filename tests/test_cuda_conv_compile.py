"""The convolution kernels of fastnn.cuda.conv compiled for a real GPU with no GPU (as
tests/test_cuda_compile.py and tests/test_cuda_poolnorm_compile.py do for the other kernels),
with the argument types fastnn.cuda.conv and the CNN path of fastnn.cuda.train pass: Numba's
CUDA target types each kernel and NVVM emits PTX for sm_90, which catches typing errors the
simulator cannot. Skipped without NVVM / NVRTC. ``python tests/test_cuda_conv_compile.py``
prints the list.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_compile_setup import compile_all, run, target  # noqa: E402


def _compile_all():
    import numpy as np
    from numba import types

    target()
    import importlib

    import fastnn.cuda
    fastnn.cuda.require = lambda: None      # conv.py checks for a GPU on import; none here
    C = importlib.import_module("fastnn.cuda.conv")

    i, b = types.int64, types.boolean
    geo = (i,) * 8          # stride, padding, dilation (h, w), channels per group in, out
    for npdt in (np.float32, np.float64):
        T = types.float32 if npdt == np.float32 else types.float64
        v, a4 = types.Array(T, 1, "C"), types.Array(T, 4, "C")
        sigs = {
            "_forward": (a4, a4, a4, v, b) + geo,
            "_backward_data": (a4, a4, a4) + geo,
            "_backward_weight": (a4, a4, a4) + geo,
            "_backward_bias": (v, a4),
        }
        compile_all(C, sigs, np.dtype(npdt).name)


def test_conv_kernels_compile_for_the_gpu_target():
    out = run(__file__)
    assert len([ln for ln in out.splitlines() if "|" in ln]) == 8, out


if __name__ == "__main__":
    _compile_all()
