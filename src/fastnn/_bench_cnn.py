"""One training epoch of a CNN on one thread: fastnn's fused step (the layer plan, fit's
default path), fastnn's per-op path and PyTorch CPU eager, side by side in one process,
interleaved (A B C A B C ...), median of the rounds. Behind ``fastnn bench --model`` and
benchmarks/bench_cnn_epoch.py.

Models: 'lenet' (fastnn.models.lenet5 on 1x28x28 images) and 'convnet' (the CIFAR-style
fastnn.models.cifar_net on 3x32x32). Random standard-normal images and random labels (the
arithmetic does not depend on the values), SGD lr 0.01 momentum 0.9, cross-entropy,
shuffled every epoch. fastnn runs with set_num_threads(threads), PyTorch with
torch.set_num_threads(threads) and one interop thread."""
import statistics
import time

import numpy as np

SHAPES = {"lenet": (1, 28, 28), "convnet": (3, 32, 32)}
RUNS = ("fastnn fused", "fastnn per-op", "PyTorch")
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def fastnn_epoch(name, X, y, batch, fused, seed):
    """One fit epoch of a fresh model; fused: the layer plan (asserted), else per-op."""
    import fastnn as fn
    from fastnn import _fused, models

    model = (models.lenet5 if name == "lenet" else models.cifar_net)(seed=seed)
    opt = fn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    saved = _fused.training_plan
    got = []

    def plan_of_fit(*a, **k):   # the plan fit itself builds: the path it then takes
        got.append(saved(*a, **k) if fused else None)
        return got[-1]
    _fused.training_plan = plan_of_fit
    try:
        fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=1, batch_size=batch,
               seed=seed, verbose=0)
    finally:
        _fused.training_plan = saved
    if not got or (got[0] is not None) != fused:
        raise RuntimeError("fit did not take the path asked for")


def torch_epoch(name, Xt, yt, batch, seed):
    import torch
    from ._torch_models import torch_model

    torch.manual_seed(seed)
    model = torch_model(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = torch.nn.CrossEntropyLoss()
    order = torch.randperm(len(Xt))
    for s in range(0, len(Xt), batch):
        idx = order[s:s + batch]
        opt.zero_grad()
        loss(model(Xt[idx]), yt[idx]).backward()
        opt.step()


def cnn_compare(name, images, batch=64, repeats=5, runs=RUNS, clock="cpu", threads=1,
                log=None):
    """{run: [seconds of each round]} for the runs asked (a subset of RUNS; PyTorch is left
    out with a note to log when torch is not installed), interleaved round by round."""
    import fastnn as fn

    if name not in SHAPES:
        raise ValueError(f"model must be one of {sorted(SHAPES)}, got {name!r}")
    tick = CLOCKS[clock]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((images,) + SHAPES[name]).astype(np.float32)
    y = rng.integers(0, 10, images).astype(np.int64)
    fn.set_num_threads(threads)
    calls = {}
    if "fastnn fused" in runs:
        calls["fastnn fused"] = lambda: fastnn_epoch(name, X, y, batch, True, 0)
    if "fastnn per-op" in runs:
        calls["fastnn per-op"] = lambda: fastnn_epoch(name, X, y, batch, False, 0)
    if "PyTorch" in runs:
        try:
            import torch
        except ImportError:
            if log:
                log("PyTorch is not installed: left out (pip install torch)")
        else:
            torch.set_num_threads(threads)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:      # already set in this process
                pass
            Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
            calls["PyTorch"] = lambda: torch_epoch(name, Xt, yt, batch, 0)
    times = {k: [] for k in calls}
    for r in range(repeats):
        for k, f in calls.items():
            t0 = tick()
            f()
            times[k].append(tick() - t0)
        if log:
            log(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    return times


def table(times):
    """Markdown rows: median, min-max and the ratio to PyTorch's median (when measured)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med.get("PyTorch")
    out = ["| run | seconds per epoch (median) | min–max | / PyTorch |", "|---|---:|---:|---:|"]
    for k, v in times.items():
        ratio = f"{med[k] / ref:.2f}" if ref else "–"
        out.append(f"| {k} | {med[k]:.2f} | {min(v):.2f}–{max(v):.2f} | {ratio} |")
    return out
