"""`serve`: TensorFlow Serving's REST API for a trxsfr model base directory, on one machine.

Starlette on uvicorn. What a TF Serving client uses is here, with the same
URLs, request formats and error shape (`{"error": "..."}`):

    GET  /v1/models/NAME[/versions/V | /labels/L]             version status
    GET  /v1/models/NAME[/versions/V | /labels/L]/metadata    signature defs
    POST /v1/models/NAME[/versions/V | /labels/L]:predict     row ("instances") or
                                                               columnar ("inputs") format
Plus `GET /` (a page to upload a picture) and `GET /healthz`.

How a request flows:

1. The event loop reads the body (up to `max_body_bytes`) and takes the
   current model snapshot; a version swap later does not affect this request.
2. A small thread pool parses the JSON, checks inputs and limits, and reads
   each image's header (format, pixel count): most bad input fails here, per
   request, with a 400.
3. The `Batcher` joins the images of concurrent requests and, on a
   TensorFlow worker thread, decodes and classifies them in one call
   (`LoadedVersion.predict_bytes`: `imaging.decode_batch`, the function
   training and `label` use, then the model's images signature; a model from
   older preprocessing decodes with its own serving signature instead, as it
   was trained). Decoding there, not beside the forward pass, keeps the two
   from competing for the cores. An image whose header was fine but whose
   data TF cannot decode fails its own request with a 400: the batch's images
   are then decoded one by one to find it, and the other requests answered.
4. A `VersionWatcher` thread polls the base directory; a new version is loaded
   and warmed up aside, then swapped in; requests in flight finish on the old one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import numpy as np

from trxsfr.use.classifier import versions
from trxsfr.base.config import ServeConfig
from trxsfr.base.listing import FORMAT_NAMES
from trxsfr.base.errors import InputError, ModelError, TrxsfrError, first_line
from trxsfr.train.export import SIGNATURE_BYTES, SIGNATURE_IMAGES

log = logging.getLogger(__name__)

INPUT_BYTES = "image_bytes"
INPUT_IMAGES = "images"
OUTPUTS = ("probabilities", "classes", "class_ids", "scores")


class BadRequest(Exception):
    """The client sent something we cannot serve: HTTP 400 (or `status`) with this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- versions


@dataclasses.dataclass
class LoadedVersion:
    """One loaded, warmed-up model version and what the API says about it."""

    version: int
    classifier: Any  # trxsfr.classifier.Classifier
    decode_batch: Any  # tf.function: tf.string [N] -> float32 [N, H, W, 3] in [0, 1]
    predict_bytes: Any  # tf.string [N] -> probabilities float32 [N, classes] (a tensor)
    signature_defs: dict  # signature name -> SignatureDef as JSON (TF Serving's metadata)
    own_decode: Any = None  # the model's bytes signature, for a model from older preprocessing

    @property
    def image_size(self) -> tuple[int, int]:
        return self.classifier.image_size

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def predict_batch(self, parts: list) -> list:
        """One forward pass over the images of several requests; runs on the TF worker thread.

        Args:
            parts: per request, either float32 [k, H, W, 3] in [0, 1] or a list of
                k `Encoded` images; all parts of one kind.

        Returns:
            per request, probabilities float32 [k, classes], or the BadRequest of a
            request holding an image TF cannot decode.
        """
        if isinstance(parts[0], np.ndarray):
            images = parts[0] if len(parts) == 1 else np.concatenate(parts)
            results = [None] * len(parts)
            probs = self.classifier.predict_images(images)
        else:
            probs, results = self._from_bytes(parts)
        if probs is not None:
            start = 0
            for i, part in enumerate(parts):
                if results[i] is None:
                    results[i] = probs[start:start + len(part)]
                    start += len(part)
        return results

    def _from_bytes(self, parts: list) -> tuple:
        """`predict_bytes` over every image of `parts` in one call: (probabilities for the
        requests whose images all decode, or None; per request None or BadRequest)."""
        import tensorflow as tf

        def run(kept: list) -> np.ndarray:
            return self.predict_bytes(tf.constant([e.data for part in kept for e in part])).numpy()

        try:
            return run(parts), [None] * len(parts)
        except tf.errors.OpError:
            pass  # some image is broken: find it by decoding one at a time, answer the others
        # A model from older preprocessing only ever decodes its own way, as it was trained.
        decode = self.decode_batch if self.own_decode is None else self.predict_bytes
        results = []
        for part in parts:
            try:
                for image in part:
                    self._decodes(image, decode)
                results.append(None)
            except BadRequest as e:
                results.append(e)
        kept = [part for part, result in zip(parts, results) if result is None]
        return (run(kept) if kept else None), results

    @staticmethod
    def _decodes(image: "Encoded", decode) -> None:
        """Raise BadRequest unless `decode` (tf.string [1] -> a tensor) takes the image."""
        import tensorflow as tf

        from trxsfr.base import imaging

        try:
            decode(tf.constant([image.data]))
        except tf.errors.OpError as e:  # InvalidArgumentError and friends
            raise BadRequest(f"{image.where}: cannot decode the {image.format} image: "
                             f"{imaging.decode_reason(e) or first_line(e, 160)}") from e


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One encoded image of a request, its header already checked."""

    data: bytes
    where: str  # "image 3", for error messages
    format: str  # PIL's name: JPEG, PNG, ...


def _signature_defs(version_dir: str) -> dict:
    """SignatureDefs of the "serve" graph in saved_model.pb, as TF Serving prints them."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    graph = next((g for g in sm.meta_graphs if "serve" in g.meta_info_def.tags), sm.meta_graphs[0])
    return {name: json_format.MessageToDict(sig, preserving_proto_field_name=True)
            for name, sig in graph.signature_def.items()}


