"""Saving and loading models and training checkpoints (safetensors files).

``fastnn.save(model, path)`` writes the parameters as tensors named like the state_dict
("0.weight") and the architecture as JSON in the file's metadata; ``fastnn.load(path)``
rebuilds the model from it (built-in layers only: for a model with your own layer classes,
build it and call ``fastnn.load(path, model=model)``).

``save_checkpoint`` also stores the optimizer (options, step counts, buffers), a scheduler's
state, the epoch, ``extra`` (anything JSON-serialisable), the global generator's state and
the Dropout generators' states; ``load_checkpoint`` restores them all, so that::

    fn.fit(model, loss, opt, X, y, epochs=k, seed=0, scheduler=sched)
    fn.save_checkpoint("ck.safetensors", model, opt, sched, epoch=k)
    ...                                     # later: rebuild model, opt and sched, then
    state = fn.load_checkpoint("ck.safetensors", model, opt, sched)
    fn.fit(model, loss, opt, X, y, epochs=n, initial_epoch=state["epoch"], seed=0,
           scheduler=sched)

gives the weights of one n-epoch fit, bit for bit. Files are written atomically (a temporary
file in the same folder, flushed, fsynced, then renamed over the target), so a failed save
leaves the previous file intact. A file that is not a complete fastnn safetensors file raises
ValueError.
"""
import json
import os
import struct
import tempfile

import numpy as np

from . import init as _init
from .nn import LAYERS, Dropout, Sequential

_MODEL, _CHECKPOINT = "fastnn-model", "fastnn-checkpoint"
_CHUNK = 1 << 20


# ---- architecture ----------------------------------------------------------------------------

def architecture(module):
    """The JSON-able description that load rebuilds: class name, config, layers."""
    name = type(module).__name__
    config = module.get_config()
    if LAYERS.get(name) is not type(module) or config is None:
        return {"class": name, "custom": True}
    arch = {"class": name, "config": config}
    if isinstance(module, Sequential):
        arch["layers"] = [architecture(m) for m in module]
    return arch


def _rebuild(arch, where="model"):
    if arch.get("custom"):
        raise TypeError(f"fastnn.load cannot rebuild layer class {arch['class']!r} ({where}): "
                        f"it is not a built-in fastnn layer. Build the model yourself and "
                        f"pass it: fastnn.load(path, model=model)")
    cls = LAYERS.get(arch["class"])
    if cls is None:
        raise ValueError(f"fastnn.load: unknown layer class {arch['class']!r} ({where})")
    if cls is Sequential:
        return Sequential(*(_rebuild(a, f"layer {i}") for i, a in enumerate(arch["layers"])))
    config = dict(arch["config"])
    if arch["class"] == "Linear":
        config["init"] = "zeros"  # the weights are loaded next; draw no random numbers
    try:
        return cls(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"fastnn.load: bad arguments for {arch['class']} ({where}): "
                         f"{e}") from None


# ---- files -----------------------------------------------------------------------------------

