"""Data-parallel training over several processes (and machines) with MPI.

Install ``pip install "fastnn[mpi]"`` (mpi4py and the ``mpich`` wheel: no system MPI needed;
an mpi4py built against a system MPI works too) and run the same script on every rank::

    # train.py
    from mpi4py import MPI
    import fastnn as fn
    X, y = ...                                    # the same arrays on every rank (a memmap works)
    model = fn.Sequential(fn.Linear(784, 256), fn.ReLU(), fn.Linear(256, 10), seed=0)
    opt = fn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=5, batch_size=256, seed=0,
           comm=MPI.COMM_WORLD)                   # batch_size is the global batch
    fn.evaluate(model, fn.CrossEntropyLoss(), Xt, yt, comm=MPI.COMM_WORLD)

    $ mpiexec -n 4 python -m mpi4py train.py

How it works. Every rank draws the same seeded permutation; each global batch of
``batch_size`` rows is split between the ranks (rank r: rows ``[B r / P, B (r+1) / P)``),
each rank's fused C step computes the gradient of its rows with the loss normalised over the
whole global batch, pauses where the gradient is complete while one in-place ``Allreduce``
sums the flat gradient buffer over the ranks, and then runs the optimizer update in C. When
all ranks share one machine (MPICommunicator(shared_memory=True), the default), the C step
writes the gradient into an MPI shared-memory window instead and the reduce sums it there
(Session.reduce_shared), which saves the Allreduce's copies into and out of MPI's buffers. So
``mpiexec -n P`` trains the model one process trains with the same ``batch_size``, up to the
rounding of the sum (the default mode). Rank 0's initial weights and optimizer state are
broadcast at the start, so they stay identical on every rank; every ``check_every`` steps the
ranks compare a hash of the parameters and stop with an error if they diverged.

The models: those the fused C step runs, MLPs and CNNs (the layer plan: Linear, Conv2d,
pooling, Flatten, activations, Dropout). A BatchNorm is refused with a ValueError: its batch
statistics would be those of each rank's rows, not of the global batch.

Exact mode, ``fit(..., deterministic=True)``: each global batch is cut into ``shards`` fixed
shards (8 by default; ``deterministic=K`` picks K), each shard's gradient is computed alone,
and the shards are added over a fixed pairwise tree in shard order: each rank adds the
subtree of its block of shards in C, and the ranks add the top of the tree by recursive
doubling (``log2 P`` exchanges of the gradient buffer). The tree does not depend on the
number of ranks, so P = 1, 2, 4, 8 give bit-identical weights. P must be a power of two that
divides ``shards``.

Validation loss and metrics, ``evaluate`` and ``predict`` split the rows between the ranks
and gather the outputs, so every rank gets the same numbers. Progress output and
``ModelCheckpoint`` run on rank 0 only; write other files from rank 0
(``if comm.Get_rank() == 0``).

Failures: run scripts with ``python -m mpi4py script.py``, whose runner aborts the whole job
when a rank raises (else the other ranks would wait for it forever); ``fastnn train
--distributed`` does the same. Mismatched data shapes, models, optimizer hyper-parameters or
fit arguments across ranks raise a ValueError on every rank before the first step.

Another engine plugs in through the ``Communicator`` protocol below (``fit(comm=...)`` takes
any object with these methods, or an mpi4py communicator).
"""
import zlib
from typing import Protocol, runtime_checkable

import numpy as np

from ._kernels import NonFiniteLossError

EXACT_SHARDS = 8          # shards per global batch in exact mode (deterministic=True)
CHECK_EVERY = 1000        # steps between parameter-hash comparisons


