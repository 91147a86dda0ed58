"""The `fastnn` command.

  fastnn train             train an MLP (default: on the bundled 8x8 digits), report test accuracy
  fastnn info              build and CPU facts: kernel tables, OpenMP, threads
  fastnn bench             MLP training epochs against numpy, PyTorch, scikit-learn; GEMM
  fastnn bench-gemm        fastnn's GEMM against numpy's BLAS, side by side (see benchmarks/)
  fastnn bench-fused       fused GEMM + bias + ReLU against the three separate passes
  fastnn bench-threads     fastnn's GEMM and fit on one and two threads, with a second-core probe
"""
import argparse
import sys

import numpy as np

import fastnn


def _info(args):
    print(f"fastnn {fastnn.__version__}")
    print(f"kernel table : {fastnn.arch()} (available: {', '.join(fastnn.available_archs())})")
    print(f"openmp       : {fastnn.openmp_enabled()}, threads {fastnn.get_num_threads()}")
    print(f"bf16 GEMM    : {'native (AVX512-BF16)' if fastnn.bf16_native() else 'emulated'}")
    print(f"numpy        : {np.__version__}")
    return 0


def _bench_gemm(args):
    from . import _bench

    rows = _bench.gemm_compare(args.sizes, dtype=args.dtype, threads=args.threads,
                               repeats=args.repeats, min_time=args.min_time,
                               layouts=args.layouts.split(","))
    _bench.print_table(rows)
    return 0


def _bench_fused(args):
    from . import _bench

    rows = _bench.fused_compare(args.sizes, dtype=args.dtype, threads=args.threads,
                                repeats=args.repeats, min_time=args.min_time)
    print(f"{'M x K x N':>16} {'dtype':>8} {'thr':>3} {'fused us':>10} {'separate us':>11} "
          f"{'speedup':>7}")
    for r in rows:
        print(f"{r['shape']:>16} {r['dtype']:>8} {r['threads']:>3} {r['fused_us']:>10.1f} "
              f"{r['separate_us']:>11.1f} {r['speedup']:>7.3f}")
    return 0


_ACTIVATIONS = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "sigmoid": "Sigmoid", "tanh": "Tanh",
                "gelu": "GELU", "silu": "SiLU"}
_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop",
               "adagrad": "Adagrad"}


def _load_data(path, seed):
    """(name, (train, val, test) pairs) from --data: the digits, MNIST files or a CSV."""
    if path is None:
        X, y = fastnn.datasets.load_digits()
        name = "digits"
    elif path.endswith(".csv"):
        try:
            table = np.loadtxt(path, delimiter=",", ndmin=2)
        except ValueError:
            table = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)  # a header line
        X, y = table[:, :-1], table[:, -1]
        if len(table) < 10 or not np.array_equal(y, np.round(y)) or y.min() < 0:
            raise SystemExit(f"fastnn train: {path}: expected >= 10 rows with a class label "
                             f"(an integer >= 0) in the last column")
        y = y.astype(np.int64)
        name = path
    else:
        (x_train, y_train), (x_test, y_test) = fastnn.datasets.load_mnist(path)
        x_train, x_test = (a.reshape(len(a), -1).astype(np.float32) for a in (x_train, x_test))
        (tr, val, _) = fastnn.train_val_test_split(x_train, y_train, 0.1, 0, seed=seed)
        return path, (tr, val, (x_test, y_test))
    return name, fastnn.train_val_test_split(X, y, 0.15, 0.15, seed=seed, stratify=True)


class _TableLogger(fastnn.callbacks.ProgressLogger):
    """One table row per epoch (and the progress bar on a terminal with --verbose 1)."""

    cols = ("loss", "accuracy", "val_loss", "val_accuracy")

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        print(f"{'epoch':>5} " + " ".join(f"{c:>12}" for c in self.cols) + f" {'time':>8}")

    def on_epoch_end(self, epoch, logs=None):
        if self.bar:
            self.out.write("\r\033[K")
        print(f"{epoch + 1:>5} " + " ".join(f"{logs[c]:>12.4f}" for c in self.cols)
              + f" {logs['epoch_time']:>7.2f}s", flush=True)


