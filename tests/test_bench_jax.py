"""`fastnn bench --libs jax`: the JAX runner of the MLP comparison (fastnn/_bench_mlp.py).

JAX is no dependency of fastnn: without it `--libs jax` is a usage error naming what to
install (tested by hiding the module). With JAX installed, a tiny epoch checks that the
compiled `jax.jit(lax.scan)` epoch is the same training as fastnn's (same initial weights,
same batches, same SGD momentum), and a fresh process checks that importing JAX for the
benchmark leaves the caller's XLA_FLAGS and CPU mask as they were.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import _bench_mlp, cli


@pytest.fixture
def no_jax(monkeypatch):
    """JAX not importable (a None entry in sys.modules makes `import jax` raise ImportError),
    and no JAX imported by the benchmark yet."""
    monkeypatch.setitem(sys.modules, "jax", None)
    monkeypatch.setattr(_bench_mlp, "_JAX", {})


def test_without_jax_available_drops_it(no_jax):
    assert _bench_mlp.available(["fastnn", "jax", "numpy"]) == ["fastnn", "numpy"]


def test_without_jax_the_runner_names_what_to_install(no_jax):
    X, y = _bench_mlp.make_data(64)
    with pytest.raises(ImportError, match=r"pip install jax.*no dependency of fastnn"):
        _bench_mlp._jax_epoch(X, y, 8, 32, 0)
    assert _bench_mlp._JAX == {}


def test_without_jax_bench_libs_jax_is_a_usage_error(no_jax, capsys):
    assert cli.main(["bench", "--libs", "fastnn,jax", "--samples", "64", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastnn bench: error: --libs jax: JAX is not installed")
    assert "pip install jax" in err and len(err.splitlines()) == 1


def test_libs_help_and_library_list_name_jax(capsys):
    assert "jax" in _bench_mlp.LIBRARIES
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    assert "fastnn,torch,numpy,sklearn,jax" in " ".join(capsys.readouterr().out.split())


def _data(n=300, seed=3):
    """A learnable problem: labels from a fixed linear map of the inputs."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, 784), dtype=np.float32)
    W = rng.standard_normal((784, 10)).astype(np.float32)
    y = np.argmax((X - 0.5) @ W, axis=1).astype(np.int64)
    return X, y


