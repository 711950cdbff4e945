"""Every default in one place, with its checks: argparse reads its defaults from these
dataclasses, and `check()` gives Python callers and the CLI the same one-line errors."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Optional

from trxsfr.base.errors import InputError

# How the library reports progress: on_progress(stage, done, total) after each step of
# work, `done` new units (images, steps) out of `total`; the CLI draws the bars.
ProgressFn = Callable[[str, int, int], None]

DEFAULT_MODULE = "mobilenet_v2_100_224"
# Images per forward pass of extraction and `label`; two such passes run at once
# (imaging.FORWARD_STREAMS). 2 x 16 ran as fast as 2 x 32 on 2 cores, and peaks
# lower in memory than 1 x 32 (1,080 vs 1,140 MiB extracting MobileNet-V2 bottlenecks).
FORWARD_BATCH_SIZE = 16
# Largest image (width x height, from its header) any command decodes: a 1 MB PNG can
# declare 400 megapixels (1.2 GB decoded). 40 MP holds every camera's photos.
MAX_IMAGE_PIXELS = 40_000_000


# RetrainConfig fields that take comma-separated values (a sweep).
SWEEPABLE = ("learning_rate", "l2", "label_smoothing")
# How the new layer is fitted: "auto" chooses its L2 strength by cross-validation and fits
# it to convergence; "off" runs the step-based optimiser with the settings as given.
TUNE_MODES = ("auto", "off")
# Settings of the step-based optimiser: a value other than its default (or a sweep) means
# the user chose how the layer is trained, so `tune="auto"` does not search.
OPTIMISER_SETTINGS = ("l2", "learning_rate", "how_many_training_steps", "optimizer",
                      "train_batch_size", "dropout", "early_stopping_patience",
                      "eval_step_interval")


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Settings of one `retrain` run; field names follow TF's retrain.py flags."""

    image_dir: str = ""
    tfhub_module: str = DEFAULT_MODULE
    image_size: Optional[int] = None
    bottleneck_dir: str = "trxsfr_cache/bottlenecks"
    bottleneck_batch_size: int = FORWARD_BATCH_SIZE
    # "auto": choose l2 by k-fold cross-validation on the cached vectors (see `tunes`).
    tune: str = "auto"
    tune_folds: int = 5
    how_many_training_steps: int = 4000
    learning_rate: float = 0.01
    optimizer: str = "adam"
    label_smoothing: float = 0.0
    l2: float = 0.0
    dropout: float = 0.0
    class_weight: str = "none"
    early_stopping_patience: int = 0
    # Sweep: ((name in SWEEPABLE, (value, ...)), ...); one head per combination.
    sweep: tuple = ()
    train_batch_size: int = 100
    # Distortions (TF retrain.py's flags), cached as `augment_copies` views per training image.
    flip_left_right: bool = False
    random_crop: float = 0.0
    random_scale: float = 0.0
    random_brightness: float = 0.0
    augment_copies: int = 4
    # Fine-tuning of the extractor after the new layer is trained; 0 steps: off.
    fine_tune_steps: int = 0
    fine_tune_learning_rate: float = 1e-4
    fine_tune_batch_size: int = 16
    validation_percentage: float = 10.0
    testing_percentage: float = 10.0
    eval_step_interval: Optional[int] = None  # None: derived from the step count
    summaries_dir: str = "trxsfr_runs"
    saved_model_dir: str = "trxsfr_model"
    output_labels: Optional[str] = None
    print_misclassified_test_images: bool = False
    seed: int = 0
    max_image_pixels: int = MAX_IMAGE_PIXELS

    def swept(self, name: str) -> tuple:
        """The values a setting takes in this run: the sweep's, or the single one."""
        return dict(self.sweep).get(name, (getattr(self, name),))

    @property
    def tunes(self) -> bool:
        """Whether this run chooses l2 by cross-validation: `tune` is "auto", nothing is
        swept, and every setting of the step-based optimiser holds its default."""
        return (self.tune == "auto" and not self.sweep
                and all(getattr(self, name) == getattr(RetrainConfig, name)
                        for name in OPTIMISER_SETTINGS))

    def recorded(self) -> dict:
        """The settings as the exported model records them (the sweep apart)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "sweep"}

    @property
    def distorts(self) -> bool:
        return bool(self.flip_left_right or self.random_crop or self.random_scale
                    or self.random_brightness)

    def check(self) -> None:
        """Raise InputError for a setting no run can use (each value of a sweep included),
        before any file is read; the message names the flag."""
        for name in ("learning_rate", "l2", "label_smoothing", "dropout",
                     "fine_tune_learning_rate"):
            for v in self.swept(name):  # NaN passes every comparison below; inf trains NaN
                if not math.isfinite(v):
                    raise InputError(f"--{name} must be a finite number, got {v}")
        for name in ("how_many_training_steps", "train_batch_size", "bottleneck_batch_size",
                     "learning_rate"):
            for v in self.swept(name):
                if name == "train_batch_size" and v == -1:
                    continue  # the whole training split, as in retrain.py
                if v <= 0:
                    raise InputError(f"--{name} must be positive, got {v}")
        for name in ("label_smoothing", "dropout"):
            for v in self.swept(name):
                if not 0 <= v < 1:
                    raise InputError(f"--{name} must be in [0, 1), got {v}")
        for name in ("l2", "early_stopping_patience", "seed"):
            for v in self.swept(name):
                if v < 0:
                    raise InputError(f"--{name} must be >= 0, got {v}")
        if self.max_image_pixels <= 0:
            raise InputError(f"--max_image_pixels must be positive, got {self.max_image_pixels}")
        if self.tune not in TUNE_MODES:
            raise InputError(f"--tune must be one of {', '.join(TUNE_MODES)}, got {self.tune!r}")
        if isinstance(self.tune_folds, bool) or not isinstance(self.tune_folds, int) \
                or self.tune_folds < 2:
            raise InputError(f"--tune_folds must be an integer of at least 2, "
                             f"got {self.tune_folds}")
        for name in ("eval_step_interval", "image_size"):  # None: derived
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise InputError(f"--{name} must be positive, got {v}")
        for name in ("random_crop", "random_scale", "random_brightness"):
            value = getattr(self, name)
            if not 0 <= value < 100:
                raise InputError(f"--{name} is a percentage in [0, 100), got {value}")
        if self.distorts and self.augment_copies < 1:
            raise InputError(f"--augment_copies must be at least 1, got {self.augment_copies}")
        if self.fine_tune_steps < 0:
            raise InputError(f"--fine_tune_steps must be >= 0, got {self.fine_tune_steps}")
        if self.fine_tune_steps and (self.fine_tune_learning_rate <= 0
                                     or self.fine_tune_batch_size <= 0):
            raise InputError("--fine_tune_learning_rate and --fine_tune_batch_size must be "
                             "positive")


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Settings of one `label` run; names follow TF's label_image.py where they exist."""

    model: str = "trxsfr_model"
    inputs: tuple = ()
    top_k: int = 5
    batch_size: int = FORWARD_BATCH_SIZE
    min_accuracy: Optional[float] = None
    max_image_pixels: int = MAX_IMAGE_PIXELS

    def check(self) -> None:
        if self.max_image_pixels <= 0:
            raise InputError(f"--max_image_pixels must be positive, got {self.max_image_pixels}")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise InputError(f"--min_accuracy is a fraction in [0, 1], got {self.min_accuracy}")
        if self.top_k <= 0 or self.batch_size <= 0:
            raise InputError("--top_k and --batch_size must be positive")
        if not self.inputs:
            raise InputError("nothing to label: pass image files or folders (or --image FILE)")


