"""Benchmark of cached augmentation (issue 6): `python -m benchmarks.bench_augment [--quick]`.

Builds its own data offline (the photo-sized pictures of `benchmarks.bench`) and a
MobileNet-V2-architecture extractor with fixed random weights
(`benchmarks.mobilenet_fixture`), then measures in one run, through `trxsfr.retrain`
(every figure read from the returned RetrainResult):

- a cold plain run (one extraction pass) and a cold run with
  `--augment_copies 4` and retrain.py's distortion flags: its bottleneck phase
  should cost about 5 passes (originals + 4 views);
- the head training time with and without the views (same 4000 steps);
- a rerun with the same flags, which must compute no vector;
- retrain.py's way, distorting and running the network for every training
  batch: timed for a few steps of batch 100 and scaled to the 4000 steps, and
  the speed-up of cached augmentation over it. The distortion is emulated here
  with retrain.py's operations (scale, random crop, flip, brightness) on top of
  trxsfr's JPEG decode, so the per-step cost is that of retrain.py's pipeline.

Prints one JSON document on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import numpy as np


def retrain_py_batches(paths, size, batch_size, distortion: dict, seeds):
    """tf.data batches of float32 [B, H, W, 3] in [0, 1]: file i distorted with `seeds[i]`
    (int64 [N, 2]) as TF retrain.py's add_input_distortions does, with `distortion` holding
    its flags (flip_left_right, random_crop, random_scale, random_brightness)."""
    import tensorflow as tf

    from trxsfr.base import imaging

    crop, scale_pct = distortion["random_crop"], distortion["random_scale"]
    brightness = distortion["random_brightness"]

    def view(path, seed):
        s = tf.random.experimental.stateless_split(seed, 4)
        image = tf.image.convert_image_dtype(imaging.decode_rgb(tf.io.read_file(path), size),
                                             tf.float32)
        scale = (1.0 + crop / 100.0) * tf.random.stateless_uniform(
            [], s[0], 1.0, 1.0 + scale_pct / 100.0 + 1e-9)
        precrop = tf.cast(tf.math.ceil(scale * tf.constant(size, tf.float32)), tf.int32)
        image = tf.image.resize(image, precrop, method="bilinear", antialias=True)
        image = tf.image.stateless_random_crop(image, [size[0], size[1], 3], s[1])
        if distortion["flip_left_right"]:
            image = tf.image.stateless_random_flip_left_right(image, s[2])
        if brightness:
            image *= tf.random.stateless_uniform([], s[3], 1.0 - brightness / 100.0,
                                                 1.0 + brightness / 100.0)
        return tf.clip_by_value(image, 0.0, 1.0)

    ds = tf.data.Dataset.from_tensor_slices((list(paths), tf.constant(seeds, tf.int64)))
    return ds.map(view, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_augment",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 images instead of 1,000.")
    parser.add_argument("--out", default=None, help="Work directory (default: a new temp dir).")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks import bench

    work = args.out or tempfile.mkdtemp(prefix="trxsfr-bench-augment-")
    os.makedirs(work, exist_ok=True)
    per_class = 60 if args.quick else 200
    bench.log(f"work dir {work}: {per_class * len(bench.CLASSES)} pictures")
    # Pictures first: their workers fork before TensorFlow is imported.
    images = bench.write_photos(os.path.join(work, "images"), per_class, seed=11, workers=2)
    import trxsfr
    from benchmarks.mobilenet_fixture import build_mobilenet_v2_extractor
    from trxsfr.base import extractors
    from trxsfr.base.config import RetrainConfig

    module = os.path.join(work, "mobilenet_v2")
    if not os.path.exists(os.path.join(module, "saved_model.pb")):
        build_mobilenet_v2_extractor(module)
    distortion = dict(flip_left_right=True, random_crop=10.0, random_scale=10.0,
                      random_brightness=10.0)
    base = RetrainConfig(image_dir=images, tfhub_module=module, summaries_dir="",
                         saved_model_dir=os.path.join(work, "models"))

    def run(name, **kw):
        bench.log(f"retrain: {name}")
        start = time.perf_counter()
        result = trxsfr.retrain(dataclasses.replace(base, **kw))
        return result, time.perf_counter() - start

    plain, plain_wall = run("plain, cold", bottleneck_dir=os.path.join(work, "cache-plain"))
    aug, aug_wall = run("augment_copies=4, cold", bottleneck_dir=os.path.join(work, "cache-aug"),
                        augment_copies=4, **distortion)
    again, again_wall = run("augment_copies=4, rerun",
                            bottleneck_dir=os.path.join(work, "cache-aug"),
                            augment_copies=4, **distortion)

    # retrain.py's way: every step distorts a batch of 100 training images and runs the network.
    bench.log("retrain.py's way: distorted forward passes per step")
    extractor = extractors.load(module)
    train = [plain.image_set.abs_path(it) for it in plain.image_set.items
             if it.split == "train"]
    rng = np.random.default_rng(0)
    steps_timed, batch = 3, 100
    seeds = rng.integers(0, 2**62, (steps_timed * batch, 2), dtype=np.int64)
    paths = [train[i] for i in rng.integers(0, len(train), steps_timed * batch)]
    it = iter(retrain_py_batches(paths, extractor.image_size, batch, distortion, seeds))
    extractor(next(it)).numpy()  # warm-up step, not timed
    start = time.perf_counter()
    for images in it:
        extractor(images).numpy()
    per_step = (time.perf_counter() - start) / (steps_timed - 1)
    steps = base.how_many_training_steps
    emulated = per_step * steps
    ours = aug.timings["bottlenecks_s"] + aug.timings["train_s"]
    n_train = len(train)
    doc = {
        "images": len(plain.image_set.items), "training_images": n_train,
        "augment_copies": 4, "distortion": distortion,
        "plain_cold": {"wall_s": plain_wall, "bottlenecks_s": plain.timings["bottlenecks_s"],
                       "train_s": plain.timings["train_s"], "computed": plain.computed},
        "augmented_cold": {"wall_s": aug_wall, "bottlenecks_s": aug.timings["bottlenecks_s"],
                           "train_s": aug.timings["train_s"], "views": aug.augmented},
        "augmented_rerun": {"wall_s": again_wall, "bottlenecks_s": again.timings["bottlenecks_s"],
                            "train_s": again.timings["train_s"], "views": again.augmented,
                            "computed": again.computed + again.augmented[1]},
        "figures": {
            "extraction_passes_of_augmented_cold_run": {
                "value": (plain.computed + aug.augmented[1]) / plain.computed,
                "cost_ratio": aug.timings["bottlenecks_s"] / plain.timings["bottlenecks_s"],
                "expected": "about 1 + augment_copies x (training share of the images)"},
            "train_time_with_views_over_without": {
                "value": aug.timings["train_s"] / plain.timings["train_s"],
                "target": "about 1 (same steps, same batch)"},
            "rerun_vectors_computed": {"value": again.computed + again.augmented[1], "target": 0,
                                       "meets_target": again.computed + again.augmented[1] == 0},
            "speedup_over_per_step_distortion": {
                "value": emulated / ours, "target": 20, "meets_target": emulated / ours >= 20,
                "raw": {"retrain_py_seconds_per_step_batch_100": per_step, "steps": steps,
                        "retrain_py_estimated_s": emulated,
                        "cached_bottlenecks_plus_training_s": ours}},
        },
        "test_accuracy": {"plain": plain.test_accuracy, "augmented": aug.test_accuracy},
    }
    json.dump(doc, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
