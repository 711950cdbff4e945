"""Command line: parse flags, call the library, print results, map errors to exit codes.

Exit codes: 0 success; 1 `label --min_accuracy` not reached; 2 bad input
(one line on stderr saying what to fix).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from typing import Optional, Sequence

from trxsfr.cli import codelab, native_stderr
from trxsfr.base.config import DEFAULT_MODULE, SWEEPABLE, LabelConfig, RetrainConfig
from trxsfr.base.errors import InputError, TrxsfrError
from trxsfr.cli.tables import table

EXIT_OK, EXIT_BELOW_GATE, EXIT_BAD_INPUT = 0, 1, 2


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except empty ones (None, False, []) that say nothing."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or default == []:
            return action.help  # `is`: a default of 0 or 0.0 equals False but says something
        return super()._get_help_string(action)


def _out(line: str = "") -> None:
    print(line, flush=True)


# ---------------------------------------------------------------- retrain

def add_retrain_parser(sub) -> None:
    d = RetrainConfig
    p = sub.add_parser(
        "retrain", formatter_class=_Formatter,
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
    g = p.add_argument_group("Training")
    g.add_argument("--how_many_training_steps", type=int, default=d.how_many_training_steps,
                   help="Optimisation steps of the new layer.")
    g.add_argument("--learning_rate", type=_floats, default=str(d.learning_rate),
                   help="Learning rate of the optimiser; comma-separated values sweep.")
    g.add_argument("--optimizer", choices=("adam", "momentum", "sgd"), default=d.optimizer,
                   help="Optimiser of the new layer (features are standardised for it).")
    g.add_argument("--label_smoothing", type=_floats, default=str(d.label_smoothing),
                   help="Mix this much of a uniform distribution into the one-hot targets; "
                        "comma-separated values sweep.")
    g.add_argument("--l2", type=_floats, default=str(d.l2),
                   help="L2 penalty on the new layer's (standardised) weights; "
                        "comma-separated values sweep.")
    g.add_argument("--dropout", type=float, default=d.dropout,
                   help="Dropout rate on the bottleneck vector during training.")
    g.add_argument("--class_weight", choices=("none", "balanced"), default=d.class_weight,
                   help="balanced: weight each class's loss by n / (classes * class count), "
                        "so small classes count as much as large ones.")
    g.add_argument("--early_stopping_patience", type=int, default=d.early_stopping_patience,
                   help="Stop after this many evaluations without a lower validation "
                        "cross-entropy and keep the best weights; 0 trains all steps.")
    g.add_argument("--train_batch_size", type=int, default=d.train_batch_size,
                   help="Training images per step; -1 uses the whole training split.")
    g.add_argument("--eval_step_interval", type=int, default=d.eval_step_interval,
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
    g = p.add_argument_group("Output")
    g.add_argument("--summaries_dir", default=d.summaries_dir,
                   help="TensorBoard summaries go to a fresh run-<time> sub-directory here.")
    g.add_argument("--print_misclassified_test_images", action="store_true",
                   help="List the test images the new layer gets wrong.")
    g.add_argument("--quiet", action="store_true", help="Only warnings and results; no progress bar.")
    codelab.add_retrain_compat_flags(p)
    p.set_defaults(run=run_retrain)


def _floats(text: str) -> tuple[float, ...]:
    """argparse type: "0.01" or "0.003,0.01,0.03" -> a tuple of floats."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"repeated value in {text!r}")
    return values


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
    return RetrainConfig(  # values are checked by pipeline.check_settings
        image_dir=args.image_dir, tfhub_module=args.tfhub_module, image_size=args.image_size,
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
        seed=args.seed, progress=not args.quiet,
        flip_left_right=args.flip_left_right, random_crop=args.random_crop,
        random_scale=args.random_scale, random_brightness=args.random_brightness,
        augment_copies=args.augment_copies, fine_tune_steps=args.fine_tune_steps,
        fine_tune_learning_rate=args.fine_tune_learning_rate,
        fine_tune_batch_size=args.fine_tune_batch_size, **compat,
    )


