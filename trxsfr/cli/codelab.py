"""Flags of TF's retrain.py and label_image.py that trxsfr's own flags do not cover.

Users arrive with the TensorFlow for Poets codelab's commands (googlecodelabs/
tensorflow-for-poets-2, `scripts/retrain.py`, `scripts/label_image.py`) and TF-Hub's
(`examples/image_retraining/retrain.py`) in their notes. The flags both retrain.py
versions share with trxsfr (`--image_dir`, `--bottleneck_dir`, `--how_many_training_steps`,
`--learning_rate`, the distortions, ...) are trxsfr's own; the rest are here, in one
help section. Each keeps its meaning, or, where it has none any more, is accepted,
changes nothing and says so in one warning line.
"""

from __future__ import annotations

import argparse
import logging

from trxsfr.base import contract
from trxsfr.base.config import DEFAULT_MODULE, RetrainConfig
from trxsfr.base.errors import InputError

log = logging.getLogger(__name__)

GROUP = "Compatibility with TF's retrain.py and the codelab"

# retrain.py flags that mean nothing in trxsfr: flag -> what trxsfr does instead.
NO_EFFECT = {
    "test_batch_size": "the final test always uses the whole test split (retrain.py's -1)",
    "validation_batch_size": "every evaluation uses the whole validation split "
                             "(retrain.py's -1)",
    "checkpoint_path": "no training checkpoint is written; the new layer is saved in the "
                       "exported SavedModel (and in --output_graph)",
}

# TF-Hub retrain.py's --logging_verbosity values -> Python logging levels.
VERBOSITY = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
             "ERROR": logging.ERROR, "FATAL": logging.CRITICAL}


def add_retrain_compat_flags(parser: argparse.ArgumentParser) -> None:
    """The `retrain` flags of both retrain.py versions that trxsfr has no other name for."""
    d = RetrainConfig
    g = parser.add_argument_group(
        GROUP, "The codelab's and TF-Hub's retrain.py commands run unchanged. Flags with no "
               "meaning in trxsfr are accepted and say so in one warning line.")
    g.add_argument("--architecture", default=None,
                   help="The codelab's model names (mobilenet_0.50_224, mobilenet_1.0_224, "
                        "inception_v3, ...), an alias for the matching TF-Hub module "
                        "(downloaded once, into --model_dir if given); do not combine with "
                        "--tfhub_module.")
    g.add_argument("--model_dir", default=d.tfhub_cache_dir, metavar="DIR",
                   help="Keep downloaded modules in this folder (TF-Hub's cache, "
                        "TFHUB_CACHE_DIR) for this run; unset: TF-Hub's own cache.")
    g.add_argument("--output_graph", default=d.output_graph, metavar="FILE.pb",
                   help="Also write the whole classifier as one frozen TF1 GraphDef, as "
                        "retrain.py did: input 'input' (float32 [N, H, W, 3], "
                        "(pixel - 128) / 128) or 'Placeholder' (the same images in [0, 1]), "
                        "output 'final_result'; labels embedded. Without --output_labels, "
                        "the labels are also written to <FILE>.labels.txt. An existing file "
                        "holding another model is never replaced.")
    g.add_argument("--intermediate_store_frequency", type=int,
                   default=d.intermediate_store_frequency, metavar="N",
                   help="Every N training steps, write the graph as it is then, as "
                        "intermediate_<step>.pb in --intermediate_output_graphs_dir; 0: never.")
    g.add_argument("--intermediate_output_graphs_dir", metavar="DIR",
                   default=d.intermediate_output_graphs_dir,
                   help="Folder of the intermediate graphs.")
    g.add_argument("--final_tensor_name", default=d.final_tensor_name,
                   help="Name of the frozen graph's softmax output.")
    g.add_argument("--logging_verbosity", choices=tuple(VERBOSITY), default=None,
                   help="TF-Hub retrain.py's log level: INFO is the default, WARN and above "
                        "also hide the progress bar (as --quiet).")
    g.add_argument("--test_batch_size", type=int, default=None, metavar="N",
                   help="Accepted, no effect: " + NO_EFFECT["test_batch_size"] + ".")
    g.add_argument("--validation_batch_size", type=int, default=None, metavar="N",
                   help="Accepted, no effect: " + NO_EFFECT["validation_batch_size"] + ".")
    g.add_argument("--checkpoint_path", default=None, metavar="PATH",
                   help="Accepted, no effect: " + NO_EFFECT["checkpoint_path"] + ".")


