"""The "unknown" threshold of `retrain --unknown_threshold auto|P`: choose it and measure it.

A model with a threshold answers "unknown" for an image whose top class
probability is below it (`contract.is_unknown`). `auto` chooses it on the
validation split for a target precision on the images it accepts:

1. rank the validation images by top score, highest first;
2. take the longest prefix (ending between two distinct scores) whose accuracy
   is at least the target: the most images accepted at that precision;
3. put the threshold halfway between the last accepted score and the next one,
   or, when every image is accepted, halfway between the lowest score and 1/C
   (the lowest top score C classes allow): the widest margin on both sides, so
   a test image a little less sure than the validation ones is not refused.

When no prefix reaches the target, the prefix of best accuracy is taken (the
longest among equals) and `reached` is false.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from trxsfr.base.config import UNKNOWN_AUTO


def coverage_and_precision(probs: np.ndarray, labels: np.ndarray,
                           threshold: float) -> dict:
    """{"count", "accepted", "coverage", "precision"} of images whose top score is at least
    `threshold` (precision: accuracy among them; None when none is accepted)."""
    from trxsfr.base.contract import acceptance

    top = probs.max(axis=1) if len(probs) else np.zeros(0, np.float32)
    correct = probs.argmax(axis=1) == labels if len(probs) else np.zeros(0, bool)
    n, coverage, precision = acceptance(top, correct, threshold)
    return {"count": int(len(labels)), "accepted": n, "coverage": coverage,
            "precision": precision}


def choose(top_scores: np.ndarray, correct: np.ndarray, target: float,
           num_classes: int) -> tuple[float, bool]:
    """(threshold, whether the target was reached) on one split's top scores (float [N]) and
    whether each top class was right (bool [N]); see the module's docstring."""
    order = np.argsort(-np.asarray(top_scores, np.float64), kind="stable")
    scores = np.asarray(top_scores, np.float64)[order]
    hits = np.cumsum(np.asarray(correct, bool)[order])
    k = np.arange(1, len(scores) + 1)
    precision = hits / k
    # A prefix may end only where the next score is lower: ties are accepted together.
    ends = np.append(scores[1:] < scores[:-1], True)
    ok = ends & (precision >= target - 1e-12)
    reached = bool(ok.any())
    if reached:
        last = int(np.flatnonzero(ok)[-1])
    else:
        best = precision[ends].max()
        last = int(np.flatnonzero(ends & (precision >= best - 1e-12))[-1])
    below = scores[last + 1] if last + 1 < len(scores) else 1.0 / num_classes
    return float(np.float32((scores[last] + below) / 2)), reached


def decide(setting, target: float, num_classes: int, validation: Optional[tuple],
           test: Optional[tuple]) -> dict:
    """The threshold a model stores and what it does on the held-out splits.

    Args:
        setting: "auto" or a top score in [0, 1] (`RetrainConfig.unknown_threshold`).
        target: precision on accepted validation images that "auto" aims for.
        validation, test: (probabilities float32 [N, C], labels int [N]) or None.

    Returns:
        {"threshold", "mode", "target_precision", "reached", "validation", "test"}; the
        threshold is a float32 value, as the SavedModel compares it.
    """
    if setting == UNKNOWN_AUTO:
        probs, labels = validation
        threshold, reached = choose(probs.max(axis=1), probs.argmax(axis=1) == labels,
                                    target, num_classes)
        choice = {"mode": "auto", "target_precision": target, "reached": reached}
    else:
        threshold = float(np.float32(setting))
        choice = {"mode": "fixed"}
    choice["threshold"] = threshold
    for name, split in (("validation", validation), ("test", test)):
        if split is not None and len(split[1]):
            choice[name] = coverage_and_precision(split[0], split[1], threshold)
    return choice