def load_version(base: str, version: int) -> LoadedVersion:
    """Load `<base>/<version>` completely and run it once, or raise.

    Raises:
        ModelError: the directory is not a complete, working trxsfr model.
    """
    import tensorflow as tf

    from trxsfr.base import imaging
    from trxsfr.use.classifier import Classifier

    path = os.path.join(base, str(version))
    clf = Classifier(path)
    size = clf.image_size

    def decode(image_bytes):
        # One image per core at a time: a batch of large pictures cannot take 10x the
        # memory of one decoded picture (map_fn's default).
        return imaging.decode_batch(image_bytes, size, imaging.usable_cores())

    images_signature = clf.saved_model.signatures[SIGNATURE_IMAGES]
    bytes_spec = [tf.TensorSpec([None], tf.string)]
    decode_batch = tf.function(decode, input_signature=bytes_spec)

    own_decode = clf.saved_model.signatures[SIGNATURE_BYTES] if clf.needs_own_decode else None
    if own_decode is None:
        # Decode and forward pass in one call: at one image per request, calling the two
        # from Python cost 0.4-1 ms more per request (of about 10); the same at 20 images.
        @tf.function(input_signature=bytes_spec)
        def predict_bytes(image_bytes):
            return images_signature(images=decode(image_bytes))["probabilities"]
    else:
        def predict_bytes(image_bytes):  # decoded as the model was trained
            return own_decode(image_bytes=image_bytes)["probabilities"]
    try:
        probe = tf.io.encode_png(tf.zeros([2, 2, 3], tf.uint8))
        # Traces and warms up both paths (images as bytes, and as floats) off the request path.
        probs = predict_bytes(probe[None]).numpy()
        clf.predict_images(decode_batch(probe[None]))
        if probs.shape != (1, len(clf.labels)) or not np.all(np.isfinite(probs)):
            raise ModelError(f"{path} gives probabilities of shape {probs.shape} for "
                             f"{len(clf.labels)} labels")
        sigs = _signature_defs(path)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"{path} fails a test prediction: {first_line(e)}") from e
    return LoadedVersion(version, clf, decode_batch, predict_bytes, sigs, own_decode)


