"""Saving and loading models and training checkpoints (safetensors files).

``fastnn.save(model, path)`` writes the parameters as tensors named like the state_dict
("0.weight") and the architecture as JSON in the file's metadata; ``fastnn.load(path)``
rebuilds the model from it (built-in layers only: for a model with your own layer classes,
build it and call ``fastnn.load(path, model=model)``). ``load(path, model=model)`` also reads
plain safetensors files written by other tools (e.g. ``safetensors.torch.save_file(
torch_model.state_dict(), path)``) when the tensor names and shapes match.

``save_checkpoint`` also stores the optimizer (options, step counts, buffers), a scheduler's
state, the epoch, ``extra`` (anything JSON-serialisable), the global generator's state and
the Dropout generators' states; ``load_checkpoint`` restores them all, so that::

    fn.fit(model, loss, opt, X, y, epochs=k, seed=0, scheduler=sched)
    fn.save_checkpoint("ck.safetensors", model, opt, sched, epoch=k)
    ...                                     # later: rebuild model, opt and sched, then
    state = fn.load_checkpoint("ck.safetensors", model, opt, sched)
    fn.fit(model, loss, opt, X, y, epochs=n, initial_epoch=state["epoch"], seed=0,
           scheduler=sched)

gives the weights of one n-epoch fit, bit for bit.

Files cannot lie:

- Loading reads the safetensors header first and checks it completely (sizes, offsets,
  dtypes), then checks the architecture (or the model given) against the tensors' names,
  shapes and dtypes, all before any tensor is read or any layer is built; a header that
  claims ``Linear(12000, 12000)`` over a few bytes of data fails at once. Tensors are then
  read one at a time into their own arrays (no copy of the whole file in memory).
- Files written by fastnn hold a CRC-32 of every tensor and of the metadata (metadata key
  "checksums"); load verifies them and raises ValueError naming the tensor whose data
  changed. Files without checksums (fastnn's version-1 files, files from other tools) load
  unverified.
- Every corrupt or truncated file raises ValueError (a file of a layer class that is not
  built in raises TypeError: pass ``model=``).
- ``load_checkpoint`` checks every field (tensors, optimizer, scheduler, generators, epoch)
  before it changes the model, the optimizer, the scheduler or any generator.

Files are written atomically: into an anonymous file (``O_TMPFILE``) of the target's folder
where the OS has it, else a hidden temporary file ``.NAME.PID.RANDOM.tmp`` there, flushed,
fsynced, then renamed over the target, so a failed or killed save leaves the previous file
intact. A SIGTERM that arrives during a save (in the main thread) aborts it, removes the
temporary file, and is then delivered to the handler that was installed before. Temporary
files left by a killed process (SIGKILL) are removed by the next save to the same path. A new
file gets the mode the umask gives (as ``open`` does); an existing file keeps its mode; a
symbolic link keeps pointing where it did, and its target is replaced.
"""
import functools
import json
import math
import os
import re
import secrets
import signal
import struct
import threading
import zlib

import numpy as np

from . import init as _init
from .nn import LAYERS, Dropout, Sequential

_MODEL, _CHECKPOINT = "fastnn-model", "fastnn-checkpoint"
_VERSION = "2"          # version 1: no checksums
_CHUNK = 1 << 20
_MAX_HEADER = 100_000_000  # bytes, as the safetensors library
_MAX_DEPTH = 64            # nesting of Sequential models in an architecture
_USE_O_TMPFILE = hasattr(os, "O_TMPFILE")

# safetensors dtype names -> numpy (little-endian); others (BF16, F8...) cannot be read here
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
           "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_NAMES = {np.dtype(v).newbyteorder("<"): k for k, v in _DTYPES.items()}
_KNOWN = set(_DTYPES) | {"BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2",
                         "C64"}
