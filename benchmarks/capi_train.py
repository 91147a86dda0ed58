"""C ABI training vs Python's fused fit, side by side in one process: the same library
(libfastnn, loaded through ctypes for the C side), the same MLP, data, batch order and
optimizer. Each repeat times one epoch of fn.fit (everything included) and one epoch of
fastnn_trainer_epoch_ordered, alternating; prints the medians and the ratio of wall time and
of the process's CPU time (the steadier figure on a busy machine, with one thread).

    python benchmarks/capi_train.py [--hidden 256] [--batch 128] [--repeats 5] [--threads 1]
    python benchmarks/capi_train.py --model lenet --batch 64 --samples 12000

--model lenet: LeNet-5 (fn.models.lenet5) on 28x28 images, run on the layer plan on both
sides (the file carries its input shape).
"""
import argparse
import ctypes
import os
import statistics
import time

import numpy as np

import fastnn as fn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("mlp", "lenet"), default="mlp")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    fn.set_num_threads(args.threads)
    lib = ctypes.CDLL(os.path.join(fn.get_library_dir(), "libfastnn.so"))
    lib.fastnn_last_error.restype = ctypes.c_char_p
    lib.fastnn_model_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.fastnn_trainer_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                          ctypes.c_char_p, ctypes.c_int64, ctypes.c_uint64,
                                          ctypes.POINTER(ctypes.c_void_p)]
    lib.fastnn_trainer_epoch_ordered.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
        ctypes.c_uint64, ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double)]

    def check(status):
        if status:
            raise RuntimeError(lib.fastnn_last_error().decode())

    rng = np.random.default_rng(0)
    n, H = args.samples, args.hidden
    lenet = args.model == "lenet"
    X = rng.normal(size=(n, 1, 28, 28) if lenet else (n, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    if lenet:
        model, name = fn.models.lenet5(seed=0), "LeNet-5"
    else:
        model = fn.Sequential(fn.Linear(784, H), fn.ReLU(), fn.Linear(H, H), fn.ReLU(),
                              fn.Linear(H, 10), seed=0)
        name = f"MLP 784-{H}-{H}-10"
    path = "capi_train_bench.safetensors"
    fn.save(model, path, input_shape=X.shape[1:])
    cmodel, trainer = ctypes.c_void_p(), ctypes.c_void_p()
    check(lib.fastnn_model_load(path.encode(), ctypes.byref(cmodel)))
    os.unlink(path)
    check(lib.fastnn_trainer_create(cmodel, b"cross_entropy", b"sgd",
                                    b'{"lr": 0.01, "momentum": 0.9}', args.batch, 0,
                                    ctypes.byref(trainer)))
    opt = fn.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = fn.CrossEntropyLoss()
    tp, tc, cp, cc = [], [], [], []
    loss_c, acc_c = ctypes.c_double(), ctypes.c_double()
    for r in range(args.repeats + 1):       # repeat 0 warms up
        c0, t0 = time.process_time(), time.perf_counter()
        fn.fit(model, loss, opt, X, y, epochs=1, batch_size=args.batch, seed=r, verbose=0)
        c1, t1 = time.process_time(), time.perf_counter()
        order = np.random.default_rng(np.random.SeedSequence([r, 0]).spawn(2)[0]).permutation(n)
        key = int(np.random.SeedSequence([r, 0, 1]).generate_state(1, np.uint64)[0])
        c2, t2 = time.process_time(), time.perf_counter()
        check(lib.fastnn_trainer_epoch_ordered(trainer, X.ctypes.data, y.ctypes.data, n,
                                               order.ctypes.data, key, ctypes.byref(loss_c),
                                               ctypes.byref(acc_c)))
        c3, t3 = time.process_time(), time.perf_counter()
        if r:
            tp.append(t1 - t0)
            tc.append(t3 - t2)
            cp.append(c1 - c0)
            cc.append(c3 - c2)
    p, c = statistics.median(tp), statistics.median(tc)
    pc, ccpu = statistics.median(cp), statistics.median(cc)
    print(f"fastnn {fn.__version__}, table {fn.arch()}, threads {fn.get_num_threads()}, "
          f"{name}, SGD momentum 0.9, batch {args.batch}, {n} samples, "
          f"{args.repeats} alternating repeats")
    print(f"Python fn.fit epoch      : median {p:.3f} s  ({', '.join(f'{t:.3f}' for t in tp)})")
    print(f"C trainer epoch (ctypes) : median {c:.3f} s  ({', '.join(f'{t:.3f}' for t in tc)})")
    print(f"C / Python (wall)        : {c / p:.3f}")
    print(f"CPU time: Python {pc:.3f} s, C {ccpu:.3f} s (medians); C / Python {ccpu / pc:.3f}")
    lib.fastnn_trainer_free(trainer)
    lib.fastnn_model_free(cmodel)


if __name__ == "__main__":
    main()
