"""The standard MLP comparison of `fastnn bench`: one epoch of an MLP 784-H-H-10 (ReLU,
softmax cross-entropy, SGD momentum 0.9, lr 0.01) on 60 000 samples, the same data and batch
order for every library, single thread; fastnn against a plain numpy MLP, PyTorch eager and
scikit-learn's MLPClassifier when they are installed. Rounds are interleaved (A B C A B C ...),
median of the rounds. Each library starts from its own random weights: the arithmetic is the
same, so the time is comparable.
"""
import statistics
import time

import numpy as np

import fastnn

LIBRARIES = ("fastnn", "torch", "numpy", "sklearn")


def make_data(n=60000, d=784, classes=10, seed=0):
    """A synthetic classification set of MNIST's shape (float32 in [0, 1), int64 labels)."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, d), dtype=np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    return X, y


def _fastnn_epoch(X, y, hidden, batch, seed):
    model = fastnn.Sequential(fastnn.Linear(X.shape[1], hidden), fastnn.ReLU(),
                              fastnn.Linear(hidden, hidden), fastnn.ReLU(),
                              fastnn.Linear(hidden, 10), seed=seed)
    opt = fastnn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = fastnn.CrossEntropyLoss()

    def run():
        fastnn.fit(model, loss, opt, X, y, epochs=1, batch_size=batch, shuffle=True, seed=seed,
                   verbose=0)
    return run


def fit_threads_compare(workloads, repeats=5, n=60000, seed=0):
    """One fastnn.fit epoch of the standard MLP with 1 and with 2 threads, interleaved (the
    same model object, so both continue the same training): seconds and speedup, and the
    threads the fused step chose for the batch size."""
    from ._bench import interleaved, kept_threads

    X, y = make_data(n, seed=seed)
    rows = []
    with kept_threads(None):
        for hidden, batch in workloads:
            run = _fastnn_epoch(X, y, hidden, batch, seed)

            def on(t):
                def f():
                    fastnn.set_num_threads(t)
                    run()
                return f

            from . import _fused
            model = fastnn.Sequential(fastnn.Linear(784, hidden), fastnn.ReLU(),
                                      fastnn.Linear(hidden, hidden), fastnn.ReLU(),
                                      fastnn.Linear(hidden, 10))
            opt = fastnn.SGD(model.parameters(), lr=0.01, momentum=0.9)
            fastnn.set_num_threads(2)
            plan = _fused.training_plan(model, fastnn.CrossEntropyLoss(), opt, X[:batch],
                                        y[:batch], batch, [])
            chosen = plan.net.threads(batch) if plan is not None else 1
            t = interleaved({"1": on(1), "2": on(2)}, repeats, 0.0)
            m1, m2 = statistics.median(t["1"]), statistics.median(t["2"])
            rows.append({"hidden": hidden, "batch": batch, "seconds_1": m1, "seconds_2": m2,
                         "speedup": m1 / m2, "step_threads": chosen})
    return rows


def _torch_epoch(X, y, hidden, batch, seed):
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    model = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)

    def run():
        perm = torch.from_numpy(rng.permutation(len(X)))
        for s in range(0, len(X), batch):
            idx = perm[s:s + batch]
            opt.zero_grad()
            out = model(Xt[idx])
            lossf(out, yt[idx]).backward()
            opt.step()
    return run


def _numpy_epoch(X, y, hidden, batch, seed):
    """The textbook MLP in numpy: the baseline every framework should beat."""
    rng = np.random.default_rng(seed)
    sizes = [X.shape[1], hidden, hidden, 10]
    Ws = [(rng.random((o, i), dtype=np.float32) * 2 - 1) / np.float32(np.sqrt(i))
          for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [np.zeros(o, np.float32) for o in sizes[1:]]
    vW = [np.zeros_like(w) for w in Ws]
    vb = [np.zeros_like(b) for b in bs]
    lr, mu = np.float32(0.01), np.float32(0.9)

    def run():
        perm = rng.permutation(len(X))
        for s in range(0, len(X), batch):
            idx = perm[s:s + batch]
            h = [X[idx]]
            for k, (W, b) in enumerate(zip(Ws, bs)):
                z = h[-1] @ W.T + b
                h.append(np.maximum(z, 0) if k < 2 else z)
            z = h[-1] - h[-1].max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            g = p / np.float32(len(idx))
            for k in (2, 1, 0):
                gW, gb = g.T @ h[k], g.sum(0)
                if k:
                    g = (g @ Ws[k]) * (h[k] > 0)
                vW[k] = mu * vW[k] + gW
                vb[k] = mu * vb[k] + gb
                Ws[k] -= lr * vW[k]
                bs[k] -= lr * vb[k]
    return run


def _sklearn_epoch(X, y, hidden, batch, seed):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    def run():
        clf = MLPClassifier(hidden_layer_sizes=(hidden, hidden), solver="sgd", momentum=0.9,
                            nesterovs_momentum=False, learning_rate_init=0.01, alpha=0.0,
                            batch_size=batch, max_iter=1, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X, y)
    return run


_BUILDERS = {"fastnn": _fastnn_epoch, "torch": _torch_epoch, "numpy": _numpy_epoch,
             "sklearn": _sklearn_epoch}


def available(libraries):
    """The libraries of the list that can be imported here."""
    out = []
    for lib in libraries:
        if lib in ("fastnn", "numpy"):
            out.append(lib)
            continue
        try:
            __import__({"torch": "torch", "sklearn": "sklearn"}[lib])
            out.append(lib)
        except ImportError:
            pass
    return out


THREADS = 1  # threads every library gets (set by single_thread)


def single_thread(threads=1):
    """`threads` threads (default one) for fastnn, numpy's BLAS and torch."""
    global THREADS
    THREADS = threads
    fastnn.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
    except ImportError:
        pass
    import sys

    if "torch" in sys.modules:   # never import it here: it would count in memory figures
        sys.modules["torch"].set_num_threads(threads)


