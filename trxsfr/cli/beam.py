"""`extract` and `label --runner`: the Apache Beam pipelines, from flags to printed results.

Apache Beam is the optional `beam` extra (`pip install 'trxsfr[beam]'`); nothing here
imports it until a pipeline runs. Options that are not trxsfr's go to Beam as they are
(`--direct_num_workers=2`, Dataflow's `--project=...`); each must be a Beam pipeline
option, so a typo is still an error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging

from trxsfr.base.config import DEFAULT_MODULE, RUNTIMES, ExtractConfig, LabelConfig
from trxsfr.base.errors import InputError
from trxsfr.cli import process
from trxsfr.cli.common import (
    EXIT_BELOW_GATE,
    EXIT_OK,
    LISTED_SKIPS,
    Formatter,
    evaluation_lines,
    note,
    out,
    skipped_lines,
)

DEFAULT_RUNNER = "DirectRunner"
_OPTIONS_HELP = (
    "Any other option is an Apache Beam pipeline option, passed on as it is; write them "
    "as --name=value. Locally: --direct_num_workers=2 --direct_running_mode=multi_processing "
    "(one process per worker, each loading the model once). Dataflow, Flink and Spark: see "
    "the README."
)


def takes_pipeline_options(args) -> bool:
    """Whether the parsed command hands options it does not know to Beam."""
    return args.command == "extract" or (args.command == "label" and bool(args.runner))


def require_beam() -> None:
    """Raises InputError when Apache Beam is not installed."""
    if importlib.util.find_spec("apache_beam") is None:
        raise InputError("Apache Beam is not installed: pip install 'trxsfr[beam]' "
                         "(or pip install -e '.[beam]' in a checkout)")


def pipeline_args(args) -> list[str]:
    """Beam's options: --runner, the options trxsfr did not know, and (unless --verbose or
    given) workers that log errors only."""
    extra = list(getattr(args, "pipeline_args", []) or [])
    if not args.verbose and not any(a.startswith("--default_sdk_harness_log_level")
                                    for a in extra):
        extra.append("--default_sdk_harness_log_level=ERROR")
    return [f"--runner={args.runner}"] + extra


@contextlib.contextmanager
def quiet_beam(verbose: bool):
    """While inside, Beam's own log lines (job service, workers' forwarded logs, its
    import-time warnings on the root logger) below errors, unless --verbose."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger("apache_beam"), logging.getLogger()]
    saved = [logger.level for logger in loggers]
    for logger in loggers:  # trxsfr's own logger does not propagate to the root
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, saved):
            logger.setLevel(level)


# ---------------------------------------------------------------- extract

def add_extract_parser(sub) -> None:
    d = ExtractConfig
    p = sub.add_parser(
        "extract", formatter_class=Formatter,
        help="Compute bottleneck vectors with an Apache Beam pipeline (locally, Dataflow, "
             "Flink, Spark) into the cache retrain reads.",
        description=(
            "Lists the images below --image_dir (a folder or a Beam filesystem URI such as\n"
            "gs://bucket/photos), skips those whose vector --bottleneck_dir already holds,\n"
            "decodes each with retrain's preprocessing, runs the extractor (loaded once per\n"
            "worker) on batches, and appends the vectors to the store, so that\n"
            "`retrain --image_dir ... --bottleneck_dir <same>` computes none of them.\n"
            "Needs the beam extra: pip install 'trxsfr[beam]'. " + _OPTIONS_HELP
        ),
    )
    g = p.add_argument_group("Data")
    g.add_argument("--image_dir", required=True, default=argparse.SUPPRESS,
                   help="Required. Folder (or gs://, s3://... URI) whose images, at any depth, "
                        "get a vector.")
    g.add_argument("--max_image_pixels", type=int, default=d.max_image_pixels,
                   help="Skip (and name) images whose header declares more pixels than this, "
                        "without decoding them.")
    g = p.add_argument_group("Module")
    g.add_argument("--tfhub_module", default=DEFAULT_MODULE,
                   help="Feature-vector module, as retrain takes it; every worker loads it.")
    g.add_argument("--image_size", type=int, default=d.image_size,
                   help="Input size for modules that do not fix it.")
    g.add_argument("--bottleneck_dir", default=d.bottleneck_dir,
                   help="The bottleneck store retrain reads: a local or mounted folder that "
                        "every worker can write to.")
    g.add_argument("--batch_size", type=int, default=d.batch_size,
                   help="Most images per forward pass (Beam's BatchElements picks the size).")
    g.add_argument("--runtime", choices=RUNTIMES, default=d.runtime,
                   help="What runs the extractor, decided once by this process as retrain "
                        "decides it (auto: LiteRT where its vectors match TensorFlow's, "
                        "converted into --bottleneck_dir, whose copy the workers run); "
                        "retrain reuses the vectors with the same --runtime.")
    g = p.add_argument_group("Pipeline (Apache Beam)")
    g.add_argument("--runner", default=DEFAULT_RUNNER,
                   help="Beam runner: DirectRunner, DataflowRunner, FlinkRunner, SparkRunner...")
    g = p.add_argument_group("Output")
    g.add_argument("--quiet", action="store_true", help="Only warnings and results.")
    g.add_argument("--verbose", action="store_true",
                   help=f"Name every skipped file (more than {LISTED_SKIPS} are otherwise counted "
                        f"by reason) and show Beam's own log lines.")
    p.set_defaults(run=run_extract)


