"""Optimizers with PyTorch's arguments, defaults and update formulas (the kernels of
fastnn.ops do the arithmetic; this module keeps the state and the step counts).

``params`` is an iterable of Parameters (``model.parameters()``) or of dicts, PyTorch's param
groups (``{"params": [...], "lr": 0.01}``; missing options take the optimizer's defaults).
When a group holds every parameter of a model's flat buffer, one kernel call updates them all;
other parameters are updated one by one. The results are the same.

Where fastnn differs from PyTorch: ``zero_grad()`` writes zeros (gradients are never None);
state buffers are created on the first step of each parameter, as PyTorch does, and one step
count is kept per flat buffer.
"""
import math

import numpy as np

from . import _guard, ops
from .nn import Parameter


class _Chunk:
    """Parameters updated by one kernel call: flat views of their data and gradients, the
    (param, offset) pairs they cover, the state buffers and the step count."""

    __slots__ = ("data", "grad", "members", "state", "step")

    def __init__(self, data, grad, members):
        self.data, self.grad, self.members = data, grad, members
        self.state, self.step = {}, 0

    def buffer(self, name, fill=0.0):
        if name not in self.state:
            self.state[name] = np.full(self.data.shape, fill, self.data.dtype)
        return self.state[name]


def _chunks(params):
    """Whole flat buffers where the group covers them, single parameters otherwise."""
    by_buffer = {}
    for p in params:
        by_buffer.setdefault(id(p._buffer), []).append(p)
    chunks = []
    for ps in by_buffer.values():
        buf = ps[0]._buffer
        if buf is not None and {id(p) for p in ps} == {id(p) for p in buf.params}:
            chunks.append(_Chunk(buf.data, buf.grad, [(p, p._offset) for p in ps]))
        else:
            chunks += [_Chunk(p.reshape(-1), p.grad.reshape(-1), [(p, 0)]) for p in ps]
    return chunks


