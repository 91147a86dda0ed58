"""The PyTorch counterparts of fastnn.models.lenet5 and cifar_net for the benchmark scripts
(bench_cnn_epoch.py, fashion_lenet.py, cnn_peak_memory.py): fastnn's own _torch_models.py,
loaded by path without importing the fastnn package, so that a process measuring PyTorch
alone stays free of fastnn."""
import importlib.util
import os

_spec = importlib.util.find_spec("fastnn")   # finds the package; runs none of its code
_path = os.path.join(list(_spec.submodule_search_locations)[0], "_torch_models.py")
_mod_spec = importlib.util.spec_from_file_location("_fastnn_torch_models", _path)
_mod = importlib.util.module_from_spec(_mod_spec)
_mod_spec.loader.exec_module(_mod)
torch_model = _mod.torch_model
