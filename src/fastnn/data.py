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
            raise ValueError(f"stratify=True needs y of class labels, got {y[bad].item()!r} at "
                             f"index {bad} (continuous targets cannot be stratified)")
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


class LabelEncoder:
    """Class labels (strings, integers or floats) <-> class indices 0 .. n_classes - 1, as
    scikit-learn's LabelEncoder: ``fit(y)`` stores the sorted distinct labels in
    ``classes_``; ``transform(y)`` gives each label's index (int64); ``inverse_transform(i)``
    gives the labels back. A label not seen by fit raises ValueError naming it and its index.

        enc = fn.LabelEncoder().fit(["cat", "dog", "cat"])   # classes_ ['cat' 'dog']
        enc.transform(["dog"])                                # array([1])
    """

    def __init__(self):
        self.classes_ = None

    @staticmethod
    def _labels(y, where):
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"LabelEncoder.{where}: expected a 1-D array of labels, got "
                             f"shape {y.shape}")
        if y.dtype.kind not in "iufUSOb":
            raise TypeError(f"LabelEncoder.{where}: expected string or numeric labels, got "
                            f"dtype {y.dtype}")
        if y.dtype.kind == "O":
            y = y.astype(str)
        if y.dtype.kind == "f" and np.isnan(y).any():
            raise ValueError(f"LabelEncoder.{where}: labels must not be NaN (index "
                             f"{int(np.flatnonzero(np.isnan(y))[0])})")
        return y

    def fit(self, y):
        y = self._labels(y, "fit")
        if len(y) == 0:
            raise ValueError("LabelEncoder.fit: expected at least one label, got none")
        self.classes_ = np.unique(y)
        return self

    def _check_fitted(self):
        if self.classes_ is None:
            raise RuntimeError("LabelEncoder: call fit(y) first")

    def transform(self, y):
        self._check_fitted()
        y = self._labels(y, "transform")
        if (y.dtype.kind in "US") != (self.classes_.dtype.kind in "US"):
            raise TypeError(f"LabelEncoder.transform: fitted on {self.classes_.dtype} labels, "
                            f"got {y.dtype}")
        idx = np.searchsorted(self.classes_, y)
        idx = np.minimum(idx, len(self.classes_) - 1)
        bad = np.flatnonzero(self.classes_[idx] != y)
        if bad.size:
            raise ValueError(f"LabelEncoder.transform: label {y[bad[0]].item()!r} at index "
                             f"{int(bad[0])} was not seen by fit (known: "
                             f"{_short_list(self.classes_)})")
        return idx.astype(np.int64)

    def fit_transform(self, y):
        return self.fit(y).transform(y)

    def inverse_transform(self, indices):
        self._check_fitted()
        i = np.asarray(indices)
        if i.dtype.kind not in "iu":
            raise TypeError(f"LabelEncoder.inverse_transform: expected integer class indices, "
                            f"got dtype {i.dtype}")
        bad = np.flatnonzero((i < 0) | (i >= len(self.classes_)))
        if bad.size:
            raise ValueError(f"LabelEncoder.inverse_transform: class indices must be in "
                             f"[0, {len(self.classes_)}), got {i.ravel()[bad[0]]}")
        return self.classes_[i]


def _short_list(values, n=8):
    items = [str(v) for v in values[:n]]
    return ", ".join(items) + (f", ... ({len(values)} in all)" if len(values) > n else "")