class Optimizer:
    """Base class: subclasses set ``defaults``, check options in ``_check`` and update one
    chunk in ``_update(chunk, group)``."""

    def __init__(self, params, defaults):
        self.defaults = defaults
        if isinstance(params, (Parameter, np.ndarray)):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Parameters "
                            f"(model.parameters()) or of dicts, got one array")
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups, self._groups_chunks, self._guard_keys = [], [], [self]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group):
        """Add a dict {"params": [...], option: value, ...} (missing options: the defaults)."""
        name = type(self).__name__
        params = group["params"]
        params = [params] if isinstance(params, np.ndarray) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if not isinstance(p, Parameter) or p.grad is None:
                raise TypeError(f"{name}: parameters must be fastnn Parameters "
                                f"(model.parameters()), got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError(f"{name}: a parameter appears in more than one place")
            seen.add(id(p))
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise TypeError(f"{name}: unknown options {sorted(unknown)}")
        full = {**self.defaults, **group, "params": params}
        self._check(full)
        self.param_groups.append(full)
        self._groups_chunks.append(_chunks(params))
        keys = {id(k): k for k in self._guard_keys + [_guard.param_key(p) for p in params]}
        self._guard_keys = list(keys.values())   # the optimizer and its parameters' storage
        with _guard._lock:
            self._guards = _guard.guards_of(self._guard_keys)

    def _check(self, group):
        for key in ("lr", "weight_decay", "eps", "momentum", "lr_decay", "alpha"):
            if key in group and not 0.0 <= group[key] < float("inf"):
                raise ValueError(f"{type(self).__name__}: invalid {key} {group[key]!r} "
                                 f"(must be a finite number >= 0)")

    def zero_grad(self):
        """Set the gradients of all parameters to zero."""
        for chunks in self._groups_chunks:
            for c in chunks:
                c.grad.fill(0)

    def step(self):
        """One update of every parameter from its current gradient. RuntimeError when
        another thread is in fit or step on these parameters (nothing is changed)."""
        with _guard.guarded(None, "exclusive", f"{type(self).__name__}.step",
                            guards=self._guards):
            for group, chunks in zip(self.param_groups, self._groups_chunks):
                for c in chunks:
                    c.step += 1
                    self._update(c, group)

    # ---- state ----
    def _members(self):
        """(index, chunk, offset in the chunk, param) in PyTorch's parameter order."""
        where = {id(p): (c, off) for chunks in self._groups_chunks for c in chunks
                 for p, off in c.members}
        i = 0
        for g in self.param_groups:
            for p in g["params"]:
                yield (i, *where[id(p)], p)
                i += 1

    def state_dict(self):
        """{"state": {index: {"step": n, buffer name: array}}, "param_groups": [options with
        "params" as indices]}, as PyTorch (arrays are copies)."""
        state = {}
        for i, c, off, p in self._members():
            if c.step:
                s = {"step": c.step}
                s.update({k: np.array(v[off:off + p.size].reshape(p.shape))
                          for k, v in c.state.items()})
                state[i] = s
        groups, i = [], 0
        for g in self.param_groups:
            d = {k: v for k, v in g.items() if k != "params"}
            d["params"] = list(range(i, i + len(g["params"])))
            i += len(g["params"])
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore options, step counts and buffers; everything is checked first."""
        self._check_state(state_dict)
        for g, saved in zip(self.param_groups, state_dict["param_groups"]):
            g.update({k: tuple(v) if isinstance(v, list) else v
                      for k, v in saved.items() if k != "params"})
        state = {int(k): v for k, v in state_dict["state"].items()}
        for chunks in self._groups_chunks:
            for c in chunks:
                c.step, c.state = 0, {}
        for i, c, off, p in self._members():
            if i in state:
                c.step = int(state[i]["step"])
                for k, v in state[i].items():
                    if k != "step":
                        c.buffer(k)[off:off + p.size] = np.asarray(v).reshape(-1)

    def _check_state(self, sd):
        name = type(self).__name__
        if not isinstance(sd, dict) or set(sd) != {"state", "param_groups"}:
            raise ValueError(f"{name}.load_state_dict: expected a dict with keys 'state' and "
                             f"'param_groups'")
        groups = sd["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(s.get("params", ())) != len(g["params"])
                for s, g in zip(groups, self.param_groups)):
            raise ValueError(f"{name}.load_state_dict: the saved parameter groups "
                             f"({[len(s.get('params', ())) for s in groups]} parameters) do "
                             f"not match this optimizer's "
                             f"({[len(g['params']) for g in self.param_groups]})")
        for s in groups:
            unknown = set(s) - set(self.defaults) - {"params", "initial_lr"}
            if unknown:
                raise ValueError(f"{name}.load_state_dict: unknown options {sorted(unknown)} "
                                 f"(saved from another optimizer?)")
        state = {int(k): v for k, v in sd["state"].items()}
        steps = {}
        for i, c, _, p in self._members():
            if i not in state:
                continue
            s = state[i]
            if "step" not in s:
                raise ValueError(f"{name}.load_state_dict: state {i} has no 'step'")
            if steps.setdefault(id(c), s["step"]) != s["step"]:
                raise ValueError(f"{name}.load_state_dict: parameters sharing a flat buffer "
                                 f"have different step counts")
            for k, v in s.items():
                if k != "step" and np.shape(v) != p.shape:
                    raise ValueError(f"{name}.load_state_dict: state {i} '{k}' has shape "
                                     f"{np.shape(v)}, the parameter has {p.shape}")
        if len(state) > sum(len(g["params"]) for g in self.param_groups):
            raise ValueError(f"{name}.load_state_dict: more saved states than parameters")

    def __repr__(self):
        opts = ", ".join(f"{k}={v}" for k, v in self.param_groups[0].items() if k != "params")
        return f"{type(self).__name__}({opts})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay
    (torch.optim.SGD: the momentum buffer starts as the first gradient)."""

    _state_names = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _check(self, g):
        super()._check(g)
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("SGD: nesterov momentum requires a momentum and zero dampening")

    def _update(self, c, g):
        first = "momentum_buffer" not in c.state
        buf = c.buffer("momentum_buffer") if g["momentum"] != 0 else None
        ops.sgd_step(c.data, c.grad, buf, lr=g["lr"], momentum=g["momentum"],
                     dampening=g["dampening"], weight_decay=g["weight_decay"],
                     nesterov=g["nesterov"], maximize=g["maximize"], first_step=first)


class Adam(Optimizer):
    """Adam with bias correction and optional AMSGrad (torch.optim.Adam); weight_decay adds
    weight_decay * param to the gradient (L2), see AdamW for decoupled decay."""

    _decoupled = False
    _state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _check(self, g):
        super()._check(g)
        if len(g["betas"]) != 2 or not all(0.0 <= b < 1.0 for b in g["betas"]):
            raise ValueError(f"{type(self).__name__}: betas must be two numbers in [0, 1), "
                             f"got {g['betas']!r}")

    def _update(self, c, g):
        b1, b2 = g["betas"]
        ops.adam_step(c.data, c.grad, c.buffer("exp_avg"), c.buffer("exp_avg_sq"),
                      c.buffer("max_exp_avg_sq") if g["amsgrad"] else None, step=c.step,
                      lr=g["lr"], beta1=b1, beta2=b2, eps=g["eps"],
                      weight_decay=g["weight_decay"], decoupled_weight_decay=self._decoupled,
                      amsgrad=g["amsgrad"], maximize=g["maximize"])


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW: param *= 1 - lr * weight_decay)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize)


