"""TF Serving's gRPC API (`--grpc_port`), on grpcio's asyncio server, beside the REST API.

The servicers derive from the base classes `tensorflow-serving-api` ships, so a
client of TensorFlow Serving (`prediction_service_pb2_grpc.PredictionServiceStub`,
`model_service_pb2_grpc.ModelServiceStub`) works unchanged:

    PredictionService.Predict           signature "serving_default": `image_bytes`, DT_STRING
                                        [N] of encoded images; "predict_images": `images`,
                                        DT_FLOAT [N, H, W, 3] in [0, 1]; "classify": `inputs`,
                                        DT_STRING [N] of serialized tf.Example. Outputs as the
                                        signature def says (`output_filter` picks some)
    PredictionService.Classify          signature "classify": each example's encoded image
                                        under the feature `image/encoded` -> classes and scores
    PredictionService.GetModelMetadata  metadata_field "signature_def": the SignatureDefMap
    ModelService.GetModelStatus         versions loaded (AVAILABLE)

A model spec picks the version by `version` or `version_label`, as over REST. Errors
carry TF Serving's status codes: INVALID_ARGUMENT for a bad request,
FAILED_PRECONDITION for an unknown Predict signature, NOT_FOUND for another model or
a version not loaded, RESOURCE_EXHAUSTED over a limit (a message over
--max_body_bytes, which grpcio refuses before it reaches us; more than
--max_images_per_request images; an image over --max_image_pixels).

The servicers run on the event loop of the REST side: requests are parsed and checked
on the same thread pool, join the same `Batcher` (a REST and a gRPC request can share a
forward pass), and take the same version snapshot, so a version swap fails none.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from trxsfr.base.config import ServeConfig
from trxsfr.base.contract import (
    INPUT_BYTES,
    INPUT_EXAMPLES,
    OUTPUT_CLASSES,
    OUTPUT_SCORES,
    SIGNATURE_CLASSIFY,
)
from trxsfr.base.errors import InputError
from trxsfr.serve import api
from trxsfr.serve.metrics import GRPC
from trxsfr.serve.rest import (
    BadRequest,
    Encoded,
    check_image_count,
    checked_float_images,
    checked_image,
    classifications,
    example_image,
    format_response,
    serialized_example_images,
)
from trxsfr.serve.versions import LoadedVersion

if TYPE_CHECKING:
    from trxsfr.serve.app import Server

log = logging.getLogger(__name__)

# GetModelMetadata's one metadata field (TF Serving's GetModelMetadataImpl::kSignatureDef).
SIGNATURE_DEF_FIELD = "signature_def"
_DTYPE = types_pb2.DataType


# ---------------------------------------------------------------- tensors


def _dims(proto: tensor_pb2.TensorProto, alias: str) -> list[int]:
    if proto.tensor_shape.unknown_rank or any(d.size < 0 for d in proto.tensor_shape.dim):
        raise BadRequest(f"tensor parsing error: {alias} (its shape is not fully defined)")
    return [d.size for d in proto.tensor_shape.dim]


def _dtype_error(proto, alias: str, signature: str, want: int, what: str) -> BadRequest:
    return BadRequest(f"input \"{alias}\" of signature \"{signature}\" takes "
                      f"{_DTYPE.Name(want)} ({what}); got {_DTYPE.Name(proto.dtype)}")


def _filled(values, n: int, default) -> list:
    """The first n values, the last repeated if there are fewer: what TensorFlow's
    Tensor::FromProto makes of a repeated field (none: the default value)."""
    values = list(values[:n])
    if not values:
        return [default] * n
    return values + [values[-1]] * (n - len(values))


def string_input(proto, alias: str, signature: str, what: str, config: ServeConfig) -> list:
    """A DT_STRING [N] TensorProto -> its N values; N checked against the limit."""
    if proto.dtype != _DTYPE.DT_STRING:
        raise _dtype_error(proto, alias, signature, _DTYPE.DT_STRING, what)
    dims = _dims(proto, alias)
    if len(dims) != 1:
        raise BadRequest(f"input \"{alias}\" of signature \"{signature}\" is shaped [N] "
                         f"({what}); got shape {dims}")
    if proto.tensor_content:
        raise BadRequest(f"tensor parsing error: {alias} (a DT_STRING tensor holds its values "
                         f"in string_val, not tensor_content)")
    check_image_count(dims[0], config)
    return _filled(proto.string_val, dims[0], b"")


def float_images(proto, alias: str, signature: str, size: tuple[int, int],
                 config: ServeConfig) -> np.ndarray:
    """A DT_FLOAT [N, H, W, 3] TensorProto -> float32 [N, H, W, 3] in [0, 1], checked."""
    h, w = size
    if proto.dtype != _DTYPE.DT_FLOAT:
        raise _dtype_error(proto, alias, signature, _DTYPE.DT_FLOAT,
                           f"float pixels [N, {h}, {w}, 3] in [0, 1]")
    dims = _dims(proto, alias)
    if len(dims) != 4 or dims[1:] != [h, w, 3]:
        raise BadRequest(f"input \"{alias}\" must be shaped [N, {h}, {w}, 3]; got {dims}")
    check_image_count(dims[0], config)  # before allocating anything of that size
    count = int(np.prod(dims))
    if proto.tensor_content:
        if len(proto.tensor_content) != 4 * count:
            raise BadRequest(f"tensor parsing error: {alias} (tensor_content holds "
                             f"{len(proto.tensor_content):,} bytes; shape {dims} of DT_FLOAT "
                             f"takes {4 * count:,})")
        images = np.frombuffer(proto.tensor_content, "<f4").astype(np.float32).reshape(dims)
    else:
        values = proto.float_val
        if 0 < len(values) < count:
            images = np.empty(count, np.float32)
            images[:len(values)] = values
            images[len(values):] = values[-1]
        else:
            images = np.zeros(count, np.float32)
            if values:
                images[:] = np.asarray(values[:count], np.float32)
        images = images.reshape(dims)
    return checked_float_images(images, size)


def output_tensor(values: Any, dtype: str) -> tensor_pb2.TensorProto:
    """Nested lists of one output (as `rest.format_response` gives them) -> a TensorProto
    of the signature's dtype, values in its typed field (as TF Serving answers)."""
    proto = tensor_pb2.TensorProto(dtype=_DTYPE.Value(dtype))
    if proto.dtype == _DTYPE.DT_STRING:
        array = np.asarray(values, dtype=object)
        proto.string_val.extend(v.encode("utf-8") if isinstance(v, str) else v
                                for v in array.ravel())
    else:
        array = np.asarray(values)
        field = {_DTYPE.DT_FLOAT: proto.float_val, _DTYPE.DT_DOUBLE: proto.double_val,
                 _DTYPE.DT_INT64: proto.int64_val, _DTYPE.DT_INT32: proto.int_val,
                 _DTYPE.DT_BOOL: proto.bool_val}.get(proto.dtype)
        if field is None:
            raise BadRequest(f"cannot answer an output of type {dtype}", 500, "INTERNAL")
        field.extend(array.ravel().tolist())
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


