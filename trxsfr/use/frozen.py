"""Label with a frozen GraphDef (`retrained_graph.pb`), as the codelab's label_image.py did.

A graph `retrain --output_graph` wrote, or one TF's retrain.py wrote, is imported
with `tf.compat.v1.import_graph_def` and run in a session. Files are decoded by
trxsfr's one preprocessing (the pipeline `Classifier.predict_paths` runs), so the
pixels are those a SavedModel of the same run sees; label_image.py's normalisation
`(pixel - input_mean) / input_std` is then applied and fed to `--input_layer`.

Defaults are the codelab label_image.py's for MobileNet (input `input`, output
`final_result`, 224x224, mean 128, std 128), with two refinements: the input size
comes from the graph when it fixes one, and TF-Hub retrain.py's `Placeholder`
input takes [0, 1] images (mean 0, std 255, as TF's label_image.py fed it).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Optional

import numpy as np

from trxsfr.base import contract
from trxsfr.base.contract import ModelInfo
from trxsfr.base.errors import InputError, ModelError, first_line
from trxsfr.use.classifier import Classifier

log = logging.getLogger(__name__)

# The codelab label_image.py's defaults (scripts/label_image.py, for MobileNet).
DEFAULT_SIZE = 224
DEFAULT_NORMALISATION = (128.0, 128.0)


@dataclasses.dataclass(frozen=True)
class GraphOptions:
    """label_image.py's flags for a frozen graph; None takes the default."""

    labels: Optional[str] = None
    input_layer: Optional[str] = None
    output_layer: Optional[str] = None
    input_height: Optional[int] = None
    input_width: Optional[int] = None
    input_mean: Optional[float] = None
    input_std: Optional[float] = None


def _op_name(name: str) -> str:
    """label_image.py takes op names; a tensor name ("input:0") is accepted too."""
    return name[:-2] if name.endswith(":0") else name


class FrozenGraphClassifier(Classifier):
    """A frozen GraphDef with the interface of `Classifier` (predict_paths inherited)."""

    format = "frozen_graph"

    def __init__(self, path: str, options: Optional[GraphOptions] = None):
        import tensorflow as tf

        o = options or GraphOptions()
        self.path = path
        if not os.path.exists(path):
            raise ModelError(f"graph {path} does not exist")
        if not os.path.isfile(path):
            raise ModelError(f"graph {path} is a folder; pass the .pb file (or, for a "
                             f"SavedModel, its version or base directory as --model)")
        start = time.perf_counter()
        try:
            with open(path, "rb") as f:
                graph_def = tf.compat.v1.GraphDef.FromString(f.read())
        except Exception as e:  # DecodeError and friends: not a GraphDef at all
            raise ModelError(f"{path} is not a frozen GraphDef ({first_line(e, 120)})") from e
        embedded, self.graph_info = contract.graph_constants(graph_def)
        graph = tf.Graph()
        try:
            with graph.as_default():
                tf.compat.v1.import_graph_def(graph_def, name="")
        except Exception as e:
            raise ModelError(f"cannot load graph {path}: {first_line(e)}") from e
        if not graph.get_operations():
            raise ModelError(f"{path} holds an empty graph, not a frozen classifier")
        input_name = _op_name(o.input_layer or contract.GRAPH_INPUT)
        output_name = _op_name(o.output_layer or self.graph_info.get("output")
                               or contract.GRAPH_OUTPUT)
        self._input = _tensor(graph, input_name, "--input_layer", path)
        self._output = _tensor(graph, output_name, "--output_layer", path)
        if self._input.dtype != tf.float32:
            raise ModelError(f"{path}: --input_layer {input_name} takes {self._input.dtype.name}, "
                             f"not the float32 images label_image feeds")
        self.image_size = _image_size(self._input.shape, o, input_name, path)
        # Graphs made from TF-slim's frozen MobileNets take a fixed batch, often [1, ...].
        shape = self._input.shape
        self._batch = int(shape[0]) if shape.rank == 4 and shape[0] is not None else None
        known = (self.graph_info.get("inputs") or {}).get(input_name) or {}
        mean, std = (known.get("mean"), known.get("std")) if known else \
            contract.GRAPH_NORMALISATION.get(input_name, DEFAULT_NORMALISATION)
        self.input_mean = float(o.input_mean if o.input_mean is not None else mean)
        self.input_std = float(o.input_std if o.input_std is not None else std)
        if self.input_std == 0:
            raise InputError("--input_std must not be 0 (pixels are divided by it)")
        classes = self._output.shape[-1] if self._output.shape.rank else None
        self.labels = _labels(path, o.labels, embedded, classes, output_name)
        self.info = dataclasses.replace(ModelInfo.from_json(self.graph_info),
                                        labels=tuple(self.labels))
        self._session = tf.compat.v1.Session(graph=graph)
        self.load_seconds = time.perf_counter() - start

    @property
    def saved_model(self):
        raise ModelError(f"{self.path} is a frozen graph; this needs a SavedModel (trxsfr "
                         f"retrain exports one beside --output_graph)")

    @property
    def runtime(self) -> str:
        import tensorflow as tf

        return f"tensorflow {tf.__version__} (tf.compat.v1 session)"

    @functools.cached_property
    def needs_own_decode(self) -> bool:
        """A graph cannot decode files: trxsfr's preprocessing always does; said once
        when the graph was made with another one."""
        from trxsfr.base import imaging

        made_with = self.graph_info.get("preprocessing")
        if made_with and made_with != imaging.PREPROCESSING_VERSION:
            log.warning("%s was written with preprocessing %s, this trxsfr has %s: scores may "
                        "differ slightly from training", self.path, made_with,
                        imaging.PREPROCESSING_VERSION)
        return False

    def parameter_count(self) -> int:
        """Elements of the graph's numeric constants (the frozen weights)."""
        total = 0
        for op in self._session.graph.get_operations():
            if op.type == "Const" and op.outputs[0].dtype.is_floating:
                total += int(np.prod(op.outputs[0].shape.as_list() or [1]))
        return total

    def _forward(self, images) -> np.ndarray:
        x = np.asarray(images, np.float32) * np.float32(255.0)
        x = (x - np.float32(self.input_mean)) / np.float32(self.input_std)
        if self._batch is None:
            probs = np.asarray(self._session.run(self._output, {self._input: x}), np.float32)
        else:  # the graph's own batch size: chunks of it, the last one padded
            b, n = self._batch, len(x)
            padded = np.concatenate([x, np.zeros(((-n) % b, *x.shape[1:]), np.float32)])
            probs = np.concatenate([self._session.run(self._output, {self._input: padded[i:i + b]})
                                    for i in range(0, len(padded), b)]).astype(np.float32)[:n]
        if probs.ndim != 2 or probs.shape[1] != len(self.labels):
            raise ModelError(f"{self.path}: {self._output.op.name} gives shape {probs.shape}, "
                             f"not one score per label ({len(self.labels)})")
        return probs


