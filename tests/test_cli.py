"""The `fastnn train` command: in a subprocess, in-process on a fake terminal, with each kind
of --data, and installed into a fresh virtual environment with pip."""
import io
import json
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
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
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


# ---- user mistakes: one line on stderr, exit status 2, no traceback, nothing trained -----------

def _write(path, text):
    path.write_text(text)
    return str(path)


def _numbers_csv(path, rows=40, header="a,b,label", delimiter=","):
    rng = np.random.default_rng(0)
    lines = [header.replace(",", delimiter)] if header else []
    lines += [delimiter.join([f"{rng.random():.3f}", f"{rng.random():.3f}", str(i % 2)])
              for i in range(rows)]
    return _write(path, "\n".join(lines) + "\n")


MISTAKES = {
    # name: (arguments, with {csv} {semi} ... replaced by files made below; message)
    "missing --data file": (["train", "--data", "{dir}/nope.csv"],
                            "--data {dir}/nope.csv: no such file or folder"),
    "semicolon CSV read with commas": (["train", "--data", "{semi}", "--delimiter", ","],
                                       "found 1 column with delimiter ','"),
    "text id column": (["train", "--data", "{idcol}"],
                       "column 'id' is not numeric: line 2 has 'r0'"),
    "empty field": (["train", "--data", "{empty}"],
                    "missing value at line 4, column 'b' ('')"),
    "NA field": (["train", "--data", "{na}"], "missing value at line 3, column 'a' ('NA')"),
    "missing target": (["train", "--data", "{notarget}"],
                       "missing value at line 3, column 'label' ('')"),
    "ragged row": (["train", "--data", "{ragged}"], "line 5 has 2 fields, expected 3 like line 1"),
    "too few rows": (["train", "--data", "{tiny}"], "expected at least 10 data rows, got 3"),
    "batch larger than the data": (["train", "--data", "{csv}", "--batch-size", "500"],
                                   "--batch-size 500 is larger than the 28 training samples"),
    "negative learning rate": (["train", "--lr", "-1"],
                               "argument --lr: expected a number > 0, got '-1'"),
    "learning rate not a number": (["train", "--lr", "fast"],
                                   "argument --lr: expected a number > 0, got 'fast'"),
    "zero epochs": (["train", "--epochs", "0"],
                    "argument --epochs: expected an integer >= 1, got '0'"),
    "bad hidden widths": (["train", "--hidden", "64,x"],
                          "--hidden must be comma-separated layer widths"),
    "save into a missing folder": (["train", "--save", "{dir}/no/such/m.safetensors"],
                                   "--save {dir}/no/such/m.safetensors: the folder "
                                   "{dir}/no/such does not exist"),
    "save onto a folder": (["train", "--save", "{dir}"], "--save {dir}: is a folder"),
    "unknown target name": (["train", "--data", "{csv}", "--target", "price"],
                            "--target 'price': no such column in {csv} (columns: a, b, label)"),
    "target index out of range": (["train", "--data", "{csv}", "--target", "7"],
                                  "--target 7: column index out of range: {csv} has 3 columns"),
    "target name without a header": (["train", "--data", "{noheader}", "--target", "label"],
                                     "has no header row, so columns have no names"),
    "regress on text labels": (["train", "--data", "{text}", "--task", "regress"],
                               "--task regress: the target 'kind' of {text} holds text labels "
                               "(such as 'dog'), not numbers"),
    "a single class": (["train", "--data", "{oneclass}"],
                       "holds a single class ('cat'); a classifier needs at least 2"),
    "CSV option on the digits": (["train", "--target", "label"],
                                 "--target applies to CSV data only"),
    "zero threads": (["train", "--threads", "0"],
                     "argument --threads: expected an integer >= 1, got '0'"),
    "bad choice": (["train", "--task", "cluster"], "argument --task: invalid choice: 'cluster'"),
    "predict: missing model": (["predict", "--model", "{dir}/m.safetensors", "--data", "{csv}"],
                               "--model {dir}/m.safetensors: no such file"),
    "predict: not a model": (["predict", "--model", "{csv}", "--data", "{csv}"],
                             "--model {csv}: cannot load it"),
    "predict: wrong width": (["predict", "--model", "{model}", "--data", "{wide}"],
                             "has 4 feature columns; the model takes 2"),
    "predict: output folder missing": (["predict", "--model", "{model}", "--data", "{csv}",
                                        "--output", "{dir}/no/out.csv"],
                                       "--output {dir}/no/out.csv: the folder {dir}/no does "
                                       "not exist"),
    "predict: no --data": (["predict", "--model", "{model}"],
                           "the following arguments are required: --data"),
    "predict: the model's columns are not in the header": (
        ["predict", "--model", "{model}", "--data", "{text}"],
        "the model's feature columns 'a', 'b' are not in the header (w, kind)"),
    "evaluate: no target column": (["evaluate", "--model", "{model}", "--data", "{notlabel}"],
                                   "no target column 'label' in the header (a, b); name it "
                                   "with --target"),
    "evaluate: unknown label": (["evaluate", "--model", "{model}", "--data", "{label7}"],
                                "line 3: label '7' is not one of the model's classes (0, 1)"),
}


