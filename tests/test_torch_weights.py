"""Weights travel between fastnn and PyTorch through safetensors files: a PyTorch
state_dict loads into the same fastnn architecture with fn.load(path, model=m), and a fastnn
file loads into the matching torch.nn.Sequential with safetensors.torch.load_file (skipped
without torch)."""
import numpy as np
import pytest

import fastnn as fn

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")


def _pair():
    f = fn.Sequential(fn.Flatten(), fn.Linear(12, 32), fn.ReLU(), fn.Dropout(0.2),
                      fn.Linear(32, 16, bias=False), fn.GELU(), fn.Linear(16, 16), fn.Tanh(),
                      fn.Linear(16, 5), fn.Softmax())
    t = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 32), torch.nn.ReLU(),
                            torch.nn.Dropout(0.2), torch.nn.Linear(32, 16, bias=False),
                            torch.nn.GELU(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                            torch.nn.Linear(16, 5), torch.nn.Softmax(dim=-1))
    return f, t.eval()


def _X():
    return np.random.default_rng(0).normal(size=(40, 3, 4)).astype(np.float32)


def _torch_predict(t, X):
    with torch.no_grad():
        return t(torch.from_numpy(X)).numpy()


def test_torch_state_dict_into_fastnn(tmp_path):
    f, t = _pair()
    torch.manual_seed(0)
    for m in t:
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()
    st_torch.save_file(t.state_dict(), str(tmp_path / "t.safetensors"))
    loaded = fn.load(tmp_path / "t.safetensors", model=f)
    assert loaded is f
    for k, v in t.state_dict().items():
        assert np.array_equal(f.state_dict()[k], v.numpy()), k
    np.testing.assert_allclose(f.predict(_X()), _torch_predict(t, _X()), rtol=1e-5, atol=1e-6)


def test_fastnn_file_into_torch(tmp_path):
    f, t = _pair()
    fn.save(f, tmp_path / "f.safetensors")
    t.load_state_dict(st_torch.load_file(str(tmp_path / "f.safetensors")))   # strict
    for k, v in t.state_dict().items():
        assert np.array_equal(f.state_dict()[k], v.numpy()), k
    np.testing.assert_allclose(_torch_predict(t, _X()), f.predict(_X()), rtol=1e-5, atol=1e-6)


def test_plain_file_needs_model_and_matching_names(tmp_path):
    f, t = _pair()
    st_torch.save_file(t.state_dict(), str(tmp_path / "t.safetensors"))
    with pytest.raises(ValueError, match="not one written by fastnn"):
        fn.load(tmp_path / "t.safetensors")          # no architecture to rebuild from
    other = fn.Sequential(fn.Linear(12, 32), fn.ReLU(), fn.Linear(32, 5))
    with pytest.raises((ValueError, KeyError)):
        fn.load(tmp_path / "t.safetensors", model=other)
