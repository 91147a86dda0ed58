"""The C ABI shipped in the wheel (include/fastnn/fastnn_api.h, libfastnn): the C examples and
test helpers are compiled with gcc against the installed package (python -m fastnn.config) and
run without LD_LIBRARY_PATH. C predictions equal Python's predict bit for bit; C training from
the same weights, batch order and dropout key equals Python's fit bit for bit; bad input
through the ABI returns errors (under ASan/LSan in .ci/capi)."""
import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fn
from fastnn import _fused

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC = shutil.which("gcc") or shutil.which("cc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")

SOURCES = {"predict": "examples/c/predict.c", "train_digits": "examples/c/train_digits.c",
           "bad_input": "tests/c/bad_input.c", "train_parity": "tests/c/train_parity.c"}


def _flags():
    out = subprocess.run([sys.executable, "-m", "fastnn.config", "--cflags", "--libs"],
                         check=True, capture_output=True, text=True).stdout
    return out.split()


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """Each C program built with `gcc prog.c $(python -m fastnn.config --cflags --libs)`."""
    d = tmp_path_factory.mktemp("capi")
    built = {}
    for name, src in SOURCES.items():
        exe = str(d / name)
        subprocess.run([CC, "-std=c11", "-O2", "-Wall", "-Werror", os.path.join(ROOT, src),
                        "-o", exe, *_flags(), "-pthread"], check=True)
        built[name] = exe
    return built


def _run(args, extra_env=None, **kw):
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env.update(extra_env or {})
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kw)


def test_config_paths():
    inc, lib = fn.get_include(), fn.get_library_dir()
    assert os.path.isfile(os.path.join(inc, "fastnn", "fastnn_api.h"))
    assert os.path.isfile(os.path.join(inc, "fastnn", "status.h"))
    assert os.path.isfile(os.path.join(lib, "libfastnn.so"))
    from fastnn import config
    assert os.path.isfile(os.path.join(config.get_cmake_dir(), "fastnnConfig.cmake"))
    pc = os.path.join(config.get_pkgconfig_dir(), "fastnn.pc")
    text = open(pc).read()
    assert "${pcfiledir}" in text and "-lfastnn" in text   # relocatable
    assert _flags() == [f"-I{inc}", f"-L{lib}", f"-Wl,-rpath,{lib}", "-lfastnn"]
    if shutil.which("pkg-config"):
        env = dict(os.environ, PKG_CONFIG_PATH=config.get_pkgconfig_dir())
        out = subprocess.run(["pkg-config", "--cflags", "--libs", "fastnn"], env=env,
                             capture_output=True, text=True, check=True).stdout
        assert "-lfastnn" in out
        assert os.path.realpath(out.split()[0][2:]) == os.path.realpath(inc)


def test_extension_uses_the_shared_library():
    """One libfastnn: the Cython extension needs it (found through RPATH $ORIGIN)."""
    if not shutil.which("readelf"):
        pytest.skip("no readelf")
    from fastnn import _kernels
    out = subprocess.run(["readelf", "-d", _kernels.__file__], capture_output=True,
                         text=True, check=True).stdout
    assert "libfastnn.so" in out and "$ORIGIN" in out


def _mlp(seed, acts=("relu", "tanh"), dropout=0.0, sizes=(20, 32, 16, 5)):
    layers = []
    make = {"relu": fn.ReLU, "tanh": fn.Tanh, "sigmoid": fn.Sigmoid, "silu": fn.SiLU,
            "gelu": fn.GELU, "gelu_tanh": lambda: fn.GELU("tanh"),
            "leaky": lambda: fn.LeakyReLU(0.1)}
    for i in range(len(sizes) - 1):
        layers.append(fn.Linear(sizes[i], sizes[i + 1], bias=i != 1, seed=seed + i))
        if i < len(sizes) - 2:
            layers.append(make[acts[i % len(acts)]]())
            if dropout:
                layers.append(fn.Dropout(dropout))
    return fn.Sequential(*layers)


