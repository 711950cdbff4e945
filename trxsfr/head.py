"""Train the new softmax layer on cached bottleneck vectors."""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

from trxsfr.arrays import as_tensor

OPTIMIZERS = ("adam", "momentum", "sgd")


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
    best_step: int  # the step whose weights were kept


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


CLASS_WEIGHTS = ("none", "balanced")


@dataclasses.dataclass(frozen=True)
class HeadOptions:
    """How to fit the new layer; RetrainConfig carries the user's values."""

    steps: int = 4000
    learning_rate: float = 0.01
    batch_size: int = 100
    eval_interval: int = 40
    seed: int = 0
    optimizer: str = "adam"
    label_smoothing: float = 0.0
    l2: float = 0.0
    dropout: float = 0.0
    class_weight: str = "none"
    early_stopping_patience: int = 0  # evaluations without a better validation loss; 0: off


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> np.ndarray:
    """float32 [num_classes]: 1 for "none"; n / (classes * count) for "balanced"."""
    if mode == "none":
        return np.ones(num_classes, np.float32)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0).astype(np.float32)


def train(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    options: HeadOptions,
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None,
    summary_dir: Optional[str] = None,
) -> TrainResult:
    """Fit softmax regression with mini-batches sampled by `options.seed`.

    Features are standardised with the training set's mean and deviation inside
    the loop (fast, well-conditioned learning) and the scaling is folded back
    into the returned weights, so the exported layer takes raw bottlenecks.
    `features` is not copied when it is 64-byte aligned (see `aligned_empty`):
    TensorFlow reads the caller's memory.

    Args:
        features: float32 [N, D] training bottlenecks.
        labels: int [N] class indices in [0, num_classes).
        options: optimiser, regularisation and schedule.
        validation: optional (float32 [M, D], int [M]) evaluated every `eval_interval` steps;
            needed for early stopping.
        summary_dir: write TensorBoard summaries to `<summary_dir>/train` and `/validation`.

    Returns:
        The head (the best one by validation cross-entropy under early stopping)
        and its evaluation history. The same inputs and options give the same weights.
    """
    import time

    import tensorflow as tf

    o = options
    if o.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {o.optimizer}")
    if o.class_weight not in CLASS_WEIGHTS:
        raise ValueError(f"class_weight must be one of {CLASS_WEIGHTS}, got {o.class_weight}")
    start = time.perf_counter()
    n, dim = features.shape
    mean, std = _standardiser(features)
    tf_mean, tf_inv_std = tf.constant(mean), tf.constant(1.0 / std)
    labels = labels.astype(np.int32)
    per_class = tf.constant(class_weights(labels, num_classes, o.class_weight))
    if validation is not None and len(validation[1]):
        x_val = tf.constant(validation[0])
        y_val = tf.constant(validation[1].astype(np.int32))
    else:
        x_val = y_val = None

    w = tf.Variable(tf.zeros([dim, num_classes]))
    b = tf.Variable(tf.zeros([num_classes]))
    slots = [tf.Variable(tf.zeros_like(v)) for v in (w, b, w, b)]  # m_w, m_b, v_w, v_b
    t = tf.Variable(0, dtype=tf.int64)
    lr = tf.constant(o.learning_rate, tf.float32)

    def logits_of(x, training=False):
        x = (x - tf_mean) * tf_inv_std
        if training and o.dropout > 0:
            x = tf.nn.experimental.stateless_dropout(
                x, o.dropout, seed=tf.stack([tf.constant(o.seed, tf.int64), t]))
        return tf.matmul(x, w) + b

    def loss_and_accuracy(x, y):
        logits = logits_of(x)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, tf.int32), y), tf.float32))
        return loss, acc

    def training_loss(x, y):
        logits = logits_of(x, training=True)
        target = tf.one_hot(y, num_classes) * (1.0 - o.label_smoothing) \
            + o.label_smoothing / num_classes
        ce = tf.nn.softmax_cross_entropy_with_logits(target, logits)
        loss = tf.reduce_mean(ce * tf.gather(per_class, y))
        if o.l2 > 0:
            loss += o.l2 * tf.reduce_sum(tf.square(w))
        plain = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, tf.int32), y), tf.float32))
        return loss, plain, acc

    x_train, y_train = as_tensor(features), tf.constant(labels)

    @tf.function
    def run(batches):  # int32 [k, B] row indices: k optimisation steps
        plain = acc = tf.constant(0.0)
        for i in tf.range(tf.shape(batches)[0]):
            t.assign_add(1)
            x, y = tf.gather(x_train, batches[i]), tf.gather(y_train, batches[i])
            with tf.GradientTape() as tape:
                loss, plain, acc = training_loss(x, y)
            grads = tape.gradient(loss, [w, b])
            step = tf.cast(t, tf.float32)
            for var, g, m, v in zip((w, b), grads, slots[:2], slots[2:]):
                # Fused kernels: one op per variable instead of a dozen small ones.
                if o.optimizer == "adam":
                    tf.raw_ops.ResourceApplyAdam(
                        var=var.handle, m=m.handle, v=v.handle,
                        beta1_power=tf.pow(0.9, step), beta2_power=tf.pow(0.999, step),
                        lr=lr, beta1=0.9, beta2=0.999, epsilon=1e-7, grad=g)
                elif o.optimizer == "momentum":
                    tf.raw_ops.ResourceApplyMomentum(
                        var=var.handle, accum=m.handle, lr=lr, grad=g, momentum=0.9)
                else:
                    tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=lr, delta=g)
        return plain, acc

    @tf.function
    def evaluate(x, y):
        return loss_and_accuracy(x, y)

    rng = np.random.default_rng(o.seed)
    batch = min(o.batch_size, n) if o.batch_size > 0 else n
    writers = None
    if summary_dir:
        writers = {s: tf.summary.create_file_writer(f"{summary_dir}/{s}")
                   for s in ("train", "validation")}
    history = []
    best = None  # (validation cross-entropy, step, w, b)
    since_best = 0
    step = 0
    evals_total = -(-o.steps // o.eval_interval)
    while step < o.steps:
        k = min(o.eval_interval, o.steps - step)
        if batch == n:
            batches = np.tile(np.arange(n, dtype=np.int32), (k, 1))
        else:
            batches = np.stack([rng.choice(n, batch, replace=False) for _ in range(k)])
        loss, acc = run(tf.constant(batches.astype(np.int32)))
        step += k
        row = {"step": step, "train_accuracy": float(acc), "train_cross_entropy": float(loss)}
        if x_val is not None:
            v_loss, v_acc = evaluate(x_val, y_val)
            row.update(validation_accuracy=float(v_acc), validation_cross_entropy=float(v_loss))
        history.append(row)
        if len(history) % max(1, evals_total // 10) == 0 or step >= o.steps:
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
        if o.early_stopping_patience > 0 and x_val is not None:
            if best is None or row["validation_cross_entropy"] < best[0]:
                best = (row["validation_cross_entropy"], step, w.numpy(), b.numpy())
                since_best = 0
            else:
                since_best += 1
                if since_best >= o.early_stopping_patience:
                    log.info("Early stop at step %d: validation cross entropy last improved "
                             "at step %d (%.4f); restoring those weights", step, best[1], best[0])
                    break
    if writers:
        for writer in writers.values():
            writer.close()
    w_final, b_final = (best[2], best[3]) if best is not None else (w.numpy(), b.numpy())
    weights = w_final / std[:, None]
    bias = b_final - (mean / std) @ w_final
    return TrainResult(Head(weights.astype(np.float32), bias.astype(np.float32)), history,
                       time.perf_counter() - start, best[1] if best is not None else step)