_ITEMSIZE = {"BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "C64": 8}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


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


def _param_specs(arch, where="model", prefix="", depth=0, out=None):
    """{parameter name: (shape, dtype)} that the architecture arch builds, checked without
    building anything (ValueError on a malformed description)."""
    out = {} if out is None else out
    if depth > _MAX_DEPTH:
        raise ValueError(f"architecture nested deeper than {_MAX_DEPTH} levels ({where})")
    if not isinstance(arch, dict) or not isinstance(arch.get("class"), str):
        raise ValueError(f"architecture: expected an object with a 'class' name ({where}), "
                         f"got {_short(arch)}")
    if arch.get("custom") is True:
        raise TypeError(f"fastnn.load cannot rebuild layer class {arch['class']!r} ({where}): "
                        f"it is not a built-in fastnn layer. Build the model yourself and "
                        f"pass it: fastnn.load(path, model=model)")
    cls = LAYERS.get(arch["class"])
    if cls is None:
        raise ValueError(f"fastnn.load: unknown layer class {arch['class']!r} ({where})")
    config = arch.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"architecture: {arch['class']} ({where}) has no 'config' object")
    if cls is Sequential:
        layers = arch.get("layers")
        if not isinstance(layers, list):
            raise ValueError(f"architecture: Sequential ({where}) has no 'layers' list")
        if config:
            raise ValueError(f"bad arguments for Sequential ({where}): {sorted(config)}")
        for i, a in enumerate(layers):
            _param_specs(a, f"layer {i}" if depth == 0 else f"{where}.{i}",
                         f"{prefix}{i}.", depth + 1, out)
    elif arch["class"] == "Linear":
        unknown = set(config) - {"in_features", "out_features", "bias", "dtype"}
        n_in, n_out = config.get("in_features"), config.get("out_features")
        bias, dtype = config.get("bias", True), config.get("dtype", "float32")
        if unknown or not (_is_int(n_in) and _is_int(n_out) and n_in >= 1 and n_out >= 1) \
                or not isinstance(bias, bool) or dtype not in ("float32", "float64"):
            raise ValueError(f"fastnn.load: bad arguments for Linear ({where}): "
                             f"{_short(config)} (unknown {sorted(unknown)})" if unknown else
                             f"fastnn.load: bad arguments for Linear ({where}): "
                             f"{_short(config)}")
        out[prefix + "weight"] = ((n_out, n_in), np.dtype(dtype))
        if bias:
            out[prefix + "bias"] = ((n_out,), np.dtype(dtype))
    elif arch["class"] == "Conv2d":
        try:   # the layer checks its own arguments; its parameter shapes follow from them
            layer = cls(**dict(config, init="zeros"))
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"fastnn.load: bad arguments for Conv2d ({where}): {e}") from None
        for name, p in layer.named_parameters():
            out[prefix + name] = (p.shape, p.dtype)
    elif arch["class"] in ("BatchNorm1d", "BatchNorm2d", "LayerNorm"):
        # parameters and running statistics of the layer its config builds (draws nothing)
        layer = _rebuild(arch, where)
        for k, v in _state_items(layer):
            out[prefix + k] = (v.shape, v.dtype)
    return out


def _state_items(model):
    """(name, array) of the parameters and the buffers (running statistics) of a model: the
    tensors of its file."""
    return list(model.named_parameters()) + list(model.named_buffers())


def _rebuild(arch, where="model"):
    """The model of a description checked by _param_specs."""
    cls = LAYERS[arch["class"]]
    if cls is Sequential:
        return Sequential(*(_rebuild(a, f"layer {i}") for i, a in enumerate(arch["layers"])))
    config = dict(arch["config"])
    if arch["class"] in ("Linear", "Conv2d"):
        config["init"] = "zeros"  # the weights are loaded next; draw no random numbers
    try:
        return cls(**config)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"fastnn.load: bad arguments for {arch['class']} ({where}): "
                         f"{e}") from None


def _short(value, n=80):
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


# ---- reading ---------------------------------------------------------------------------------

