"""The audit page: one self-contained HTML file about an `audit` document, and the review list.

Input is the JSON document `trxsfr audit --format json` prints (`AuditResult.to_json`),
so a saved audit renders again without TensorFlow. The page looks like `report`'s
(same style sheet, thumbnails inlined as base64 JPEGs, nothing fetched) and links each
thumbnail to its file. Nothing here touches an image beyond reading it.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import os
import pathlib
from typing import Optional, Sequence

from trxsfr.base import files
from trxsfr.base.errors import InputError
from trxsfr.base.files import write_new
from trxsfr.report import PAGE_CSS, thumbnail_uri

DEFAULT_THUMBNAILS = 60  # per section; longer lists go on as tables
# An outlier's robust z-score (distance above the median in MADs) from which the review
# list names it: a normal distribution puts 0.1% of images beyond 3.
REVIEW_Z = 3.0

_EXTRA_CSS = """
.pair{display:flex;gap:4px;border:1px solid #ddd;border-radius:4px;padding:5px;background:#fafafa}
.pair figure.thumb{border:none;padding:0;background:none;width:140px}
.leak{color:#b00020;font-weight:600}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def check_new(path: Optional[str]) -> None:
    """Fail before any work if an output file would replace one the user has.

    Raises:
        InputError: `path` exists, or a file is where its folder would be.
    """
    if path is None:
        return
    if os.path.lexists(path):
        raise InputError(f"{path} already exists; pick a new path (trxsfr never overwrites "
                         f"a file)")
    files.check_folder(os.path.dirname(os.path.abspath(path)), f"{path}: its folder")


def review_lines(doc: dict) -> list[str]:
    """Tab-separated `kind, path, detail` lines of what the audit asks a person to look at:
    every label issue, the second image of every duplicate pair, every outlier whose
    robust z-score is at least REVIEW_Z. A header line comes first."""
    lines = ["kind\tpath\tdetail"]
    for i in doc["label_issues"]:
        lines.append(f"label_issue\t{i['path']}\tgiven {i['given']}, suggested "
                     f"{i['suggested']} (label quality {i['score']:.4f})")
    for d in doc["duplicates"]:
        lines.append(f"duplicate\t{d['paths'][1]}\t{d['kind']} copy of {d['paths'][0]} "
                     f"(similarity {d['similarity']:.4f}, pixels {d['pixel_similarity']:.4f}; "
                     f"splits {'/'.join(d['splits'])}; classes {'/'.join(d['classes'])})")
    for o in doc["outliers"]:
        if o["robust_z"] >= REVIEW_Z:
            lines.append(f"outlier\t{o['path']}\tscore {o['score']:.4f} "
                         f"(robust z {o['robust_z']:.1f})")
    return lines


def write_review_list(doc: dict, path: str) -> int:
    """Write `review_lines` to the new file `path`; return the number of entries.

    Raises:
        InputError: `path` exists or cannot be written.
    """
    lines = review_lines(doc)
    _write(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return len(lines) - 1


class _Thumbs:
    def __init__(self):
        self.made = 0

    def figure(self, path: str, caption: str) -> str:
        uri = thumbnail_uri(path)
        self.made += uri is not None
        pic = (f'<img alt="{_e(os.path.basename(path))}" src="{uri}">' if uri
               else '<div class="missing">image not found</div>')
        link = pathlib.Path(os.path.abspath(path)).as_uri()
        return (f'<figure class="thumb" title="{_e(path)}"><a href="{_e(link)}">{pic}</a>'
                f'<figcaption>{caption}<br><a class="muted" href="{_e(link)}">'
                f"{_e(os.path.basename(path))}</a></figcaption></figure>")


def _section(section_id: str, title: str, note: str, cards: list[str], rest_head: Sequence[str],
             rest_rows: list[Sequence]) -> str:
    parts = [f'<section id="{section_id}"><h2>{_e(title)}</h2><p class="muted">{note}</p>']
    parts.append('<div class="gallery">' + "".join(cards) + "</div>" if cards else "<p>None.</p>")
    if rest_rows:
        head = "".join(f"<th>{_e(h)}</th>" for h in rest_head)
        body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>"
                       for row in rest_rows)
        parts.append(f"<details><summary>{len(rest_rows)} more, without thumbnails</summary>"
                     f'<table class="rest"><tr>{head}</tr>{body}</table></details>')
    parts.append("</section>")
    return "".join(parts)


def render(doc: dict, thumbnails: int = DEFAULT_THUMBNAILS) -> tuple[str, int]:
    """(HTML text, thumbnails made) for one audit document."""
    thumbs = _Thumbs()
    settings = doc["settings"]
    module = settings.get("module") or {}
    title = f"trxsfr audit: {doc['image_dir']}"
    issues, dups, outliers = doc["label_issues"], doc["duplicates"], doc["outliers"]
    exact = sum(d["kind"] == "exact" for d in dups)
    summary = [
        ("images audited", doc["images"]), ("classes", ", ".join(doc["labels"])),
        ("module", module.get("handle", "–")),
        ("vectors", f"{doc['bottlenecks']['reused']} reused from cache, "
                    f"{doc['bottlenecks']['computed']} computed"),
        ("out-of-fold accuracy", f"{100 * doc['out_of_fold_accuracy']:.2f}% "
                                 f"({settings['folds']} folds)"),
        ("likely label errors", len(issues)),
        ("duplicate pairs", f"{exact} exact, {len(dups) - exact} near; "
                            f"{sum(d['leak'] for d in dups)} across splits, "
                            f"{sum(not d['same_class'] for d in dups)} across classes"),
        ("near duplicates", f"vector similarity ≥ {settings['near_duplicate_similarity']} and "
                            f"thumbnail similarity ≥ {settings['near_duplicate_pixel_similarity']}"),
        ("files skipped", len(doc["skipped"])),
        ("time", f"{doc['timings'].get('total_s', 0):.1f} s"),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary)
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
             f'<meta name="viewport" content="width=device-width, initial-scale=1">'
             f"<title>{_e(title)}</title><style>{PAGE_CSS}{_EXTRA_CSS}</style></head><body>"
             f"<h1>{_e(title)}</h1>"
             '<p class="muted">Nothing was moved or deleted: this page lists what to look at. '
             "Click a picture to open its file.</p>"
             f'<section id="summary"><h2>Summary</h2><table class="kv" id="audit-summary">'
             f"{rows}</table>"]
    parts += [f'<p class="note">{_e(n)}</p>' for n in doc["notes"]]
    parts.append("</section>")

    shown = issues[:thumbnails]
    parts.append(_section(
        "label-issues", f"Likely label errors ({len(issues)})",
        _e(doc["scores"]["label_issues"]) + ".",
        [thumbs.figure(i["path"], f'given: <span class="wrong">{_e(i["given"])}</span><br>'
                                  f'looks like: <span class="right">{_e(i["suggested"])}</span> '
                                  f'{i["suggested_probability"]:.2f}<br>quality {i["score"]:.3f}')
         for i in shown],
        ("path", "given", "suggested", "label quality"),
        [(i["path"], i["given"], i["suggested"], f"{i['score']:.4f}")
         for i in issues[thumbnails:]]))

    def pair(d):
        leak = ('<span class="leak">' if d["leak"] else "<span>") + \
            f"{_e(' / '.join(d['splits']))}</span>"
        caption = (f"{_e(d['kind'])} {d['similarity']:.3f} (pixels {d['pixel_similarity']:.3f})"
                   f"<br>{leak}<br>{_e(' / '.join(d['classes']))}")
        return ('<div class="pair">' + thumbs.figure(d["paths"][0], caption)
                + thumbs.figure(d["paths"][1], "") + "</div>")

    parts.append(_section(
        "duplicates", f"Duplicates ({len(dups)} pairs)",
        _e(doc["scores"]["duplicates"]) + ". Splits in red: the same picture in two splits "
        "(leakage: a test image the model has seen).",
        [pair(d) for d in dups[:thumbnails // 2]],
        ("first", "second", "kind", "similarity", "splits", "classes"),
        [(d["paths"][0], d["paths"][1], d["kind"], f"{d['similarity']:.4f}",
          "/".join(d["splits"]), "/".join(d["classes"])) for d in dups[thumbnails // 2:]]))
    parts.append(_section(
        "outliers", f"Outliers (the {len(outliers)} most isolated)",
        _e(doc["scores"]["outliers"]) + f"; robust z ≥ {REVIEW_Z:g} is unusual.",
        [thumbs.figure(o["path"], f"{_e(o['label'])}<br>score {o['score']:.3f}, "
                                  f"z {o['robust_z']:.1f}") for o in outliers[:thumbnails]],
        ("path", "class", "score", "robust z"),
        [(o["path"], o["label"], f"{o['score']:.4f}", f"{o['robust_z']:.1f}")
         for o in outliers[thumbnails:]]))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<footer class="muted"><p>Written by trxsfr on {now}. Self-contained: '
                 "the pictures are inside this file; their links open the originals.</p>"
                 "</footer></body></html>")
    return "".join(parts), thumbs.made


@dataclasses.dataclass(frozen=True)
class Written:
    path: str
    bytes: int
    thumbnails: int


def write(doc: dict, out_path: str, thumbnails: int = DEFAULT_THUMBNAILS) -> Written:
    """Render the page of an audit document to the new file `out_path`.

    Raises:
        InputError: `out_path` exists or cannot be written.
    """
    check_new(out_path)
    text, made = render(doc, thumbnails)
    data = text.encode("utf-8")
    _write(out_path, data)
    return Written(out_path, len(data), made)


def _write(path: str, data: bytes) -> None:
    try:
        write_new(path, data)
    except FileExistsError as e:
        raise InputError(f"{path} already exists; pick a new path") from e
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from e
