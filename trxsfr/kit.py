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


def plant_faults(root: str, outlier_images: Sequence[str], relabel: int = 10, exact: int = 10,
                 near: int = 10, across_classes: int = 2, split_of=None, seed: int = 0) -> dict:
    """Plant known faults in a class-folder tree, for testing and benchmarking an audit.

    - `relabel` images move to another class's folder (their name kept);
    - `exact` images get a byte-for-byte copy, `near` ones a resized (0.6-0.85x)
      copy re-encoded as JPEG at quality 55-80; `across_classes` of each kind go into
      another class's folder, the rest into their own;
    - `outlier_images` (files of an unrelated set) are copied into class folders.

    Images used for one fault are not used for another. With `split_of` (rel path ->
    split name), copies are named so that every other one lands in another split
    than its original (leakage).

    Returns:
        {"relabelled": [{"path", "true", "given"}], "exact": [[a, b]], "near": [[a, b]],
        "outliers": [path]}, paths relative to `root` ("/"-separated).
    """
    import shutil

    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    pool = [f"{c}/{n}" for c in classes for n in sorted(os.listdir(os.path.join(root, c)))]
    chosen = [pool[i] for i in rng.permutation(len(pool))[:relabel + exact + near]]
    if len(chosen) < relabel + exact + near or len(classes) < 2:
        raise InputError(f"{root} has too few images or classes to plant these faults")

    def other_class(c: str) -> str:
        others = [o for o in classes if o != c]
        return others[int(rng.integers(len(others)))]

    def copy_name(folder: str, name: str, tag: str, want_other_split: bool, src: str) -> str:
        stem = os.path.splitext(name)[0]
        for attempt in range(1000):
            rel = f"{folder}/{stem}_{tag}{attempt}.jpg"
            if os.path.exists(os.path.join(root, *rel.split("/"))):
                continue
            if split_of is None or (split_of(rel) != split_of(src)) == want_other_split:
                return rel
        raise InputError("no copy name lands in the wanted split")

    planted = {"relabelled": [], "exact": [], "near": [], "outliers": []}
    for rel in chosen[:relabel]:
        true, name = rel.split("/", 1)
        given = other_class(true)
        shutil.move(os.path.join(root, true, name), os.path.join(root, given, name))
        planted["relabelled"].append({"path": f"{given}/{name}", "true": true, "given": given})
    for kind, sources in (("exact", chosen[relabel:relabel + exact]),
                          ("near", chosen[relabel + exact:])):
        for k, rel in enumerate(sources):
            label, name = rel.split("/", 1)
            folder = other_class(label) if k < across_classes else label
            copy = copy_name(folder, name, kind, k % 2 == 1, rel)
            src, dst = os.path.join(root, *rel.split("/")), os.path.join(root, *copy.split("/"))
            if kind == "exact":
                shutil.copyfile(src, dst)
            else:
                with Image.open(src) as img:
                    img = img.convert("RGB")
                    scale = float(rng.uniform(0.6, 0.85))
                    size = (max(8, round(img.width * scale)), max(8, round(img.height * scale)))
                    img.resize(size, Image.Resampling.LANCZOS).save(
                        dst, format="JPEG", quality=int(rng.integers(55, 81)))
            planted[kind].append([rel, copy])
    for k, src in enumerate(outlier_images):
        folder = classes[int(rng.integers(len(classes)))]
        rel = f"{folder}/unrelated_{k:03d}{os.path.splitext(src)[1] or '.jpg'}"
        shutil.copyfile(src, os.path.join(root, *rel.split("/")))
        planted["outliers"].append(rel)
    return planted
