"""Bottleneck cache: one feature vector per distinct image, computed once, kept on disk.

Layout: `<bottleneck_dir>/<store key>/` per (extractor fingerprint, preprocessing,
image size), holding `meta.json` and append-only segment files `seg-*.bin`.
A segment is a run of fixed-size records:

    sha256(image bytes) [32 bytes] | float32 vector [dim] | crc32 of both [4 bytes]

A record counts only if it is whole and its CRC matches, so a process killed at
any instant leaves at worst a torn tail that is ignored (and never appended to);
a rerun computes only the vectors that are missing. Segments grow to
`SEGMENT_BYTES` before a new one starts, so the file count stays small.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
import zlib
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from trxsfr import imaging
from trxsfr.dataset import Skipped
from trxsfr.errors import InputError

log = logging.getLogger(__name__)

KEY_BYTES = 32
SEGMENT_BYTES = 1 << 30


def content_key(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _file_key(path: str) -> bytes:
    with open(path, "rb") as f:
        return content_key(f.read())


class BottleneckStore:
    """Vectors of one extractor + preprocessing, keyed by image content."""

    def __init__(self, root: str, namespace: str, dim: int, meta: Optional[dict] = None):
        self.dir = os.path.join(root, namespace)
        self.dim = dim
        self.record_bytes = KEY_BYTES + 4 * dim + 4
        self._dtype = np.dtype([("key", f"V{KEY_BYTES}"), ("vec", "<f4", (dim,)), ("crc", "<u4")])
        self._index: dict[bytes, tuple[str, int]] = {}
        self._writer = None
        self._writer_path = None
        if os.path.exists(root) and not os.path.isdir(root):
            raise InputError(f"--bottleneck_dir {root} is a file; pass a directory")
        os.makedirs(self.dir, exist_ok=True)
        self._write_meta(dict(meta or {}, dim=dim, format="trxsfr-bottlenecks-1"))
        self.refresh()

    def _write_meta(self, meta: dict) -> None:
        path = os.path.join(self.dir, "meta.json")
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            if old.get("dim") != meta["dim"]:
                raise InputError(f"bottleneck cache {self.dir} holds {old.get('dim')}-d vectors, "
                                 f"the module gives {meta['dim']}-d; use another --bottleneck_dir")
            return
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
        os.replace(tmp, path)

    def _segments(self) -> list[str]:
        return sorted(n for n in os.listdir(self.dir) if n.startswith("seg-") and n.endswith(".bin"))

    def _records(self, name: str) -> np.ndarray:
        path = os.path.join(self.dir, name)
        count = os.path.getsize(path) // self.record_bytes
        if count == 0:
            return np.zeros(0, self._dtype)
        return np.memmap(path, self._dtype, mode="r", shape=(count,))

    def refresh(self) -> None:
        """Re-read which keys the segments hold (records are verified when read)."""
        index = {}
        for name in self._segments():
            raw = self._records(name)["key"].tobytes()
            for i in range(len(raw) // KEY_BYTES):
                index.setdefault(raw[i * KEY_BYTES:(i + 1) * KEY_BYTES], (name, i))
        self._index = index

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get_many(self, keys: Sequence[bytes]) -> tuple[np.ndarray, list[int]]:
        """Vectors for `keys` as float32 [len(keys), dim], and the positions whose record was bad."""
        out = np.zeros((len(keys), self.dim), np.float32)
        bad = []
        by_segment: dict[str, list[tuple[int, int]]] = {}
        for pos, key in enumerate(keys):
            name, i = self._index[key]
            by_segment.setdefault(name, []).append((pos, i))
        for name, wanted in by_segment.items():
            records = self._records(name)
            positions = np.array([p for p, _ in wanted])
            rows = records[np.array([i for _, i in wanted])]
            for pos, row in zip(positions, rows):
                payload = row["key"].tobytes() + row["vec"].tobytes()
                if zlib.crc32(payload) != int(row["crc"]):
                    bad.append(int(pos))
            out[positions] = rows["vec"]
        if bad:
            for pos in bad:  # never trust that record again in this process
                self._index.pop(keys[pos], None)
        return out, bad

    def _open_writer(self):
        for name in reversed(self._segments()):
            path = os.path.join(self.dir, name)
            size = os.path.getsize(path)
            if size % self.record_bytes or size >= SEGMENT_BYTES:
                continue  # torn tail from a crash, or full: start elsewhere
            f = open(path, "ab")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue  # another run is appending to it
            if os.path.getsize(path) % self.record_bytes == 0:
                return f, name
            f.close()
        name = f"seg-{int(time.time()):010d}-{uuid.uuid4().hex[:8]}.bin"
        f = open(os.path.join(self.dir, name), "ab")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return f, name

    def put_many(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Append records; each call's records reach the OS before it returns."""
        if self._writer is None or self._writer.tell() >= SEGMENT_BYTES:
            self.close()
            self._writer, self._writer_path = self._open_writer()
        records = np.zeros(len(keys), self._dtype)
        records["key"] = np.frombuffer(b"".join(keys), f"V{KEY_BYTES}")
        records["vec"] = vectors
        start = self._writer.tell() // self.record_bytes
        raw = records.tobytes()
        step = self.record_bytes
        for i in range(len(keys)):
            records["crc"][i] = zlib.crc32(raw[i * step:(i + 1) * step - 4])
        self._writer.write(records.tobytes())
        self._writer.flush()
        for i, key in enumerate(keys):
            self._index.setdefault(key, (self._writer_path, start + i))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def store_for(bottleneck_dir: str, extractor) -> BottleneckStore:
    """The store of `extractor` under `bottleneck_dir` (other extractors' stores are untouched)."""
    from trxsfr.imaging import PREPROCESSING_VERSION

    h, w = extractor.image_size
    namespace_src = f"{extractor.fingerprint}|{PREPROCESSING_VERSION}|{h}x{w}"
    namespace = f"{hashlib.sha256(namespace_src.encode()).hexdigest()[:20]}-{h}x{w}"
    meta = {"module": extractor.handle, "fingerprint": extractor.fingerprint,
            "preprocessing": PREPROCESSING_VERSION, "image_size": [h, w]}
    return BottleneckStore(bottleneck_dir, namespace, extractor.dim, meta)


