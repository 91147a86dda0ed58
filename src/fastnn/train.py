"""fit and evaluate: the training loop, as Keras's ``model.fit`` but with the loss and the
optimizer passed in (PyTorch style)::

    history = fn.fit(model, fn.CrossEntropyLoss(), fn.Adam(model.parameters()), X, y,
                     epochs=20, batch_size=32, validation_split=0.1, seed=0)
    fn.evaluate(model, loss, X_test, y_test)   # {"loss": ..., "accuracy": ...}

Every argument is checked before any weight changes. Each epoch shuffles with its own
generator, derived from (seed, epoch), and the same generator family reseeds the Dropout
layers, so ``fit(..., epochs=N, seed=s)`` gives the same weights as ``fit(..., epochs=k,
seed=s)``, a checkpoint, and ``fit(..., epochs=N, initial_epoch=k, seed=s)`` after loading it.
The reported training loss and metrics of an epoch are the means over its batches (computed
on the outputs before each update), as Keras reports them.

A Sequential of Linear layers, activations and Dropout with a built-in loss and optimizer
trains through the fused C step (fastnn._fused), and so does a CNN the layer plan describes
(fastnn.plan): a whole chunk of mini-batches per native
call, with the same numbers as the per-op loop (Dropout masks excepted: see _fused). A model moved
with ``model.to("cuda")`` trains on the GPU (fastnn.cuda.train: X and y uploaded once, the
same shuffling and formulas, numbers equal up to float rounding).
"""
import time

import numpy as np

from . import _fused, _guard
from ._kernels import NonFiniteLossError
from . import init as _init
from .callbacks import Callback, History, ProgressLogger, TerminateOnNaN
from .loss import CrossEntropyLoss, Loss, _check_finite
from .lr_scheduler import LRScheduler, ReduceLROnPlateau
from .nn import Dropout, Module, Sequential, param_dtype
from .optim import Optimizer

_METRICS = ("accuracy", "mae", "mse")


def _metric_sums(names, output, target, loss):
    """Sum over the batch of each metric (the caller divides by the sample count)."""
    sums = {}
    for name in names:
        if name == "accuracy" and isinstance(loss, CrossEntropyLoss):
            labels = target if target.ndim == 1 else target.argmax(axis=1)
            hits = (output.argmax(axis=1) == labels) & ~np.isnan(output).any(axis=1)
            sums[name] = float(np.sum(hits))     # a row with a NaN is never right
        elif name == "accuracy":  # binary: logit > 0 against target > 0.5, per column
            hits = ((output > 0) == (target > 0.5)) & ~np.isnan(output)
            sums[name] = float(hits.reshape(len(hits), -1).mean(axis=1).sum())
        else:
            err = (output - target).reshape(len(output), -1)
            per = np.abs(err) if name == "mae" else err * err
            sums[name] = float(per.mean(axis=1, dtype=np.float64).sum())
    return sums


def _metric_names(metrics, loss):
    if metrics is None:
        return ["accuracy"] if loss.task == "classification" else ["mae"]
    names = ["accuracy" if m == "acc" else m for m in metrics]
    for m in names:
        if m not in _METRICS:
            raise ValueError(f"metrics: unknown metric {m!r}; expected some of {_METRICS}")
    return names


