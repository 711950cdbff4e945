"""`label`: run an exported model over files and folders; evaluate labelled folders."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional, Sequence

import numpy as np

from trxsfr.base import listing
from trxsfr.base.config import FORWARD_BATCH_SIZE
from trxsfr.base.listing import Skipped
from trxsfr.base.errors import InputError
from trxsfr.cli.tables import table

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Entry:
    path: str  # as the user will read it: the input joined with the file's relative path
    truth: Optional[int]  # label index when the file sits in a folder named after a label


def collect(inputs: Sequence[str], labels: Sequence[str]) -> tuple[list[Entry], list[Skipped], list[str]]:
    """Entries to label, files skipped for their type, and sub-folders that are no model label.

    A folder with sub-folders named after model labels is an evaluation set; any
    other folder is labelled file by file.

    Raises:
        InputError: an input does not exist, or there is no image file at all.
    """
    entries, skipped, unknown = [], [], []

    def add(path: str, truth: Optional[int]):
        if listing.is_image_name(path):
            entries.append(Entry(path, truth))
        else:
            skipped.append(listing.not_an_image(path))

    for inp in inputs:
        if os.path.isfile(inp):
            add(inp, None)
        elif os.path.isdir(inp):
            subdirs = listing.class_dirs(inp)
            if any(d in labels for d in subdirs):
                known, others = listing.labelled_folders(inp, labels)
                for label, rels in known.items():
                    for rel in rels:
                        add(os.path.join(inp, rel), labels.index(label))
                unknown += [os.path.join(inp, d) for d in others]
                for rel in listing.list_files(inp):
                    if "/" not in rel:
                        add(os.path.join(inp, rel), None)
            else:
                for rel in listing.list_files(inp):
                    add(os.path.join(inp, rel), None)
        else:
            raise InputError(f"input {inp} does not exist")
    if not entries:
        raise InputError(f"no image files in {', '.join(inputs)} "
                         f"(looked for {', '.join(listing.IMAGE_EXTENSIONS)})")
    return entries, skipped, unknown


@dataclasses.dataclass
class LabelReport:
    model_path: str
    labels: list[str]
    metadata: dict
    entries: list[Entry]  # those that decoded, aligned with probabilities
    probabilities: np.ndarray  # float32 [len(entries), classes]
    skipped: list[Skipped]
    unknown_folders: list[str]
    load_seconds: float
    inference_seconds: float
    evaluation: Optional[dict]  # metrics over entries with a truth

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

    def text_lines(self, top_k: int) -> list[str]:
        lines = []
        for i, e in enumerate(self.entries):
            lines += [f"{label} {score:.5f} {e.path}" for label, score in self.ranked(i, top_k)]
        for s in self.skipped:
            lines.append(f"skipped: {s.path}: {s.reason}")
        for folder in self.unknown_folders:
            lines.append(f"not evaluated: {folder} is not one of the model's labels "
                         f"({', '.join(self.labels)})")
        if self.evaluation:
            ev = self.evaluation
            lines.append(f"Accuracy = {100 * ev['accuracy']:.2f}% (N={ev['count']})")
            lines.append("Per-class accuracy:")
            for label, row in ev["per_class"].items():
                if row["support"]:
                    lines.append(f"  {label}: {100 * row['recall']:.2f}% (N={row['support']})")
            lines.append("Confusion matrix (rows: true, columns: predicted):")
            lines += ["  " + row for row in table(
                ["true \\ predicted"] + self.labels,
                [[label] + counts for label, counts in zip(self.labels, ev["confusion_matrix"])])]
            mis = self.misclassified()
            lines.append(f"Misclassified: {len(mis)}")
            lines += [f"  {path} (true: {t}, predicted: {p}, score {s:.5f})" for path, t, p, s in mis]
        lines.append(f"Images: {len(self.entries)} labelled, {len(self.skipped)} skipped")
        lines.append(f"Model load time: {self.load_seconds:.3f}s ({self.model_path})")
        lines.append(f"Mean inference time: {self.per_image_ms:.2f} ms/image "
                     f"(decode included, batched)")
        return lines

    def codelab_lines(self, top_k: int) -> list[str]:
        lines = []
        for i, e in enumerate(self.entries):
            if len(self.entries) > 1:
                lines.append(e.path)
            lines.append(f"Evaluation time (1-image): {self.per_image_ms / 1000:.3f}s")
            lines.append("")
            lines += [f"{label} (score={score:.5f})" for label, score in self.ranked(i, top_k)]
        for s in self.skipped:
            lines.append(f"skipped: {s.path}: {s.reason}")
        return lines

    def to_json(self, top_k: int) -> dict:
        doc = {
            "model": self.model_path,
            "version": os.path.basename(os.path.normpath(self.model_path)),
            "labels": self.labels,
            "metadata": self.metadata,
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
            "evaluation": None,
        }
        if self.evaluation:
            doc["evaluation"] = dict(self.evaluation, misclassified=[
                {"path": p, "true_label": t, "predicted_label": pr, "score": s}
                for p, t, pr, s in self.misclassified()])
        return doc


_NO_EVALUATION_SET = ("needs an evaluation set: a folder whose sub-folders are named after "
                     "the model's labels")


def run(model: str, inputs: Sequence[str], batch_size: int = FORWARD_BATCH_SIZE, progress: bool = True,
        labels_file: Optional[str] = None,
        evaluation_required_by: Optional[str] = None, graph_options=None) -> LabelReport:
    """Load `model`, predict every image under `inputs`, evaluate those with a known label.

    Raises:
        InputError: `evaluation_required_by` (what needs it, e.g. "--min_accuracy") is
            given and no input image has a known label (checked before any image is
            decoded), or none of those that have one could be read.
    """
    from trxsfr.use import classifier
    from trxsfr.use.metrics import metrics

    clf = classifier.load(model, graph_options)  # graph_options: label_image.py's, for a .pb
    if labels_file:
        if os.path.isdir(labels_file):
            raise InputError(f"--labels {labels_file} is a folder; pass a labels.txt file")
        if not os.path.isfile(labels_file):
            raise InputError(f"--labels {labels_file} does not exist")
        with open(labels_file, encoding="utf-8") as f:
            given = [line.rstrip("\n") for line in f if line.strip()]
        if given != clf.labels:
            log.warning("--labels %s differs from the model's own labels; using the model's",
                        labels_file)
    entries, skipped, unknown = collect(inputs, clf.labels)
    if evaluation_required_by and all(e.truth is None for e in entries):
        raise InputError(f"{evaluation_required_by} {_NO_EVALUATION_SET}")
    preds = clf.predict_paths([e.path for e in entries], batch_size, progress)
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
        evaluation = metrics(true, probs.argmax(axis=1), clf.labels, probs)
    return LabelReport(clf.path, clf.labels, clf.metadata, kept, preds.probabilities, skipped,
                       unknown, clf.load_seconds, preds.seconds, evaluation)
