"""fastnn.cuda against PyTorch on one GPU: GEMM, MLP training steps, vector kernels.

Not run in CI (it needs a GPU and a CUDA build of torch). Run it on a GPU machine:

    python benchmarks/bench_cuda.py                        # everything, 7 repeats
    python benchmarks/bench_cuda.py --only gemm --repeats 9
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/bench_cuda.py --check   # self-check only

Protocol (docs/DESIGN.md section 6): every kernel is validated before it is timed (the
small-size self-check, then each workload against torch at full size with TF32 off); the
variants of a workload are timed interleaved (A B C A B C ...), each sample the CUDA-event
time of `inner` back-to-back calls on the default stream, and the table shows the median and
minimum of >= 5 samples and the ratio of medians to the first variant.

Workloads:
* gemm: C = A @ B, 4096^2 float32: fastnn.cuda through cuBLAS (when CuPy is there; TF32 off,
  then on) and through its Numba kernel (FP32 FMA, no tensor cores) vs torch.matmul with TF32
  off (torch.backends.cuda.matmul.allow_tf32 = False: FP32) and on (tensor cores).
* mlp: one SGD-momentum training step (forward, softmax cross-entropy, backward, update) of
  784-256-256-10 at batch 256 and 784-1024-1024-10 at batch 8192: fastnn.cuda.mlp.MLP
  (3L + 1 launches with the Numba GEMM, 6L launches through cuBLAS) vs torch eager
  (nn.Sequential, CrossEntropyLoss, optim.SGD), TF32 off/on.
* vector: element-wise and optimizer kernels on 16M float32 elements, as bytes moved per
  second and as a fraction of the device-to-device copy bandwidth (cudaMemcpy).
"""
import argparse
import math
import statistics
import sys

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="run only the small-size correctness self-check (works under "
                        "NUMBA_ENABLE_CUDASIM=1)")
    p.add_argument("--only", action="append", choices=["gemm", "mlp", "vector"],
                   help="workloads to time (repeatable; default all)")
    p.add_argument("--repeats", type=int, default=7, help="samples per variant (>= 5)")
    p.add_argument("--gemm-size", type=int, default=4096)
    p.add_argument("--vector-size", type=int, default=1 << 24)
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error("--repeats must be >= 5 (medians of fewer samples are not reported)")
    return args


# ---- the self-check (small sizes, numpy float64 reference) -----------------------------------

def _numpy_mlp_step(params, buf, sizes, x, labels, lr, momentum, first):
    """Forward, mean softmax cross-entropy, backward and SGD momentum in float64 numpy."""
    layers, o = [], 0
    for fi, fo in zip(sizes[:-1], sizes[1:]):
        layers.append((params[o:o + fo * fi].reshape(fo, fi), params[o + fo * fi:o + fo * fi + fo]))
        o += fo * fi + fo
    hs = [x]
    for i, (w, b) in enumerate(layers):
        z = hs[-1] @ w.T + b
        hs.append(np.maximum(z, 0) if i < len(layers) - 1 else z)
    z = hs[-1]
    zmax = z.max(1, keepdims=True)
    lse = zmax + np.log(np.exp(z - zmax).sum(1, keepdims=True))
    loss = float(np.mean(lse[:, 0] - z[np.arange(len(labels)), labels]))
    dz = np.exp(z - lse)
    dz[np.arange(len(labels)), labels] -= 1
    dz /= len(labels)
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        grads[i] = np.concatenate([(dz.T @ hs[i]).ravel(), dz.sum(0)])
        if i > 0:
            dz = (dz @ layers[i][0]) * (hs[i] > 0)
    g = np.concatenate(grads)
    buf = g.copy() if first else momentum * buf + g
    return params - lr * buf, buf, loss


