"""Benchmark of `serve` (REST and gRPC, against the raw forward on TensorFlow and on LiteRT)
and of TFLite quantization on a MobileNet-V2-sized classifier.

    python -m benchmarks.bench_serve [--quick] [--work DIR]       # serving vs raw forward
        [--runtime auto|tf|litert] [--json PATH]                  # the server's runtime; figures as JSON
        [--max_batch_size N] [--batch_timeout_micros N] [--num_batch_threads N]  # the server's batching
    python -m benchmarks.bench_serve --tflite-table [--work DIR]  # quantization table

Both build the same setup offline: a MobileNet-V2 (alpha 1.0, 224x224)
extractor with fixed random weights (`benchmarks.mobilenet_fixture`), a few hundred
generated colour-blob pictures of 200-280 px, and a classifier retrained on
them. With `--work DIR` the setup is kept and reused by the next run.

Serving: `trxsfr serve --grpc_port --runtime R` (R from `--runtime`, default auto) runs
in a subprocess on free loopback ports, its $TRXSFR_HOME (where it keeps its LiteRT
conversion) in the work directory; it is ready when its /healthz answers, which also
gives its batch counters. The output says which runtime ran the served network (from
/healthz if it says, else from the flag, the server's fallback warning and the
conversion it kept). This process sends one JPEG per request from 1, 8 and 32
clients, each on its own connection: over REST ({"b64": ...}, TF Serving's row
format, keep-alive) and over gRPC (tensorflow-serving-api's PredictionServiceStub, a
DT_STRING tensor, one channel per client), and reports requests/s and p50/p99
latency of each, beside the extractor's raw forward images/s at batch 1 and 32 on
both runtimes: TensorFlow's executor (`tf.saved_model.load(module)(images)`) and
LiteRT's interpreter on the extractor's float32 conversion (one interpreter, a
thread per core). All are measured in the same run: raw (TF and LiteRT), REST and
gRPC runs interleaved in rounds, so all see the same machine load; a shared
machine's load changes by the minute. Targets: (issue 5) REST concurrency 32 >=
0.8 x TF raw batch 32, concurrency 1 >= 0.7 x TF raw batch 1; (issue 24) gRPC at
concurrency 32 >= REST at concurrency 32; (issue 23) REST and gRPC at concurrency
32 >= 1.3 x TF raw batch 32 and at concurrency 1 >= 1.0 x TF raw batch 1, each
also given over LiteRT's raw rate at the same batch (no target). On Linux it also
reads the server's CPU time from /proc and splits the REST concurrency-32 ratio
over TF's raw into two factors: how many cores serving keeps busy against the raw
forward pass, and the raw forward's CPU per image against serving's CPU per request.

TFLite: each quantization mode's size, held-out accuracy and single-image
latency beside the float SavedModel. Targets: int8 and dynamic >= 3.5x
smaller than float, <= 2 points of held-out accuracy lost. Each .tflite is
written by `trxsfr export-tflite` (through `trxsfr.cli.main`) and measured
through `trxsfr.load`; its mode is read back from its metadata.

This is a benchmark, not a test: it prints figures (stdout), logs progress
(stderr) and exits 0 whatever they are. It is an entry point like trxsfr's
CLI, so it prints. It lives in `benchmarks/` at the repository root and is not
installed with trxsfr: run it from a checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

import numpy as np

from trxsfr.info import disk_bytes, time_forward
from trxsfr.lite import CALIBRATED_MODES, QUANTIZE_MODES

log = logging.getLogger("benchmarks.bench_serve")

IMAGE_SIZE = 224
CONCURRENCY = (1, 8, 32)
MODEL_NAME = "bench"  # the served model's name in the REST paths
# The variants of the quantization table: every `export-tflite --quantize` mode
# (CALIBRATED_MODES: those that take --representative_dir).


def setup(work: str, per_class: int, heldout_per_class: int, steps: int) -> dict:
    """Extractor, images and one trained model under `work`, reusing what is already there."""
    from benchmarks.mobilenet_fixture import build_mobilenet_v2_extractor
    from trxsfr.base import contract
    from trxsfr.base.config import RetrainConfig
    from trxsfr.kit import write_image_set

    paths = {name: os.path.join(work, name) for name in
             ("module", "images", "heldout", "cache", "models", "runs")}
    if not os.path.exists(os.path.join(paths["module"], "saved_model.pb")):
        log.info("building the MobileNet-V2 extractor (%dx%d, fixed random weights)",
                 IMAGE_SIZE, IMAGE_SIZE)
        build_mobilenet_v2_extractor(paths["module"], image_size=IMAGE_SIZE, seed=0)
    if not os.path.isdir(paths["images"]):
        write_image_set(paths["images"], per_class, seed=11, size_range=(200, 280))
        write_image_set(paths["heldout"], heldout_per_class, seed=12, size_range=(200, 280))
    if not os.path.isdir(paths["models"]):
        import trxsfr

        log.info("retraining on %d images per class", per_class)
        result = trxsfr.retrain(RetrainConfig(
            image_dir=paths["images"], tfhub_module=paths["module"], bottleneck_dir=paths["cache"],
            saved_model_dir=paths["models"], summaries_dir=paths["runs"],
            how_many_training_steps=steps))
        log.info("test accuracy %.3f", result.test_accuracy or float("nan"))
    paths["version"] = contract.resolve_version(paths["models"])
    paths["work"] = work
    paths["image_size"] = IMAGE_SIZE
    return paths


class RawForward:
    """The extractor alone on float32 [batch, size, size, 3] (no decode, no head), here:
    TensorFlow's executor (`tf.saved_model.load(module_dir)(images)`), or with `litert_dir`
    LiteRT's interpreter on the extractor's float32 conversion (`litert.for_extraction`,
    kept under `litert_dir`), one interpreter with a thread per core. If LiteRT cannot
    run the extractor (its conversion refused at "auto"), `on_litert` is False and `why`
    says so; then this measures nothing for LiteRT.
    """

    def __init__(self, module_dir: str, image_size: int, litert_dir: Optional[str] = None):
        import tensorflow as tf

        self._tf = tf
        self.image_size = image_size
        self.on_litert, self.why, self.threads = False, "", None
        if not litert_dir:
            module = tf.saved_model.load(module_dir)
            self.forward = lambda images: module(images).numpy()
            return
        from trxsfr.base import extractors, imaging, litert

        lite = litert.for_extraction(extractors.load(module_dir), "auto", litert_dir)
        if lite.runtime == "tf":
            self.why = "LiteRT refused the extractor's conversion (its warning above)"
            return
        self.threads = imaging.usable_cores()
        self.forward = litert.InterpreterPool(lite.fn.model, self.threads)
        self.on_litert = True

    def measure(self, batch: int, seconds: float) -> tuple[float, float]:
        """(images/s from the median call, CPU ms per image over all timed calls)."""
        images = np.random.default_rng(0).random(
            (batch, self.image_size, self.image_size, 3), dtype=np.float32)
        if not self.on_litert:
            images = self._tf.constant(images)
        for _ in range(2):
            self.forward(images)
        times, end, cpu_start = [], time.perf_counter() + seconds, time.process_time()
        while time.perf_counter() < end or len(times) < 3:
            start = time.perf_counter()
            self.forward(images)
            times.append(time.perf_counter() - start)
        cpu_ms = 1000 * (time.process_time() - cpu_start) / (batch * len(times))
        return batch / statistics.median(times), cpu_ms


def free_port(host: str) -> int:
    """A TCP port nothing listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Served:
    """`trxsfr serve --quiet --grpc_port P` in a subprocess on free ports of 127.0.0.1.

    It is ready when GET /healthz says "ok"; the addresses are the ones chosen here.
    Its stderr is kept (`stderr_text`): the runtime it chose is read from there when its
    /healthz does not say. With `home`, its $TRXSFR_HOME (where it keeps the LiteRT
    conversions of the versions it loads) is that folder.
    """

    host = "127.0.0.1"
    path = f"/v1/models/{MODEL_NAME}:predict"

    def __init__(self, base: str, *flags, timeout: float = 300.0, home: Optional[str] = None):
        self.port = free_port(self.host)
        self.grpc_port = free_port(self.host)
        while self.grpc_port == self.port:
            self.grpc_port = free_port(self.host)
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ, TRXSFR_HOME=home) if home else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trxsfr", "serve", "--model_base_path", base,
             "--model_name", MODEL_NAME, "--host", self.host, "--port", str(self.port),
             "--grpc_port", str(self.grpc_port), "--quiet", *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self._stderr_tail()
                self._stderr.close()
                raise RuntimeError(f"server exited with {self.proc.returncode}: {tail}")
            try:
                self.ready = self.health()
                if self.ready.get("status") == "ok":
                    break
            except (OSError, http.client.HTTPException, ValueError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                tail = self._stderr_tail()
                self.stop()
                raise RuntimeError(f"server not ready after {timeout:.0f}s: {tail}")
            time.sleep(0.2)

    def stderr_text(self) -> str:
        """What the server has written to stderr so far (warnings and errors: --quiet)."""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def _stderr_tail(self) -> str:
        return self.stderr_text().strip()[-1500:]

    def health(self) -> dict:
        """GET /healthz: status, version, and the batcher's counters (batches, images)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", "/healthz")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def cpu_seconds(self) -> Optional[float]:
        """CPU time the server process has used (Linux /proc), or None."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


class RestClient:
    """One keep-alive connection sending TF Serving REST :predict bodies."""

    def __init__(self, served: Served, bodies: list[bytes]):
        self.served, self.bodies = served, bodies
        self.conn = http.client.HTTPConnection(served.host, served.port, timeout=60)

    def send(self, i: int) -> bool:
        try:
            self.conn.request("POST", self.served.path, self.bodies[i % len(self.bodies)],
                              {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
            return resp.status == 200 and data.startswith(b'{"predictions"')
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.served.host, self.served.port, timeout=60)
            return False

    def close(self) -> None:
        self.conn.close()


class GrpcClient:
    """One gRPC channel sending PredictRequests through tensorflow-serving-api's stub."""

    def __init__(self, served: Served, requests: list):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self._error = grpc.RpcError
        self.requests = requests
        self.channel = grpc.insecure_channel(f"{served.host}:{served.grpc_port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def send(self, i: int) -> bool:
        try:
            response = self.stub.Predict(self.requests[i % len(self.requests)], timeout=60)
        except self._error:
            return False
        return "probabilities" in response.outputs

    def close(self) -> None:
        self.channel.close()


def grpc_requests(files: list[str]) -> list:
    """One PredictRequest per file: its JPEG bytes as image_bytes, DT_STRING [1]."""
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    requests = []
    for f in files:
        with open(f, "rb") as fh:
            data = fh.read()
        req = predict_pb2.PredictRequest()
        req.model_spec.name = MODEL_NAME
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[data])
        tensor.tensor_shape.dim.add(size=1)
        req.inputs["image_bytes"].CopyFrom(tensor)
        requests.append(req)
    return requests


def load_run(served: Served, make_client, concurrency: int, seconds: float,
             warm: float = 1.0) -> dict:
    """`concurrency` clients (`make_client()`: a RestClient or GrpcClient), each on its own
    connection, for `seconds` after `warm`."""
    latencies: list[float] = []
    failures, answered = [0], [0]
    lock = threading.Lock()
    start_at = time.perf_counter()
    measure_from, stop_at = start_at + warm, start_at + warm + seconds

    def client(k: int) -> None:
        conn = make_client()
        i = k
        mine, count = [], 0
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                break
            ok = conn.send(i)
            i += concurrency
            done = time.perf_counter()
            count += ok
            if now >= measure_from and done <= stop_at:
                if ok:
                    mine.append(done - now)
                else:
                    with lock:
                        failures[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            answered[0] += count

    before = served.health()
    server_cpu, client_cpu = served.cpu_seconds(), time.process_time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server_cpu = None if server_cpu is None else served.cpu_seconds() - server_cpu
    client_cpu = time.process_time() - client_cpu  # this process: the client threads
    after = served.health()
    return {  # counters only: _merge computes the figures over all rounds
        "concurrency": concurrency, "failures": failures[0], "answered": answered[0],
        "server_cpu_s": server_cpu, "client_cpu_s": client_cpu,
        "wall_s": time.perf_counter() - start_at,
        "batches": after["batches"] - before["batches"], "images": after["images"] - before["images"],
        "latencies_ms": [1000 * x for x in latencies], "seconds": seconds,
    }


def _merge(parts: list[dict]) -> dict:
    ms = sorted(x for p in parts for x in p["latencies_ms"])
    seconds = sum(p["seconds"] for p in parts)
    answered = sum(p["answered"] for p in parts)
    server_cpu = None if any(p["server_cpu_s"] is None for p in parts) else \
        sum(p["server_cpu_s"] for p in parts)
    client_cpu = sum(p["client_cpu_s"] for p in parts)
    return {
        "concurrency": parts[0]["concurrency"], "requests": len(ms),
        "failures": sum(p["failures"] for p in parts), "requests_per_s": len(ms) / seconds,
        "p50_ms": ms[len(ms) // 2] if ms else float("nan"),
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else float("nan"),
        "mean_batch": sum(p["images"] for p in parts) / max(1, sum(p["batches"] for p in parts)),
        # CPU over the whole runs (warm-up included) per request answered in them
        "server_cpu_ms_per_request":
        None if server_cpu is None else 1000 * server_cpu / max(1, answered),
        "client_cpu_ms_per_request": 1000 * client_cpu / max(1, answered),
        "cores_busy": None if server_cpu is None else
        (server_cpu + client_cpu) / sum(p["wall_s"] for p in parts),
    }


def bench_serving(paths: dict, seconds: float, rounds: int, server_flags: tuple = ()) -> dict:
    """Serving runs interleaved with raw forward runs, so all see the same machine load.

    For each concurrency, `rounds` times: the raw forward at batch 1 on TensorFlow, then
    on LiteRT, then the same at batch 32, each for a quarter of `seconds / rounds`; then
    REST serving for `seconds / rounds`, then gRPC serving as long. Ratios compare the
    means over the rounds of the same concurrency. The server's LiteRT conversions (and
    the raw LiteRT one) are kept under `paths["work"]` (a new temporary folder without
    it) and made before anything is timed.
    """
    import base64

    from trxsfr.base import imaging

    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(paths["heldout"]) for f in fs)
    bodies = []
    for f in files:
        with open(f, "rb") as fh:
            bodies.append(json.dumps({"instances": [{"b64": base64.b64encode(fh.read()).decode()}]})
                          .encode())
    requests = grpc_requests(files)
    work = paths.get("work") or tempfile.mkdtemp(prefix="trxsfr-bench-serve-")
    raw = RawForward(paths["module"], paths["image_size"])
    lite = RawForward(paths["module"], paths["image_size"], os.path.join(work, "litert"))
    raw_runs, lite_runs = {1: [], 32: []}, {1: [], 32: []}
    home = os.path.join(work, "trxsfr_home")
    served = Served(paths["models"], *server_flags, home=home)
    served_version = served.ready.get("version")
    try:
        runtime = server_runtime(served, _flag(server_flags, "--runtime", "auto"), home)
        runs, grpc_runs = [], []
        slice_s = seconds / rounds
        for c in CONCURRENCY:
            log.info("serving at concurrency %d (%d rounds, REST and gRPC)", c, rounds)
            parts, grpc_parts = [], []
            for _ in range(rounds):
                for b in (1, 32):
                    raw_runs[b].append((c, *raw.measure(b, slice_s / 4)))
                    if lite.on_litert:
                        lite_runs[b].append((c, *lite.measure(b, slice_s / 4)))
                parts.append(load_run(served, lambda: RestClient(served, bodies), c, slice_s,
                                      warm=0.5))
                grpc_parts.append(load_run(served, lambda: GrpcClient(served, requests), c,
                                           slice_s, warm=0.5))
            runs.append(_merge(parts))
            grpc_runs.append(_merge(grpc_parts))
    finally:
        served.stop()
    by_c = _by_concurrency(raw_runs)
    result = {"served_version": served_version, "server_runtime": runtime,
              "raw_by_concurrency": by_c, "runs": runs,
              "grpc_runs": grpc_runs,
              "grpc_over_rest_c32": grpc_runs[-1]["requests_per_s"] / runs[-1]["requests_per_s"],
              **_raw_summary(raw_runs),
              "cores": imaging.usable_cores(),
              "jpeg_bytes_mean": float(np.mean([os.path.getsize(f) for f in files])),
              "ratio_c1": runs[0]["requests_per_s"] / by_c[1][1],
              "ratio_c32": runs[-1]["requests_per_s"] / by_c[32][32],
              "litert": None, "litert_why_not": lite.why}
    limits = {"tf": by_c}
    if lite.on_litert:
        lite_by_c = _by_concurrency(lite_runs)
        result["litert"] = {"threads": lite.threads, "raw_by_concurrency": lite_by_c,
                            **_raw_summary(lite_runs)}
        limits["litert"] = lite_by_c
    # Issue 23: each protocol's concurrency 1 and 32 over each runtime's raw batch 1 and 32
    # measured in the same rounds (None: that runtime's raw rate was not measured).
    result["issue23"] = {
        protocol: {f"c{c}_over_{name}_b{c}": protocol_runs[i]["requests_per_s"] / limit[c][c]
                   for i, c in ((0, 1), (-1, 32)) for name, limit in limits.items()}
        for protocol, protocol_runs in (("rest", runs), ("grpc", grpc_runs))}
    for protocol in result["issue23"].values():
        for c in (1, 32):
            protocol.setdefault(f"c{c}_over_litert_b{c}", None)
    last = runs[-1]
    if last["server_cpu_ms_per_request"] is not None:
        # concurrency 32 / raw batch 32 = (cores serving keeps busy / cores the raw forward
        # keeps busy) x (raw forward CPU per image / serving CPU per request), up to the
        # difference between their measuring windows: which of the two holds it back.
        raw_cpu = float(np.mean([ms for c, _, ms in raw_runs[32] if c == CONCURRENCY[-1]]))
        per_request = last["server_cpu_ms_per_request"] + last["client_cpu_ms_per_request"]
        result["c32_raw_cpu_ms_per_image"] = raw_cpu
        result["c32_raw_cores_busy"] = by_c[32][32] * raw_cpu / 1000
        result["c32_busy_factor"] = last["cores_busy"] / result["c32_raw_cores_busy"]
        result["c32_cpu_factor"] = raw_cpu / per_request
    return result


def _by_concurrency(raw_runs: dict) -> dict:
    """{concurrency: {batch: mean images/s of the raw runs in that concurrency's rounds}}."""
    return {c: {b: float(np.mean([v for cc, v, _ in raw_runs[b] if cc == c])) for b in (1, 32)}
            for c in CONCURRENCY}


def _raw_summary(raw_runs: dict) -> dict:
    """Mean, min and max images/s and mean CPU ms per image of one runtime's raw runs."""
    return {"raw": {b: float(np.mean([v for _, v, _ in raw_runs[b]])) for b in (1, 32)},
            "raw_min": {b: min(v for _, v, _ in raw_runs[b]) for b in (1, 32)},
            "raw_max": {b: max(v for _, v, _ in raw_runs[b]) for b in (1, 32)},
            "raw_cpu_ms_per_image": {b: float(np.mean([ms for _, _, ms in raw_runs[b]]))
                                     for b in (1, 32)}}


def _flag(flags: tuple, name: str, default: str) -> str:
    """The value of `name` in a flat (flag, value, ...) tuple, or `default`."""
    flags = list(flags)
    return flags[flags.index(name) + 1] if name in flags else default


# What the server logs when `--runtime auto` leaves a version on TensorFlow (base/litert.py).
FALLBACK_LINE = "runs on TensorFlow, not LiteRT"


def server_runtime(served: Served, requested: str, home: str) -> dict:
    """Which runtime ran the served version's network: {"requested", "ran", "how"}.

    From its /healthz when that says ("runtime"); else inferred. `serve --quiet` logs
    warnings only, so a LiteRT start leaves no line: "tf" when that was asked or its
    stderr has auto's fallback warning; "litert" when LiteRT was asked or auto left no
    fallback warning and a conversion checked equal to TensorFlow's is kept in its
    `$TRXSFR_HOME/litert` (`home`); otherwise "unknown".
    """
    reported = served.ready.get("runtime")
    if reported:
        return {"requested": requested, "ran": str(reported), "how": "its /healthz"}
    if requested == "tf":
        return {"requested": requested, "ran": "tf", "how": "--runtime tf"}
    fallback = [line for line in served.stderr_text().splitlines() if FALLBACK_LINE in line]
    if fallback:
        return {"requested": requested, "ran": "tf", "how": fallback[-1].strip()}
    if requested == "litert":  # it would have exited had LiteRT refused
        return {"requested": requested, "ran": "litert", "how": "--runtime litert (it started)"}
    folder = os.path.join(home, "litert")
    checked = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if name.endswith(".json"):
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    if json.load(f).get("ok"):
                        checked.append(name)
    if checked:
        return {"requested": requested, "ran": "litert",
                "how": f"no fallback warning on its stderr; checked conversion {folder}/{checked[0]}"}
    return {"requested": requested, "ran": "unknown",
            "how": f"no fallback warning, but no checked conversion in {folder}"}


# Issue 23's targets for serving, over TensorFlow's raw forward of the same rounds.
TARGET_C1, TARGET_C32 = 1.0, 1.3


def report_serving(r: dict) -> list[str]:
    rt, lite = r["server_runtime"], r["litert"]
    lines = [f"Server: --runtime {rt['requested']}, ran on {rt['ran']} ({rt['how']})",
             "Raw forward of the extractor, images/s (mean of the interleaved runs, min-max):",
             f"  TensorFlow's executor: "
             f"batch 1 {r['raw'][1]:.1f} ({r['raw_min'][1]:.1f}-{r['raw_max'][1]:.1f}), "
             f"batch 32 {r['raw'][32]:.1f} ({r['raw_min'][32]:.1f}-{r['raw_max'][32]:.1f})"]
    if lite:
        lines.append(f"  LiteRT's interpreter (float32 conversion, one interpreter, "
                     f"{lite['threads']} threads): "
                     f"batch 1 {lite['raw'][1]:.1f} ({lite['raw_min'][1]:.1f}-"
                     f"{lite['raw_max'][1]:.1f}), batch 32 {lite['raw'][32]:.1f} "
                     f"({lite['raw_min'][32]:.1f}-{lite['raw_max'][32]:.1f})")
    else:
        lines.append(f"  LiteRT's interpreter: not measured: {r['litert_why_not']}")
    lines += [f"Serving, one JPEG (mean {r['jpeg_bytes_mean'] / 1024:.1f} KiB) per request:",
              "  concurrency  requests/s  p50 ms  p99 ms  requests  failures  mean batch"
              "  raw b1 / b32 beside it: TF, LiteRT"]
    for run in r["runs"]:
        c = run["concurrency"]
        raw = r["raw_by_concurrency"][c]
        beside = f"{raw[1]:.1f} / {raw[32]:.1f}"
        if lite:
            beside += f", {lite['raw_by_concurrency'][c][1]:.1f} / {lite['raw_by_concurrency'][c][32]:.1f}"
        lines.append(f"  {c:>11}  {run['requests_per_s']:>10.1f}  {run['p50_ms']:>6.1f}"
                     f"  {run['p99_ms']:>6.1f}  {run['requests']:>8}  {run['failures']:>8}"
                     f"  {run['mean_batch']:>10.1f}  {beside}")
    lines.append("Serving over gRPC (PredictionService.Predict, the same JPEGs), in the same run:")
    lines.append("  concurrency  requests/s  p50 ms  p99 ms  requests  failures  mean batch"
                 "  REST requests/s beside it  server CPU ms/request, gRPC / REST")
    for run, rest in zip(r["grpc_runs"], r["runs"]):
        cpu = ("n/a" if run["server_cpu_ms_per_request"] is None else
               f"{run['server_cpu_ms_per_request']:.2f} / {rest['server_cpu_ms_per_request']:.2f}")
        lines.append(f"  {run['concurrency']:>11}  {run['requests_per_s']:>10.1f}  {run['p50_ms']:>6.1f}"
                     f"  {run['p99_ms']:>6.1f}  {run['requests']:>8}  {run['failures']:>8}"
                     f"  {run['mean_batch']:>10.1f}  {rest['requests_per_s']:>25.1f}  {cpu:>13}")
    lines.append(f"gRPC / REST at concurrency 32 = {r['grpc_over_rest_c32']:.2f} (issue 24, "
                 f"target >= 1: {'met' if r['grpc_over_rest_c32'] >= 1 else 'NOT met'})")
    lines.append(f"Concurrency 1 / raw batch 1 = {r['ratio_c1']:.2f} (issue 5, REST over "
                 f"TensorFlow's raw; target >= 0.7: {'met' if r['ratio_c1'] >= 0.7 else 'NOT met'})")
    lines.append(f"Concurrency 32 / raw batch 32 = {r['ratio_c32']:.2f} (issue 5, REST over "
                 f"TensorFlow's raw; target >= 0.8: {'met' if r['ratio_c32'] >= 0.8 else 'NOT met'})")
    lines.append("Issue 23, serving over both raw limits of the same rounds (targets over "
                 "TensorFlow's):")
    for c, target in ((32, TARGET_C32), (1, TARGET_C1)):
        for protocol, name in (("rest", "REST"), ("grpc", "gRPC")):
            ratios = r["issue23"][protocol]
            tf_ratio, lite_ratio = ratios[f"c{c}_over_tf_b{c}"], ratios[f"c{c}_over_litert_b{c}"]
            lite_text = "not measured" if lite_ratio is None else f"{lite_ratio:.2f}"
            lines.append(f"  {name} concurrency {c} / TF raw batch {c} = {tf_ratio:.2f} "
                         f"(target >= {target}: {'met' if tf_ratio >= target else 'NOT met'}); "
                         f"/ LiteRT raw batch {c} = {lite_text}")
    last = r["runs"][-1]
    if "c32_cpu_factor" in r:
        lines.append(
            f"CPU at concurrency 32: server {last['server_cpu_ms_per_request']:.2f} + load "
            f"generator {last['client_cpu_ms_per_request']:.2f} ms per request against "
            f"{r['c32_raw_cpu_ms_per_image']:.2f} ms per image for the raw forward at batch 32 "
            f"beside it; "
            f"cores busy: {last['cores_busy']:.2f} serving, {r['c32_raw_cores_busy']:.2f} raw. "
            f"So concurrency 32 / raw batch 32 ~ {r['c32_busy_factor']:.2f} (cores busy) x "
            f"{r['c32_cpu_factor']:.2f} (CPU per image) = "
            f"{r['c32_busy_factor'] * r['c32_cpu_factor']:.2f}.")
    return lines


def export_tflite(version: str, out: str, mode: str, representative_dir: str) -> str:
    """`trxsfr export-tflite` in this process; returns the .tflite it wrote (`out`).

    Raises:
        RuntimeError: the command failed (its error line went to stderr).
    """
    from trxsfr import cli

    argv = ["export-tflite", "--model", version, "--out", out, "--quantize", mode, "--quiet"]
    if mode in CALIBRATED_MODES:
        argv += ["--representative_dir", representative_dir]
    with contextlib.redirect_stdout(sys.stderr):  # its result lines are progress to us
        code = cli.main(argv)
    if code != 0 or not os.path.isfile(out):
        raise RuntimeError(f"trxsfr {' '.join(argv)} exited with {code}")
    return out


def heldout_accuracy(model, heldout: str) -> tuple[np.ndarray, float, int]:
    """(probabilities float32 [N, C], accuracy, N) of a loaded model on `heldout/<class>/*`,
    the images that decoded, in sorted order."""
    files = [(os.path.join(heldout, name, f), name) for name in sorted(os.listdir(heldout))
             for f in sorted(os.listdir(os.path.join(heldout, name)))]
    predictions = model.predict_paths([path for path, _ in files], batch_size=32)
    truth = np.array([list(model.labels).index(files[i][1]) for i in predictions.ok])
    probs = predictions.probabilities
    return probs, float(np.mean(probs.argmax(1) == truth)), len(truth)


def single_image_ms(model, runs: int) -> float:
    """Median ms of `model.predict_images` on one random image, after one warm-up call."""
    return 1000 * statistics.median(time_forward(model, 1, runs))


def load_model(path: str):
    """trxsfr's loader of exported models (`trxsfr.load`: a SavedModel or a .tflite)."""
    import trxsfr

    return trxsfr.load(path)


def tflite_table(paths: dict, runs: int) -> list[dict]:
    from trxsfr.base import contract

    out_dir = tempfile.mkdtemp(prefix="tflite-", dir=paths["work"])  # a new folder: never overwrite
    rows = []
    variants = [("float SavedModel", paths["version"])]
    for mode in QUANTIZE_MODES:
        log.info("converting: %s", mode)
        path = export_tflite(paths["version"], os.path.join(out_dir, f"model-{mode}.tflite"),
                             mode, paths["images"])
        written = contract.read_info(contract.tflite_sidecars(path)[1]).tflite
        if written is None or written.quantize != mode:
            raise RuntimeError(f"{path}'s metadata says quantize "
                               f"{written and written.quantize}, not {mode}")
        variants.append((f"tflite {mode}", path))
    for name, path in variants:
        model = load_model(path)
        probs, accuracy, count = heldout_accuracy(model, paths["heldout"])
        latency = single_image_ms(model, runs)
        ref = rows[0]["probabilities"] if rows else probs
        rows.append({"variant": name, "path": path, "bytes": disk_bytes(path),
                     "accuracy": accuracy, "count": count,
                     "latency_ms": latency, "probabilities": probs,
                     "top1_agrees": float(np.mean(probs.argmax(1) == ref.argmax(1))),
                     "max_prob_diff": float(np.abs(probs - ref).max())})
    return rows


def report_tflite(rows: list[dict]) -> list[str]:
    base = rows[0]
    lines = [f"  {'variant':<22}  size MB  x smaller  held-out acc  vs float  top-1 = float  "
             f"max |dp|  latency ms (1 image)"]
    for r in rows:
        lines.append(f"  {r['variant']:<22}  {r['bytes'] / 1e6:>7.2f}  {base['bytes'] / r['bytes']:>9.2f}"
                     f"  {100 * r['accuracy']:>11.2f}%  {100 * (r['accuracy'] - base['accuracy']):>+7.2f}"
                     f"  {100 * r['top1_agrees']:>12.1f}%  {r['max_prob_diff']:>8.3f}"
                     f"  {r['latency_ms']:>8.2f}")
    lines.append(f"  (held-out N={base['count']}; 'x smaller', 'vs float' (points), 'top-1 = float' "
                 f"(share of pictures with the float model's top class) and 'max |dp|' (largest "
                 f"probability difference) against the float SavedModel; latency: forward pass on "
                 f"one 224x224 image)")
    for r in rows:
        if r["variant"].endswith(("int8", "dynamic", "int8_per_tensor")):
            small = base["bytes"] / r["bytes"] >= 3.5
            kept = 100 * (base["accuracy"] - r["accuracy"]) <= 2
            lines.append(f"  {r['variant']}: >= 3.5x smaller {'met' if small else 'NOT met'}; "
                         f"<= 2 points lost {'met' if kept else 'NOT met'}")
    return lines


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_serve",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="Fewer images and shorter runs: a smoke run, not figures to quote.")
    p.add_argument("--tflite-table", dest="tflite_table", action="store_true",
                   help="Print the quantization table instead of the serving figures.")
    p.add_argument("--work", default=None,
                   help="Keep the extractor, images and model here and reuse them next time; "
                        "unset: a temporary directory.")
    p.add_argument("--seconds", type=float, default=None,
                   help="Measured serving seconds per concurrency level, split into rounds "
                        "interleaved with raw forward runs (default 15, --quick 4).")
    p.add_argument("--max_batch_size", type=int, default=None,
                   help="The server's --max_batch_size (unset: serve's default).")
    p.add_argument("--batch_timeout_micros", type=int, default=None,
                   help="The server's --batch_timeout_micros (unset: serve's default).")
    p.add_argument("--num_batch_threads", type=int, default=None,
                   help="The server's --num_batch_threads (unset: serve's default).")
    p.add_argument("--runtime", default="auto", choices=("auto", "tf", "litert"),
                   help="The server's --runtime: what runs the served network. The raw "
                        "forward is measured on both runtimes whatever this is.")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="Serving run: also write its figures (every number printed, the issue-23 "
                        "ratios under 'issue23') to PATH as JSON.")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    server_flags = tuple(str(x) for name in ("max_batch_size", "batch_timeout_micros",
                                             "num_batch_threads", "runtime")
                         if getattr(args, name) is not None
                         for x in (f"--{name}", getattr(args, name)))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="bench: %(message)s")
    logging.getLogger("trxsfr").setLevel(logging.INFO)
    seconds = args.seconds or (4.0 if args.quick else 15.0)
    work = args.work or tempfile.mkdtemp(prefix="trxsfr-bench-")
    os.makedirs(work, exist_ok=True)
    per_class, heldout, steps = (40, 15, 300) if args.quick else (100, 40, 1000)
    paths = setup(work, per_class, heldout, steps)
    print(f"Model: {paths['version']} (MobileNet-V2 extractor {IMAGE_SIZE}x{IMAGE_SIZE}, "
          f"{per_class} training images per class, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start)", flush=True)
    if args.tflite_table:
        rows = tflite_table(paths, 10 if args.quick else 30)
        lines = report_tflite(rows)
    else:
        result = bench_serving(paths, seconds, 1 if args.quick else 3, server_flags)
        lines = report_serving(result)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1)
    for line in lines:
        print(line, flush=True)
    print(f"Load average at end: {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
