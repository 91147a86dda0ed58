"""The everyday API: predict of one sample, shape errors, predict_proba, summary,
EarlyStopping's messages, the lazy fastnn.cuda, LabelEncoder, Preprocess through save/load,
and the CSV reader behind the command line (fastnn.table)."""
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fn
from fastnn.table import DataError, infer_task, read_csv


@pytest.fixture
def model():
    return fn.Sequential(fn.Linear(6, 8), fn.ReLU(), fn.Dropout(0.2), fn.Linear(8, 3), seed=0)


def test_predict_one_sample_gives_one_row(model):
    X = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    row = model.predict(X[2])
    assert row.shape == (3,)
    np.testing.assert_array_equal(row, model.predict(X)[2])
    assert model.predict(X[2].astype(np.float64)).dtype == np.float32


@pytest.mark.parametrize("shape", [(5,), (300, 5), (2, 3, 6), ()])
def test_predict_shape_errors_name_the_real_shape(model, shape):
    with pytest.raises(ValueError, match=rf"predict: X has shape {re.escape(str(shape))}; the "
                                         r"model expects samples of 6 features"):
        model.predict(np.zeros(shape))


def test_predict_rejects_text(model):
    with pytest.raises(TypeError, match="predict: X must be a numeric array, got dtype <U1"):
        model.predict(np.array([["a"] * 6]))


def test_predict_proba_softmax_head(model):
    X = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    z = model.predict(X).astype(np.float64)
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    p = model.predict_proba(X)
    assert p.shape == (5, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p, expected, rtol=1e-5)
    np.testing.assert_allclose(model.predict_proba(X[0]), expected[0], rtol=1e-5)


def test_predict_proba_binary_and_final_softmax_or_sigmoid():
    X = np.random.default_rng(2).normal(size=(4, 3))
    binary = fn.Sequential(fn.Linear(3, 1), seed=0, dtype=np.float64)
    z = binary.predict(X)[:, 0]
    p = binary.predict_proba(X)
    assert p.shape == (4, 2)
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-12)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    soft = fn.Sequential(fn.Linear(3, 4), fn.Softmax(), seed=0, dtype=np.float64)
    np.testing.assert_array_equal(soft.predict_proba(X), soft.predict(X))
    sig = fn.Sequential(fn.Linear(3, 1), fn.Sigmoid(), seed=0, dtype=np.float64)
    np.testing.assert_array_equal(sig.predict_proba(X)[:, 1], sig.predict(X)[:, 0])


def test_summary_table(model, capsys):
    model.summary()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'Model: "Sequential"'
    rows = [line.split() for line in out if line[:1].isdigit()]
    assert rows == [["0", "(Linear)", "(None,", "8)", "56"], ["1", "(ReLU)", "(None,", "8)", "0"],
                    ["2", "(Dropout)", "(None,", "8)", "0"],
                    ["3", "(Linear)", "(None,", "3)", "27"]]
    assert "Total params: 83 (0.32 KB)" in out
    lines = []
    fn.Sequential(fn.Flatten(), fn.Linear(12, 2), seed=0).summary(input_shape=(3, 4),
                                                                   print_fn=lines.append)
    assert any(line.startswith("0 (Flatten)") and "(None, 12)" in line for line in lines)
    assert "Total params: 26 (0.10 KB)" in lines


def test_early_stopping_says_when_it_stops_and_restores(capsys):
    X, y = fn.datasets.load_digits()
    X = (X / 16).astype(np.float32)
    model = fn.Sequential(fn.Linear(64, 32), fn.ReLU(), fn.Linear(32, 10), seed=0)
    stop = fn.EarlyStopping(patience=2, restore_best_weights=True, verbose=1)
    fn.fit(model, fn.CrossEntropyLoss(), fn.Adam(model.parameters(), lr=0.05), X, y,
           epochs=60, validation_split=0.2, seed=0, verbose=0, callbacks=[stop])
    out = capsys.readouterr().out.splitlines()
    assert stop.stopped_epoch is not None
    assert out == [
        f"Epoch {stop.stopped_epoch + 1}: early stopping: val_loss did not improve for 2 epochs "
        f"(best {stop.best:.6g} at epoch {stop.best_epoch + 1})",
        f"Restoring model weights from the end of the best epoch: {stop.best_epoch + 1} "
        f"(val_loss {stop.best:.6g})"]
    quiet = fn.EarlyStopping(patience=0)
    fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.01), X, y, epochs=3,
           validation_split=0.2, seed=0, verbose=0, callbacks=[quiet])
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="EarlyStopping: verbose must be 0 or 1, got 2"):
        fn.EarlyStopping(verbose=2)


