"""The analysis report: one self-contained HTML file about a `label` run.

Input is a `LabelRun`: what `label --report` found, or the document
`trxsfr label --format json` printed, read back with `LabelRun.from_json`. Everything the page shows is inside the file:
figures are PNGs drawn with matplotlib's Agg renderer and thumbnails are small
JPEGs, both inlined as base64 data URIs, and there is no script, font or style
sheet to fetch. A person opens it in any browser, offline.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
import json
import logging
import os
from typing import Optional, Sequence

import numpy as np

from trxsfr.base import files
from trxsfr.base.contract import ModelInfo
from trxsfr.base.errors import InputError, first_line
from trxsfr.base.files import write_new
from trxsfr.use.labeling import LabelRun

log = logging.getLogger(__name__)

THUMBNAIL_PX = 96  # longest side; at JPEG quality 70 about 2-4 KB each
THUMBNAIL_QUALITY = 70
DEFAULT_THUMBNAILS = 100  # per gallery; the rest of a long list is a plain table
LEAST_CONFIDENT_CORRECT = 24
CALIBRATION_BINS = 10
MAX_MATRIX_TABLE = 50  # classes beyond which the counts table would swamp the page
MAX_MATRIX_ANNOTATED = 25  # classes beyond which numbers in the picture are unreadable


# ---------------------------------------------------------------- input


def load_label_json(path: str) -> LabelRun:
    """Read and check a document printed by `trxsfr label --format json`.

    Raises:
        InputError: the file is missing, not JSON, or not such a document.
    """
    if os.path.isdir(path):
        raise InputError(f"label JSON {path} is a folder; pass the file `trxsfr label ... "
                         f"--format json > run.json` wrote")
    if not os.path.isfile(path):
        raise InputError(f"label JSON {path} does not exist (write one with "
                         f"`trxsfr label ... --format json > run.json`)")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not JSON ({e}); pass the output of "
                         f"`trxsfr label --format json`") from e
    return LabelRun.from_json(doc, path)


def check_output(path: str) -> None:
    """Fail before any work if the report would replace a file the user has.

    Raises:
        InputError: `path` exists (file or folder).
    """
    if os.path.lexists(path):
        raise InputError(f"report {path} already exists; pick a new path "
                         f"(trxsfr never overwrites a file)")
    files.check_folder(os.path.dirname(os.path.abspath(path)), f"report {path}: its folder")


# ---------------------------------------------------------------- pure numbers


def calibration(confidences: Sequence[float], correct: Sequence[bool],
                bins: int = CALIBRATION_BINS) -> dict:
    """Reliability table and expected calibration error (ECE).

    Args:
        confidences: float [N] in [0, 1], the top class's probability per image.
        correct: bool [N], whether that top class is the true one.
        bins: equal-width confidence bins on [0, 1].

    Returns:
        {"ece": float or None, "bins": [{"low", "high", "count", "confidence",
        "accuracy"}]}; ECE = sum over bins of count/N * |accuracy - confidence|.
    """
    conf = np.asarray(confidences, float)
    hit = np.asarray(correct, bool)
    index = np.minimum((conf * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = index == b
        count = int(sel.sum())
        row = {"low": b / bins, "high": (b + 1) / bins, "count": count,
               "confidence": float(conf[sel].mean()) if count else None,
               "accuracy": float(hit[sel].mean()) if count else None}
        if count:
            ece += count / len(conf) * abs(row["accuracy"] - row["confidence"])
        rows.append(row)
    return {"ece": float(ece) if len(conf) else None, "bins": rows}


COVERAGE_THRESHOLDS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def coverage_table(confidences: Sequence[float], correct: Sequence[bool],
                   thresholds: Sequence[float]) -> list[dict]:
    """What an "unknown" threshold would do: per threshold, the images accepted (top-class
    probability at or above it, compared in float32 as a model does) and their accuracy.

    Returns:
        [{"threshold", "accepted", "coverage", "accuracy"}], accuracy None when none is
        accepted.
    """
    from trxsfr.base.contract import acceptance

    rows = []
    for t in thresholds:
        n, coverage, accuracy = acceptance(confidences, correct, t)
        rows.append({"threshold": float(t), "accepted": n, "coverage": coverage,
                     "accuracy": accuracy})
    return rows


@dataclasses.dataclass(frozen=True)
class _Row:
    """One labelled image as the report sees it."""

    path: str
    truth: Optional[int]
    pred: int
    score: float  # probability of `pred`


def _rows(doc: dict) -> list[_Row]:
    labels = doc["labels"]
    rows = []
    for p in doc["predictions"]:
        probs = np.asarray(p["probabilities"], float)
        pred = int(probs.argmax())
        truth = labels.index(p["true_label"]) if p.get("true_label") is not None else None
        rows.append(_Row(p["path"], truth, pred, float(probs[pred])))
    return rows


# ---------------------------------------------------------------- pictures


def _figure(width_in: float, height_in: float):
    # Figure + Agg canvas directly, not pyplot: no global backend switch, no GUI,
    # nothing left open in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def confusion_figure(matrix: np.ndarray, labels: Sequence[str]) -> str:
    """`confusion_plot` as a PNG data URI."""
    return _png_uri(confusion_plot(matrix, labels))


def confusion_plot(matrix: np.ndarray, labels: Sequence[str]):
    """Counts in each cell, shading by the row-normalised fraction; a matplotlib Figure.

    Args:
        matrix: int [C, C], rows true classes, columns predicted ones.
    """
    matrix = np.asarray(matrix, int)
    c = len(labels)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
    side = min(3.5 + 0.45 * c, 20)
    font = max(4, min(10, 200 // max(c, 1)))
    # Room for the tick labels on top of the matrix's own side, so long class names
    # (30 characters and more) do not squeeze the cells: ~0.6 em per character.
    label_in = 0.6 * font / 72 * max((len(str(label)) for label in labels), default=0)
    fig = _figure(side + 1.2 + label_in, side + label_in * (0.71 if c > 4 else 0.2))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), labels, rotation=45 if c > 4 else 0, ha="right" if c > 4 else "center",
                  fontsize=font)
    ax.set_yticks(range(c), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= MAX_MATRIX_ANNOTATED:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=font,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="fraction of the true class", shrink=0.8)
    return fig


def reliability_figure(table: dict) -> str:
    """Accuracy against confidence per bin, over a histogram of counts; a PNG data URI."""
    fig = _figure(6, 5.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    bins = table["bins"]
    width = bins[0]["high"] - bins[0]["low"]
    centres = [b["low"] + width / 2 for b in bins]
    used = [(c, b) for c, b in zip(centres, bins) if b["count"]]
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    if used:
        top.bar([c for c, _ in used], [b["accuracy"] for _, b in used], width=width * 0.9,
                color="#4c72b0", edgecolor="black", label="accuracy")
        top.scatter([b["confidence"] for _, b in used], [b["accuracy"] for _, b in used],
                    color="#dd8452", zorder=3, s=18, label="mean confidence")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    ece = table["ece"]
    top.set_title("Reliability" + (f" (ECE = {100 * ece:.2f}%)" if ece is not None else ""))
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, [b["count"] for b in bins], width=width * 0.9, color="#999999")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top class probability)")
    bottom.set_ylabel("images")
    return _png_uri(fig)


def coverage_figure(confidences: Sequence[float], correct: Sequence[bool],
                    threshold: Optional[float]) -> str:
    """Accuracy on accepted images against coverage as the threshold rises; a PNG data URI."""
    conf = np.asarray(confidences, float)
    hit = np.asarray(correct, bool)
    order = np.argsort(-conf, kind="stable")
    k = np.arange(1, len(conf) + 1)
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    ax.plot(k / len(conf), np.cumsum(hit[order]) / k, color="#4c72b0")
    if threshold is not None:
        row = coverage_table(conf, hit, [threshold])[0]
        if row["accepted"]:
            ax.scatter([row["coverage"]], [row["accuracy"]], color="#dd8452", zorder=3,
                       label=f"the model's threshold {threshold:.3f}")
            ax.legend(loc="lower left", fontsize=8)
    ax.set_xlim(0, 1.01)
    ax.set_xlabel("coverage (share of images accepted, most confident first)")
    ax.set_ylabel("accuracy on accepted images")
    ax.set_title("Coverage and accuracy")
    ax.grid(alpha=0.3)
    return _png_uri(fig)


def training_figure(history: Sequence[dict]) -> str:
    """Train/validation accuracy and cross-entropy per evaluation step; a PNG data URI."""
    fig = _figure(10, 3.8)
    acc_ax, loss_ax = fig.subplots(1, 2)
    steps = [row["step"] for row in history]
    for split, style in (("train", "-"), ("validation", "--")):
        for ax, metric in ((acc_ax, "accuracy"), (loss_ax, "cross_entropy")):
            key = f"{split}_{metric}"
            points = [(s, row[key]) for s, row in zip(steps, history) if row.get(key) is not None]
            if points:
                ax.plot(*zip(*points), style, label=split)
    accuracies = [row[k] for row in history for k in ("train_accuracy", "validation_accuracy")
                  if row.get(k) is not None]
    if accuracies:  # a fixed top keeps a flat 100% line from being autoscaled into noise
        acc_ax.set_ylim(max(0.0, min(accuracies) - 0.05), 1.01)
    acc_ax.set_title("accuracy")
    loss_ax.set_title("cross-entropy")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png_uri(fig)


def thumbnail_uri(path: str, px: int = THUMBNAIL_PX) -> Optional[str]:
    """The image shrunk to `px` on its longest side as a JPEG data URI; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (2 * px, 2 * px))  # lets JPEG decode big photos at reduced scale
            img = img.convert("RGB")
            img.thumbnail((px, px), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        log.warning("no thumbnail for %s: %s", path, e)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------- HTML

# The page style; audit_page uses it too, so both pages look alike.
PAGE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4;text-align:left}
.kv th{max-width:16em}.cards{display:flex;flex-wrap:wrap;gap:0 2em;align-items:flex-start}
.card h3{margin:.8em 0 .2em;font-size:1em}.muted{color:#666}.note{background:#fff8e1;padding:.5em .8em;border-left:4px solid #f0c000}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure.thumb{margin:0;width:150px;border:1px solid #ddd;border-radius:4px;padding:5px;background:#fafafa}
figure.thumb img{display:block;margin:0 auto;max-width:96px;max-height:96px}
figure.thumb .missing{width:96px;height:96px;margin:0 auto;background:#eee;font-size:11px;
display:flex;align-items:center;justify-content:center;text-align:center}
figcaption{font-size:12px;margin-top:4px;word-break:break-all}
.wrong{color:#b00020;font-weight:600}.right{color:#1b7f3b;font-weight:600}
img.figure{max-width:100%;height:auto}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _num(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _kv_table(rows: Sequence[tuple[str, str]], table_id: str) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv" id="{table_id}">{body}</table>'


def _card(title: str, body: str) -> str:
    return f'<div class="card"><h3>{_e(title)}</h3>{body}</div>'


def _summary(doc: dict, rows: list[_Row]) -> str:
    info = ModelInfo.from_json(doc.get("metadata") or {})
    module, config, metrics, created = info.module, info.config, info.metrics, info.created
    size = module.image_size
    run = [
        ("model", doc.get("model", "?")),
        ("version", doc.get("version", "?")),
        ("created", datetime.datetime.fromtimestamp(created, datetime.timezone.utc)
         .strftime("%Y-%m-%d %H:%M UTC") if created else "–"),
        ("trxsfr version", info.trxsfr_version or "–"),
        ("module", module.handle or "–"),
        ("image size", f"{size[0]}×{size[1]}" if size else "–"),
        ("feature dimension", module.feature_dim or "–"),
        ("classes", len(doc["labels"])),
    ]
    hparams = [(k, "–" if v is None else v) for k, v in (
        ("image_dir", config.get("image_dir")),
        ("how_many_training_steps", config.get("how_many_training_steps")),
        ("learning_rate", config.get("learning_rate")),
        ("optimizer", config.get("optimizer")),
        ("train_batch_size", config.get("train_batch_size")),
        ("validation_percentage", config.get("validation_percentage")),
        ("testing_percentage", config.get("testing_percentage")),
        ("eval_step_interval", config.get("eval_step_interval")),
        ("seed", config.get("seed")),
    )]
    trained = [
        ("test accuracy", f"{_pct(metrics.get('test_accuracy'))} "
                          f"(N={metrics.get('test_count', '–')})"),
        ("validation accuracy", _pct(metrics.get("validation_accuracy"))),
        ("validation cross-entropy", _num(metrics.get("validation_cross_entropy"))),
        ("train accuracy (last evaluation)", _pct(metrics.get("train_accuracy"))),
    ]
    evaluated = sum(r.truth is not None for r in rows)
    this_run = [
        ("images labelled", len(rows)),
        ("images evaluated (known label)", evaluated),
        ("files skipped", len(doc.get("skipped") or [])),
        ("folders not evaluated (not a label)", ", ".join(doc.get("unknown_folders") or []) or "none"),
        ("inference", f"{doc['ms_per_image']:.2f} ms/image" if doc.get("ms_per_image") else "–"),
    ]
    parts = ['<section id="summary"><h2>Run summary</h2><div class="cards">',
             _card("Model", _kv_table(run, "summary-model")),
             _card("Training hyper-parameters", _kv_table(hparams, "summary-hparams")),
             _card("Metrics at training time", _kv_table(trained, "summary-training-metrics")),
             _card("This label run", _kv_table(this_run, "summary-run"))]
    splits = info.split_counts
    if splits:
        body = "".join(
            f"<tr><th>{_e(label)}</th>" + "".join(
                f'<td class="num">{_e(c.get(s, 0))}</td>' for s in ("train", "validation", "test"))
            + "</tr>" for label, c in splits.items())
        parts.append(_card("Training images per class and split",
                           '<table id="split-counts"><tr><th>class</th><th>train</th>'
                           f"<th>validation</th><th>test</th></tr>{body}</table>"))
    parts.append("</div>")
    skipped = doc.get("skipped") or []
    if skipped:
        items = "".join(f"<li>{_e(s['path'])}: {_e(s['reason'])}</li>" for s in skipped[:200])
        more = f"<li>… and {len(skipped) - 200} more</li>" if len(skipped) > 200 else ""
        parts.append(f'<details><summary>Skipped files ({len(skipped)})</summary>'
                     f"<ul>{items}{more}</ul></details>")
    parts.append("</section>")
    return "".join(parts)


def _metrics(doc: dict) -> str:
    ev = doc["evaluation"]
    topk = ev.get("top_k_accuracy") or {}
    overall = [("accuracy", f"{_pct(ev['accuracy'])} (N={ev['count']})"),
               ("macro-F1", _num(ev.get("macro_f1")))]
    overall += [(f"top-{k} accuracy", _pct(v)) for k, v in sorted(topk.items(), key=lambda kv: int(kv[0]))]
    rows = "".join(
        f'<tr data-class="{_e(label)}"><th>{_e(label)}</th>'
        f'<td class="num">{_num(r["precision"])}</td><td class="num">{_num(r["recall"])}</td>'
        f'<td class="num">{_num(r["f1"])}</td><td class="num">{r["support"]}</td></tr>'
        for label, r in ev["per_class"].items())
    return ('<section id="metrics"><h2>Accuracy and per-class metrics</h2>'
            + _kv_table(overall, "overall-metrics")
            + '<table id="per-class"><tr><th>class</th><th>precision</th><th>recall</th>'
              f"<th>F1</th><th>support</th></tr>{rows}</table>"
              '<p class="muted">Support is the number of evaluated images of that class; '
              "precision of a class never predicted is shown as 0.</p></section>")


def _confusion(doc: dict) -> str:
    labels = doc["labels"]
    matrix = np.asarray(doc["evaluation"]["confusion_matrix"], int)
    parts = ['<section id="confusion"><h2>Confusion matrix</h2>'
             '<p class="muted">Rows: true class; columns: predicted class. Numbers are counts; '
             "shading is the fraction of the row (the true class).</p>",
             f'<img class="figure" id="confusion-matrix" alt="confusion matrix" '
             f'src="{confusion_figure(matrix, labels)}">']
    if len(labels) <= MAX_MATRIX_TABLE:
        head = "".join(f"<th>{_e(l)}</th>" for l in labels)
        body = "".join(
            f"<tr><th>{_e(t)}</th>" + "".join(
                f'<td class="num" data-true="{_e(t)}" data-predicted="{_e(p)}">{matrix[i, j]}</td>'
                for j, p in enumerate(labels)) + "</tr>"
            for i, t in enumerate(labels))
        parts.append('<details open><summary>Counts</summary><table id="confusion-counts">'
                     f"<tr><th>true \\ predicted</th>{head}</tr>{body}</table></details>")
    else:
        parts.append(f'<p class="muted">{len(labels)} classes: the counts are in the label '
                     "JSON (evaluation.confusion_matrix).</p>")
    parts.append("</section>")
    return "".join(parts)


class _Images:
    """Finds each image file and makes its thumbnail once; counts those it cannot read."""

    def __init__(self, base_dirs: Sequence[str], local: Optional[dict] = None):
        self.base_dirs = list(base_dirs)
        self.local = local or {}
        self.missing = 0
        self.made = 0

    def uri(self, path: str) -> Optional[str]:
        if path in self.local:  # a URL: its fetched copy
            candidates = [self.local[path]]
        else:
            candidates = [path] + ([os.path.join(b, path) for b in self.base_dirs]
                                   if not os.path.isabs(path) else [])
        found = next((c for c in candidates if os.path.isfile(c)), None)
        uri = thumbnail_uri(found) if found else None
        if uri is None:
            self.missing += 1
        else:
            self.made += 1
        return uri


def _thumb(images: _Images, row: _Row, labels: Sequence[str]) -> str:
    uri = images.uri(row.path)
    pic = (f'<img class="thumb" alt="{_e(os.path.basename(row.path))}" src="{uri}">' if uri
           else '<div class="missing">image not found</div>')
    verdict = ("right" if row.truth == row.pred else "wrong") if row.truth is not None else ""
    truth = f"true: {_e(labels[row.truth])}<br>" if row.truth is not None else ""
    return (f'<figure class="thumb" title="{_e(row.path)}">{pic}<figcaption>{truth}'
            f'predicted: <span class="{verdict}">{_e(labels[row.pred])}</span> '
            f"{row.score:.3f}<br>"
            f'<span class="muted">{_e(os.path.basename(row.path))}</span></figcaption></figure>')


def _gallery(section_id: str, title: str, note: str, rows: list[_Row], limit: int,
             images: _Images, labels: Sequence[str]) -> str:
    shown, rest = rows[:limit], rows[limit:]
    parts = [f'<section id="{section_id}"><h2>{_e(title)} ({len(rows)})</h2>'
             f'<p class="muted">{_e(note)}</p>']
    if not rows:
        parts.append("<p>None.</p>")
    parts.append('<div class="gallery">' + "".join(_thumb(images, r, labels) for r in shown)
                 + "</div>")
    if rest:
        body = "".join(
            f"<tr><td>{_e(r.path)}</td><td>{_e(labels[r.truth]) if r.truth is not None else ''}"
            f'</td><td>{_e(labels[r.pred])}</td><td class="num">{r.score:.4f}</td></tr>'
            for r in rest)
        parts.append(f"<details><summary>{len(rest)} more, without thumbnails</summary>"
                     f'<table class="rest"><tr><th>path</th><th>true</th><th>predicted</th>'
                     f"<th>score</th></tr>{body}</table></details>")
    parts.append("</section>")
    return "".join(parts)


def _calibration(rows: list[_Row]) -> str:
    evaluated = [r for r in rows if r.truth is not None]
    table = calibration([r.score for r in evaluated], [r.truth == r.pred for r in evaluated])
    body = "".join(
        f'<tr><td>{b["low"]:.1f}–{b["high"]:.1f}</td><td class="num">{b["count"]}</td>'
        f'<td class="num">{_num(b["confidence"], 3)}</td><td class="num">{_num(b["accuracy"], 3)}</td></tr>'
        for b in table["bins"] if b["count"])
    return ('<section id="calibration"><h2>Confidence and calibration</h2>'
            f'<p>Expected calibration error: <strong id="ece">{_pct(table["ece"])}</strong> '
            f"over {CALIBRATION_BINS} equal-width confidence bins (0 means the top-class "
            "probability is, on average, exactly how often the model is right).</p>"
            f'<img class="figure" id="reliability-diagram" alt="reliability diagram" '
            f'src="{reliability_figure(table)}">'
            '<table id="reliability-bins"><tr><th>confidence bin</th><th>images</th>'
            f"<th>mean confidence</th><th>accuracy</th></tr>{body}</table></section>")


def _coverage(doc: dict, rows: list[_Row]) -> str:
    evaluated = [r for r in rows if r.truth is not None]
    conf = [r.score for r in evaluated]
    correct = [r.truth == r.pred for r in evaluated]
    threshold = ModelInfo.from_json(doc.get("metadata") or {}).unknown_threshold
    thresholds = sorted(set(COVERAGE_THRESHOLDS) | ({threshold} if threshold is not None else set()))
    body = "".join(
        f'<tr{" class=model-threshold" if t["threshold"] == threshold else ""}>'
        f'<td class="num">{t["threshold"]:.4g}{" (the model&#x27;s)" if t["threshold"] == threshold else ""}</td>'
        f'<td class="num">{t["accepted"]}</td><td class="num">{_pct(t["coverage"])}</td>'
        f'<td class="num">{_pct(t["accuracy"])}</td></tr>'
        for t in coverage_table(conf, correct, thresholds))
    said = (f"This model answers <strong>unknown</strong> below a top-class probability of "
            f'<strong id="unknown-threshold">{threshold:.4f}</strong>.' if threshold is not None
            else "This model has no \"unknown\" threshold (retrain --unknown_threshold sets one); "
                 "the table shows what one would do.")
    return ('<section id="coverage"><h2>Coverage and accuracy</h2>'
            f"<p>{said} An image is accepted when its top-class probability is at least the "
            "threshold; coverage is the share accepted, accuracy is measured on those.</p>"
            f'<img class="figure" id="coverage-curve" alt="coverage and accuracy" '
            f'src="{coverage_figure(conf, correct, threshold)}">'
            '<table id="coverage-table"><tr><th>threshold</th><th>accepted</th>'
            f"<th>coverage</th><th>accuracy</th></tr>{body}</table></section>")


def _training(doc: dict) -> str:
    history = ModelInfo.from_json(doc.get("metadata") or {}).history
    if not history:
        return ('<section id="training"><h2>Training curves</h2><p class="note">The model\'s '
                "metadata holds no training history (models exported by trxsfr retrain carry "
                "one).</p></section>")
    return ('<section id="training"><h2>Training curves</h2>'
            f'<p class="muted">{len(history)} evaluations recorded by retrain '
            "(assets/trxsfr.json, key history).</p>"
            f'<img class="figure" id="training-curves" alt="training curves" '
            f'src="{training_figure(history)}"></section>')


def render(doc: dict, thumbnails: int = DEFAULT_THUMBNAILS,
           base_dirs: Sequence[str] = (), local: Optional[dict] = None) -> tuple[str, dict]:
    """The report page for one label document.

    Args:
        doc: what `LabelRun.to_json` returns.
        thumbnails: most thumbnails per gallery; longer lists go on as a table.
        base_dirs: where to look for images whose relative path does not resolve
            from the working directory (e.g. the folder of a saved JSON).
        local: {path in the document: file to read it from}, for inputs that are not
            files (a URL's fetched copy).

    Returns:
        (HTML text, {"thumbnails": made, "missing_images": unreadable}).
    """
    labels = doc["labels"]
    rows = _rows(doc)
    images = _Images(base_dirs, local)
    title = f"trxsfr report: model {doc.get('version', '?')}"
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
             f'<meta name="viewport" content="width=device-width, initial-scale=1">'
             f"<title>{_e(title)}</title><style>{PAGE_CSS}</style></head><body>"
             f"<h1>{_e(title)}</h1>"
             f'<p class="muted">{_e(doc.get("model", ""))}</p>',
             _summary(doc, rows)]
    if doc.get("evaluation"):
        mistakes = sorted((r for r in rows if r.truth is not None and r.truth != r.pred),
                          key=lambda r: -r.score)
        unsure = sorted((r for r in rows if r.truth is not None and r.truth == r.pred),
                        key=lambda r: r.score)
        parts += [
            _metrics(doc), _confusion(doc),
            _gallery("misclassified", "Misclassified images",
                     "Most confident mistakes first; the score is the predicted class's "
                     "probability.", mistakes, thumbnails, images, labels),
            _gallery("least-confident-correct", "Least confident correct images",
                     "Right, but barely: lowest top-class probability first.",
                     unsure[:LEAST_CONFIDENT_CORRECT], min(thumbnails, LEAST_CONFIDENT_CORRECT),
                     images, labels),
            _calibration(rows),
            _coverage(doc, rows),
        ]
    else:
        parts.append('<p class="note" id="no-evaluation">No evaluation set in this run: label '
                     "a folder whose sub-folders are named after the model's labels to get "
                     "metrics, the confusion matrix, mistakes and calibration.</p>")
        parts.append(_gallery("least-confident", "Least confident predictions",
                              "Lowest top-class probability first.",
                              sorted(rows, key=lambda r: r.score), thumbnails, images, labels))
    parts.append(_training(doc))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<footer class="muted"><p>Written by trxsfr on {now}. Self-contained: '
                 "no file or network access is needed to view it.</p></footer></body></html>")
    return "".join(parts), {"thumbnails": images.made, "missing_images": images.missing}


@dataclasses.dataclass(frozen=True)
class Written:
    path: str
    bytes: int
    thumbnails: int
    missing_images: int


def check_settings(out_path: str, thumbnails: int) -> None:
    """Raises InputError for a report no run can write, before any work."""
    if thumbnails < 0:
        raise InputError(f"--thumbnails must be 0 or more, got {thumbnails}")
    check_output(out_path)


def write_from_file(label_json: str, out_path: str,
                    thumbnails: int = DEFAULT_THUMBNAILS) -> Written:
    """`write` for a document saved from `trxsfr label --format json`.

    Raises:
        InputError: as `write`, or the file is not such a document, including a field
            deep inside it with another shape than `label` writes (e.g. edited by hand).
    """
    check_settings(out_path, thumbnails)
    run = load_label_json(label_json)
    try:
        return write(run, out_path, thumbnails,
                     base_dirs=[os.path.dirname(os.path.abspath(label_json))])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise InputError(f"{label_json} is not the output of `trxsfr label --format json`: "
                         f"a field has another shape ({type(e).__name__}: "
                         f"{first_line(e, 120)})") from e


def write(run: LabelRun, out_path: str, thumbnails: int = DEFAULT_THUMBNAILS,
          base_dirs: Sequence[str] = (), top_k: int = 5) -> Written:
    """Render a report and write it to a new file `out_path`.

    Args:
        run: what `label` found (`labeling.run`, or `LabelRun.from_json` of its JSON).
        out_path: must not exist; the file appears whole or not at all.

    Raises:
        InputError: `out_path` exists, cannot be written, or `source` is not a label run.
    """
    check_settings(out_path, thumbnails)
    doc = run.to_json(top_k)
    # URLs' fetched copies exist while this process runs: thumbnails come from them.
    text, counts = render(doc, thumbnails, base_dirs,
                          {e.path: e.file for e in run.entries if e.file})
    data = text.encode("utf-8")
    try:
        write_new(out_path, data)
    except FileExistsError as e:
        raise InputError(f"report {out_path} already exists; pick a new path") from e
    except OSError as e:
        raise InputError(f"cannot write report {out_path}: {e.strerror or e}") from e
    return Written(out_path, len(data), counts["thumbnails"], counts["missing_images"])
