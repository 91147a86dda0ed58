"""Every path into C gets every kind of buffer (issue: the type check looked at numpy's type
number, which ignores byte order, so '>f4' arrays were read as native floats and unaligned
views reached C).

Each public kernel in fastnn.ops, FusedNet, the layers, the losses and fit/predict is fed each
variant of each array argument: byte-swapped, unaligned, float16, reversed (negative strides),
broadcast (zero strides), read-only, and memory-mapped. The kernels (fastnn.ops, FusedNet)
refuse byte-swapped, unaligned and float16 arrays with a TypeError naming the argument; an
array they may copy (an input) gives the same result as its contiguous copy, or a ValueError
(matmul refuses some strides); an array written in place must be writable and C-contiguous.
The layers, losses, fit and predict convert, so every variant gives the native result.
"""
import inspect

import numpy as np
import pytest

import fastnn as fn
from fastnn import ops
from fastnn._kernels import FusedNet

RNG = np.random.default_rng(0)
F = np.float32

# Arguments that a kernel updates in place (never copied) and outputs.
INPLACE = {"param", "momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg",
           "grad_avg", "state_sum", "out", "running_mean", "running_var"}


def _a(*shape, positive=False, dtype=F):
    a = RNG.standard_normal(shape).astype(dtype)
    return np.abs(a) + 0.1 if positive else a


def _labels(n, c):
    return RNG.integers(0, c, n).astype(np.int64)


def _recipes():
    """name -> (array kwargs, other kwargs) of a valid call of every public kernel."""
    x = _a(6, 7)
    r = {}
    for name in ("relu", "sigmoid", "tanh", "gelu", "silu", "softplus", "leaky_relu",
                 "softmax", "log_softmax"):
        r[name] = ({"x": x, "out": np.empty_like(x)}, {})
        bw = name + "_backward"
        second = "y" if "softmax" in name else "x"
        r[bw] = ({"dy": _a(6, 7), second: x, "out": np.empty_like(x)}, {})
    r["bias_add"] = ({"x": x, "bias": _a(7), "out": np.empty_like(x)}, {})
    r["bias_grad"] = ({"dy": x, "out": np.empty(7, F)}, {})
    for name in ("matmul", "matmul_reference", "matmul_bf16"):
        r[name] = ({"a": _a(6, 5), "b": _a(5, 7), "out": np.empty((6, 7), F)}, {})
    r["matmul_bias_act"] = ({"a": _a(6, 5), "b": _a(5, 7), "bias": _a(7),
                             "out": np.empty((6, 7), F)}, {"activation": "relu"})
    r["matmul_act_backward"] = ({"a": _a(6, 5), "b": _a(5, 7), "x": _a(6, 7),
                                 "out": np.empty((6, 7), F)}, {"activation": "relu"})
    for name in ("mse_loss", "l1_loss", "huber_loss"):
        r[name] = ({"pred": x, "target": _a(6, 7)}, {})
        r[name + "_backward"] = ({"pred": x, "target": _a(6, 7)}, {})
    r["binary_cross_entropy_with_logits"] = ({"logits": x, "target": _a(6, 7, positive=True) / 4,
                                              "pos_weight": _a(7, positive=True)}, {})
    r["binary_cross_entropy_with_logits_backward"] = r["binary_cross_entropy_with_logits"]
    r["cross_entropy"] = ({"logits": x, "labels": _labels(6, 7), "weight": _a(7, positive=True)},
                          {})
    r["cross_entropy_backward"] = r["cross_entropy"]
    p, g = _a(40), _a(40)
    r["sgd_step"] = ({"param": p, "grad": g, "momentum_buffer": _a(40)},
                     {"lr": 0.1, "momentum": 0.9})
    r["adam_step"] = ({"param": p, "grad": g, "exp_avg": _a(40), "exp_avg_sq": _a(40, positive=True),
                       "max_exp_avg_sq": _a(40, positive=True)}, {"step": 3, "amsgrad": True})
    r["adamw_step"] = r["adam_step"]
    r["rmsprop_step"] = ({"param": p, "grad": g, "square_avg": _a(40, positive=True) + 2,
                          "momentum_buffer": _a(40), "grad_avg": _a(40) / 10},
                         {"momentum": 0.9, "centered": True})
    r["adagrad_step"] = ({"param": p, "grad": g, "state_sum": _a(40, positive=True)},
                         {"step": 2})
    cx, cw = _a(2, 3, 5, 6), _a(4, 3, 3, 3)
    for name in ("conv2d", "conv2d_reference"):     # `out` is dropped where there is none
        r[name] = ({"x": cx, "weight": cw, "bias": _a(4), "out": np.empty((2, 4, 5, 6), F)},
                   {"padding": 1})
    for name in ("conv2d_backward", "conv2d_backward_reference"):
        r[name] = ({"dy": _a(2, 4, 5, 6), "x": cx, "weight": cw}, {"padding": 1})
    r["conv2d_output_shape"] = ({}, {"input_shape": (2, 3, 5, 6), "weight_shape": (4, 3, 3, 3),
                                     "padding": 1})
    # pooling and normalization (NCHW)
    img = _a(2, 3, 6, 5)
    pooled, idx = ops.max_pool2d(img, 2, return_indices=True)
    r["max_pool2d"] = ({"x": img}, {"kernel_size": 2, "return_indices": True})
    r["max_pool2d_backward"] = ({"dy": _a(*pooled.shape), "x": img, "indices": idx},
                                {"kernel_size": 2})
    r["avg_pool2d"] = ({"x": img}, {"kernel_size": 3, "stride": 1, "padding": 1})
    r["avg_pool2d_backward"] = ({"dy": _a(2, 3, 6, 5), "x": img},
                                {"kernel_size": 3, "stride": 1, "padding": 1})
    r["adaptive_avg_pool2d"] = ({"x": img}, {})
    r["adaptive_avg_pool2d_backward"] = ({"dy": _a(2, 3, 1, 1), "x": img}, {})
    r["batch_norm"] = ({"x": img, "running_mean": _a(3), "running_var": _a(3, positive=True),
                        "weight": _a(3), "bias": _a(3)},
                       {"training": True, "return_stats": True})
    y, mean, invstd = ops.batch_norm(img, None, None, training=True, return_stats=True)
    r["batch_norm_backward"] = ({"dy": _a(2, 3, 6, 5), "x": img, "save_mean": mean,
                                 "save_invstd": invstd, "weight": _a(3)}, {})
    y, mean, rstd = ops.layer_norm(x, 7, return_stats=True)
    r["layer_norm"] = ({"x": x, "weight": _a(7), "bias": _a(7)},
                       {"normalized_shape": 7, "return_stats": True})
    r["layer_norm_backward"] = ({"dy": _a(6, 7), "x": x, "mean": mean, "rstd": rstd,
                                 "weight": _a(7)}, {"normalized_shape": 7})
    return r


