"""The model versions a server holds: load, warm up, watch the base dir, swap.

`load_version` loads one `<base>/<version>` completely and runs it once, so a
version that cannot answer is never served. `VersionWatcher` polls the base
directory (TF Serving's layout: numbered version directories) and keeps a
`Snapshot` of what is served: the highest working version plus any versions
named by a version label. A new version is loaded and warmed up aside, then
swapped in with one assignment; requests in flight finish on the version they
started with.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Any, Optional

import numpy as np

from trxsfr.base.contract import (
    INPUT_BYTES,
    INPUT_IMAGES,
    OUTPUT_PROBABILITIES,
    SAVED_MODEL_FILE,
    SIGNATURE_BYTES,
    SIGNATURE_IMAGES,
    versions,
)
from trxsfr.base.errors import ModelError, TrxsfrError, first_line
from trxsfr.serve.rest import BadRequest, Encoded

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedVersion:
    """One loaded, warmed-up model version and what the API says about it."""

    version: int
    classifier: Any  # trxsfr.use.classifier.Classifier
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
            return np.asarray(self.predict_bytes(tf.constant([e.data for part in kept
                                                              for e in part])))

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
    def _decodes(image: Encoded, decode) -> None:
        """Raise BadRequest unless `decode` (tf.string [1] -> a tensor) takes the image."""
        import tensorflow as tf

        from trxsfr.base import imaging

        try:
            decode(tf.constant([image.data]))
        except tf.errors.OpError as e:  # InvalidArgumentError and friends
            raise BadRequest(f"{image.where}: cannot decode the {image.format} image: "
                             f"{imaging.decode_reason(e) or first_line(e, 160)}") from e


def _signature_defs(version_dir: str) -> dict:
    """SignatureDefs of the serving graph in saved_model.pb, as TF Serving prints them."""
    import tensorflow as tf
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, SAVED_MODEL_FILE), "rb") as f:
        sm.ParseFromString(f.read())
    graph = next((g for g in sm.meta_graphs if tf.saved_model.SERVING in g.meta_info_def.tags),
                 sm.meta_graphs[0])
    return {name: json_format.MessageToDict(sig, preserving_proto_field_name=True)
            for name, sig in graph.signature_def.items()}


def load_version(base: str, version: int, runtime: str = "tf") -> LoadedVersion:
    """Load `<base>/<version>` completely and run it once, or raise.

    `runtime` ("auto", "tf", "litert") says what runs its network (use/converted.py);
    a conversion to LiteRT is made (or taken from its cache) and checked here, before
    the version answers anything.

    Raises:
        ModelError: the directory is not a complete, working trxsfr model, or runtime
            "litert" and LiteRT cannot run it as TensorFlow does.
    """
    import tensorflow as tf

    from trxsfr.base import imaging
    from trxsfr.use.models import load

    path = os.path.join(base, str(version))
    clf = load(path, runtime=runtime)
    if runtime != "tf" and clf.prepare():  # a server labels many images: convert now,
        # off the request path: an interpreter per batch thread, each on every core. Closed-
        # loop clients split into cohorts whose batches often run alone; a one-thread
        # interpreter then leaves a core idle (concurrency 32 on 2 cores, MobileNet-V2:
        # 134-161 requests/s and 1.1-1.4 cores busy; with two threads each, 185-214 and 1.8).
        clf.reserve(imaging.FORWARD_STREAMS, threads=imaging.usable_cores())
    size = clf.image_size

    def decode(image_bytes):
        # One image per core at a time: a batch of large pictures cannot take 10x the
        # memory of one decoded picture (map_fn's default).
        return imaging.decode_batch(image_bytes, size, imaging.usable_cores())

    images_signature = clf.saved_model.signatures[SIGNATURE_IMAGES]
    bytes_spec = [tf.TensorSpec([None], tf.string)]
    decode_batch = tf.function(decode, input_signature=bytes_spec)

    own_decode = clf.saved_model.signatures[SIGNATURE_BYTES] if clf.needs_own_decode else None
    if clf.on_litert:
        def predict_bytes(image_bytes):  # TF decodes, LiteRT runs the network
            return clf.predict_images(decode_batch(image_bytes).numpy())
    elif own_decode is None:
        # Decode and forward pass in one call: at one image per request, calling the two
        # from Python cost 0.4-1 ms more per request (of about 10); the same at 20 images.
        @tf.function(input_signature=bytes_spec)
        def predict_bytes(image_bytes):
            return images_signature(**{INPUT_IMAGES: decode(image_bytes)})[OUTPUT_PROBABILITIES]
    else:
        def predict_bytes(image_bytes):  # decoded as the model was trained
            return own_decode(**{INPUT_BYTES: image_bytes})[OUTPUT_PROBABILITIES]
    try:
        probe = tf.io.encode_png(tf.zeros([2, 2, 3], tf.uint8))
        # Traces and warms up both paths (images as bytes, and as floats) off the request path.
        probs = np.asarray(predict_bytes(probe[None]))
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

    def __init__(self, base: str, version_labels: dict[str, int], poll_seconds: float,
                 runtime: str = "tf"):
        self.base = base
        self.runtime = runtime
        self.version_labels = dict(version_labels)
        self.poll_seconds = poll_seconds
        self.snapshot = Snapshot(None, {})
        self._failed: dict[int, tuple] = {}  # version -> dir state when it failed
        self._seen: dict[int, tuple] = {}  # version -> dir state at the previous poll
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _try_load(self, version: int, state: tuple) -> Optional[LoadedVersion]:
        try:
            lv = load_version(self.base, version, self.runtime)
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
