"""fastnn.fit, evaluate and predict for a model moved with ``model.to("cuda")``.

    model = fn.Sequential(fn.Linear(20, 64), fn.ReLU(), fn.Linear(64, 3), seed=0).to("cuda")
    fn.fit(model, fn.CrossEntropyLoss(), fn.Adam(model.parameters()), X, y, epochs=5)
    model.to("cpu")          # the trained weights, back in the same numpy Parameter views

    cnn = fn.models.digits_cnn(seed=0).to("cuda")  # X of shape (N, 1, 8, 8): the layer plan

Supported (anything else raises naming it): a Sequential of units Linear [activation]
[Dropout(p=0)] after optional leading Flatten layers, one flat parameter buffer (float32 or
float64; activations ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU); a Sequential holding
Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), BatchNorm1d or BatchNorm2d runs its layer
plan instead (fastnn.plan: those layers, Linear, the activations above, Dropout(p=0) and
Flatten; X of shape (N, C, H, W) or (N, features)); CrossEntropyLoss with
integer labels (class weights, label smoothing), MSELoss, L1Loss, HuberLoss and
BCEWithLogitsLoss (pos_weight; no metric), reduction 'mean' or 'sum';
SGD (momentum, dampening, nesterov, weight decay), Adam, AdamW, RMSprop, Adagrad with one
parameter group over the whole buffer. Metrics: accuracy (CrossEntropyLoss), mae, mse
(MSELoss). The numbers are the CPU fit's (same shuffling, same formulas) up to float
rounding: the GPU sums in another order.

Data: X and y are uploaded once per fit, the epoch's permutation once per epoch; each
mini-batch is gathered on the device. The optimizer state lives on the device during fit and
is written back into the optimizer's CPU state buffers, with its step count, at the end of
every epoch (and when an exception leaves an epoch). The loss values (one float64 slot per
step) and metric sums stay on the device until the end of the epoch: one download per epoch,
unless a user callback overrides on_batch_end (then each step's loss is downloaded for it).

Kernel launches per training step, L Linear layers (fastnn.cuda.launch_count()):

    2           gather_rows: the batch's X rows and its labels / targets
    L + A       forward: matmul_bias_act with bias and activation in the epilogue; A is the
                number of hidden activations other than ReLU / LeakyReLU(slope >= 0) /
                identity, which need their input kept: GEMM + bias, then the activation
    1           the loss value and gradient (cross_entropy_with_grad: 2 with class weights
                and reduction 'mean'); +1 if the last Linear has an activation
    2L - 1      backward: matmul_bias_grad (dW and db) per layer, matmul_act_backward (the
                input gradient times act') for every layer but the first
    1           the optimizer update over the whole flat buffer
    M           one per metric (correct_count_add for accuracy, row_error_add for mae/mse)

so 3L + 3 + A + M (+1 for CrossEntropyLoss with class weights and 'mean', +1 for an
activation after the last Linear): 9 + M for Linear-ReLU-Linear, 13 + M for
Linear-ReLU-Linear-Tanh-Linear (tests/test_cuda_train.py counts them). evaluate/predict take
L + A launches per batch.

The layer plan (a model with Conv2d, pooling or batch norm layers) runs op by op on the
device (_PlanNet), NCHW as the CPU plan step, on the same flat parameter buffer: forward
keeps each op's output (the next op's input), the max-pool argmax and the batch-norm mean
and inverse standard deviation; backward runs in reverse, writing dW and db into views of
the flat gradient buffer (the CPU layout), then the one optimizer update. Flatten,
Dropout(p=0) and a ReLU fused into the op before it (Linear, Conv2d, BatchNorm) launch
nothing. Batch norm trains with the batch statistics and updates its running statistics on
the device (momentum, unbiased variance, as PyTorch); they are downloaded into Plan.stats,
of which the layers' running_mean / running_var are views, at the end of every epoch, and
num_batches_tracked advances by the steps taken; evaluate and predict normalize with them.
Launches per training step: the 2 gathers, the loss, the metrics and the optimizer update
as above, plus per op, forward then backward:

    Linear          matmul_bias_act (bias, ReLU in the epilogue); matmul_bias_grad (dW, db),
                    and matmul (dX) unless no earlier op has parameters, or
                    matmul_act_backward (dX times relu') when its input is the ReLU output
                    of a Linear, Conv2d or BatchNorm, whose relu_backward it then replaces
    Conv2d          conv2d, + relu when a ReLU follows; conv2d_backward: dW, db (with a
                    bias), dX (unless no earlier op has parameters): up to 3 kernels
    BatchNorm       batch_norm, + relu when a ReLU follows; batch_norm_backward (dx, dW, db)
    MaxPool2d, AvgPool2d, AdaptiveAvgPool2d
                    1 forward; 1 backward unless no earlier op has parameters
    activation      1 forward; 1 backward unless no earlier op has parameters; a ReLU
                    after Linear, Conv2d or BatchNorm runs in that op instead: relu (none
                    for Linear: the GEMM epilogue) and relu_backward added to its passes
    Flatten, Dropout(p=0)   none

launch_count() counts each of these kernels under the name given (conv2d_backward once per
kernel). LeNet-5 (2 Conv2d + ReLU, 2 max pools, 3 Linear) takes 28 + M launches per step
with the Numba GEMM (6 more through cuBLAS: one epilogue kernel per GEMM with one);
tests/test_cuda_cnn.py counts them for a model with every op kind. The kernels are the
direct ones of fastnn.cuda.conv and fastnn.cuda.poolnorm (one thread per output, fixed
summation order), not yet tiled: the CNN path has not been timed on a GPU.
"""
import numpy as np
from numba import cuda

