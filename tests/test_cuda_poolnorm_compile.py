"""The kernels of fastnn.cuda.poolnorm compiled for a real GPU with no GPU (as
tests/test_cuda_compile.py does for fastnn.cuda's other kernels): Numba's CUDA target types
each kernel and NVVM emits PTX for sm_90, which catches typing errors the simulator cannot.
Skipped without NVVM / NVRTC. ``python tests/test_cuda_poolnorm_compile.py`` prints the list.
"""
import os
import subprocess
import sys

import pytest

CC = (9, 0)


def _compile_all():
    import types as pytypes

    import numpy as np
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda, types

    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=CC)
    try:
        cuda.compile_ptx(lambda a: None, (types.float32[::1],), cc=CC)
    except Exception as e:  # no NVVM / NVRTC
        print(f"cannot compile for the CUDA target here: {type(e).__name__}: {e}"[:400])
        sys.exit(3)
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
        for name, sig in sigs.items():
            cuda.compile_ptx(getattr(P, name).py_func, sig, cc=CC)
            print(f"{name}|{np.dtype(npdt).name}", flush=True)


def test_poolnorm_kernels_compile_for_the_gpu_target():
    pytest.importorskip("numba", reason="numba is not installed (pip install fastnn[cuda])")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    r = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env,
                       timeout=600)
    if r.returncode == 3:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stderr[-4000:]
    assert len([ln for ln in r.stdout.splitlines() if "|" in ln]) == 22, r.stdout


if __name__ == "__main__":
    _compile_all()