@pytest.mark.parametrize("acts", [("relu", "tanh"), ("sigmoid", "silu"), ("gelu", "leaky"),
                                  ("gelu_tanh", "relu")])
def test_predict_equals_python(programs, tmp_path, acts):
    model = _mlp(3, acts, dropout=0.25)
    model.eval()
    X = np.random.default_rng(0).normal(size=(300, 20)).astype(np.float32)
    fn.save(model, tmp_path / "m.safetensors")
    X.tofile(tmp_path / "x.f32")
    r = _run([programs["predict"], str(tmp_path / "m.safetensors"), str(tmp_path / "x.f32"),
              str(tmp_path / "y.f32")])
    assert r.returncode == 0, r.stderr
    got = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(300, 5)
    assert np.array_equal(got, model.predict(X))


def test_predict_example_rejects_foreign_file(programs, tmp_path):
    from safetensors.numpy import save_file
    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "f.safetensors"))
    np.zeros(3, np.float32).tofile(tmp_path / "x.f32")
    r = _run([programs["predict"], str(tmp_path / "f.safetensors"), str(tmp_path / "x.f32"),
              str(tmp_path / "y.f32")])
    assert r.returncode == 1 and "not one written by fastnn" in r.stderr


def _digits_csv(tmp_path):
    src = os.path.join(os.path.dirname(fn.datasets.__file__), "data", "digits.csv.gz")
    with gzip.open(src, "rt") as f:
        lines = f.read().splitlines()
    (tmp_path / "train.csv").write_text("\n".join(lines[:1400]) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(lines[1400:]) + "\n")


def test_train_digits_example(programs, tmp_path):
    _digits_csv(tmp_path)
    path = tmp_path / "digits.safetensors"
    r = _run([programs["train_digits"], str(tmp_path / "train.csv"), str(tmp_path / "test.csv"),
              str(path), "10", "1"])
    assert r.returncode == 0, r.stderr
    assert "predictions identical" in r.stdout
    acc = float(r.stdout.split("test accuracy")[1].split()[0])
    assert acc > 0.85
    # the C-saved file is a fastnn file: Python loads it and predicts the same bits as C
    model = fn.load(path)
    X = np.loadtxt(tmp_path / "test.csv", delimiter=",", dtype=np.float32)[:, :-1] / 16
    X.astype(np.float32).tofile(tmp_path / "x.f32")
    r = _run([programs["predict"], str(path), str(tmp_path / "x.f32"), str(tmp_path / "y.f32")])
    assert r.returncode == 0, r.stderr
    got = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(len(X), 10)
    assert np.array_equal(got, model.predict(X.astype(np.float32)))
    ev = fn.evaluate(model, fn.CrossEntropyLoss(), X.astype(np.float32),
                     np.loadtxt(tmp_path / "test.csv", delimiter=",")[:, -1].astype(np.int64))
    assert abs(ev["accuracy"] - acc) < 1e-3


