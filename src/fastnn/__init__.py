"""fastnn: a neural-network training core whose hot paths are native C kernels."""
import os as _os

from . import ops
from ._kernels import (
    arch,
    available_archs,
    get_num_threads,
    openmp_enabled,
    set_arch,
    set_num_threads,
)

__version__ = "0.1.0"

if _os.environ.get("FASTNN_ARCH"):
    try:
        set_arch(_os.environ["FASTNN_ARCH"])
    except ValueError as _e:
        raise ImportError(f"FASTNN_ARCH={_os.environ['FASTNN_ARCH']!r} cannot be used: {_e}") from None

__all__ = ["ops", "arch", "available_archs", "set_arch", "get_num_threads", "set_num_threads",
           "openmp_enabled", "__version__"]
