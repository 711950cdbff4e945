"""Benchmark of `extract`, the Apache Beam pipeline (issue 25):
`python -m benchmarks.bench_beam [--quick]`.

Builds its own data offline (the photo-sized pictures of `benchmarks.bench`) and a
MobileNet-V2-architecture extractor with fixed random weights
(`benchmarks.mobilenet_fixture`), then measures extraction images/s, each run into a
cold store of its own:

- the local `retrain` (trxsfr.retrain: its `bottlenecks_s` and `computed`);
- `trxsfr.extract` on the DirectRunner in multi-processing mode with 1 and with 2
  worker processes: the pipeline's wall time, worker start-up (TensorFlow's import and
  the model load in each process) included; and the same minus a rerun of that
  pipeline on its now full store, which computes nothing (start-up, model loads,
  reading and hashing every file): the rate of decoding, forward passes and writes
  alone, an upper bound of the steady rate on many images;
- the scaling: images/s with 2 workers / with 1.

On 2 cores the gain of a second worker is bounded: the local retrain already spreads
each forward pass over both cores. What the pipeline buys is that the same code runs
on Dataflow, Flink or Spark with as many workers as there are machines.

Prints one JSON document on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_beam",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 images instead of 1,000.")
    parser.add_argument("--out", default=None, help="Work directory (default: a new temp dir).")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    from benchmarks import bench

    work = args.out or tempfile.mkdtemp(prefix="trxsfr-bench-beam-")
    os.makedirs(work, exist_ok=True)
    per_class = 40 if args.quick else 200
    bench.log(f"work dir {work}: {per_class * len(bench.CLASSES)} pictures")
    # Pictures first: their workers fork before TensorFlow is imported.
    images = bench.write_photos(os.path.join(work, "images"), per_class, seed=11, workers=2)
    import trxsfr
    from benchmarks.mobilenet_fixture import build_mobilenet_v2_extractor
    from trxsfr.base.config import ExtractConfig, RetrainConfig

    module = os.path.join(work, "mobilenet_v2")
    if not os.path.exists(os.path.join(module, "saved_model.pb")):
        build_mobilenet_v2_extractor(module)

    bench.log("local retrain, cold store")
    local = trxsfr.retrain(RetrainConfig(
        image_dir=images, tfhub_module=module, summaries_dir="", how_many_training_steps=10,
        bottleneck_dir=os.path.join(work, "cache-local"),
        saved_model_dir=os.path.join(work, "models")))
    local_rate = local.computed / local.timings["bottlenecks_s"]

    runs = {}
    for workers in (1, 2):
        options = ["--runner=DirectRunner", f"--direct_num_workers={workers}",
                   "--direct_running_mode=multi_processing",
                   "--default_sdk_harness_log_level=ERROR"]
        config = ExtractConfig(image_dir=images, tfhub_module=module,
                               bottleneck_dir=os.path.join(work, f"cache-beam-{workers}"))
        bench.log(f"extract, DirectRunner, {workers} worker(s), cold store")
        start = time.perf_counter()
        cold = trxsfr.extract(config, options)
        cold_wall = time.perf_counter() - start
        bench.log(f"extract, DirectRunner, {workers} worker(s), rerun (computes nothing)")
        rerun = trxsfr.extract(config, options)
        steady_s = max(cold.seconds - rerun.seconds, 1e-9)
        runs[workers] = {
            "computed": cold.computed, "failed": len(cold.failed),
            "pipeline_s": cold.seconds, "wall_s": cold_wall,
            "driver_model_load_s": cold.load_seconds,
            "images_per_s": cold.computed / cold.seconds,
            "rerun": {"pipeline_s": rerun.seconds, "computed": rerun.computed,
                      "reused": rerun.reused},
            "images_per_s_beyond_rerun": cold.computed / steady_s,
        }
    doc = {
        "images": local.computed, "extractor": "MobileNet-V2 architecture, random weights",
        "cores": os.cpu_count(),
        "local_retrain": {"bottlenecks_s": local.timings["bottlenecks_s"],
                          "computed": local.computed, "images_per_s": local_rate},
        "direct_runner": {f"workers_{w}": r for w, r in runs.items()},
        "figures": {
            "scaling_workers_2_over_1": {
                "value": runs[2]["images_per_s"] / runs[1]["images_per_s"],
                "beyond_rerun": (runs[2]["images_per_s_beyond_rerun"]
                                 / runs[1]["images_per_s_beyond_rerun"])},
            "workers_2_over_local_retrain": {
                "value": runs[2]["images_per_s"] / local_rate,
                "beyond_rerun": runs[2]["images_per_s_beyond_rerun"] / local_rate},
            "rerun_vectors_computed": {"value": runs[1]["rerun"]["computed"]
                                       + runs[2]["rerun"]["computed"], "target": 0},
        },
    }
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
