"""A multi-layer perceptron trained on the GPU from fastnn.cuda.ops: the reference for how
many launches one training step takes, and the workload of benchmarks/bench_cuda.py.

    net = MLP([784, 256, 256, 10], seed=0)
    loss = net.train_step(x, labels, lr=0.1, momentum=0.9)   # device arrays in, (1,) out

One step = L forward GEMMs (bias and ReLU in the epilogue) + 1 fused softmax-cross-entropy
(value and gradient) + L GEMMs for dW with db in the same launch + L - 1 GEMMs for the
input gradients with the ReLU derivative in the epilogue + 1 SGD update over the flat
parameter buffer: 3L + 1 launches (10 for three layers), no host synchronisation.
"""
import numpy as np

from . import to_device
from . import ops

from numba import cuda


class MLP:
    """Linear layers (weight (out, in), bias (out,), as torch.nn.Linear) with ReLU between
    them and logits out. Parameters, gradients and the momentum buffer are flat device
    buffers [W1, b1, W2, b2, ...]; `weight(l)`/`bias(l)` are views into them."""

    def __init__(self, sizes, dtype=np.float32, seed=0, params=None):
        self.sizes = list(sizes)
        self.dtype = np.dtype(dtype)
        self._offsets = []
        o = 0
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            self._offsets.append((o, o + fan_out * fan_in))
            o += fan_out * fan_in + fan_out
        self.size = o
        if params is None:                  # torch.nn.Linear's default: U(-1/sqrt(in), ..)
            rng = np.random.default_rng(seed)
            params = np.concatenate([
                rng.uniform(-1, 1, fan_out * fan_in + fan_out) / np.sqrt(fan_in)
                for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:])])
        self.params = to_device(np.asarray(params, dtype=self.dtype))
        self.grads = cuda.device_array(self.size, self.dtype)
        self.momentum_buffer = cuda.device_array(self.size, self.dtype)
        self.steps = 0
        self._buffers = {}
        self._views = {}

    @property
    def layers(self):
        return len(self.sizes) - 1

    def _view(self, flat, layer, what):
        """A view into params or grads, made once (slicing a device array costs host time
        on every step)."""
        key = (id(flat), layer, what)
        hit = self._views.get(key)
        if hit is None or hit[0] is not flat:
            hit = self._views[key] = (flat, self._make_view(flat, layer, what))
        return hit[1]

    def _make_view(self, flat, layer, what):
        w0, b0 = self._offsets[layer]
        fan_in, fan_out = self.sizes[layer], self.sizes[layer + 1]
        if what == "weight":
            return flat[w0:b0].reshape(fan_out, fan_in)
        return flat[b0:b0 + fan_out]

    def weight(self, layer, grad=False):
        return self._view(self.grads if grad else self.params, layer, "weight")

    def bias(self, layer, grad=False):
        return self._view(self.grads if grad else self.params, layer, "bias")

    def _batch_buffers(self, batch):
        """Activations h[l] and their gradients dz[l] (batch, sizes[l + 1]) for this batch
        size, allocated once."""
        if batch not in self._buffers:
            h = [cuda.device_array((batch, n), self.dtype) for n in self.sizes[1:]]
            dz = [cuda.device_array((batch, n), self.dtype) for n in self.sizes[1:]]
            self._buffers[batch] = h, dz, cuda.device_array(1, np.float64)
        return self._buffers[batch]

    def forward(self, x):
        """Logits (batch, classes) of x (batch, sizes[0]); h[l] = relu(h[l-1] @ W.T + b)."""
        h, _, _ = self._batch_buffers(x.shape[0])
        prev = x
        for l in range(self.layers):
            act = "relu" if l < self.layers - 1 else "identity"
            ops.matmul_bias_act(prev, self.weight(l), self.bias(l), act, out=h[l],
                                trans_b=True)
            prev = h[l]
        return prev

    def train_step(self, x, labels, lr, momentum=0.9, label_smoothing=0.0):
        """Forward, mean softmax cross-entropy, backward and one SGD(momentum) update.
        Returns the loss before the update as a (1,) float64 device array (reused by the next
        step of the same batch size: copy it to keep it)."""
        h, dz, value = self._batch_buffers(x.shape[0])
        logits = self.forward(x)
        ops.cross_entropy_with_grad(logits, labels, label_smoothing=label_smoothing,
                                    grad_out=dz[-1], value_out=value, check_labels=False)
        for l in reversed(range(self.layers)):
            prev = h[l - 1] if l > 0 else x
            # dW = dz^T prev and db = dz.sum(0) in one launch
            ops.matmul_bias_grad(dz[l], prev, out=self.weight(l, grad=True),
                                 db=self.bias(l, grad=True), trans_a=True)
            if l > 0:   # d(prev pre-activation) = (dz @ W) * relu'(prev)
                ops.matmul_act_backward(dz[l], self.weight(l), prev, "relu", out=dz[l - 1])
        ops.sgd_step(self.params, self.grads, self.momentum_buffer, lr=lr, momentum=momentum,
                     first_step=self.steps == 0)
        self.steps += 1
        return value
