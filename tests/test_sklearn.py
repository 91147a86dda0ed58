"""fastnn.sklearn: scikit-learn's estimator checks, parity with scikit-learn's MLP in float64,
pipelines and grid search, pandas, sparse input, string labels, sample weights."""
import re
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

import sklearn  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastnn as fn  # noqa: E402
from fastnn.sklearn import (  # noqa: E402
    MLPClassifier,
    MLPRegressor,
    NeuralNetClassifier,
    NeuralNetRegressor,
)

# float64 instances: scikit-learn's checks compare predictions with rtol 1e-7 (sample-weight
# equivalence, subset invariance), which float32 arithmetic cannot promise.
F64 = dict(dtype=np.float64)
CHECKED = [
    MLPClassifier(max_iter=50, **F64),
    MLPClassifier(solver="lbfgs", max_iter=50, **F64),
    MLPClassifier(solver="sgd", learning_rate_init=0.1, max_iter=50, **F64),
    MLPRegressor(max_iter=50, **F64),
    MLPRegressor(solver="lbfgs", max_iter=50, **F64),
    NeuralNetClassifier(lr=0.01, max_epochs=20, batch_size=32, **F64),
    NeuralNetRegressor(lr=0.01, max_epochs=20, batch_size=32, **F64),
]


@parametrize_with_checks(CHECKED, expected_failed_checks=lambda est: {})
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def _digits(n=600):
    X, y = fn.datasets.load_digits()
    return X[:n].astype(np.float64) / 16.0, y[:n]


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a / b - 1)))


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_float64_parity_from_the_same_weights(solver):
    """From the same initial weights and batches, 20 epochs of the numpy back end give
    scikit-learn's loss curve within 1e-10 (relative), classifier and regressor."""
    X, y = _digits()
    kw = dict(hidden_layer_sizes=(32, 16), solver=solver, shuffle=False, tol=0.0,
              batch_size=64, learning_rate_init=0.01, alpha=1e-3, random_state=1)
    warnings.simplefilter("ignore", ConvergenceWarning)
    # scikit-learn's weights after one epoch become the starting point of both
    sk = SkMLPClassifier(max_iter=1, **kw).fit(X, y)
    ours = MLPClassifier(max_iter=20, warm_start=True, dtype=np.float64, backend="numpy", **kw)
    ours.coefs_ = [c.copy() for c in sk.coefs_]
    ours.intercepts_ = [b.copy() for b in sk.intercepts_]
    sk.set_params(max_iter=20, warm_start=True).fit(X, y)
    ours.fit(X, y)
    assert len(ours.loss_curve_) == 20 and len(sk.loss_curve_) == 21
    assert _rel(ours.loss_curve_, sk.loss_curve_[1:]) < 1e-10
    for a, b in zip(ours.coefs_, sk.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    # regression with two outputs, shuffling on: the same random_state gives the same
    # initial weights and the same batches
    Y = np.c_[X[:, :8].sum(1), X[:, 20] - X[:, 40]]
    kw.update(shuffle=True, max_iter=20)
    skr = SkMLPRegressor(**kw).fit(X, Y)
    our = MLPRegressor(dtype=np.float64, backend="numpy", **kw).fit(X, Y)
    assert _rel(our.loss_curve_, skr.loss_curve_) < 1e-10
    np.testing.assert_allclose(our.predict(X), skr.predict(X), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_fused_step_follows_sklearn_formulas(solver):
    """The fused C step (weights-only L2, Adam's eps on the uncorrected root) runs
    scikit-learn's trajectory: float64 loss curves agree to 1e-12 without the L2 penalty, and
    the weights to 1e-12 with it (the reported loss adds the penalty at the epoch's end)."""
    X, y = _digits()
    warnings.simplefilter("ignore", ConvergenceWarning)
    kw = dict(hidden_layer_sizes=(32, 16), solver=solver, max_iter=20, tol=0.0, batch_size=64,
              learning_rate_init=0.01, random_state=0)
    sk = SkMLPClassifier(alpha=0.0, **kw).fit(X, y)
    ours = MLPClassifier(alpha=0.0, dtype=np.float64, **kw).fit(X, y)
    assert ours.backend_ == "fused"
    assert _rel(ours.loss_curve_, sk.loss_curve_) < 1e-12
    sk = SkMLPClassifier(alpha=1e-3, **kw).fit(X, y)
    ours = MLPClassifier(alpha=1e-3, dtype=np.float64, **kw).fit(X, y)
    assert _rel(ours.loss_curve_, sk.loss_curve_) < 1e-3    # the penalty at the epoch's end
    for a, b in zip(ours.coefs_ + ours.intercepts_, sk.coefs_ + sk.intercepts_):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)   # the same trajectory


def test_float32_default_matches_sklearn_accuracy():
    X, y = _digits(1797)
    warnings.simplefilter("ignore", ConvergenceWarning)
    sk = SkMLPClassifier(max_iter=30, random_state=0).fit(X[:1400], y[:1400])
    ours = MLPClassifier(max_iter=30, random_state=0).fit(X[:1400], y[:1400])
    assert ours.coefs_[0].dtype == np.float32 and ours.predict_proba(X[:3]).dtype == np.float32
    assert abs(ours.score(X[1400:], y[1400:]) - sk.score(X[1400:], y[1400:])) <= 0.01
    assert _rel(ours.loss_curve_, sk.loss_curve_) < 1e-3


def test_early_stopping_split_and_best_weights_like_sklearn():
    X, y = _digits()
    kw = dict(hidden_layer_sizes=(16,), early_stopping=True, random_state=3, max_iter=200,
              learning_rate_init=0.01, n_iter_no_change=3)
    sk = SkMLPClassifier(**kw).fit(X, y)
    ours = MLPClassifier(dtype=np.float64, **kw).fit(X, y)
    assert ours.n_iter_ == sk.n_iter_
    np.testing.assert_allclose(ours.validation_scores_, sk.validation_scores_, rtol=0, atol=1e-12)
    assert ours.best_validation_score_ == sk.best_validation_score_
    assert ours.best_loss_ is None and len(ours.validation_loss_curve_) == ours.n_iter_
    # the restored weights are those of the best epoch, not the last
    best = int(np.argmax(ours.validation_scores_))
    assert best < ours.n_iter_ - 1
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), rtol=1e-8, atol=1e-9)


