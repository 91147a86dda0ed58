"""Peak memory of a CNN training run, fastnn against PyTorch, each in a fresh process.

    python benchmarks/cnn_peak_memory.py                       # LeNet-5, 60 000 images, 1 epoch
    python benchmarks/cnn_peak_memory.py --model cifar --images 10000

Each library trains the same model (LeNet-5 on 1x28x28, or the CIFAR-style net on 3x32x32;
SGD momentum 0.9, batch 64, one thread) for one epoch on the same random float32 images, in
its own new interpreter. Reported: the process's peak resident set (ru_maxrss) after the
imports and the data (before training), at the end, and the growth during training; the
data alone is the same array for both. Linux (ru_maxrss in KiB).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys
import numpy as np
lib, model_name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
shape = (1, 28, 28) if model_name == "lenet" else (3, 32, 32)
rng = np.random.default_rng(0)
X = rng.standard_normal((n,) + shape, dtype=np.float32)
y = rng.integers(0, 10, n)
if lib == "fastnn":
    import fastnn as fn
    fn.set_num_threads(1)
    model = fn.models.lenet5(seed=0) if model_name == "lenet" else fn.models.cifar_net(seed=0)
    opt = fn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=1, batch_size=64, verbose=0, seed=0)
else:
    import torch
    from torch import nn
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sys.path.insert(0, sys.argv[4])
    from torch_models import torch_model
    model = torch_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    perm = torch.randperm(n)
    for i in range(0, n, 64):
        idx = perm[i:i + 64]
        opt.zero_grad(set_to_none=True)
        crit(model(Xt[idx]), yt[idx]).backward()
        opt.step()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before": before, "after": after}))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["lenet", "cifar"], default="lenet")
    p.add_argument("--images", type=int, default=60000)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per library")
    args = p.parse_args(argv)
    data_mib = args.images * (784 if args.model == "lenet" else 3072) * 4 / 2 ** 20
    print(f"{args.model}, {args.images} random images ({data_mib:.0f} MiB of float32), "
          f"SGD momentum, batch 64, one thread, one epoch; peak RSS in MiB, "
          f"{args.repeats} fresh processes per library, alternated")
    rows = {"fastnn": [], "torch": []}
    for _ in range(args.repeats):
        for lib in rows:
            out = subprocess.run([sys.executable, "-c", CHILD, lib, args.model, str(args.images),
                                  str(Path(__file__).resolve().parent)],
                                 capture_output=True, text=True, check=True)
            rows[lib].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'library':8} {'before training':>16} {'peak':>8} {'growth':>8}")
    for lib, runs in rows.items():
        before = sorted(r["before"] for r in runs)[len(runs) // 2] / 1024
        after = sorted(r["after"] for r in runs)[len(runs) // 2] / 1024
        growth = sorted(r["after"] - r["before"] for r in runs)[len(runs) // 2] / 1024
        print(f"{lib:8} {before:16.1f} {after:8.1f} {growth:8.1f}")


if __name__ == "__main__":
    main()