# ---------------------------------------------------------------- examples


def input_images(request_input, config: ServeConfig) -> list[Encoded]:
    """A Classify request's `input` (example_list, or example_list_with_context) -> the
    encoded image of each example."""
    kind = request_input.WhichOneof("kind")
    if kind is None:
        raise BadRequest("Input is empty.")
    holder = getattr(request_input, kind)
    context = holder.context if kind == "example_list_with_context" else None
    if not holder.examples:
        raise BadRequest("Input is empty.")
    check_image_count(len(holder.examples), config)
    return [example_image(e, context, f"example {i}", config)
            for i, e in enumerate(holder.examples)]


# ---------------------------------------------------------------- requests


def parse_predict(request: predict_pb2.PredictRequest, lv: LoadedVersion, signature: str,
                  input_name: str, config: ServeConfig):
    """A PredictRequest's images for `lv` (a list of `Encoded`, or float32 [N, H, W, 3]):
    input names, dtypes, shapes, headers and limits checked. Runs on the parse pool."""
    sent = set(request.inputs)
    if sent != {input_name}:
        extra, missing = sorted(sent - {input_name}), sorted({input_name} - sent)
        if len(sent) == 1:
            raise BadRequest(f"input tensor alias not found in signature: {extra[0]}. Inputs "
                             f"expected to be in the set {{{input_name}}}.")
        raise BadRequest(f"input size does not match signature: {len(sent)}!=1 "
                         f"len({{{','.join(sorted(sent))}}}) != len({{{input_name}}}). Sent extra: "
                         f"{{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
    proto = request.inputs[input_name]
    if input_name == INPUT_BYTES:
        values = string_input(proto, input_name, signature, "encoded images", config)
        return [checked_image(v, config, f"image {i}") for i, v in enumerate(values)]
    if input_name == INPUT_EXAMPLES:
        values = string_input(proto, input_name, signature, "serialized tf.Example", config)
        return serialized_example_images(values, config)
    return float_images(proto, input_name, signature, lv.image_size, config)


def output_aliases(lv: LoadedVersion, signature: str, output_filter) -> list[str]:
    """The outputs a Predict answers: `output_filter`'s, checked, or all the signature's."""
    outputs = lv.signature_defs[signature].get("outputs", {})
    if not output_filter:
        return list(outputs)
    seen = []
    for alias in output_filter:
        if alias not in outputs:
            raise BadRequest(f"output tensor alias not found in signature: {alias} Outputs "
                             f"expected to be in the set {{{','.join(sorted(outputs))}}}.")
        if alias in seen:
            raise BadRequest(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


def signature_def_map(lv: LoadedVersion) -> get_model_metadata_pb2.SignatureDefMap:
    sigs = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in lv.signature_defs.items():
        json_format.ParseDict(sig, sigs.signature_def[name])
    return sigs


def _spec(spec) -> tuple[str, Any, Any]:
    """(name, version or None, label or None) of a ModelSpec."""
    choice = spec.WhichOneof("version_choice")
    return (spec.name, spec.version.value if choice == "version" else None,
            spec.version_label if choice == "version_label" else None)


# ---------------------------------------------------------------- servicers


class _Base:
    def __init__(self, server: "Server"):
        self.server = server
        self.config = server.config

    def _select(self, spec) -> LoadedVersion:
        w = self.server.watcher
        return api.select(w.snapshot, w.version_labels, self.config.model_name, *_spec(spec))

    async def _answer(self, api_name: str, context, handle):
        """Run `handle()` (a coroutine function returning the response), turning a
        BadRequest into TF Serving's status and counting the request."""
        with self.server.metrics.request(api_name, GRPC) as outcome:
            try:
                response = await handle()
            except BadRequest as e:
                outcome.status = e.code
                message = str(e)
            except asyncio.CancelledError:
                outcome.status = "CANCELLED"
                raise
            except Exception as e:
                log.exception("internal error in gRPC %s", api_name)
                outcome.status = "INTERNAL"
                message = f"internal error: {type(e).__name__}: {e}"
            else:
                outcome.ok()
                return response
        await context.abort(grpc.StatusCode[outcome.status], message[:1024])


class PredictionServicer(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService."""

    async def Predict(self, request, context):
        async def handle():
            lv = self._select(request.model_spec)
            signature, input_name = api.predict_signature(lv, request.model_spec.signature_name)
            aliases = output_aliases(lv, signature, request.output_filter)
            images = await self.server.parse(parse_predict, request, lv, signature, input_name,
                                             self.config)
            probs = await self.server.batcher.predict(lv, images)
            outputs = format_response(probs, lv.labels, row_format=False,
                                      unknown_threshold=lv.classifier.info.unknown_threshold
                                      )["outputs"]
            declared = lv.signature_defs[signature]["outputs"]
            response = predict_pb2.PredictResponse()
            _model_spec(response.model_spec, lv, self.config, signature)
            for alias in aliases:
                if alias in outputs:
                    response.outputs[alias].CopyFrom(
                        output_tensor(outputs[alias], declared[alias]["dtype"]))
            return response

        return await self._answer("Predict", context, handle)

    async def Classify(self, request, context):
        async def handle():
            lv = self._select(request.model_spec)
            signature = api.classification_signature(lv, request.model_spec.signature_name)
            images = await self.server.parse(input_images, request.input, self.config)
            probs = await self.server.batcher.predict(lv, images)
            response = classification_pb2.ClassificationResponse()
            _model_spec(response.model_spec, lv, self.config, signature)
            outputs = lv.signature_defs[signature]["outputs"]
            for row in classifications(probs, lv.labels):
                result = response.result.classifications.add()
                for label, score in row:
                    cls = result.classes.add()
                    if OUTPUT_CLASSES in outputs:
                        cls.label = label
                    if OUTPUT_SCORES in outputs:
                        cls.score = score
            return response

        return await self._answer("Classify", context, handle)

    async def Regress(self, request, context):
        async def handle():
            self._select(request.model_spec)
            raise BadRequest(f"this model has no regression signature; use Classify (signature "
                             f"\"{SIGNATURE_CLASSIFY}\") or Predict")

        return await self._answer("Regress", context, handle)

    async def GetModelMetadata(self, request, context):
        async def handle():
            if not request.HasField("model_spec"):
                raise BadRequest("Missing ModelSpec")
            if not request.metadata_field:
                raise BadRequest("GetModelMetadataRequest must specify at least one "
                                 "metadata_field")
            for field in request.metadata_field:
                if field != SIGNATURE_DEF_FIELD:
                    raise BadRequest(f"Metadata field {field} is not supported")
            lv = self._select(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = self.config.model_name
            response.model_spec.version.value = lv.version
            response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map(lv))
            return response

        return await self._answer("GetModelMetadata", context, handle)


class ModelServicer(_Base, model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService (GetModelStatus; config reloads are not offered)."""

    async def GetModelStatus(self, request, context):
        async def handle():
            if not request.HasField("model_spec"):
                raise BadRequest("Missing ModelSpec")
            w = self.server.watcher
            lvs = api.version_status(w.snapshot, w.version_labels, self.config.model_name,
                                     *_spec(request.model_spec))
            response = get_model_status_pb2.GetModelStatusResponse()
            for lv in lvs:
                status = response.model_version_status.add(
                    version=lv.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
                status.status.error_code = 0  # tensorflow.error.OK
                status.status.error_message = ""
            return response

        return await self._answer("GetModelStatus", context, handle)


def _model_spec(spec, lv: LoadedVersion, config: ServeConfig, signature: str) -> None:
    spec.name = config.model_name
    spec.version.value = lv.version
    spec.signature_name = signature


# ---------------------------------------------------------------- server


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_free(host: str, port: int) -> None:
    """InputError if (host, port) cannot be bound now: grpcio's own error is a log line
    and a generic exception, this says why. `serve` asks before anything else starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port} for gRPC (--grpc_port): "
                             f"{e.strerror}") from e


async def start(server: "Server", host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Bind and start the gRPC server on the running event loop; (it, the bound port).

    Raises:
        InputError: the address cannot be bound.
    """
    config = server.config
    g = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", config.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        # A request's metadata is its header: the same limit as an HTTP header.
        ("grpc.max_metadata_size", config.max_header_bytes),
        # grpcio shares a port with any process that also asks (SO_REUSEPORT): two
        # servers on one --grpc_port would split its clients silently.
        ("grpc.so_reuseport", 0),
    ])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(server), g)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(server), g)
    try:
        bound = g.add_insecure_port(_address(host, port))
    except RuntimeError as e:
        raise InputError(f"cannot listen on {host}:{port} for gRPC (--grpc_port)") from e
    await g.start()
    return g, bound

