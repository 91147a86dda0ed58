"""fastnn.cuda.poolnorm against the float64 oracles and fastnn.ops, on tiny shapes (the CUDA
simulator runs them in CI; NUMBA_ENABLE_CUDASIM=0 runs them on a GPU)."""
import cuda_setup  # noqa: F401  (simulator, or skip without numba / a device)

import numpy as np
import pytest

import fastnn as fn
import fastnn.cuda as fc
import reference as ref

pn = fc.poolnorm
quiet = cuda_setup.quiet
DTYPES = [np.float32, np.float64]


def close(got, want, dtype):
    got = fc.to_host(got) if not isinstance(got, np.ndarray) else got
    assert got.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(got, want, **tol)


@quiet
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), ((3, 2), 1, (1, 0))])
def test_pooling_on_the_device(dtype, k, s, p):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(dtype)
    x[0, 0, 1, 1] = np.nan
    dx_ = fc.to_device(x)
    y, idx = pn.max_pool2d(dx_, k, s, p, return_indices=True)
    want, want_idx = ref.max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(fc.to_host(y), want.astype(dtype))
    np.testing.assert_array_equal(fc.to_host(idx), want_idx)
    dy = np.random.default_rng(1).standard_normal(want.shape).astype(dtype)
    close(pn.max_pool2d_backward(fc.to_device(dy), dx_, idx, k, s, p),
          ref.max_pool2d_backward(dy, x, want_idx), dtype)
    x[0, 0, 1, 1] = 0.5
    dx_ = fc.to_device(x)
    for cip in (True, False):
        close(pn.avg_pool2d(dx_, k, s, p, cip), ref.avg_pool2d(x, k, s, p, cip), dtype)
        close(pn.avg_pool2d_backward(fc.to_device(dy), dx_, k, s, p, cip),
              ref.avg_pool2d_backward(dy, x, k, s, p, cip), dtype)
    close(pn.adaptive_avg_pool2d(dx_), ref.adaptive_avg_pool2d(x), dtype)
    g = np.ones((2, 3, 1, 1), dtype)
    close(pn.adaptive_avg_pool2d_backward(fc.to_device(g), dx_),
          ref.adaptive_avg_pool2d_backward(g, x), dtype)


@quiet
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (3, 2, 3, 4)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_on_the_device(dtype, shape, training):
    rng = np.random.default_rng(2)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    drm, drv = fc.to_device(rm), fc.to_device(rv)
    y, m, s = pn.batch_norm(fc.to_device(x), drm, drv, fc.to_device(w), fc.to_device(b),
                            training, 0.2, 1e-5, return_stats=True)
    want, wrm, wrv, wm, ws = ref.batch_norm(x, rm, rv, w, b, training, 0.2, 1e-5)
    close(y, want, dtype)
    close(drm, wrm, dtype)
    close(drv, wrv, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    got = pn.batch_norm_backward(fc.to_device(dy), fc.to_device(x), m, s, fc.to_device(w),
                                 training)
    for g, wnt in zip(got, ref.batch_norm_backward(dy, x, fc.to_host(m), fc.to_host(s), w,
                                                   training)):
        close(g, wnt, dtype)
    # the same numbers as the CPU kernels, to rounding
    cy = fn.ops.batch_norm(x, rm.copy(), rv.copy(), w, b, training, 0.2, 1e-5)
    close(y, cy.astype(np.float64), dtype)


@quiet
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,ns", [((3, 7), 7), ((2, 2, 3), (2, 3))])
def test_layer_norm_on_the_device(dtype, shape, ns):
    rng = np.random.default_rng(3)
    nshape = (ns,) if isinstance(ns, int) else ns
    x = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(nshape).astype(dtype), rng.standard_normal(nshape).astype(dtype)
    y, m, r = pn.layer_norm(fc.to_device(x), ns, fc.to_device(w), fc.to_device(b),
                            return_stats=True)
    want, wm, wr = ref.layer_norm(x, ns, w, b)
    close(y, want, dtype)
    close(m, wm, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    got = pn.layer_norm_backward(fc.to_device(dy), fc.to_device(x), ns, m, r, fc.to_device(w))
    for g, wnt in zip(got, ref.layer_norm_backward(dy, x, ns, w)):
        close(g, wnt, dtype)


def test_device_functions_refuse_host_arrays():
    with pytest.raises(TypeError, match="must be a device array"):
        pn.max_pool2d(np.zeros((1, 1, 2, 2), np.float32), 2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        z = fc.to_device(np.zeros((1, 2), np.float32))
        pn.batch_norm(z, fc.to_device(np.zeros(2, np.float32)),
                      fc.to_device(np.ones(2, np.float32)), training=True)
