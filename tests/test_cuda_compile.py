"""Every fastnn.cuda kernel compiled for a real GPU, with no GPU: Numba's CUDA target (not the
simulator) types each kernel and NVVM turns it into PTX for sm_90. This catches what the
simulator cannot (it runs the kernels as plain Python): typing errors, float64 creeping into
float32 kernels, and GEMM register blocking that spilled to local memory.

Needs NVVM and NVRTC (``pip install nvidia-nvvm nvidia-cuda-nvrtc``, or numba-cuda[cu13], or
a CUDA toolkit); skipped with the reason otherwise. Runs in a subprocess with
NUMBA_ENABLE_CUDASIM=0 (``python tests/test_cuda_compile.py`` prints the table).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_compile_setup import CC, run, target  # noqa: E402


def _compile_all():
    """Print one line per kernel: name, dtype, ld/st.local count, f64 instruction count."""
    import numpy as np
    from numba import cuda, types

    target()
    from fastnn.cuda import _kernels as K

    i64, b1, f64 = types.int64, types.boolean, types.float64
    for npdt in (np.float32, np.float64):
        ns = K.kernels(npdt)
        T = types.float32 if npdt == np.float32 else types.float64
        v, m, ma = types.Array(T, 1, "C"), types.Array(T, 2, "C"), types.Array(T, 2, "A")
        w, lab = types.Array(f64, 1, "C"), types.Array(types.int64, 1, "C")
        sigs = {
            "act_forward": (v, v, i64, T, T),
            "act_backward": (v, v, v, i64, T, T),
            "bias_add": (m, m, v),
            "bias_grad": (v, ma, T),
            "softmax": (m, m, b1),
            "softmax_backward": (m, m, m, b1),
            "loss": (v, v, v, w, w, i64, T, T, b1, b1, b1),
            "loss_full": (v, v, v, v, v, v, w, w, i64, T, T, i64, b1, b1, b1, b1, b1, b1),
            "cross_entropy": (m, lab, m, w, w, T, T, b1, b1, b1),
            "cross_entropy_full": (m, lab, v, m, v, v, w, w, T, T, b1, b1, b1, b1, b1, b1, b1),
            "label_weight_sum": (lab, v, w),
            "sgd": (v, v, v, T, T, T, T, b1, b1, b1),
            "adam": (v, v, v, v, v, T, T, T, T, T, b1, b1, b1, T, T),
            "rmsprop": (v, v, v, v, v, T, T, T, T, T, b1, b1),
            "adagrad": (v, v, v, T, T, T, b1),
            "copy": (v, v),
            "epilogue": (ma, v, ma, i64, i64, T, T),
        }
        kernels = [(name, getattr(ns, name), sig) for name, sig in sigs.items()]
        for ta in (0, 1):
            for tb in (0, 1):
                for epi, extra in [(K.PLAIN, ()), (K.BIAS_ACT, (v,)), (K.ACT, ()),
                                   (K.ACT_BACKWARD, (ma,)), (K.ROWSUM, (v,))]:
                    if npdt == np.float64 and (ta, tb) != (0, 0):
                        continue
                    scal = {K.PLAIN: (T, T), K.ROWSUM: (T, T, T)}.get(epi, (T, T, i64, T, T))
                    kernels.append((f"gemm ta={ta} tb={tb} epilogue={epi}",
                                    ns.gemm(ta, tb, epi), (ma, ma, ma) + extra + scal))
        for name, kernel, sig in kernels:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=CC)
            local = ptx.count("ld.local") + ptx.count("st.local")
            f64ops = sum(ptx.count(op) for op in ("fma.rn.f64", "mul.rn.f64", "add.rn.f64",
                                                   "add.f64", "mul.f64"))
            print(f"{name}|{np.dtype(npdt).name}|{local}|{f64ops}", flush=True)


def test_every_kernel_compiles_for_the_gpu_target():
    out = run(__file__)
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 3]
    names = {name for name, *_ in rows}
    assert len(rows) >= 2 * 16 + 20 + 5, out
    assert {"cross_entropy", "loss", "adam"} <= names
    for name, dtype, local, f64ops in rows:
        # the accumulators must live in registers (float64 epilogues call libdevice
        # functions with a stack frame of their own, so only their plain variants count)
        if name.startswith("gemm") and (dtype == "float32" or name.endswith(("=0", "=4"))):
            assert local == "0", f"{name} {dtype}: register blocking spilled to local memory"
        if dtype == "float32" and (name.startswith("gemm") or name in
                                   ("act_forward", "act_backward", "softmax", "sgd", "adam",
                                    "epilogue")):
            assert f64ops == "0", f"{name}: float64 arithmetic in a float32 kernel"


if __name__ == "__main__":
    _compile_all()
