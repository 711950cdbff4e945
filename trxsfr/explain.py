"""Integrated gradients: which pixels drove an exported model's score for a class.

Attributions run through the whole model, the frozen feature extractor and the
new layer, from the input pixels (float32 [H, W, 3] in [0, 1], exactly what
`imaging.decode_and_resize` feeds the model) to the chosen class's score F: by
default its logit (the new layer's output before the softmax), optionally its
softmax probability (what `label` prints). The logit is the default because the
probability saturates: when the baseline already gets the class with
probability near 1 (a blurred red square is still red), F(x) - F(x') is ~0 and
the attributions say nothing, while the logit difference stays informative.
For an image x, a baseline x' and F:

    IG_i(x) = (x_i - x'_i) * integral over a in [0, 1] of dF(x' + a (x - x')) / dx_i

and the completeness axiom says sum_i IG_i(x) = F(x) - F(x'). The integral is
computed at `steps` Gauss-Legendre nodes on [0, 1]: far more exact than a
Riemann sum with as many points, and no node sits on an endpoint, where ReLU
networks have a kink at a black image. All nodes (plus x and x' themselves,
for the completeness check) go through the model in batches of `batch_size`,
so the default 50 steps cost one forward and backward pass over one batch.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import time
from typing import Optional, Sequence

import numpy as np

from trxsfr.base import contract, files
from trxsfr.base.errors import InputError, ModelError

DEFAULT_STEPS = 50
DEFAULT_BASELINE = "black"
BASELINES = ("black", "blur")
DEFAULT_BATCH_SIZE = 64  # 50 nodes + image + baseline fit in one batch
TARGETS = ("logit", "probability")
DEFAULT_TARGET = "logit"
MIN_DELTA = 1e-3  # |F(x) - F(x')| below which completeness is not judged
COMPLETENESS_TOLERANCE = 0.05  # relative; above it the CLI suggests more steps
BLUR_SIGMA_FRACTION = 1 / 8  # Gaussian sigma of the blur baseline, as a share of the image side


@dataclasses.dataclass
class Explanation:
    """Integrated gradients for one image and one class."""

    path: str
    label: str  # the class explained
    class_index: int
    predicted: str  # the model's top class for the image
    predicted_score: float  # its probability
    probability: float  # probability of `label` for the image
    target: str  # what F is: "logit" or "probability" of `label`
    score: float  # F(x) for the image
    baseline_score: float  # F(x') for the baseline image
    attributions: np.ndarray  # float32 [H, W, 3]; sums to about score - baseline_score
    image: np.ndarray  # float32 [H, W, 3] in [0, 1], as the model saw it
    baseline: str
    steps: int
    batches: int  # forward+backward passes the steps took
    seconds: float
    png: str = ""  # the picture written for it

    @property
    def total(self) -> float:
        return float(self.attributions.astype(np.float64).sum())

    @property
    def delta(self) -> float:
        return self.score - self.baseline_score

    @property
    def completeness_error(self) -> Optional[float]:
        """|sum of attributions - (F(x) - F(x'))| / |F(x) - F(x')|; None if F did not move.

        Below MIN_DELTA the ratio measures float32 rounding, not the integral.
        """
        if abs(self.delta) < MIN_DELTA:
            return None
        return abs(self.total - self.delta) / abs(self.delta)

    def pixel_map(self) -> np.ndarray:
        """float32 [H, W]: absolute attributions summed over the colour channels."""
        return np.abs(self.attributions).sum(axis=-1)


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in (0, 1) and weights summing to 1: float32 [steps] each."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return ((nodes + 1) / 2).astype(np.float32), (weights / 2).astype(np.float32)


def blur(image, sigma: float):
    """Separable Gaussian blur of float32 [N, H, W, 3] (edges mirrored); same shape."""
    import tensorflow as tf

    height, width = int(image.shape[1]), int(image.shape[2])
    # A mirror pad must be narrower than the image; a wider kernel adds nothing anyway.
    radius = int(min(np.ceil(3 * sigma), height - 1, width - 1))
    if radius < 1:
        return tf.identity(image)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    column = tf.constant(np.tile(taps[:, None, None, None], (1, 1, 3, 1)))
    row = tf.constant(np.tile(taps[None, :, None, None], (1, 1, 3, 1)))
    x = tf.pad(image, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    x = tf.nn.depthwise_conv2d(x, column, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(x, row, [1, 1, 1, 1], "VALID")


def make_baseline(image: np.ndarray, kind: str) -> np.ndarray:
    """float32 [H, W, 3]: all black, or the image under a strong Gaussian blur."""
    if kind == "black":
        return np.zeros_like(image)
    if kind == "blur":
        sigma = max(1.0, BLUR_SIGMA_FRACTION * min(image.shape[:2]))
        return blur(image[None], sigma).numpy()[0]
    raise InputError(f"--baseline must be one of {', '.join(BASELINES)}, got {kind!r}")


class Attributor:
    """Scores and input gradients of one loaded trxsfr model, traced once."""

    def __init__(self, model, image_size: tuple[int, int], target: str = DEFAULT_TARGET):
        """
        Args:
            model: what `tf.saved_model.load` returns for a trxsfr export; it has
                `extractor` (images float32 [N, H, W, 3] in [0, 1] -> float32 [N, D]),
                `weights` float32 [D, C] and `bias` float32 [C].
            image_size: (H, W) the extractor takes.
            target: F is the class's "logit" or its softmax "probability".

        Raises:
            ModelError: the model lacks those parts.
        """
        import tensorflow as tf

        missing = [a for a in ("extractor", "weights", "bias") if not hasattr(model, a)]
        if missing:
            raise ModelError(f"the model has no {', '.join(missing)}: it was not exported by "
                             f"trxsfr retrain, so its pixels cannot be traced to a class")
        if target not in TARGETS:
            raise InputError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
        height, width = image_size
        use_logit = target == "logit"

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32),
                                      tf.TensorSpec([], tf.int32)])
        def score_and_gradients(images, class_index):
            with tf.GradientTape() as tape:
                tape.watch(images)
                features = getattr(model, contract.ATTR_EXTRACTOR)(images)
                logits = (tf.matmul(features, getattr(model, contract.ATTR_WEIGHTS))
                          + getattr(model, contract.ATTR_BIAS))
                scores = logits if use_logit else tf.nn.softmax(logits)
                score = tf.gather(scores, class_index, axis=1)
            gradients = tape.gradient(score, images)
            if gradients is None:
                raise ModelError("the feature extractor passes no gradient back to its input "
                                 "pixels, so attributions cannot be computed")
            return score, gradients

        self._score_and_gradients = score_and_gradients

    def integrated_gradients(self, image: np.ndarray, baseline: np.ndarray, class_index: int,
                             steps: int = DEFAULT_STEPS,
                             batch_size: int = DEFAULT_BATCH_SIZE) -> dict:
        """Integrated gradients of one class's score F (logit or probability, see __init__).

        Args:
            image, baseline: float32 [H, W, 3] in [0, 1].
            class_index: the class whose probability F is explained.
            steps: Gauss-Legendre nodes on the straight path baseline -> image.
            batch_size: images per forward+backward pass.

        Returns:
            {"attributions": float32 [H, W, 3], "score": F(image),
             "baseline_score": F(baseline), "batches": passes run}.
        """
        nodes, weights = gauss_legendre(steps)
        path = baseline[None] + nodes[:, None, None, None] * (image - baseline)[None]
        # The endpoints ride in the same batches: F(x) and F(x') for the completeness check.
        batch = np.concatenate([path, image[None], baseline[None]]).astype(np.float32)
        grads, scores = [], []
        for start in range(0, len(batch), batch_size):
            f, g = self._score_and_gradients(batch[start:start + batch_size], class_index)
            scores.append(f.numpy())
            grads.append(g.numpy())
        scores = np.concatenate(scores)
        grads = np.concatenate(grads)[:steps]
        average = np.tensordot(weights, grads, axes=1)  # float32 [H, W, 3]
        return {"attributions": ((image - baseline) * average).astype(np.float32),
                "score": float(scores[steps]), "baseline_score": float(scores[steps + 1]),
                "batches": -(-len(batch) // batch_size)}


def load_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """One file through the model's own preprocessing: float32 [H, W, 3] in [0, 1].

    Raises:
        InputError: missing, a folder, or not an image TensorFlow decodes.
    """
    import tensorflow as tf

    from trxsfr.base import imaging

    if not os.path.exists(path):
        raise InputError(f"image {path} does not exist")
    if not os.path.isfile(path):
        raise InputError(f"{path} is not a file; pass image files to explain")
    try:
        return imaging.decode_and_resize(tf.io.read_file(path), size).numpy()
    except (tf.errors.OpError, ValueError) as e:
        raise InputError(f"cannot explain {path}: {imaging.decode_error(path, size)}") from e


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"


def _write_new(directory: str, stem: str, data: bytes) -> str:
    """Write `data` to `directory/stem.png`, or stem-2.png, ... : never over an existing file."""
    for n in range(1, 10_000):
        path = os.path.join(directory, f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
        try:
            files.write_new(path, data)  # whole or not at all
            return path
        except FileExistsError:
            continue
    raise InputError(f"{directory} already holds 10,000 pictures named {stem}*.png; "
                     f"pick a new --out folder")


def picture(ex: Explanation) -> bytes:
    """PNG bytes: image | attribution heat map | overlay, titled with class and score."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heat = ex.pixel_map()
    # The 99th percentile, not the max, sets full scale: one hot pixel must not hide the rest.
    top = float(np.percentile(heat, 99)) or float(heat.max()) or 1.0
    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_image, ax_heat, ax_overlay = fig.subplots(1, 3)
    ax_image.imshow(ex.image, interpolation="nearest")
    ax_image.set_title("image (as the model sees it)")
    shown = ax_heat.imshow(heat, cmap="inferno", vmin=0, vmax=top, interpolation="nearest")
    ax_heat.set_title("|attribution|, summed over RGB")
    fig.colorbar(shown, ax=ax_heat, shrink=0.8)
    ax_overlay.imshow(ex.image.mean(axis=-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax_overlay.imshow(np.clip(heat / top, 0, 1), cmap="inferno", alpha=0.6, interpolation="nearest")
    ax_overlay.set_title("overlay")
    for ax in (ax_image, ax_heat, ax_overlay):
        ax.set_xticks([])
        ax.set_yticks([])
    title = f"{ex.label}  (score {ex.probability:.4f})"
    if ex.predicted != ex.label:
        title += f"; predicted {ex.predicted} ({ex.predicted_score:.4f})"
    error = ex.completeness_error
    fig.suptitle(f"{title}\n{os.path.basename(ex.path)}: integrated gradients of the {ex.target}, "
                 f"{ex.steps} steps, {ex.baseline} baseline; completeness error "
                 f"{'n/a' if error is None else f'{100 * error:.2f}%'}", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def run(model: str, paths: Sequence[str], out_dir: str, label: Optional[str] = None,
        steps: int = DEFAULT_STEPS, baseline: str = DEFAULT_BASELINE,
        batch_size: int = DEFAULT_BATCH_SIZE, target: str = DEFAULT_TARGET) -> list[Explanation]:
    """Explain each image's score for `label` (default: its predicted class); one PNG each.

    Every input is checked before any attribution is computed, so a bad one
    costs nothing. Pictures go into `out_dir` (created if needed) under new
    names; nothing there is replaced.

    Raises:
        InputError: bad steps/batch size/baseline/target, unknown label, unreadable image,
            or `out_dir` is a file.
        ModelError: `model` is not a trxsfr model.
    """
    from trxsfr.use import models

    if steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    if batch_size < 1:
        raise InputError(f"--batch_size must be at least 1, got {batch_size}")
    if baseline not in BASELINES:
        raise InputError(f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    if target not in TARGETS:
        raise InputError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if not paths:
        raise InputError("nothing to explain: pass one or more image files")
    files.check_folder(out_dir, "--out")
    clf = models.load(model)
    if label is not None and label not in clf.labels:
        raise InputError(f"--class {label!r} is not one of the model's labels "
                         f"({', '.join(clf.labels)})")
    images = [load_image(p, clf.image_size) for p in paths]
    # Classifier keeps the loaded SavedModel; the attributions need its parts, not a signature.
    # (A .tflite model has no such parts: Attributor says so.)
    attributor = Attributor(getattr(clf, "saved_model", None), clf.image_size, target)
    files.make_folder(out_dir, "--out")
    results = []
    for path, image in zip(paths, images):
        start = time.perf_counter()
        probs = clf.predict_images(image[None])[0]
        predicted = int(probs.argmax())
        index = clf.labels.index(label) if label is not None else predicted
        base = make_baseline(image, baseline)
        ig = attributor.integrated_gradients(image, base, index, steps, batch_size)
        ex = Explanation(
            path=path, label=clf.labels[index], class_index=index,
            predicted=clf.labels[predicted], predicted_score=float(probs[predicted]),
            probability=float(probs[index]), target=target, score=ig["score"], baseline_score=ig["baseline_score"],
            attributions=ig["attributions"], image=image, baseline=baseline, steps=steps,
            batches=ig["batches"], seconds=time.perf_counter() - start)
        stem = f"{_safe(os.path.splitext(os.path.basename(path))[0])}.{_safe(ex.label)}.ig"
        ex.png = _write_new(out_dir, stem, picture(ex))
        results.append(ex)
    return results
