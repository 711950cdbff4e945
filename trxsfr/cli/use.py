"""`label`, `report` and `explain`: flags -> the library -> printed results."""

from __future__ import annotations

import argparse
import json

from trxsfr.base.config import RUNTIMES, LabelConfig
from trxsfr.cli import beam, codelab, process, web
from trxsfr.cli.common import (
    EXIT_BELOW_GATE,
    EXIT_OK,
    LISTED_SKIPS,
    Formatter,
    ProgressBars,
    evaluation_lines,
    note,
    out,
    skipped_lines,
)

# ---------------------------------------------------------------- label

def add_label_parser(sub) -> None:
    d = LabelConfig
    p = sub.add_parser(
        "label", formatter_class=Formatter,
        help="Label images with an exported model; evaluate it on class folders.",
        description=(
            "Inputs are image files, folders, http(s) URLs and .txt lists of URLs (one per\n"
            "line; a .txt file whose first line is a URL). A folder of images gets one\n"
            "'label score path' line per class per image (top-k, highest first). A folder\n"
            "whose sub-folders are named after the model's labels is an evaluation set:\n"
            "accuracy, per-class accuracy, a confusion matrix and the misclassified files follow."
        ),
    )
    g = p.add_argument_group("Data")
    g.add_argument("inputs", nargs="*", help="Image files, folders, URLs and .txt lists of URLs.")
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
    g.add_argument("--runtime", choices=RUNTIMES, default=d.runtime,
                   help="What runs a SavedModel's network (decoding is TensorFlow's either way): "
                        "litert (a float32 conversion of the whole model, kept under "
                        "$TRXSFR_HOME/litert, on LiteRT's interpreter), tf, or auto: LiteRT "
                        "when its outputs match TensorFlow's on a probe batch and a conversion "
                        "is cached or pays for itself (200 images or more), else TensorFlow. "
                        "A .tflite always runs on LiteRT, a frozen graph on TensorFlow.")
    g.add_argument("--max_image_pixels", type=int, default=d.max_image_pixels,
                   help="Skip (and name) images whose header declares more pixels than this, "
                        "without decoding them.")
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
    g.add_argument("--verbose", action="store_true",
                   help=f"Name every skipped file (more than {LISTED_SKIPS} are otherwise "
                        f"counted by reason, with the first few names; --format json always "
                        f"lists each).")
    web.add_fetch_flags(p.add_argument_group("URLs"))
    beam.add_label_flags(p)
    p.set_defaults(run=run_label)


def run_label(args) -> int:
    if args.runner or args.output:  # an Apache Beam pipeline instead of this process
        return beam.run_label(args)
    from trxsfr.use import labeling, models

    config = LabelConfig(model=args.model, inputs=tuple(args.inputs) + tuple(args.image),
                         top_k=args.top_k, batch_size=args.batch_size,
                         min_accuracy=args.min_accuracy, max_image_pixels=args.max_image_pixels,
                         runtime=args.runtime)
    config.check()
    if args.report:
        from trxsfr import report as html_report

        html_report.check_output(args.report)  # before the work, not after it
    graph_options = codelab.label_graph_options(args)  # label_image.py's flags, for a .pb
    process.import_tensorflow_quietly()  # after the checks above, which need no TensorFlow
    predictor = process.quietly(models.load, config.model, graph_options, config.runtime)
    with ProgressBars(not args.quiet and args.format != "json") as bars:
        run = labeling.run(predictor, config.inputs, batch_size=config.batch_size,
                           on_progress=bars, labels_file=args.labels,
                           fetch=web.fetch_options(args),
                           evaluation_required_by="--min_accuracy"
                           if config.min_accuracy is not None else None,
                           max_pixels=config.max_image_pixels)
    if args.format == "json":
        out(json.dumps(run.to_json(config.top_k), indent=1))
    else:
        lines = codelab_lines if args.format == "codelab" else text_lines
        for line in lines(run, config.top_k, args.verbose):
            out(line)
    if args.report:
        written = html_report.write(run, args.report, top_k=config.top_k)
        # stderr: stdout stays exactly the chosen --format (one JSON document for json).
        note(f"Report: {written.path} ({written.bytes / 1e6:.2f} MB, "
             f"{written.thumbnails} thumbnails)")
    accuracy = run.evaluation["accuracy"] if run.evaluation else None
    if config.min_accuracy is not None:  # labeling.run made sure there is an evaluation
        if accuracy < config.min_accuracy:
            note(f"trxsfr: accuracy {accuracy:.4f} is below --min_accuracy {config.min_accuracy}")
            return EXIT_BELOW_GATE
    return EXIT_OK


