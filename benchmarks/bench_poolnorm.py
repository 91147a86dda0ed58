"""fastnn's pooling and normalization kernels against PyTorch (CPU), forward + backward.

    python benchmarks/bench_poolnorm.py                 # one thread, 7 interleaved rounds
    python benchmarks/bench_poolnorm.py --repeats 9 --only max_pool2d

For each workload (the activation shapes of LeNet-5 and of the CIFAR-style net at batch 64)
both libraries first compute the same forward and backward and are checked against each
other, then are timed interleaved (fastnn, torch, fastnn, torch, ...): each sample is the
best-of-`inner` mean time of forward + backward (fastnn: the op and its *_backward; torch:
the functional op on a tensor that requires grad, then .backward(dy)), and the table shows
the median of the samples and the ratio fastnn / torch (< 1: fastnn faster). One thread on
both sides (fastnn.set_num_threads(1), torch.set_num_threads(1)).
"""
import argparse
import statistics
import time

import numpy as np

import fastnn as fn
from fastnn import ops

WORKLOADS = [
    # (name, input shape): LeNet-5 and CIFAR-net activations at batch 64, and a LayerNorm
    ("max_pool2d 2x2", (64, 6, 28, 28)),
    ("max_pool2d 2x2", (64, 16, 10, 10)),
    ("max_pool2d 2x2", (64, 32, 32, 32)),
    ("max_pool2d 2x2", (64, 128, 8, 8)),
    ("max_pool2d 3x3 s2 p1", (64, 32, 32, 32)),
    ("avg_pool2d 3x3 s1 p1", (64, 32, 32, 32)),
    ("adaptive_avg_pool2d", (64, 128, 8, 8)),
    ("batch_norm train", (64, 32, 32, 32)),
    ("batch_norm train", (64, 64, 16, 16)),
    ("batch_norm train", (64, 128, 8, 8)),
    ("batch_norm eval", (64, 32, 32, 32)),
    ("layer_norm", (4096, 256)),
]


def _fastnn(name, x, dy, state):
    if name.startswith("max_pool2d"):
        k, s, p = (3, 2, 1) if "3x3" in name else (2, 2, 0)
        y, idx = ops.max_pool2d(x, k, s, p, return_indices=True)
        return y, ops.max_pool2d_backward(dy, x, idx, k, s, p)
    if name.startswith("avg_pool2d"):
        y = ops.avg_pool2d(x, 3, 1, 1)
        return y, ops.avg_pool2d_backward(dy, x, 3, 1, 1)
    if name.startswith("adaptive"):
        return ops.adaptive_avg_pool2d(x), ops.adaptive_avg_pool2d_backward(dy, x)
    if name.startswith("batch_norm"):
        training = name.endswith("train")
        w, b, rm, rv = state
        y, m, s = ops.batch_norm(x, rm, rv, w, b, training=training, return_stats=True)
        return y, ops.batch_norm_backward(dy, x, m, s, w, training=training)[0]
    y, m, r = ops.layer_norm(x, x.shape[-1], state[0], state[1], return_stats=True)
    return y, ops.layer_norm_backward(dy, x, x.shape[-1], m, r, state[0])[0]


def _torch(torch, name, tx, tdy, tstate):
    F = torch.nn.functional
    tx.grad = None
    if name.startswith("max_pool2d"):
        y = F.max_pool2d(tx, 3, 2, 1) if "3x3" in name else F.max_pool2d(tx, 2)
    elif name.startswith("avg_pool2d"):
        y = F.avg_pool2d(tx, 3, 1, 1)
    elif name.startswith("adaptive"):
        y = F.adaptive_avg_pool2d(tx, 1)
    elif name.startswith("batch_norm"):
        w, b, rm, rv = tstate
        y = F.batch_norm(tx, rm, rv, w, b, training=name.endswith("train"))
    else:
        y = F.layer_norm(tx, (tx.shape[-1],), tstate[0], tstate[1])
    y.backward(tdy)
    return y, tx.grad


def _time(f, inner):
    best = float("inf")
    for _ in range(inner):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds (>= 5)")
    p.add_argument("--inner", type=int, default=5, help="calls per sample (best of)")
    p.add_argument("--only", help="run the workloads whose name starts with this")
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error("--repeats must be >= 5")
    import torch

    fn.set_num_threads(1)
    torch.set_num_threads(1)
    print(f"fastnn {fn.__version__} ({fn.arch()} table), torch {torch.__version__}, 1 thread, "
          f"float32, median of {args.repeats} interleaved rounds of forward + backward")
    print(f"{'workload':>22} {'shape':>18} {'fastnn ms':>10} {'torch ms':>9} {'fastnn/torch':>12}")
    rng = np.random.default_rng(0)
    for name, shape in WORKLOADS:
        if args.only and not name.startswith(args.only):
            continue
        x = rng.standard_normal(shape).astype(np.float32)
        c = shape[-1] if name == "layer_norm" else shape[1]
        state = [rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32),
                 np.zeros(c, np.float32), np.ones(c, np.float32)]
        tx = torch.tensor(x, requires_grad=True)
        tstate = [torch.tensor(a) for a in state]
        out_shape = {"max": lambda: ops.max_pool2d(x, 3, 2, 1) if "3x3" in name
                     else ops.max_pool2d(x, 2),
                     "avg": lambda: ops.avg_pool2d(x, 3, 1, 1),
                     "ada": lambda: ops.adaptive_avg_pool2d(x)}.get(name[:3], lambda: x)().shape
        dy = rng.standard_normal(out_shape).astype(np.float32)
        tdy = torch.tensor(dy)
        fy, fdx = _fastnn(name, x, dy, [a.copy() for a in state])
        ty, tdx = _torch(torch, name, tx, tdy, [a.clone() for a in tstate])
        np.testing.assert_allclose(fy, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fdx, tdx.numpy(), rtol=1e-3, atol=1e-4)
        a, b = [], []
        for _ in range(args.repeats):
            a.append(_time(lambda: _fastnn(name, x, dy, state), args.inner))
            b.append(_time(lambda: _torch(torch, name, tx, tdy, tstate), args.inner))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{name:>22} {str(shape):>18} {ma * 1e3:>10.3f} {mb * 1e3:>9.3f} {ma / mb:>12.2f}",
              flush=True)


if __name__ == "__main__":
    main()
