"""Bad input gets a clear exception naming the argument, the expected and the received
value; it never crashes and never writes to the caller's arrays."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import ops

f32 = np.float32


def raises(exc, *words):
    """pytest.raises whose message must contain every word."""
    class _Ctx:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *a):
            out = self.ctx.__exit__(*a)
            msg = str(self.info.value)
            for w in words:
                assert w in msg, f"{w!r} not in {msg!r}"
            return out
    return _Ctx()


# ---- matmul ---------------------------------------------------------------------------------

def test_matmul_dtype():
    with raises(TypeError, "'a'", "float32 or float64", "int64"):
        ops.matmul(np.ones((2, 2), np.int64), np.ones((2, 2), f32))
    with raises(TypeError, "'b'", "float32", "float64"):
        ops.matmul(np.ones((2, 2), f32), np.ones((2, 2), np.float64))
    with raises(TypeError, "'out'", "float32", "float64"):
        ops.matmul(np.ones((2, 2), f32), np.ones((2, 2), f32), out=np.zeros((2, 2)))


def test_matmul_shapes():
    with raises(ValueError, "'a'", "2-D", "(3,)"):
        ops.matmul(np.ones(3, f32), np.ones((3, 2), f32))
    with raises(ValueError, "inner dimensions", "(2, 3)", "(4, 2)"):
        ops.matmul(np.ones((2, 3), f32), np.ones((4, 2), f32))
    with raises(ValueError, "'out'", "(2, 2)", "(2, 3)"):
        ops.matmul(np.ones((2, 3), f32), np.ones((3, 2), f32), out=np.zeros((2, 3), f32))


def test_matmul_out_rules_and_out_untouched_on_error():
    a, b = np.ones((4, 3), f32), np.ones((3, 5), f32)
    out = np.full((4, 5), 7.0, f32)
    with raises(ValueError, "'beta'", "'out' is None"):
        ops.matmul(a, b, beta=1.0)
    ro = out.copy()
    ro.flags.writeable = False
    with raises(ValueError, "'out'", "read-only"):
        ops.matmul(a, b, out=ro)
    with raises(ValueError, "'out'", "row-major"):
        ops.matmul(a, b, out=np.zeros((5, 4), f32).T)
    with raises(TypeError, "'out'", "numpy array", "list"):
        ops.matmul(a, b, out=[[0.0] * 5] * 4)
    with raises(ValueError, "'out'", "(4, 4)", "(4, 5)"):
        ops.matmul(a, np.ones((3, 4), f32), out=out)
    np.testing.assert_array_equal(out, 7.0)


def test_matmul_out_aliasing_an_input():
    buf = np.ones((4, 4), f32)
    with raises(ValueError, "'out'", "overlaps", "'a'"):
        ops.matmul(buf, np.ones((4, 4), f32), out=buf)
    big = np.ones((8, 8), f32)
    with raises(ValueError, "'out'", "overlaps", "'b'"):
        ops.matmul(np.ones((4, 4), f32), big[:4, :4], out=big[2:6, 2:6])


def test_matmul_unsupported_strides():
    a = np.ones((4, 6), f32)
    with raises(ValueError, "'a'", "unsupported strides", "ascontiguousarray"):
        ops.matmul(a[:, ::2], np.ones((3, 2), f32))
    with raises(ValueError, "'b'", "unsupported strides"):
        ops.matmul(np.ones((2, 2), f32), a[::2, ::2][:2, :2])
    with raises(ValueError, "'b'", "unsupported strides"):
        ops.matmul(np.ones((2, 4), f32), a[::-1, :4])


def test_matmul_scalars():
    with raises(TypeError, "'alpha'", "real number"):
        ops.matmul(np.ones((2, 2), f32), np.ones((2, 2), f32), alpha="x")


# ---- element-wise -------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [ops.relu, ops.sigmoid, ops.tanh, ops.silu, ops.gelu, ops.softplus,
                                ops.leaky_relu, ops.softmax, ops.log_softmax])
def test_elementwise_bad_input(fn):
    with raises(TypeError, "'x'", "int64"):
        fn(np.arange(4))
    with raises(TypeError, "'x'", "complex128"):
        fn(np.ones(3, complex))
    x = np.ones((3, 4), f32)
    with raises(ValueError, "'out'", "(3, 4)", "(4, 3)"):
        fn(x, out=np.zeros((4, 3), f32))
    with raises(TypeError, "'out'", "float32", "float64"):
        fn(x, out=np.zeros((3, 4)))
    with raises(ValueError, "'out'", "C-contiguous"):
        fn(x, out=np.zeros((4, 3), f32).T)
    big = np.ones(10, f32)
    with raises(ValueError, "'out'", "overlaps"):
        fn(big[:8].reshape(2, 4), out=big[2:].reshape(2, 4))


def test_elementwise_in_place_and_copies_of_inputs():
    x = np.array([-1.0, 2.0, -3.0], f32)
    assert ops.relu(x, out=x) is x
    np.testing.assert_array_equal(x, [0, 2, 0])
    strided = np.arange(-4, 4, dtype=f32)[::2]            # not contiguous: read through a copy
    np.testing.assert_array_equal(ops.relu(strided), [0, 0, 0, 2])
    np.testing.assert_array_equal(ops.relu([-1.0, 1.0]), [0, 1])  # array-likes are accepted


def test_backward_shape_and_dtype_mismatch():
    with raises(ValueError, "'x'", "'dy'", "(3,)", "(4,)"):
        ops.relu_backward(np.ones(3, f32), np.ones(4, f32))
    with raises(TypeError, "'x'", "float32", "float64"):
        ops.sigmoid_backward(np.ones(3, f32), np.ones(3))


def test_activation_parameters():
    with raises(ValueError, "'approximate'", "'none' or 'tanh'", "'fast'"):
        ops.gelu(np.ones(2, f32), approximate="fast")
    with raises(ValueError, "'beta'", "non-zero"):
        ops.softplus(np.ones(2, f32), beta=0)
    with raises(TypeError, "'negative_slope'", "real number"):
        ops.leaky_relu(np.ones(2, f32), negative_slope=None)


def test_bias_shapes():
    with raises(ValueError, "'bias'", "(4,)", "(3,)"):
        ops.bias_add(np.ones((2, 4), f32), np.ones(3, f32))
    with raises(ValueError, "'x'", "2-D"):
        ops.bias_add(np.ones(4, f32), np.ones(4, f32))
    with raises(ValueError, "'dy'", "2-D"):
        ops.bias_grad(np.ones(4, f32))
    with raises(ValueError, "'beta'", "'out' is None"):
        ops.bias_grad(np.ones((2, 4), f32), beta=1.0)


# ---- losses ---------------------------------------------------------------------------------

def test_loss_arguments():
    p, t = np.ones((3, 2), f32), np.ones((3, 2), f32)
    with raises(ValueError, "'reduction'", "'mean', 'sum' or 'none'", "'avg'"):
        ops.mse_loss(p, t, reduction="avg")
    with raises(ValueError, "'target'", "(3, 2)", "(2, 3)"):
        ops.l1_loss(p, np.ones((2, 3), f32))
    with raises(ValueError, "'delta'", "> 0"):
        ops.huber_loss(p, t, delta=0.0)
    with raises(ValueError, "'grad_output'", "reduction='none'"):
        ops.mse_loss_backward(p, t, reduction="none")
    with raises(ValueError, "'pos_weight'", "(2,)"):
        ops.binary_cross_entropy_with_logits(p, t, pos_weight=np.ones(3, f32))


def test_cross_entropy_labels_and_weights():
    z = np.zeros((3, 4), f32)
    with raises(ValueError, "'labels'", "[0, 4)", "got 4 at position 1"):
        ops.cross_entropy(z, np.array([0, 4, 1]))
    with raises(ValueError, "'labels'", "got -1 at position 2"):
        ops.cross_entropy_backward(z, np.array([0, 1, -1]))
    with raises(TypeError, "'labels'", "integer", "float64"):
        ops.cross_entropy(z, np.array([0.0, 1.0, 2.0]))
    with raises(ValueError, "'labels'", "(3,)", "(2,)"):
        ops.cross_entropy(z, np.array([0, 1]))
    with raises(ValueError, "'weight'", "(4,)", "(3,)"):
        ops.cross_entropy(z, np.array([0, 1, 2]), weight=np.ones(3, f32))
    with raises(ValueError, "'label_smoothing'", "[0, 1]", "1.5"):
        ops.cross_entropy(z, np.array([0, 1, 2]), label_smoothing=1.5)
    with raises(ValueError, "'logits'", "2-D"):
        ops.cross_entropy(np.zeros(4, f32), np.array([0]))


# ---- optimizers -----------------------------------------------------------------------------

def test_optimizer_state_rules_and_param_untouched_on_error():
    p = np.ones(6, f32)
    g = np.ones(6, f32)
    with raises(ValueError, "'momentum_buffer'", "required", "momentum"):
        ops.sgd_step(p, g, lr=0.1, momentum=0.9)
    with raises(ValueError, "'momentum_buffer'", "6 elements", "(5,)"):
        ops.sgd_step(p, g, np.zeros(5, f32), lr=0.1, momentum=0.9)
    with raises(TypeError, "'momentum_buffer'", "float32", "float64"):
        ops.sgd_step(p, g, np.zeros(6), lr=0.1, momentum=0.9)
    with raises(ValueError, "'momentum_buffer'", "C-contiguous"):
        ops.sgd_step(p, g, np.zeros(12, f32)[::2], lr=0.1, momentum=0.9)
    with raises(ValueError, "'nesterov'", "momentum > 0"):
        ops.sgd_step(p, g, lr=0.1, nesterov=True)
    with raises(ValueError, "'grad'", "6 elements"):
        ops.sgd_step(p, np.ones(7, f32), lr=0.1)
    with raises(ValueError, "'exp_avg_sq'", "overlaps", "'exp_avg'"):
        m = np.zeros(6, f32)
        ops.adam_step(p, g, m, m, step=1)
    with raises(ValueError, "'step'", ">= 1"):
        ops.adam_step(p, g, np.zeros(6, f32), np.zeros(6, f32), step=0)
    with raises(ValueError, "'beta2'", "[0, 1)"):
        ops.adam_step(p, g, np.zeros(6, f32), np.zeros(6, f32), step=1, beta2=1.0)
    with raises(ValueError, "'max_exp_avg_sq'", "amsgrad"):
        ops.adam_step(p, g, np.zeros(6, f32), np.zeros(6, f32), step=1, amsgrad=True)
    with raises(ValueError, "'grad_avg'", "centered"):
        ops.rmsprop_step(p, g, np.zeros(6, f32), centered=True)
    ro = np.zeros(6, f32)
    ro.flags.writeable = False
    with raises(ValueError, "'param'", "read-only"):
        ops.adagrad_step(ro, g, np.zeros(6, f32), step=1)
    with raises(TypeError, "'lr'", "real number"):
        ops.sgd_step(p, g, lr="fast")
    np.testing.assert_array_equal(p, 1.0)


# ---- library state --------------------------------------------------------------------------

def test_threads_and_arch_arguments():
    with raises(ValueError, "'n'", ">= 1", "0"):
        fastnn.set_num_threads(0)
    with raises(TypeError, "'n'", "int"):
        fastnn.set_num_threads(1.5)
    with raises(ValueError, "'name'", "'sse9'"):
        fastnn.set_arch("sse9")
    assert fastnn.arch() in fastnn.available_archs()


def test_fastnn_arch_environment_variable():
    env = dict(os.environ, FASTNN_ARCH="generic")
    out = subprocess.run([sys.executable, "-c", "import fastnn; print(fastnn.arch())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "generic"
    env["FASTNN_ARCH"] = "sse9"
    bad = subprocess.run([sys.executable, "-c", "import fastnn"], env=env, capture_output=True,
                         text=True)
    assert bad.returncode != 0
    assert "FASTNN_ARCH='sse9'" in bad.stderr and "ImportError" in bad.stderr