@runtime_checkable
class Communicator(Protocol):
    """What fit needs from a communication engine. Buffers are C-contiguous numpy arrays
    (float32, float64 or int64); every method is collective (all ranks call it in the same
    order) except abort."""

    rank: int
    size: int

    def allreduce(self, buf):
        """Sum buf over the ranks, in place."""

    def bcast(self, buf, root=0):
        """Overwrite buf with root's buf, in place."""

    def barrier(self):
        """Wait for every rank."""

    def allgather(self, obj):
        """A list of every rank's obj (a small picklable object), in rank order."""

    def sendrecv(self, sendbuf, recvbuf, peer):
        """Send sendbuf to rank peer and receive peer's into recvbuf (same shape/dtype)."""

    def abort(self, code=1):
        """End the whole job now (all ranks) with this exit code."""

    # Optional, for the default mode's reduce through shared memory (MPICommunicator has
    # them): shared_segments(n, dtype) -> every rank's array in one shared window, or None;
    # sync_shared() (a barrier that orders the window's loads and stores); free_shared().


class SelfCommunicator:
    """The one-rank communicator (no MPI): fit(comm=SelfCommunicator(), deterministic=True)
    runs the exact mode in a single process, with the weights mpiexec -n P gives."""

    rank, size = 0, 1

    def __init__(self, check_every=CHECK_EVERY):
        self.check_every = check_every

    def allreduce(self, buf):
        pass

    def bcast(self, buf, root=0):
        pass

    def barrier(self):
        pass

    def allgather(self, obj):
        return [obj]

    def sendrecv(self, sendbuf, recvbuf, peer):
        raise ValueError(f"sendrecv: a one-rank communicator has no peer {peer}")

    def abort(self, code=1):
        raise SystemExit(code)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("fastnn.distributed needs mpi4py: pip install \"fastnn[mpi]\" "
                          "(mpi4py and the mpich wheel)") from e
    return MPI


