"""retrain: image folder -> cached bottlenecks -> trained head -> versioned SavedModel."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from typing import Optional

import numpy as np

from trxsfr.base import __version__ as VERSION
from trxsfr.base import files, imaging
from trxsfr.base.config import SWEEPABLE, UNKNOWN_AUTO, ProgressFn, RetrainConfig
from trxsfr.base.contract import ModelInfo, ModuleInfo
from trxsfr.base.errors import InputError
from trxsfr.train import augment, dataset
from trxsfr.train.dataset import ImageSet, Skipped, Split

log = logging.getLogger(__name__)



@dataclasses.dataclass
class RetrainResult:
    version_dir: str
    labels: tuple[str, ...]
    image_set: ImageSet
    counts: dict  # label -> {split: count}
    test_accuracy: Optional[float]
    test_count: int
    misclassified: list[tuple[str, str, str]]  # (path, true label, predicted label)
    history: list[dict]
    reused: int
    computed: int
    skipped: tuple[Skipped, ...]
    notes: list[str]
    summary_dir: Optional[str]
    timings: dict
    sweep: list[dict]  # one row per combination when sweeping, else empty
    chosen: dict  # the hyper-parameters of the exported head
    augmented: Optional[tuple[int, int]]  # distorted views (reused, computed), if any
    fine_tuned: bool
    unknown: Optional[dict] = None  # the "unknown" threshold and its figures (train/unknown.py)
    tuning: Optional[dict] = None  # how l2 was cross-validated (Tuning.to_json()), if it was


def fresh_run_dir(summaries_dir: str) -> str:
    """A new sub-directory for this run's summaries; earlier runs are left as they are."""
    files.make_folder(summaries_dir, "--summaries_dir")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in [""] + [f"-{i}" for i in range(1, 1000)]:
        path = os.path.join(summaries_dir, f"run-{stamp}{suffix}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(f"cannot create a run folder in --summaries_dir {summaries_dir}: "
                             f"{e.strerror or e}") from e
    raise InputError(f"cannot find a fresh run directory under {summaries_dir}")


def check_validation_needs(config: RetrainConfig, has_validation: bool) -> None:
    """Early stopping and sweeps choose by validation loss: without a validation split
    they cannot run (checked once the split is known, and again if none of it decoded)."""
    if has_validation:
        return
    if config.early_stopping_patience:
        raise InputError("--early_stopping_patience needs a validation split; "
                         "raise --validation_percentage above 0")
    if config.sweep:
        raise InputError("a sweep picks by validation cross-entropy; "
                         "raise --validation_percentage above 0")
    if config.unknown_threshold == UNKNOWN_AUTO:
        raise InputError("--unknown_threshold auto is chosen on the validation split; raise "
                         "--validation_percentage above 0 or give a threshold")


def with_views(x_train, y_train, image_set, train_items, augmented):
    """Training vectors plus the distorted views of the training images that decoded."""
    kept = {it.path: it.label for it in image_set.of_split(Split.TRAIN)}
    rows = [r for r, i in enumerate(augmented.ok) if train_items[i].path in kept]
    x = np.empty((len(x_train) + len(rows), x_train.shape[1]), np.float32)
    x[:len(x_train)] = x_train
    x[len(x_train):] = augmented.features[rows]
    y = np.concatenate([y_train, [kept[train_items[augmented.ok[r]].path] for r in rows]])
    return x, y.astype(np.int64)


def sweep_grid(sweep: tuple) -> list[dict]:
    """Every combination of the swept values, in flag order: [{name: value, ...}, ...]."""
    combos = [{}]
    for name, values in sweep:
        combos = [dict(c, **{name: v}) for c in combos for v in values]
    return combos


def held_out_validation(new_layer, validation, last: dict) -> dict:
    """The new layer's validation accuracy and cross entropy (before any fine-tuning, as
    the step-based trainer records them as it goes), or None for both when the validation
    images were fitted on (`validation` None)."""
    if validation is None or "validation_accuracy" in last:
        return {"validation_accuracy": last.get("validation_accuracy"),
                "validation_cross_entropy": last.get("validation_cross_entropy")}
    accuracy, cross_entropy = scores(new_layer, *validation)
    return {"validation_accuracy": accuracy, "validation_cross_entropy": cross_entropy}


