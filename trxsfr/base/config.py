"""Every default in one place, with its checks: argparse reads its defaults from these
dataclasses, and `check()` gives Python callers and the CLI the same one-line errors."""

from __future__ import annotations

import dataclasses
import math
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


# RetrainConfig fields that take comma-separated values (a sweep).
SWEEPABLE = ("learning_rate", "l2", "label_smoothing")


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Settings of one `retrain` run; field names follow TF's retrain.py flags."""

    image_dir: str = ""
    tfhub_module: str = DEFAULT_MODULE
    image_size: Optional[int] = None
    bottleneck_dir: str = "trxsfr_cache/bottlenecks"
    bottleneck_batch_size: int = FORWARD_BATCH_SIZE
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

    def swept(self, name: str) -> tuple:
        """The values a setting takes in this run: the sweep's, or the single one."""
        return dict(self.sweep).get(name, (getattr(self, name),))

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

    def check(self) -> None:
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise InputError(f"--min_accuracy is a fraction in [0, 1], got {self.min_accuracy}")
        if self.top_k <= 0 or self.batch_size <= 0:
            raise InputError("--top_k and --batch_size must be positive")
        if not self.inputs:
            raise InputError("nothing to label: pass image files or folders (or --image FILE)")


def default_eval_interval(steps: int) -> int:
    """Evaluate about 100 times per run, at least every step for tiny runs."""
    return max(1, steps // 100)