def mlp_compare(workloads, libraries=LIBRARIES, repeats=5, n=60000, seed=0, log=None):
    """workloads: (hidden, batch) pairs. Returns rows of dicts with the per-library median
    epoch seconds, samples/s, GFLOP/s (the training arithmetic, 3 matmuls per layer less the
    input gradient of the first) and the ratio to fastnn (library time / fastnn time)."""
    X, y = make_data(n)
    libs = available(libraries)
    rows = []
    for hidden, batch in workloads:
        runs = {}
        for lib in libs:
            if log:
                log(f"H={hidden} B={batch} {lib}: building the model")
            runs[lib] = _BUILDERS[lib](X, y, hidden, batch, seed)
        for lib, f in runs.items():   # warm-up: one epoch each (first-touch, JIT, caches)
            if log:
                log(f"H={hidden} B={batch} {lib}: warm-up epoch")
            f()
        times = {lib: [] for lib in libs}
        for r in range(repeats):
            for lib, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[lib].append(time.perf_counter() - t0)
                if log:
                    log(f"H={hidden} B={batch} round {r + 1}/{repeats} {lib}: "
                        f"{times[lib][-1]:.3f} s")
        sizes = [784, hidden, hidden, 10]
        macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        flop = n * 2 * (3 * macs - sizes[0] * sizes[1])
        med = {lib: statistics.median(t) for lib, t in times.items()}
        for lib in libs:
            rows.append({"workload": f"784-{hidden}-{hidden}-10 B={batch}", "library": lib,
                         "seconds": med[lib], "samples_per_s": n / med[lib],
                         "gflops": flop / med[lib] / 1e9,
                         "ratio_to_fastnn": med[lib] / med["fastnn"] if "fastnn" in med else None,
                         "all_seconds": times[lib]})
    return rows


def step_overhead(steps=20000, hidden=8, repeats=5):
    """Seconds per training step of a tiny MLP (784-8-8-10) at batch 1: the fixed cost."""
    X, y = make_data(steps)
    run = _fastnn_epoch(X, y, hidden, 1, 0)
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


_MEMORY_SCRIPT = """
import resource, sys
from fastnn import _bench_mlp as b
lib, hidden, batch, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
b.single_thread()
X, y = b.make_data(n)
if lib != "data":
    b._BUILDERS[lib](X, y, hidden, batch, 0)()
# VmHWM: the peak of this program's own memory. ru_maxrss also counts the parent's pages
# when the process was forked from a big parent (the high-water mark survives exec).
try:
    with open("/proc/self/status") as f:
        print(next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")))
except OSError:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory_compare(hidden, batch, libraries=LIBRARIES, n=60000):
    """Peak resident memory (MiB) of a fresh process that makes the data and trains one
    epoch, per library; 'data' is the process that only makes the data (and imports fastnn)."""
    import subprocess
    import sys

    out = {}
    for lib in ["data"] + available(libraries):
        r = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, lib, str(hidden), str(batch),
                            str(n)], capture_output=True, text=True, check=True)
        out[lib] = int(r.stdout.split()[-1]) / 1024.0
    return out
