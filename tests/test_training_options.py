"""The new layer's options on synthetic vectors (milliseconds each), one retrain that checks
the flags reach the layer, and through the CLI: sweeps, cached augmentation, fine-tuning,
keras: modules."""

import dataclasses
import json
import os

import numpy as np
import pytest
from helpers import FAST_TRAIN, dests, exported_variables, run_cli

from trxsfr.base import contract
from trxsfr.train import head
from trxsfr.train.head import HeadOptions


def metadata(version_dir):
    with open(contract.info_path(version_dir)) as f:
        return json.load(f)


# ---------------------------------------------------------------- the head on synthetic vectors

def centres(classes, dim, spread, seed):
    """float64 [classes, dim]: one Gaussian centre per class."""
    return np.random.default_rng(seed).normal(0, spread, (classes, dim))


def blobs(centre, counts, seed):
    """(float32 [sum(counts), dim], int64 labels): unit Gaussians around each class centre,
    scaled and shifted as raw bottlenecks are (the head must standardise them itself)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + rng.normal(0, 1, (n, len(c))) for c, n in zip(centre, counts)])
    y = np.concatenate([np.full(n, k, np.int64) for k, n in enumerate(counts)])
    return (3 * x + 5).astype(np.float32), y


def cross_entropy(h, x, y):
    return float(-np.log(h.probabilities(x)[np.arange(len(y)), y]).mean())


def reference_fit(x, y, classes, o: HeadOptions):
    """The textbook full-batch update of softmax regression on standardised features, in
    float64: cross-entropy on smoothed targets, rows weighted n / (classes * count) when
    balanced, L2 on the weights (not the bias), and SGD, momentum 0.9 or Adam (0.9, 0.999).
    Returns (weights, bias) for raw features, as head.train does."""
    x = x.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    xs = (x - mean) / std
    n, dim = xs.shape
    target = np.eye(classes)[y] * (1 - o.label_smoothing) + o.label_smoothing / classes
    row_weight = (np.ones(n) if o.class_weight == "none"
                  else (n / (classes * np.bincount(y, minlength=classes)))[y])
    params = np.zeros((dim + 1, classes))
    m, v = np.zeros_like(params), np.zeros_like(params)
    for t in range(1, o.steps + 1):
        w, b = params[:dim], params[dim]
        z = xs @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - target) * row_weight[:, None] / n
        grad = np.vstack([xs.T @ g + 2 * o.l2 * w, g.sum(axis=0)])
        if o.optimizer == "sgd":
            params = params - o.learning_rate * grad
        elif o.optimizer == "momentum":
            m = 0.9 * m + grad
            params = params - o.learning_rate * m
        else:
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad ** 2
            params = params - o.learning_rate * (m / (1 - 0.9 ** t)) / (
                np.sqrt(v / (1 - 0.999 ** t)) + 1e-7)
    w_raw = params[:dim] / std[:, None]
    return w_raw, params[dim] - mean @ w_raw


@pytest.mark.parametrize("optimizer", head.OPTIMIZERS)
@pytest.mark.parametrize("option", [{}, {"label_smoothing": 0.2}, {"l2": 0.05},
                                    {"class_weight": "balanced"}],
                         ids=["plain", "label_smoothing", "l2", "balanced"])
def test_full_batch_training_is_the_textbook_update(optimizer, option):
    x, y = blobs(centres(3, 6, 1.0, seed=11), [30, 20, 10], seed=12)
    o = HeadOptions(steps=8, learning_rate=0.1, batch_size=-1, eval_interval=3,
                    optimizer=optimizer, **option)
    got = head.train(x, y, 3, o).head
    want = reference_fit(x, y, 3, o)
    # Adam divides by the gradient's size, which magnifies float32 rounding where a gradient
    # is near zero: its tolerance is 1/20 of one step (lr), still far below any option's effect.
    tol = 5e-3 if optimizer == "adam" else 1e-5
    np.testing.assert_allclose(got.weights, want[0], atol=tol)
    np.testing.assert_allclose(got.bias, want[1], atol=tol)
    # The check has teeth: another optimiser, or the option left at its default, lands far away.
    others = [dataclasses.replace(o, optimizer=name)
              for name in head.OPTIMIZERS if name != optimizer]
    if option:
        others.append(dataclasses.replace(o, **{k: getattr(HeadOptions(), k) for k in option}))
    for other in others:
        assert np.abs(reference_fit(x, y, 3, other)[1] - want[1]).max() > 10 * tol, other


def test_unknown_optimizer_or_class_weight_is_refused():
    x, y = blobs(centres(2, 3, 1.0, seed=0), [5, 5], seed=1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        head.train(x, y, 2, HeadOptions(steps=1, optimizer="rmsprop"))
    with pytest.raises(ValueError, match="class_weight must be one of"):
        head.train(x, y, 2, HeadOptions(steps=1, class_weight="inverse"))


def test_balanced_class_weights_raise_minority_recall():
    np.testing.assert_allclose(head.class_weights(np.array([0] * 40 + [1] * 10), 3, "balanced"),
                               [50 / 120, 50 / 30, 0])  # an absent class weighs nothing
    np.testing.assert_array_equal(head.class_weights(np.array([0, 0, 1]), 2, "none"), [1, 1])
    # Two overlapping classes, one ten times larger: a plain fit favours it.
    centre = centres(2, 8, 0.5, seed=0)
    x, y = blobs(centre, [400, 40], seed=1)
    x_held, y_held = blobs(centre, [300, 300], seed=2)
    recall = {}
    for mode in head.CLASS_WEIGHTS:
        h = head.train(x, y, 2, HeadOptions(steps=300, eval_interval=50, class_weight=mode)).head
        recall[mode] = float(np.mean(h.logits(x_held[y_held == 1]).argmax(axis=1) == 1))
    assert recall["balanced"] >= recall["none"] + 0.3, recall


def test_early_stopping_stops_after_patience_and_keeps_the_best_weights():
    # Few training vectors in many dimensions: validation loss falls, then rises as it overfits.
    centre = centres(3, 40, 0.35, seed=3)
    x, y = blobs(centre, [10, 10, 10], seed=4)
    x_val, y_val = blobs(centre, [50, 50, 50], seed=5)
    o = HeadOptions(steps=2000, eval_interval=10, batch_size=-1, early_stopping_patience=3)
    stopped = head.train(x, y, 3, o, validation=(x_val, y_val))
    history = stopped.history
    best = min(history, key=lambda row: row["validation_cross_entropy"])
    assert history[0]["step"] < best["step"] == stopped.best_step  # fell at first
    assert history[-1]["step"] == best["step"] + 3 * 10 < 2000  # 3 evaluations without a better one
    assert cross_entropy(stopped.head, x_val, y_val) == pytest.approx(
        best["validation_cross_entropy"], abs=1e-5)  # the best weights, not the last ones
    full = head.train(x, y, 3, dataclasses.replace(o, early_stopping_patience=0),
                      validation=(x_val, y_val))
    assert full.history[-1]["step"] == full.best_step == 2000
    assert cross_entropy(full.head, x_val, y_val) > best["validation_cross_entropy"] + 0.2


def test_label_smoothing_lowers_confidence_not_accuracy():
    x, y = blobs(centres(3, 8, 2.0, seed=7), [60, 40, 30], seed=8)
    confidence, accuracy = {}, {}
    for smoothing in (0.0, 0.2):
        h = head.train(x, y, 3, HeadOptions(steps=400, eval_interval=100,
                                            label_smoothing=smoothing)).head
        p = h.probabilities(x)
        confidence[smoothing] = float(p.max(axis=1).mean())
        accuracy[smoothing] = float(np.mean(p.argmax(axis=1) == y))
    assert confidence[0.0] > 0.95 and confidence[0.2] < 0.9, confidence
    assert min(accuracy.values()) > 0.95, accuracy


def test_l2_shrinks_the_weights():
    x, y = blobs(centres(3, 8, 2.0, seed=7), [60, 40, 30], seed=8)
    norm = {l2: float(np.linalg.norm(head.train(
        x, y, 3, HeadOptions(steps=400, eval_interval=100, l2=l2)).head.weights))
        for l2 in (0.0, 0.1)}
    assert norm[0.1] < norm[0.0] / 2, norm


def test_seed_picks_the_batches_same_seed_same_weights():
    x, y = blobs(centres(3, 8, 1.0, seed=9), [40, 40, 40], seed=10)

    def fit(**kw):
        o = HeadOptions(steps=60, eval_interval=20, batch_size=16, **kw)
        return head.train(x, y, 3, o).head

    a, b, c = fit(seed=3), fit(seed=3), fit(seed=7)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.bias, b.bias)
    assert not np.allclose(a.weights, c.weights)


def test_whole_batch_ignores_the_seed_unless_dropout_draws_masks():
    x, y = blobs(centres(3, 8, 1.0, seed=9), [40, 40, 40], seed=10)

    def fit(**kw):
        return head.train(x, y, 3, HeadOptions(steps=60, eval_interval=20, **kw)).head.weights

    whole = fit(batch_size=-1, seed=1)
    np.testing.assert_array_equal(whole, fit(batch_size=-1, seed=2))  # no sampling at all
    np.testing.assert_array_equal(whole, fit(batch_size=10 * len(y), seed=2))  # capped at N
    assert not np.allclose(whole, fit(batch_size=16, seed=1))
    dropped = fit(batch_size=-1, seed=1, dropout=0.3)
    np.testing.assert_array_equal(dropped, fit(batch_size=-1, seed=1, dropout=0.3))
    assert not np.allclose(dropped, fit(batch_size=-1, seed=2, dropout=0.3))
    assert not np.allclose(dropped, whole)


def test_eval_interval_sets_the_history_rows():
    centre = centres(2, 4, 1.0, seed=0)
    x, y = blobs(centre, [20, 20], seed=1)
    with_validation = head.train(x, y, 2, HeadOptions(steps=100, eval_interval=30),
                                 validation=blobs(centre, [5, 5], seed=2))
    assert [row["step"] for row in with_validation.history] == [30, 60, 90, 100]
    assert set(with_validation.history[-1]) == {
        "step", "train_accuracy", "train_cross_entropy", "validation_accuracy",
        "validation_cross_entropy"}
    alone = head.train(x, y, 2, HeadOptions(steps=100, eval_interval=40))
    assert [row["step"] for row in alone.history] == [40, 80, 100]
    assert "validation_accuracy" not in alone.history[-1]


# ---------------------------------------------------------------- through the CLI

def test_retrain_flags_reach_the_head_and_the_exported_config(fx, tmp_path, monkeypatch):
    """Each option's effect is tested on the head above; here the flags must arrive."""
    calls = []
    real_train = head.train

    def spy(*args, **kwargs):
        calls.append((args, kwargs, real_train(*args, **kwargs)))
        return calls[-1][2]

    monkeypatch.setattr(head, "train", spy)
    r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                *dests(tmp_path), "--how_many_training_steps", 200, "--optimizer", "momentum",
                "--learning_rate", 0.05, "--label_smoothing", 0.1, "--l2", 0.01, "--dropout", 0.2,
                "--class_weight", "balanced", "--early_stopping_patience", 2,
                "--train_batch_size", -1, "--eval_step_interval", 20, "--seed", 5, "--quiet")
    assert r.code == 0, r
    assert "Final test accuracy = " in r.out
    (args, kwargs, result), = calls
    options = args[3] if len(args) > 3 else kwargs["options"]
    assert options == HeadOptions(
        steps=200, learning_rate=0.05, batch_size=-1, eval_interval=20, seed=5,
        optimizer="momentum", label_smoothing=0.1, l2=0.01, dropout=0.2, class_weight="balanced",
        early_stopping_patience=2)
    meta = metadata(r.lines[-1])
    flags = {"how_many_training_steps": 200, "optimizer": "momentum", "learning_rate": 0.05,
             "label_smoothing": 0.1, "l2": 0.01, "dropout": 0.2, "class_weight": "balanced",
             "early_stopping_patience": 2, "train_batch_size": -1, "eval_step_interval": 20,
             "seed": 5}
    assert {k: meta["config"][k] for k in flags} == flags
    assert meta["best_step"] == result.best_step
    assert [row["step"] for row in meta["history"]] == [row["step"] for row in result.history]
    assert all(row["step"] % 20 == 0 for row in meta["history"])
    weights, bias = exported_variables(r.lines[-1])
    np.testing.assert_array_equal(weights, result.head.weights)  # the trained layer is exported
    np.testing.assert_array_equal(bias, result.head.bias)