def text_lines(run, top_k: int, verbose: bool = False) -> list[str]:
    """`label`'s text output: `label score path` lines, skips, evaluation, timings."""
    lines = []
    unknown = run.unknown()
    for i, e in enumerate(run.entries):
        if unknown[i]:  # the answer first; the ranking still says what the model leans to
            lines.append(f"unknown {float(run.probabilities[i].max()):.5f} {e.path}")
        lines += [f"{label} {score:.5f} {e.path}" for label, score in run.ranked(i, top_k)]
    lines += skipped_lines(run.skipped, verbose)
    lines += evaluation_lines(run.evaluation, run.labels, run.unknown_folders)
    if run.evaluation:
        ev = run.evaluation
        if ev.get("unknown"):
            u = ev["unknown"]
            right = ("" if u["accuracy_accepted"] is None else
                     f"; accuracy on the {ev['count'] - u['unknown']} accepted = "
                     f"{100 * u['accuracy_accepted']:.2f}%")
            lines.append(f"Unknown (top score below {u['threshold']:.4f}): {u['unknown']} of "
                         f"{ev['count']}{right}")
        mis = run.misclassified()
        lines.append(f"Misclassified: {len(mis)}")
        lines += [f"  {path} (true: {t}, predicted: {p}, score {s:.5f})" for path, t, p, s in mis]
    lines.append(f"Images: {len(run.entries)} labelled, {len(run.skipped)} skipped")
    lines.append(f"Model load time: {run.load_seconds:.3f}s ({run.model_path})")
    lines.append(f"Mean inference time: {run.per_image_ms:.2f} ms/image "
                 f"(decode included, batched)")
    return lines


def codelab_lines(run, top_k: int, verbose: bool = False) -> list[str]:
    """label_image.py's output: the evaluation time, then `label (score=...)` lines."""
    lines = []
    for i, e in enumerate(run.entries):
        if len(run.entries) > 1:
            lines.append(e.path)
        lines.append(f"Evaluation time (1-image): {run.per_image_ms / 1000:.3f}s")
        lines.append("")
        lines += [f"{label} (score={score:.5f})" for label, score in run.ranked(i, top_k)]
    return lines + skipped_lines(run.skipped, verbose)


# ---------------------------------------------------------------- report

def add_report_parser(sub) -> None:
    from trxsfr.report import DEFAULT_THUMBNAILS, LEAST_CONFIDENT_CORRECT

    p = sub.add_parser(
        "report", formatter_class=Formatter,
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
        out(f"Note: {written.missing_images} image(s) not found; shown as placeholders")
    out(f"Report: {written.path} ({written.bytes / 1e6:.2f} MB, "
         f"{written.thumbnails} thumbnails)")
    return EXIT_OK


# ---------------------------------------------------------------- explain

def add_explain_parser(sub) -> None:
    from trxsfr import explain

    p = sub.add_parser(
        "explain", formatter_class=Formatter,
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
        out(f"{ex.path}: {ex.label} (probability {ex.probability:.4f}"
             f"{'' if ex.label == ex.predicted else f'; predicted {ex.predicted}'}); "
             f"{ex.target} {ex.score:.5f} vs {ex.baseline_score:.5f} at the {ex.baseline} "
             f"baseline; sum of attributions {ex.total:.5f} vs difference {ex.delta:.5f}: "
             f"{check} -> {ex.png}")
    if loose:
        out(f"Note: {loose} image(s) exceed a {100 * explain.COMPLETENESS_TOLERANCE:.0f}% "
             f"completeness error; raise --steps")
    seconds = [ex.seconds for ex in results]
    out(f"Integrated gradients: {len(results)} image(s), {args.steps} steps in "
         f"{results[0].batches} batch(es) per image, {sum(seconds) / len(seconds):.3f} s/image "
         f"(first image {seconds[0]:.3f} s, includes tracing)")
    return EXIT_OK


