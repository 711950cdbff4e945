"""Every default in one place: argparse reads its defaults from these dataclasses."""

from __future__ import annotations

import dataclasses
from typing import Optional

from trxsfr.base.contract import GRAPH_OUTPUT

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
    progress: bool = True

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


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """Settings of one `label` run; names follow TF's label_image.py where they exist."""

    model: str = "trxsfr_model"
    inputs: tuple = ()
    top_k: int = 5
    batch_size: int = FORWARD_BATCH_SIZE
    min_accuracy: Optional[float] = None
    progress: bool = True


def default_eval_interval(steps: int) -> int:
    """Evaluate about 100 times per run, at least every step for tiny runs."""
    return max(1, steps // 100)