def test_convergence_warning_and_n_iter():
    X, y = _digits(200)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations \\(3\\) reached"):
        est = MLPClassifier(max_iter=3, random_state=0).fit(X, y)
    assert est.n_iter_ == 3 and est.t_ == 3 * 200 and len(est.loss_curve_) == 3


def test_multilabel_and_multioutput():
    X, y = _digits()
    Y = np.c_[y > 4, y % 2 == 0, y == 3].astype(int)
    clf = MLPClassifier(max_iter=30, random_state=0, dtype=np.float64).fit(X, Y)
    sk = SkMLPClassifier(max_iter=30, random_state=0).fit(X, Y)
    assert clf.out_activation_ == sk.out_activation_ == "logistic"
    assert clf.predict(X).shape == Y.shape and clf.predict_proba(X).shape == Y.shape
    assert _rel(clf.loss_curve_, sk.loss_curve_) < 1e-4
    R = np.c_[X[:, :8].sum(1), X[:, 20]]
    reg = MLPRegressor(max_iter=30, random_state=0).fit(X, R)
    skr = SkMLPRegressor(max_iter=30, random_state=0).fit(X, R)
    assert reg.n_outputs_ == 2 and reg.predict(X).shape == (len(X), 2)
    assert abs(reg.score(X, R) - skr.score(X, R)) < 0.01 and reg.score(X, R) > 0.5


