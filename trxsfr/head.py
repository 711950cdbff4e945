"""Train the new softmax layer on cached bottleneck vectors."""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "momentum", "sgd")
_CHUNK_ROWS = 8192


@dataclasses.dataclass
class Head:
    """logits = features @ weights + bias, on raw (unstandardised) bottlenecks."""

    weights: np.ndarray  # float32 [dim, classes]
    bias: np.ndarray  # float32 [classes]

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weights + self.bias

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        z = self.logits(features)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


@dataclasses.dataclass
class TrainResult:
    head: Head
    history: list[dict]  # one row per evaluation: step, train_*, validation_*
    seconds: float


def _standardiser(features: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and deviation, in row chunks (no full-size temporaries)."""
    n = len(features)
    mean = np.zeros(features.shape[1], np.float64)
    for i in range(0, n, chunk):
        mean += features[i:i + chunk].sum(axis=0, dtype=np.float64)
    mean /= max(n, 1)
    var = np.zeros_like(mean)
    for i in range(0, n, chunk):
        var += np.square(features[i:i + chunk] - mean).sum(axis=0)
    std = np.sqrt(var / max(n, 1))
    # Constant features (e.g. dead ReLUs) get unit scale rather than a blow-up.
    floor = max(float(std.mean()) * 1e-3, 1e-8)
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32)


def train(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    steps: int,
    learning_rate: float,
    batch_size: int,
    eval_interval: int,
    seed: int,
    optimizer: str = "adam",
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None,
    summary_dir: Optional[str] = None,
) -> TrainResult:
    """Fit softmax regression with mini-batches sampled by `seed`.

    Features are standardised with the training set's mean and deviation inside
    the loop (fast, well-conditioned learning) and the scaling is folded back
    into the returned weights, so the exported layer takes raw bottlenecks.
    `features` is never copied whole: each chunk of steps gathers its own
    batches, so memory stays at the caller's array plus one chunk.

    Args:
        features: float32 [N, D] training bottlenecks.
        labels: int [N] class indices in [0, num_classes).
        validation: optional (float32 [M, D], int [M]) evaluated every `eval_interval` steps.
        summary_dir: write TensorBoard summaries to `<summary_dir>/train` and `/validation`.

    Returns:
        The head and its evaluation history. The same inputs and seed give the same weights.
    """
    import time

    import tensorflow as tf

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer}")
    start = time.perf_counter()
    n, dim = features.shape
    mean, std = _standardiser(features)
    tf_mean, tf_inv_std = tf.constant(mean), tf.constant(1.0 / std)
    labels = labels.astype(np.int32)
    if validation is not None and len(validation[1]):
        x_val = tf.constant(validation[0])
        y_val = tf.constant(validation[1].astype(np.int32))
    else:
        x_val = y_val = None

    w = tf.Variable(tf.zeros([dim, num_classes]))
    b = tf.Variable(tf.zeros([num_classes]))
    slots = [tf.Variable(tf.zeros_like(v)) for v in (w, b, w, b)]  # m_w, m_b, v_w, v_b
    t = tf.Variable(0.0)
    lr = tf.constant(learning_rate, tf.float32)

    def loss_and_accuracy(x, y):
        logits = tf.matmul((x - tf_mean) * tf_inv_std, w) + b
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, tf.int32), y), tf.float32))
        return loss, acc

    @tf.function
    def run(xs, ys):  # float32 [k, B, D], int32 [k, B]: k optimisation steps
        loss = acc = tf.constant(0.0)
        for i in tf.range(tf.shape(xs)[0]):
            x, y = xs[i], ys[i]
            with tf.GradientTape() as tape:
                loss, acc = loss_and_accuracy(x, y)
            grads = tape.gradient(loss, [w, b])
            t.assign_add(1.0)
            for var, g, m, v in zip((w, b), grads, slots[:2], slots[2:]):
                if optimizer == "adam":
                    m.assign(0.9 * m + 0.1 * g)
                    v.assign(0.999 * v + 0.001 * tf.square(g))
                    m_hat = m / (1.0 - tf.pow(0.9, t))
                    v_hat = v / (1.0 - tf.pow(0.999, t))
                    var.assign_sub(lr * m_hat / (tf.sqrt(v_hat) + 1e-7))
                elif optimizer == "momentum":
                    m.assign(0.9 * m + g)
                    var.assign_sub(lr * m)
                else:
                    var.assign_sub(lr * g)
        return loss, acc

    @tf.function
    def evaluate(x, y):
        return loss_and_accuracy(x, y)

    rng = np.random.default_rng(seed)
    batch = min(batch_size, n) if batch_size > 0 else n
    writers = None
    if summary_dir:
        writers = {s: tf.summary.create_file_writer(f"{summary_dir}/{s}")
                   for s in ("train", "validation")}
    history = []
    step = 0
    # Steps per call of `run`: enough to amortise the call, few enough that the
    # gathered batches stay small (about _CHUNK_ROWS rows).
    per_call = max(1, _CHUNK_ROWS // batch)
    while step < steps:
        k = min(eval_interval, steps - step)
        for done in range(0, k, per_call):
            m = min(per_call, k - done)
            if batch == n:
                batches = np.tile(np.arange(n, dtype=np.int32), (m, 1))
            else:
                batches = np.stack([rng.choice(n, batch, replace=False) for _ in range(m)])
            loss, acc = run(tf.constant(features[batches]), tf.constant(labels[batches]))
        step += k
        row = {"step": step, "train_accuracy": float(acc), "train_cross_entropy": float(loss)}
        if x_val is not None:
            v_loss, v_acc = evaluate(x_val, y_val)
            row.update(validation_accuracy=float(v_acc), validation_cross_entropy=float(v_loss))
        history.append(row)
        evals_total = -(-steps // eval_interval)
        if len(history) % max(1, evals_total // 10) == 0 or step >= steps:
            log.info(
                "Step %d: train accuracy = %.1f%%, cross entropy = %.4f%s", step,
                100 * row["train_accuracy"], row["train_cross_entropy"],
                f", validation accuracy = {100 * row['validation_accuracy']:.1f}% "
                f"(N={len(validation[1])}), cross entropy = {row['validation_cross_entropy']:.4f}"
                if x_val is not None else "",
            )
        if writers:
            with writers["train"].as_default(step=step):
                tf.summary.scalar("accuracy", row["train_accuracy"])
                tf.summary.scalar("cross_entropy", row["train_cross_entropy"])
                tf.summary.histogram("final_layer/weights", w)
                tf.summary.histogram("final_layer/biases", b)
            if x_val is not None:
                with writers["validation"].as_default(step=step):
                    tf.summary.scalar("accuracy", row["validation_accuracy"])
                    tf.summary.scalar("cross_entropy", row["validation_cross_entropy"])
    if writers:
        for writer in writers.values():
            writer.close()
    weights = w.numpy() / std[:, None]
    bias = b.numpy() - (mean / std) @ w.numpy()
    return TrainResult(Head(weights.astype(np.float32), bias.astype(np.float32)), history,
                       time.perf_counter() - start)
