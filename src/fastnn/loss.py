"""Losses with PyTorch's names, arguments and formulas.

``value = loss.forward(output, target)`` returns a Python float (reduction 'mean' or 'sum') or
an array of per-item losses ('none'); ``loss.backward()`` returns d(loss)/d(output) of the
last forward (with 'none', of the sum of the items, or pass ``grad_output``: one value per
item). ``loss(output, target)`` is ``loss.forward``.

Targets are converted to the output's dtype (class labels to int64) and checked by
``check_target``; a target of shape (N,) is accepted for an output of shape (N, 1).
"""
import numpy as np

from . import ops
from ._arrays import native

_REDUCTIONS = ("mean", "sum", "none")


class Loss:
    """Base class: subclasses define _target, _value and _grad."""

    task = "regression"  # or "classification": fit's default metric (mae or accuracy)

    def __init__(self, reduction="mean"):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be 'mean', 'sum' or "
                             f"'none', got {reduction!r}")
        self.reduction = reduction
        self._saved = None

    def __call__(self, output, target):
        return self.forward(output, target)

    def forward(self, output, target):
        output = native(output)
        if output.dtype.kind != "f":
            raise TypeError(f"{type(self).__name__}: output must be a float array, got dtype "
                            f"{output.dtype}")
        target = self.check_target(target, output.shape, output.dtype)
        self._saved = (output, target)
        return self._value(output, target)

    def backward(self, grad_output=None):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}: backward called before forward")
        output, target = self._saved
        if self.reduction == "none" and grad_output is None:
            grad_output = np.ones(self._item_shape(output), output.dtype)
        return self._grad(output, target, grad_output)

    def _item_shape(self, output):
        return output.shape

    def check_target(self, target, output_shape, dtype, name="target"):
        """target converted for an output of this shape and dtype; raises naming `name`."""
        t = np.asarray(target)
        if t.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be a numeric array, got dtype {t.dtype}")
        if t.shape != tuple(output_shape):
            if len(output_shape) == 2 and output_shape[1] == 1 and t.shape == output_shape[:1]:
                t = t.reshape(output_shape)
            else:
                raise ValueError(f"{name} must have shape {tuple(output_shape)} like the "
                                 f"model's output, got {t.shape}")
        t = np.require(t, dtype, ["C", "A"])    # native, aligned, contiguous
        _check_finite(t, name)
        return t

    def extra_repr(self):
        return f"reduction={self.reduction!r}"

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