def _atomic_write(path, data):
    """Write bytes to path through a temporary file in the same folder, then rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for i in range(0, len(data), _CHUNK):
                f.write(data[i:i + _CHUNK])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write(path, tensors, metadata):
    from safetensors.numpy import save as st_save

    # np.ascontiguousarray would turn a 0-d array (num_batches_tracked) into shape (1,)
    tensors = {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in tensors.items()}
    _atomic_write(path, st_save(tensors, metadata=metadata))


def _read(path, kind):
    """(tensors, metadata) of a fastnn safetensors file of this kind."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        tensors = st_load(raw)
        (n,) = struct.unpack("<Q", raw[:8])
        meta = json.loads(raw[8:8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid safetensors file (corrupt or truncated: "
                         f"{e})") from None
    if meta.get("format") not in (_MODEL, _CHECKPOINT):
        raise ValueError(f"{path}: a safetensors file, but not one written by fastnn")
    if kind == _CHECKPOINT and meta["format"] != _CHECKPOINT:
        raise ValueError(f"{path}: a fastnn model file, not a checkpoint (use fastnn.load)")
    return tensors, meta


def save(model, path):
    """Save the model's parameters and architecture to path (safetensors, atomic)."""
    _write(path, model.state_dict(), {"format": _MODEL, "version": "1",
                                      "architecture": json.dumps(architecture(model))})


def load(path, model=None):
    """The model saved at path (a model file or a checkpoint). With model=, load the weights
    into that model instead of rebuilding it (needed for user-defined layers)."""
    tensors, meta = _read(path, _MODEL)
    if meta["format"] == _CHECKPOINT:
        tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    if model is None:
        try:
            arch = json.loads(meta["architecture"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"{os.fspath(path)}: corrupt architecture metadata ({e!r})") from None
        model = _rebuild(arch)
    model.load_state_dict(tensors)
    return model


# ---- checkpoints -----------------------------------------------------------------------------

def _dropouts(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Dropout)]


def save_checkpoint(path, model, optimizer, scheduler=None, epoch=None, extra=None):
    """Save model, optimizer, scheduler, epoch, extra and random-generator states to path."""
    tensors = {"model." + k: v for k, v in model.state_dict().items()}
    osd = optimizer.state_dict()
    for i, s in osd["state"].items():
        tensors.update({f"optimizer.{i}.{k}": v for k, v in s.items() if k != "step"})
    state = {
        "epoch": epoch, "extra": extra,
        "optimizer": {"class": type(optimizer).__name__, "param_groups": osd["param_groups"],
                      "steps": {str(i): s["step"] for i, s in osd["state"].items()}},
        "scheduler": None if scheduler is None else {"class": type(scheduler).__name__,
                                                     "state": scheduler.state_dict()},
        "rng": _init.default_generator().bit_generator.state,
        "dropout": {name: m.generator.bit_generator.state
                    for name, m in _dropouts(model) if m.generator is not None},
    }
    try:
        text = json.dumps(state)
    except TypeError as e:
        raise TypeError(f"save_checkpoint: extra must be JSON-serialisable ({e})") from None
    _write(path, tensors, {"format": _CHECKPOINT, "version": "1", "checkpoint": text,
                           "architecture": json.dumps(architecture(model))})


def load_checkpoint(path, model, optimizer, scheduler=None):
    """Restore what save_checkpoint saved into model, optimizer and scheduler (built as for
    the saved run; everything is checked before anything changes). Returns {"epoch", "extra"}.
    """
    tensors, meta = _read(path, _CHECKPOINT)
    try:
        ck = json.loads(meta["checkpoint"])
        opt, sched = ck["optimizer"], ck["scheduler"]
        osd = {"param_groups": opt["param_groups"],
               "state": {int(i): {"step": s} for i, s in opt["steps"].items()}}
        msd = {}
        for k, v in tensors.items():
            part, _, rest = k.partition(".")
            if part == "model":
                msd[rest] = v
            else:
                i, _, name = rest.partition(".")
                osd["state"][int(i)][name] = v
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: corrupt fastnn checkpoint ({e!r})") from None
    if opt["class"] != type(optimizer).__name__:
        raise ValueError(f"{path}: saved with a {opt['class']} optimizer, got "
                         f"{type(optimizer).__name__}")
    if (sched is None) != (scheduler is None) or (
            sched and sched["class"] != type(scheduler).__name__):
        raise ValueError(f"{path}: saved with scheduler {sched and sched['class']}, got "
                         f"{type(scheduler).__name__ if scheduler else None}")
    model._check_state(msd)
    optimizer._check_state(osd)
    if scheduler is not None and set(sched["state"]) != set(scheduler.state_dict()):
        raise ValueError(f"{path}: the saved {sched['class']} state does not match")
    model.load_state_dict(msd)
    optimizer.load_state_dict(osd)
    if scheduler is not None:
        scheduler.load_state_dict(sched["state"])
    _init.default_generator().bit_generator.state = ck["rng"]
    for name, m in _dropouts(model):
        if name in ck["dropout"]:
            m.generator = np.random.default_rng()
            m.generator.bit_generator.state = ck["dropout"][name]
    return {"epoch": ck["epoch"], "extra": ck["extra"]}
