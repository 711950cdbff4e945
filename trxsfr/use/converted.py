"""A SavedModel whose network runs on a LiteRT conversion where that gives its numbers.

`label --runtime` and `serve --runtime` load a SavedModel as a `ConvertedClassifier`:
a `Classifier` (labels, ModelInfo, the TensorFlow signatures) whose forward pass
-- the images signature, extractor and head together -- runs on a float32 `.tflite`
of itself when LiteRT's outputs match TensorFlow's on a probe batch
(`litert.prepare`). Decoding stays the one TF preprocessing function; only the
network moves.

The conversion is kept under `$TRXSFR_HOME/litert/` (default `~/.cache/trxsfr`),
named by the fingerprint of the version's graph and variables: a version directory
is the user's artefact, which TF Serving may be watching, and is never written into.

When `auto` converts (`AUTO_CONVERT_MIN_IMAGES`): converting a MobileNet-V2
classifier costs 2-4 s once, and LiteRT then saves about 2-3 ms per image on 2
cores; a cached conversion costs 0.05-0.2 s to load (less than TensorFlow's first
call of the model). So `auto` uses a cached conversion for any number of images,
and converts on a first run only when it labels at least `AUTO_CONVERT_MIN_IMAGES`
images (a one-image `label` never waits for a conversion) or serves.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Optional, Sequence

import numpy as np

from trxsfr.base import contract, litert
from trxsfr.base.config import FORWARD_BATCH_SIZE, MAX_IMAGE_PIXELS, ProgressFn
from trxsfr.base.errors import ModelError
from trxsfr.use.classifier import Classifier, Predictions

log = logging.getLogger(__name__)

# A first `label` run converts under `auto` from this many images on; see the module doc.
AUTO_CONVERT_MIN_IMAGES = 200


def conversions() -> litert.Conversions:
    """Where conversions of exported models are kept: `$TRXSFR_HOME/litert/`."""
    from trxsfr.base.keras_apps import home

    return litert.Conversions(os.path.join(home(), "litert"))


class ConvertedClassifier(Classifier):
    """A SavedModel run on LiteRT or TensorFlow, as `runtime` ("auto", "tf", "litert") decides.

    The decision is taken once, at the first prediction (`predict_paths` knows how many
    images follow) or by `prepare`; its cost counts in `load_seconds`.
    """

    def __init__(self, path: str, runtime: str = litert.AUTO):
        litert.check_runtime(runtime)
        super().__init__(path)
        self.requested_runtime = runtime
        self._lite: Optional[litert.Prepared] = None
        self._decided = False
        self._deciding = threading.Lock()

    def prepare(self, images: Optional[int] = None) -> bool:
        """Decide the runtime (once); True if LiteRT runs the model.

        Args:
            images: how many images the caller will predict; None: many (a server).

        Raises:
            ModelError: runtime "litert" and LiteRT cannot run this model as TensorFlow does.
        """
        with self._deciding:
            if not self._decided:
                start = time.perf_counter()
                self._lite = self._decide(images)
                self._decided = True
                self.load_seconds += time.perf_counter() - start
        return self._lite is not None

    def _decide(self, images: Optional[int]) -> Optional[litert.Prepared]:
        runtime = self.requested_runtime
        what = f"model {self.path}"
        if runtime == litert.TF:
            return None
        if self.needs_own_decode:  # predictions go through its own bytes signature
            if runtime == litert.LITERT:
                raise ModelError(f"--runtime litert: {what} decodes images with its own "
                                 f"signature (older preprocessing), which only TensorFlow runs")
            return None
        from trxsfr.base import extractors

        size = self.image_size
        key = litert.conversion_key(extractors.fingerprint_dir(self.path), size)
        store = conversions()
        if runtime == litert.AUTO and images is not None and images < AUTO_CONVERT_MIN_IMAGES:
            verdict = store.verdict(key)
            if verdict is None:
                log.debug("%s runs on TensorFlow: converting it for LiteRT would cost more "
                          "than %d images save (a conversion starts from %d images, or with "
                          "--runtime litert)", what, images, AUTO_CONVERT_MIN_IMAGES)
                return None
        signature = self.saved_model.signatures[contract.SIGNATURE_IMAGES]

        def probabilities(images):
            return signature(**{contract.INPUT_IMAGES: images})[contract.OUTPUT_PROBABILITIES]

        return litert.prepare(what, key, store, runtime,
                              lambda: litert.image_function(probabilities, size),
                              lambda x: super(ConvertedClassifier, self)._forward(x), size)

    def reserve(self, streams: int, threads: Optional[int] = None) -> None:
        """Make the interpreters `streams` forward passes at once need, now, each running
        its ops on `threads` threads (default: the cores shared among the streams);
        LiteRT only."""
        if self._lite is not None:
            self._lite.forward.reserve(streams, threads)

    @property
    def on_litert(self) -> bool:
        return self._lite is not None

    @property
    def interpreters(self) -> Optional[tuple[int, int]]:
        """(interpreters made, threads each runs its ops on), or None on TensorFlow."""
        if self._lite is None:
            return None
        return self._lite.forward.size, self._lite.forward.threads

    @property
    def demote_decoding(self) -> bool:
        """Single-threaded interpreters leave nothing for a decode thread to stall: decoding
        then keeps its priority (measured on 2 busy cores: 24-30 images/s against 10-18
        demoted, and 14.2 against 15.4-16.1 ms of CPU per image)."""
        return self._lite is None or self._lite.forward.sharded

    @property
    def runtime(self) -> str:
        if self._lite is not None:
            return f"LiteRT ({litert.runtime_version()}), float32 conversion of the SavedModel"
        return super().runtime

    def _forward(self, images) -> np.ndarray:
        if not self._decided:
            self.prepare(None)
        if self._lite is not None:
            return self._lite.forward(images)
        return super()._forward(images)

    def predict_paths(self, paths: Sequence[str], batch_size: int = FORWARD_BATCH_SIZE,
                      on_progress: Optional[ProgressFn] = None,
                      max_pixels: int = MAX_IMAGE_PIXELS) -> Predictions:
        """As `Classifier.predict_paths`; the runtime is decided first, outside its seconds."""
        if paths and self.prepare(len(paths)):
            from trxsfr.base import imaging

            # Before the pipeline starts; as many as batches run at once (one image: one).
            batches = -(-len(paths) // max(1, batch_size))
            self._lite.forward.reserve(min(imaging.FORWARD_STREAMS, batches))
        return super().predict_paths(paths, batch_size, on_progress, max_pixels)
