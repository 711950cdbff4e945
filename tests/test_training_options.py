"""Issue 6: balancing, sweeps, early stopping, cached augmentation, fine-tuning, keras: modules."""

import json
import os

import numpy as np
import pytest

from helpers import FAST_TRAIN, dests, exported_variables, run_cli
from trxsfr.kit import write_image_set


def metadata(version_dir):
    with open(os.path.join(version_dir, "assets", "trxsfr.json")) as f:
        return json.load(f)


def test_balanced_class_weight_raises_minority_recall(fx, tmp_path):
    # Two barely different colours, one class ten times larger: a plain fit favours it.
    colours = {"major": (160, 115, 95), "minor": (154, 118, 98)}
    for root, n_major, n_minor, seed in (("train", 200, 20, 1), ("held", 60, 60, 2)):
        write_image_set(str(tmp_path / root), n_major, ["major"], seed=seed, colours=colours)
        write_image_set(str(tmp_path / root), n_minor, ["minor"], seed=seed + 100, colours=colours)
    recall = {}
    for mode in ("none", "balanced"):
        r = run_cli("retrain", "--image_dir", tmp_path / "train", "--tfhub_module", fx["module"],
                    *dests(tmp_path, mode), "--class_weight", mode, "--testing_percentage", 0,
                    "--how_many_training_steps", 500, "--quiet")
        assert r.code == 0, r
        assert metadata(r.lines[-1])["config"]["class_weight"] == mode
        ev = json.loads(run_cli("label", "--model", tmp_path / mode, tmp_path / "held",
                                "--format", "json", "--quiet").out)["evaluation"]
        recall[mode] = ev["per_class"]["minor"]["recall"]
    assert recall["balanced"] >= recall["none"] + 0.1, recall


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


def test_train_batch_size_minus_one_trains_on_the_whole_split(fx, tmp_path):
    """As in TF's retrain.py and as `--help` says; the settings check once refused it."""
    r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                *dests(tmp_path), "--train_batch_size", -1, *FAST_TRAIN)
    assert r.code == 0, r
    assert metadata(r.lines[-1])["config"]["train_batch_size"] == -1
    assert "Final test accuracy = " in r.out


def test_early_stopping_keeps_the_best_weights(fx, tmp_path):
    r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                *dests(tmp_path), "--early_stopping_patience", 3, "--learning_rate", 1.0,
                "--how_many_training_steps", 2000, "--eval_step_interval", 10, "--quiet")
    assert r.code == 0, r
    meta = metadata(r.lines[-1])
    history = meta["history"]
    best = min(history, key=lambda row: row["validation_cross_entropy"])
    assert meta["best_step"] == best["step"]
    assert history[-1]["step"] == best["step"] + 30  # stopped 3 evaluations later
    assert history[-1]["step"] < 2000


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

    data = tf.io.read_file(os.path.join(fx["images"], "red", "red_0000.jpg"))
    plain = imaging.decode_and_resize(data, (32, 32))
    d = imaging.Distortion(True, 10, 10, 10)
    a = imaging.distort(data, (32, 32), d, tf.constant([1, 2], tf.int64))
    b = imaging.distort(data, (32, 32), d, tf.constant([1, 2], tf.int64))
    c = imaging.distort(data, (32, 32), d, tf.constant([3, 4], tf.int64))
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
    served = after.signatures["serving_default"](
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

    served = tf.saved_model.load(again.lines[-1]).signatures["serving_default"](
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
