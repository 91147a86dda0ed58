#!/usr/bin/env bash
# The real-GPU check of fastnn.cuda in one run: build, the CUDA tests on the device, the
# benchmark. Usage: bash dev/gpu_check.sh LOGDIR [bench args...]
# Logs land in LOGDIR (env.log, build.log, pytest.log, pytest_numba.log, bench.log, profile.log).
set -u
LOG=${1:?usage: gpu_check.sh LOGDIR}; shift
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
{ nvidia-smi; python3 -V; python3 -m pip list 2>/dev/null | grep -iE "numba|cupy|torch |numpy|scikit-build|cython|nvmath|cuda"; } >"$LOG/env.log" 2>&1
el "env done"
python3 -m pip install --no-build-isolation --no-deps -q . >"$LOG/build.log" 2>&1 || { el "BUILD FAILED"; tail -30 "$LOG/build.log"; exit 1; }
el "built"
NUMBA_ENABLE_CUDASIM=0 timeout ${PYTEST_TIMEOUT:-220} python3 -m pytest -q -rfE -p no:cacheprovider \
    --timeout 120 ${PYTEST_EXTRA:-} tests/test_cuda_*.py tests/test_sklearn_cuda.py >"$LOG/pytest.log" 2>&1
el "pytest rc=$?"; grep -E "^(FAILED|ERROR)" "$LOG/pytest.log" | head -40; tail -3 "$LOG/pytest.log"
if [ -n "${NUMBA_GEMM_TESTS:-}" ]; then   # the Numba GEMM fallback too, where cuBLAS is the default
  FASTNN_CUDA_GEMM=numba NUMBA_ENABLE_CUDASIM=0 timeout ${NUMBA_GEMM_TIMEOUT:-100} python3 -m pytest -q -rfE -p no:cacheprovider \
      --timeout 90 ${PYTEST_EXTRA:-} tests/test_cuda_ops.py tests/test_cuda_mlp.py -k "matmul or gemm or mlp or step" >"$LOG/pytest_numba.log" 2>&1
  el "pytest (numba GEMM) rc=$?"; grep -E "^(FAILED|ERROR)" "$LOG/pytest_numba.log" | head -20; tail -2 "$LOG/pytest_numba.log"
fi
timeout ${BENCH_TIMEOUT:-150} python3 benchmarks/bench_cuda.py "$@" >"$LOG/bench.log" 2>&1
el "bench rc=$?"; tail -45 "$LOG/bench.log"
if [ -f dev/gpu_profile.py ]; then
  timeout 60 python3 dev/gpu_profile.py >"$LOG/profile.log" 2>&1; el "profile rc=$?"; grep -vE "Warning|warn\(" "$LOG/profile.log" | tail -60
fi
