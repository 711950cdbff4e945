"""`download`: lists of image URLs -> class folders of checked, deduplicated files.

Every URL is fetched through base/web.py (public addresses only unless allowed, size
and time caps, retries), and its bytes are kept only if the decoder training uses
reads them. Files are named `<sha256>.<format>` after their bytes, so the same image
under several URLs is stored once.

Placeholders. Dead links often answer with one "image unavailable" picture. Bytes
that `placeholder_min` or more distinct URLs answer with are refused for all of
those URLs. That can only be known once every URL is in, so the rule is decided
at the end of a run: fetched files wait in a hidden staging folder inside the
output folder (`.trxsfr-download/`, which no trxsfr command lists) and are moved
into their class folder when the run has fetched everything it will. An image
under fewer URLs is stored once, under the first of its URLs in list order (the
others are `duplicate` lines), so the outcome does not depend on which fetch
finished first.

Resuming. The manifest (JSON lines: url, label, file, sha256, status, reason) lives
outside the class folders. A line is appended only after what it describes is in
place: a `done` line after its file was renamed into its class folder. A rerun
skips URLs whose last line is final (done, duplicate, dead, refused) and fetches
again those that `failed` (timeouts, 5xx, network). Fetched files waiting for the
end of the run are listed in the staging folder's journal, so a run killed at any
moment loses nothing it had fetched, and no partial file is ever visible in a class
folder (files are written under a hidden name and renamed, or hard-linked, whole).
Lines are flushed to the OS as they are written (a killed process loses none) and
fsync'd about once a second and at the end (what a power cut may lose).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import logging
import os
import time
import uuid
from typing import Iterable, Optional, Sequence

from trxsfr.base import sniff
from trxsfr.base.config import ProgressFn
from trxsfr.base.errors import InputError
from trxsfr.base.files import make_folder
from trxsfr.base.web import DEAD, FAILED, REFUSED, Fetcher, FetchError, FetchOptions

log = logging.getLogger(__name__)

DONE, DUPLICATE = "done", "duplicate"
FINAL = (DONE, DUPLICATE, DEAD, REFUSED)  # a rerun does not fetch these again
STAGING = ".trxsfr-download"  # hidden: listing skips it, so retrain and label never see it
_JOURNAL = "staged.jsonl"
_FSYNC_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class DownloadOptions:
    # 16 connections: fetching is latency-bound (100-500 ms per image on the web), so
    # 16 in flight give 30-150 images/s, more than a laptop's decode check or uplink
    # needs to stay busy, with at most 16 bodies (16 x max_bytes) in memory and few
    # enough connections that one site does not see a flood.
    parallel: int = 16
    placeholder_min: int = 10  # distinct URLs with the same bytes that make them a placeholder
    max_side: Optional[int] = None  # downscale larger images to this many pixels (longer side)
    manifest: Optional[str] = None  # default: default_manifest(out_dir)
    fetch: FetchOptions = FetchOptions()

    def check(self) -> None:
        """Raises InputError naming the flag of a value no run can use."""
        if self.parallel < 1:
            raise InputError(f"--parallel must be at least 1, got {self.parallel}")
        if self.placeholder_min < 2:
            raise InputError(f"--placeholder_min must be at least 2, got {self.placeholder_min}")
        if self.max_side is not None and self.max_side < 1:
            raise InputError(f"--max_side must be a positive number of pixels, got {self.max_side}")
        f = self.fetch
        if not f.timeout > 0:
            raise InputError(f"--timeout must be positive, got {f.timeout}")
        if f.retries < 0:
            raise InputError(f"--retries must be 0 or more, got {f.retries}")
        if not f.max_bytes > 0:
            raise InputError(f"--max_mb must be positive, got {f.max_bytes / 1e6:g}")


@dataclasses.dataclass
class DownloadSummary:
    """What one run did. Counters map a reason to how many URLs ended with it."""

    manifest: str
    listed: int  # distinct (url, label) pairs asked for
    already: int  # of those, final in the manifest before this run (not fetched again)
    fetched: int = 0  # new files in class folders
    duplicate: int = 0  # URLs whose bytes are already stored (under an earlier URL)
    dead: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    refused: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    seconds: float = 0.0


def default_manifest(out_dir: str) -> str:
    """`DIR/.NAME.manifest.jsonl` for `--out DIR/NAME`: beside the output folder, not in it,
    and hidden, so that neither retrain (class sub-folders only) nor label (which lists
    a folder's loose files too) ever reads it."""
    out = os.path.abspath(out_dir)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.manifest.jsonl")


def check_label(label: str) -> None:
    """Raises InputError unless `label` can be a class folder's name."""
    why = None
    if not label.strip():
        why = "is empty"
    elif label in (".", "..") or "/" in label or "\\" in label:
        why = "is not a plain folder name (no /, \\, . or ..)"
    elif label.startswith("."):
        why = "starts with '.' (a hidden folder, which retrain does not read)"
    elif any(ord(c) < 32 for c in label):
        why = "contains a control character (newline, tab, ...)"
    if why:
        raise InputError(f"label {label!r} {why}; labels name class folders")


@dataclasses.dataclass(frozen=True)
class _Job:
    url: str
    label: str
    folder: str  # class folder, relative to the output folder ("." for itself)
    position: int  # in the input list: who is first among equal bytes

    @property
    def key(self) -> tuple[str, str]:
        return self.url, self.label


@dataclasses.dataclass(frozen=True)
class _Staged:
    """A fetched file waiting in staging for the end of the run (a journal line)."""

    url: str
    label: str
    folder: str  # class folder, relative to the output folder ("." for itself)
    sha256: str
    ext: str
    position: int = 0  # not in the journal: set from the list of the run that reads it

    @property
    def key(self) -> tuple[str, str]:
        return self.url, self.label


def download(urls_with_labels: Iterable[tuple[str, Optional[str]]], out_dir: str,
             options: DownloadOptions = DownloadOptions(),
             on_progress: Optional[ProgressFn] = None) -> DownloadSummary:
    """Fetch image URLs into class folders.

    Args:
        urls_with_labels: (url, label) pairs; a label names the sub-folder `out_dir/label`,
            None puts the file in `out_dir` itself (its name is then the label).
        out_dir: created if missing.
        on_progress: told of each URL this run fetches ("download").

    Returns:
        What the run did; the manifest holds the line of every URL.

    Raises:
        InputError: a bad option or label, an output folder that cannot be made, a
            manifest that is a folder, or a file that cannot be written (disk full).
    """
    start = time.perf_counter()
    options.check()
    out_dir = os.path.abspath(out_dir)
    jobs = _jobs(urls_with_labels, out_dir)  # labels checked before anything is created
    manifest_path = os.path.abspath(options.manifest or default_manifest(out_dir))
    if os.path.isdir(manifest_path):
        raise InputError(f"--manifest {manifest_path} is a folder; pass a file path")
    _check_is_manifest(manifest_path)
    make_folder(out_dir, "--out")
    staging = os.path.join(out_dir, STAGING)
    base = os.path.dirname(manifest_path)
    with _Lines(manifest_path, lock=True) as manifest:  # locked before it is read
        last = _last_lines(manifest_path)
        final = _final(last)
        staged = [s for s in _read_staged(staging, jobs) if s.key not in final]
        waiting = {s.key for s in staged}
        todo = [j for j in jobs if j.key not in final and j.key not in waiting]
        summary = DownloadSummary(manifest_path, len(jobs), sum(j.key in final for j in jobs))

        def write(job_or_staged, status, reason="", file=None, sha=None):
            line = {"url": job_or_staged.url, "label": job_or_staged.label,
                    "file": os.path.relpath(file, base).replace(os.sep, "/") if file else None,
                    "sha256": sha, "status": status, "reason": reason}
            manifest.append(line)
            last[(line["url"], line["label"])] = line
            _count(summary, status, reason)

        if todo:
            sniff.load_decoder()  # TensorFlow imported and traced here, not in 16 threads at once
            os.makedirs(staging, exist_ok=True)
            with _Lines(os.path.join(staging, _JOURNAL)) as journal:
                for job, outcome in _fetch_all(todo, staging, options, on_progress):
                    if isinstance(outcome, _Staged):
                        journal.append({k: v for k, v in dataclasses.asdict(outcome).items()
                                        if k != "position"})
                        staged.append(outcome)
                    else:
                        write(job, outcome.status, outcome.reason)
        _finish(staged, last, out_dir, staging, options.placeholder_min, write, base)
    _clean_staging(staging)
    summary.seconds = time.perf_counter() - start
    return summary


def _count(summary: DownloadSummary, status: str, reason: str) -> None:
    if status == DONE:
        summary.fetched += 1
    elif status == DUPLICATE:
        summary.duplicate += 1
    else:
        {DEAD: summary.dead, REFUSED: summary.refused, FAILED: summary.failed}[status][reason] += 1


def _final(last: dict) -> set:
    return {key for key, line in last.items() if line.get("status") in FINAL}


def _jobs(urls_with_labels, out_dir: str) -> list[_Job]:
    jobs, seen = [], set()
    for url, label in urls_with_labels:
        if label is not None:
            check_label(label)
        key = (url.strip(), label if label is not None else os.path.basename(out_dir))
        if key not in seen:
            seen.add(key)
            jobs.append(_Job(key[0], key[1], label if label is not None else ".", len(jobs)))
    return jobs


# ---------------------------------------------------------------- fetching (threads)

@dataclasses.dataclass(frozen=True)
class _Outcome:
    status: str
    reason: str


def _fetch_all(todo: Sequence[_Job], staging: str, options: DownloadOptions,
               on_progress) -> Iterable[tuple[_Job, object]]:
    """(job, _Staged or _Outcome) as URLs finish.

    Two stages: `parallel` threads only fetch, and a few others (one per core) check,
    shrink and stage what came. A fetch thread is free for the next URL as soon as its
    body is in, so `parallel` requests stay in flight however long the checks take
    (checking in the fetch threads measured 198 URLs/s against a 50 ms server at 16,
    against 294 for fetching alone). At most 2 x parallel URLs wait in each stage: a
    million URLs do not become a million futures, nor their bodies pile up in memory.
    """
    finished = 0
    limit = 2 * options.parallel
    with Fetcher(options.fetch, connections=options.parallel) as fetcher, \
            concurrent.futures.ThreadPoolExecutor(options.parallel,
                                                  thread_name_prefix="fetch") as fetch_pool, \
            concurrent.futures.ThreadPoolExecutor(_cores(), thread_name_prefix="check") as check_pool:
        queue = iter(todo)
        fetching: dict = {}
        checking: dict = {}

        def submit() -> None:
            while len(fetching) < limit and len(checking) < limit:
                job = next(queue, None)
                if job is None:
                    return
                fetching[fetch_pool.submit(_fetch, fetcher, job)] = job

        submit()
        try:
            while fetching or checking:
                ready, _ = concurrent.futures.wait(
                    [*fetching, *checking], return_when=concurrent.futures.FIRST_COMPLETED)
                for future in ready:
                    if future in fetching:
                        job, got = fetching.pop(future), future.result()
                        if not isinstance(got, _Outcome):
                            checking[check_pool.submit(_stage, got, job, staging,
                                                       options.max_side)] = job
                            continue
                        outcome = got
                    else:  # an OSError writing staging stops the run
                        job, outcome = checking.pop(future), future.result()
                    yield job, outcome
                    finished += 1
                    if on_progress:
                        on_progress("download", 1, len(todo))
                submit()
        finally:  # stopped early (an error, Ctrl-C): only the work already running finishes
            for future in [*fetching, *checking]:
                future.cancel()


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _fetch(fetcher: Fetcher, job: _Job):
    try:
        return fetcher.fetch(job.url)
    except FetchError as e:
        return _Outcome(e.status, e.reason)


def _stage(got, job: _Job, staging: str, max_side: Optional[int]):
    """Check fetched bytes with training's decoder; shrink; write them to staging."""
    problem = sniff.decode_problem(got.data, got.content_type)
    if problem:
        return _Outcome(REFUSED, problem)
    ext = sniff.image_format(got.data)
    data = _downscaled(got.data, max_side) if max_side else got.data
    sha = hashlib.sha256(data).hexdigest()
    blob = os.path.join(staging, f"{sha}.{ext}")
    if not os.path.exists(blob):
        _write_whole(blob, data, replace=True)
    return _Staged(job.url, job.label, job.folder, sha, ext, job.position)


def _downscaled(data: bytes, max_side: int) -> bytes:
    """`data` with its longer side shrunk to `max_side` pixels, in its own format (JPEG
    with its own quantisation tables and subsampling, so about its own quality);
    unchanged when it is small enough or Pillow cannot rewrite it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) <= max_side:
                return data
            fmt = image.format
            params = {"icc_profile": image.info.get("icc_profile")} if fmt != "GIF" else {}
            if fmt == "JPEG":
                params.update(quality="keep", subsampling="keep")
            elif fmt == "WEBP":
                params.update(lossless=bool(image.info.get("lossless")), quality=90)
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            image.save(out, fmt, **{k: v for k, v in params.items() if v is not None})
            return out.getvalue()
    except Exception as e:  # Pillow raises many types; the original bytes decode, keep them
        log.debug("kept the original size: Pillow cannot rewrite it (%s)", e)
        return data


def _write_whole(path: str, data: bytes, replace: bool = False) -> None:
    """Write under a hidden name beside `path`, fsync, then rename (replace=True: for
    content-addressed staging, where any file already there holds the same bytes) or
    hard-link (never over an existing file).

    Raises:
        FileExistsError: replace=False and `path` exists.
        InputError: the folder cannot be written.
    """
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the manifest line that follows must not outlive the bytes
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails if `path` exists
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links
                if os.path.exists(path):
                    raise FileExistsError(path)
                os.rename(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------- the end of a run

def _finish(staged: list[_Staged], last: dict, out_dir: str, staging: str, placeholder_min: int,
            write, base: str) -> None:
    """Decide placeholders and duplicates over everything fetched, and move files into
    their class folders: in list order of each image's first URL, its file first, then
    the lines of its other URLs, so a kill in between resumes to the same outcome."""
    urls_of = collections.defaultdict(set)  # sha -> distinct URLs, this run's and earlier runs'
    stored = {}  # sha -> a file in a class folder, put there by an earlier run
    for (url, _), line in last.items():
        if line.get("status") in (DONE, DUPLICATE) and line.get("sha256"):
            urls_of[line["sha256"]].add(url)
            if line["status"] == DONE and line.get("file"):
                stored.setdefault(line["sha256"], os.path.join(base, line["file"]))
    by_sha = collections.defaultdict(list)
    for s in staged:
        urls_of[s.sha256].add(s.url)
        by_sha[s.sha256].append(s)
    for sha in sorted(by_sha, key=lambda sha: min(s.position for s in by_sha[sha])):
        group = sorted(by_sha[sha], key=lambda s: s.position)
        if len(urls_of[sha]) >= placeholder_min:
            reason = f"placeholder: the same bytes under {len(urls_of[sha])} URLs"
            for s in group:
                write(s, REFUSED, reason, sha=sha)
            if sha in stored:
                log.warning("%s is a placeholder (the same bytes under %d URLs); an earlier run "
                            "stored it, and it is left in place", stored[sha], len(urls_of[sha]))
            continue
        for s in group:
            if sha in stored:
                rel = os.path.relpath(stored[sha], base).replace(os.sep, "/")
                write(s, DUPLICATE, f"same bytes as {rel}", file=stored[sha], sha=sha)
                continue
            folder = os.path.normpath(os.path.join(out_dir, s.folder))
            target = os.path.join(folder, f"{sha}.{s.ext}")
            problem = _place(os.path.join(staging, f"{sha}.{s.ext}"), target, sha)
            if problem:
                write(s, REFUSED, problem, sha=sha)
            else:
                stored[sha] = target
                write(s, DONE, file=target, sha=sha)


def _place(blob: str, target: str, sha: str) -> Optional[str]:
    """Put the staged `blob` at `target` whole; None when done, else why not. A file
    already at `target` is never replaced: with these very bytes it counts as placed
    (an interrupted run put it there), with others it is refused."""
    make_folder(os.path.dirname(target), "class folder")
    try:
        os.link(blob, target)  # atomic, never over an existing file, no copy
        return None
    except FileExistsError:
        pass
    except OSError:  # no hard links here (or another filesystem): copy, then rename
        with open(blob, "rb") as f:
            data = f.read()
        try:
            _write_whole(target, data)
            return None
        except FileExistsError:
            pass
    if _sha256_of(target) == sha:
        return None
    return f"{os.path.basename(target)} exists in {os.path.dirname(target)} with other bytes; " \
           f"not replaced"


def _sha256_of(path: str) -> Optional[str]:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _clean_staging(staging: str) -> None:
    """Remove the staging folder once everything in it has found its place (every URL of
    the journal has a final line): the journal goes last, so a kill leaves it readable."""
    if not os.path.isdir(staging):
        return
    for name in os.listdir(staging):
        if name != _JOURNAL:
            try:
                os.unlink(os.path.join(staging, name))
            except OSError:
                pass
    try:
        os.unlink(os.path.join(staging, _JOURNAL))
        os.rmdir(staging)
    except OSError:
        pass


# ---------------------------------------------------------------- manifest and journal

def _read_lines(path: str) -> list[dict]:
    """JSON objects of a lines file; a torn last line (a kill mid-write) is skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read manifest {path}: {getattr(e, 'strerror', None) or e}") from e
    lines = []
    for text in raw:
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and isinstance(line.get("url"), str):
            lines.append(line)
    return lines


def _check_is_manifest(path: str) -> None:
    """Raises InputError if `path` holds something other than manifest lines (lines are
    only ever appended to it: appending to a user's other file would spoil it)."""
    try:
        with open(path, "rb") as f:
            head = f.readline(65536)
    except FileNotFoundError:
        return
    except OSError as e:
        raise InputError(f"cannot read manifest {path}: {e.strerror or e}") from e
    if not head.strip():
        return
    try:
        ok = isinstance(json.loads(head), dict) and "url" in json.loads(head)
    except ValueError:
        ok = False
    if not ok:
        raise InputError(f"--manifest {path} is not a trxsfr download manifest (its first line "
                         f"is no JSON object with a url); pass a new file or that run's manifest")


def _last_lines(manifest: str) -> dict:
    """(url, label) -> the last manifest line about it."""
    return {(line["url"], line.get("label")): line for line in _read_lines(manifest)}


def _read_staged(staging: str, jobs: Sequence[_Job]) -> list[_Staged]:
    """Files an interrupted run fetched and staged, whose blob is still there."""
    position = {j.key: j.position for j in jobs}
    found = []
    for i, line in enumerate(_read_lines(os.path.join(staging, _JOURNAL))):
        try:
            s = _Staged(line["url"], line["label"], line["folder"], line["sha256"], line["ext"])
        except (KeyError, TypeError):
            continue
        if os.path.isfile(os.path.join(staging, f"{s.sha256}.{s.ext}")):
            found.append(dataclasses.replace(s, position=position.get(s.key, len(jobs) + i)))
    return found


def _lock(file, path: str) -> None:
    """Hold an exclusive lock on the open manifest: two runs on one manifest (and so one
    staging folder) would take each other's staged files. Advisory, POSIX only."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise InputError(f"another trxsfr download is writing {path}; wait for it to end") from None
    except OSError:
        pass  # a filesystem without locks: go on unguarded


class _Lines:
    """An append-only JSON-lines file: each line flushed as written, fsync'd about once a
    second and on close."""

    def __init__(self, path: str, lock: bool = False):
        self.path = path
        try:
            make_folder(os.path.dirname(path), "--manifest folder")
            self._file = open(path, "a+b")
            if lock:
                _lock(self._file, path)
            self._file.seek(0, os.SEEK_END)
            if self._file.tell():  # a torn last line from a kill: start on a fresh one
                self._file.seek(-1, os.SEEK_END)
                torn = self._file.read(1) != b"\n"
                self._file.seek(0, os.SEEK_END)
                if torn:
                    self._file.write(b"\n")
        except OSError as e:
            raise InputError(f"cannot write {path}: {e.strerror or e}") from e
        self._synced = time.monotonic()

    def __enter__(self) -> "_Lines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, line: dict) -> None:
        try:
            self._file.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
            self._file.flush()
            if time.monotonic() - self._synced > _FSYNC_SECONDS:
                os.fsync(self._file.fileno())
                self._synced = time.monotonic()
        except OSError as e:
            raise InputError(f"cannot write {self.path}: {e.strerror or e}") from e

    def close(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError:
            pass
        self._file.close()


# ---------------------------------------------------------------- input lists

def read_csv(path: str) -> list[tuple[str, str]]:
    """(url, label) rows of a CSV file with a header naming `url` and `label` columns.

    Raises:
        InputError: unreadable, no such columns, or a label that is no safe folder name
            (named with its line number).
    """
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            columns = {(name or "").strip().lower(): name for name in reader.fieldnames or ()}
            if "url" not in columns or "label" not in columns:
                raise InputError(f"--csv {path} needs a header line with url and label columns, "
                                 f"found {', '.join(reader.fieldnames or ()) or 'none'}")
            rows = []
            for row in reader:
                url = (row.get(columns["url"]) or "").strip()
                label = (row.get(columns["label"]) or "").strip()
                if not url or url.startswith("#"):
                    continue
                try:
                    check_label(label)
                except InputError as e:
                    raise InputError(f"--csv {path}, line {reader.line_num}: {e}") from None
                rows.append((url, label))
    except FileNotFoundError:
        raise InputError(f"--csv {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read --csv {path}: {getattr(e, 'strerror', None) or e}") from e
    return rows
