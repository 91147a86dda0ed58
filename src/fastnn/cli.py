"""The `fastnn` command.

  fastnn info              build and CPU facts: kernel tables, OpenMP, threads
  fastnn bench-gemm        fastnn's GEMM against numpy's BLAS, side by side (see benchmarks/)
  fastnn bench-fused       fused GEMM + bias + ReLU against the three separate passes
"""
import argparse
import sys

import numpy as np

import fastnn


def _info(args):
    print(f"fastnn {fastnn.__version__}")
    print(f"kernel table : {fastnn.arch()} (available: {', '.join(fastnn.available_archs())})")
    print(f"openmp       : {fastnn.openmp_enabled()}, threads {fastnn.get_num_threads()}")
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="fastnn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="print build and CPU facts").set_defaults(run=_info)
    b = sub.add_parser("bench-gemm", help="GEMM GFLOP/s against numpy, interleaved")
    b.add_argument("--sizes", default="256,512,1024,2048",
                   help="comma-separated squares N or MxKxN shapes (default %(default)s)")
    b.add_argument("--layouts", default="nn",
                   help="comma-separated layouts: nn, tn (a.T @ b), nt (a @ b.T), tt")
    b.add_argument("--dtype", choices=["float32", "float64"], default="float32")
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
    args = p.parse_args(argv)
    if args.cmd.startswith("bench") and (args.repeats < 5 or args.threads < 1):
        p.error("--repeats must be >= 5 and --threads >= 1")
    if args.cmd == "bench-gemm" and not set(args.layouts.split(",")) <= {"nn", "tn", "nt", "tt"}:
        p.error(f"--layouts: expected a comma-separated subset of nn,tn,nt,tt, got {args.layouts!r}")
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
