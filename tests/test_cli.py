"""The `fastnn train` command: in a subprocess, in-process on a fake terminal, with each kind
of --data, and installed into a fresh virtual environment with pip."""
import io
import os
import re
import subprocess
import sys
import venv

import numpy as np
import pytest

import fastnn as fn
from fastnn import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "fastnn", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def check_training_output(out, epochs):
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    assert lines[header].split() == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                                     "time"]
    rows = [line.split() for line in lines[header + 1:header + 1 + epochs]]
    assert [int(r[0]) for r in rows] == list(range(1, epochs + 1))
    for r in rows:
        assert all(0 <= float(v) for v in r[1:5]) and r[5].endswith("s")
    m = re.search(r"^test accuracy: (0\.\d{4}|1\.0000) \(test loss \d+\.\d{4}\)$", out, re.M)
    assert m, out
    return float(m.group(1))


def test_train_two_epochs_in_a_subprocess():
    res = run("train", "--epochs", "2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("data: digits: 1257 train, 270 validation, 270 test samples, "
                                 "64 features, 10 classes\n")
    assert "model: 64 -> 256 -> 10 (relu), 19210 parameters; Adam(lr=0.001" in res.stdout
    assert check_training_output(res.stdout, 2) > 0.85
    assert "\r" not in res.stdout  # no progress bar when the output is not a terminal


def test_train_defaults_reach_97_percent_and_show_a_progress_bar(monkeypatch):
    tty = io.StringIO()
    tty.isatty = lambda: True
    monkeypatch.setattr(sys, "stdout", tty)
    assert cli.main(["train"]) == 0
    out = tty.getvalue()
    assert "ETA" in out and "batch/s" in out and "\r\033[K" in out
    clean = re.sub(r"[^\n]*\r\033\[K", "", out)  # the table as it stays on screen
    assert check_training_output(clean, 30) >= 0.97  # measured 0.9888 (seed 0)


def test_train_options_csv_and_save(tmp_path):
    X, y = fn.datasets.load_digits()
    table = np.column_stack([X[:400], y[:400]])
    np.savetxt(tmp_path / "d.csv", table, delimiter=",", fmt="%g",
               header=",".join([f"p{i}" for i in range(64)] + ["label"]), comments="")
    model_path = tmp_path / "m.safetensors"
    res = run("train", "--data", str(tmp_path / "d.csv"), "--hidden", "32,16", "--activation",
              "tanh", "--optimizer", "sgd", "--lr", "0.05", "--epochs", "3", "--batch-size",
              "16", "--seed", "1", "--verbose", "2", "--save", str(model_path))
    assert res.returncode == 0, res.stderr
    assert "64 -> 32 -> 16 -> 10 (tanh)" in res.stdout and "SGD(lr=0.05" in res.stdout
    check_training_output(res.stdout, 3)
    model = fn.load(model_path)
    assert [type(m).__name__ for m in model] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    assert f"saved the model to {model_path}" in res.stdout


def test_train_on_mnist_style_npz_quietly(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 200), "x_test": rng.integers(0, 256, (50, 28, 28),
                                                                          dtype=np.uint8),
              "y_test": rng.integers(0, 10, 50)}
    np.savez(tmp_path / "mnist.npz", **arrays)
    res = run("train", "--data", str(tmp_path / "mnist.npz"), "--epochs", "1", "--verbose", "0")
    assert res.returncode == 0, res.stderr
    assert "180 train, 20 validation, 50 test samples, 784 features, 10 classes" in res.stdout
    assert "epoch" not in res.stdout and "test accuracy: " in res.stdout


@pytest.mark.parametrize("args,message", [
    (["--hidden", "a,b"], "--hidden must be comma-separated layer widths"),
    (["--epochs", "0"], "--epochs and --batch-size must be >= 1"),
    (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
])
def test_train_bad_options(args, message):
    res = run("train", *args)
    assert res.returncode != 0 and message in res.stderr + res.stdout


def test_existing_subcommands_still_work():
    res = run("info")
    assert res.returncode == 0 and res.stdout.startswith(f"fastnn {fn.__version__}")
    assert "train" in run("--help").stdout


def test_pip_install_into_a_fresh_venv_and_train(tmp_path):
    """pip install of the project's files (tracked and new, not ignored) into a new venv,
    then the installed `fastnn train --epochs 1`. Measured ~35 s here (build included)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=ROOT, capture_output=True, check=True)
    src = tmp_path / "src"
    for name in files.stdout.decode().split("\0"):
        if name and os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(src / os.path.dirname(name), exist_ok=True)
            with open(os.path.join(ROOT, name), "rb") as f:
                (src / name).write_bytes(f.read())
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py, exe = env_dir / "bin" / "python", env_dir / "bin" / "fastnn"
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", str(src)], capture_output=True,
                         text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    res = subprocess.run([str(exe), "train", "--epochs", "1"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    check_training_output(res.stdout, 1)
    mods = subprocess.run([str(py), "-c", "import sys, fastnn; print(sorted(m for m in "
                           "('torch', 'numba', 'sklearn') if m in sys.modules))"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert mods.stdout.strip() == "[]"