def self_check():
    """Small shapes against numpy in float64 terms; raises AssertionError on a mismatch."""
    import fastnn.cuda as fc
    from fastnn.cuda import ops
    from fastnn.cuda.mlp import MLP

    rng = np.random.default_rng(0)
    eps = float(np.finfo(np.float32).eps)
    for ta, tb in [(False, False), (False, True), (True, False)]:
        m, k, n = 70, 33, 65                       # edges of the 64 x 64 x 16 tiles
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        ao, bo = (a.T if ta else a).astype(np.float64), (b.T if tb else b).astype(np.float64)
        bias = rng.standard_normal(n).astype(np.float32)
        got = fc.to_host(ops.matmul_bias_act(fc.to_device(a), fc.to_device(b),
                                             fc.to_device(bias), "relu", trans_a=ta,
                                             trans_b=tb))
        want = np.maximum(ao @ bo + bias, 0)
        tol = 2 * k * eps * (np.abs(ao) @ np.abs(bo) + np.abs(bias))
        assert np.all(np.abs(got - want) <= tol), f"matmul_bias_act ta={ta} tb={tb}"
    x = rng.normal(0, 3, 1000).astype(np.float32)
    gelu = fc.to_host(ops.gelu(fc.to_device(x), approximate="tanh"))
    x64 = x.astype(np.float64)
    want = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    assert np.all(np.abs(gelu - want) <= 8 * np.spacing(np.abs(want).astype(np.float32))
                  + 4 * eps * np.abs(x64)), "gelu"
    sizes, batch = [20, 16, 12, 5], 9
    xb = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    labels = rng.integers(0, sizes[-1], batch)
    net = MLP(sizes, seed=1)
    params = fc.to_host(net.params).astype(np.float64)
    buf = np.zeros_like(params)
    dx, dl = fc.to_device(xb), fc.to_device(labels)
    for step in range(2):
        loss = float(fc.to_host(net.train_step(dx, dl, lr=0.1, momentum=0.9))[0])
        params, buf, want_loss = _numpy_mlp_step(params, buf, sizes, xb.astype(np.float64),
                                                 labels, 0.1, 0.9, step == 0)
        assert abs(loss - want_loss) <= 1e-5 * abs(want_loss), f"mlp loss, step {step}"
        got = fc.to_host(net.params)
        assert np.allclose(got, params, rtol=2e-5, atol=2e-5 * np.abs(params).max()), \
            f"mlp parameters after step {step + 1}"
    print(f"self-check passed ({'CUDA simulator' if fc.simulator() else 'GPU'})")


# ---- timing ----------------------------------------------------------------------------------

class Table:
    def __init__(self):
        self.rows = []

    def add(self, workload, variant, samples, per_call_unit=None, baseline=None,
            last=None):
        """samples: seconds per call; per_call_unit: (amount per call, unit of amount / s /
        1e12); last column: the ratio of medians to `baseline`, or the text `last`."""
        med = statistics.median(samples)
        rate = "" if per_call_unit is None else \
            f"{per_call_unit[0] / med / 1e12:.2f} {per_call_unit[1]}"
        if last is None:
            last = "" if baseline is None else f"{med / baseline:.2f}x"
        self.rows.append((workload, variant, f"{med * 1e3:.3f}", f"{min(samples) * 1e3:.3f}",
                          rate, last))
        return med

    def note(self, text):
        self.rows.append((text,))

    def print(self):
        head = ("workload", "variant", "median ms", "min ms", "rate", "vs first")
        widths = [max(len(str(r[i])) for r in self.rows + [head] if len(r) > 1)
                  for i in range(len(head))]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for r in self.rows:
            print(r[0] if len(r) == 1 else "  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def interleaved(variants, repeats, inner):
    """{name: [seconds per call]}: each round times every variant once, in order."""
    from numba import cuda
    samples = {name: [] for name, _ in variants}
    for fn in (f for _, f in variants):            # warm-up: compilation, allocator, caches
        fn()
    cuda.synchronize()
    for _ in range(repeats):
        for name, fn in variants:
            start, end = cuda.event(), cuda.event()
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / 1e3 / inner)
    return samples


