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
    text = json.dumps(header).replace(json.dumps("@deep@"), "[" * 5000 + "]" * 5000).encode()
    return struct.pack("<Q", len(text)) + text + body


def rewrite_metadata(data, recompute=True, **changes):
    """The file's bytes with metadata entries changed (None: removed) and, with checksums,
    the metadata checksum recomputed: what a writer that means it would produce."""
    header, body = split_file(data)
    meta = header["__metadata__"]
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    if recompute and "checksums" in meta:
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


# ---- files that cannot lie -------------------------------------------------------------------

def test_architecture_is_checked_against_the_tensors_before_anything_is_built(tmp_path):
    """A small file whose architecture claims Linear(12000, 12000) fails at once: nothing of
    the 576 MB the layer would need is allocated."""
    import tracemalloc

    path = tmp_path / "small.safetensors"
    fn.save(fn.Linear(3, 5, seed=0), path)
    data = path.read_bytes()
    big = json.dumps({"class": "Linear", "config": {"in_features": 12000,
                                                    "out_features": 12000, "bias": True,
                                                    "dtype": "float32"}})
    path.write_bytes(rewrite_metadata(data, architecture=big))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"tensor 'weight' has shape \(5, 3\), its "
                                             r"architecture expects \(12000, 12000\)"):
            fn.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # a header that claims a big tensor over a few bytes of data
    header, body = split_file(data)
    header["weight"]["shape"] = [12000, 12000]
    path.write_bytes(join_file(header, body))
    with pytest.raises(ValueError, match=r"tensor 'weight' of shape \(12000, 12000\) and "
                                         r"dtype F32 does not fit its 60 bytes"):
        fn.load(path)
    # names and dtypes too
    arch = {"class": "Linear", "config": {"in_features": 3, "out_features": 5,
                                          "bias": False, "dtype": "float32"}}
    path.write_bytes(rewrite_metadata(data, architecture=json.dumps(arch)))
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['bias'\]"):
        fn.load(path)
    arch["config"].update(bias=True, dtype="float64")
    path.write_bytes(rewrite_metadata(data, architecture=json.dumps(arch)))
    with pytest.raises(ValueError, match="'weight' has dtype F32, its architecture expects "
                                         "float64"):
        fn.load(path)
    with pytest.raises(ValueError, match=r"'weight' has shape \(5, 3\), the model expects "
                                         r"\(5, 4\)"):
        fn.load(tmp_path / "small.safetensors", model=fn.Linear(4, 5))


def test_load_reads_tensors_without_a_copy_of_the_file(tmp_path):
    """Reading the header reads only the header; loading never holds the file's bytes and the
    tensors at once on top of the model (the old reader's whole-file copy)."""
    import tracemalloc

    model = fn.Sequential(fn.Linear(500, 1000), fn.ReLU(), fn.Linear(1000, 500), seed=0)
    path = tmp_path / "m.safetensors"
    fn.save(model, path)
    size = path.stat().st_size
    arch = fn.io.architecture(model)
    tracemalloc.start()
    try:
        f = fn.io._File(path)
        header_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        built = fn.io._rebuild(arch)
        build_peak = tracemalloc.get_traced_memory()[1] - before
        del built
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        loaded = fn.load(path)
        load_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(f.index) == 4 and header_peak < 64 << 10
    # loading costs what building the model costs: the tensors are read into its parameters
    assert load_peak < build_peak + size // 10, (load_peak, build_peak, size)
    np.testing.assert_array_equal(loaded[2].weight, model[2].weight)


def test_checksums_catch_flipped_bits_anywhere(tmp_path):
    """One bit flipped at any byte of a model file (header, metadata or data), and several
    bits of every byte of the tensor data, always raise ValueError."""
    model = fn.Sequential(fn.Linear(6, 5), fn.Tanh(), fn.Dropout(0.2), fn.Linear(5, 3),
                          seed=0)
    path = tmp_path / "m.safetensors"
    fn.save(model, path)
    good = path.read_bytes()
    n = struct.unpack("<Q", good[:8])[0]
    rng = np.random.default_rng(0)
    flips = [(i, int(rng.integers(8))) for i in range(len(good))]
    flips += [(i, b) for i in range(8 + n, len(good), 25) for b in range(8)]
    bad = tmp_path / "bad.safetensors"
    names = []
    for i, bit in flips:
        data = bytearray(good)
        data[i] ^= 1 << bit
        bad.write_bytes(bytes(data))
        with pytest.raises(ValueError) as e:
            fn.load(bad)
        if i >= 8 + n:
            names.append(str(e.value))
    assert len(flips) > 900
    assert all("checksum mismatch in tensor" in m for m in names)
    assert any("'3.bias'" in m for m in names) and any("'0.weight'" in m for m in names)
    fn.load(path)  # the good file still loads


