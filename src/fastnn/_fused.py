"""Compile a Sequential, its loss and its optimizer into the fused C training step
(fastnn._kernels.FusedNet, csrc/net.c) when every piece is supported; fit, evaluate and
predict then run whole mini-batch loops in one native call. Anything else returns None and
keeps the per-op path, which gives the same numbers (bit for bit without Dropout; Dropout
draws its masks from a counter-based generator in C, seeded by fit's seed and epoch).

Supported: Flatten layers first, then units of Linear, an optional activation (ReLU,
LeakyReLU, Sigmoid, Tanh, GELU, SiLU) and an optional Dropout(p < 1); one flat parameter
buffer; CrossEntropyLoss with integer labels (class weights, label smoothing), MSELoss,
L1Loss, HuberLoss, BCEWithLogitsLoss (pos_weight); SGD, Adam, AdamW, RMSprop, Adagrad with a
single parameter group covering the whole buffer. Other models of supported layers (CNNs,
BatchNorm, activations in a row) go through the general layer plan (fastnn.plan).
"""
import numpy as np

from ._kernels import FusedNet
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss
from .nn import GELU, Dropout, Flatten, LeakyReLU, Linear, ReLU, Sequential, Sigmoid, SiLU, Tanh
from .optim import SGD, Adagrad, Adam, AdamW, RMSprop


def _activation(layer):
    """The activation spec of matmul_bias_act for a layer, or None if it is not one."""
    t = type(layer)
    if t is ReLU:
        return "relu"
    if t is LeakyReLU:
        return ("leaky_relu", layer.negative_slope)
    if t is GELU:
        return "gelu" if layer.approximate == "none" else "gelu_tanh"
    return {Sigmoid: "sigmoid", Tanh: "tanh", SiLU: "silu"}.get(t)


def _units(model):
    """(units, buffer) of a supported Sequential: units are FusedNet's tuples with offsets
    into the model's single flat buffer; None when the model has another structure."""
    if type(model) is not Sequential:
        return None
    layers = list(model)
    while layers and type(layers[0]) is Flatten:
        layers.pop(0)
    units, buffer = [], None
    i = 0
    while i < len(layers):
        lin = layers[i]
        if type(lin) is not Linear:
            return None
        i += 1
        act, drop = "identity", 0.0
        if i < len(layers) and _activation(layers[i]) is not None:
            act = _activation(layers[i])
            i += 1
        if i < len(layers) and type(layers[i]) is Dropout:
            drop = layers[i].p
            i += 1
            if drop >= 1.0:
                return None
        for p in (lin.weight, lin.bias):
            if p is None:
                continue
            if buffer is None:
                buffer = p._buffer
            if p._buffer is None or p._buffer is not buffer:
                return None
        units.append((lin.in_features, lin.out_features, lin.weight._offset,
                      -1 if lin.bias is None else lin.bias._offset, act, drop))
    if not units or buffer is None or any(u[0] != v[1] for u, v in zip(units[1:], units)):
        return None
    return units, buffer


def _loss_args(loss, dtype):
    t = type(loss)
    if loss.reduction not in ("mean", "sum"):
        return None
    args = {"reduction": loss.reduction}
    if t is CrossEntropyLoss:
        args.update(loss="cross_entropy", label_smoothing=loss.label_smoothing,
                    weight=None if loss.weight is None else loss.weight.astype(dtype))
    elif t is BCEWithLogitsLoss:
        args.update(loss="bce_with_logits",
                    weight=None if loss.pos_weight is None else loss.pos_weight.astype(dtype))
    elif t in (MSELoss, L1Loss):
        args["loss"] = "mse" if t is MSELoss else "l1"
    elif t is HuberLoss:
        args.update(loss="huber", delta=loss.delta)
    else:
        return None
    return args


