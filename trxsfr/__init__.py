"""trxsfr: transfer learning for images on a laptop CPU.

From Python::

    import trxsfr
    from trxsfr.base.config import AuditConfig, RetrainConfig

    result = trxsfr.retrain(RetrainConfig(image_dir="photos", tfhub_module="..."))
    model = trxsfr.load(result.version_dir)          # a version dir, its base dir or a .tflite
    run = trxsfr.label(model, ["heldout/"])          # a LabelRun: predictions and evaluation
    found = trxsfr.audit(AuditConfig(image_dir="photos", tfhub_module="..."))  # an AuditResult

Imports are lazy: `import trxsfr` does not load TensorFlow.
"""

from trxsfr.base import __version__

__all__ = ["__version__", "retrain", "load", "label", "extract", "audit"]


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


def extract(config, pipeline_args=()):
    """Compute bottleneck vectors with an Apache Beam pipeline (the `beam` extra) from an
    ExtractConfig; returns an ExtractResult (trxsfr.train.beam_extract)."""
    from trxsfr.train.beam_extract import extract as _extract

    return _extract(config, pipeline_args)


def audit(config, on_progress=None):
    """Audit class folders with an AuditConfig: label issues, duplicates, outliers; returns an
    AuditResult (trxsfr.train.audit), whose `to_json()` is what `trxsfr audit` prints."""
    from trxsfr.train.audit import audit as _audit

    return _audit(config, on_progress)
