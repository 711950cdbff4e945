"""`retrain` and `fixtures`: flags -> RetrainConfig -> the retrain job -> printed results."""

from __future__ import annotations

import argparse

from trxsfr.base.config import (
    DEFAULT_MODULE,
    OPTIMISER_SETTINGS,
    RUNTIMES,
    SWEEPABLE,
    TUNE_MODES,
    UNKNOWN_AUTO,
    RetrainConfig,
)
from trxsfr.base.errors import InputError
from trxsfr.cli import codelab
from trxsfr.cli.common import (
    EXIT_OK,
    LISTED_SKIPS,
    Formatter,
    ProgressBars,
    out,
    skipped_lines,
    table,
)

# ---------------------------------------------------------------- retrain

def add_retrain_parser(sub) -> None:
    d = RetrainConfig
    p = sub.add_parser(
        "retrain", formatter_class=Formatter,
        help="Train a new final layer on class folders and export a versioned SavedModel.",
        description=(
            "Compute (or reuse) one bottleneck vector per image with a frozen TF-Hub feature "
            "extractor, train a softmax layer on them, and export <saved_model_dir>/<unix-epoch>/.\n"
            "The last line on stdout is that directory. Flags keep the names of TF's retrain.py."
        ),
    )
    g = p.add_argument_group("Data")
    g.add_argument("--image_dir", required=True, default=argparse.SUPPRESS,
                   help="Required. Folder with one sub-folder of images per class; folder names "
                        "are the labels.")
    g.add_argument("--validation_percentage", type=float, default=d.validation_percentage,
                   help="Percentage of images held out to validate during training (0 allowed).")
    g.add_argument("--testing_percentage", type=float, default=d.testing_percentage,
                   help="Percentage of images held out for the final test accuracy (0 allowed).")
    g.add_argument("--max_image_pixels", type=int, default=d.max_image_pixels,
                   help="Skip (and name) images whose header declares more pixels than this, "
                        "without decoding them: a small file can decode to gigabytes.")
    g = p.add_argument_group("Module")
    g.add_argument("--tfhub_module", default=DEFAULT_MODULE,
                   help="Feature-vector module: TF-Hub/Kaggle URL, local SavedModel directory, "
                        "or shortcut name (table in the README).")
    g.add_argument("--image_size", type=int, default=d.image_size,
                   help="Input size for modules that do not fix it; must match a module that does.")
    g.add_argument("--bottleneck_dir", default=d.bottleneck_dir,
                   help="Cache of bottleneck vectors, shared safely between runs and modules.")
    g.add_argument("--bottleneck_batch_size", type=int, default=d.bottleneck_batch_size,
                   help="Images per forward pass of the feature extractor (two run at once).")
    g.add_argument("--runtime", choices=RUNTIMES, default=d.runtime,
                   help="What runs the extractor to compute bottlenecks: litert (a float32 "
                        ".tflite conversion, kept in --bottleneck_dir, on LiteRT's "
                        "interpreter: about 1.8x TensorFlow's images/s), tf (TensorFlow), or "
                        "auto: LiteRT when its vectors match TensorFlow's on a probe batch, "
                        "else TensorFlow with a line saying why. Each runtime's vectors are "
                        "cached apart. Fine-tuning and the export always use TensorFlow.")
    g = p.add_argument_group("Training")
    g.add_argument("--tune", choices=TUNE_MODES, default=d.tune, action=_Given,
                   help="auto: choose the new layer's L2 penalty by k-fold cross-validation on "
                        "the cached vectors and fit the layer to convergence (L-BFGS), "
                        "instead of a fixed number of optimiser steps. Search space: l2 in "
                        "1, 0.1, ... 1e-6, walked from strong to weak until a decade does not "
                        "beat the best, then the half decades beside the best. Rule: "
                        "the highest cross-validated accuracy, ties to the lower cross "
                        "entropy. The layer is then fitted on training + validation images "
                        "(the test split stays untouched) with that penalty per image. Cost: "
                        "seconds on cached vectors (see the README for measurements); larger "
                        "sets are searched on a seeded sample. Giving --l2, --learning_rate, "
                        "--how_many_training_steps, --optimizer, --train_batch_size, "
                        "--dropout, --early_stopping_patience, --eval_step_interval, the "
                        "codelab's intermediate graphs or a sweep trains with those "
                        "instead, as --tune off does. With --unknown_threshold auto the "
                        "validation split stays out of the search and the fit.")
    g.add_argument("--tune_folds", type=int, default=d.tune_folds,
                   help="Folds of --tune auto's cross-validation (fewer when the median "
                        "class has fewer training + validation images).")
    g.add_argument("--how_many_training_steps", type=int, default=d.how_many_training_steps,
                   action=_Given, help="Optimisation steps of the new layer.")
    g.add_argument("--learning_rate", type=_floats, default=str(d.learning_rate), action=_Given,
                   help="Learning rate of the optimiser; comma-separated values sweep.")
    g.add_argument("--optimizer", choices=("adam", "momentum", "sgd"), default=d.optimizer,
                   action=_Given,
                   help="Optimiser of the new layer (features are standardised for it).")
    g.add_argument("--label_smoothing", type=_floats, default=str(d.label_smoothing),
                   help="Mix this much of a uniform distribution into the one-hot targets; "
                        "comma-separated values sweep.")
    g.add_argument("--l2", type=_floats, default=str(d.l2), action=_Given,
                   help="L2 penalty on the new layer's (standardised) weights; "
                        "comma-separated values sweep. Not given: --tune auto chooses it (the "
                        "default applies with --tune off).")
    g.add_argument("--dropout", type=float, default=d.dropout, action=_Given,
                   help="Dropout rate on the bottleneck vector during training.")
    g.add_argument("--class_weight", choices=("none", "balanced"), default=d.class_weight,
                   help="balanced: weight each class's loss by n / (classes * class count), "
                        "so small classes count as much as large ones.")
    g.add_argument("--early_stopping_patience", type=int, default=d.early_stopping_patience,
                   action=_Given,
                   help="Stop after this many evaluations without a lower validation "
                        "cross-entropy and keep the best weights; 0 trains all steps.")
    g.add_argument("--train_batch_size", type=int, default=d.train_batch_size, action=_Given,
                   help="Training images per step; -1 uses the whole training split.")
    g.add_argument("--eval_step_interval", type=int, default=d.eval_step_interval,
                   action=_Given,
                   help="Evaluate (and write summaries) every this many steps; "
                        "unset: 1/100 of the steps.")
    g.add_argument("--seed", type=int, default=d.seed,
                   help="Seed of batch sampling; same seed and data give identical weights.")
    g = p.add_argument_group("Augmentation and fine-tuning")
    g.add_argument("--flip_left_right", action="store_true",
                   help="Randomly mirror training images horizontally (TF retrain.py's flag).")
    g.add_argument("--random_crop", type=float, default=d.random_crop,
                   help="Percentage of margin randomly cropped off training images.")
    g.add_argument("--random_scale", type=float, default=d.random_scale,
                   help="Percentage by which training images are randomly scaled up.")
    g.add_argument("--random_brightness", type=float, default=d.random_brightness,
                   help="Percentage by which training pixels are randomly brightened or dimmed.")
    g.add_argument("--augment_copies", type=int, default=d.augment_copies,
                   help="With any distortion flag: distorted views per training image, each "
                        "computed once and cached, then sampled with the originals in training. "
                        "Validation and test images are never distorted.")
    g.add_argument("--fine_tune_steps", type=int, default=d.fine_tune_steps,
                   help="After the new layer is trained, train the extractor's weights with it "
                        "for this many steps on images (batch-norm statistics stay frozen); "
                        "0 keeps the extractor frozen.")
    g.add_argument("--fine_tune_learning_rate", type=float, default=d.fine_tune_learning_rate,
                   help="Adam learning rate of fine-tuning.")
    g.add_argument("--fine_tune_batch_size", type=int, default=d.fine_tune_batch_size,
                   help="Images per fine-tuning step.")
    g = p.add_argument_group("Export")
    g.add_argument("--saved_model_dir", default=d.saved_model_dir,
                   help="Base directory; each run adds a new <unix-epoch> version beneath it.")
    g.add_argument("--output_labels", default=d.output_labels,
                   help="Also write the labels, one per line, to this file (never replaced "
                        "if it holds other labels). The model carries them in assets/labels.txt; "
                        "unset: no extra file.")
    g.add_argument("--unknown_threshold", type=_threshold, default=d.unknown_threshold,
                   metavar="auto|P",
                   help="Let the model answer 'unknown' when its top class probability is below "
                        "a threshold, stored in the model (its signatures then output "
                        "'unknown'; label, serve and a converted .tflite apply it): P, a "
                        "probability in [0, 1], or auto: chosen on the validation split for "
                        "--unknown_precision. Unset: the model always names a class.")
    g.add_argument("--unknown_precision", type=float, default=d.unknown_precision,
                   help="With --unknown_threshold auto: the accuracy wanted on the validation "
                        "images the model accepts; the threshold accepts as many as it can.")
    g = p.add_argument_group("Output")
    g.add_argument("--summaries_dir", default=d.summaries_dir,
                   help="TensorBoard summaries go to a fresh run-<time> sub-directory here.")
    g.add_argument("--print_misclassified_test_images", action="store_true",
                   help="List the test images the new layer gets wrong.")
    g.add_argument("--quiet", action="store_true", help="Only warnings and results; no progress bar.")
    g.add_argument("--verbose", action="store_true",
                   help=f"Name every skipped file (more than {LISTED_SKIPS} are otherwise "
                        f"counted by reason, with the first few names).")
    codelab.add_retrain_compat_flags(p)
    p.set_defaults(run=run_retrain)


