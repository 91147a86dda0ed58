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


def _approximate_mode(counts, draws, rng):
    """How many of `draws` samples to take from each class of `counts` so that the shares are
    as close as possible to the classes' shares, ties broken at random (scikit-learn's
    _approximate_mode, as used by its stratified splits); the sum is exactly `draws`."""
    continuous = counts * (draws / counts.sum())
    taken = np.floor(continuous).astype(np.int64)
    need = draws - int(taken.sum())
    remainder = continuous - taken
    for value in np.sort(np.unique(remainder))[::-1]:
        if need <= 0:
            break
        (inds,) = np.nonzero(remainder == value)
        inds = rng.choice(inds, size=min(len(inds), need), replace=False)
        taken[inds] += 1
        need -= len(inds)
    return taken


def _class_labels(y):
    """The class index of each label of a 1-D array of class labels (ValueError otherwise)."""
    if y.ndim != 1:
        raise ValueError(f"stratify=True needs y of 1-D class labels, got shape {y.shape} "
                         f"(for one-hot rows pass y.argmax(axis=1))")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or np.any(y != np.round(y)):
            bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0]
            raise ValueError(f"stratify=True needs y of class labels, got {y[bad].item()!r} at index "
                             f"{bad} (continuous targets cannot be stratified)")
    elif y.dtype.kind not in "iubUSO":
        raise ValueError(f"stratify=True needs y of class labels, got dtype {y.dtype}")
    try:
        return np.unique(y, return_inverse=True)
    except TypeError as e:
        raise ValueError(f"stratify=True needs y of comparable class labels ({e})") from None


def train_val_test_split(X, y, val_size=0.1, test_size=0.1, seed=None, stratify=False):
    """Shuffle and split into ((X_train, y_train), (X_val, y_val), (X_test, y_test)).

    X: an array of n samples (any shape (n, ...)); y: n targets. Sizes are fractions of the
    samples in [0, 1) (rounded to the nearest count) or counts; the splits have exactly
    those sizes, with or without stratify. stratify=True keeps each class's share of y in
    every split as closely as the sizes allow: the test and then the validation samples are
    allotted to the classes as scikit-learn's stratified splits allot them (the nearest
    counts, ties at random), so a split with fewer samples than there are classes lacks some
    classes. y must then be 1-D class labels (integers, strings, or floats without
    fractions). seed: numpy seed (None: global generator).

    Raises ValueError for lengths that differ, sizes out of range or leaving no training
    sample, or (stratify=True) targets that are not 1-D class labels.
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError(f"X and y must be arrays of samples, got shapes {X.shape} and "
                         f"{y.shape}")
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
        _, inverse = _class_labels(y)
        counts = np.bincount(inverse)
        test = _approximate_mode(counts, n_test, rng)
        val = _approximate_mode(counts - test, n_val, rng)
        parts = [[], [], []]
        for c in range(len(counts)):
            idx = rng.permutation(np.flatnonzero(inverse == c))
            v, t = val[c], test[c]
            for part, chunk in zip(parts, (idx[v + t:], idx[:v], idx[v:v + t])):
                part.append(chunk)
        parts = [rng.permutation(np.concatenate(p)) for p in parts]
    return tuple((X[p], y[p]) for p in parts)


class Standardizer:
    """Scale each feature to zero mean and unit variance: ``fit`` on the training split only,
    then ``transform`` any split. The output keeps the input's float dtype (float32 for
    integer input).

    A feature that is constant up to rounding is only centred (scale 1), as scikit-learn's
    StandardScaler does: its variance is at most the rounding error bound of the two-pass
    variance, ``n*eps*var + (n*mean*eps)**2`` (eps of float64), so ``np.full((1000, 1),
    14.62)`` becomes zeros and 14.63 then maps to 0.01, not to 2.8e12.

    fit(X): X of shape (n, features), n >= 1, finite (ValueError otherwise). mean_ and
    scale_ are float64 arrays of shape (features,).
    """

    def __init__(self):
        self.mean_ = self.scale_ = None

    def fit(self, X):
        X = np.asarray(X)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"Standardizer.fit: expected a non-empty 2-D array, got shape "
                             f"{X.shape}")
        if X.dtype.kind not in "fiub":
            raise TypeError(f"Standardizer.fit: expected a numeric array, got dtype {X.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):
            mean = X.mean(axis=0, dtype=np.float64)
            var = X.var(axis=0, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(mean) | ~np.isfinite(var))
        if bad.size:
            raise ValueError(f"Standardizer.fit: feature {bad[0]} contains NaN or Inf (or "
                             f"overflows float64)")
        eps, n = np.finfo(np.float64).eps, len(X)
        constant = var <= n * eps * var + (n * mean * eps) ** 2
        exact = np.all(X == X[:1], axis=0)       # truly constant: centre on the value itself
        self.mean_ = np.where(exact, X[0].astype(np.float64), mean)
        self.scale_ = np.where(constant, 1.0, np.sqrt(var))
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
