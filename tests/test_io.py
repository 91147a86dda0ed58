"""save/load and checkpoints: round trips, exact resume of a fit, atomic writes, corrupt files."""
import json
import os
import struct

import numpy as np
import pytest

import fastnn as fn


def split_file(data):
    """(header dict, data bytes) of a safetensors file's bytes."""
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_file(header, body):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def rewrite_metadata(data, checksums=True, **changes):
    """The file's bytes with metadata entries changed (None: removed) and, with checksums,
    the metadata checksum recomputed: what a writer that means it would produce."""
    header, body = split_file(data)
    meta = header["__metadata__"]
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    if checksums and "checksums" in meta:
        sums = json.loads(meta["checksums"])
        sums["metadata"] = fn.io._meta_crc(meta)
        meta["checksums"] = json.dumps(sums)
    return join_file(header, body)


def every_layer_model():
    return fn.Sequential(
        fn.Flatten(), fn.Linear(12, 16, dtype=np.float64), fn.ReLU(), fn.LeakyReLU(0.3),
        fn.Dropout(0.25), fn.Linear(16, 8, bias=False, dtype=np.float64), fn.GELU("tanh"),
        fn.Sigmoid(), fn.Tanh(), fn.SiLU(),
        fn.Sequential(fn.Linear(8, 4, dtype=np.float64), fn.Softmax()), seed=3)


def test_save_load_round_trip_rebuilds_every_layer(tmp_path):
    model = every_layer_model()
    path = tmp_path / "m.safetensors"
    fn.save(model, path)
    state = fn.init.default_generator().bit_generator.state
    loaded = fn.load(path)
    assert fn.init.default_generator().bit_generator.state == state  # load draws nothing
    assert repr(loaded) == repr(model)
    assert loaded[3].negative_slope == 0.3 and loaded[4].p == 0.25
    assert loaded[6].approximate == "tanh" and loaded[5].bias is None
    assert all(p.dtype == np.float64 for p in loaded.parameters())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    x = np.random.default_rng(0).standard_normal((5, 3, 4))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # the file is plain safetensors: other tools read the tensors by name
    from safetensors.numpy import load_file
    assert sorted(load_file(str(path))) == sorted(model.state_dict())


def test_float32_default_and_single_layer(tmp_path):
    layer = fn.Linear(3, 2, seed=0)
    fn.save(layer, tmp_path / "l.safetensors")
    loaded = fn.load(tmp_path / "l.safetensors")
    assert isinstance(loaded, fn.Linear) and loaded.weight.dtype == np.float32
    np.testing.assert_array_equal(loaded.weight, layer.weight)


class Scale(fn.Module):
    def __init__(self, n):
        super().__init__()
        self.s = fn.Parameter(np.ones(n, np.float32))

    def forward(self, x):
        return x * self.s


def test_user_layer_cannot_be_rebuilt_but_loads_into_a_model(tmp_path):
    model = fn.Sequential(fn.Linear(3, 4), Scale(4), seed=0)
    model[1].s = np.arange(4, dtype=np.float32)
    path = tmp_path / "custom.safetensors"
    fn.save(model, path)
    with pytest.raises(TypeError, match=r"cannot rebuild layer class 'Scale' \(layer 1\).*"
                                        r"fastnn.load\(path, model=model\)"):
        fn.load(path)
    target = fn.Sequential(fn.Linear(3, 4), Scale(4), seed=1)
    assert fn.load(path, model=target) is target
    np.testing.assert_array_equal(target[1].s, np.arange(4))
    np.testing.assert_array_equal(target[0].weight, model[0].weight)


def make_run(seed=0):
    """A model with dropout, an optimizer with state, and a scheduler."""
    X, y = fn.datasets.load_digits()
    X = (X[:600] / 16).astype(np.float32)
    y = y[:600]
    model = fn.Sequential(fn.Linear(64, 48), fn.ReLU(), fn.Dropout(0.3), fn.Linear(48, 10),
                          seed=seed)
    opt = fn.Adam(model.parameters(), lr=3e-3, amsgrad=True)
    sched = fn.CosineAnnealingLR(opt, T_max=4)
    return model, opt, sched, X, y


def test_exact_resume_from_a_checkpoint(tmp_path):
    """5 epochs == 2 epochs + save_checkpoint + load_checkpoint into fresh objects + 3 epochs,
    bit for bit (weights, optimizer state, learning rates and the reported history)."""
    loss = fn.CrossEntropyLoss()
    kw = dict(batch_size=32, validation_split=0.2, seed=7, verbose=0)
    model, opt, sched, X, y = make_run()
    full = fn.fit(model, loss, opt, X, y, epochs=5, scheduler=sched, **kw)

    m1, o1, s1, _, _ = make_run()
    first = fn.fit(m1, loss, o1, X, y, epochs=2, scheduler=s1, **kw)
    path = tmp_path / "ck.safetensors"
    fn.save_checkpoint(path, m1, o1, s1, epoch=2, extra={"note": "after 2", "best": 0.5})
    del m1, o1, s1
    m2, o2, s2, _, _ = make_run(seed=99)  # different initial weights: all must be restored
    state = fn.load_checkpoint(path, m2, o2, s2)
    assert state == {"epoch": 2, "extra": {"note": "after 2", "best": 0.5}}
    rest = fn.fit(m2, loss, o2, X, y, epochs=5, initial_epoch=state["epoch"], scheduler=s2,
                  **kw)

    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[k], v)
    sd_full, sd_resumed = opt.state_dict(), o2.state_dict()
    for i, s in sd_full["state"].items():
        for name, v in s.items():
            np.testing.assert_array_equal(sd_resumed["state"][i][name], v)
    assert sched.get_last_lr() == s2.get_last_lr()
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert full.history[key] == first.history[key] + rest.history[key]
    assert rest.epoch == [2, 3, 4]


