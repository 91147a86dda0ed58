"""Data helpers: splitting, standardising, one-hot labels and mini-batches."""
import numpy as np

from . import init as _init


def _count(size, n, name):
    """A split size given as a fraction in [0, 1) or a count, as a count of n samples."""
    if isinstance(size, (float, np.floating)) and 0.0 <= size < 1.0:
        return int(round(size * n))
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and 0 <= size < n:
        return int(size)
    raise ValueError(f"{name} must be a fraction in [0, 1) or a count in [0, {n}), got {size!r}")


def train_val_test_split(X, y, val_size=0.1, test_size=0.1, seed=None, stratify=False):
    """Shuffle and split into ((X_train, y_train), (X_val, y_val), (X_test, y_test)).

    Sizes are fractions of the samples or counts. stratify=True keeps each class's share of
    y in every split (y must hold class labels). seed: numpy seed (None: global generator).
    """
    X, y = np.asarray(X), np.asarray(y)
    n = len(X)
    if len(y) != n:
        raise ValueError(f"X and y have different lengths: {n} and {len(y)}")
    n_val, n_test = _count(val_size, n, "val_size"), _count(test_size, n, "test_size")
    if n_val + n_test >= n:
        raise ValueError(f"val_size + test_size leave no training samples ({n_val} + "
                         f"{n_test} of {n})")
    rng = _init.generator(seed)
    if not stratify:
        order = rng.permutation(n)
        parts = [order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]]
    else:
        parts = [[], [], []]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            v, t = int(round(len(idx) * n_val / n)), int(round(len(idx) * n_test / n))
            for part, chunk in zip(parts, (idx[v + t:], idx[:v], idx[v:v + t])):
                part.append(chunk)
        parts = [rng.permutation(np.concatenate(p)) for p in parts]
    return tuple((X[p], y[p]) for p in parts)


class Standardizer:
    """Scale each feature to zero mean and unit variance: ``fit`` on the training split only,
    then ``transform`` any split. Features with zero variance are only centred (they become
    0). The output keeps the input's float dtype."""

    def __init__(self):
        self.mean_ = self.scale_ = None

    def fit(self, X):
        X = np.asarray(X)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"Standardizer.fit: expected a non-empty 2-D array, got shape "
                             f"{X.shape}")
        self.mean_ = X.mean(axis=0, dtype=np.float64)
        std = X.std(axis=0, dtype=np.float64)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def _check(self, X):
        if self.mean_ is None:
            raise RuntimeError("Standardizer: call fit(X_train) first")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != len(self.mean_):
            raise ValueError(f"Standardizer: expected shape (n, {len(self.mean_)}), got "
                             f"{X.shape}")
        return X, (X.dtype if X.dtype.kind == "f" else np.float32)

    def transform(self, X):
        X, dt = self._check(X)
        return ((X - self.mean_) / self.scale_).astype(dt)

    def inverse_transform(self, X):
        X, dt = self._check(X)
        return (X * self.scale_ + self.mean_).astype(dt)

    def fit_transform(self, X):
        return self.fit(X).transform(X)


def one_hot(labels, num_classes=None, dtype=np.float32):
    """(n,) integer labels -> (n, num_classes) rows of zeros with a one at the label."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise TypeError(f"one_hot: labels must be a 1-D integer array, got {labels.dtype} "
                        f"{labels.shape}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(f"one_hot: labels must be in [0, {num_classes}), got "
                         f"{labels[bad[0]]} at index {bad[0]}")
    out = np.zeros((len(labels), num_classes), dtype=dtype)
    out[np.arange(len(labels)), labels] = 1
    return out


def batches(X, y=None, batch_size=32, shuffle=False, seed=None):
    """Yield (X_batch, y_batch) (or X_batch when y is None) of batch_size samples (the last may
    be smaller), in order or by a seeded permutation; one gather per batch."""
    X = np.asarray(X)
    if y is not None and len(y) != len(X):
        raise ValueError(f"X and y have different lengths: {len(X)} and {len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    order = _init.generator(seed).permutation(len(X)) if shuffle else None
    return _batches(X, None if y is None else np.asarray(y), batch_size, order)


def _batches(X, y, batch_size, order):
    for start in range(0, len(X), batch_size):
        idx = slice(start, start + batch_size) if order is None \
            else order[start:start + batch_size]
        yield X[idx] if y is None else (X[idx], y[idx])
