"""The HTTP side of `serve`: TensorFlow Serving's REST API on Starlette and uvicorn.

What a TF Serving client uses is here, with the same URLs, request formats and
error shape (`{"error": "..."}`):

    GET  /v1/models/NAME[/versions/V | /labels/L]             version status
    GET  /v1/models/NAME[/versions/V | /labels/L]/metadata    signature defs
    POST /v1/models/NAME[/versions/V | /labels/L]:predict     row ("instances") or
                                                               columnar ("inputs") format
    POST /v1/models/NAME[/versions/V | /labels/L]:classify    "examples" (tf.Example
                                                               features) -> "results"
    GET  /monitoring/prometheus/metrics                       Prometheus' text format
Plus `GET /` (a page to upload a picture, `page.html`) and `GET /healthz`. Any other
path, or a method a route does not take, gets TF Serving's words for a request it
cannot route, `{"error": "Malformed request: GET /v1/x"}`: with a 400 under `/v1/`, as
TF Serving's REST handler answers (an InvalidArgument), else a 404 (405 for a method).

Each connection is a `connection.GuardedHttpToolsProtocol`: it refuses an oversized
header (431), cuts off a client too slow to send its header or body (408), and logs a
client that leaves before its answer.

How a request flows:

1. The event loop reads the body (up to `max_body_bytes`) and takes the
   current model snapshot; a version swap later does not affect this request.
2. A small thread pool runs `rest.parse_request`: it parses the JSON (nested at
   most 64 deep, integers of at most 100 digits), checks inputs and limits, and reads each image's header (format, pixel count), so
   most bad input fails here, per request, with a 400.
3. The `Batcher` joins the images of concurrent requests and, on a
   TensorFlow worker thread, decodes and classifies them in one call
   (`LoadedVersion.predict_bytes`: `imaging.decode_batch`, the function
   training and `label` use, then the model's images signature; a model from
   older preprocessing decodes with its own serving signature instead, as it
   was trained). Decoding there, not beside the forward pass, keeps the two
   from competing for the cores. An image whose header was fine but whose
   data TF cannot decode fails its own request with a 400: the batch's images
   are then decoded one by one to find it, and the other requests answered.
4. A `VersionWatcher` thread polls the base directory; a new version is loaded
   and warmed up aside, then swapped in; requests in flight finish on the old one.

`serve(config, on_ready)` checks the settings, loads the highest working
version, binds the socket, starts the gRPC server (`grpc.py`) on the same event
loop if `grpc_port` is set, and runs uvicorn until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.resources
import json
import logging
import os
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from trxsfr.base.config import ServeConfig
from trxsfr.base.contract import (
    SAVED_MODEL_FILE,
    SIGNATURE_BYTES,
    SIGNATURE_IMAGES,
    is_version_dir,
)
from trxsfr.base.errors import InputError, ModelError
from trxsfr.serve import api
from trxsfr.serve.batcher import Batcher
from trxsfr.serve.metrics import REST, Metrics
from trxsfr.serve.rest import (
    LIMIT,
    BadRequest,
    format_classify_response,
    format_response,
    parse_classify_request,
    parse_request,
    signature_outputs,
)
from trxsfr.serve.versions import LoadedVersion, Snapshot, VersionWatcher

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- HTTP app

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:/(?P<metadata>metadata)|:(?P<verb>[A-Za-z]+))?$"
)


_VERBS = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}
# Seconds the gRPC server gives calls in flight to finish when the server stops.
GRPC_GRACE_SECONDS = 5.0


class Server:
    """The Starlette app around a VersionWatcher and a Batcher (which the gRPC servicers
    share), and the metrics of both."""

    def __init__(self, config: ServeConfig, watcher: VersionWatcher):
        self.config = config
        self.watcher = watcher
        self.metrics = Metrics(config.model_name, lambda: self.watcher.snapshot)
        self.batcher = Batcher(config.max_batch_size, config.batch_timeout_micros / 1e6,
                               config.num_batch_threads, on_batch=self.metrics.batch)
        self._parse_pool = ThreadPoolExecutor(config.parse_threads, thread_name_prefix="trxsfr-parse")
        self._page = _read_page()
        self.grpc_server = None  # set by serve() when gRPC is on; stopped by stop()
        self._state = "new"
        self.app = self._build_app()

    async def start(self) -> None:
        """Start the batcher and the version watcher (once; later calls do nothing)."""
        if self._state == "new":
            self._state = "started"
            self.batcher.start()
            self.watcher.start()

    async def stop(self) -> None:
        """Let gRPC calls in flight finish, then stop everything (once)."""
        if self._state != "started":
            return
        self._state = "stopped"
        try:
            if self.grpc_server is not None:
                await self.grpc_server.stop(GRPC_GRACE_SECONDS)
        finally:
            self.watcher.stop()
            await self.batcher.stop()
            self._parse_pool.shutdown(wait=False)

    async def parse(self, fn, *args):
        """`fn(*args)` on the parse threads, counted as arriving by the batcher (its batch
        waits for it): how REST and gRPC requests read and check their images."""
        loop = asyncio.get_running_loop()
        with self.batcher.arrival():
            return await loop.run_in_executor(self._parse_pool, fn, *args)

    def _build_app(self):
        from contextlib import asynccontextmanager

        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        @asynccontextmanager
        async def lifespan(app):
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        return Starlette(routes=[
            Route("/", self.page, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/monitoring/prometheus/metrics", self.prometheus, methods=["GET"]),
            Route("/v1/{rest:path}", self.v1, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ], lifespan=lifespan, exception_handlers={HTTPException: self.unrouted})

    # -- helpers

    @staticmethod
    def _error(message: str, status: int):
        from starlette.responses import JSONResponse

        return JSONResponse({"error": message}, status_code=status)

    async def _body(self, request) -> bytes:
        """The request body, or BadRequest past `max_body_bytes`.

        An oversized body is still read (and dropped) up to 4x the limit, so a
        client that sends it whole gets the 400 instead of a broken pipe.
        """
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise BadRequest("the Content-Length header is not a number")
        too_big = None
        if declared is not None and int(declared) > limit:
            too_big = f"the request body has {int(declared):,} bytes; the limit is {limit:,}"
            if int(declared) > 4 * limit:
                raise BadRequest(too_big, code=LIMIT)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                too_big = too_big or f"the request body exceeds the limit of {limit:,} bytes"
                chunks = []
                if total > 4 * limit:
                    break
            elif too_big is None:
                chunks.append(chunk)
        if too_big:
            raise BadRequest(too_big, code=LIMIT)
        return b"".join(chunks)

    def _select(self, snap: Snapshot, name: str, version: Optional[str],
                label: Optional[str]) -> LoadedVersion:
        if version is not None and not version.isdigit():
            raise BadRequest(f"version \"{version}\" is not a number")
        return api.select(snap, self.watcher.version_labels, self.config.model_name, name,
                          None if version is None else int(version), label)

    @staticmethod
    def _status(lvs: list) -> dict:
        return {"model_version_status": [
            {"version": str(lv.version), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}
            for lv in sorted(lvs, key=lambda lv: -lv.version)]}

    # -- endpoints

    async def v1(self, request):
        """Every /v1/ path: counted by API (unless unrouted) in the metrics."""
        match = _ROUTE.match(request.url.path)
        verb = match and match["verb"]
        if match is None or (verb is not None and verb not in _VERBS):
            return await self._v1(request, match, None)
        api_name = (_VERBS[verb] if verb else
                    "GetModelMetadata" if match["metadata"] else "GetModelStatus")
        with self.metrics.request(api_name, REST) as outcome:
            return await self._v1(request, match, outcome)

    async def _v1(self, request, match, outcome):
        from starlette.requests import ClientDisconnect
        from starlette.responses import JSONResponse

        status = "INTERNAL"
        try:
            if not match:
                raise BadRequest(f"Malformed request: {request.method} {request.url.path}")
            name, version, label = match["name"], match["version"], match["label"]
            verb, metadata = match["verb"], match["metadata"]
            snap = self.watcher.snapshot
            if verb is None:
                if request.method != "GET":
                    raise BadRequest(f"{request.method} {request.url.path}: use GET here "
                                     f"(POST is for .../NAME:predict)", 405)
                status = "OK"
                if metadata:
                    lv = self._select(snap, name, version, label)
                    return JSONResponse({
                        "model_spec": {"name": name, "signature_name": "", "version": str(lv.version)},
                        "metadata": {"signature_def": {
                            "signature_def": lv.signature_defs,
                            "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap"}},
                    })
                if version is None and label is None:
                    self._select(snap, name, None, None)
                    return JSONResponse(self._status(list(snap.by_version.values())))
                return JSONResponse(self._status([self._select(snap, name, version, label)]))
            if verb not in _VERBS:
                raise BadRequest(f"Malformed request: {request.method} {request.url.path}")
            if request.method != "POST":
                raise BadRequest(f"{request.method} {request.url.path}: :{verb} takes POST "
                                 f"with a JSON body", 405)
            lv = self._select(snap, name, version, label)
            if verb == "regress":
                raise BadRequest(f"this model has no regress signature; use :predict "
                                 f"(signatures \"{SIGNATURE_BYTES}\", \"{SIGNATURE_IMAGES}\") "
                                 f"or :classify")
            body = await self._body(request)
            if verb == "classify":
                parsed = await self.parse(parse_classify_request, body, self.config)
                api.classification_signature(lv, parsed.signature)
                probs = await self.batcher.predict(lv, parsed.images)
                answer = format_classify_response(probs, lv.labels)
            else:
                parsed = await self.parse(parse_request, body, lv, self.config)
                probs = await self.batcher.predict(lv, parsed.images)
                answer = signature_outputs(
                    format_response(probs, lv.labels, parsed.row_format,
                                    lv.classifier.info.unknown_threshold),
                    lv, parsed.signature)
            status = "OK"
            return JSONResponse(answer)
        except BadRequest as e:
            status = e.code
            return self._error(str(e), e.status)
        except ClientDisconnect:  # the connection logged it; nobody is left to answer
            status = "CANCELLED"
            return self._error("client disconnected", 499)
        except Exception as e:
            log.exception("internal error on %s %s", request.method, request.url.path)
            return self._error(f"internal error: {type(e).__name__}: {e}", 500)
        finally:
            if outcome is not None:
                outcome.status = status

    async def unrouted(self, request, exc):
        """What Starlette's router refuses (a path no route takes, a method a route does not
        take) in TF Serving's error shape, with its words for a request it cannot route."""
        from starlette.responses import JSONResponse

        message = (f"Malformed request: {request.method} {request.url.path}"
                   if exc.status_code in (404, 405) else exc.detail)
        status = exc.status_code
        if status == 404 and request.url.path.startswith("/v1/"):
            status = 400  # TF Serving's REST handler takes every /v1/ path: InvalidArgument
        return JSONResponse({"error": message}, status, headers=exc.headers)

    async def healthz(self, request):
        from starlette.responses import JSONResponse

        latest = self.watcher.snapshot.latest
        if latest is None:
            return JSONResponse({"status": "unavailable", "model": self.config.model_name}, 503)
        return JSONResponse({"status": "ok", "model": self.config.model_name,
                             "version": str(latest.version), "labels": latest.labels,
                             "runtime": latest.classifier.runtime,
                             "batches": self.batcher.batches, "images": self.batcher.images})

    async def prometheus(self, request):
        from starlette.responses import Response

        from trxsfr.serve.metrics import CONTENT_TYPE

        return Response(self.metrics.page(), headers={"Content-Type": CONTENT_TYPE})

    async def page(self, request):
        from starlette.responses import HTMLResponse

        return HTMLResponse(self._page.replace("__MODEL__", json.dumps(self.config.model_name)))


