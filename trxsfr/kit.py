"""A tiny feature extractor and tiny separable image sets, built offline.

Used by `trxsfr fixtures OUT_DIR` (smoke-train in seconds without a network) and
by trxsfr's own tests. The extractor follows the TF-Hub image feature-vector
convention: call it with float32 [N, H, W, 3] in [0, 1], get float32 [N, D].
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from trxsfr.base import files
from trxsfr.base.errors import InputError

if TYPE_CHECKING:
    import PIL.Image

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 70, 230),
}


def build_extractor(
    path: str, image_size: int = 32, channels: Sequence[int] = (8, 16), seed: int = 0
) -> str:
    """Write a small conv net (ReLU convs, a frozen batch norm, global mean pool) as a SavedModel.

    Weights are random but fixed by `seed`. The feature dimension is
    `2 * channels[-1]` (mean and max pooled).
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    class TinyExtractor(tf.Module):
        def __init__(self):
            super().__init__(name="tiny_extractor")
            self.kernels, self.biases = [], []
            c_in = 3
            for c_out in channels:
                scale = np.sqrt(2.0 / (9 * c_in))
                self.kernels.append(
                    tf.Variable(rng.normal(0, scale, (3, 3, c_in, c_out)).astype("float32"))
                )
                self.biases.append(tf.Variable(np.zeros(c_out, "float32")))
                c_in = c_out
            # Frozen batch-norm statistics, as real feature vectors have them.
            self.moving_mean = tf.Variable(np.zeros(c_in, "float32"), trainable=False)
            self.moving_variance = tf.Variable(np.ones(c_in, "float32"), trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
        def __call__(self, images):
            x = images
            for kernel, bias in zip(self.kernels, self.biases):
                x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=2, padding="SAME") + bias)
            x = (x - self.moving_mean) * tf.math.rsqrt(self.moving_variance + 1e-3)
            return tf.concat([tf.reduce_mean(x, [1, 2]), tf.reduce_max(x, [1, 2])], axis=1)

    tf.saved_model.save(TinyExtractor(), path)
    return path


def _image(rng, colour, size) -> "PIL.Image.Image":
    from PIL import Image

    h, w = size
    noise = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
    pixels = noise.astype(np.int16)
    # A blob of the class colour covering a random third to two thirds of the picture.
    bh, bw = int(h * rng.uniform(0.35, 0.7)), int(w * rng.uniform(0.35, 0.7))
    y, x = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
    pixels[y:y + bh, x:x + bw] = np.array(colour) + rng.integers(-25, 26, (bh, bw, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_image_set(
    root: str,
    per_class: int,
    classes: Sequence[str] = tuple(COLOURS),
    seed: int = 0,
    noise: bool = False,
    size_range: tuple[int, int] = (40, 72),
    colours: Optional[dict] = None,
) -> str:
    """Write `root/<class>/<class>_<i>.jpg` images.

    Each image is noise with a blob of its class colour, so the classes are
    separable by colour and a model must really learn. With `noise=True` every
    image is pure noise: labels carry no signal and no model should pass an
    accuracy gate on it. `colours` maps class names to RGB (default: COLOURS).
    """
    rng = np.random.default_rng(seed)
    from PIL import Image

    for name in classes:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            size = tuple(int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
            if noise:
                img = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
            else:
                img = _image(rng, (colours or COLOURS)[name], size)
            img.save(os.path.join(root, name, f"{name}_{i:04d}.jpg"), quality=90)
    return root


def write_fixtures(out_dir: str, per_class: int = 40, heldout_per_class: int = 12) -> dict:
    """`out_dir/module` (extractor), `out_dir/images` (to train on), `out_dir/heldout`.

    Raises:
        InputError: `out_dir` exists and is not empty (nothing is overwritten).
    """
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise InputError(f"{out_dir} already exists and is not an empty directory; pick a new one")
    files.make_folder(out_dir, "output folder")
    paths = {
        "module": build_extractor(os.path.join(out_dir, "module")),
        "images": write_image_set(os.path.join(out_dir, "images"), per_class, seed=1),
        "heldout": write_image_set(os.path.join(out_dir, "heldout"), heldout_per_class, seed=2),
    }
    return paths
