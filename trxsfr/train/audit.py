"""Audit an image folder on its bottleneck vectors: likely label errors, duplicates, outliers.

Everything is computed from the vectors `retrain` caches (one per distinct
image, reused from `--bottleneck_dir`), so a warm audit reads no image:

- **Out-of-fold probabilities.** The images are split into `folds` folds
  (stratified by class; exact and near duplicates share a fold, so a copy in
  the training folds cannot vouch for its twin); a head trained as `retrain`
  trains one on the other folds gives each image's class probabilities.
- **Label issues.** Confident learning (cleanlab's `find_label_issues`,
  prune by noise rate) on those probabilities picks the images whose given
  class is likely wrong; they are ranked by cleanlab's self-confidence label
  quality, the out-of-fold probability of the given class (lowest first). The
  suggested class is the most probable one.
- **Duplicates.** Exact: the same SHA-256 of the file bytes (the cache's
  content key). Near: two steps. The vectors propose: pairs whose centred,
  unit-length vectors have a cosine similarity of at least
  `near_duplicate_similarity` (0.7). The pixels confirm: the two images'
  16x16 colour thumbnails (each centred on its own mean, unit length) must be
  at least `near_duplicate_pixel_similarity` (0.95) alike. Vectors alone did
  not separate copies from look-alikes on either fixture extractor (random
  weights): on the planted set (benchmarks/bench_audit.py), resized and
  re-encoded copies scored 0.94-0.99 (tiny extractor) and 0.77-0.98
  (MobileNet-V2 architecture) while distinct pictures of one class reached
  0.99 and 0.86. Their thumbnails tell them apart: copies 0.96-0.99 on the
  tiny set's 40-72 px noisy pictures and 0.99 or more on 500x375 photos,
  distinct pictures at most 0.95 and 0.91. A copy keeps the picture's
  low-frequency layout, which resizing and JPEG at any usual quality barely
  move, so 0.95 holds for photos in general; a crop, flip or strong colour
  edit is not taken for a copy. Centring the vectors (subtracting the set's
  mean) matters: a ReLU network's vectors share the positive orthant, so raw
  cosines of unrelated pictures sit near 0.98. Each pair carries both classes
  and both splits, so copies across train/validation/test (leakage) and
  across classes (conflicting labels) show.
- **Outliers.** The mean Euclidean distance from an image's centred vector to
  those of its `outlier_neighbours` nearest other images (its exact copies left
  out): a picture of nothing the set holds has no close neighbour. Not the
  cosine distance, which drops the vectors' length: it missed groups of foreign
  pictures (5 document pages, line sketches or noise pictures among 2,000
  object photos, random-weight MobileNet-V2: ranked 152nd-1,620th by it, 1st-5th
  by this). Whitening the vectors first (a Mahalanobis distance with a
  Ledoit-Wolf covariance) did no better on those and worse on the tiny
  extractor's noise pictures (the fifth 13th instead of 5th), at 30 times the cost.

The similarity pass is blocked (`BLOCK` x `BLOCK` tiles of the upper triangle),
so memory stays at a few tiles however many images there are: 2,000 images
take one tile, 100,000 about 1,200. Thumbnails are decoded only for the images
of candidate pairs (at most 2 x `max_pairs`) and kept beside the vectors
(`ThumbnailStore`), so a warm audit decodes no image.

Nothing here moves, deletes or rewrites an image.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import zlib
from typing import Optional, Sequence

import numpy as np

from trxsfr.base.config import AuditConfig, ProgressFn
from trxsfr.base.errors import DatasetError, InputError
from trxsfr.base.listing import Skipped
from trxsfr.train import dataset
from trxsfr.train.dataset import Split

log = logging.getLogger(__name__)

BLOCK = 2048  # rows and columns of one similarity tile: 16 MB of float32
THUMBNAIL_SIDE = 16  # pixels a side of the thumbnails that confirm near duplicates
FORMAT = "trxsfr-audit-1"
# Largest group of duplicates kept in one fold (more would unbalance the folds).
MAX_GROUP = 8
CLEANLAB_HINT = "pip install 'trxsfr[audit]' (or: pip install cleanlab)"

SCORES = {
    "label_issues": "cleanlab's self-confidence label quality: the out-of-fold probability "
                    "of the given class (0-1, lowest first = most likely mislabelled); listed "
                    "are the images cleanlab's find_label_issues (prune_by_noise_rate) flags",
    "duplicates": "similarity: cosine similarity of centred, unit-length bottleneck vectors "
                  "(1 for identical bytes); pixel_similarity: cosine similarity of the two "
                  "images' 16x16 colour thumbnails, each centred on its mean; a near duplicate "
                  "reaches both thresholds",
    "outliers": "mean Euclidean distance of the centred bottleneck vector to those of the "
                "k nearest other images; highest first",
}


def require_cleanlab() -> None:
    """Raise InputError when cleanlab (the `audit` extra) is not installed."""
    try:
        import cleanlab  # noqa: F401
    except ImportError as e:
        raise InputError(f"audit finds label issues with cleanlab, which is not installed: "
                         f"{CLEANLAB_HINT}") from e


# ---------------------------------------------------------------- pure numbers


def centred(features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """float32 [N, D]: features minus their mean."""
    mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
    out = np.empty_like(features, dtype=np.float32)
    for i in range(0, len(features), chunk):
        np.subtract(features[i:i + chunk], mean, out=out[i:i + chunk])
    return out


def unit_rows(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """float32 [N, D]: a copy of x's rows scaled to unit length (zero rows stay 0)."""
    out = np.empty_like(x, dtype=np.float32)
    for i in range(0, len(x), chunk):
        rows = x[i:i + chunk]
        out[i:i + chunk] = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return out


