"""Bottleneck cache: one feature vector per distinct image, computed once, kept on disk.

Layout: `<bottleneck_dir>/<store key>/` per (extractor fingerprint, preprocessing,
image size), holding `meta.json`, `paths.idx` and pairs of append-only segment files:

    seg-*.bin   fixed-size records: sha256(image bytes) [32] | float32 [dim] | crc32 [4]
    seg-*.keys  the same records' keys alone, so opening the store reads 32 bytes per
                vector instead of the whole cache

A record counts only if it is whole and its CRC matches, so a process killed at
any instant leaves at worst a torn tail that is ignored and never appended to;
a rerun computes only the vectors that are missing. A segment grows to
`SEGMENT_BYTES` before a new one starts, so files stay few.

`paths.idx` maps (path, size, mtime, inode) to the content key, so a rerun
does not re-read and re-hash every image; a changed file is hashed again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import glob
import hashlib
import json
import logging
import os
import threading
import time
import uuid
import zlib
from typing import Optional, Sequence

import numpy as np

from trxsfr.base import files, imaging
from trxsfr.base.config import FORWARD_BATCH_SIZE, MAX_IMAGE_PIXELS, ProgressFn
from trxsfr.base.errors import InputError, first_line
from trxsfr.base.listing import Skipped
from trxsfr.train import augment

log = logging.getLogger(__name__)

KEY_BYTES = 32
SEGMENT_BYTES = 1 << 30
_READ_CHUNK_BYTES = 1 << 20  # reads are this big at most: a few syscalls per 1,000 vectors


def content_key(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _file_key(path: str) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def _line_crc(key_hex: str, size: int, mtime: int, ino: int, name: str) -> str:
    return f"{zlib.crc32(f'{key_hex} {size} {mtime} {ino} {name}'.encode('utf-8')):08x}"


class PathIndex:
    """(path, size, mtime_ns, inode) -> content key, as an append-only text file.

    Each line carries a CRC-32 of its fields, so a line that was damaged, edited,
    or had its key swapped with another's is ignored (that file is hashed again),
    never trusted: a wrong key here would hand one image another's vector.
    """

    def __init__(self, path: str):
        self.path = path
        self._entries: dict[str, tuple[int, int, int, bytes]] = {}
        self._lines = 0
        if os.path.exists(path):
            with open(path, "rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break  # torn last line of a crashed run
                    self._lines += 1
                    try:
                        key, size, mtime, ino, crc, name = raw[:-1].decode("utf-8").split(" ", 5)
                        if crc != _line_crc(key, int(size), int(mtime), int(ino), name):
                            continue
                        self._entries[name] = (int(size), int(mtime), int(ino), bytes.fromhex(key))
                    except ValueError:
                        continue

    def get(self, path: str, st: os.stat_result) -> Optional[bytes]:
        entry = self._entries.get(path)
        if entry and entry[:3] == (st.st_size, st.st_mtime_ns, st.st_ino):
            return entry[3]
        return None

    def add_many(self, rows: Sequence[tuple[str, os.stat_result, bytes]]) -> None:
        lines = []
        for path, st, key in rows:
            if "\n" in path:
                continue  # cannot be stored on one line; it is simply hashed every run
            self._entries[path] = (st.st_size, st.st_mtime_ns, st.st_ino, key)
            lines.append(self._line(key, st.st_size, st.st_mtime_ns, st.st_ino, path))
        if not lines:
            return
        if self._lines > 2 * len(self._entries) + 10_000:
            self._compact()
        with open(self.path, "ab") as f:
            f.write("".join(lines).encode("utf-8"))
        self._lines += len(lines)

    def _compact(self) -> None:
        tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            for name, (size, mtime, ino, key) in self._entries.items():
                f.write(self._line(key, size, mtime, ino, name).encode("utf-8"))
        os.replace(tmp, self.path)
        self._lines = len(self._entries)

    @staticmethod
    def _line(key: bytes, size: int, mtime: int, ino: int, name: str) -> str:
        crc = _line_crc(key.hex(), size, mtime, ino, name)
        return f"{key.hex()} {size} {mtime} {ino} {crc} {name}\n"


class BottleneckStore:
    """Vectors of one extractor + preprocessing, keyed by image content."""

    def __init__(self, root: str, namespace: str, dim: int, meta: Optional[dict] = None):
        self.dir = os.path.join(root, namespace)
        self.dim = dim
        self.record_bytes = KEY_BYTES + 4 * dim + 4
        self._dtype = np.dtype([("key", f"V{KEY_BYTES}"), ("vec", "<f4", (dim,)), ("crc", "<u4")])
        self._index: dict[bytes, tuple[str, int]] = {}
        self._writer = None
        files.make_folder(root, "--bottleneck_dir")
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot write in --bottleneck_dir {root}: {e.strerror or e}") from e
        self._write_meta(dict(meta or {}, dim=dim, format="trxsfr-bottlenecks-1"))
        self.paths = PathIndex(os.path.join(self.dir, "paths.idx"))
        self.refresh()

    def _write_meta(self, meta: dict) -> None:
        path = os.path.join(self.dir, "meta.json")
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    old = json.load(f)
                if not isinstance(old, dict):
                    raise ValueError(f"a JSON {type(old).__name__}, not an object")
            except (OSError, ValueError) as e:  # only ever written whole
                raise InputError(f"bottleneck cache {self.dir} has an unreadable meta.json "
                                 f"({first_line(e, 120)}); use another --bottleneck_dir") from e
            if old.get("dim") != meta["dim"]:
                raise InputError(f"bottleneck cache {self.dir} holds {old.get('dim')}-d vectors, "
                                 f"the module gives {meta['dim']}-d; use another --bottleneck_dir")
            return
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
        os.replace(tmp, path)

    def _segments(self) -> list[str]:
        return sorted(n[:-4] for n in os.listdir(self.dir) if n.startswith("seg-") and n.endswith(".bin"))

    def _counts(self, seg: str) -> tuple[int, int, bool]:
        """(whole records in .bin, keys in .keys, both files clean for appending)."""
        bin_size = os.path.getsize(os.path.join(self.dir, seg + ".bin"))
        keys_path = os.path.join(self.dir, seg + ".keys")
        keys_size = os.path.getsize(keys_path) if os.path.exists(keys_path) else 0
        records, keys = bin_size // self.record_bytes, keys_size // KEY_BYTES
        clean = bin_size % self.record_bytes == 0 and keys_size == keys * KEY_BYTES \
            and keys == records
        return records, keys, clean

    def refresh(self) -> None:
        """Re-read which keys the segments hold.

        `.keys` is checked against its records at a few places (its last entry among
        them, so an entry lost or added anywhere shows); records are checked again,
        key and CRC, whenever they are read; `verify` compares every entry.
        """
        index = {}
        self._rebuilt = set()
        for seg in self._segments():
            records, keys, _ = self._counts(seg)
            raw = b""
            if keys:
                with open(os.path.join(self.dir, seg + ".keys"), "rb") as f:
                    raw = f.read(min(records, keys) * KEY_BYTES)
            if keys < records:  # crashed between the two writes: take the keys from .bin
                with open(os.path.join(self.dir, seg + ".bin"), "rb") as f:
                    for i in range(keys, records):
                        raw += os.pread(f.fileno(), KEY_BYTES, i * self.record_bytes)
            if not self._agrees_at_samples(seg, raw):
                raw = self._rebuild_keys(seg)
            for i in range(len(raw) // KEY_BYTES):
                # The newest record of a key wins: a record that failed its CRC is
                # superseded by the vector computed again (healed once, not every run).
                index[raw[i * KEY_BYTES:(i + 1) * KEY_BYTES]] = (seg, i)
        self._index = index

    def _keys_from_records(self, seg: str) -> bytes:
        """The keys of a segment's whole records, read from `.bin` (the source of truth)."""
        records = self._counts(seg)[0]
        raw = bytearray()
        with open(os.path.join(self.dir, seg + ".bin"), "rb") as f:
            per_chunk = max(1, _READ_CHUNK_BYTES // self.record_bytes)
            for first in range(0, records, per_chunk):
                n = min(per_chunk, records - first)
                buf = os.pread(f.fileno(), n * self.record_bytes, first * self.record_bytes)
                raw += b"".join(np.frombuffer(buf, self._dtype, count=n)["key"].tolist())
        return bytes(raw)

    def _agrees_at_samples(self, seg: str, raw: bytes) -> bool:
        """Whether `.keys` entries (raw) match their records' keys at 9 spread positions."""
        n = len(raw) // KEY_BYTES
        if not n:
            return True
        with open(os.path.join(self.dir, seg + ".bin"), "rb") as f:
            for i in sorted({(n - 1) * k // 8 for k in range(9)}):
                if os.pread(f.fileno(), KEY_BYTES, i * self.record_bytes) != \
                        raw[i * KEY_BYTES:(i + 1) * KEY_BYTES]:
                    return False
        return True

    def _rebuild_keys(self, seg: str) -> bytes:
        """A segment's `.keys` disagreed with its records: its keys read from `.bin`; `.keys`
        is written anew when no other run is appending to the segment."""
        log.warning("bottleneck cache %s: %s.keys disagrees with its records; rebuilt it "
                    "from %s.bin", self.dir, seg, seg)
        self._rebuilt.add(seg)
        raw = self._keys_from_records(seg)
        if self._writer is not None and self._writer[2] == seg:
            return raw  # this process appends to it: it rewrites no file under its own pen
        with open(os.path.join(self.dir, seg + ".bin"), "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return raw  # another run is appending; its next refresh reads .bin's keys
            files.write_replacing(os.path.join(self.dir, seg + ".keys"), raw)
        return raw

    def _rebuild(self, seg: str) -> None:
        """Index a segment from its records (its `.keys` pointed a key at another's record)."""
        raw = self._rebuild_keys(seg)
        for key, place in list(self._index.items()):
            if place[0] == seg:
                del self._index[key]
        for i in range(len(raw) // KEY_BYTES):
            self._index[raw[i * KEY_BYTES:(i + 1) * KEY_BYTES]] = (seg, i)

    def verify(self) -> None:
        """Compare every `.keys` entry with its record's key and rebuild the segments that
        disagree (a damaged entry would otherwise make its image look new). Reads the
        segments whole: `ensure` calls it only when some image has no vector yet."""
        for seg in self._segments():
            if seg in self._rebuilt:
                continue
            records, keys, _ = self._counts(seg)
            if not keys:
                continue  # refresh took every key from the records
            with open(os.path.join(self.dir, seg + ".keys"), "rb") as f:
                listed = f.read(min(records, keys) * KEY_BYTES)
            if self._keys_from_records(seg)[:len(listed)] != listed:
                self._rebuild(seg)

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def read_into(self, keys: Sequence[bytes], out: np.ndarray) -> list[int]:
        """Fill float32 out[i] with the vector of keys[i]; return the i whose record was bad.

        Reads only the records asked for (whole chunks where they are dense), so
        memory stays at `out` plus one chunk, however large the cache.
        """
        bad, misplaced = self._read(keys, range(len(keys)), out)
        if misplaced:  # the index pointed at another key's record: rebuild, read again
            for seg in sorted({self._index[keys[pos]][0] for pos in misplaced}):
                self._rebuild(seg)
            missing = [pos for pos in misplaced if keys[pos] not in self._index]
            again, still = self._read(keys, [p for p in misplaced if keys[p] in self._index], out)
            bad += missing + again + still
        for pos in bad:  # never trust that record again in this process
            self._index.pop(keys[pos], None)
        return sorted(bad)

    def _read(self, keys: Sequence[bytes], positions, out: np.ndarray) -> tuple[list, list]:
        """Read keys[p] for p in positions into out[p]: (CRC failures, records of another key)."""
        bad, misplaced = [], []
        by_segment: dict[str, list[tuple[int, int]]] = {}
        for pos in positions:
            seg, i = self._index[keys[pos]]
            by_segment.setdefault(seg, []).append((i, pos))
        rec = self.record_bytes
        per_chunk = max(1, _READ_CHUNK_BYTES // rec)
        for seg, wanted in by_segment.items():
            wanted.sort()
            with open(os.path.join(self.dir, seg + ".bin"), "rb") as f:
                fd = f.fileno()
                start = 0
                while start < len(wanted):
                    first = wanted[start][0]
                    stop = start
                    while stop < len(wanted) and wanted[stop][0] < first + per_chunk:
                        stop += 1
                    last = wanted[stop - 1][0]
                    buf = os.pread(fd, (last - first + 1) * rec, first * rec)
                    records = np.frombuffer(buf, self._dtype, count=len(buf) // rec)
                    for i, pos in wanted[start:stop]:
                        j = i - first
                        if j >= len(records) or zlib.crc32(buf[j * rec:(j + 1) * rec - 4]) \
                                != int(records["crc"][j]):
                            bad.append(pos)
                            continue
                        if records["key"][j].tobytes() != keys[pos]:
                            misplaced.append(pos)
                            continue
                        out[pos] = records["vec"][j]
                    start = stop
        return bad, misplaced

    def _open_writer(self):
        for seg in reversed(self._segments()):
            records, _, clean = self._counts(seg)
            if not clean or records * self.record_bytes >= SEGMENT_BYTES:
                continue  # torn by a crash, or full: start elsewhere
            f = open(os.path.join(self.dir, seg + ".bin"), "ab")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue  # another run is appending to it
            if self._counts(seg)[2]:
                return f, open(os.path.join(self.dir, seg + ".keys"), "ab"), seg
            f.close()
        seg = f"seg-{int(time.time()):010d}-{uuid.uuid4().hex[:8]}"
        f = open(os.path.join(self.dir, seg + ".bin"), "ab")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return f, open(os.path.join(self.dir, seg + ".keys"), "ab"), seg

    def put_many(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Append records; they reach the OS (survive a killed process) before this returns."""
        if self._writer is None or self._writer[0].tell() >= SEGMENT_BYTES:
            self.close()
            self._writer = self._open_writer()
        bin_file, keys_file, seg = self._writer
        records = np.zeros(len(keys), self._dtype)
        records["key"] = np.frombuffer(b"".join(keys), f"V{KEY_BYTES}")
        records["vec"] = vectors
        raw = records.tobytes()
        rec = self.record_bytes
        records["crc"] = [zlib.crc32(raw[i * rec:(i + 1) * rec - 4]) for i in range(len(keys))]
        start = bin_file.tell() // rec
        bin_file.write(records.tobytes())
        bin_file.flush()
        keys_file.write(b"".join(keys))
        keys_file.flush()
        for i, key in enumerate(keys):
            self._index[key] = (seg, start + i)

    def close(self) -> None:
        if self._writer is not None:
            for f in self._writer[:2]:
                f.close()
            self._writer = None


def store_for(bottleneck_dir: str, extractor) -> BottleneckStore:
    """The store of `extractor` under `bottleneck_dir` (other extractors' stores are untouched).

    Runtimes are stores apart: TensorFlow's and LiteRT's vectors of one image differ
    in float rounding (about 1e-6 relative), and a store holding both would make
    "same data and seed, bit-identical weights" depend on which run computed which
    vector. TensorFlow's store keeps the key it always had.
    """
    h, w = extractor.image_size
    runtime = extractor.runtime
    namespace_src = f"{extractor.fingerprint}|{imaging.PREPROCESSING_VERSION}|{h}x{w}"
    if runtime != "tf":
        namespace_src += f"|{runtime}"
    namespace = f"{hashlib.sha256(namespace_src.encode()).hexdigest()[:20]}-{h}x{w}"
    meta = {"module": extractor.handle, "fingerprint": extractor.fingerprint,
            "preprocessing": imaging.PREPROCESSING_VERSION, "image_size": [h, w],
            "runtime": runtime}
    return BottleneckStore(bottleneck_dir, namespace, extractor.dim, meta)


@dataclasses.dataclass
class EnsureResult:
    features: np.ndarray  # float32 [len(ok), dim], rows in the order of `ok`
    ok: list[int]  # positions in the input list that have a vector
    failed: list[Skipped]  # with the absolute path
    reused: int
    computed: int
    seconds: float
    content: list = dataclasses.field(default_factory=list)  # each row's file content key


def content_keys(paths: Sequence[str], index: PathIndex) -> tuple[list[Optional[bytes]], list[Skipped]]:
    """sha256 of each file, from `index` when size, mtime and inode are unchanged."""
    keys: list[Optional[bytes]] = [None] * len(paths)
    failed, fresh = [], []
    stats: list[Optional[os.stat_result]] = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            stats[i] = os.stat(path)
        except OSError as e:
            failed.append(Skipped(path, f"cannot read: {e.strerror or e}"))
            continue
        keys[i] = index.get(path, stats[i])
    todo = [i for i in range(len(paths)) if keys[i] is None and stats[i] is not None]

    def hash_one(i):
        try:
            return i, _file_key(paths[i]), None
        except OSError as e:
            return i, None, f"cannot read: {e.strerror or e}"

    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # hashlib releases the GIL
        for i, key, error in pool.map(hash_one, todo):
            if error:
                failed.append(Skipped(paths[i], error))
            else:
                keys[i] = key
                fresh.append((paths[i], stats[i], key))
    index.add_many(fresh)
    return keys, failed


class KeyPrefetch:
    """Content keys of image files, hashed in one background thread while the extractor loads.

    A cold run's hashing would otherwise wait for the load, which keeps one core busy
    and leaves the other idle: at 2,000 images, load then keys took 0.99-1.14 s and
    load with this beside it 0.91-0.94 s (three runs each). One thread, because four
    made the load itself slower (they take the GIL from it). Files that some `paths.idx` under
    `bottleneck_dir` already knows unchanged are skipped, so a warm run reads no image.
    Errors are left for `content_keys` to report.
    """

    def __init__(self, bottleneck_dir: str, paths: Sequence[str]):
        self._stop = threading.Event()
        self._rows: list[tuple[str, os.stat_result, bytes]] = []
        self._thread = threading.Thread(target=self._run, args=(bottleneck_dir, list(paths)),
                                        name="trxsfr-key-prefetch", daemon=True)
        self._thread.start()

    def _run(self, bottleneck_dir: str, paths: list[str]) -> None:
        pattern = os.path.join(glob.escape(bottleneck_dir), "*", "paths.idx")
        indexes = []
        for index_path in glob.glob(pattern):
            try:
                indexes.append(PathIndex(index_path))
            except OSError:
                continue
        for path in paths:
            if self._stop.is_set():
                return
            try:
                st = os.stat(path)
                if not any(index.get(path, st) for index in indexes):
                    self._rows.append((path, st, _file_key(path)))
            except (OSError, ValueError):
                continue

    def stop(self, finish: bool = False) -> list[tuple[str, os.stat_result, bytes]]:
        """Stop hashing (`finish`: once every file is hashed); (path, stat when hashed,
        key) of the files hashed, for `PathIndex.add_many`. A file changed since is
        hashed again by `content_keys`: its stat differs."""
        if not finish:
            self._stop.set()
        self._thread.join()
        return self._rows


def variant_key(key: bytes, spec: str, variant: int) -> bytes:
    """Cache key of distorted view `variant` of the image whose content key is `key`."""
    return content_key(key + f"|{spec}|{variant}".encode())


def ensure(
    paths: Sequence[str],
    extractor,
    store: BottleneckStore,
    batch_size: int = FORWARD_BATCH_SIZE,
    on_progress: Optional[ProgressFn] = None,
    distortion: Optional[augment.Distortion] = None,
    copies: int = 0,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> EnsureResult:
    """Make sure every image in `paths` has a cached vector; return all vectors.

    Args:
        paths: absolute image paths.
        extractor: modules.Extractor.
        store: its BottleneckStore.
        batch_size: images per forward pass.
        on_progress: told of each batch of computed vectors ("bottlenecks", or
            "augmented views" with `distortion`).
        distortion, copies: instead of each image's plain vector, `copies` vectors of
            distorted views per image (keyed by content, distortion and view index,
            so a rerun with the same flags computes nothing). Rows are grouped per
            image, views in order; `ok` repeats each image's position `copies` times.
        max_pixels: images whose header says more pixels fail, undecoded.
    """
    start = time.perf_counter()
    keys, failed = content_keys(paths, store.paths)
    views = copies if distortion is not None else 1
    # One job per vector: (position in paths, its cache key).
    jobs = [(i, variant_key(k, distortion.spec(), v) if distortion is not None else k)
            for i, k in enumerate(keys) if k is not None for v in range(views)]
    if any(key not in store for _, key in jobs):
        store.verify()  # a damaged .keys entry must not pass for a new image
    missing, seen = [], set()
    for j, (_, key) in enumerate(jobs):
        if key not in store and key not in seen:
            seen.add(key)
            missing.append(j)
    computed = 0
    bad_paths = {}
    if missing:
        seeds = None
        if distortion is not None:
            seeds = np.stack([np.frombuffer(jobs[j][1][:16], np.int64) for j in missing])
        ds = imaging.image_dataset([paths[jobs[j][0]] for j in missing], extractor.image_size,
                                   batch_size, augment.view_of(distortion) if distortion else None,
                                   seeds, max_pixels)
        returned = np.zeros(len(missing), bool)
        stage = "augmented views" if distortion is not None else "bottlenecks"
        extractor.reserve(imaging.FORWARD_STREAMS)
        for pos, vectors in imaging.map_batches(ds, extractor.features,
                                                demote=extractor.sharded):
            returned[pos] = True
            store.put_many([jobs[missing[p]][1] for p in pos], vectors)
            computed += len(pos)
            if on_progress:
                on_progress(stage, len(pos), len(missing))
        bad_keys = {}
        for p in np.flatnonzero(~returned):
            i = jobs[missing[p]][0]
            bad_keys[keys[i]] = imaging.decode_error(paths[i], extractor.image_size, max_pixels)
        for i, key in enumerate(keys):  # identical bytes fail identically
            if key in bad_keys:
                bad_paths[i] = bad_keys[key]
                failed.append(Skipped(paths[i], bad_keys[key]))
    jobs = [job for job in jobs if job[0] not in bad_paths]
    features = np.empty((len(jobs), store.dim), np.float32)
    bad = store.read_into([key for _, key in jobs], features)
    if bad:  # records damaged on disk: compute those again, once
        log.warning("%d cached vectors failed their checksum; computing them again", len(bad))
        redo = sorted({jobs[b][0] for b in bad})
        again = ensure([paths[i] for i in redo], extractor, store, batch_size, None,
                       distortion, copies, max_pixels)
        if again.failed or again.computed < len({jobs[b][1] for b in bad}):  # distinct keys
            raise InputError(f"bottleneck cache {store.dir} is damaged and cannot be repaired "
                             f"in place; point --bottleneck_dir somewhere new")
        repaired = np.empty((len(bad), store.dim), np.float32)  # re-read only those rows
        if store.read_into([jobs[b][1] for b in bad], repaired):
            raise InputError(f"bottleneck cache {store.dir} keeps failing its checksums; "
                             f"point --bottleneck_dir somewhere new")
        features[bad] = repaired
        computed += again.computed
    failed.sort(key=lambda s: s.path)
    ok = [i for i, _ in jobs]
    return EnsureResult(features, ok, failed, len(ok) - computed, computed,
                        time.perf_counter() - start, [keys[i] for i in ok])
