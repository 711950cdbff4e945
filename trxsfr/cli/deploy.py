"""Command line of the deployment commands: `serve`, `export-tflite`, `info`.

Registered by `cli.build_parser`; this only parses flags, calls the library and
prints results (`trxsfr.serve`, `trxsfr.lite` and `trxsfr.info` hold the logic).
"""

from __future__ import annotations

import argparse
import json
import logging

from trxsfr.base.config import RUNTIMES, LabelConfig, ServeConfig
from trxsfr.base.errors import InputError
from trxsfr.cli import process
from trxsfr.cli.common import EXIT_OK, Formatter, out

log = logging.getLogger(__name__)


def add_deploy_parsers(sub) -> None:
    add_serve_parser(sub)
    add_export_tflite_parser(sub)
    add_info_parser(sub)


# ---------------------------------------------------------------- serve

def add_serve_parser(sub) -> None:
    d = ServeConfig

    p = sub.add_parser(
        "serve", formatter_class=Formatter,
        help="Serve a model base directory over TensorFlow Serving's REST (and gRPC) API, with an "
             "upload page.",
        description=(
            "Serves the highest numbered version under --model_base_path at\n"
            "/v1/models/NAME (status), /v1/models/NAME/metadata, /v1/models/NAME:predict\n"
            "(TF Serving's row and columnar JSON formats, {\"b64\": ...} for image bytes) and\n"
            "/v1/models/NAME:classify (tf.Example features, the image under \"image/encoded\");\n"
            "with --grpc_port, also TF Serving's gRPC API (Predict, Classify, GetModelMetadata,\n"
            "GetModelStatus). Batches concurrent requests of both, and swaps to a new version\n"
            "without a restart. GET / is a page to upload a picture; GET /healthz is for load\n"
            "balancers; GET /monitoring/prometheus/metrics is for Prometheus."
        ),
    )
    g = p.add_argument_group("Model")
    g.add_argument("--model_base_path", required=True, default=argparse.SUPPRESS,
                   help="Required. Directory of numbered version directories, as trxsfr retrain "
                        "writes it (the same path tensorflow_model_server takes).")
    g.add_argument("--model_name", default=d.model_name,
                   help="Name of the model in the URLs: /v1/models/<model_name>:predict.")
    g.add_argument("--runtime", choices=RUNTIMES, default=d.runtime,
                   help="What runs each version's network (decoding is TensorFlow's either "
                        "way): litert (a float32 conversion of the whole model, made when the "
                        "version loads and kept under $TRXSFR_HOME/litert), tf, or auto: LiteRT "
                        "when its outputs match TensorFlow's on a probe batch, else TensorFlow "
                        "with a line saying why.")
    g.add_argument("--file_system_poll_wait_seconds", type=float, default=d.poll_seconds,
                   help="Seconds between two looks at the base directory for new versions.")
    g.add_argument("--version_label", action="append", default=[], metavar="LABEL=VERSION",
                   help="Also serve VERSION at /v1/models/NAME/labels/LABEL (may repeat), as TF "
                        "Serving's version labels; it stays loaded beside the latest version.")
    g = p.add_argument_group("Network")
    g.add_argument("--host", default=d.host,
                   help="Address to listen on. The default answers this machine only; use 0.0.0.0 "
                        "to accept other machines (there is no authentication).")
    g.add_argument("--port", type=int, default=d.port,
                   help="TCP port (TF Serving's REST port is 8501); 0 picks a free one, printed on start.")
    g.add_argument("--grpc_port", type=int, default=d.grpc_port,
                   help="Also serve TF Serving's gRPC API on this port, on the same --host (TF "
                        "Serving's gRPC port is 8500); 0 picks a free one, printed on start. "
                        "Unset: no gRPC.")
    g = p.add_argument_group("Batching")
    g.add_argument("--max_batch_size", type=int, default=d.max_batch_size,
                   help="Most images in one forward pass over concurrent requests.")
    g.add_argument("--batch_timeout_micros", type=int, default=d.batch_timeout_micros,
                   help="Longest time the first request of a batch waits for others to join it; "
                        "a lone client never waits.")
    g.add_argument("--num_batch_threads", type=int, default=d.num_batch_threads,
                   help="Batches decoded and run through the model at once (TF Serving's batching "
                        "parameter of that name); 2 keeps 2 cores busier than 1.")
    g.add_argument("--parse_threads", "--decode_threads", dest="parse_threads", type=int,
                   default=d.parse_threads,
                   help="Threads that parse requests and check image headers beside the model's "
                        "threads, which decode each batch (--decode_threads: the older name).")
    g = p.add_argument_group("Limits")
    g.add_argument("--max_body_bytes", type=int, default=d.max_body_bytes,
                   help="Largest request body accepted; larger ones get a 400.")
    g.add_argument("--max_images_per_request", type=int, default=d.max_images_per_request,
                   help="Most images in one request; more get a 400.")
    g.add_argument("--max_image_pixels", type=int, default=d.max_image_pixels,
                   help="Largest width x height of an uploaded image (checked before decoding); "
                        "larger ones get a 400.")
    g.add_argument("--max_header_bytes", type=int, default=d.max_header_bytes,
                   help="Largest request header (request line and header fields); a larger one "
                        "gets a 431 as soon as that many bytes arrived, and the connection closes.")
    g.add_argument("--header_timeout_seconds", type=float, default=d.header_timeout_seconds,
                   help="Time a client has to send a request's whole header, from its first byte "
                        "(or from connecting); a slower one gets a 408 and is disconnected.")
    g.add_argument("--body_timeout_seconds", type=float, default=d.body_timeout_seconds,
                   help="Time a client has to send a request's whole body once its header is in; "
                        "a slower one gets a 408 and is disconnected.")
    g = p.add_argument_group("Output")
    g.add_argument("--quiet", action="store_true",
                   help="No access log and no info lines; warnings and errors only.")
    p.set_defaults(run=run_serve)