def test_pipeline_and_grid_search_with_one_and_two_jobs():
    X, y = _digits(400)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=40, random_state=0,
                                                         learning_rate_init=0.01))
    grid = {"mlpclassifier__hidden_layer_sizes": [(16,), (32,)],
            "mlpclassifier__alpha": [1e-4, 1e-2]}
    warnings.simplefilter("ignore", ConvergenceWarning)
    results = []
    for jobs in (1, 2):
        gs = GridSearchCV(pipe, grid, cv=3, n_jobs=jobs).fit(X, y)
        assert gs.best_score_ > 0.85
        results.append(gs.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(results[0], results[1])   # deterministic across processes


def test_pandas_feature_names_and_string_labels():
    pd = pytest.importorskip("pandas")
    X, y = _digits(300)
    df = pd.DataFrame(X, columns=[f"px{i}" for i in range(X.shape[1])])
    labels = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                       "nine"], dtype=object)[y]
    clf = MLPClassifier(max_iter=30, random_state=0,
                        learning_rate_init=0.01).fit(df, pd.Series(labels))
    assert list(clf.feature_names_in_) == list(df.columns)
    assert set(clf.classes_) == set(labels) and set(clf.predict(df)) <= set(labels)
    assert clf.score(df, labels) > 0.5
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(X)
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(df.rename(columns={"px0": "other"}))


def test_sparse_input_is_densified():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X, y = _digits(300)
    dense = MLPClassifier(max_iter=10, random_state=0).fit(X, y)
    sparse = MLPClassifier(max_iter=10, random_state=0).fit(scipy_sparse.csr_matrix(X), y)
    np.testing.assert_array_equal(dense.predict_proba(X),
                                  sparse.predict_proba(scipy_sparse.csr_matrix(X)))


def test_sample_weight_and_class_weight():
    X, y = _digits(300)
    warnings.simplefilter("ignore", ConvergenceWarning)
    sw = np.random.default_rng(0).integers(0, 3, len(X)).astype(float)
    kw = dict(hidden_layer_sizes=(16,), max_iter=20, random_state=0)
    ours = MLPClassifier(dtype=np.float64, **kw).fit(X, y, sample_weight=sw)
    sk = SkMLPClassifier(**kw).fit(X, y, sample_weight=sw)
    assert ours.backend_ == "numpy"
    assert _rel(ours.loss_curve_, sk.loss_curve_) < 1e-10
    # class_weight='balanced' on multi-class data runs fused (a class-weighted cross-entropy)
    # and equals the numpy back end given the same weights as sample weights
    yb = np.where(y < 2, y, 2)
    a = MLPClassifier(class_weight="balanced", dtype=np.float64, alpha=0.0, **kw).fit(X, yb)
    b = MLPClassifier(class_weight="balanced", dtype=np.float64, alpha=0.0, backend="numpy",
                      **kw).fit(X, yb)
    assert a.backend_ == "fused" and b.backend_ == "numpy"
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-6, atol=1e-9)
    balanced = a.predict(X)
    plain = MLPClassifier(dtype=np.float64, alpha=0.0, **kw).fit(X, yb).predict(X)
    assert (balanced < 2).sum() >= (plain < 2).sum()   # rare classes predicted at least as often


def test_extras_activation_list_dropout_dtype():
    X, y = _digits(400)
    warnings.simplefilter("ignore", ConvergenceWarning)
    est = MLPClassifier(hidden_layer_sizes=(32, 32), activation=["gelu", "leaky_relu"],
                        dropout=[0.2, 0.0], max_iter=30, random_state=0, n_threads=1,
                        learning_rate_init=0.01).fit(X, y)
    assert est.backend_ == "fused" and est.score(X, y) > 0.9
    again = MLPClassifier(hidden_layer_sizes=(32, 32), activation=["gelu", "leaky_relu"],
                          dropout=[0.2, 0.0], max_iter=30, random_state=0,
                          learning_rate_init=0.01).fit(X, y)
    np.testing.assert_array_equal(est.coefs_[0], again.coefs_[0])    # reproducible
    for bad, match in [(dict(activation=["relu", "tanh"]), "one per hidden layer"),
                       (dict(activation="softsign"), "activation"),
                       (dict(dropout=1.0), "dropout"),
                       (dict(dtype=np.int32), "dtype"),
                       (dict(solver="lbfgs", dropout=0.5), "dropout needs the fused"),
                       (dict(backend="fast"), "backend")]:
        with pytest.raises(ValueError, match=match):
            MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, **bad).fit(X, y)