def _dir_state(path: str) -> tuple:
    """(relative path, size, mtime) of every file under `path`: changes while a copy is running."""
    state = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            state.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(state))


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The served versions at one instant; replaced whole, never changed in place."""

    latest: Optional[LoadedVersion]
    by_version: dict  # version -> LoadedVersion


class VersionWatcher:
    """Serves the highest working version under a base dir, plus any labelled versions.

    A version is loaded only once its files stopped changing between two polls
    (a `cp -r` in progress is not a model yet; an atomic rename is stable at
    once), is loaded and warmed up completely before it is swapped in, and a
    version that fails to load is never served (nor retried until its files change).
    """

    def __init__(self, base: str, version_labels: dict[str, int], poll_seconds: float):
        self.base = base
        self.version_labels = dict(version_labels)
        self.poll_seconds = poll_seconds
        self.snapshot = Snapshot(None, {})
        self._failed: dict[int, tuple] = {}  # version -> dir state when it failed
        self._seen: dict[int, tuple] = {}  # version -> dir state at the previous poll
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _try_load(self, version: int, state: tuple) -> Optional[LoadedVersion]:
        try:
            lv = load_version(self.base, version)
        except TrxsfrError as e:
            self._failed[version] = state
            log.warning("not serving version %d: %s", version, e)
            return None
        except Exception as e:  # anything TF throws at a broken directory
            self._failed[version] = state
            log.warning("not serving version %d: %s", version, first_line(e))
            return None
        log.info("loaded version %d from %s in %.2fs", version, lv.classifier.path,
                 lv.classifier.load_seconds)
        return lv

    def _ready(self, version: int, wait_until_stable: bool) -> Optional[tuple]:
        """The dir state if `version` may be loaded now; None if known broken or still changing."""
        state = _dir_state(os.path.join(self.base, str(version)))
        if self._failed.get(version) == state:
            return None
        settled = self._seen.get(version) == state
        self._seen[version] = state
        if wait_until_stable and not settled:
            return None
        return state

    def _pick_latest(self, on_disk: list[int], old: Snapshot, wait: bool) -> Optional[LoadedVersion]:
        for version in on_disk:  # highest first
            if old.latest is not None and version == old.latest.version:
                return old.latest  # nothing newer is ready
            if version in old.by_version:
                return old.by_version[version]  # a labelled version is now the highest
            state = self._ready(version, wait)
            if state is None:
                continue  # broken, or still being written: fall back to lower versions
            loaded = self._try_load(version, state)
            if loaded is not None:
                return loaded
        # Its directory is gone and nothing else loads: keep answering with what is in memory.
        return old.latest

    def poll(self, wait_until_stable: bool = True) -> bool:
        """Look at the base dir once; load and swap in what changed. True if the snapshot changed."""
        old = self.snapshot
        on_disk = versions(self.base)
        latest = self._pick_latest(on_disk, old, wait_until_stable)
        wanted = {latest.version: latest} if latest is not None else {}
        for version in self.version_labels.values():
            if version in wanted:
                continue
            if version in old.by_version:
                wanted[version] = old.by_version[version]
            elif version in on_disk:
                state = self._ready(version, wait_until_stable)
                loaded = self._try_load(version, state) if state is not None else None
                if loaded is not None:
                    wanted[version] = loaded
        if latest is old.latest and wanted.keys() == old.by_version.keys():
            return False
        self.snapshot = Snapshot(latest, wanted)  # one assignment: readers see old or new, whole
        if latest is not None and (old.latest is None or latest.version != old.latest.version):
            log.info("serving version %d", latest.version)
        for version in old.by_version.keys() - wanted.keys():
            log.info("unloaded version %d", version)
        return True

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.poll_seconds):
                try:
                    self.poll()
                except Exception:  # never let the watcher die: log and keep polling
                    log.exception("error while polling %s", self.base)

        self._thread = threading.Thread(target=loop, name="trxsfr-version-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ---------------------------------------------------------------- batching


@dataclasses.dataclass
class _Item:
    lv: LoadedVersion
    images: Any  # float32 [k, H, W, 3] in [0, 1], or a list of k `Encoded`
    future: asyncio.Future
    enqueued: float

    def joins(self, other: "_Item") -> bool:
        """Same model version and same kind of input: one forward pass can take both."""
        return self.lv is other.lv and isinstance(self.images, list) == isinstance(other.images, list)


class Batcher:
    """Joins the images of concurrent requests into one decode and forward pass, on up to
    `num_batch_threads` TF worker threads at once.

    While every worker is busy, requests queue. When one is free, the batch starts
    with the oldest request and takes every queued request of the same model
    version, up to `max_batch_size` images. Before that it waits -- at most
    `batch_timeout` after the oldest request arrived or a worker became free,
    whichever is later -- while fewer images are queued than the previous batch
    had, or while requests already received are still being parsed (they are
    sure to join within a parse time). So a lone client never waits (its
    previous batch had one image and nothing else is arriving), and under load
    batches fill up, as TF Serving's batching does. Two workers keep 2 cores
    busier than one: one batch decodes or starts while the other's forward pass
    leaves a core idle between and inside its ops.
    """

    def __init__(self, max_batch_size: int, batch_timeout: float, num_batch_threads: int = 2):
        self.max_batch_size = max_batch_size
        self.batch_timeout = batch_timeout
        self.num_batch_threads = num_batch_threads
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup: Optional[asyncio.Event] = None
        self._free: Optional[asyncio.Semaphore] = None  # workers not running a batch
        self._task: Optional[asyncio.Task] = None
        self._running: set[asyncio.Task] = set()
        self._worker = ThreadPoolExecutor(num_batch_threads, thread_name_prefix="trxsfr-tf")
        self._last_batch = 1
        self._free_since = 0.0
        self.arriving = 0  # requests received and being decoded; see `arrival`
        self.batches = 0
        self.images = 0

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._free = asyncio.Semaphore(self.num_batch_threads)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._worker.shutdown(wait=True)

    async def predict(self, lv: LoadedVersion, images) -> np.ndarray:
        """k images (float32 [k, H, W, 3] in [0, 1], or k `Encoded`) -> float32 [k, classes].

        Raises:
            BadRequest: an encoded image that TF cannot decode.
        """
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(lv, images, future, time.monotonic()))
        self._wakeup.set()
        return await future

    @contextlib.contextmanager
    def arrival(self):
        """Wrap the decoding of a request that will call `predict`, so batches wait for it."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            self._wakeup.set()

    def _queued_images(self, first: _Item) -> int:
        return sum(len(item.images) for item in self._queue if item.joins(first))

    async def _run(self) -> None:
        while True:
            await self._free.acquire()
            batch = await self._next_batch()
            if batch:
                task = asyncio.get_running_loop().create_task(self._forward(batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            else:
                self._free.release()

    async def _next_batch(self) -> list[_Item]:
        """The next batch to run, once one is due (empty if its requests were cancelled)."""
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        first = self._queue[0]
        want = min(self.max_batch_size, self._last_batch)
        deadline = max(first.enqueued, self._free_since) + self.batch_timeout
        while True:
            queued = self._queued_images(first)
            if queued >= self.max_batch_size or (queued >= want and not self.arriving):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except asyncio.TimeoutError:
                break
        batch, count, rest = [], 0, collections.deque()
        while self._queue:
            item = self._queue.popleft()
            fits = not batch or count + len(item.images) <= self.max_batch_size
            if item.joins(first) and fits:
                batch.append(item)
                count += len(item.images)
            else:
                rest.append(item)
        self._queue.extendleft(reversed(rest))
        return [item for item in batch if not item.future.cancelled()]

    async def _forward(self, batch: list[_Item]) -> None:
        """Run one batch on a worker and answer its requests; frees the worker."""
        count = sum(len(item.images) for item in batch)
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._worker, batch[0].lv.predict_batch, [item.images for item in batch])
        except Exception as e:
            log.exception("prediction failed for a batch of %d images", count)
            results = [e] * len(batch)
        else:
            self._last_batch = count
            self.batches += 1
            self.images += count
        finally:
            self._free_since = time.monotonic()
            self._free.release()
        for item, result in zip(batch, results):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)