RECIPES = _recipes()


def test_every_public_kernel_has_a_recipe():
    public = {n for n in ops.__all__ if callable(getattr(ops, n)) and n != "bf16_native"}
    assert public == set(RECIPES), public ^ set(RECIPES)


def _unaligned(a):
    buf = np.zeros(a.nbytes + a.itemsize, np.uint8)
    u = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned
    return u


def _memmap(a, tmp_path, mode):
    path = tmp_path / f"mm{RNG.integers(1 << 30)}.bin"
    a.tofile(path)
    return np.memmap(path, dtype=a.dtype, mode=mode, shape=a.shape)


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _variants(a, tmp_path):
    """(name, array, kind): kind 'refuse' must raise TypeError from the kernels; 'same' must
    give the result of its contiguous copy (or a ValueError where a layout is refused)."""
    out = [("byteswapped", a.astype(a.dtype.newbyteorder()), "refuse"),
           ("unaligned", _unaligned(a), "refuse"),
           ("readonly", _readonly(a), "same"),
           ("memmap_r", _memmap(a, tmp_path, "r"), "same"),
           ("memmap_rw", _memmap(a, tmp_path, "r+"), "same")]
    if a.dtype.kind == "f":
        with np.errstate(over="ignore"):       # `out` arrays hold np.empty's garbage
            out.append(("float16", a.astype(np.float16), "refuse"))
    if a.ndim >= 1 and len(a) > 1:
        out.append(("negative_strides", np.ascontiguousarray(a[::-1])[::-1], "same"))
        out.append(("zero_strides", np.broadcast_to(a[:1], a.shape), "same"))
    return out


def _call(name, arrays, scalars, as_is=None):
    """ops.name on copies of the in-place arrays (but `as_is`, the variant under test)."""
    arrays = {k: (v.copy() if k in INPLACE and k != as_is else v) for k, v in arrays.items()}
    res = getattr(ops, name)(**arrays, **scalars)
    written = {k: np.array(v) for k, v in arrays.items() if k in INPLACE}
    return res, written


def _same(a, b):
    if isinstance(a, tuple):        # (y, indices), (y, mean, invstd), (dx, dweight, dbias)
        assert isinstance(b, tuple) and len(a) == len(b)
        for u, v in zip(a, b):
            _same(u, v)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
        assert a == b or (np.isnan(a) and np.isnan(b))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_kernel_buffer_variants(name, tmp_path):
    arrays, scalars = RECIPES[name]
    sig = inspect.signature(getattr(ops, name)).parameters
    arrays = {k: v for k, v in arrays.items() if k in sig}
    for arg, base in arrays.items():
        is_int = base.dtype.kind in "iu"
        for vname, v, kind in _variants(base, tmp_path):
            trial = dict(arrays, **{arg: v})
            # the reference call: the same values, native and contiguous
            ref_arrays = dict(arrays, **{arg: np.array(v, dtype=v.dtype.newbyteorder("="))})
            if vname == "float16":
                kind = "refuse"
            if is_int:     # labels are converted (like the Python layer converts)
                kind = "same"
            where = f"{name}({arg}={vname})"
            if kind == "refuse":
                with pytest.raises(TypeError, match=arg):
                    _call(name, trial, scalars, arg)
                continue
            inplace_bad = arg in INPLACE and (not v.flags.writeable or not v.flags.c_contiguous)
            if inplace_bad:
                with pytest.raises(ValueError, match=arg):
                    _call(name, trial, scalars, arg)
                continue
            try:
                got = _call(name, trial, scalars, arg)
            except ValueError as e:     # a layout a kernel does not read in place
                assert arg in str(e) and "matmul" in name, f"{where}: {e}"
                continue
            want = _call(name, ref_arrays, scalars)
            _same(got[0], want[0])
            for k in got[1]:
                _same(got[1][k], want[1][k])
            if arg in INPLACE:          # written in place through the memory map
                _same(np.asarray(v), got[1][arg])