def centred_unit(features: np.ndarray) -> np.ndarray:
    """float32 [N, D]: features minus their mean, scaled to unit length (zero rows stay 0)."""
    return unit_rows(centred(features))


@dataclasses.dataclass
class Neighbourhood:
    """What one blocked pass over all pairs found."""

    pairs: np.ndarray  # int64 [P, 2], i < j: different content, similarity >= threshold
    similarities: np.ndarray  # float32 [P]


def _tiles(content: np.ndarray, block: int, product):
    """Yield (i0, j0, tile) over the upper triangle of `product(rows, cols)` tiles (two
    slices of the N rows), with -inf where a row meets itself or an exact copy of itself
    (same `content`)."""
    n = len(content)
    for i0 in range(0, n, block):
        rows = slice(i0, min(n, i0 + block))
        for j0 in range(i0, n, block):
            cols = slice(j0, min(n, j0 + block))
            tile = product(rows, cols)
            tile[content[rows][:, None] == content[cols][None, :]] = -np.inf
            yield i0, j0, tile


def neighbourhood(x: np.ndarray, content: np.ndarray, threshold: float, max_pairs: int,
                  block: int = BLOCK) -> Neighbourhood:
    """Pairs at or above `threshold` cosine similarity, tile by tile.

    Args:
        x: float32 [N, D] unit rows (`centred_unit`).
        content: int [N]; rows with equal values are the same bytes (exact copies): they
            are not near pairs.
        threshold: cosine similarity at or above which a pair is kept.
        max_pairs: the most similar pairs kept at most.
        block: tile side; memory is a few block x block float32 tiles.
    """
    pair_chunks: list[np.ndarray] = []
    sim_chunks: list[np.ndarray] = []
    kept = 0
    for i0, j0, sims in _tiles(content, block, lambda rows, cols: x[rows] @ x[cols].T):
        hit = sims >= threshold
        if j0 == i0:
            hit &= np.triu(np.ones(hit.shape, bool), 1)
        a, b = np.nonzero(hit)
        if len(a):
            pair_chunks.append(np.stack([a + i0, b + j0], axis=1))
            sim_chunks.append(sims[a, b])
            kept += len(a)
            if kept > 2 * max_pairs:  # keep memory bounded on a set of look-alikes
                pairs, sims_kept = _top_pairs(pair_chunks, sim_chunks, max_pairs)
                pair_chunks, sim_chunks, kept = [pairs], [sims_kept], len(pairs)
    pairs, sims_kept = _top_pairs(pair_chunks, sim_chunks, max_pairs)
    return Neighbourhood(pairs, sims_kept)