def _train(args):
    if args.model != "mlp":   # convolutional models: fastnn.models
        from . import models
        return models.train_cli(args, _TableLogger(args.verbose) if args.verbose else None)
    try:
        hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    except ValueError:
        hidden = [0]
    if any(h < 1 for h in hidden):
        raise SystemExit(f"fastnn train: --hidden must be comma-separated layer widths, "
                         f"got {args.hidden!r}")
    name, ((X, y), (Xv, yv), (Xt, yt)) = _load_data(args.data, args.seed)
    scaler = fastnn.Standardizer().fit(X)
    X, Xv, Xt = (scaler.transform(a).astype(np.float32) for a in (X, Xv, Xt))
    classes = int(max(y.max(), yv.max(), yt.max())) + 1
    widths = [X.shape[1], *hidden]
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [fastnn.Linear(a, b), getattr(fastnn, _ACTIVATIONS[args.activation])()]
    model = fastnn.Sequential(*layers, fastnn.Linear(widths[-1], classes), seed=args.seed)
    opt_cls = getattr(fastnn, _OPTIMIZERS[args.optimizer])
    opt = opt_cls(model.parameters(), **({} if args.lr is None else {"lr": args.lr}))
    loss = fastnn.CrossEntropyLoss()
    print(f"data: {name}: {len(X)} train, {len(Xv)} validation, {len(Xt)} test samples, "
          f"{X.shape[1]} features, {classes} classes")
    print(f"model: {' -> '.join(str(w) for w in widths + [classes])} ({args.activation}), "
          f"{sum(p.size for p in model.parameters())} parameters; {opt}")
    callbacks = [_TableLogger(args.verbose)] if args.verbose else []
    fastnn.fit(model, loss, opt, X, y, epochs=args.epochs, batch_size=args.batch_size,
               validation_data=(Xv, yv), seed=args.seed, callbacks=callbacks, verbose=0)
    result = fastnn.evaluate(model, loss, Xt, yt)
    print(f"test accuracy: {result['accuracy']:.4f} (test loss {result['loss']:.4f})")
    if args.save:
        fastnn.save(model, args.save)
        print(f"saved the model to {args.save}")
    return 0


def _add_train(sub):
    t = sub.add_parser("train", help="train an MLP on the bundled digits (or --data) and "
                                     "report the test accuracy")
    t.add_argument("--data", help="a folder of MNIST IDX files, an .npz (x_train, y_train, "
                                  "x_test, y_test) or a CSV with the label in the last column "
                                  "(default: the bundled 8x8 digits)")
    t.add_argument("--model", choices=("mlp", "lenet", "cnn"), default="mlp",
                   help="mlp (default); lenet: LeNet-5 on Fashion-MNIST (Debian package "
                        "dataset-fashion-mnist, or --data its folder; the issue's recipe is "
                        "--epochs 5 --batch-size 64); cnn: a small CNN on the digits as "
                        "1x8x8 images (fastnn.models; --hidden and --activation are for mlp)")
    t.add_argument("--hidden", default="256", help="hidden layer widths (default %(default)s)")
    t.add_argument("--activation", choices=sorted(_ACTIVATIONS), default="relu")
    t.add_argument("--optimizer", choices=sorted(_OPTIMIZERS), default="adam")
    t.add_argument("--lr", type=float, help="learning rate (default: the optimizer's)")
    t.add_argument("--epochs", type=int, default=30, help="default %(default)s")
    t.add_argument("--batch-size", type=int, default=32, help="default %(default)s")
    t.add_argument("--seed", type=int, default=0, help="default %(default)s")
    t.add_argument("--save", metavar="PATH", help="save the trained model (safetensors)")
    t.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="0: results only; 1: per-epoch table, progress bar on a terminal; "
                        "2: table only (default %(default)s)")
    t.set_defaults(run=_train)


