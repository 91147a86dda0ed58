"""The preamble of the CUDA test modules, imported first by each: the CUDA simulator unless
NUMBA_ENABLE_CUDASIM=0 is set (before numba is imported), a skip of the whole module when
numba or a device is missing, and `quiet`, the mark for the simulator's warnings."""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest  # noqa: E402

pytest.importorskip("numba", reason="numba is not installed (pip install fastnn-core[cuda])")

import fastnn.cuda as fc  # noqa: E402

if not fc.is_available():
    pytest.skip(f"fastnn.cuda is not available: {fc._why_unavailable()}",
                allow_module_level=True)

# The simulator computes with numpy scalars, which warn on overflow where a GPU quietly
# gives inf (exp(100) in float32, say); the results are checked, the warnings are noise.
quiet = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def gemm_launches():
    """Launches per GEMM with an epilogue: 1 for the Numba GEMM (epilogue fused), 2 through
    cuBLAS (the product, then the epilogue kernel)."""
    from fastnn.cuda import _cublas
    return 2 if _cublas.backend() == "cublas" else 1