def _read_page() -> str:
    """The upload page, a package data file; `__MODEL__` stands for the model name (JSON)."""
    return importlib.resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------- entry point


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: ServeConfig, on_ready=None) -> None:
    """Load the highest working version, bind, and serve until SIGINT/SIGTERM.

    Args:
        config: the settings.
        on_ready: called with (url, version, grpc_address) once the sockets listen and a
            model is loaded; grpc_address ("host:port") is None when gRPC is off.

    Raises:
        ModelError: the base dir does not exist or holds no working version.
        InputError: bad settings, or an address cannot be bound.
    """
    import uvicorn

    from trxsfr.serve.connection import guarded_protocol

    config.check()
    base = config.model_base_path
    if not os.path.isdir(base):
        raise ModelError(f"--model_base_path {base} is not a directory")
    if is_version_dir(base):
        raise ModelError(f"--model_base_path {base} is a model version itself; pass its parent "
                         f"directory (versions are numbered sub-directories, as for TF Serving)")
    watcher = VersionWatcher(base, dict(config.version_labels), config.poll_seconds,
                             runtime=config.runtime)
    watcher.poll(wait_until_stable=False)
    if watcher.snapshot.latest is None:
        raise ModelError(f"no working model version under {base}: expected numbered "
                         f"sub-directories with a {SAVED_MODEL_FILE} (trxsfr retrain makes them)")
    for label, version in config.version_labels:
        if version not in watcher.snapshot.by_version:
            log.warning("version label %s: version %d is not loaded", label, version)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{_host_port(host, port)}"
    if config.grpc_port:
        from trxsfr.serve import grpc as grpc_api

        try:
            grpc_api.check_free(config.host, config.grpc_port)
        except InputError:
            sock.close()
            raise
    server = Server(config, watcher)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # logs never go to stdout
    uv = uvicorn.Server(uvicorn.Config(
        server.app, log_level="info" if config.access_log else "warning",
        access_log=config.access_log, log_config=log_config, timeout_keep_alive=30,
        lifespan="on", http=guarded_protocol(config),
    ))

    async def main():
        await server.start()
        try:
            grpc_address = None
            if config.grpc_port is not None:
                from trxsfr.serve import grpc as grpc_api

                server.grpc_server, grpc_port = await grpc_api.start(server, config.host,
                                                                     config.grpc_port)
                grpc_address = _host_port(host, grpc_port)
            version = watcher.snapshot.latest.version
            if on_ready is not None:
                on_ready(url, version, grpc_address)
            else:
                log.info("serving model %s version %d at %s/v1/models/%s%s", config.model_name,
                         version, url, config.model_name,
                         f" and over gRPC at {grpc_address}" if grpc_address else "")
            await uv.serve(sockets=[sock])  # its shutdown stops the server (the lifespan)
        finally:
            await server.stop()

    try:
        _run_loop(main(), uv.config)
    finally:
        sock.close()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _run_loop(main, uv_config) -> None:
    """Run `main` on the event loop uvicorn would pick (uvloop when installed): the HTTP
    and gRPC servers share it. uvicorn.Server.run does the same for its server alone."""
    if not hasattr(uv_config, "get_loop_factory"):  # uvicorn < 0.36
        uv_config.setup_event_loop()  # sets uvloop's event loop policy
        asyncio.run(main)
        return
    factory = uv_config.get_loop_factory()
    if factory is None:
        asyncio.run(main)
    elif hasattr(asyncio, "Runner"):  # Python >= 3.11
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
    else:
        loop = factory()
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(main)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
