"""One training epoch of a CNN on one thread: fastnn's fused step (the layer plan, fit's
default path), fastnn's per-op path, and PyTorch CPU eager, side by side in one process,
interleaved (A B C A B C ...), median of the rounds (fastnn._bench_cnn, which
`fastnn bench --model lenet|convnet` runs too).

    python benchmarks/bench_cnn_epoch.py                         # LeNet-5, 60 000 images
    python benchmarks/bench_cnn_epoch.py --model cifar --images 10000 --repeats 5

LeNet-5 (fastnn.models.lenet5) on 28x28x1 images; the CIFAR-style net
(fastnn.models.cifar_net; --model cifar or convnet) on 32x32x3. Random standard-normal images
and random labels, batch 64, SGD lr 0.01 momentum 0.9, cross-entropy, shuffled every epoch.
Each run is timed by the process's CPU time (--clock cpu, the default; on a shared machine
other jobs do not inflate it) or by elapsed time (--clock wall).
"""
import argparse
import platform

import fastnn as fn
from fastnn import _bench_cnn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["cifar", "convnet", "lenet"], default="lenet")
    ap.add_argument("--images", type=int, default=60000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clock", choices=sorted(_bench_cnn.CLOCKS), default="cpu")
    ap.add_argument("--skip", default="", help="comma-separated: fused, per-op, torch")
    args = ap.parse_args()
    name = "convnet" if args.model == "cifar" else args.model
    skip = set(filter(None, args.skip.split(",")))
    runs = [r for r, s in zip(_bench_cnn.RUNS, ("fused", "per-op", "torch")) if s not in skip]
    versions = f"fastnn {fn.__version__} ({fn.arch()})"
    if "torch" not in skip:
        import torch
        versions += f", PyTorch {torch.__version__}"
    print(f"{args.model}: one epoch of {args.images} images {_bench_cnn.SHAPES[name]}, batch "
          f"{args.batch}, SGD momentum 0.9, one thread, {args.clock} time, median of "
          f"{args.repeats}; {versions}; {platform.processor() or platform.machine()}")
    times = _bench_cnn.cnn_compare(name, args.images, args.batch, args.repeats, runs,
                                   args.clock, log=lambda m: print(m, flush=True))
    print("\n".join(_bench_cnn.table(times)))


if __name__ == "__main__":
    main()
