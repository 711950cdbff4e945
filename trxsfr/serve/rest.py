"""TF Serving's REST wire format for a trxsfr model: request bodies in, JSON out.

`parse_request` reads a `:predict` body in the row ("instances") or columnar
("inputs") format, for either signature: encoded images as `{"b64": ...}` to
the bytes signature, or float32 [N, H, W, 3] in [0, 1] to the images
signature. It checks names, shapes, value ranges and the per-request limits,
and reads each encoded image's header (format, animation, pixel count) without
decoding it. `format_response` turns probabilities into TF Serving's
"predictions" or "outputs". Anything wrong is a `BadRequest` whose message is
the `{"error": ...}` the client gets. JSON nested deeper than `MAX_JSON_DEPTH` is
refused before it is decoded, an integer of more than `MAX_INT_DIGITS` digits as it is.

`parse_classify_request` reads a `:classify` body (`"examples"`, optional
`"context"`: features as TF Serving's REST API takes them, the encoded image under
`FEATURE_IMAGE`) and `format_classify_response` writes its `"results"`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import re
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from trxsfr.base.config import ServeConfig
from trxsfr.base.contract import (
    FEATURE_IMAGE,
    INPUT_BYTES,
    INPUT_EXAMPLES,
    INPUT_IMAGES,
    OUTPUT_CLASS_IDS,
    OUTPUT_CLASSES,
    OUTPUT_PROBABILITIES,
    OUTPUT_SCORES,
    OUTPUT_UNKNOWN,
    SIGNATURE_BYTES,
    SIGNATURE_CLASSIFY,
    SIGNATURE_IMAGES,
    is_unknown,
)
from trxsfr.base.listing import FORMAT_NAMES

if TYPE_CHECKING:
    from trxsfr.serve.versions import LoadedVersion

# Pillow's names of the formats tf.io.decode_image reads (MPO: a camera's JPEG).
DECODABLE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")

# A request nests 3 (b64 images) to 6 (float images, columnar, input named) levels deep.
# Deeper JSON is refused before it is decoded: Python's decoder recurses in C once per
# level and has no limit of its own but the interpreter's recursion limit.
MAX_JSON_DEPTH = 64
# Longest integer accepted in a request. Python converts a decimal string to an int in
# quadratic time (and refuses more than 4,300 digits); floats convert in linear time.
MAX_INT_DIGITS = 100


# TF Serving's status code for each HTTP status it answers (its http_server.cc, reversed).
_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
          408: "DEADLINE_EXCEEDED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
          500: "INTERNAL", 503: "UNAVAILABLE"}
# A configured limit (images per request, pixels, message size): the gRPC status of a
# request over one. REST keeps answering those with a 400.
LIMIT = "RESOURCE_EXHAUSTED"


# The signatures of trxsfr's models that Predict runs (REST and gRPC), and the input each takes.
PREDICT_INPUTS = {SIGNATURE_BYTES: INPUT_BYTES, SIGNATURE_IMAGES: INPUT_IMAGES,
                  SIGNATURE_CLASSIFY: INPUT_EXAMPLES}


class BadRequest(Exception):
    """The client sent something we cannot serve: HTTP 400 (or `status`) with this message.

    `code` is the gRPC status (a `grpc.StatusCode` name) TF Serving gives the same error;
    by default the one its REST API maps to `status`.
    """

    def __init__(self, message: str, status: int = 400, code: str = ""):
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "INVALID_ARGUMENT")


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One encoded image of a request, its header already checked."""

    data: bytes
    where: str  # "image 3", for error messages
    format: str  # PIL's name: JPEG, PNG, ...


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, dict) or set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise BadRequest(f"{where}: binary image data must be given as {{\"b64\": \"<base64 string>\"}}, "
                         f"got {_describe(value)}")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{where}: the \"b64\" value is not valid base64 ({e})") from e


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "an object with keys " + ", ".join(repr(k) for k in list(value)[:5])
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return type(value).__name__ if value is not None else "null"


