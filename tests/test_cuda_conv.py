"""fastnn.cuda.conv (Numba CUDA conv2d forward and backward) against the CPU kernels and the
float64 oracle, on tiny shapes: under the CUDA simulator unless NUMBA_ENABLE_CUDASIM=0 (then
on a real GPU). Skipped without numba."""
import cuda_setup  # noqa: F401  (simulator preamble, module skip)

import numpy as np
import pytest

import fastnn
import fastnn.cuda as fc
from fastnn import ops

import reference as ref

conv = fc.conv

CASES = [   # n, cin, h, w, cout, k, stride, padding, dilation, groups
    (2, 3, 5, 6, 4, 3, 1, 1, 1, 1),
    (1, 4, 6, 5, 6, 3, (2, 1), (0, 2), 2, 2),
    (2, 2, 5, 5, 3, 2, 1, "same", 1, 1),     # even kernel: asymmetric 'same'
    (1, 4, 4, 4, 4, 3, 1, 1, 1, 4),          # depthwise
    (1, 1, 1, 1, 2, 1, 1, 0, 1, 1),          # 1x1 image
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_conv2d_forward_and_backward(case, dtype):
    n, cin, h, w, cout, k, s, p, d, g = case
    rng = np.random.default_rng(cin * 7 + cout)
    x = rng.standard_normal((n, cin, h, w)).astype(dtype)
    wt = rng.standard_normal((cout, cin // g, k, k)).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    y = fc.to_host(conv.conv2d(fc.to_device(x), fc.to_device(wt), fc.to_device(b), **kw))
    np.testing.assert_allclose(y, ref.conv2d(x, wt, b, **kw), **tol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = conv.conv2d_backward(fc.to_device(dy), fc.to_device(x), fc.to_device(wt), **kw)
    for got, want in zip((dx, dw, db), ref.conv2d_backward(dy, x, wt, **kw)):
        np.testing.assert_allclose(fc.to_host(got), want, **tol)
    # and the CPU kernels agree (same semantics on both devices)
    np.testing.assert_allclose(y, ops.conv2d(x, wt, b, **kw), **tol)


def test_no_bias_no_input_grad_and_errors():
    x = fc.to_device(np.ones((1, 2, 4, 4), np.float32))
    wt = fc.to_device(np.ones((3, 2, 3, 3), np.float32))
    y = fc.to_host(conv.conv2d(x, wt))
    assert y.shape == (1, 3, 2, 2) and np.all(y == 18)
    dx, dw, db = conv.conv2d_backward(fc.to_device(np.ones((1, 3, 2, 2), np.float32)), x, wt,
                                      bias=False, input_grad=False)
    assert dx is None and db is None and np.all(fc.to_host(dw) == 4)
    with pytest.raises(TypeError, match="host numpy array"):
        conv.conv2d(np.ones((1, 2, 4, 4), np.float32), wt)
    with pytest.raises(TypeError, match="'weight' must have dtype float32"):
        conv.conv2d(x, fc.to_device(np.ones((3, 2, 3, 3))))
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv.conv2d(x, fc.to_device(np.ones((3, 2, 5, 5), np.float32)))
    with pytest.raises(ValueError, match="'dy' must have the output shape"):
        conv.conv2d_backward(fc.to_device(np.ones((1, 3, 3, 3), np.float32)), x, wt)