class _File:
    """A safetensors file whose header has been read and checked: ``index`` maps each tensor's
    name to (numpy dtype or None, shape, begin, end) and ``meta`` is the metadata (str -> str).
    Tensor data is read on demand, one tensor at a time."""

    def __init__(self, path):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise self.error("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if not 2 <= n <= min(_MAX_HEADER, self.size - 8):
                raise self.error(f"its header length {n} does not fit the file of "
                                 f"{self.size} bytes")
            raw = f.read(n)
        self.start = 8 + n
        try:
            header = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:   # UnicodeDecodeError is a ValueError
            raise self.error(f"its header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise self.error("its header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in meta.items()):
            raise self.error("its __metadata__ is not an object of strings")
        self.meta, self.index, self.crcs = meta, {}, None
        spans = []
        for name, t in header.items():
            dtype, shape, offsets = self._entry(name, t)
            self.index[name] = (dtype, shape, *offsets)
            spans.append(offsets)
        spans.sort()
        pos = 0
        for b, e in spans:
            if b != pos:
                raise self.error("its tensors overlap or leave holes in the data")
            pos = e
        if pos != self.size - self.start:
            raise self.error(f"its tensors cover {pos} bytes of data, the file holds "
                             f"{self.size - self.start} (truncated or padded)")

    def error(self, what):
        return ValueError(f"{self.path}: not a valid safetensors file (corrupt or truncated: "
                          f"{what})")

    def _entry(self, name, t):
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise self.error(f"tensor {name!r} is not described by dtype, shape and "
                             f"data_offsets")
        code, shape, offsets = t["dtype"], t["shape"], t["data_offsets"]
        if not isinstance(code, str) or code not in _KNOWN:
            raise self.error(f"tensor {name!r} has an unknown dtype {_short(code)}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape) \
                or len(shape) > 64:
            raise self.error(f"tensor {name!r} has a bad shape {_short(shape)}")
        if not isinstance(offsets, list) or len(offsets) != 2 \
                or not all(_is_int(o) for o in offsets) or not 0 <= offsets[0] <= offsets[1]:
            raise self.error(f"tensor {name!r} has bad data_offsets {_short(offsets)}")
        dtype = np.dtype(_DTYPES[code]) if code in _DTYPES else None
        itemsize = dtype.itemsize if dtype is not None else _ITEMSIZE.get(code)
        if itemsize is not None and math.prod(shape) * itemsize != offsets[1] - offsets[0]:
            raise self.error(f"tensor {name!r} of shape {tuple(shape)} and dtype {code} does "
                             f"not fit its {offsets[1] - offsets[0]} bytes")
        return dtype, tuple(shape), tuple(offsets)

    # -- fastnn metadata --
    def fastnn_format(self):
        """_MODEL, _CHECKPOINT or None (another writer); checks the version and checksums."""
        fmt = self.meta.get("format")
        if fmt not in (_MODEL, _CHECKPOINT):
            return None
        version = self.meta.get("version")
        if version not in ("1", _VERSION):
            raise ValueError(f"{self.path}: unknown fastnn file version {_short(version)} "
                             f"(expected '1' or '{_VERSION}')")
        if version != "1":
            try:
                sums = json.loads(self.meta["checksums"])
                crcs = sums["tensors"]
                meta_crc = sums["metadata"]
                ok = isinstance(crcs, dict) and set(crcs) == set(self.index) and all(
                    isinstance(v, str) and re.fullmatch("[0-9a-f]{8}", v)
                    for v in (*crcs.values(), meta_crc))
            except (KeyError, TypeError, ValueError, RecursionError):
                ok = False
            if not ok:
                raise ValueError(f"{self.path}: corrupt fastnn file: its 'checksums' metadata "
                                 f"is missing or malformed")
            if meta_crc != _meta_crc(self.meta):
                raise ValueError(f"{self.path}: checksum mismatch in the metadata (the file "
                                 f"is corrupt)")
            self.crcs = crcs
        return fmt

    def json(self, key, what):
        try:
            return json.loads(self.meta[key])
        except (KeyError, ValueError, RecursionError) as e:
            raise ValueError(f"{self.path}: corrupt {what} metadata ({type(e).__name__}: "
                             f"{_short(str(e))})") from None

    # -- tensors --
    def check(self, specs, prefix="", what="the model"):
        """Raise ValueError unless the tensors named prefix + name are exactly specs
        ({name: (shape, dtype)})."""
        names = {k[len(prefix):] for k in self.index if k.startswith(prefix)}
        missing, unexpected = sorted(set(specs) - names), sorted(names - set(specs))
        if missing or unexpected:
            raise ValueError(f"{self.path}: the tensors do not match {what}: missing "
                             f"{missing}, unexpected {unexpected}")
        for name, (shape, dtype) in specs.items():
            self.check_one(prefix + name, shape, dtype, what)

    def check_one(self, name, shape, dtype, what):
        have, have_shape = self.index[name][:2]
        if tuple(have_shape) != tuple(shape):
            raise ValueError(f"{self.path}: tensor '{name}' has shape {tuple(have_shape)}, "
                             f"{what} expects {tuple(shape)}")
        if have is None or have.newbyteorder("=") != np.dtype(dtype):
            raise ValueError(f"{self.path}: tensor '{name}' has dtype {self.code(name)}, "
                             f"{what} expects {np.dtype(dtype)}")

    def code(self, name):
        dtype = self.index[name][0]
        return _NAMES.get(dtype, "?") if dtype is not None else "unsupported"

    def read(self, names, into=None):
        """{name: array} of these tensors, checksums verified: new native-order arrays, or
        with into= ({name: C-contiguous array of the tensor's shape and native dtype}) the
        data is read straight into those arrays (no other copy is made)."""
        out = {}
        with open(self.path, "rb") as f:
            for name in names:
                dtype, shape, b, e = self.index[name]
                if dtype is None:
                    raise ValueError(f"{self.path}: tensor {name!r} has a dtype numpy cannot "
                                     f"read")
                a = np.empty(shape, dtype.newbyteorder("=")) if into is None else into[name]
                raw = a.reshape(-1).view(np.uint8)
                f.seek(self.start + b)
                if raw.size and f.readinto(raw) != raw.size:
                    raise self.error(f"tensor {name!r} is cut short")
                if self.crcs is not None and f"{zlib.crc32(raw):08x}" != self.crcs[name]:
                    raise ValueError(f"{self.path}: checksum mismatch in tensor {name!r}: its "
                                     f"data is corrupt")
                if not dtype.isnative and dtype.itemsize > 1:   # a big-endian machine
                    a.byteswap(inplace=True)
                out[name] = a
        return out


def _meta_crc(meta):
    rest = {k: v for k, v in meta.items() if k != "checksums"}
    return f"{zlib.crc32(json.dumps(rest, sort_keys=True).encode()):08x}"


def _open(path, kind):
    """A checked _File of this kind of fastnn file."""
    f = _File(path)
    fmt = f.fastnn_format()
    if fmt is None:
        raise ValueError(f"{f.path}: a safetensors file, but not one written by fastnn "
                         f"(to read its tensors into a model you built: "
                         f"fastnn.load(path, model=model))")
    if kind == _CHECKPOINT and fmt != _CHECKPOINT:
        raise ValueError(f"{f.path}: a fastnn model file, not a checkpoint (use fastnn.load)")
    return f


# ---- writing ---------------------------------------------------------------------------------

def _header(tensors, metadata):
    """The safetensors header bytes (padded to 8) and the metadata with checksums."""
    index, pos, crcs = {}, 0, {}
    for name, a in tensors.items():
        code = _NAMES.get(a.dtype.newbyteorder("<"))
        if code is None:
            raise TypeError(f"save: tensor {name!r} has dtype {a.dtype}, which safetensors "
                            f"cannot store")
        index[name] = {"dtype": code, "shape": list(a.shape),
                       "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
        crcs[name] = f"{zlib.crc32(a.reshape(-1).view(np.uint8)):08x}"
    meta = dict(metadata, version=_VERSION)
    meta["checksums"] = json.dumps({"metadata": _meta_crc(meta), "tensors": crcs})
    text = json.dumps({"__metadata__": meta, **index}, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)


def _write(path, tensors, metadata):
    # reshape: np.ascontiguousarray turns a 0-d array (num_batches_tracked) into shape (1,)
    tensors = {k: np.ascontiguousarray(v).reshape(np.shape(v))
               .astype(np.asarray(v).dtype.newbyteorder("<"), copy=False)
               for k, v in tensors.items()}
    header = _header(tensors, metadata)

    def write(f):
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for a in tensors.values():
            raw = a.reshape(-1).view(np.uint8)
            for i in range(0, raw.size, _CHUNK):
                f.write(raw[i:i + _CHUNK])

    _atomic_write(path, write)


_TMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{16}\.tmp\Z")
_active = set()  # temporary files this process is writing now
_active_lock = threading.Lock()


def _remove_stale(folder, base):
    """Remove temporary files of earlier saves to folder/base whose process is gone."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _TMP.match(name)
        if not m or m["name"] != base:
            continue
        full = os.path.join(folder, name)
        pid = int(m["pid"])
        with _active_lock:
            if full in _active:
                continue
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue          # that process lives: maybe it is saving right now
            except ProcessLookupError:
                pass
            except (PermissionError, OverflowError):
                continue
        try:
            os.unlink(full)
        except OSError:
            pass


class _Interrupted(BaseException):
    """Raised inside a save by its SIGTERM handler."""


class _SigtermGuard:
    """In the main thread, between arm() and disarm(), SIGTERM raises _Interrupted (so the save
    cleans up); disarm() restores the previous handler and, if the signal came, delivers it
    there (the default handler ends the process) and raises InterruptedError if it returns."""

    def __init__(self):
        self.previous, self.got, self.armed = None, False, False
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is None or previous is signal.SIG_IGN:   # set outside Python, or ignored
            return

        def handler(signum, frame):
            self.got = True
            if self.armed:
                raise _Interrupted()

        self.previous = previous
        signal.signal(signal.SIGTERM, handler)

    def arm(self):
        self.armed = True
        if self.got:                 # it came while the handler was being installed
            raise _Interrupted()

    def disarm(self):
        self.armed = False
        if self.previous is None:
            return
        signal.signal(signal.SIGTERM, self.previous)
        if self.got:
            signal.raise_signal(signal.SIGTERM)   # the previous handler's turn (default: exit)
            raise InterruptedError("save was interrupted by SIGTERM; the previous file (if "
                                   "any) is unchanged") from None


@functools.lru_cache(maxsize=1)
def _libc_linkat():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.linkat
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_int]
        return fn
    except (OSError, AttributeError, ImportError):
        return None


def _link_anonymous(fd, dest):
    """Give the O_TMPFILE file fd the name dest; False if the OS refuses."""
    linkat = _libc_linkat()
    if linkat is None:
        return False
    at_fdcwd, at_empty_path, at_symlink_follow = -100, 0x1000, 0x400
    if linkat(fd, b"", at_fdcwd, os.fsencode(dest), at_empty_path) == 0:
        return True
    return linkat(at_fdcwd, os.fsencode(f"/proc/self/fd/{fd}"), at_fdcwd, os.fsencode(dest),
                  at_symlink_follow) == 0


def _atomic_write(path, write):
    """Call write(file) on a temporary file in path's folder, then rename it over path."""
    path = os.path.realpath(os.fspath(path))   # a symlink: replace its target, keep the link
    folder, base = os.path.split(path)
    try:
        mode = os.stat(path).st_mode & 0o7777    # an existing file keeps its mode
    except FileNotFoundError:
        mode = None
    _remove_stale(folder, base)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    with _active_lock:
        _active.add(tmp)
    named, fd = False, None
    guard = _SigtermGuard()
    try:
        guard.arm()
        if _USE_O_TMPFILE:
            try:
                fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666)
            except OSError:
                fd = None          # the file system has no O_TMPFILE
        if fd is None:
            named = True           # set first: a signal may come between open and here
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666)
        f, fd = os.fdopen(fd, "wb"), None       # f owns the descriptor now
        with f:
            write(f)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
            if not named:
                named = True
                if not _link_anonymous(f.fileno(), tmp):
                    _copy_to_named(f.fileno(), tmp)
        os.replace(tmp, path)
        named = False
        _fsync_folder(folder)
    except BaseException:
        if fd is not None:
            os.close(fd)
        if named:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    finally:
        with _active_lock:
            _active.discard(tmp)
        guard.disarm()


def _copy_to_named(fd, dest):
    """Copy the anonymous file fd into a new file dest (when linkat is refused)."""
    size = os.fstat(fd).st_size
    out = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666)
    try:
        os.fchmod(out, os.fstat(fd).st_mode & 0o7777)
        pos = 0
        while pos < size:
            pos += os.copy_file_range(fd, out, size - pos, pos, pos) if hasattr(
                os, "copy_file_range") else os.sendfile(out, fd, pos, size - pos)
        os.fsync(out)
    except BaseException:
        os.close(out)
        os.unlink(dest)
        raise
    os.close(out)


