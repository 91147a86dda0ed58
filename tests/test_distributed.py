"""Data-parallel training (fastnn.distributed): mpiexec launched from the tests, one thread
per rank, on this machine only. P=2 (and P=4) against P=1 at the same global batch, a failing
rank, mismatched arguments, diverged parameters, checkpoints across rank counts, the CLI;
and the one-rank communicator in this process."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastnn as fn
from fastnn import distributed as dist

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mpi_worker.py"
sys.path.insert(0, str(HERE))
import mpi_worker_data as wd  # noqa: E402  (the worker's data and models, without mpi4py)

try:
    import mpi4py  # noqa: F401
    MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or \
        shutil.which("mpiexec")
    WHY = None if MPIEXEC else "no mpiexec on PATH (pip install \"fastnn[mpi]\" brings one)"
except ImportError:
    MPIEXEC, WHY = None, "mpi4py is not installed (pip install \"fastnn[mpi]\")"

needs_mpi = pytest.mark.skipif(WHY is not None, reason=WHY or "")


def mpirun(n, job, out, timeout=120, args=None):
    """Run the worker (or args) on n ranks; (returncode, output, seconds)."""
    # one thread per rank; processes started here (fork) and talking through shared memory
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_LAUNCHER="fork")
    cmd = [MPIEXEC, "-n", str(n), "-host", "localhost"] + (
        args or [sys.executable, "-m", "mpi4py", str(WORKER), job, str(out)])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=str(HERE))
    return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0


def run_ok(n, job, out):
    rc, text, _ = mpirun(n, job, out)
    assert rc == 0, text
    return dict(np.load(out))


@pytest.fixture(scope="module")
def compare(tmp_path_factory):
    """The 'compare' job on 1, 2 and 4 ranks."""
    if WHY is not None:
        pytest.skip(WHY)
    d = tmp_path_factory.mktemp("mpi")
    return {p: run_ok(p, "compare", d / f"p{p}.npz") for p in (1, 2, 4)}


@needs_mpi
@pytest.mark.parametrize("case", ["sgd-exact", "adam-exact", "adam-exact-dropout",
                                  "sgd-exact-float64"])
def test_exact_mode_same_bits_for_1_2_4_ranks(compare, case):
    w1 = compare[1][case]
    assert np.isfinite(w1).all() and not np.array_equal(w1, wd.initial(str(w1.dtype)))
    np.testing.assert_array_equal(compare[2][case], w1)
    np.testing.assert_array_equal(compare[4][case], w1)


@needs_mpi
@pytest.mark.parametrize("reduce", ["", "-allreduce"])
@pytest.mark.parametrize("case", ["sgd-default", "adam-default", "adam-default-float64"])
def test_default_mode_agrees_to_rounding(compare, case, reduce):
    """Through the shared-memory window (all ranks on this machine) and through an Allreduce
    (MPICommunicator(shared_memory=False))."""
    w1, w2 = compare[1][case], compare[2][case + reduce]
    assert not np.array_equal(w1, wd.initial(str(w1.dtype)))
    # 20 steps of a float sum in another order: 1e-6 relative to the weights' scale
    assert np.max(np.abs(w2 - w1)) <= 1e-6 * np.max(np.abs(w1))
    assert not np.array_equal(w2, wd.initial(str(w1.dtype)))
    np.testing.assert_allclose(compare[4][case + reduce], w1, rtol=0,
                               atol=1e-6 * np.max(np.abs(w1)))


@needs_mpi
def test_default_mode_one_rank_is_plain_fit(compare):
    """P=1 under mpiexec takes the whole batch: the same bits as fit without comm."""
    for name, opt, det, drop, dtype in wd.CASES:
        if not det:
            np.testing.assert_array_equal(compare[1][name], wd.train(opt, False, drop, dtype))


@needs_mpi
@pytest.mark.parametrize("conv", [False, True])
def test_evaluate_and_predict_split_over_ranks(compare, conv):
    """The MLP, and the CNN through the layer plan."""
    model, (X, y) = (wd.cnn(), wd.images()) if conv else (wd.mlp(), wd.data())
    pre = "cnn-" if conv else ""
    ref = fn.evaluate(model, fn.CrossEntropyLoss(), X, y)
    for p in (1, 2, 4):
        np.testing.assert_allclose(compare[p][pre + "evaluate"], list(ref.values()), rtol=1e-12)
        np.testing.assert_allclose(compare[p][pre + "predict"], model.predict(X), rtol=1e-6,
                                   atol=1e-6)


@needs_mpi
@pytest.mark.parametrize("case", ["cnn-sgd-exact", "cnn-adam-exact-dropout",
                                  "cnn-adam-exact-float64"])
def test_cnn_exact_mode_same_bits_for_1_2_4_ranks(compare, case):
    """The layer plan (conv, max pool, flatten, dropout, linear) through the same data-parallel
    step: exact mode gives the same weights for 1, 2 and 4 ranks."""
    w1 = compare[1][case]
    assert np.isfinite(w1).all()
    assert not np.array_equal(w1, wd.initial(str(w1.dtype), conv=True))
    np.testing.assert_array_equal(compare[2][case], w1)
    np.testing.assert_array_equal(compare[4][case], w1)


@needs_mpi
@pytest.mark.parametrize("case", ["cnn-sgd-default", "cnn-adam-default"])
def test_cnn_default_mode_agrees_to_rounding(compare, case):
    w1 = compare[1][case]
    assert not np.array_equal(w1, wd.initial(conv=True))
    # P=1 under mpiexec is plain fit, bit for bit
    opt, det, drop, dtype = next(c[1:] for c in wd.CNN_CASES if c[0] == case)
    np.testing.assert_array_equal(w1, wd.train(opt, det, drop, dtype, conv=True))
    for p in (2, 4):
        assert not np.array_equal(compare[p][case], wd.initial(conv=True))
        assert np.max(np.abs(compare[p][case] - w1)) <= 1e-6 * np.max(np.abs(w1))


@needs_mpi
def test_cnn_regression_with_its_default_metric(compare):
    """MSELoss with fit's default metric (mae, counted by the C step on each rank's rows):
    P=1 under mpiexec is plain fit, P=2 and 4 agree to rounding, history included."""
    w, hist = wd.regress()
    np.testing.assert_array_equal(compare[1]["cnn-mse"], w)
    np.testing.assert_array_equal(compare[1]["cnn-mse-history"], hist)
    for p in (2, 4):
        assert np.max(np.abs(compare[p]["cnn-mse"] - w)) <= 1e-6 * np.max(np.abs(w))
        np.testing.assert_allclose(compare[p]["cnn-mse-history"], hist, rtol=1e-5)


@needs_mpi
def test_batch_norm_under_mpi_is_refused_on_every_rank(tmp_path):
    rc, text, _ = mpirun(2, "batchnorm", tmp_path / "x.npz", timeout=60)
    assert rc != 0
    assert "BatchNorm2d" in text and "each rank would see only its own rows" in text


@needs_mpi
def test_a_rank_that_raises_ends_the_job_with_its_error(tmp_path):
    rc, text, seconds = mpirun(2, "fail", tmp_path / "x.npz", timeout=60)
    assert rc != 0
    assert "rank 1 failed on purpose at batch 3" in text
    print(f"failing job ended after {seconds:.1f} s")


@needs_mpi
def test_mismatched_hyper_parameters_fail_at_the_start(tmp_path):
    rc, text, _ = mpirun(2, "mismatch", tmp_path / "x.npz", timeout=60)
    assert rc != 0
    assert "the ranks disagree" in text and "optimizer hyper-parameters" in text
    assert "rank 1 has" in text


@needs_mpi
@pytest.mark.parametrize("job, what", [("mismatch-data", "X: rank 0 has"),
                                       ("mismatch-scheduler", "scheduler: rank 0 has")])
def test_mismatched_data_or_scheduler_fail_at_the_start(tmp_path, job, what):
    """One value of one row of X differs on rank 1 (the whole array is hashed), or a
    scheduler's settings (not only its type): a ValueError before the first step."""
    rc, text, _ = mpirun(2, job, tmp_path / "x.npz", timeout=60)
    assert rc != 0
    assert "the ranks disagree" in text and what in text


