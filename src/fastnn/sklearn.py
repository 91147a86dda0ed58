"""scikit-learn estimators backed by fastnn (optional extra:
``pip install 'fastnn-core[sklearn]'``).

``MLPClassifier`` and ``MLPRegressor`` take the constructor parameters, defaults and meanings
of scikit-learn 1.9's estimators of the same names, expose the same methods and fitted
attributes (``coefs_`` stored (in, out), ``intercepts_``, ``loss_curve_``, ``t_`` ...), give
the same warnings, draw the same Glorot-uniform initial weights from the same
``random_state``, shuffle and split (stratified early-stopping split, best-weight restore)
exactly as scikit-learn does, and handle binary, multi-class, multi-label and multi-output
targets as it does::

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from fastnn.sklearn import MLPClassifier

    clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(100,)))
    clf.fit(X, y).score(X_test, y_test)

Beyond scikit-learn (extra keywords): ``activation`` may be a list with one entry per hidden
layer and accepts 'leaky_relu', 'gelu', 'silu' besides 'identity', 'logistic', 'tanh',
'relu'; ``dropout`` (a float or one per hidden layer); ``class_weight`` (dict or
'balanced'); ``validation_loss_curve_`` (with ``early_stopping``); ``dtype`` (float32 by
default, float64); ``n_threads``; ``device`` ('cpu' or 'cuda'); ``backend`` ('fused' or
'numpy'); ``plot_loss_curve()``.

Two training back ends (the fitted attribute ``backend_`` says which one ran):

* ``'fused'`` (default) — the solvers 'sgd' and 'adam' run through fastnn's fused native
  training step (``fastnn._fused``): a whole epoch of mini-batches is one native call with the
  GIL released, no per-batch Python. The model, loss and hyper-parameters are scikit-learn's;
  the update formulas are PyTorch's (fastnn.SGD / fastnn.Adam), and the L2 penalty ``alpha``
  is added to the weight gradients (not the biases) divided by each batch's rows, as in
  scikit-learn. They differ from scikit-learn's in rounding and in two small ways: Adam adds
  ``epsilon`` to the bias-corrected root of the second moment (scikit-learn to the
  uncorrected one; this matters only while that root is below ~1e-6); the reported
  ``loss_`` adds the penalty with the weights at the end of the epoch (scikit-learn: before
  each batch). SGD without momentum or with a constant learning rate follows the same
  arithmetic (float64 loss curves agree to ~1e-15 with alpha=0). Used when: solver 'sgd'/'adam', no
  ``sample_weight``, ``loss='squared_error'``, and ``class_weight`` only for multi-class
  targets (a class-weighted cross-entropy).
* ``'numpy'`` — scikit-learn's formulas verbatim (its ``_backprop``, ``SGDOptimizer`` and
  ``AdamOptimizer``) in numpy, one Python step per mini-batch: float64 loss curves match
  scikit-learn's to about 1e-12. Used when asked for, and for what the fused step cannot do:
  ``solver='lbfgs'`` (scipy's L-BFGS-B over full-batch loss and gradient), ``sample_weight``,
  ``loss='poisson'`` and ``class_weight`` on binary or multi-label targets. It has no
  dropout.

Prediction always runs fastnn's fused forward pass.

``NeuralNetClassifier`` / ``NeuralNetRegressor`` wrap any fastnn model factory with the loss,
optimizer, epochs and batch size as parameters and train it with ``fastnn.fit`` (the fused
step when the model qualifies).
"""
import copy
import numbers
import warnings

import numpy as np

try:
    import scipy.optimize
    import scipy.sparse
    from scipy.special import expit, xlogy
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer, LabelEncoder
    from sklearn.utils import check_random_state, gen_batches
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.class_weight import compute_class_weight, compute_sample_weight
    from sklearn.utils.multiclass import (
        _check_partial_fit_first_call,
        check_classification_targets,
        type_of_target,
        unique_labels,
    )
    from sklearn.utils.validation import (
        _check_sample_weight,
        check_is_fitted,
        column_or_1d,
        validate_data,
    )
except ImportError as _e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"fastnn.sklearn needs scikit-learn >= 1.6 and scipy ({_e}); install the extra: "
        f"pip install 'fastnn-core[sklearn]'") from _e

from . import _fused, loss as _loss, nn as _nn, optim as _optim
from ._kernels import get_num_threads, set_num_threads
from .train import fit as _fn_fit

__all__ = ["MLPClassifier", "MLPRegressor", "NeuralNetClassifier", "NeuralNetRegressor"]

_ACTIVATIONS = ("identity", "logistic", "tanh", "relu", "leaky_relu", "gelu", "silu")
_DTYPES = {np.dtype(np.float32), np.dtype(np.float64)}


# ---- small helpers ----------------------------------------------------------------------------

class _threads:
    """Set fastnn's thread count for a block (None: leave it)."""

    def __init__(self, n):
        self.n, self.old = n, None

    def __enter__(self):
        if self.n is not None:
            self.old = get_num_threads()
            set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.old is not None:
            set_num_threads(self.old)


def _shuffled(a, rs):
    """sklearn.utils.shuffle(a, random_state=rs) for a 1-D array: the same draws, the same
    order, without its input validation (called once per epoch)."""
    ind = np.arange(len(a))
    rs.shuffle(ind)
    return a[ind]


def _dense(X):
    """Sparse input is densified (the fused step reads dense rows)."""
    return X.toarray() if scipy.sparse.issparse(X) else X


def _act_layer(name):
    return {"relu": _nn.ReLU, "logistic": _nn.Sigmoid, "tanh": _nn.Tanh,
            "leaky_relu": _nn.LeakyReLU, "gelu": _nn.GELU, "silu": _nn.SiLU}.get(name)


def _forward_act(name, z):
    """Hidden activation in place on z (the numpy back end), scikit-learn's formulas."""
    if name == "relu":
        np.maximum(z, 0, out=z)
    elif name == "logistic":
        expit(z, out=z)
    elif name == "tanh":
        np.tanh(z, out=z)
    elif name == "leaky_relu":
        np.multiply(z, np.where(z > 0, 1.0, 0.01).astype(z.dtype), out=z)
    elif name in ("gelu", "silu"):
        from . import ops
        z[...] = ops.gelu(z) if name == "gelu" else ops.silu(z)
    return z


