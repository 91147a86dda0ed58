"""Learning-rate schedulers with torch.optim.lr_scheduler's semantics and formulas.

Creating a scheduler sets each group's "initial_lr" and applies epoch 0's rate; call
``step()`` once per epoch after the optimizer's steps (fit does this when given
``scheduler=``; ReduceLROnPlateau's ``step(metric)`` gets the validation loss, or the
training loss without validation data). ``get_last_lr()`` lists the current rates.
The recursive (chainable) forms PyTorch uses are used here too, so rates match to the bit.
"""
import math


class LRScheduler:
    """Base class: subclasses compute the next rates in ``_next_lrs()``."""

    def __init__(self, optimizer):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(self).__name__}: expected an optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = -1
        self._initial = True
        self.step()
        self._initial = False

    def step(self):
        self.last_epoch += 1
        for g, lr in zip(self.optimizer.param_groups, self._next_lrs()):
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _lrs(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self):
        return list(self._last_lr)

    def state_dict(self):
        """Everything but the optimizer (numbers and lists: JSON-serialisable)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state):
        expected = set(self.state_dict())
        if not isinstance(state, dict) or set(state) != expected:
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected keys "
                             f"{sorted(expected)}, got "
                             f"{sorted(state) if isinstance(state, dict) else state!r}")
        self.__dict__.update(state)

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.state_dict().items()
                         if not k.startswith("_") and k not in ("base_lrs", "last_epoch"))
        return f"{type(self).__name__}({args})"


class StepLR(LRScheduler):
    """Multiply the rate by gamma every step_size epochs."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size, self.gamma = int(step_size), gamma
        if self.step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size!r}")
        super().__init__(optimizer)

    def _next_lrs(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]


class ExponentialLR(LRScheduler):
    """Multiply the rate by gamma every epoch."""

    def __init__(self, optimizer, gamma):
        self.gamma = gamma
        super().__init__(optimizer)

    def _next_lrs(self):
        return self._lrs() if self._initial else [lr * self.gamma for lr in self._lrs()]


class CosineAnnealingLR(LRScheduler):
    """eta_min + (base_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2, computed recursively."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max, self.eta_min = int(T_max), eta_min
        if self.T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max!r}")
        super().__init__(optimizer)

    def _next_lrs(self):
        e, T, lo = self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return self._lrs()
        if (e - 1 - T) % (2 * T) == 0:
            return [lr + (base - lo) * (1 - math.cos(math.pi / T)) / 2
                    for lr, base in zip(self._lrs(), self.base_lrs)]
        return [(1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T))
                * (lr - lo) + lo for lr in self._lrs()]


class LinearLR(LRScheduler):
    """Scale the rate linearly from start_factor to end_factor over total_iters epochs
    (a linear warm-up with the defaults: 1/3 of the rate rising to the full rate in 5)."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: need 0 < start_factor <= 1 and 0 <= end_factor <= 1, "
                             f"got {start_factor!r}, {end_factor!r}")
        self.start_factor, self.end_factor = start_factor, end_factor
        self.total_iters = int(total_iters)
        super().__init__(optimizer)

    def _next_lrs(self):
        e, s, f = self.last_epoch, self.start_factor, self.end_factor
        if e == 0:
            return [lr * s for lr in self._lrs()]
        if e > self.total_iters:
            return self._lrs()
        return [lr * (1.0 + (f - s) / (self.total_iters * s + (e - 1) * (f - s)))
                for lr in self._lrs()]


class ReduceLROnPlateau:
    """Multiply the rate by factor when the metric given to ``step(metric)`` has not improved
    for more than patience epochs (torch.optim.lr_scheduler.ReduceLROnPlateau)."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"ReduceLROnPlateau: expected an optimizer, got "
                            f"{type(optimizer).__name__}")
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be < 1, got {factor!r}")
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min'/'max' and threshold_mode "
                             f"'rel'/'abs', got {mode!r}, {threshold_mode!r}")
        n = len(optimizer.param_groups)
        self.optimizer = optimizer
        self.min_lrs = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr] * n
        if len(self.min_lrs) != n:
            raise ValueError(f"ReduceLROnPlateau: expected {n} min_lrs, got {len(self.min_lrs)}")
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.eps = cooldown, eps
        self.last_epoch, self.cooldown_counter, self.num_bad_epochs = 0, 0, 0
        self.best = math.inf if mode == "min" else -math.inf
        self._last_lr = [g["lr"] for g in optimizer.param_groups]

    def _is_better(self, a):
        rel = self.threshold_mode == "rel"
        if self.mode == "min":
            return a < (self.best * (1.0 - self.threshold) if rel else self.best - self.threshold)
        return a > (self.best * (self.threshold + 1.0) if rel else self.best + self.threshold)

    def step(self, metrics):
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for g, low in zip(self.optimizer.param_groups, self.min_lrs):
                new = max(g["lr"] * self.factor, low)
                if g["lr"] - new > self.eps:
                    g["lr"] = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    get_last_lr = LRScheduler.get_last_lr
    state_dict = LRScheduler.state_dict
    load_state_dict = LRScheduler.load_state_dict
    __repr__ = LRScheduler.__repr__