@needs_mpi
def test_mismatched_shared_memory_setting_fails_at_the_start(tmp_path):
    """One rank reducing in shared memory and the other through an Allreduce would hang:
    a clear error on every rank instead."""
    rc, text, _ = mpirun(2, "mismatch-shared", tmp_path / "x.npz", timeout=60)
    assert rc != 0
    assert "the ranks disagree" in text and "shared memory" in text


@needs_mpi
def test_a_kept_shared_window_leaves_the_padding_zero(tmp_path):
    """COMM_WORLD's window serves a second fit of another layout of the same buffer size:
    the padding of its gradient and parameters stays zero, as in one process. Another
    communicator's window is freed at the end of its fit."""
    r = run_ok(2, "reuse", tmp_path / "x.npz")
    assert r["size3"] == r["size1"]
    for h in (3, 1):
        assert r[f"padgrad{h}"].size and not r[f"padgrad{h}"].any()
        assert not r[f"paddata{h}"].any()
    assert r["world_kept"] and r["other_freed"]   # no window left behind per fit


@needs_mpi
def test_too_small_dev_shm_falls_back_to_the_allreduce(tmp_path, compare):
    """Touching a shared window larger than /dev/shm would kill the ranks with SIGBUS: with
    too little room they agree to sum through the Allreduce (same numbers), and rank 0 warns."""
    r = run_ok(2, "small-shm", tmp_path / "x.npz")
    assert not r["window"] and r["warned"]
    np.testing.assert_array_equal(r["weights"], compare[2]["sgd-default-allreduce"])