def test_cuda_is_lazy_and_reachable_as_an_attribute():
    code = ("import sys, fastnn; before = 'fastnn.cuda' in sys.modules; m = fastnn.cuda; "
            "print(before, m.__name__, 'numba' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "fastnn.cuda", "False"]
    with pytest.raises(AttributeError, match="module 'fastnn' has no attribute 'kuda'"):
        fn.kuda


def test_label_encoder():
    enc = fn.LabelEncoder().fit(["b", "a", "c", "a"])
    assert list(enc.classes_) == ["a", "b", "c"]
    np.testing.assert_array_equal(enc.transform(["c", "a"]), [2, 0])
    assert enc.transform(["c"]).dtype == np.int64
    assert list(enc.inverse_transform(np.array([1, 2]))) == ["b", "c"]
    with pytest.raises(ValueError, match=r"label 'z' at index 1 was not seen by fit \(known: "
                                         r"a, b, c\)"):
        enc.transform(["a", "z"])
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 3\), got 3"):
        enc.inverse_transform(np.array([3]))
    floats = fn.LabelEncoder().fit([2.5, -1.0, 2.5])
    np.testing.assert_array_equal(floats.transform([2.5, -1.0]), [1, 0])
    with pytest.raises(TypeError, match="fitted on <U1 labels, got float64"):
        enc.transform([1.0])
    with pytest.raises(RuntimeError, match="call fit"):
        fn.LabelEncoder().transform([1])
    with pytest.raises(ValueError, match="must not be NaN"):
        fn.LabelEncoder().fit([1.0, np.nan])


@pytest.mark.parametrize("labels", [["cat", "dog", "emu"], [3, 7, 11], [0.25, 0.5, 4.0]])
def test_preprocess_round_trip_through_save_and_load(tmp_path, labels):
    rng = np.random.default_rng(0)
    X = rng.normal(100, 20, (60, 5))
    y = np.array(labels)[np.arange(60) % 3]
    pre = fn.Preprocess(fn.Standardizer().fit(X), fn.LabelEncoder().fit(y),
                        feature_names=list("abcde"), target="kind")
    model = fn.Sequential(fn.Linear(5, 3), seed=0)
    fn.save(model, tmp_path / "m.safetensors", preprocess=pre)
    back = fn.load(tmp_path / "m.safetensors")
    p = back.preprocess
    assert isinstance(p, fn.Preprocess) and p.task == "classify" and p.target == "kind"
    assert p.feature_names == list("abcde") and p.n_features == 5
    assert p.classes_.dtype.kind == np.asarray(labels).dtype.kind
    np.testing.assert_array_equal(p.classes_, np.unique(labels))
    np.testing.assert_array_equal(p.standardizer.mean_, pre.standardizer.mean_)   # exact
    np.testing.assert_array_equal(p.standardizer.scale_, pre.standardizer.scale_)
    np.testing.assert_array_equal(p.predict(back, X), pre.predict(model, X))
    assert p.predict(back, X[0]) == pre.predict(model, X[:1])[0]
    # saving the loaded model again keeps its preprocessing; a plain model has none
    fn.save(back, tmp_path / "again.safetensors")
    assert fn.load(tmp_path / "again.safetensors").preprocess.task == "classify"
    fn.save(model, tmp_path / "plain.safetensors")
    assert fn.load(tmp_path / "plain.safetensors").preprocess is None


