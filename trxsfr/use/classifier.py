"""Load an exported trxsfr model and predict on image files, in batches.

`Predictor` is what every way of running a model offers (`label`, `serve`,
`info`, `report` and `explain` rely on nothing else); `Classifier` runs a
SavedModel with TensorFlow, `interpreter.TFLiteClassifier` a `.tflite` with
LiteRT. `models.load(path)` picks one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
import typing
from typing import Optional, Sequence

import numpy as np

from trxsfr.base import contract
from trxsfr.base.config import FORWARD_BATCH_SIZE, MAX_IMAGE_PIXELS, ProgressFn
from trxsfr.base.contract import ModelInfo
from trxsfr.base.errors import ModelError, saved_model_failure
from trxsfr.base.listing import Skipped

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Predictions:
    probabilities: np.ndarray  # float32 [len(ok), classes]
    ok: list[int]  # positions of the inputs that decoded
    failed: list[Skipped]
    seconds: float  # inference wall time, decode included


@typing.runtime_checkable
class Predictor(typing.Protocol):
    """A loaded model, whatever runs it."""

    path: str
    labels: list[str]
    info: ModelInfo
    image_size: tuple[int, int]
    load_seconds: float
    format: str  # "saved_model" or "tflite", as `trxsfr info` reports it

    def predict_images(self, images) -> np.ndarray:
        """float32 [N, H, W, 3] in [0, 1] -> probabilities float32 [N, classes]."""

    def predict_paths(self, paths: Sequence[str], batch_size: int = FORWARD_BATCH_SIZE,
                      on_progress: Optional[ProgressFn] = None,
                      max_pixels: int = MAX_IMAGE_PIXELS) -> Predictions:
        """Probabilities for image files, decoded as at training time."""


class Classifier:
    """An exported SavedModel: labels, ModelInfo and batched prediction (a `Predictor`)."""

    # Batches `predict_paths` runs through the model at once (None: imaging's default).
    forward_streams: Optional[int] = None
    # Whether decoding yields to the forward pass (imaging.batches); see converted.py.
    demote_decoding: bool = True
    # Whether LiteRT runs the network (a ConvertedClassifier that decided so).
    on_litert: bool = False

    def prepare(self, images: Optional[int] = None) -> bool:
        """Decide the runtime of the network, once; True if LiteRT runs it. Only a
        ConvertedClassifier has a choice to make."""
        return self.on_litert

    def __init__(self, path: str):
        import tensorflow as tf

        self.path = contract.resolve_version(path)
        label_file = contract.labels_path(self.path)
        if not os.path.exists(label_file):
            raise ModelError(f"{self.path} is a SavedModel but not a trxsfr model "
                             f"(no {os.path.relpath(label_file, self.path)})")
        self.labels = contract.read_labels(label_file)
        self.info = contract.read_info(contract.info_path(self.path))
        start = time.perf_counter()
        try:
            self._model = tf.saved_model.load(self.path)
        except Exception as e:
            reason = saved_model_failure(self.path, e)
            raise ModelError(f"cannot load model {self.path}: {reason}") from e
        if contract.SIGNATURE_IMAGES not in self._model.signatures:
            raise ModelError(f"{self.path} has no {contract.SIGNATURE_IMAGES} signature; "
                             f"not a trxsfr model")
        self._predict = self._model.signatures[contract.SIGNATURE_IMAGES]
        shape = self._predict.structured_input_signature[1][contract.INPUT_IMAGES].shape
        self.image_size = (int(shape[1]), int(shape[2]))
        self.load_seconds = time.perf_counter() - start

    @property
    def saved_model(self):
        """What tf.saved_model.load returned: the contract's attributes and signatures."""
        return self._model

    @property
    def version(self) -> str:
        return contract.version_name(self.path)

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
        return self._predict(**{contract.INPUT_IMAGES: images})[
            contract.OUTPUT_PROBABILITIES].numpy()

    @functools.cached_property
    def needs_own_decode(self) -> bool:
        """True when the model was exported by a trxsfr whose preprocessing differs from
        this one's: then only the model's own serving signature decodes as it was trained.
        Decided (and warned about) once per loaded model."""
        from trxsfr.base import imaging

        made_with = self.info.preprocessing
        usable = contract.SIGNATURE_BYTES in getattr(getattr(self, "_model", None),
                                                      "signatures", {})
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

    def _predict_with_exported_decode(self, paths, batch_size, probs, returned,
                                      max_pixels) -> None:
        import tensorflow as tf

        from trxsfr.base import imaging

        serve = self._model.signatures[contract.SIGNATURE_BYTES]

        def probabilities(blobs):
            return serve(**{contract.INPUT_BYTES: tf.constant(blobs)})[
                contract.OUTPUT_PROBABILITIES].numpy()

        def small_enough(i):
            with open(paths[i], "rb") as f:
                head = f.read(1 << 16)  # a JPEG's size may sit after its EXIF block
            try:
                size = imaging.header_size(tf.constant(head))
            except tf.errors.InvalidArgumentError:
                return True  # no header in the first 64 KiB: the decoder will say why
            return int(tf.reduce_prod(size)) <= max_pixels

        for start in range(0, len(paths), batch_size):
            chunk = [i for i in range(start, min(start + batch_size, len(paths)))
                     if small_enough(i)]
            data = []
            for i in chunk:
                with open(paths[i], "rb") as f:
                    data.append(f.read())
            try:
                probs[chunk] = probabilities(data)
                returned[chunk] = True
            except tf.errors.InvalidArgumentError:  # one bad file: go one by one
                for i, blob in zip(chunk, data):
                    try:
                        probs[i] = probabilities([blob])[0]
                        returned[i] = True
                    except tf.errors.InvalidArgumentError:
                        pass

    def predict_paths(self, paths: Sequence[str], batch_size: int = FORWARD_BATCH_SIZE,
                      on_progress: Optional[ProgressFn] = None,
                      max_pixels: int = MAX_IMAGE_PIXELS) -> Predictions:
        """Probabilities for image files, decoded exactly as at training time.

        `on_progress` is told of each batch ("label"); files whose header says more
        than `max_pixels` pixels are skipped undecoded.
        """
        from trxsfr.base import imaging

        start = time.perf_counter()
        probs = np.zeros((len(paths), len(self.labels)), np.float32)
        returned = np.zeros(len(paths), bool)
        if paths and self.needs_own_decode:
            self._predict_with_exported_decode(paths, batch_size, probs, returned, max_pixels)
        elif paths:
            ds = imaging.image_dataset(paths, self.image_size, batch_size,
                                       max_pixels=max_pixels)
            for pos, batch_probs in imaging.map_batches(ds, self.predict_images,
                                                           self.forward_streams,
                                                           self.demote_decoding):
                probs[pos] = batch_probs
                returned[pos] = True
                if on_progress:
                    on_progress("label", len(pos), len(paths))
        seconds = time.perf_counter() - start
        failed = [Skipped(paths[i], imaging.decode_error(paths[i], self.image_size, max_pixels))
                  for i in np.flatnonzero(~returned)]
        ok = [int(i) for i in np.flatnonzero(returned)]
        return Predictions(probs[ok], ok, failed, seconds)
