"""One training epoch of a CNN on one thread: fastnn's fused step (the layer plan, fit's
default path), fastnn's per-op path, and PyTorch CPU eager, side by side in one process,
interleaved (A B C A B C ...), median of the rounds.

    python benchmarks/bench_cnn_epoch.py                         # LeNet-5, 60 000 images
    python benchmarks/bench_cnn_epoch.py --model cifar --images 10000 --repeats 5

LeNet-5 (fastnn.models.lenet5) on 28x28x1 images; the CIFAR-style net
(fastnn.models.cifar_net) on 32x32x3. Random standard-normal images and random labels (the
arithmetic does not depend on the values), batch 64, SGD lr 0.01 momentum 0.9, cross-entropy,
shuffled every epoch. Each run is timed by the process's CPU time (--clock cpu, the default;
on a shared machine other jobs do not inflate it) or by elapsed time (--clock wall). fastnn
runs with set_num_threads(1), PyTorch with torch.set_num_threads(1) and one interop thread.
"""
import argparse
import platform
import statistics
import time

import numpy as np

import fastnn as fn
from fastnn import _fused, models
from torch_models import torch_model

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
SHAPES = {"lenet": (1, 28, 28), "cifar": (3, 32, 32)}


def fastnn_epoch(name, X, y, batch, fused, seed):
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
    # (a separate training_plan call before fit, as this script once made, builds a second
    # parameter buffer that the optimizer is not tied to, and fit then fell back to per-op)
    assert got and (got[0] is not None) == fused, "fit did not take the path asked for"


def torch_epoch(name, Xt, yt, batch, seed):
    import torch
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(SHAPES), default="lenet")
    ap.add_argument("--images", type=int, default=60000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    ap.add_argument("--skip", default="", help="comma-separated: fused, per-op, torch")
    args = ap.parse_args()
    clock = CLOCKS[args.clock]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.images,) + SHAPES[args.model]).astype(np.float32)
    y = rng.integers(0, 10, args.images).astype(np.int64)
    fn.set_num_threads(1)
    runs = {"fastnn fused": lambda: fastnn_epoch(args.model, X, y, args.batch, True, 0),
            "fastnn per-op": lambda: fastnn_epoch(args.model, X, y, args.batch, False, 0)}
    skip = set(filter(None, args.skip.split(",")))
    if "fused" in skip:
        runs.pop("fastnn fused")
    if "per-op" in skip:
        runs.pop("fastnn per-op")
    versions = f"fastnn {fn.__version__} ({fn.arch()})"
    if "torch" not in skip:
        import torch
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        runs["PyTorch"] = lambda: torch_epoch(args.model, Xt, yt, args.batch, 0)
        versions += f", PyTorch {torch.__version__}"
    print(f"{args.model}: one epoch of {args.images} images {SHAPES[args.model]}, batch "
          f"{args.batch}, SGD momentum 0.9, one thread, {args.clock} time, median of "
          f"{args.repeats}; {versions}; {platform.processor() or platform.machine()}")
    times = {k: [] for k in runs}
    for r in range(args.repeats):
        for k, f in runs.items():
            t0 = clock()
            f()
            times[k].append(clock() - t0)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med.get("PyTorch")
    print("| run | seconds per epoch (median) | min–max | / PyTorch |")
    print("|---|---:|---:|---:|")
    for k, v in times.items():
        ratio = f"{med[k] / ref:.2f}" if ref else "–"
        print(f"| {k} | {med[k]:.2f} | {min(v):.2f}–{max(v):.2f} | {ratio} |")


if __name__ == "__main__":
    main()
