"""Resolve a feature-extractor handle (URL, local SavedModel dir, shortcut name) and load it."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
from typing import Any, Callable, Optional

import numpy as np

from trxsfr.base.errors import ModuleError, first_line, saved_model_failure

log = logging.getLogger(__name__)

_TFHUB = "https://tfhub.dev/google/imagenet"


def _shortcuts() -> dict[str, tuple[str, int]]:
    table = {
        "mobilenet_v2_100_224": (f"{_TFHUB}/mobilenet_v2_100_224/feature_vector/5", 224),
        "inception_v3": (f"{_TFHUB}/inception_v3/feature_vector/5", 299),
        "resnet_v2_50": (f"{_TFHUB}/resnet_v2_50/feature_vector/5", 224),
    }
    for width in ("100", "075", "050", "025"):
        for size in (224, 192, 160, 128):
            name = f"mobilenet_v1_{width}_{size}"
            table[name] = (f"{_TFHUB}/{name}/feature_vector/5", size)
    return table


# Shortcut name -> (TF-Hub URL, image size). TF-Hub URLs resolve to Kaggle Models.
SHORTCUTS = _shortcuts()


def architecture_to_shortcut(architecture: str) -> str:
    """The codelab's `--architecture` names (`mobilenet_0.50_224`, `inception_v3`) as shortcuts."""
    if architecture in SHORTCUTS:
        return architecture
    m = re.fullmatch(r"mobilenet(_v[12])?_([0-9.]+)_(\d+)(_quantized)?", architecture)
    if m:
        version = m.group(1) or "_v1"
        try:
            width = f"{round(float(m.group(2)) * 100):03d}"
        except ValueError:
            width = ""
        name = f"mobilenet{version}_{width}_{m.group(3)}"
        if name in SHORTCUTS:
            return name
    raise ModuleError(
        f"unknown --architecture {architecture!r}; known: mobilenet_<1.0|0.75|0.50|0.25>_"
        f"<224|192|160|128>, mobilenet_v2_1.0_224, inception_v3, or pass --tfhub_module"
    )


@dataclasses.dataclass(frozen=True)
class ResolvedHandle:
    handle: str  # what the user gave
    location: str  # URL or absolute local path that hub.load takes
    image_size: Optional[int]  # from the shortcut table, if any


def resolve(handle: str) -> ResolvedHandle:
    """Map a shortcut name to its URL; check that a local path exists."""
    if handle in SHORTCUTS:
        url, size = SHORTCUTS[handle]
        return ResolvedHandle(handle, url, size)
    if handle.startswith("keras:"):
        from trxsfr.base import keras_apps

        path, size = keras_apps.materialize(handle[len("keras:"):])
        return ResolvedHandle(handle, path, size)
    if "://" in handle:
        return ResolvedHandle(handle, handle, None)
    path = os.path.abspath(os.path.expanduser(handle))
    if not os.path.exists(path):
        raise ModuleError(
            f"module {handle} is neither a shortcut name ({', '.join(sorted(SHORTCUTS)[:3])}, ...), "
            f"a URL, nor an existing directory"
        )
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ModuleError(f"module {handle} is not a SavedModel directory (no saved_model.pb)")
    return ResolvedHandle(handle, path, None)


@dataclasses.dataclass
class Extractor:
    """A loaded image feature vector: float32 [N, H, W, 3] in [0, 1] -> float32 [N, dim]."""

    handle: str
    location: str  # local directory the model was loaded from
    image_size: tuple[int, int]
    dim: int
    fingerprint: str  # hex digest of the module's graph and variable files
    module: Any  # the object hub.load returned; tracked by the exported model
    fn: Callable  # images -> features
    # What runs `fn`: "tf", or "litert-<digest of the .tflite>" (base/litert.for_extraction);
    # bottleneck stores key their vectors by it.
    runtime: str = "tf"

    def __call__(self, images):
        return self.fn(images)

    @property
    def sharded(self) -> bool:
        """Whether a forward pass spreads over threads that wait for each other, so that a
        decode thread preempting one stalls it (TensorFlow's ops; a LiteRT interpreter with
        more than one thread): then pipelines lower decoding's priority (`imaging.batches`)."""
        return getattr(self.fn, "sharded", True)

    def reserve(self, streams: int) -> None:
        """Make what `streams` forward passes at once need before a pipeline starts
        (LiteRT's interpreters; see litert.InterpreterPool.reserve). Nothing for TF."""
        reserve = getattr(self.fn, "reserve", None)
        if reserve is not None:
            reserve(streams)

    def features(self, images) -> np.ndarray:
        """float32 [N, dim] as a numpy array, whichever runtime computes it."""
        return np.asarray(self.fn(images), np.float32)

    @property
    def trainable_variables(self) -> list:
        """The module's trainable variables: its own list (TF-Hub's reusable SavedModel
        convention) or else those its call signature captures."""
        own = getattr(self.module, "trainable_variables", None)
        if own:
            return list(own)
        found = {}
        call = getattr(self.module, "__call__", None)
        for concrete in getattr(call, "concrete_functions", []) or []:
            for v in concrete.trainable_variables:
                found[id(v)] = v
        return list(found.values())


