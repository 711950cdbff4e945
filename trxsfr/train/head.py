"""Train the new softmax layer on cached bottleneck vectors."""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Optional

import numpy as np

from trxsfr.base.config import RetrainConfig, default_eval_interval

log = logging.getLogger(__name__)

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


def _standardiser(features: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and deviation, in row chunks: float64 temporaries of `chunk` rows
    (2.6 MB at D=1280), so memory does not grow with the number of images."""
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

    steps: int = RetrainConfig.how_many_training_steps
    learning_rate: float = RetrainConfig.learning_rate
    batch_size: int = RetrainConfig.train_batch_size  # -1: the whole training set
    eval_interval: int = default_eval_interval(RetrainConfig.how_many_training_steps)
    seed: int = RetrainConfig.seed
    optimizer: str = RetrainConfig.optimizer
    label_smoothing: float = RetrainConfig.label_smoothing
    l2: float = RetrainConfig.l2
    dropout: float = RetrainConfig.dropout
    class_weight: str = RetrainConfig.class_weight
    # evaluations without a better validation loss; 0: off
    early_stopping_patience: int = RetrainConfig.early_stopping_patience

    @classmethod
    def of(cls, config: RetrainConfig) -> "HeadOptions":
        """The head's settings of a retrain run (its first value of each swept setting)."""
        steps = config.how_many_training_steps
        return cls(
            steps=steps, learning_rate=config.learning_rate,
            batch_size=config.train_batch_size,
            eval_interval=config.eval_step_interval or default_eval_interval(steps),
            seed=config.seed, optimizer=config.optimizer,
            label_smoothing=config.label_smoothing, l2=config.l2, dropout=config.dropout,
            class_weight=config.class_weight,
            early_stopping_patience=config.early_stopping_patience)


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> np.ndarray:
    """float32 [num_classes]: 1 for "none"; n / (classes * count) for "balanced"."""
    if mode == "none":
        return np.ones(num_classes, np.float32)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0).astype(np.float32)


def write_summaries(summary_dir: str, history: list[dict], snapshots: list) -> None:
    """TensorBoard event files: `<dir>/train` and `<dir>/validation` scalars per
    evaluation, histograms of the new layer at the snapshot steps.

    Written with TensorBoard's own NumPy protobuf writers (the TF2 summary format
    `tf.summary` writes), not `tf.summary`: one eager op per value cost 0.3-0.6 s
    a run, more than a third of the head's training time.
    """
    import time

    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.histogram.summary_v2 import histogram_pb
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for split in ("train", "validation"):
        rows = [r for r in history if f"{split}_accuracy" in r]
        if not rows:
            continue
        writer = EventFileWriter(f"{summary_dir}/{split}")
        now = time.time()

        def add(step, summary):
            writer.add_event(event_pb2.Event(wall_time=now, step=int(step), summary=summary))

        for r in rows:
            add(r["step"], scalar_pb("accuracy", np.float32(r[f"{split}_accuracy"])))
            add(r["step"], scalar_pb("cross_entropy", np.float32(r[f"{split}_cross_entropy"])))
        if split == "train":
            for step, weights, bias in snapshots:
                add(step, histogram_pb("final_layer/weights", np.asarray(weights, np.float64)))
                add(step, histogram_pb("final_layer/biases", np.asarray(bias, np.float64)))
        writer.close()