@needs_mpi
def test_diverged_parameters_are_detected(tmp_path):
    rc, text, _ = mpirun(2, "diverge", tmp_path / "x.npz", timeout=60)
    assert rc != 0
    assert "parameters diverged" in text


@needs_mpi
def test_a_stop_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    r = run_ok(2, "stop", tmp_path / "s.npz")
    assert list(r["steps"]) == [6, 6] and r["epochs"] == 1


@needs_mpi
def test_a_nonfinite_loss_on_one_rank_stops_every_rank_before_the_update(tmp_path):
    """Only rank 1's rows overflow: both ranks raise at the same batch, with the same finite
    weights (the step before), as one process would."""
    r = run_ok(2, "nonfinite", tmp_path / "n.npz")
    s0, s1 = r["steps"]
    m0, m1 = r["stopped"]
    assert s0 == s1 >= 3 and m0 == m1 and m0.startswith(" the training loss is not finite")
    assert f"epoch 1, batch {s0 + 1} of 20" in m0      # the batch after the last update
    assert r["same"] and r["finite"]


@needs_mpi
def test_checkpoint_from_two_ranks_resumes_in_one_process(tmp_path):
    ck = tmp_path / "ck.safetensors"
    full = run_ok(2, f"write:{ck}", tmp_path / "w.npz")["final"]
    assert ck.exists()
    # resume here, without MPI: the one-rank communicator's exact mode
    np.testing.assert_array_equal(wd.resume(ck), full)


@needs_mpi
def test_checkpoint_from_one_process_resumes_on_two_ranks(tmp_path):
    ck = tmp_path / "ck.safetensors"
    full = wd.write(ck)                     # here: 2 epochs, the checkpoint after epoch 1
    resumed = run_ok(2, f"resume:{ck}", tmp_path / "r.npz")["final"]
    np.testing.assert_array_equal(resumed, full)


@needs_mpi
def test_cli_train_distributed(tmp_path):
    exe = shutil.which("fastnn", path=str(Path(sys.executable).parent)) or "fastnn"
    rc, text, _ = mpirun(2, None, None, args=[exe, "train", "--distributed", "--epochs", "2",
                                              "--hidden", "32", "--save",
                                              str(tmp_path / "m.safetensors")])
    assert rc == 0, text
    assert text.count("test accuracy:") == 1          # printed by rank 0 only
    assert (tmp_path / "m.safetensors").exists()