def run_retrain(args) -> int:
    from trxsfr.train.retrain import retrain

    result = retrain(retrain_config(args))
    _out("Images per class and split:")
    rows = [(label, c["train"], c["validation"], c["test"]) for label, c in result.counts.items()]
    for line in table(("class", "train", "validation", "test"), rows):
        _out("  " + line)
    if result.skipped:
        _out(f"Skipped {len(result.skipped)} file(s):")
        for s in result.skipped:
            _out(f"  {s.path}: {s.reason}")
    for note in result.notes:
        _out(f"Note: {note}")
    _out(f"Bottlenecks: {result.reused} reused from cache, {result.computed} computed")
    if result.augmented:
        _out(f"Augmented views: {result.augmented[0]} reused from cache, "
             f"{result.augmented[1]} computed")
    if result.fine_tuned:
        _out("Fine-tuned: the exported extractor carries the fine-tuned weights")
    if result.history and "validation_accuracy" in result.history[-1]:
        _out(f"Final validation accuracy = {100 * result.history[-1]['validation_accuracy']:.1f}%")
    if result.test_accuracy is not None:
        _out(f"Final test accuracy = {100 * result.test_accuracy:.1f}% (N={result.test_count})")
    if args.print_misclassified_test_images:
        _out(f"Misclassified test images: {len(result.misclassified)}")
        for path, true, pred in result.misclassified:
            _out(f"  {path} (true: {true}, predicted: {pred})")
    if result.sweep:
        names = [n for n in SWEEPABLE if n in result.sweep[0]]
        _out("Sweep (lowest validation cross entropy is exported):")
        rows = [[f"{r[n]:g}" for n in names] + [f"{r['validation_cross_entropy']:.4f}",
                f"{100 * r['validation_accuracy']:.1f}%", f"{r['seconds']:.1f}s",
                "<- exported" if r["chosen"] else ""] for r in result.sweep]
        for line in table(names + ["val_xent", "val_acc", "time", ""], rows):
            _out("  " + line)
    if result.summary_dir:
        _out(f"TensorBoard summaries: {result.summary_dir}")
    _out(result.version_dir)
    return EXIT_OK


# ---------------------------------------------------------------- label

def add_label_parser(sub) -> None:
    d = LabelConfig
    p = sub.add_parser(
        "label", formatter_class=_Formatter,
        help="Label images with an exported model; evaluate it on class folders.",
        description=(
            "Inputs are image files and/or folders. A folder of images gets one\n"
            "'label score path' line per class per image (top-k, highest first). A folder\n"
            "whose sub-folders are named after the model's labels is an evaluation set:\n"
            "accuracy, per-class accuracy, a confusion matrix and the misclassified files follow."
        ),
    )
    g = p.add_argument_group("Data")
    g.add_argument("inputs", nargs="*", help="Image files and folders.")
    g.add_argument("--image", action="append", default=[],
                   help="An image file to label (label_image.py's flag; may repeat).")
    g = p.add_argument_group("Model")
    g.add_argument("--model", "--graph", dest="model", default=d.model,
                   help="A model version directory, or a base directory (its highest numbered "
                        "version is used, as TF Serving does), a .tflite file, or a frozen "
                        "graph .pb (retrain --output_graph, TF's retrain.py). --graph is "
                        "label_image.py's name.")
    g.add_argument("--labels", default=None,
                   help="label_image.py's labels file. A frozen graph without labels of its own "
                        "(as TF's retrain.py wrote them) takes them from here, else from a "
                        "labels file beside it (<graph>.labels.txt, retrained_labels.txt); "
                        "other models carry their labels and this file is only checked "
                        "against them.")
    codelab.add_label_image_flags(g)  # --input_layer, --input_mean, ... for a frozen graph
    g = p.add_argument_group("Inference")
    g.add_argument("--batch_size", type=int, default=d.batch_size,
                   help="Images per forward pass (two run at once, one for a .tflite model).")
    g.add_argument("--top_k", type=int, default=d.top_k, help="Classes listed per image.")
    g = p.add_argument_group("Output")
    g.add_argument("--format", choices=("text", "json", "codelab"), default="text",
                   help="text: lines and summary; json: one JSON document; codelab: "
                        "label_image.py's 'label (score=...)' lines.")
    g.add_argument("--min_accuracy", type=float, default=d.min_accuracy,
                   help="Exit with code 1 if evaluation accuracy is below this fraction (0-1).")
    g.add_argument("--report", default=None, metavar="HTML",
                   help="Also write a self-contained HTML analysis report to this new file: run "
                        "summary, per-class metrics, confusion matrix, misclassified and "
                        "least confident thumbnails, reliability diagram, training curves. "
                        "An existing file is never replaced (exit 2).")
    g.add_argument("--quiet", action="store_true", help="No progress bar.")
    p.set_defaults(run=run_label)