def run_extract(args) -> int:
    require_beam()
    config = ExtractConfig(image_dir=args.image_dir, tfhub_module=args.tfhub_module,
                           image_size=args.image_size, bottleneck_dir=args.bottleneck_dir,
                           batch_size=args.batch_size, max_image_pixels=args.max_image_pixels,
                           runtime=args.runtime)
    config.check()
    process.import_tensorflow_quietly()  # after the checks above, which need no TensorFlow
    with quiet_beam(args.verbose):
        from trxsfr.train import beam_extract

        result = process.quietly(beam_extract.extract, config, pipeline_args(args))
    out(f"Images: {result.images} ({result.computed} computed, {result.reused} reused from "
        f"the store, {len(result.failed)} skipped)")
    for line in skipped_lines(result.failed, args.verbose):
        out(line)
    out(f"Pipeline: {result.seconds:.1f}s; images/s: "
        f"{result.computed / result.seconds if result.seconds else 0:.1f} computed")
    out(result.store_dir)
    return EXIT_OK


# ---------------------------------------------------------------- label --runner

def add_label_flags(p) -> None:
    """`label`'s pipeline flags: with --runner, `label` runs as a Beam pipeline."""
    g = p.add_argument_group(
        "Pipeline (Apache Beam)",
        "With --runner, label runs as an Apache Beam pipeline (pip install 'trxsfr[beam]'): "
        "one JSON line per image to --output shards, the evaluation combined across workers. "
        + _OPTIONS_HELP)
    g.add_argument("--runner", default=None,
                   help="Beam runner (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner...); "
                        "unset: label in this process.")
    g.add_argument("--output", default=None, metavar="PREFIX",
                   help="With --runner: write PREFIX-SSSSS-of-NNNNN.jsonl (one prediction per "
                        "line), PREFIX-evaluation.json and PREFIX-skipped.jsonl; a local path "
                        "or a URI. Existing files are never replaced.")


def run_label(args) -> int:
    """`label --runner ...`: the pipeline, then its summary (or one JSON document)."""
    if not args.runner:
        raise InputError("--output is where label --runner writes; give --runner too "
                         "(e.g. --runner DirectRunner)")
    if not args.output:
        raise InputError("label --runner needs --output PREFIX (where the predictions go)")
    if args.report or args.format == "codelab":
        raise InputError("label --runner writes JSON lines; --report and --format codelab "
                         "need a local run (drop --runner)")
    config = LabelConfig(model=args.model, inputs=tuple(args.inputs) + tuple(args.image),
                         top_k=args.top_k, batch_size=args.batch_size,
                         min_accuracy=args.min_accuracy, max_image_pixels=args.max_image_pixels,
                         runtime=args.runtime)
    config.check()
    require_beam()
    process.import_tensorflow_quietly()
    with quiet_beam(args.verbose):
        from trxsfr.use import beam_label

        run = process.quietly(beam_label.label, config, args.output, pipeline_args(args),
                              args.labels)
    if args.format == "json":
        out(json.dumps({"model": run.model_path, "labels": run.labels, "outputs": run.outputs,
                        "labelled": run.labelled,
                        "skipped": [{"path": s.path, "reason": s.reason} for s in run.skipped],
                        "unknown_folders": run.unknown_folders, "evaluation": run.evaluation,
                        "evaluation_file": run.evaluation_file, "seconds": run.seconds,
                        "runtime": run.runtime},
                       indent=1))
    else:
        for line in label_lines(run, args.verbose):
            out(line)
    if config.min_accuracy is not None and run.evaluation["accuracy"] < config.min_accuracy:
        note(f"trxsfr: accuracy {run.evaluation['accuracy']:.4f} is below --min_accuracy "
             f"{config.min_accuracy}")
        return EXIT_BELOW_GATE
    return EXIT_OK


def label_lines(run, verbose: bool = False) -> list[str]:
    """The summary of a pipeline label run: where the predictions went, skips, evaluation."""
    lines = [f"Predictions: {run.labelled} images in {len(run.outputs)} files "
             f"({', '.join(run.outputs[:3])}{', ...' if len(run.outputs) > 3 else ''})",
             f"Runtime: {run.runtime}"]
    lines += skipped_lines(run.skipped, verbose)
    lines += evaluation_lines(run.evaluation, run.labels, run.unknown_folders)
    ev = run.evaluation
    if ev:
        lines.append(f"Misclassified: {len(ev['misclassified'])}")
        lines += [f"  {m['path']} (true: {m['true_label']}, predicted: {m['predicted_label']}, "
                  f"score {m['score']:.5f})" for m in ev["misclassified"]]
        lines.append(f"Evaluation: {run.evaluation_file}")
    lines.append(f"Pipeline: {run.seconds:.1f}s")
    return lines
