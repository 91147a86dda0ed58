"""Side-by-side timing: fastnn against numpy's BLAS in one process, interleaved (A B A B ...),
median of the rounds, single thread by default. Used by `fastnn bench-gemm` and benchmarks/."""
import contextlib
import os
import statistics
import time

import numpy as np

import fastnn


@contextlib.contextmanager
def kept_threads(n=None):
    """fastnn on n threads (None: unchanged) inside the block; the count is restored after."""
    before = fastnn.get_num_threads()
    if n is not None:
        fastnn.set_num_threads(n)
    try:
        yield
    finally:
        fastnn.set_num_threads(before)


def blas_threads(n):
    """Context manager limiting numpy's BLAS to n threads (needs threadpoolctl, which the
    bench and test extras install)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise RuntimeError("timing against numpy needs threadpoolctl to set numpy's BLAS "
                           "thread count: pip install threadpoolctl") from None
    return threadpool_limits(n, user_api="blas")


def parse_shapes(spec):
    shapes = []
    for item in str(spec).split(","):
        parts = [int(x) for x in item.lower().split("x")]
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3 or min(parts) < 1:
            raise ValueError(f"shape {item!r}: expected N or MxKxN with positive sizes")
        shapes.append(tuple(parts))
    return shapes


def _time(fn, min_time):
    """Seconds per call: calls repeated until min_time has passed (at least one call)."""
    n = 0
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


def interleaved(candidates, repeats=7, min_time=0.2):
    """candidates: dict name -> callable. Returns name -> list of seconds per call,
    measured in rounds A B A B ... after one warm-up call each."""
    for f in candidates.values():
        f()
    times = {k: [] for k in candidates}
    for _ in range(repeats):
        for k, f in candidates.items():
            times[k].append(_time(f, min_time))
    return times


def kernel_lines(libs):
    """{library: one line naming the kernels it runs here}: fastnn's table and GEMM blocking,
    numpy's BLAS from threadpoolctl (library, version, the kernels' `architecture`, e.g.
    OpenBLAS's Haswell or SkylakeX, and threads), PyTorch's ATen CPU capability
    (torch.backends.cpu.get_cpu_capability()) and BLAS. scikit-learn runs numpy's BLAS. A library
    that cannot be inspected says why instead."""
    out = {}
    for lib in libs:
        try:
            if lib == "fastnn":
                from ._kernels import gemm_blocking
                mr, nr, mc, kc, nc = gemm_blocking()["float32"]
                out[lib] = (f"fastnn {fastnn.__version__}, kernel table {fastnn.arch()} (float32 "
                            f"micro-tile {mr}x{nr}, MC {mc}, KC {kc}, NC {nc})")
            elif lib in ("numpy", "sklearn"):
                from threadpoolctl import threadpool_info
                blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
                desc = "; ".join(f"{i.get('internal_api')} {i.get('version')} kernels "
                                 f"{i.get('architecture')} {i.get('num_threads')} thread(s)"
                                 for i in blas) or "no BLAS found by threadpoolctl"
                if lib == "sklearn":
                    import sklearn
                    out[lib] = f"scikit-learn {sklearn.__version__} on numpy's BLAS: {desc}"
                else:
                    out[lib] = f"numpy {np.__version__}, BLAS {desc}"
            elif lib == "torch":
                import torch
                blas = next((p.split("=", 1)[1] for p in torch.__config__.show().replace(",", "\n")
                             .split() if p.startswith("BLAS_INFO=")), "unknown")
                out[lib] = (f"torch {torch.__version__}, ATen CPU capability "
                            f"{torch.backends.cpu.get_cpu_capability()}, BLAS {blas}, oneDNN "
                            f"{'on' if torch.backends.mkldnn.is_available() else 'off'}, "
                            f"{torch.get_num_threads()} thread(s)")
        except Exception as e:  # a report line, never a failed benchmark
            out[lib] = f"not inspected ({type(e).__name__}: {e})"
    return out


def gemm_compare(sizes, dtype="float32", threads=1, repeats=7, min_time=0.2, layouts=("nn",)):
    """Rows of dicts: shape, layout, fastnn and numpy GFLOP/s (medians) and their ratio.
    dtype 'bfloat16': fastnn's matmul_bf16 on float32 arrays against numpy's float32."""
    rng = np.random.default_rng(0)
    rows = []
    mm = fastnn.ops.matmul_bf16 if dtype == "bfloat16" else fastnn.ops.matmul
    label, dtype = dtype, "float32" if dtype == "bfloat16" else dtype
    with kept_threads(threads):
        with blas_threads(threads):
            for m, k, n in parse_shapes(sizes):
                for lay in layouts:
                    a = rng.standard_normal((k, m) if lay[0] == "t" else (m, k)).astype(dtype)
                    b = rng.standard_normal((n, k) if lay[1] == "t" else (k, n)).astype(dtype)
                    a = a.T if lay[0] == "t" else a
                    b = b.T if lay[1] == "t" else b
                    c1 = np.empty((m, n), dtype)
                    c2 = np.empty((m, n), dtype)
                    t = interleaved({"fastnn": lambda: mm(a, b, out=c1),
                                     "numpy": lambda: np.matmul(a, b, out=c2)}, repeats, min_time)
                    flop = 2.0 * m * n * k
                    mf, mn = statistics.median(t["fastnn"]), statistics.median(t["numpy"])
                    rows.append({"shape": f"{m}x{k}x{n}", "layout": lay, "dtype": label,
                                 "threads": threads, "fastnn_gflops": flop / mf / 1e9,
                                 "numpy_gflops": flop / mn / 1e9, "ratio": mn / mf,
                                 "fastnn_s": t["fastnn"], "numpy_s": t["numpy"]})
    return rows


def print_table(rows):
    print(f"{'M x K x N':>16} {'layout':>6} {'dtype':>8} {'thr':>3} {'fastnn GF/s':>11} "
          f"{'numpy GF/s':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['shape']:>16} {r['layout']:>6} {r['dtype']:>8} {r['threads']:>3} "
              f"{r['fastnn_gflops']:>11.1f} {r['numpy_gflops']:>10.1f} {r['ratio']:>6.2f}")


def fused_compare(sizes, dtype="float32", threads=1, repeats=7, min_time=0.2):
    """Linear forward act(x @ W.T + b) with ReLU: fastnn's fused matmul_bias_act against the
    same GEMM followed by separate bias and ReLU passes, interleaved."""
    ops = fastnn.ops
    rng = np.random.default_rng(0)
    rows = []
    with kept_threads(threads):
        for m, k, n in parse_shapes(sizes):
            x = rng.standard_normal((m, k)).astype(dtype)
            w = rng.standard_normal((n, k)).astype(dtype)
            b = rng.standard_normal(n).astype(dtype)
            o1 = np.empty((m, n), dtype)
            o2 = np.empty((m, n), dtype)

            def separate():
                ops.matmul(x, w.T, out=o2)
                ops.bias_add(o2, b, out=o2)
                ops.relu(o2, out=o2)

            t = interleaved({"fused": lambda: ops.matmul_bias_act(x, w.T, b, "relu", out=o1),
                             "separate": separate}, repeats, min_time)
            mf, ms = statistics.median(t["fused"]), statistics.median(t["separate"])
            rows.append({"shape": f"{m}x{k}x{n}", "dtype": dtype, "threads": threads,
                         "fused_us": mf * 1e6, "separate_us": ms * 1e6, "speedup": ms / mf})
    return rows


def second_core_probe(n=512, calls=20, repeats=5):
    """How much a second thread delivers right now: two independent single-thread GEMMs in two
    Python threads (the GIL is released in the kernel) against one, as a throughput ratio,
    the median of `repeats` such measurements (one alone reads 1.5 now and then on a free
    core). About 2.0 (1.8-1.95 on a 2-core VM whose cores share the L3) means the second core
    is free; about 1.0 means it is busy with other work."""
    return statistics.median(_probe_once(n, calls) for _ in range(repeats))


def _probe_once(n, calls):
    import threading

    with kept_threads(1):
        x = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        outs = [np.empty_like(x), np.empty_like(x)]

        def work(o):
            for _ in range(calls):
                fastnn.ops.matmul(x, x, out=o)

        work(outs[0])
        t0 = time.perf_counter()
        work(outs[0])
        one = time.perf_counter() - t0
        threads = [threading.Thread(target=work, args=(o,)) for o in outs]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        two = time.perf_counter() - t0
    return 2 * one / two


def threads_compare(sizes, dtype="float32", repeats=7, min_time=0.2):
    """fastnn's GEMM with 1 and with 2 threads, interleaved: GFLOP/s and speedup."""
    rng = np.random.default_rng(0)
    rows = []
    with kept_threads(None):
        for m, k, n in parse_shapes(sizes):
            a = rng.standard_normal((m, k)).astype(dtype)
            b = rng.standard_normal((k, n)).astype(dtype)
            c = np.empty((m, n), dtype)

            def run(t):
                def f():
                    fastnn.set_num_threads(t)
                    fastnn.ops.matmul(a, b, out=c)
                return f

            t = interleaved({"1": run(1), "2": run(2)}, repeats, min_time)
            flop = 2.0 * m * n * k
            m1, m2 = statistics.median(t["1"]), statistics.median(t["2"])
            rows.append({"shape": f"{m}x{k}x{n}", "dtype": dtype, "gflops_1": flop / m1 / 1e9,
                         "gflops_2": flop / m2 / 1e9, "speedup": m1 / m2})
    return rows
