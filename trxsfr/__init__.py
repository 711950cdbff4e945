"""trxsfr: transfer learning for images on a laptop CPU.

`trxsfr.retrain(config)` runs the whole retrain job from Python; see trxsfr.config.RetrainConfig.
"""

__version__ = "0.1.0"


def retrain(config):
    """Run retrain with a RetrainConfig; returns a pipeline.RetrainResult."""
    from trxsfr.train.retrain import retrain as _retrain

    return _retrain(config)