def _backward_act(name, z_pre, a, delta):
    """delta *= act'(.) in place; a is the activation's output, z_pre its input."""
    if name == "relu":
        delta[a == 0] = 0
    elif name == "logistic":
        delta *= a
        delta *= 1 - a
    elif name == "tanh":
        delta *= 1 - a ** 2
    elif name == "leaky_relu":
        delta *= np.where(z_pre > 0, 1.0, 0.01).astype(delta.dtype)
    elif name in ("gelu", "silu"):
        from . import ops
        delta[...] = (ops.gelu_backward if name == "gelu" else ops.silu_backward)(delta, z_pre)
    return delta


def _check_finite(X):
    """scikit-learn's ValueError ("Input X contains NaN." / "... infinity or a value too large
    for dtype(...)") when X (a dense array or a CSR/CSC matrix, as validate_data gives it)
    holds a non-finite value; one pass of fastnn's C check (loss._first_nonfinite)."""
    from .loss import _first_nonfinite

    a = X.data if hasattr(X, "tocsr") else X
    i = _first_nonfinite(a)
    if i >= 0:
        what = "NaN" if np.isnan(a.flat[i]) else f"infinity or a value too large for {a.dtype!r}"
        raise ValueError(f"Input X contains {what}.")


def _out_act(name, z, exact=False):
    """The output activation of z (in place where it can). exact: scikit-learn's numpy
    formulas (the numpy back end); else fastnn's kernels."""
    if name == "softmax":
        if not exact and z.flags.c_contiguous:
            from . import ops
            return ops.softmax(z)
        z = z - z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
    elif name == "logistic":
        expit(z, out=z)
    elif name == "exp":
        np.exp(z, out=z)
    return z


def _data_loss(kind, y, p, sw=None):
    """scikit-learn's loss functions (neural_network/_base.py)."""
    if kind == "squared_error":
        return 0.5 * np.average((y - p) ** 2, weights=sw, axis=0).mean()
    if kind == "poisson":
        return np.average(xlogy(y, y / p) - y + p, weights=sw, axis=0).sum()
    eps = np.finfo(p.dtype).eps
    p = np.clip(p, eps, 1 - eps)
    if kind == "binary_log_loss":
        return -np.average(xlogy(y, p) + xlogy(1 - y, 1 - p), weights=sw, axis=0).sum()
    if p.shape[1] == 1:
        p = np.append(1 - p, p, axis=1)
    if y.shape[1] == 1:
        y = np.append(1 - y, y, axis=1)
    return -np.average(xlogy(y, p), weights=sw, axis=0).sum()


class _SGD:
    """scikit-learn's SGDOptimizer (velocity form, learning rate inside the velocity)."""

    def __init__(self, params, lr, schedule, momentum, nesterov, power_t):
        self.learning_rate_init, self.learning_rate = lr, float(lr)
        self.lr_schedule, self.momentum, self.nesterov, self.power_t = \
            schedule, momentum, nesterov, power_t
        self.velocities = [np.zeros_like(p) for p in params]

    def update_params(self, params, grads):
        updates = [self.momentum * v - self.learning_rate * g
                   for v, g in zip(self.velocities, grads)]
        self.velocities = updates
        if self.nesterov:
            updates = [self.momentum * v - self.learning_rate * g
                       for v, g in zip(self.velocities, grads)]
        for p, u in zip(params, updates):
            p += u

    def iteration_ends(self, time_step):
        if self.lr_schedule == "invscaling":
            self.learning_rate = float(self.learning_rate_init) / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        if self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False


class _Adam:
    """scikit-learn's AdamOptimizer (epsilon added to the uncorrected root)."""

    def __init__(self, params, lr, beta_1, beta_2, epsilon):
        self.learning_rate_init, self.learning_rate = lr, float(lr)
        self.beta_1, self.beta_2, self.epsilon, self.t = beta_1, beta_2, epsilon, 0
        self.ms = [np.zeros_like(p) for p in params]
        self.vs = [np.zeros_like(p) for p in params]

    def update_params(self, params, grads):
        self.t += 1
        self.ms = [self.beta_1 * m + (1 - self.beta_1) * g for m, g in zip(self.ms, grads)]
        self.vs = [self.beta_2 * v + (1 - self.beta_2) * (g ** 2) for v, g in zip(self.vs, grads)]
        self.learning_rate = (self.learning_rate_init * np.sqrt(1 - self.beta_2 ** self.t)
                              / (1 - self.beta_1 ** self.t))
        for p, m, v in zip(params, self.ms, self.vs):
            p += -self.learning_rate * m / (np.sqrt(v) + self.epsilon)

    def iteration_ends(self, time_step):
        pass

    def trigger_stopping(self, msg, verbose):
        if verbose:
            print(msg + " Stopping.")
        return True


class _FusedLR:
    """The learning-rate schedule of scikit-learn's SGD over a fastnn optimizer's group."""

    def __init__(self, opt, est, scale):
        self.group, self.est, self.scale = opt.param_groups[0], est, scale
        self.learning_rate = float(est.learning_rate_init)
        self.group["lr"] = self.learning_rate * scale

    def iteration_ends(self, time_step):
        if self.est.solver == "sgd" and self.est.learning_rate == "invscaling":
            self.learning_rate = (float(self.est.learning_rate_init)
                                  / (time_step + 1) ** self.est.power_t)
        self.group["lr"] = self.learning_rate * self.scale

    def trigger_stopping(self, msg, verbose):
        if self.est.solver != "sgd" or self.est.learning_rate != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        self.group["lr"] = self.learning_rate * self.scale
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False


# ---- the MLP estimators -----------------------------------------------------------------------