def run_label(args) -> int:
    from trxsfr.use import labeling

    if args.min_accuracy is not None and not 0 <= args.min_accuracy <= 1:
        raise InputError(f"--min_accuracy is a fraction in [0, 1], got {args.min_accuracy}")
    if args.top_k <= 0 or args.batch_size <= 0:
        raise InputError("--top_k and --batch_size must be positive")
    inputs = list(args.inputs) + list(args.image)
    if not inputs:
        raise InputError("nothing to label: pass image files or folders (or --image FILE)")
    if args.report:
        from trxsfr import report as html_report

        html_report.check_output(args.report)  # before the work, not after it
    graph_options = codelab.label_graph_options(args)  # label_image.py's flags, for a .pb
    _import_tensorflow_quietly()  # after the checks above, which need no TensorFlow
    report = labeling.run(args.model, inputs, batch_size=args.batch_size,
                          progress=not args.quiet and args.format != "json",
                          labels_file=args.labels, graph_options=graph_options,
                          evaluation_required_by="--min_accuracy" if args.min_accuracy is not None
                          else None)
    if args.format == "json":
        _out(json.dumps(report.to_json(args.top_k), indent=1))
    elif args.format == "codelab":
        for line in report.codelab_lines(args.top_k):
            _out(line)
    else:
        for line in report.text_lines(args.top_k):
            _out(line)
    if args.report:
        written = html_report.write(report, args.report, top_k=args.top_k)
        # stderr: stdout stays exactly the chosen --format (one JSON document for json).
        print(f"Report: {written.path} ({written.bytes / 1e6:.2f} MB, "
              f"{written.thumbnails} thumbnails)", file=sys.stderr)
    accuracy = report.evaluation["accuracy"] if report.evaluation else None
    if args.min_accuracy is not None:  # labeling.run made sure there is an evaluation
        if accuracy < args.min_accuracy:
            print(f"trxsfr: accuracy {accuracy:.4f} is below --min_accuracy {args.min_accuracy}",
                  file=sys.stderr)
            return EXIT_BELOW_GATE
    return EXIT_OK


# ---------------------------------------------------------------- report

def add_report_parser(sub) -> None:
    from trxsfr.report import DEFAULT_THUMBNAILS, LEAST_CONFIDENT_CORRECT

    p = sub.add_parser(
        "report", formatter_class=_Formatter,
        help="Write the HTML analysis report of a saved `label --format json` run.",
        description=(
            "Turns the JSON document of a label run into one self-contained HTML file (images\n"
            "and figures inlined, nothing fetched over the network): run summary and training\n"
            "hyper-parameters, per-class precision/recall/F1, the confusion matrix, the\n"
            "misclassified images (most confident first) and the least confident correct ones,\n"
            "a reliability diagram with expected calibration error, and the training curves.\n"
            "Example: trxsfr label --model M heldout/ --format json > run.json\n"
            "         trxsfr report run.json --out report.html"
        ),
    )
    p.add_argument("label_json",
                   help="What `trxsfr label --format json` printed, saved to a file. Relative "
                        "image paths in it are looked up from the working directory, then from "
                        "this file's folder.")
    p.add_argument("--out", required=True, default=argparse.SUPPRESS, metavar="HTML",
                   help="Required. The report file to write; it must not exist yet (an existing "
                        "file is never replaced).")
    p.add_argument("--thumbnails", type=int, default=DEFAULT_THUMBNAILS,
                   help="Most thumbnails in the misclassified gallery (the least confident "
                        f"correct gallery shows at most {LEAST_CONFIDENT_CORRECT}); further "
                        "images are listed in a table without pictures.")
    p.add_argument("--quiet", action="store_true", help="Only warnings and the result line.")
    p.set_defaults(run=run_report)