def set_tf32(torch, on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def backends():
    """The GEMM backends here: cuBLAS (through CuPy) when usable, and the Numba kernels."""
    import fastnn.cuda as fc
    fc.set_gemm_backend("auto")
    return ["cublas", "numba"] if fc.gemm_backend() == "cublas" else ["numba"]


def fastnn_variants(tf32):
    """(label, backend, tf32) of the fastnn variants to time; TF32 only through cuBLAS."""
    out = []
    for backend in backends():
        if backend == "cublas":
            out.append((f"cuBLAS TF32 {'on' if tf32 else 'off'}", "cublas", tf32))
        elif not tf32:
            out.append(("Numba GEMM (FP32 FMA)", "numba", False))
    return out


def fastnn_run(f, backend, tf32):
    import fastnn.cuda as fc

    def run():
        fc.set_gemm_backend(backend)
        fc.set_tf32(tf32)
        f()
    return run


def bench_gemm(table, torch, size, repeats):
    from numba import cuda
    import fastnn.cuda as fc
    from fastnn.cuda import ops
    g = torch.Generator(device="cuda").manual_seed(0)
    at = torch.randn(size, size, device="cuda", generator=g)
    bt = torch.randn(size, size, device="cuda", generator=g)
    a, b = cuda.as_cuda_array(at), cuda.as_cuda_array(bt)
    c = cuda.device_array((size, size), np.float32)
    ct = torch.empty(size, size, device="cuda")
    # validate at full size against torch in FP32: |error| <= 2 K eps (|A| |B|)
    set_tf32(torch, False)
    ref = torch.matmul(at, bt)
    bound = 2 * size * np.finfo(np.float32).eps * torch.matmul(at.abs(), bt.abs())
    for backend in backends():
        fc.set_gemm_backend(backend)
        ops.matmul(a, b, out=c)
        err = (torch.as_tensor(c, device="cuda") - ref).abs()
        assert bool((err <= bound).all()), f"fastnn.cuda matmul ({backend}) disagrees with torch"

    def torch_mm(tf32):
        def run():
            set_tf32(torch, tf32)
            torch.matmul(at, bt, out=ct)
        return run

    variants = [(f"fastnn.cuda matmul {label}", fastnn_run(lambda: ops.matmul(a, b, out=c),
                                                           backend, tf32))
                for label, backend, tf32 in fastnn_variants(tf32=False)]
    variants += [("torch.matmul TF32 off (FP32)", torch_mm(False))]
    variants += [(f"fastnn.cuda matmul {label}", fastnn_run(lambda: ops.matmul(a, b, out=c),
                                                           backend, tf32))
                 for label, backend, tf32 in fastnn_variants(tf32=True)]
    variants += [("torch.matmul TF32 on", torch_mm(True))]
    samples = interleaved(variants, repeats, inner=3)
    flops = 2.0 * size ** 3
    base = None
    for name, _ in variants:
        med = table.add(f"gemm {size}^2 f32", name, samples[name], (flops, "TFLOP/s"), base)
        base = base or med
    set_tf32(torch, False)
    fc.set_gemm_backend("auto")
    fc.set_tf32(False)


def bench_mlp(table, torch, sizes, batch, repeats):
    import fastnn.cuda as fc
    from fastnn.cuda.mlp import MLP
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    labels = rng.integers(0, sizes[-1], batch)
    net = MLP(sizes, seed=0)
    params = fc.to_host(net.params)
    model = torch.nn.Sequential(*[m for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:]))
                                  for m in ([torch.nn.Linear(fi, fo)] +
                                            ([torch.nn.ReLU()] if i < len(sizes) - 2 else []))])
    with torch.no_grad():                          # the same initial weights
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        for l, lin in enumerate(linears):
            lin.weight.copy_(torch.from_numpy(fc.to_host(net.weight(l))))
            lin.bias.copy_(torch.from_numpy(fc.to_host(net.bias(l))))
    model = model.cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    crit = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(labels).cuda()
    dx, dl = fc.to_device(x), fc.to_device(labels)

    def torch_step(tf32):
        def run():
            set_tf32(torch, tf32)
            opt.zero_grad(set_to_none=True)
            loss = crit(model(xt), yt)
            loss.backward()
            opt.step()
        return run

    # validate one step from the same weights (TF32 off)
    set_tf32(torch, False)
    loss_f = float(fc.to_host(net.train_step(dx, dl, lr=0.01, momentum=0.9))[0])
    opt.zero_grad()
    loss_t = crit(model(xt), yt)
    loss_t.backward()
    opt.step()
    assert math.isclose(loss_f, float(loss_t), rel_tol=1e-4), (loss_f, float(loss_t))
    flat_t = torch.cat([t for lin in linears for t in (lin.weight.detach().cpu().ravel(),
                                                       lin.bias.detach().cpu())]).numpy()
    assert np.allclose(fc.to_host(net.params), flat_t, rtol=1e-3,
                       atol=1e-4 * np.abs(params).max()), "MLP parameters differ from torch"
    launches = {}
    for backend in backends():
        fc.set_gemm_backend(backend)
        fc.reset_launch_count()
        net.train_step(dx, dl, lr=0.01)
        launches[backend] = fc.launch_count().total()

    step = lambda: net.train_step(dx, dl, lr=0.01)  # noqa: E731
    variants = [(f"fastnn.cuda step {label}", fastnn_run(step, backend, tf32))
                for label, backend, tf32 in fastnn_variants(tf32=False)]
    variants += [("torch eager TF32 off", torch_step(False))]
    variants += [(f"fastnn.cuda step {label}", fastnn_run(step, backend, tf32))
                 for label, backend, tf32 in fastnn_variants(tf32=True)]
    variants += [("torch eager TF32 on", torch_step(True))]
    samples = interleaved(variants, repeats, inner=20 if batch <= 1024 else 5)
    name = f"mlp {'-'.join(map(str, sizes))} b={batch}"
    flops = 6.0 * batch * sum(fi * fo for fi, fo in zip(sizes[:-1], sizes[1:]))
    base = None
    for v, _ in variants:
        med = table.add(name, v, samples[v], (flops, "TFLOP/s"), base)
        base = base or med
    table.note(f"  ({name}: fastnn.cuda launches per step: {launches})")
    set_tf32(torch, False)
    fc.set_gemm_backend("auto")
    fc.set_tf32(False)