@pytest.fixture(scope="module")
def mistake_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistakes")
    f = {"dir": str(d), "csv": _numbers_csv(d / "ok.csv"),
         "semi": _numbers_csv(d / "semi.csv", delimiter=";"),
         "noheader": _numbers_csv(d / "noheader.csv", header=None),
         "tiny": _numbers_csv(d / "tiny.csv", rows=3),
         "idcol": _write(d / "id.csv", "id,a,label\n" + "".join(
             f"r{i},{i},{i % 2}\n" for i in range(20))),
         "empty": _write(d / "empty.csv", "a,b,label\n1,2,0\n3,4,1\n5,,0\n" * 1 + "7,8,1\n" * 20),
         "na": _write(d / "na.csv", "a,b,label\n1,2,0\nNA,4,1\n" + "5,6,0\n" * 20),
         "notarget": _write(d / "notarget.csv", "a,b,label\n1,2,0\n3,4,\n" + "5,6,1\n" * 20),
         "ragged": _write(d / "ragged.csv", "a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8\n"
                          + "9,9,1\n" * 20),
         "text": _write(d / "text.csv", "w,kind\n" + "".join(
             f"{i},{'cat' if i % 2 else 'dog'}\n" for i in range(30))),
         "oneclass": _write(d / "oneclass.csv", "w,kind\n" + "1,cat\n" * 30),
         "wide": _write(d / "wide.csv", "1,2,3,4\n5,6,7,8\n"),
         "notlabel": _write(d / "notlabel.csv", "a,b\n0.1,0.2\n"),
         "label7": _write(d / "label7.csv", "a,b,label\n0.1,0.2,0\n0.3,0.4,7\n"),
         "model": str(d / "model.safetensors")}
    model = fn.Sequential(fn.Linear(2, 2), seed=0)
    fn.save(model, f["model"], preprocess=fn.Preprocess(
        fn.Standardizer().fit(np.ones((3, 2))), fn.LabelEncoder().fit([0, 1]),
        feature_names=["a", "b"], target="label"))
    return f


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_each_user_mistake_is_one_line_and_exit_status_2(case, mistake_files, capsys):
    args, message = MISTAKES[case]
    args = [a.format(**mistake_files) for a in args]
    message = message.format(**mistake_files)
    assert cli.main(args + ["--epochs", "1"] if args[0] == "train" and "--epochs" not in args
                    else args) == 2
    out, err = capsys.readouterr()
    assert out == ""                         # nothing trained, nothing predicted
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastnn {args[0]}: error: ") or \
        lines[0].startswith("fastnn: error: "), err
    assert message in lines[0], err
    assert "Traceback" not in err


def test_a_mistake_in_a_subprocess_has_no_traceback_and_debug_shows_it(mistake_files):
    res = run("train", "--data", mistake_files["idcol"])
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "column 'id' is not numeric" in res.stderr
    res = run("train", "--data", mistake_files["idcol"], "--debug")
    assert res.returncode != 0 and "Traceback (most recent call last)" in res.stderr
    assert "DataError" in res.stderr or "UsageError" in res.stderr