from .. import _fused
from .. import plan as _plan
from ..loss import BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss
from ..nn import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout,
                  Flatten, Linear, MaxPool2d, Sequential)
from ..optim import SGD, Adagrad, Adam, AdamW, RMSprop
from . import _count_launch, conv, ops
from ._poolnorm_kernels import (BLOCK, _avgpool_bwd, _avgpool_fwd, _bn_bwd, _bn_fwd, _gap_bwd,
                                _gap_fwd, _maxpool_bwd, _maxpool_fwd)

__all__ = ["Trainer", "check_model", "predict"]

_LAYERS = "Linear, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, Dropout(p=0), leading Flatten"


# the layers only the layer plan runs (a model holding one takes the plan path)
_PLAN_ONLY = (Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, BatchNorm1d, BatchNorm2d)
_PLAN_LAYERS = ("Linear, Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), BatchNorm1d, "
                "BatchNorm2d, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, Dropout(p=0), "
                "Flatten")


def _is_plan_model(model):
    """True for a Sequential holding a layer that only the layer plan runs (Conv2d, pools,
    batch norm); such a model takes the plan path, any other the Linear-unit path."""
    return type(model) is Sequential and any(type(m) in _PLAN_ONLY for m in model)


def _check_plan_model(model):
    """The flat parameter buffer of a model for the plan path; TypeError/ValueError naming
    the first layer the layer plan (fastnn.plan) does not run on cuda."""
    for layer in model:
        t = type(layer)
        if t is Dropout and layer.p > 0:
            raise ValueError(f"fastnn.cuda: {layer._where()} has p={layer.p}; Dropout with "
                             f"p > 0 is not supported on cuda (use p=0, or train on the CPU)")
        if t not in _PLAN_ONLY + (Linear, Dropout, Flatten) and _fused._activation(layer) is None:
            raise TypeError(f"fastnn.cuda: {layer._where()} is not supported on cuda "
                            f"(supported layers: {_PLAN_LAYERS})")
        if t in (BatchNorm1d, BatchNorm2d) and layer.momentum is None:
            raise ValueError(f"fastnn.cuda: {layer._where()} has momentum=None (a cumulative "
                             f"average); it is not supported on cuda (pass a momentum such "
                             f"as 0.1, or train on the CPU)")
    buffers = []
    for p in model.parameters():
        if p._buffer is None or all(p._buffer is not b for b in buffers):
            buffers.append(p._buffer)
    if len(buffers) != 1 or buffers[0] is None:
        raise TypeError(f"fastnn.cuda: the parameters of {model._short()} must live in one "
                        f"flat parameter buffer of one dtype; got {len(buffers)} buffer(s)")
    buffer = buffers[0]
    for layer in model:
        if type(layer) in (BatchNorm1d, BatchNorm2d) and layer.track_running_stats \
                and layer.running_mean.dtype != buffer.data.dtype:
            raise TypeError(f"fastnn.cuda: {layer._where()} keeps running statistics of dtype "
                            f"{layer.running_mean.dtype}, the parameters are "
                            f"{buffer.data.dtype}")
    return buffer


def check_model(model):
    """(units, buffer) of a model fastnn.cuda.train runs: units as _fused._units for a chain
    of Linear units, None for a model the layer plan runs (one with Conv2d, pooling or batch
    norm layers); raises TypeError/ValueError naming what is not supported."""
    if type(model) is not Sequential:
        raise TypeError(f"fastnn.cuda: only a Sequential of {_LAYERS} runs on cuda, got "
                        f"{type(model).__name__}")
    if _is_plan_model(model):
        return None, _check_plan_model(model)
    for layer in model:
        if isinstance(layer, Dropout) and layer.p > 0:
            raise ValueError(f"fastnn.cuda: {layer._where()} has p={layer.p}; Dropout with "
                             f"p > 0 is not supported on cuda (use p=0, or train on the CPU)")
        if type(layer) not in (Linear, Dropout, Flatten) and _fused._activation(layer) is None:
            raise TypeError(f"fastnn.cuda: {layer._where()} is not supported on cuda "
                            f"(supported layers: {_LAYERS})")
    found = _fused._units(model)
    if found is None:
        raise TypeError(f"fastnn.cuda: the model must be units of Linear, an optional "
                        f"activation and an optional Dropout(p=0), after optional leading "
                        f"Flatten layers, with all parameters of one dtype; got {model!r}")
    return found


def _spec_name(spec):
    return spec if isinstance(spec, str) else spec[0]


def _fused_ok(spec):
    """True when act'(z) can be computed from act(z): the output is all the backward needs."""
    name = _spec_name(spec)
    return name in ("identity", "relu") or (name == "leaky_relu" and spec[1] >= 0)


