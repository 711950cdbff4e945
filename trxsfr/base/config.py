"""Every default in one place, with its checks: argparse reads its defaults from these
dataclasses, and `check()` gives Python callers and the CLI the same one-line errors."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Optional, Union

from trxsfr.base.errors import InputError

# How the library reports progress: on_progress(stage, done, total) after each step of
# work, `done` new units (images, steps) out of `total`; the CLI draws the bars.
ProgressFn = Callable[[str, int, int], None]

from trxsfr.base.contract import GRAPH_OUTPUT

DEFAULT_MODULE = "mobilenet_v2_100_224"
# Images per forward pass of extraction and `label`; two such passes run at once
# (imaging.FORWARD_STREAMS). 2 x 16 ran as fast as 2 x 32 on 2 cores, and peaks
# lower in memory than 1 x 32 (1,080 vs 1,140 MiB extracting MobileNet-V2 bottlenecks).
FORWARD_BATCH_SIZE = 16
# Largest image (width x height, from its header) any command decodes: a 1 MB PNG can
# declare 400 megapixels (1.2 GB decoded). 40 MP holds every camera's photos.
MAX_IMAGE_PIXELS = 40_000_000


# Runtimes of a forward pass (--runtime): "auto" runs LiteRT where its outputs match
# TensorFlow's and TensorFlow elsewhere; "tf" and "litert" insist (base/litert.py).
RUNTIMES = ("auto", "tf", "litert")


def check_runtime(runtime: str) -> None:
    """Raise InputError (naming --runtime) unless `runtime` is one of RUNTIMES."""
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


# RetrainConfig fields that take comma-separated values (a sweep).
SWEEPABLE = ("learning_rate", "l2", "label_smoothing")
# How the new layer is fitted: "auto" chooses its L2 strength by cross-validation and fits
# it to convergence; "off" runs the step-based optimiser with the settings as given.
TUNE_MODES = ("auto", "off")
# Settings of the step-based optimiser: a value other than its default (or a sweep) means
# the user chose how the layer is trained, so `tune="auto"` does not search.
OPTIMISER_SETTINGS = ("l2", "learning_rate", "how_many_training_steps", "optimizer",
                      "train_batch_size", "dropout", "early_stopping_patience",
                      "eval_step_interval", "intermediate_store_frequency")


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
    # "Unknown" answers: None (off: the model always names a class), a top-score threshold
    # in [0, 1], or "auto" (chosen on the validation split for `unknown_precision`).
    unknown_threshold: Optional[Union[float, str]] = None
    unknown_precision: float = 0.95
    # What computes bottleneck vectors: "auto" (LiteRT where it matches TensorFlow, else
    # TensorFlow), "tf" or "litert" (base/litert.py).
    runtime: str = "auto"

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
        check_runtime(self.runtime)
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
        check_unknown_threshold(self.unknown_threshold, self.unknown_precision)
        if self.fine_tune_steps and (self.fine_tune_learning_rate <= 0
                                     or self.fine_tune_batch_size <= 0):
            raise InputError("--fine_tune_learning_rate and --fine_tune_batch_size must be "
                             "positive")

    # ---- Compatibility with TF's retrain.py and the codelab (flags: trxsfr/cli/codelab.py;
    # the graphs: trxsfr/train/freeze.py). Unset, a run writes what it wrote before.
    # Also write a frozen GraphDef of the whole classifier to this .pb file.
    output_graph: Optional[str] = None
    # Every this many training steps, write intermediate_<step>.pb there; 0: never.
    intermediate_store_frequency: int = 0
    intermediate_output_graphs_dir: str = "trxsfr_intermediate_graphs"
    # Name of the frozen graph's softmax output.
    final_tensor_name: str = GRAPH_OUTPUT
    # TF-Hub's download cache for this run (the codelab's --model_dir); None: TF-Hub's own.
    tfhub_cache_dir: Optional[str] = None


UNKNOWN_AUTO = "auto"


def check_unknown_threshold(threshold, precision: float) -> None:
    """Raise InputError unless `threshold` is None, "auto" or a fraction in [0, 1]."""
    if isinstance(threshold, str) and threshold != UNKNOWN_AUTO:
        raise InputError(f"--unknown_threshold must be '{UNKNOWN_AUTO}' or a top score in "
                         f"[0, 1], got {threshold!r}")
    if isinstance(threshold, (int, float)) and not 0 <= threshold <= 1:  # NaN fails too
        raise InputError(f"--unknown_threshold is a top score in [0, 1], got {threshold}")
    if not 0 < precision <= 1:
        raise InputError(f"--unknown_precision is a fraction in (0, 1], got {precision}")


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Settings of one `label` run; names follow TF's label_image.py where they exist."""

    model: str = "trxsfr_model"
    inputs: tuple = ()
    top_k: int = 5
    batch_size: int = FORWARD_BATCH_SIZE
    min_accuracy: Optional[float] = None
    max_image_pixels: int = MAX_IMAGE_PIXELS
    runtime: str = "auto"  # of a SavedModel's forward pass; see RUNTIMES

    def check(self) -> None:
        check_runtime(self.runtime)
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
    # TF Serving's gRPC API on this port (TF Serving's is 8500; 0 picks a free one), on the
    # same host; None: no gRPC. Off by default, so two servers never fight over one port.
    grpc_port: Optional[int] = None
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
    # What one connection may hold: a request header larger than this gets a 431 as soon
    # as it arrives; a header or body not received in time gets a 408 and is cut off.
    # 60 s for a body of max_body_bytes (32 MiB) asks 0.6 MB/s, a LAN's or an uplink's.
    max_header_bytes: int = 64 * 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    runtime: str = "auto"  # of each version's forward pass; see RUNTIMES

    def check(self) -> None:
        """Raises InputError, naming the flag, for settings that cannot work."""
        check_runtime(self.runtime)
        positive = ("max_batch_size", "max_body_bytes", "max_images_per_request",
                    "max_image_pixels", "parse_threads", "num_batch_threads", "max_header_bytes")
        for name in positive:
            if getattr(self, name) <= 0:
                raise InputError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("header_timeout_seconds", "body_timeout_seconds"):
            value = getattr(self, name)  # NaN fails too; inf would be no limit at all
            if not 0 < value <= 86_400:
                raise InputError(f"--{name} must be in (0, 86400] seconds, got {value}")
        if self.batch_timeout_micros < 0:
            raise InputError("--batch_timeout_micros must be 0 or more")
        if not 0 < self.poll_seconds <= 86_400:  # NaN fails too; threading's wait overflows on inf
            raise InputError(f"--file_system_poll_wait_seconds must be in (0, 86400], "
                             f"got {self.poll_seconds}")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port {self.port} is not a TCP port")
        if self.grpc_port is not None:
            if not (isinstance(self.grpc_port, int) and 0 <= self.grpc_port <= 65535):
                raise InputError(f"--grpc_port {self.grpc_port} is not a TCP port")
            if self.grpc_port and self.grpc_port == self.port:
                raise InputError(f"--grpc_port {self.grpc_port} is also --port: give gRPC "
                                 f"a port of its own (TF Serving's are 8500 and 8501)")
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


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Settings of one `extract` run: bottleneck vectors computed by an Apache Beam pipeline
    into the store that `retrain --bottleneck_dir` reads (flag names are retrain's)."""

    image_dir: str = ""  # a folder, or a Beam filesystem URI (gs://bucket/photos)
    tfhub_module: str = DEFAULT_MODULE
    image_size: Optional[int] = None
    bottleneck_dir: str = RetrainConfig.bottleneck_dir  # a local or mounted folder
    batch_size: int = FORWARD_BATCH_SIZE  # most images per forward pass
    max_image_pixels: int = MAX_IMAGE_PIXELS
    # Decided as retrain decides it, so that a default retrain reuses every vector.
    runtime: str = RetrainConfig.runtime

    def check(self) -> None:
        """Raises InputError, naming the flag, for settings that cannot work."""
        if not self.image_dir:
            raise InputError("--image_dir is required")
        check_runtime(self.runtime)
        if "://" in self.bottleneck_dir:
            raise InputError(f"--bottleneck_dir {self.bottleneck_dir}: the bottleneck store is a "
                             f"local or mounted folder (every worker appends to it), not a URI")
        if self.batch_size <= 0 or self.max_image_pixels <= 0:
            raise InputError("--batch_size and --max_image_pixels must be positive")


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """Settings of one `audit` run. Data and module flags are retrain's, so the audit reads
    the same bottleneck cache and sees the same train/validation/test splits."""

    image_dir: str = ""
    tfhub_module: str = DEFAULT_MODULE
    image_size: Optional[int] = None
    bottleneck_dir: str = RetrainConfig.bottleneck_dir
    bottleneck_batch_size: int = FORWARD_BATCH_SIZE
    validation_percentage: float = RetrainConfig.validation_percentage
    testing_percentage: float = RetrainConfig.testing_percentage
    max_image_pixels: int = MAX_IMAGE_PIXELS
    runtime: str = RetrainConfig.runtime  # as retrain's, so a warm audit computes nothing
    # Out-of-fold probabilities: a head per fold, trained as retrain trains one, with an L2
    # penalty (retrain's default is none): a head that fits every training image, the
    # mislabelled ones too, gives overconfident out-of-fold probabilities. On the tiny
    # fixture set with 10 relabelled images, 4000 steps without it reached 79% out-of-fold
    # accuracy and put 8 of them among the 20 lowest label qualities; with 0.01, 89% and
    # all 10, and 1000 steps did as well (0.2 s a fold at 1280-d instead of 0.9 s).
    folds: int = 5
    how_many_training_steps: int = 1000
    learning_rate: float = RetrainConfig.learning_rate
    l2: float = 0.01
    seed: int = RetrainConfig.seed
    # Near duplicates: bottleneck vectors (centred, unit length) at least this cosine-similar
    # are candidates, confirmed when their 16x16 colour thumbnails are at least
    # `near_duplicate_pixel_similarity` alike; train/audit.py says how both were chosen.
    near_duplicate_similarity: float = 0.7
    near_duplicate_pixel_similarity: float = 0.95
    outlier_neighbours: int = 10  # k of the k-nearest-neighbour outlier score
    outliers: int = 20  # how many of the most isolated images are listed
    max_pairs: int = 10_000  # duplicate pairs kept at most (the most similar)

    def check(self) -> None:
        """Raise InputError, naming the flag, for settings no audit can use."""
        check_runtime(self.runtime)
        if self.folds < 2:
            raise InputError(f"--folds must be at least 2, got {self.folds}")
        if not self.l2 >= 0 or not math.isfinite(self.l2):
            raise InputError(f"--l2 must be a finite number >= 0, got {self.l2}")
        for name in ("how_many_training_steps", "learning_rate", "bottleneck_batch_size",
                     "max_image_pixels", "outlier_neighbours", "max_pairs"):
            value = getattr(self, name)
            if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
                raise InputError(f"--{name} must be positive, got {value}")
        for name in ("near_duplicate_similarity", "near_duplicate_pixel_similarity"):
            if not 0 < getattr(self, name) <= 1:  # NaN fails too
                raise InputError(f"--{name} is a cosine similarity in (0, 1], "
                                 f"got {getattr(self, name)}")
        if self.outliers < 0 or self.seed < 0:
            raise InputError("--outliers and --seed must be 0 or more")
        if self.image_size is not None and self.image_size <= 0:
            raise InputError(f"--image_size must be positive, got {self.image_size}")
