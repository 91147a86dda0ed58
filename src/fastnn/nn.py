"""Models and layers: Module, Sequential, Linear, Conv2d, activations, Dropout, Flatten, and
for images (NCHW) MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, BatchNorm1d/2d, LayerNorm.

A layer has an explicit ``forward(x)`` and ``backward(dout)``: backward takes d(loss)/d(output),
adds the gradients of the layer's parameters into their ``.grad`` (gradients accumulate until
``zero_grad()``, as in PyTorch) and returns d(loss)/d(input). ``layer(x)`` is
``layer.forward(x)``. The textbook loop::

    model = fn.Sequential(fn.Linear(64, 128), fn.ReLU(), fn.Linear(128, 10), seed=0)
    out = model.forward(xb); value = loss.forward(out, yb); opt.zero_grad()
    model.backward(loss.backward()); opt.step()

Parameters: when a Sequential is built it allocates one flat array per dtype for all its
parameters and one for their gradients, copies the layers' values in, and rebinds every
``weight``/``bias`` to a view into it, so an optimizer updates the whole model with one kernel
call. ``model[0].weight`` is a :class:`Parameter` (an ndarray view) whose ``.grad`` is the
matching view of the gradient array. Assigning ``layer.weight = array`` copies into the
existing view (same shape and dtype required). Build the model before creating its optimizer:
building (and ``append``) makes new parameter views.

Writing your own layer: subclass Module, register parameters by assigning Parameters in
``__init__``, and write forward and backward with fastnn.ops (or numpy)::

    class Scale(fn.Module):
        '''y = x * s, one learned scale per feature.'''
        def __init__(self, features):
            super().__init__()
            self.s = fn.Parameter(np.ones(features, np.float32))
        def forward(self, x):
            self.x = x
            return x * self.s
        def backward(self, dout):
            self.s.grad += (dout * self.x).sum(axis=0)
            return dout * self.s

    model = fn.Sequential(fn.Linear(4, 8), Scale(8), fn.ReLU(), fn.Linear(8, 1))

It joins the flat buffer like the built-in layers (``model.state_dict()`` has "1.s"); use
``+=`` on ``.grad`` so gradients accumulate. fastnn.save can store such a model but
fastnn.load cannot rebuild it: pass ``model=`` to load its weights into one you built.
"""
import numpy as np

from . import _guard
from . import init as _init
from . import ops
from ._arrays import native

_ALIGN = 16  # parameters start on 16-element boundaries of the flat buffer (64 bytes in f32)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _float_dtype(dtype, where):
    dt = np.dtype(dtype)
    if dt not in _FLOATS:
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dt}")
    return dt


def param_dtype(module):
    """The dtype of the module's first parameter (float32 for a module without any)."""
    return next((p.dtype for p in module.parameters()), np.dtype(np.float32))


class Parameter(np.ndarray):
    """A parameter: an ndarray whose ``grad`` attribute is its gradient (same shape and dtype).

    Arithmetic on a Parameter gives plain ndarrays. ``Parameter(data)`` copies data into a new
    C-contiguous, aligned array in native byte order with a zero gradient: float64 stays
    float64, every other dtype (float16, '>f4', integers) becomes float32.
    """

    grad = None
    _buffer = None  # the _FlatBuffer it is a view of, if any
    _offset = 0     # its first element in that buffer

    def __new__(cls, data, grad=None):
        a = np.array(data, copy=True, order="C")
        a = a.astype(np.float64 if a.dtype.kind == "f" and a.dtype.itemsize == 8 else np.float32,
                     copy=False)
        p = a.view(cls)
        p.grad = np.zeros(a.shape, a.dtype) if grad is None else grad
        return p

    def __array_wrap__(self, obj, context=None, return_scalar=False):
        obj = obj.view(np.ndarray)
        return obj[()] if return_scalar else obj

    # pickle and copy.deepcopy keep the gradient (as an array of the copy's own)
    def __reduce_ex__(self, protocol):
        return (Parameter, (np.asarray(self), np.asarray(self.grad)))

    def __deepcopy__(self, memo):
        return Parameter(self, np.array(self.grad))


class _FlatBuffer:
    """One dtype's parameters (data) and gradients (grad) of a model, and their views."""

    __slots__ = ("data", "grad", "params")

    def __init__(self, data, grad, params):
        self.data, self.grad, self.params = data, grad, params


