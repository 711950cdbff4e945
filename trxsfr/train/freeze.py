"""`--output_graph`: the classifier as one TF1-style frozen GraphDef, as TF's retrain.py wrote.

The codelab's and TF-Hub's consumers (their label_image.py, the Android/iOS demo
apps, C++ programs) load a single `.pb` with `tf.compat.v1.import_graph_def`, feed
one tensor and fetch `final_result`. The graph written here serves both families:

- `input`: float32 [N, H, W, 3] holding (pixel - 128) / 128, the codelab's;
- `Placeholder`: the same images as float32 in [0, 1], TF-Hub retrain.py's. It
  defaults to `input` rescaled, so feeding either one is enough;
- `final_result` (or `--final_tensor_name`): softmax over the labels, class-id order;
- `trxsfr/labels` and `trxsfr/info`: string constants (labels; JSON) for readers.

Variables are folded into constants and functions inlined
(`convert_variables_to_constants_v2`): no resource ops, no function library.
The graph is traced and frozen once per run; each written graph only sets the new
layer's two constants, so intermediate graphs cost a serialisation, not a freeze.
Files are written whole (aside, then linked into place) and never replace a file
that holds another model: the same bytes again are fine.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Callable, Optional, Sequence

import numpy as np

from trxsfr.base import __version__ as VERSION
from trxsfr.base import contract, files, imaging
from trxsfr.base.config import RetrainConfig
from trxsfr.base.errors import ExportError, InputError, ModuleError, first_line

log = logging.getLogger(__name__)

# TensorFlow's rule for op names (tensorflow/core/framework/node_def_util.cc).
_OP_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-/>]*")
# Ops that mean a variable survived the freeze (the graph would need a checkpoint).
_VARIABLE_OPS = {"VarHandleOp", "ReadVariableOp", "AssignVariableOp", "VarIsInitializedOp",
                 "VariableV2", "Variable", "ResourceGather", "DestroyResourceOp"}
_DT_RESOURCE = 20  # types_pb2.DT_RESOURCE


def check_settings(config: RetrainConfig) -> None:
    """Raise InputError for graph settings no run can use, before any work.

    Raises:
        InputError: a bad --final_tensor_name or --intermediate_store_frequency, a
            folder where --output_graph's file would be, a file where a folder must be.
    """
    name = config.final_tensor_name
    if not _OP_NAME.fullmatch(name or ""):
        raise InputError(f"--final_tensor_name {name!r} is not a TensorFlow op name "
                         f"(letters, digits and _ . - / >, not starting with _ - / >)")
    taken = {contract.GRAPH_INPUT, contract.GRAPH_FLOAT_INPUT, contract.GRAPH_WEIGHTS,
             contract.GRAPH_BIASES, contract.GRAPH_LABELS, contract.GRAPH_INFO}
    if name in taken:
        raise InputError(f"--final_tensor_name {name} is the name of another tensor of the "
                         f"graph; pick another")
    if config.intermediate_store_frequency < 0:
        raise InputError(f"--intermediate_store_frequency must be >= 0 (0: no intermediate "
                         f"graphs), got {config.intermediate_store_frequency}")
    if config.intermediate_store_frequency and config.sweep:
        raise InputError("--intermediate_store_frequency cannot follow a sweep's several "
                         "heads; give one value per swept flag")
    if config.output_graph:
        _check_file_path(config.output_graph, "--output_graph")
    if config.intermediate_store_frequency:
        files.check_folder(config.intermediate_output_graphs_dir,
                           "--intermediate_output_graphs_dir")
    if config.tfhub_cache_dir:
        files.check_folder(config.tfhub_cache_dir, "--model_dir")


def _check_file_path(path: str, flag: str) -> None:
    if os.path.isdir(path):
        raise InputError(f"{flag} {path} is a folder; pass a file path such as "
                         f"{os.path.join(path, 'retrained_graph.pb')}")
    files.check_folder(os.path.dirname(os.path.abspath(path)), f"{flag} {path}: its folder")


def _planned_intermediates(config: RetrainConfig) -> list[str]:
    every = config.intermediate_store_frequency
    if not every:
        return []
    return [os.path.join(config.intermediate_output_graphs_dir,
                         contract.GRAPH_INTERMEDIATE.format(step=step))
            for step in range(every, config.how_many_training_steps + 1, every)]


def _check_not_another_model(path: str, flag: str, labels: Sequence[str],
                             fingerprint: str) -> None:
    """Fail early when `path` already holds a model this run cannot write again
    byte for byte: not a graph trxsfr wrote, or one of other labels or another module.
    (A graph of the same labels and module is compared byte for byte when written.)"""
    if not os.path.isfile(path):
        return
    import tensorflow as tf

    try:
        with open(path, "rb") as f:
            graph_def = tf.compat.v1.GraphDef.FromString(f.read())
        held, info = contract.graph_constants(graph_def)
    except Exception:  # noqa: BLE001 - any unreadable content is "something else"
        held, info = None, {}
    if held is None:
        what = "something that is not a graph trxsfr wrote"
    elif list(held) != list(labels):
        what = f"a model of other labels ({', '.join(held)})"
    elif (info.get("module") or {}).get("fingerprint") != fingerprint:
        what = f"a model on another module ({(info.get('module') or {}).get('handle')})"
    else:
        return
    raise ExportError(f"{flag} {path} exists and holds {what}; it is never replaced: pass "
                      f"a new path or move the file away")


class GraphOutputs:
    """The frozen graphs of one retrain run: every `intermediate_store_frequency` steps
    an intermediate graph, and `output_graph` at the end (with its labels sidecar
    when --output_labels is not given)."""

    def __init__(self, config: RetrainConfig, extractor, labels: Sequence[str]):
        self.config = config
        self.extractor = extractor
        self._template = None  # (labels, GraphDef) once traced and frozen
        fingerprint = extractor.fingerprint
        if config.output_graph:
            _check_not_another_model(config.output_graph, "--output_graph", labels, fingerprint)
            sidecar = self.sidecar
            if sidecar and os.path.exists(sidecar) and not _holds(sidecar, _labels_bytes(labels)):
                raise ExportError(f"{sidecar} (the labels file written beside --output_graph) "
                                  f"exists with other content; pass --output_labels or move it")
        for path in _planned_intermediates(config):
            _check_not_another_model(path, "--intermediate_output_graphs_dir", labels,
                                     fingerprint)

    @property
    def sidecar(self) -> Optional[str]:
        """`<graph stem>.labels.txt`, written when the run has no --output_labels: the
        codelab's apps and C++ label_image read the labels from a file."""
        if not self.config.output_graph or self.config.output_labels:
            return None
        return contract.graph_labels_sidecar(self.config.output_graph)

    def on_step(self, labels: Sequence[str]) -> Optional[Callable]:
        """The `head.train(on_step=...)` callback writing the intermediate graphs, or None."""
        every = self.config.intermediate_store_frequency
        if not every:
            return None
        files.make_folder(self.config.intermediate_output_graphs_dir,
                          "--intermediate_output_graphs_dir")

        def store(step: int, current_head) -> None:
            if step % every:
                return
            head = current_head()
            path = os.path.join(self.config.intermediate_output_graphs_dir,
                                contract.GRAPH_INTERMEDIATE.format(step=step))
            _write(path, self.serialise(labels, head.weights, head.bias, step),
                   "--intermediate_output_graphs_dir")
            log.info("Intermediate graph at step %d: %s", step, path)

        return store

    def write(self, head, labels: Sequence[str], version_dir: str,
              extractor_changed: bool = False) -> None:
        """Write --output_graph (and its labels sidecar) for the final head.

        Args:
            head: the exported new layer (`.weights` float32 [D, C], `.bias` float32 [C]).
            version_dir: the SavedModel this run exported (named in an error).
            extractor_changed: the extractor's variables changed since the graph was
                first frozen (fine-tuning): freeze it again.

        Raises:
            ExportError: the file exists with another model, or cannot be written.
        """
        if not self.config.output_graph:
            return
        if extractor_changed:
            self._template = None
        path = self.config.output_graph
        _write(path, self.serialise(labels, head.weights, head.bias), "--output_graph",
               f"another model (this run's model is exported to {version_dir} alone)")
        if self.sidecar:
            _write_labels(self.sidecar, labels)
        h, w = self.extractor.image_size
        log.info("Frozen graph: %s (input '%s' [N, %d, %d, 3] as (pixel - 128) / 128, or "
                 "'%s' in [0, 1]; output '%s')", path, contract.GRAPH_INPUT, h, w,
                 contract.GRAPH_FLOAT_INPUT, self.config.final_tensor_name)

    def serialise(self, labels: Sequence[str], weights: np.ndarray, bias: np.ndarray,
                  step: Optional[int] = None) -> bytes:
        """The graph's bytes with this new layer (deterministic for the same inputs)."""
        if self._template is None or list(self._template[0]) != list(labels):
            self._template = (tuple(labels), frozen_template(
                self.extractor, labels, self.config.final_tensor_name))
        graph_def = type(self._template[1])()
        graph_def.CopyFrom(self._template[1])
        set_layer(graph_def, weights, bias)
        _set_string(graph_def, contract.GRAPH_INFO,
                    json.dumps(dict(_info(self.extractor, self.config.final_tensor_name),
                                    step=step), sort_keys=True))
        return graph_def.SerializeToString(deterministic=True)


