"""Image sets the head's defaults were never developed on, for `benchmarks.bench_tuning`.

Each generator draws one picture of class `label` from its own random stream;
they differ from the pictures trxsfr's defaults were measured on (the textured
squares of `benchmarks.bench`, the colour blobs of `trxsfr.kit`) in what tells
the classes apart: shape, a grating's period and direction, close hues, texture
scale, two-colour patterns, and scikit-learn's handwritten digits. None is perfectly
separable, so a classifier's regularisation shows in its held-out accuracy.
"""

from __future__ import annotations

import colorsys
import dataclasses
import os
from typing import Callable, Sequence

import numpy as np

JPEG_QUALITY = 90


def _background(rng, size: int) -> np.ndarray:
    """float32 [size, size, 3] in [0, 1]: a smooth random wash with pixel noise."""
    from PIL import Image

    cells = rng.uniform(0, 1, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3))
    wash = np.asarray(Image.fromarray(np.uint8(cells * 255)).resize((size, size), Image.BILINEAR),
                      np.float32) / 255.0
    return np.clip(wash + rng.normal(0, 0.06, wash.shape), 0, 1).astype(np.float32)


def _to_image(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.uint8(np.clip(pixels, 0, 1) * 255 + 0.5))


SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "bar", "star")


def shape_picture(rng, label: int, size: int = 112):
    """A large filled shape of random size, place and turn on a random wash; its colour
    leans to a hue of its class (with a wide spread), so shape and colour both carry it."""
    from PIL import ImageDraw

    img = _to_image(_background(rng, size))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.34, 0.48) * size
    cx, cy = rng.uniform(r, size - r, 2)
    turn = rng.uniform(0, 2 * np.pi)
    hue = (label / len(SHAPES) + rng.normal(0, 0.05)) % 1.0
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1),
                                                             rng.uniform(0.5, 1)))
    kind = SHAPES[label]

    def polygon(n, radii):
        angles = turn + np.arange(n) * 2 * np.pi / n
        return [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii)]

    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=max(2, int(r / 3)))
    elif kind == "square":
        draw.polygon(polygon(4, [r] * 4), fill=colour)
    elif kind == "triangle":
        draw.polygon(polygon(3, [r] * 3), fill=colour)
    elif kind == "diamond":
        draw.polygon(polygon(4, [r, 0.5 * r, r, 0.5 * r]), fill=colour)
    elif kind == "star":
        draw.polygon(polygon(10, [r, 0.45 * r] * 5), fill=colour)
    elif kind == "bar":
        draw.polygon(polygon(4, [r, 0.3 * r, r, 0.3 * r]), fill=colour)
    else:  # cross
        for a in (turn, turn + np.pi / 2):
            dx, dy = r * np.cos(a), r * np.sin(a)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=max(2, int(r / 3)))
    return img


GRATING_PERIODS = (0.04, 0.08, 0.16)  # fractions of the picture


def grating_picture(rng, label: int, size: int = 96):
    """A sine grating: the class is its period (3 values, spread 12%) and whether it runs
    nearer horizontal or vertical, with random phase, contrast and colours, over a wash."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = (label % 2 + rng.uniform(0.05, 0.95)) * np.pi / 2
    period = GRATING_PERIODS[label // 2] * np.exp(rng.normal(0, 0.12))
    wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period
                  + rng.uniform(0, 2 * np.pi))
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    mix = rng.uniform(0.5, 0.9)
    grating = c0 + (c1 - c0) * (0.5 + 0.5 * wave[..., None])
    return _to_image(mix * grating + (1 - mix) * _background(rng, size))


def hue_picture(rng, label: int, size: int = 80, classes: int = 20):
    """A few blobs whose hue is near the class's (neighbouring classes overlap), random
    saturation and value, on a grey-ish wash."""
    from PIL import ImageDraw

    bg = _background(rng, size)
    bg = 0.3 * bg + 0.7 * bg.mean(axis=2, keepdims=True)
    img = _to_image(bg)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        hue = (label + rng.normal(0, 0.15)) / classes % 1.0
        colour = colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1), rng.uniform(0.45, 1))
        r = rng.uniform(0.1, 0.3) * size
        cx, cy = rng.uniform(0, size, 2)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(255 * c) for c in colour))
    return img


def texture_picture(rng, label: int, size: int = 96):
    """Smooth noise at a scale drawn around the class's (2 classes, overlapping scales)."""
    from PIL import Image

    cells = int(np.clip(rng.normal((6, 10)[label], 1.5), 2, 24))
    noise = rng.uniform(0, 1, (cells, cells, 3))
    tone = rng.uniform(0.2, 0.8, 3)
    contrast = rng.uniform(0.2, 0.7)
    pixels = np.asarray(Image.fromarray(np.uint8(noise * 255)).resize((size, size),
                                                                       Image.BICUBIC),
                        np.float32) / 255.0
    pixels = tone + contrast * (pixels - 0.5) + rng.normal(0, 0.04, pixels.shape)
    return _to_image(pixels)