def test_files_without_checksums_still_load(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save as st_save
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tmodel = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    save_file(tmodel.state_dict(), str(tmp_path / "torch.safetensors"))
    model = fn.Sequential(fn.Linear(4, 8), fn.ReLU(), fn.Linear(8, 2), seed=1)
    assert fn.load(tmp_path / "torch.safetensors", model=model) is model
    np.testing.assert_array_equal(model[2].weight, tmodel[2].weight.detach().numpy())
    with pytest.raises(ValueError, match=r"not one written by fastnn .*model=model"):
        fn.load(tmp_path / "torch.safetensors")
    # a version-1 fastnn file (before checksums)
    old = fn.Linear(3, 2, seed=4)
    meta = {"format": "fastnn-model", "version": "1",
            "architecture": json.dumps(fn.io.architecture(old))}
    (tmp_path / "v1.safetensors").write_bytes(st_save(old.state_dict(), metadata=meta))
    np.testing.assert_array_equal(fn.load(tmp_path / "v1.safetensors").weight, old.weight)
    # but a version-2 file cannot drop its checksums
    fn.save(old, tmp_path / "v2.safetensors")
    (tmp_path / "v2.safetensors").write_bytes(rewrite_metadata(
        (tmp_path / "v2.safetensors").read_bytes(), checksums=None))
    with pytest.raises(ValueError, match="'checksums' metadata is missing"):
        fn.load(tmp_path / "v2.safetensors")


def snapshot(model, opt, sched):
    """Bytes of everything load_checkpoint may change."""
    osd = opt.state_dict()
    return (
        {k: v.tobytes() for k, v in model.state_dict().items()},
        {i: {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
         for i, s in osd["state"].items()},
        json.dumps(osd["param_groups"]), json.dumps(sched.state_dict()),
        json.dumps(fn.init.default_generator().bit_generator.state),
        {name: json.dumps(m.generator.bit_generator.state)
         for name, m in model.named_modules() if isinstance(m, fn.Dropout)},
    )


def checkpoint_cases(data):
    """(name, file bytes) with one field of the checkpoint corrupted."""
    header, body = split_file(data)
    ck = json.loads(header["__metadata__"]["checkpoint"])

    def with_ck(edit):
        c = json.loads(json.dumps(ck))
        edit(c)
        return rewrite_metadata(data, checkpoint=json.dumps(c))

    def setter(*path_and_value):
        *path, value = path_and_value

        def edit(c):
            for k in path[:-1]:
                c = c[k]
            c[path[-1]] = value
        return edit

    cases = [
        ("epoch negative", with_ck(setter("epoch", -1))),
        ("epoch text", with_ck(setter("epoch", "2"))),
        ("epoch float", with_ck(setter("epoch", 1.5))),
        ("optimizer class", with_ck(setter("optimizer", "class", "SGD"))),
        ("optimizer lr text", with_ck(setter("optimizer", "param_groups", 0, "lr", "0.1"))),
        ("optimizer lr negative", with_ck(setter("optimizer", "param_groups", 0, "lr", -1.0))),
        ("optimizer betas", with_ck(setter("optimizer", "param_groups", 0, "betas",
                                           [1.5, 0.9]))),
        ("optimizer amsgrad", with_ck(setter("optimizer", "param_groups", 0, "amsgrad", 3))),
        ("optimizer unknown option", with_ck(setter("optimizer", "param_groups", 0, "foo", 1))),
        ("optimizer groups", with_ck(setter("optimizer", "param_groups", []))),
        ("optimizer params", with_ck(setter("optimizer", "param_groups", 0, "params", "x"))),
        ("optimizer step negative", with_ck(setter("optimizer", "steps", "0", -5))),
        ("optimizer step index", with_ck(setter("optimizer", "steps", "99", 3))),
        ("optimizer steps differ", with_ck(setter("optimizer", "steps", "1", 1))),
        ("optimizer missing", with_ck(lambda c: c.pop("optimizer"))),
        ("scheduler state type", with_ck(setter("scheduler", "state", "last_epoch", "x"))),
        ("scheduler state key", with_ck(lambda c: c["scheduler"]["state"].pop("T_max"))),
        ("scheduler lrs", with_ck(setter("scheduler", "state", "base_lrs", [1, 2, 3]))),
        ("scheduler class", with_ck(setter("scheduler", "class", "StepLR"))),
        ("rng text", with_ck(setter("rng", "state"))),
        ("rng state", with_ck(setter("rng", "state", "state", "many"))),
        ("rng kind", with_ck(setter("rng", "bit_generator", "MT19937"))),
        ("rng unknown", with_ck(setter("rng", "bit_generator", "os"))),
        ("dropout state", with_ck(setter("dropout", "2", "state", {"state": -1, "inc": []}))),
        ("dropout layer", with_ck(setter("dropout", "7", ck["dropout"]["2"]))),
        ("dropout type", with_ck(setter("dropout", []))),
        ("checkpoint not JSON", rewrite_metadata(data, checkpoint="{")),
        ("checkpoint list", rewrite_metadata(data, checkpoint="[]")),
    ]
    # tensors: a flipped bit in the last tensor's data (the others are fine)
    last = max(header, key=lambda k: header[k]["data_offsets"][0] if k != "__metadata__"
               else -1)
    b = bytearray(data)
    b[len(data) - 1] ^= 4
    cases.append((f"tensor data of {last}", bytes(b)))
    # tensors: an optimizer buffer of the wrong shape, of an unknown name, an extra tensor
    for name, edit in (("optimizer.0.exp_avg", "shape"), ("optimizer.1.exp_avg", "name"),
                       ("model.0.bias", "extra")):
        h = json.loads(json.dumps(header))
        if edit == "shape":
            h[name]["shape"] = h[name]["shape"][::-1]
        elif edit == "name":
            h["optimizer.1.bogus"] = h.pop(name)
        else:
            h["junk.0"] = h.pop(name)
        sums = json.loads(h["__metadata__"]["checksums"])
        sums["tensors"] = {("junk.0" if k == name and edit == "extra" else
                            "optimizer.1.bogus" if k == name and edit == "name" else k): v
                           for k, v in sums["tensors"].items()}
        h["__metadata__"]["checksums"] = json.dumps(sums)
        cases.append((f"tensor {name} {edit}", rewrite_metadata(join_file(h, body))))
    return cases


def test_corrupt_checkpoint_fields_change_nothing(tmp_path):
    """One corrupted field (epoch, optimizer, scheduler, rng, dropout, tensors) raises
    ValueError before the model, optimizer, scheduler or any generator changes."""
    model, opt, sched, X, y = make_run()
    fn.fit(model, fn.CrossEntropyLoss(), opt, X, y, epochs=1, verbose=0, seed=0,
           scheduler=sched)
    path = tmp_path / "ck.safetensors"
    fn.save_checkpoint(path, model, opt, sched, epoch=1, extra={"a": [1, 2]})
    data = path.read_bytes()
    m2, o2, s2, _, _ = make_run(seed=5)
    fn.fit(m2, fn.CrossEntropyLoss(), o2, X[:100], y[:100], epochs=2, verbose=0, seed=3,
           scheduler=s2)
    fn.manual_seed(11)
    before = snapshot(m2, o2, s2)
    cases = checkpoint_cases(data)
    bad = tmp_path / "bad.safetensors"
    for name, content in cases:
        bad.write_bytes(content)
        with pytest.raises(ValueError) as e:
            fn.load_checkpoint(bad, m2, o2, s2)
        assert "bad.safetensors" in str(e.value), name
        assert snapshot(m2, o2, s2) == before, name
    # the good file still restores everything
    assert fn.load_checkpoint(path, m2, o2, s2) == {"epoch": 1, "extra": {"a": [1, 2]}}
    np.testing.assert_array_equal(m2[3].weight, model[3].weight)
    assert snapshot(m2, o2, s2)[:4] == snapshot(model, opt, sched)[:4]


DEEP = "@deep@"  # replaced by 5000 nested lists in the JSON text (too deep for Python's json)


def dumps(value):
    return json.dumps(value).replace(json.dumps(DEEP), "[" * 5000 + "]" * 5000)


def mutations(value, path=()):
    """(path, replacement) pairs: every node of a JSON value replaced by values of the wrong
    type, deleted (None marks deletion) or deeply nested."""
    for bad in (None, True, -1, 2 ** 70, 1.5, "x", [], {}, DEEP, [[1, 2], {"a": None}]):
        yield path, ("null" if bad is None else bad)
    if path:
        yield path, None
    children = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for k, v in children:
        yield from mutations(v, path + (k,))


def mutated(value, path, new):
    value = json.loads(json.dumps(value))
    if not path:
        return None if new == "null" else new
    node = value
    for k in path[:-1]:
        node = node[k]
    if new is None:
        del node[path[-1]]
    else:
        node[path[-1]] = None if new == "null" else new
    return value


def test_fuzzed_metadata_raises_only_value_error(tmp_path):
    """Every node of the architecture, checkpoint and preprocess JSON (and of the header)
    replaced by wrong types, deep nesting or removed: load and load_checkpoint succeed or
    raise ValueError, never KeyError, TypeError, AttributeError or RecursionError."""
    model = fn.Sequential(fn.Linear(4, 3), fn.ReLU(), fn.Dropout(0.5), fn.Linear(3, 2), seed=0)
    opt = fn.Adam(model.parameters())
    sched = fn.StepLR(opt, step_size=2)
    fn.fit(model, fn.CrossEntropyLoss(), opt, np.ones((8, 4), np.float32), np.zeros(8, int),
           epochs=1, batch_size=4, verbose=0, seed=0)
    path = tmp_path / "ck.safetensors"
    fn.save_checkpoint(path, model, opt, sched, epoch=1)
    data = path.read_bytes()
    header, body = split_file(data)
    bad = tmp_path / "bad.safetensors"
    outcomes = {"ok": 0, "ValueError": 0}

    def attempt(content, call):
        bad.write_bytes(content)
        try:
            call()
            outcomes["ok"] += 1
        except ValueError:
            outcomes["ValueError"] += 1

    for key in ("architecture", "checkpoint", "preprocess"):
        if key == "preprocess":     # a model file saved with its preprocessing
            pre = fn.Preprocess(standardizer=fn.Standardizer().fit(np.eye(4)),
                                label_encoder=fn.LabelEncoder().fit(["a", "b"]),
                                feature_names=list("wxyz"))
            fn.save(model, tmp_path / "pre.safetensors", preprocess=pre)
            data = (tmp_path / "pre.safetensors").read_bytes()
            header, body = split_file(data)
        tree = json.loads(header["__metadata__"][key])
        for where, new in mutations(tree):
            text = dumps(mutated(tree, where, new))
            content = rewrite_metadata(data, **{key: text})
            m = fn.Sequential(fn.Linear(4, 3), fn.ReLU(), fn.Dropout(0.5), fn.Linear(3, 2))
            o = fn.Adam(m.parameters())
            s = fn.StepLR(o, step_size=2)
            attempt(content, lambda: fn.load(bad))
            if key != "preprocess":
                attempt(content, lambda: fn.load_checkpoint(bad, m, o, s))
    # the safetensors header itself (not behind the checksums)
    plain = {k: v for k, v in header.items() if k != "__metadata__"}
    for where, new in mutations(plain):
        if where and new is None and len(where) == 1:
            continue  # a removed tensor entry is covered above (holes in the data)
        h = mutated(plain, where, new)
        h = {"__metadata__": header["__metadata__"], **h} if isinstance(h, dict) else h
        attempt(join_file(h, body), lambda: fn.load(bad))
    for meta in (None, [], {"format": 1}, {"format": "fastnn-model", "version": 2},
                 {"format": "fastnn-model", "version": "2", "checksums": "[]"},
                 {"format": "fastnn-model", "version": "2", "checksums": '{"tensors": {}}'}):
        attempt(join_file({**plain, "__metadata__": meta}, body), lambda: fn.load(bad))
    bad.write_bytes(struct.pack("<Q", 20000) + b"[" * 20000 + body)
    with pytest.raises(ValueError):
        fn.load(bad)
    deep = {"class": "Sequential", "config": {}, "layers": []}
    for _ in range(300):
        deep = {"class": "Sequential", "config": {}, "layers": [deep]}
    attempt(rewrite_metadata(data, architecture=json.dumps(deep)), lambda: fn.load(bad))
    assert outcomes["ValueError"] > 500 and outcomes["ok"] > 0, outcomes


# ---- saving: modes, links, signals, kills ----------------------------------------------------

def test_new_files_get_the_umask_mode_and_existing_files_keep_theirs(tmp_path):
    model = fn.Linear(3, 2, seed=0)
    old = os.umask(0o022)
    try:
        fn.save(model, tmp_path / "a.safetensors")
        os.umask(0o077)
        fn.save(model, tmp_path / "b.safetensors")
        os.chmod(tmp_path / "a.safetensors", 0o640)
        fn.save_checkpoint(tmp_path / "a.safetensors", model, fn.SGD(model.parameters()))
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.safetensors").stat().st_mode & 0o777 == 0o600
    os.umask(0o022)
    try:
        fn.save(model, tmp_path / "c.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "c.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("o_tmpfile", [True, False])
def test_saving_to_a_symlink_replaces_its_target(tmp_path, monkeypatch, o_tmpfile):
    monkeypatch.setattr(fn.io, "_USE_O_TMPFILE", o_tmpfile)
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "m.safetensors"
    fn.save(fn.Linear(3, 2, seed=0), target)
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    new = fn.Linear(3, 2, seed=1)
    fn.save(new, link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_array_equal(fn.load(target).weight, new.weight)
    assert sorted(os.listdir(tmp_path)) == ["link.safetensors", "real"]
    assert os.listdir(tmp_path / "real") == ["m.safetensors"]


def dead_pid():
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporary_files_of_the_target_are_removed(tmp_path):
    path = tmp_path / "m.safetensors"
    gone = dead_pid()
    stale = tmp_path / f".m.safetensors.{gone}.0123456789abcdef.tmp"
    live = tmp_path / f".m.safetensors.{os.getppid()}.0123456789abcdef.tmp"  # a live process
    other = tmp_path / f".n.safetensors.{gone}.0123456789abcdef.tmp"        # another target
    for f in (stale, live, other):
        f.write_bytes(b"x" * 100)
    fn.save(fn.Linear(3, 2), path)
    assert sorted(os.listdir(tmp_path)) == sorted(["m.safetensors", live.name, other.name])


def test_sigterm_during_a_save_cleans_up_and_reaches_the_previous_handler(tmp_path,
                                                                          monkeypatch):
    import signal

    path = tmp_path / "m.safetensors"
    old = fn.Sequential(fn.Linear(30, 20), seed=0)
    fn.save(old, path)
    good = path.read_bytes()
    got = []

    def previous(signum, frame):
        got.append(signum)

    prior = signal.signal(signal.SIGTERM, previous)
    try:
        for o_tmpfile in (True, False):
            monkeypatch.setattr(fn.io, "_USE_O_TMPFILE", o_tmpfile)
            monkeypatch.setattr(fn.io, "_CHUNK", 256)
            real_fdopen = os.fdopen

            class Killed(FailingFile):
                def write(self, data):
                    if self.written > 500:
                        os.kill(os.getpid(), signal.SIGTERM)
                    return super().write(data)

            monkeypatch.setattr(os, "fdopen", lambda fd, mode: Killed(real_fdopen(fd, mode),
                                                                      1 << 30))
            with pytest.raises(InterruptedError, match="interrupted by SIGTERM"):
                fn.save(fn.Sequential(fn.Linear(30, 20), seed=1), path)
            monkeypatch.setattr(os, "fdopen", real_fdopen)
            assert signal.getsignal(signal.SIGTERM) is previous
            assert path.read_bytes() == good and os.listdir(tmp_path) == ["m.safetensors"]
        assert got == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, prior)


CHILD = """
import sys, fastnn as fn
fn.io._USE_O_TMPFILE = {o_tmpfile}
model = fn.Sequential(fn.Linear(1000, 1500), fn.ReLU(), fn.Linear(1500, 10), seed=0)
print("ready", flush=True)
while True:
    fn.save(model, sys.argv[1])
"""


@pytest.mark.parametrize("o_tmpfile", [True, False])
def test_saves_killed_by_sigterm_or_sigkill(tmp_path, o_tmpfile):
    """A process killed while it saves in a loop (SIGTERM: it removes its temporary file and
    exits by the signal; SIGKILL: the next save removes what is left); the target always
    loads as the model."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "m.safetensors"
    code = CHILD.format(o_tmpfile=o_tmpfile)
    expected = fn.Sequential(fn.Linear(1000, 1500), fn.ReLU(), fn.Linear(1500, 10), seed=0)
    rng = np.random.default_rng(1)
    for sig in (signal.SIGTERM, signal.SIGKILL) * 3:
        p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"ready\n"
        import time
        time.sleep(float(rng.uniform(0.05, 0.3)))
        p.send_signal(sig)
        assert p.wait(timeout=60) == -sig
        p.stdout.close()
        left = [f for f in os.listdir(tmp_path) if f != "m.safetensors"]
        if sig == signal.SIGTERM:
            assert left == []
        if path.exists():
            np.testing.assert_array_equal(fn.load(path)[2].weight, expected[2].weight)
        fn.save(expected, path)
        assert os.listdir(tmp_path) == ["m.safetensors"]


def test_checkpoint_options_may_change_between_int_and_float(tmp_path):
    """lr=1 given as an int, 0.5 after a scheduler step: the checkpoint loads into a fresh
    optimizer made with lr=1 (numbers are numbers; a str or a bool is not)."""
    def make():
        model = fn.Sequential(fn.Linear(2, 2), seed=0)
        opt = fn.SGD(model.parameters(), lr=1, momentum=0.5)
        return model, opt, fn.StepLR(opt, step_size=1, gamma=0.5)

    model, opt, sched = make()
    fn.fit(model, fn.MSELoss(), opt, np.ones((4, 2), np.float32), np.ones((4, 2)), epochs=1,
           batch_size=2, verbose=0, scheduler=sched, seed=0)
    fn.save_checkpoint(tmp_path / "ck.safetensors", model, opt, sched, epoch=1)
    m2, o2, s2 = make()
    fn.load_checkpoint(tmp_path / "ck.safetensors", m2, o2, s2)
    assert o2.param_groups[0]["lr"] == 0.5 and s2.get_last_lr() == [0.5]
    np.testing.assert_array_equal(m2[0].weight, model[0].weight)


@pytest.mark.parametrize("o_tmpfile", [True, False])
def test_the_file_being_written_has_no_name_with_o_tmpfile(tmp_path, monkeypatch, o_tmpfile):
    """With O_TMPFILE the data goes into an anonymous file (nothing to leave behind); without
    it, into .NAME.PID.RANDOM.tmp beside the target."""
    import re

    if o_tmpfile and not hasattr(os, "O_TMPFILE"):
        pytest.skip("this OS has no O_TMPFILE")
    monkeypatch.setattr(fn.io, "_USE_O_TMPFILE", o_tmpfile)
    seen = []
    real_fdopen = os.fdopen

    class Spy(FailingFile):
        def write(self, data):
            if not seen:
                seen.append(sorted(os.listdir(tmp_path)))
            return super().write(data)

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Spy(real_fdopen(fd, mode), 1 << 30))
    fn.save(fn.Linear(3, 2, seed=0), tmp_path / "m.safetensors")
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    if o_tmpfile:
        assert seen == [[]]
    else:
        (name,) = seen[0]
        assert re.fullmatch(rf"\.m\.safetensors\.{os.getpid()}\.[0-9a-f]{{16}}\.tmp", name)
    assert os.listdir(tmp_path) == ["m.safetensors"]
    np.testing.assert_array_equal(fn.load(tmp_path / "m.safetensors").weight,
                                  fn.Linear(3, 2, seed=0).weight)
