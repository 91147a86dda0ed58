"""LeNet-5 on Fashion-MNIST: test accuracy of fastnn and PyTorch with the same recipe.

    python benchmarks/fashion_lenet.py                         # 3 seeds, 5 epochs, both
    python benchmarks/fashion_lenet.py --seeds 0 --epochs 1 --libs fastnn

The recipe (issue 11's accuracy target): inputs standardised with the training set's mean and
standard deviation, Adam (lr 1e-3), batch 64, 5 epochs, softmax cross-entropy, one thread;
the test accuracy on the 10,000 test images after the last epoch, per seed and as the mean
over the seeds. Each library initialises its own weights from the seed (PyTorch's default
init for PyTorch, fastnn's for fastnn), so the runs differ as two seeds of one library do.
Data: Debian's package dataset-fashion-mnist (fastnn.datasets.load_fashion_mnist).
The CPU time of each epoch is printed too (a shared machine inflates wall time, not CPU time).
"""
import argparse
import statistics
import time

import numpy as np

import fastnn as fn
from fastnn.datasets import load_fashion_mnist
from torch_models import torch_model


def standardised():
    (xtr, ytr), (xte, yte) = load_fashion_mnist()
    mean, std = xtr.mean(), xtr.std()
    return ((xtr - mean) / std).astype(np.float32), ytr, ((xte - mean) / std).astype(np.float32), yte


def run_fastnn(seed, epochs, data):
    xtr, ytr, xte, yte = data
    fn.set_num_threads(1)
    model = fn.models.lenet5(seed=seed)
    opt = fn.Adam(model.parameters(), lr=1e-3)
    times = []
    for e in range(epochs):
        t = time.process_time()
        fn.fit(model, fn.CrossEntropyLoss(), opt, xtr, ytr, epochs=e + 1, initial_epoch=e,
               batch_size=64, seed=seed, verbose=0)
        times.append(time.process_time() - t)
    pred = model.predict(xte).argmax(1)
    return float((pred == yte).mean()), times


def run_torch(seed, epochs, data):
    import torch
    from torch import nn
    xtr, ytr, xte, yte = data
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = torch_model("lenet")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = nn.CrossEntropyLoss()
    X, Y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    g = torch.Generator().manual_seed(seed)
    times = []
    for _ in range(epochs):
        t = time.process_time()
        model.train()
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 64):
            idx = perm[i:i + 64]
            opt.zero_grad(set_to_none=True)
            crit(model(X[idx]), Y[idx]).backward()
            opt.step()
        times.append(time.process_time() - t)
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(xte)).argmax(1).numpy()
    return float((pred == yte).mean()), times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--libs", default="fastnn,torch", help="fastnn,torch")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    libs = args.libs.split(",")
    runners = {"fastnn": run_fastnn, "torch": run_torch}
    bad = [lib for lib in libs if lib not in runners]
    if bad:
        p.error(f"--libs: unknown {bad}; choose among {sorted(runners)}")
    data = standardised()
    acc = {lib: [] for lib in libs}
    print(f"LeNet-5, Fashion-MNIST, Adam 1e-3, batch 64, {args.epochs} epochs, one thread")
    print(f"{'library':8} {'seed':>4} {'test acc':>8}  CPU s per epoch")
    for seed in seeds:
        for lib in libs:                    # alternated, seed by seed
            a, times = runners[lib](seed, args.epochs, data)
            acc[lib].append(a)
            print(f"{lib:8} {seed:4d} {a:8.4f}  {' '.join(f'{t:.1f}' for t in times)}",
                  flush=True)
    for lib in libs:
        print(f"{lib:8} mean test accuracy over seeds {seeds}: {statistics.mean(acc[lib]):.4f}")
    if len(libs) == 2:
        d = statistics.mean(acc[libs[0]]) - statistics.mean(acc[libs[1]])
        print(f"difference {libs[0]} - {libs[1]}: {100 * d:+.2f} points")


if __name__ == "__main__":
    main()
