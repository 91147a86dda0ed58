"""Data helpers and data sets: splits, Standardizer, one_hot, batches, the bundled digits and
MNIST readers (on small IDX and .npz files written here)."""
import gzip
import struct

import numpy as np
import pytest

import fastnn as fn


def test_split_sizes_disjoint_and_seeded():
    X = np.arange(100).reshape(100, 1)
    y = np.arange(100)
    (a, ya), (b, yb), (c, yc) = fn.train_val_test_split(X, y, val_size=0.2, test_size=10, seed=1)
    assert (len(a), len(b), len(c)) == (70, 20, 10)
    assert sorted(np.concatenate([ya, yb, yc])) == list(range(100))
    np.testing.assert_array_equal(a[:, 0], ya)  # rows stay paired
    again = fn.train_val_test_split(X, y, val_size=0.2, test_size=10, seed=1)
    np.testing.assert_array_equal(again[1][1], yb)
    other = fn.train_val_test_split(X, y, val_size=0.2, test_size=10, seed=2)
    assert not np.array_equal(other[1][1], yb)


def test_stratified_split_keeps_class_shares():
    y = np.repeat([0, 1, 2], [60, 30, 10])
    X = np.zeros((100, 2))
    (_, ya), (_, yb), (_, yc) = fn.train_val_test_split(X, y, 0.2, 0.2, seed=0, stratify=True)
    assert np.bincount(yb).tolist() == [12, 6, 2] == np.bincount(yc).tolist()
    assert np.bincount(ya).tolist() == [36, 18, 6]


def test_split_errors():
    X, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(ValueError, match="different lengths"):
        fn.train_val_test_split(X, y[:9])
    with pytest.raises(ValueError, match="leave no training samples"):
        fn.train_val_test_split(X, y, 0.5, 0.5)
    with pytest.raises(ValueError, match="val_size must be a fraction"):
        fn.train_val_test_split(X, y, 1.5)


def test_standardizer_uses_the_training_statistics_only():
    rng = np.random.default_rng(0)
    train = rng.normal(5, 2, (200, 3)).astype(np.float32)
    train[:, 2] = 7.0  # zero variance
    test = rng.normal(5, 2, (50, 3)).astype(np.float32)
    s = fn.Standardizer().fit(train)
    t = s.transform(train)
    assert t.dtype == np.float32
    np.testing.assert_allclose(t[:, :2].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(t[:, :2].std(0), 1, atol=1e-5)
    assert np.all(t[:, 2] == 0) and np.isfinite(s.transform(test)).all()
    np.testing.assert_allclose(s.transform(test)[:, 0],
                               (test[:, 0] - train[:, 0].mean()) / train[:, 0].std(), rtol=1e-4)
    np.testing.assert_allclose(s.inverse_transform(s.transform(test)), test, rtol=1e-5)
    np.testing.assert_array_equal(fn.Standardizer().fit_transform(train), t)
    with pytest.raises(RuntimeError, match="call fit"):
        fn.Standardizer().transform(test)
    with pytest.raises(ValueError, match=r"expected shape \(n, 3\)"):
        s.transform(test[:, :2])


def test_one_hot():
    out = fn.one_hot([2, 0, 1], 4)
    assert out.dtype == np.float32 and out.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0],
                                                        [0, 1, 0, 0]]
    assert fn.one_hot(np.array([1, 1])).shape == (2, 2)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got 3 at index 1"):
        fn.one_hot([0, 3], 3)
    with pytest.raises(TypeError, match="integer"):
        fn.one_hot([0.5])


def test_batches_in_order_and_shuffled():
    X, y = np.arange(10).reshape(10, 1), np.arange(10)
    parts = list(fn.batches(X, y, batch_size=4))
    assert [len(xb) for xb, _ in parts] == [4, 4, 2]
    assert np.concatenate([yb for _, yb in parts]).tolist() == list(range(10))
    shuffled = np.concatenate([yb for _, yb in fn.batches(X, y, 3, shuffle=True, seed=0)])
    assert sorted(shuffled) == list(range(10)) and shuffled.tolist() != list(range(10))
    again = np.concatenate([yb for _, yb in fn.batches(X, y, 3, shuffle=True, seed=0)])
    np.testing.assert_array_equal(shuffled, again)
    assert [len(b) for b in fn.batches(X, batch_size=5)] == [5, 5]
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        fn.batches(X, y, 0)  # raised at the call, not at the first batch
    with pytest.raises(ValueError, match="different lengths"):
        fn.batches(X, y[:3])