def _loss(params, X, y):
    h = X.astype(np.float64)
    for k, (W, b) in enumerate(params):
        h = h @ np.asarray(W, np.float64).T + np.asarray(b, np.float64)
        if k < len(params) - 1:
            h = np.maximum(h, 0)
    h -= h.max(1, keepdims=True)
    logp = h - np.log(np.exp(h).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean()


def test_jax_epoch_is_fastnns_training():
    """One epoch from the same initial weights in the same batch order (300 samples, batch
    32: nine scanned batches and a last one of 12): JAX's weights and loss match fastnn's,
    and the loss goes down over epochs."""
    pytest.importorskip("jax")
    X, y = _data()
    hidden, batch, seed = 16, 32, 5
    run = _bench_mlp._jax_epoch(X, y, hidden, batch, seed, shuffle=False)
    start = [(np.asarray(W), np.asarray(b)) for W, b in run.state["params"]]
    model = fastnn.Sequential(fastnn.Linear(784, hidden), fastnn.ReLU(),
                              fastnn.Linear(hidden, hidden), fastnn.ReLU(),
                              fastnn.Linear(hidden, 10), seed=seed)
    linears = [m for m in model if isinstance(m, fastnn.Linear)]
    for (W, b), m in zip(start, linears):
        np.testing.assert_array_equal(W, m.weight)
        np.testing.assert_array_equal(b, m.bias)
    run()
    losses = np.asarray(run.state["losses"])
    assert losses.shape == (math.ceil(300 / batch),) and np.all(np.isfinite(losses))
    opt = fastnn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fastnn.fit(model, fastnn.CrossEntropyLoss(), opt, X, y, epochs=1, batch_size=batch,
               shuffle=False, verbose=0)
    got = [(np.asarray(W), np.asarray(b)) for W, b in run.state["params"]]
    for (W, b), m in zip(got, linears):
        np.testing.assert_allclose(W, m.weight, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b, m.bias, rtol=1e-4, atol=1e-5)
    want = [(m.weight, m.bias) for m in linears]
    assert _loss(got, X, y) == pytest.approx(_loss(want, X, y), rel=1e-4)
    first = _loss(start, X, y)
    for _ in range(3):
        run()
    assert _loss(run.state["params"], X, y) < _loss(got, X, y) < first


def test_mlp_compare_times_jax():
    pytest.importorskip("jax")
    rows = _bench_mlp.mlp_compare([(8, 32)], ["fastnn", "jax"], repeats=2, n=100)
    jax_row = next(r for r in rows if r["library"] == "jax")
    assert len(jax_row["all_seconds"]) == 2 and len(jax_row["all_cpu_seconds"]) == 2
    assert all(math.isfinite(t) and t > 0 for t in jax_row["all_seconds"])
    assert math.isfinite(jax_row["ratio_to_fastnn"])
    import jax

    assert f"jax {jax.__version__}, jaxlib" in _bench_mlp.jax_kernels()


_FRESH = """
import json, os, sys
import fastnn
from fastnn import _bench_mlp as b
mask = sorted(os.sched_getaffinity(0))
jax = b._import_jax(1)
print(json.dumps({"flags": os.environ.get("XLA_FLAGS"), "mask": mask,
                  "mask_after": sorted(os.sched_getaffinity(0)), "seen": b._JAX["flags"],
                  "threads": b._JAX["threads"], "line": b.jax_kernels(),
                  "arch": fastnn.arch()}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs CPU affinity (Linux)")
@pytest.mark.parametrize("arch", ["", "avx2"])
def test_import_jax_in_a_fresh_process_restores_flags_and_mask(arch):
    """XLA's flags and a one-CPU mask are in force while JAX creates its CPU client only:
    the caller's XLA_FLAGS and CPU mask come back; on fastnn's avx2 table (forced, or the
    best one on a CPU without AVX-512) XLA is capped at AVX2."""
    pytest.importorskip("jax")
    if arch and arch not in fastnn.available_archs():
        pytest.skip(f"no {arch} table here")
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_enable_fast_math=false", FASTNN_ARCH=arch)
    out = subprocess.run([sys.executable, "-c", _FRESH], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["flags"] == "--xla_cpu_enable_fast_math=false"
    assert got["mask_after"] == got["mask"] and got["threads"] == 1
    assert got["seen"].startswith("--xla_cpu_enable_fast_math=false ")
    assert "--xla_cpu_multi_thread_eigen=false" in got["seen"]
    assert got["arch"] == (arch or fastnn.available_archs()[-1])
    assert ("--xla_cpu_max_isa=AVX2" in got["seen"]) == (got["arch"] == "avx2")
    assert "XLA CPU pool 1 thread(s)" in got["line"]


def test_benches_name_the_kernels_each_library_ran(capsys):
    """`fastnn bench-gemm` and `fastnn bench` end with one line per library naming its kernels:
    fastnn's table, numpy's BLAS and its kernel set (threadpoolctl's architecture), PyTorch's
    ATen CPU capability."""
    from fastnn import _bench, cli

    lines = _bench.kernel_lines(["fastnn", "numpy"])
    assert f"kernel table {fastnn.arch()}" in lines["fastnn"]
    assert "kernels" in lines["numpy"] and "thread(s)" in lines["numpy"]
    assert cli.main(["bench-gemm", "--sizes", "16", "--repeats", "5", "--min-time", "0.001"]) == 0
    out = capsys.readouterr().out
    assert f"fastnn: fastnn {fastnn.__version__}, kernel table {fastnn.arch()}" in out
    assert "numpy: numpy " in out
    torch = pytest.importorskip("torch")
    line = _bench.kernel_lines(["torch"])["torch"]
    assert f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}" in line