def test_save_path_is_checked_before_training(tmp_path, monkeypatch):
    """A --save path that cannot be written is refused before fit is called."""
    called = []
    monkeypatch.setattr(fn, "fit", lambda *a, **k: called.append(1))
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    assert cli.main(["train", "--save", str(not_a_folder / "m.safetensors")]) == 2
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if not os.access(ro, os.W_OK):   # (root may write anywhere)
        assert cli.main(["train", "--save", str(ro / "m.safetensors")]) == 2
    assert called == []
    assert cli.main(["train", "--epochs", "1", "--verbose", "0", "--save",
                     str(tmp_path / "m.safetensors")]) == 0
    assert called == [1]


# ---- data on the command line --------------------------------------------------------------------

def _raw_digits_csv(path, n=600, delimiter=","):
    """The digits with raw, unscaled features (x * 37 + 900: standardisation matters) and text
    class names, with a header."""
    X, y = fn.datasets.load_digits()
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])[y[:n]]
    raw = X[:n] * 37.0 + 900.0
    header = delimiter.join([f"px{i}" for i in range(64)] + ["digit"])
    body = [delimiter.join([f"{v:g}" for v in row] + [name]) for row, name in zip(raw, names)]
    path.write_text(header + "\n" + "\n".join(body) + "\n")
    return raw, names