# ---------------------------------------------------------------- request parsing


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, dict) or set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise BadRequest(f"{where}: binary image data must be given as {{\"b64\": \"<base64 string>\"}}, "
                         f"got {_describe(value)}")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{where}: the \"b64\" value is not valid base64 ({e})") from e


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "an object with keys " + ", ".join(repr(k) for k in list(value)[:5])
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return type(value).__name__ if value is not None else "null"


@dataclasses.dataclass
class ParsedRequest:
    signature: str
    row_format: bool
    images: Any  # float32 [N, H, W, 3] in [0, 1], or a list of N `Encoded`


def parse_request(body: bytes, lv: LoadedVersion, config: ServeConfig) -> ParsedRequest:
    """Parse a TF Serving :predict body and check its images for `lv` (headers and limits).

    Raises:
        BadRequest: anything wrong with the body, its names, its data or the limits.
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise BadRequest(f"the request body must be a JSON object with \"instances\" or \"inputs\", "
                         f"got {_describe(doc)}")
    signature = doc.get("signature_name") or SIGNATURE_BYTES
    if signature not in (SIGNATURE_BYTES, SIGNATURE_IMAGES):
        raise BadRequest(f"Serving signature name: \"{signature}\" not found in signature def "
                         f"(this model has \"{SIGNATURE_BYTES}\" and \"{SIGNATURE_IMAGES}\")")
    unknown = set(doc) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise BadRequest(f"unknown key(s) {', '.join(sorted(map(repr, unknown)))} in the request; "
                         f"expected \"signature_name\" and \"instances\" or \"inputs\"")
    if ("instances" in doc) == ("inputs" in doc):
        raise BadRequest("the request must have exactly one of \"instances\" (row format) "
                         "or \"inputs\" (columnar format)")
    input_name = INPUT_BYTES if signature == SIGNATURE_BYTES else INPUT_IMAGES
    row = "instances" in doc
    if row:
        values = doc["instances"]
        if not isinstance(values, list):
            raise BadRequest(f"\"instances\" must be a list, got {_describe(values)}")
        values = [_unwrap_named(v, input_name, signature, f"instance {i}") for i, v in enumerate(values)]
    else:
        values = doc["inputs"]
        if isinstance(values, dict) and "b64" not in values:
            values = _unwrap_named(values, input_name, signature, "\"inputs\"")
        if not isinstance(values, list):
            raise BadRequest(f"\"inputs\" must hold a list of images for input \"{input_name}\", "
                             f"got {_describe(values)}")
    if not values:
        raise BadRequest("the request holds no images")
    if len(values) > config.max_images_per_request:
        raise BadRequest(f"the request holds {len(values)} images; at most "
                         f"{config.max_images_per_request} are allowed per request")
    if signature == SIGNATURE_BYTES:
        images = [_checked(_b64(v, f"image {i}"), config, f"image {i}") for i, v in enumerate(values)]
    else:
        images = _float_images(values, lv.image_size)
    return ParsedRequest(signature, row, images)


def _unwrap_named(value: Any, input_name: str, signature: str, where: str) -> Any:
    """`{"image_bytes": X}` -> X; a bare value passes (a signature with one input may omit the name)."""
    if isinstance(value, dict) and "b64" not in value:
        if set(value) != {input_name}:
            names = ", ".join(f"\"{k}\"" for k in value) or "none"
            raise BadRequest(f"{where}: signature \"{signature}\" takes one input named "
                             f"\"{input_name}\"; got input(s) {names}")
        return value[input_name]
    return value


def _checked(data: bytes, config: ServeConfig, where: str) -> Encoded:
    """Encoded image bytes whose header names a supported format within the pixel limit."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadRequest(f"{where}: empty image data")
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            width, height = header.size
            fmt = header.format
            # TF refuses any WebP stored as an animation, even of one frame: the VP8X
            # chunk's animation flag, not Pillow's frame count, is what it reads.
            animated = fmt == "WEBP" and data[12:16] == b"VP8X" and bool(data[20] & 0x02)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        if isinstance(e, Image.DecompressionBombError):
            raise BadRequest(f"{where}: the image has too many pixels (limit "
                             f"{config.max_image_pixels:,})") from e
        raise BadRequest(f"{where}: not a {FORMAT_NAMES} image") from e
    if fmt not in ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"):  # MPO: a camera JPEG
        raise BadRequest(f"{where}: {fmt} images are not supported; send {FORMAT_NAMES}")
    if animated:  # TF's decoder refuses it
        raise BadRequest(f"{where}: animated WebP is not supported; send a still image")
    if width * height > config.max_image_pixels:
        raise BadRequest(f"{where}: the image has {width}x{height} = {width * height:,} pixels; "
                         f"the limit is {config.max_image_pixels:,}")
    return Encoded(data, where, fmt)