CASES = [
    # loss, Python loss, optimizer (C name, options JSON), Python optimizer, dropout
    ("cross_entropy", fn.CrossEntropyLoss, "sgd", '{"lr": 0.05, "momentum": 0.9}',
     lambda p: fn.SGD(p, lr=0.05, momentum=0.9), 0.0),
    ("cross_entropy", fn.CrossEntropyLoss, "adam", '{"lr": 0.01}',
     lambda p: fn.Adam(p, lr=0.01), 0.3),
    ("cross_entropy", lambda: fn.CrossEntropyLoss(label_smoothing=0.1), "adamw",
     '{"lr": 0.01, "weight_decay": 0.05, "label_smoothing": 0.1}',
     lambda p: fn.AdamW(p, lr=0.01, weight_decay=0.05), 0.0),
    ("mse", fn.MSELoss, "rmsprop", '{"lr": 0.001, "momentum": 0.5, "centered": true}',
     lambda p: fn.RMSprop(p, lr=0.001, momentum=0.5, centered=True), 0.1),
    ("huber", lambda: fn.HuberLoss(reduction="sum", delta=0.5), "adagrad",
     '{"lr": 0.01, "reduction": "sum", "delta": 0.5}', lambda p: fn.Adagrad(p, lr=0.01), 0.0),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_training_equals_python(programs, tmp_path, case):
    loss_name, make_loss, opt_name, options, make_opt, drop = CASES[case]
    n, batch, epochs, seed = 150, 16, 3, 11
    rng = np.random.default_rng(case)
    X = rng.normal(size=(n, 20)).astype(np.float32)
    model = _mlp(5, ("relu", "gelu"), dropout=drop)
    fn.save(model, tmp_path / "init.safetensors")
    loss, opt = make_loss(), make_opt(model.parameters())
    if loss_name == "cross_entropy":
        y = rng.integers(0, 5, size=n).astype(np.int64)
    else:
        y = rng.normal(size=(n, 5)).astype(np.float32)
    assert _fused.training_plan(model, loss, opt, X, y, batch,
                                ["accuracy"] if loss_name == "cross_entropy" else []) is not None
    hist = fn.fit(model, loss, opt, X, y, epochs=epochs, batch_size=batch, seed=seed, verbose=0,
                  metrics=None if loss_name == "cross_entropy" else [])
    # the batch orders and dropout keys fit used (fastnn.train.fit, fastnn.train._fused_epoch)
    orders = np.concatenate([
        np.random.default_rng(np.random.SeedSequence([seed, e]).spawn(2)[0]).permutation(n)
        for e in range(epochs)]).astype(np.int64)
    keys = np.array([np.random.SeedSequence([seed, e, 1]).generate_state(1, np.uint64)[0]
                     for e in range(epochs)], dtype=np.uint64)
    for name, a in (("x", X), ("y", y), ("orders", orders), ("keys", keys)):
        a.tofile(tmp_path / name)
    out = tmp_path / "out.safetensors"
    r = _run([programs["train_parity"], str(tmp_path / "init.safetensors"), str(tmp_path / "x"),
              str(tmp_path / "y"), str(n), str(tmp_path / "orders"), str(tmp_path / "keys"),
              str(epochs), loss_name, opt_name, options, str(batch), str(out)])
    assert r.returncode == 0, r.stderr
    trained = fn.load(out)
    for (k, a), (k2, b) in zip(model.state_dict().items(), trained.state_dict().items()):
        assert k == k2 and np.array_equal(a, b), k
    lines = [tuple(map(float, line.split())) for line in r.stdout.splitlines()]
    assert [c_loss for c_loss, _ in lines] == hist.history["loss"]
    if loss_name == "cross_entropy":
        assert [acc for _, acc in lines] == hist.history["accuracy"]


def test_bad_input(programs, tmp_path):
    model = _mlp(1)
    fn.save(model, tmp_path / "m.safetensors")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    iters = os.environ.get("FASTNN_FUZZ_EXAMPLES", "500")
    (tmp_path / "loc").mkdir()
    env = {}   # a decimal-comma locale (de_DE) for the JSON number check, where one can be made
    if shutil.which("localedef") and subprocess.run(
            ["localedef", "-i", "de_DE", "-f", "UTF-8", str(tmp_path / "loc" / "de_DE.UTF-8")],
            capture_output=True).returncode == 0:
        env["LOCPATH"] = str(tmp_path / "loc")
    r = _run([programs["bad_input"], str(tmp_path / "m.safetensors"), str(scratch), iters],
             extra_env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failures" in r.stdout


@pytest.mark.skipif(shutil.which("cmake") is None, reason="no cmake")
def test_find_package(tmp_path):
    """A CMake project finds the installed library with find_package(fastnn) and runs."""
    from fastnn import config
    (tmp_path / "main.c").write_text(
        '#include <fastnn/fastnn_api.h>\n#include <stdio.h>\n'
        'int main(void) { printf("%s %d\\n", fastnn_version(), fastnn_api_version()); '
        'return fastnn_model_input_size(NULL) == -1 ? 0 : 1; }\n')
    (tmp_path / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.21)\nproject(app C)\n"
        "find_package(fastnn 0.1 REQUIRED)\nadd_executable(app main.c)\n"
        "target_link_libraries(app PRIVATE fastnn::fastnn)\n")
    build = tmp_path / "build"
    r = _run(["cmake", "-S", str(tmp_path), "-B", str(build),
              f"-Dfastnn_DIR={config.get_cmake_dir()}"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run(["cmake", "--build", str(build)])
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run([str(build / "app")])
    assert r.returncode == 0 and r.stdout.split() == [fn.__version__, "1"], r.stdout + r.stderr


def test_predict_loads_a_checkpoint(programs, tmp_path):
    """A fastnn checkpoint (weights under "model.", optimizer state beside) loads in C too."""
    model = _mlp(7)
    opt = fn.Adam(model.parameters(), lr=0.01)
    X = np.random.default_rng(2).normal(size=(64, 20)).astype(np.float32)
    fn.fit(model, fn.CrossEntropyLoss(), opt, X, np.arange(64) % 5, epochs=1, batch_size=16,
           seed=0, verbose=0)
    fn.save_checkpoint(tmp_path / "ck.safetensors", model, opt, epoch=1)
    X.tofile(tmp_path / "x.f32")
    r = _run([programs["predict"], str(tmp_path / "ck.safetensors"), str(tmp_path / "x.f32"),
              str(tmp_path / "y.f32")])
    assert r.returncode == 0, r.stderr
    got = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(64, 5)
    assert np.array_equal(got, model.predict(X))


def test_checksums_both_ways(programs, tmp_path):
    """C verifies the CRC-32 of a Python-saved file; Python verifies those C writes."""
    model = _mlp(9)
    fn.save(model, tmp_path / "m.safetensors")
    raw = bytearray((tmp_path / "m.safetensors").read_bytes())
    raw[-3] ^= 0x40                      # a bit of the last tensor's data
    (tmp_path / "bad.safetensors").write_bytes(bytes(raw))
    np.zeros(20, np.float32).tofile(tmp_path / "x.f32")
    r = _run([programs["predict"], str(tmp_path / "bad.safetensors"), str(tmp_path / "x.f32"),
              str(tmp_path / "y.f32")])
    assert r.returncode == 1 and "checksum mismatch in tensor" in r.stderr
    # a C-saved file (train_digits writes one) carries checksums that Python checks
    _digits_csv(tmp_path)
    path = tmp_path / "c.safetensors"
    r = _run([programs["train_digits"], str(tmp_path / "train.csv"), str(tmp_path / "test.csv"),
              str(path), "1", "0"])
    assert r.returncode == 0, r.stderr
    from safetensors import safe_open
    with safe_open(str(path), "numpy") as f:
        meta = f.metadata()
    assert meta["version"] == "2" and "checksums" in meta
    fn.load(path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch"):
        fn.load(path)


# ---- convolutional networks (the layer plan through the C ABI) ------------------------------

def _cnn(name, seed):
    """(model, input shape) of LeNet-5 or the CIFAR-style net with BatchNorm."""
    if name == "lenet5":
        return fn.models.lenet5(seed=seed), (1, 28, 28)
    return fn.models.cifar_net(seed=seed), (3, 32, 32)


def _images(shape, n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)


@pytest.mark.parametrize("name", ["lenet5", "cifar_net"])
def test_cnn_predict_equals_python(programs, tmp_path, name):
    """A CNN trained a little in Python (running statistics away from 0 / 1), saved after fit
    (the input shape recorded), predicts in C with Python's bits, in eval mode."""
    model, shape = _cnn(name, 1)
    X, y = _images(shape, 40, 2)
    fn.fit(model, fn.CrossEntropyLoss(), fn.SGD(model.parameters(), lr=0.01, momentum=0.9), X, y,
           epochs=1, batch_size=8, seed=3, verbose=0)
    model.eval()
    fn.save(model, tmp_path / "m.safetensors")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "m.safetensors"), "numpy") as f:
        assert f.metadata()["input_shape"] == str(list(shape))
    Xt = _images(shape, 37, 4)[0]
    Xt.tofile(tmp_path / "x.f32")
    r = _run([programs["predict"], str(tmp_path / "m.safetensors"), str(tmp_path / "x.f32"),
              str(tmp_path / "y.f32")])
    assert r.returncode == 0, r.stderr
    got = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(37, 10)
    assert np.array_equal(got, model.predict(Xt))


CNN_CASES = [
    ("lenet5", "sgd", '{"lr": 0.05, "momentum": 0.9}', lambda p: fn.SGD(p, lr=0.05, momentum=0.9)),
    ("cifar_net", "adam", '{"lr": 0.001}', lambda p: fn.Adam(p, lr=0.001)),
    ("cifar_net", "sgd", '{"lr": 0.02, "momentum": 0.9, "nesterov": true}',
     lambda p: fn.SGD(p, lr=0.02, momentum=0.9, nesterov=True)),
]


@pytest.mark.parametrize("case", range(len(CNN_CASES)))
def test_cnn_training_equals_python(programs, tmp_path, case):
    """C training from the same weights, batch orders and seed equals Python's fused fit bit
    for bit (weights, running statistics, num_batches_tracked, the losses); the C-saved model
    reloads in Python with the same predictions."""
    name, opt_name, options, make_opt = CNN_CASES[case]
    n, batch, epochs, seed = 40, 16, 2, 5
    model, shape = _cnn(name, 6 + case)
    X, y = _images(shape, n, 7 + case)
    fn.save(model, tmp_path / "init.safetensors", input_shape=shape)
    opt = make_opt(model.parameters())
    assert _fused.training_plan(model, fn.CrossEntropyLoss(), opt, X, y, batch,
                                ["accuracy"]) is not None
    hist = fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=epochs, batch_size=batch,
                  seed=seed, verbose=0)
    orders = np.concatenate([
        np.random.default_rng(np.random.SeedSequence([seed, e]).spawn(2)[0]).permutation(n)
        for e in range(epochs)]).astype(np.int64)
    keys = np.array([np.random.SeedSequence([seed, e, 1]).generate_state(1, np.uint64)[0]
                     for e in range(epochs)], dtype=np.uint64)
    for fname, a in (("x", X), ("y", y), ("orders", orders), ("keys", keys)):
        a.tofile(tmp_path / fname)
    out = tmp_path / "out.safetensors"
    r = _run([programs["train_parity"], str(tmp_path / "init.safetensors"), str(tmp_path / "x"),
              str(tmp_path / "y"), str(n), str(tmp_path / "orders"), str(tmp_path / "keys"),
              str(epochs), "cross_entropy", opt_name, options, str(batch), str(out)])
    assert r.returncode == 0, r.stderr
    trained = fn.load(out)
    want, got = model.state_dict(), trained.state_dict()
    assert list(want) == list(got)
    if name == "cifar_net":
        assert "1.running_mean" in got and int(got["1.num_batches_tracked"]) == epochs * 3
    for k in want:
        assert want[k].dtype == got[k].dtype and np.array_equal(want[k], got[k]), k
    lines = [tuple(map(float, line.split())) for line in r.stdout.splitlines()]
    assert [c_loss for c_loss, _ in lines] == hist.history["loss"]
    assert [acc for _, acc in lines] == hist.history["accuracy"]
    # saved from C, reloaded in Python: the same predictions as the Python-trained model
    assert trained._input_shape == shape
    model.eval()
    Xt = _images(shape, 9, 99)[0]
    assert np.array_equal(trained.predict(Xt), model.predict(Xt))


def test_cnn_bad_files(programs, tmp_path):
    """A CNN file without its input shape, a corrupt conv tensor, a conv tensor of the wrong
    shape, a wrong-size input: errors with a message, not crashes."""
    model, shape = _cnn("lenet5", 0)
    fn.save(model, tmp_path / "noshape.safetensors")     # never fit nor predicted: no shape
    np.zeros((2, *shape), np.float32).tofile(tmp_path / "x.f32")

    def predict(path, x="x.f32"):
        return _run([programs["predict"], str(path), str(tmp_path / x), str(tmp_path / "y.f32")])

    r = predict(tmp_path / "noshape.safetensors")
    assert r.returncode == 1 and "input shape (C, H, W) is missing" in r.stderr, r.stderr
    assert "layer 0 (Conv2d)" in r.stderr
    fn.save(model, tmp_path / "m.safetensors", input_shape=shape)
    assert predict(tmp_path / "m.safetensors").returncode == 0
    # a bit of the first conv weight's data
    from safetensors import safe_open
    raw = bytearray((tmp_path / "m.safetensors").read_bytes())
    hlen = int.from_bytes(raw[:8], "little")
    import json
    header = json.loads(raw[8:8 + hlen])
    start = 8 + hlen + header["0.weight"]["data_offsets"][0]
    raw[start + 5] ^= 0x10
    (tmp_path / "bad.safetensors").write_bytes(bytes(raw))
    r = predict(tmp_path / "bad.safetensors")
    assert r.returncode == 1 and "checksum mismatch in tensor 0.weight" in r.stderr, r.stderr
    # a conv weight of the wrong shape (a version-1 file: no checksums)
    from safetensors.numpy import save_file
    state = model.state_dict()
    state["3.weight"] = state["3.weight"][:, :, :, :4].copy()
    with safe_open(str(tmp_path / "m.safetensors"), "numpy") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "checksums"}
    save_file(state, str(tmp_path / "shape.safetensors"), metadata=dict(meta, version="1"))
    r = predict(tmp_path / "shape.safetensors")
    assert r.returncode == 1 and "tensor 3.weight must have shape [16, 6, 5, 5]" in r.stderr
    # an input shape that does not fit the layers, and one of the wrong rank
    for bad, msg in (([3, 28, 28], "expects images of 1 channels"), ([784], "not an image"),
                     ([1, 2, 2], "larger than the padded input")):
        save_file(model.state_dict(), str(tmp_path / "s.safetensors"),
                  metadata=dict(meta, version="1", input_shape=json.dumps(bad)))
        r = predict(tmp_path / "s.safetensors")
        assert r.returncode == 1 and msg in r.stderr, (bad, r.stderr)
    # a wrong-size input buffer: not a whole number of rows of C*H*W = 784 values
    np.zeros(784 + 3, np.float32).tofile(tmp_path / "short.f32")
    r = predict(tmp_path / "m.safetensors", "short.f32")
    assert r.returncode == 1 and r.stderr


