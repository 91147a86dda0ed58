"""Run by tests/test_distributed.py under `mpiexec -n P python -m mpi4py tests/mpi_worker.py
JOB OUT`: one job of data-parallel training; rank 0 writes its results to OUT (.npz)."""
import sys

import numpy as np
from mpi4py import MPI

import fastnn as fn
from mpi_worker_data import (CASES, CNN_CASES, cnn, data, flat, images, mlp, regress, resume,
                             train, write)

fn.set_num_threads(1)
comm = MPI.COMM_WORLD
rank = comm.Get_rank()


class Fail(fn.Callback):
    def on_batch_end(self, batch, logs=None):
        if rank == 1 and batch == 3:
            raise RuntimeError("rank 1 failed on purpose at batch 3")


class StopOnRank1(fn.Callback):
    def on_batch_end(self, batch, logs=None):
        if rank == 1 and batch == 5:
            self.model.stop_training = True


class Perturb(fn.Callback):
    def on_batch_end(self, batch, logs=None):
        if rank == 1 and batch == 2:
            self.model[0].weight[0, 0] += 1e-3


def main(job, out):
    results = {}
    if job == "compare":
        allreduce = fn.distributed.MPICommunicator(comm, shared_memory=False)
        for name, opt, det, drop, dtype in CASES:
            results[name] = train(opt, det, drop, dtype, comm)
            if not det:   # the default mode's reduce through an Allreduce, not shared memory
                results[name + "-allreduce"] = train(opt, det, drop, dtype, allreduce)
        for name, opt, det, drop, dtype in CNN_CASES:
            results[name] = train(opt, det, drop, dtype, comm, conv=True)
        results["cnn-mse"], results["cnn-mse-history"] = regress(comm)
        X, y = images()
        model = cnn()
        results["cnn-evaluate"] = np.array(list(fn.evaluate(model, fn.CrossEntropyLoss(), X, y,
                                                            comm=comm).values()))
        results["cnn-predict"] = model.predict(X, comm=comm)
        X, y = data()
        model = mlp()
        results["evaluate"] = np.array(list(fn.evaluate(model, fn.CrossEntropyLoss(), X, y,
                                                        comm=comm).values()))
        results["predict"] = model.predict(X, comm=comm)
    elif job == "mismatch-data":       # rank 1's X differs in one value of row 1
        X, y = data()
        if rank == 1:
            X = X.copy()
            X[1, 0] += 1
        model = mlp()
        fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.05), X, y,
               epochs=1, batch_size=32, seed=1, verbose=0, comm=comm)
    elif job == "mismatch-scheduler":  # the same scheduler type, another gamma on rank 1
        X, y = data()
        model = mlp()
        opt = fn.SGD(model.parameters(), lr=0.05)
        fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=32, seed=1,
               verbose=0, scheduler=fn.StepLR(opt, 1, gamma=0.9 if rank else 0.5), comm=comm)
    elif job == "small-shm":           # /dev/shm too small for the window: the Allreduce
        import warnings
        fn.distributed._shm_room = lambda path="/dev/shm": 1 << 20
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results["weights"] = train("sgd", False, 0.0, "float32", comm)
        results["window"] = np.array(fn.distributed._WORLD._win is not None)
        results["warned"] = np.array(any("/dev/shm has less than" in str(w.message)
                                         for w in caught))
    elif job == "batchnorm":           # a CNN with BatchNorm2d: refused on every rank
        X, y = images()
        model = cnn(norm=True)
        fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.05), X, y,
               epochs=1, batch_size=32, seed=1, verbose=0, comm=comm)
    elif job == "mismatch-shared":     # rank 1 alone turns the shared-memory reduce off
        X, y = data()
        model = mlp()
        c = fn.distributed.MPICommunicator(comm, shared_memory=rank == 0)
        fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.05), X, y,
               epochs=1, batch_size=32, seed=1, verbose=0, comm=c)
    elif job == "reuse":               # two layouts of one buffer size on COMM_WORLD's window
        X, y = data()
        for hidden in (3, 1):          # 20-1-3-5 and 20-1-1-5: 112 elements, other paddings
            model = fn.Sequential(fn.Linear(20, 1), fn.ReLU(), fn.Linear(1, hidden), fn.ReLU(),
                                  fn.Linear(hidden, 5), seed=0)
            fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.05), X, y,
                   epochs=1, batch_size=32, seed=1, verbose=0, comm=comm)
            buf = model[0].weight._buffer
            pad = np.ones(buf.grad.size, dtype=bool)
            for q in model.parameters():
                pad[q._offset:q._offset + q.size] = False
            results[f"size{hidden}"] = np.array(buf.grad.size)
            results[f"padgrad{hidden}"] = buf.grad[pad].copy()
            results[f"paddata{hidden}"] = buf.data[pad].copy()
        results["world_kept"] = np.array(fn.distributed._WORLD._win is not None)
        c = fn.distributed.MPICommunicator(comm)     # any other communicator: freed at the end
        fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.05), X, y,
               epochs=1, batch_size=32, seed=1, verbose=0, comm=c)
        results["other_freed"] = np.array(c._win is None)
    elif job in ("fail", "mismatch", "diverge"):
        X, y = data()
        model = mlp()
        lr = 0.1 if (job == "mismatch" and rank == 1) else 0.05
        cbs = {"fail": [Fail()], "diverge": [Perturb()]}.get(job, [])
        c = fn.distributed.MPICommunicator(comm, check_every=4) if job == "diverge" else comm
        fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=lr, momentum=0.9),
               X, y, epochs=2, batch_size=32, seed=1, verbose=0, callbacks=cbs, comm=c)
    elif job == "stop":                  # rank 1 alone asks to stop: every rank stops there
        X, y = data()
        model = mlp()
        opt = fn.SGD(model.parameters(), lr=0.05, momentum=0.9)
        history = fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=3, batch_size=32,
                         seed=1, verbose=0, callbacks=[StopOnRank1()], comm=comm)
        results["steps"] = np.array(comm.allgather(opt.state_dict()["state"][0]["step"]))
        results["epochs"] = np.array(len(history.history["loss"]))
    elif job == "nonfinite":           # a huge row reaches rank 1 alone, in the 4th batch
        X, y = data()
        X = X.copy()
        X[3 * 32 + 20] = 1e38            # finite, but its logits overflow: rank 1's loss is inf
        model = mlp()
        opt = fn.SGD(model.parameters(), lr=0.05, momentum=0.9)
        try:
            fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=32,
                   shuffle=False, seed=1, verbose=0, comm=comm)
            message = ""
        except FloatingPointError as e:
            message = str(e)
        results["steps"] = np.array(comm.allgather(opt.state_dict()["state"][0]["step"]))
        results["stopped"] = np.array(comm.allgather(message.split(":")[1] if message
                                                     else ""))
        weights = flat(model)
        results["same"] = np.array(all(np.array_equal(w, weights)
                                       for w in comm.allgather(weights)))
        results["finite"] = np.array(np.isfinite(weights).all())
    elif job.startswith("write:"):
        results["final"] = write(job[len("write:"):], comm, rank)
    elif job.startswith("resume:"):
        results["final"] = resume(job[len("resume:"):], comm)
    else:
        raise SystemExit(f"unknown job {job!r}")
    if rank == 0:
        np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
