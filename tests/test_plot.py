"""fastnn.plot: training curves saved as PNG files of the expected size."""
import struct
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import fastnn as fn  # noqa: E402
from fastnn import plot  # noqa: E402


def _png_size(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_history_of_fit_saves_a_png(tmp_path):
    X, y = fn.datasets.load_digits()
    model = fn.Sequential(fn.Linear(64, 32), fn.ReLU(), fn.Linear(32, 10), seed=0)
    h = fn.fit(model, fn.CrossEntropyLoss(), fn.Adam(model.parameters(), lr=1e-2), X / 16, y,
               epochs=4, batch_size=64, validation_split=0.2, seed=0, verbose=0)
    path = tmp_path / "curves.png"
    fig = plot.history(h, path, figsize=(8, 3), dpi=50)
    assert _png_size(path) == (400, 150)
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["loss", "accuracy"]
    train, val = axes[0].get_lines()
    np.testing.assert_allclose(train.get_ydata(), h.history["loss"])
    np.testing.assert_allclose(val.get_ydata(), h.history["val_loss"])


def test_history_from_a_dict_and_bad_input(tmp_path):
    fig = plot.history({"loss": [3.0, 2.0, 1.5], "val_score": [0.5, 0.7, 0.8]})
    assert [a.get_title() for a in fig.get_axes()] == ["loss", "score"]
    with pytest.raises(TypeError, match="History or a dict"):
        plot.history([1, 2, 3])
    with pytest.raises(ValueError, match="nothing|no per-epoch"):
        plot.history({"lr": [0.1]})
    with pytest.raises(ValueError, match="list of numbers"):
        plot.history({"loss": ["a"]})


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"fastnn-core\[plot\]"):
        plot.history({"loss": [1.0]})


def test_estimator_plot_loss_curve(tmp_path):
    pytest.importorskip("sklearn")
    from fastnn.sklearn import MLPClassifier

    X, y = fn.datasets.load_digits()
    est = MLPClassifier(hidden_layer_sizes=(32,), max_iter=15, early_stopping=True,
                        random_state=0, learning_rate_init=0.01).fit(X / 16, y)
    path = tmp_path / "mlp.png"
    fig = est.plot_loss_curve(path, figsize=(6, 3), dpi=40)
    assert _png_size(path) == (240, 120)
    assert [a.get_title() for a in fig.get_axes()] == ["loss", "score"]


def test_cli_train_plot(tmp_path):
    from fastnn import cli

    path = tmp_path / "cli.png"
    cli.main(["train", "--epochs", "2", "--hidden", "16", "--verbose", "0", "--plot", str(path)])
    w, h = _png_size(path)
    assert w > 100 and h > 100


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_cli_train_plot_path_checked_before_training(tmp_path, capsys, model):
    """A --plot suffix matplotlib cannot write is a one-line error (exit 2) before any epoch,
    for the MLP and the convolutional models alike."""
    from fastnn import cli

    rc = cli.main(["train", "--model", model, "--epochs", "1", "--plot",
                   str(tmp_path / "x.notapicture")])
    out = capsys.readouterr()
    assert rc == 2
    assert "--plot" in out.err and "the suffix must name a picture format" in out.err
    assert "epoch" not in out.out and not (tmp_path / "x.notapicture").exists()