class _Net:
    """The units' forward and backward on the device parameters of a model on cuda."""

    def __init__(self, model):
        self.units, buffer = check_model(model)
        root = model._device_root
        params = [d for b, d in root._device_params if b is buffer]
        if not params:
            raise RuntimeError(f"fastnn.cuda: {model._short()} has no device copy of its "
                               f"parameters; call model.to('cuda')")
        self.model, self.buffer, self.params = model, buffer, params[0]
        self.dtype = buffer.data.dtype
        self.grads = None
        self._bufs = {}

    def views(self, flat):
        """[(W, b or None)] views of a flat device buffer, one per unit (made once per buffer:
        slicing a Numba device array costs host time on every step)."""
        hit = self._bufs.get(("views", id(flat)))
        if hit is not None and hit[0] is flat:
            return hit[1]
        out = []
        for fan_in, fan_out, w0, b0, _, _ in self.units:
            w = flat[w0:w0 + fan_out * fan_in].reshape(fan_out, fan_in)
            out.append((w, None if b0 < 0 else flat[b0:b0 + fan_out]))
        self._bufs[("views", id(flat))] = (flat, out)
        return out

    def buffers(self, rows, training):
        """Per-unit device activations h, pre-activations z (z is h where the output
        suffices), gradients dz, loss gradient g, for `rows` rows (allocated once per size)."""
        key = (rows, training)
        if key not in self._bufs:
            mk = lambda n: cuda.device_array((rows, n), self.dtype)
            h = [mk(u[1]) for u in self.units]
            z = [hl if _fused_ok(u[4]) else mk(u[1]) for u, hl in zip(self.units, h)]
            dz = [mk(u[1]) for u in self.units] if training else None
            last = self.units[-1]
            g = (dz[-1] if _spec_name(last[4]) == "identity" else mk(last[1])) \
                if training else None
            self._bufs[key] = h, z, dz, g
        return self._bufs[key]

    def forward(self, x, h, z):
        prev = x
        for (W, b), u, hl, zl in zip(self.views(self.params), self.units, h, z):
            spec = u[4]
            if _fused_ok(spec):
                ops.matmul_bias_act(prev, W, b, spec, out=hl, trans_b=True)
            else:
                ops.matmul_bias_act(prev, W, b, "identity", out=zl, trans_b=True)
                name = _spec_name(spec)
                code, p, p2 = ops._activation_spec(spec, name)
                ops._act_forward(name, code, zl, hl, p, p2)
            prev = hl
        return prev

    def backward(self, x, h, z, dz, g):
        """Gradients into self.grads (overwritten, as zero_grad + backward) from g, the loss
        gradient with respect to the output."""
        if self.grads is None:      # zeros: the buffer's alignment padding gets no gradient
            self.grads = cuda.to_device(np.zeros(self.buffer.data.size, self.dtype))
        L = len(self.units)
        last = self.units[-1][4]
        if _spec_name(last) != "identity":
            name = _spec_name(last) + "_backward"
            code, p, p2 = ops._activation_spec(last, name)
            ops._act_backward(name, code, g, z[-1], dz[-1], p, p2)
        pv, gv = self.views(self.params), self.views(self.grads)
        for l in reversed(range(L)):
            prev = h[l - 1] if l > 0 else x
            dW, db = gv[l]
            if db is None:
                db = self._scratch_db(l)
            ops.matmul_bias_grad(dz[l], prev, out=dW, db=db, trans_a=True)
            if l > 0:
                ops.matmul_act_backward(dz[l], pv[l][0], z[l - 1], self.units[l - 1][4],
                                        out=dz[l - 1])

    def _scratch_db(self, l):
        key = ("db", l)
        if key not in self._bufs:
            self._bufs[key] = cuda.device_array(self.units[l][1], self.dtype)
        return self._bufs[key]

    # the interface Trainer and predict use (shared with _PlanNet)
    def check_input(self, X, fn):
        """X (n, ...) as a contiguous (n, features) array of the model's dtype."""
        X = np.ascontiguousarray(X.reshape(len(X), -1), dtype=self.dtype)
        if X.shape[1] != self.units[0][0]:
            raise ValueError(f"{fn}: X has {X.shape[1]} features per sample, the "
                             f"model expects {self.units[0][0]}")
        return X

    def train_forward(self, xb):
        h, z, dz, g = self.buffers(len(xb), True)
        return self.forward(xb, h, z), g, (h, z, dz, g)

    def train_backward(self, xb, saved):
        self.backward(xb, *saved)

    def write_back(self):
        pass


