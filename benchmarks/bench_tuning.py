"""Benchmark of issue 22: a default `retrain` against LogisticRegressionCV on the same vectors.

How to run (from the repository root, after `pip install -e .[bench]`; nothing is
downloaded; `benchmarks/` is not installed with trxsfr, so run it from a checkout):

    python -m benchmarks.bench_tuning --quick          # about 10 minutes on 2 CPU cores
    python -m benchmarks.bench_tuning                  # the issue's sizes (2,000 images timed)
    python -m benchmarks.bench_tuning --out DIR        # keep data, caches and models in DIR

It writes, in a work directory, six image sets the head's defaults were never
developed on (`benchmarks.tuning_sets`: shapes with 8 classes, gratings with 6,
close hues with 20, textures with 2, two-colour patterns with 4 at 10:1
imbalance, and scikit-learn's handwritten digits as 64-pixel JPEGs; 20 to 500
images per class), each with a held-out folder drawn with another seed. For
the MobileNet-V2-architecture extractor (`benchmarks.mobilenet_fixture`, 224
pixels, 1280 features) and the tiny one (`trxsfr.kit`, 64 pixels, 32
features) it runs, on every set:

- `trxsfr.retrain(RetrainConfig(image_dir=..., tfhub_module=...))` at default
  settings (`--tune auto`), and again with `tune="off"` (the steps-based
  default before issue 22);
- scikit-learn's `StandardScaler` + `LogisticRegressionCV` (C from its default
  10 values 1e-4 ... 1e4, 5 stratified folds, accuracy) fitted on the same
  cached vectors of retrain's training + validation split, read back with
  `trxsfr.train.cache` from the cache retrain filled;
- each model scored on held-out images: retrain's test split plus the
  held-out folder (vectors from the same cache; the exported layer's weights,
  read from the SavedModel, applied to them).

The 10:1 set is also run with `class_weight="balanced"` on both sides, scored
by balanced accuracy (the mean of per-class recall), what that setting is for.

Then the cost: a cold extraction of 2,000 500x375 JPEGs (`benchmarks.bench`'s
pictures) into an empty cache with MobileNet-V2, timed in-process, and
default and `tune="off"` retrains on the warm cache: the training phase
(`RetrainResult.timings['train_s']`) of each over the cold extraction. Last, the
search's cost at the issue's extremes of size on synthetic 1280-d vectors
(`trxsfr.train.tuning.train`, which `retrain` calls), against the cold
extraction of that many images at the measured rate.

Prints one JSON document on stdout (every figure with its raw numbers) and
the tables as Markdown on stderr. `--quick` shrinks every set to 40% of its
images, times 400 images instead of 2,000 and the synthetic sizes to a tenth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from typing import Optional, Sequence

import numpy as np

EXTRACTORS = ("mobilenet_v2", "tiny")
TARGET_MEAN, TARGET_EACH, TARGET_COST = 0.99, 0.97, 0.2


def log(message: str) -> None:
    print(f"[bench_tuning {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ vectors and models

def computing(extractor, cache_dir: str):
    """The extractor a default retrain computes its vectors with in `cache_dir`
    (--runtime auto: LiteRT's, with the conversion it keeps there), so the reference
    reads the very vectors the new layer was fitted on."""
    from trxsfr.base import litert
    from trxsfr.base.config import RetrainConfig

    return litert.for_extraction(extractor, RetrainConfig.runtime, cache_dir)


def vectors(cache_dir: str, extractor, paths: Sequence[str]):
    """(float32 [N, D], positions of `paths` that decoded) from the cache (computing any
    missing ones, e.g. a held-out folder's), as a default retrain computes them."""
    from trxsfr.base.config import RetrainConfig
    from trxsfr.train import cache

    extractor = computing(extractor, cache_dir)
    store = cache.store_for(cache_dir, extractor)
    try:
        result = cache.ensure(list(paths), extractor, store, RetrainConfig.bottleneck_batch_size)
    finally:
        store.close()
    return result.features, np.asarray(result.ok, np.int64)


def exported_layer(version_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(weights float32 [D, C], bias [C]) of an exported model's new layer."""
    import tensorflow as tf

    from trxsfr.base import contract

    module = tf.saved_model.load(version_dir)
    return (getattr(module, contract.ATTR_WEIGHTS).numpy(),
            getattr(module, contract.ATTR_BIAS).numpy())


def score(pred: np.ndarray, y: np.ndarray, balanced: bool) -> float:
    if not balanced:
        return float(np.mean(pred == y))
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def reference_model(x: np.ndarray, y: np.ndarray, balanced: bool):
    """StandardScaler + LogisticRegressionCV at scikit-learn's defaults (Cs=10, 5 folds)."""
    import inspect

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kwargs = {}
    params = inspect.signature(LogisticRegressionCV).parameters
    if "l1_ratios" in params and "use_legacy_attributes" in params:
        kwargs.update(l1_ratios=(0.0,), use_legacy_attributes=False)
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=10, cv=5, scoring="balanced_accuracy" if balanced else "accuracy", max_iter=5000,
        class_weight="balanced" if balanced else None, **kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y)
    return model


@dataclasses.dataclass
class Row:
    extractor: str
    image_set: str
    classes: int
    images: int  # in the training folder
    heldout_images: int  # test split + held-out folder
    class_weight: str
    retrain: float  # default retrain's held-out score
    reference: float
    tune_off: float  # retrain with tune="off"
    retrain_test_split: float  # as the model records it (trxsfr.json)
    chosen_l2: Optional[float]
    reference_c: float
    search_s: float
    fit_s: float

    @property
    def ratio(self) -> float:
        return self.retrain / self.reference


def compare(work: str, name: str, train_dir: str, heldout_dir: str, module: str, extractor,
            extractor_name: str, class_weight: str = "none") -> Row:
    """Default retrain, tune="off" retrain and the reference on one set with one extractor."""
    import trxsfr
    from benchmarks.tuning_sets import labelled_files
    from trxsfr.base import contract
    from trxsfr.base.config import RetrainConfig

    cache_dir = os.path.join(work, "cache", extractor_name)
    tag = f"{extractor_name}-{name}-{class_weight}"
    base = RetrainConfig(image_dir=train_dir, tfhub_module=module, bottleneck_dir=cache_dir,
                         summaries_dir="", class_weight=class_weight,
                         saved_model_dir=os.path.join(work, "models", tag))
    result = trxsfr.retrain(base)
    off = trxsfr.retrain(dataclasses.replace(base, tune="off"))
    image_set = result.image_set
    x, ok = vectors(cache_dir, extractor, [image_set.abs_path(it) for it in image_set.items])
    items = [image_set.items[i] for i in ok]
    y = np.array([it.label for it in items])
    test = np.array([it.split == "test" for it in items])
    h_paths, h_y = labelled_files(heldout_dir, image_set.labels)
    hx, h_ok = vectors(cache_dir, extractor, h_paths)
    held_x = np.concatenate([x[test], hx])
    held_y = np.concatenate([y[test], h_y[h_ok]])
    balanced = class_weight == "balanced"
    model = reference_model(x[~test], y[~test], balanced)

    def of_model(version_dir, rows):
        w, b = exported_layer(version_dir)
        return (rows @ w + b).argmax(axis=1)

    recorded = contract.read_info(contract.info_path(result.version_dir))
    mine_test = float(np.mean(of_model(result.version_dir, x[test]) == y[test]))
    if recorded.metrics.get("test_accuracy") is not None:  # the vectors are retrain's own
        assert abs(mine_test - recorded.metrics["test_accuracy"]) < 1e-6, (
            mine_test, recorded.metrics)
    tuning = recorded.tuning or {}
    row = Row(
        extractor=extractor_name, image_set=name, classes=len(image_set.labels),
        images=len(image_set.items), heldout_images=len(held_y), class_weight=class_weight,
        retrain=score(of_model(result.version_dir, held_x), held_y, balanced),
        reference=score(model.predict(held_x), held_y, balanced),
        tune_off=score(of_model(off.version_dir, held_x), held_y, balanced),
        retrain_test_split=recorded.metrics.get("test_accuracy"),
        chosen_l2=tuning.get("l2"), reference_c=float(np.ravel(model[-1].C_)[0]),
        search_s=tuning.get("search_seconds", 0.0), fit_s=tuning.get("fit_seconds", 0.0))
    log(f"{tag}: retrain {row.retrain:.3f}, reference {row.reference:.3f} "
        f"(ratio {row.ratio:.3f}), tune off {row.tune_off:.3f}; l2 {row.chosen_l2}, "
        f"C {row.reference_c:.3g}; search {row.search_s:.2f}s, fit {row.fit_s:.2f}s")
    return row


# ------------------------------------------------------------------ cost

def cost(work: str, folder: str, module: str, extractor) -> dict:
    """Cold extraction of the pictures in `folder`, then default and tune="off" retrains on
    the warm cache: their training phase against the extraction."""
    import trxsfr
    from benchmarks import bench
    from trxsfr.base.config import RetrainConfig

    paths = bench.image_paths(folder)
    cache_dir = os.path.join(work, "cache", "photos")
    log(f"cold extraction of {len(paths)} pictures")
    cold = bench.cold_extraction(paths, computing(extractor, cache_dir), cache_dir,
                                 RetrainConfig.bottleneck_batch_size)
    config = RetrainConfig(image_dir=folder, tfhub_module=module, bottleneck_dir=cache_dir,
                           summaries_dir="", saved_model_dir=os.path.join(work, "models", "cost"))
    runs = {"auto": [], "off": []}
    for _ in range(3):
        for mode in runs:
            result = trxsfr.retrain(dataclasses.replace(config, tune=mode))
            runs[mode].append({"train_s": result.timings["train_s"],
                               "test_accuracy": result.test_accuracy,
                               "search_s": (result.tuning or {}).get("search_seconds"),
                               "fit_s": (result.tuning or {}).get("fit_seconds")})
    auto = float(np.median([r["train_s"] for r in runs["auto"]]))
    off = float(np.median([r["train_s"] for r in runs["off"]]))
    log(f"cold extraction {cold['seconds']:.1f}s; training: default {auto:.2f}s, "
        f"tune off {off:.2f}s")
    return {"images": len(paths), "cold_extraction_s": cold["seconds"],
            "cold_extraction_images_per_s": cold["images_per_s"],
            "default_train_s_median": auto, "tune_off_train_s_median": off,
            "default_train_over_cold": auto / cold["seconds"],
            "added_train_over_cold": (auto - off) / cold["seconds"], "runs": runs}


def scale_costs(points: Sequence[tuple[int, int]], seconds_per_image: float) -> list[dict]:
    """tuning.train on synthetic 1280-d vectors (Gaussian classes, signal in 64 features)
    at (classes, images per class); each against the cold extraction of that many images."""
    from trxsfr.train import head, tuning

    rows = []
    for classes, per_class in points:
        rng = np.random.default_rng([classes, per_class])
        n = classes * per_class
        centre = np.zeros((classes, 1280), np.float32)
        centre[:, :64] = rng.normal(0, 0.5, (classes, 64))
        y = np.repeat(np.arange(classes), per_class)
        x = np.empty((n, 1280), np.float32)
        for i in range(0, n, 65536):  # in slices: the vectors are the memory, not their noise
            j = min(n, i + 65536)
            x[i:j] = rng.standard_normal((j - i, 1280), np.float32) + centre[y[i:j]]
        start = time.perf_counter()
        trained, t = tuning.train(x, y, classes)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        head.train(x, y, classes, head.HeadOptions())  # what tune="off" runs
        steps_seconds = time.perf_counter() - start
        row = {"classes": classes, "per_class": per_class, "images": n,
               "seconds": seconds, "search_s": t.search_seconds, "fit_s": t.fit_seconds,
               "tune_off_seconds": steps_seconds,
               "fit": t.fit, "search_images": t.search_images,
               "search_classes": t.search_classes, "folds": t.folds, "cv_l2": t.cv_l2,
               "cold_extraction_s_estimate": n * seconds_per_image,
               "over_cold_extraction": seconds / (n * seconds_per_image),
               "train_accuracy": float(np.mean(trained.head.logits(x[:20000]).argmax(1)
                                               == y[:20000])),
               "notes": t.notes}
        log(f"{classes} classes x {per_class}: {seconds:.1f}s ({t.fit}; tune off "
            f"{steps_seconds:.1f}s), {row['over_cold_extraction']:.3f} of its cold extraction")
        rows.append(row)
        del x
    return rows


# ------------------------------------------------------------------ tables

def accuracy_table(rows: Sequence[Row]) -> list[str]:
    lines = ["| extractor | image set | classes | images | held-out | default retrain | "
             "LogisticRegressionCV | ratio | tune off (old default) | chosen l2 | "
             "search + fit s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = r.image_set + (" (balanced accuracy, class_weight balanced)"
                              if r.class_weight == "balanced" else "")
        lines.append(f"| {r.extractor} | {name} | {r.classes} | {r.images} | "
                     f"{r.heldout_images} | {r.retrain:.3f} | {r.reference:.3f} | "
                     f"{r.ratio:.3f} | {r.tune_off:.3f} | {r.chosen_l2:.2g} | "
                     f"{r.search_s + r.fit_s:.2f} |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_tuning",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Issue 22: default retrain vs LogisticRegressionCV on the same vectors, "
                    "and the cost of the search; one JSON document on stdout.")
    parser.add_argument("--quick", action="store_true",
                        help="40%% of every set, 400 timed images, a tenth of the synthetic sizes.")
    parser.add_argument("--out", default=None,
                        help="Work directory (kept); default: a temporary one, removed.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the extractors and pictures.")
    parser.add_argument("--skip_scales", action="store_true",
                        help="Leave out the synthetic sizes (the largest holds 1 GB of vectors).")
    args = parser.parse_args(argv)
    scale = 0.4 if args.quick else 1.0
    work = os.path.abspath(args.out) if args.out else tempfile.mkdtemp(prefix="trxsfr-tuning-")
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    logging.getLogger("trxsfr").setLevel(logging.WARNING)
    start, load_start = time.perf_counter(), os.getloadavg()
    try:
        from benchmarks import tuning_sets

        log(f"work dir {work}: writing the image sets")
        sets = []
        for spec in tuning_sets.specs(scale):
            root = os.path.join(work, "data", spec.name)
            sets.append((spec, tuning_sets.write_set(spec, os.path.join(root, "train")),
                         tuning_sets.write_set(spec, os.path.join(root, "heldout"), True)))
        digits = tuning_sets.write_digits(os.path.join(work, "data", "digits", "train"),
                                          os.path.join(work, "data", "digits", "heldout"), scale)
        from benchmarks import bench

        timed_images = 400 if args.quick else 2000
        # Before TensorFlow is imported: the picture workers fork.
        photos = bench.write_photos(os.path.join(work, "data", "photos"),
                                    timed_images // len(bench.CLASSES), args.seed + 7, 2)

        from benchmarks.mobilenet_fixture import build_mobilenet_v2_extractor
        from trxsfr.base import extractors
        from trxsfr.kit import build_extractor

        modules = {
            "mobilenet_v2": build_mobilenet_v2_extractor(
                os.path.join(work, "modules", "mobilenet_v2"), 224, args.seed),
            "tiny": build_extractor(os.path.join(work, "modules", "tiny"), image_size=64,
                                    seed=args.seed),
        }
        loaded = {name: extractors.load(path) for name, path in modules.items()}
        rows = []
        for name in EXTRACTORS:
            for spec, train_dir, heldout_dir in sets:
                rows.append(compare(work, spec.name, train_dir, heldout_dir, modules[name],
                                    loaded[name], name))
                if spec.class_weight == "balanced":
                    rows.append(compare(work, spec.name, train_dir, heldout_dir, modules[name],
                                        loaded[name], name, "balanced"))
            rows.append(compare(work, "digits-10", *digits, modules[name], loaded[name], name))
        judged = [r for r in rows if r.class_weight == "none"]
        by_extractor = {}
        for name in EXTRACTORS:
            ratios = [r.ratio for r in judged if r.extractor == name]
            by_extractor[name] = {"mean_ratio": float(np.mean(ratios)),
                                  "min_ratio": float(np.min(ratios)),
                                  "meets_target": bool(np.mean(ratios) >= TARGET_MEAN
                                                       and np.min(ratios) >= TARGET_EACH)}
        timed = cost(work, photos, modules["mobilenet_v2"], loaded["mobilenet_v2"])
        per_image = timed["cold_extraction_s"] / timed["images"]
        scales = []
        if not args.skip_scales:
            points = ([(2, 5), (2, 10_000), (20, 500), (1000, 5), (1000, 20)] if args.quick else
                      [(2, 5), (2, 100_000), (20, 500), (1000, 5), (1000, 100)])
            scales = scale_costs(points, per_image)
        import tensorflow as tf

        doc = {
            "benchmark": "trxsfr issue 22: default retrain vs LogisticRegressionCV",
            "mode": "quick" if args.quick else "full",
            "accuracy": {
                "target": f"mean ratio >= {TARGET_MEAN} and every set >= {TARGET_EACH} "
                          f"(rows with class_weight none; the balanced row is shown apart)",
                "by_extractor": by_extractor,
                "rows": [dict(dataclasses.asdict(r), ratio=r.ratio) for r in rows],
            },
            "cost": dict(timed, target=f"added training time <= {TARGET_COST} x cold extraction",
                         meets_target=timed["added_train_over_cold"] <= TARGET_COST,
                         scaled_down=args.quick),
            "scales": scales,
            "machine": {"cpus": os.cpu_count(), "load_average_start": load_start,
                        "load_average_end": os.getloadavg(),
                        "python": platform.python_version(), "tensorflow": tf.__version__},
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(doc, indent=1, default=float))
        table = accuracy_table(rows)
        table.append("")
        for name, v in by_extractor.items():
            table.append(f"{name}: mean ratio {v['mean_ratio']:.3f}, lowest "
                         f"{v['min_ratio']:.3f}")
        table.append(f"cost: {timed['images']} images, cold extraction "
                     f"{timed['cold_extraction_s']:.1f}s; training "
                     f"{timed['default_train_s_median']:.2f}s "
                     f"(tune off {timed['tune_off_train_s_median']:.2f}s): "
                     f"{timed['default_train_over_cold']:.3f} of it, added "
                     f"{timed['added_train_over_cold']:.3f}")
        for s in scales:
            table.append(f"synthetic {s['classes']} x {s['per_class']}: {s['seconds']:.1f}s "
                         f"(tune off {s['tune_off_seconds']:.1f}s; {s['fit']}; search on "
                         f"{s['search_images']} images, "
                         f"{s['search_classes']} classes), {s['over_cold_extraction']:.3f} of "
                         f"the cold extraction of {s['images']} images")
        print("\n".join(table), file=sys.stderr)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