class _Given(argparse.Action):
    """Store a flag's value and note that it was given: a setting of the step-based
    optimiser given on the command line (even at its default) turns --tune auto off."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given_flags = getattr(namespace, "given_flags", frozenset()) | {self.dest}


def _tune_mode(args, sweep) -> str:
    """--tune as given, or "off" when the step-based optimiser's settings were given."""
    given = getattr(args, "given_flags", frozenset())
    if getattr(args, "intermediate_store_frequency", 0):  # the codelab's graphs every N steps
        given |= {"intermediate_store_frequency"}
    chosen = sorted(given & set(OPTIMISER_SETTINGS)) + (["a sweep"] if sweep else [])
    if not chosen:
        return args.tune
    if "tune" in given and args.tune == "auto":
        flags = ", ".join(c if c == "a sweep" else f"--{c}" for c in chosen)
        raise InputError(f"--tune auto chooses l2 and fits the layer itself; it does not take "
                         f"{flags}: drop --tune auto to train with them, or drop them")
    return "off"


def _floats(text: str) -> tuple[float, ...]:
    """argparse type: "0.01" or "0.003,0.01,0.03" -> a tuple of floats."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"repeated value in {text!r}")
    return values


def _threshold(text: str):
    """argparse type: "auto" or a number (its range is checked by RetrainConfig.check)."""
    if text == UNKNOWN_AUTO:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected '{UNKNOWN_AUTO}' or a probability, "
                                         f"got {text!r}")


def _sweep_and_values(args, names) -> tuple[dict, tuple]:
    values, sweep = {}, []
    for name in names:
        given = getattr(args, name)
        given = _floats(given) if isinstance(given, str) else given
        values[name] = given[0]
        if len(given) > 1:
            sweep.append((name, given))
    return values, tuple(sweep)


def retrain_config(args) -> RetrainConfig:
    compat = codelab.apply_retrain_compat(args)  # TF retrain.py's flags; may set --tfhub_module
    swept, sweep = _sweep_and_values(args, SWEEPABLE)
    return RetrainConfig(  # values are checked by RetrainConfig.check
        image_dir=args.image_dir, tfhub_module=args.tfhub_module, image_size=args.image_size,
        tune=_tune_mode(args, sweep), tune_folds=args.tune_folds,
        bottleneck_dir=args.bottleneck_dir, bottleneck_batch_size=args.bottleneck_batch_size,
        how_many_training_steps=args.how_many_training_steps,
        optimizer=args.optimizer, dropout=args.dropout, class_weight=args.class_weight,
        early_stopping_patience=args.early_stopping_patience, sweep=sweep, **swept,
        train_batch_size=args.train_batch_size,
        validation_percentage=args.validation_percentage,
        testing_percentage=args.testing_percentage,
        eval_step_interval=args.eval_step_interval, summaries_dir=args.summaries_dir,
        saved_model_dir=args.saved_model_dir, output_labels=args.output_labels,
        print_misclassified_test_images=args.print_misclassified_test_images,
        seed=args.seed, max_image_pixels=args.max_image_pixels, runtime=args.runtime,
        flip_left_right=args.flip_left_right, random_crop=args.random_crop,
        random_scale=args.random_scale, random_brightness=args.random_brightness,
        augment_copies=args.augment_copies, fine_tune_steps=args.fine_tune_steps,
        fine_tune_learning_rate=args.fine_tune_learning_rate,
        fine_tune_batch_size=args.fine_tune_batch_size, **compat,
        unknown_threshold=args.unknown_threshold, unknown_precision=args.unknown_precision,
    )


def run_retrain(args) -> int:
    from trxsfr.train.retrain import retrain

    with ProgressBars(not args.quiet) as bars:
        result = retrain(retrain_config(args), on_progress=bars)
    out("Images per class and split:")
    rows = [(label, c["train"], c["validation"], c["test"]) for label, c in result.counts.items()]
    for line in table(("class", "train", "validation", "test"), rows):
        out("  " + line)
    if result.skipped:
        if args.verbose or len(result.skipped) <= LISTED_SKIPS:
            out(f"Skipped {len(result.skipped)} file(s):")
        for line in skipped_lines(result.skipped, args.verbose, "  {path}: {reason}",
                                  "Skipped {count} file(s), by reason (--verbose lists each):"):
            out(line)
    for note in result.notes:
        out(f"Note: {note}")
    out(f"Bottlenecks: {result.reused} reused from cache, {result.computed} computed")
    if result.augmented:
        out(f"Augmented views: {result.augmented[0]} reused from cache, "
             f"{result.augmented[1]} computed")
    if result.fine_tuned:
        out("Fine-tuned: the exported extractor carries the fine-tuned weights")
    if result.history and "validation_accuracy" in result.history[-1]:
        out(f"Final validation accuracy = {100 * result.history[-1]['validation_accuracy']:.1f}%")
    if result.tuning and result.tuning["tried"]:
        t = result.tuning
        chosen = next(r for r in t["tried"] if r["chosen"])
        out(f"Cross-validated accuracy = {100 * chosen['cv_accuracy']:.1f}% "
            f"({t['folds']}-fold, N={t['search_images']})")
    if result.test_accuracy is not None:
        out(f"Final test accuracy = {100 * result.test_accuracy:.1f}% (N={result.test_count})")
    if args.print_misclassified_test_images:
        out(f"Misclassified test images: {len(result.misclassified)}")
        for path, true, pred in result.misclassified:
            out(f"  {path} (true: {true}, predicted: {pred})")
    if result.sweep:
        names = [n for n in SWEEPABLE if n in result.sweep[0]]
        out("Sweep (lowest validation cross entropy is exported):")
        rows = [[f"{r[n]:g}" for n in names] + [f"{r['validation_cross_entropy']:.4f}",
                f"{100 * r['validation_accuracy']:.1f}%", f"{r['seconds']:.1f}s",
                "<- exported" if r["chosen"] else ""] for r in result.sweep]
        for line in table(names + ["val_xent", "val_acc", "time", ""], rows):
            out("  " + line)
    if result.tuning:
        for line in tuning_lines(result.tuning):
            out(line)
    if result.unknown:
        out(unknown_line(result.unknown))
    if result.summary_dir:
        out(f"TensorBoard summaries: {result.summary_dir}")
    out(result.version_dir)
    return EXIT_OK


def unknown_line(unknown: dict) -> str:
    """The retrain summary line of the "unknown" threshold and what it does on held-out data."""
    how = (f"auto, for {100 * unknown['target_precision']:g}% precision on accepted validation "
           f"images{'' if unknown['reached'] else ', not reached: best precision taken'}"
           if unknown["mode"] == "auto" else "given")
    parts = []
    for split in ("validation", "test"):
        figures = unknown.get(split)
        if figures and figures["accepted"]:
            parts.append(f"{split}: {100 * figures['coverage']:.1f}% accepted, "
                         f"{100 * figures['precision']:.1f}% of them right")
        elif figures:
            parts.append(f"{split}: none accepted")
    return (f"Unknown threshold = {unknown['threshold']:.4f} ({how})"
            + (f"; {'; '.join(parts)}" if parts else ""))


def tuning_lines(t: dict) -> list[str]:
    """What --tune auto tried and chose (a Tuning record), as printed after a retrain."""
    lines = []
    if t["tried"]:
        pool = "training + validation" if t.get("with_validation", True) else "training"
        lines.append(f"L2 penalty by {t['folds']}-fold cross-validation on {t['search_images']} "
                     f"{pool} images (rule: {t['rule']}):")
        rows = [[f"{r['l2']:.3g}", f"{r['cv_cross_entropy']:.4f}",
                 f"{100 * r['cv_accuracy']:.1f}%", str(r["iterations"]), f"{r['seconds']:.2f}s",
                 "<- chosen" if r["chosen"] else ""] for r in t["tried"]]
        lines += ["  " + line for line in table(
            ("l2", "cv_xent", "cv_acc", "iterations", "time", ""), rows)]
    for note in t["notes"]:
        lines.append(f"Note: {note}")
    how = (f"by L-BFGS in {t['fit_iterations']} iterations" if t["fit"] == "lbfgs"
           else f"by {t['fit_iterations']} optimiser steps")
    why = (f"the chosen {t['cv_l2']:.3g} for {t['pool_images']} images instead of a fold's "
           f"{round(t['search_images'] * (t['folds'] - 1) / t['folds'])}: the same penalty "
           f"per image" if t["cv_l2"] is not None else "no search")
    lines.append(f"Exported layer: l2 = {t['l2']:.3g} ({why}), fitted {how}. "
                 f"Search {t['search_seconds']:.1f}s, fit {t['fit_seconds']:.1f}s.")
    return lines


# ---------------------------------------------------------------- fixtures

def add_fixtures_parser(sub) -> None:
    p = sub.add_parser(
        "fixtures", formatter_class=Formatter,
        help="Write a tiny feature extractor and tiny class folders to smoke-test offline.",
        description="Writes OUT_DIR/module (a tiny TF-Hub-style feature-vector SavedModel with "
                    "fixed random weights), OUT_DIR/images (class folders to train on) and "
                    "OUT_DIR/heldout (class folders to evaluate on). Nothing is downloaded.",
    )
    p.add_argument("out_dir", help="A new or empty directory.")
    p.add_argument("--per_class", type=int, default=40, help="Training images per class.")
    p.add_argument("--heldout_per_class", type=int, default=12, help="Held-out images per class.")
    p.set_defaults(run=run_fixtures)


def run_fixtures(args) -> int:
    from trxsfr.kit import write_fixtures

    if args.per_class < 1 or args.heldout_per_class < 1:
        raise InputError("--per_class and --heldout_per_class must be positive")
    paths = write_fixtures(args.out_dir, args.per_class, args.heldout_per_class)
    for name, path in paths.items():
        out(f"{name}: {path}")
    out(f"try: trxsfr retrain --image_dir {paths['images']} --tfhub_module {paths['module']}")
    return EXIT_OK