def _optim_args(opt, buffer):
    """(name, hyper, states, step, chunk) for an optimizer over exactly the whole buffer."""
    if type(opt) not in (SGD, Adam, AdamW, RMSprop, Adagrad) or len(opt.param_groups) != 1:
        return None
    chunks = opt._groups_chunks[0]
    if len(chunks) != 1 or chunks[0].data is not buffer.data or chunks[0].grad is not buffer.grad:
        return None
    c, g = chunks[0], opt.param_groups[0]
    t = type(opt)
    common = {"lr": g["lr"], "weight_decay": g["weight_decay"], "maximize": g["maximize"]}
    if t is SGD:
        # C initialises the momentum buffer on step 1, Python when the buffer is missing
        if g["momentum"] != 0 and ("momentum_buffer" in c.state) != (c.step > 0):
            return None
        hyper = dict(common, momentum=g["momentum"], dampening=g["dampening"],
                     nesterov=g["nesterov"])
        states = [c.buffer("momentum_buffer") if g["momentum"] != 0 else None]
        return "sgd", hyper, states, c.step, c
    if t in (Adam, AdamW):
        b1, b2 = g["betas"]
        hyper = dict(common, beta1=b1, beta2=b2, eps=g["eps"], amsgrad=g["amsgrad"],
                     decoupled=t is AdamW)
        states = [c.buffer("exp_avg"), c.buffer("exp_avg_sq"),
                  c.buffer("max_exp_avg_sq") if g["amsgrad"] else None]
        return "adam", hyper, states, c.step, c
    if t is RMSprop:
        hyper = dict(common, alpha=g["alpha"], eps=g["eps"], momentum=g["momentum"],
                     centered=g["centered"])
        states = [c.buffer("square_avg"),
                  c.buffer("momentum_buffer") if g["momentum"] > 0 else None,
                  c.buffer("grad_avg") if g["centered"] else None]
        return "rmsprop", hyper, states, c.step, c
    hyper = dict(common, lr_decay=g["lr_decay"], eps=g["eps"])
    return "adagrad", hyper, [c.buffer("sum", g["initial_accumulator_value"])], c.step, c


class FusedTraining:
    """A FusedNet for fit, tied to the optimizer's chunk so step counts stay in sync."""

    def __init__(self, net, chunk, group, buffer=None, states=(), cross_entropy=True):
        self.net, self.chunk, self.group = net, chunk, group
        self.net_params = None if buffer is None else buffer.data
        self.states = [s for s in states if s is not None]
        self.cross_entropy = cross_entropy   # False: net.metric_sums hold the training metrics

    def train(self, X, y, index, batch_size, seed, dist=None, model=None):
        """dist (a fastnn.distributed.Session): a data-parallel call (global batches)."""
        self.net.lr = self.group["lr"]          # schedulers change it between epochs
        self.net.step = self.chunk.step
        try:
            if dist is not None:
                return dist.train(self.net, X, y, index, batch_size, seed, model)
            return self.net.train(X, y, index, batch_size, seed)
        finally:
            self.chunk.step = self.net.step


def training_plan(model, loss, optimizer, X, y, batch_size, metrics, l2=0.0,
                  adam_eps_uncorrected=False):
    """A FusedTraining for fit, or None (then fit uses the per-op path). l2 and
    adam_eps_uncorrected: as FusedNet's (scikit-learn's formulas, for fastnn.sklearn)."""
    found = _units(model) if X.ndim == 2 else None
    if found is None:       # the general layer plan (CNNs, BatchNorm), or None
        if l2 or adam_eps_uncorrected:
            return None
        from . import plan
        return plan.training_plan(model, loss, optimizer, X, y, batch_size, metrics)
    units, buffer = found
    dtype = buffer.data.dtype
    largs = _loss_args(loss, dtype)
    oargs = _optim_args(optimizer, buffer)
    if largs is None or oargs is None or X.shape[1] != units[0][0]:
        return None
    if largs["loss"] == "cross_entropy":
        if y.ndim != 1 or set(metrics) - {"accuracy"}:
            return None
    elif y.shape != (len(X), units[-1][1]):
        return None      # the per-op path raises its error
    name, hyper, states, step, chunk = oargs
    net = FusedNet(units, buffer.data, buffer.grad, optim=name, hyper=hyper, states=states,
                   step=step, max_batch=batch_size, l2=l2,
                   adam_eps_uncorrected=adam_eps_uncorrected, **largs)
    return FusedTraining(net, chunk, optimizer.param_groups[0], buffer, states,
                         largs["loss"] == "cross_entropy")


def inference_net(model, max_batch=256, input_shape=None):
    """A FusedNet that runs model's forward pass (no training) on samples of input_shape
    (None: rows of features), or None."""
    found = _units(model) if input_shape is None or len(input_shape) == 1 else None
    if found is None:
        if input_shape is None:
            return None
        from . import plan
        return plan.inference_net(model, input_shape, max_batch)
    units, buffer = found
    return FusedNet(units, buffer.data, buffer.grad, optim="sgd", hyper={"lr": 0.0},
                    max_batch=max_batch)