def nearest_distances(x: np.ndarray, content: np.ndarray, k: int,
                      block: int = BLOCK) -> np.ndarray:
    """float32 [N, k]: each row's Euclidean distances to its k nearest other rows (exact
    copies left out; fewer than k others: the rest repeat the farthest found, or 0)."""
    n, k = len(x), max(1, k)
    # Kept as negative squared distances, so the nearest are the highest.
    nearest = np.full((n, k), -np.inf, np.float32)

    def merge(rows: slice, values: np.ndarray) -> None:
        both = np.concatenate([nearest[rows], values], axis=1)
        nearest[rows] = -np.partition(-both, k - 1, axis=1)[:, :k]

    squares = np.einsum("ij,ij->i", x, x)  # once, not per tile

    def negative_squared(rows: slice, cols: slice) -> np.ndarray:
        return 2 * (x[rows] @ x[cols].T) - squares[rows, None] - squares[None, cols]

    for i0, j0, tile in _tiles(content, block, negative_squared):
        merge(slice(i0, i0 + len(tile)), tile)
        if j0 != i0:
            merge(slice(j0, j0 + tile.shape[1]), tile.T)
    nearest = -np.sort(-nearest, axis=1)  # nearest first
    found = np.isfinite(nearest)
    farthest = np.where(found.any(axis=1), np.where(found, nearest, np.inf).min(axis=1), 0.0)
    nearest = np.where(found, nearest, farthest[:, None])
    return np.sqrt(np.maximum(-nearest, 0.0)).astype(np.float32)


def _top_pairs(pair_chunks, sim_chunks, limit: int) -> tuple[np.ndarray, np.ndarray]:
    if not pair_chunks:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    pairs, sims = np.concatenate(pair_chunks), np.concatenate(sim_chunks)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -sims))[:limit]  # stable: by similarity, then rows
    return pairs[order], sims[order]


def components(n: int, pairs: np.ndarray, max_size: int) -> np.ndarray:
    """int [N]: a group id per row, rows joined by `pairs` (union-find), in order.

    A pair that would make a group larger than `max_size` is not joined: a chain of
    look-alikes must not swallow a class and leave its fold without it.
    """
    parent = np.arange(n)
    size = np.ones(n, np.int64)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb and size[ra] + size[rb] <= max_size:
            keep, gone = min(ra, rb), max(ra, rb)
            parent[gone] = keep
            size[keep] += size[gone]
    return np.array([root(i) for i in range(n)])


def exact_copies(content: np.ndarray, limit: int) -> tuple[list[tuple[int, int]], int]:
    """(up to `limit` pairs (i, j), i < j, of rows with equal `content`, how many there are):
    every pair within each group of identical bytes, groups in order of their first row."""
    order = np.argsort(content, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(content[order])) + 1)
    groups = sorted((np.sort(g) for g in groups if len(g) > 1), key=lambda g: int(g[0]))
    total = sum(len(g) * (len(g) - 1) // 2 for g in groups)
    pairs: list[tuple[int, int]] = []
    for g in groups:  # stops at the limit: 10,000 copies of one blank frame are 50M pairs
        for ai in range(len(g) - 1):
            pairs += [(int(g[ai]), int(b)) for b in g[ai + 1:ai + 1 + limit - len(pairs)]]
            if len(pairs) >= limit:
                return pairs, total
    return pairs, total


def grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """int [N] fold of each row: stratified by label, rows of one group in one fold.

    A group goes with the label of its first row; within each label, groups are
    shuffled by `seed` and dealt to folds in turn, so folds get about equal shares
    of every class.
    """
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), np.int64)
    first_of = {}
    for i, g in enumerate(groups):
        first_of.setdefault(int(g), i)
    by_label: dict[int, list[int]] = {}
    for g, i in first_of.items():
        by_label.setdefault(int(labels[i]), []).append(g)
    group_fold = {}
    offset = 0
    for label in sorted(by_label):
        gs = by_label[label]
        order = rng.permutation(len(gs))
        for rank, pos in enumerate(order):
            group_fold[gs[pos]] = (offset + rank) % folds
        offset += len(gs)  # the next class starts where this one stopped: even fold sizes
    for i, g in enumerate(groups):
        fold[i] = group_fold[int(g)]
    return fold