def _version_labels(items) -> tuple:
    labels = {}
    for item in items:
        label, sep, version = item.partition("=")
        if not sep or not label or not version.isdigit():
            raise InputError(f"--version_label {item!r}: expected LABEL=VERSION, e.g. stable=1763900000")
        labels[label] = int(version)
    return tuple(labels.items())


def run_serve(args) -> int:
    from trxsfr.serve import serve

    config = ServeConfig(
        model_base_path=args.model_base_path, model_name=args.model_name, host=args.host,
        port=args.port, grpc_port=args.grpc_port, max_batch_size=args.max_batch_size,
        batch_timeout_micros=args.batch_timeout_micros, max_body_bytes=args.max_body_bytes,
        max_images_per_request=args.max_images_per_request,
        max_image_pixels=args.max_image_pixels, poll_seconds=args.file_system_poll_wait_seconds,
        parse_threads=args.parse_threads, num_batch_threads=args.num_batch_threads,
        version_labels=_version_labels(args.version_label),
        access_log=not args.quiet, max_header_bytes=args.max_header_bytes,
        header_timeout_seconds=args.header_timeout_seconds,
        body_timeout_seconds=args.body_timeout_seconds, runtime=args.runtime,
    )

    def ready(url: str, version: int, grpc_address) -> None:
        # The one stdout line: scripts read the addresses from it (useful with --port 0).
        grpc = f"; gRPC at {grpc_address}" if grpc_address else ""
        out(f"serving model {config.model_name} version {version} at {url}/v1/models/"
             f"{config.model_name} (upload page: {url}/){grpc}")

    serve(config, on_ready=ready)  # checks the settings first
    return EXIT_OK


# ---------------------------------------------------------------- export-tflite

def add_export_tflite_parser(sub) -> None:
    from trxsfr.lite import MAX_REPRESENTATIVE_IMAGES, QUANTIZE_MODES

    p = sub.add_parser(
        "export-tflite", formatter_class=Formatter,
        help="Convert an exported model to TFLite, optionally quantized, with its labels beside it.",
        description=(
            "Writes OUT (input float32 [1, H, W, 3] in [0, 1], output probabilities [1, C]),\n"
            "OUT's stem + .labels.txt (one label per line, in class-id order) and + .trxsfr.json\n"
            "(metadata). Nothing existing is overwritten. `trxsfr label --model OUT` and\n"
            "`trxsfr info OUT` take the result like a SavedModel."
        ),
    )
    g = p.add_argument_group("Model")
    g.add_argument("--model", default=LabelConfig.model,
                   help="A model version directory, or a base directory (its highest version).")
    g.add_argument("--out", required=True, default=argparse.SUPPRESS,
                   help="Required. The new .tflite file.")
    g = p.add_argument_group("Quantization")
    g.add_argument("--quantize", choices=QUANTIZE_MODES, default="none",
                   help="none: float32; dynamic: int8 weights, float activations; float16: float16 "
                        "weights; int8: integer weights and activations (needs "
                        "--representative_dir), float input and output, a scale per output "
                        "channel; int8_per_tensor: int8 with one scale per weight tensor, a "
                        "smaller file for accelerators that need it; can lose accuracy "
                        "on depthwise convolutions (check with trxsfr label).")
    g.add_argument("--representative_dir", default=None,
                   help="Images (any folder layout, e.g. the training folder) to calibrate int8 "
                        "activation ranges on; decoded exactly as for training.")
    g.add_argument("--max_representative_images", type=int, default=MAX_REPRESENTATIVE_IMAGES,
                   help="Calibration images used at most, spread over the folder.")
    g = p.add_argument_group("Output")
    g.add_argument("--quiet", action="store_true", help="Only warnings and results.")
    p.set_defaults(run=run_export_tflite)


