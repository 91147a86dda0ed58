"""Data, models and runs shared by tests/mpi_worker.py (under mpiexec) and
tests/test_distributed.py (in the test process, with the one-rank communicator)."""
import numpy as np

import fastnn as fn


def data(n=640, d=20, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (X[:, :classes].argmax(1) + (rng.random(n) < 0.1)) % classes
    return X, y.astype(np.int64)


def mlp(dropout=0.0, dtype=np.float32):
    layers = [fn.Linear(20, 32), fn.ReLU(), fn.Linear(32, 16), fn.ReLU()]
    layers += [fn.Dropout(dropout)] if dropout else []
    return fn.Sequential(*layers, fn.Linear(16, 5), dtype=dtype, seed=0)


OPTS = {"sgd": lambda p: fn.SGD(p, lr=0.05, momentum=0.9),
        "adam": lambda p: fn.Adam(p, lr=1e-2)}

# (name, optimizer, deterministic, dropout, dtype): 640 samples, global batch 32 -> 20 steps
CASES = [("sgd-default", "sgd", False, 0.0, "float32"),
         ("adam-default", "adam", False, 0.0, "float32"),
         ("sgd-exact", "sgd", True, 0.0, "float32"), ("adam-exact", "adam", True, 0.0, "float32"),
         ("adam-exact-dropout", "adam", True, 0.3, "float32"),
         ("sgd-exact-float64", "sgd", True, 0.0, "float64"),
         ("adam-default-float64", "adam", False, 0.0, "float64")]


def images(n=640, classes=5, seed=0):
    """(n, 1, 8, 8) float32 images whose class is the brightest of 5 fixed regions, and labels."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = X[:, 0, :5, :].mean(2).argmax(1) % classes
    return X, y.astype(np.int64)


def cnn(dropout=0.0, dtype=np.float32, norm=False):
    """conv 3x3 (4 channels) - ReLU - max pool 2 - conv 3x3 (6) - ReLU - flatten - [dropout] -
    linear 5: the layer plan's kinds without batch norm (norm=True: a BatchNorm2d after the
    first conv, which data-parallel training refuses)."""
    layers = [fn.Conv2d(1, 4, 3, padding=1)] + ([fn.BatchNorm2d(4)] if norm else [])
    layers += [fn.ReLU(), fn.MaxPool2d(2), fn.Conv2d(4, 6, 3, padding=1), fn.ReLU(),
               fn.Flatten()]
    layers += [fn.Dropout(dropout)] if dropout else []
    return fn.Sequential(*layers, fn.Linear(6 * 4 * 4, 5), dtype=dtype, seed=0)


def flat(model):
    return np.concatenate([p.ravel() for p in model.parameters()]).copy()


def initial(dtype="float32", conv=False):
    return flat((cnn if conv else mlp)(dtype=dtype))


# the same for the small CNN
CNN_CASES = [("cnn-" + name, opt, det, drop, dtype) for name, opt, det, drop, dtype in
             [("sgd-default", "sgd", False, 0.0, "float32"),
              ("adam-default", "adam", False, 0.0, "float32"),
              ("sgd-exact", "sgd", True, 0.0, "float32"),
              ("adam-exact-dropout", "adam", True, 0.3, "float32"),
              ("adam-exact-float64", "adam", True, 0.0, "float64")]]


def train(opt, det, drop, dtype="float32", comm=None, conv=False):
    """20 steps (one epoch) of a case (conv: the CNN on images); the flat weights."""
    X, y = images() if conv else data()
    model = (cnn if conv else mlp)(drop, dtype)
    fn.fit(model, fn.CrossEntropyLoss(), OPTS[opt](model.parameters()), X, y, epochs=1,
           batch_size=32, seed=1, verbose=0, comm=comm, deterministic=det)
    return flat(model)


class Checkpoint(fn.Callback):
    """save_checkpoint after the first epoch, on rank 0."""

    def __init__(self, path, opt, rank):
        self.path, self.opt, self.rank = path, opt, rank

    def on_epoch_end(self, epoch, logs=None):
        if self.rank == 0 and epoch == 0:
            fn.save_checkpoint(self.path, self.model, self.opt, epoch=epoch + 1)


def write(path, comm=None, rank=0):
    """Exact mode, 2 epochs, a checkpoint after the first; the final flat weights."""
    X, y = data()
    model = mlp(0.3)
    opt = fn.Adam(model.parameters(), lr=1e-2)
    fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=32, seed=1,
           verbose=0, comm=comm or fn.distributed.SelfCommunicator(), deterministic=True,
           callbacks=[Checkpoint(str(path), opt, rank)])
    return flat(model)


def resume(path, comm=None):
    """From write()'s checkpoint: epoch 2 of 2 in exact mode; the final flat weights."""
    X, y = data()
    model = mlp(0.3)
    opt = fn.Adam(model.parameters(), lr=1e-2)
    state = fn.load_checkpoint(str(path), model, opt)
    fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=2, initial_epoch=state["epoch"],
           batch_size=32, seed=1, verbose=0, comm=comm or fn.distributed.SelfCommunicator(),
           deterministic=True)
    return flat(model)


def regress(comm=None):
    """The CNN as a regressor (MSELoss, fit's default metric mae), 2 epochs with validation:
    (flat weights, [loss, mae, val_loss, val_mae] of the last epoch)."""
    X, _ = images()
    T = np.tanh(X[:, 0, :5, :].mean(2)).astype(np.float32)
    model = cnn()
    h = fn.fit(model, fn.MSELoss(), fn.Adam(model.parameters(), lr=1e-2), X, T, epochs=2,
               batch_size=32, seed=1, verbose=0, validation_split=0.25, comm=comm).history
    return flat(model), np.array([h[k][-1] for k in ("loss", "mae", "val_loss", "val_mae")])