class MPICommunicator:
    """The Communicator over an mpi4py communicator (default MPI.COMM_WORLD). check_every:
    steps between parameter-hash comparisons in fit. shared_memory: when every rank runs on
    one machine, fit's default mode reduces the gradients through an MPI shared-memory window
    (shared_segments) instead of an Allreduce; False always uses the Allreduce."""

    def __init__(self, comm=None, check_every=CHECK_EVERY, shared_memory=True):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(self.comm, MPI.Comm):
            raise TypeError(f"comm must be an mpi4py communicator, got {type(comm).__name__}")
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
        self.check_every = check_every
        if not isinstance(shared_memory, bool):
            raise TypeError(f"shared_memory must be True or False, got {shared_memory!r}")
        self.shared_memory = shared_memory
        self._win = None          # (window, size, dtype, segments) of shared_segments
        self._one_node = None     # whether every rank runs on this machine (once known)
        self._warned_shm = False

    def shared_segments(self, n, dtype):
        """Every rank's segment (n elements of dtype, zeros) of an MPI shared-memory window,
        as numpy arrays in rank order, this rank's at [rank], and after them one more segment
        of n elements that every rank reads and writes (the sum; in rank 0's memory): a list of
        size + 1 arrays. None when the ranks are not all on one machine (or shared_memory is
        False, or one rank). Collective: every rank calls it with the same n and dtype. The
        window is kept for the next call of the same size (the previous one is freed
        otherwise) until free_shared()."""
        if not self.shared_memory or self.size == 1 or self._one_node is False:
            return None
        dtype = np.dtype(dtype)
        if self._win is not None and self._win[1:3] == (n, dtype):
            return self._win[3]     # its padding is still zero: only sums of zeros went there
        self.free_shared()
        MPI = self.MPI
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            self._one_node = node.Get_size() == self.size   # asked once: the ranks stay put
            if not self._one_node:
                return None
            # rank 0 holds its segment and the sum (a page apart), the others their segment
            step = -(-n * dtype.itemsize // 4096) * 4096
            # The window's pages come from /dev/shm, which a container may keep small (64 MiB
            # in Docker); touching a page beyond its size kills the process with SIGBUS, so
            # without room for the window and a margin for MPI itself the ranks agree to use
            # the Allreduce instead.
            need = (self.size + 1) * step + (16 << 20)
            if not node.allreduce(_shm_room() >= need, op=MPI.LAND):
                if self.rank == 0 and not self._warned_shm:
                    import warnings
                    warnings.warn(f"fastnn.distributed: /dev/shm has less than the "
                                  f"{need / 2**20:.0f} MiB the shared-memory reduce needs; "
                                  f"the gradients are summed with an Allreduce instead (give "
                                  f"the container more, e.g. docker run --shm-size=1g)",
                                  RuntimeWarning, stacklevel=2)
                self._warned_shm = True
                return None
            # whole pages each, so every segment starts on a page (one 64 bytes past a page
            # made that rank's steps measurably slower)
            win = MPI.Win.Allocate_shared(2 * step if self.rank == 0 else step,
                                          dtype.itemsize, comm=node)
        finally:
            node.Free()
        segs = []
        for q in range(self.size):
            buf, _ = win.Shared_query(q)
            segs.append(np.frombuffer(buf, dtype=dtype, count=n))
        buf, _ = win.Shared_query(0)
        segs.append(np.frombuffer(buf, dtype=dtype, count=n, offset=step))
        segs[self.rank][...] = 0
        if self.rank == 0:
            segs[-1][...] = 0
        win.Lock_all(MPI.MODE_NOCHECK)   # one passive epoch: loads and stores with Sync
        self._win = (win, n, dtype, segs)
        self.comm.Barrier()
        return segs

    def sync_shared(self):
        """A barrier with memory synchronisation of the shared window: the stores every rank
        made to it before are seen by every rank's loads after."""
        win = self._win[0]
        win.Sync()
        self.comm.Barrier()
        win.Sync()

    def free_shared(self):
        """Free the window of shared_segments (collective), if there is one."""
        if self._win is not None:
            win = self._win[0]
            self._win = None
            win.Unlock_all()
            win.Free()

    def allreduce(self, buf):
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def bcast(self, buf, root=0):
        if self.size > 1:
            self.comm.Bcast(buf, root=root)

    def barrier(self):
        self.comm.Barrier()

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def sendrecv(self, sendbuf, recvbuf, peer):
        self.comm.Sendrecv(sendbuf, dest=peer, sendtag=17, recvbuf=recvbuf, source=peer,
                           recvtag=17)

    def abort(self, code=1):
        self.comm.Abort(code)


_WORLD = None   # as_communicator(MPI.COMM_WORLD)


def as_communicator(comm):
    """comm as a Communicator: an mpi4py communicator is wrapped in MPICommunicator; an object
    with the protocol's methods is used as it is. Raises TypeError otherwise."""
    try:
        from mpi4py import MPI
    except ImportError:
        MPI = None
    global _WORLD
    if MPI is not None and comm is MPI.COMM_WORLD:
        if _WORLD is None:     # one wrapper, so its shared window serves every fit
            _WORLD = MPICommunicator(comm)
        return _WORLD
    if MPI is not None and isinstance(comm, MPI.Comm):
        return MPICommunicator(comm)
    if isinstance(comm, Communicator):
        return comm
    raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD) or a "
                    f"fastnn.distributed.Communicator, got {type(comm).__name__}")


def _shards(deterministic, size):
    """The exact mode's shard count (0: default mode), checked against the rank count."""
    if deterministic is False or deterministic is None or deterministic == 0:
        return 0
    k = EXACT_SHARDS if deterministic is True else deterministic
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"deterministic must be True, False or a shard count >= 1, got "
                         f"{deterministic!r}")
    if size & (size - 1) or k % size:
        raise ValueError(f"deterministic={deterministic!r}: the number of ranks must be a "
                         f"power of two that "
                         f"divides the shard count {k} (deterministic=K sets it), got {size} "
                         f"ranks")
    return int(k)


def params_hash(buffer):
    """CRC-32 of a parameter buffer's bytes."""
    return zlib.crc32(np.ascontiguousarray(buffer).view(np.uint8))