def test_save_input_shape_argument(tmp_path):
    model, shape = _cnn("lenet5", 0)
    with pytest.raises(ValueError, match="input_shape"):
        fn.save(model, tmp_path / "m.safetensors", input_shape=(1, 28))
    model.predict(np.zeros((1, *shape), np.float32))
    fn.save(model, tmp_path / "m.safetensors")
    assert fn.load(tmp_path / "m.safetensors")._input_shape == shape


def test_cnn_checkpoint_loads_in_c(programs, tmp_path):
    """A checkpoint of a CNN after fit carries the input shape: C predicts from it."""
    model, shape = _cnn("cifar_net", 2)
    X, y = _images(shape, 16, 3)
    opt = fn.Adam(model.parameters(), lr=0.01)
    fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=1, batch_size=8, seed=0, verbose=0)
    fn.save_checkpoint(tmp_path / "ck.safetensors", model, opt, epoch=1)
    X.tofile(tmp_path / "x.f32")
    r = _run([programs["predict"], str(tmp_path / "ck.safetensors"), str(tmp_path / "x.f32"),
              str(tmp_path / "y.f32")])
    assert r.returncode == 0, r.stderr
    model.eval()
    got = np.fromfile(tmp_path / "y.f32", dtype=np.float32).reshape(16, 10)
    assert np.array_equal(got, model.predict(X))


