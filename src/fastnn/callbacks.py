"""Callbacks for fit, with Keras's names: subclass Callback and override any of

    on_train_begin(logs)        on_epoch_begin(epoch, logs)     on_batch_end(batch, logs)
    on_epoch_end(epoch, logs)   on_train_end(logs)

``self.model`` is the model being trained and ``self.params`` holds fit's settings
("epochs", "steps" per epoch, "samples", "batch_size", "metrics": the keys of the epoch logs).
Batch logs are {"batch", "size", "loss"}; epoch logs hold "loss", the metrics, the "val_"
entries, "lr" and "epoch_time". Setting ``self.model.stop_training = True`` ends fit after
the current batch.

fit calls each callback's ``_check_logs(keys)`` with the keys its epoch logs will hold before
anything is trained: a callback that needs an entry this fit does not log (a ``monitor``, a
``{val_loss}`` in a ModelCheckpoint path without validation data) raises ValueError then.
"""
import math
import os
import string
import sys
import time


class Callback:
    """Base class: every hook does nothing."""

    model = None
    params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def _check_logs(self, keys):
        """Raise ValueError if this callback needs an epoch-log entry that is not in keys
        (called by fit before training; the base class needs none)."""

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class History(Callback):
    """What fit returns: ``history.history[key]`` is the list of that log entry per epoch
    ("loss", "accuracy" or "mae", "val_loss", ..., "lr", "epoch_time"); ``history.epoch``
    lists the epoch indices."""

    def __init__(self):
        self.history, self.epoch = {}, []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


class _Monitor(Callback):
    """A callback watching one entry of the epoch logs for improvement."""

    def __init__(self, monitor, mode, min_delta=0.0):
        name = type(self).__name__
        if not isinstance(monitor, str):
            raise TypeError(f"{name}: monitor must be the name of a log entry (a str), got "
                            f"{type(monitor).__name__}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) \
                or not math.isfinite(min_delta):
            raise ValueError(f"{name}: min_delta must be a finite number, got {min_delta!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{type(self).__name__}: mode must be 'auto', 'min' or 'max', "
                             f"got {mode!r}")
        self.monitor, self.min_delta = monitor, abs(float(min_delta))
        self.mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
        self.best = math.inf if self.mode == "min" else -math.inf

    def _check_monitor(self, keys=None):
        keys = self.params.get("metrics") if keys is None else keys
        if keys is not None and self.monitor not in keys:
            raise ValueError(f"{type(self).__name__}: monitor {self.monitor!r} is not logged "
                             f"by this fit (logged: {', '.join(keys)}); validation entries "
                             f"need validation_data or validation_split")

    def _improved(self, logs):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop training when `monitor` has not improved by more than min_delta for `patience`
    epochs; restore_best_weights sets the weights of the best epoch back at the end.
    verbose=1 prints a line when it stops training and when it restores weights (Keras's
    messages, with the monitored values)."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 restore_best_weights=False, verbose=0):
        super().__init__(monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        self.patience, self.restore_best_weights = int(patience), bool(restore_best_weights)
        if verbose not in (0, 1, False, True):
            raise ValueError(f"EarlyStopping: verbose must be 0 or 1, got {verbose!r}")
        self.verbose = int(verbose)

    def _check_logs(self, keys):
        self._check_monitor(keys)

    def on_train_begin(self, logs=None):
        self._check_monitor()
        self.wait, self.stopped_epoch, self.best_epoch = 0, None, None
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        if self._improved(logs):
            self.best, self.best_epoch, self.wait = logs[self.monitor], epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.verbose:
                best = "no finite value yet" if self.best_epoch is None else \
                    f"best {self.best:.6g} at epoch {self.best_epoch + 1}"
                print(f"Epoch {epoch + 1}: early stopping: {self.monitor} did not improve "
                      f"for {self.wait} epoch{'s' if self.wait != 1 else ''} ({best})",
                      flush=True)

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1} ({self.monitor} {self.best:.6g})", flush=True)


class ModelCheckpoint(_Monitor):
    """Save the model with fastnn.save after every epoch, or only when `monitor` improved
    (save_best_only). The path may use the epoch (from 1) and log entries:
    "model-{epoch:03d}-{val_loss:.3f}.safetensors"."""

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto"):
        super().__init__(monitor, mode)
        if not isinstance(filepath, (str, os.PathLike)):
            raise TypeError(f"ModelCheckpoint: filepath must be a str or os.PathLike, got "
                            f"{type(filepath).__name__}")
        self.filepath, self.save_best_only = os.fspath(filepath), bool(save_best_only)
        try:
            self._fields = [f for _, f, _, _ in string.Formatter().parse(self.filepath)
                            if f is not None]
        except ValueError as e:
            raise ValueError(f"ModelCheckpoint: filepath {self.filepath!r} is not a valid "
                             f"format string ({e})") from None
        for f in self._fields:
            if f == "" or f[0].isdigit():
                raise ValueError(f"ModelCheckpoint: filepath {self.filepath!r} must name its "
                                 f"fields ({{epoch}}, {{val_loss:.3f}}, ...), got "
                                 f"{{{f}}}")

    def _check_logs(self, keys):
        """Every {field} of the path is "epoch" or a log entry, and the path formats."""
        if self.save_best_only:
            self._check_monitor(keys)
        for f in self._fields:
            root = f.split(".")[0].split("[")[0]
            if root != "epoch" and root not in keys:
                raise ValueError(f"ModelCheckpoint: filepath {self.filepath!r} uses {{{root}}}, "
                                 f"which this fit does not log (logged: epoch, "
                                 f"{', '.join(keys)}); validation entries need "
                                 f"validation_data or validation_split")
        try:
            self.filepath.format(epoch=1, **dict.fromkeys(keys, 0.5))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ValueError(f"ModelCheckpoint: filepath {self.filepath!r} cannot be formatted "
                             f"with the epoch (an int) and the logs (floats): {e}") from None

    def on_train_begin(self, logs=None):
        if self.save_best_only:
            self._check_monitor()

    def on_epoch_end(self, epoch, logs=None):
        from .io import save

        logs = logs or {}
        if self.save_best_only:
            if not self._improved(logs):
                return
            self.best = logs[self.monitor]
        save(self.model, self.filepath.format(epoch=epoch + 1, **logs))


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch's loss is NaN or infinite."""

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss {loss}, terminating training")
            self.model.stop_training = True


def _fmt_logs(logs):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()
                      if k not in ("epoch_time", "lr"))


