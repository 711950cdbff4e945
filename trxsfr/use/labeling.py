"""`label`: run a loaded model over files and folders; evaluate labelled folders (`LabelRun`)."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Sequence

import numpy as np

from trxsfr.base import contract, listing
from trxsfr.base.config import FORWARD_BATCH_SIZE, MAX_IMAGE_PIXELS, ProgressFn
from trxsfr.base.contract import ModelInfo
from trxsfr.base.errors import InputError
from trxsfr.base.listing import Skipped
from trxsfr.base.web import FetchOptions
from trxsfr.use import metrics, remote
from trxsfr.use.classifier import Predictor

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Entry:
    path: str  # as the user will read it: the input joined with the file's relative path
    truth: Optional[int]  # label index when the file sits in a folder named after a label
    file: Optional[str] = None  # where to read it when not at `path` (a URL's fetched copy)


def collect(inputs: Sequence[str], labels: Sequence[str], fetch: Optional[FetchOptions] = None
            ) -> tuple[list[Entry], list[Skipped], list[str]]:
    """Entries to label, files skipped for their type, and sub-folders that are no model label.

    A folder with sub-folders named after model labels is an evaluation set; any
    other folder is labelled file by file. URLs and .txt lists of URLs are fetched
    (use/remote.py, with `fetch`); a URL that does not come is skipped with its reason.

    Raises:
        InputError: an input does not exist, or there is no image file at all.
    """
    entries, skipped, unknown = [], [], []

    def add(path: str, truth: Optional[int]):
        if listing.is_image_name(path):
            entries.append(Entry(path, truth))
        else:
            skipped.append(listing.not_an_image(path))

    fetched = remote.fetch([i for i in inputs if remote.is_remote(i)], fetch or FetchOptions())
    for inp in inputs:
        if inp in fetched:
            entries += [Entry(url, None, file=path) for path, url in fetched[inp][0]]
            skipped += fetched[inp][1]
        elif os.path.isfile(inp):
            add(inp, None)
        elif os.path.isdir(inp):
            subdirs = listing.class_dirs(inp)
            if any(d in labels for d in subdirs):
                known, others, passed = listing.labelled_folders(inp, labels)
                for label, rels in known.items():
                    for rel in rels:
                        add(os.path.join(inp, rel), labels.index(label))
                unknown += [os.path.join(inp, d) for d in others]
                for name in listing.top_files(inp):
                    add(os.path.join(inp, name), None)
            else:
                found = listing.walk(inp)
                passed = found.skipped
                for rel in found.files:
                    add(os.path.join(inp, rel), None)
            skipped += [Skipped(os.path.join(inp, s.path), s.reason) for s in passed]
        else:
            raise InputError(f"input {inp} does not exist")
    if not entries:
        raise InputError(f"no image files in {', '.join(inputs)} "
                         f"(looked for {', '.join(listing.IMAGE_EXTENSIONS)})")
    return entries, skipped, unknown


@dataclasses.dataclass
class LabelRun:
    """What one `label` run found: data, no presentation (the CLI and `report` render it)."""

    model_path: str
    labels: list[str]
    info: ModelInfo
    entries: list[Entry]  # those that decoded, aligned with probabilities
    probabilities: np.ndarray  # float32 [len(entries), classes]
    skipped: list[Skipped]
    unknown_folders: list[str]
    load_seconds: float
    inference_seconds: float
    evaluation: Optional[dict]  # metrics over entries with a truth
    runtime: Optional[str] = None  # what ran the network (TensorFlow, LiteRT), as it says

    @property
    def unknown_threshold(self) -> Optional[float]:
        """The model's "unknown" threshold (None: it always names a class)."""
        return self.info.unknown_threshold

    def unknown(self) -> np.ndarray:
        """bool [len(entries)]: the images whose top score is below the model's threshold."""
        return contract.is_unknown(self.probabilities.max(axis=1), self.unknown_threshold)

    def ranked(self, i: int, top_k: int) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities[i], kind="stable")[:top_k]
        return [(self.labels[j], float(self.probabilities[i][j])) for j in order]

    @property
    def per_image_ms(self) -> float:
        return 1000 * self.inference_seconds / max(1, len(self.entries))

    def misclassified(self) -> list[tuple[str, str, str, float]]:
        rows = []
        for i, e in enumerate(self.entries):
            if e.truth is None:
                continue
            pred = int(self.probabilities[i].argmax())
            if pred != e.truth:
                rows.append((e.path, self.labels[e.truth], self.labels[pred],
                             float(self.probabilities[i][pred])))
        return rows

    def to_json(self, top_k: int) -> dict:
        """The document `label --format json` prints and `report` reads back."""
        doc = {
            "model": self.model_path,
            "version": contract.version_name(self.model_path),
            "labels": self.labels,
            "metadata": self.info.to_json(),
            "predictions": [
                {"path": e.path,
                 "true_label": self.labels[e.truth] if e.truth is not None else None,
                 "top_k": [{"label": l, "score": s} for l, s in self.ranked(i, top_k)],
                 "probabilities": [float(p) for p in self.probabilities[i]]}
                for i, e in enumerate(self.entries)
            ],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "unknown_folders": self.unknown_folders,
            "load_seconds": self.load_seconds,
            "inference_seconds": self.inference_seconds,
            "ms_per_image": self.per_image_ms,
            "runtime": self.runtime,
            "evaluation": None,
        }
        if self.unknown_threshold is not None:  # absent otherwise, as from older trxsfr
            doc["unknown_threshold"] = self.unknown_threshold
            for prediction, unknown in zip(doc["predictions"], self.unknown().tolist()):
                prediction["unknown"] = unknown
        if self.evaluation:
            doc["evaluation"] = dict(self.evaluation, misclassified=[
                {"path": p, "true_label": t, "predicted_label": pr, "score": s}
                for p, t, pr, s in self.misclassified()])
        return doc

    @classmethod
    def from_json(cls, doc, source: str = "the document") -> "LabelRun":
        """Read back what `to_json` wrote.

        Raises:
            InputError: `doc` does not have that shape (e.g. it was edited by hand);
                the message names `source` and the field.
        """
        what = f"{source} is not the output of `trxsfr label --format json`"
        if not isinstance(doc, dict):
            raise InputError(f"{what}: expected a JSON object")
        for key, kind in (("labels", list), ("predictions", list), ("metadata", dict)):
            if not isinstance(doc.get(key), kind):
                raise InputError(f"{what}: no '{key}' {kind.__name__}")
        labels = doc["labels"]
        if not all(isinstance(label, str) for label in labels):
            raise InputError(f"{what}: 'labels' must be strings")
        entries, probs = [], []
        for i, p in enumerate(doc["predictions"]):
            row = p.get("probabilities") if isinstance(p, dict) else None
            if not isinstance(row, list) or len(row) != len(labels) or "path" not in p:
                raise InputError(f"{what}: prediction {i} lacks a path or {len(labels)} "
                                 f"probabilities")
            if p.get("true_label") is not None and p["true_label"] not in labels:
                raise InputError(f"{what}: prediction {i} has unknown true_label "
                                 f"{p['true_label']!r}")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row):
                raise InputError(f"{what}: prediction {i} has probabilities that are not numbers")
            truth = labels.index(p["true_label"]) if p.get("true_label") is not None else None
            entries.append(Entry(str(p["path"]), truth))
            probs.append(row)
        evaluation = doc.get("evaluation")
        if evaluation is not None:
            fields = ("accuracy", "count", "per_class", "confusion_matrix")
            if not isinstance(evaluation, dict) or any(k not in evaluation for k in fields):
                raise InputError(f"{what}: 'evaluation' must be null or an object with "
                                 f"{', '.join(fields)}")
            evaluation = {k: v for k, v in evaluation.items() if k != "misclassified"}
        meta = doc["metadata"]
        history = meta.get("history") or []
        if not isinstance(history, list) or \
                not all(isinstance(row, dict) and "step" in row for row in history):
            raise InputError(f"{what}: metadata 'history' must be a list of objects with a "
                             f"'step'")
        created = meta.get("created")
        if created is not None and (not isinstance(created, (int, float))
                                    or isinstance(created, bool)):
            raise InputError(f"{what}: metadata 'created' must be a unix time, got {created!r}")
        skipped = [Skipped(str(s.get("path")), str(s.get("reason")))
                   for s in doc.get("skipped") or [] if isinstance(s, dict)]

        def seconds(key):
            value = doc.get(key)
            return float(value) if isinstance(value, (int, float)) else 0.0

        return cls(str(doc.get("model", "")), list(labels), ModelInfo.from_json(meta), entries,
                   np.asarray(probs, np.float32).reshape(len(entries), len(labels)), skipped,
                   [str(f) for f in doc.get("unknown_folders") or []],
                   seconds("load_seconds"), seconds("inference_seconds"), evaluation)


