"""The LiteRT runtime: a network converted to a float32 `.tflite` and run by LiteRT's
interpreter (XNNPACK) instead of TensorFlow's executor, where it gives the same numbers.

On this project's 2 shared CPU cores, LiteRT ran MobileNet-V2 at batch 32 at
1.4-1.5x the images/s of `tf.saved_model.load(...)(images)` in the same process
(issue 23 measured 1.86x on a quieter machine) on 7.4 ms of CPU per image against
TensorFlow's 10.3-11, with features equal to 6e-7 relative. Only the network
moves: decoding stays the one TF preprocessing function
(`imaging.decode_and_resize`), so both runtimes see the same pixels.

What is here, for extraction (`retrain`), `label` and `serve` alike:

- `convert`: a tf.function's concrete function -> float32 `.tflite` bytes (TFLite
  builtin ops only, so LiteRT's own interpreter can run it).
- `Conversions`: conversions cached in a folder, keyed by what was converted (an
  extractor's or model's fingerprint), written atomically, each with the verdict
  of its equivalence check (`*.json`), so a conversion -- or a failure -- is never
  paid twice.
- `InterpreterPool`: interpreters are not thread-safe; the pool lends one to each
  caller and makes another when every one is busy, so as many forward passes run
  at once as there are callers (`imaging.map_batches`' streams, serve's batch threads).
- `prepare`: the decision between runtimes: convert (or take the cached
  conversion), compare its outputs with TensorFlow's on a probe batch
  (`TOLERANCE`), and use LiteRT only if they agree. With `auto`, any failure
  falls back to TensorFlow with one log line saying why; with `litert` it is an error.
- `for_extraction`: an `Extractor` whose forward pass runs on the chosen runtime;
  `extraction_conversion` names its kept conversion, which `extract`'s workers run.

Fine-tuning and `explain` need gradients and stay on TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import threading
import time
from typing import Callable, Optional

import numpy as np

from trxsfr.base import files
from trxsfr.base.config import RUNTIMES, check_runtime
from trxsfr.base.errors import ModelError, first_line

log = logging.getLogger(__name__)

AUTO, TF, LITERT = RUNTIMES

# Largest |LiteRT - TF| over a probe batch, relative to the largest |TF| output, that
# counts as the same function. Both compute in float32 and differ only in the order of
# additions (XNNPACK's kernels against oneDNN's, and the converter folding constants):
# MobileNet-V2's features differed by 6e-7 relative, the tiny fixture's by about 1e-7;
# float32 has 24 bits (6e-8), and rounding differences grow with depth as sqrt(ops),
# staying near 1e-6. A wrong conversion (a dropped op, a misread layout, a different
# resize) differs by 1e-2 or more. 1e-4 sits two orders above the one and two below
# the other, and far below anything that changes a top label.
TOLERANCE = 1e-4
PROBE_IMAGES = 4  # images in the probe batch of the equivalence check

# Below `cli`, nothing writes to stderr; LiteRT's C++ code prints one INFO line when
# its first interpreter is made. The CLI sets this to a context manager that drops
# such lines (cli/native_stderr.py); interpreters are made inside it, one at a time.
native_quiet: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
_MAKING = threading.Lock()


class ConversionError(Exception):
    """A network cannot be converted to, or run or trusted on, LiteRT (message: why)."""


def interpreter_class():
    """The LiteRT interpreter (`ai-edge-litert`) when installed, else `tf.lite.Interpreter`."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


@functools.lru_cache(maxsize=None)  # a package scan; the version cannot change in a process
def runtime_version() -> str:
    """The interpreter's package and version, e.g. "ai-edge-litert 2.3.0"."""
    try:
        from importlib.metadata import version

        return f"ai-edge-litert {version('ai-edge-litert')}"
    except Exception:  # not installed (tf.lite's interpreter then), or no metadata
        import tensorflow as tf

        return f"tf.lite {tf.__version__}"