def _float_images(values: list, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    try:
        images = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"input \"{INPUT_IMAGES}\" must be numbers shaped [N, {h}, {w}, 3]: {e}") from e
    if images.shape[1:] != (h, w, 3):
        raise BadRequest(f"input \"{INPUT_IMAGES}\" must be shaped [N, {h}, {w}, 3]; "
                         f"got {list(images.shape)}")
    if not np.all(np.isfinite(images)):
        raise BadRequest(f"input \"{INPUT_IMAGES}\" holds NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        raise BadRequest(f"input \"{INPUT_IMAGES}\" takes float pixels in [0, 1]; got values from "
                         f"{lo:g} to {hi:g} (divide 8-bit pixels by 255, or send the encoded "
                         f"image as {{\"b64\": ...}} to \"{SIGNATURE_BYTES}\")")
    return images


def format_response(probs: np.ndarray, labels: list[str], row_format: bool) -> dict:
    """probabilities float32 [N, C] -> TF Serving's "predictions" (row) or "outputs" (columnar).

    Ranking is a stable descending sort, as tf.math.top_k in the exported signature.
    """
    order = np.argsort(-probs, axis=1, kind="stable")
    scores = np.take_along_axis(probs, order, axis=1)
    out = {
        "probabilities": probs.tolist(),
        "classes": [[labels[j] for j in row] for row in order],
        "class_ids": order.tolist(),
        "scores": scores.tolist(),
    }
    if row_format:
        return {"predictions": [{name: out[name][i] for name in OUTPUTS} for i in range(len(probs))]}
    return {"outputs": out}