def default_eval_interval(steps: int) -> int:
    """Evaluate about 100 times per run, at least every step for tiny runs."""
    return max(1, steps // 100)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Settings of one `serve` run; names follow tensorflow_model_server's flags where it has them."""

    model_base_path: str = ""
    model_name: str = "default"
    host: str = "127.0.0.1"
    port: int = 8501  # TF Serving's REST port; 0 picks a free one
    max_batch_size: int = 32
    batch_timeout_micros: int = 10_000
    max_body_bytes: int = 32 * 1024 * 1024
    max_images_per_request: int = 64
    max_image_pixels: int = MAX_IMAGE_PIXELS
    poll_seconds: float = 1.0  # flag: --file_system_poll_wait_seconds
    parse_threads: int = 2
    num_batch_threads: int = 2
    version_labels: tuple[tuple[str, int], ...] = ()  # ((label, version), ...)
    access_log: bool = True

    def check(self) -> None:
        """Raises InputError, naming the flag, for settings that cannot work."""
        positive = ("max_batch_size", "max_body_bytes", "max_images_per_request",
                    "max_image_pixels", "parse_threads", "num_batch_threads")
        for name in positive:
            if getattr(self, name) <= 0:
                raise InputError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise InputError("--batch_timeout_micros must be 0 or more")
        if not 0 < self.poll_seconds <= 86_400:  # NaN fails too; threading's wait overflows on inf
            raise InputError(f"--file_system_poll_wait_seconds must be in (0, 86400], "
                             f"got {self.poll_seconds}")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port {self.port} is not a TCP port")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.model_name):
            raise InputError(f"--model_name {self.model_name!r}: use letters, digits, '_', '-' "
                             f"and '.'")
        for item in self.version_labels:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], int) and item[1] >= 0):
                raise InputError(f"version_labels holds {item!r}; expected (label, version) "
                                 f"pairs such as ('stable', 1763900000)")
            # A label is one segment of the URL /v1/models/NAME/labels/LABEL.
            if not re.fullmatch(r"[^/:]+", item[0]):
                raise InputError(f"--version_label {item[0]}={item[1]}: a label cannot be empty "
                                 f"or hold '/' or ':'")
