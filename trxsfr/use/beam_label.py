"""`label --runner`: batch labelling as an Apache Beam pipeline.

    inputs -> read -> decode (one image per call; failures to a dead-letter output)
    -> RunInference (the model loaded once per worker process, BatchElements batches)
    -> one JSON line per image, sharded to PREFIX-SSSSS-of-NNNNN.jsonl
    -> for images in class folders: the evaluation, combined across workers

Inputs are read as local `label` reads them (files, folders, class folders named
after the model's labels); a Beam filesystem URI (gs://bucket/heldout) is listed with
Beam's FileSystems, its first-level folders named after labels giving the truth. The
evaluation counts are summed over workers and turned into the metrics `label --format
json` computes (use/metrics.metrics_of_counts), so both agree on the same files.

Imports apache_beam (the `beam` extra) at import time: the CLI imports this module
only when `--runner` is given.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from trxsfr.base import beam_steps, contract
from trxsfr.base.beam_steps import COUNTERS, FAILED
from trxsfr.base.config import LabelConfig
from trxsfr.base.errors import InputError, ModelError
from trxsfr.base.listing import Skipped
from trxsfr.use import labeling, metrics, models

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PipelineLabelRun:
    """What a `label --runner` run wrote and found (the predictions stay in the files)."""

    model_path: str
    labels: list[str]
    outputs: list[str]  # the JSON-lines shards, one prediction per line
    labelled: int
    skipped: list[Skipped]
    unknown_folders: list[str]
    evaluation: Optional[dict]  # as in `label --format json`; misclassified sorted by path
    evaluation_file: str
    seconds: float  # the pipeline's wall time
    runtime: str = ""  # what ran the network, as the driver decided (TensorFlow, LiteRT)


def entries_of(inputs: Sequence[str], labels: Sequence[str]
               ) -> tuple[list[labeling.Entry], list[Skipped], list[str]]:
    """What to label: local inputs as `label` collects them; URIs listed with Beam's
    FileSystems, an image in a first-level folder named after a label having that truth.

    Raises:
        InputError: an http(s) URL (fetch it with `trxsfr download` first), a missing
            input, or no image at all.
    """
    local = [i for i in inputs if not beam_steps.is_uri(i)]
    web = [i for i in inputs if i.lower().startswith(("http://", "https://"))]
    if web:
        raise InputError(f"label --runner reads files, folders and filesystem URIs "
                         f"(gs://, s3://...), not web URLs such as {web[0]}; download them "
                         f"first (trxsfr download)")
    entries, skipped, unknown = [], [], []
    if local:
        entries, skipped, unknown = labeling.collect(local, labels)
    for uri in (i for i in inputs if beam_steps.is_uri(i)):
        paths, rels, passed = beam_steps.list_images(uri)
        skipped += passed
        tops = {rel.split("/", 1)[0] for rel in rels if "/" in rel}
        is_eval = any(t in labels for t in tops)
        unknown += sorted(f"{uri.rstrip('/')}/{t}" for t in tops if is_eval and t not in labels)
        for path, rel in zip(paths, rels):
            top = rel.split("/", 1)[0] if "/" in rel else None
            if is_eval and top is not None and top not in labels:
                continue  # as `label` does: a folder that is no label is not evaluated
            entries.append(labeling.Entry(path, labels.index(top) if is_eval and top in labels
                                          else None))
    return entries, skipped, unknown


def load_model(path: str, runtime: Optional[str] = None):
    """The model on a worker, on `runtime` (the driver checked it first; None: the one
    its kind runs on, TensorFlow for a SavedModel). A LiteRT conversion is taken from the
    worker's $TRXSFR_HOME cache, or made and checked there once per machine, when the
    first batch comes."""
    return models.load(path, runtime=runtime)


def probabilities(model, images: np.ndarray) -> np.ndarray:
    """float32 [N, H, W, 3] in [0, 1] -> float32 [N, classes]."""
    return model.predict_images(images)


def prediction_line(element, labels: Sequence[str], top_k: int) -> str:
    """((path, truth), probabilities) -> the JSON line of one image, with the fields of an
    entry of `label --format json`'s "predictions"."""
    (path, truth), probs = element
    order = np.argsort(-probs, kind="stable")[:top_k]
    Metrics.counter(COUNTERS, "labelled").inc()
    return json.dumps({
        "path": path,
        "true_label": labels[truth] if truth is not None else None,
        "top_k": [{"label": labels[j], "score": float(probs[j])} for j in order],
        "probabilities": [float(p) for p in probs],
    })


class Evaluation(beam.CombineFn):
    """((path, truth), probabilities) of labelled images -> `label`'s evaluation dict.

    The accumulator is what sums across workers: the confusion matrix, top-k hit
    counts and the misclassified rows (listed by path).
    """

    def __init__(self, labels: Sequence[str]):
        self._labels = list(labels)
        self._ks = metrics.top_k_values(len(labels))

    def create_accumulator(self):
        n = len(self._labels)
        return np.zeros((n, n), np.int64), {k: 0 for k in self._ks}, []

    def add_input(self, acc, element):
        matrix, hits, wrong = acc
        (path, truth), probs = element
        pred = int(probs.argmax())
        matrix[truth, pred] += 1
        for k, hit in metrics.top_k_hits([truth], probs[None, :], self._ks).items():
            hits[k] += hit
        if pred != truth:
            wrong.append({"path": path, "true_label": self._labels[truth],
                          "predicted_label": self._labels[pred], "score": float(probs[pred])})
        return acc

    def merge_accumulators(self, accumulators):
        matrix, hits, wrong = self.create_accumulator()
        for m, h, w in accumulators:
            matrix += m
            for k in hits:
                hits[k] += h[k]
            wrong += w
        return matrix, hits, wrong

    def extract_output(self, acc):
        matrix, hits, wrong = acc
        if not matrix.sum():
            return None
        return dict(metrics.metrics_of_counts(matrix, self._labels, hits),
                    misclassified=sorted(wrong, key=lambda row: row["path"]))


