"""The standard MLP comparison of `fastnn bench`: one epoch of an MLP 784-H-H-10 (ReLU,
softmax cross-entropy, SGD momentum 0.9, lr 0.01) on 60 000 samples, the same data and batch
order for every library, single thread; fastnn against a plain numpy MLP, PyTorch eager,
scikit-learn's MLPClassifier and JAX when they are installed. Rounds are interleaved
(A B C A B C ...), median of the rounds. Each library starts from its own random weights
(JAX from fastnn's): the arithmetic is the same, so the time is comparable.

JAX (`jax`, never a dependency of fastnn) runs the strongest way we know on a CPU: one
`jax.jit` of a `jax.lax.scan` over all the epoch's batches, compiled before the timing. Its
threads and instruction set are set when the benchmark imports it (see `_import_jax`).
"""
import os
import statistics
import time

import numpy as np

import fastnn

LIBRARIES = ("fastnn", "torch", "numpy", "sklearn", "jax")


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


# ---- JAX ---------------------------------------------------------------------------------
#
# XLA reads XLA_FLAGS once, when the process creates its first XLA client, and its CPU client
# sizes the thread pool that runs the compiled code (and the YNNPACK/Eigen matmuls) from the
# CPUs the process may run on at that moment. With jaxlib 0.10.2,
# `--xla_cpu_multi_thread_eigen=false` (the usual advice, with `intra_op_parallelism_threads=1`,
# which XLA ignores) still left a 1024^2 matmul loop on two busy threads of a two-core machine;
# a CPU mask of one core while the client is created gives a pool of one thread. So
# `_import_jax`, when jax is not yet imported, adds its flags to the user's XLA_FLAGS, creates
# the CPU client with the calling thread restricted to THREADS of its CPUs, then puts back the
# caller's XLA_FLAGS and CPU mask (also on the threads created meanwhile, so the pool is not
# pinned). A jax the user imported earlier is used as it is: its client, if already created,
# keeps its own threads and flags, and `jax_kernels()` says so.

_JAX = {}   # what _import_jax did: "threads", "flags", "note"

# fastnn's kernel table -> the XLA_FLAGS instruction-set cap that matches it
_XLA_MAX_ISA = {"avx2": "AVX2"}


def _xla_flags(threads):
    """The XLA_FLAGS the benchmark adds for `threads` threads and fastnn's kernel table."""
    flags = [] if threads > 1 else ["--xla_cpu_multi_thread_eigen=false"]
    isa = _XLA_MAX_ISA.get(fastnn.arch())
    if isa and "--xla_cpu_max_isa" not in os.environ.get("XLA_FLAGS", ""):
        flags.append(f"--xla_cpu_max_isa={isa}")
    return flags


def _import_jax(threads=None):
    """Import jax with its CPU client on `threads` threads (default THREADS) and, on fastnn's
    avx2 table, XLA's generated code capped at AVX2 (`--xla_cpu_max_isa=AVX2`). Returns the
    jax module. Raises ImportError naming what to install when jax is not installed."""
    import sys

    threads = THREADS if threads is None else threads
    if _JAX:
        return sys.modules["jax"]
    if sys.modules.get("jax") is not None:     # the user's jax: never re-configured
        import jax
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            _JAX.update(threads=None, flags=os.environ.get("XLA_FLAGS", ""),
                        note="jax's CPU client was created before the benchmark: its threads "
                             "and XLA_FLAGS are the process's own")
            return jax
        added = []
    else:
        added = _xla_flags(threads)
    saved = os.environ.get("XLA_FLAGS")
    if added:
        os.environ["XLA_FLAGS"] = " ".join(([saved] if saved else []) + added)
    mask = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    tasks = "/proc/self/task"
    before = set(os.listdir(tasks)) if mask and os.path.isdir(tasks) else None
    try:
        if mask and len(mask) > threads:
            os.sched_setaffinity(0, sorted(mask)[:threads])
        try:
            import jax
        except ImportError as e:
            raise ImportError(f"the jax benchmark needs JAX, which is not installed here ({e}); "
                              f"`pip install jax` (CPU) in a scratch environment: it is no "
                              f"dependency of fastnn") from None
        jax.devices("cpu")               # creates the CPU client and its thread pool
        flags = os.environ.get("XLA_FLAGS", "")
    finally:
        if saved is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = saved
        if mask:
            os.sched_setaffinity(0, mask)
            for tid in (set(os.listdir(tasks)) - before) if before is not None else ():
                try:
                    os.sched_setaffinity(int(tid), mask)   # unpin the threads made meanwhile
                except OSError:                            # the thread ended meanwhile
                    pass
    if mask:
        _JAX.update(threads=min(threads, len(mask)), flags=flags, note="")
    else:
        _JAX.update(threads=None, flags=flags,
                    note="not limited (no CPU affinity here): one thread per core")
    return jax