def _int_arg(value, name, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return int(value)


def _as_X(X, name, dtype):
    """X as a C-contiguous array of the model's dtype; checked for shape and finiteness."""
    if getattr(X, "__cuda_ndarray__", False) or hasattr(X, "__cuda_array_interface__"):
        raise TypeError(f"{name} is a device array; pass a numpy array (a model on cuda "
                        f"gets it uploaded once per fit)")
    a = np.asarray(X)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape (samples, features...), got {a.shape}")
    if len(a) == 0:
        raise ValueError(f"{name} is empty: it has no samples")
    a = np.require(a, dtype, ["C", "A"])    # native, aligned, contiguous (copied if not)
    _check_finite(a, name)
    return a


def _prepare(model, loss, X, y, name_X, name_y, width=None):
    """Checked (X, y) for this model and loss; the model runs one sample to learn its output
    shape (in evaluation mode, so no state changes)."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastnn Module, got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a fastnn loss (e.g. CrossEntropyLoss()), got "
                        f"{type(loss).__name__}")
    if loss.reduction == "none":
        raise ValueError("loss: fit and evaluate need reduction='mean' or 'sum', got 'none'")
    X = _as_X(X, name_X, param_dtype(model))
    if width is not None and X.shape[1:] != width:
        raise ValueError(f"{name_X} has samples of shape {X.shape[1:]}, expected {width} like "
                         f"the training data")
    y = np.asarray(y)
    if y.ndim == 0 or len(y) != len(X):
        raise ValueError(f"{name_X} and {name_y} have different lengths: {len(X)} and "
                         f"{len(y) if y.ndim else 'a scalar'}")
    first = model._input_layer()
    if first is not None and (X.ndim != 2 or X.shape[1] != first.in_features):
        raise ValueError(f"{first._where()}: expected input with {first.in_features} features, "
                         f"got {X.shape[-1]} ({name_X} has shape {X.shape})")
    # the output's shape and dtype; two rows, so that a BatchNorm using batch statistics in
    # evaluation mode (track_running_stats=False) has more than one value per channel
    out = model.predict(X[:2])
    y = loss.check_target(y, (len(X),) + out.shape[1:], out.dtype, name_y)
    return X, y


def _check_batch_norm_batches(model, X, batch_size):
    """ValueError before any update when a batch of one sample (batch_size 1, or the last
    batch of an epoch) would reach a BatchNorm with one value per channel: the error the
    layer raises, which mid-epoch would come after the epoch's first updates. Checked for
    the models the layer plan describes (their per-sample shapes are known)."""
    from . import plan as _plan

    n = len(X)
    rows = {batch_size, n % batch_size} - {0}
    if 1 not in rows:
        return
    try:
        p = _plan.build(model, X.shape[1:])
    except ValueError:
        return          # the layers raise their own error
    if p is None:
        return
    for layer, op in zip(model, p.ops):
        if op["kind"] == "batch_norm" and op["in"][1] * op["in"][2] == 1:
            raise ValueError(f"fit: {layer._where()}: expected more than 1 value per channel "
                             f"when training, but batch_size={batch_size} with {n} training "
                             f"samples gives a batch of 1 sample; choose a batch_size that "
                             f"does not leave a last batch of one sample")


@_guard.for_reading
def evaluate(model, loss, X, y, batch_size=256, metrics=None, comm=None):
    """{"loss": value, "accuracy" (classifiers) or "mae" (regression): value} on (X, y), with
    the model in evaluation mode (its mode is restored). An output row holding a NaN never
    counts as correct. RuntimeError while another thread trains the model (see fit).
    comm (an mpi4py communicator or a fastnn.distributed.Communicator): the rows are split
    between the ranks and every rank gets the result for all of (X, y)."""
    names = _metric_names(metrics, loss)
    X, y = _prepare(model, loss, X, y, "X", "y")
    dist = None
    if comm is not None:
        from . import distributed as _dist
        dist = _dist.Session(comm, False)
    return _evaluate(model, loss, X, y, names, batch_size, dist)


def _evaluate(model, loss, X, y, names, batch_size=256, dist=None):
    out = (model.predict(X, batch_size=batch_size) if dist is None
           else dist.predict(model, X, batch_size))
    logs = {"loss": loss.forward(out, y)}
    logs.update({k: v / len(X) for k, v in _metric_sums(names, out, y, loss).items()})
    return logs


def _check_callbacks(callbacks):
    callbacks = list(callbacks or ())
    for c in callbacks:
        if not isinstance(c, Callback):
            raise TypeError(f"callbacks must be fastnn Callback instances, got "
                            f"{type(c).__name__}")
    return callbacks


def _nonfinite(epoch, batch, steps):
    return FloatingPointError(
        f"fit: the training loss is not finite (NaN or infinity) at epoch {epoch + 1}, batch "
        f"{batch + 1} of {steps}: training stopped before that batch's update, and the model "
        f"keeps the weights of the last step with a finite loss. Lower the learning rate, "
        f"scale the inputs, or pass error_if_nonfinite=False to train on regardless.")


def _fused_epoch(plan, model, X, y, order, batch_size, steps, chunk, names, seed, epoch, cbs,
                 dist=None):
    """One epoch through the fused C step, `chunk` batches per call; callbacks see the last
    batch of each call with the mean loss of its batches."""
    seen, loss_sum, correct, msums = 0, 0.0, 0, np.zeros(3)
    key = int(np.random.SeedSequence([seed, epoch, 1]).generate_state(1, np.uint64)[0])
    for b0 in range(0, steps, chunk):
        b1 = min(steps, b0 + chunk)
        idx = order[b0 * batch_size:b1 * batch_size]
        step0 = plan.chunk.step
        plan.net.metric_sums[...] = 0      # the C step adds the chunk's (summed over ranks)
        try:
            if dist is None:
                part_loss, part_correct = plan.train(X, y, idx, batch_size, key)
            else:
                part_loss, part_correct = plan.train(X, y, idx, batch_size, key, dist, model)
        except NonFiniteLossError as e:
            raise _nonfinite(epoch, b0 + (e.step - step0), steps) from None
        if dist is not None:
            dist.check(plan.net_params, plan.chunk.step)
        seen += len(idx)
        loss_sum += part_loss
        correct += part_correct
        msums += plan.net.metric_sums
        for c in cbs:
            c.on_batch_end(b1 - 1, {"batch": b1 - 1, "size": len(idx),
                                    "loss": part_loss / len(idx)})
        if model.stop_training if dist is None else dist.stop(model):
            break
    if plan.cross_entropy:
        sums = {"accuracy": float(correct)} if names else {}
    else:   # mae, mse and binary accuracy as _metric_sums computes them
        sums = {k: float(msums[("mae", "mse", "accuracy").index(k)]) for k in names}
    return seen, loss_sum, sums


@_guard.for_training
def fit(model, loss, optimizer, X, y, epochs=1, batch_size=32, validation_data=None,
        validation_split=0.0, shuffle=True, seed=None, metrics=None, callbacks=(), verbose=1,
        scheduler=None, initial_epoch=0, error_if_nonfinite=None, comm=None,
        deterministic=False):
    """Train model on (X, y) and return a History.

    validation_data: (X_val, y_val), or validation_split: the fraction of samples, taken from
    the end of X before shuffling, held out for validation. seed: shuffling and Dropout (None:
    drawn from the global generator). metrics: names among "accuracy", "mae", "mse" (default:
    accuracy for CrossEntropyLoss/BCEWithLogitsLoss, mae otherwise). scheduler: stepped once
    per epoch (ReduceLROnPlateau with val_loss, or loss without validation). initial_epoch:
    resume at this epoch (epochs is the index to stop at, as in Keras). verbose: 0 silent,
    1 progress bar on a terminal (else a line per epoch), 2 a line per epoch.
    error_if_nonfinite: True stops at the first batch whose loss is NaN or infinite, before
    that batch's update, and raises FloatingPointError naming the epoch and batch; the model
    keeps the weights of the last step with a finite loss. False trains on regardless (as
    PyTorch and Keras do). None (default): True, unless a TerminateOnNaN callback is given
    (it then ends training quietly after that batch, as in Keras).

    Callbacks are checked against the log entries this fit will produce before training
    (ValueError, e.g. a ModelCheckpoint path with {val_loss} without validation data).
    Threads: fit holds the model, its parameters and the optimizer while it runs; another
    thread's fit, evaluate, predict or Optimizer.step on them raises RuntimeError at once and
    the running fit goes on undisturbed. Train each model (with its optimizer) from one
    thread at a time; several threads may predict or evaluate one model at once when it is
    in evaluation mode (``model.eval()``) and no thread trains it.

    comm: data-parallel training over the ranks of an mpi4py communicator (or a
    fastnn.distributed.Communicator); every rank passes the same arguments and batch_size is
    the global batch. deterministic=True (or a shard count): the exact mode, whose weights
    are the same bits for any number of ranks. See fastnn.distributed.
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastnn optimizer, got {type(optimizer).__name__}")
    epochs = _int_arg(epochs, "epochs", 0)
    initial_epoch = _int_arg(initial_epoch, "initial_epoch", 0, epochs)
    verbose = _int_arg(verbose, "verbose", 0, 2)
    callbacks = _check_callbacks(callbacks)
    if error_if_nonfinite is None:
        error_if_nonfinite = not any(isinstance(c, TerminateOnNaN) for c in callbacks)
    names = _metric_names(metrics, loss) if isinstance(loss, Loss) else []
    if scheduler is not None and (not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau))
                                  or scheduler.optimizer is not optimizer):
        raise ValueError("scheduler must be a fastnn lr_scheduler built on this optimizer")
    if seed is not None:
        seed = _int_arg(seed, "seed", 0)
    if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
        raise ValueError(f"validation_split must be a fraction in [0, 1), got "
                         f"{validation_split!r}")
    if validation_split and validation_data is not None:
        raise ValueError("pass validation_data or validation_split, not both")

    dist = None
    if comm is not None or deterministic:
        from . import distributed as _dist
        dist = _dist.Session(comm, deterministic)
        if dist.rank != 0:
            verbose = 0          # progress and checkpoints from rank 0 only
    X, y = _prepare(model, loss, X, y, "X", "y")
    val = None
    if validation_split:
        n_val = int(round(len(X) * validation_split))
        if not 0 < n_val < len(X):
            raise ValueError(f"validation_split={validation_split} leaves {len(X) - n_val} "
                             f"training and {n_val} validation samples of {len(X)}")
        X, y, val = X[:-n_val], y[:-n_val], (X[-n_val:], y[-n_val:])
    elif validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (X_val, y_val)")
        val = _prepare(model, loss, *validation_data, "validation_data[0]",
                       "validation_data[1]", width=X.shape[1:])
    n = len(X)
    model._input_shape = tuple(X.shape[1:])     # saved with the model (fastnn.save)
    batch_size = _int_arg(batch_size, "batch_size", 1, n)
    if seed is None:
        seed = int(_init.default_generator().integers(2 ** 63))
    if dist is not None:
        seed = dist.seed(seed)

    keys = ["loss", *names] + (["val_loss", *("val_" + m for m in names)] if val else [])
    steps = -(-n // batch_size)
    history = History()
    cbs = [history] + ([ProgressLogger(verbose)] if verbose else []) + (
        callbacks if dist is None or dist.rank == 0 else
        [c for c in callbacks if not _dist.rank0_only(c)])
    params = {"epochs": epochs, "steps": steps, "samples": n, "batch_size": batch_size,
              "metrics": keys + ["lr", "epoch_time"]}
    for c in cbs:
        c._check_logs(params["metrics"])   # e.g. {val_loss} in a path without validation
    for c in cbs:
        c.set_model(model)
        c.set_params(params)
    dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
    model.stop_training = False
    gpu = None
    if getattr(model, "device", "cpu") != "cpu":   # fastnn.cuda.train: checks, uploads X, y
        from .cuda import train as _cuda_train
        gpu = _cuda_train.Trainer(model, loss, optimizer, X, y, batch_size, names)
    if gpu is None and dist is None:
        _check_batch_norm_batches(model, X, batch_size)
    plan = None if gpu is not None else _fused.training_plan(model, loss, optimizer, X, y,
                                                             batch_size, names)
    # batches per native call: every batch when a user callback wants each one
    per_batch = any(type(c).on_batch_end is not Callback.on_batch_end
                    and not isinstance(c, (History, ProgressLogger)) for c in callbacks)
    chunk = 1 if per_batch else max(1, 8192 // batch_size)
    if plan is not None:
        plan.net.nonfinite_ok = not error_if_nonfinite
    if dist is not None:
        dist.start(plan, model, loss, optimizer, X, y, val, batch_size=batch_size, epochs=epochs,
                   initial_epoch=initial_epoch, shuffle=shuffle, seed=seed, chunk=chunk,
                   metrics=names, scheduler=None if scheduler is None else
                   [type(scheduler).__name__, {k: v for k, v in vars(scheduler).items()
                                               if k != "optimizer"}])

    for c in cbs:
        c.on_train_begin({})
    for epoch in range(initial_epoch, epochs):
        shuffle_rng, dropout_rng = (np.random.default_rng(s) for s in
                                    np.random.SeedSequence([seed, epoch]).spawn(2))
        for d in dropouts:
            d.generator = dropout_rng
        order = shuffle_rng.permutation(n) if shuffle else np.arange(n)
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        for c in cbs:
            c.on_epoch_begin(epoch, {})
        t0 = time.perf_counter()
        seen, loss_sum, sums = 0, 0.0, dict.fromkeys(names, 0.0)
        if gpu is not None:
            seen, loss_sum, sums = gpu.epoch(order, lr, cbs, per_batch)
            if error_if_nonfinite and not np.isfinite(loss_sum):
                # the GPU loop does not wait for each batch's loss: it is checked per epoch
                raise FloatingPointError(
                    f"fit: the training loss is not finite (NaN or infinity) in epoch "
                    f"{epoch + 1} on the GPU (checked once per epoch there, so this epoch's "
                    f"updates were made). Lower the learning rate or scale the inputs, or pass "
                    f"error_if_nonfinite=False.")
        elif plan is not None:
            seen, loss_sum, sums = _fused_epoch(plan, model, X, y, order, batch_size, steps,
                                                chunk, names, seed, epoch, cbs, dist)
        for b in range(steps if plan is None and gpu is None else 0):
            idx = order[b * batch_size:(b + 1) * batch_size]
            xb, yb = X[idx], y[idx]
            out = model.forward(xb)
            value = loss.forward(out, yb)
            if error_if_nonfinite and not np.isfinite(value):
                raise _nonfinite(epoch, b, steps)
            optimizer.zero_grad()
            if isinstance(model, Sequential):
                model.backward(loss.backward(), input_grad=False)
            else:
                model.backward(loss.backward())
            optimizer.step()
            seen += len(idx)
            loss_sum += value * len(idx)
            for k, v in _metric_sums(names, out, yb, loss).items():
                sums[k] += v
            for c in cbs:
                c.on_batch_end(b, {"batch": b, "size": len(idx), "loss": value})
            if model.stop_training:
                break
        logs = {"loss": loss_sum / seen, **{k: v / seen for k, v in sums.items()}}
        if val:
            logs.update({"val_" + k: v for k, v in
                         _evaluate(model, loss, *val, names, dist=dist).items()})
        logs["lr"] = lr
        logs["epoch_time"] = time.perf_counter() - t0
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(logs.get("val_loss", logs["loss"]))
        elif scheduler is not None:
            scheduler.step()
        for c in cbs:
            c.on_epoch_end(epoch, logs)
        if model.stop_training if dist is None else dist.stop(model):
            break
    if dist is not None and plan is not None:
        dist.check(plan.net_params, plan.chunk.step, force=True)
        dist.finish()
    for c in cbs:
        c.on_train_end({})
    return history
