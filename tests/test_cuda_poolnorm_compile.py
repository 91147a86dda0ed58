"""The kernels of fastnn.cuda.poolnorm compiled for a real GPU with no GPU (as
tests/test_cuda_compile.py does for fastnn.cuda's other kernels): Numba's CUDA target types
each kernel and NVVM emits PTX for sm_90, which catches typing errors the simulator cannot.
Skipped without NVVM / NVRTC. ``python tests/test_cuda_poolnorm_compile.py`` prints the list.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_compile_setup import compile_all, run, target  # noqa: E402


def _compile_all():
    import numpy as np
    from numba import types

    target()
    import fastnn.cuda._poolnorm_kernels as P

    i, b, f = types.int64, types.boolean, types.float64
    ix = types.Array(types.int64, 1, "C")
    for npdt in (np.float32, np.float64):
        v = types.Array(types.float32 if npdt == np.float32 else types.float64, 1, "C")
        sigs = {
            "_maxpool_fwd": (v, ix, v) + (i,) * 11,
            "_maxpool_bwd": (v, v, ix, i, i, i),
            "_avgpool_fwd": (v, v) + (i,) * 11 + (b,),
            "_avgpool_bwd": (v, v) + (i,) * 11 + (b,),
            "_gap_fwd": (v, v, i, i),
            "_gap_bwd": (v, v, i, i),
            "_bn_fwd": (v,) * 8 + (i, i, i, b, b, b, f, f),
            "_bn_bwd": (v,) * 8 + (i, i, i, b, b),
            "_ln_fwd": (v,) * 6 + (i, b, b, f),
            "_ln_bwd_rows": (v,) * 6 + (i, b),
            "_ln_bwd_cols": (v,) * 6 + (i, i),
        }
        compile_all(P, sigs, np.dtype(npdt).name)


def test_poolnorm_kernels_compile_for_the_gpu_target():
    out = run(__file__)
    assert len([ln for ln in out.splitlines() if "|" in ln]) == 22, out


if __name__ == "__main__":
    _compile_all()