def test_sweep_picks_lowest_validation_loss_and_equals_plain_run(fx, tmp_path):
    r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                *dests(tmp_path, "sweep"), "--learning_rate", "0.0003,0.01", "--l2", "0,0.05",
                "--train_batch_size", 16, *FAST_TRAIN)
    assert r.code == 0, r
    assert "Sweep (lowest validation cross entropy is exported):" in r.out
    meta = metadata(r.lines[-1])
    rows = meta["sweep"]
    assert len(rows) == 4 and sum(row["chosen"] for row in rows) == 1
    best = min(rows, key=lambda row: row["validation_cross_entropy"])
    assert best["chosen"]
    assert meta["config"]["learning_rate"] == best["learning_rate"]
    plain = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                    *dests(tmp_path, "plain"), "--learning_rate", best["learning_rate"],
                    "--l2", best["l2"], "--train_batch_size", 16, *FAST_TRAIN)
    assert plain.code == 0, plain
    for a, b in zip(exported_variables(r.lines[-1]), exported_variables(plain.lines[-1])):
        np.testing.assert_array_equal(a, b)


def test_augmentation_is_cached_and_never_touches_held_out_images(fx, tmp_path):
    args = ["retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
            *dests(tmp_path), "--flip_left_right", "--random_crop", 10, "--random_scale", 10,
            "--random_brightness", 10, "--augment_copies", 3, *FAST_TRAIN]
    first = run_cli(*args)
    assert first.code == 0, first
    meta = metadata(first.lines[-1])
    n_train = sum(c["train"] for c in meta["split_counts"].values())
    assert f"Augmented views: 0 reused from cache, {3 * n_train} computed" in first.out
    assert meta["augmentation"]["views"] == 3 * n_train  # training images only
    again = run_cli(*args)
    assert f"Augmented views: {3 * n_train} reused from cache, 0 computed" in again.out
    assert "Bottlenecks: 120 reused from cache, 0 computed" in again.out
    other = run_cli(*[a if a != 10 else 20 for a in args])  # other flags: other vectors
    assert f"Augmented views: 0 reused from cache, {3 * n_train} computed" in other.out


