"""`export-tflite`: convert an exported classifier to TFLite, optionally quantized.

`trxsfr.use.interpreter` runs the result like a SavedModel. A converted model takes float32 [1, H, W, 3] in [0, 1] (the images that
`imaging.decode_and_resize` makes) and returns probabilities float32 [1, C].
Decoding stays outside the model, in the same TF function that training and
`label` use, so a .tflite is evaluated on exactly the pixels the SavedModel sees.

Beside `model.tflite` the export writes two small files (never the model alone):

- `model.labels.txt`: the labels, one per line, in class-id order (the usual
  TFLite image-classification companion file);
- `model.trxsfr.json`: the source model's ModelInfo plus how it was converted.

Several variants (none, dynamic, float16, int8) can therefore share a folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Iterator, Optional

import numpy as np

from trxsfr.base import contract, files
from trxsfr.base.contract import TFLiteInfo, labels_text
from trxsfr.base.errors import ExportError, InputError, first_line
from trxsfr.base.files import write_new
from trxsfr.use.classifier import Classifier

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "dynamic", "float16", "int8", "int8_per_tensor")
CALIBRATED_MODES = ("int8", "int8_per_tensor")
MAX_REPRESENTATIVE_IMAGES = 200


def _representative_images(image_dir: str, size: tuple[int, int], limit: int) -> list[np.ndarray]:
    """Up to `limit` images under `image_dir` as float32 [1, H, W, 3] in [0, 1], in a stable order.

    Files are spread over the whole sorted listing (every k-th), so calibration
    sees every class folder, and decoded by `imaging.decode_and_resize`.
    """
    from trxsfr.base import imaging, listing

    if not os.path.isdir(image_dir):
        raise InputError(f"--representative_dir {image_dir} is not a directory")
    files = [f for f in listing.list_files(image_dir) if listing.is_image_name(f)]
    if not files:
        raise InputError(f"--representative_dir {image_dir} holds no image files "
                         f"({', '.join(listing.IMAGE_EXTENSIONS)})")
    step = max(1, len(files) // limit)
    chosen = [os.path.join(image_dir, f) for f in files[::step][:limit]]
    images = []
    for _, batch in imaging.image_dataset(chosen, size, 1):
        images.append(batch.numpy())
    if not images:
        raise InputError(f"no image under --representative_dir {image_dir} decodes")
    return images


def convert(model: str, out: str, quantize: str = "none",
            representative_dir: Optional[str] = None,
            max_representative_images: int = MAX_REPRESENTATIVE_IMAGES) -> dict:
    """Convert an exported trxsfr model to a .tflite file with its labels beside it.

    Args:
        model: a version directory or a base directory (its highest version).
        out: path of the new .tflite file; it and its sidecars must not exist.
        quantize: "none" (float32), "dynamic" (int8 weights, float activations),
            "float16" (float16 weights), "int8" (integer weights and
            activations, calibrated on `representative_dir`; float input/output;
            a scale per output channel), or "int8_per_tensor" (the same with one
            scale per weight tensor: a smaller file, for accelerators that take
            only that; less accurate where channels' ranges differ widely, as in
            depthwise convolutions).
        representative_dir: images to calibrate int8 activation ranges on
            (e.g. the training folder); required for the int8 modes.
        max_representative_images: calibration images used at most.

    Returns:
        {"path", "labels_path", "metadata_path", "bytes", "seconds", "quantize"}.

    Raises:
        InputError: unknown mode, missing or empty representative dir, bad --out.
        ExportError: `out` or a sidecar exists, or conversion fails.
        ModelError: `model` is not a trxsfr model.
    """
    import tensorflow as tf

    if quantize not in QUANTIZE_MODES:
        raise InputError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize}")
    if not out.endswith(contract.TFLITE_SUFFIX):
        raise InputError(f"--out {out} must end in {contract.TFLITE_SUFFIX}")
    if max_representative_images < 1:
        raise InputError("--max_representative_images must be positive")
    if quantize in CALIBRATED_MODES and not representative_dir:
        raise InputError(f"--quantize {quantize} calibrates activations on real images: "
                         f"pass --representative_dir (e.g. your training image folder)")
    labels_path, meta_path = contract.tflite_sidecars(out)
    for path in (out, labels_path, meta_path):
        if os.path.exists(path):
            raise ExportError(f"{path} already exists; pass a new --out (nothing is overwritten)")
    # A missing folder is created (as `report` does); a file in its way is named.
    files.check_folder(os.path.dirname(os.path.abspath(out)), f"--out {out}: its folder")
    if contract.is_tflite(model):
        raise InputError(f"--model {model} is already a {contract.TFLITE_SUFFIX}; export-tflite converts the "
                         f"SavedModel it came from (its version dir or base dir)")

    clf = Classifier(model)
    height, width = clf.image_size
    start = time.perf_counter()
    images_fn = clf.saved_model.signatures[contract.SIGNATURE_IMAGES]

    class ProbabilitiesOnly(tf.Module):
        """The classifier on one float image, probabilities out (TFLite has no string outputs)."""

        def __init__(self):
            super().__init__(name="trxsfr_tflite")
            self.model = clf.saved_model

        @tf.function(input_signature=[
            tf.TensorSpec([1, height, width, 3], tf.float32, name=contract.INPUT_IMAGES)])
        def serve(self, images):
            probabilities = images_fn(**{contract.INPUT_IMAGES: images})[
                contract.OUTPUT_PROBABILITIES]
            return {contract.OUTPUT_PROBABILITIES: probabilities}

    module = ProbabilitiesOnly()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    calibration_count = 0
    if quantize in CALIBRATED_MODES:
        calibration = _representative_images(representative_dir, (height, width),
                                             max_representative_images)
        calibration_count = len(calibration)

        def representative() -> Iterator[list]:
            for image in calibration:
                yield [image]

        converter.representative_dataset = representative
        # Integer kernels everywhere; input and output stay float32 so callers need not care.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if quantize == "int8_per_tensor":
        if not hasattr(converter, "_experimental_disable_per_channel"):
            raise ExportError(f"TensorFlow {tf.__version__}'s converter has no per-tensor "
                              f"quantization switch; use --quantize int8")
        converter._experimental_disable_per_channel = True  # TF's own (experimental) switch
    try:
        flatbuffer = converter.convert()
    except Exception as e:
        raise ExportError(f"TFLite conversion ({quantize}) of {clf.path} failed: "
                          f"{first_line(e, 300)}") from e
    seconds = time.perf_counter() - start

    info = dataclasses.replace(clf.info, labels=tuple(clf.labels), tflite=TFLiteInfo(
        quantize=quantize, source_model=os.path.abspath(clf.path), image_size=(height, width),
        calibration_images=calibration_count, tensorflow_version=tf.__version__,
        created=int(time.time())))
    _write_new(labels_path, labels_text(clf.labels).encode("utf-8"))
    _write_new(meta_path, info.dumps().encode("utf-8"))
    _write_new(out, flatbuffer)  # last: a .tflite present means its sidecars are too
    log.info("wrote %s (%s, %.1f MB) in %.1fs", out, quantize, len(flatbuffer) / 1e6, seconds)
    return {"path": out, "labels_path": labels_path, "metadata_path": meta_path,
            "bytes": len(flatbuffer), "seconds": seconds, "quantize": quantize}


def _write_new(path: str, data: bytes) -> None:
    try:
        write_new(path, data)
    except FileExistsError as e:
        raise ExportError(f"{path} already exists; pass a new --out (nothing is overwritten)") from e
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror}") from e



