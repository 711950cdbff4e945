"""Fine-tune the feature extractor together with the new layer, on images."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional, Sequence

import numpy as np

from trxsfr.base import imaging
from trxsfr.base.config import ProgressFn, RetrainConfig
from trxsfr.base.errors import ModuleError
from trxsfr.train import augment

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FineTuneOptions:
    steps: int = RetrainConfig.fine_tune_steps
    learning_rate: float = RetrainConfig.fine_tune_learning_rate
    batch_size: int = RetrainConfig.fine_tune_batch_size
    seed: int = RetrainConfig.seed

    @classmethod
    def of(cls, config: RetrainConfig) -> "FineTuneOptions":
        return cls(config.fine_tune_steps, config.fine_tune_learning_rate,
                   config.fine_tune_batch_size, config.seed)


@dataclasses.dataclass
class FineTuneResult:
    weights: np.ndarray  # float32 [D, C], the new layer after fine-tuning
    bias: np.ndarray  # float32 [C]
    losses: list[float]  # training cross-entropy per step
    variables: int  # how many extractor variables were trained
    seconds: float


def fine_tune(extractor, weights: np.ndarray, bias: np.ndarray, paths: Sequence[str],
              labels: Sequence[int], options: FineTuneOptions,
              distortion: Optional[augment.Distortion] = None,
              on_progress: Optional[ProgressFn] = None) -> FineTuneResult:
    """Train the extractor's trainable variables and the new layer for `options.steps` steps.

    The extractor runs in inference mode, so batch-norm moving statistics stay
    frozen (small batches would wreck them); only trainable variables change.
    They change in place: the exported model carries them.

    Args:
        extractor: modules.Extractor whose module has trainable variables.
        weights, bias: the trained head (raw-feature space) to start from.
        paths, labels: training images and their class indices.
        distortion: optional; each step sees freshly distorted views.
        on_progress: told of each step ("fine-tune").

    Raises:
        ModuleError: the module has no trainable variables.
    """
    import tensorflow as tf

    variables = extractor.trainable_variables
    if not variables:
        raise ModuleError(
            f"module {extractor.handle} has no trainable variables, so it cannot be fine-tuned; "
            f"drop --fine_tune_steps or use a module exported with trainable weights"
        )
    start = time.perf_counter()
    w = tf.Variable(weights)
    b = tf.Variable(bias)
    train_vars = variables + [w, b]
    slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in train_vars]
    t = tf.Variable(0, dtype=tf.int64)
    lr = tf.constant(options.learning_rate, tf.float32)

    @tf.function
    def step(images, y):
        t.assign_add(1)
        with tf.GradientTape() as tape:
            logits = tf.matmul(extractor.fn(images), w) + b
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, train_vars)
        s = tf.cast(t, tf.float32)
        for var, g, (m, v) in zip(train_vars, grads, slots):
            if g is None:
                continue
            tf.raw_ops.ResourceApplyAdam(
                var=var.handle, m=m.handle, v=v.handle, beta1_power=tf.pow(0.9, s),
                beta2_power=tf.pow(0.999, s), lr=lr, beta1=0.9, beta2=0.999, epsilon=1e-7,
                grad=tf.convert_to_tensor(g))
        return loss

    rng = np.random.default_rng(options.seed)
    labels = np.asarray(labels, np.int32)
    per_pass = len(paths)
    losses = []
    view = augment.view_of(distortion) if distortion else None
    done = 0
    while done < options.steps:
        order = rng.permutation(per_pass)
        seeds = rng.integers(0, 2**62, (per_pass, 2), dtype=np.int64) if distortion else None
        ds = imaging.image_dataset([paths[i] for i in order], extractor.image_size,
                                   options.batch_size, view, seeds)
        for pos, images in imaging.batches(ds):
            y = tf.constant(labels[order[pos.numpy()]])
            losses.append(float(step(images, y)))
            done += 1
            if on_progress:
                on_progress("fine-tune", 1, options.steps)
            if done % max(1, options.steps // 10) == 0 or done == options.steps:
                log.info("Fine-tune step %d: cross entropy = %.4f", done, losses[-1])
            if done >= options.steps:
                break
    return FineTuneResult(w.numpy(), b.numpy(), losses, len(variables),
                          time.perf_counter() - start)


def features_of(extractor, paths: Sequence[str], batch_size: int = 32) -> tuple[np.ndarray, list[int]]:
    """Plain (undistorted) features of `paths` with the extractor as it is now: [len(ok), D], ok."""
    rows, ok = [], []
    for pos, images in imaging.batches(imaging.image_dataset(paths, extractor.image_size,
                                                             batch_size)):
        rows.append(extractor.fn(images).numpy())
        ok += [int(p) for p in pos.numpy()]
    if not rows:
        return np.zeros((0, extractor.dim), np.float32), []
    return np.concatenate(rows), ok