def test_issue_examples():
    """The reported cases: a '>f4' relu returned its input; a '>f4' softmax corrupted the heap."""
    with pytest.raises(TypeError, match="byte order"):
        ops.relu(np.array([[-1, 2, 3, -4]], dtype=">f4"))
    with pytest.raises(TypeError, match="byte order"):
        ops.softmax(np.ones((200, 50), dtype=">f4"))
    buf = np.zeros(4 * 65, np.uint8)
    with pytest.raises(TypeError, match="aligned"):
        ops.relu(np.frombuffer(buf.data, np.float32, count=64, offset=1))


def _net(params, grads, **kw):
    return FusedNet([(4, 3, 0, 12, "relu", 0.0)], params, grads, loss="mse", optim="sgd",
                    hyper={"lr": 0.1}, max_batch=8, **kw)


@pytest.mark.parametrize("arg", ["params", "grads"])
def test_fused_net_buffers(arg, tmp_path):
    p, g = _a(15), np.zeros(15, F)
    for vname, v, kind in _variants(p if arg == "params" else g, tmp_path):
        trial = {"params": p.copy(), "grads": g.copy(), arg: v}
        if kind == "refuse":
            with pytest.raises(TypeError, match=arg):
                _net(**trial)
        elif not v.flags.writeable or not v.flags.c_contiguous:
            with pytest.raises(ValueError, match=arg):
                _net(**trial)
        else:
            _net(**trial)


def test_fused_net_train_inputs(tmp_path):
    X, Y = _a(10, 4), _a(10, 3)
    p0 = _a(15)
    idx = np.arange(10, dtype=np.int64)

    def run(X_, Y_, idx_):
        p = p0.copy()
        net = _net(p, np.zeros(15, F))
        loss = net.train(X_, Y_, idx_, 5)
        return p, loss

    want = run(X, Y, idx)
    for arg, base in (("X", X), ("Y", Y)):
        for vname, v, kind in _variants(base, tmp_path):
            trial = {"X_": X, "Y_": Y, "idx_": idx, arg + "_": v}
            if kind == "refuse":
                with pytest.raises(TypeError, match=arg):
                    run(**trial)
            elif vname not in ("negative_strides", "zero_strides"):
                got = run(**trial)
                np.testing.assert_array_equal(got[0], want[0])
    for vname, v, _ in _variants(idx, tmp_path):      # row indices are converted
        if vname in ("zero_strides",):
            continue
        got = run(X, Y, v)
        np.testing.assert_array_equal(got[0], run(X, Y, np.ascontiguousarray(v, np.int64))[0])
    with pytest.raises(TypeError, match="index"):
        run(X, Y, idx.astype(np.float64))


def _model():
    return fn.Sequential(fn.Linear(4, 5), fn.Tanh(), fn.Linear(5, 3), seed=1)


def test_layers_losses_fit_predict_convert(tmp_path):
    """The Python layer converts: every variant of X and y trains and predicts as native."""
    X, y = _a(24, 4), _labels(24, 3)

    def train(X_, y_):
        m = _model()
        h = fn.fit(m, fn.CrossEntropyLoss(), fn.SGD(m.parameters(), lr=0.1), X_, y_, epochs=2,
                   batch_size=8, verbose=0, seed=0)
        return m.predict(X_), h.history["loss"], m.forward(X_), \
            fn.CrossEntropyLoss().forward(m.forward(X_), y_)

    def plain(v):     # the same values as a native, aligned, contiguous array
        return np.array(v, dtype=v.dtype.newbyteorder("="))

    for vname, v, _ in _variants(X, tmp_path):
        if vname == "float16":
            continue    # a float16 X is converted to the model's float32 as well
        want = train(plain(v), y)
        got = train(v, y)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=vname)
    for vname, v, _ in _variants(y, tmp_path):
        np.testing.assert_array_equal(train(X, v)[0], train(X, plain(v))[0], err_msg=vname)
    # each layer on its own
    for layer in (fn.ReLU(), fn.Sigmoid(), fn.GELU(), fn.Softmax(), fn.Linear(4, 2, seed=0),
                  fn.Dropout(0.0), fn.Flatten()):
        for vname, v, _ in _variants(X, tmp_path):
            if vname != "float16":
                np.testing.assert_array_equal(layer.forward(v), layer.forward(plain(v)),
                                              err_msg=vname)