def _first_nonfinite(a):
    """Flat index (C order) of the first NaN/Inf of a float array, or -1. One vectorized read
    in C where a is native, aligned and contiguous; else in slices of rows, so no temporary
    the size of a training set is made."""
    if a.dtype.kind != "f" or a.size == 0:
        return -1
    if a.dtype in (np.float32, np.float64) and a.flags.c_contiguous and a.flags.aligned \
            and a.dtype.isnative:
        from ._kernels import first_nonfinite
        return first_nonfinite(a)
    rows = max(1, (1 << 20) // max(1, a[0].size)) if a.ndim > 1 else 1 << 20
    for r in range(0, len(a), rows):
        part = a[r:r + rows]
        if not np.isfinite(part).all():
            first = np.argwhere(~np.isfinite(part))[0]
            first[0] += r
            return int(np.ravel_multi_index(tuple(first), a.shape))
    return -1


def _check_finite(a, name):
    """Raise naming the first NaN/Inf of a (_first_nonfinite)."""
    i = _first_nonfinite(a)
    if i >= 0:
        raise ValueError(f"{name} contains NaN or Inf (first at index "
                         f"{tuple(int(j) for j in np.unravel_index(i, a.shape))})")


class MSELoss(Loss):
    """(output - target)**2, reduced."""

    def _value(self, o, t):
        return ops.mse_loss(o, t, self.reduction)

    def _grad(self, o, t, go):
        return ops.mse_loss_backward(o, t, self.reduction, go)


class L1Loss(Loss):
    """|output - target|, reduced."""

    def _value(self, o, t):
        return ops.l1_loss(o, t, self.reduction)

    def _grad(self, o, t, go):
        return ops.l1_loss_backward(o, t, self.reduction, go)


class HuberLoss(Loss):
    """0.5 d**2 where |d| < delta, else delta (|d| - 0.5 delta); d = output - target."""

    def __init__(self, reduction="mean", delta=1.0):
        super().__init__(reduction)
        if not delta > 0:
            raise ValueError(f"HuberLoss: delta must be > 0, got {delta!r}")
        self.delta = float(delta)

    def _value(self, o, t):
        return ops.huber_loss(o, t, self.delta, self.reduction)

    def _grad(self, o, t, go):
        return ops.huber_loss_backward(o, t, self.delta, self.reduction, go)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, delta={self.delta}"


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits; pos_weight: one weight of the positive class per output
    column. Targets are probabilities in [0, 1] (usually 0 or 1)."""

    task = "classification"

    def __init__(self, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        self.pos_weight = None if pos_weight is None else np.asarray(pos_weight, np.float64)

    def _pw(self, o):
        return None if self.pos_weight is None else self.pos_weight.astype(o.dtype)

    def _value(self, o, t):
        return ops.binary_cross_entropy_with_logits(o, t, self._pw(o), self.reduction)

    def _grad(self, o, t, go):
        return ops.binary_cross_entropy_with_logits_backward(o, t, self._pw(o), self.reduction,
                                                             go)


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy of logits (N, C), as torch.nn.CrossEntropyLoss.

    target: integer class labels (N,) in [0, C), or class probabilities (N, C).
    weight: one weight per class; label_smoothing in [0, 1]. With labels, 'mean' divides by
    the sum of the targets' class weights; with probabilities, by N (as PyTorch).
    """

    task = "classification"

    def __init__(self, weight=None, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got "
                             f"{label_smoothing!r}")
        self.weight = None if weight is None else np.asarray(weight, np.float64)
        self.label_smoothing = float(label_smoothing)

    def _item_shape(self, output):
        return output.shape[:1]

    def check_target(self, target, output_shape, dtype, name="target"):
        t = np.asarray(target)
        if len(output_shape) != 2:
            raise ValueError(f"CrossEntropyLoss: the output must be 2-D (samples, classes), "
                             f"got shape {tuple(output_shape)}")
        n, c = output_shape
        if t.ndim == 2:  # class probabilities
            return super().check_target(t, output_shape, dtype, name)
        if t.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer class labels, got dtype {t.dtype} "
                            f"(class probabilities must have shape ({n}, {c}))")
        if t.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) (one label per sample), got "
                             f"{t.shape}")
        bad = np.flatnonzero((t < 0) | (t >= c))
        if bad.size:
            raise ValueError(f"{name} must hold class labels in [0, {c}), got {t[bad[0]]} at "
                             f"index {bad[0]}")
        return np.require(t, np.int64, ["C", "A"])

    def _w(self, o):
        return None if self.weight is None else self.weight.astype(o.dtype)

    def _value(self, o, t):
        if t.ndim == 1:
            return ops.cross_entropy(o, t, self._w(o), self.label_smoothing, self.reduction)
        per_row = -(self._soft(o, t) * ops.log_softmax(o)).sum(axis=1)
        if self.reduction == "none":
            return per_row
        total = float(per_row.sum(dtype=np.float64))
        return total / len(o) if self.reduction == "mean" else total

    def _grad(self, o, t, go):
        if t.ndim == 1:
            return ops.cross_entropy_backward(o, t, self._w(o), self.label_smoothing,
                                              self.reduction, go)
        q = self._soft(o, t)  # d(-sum q log softmax(o)) / do = softmax(o) sum(q) - q
        g = ops.softmax(o) * q.sum(axis=1, keepdims=True) - q
        if self.reduction == "mean" and len(o):
            g /= len(o)
        elif self.reduction == "none":
            g *= np.asarray(go, o.dtype).reshape(-1, 1)
        return g

    def _soft(self, o, t):
        """Smoothed, weighted probability targets: w_c ((1 - eps) t_c + eps / C)."""
        eps = self.label_smoothing
        q = t * o.dtype.type(1 - eps) + o.dtype.type(eps / o.shape[1]) if eps else t
        return q * self._w(o) if self.weight is not None else q

    def extra_repr(self):
        return f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"


LOSSES = {c.__name__: c for c in (MSELoss, L1Loss, HuberLoss, BCEWithLogitsLoss,
                                  CrossEntropyLoss)}
