"""fastnn.sklearn.MLPClassifier against scikit-learn's MLPClassifier: fit and predict_proba
time, side by side, interleaved (A B A B ...), median of --repeats, on one thread
(threadpoolctl caps numpy's BLAS, fastnn.set_num_threads(1)); test accuracy of both.

    python benchmarks/bench_sklearn.py                 # the table of BENCHMARKS.md
    python benchmarks/bench_sklearn.py --repeats 7 --digits-epochs 200 --large-epochs 5

Both estimators get scikit-learn's defaults (hidden_layer_sizes=(100,), adam,
batch_size='auto', alpha=1e-4, random_state=0) with tol=0 and a fixed max_iter, so both
run the same number of epochs; both get the same arrays: float64 as StandardScaler or
``pixels / 255.0`` give them (scikit-learn then computes in float64, fastnn.sklearn casts to
its float32 default), and float32 (both compute in float32). Data: the bundled digits
(standardized; 80/20 stratified split) and 60000 x 784 Fashion-MNIST (pixels / 255) when its
IDX files are found (--fashion-mnist, default the Debian package's folder), else random data
of that shape.
"""
import argparse
import os
import platform
import statistics
import time
import warnings

import numpy as np
import sklearn
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SkMLP
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import fastnn as fn
from fastnn.sklearn import MLPClassifier as FnMLP


def timed(f):
    """(wall seconds, CPU seconds of this process, result): on one thread the CPU time is
    the wall time of an idle machine, and it does not count waiting for a busy core."""
    t, c = time.perf_counter(), time.process_time()
    out = f()
    return time.perf_counter() - t, time.process_time() - c, out


def compare(name, make_a, make_b, repeats):
    """Interleaved rounds of a (scikit-learn) and b (fastnn): medians and their ratio."""
    wa, wb, ca, cb, last = [], [], [], [], None
    for _ in range(repeats):
        w, c, a = timed(make_a)
        wa.append(w)
        ca.append(c)
        w, c, b = timed(make_b)
        wb.append(w)
        cb.append(c)
        last = (a, b)
    med = statistics.median
    return {"case": name, "sklearn": med(ca), "fastnn": med(cb), "ratio": med(ca) / med(cb),
            "wall": (med(wa), med(wb), med(wa) / med(wb))}, last


def load_large(path, seed):
    if path and os.path.isdir(path):
        (x, y), (xt, yt) = fn.datasets.load_mnist(path)
        f = lambda a: a.reshape(len(a), -1) / 255.0  # noqa: E731
        return "Fashion-MNIST", f(x), y, f(xt), yt
    rng = np.random.default_rng(seed)
    x = rng.random((70000, 784), dtype=np.float32)
    y = rng.integers(0, 10, 70000)
    return "random 60000x784", x[:60000], y[:60000], x[60000:], y[60000:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--digits-epochs", type=int, default=200, help="max_iter on digits")
    p.add_argument("--large-epochs", type=int, default=5, help="max_iter on 60000x784")
    p.add_argument("--fashion-mnist", default="/usr/share/datasets/fashion-mnist",
                   help="folder of Fashion-MNIST IDX files (else random data)")
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--input-dtypes", default="float64,float32",
                   help="dtypes of the arrays both estimators get (default %(default)s)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    fn.set_num_threads(1)
    rows = []
    with threadpool_limits(1):
        X, y = fn.datasets.load_digits()
        Xtr0, Xte0, ytr, yte = train_test_split(X.astype(np.float64), y, test_size=0.2,
                                                stratify=y, random_state=0)
        sc = StandardScaler().fit(Xtr0)
        large = None if args.skip_large else load_large(args.fashion_mnist, 0)
        for dt in args.input_dtypes.split(","):
            Xtr, Xte = (sc.transform(a).astype(dt) for a in (Xtr0, Xte0))
            kw = dict(random_state=0, tol=0.0, max_iter=args.digits_epochs)
            row, (a, b) = compare(f"fit digits {len(Xtr)}x64 {dt}, {args.digits_epochs} epochs",
                                  lambda: SkMLP(**kw).fit(Xtr, ytr),
                                  lambda: FnMLP(**kw).fit(Xtr, ytr), args.repeats)
            row["acc"] = (a.score(Xte, yte), b.score(Xte, yte))
            rows.append(row)
            Xp = np.ascontiguousarray(np.resize(Xte, (10000, Xte.shape[1])))
            row, _ = compare(f"predict_proba 10000x64 {dt} (digits model)",
                             lambda: a.predict_proba(Xp), lambda: b.predict_proba(Xp),
                             max(args.repeats, 7))
            rows.append(row)
            if large is None:
                continue
            name, X, y, Xt, yt = large
            X, Xt = X.astype(dt), Xt.astype(dt)
            kw = dict(random_state=0, tol=0.0, max_iter=args.large_epochs)
            row, (a, b) = compare(f"fit {name} 60000x784 {dt}, {args.large_epochs} epochs",
                                  lambda: SkMLP(**kw).fit(X, y),
                                  lambda: FnMLP(**kw).fit(X, y), args.repeats)
            row["acc"] = (a.score(Xt, yt), b.score(Xt, yt))
            rows.append(row)
            row, _ = compare(f"predict_proba 10000x784 {dt} ({name} model)",
                             lambda: a.predict_proba(Xt), lambda: b.predict_proba(Xt),
                             max(args.repeats, 7))
            rows.append(row)
    print(f"scikit-learn {sklearn.__version__}, fastnn {fn.__version__} (kernel table "
          f"{fn.arch()}), numpy {np.__version__}, Python {platform.python_version()}; "
          f"1 thread; median of {args.repeats}+ interleaved rounds; time: CPU seconds of "
          f"the process (time.process_time) and wall seconds")
    print()
    print("| case | scikit-learn CPU s | fastnn CPU s | speed-up (CPU) | wall s sklearn / "
          "fastnn (speed-up) | test accuracy sklearn / fastnn |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        acc = "" if "acc" not in r else f"{r['acc'][0]:.4f} / {r['acc'][1]:.4f}"
        wa, wb, wr = r["wall"]
        print(f"| {r['case']} | {r['sklearn']:.4f} | {r['fastnn']:.4f} | {r['ratio']:.1f}x | "
              f"{wa:.4f} / {wb:.4f} ({wr:.1f}x) | {acc} |")


if __name__ == "__main__":
    main()
