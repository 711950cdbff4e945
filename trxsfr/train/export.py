"""Build the serving tf.Module and save it as `<base>/<version>/`, atomically."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from typing import Optional, Sequence

import numpy as np

from trxsfr.base import contract, files
from trxsfr.base.contract import ModelInfo, labels_text
from trxsfr.base.errors import ExportError, first_line, os_errno
from trxsfr.base.files import write_new

log = logging.getLogger(__name__)


def build_module(extractor, weights: np.ndarray, bias: np.ndarray, labels: Sequence[str],
                 asset_paths: Sequence[str], unknown_threshold: Optional[float] = None):
    """A tf.Module: extractor + new layer, with its serving signatures as tf.functions.

    Its attribute, input and output names are those `trxsfr.base.contract` states.
    With `unknown_threshold`, the module also holds it and the signatures output
    `unknown` (top score below it); without, both are absent, as in older models.
    """
    import tensorflow as tf

    from trxsfr.base.imaging import decode_batch

    height, width = extractor.image_size

    class ImageClassifier(tf.Module):
        def __init__(self):
            super().__init__(name="trxsfr_classifier")
            setattr(self, contract.ATTR_EXTRACTOR, extractor.module)
            setattr(self, contract.ATTR_WEIGHTS, tf.Variable(weights, name="final_layer/weights"))
            setattr(self, contract.ATTR_BIAS, tf.Variable(bias, name="final_layer/biases"))
            self.label_strings = tf.constant(list(labels), tf.string)
            if unknown_threshold is not None:
                setattr(self, contract.ATTR_UNKNOWN_THRESHOLD,
                        tf.Variable(np.float32(unknown_threshold), trainable=False,
                                    name="unknown_threshold"))
            self.assets = [tf.saved_model.Asset(p) for p in asset_paths]

        @tf.function(input_signature=[
            tf.TensorSpec([None, height, width, 3], tf.float32, name=contract.INPUT_IMAGES)])
        def predict_images(self, images):
            """float32 [N, H, W, 3] in [0, 1] -> probabilities and ranked classes."""
            features = getattr(self, contract.ATTR_EXTRACTOR)(images)
            logits = (tf.matmul(features, getattr(self, contract.ATTR_WEIGHTS))
                      + getattr(self, contract.ATTR_BIAS))
            probabilities = tf.nn.softmax(logits)
            scores, class_ids = tf.math.top_k(probabilities, k=len(labels))
            outputs = {
                contract.OUTPUT_PROBABILITIES: probabilities,
                contract.OUTPUT_CLASSES: tf.gather(self.label_strings, class_ids),
                contract.OUTPUT_CLASS_IDS: tf.cast(class_ids, tf.int64),
                contract.OUTPUT_SCORES: scores,
            }
            if unknown_threshold is not None:
                outputs[contract.OUTPUT_UNKNOWN] = tf.less(
                    scores[:, 0], getattr(self, contract.ATTR_UNKNOWN_THRESHOLD))
            return outputs

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name=contract.INPUT_BYTES)])
        def predict_bytes(self, image_bytes):
            """Encoded JPEG/PNG/GIF/BMP/WebP bytes [N] -> as predict_images."""
            return self.predict_images(decode_batch(image_bytes, (height, width)))

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name=contract.INPUT_EXAMPLES)])
        def classify(self, inputs):
            """Serialized tf.Example [N], each with one encoded image under
            FEATURE_IMAGE -> ranked classes and scores, as predict_bytes."""
            examples = tf.io.parse_example(
                inputs, {contract.FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string)})
            out = self.predict_bytes(examples[contract.FEATURE_IMAGE])
            return {name: out[name] for name in contract.CLASSIFY_OUTPUTS}

    return ImageClassifier()


def mark_classification_signature(version_dir: str) -> None:
    """Give the classify signature TF Serving's classify method name in saved_model.pb.

    tf.saved_model.save names every signature a predict one, and TF2 has no other way
    to write a classification SignatureDef; tensorflow_model_server with
    --enable_signature_method_name_check refuses Classify on any other. The
    fingerprint, a hash of saved_model.pb among others, is written again after.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(version_dir, contract.SAVED_MODEL_FILE)
    with open(path, "rb") as f:
        saved = saved_model_pb2.SavedModel.FromString(f.read())
    for graph in saved.meta_graphs:
        if contract.SIGNATURE_CLASSIFY in graph.signature_def:
            graph.signature_def[contract.SIGNATURE_CLASSIFY].method_name = contract.METHOD_CLASSIFY
    with open(path, "wb") as f:
        f.write(saved.SerializeToString())
    try:
        from tensorflow.python.saved_model import fingerprinting_utils
    except ImportError:  # a TF without it loads the model all the same
        return
    fingerprinting_utils.write_fingerprint(version_dir)


