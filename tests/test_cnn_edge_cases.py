"""Edge cases of the CNN layers, the layer plan and the convolution kernels: batch norm with
batch statistics on rows, a last batch of one sample, and the reference kernels on non-finite
inputs over the padding."""
import numpy as np
import pytest

import fastnn as fn
from fastnn import plan


def bn_rows_model():
    """A BatchNorm1d keeping no running statistics: batch statistics in eval() too."""
    return fn.Sequential(fn.Flatten(), fn.Linear(18, 4),
                         fn.BatchNorm1d(4, track_running_stats=False), fn.Tanh(),
                         fn.Linear(4, 3), seed=0)


def test_fit_a_batchnorm_without_running_statistics(per_op):
    """fit probed the output shape with model.predict(X[:1]): one row has one value per
    channel, so a model with BatchNorm1d(track_running_stats=False) could not be trained at
    all (on the plan path the error was 'FusedNet.forward: invalid argument')."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 2, 3, 3)).astype(np.float32)
    y = rng.integers(0, 3, 12)

    def run():
        m = bn_rows_model()
        h = fn.fit(m, fn.CrossEntropyLoss(), fn.SGD(m.parameters(), lr=0.1), X, y,
                   epochs=2, batch_size=4, seed=1, verbose=0)
        return m, h.history["loss"], m.predict(X)

    m1, l1, p1 = run()
    assert isinstance(plan.build(m1, (2, 3, 3)), plan.Plan)
    per_op()
    m2, l2, p2 = run()
    assert l1 == l2
    for k, v in m1.state_dict().items():
        assert np.asarray(v).tobytes() == np.asarray(m2.state_dict()[k]).tobytes(), k
    np.testing.assert_array_equal(p1, p2)


def test_predict_one_row_through_batch_statistics_names_the_layer():
    """The fused inference step gave 'FusedNet.forward: invalid argument' for a batch of one
    row through a BatchNorm1d using batch statistics; the per-op layer's error names it."""
    m = bn_rows_model()
    X = np.random.default_rng(0).standard_normal((5, 2, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"BatchNorm1d.*more than 1 value per channel"):
        m.predict(X[:1])
    with pytest.raises(ValueError, match=r"BatchNorm1d.*more than 1 value per channel"):
        m.predict(X, batch_size=4)       # a last batch of one row
    assert m.predict(X[:2]).shape == (2, 3)


def test_reference_convolution_multiplies_the_zero_padding_like_the_kernels():
    """conv2d_reference / conv2d_backward_reference skipped the padding, so an inf weight
    over it (forward) or an inf in dy over it (weight gradient) gave a finite value where
    the fast kernels, tests/reference.py and PyTorch give NaN (0 * inf)."""
    ops = fn.ops
    x = np.ones((1, 1, 4, 5), np.float32)
    w = np.ones((3, 1, 3, 3), np.float32)
    w[1, 0, 0, 0] = np.inf              # over the top-left padding at output (0, 0)
    for y in (ops.conv2d(x, w, padding=1), ops.conv2d_reference(x, w, padding=1)):
        assert np.isnan(y[0, 1, 0, 0]) and np.isinf(y[0, 1, 1, 1]) and np.isfinite(y[0, 0]).all()
    dy = np.ones((1, 3, 4, 5), np.float32)
    dy[0, 0, 0, 0] = np.inf             # output (0, 0) sees the padding at tap (0, 0)
    w = np.ones((3, 1, 3, 3), np.float32)
    fast = ops.conv2d_backward(dy, x, w, padding=1)[1]
    ref = ops.conv2d_backward_reference(dy, x, w, padding=1)[1]
    np.testing.assert_array_equal(np.isnan(ref), np.isnan(fast))
    assert np.isnan(ref[0, 0, 0, 0]) and np.isinf(ref[0, 0, 1, 1]) and np.isfinite(ref[1:]).all()


@pytest.mark.parametrize("image", [True, False], ids=["conv-flatten-bn1d", "mlp-bn1d"])
def test_a_last_batch_of_one_row_for_batchnorm_raises_before_any_update(per_op, image):
    """9 samples at batch_size 4 leave a last batch of one row: BatchNorm1d cannot train on
    it. fit promises to check its arguments before any weight changes, but raised only at
    that batch, after the epoch's first two updates (the cuda path checks it up front)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9, 2, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 9)
    if image:
        layers = [fn.Conv2d(2, 3, 3), fn.Flatten(), fn.Linear(12, 5)]
    else:
        layers, X = [fn.Linear(32, 5)], X.reshape(9, -1)
    for path in ("plan", "per-op"):
        if path == "per-op":
            per_op()
        m = fn.Sequential(*layers, fn.BatchNorm1d(5), fn.Linear(5, 3), seed=0)
        before = {k: np.array(v) for k, v in m.state_dict().items()}
        with pytest.raises(ValueError, match=r"BatchNorm1d.*more than 1 value per channel.*"
                                             r"batch_size=4 with 9 training samples"):
            fn.fit(m, fn.CrossEntropyLoss(), fn.SGD(m.parameters(), lr=0.1), X, y, epochs=1,
                   batch_size=4, verbose=0)
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)
        fn.fit(m, fn.CrossEntropyLoss(), fn.SGD(m.parameters(), lr=0.1), X, y, epochs=1,
               batch_size=3, verbose=0)      # 3 batches of 3 rows train


def test_one_unbatched_image_is_one_sample():
    """A (C, H, W) array to a model whose first layer takes images is one sample, as an
    unbatched input to PyTorch's Conv2d (and as the cuda path takes it): predict and
    predict_proba give one row, the same as the batch of one; a 3-D array to an MLP is
    still refused with its shape named."""
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    model = fn.models.lenet5(seed=0)
    one = model.predict(x[1])
    assert one.shape == (10,)
    np.testing.assert_array_equal(one, model.predict(x[1:2])[0])
    np.testing.assert_array_equal(model.predict_proba(x[1]), model.predict_proba(x[1:2])[0])
    pooled = fn.Sequential(fn.MaxPool2d(2), fn.Flatten(), fn.Linear(196, 4), seed=0)
    np.testing.assert_array_equal(pooled.predict(x[0]), pooled.predict(x[:1])[0])
    mlp = fn.Sequential(fn.Linear(28, 4), seed=0)
    with pytest.raises(ValueError, match=r"X has shape \(1, 28, 28\)"):
        mlp.predict(x[0])


def test_a_sequential_names_its_layers_in_error_messages():
    """Error messages name a model by Sequential._short(): its first layers and their count
    (it printed 'Sequential()' for every model, as if empty)."""
    assert fn.models.lenet5()._short().startswith("Sequential(Conv2d(1, 6), ReLU(), MaxPool2d(")
    assert fn.models.lenet5()._short().endswith(", ... (12 layers))")
    assert fn.Sequential(fn.Linear(2, 3), fn.ReLU())._short() == "Sequential(Linear(2, 3), ReLU())"
    assert fn.Sequential()._short() == "Sequential()"
