"""use.metrics and the report's calibration, cross-checked against scikit-learn and a direct
computation on seeded random arrays."""

import numpy as np
import pytest

from trxsfr.report import calibration
from trxsfr.use.metrics import confusion_matrix, metrics

sk = pytest.importorskip("sklearn.metrics")  # in the test extras

LABELS = ["ant", "bee", "cat", "unseen", "dog", "ghost", "mute"]
# no support and no predictions; predicted but no support; support but no predictions
UNSEEN, GHOST, MUTE = 3, 5, 6


def predictions(seed, n=200):
    """(true, pred, probabilities float [n, 7]): pred is the top probability; class UNSEEN is
    never true nor predicted, GHOST is predicted but never true, MUTE true but never predicted."""
    rng = np.random.default_rng(seed)
    true = rng.choice([0, 1, 2, 4, MUTE], n, p=[0.45, 0.25, 0.15, 0.1, 0.05])
    probabilities = rng.dirichlet(np.ones(len(LABELS)), n)
    probabilities[:, [UNSEEN, MUTE]] *= 1e-3  # never on top
    hit = (rng.random(n) < 0.6) & (true != MUTE)  # about 60% right: the true class to the top
    probabilities[hit, true[hit]] += probabilities[hit].max(axis=1)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    return true, probabilities.argmax(axis=1), probabilities


@pytest.mark.parametrize("seed", range(5))
def test_metrics_agree_with_scikit_learn(seed):
    true, pred, probabilities = predictions(seed)
    assert UNSEEN not in true and UNSEEN not in pred and GHOST not in true and GHOST in pred
    assert MUTE in true and MUTE not in pred
    ids = list(range(len(LABELS)))
    m = metrics(true, pred, LABELS, probabilities, top_k=(1, 2, 3, 9))

    assert m["count"] == len(true)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(true, pred), abs=1e-12)
    expected = sk.confusion_matrix(true, pred, labels=ids)
    np.testing.assert_array_equal(m["confusion_matrix"], expected)
    np.testing.assert_array_equal(confusion_matrix(true, pred, len(LABELS)), expected)
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        true, pred, labels=ids, zero_division=0)
    for i, label in enumerate(LABELS):
        row = m["per_class"][label]
        assert row["precision"] == pytest.approx(precision[i], abs=1e-12), label
        assert row["recall"] == pytest.approx(recall[i], abs=1e-12), label
        assert row["f1"] == pytest.approx(f1[i], abs=1e-12), label
        assert row["support"] == support[i], label
    assert m["per_class"]["unseen"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["ghost"]["support"] == 0 and m["per_class"]["ghost"]["precision"] == 0
    assert m["per_class"]["mute"]["support"] > 0 and m["per_class"]["mute"]["precision"] == 0
    # Macro F1 averages the classes that have images: "unseen" and "ghost" would drag it down.
    present = [i for i in ids if support[i] > 0]
    assert m["macro_f1"] == pytest.approx(
        sk.f1_score(true, pred, labels=present, average="macro", zero_division=0), abs=1e-12)
    assert m["macro_f1"] > sk.f1_score(true, pred, labels=ids, average="macro", zero_division=0)
    # k = 9 is capped at C - 1 = 6 (at C every image is a hit).
    assert set(m["top_k_accuracy"]) == {"1", "2", "3", "6"}
    for k, value in m["top_k_accuracy"].items():
        assert value == pytest.approx(
            sk.top_k_accuracy_score(true, probabilities, k=int(k), labels=ids), abs=1e-12), k
    assert m["top_k_accuracy"]["1"] == m["accuracy"]


def test_metrics_of_nothing_and_of_perfect_predictions():
    empty = metrics([], [], LABELS, np.zeros((0, len(LABELS))))
    assert empty["count"] == 0 and empty["accuracy"] is None and empty["macro_f1"] is None
    assert "top_k_accuracy" not in empty
    assert empty["confusion_matrix"] == [[0] * len(LABELS)] * len(LABELS)
    perfect = metrics([0, 1, 1, 2], [0, 1, 1, 2], ["a", "b", "c"], top_k=(1, 5))
    assert perfect["accuracy"] == perfect["macro_f1"] == 1.0
    assert "top_k_accuracy" not in perfect  # no probabilities given


def direct_calibration(confidences, correct, bins):
    """Per-bin (count, mean confidence, accuracy) and ECE from np.histogram's bins, whose
    last one is closed at 1.0 as calibration's is."""
    edges = np.linspace(0, 1, bins + 1)
    count, _ = np.histogram(confidences, edges)
    conf_sum, _ = np.histogram(confidences, edges, weights=confidences)
    hit_sum, _ = np.histogram(confidences, edges, weights=correct.astype(float))
    full = count > 0
    mean_conf = np.divide(conf_sum, count, out=np.full(bins, np.nan), where=full)
    accuracy = np.divide(hit_sum, count, out=np.full(bins, np.nan), where=full)
    ece = np.sum(count[full] / len(confidences) * np.abs(accuracy[full] - mean_conf[full]))
    return count, mean_conf, accuracy, ece


@pytest.mark.parametrize("seed, bins", [(0, 10), (1, 10), (2, 15), (3, 4)])
def test_calibration_agrees_with_a_direct_computation(seed, bins):
    rng = np.random.default_rng(seed)
    # Top-class confidences of a 3-class model lie in [1/3, 1]; 1.0 itself included.
    confidences = np.concatenate([rng.uniform(1 / 3, 1, 300), [1.0, 1.0]])
    correct = rng.random(len(confidences)) < confidences ** 2  # over-confident
    got = calibration(confidences, correct, bins)
    count, mean_conf, accuracy, ece = direct_calibration(confidences, correct, bins)
    assert got["ece"] == pytest.approx(ece, abs=1e-12)
    assert got["ece"] > 0.05  # over-confidence shows
    assert [row["count"] for row in got["bins"]] == count.tolist()
    for b, row in enumerate(got["bins"]):
        assert (row["low"], row["high"]) == pytest.approx((b / bins, (b + 1) / bins))
        if count[b]:
            assert row["confidence"] == pytest.approx(mean_conf[b], abs=1e-12)
            assert row["accuracy"] == pytest.approx(accuracy[b], abs=1e-12)
        else:
            assert row["confidence"] is None and row["accuracy"] is None


def test_calibration_by_hand():
    # Bin [0.9, 1.0]: confidence 0.95, accuracy 0.5; bin [0.5, 0.6): 0.55 and 1.0.
    got = calibration([0.95, 0.95, 0.55, 0.55], [True, False, True, True], bins=10)
    assert got["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    assert calibration([0.7] * 4, [True, True, True, False], bins=10)["ece"] == pytest.approx(0.05)
    assert calibration([], [], bins=10)["ece"] is None