def run_report(args) -> int:
    from trxsfr import report as html_report

    written = html_report.write_from_file(args.label_json, args.out, args.thumbnails)
    if written.missing_images:
        _out(f"Note: {written.missing_images} image(s) not found; shown as placeholders")
    _out(f"Report: {written.path} ({written.bytes / 1e6:.2f} MB, "
         f"{written.thumbnails} thumbnails)")
    return EXIT_OK


# ---------------------------------------------------------------- explain

def add_explain_parser(sub) -> None:
    from trxsfr import explain

    p = sub.add_parser(
        "explain", formatter_class=_Formatter,
        help="Show which pixels drove a prediction (integrated gradients), one PNG per image.",
        description=(
            "Integrated gradients through the whole model (feature extractor + new layer),\n"
            "from the pixels the model sees to one class's score. For each image a PNG with\n"
            "the image, the attribution heat map and the overlay is written to --out, and a\n"
            "line reports the completeness check: the attributions must add up to\n"
            "F(image) - F(baseline); a large error means too few --steps."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="Image files to explain.")
    p.add_argument("--model", default=LabelConfig.model,
                   help="A model version directory, or a base directory (its highest numbered "
                        "version is used).")
    p.add_argument("--out", required=True, default=argparse.SUPPRESS, metavar="DIR",
                   help="Required. Folder for the PNGs (created if missing). Existing files are "
                        "never replaced: a taken name gets a -2, -3, ... suffix.")
    p.add_argument("--class", dest="label", default=None, metavar="LABEL",
                   help="Explain this class's score; unset: each image's predicted class.")
    p.add_argument("--steps", type=int, default=explain.DEFAULT_STEPS,
                   help="Interpolation points between baseline and image (Gauss-Legendre "
                        "nodes); more steps, smaller completeness error.")
    p.add_argument("--baseline", choices=explain.BASELINES, default=explain.DEFAULT_BASELINE,
                   help="The 'absence of signal' image the path starts from: black (all zeros), "
                        "or blur (the image under a strong Gaussian blur, so attributions go to "
                        "shapes and edges rather than to brightness).")
    p.add_argument("--target", choices=explain.TARGETS, default=explain.DEFAULT_TARGET,
                   help="The score explained: the class's logit (before the softmax; does not "
                        "saturate near probability 1) or its softmax probability.")
    p.add_argument("--batch_size", type=int, default=explain.DEFAULT_BATCH_SIZE,
                   help="Images per forward+backward pass; the default runs 50 steps, the image "
                        "and the baseline in one pass. Lower it if memory is short.")
    p.add_argument("--quiet", action="store_true", help="Only warnings and the result lines.")
    p.set_defaults(run=run_explain)


def run_explain(args) -> int:
    from trxsfr import explain

    results = explain.run(args.model, args.images, args.out, label=args.label, steps=args.steps,
                          baseline=args.baseline, batch_size=args.batch_size, target=args.target)
    loose = 0
    for ex in results:
        error = ex.completeness_error
        check = ("completeness not judged: F barely moved from the baseline"
                 if error is None else f"completeness error {100 * error:.2f}%")
        loose += error is not None and error > explain.COMPLETENESS_TOLERANCE
        _out(f"{ex.path}: {ex.label} (probability {ex.probability:.4f}"
             f"{'' if ex.label == ex.predicted else f'; predicted {ex.predicted}'}); "
             f"{ex.target} {ex.score:.5f} vs {ex.baseline_score:.5f} at the {ex.baseline} "
             f"baseline; sum of attributions {ex.total:.5f} vs difference {ex.delta:.5f}: "
             f"{check} -> {ex.png}")
    if loose:
        _out(f"Note: {loose} image(s) exceed a {100 * explain.COMPLETENESS_TOLERANCE:.0f}% "
             f"completeness error; raise --steps")
    seconds = [ex.seconds for ex in results]
    _out(f"Integrated gradients: {len(results)} image(s), {args.steps} steps in "
         f"{results[0].batches} batch(es) per image, {sum(seconds) / len(seconds):.3f} s/image "
         f"(first image {seconds[0]:.3f} s, includes tracing)")
    return EXIT_OK


# ---------------------------------------------------------------- fixtures

def add_fixtures_parser(sub) -> None:
    p = sub.add_parser(
        "fixtures", formatter_class=_Formatter,
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
        _out(f"{name}: {path}")
    _out(f"try: trxsfr retrain --image_dir {paths['images']} --tfhub_module {paths['module']}")
    return EXIT_OK


# ---------------------------------------------------------------- main

class _Parser(argparse.ArgumentParser):
    """argparse with trxsfr's one-line errors (exit 2) instead of a usage block; the
    sub-command parsers are of this class too (add_subparsers takes the parent's)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"trxsfr: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="trxsfr", formatter_class=_Formatter,
        description="Transfer learning for images: retrain a TF-Hub feature extractor's final "
                    "layer on your class folders, export a versioned SavedModel, label with it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_retrain_parser(sub)
    add_label_parser(sub)
    add_report_parser(sub)
    add_explain_parser(sub)
    add_fixtures_parser(sub)
    from trxsfr.cli.deploy import add_deploy_parsers  # serve, export-tflite, info

    add_deploy_parsers(sub)
    return parser


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    native_stderr.enabled = True  # what the two settings above no longer silence


# Commands that always load TensorFlow (`info` does for a SavedModel, not for a .tflite);
# `label` imports it after its own flag checks.
_TENSORFLOW_COMMANDS = ("retrain", "explain", "fixtures", "serve", "export-tflite")


def _is_tflite(path: str) -> bool:
    from trxsfr.lite import is_tflite  # no TensorFlow import

    return is_tflite(path)


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow and set up its devices with its C++ start-up lines dropped."""
    if "tensorflow" in sys.modules:
        return
    with native_stderr.quiet():
        import tensorflow as tf

        tf.config.list_logical_devices()  # the CUDA probe logs here, not at the import


def _cap_malloc_arenas(arenas: int = 2) -> None:
    """Ask glibc for at most `arenas` malloc arenas (as MALLOC_ARENA_MAX does).

    By default every thread that allocates gets an arena of its own, up to 8 per
    core; with TensorFlow's and tf.data's threads passing 600 KB images and 20 MB
    batches around, those arenas fragment and peak memory creeps up with every
    batch (measured: +41 MB over 4,000 images, against +6 MB with two arenas, at
    the same speed). Must run before TensorFlow starts its threads; a no-op off glibc.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return  # the user's own setting wins
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc


class _LineFormatter(logging.Formatter):
    def format(self, record):
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"trxsfr: {record.levelname.lower()}: {message}"
        return message


def main(argv: Optional[Sequence[str]] = None) -> int:
    _cap_malloc_arenas()
    args = build_parser().parse_args(argv)
    _quiet_tensorflow()
    if args.command in _TENSORFLOW_COMMANDS or (
            args.command == "info" and not _is_tflite(args.model)):
        _import_tensorflow_quietly()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter())
    root = logging.getLogger("trxsfr")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    root.propagate = False
    try:
        return args.run(args)
    except TrxsfrError as e:
        print(f"trxsfr: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("trxsfr: interrupted", file=sys.stderr)
        return 130


def entry_point(argv: Optional[Sequence[str]] = None) -> None:
    """The `trxsfr` command, `python -m trxsfr` and the script wrappers: `main`, then exit.

    Everything trxsfr writes is closed when `main` returns. Python's shutdown would
    then spend about a second garbage-collecting the ~400,000 objects TensorFlow's
    import leaves behind, which the OS frees anyway: frozen objects are skipped
    (atexit handlers and module teardown still run).
    """
    code = main(argv)
    gc.freeze()
    sys.exit(code)
