"""Data-parallel training (fastnn.distributed) against one process: what the MPI path costs
and what two ranks deliver, with a cost model of scaling to many machines.

    python benchmarks/bench_mpi.py                 # needs fastnn[mpi]: mpi4py + an mpiexec

1. Overhead at P=1: one fit epoch of 784-H-H-10 (ReLU; or LeNet-5 with --hidden lenet;
   softmax-CE, SGD momentum 0.9) at global batch --batch1 without comm, with comm=MPI.COMM_WORLD (one rank) and in the exact mode;
   interleaved in one process, one thread, median of --repeats, ratios.
2. Two ranks: one process at global batch --batch2 against `mpiexec -n 2` at the same global
   batch (one thread per rank), the gradients reduced through the shared-memory window and
   through an Allreduce (MPICommunicator(shared_memory=False)); interleaved launches, each
   timing its second epoch; with the second-core probe (2.0: the second core is free, 1.0:
   busy) before and after.
3. The cost model: bytes reduced per step, the step time at P ranks for a network bandwidth,
   the rank count where communication dominates; checked against the P=1, 2 measurements.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import fastnn
from fastnn import _bench, _bench_mlp


def model_and_opt(hidden, seed=0):
    """hidden: the MLP 784-hidden-hidden-10, or "lenet": LeNet-5 (fastnn.models.lenet5) on
    1x28x28 images."""
    if hidden == "lenet":
        from fastnn import models
        model = models.lenet5(seed=seed)
    else:
        model = fastnn.Sequential(fastnn.Linear(784, hidden), fastnn.ReLU(),
                                  fastnn.Linear(hidden, hidden), fastnn.ReLU(),
                                  fastnn.Linear(hidden, 10), seed=seed)
    return model, fastnn.SGD(model.parameters(), lr=0.01, momentum=0.9)


def make_data(samples, hidden):
    X, y = _bench_mlp.make_data(samples)
    return (X.reshape(-1, 1, 28, 28) if hidden == "lenet" else X), y


def describe(hidden):
    return "LeNet-5 (1x28x28)" if hidden == "lenet" else f"784-{hidden}-{hidden}-10"


def epoch_seconds(X, y, hidden, batch, comm=None, deterministic=False, cpu=False):
    """Wall seconds of one fit epoch (and, with cpu, this process's CPU seconds too)."""
    model, opt = model_and_opt(hidden)
    t0, c0 = time.perf_counter(), time.process_time()
    fastnn.fit(model, fastnn.CrossEntropyLoss(), opt, X, y, epochs=1, batch_size=batch, seed=0,
               verbose=0, comm=comm, deterministic=deterministic)
    wall = time.perf_counter() - t0
    return (wall, time.process_time() - c0) if cpu else wall


def worker(args):
    """One launch of part 2: a warm-up epoch, then a timed one; rank 0 prints JSON."""
    _bench_mlp.single_thread()
    X, y = make_data(args.samples, args.hidden)
    comm = None
    reduce_s = [0.0]
    if args.comm:
        from mpi4py import MPI

        from fastnn import distributed
        comm = MPI.COMM_WORLD
        comm_fit = (distributed.MPICommunicator(comm, shared_memory=False) if args.no_shared
                    else comm)   # COMM_WORLD's wrapper keeps its window between the two fits

        def timer(inner):
            def timed(self, grads, step):        # the time spent in the reduce
                t0 = time.perf_counter()
                inner(self, grads, step)
                reduce_s[0] += time.perf_counter() - t0
            return timed
        distributed.Session.reduce = timer(distributed.Session.reduce)
        distributed.Session.reduce_shared = timer(distributed.Session.reduce_shared)
    epoch_seconds(X, y, args.hidden, args.batch2, comm and comm_fit)
    reduce_s[0] = 0.0
    t = epoch_seconds(X, y, args.hidden, args.batch2, comm and comm_fit)
    allreduce = 0.0
    if comm is not None:   # the Allreduce alone: 10 of the gradient buffer's size, median
        buf = np.ones(nparams(args.hidden), dtype=np.float32)
        ts = []
        for _ in range(11):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            ts.append(time.perf_counter() - t0)
        allreduce = statistics.median(ts[1:])
    if comm is None or comm.Get_rank() == 0:
        print(json.dumps({"seconds": t, "reduce_seconds": reduce_s[0], "allreduce": allreduce}))


def nparams(hidden):
    return sum(p.size for p in model_and_opt(hidden)[0].parameters())


def launch(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=lambda v: v if v == "lenet" else int(v), default=1024,
                   help="the MLP's hidden width, or 'lenet' for LeNet-5 (default %(default)s)")
    p.add_argument("--batch1", type=int, default=256, help="global batch of part 1")
    p.add_argument("--batch2", type=int, default=512, help="global batch of part 2")
    p.add_argument("--samples", type=int, default=8192, help="samples per epoch")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--mpiexec", default=shutil.which("mpiexec", path=str(Path(sys.executable).parent))
                   or shutil.which("mpiexec"))
    p.add_argument("--parts", default="1,2", help="1: one rank against fit; 2: two ranks "
                   "against one process, and the cost model (default %(default)s)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--comm", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-shared", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from mpi4py import MPI   # one rank here (singleton start)

    _bench_mlp.single_thread()
    print(f"fastnn {fastnn.__version__}, kernel table {fastnn.arch()}, numpy {np.__version__}, "
          f"{MPI.Get_library_version().splitlines()[0].strip()}, mpi4py "
          f"{__import__('mpi4py').__version__}")
    X, y = make_data(args.samples, args.hidden)

    parts = set(args.parts.split(","))
    if "1" in parts:
        t1_step_256 = part1(args, X, y, MPI)
    if "2" in parts:
        part2(args, nparams(args.hidden), t1_step_256 if "1" in parts else None)


def part1(args, X, y, MPI):
    h = args.hidden
    print(f"\n1. one rank, {describe(h)}, global batch {args.batch1}, {args.samples} samples, "
          f"1 thread, {args.repeats} interleaved runs: median epoch seconds, wall and CPU "
          f"(the process's CPU time: less sensitive to other programs on the machine)")
    variants = {"fit": {}, "fit(comm), 1 rank": {"comm": MPI.COMM_WORLD},
                "fit(comm, deterministic=4)": {"comm": MPI.COMM_WORLD, "deterministic": 4},
                "fit(comm, deterministic=True)": {"comm": MPI.COMM_WORLD, "deterministic": True}}
    times = {k: [] for k in variants}
    epoch_seconds(X, y, h, args.batch1)      # warm-up
    for _ in range(args.repeats):
        for k, kw in variants.items():
            times[k].append(epoch_seconds(X, y, h, args.batch1, cpu=True, **kw))
    base = [statistics.median(t[i] for t in times["fit"]) for i in (0, 1)]
    for k, t in times.items():
        m = [statistics.median(x[i] for x in t) for i in (0, 1)]
        print(f"   {k:<30} wall {m[0]:7.3f} s (ratio {m[0] / base[0]:5.3f})   CPU {m[1]:7.3f} s "
              f"(ratio {m[1] / base[1]:5.3f})")
    steps = -(-args.samples // args.batch1)
    for k in list(times)[1:2]:
        extra = [c[1] - f[1] for c, f in zip(times[k], times["fit"])]
        print(f"   {k}: {statistics.median(extra) / steps * 1e6:.0f} us of CPU per step more "
              f"than fit (median of the paired differences)")
    return base[1] / steps


def part2(args, nparams, t1_step_256):
    h = args.hidden
    # 2. two ranks
    env = dict(os.environ, OMP_NUM_THREADS="1")
    me = [sys.executable, os.path.abspath(__file__), "--worker", "--hidden", str(h),
          "--batch2", str(args.batch2), "--samples", str(args.samples)]
    one_cmd = me
    two_cmd = [args.mpiexec, "-n", "2", *me, "--comm"]
    print(f"\n2. global batch {args.batch2}: one process against mpiexec -n 2 (1 thread per "
          f"rank; the gradients reduced through a shared-memory window, and through an "
          f"Allreduce), {args.repeats} interleaved launches (median of the second epoch)")
    probe0 = _bench.second_core_probe()
    one, two, two_ar = [], [], []
    for _ in range(args.repeats):
        one.append(launch(one_cmd, env))
        two.append(launch(two_cmd, env))
        two_ar.append(launch(two_cmd + ["--no-shared"], env))
    probe1 = _bench.second_core_probe()
    t_one = statistics.median(r["seconds"] for r in one)
    t_ar = statistics.median(r["allreduce"] for r in two)
    steps2 = -(-args.samples // args.batch2)
    print(f"   second-core probe: {probe0:.2f}x before, {probe1:.2f}x after")
    print(f"   1 process          {t_one:8.3f} s  {args.samples / t_one:9.0f} samples/s")
    for name, runs in (("2 ranks, shared", two), ("2 ranks, Allreduce", two_ar)):
        t = statistics.median(r["seconds"] for r in runs)
        red = statistics.median(r["reduce_seconds"] for r in runs)
        print(f"   {name:<18} {t:8.3f} s  {args.samples / t:9.0f} samples/s   throughput "
              f"{t_one / t:5.2f}x; in the reduce callback {red / steps2 * 1e3:.2f} ms/step "
              f"(the reduce and the wait for the other rank)")
    t_two = statistics.median(r["seconds"] for r in two)
    print(f"   an Allreduce of the gradient alone: {t_ar * 1e3:.2f} ms")
    print(f"   all runs (s): 1 process {[round(r['seconds'], 3) for r in one]}, 2 ranks shared "
          f"{[round(r['seconds'], 3) for r in two]}, 2 ranks Allreduce "
          f"{[round(r['seconds'], 3) for r in two_ar]}")

    # 3. the cost model
    S = 4 * nparams
    t1 = t_one / steps2                       # compute of one global batch on one rank
    ar2 = t_ar
    pred2 = t1 / 2 + ar2
    print(f"\n3. cost model: S = {S / 2**20:.2f} MiB of float32 gradient per step; a ring "
          f"Allreduce moves 2 (P-1)/P S per rank;\n   step(P) = T1 / P + 2 (P-1)/P S / bw + "
          f"2 (P-1) a   (T1 = one rank's step on the whole batch, a = latency)")
    print(f"   check at P=2 (this machine, shared memory): T1 = {t1 * 1e3:.1f} ms, an Allreduce "
          f"alone {ar2 * 1e3:.2f} ms ({2 * 0.5 * S / max(ar2, 1e-9) / 1e9:.2f} GB/s "
          f"effective) -> predicted {pred2 * 1e3:.1f} ms/step, measured "
          f"{t_two / steps2 * 1e3:.1f} ms/step")
    if t1_step_256:
        print(f"   P=1 at batch {args.batch1}: {t1_step_256 * 1e3:.1f} ms/step (CPU time)")
    a = 20e-6
    if t1_step_256:   # the projection: compute as on a core of its own (part 1's CPU time)
        t1 = t1_step_256 * args.batch2 / args.batch1
    print(f"   predicted ms/step at global batch {args.batch2} (a = 20 us, T1 = {t1 * 1e3:.1f} ms"
          f"{': part 1 CPU time, as on a core of its own' if t1_step_256 else ''}):")
    ps = [1, 2, 4, 8, 16, 32, 64]
    print("   " + f"{'bandwidth':>16}" + "".join(f"{'P=' + str(q):>9}" for q in ps)
          + "   comm > compute from")
    for name, bw in (("1 GB/s (10GbE)", 1.25e9), ("12.5 GB/s (100G)", 12.5e9),
                     ("50 GB/s (IB NDR)", 50e9)):
        cells, dom = [], None
        for q in ps:
            comm_t = 2 * (q - 1) / q * S / bw + 2 * (q - 1) * a
            cells.append(t1 / q + comm_t)
            if dom is None and comm_t > t1 / q:
                dom = q
        print("   " + f"{name:>16}" + "".join(f"{c * 1e3:9.1f}" for c in cells)
              + (f"   P={dom}" if dom else "   beyond 64"))


if __name__ == "__main__":
    main()