def prepare(config: RetrainConfig, extractor, labels: Sequence[str]) -> Optional[GraphOutputs]:
    """The run's GraphOutputs once its module is loaded (None when it writes no graph).

    Raises:
        ExportError: a target file already holds another model (checked now, before
            the bottlenecks and the training).
    """
    if not config.output_graph and not config.intermediate_store_frequency:
        return None
    return GraphOutputs(config, extractor, labels)


def _info(extractor, output_name: str) -> dict:
    return {
        "format": contract.GRAPH_FORMAT,
        "trxsfr_version": VERSION,
        "preprocessing": imaging.PREPROCESSING_VERSION,
        "module": {"handle": extractor.handle, "fingerprint": extractor.fingerprint,
                   "image_size": list(extractor.image_size), "feature_dim": extractor.dim},
        "inputs": {name: {"mean": mean, "std": std}
                   for name, (mean, std) in contract.GRAPH_NORMALISATION.items()},
        "output": output_name,
    }


def frozen_template(extractor, labels: Sequence[str], output_name: str):
    """The classifier as a frozen GraphDef whose new layer is all zeros (see `set_layer`).

    Args:
        extractor: a loaded `extractors.Extractor` (its variables' current values are frozen).
        labels: the class names, in class-id order.
        output_name: name of the softmax op.

    Raises:
        ModuleError: the module cannot be frozen into plain constants.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    height, width = extractor.image_size
    shape = [None, height, width, 3]
    mean, std = contract.GRAPH_NORMALISATION[contract.GRAPH_INPUT]
    classes = len(labels)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name=contract.GRAPH_INPUT)],
                 autograph=False)
    def classify(normalised):
        # [0, 1] pixels again, unless `Placeholder` itself is fed (TF-Hub's input).
        images = tf.compat.v1.placeholder_with_default(
            normalised * np.float32(std / 255.0) + np.float32(mean / 255.0), shape,
            name=contract.GRAPH_FLOAT_INPUT)
        features = extractor(images)
        weights = _named_constant(np.zeros((extractor.dim, classes), np.float32),
                                  contract.GRAPH_WEIGHTS)
        biases = _named_constant(np.zeros(classes, np.float32), contract.GRAPH_BIASES)
        with tf.name_scope("final_training_ops/Wx_plus_b/"):
            logits = tf.matmul(features, weights) + biases
        return tf.nn.softmax(logits, name=output_name)

    try:
        frozen = convert_variables_to_constants_v2(classify.get_concrete_function())
    except Exception as e:
        raise ModuleError(f"cannot freeze module {extractor.handle} into a GraphDef: "
                          f"{first_line(e)}") from e
    graph_def = frozen.graph.as_graph_def()
    _rename_captures(graph_def)
    _drop_control_edges_from_inputs(graph_def)
    left = sorted({n.op for n in graph_def.node if n.op in _VARIABLE_OPS or any(
        a.type == _DT_RESOURCE or _DT_RESOURCE in a.list.type for a in n.attr.values())})
    if left or graph_def.library.function:
        what = ", ".join(left) or "functions"
        raise ModuleError(f"module {extractor.handle} does not freeze into constants "
                          f"({what} remain); --output_graph cannot be written for it")
    names = {n.name for n in graph_def.node}
    for needed in (contract.GRAPH_INPUT, contract.GRAPH_FLOAT_INPUT, contract.GRAPH_WEIGHTS,
                   contract.GRAPH_BIASES, output_name):
        if needed not in names:  # a TensorFlow change of naming: better no file than a wrong one
            raise ExportError(f"the frozen graph lost its {needed!r} op; please report this")
    _add_string(graph_def, contract.GRAPH_LABELS, [str(v) for v in labels])
    _add_string(graph_def, contract.GRAPH_INFO, "{}")
    return graph_def


def set_layer(graph_def, weights: np.ndarray, bias: np.ndarray) -> None:
    """Put the new layer's values into a template's two constants (in place)."""
    import tensorflow as tf

    for node in graph_def.node:
        if node.name == contract.GRAPH_WEIGHTS:
            node.attr["value"].tensor.CopyFrom(
                tf.make_tensor_proto(np.asarray(weights, np.float32)))
        elif node.name == contract.GRAPH_BIASES:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.asarray(bias, np.float32)))


def _named_constant(value: np.ndarray, name: str):
    """A Const op called exactly `name` (scope included) inside the traced function."""
    import tensorflow as tf

    scope, _, leaf = name.rpartition("/")
    with tf.name_scope(scope + "/"):  # a trailing slash: this scope, not a uniquified one
        return tf.constant(value, name=leaf)


def _add_string(graph_def, name: str, value) -> None:
    import tensorflow as tf

    node = graph_def.node.add(name=name, op="Const")
    node.attr["dtype"].type = tf.string.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, tf.string))


def _set_string(graph_def, name: str, value: str) -> None:
    import tensorflow as tf

    for node in graph_def.node:
        if node.name == name:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, tf.string))


def _rename_captures(graph_def) -> None:
    """Give the frozen variables stable names: tracing names them after a process-wide
    counter ("179"), which would make the same model's bytes differ between runs."""
    mapping, count = {}, 0
    for node in graph_def.node:
        if node.op == "Const" and node.name.isdigit():
            mapping[node.name] = f"frozen_variables/v{count}"
            count += 1
    if not mapping:
        return
    for node in graph_def.node:
        node.name = mapping.get(node.name, node.name)
        for i, ref in enumerate(node.input):
            control = ref.startswith("^")
            name, sep, port = ref.lstrip("^").partition(":")
            if name in mapping:
                node.input[i] = ("^" if control else "") + mapping[name] + sep + port


