"""A bounded fuzz of the Cython boundary: random calls of every public kernel with random
arrays (dtype, byte order, alignment, shape, strides, memory overlap, NaN/Inf, huge scalars).
Each call must return or raise TypeError/ValueError (MemoryError for absurd sizes); it must
never crash, hang or raise anything else. CI also runs this file in the AddressSanitizer +
UndefinedBehaviorSanitizer build, where any out-of-bounds or misaligned access aborts.
Budget: FASTNN_FUZZ_EXAMPLES examples (default 400)."""
import inspect
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnn import ops
from fastnn._kernels import FusedNet

EXAMPLES = int(os.environ.get("FASTNN_FUZZ_EXAMPLES", "400"))
KERNELS = sorted(n for n in ops.__all__ if callable(getattr(ops, n)) and n != "bf16_native")
DTYPES = ["<f4", "<f8", ">f4", ">f8", "<f2", "<i8", "<i4", ">i8", "|b1", "<c8"]
SCALARS = [0.0, 1.0, -1.0, 0.5, 2, 1e300, -1e300, float("nan"), float("inf"), 1e-300, 3]


@st.composite
def arrays(draw):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    n = int(np.prod(shape)) if shape else 1
    kind = draw(st.sampled_from(["plain", "unaligned", "reversed", "broadcast", "transposed",
                                 "readonly", "special"]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    base = (rng.standard_normal(n) * 3).astype(dtype) if dtype.kind != "b" else \
        rng.integers(0, 2, n).astype(dtype)
    a = base.reshape(shape)
    if kind == "unaligned" and dtype.itemsize > 1:
        buf = np.zeros(a.nbytes + dtype.itemsize, np.uint8)
        u = np.frombuffer(buf.data, dtype=dtype, count=a.size, offset=1).reshape(shape)
        u[...] = a
        a = u
    elif kind == "reversed" and ndim:
        a = a[::-1]
    elif kind == "broadcast" and ndim:
        a = np.broadcast_to(a[:1], shape) if shape[0] else a
    elif kind == "transposed":
        a = a.T
    elif kind == "readonly":
        a = a.copy()
        a.flags.writeable = False
    elif kind == "special" and dtype.kind == "f" and a.size:
        a = a.copy()
        with np.errstate(over="ignore", invalid="ignore"):   # 1e30 in float16 is inf
            a.flat[rng.integers(0, a.size)] = rng.choice([np.nan, np.inf, -np.inf, 1e30])
    return a


def _params(name):
    return [p for p in inspect.signature(getattr(ops, name)).parameters.values()]


ARRAY_ARGS = {"x", "y", "dy", "a", "b", "bias", "out", "pred", "target", "logits", "labels",
              "weight", "pos_weight", "grad_output", "param", "grad", "momentum_buffer",
              "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "grad_avg",
              "state_sum"}


@st.composite
def calls(draw):
    name = draw(st.sampled_from(KERNELS))
    kwargs = {}
    pool = []
    for p in _params(name):
        if p.name in ARRAY_ARGS:
            if p.default is not inspect.Parameter.empty and draw(st.booleans()):
                continue                       # leave an optional array out
            if pool and draw(st.integers(0, 5)) == 0:
                kwargs[p.name] = draw(st.sampled_from(pool))    # aliasing another argument
            else:
                kwargs[p.name] = draw(arrays())
                pool.append(kwargs[p.name])
        elif p.name in ("activation",):
            kwargs[p.name] = draw(st.sampled_from(["relu", "gelu", "bogus", None, 3]))
        elif p.name == "approximate":
            kwargs[p.name] = draw(st.sampled_from(["none", "tanh", "x"]))
        elif p.name == "reduction":
            kwargs[p.name] = draw(st.sampled_from(["mean", "sum", "none", "max"]))
        elif p.name == "step":
            kwargs[p.name] = draw(st.sampled_from([1, 2, 0, -1, 2 ** 62]))
        elif p.kind is p.KEYWORD_ONLY and p.default is inspect.Parameter.empty:
            kwargs[p.name] = draw(st.sampled_from(SCALARS))
        elif draw(st.integers(0, 3)) == 0 and p.default is not inspect.Parameter.empty:
            kwargs[p.name] = draw(st.sampled_from(SCALARS + [True, None, "x"]))
    return name, kwargs


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(calls())
def test_fuzz_ops(call):
    name, kwargs = call
    try:
        with np.errstate(all="ignore"):
            getattr(ops, name)(**kwargs)
    except (TypeError, ValueError, MemoryError, OverflowError):
        pass


@settings(max_examples=max(EXAMPLES // 4, 20), deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(-2, 2 ** 62), st.integers(-2, 2 ** 62),
                          st.integers(-2, 2 ** 63 - 1), st.integers(-2, 2 ** 63 - 1),
                          st.sampled_from(["relu", "tanh", "identity"]),
                          st.sampled_from([0.0, 0.5, 1.0, -0.1])), min_size=1, max_size=3),
       st.integers(1, 2 ** 40))
def test_fuzz_fused_plan(units, max_batch):
    """Random plans, most of them invalid: refused before any buffer is touched."""
    P, G = np.zeros(64, np.float32), np.zeros(64, np.float32)
    X = np.zeros((4, max(1, min(units[0][0], 64))), np.float32)
    try:
        net = FusedNet(units, P, G, loss="mse", optim="sgd", hyper={"lr": 0.1},
                       max_batch=max_batch)
    except (TypeError, ValueError, MemoryError, OverflowError):
        return
    try:
        net.train(X, np.zeros((4, net.out_features), np.float32), np.arange(4), 4)
    except (TypeError, ValueError):
        pass
