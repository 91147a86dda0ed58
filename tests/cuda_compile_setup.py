"""What the compile-for-the-GPU tests share (tests/test_cuda_compile.py,
tests/test_cuda_poolnorm_compile.py, tests/test_cuda_conv_compile.py): each runs its own file in a subprocess with
NUMBA_ENABLE_CUDASIM=0, where `target()` makes Numba's CUDA target compile for CC with no GPU
present (exit status 3 when NVVM / NVRTC is missing), and `run(path)` is the pytest side."""
import os
import subprocess
import sys

CC = (9, 0)   # sm_90 (H100 / H200)


def target():
    """In the subprocess: compile as if a CC device were present; exit 3 (skip) without NVVM."""
    import types as pytypes

    import fastnn.cuda  # noqa: F401  (first: its NumPy compatibility fix precedes any compile)
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda, types

    # device functions are compiled for the current device; there is none: say which
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=CC)
    try:
        cuda.compile_ptx(lambda a: None, (types.float32[::1],), cc=CC)
    except Exception as e:
        # only a missing NVVM / NVRTC is a skip; anything else is a failure of the compile path
        # (numba-cuda against a newer NumPy once failed every compile here and was skipped)
        text = f"{type(e).__name__}: {e}"
        if not any(w in text.lower() for w in ("nvvm", "nvrtc", "libdevice", "cudasupport")):
            raise
        print(f"cannot compile for the CUDA target here: {text}"[:400])
        sys.exit(3)


def compile_all(module, sigs, dtype):
    """In the subprocess: each kernel `name` of module compiled to PTX for CC with its argument
    types sigs[name], printing "name|dtype" after each (what run's caller counts)."""
    from numba import cuda

    for name, sig in sigs.items():
        cuda.compile_ptx(getattr(module, name).py_func, sig, cc=CC)
        print(f"{name}|{dtype}", flush=True)


def run(path):
    """In pytest: run the test file `path` as a script; skip when it exits 3. Returns stdout."""
    import pytest

    pytest.importorskip("numba", reason="numba is not installed (pip install fastnn-core[cuda])")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    r = subprocess.run([sys.executable, path], capture_output=True, text=True, env=env,
                       timeout=600)
    if r.returncode == 3:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout
