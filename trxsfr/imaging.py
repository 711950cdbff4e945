"""The one preprocessing function: training, `label` and the exported signature all use it."""

from __future__ import annotations

import re
import sys
from typing import Sequence

import tensorflow as tf

# Bump when decode_and_resize changes what it computes: it is part of the cache key.
PREPROCESSING_VERSION = "decode_image-bilinear-antialias-v1"


def decode_and_resize(image_bytes: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Decode one encoded image and resize it for the feature extractor.

    Args:
        image_bytes: scalar tf.string, a JPEG, PNG, GIF (first frame) or BMP file's bytes.
        size: (height, width) the extractor takes.

    Returns:
        float32 [height, width, 3] in [0, 1].
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 1.0)


def decode_batch(image_bytes: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """`decode_and_resize` over tf.string [N] -> float32 [N, height, width, 3] in [0, 1]."""
    return tf.map_fn(
        lambda b: decode_and_resize(b, size),
        image_bytes,
        fn_output_signature=tf.TensorSpec([size[0], size[1], 3], tf.float32),
    )


def image_dataset(paths: Sequence[str], size: tuple[int, int], batch_size: int) -> tf.data.Dataset:
    """Files -> batches of (int64 [B] positions in `paths`, float32 [B, H, W, 3] in [0, 1]).

    Decoding runs in parallel and overlaps whatever consumes the batches. Files
    that do not decode are dropped; the positions say which ones came through
    (ask `decode_error` why the others did not).
    """

    def load(pos, path):
        return pos, decode_and_resize(tf.io.read_file(path), size)

    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(list(paths), tf.string))
    )
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors()
    return ds.batch(batch_size).prefetch(2)


_DECODE_ERRORS = (
    ("Unknown image file format", "not a JPEG, PNG, GIF or BMP file"),
    ("Invalid JPEG data", "truncated or corrupt JPEG data"),
    ("jpeg::Uncompress failed", "truncated or corrupt JPEG data"),
    ("Invalid PNG data", "truncated or corrupt PNG data"),
    ("Invalid GIF data", "truncated or corrupt GIF data"),
)


def decode_error(path: str, size: tuple[int, int]) -> str:
    """Why one file does not decode, in a few words (runs eagerly; for failures only)."""
    try:
        data = tf.io.read_file(path)
        if int(tf.strings.length(data)) == 0:
            return "empty file (0 bytes)"
        decode_and_resize(data, size)
    except Exception as e:  # TF raises InvalidArgumentError etc. with its own words
        text = (getattr(e, "message", None) or str(e)).strip()
        for needle, reason in _DECODE_ERRORS:
            if needle in text:
                return reason
        text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
        text = re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S)
        return "cannot decode: " + (text.splitlines() or [type(e).__name__])[0][:160]
    return "cannot decode"


def progress_bar(total: int, desc: str, enabled: bool):
    """tqdm on stderr, shown only when stderr is a terminal and progress is wanted."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr,
                disable=not enabled or not sys.stderr.isatty(), smoothing=0.1)