def _size(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _blocks(n, per_block):
    return max(1, -(-n // per_block))


_IDENTITY = ("flatten", "dropout")


class _PlanNet:
    """A layer plan (fastnn.plan) run on the device: the model's ops forward, each keeping
    what its backward needs (its input, the max-pool argmax, the batch-norm mean and
    inverse standard deviation), and backward in reverse order writing dW / db into views of
    a flat device gradient buffer laid out as the CPU one. Images stay NCHW, as in the CPU
    plan step. The running statistics (Plan.stats) live on the device while the net does."""

    def __init__(self, model, input_shape):
        self.units = None
        check_model(model)                          # the layers, one flat buffer
        plan = _plan.build(model, input_shape)      # ValueError naming a misfit layer
        if plan is None:
            raise TypeError(f"fastnn.cuda: the layers of {model._short()} do not form a "
                            f"layer plan for samples of shape {tuple(input_shape)} (a Linear "
                            f"needs (features,) samples: put a Flatten before it after "
                            f"image layers; the output must be (outputs,) per sample)")
        root = model._device_root
        params = [d for b, d in root._device_params if b is plan.buffer]
        if not params:
            raise RuntimeError(f"fastnn.cuda: {model._short()} has no device copy of its "
                               f"parameters; call model.to('cuda')")
        self.model, self.plan, self.ops = model, plan, plan.ops
        self.buffer, self.params = plan.buffer, params[0]
        self.dtype = plan.buffer.data.dtype
        self.in_shape = tuple(plan.input_shape)
        self.in_size = _size(self.in_shape)
        self.out_features = plan.ops[-1]["out"][0]
        self.grads = None
        self.stats = None if plan.stats is None else cuda.to_device(plan.stats)
        self.forwards = 0       # training forward passes not yet counted in the layers
        # storage of each op's output: its own (the op's index) or its input's (identity
        # ops: Flatten, Dropout(p=0), a ReLU fused into the previous op); -1 is the input
        self.src, self.dst = [], []
        cur = -1
        for i, op in enumerate(self.ops):
            self.src.append(cur)
            if op["kind"] not in _IDENTITY and not (op["kind"] == "activation" and op["y"] < 0):
                cur = i
            self.dst.append(cur)
        # an op computes its input gradient only when some earlier op has parameters
        seen, self.need_dx = False, []
        for op in self.ops:
            self.need_dx.append(seen)
            seen = seen or op["w"] >= 0 or op["b"] >= 0
        # a Linear whose input is a Linear's / Conv2d's / BatchNorm's ReLU output computes
        # its input gradient times relu' in one GEMM (matmul_act_backward), as the MLP path
        self.masked = set()
        for i, op in enumerate(self.ops):
            j = self.src[i]
            if op["kind"] == "linear" and self.need_dx[i] and j >= 0 \
                    and self.ops[j]["kind"] != "activation" and self.ops[j].get("act") == "relu":
                self.masked.add(j)
        self._bufs = {}
        self._views = {}

    # ---- buffers --------------------------------------------------------------------------
    def check_input(self, X, fn):
        """X (n,) + the plan's sample shape as a contiguous (n, features) array."""
        X = np.asarray(X)
        if X.shape[1:] != self.in_shape:
            raise ValueError(f"{fn}: X has samples of shape {X.shape[1:]}, the model's plan "
                             f"was built for {self.in_shape}")
        return np.ascontiguousarray(X.reshape(len(X), self.in_size), dtype=self.dtype)

    def _param_views(self, flat):
        """Per op: {name: view} of a flat device buffer (weights shaped for their kernel)."""
        hit = self._views.get(id(flat))
        if hit is not None and hit[0] is flat:
            return hit[1]
        out = []
        for op in self.ops:
            v, k, C = {}, op["kind"], op["in"][0]
            n_out = op["out"][0]
            if k == "linear":
                v["w"] = flat[op["w"]:op["w"] + n_out * C].reshape(n_out, C)
            elif k == "conv2d":
                cig = C // op["groups"]
                v["w"] = flat[op["w"]:op["w"] + n_out * cig * op["kh"] * op["kw"]].reshape(
                    n_out, cig, op["kh"], op["kw"])
            elif k == "batch_norm" and op["w"] >= 0:
                v["w"] = flat[op["w"]:op["w"] + C]
            if op["b"] >= 0:
                v["b"] = flat[op["b"]:op["b"] + n_out]
            out.append(v)
        self._views[id(flat)] = (flat, out)
        return out

    def _running(self, op):
        if op["rs"] < 0 or self.stats is None:
            return None, None
        C = op["in"][0]
        key = ("rs", op["rs"])
        if key not in self._bufs:
            self._bufs[key] = (self.stats[op["rs"]:op["rs"] + C],
                               self.stats[op["rs"] + C:op["rs"] + 2 * C])
        return self._bufs[key]

    def buffers(self, rows, training):
        """(values, grads, aux) for `rows` rows, allocated once per size: per op a flat
        output array (None where the op writes its input's storage), the gradient arrays
        (training only), and per op its saved state (max-pool argmax, batch-norm mean and
        inverse standard deviation, scratch gradients)."""
        key = (rows, training)
        if key in self._bufs:
            return self._bufs[key]
        dt = self.dtype
        vals, grads, aux = [], [], []
        for i, op in enumerate(self.ops):
            own = self.dst[i] == i
            n = rows * _size(op["out"])
            vals.append(cuda.device_array(n, dt) if own else None)
            grads.append(cuda.device_array(n, dt) if own and training else None)
            a = {}
            k, C = op["kind"], op["in"][0]
            if k == "max_pool2d":
                a["idx"] = cuda.device_array(n, np.int64)
            elif k == "batch_norm":
                a["mean"], a["invstd"] = cuda.device_array(C, dt), cuda.device_array(C, dt)
                if training:
                    if op["w"] < 0:
                        a["dw"], a["db"] = cuda.device_array(C, dt), cuda.device_array(C, dt)
                    if not self.need_dx[i]:
                        a["dx"] = cuda.device_array(rows * _size(op["in"]), dt)
            elif k == "linear" and training and op["b"] < 0:
                a["db"] = cuda.device_array(op["out"][0], dt)
            aux.append(a)
        self._bufs[key] = vals, grads, aux
        return self._bufs[key]

    # ---- forward and backward -------------------------------------------------------------
    def forward(self, x, rows, training):
        """The output (rows, outputs) for x, a flat device array of rows samples; training:
        batch statistics (running statistics updated), else the running statistics."""
        vals, _, aux = self.buffers(rows, training)
        pv = self._param_views(self.params)
        store = lambda j: x if j < 0 else vals[j]
        for i, op in enumerate(self.ops):
            if self.dst[i] == self.src[i]:
                continue
            self._forward_op(op, pv[i], aux[i], store(self.src[i]), vals[i], rows, training)
        if training:
            self.forwards += 1
        return store(self.dst[-1]).reshape(rows, self.out_features)

    def _forward_op(self, op, p, a, X, Y, m, training):
        k = op["kind"]
        (C, H, W), (OC, OH, OW) = op["in"], op["out"]
        if k == "linear":
            ops.matmul_bias_act(X.reshape(m, C), p["w"], p.get("b"), op.get("act", "identity"),
                                out=Y.reshape(m, OC), trans_b=True)
            return
        if k == "conv2d":
            _count_launch("conv2d")
            b = p.get("b")
            conv._launch(conv._forward, Y.size, Y.reshape(m, OC, OH, OW),
                         X.reshape(m, C, H, W), p["w"], b if b is not None else Y,
                         b is not None, *self._geo(op))
        elif k == "max_pool2d":
            _count_launch("max_pool2d")
            _maxpool_fwd[_blocks(Y.size, 128), 128](Y, a["idx"], X, Y.size, H, W, OH, OW,
                                                    *self._window(op))
        elif k == "avg_pool2d":
            _count_launch("avg_pool2d")
            _avgpool_fwd[_blocks(Y.size, 128), 128](Y, X, Y.size, H, W, OH, OW,
                                                    *self._window(op),
                                                    bool(op["count_include_pad"]))
        elif k == "global_avg_pool":
            _count_launch("adaptive_avg_pool2d")
            _gap_fwd[_blocks(m * C, 128), 128](Y, X, m * C, H * W)
        elif k == "batch_norm":
            _count_launch("batch_norm")
            rm, rv = self._running(op)
            has_running = rm is not None
            batch_stats = training or not has_running
            w, b = p.get("w"), p.get("b")
            affine = w is not None
            dummy = a["mean"]
            _bn_fwd[C, BLOCK](Y, a["mean"], a["invstd"], rm if has_running else dummy,
                              rv if has_running else dummy, X, w if affine else dummy,
                              b if affine else dummy, m, C, H * W, batch_stats,
                              has_running and training, affine, float(op["momentum"]),
                              float(op["eps"]))
        elif k == "activation":
            spec = op["act"]
            name = _spec_name(spec)
            code, p1, p2 = ops._activation_spec(spec, name)
            ops._act_forward(name, code, X, Y, p1, p2)
            return
        else:       # pragma: no cover - plan.build describes no other kind
            raise NotImplementedError(f"fastnn.cuda: plan op {k!r}")
        if op.get("act") == "relu":         # conv2d / batch_norm with a fused ReLU
            ops.relu(Y, out=Y)

    @staticmethod
    def _geo(op):
        g, C, OC = op["groups"], op["in"][0], op["out"][0]
        return (op["sh"], op["sw"], op["ph"], op["pw"], op["dh"], op["dw"], C // g, OC // g)

    @staticmethod
    def _window(op):
        return op["kh"], op["kw"], op["sh"], op["sw"], op["ph"], op["pw"]

    def loss_grad(self, rows):
        """The (rows, outputs) array the loss writes its gradient into."""
        _, grads, _ = self.buffers(rows, True)
        return grads[self.dst[-1]].reshape(rows, self.out_features)

    def backward(self, x, rows):
        """Gradients into self.grads (overwritten, as zero_grad + backward) from the loss
        gradient in loss_grad(rows), after forward(x, rows, True)."""
        if self.grads is None:      # zeros: the buffer's alignment padding gets no gradient
            self.grads = cuda.to_device(np.zeros(self.buffer.data.size, self.dtype))
        vals, grads, aux = self.buffers(rows, True)
        pv, gv = self._param_views(self.params), self._param_views(self.grads)
        for i in reversed(range(len(self.ops))):
            if self.dst[i] == self.src[i]:
                continue
            j = self.src[i]
            X = x if j < 0 else vals[j]
            dX = grads[j] if self.need_dx[i] else None
            self._backward_op(self.ops[i], pv[i], gv[i], aux[i], X, vals[i], dX, grads[i],
                              rows, i in self.masked, j in self.masked)

    def _backward_op(self, op, p, g, a, X, Y, dX, dY, m, masked, mask_dx):
        """masked: dY already holds relu' (the next Linear applied it); mask_dx: apply the
        input's relu' to dX here (in the input gradient GEMM)."""
        k = op["kind"]
        (C, H, W), (OC, OH, OW) = op["in"], op["out"]
        if op.get("act") == "relu" and k != "activation" and not masked:
            ops.relu_backward(dY, Y, out=dY)        # relu'(z) from the output
        if k == "linear":
            dZ = dY.reshape(m, OC)
            ops.matmul_bias_grad(dZ, X.reshape(m, C), out=g["w"],
                                 db=g["b"] if "b" in g else a["db"], trans_a=True)
            if dX is not None and mask_dx:
                ops.matmul_act_backward(dZ, p["w"], X.reshape(m, C), "relu",
                                        out=dX.reshape(m, C))
            elif dX is not None:
                ops.matmul(dZ, p["w"], out=dX.reshape(m, C))
        elif k == "conv2d":
            geo = self._geo(op)
            dY4 = dY.reshape(m, OC, OH, OW)
            _count_launch("conv2d_backward")
            conv._launch(conv._backward_weight, g["w"].size, g["w"], dY4,
                         X.reshape(m, C, H, W), *geo)
            if "b" in g:
                _count_launch("conv2d_backward")
                conv._launch(conv._backward_bias, OC, g["b"], dY4)
            if dX is not None:
                _count_launch("conv2d_backward")
                conv._launch(conv._backward_data, dX.size, dX.reshape(m, C, H, W), dY4,
                             p["w"], *geo)
        elif k == "max_pool2d":
            if dX is not None:
                _count_launch("max_pool2d_backward")
                _maxpool_bwd[_blocks(m * C, 64), 64](dX, dY, a["idx"], m * C, H * W, OH * OW)
        elif k == "avg_pool2d":
            if dX is not None:
                _count_launch("avg_pool2d_backward")
                _avgpool_bwd[_blocks(m * C, 64), 64](dX, dY, m * C, H, W, OH, OW,
                                                     *self._window(op),
                                                     bool(op["count_include_pad"]))
        elif k == "global_avg_pool":
            if dX is not None:
                _count_launch("adaptive_avg_pool2d_backward")
                _gap_bwd[_blocks(dX.size, 128), 128](dX, dY, dX.size, H * W)
        elif k == "batch_norm":
            _count_launch("batch_norm_backward")
            affine = "w" in g
            _bn_bwd[C, BLOCK](dX if dX is not None else a["dx"],
                              g["w"] if affine else a["dw"], g["b"] if affine else a["db"],
                              dY, X, a["mean"], a["invstd"], p["w"] if affine else a["mean"],
                              m, C, H * W, True, affine)
        elif k == "activation":
            if dX is not None:
                spec = op["act"]
                name = _spec_name(spec) + "_backward"
                code, p1, p2 = ops._activation_spec(spec, name)
                ops._act_backward(name, code, dY, X, dX, p1, p2)

    # ---- the interface Trainer and predict use ---------------------------------------------
    def train_forward(self, xb):
        m = len(xb)
        out = self.forward(xb.reshape(xb.size), m, True)
        return out, self.loss_grad(m), None

    def train_backward(self, xb, saved):
        self.backward(xb.reshape(xb.size), len(xb))

    def predict_batch(self, xb):
        m = len(xb)
        return self.forward(xb.reshape(xb.size), m, False)

    def write_back(self):
        """The device running statistics into Plan.stats (the layers' running_mean and
        running_var are views of it); num_batches_tracked advances by the training forward
        passes since the last call."""
        if self.stats is not None:
            self.stats.copy_to_host(self.plan.stats)
        for layer in self.plan.norms:
            layer.num_batches_tracked += self.forwards
        self.forwards = 0

    def check_batch_norm(self, rows, fn, training=True):
        """ValueError when a batch of `rows` rows leaves one value per channel for a
        BatchNorm using batch statistics (in training; in evaluation one without running
        statistics): the per-op layer's error."""
        for i, op in enumerate(self.ops):
            if op["kind"] == "batch_norm" and (training or op["rs"] < 0) \
                    and rows * op["in"][1] * op["in"][2] < 2:
                when = "when training" if training else "for batch statistics"
                raise ValueError(f"{fn}: {self.model[i]._where()}: expected more than 1 value "
                                 f"per channel {when}, got a batch of {rows} sample(s) "
                                 f"of shape {op['in']} (choose a batch_size that does not "
                                 f"leave a last batch of one sample)")


def _make_net(model, input_shape):
    """The device executor of a model on cuda: _Net (Linear units) or _PlanNet."""
    if _is_plan_model(model):
        return _PlanNet(model, input_shape)
    return _Net(model)


def _as_host(X, name):
    if getattr(X, "__cuda_ndarray__", False) or hasattr(X, "__cuda_array_interface__"):
        raise TypeError(f"{name} is a device array; pass a numpy array (fit, evaluate and "
                        f"predict upload it to the model's device once)")
    return X


def predict(model, X, batch_size=256):
    """The model's outputs for X (numpy in, numpy out), computed on the device in batches."""
    _as_host(X, "X")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"predict: batch_size must be an int >= 1, got {batch_size!r}")
    if _is_plan_model(model):
        return _plan_predict(model, X, batch_size)
    net = _Net(model)
    X = np.asarray(X, dtype=net.dtype)
    n = len(X) if X.ndim else 0
    X = X.reshape(n, -1) if n else X.reshape(0, net.units[0][0])
    if X.shape[1] != net.units[0][0]:
        raise ValueError(f"predict: X has {X.shape[1]} features per sample, the model "
                         f"expects {net.units[0][0]}")
    out = np.empty((n, net.units[-1][1]), net.dtype)
    if n == 0:
        return out
    Xd = cuda.to_device(np.ascontiguousarray(X))
    bs = min(int(batch_size), n)
    for i in range(0, n, bs):
        m = min(bs, n - i)
        h, z, _, _ = net.buffers(m, False)
        net.forward(Xd[i:i + m], h, z)
        out[i:i + m] = h[-1].copy_to_host()
    return out


def _plan_predict(model, X, batch_size):
    """predict for a model the layer plan runs: X (n, C, H, W) or (n, features), or one
    sample (C, H, W) / (features,); evaluation mode (batch norm's running statistics)."""
    X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise TypeError(f"predict: X must be a numeric array, got dtype {X.dtype}")
    one = X.ndim in (1, 3)
    if one:
        X = X[None]
    if X.ndim not in (2, 4):
        raise ValueError(f"predict: X must have shape (n, C, H, W) or (n, features) (or one "
                         f"sample), got {X.shape}")
    net = _PlanNet(model, X.shape[1:])
    X = net.check_input(X, "predict")
    n = len(X)
    out = np.empty((n, net.out_features), net.dtype)
    if n:
        bs = min(int(batch_size), n)
        for rows in {bs, n % bs or bs}:
            net.check_batch_norm(rows, "predict", training=False)
        Xd = cuda.to_device(X)
        for i in range(0, n, bs):
            m = min(bs, n - i)
            xb = Xd[i:i + m]
            out[i:i + m] = net.predict_batch(xb).copy_to_host()
    return out[0] if one else out


_OPTIMIZERS = (SGD, Adam, AdamW, RMSprop, Adagrad)


class Trainer:
    """The epochs of fastnn.fit for a model on cuda: built once per fit (checks everything
    and uploads X and y), then ``epoch(order, lr, ...)`` per epoch."""

    def __init__(self, model, loss, optimizer, X, y, batch_size, metrics):
        self.net = net = _make_net(model, X.shape[1:])
        buffer, dtype = net.buffer, net.dtype
        self.loss = loss
        t = type(loss)
        if t not in (CrossEntropyLoss, MSELoss, L1Loss, HuberLoss, BCEWithLogitsLoss):
            raise NotImplementedError(f"fit on cuda: loss {t.__name__} is not supported "
                                      f"(supported: CrossEntropyLoss, MSELoss, L1Loss, "
                                      f"HuberLoss, BCEWithLogitsLoss)")
        if loss.reduction not in ("mean", "sum"):
            raise ValueError(f"fit on cuda: loss reduction must be 'mean' or 'sum', got "
                             f"{loss.reduction!r}")
        self.classify = t is CrossEntropyLoss
        allowed = (("accuracy",) if self.classify else () if t is BCEWithLogitsLoss
                   else ("mae", "mse"))
        bad = [m for m in metrics if m not in allowed]
        if bad:
            raise NotImplementedError(f"fit on cuda: metrics {bad} are not supported with "
                                      f"{t.__name__} (supported: {list(allowed)}; pass "
                                      f"metrics=[] for none)")
        self.metrics = list(metrics)
        if self.classify and y.ndim != 1:
            raise NotImplementedError("fit on cuda: CrossEntropyLoss needs integer class "
                                      "labels of shape (samples,); class probabilities are "
                                      "not supported")

        if type(optimizer) not in _OPTIMIZERS:
            raise NotImplementedError(f"fit on cuda: optimizer {type(optimizer).__name__} is "
                                      f"not supported (supported: SGD, Adam, AdamW, RMSprop, "
                                      f"Adagrad)")
        chunks = optimizer._groups_chunks
        if len(chunks) != 1 or len(chunks[0]) != 1 or chunks[0][0].data is not buffer.data:
            raise NotImplementedError(f"fit on cuda: the optimizer must have one parameter "
                                      f"group holding every parameter of the model "
                                      f"({type(optimizer).__name__}(model.parameters())); "
                                      f"got {len(optimizer.param_groups)} group(s) over "
                                      f"other parameters")
        self.optimizer, self.group = optimizer, optimizer.param_groups[0]
        self.chunk = chunk = chunks[0][0]
        had = set(chunk.state)
        oargs = _fused._optim_args(optimizer, buffer)
        if oargs is None:       # SGD's momentum buffer and step count disagree
            raise ValueError("fit on cuda: the SGD momentum buffer and step count are "
                             "inconsistent (a state loaded without 'momentum_buffer'?)")
        self.kind = oargs[0]
        self._new_states = set(chunk.state) - had
        self.host_states = oargs[2]
        self.states = [None if s is None else cuda.to_device(s) for s in oargs[2]]
        self.step = chunk.step

        X = net.check_input(X, "fit on cuda")
        self.n, self.batch_size = len(X), int(batch_size)
        if isinstance(net, _PlanNet):
            net.check_batch_norm(min(self.batch_size, self.n), "fit on cuda")
            if self.n % self.batch_size:
                net.check_batch_norm(self.n % self.batch_size, "fit on cuda")
        self.X = cuda.to_device(X)
        y = np.ascontiguousarray(y, dtype=np.int64 if self.classify else dtype)
        self.y = cuda.to_device(y)
        self.weight = None     # class weights (cross-entropy) or pos_weight (BCE)
        w = loss.weight if self.classify else getattr(loss, "pos_weight", None)
        if w is not None:
            self.weight = cuda.to_device(np.ascontiguousarray(w, dtype=dtype))
        self.steps = -(-self.n // self.batch_size)
        self.values = cuda.device_array(self.steps, np.float64)
        self._batch = {}

    def _batch_arrays(self, m):
        if m not in self._batch:
            xb = cuda.device_array((m, self.X.shape[1]), self.net.dtype)
            yb = cuda.device_array((m,) + tuple(self.y.shape[1:]), self.y.dtype)
            self._batch[m] = xb, yb
        return self._batch[m]

    def _update(self, lr):
        g = self.group
        P, G, S = self.net.params, self.net.grads, self.states
        common = {"lr": lr, "weight_decay": g["weight_decay"], "maximize": g["maximize"]}
        if self.kind == "sgd":
            ops.sgd_step(P, G, S[0], momentum=g["momentum"], dampening=g["dampening"],
                         nesterov=g["nesterov"], first_step=self.step == 0, **common)
        elif self.kind == "adam":
            b1, b2 = g["betas"]
            ops.adam_step(P, G, S[0], S[1], S[2], step=self.step + 1, beta1=b1, beta2=b2,
                          eps=g["eps"], amsgrad=g["amsgrad"],
                          decoupled_weight_decay=type(self.optimizer) is AdamW, **common)
        elif self.kind == "rmsprop":
            ops.rmsprop_step(P, G, S[0], S[1], S[2], alpha=g["alpha"], eps=g["eps"],
                             momentum=g["momentum"], centered=g["centered"], **common)
        else:
            ops.adagrad_step(P, G, S[0], step=self.step + 1, lr_decay=g["lr_decay"],
                             eps=g["eps"], **common)
        self.step += 1

    def _loss(self, out, yb, g, value):
        if self.classify:
            ops.cross_entropy_with_grad(out, yb, self.weight, self.loss.label_smoothing,
                                        self.loss.reduction, grad_out=g, value_out=value,
                                        check_labels=False)
        elif type(self.loss) is MSELoss:
            ops.mse_loss_with_grad(out, yb, self.loss.reduction, grad_out=g, value_out=value)
        elif type(self.loss) is L1Loss:
            ops.l1_loss_with_grad(out, yb, self.loss.reduction, grad_out=g, value_out=value)
        elif type(self.loss) is HuberLoss:
            ops.huber_loss_with_grad(out, yb, self.loss.delta, self.loss.reduction, grad_out=g,
                                     value_out=value)
        else:
            ops.binary_cross_entropy_with_logits_with_grad(out, yb, self.weight,
                                                           self.loss.reduction, grad_out=g,
                                                           value_out=value)

    def write_back(self):
        """The device optimizer state into the optimizer's CPU buffers, and the step count."""
        for host, dev in zip(self.host_states, self.states):
            if dev is not None:
                dev.copy_to_host(host)
        self.chunk.step = self.step
        self.net.write_back()       # batch norm's running statistics (plan path)
        if self.step == 0:        # no update made: leave no state a CPU step would misread
            for name in self._new_states:
                self.chunk.state.pop(name, None)

    def epoch(self, order, lr, callbacks=(), per_batch=False):
        """One epoch over the rows in `order` (a permutation of range(n)) at learning rate lr.
        Returns (samples seen, sum of batch loss x batch size, {metric: sum}) like the CPU
        loop; calls on_batch_end once at the end (every batch when per_batch)."""
        try:
            return self._epoch(order, lr, callbacks, per_batch)
        finally:
            self.write_back()

    def _epoch(self, order, lr, callbacks, per_batch):
        net, model = self.net, self.net.model
        index = cuda.to_device(np.ascontiguousarray(order, dtype=np.int64))
        acc = cuda.to_device(np.zeros(max(1, len(self.metrics)), np.float64))
        sizes = []
        for b in range(self.steps):
            m = min(self.batch_size, self.n - b * self.batch_size)
            xb, yb = self._batch_arrays(m)
            idx = index[b * self.batch_size:b * self.batch_size + m]
            ops.gather_rows(self.X, idx, out=xb, check_index=False)
            ops.gather_rows(self.y, idx, out=yb, check_index=False)
            out, g, saved = net.train_forward(xb)
            value = self.values[b:b + 1]
            self._loss(out, yb, g, value)
            for i, name in enumerate(self.metrics):
                if name == "accuracy":
                    ops.correct_count_add(out, yb, acc[i:i + 1])
                else:
                    ops.row_error_add(out, yb, acc[i:i + 1], squared=name == "mse")
            net.train_backward(xb, saved)
            self._update(lr)
            sizes.append(m)
            if per_batch:
                v = float(value.copy_to_host()[0])
                for c in callbacks:
                    c.on_batch_end(b, {"batch": b, "size": m, "loss": v})
                if model.stop_training:
                    break
        k = len(sizes)
        values = self.values.copy_to_host()[:k]
        seen = int(sum(sizes))
        loss_sum = float(sum(float(v) * s for v, s in zip(values, sizes)))
        sums = dict(zip(self.metrics, (float(a) for a in acc.copy_to_host())))
        if not per_batch and k:
            for c in callbacks:
                c.on_batch_end(k - 1, {"batch": k - 1, "size": seen, "loss": loss_sum / seen})
        return seen, loss_sum, sums