def test_load_digits():
    X, y = fn.datasets.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 16 and np.all(X == np.round(X))
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert X[0].reshape(8, 8)[0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0] and y[0] == 0


def test_digits_data_and_its_readme_are_in_the_package():
    import importlib.resources

    data = importlib.resources.files("fastnn.datasets") / "data"
    readme = (data / "README.md").read_text()
    assert "Optical Recognition of Handwritten Digits" in readme and "CC BY 4.0" in readme
    assert "Alpaydin" in readme and (data / "digits.csv.gz").is_file()


def write_idx(path, array, code):
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                        *array.shape)
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(body)
    else:
        path.write_bytes(body)


def mnist_like(seed=0):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
            "y_train": rng.integers(0, 10, 6).astype(np.uint8),
            "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
            "y_test": rng.integers(0, 10, 3).astype(np.uint8)}


@pytest.mark.parametrize("suffix,sep", [("", "-"), (".gz", "-"), ("", ".")])
def test_load_mnist_from_idx_files(tmp_path, suffix, sep):
    arrays = mnist_like()
    names = {"x_train": "train-images", "y_train": "train-labels", "x_test": "t10k-images",
             "y_test": "t10k-labels"}
    for key, stem in names.items():
        kind = "idx3" if key.startswith("x") else "idx1"
        write_idx(tmp_path / f"{stem}{sep}{kind}-ubyte{suffix}", arrays[key], 0x08)
    (xt, yt), (xs, ys) = fn.datasets.load_mnist(tmp_path)
    np.testing.assert_array_equal(xt, arrays["x_train"])
    np.testing.assert_array_equal(ys, arrays["y_test"])
    assert xt.dtype == np.uint8 and xt.shape == (6, 28, 28) and yt.dtype == np.int64


def test_read_idx_types_and_errors(tmp_path):
    a = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
    write_idx(tmp_path / "a.idx", a, 0x0C)
    np.testing.assert_array_equal(fn.datasets.read_idx(tmp_path / "a.idx"), a)
    f = np.linspace(0, 1, 5).astype(np.float32)
    write_idx(tmp_path / "f.idx.gz", f, 0x0D)
    np.testing.assert_array_equal(fn.datasets.read_idx(tmp_path / "f.idx.gz"), f)
    raw = (tmp_path / "a.idx").read_bytes()
    (tmp_path / "cut.idx").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        fn.datasets.read_idx(tmp_path / "cut.idx")
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04" + raw[4:])
    with pytest.raises(ValueError, match="not an IDX file"):
        fn.datasets.read_idx(tmp_path / "bad.idx")
    (tmp_path / "bad.gz").write_bytes(raw)
    with pytest.raises(ValueError, match="cannot read"):
        fn.datasets.read_idx(tmp_path / "bad.gz")


