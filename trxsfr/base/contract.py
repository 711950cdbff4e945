"""What an exported trxsfr model is: the one place that names its parts.

Training writes a model through these names and `ModelInfo`; `label`, `serve`,
`export-tflite`, `info`, `report`, `explain`, the tests and the benchmarks read
it through them. A SavedModel version directory holds:

- signatures `serving_default` (`image_bytes`: encoded images, string [N]) and
  `predict_images` (`images`: float32 [N, H, W, 3] in [0, 1]), both returning
  `probabilities` float32 [N, C], `classes` string [N, C] (labels ranked),
  `class_ids` int64 [N, C] and `scores` float32 [N, C] (and `unknown` bool [N]
  when the model has an "unknown" threshold);
- signature `classify` (method `tensorflow/serving/classify`, TF Serving's Classify
  API): `inputs`, serialized `tf.Example` string [N], each holding one encoded image
  under the feature `image/encoded`, returning `classes` and `scores` (as above);
  models exported before it existed lack it;
- module attributes `extractor` (the feature-extractor SavedModel), `weights`
  float32 [D, C] and `bias` float32 [C] (what `explain` differentiates);
- `assets/labels.txt` (one label per line, in class-id order) and
  `assets/trxsfr.json` (`ModelInfo`).

Versions live as `<base>/<integer>/` (TF Serving's layout). A `.tflite` from
`export-tflite` carries its labels and info beside it: `m.labels.txt`, `m.trxsfr.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence

from trxsfr.base.errors import ModelError, first_line

SIGNATURE_BYTES = "serving_default"
SIGNATURE_IMAGES = "predict_images"
INPUT_BYTES = "image_bytes"
INPUT_IMAGES = "images"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CLASSES = "classes"
OUTPUT_CLASS_IDS = "class_ids"
OUTPUT_SCORES = "scores"
OUTPUTS = (OUTPUT_PROBABILITIES, OUTPUT_CLASSES, OUTPUT_CLASS_IDS, OUTPUT_SCORES)
# Only in models retrained with --unknown_threshold: bool [N], true when the top score is
# below the model's threshold (`ModelInfo.unknown_threshold`, also the module attribute
# ATTR_UNKNOWN_THRESHOLD). A model without one has neither and never answers "unknown".
OUTPUT_UNKNOWN = "unknown"

# The classification signature, as TF Serving's Classify API requires one: a single
# input keyed "inputs" (serialized tf.Example), outputs "classes" and/or "scores"
# [N, K], and (checked when tensorflow_model_server runs with
# --enable_signature_method_name_check) the classify method name.
SIGNATURE_CLASSIFY = "classify"
INPUT_EXAMPLES = "inputs"
# The feature holding the encoded image in each tf.Example: the key of TF's image
# conventions (TFRecord datasets, the Object Detection API).
FEATURE_IMAGE = "image/encoded"
CLASSIFY_OUTPUTS = (OUTPUT_CLASSES, OUTPUT_SCORES)
METHOD_CLASSIFY = "tensorflow/serving/classify"

# Attributes of the saved tf.Module.
ATTR_EXTRACTOR = "extractor"
ATTR_WEIGHTS = "weights"
ATTR_BIAS = "bias"
ATTR_UNKNOWN_THRESHOLD = "unknown_threshold"

ASSETS_DIR = "assets"
LABELS_FILE = "labels.txt"
METADATA_FILE = "trxsfr.json"
SAVED_MODEL_FILE = "saved_model.pb"
FORMAT = "trxsfr-model-1"

TFLITE_SUFFIX = ".tflite"


# ---------------------------------------------------------------- labels

def labels_text(labels: Sequence[str]) -> str:
    """The labels file format: one label per line, in class-id order."""
    return "".join(f"{label}\n" for label in labels)


def read_labels(path: str) -> list[str]:
    """One label per non-empty line (a model's labels.txt)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def labels_path(version_dir: str) -> str:
    return os.path.join(version_dir, ASSETS_DIR, LABELS_FILE)


def info_path(version_dir: str) -> str:
    return os.path.join(version_dir, ASSETS_DIR, METADATA_FILE)


# ---------------------------------------------------------------- trxsfr.json

@dataclasses.dataclass(frozen=True)
class ModuleInfo:
    """The feature extractor a model was trained on."""

    handle: Optional[str] = None
    fingerprint: Optional[str] = None
    image_size: Optional[tuple[int, int]] = None
    feature_dim: Optional[int] = None

    def to_json(self) -> dict:
        return {"feature_dim": self.feature_dim, "fingerprint": self.fingerprint,
                "handle": self.handle,
                "image_size": list(self.image_size) if self.image_size else None}

    @classmethod
    def from_json(cls, doc: Any) -> "ModuleInfo":
        doc = doc if isinstance(doc, dict) else {}
        size = doc.get("image_size")
        return cls(doc.get("handle"), doc.get("fingerprint"),
                   tuple(int(v) for v in size) if isinstance(size, list) and len(size) == 2
                   else None, doc.get("feature_dim"))


@dataclasses.dataclass(frozen=True)
class TFLiteInfo:
    """How a .tflite was converted (`export-tflite`)."""

    quantize: Optional[str] = None
    source_model: Optional[str] = None
    image_size: Optional[tuple[int, int]] = None
    calibration_images: int = 0
    tensorflow_version: Optional[str] = None
    created: Optional[int] = None

    def to_json(self) -> dict:
        return {"calibration_images": self.calibration_images, "created": self.created,
                "image_size": list(self.image_size) if self.image_size else None,
                "quantize": self.quantize, "source_model": self.source_model,
                "tensorflow_version": self.tensorflow_version}

    @classmethod
    def from_json(cls, doc: Any) -> Optional["TFLiteInfo"]:
        if not isinstance(doc, dict):
            return None
        size = doc.get("image_size")
        return cls(doc.get("quantize"), doc.get("source_model"),
                   tuple(size) if isinstance(size, list) else None,
                   doc.get("calibration_images") or 0, doc.get("tensorflow_version"),
                   doc.get("created"))


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """`assets/trxsfr.json`: what a model is and how it was made.

    Every field has a default, so a file written by an older trxsfr (or with
    fields missing) still reads; fields this version does not know are kept in
    `extra` and written back unchanged.
    """

    format: str = FORMAT
    trxsfr_version: Optional[str] = None
    preprocessing: Optional[str] = None  # imaging.PREPROCESSING_VERSION at export
    module: ModuleInfo = ModuleInfo()
    labels: tuple[str, ...] = ()
    config: dict = dataclasses.field(default_factory=dict)  # the retrain settings used
    sweep: list = dataclasses.field(default_factory=list)
    best_step: Optional[int] = None
    augmentation: Optional[dict] = None
    fine_tuned: Optional[dict] = None
    # How l2 was chosen by cross-validation (`retrain --tune auto`): the values tried and
    # their scores, the chosen and exported values, the search's size and cost.
    tuning: Optional[dict] = None
    metrics: dict = dataclasses.field(default_factory=dict)  # test/validation/train figures
    split_counts: dict = dataclasses.field(default_factory=dict)
    skipped_files: int = 0
    history: list = dataclasses.field(default_factory=list)
    created: Optional[int] = None  # unix time of the export
    tflite: Optional[TFLiteInfo] = None  # set on a .tflite's info only
    # A top score below this answers "unknown" (retrain --unknown_threshold); None: never.
    # Stored as the float32 the SavedModel compares with, so every runtime agrees.
    unknown_threshold: Optional[float] = None
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        # Fields added later are left out when unset: older files read and write back equal.
        later = ("tuning", "unknown_threshold")
        doc = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("module", "labels", "tflite", "extra")
               and not (f.name in later and getattr(self, f.name) is None)}
        doc["module"] = self.module.to_json()
        doc["labels"] = list(self.labels)
        if self.tflite is not None:
            doc["tflite"] = self.tflite.to_json()
        doc.update(self.extra)
        return dict(sorted(doc.items()))

    @classmethod
    def from_json(cls, doc: dict) -> "ModelInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in doc.items() if k in known and k not in ("extra",)}
        kwargs["module"] = ModuleInfo.from_json(doc.get("module"))
        kwargs["labels"] = tuple(doc.get("labels") or ())
        kwargs["tflite"] = TFLiteInfo.from_json(doc.get("tflite"))
        for name in ("config", "metrics", "split_counts"):
            if not isinstance(kwargs.get(name), dict):
                kwargs[name] = {}
        for name in ("sweep", "history"):
            if not isinstance(kwargs.get(name), list):
                kwargs[name] = []
        kwargs["skipped_files"] = kwargs.get("skipped_files") or 0
        threshold = kwargs.get("unknown_threshold")
        kwargs["unknown_threshold"] = (float(threshold) if isinstance(threshold, (int, float))
                                       and not isinstance(threshold, bool) else None)
        if not isinstance(kwargs.get("tuning"), dict):
            kwargs["tuning"] = None
        kwargs["extra"] = {k: v for k, v in doc.items() if k not in known}
        return cls(**kwargs)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True)