def jax_kernels():
    """One line on the JAX that ran: versions, backend and device, XLA's threads, the
    instruction-set cap and XLA_FLAGS. Imports jax (as `_import_jax`) if not done yet."""
    jax = _import_jax()
    import jaxlib

    dev = jax.devices("cpu")[0]
    flags = _JAX["flags"]
    isa = next((f.split("=", 1)[1] for f in flags.split() if f.startswith("--xla_cpu_max_isa=")),
               None)
    isa = (f"{isa} (binds XLA's generated code; jaxlib 0.10's matmuls run YNNPACK kernels "
           f"chosen for the CPU at run time)" if isa else "none (this CPU's)")
    threads = f"{_JAX['threads']} thread(s)" if _JAX["threads"] else _JAX["note"]
    return (f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, backend "
            f"{jax.default_backend()} (device {dev.device_kind}), XLA CPU pool {threads}, "
            f"max ISA {isa}, XLA_FLAGS {flags!r}")


def _jax_epoch(X, y, hidden, batch, seed, shuffle=True):
    """One epoch as one compiled XLA program: `jax.jit` of a `lax.scan` of the SGD step over
    the epoch's full batches (the epoch's permutation gathered and reshaped to
    (n_batches, batch, 784) on the device inside the program), then one step on the last,
    smaller batch as the other libraries take it. float32 throughout, the weights start from
    fastnn's initialisation with the same seed (PyTorch's scheme). The runner's `state`
    holds the parameters [(W, b), ...] and the last epoch's per-batch losses."""
    jax = _import_jax()
    jnp = jax.numpy
    cpu = jax.devices("cpu")[0]
    init = fastnn.Sequential(fastnn.Linear(X.shape[1], hidden), fastnn.ReLU(),
                             fastnn.Linear(hidden, hidden), fastnn.ReLU(),
                             fastnn.Linear(hidden, 10), seed=seed)
    params = [(jax.device_put(np.array(m.weight), cpu), jax.device_put(np.array(m.bias), cpu))
              for m in init if isinstance(m, fastnn.Linear)]
    state = {"params": params, "velocity": jax.tree.map(jnp.zeros_like, params),
             "losses": None}
    Xd = jax.device_put(X, cpu)
    yd = jax.device_put(y.astype(np.int32), cpu)
    n, d = X.shape
    full, rest = divmod(n, batch)
    lr, mu = 0.01, 0.9

    def loss_fn(p, xb, yb):
        h = xb
        for k, (W, b) in enumerate(p):
            h = h @ W.T + b
            if k < len(p) - 1:
                h = jax.nn.relu(h)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

    grad = jax.value_and_grad(loss_fn)

    def step(carry, xy):
        p, v = carry
        loss, g = grad(p, *xy)
        v = jax.tree.map(lambda vi, gi: mu * vi + gi, v, g)      # PyTorch's SGD momentum
        p = jax.tree.map(lambda pi, vi: pi - lr * vi, p, v)
        return (p, v), loss

    def epoch(p, v, perm):
        Xs, ys = Xd[perm], yd[perm]
        m = full * batch
        (p, v), losses = jax.lax.scan(step, (p, v), (Xs[:m].reshape(full, batch, d),
                                                     ys[:m].reshape(full, batch)))
        if rest:
            (p, v), last = step((p, v), (Xs[m:], ys[m:]))
            losses = jnp.concatenate([losses, last[None]])
        return p, v, losses

    compiled = jax.jit(epoch, donate_argnums=(0, 1))
    rng = np.random.default_rng(seed)

    def run():
        perm = rng.permutation(n) if shuffle else np.arange(n)
        perm = jax.device_put(perm.astype(np.int32), cpu)
        p, v, losses = compiled(state["params"], state["velocity"], perm)
        jax.block_until_ready((p, v, losses))
        state.update(params=p, velocity=v, losses=losses)
    run.state = state
    return run


_BUILDERS = {"fastnn": _fastnn_epoch, "torch": _torch_epoch, "numpy": _numpy_epoch,
             "sklearn": _sklearn_epoch, "jax": _jax_epoch}


def available(libraries):
    """The libraries of the list that can be imported here. jax is looked up, not imported:
    its import must wait for `_import_jax`, which sets its threads."""
    import importlib.util

    out = []
    for lib in libraries:
        if lib in ("fastnn", "numpy"):
            out.append(lib)
            continue
        if lib == "jax":
            try:
                found = importlib.util.find_spec("jax") is not None
            except (ImportError, ValueError):
                found = False
            if found:
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
    """`threads` threads (default one) for fastnn, numpy's BLAS and torch; JAX gets them when
    the jax runner imports it (`_import_jax`)."""
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
    input gradient of the first) and the ratio to fastnn (library time / fastnn time), all
    from wall time; `cpu_seconds` is the median of the process's CPU time per epoch (all its
    threads: with one thread per library it leaves out the time other programs took the
    core)."""
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
        cpu = {lib: [] for lib in libs}
        for r in range(repeats):
            for lib, f in runs.items():
                c0, t0 = time.process_time(), time.perf_counter()
                f()
                times[lib].append(time.perf_counter() - t0)
                cpu[lib].append(time.process_time() - c0)
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
                         "all_seconds": times[lib],
                         "cpu_seconds": statistics.median(cpu[lib]), "all_cpu_seconds": cpu[lib]})
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
