"""fastnn: a neural-network training core whose hot paths are native C kernels."""
import os as _os

# Waiting OpenMP threads sleep instead of spinning: on a machine whose other cores are busy,
# spinning workers turn each parallel region's join into a scheduler time slice (0.1-1 s
# stalls measured on a shared 2-core machine). Read once when the C library loads; an
# explicit OMP_WAIT_POLICY wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import callbacks, data, datasets, distributed, init, lr_scheduler, ops  # noqa: E402
from ._kernels import (
    arch,
    available_archs,
    bf16_native,
    get_num_threads,
    openmp_enabled,
    set_arch,
    set_num_threads,
)
from ._paths import get_include, get_library_dir
from .callbacks import Callback, EarlyStopping, History, ModelCheckpoint, TerminateOnNaN
from .data import LabelEncoder, Preprocess, Standardizer, batches, one_hot, train_val_test_split
from .init import manual_seed
from .io import load, load_checkpoint, save, save_checkpoint
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss
from .lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LinearLR,
    ReduceLROnPlateau,
    StepLR,
)
from .nn import (
    GELU,
    Conv2d,
    Dropout,
    Flatten,
    LeakyReLU,
    Linear,
    Module,
    Parameter,
    ReLU,
    Sequential,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from .nn import (  # pooling and normalization layers
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    LayerNorm,
    MaxPool2d,
)
from .optim import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, clip_grad_norm_
from .train import evaluate, fit

__version__ = "0.1.0"



def __getattr__(name):
    """``fastnn.cuda`` and ``fastnn.onnx`` are imported on first access (PEP 562): ``import
    fastnn`` never imports numba or onnx, and they work without a separate import."""
    if name in ("cuda", "onnx"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")


if _os.environ.get("FASTNN_ARCH"):
    try:
        set_arch(_os.environ["FASTNN_ARCH"])
    except ValueError as _e:
        raise ImportError(f"FASTNN_ARCH={_os.environ['FASTNN_ARCH']!r} cannot be used: {_e}") from None

__all__ = [
    "ops", "arch", "available_archs", "set_arch", "get_num_threads", "set_num_threads",
    "openmp_enabled", "bf16_native", "__version__", "get_include", "get_library_dir",
    # models and layers
    "Module", "Sequential", "Parameter", "Linear", "Conv2d", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
    "GELU", "SiLU", "Softmax", "Dropout", "Flatten", "init", "manual_seed",
    # losses, optimizers, schedulers
    "MSELoss", "L1Loss", "HuberLoss", "BCEWithLogitsLoss", "CrossEntropyLoss",
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "clip_grad_norm_",
    "lr_scheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR",
    "ReduceLROnPlateau",
    # training, callbacks, data, persistence
    "fit", "evaluate", "History", "callbacks", "Callback", "EarlyStopping", "ModelCheckpoint",
    "TerminateOnNaN", "data", "datasets", "train_val_test_split", "Standardizer", "one_hot",
    "LabelEncoder", "Preprocess",
    "batches", "save", "load", "save_checkpoint", "load_checkpoint",
]
from . import models  # noqa: E402  (convolutional model builders)

__all__ += ["models", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d",
            "LayerNorm"]
