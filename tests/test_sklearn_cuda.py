"""fastnn.sklearn with device='cuda' (CUDA simulator in CI, a GPU with NUMBA_ENABLE_CUDASIM=0):
the same training as on the CPU, up to float rounding."""
from cuda_setup import quiet  # noqa: F401  (first: sets the simulator up or skips)

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import fastnn as fn  # noqa: E402
from fastnn.sklearn import MLPClassifier  # noqa: E402


@quiet
def test_mlp_classifier_on_cuda_matches_cpu():
    X, y = fn.datasets.load_digits()
    X, y = X[:200] / 16.0, y[:200]
    kw = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=0, learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gpu = MLPClassifier(device="cuda", **kw).fit(X, y)
        cpu = MLPClassifier(**kw).fit(X, y)
    assert gpu.backend_ == "cuda" and cpu.backend_ == "fused"
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-4)
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), atol=1e-4)
    with pytest.raises(ValueError, match="device='cuda'"):
        MLPClassifier(device="cuda", solver="lbfgs", **{k: v for k, v in kw.items()}).fit(X, y)