def check_base_dir(base_dir: str) -> None:
    """Raises InputError if a file is where the model versions' folder would be."""
    files.check_folder(base_dir, "--saved_model_dir")


def save_versioned(extractor, weights, bias, labels: Sequence[str], info: ModelInfo,
                   base_dir: str) -> str:
    """Save the classifier as `<base_dir>/<unix-epoch>/` and return that path.

    The SavedModel is written to a hidden directory inside `base_dir` and renamed
    into place, so TF Serving watching `base_dir` never sees half a version.
    The version is above every existing one; nothing existing is touched.

    Raises:
        InputError: `base_dir` is (inside) a file.
        ExportError: `base_dir` cannot be written.
    """
    import tensorflow as tf

    check_base_dir(base_dir)
    try:
        os.makedirs(base_dir, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create --saved_model_dir {base_dir}: {e.strerror}") from e
    tag = f".trxsfr-tmp-{uuid.uuid4().hex[:12]}"
    staging = os.path.join(base_dir, tag)
    asset_src = os.path.join(base_dir, tag + "-assets")
    os.makedirs(asset_src)
    try:
        label_path = os.path.join(asset_src, contract.LABELS_FILE)
        with open(label_path, "w", encoding="utf-8") as f:
            f.write(labels_text(labels))
        meta_path = os.path.join(asset_src, contract.METADATA_FILE)
        with open(meta_path, "w", encoding="utf-8") as f:
            f.write(info.dumps())
        module = build_module(extractor, weights, bias, labels, [label_path, meta_path],
                              info.unknown_threshold)
        tf.saved_model.save(module, staging, signatures={
            contract.SIGNATURE_BYTES: module.predict_bytes,
            contract.SIGNATURE_IMAGES: module.predict_images,
            contract.SIGNATURE_CLASSIFY: module.classify,
        })
        mark_classification_signature(staging)
        while True:
            version = contract.next_version(base_dir)
            target = os.path.join(base_dir, str(version))
            try:
                os.rename(staging, target)
                break
            except OSError:
                if not os.path.exists(target):
                    raise
                # another export took this number a moment ago: take the next one
    except (OSError, tf.errors.OpError) as e:  # TF's file system errors are OpErrors
        if not isinstance(e, OSError) and os_errno(e) is None:
            raise  # not the disk's fault: a bug, with its traceback
        raise ExportError(f"cannot write a model version under {base_dir}: {first_line(e)}; "
                          f"nothing was left behind (free space or pick another "
                          f"--saved_model_dir)") from e
    finally:
        shutil.rmtree(asset_src, ignore_errors=True)
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return target


def check_labels_file(path: str, labels: Sequence[str]) -> bool:
    """True if `path` already holds exactly these labels, False if it does not exist.

    Raises:
        ExportError: the path exists with other content (it is never replaced).
        InputError: a file is where its folder would be.
    """
    content = labels_text(labels)
    if not os.path.exists(path):
        files.check_folder(os.path.dirname(os.path.abspath(path)),
                           f"--output_labels {path}: its folder")
        return False
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            if f.read() == content:
                return True
    raise ExportError(f"--output_labels {path} exists with other content; "
                      f"pass a new path (the labels are also inside the model)")


def write_labels_file(path: str, labels: Sequence[str]) -> None:
    """Write `--output_labels` (one label per line) unless it already holds them."""
    if check_labels_file(path, labels):
        return
    try:
        write_new(path, labels_text(labels).encode("utf-8"))
    except FileExistsError as e:  # appeared since the check: still never replaced
        raise ExportError(f"--output_labels {path} appeared during the run; pass a new path") from e