def _fsync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- models ----------------------------------------------------------------------------------

def save(model, path, preprocess=None, input_shape=None):
    """Save the model's parameters and architecture to path (safetensors, atomic, with
    checksums). path: a str or os.PathLike; a symbolic link's target is replaced.

    preprocess: a fastnn.Preprocess (the standardizer's mean and scale, the class labels, the
    task, the feature names), stored as JSON in the metadata key "preprocess" (the tensors
    stay the state_dict); default: the model's own ``model.preprocess`` if it has one (a
    model from fastnn.load keeps its preprocessing when saved again). TypeError if it is not
    a Preprocess.

    input_shape: the shape of one sample, (features,) or (C, H, W), stored as the JSON list
    in the metadata key "input_shape" (the C API needs it to run a convolutional network);
    default: the shape of the samples the model last saw in fit or predict (or that its file
    recorded), none when unknown. ValueError if it is not 1 or 3 positive ints.
    """
    from .data import Preprocess

    if preprocess is None:
        preprocess = getattr(model, "preprocess", None)
    if preprocess is not None and not isinstance(preprocess, Preprocess):
        raise TypeError(f"save: preprocess must be a fastnn.Preprocess or None, got "
                        f"{type(preprocess).__name__}")
    meta = {"format": _MODEL, "architecture": json.dumps(architecture(model))}
    shape = _input_shape(getattr(model, "_input_shape", None) if input_shape is None
                         else input_shape, "save: input_shape")
    if shape is not None:
        meta["input_shape"] = json.dumps(list(shape))
    if preprocess is not None:
        meta["preprocess"] = json.dumps(preprocess.to_dict())
    _write(path, model.state_dict(), meta)


