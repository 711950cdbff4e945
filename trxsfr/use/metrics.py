"""Classification metrics from true and predicted class indices. Pure numpy."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C]: rows are true classes, columns predicted ones."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(true, int), np.asarray(pred, int)), 1)
    return matrix


def top_k_values(num_classes: int, top_k: Sequence[int] = (1, 5)) -> list[int]:
    """The k of top-k accuracy that say something: each capped at C - 1 (at C or above it
    is 100% by definition), so with 3 classes (1, 5) gives [1, 2]."""
    return sorted({min(k, max(1, num_classes - 1)) for k in top_k})


def top_k_hits(true: Sequence[int], probabilities: np.ndarray, ks: Sequence[int]) -> dict[int, int]:
    """{k: how many rows have their true class among their k highest probabilities}."""
    ranked = np.argsort(-np.asarray(probabilities), axis=1, kind="stable")
    return {k: int(sum(t in row[:k] for t, row in zip(true, ranked))) for k in ks}


def metrics(true: Sequence[int], pred: Sequence[int], labels: Sequence[str],
            probabilities: np.ndarray | None = None, top_k: Sequence[int] = (1, 5)) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro-F1, confusion, top-k accuracy.

    Args:
        true, pred: class indices of the same length.
        labels: class names, indexed by class id.
        probabilities: optional float [N, C], for top-k accuracy.
        top_k: the k of top-k accuracy, each capped at C - 1 (at C or above it is 100% by
            definition): with 3 classes the default (1, 5) gives top-1 and top-2.
    """
    true, pred = np.asarray(true, int), np.asarray(pred, int)
    hits = None
    if probabilities is not None and len(true):
        hits = top_k_hits(true, probabilities, top_k_values(len(labels), top_k))
    return metrics_of_counts(confusion_matrix(true, pred, len(labels)), labels, hits)


def metrics_of_counts(matrix: np.ndarray, labels: Sequence[str],
                      top_k_hits: dict[int, int] | None = None) -> dict:
    """`metrics` from what can be summed over parts of a data set (a pipeline's workers):
    the int [C, C] confusion matrix and, optionally, `top_k_hits`' counts."""
    matrix = np.asarray(matrix, np.int64)
    n = int(matrix.sum())
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    result = {
        "count": n,
        "accuracy": float(tp.sum() / n) if n else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]),
                    "f1": float(f1[i]), "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "confusion_matrix": matrix.tolist(),
    }
    if top_k_hits is not None and n:
        result["top_k_accuracy"] = {str(k): float(hits / n) for k, hits in sorted(top_k_hits.items())}
    return result
