"""The `fastnn` command.

  fastnn train             train an MLP (default: on the bundled 8x8 digits; --data a CSV,
                           MNIST files or an .npz), report the test score, --save the model
  fastnn predict           answers of a saved model for the rows of a CSV file
  fastnn evaluate          a saved model's score on a labelled CSV file
  fastnn info              build and CPU facts: kernel tables, OpenMP, threads
  fastnn bench             MLP training epochs against numpy, PyTorch, scikit-learn, JAX; GEMM;
                           --model lenet|convnet: a CNN epoch against PyTorch
                           (a quick suite by default, --full for the long one)
  fastnn bench-gemm        fastnn's GEMM against numpy's BLAS, side by side (see benchmarks/)
  fastnn bench-fused       fused GEMM + bias + ReLU against the three separate passes
  fastnn bench-threads     fastnn's GEMM and fit on one and two threads, with a second-core probe

A mistake in the arguments or the data ends the command with one line on stderr naming the
option or file, what was expected and what came, and exit status 2; --debug shows the
traceback instead. Arguments, data and output paths are checked before training starts.
"""
import argparse
import csv
import math
import os
import sys
import tempfile

import numpy as np

import fastnn
from .table import DataError, infer_task, read_csv


class UsageError(Exception):
    """A user mistake: reported as one line on stderr, exit status 2."""

    def __init__(self, message, prog=None):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become UsageError (one line, no usage block)."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')", prog=self.prog)


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def _check_output(path, option):
    """UsageError unless a file can be written at path (checked by creating and removing a
    temporary file in its folder)."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a folder, expected a file path")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: the folder {folder} does not exist")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: the file exists and is not writable")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fastnn-check-"):
            pass
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot write in {folder} "
                         f"({e.strerror or e})") from None


def _set_threads(args):
    if getattr(args, "threads", None):
        fastnn.set_num_threads(args.threads)


def _info(args):
    _set_threads(args)
    print(f"fastnn {fastnn.__version__}")
    print(f"kernel table : {fastnn.arch()} (available: {', '.join(fastnn.available_archs())})")
    print(f"openmp       : {fastnn.openmp_enabled()}, threads {fastnn.get_num_threads()}")
    print(f"bf16 GEMM    : {'native (AVX512-BF16)' if fastnn.bf16_native() else 'emulated'}")
    from ._kernels import gemm_blocking
    b = gemm_blocking()
    kib = lambda n: f"{n // 1024} KiB" if n else "unknown"  # noqa: E731
    print(f"caches       : L1d {kib(b['l1d'])}, L2 {kib(b['l2'])}")
    for dt in ("float32", "float64"):
        mr, nr, mc, kc, nc = b[dt]
        print(f"GEMM {dt:7}: micro-tile {mr}x{nr}, MC {mc}, KC {kc}, NC {nc}")
    print(f"numpy        : {np.__version__}")
    return 0


def _bench_gemm(args):
    from . import _bench

    rows = _bench.gemm_compare(args.sizes, dtype=args.dtype, threads=args.threads,
                               repeats=args.repeats, min_time=args.min_time,
                               layouts=args.layouts.split(","))
    _bench.print_table(rows)
    with _bench.kept_threads(args.threads), _bench.blas_threads(args.threads):
        for lib, line in _bench.kernel_lines(["fastnn", "numpy"]).items():
            print(f"{lib}: {line}")
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
_MIN_ROWS = 10


def _is_table(path):
    """CSV (or any delimited text) unless a folder of IDX files or an .npz."""
    return not (os.path.isdir(path) or path.endswith(".npz"))


def _load_training_data(args):
    """(description, X, y, task, reason, table or None, split) from --data and the options.

    split: ((X, y), (Xv, yv), (Xt, yt)) with y as raw labels or values."""
    path = args.data
    csv_only = [o for o, v in (("--target", args.target), ("--delimiter", args.delimiter),
                               ("--header/--no-header", args.header)) if v is not None]
    if path is not None and not os.path.exists(path):
        raise UsageError(f"--data {path}: no such file or folder")
    if path is None or not _is_table(path):
        if csv_only:
            raise UsageError(f"{csv_only[0]} applies to CSV data only, got --data "
                             f"{path or '(the bundled digits)'}")
        if args.task == "regress":
            raise UsageError(f"--task regress: {path or 'the bundled digits'} holds class "
                             f"labels; regression needs a CSV with a numeric target")
        if path is None:
            X, y = fastnn.datasets.load_digits()
            split = fastnn.train_val_test_split(X, y, 0.15, 0.15, seed=args.seed,
                                                stratify=True)
            return "digits", "classify", None, None, split
        try:
            (x_train, y_train), (x_test, y_test) = fastnn.datasets.load_mnist(path)
        except (OSError, KeyError, ValueError) as e:
            raise UsageError(f"--data {path}: {e}") from None
        x_train, x_test = (a.reshape(len(a), -1).astype(np.float32) for a in (x_train, x_test))
        tr, val, _ = fastnn.train_val_test_split(x_train, y_train, 0.1, 0, seed=args.seed)
        return path, "classify", None, None, (tr, val, (x_test, y_test))
    table = read_csv(path, target=-1 if args.target is None else args.target,
                     delimiter=args.delimiter, header=args.header)
    if len(table) < _MIN_ROWS:
        raise UsageError(f"--data {path}: expected at least {_MIN_ROWS} data rows, got "
                         f"{len(table)}")
    name = repr(table.target_name) if table.header else table.target_name
    task, reason = infer_task(table.y, f"target {name}")
    given = args.task is not None
    if given and args.task != task:
        if args.task == "regress" and table.y.dtype.kind in "US":
            raise UsageError(f"--task regress: the target {name} of {path} holds text labels "
                             f"(such as {str(table.y[0])!r}), not numbers")
        task, reason = args.task, f"--task {args.task}"
    elif given:
        reason = f"--task {args.task}"
    if task == "classify":
        counts = np.unique(table.y, return_counts=True)[1]
        if len(counts) < 2:
            raise UsageError(f"--data {path}: the target {name} holds a single class "
                             f"({str(table.y[0])!r}); a classifier needs at least 2")
    split = fastnn.train_val_test_split(table.X, table.y, 0.15, 0.15, seed=args.seed,
                                        stratify=task == "classify")
    return path, task, reason, table, split


class _TableLogger(fastnn.callbacks.ProgressLogger):
    """One table row per epoch (and the progress bar on a terminal with --verbose 1)."""

    def __init__(self, verbose, cols):
        super().__init__(verbose)
        self.cols = cols

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        print(f"{'epoch':>5} " + " ".join(f"{c:>12}" for c in self.cols) + f" {'time':>8}")

    def on_epoch_end(self, epoch, logs=None):
        if self.bar:
            self.out.write("\r\033[K")
        print(f"{epoch + 1:>5} " + " ".join(f"{logs[c]:>12.4f}" for c in self.cols)
              + f" {logs['epoch_time']:>7.2f}s", flush=True)


def _regression_scores(pred, y):
    err = pred - y
    ss = float(np.sum((y - y.mean()) ** 2))
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2))),
            "r2": 1.0 - float(np.sum(err ** 2)) / ss if ss > 0 else float("nan")}


def _check_train_args(args):
    try:
        hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    except ValueError:
        hidden = [0]
    if any(h < 1 for h in hidden):
        raise UsageError(f"--hidden must be comma-separated layer widths (integers >= 1), got "
                         f"{args.hidden!r}")
    if args.seed < 0:
        raise UsageError(f"--seed must be an integer >= 0, got {args.seed}")
    if args.save:
        _check_output(args.save, "--save")
    if args.plot:
        _check_output(args.plot, "--plot")
        from . import plot
        try:
            plot.check_path(args.plot)
        except (ImportError, ValueError) as e:
            raise UsageError(f"--plot {args.plot}: {e}") from None
    return hidden


def _train(args):
    hidden = _check_train_args(args)
    _set_threads(args)
    comm = fastnn.distributed.launch_cli() if args.distributed else None
    if args.model != "mlp":   # convolutional models: fastnn.models
        from . import models
        cols = ("loss", "accuracy", "val_loss", "val_accuracy")
        return models.train_cli(args, _TableLogger(args.verbose, cols) if args.verbose else None,
                                comm)
    try:
        name, task, reason, table, ((X, y), (Xv, yv), (Xt, yt)) = _load_training_data(args)
    except DataError as e:
        raise UsageError(str(e)) from None
    if args.batch_size > len(X):
        raise UsageError(f"--batch-size {args.batch_size} is larger than the {len(X)} training "
                         f"samples of {name}; choose at most {len(X)}")
    scaler = fastnn.Standardizer().fit(X)
    X, Xv, Xt = (scaler.transform(a).astype(np.float32) for a in (X, Xv, Xt))
    encoder = target_scaler = None
    if task == "classify":
        encoder = fastnn.LabelEncoder().fit(np.concatenate([y, yv, yt]))
        y, yv, yt = (encoder.transform(a) for a in (y, yv, yt))
        outputs = len(encoder.classes_)
        loss, cols = fastnn.CrossEntropyLoss(), ("loss", "accuracy", "val_loss", "val_accuracy")
        what = f"{outputs} classes"
    else:
        target_scaler = fastnn.Standardizer().fit(y.reshape(-1, 1))
        yt_raw = yt.astype(np.float64)
        y, yv, yt = (target_scaler.transform(a.reshape(-1, 1).astype(np.float64))
                     .astype(np.float32) for a in (y, yv, yt))
        outputs = 1
        loss, cols = fastnn.MSELoss(), ("loss", "mae", "val_loss", "val_mae")
        what = f"regression target {table.target_name!r}" if table.header \
            else f"regression target ({table.target_name})"
    widths = [X.shape[1], *hidden]
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [fastnn.Linear(a, b), getattr(fastnn, _ACTIVATIONS[args.activation])()]
    model = fastnn.Sequential(*layers, fastnn.Linear(widths[-1], outputs), seed=args.seed)
    opt_cls = getattr(fastnn, _OPTIMIZERS[args.optimizer])
    opt = opt_cls(model.parameters(), **({} if args.lr is None else {"lr": args.lr}))
    print(f"data: {name}: {len(X)} train, {len(Xv)} validation, {len(Xt)} test samples, "
          f"{X.shape[1]} features, {what}")
    if table is not None:
        text = table.y.dtype.kind in "US"
        hint = "" if reason.startswith("--task") or text else \
            f"; --task {'regress' if task == 'classify' else 'classify'} to override"
        print(f"task: {task} ({'' if reason.startswith('--task') else 'inferred: '}{reason}"
              f"{hint})")
    print(f"model: {' -> '.join(str(w) for w in widths + [outputs])} ({args.activation}), "
          f"{sum(p.size for p in model.parameters())} parameters; {opt}")
    if task == "regress":
        print("(loss and mae during training are on the standardized target)")
    callbacks = [_TableLogger(args.verbose, cols)] if args.verbose else []
    history = fastnn.fit(model, loss, opt, X, y, epochs=args.epochs, batch_size=args.batch_size,
                         validation_data=(Xv, yv), seed=args.seed, callbacks=callbacks, verbose=0,
                         comm=comm)
    result = fastnn.evaluate(model, loss, Xt, yt, comm=comm)
    if task == "classify":
        print(f"test accuracy: {result['accuracy']:.4f} (test loss {result['loss']:.4f})")
    else:
        pred = target_scaler.inverse_transform(model.predict(Xt).astype(np.float64))[:, 0]
        s = _regression_scores(pred, yt_raw)
        print(f"test MAE: {s['mae']:.4g}, RMSE: {s['rmse']:.4g}, R^2: {s['r2']:.4f} "
              f"(in the target's units; test loss {result['loss']:.4f})")
    if args.save and (comm is None or comm.rank == 0):
        target = None if table is None else (table.target_name if table.header
                                              else table.target_index)
        pre = fastnn.Preprocess(scaler, encoder, target_scaler, task=task,
                                feature_names=None if table is None else table.feature_names,
                                target=target)
        fastnn.save(model, args.save, preprocess=pre)
        print(f"saved the model to {args.save} (with its preprocessing: standardizer"
              f"{', class labels' if encoder is not None else ', target scale'})")
    if args.plot and (comm is None or comm.rank == 0):
        from . import plot
        plot.history(history, args.plot, title=f"fastnn train: {name}")
        print(f"saved the training curves to {args.plot}")
    return 0


# ---- predict and evaluate ----------------------------------------------------------------------

def _load_model(path):
    if not os.path.exists(path):
        raise UsageError(f"--model {path}: no such file")
    if os.path.isdir(path):
        raise UsageError(f"--model {path}: is a folder, expected a .safetensors model file")
    try:
        return fastnn.load(path)
    except (ValueError, TypeError, OSError) as e:
        raise UsageError(f"--model {path}: cannot load it: {e}") from None


def _features_of(model):
    pre = model.preprocess
    k = pre.n_features if pre is not None else None
    return k if k is not None else model._in_features()


def _read_for_model(args, model, need_target):
    """The table of --data for this model: its feature columns, and the target column when
    there is one (needed by evaluate)."""
    if not os.path.exists(args.data):
        raise UsageError(f"--data {args.data}: no such file")
    pre = model.preprocess
    k = _features_of(model)
    saved = None if pre is None else pre.target
    try:
        # first the columns as text, to find where the target is
        peek = read_csv(args.data, target=None if not need_target else (
            args.target if args.target is not None else -1), delimiter=args.delimiter,
            header=args.header, numeric=False)
        width = len(peek.names)
        target = getattr(args, "target", None)
        by_name = peek.header and pre is not None and pre.feature_names is not None
        if by_name:   # the header names the columns: pick the model's by name
            if target is None and need_target:
                if not (isinstance(saved, str) and saved in peek.names):
                    raise UsageError(f"--data {args.data}: no target column {saved!r} in the "
                                     f"header ({', '.join(peek.names)}); name it with "
                                     f"--target")
                target = saved
        elif target is None and (need_target or (k is not None and width == k + 1)):
            if isinstance(saved, str) and peek.header and saved in peek.names:
                target = saved
            elif isinstance(saved, int) and saved < width and not peek.header:
                target = saved
            else:
                target = -1
        table = read_csv(args.data, target=target, delimiter=args.delimiter,
                         header=peek.header, features=pre.feature_names if by_name else None)
    except DataError as e:
        raise UsageError(str(e)) from None
    if k is not None and table.X.shape[1] != k:
        extra = " and the target column" if need_target else " (or those and the target column)"
        raise UsageError(f"--data {args.data}: has {table.X.shape[1]} feature columns"
                         f"{'' if table.target_name is None else ' besides the target'}; the "
                         f"model takes {k}{extra}")
    if pre is None:
        print(f"note: {args.model} holds no preprocessing (saved without preprocess=): the "
              f"features are used as they are", file=sys.stderr)
    return table


def _answers(model, X, batch_size):
    pre = model.preprocess
    Xs = X if pre is None else pre.transform(X)
    out = model.predict(Xs, batch_size=batch_size)
    if pre is None:
        pre = fastnn.Preprocess(task="regress" if out.shape[1] == 1 else "classify")
    return out, pre.decode(out)


def _format(v):
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


def _predict(args):
    _set_threads(args)
    model = _load_model(args.model)
    if args.output:
        _check_output(args.output, "--output")
    table = _read_for_model(args, model, need_target=False)
    _, answers = _answers(model, table.X, args.batch_size)
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        w = csv.writer(out, delimiter=table.delimiter, lineterminator="\n")
        if table.header:
            w.writerow(table.names + ["prediction"])
        for row, a in zip(table.raw_rows, answers):
            w.writerow(row + [_format(a)])
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output:
        print(f"wrote {len(answers)} predictions to {args.output}", file=sys.stderr)
    return 0


def _evaluate(args):
    _set_threads(args)
    model = _load_model(args.model)
    table = _read_for_model(args, model, need_target=True)
    pre = model.preprocess
    out, answers = _answers(model, table.X, args.batch_size)
    n = len(table)
    regress = (pre.task == "regress") if pre is not None and pre.task else out.shape[1] == 1
    if regress:
        if table.y.dtype.kind in "US":
            raise UsageError(f"--data {args.data}: the target column {table.target_name!r} "
                             f"holds text, but the model predicts numbers")
        s = _regression_scores(np.asarray(answers, np.float64), table.y)
        print(f"MAE: {s['mae']:.4g}, RMSE: {s['rmse']:.4g}, R^2: {s['r2']:.4f} "
              f"({n} rows of {args.data}, target {table.target_name!r})")
        return 0
    truth = table.y
    if pre is not None and pre.label_encoder is not None:
        classes = pre.label_encoder.classes_
        if classes.dtype.kind in "US":
            truth = truth.astype(str) if truth.dtype.kind not in "US" else truth
            known = np.isin(truth, classes)
        else:
            if truth.dtype.kind in "US":
                raise UsageError(f"--data {args.data}: the target column "
                                 f"{table.target_name!r} holds text (such as {str(truth[0])!r}), "
                                 f"but the model's classes are numbers")
            truth = truth.astype(classes.dtype)
            known = np.isin(truth, classes)
        if not known.all():
            i = int(np.flatnonzero(~known)[0])
            raise UsageError(f"--data {args.data}: line {table.lines[i]}: label "
                             f"{str(truth[i])!r} is not one of the model's classes "
                             f"({fastnn.data._short_list(classes)})")
        idx = pre.label_encoder.transform(truth)
    else:
        idx = truth.astype(np.int64)
    loss = fastnn.CrossEntropyLoss().forward(out.astype(np.float64), idx) \
        if out.shape[1] > 1 else float("nan")
    acc = float(np.mean(np.asarray(answers) == (truth if pre is not None and
                                                pre.label_encoder is not None else idx)))
    print(f"accuracy: {acc:.4f} (loss {loss:.4f}; {n} rows of {args.data}, target "
          f"{table.target_name!r})")
    return 0


def _add_data_options(p, target_help):
    p.add_argument("--target", metavar="COLUMN", help=target_help)
    p.add_argument("--delimiter", metavar="CHAR",
                   help="the field separator of a CSV (default: detected among , ; tab | and "
                        "space); '\\t' for tab")
    p.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the CSV's first row names the columns (default: detected)")


def _add_train(sub, common):
    t = sub.add_parser("train", parents=[common],
                       help="train an MLP on the bundled digits (or --data) and report the "
                            "test score")
    t.add_argument("--data", help="a CSV (features and a target column; a header row is "
                                  "detected), a folder of MNIST IDX files or an .npz "
                                  "(x_train, y_train, x_test, y_test) (default: the bundled "
                                  "8x8 digits)")
    _add_data_options(t, "the target column of a CSV, by name or index (default: the last)")
    t.add_argument("--task", choices=["classify", "regress"],
                   help="default: inferred from the target (text labels, or few distinct "
                        "integers: classify; otherwise regress), with the reason printed")
    t.add_argument("--model", choices=("mlp", "lenet", "cnn"), default="mlp",
                   help="mlp (default); lenet: LeNet-5 on Fashion-MNIST (Debian package "
                        "dataset-fashion-mnist, or --data its folder; the issue's recipe is "
                        "--epochs 5 --batch-size 64); cnn: a small CNN on the digits as "
                        "1x8x8 images (fastnn.models; --hidden, --activation, --task are for mlp)")
    t.add_argument("--hidden", default="256", help="hidden layer widths (default %(default)s)")
    t.add_argument("--activation", choices=sorted(_ACTIVATIONS), default="relu")
    t.add_argument("--optimizer", choices=sorted(_OPTIMIZERS), default="adam")
    t.add_argument("--lr", type=_positive_float,
                   help="learning rate, > 0 (default: the optimizer's)")
    t.add_argument("--epochs", type=_positive_int, default=30, help="default %(default)s")
    t.add_argument("--batch-size", type=_positive_int, default=32, help="default %(default)s")
    t.add_argument("--seed", type=int, default=0, help="default %(default)s")
    t.add_argument("--save", metavar="PATH",
                   help="save the trained model with its preprocessing (safetensors); the "
                        "path is checked before training")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of `mpiexec -n P fastnn train "
                        "--distributed` (needs fastnn[mpi]); --batch-size is the global batch")
    t.add_argument("--plot", metavar="PATH", help="save the training curves as a picture, e.g. "
                   "curves.png (needs the extra fastnn-core[plot])")
    t.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="0: results only; 1: per-epoch table, progress bar on a terminal; "
                        "2: table only (default %(default)s)")
    t.set_defaults(run=_train)
    p = sub.add_parser("predict", parents=[common],
                       help="a saved model's answers for the rows of a CSV")
    p.add_argument("--model", required=True, metavar="PATH",
                   help="a model saved by fastnn train --save or fastnn.save")
    p.add_argument("--data", required=True, metavar="CSV",
                   help="rows of raw features (as at training); a column more is taken as "
                        "the target and ignored")
    p.add_argument("--output", metavar="FILE",
                   help="write here instead of stdout: each input row, then its prediction "
                        "(the class label or the value)")
    _add_data_options(p, argparse.SUPPRESS)
    p.add_argument("--batch-size", type=_positive_int, default=256, help=argparse.SUPPRESS)
    p.set_defaults(run=_predict)
    e = sub.add_parser("evaluate", parents=[common],
                       help="a saved model's accuracy (or MAE, RMSE, R^2) on a labelled CSV")
    e.add_argument("--model", required=True, metavar="PATH")
    e.add_argument("--data", required=True, metavar="CSV")
    _add_data_options(e, "the target column, by name or index (default: the training "
                         "target's name, else the last)")
    e.add_argument("--batch-size", type=_positive_int, default=256, help=argparse.SUPPRESS)
    e.set_defaults(run=_evaluate)


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


_QUICK = {"hidden": "256", "batch": "128", "samples": 10000, "libs": "fastnn,torch,numpy",
          "gemm": "512,128x784x256", "overhead_steps": 2000}
_FULL = {"hidden": "256,1024", "batch": "32,128,256", "samples": 60000,
         "libs": "fastnn,torch,numpy,sklearn", "gemm": "512,1024,32x784x256,128x784x256",
         "overhead_steps": 20000}


_CNN_IMAGES = {"lenet": (10000, 60000), "convnet": (2000, 10000)}   # quick, --full


def _bench_cnn(args, log):
    """fastnn bench --model lenet|convnet: one training epoch of the CNN, fastnn's fused
    step (and per-op path with --per-op) against PyTorch, interleaved."""
    import json
    import statistics

    from . import _bench_cnn as bc

    libs = [lib.strip() for lib in (args.libs or "fastnn,torch").split(",") if lib.strip()]
    unknown = sorted(set(libs) - {"fastnn", "torch"})
    if unknown:
        raise UsageError(f"--libs: unknown {', '.join(unknown)} for --model; expected some "
                         f"of fastnn,torch")
    try:
        batch = _ints(args.batch or "64")
    except ValueError:
        batch = []
    if len(batch) != 1:
        raise UsageError(f"--batch: with --model, one batch size >= 1, got {args.batch!r}")
    args.batch_cnn = batch[0]
    if (args.samples or _CNN_IMAGES[args.model][1 if args.full else 0]) < args.batch_cnn:
        raise UsageError(f"--samples: with --model, at least one batch of images "
                         f"(--batch {args.batch_cnn}), got {args.samples}")
    runs = (["fastnn fused"] if "fastnn" in libs else []) + \
        (["fastnn per-op"] if args.per_op else []) + (["PyTorch"] if "torch" in libs else [])
    images = args.samples or _CNN_IMAGES[args.model][1 if args.full else 0]
    log(f"fastnn bench --model {args.model}: one epoch of {images} images "
        f"{bc.SHAPES[args.model]}, batch {args.batch_cnn}, SGD momentum 0.9, "
        f"{', '.join(runs)}, {args.repeats} interleaved rounds, {args.threads} thread(s), "
        f"CPU time")
    times = bc.cnn_compare(args.model, images, args.batch_cnn, args.repeats, runs,
                           threads=args.threads, log=log)
    log("done")
    if args.json:
        print(json.dumps({"model": args.model, "images": images, "seconds": times},
                         indent=1))
        return 0
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model}: one epoch of {images} images, batch {args.batch_cnn}, "
          f"{args.threads} thread(s), CPU time, median of {args.repeats} interleaved rounds")
    print("\n".join(bc.table(times)))
    if "fastnn fused" in med and "PyTorch" in med:
        print(f"\nfastnn's epoch takes {med['fastnn fused'] / med['PyTorch']:.2f}x PyTorch's "
              f"time")
    return 0


def _bench(args):
    import json
    import time

    t_start = time.perf_counter()

    def log(message):
        if not args.quiet:
            print(f"[{time.perf_counter() - t_start:6.1f}s] {message}", file=sys.stderr,
                  flush=True)

    if args.model is not None:
        return _bench_cnn(args, log)

    suite = _FULL if args.full else _QUICK
    for key, value in suite.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    try:
        workloads = [(h, b) for h in _ints(args.hidden) for b in _ints(args.batch)]
    except ValueError:
        raise UsageError(f"--hidden and --batch must be comma-separated integers >= 1, got "
                         f"{args.hidden!r} and {args.batch!r}") from None
    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    from . import _bench_mlp

    unknown = sorted(set(libs) - set(_bench_mlp.LIBRARIES))
    if unknown:
        raise UsageError(f"--libs: unknown {', '.join(unknown)}; expected some of "
                         f"{','.join(_bench_mlp.LIBRARIES)}")
    if "jax" in libs and not _bench_mlp.available(["jax"]):
        raise UsageError("--libs jax: JAX is not installed in this environment; `pip install "
                         "jax` (it is no dependency of fastnn), or leave jax out of --libs")
    log(f"fastnn bench, {'full' if args.full else 'quick (--full for the long)'} suite: MLP "
        f"784-H-H-10 one epoch of {args.samples} samples for H/B "
        f"{', '.join(f'{h}/{b}' for h, b in workloads)}, libraries {','.join(libs)}, "
        f"{args.repeats} interleaved rounds, {args.threads} thread(s)")
    from . import _bench

    log(f"making the data ({args.samples} x 784 float32)")
    _bench_mlp.single_thread(args.threads)
    rows = _bench_mlp.mlp_compare(workloads, libs, repeats=args.repeats, n=args.samples,
                                  log=log)
    gemm = []
    if args.gemm:
        log(f"GEMM against numpy: {args.gemm}")
        gemm = _bench.gemm_compare(args.gemm, repeats=args.repeats, min_time=args.min_time,
                                   threads=args.threads)
    step = None
    if args.overhead:
        log(f"fixed cost of a training step ({args.overhead_steps} steps at batch 1)")
        step = _bench_mlp.step_overhead(steps=args.overhead_steps)
    memory = None
    if args.memory:
        log("peak memory per library (fresh processes)")
        memory = _bench_mlp.memory_compare(*workloads[0], libs, n=args.samples)
    with _bench.blas_threads(args.threads):
        kernels = _bench.kernel_lines([lib for lib in libs if lib != "jax"])
    if "jax" in libs:
        kernels["jax"] = _bench_mlp.jax_kernels()
    log("done")
    if args.json:
        print(json.dumps({"mlp": rows, "gemm": gemm, "step_overhead_s": step,
                          "peak_memory_mib": memory, "kernels": kernels,
                          **({"jax": kernels["jax"]} if "jax" in kernels else {})}, indent=1))
        return 0
    print(f"MLP one epoch, {args.samples} samples, float32, {args.threads} thread(s), median "
          f"of {args.repeats} interleaved rounds")
    print(f"{'workload':>26} {'library':>8} {'seconds':>8} {'samples/s':>10} {'GFLOP/s':>8} "
          f"{'time / fastnn':>13}")
    for r in rows:
        ratio = "" if r["ratio_to_fastnn"] is None else f"{r['ratio_to_fastnn']:.2f}"
        print(f"{r['workload']:>26} {r['library']:>8} {r['seconds']:>8.3f} "
              f"{r['samples_per_s']:>10.0f} {r['gflops']:>8.1f} {ratio:>13}")
    for lib, line in kernels.items():
        print(f"{lib}: {line}")
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
    values = [int(v) for v in str(text).split(",")]
    if not values or min(values) < 1:
        raise ValueError(text)
    return values


def _build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=_positive_int, metavar="N",
                         help="threads for fastnn's kernels (default: OpenMP's, the cores)")
    both = argparse.ArgumentParser(add_help=False, parents=[common, threads])
    p = _Parser(prog="fastnn", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser, metavar="COMMAND")
    _add_train(sub, both)
    sub.add_parser("info", parents=[both], help="print build and CPU facts").set_defaults(
        run=_info)
    b = sub.add_parser("bench-gemm", parents=[common],
                       help="GEMM GFLOP/s against numpy, interleaved")
    b.add_argument("--sizes", default="256,512,1024,2048",
                   help="comma-separated squares N or MxKxN shapes (default %(default)s)")
    b.add_argument("--layouts", default="nn",
                   help="comma-separated layouts: nn, tn (a.T @ b), nt (a @ b.T), tt")
    b.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32",
                   help="bfloat16: matmul_bf16 (float32 arrays, bf16 products) against numpy's "
                        "float32")
    b.add_argument("--threads", type=_positive_int, default=1,
                   help="threads for both sides (default 1)")
    b.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    b.add_argument("--min-time", type=float, default=0.2,
                   help="seconds each timing covers at least (default %(default)s)")
    b.set_defaults(run=_bench_gemm)
    f = sub.add_parser("bench-fused", parents=[common],
                       help="fused GEMM+bias+ReLU against separate passes")
    f.add_argument("--sizes", default="32x784x256,128x784x256,256x1024x1024,128x256x256",
                   help="MxKxN shapes of x @ W.T (default %(default)s)")
    f.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    f.add_argument("--threads", type=_positive_int, default=1)
    f.add_argument("--repeats", type=int, default=7)
    f.add_argument("--min-time", type=float, default=0.2)
    f.set_defaults(run=_bench_fused)
    m = sub.add_parser("bench", parents=[common],
                       help="the standard comparison: MLP epochs against numpy, PyTorch and "
                            "scikit-learn (when installed; JAX with --libs), GEMM, step "
                            "overhead; a quick suite "
                            "(about a minute) by default, --full for the long one")
    m.add_argument("--full", action="store_true",
                   help=f"the long suite: H {_FULL['hidden']}, batches {_FULL['batch']}, "
                        f"{_FULL['samples']} samples, libraries {_FULL['libs']}, GEMM "
                        f"{_FULL['gemm']} (default: H {_QUICK['hidden']}, batch "
                        f"{_QUICK['batch']}, {_QUICK['samples']} samples, {_QUICK['libs']}, "
                        f"GEMM {_QUICK['gemm']})")
    m.add_argument("--hidden", help="hidden widths H (overrides the suite's)")
    m.add_argument("--batch", help="batch sizes (overrides the suite's)")
    m.add_argument("--libs", help="libraries to compare, among fastnn,torch,numpy,sklearn,jax "
                                  "(overrides the suite's; jax, never in a suite: one "
                                  "jax.jit(lax.scan) program per epoch, when JAX is installed)")
    m.add_argument("--samples", type=_positive_int, help="samples per epoch (overrides the "
                                                          "suite's)")
    m.add_argument("--repeats", type=int, default=5)
    m.add_argument("--gemm", help="GEMM shapes against numpy ('' for none; overrides the "
                                  "suite's)")
    m.add_argument("--no-overhead", dest="overhead", action="store_false",
                   help="skip the per-step fixed-cost measurement")
    m.add_argument("--memory", action="store_true",
                   help="also measure peak memory per library (fresh processes, first workload)")
    m.add_argument("--json", action="store_true", help="print JSON instead of tables")
    m.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines on stderr")
    m.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    m.add_argument("--threads", type=_positive_int, default=1,
                   help="threads for every library (default 1: the protocol's primary "
                        "figures are single-thread)")
    m.add_argument("--min-time", type=float, default=0.1, help=argparse.SUPPRESS)
    m.add_argument("--model", choices=("lenet", "convnet"),
                   help="instead of the MLP suite: one training epoch of LeNet-5 (1x28x28) or "
                        "the CIFAR-style convnet (3x32x32) on random images, fastnn against "
                        "PyTorch; --samples images (default: lenet 10000, convnet 2000; "
                        "--full: 60000, 10000), --batch one size (default 64), --libs among "
                        "fastnn,torch")
    m.add_argument("--per-op", action="store_true",
                   help="with --model: also time fastnn's per-op path (no layer plan)")
    m.set_defaults(run=_bench)
    t = sub.add_parser("bench-threads", parents=[common],
                       help="fastnn's GEMM on 1 and 2 threads, with a probe")
    t.add_argument("--sizes", default="512,1024,2048,32x784x256,128x784x256,128x256x10,"
                   "256x1024x1024", help="N or MxKxN shapes (default %(default)s)")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--repeats", type=int, default=7)
    t.add_argument("--min-time", type=float, default=0.2)
    t.add_argument("--fit", type=_workloads, default="256/32,256/128",
                   help="H/B MLP workloads for fit with 1 and 2 threads ('' for none; "
                        "default %(default)s)")
    t.add_argument("--threads", type=_positive_int, default=2,
                   help="accepted for uniformity: this command compares 1 and 2 threads")
    t.set_defaults(run=_bench_threads)
    return p


def _check_args(args):
    if args.cmd.startswith("bench") and args.repeats < 5:
        raise UsageError(f"--repeats must be >= 5 (the benchmark protocol's minimum), got "
                         f"{args.repeats}")
    if args.cmd == "bench-gemm" and not set(args.layouts.split(",")) <= {"nn", "tn", "nt",
                                                                         "tt"}:
        raise UsageError(f"--layouts: expected a comma-separated subset of nn,tn,nt,tt, got "
                         f"{args.layouts!r}")
    if getattr(args, "delimiter", None) in ("\\t", "tab"):
        args.delimiter = "\t"


def main(argv=None):
    """Run the command line; returns the exit status (0 ok, 2 a user mistake, 1 a failure,
    130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    cmd = None
    try:
        args = _build_parser().parse_args(argv)
        cmd = f"fastnn {args.cmd}"
        _check_args(args)
        return args.run(args)
    except UsageError as e:
        if debug:
            raise
        print(f"{e.prog or cmd or 'fastnn'}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{cmd or 'fastnn'}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a failure that is not the user's: still one line
        if debug:
            raise
        print(f"{cmd or 'fastnn'}: error: {type(e).__name__}: {e} (run again with --debug "
              f"for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