def run_export_tflite(args) -> int:
    from trxsfr import lite

    if args.representative_dir and args.quantize not in lite.CALIBRATED_MODES:
        log.warning("--representative_dir is only used by the int8 modes; ignoring it")
    result = lite.convert(args.model, args.out, args.quantize, args.representative_dir,
                            args.max_representative_images)
    out(f"Quantization: {result['quantize']}")
    out(f"Size: {result['bytes'] / 1e6:.2f} MB ({result['bytes']:,} bytes)")
    out(f"Labels: {result['labels_path']}")
    out(f"Metadata: {result['metadata_path']}")
    out(result["path"])
    return EXIT_OK


# ---------------------------------------------------------------- info

def add_info_parser(sub) -> None:
    p = sub.add_parser(
        "info", formatter_class=Formatter,
        help="Footprint of a SavedModel or .tflite: size, memory, load time, latency, throughput.",
        description=(
            "Loads MODEL in this process and reports its module, labels, image size,\n"
            "parameter count, size on disk, load time, resident memory after load, the\n"
            "median latency of one image and the throughput of a batch (forward pass on\n"
            "float images; decoding is the same for every variant and not included)."
        ),
    )
    g = p.add_argument_group("Model")
    g.add_argument("model", help="A SavedModel version or base directory, or a .tflite file.")
    g = p.add_argument_group("Measurement")
    g.add_argument("--batch_size", type=int, default=32,
                   help="Images per call for the throughput figure.")
    g.add_argument("--runs", type=int, default=20,
                   help="Timed calls for the latency figure (a quarter as many for throughput).")
    g = p.add_argument_group("Output")
    g.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: one 'name: value' line each; json: one JSON document.")
    p.set_defaults(run=run_info)


def run_info(args) -> int:
    from trxsfr.info import measure

    fp = process.quietly(measure, args.model, args.batch_size, args.runs)
    if args.format == "json":
        out(json.dumps(fp.to_json(), indent=1))
    else:
        for line in info_lines(fp):
            out(line)
    return EXIT_OK


def info_lines(fp) -> list[str]:
    """`trxsfr info`'s text: one figure a line."""
    mb = 1024 * 1024
    return [
        f"Model: {fp.path} ({fp.format}{', quantize ' + fp.quantize if fp.quantize else ''})",
        f"Runtime: {fp.runtime}",
        f"Module: {fp.module or 'unknown'}",
        f"Labels ({len(fp.labels)}): {', '.join(fp.labels)}",
        *([f"Unknown threshold: {fp.unknown_threshold:.4f} (a top score below it answers "
           f"\"unknown\")"] if fp.unknown_threshold is not None else []),
        f"Image size: {fp.image_size[0]}x{fp.image_size[1]}",
        f"Parameters: {fp.parameters:,}",
        f"Size on disk: {fp.disk_bytes / mb:.2f} MiB ({fp.disk_bytes:,} bytes)",
        f"Load time: {fp.load_seconds:.3f} s",
        f"Resident memory after load: {fp.rss_after_load_bytes / mb:.0f} MiB "
        f"(+{(fp.rss_after_load_bytes - fp.rss_before_load_bytes) / mb:.0f} MiB for the model)",
        f"Latency, 1 image: {fp.latency_ms_p50:.2f} ms median, {fp.latency_ms_p90:.2f} ms p90",
        f"Throughput, batch {fp.batch_size}: {fp.throughput_images_per_s:.1f} images/s",
    ]