def test_partial_fit_continues_training():
    X, y = _digits(300)
    est = MLPClassifier(hidden_layer_sizes=(16,), random_state=0, learning_rate_init=0.01)
    est.partial_fit(X, y, classes=np.arange(10))
    first = est.loss_
    for _ in range(5):
        est.partial_fit(X, y)
    assert est.loss_ < first and len(est.loss_curve_) == 6 and est.t_ == 6 * len(X)
    with pytest.raises(AttributeError, match="partial_fit"):
        MLPClassifier(solver="lbfgs").partial_fit(X, y, classes=np.arange(10))


def test_neural_net_wraps_a_fastnn_model_factory():
    X, y = _digits(400)

    def factory(n_in, n_out, width=32):
        return fn.Sequential(fn.Linear(n_in, width), fn.ReLU(), fn.Dropout(0.1),
                             fn.Linear(width, n_out))

    clf = NeuralNetClassifier(factory, module_params={"width": 48}, lr=0.01, max_epochs=15,
                              batch_size=32, random_state=0).fit(X, y)
    assert clf.model_[0].out_features == 48 and clf.score(X, y) > 0.9
    assert len(clf.history_.history["loss"]) == 15
    gs = GridSearchCV(NeuralNetClassifier(factory, max_epochs=5, random_state=0),
                      {"lr": [0.003, 0.01]}, cv=2).fit(X, y)
    assert gs.best_params_["lr"] in (0.003, 0.01)
    reg = NeuralNetRegressor(lr=0.01, max_epochs=20, random_state=0).fit(X, X[:, :3].sum(1))
    assert reg.predict(X).shape == (len(X),) and reg.score(X, X[:, :3].sum(1)) > 0.8


def test_import_error_names_the_extra(monkeypatch):
    import builtins
    import importlib
    import sys

    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.delitem(sys.modules, "fastnn.sklearn", raising=False)
    with pytest.raises(ImportError, match=r"fastnn-core\[sklearn\]"):
        importlib.import_module("fastnn.sklearn")
    monkeypatch.setattr(builtins, "__import__", real_import)
    monkeypatch.delitem(sys.modules, "fastnn.sklearn", raising=False)
    importlib.import_module("fastnn.sklearn")
    assert sklearn.__version__


@pytest.mark.parametrize("est", [MLPClassifier, MLPRegressor])
def test_predict_refuses_non_finite_input_like_sklearn(est):
    """predict checks finiteness in C after the cast to the model's dtype: NaN, infinity and
    a float64 value that overflows float32 raise scikit-learn's ValueError, dense or sparse;
    the fitted model is left as it was."""
    import scipy.sparse as sp
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6))
    y = rng.integers(0, 3, 40) if est is MLPClassifier else rng.standard_normal(40)
    m = est(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y)
    before = m.predict(X)
    for v, what in ((np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity"),
                    (1e300, "infinity or a value too large")):
        for make in (np.array, sp.csr_matrix):
            bad = X.copy()
            bad[17, 4] = v
            with pytest.raises(ValueError, match=f"Input X contains {what}"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)   # numpy's overflow cast
                    m.predict(make(bad))
    np.testing.assert_array_equal(m.predict(X), before)


@pytest.mark.parametrize("est", [MLPClassifier, MLPRegressor])
def test_fit_refuses_float64_beyond_float32_like_sklearn(est):
    """A float64 value that rounds to an infinity in the float32 model is refused with
    scikit-learn's message, before any training; NaN and infinity too."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6))
    y = rng.integers(0, 3, 40) if est is MLPClassifier else rng.standard_normal(40)
    for v, what in ((1e300, "infinity or a value too large for dtype('float32')"),
                    (-3.5e38, "infinity or a value too large for dtype('float32')"),
                    (np.nan, "NaN"), (np.inf, "infinity")):
        bad = X.copy()
        bad[17, 4] = v
        m = est(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
        with pytest.raises(ValueError, match=f"Input X contains {re.escape(what)}"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # numpy's overflow cast
                m.fit(bad, y)
        assert not hasattr(m, "coefs_")
