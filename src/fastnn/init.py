"""Weight initialisers and the random generators fastnn draws from.

Every initialiser has the form ``f(shape, rng=None, *, ..., dtype=np.float32) -> ndarray``;
``rng`` is a ``numpy.random.Generator`` (None: the global generator). A layer's ``init=``
takes one of the names below or any callable ``f(shape, rng) -> array``::

    fn.Linear(64, 32, init="xavier_uniform")
    fn.Linear(64, 32, init=functools.partial(fn.init.normal, std=0.01))

Fans of a weight of shape (out_features, in_features) are fan_in = in_features and
fan_out = out_features, as in PyTorch.

Randomness: all of fastnn's random numbers come from numpy Generators. Layers built without
``seed=`` draw from one global generator, created with seed 0 when first used (so a script
gives the same weights every run, as PyTorch's fixed default seed does);
``fastnn.manual_seed(n)`` restarts it from ``n``.
"""
import math

import numpy as np

_global = None


def manual_seed(seed):
    """Restart the global generator from ``seed`` (an int >= 0); returns the generator."""
    global _global
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: seed must be an int >= 0, got {seed!r}")
    _global = np.random.default_rng(int(seed))
    return _global


def default_generator():
    """The global generator (seeded with 0 on first use unless manual_seed was called)."""
    return _global if _global is not None else manual_seed(0)


def generator(seed=None):
    """A Generator from ``seed``; the global generator when seed is None."""
    if seed is None:
        return default_generator()
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
    return np.random.default_rng(int(seed))


def fans(shape):
    """(fan_in, fan_out) of a weight of shape (out, in, *receptive field)."""
    if len(shape) < 2:
        raise ValueError(f"fan_in and fan_out need a weight with at least 2 dimensions, "
                         f"got shape {tuple(shape)}")
    field = math.prod(shape[2:])
    return shape[1] * field, shape[0] * field


_GAINS = {"linear": 1.0, "identity": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3,
          "relu": math.sqrt(2.0), "selu": 0.75}


def calculate_gain(nonlinearity, param=None):
    """The recommended gain of torch.nn.init.calculate_gain (param: leaky_relu's slope)."""
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; expected one of "
                         f"{sorted(_GAINS) + ['leaky_relu']}")
    return _GAINS[nonlinearity]


def _uniform(shape, rng, low, high, dtype):
    return generator(rng).uniform(low, high, size=tuple(shape)).astype(dtype, copy=False)


def uniform(shape, rng=None, *, a=-1.0, b=1.0, dtype=np.float32):
    """U(a, b); the textbook default is U(-1, 1)."""
    return _uniform(shape, rng, a, b, dtype)


def normal(shape, rng=None, *, mean=0.0, std=1.0, dtype=np.float32):
    """N(mean, std**2)."""
    return (mean + std * generator(rng).standard_normal(size=tuple(shape))).astype(dtype)


def zeros(shape, rng=None, *, dtype=np.float32):
    """All zeros (draws nothing)."""
    return np.zeros(tuple(shape), dtype=dtype)


def xavier_uniform(shape, rng=None, *, gain=1.0, dtype=np.float32):
    """Glorot: U(-r, r) with r = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    r = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _uniform(shape, rng, -r, r, dtype)


def xavier_normal(shape, rng=None, *, gain=1.0, dtype=np.float32):
    """Glorot: N(0, std**2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    return normal(shape, rng, std=gain * math.sqrt(2.0 / (fan_in + fan_out)), dtype=dtype)


def _kaiming_std(shape, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fans(shape)[0 if mode == "fan_in" else 1]
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform(shape, rng=None, *, a=0.0, mode="fan_in", nonlinearity="relu",
                    dtype=np.float32):
    """He: U(-r, r) with r = sqrt(3) * gain / sqrt(fan); gain sqrt(2) for relu."""
    r = math.sqrt(3.0) * _kaiming_std(shape, a, mode, nonlinearity)
    return _uniform(shape, rng, -r, r, dtype)


def kaiming_normal(shape, rng=None, *, a=0.0, mode="fan_in", nonlinearity="relu",
                   dtype=np.float32):
    """He: N(0, std**2) with std = gain / sqrt(fan); gain sqrt(2) for relu."""
    return normal(shape, rng, std=_kaiming_std(shape, a, mode, nonlinearity), dtype=dtype)


def default(shape, rng=None, *, dtype=np.float32):
    """PyTorch's Linear default: kaiming_uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in),
    1/sqrt(fan_in))."""
    return kaiming_uniform(shape, rng, a=math.sqrt(5.0), nonlinearity="leaky_relu",
                           dtype=dtype)


INITIALIZERS = {f.__name__: f for f in (default, uniform, normal, zeros, xavier_uniform,
                                        xavier_normal, kaiming_uniform, kaiming_normal)}


def resolve(init):
    """The initialiser callable for a layer's ``init=`` (None means 'default')."""
    if init is None:
        return default
    if isinstance(init, str):
        if init not in INITIALIZERS:
            raise ValueError(f"init must be one of {sorted(INITIALIZERS)} or a callable "
                             f"f(shape, rng), got {init!r}")
        return INITIALIZERS[init]
    if callable(init):
        return init
    raise TypeError(f"init must be a name or a callable f(shape, rng), got {init!r}")