def load(path, model=None):
    """The model saved at path (a model file or a checkpoint).

    With model=, load the weights into that model instead of rebuilding it (needed for
    user-defined layers); then any safetensors file whose tensors have the model's
    state_dict names, shapes and dtypes loads (e.g. one written from PyTorch). The
    preprocessing saved with it (``save(..., preprocess=)``) comes back as
    ``model.preprocess`` (a fastnn.Preprocess; None when the file has none).

    Raises ValueError for a corrupt, truncated or foreign file, a checksum mismatch, or
    tensors that do not match the architecture or model (checked before anything is built
    or read); TypeError when the architecture holds a layer class that is not built in.
    """
    f = _File(path)
    fmt = f.fastnn_format()
    if fmt is None and model is None:
        raise ValueError(f"{f.path}: a safetensors file, but not one written by fastnn "
                         f"(to read its tensors into a model you built: "
                         f"fastnn.load(path, model=model))")
    prefix = "model." if fmt == _CHECKPOINT else ""
    preprocess = _preprocess(f.meta, f.path)   # checked before anything is built or read
    if model is None:
        arch = f.json("architecture", "architecture")
        try:
            specs = _param_specs(arch)
        except ValueError as e:
            raise ValueError(f"{f.path}: corrupt architecture metadata: {e}") from None
        f.check(specs, prefix, "its architecture")
        model = _rebuild(arch)   # a new model: the data goes straight into its parameters
        f.read([prefix + k for k in specs],
               into={prefix + k: p for k, p in _state_items(model)})
        model.preprocess = preprocess
        model._input_shape = _saved_input_shape(f.meta, f.path)
        return model
    specs = {k: (p.shape, p.dtype) for k, p in _state_items(model)}
    f.check(specs, prefix, "the model")
    tensors = f.read([prefix + k for k in specs])   # all verified before the model changes
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()})
    if preprocess is not None or not hasattr(model, "preprocess"):
        model.preprocess = preprocess      # a user's own preprocess stays when the file has none
    return model


