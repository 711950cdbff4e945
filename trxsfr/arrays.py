"""64-byte-aligned NumPy arrays, which TensorFlow (via DLPack) and BLAS read in place."""

from __future__ import annotations

import numpy as np

_ALIGN = 64  # bytes; TensorFlow's CPU kernels need this alignment to use a buffer in place


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(nbytes + _ALIGN, np.uint8)
    offset = (-buf.ctypes.data) % _ALIGN
    return buf[offset:offset + nbytes].view(dtype).reshape(shape)