def _workloads(text):
    """'256/32,256/128' -> [(256, 32), (256, 128)] (hidden width / batch size)."""
    out = []
    for item in filter(None, text.split(",")):
        try:
            h, b = (int(v) for v in item.split("/"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected H/B pairs such as 256/32, got {item!r}")
        if h < 1 or b < 1:
            raise argparse.ArgumentTypeError(f"H and B must be >= 1, got {item!r}")
        out.append((h, b))
    return out


def _bench_threads(args):
    from . import _bench

    print(f"second-core probe before: {_bench.second_core_probe():.2f}x "
          "(2.0 = the second core is free, 1.0 = it is busy)")
    rows = _bench.threads_compare(args.sizes, dtype=args.dtype, repeats=args.repeats,
                                  min_time=args.min_time)
    print(f"{'M x K x N':>16} {'dtype':>8} {'1 thread GF/s':>13} {'2 threads GF/s':>14} "
          f"{'speedup':>7}")
    for r in rows:
        print(f"{r['shape']:>16} {r['dtype']:>8} {r['gflops_1']:>13.1f} {r['gflops_2']:>14.1f} "
              f"{r['speedup']:>7.2f}")
    if args.fit:
        from . import _bench_mlp

        print("fastnn.fit, one epoch of 784-H-H-10 on 60 000 samples:")
        print(f"{'H':>6} {'batch':>6} {'step threads':>12} {'1 thread s':>10} {'2 threads s':>11} "
              f"{'speedup':>7}")
        for r in _bench_mlp.fit_threads_compare(args.fit, repeats=args.repeats):
            print(f"{r['hidden']:>6} {r['batch']:>6} {r['step_threads']:>12} {r['seconds_1']:>10.3f} "
                  f"{r['seconds_2']:>11.3f} {r['speedup']:>7.2f}")
    print(f"second-core probe after: {_bench.second_core_probe():.2f}x")
    return 0


def _bench(args):
    import json

    from . import _bench, _bench_mlp

    _bench_mlp.single_thread()
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else None
    workloads = [(h, b) for h in _ints(args.hidden) for b in _ints(args.batch)]
    libs = args.libs.split(",")
    rows = _bench_mlp.mlp_compare(workloads, libs, repeats=args.repeats, n=args.samples,
                                  log=log)
    gemm = _bench.gemm_compare(args.gemm, repeats=args.repeats, min_time=0.1) \
        if args.gemm else []
    step = _bench_mlp.step_overhead() if args.overhead else None
    memory = _bench_mlp.memory_compare(*workloads[0], libs, n=args.samples) \
        if args.memory else None
    if args.json:
        print(json.dumps({"mlp": rows, "gemm": gemm, "step_overhead_s": step,
                          "peak_memory_mib": memory}, indent=1))
        return 0
    print(f"MLP one epoch, {args.samples} samples, float32, 1 thread, median of "
          f"{args.repeats} interleaved rounds")
    print(f"{'workload':>26} {'library':>8} {'seconds':>8} {'samples/s':>10} {'GFLOP/s':>8} "
          f"{'time / fastnn':>13}")
    for r in rows:
        ratio = "" if r["ratio_to_fastnn"] is None else f"{r['ratio_to_fastnn']:.2f}"
        print(f"{r['workload']:>26} {r['library']:>8} {r['seconds']:>8.3f} "
              f"{r['samples_per_s']:>10.0f} {r['gflops']:>8.1f} {ratio:>13}")
    if gemm:
        print()
        _bench.print_table(gemm)
    if step is not None:
        print(f"\nfixed cost of one training step (784-8-8-10, batch 1): {step * 1e6:.2f} us")
    if memory is not None:
        h, b = workloads[0]
        print(f"\npeak resident memory, one epoch of 784-{h}-{h}-10 B={b} in a fresh process "
              f"(MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in memory.items()))
    return 0


def _ints(text):
    return [int(v) for v in str(text).split(",")]


def main(argv=None):
    p = argparse.ArgumentParser(prog="fastnn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_train(sub)
    sub.add_parser("info", help="print build and CPU facts").set_defaults(run=_info)
    b = sub.add_parser("bench-gemm", help="GEMM GFLOP/s against numpy, interleaved")
    b.add_argument("--sizes", default="256,512,1024,2048",
                   help="comma-separated squares N or MxKxN shapes (default %(default)s)")
    b.add_argument("--layouts", default="nn",
                   help="comma-separated layouts: nn, tn (a.T @ b), nt (a @ b.T), tt")
    b.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32",
                   help="bfloat16: matmul_bf16 (float32 arrays, bf16 products) against numpy's "
                        "float32")
    b.add_argument("--threads", type=int, default=1, help="threads for both sides (default 1)")
    b.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    b.add_argument("--min-time", type=float, default=0.2,
                   help="seconds each timing covers at least (default %(default)s)")
    b.set_defaults(run=_bench_gemm)
    f = sub.add_parser("bench-fused", help="fused GEMM+bias+ReLU against separate passes")
    f.add_argument("--sizes", default="32x784x256,128x784x256,256x1024x1024,128x256x256",
                   help="MxKxN shapes of x @ W.T (default %(default)s)")
    f.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--repeats", type=int, default=7)
    f.add_argument("--min-time", type=float, default=0.2)
    f.set_defaults(run=_bench_fused)
    m = sub.add_parser("bench", help="the standard comparison: MLP epochs against numpy, "
                       "PyTorch and scikit-learn (when installed), GEMM, step overhead")
    m.add_argument("--hidden", default="256,1024", help="hidden widths H (default %(default)s)")
    m.add_argument("--batch", default="32,128,256", help="batch sizes (default %(default)s)")
    m.add_argument("--libs", default="fastnn,torch,numpy,sklearn",
                   help="libraries to compare (default %(default)s)")
    m.add_argument("--samples", type=int, default=60000)
    m.add_argument("--repeats", type=int, default=5)
    m.add_argument("--gemm", default="512,1024,32x784x256,128x784x256",
                   help="GEMM shapes against numpy ('' for none; default %(default)s)")
    m.add_argument("--no-overhead", dest="overhead", action="store_false",
                   help="skip the per-step fixed-cost measurement")
    m.add_argument("--memory", action="store_true",
                   help="also measure peak memory per library (fresh processes, first workload)")
    m.add_argument("--json", action="store_true", help="print JSON instead of tables")
    m.add_argument("-v", "--verbose", action="store_true", help="log each timed epoch")
    m.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    m.add_argument("--min-time", type=float, default=0.1, help=argparse.SUPPRESS)
    m.set_defaults(run=_bench)
    t = sub.add_parser("bench-threads", help="fastnn's GEMM on 1 and 2 threads, with a probe")
    t.add_argument("--sizes", default="512,1024,2048,32x784x256,128x784x256,128x256x10,"
                   "256x1024x1024", help="N or MxKxN shapes (default %(default)s)")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--repeats", type=int, default=7)
    t.add_argument("--min-time", type=float, default=0.2)
    t.add_argument("--fit", type=_workloads, default="256/32,256/128",
                   help="H/B MLP workloads for fit with 1 and 2 threads ('' for none; "
                        "default %(default)s)")
    t.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    t.set_defaults(run=_bench_threads)
    args = p.parse_args(argv)
    if args.cmd == "train" and (args.epochs < 1 or args.batch_size < 1 or args.seed < 0):
        p.error("--epochs and --batch-size must be >= 1 and --seed >= 0")
    if args.cmd.startswith("bench") and (args.repeats < 5 or args.threads < 1):
        p.error("--repeats must be >= 5 and --threads >= 1")
    if args.cmd == "bench-gemm" and not set(args.layouts.split(",")) <= {"nn", "tn", "nt", "tt"}:
        p.error(f"--layouts: expected a comma-separated subset of nn,tn,nt,tt, got {args.layouts!r}")
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