def is_unknown(top_scores, threshold: Optional[float]):
    """bool [N]: which top scores (float [N]) fall below a model's "unknown" threshold,
    compared in float32 as the SavedModel compares them; all False without a threshold."""
    import numpy as np

    scores = np.asarray(top_scores, np.float32)
    if threshold is None:
        return np.zeros(scores.shape, bool)
    return scores < np.float32(threshold)


def acceptance(top_scores, correct, threshold: Optional[float]) -> tuple:
    """What a threshold does to N images: (accepted count, coverage, accuracy among the
    accepted); coverage None without images, accuracy None when none is accepted."""
    import numpy as np

    accepted = ~is_unknown(top_scores, threshold)
    n = int(accepted.sum())
    return (n, n / len(accepted) if len(accepted) else None,
            float(np.asarray(correct, bool)[accepted].mean()) if n else None)


def read_info(path: str) -> ModelInfo:
    """A model's trxsfr.json, or an empty ModelInfo when there is none.

    Raises:
        ModelError: the file is not a JSON object (it is written whole, so someone edited it).
    """
    if not os.path.exists(path):
        return ModelInfo()
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not readable JSON ({first_line(e, 120)}); restore it "
                         f"or export the model again") from e
    if not isinstance(doc, dict):
        raise ModelError(f"{path} must hold a JSON object, not {type(doc).__name__}; restore it "
                         f"or export the model again")
    return ModelInfo.from_json(doc)