class Preprocess:
    """What a model needs around it to work on raw data, saved with it by
    ``fastnn.save(model, path, preprocess=...)`` and restored by ``fastnn.load`` as
    ``model.preprocess``:

    standardizer: a fitted :class:`Standardizer` of the features (or None).
    label_encoder: a fitted :class:`LabelEncoder` of the class labels (classifiers; or None).
    target_standardizer: a fitted :class:`Standardizer` of a regression target, shape (n, 1)
        or (n, outputs) (or None).
    task: "classify", "regress" or None. feature_names: the input columns' names (or None).
    target: the target column's name or index at training time (or None).

    ``transform(X)`` applies the standardizer (X: (n, features) or one sample (features,));
    ``decode(output)`` turns model outputs into answers: for a classifier, class labels (the
    argmax of a multi-column output, or ``output > 0`` for a single logit); for a regression,
    values in the target's units; with task None, a single column is taken as values and
    several as class scores. ``predict(model, X)`` does both.
    """

    def __init__(self, standardizer=None, label_encoder=None, target_standardizer=None,
                 task=None, feature_names=None, target=None):
        for name, v, cls in (("standardizer", standardizer, Standardizer),
                             ("label_encoder", label_encoder, LabelEncoder),
                             ("target_standardizer", target_standardizer, Standardizer)):
            if v is not None and not isinstance(v, cls):
                raise TypeError(f"Preprocess: {name} must be a fastnn {cls.__name__} or None, "
                                f"got {type(v).__name__}")
            fitted = v is None or getattr(v, "mean_" if cls is Standardizer else "classes_",
                                          None) is not None
            if not fitted:
                raise ValueError(f"Preprocess: {name} is not fitted (call fit first)")
        if task not in (None, "classify", "regress"):
            raise ValueError(f"Preprocess: task must be 'classify', 'regress' or None, got "
                             f"{task!r}")
        if task is None:
            task = "classify" if label_encoder is not None else (
                "regress" if target_standardizer is not None else None)
        self.standardizer, self.label_encoder = standardizer, label_encoder
        self.target_standardizer, self.task = target_standardizer, task
        self.feature_names = None if feature_names is None else [str(f) for f in feature_names]
        self.target = target
        if self.feature_names is not None and standardizer is not None \
                and len(self.feature_names) != len(standardizer.mean_):
            raise ValueError(f"Preprocess: {len(self.feature_names)} feature_names for a "
                             f"standardizer of {len(standardizer.mean_)} features")

    @property
    def n_features(self):
        """The number of input features (None when unknown)."""
        if self.standardizer is not None:
            return len(self.standardizer.mean_)
        return None if self.feature_names is None else len(self.feature_names)

    @property
    def classes_(self):
        return None if self.label_encoder is None else self.label_encoder.classes_

    def transform(self, X):
        """Standardised features, float32 (or X's float dtype)."""
        X = np.asarray(X)
        one = X.ndim == 1
        X = X[None] if one else X
        if self.standardizer is not None:
            X = self.standardizer.transform(X)
        return X[0] if one else X

    def decode(self, output):
        """Model outputs (n, k) (or one row (k,)) -> (n,) answers: class labels or values."""
        out = np.asarray(output)
        one = out.ndim == 1
        out = out[None] if one else out
        if self.task == "regress" or (self.task is None and out.shape[1] == 1):
            if self.target_standardizer is not None:
                out = self.target_standardizer.inverse_transform(out.astype(np.float64))
            res = out[:, 0] if out.shape[1] == 1 else out
        else:
            idx = (out[:, 0] > 0).astype(np.int64) if out.shape[1] == 1 \
                else out.argmax(axis=1)
            res = idx if self.label_encoder is None else self.label_encoder.inverse_transform(idx)
        return res[0] if one else res

    def predict(self, model, X):
        """Answers for raw X: ``decode(model.predict(transform(X)))``."""
        return self.decode(model.predict(self.transform(X)))

    # ---- the file form (fastnn.save's "preprocess" metadata: JSON, floats exact) ----
    def to_dict(self):
        """A JSON-able dict (floats as Python floats: JSON keeps their exact value)."""
        def scaler(s):
            return None if s is None else {"mean": s.mean_.tolist(), "scale": s.scale_.tolist()}
        enc = self.label_encoder
        return {"version": 1, "task": self.task, "feature_names": self.feature_names,
                "target": self.target, "standardizer": scaler(self.standardizer),
                "target_standardizer": scaler(self.target_standardizer),
                "classes": None if enc is None else enc.classes_.tolist(),
                "classes_kind": None if enc is None else enc.classes_.dtype.kind}

    @classmethod
    def from_dict(cls, d):
        """The inverse of to_dict; ValueError when d is not one."""
        def scaler(v):
            if v is None:
                return None
            s = Standardizer()
            s.mean_ = np.array(v["mean"], dtype=np.float64)
            s.scale_ = np.array(v["scale"], dtype=np.float64)
            if s.mean_.shape != s.scale_.shape or s.mean_.ndim != 1:
                raise ValueError("mean and scale differ in shape")
            return s
        try:
            enc = None
            if d.get("classes") is not None:
                enc = LabelEncoder()
                kind = {"U": str, "S": str, "i": np.int64, "u": np.int64,
                        "b": np.bool_}.get(d["classes_kind"], np.float64)
                enc.classes_ = np.array(d["classes"], dtype=kind)
            return cls(standardizer=scaler(d.get("standardizer")), label_encoder=enc,
                       target_standardizer=scaler(d.get("target_standardizer")),
                       task=d.get("task"), feature_names=d.get("feature_names"),
                       target=d.get("target"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"corrupt preprocessing metadata ({e!r})") from None

    def __repr__(self):
        parts = [f"task={self.task!r}"]
        if self.n_features is not None:
            parts.append(f"features={self.n_features}")
        if self.label_encoder is not None:
            parts.append(f"classes=[{_short_list(self.label_encoder.classes_)}]")
        return f"Preprocess({', '.join(parts)})"
