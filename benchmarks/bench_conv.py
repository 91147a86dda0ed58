"""Convolution forward (and backward) on one thread: fastnn.ops.conv2d against PyTorch's
torch.nn.functional.conv2d, side by side in one process, interleaved (A B A B ...), median
of the rounds, in GFLOP/s and as a share of the core's FMA peak.

    python benchmarks/bench_conv.py                      # the default layer shapes
    python benchmarks/bench_conv.py --shapes 64:64x64:32:3:1 --repeats 9 --backward

A shape is N:CinxCout:HW:k:pad (square images and kernels, stride 1). The peak is measured
by benchmarks/fma_peak.c (independent FMA chains, built with the system C compiler and
-march=native) unless --peak gives it. On a shared machine --clock cpu (the default) times
each call by the calling thread's CPU time, which time slices given to other processes do not
inflate; --clock wall uses elapsed time. Both libraries run on this one thread.
"""
import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

import time

import numpy as np

import fastnn
from fastnn._bench import kept_threads

CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def interleaved(candidates, repeats, min_time, clock):
    """name -> seconds per call in each round; rounds A B A B ... after a warm-up call each."""
    for f in candidates.values():
        f()
    times = {k: [] for k in candidates}
    for _ in range(repeats):
        for k, f in candidates.items():
            n, t0 = 0, clock()
            while True:
                f()
                n += 1
                dt = clock() - t0
                if dt >= min_time:
                    break
            times[k].append(dt / n)
    return times

DEFAULT = ("64:32x32:32:3:1,64:64x64:32:3:1,64:128x128:16:3:1,64:256x256:8:3:1,"
           "64:3x32:32:3:1,64:1x6:28:5:2,64:6x16:14:5:0")


def parse(spec):
    out = []
    for item in spec.split(","):
        n, ch, hw, k, pad = item.split(":")
        cin, cout = ch.lower().split("x")
        out.append(tuple(int(v) for v in (n, cin, cout, hw, k, pad)))
    return out


def measure_peak():
    """GFLOP/s of benchmarks/fma_peak.c (float32 FMAs, one core), or None without a compiler."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fma_peak.c")
    if not cc or not os.path.exists(src):
        return None
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "fma_peak")
        if subprocess.run([cc, "-O2", "-march=native", src, "-o", exe],
                          capture_output=True).returncode:
            return None
        return float(subprocess.run([exe], capture_output=True, text=True, check=True)
                     .stdout.split()[0])


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--backward", action="store_true",
                    help="also time the backward (dx, dweight, dbias) against torch autograd")
    ap.add_argument("--peak", type=float, default=None, help="the core's FMA peak in GFLOP/s")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--clock", default="cpu", choices=sorted(CLOCKS))
    args = ap.parse_args(argv)
    torch = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(1)
        except ImportError:
            print("PyTorch not installed: fastnn alone", file=sys.stderr)
    peak = args.peak if args.peak else measure_peak()
    print(f"CPU {cpu_name()}; fastnn {fastnn.__version__} table {fastnn.arch()}; "
          f"numpy {np.__version__}" + (f"; torch {torch.__version__}" if torch else ""))
    print(f"FMA peak (float32, one core): " + (f"{peak:.1f} GFLOP/s" if peak else "unknown"))
    print(f"one thread, {args.dtype}, median of {args.repeats} interleaved rounds, {args.clock} time")
    head = f"{'N:CinxCout:HW:k:pad':>22} {'pass':>5} {'fastnn GF/s':>11} {'% peak':>6}"
    if torch:
        head += f" {'torch GF/s':>10} {'torch/fastnn time':>17}"
    print(head)
    rng = np.random.default_rng(0)
    dt = np.dtype(args.dtype)
    with kept_threads(1):
        for n, cin, cout, hw, k, pad in parse(args.shapes):
            x = rng.standard_normal((n, cin, hw, hw)).astype(dt)
            w = (rng.standard_normal((cout, cin, k, k)) * 0.1).astype(dt)
            b = rng.standard_normal(cout).astype(dt)
            y = fastnn.ops.conv2d(x, w, b, padding=pad)
            flop = 2.0 * y.size * cin * k * k
            out = np.empty_like(y)
            cands = {"fastnn": lambda: fastnn.ops.conv2d(x, w, b, padding=pad, out=out)}
            if torch:
                tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
                cands["torch"] = lambda: torch.nn.functional.conv2d(tx, tw, tb, padding=pad)
            rows = [("fwd", flop, interleaved(cands, args.repeats, args.min_time, CLOCKS[args.clock]))]
            if args.backward:
                dy = rng.standard_normal(y.shape).astype(dt)
                cands = {"fastnn": lambda: fastnn.ops.conv2d_backward(dy, x, w, padding=pad)}
                if torch:
                    txg, twg, tbg = (t.clone().requires_grad_() for t in (tx, tw, tb))
                    tdy = torch.from_numpy(dy)

                    def tback():
                        yt = torch.nn.functional.conv2d(txg, twg, tbg, padding=pad)
                        txg.grad = twg.grad = tbg.grad = None
                        torch.autograd.grad(yt, (txg, twg, tbg), tdy)
                    # torch's time includes a forward: subtract its forward median
                    cands["torch"] = tback
                t = interleaved(cands, args.repeats, args.min_time, CLOCKS[args.clock])
                if torch:
                    tf = statistics.median(rows[0][2]["torch"])
                    t["torch"] = [max(v - tf, 1e-9) for v in t["torch"]]
                rows.append(("bwd", 2 * flop, t))
            for name, fl, t in rows:
                mf = statistics.median(t["fastnn"])
                line = (f"{f'{n}:{cin}x{cout}:{hw}:{k}:{pad}':>22} {name:>5} {fl / mf / 1e9:>11.1f} "
                        f"{(100 * fl / mf / 1e9 / peak if peak else float('nan')):>6.1f}")
                if torch:
                    mt = statistics.median(t["torch"])
                    line += f" {fl / mt / 1e9:>10.1f} {mt / mf:>17.2f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