def train(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    options: HeadOptions,
    validation: Optional[tuple[np.ndarray, np.ndarray]] = None,
    summary_dir: Optional[str] = None,
    on_step: Optional[Callable[[int, Callable[[], Head]], None]] = None,
) -> TrainResult:
    """Fit softmax regression with mini-batches sampled by `options.seed`.

    Features are standardised with the training set's mean and deviation inside
    the loop (fast, well-conditioned learning) and the scaling is folded back
    into the returned weights, so the exported layer takes raw bottlenecks.
    `features` is never copied whole: each step gathers its batch. The loop is
    NumPy: for a layer this small, TensorFlow's per-op dispatch costs more
    than the arithmetic.

    Args:
        features: float32 [N, D] training bottlenecks.
        labels: int [N] class indices in [0, num_classes).
        options: optimiser, regularisation and schedule.
        validation: optional (float32 [M, D], int [M]) evaluated every `eval_interval` steps;
            needed for early stopping.
        summary_dir: write TensorBoard summaries to `<summary_dir>/train` and `/validation`.
        on_step: called after every step with the step number (from 1) and a function
            that returns the head as it is at that step (computed only when called).

    Returns:
        The head (the best one by validation cross-entropy under early stopping)
        and its evaluation history. The same inputs and options give the same weights.
    """
    import time

    o = options
    if o.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {o.optimizer}")
    if o.class_weight not in CLASS_WEIGHTS:
        raise ValueError(f"class_weight must be one of {CLASS_WEIGHTS}, got {o.class_weight}")
    start = time.perf_counter()
    n, dim = features.shape
    mean, std = _standardiser(features)
    inv_std = (1.0 / std).astype(np.float32)
    labels = labels.astype(np.int64)
    per_class = class_weights(labels, num_classes, o.class_weight)
    weighted = o.class_weight != "none"
    smooth_on = np.float32(1.0 - o.label_smoothing + o.label_smoothing / num_classes)
    smooth_off = np.float32(o.label_smoothing / num_classes)
    x_val = y_val = None
    if validation is not None and len(validation[1]):
        x_val, y_val = validation[0], validation[1].astype(np.int64)

    # Weights live in standardised space (w, b); raw features map through
    # w_raw = w * inv_std, b_raw = b - mean @ w_raw, so no standardised copy is made.
    # w and b are views of one array, and so are their gradients, so each optimiser
    # operation runs once per step (for arrays this small, NumPy's per-call cost is most
    # of a step).
    params = np.zeros((dim + 1, num_classes), np.float32)
    w, b = params[:dim], params[dim]
    grad = np.zeros_like(params)
    dw, db = grad[:dim], grad[dim]
    m, v, scratch = np.zeros_like(params), np.zeros_like(params), np.zeros_like(params)
    drop_rng = np.random.default_rng([o.seed, 1])

    def raw_weights():
        w_raw = w * inv_std[:, None]
        return w_raw, b - mean @ w_raw

    def softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def loss_and_accuracy(x, y):
        w_raw, b_raw = raw_weights()
        z = x @ w_raw + b_raw
        z -= z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return (float(-log_p[np.arange(len(y)), y].mean()),
                float(np.mean(z.argmax(axis=1) == y)))

    def step_once(t, idx):
        nonlocal params, m, v, scratch, dw  # updated in place (augmented assignments)
        x = features[idx]
        if o.dropout > 0:  # the mask applies to standardised features: standardise the batch
            x -= mean
            x *= inv_std
            keep = drop_rng.random(x.shape, np.float32) >= o.dropout
            x *= keep / np.float32(1.0 - o.dropout)
            g = softmax(x @ w + b)
        else:  # standardise through the small weights instead of the batch
            w_raw, b_raw = raw_weights()
            g = softmax(x @ w_raw + b_raw)
        g -= smooth_off
        g[np.arange(len(idx)), labels[idx]] -= smooth_on - smooth_off
        if weighted:
            g *= per_class[labels[idx]][:, None]
        g /= np.float32(len(idx))
        g.sum(axis=0, out=db)
        np.matmul(x.T, g, out=dw)
        if o.dropout <= 0:  # d/dw of ((x - mean) * inv_std) @ w
            dw -= np.outer(mean, db)
            dw *= inv_std[:, None]
        if o.l2 > 0:
            dw += np.float32(2.0 * o.l2) * w
        if o.optimizer == "adam":
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            np.multiply(grad, 0.001, out=scratch)
            scratch *= grad
            v += scratch
            lr_t = np.float32(o.learning_rate * np.sqrt(1.0 - 0.999 ** t) / (1.0 - 0.9 ** t))
            np.multiply(m, lr_t, out=scratch)
            denominator = np.sqrt(v)
            denominator += np.float32(1e-7)
            scratch /= denominator
            params -= scratch
        elif o.optimizer == "momentum":
            m *= 0.9
            m += grad
            params -= np.float32(o.learning_rate) * m
        else:
            params -= np.float32(o.learning_rate) * grad

    def current_head():
        return Head(*(a.astype(np.float32) for a in raw_weights()))

    def run(batches, t0):
        for i, idx in enumerate(batches):
            step_once(t0 + i + 1, idx)
            if on_step is not None:
                on_step(t0 + i + 1, current_head)
        return loss_and_accuracy(features[batches[-1]], labels[batches[-1]])

    rng = np.random.default_rng(o.seed)
    batch = min(o.batch_size, n) if o.batch_size > 0 else n
    snapshots = []  # (step, weights, bias) for TensorBoard histograms, about 20 per run
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
        loss, acc = run(batches, step)
        step += k
        row = {"step": step, "train_accuracy": float(acc), "train_cross_entropy": float(loss)}
        if x_val is not None:
            v_loss, v_acc = loss_and_accuracy(x_val, y_val)
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
        if summary_dir and (len(history) % max(1, evals_total // 20) == 0 or step >= o.steps):
            snapshots.append((step, *raw_weights()))
        if o.early_stopping_patience > 0 and x_val is not None:
            if best is None or row["validation_cross_entropy"] < best[0]:
                best = (row["validation_cross_entropy"], step, w.copy(), b.copy())
                since_best = 0
            else:
                since_best += 1
                if since_best >= o.early_stopping_patience:
                    log.info("Early stop at step %d: validation cross entropy last improved "
                             "at step %d (%.4f); restoring those weights", step, best[1], best[0])
                    break
    if summary_dir:
        # Written once at the end (training takes seconds): one eager summary op per
        # value per evaluation would cost more than the training itself.
        write_summaries(summary_dir, history, snapshots)
    if best is not None:
        w[...], b[...] = best[2], best[3]
    weights, bias = raw_weights()
    return TrainResult(Head(weights.astype(np.float32), bias.astype(np.float32)), history,
                       time.perf_counter() - start, best[1] if best is not None else step)