_NO_EVALUATION_SET = ("needs an evaluation set: a folder whose sub-folders are named after "
                     "the model's labels")


def run(predictor: Predictor, inputs: Sequence[str], batch_size: int = FORWARD_BATCH_SIZE,
        on_progress: Optional[ProgressFn] = None, labels_file: Optional[str] = None,
        evaluation_required_by: Optional[str] = None,
        max_pixels: int = MAX_IMAGE_PIXELS, fetch: Optional[FetchOptions] = None) -> LabelRun:
    """Predict every image under `inputs` with a loaded model; evaluate those with a known label.

    Args:
        predictor: `models.load(path)`.
        on_progress: told of each batch ("label").
        labels_file: label_image.py's --labels; only checked against the model's own.
        evaluation_required_by: what needs an evaluation set (e.g. "--min_accuracy").
        max_pixels: images whose header says more pixels are skipped undecoded.
        fetch: how URL inputs are fetched (timeouts, size cap, private addresses).

    Raises:
        InputError: `evaluation_required_by` is given and no input image has a known
            label (checked before any image is decoded), or none of those that have
            one could be read.
    """
    clf = predictor
    if labels_file:
        if os.path.isdir(labels_file):
            raise InputError(f"--labels {labels_file} is a folder; pass a labels.txt file")
        if not os.path.isfile(labels_file):
            raise InputError(f"--labels {labels_file} does not exist")
        if contract.read_labels(labels_file) != clf.labels:
            log.warning("--labels %s differs from the model's own labels; using the model's",
                        labels_file)
    entries, skipped, unknown = collect(inputs, clf.labels, fetch)
    if evaluation_required_by and all(e.truth is None for e in entries):
        raise InputError(f"{evaluation_required_by} {_NO_EVALUATION_SET}")
    preds = clf.predict_paths([e.file or e.path for e in entries], batch_size, on_progress,
                              max_pixels)
    skipped = skipped + preds.failed
    kept = [entries[i] for i in preds.ok]
    evaluation = None
    truth_rows = [i for i, e in enumerate(kept) if e.truth is not None]
    if evaluation_required_by and not truth_rows:
        labelled = {e.path for e in entries if e.truth is not None}
        first = next(f for f in preds.failed if f.path in labelled)
        raise InputError(f"{evaluation_required_by} {_NO_EVALUATION_SET}: none of its images "
                         f"could be read (e.g. {first.path}: {first.reason})")
    if truth_rows:
        true = [kept[i].truth for i in truth_rows]
        probs = preds.probabilities[truth_rows]
        evaluation = metrics.metrics(true, probs.argmax(axis=1), clf.labels, probs)
        threshold = clf.info.unknown_threshold
        if threshold is not None:
            n, coverage, accuracy = contract.acceptance(
                probs.max(axis=1), probs.argmax(axis=1) == np.asarray(true), threshold)
            evaluation["unknown"] = {
                "threshold": threshold, "unknown": len(probs) - n, "coverage": coverage,
                "accuracy_accepted": accuracy}
    return LabelRun(clf.path, clf.labels, clf.info, kept, preds.probabilities, skipped,
                       unknown, clf.load_seconds, preds.seconds, evaluation,
                       getattr(clf, "runtime", None))