def _input_shape(shape, what):
    """shape as a tuple of 1 or 3 ints >= 1 (None stays None); ValueError naming what."""
    if shape is None:
        return None
    try:
        items = tuple(shape)
    except TypeError:
        items = None
    if items is None or len(items) not in (1, 3) or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in items):
        raise ValueError(f"{what} must be (features,) or (C, H, W), ints >= 1, got {shape!r}")
    return tuple(int(v) for v in items)


def _saved_input_shape(meta, path):
    if "input_shape" not in meta:
        return None
    try:
        return _input_shape(json.loads(meta["input_shape"]), "input_shape")
    except (ValueError, TypeError) as e:
        raise ValueError(f"{os.fspath(path)}: corrupt input_shape metadata ({e})") from None


def _preprocess(meta, path):
    from .data import Preprocess

    if "preprocess" not in meta:
        return None
    try:
        return Preprocess.from_dict(json.loads(meta["preprocess"]))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ValueError(f"{os.fspath(path)}: corrupt preprocess metadata ({e!r})") from None


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
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_checkpoint: extra must be JSON-serialisable ({e})") from None
    meta = {"format": _CHECKPOINT, "checkpoint": text,
            "architecture": json.dumps(architecture(model))}
    shape = _input_shape(getattr(model, "_input_shape", None), "input_shape")
    if shape is not None:      # for the C API, as save writes it
        meta["input_shape"] = json.dumps(list(shape))
    _write(path, tensors, meta)