class _BaseMLP(BaseEstimator):
    """Shared by MLPClassifier and MLPRegressor (not for direct use)."""

    def _check_params(self):
        def real(name, low=0.0, high=None, low_open=False, high_open=False):
            v = getattr(self, name)
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v) \
                and (v > low if low_open else v >= low) \
                and (high is None or (v < high if high_open else v <= high))
            if not ok:
                hi = "" if high is None else f" and {'<' if high_open else '<='} {high}"
                raise ValueError(f"The '{name}' parameter of {type(self).__name__} must be a "
                                 f"float {'>' if low_open else '>='} {low}{hi}; got {v!r}.")

        def integer(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"The '{name}' parameter of {type(self).__name__} must be an "
                                 f"int >= {low}; got {v!r}.")

        def option(name, choices):
            v = getattr(self, name)
            if not isinstance(v, str) or v not in choices:
                raise ValueError(f"The '{name}' parameter of {type(self).__name__} must be one "
                                 f"of {sorted(choices)}; got {v!r}.")

        name = type(self).__name__
        option("solver", {"lbfgs", "sgd", "adam"})
        option("learning_rate", {"constant", "invscaling", "adaptive"})
        option("backend", {"fused", "numpy"})
        option("device", {"cpu", "cuda"})
        for key in ("alpha", "power_t", "tol"):
            real(key)
        real("learning_rate_init", low_open=True)
        real("epsilon", low_open=True)
        real("momentum", 0.0, 1.0)
        real("validation_fraction", 0.0, 1.0, high_open=True)
        real("beta_1", 0.0, 1.0, high_open=True)
        real("beta_2", 0.0, 1.0, high_open=True)
        integer("max_iter", 1)
        integer("max_fun", 1)
        nic = self.n_iter_no_change
        if not (nic == np.inf or (isinstance(nic, numbers.Integral)
                                  and not isinstance(nic, bool) and nic >= 1)):
            raise ValueError(f"The 'n_iter_no_change' parameter of {name} must be an int >= 1 "
                             f"or numpy.inf; got {self.n_iter_no_change!r}.")
        if not (self.batch_size == "auto" or (isinstance(self.batch_size, numbers.Integral)
                                              and not isinstance(self.batch_size, bool)
                                              and self.batch_size >= 1)):
            raise ValueError(f"The 'batch_size' parameter of {name} must be 'auto' or an int "
                             f">= 1; got {self.batch_size!r}.")
        for key in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
            if not isinstance(getattr(self, key), (bool, np.bool_)):
                raise ValueError(f"The '{key}' parameter of {name} must be a bool; got "
                                 f"{getattr(self, key)!r}.")
        if self.n_threads is not None and (isinstance(self.n_threads, bool) or not isinstance(
                self.n_threads, numbers.Integral) or self.n_threads < 1):
            raise ValueError(f"The 'n_threads' parameter of {name} must be None or an int >= 1;"
                             f" got {self.n_threads!r}.")
        try:
            dt = np.dtype(self.dtype)
        except TypeError:
            dt = None
        if dt not in _DTYPES:
            raise ValueError(f"The 'dtype' parameter of {name} must be float32 or float64; got "
                             f"{self.dtype!r}.")
        hidden = self.hidden_layer_sizes
        hidden = list(hidden) if hasattr(hidden, "__iter__") else [hidden]
        if any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h <= 0
               for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {hidden}.")
        acts = self.activation
        acts = [acts] * len(hidden) if isinstance(acts, str) else list(acts)
        if len(acts) != len(hidden) or any(a not in _ACTIVATIONS for a in acts):
            raise ValueError(f"The 'activation' parameter of {name} must be one of "
                             f"{list(_ACTIVATIONS)} or a list of them, one per hidden layer "
                             f"({len(hidden)}); got {self.activation!r}.")
        drops = self.dropout
        drops = [drops] * len(hidden) if isinstance(drops, numbers.Real) else list(drops)
        if len(drops) != len(hidden) or any(
                isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0 <= d < 1
                for d in drops):
            raise ValueError(f"The 'dropout' parameter of {name} must be a float in [0, 1) or "
                             f"a list of them, one per hidden layer ({len(hidden)}); got "
                             f"{self.dropout!r}.")
        return [int(h) for h in hidden], acts, [float(d) for d in drops], dt

    # -- weights and the fastnn model --

    def _init_coef(self, fan_in, fan_out, dtype, act):
        factor = 2.0 if act == "logistic" else 6.0
        bound = np.sqrt(factor / (fan_in + fan_out))
        coef = self._random_state.uniform(-bound, bound, (fan_in, fan_out))
        intercept = self._random_state.uniform(-bound, bound, fan_out)
        return coef.astype(dtype, copy=False), intercept.astype(dtype, copy=False)

    def _initialize(self, y, layer_units, dtype, acts):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        if not getattr(self, "_user_weights", False):
            self.coefs_, self.intercepts_ = [], []
            for i in range(self.n_layers_ - 1):
                # scikit-learn's factor follows the (single) hidden activation
                act = (self.activation if isinstance(self.activation, str)
                       else acts[min(i, len(acts) - 1)])
                c, b = self._init_coef(layer_units[i], layer_units[i + 1], dtype, act)
                self.coefs_.append(c)
                self.intercepts_.append(b)
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [b.copy() for b in self.intercepts_]
        if self.solver != "lbfgs":
            self.loss_curve_ = []
            self._no_improvement_count = 0
            self.validation_loss_curve_ = [] if self.early_stopping else None
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _model(self, acts, drops, dtype, train=False):
        """A fastnn Sequential holding coefs_ (transposed) and intercepts_."""
        layers = []
        last = len(self.coefs_) - 1
        for i, (c, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            lin = _nn.Linear(c.shape[0], c.shape[1], dtype=dtype, seed=0)
            lin.weight[...] = c.T
            lin.bias[...] = b
            layers.append(lin)
            if i < last:
                act = _act_layer(acts[i])
                if act is not None:
                    layers.append(act())
                if train and drops[i] > 0:
                    layers.append(_nn.Dropout(drops[i]))
        return _nn.Sequential(*layers)

    def _store(self, model):
        lins = [m for m in model if isinstance(m, _nn.Linear)]
        self.coefs_ = [np.array(lin.weight.T) for lin in lins]
        self.intercepts_ = [np.array(lin.bias) for lin in lins]

    def _forward(self, X):
        """Output-layer activations (n_samples, n_outputs_) for X (as validate_data gives it)
        from the fused forward pass. The fastnn model is built once and gets coefs_ /
        intercepts_ copied in at each call, so changes to them are always seen."""
        check_is_fitted(self)
        hidden, acts, drops, dt = self._check_params()
        # the finite check in C, after the cast (scikit-learn's sums the array in numpy)
        X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False, dtype=dt,
                          ensure_all_finite=False)
        _check_finite(X)
        cache = self.__dict__.get("_predict_cache")
        if cache is None or cache[0] != self._cache_key(acts, dt):
            cache = self._predict_model(acts, dt)   # not stored: predict changes no attribute
        _, model, lins = cache
        for lin, c, b in zip(lins, self.coefs_, self.intercepts_):
            lin.weight[...] = c.T
            lin.bias[...] = b
        X = np.ascontiguousarray(_dense(X), dtype=dt)
        with _threads(self.n_threads):
            z = model.predict(X, batch_size=min(max(len(X), 1), 1024))
            return _out_act(self.out_activation_, z)

    def _cache_key(self, acts, dt):
        return (dt, tuple(acts), tuple(np.shape(c) for c in self.coefs_))

    def _predict_model(self, acts, dt):
        model = self._model(acts, [0.0] * len(acts), dt)
        return (self._cache_key(acts, dt), model,
                [m for m in model if isinstance(m, _nn.Linear)])

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_predict_cache", None)
        state.pop("_live", None)
        return state

    def _loss_kind(self):
        if not self._is_classifier:
            return self.loss
        return "binary_log_loss" if self.out_activation_ == "logistic" else "log_loss"

    # -- fit --

    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden, acts, drops, dt = self._check_params()
        user_weights = (not hasattr(self, "n_iter_") and self.warm_start
                        and hasattr(self, "coefs_") and hasattr(self, "intercepts_"))
        first_pass = not hasattr(self, "coefs_") or user_weights or (
            not self.warm_start and not incremental)
        self._fit_dtype = dt
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        X = np.ascontiguousarray(_dense(X), dtype=dt)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=dt)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        y = y.astype(dt)
        cw = getattr(self, "class_weight", None)
        cw_sample = None
        if cw is not None:   # class weights as sample weights (the numpy back end)
            lb = self._label_binarizer
            if lb.y_type_ == "multiclass":
                labels = self.classes_[y.argmax(axis=1)]
            elif lb.y_type_ == "binary":
                labels = self.classes_[y[:, 0].astype(int)]
            else:
                labels = y.astype(int)
            cw_sample = compute_sample_weight(cw, labels).astype(dt)
            if lb.y_type_ == "multiclass":   # per-class weights for the fused cross-entropy
                self._class_weights = compute_class_weight(cw, classes=self.classes_, y=labels)
        n_samples, n_features = X.shape
        self.n_outputs_ = y.shape[1]
        layer_units = [n_features] + hidden + [self.n_outputs_]
        wanted = list(zip(layer_units, layer_units[1:]))
        if not first_pass and [c.shape for c in self.coefs_] != wanted:
            raise ValueError(f"warm_start/partial_fit: the network has layers "
                             f"{[c.shape for c in self.coefs_]}, the data and "
                             f"hidden_layer_sizes ask for {wanted}")
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._user_weights = user_weights
            if user_weights:
                shapes = list(zip(layer_units, layer_units[1:]))
                if [np.shape(c) for c in self.coefs_] != shapes or \
                        [np.shape(b) for b in self.intercepts_] != [(s[1],) for s in shapes]:
                    raise ValueError(f"coefs_/intercepts_ set before fit must have shapes "
                                     f"{shapes} and {[(s[1],) for s in shapes]}")
                self.coefs_ = [np.array(c, dtype=dt) for c in self.coefs_]
                self.intercepts_ = [np.array(b, dtype=dt) for b in self.intercepts_]
            self._initialize(y, layer_units, dt, acts)
            self._user_weights = False
        else:
            self.coefs_ = [np.asarray(c, dtype=dt) for c in self.coefs_]
            self.intercepts_ = [np.asarray(b, dtype=dt) for b in self.intercepts_]
            if self.solver != "lbfgs" and not hasattr(self, "loss_curve_"):
                self._initialize(y, layer_units, dt, acts)
        backend = self._choose_backend(sample_weight, drops, y)
        self.backend_ = backend
        if backend != "fused" and cw_sample is not None:
            sample_weight = cw_sample if sample_weight is None else sample_weight * cw_sample
        with _threads(self.n_threads):
            if self.solver == "lbfgs":
                self._fit_lbfgs(X, y, sample_weight, acts)
            elif backend == "fused":
                self._fit_fused(X, y, incremental, acts, drops, dt)
            else:
                self._fit_numpy(X, y, sample_weight, incremental, acts)
        if not all(np.isfinite(w).all() for w in self.coefs_ + self.intercepts_):
            raise ValueError("Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.")
        self._predict_cache = self._predict_model(acts, dt)   # the structure predict reuses
        return self

    def _choose_backend(self, sample_weight, drops, y):
        multiclass = self._is_classifier and self.out_activation_ == "softmax"
        cw = getattr(self, "class_weight", None)
        fused_ok = (self.solver != "lbfgs" and sample_weight is None and self.device == "cpu"
                    and self._loss_kind() != "poisson" and (cw is None or multiclass))
        if self.device == "cuda":
            fused_ok = self.solver != "lbfgs" and sample_weight is None and cw is None \
                and self._loss_kind() != "poisson" and not any(drops)
            if not fused_ok:
                raise ValueError("device='cuda' trains with solver 'sgd' or 'adam', without "
                                 "sample_weight, class_weight, dropout or loss='poisson'")
            return "cuda"
        if self.backend == "fused" and fused_ok:
            return "fused"
        if any(drops):
            raise ValueError(
                "dropout needs the fused back end, which is not available here: it trains "
                "solver 'sgd'/'adam' without sample_weight, loss='poisson', or class_weight "
                "on binary/multi-label targets" + (" (backend='numpy' was asked for)"
                                                    if self.backend == "numpy" else ""))
        return "numpy"

    def _early_split(self, X, y, sample_weight, incremental):
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if not self.early_stopping:
            return X, y, sample_weight, None, None, None
        stratify = y if self._is_classifier and self.n_outputs_ == 1 else None
        if sample_weight is None:
            X_train, X_val, y_train, y_val = train_test_split(
                X, y, random_state=self._random_state, test_size=self.validation_fraction,
                stratify=stratify)
            sw_train = sw_val = None
        else:
            X_train, X_val, y_train, y_val, sw_train, sw_val = train_test_split(
                X, y, sample_weight, random_state=self._random_state,
                test_size=self.validation_fraction, stratify=stratify)
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                             "or the size of your dataset.")
        return X_train, y_train, sw_train, X_val, y_val, sw_val

    def _batch_size(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                          "going to be clipped")
        return int(np.clip(self.batch_size, 1, n))

    def _epoch_end(self, optimizer, X_val, y_val, sw_val, val_logits):
        """scikit-learn's end-of-epoch bookkeeping; True when training should stop."""
        self.t_ += self._n_train
        self.loss_curve_.append(self.loss_)
        if self.verbose:
            print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
        if self.early_stopping:
            score = self._val_score(val_logits, y_val, sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._keep_best()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]
        optimizer.iteration_ends(self.t_)
        if self._no_improvement_count > self.n_iter_no_change:
            if self.early_stopping:
                msg = ("Validation score did not improve more than tol=%f for %d consecutive "
                       "epochs." % (self.tol, self.n_iter_no_change))
            else:
                msg = ("Training loss did not improve more than tol=%f for %d consecutive "
                       "epochs." % (self.tol, self.n_iter_no_change))
            if optimizer.trigger_stopping(msg, self.verbose):
                return True
            self._no_improvement_count = 0
        return False

    def _val_score(self, probs, y_val, sw_val):
        if not np.isfinite(probs).all():
            return np.nan
        if self._is_classifier:
            return accuracy_score(y_val, self._decode(probs), sample_weight=sw_val)
        pred = probs.ravel() if probs.shape[1] == 1 else probs
        return r2_score(y_val, pred, sample_weight=sw_val)

    def _val_loss(self, probs, yb_val, sw_val):
        reg = sum(float(np.dot(c.ravel(), c.ravel())) for c in self._coefs_now())
        sw_sum = len(probs) if sw_val is None else sw_val.sum()
        return float(_data_loss(self._loss_kind(), yb_val, probs, sw_val)
                     + 0.5 * self.alpha * reg / sw_sum)

    def _max_iter_warning(self):
        warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the "
                      "optimization hasn't converged yet." % self.max_iter, ConvergenceWarning)

    # -- the fused back end --

    def _fit_fused(self, X, y, incremental, acts, drops, dt):
        X_train, y_train, _, X_val, y_val, _ = self._early_split(X, y, None, incremental)
        yb_val = y_val
        if y_val is not None and self._is_classifier:
            y_val = self._label_binarizer.inverse_transform(y_val.ravel() if y_val.shape[1] == 1
                                                            else y_val)
        n = self._n_train = X_train.shape[0]
        bs = self._batch_size(n)
        k = self.n_outputs_
        kind = self._loss_kind()
        if kind == "log_loss":          # softmax + cross-entropy on labels: the same objective
            cw = None
            if getattr(self, "class_weight", None) is not None:
                cw = np.asarray(self._class_weights, dtype=dt)
            loss, scale, report = _loss.CrossEntropyLoss(weight=cw), 1.0, 1.0
            target = np.ascontiguousarray(y_train.argmax(axis=1), dtype=np.int64)
        elif kind == "binary_log_loss":  # mean over n*k elements: gradient 1/k of sklearn's
            loss, scale, report = _loss.BCEWithLogitsLoss(), 1.0 / k, float(k)
            target = np.ascontiguousarray(y_train)
        else:                            # mean squared error: gradient 2/k of sklearn's
            loss, scale, report = _loss.MSELoss(), 2.0 / k, 0.5
            target = np.ascontiguousarray(y_train)
        model = self._model(acts, drops, dt, train=True)
        self._live = model
        l2 = scale * self.alpha   # the C step adds l2 * W / rows to the weight gradients
        if self.solver == "adam":
            state = getattr(self, "_fused_state", None) if incremental else None
            opt = _optim.Adam(model.parameters(), lr=self.learning_rate_init,
                              betas=(self.beta_1, self.beta_2), eps=self.epsilon * scale)
            lr_scale = 1.0
        else:
            state = getattr(self, "_fused_state", None) if incremental else None
            nesterov = bool(self.nesterovs_momentum and self.momentum > 0)
            opt = _optim.SGD(model.parameters(), lr=self.learning_rate_init / scale,
                             momentum=self.momentum, nesterov=nesterov)
            lr_scale = 1.0 / scale
        if state is not None and state[0] == self.solver:
            opt.load_state_dict(state[1])
            sched = state[2]
            sched.group = opt.param_groups[0]
            sched.group["lr"] = sched.learning_rate * lr_scale
        else:
            sched = _FusedLR(opt, self, lr_scale)
        if self.device == "cuda":
            opt.param_groups[0]["weight_decay"] = l2 / bs   # the GPU step has no weights-only L2
            model.to("cuda")
            plan = None
        else:
            plan = _fused.training_plan(model, loss, opt, X_train, target, bs, [], l2=l2,
                                        adam_eps_uncorrected=True)
            if plan is None:   # the estimator only builds what the fused step supports
                raise RuntimeError("internal error: the fused step refused the estimator's "
                                   "network; please report it")
        lins = [m for m in model if isinstance(m, _nn.Linear)]
        order = np.arange(n, dtype=np.int64)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    order = _shuffled(order, self._random_state)
                key = int(self._random_state.randint(2 ** 31)) if any(drops) else 0
                if plan is not None:
                    loss_sum, _ = plan.train(X_train, target, order, bs, key)
                    data_loss = loss_sum / n * report
                else:
                    hist = _fn_fit(model, loss, opt, X_train[order], target[order], epochs=1,
                                   batch_size=bs, shuffle=False, seed=key, verbose=0)
                    data_loss = float(hist.history["loss"][-1]) * report
                    model._sync_to_host()
                reg = sum(float(np.dot(lin.weight.ravel(), lin.weight.ravel())) for lin in lins)
                self.loss_ = float(data_loss + 0.5 * self.alpha * reg * (-(-n // bs)) / n)
                self.n_iter_ += 1
                probs = None
                if X_val is not None:
                    probs = _out_act(self.out_activation_, model.predict(X_val))
                    self.validation_loss_curve_.append(self._val_loss(probs, yb_val, None))
                if self._epoch_end(sched, X_val, y_val, None, probs):
                    break
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    self._max_iter_warning()
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if self.device == "cuda":
            model.to("cpu")
        self._live = None
        self._fused_state = (self.solver, opt.state_dict(), sched)
        self._store(model)
        if self.early_stopping:
            self.coefs_, self.intercepts_ = self._best_coefs, self._best_intercepts

    def _coefs_now(self):
        if getattr(self, "_live", None) is not None:
            return [np.asarray(m.weight) for m in self._live if isinstance(m, _nn.Linear)]
        return self.coefs_

    def _keep_best(self):
        if getattr(self, "_live", None) is not None:
            lins = [m for m in self._live if isinstance(m, _nn.Linear)]
            self._best_coefs = [np.array(lin.weight.T) for lin in lins]
            self._best_intercepts = [np.array(lin.bias) for lin in lins]
        else:
            self._best_coefs = [c.copy() for c in self.coefs_]
            self._best_intercepts = [b.copy() for b in self.intercepts_]

    # -- the numpy back end (scikit-learn's formulas) --

    def _forward_all(self, X, acts):
        """(pre-activations, activations) of every layer; the last is the output activation."""
        a, pres, outs = X, [], [X]
        last = len(self.coefs_) - 1
        for i, (c, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            z = a @ c
            z += b
            if i < last:
                pre = z.copy() if acts[i] in ("leaky_relu", "gelu", "silu") else None
                a = _forward_act(acts[i], z)
            else:
                pre = None
                a = _out_act(self.out_activation_, z, exact=True)
            pres.append(pre)
            outs.append(a)
        return pres, outs

    def _backprop(self, X, y, sw, acts):
        """scikit-learn's _backprop: (loss, coef_grads, intercept_grads)."""
        n = X.shape[0]
        pres, outs = self._forward_all(X, acts)
        loss = _data_loss(self._loss_kind(), y, outs[-1], sw)
        values = 0
        for s in self.coefs_:
            s = s.ravel()
            values += np.dot(s, s)
        sw_sum = n if sw is None else sw.sum()
        loss += (0.5 * self.alpha) * values / sw_sum
        last = len(self.coefs_) - 1
        delta = outs[-1] - y
        if sw is not None:
            delta *= sw.reshape(-1, 1)
        coef_grads, intercept_grads = [None] * (last + 1), [None] * (last + 1)
        for i in range(last, -1, -1):
            g = outs[i].T @ delta
            g += self.alpha * self.coefs_[i]
            g /= sw_sum
            coef_grads[i] = g
            intercept_grads[i] = np.sum(delta, axis=0) / sw_sum
            if i > 0:
                delta = delta @ self.coefs_[i].T
                _backward_act(acts[i - 1], pres[i], outs[i], delta)
        return loss, coef_grads, intercept_grads

    def _fit_numpy(self, X, y, sample_weight, incremental, acts):
        params = self.coefs_ + self.intercepts_
        if not incremental or not hasattr(self, "_optimizer") or self._optimizer is None:
            if self.solver == "sgd":
                self._optimizer = _SGD(params, self.learning_rate_init, self.learning_rate,
                                       self.momentum, self.nesterovs_momentum, self.power_t)
            else:
                self._optimizer = _Adam(params, self.learning_rate_init, self.beta_1,
                                        self.beta_2, self.epsilon)
        X_train, y_train, sw_train, X_val, y_val, sw_val = self._early_split(
            X, y, sample_weight, incremental)
        yb_val = y_val
        if y_val is not None and self._is_classifier:
            y_val = self._label_binarizer.inverse_transform(y_val.ravel() if y_val.shape[1] == 1
                                                            else y_val)
        n = self._n_train = X_train.shape[0]
        bs = self._batch_size(n)
        idx = np.arange(n, dtype=int)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    idx = _shuffled(idx, self._random_state)
                acc = 0.0
                for sl in gen_batches(n, bs):
                    bi = idx[sl] if self.shuffle else sl
                    swb = None if sw_train is None else sw_train[bi]
                    loss, cg, ig = self._backprop(X_train[bi], y_train[bi], swb, acts)
                    acc += loss * (sl.stop - sl.start)
                    self._optimizer.update_params(params, cg + ig)
                self.n_iter_ += 1
                self.loss_ = acc / n
                probs = None
                if X_val is not None:
                    probs = self._forward_all(X_val, acts)[1][-1]
                    self.validation_loss_curve_.append(self._val_loss(probs, yb_val, sw_val))
                if self._epoch_end(self._optimizer, X_val, y_val, sw_val, probs):
                    break
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    self._max_iter_warning()
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if self.early_stopping:
            self.coefs_, self.intercepts_ = self._best_coefs, self._best_intercepts

    def _fit_lbfgs(self, X, y, sample_weight, acts):
        shapes = [c.shape for c in self.coefs_]
        sizes = [c.size for c in self.coefs_] + [b.size for b in self.intercepts_]
        bounds = np.cumsum([0] + sizes)
        nl = len(shapes)
        dt = self.coefs_[0].dtype

        def unpack(w):
            self.coefs_ = [w[bounds[i]:bounds[i + 1]].reshape(shapes[i]) for i in range(nl)]
            self.intercepts_ = [w[bounds[nl + i]:bounds[nl + i + 1]] for i in range(nl)]

        def loss_grad(w):
            unpack(w.astype(dt, copy=False))
            loss, cg, ig = self._backprop(X, y, sample_weight, acts)
            return loss, np.concatenate([g.ravel() for g in cg + ig])

        w0 = np.concatenate([c.ravel() for c in self.coefs_ + self.intercepts_])
        res = scipy.optimize.minimize(
            loss_grad, w0, method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        if res.status != 0:
            try:
                msg = res.message.decode("latin1")
            except AttributeError:
                msg = res.message
            warnings.warn("lbfgs failed to converge after %d iteration(s) (status=%d):\n%s\n\n"
                          "Increase the number of iterations to improve the convergence "
                          "(max_iter=%d).\nYou might also want to scale the data as shown in:\n"
                          "    https://scikit-learn.org/stable/modules/preprocessing.html"
                          % (res.nit, res.status, msg, self.max_iter), ConvergenceWarning)
        self.n_iter_ = min(res.nit, self.max_iter)
        self.loss_ = float(res.fun)
        unpack(np.asarray(res.x, dtype=dt))
        self.coefs_ = [c.copy() for c in self.coefs_]
        self.intercepts_ = [b.copy() for b in self.intercepts_]

    # -- public methods --

    def fit(self, X, y, sample_weight=None):
        """Fit the network to X and y.

        X: array-like or sparse matrix (densified), shape (n_samples, n_features), any real
        dtype (cast to ``dtype``). y: (n_samples,) or (n_samples, n_outputs): class labels
        (any hashable values; an indicator matrix is multi-label) or real targets.
        sample_weight: (n_samples,) non-negative weights, or None (the numpy back end).
        Returns self. Raises ValueError on bad parameters or data (naming them) and warns
        ConvergenceWarning when max_iter epochs end before convergence.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def _check_solver(self):
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                                 f"{self.solver} is not stochastic.")
        return True

    def plot_loss_curve(self, path=None, **kwargs):
        """Draw loss_curve_ (and validation_loss_curve_ and validation_scores_ with early
        stopping) per epoch with fastnn.plot.history; returns the matplotlib Figure and saves
        it to path when given. Needs the extra fastnn-core[plot]. Raises NotFittedError before fit
        and ValueError for solver='lbfgs' (no curve)."""
        check_is_fitted(self)
        if getattr(self, "loss_curve_", None) is None:
            raise ValueError("plot_loss_curve: this estimator has no loss_curve_ (solver "
                             f"{self.solver!r} records none; use 'sgd' or 'adam')")
        from .plot import history
        h = {"loss": list(self.loss_curve_)}
        if getattr(self, "validation_loss_curve_", None):
            h["val_loss"] = list(self.validation_loss_curve_)
        if getattr(self, "validation_scores_", None):
            h["val_score"] = list(self.validation_scores_)
        kwargs.setdefault("title", type(self).__name__)
        return history(h, path, **kwargs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


_COMMON_DOC = """
    Parameters are scikit-learn 1.9's (see sklearn.neural_network.{name}), plus:

    activation : str or list of str, default='relu'
        'identity', 'logistic', 'tanh', 'relu', 'leaky_relu', 'gelu' or 'silu'; a list gives
        one per hidden layer.
    dropout : float or list of float, default=0.0
        Dropout probability after each hidden layer's activation during training (fused back
        end only; masks from fastnn's counter-based generator seeded by random_state).
    dtype : numpy float type, default=numpy.float32
        float32 or float64: the dtype of the weights, of the computation and of the outputs.
    n_threads : int or None, default=None
        fastnn threads during fit and predict (None: fastnn's current setting).
    device : {{'cpu', 'cuda'}}, default='cpu'
        'cuda' trains through fastnn.cuda (needs the extra fastnn-core[cuda] and a GPU).
    backend : {{'fused', 'numpy'}}, default='fused'
        'fused': fastnn's native training step (PyTorch's update formulas, see the module
        docstring); 'numpy': scikit-learn's formulas verbatim, one Python step per batch.

    Attributes are scikit-learn's (``coefs_[i]`` has shape (n_in, n_out)), plus
    ``validation_loss_curve_`` (the validation loss per epoch with early_stopping, else None)
    and ``backend_`` (the back end that ran the last fit: 'fused', 'numpy' or 'cuda').
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = ("""Multi-layer perceptron classifier, a drop-in for
    sklearn.neural_network.MLPClassifier trained by fastnn.

    predict(X) -> labels (n_samples,) (or an indicator matrix for multi-label);
    predict_proba(X) -> (n_samples, n_classes) float of ``dtype``. Extra parameter
    ``class_weight``: None, a dict {label: weight} or 'balanced' (scikit-learn's
    compute_sample_weight).
    """ + _COMMON_DOC.format(name="MLPClassifier"))

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, class_weight=None, dtype=np.float32, n_threads=None,
                 device="cpu", backend="fused"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dropout = dropout
        self.class_weight = class_weight
        self.dtype = dtype
        self.n_threads = n_threads
        self.device = device
        self.backend = backend

    loss = "log_loss"
    _is_classifier = True

    def _out_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=self._fit_dtype, reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the "
                        f"previous call to fit. Previously got {self.classes_}, `y` has "
                        f"{classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError("`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        y = self._label_binarizer.transform(y).astype(bool)
        return X, y

    def _decode(self, probs):
        y = probs.ravel() if self.n_outputs_ == 1 else probs
        return self._label_binarizer.inverse_transform(y)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y). classes: every label, required on the first call (not for
        multi-label indicator targets). Returns self."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """Class labels for X (n_samples, n_features): shape (n_samples,), or the indicator
        matrix (n_samples, n_classes) for multi-label."""
        return self._decode(self._forward(X))

    def predict_proba(self, X):
        """Class probabilities for X (n_samples, n_features): (n_samples, n_classes) of
        ``dtype``, columns in the order of classes_."""
        p = self._forward(X)
        if self.n_outputs_ == 1:
            p = p.ravel()
            return np.vstack([1 - p, p]).T
        return p

    def predict_log_proba(self, X):
        """log(predict_proba(X)), shape (n_samples, n_classes)."""
        p = self.predict_proba(X)
        return np.log(p, out=p)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = ("""Multi-layer perceptron regressor, a drop-in for
    sklearn.neural_network.MLPRegressor trained by fastnn.

    loss: 'squared_error' (half squared error; fused) or 'poisson' (half Poisson deviance,
    exp output; numpy back end). predict(X) -> (n_samples,) or (n_samples, n_outputs).
    """ + _COMMON_DOC.format(name="MLPRegressor"))

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, dtype=np.float32, n_threads=None, device="cpu",
                 backend="fused"):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dropout = dropout
        self.dtype = dtype
        self.n_threads = n_threads
        self.device = device
        self.backend = backend

    def _check_params(self):
        if self.loss not in ("squared_error", "poisson"):
            raise ValueError(f"The 'loss' parameter of MLPRegressor must be 'squared_error' or "
                             f"'poisson'; got {self.loss!r}.")
        return super()._check_params()

    _is_classifier = False

    def _out_activation(self):
        return "exp" if self.loss == "poisson" else "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True, dtype=self._fit_dtype, reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y). Returns self."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """Predictions for X (n_samples, n_features): (n_samples,) for one target, else
        (n_samples, n_outputs), of ``dtype``."""
        p = self._forward(X)
        return p.ravel() if p.shape[1] == 1 else p


# ---- wrappers of any fastnn model -------------------------------------------------------------

def _default_module(n_features, n_outputs, hidden_layer_sizes=(100,), activation="relu"):
    """An MLP: Linear + activation per hidden size, then a Linear output layer."""
    layers, width = [], n_features
    for h in hidden_layer_sizes:
        layers += [_nn.Linear(width, h), _act_layer(activation)()]
        width = h
    return _nn.Sequential(*layers, _nn.Linear(width, n_outputs))


class _BaseNeuralNet(BaseEstimator):
    """Shared by NeuralNetClassifier and NeuralNetRegressor."""

    def _check(self):
        name = type(self).__name__
        if self.module is not None and not callable(self.module) and not isinstance(
                self.module, _nn.Module):
            raise ValueError(f"The 'module' parameter of {name} must be None, a fastnn Module "
                             f"or a callable (n_features, n_outputs, **module_params) -> "
                             f"Module; got {type(self.module).__name__}.")
        for key in ("max_epochs", "batch_size"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"The '{key}' parameter of {name} must be an int >= 1; got "
                                 f"{v!r}.")
        if not (isinstance(self.lr, numbers.Real) and self.lr > 0):
            raise ValueError(f"The 'lr' parameter of {name} must be a float > 0; got "
                             f"{self.lr!r}.")
        if not (isinstance(self.optimizer, type) and issubclass(self.optimizer, _optim.Optimizer)):
            raise ValueError(f"The 'optimizer' parameter of {name} must be a fastnn optimizer "
                             f"class (e.g. fastnn.Adam); got {self.optimizer!r}.")
        try:
            dt = np.dtype(self.dtype)
        except TypeError:
            dt = None
        if dt not in _DTYPES:
            raise ValueError(f"The 'dtype' parameter of {name} must be float32 or float64; got "
                             f"{self.dtype!r}.")
        return dt

    def _build(self, n_features, n_outputs, dt):
        params = dict(self.module_params or {})
        if self.module is None:
            model = _default_module(n_features, n_outputs, **params)
        elif isinstance(self.module, _nn.Module):
            model = copy.deepcopy(self.module)
        else:
            model = self.module(n_features, n_outputs, **params)
        if not isinstance(model, _nn.Module):
            raise TypeError(f"{type(self).__name__}: module must build a fastnn Module, got "
                            f"{type(model).__name__}")
        seed = check_random_state(self.random_state).randint(2 ** 31)
        model = _nn.Sequential(model, dtype=dt, seed=int(seed)) if not isinstance(
            model, _nn.Sequential) else _nn.Sequential(*list(model), dtype=dt, seed=int(seed))
        return model, int(seed)

    def _train(self, X, target, loss, dt, n_outputs):
        self.model_, seed = self._build(X.shape[1], n_outputs, dt)
        opt = self.optimizer(self.model_.parameters(), lr=self.lr,
                             **dict(self.optimizer_params or {}))
        if self.device != "cpu":
            self.model_.to(self.device)
        with _threads(self.n_threads):
            self.history_ = _fn_fit(self.model_, loss, opt, X, target, epochs=self.max_epochs,
                                    batch_size=min(self.batch_size, len(X)), shuffle=True,
                                    seed=seed, verbose=int(self.verbose), metrics=[])
        if self.device != "cpu":
            self.model_.to("cpu")
        self.loss_curve_ = list(self.history_.history["loss"])
        self.n_iter_ = len(self.loss_curve_)

    def _outputs(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        X = np.ascontiguousarray(_dense(X), dtype=_nn.param_dtype(self.model_))
        with _threads(self.n_threads):
            return self.model_.predict(X, batch_size=min(max(len(X), 1), 1024))

    def plot_loss_curve(self, path=None, **kwargs):
        """Draw the training history (fastnn.plot.history); returns the Figure."""
        check_is_fitted(self)
        from .plot import history
        kwargs.setdefault("title", type(self).__name__)
        return history(self.history_, path, **kwargs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class NeuralNetClassifier(ClassifierMixin, _BaseNeuralNet):
    """A classifier around any fastnn model, the fast counterpart of skorch's.

    module : None, a fastnn Module (deep-copied at fit) or a callable
        ``(n_features, n_classes, **module_params) -> Module`` returning logits (default: one
        hidden layer of 100 ReLU units; module_params may give hidden_layer_sizes and
        activation). The model is re-initialised from random_state at each fit.
    criterion : None (CrossEntropyLoss) or a fastnn loss class. optimizer : a fastnn optimizer
    class (default fastnn.Adam), built with lr and optimizer_params. max_epochs, batch_size:
    as fastnn.fit's epochs and batch_size (clipped to the number of samples).
    dtype : float32 (default) or float64. n_threads, device : as in MLPClassifier.

    Fitted: classes_, model_ (the fastnn model), history_ (fastnn.History), loss_curve_,
    n_iter_, n_features_in_ (and feature_names_in_). Training runs fastnn.fit, whose fused
    step takes a Sequential of Linear, activations and Dropout.
    """

    def __init__(self, module=None, *, criterion=None, optimizer=_optim.Adam, lr=0.001,
                 max_epochs=10, batch_size=128, module_params=None, optimizer_params=None,
                 random_state=None, verbose=0, dtype=np.float32, n_threads=None, device="cpu"):
        self.module = module
        self.criterion = criterion
        self.optimizer = optimizer
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.module_params = module_params
        self.optimizer_params = optimizer_params
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype
        self.n_threads = n_threads
        self.device = device

    def fit(self, X, y):
        """Train on X (n_samples, n_features) and labels y (n_samples,). Returns self."""
        dt = self._check()
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"],
                             dtype=(np.float64, np.float32))
        check_classification_targets(y)
        X = np.ascontiguousarray(_dense(X), dtype=dt)
        enc = LabelEncoder().fit(y)
        self.classes_ = enc.classes_
        target = enc.transform(y).astype(np.int64)
        loss = (self.criterion or _loss.CrossEntropyLoss)()
        self._train(X, target, loss, dt, len(self.classes_))
        return self

    def predict_proba(self, X):
        """Softmax of the model's logits: (n_samples, n_classes) of ``dtype``."""
        z = self._outputs(X)
        return _out_act("softmax", z)

    def predict(self, X):
        """Labels (n_samples,) of the largest logit."""
        z = self._outputs(X)
        return self.classes_[np.argmax(z, axis=1)]


class NeuralNetRegressor(RegressorMixin, _BaseNeuralNet):
    """A regressor around any fastnn model (see NeuralNetClassifier; criterion default
    MSELoss; y of shape (n_samples,) or (n_samples, n_outputs))."""

    def __init__(self, module=None, *, criterion=None, optimizer=_optim.Adam, lr=0.001,
                 max_epochs=10, batch_size=128, module_params=None, optimizer_params=None,
                 random_state=None, verbose=0, dtype=np.float32, n_threads=None, device="cpu"):
        self.module = module
        self.criterion = criterion
        self.optimizer = optimizer
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.module_params = module_params
        self.optimizer_params = optimizer_params
        self.random_state = random_state
        self.verbose = verbose
        self.dtype = dtype
        self.n_threads = n_threads
        self.device = device

    def fit(self, X, y):
        """Train on X (n_samples, n_features) and y (n_samples,) or (n_samples, n_outputs).
        Returns self."""
        dt = self._check()
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True, dtype=(np.float64, np.float32))
        X = np.ascontiguousarray(_dense(X), dtype=dt)
        self._single = y.ndim == 1
        target = np.ascontiguousarray(y.reshape(len(y), -1), dtype=dt)
        loss = (self.criterion or _loss.MSELoss)()
        self._train(X, target, loss, dt, target.shape[1])
        return self

    def predict(self, X):
        """Predictions (n_samples,) or (n_samples, n_outputs) of ``dtype``."""
        z = self._outputs(X)
        return z.ravel() if self._single else z

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
