"""Training distortions (TF retrain.py's flags), rendered as cached views of an image."""

from __future__ import annotations

import dataclasses
import functools

import tensorflow as tf

from trxsfr.base import imaging
from trxsfr.base.imaging import SeededView


@dataclasses.dataclass(frozen=True)
class Distortion:
    """TF retrain.py's training distortions; percentages as in its flags."""

    flip_left_right: bool = False
    random_crop: float = 0.0  # margin cropped off, % of the image size
    random_scale: float = 0.0  # up to this % larger before the crop
    random_brightness: float = 0.0  # pixels multiplied by 1 ± up to this %

    @property
    def active(self) -> bool:
        return bool(self.flip_left_right or self.random_crop or self.random_scale
                    or self.random_brightness)

    def spec(self) -> str:
        """Identifies what the distortion computes; part of a variant's cache key."""
        return (f"distort-v1 flip={int(self.flip_left_right)} crop={self.random_crop:g} "
                f"scale={self.random_scale:g} brightness={self.random_brightness:g}")


def distort(image_bytes: tf.Tensor, size: tuple[int, int], d: Distortion, seed: tf.Tensor) -> tf.Tensor:
    """A randomly distorted training view of one image, fixed by `seed` (int64 [2]).

    As retrain.py: scale up by the crop margin and a random factor, crop a
    random window of `size`, maybe flip, multiply brightness; then clip to [0, 1].
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = tf.image.convert_image_dtype(imaging.decode_rgb(image_bytes, size), tf.float32)
    scale = (1.0 + d.random_crop / 100.0) * tf.random.stateless_uniform(
        [], seeds[0], 1.0, 1.0 + d.random_scale / 100.0 + 1e-9)
    precrop = tf.cast(tf.math.ceil(scale * tf.constant(size, tf.float32)), tf.int32)
    image = tf.image.resize(image, precrop, method="bilinear", antialias=True)
    image = tf.image.stateless_random_crop(image, [size[0], size[1], 3], seeds[1])
    if d.flip_left_right:
        image = tf.image.stateless_random_flip_left_right(image, seeds[2])
    if d.random_brightness:
        image *= tf.random.stateless_uniform([], seeds[3], 1.0 - d.random_brightness / 100.0,
                                             1.0 + d.random_brightness / 100.0)
    return tf.clip_by_value(image, 0.0, 1.0)


def view_of(d: Distortion) -> SeededView:
    """The seeded view `imaging.image_dataset` renders for distortion `d`."""
    return functools.partial(_distorted_view, d=d)


def _distorted_view(image_bytes, size, seed, d: Distortion):
    return distort(image_bytes, size, d, seed)
