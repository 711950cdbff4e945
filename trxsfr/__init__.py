"""trxsfr: transfer learning for images on a laptop CPU.

From Python::

    import trxsfr
    from trxsfr.base.config import RetrainConfig

    result = trxsfr.retrain(RetrainConfig(image_dir="photos", tfhub_module="..."))
    model = trxsfr.load(result.version_dir)          # a version dir, its base dir or a .tflite
    run = trxsfr.label(model, ["heldout/"])          # a LabelRun: predictions and evaluation

Imports are lazy: `import trxsfr` does not load TensorFlow.
"""

from trxsfr.base import __version__

__all__ = ["__version__", "retrain", "load", "label"]


def retrain(config, on_progress=None):
    """Run the retrain job with a RetrainConfig; returns a RetrainResult (trxsfr.train.retrain)."""
    from trxsfr.train.retrain import retrain as _retrain

    return _retrain(config, on_progress)


def load(path, runtime=None):
    """A `Predictor` for a SavedModel version dir, its base dir (highest version) or a .tflite;
    `runtime` "auto" or "litert" runs a SavedModel's network on LiteRT (trxsfr.use.models)."""
    from trxsfr.use.models import load as _load

    return _load(path, runtime=runtime)


def label(predictor, inputs, **options):
    """Label files and folders with a loaded model; returns a LabelRun (trxsfr.use.labeling)."""
    from trxsfr.use.labeling import run

    return run(predictor, inputs, **options)
