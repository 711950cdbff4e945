"""Benchmark of cached augmentation (issue 6): `python -m benchmarks.bench_augment [--quick]`.

Builds its own data offline (the photo-sized pictures of `trxsfr.bench`) and a
MobileNet-V2-architecture extractor with fixed random weights, then measures
in one run, through `trxsfr.retrain`:

- a cold plain run (one extraction pass) and a cold run with
  `--augment_copies 4` and retrain.py's distortion flags: its bottleneck phase
  should cost about 5 passes (originals + 4 views);
- the head training time with and without the views (same 4000 steps);
- a rerun with the same flags, which must compute no vector;
- retrain.py's way, distorting and running the network for every training
  batch: timed for a few steps of batch 100 and scaled to the 4000 steps, and
  the speed-up of cached augmentation over it.

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_augment",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 images instead of 1,000.")
    parser.add_argument("--out", default=None, help="Work directory (default: a new temp dir).")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trxsfr import bench
    from trxsfr.base import imaging
    from trxsfr.base import extractors
    from trxsfr.train import retrain as retrain_job
    from trxsfr.base.config import RetrainConfig
    from trxsfr.mobilenet_fixture import build_mobilenet_v2_extractor

    work = args.out or tempfile.mkdtemp(prefix="trxsfr-bench-augment-")
    os.makedirs(work, exist_ok=True)
    per_class = 60 if args.quick else 200
    bench.log(f"work dir {work}: {per_class * len(bench.CLASSES)} pictures")
    images = bench.write_photos(os.path.join(work, "images"), per_class, seed=11, workers=2)
    module = os.path.join(work, "mobilenet_v2")
    if not os.path.exists(os.path.join(module, "saved_model.pb")):
        build_mobilenet_v2_extractor(module)
    distortion = dict(flip_left_right=True, random_crop=10.0, random_scale=10.0,
                      random_brightness=10.0)
    base = RetrainConfig(image_dir=images, tfhub_module=module, progress=False,
                         summaries_dir="", saved_model_dir=os.path.join(work, "models"))

    def run(name, **kw):
        bench.log(f"retrain: {name}")
        start = time.perf_counter()
        result = retrain_job.retrain(dataclasses.replace(base, **kw))
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
    train = [plain.image_set.abs_path(it) for it in plain.image_set.of_split(
        retrain_job.Split.TRAIN)]
    d = imaging.Distortion(**distortion)
    rng = np.random.default_rng(0)
    steps_timed, batch = 3, 100
    seeds = rng.integers(0, 2**62, (steps_timed * batch, 2), dtype=np.int64)
    paths = [train[i] for i in rng.integers(0, len(train), steps_timed * batch)]
    ds = imaging.image_dataset(paths, extractor.image_size, batch, d, seeds)
    it = iter(ds)
    extractor(next(it)[1]).numpy()  # warm-up step, not timed
    start = time.perf_counter()
    for _, images in it:
        extractor(images).numpy()
    per_step = (time.perf_counter() - start) / (steps_timed - 1)
    steps = base.how_many_training_steps
    emulated = per_step * steps
    ours = aug.timings["bottlenecks_s"] + aug.timings["train_s"]
    n_train = len(train)
    doc = {
        "images": len(plain.image_set.items), "training_images": n_train,
        "augment_copies": 4, "distortion": d.spec(),
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
