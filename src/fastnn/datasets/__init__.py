"""Data sets: the bundled 8x8 digits, and MNIST-style files the user has.

    X, y = fn.datasets.load_digits()                          # (1797, 64) float32, int64
    X, y = fn.datasets.load_digits(images=True)               # (1797, 1, 8, 8)
    (x_train, y_train), (x_test, y_test) = fn.datasets.load_fashion_mnist()  # (60000, 1, 28, 28)
    (x_train, y_train), (x_test, y_test) = fn.datasets.load_mnist("path/to/mnist")
"""
import gzip
import os
import struct

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))


def load_digits(images=False):
    """The UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin & Kaynak 1998,
    CC BY 4.0; see datasets/data/README.md): X float32 (1797, 64), pixel counts 0..16 of
    8x8 images row by row; y int64 (1797,) labels 0..9. images=True: X as NCHW images
    (1797, 1, 8, 8) for convolutional models."""
    with gzip.open(os.path.join(_HERE, "data", "digits.csv.gz"), "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    X = data[:, :-1]
    return (X.reshape(-1, 1, 8, 8) if images else X), data[:, -1].astype(np.int64)


# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/ format)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """An IDX file (plain or .gz) as a numpy array of its stored type and shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read the file ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX file of shape {shape} should have {expected} bytes, "
                         f"has {len(raw)} (truncated or corrupt)")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


_MNIST_FILES = {"x_train": "train-images", "y_train": "train-labels",
                "x_test": "t10k-images", "y_test": "t10k-labels"}


def _find(folder, stem):
    kind = "idx3" if "images" in stem else "idx1"
    for name in (f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"):
        for suffix in ("", ".gz"):
            path = os.path.join(folder, name + suffix)
            if os.path.exists(path):
                return path
    raise FileNotFoundError(f"{folder}: no {stem}-{kind}-ubyte[.gz] file (MNIST needs "
                            f"train-images, train-labels, t10k-images and t10k-labels)")


def load_mnist(path):
    """MNIST (or Fashion-MNIST) as ((x_train, y_train), (x_test, y_test)), as Keras's
    mnist.load_data(): images uint8 (n, 28, 28), labels int64.

    path: a folder with the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each plain or .gz), or an .npz file with
    the arrays x_train, y_train, x_test, y_test.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        arrays = {k: read_idx(_find(path, stem)) for k, stem in _MNIST_FILES.items()}
    elif path.endswith(".npz"):
        with np.load(path) as f:
            missing = [k for k in _MNIST_FILES if k not in f.files]
            if missing:
                raise KeyError(f"{path}: missing arrays {missing} (has {f.files})")
            arrays = {k: f[k] for k in _MNIST_FILES}
    else:
        raise ValueError(f"{path}: expected a folder of IDX files or an .npz file")
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if len(x) != len(y):
            raise ValueError(f"{path}: {len(x)} {part} images but {len(y)} labels")
        arrays[f"y_{part}"] = y.astype(np.int64)
    return ((arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"]))


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"   # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


def load_fashion_mnist(path=None):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, MIT licence): 70,000 28x28 grey images of
    10 clothing classes (names in FASHION_MNIST_CLASSES), as
    ((X_train, y_train), (X_test, y_test)): X float32 (60000 / 10000, 1, 28, 28) NCHW with
    pixels scaled to [0, 1], y int64 labels 0..9.

    path: a folder with the four gzipped IDX files; default FASHION_MNIST_DIR, where
    Debian's package dataset-fashion-mnist puts them (``apt-get install
    dataset-fashion-mnist``). Raises FileNotFoundError naming that package when they are
    absent, ValueError for a corrupt file.
    """
    folder = FASHION_MNIST_DIR if path is None else os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {folder} does not exist. Install Debian's package "
            f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or pass "
            f"path= a folder with its four IDX files")
    try:
        (xtr, ytr), (xte, yte) = load_mnist(folder)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Fashion-MNIST incomplete: {e}. Reinstall Debian's package "
                                f"dataset-fashion-mnist, or pass path=") from None
    for name, x in (("train", xtr), ("test", xte)):
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"{folder}: {name} images of shape {x.shape}, expected "
                             f"(n, 28, 28)")

    def scale(x):
        return (x.astype(np.float32) / np.float32(255.0)).reshape(len(x), 1, 28, 28)
    return (scale(xtr), ytr), (scale(xte), yte)