def apply_retrain_compat(args: argparse.Namespace) -> dict:
    """Apply the compatibility flags: the log level, --architecture as --tfhub_module
    (in `args`), one warning per flag without effect. Returns the RetrainConfig fields
    they set.

    Raises:
        InputError: --architecture together with --tfhub_module.
        ModuleError: an --architecture name that names no known module.
    """
    if args.logging_verbosity:
        level = VERBOSITY[args.logging_verbosity]
        logging.getLogger("trxsfr").setLevel(level)
        if level > logging.INFO:
            args.quiet = True  # no progress bar either
    if args.architecture:
        if args.tfhub_module != DEFAULT_MODULE:
            raise InputError("give --tfhub_module or --architecture, not both")
        from trxsfr.base.extractors import architecture_to_shortcut

        args.tfhub_module = architecture_to_shortcut(args.architecture)
    for name, instead in NO_EFFECT.items():
        if getattr(args, name) is not None:
            log.warning("--%s has no effect in trxsfr: %s", name, instead)
    return {
        "output_graph": args.output_graph,
        "intermediate_store_frequency": args.intermediate_store_frequency,
        "intermediate_output_graphs_dir": args.intermediate_output_graphs_dir,
        "final_tensor_name": args.final_tensor_name,
        "tfhub_cache_dir": args.model_dir,
    }


# ---------------------------------------------------------------- label_image.py

LABEL_IMAGE_FLAGS = ("input_height", "input_width", "input_mean", "input_std",
                     "input_layer", "output_layer")


def add_label_image_flags(group) -> None:
    """label_image.py's settings of a frozen graph (`--graph X.pb`)."""
    size = ("For a frozen graph (.pb) whose input size is not fixed: the image {}; "
            "unset: 224. A SavedModel or .tflite carries its own size.")
    group.add_argument("--input_height", type=int, default=None, help=size.format("height"))
    group.add_argument("--input_width", type=int, default=None, help=size.format("width"))
    norm = ("For a frozen graph: pixels in [0, 255] are fed as (pixel - input_mean) / "
            "input_std; unset: 128 and 128 (0 and 255 for a 'Placeholder' input). A SavedModel "
            "or .tflite carries its own normalisation.")
    group.add_argument("--input_mean", type=float, default=None, help=norm)
    group.add_argument("--input_std", type=float, default=None, help=norm)
    group.add_argument("--input_layer", default=None,
                       help=f"For a frozen graph: the op fed with images; unset: "
                            f"{contract.GRAPH_INPUT}.")
    group.add_argument("--output_layer", default=None,
                       help=f"For a frozen graph: the op giving one score per label; unset: "
                            f"{contract.GRAPH_OUTPUT} (or the name the graph was written with).")


def label_graph_options(args: argparse.Namespace):
    """label_image.py's settings as a frozen.GraphOptions when --model/--graph is a .pb;
    None otherwise, after one warning line naming the given flags, which do not apply."""
    given = [name for name in LABEL_IMAGE_FLAGS if getattr(args, name) is not None]
    if not contract.is_graph(args.model):
        if given:
            log.warning("%s %s no effect on %s: the model carries its own preprocessing",
                        ", ".join(f"--{n}" for n in given), "has" if len(given) == 1 else "have",
                        args.model)
        return None
    from trxsfr.use.frozen import GraphOptions

    for name in ("input_height", "input_width", "input_std"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise InputError(f"--{name} must be positive, got {value}")
    return GraphOptions(labels=args.labels, **{name: getattr(args, name)
                                               for name in LABEL_IMAGE_FLAGS})