def write_idx(path, a):
    """An IDX file of unsigned bytes (LeCun's MNIST format): magic 0 0 8 ndim, big-endian
    int32 dims, the data."""
    head = bytes([0, 0, 8, a.ndim]) + np.array(a.shape, dtype=">i4").tobytes()
    path.write_bytes(head + a.astype(np.uint8).tobytes())


@needs_mpi
def test_cli_train_distributed_lenet(tmp_path):
    """`fastnn train --model lenet --distributed` on a small folder of IDX files: a CNN
    trained data-parallel from the command line, saved and drawn by rank 0."""
    rng = np.random.default_rng(0)
    for stem, n in (("train", 400), ("t10k", 64)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28)) + 19 * labels[:, None, None]
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte", images)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", labels)
    exe = shutil.which("fastnn", path=str(Path(sys.executable).parent)) or "fastnn"
    rc, text, _ = mpirun(2, None, None, args=[
        exe, "train", "--distributed", "--model", "lenet", "--data", str(tmp_path),
        "--epochs", "2", "--batch-size", "64", "--save", str(tmp_path / "m.safetensors"),
        "--plot", str(tmp_path / "c.png")])
    assert rc == 0, text
    assert text.count("test accuracy:") == 1          # printed by rank 0 only
    assert (tmp_path / "m.safetensors").exists() and (tmp_path / "c.png").exists()


@needs_mpi
def test_cli_train_distributed_refuses_batch_norm(tmp_path):
    exe = shutil.which("fastnn", path=str(Path(sys.executable).parent)) or "fastnn"
    rc, text, _ = mpirun(2, None, None, args=[exe, "train", "--distributed", "--model", "cnn",
                                              "--epochs", "1"])
    assert rc == 2, text
    assert "--distributed: the model has batch norm (BatchNorm2d" in text
    assert "epoch" not in text                         # before any training


# ---- in this process: the one-rank communicator (no MPI needed) ------------------------------

def test_self_communicator_default_mode_is_plain_fit():
    for opt in ("sgd", "adam"):
        np.testing.assert_array_equal(wd.train(opt, False, 0.0, comm=dist.SelfCommunicator()),
                                      wd.train(opt, False, 0.0))


def test_exact_mode_differs_from_plain_fit_only_by_rounding():
    exact = wd.train("sgd", True, 0.0, comm=dist.SelfCommunicator())
    plain = wd.train("sgd", False, 0.0)
    assert not np.array_equal(exact, wd.initial())
    np.testing.assert_allclose(exact, plain, rtol=0, atol=1e-5 * np.max(np.abs(plain)))


def test_bad_arguments_raise_clear_errors():
    X, y = wd.data()
    model = wd.mlp()
    opt = fn.SGD(model.parameters(), lr=0.1)
    loss = fn.CrossEntropyLoss()
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        fn.fit(model, loss, opt, X, y, comm=object(), verbose=0)
    with pytest.raises(ValueError, match="deterministic must be True, False or a shard count"):
        fn.fit(model, loss, opt, X, y, comm=dist.SelfCommunicator(), deterministic=-2,
               verbose=0)

    class Two(dist.SelfCommunicator):
        size = 2
        rank = 0

        def allgather(self, obj):
            return [obj, obj]

    with pytest.raises(ValueError, match="power of two that divides the shard count 3"):
        fn.fit(model, loss, opt, X, y, comm=Two(), deterministic=3, verbose=0)
    # a model the fused step cannot run
    per_op = fn.Sequential(fn.Linear(20, 5), fn.Softmax(), seed=0)
    with pytest.raises(ValueError, match="runs the fused C step"):
        fn.fit(per_op, fn.MSELoss(), fn.SGD(per_op.parameters(), lr=0.1), X,
               np.eye(5, dtype=np.float32)[y], comm=dist.SelfCommunicator(), verbose=0)


