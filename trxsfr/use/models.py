"""Which `Predictor` runs a model path: a SavedModel directory or a `.tflite` file."""

from __future__ import annotations

import os

from trxsfr.base import contract
from trxsfr.base.errors import ModelError
from trxsfr.use.classifier import Classifier, Predictor


def load(path: str) -> Predictor:
    """A SavedModel version/base directory, or a `.tflite` file from `export-tflite`.

    Raises:
        ModelError: `path` is neither.
    """
    if contract.is_tflite(path):
        from trxsfr.use.interpreter import TFLiteClassifier

        return TFLiteClassifier(str(path))
    if os.path.isfile(path):
        raise ModelError(f"model {path} is a file but not a .tflite one (pass a SavedModel "
                         f"version dir, its base dir or a {contract.TFLITE_SUFFIX} file)")
    return Classifier(path)