# ---------------------------------------------------------------- HTTP app

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:/(?P<metadata>metadata)|:(?P<verb>[A-Za-z]+))?$"
)


class Server:
    """The Starlette app around a VersionWatcher and a Batcher."""

    def __init__(self, config: ServeConfig, watcher: VersionWatcher):
        self.config = config
        self.watcher = watcher
        self.batcher = Batcher(config.max_batch_size, config.batch_timeout_micros / 1e6,
                               config.num_batch_threads)
        self._parse_pool = ThreadPoolExecutor(config.parse_threads, thread_name_prefix="trxsfr-parse")
        self.app = self._build_app()

    def _build_app(self):
        from contextlib import asynccontextmanager

        from starlette.applications import Starlette
        from starlette.routing import Route

        @asynccontextmanager
        async def lifespan(app):
            self.batcher.start()
            self.watcher.start()
            try:
                yield
            finally:
                self.watcher.stop()
                await self.batcher.stop()
                self._parse_pool.shutdown(wait=False)

        return Starlette(routes=[
            Route("/", self.page, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/v1/{rest:path}", self.v1, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ], lifespan=lifespan)

    # -- helpers

    @staticmethod
    def _error(message: str, status: int):
        from starlette.responses import JSONResponse

        return JSONResponse({"error": message}, status_code=status)

    async def _body(self, request) -> bytes:
        """The request body, or BadRequest past `max_body_bytes`.

        An oversized body is still read (and dropped) up to 4x the limit, so a
        client that sends it whole gets the 400 instead of a broken pipe.
        """
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise BadRequest("the Content-Length header is not a number")
        too_big = None
        if declared is not None and int(declared) > limit:
            too_big = f"the request body has {int(declared):,} bytes; the limit is {limit:,}"
            if int(declared) > 4 * limit:
                raise BadRequest(too_big)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                too_big = too_big or f"the request body exceeds the limit of {limit:,} bytes"
                chunks = []
                if total > 4 * limit:
                    break
            elif too_big is None:
                chunks.append(chunk)
        if too_big:
            raise BadRequest(too_big)
        return b"".join(chunks)

    def _select(self, snap: Snapshot, name: str, version: Optional[str],
                label: Optional[str]) -> LoadedVersion:
        if name != self.config.model_name:
            raise BadRequest(f"Servable not found for request: Latest({name}); this server "
                             f"serves model \"{self.config.model_name}\"", 404)
        if version is not None:
            if not version.isdigit():
                raise BadRequest(f"version \"{version}\" is not a number")
            lv = snap.by_version.get(int(version))
            if lv is None:
                served = ", ".join(str(v) for v in sorted(snap.by_version)) or "none"
                raise BadRequest(f"Servable not found for request: Specific({name}, {version}) "
                                 f"(versions served: {served})", 404)
            return lv
        if label is not None:
            if label not in self.watcher.version_labels:
                raise BadRequest(f"Unrecognized servable version label: {label}", 404)
            lv = snap.by_version.get(self.watcher.version_labels[label])
            if lv is None:
                raise BadRequest(f"version label {label} points at version "
                                 f"{self.watcher.version_labels[label]}, which is not loaded", 404)
            return lv
        if snap.latest is None:
            raise BadRequest(f"Servable not found for request: Latest({name})", 404)
        return snap.latest

    @staticmethod
    def _status(lvs: list) -> dict:
        return {"model_version_status": [
            {"version": str(lv.version), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}
            for lv in sorted(lvs, key=lambda lv: -lv.version)]}

    # -- endpoints

    async def v1(self, request):
        from starlette.responses import JSONResponse

        try:
            match = _ROUTE.match(request.url.path)
            if not match:
                raise BadRequest(f"Malformed request: {request.method} {request.url.path}", 404)
            name, version, label = match["name"], match["version"], match["label"]
            verb, metadata = match["verb"], match["metadata"]
            snap = self.watcher.snapshot
            if verb is None:
                if request.method != "GET":
                    raise BadRequest(f"{request.method} {request.url.path}: use GET here "
                                     f"(POST is for .../NAME:predict)", 405)
                if metadata:
                    lv = self._select(snap, name, version, label)
                    return JSONResponse({
                        "model_spec": {"name": name, "signature_name": "", "version": str(lv.version)},
                        "metadata": {"signature_def": {
                            "signature_def": lv.signature_defs,
                            "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap"}},
                    })
                if version is None and label is None:
                    self._select(snap, name, None, None)
                    return JSONResponse(self._status(list(snap.by_version.values())))
                return JSONResponse(self._status([self._select(snap, name, version, label)]))
            if verb != "predict":
                if verb in ("classify", "regress"):
                    raise BadRequest(f"this model has no {verb} signature; use :predict "
                                     f"(signatures \"{SIGNATURE_BYTES}\", \"{SIGNATURE_IMAGES}\")")
                raise BadRequest(f"Malformed request: {request.method} {request.url.path}", 404)
            if request.method != "POST":
                raise BadRequest(f"{request.method} {request.url.path}: :predict takes POST "
                                 f"with a JSON body", 405)
            lv = self._select(snap, name, version, label)
            body = await self._body(request)
            loop = asyncio.get_running_loop()
            with self.batcher.arrival():
                parsed = await loop.run_in_executor(self._parse_pool, parse_request, body, lv,
                                                    self.config)
            probs = await self.batcher.predict(lv, parsed.images)
            return JSONResponse(format_response(probs, lv.labels, parsed.row_format))
        except BadRequest as e:
            return self._error(str(e), e.status)
        except Exception as e:
            log.exception("internal error on %s %s", request.method, request.url.path)
            return self._error(f"internal error: {type(e).__name__}: {e}", 500)

    async def healthz(self, request):
        from starlette.responses import JSONResponse

        latest = self.watcher.snapshot.latest
        if latest is None:
            return JSONResponse({"status": "unavailable", "model": self.config.model_name}, 503)
        return JSONResponse({"status": "ok", "model": self.config.model_name,
                             "version": str(latest.version), "labels": latest.labels,
                             "batches": self.batcher.batches, "images": self.batcher.images})

    async def page(self, request):
        from starlette.responses import HTMLResponse

        return HTMLResponse(_PAGE.replace("__MODEL__", json.dumps(self.config.model_name)))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trxsfr</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;max-width:42em;margin:2em auto;padding:0 1em;color:#222}
 img{max-width:100%;max-height:20em;display:block;margin:1em 0}
 table{border-collapse:collapse} td{padding:.2em .8em .2em 0}
 .bar{background:#4a7;height:.8em} #error{color:#b00}
</style></head><body>
<h1>trxsfr</h1>
<p>Model <b id="model"></b>, version <span id="version">?</span>.
Choose a picture to see the top classes.</p>
<input type="file" id="file" accept="image/jpeg,image/png,image/gif,image/bmp,image/webp">
<img id="preview" alt="">
<p id="error"></p>
<table id="result"></table>
<script>
const model = __MODEL__;
document.getElementById("model").textContent = model;
fetch("/v1/models/" + encodeURIComponent(model)).then(r => r.json()).then(s => {
  if (s.model_version_status) document.getElementById("version").textContent = s.model_version_status[0].version;
});
document.getElementById("file").addEventListener("change", ev => {
  const file = ev.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = async () => {
    const url = reader.result;
    document.getElementById("preview").src = url;
    const table = document.getElementById("result"), err = document.getElementById("error");
    table.replaceChildren(); err.textContent = "";
    const b64 = url.slice(url.indexOf(",") + 1);
    const r = await fetch("/v1/models/" + encodeURIComponent(model) + ":predict", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({instances: [{b64: b64}]})});
    const doc = await r.json();
    if (!r.ok) { err.textContent = doc.error || ("HTTP " + r.status); return; }
    const p = doc.predictions[0];
    p.classes.slice(0, 5).forEach((label, i) => {
      const row = table.insertRow();
      row.insertCell().textContent = label;
      row.insertCell().textContent = p.scores[i].toFixed(4);
      const bar = document.createElement("div");
      bar.className = "bar"; bar.style.width = (12 * p.scores[i]) + "em";
      row.insertCell().appendChild(bar);
    });
  };
  reader.readAsDataURL(file);
});
</script></body></html>
"""


# ---------------------------------------------------------------- entry point


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: ServeConfig, on_ready=None) -> None:
    """Load the highest working version, bind, and serve until SIGINT/SIGTERM.

    Args:
        config: the settings.
        on_ready: called with (url, version) once the socket listens and a model is loaded.

    Raises:
        ModelError: the base dir does not exist or holds no working version.
        InputError: bad settings, or the address cannot be bound.
    """
    import uvicorn

    config.check()
    base = config.model_base_path
    if not os.path.isdir(base):
        raise ModelError(f"--model_base_path {base} is not a directory")
    if os.path.exists(os.path.join(base, "saved_model.pb")):
        raise ModelError(f"--model_base_path {base} is a model version itself; pass its parent "
                         f"directory (versions are numbered sub-directories, as for TF Serving)")
    watcher = VersionWatcher(base, dict(config.version_labels), config.poll_seconds)
    watcher.poll(wait_until_stable=False)
    if watcher.snapshot.latest is None:
        raise ModelError(f"no working model version under {base}: expected numbered "
                         f"sub-directories with a saved_model.pb (trxsfr retrain makes them)")
    for label, version in config.version_labels:
        if version not in watcher.snapshot.by_version:
            log.warning("version label %s: version %d is not loaded", label, version)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    server = Server(config, watcher)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # logs never go to stdout
    uv = uvicorn.Server(uvicorn.Config(
        server.app, log_level="info" if config.access_log else "warning",
        access_log=config.access_log, log_config=log_config, timeout_keep_alive=30,
        lifespan="on",
    ))
    if on_ready is not None:
        on_ready(url, watcher.snapshot.latest.version)
    else:
        log.info("serving model %s version %d at %s/v1/models/%s", config.model_name,
                 watcher.snapshot.latest.version, url, config.model_name)
    try:
        uv.run(sockets=[sock])
    finally:
        sock.close()
