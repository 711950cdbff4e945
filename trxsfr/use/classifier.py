"""Load an exported trxsfr model and predict on image files or bytes, in batches."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Optional, Sequence

import numpy as np

from trxsfr.base.config import FORWARD_BATCH_SIZE
from trxsfr.base.listing import Skipped
from trxsfr.base.errors import ModelError, first_line, saved_model_failure
from trxsfr.train.export import LABELS_FILE, METADATA_FILE, SIGNATURE_BYTES, SIGNATURE_IMAGES

log = logging.getLogger(__name__)


def versions(base: str) -> list[int]:
    """Numbered directories under `base` holding a saved_model.pb, highest first."""
    try:
        names = os.listdir(base)
    except OSError:
        return []
    return sorted((int(n) for n in names
                   if n.isdigit() and os.path.isfile(os.path.join(base, n, "saved_model.pb"))),
                  reverse=True)


def resolve_version(path: str) -> str:
    """A version directory itself, or the highest numbered version under a base dir (as TF Serving).

    Raises:
        ModelError: `path` holds no SavedModel.
    """
    if not os.path.exists(path):
        raise ModelError(f"model {path} does not exist")
    if not os.path.isdir(path):
        raise ModelError(f"model {path} is not a directory (pass a version dir or its base dir)")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if not found:
        raise ModelError(
            f"{path} is not a model: no saved_model.pb and no numbered version directories with one"
        )
    return os.path.join(path, str(found[0]))


def read_labels(path: str) -> list[str]:
    """One label per non-empty line (a model's labels.txt)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def read_metadata(path: str) -> dict:
    """A model's trxsfr.json, or {} when there is none.

    Raises:
        ModelError: the file is not a JSON object (it is written whole, so someone edited it).
    """
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not readable JSON ({first_line(e, 120)}); restore it "
                         f"or export the model again") from e
    if not isinstance(doc, dict):
        raise ModelError(f"{path} must hold a JSON object, not {type(doc).__name__}; restore it "
                         f"or export the model again")
    return doc


@dataclasses.dataclass
class Predictions:
    probabilities: np.ndarray  # float32 [len(ok), classes]
    ok: list[int]  # positions of the inputs that decoded
    failed: list[Skipped]
    seconds: float  # inference wall time, decode included