def test_cnn_other_layers_equal_python(programs, tmp_path):
    """Grouped, dilated and "same"-padded convolutions, AvgPool2d with pairs and
    count_include_pad=False, AdaptiveAvgPool2d, BatchNorm1d, Dropout, LeakyReLU: C training
    equals Python's fit bit for bit, the C-saved file reloads in Python (its architecture
    written by C) and predicts the same, and C predicts Python's bits."""
    model = fn.Sequential(
        fn.Conv2d(2, 6, 3, padding="same", seed=1), fn.BatchNorm2d(6), fn.LeakyReLU(0.05),
        fn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3, bias=False, seed=2), fn.Tanh(),
        fn.AvgPool2d((3, 2), stride=(1, 2), padding=(1, 0), count_include_pad=False),
        fn.Conv2d(6, 8, (2, 3), stride=(2, 1), seed=3), fn.ReLU(), fn.MaxPool2d(2, stride=1),
        fn.AdaptiveAvgPool2d(1), fn.Flatten(), fn.BatchNorm1d(8, momentum=0.3), fn.Dropout(0.2),
        fn.Linear(8, 4, seed=4))
    shape, n, batch, epochs, seed = (2, 9, 10), 30, 8, 2, 13
    rng = np.random.default_rng(5)
    X = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, 4, n).astype(np.int64)
    fn.save(model, tmp_path / "init.safetensors", input_shape=shape)
    opt = fn.Adam(model.parameters(), lr=0.01)
    assert _fused.training_plan(model, fn.CrossEntropyLoss(), opt, X, y, batch,
                                ["accuracy"]) is not None
    hist = fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=epochs, batch_size=batch,
                  seed=seed, verbose=0)
    orders = np.concatenate([
        np.random.default_rng(np.random.SeedSequence([seed, e]).spawn(2)[0]).permutation(n)
        for e in range(epochs)]).astype(np.int64)
    keys = np.array([np.random.SeedSequence([seed, e, 1]).generate_state(1, np.uint64)[0]
                     for e in range(epochs)], dtype=np.uint64)
    for fname, a in (("x", X), ("y", y), ("orders", orders), ("keys", keys)):
        a.tofile(tmp_path / fname)
    out = tmp_path / "out.safetensors"
    r = _run([programs["train_parity"], str(tmp_path / "init.safetensors"), str(tmp_path / "x"),
              str(tmp_path / "y"), str(n), str(tmp_path / "orders"), str(tmp_path / "keys"),
              str(epochs), "cross_entropy", "adam", '{"lr": 0.01}', str(batch), str(out)])
    assert r.returncode == 0, r.stderr
    trained = fn.load(out)
    want, got = model.state_dict(), trained.state_dict()
    assert list(want) == list(got)
    for k in want:
        assert np.array_equal(want[k], got[k]), k
    assert [float(line.split()[0]) for line in r.stdout.splitlines()] == hist.history["loss"]
    assert repr(trained) == repr(model)
    model.eval()
    Xt = rng.normal(size=(11, *shape)).astype(np.float32)
    assert np.array_equal(trained.predict(Xt), model.predict(Xt))
    Xt.tofile(tmp_path / "xt.f32")
    r = _run([programs["predict"], str(out), str(tmp_path / "xt.f32"), str(tmp_path / "y.f32")])
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.fromfile(tmp_path / "y.f32", np.float32).reshape(11, 4),
                          model.predict(Xt))