def test_distorted_views_differ_from_the_plain_image(fx):
    import tensorflow as tf

    from trxsfr.base import imaging
    from trxsfr.train import augment

    data = tf.io.read_file(os.path.join(fx["images"], "red", "red_0000.jpg"))
    plain = imaging.decode_and_resize(data, (32, 32))
    d = augment.Distortion(True, 10, 10, 10)
    a = augment.distort(data, (32, 32), d, tf.constant([1, 2], tf.int64))
    b = augment.distort(data, (32, 32), d, tf.constant([1, 2], tf.int64))
    c = augment.distort(data, (32, 32), d, tf.constant([3, 4], tf.int64))
    assert a.shape == plain.shape
    np.testing.assert_array_equal(a, b)  # same seed, same view: cacheable
    assert not np.allclose(a, c) and not np.allclose(a, plain)


def test_fine_tuning_updates_weights_not_batch_norm_and_matches_label(fx, tmp_path):
    import tensorflow as tf

    r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                *dests(tmp_path), "--fine_tune_steps", 15, "--fine_tune_learning_rate", 0.01,
                *FAST_TRAIN)
    assert r.code == 0, r
    assert "Fine-tuned" in r.out
    version = r.lines[-1]
    assert metadata(version)["fine_tuned"]["steps"] == 15
    before = tf.saved_model.load(fx["module"])
    after = tf.saved_model.load(version)
    assert not np.allclose(before.kernels[0].numpy(), after.extractor.kernels[0].numpy())
    np.testing.assert_array_equal(before.moving_mean.numpy(), after.extractor.moving_mean.numpy())
    np.testing.assert_array_equal(before.moving_variance.numpy(),
                                  after.extractor.moving_variance.numpy())
    files = [os.path.join(fx["heldout"], c, f"{c}_0003.jpg") for c in ("red", "green", "blue")]
    doc = json.loads(run_cli("label", "--model", version, "--format", "json", "--quiet", *files).out)
    served = after.signatures[contract.SIGNATURE_BYTES](
        image_bytes=tf.constant([open(f, "rb").read() for f in files]))
    np.testing.assert_allclose([p["probabilities"] for p in doc["predictions"]],
                               served["probabilities"].numpy(), atol=1e-5)