def scores(layer, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross entropy) of a head on vectors x with labels y."""
    probs = layer.probabilities(x)
    return (float(np.mean(probs.argmax(axis=1) == y)),
            float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)))))


def run_sweep(config, x_train, y_train, num_classes, validation, summary_dir):
    """Train one head per combination on the same vectors; keep the lowest validation loss."""
    from trxsfr.train import head

    rows, best = [], None
    x_val, y_val = validation
    for combo in sweep_grid(config.sweep):
        cfg = dataclasses.replace(config, **combo)
        name = ",".join(f"{k}={v:g}" for k, v in combo.items())
        trained = head.train(x_train, y_train, num_classes, head.HeadOptions.of(cfg), validation,
                             os.path.join(summary_dir, name) if summary_dir else None)
        acc, xent = scores(trained.head, x_val, y_val)
        rows.append(dict(combo, validation_cross_entropy=xent, validation_accuracy=acc,
                         seconds=trained.seconds))
        log.info("sweep %s: validation cross entropy %.4f, accuracy %.1f%% (%.1fs)",
                 name, xent, 100 * acc, trained.seconds)
        if best is None or xent < best[0]:
            best = (xent, len(rows) - 1, trained)
    for i, row in enumerate(rows):
        row["chosen"] = i == best[1]
    return best[2], rows


def retrain(config: RetrainConfig, on_progress: Optional[ProgressFn] = None) -> RetrainResult:
    """Run the whole job; see RetrainConfig for the settings.

    Args:
        config: the settings (checked here first, as the CLI's flags are).
        on_progress: told of each batch of bottlenecks and each fine-tuning step.

    Raises:
        TrxsfrError: the data, module or destinations cannot make a model.
    """
    from trxsfr.base import extractors, litert
    from trxsfr.train import cache, export, freeze, head

    timings = {}
    t0 = time.perf_counter()
    config.check()
    freeze.check_settings(config)  # --output_graph and the other codelab flags
    image_set = dataset.discover(config.image_dir, config.validation_percentage,
                                 config.testing_percentage)
    dataset.check_trainable(image_set)
    check_validation_needs(config, has_validation=bool(image_set.of_split(Split.VALIDATION)))
    export.check_base_dir(config.saved_model_dir)
    files.check_folder(config.bottleneck_dir, "--bottleneck_dir")
    if config.summaries_dir:
        files.check_folder(config.summaries_dir, "--summaries_dir")
    if config.output_labels:  # fail before the long work, not after it
        export.check_labels_file(config.output_labels, image_set.labels)
    distortion = augment.Distortion(config.flip_left_right, config.random_crop,
                                    config.random_scale, config.random_brightness)

    # Ask for vectors in split order, so each split is one contiguous block of rows.
    ordered = [it for split in Split for it in image_set.of_split(split)]
    ordered_paths = [image_set.abs_path(it) for it in ordered]
    prefetch = cache.KeyPrefetch(config.bottleneck_dir, ordered_paths)
    try:
        extractor = extractors.load(config.tfhub_module, config.image_size,
                                    cache_dir=config.tfhub_cache_dir)
    finally:
        prefetched = prefetch.stop()
    timings["module_load_s"] = time.perf_counter() - t0
    log.info("module %s: %dx%d images -> %d-d features", config.tfhub_module,
             *extractor.image_size, extractor.dim)
    graphs = freeze.prepare(config, extractor, image_set.labels)  # None unless --output_graph
    # Vectors are computed on LiteRT where it gives TensorFlow's numbers (--runtime);
    # fine-tuning, the frozen graph and the export keep the TensorFlow extractor.
    t_runtime = time.perf_counter()
    computing = litert.for_extraction(extractor, config.runtime, config.bottleneck_dir)
    timings["runtime_s"] = time.perf_counter() - t_runtime
    store = cache.store_for(config.bottleneck_dir, computing)
    try:
        store.paths.add_many(prefetched)
        cached = cache.ensure(ordered_paths, computing, store,
                                    config.bottleneck_batch_size, on_progress,
                            max_pixels=config.max_image_pixels)
        augmented = None
        if distortion.active:
            unreadable = {f.path for f in cached.failed}  # not decoded (and reported) again
            train_items = [it for it in ordered if it.split == Split.TRAIN
                           and image_set.abs_path(it) not in unreadable]
            augmented = cache.ensure(
                [image_set.abs_path(it) for it in train_items], computing, store,
                config.bottleneck_batch_size, on_progress,
                distortion=distortion, copies=config.augment_copies,
                max_pixels=config.max_image_pixels)
            log.info("augmented views: %d reused from cache, %d computed (%.1fs)",
                     augmented.reused, augmented.computed, augmented.seconds)
    finally:
        store.close()
    timings["bottlenecks_s"] = cached.seconds + (augmented.seconds if augmented else 0)
    log.info("bottlenecks: %d reused from cache, %d computed (%.1fs)",
             cached.reused, cached.computed, cached.seconds)
    root = image_set.root
    failed = [Skipped(os.path.relpath(f.path, root).replace(os.sep, "/"), f.reason)
              for f in cached.failed]
    row_of = {ordered[i].path: row for row, i in enumerate(cached.ok)}
    image_set = image_set.without(failed)
    dataset.check_trainable(image_set)
    # again: every validation image may have failed to decode
    check_validation_needs(config, has_validation=bool(image_set.of_split(Split.VALIDATION)))
    notes = dataset.warnings_of(image_set)
    for note in notes:
        log.warning("%s", note)

    def split_arrays(split: Split, features: np.ndarray):
        items = image_set.of_split(split)
        rows = np.array([row_of[it.path] for it in items], np.int64)
        if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            x = features[rows[0]:rows[0] + len(rows)]  # a view, not a copy
        else:
            x = features[rows]
        return items, x, np.array([it.label for it in items], np.int64)

    _, x_train, y_train = split_arrays(Split.TRAIN, cached.features)
    _, x_val, y_val = split_arrays(Split.VALIDATION, cached.features)
    test_items, x_test, y_test = split_arrays(Split.TEST, cached.features)
    if not len(y_val):
        notes.append("validation split is empty: no validation accuracy during training")
    if not len(y_test):
        notes.append("test split is empty: no final test accuracy")

    plain_rows = len(y_train)  # the images; distorted views follow them
    if augmented is not None:
        x_train, y_train = with_views(x_train, y_train, image_set, train_items, augmented)
    validation = (x_val, y_val) if len(y_val) else None
    summary_dir = fresh_run_dir(config.summaries_dir) if config.summaries_dir else None
    t1 = time.perf_counter()
    sweep_rows = []
    tuning_record = None
    if config.sweep:
        trained, sweep_rows = run_sweep(config, x_train, y_train, len(image_set.labels),
                                        validation, summary_dir)
    elif config.tunes:
        from trxsfr.train import tuning

        # The search and the fit take the validation images too, unless the "unknown"
        # threshold is to be chosen on them: it must see images the layer was not fitted on.
        validation_fitted = config.unknown_threshold != UNKNOWN_AUTO
        trained, tuning_record = tuning.train(
            x_train, y_train, len(image_set.labels), tuning.TuneOptions.of(config),
            validation=validation if validation_fitted else None, plain_rows=plain_rows,
            summary_dir=summary_dir)
        if validation is not None and not validation_fitted:
            tuning_record.notes.append("the validation split is held out of the search and the "
                                       "fit: --unknown_threshold auto is chosen on it")
        if validation is not None and validation_fitted:
            validation = None  # its images are fitted on: no held-out figures from them
    else:
        trained = head.train(x_train, y_train, len(image_set.labels), head.HeadOptions.of(config),
                             validation=validation, summary_dir=summary_dir,
                             on_step=graphs.on_step(image_set.labels) if graphs else None)
    timings["train_s"] = time.perf_counter() - t1

    final_head = trained.head
    tuned = None
    if config.fine_tune_steps:
        from trxsfr.train import finetune

        train_paths = [image_set.abs_path(it) for it in image_set.of_split(Split.TRAIN)]
        train_labels = [it.label for it in image_set.of_split(Split.TRAIN)]
        tuned = finetune.fine_tune(
            extractor, trained.head.weights, trained.head.bias, train_paths, train_labels,
            finetune.FineTuneOptions.of(config), distortion if distortion.active else None,
            on_progress)
        final_head = head.Head(tuned.weights, tuned.bias)
        timings["fine_tune_s"] = tuned.seconds
        if len(y_test):  # the cached vectors are the old extractor's: compute them anew
            x_test, ok = finetune.features_of(
                extractor, [image_set.abs_path(it) for it in test_items],
                config.bottleneck_batch_size)
            test_items, y_test = [test_items[i] for i in ok], y_test[ok]

    test_accuracy, misclassified = None, []
    if len(y_test):
        pred = final_head.logits(x_test).argmax(axis=1)
        test_accuracy = float(np.mean(pred == y_test))
        labels = image_set.labels
        misclassified = [(it.path, labels[t], labels[p])
                         for it, t, p in zip(test_items, y_test, pred) if t != p]

    unknown = None
    if config.unknown_threshold is not None:
        from trxsfr.train import unknown as unknown_threshold

        if tuned is not None and validation is not None:  # vectors of the old extractor
            x_val, ok = finetune.features_of(
                extractor, [image_set.abs_path(it) for it in image_set.of_split(Split.VALIDATION)],
                config.bottleneck_batch_size)
            y_val = y_val[ok]
        unknown = unknown_threshold.decide(
            config.unknown_threshold, config.unknown_precision, len(image_set.labels),
            (final_head.probabilities(x_val), y_val) if validation is not None else None,
            (final_head.probabilities(x_test), y_test) if len(y_test) else None)
        log.info("unknown threshold %.4f (%s)", unknown["threshold"], unknown["mode"])

    tuning_json = tuning_record.to_json() if tuning_record is not None else None
    chosen = next((
        {k: v for k, v in row.items() if k in SWEEPABLE} for row in sweep_rows if row["chosen"]),
        {k: getattr(config, k) for k in SWEEPABLE})
    if tuning_record is not None:
        chosen["l2"] = tuning_record.l2
    counts = {label: {s.value: n for s, n in row.items()}
              for label, row in image_set.counts().items()}
    last = trained.history[-1] if trained.history else {}
    info = ModelInfo(
        trxsfr_version=VERSION,
        preprocessing=imaging.PREPROCESSING_VERSION,
        module=ModuleInfo(config.tfhub_module, extractor.fingerprint,
                          tuple(extractor.image_size), extractor.dim),
        labels=tuple(image_set.labels),
        config=dict(config.recorded(), **chosen),
        sweep=sweep_rows,
        best_step=trained.best_step,
        augmentation={"distortion": distortion.spec(), "copies": config.augment_copies,
                      "views": int(len(augmented.ok)), "computed": augmented.computed}
        if augmented is not None else None,
        tuning=tuning_json,
        fine_tuned={"steps": config.fine_tune_steps,
                    "learning_rate": config.fine_tune_learning_rate,
                    "batch_size": config.fine_tune_batch_size,
                    "variables": tuned.variables, "final_loss": tuned.losses[-1]}
        if tuned is not None else None,
        metrics={
            "test_accuracy": test_accuracy, "test_count": int(len(y_test)),
            **held_out_validation(trained.head, validation, last),
            "train_accuracy": last.get("train_accuracy"),
            **({"unknown": unknown} if unknown is not None else {}),
            **({"cv_accuracy": tuning_record.cv_accuracy} if tuning_record is not None else {}),
        },
        split_counts=counts,
        skipped_files=len(image_set.skipped),
        history=trained.history,
        created=int(time.time()),
        unknown_threshold=unknown["threshold"] if unknown is not None else None,
    )
    if config.output_labels:
        export.check_labels_file(config.output_labels, image_set.labels)
    # The vectors are done with: free them before the export (the run's memory peak),
    # so peak memory does not grow with the number of images beyond what training needs.
    reused, computed = cached.reused, cached.computed
    augmented_counts = (augmented.reused, augmented.computed) if augmented is not None else None
    del cached, augmented, x_train, x_val, x_test, validation
    t1 = time.perf_counter()
    version_dir = export.save_versioned(extractor, final_head.weights, final_head.bias,
                                        image_set.labels, info, config.saved_model_dir)
    timings["export_s"] = time.perf_counter() - t1
    if graphs:
        graphs.write(final_head, image_set.labels, version_dir, tuned is not None)
    if config.output_labels:
        export.write_labels_file(config.output_labels, image_set.labels)
    timings["total_s"] = time.perf_counter() - t0
    return RetrainResult(
        version_dir=version_dir, labels=image_set.labels, image_set=image_set, counts=counts,
        test_accuracy=test_accuracy, test_count=int(len(y_test)), misclassified=misclassified,
        history=trained.history, reused=reused, computed=computed,
        skipped=image_set.skipped, notes=notes, summary_dir=summary_dir, timings=timings,
        sweep=sweep_rows, chosen=chosen,
        augmented=augmented_counts,
        fine_tuned=tuned is not None,
        unknown=unknown,
        tuning=tuning_json,
    )