@dataclasses.dataclass
class ParsedRequest:
    signature: str
    row_format: bool
    images: Any  # float32 [N, H, W, 3] in [0, 1], or a list of N `Encoded`


def parse_request(body: bytes, lv: LoadedVersion, config: ServeConfig) -> ParsedRequest:
    """Parse a TF Serving :predict body and check its images for `lv` (headers and limits).

    Raises:
        BadRequest: anything wrong with the body, its names, its data or the limits.
    """
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise BadRequest(f"the request body must be a JSON object with \"instances\" or \"inputs\", "
                         f"got {_describe(doc)}")
    signature = doc.get("signature_name") or SIGNATURE_BYTES
    # classify only when the model has it (serialized tf.Example, as {"b64": ...})
    inputs = {name: tensor for name, tensor in PREDICT_INPUTS.items()
              if name != SIGNATURE_CLASSIFY or name in lv.signature_defs}
    if signature not in inputs:
        names = ", ".join(json.dumps(n) for n in inputs)
        raise BadRequest(f"Serving signature name: \"{signature}\" not found in signature def "
                         f"(this model has {names})")
    unknown = set(doc) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise BadRequest(f"unknown key(s) {', '.join(sorted(map(repr, unknown)))} in the request; "
                         f"expected \"signature_name\" and \"instances\" or \"inputs\"")
    if ("instances" in doc) == ("inputs" in doc):
        raise BadRequest("the request must have exactly one of \"instances\" (row format) "
                         "or \"inputs\" (columnar format)")
    input_name = inputs[signature]
    row = "instances" in doc
    if row:
        values = doc["instances"]
        if not isinstance(values, list):
            raise BadRequest(f"\"instances\" must be a list, got {_describe(values)}")
        values = [_unwrap_named(v, input_name, signature, f"instance {i}") for i, v in enumerate(values)]
    else:
        values = doc["inputs"]
        if isinstance(values, dict) and "b64" not in values:
            values = _unwrap_named(values, input_name, signature, "\"inputs\"")
        if not isinstance(values, list):
            raise BadRequest(f"\"inputs\" must hold a list of images for input \"{input_name}\", "
                             f"got {_describe(values)}")
    check_image_count(len(values), config)
    if signature == SIGNATURE_BYTES:
        images = [checked_image(_b64(v, f"image {i}"), config, f"image {i}")
                  for i, v in enumerate(values)]
    elif signature == SIGNATURE_CLASSIFY:
        images = serialized_example_images([_b64(v, f"example {i}") for i, v in enumerate(values)],
                                           config)
    else:
        images = _float_images(values, lv.image_size)
    return ParsedRequest(signature, row, images)


def signature_outputs(answer: dict, lv: LoadedVersion, signature: str) -> dict:
    """`format_response`'s answer with only the outputs `signature` declares (the classify
    signature has two)."""
    declared = lv.signature_defs.get(signature, {}).get("outputs")
    if not declared:
        return answer
    if "predictions" in answer:
        return {"predictions": [{k: v for k, v in row.items() if k in declared}
                                for row in answer["predictions"]]}
    return {"outputs": {k: v for k, v in answer["outputs"].items() if k in declared}}


def check_image_count(count: int, config: ServeConfig) -> None:
    """BadRequest unless 1 <= count <= max_images_per_request."""
    if not count:
        raise BadRequest("the request holds no images")
    if count > config.max_images_per_request:
        raise BadRequest(f"the request holds {count} images; at most "
                         f"{config.max_images_per_request} are allowed per request", code=LIMIT)


