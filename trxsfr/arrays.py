"""NumPy arrays that TensorFlow can read in place, so large feature sets are never doubled."""

from __future__ import annotations

import numpy as np

_ALIGN = 64  # bytes; TensorFlow's CPU kernels need this alignment to use a buffer in place


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(nbytes + _ALIGN, np.uint8)
    offset = (-buf.ctypes.data) % _ALIGN
    return buf[offset:offset + nbytes].view(dtype).reshape(shape)


def as_tensor(array: np.ndarray):
    """A tf.Tensor over `array`: zero-copy (DLPack) when aligned and contiguous, else a copy."""
    import tensorflow as tf

    if array.flags.c_contiguous and array.ctypes.data % _ALIGN == 0 and array.size:
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.constant(array)