def test_fine_tuning_a_module_without_trainable_variables_is_refused(fx, tmp_path):
    import tensorflow as tf

    class Frozen(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, axis=[1, 2])

    tf.saved_model.save(Frozen(), str(tmp_path / "frozen"))
    r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", tmp_path / "frozen",
                *dests(tmp_path), "--fine_tune_steps", 5, *FAST_TRAIN)
    assert r.code == 2 and "has no trainable variables" in r.err, r


@pytest.fixture
def keras_offline(tmp_path, monkeypatch):
    from trxsfr.base import keras_apps

    monkeypatch.setenv("TRXSFR_HOME", str(tmp_path / "home"))
    return keras_apps


@pytest.mark.slow
def test_keras_module_exports_and_caches_like_a_hub_module(fx, tmp_path, keras_offline, monkeypatch):
    monkeypatch.setattr(keras_offline, "WEIGHTS", None)  # the network-free stand-in
    args = ["retrain", "--image_dir", fx["images"], "--tfhub_module", "keras:mobilenet_v3_small",
            *dests(tmp_path), *FAST_TRAIN]
    first = run_cli(*args)
    assert first.code == 0, first
    meta = metadata(first.lines[-1])
    assert meta["module"]["handle"] == "keras:mobilenet_v3_small"
    assert meta["module"]["image_size"] == [224, 224] and meta["module"]["feature_dim"] == 576
    again = run_cli(*args)
    assert "Bottlenecks: 120 reused from cache, 0 computed" in again.out, again
    files = [os.path.join(fx["heldout"], "red", "red_0000.jpg")]
    label = json.loads(run_cli("label", "--model", again.lines[-1], "--format", "json",
                               "--quiet", *files).out)
    import tensorflow as tf

    served = tf.saved_model.load(again.lines[-1]).signatures[contract.SIGNATURE_BYTES](
        image_bytes=tf.constant([open(files[0], "rb").read()]))
    np.testing.assert_allclose(label["predictions"][0]["probabilities"],
                               served["probabilities"].numpy()[0], atol=1e-5)


def test_keras_module_offline_names_what_it_tried_to_fetch(fx, tmp_path, keras_offline):
    r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", "keras:mobilenet_v3_small",
                *dests(tmp_path), *FAST_TRAIN)
    assert r.code == 2, r
    assert "could not get the imagenet weights of keras:mobilenet_v3_small (tried https://" in r.err
    assert "keras" in r.err and "models" in r.err
    unknown = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", "keras:nope",
                      *dests(tmp_path), *FAST_TRAIN)
    assert unknown.code == 2 and "unknown keras:nope" in unknown.err