class Session:
    """The distributed side of one fit: the communicator, the mode, the checks."""

    def __init__(self, comm, deterministic):
        self.comm = SelfCommunicator() if comm is None else as_communicator(comm)
        # fit frees the shared window at its end, except MPI.COMM_WORLD's (one wrapper for the
        # whole run), which keeps it for the next fit of the same size
        self._own = self.comm is not _WORLD
        self.rank, self.size = self.comm.rank, self.comm.size
        self.shards = _shards(deterministic, self.size)
        self.check_every = getattr(self.comm, "check_every", CHECK_EVERY)
        self.since_check = 0
        self._recv = None
        self._segs = None         # every rank's shared gradient segment (default mode)

    # -- the start ---------------------------------------------------------------------------
    def agree(self, what):
        """Raise ValueError on every rank when a rank's `what` (a dict of comparable values)
        differs from rank 0's."""
        all_ = self.comm.allgather(what)
        bad = []
        for r, other in enumerate(all_[1:], 1):
            for k in all_[0]:
                if other.get(k) != all_[0][k]:
                    bad.append(f"{k}: rank 0 has {all_[0][k]!r}, rank {r} has {other.get(k)!r}")
        if bad:
            raise ValueError("fit(comm=...): the ranks disagree; every rank must pass the same "
                             "data, model, loss, optimizer and fit arguments:\n  "
                             + "\n  ".join(bad[:20]))

    def start(self, plan, model, loss, optimizer, X, y, val, **args):
        """Check that every rank passes the same things, then broadcast rank 0's parameters
        and optimizer state. Raises ValueError (on every rank) before the first step."""
        import fastnn

        what = {"fused step": plan is not None, "X": _digest(X), "y": _digest(y),
                "validation": None if val is None else (_digest(val[0]), _digest(val[1])),
                "model": repr(model), "parameter dtype": str(getattr(plan, "net_params",
                                                                     np.empty(0)).dtype),
                "loss": _describe(loss), "optimizer": type(optimizer).__name__,
                "optimizer hyper-parameters": {k: _plain(v) for k, v in
                                               optimizer.param_groups[0].items()
                                               if k != "params"},
                "optimizer step": None if plan is None else plan.chunk.step,
                "fastnn": fastnn.__version__, "kernel table": fastnn.arch(),
                "exact mode shards": self.shards,
                "shared memory": getattr(self.comm, "shared_memory", None),
                "check_every": self.check_every, **{k: _plain(v) for k, v in args.items()}}
        self.agree(what)
        norm = batch_norm_layer(model)
        if norm is not None:
            raise ValueError(f"fit(comm=...): {norm._where()} normalises by the statistics of "
                             f"its batch, and under comm each rank would see only its own rows "
                             f"of the global batch (no synchronised batch norm in fastnn): "
                             f"train it in one process, or replace batch norm with LayerNorm "
                             f"or no normalisation")
        if plan is None:
            raise ValueError("fit(comm=...) runs the fused C step: the model must be a "
                             "Sequential of the layers it runs (Linear, Conv2d, pooling, "
                             "Flatten, activations, Dropout; no BatchNorm) on the CPU, a "
                             "built-in loss and a built-in optimizer with one parameter group; "
                             f"got {type(model).__name__}, "
                             f"{type(loss).__name__}, {type(optimizer).__name__}")
        self.broadcast_state([plan.net_params, *plan.states])
        self.since_check = 0

    def seed(self, seed):
        """Rank 0's seed, on every rank (seed=None draws one per rank otherwise)."""
        return self.comm.allgather(seed)[0]

    def broadcast_state(self, buffers):
        for b in buffers:
            self.comm.bcast(b, root=0)

    # -- the step ----------------------------------------------------------------------------
    def reduce(self, grads, step):
        """fastnn_net_train_dist's reduce: the batch gradient from the ranks' parts."""
        if self.size == 1:
            return
        if not self.shards:
            self.comm.allreduce(grads)
            return
        # exact mode: the top log2(P) levels of the shard tree, by recursive doubling; every
        # rank adds the same two subtrees (IEEE addition commutes), so all get the same bits
        if self._recv is None or self._recv.shape != grads.shape or self._recv.dtype != grads.dtype:
            self._recv = np.empty_like(grads)
        bit = 1
        while bit < self.size:
            self.comm.sendrecv(grads, self._recv, self.rank ^ bit)
            np.add(grads, self._recv, out=grads)
            bit <<= 1

    def reduce_shared(self, grads, step):
        """The default mode's reduce through shared memory: each rank sums its 1/P of the
        buffer over every rank's segment (in rank order) into the shared sum segment, which
        every rank's optimizer update then reads (FusedNet.train_dist(reduced=...)). The C
        step writes the gradients to the window itself, so nothing is copied in or out; per
        rank and step this reads one buffer and writes 1/P of one (an Allreduce copies the
        buffer into and out of MPI's own shared memory as well). Two barriers: the first also
        means every rank has finished the previous update, which read the sum; the second,
        that the whole sum is written, and that no rank reads a segment after it (the next
        backward pass rewrites it)."""
        comm, segs, P, r = self.comm, self._segs, self.size, self.rank
        comm.sync_shared()                    # every rank's gradient is complete
        lo, hi = self._bounds[r], self._bounds[r + 1]
        out = segs[P][lo:hi]
        np.add(segs[0][lo:hi], segs[1][lo:hi], out=out)
        for q in range(2, P):
            np.add(out, segs[q][lo:hi], out=out)
        comm.sync_shared()                    # every part is summed

    def _shared(self, grads_size, dtype):
        """This rank's shared gradient segment for the default mode, or None (exact mode,
        one rank, ranks on several machines, or a communicator without shared memory)."""
        get = getattr(self.comm, "shared_segments", None)
        if self.size == 1 or self.shards or get is None:
            return None
        segs = get(grads_size, dtype)
        if segs is None:
            return None
        if segs is not self._segs:   # once per fit
            # a window kept from an earlier fit holds that fit's last gradient, also where
            # this model has padding (another layout of the same size): zero it
            segs[self.rank][...] = 0
            self.comm.sync_shared()
            self._segs = segs
            # the parts each rank sums: whole cache lines (16 float32) apart
            self._bounds = [min(grads_size, (grads_size * q // self.size) // 16 * 16)
                            for q in range(self.size)] + [grads_size]
        return segs[self.rank]

    def train(self, net, X, y, idx, batch_size, seed, model):
        """One chunk of global batches; (loss sum, correct) over all ranks."""
        grads = self._shared(net.buffer_size, net.dtype)
        try:
            loss_sum, correct = net.train_dist(
                X, y, idx, batch_size, seed, reduce=self.reduce if grads is None else
                self.reduce_shared, rank=self.rank, size=self.size, shards=self.shards,
                grads=grads, reduced=None if grads is None else self._segs[self.size])
        except NonFiniteLossError:
            # every rank stops at the same step here (the reduced NaN mark), so the
            # collective free of a window made for this fit alone cannot hang
            self.finish()
            raise
        sums = np.concatenate([[loss_sum, correct], net.metric_sums])
        self.comm.allreduce(sums)
        net.metric_sums[...] = sums[2:]     # the training metrics, over all ranks
        self.since_check += -(-len(idx) // batch_size)
        return float(sums[0]), int(round(sums[1]))

    def finish(self):
        """At the end of fit (every rank, also after the collective non-finite-loss stop):
        free the shared gradient window. MPI.COMM_WORLD's wrapper keeps it for the next fit
        (allocating and first touching it costs 5-20 ms) until a fit of another model size.
        A fit that raises anything else frees nothing: a collective free on an error path would
        hang the ranks that did not raise (and the job ends there anyway)."""
        free = getattr(self.comm, "free_shared", None)
        if free is not None and self._segs is not None and self._own:
            self._segs = None
            free()

    def stop(self, model):
        """After the callbacks: if any rank's model.stop_training is set, every rank's is (the
        ranks must leave the loop together)."""
        flag = np.array([float(bool(model.stop_training))])
        self.comm.allreduce(flag)
        model.stop_training = bool(flag[0])
        return model.stop_training

    def check(self, buffer, step, force=False):
        """Compare the parameter hash over the ranks every check_every steps (or now)."""
        if self.size == 1 or not (force or self.since_check >= self.check_every):
            return
        self.since_check = 0
        hashes = self.comm.allgather(params_hash(buffer))
        if len(set(hashes)) > 1:
            raise RuntimeError(f"fit(comm=...): the ranks' parameters diverged by step {step} "
                               f"(CRC-32 per rank: {', '.join(f'{h:08x}' for h in hashes)}); "
                               f"every rank must run the same fastnn build, data and arguments")

    # -- inference ---------------------------------------------------------------------------
    def predict(self, model, X, batch_size=256):
        """model.predict over X, the rows split between the ranks; every rank gets it all."""
        n = len(X)
        lo, hi = n * self.rank // self.size, n * (self.rank + 1) // self.size
        part = model.predict(X[lo:hi], batch_size=batch_size) if hi > lo else None
        parts = [p for p in self.comm.allgather(part) if p is not None]
        return np.concatenate(parts)


def _plain(v):
    """v as comparable plain Python (arrays as lists)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _describe(obj):
    return [type(obj).__name__, {k: _plain(v) for k, v in sorted(vars(obj).items())
                                 if not k.startswith("_") and
                                 isinstance(v, (int, float, str, bool, tuple, list, np.ndarray,
                                                np.generic, type(None)))}]


def batch_norm_layer(model):
    """The model's first BatchNorm1d/BatchNorm2d, or None: data-parallel training refuses
    them (each rank would normalise by the statistics of its own rows)."""
    from .nn import BatchNorm1d, BatchNorm2d

    return next((m for m in getattr(model, "modules", lambda: [])()
                 if isinstance(m, (BatchNorm1d, BatchNorm2d))), None)


def _shm_room(path="/dev/shm"):
    """Bytes free in the shared-memory file system (where MPI's shared windows live on
    Linux); unbounded where there is none to ask."""
    import os
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return float("inf")
    return st.f_bavail * st.f_frsize


DIGEST_BYTES = 1 << 30   # data up to this size is hashed whole at the start of fit


def _digest(a):
    """(shape, dtype, CRC-32 of the data): of all of it up to DIGEST_BYTES (zlib.crc32 reads
    a few GB/s), else of 4096 evenly spaced rows (a memory-map of a larger set is not read
    whole for the check)."""
    a = np.asarray(a)
    shape = list(a.shape)
    if len(a) == 0:
        return [shape, a.dtype.str, 0]
    if a.nbytes > DIGEST_BYTES:
        rows = np.unique(np.linspace(0, len(a) - 1, num=min(4096, len(a))).astype(np.int64))
        a = a[rows]
    return [shape, a.dtype.str, zlib.crc32(np.ascontiguousarray(a).view(np.uint8))]


def rank0_only(callback):
    """Whether a callback runs on rank 0 only (progress output, checkpoint files)."""
    from .callbacks import ModelCheckpoint, ProgressLogger

    return isinstance(callback, (ModelCheckpoint, ProgressLogger)) or \
        getattr(callback, "rank0_only", False)


def predict(model, X, comm, batch_size=256):
    """model.predict(X) with the rows split between comm's ranks; every rank gets the whole
    output (shape (len(X), ...) like model.predict)."""
    X = np.asarray(X)
    if X.ndim == 0 or len(X) == 0:
        raise ValueError(f"predict: X must have at least one sample, got shape {X.shape}")
    return Session(comm, False).predict(model, X, batch_size)


def launch_cli():
    """For `fastnn train --distributed`: MPI.COMM_WORLD's communicator; on ranks other than 0
    standard output goes to /dev/null, and an exception on any rank prints its traceback and
    aborts the whole job (as `python -m mpi4py` does)."""
    import os
    import sys
    import traceback

    comm = MPICommunicator()
    if comm.rank != 0:
        sys.stdout = open(os.devnull, "w")

    def abort_on_error(kind, value, tb):
        traceback.print_exception(kind, value, tb)
        sys.stderr.flush()
        comm.abort(1)

    if comm.size > 1:
        sys.excepthook = abort_on_error
    return comm
