"""fastnn.fit, evaluate and predict for a model moved with ``model.to("cuda")``.

    model = fn.Sequential(fn.Linear(20, 64), fn.ReLU(), fn.Linear(64, 3), seed=0).to("cuda")
    fn.fit(model, fn.CrossEntropyLoss(), fn.Adam(model.parameters()), X, y, epochs=5)
    model.to("cpu")          # the trained weights, back in the same numpy Parameter views

Supported (anything else raises naming it): a Sequential of units Linear [activation]
[Dropout(p=0)] after optional leading Flatten layers, one flat parameter buffer (float32 or
float64; activations ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU); CrossEntropyLoss with
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
"""
import numpy as np
from numba import cuda

from .. import _fused
from ..loss import BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss
from ..nn import Dropout, Flatten, Linear, Sequential
from ..optim import SGD, Adagrad, Adam, AdamW, RMSprop
from . import ops

__all__ = ["Trainer", "check_model", "predict"]

_LAYERS = "Linear, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, Dropout(p=0), leading Flatten"


def check_model(model):
    """(units, buffer) of a model fastnn.cuda.train runs (see _fused._units); raises
    TypeError/ValueError naming what is not supported."""
    if type(model) is not Sequential:
        raise TypeError(f"fastnn.cuda: only a Sequential of {_LAYERS} runs on cuda, got "
                        f"{type(model).__name__}")
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


_OPTIMIZERS = (SGD, Adam, AdamW, RMSprop, Adagrad)


class Trainer:
    """The epochs of fastnn.fit for a model on cuda: built once per fit (checks everything
    and uploads X and y), then ``epoch(order, lr, ...)`` per epoch."""

    def __init__(self, model, loss, optimizer, X, y, batch_size, metrics):
        self.net = net = _Net(model)
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

        X = np.ascontiguousarray(X.reshape(len(X), -1), dtype=dtype)
        if X.shape[1] != net.units[0][0]:
            raise ValueError(f"fit on cuda: X has {X.shape[1]} features per sample, the "
                             f"model expects {net.units[0][0]}")
        self.n, self.batch_size = len(X), int(batch_size)
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
            h, z, dz, g = net.buffers(m, True)
            out = net.forward(xb, h, z)
            value = self.values[b:b + 1]
            self._loss(out, yb, g, value)
            for i, name in enumerate(self.metrics):
                if name == "accuracy":
                    ops.correct_count_add(out, yb, acc[i:i + 1])
                else:
                    ops.row_error_add(out, yb, acc[i:i + 1], squared=name == "mse")
            net.backward(xb, h, z, dz, g)
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
