"""The conversion the Python layer applies before arrays reach the C kernels."""
import numpy as np


def native(a, dtype=None):
    """a as an ndarray the C kernels accept: native byte order and aligned (copied only when
    it is not: a '>f4' array, or a view at an odd byte offset); with dtype, converted to it."""
    a = np.asarray(a, dtype=dtype)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if not a.flags.aligned:
        a = a.copy()
    return a