def test_train_dist_checks_its_arguments():
    model = wd.mlp()
    from fastnn import _fused
    X, y = wd.data()
    plan = _fused.training_plan(model, fn.CrossEntropyLoss(),
                                fn.SGD(model.parameters(), lr=0.1, momentum=0.9), X, y, 32,
                                ["accuracy"])
    idx = np.arange(64)
    with pytest.raises(ValueError, match="rank"):
        plan.net.train_dist(X, y, idx, 32, rank=2, size=2, reduce=lambda g, s: None)
    with pytest.raises(ValueError, match="shards"):
        plan.net.train_dist(X, y, idx, 32, rank=0, size=2, shards=3, reduce=lambda g, s: None)
    with pytest.raises(ValueError, match="reduce"):
        plan.net.train_dist(X, y, idx, 32, rank=0, size=2)

    def boom(g, step):
        raise KeyError("reduce failed")

    before = model[0].weight.copy()
    with pytest.raises(KeyError, match="reduce failed"):
        plan.net.train_dist(X, y, idx, 32, rank=0, size=2, reduce=boom)
    np.testing.assert_array_equal(model[0].weight, before)   # no update after a failed reduce

    n = plan.net.buffer_size
    for bad, what in ((np.zeros(n, np.float64), "dtype"), (np.zeros(n + 1, np.float32), "elements"),
                      (np.zeros((n, 2), np.float32)[:, 0], "contiguous"),
                      ([0.0] * n, "numpy array"), (plan.net_params, "overlaps"),
                      (plan.states[0], "overlaps"),
                      (np.zeros(n + 64, np.float32)[:n], None)):
        if what is None:   # a slice of X: it overlaps X
            Xf = np.zeros((len(X) + n // X.shape[1] + 1, X.shape[1]), np.float32)
            Xf[:len(X)] = X
            bad, what = Xf.reshape(-1)[-n:], "overlaps 'X'"
            with pytest.raises(ValueError, match=what):
                plan.net.train_dist(Xf, np.concatenate([y, np.zeros(len(Xf) - len(y), y.dtype)]),
                                    idx, 32, reduce=lambda g, s: None, grads=bad)
            continue
        with pytest.raises((TypeError, ValueError), match=what):
            plan.net.train_dist(X, y, idx, 32, reduce=lambda g, s: None, grads=bad)
    np.testing.assert_array_equal(model[0].weight, before)


def test_train_dist_into_another_gradient_buffer():
    """grads=: the step writes its gradients there (the array reduce gets), with the same
    bits as into the net's own buffer, which gets the last gradient at the end."""
    from fastnn import _fused
    X, y = wd.data()
    idx = np.arange(96)
    out = {}
    for other in (False, True):
        model = wd.mlp()
        plan = _fused.training_plan(model, fn.CrossEntropyLoss(),
                                    fn.SGD(model.parameters(), lr=0.1, momentum=0.9), X, y, 32,
                                    [])
        g = np.full(plan.net.buffer_size, 0.0, dtype=np.float32) if other else None
        seen = []
        plan.net.train_dist(X, y, idx, 32, rank=0, size=2, grads=g,
                            reduce=lambda a, s: (seen.append(a), a.__imul__(2)))
        assert all(a is (g if other else seen[0]) for a in seen) and len(seen) == 3
        own = model[0].weight._buffer.grad
        out[other] = (plan.net_params.copy(), own.copy())
        if other:
            np.testing.assert_array_equal(own, g)
    np.testing.assert_array_equal(out[True][0], out[False][0])
    np.testing.assert_array_equal(out[True][1], out[False][1])
    assert np.abs(out[True][1]).max() > 0


LOSSES = {"ce": lambda: fn.CrossEntropyLoss(),
          "ce-weighted-smoothed": lambda: fn.CrossEntropyLoss(
              weight=np.array([1.0, 2.0, 0.5, 1.5, 3.0], dtype=np.float32), label_smoothing=0.1),
          "ce-sum": lambda: fn.CrossEntropyLoss(reduction="sum"),
          "mse": lambda: fn.MSELoss()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_reduce_sees_each_ranks_part_of_the_batch_gradient(loss_name, dtype):
    """Two and three ranks simulated in one process: the parts, each normalised over the
    global batch, add up to the one-rank gradient (and the loss shares to its loss)."""
    from fastnn import _fused
    X, y = wd.data()
    X = X.astype(dtype)
    if loss_name == "mse":
        y = np.eye(5, dtype=dtype)[y]
    idx = np.arange(37, 37 + 45)          # one global batch of 45 rows
    grads, losses = {}, {}
    for rank, size in ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)):
        model = fn.Sequential(fn.Linear(20, 32), fn.ReLU(), fn.Linear(32, 5), dtype=dtype,
                              seed=0)
        plan = _fused.training_plan(model, LOSSES[loss_name](),
                                    fn.SGD(model.parameters(), lr=0.0), X, y, 45, [])
        losses[rank, size] = plan.net.train_dist(
            X, y, idx, 45, rank=rank, size=size,
            reduce=lambda g, s: grads.__setitem__((rank, size), g.copy()))[0]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for size in (2, 3):
        parts = sum(grads[r, size] for r in range(size))
        np.testing.assert_allclose(parts, grads[0, 1], rtol=tol, atol=tol * np.abs(grads[0, 1]).max())
        assert sum(losses[r, size] for r in range(size)) == pytest.approx(losses[0, 1], rel=1e-9)
        assert not np.array_equal(grads[0, size], grads[0, 1])   # a real split


@pytest.mark.skipif(not fn.openmp_enabled(), reason="a build without OpenMP has no team")
@pytest.mark.parametrize("deterministic", [False, True])
def test_distributed_step_same_bits_with_a_team_of_threads(deterministic):
    """The data-parallel loop inside one parallel region (a team) gives the bits of one
    thread, the reduce callback running on thread 0."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, 64)).astype(np.float32)
    y = rng.integers(0, 10, 512)
    seen = []

    class Count(dist.SelfCommunicator):
        def allreduce(self, buf):
            seen.append(buf.size)

    out = {}
    old = fn.get_num_threads()
    try:
        for threads in (1, 2):
            fn.set_num_threads(threads)
            model = fn.Sequential(fn.Linear(64, 512), fn.ReLU(), fn.Linear(512, 512), fn.ReLU(),
                                  fn.Linear(512, 10), seed=0)
            opt = fn.Adam(model.parameters(), lr=1e-3)
            if threads == 2:
                from fastnn import _fused
                plan = _fused.training_plan(model, fn.CrossEntropyLoss(), opt, X, y, 256,
                                            ["accuracy"])
                assert plan.net.threads(32) == 2      # a shard of 32 rows gets the team
            fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=1, batch_size=256, seed=0,
                   verbose=0, comm=Count(), deterministic=deterministic)
            out[threads] = np.concatenate([p.ravel() for p in model.parameters()])
    finally:
        fn.set_num_threads(old)
    np.testing.assert_array_equal(out[1], out[2])
    assert seen          # the per-chunk sums went through the communicator


def test_memory_mapped_data(tmp_path):
    """X and y as read-only memory-maps (what every rank of a big job would open)."""
    X, y = wd.data()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    ym = np.load(tmp_path / "y.npy", mmap_mode="r")
    weights = []
    for XX, yy in ((X, y), (Xm, ym)):
        model = wd.mlp()
        fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.05), XX, yy,
               epochs=1, batch_size=32, seed=1, verbose=0, comm=dist.SelfCommunicator(),
               deterministic=True)
        weights.append(wd.flat(model))
    np.testing.assert_array_equal(weights[0], weights[1])


# ---- the layer plan (CNNs) in this process ---------------------------------------------------

def test_self_communicator_cnn_default_mode_is_plain_fit():
    for opt in ("sgd", "adam"):
        np.testing.assert_array_equal(
            wd.train(opt, False, 0.0, comm=dist.SelfCommunicator(), conv=True),
            wd.train(opt, False, 0.0, conv=True))


@pytest.mark.parametrize("deterministic", [False, True])
def test_cnn_history_under_comm_is_plain_fits(deterministic):
    """The loss and accuracy of each epoch and of the validation data, counted per rank's rows
    by the C step (the CNN's output taken from the layer plan), equal one process's."""
    X, y = wd.images()
    hist = []
    for comm in (None, dist.SelfCommunicator()):
        model = wd.cnn()
        hist.append(fn.fit(model, fn.CrossEntropyLoss(), fn.Adam(model.parameters(), lr=1e-2),
                           X[:512], y[:512], epochs=2, batch_size=32, seed=3, verbose=0,
                           metrics=["accuracy"], validation_data=(X[512:], y[512:]),
                           comm=comm, deterministic=deterministic and comm is not None
                           ).history)
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if deterministic and k == "loss":    # other sums: equal to rounding
            np.testing.assert_allclose(hist[1][k], hist[0][k], rtol=1e-5)
        elif deterministic and k == "val_loss":
            np.testing.assert_allclose(hist[1][k], hist[0][k], rtol=1e-4)
        elif not deterministic:
            assert hist[1][k] == hist[0][k], k
    assert hist[0]["accuracy"][1] > 0.3        # it learns: 5 classes


def test_cnn_exact_mode_differs_from_plain_fit_only_by_rounding():
    exact = wd.train("adam", True, 0.0, comm=dist.SelfCommunicator(), conv=True)
    plain = wd.train("adam", False, 0.0, conv=True)
    assert not np.array_equal(exact, wd.initial(conv=True))
    assert not np.array_equal(exact, plain)      # other sums: the shards' tree
    np.testing.assert_allclose(exact, plain, rtol=0, atol=1e-4 * np.max(np.abs(plain)))


@pytest.mark.parametrize("deterministic", [False, True])
def test_batch_norm_is_refused_by_the_data_parallel_step(deterministic):
    """Each rank's batch statistics would be those of its rows alone: a clear ValueError from
    fit, before any update; FusedNet.train_dist refuses the plan too."""
    X, y = wd.images()
    model = wd.cnn(norm=True)
    before = wd.flat(model)
    opt = fn.SGD(model.parameters(), lr=0.05)
    with pytest.raises(ValueError, match=r"BatchNorm2d.* at index 1 normalises by the "
                                         r"statistics of its batch"):
        fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=1, batch_size=32, verbose=0,
               comm=dist.SelfCommunicator(), deterministic=deterministic)
    np.testing.assert_array_equal(wd.flat(model), before)
    from fastnn import plan as _plan
    p = _plan.training_plan(model, fn.CrossEntropyLoss(), opt, X, y, 32, [])
    with pytest.raises(ValueError, match="train_dist"):
        p.net.train_dist(X, y, np.arange(64), 32)
    np.testing.assert_array_equal(wd.flat(model), before)


@pytest.mark.skipif(not fn.openmp_enabled(), reason="a build without OpenMP has no team")
@pytest.mark.parametrize("deterministic", [False, True])
def test_cnn_distributed_step_same_bits_with_two_threads(deterministic):
    """The convolutions run their own teams inside the data-parallel loop: 1 and 2 threads
    give the same bits."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    out = {}
    old = fn.get_num_threads()
    try:
        for threads in (1, 2):
            fn.set_num_threads(threads)
            model = fn.Sequential(fn.Conv2d(3, 16, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2),
                                  fn.Conv2d(16, 32, 3, padding=1), fn.ReLU(), fn.Flatten(),
                                  fn.Linear(32 * 8 * 8, 10), seed=0)
            fn.fit(model, fn.CrossEntropyLoss(), fn.Adam(model.parameters(), lr=1e-3), X, y,
                   epochs=1, batch_size=64, seed=0, verbose=0, comm=dist.SelfCommunicator(),
                   deterministic=deterministic)
            out[threads] = wd.flat(model)
    finally:
        fn.set_num_threads(old)
    np.testing.assert_array_equal(out[1], out[2])