def _readable(path: str) -> str:
    """Where a worker reads a file: absolute, as its working directory may differ."""
    return path if beam_steps.is_uri(path) else os.path.abspath(path)


def _skip_line(element) -> str:
    (path, _), reason = element
    return json.dumps({"path": path, "reason": reason})


def _read_lines(pattern: str) -> list[str]:
    lines = []
    for meta in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
        lines += beam_steps.read_bytes(meta.path).decode("utf-8").splitlines()
    return [line for line in lines if line.strip()]


def label(config: LabelConfig, output: str, pipeline_args: Sequence[str] = (),
          labels_file: Optional[str] = None) -> PipelineLabelRun:
    """Label `config.inputs` with `config.model` in a pipeline; write PREFIX files.

    Writes `output`-SSSSS-of-NNNNN.jsonl (one prediction per line),
    `output`-evaluation.json (`label`'s evaluation, or null without class folders) and
    `output`-skipped.jsonl (files passed over, with the reason). `output` may be a
    local path prefix or a Beam filesystem URI.

    Raises:
        TrxsfrError: an unknown option, an unusable model or input, or (with
            `config.min_accuracy`) no evaluation set among the inputs.
    """
    config.check()
    options = beam_steps.pipeline_options(pipeline_args)
    taken = FileSystems.match([f"{output}-*"])[0].metadata_list
    if taken:  # Beam's sinks replace files: nothing a user made is overwritten
        raise InputError(f"--output {output}: {taken[0].path} exists; pick a new prefix")
    # The labels, image size and a check, on the driver; and the runtime's verdict (a
    # conversion is made and checked here first, so "--runtime litert" fails before the
    # pipeline starts, and DirectRunner's workers take the cached one).
    predictor = models.load(config.model, runtime=config.runtime)
    predictor.prepare()
    if getattr(predictor, "needs_own_decode", False):
        raise ModelError(f"{predictor.path} was exported with other preprocessing than this "
                         f"trxsfr's; label it without --runner (its own signature decodes)")
    if labels_file and not os.path.isfile(labels_file):
        raise InputError(f"--labels {labels_file} is not a file; pass a labels.txt file")
    if labels_file and contract.read_labels(labels_file) != predictor.labels:
        log.warning("--labels %s differs from the model's own labels; using the model's",
                    labels_file)
    labels = list(predictor.labels)
    entries, skipped, unknown = entries_of(config.inputs, labels)
    if config.min_accuracy is not None and all(e.truth is None for e in entries):
        raise InputError("--min_accuracy needs an evaluation set: a folder whose sub-folders "
                         "are named after the model's labels")
    handler = KeyedModelHandler(beam_steps.ForwardHandler(
        # The driver's decision, not "auto" again: a worker runs the network the driver
        # checked, or fails, rather than fall back on its own.
        functools.partial(load_model, os.path.abspath(predictor.path),
                          "litert" if predictor.on_litert else None),
        probabilities,
        config.batch_size, "label"))
    evaluation_file = f"{output}-evaluation.json"
    pipeline = beam.Pipeline(options=options)
    read = (pipeline
            | "Inputs" >> beam.Create([((e.path, e.truth), _readable(e.file or e.path))
                                       for e in entries])
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(beam_steps.ReadFiles()).with_outputs(FAILED, main="ok"))
    decoded = read.ok | "Decode" >> beam.ParDo(beam_steps.DecodeImages(
        predictor.image_size, config.max_image_pixels)).with_outputs(FAILED, main="ok")
    predicted = (decoded.ok
                 | "Label" >> RunInference(handler)
                 | "Probabilities" >> beam.MapTuple(lambda tag, result: (tag, result.inference)))
    _ = (predicted
         | "AsJson" >> beam.Map(prediction_line, labels, config.top_k)
         | "WritePredictions" >> beam.io.WriteToText(output, file_name_suffix=".jsonl"))
    _ = (predicted
         | "Labelled" >> beam.Filter(lambda element: element[0][1] is not None)
         | "Evaluate" >> beam.CombineGlobally(Evaluation(labels))
         | "EvaluationJson" >> beam.Map(json.dumps)
         | "WriteEvaluation" >> beam.io.WriteToText(evaluation_file, shard_name_template=""))
    _ = ((read[FAILED], decoded[FAILED])
         | "DeadLetters" >> beam.Flatten()
         | "SkipJson" >> beam.Map(_skip_line)
         | "WriteSkipped" >> beam.io.WriteToText(f"{output}-skipped", file_name_suffix=".jsonl",
                                                 shard_name_template=""))
    t0 = time.perf_counter()
    result = pipeline.run()
    beam_steps.wait(result, "label")
    seconds = time.perf_counter() - t0
    outputs = sorted(m.path for m in FileSystems.match([f"{output}-*-of-*.jsonl"])[0].metadata_list)
    skipped = skipped + [Skipped(**json.loads(line))
                         for line in _read_lines(f"{output}-skipped.jsonl")]
    evaluation = json.loads("".join(_read_lines(evaluation_file)) or "null")
    labelled = beam_steps.counters(result).get("labelled", 0)
    if config.min_accuracy is not None and evaluation is None:
        raise InputError("--min_accuracy needs an evaluation set: none of its images could "
                         "be read")
    return PipelineLabelRun(predictor.path, labels, outputs, labelled, skipped, unknown,
                            evaluation, evaluation_file, seconds, predictor.runtime)