class RMSprop(Optimizer):
    """RMSprop with optional momentum and centering (torch.optim.RMSprop)."""

    _state_names = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, maximize=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))

    def _check(self, g):
        super()._check(g)
        if not g["alpha"] >= 0.0:
            raise ValueError(f"RMSprop: invalid alpha {g['alpha']!r} (must be >= 0)")

    def _update(self, c, g):
        ops.rmsprop_step(c.data, c.grad, c.buffer("square_avg"),
                         c.buffer("momentum_buffer") if g["momentum"] > 0 else None,
                         c.buffer("grad_avg") if g["centered"] else None, lr=g["lr"],
                         alpha=g["alpha"], eps=g["eps"], weight_decay=g["weight_decay"],
                         momentum=g["momentum"], centered=g["centered"],
                         maximize=g["maximize"])


class Adagrad(Optimizer):
    """Adagrad with learning-rate decay (torch.optim.Adagrad)."""

    _state_names = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, maximize=False):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize))

    def _check(self, g):
        super()._check(g)
        for key in ("lr_decay", "initial_accumulator_value"):
            if not g[key] >= 0.0:
                raise ValueError(f"Adagrad: invalid {key} {g[key]!r} (must be >= 0)")

    def _update(self, c, g):
        ops.adagrad_step(c.data, c.grad, c.buffer("sum", g["initial_accumulator_value"]),
                         step=c.step, lr=g["lr"], lr_decay=g["lr_decay"],
                         weight_decay=g["weight_decay"], eps=g["eps"], maximize=g["maximize"])


OPTIMIZERS = {c.__name__: c for c in (SGD, Adam, AdamW, RMSprop, Adagrad)}


def clip_grad_norm_(parameters, max_norm, norm_type=2.0):
    """Scale the gradients in place so that their global norm is at most max_norm, as
    torch.nn.utils.clip_grad_norm_ (factor max_norm / (norm + 1e-6), capped at 1). Returns
    the norm before clipping (a float; inf or nan when a gradient is not finite).

    parameters: a Parameter or an iterable of Parameters (``model.parameters()``).
    max_norm: a number >= 0 (inf: never clip). norm_type: a number > 0, or inf (the largest
    absolute value). Raises ValueError for a negative or NaN max_norm (PyTorch would reverse
    or wipe the gradients) or a norm_type that is not > 0, TypeError for non-numbers or
    arrays without a gradient.
    """
    params = [parameters] if isinstance(parameters, np.ndarray) else list(parameters)
    for p in params:
        if getattr(p, "grad", None) is None:
            raise TypeError(f"clip_grad_norm_: parameters must be fastnn Parameters "
                            f"(model.parameters()), got {type(p).__name__} without a grad")
    grads = [p.grad for p in params]
    for name, value in (("max_norm", max_norm), ("norm_type", norm_type)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                             np.floating)):
            raise TypeError(f"clip_grad_norm_: {name} must be a number, got "
                            f"{type(value).__name__}")
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not max_norm >= 0.0:
        raise ValueError(f"clip_grad_norm_: max_norm must be >= 0, got {max_norm!r}")
    if not norm_type > 0.0:
        raise ValueError(f"clip_grad_norm_: norm_type must be > 0 or inf, got {norm_type!r}")
    if not grads:
        return 0.0
    if norm_type == math.inf:
        total = max(float(np.max(np.abs(g), initial=0.0)) for g in grads)
    else:
        norms = [float(np.sum(np.abs(g, dtype=np.float64) ** norm_type)) ** (1 / norm_type)
                 for g in grads]
        total = math.fsum(n ** norm_type for n in norms) ** (1 / norm_type)
    coef = float(max_norm) / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return total