def test_checkpoint_restores_generators_and_loads_as_a_model(tmp_path):
    model, opt, sched, X, y = make_run()
    model[2].reset_parameters(np.random.default_rng(5))
    fn.manual_seed(123)
    path = tmp_path / "ck.safetensors"
    fn.save_checkpoint(path, model, opt)
    expected_global = fn.init.default_generator().random(3)
    x = np.ones((4, 48), np.float32)
    expected_mask = model[2].forward(x)
    fn.manual_seed(0)
    model[2].reset_parameters(np.random.default_rng(6))
    fn.load_checkpoint(path, model, opt)
    np.testing.assert_array_equal(fn.init.default_generator().random(3), expected_global)
    np.testing.assert_array_equal(model[2].forward(x), expected_mask)
    rebuilt = fn.load(path)  # a checkpoint also holds the architecture
    np.testing.assert_array_equal(rebuilt[0].weight, model[0].weight)


def test_checkpoint_mismatches_change_nothing(tmp_path):
    model, opt, sched, X, y = make_run()
    fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=1, verbose=0, seed=0)
    path = tmp_path / "ck.safetensors"
    fn.save_checkpoint(path, model, opt, sched, epoch=1)
    m2, o2, s2, _, _ = make_run(seed=1)
    before = m2.state_dict()
    with pytest.raises(ValueError, match="saved with a Adam optimizer, got SGD"):
        fn.load_checkpoint(path, m2, fn.SGD(m2.parameters()), s2)
    with pytest.raises(ValueError, match="saved with scheduler CosineAnnealingLR, got None"):
        fn.load_checkpoint(path, m2, o2)
    small = fn.Sequential(fn.Linear(64, 8), fn.ReLU(), fn.Dropout(0.3), fn.Linear(8, 10))
    with pytest.raises(ValueError, match=r"'model.0.weight' has shape \(48, 64\)"):
        fn.load_checkpoint(path, small, fn.Adam(small.parameters(), amsgrad=True),
                           fn.CosineAnnealingLR(fn.Adam(small.parameters()), T_max=4))
    for k, v in m2.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert o2.state_dict()["state"] == {}
    with pytest.raises(TypeError, match="extra must be JSON-serialisable"):
        fn.save_checkpoint(tmp_path / "x.safetensors", model, opt, extra={"f": print})
    with pytest.raises(ValueError, match="a fastnn model file, not a checkpoint"):
        fn.save(model, tmp_path / "model.safetensors")
        fn.load_checkpoint(tmp_path / "model.safetensors", model, opt)


class FailingFile:
    """Wraps a file object; write raises after `limit` bytes (a full disk, a crash)."""

    def __init__(self, f, limit):
        self.f, self.limit, self.written = f, limit, 0

    def write(self, data):
        if self.written + len(data) > self.limit:
            self.f.write(data[:self.limit - self.written])
            raise OSError(28, "No space left on device")
        self.written += len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    old = fn.Sequential(fn.Linear(30, 20), seed=0)
    fn.save(old, path)
    good = path.read_bytes()
    new = fn.Sequential(fn.Linear(30, 20), seed=1)
    monkeypatch.setattr(fn.io, "_CHUNK", 256)  # several writes; the third one fails
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FailingFile(real_fdopen(fd, mode), 600))
    with pytest.raises(OSError, match="No space left"):
        fn.save(new, path)
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary file left behind
    np.testing.assert_array_equal(fn.load(path)[0].weight, old[0].weight)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError, match="crash"):
        fn.save_checkpoint(path, new, fn.SGD(new.parameters()))
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["m.safetensors"]


def test_corrupt_and_truncated_files_raise_clearly(tmp_path):
    model = fn.Sequential(fn.Linear(5, 3), seed=0)
    path = tmp_path / "m.safetensors"
    fn.save(model, path)
    data = path.read_bytes()
    cases = {
        "truncated": data[:len(data) - 7],
        "header cut": data[:20],
        "empty": b"",
        "garbage": b"\x00" * 8 + b"not json at all",
        "huge header": struct.pack("<Q", 1 << 40) + data[8:],
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match="not a valid safetensors file"):
            fn.load(bad)
        with pytest.raises(ValueError, match="not a valid safetensors file"):
            fn.load_checkpoint(bad, model, fn.SGD(model.parameters()))
    from safetensors.numpy import save_file
    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not one written by fastnn"):
        fn.load(tmp_path / "other.safetensors")
    # a broken JSON architecture (behind valid checksums)
    broken = tmp_path / "arch.safetensors"
    broken.write_bytes(rewrite_metadata(
        data, architecture='{"class": "Linear", "config": {"nope": 1}'))
    with pytest.raises(ValueError, match="corrupt architecture metadata"):
        fn.load(broken)
    broken.write_bytes(rewrite_metadata(
        data, architecture='{"class": "Linear", "config": {"nope": 1}}'))
    with pytest.raises(ValueError, match="bad arguments for Linear .*'nope'"):
        fn.load(broken)
