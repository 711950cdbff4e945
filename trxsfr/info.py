"""`info`: what deploying a model costs -- size, memory, load time, latency, throughput.

Works the same on a SavedModel (version or base directory) and on a .tflite
from `export-tflite`, so float and quantized variants compare side by side.
Latency and throughput time the model's forward pass on float images in
[0, 1] (decoding, the same for every variant, is not included).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import resource
import statistics
import time
from typing import Optional

import numpy as np

from trxsfr.base.errors import InputError

log = logging.getLogger(__name__)


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def disk_bytes(path: str) -> int:
    """Bytes of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


@dataclasses.dataclass
class Footprint:
    path: str
    format: str  # "saved_model" or "tflite"
    runtime: str
    quantize: Optional[str]
    module: Optional[str]
    labels: list
    image_size: tuple
    parameters: int
    disk_bytes: int
    load_seconds: float
    rss_before_load_bytes: int
    rss_after_load_bytes: int
    latency_ms_p50: float  # one image per call
    latency_ms_p90: float
    batch_size: int
    throughput_images_per_s: float  # at batch_size per call
    unknown_threshold: Optional[float] = None  # top scores below it answer "unknown"

    def to_json(self) -> dict:
        doc = dataclasses.asdict(self)
        doc["image_size"] = list(self.image_size)
        doc["rss_load_increase_bytes"] = self.rss_after_load_bytes - self.rss_before_load_bytes
        return doc


def time_forward(clf, batch_size: int, runs: int, seed: int = 0) -> list[float]:
    """Seconds per `clf.predict_images` call on `batch_size` random images, after one warm-up call."""
    h, w = clf.image_size
    images = np.random.default_rng(seed).random((batch_size, h, w, 3), dtype=np.float32)
    clf.predict_images(images)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        clf.predict_images(images)
        times.append(time.perf_counter() - start)
    return times


def measure(model: str, batch_size: int = 32, runs: int = 20) -> Footprint:
    """Load `model` and measure it.

    Args:
        model: SavedModel version or base directory, or a .tflite file.
        batch_size: images per call for the throughput figure.
        runs: timed calls for each figure (after one warm-up call).

    Raises:
        InputError: batch_size or runs not positive.
        ModelError: `model` is not a trxsfr model.
    """
    from trxsfr.base import contract
    from trxsfr.use import models

    if batch_size < 1 or runs < 1:
        raise InputError("--batch_size and --runs must be positive")
    if not contract.is_tflite(model):  # loaded before the first reading: the runtime's memory is not the model's
        importlib.import_module("tensorflow")

    before = rss_bytes()
    clf = models.load(model)
    after = rss_bytes()
    single = time_forward(clf, 1, runs)
    batched = time_forward(clf, batch_size, max(3, runs // 4))
    single_ms = sorted(1000 * t for t in single)
    return Footprint(
        path=clf.path, format=clf.format, runtime=clf.runtime,
        quantize=clf.quantize, module=clf.info.module.handle,
        labels=list(clf.labels), image_size=tuple(clf.image_size), parameters=clf.parameter_count(),
        disk_bytes=disk_bytes(clf.path), load_seconds=clf.load_seconds,
        rss_before_load_bytes=before, rss_after_load_bytes=after,
        latency_ms_p50=statistics.median(single_ms),
        latency_ms_p90=single_ms[min(len(single_ms) - 1, int(0.9 * len(single_ms)))],
        batch_size=batch_size,
        throughput_images_per_s=batch_size / statistics.median(batched),
        unknown_threshold=clf.info.unknown_threshold,
    )
