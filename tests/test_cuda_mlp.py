"""fastnn.cuda.mlp.MLP: a whole training step from fastnn.cuda.ops against numpy, and the
number of kernel launches it takes. Runs under the CUDA simulator unless
NUMBA_ENABLE_CUDASIM=0 is set (see tests/test_cuda_ops.py)."""
from cuda_setup import fc, gemm_launches, quiet  # first: it sets up the simulator

import numpy as np
import pytest

import reference as ref  # noqa: E402
from fastnn.cuda.mlp import MLP  # noqa: E402

pytestmark = quiet

SIZES = [20, 16, 12, 5]


def numpy_step(params, buf, x, labels, lr, momentum, first):
    """The same step in float64 numpy: forward, mean cross-entropy, backward, SGD."""
    weights, o = [], 0
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        weights.append((params[o:o + fan_out * fan_in].reshape(fan_out, fan_in),
                        params[o + fan_out * fan_in:o + fan_out * fan_in + fan_out]))
        o += fan_out * fan_in + fan_out
    hs = [x]
    for l, (w, b) in enumerate(weights):
        z = hs[-1] @ w.T + b
        hs.append(ref.relu(z) if l < len(weights) - 1 else z)
    loss = ref.cross_entropy(hs[-1], labels)
    dz = ref.cross_entropy_backward(hs[-1], labels)
    grads = [None] * len(weights)
    for l in reversed(range(len(weights))):
        grads[l] = np.concatenate([(dz.T @ hs[l]).ravel(), dz.sum(0)])
        if l > 0:
            dz = ref.relu_backward(dz @ weights[l][0], hs[l])
    params, buf = ref.sgd_step(params, np.concatenate(grads), buf, lr=lr, momentum=momentum,
                               first_step=first)
    return params, buf, loss


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-5)],
                         ids=["float64", "float32"])
def test_train_steps_match_numpy(dtype, rtol):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, SIZES[0])).astype(dtype)
    labels = rng.integers(0, SIZES[-1], 9)
    net = MLP(SIZES, dtype=dtype, seed=1)
    params = fc.to_host(net.params).astype(np.float64)
    buf = np.zeros_like(params)
    dx, dl = fc.to_device(x), fc.to_device(labels)
    for step in range(2):
        loss = float(fc.to_host(net.train_step(dx, dl, lr=0.1, momentum=0.9))[0])
        params, buf, want_loss = numpy_step(params, buf, x.astype(np.float64), labels, 0.1,
                                            0.9, step == 0)
        assert abs(loss - want_loss) <= rtol * abs(want_loss), (step, loss, want_loss)
        got = fc.to_host(net.params).astype(np.float64)
        np.testing.assert_allclose(got, params, rtol=rtol, atol=rtol * np.abs(params).max(),
                                   err_msg=f"parameters after step {step + 1}")
    # the momentum buffer holds PyTorch's buf after the second step
    np.testing.assert_allclose(fc.to_host(net.momentum_buffer), buf, rtol=50 * rtol,
                               atol=50 * rtol * np.abs(buf).max())


def test_three_layer_step_takes_ten_launches():
    """3 forward GEMMs (bias + ReLU fused), 1 softmax-cross-entropy (value + gradient),
    3 dW GEMMs with db in the same launch, 2 input-gradient GEMMs with the ReLU derivative
    fused, 1 SGD update over the flat buffer."""
    net = MLP(SIZES, dtype=np.float32, seed=2)
    x = fc.to_device(np.ones((4, SIZES[0]), np.float32))
    labels = fc.to_device(np.array([0, 1, 2, 3]))
    fc.reset_launch_count()
    net.train_step(x, labels, lr=0.01)
    E = gemm_launches()        # 2 through cuBLAS: the product, then the epilogue kernel
    assert fc.launch_count() == {"matmul_bias_act": 3 * E, "cross_entropy_with_grad": 1,
                                 "matmul_bias_grad": 3 * E, "matmul_act_backward": 2 * E,
                                 "sgd_step": 1}
    assert fc.launch_count().total() == (3 * net.layers - 1) * E + 2 == 8 * E + 2