def bench_vectors(table, n, repeats):
    from numba import cuda
    from fastnn.cuda import ops
    rng = np.random.default_rng(0)

    def vec(scale=1.0):
        return cuda.to_device((rng.standard_normal(n) * scale).astype(np.float32))

    x, dy, y, out = vec(), vec(), vec(), vec()
    p, g, m, buf = vec(), vec(1e-3), vec(1e-3), vec(1e-3)
    v = cuda.to_device(np.abs(rng.standard_normal(n) * 1e-3).astype(np.float32))
    steps = [1]

    def adam():
        steps[0] += 1
        ops.adam_step(p, g, m, v, step=steps[0], lr=1e-6)

    # (name, call, arrays read + written per element)
    variants = [
        ("cudaMemcpy device-to-device", lambda: out.copy_to_device(x), 2),
        ("copy kernel", lambda: ops.copy(x, out=out), 2),
        ("relu", lambda: ops.relu(x, out=out), 2),
        ("relu_backward", lambda: ops.relu_backward(dy, x, out=out), 3),
        ("gelu (erf)", lambda: ops.gelu(x, out=out), 2),
        ("sigmoid_backward", lambda: ops.sigmoid_backward(dy, x, out=out), 3),
        ("mse_loss_with_grad", lambda: ops.mse_loss_with_grad(x, y, grad_out=out), 3),
        ("sgd_step momentum", lambda: ops.sgd_step(p, g, buf, lr=1e-6, momentum=0.9), 5),
        ("adam_step", adam, 7),
    ]
    samples = interleaved([(name, fn) for name, fn, _ in variants], repeats, inner=10)
    copy_bw = None
    for name, _, arrays in variants:
        bytes_moved = arrays * 4.0 * n
        bw = bytes_moved / statistics.median(samples[name])
        copy_bw = copy_bw or bw
        table.add(f"vector {n >> 20}M f32", name, samples[name], (bytes_moved, "TB/s"),
                  last=f"{bw / copy_bw:.2f} of memcpy")


def main(argv=None):
    args = parse_args(argv)
    import fastnn.cuda as fc
    if not fc.is_available():
        print(f"fastnn.cuda cannot run: {fc._why_unavailable()}", file=sys.stderr)
        return 2
    if args.check:
        self_check()
        return 0
    if fc.simulator():
        print("the CUDA simulator is on: timings would be meaningless; use --check",
              file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("torch is not installed (pip install fastnn-core[bench] with a CUDA build of torch)",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch has no CUDA device: install a CUDA build of torch", file=sys.stderr)
        return 2
    from numba import cuda
    import numba
    import numba_cuda
    self_check()
    dev = cuda.get_current_device()
    print(f"GPU: {dev.name.decode() if isinstance(dev.name, bytes) else dev.name}, cc "
          f"{dev.compute_capability}; numba {numba.__version__}, numba-cuda "
          f"{getattr(numba_cuda, '__version__', '?')}, torch {torch.__version__}; "
          f"{args.repeats} interleaved samples per variant")
    table = Table()
    only = set(args.only or ["gemm", "mlp", "vector"])
    if "gemm" in only:
        bench_gemm(table, torch, args.gemm_size, args.repeats)
    if "mlp" in only:
        bench_mlp(table, torch, [784, 256, 256, 10], 256, args.repeats)
        bench_mlp(table, torch, [784, 1024, 1024, 10], 8192, args.repeats)
    if "vector" in only:
        bench_vectors(table, args.vector_size, args.repeats)
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