class Module:
    """Base class of layers and models (see the module docstring for writing one).

    ``preprocess``: the fastnn.Preprocess saved with the model (set by fastnn.load; None
    otherwise): ``model.preprocess.predict(model, X_raw)`` answers on raw data.
    """

    preprocess = None

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        self.training = True
        self._label = None  # "Linear(64, 32) at index 0" once inside a Sequential

    # ---- attributes: parameters and sub-modules are registered on assignment ----
    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() in __init__ "
                                 f"before assigning attributes")
        if name in params:
            self._assign(name, value)
        elif isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for table in ("_parameters", "_modules"):
            if name in d.get(table, ()):
                return d[table][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _assign(self, name, value):
        """Copy value into the existing parameter `name` (shape and dtype must match)."""
        p = self._parameters[name]
        if value is p:
            return
        v = np.asarray(value)
        where = f"{self._where()}.{name}"
        if v.shape != p.shape:
            raise ValueError(f"{where}: expected an array of shape {p.shape}, got {v.shape}")
        if v.dtype != p.dtype:
            raise TypeError(f"{where}: expected dtype {p.dtype}, got {v.dtype} "
                            f"(use .astype(np.{p.dtype}))")
        p[...] = v

    # ---- traversal ----
    def named_modules(self, prefix=""):
        """(name, module) for this module ('') and every descendant ('0', '0.1', ...)."""
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self):
        """(name, Parameter) pairs: own parameters first, then each child's ("0.weight")."""
        seen = set()
        for prefix, m in self.named_modules():
            for name, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self):
        """(name, ndarray) of the state that is not a parameter but is saved with the model
        (BatchNorm's running_mean, running_var, num_batches_tracked, as PyTorch names them):
        the attributes a module lists in ``_buffer_names`` that are not None."""
        for prefix, m in self.named_modules():
            for name in getattr(m, "_buffer_names", ()):
                b = getattr(m, name, None)
                if b is not None:
                    yield (f"{prefix}.{name}" if prefix else name), b

    # ---- training state ----
    def zero_grad(self):
        """Set every parameter's gradient to zero."""
        for p in self.parameters():
            p.grad.fill(0)

    def train(self, mode=True):
        """Training mode (Dropout active) for this module and all descendants; returns self."""
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def reset_parameters(self, rng=None):
        """Re-initialise this module's own parameters / random state from rng (no-op here)."""

    def state_dict(self):
        """Copies of the parameters by name ("0.weight", "0.bias", ...). On a model moved to
        cuda the CPU parameter views are refreshed from the device first."""
        self._sync_to_host()
        state = {name: np.array(p) for name, p in self.named_parameters()}
        state.update((name, np.array(b)) for name, b in self.named_buffers())
        return state

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` into the parameters. Everything is checked (keys, shapes,
        dtypes) before anything is copied. strict=False ignores missing and unexpected keys."""
        self._check_state(state, strict)
        self._sync_to_host()           # on cuda: keys not in state keep the device values
        for name, p in self.named_parameters():
            if name in state:
                p[...] = state[name]
        for name, b in self.named_buffers():
            if name in state:
                b[...] = state[name]
        self._sync_to_device()

    def _check_state(self, state, strict=True):
        if not isinstance(state, dict):
            raise TypeError(f"load_state_dict: expected a dict of arrays, got "
                            f"{type(state).__name__}")
        params = dict(self.named_parameters())
        params.update(self.named_buffers())
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys "
                           f"{unexpected}")
        for name, p in params.items():
            if name not in state:
                continue
            v = np.asarray(state[name])
            if v.shape != p.shape:
                raise ValueError(f"load_state_dict: '{name}' has shape {v.shape}, the model "
                                 f"expects {p.shape}")
            if v.dtype.newbyteorder("=") != p.dtype:     # byte order is converted on copy
                raise TypeError(f"load_state_dict: '{name}' has dtype {v.dtype}, the model "
                                f"expects {p.dtype}")

    # ---- device ----
    # A model moved with .to("cuda") keeps its parameters in device copies of its flat
    # buffers, held by the module .to() was called on (_device_root) as _device_params:
    # [(flat buffer, device array)]. Every module below it has _device and _device_root set.
    _device = "cpu"
    _device_root = None
    _device_params = None

    @property
    def device(self):
        """Where the parameters live: "cpu" (default) or "cuda" (after ``.to("cuda")``)."""
        return self._device

    def to(self, device):
        """Move the parameters to ``device`` ("cpu", "cuda" or "cuda:0") and return self.

        "cuda" uploads each flat parameter buffer once (fastnn.cuda.require() raises
        RuntimeError naming what is missing without numba or a GPU); the model must be a
        Sequential fastnn.cuda.train supports. On cuda, fastnn.fit/evaluate/predict run on
        the device and forward/backward raise. The CPU Parameter views (``model[0].weight``)
        are NOT updated during training: ``state_dict()``, ``fastnn.save`` and
        ``.to("cpu")`` refresh them from the device (``.to("cpu")`` copies into the same
        flat buffer, so the views stay valid). The optimizer's CPU state buffers and step
        count are written back by fit at the end of each epoch."""
        dev = _parse_device(device)
        root = self._device_root
        if root is not None and root is not self:
            raise RuntimeError(f"{self._where()}: it was moved to {root._device} as part of "
                               f"{root._short()}; call .to() on that model")
        if dev == self._device:
            return self
        if dev == "cpu":
            self._sync_to_host()
            for m in self.modules():
                object.__setattr__(m, "_device", "cpu")
                object.__setattr__(m, "_device_root", None)
            object.__setattr__(self, "_device_params", None)
            return self
        from . import cuda as _cuda
        _cuda.require()
        from numba import cuda as _nb_cuda

        from .cuda import train as _cuda_train
        _cuda_train.check_model(self)
        buffers = []
        for p in self.parameters():
            if p._buffer is not None and all(p._buffer is not b for b in buffers):
                buffers.append(p._buffer)
        object.__setattr__(self, "_device_params",
                           [(b, _nb_cuda.to_device(b.data)) for b in buffers])
        for m in self.modules():
            object.__setattr__(m, "_device", dev)
            object.__setattr__(m, "_device_root", self)
        return self

    def _sync_to_host(self):
        """On cuda: copy the device parameters into the CPU flat buffers (the Parameter views
        then hold the current values); a no-op on the CPU."""
        root = self._device_root
        for buf, d in (root._device_params or ()) if root is not None else ():
            d.copy_to_host(buf.data)

    def _sync_to_device(self):
        """On cuda: copy the CPU flat buffers to the device parameters."""
        root = self._device_root
        for buf, d in (root._device_params or ()) if root is not None else ():
            d.copy_to_device(buf.data)

    def _check_host(self):
        if self._device != "cpu":
            raise RuntimeError(f"{self._where()}: model is on {self._device}: use "
                               f"fastnn.fit/evaluate/predict, or model.to('cpu')")

    # ---- computation ----
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} must define forward(x)")

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__} must define backward(dout)")

    def __call__(self, x):
        return self.forward(x)

    @_guard.for_reading
    def predict(self, X, batch_size=256, comm=None):
        """Forward pass over X in batches, in evaluation mode (the previous mode is restored).
        X is converted to the model's dtype; a 1-D X is one sample and gives one row, and so
        is one (C, H, W) image for a model whose first layer takes images (Conv2d, the 2-d
        pools, BatchNorm2d), as PyTorch's unbatched input.
        Several threads may predict at once only on a model in evaluation mode that no
        thread trains (else RuntimeError). comm: split the rows between its ranks (see
        fastnn.distributed.predict); every rank gets the whole output."""
        if comm is not None:
            from .distributed import predict
            return predict(self, X, comm, batch_size)
        X, one = self._predict_input(X, batch_size)
        if one:
            return self.predict(X, batch_size)[0]
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            outs = [self.forward(X[i:i + batch_size])
                    for i in range(0, max(len(X), 1), batch_size)]
        finally:
            for m, mode in modes:
                m.training = mode
        return np.concatenate(outs)

    def _input_layer(self):
        """The layer whose in_features fixes the model's input width (None: unknown)."""
        return self if isinstance(getattr(self, "in_features", None), int) else None

    def _in_features(self):
        """The number of input features the model takes (None: unknown)."""
        layer = self._input_layer()
        return None if layer is None else layer.in_features

    _takes_images = False   # a layer of (N, C, H, W) inputs (Conv2d, the 2-d pools, BatchNorm2d)

    def _image_input(self):
        """True when the model's first layer takes images, so that one (C, H, W) array is one
        sample, as an unbatched input to PyTorch's Conv2d."""
        return self._takes_images

    def _predict_input(self, X, batch_size):
        """(X as a numpy array of the model's dtype, whether it was one 1-D sample); raises
        ValueError naming X's shape when it cannot be the model's input."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"predict: batch_size must be an int >= 1, got {batch_size!r}")
        a = np.asarray(X)
        if a.dtype.kind not in "fiub":
            raise TypeError(f"predict: X must be a numeric array, got dtype {a.dtype}")
        a = native(a, dtype=param_dtype(self))     # native byte order, aligned
        k = self._in_features()
        expect = "" if k is None else (f"; the model expects samples of {k} features: an "
                                       f"array of shape (n_samples, {k}), or one sample of "
                                       f"shape ({k},)")
        if a.ndim == 0 or (k is not None and (a.ndim > 2 or a.shape[-1] != k)):
            raise ValueError(f"predict: X has shape {a.shape}{expect}")
        if a.ndim == 1 or (a.ndim == 3 and self._image_input()):
            return a[None], True
        return a, False

    def _last_layer(self):
        return self

    def predict_proba(self, X, batch_size=256):
        """Class probabilities for X (n, features) -> (n, classes), or one sample (features,)
        -> (classes,), in evaluation mode:

        - a model ending in Softmax: its output;
        - a single-output (binary) head: [1 - p, p] with p = sigmoid(logit) (or the output of a
          final Sigmoid), so the shape is (n, 2) as in scikit-learn;
        - any other multi-column head: the softmax of the logits.

        float32 or float64 (the model's dtype). ValueError for a head whose output is not
        (n, k) (and as predict for a bad X).
        """
        out = self.predict(X, batch_size)
        one = out.ndim == 1
        out = out[None] if one else out
        if out.ndim != 2:
            raise ValueError(f"predict_proba: the model's output has shape {out.shape}; "
                             f"expected (n_samples, classes)")
        last = self._last_layer()
        out = np.ascontiguousarray(out)
        if isinstance(last, Softmax):
            p = out
        elif out.shape[1] == 1:
            pos = out if isinstance(last, Sigmoid) else ops.sigmoid(out)
            p = np.concatenate([1 - pos, pos], axis=1)
        else:
            p = ops.softmax(out)
        return p[0] if one else p

    def summary(self, input_shape=None, print_fn=None):
        """Print a Keras-style table of the layers: name (type), output shape (None for the
        batch axis) and parameter count, then the totals. input_shape: the shape of one sample
        (default: (in_features,) of the first Linear layer); layers other than the built-in
        ones get their output shape from a forward pass of one zero sample in evaluation mode
        ("?" when it fails). print_fn: called with each line (default: print). Returns None.
        """
        layers = list(self._summary_layers())
        shape = tuple(input_shape) if input_shape is not None else (
            None if self._in_features() is None else (self._in_features(),))
        rows = []
        for name, layer in layers:
            shape = _output_shape(layer, shape)
            shown = "?" if shape is None else str((None, *shape)).replace(",)", ")")
            n = sum(p.size for p in layer.parameters())
            rows.append((f"{name} ({type(layer).__name__})", shown, f"{n:,}"))
        head = ("Layer (type)", "Output Shape", "Param #")
        w = [max(len(r[i]) for r in rows + [head]) + 4 for i in range(3)]
        line = lambda r: r[0].ljust(w[0]) + r[1].ljust(w[1]) + r[2].rjust(w[2] - 4)
        total = sum(p.size for p in self.parameters())
        nbytes = sum(p.nbytes for p in self.parameters())
        size = f"{nbytes / 1024:.2f} KB" if nbytes < 1 << 20 else f"{nbytes / 2 ** 20:.2f} MB"
        out = print_fn or print
        out(f'Model: "{type(self).__name__}"')
        out("=" * sum(w))
        out(line(head))
        out("=" * sum(w))
        for i, r in enumerate(rows):
            out(line(r))
            out(("=" if i == len(rows) - 1 else "-") * sum(w))
        out(f"Total params: {total:,} ({size})")
        out(f"Trainable params: {total:,} ({size})")
        out("Non-trainable params: 0 (0.00 B)")

    def _summary_layers(self):
        return iter([("0", self)]) if not self._modules else iter(self._modules.items())

    # ---- description ----
    def extra_repr(self):
        return ""

    def _short(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def _where(self):
        return self._label or self._short()

    def __repr__(self):
        if not self._modules:
            return self._short()
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ")
                 for name, m in self._modules.items()]
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    def get_config(self):
        """Constructor arguments that rebuild this layer (None: not rebuildable by load)."""
        return None


class Sequential(Module):
    """Layers applied in order. ``model[i]``, ``model[a:b]`` (a Sequential sharing the same
    layers and parameters), ``len(model)``, iteration and ``append(layer)`` work as in PyTorch.

    dtype: cast every parameter to float32 or float64 (default: keep the layers' dtypes).
    seed: re-initialise every layer's parameters (and Dropout's generator) in order from
    ``numpy.random.default_rng(seed)``, so the model is the same whatever was drawn before.
    """

    def __init__(self, *layers, dtype=None, seed=None):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be a fastnn Module, got "
                                f"{type(layer).__name__}")
            self._modules[str(i)] = layer
        self._cast = None if dtype is None else _float_dtype(dtype, "Sequential")
        if seed is not None:
            rng = _init.generator(seed)
            for m in self.modules():
                m.reset_parameters(rng)
        self._build()

    @classmethod
    def _view(cls, layers):
        """A Sequential of existing layers that keeps their parameter views (for slices)."""
        s = cls.__new__(cls)
        Module.__init__(s)
        s._cast = None
        for i, layer in enumerate(layers):
            s._modules[str(i)] = layer
        return s

    def _build(self):
        """Move all parameters into one flat buffer per dtype and rebind the layers to views."""
        groups = {}
        for _, p in self.named_parameters():
            groups.setdefault(self._cast or p.dtype, []).append(p)
        new = {}
        for dt, params in groups.items():
            offsets, total = [], 0
            for p in params:
                offsets.append(total)
                total += -(-p.size // _ALIGN) * _ALIGN
            data, grad = np.zeros(total, dt), np.zeros(total, dt)
            buf = _FlatBuffer(data, grad, [])
            for p, off in zip(params, offsets):
                view = slice(off, off + p.size)
                data[view] = p.ravel()
                grad[view] = p.grad.ravel()
                q = data[view].reshape(p.shape).view(Parameter)
                q.grad = grad[view].reshape(p.shape)
                q._buffer, q._offset = buf, off
                buf.params.append(q)
                new[id(p)] = q
        for name, m in self.named_modules():
            m._parameters.update({k: new[id(p)] for k, p in m._parameters.items()})
            if self._cast is not None and hasattr(m, "_cast_buffers"):
                m._cast_buffers(self._cast)   # running statistics follow dtype=

            if name:
                m._label = f"{m._short()} at index {name}"

    def __getitem__(self, index):
        layers = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential._view(layers[index])
        return layers[index]

    def _short(self):
        """'Sequential(Conv2d(1, 6), ReLU(), ...)': the first four layers and the count, for
        error messages (repr(model) prints every layer)."""
        names = [m._short() for m in self]
        more = f", ... ({len(names)} layers)" if len(names) > 4 else ""
        return f"Sequential({', '.join(names[:4])}{more})"

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, layer):
        """Add a layer at the end (and rebuild the flat buffer: create optimizers after)."""
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.append: expected a fastnn Module, got "
                            f"{type(layer).__name__}")
        self._modules[str(len(self))] = layer
        self._build()
        return self

    def forward(self, x):
        self._check_host()
        for layer in self:
            x = layer.forward(x)
        return x

    @_guard.for_reading
    def predict(self, X, batch_size=256, comm=None):
        """Forward pass over X (n, features) in batches in evaluation mode -> (n, outputs); one
        sample of shape (features,) gives one row (outputs,); a model starting with Conv2d takes
        X (n, C, H, W), and one image (C, H, W) gives one row. A model of supported layers (Linear, Conv2d, pools, BatchNorm,
        activations, Dropout, Flatten) runs it in one native call per batch (fastnn._fused,
        fastnn.plan), with the same numbers.
        ValueError naming X's shape when it does not fit the first Linear layer. Several
        threads may predict at once only on a model in evaluation mode that no thread trains
        (else RuntimeError). comm: the rows split between its ranks
        (fastnn.distributed.predict)."""
        from . import _fused

        if comm is not None:
            from .distributed import predict
            return predict(self, X, comm, batch_size)

        if self._device != "cpu":
            from .cuda import train as _cuda_train
            return _cuda_train.predict(self, X, batch_size)
        X, one = self._predict_input(X, batch_size)
        if one:
            return self.predict(X, batch_size)[0]
        self._input_shape = tuple(X.shape[1:])     # saved with the model (fastnn.save)
        net = (_fused.inference_net(self, batch_size, X.shape[1:])
               if X.ndim in (2, 4) and len(X) else None)
        if net is None or (net.input_shape is None and X.shape[1] != net.in_features):
            return super().predict(X, batch_size)
        return net.forward(X)

    def _first_layer(self):
        """The first layer that fixes the input's shape (activations, Dropout and Softmax
        take any), or None."""
        return next((layer for layer in self
                     if not isinstance(layer, (_Activation, Dropout, Softmax))), None)

    def _input_layer(self):
        first = self._first_layer()
        return None if first is None else first._input_layer()

    def _image_input(self):
        first = self._first_layer()
        return first is not None and first._image_input()

    def _last_layer(self):
        layers = list(self)
        return layers[-1]._last_layer() if layers else self

    def backward(self, dout, input_grad=True):
        """Backward through the layers in reverse; returns d(loss)/d(input). input_grad=False
        returns None and skips that gradient's product in a first Linear layer (fit uses it)."""
        self._check_host()
        layers = list(self)
        for i in range(len(layers) - 1, -1, -1):
            if i == 0 and not input_grad and isinstance(layers[0], (Linear, Conv2d)):
                return layers[0].backward(dout, input_grad=False)
            dout = layers[i].backward(dout)
        return dout if input_grad else None

    def get_config(self):
        return {}


# ---- layers ----------------------------------------------------------------------------------

def _parse_device(device):
    if isinstance(device, str):
        d = device.strip().lower()
        if d in ("cpu", "cuda", "cuda:0"):
            return "cpu" if d == "cpu" else "cuda"
    raise ValueError(f"to: argument 'device' must be 'cpu', 'cuda' or 'cuda:0', got "
                     f"{device!r}")


def _check_float(layer, x):
    x = np.ascontiguousarray(native(x))     # what every kernel reads without a copy
    if x.dtype not in _FLOATS:
        raise TypeError(f"{layer._where()}: expected a float32 or float64 array, got dtype "
                        f"{x.dtype}")
    return x


def _need(layer, saved):
    if saved is None:
        raise RuntimeError(f"{layer._where()}: backward called before forward")
    return saved


def _reset_weight_and_bias(layer, rng):
    """Draw layer.weight with its init and layer.bias (if any) as PyTorch's Linear and Conv2d
    do: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the default init, zeros otherwise."""
    shape, dt = layer.weight.shape, layer.weight.dtype
    rng = _init.generator(rng)
    if isinstance(layer.init, str) or layer.init is None:
        w = layer._init_fn(shape, rng, dtype=dt)
    else:
        w = layer._init_fn(shape, rng)
    layer.weight[...] = np.asarray(w).reshape(shape)
    if layer.bias is not None:
        if layer.init in (None, "default"):
            bound = 1.0 / np.sqrt(_init.fans(shape)[0])
            layer.bias[...] = _init.uniform(layer.bias.shape, rng, a=-bound, b=bound, dtype=dt)
        else:
            layer.bias[...] = 0


class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features), bias (out_features,).

    init: the weight initialiser, a name of fastnn.init or a callable f(shape, rng). The
    default is PyTorch's: kaiming_uniform with a = sqrt(5), i.e. U(-1/sqrt(in_features),
    1/sqrt(in_features)), and bias U(-1/sqrt(in_features), 1/sqrt(in_features)); with any
    other init the bias starts at zero. seed: draw from default_rng(seed) instead of the
    global generator.
    """

    def __init__(self, in_features, out_features, bias=True, init=None, dtype=np.float32,
                 seed=None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Linear: {name} must be an int >= 1, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.init = init
        self._init_fn = _init.resolve(init)
        dt = _float_dtype(dtype, "Linear")
        self.weight = Parameter(np.zeros((self.out_features, self.in_features), dt))
        self.bias = Parameter(np.zeros(self.out_features, dt)) if bias else None
        self._x = None
        self.reset_parameters(_init.generator(seed))

    def reset_parameters(self, rng=None):
        _reset_weight_and_bias(self, rng)

    def forward(self, x):
        self._check_host()
        x = _check_float(self, x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            got = f"{x.shape[1]}" if x.ndim == 2 else f"an array of shape {x.shape}"
            raise ValueError(f"{self._where()}: expected input with {self.in_features} "
                             f"features, got {got}")
        if x.dtype != self.weight.dtype:
            raise TypeError(f"{self._where()}: expected {self.weight.dtype} input like the "
                            f"weights, got {x.dtype} (use .astype(np.{self.weight.dtype}))")
        self._x = x
        return ops.matmul_bias_act(x, self.weight.T, self.bias)

    def backward(self, dout, input_grad=True):
        """Accumulate the weight and bias gradients; return dout @ weight (None when
        input_grad is False)."""
        self._check_host()
        x = _need(self, self._x)
        dout = native(dout)
        if dout.shape != (x.shape[0], self.out_features) or dout.dtype != x.dtype:
            raise ValueError(f"{self._where()}: backward expected a {x.dtype} gradient of "
                             f"shape {(x.shape[0], self.out_features)}, got {dout.dtype} "
                             f"{dout.shape}")
        ops.matmul(dout.T, x, out=self.weight.grad, beta=1.0)
        if self.bias is not None:
            ops.bias_grad(dout, out=self.bias.grad, beta=1.0)
        return ops.matmul(dout, self.weight) if input_grad else None

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

    def _short(self):
        return f"Linear({self.in_features}, {self.out_features})"

    def __repr__(self):
        return f"Linear({self.extra_repr()})"

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "dtype": str(self.weight.dtype)}


class _Activation(Module):
    """An element-wise layer: forward through `_f`, backward through `_df(dout, x)`."""

    def __init__(self):
        super().__init__()
        self._x = None

    def forward(self, x):
        self._x = _check_float(self, x)
        return self._f(self._x)

    def backward(self, dout):
        return self._df(native(dout), _need(self, self._x))

    def get_config(self):
        return {}


class ReLU(_Activation):
    """max(x, 0)."""
    _f = staticmethod(ops.relu)
    _df = staticmethod(ops.relu_backward)


class Sigmoid(_Activation):
    """1 / (1 + exp(-x))."""
    _f = staticmethod(ops.sigmoid)
    _df = staticmethod(ops.sigmoid_backward)


class Tanh(_Activation):
    """tanh(x)."""
    _f = staticmethod(ops.tanh)
    _df = staticmethod(ops.tanh_backward)


class SiLU(_Activation):
    """x * sigmoid(x)."""
    _f = staticmethod(ops.silu)
    _df = staticmethod(ops.silu_backward)


class LeakyReLU(_Activation):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def _f(self, x):
        return ops.leaky_relu(x, self.negative_slope)

    def _df(self, dout, x):
        return ops.leaky_relu_backward(dout, x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"

    def get_config(self):
        return {"negative_slope": self.negative_slope}


class GELU(_Activation):
    """x * Phi(x) (approximate='none') or its tanh approximation (approximate='tanh')."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def _f(self, x):
        return ops.gelu(x, self.approximate)

    def _df(self, dout, x):
        return ops.gelu_backward(dout, x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"

    def get_config(self):
        return {"approximate": self.approximate}


class Softmax(Module):
    """Softmax over the last axis. (For classification train on logits with
    CrossEntropyLoss instead: it includes the softmax.)"""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        self._y = ops.softmax(_check_float(self, x))
        return self._y

    def backward(self, dout):
        return ops.softmax_backward(native(dout), _need(self, self._y))

    def extra_repr(self):
        return "dim=-1"

    def get_config(self):
        return {}


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...)."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        x = native(x)
        if x.ndim < 1:
            raise ValueError(f"{self._where()}: expected an array with a batch axis, got a "
                             f"scalar")
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return native(dout).reshape(_need(self, self._shape))

    def get_config(self):
        return {}


class Dropout(Module):
    """In training mode zero each element with probability p and scale the rest by
    1 / (1 - p); in evaluation mode the identity. The mask comes from this layer's numpy
    Generator: ``seed=``, Sequential's ``seed=``, or fit's ``seed=`` (which reseeds it every
    epoch); without any, one is drawn from the global generator on first use."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.generator = None if seed is None else _init.generator(seed)
        self._mask = None

    def reset_parameters(self, rng=None):
        self.generator = np.random.default_rng(_init.generator(rng).integers(2 ** 63))

    def forward(self, x):
        x = _check_float(self, x)
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        if self.generator is None:
            self.reset_parameters()
        keep = self.generator.random(x.shape, dtype=x.dtype) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        self._mask = keep * x.dtype.type(scale)
        return x * self._mask

    def backward(self, dout):
        dout = native(dout)
        return dout if self._mask is None else dout * self._mask

    def extra_repr(self):
        return f"p={self.p}"

    def get_config(self):
        return {"p": self.p}


def _output_shape(layer, shape):
    """The output shape of one sample of `shape` through layer (None: unknown)."""
    if isinstance(layer, Linear):
        return (layer.out_features,) if shape is None or len(shape) == 1 else \
            (*shape[:-1], layer.out_features)
    if isinstance(layer, (_Activation, Dropout, Softmax)):
        return shape
    if shape is None:
        return None
    if isinstance(layer, Flatten):
        return (int(np.prod(shape)),)
    if isinstance(layer, Sequential):
        for sub in layer:
            shape = _output_shape(sub, shape)
        return shape
    modes = [(m, m.training) for m in layer.modules()]
    layer.eval()
    try:
        return tuple(np.asarray(layer.forward(np.zeros((1, *shape), param_dtype(layer))))
                     .shape[1:])
    except Exception:  # a custom layer that cannot run on zeros: shown as "?"
        return None
    finally:
        for m, mode in modes:
            m.training = mode


# ---- convolution -----------------------------------------------------------------------------

def _conv_pair_arg(v, name, lo):
    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(pair) != 2 or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool)
                                 and e >= lo for e in pair):
        raise ValueError(f"Conv2d: {name} must be an int >= {lo} or a pair of such ints, "
                         f"got {v!r}")
    return int(pair[0]), int(pair[1])


class Conv2d(Module):
    """2-D convolution over NCHW arrays, torch.nn.Conv2d's arguments and semantics.

    x (N, in_channels, H, W) -> (N, out_channels, H_out, W_out); weight
    (out_channels, in_channels/groups, kH, kW), bias (out_channels,). kernel_size, stride,
    dilation: int or pair; padding: int, pair, 'valid' or 'same' (stride 1). groups must
    divide both channel counts (groups == in_channels: depthwise). Default init as PyTorch:
    kaiming_uniform with a = sqrt(5) (U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in =
    in_channels/groups * kH * kW) and the bias from the same bound; with another ``init``
    the bias starts at zero. The kernels are fastnn.ops.conv2d / conv2d_backward (implicit
    GEMM). Raises ValueError for bad arguments or input shapes, TypeError for dtypes.
    """
    _takes_images = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, init=None, dtype=np.float32, seed=None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Conv2d: {name} must be an int >= 1, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.groups = int(groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2d: in_channels ({self.in_channels}) and out_channels "
                             f"({self.out_channels}) must be divisible by groups "
                             f"({self.groups})")
        self.kernel_size = _conv_pair_arg(kernel_size, "kernel_size", 1)
        self.stride = _conv_pair_arg(stride, "stride", 1)
        self.dilation = _conv_pair_arg(dilation, "dilation", 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Conv2d: padding must be 'same', 'valid', an int >= 0 or a "
                                 f"pair, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"Conv2d: padding='same' needs stride 1 (as PyTorch), got "
                                 f"stride {self.stride}")
            self.padding = padding
        else:
            self.padding = _conv_pair_arg(padding, "padding", 0)
        self.init = init
        self._init_fn = _init.resolve(init)
        dt = _float_dtype(dtype, "Conv2d")
        self.weight = Parameter(np.zeros((self.out_channels, self.in_channels // self.groups)
                                         + self.kernel_size, dt))
        self.bias = Parameter(np.zeros(self.out_channels, dt)) if bias else None
        self._x = None
        self.reset_parameters(_init.generator(seed))

    def reset_parameters(self, rng=None):
        _reset_weight_and_bias(self, rng)

    def _args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def forward(self, x):
        self._check_host()
        x = _check_float(self, x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self._where()}: expected input of shape (N, {self.in_channels}, "
                             f"H, W), got an array of shape {x.shape}")
        if x.dtype != self.weight.dtype:
            raise TypeError(f"{self._where()}: expected {self.weight.dtype} input like the "
                            f"weights, got {x.dtype} (use .astype(np.{self.weight.dtype}))")
        try:
            y = ops.conv2d(x, self.weight, self.bias, **self._args())
        except ValueError as e:
            raise ValueError(f"{self._where()}: {e}") from None
        self._x = x
        return y

    def backward(self, dout, input_grad=True):
        """Accumulate the weight and bias gradients; return d(loss)/d(x) (None when
        input_grad is False: the first layer's input needs none)."""
        self._check_host()
        x = _need(self, self._x)
        dout = np.asarray(dout)
        shape = ops.conv2d_output_shape(x.shape, self.weight.shape, **self._args())
        if dout.shape != shape or dout.dtype != x.dtype:
            raise ValueError(f"{self._where()}: backward expected a {x.dtype} gradient of "
                             f"shape {shape}, got {dout.dtype} {dout.shape}")
        dx, dw, db = ops.conv2d_backward(dout, x, self.weight, bias=self.bias is not None,
                                         input_grad=input_grad, **self._args())
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")

    def _short(self):
        return f"Conv2d({self.in_channels}, {self.out_channels})"

    def __repr__(self):
        return f"Conv2d({self.extra_repr()})"

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups,
                "bias": self.bias is not None, "dtype": str(self.weight.dtype)}


LAYERS = {c.__name__: c for c in (Sequential, Linear, ReLU, LeakyReLU, Sigmoid, Tanh, GELU,
                                  SiLU, Softmax, Dropout, Flatten, Conv2d)}


# ---- pooling and normalization layers (NCHW images) ------------------------------------------

def _int_or_pair(value, where, name, low, allow_none=False):
    """value as given (int or 2-sequence of ints, each >= low) after checking it."""
    if value is None and allow_none:
        return None
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(items) not in (1, 2) or (len(items) == 1 and isinstance(value, (tuple, list))) \
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low
                   for v in items):
        raise ValueError(f"{where}: {name} must be an int >= {low} or a pair of them, got "
                         f"{value!r}")
    return tuple(int(v) for v in items) if isinstance(value, (tuple, list)) else int(value)


def _check_image(layer, x):
    x = _check_float(layer, x)
    if x.ndim != 4:
        raise ValueError(f"{layer._where()}: expected a 4-D input (N, C, H, W), got shape "
                         f"{x.shape}")
    return x


class MaxPool2d(Module):
    """Max pooling over (N, C, H, W) inputs as torch.nn.MaxPool2d: windows of kernel_size
    (int or pair) moved by stride (default kernel_size), input padded by padding (<= half the
    kernel) with -inf. Output (N, C, (H + 2 padding - kernel) // stride + 1, ...). The first
    maximum of a window wins ties (its gradient goes there); NaN propagates."""
    _takes_images = True

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _int_or_pair(kernel_size, "MaxPool2d", "kernel_size", 1)
        self.stride = _int_or_pair(stride, "MaxPool2d", "stride", 1, allow_none=True)
        if self.stride is None:
            self.stride = self.kernel_size
        self.padding = _int_or_pair(padding, "MaxPool2d", "padding", 0)
        self._x = self._idx = None

    def forward(self, x):
        x = _check_image(self, x)
        try:
            y, self._idx = ops.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                          return_indices=True)
        except ValueError as e:
            raise ValueError(f"{self._where()}: {e}") from None
        self._x = x
        return y

    def backward(self, dout):
        return ops.max_pool2d_backward(np.asarray(dout), _need(self, self._x), self._idx,
                                       self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def get_config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding}


class AvgPool2d(Module):
    """Average pooling over (N, C, H, W) inputs as torch.nn.AvgPool2d (geometry as
    MaxPool2d): each window's sum over kernel_h * kernel_w (count_include_pad=True, the zero
    padding counted) or over its pixels inside the image."""
    _takes_images = True

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        self.kernel_size = _int_or_pair(kernel_size, "AvgPool2d", "kernel_size", 1)
        self.stride = _int_or_pair(stride, "AvgPool2d", "stride", 1, allow_none=True)
        if self.stride is None:
            self.stride = self.kernel_size
        self.padding = _int_or_pair(padding, "AvgPool2d", "padding", 0)
        self.count_include_pad = bool(count_include_pad)
        self._x = None

    def forward(self, x):
        x = _check_image(self, x)
        try:
            y = ops.avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                               self.count_include_pad)
        except ValueError as e:
            raise ValueError(f"{self._where()}: {e}") from None
        self._x = x
        return y

    def backward(self, dout):
        return ops.avg_pool2d_backward(np.asarray(dout), _need(self, self._x),
                                       self.kernel_size, self.stride, self.padding,
                                       self.count_include_pad)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, count_include_pad={self.count_include_pad}")

    def get_config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride,
                "padding": self.padding, "count_include_pad": self.count_include_pad}


class AdaptiveAvgPool2d(Module):
    """Global average pooling, torch.nn.AdaptiveAvgPool2d(1): (N, C, H, W) -> (N, C, 1, 1).
    Only output_size 1 (or (1, 1)) is supported."""
    _takes_images = True

    def __init__(self, output_size=1):
        super().__init__()
        if output_size not in (1, (1, 1), [1, 1]):
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be 1 or (1, 1) (global "
                             f"average pooling; other sizes are not supported), got "
                             f"{output_size!r}")
        self.output_size = 1 if output_size == 1 else (1, 1)
        self._x = None

    def forward(self, x):
        self._x = _check_image(self, x)
        return ops.adaptive_avg_pool2d(self._x)

    def backward(self, dout):
        return ops.adaptive_avg_pool2d_backward(np.asarray(dout), _need(self, self._x))

    def extra_repr(self):
        return f"output_size={self.output_size}"

    def get_config(self):
        return {"output_size": self.output_size}


class _BatchNorm(Module):
    """Batch normalization per channel (see BatchNorm1d / BatchNorm2d)."""

    _ndims = ()
    _buffer_names = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) \
                or num_features < 1:
            raise ValueError(f"{name}: num_features must be an int >= 1, got {num_features!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"{name}: eps must be a number >= 0, got {eps!r}")
        if momentum is not None and (isinstance(momentum, bool)
                                     or not isinstance(momentum, (int, float))
                                     or not 0 <= momentum <= 1):
            raise ValueError(f"{name}: momentum must be in [0, 1] or None (cumulative "
                             f"average), got {momentum!r}")
        self.num_features, self.eps = int(num_features), float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        dt = _float_dtype(dtype, name)
        c = self.num_features
        self.weight = Parameter(np.ones(c, dt)) if self.affine else None
        self.bias = Parameter(np.zeros(c, dt)) if self.affine else None
        if self.track_running_stats:
            self.running_mean = np.zeros(c, dt)
            self.running_var = np.ones(c, dt)
            self.num_batches_tracked = np.zeros((), np.int64)
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._saved = None

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self, rng=None):
        """Running statistics to 0 / 1, weight to 1, bias to 0 (as PyTorch; draws nothing)."""
        self.reset_running_stats()
        if self.affine:
            self.weight[...] = 1
            self.bias[...] = 0

    def _cast_buffers(self, dtype):
        """Sequential(dtype=...) casts the running statistics with the parameters."""
        if self.track_running_stats:
            self.running_mean = self.running_mean.astype(dtype)
            self.running_var = self.running_var.astype(dtype)

    def _dtype(self):
        return self.weight.dtype if self.affine else (
            self.running_mean.dtype if self.track_running_stats else None)

    def forward(self, x):
        self._check_host()
        x = _check_float(self, x)
        if x.ndim not in self._ndims or x.shape[1] != self.num_features:
            raise ValueError(f"{self._where()}: expected a {' or '.join(map(str, self._ndims))}"
                             f"-D input with {self.num_features} channels on axis 1, got shape "
                             f"{x.shape}")
        dt = self._dtype()
        if dt is not None and x.dtype != dt:
            raise TypeError(f"{self._where()}: expected {dt} input like the weights and "
                            f"running statistics, got {x.dtype} (use .astype(np.{dt}))")
        batch_stats = self.training or not self.track_running_stats
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        try:
            y, mean, invstd = ops.batch_norm(
                x, self.running_mean if self.track_running_stats else None,
                self.running_var if self.track_running_stats else None,
                self.weight, self.bias, training=batch_stats,
                momentum=0.0 if momentum is None else momentum, eps=self.eps,
                return_stats=True)
        except ValueError as e:
            if self.training and self.track_running_stats:
                self.num_batches_tracked -= 1
            raise ValueError(f"{self._where()}: {e}") from None
        self._saved = (x, mean, invstd, batch_stats)
        return y

    def backward(self, dout):
        self._check_host()
        x, mean, invstd, batch_stats = _need(self, self._saved)
        dout = np.asarray(dout)
        if dout.shape != x.shape or dout.dtype != x.dtype:
            raise ValueError(f"{self._where()}: backward expected a {x.dtype} gradient of "
                             f"shape {x.shape}, got {dout.dtype} {dout.shape}")
        dx, dw, db = ops.batch_norm_backward(dout, x, mean, invstd, self.weight,
                                             training=batch_stats)
        if self.affine:
            self.weight.grad += dw
            self.bias.grad += db
        return dx

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")

    def get_config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats,
                "dtype": str(self._dtype() or np.dtype(np.float32))}


class BatchNorm1d(_BatchNorm):
    """torch.nn.BatchNorm1d over (N, C) or (N, C, L): per channel, the batch mean and
    (biased) variance in train() — updating running_mean and the unbiased running_var with
    momentum (None: cumulative average) — the running statistics in eval();
    y = (x - mean) / sqrt(var + eps) * weight + bias. weight (C,) starts at 1, bias at 0.
    Training needs more than one value per channel (ValueError, as PyTorch)."""
    _ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """torch.nn.BatchNorm2d over (N, C, H, W): as BatchNorm1d, statistics over N*H*W values
    per channel."""
    _takes_images = True
    _ndims = (4,)


class LayerNorm(Module):
    """torch.nn.LayerNorm: normalizes over the trailing normalized_shape axes (int or tuple)
    of each sample with its own mean and (biased) variance; y = (x - mean) / sqrt(var + eps)
    * weight + bias, weight (ones) and bias (zeros) of shape normalized_shape when
    elementwise_affine (bias=False drops the bias)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) \
            else tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else None
        if not shape or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                            for v in shape):
            raise ValueError(f"LayerNorm: normalized_shape must be an int >= 1 or a non-empty "
                             f"tuple of them, got {normalized_shape!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"LayerNorm: eps must be a number >= 0, got {eps!r}")
        self.normalized_shape = tuple(int(v) for v in shape)
        self.eps, self.elementwise_affine = float(eps), bool(elementwise_affine)
        dt = _float_dtype(dtype, "LayerNorm")
        self.weight = Parameter(np.ones(self.normalized_shape, dt)) \
            if self.elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dt)) \
            if self.elementwise_affine and bias else None
        self._dt = dt
        self._saved = None

    def reset_parameters(self, rng=None):
        """Weight to 1, bias to 0 (as PyTorch; draws nothing)."""
        if self.weight is not None:
            self.weight[...] = 1
        if self.bias is not None:
            self.bias[...] = 0

    def forward(self, x):
        self._check_host()
        x = _check_float(self, x)
        dt = self.weight.dtype if self.weight is not None else x.dtype
        if x.dtype != dt:
            raise TypeError(f"{self._where()}: expected {dt} input like the weights, got "
                            f"{x.dtype} (use .astype(np.{dt}))")
        try:
            y, mean, rstd = ops.layer_norm(x, self.normalized_shape, self.weight, self.bias,
                                           self.eps, return_stats=True)
        except ValueError as e:
            raise ValueError(f"{self._where()}: {e}") from None
        self._saved = (x, mean, rstd)
        return y

    def backward(self, dout):
        self._check_host()
        x, mean, rstd = _need(self, self._saved)
        dout = np.asarray(dout)
        if dout.shape != x.shape or dout.dtype != x.dtype:
            raise ValueError(f"{self._where()}: backward expected a {x.dtype} gradient of "
                             f"shape {x.shape}, got {dout.dtype} {dout.shape}")
        dx, dw, db = ops.layer_norm_backward(dout, x, self.normalized_shape, mean, rstd,
                                             self.weight)
        if self.weight is not None:
            self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")

    def get_config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.bias is not None,
                "dtype": str(self.weight.dtype if self.weight is not None else self._dt)}


LAYERS.update({c.__name__: c for c in (MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, BatchNorm1d,
                                       BatchNorm2d, LayerNorm)})