def _tensor(graph, name: str, flag: str, path: str):
    try:
        op = graph.get_operation_by_name(name)
    except KeyError:
        inputs = [op.name for op in graph.get_operations()
                  if op.type in ("Placeholder", "PlaceholderWithDefault")]
        hint = f"; its inputs: {', '.join(inputs)}" if flag == "--input_layer" and inputs else ""
        raise InputError(f"graph {path} has no op {name!r} for {flag}{hint}") from None
    if not op.outputs:
        raise InputError(f"{flag} {name} of graph {path} has no output tensor")
    return op.outputs[0]


def _image_size(shape, o: GraphOptions, name: str, path: str) -> tuple[int, int]:
    """(height, width): the graph's when fixed (a flag must agree), else the flags or 224."""
    if shape.rank is not None and shape.rank != 4:
        raise InputError(f"--input_layer {name} of graph {path} takes shape {shape}, "
                         f"not images [N, H, W, 3]")
    fixed = (shape.rank == 4 and shape[1] is not None and shape[2] is not None)
    given = (o.input_height, o.input_width)
    if fixed:
        size = (int(shape[1]), int(shape[2]))
        for flag, want, have in zip(("--input_height", "--input_width"), given, size):
            if want is not None and want != have:
                raise InputError(f"{flag} {want} does not fit graph {path}, whose {name} "
                                 f"takes {size[0]}x{size[1]} images; leave it out")
        return size
    size = tuple(int(v) if v is not None else DEFAULT_SIZE for v in given)
    if min(size) <= 0:
        raise InputError(f"--input_height and --input_width must be positive, got {given}")
    return size


def _labels(path: str, labels_file: Optional[str], embedded, classes: Optional[int],
            output_name: str) -> list[str]:
    """The graph's own labels, else --labels, else a labels file beside the graph.

    Raises:
        InputError: --labels is missing or a folder.
        ModelError: no labels found, or not one per score of the output.
    """
    source = f"{path} itself"
    if embedded:
        labels = list(embedded)  # labeling warns when a --labels file says otherwise
    elif labels_file:
        if os.path.isdir(labels_file):
            raise InputError(f"--labels {labels_file} is a folder; pass a labels.txt file")
        if not os.path.isfile(labels_file):
            raise InputError(f"--labels {labels_file} does not exist")
        labels, source = contract.read_labels(labels_file), f"--labels {labels_file}"
    else:
        candidates = contract.graph_labels_candidates(path)
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            raise ModelError(f"no labels for graph {path}: it carries none and none of "
                             f"{', '.join(os.path.basename(c) for c in candidates)} is beside "
                             f"it; pass --labels FILE")
        labels, source = contract.read_labels(found), found
    if not labels:
        raise ModelError(f"{source} holds no labels")
    if classes is not None and classes != len(labels):
        raise ModelError(f"{source} has {len(labels)} labels but {output_name} of {path} gives "
                         f"{classes} scores; pass the graph's own labels file with --labels")
    return labels