def test_text_labels_save_and_predict_in_a_fresh_process(tmp_path):
    """Train from the CLI on raw features with text labels, save, and predict in new processes
    (the CLI and fn.load): the preprocessing travels with the model, so the answers match."""
    raw, names = _raw_digits_csv(tmp_path / "digits.csv", delimiter=";")
    model_path = tmp_path / "m.safetensors"
    res = run("train", "--data", str(tmp_path / "digits.csv"), "--epochs", "8", "--verbose",
              "0", "--save", str(model_path), "--hidden", "64")
    assert res.returncode == 0, res.stderr
    assert "task: classify (inferred: the target 'digit' holds text labels (10 distinct))" \
        in res.stdout
    assert "64 features, 10 classes" in res.stdout
    # the model in this process: answers on raw data through its preprocessing
    model = fn.load(model_path)
    assert list(model.preprocess.classes_) == sorted(set(names))
    assert model.preprocess.feature_names == [f"px{i}" for i in range(64)]
    here = model.preprocess.predict(model, raw)
    accuracy = float(np.mean(here == names))
    assert accuracy > 0.9
    # without the standardizer the raw pixels give poor answers: the preprocessing matters
    bare = model.preprocess.decode(model.predict(raw.astype(np.float32)))
    assert np.mean(bare == names) < accuracy - 0.3
    # fastnn predict in a fresh process: each input row, then the class name
    res = run("predict", "--model", str(model_path), "--data", str(tmp_path / "digits.csv"))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].endswith(";digit;prediction")
    assert [line.split(";")[-1] for line in lines[1:]] == list(here)
    # fastnn evaluate in a fresh process: the same accuracy
    res = run("evaluate", "--model", str(model_path), "--data", str(tmp_path / "digits.csv"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"accuracy: {accuracy:.4f} ")
    # fn.load in a fresh process: the same answers
    code = ("import sys, numpy as np, fastnn as fn; m = fn.load(sys.argv[1]); "
            "X = np.loadtxt(sys.argv[2], delimiter=';', skiprows=1, usecols=range(64)); "
            "print('\\n'.join(m.preprocess.predict(m, X)))")
    res = subprocess.run([sys.executable, "-c", code, str(model_path),
                          str(tmp_path / "digits.csv")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == list(here)


def test_predict_without_the_target_column_and_to_a_file(tmp_path):
    raw, names = _raw_digits_csv(tmp_path / "digits.csv", n=300)
    model_path = tmp_path / "m.safetensors"
    assert cli.main(["train", "--data", str(tmp_path / "digits.csv"), "--epochs", "2",
                     "--verbose", "0", "--save", str(model_path)]) == 0
    np.savetxt(tmp_path / "new.csv", raw[:5], delimiter=",", fmt="%g")   # no header, no target
    res = run("predict", "--model", str(model_path), "--data", str(tmp_path / "new.csv"),
              "--output", str(tmp_path / "out.csv"), "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and "wrote 5 predictions" in res.stderr
    rows = (tmp_path / "out.csv").read_text().splitlines()
    model = fn.load(model_path)
    assert [r.split(",")[-1] for r in rows] == list(model.preprocess.predict(model, raw[:5]))
    assert all(len(r.split(",")) == 65 for r in rows)


def test_regression_csv_from_the_cli(tmp_path):
    """A numeric target with many distinct values trains as a regression (task inferred, the
    reason printed), is scored in its own units, and predicts values in them."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, 2.0]
    y = 300.0 + 40.0 * X[:, 0] - 2.0 * X[:, 1] + 150.0 * X[:, 2] + rng.normal(0, 2, 400)
    np.savetxt(tmp_path / "house.csv", np.column_stack([X, y]), delimiter=",", fmt="%.5f",
               header="rooms,age,dist,price", comments="")
    model_path = tmp_path / "r.safetensors"
    res = run("train", "--data", str(tmp_path / "house.csv"), "--epochs", "40", "--verbose", "2",
              "--save", str(model_path), "--hidden", "32", "--lr", "0.01")
    assert res.returncode == 0, res.stderr
    assert "3 features, regression target 'price'" in res.stdout
    assert "task: regress (inferred: the target 'price' has non-integer values" in res.stdout
    header = next(line for line in res.stdout.splitlines() if line.startswith("epoch"))
    assert header.split() == ["epoch", "loss", "mae", "val_loss", "val_mae", "time"]
    m = re.search(r"^test MAE: ([\d.]+), RMSE: ([\d.]+), R\^2: ([\d.]+) ", res.stdout, re.M)
    assert m and float(m.group(3)) > 0.95, res.stdout
    assert float(m.group(1)) < 0.2 * np.std(y)
    res = run("evaluate", "--model", str(model_path), "--data", str(tmp_path / "house.csv"))
    assert res.returncode == 0, res.stderr
    m = re.match(r"MAE: ([\d.]+), RMSE: [\d.]+, R\^2: ([\d.]+) \(400 rows", res.stdout)
    assert m and float(m.group(2)) > 0.95, res.stdout
    res = run("predict", "--model", str(model_path), "--data", str(tmp_path / "house.csv"))
    values = np.array([float(line.split(",")[-1]) for line in res.stdout.splitlines()[1:]])
    assert values.shape == (400,) and np.mean(np.abs(values - y)) < 0.2 * np.std(y)
    # a header names the columns: they may come in another order, with others among them
    evaluated = run("evaluate", "--model", str(model_path), "--data",
                    str(tmp_path / "house.csv")).stdout.split("(")[0]
    cols = np.column_stack([np.arange(400), y, X[:, 2], X[:, 0], X[:, 1]])
    np.savetxt(tmp_path / "shuffled.csv", cols, delimiter=",", fmt="%.5f",
               header="id,price,dist,rooms,age", comments="")
    res = run("evaluate", "--model", str(model_path), "--data", str(tmp_path / "shuffled.csv"))
    assert res.returncode == 0 and res.stdout.split("(")[0] == evaluated


def test_task_override_and_integer_labels(tmp_path):
    """Integer labels with few values are classes (decoded back to the file's values); --task
    regress overrides the guess."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 2))
    y = np.where(X[:, 0] > 0, 5, 9)
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",", fmt="%g")
    res = run("train", "--data", str(tmp_path / "d.csv"), "--epochs", "3", "--verbose", "0",
              "--save", str(tmp_path / "m.safetensors"))
    assert res.returncode == 0, res.stderr
    assert "inferred: the target column 2 holds 2 distinct integer values; --task regress to " \
           "override" in res.stdout
    model = fn.load(tmp_path / "m.safetensors")
    assert set(model.preprocess.predict(model, X)) <= {5, 9}
    res = run("train", "--data", str(tmp_path / "d.csv"), "--epochs", "1", "--verbose", "0",
              "--task", "regress")
    assert res.returncode == 0 and "task: regress (--task regress)" in res.stdout


def test_bench_quick_defaults_and_progress_on_stderr(monkeypatch, capsys):
    """The quick suite's settings (the real run is a benchmark, not a test: mlp_compare is
    replaced here) and a progress line before any work."""
    from fastnn import _bench, _bench_mlp

    seen = {}

    def fake_compare(workloads, libs, repeats, n, log):
        seen.update(workloads=workloads, libs=libs, n=n)
        log("one round")
        return [{"workload": "w", "library": "fastnn", "seconds": 1.0, "samples_per_s": 1.0,
                 "gflops": 1.0, "ratio_to_fastnn": 1.0}]
    monkeypatch.setattr(_bench_mlp, "mlp_compare", fake_compare)
    monkeypatch.setattr(_bench, "gemm_compare", lambda *a, **k: [])
    monkeypatch.setattr(_bench_mlp, "step_overhead", lambda steps: 1e-6)
    assert cli.main(["bench"]) == 0
    out, err = capsys.readouterr()
    assert seen == {"workloads": [(256, 128)], "libs": ["fastnn", "torch", "numpy"],
                    "n": 10000}
    assert err.splitlines()[0].startswith("[   0.0s] fastnn bench, quick (--full")
    assert "one round" in err and "784-H-H-10" in err and "samples/s" in out
    assert cli.main(["bench", "--full", "--json", "-q"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and seen["n"] == 60000 and len(seen["workloads"]) == 6


def test_bench_model_runs_a_cnn_epoch_against_pytorch(capsys):
    """fastnn bench --model: real (tiny) epochs of the fused step, the per-op path and
    PyTorch when installed, interleaved; the table and the ratio; argument errors."""
    assert cli.main(["bench", "--model", "convnet", "--samples", "70", "--batch", "32",
                     "--per-op", "--repeats", "5", "-q"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "convnet: one epoch of 70 images, batch 32" in out
    assert "| fastnn fused |" in out and "| fastnn per-op |" in out
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "PyTorch" not in out
    else:
        assert "| PyTorch |" in out and "x PyTorch's time" in out
    assert cli.main(["bench", "--model", "lenet", "--samples", "64", "--libs", "fastnn",
                     "--repeats", "5", "--json", "-q"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["model"] == "lenet" and got["images"] == 64
    assert list(got["seconds"]) == ["fastnn fused"] and len(got["seconds"]["fastnn fused"]) == 5
    for args, word in ((["--batch", "3,4"], "--batch"), (["--libs", "numpy"], "--libs"),
                       (["--samples", "40"], "--samples")):
        res = run("bench", "--model", "lenet", *args)
        assert res.returncode == 2 and word in res.stderr, res.stderr
    res = run("bench", "--model", "resnet")
    assert res.returncode == 2 and "lenet" in res.stderr


def test_predict_with_a_model_saved_without_preprocessing(tmp_path, capsys):
    """A plain fn.save file: features used as they are (said on stderr), argmax class
    indices; a tab-separated file given with --delimiter '\\t' and --no-header."""
    model = fn.Sequential(fn.Linear(2, 3), seed=0)
    fn.save(model, tmp_path / "plain.safetensors")
    X = np.array([[0.5, -1.0], [2.0, 3.0]])
    (tmp_path / "x.tsv").write_text("0.5\t-1\n2\t3\n")
    assert cli.main(["predict", "--model", str(tmp_path / "plain.safetensors"), "--data",
                     str(tmp_path / "x.tsv"), "--delimiter", "\\t", "--no-header"]) == 0
    out, err = capsys.readouterr()
    assert "holds no preprocessing" in err
    expected = model.predict(X).argmax(axis=1)
    assert out == f"0.5\t-1\t{expected[0]}\n2\t3\t{expected[1]}\n"