def threads_per_interpreter() -> int:
    """Threads each interpreter runs its ops on: the usable cores shared among the forward
    passes that run at once (`imaging.FORWARD_STREAMS`; serve's two batch threads), at least 1.

    Measured extracting MobileNet-V2 bottlenecks from 500x375 JPEGs on 2 busy cores, CPU
    per image (less is better): 2 interpreters x 1 thread 12.0-12.5 ms, 1 x 2 threads
    12.5-12.7 ms, 2 x 2 threads 12.7-13.3 ms (XNNPACK's threads spin while they wait for
    each other, and 4 threads on 2 cores wait a lot), 3 x 1 12.9-13.6 ms; TensorFlow 13.8-14.3 ms.
    """
    from trxsfr.base import imaging

    return max(1, imaging.usable_cores() // max(1, imaging.FORWARD_STREAMS))


# ---------------------------------------------------------------- conversion

def convert(concrete_function, trackable) -> bytes:
    """A float32 `.tflite` of `concrete_function` (float32 [N, H, W, 3] in, one tensor out).

    Raises:
        ConversionError: the converter refuses it (e.g. an op TFLite has no builtin for).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_function], trackable)
    # Builtin ops only: TF ops inside a .tflite need TensorFlow's kernels, which LiteRT's
    # own interpreter does not have. No optimizations: float32 weights, float32 math.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        return converter.convert()
    except Exception as e:  # ConverterError and whatever MLIR raises
        raise ConversionError(f"the TFLite converter failed: {first_line(e, 300)}") from e


def image_function(fn: Callable, size: tuple[int, int]):
    """(concrete function, trackable) of `fn` over float32 [None, H, W, 3] images, to convert.

    `fn` is called as TensorFlow calls it (a module's __call__, a signature's output),
    traced once here with the batch left open, so one conversion serves every batch size.
    """
    import tensorflow as tf

    class ImagesToOutput(tf.Module):
        def __init__(self):
            super().__init__(name="trxsfr_litert")
            self.fn = fn  # tracked: the variables it captures are saved with it

        @tf.function(input_signature=[tf.TensorSpec([None, size[0], size[1], 3], tf.float32)])
        def __call__(self, images):
            return fn(images)

    module = ImagesToOutput()
    return module.__call__.get_concrete_function(), module


def relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    """max |other - reference| / max |reference| (inf for another shape or a non-finite value)."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape or not np.all(np.isfinite(other)):
        return float("inf")
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    diff = float(np.max(np.abs(other - reference))) if reference.size else 0.0
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def probe_images(size: tuple[int, int], n: int = PROBE_IMAGES, seed: int = 0) -> np.ndarray:
    """float32 [n, H, W, 3] in [0, 1]: smooth colour gradients with noise, a fixed batch
    that drives every channel of a network through more than a constant image does."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = np.empty((n, height, width, 3), np.float32)
    for k in range(n):
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        t = (xx / max(1, width - 1) + yy / max(1, height - 1)) / 2
        images[k] = c0 + (c1 - c0) * t[..., None] + rng.normal(0, 0.1, (height, width, 3))
    return np.clip(images, 0.0, 1.0)


# ---------------------------------------------------------------- interpreters

# Images per invoke: LiteRT's CPU per image is lowest in small batches, whose activations
# stay in cache. MobileNet-V2 at 224 on this project's 2-core machine, one thread, ms of
# CPU per image: batch 1 6.9, 2 6.8, 4 6.9, 8 7.6, 16 8.6, 32 8.7-9.0; two threads:
# 7.4, 7.2, 7.0, 7.9, -, 8.5. So a call runs its batch (16 in a pipeline, up to 32 in
# `serve`) as invokes of 4; resizing among sizes up to 4 costs 0.1 ms once grown to 4.
MICRO_BATCH = 4


class InterpreterPool:
    """Runs a `.tflite` (float32 [N, H, W, 3] -> float32 [N, ...]) from any number of threads.

    An interpreter may be used by one thread at a time: each call borrows a free one,
    or makes one if every interpreter is busy, so the pool holds as many as calls ever
    ran at once. A call's images go through in invokes of at most `MICRO_BATCH`.
    """

    def __init__(self, model: bytes, threads: Optional[int] = None,
                 micro_batch: int = MICRO_BATCH):
        self.model = model
        self.threads = threads or threads_per_interpreter()
        self.micro_batch = max(1, micro_batch)
        self._free: list = []
        self._lock = threading.Lock()
        self.size = 0  # interpreters made

    def _make(self):
        Interpreter = interpreter_class()
        with _MAKING, native_quiet():
            interpreter = Interpreter(model_content=self.model, num_threads=self.threads)
            inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
            if len(inputs) != 1 or len(outputs) != 1:
                raise ConversionError(f"the .tflite takes {len(inputs)} inputs and gives "
                                      f"{len(outputs)} outputs, not one each")
            # Grown to a whole micro-batch once (10-30 ms); smaller tails then resize cheaply.
            shape = [self.micro_batch, *[int(d) for d in inputs[0]["shape"][1:]]]
            interpreter.resize_tensor_input(inputs[0]["index"], shape, strict=False)
            interpreter.allocate_tensors()
        with self._lock:
            self.size += 1
        return [interpreter, inputs[0]["index"], outputs[0]["index"], self.micro_batch]

    @property
    def sharded(self) -> bool:
        """Whether one call spreads over threads that wait for each other (more than one)."""
        return self.threads > 1

    def reserve(self, count: int, threads: Optional[int] = None) -> None:
        """Make interpreters until there are `count`, before the calls that need them;
        with `threads`, those made from now on run their ops on that many threads.

        A pipeline calls this before it starts: `imaging.batches` lowers the priority of
        every thread started while it iterates (taking them for decode threads), and an
        interpreter starts its XNNPACK threads when it is made. Made lazily, mid-pipeline,
        they ran at nice 19 and extraction fell to 0.6-0.85 of TensorFlow's on a busy machine.
        """
        if threads is not None:
            self.threads = max(1, threads)
        while self.size < count:
            slot = self._make()
            with self._lock:
                self._free.append(slot)

    def __call__(self, images) -> np.ndarray:
        """float32 [N, H, W, 3] (array or tensor) -> the output as a new float32 array."""
        images = np.ascontiguousarray(np.asarray(images, np.float32))
        with self._lock:
            slot = self._free.pop() if self._free else None
        if slot is None:
            slot = self._make()
        try:
            interpreter, inp, out = slot[:3]
            if not len(images):  # XNNPACK takes no empty batch; the output's shape says D
                shape = interpreter.get_output_details()[0]["shape"][1:]
                return np.zeros((0, *[int(d) for d in shape]), np.float32)
            result = None
            for start in range(0, len(images), self.micro_batch):
                chunk = images[start:start + self.micro_batch]
                if len(chunk) != slot[3]:
                    interpreter.resize_tensor_input(inp, list(chunk.shape), strict=False)
                    interpreter.allocate_tensors()
                    slot[3] = len(chunk)
                interpreter.set_tensor(inp, chunk)
                interpreter.invoke()  # releases the GIL: other slots run meanwhile
                part = interpreter.get_tensor(out)  # a copy already
                if result is None:
                    result = np.empty((len(images), *part.shape[1:]), np.float32)
                result[start:start + len(chunk)] = part
            return result
        finally:
            with self._lock:
                self._free.append(slot)


# ---------------------------------------------------------------- cached conversions

@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the equivalence check of one conversion found (its `.json` beside the `.tflite`)."""

    ok: bool
    reason: str  # why not, when not ok
    relative_error: Optional[float]
    tolerance: float
    sha256: Optional[str]  # of the .tflite it judged
    tensorflow: str
    litert: str
    seconds: float  # conversion and check

    def current(self) -> bool:
        """Whether it was reached with the TensorFlow and LiteRT this process runs."""
        import tensorflow as tf

        return self.tensorflow == tf.__version__ and self.litert == runtime_version() \
            and self.tolerance == TOLERANCE


class Conversions:
    """`<folder>/<key>.tflite` and `<key>.json` (its Verdict), written atomically.

    A failed conversion leaves only its `.json`, so `auto` does not try it again with
    the same TensorFlow and LiteRT.
    """

    def __init__(self, folder: str):
        self.folder = folder

    def paths(self, key: str) -> tuple[str, str]:
        return os.path.join(self.folder, key + ".tflite"), os.path.join(self.folder, key + ".json")

    def verdict(self, key: str) -> Optional[Verdict]:
        """The recorded verdict, if any, readable and reached with this TF and LiteRT."""
        try:
            with open(self.paths(key)[1], encoding="utf-8") as f:
                verdict = Verdict(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None  # none yet, or damaged: check again
        return verdict if verdict.current() else None

    def model(self, key: str, sha256: str) -> Optional[bytes]:
        """The cached `.tflite` if its content is the one the verdict judged."""
        try:
            with open(self.paths(key)[0], "rb") as f:
                data = f.read()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    def record(self, key: str, verdict: Verdict, model: Optional[bytes]) -> None:
        """Write the `.tflite` (if any), then its verdict; a failure to write is an info line
        only: the conversion is then paid again next time, nothing else goes wrong (a
        cache that cannot be written fails, when it must be, with the store's own error)."""
        try:
            os.makedirs(self.folder, exist_ok=True)
            if model is not None:
                files.write_replacing(self.paths(key)[0], model)
            files.write_replacing(self.paths(key)[1], json.dumps(
                dataclasses.asdict(verdict), indent=1, sort_keys=True).encode("utf-8"))
        except OSError as e:  # e.g. a read-only cache: this run goes on, the next converts
            log.info("cannot keep the LiteRT conversion in %s (%s); it will be converted "
                     "again next time", self.folder, e.strerror or e)


@dataclasses.dataclass
class Prepared:
    """A network on LiteRT, checked against TensorFlow."""

    forward: InterpreterPool
    sha256: str  # of the .tflite
    relative_error: Optional[float]
    converted: bool  # False: taken from the cache
    seconds: float


def prepare(what: str, key: str, conversions: Conversions, runtime: str,
            to_convert: Callable[[], tuple], reference: Callable[[np.ndarray], np.ndarray],
            size: tuple[int, int]) -> Optional[Prepared]:
    """Decide the runtime of one network: LiteRT (returned) or TensorFlow (None).

    Args:
        what: the network in words, for log lines and errors ("extractor X").
        key: names its conversion in `conversions` (a fingerprint of its weights and size).
        runtime: "tf" (None at once), "litert" (an error if LiteRT cannot take it) or
            "auto" (TensorFlow with one log line saying why).
        to_convert: () -> (concrete function, trackable), for `convert`.
        reference: TensorFlow's forward pass, float32 [N, H, W, 3] -> numpy [N, ...].
        size: (height, width) of its images.

    Raises:
        ModelError: `runtime` is "litert" and the conversion fails or differs from
            TensorFlow by more than TOLERANCE.
    """
    check_runtime(runtime)
    if runtime == TF:
        return None
    start = time.perf_counter()
    verdict = conversions.verdict(key)
    model = conversions.model(key, verdict.sha256) if verdict and verdict.ok else None
    converted = False
    if verdict is not None and not verdict.ok:
        return _refused(what, runtime, verdict.reason + " (found earlier)")
    if model is None:
        converted = True
        try:
            model, error = _convert_and_check(to_convert, reference, size)
        except ConversionError as e:
            reason = str(e)
            conversions.record(key, _verdict(False, reason, None, None, start), None)
            return _refused(what, runtime, reason)
        sha = hashlib.sha256(model).hexdigest()
        verdict = _verdict(True, "", error, sha, start)
        conversions.record(key, verdict, model)
    forward = InterpreterPool(model)
    seconds = time.perf_counter() - start
    how = f"converted in {seconds:.1f}s" if converted else "its cached conversion"
    log.info("%s runs on LiteRT (%s; outputs within %.1g relative of TensorFlow's)", what,
             how, verdict.relative_error or 0.0)
    return Prepared(forward, verdict.sha256, verdict.relative_error, converted, seconds)


def _verdict(ok: bool, reason: str, error: Optional[float], sha: Optional[str],
             start: float) -> Verdict:
    import tensorflow as tf

    return Verdict(ok=ok, reason=reason, relative_error=error, tolerance=TOLERANCE,
                   sha256=sha, tensorflow=tf.__version__, litert=runtime_version(),
                   seconds=round(time.perf_counter() - start, 3))


def _convert_and_check(to_convert, reference, size) -> tuple[bytes, float]:
    """(the .tflite, its relative error on the probe batch), or ConversionError."""
    try:
        model = convert(*to_convert())
    except ConversionError:
        raise
    except Exception as e:  # tracing the function for conversion
        raise ConversionError(f"cannot trace it for conversion: {first_line(e, 300)}") from e
    probe = probe_images(size)
    try:
        got = InterpreterPool(model, threads=1)(probe)
    except Exception as e:  # the interpreter refuses the model or an op fails
        raise ConversionError(f"LiteRT cannot run the conversion: {first_line(e, 300)}") from e
    want = np.asarray(reference(probe))
    error = relative_error(want, got)
    if not error <= TOLERANCE:
        raise ConversionError(f"its outputs differ from TensorFlow's by {error:.2g} relative "
                              f"(tolerance {TOLERANCE:g})")
    return model, error


def _refused(what: str, runtime: str, reason: str) -> None:
    if runtime == LITERT:
        raise ModelError(f"--runtime litert: {what} cannot run on LiteRT: {reason}")
    log.warning("%s runs on TensorFlow, not LiteRT: %s", what, reason)
    return None


# ---------------------------------------------------------------- extraction

def conversion_key(fingerprint: str, size: tuple[int, int]) -> str:
    """Names the conversion of a network with this fingerprint at this image size."""
    return f"{fingerprint[:32]}-{size[0]}x{size[1]}"


@dataclasses.dataclass(frozen=True)
class Conversion:
    """A checked conversion kept in a folder: what another process (a pipeline's worker)
    needs to run exactly the network this one checked. Picklable."""

    folder: str
    key: str
    sha256: str

    def load(self) -> InterpreterPool:
        """The conversion's interpreters.

        Raises:
            ModelError: the `.tflite` is not in `folder`, or not the one that was checked.
        """
        model = Conversions(self.folder).model(self.key, self.sha256)
        if model is None:
            raise ModelError(f"the LiteRT conversion {self.key}.tflite is not in {self.folder} "
                             f"as it was checked (sha256 {self.sha256[:16]}): every worker must "
                             f"see the --bottleneck_dir the pipeline was started with")
        return InterpreterPool(model)


def extraction_conversion(extractor, cache_dir: str) -> Optional[Conversion]:
    """Where `for_extraction(..., cache_dir)` kept the conversion `extractor` runs (None for
    TensorFlow's extractor).

    Raises:
        ModelError: it could not be kept there (e.g. a read-only cache), so no other
            process can run it.
    """
    pool = extractor.fn
    if extractor.runtime == TF or not isinstance(pool, InterpreterPool):
        return None
    conversion = Conversion(os.path.join(cache_dir, "litert"),
                            conversion_key(extractor.fingerprint, extractor.image_size),
                            hashlib.sha256(pool.model).hexdigest())
    if Conversions(conversion.folder).model(conversion.key, conversion.sha256) is None:
        raise ModelError(f"cannot keep the LiteRT conversion of extractor {extractor.handle} "
                         f"in {conversion.folder}, where the workers read it: use a writable "
                         f"--bottleneck_dir, or --runtime tf")
    return conversion


def for_extraction(extractor, runtime: str, cache_dir: str):
    """The extractor that computes bottleneck vectors: `extractor` itself on TensorFlow,
    or a copy whose forward pass is LiteRT's, its conversion kept under
    `<cache_dir>/litert/`. Its `runtime` names the store its vectors go to.

    Raises:
        ModelError: `runtime` is "litert" and LiteRT cannot run the extractor.
    """
    import tensorflow as tf

    size = extractor.image_size
    prepared = prepare(
        f"extractor {extractor.handle}", conversion_key(extractor.fingerprint, size),
        Conversions(os.path.join(cache_dir, "litert")), runtime,
        lambda: image_function(extractor.fn, size),
        lambda images: extractor.fn(tf.constant(images)).numpy(), size)
    if prepared is None:
        return extractor
    return dataclasses.replace(extractor, fn=prepared.forward,
                               runtime=f"litert-{prepared.sha256[:16]}")
