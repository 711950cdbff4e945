"""Keras Applications as frozen image feature vectors (`--tfhub_module keras:NAME`).

The Keras model, its own preprocessing and global average pooling are wrapped
in a plain tf.Module with the TF-Hub feature-vector call (float32 [N, H, W, 3]
in [0, 1] -> float32 [N, D]) and saved once as a SavedModel under
`$TRXSFR_HOME/keras/` (default `~/.cache/trxsfr/keras/`). From then on it is
loaded, fingerprinted, cached and exported exactly like a TF-Hub module.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import uuid

from trxsfr.base.errors import ModuleError

# name -> (keras.applications constructor, its module (for preprocess_input), image size)
APPLICATIONS = {
    "efficientnet_v2_b0": ("EfficientNetV2B0", "efficientnet_v2", 224),
    "efficientnet_v2_b1": ("EfficientNetV2B1", "efficientnet_v2", 240),
    "efficientnet_v2_b2": ("EfficientNetV2B2", "efficientnet_v2", 260),
    "efficientnet_v2_s": ("EfficientNetV2S", "efficientnet_v2", 384),
    "mobilenet_v3_small": ("MobileNetV3Small", "mobilenet_v3", 224),
    "mobilenet_v3_large": ("MobileNetV3Large", "mobilenet_v3", 224),
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2", 224),
    "resnet50": ("ResNet50", "resnet50", 224),
    "convnext_tiny": ("ConvNeXtTiny", "convnext", 224),
}

# "imagenet" for users; tests set None to build random weights without a network.
WEIGHTS = "imagenet"


def home() -> str:
    return os.environ.get("TRXSFR_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "trxsfr")


def _keras_home() -> str:
    """Where Keras' loader looks for downloaded weights before fetching them."""
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def materialize(name: str) -> tuple[str, int]:
    """The local SavedModel directory of `keras:NAME` (built on first use) and its image size.

    Raises:
        ModuleError: unknown name, or the weights cannot be fetched.
    """
    weights = WEIGHTS
    if name not in APPLICATIONS:
        raise ModuleError(f"unknown keras:{name}; supported: "
                          f"{', '.join('keras:' + n for n in sorted(APPLICATIONS))}")
    ctor_name, module_name, size = APPLICATIONS[name]
    tag = weights if weights else "random-seed0"
    target = os.path.join(home(), "keras", f"{name}-{tag}-{size}")
    if os.path.exists(os.path.join(target, "saved_model.pb")):
        return target, size

    import keras
    import tensorflow as tf

    ctor = getattr(keras.applications, ctor_name)
    preprocess = getattr(keras.applications, module_name).preprocess_input
    if not weights:
        keras.utils.set_random_seed(0)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras prints its downloads to stdout
            model = ctor(include_top=False, weights=weights, input_shape=(size, size, 3),
                         pooling="avg")
    except Exception as e:
        url = re.search(r"https?://\S+?(?=[:\s]|$)", str(e))
        tried = f" (tried {url.group(0)})" if url else ""
        raise ModuleError(
            f"could not get the {weights} weights of keras:{name}{tried}; without network, "
            f"copy that file into {os.path.join(_keras_home(), 'models')} "
            f"or pass a local SavedModel directory to --tfhub_module"
        ) from e

    class KerasFeatureVector(tf.Module):
        def __init__(self):
            super().__init__(name=f"keras_{name}")
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def __call__(self, images):
            return self.model(preprocess(images * 255.0), training=False)

    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tf.saved_model.save(KerasFeatureVector(), staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not os.path.exists(os.path.join(target, "saved_model.pb")):
                raise  # else another run built it a moment ago: use that one
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, size