@dataclasses.dataclass
class EnsureResult:
    features: np.ndarray  # float32 [len(ok), dim], rows in the order of `ok`
    ok: list[int]  # positions in the input list that have a vector
    failed: list[Skipped]
    reused: int
    computed: int
    seconds: float


def ensure(
    paths: Sequence[str],
    extractor,
    store: BottleneckStore,
    batch_size: int = 32,
    progress: bool = True,
    on_batch: Optional[Callable[[int], None]] = None,
) -> EnsureResult:
    """Make sure every image in `paths` has a cached vector; return all vectors.

    Args:
        paths: absolute image paths.
        extractor: modules.Extractor.
        store: its BottleneckStore.
        batch_size: images per forward pass.
        progress: draw a progress bar (only when stderr is a terminal).
        on_batch: called with the running count of computed vectors (tests, benchmarks).
    """
    start = time.perf_counter()
    failed: list[Skipped] = []
    keys: list[Optional[bytes]] = [None] * len(paths)

    def key_of(i):
        try:
            keys[i] = _file_key(paths[i])
        except OSError as e:
            failed.append(Skipped(paths[i], f"cannot read: {e.strerror or e}"))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(key_of, range(len(paths))))

    missing_pos = []
    seen = set()
    for i, key in enumerate(keys):
        if key is not None and key not in store and key not in seen:
            seen.add(key)
            missing_pos.append(i)
    computed = 0
    if missing_pos:
        ds = imaging.image_dataset([paths[i] for i in missing_pos], extractor.image_size, batch_size)
        returned = np.zeros(len(missing_pos), bool)
        with imaging.progress_bar(len(missing_pos), "bottlenecks", progress) as bar:
            for pos, images in ds:
                vectors = extractor(images).numpy()
                pos = pos.numpy()
                returned[pos] = True
                store.put_many([keys[missing_pos[p]] for p in pos], vectors)
                computed += len(pos)
                bar.update(len(pos))
                if on_batch:
                    on_batch(computed)
        for p in np.flatnonzero(~returned):
            i = missing_pos[p]
            failed.append(Skipped(paths[i], imaging.decode_error(paths[i], extractor.image_size)))
            bad_key = keys[i]
            for j, key in enumerate(keys):  # identical bytes fail identically
                if key == bad_key and j != i:
                    failed.append(Skipped(paths[j], failed[-1].reason))
    failed_paths = {f.path for f in failed}
    ok = [i for i, key in enumerate(keys) if key is not None and paths[i] not in failed_paths]
    features, bad = store.get_many([keys[i] for i in ok])
    if bad:  # corrupted records (disk trouble): recompute those, once
        log.warning("%d cached vectors failed their checksum; recomputing them", len(bad))
        redo = [paths[ok[b]] for b in bad]
        again = ensure(redo, extractor, store, batch_size, progress=False)
        features[np.array(bad)[again.ok]] = again.features
        computed += again.computed
    return EnsureResult(features, ok, failed, len(ok) - computed, computed,
                        time.perf_counter() - start)