def load_json(body: bytes) -> Any:
    """The decoded body, or BadRequest: not JSON, nested deeper than MAX_JSON_DEPTH, or
    holding an integer of more than MAX_INT_DIGITS digits."""
    brackets = _brackets(body)
    # The nesting cannot pass the number of brackets that open it: a body of b64 images
    # has a few, and only float images (or abuse) need the running sum.
    if brackets.count(b"[") + brackets.count(b"{") > MAX_JSON_DEPTH:
        depth = _deepest(brackets)
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"the request body's JSON is nested {depth:,} levels deep; "
                             f"at most {MAX_JSON_DEPTH} are allowed")
    try:
        return json.loads(body, parse_int=_bounded_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from e


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise BadRequest(f"the request body holds an integer of {digits:,} digits; at most "
                         f"{MAX_INT_DIGITS} are allowed")
    return int(text)


def json_depth(text: bytes) -> int:
    """How deep the brackets of a JSON text nest, those inside strings aside; the text
    need not be valid JSON."""
    return _deepest(_brackets(text))


# Every byte but the brackets and the quote, dropped by bytes.translate.
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'[]{}"')))
_STRING = re.compile(rb'"[^"]*"')


def _brackets(text: bytes) -> bytes:
    r"""The brackets of a JSON text that are outside its strings, in order.

    Linear passes in C: escaped backslashes and quotes go first (once every \\ pair is
    gone, a \" left is a quote inside a string), then every byte but brackets and
    quotes, then the strings.
    """
    if b"\\" in text:
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    return _STRING.sub(b"", text.translate(None, _NOT_STRUCTURE)).replace(b'"', b"")


def _deepest(brackets: bytes) -> int:
    """The deepest level a sequence of brackets reaches (a running sum, in numpy)."""
    codes = np.frombuffer(brackets, np.uint8)
    deepest, level, chunk = 0, 0, 1 << 20  # chunks bound the memory of the running sums
    for start in range(0, len(codes), chunk):
        part = codes[start:start + chunk]
        levels = np.cumsum(np.where((part == ord("[")) | (part == ord("{")), 1, -1),
                           dtype=np.int64) + level
        deepest, level = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _unwrap_named(value: Any, input_name: str, signature: str, where: str) -> Any:
    """`{"image_bytes": X}` -> X; a bare value passes (a signature with one input may omit the name)."""
    if isinstance(value, dict) and "b64" not in value:
        if set(value) != {input_name}:
            names = ", ".join(f"\"{k}\"" for k in value) or "none"
            raise BadRequest(f"{where}: signature \"{signature}\" takes one input named "
                             f"\"{input_name}\"; got input(s) {names}")
        return value[input_name]
    return value