def _same_kind(saved, current):
    """Whether a JSON value can stand for current (a scheduler's state entry)."""
    if isinstance(current, bool) or current is None or isinstance(current, str):
        return type(saved) is type(current)
    if _is_int(current) or isinstance(current, float):   # lr=1 then 0.5: numbers alike
        return _is_int(saved) or isinstance(saved, float)
    if isinstance(current, (list, tuple)):
        return isinstance(saved, list) and len(saved) == len(current) and all(
            _same_kind(s, c) for s, c in zip(saved, current))
    if isinstance(current, dict):
        return isinstance(saved, dict) and set(saved) == set(current) and all(
            _same_kind(saved[k], current[k]) for k in current)
    return False


def _generator_from(state, what):
    """A new Generator in this bit-generator state (ValueError when it is not one)."""
    try:
        if not isinstance(state, dict) or not isinstance(state.get("bit_generator"), str):
            raise ValueError("not a bit-generator state")
        bits = getattr(np.random, state["bit_generator"], None)
        if not (isinstance(bits, type) and issubclass(bits, np.random.BitGenerator)):
            raise ValueError(f"unknown bit generator {_short(state['bit_generator'])}")
        g = np.random.Generator(bits())
        g.bit_generator.state = state
        return g
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError,
            NotImplementedError) as e:
        raise ValueError(f"{what} is not a valid generator state ({e})") from None