# ---------------------------------------------------------------- versions

def versions(base: str) -> list[int]:
    """Numbered directories under `base` holding a saved_model.pb, highest first."""
    try:
        names = os.listdir(base)
    except OSError:
        return []
    return sorted((int(n) for n in names
                   if n.isdigit() and os.path.isfile(os.path.join(base, n, SAVED_MODEL_FILE))),
                  reverse=True)


def is_version_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, SAVED_MODEL_FILE))


def resolve_version(path: str) -> str:
    """A version directory itself, or the highest numbered version under a base dir (as TF Serving).

    Raises:
        ModelError: `path` holds no SavedModel.
    """
    if not os.path.exists(path):
        raise ModelError(f"model {path} does not exist")
    if not os.path.isdir(path):
        raise ModelError(f"model {path} is not a directory (pass a version dir or its base dir)")
    if is_version_dir(path):
        return path
    found = versions(path)
    if not found:
        raise ModelError(
            f"{path} is not a model: no saved_model.pb and no numbered version directories with one"
        )
    return os.path.join(path, str(found[0]))


def next_version(base_dir: str) -> int:
    """The number a new version gets: the unix time, or above every existing number."""
    existing = [int(n) for n in os.listdir(base_dir) if n.isdigit()]
    return max([int(time.time())] + [v + 1 for v in existing])


def version_name(path: str) -> str:
    return os.path.basename(os.path.normpath(path))


# ---------------------------------------------------------------- TFLite

def is_tflite(path: str) -> bool:
    return str(path).endswith(TFLITE_SUFFIX)


def tflite_sidecars(tflite_path: str) -> tuple[str, str]:
    """(labels file, info file) that live beside `tflite_path`."""
    stem = tflite_path[: -len(TFLITE_SUFFIX)] if is_tflite(tflite_path) else tflite_path
    return stem + ".labels.txt", stem + ".trxsfr.json"


