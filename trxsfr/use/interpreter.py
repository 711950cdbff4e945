"""Run a `.tflite` from `export-tflite` with LiteRT's interpreter, as a `Predictor`.

A converted model takes float32 [N, H, W, 3] in [0, 1] (the pixels
`imaging.decode_and_resize` makes) and returns probabilities float32 [N, C]; its
labels and ModelInfo live beside it (`contract.tflite_sidecars`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

import numpy as np

from trxsfr.base import contract
from trxsfr.base.errors import ModelError, first_line
from trxsfr.base.litert import (
    interpreter_class,  # re-exported: tests and info import it here
)
from trxsfr.use.classifier import Classifier

log = logging.getLogger(__name__)


class TFLiteClassifier(Classifier):
    """A .tflite from `export-tflite`, with the interface of `Classifier`.

    `predict_paths` is inherited: files go through the same `imaging.image_dataset`
    pipeline as for a SavedModel, so the two are compared on identical pixels.
    """

    forward_streams = 1  # one interpreter, which is not thread-safe

    def __init__(self, path: str, num_threads: Optional[int] = None):
        if not os.path.exists(path):
            raise ModelError(f"model {path} does not exist")
        if not os.path.isfile(path):
            raise ModelError(f"model {path} is not a .tflite file")
        self.path = path
        labels_path, meta_path = contract.tflite_sidecars(path)
        if not os.path.exists(labels_path):
            raise ModelError(f"{path} has no labels file {labels_path} beside it "
                             f"(trxsfr export-tflite writes one)")
        self.labels = contract.read_labels(labels_path)
        self.info = contract.read_info(meta_path)
        start = time.perf_counter()
        Interpreter = interpreter_class()
        self._runtime = f"{Interpreter.__module__}.{Interpreter.__name__}"
        try:
            self._interpreter = Interpreter(model_path=path,
                                            num_threads=num_threads or os.cpu_count() or 1)
            self._interpreter.allocate_tensors()
        except Exception as e:
            raise ModelError(f"cannot load TFLite model {path}: "
                             f"{first_line(e)}") from e
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or inputs[0]["shape"][3] != 3:
            raise ModelError(f"{path} does not take one float [1, H, W, 3] image; "
                             f"not a trxsfr export-tflite model")
        if len(outputs) != 1 or outputs[0]["shape"][-1] != len(self.labels):
            raise ModelError(f"{path} outputs do not match its {len(self.labels)} labels in {labels_path}")
        self._input, self._output = inputs[0]["index"], outputs[0]["index"]
        self._batch = int(inputs[0]["shape"][0])
        self.image_size = (int(inputs[0]["shape"][1]), int(inputs[0]["shape"][2]))
        self.load_seconds = time.perf_counter() - start

    @property
    def saved_model(self):
        source = (self.info.tflite and self.info.tflite.source_model) or "unknown"
        raise ModelError(f"{self.path} is a TFLite model; this needs the SavedModel it was "
                         f"converted from ({source})")

    def _set_batch(self, n: int) -> None:
        if n != self._batch:
            self._interpreter.resize_tensor_input(self._input, [n, *self.image_size, 3], strict=False)
            self._interpreter.allocate_tensors()
            self._batch = n

    def _forward(self, images) -> np.ndarray:
        images = np.ascontiguousarray(np.asarray(images, np.float32))
        self._set_batch(len(images))
        self._interpreter.set_tensor(self._input, images)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output), np.float32)

    format = "tflite"

    @property
    def runtime(self) -> str:
        return self._runtime

    @property
    def quantize(self) -> Optional[str]:
        return self.info.tflite.quantize if self.info.tflite else None

    def parameter_count(self) -> int:
        """Weights stored in the file: elements of constant tensors (produced by no op, not an input).

        Counted on a second interpreter without delegates: XNNPACK adds packed
        copies of the weights to the tensor list of the one that runs.
        """
        Interpreter = interpreter_class()
        if Interpreter.__module__.startswith("ai_edge_litert"):
            from ai_edge_litert.interpreter import OpResolverType
        else:
            import tensorflow as tf

            OpResolverType = tf.lite.experimental.OpResolverType
        it = Interpreter(model_path=self.path,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        ops = getattr(it, "_get_ops_details", None)  # not public API; absent in some runtimes
        if ops is None:
            return 0  # unknown: the runtime does not list its ops
        produced = {int(t) for op in ops() for t in op["outputs"]}
        produced.update(int(d["index"]) for d in it.get_input_details())
        return int(sum(int(np.prod(t["shape"])) for t in it.get_tensor_details()
                       if t["index"] not in produced and len(t["shape"])))
