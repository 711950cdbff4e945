"""Which `Predictor` runs a model path: a SavedModel directory or a `.tflite` file."""

from __future__ import annotations

import os

from trxsfr.base import contract
from trxsfr.base.errors import ModelError
from trxsfr.use.classifier import Classifier, Predictor


def load(path: str, graph_options=None) -> Predictor:
    """A SavedModel version/base directory, a `.tflite` file from `export-tflite`, or a
    frozen GraphDef `.pb` (`retrain --output_graph`, TF's retrain.py), which takes
    label_image.py's settings as `graph_options` (a frozen.GraphOptions).

    Raises:
        ModelError: `path` is none of them.
    """
    if contract.is_tflite(path):
        from trxsfr.use.interpreter import TFLiteClassifier

        return TFLiteClassifier(str(path))
    if contract.is_graph(path):
        from trxsfr.use.frozen import FrozenGraphClassifier

        return FrozenGraphClassifier(str(path), graph_options)
    if os.path.basename(str(path)) == contract.SAVED_MODEL_FILE and os.path.isfile(path):
        return Classifier(os.path.dirname(os.path.abspath(path)))  # the SavedModel it is part of
    if os.path.isfile(path):
        raise ModelError(f"model {path} is a file but not a .tflite one nor a frozen graph "
                         f"(pass a SavedModel version dir, its base dir, a "
                         f"{contract.TFLITE_SUFFIX} file or a {contract.GRAPH_SUFFIX} graph)")
    return Classifier(path)
