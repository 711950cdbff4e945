"""Apache Beam steps that `extract` and `label --runner` share.

Listing and reading images on any Beam filesystem (local paths, gs://, s3://...),
decoding each image in a step of its own (a file that does not decode goes to a
dead-letter output instead of failing its batch), a RunInference model handler for
models loaded with `tf.saved_model.load` / `hub.load`, pipeline options and counters.

Beam's own TensorFlow handler loads with `tf.keras.models.load_model`, which Keras 3
cannot do for these SavedModels (apache/beam#30616); `ForwardHandler` takes a loader
and a forward function instead.

This module imports apache_beam (the `beam` extra): only the pipelines import it.
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions

from trxsfr.base import listing
from trxsfr.base.errors import DatasetError, InputError, first_line
from trxsfr.base.listing import Skipped

log = logging.getLogger(__name__)

COUNTERS = "trxsfr"  # namespace of the pipelines' counters
FAILED = "failed"  # tag of the dead-letter outputs: (tag, reason)


def is_uri(path: str) -> bool:
    """Whether `path` names a Beam filesystem location (gs://, s3://, ...), not a local path."""
    return "://" in path


def list_images(root: str) -> tuple[list[str], list[str], list[Skipped]]:
    """Image files below `root`, a local folder or a URI: (paths, "/"-separated paths
    relative to `root`, files passed over with the reason), sorted by relative path.

    A local folder is walked as `retrain` walks it (symlinks followed, loops skipped);
    a URI is listed with Beam's FileSystems (`root/**`). Hidden files and folders are
    left out; files of other types are passed over with the reason.

    Raises:
        InputError: `root` does not exist or cannot be listed.
        DatasetError: no image file below it.
    """
    paths, rels, skipped = [], [], []
    if is_uri(root):
        base = root.rstrip("/") + "/"
        try:
            found = FileSystems.match([base + "**"])[0].metadata_list
        except Exception as e:  # a missing filesystem extra, credentials, a wrong bucket
            raise InputError(f"cannot list {root}: {first_line(e)}") from e
        for meta in sorted(found, key=lambda m: m.path):
            rel = meta.path[len(base):] if meta.path.startswith(base) else meta.path
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            if listing.is_image_name(rel):
                paths.append(meta.path)
                rels.append(rel)
            else:
                skipped.append(listing.not_an_image(meta.path))
    else:
        if not os.path.isdir(root):
            raise InputError(f"--image_dir {root} is not a folder")
        found = listing.walk(root)
        for rel in found.files:
            path = os.path.join(root, *rel.split("/"))
            if listing.is_image_name(rel):
                paths.append(path)
                rels.append(rel)
            else:
                skipped.append(listing.not_an_image(path))
        skipped += [Skipped(os.path.join(root, s.path), s.reason) for s in found.skipped]
    if not paths:
        raise DatasetError(f"no images under {root} (looked for "
                           f"{', '.join(listing.IMAGE_EXTENSIONS)})")
    return paths, rels, skipped


def read_bytes(path: str) -> bytes:
    """A file's bytes from a local path or any Beam filesystem URI (never decompressed)."""
    if not is_uri(path):
        with open(path, "rb") as f:
            return f.read()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def unknown_options(args: Sequence[str]) -> list[str]:
    """The arguments no Beam pipeline option takes (each `--name` once, value dropped)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # how PipelineOptions itself builds its parser
    _, unknown = parser.parse_known_args(list(args))
    known = [o for action in parser._actions for o in action.option_strings]
    out = []
    for arg in unknown:
        name = arg.split("=", 1)[0]
        hint = difflib.get_close_matches(name, known, n=1)
        out.append(f"{name} (did you mean {hint[0]}?)" if hint else name)
    return out


def pipeline_options(args: Sequence[str]) -> PipelineOptions:
    """Beam's PipelineOptions of `args`, every one of which must be a Beam option.

    Raises:
        InputError: an argument is no Beam pipeline option (a typo is an error, not ignored).
    """
    unknown = unknown_options(args)
    if unknown:
        raise InputError(f"unknown option {', '.join(unknown)}: neither trxsfr's nor an "
                         f"Apache Beam pipeline option")
    return PipelineOptions(list(args))


class ReadFiles(beam.DoFn):
    """(tag, path) -> (tag, bytes); unreadable files go to FAILED as (tag, reason)."""

    def process(self, element):
        tag, path = element
        try:
            yield tag, read_bytes(path)
        except Exception as e:  # OSError, or a remote filesystem's own errors
            Metrics.counter(COUNTERS, "failed").inc()
            reason = getattr(e, "strerror", None) or first_line(e, 160)
            yield beam.pvalue.TaggedOutput(FAILED, (tag, f"cannot read: {reason}"))


class DecodeImages(beam.DoFn):
    """(tag, encoded bytes) -> (tag, float32 [H, W, 3] in [0, 1]) with the preprocessing
    of training (imaging.decode_and_resize), one image per call; a file that does not
    decode (or declares more than `max_pixels`) goes to FAILED as (tag, reason)."""

    def __init__(self, size: Sequence[int], max_pixels: int):
        self._size = (int(size[0]), int(size[1]))
        self._max_pixels = max_pixels

    def setup(self):
        import tensorflow as tf

        from trxsfr.base import imaging

        size, max_pixels = self._size, self._max_pixels

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
        def decode(data):
            return imaging.decode_and_resize(imaging.within_pixel_limit(data, max_pixels), size)

        self._decode = decode
        self._why = lambda data: imaging.bytes_error(data, size, max_pixels)

    def process(self, element):
        tag, data = element
        try:
            image = self._decode(data).numpy()
        except Exception:  # InvalidArgumentError and kin: the reason is asked below
            Metrics.counter(COUNTERS, "failed").inc()
            yield beam.pvalue.TaggedOutput(FAILED, (tag, self._why(data)))
            return
        yield tag, image


class ForwardHandler(ModelHandler):
    """RunInference's handler for a model that `load()` returns and `forward(model, images)`
    runs: float32 [N, H, W, 3] -> float32 [N, D] (a NumPy array).

    `load` and `forward` are pickled to the workers: module-level functions (or
    functools.partial of them), so each worker process loads the model once.
    """

    def __init__(self, load: Callable[[], Any], forward: Callable[[Any, np.ndarray], np.ndarray],
                 max_batch_size: int, name: str):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self._load, self._forward, self._name = load, forward, name

    def load_model(self):
        return self._load()

    def run_inference(self, batch: Sequence[np.ndarray], model,
                      inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
        outputs = self._forward(model, np.stack(batch))
        return [PredictionResult(None, out) for out in outputs]  # the images are not kept

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return int(sum(image.nbytes for image in batch))

    def get_metrics_namespace(self) -> str:
        return f"{COUNTERS}_{self._name}"


def counters(result) -> dict[str, int]:
    """The pipeline's trxsfr counters, committed values, summed over steps: {name: value}."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(COUNTERS))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def wait(result, what: str) -> None:
    """Wait for a pipeline to finish.

    Raises:
        InputError: it ended in another state than DONE.
    """
    state = result.wait_until_finish()
    if state != beam.runners.runner.PipelineState.DONE:
        raise InputError(f"the {what} pipeline ended {state}")