# ---------------------------------------------------------------- frozen GraphDef (--output_graph)
# A TF1-style frozen graph of the whole classifier, for what the TensorFlow for Poets
# codelab and TF-Hub's retrain.py fed: their label_image.py, the Android/iOS demos, C++
# programs. Variables are constants; `tf.compat.v1.import_graph_def` loads it alone.
# The tensor names and normalisations are theirs, so their commands work unchanged.

GRAPH_SUFFIX = ".pb"
# The codelab's input: float32 [N, H, W, 3] holding (pixel - 128) / 128.
GRAPH_INPUT = "input"
# TF-Hub retrain.py's input: the same images as float32 in [0, 1] (pixel / 255).
GRAPH_FLOAT_INPUT = "Placeholder"
# (input_mean, input_std) each input takes: label_image.py feeds (pixel - mean) / std.
GRAPH_NORMALISATION = {GRAPH_INPUT: (128.0, 128.0), GRAPH_FLOAT_INPUT: (0.0, 255.0)}
# The softmax over the labels; retrain's --final_tensor_name renames it.
GRAPH_OUTPUT = "final_result"
# The new layer's constants (the codelab's variable names), set per written graph.
GRAPH_WEIGHTS = "final_training_ops/weights/final_weights"
GRAPH_BIASES = "final_training_ops/biases/final_biases"
# Constants that no computation reads: the labels (string [C], class-id order) and a
# JSON string (GRAPH_FORMAT, preprocessing, module, output name, training step).
GRAPH_LABELS = "trxsfr/labels"
GRAPH_INFO = "trxsfr/info"
GRAPH_FORMAT = "trxsfr-frozen-graph-1"
# `intermediate_<step>.pb` in --intermediate_output_graphs_dir, as retrain.py names them.
GRAPH_INTERMEDIATE = "intermediate_{step}.pb"


def is_graph(path: str) -> bool:
    """A frozen GraphDef file by its name (a SavedModel's own saved_model.pb is not one)."""
    name = os.path.basename(str(path))
    return name.endswith(GRAPH_SUFFIX) and name != SAVED_MODEL_FILE


def graph_labels_sidecar(graph_path: str) -> str:
    """`<stem>.labels.txt`: the labels file retrain writes beside --output_graph when
    --output_labels is not given."""
    stem = graph_path[: -len(GRAPH_SUFFIX)] if graph_path.endswith(GRAPH_SUFFIX) else graph_path
    return stem + ".labels.txt"


def graph_labels_candidates(graph_path: str) -> list[str]:
    """Labels files that may sit beside a frozen graph, most specific first: the sidecar,
    the graph's name with `graph` -> `labels` (retrained_graph.pb -> retrained_labels.txt,
    TF-Hub's output_graph.pb -> output_labels.txt), the codelab's retrained_labels.txt."""
    folder, name = os.path.split(graph_path)
    stem = name[: -len(GRAPH_SUFFIX)] if name.endswith(GRAPH_SUFFIX) else name
    found = [graph_labels_sidecar(graph_path)]
    if "graph" in stem:
        found.append(os.path.join(folder, stem.replace("graph", "labels") + ".txt"))
    found.append(os.path.join(folder, "retrained_labels.txt"))
    return list(dict.fromkeys(found))


def graph_constants(graph_def) -> tuple[Optional[list[str]], dict]:
    """(labels, info) that a frozen GraphDef trxsfr wrote carries in GRAPH_LABELS and
    GRAPH_INFO; (None, {}) for any other graph. Reads the protocol buffer only."""
    labels, info = None, {}
    for node in graph_def.node:
        if node.op != "Const" or node.name not in (GRAPH_LABELS, GRAPH_INFO):
            continue
        values = list(node.attr["value"].tensor.string_val)
        if node.name == GRAPH_LABELS:
            labels = [v.decode("utf-8", "replace") for v in values]
            continue
        try:
            doc = json.loads(values[0].decode("utf-8")) if values else None
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("format") == GRAPH_FORMAT:
            info = doc
    return (labels, info) if info else (None, {})
