"""Which `Predictor` runs a model path: a SavedModel directory or a `.tflite` file."""

from __future__ import annotations

import os
from typing import Optional

from trxsfr.base import contract
from trxsfr.base.config import check_runtime
from trxsfr.base.errors import ModelError
from trxsfr.use.classifier import Classifier, Predictor


def load(path: str, graph_options=None, runtime: Optional[str] = None) -> Predictor:
    """A SavedModel version/base directory, a `.tflite` file from `export-tflite`, or a
    frozen GraphDef `.pb` (`retrain --output_graph`, TF's retrain.py), which takes
    label_image.py's settings as `graph_options` (a frozen.GraphOptions).

    `runtime` ("auto", "tf", "litert"; see base/litert.py) says what runs a SavedModel's
    network: None or "tf" TensorFlow, the others a `converted.ConvertedClassifier`. A
    .tflite runs on LiteRT and a frozen graph on TensorFlow; insisting on the other is
    an error.

    Raises:
        ModelError: `path` is none of them, or cannot run on the runtime insisted on.
    """
    if runtime is not None:
        check_runtime(runtime)
    if contract.is_tflite(path):
        if runtime == "tf":
            raise ModelError(f"--runtime tf: {path} is a {contract.TFLITE_SUFFIX}, which only "
                             f"LiteRT runs (pass the SavedModel it came from)")
        from trxsfr.use.interpreter import TFLiteClassifier

        return TFLiteClassifier(str(path))
    if contract.is_graph(path):
        if runtime == "litert":
            raise ModelError(f"--runtime litert: {path} is a frozen graph, which only "
                             f"TensorFlow runs (pass the SavedModel it came from)")
        from trxsfr.use.frozen import FrozenGraphClassifier

        return FrozenGraphClassifier(str(path), graph_options)
    if os.path.basename(str(path)) == contract.SAVED_MODEL_FILE and os.path.isfile(path):
        path = os.path.dirname(os.path.abspath(path))  # the SavedModel it is part of
    elif os.path.isfile(path):
        raise ModelError(f"model {path} is a file but not a .tflite one nor a frozen graph "
                         f"(pass a SavedModel version dir, its base dir, a "
                         f"{contract.TFLITE_SUFFIX} file or a {contract.GRAPH_SUFFIX} graph)")
    if runtime in (None, "tf"):
        return Classifier(path)
    from trxsfr.use.converted import ConvertedClassifier

    return ConvertedClassifier(path, runtime)