def load_checkpoint(path, model, optimizer, scheduler=None):
    """Restore what save_checkpoint saved into model, optimizer and scheduler (built as for
    the saved run). Returns {"epoch", "extra"}.

    Every field is checked before anything changes: on any ValueError the model, the
    optimizer, the scheduler and the generators are as they were. Raises ValueError for a
    corrupt or truncated file, a checksum mismatch, or a checkpoint of another model,
    optimizer or scheduler.
    """
    f = _open(path, _CHECKPOINT)
    p = f.path
    ck = f.json("checkpoint", "checkpoint")

    def bad(field, why):
        return ValueError(f"{p}: corrupt fastnn checkpoint: {field} {why}")

    if not isinstance(ck, dict) or not {"epoch", "extra", "optimizer", "scheduler", "rng",
                                        "dropout"} <= set(ck):
        raise bad("the checkpoint", "is not an object with epoch, extra, optimizer, "
                                    "scheduler, rng and dropout")
    epoch = ck["epoch"]
    if epoch is not None and not (_is_int(epoch) and epoch >= 0):
        raise bad("epoch", f"must be null or an int >= 0, got {_short(epoch)}")

    # optimizer
    opt = ck["optimizer"]
    if not isinstance(opt, dict) or not isinstance(opt.get("class"), str) \
            or not isinstance(opt.get("param_groups"), list) \
            or not isinstance(opt.get("steps"), dict):
        raise bad("optimizer", "is not an object with class, param_groups and steps")
    if opt["class"] != type(optimizer).__name__:
        raise ValueError(f"{p}: saved with a {opt['class']} optimizer, got "
                         f"{type(optimizer).__name__}")
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    steps = {}
    for i, s in opt["steps"].items():
        if not (re.fullmatch(r"\d{1,9}", i) and int(i) < n_params and _is_int(s) and s >= 1):
            raise bad("optimizer", f"step count {_short(i)}: {_short(s)} is not a parameter "
                                   f"index and a count >= 1")
        steps[int(i)] = s
    groups = opt["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"{p}: the saved optimizer has {len(groups)} parameter groups, this "
                         f"one {len(optimizer.param_groups)}")
    for g, mine in zip(groups, optimizer.param_groups):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list) \
                or not all(_is_int(i) for i in g["params"]):
            raise bad("optimizer", "param_groups are not objects with a list of indices")
        options = {k: tuple(v) if isinstance(v, list) else v
                   for k, v in g.items() if k != "params"}
        for k, v in g.items():
            if k in mine and k not in ("params", "initial_lr") and not _same_kind(v, mine[k]):
                raise bad("optimizer", f"option {k!r} is {_short(v)}, expected a value like "
                                       f"{mine[k]!r}")
        if "initial_lr" in options and not (isinstance(options["initial_lr"], (int, float))
                                            and not isinstance(options["initial_lr"], bool)):
            raise bad("optimizer", f"option 'initial_lr' is {_short(options['initial_lr'])}")
        try:
            optimizer._check({**mine, **options})
        except (TypeError, ValueError) as e:
            raise bad("optimizer", f"options: {e}") from None

    # tensors: names, shapes and dtypes before reading any data
    specs = {k: (q.shape, q.dtype) for k, q in _state_items(model)}
    f.check(specs, "model.", "the model")
    members = [q for g in optimizer.param_groups for q in g["params"]]
    allowed = getattr(optimizer, "_state_names", None)
    opt_names = [k for k in f.index if k.startswith("optimizer.")]
    extra_names = [k for k in f.index if not k.startswith(("model.", "optimizer."))]
    if extra_names:
        raise bad("tensors", f"unexpected tensors {extra_names[:5]}")
    ostate = {i: {"step": s} for i, s in steps.items()}
    for k in opt_names:
        m = re.fullmatch(r"optimizer\.(\d{1,9})\.(\w+)", k)
        i = int(m[1]) if m else -1
        if not m or i not in steps or (allowed is not None and m[2] not in allowed):
            raise bad("tensors", f"{k!r} is not a state buffer of a stepped parameter of "
                                 f"{type(optimizer).__name__}")
        f.check_one(k, members[i].shape, members[i].dtype, "the optimizer")
        ostate[i][m[2]] = k
    osd = {"param_groups": groups, "state": ostate}
    try:
        optimizer._check_state({"param_groups": groups,
                                "state": {i: {n: (v if n == "step" else
                                                  np.empty(f.index[v][1], np.uint8))
                                              for n, v in s.items()} for i, s in ostate.items()}})
    except (TypeError, ValueError, KeyError) as e:
        raise bad("optimizer", str(e)) from None

    # scheduler
    sched = ck["scheduler"]
    if sched is not None and (not isinstance(sched, dict) or not isinstance(
            sched.get("class"), str) or not isinstance(sched.get("state"), dict)):
        raise bad("scheduler", "is not null or an object with class and state")
    if (sched is None) != (scheduler is None) or (
            sched and sched["class"] != type(scheduler).__name__):
        raise ValueError(f"{p}: saved with scheduler {sched and sched['class']}, got "
                         f"{type(scheduler).__name__ if scheduler else None}")
    if scheduler is not None and not _same_kind(sched["state"], scheduler.state_dict()):
        raise ValueError(f"{p}: the saved {sched['class']} state does not match this "
                         f"scheduler's (corrupt, or another configuration)")

    # generators
    rng = _generator_from(ck["rng"], f"{p}: rng")
    kind = type(_init.default_generator().bit_generator).__name__
    if ck["rng"]["bit_generator"] != kind:
        raise bad("rng", f"is a {_short(ck['rng']['bit_generator'])} state, the global "
                         f"generator is a {kind}")
    if not isinstance(ck["dropout"], dict):
        raise bad("dropout", "is not an object of generator states")
    names = {name for name, _ in _dropouts(model)}
    unknown = set(ck["dropout"]) - names
    if unknown:
        raise bad("dropout", f"names layers the model does not have: {sorted(unknown)[:5]}")
    dropout = {name: _generator_from(s, f"{p}: dropout state of layer {name!r}")
               for name, s in ck["dropout"].items()}

    # data (checksums verified) and then, with everything checked, the changes
    tensors = f.read([k for k in f.index])
    msd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    for s in osd["state"].values():
        for n in list(s):
            if n != "step":
                s[n] = tensors[s[n]]
    model.load_state_dict(msd)
    optimizer.load_state_dict(osd)
    if scheduler is not None:
        scheduler.load_state_dict(sched["state"])
    _init.default_generator().bit_generator.state = rng.bit_generator.state
    for name, m in _dropouts(model):
        if name in dropout:
            m.generator = dropout[name]
    return {"epoch": epoch, "extra": ck["extra"]}