def fingerprint_dir(path: str) -> str:
    """sha256 over a SavedModel's graph and variable files (names and contents)."""
    digest = hashlib.sha256()
    paths = [os.path.join(path, "saved_model.pb")]
    var_dir = os.path.join(path, "variables")
    if os.path.isdir(var_dir):
        paths += sorted(os.path.join(var_dir, n) for n in os.listdir(var_dir))
    for p in paths:
        digest.update(os.path.relpath(p, path).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _input_shapes(module) -> list:
    """Shapes of the first argument of the module's traced call signatures."""
    call = getattr(module, "__call__", None)
    shapes = []
    for concrete in getattr(call, "concrete_functions", []) or []:
        args, _ = concrete.structured_input_signature
        if args and hasattr(args[0], "shape"):
            shapes.append(args[0].shape)
    return shapes


def _fixed_input_size(shapes) -> Optional[tuple[int, int]]:
    """The (height, width) the call signatures fix, if they do."""
    for shape in shapes:
        if shape.rank == 4 and shape[1] is not None and shape[2] is not None:
            return int(shape[1]), int(shape[2])
    return None


_TFHUB_CACHE_DIR = "TFHUB_CACHE_DIR"


@contextlib.contextmanager
def _tfhub_cache(cache_dir: Optional[str]):
    """TF-Hub's download cache is `cache_dir` inside the block (it reads only its
    TFHUB_CACHE_DIR variable or an absl flag); the variable is restored after."""
    if not cache_dir:
        yield
        return
    before = os.environ.get(_TFHUB_CACHE_DIR)
    os.environ[_TFHUB_CACHE_DIR] = os.path.abspath(os.path.expanduser(cache_dir))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_TFHUB_CACHE_DIR, None)
        else:
            os.environ[_TFHUB_CACHE_DIR] = before


def _local_dir(location: str, cache_dir: Optional[str] = None) -> str:
    if os.path.isdir(location):
        return location
    import tensorflow_hub as hub

    try:
        with _tfhub_cache(cache_dir):
            return hub.resolve(location)
    except Exception as e:  # network, HTTP, archive errors all mean the same to a user
        raise ModuleError(
            f"could not fetch module {location} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"check the network or pass a local SavedModel directory with --tfhub_module"
        ) from e


def load(handle: str, image_size: Optional[int] = None,
         cache_dir: Optional[str] = None) -> Extractor:
    """Load an image feature-vector module with `hub.load` and check what it computes.

    Args:
        handle: shortcut name, TF-Hub/Kaggle URL or local SavedModel directory.
        image_size: wanted input size; required when the module does not fix it
            and the handle is not a shortcut.
        cache_dir: where a downloaded module is kept (TF-Hub's cache); None: TF-Hub's
            default (TFHUB_CACHE_DIR or a temporary folder).

    Raises:
        ModuleError: the handle cannot be loaded, is not an image feature vector,
            or rejects `image_size`.
    """
    import tensorflow as tf
    import tensorflow_hub as hub

    resolved = resolve(handle)
    location = _local_dir(resolved.location, cache_dir)
    try:
        module = hub.load(location)
    except Exception as e:
        reason = (saved_model_failure(location, e) if os.path.isdir(location)
                  else first_line(e, 10_000))
        raise ModuleError(f"could not load module {handle}: {reason}") from e
    if not callable(module):
        raise ModuleError(
            f"module {handle} is not callable: trxsfr needs a TF2 image feature-vector "
            f"SavedModel (images -> [N, D]); TF1 Hub format modules are not supported"
        )
    shapes = _input_shapes(module)
    if shapes and not any(s.rank in (None, 4) and s[-1] in (None, 3) if s.rank else True
                          for s in shapes):
        raise ModuleError(
            f"module {handle} takes {shapes[0]} inputs, not float32 [N, H, W, 3] images; "
            f"it is not an image feature vector"
        )
    fixed = _fixed_input_size(shapes)
    if fixed and image_size and (image_size, image_size) != fixed:
        raise ModuleError(
            f"module {handle} takes {fixed[0]}x{fixed[1]} images; --image_size {image_size} does not fit"
        )
    size = fixed or ((image_size, image_size) if image_size else None)
    if size is None and resolved.image_size:
        size = (resolved.image_size, resolved.image_size)
    if size is None:
        raise ModuleError(f"module {handle} does not say its image size; pass --image_size")
    try:
        probe = module(tf.zeros([1, size[0], size[1], 3], tf.float32))
    except Exception as e:
        raise ModuleError(
            f"module {handle} rejects float32 [1, {size[0]}, {size[1]}, 3] images; "
            f"it is not an image feature vector of that size"
        ) from e
    if isinstance(probe, dict) or not hasattr(probe, "shape") or probe.shape.rank != 2 \
            or probe.dtype != tf.float32:
        raise ModuleError(
            f"module {handle} does not return a float32 [N, D] feature vector "
            f"(got {getattr(probe, 'shape', type(probe).__name__)}); use a feature_vector module"
        )
    dim = int(probe.shape[1])
    if "classification" in handle and not handle.startswith("keras:"):
        raise ModuleError(
            f"module {handle} is a classification model; use its feature_vector variant"
        )
    return Extractor(
        handle=handle,
        location=location,
        image_size=size,
        dim=dim,
        fingerprint=fingerprint_dir(location),
        module=module,
        fn=module,
    )