PATTERNS = ("plain", "stripes", "dots", "checks")


def pattern_picture(rng, label: int, size: int = 96):
    """A two-colour pattern (none, stripes, dots or checks: the class) of random period,
    turn and colours over part of a random wash."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    period = rng.uniform(6, 16)
    kind = PATTERNS[label]
    if kind == "stripes":
        on = np.mod(u, period) < period / 2
    elif kind == "dots":
        on = (np.mod(u, period) - period / 2) ** 2 + (np.mod(v, period) - period / 2) ** 2 \
            < (0.3 * period) ** 2
    elif kind == "checks":
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    else:
        on = np.zeros_like(u, bool)
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    pattern = np.where(on[..., None], c1, c0)
    h = int(rng.uniform(0.6, 1.0) * size)
    y0, x0 = rng.integers(0, size - h + 1, 2)
    region = np.zeros((size, size, 1), bool)
    region[y0:y0 + h, x0:x0 + h] = True
    return _to_image(np.where(region, pattern, _background(rng, size)))


@dataclasses.dataclass(frozen=True)
class ImageSetSpec:
    name: str
    classes: tuple[str, ...]
    per_class: tuple[int, ...]  # training folder: images of each class
    heldout_per_class: tuple[int, ...]  # held-out folder (another seed)
    picture: Callable  # picture(rng, label) -> PIL image
    seed: int
    class_weight: str = "none"  # what both sides train with

    @property
    def images(self) -> int:
        return sum(self.per_class)


def specs(scale: float = 1.0) -> list[ImageSetSpec]:
    """The benchmark's generated sets; `scale` < 1 shrinks the counts (quick mode), none
    below 20 (the issue's smallest) unless `scale` < 0.1 (smoke tests)."""

    def n(*counts):
        least = 5 if scale < 0.1 else 20
        return tuple(max(min(c, least), int(round(c * scale))) for c in counts)

    return [
        ImageSetSpec("shapes-8", SHAPES, n(*[60] * 8), n(*[100] * 8), shape_picture, 11),
        ImageSetSpec("gratings-6", tuple(f"{o}{i}" for i in range(3) for o in "hv"), n(*[100] * 6),
                     n(*[100] * 6), grating_picture, 12),
        ImageSetSpec("hues-20", tuple(f"hue{i:02d}" for i in range(20)), n(*[20] * 20),
                     n(*[30] * 20), hue_picture, 13),
        ImageSetSpec("textures-2", ("fine", "coarse"), n(500, 500), n(300, 300),
                     texture_picture, 14),
        ImageSetSpec("patterns-4-imbalanced", PATTERNS, n(300, 100, 60, 30),
                     n(200, 67, 40, 20), pattern_picture, 15, class_weight="balanced"),
    ]


def write_set(spec: ImageSetSpec, root: str, heldout: bool = False) -> str:
    """`root/<class>/<class>_<i>.jpg`; image i of a class depends only on (seed, class, i)."""
    counts = spec.heldout_per_class if heldout else spec.per_class
    seed = spec.seed + (1000 if heldout else 0)
    for label, (name, count) in enumerate(zip(spec.classes, counts)):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            path = os.path.join(root, name, f"{name}_{i:05d}.jpg")
            if not os.path.exists(path):
                spec.picture(np.random.default_rng([seed, label, i]), label).save(
                    path, quality=JPEG_QUALITY)
    return root


def write_digits(root: str, heldout_root: str, scale: float = 1.0, size: int = 64,
                 heldout_fraction: float = 0.35, seed: int = 16) -> tuple[str, str]:
    """scikit-learn's 8x8 handwritten digits as `size`-pixel grey JPEGs: a seeded
    `heldout_fraction` of them in `heldout_root`, the rest in `root` (`scale` < 1 keeps
    that share of each)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    cut = int(len(order) * (1 - heldout_fraction))
    for folder, rows in ((root, order[:cut]), (heldout_root, order[cut:])):
        rows = rows[:int(round(len(rows) * scale))]
        for i in rows:
            name = f"digit{digits.target[i]}"
            os.makedirs(os.path.join(folder, name), exist_ok=True)
            path = os.path.join(folder, name, f"{name}_{i:05d}.jpg")
            if not os.path.exists(path):
                grey = np.uint8(digits.images[i] / 16.0 * 255)
                Image.fromarray(grey).resize((size, size), Image.BILINEAR).convert("RGB").save(
                    path, quality=JPEG_QUALITY)
    return root, heldout_root


def labelled_files(root: str, labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Paths under `root/<class>/` of the given labels (sorted) and their label indices."""
    paths, y = [], []
    for index, name in enumerate(labels):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        for f in sorted(os.listdir(folder)):
            paths.append(os.path.join(folder, f))
            y.append(index)
    return paths, np.array(y, np.int64)