def checked_image(data: bytes, config: ServeConfig, where: str) -> Encoded:
    """Encoded image bytes whose header names a supported format within the pixel limit."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadRequest(f"{where}: empty image data")
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            width, height = header.size
            fmt = header.format
            # TF refuses any WebP stored as an animation, even of one frame: the VP8X
            # chunk's animation flag, not Pillow's frame count, is what it reads.
            animated = fmt == "WEBP" and data[12:16] == b"VP8X" and bool(data[20] & 0x02)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        if isinstance(e, Image.DecompressionBombError):
            raise BadRequest(f"{where}: the image has too many pixels (limit "
                             f"{config.max_image_pixels:,})", code=LIMIT) from e
        raise BadRequest(f"{where}: not a {FORMAT_NAMES} image") from e
    if fmt not in DECODABLE_FORMATS:
        raise BadRequest(f"{where}: {fmt} images are not supported; send {FORMAT_NAMES}")
    if animated:  # TF's decoder refuses it
        raise BadRequest(f"{where}: animated WebP is not supported; send a still image")
    if width * height > config.max_image_pixels:
        raise BadRequest(f"{where}: the image has {width}x{height} = {width * height:,} pixels; "
                         f"the limit is {config.max_image_pixels:,}", code=LIMIT)
    return Encoded(data, where, fmt)


def _float_images(values: list, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    try:
        with np.errstate(over="ignore"):  # a number past float32's range becomes inf, refused below
            images = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise BadRequest(f"input \"{INPUT_IMAGES}\" must be numbers shaped [N, {h}, {w}, 3]: {e}") from e
    return checked_float_images(images, size)


def checked_float_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 [N, H, W, 3] in [0, 1], finite, or BadRequest."""
    h, w = size
    if images.shape[1:] != (h, w, 3):
        raise BadRequest(f"input \"{INPUT_IMAGES}\" must be shaped [N, {h}, {w}, 3]; "
                         f"got {list(images.shape)}")
    if not np.all(np.isfinite(images)):
        raise BadRequest(f"input \"{INPUT_IMAGES}\" holds NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi > 1:
        raise BadRequest(f"input \"{INPUT_IMAGES}\" takes float pixels in [0, 1]; got values from "
                         f"{lo:g} to {hi:g} (divide 8-bit pixels by 255, or send the encoded "
                         f"image as {{\"b64\": ...}} to \"{SIGNATURE_BYTES}\")")
    return images


def format_response(probs: np.ndarray, labels: list[str], row_format: bool,
                    unknown_threshold: Optional[float] = None) -> dict:
    """probabilities float32 [N, C] -> TF Serving's "predictions" (row) or "outputs" (columnar).

    Ranking is a stable descending sort, as tf.math.top_k in the exported signature.
    A model with an "unknown" threshold also answers `unknown` per image, as its
    signature does; a model without one does not (nor does its signature).
    """
    order = np.argsort(-probs, axis=1, kind="stable")
    scores = np.take_along_axis(probs, order, axis=1)
    out = {
        OUTPUT_PROBABILITIES: probs.tolist(),
        OUTPUT_CLASSES: [[labels[j] for j in row] for row in order],
        OUTPUT_CLASS_IDS: order.tolist(),
        OUTPUT_SCORES: scores.tolist(),
    }
    if unknown_threshold is not None:
        out[OUTPUT_UNKNOWN] = is_unknown(scores[:, 0], unknown_threshold).tolist()
    if row_format:
        return {"predictions": [{name: values[i] for name, values in out.items()}
                                for i in range(len(probs))]}
    return {"outputs": out}


# ---------------------------------------------------------------- :classify


@dataclasses.dataclass
class ParsedClassify:
    signature: str  # as the client named it; "" for the default
    images: list  # one `Encoded` per example


def parse_classify_request(body: bytes, config: ServeConfig) -> ParsedClassify:
    """A TF Serving :classify body -> the encoded image of each example, headers checked.

    TF Serving turns each example (and the optional "context", features shared by all
    examples) into a tf.Example: a `{"b64": ...}` or a string is a bytes feature, a
    number a float or int64 one, a list several values. Each example must hold one
    encoded image under `FEATURE_IMAGE`; other features are ignored, as the model's
    tf.io.parse_example ignores them.

    Raises:
        BadRequest: anything wrong with the body, its examples, or the limits.
    """
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise BadRequest(f"the request body must be a JSON object with \"examples\", "
                         f"got {_describe(doc)}")
    unknown = set(doc) - {"signature_name", "context", "examples"}
    if unknown:
        raise BadRequest(f"unknown key(s) {', '.join(sorted(map(repr, unknown)))} in the request; "
                         f"expected \"signature_name\", \"context\" and \"examples\"")
    signature = doc.get("signature_name") or ""
    if not isinstance(signature, str):
        raise BadRequest(f"\"signature_name\" must be a string, got {_describe(signature)}")
    if "examples" not in doc:
        raise BadRequest("When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise BadRequest(f"Expecting 'examples' value to be an list/array, got "
                         f"{_describe(examples)}")
    if not examples:
        raise BadRequest("'examples' value is an empty array")
    context = doc.get("context", {})
    if not isinstance(context, dict):
        raise BadRequest(f"Example must be JSON object but got JSON {_describe(context)} "
                         f"(\"context\")")
    check_image_count(len(examples), config)
    images = []
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise BadRequest(f"Example must be JSON object but got JSON {_describe(example)} "
                             f"(example {i})")
        value = example[FEATURE_IMAGE] if FEATURE_IMAGE in example else context.get(FEATURE_IMAGE)
        images.append(checked_image(_feature_bytes(value, f"example {i}"), config, f"example {i}"))
    return ParsedClassify(signature, images)


def _feature_bytes(value: Any, where: str) -> bytes:
    """The one bytes value of a JSON feature, as TF Serving would make a tf.Example of it."""
    if value is None:
        raise BadRequest(f"{where}: feature \"{FEATURE_IMAGE}\" (data type: string) is required "
                         f"but could not be found; send the encoded image as "
                         f"{{\"{FEATURE_IMAGE}\": {{\"b64\": \"<base64 string>\"}}}}")
    values = value if isinstance(value, list) else [value]
    if len(values) != 1:
        raise BadRequest(f"{where}: feature \"{FEATURE_IMAGE}\" must hold one encoded image; "
                         f"got {len(values)} values")
    value = values[0]
    if isinstance(value, str):
        return value.encode("utf-8")  # TF Serving keeps a JSON string as its bytes
    if isinstance(value, dict):
        return _b64(value, f"{where}: feature \"{FEATURE_IMAGE}\"")
    raise BadRequest(f"{where}: feature \"{FEATURE_IMAGE}\" must be bytes "
                     f"({{\"b64\": \"<base64 string>\"}}), got {_describe(value)}")


def classifications(probs: np.ndarray, labels: list[str]) -> list[list[tuple[str, float]]]:
    """probabilities float32 [N, C] -> per example, (label, score) pairs best first: the
    "classes" and "scores" outputs of the classify signature, side by side."""
    out = format_response(probs, labels, row_format=False)["outputs"]
    return [list(zip(classes, scores))
            for classes, scores in zip(out[OUTPUT_CLASSES], out[OUTPUT_SCORES])]


def format_classify_response(probs: np.ndarray, labels: list[str]) -> dict:
    """probabilities float32 [N, C] -> TF Serving's :classify answer,
    `{"results": [[[label, score], ...], ...]}`, best first."""
    return {"results": [[[label, score] for label, score in row]
                        for row in classifications(probs, labels)]}


# ---------------------------------------------------------------- tf.Example (classify)


def example_image(example, context, where: str, config: ServeConfig) -> Encoded:
    """The encoded image of one `tf.Example` (or of the context shared by all), checked:
    the one value of its bytes feature `FEATURE_IMAGE`. TF Serving serializes the
    context before each example, so an example's own feature wins."""
    feature = example.features.feature.get(FEATURE_IMAGE)
    if feature is None and context is not None:
        feature = context.features.feature.get(FEATURE_IMAGE)
    if feature is None:
        raise BadRequest(f"{where}: feature \"{FEATURE_IMAGE}\" (data type: string) is required "
                         f"but could not be found")
    kind = feature.WhichOneof("kind")
    if kind != "bytes_list" or len(feature.bytes_list.value) != 1:
        got = f"a {kind} of {len(getattr(feature, kind).value)}" if kind else "no value"
        raise BadRequest(f"{where}: feature \"{FEATURE_IMAGE}\" must be a bytes_list holding one "
                         f"encoded image; got {got}")
    return checked_image(feature.bytes_list.value[0], config, where)


def serialized_example_images(values: list, config: ServeConfig) -> list[Encoded]:
    """Serialized `tf.Example`s (the classify signature's input) -> their encoded images."""
    from tensorflow.core.example import example_pb2

    images = []
    for i, data in enumerate(values):
        example = example_pb2.Example()
        try:
            example.ParseFromString(data)
        except Exception as e:  # protobuf's DecodeError, whatever the backend
            raise BadRequest(f"Could not parse example input, value: example {i} "
                             f"({len(data):,} bytes)") from e
        images.append(example_image(example, None, f"example {i}", config))
    return images
