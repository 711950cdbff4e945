"""`extract`: bottleneck vectors computed by an Apache Beam pipeline, into the store
`retrain --bottleneck_dir` reads.

    list images -> read, content key -> skip keys the store holds -> decode (one image
    per call; failures to a dead-letter output) -> RunInference (the extractor loaded
    once per worker process, BatchElements batches) -> append to the store

The same pipeline runs on Beam's DirectRunner (locally, `--direct_num_workers N
--direct_running_mode multi_processing`), Dataflow, Flink and Spark. Images can come
from any Beam filesystem (local, gs://, s3://...); the store itself is a local or
mounted POSIX folder that every worker can append to: each worker writes segments of
its own (train/cache: a segment is flocked by its one writer, a taken one makes the
next writer start a new one), so a later `retrain` reads all of them and computes nothing.

Imports apache_beam (the `beam` extra) at import time: the CLI imports this module
only for `extract`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from trxsfr.base import beam_steps
from trxsfr.base.beam_steps import COUNTERS, FAILED
from trxsfr.base.config import ExtractConfig
from trxsfr.base.errors import ModuleError
from trxsfr.base.listing import Skipped
from trxsfr.train import cache

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExtractResult:
    store_dir: str  # the store of this extractor under --bottleneck_dir
    images: int  # image files listed
    reused: int  # already in the store: not read past their key
    computed: int  # vectors computed and appended by this run
    failed: list[Skipped]  # unreadable, undecodable or not images, sorted by path
    seconds: float  # the pipeline's wall time (listing and the driver's model load excluded)
    load_seconds: float  # the driver's model load (fingerprint, size, dimension, runtime)


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """Where the workers find the store (picklable; each worker opens its own handle)."""

    root: str
    namespace: str
    dim: int
    meta: dict

    def open(self) -> cache.BottleneckStore:
        return cache.BottleneckStore(self.root, self.namespace, self.dim, self.meta)


class KeyFiles(beam.DoFn):
    """(path, bytes) -> ((content key, path), bytes) for images whose vector the store
    lacks; the others are only counted ("reused")."""

    def __init__(self, store: StoreSpec):
        self._spec = store

    def setup(self):
        self._store = self._spec.open()  # reads the keys of every segment, once per worker

    def process(self, element):
        path, data = element
        key = cache.content_key(data)
        if key in self._store:
            Metrics.counter(COUNTERS, "reused").inc()
            return
        yield (key, path), data


class WriteVectors(beam.DoFn):
    """((key, path), PredictionResult) -> appended to the store, once per bundle.

    Each DoFn instance appends to a segment of its own: `put_many` takes the segment's
    flock, and a segment another writer holds makes it start a new one.
    """

    def __init__(self, store: StoreSpec):
        self._spec = store

    def setup(self):
        self._store = self._spec.open()

    def start_bundle(self):
        self._keys, self._vectors = [], []

    def process(self, element):
        (key, _), result = element
        self._keys.append(key)
        self._vectors.append(result.inference)

    def finish_bundle(self):
        if self._keys:
            self._store.put_many(self._keys, np.stack(self._vectors).astype(np.float32))
            Metrics.counter(COUNTERS, "computed").inc(len(self._keys))
        self._keys, self._vectors = [], []

    def teardown(self):
        store = getattr(self, "_store", None)
        if store is not None:
            store.close()


def load_extractor(handle: str, image_size: Optional[int], fingerprint: str,
                   conversion=None):
    """The extractor on a worker, checked to be the one the driver keyed the store by:
    the LiteRT conversion the driver checked (`litert.Conversion`, read from the store's
    folder: its sha256 names the store), or else the module, by its fingerprint."""
    from trxsfr.base import extractors

    if conversion is not None:
        return conversion.load()
    extractor = extractors.load(handle, image_size)
    if extractor.fingerprint != fingerprint:
        raise ModuleError(f"module {handle} on this worker is not the one the pipeline was "
                          f"started with (fingerprint {extractor.fingerprint[:12]} vs "
                          f"{fingerprint[:12]}); pass a fixed version or a shared folder")
    return extractor


def features(extractor, images: np.ndarray) -> np.ndarray:
    """float32 [N, H, W, 3] in [0, 1] -> float32 [N, dim], on either runtime."""
    return np.asarray(extractor(images), np.float32)


def _failure(element) -> str:
    """A dead-letter record ((key, path) or path, reason) as one JSON line."""
    tag, reason = element
    path = tag[1] if isinstance(tag, tuple) else tag
    return json.dumps({"path": path, "reason": reason})


def extract(config: ExtractConfig, pipeline_args: Sequence[str] = ()) -> ExtractResult:
    """Run the pipeline; return what it computed, reused and could not read.

    Args:
        config: what to extract where (checked here first).
        pipeline_args: Apache Beam pipeline options (`--runner=DirectRunner`,
            `--direct_num_workers=2`, Dataflow's `--project`...), each checked.

    Raises:
        TrxsfrError: an unknown option, no images, an unusable module or store.
    """
    from trxsfr.base import extractors, litert

    config.check()
    options = beam_steps.pipeline_options(pipeline_args)
    paths, _, skipped = beam_steps.list_images(config.image_dir)
    t0 = time.perf_counter()
    extractor = extractors.load(config.tfhub_module, config.image_size)
    # The runtime is decided here, once, as retrain decides it (the same conversion, check
    # and fallback, kept in the same folder), so the vectors go to the store retrain
    # reads with the same --runtime; the workers run what was decided.
    extractor = litert.for_extraction(extractor, config.runtime, config.bottleneck_dir)
    conversion = litert.extraction_conversion(extractor, config.bottleneck_dir)
    load_seconds = time.perf_counter() - t0
    store = cache.store_for(config.bottleneck_dir, extractor)
    store.close()
    with open(os.path.join(store.dir, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)  # store_for wrote it; a worker writes it again only if it is lost
    spec = StoreSpec(os.path.abspath(os.path.dirname(store.dir)), os.path.basename(store.dir),
                     store.dim, meta)  # absolute: a worker's working directory may differ
    log.info("extract: %d images from %s with %s (%dx%d -> %d-d, runtime %s) into %s",
             len(paths), config.image_dir, config.tfhub_module, *extractor.image_size,
             extractor.dim, extractor.runtime, store.dir)
    handler = KeyedModelHandler(beam_steps.ForwardHandler(
        functools.partial(load_extractor, config.tfhub_module, config.image_size,
                          extractor.fingerprint, conversion),
        features, config.batch_size, "extract"))
    # The dead letters come back through files beside the store (which every worker can
    # reach), read and removed once the pipeline is done.
    scratch = tempfile.mkdtemp(prefix=".extract-", dir=os.path.abspath(config.bottleneck_dir))
    try:
        pipeline = beam.Pipeline(options=options)
        read = (pipeline
                | "List" >> beam.Create([(p, p) for p in paths])
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(beam_steps.ReadFiles()).with_outputs(FAILED, main="ok"))
        decoded = (read.ok
                   | "Key" >> beam.ParDo(KeyFiles(spec))
                   | "Decode" >> beam.ParDo(beam_steps.DecodeImages(
                       extractor.image_size, config.max_image_pixels)).with_outputs(
                           FAILED, main="ok"))
        _ = (decoded.ok
             | "Extract" >> RunInference(handler)
             | "Store" >> beam.ParDo(WriteVectors(spec)))
        _ = ((read[FAILED], decoded[FAILED])
             | "DeadLetters" >> beam.Flatten()
             | "AsJson" >> beam.Map(_failure)
             | "WriteFailed" >> beam.io.WriteToText(os.path.join(scratch, "failed"),
                                                    file_name_suffix=".jsonl"))
        t1 = time.perf_counter()
        result = pipeline.run()
        beam_steps.wait(result, "extract")
        seconds = time.perf_counter() - t1
        counts = beam_steps.counters(result)
        failed = list(skipped)
        for name in sorted(os.listdir(scratch)):
            if name.startswith("failed") and name.endswith(".jsonl"):
                with open(os.path.join(scratch, name), encoding="utf-8") as f:
                    failed += [Skipped(**json.loads(line)) for line in f if line.strip()]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    failed.sort(key=lambda s: s.path)
    log.info("extract: %d computed, %d reused from the store, %d failed (%.1fs)",
             counts.get("computed", 0), counts.get("reused", 0), len(failed), seconds)
    return ExtractResult(store.dir, len(paths), counts.get("reused", 0),
                         counts.get("computed", 0), failed, seconds, load_seconds)