def out_of_fold(features: np.ndarray, labels: np.ndarray, num_classes: int, fold: np.ndarray,
                options, on_progress: Optional[ProgressFn] = None) -> np.ndarray:
    """float32 [N, C]: each row's probabilities from a head trained without its fold."""
    from trxsfr.train import head

    probs = np.zeros((len(labels), num_classes), np.float32)
    folds = int(fold.max()) + 1
    for f in range(folds):
        held = fold == f
        if not held.any():
            continue
        trained = head.train(features[~held], labels[~held], num_classes, options)
        probs[held] = trained.head.probabilities(features[held])
        if on_progress:
            on_progress("folds", 1, folds)
    return probs


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of likely label errors ranked most likely first, label quality [N]) by
    cleanlab's confident learning on out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    # n_jobs=1: cleanlab would fork worker processes, unsafe beside TensorFlow's threads.
    flagged = cl_find(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    idx = np.flatnonzero(flagged)
    order = np.lexsort((idx, quality[idx]))
    return idx[order], np.asarray(quality, np.float32)


THUMBNAIL_FILE = f"thumbnails-{THUMBNAIL_SIDE}x{THUMBNAIL_SIDE}.bin"
_THUMB_BYTES = THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3


class ThumbnailStore:
    """Colour thumbnails (uint8 [16, 16, 3]) keyed by image content, in one append-only file
    beside the bottleneck stores, so a warm audit decodes no image.

    A record is key (32 bytes) | pixels (768) | CRC-32 (4); a torn or damaged record
    is ignored, and that image is decoded again.
    """

    def __init__(self, path: str):
        self.path = path
        self._pixels: dict[bytes, bytes] = {}
        record = 32 + _THUMB_BYTES + 4
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        for start in range(0, len(data) - record + 1, record):
            body = data[start:start + record - 4]
            if zlib.crc32(body) == int.from_bytes(data[start + record - 4:start + record],
                                                  "little"):
                self._pixels[body[:32]] = body[32:]

    def get(self, key: bytes) -> Optional[bytes]:
        return self._pixels.get(key)

    def add_many(self, rows: Sequence[tuple[bytes, bytes]]) -> None:
        """Append (key, pixels) records; a store that cannot be written is only logged."""
        if not rows:
            return
        raw = b"".join(key + px + zlib.crc32(key + px).to_bytes(4, "little")
                       for key, px in rows)
        try:
            with open(self.path, "ab") as f:
                f.write(raw)
        except OSError as e:
            log.warning("cannot keep thumbnails in %s: %s", self.path, e.strerror or e)
        self._pixels.update(rows)


def thumbnail_pixels(path: str, side: int = THUMBNAIL_SIDE) -> Optional[bytes]:
    """The image's colour thumbnail, uint8 [side, side, 3] as bytes; None if Pillow cannot
    read it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (4 * side, 4 * side))  # JPEG decodes at a reduced scale: fast
            small = img.convert("RGB").resize((side, side), Image.Resampling.BOX)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        log.warning("no thumbnail for %s: %s", path, e)
        return None
    return np.asarray(small, np.uint8).tobytes()


def pixel_similarities(paths: Sequence[str], keys: Sequence[bytes], pairs: np.ndarray,
                       store: Optional[ThumbnailStore] = None) -> np.ndarray:
    """float32 [P]: cosine similarity of each pair's thumbnails, each centred on its own
    mean (0 where one is unreadable). Thumbnails come from `store` when it has them;
    the others are decoded once and added to it."""
    needed = np.unique(pairs) if len(pairs) else np.zeros(0, np.int64)
    vectors = np.zeros((len(needed), _THUMB_BYTES), np.float32)
    fresh = []
    for row, i in enumerate(needed.tolist()):
        px = store.get(keys[i]) if store is not None else None
        if px is None:
            px = thumbnail_pixels(paths[i])
            if px is None:
                continue  # a zero vector: similarity 0 with everything
            if keys[i] is not None:
                fresh.append((keys[i], px))
        v = np.frombuffer(px, np.uint8).astype(np.float32)
        v -= v.mean()
        vectors[row] = v / max(float(np.linalg.norm(v)), 1e-6)
    if store is not None:
        store.add_many(fresh)
    if not len(pairs):
        return np.zeros(0, np.float32)
    a, b = np.searchsorted(needed, pairs[:, 0]), np.searchsorted(needed, pairs[:, 1])
    return np.einsum("ij,ij->i", vectors[a], vectors[b]).astype(np.float32)


# ---------------------------------------------------------------- the result


@dataclasses.dataclass(frozen=True)
class LabelIssue:
    path: str
    given: str
    suggested: str
    score: float  # label quality: out-of-fold probability of `given`
    suggested_probability: float
    split: str


@dataclasses.dataclass(frozen=True)
class Duplicate:
    paths: tuple[str, str]
    kind: str  # "exact" | "near"
    similarity: float  # of the vectors
    pixel_similarity: float  # of the thumbnails
    splits: tuple[str, str]
    classes: tuple[str, str]

    @property
    def leak(self) -> bool:
        return self.splits[0] != self.splits[1]


@dataclasses.dataclass(frozen=True)
class Outlier:
    path: str
    label: str
    score: float  # mean Euclidean distance (centred vectors) to the k nearest other images
    robust_z: float  # (score - median) / (1.4826 * MAD) over all images
    split: str


@dataclasses.dataclass
class AuditResult:
    """What one audit found: data only (the CLI prints it, `audit_page` renders it)."""

    image_dir: str  # as given: every path below is it joined with the file's relative path
    labels: tuple[str, ...]
    images: int  # audited (decoded) images
    counts: dict  # label -> {split: count}
    label_issues: list[LabelIssue]
    duplicates: list[Duplicate]
    outliers: list[Outlier]
    skipped: tuple[Skipped, ...]
    out_of_fold_accuracy: float
    settings: dict
    timings: dict
    reused: int
    computed: int
    notes: list[str]

    def to_json(self) -> dict:
        """The document `audit --format json` prints and `audit_page` renders."""
        return {
            "format": FORMAT,
            "image_dir": self.image_dir,
            "labels": list(self.labels),
            "images": self.images,
            "counts": self.counts,
            "settings": self.settings,
            "scores": SCORES,
            "out_of_fold_accuracy": self.out_of_fold_accuracy,
            "label_issues": [dataclasses.asdict(i) for i in self.label_issues],
            "duplicates": [{"paths": list(d.paths), "kind": d.kind, "similarity": d.similarity,
                            "pixel_similarity": d.pixel_similarity,
                            "splits": list(d.splits), "classes": list(d.classes),
                            "leak": d.leak, "same_class": d.classes[0] == d.classes[1]}
                           for d in self.duplicates],
            "outliers": [dataclasses.asdict(o) for o in self.outliers],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "bottlenecks": {"reused": self.reused, "computed": self.computed},
            "timings": self.timings,
            "notes": self.notes,
        }


def _robust_z(values: np.ndarray) -> np.ndarray:
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826
    return (values - median) / max(mad, 1e-9)


def audit(config: AuditConfig, on_progress: Optional[ProgressFn] = None) -> AuditResult:
    """Audit `config.image_dir`; see the module's docstring for what and how.

    Raises:
        TrxsfrError: the folder cannot be audited (fewer than 2 classes, a bad flag, no
            cleanlab), or the module cannot be loaded.
    """
    from trxsfr.base import extractors, files, litert
    from trxsfr.train import cache, head

    t0 = time.perf_counter()
    timings = {}
    config.check()
    require_cleanlab()
    image_set = dataset.discover(config.image_dir, config.validation_percentage,
                                 config.testing_percentage)
    _check_auditable(image_set)
    files.check_folder(config.bottleneck_dir, "--bottleneck_dir")
    paths = [image_set.abs_path(it) for it in image_set.items]
    prefetch = cache.KeyPrefetch(config.bottleneck_dir, paths)
    try:
        extractor = extractors.load(config.tfhub_module, config.image_size)
        # On retrain's runtime (--runtime), so a warm audit reads retrain's vectors.
        extractor = litert.for_extraction(extractor, config.runtime, config.bottleneck_dir)
    finally:
        prefetched = prefetch.stop()
    timings["module_load_s"] = time.perf_counter() - t0
    store = cache.store_for(config.bottleneck_dir, extractor)
    try:
        store.paths.add_many(prefetched)
        cached = cache.ensure(paths, extractor, store, config.bottleneck_batch_size,
                              on_progress, max_pixels=config.max_image_pixels)
    finally:
        store.close()
    timings["bottlenecks_s"] = cached.seconds
    root = image_set.root
    failed = tuple(Skipped(os.path.relpath(f.path, root).replace(os.sep, "/"), f.reason)
                   for f in cached.failed)
    items = [image_set.items[i] for i in cached.ok]
    features = cached.features
    labels_of = np.array([it.label for it in items], np.int64)
    kept = image_set.without(failed)
    _check_auditable(kept)
    if len(kept.labels) != len(image_set.labels):  # a class lost all its images
        index = {label: i for i, label in enumerate(kept.labels)}
        labels_of = np.array([index[image_set.labels[it.label]] for it in items], np.int64)
    labels = kept.labels
    notes = dataset.warnings_of(kept)
    small = [label for label, row in kept.counts().items() if sum(row.values()) < config.folds]
    if small:
        notes.append(f"class(es) {', '.join(small)} have fewer images than --folds "
                     f"{config.folds}: some of their images are judged by heads that never "
                     f"saw the class")

    t1 = time.perf_counter()
    keys = cached.content  # the files' content keys, as ensure read them
    ok_paths = [paths[i] for i in cached.ok]
    _, content = np.unique(np.frombuffer(b"".join(keys), "V32"), return_inverse=True)
    content = content.reshape(-1)
    centre = centred(features)  # the outlier pass's rows; the similarity pass's once unit
    x = unit_rows(centre)
    near = neighbourhood(x, content, config.near_duplicate_similarity, config.max_pairs)
    del x
    timings["similarity_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    thumbnails = ThumbnailStore(os.path.join(config.bottleneck_dir, THUMBNAIL_FILE))
    pixels = pixel_similarities(ok_paths, keys, near.pairs, thumbnails)
    confirmed = pixels >= config.near_duplicate_pixel_similarity
    log.info("near duplicates: %d candidate pairs by vectors, %d confirmed by thumbnails",
             len(near.pairs), int(confirmed.sum()))
    near_pairs, near_sims, near_pixels = (near.pairs[confirmed], near.similarities[confirmed],
                                          pixels[confirmed])
    timings["thumbnails_s"] = time.perf_counter() - t1

    exact_pairs, exact_total = exact_copies(content, config.max_pairs)
    if exact_total > len(exact_pairs):
        notes.append(f"{exact_total} exact duplicate pairs; the first {len(exact_pairs)} are "
                     f"listed (raise --max_pairs)")
    if len(near.pairs) >= config.max_pairs:
        notes.append(f"candidate near duplicate pairs reached --max_pairs {config.max_pairs}; "
                     f"only the most similar were checked")

    t1 = time.perf_counter()
    joined = np.concatenate([np.asarray(exact_pairs, np.int64).reshape(-1, 2), near_pairs])
    groups = components(len(items), joined, MAX_GROUP)
    fold = grouped_folds(labels_of, groups, config.folds, config.seed)
    options = head.HeadOptions(steps=config.how_many_training_steps,
                               learning_rate=config.learning_rate, l2=config.l2, seed=config.seed,
                               eval_interval=config.how_many_training_steps)
    probs = out_of_fold(features, labels_of, len(labels), fold, options, on_progress)
    timings["folds_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    ranked, quality = find_label_issues(labels_of, probs)
    timings["label_issues_s"] = time.perf_counter() - t1

    def shown(i: int) -> str:
        return os.path.join(config.image_dir, *items[i].path.split("/"))

    def split(i: int) -> str:
        return Split(items[i].split).value

    issues = []
    for i in ranked:
        suggested = int(probs[i].argmax())
        issues.append(LabelIssue(shown(i), labels[labels_of[i]], labels[suggested],
                                 float(quality[i]), float(probs[i][suggested]), split(i)))
    duplicates = [Duplicate((shown(a), shown(b)), "exact", 1.0, 1.0, (split(a), split(b)),
                            (labels[labels_of[a]], labels[labels_of[b]]))
                  for a, b in exact_pairs]
    duplicates += [Duplicate((shown(a), shown(b)), "near", round(float(s), 6),
                             round(float(px), 6), (split(a), split(b)),
                             (labels[labels_of[a]], labels[labels_of[b]]))
                   for (a, b), s, px in zip(near_pairs.tolist(), near_sims, near_pixels)]
    t1 = time.perf_counter()
    distance = nearest_distances(centre, content,
                                 config.outlier_neighbours).mean(axis=1)
    timings["outliers_s"] = time.perf_counter() - t1
    z = _robust_z(distance)
    top = np.lexsort((np.arange(len(distance)), -distance))[:config.outliers]
    outliers = [Outlier(shown(i), labels[labels_of[i]], round(float(distance[i]), 6),
                        round(float(z[i]), 3), split(i)) for i in top]
    timings["total_s"] = time.perf_counter() - t0
    counts = {label: {s.value: n for s, n in row.items()} for label, row in kept.counts().items()}
    settings = {k: v for k, v in dataclasses.asdict(config).items()}
    settings["module"] = {"handle": config.tfhub_module, "fingerprint": extractor.fingerprint,
                          "image_size": list(extractor.image_size),
                          "feature_dim": extractor.dim, "runtime": extractor.runtime}
    oof_accuracy = float(np.mean(probs.argmax(axis=1) == labels_of))
    log.info("audit: %d images, %d label issues, %d duplicate pairs, out-of-fold accuracy "
             "%.1f%% (%.1fs)", len(items), len(issues), len(duplicates),
             100 * oof_accuracy, timings["total_s"])
    return AuditResult(
        image_dir=config.image_dir, labels=tuple(labels), images=len(items), counts=counts,
        label_issues=issues, duplicates=duplicates, outliers=outliers,
        skipped=tuple(image_set.skipped) + failed,
        out_of_fold_accuracy=oof_accuracy,
        settings=settings, timings=timings, reused=cached.reused, computed=cached.computed,
        notes=notes)


def _check_auditable(image_set) -> None:
    if len(image_set.labels) < 2:
        try:
            dataset.check_trainable(image_set)
        except DatasetError as e:
            raise DatasetError(f"cannot audit: {e}") from e