def _drop_control_edges_from_inputs(graph_def) -> None:
    """Remove control edges that start at the two inputs (the inlined call's "after the
    arguments" markers). Feeding `Placeholder` replaces its value, but a control edge
    would still run the op, and with it its default from `input`, which is then unfed.
    Every consumer still reads the inputs through data edges, so the order stands."""
    inputs = {"^" + contract.GRAPH_INPUT, "^" + contract.GRAPH_FLOAT_INPUT}
    for node in graph_def.node:
        kept = [ref for ref in node.input if ref not in inputs]
        if len(kept) != len(node.input):
            del node.input[:]
            node.input.extend(kept)


def _labels_bytes(labels: Sequence[str]) -> bytes:
    return contract.labels_text(labels).encode("utf-8")


def _holds(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def _write(path: str, data: bytes, flag: str, held: str = "another model") -> None:
    """Write `data` to `path` whole, unless it already holds exactly these bytes.

    Raises:
        ExportError: `path` holds something else (it is never replaced), or cannot be written.
    """
    if os.path.exists(path):
        if _holds(path, data):
            return
        raise ExportError(f"{flag} {path} exists and holds {held}; it is never replaced: "
                          f"pass a new path or move the file away")
    try:
        files.write_new(path, data)
    except FileExistsError as e:  # appeared meanwhile
        if not _holds(path, data):
            raise ExportError(f"{flag} {path} appeared during the run with other content; "
                              f"pass a new path") from e
    except OSError as e:
        raise ExportError(f"cannot write {flag} {path}: {e.strerror or e}") from e


def _write_labels(path: str, labels: Sequence[str]) -> None:
    _write(path, _labels_bytes(labels), "the labels file beside --output_graph,",
           "other labels")