def test_load_mnist_from_npz_and_errors(tmp_path):
    arrays = mnist_like()
    np.savez(tmp_path / "m.npz", **arrays)
    (xt, yt), (xs, ys) = fn.datasets.load_mnist(tmp_path / "m.npz")
    np.testing.assert_array_equal(xs, arrays["x_test"])
    assert yt.dtype == np.int64
    np.savez(tmp_path / "partial.npz", x_train=arrays["x_train"])
    with pytest.raises(KeyError, match="missing arrays"):
        fn.datasets.load_mnist(tmp_path / "partial.npz")
    np.savez(tmp_path / "mismatch.npz", **dict(arrays, y_test=arrays["y_test"][:2]))
    with pytest.raises(ValueError, match="3 test images but 2 labels"):
        fn.datasets.load_mnist(tmp_path / "mismatch.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        fn.datasets.load_mnist(tmp_path / "empty")
    with pytest.raises(ValueError, match="folder of IDX files or an .npz"):
        fn.datasets.load_mnist(tmp_path / "x.csv")


def test_standardizer_treats_features_constant_up_to_rounding_as_constant():
    s = fn.Standardizer()
    out = s.fit_transform(np.full((1000, 1), 14.62))
    np.testing.assert_array_equal(out, np.zeros((1000, 1)))
    assert s.scale_.tolist() == [1.0]
    np.testing.assert_allclose(s.transform([[14.63]]), [[0.01]], rtol=1e-9)
    # constant up to rounding but not bit-identical: a sum's last-bit noise
    col = np.full(1000, 0.1) * 3
    col[::7] = 0.1 + 0.1 + 0.1      # 0.30000000000000004 vs 0.3
    s = fn.Standardizer().fit(np.stack([col, np.arange(1000.0)], axis=1))
    assert s.scale_[0] == 1.0 and abs(s.transform([[0.3, 0.0]])[0, 0]) < 1e-15
    assert s.scale_[1] == pytest.approx(np.arange(1000.0).std())
    # the same rule as scikit-learn's StandardScaler
    sk = pytest.importorskip("sklearn.preprocessing")
    rng = np.random.default_rng(0)
    X = np.stack([np.full(500, 14.62), np.full(500, -3e8) + rng.normal(0, 1e-9, 500),
                  rng.normal(5, 2, 500), np.full(500, 1e-300)], axis=1)
    ref = sk.StandardScaler().fit(X)
    np.testing.assert_array_equal(fn.Standardizer().fit(X).scale_ == 1.0, ref.scale_ == 1.0)
    for bad in (np.array([[1.0], [np.nan]]), np.array([[1e308], [-1e308]])):
        with pytest.raises(ValueError, match="feature 0 contains NaN or Inf"):
            fn.Standardizer().fit(bad)


def test_stratified_split_honours_the_requested_sizes():
    X = np.arange(200).reshape(200, 1)
    y = np.repeat(np.arange(100), 2)
    (a, ya), (b, yb), (c, yc) = fn.train_val_test_split(X, y, val_size=0.25, test_size=0.25,
                                                        seed=0, stratify=True)
    assert (len(ya), len(yb), len(yc)) == (100, 50, 50)
    assert sorted(np.concatenate([a, b, c])[:, 0]) == list(range(200))
    np.testing.assert_array_equal(a[:, 0] // 2, ya)
    # each class is split as evenly as the sizes allow: at most one sample apart
    for part, size in ((ya, 100), (yb, 50), (yc, 50)):
        counts = np.bincount(part, minlength=100)
        assert counts.max() - counts.min() <= 1 and counts.sum() == size
    # unbalanced classes, sizes given as counts
    y = np.repeat([0, 1, 2], [50, 30, 7])
    (_, ya), (_, yb), (_, yc) = fn.train_val_test_split(np.zeros((87, 2)), y, 13, 0.3,
                                                        seed=1, stratify=True)
    assert (len(ya), len(yb), len(yc)) == (87 - 13 - 26, 13, 26)
    np.testing.assert_allclose(np.bincount(yc) / 26, [50 / 87, 30 / 87, 7 / 87], atol=0.05)
    # string labels and floats that are whole numbers are class labels too
    ys = np.array(["cat", "dog"] * 10)
    (_, ya), (_, yb), _ = fn.train_val_test_split(np.zeros((20, 1)), ys, 0.2, 0.2, seed=0,
                                                  stratify=True)
    assert sorted(yb.tolist()) == ["cat", "cat", "dog", "dog"]
    fn.train_val_test_split(np.zeros((20, 1)), np.arange(20.0) % 2, 0.2, 0.2, stratify=True)


def test_stratified_split_needs_class_labels():
    X = np.zeros((20, 2))
    with pytest.raises(ValueError, match=r"1-D class labels, got shape \(20, 3\)"):
        fn.train_val_test_split(X, np.zeros((20, 3)), stratify=True)
    with pytest.raises(ValueError, match=r"class labels, got 0\.5 at index 1 \(continuous"):
        fn.train_val_test_split(X, np.arange(20) * 0.5, stratify=True)
    with pytest.raises(ValueError, match="class labels, got nan at index 0"):
        fn.train_val_test_split(X, np.r_[np.nan, np.zeros(19)], stratify=True)
    with pytest.raises(ValueError, match="arrays of samples"):
        fn.train_val_test_split(X, 3)
    # without stratify any target works
    (_, ya), _, _ = fn.train_val_test_split(X, np.zeros((20, 3)), 0.2, 0.2, seed=0)
    assert ya.shape == (12, 3)