def _fmt_time(s):
    return f"{s:.2f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


class ProgressLogger(Callback):
    """fit's output. verbose=1: on a terminal a progress bar with rate and ETA, redrawn at most
    10 times a second, then the epoch's line; elsewhere just the line. verbose=2: the line."""

    def __init__(self, verbose=1, stream=None):
        self.verbose, self.stream = verbose, stream

    def on_train_begin(self, logs=None):
        self.out = self.stream or sys.stdout
        self.bar = self.verbose == 1 and self.out.isatty()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.t0, self.drawn = epoch, time.perf_counter(), 0.0
        self.seen, self.loss_sum = 0, 0.0

    def on_batch_end(self, batch, logs=None):
        if not self.bar:
            return
        self.seen += logs["size"]
        self.loss_sum += logs["loss"] * logs["size"]
        now, steps = time.perf_counter(), self.params["steps"]
        if now - self.drawn < 0.1 and batch + 1 < steps:
            return
        self.drawn, done = now, batch + 1
        rate = done / max(now - self.t0, 1e-9)
        filled = int(30 * done / steps)
        arrow = "=" * filled + (">" if filled < 30 else "") + "." * (29 - filled)
        self.out.write(f"\r{self._head()} [{arrow}] {done}/{steps} - {rate:.0f} batch/s - "
                       f"ETA {_fmt_time((steps - done) / rate)} - loss: "
                       f"{self.loss_sum / self.seen:.4f}\033[K")
        self.out.flush()

    def on_epoch_end(self, epoch, logs=None):
        line = f"{self._head()} - {_fmt_time(logs['epoch_time'])} - {_fmt_logs(logs)}"
        self.out.write(("\r" + line + "\033[K\n") if self.bar else line + "\n")
        self.out.flush()

    def _head(self):
        width = len(str(self.params["epochs"]))
        return f"Epoch {self.epoch + 1:>{width}}/{self.params['epochs']}"