def test_preprocess_regression_target_and_errors(tmp_path):
    y = np.array([[100.0], [200.0], [300.0]])
    pre = fn.Preprocess(target_standardizer=fn.Standardizer().fit(y))
    assert pre.task == "regress"
    np.testing.assert_allclose(pre.decode(np.array([[0.0], [1.0]])), [200.0, 200.0 + y.std()])
    with pytest.raises(TypeError, match="save: preprocess must be a fastnn.Preprocess or None, "
                                        "got dict"):
        fn.save(fn.Sequential(fn.Linear(1, 1)), tmp_path / "m.safetensors", preprocess={})
    with pytest.raises(ValueError, match="Preprocess: standardizer is not fitted"):
        fn.Preprocess(fn.Standardizer())
    with pytest.raises(TypeError, match="label_encoder must be a fastnn LabelEncoder"):
        fn.Preprocess(label_encoder=["a"])
    with pytest.raises(ValueError, match="task must be 'classify', 'regress' or None"):
        fn.Preprocess(task="cluster")


# ---- fastnn.table: the CSV reader ------------------------------------------------------------

def _csv(tmp_path, text, name="d.csv"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_read_csv_header_delimiter_and_text_target(tmp_path):
    t = read_csv(_csv(tmp_path, "w;h;kind\n1.5;2;cat\n3;4;dog\n"))
    assert t.header and t.delimiter == ";" and t.feature_names == ["w", "h"]
    assert t.target_name == "kind" and list(t.y) == ["cat", "dog"] and list(t.lines) == [2, 3]
    np.testing.assert_array_equal(t.X, [[1.5, 2], [3, 4]])
    t = read_csv(_csv(tmp_path, "1\t2\t0\n3\t4\t1\n"), target=0)
    assert not t.header and t.delimiter == "\t" and t.target_name == "column 0"
    np.testing.assert_array_equal(t.y, [1, 3])
    t = read_csv(_csv(tmp_path, "a,b,y\n1,2,0\n"), header=False, target=None, numeric=False)
    assert t.raw_rows[0] == ["a", "b", "y"]


@pytest.mark.parametrize("text,message", [
    ("a,b,y\n1,,0\n", "missing value at line 2, column 'b' ('')"),
    ("a,b,y\n1,2,0\n3,4,NA\n", "missing value at line 3, column 'y' ('NA')"),
    ("a,b,y\n1,2,0\n\n3,inf,1\n", "non-finite value 'inf' at line 4, column 'b'"),
    ("a,b,y\n1,x,0\n", "column 'b' is not numeric: line 2 has 'x'"),
    ("a,b,y\n1,2,0\n1,2\n", "line 3 has 2 fields, expected 3 like line 1"),
    ("1,2,0\n1,?,0\n", "missing value at line 2, column column 1 ('?')"),
    ("", "holds no data rows"),
])
def test_read_csv_refuses_bad_data_naming_line_and_column(tmp_path, text, message):
    with pytest.raises(DataError, match=re.escape(message)):
        read_csv(_csv(tmp_path, text))


def test_infer_task():
    assert infer_task(np.array(["a", "b"]))[0] == "classify"
    assert infer_task(np.arange(100) % 4)[0] == "classify"
    task, why = infer_task(np.linspace(0, 1, 50))
    assert task == "regress" and "non-integer values" in why
    task, why = infer_task(np.arange(300) % 200)
    assert task == "regress" and "200 distinct integer values" in why




def test_read_csv_fast_and_careful_paths_agree(tmp_path, monkeypatch):
    """numpy's loadtxt reads clean numeric columns; the csv-module path (taken when a cell is
    not a finite number) gives the same numbers."""
    import fastnn.table as table

    X = np.round(np.random.default_rng(0).normal(size=(30, 3)), 4)
    lines = ["x, y, z, kind"] + [f'{a}, "{b}", {c}, {"ab"[i % 2]}' for i, (a, b, c) in
                                 enumerate(X)]
    lines.insert(5, "")
    path = _csv(tmp_path, "\n".join(lines) + "\n")
    fast = read_csv(path)
    monkeypatch.setattr(table, "_fast_numeric", lambda *a: None)
    careful = read_csv(path)
    for t in (fast, careful):
        np.testing.assert_array_equal(t.X, X)
        assert list(t.y) == ["ab"[i % 2] for i in range(30)] and t.lines[3] == 5 and t.lines[4] == 7