class Classifier:
    """An exported model: labels, metadata and batched prediction."""

    # Batches `predict_paths` runs through the model at once (None: imaging's default).
    forward_streams: Optional[int] = None

    def __init__(self, path: str):
        import tensorflow as tf

        self.path = resolve_version(path)
        label_file = os.path.join(self.path, "assets", LABELS_FILE)
        if not os.path.exists(label_file):
            raise ModelError(f"{self.path} is a SavedModel but not a trxsfr model (no assets/{LABELS_FILE})")
        self.labels = read_labels(label_file)
        self.metadata = read_metadata(os.path.join(self.path, "assets", METADATA_FILE))
        start = time.perf_counter()
        try:
            self._model = tf.saved_model.load(self.path)
        except Exception as e:
            reason = saved_model_failure(self.path, e)
            raise ModelError(f"cannot load model {self.path}: {reason}") from e
        if SIGNATURE_IMAGES not in self._model.signatures:
            raise ModelError(f"{self.path} has no {SIGNATURE_IMAGES} signature; not a trxsfr model")
        self._predict = self._model.signatures[SIGNATURE_IMAGES]
        shape = self._predict.structured_input_signature[1]["images"].shape
        self.image_size = (int(shape[1]), int(shape[2]))
        self.load_seconds = time.perf_counter() - start

    @property
    def saved_model(self):
        """What tf.saved_model.load returned: `.extractor`, `.weights`, `.bias`, signatures."""
        return self._model

    @property
    def version(self) -> str:
        return os.path.basename(os.path.normpath(self.path))

    format = "saved_model"  # what `trxsfr info` reports; "tflite" for a TFLiteClassifier

    @property
    def runtime(self) -> str:
        import tensorflow as tf

        return f"tensorflow {tf.__version__}"

    @property
    def quantize(self) -> Optional[str]:
        """The `export-tflite --quantize` mode, None for a SavedModel."""
        return None

    def parameter_count(self) -> int:
        """Elements of every variable in the SavedModel's checkpoint."""
        import tensorflow as tf

        prefix = os.path.join(self.path, "variables", "variables")
        return int(sum(int(np.prod(shape)) for name, shape in tf.train.list_variables(prefix)
                       if name != "_CHECKPOINTABLE_OBJECT_GRAPH"))

    def predict_images(self, images) -> np.ndarray:
        """float32 [N, H, W, 3] in [0, 1] -> probabilities float32 [N, classes].

        Raises:
            ValueError: an empty batch of another image shape.
        """
        if len(images):
            return self._forward(images)
        height, width = self.image_size  # oneDNN's convolutions reject an empty batch
        if tuple(np.shape(images)[1:]) != (height, width, 3):
            raise ValueError(f"images must be [N, {height}, {width}, 3], got {np.shape(images)}")
        return np.zeros((0, len(self.labels)), np.float32)

    def _forward(self, images) -> np.ndarray:
        """`predict_images` for a batch of at least one image."""
        return self._predict(images=images)["probabilities"].numpy()

    @functools.cached_property
    def needs_own_decode(self) -> bool:
        """True when the model was exported by a trxsfr whose preprocessing differs from
        this one's: then only the model's own serving signature decodes as it was trained.
        Decided (and warned about) once per loaded model."""
        from trxsfr.base import imaging

        made_with = self.metadata.get("preprocessing")
        usable = SIGNATURE_BYTES in getattr(getattr(self, "_model", None), "signatures", {})
        if made_with == imaging.PREPROCESSING_VERSION:
            return False
        if not usable:  # e.g. a .tflite converted from such a model: it takes decoded images
            log.warning("%s was exported with preprocessing %s, this trxsfr has %s and the model "
                        "cannot decode by itself: scores may differ slightly from training",
                        self.path, made_with or "before v2", imaging.PREPROCESSING_VERSION)
            return False
        log.warning("%s was exported with preprocessing %s, this trxsfr has %s: decoding "
                    "with the model's own signature (slower) so scores stay as trained",
                    self.path, made_with or "before v2", imaging.PREPROCESSING_VERSION)
        return True

    def _predict_with_exported_decode(self, paths, batch_size, probs, returned) -> None:
        import tensorflow as tf

        serve = self._model.signatures[SIGNATURE_BYTES]
        for start in range(0, len(paths), batch_size):
            chunk = list(range(start, min(start + batch_size, len(paths))))
            data = []
            for i in chunk:
                with open(paths[i], "rb") as f:
                    data.append(f.read())
            try:
                probs[chunk] = serve(image_bytes=tf.constant(data))["probabilities"].numpy()
                returned[chunk] = True
            except tf.errors.InvalidArgumentError:  # one bad file: go one by one
                for i, blob in zip(chunk, data):
                    try:
                        probs[i] = serve(image_bytes=tf.constant([blob]))["probabilities"].numpy()[0]
                        returned[i] = True
                    except tf.errors.InvalidArgumentError:
                        pass

    def predict_paths(self, paths: Sequence[str], batch_size: int = FORWARD_BATCH_SIZE,
                      progress: bool = False) -> Predictions:
        """Probabilities for image files, decoded exactly as at training time."""
        from trxsfr.base import imaging

        start = time.perf_counter()
        probs = np.zeros((len(paths), len(self.labels)), np.float32)
        returned = np.zeros(len(paths), bool)
        if paths and self.needs_own_decode:
            self._predict_with_exported_decode(paths, batch_size, probs, returned)
        elif paths:
            ds = imaging.image_dataset(paths, self.image_size, batch_size)
            with imaging.progress_bar(len(paths), "label", progress) as bar:
                for pos, batch_probs in imaging.map_batches(ds, self.predict_images,
                                                               self.forward_streams):
                    probs[pos] = batch_probs
                    returned[pos] = True
                    bar.update(len(pos))
        seconds = time.perf_counter() - start
        failed = [Skipped(paths[i], imaging.decode_error(paths[i], self.image_size))
                  for i in np.flatnonzero(~returned)]
        ok = [int(i) for i in np.flatnonzero(returned)]
        return Predictions(probs[ok], ok, failed, seconds)


def load(path: str, graph_options=None) -> Classifier:
    """A SavedModel version/base directory, a `.tflite` file from `export-tflite`, or a
    frozen GraphDef `.pb` (`retrain --output_graph`, TF's retrain.py), which takes
    label_image.py's settings as `graph_options` (a frozen.GraphOptions)."""
    from trxsfr import lite
    from trxsfr.base import contract

    if lite.is_tflite(path):
        return lite.TFLiteClassifier(str(path))
    if contract.is_graph(path):
        from trxsfr.use.frozen import FrozenGraphClassifier

        return FrozenGraphClassifier(str(path), graph_options)
    if os.path.basename(str(path)) == contract.SAVED_MODEL_FILE and os.path.isfile(path):
        return Classifier(os.path.dirname(os.path.abspath(path)))  # the SavedModel it is part of
    if os.path.isfile(path):
        raise ModelError(f"model {path} is a file but not a .tflite one nor a frozen graph "
                         f"(pass a SavedModel version dir, its base dir, a {lite.SUFFIX} file "
                         f"or a {contract.GRAPH_SUFFIX} graph)")
    return Classifier(path)
