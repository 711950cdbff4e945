"""`trxsfr serve`: the real server in a subprocess on a free loopback port, as a client sees it.

One server process serves the whole module (each start costs a TensorFlow
import): TF Serving-style requests against `label`, every malformed request,
then hot-swapping versions under a client that never stops sending.
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from helpers import assert_bad_input, mark_older_preprocessing, run_cli, subprocess_env

from trxsfr.base import contract

MODEL = "flowers"


class ServerProcess:
    """`python -m trxsfr serve ... --port 0`; its URL (and its gRPC address, with --grpc_port)
    are read from the one line it prints on stdout."""

    def __init__(self, *args, timeout=120):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trxsfr", "serve", "--host", "127.0.0.1", "--port", "0",
             *[str(a) for a in args]],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
        self.err_lines, self.url, self.grpc_address = [], None, None
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.err_lines.append(line)
            ready.set()

        def read_stdout():
            for line in self.proc.stdout:
                m = re.search(r"^serving model \S+ version \d+ at (http://127\.0\.0\.1:\d+)/", line)
                if m and not self.url:
                    self.url = m.group(1)
                    grpc = re.search(r"; gRPC at (127\.0\.0\.1:\d+)$", line.rstrip())
                    self.grpc_address = grpc and grpc.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        threading.Thread(target=read_stdout, daemon=True).start()
        ready.wait(timeout)
        if not self.url:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.err_lines[-40:]))

    @property
    def log(self):
        return "".join(self.err_lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def request(url, body=None, method=None, headers=None, timeout=30):
    """(HTTP status, parsed JSON or text) for one request."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {
        "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def b64_file(path):
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def heldout_files(fx, every=5):
    return sorted(os.path.join(fx["heldout"], c, n)
                  for c in ("blue", "green", "red")
                  for n in os.listdir(os.path.join(fx["heldout"], c)))[::every]


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """The trained version copied into a fresh base dir as version 1, served with tight limits."""
    base = tmp_path_factory.mktemp("serve") / "models"
    base.mkdir()
    shutil.copytree(trained["version_dir"], base / "1")
    server = ServerProcess(
        "--model_base_path", base, "--model_name", MODEL, "--file_system_poll_wait_seconds", "0.5",
        "--max_images_per_request", "4", "--max_image_pixels", "250000",
        "--max_body_bytes", "1000000", "--batch_timeout_micros", "2000", "--version_label", "stable=1")
    yield {"server": server, "url": server.url, "base": base,
           "predict": f"{server.url}/v1/models/{MODEL}:predict"}
    server.stop()


def test_status_metadata_health_and_page(served):
    url = served["url"]
    status, doc = request(f"{url}/v1/models/{MODEL}")
    assert status == 200, doc
    assert doc == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert request(f"{url}/v1/models/{MODEL}/versions/1")[1] == doc
    assert request(f"{url}/v1/models/{MODEL}/labels/stable")[1] == doc
    status, meta = request(f"{url}/v1/models/{MODEL}/metadata")
    assert status == 200 and meta["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert sigs["serving_default"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert [d["size"] for d in sigs["predict_images"]["inputs"]["images"]["tensor_shape"]["dim"]] \
        == ["-1", "32", "32", "3"]
    assert set(sigs["serving_default"]["outputs"]) == {"probabilities", "classes", "class_ids", "scores"}
    status, health = request(f"{url}/healthz")
    assert status == 200 and health["status"] == "ok" and health["version"] == "1"
    assert health["runtime"].startswith(("LiteRT", "tensorflow")), health
    status, page = request(f"{url}/")
    assert status == 200 and "<input type=\"file\"" in page and ":predict" in page
    # what does not exist is a 404 in TF Serving's error shape
    for path in ("/v1/models/other", f"/v1/models/{MODEL}/versions/7", f"/v1/models/{MODEL}/labels/x"):
        status, err = request(url + path)
        assert status == 404 and isinstance(err, dict) and set(err) == {"error"}, (path, err)
    # a /v1/ path no route takes is TF Serving's InvalidArgument: 400, same shape
    status, err = request(url + "/v1/nothing")
    assert status == 400 and err == {"error": "Malformed request: GET /v1/nothing"}


def test_b64_request_as_tf_serving_docs_show_equals_label(served, trained, fx):
    files = heldout_files(fx)
    # https://www.tensorflow.org/tfx/serving/api_rest: binary values as {"b64": ...}, row format
    status, doc = request(served["predict"], {"instances": [{"b64": b64_file(f)} for f in files[:4]]})
    assert status == 200, doc
    rows = doc["predictions"]
    # columnar format, with the input named, for the rest
    status, col = request(served["predict"], {"signature_name": "serving_default",
                                              "inputs": {"image_bytes": [{"b64": b64_file(f)} for f in files[4:8]]}})
    assert status == 200, col
    got = [r["probabilities"] for r in rows] + col["outputs"]["probabilities"]
    top = [r["classes"][0] for r in rows] + [c[0] for c in col["outputs"]["classes"]]
    labelled = run_cli("label", "--model", trained["base"], "--format", "json", "--quiet", *files[:8])
    assert labelled.code == 0, labelled
    preds = json.loads(labelled.out)["predictions"]
    assert [p["path"] for p in preds] == files[:8]
    np.testing.assert_allclose(got, [p["probabilities"] for p in preds], atol=1e-5)
    assert top == [p["top_k"][0]["label"] for p in preds]
    r0 = rows[0]
    assert r0["scores"] == sorted(r0["probabilities"], reverse=True)
    assert r0["classes"] == [["blue", "green", "red"][i] for i in r0["class_ids"]]


def test_float_images_signature(served, trained, fx):
    """predict_images takes float32 [N, 32, 32, 3] in [0, 1], row format, input named or not."""
    import tensorflow as tf

    from trxsfr.base.imaging import decode_and_resize

    f = heldout_files(fx)[0]
    image = decode_and_resize(tf.io.read_file(f), (32, 32)).numpy()
    status, doc = request(served["predict"], {"signature_name": "predict_images",
                                              "instances": [{"images": image.tolist()}, image.tolist()]})
    assert status == 200, doc
    status, ref = request(served["predict"], {"instances": [{"b64": b64_file(f)}]})
    np.testing.assert_allclose(doc["predictions"][0]["probabilities"], ref["predictions"][0]["probabilities"],
                               atol=1e-5)
    assert doc["predictions"][1] == doc["predictions"][0]


def _png(width, height):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _first_frame_only(webp: bytes) -> bytes:
    """An animated WebP cut to its first ANMF frame: one frame, still flagged as an animation."""
    import struct

    chunks, pos, frames = [], 12, 0
    while pos < len(webp):
        size = struct.unpack("<I", webp[pos + 4:pos + 8])[0]
        chunk = webp[pos:pos + 8 + size + (size & 1)]
        frames += chunk[:4] == b"ANMF"
        if chunk[:4] != b"ANMF" or frames == 1:
            chunks.append(chunk)
        pos += len(chunk)
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_every_malformed_request_gets_400_and_the_server_carries_on(served, fx):
    good_b64 = b64_file(heldout_files(fx)[0])
    with open(heldout_files(fx)[0], "rb") as f:
        jpeg = f.read()
    tiff = io.BytesIO()
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tiff, "TIFF")
    animated = io.BytesIO()
    Image.new("RGB", (8, 8)).save(animated, "WEBP", save_all=True, duration=100,
                                  append_images=[Image.new("RGB", (8, 8), (255, 0, 0))])
    one_frame = _first_frame_only(animated.getvalue())  # still animated by its header
    bad = {
        "malformed JSON": (b'{"instances": [', "not valid JSON"),
        "JSON that is not an object": ([1, 2], "JSON object"),
        "neither instances nor inputs": ({"signature_name": "serving_default"}, "exactly one of"),
        "both instances and inputs": ({"instances": [], "inputs": []}, "exactly one of"),
        "unknown key": ({"instances": [{"b64": good_b64}], "examples": []}, "unknown key"),
        "instances not a list": ({"instances": {"b64": good_b64}}, "must be a list"),
        "no images": ({"instances": []}, "no images"),
        "bad base64": ({"instances": [{"b64": "not base64!!"}]}, "not valid base64"),
        "b64 not a string": ({"instances": [{"b64": 12}]}, "{\"b64\""),
        "raw string instead of b64": ({"instances": ["abc"]}, "{\"b64\""),
        "non-image bytes": ({"instances": [{"b64": base64.b64encode(b"hello world").decode()}]},
                            "not a JPEG, PNG, GIF, BMP or WebP"),
        "empty bytes": ({"instances": [{"b64": ""}]}, "empty image"),
        "truncated JPEG": ({"instances": [{"b64": base64.b64encode(jpeg[: len(jpeg) // 3]).decode()}]},
                           "cannot decode the JPEG image: truncated or corrupt JPEG data"),
        "TIFF image": ({"instances": [{"b64": base64.b64encode(tiff.getvalue()).decode()}]},
                       "not supported"),
        "animated WebP": ({"instances": [{"b64": base64.b64encode(animated.getvalue()).decode()}]},
                          "animated WebP is not supported"),
        "one-frame animated WebP": ({"instances": [{"b64": base64.b64encode(one_frame).decode()}]},
                                    "animated WebP is not supported"),
        "wrong input name (row)": ({"instances": [{"image": {"b64": good_b64}}]}, "\"image_bytes\""),
        "wrong input name (columnar)": ({"inputs": {"bytes": [{"b64": good_b64}]}}, "\"image_bytes\""),
        "unknown signature": ({"signature_name": "regress", "instances": [{"b64": good_b64}]},
                              "not found in signature def"),
        "too many images": ({"instances": [{"b64": good_b64}] * 5}, "at most 4"),
        "too many pixels": ({"instances": [{"b64": _png(600, 500)}]}, "limit is 250,000"),
        "body too large": ({"instances": [{"b64": "A" * 1_200_000}]}, "limit"),
        "float images out of range": ({"signature_name": "predict_images",
                                       "instances": [np.full((32, 32, 3), 255.0).tolist()]}, "[0, 1]"),
        "float images of the wrong shape": ({"signature_name": "predict_images",
                                             "instances": [np.zeros((16, 16, 3)).tolist()]},
                                            "[N, 32, 32, 3]"),
        "bytes sent to the float signature": ({"signature_name": "predict_images",
                                               "instances": [{"b64": good_b64}]}, "numbers"),
    }
    good = {"instances": [{"b64": good_b64}]}
    for name, (body, words) in bad.items():
        status, doc = request(served["predict"], body)
        assert status == 400, (name, status, doc)
        assert isinstance(doc, dict) and set(doc) == {"error"}, (name, doc)
        assert words in doc["error"], (name, doc["error"])
        status, ok = request(served["predict"], good)
        assert status == 200 and ok["predictions"][0]["classes"][0] in ("blue", "green", "red"), (name, ok)
    still, seethrough = io.BytesIO(), io.BytesIO()  # served like the JPEG they were made from
    Image.open(heldout_files(fx)[0]).save(still, "WEBP", lossless=True)
    rgba = Image.open(heldout_files(fx)[0]).convert("RGBA")
    rgba.putalpha(90)
    rgba.save(seethrough, "WEBP", lossless=True)
    status, webp = request(served["predict"], {"instances": [
        {"b64": base64.b64encode(f.getvalue()).decode()} for f in (still, seethrough)]})
    assert status == 200, webp
    status, ok = request(served["predict"], good)
    for row in webp["predictions"]:
        np.testing.assert_allclose(row["probabilities"], ok["predictions"][0]["probabilities"],
                                   atol=0.02)
    status, doc = request(served["predict"], method="GET", body=None)
    assert status == 405 and "POST" in doc["error"]
    assert served["server"].proc.poll() is None


def test_new_version_is_served_without_a_failed_request(served, trained, fx):
    """Drop versions into the base dir while a client loops requests: a good one is picked up
    within seconds, an incomplete or broken one is never served, no request fails."""
    base, url = served["base"], served["url"]
    body = json.dumps({"instances": [{"b64": b64_file(f)} for f in heldout_files(fx, 20)]}).encode()
    results, stop = [], threading.Event()

    def client():
        deadline = time.monotonic() + 120  # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline and len(results) < 5000:
            try:
                status, doc = request(served["predict"], body)
                results.append((status, doc.get("predictions") is not None if isinstance(doc, dict) else doc))
            except Exception as e:  # a refused or dropped connection counts as a failure
                results.append((0, repr(e)))

    def version():
        return request(f"{url}/v1/models/{MODEL}")[1]["model_version_status"][0]["version"]

    def drop(number, make):
        staging = base / f".trxsfr-tmp-test{number}"
        make(staging)
        os.rename(staging, base / str(number))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        assert version() == "1"
        # an incomplete version (no saved_model.pb) and a broken one (garbage saved_model.pb)
        (base / "50").mkdir()
        drop(60, lambda d: (shutil.copytree(trained["version_dir"], d),
                            (d / "saved_model.pb").write_bytes(b"not a graph")))
        # a good version, written aside and renamed into place as export does
        dropped = time.monotonic()
        drop(2, lambda d: shutil.copytree(trained["version_dir"], d))
        while version() != "2" and time.monotonic() - dropped < 30:
            time.sleep(0.2)
        swap_seconds = time.monotonic() - dropped
        assert version() == "2", served["server"].log[-3000:]
        assert swap_seconds < 15
        time.sleep(2.0)  # the broken version 60 has been looked at several times by now
        assert version() == "2"
        n_before = len(results)
        time.sleep(1.0)
        assert len(results) > n_before, "requests keep flowing after the swap"
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    failed = [r for r in results if r != (200, True)]
    assert len(results) >= 20 and not failed, (len(results), failed[:5])
    log = served["server"].log
    assert "not serving version 60" in log
    assert "serving version 2" in log
    # version 1 stays loaded because the label "stable" names it; the broken one is not there
    status, doc = request(f"{url}/v1/models/{MODEL}")
    assert [v["version"] for v in doc["model_version_status"]] == ["2", "1"]
    status, doc = request(f"{url}/v1/models/{MODEL}/labels/stable:predict", body)
    assert status == 200 and len(doc["predictions"]) == 2
    assert request(f"{url}/v1/models/{MODEL}/versions/1/metadata")[1]["model_spec"]["version"] == "1"
    assert request(f"{url}/v1/models/{MODEL}/versions/60")[0] == 404
    # a version that is neither the latest nor labelled is unloaded when a newer one comes
    drop(3, lambda d: shutil.copytree(trained["version_dir"], d))
    deadline = time.monotonic() + 30
    while version() != "3" and time.monotonic() < deadline:
        time.sleep(0.2)
    status, doc = request(f"{url}/v1/models/{MODEL}")
    assert [v["version"] for v in doc["model_version_status"]] == ["3", "1"]
    assert request(f"{url}/v1/models/{MODEL}/versions/2:predict", body)[0] == 404


def test_batcher_joins_concurrent_requests_and_routes_results():
    """Unit: concurrent requests share forward passes of at most max_batch_size images."""
    import asyncio
    import types

    from trxsfr.serve.batcher import Batcher
    from trxsfr.serve.versions import LoadedVersion

    sizes = []

    def predict_images(images):
        sizes.append(len(images))
        time.sleep(0.02)
        return images[:, 0, 0, :1] * 2  # one "probability" per image: its own id, doubled

    lv = LoadedVersion(1, types.SimpleNamespace(predict_images=predict_images), None, None, {})

    async def main():
        batcher = Batcher(max_batch_size=4, batch_timeout=0.05)
        batcher.start()
        try:
            reqs = [np.full((1 + i % 2, 2, 2, 3), float(i), np.float32) for i in range(10)]
            outs = await asyncio.gather(*(batcher.predict(lv, r) for r in reqs))
        finally:
            await batcher.stop()
        return reqs, outs

    reqs, outs = asyncio.run(main())
    for r, out in zip(reqs, outs):
        assert out.shape == (len(r), 1) and np.all(out == 2 * r[0, 0, 0, 0])
    assert sum(sizes) == sum(len(r) for r in reqs) == 15
    assert max(sizes) <= 4 and len(sizes) <= 6, sizes


@pytest.mark.parametrize("threads", [1, 2])
def test_batcher_runs_up_to_num_batch_threads_batches_at_once(threads):
    """Unit: while one batch runs, the next forms and starts on a free worker, never more
    than `num_batch_threads` at once; every request still gets its own answer."""
    import asyncio
    import threading
    import types

    from trxsfr.serve.batcher import Batcher
    from trxsfr.serve.versions import LoadedVersion

    lock, running, most = threading.Lock(), [0], [0]

    def predict_images(images):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return images[:, 0, 0, :1]

    lv = LoadedVersion(1, types.SimpleNamespace(predict_images=predict_images), None, None, {})

    async def client(batcher, i):
        outs = []
        for j in range(4):  # a client sends its next request once answered
            x = np.full((1, 2, 2, 3), float(10 * i + j), np.float32)
            outs.append(float((await batcher.predict(lv, x))[0, 0]) == 10 * i + j)
        return outs

    async def main():
        batcher = Batcher(max_batch_size=4, batch_timeout=0.01, num_batch_threads=threads)
        batcher.start()
        try:
            return await asyncio.gather(*(client(batcher, i) for i in range(8)))
        finally:
            await batcher.stop()

    assert all(all(outs) for outs in asyncio.run(main()))
    assert most[0] == threads


@pytest.mark.parametrize("made_with", ["this preprocessing", "older preprocessing"])
def test_a_broken_image_fails_its_own_request_not_its_batch(trained, fx, tmp_path, made_with):
    """Requests decoded together: one whose JPEG header is fine but whose data is cut off gets its
    400; the others in the batch get the probabilities the model's serving signature gives them
    alone. A model from older preprocessing is decoded by that signature, as it was trained."""
    import asyncio

    import tensorflow as tf

    from trxsfr.serve.batcher import Batcher
    from trxsfr.serve.rest import BadRequest, Encoded
    from trxsfr.serve.versions import load_version

    base, version = os.path.split(trained["version_dir"])
    if made_with == "older preprocessing":
        shutil.copytree(trained["version_dir"], tmp_path / version)
        mark_older_preprocessing(contract.info_path(tmp_path / version))
        base = str(tmp_path)
    lv = load_version(base, int(version))
    if made_with == "older preprocessing":
        assert lv.own_decode is not None

        def current_decode(image_bytes):
            raise AssertionError("decoded with this trxsfr's preprocessing")

        lv.decode_batch = current_decode
    files = heldout_files(fx)[:3]
    good = []
    for f in files:
        with open(f, "rb") as fh:
            good.append(Encoded(fh.read(), "image 0", "JPEG"))
    cut = Encoded(good[0].data[: len(good[0].data) // 3], "image 1", "JPEG")
    alone = [lv.classifier.saved_model.signatures[contract.SIGNATURE_BYTES](
        image_bytes=tf.constant([g.data]))["probabilities"].numpy()[0] for g in good]

    async def main():
        batcher = Batcher(max_batch_size=8, batch_timeout=0.5)
        batcher.start()
        try:
            requests = [[good[0]], [good[1], cut], [good[1]], [good[2]]]
            outs = await asyncio.gather(*(batcher.predict(lv, r) for r in requests),
                                        return_exceptions=True)
        finally:
            await batcher.stop()
        return outs, batcher.batches

    outs, batches = asyncio.run(main())
    assert batches == 1
    assert isinstance(outs[1], BadRequest), outs[1]
    assert str(outs[1]) == "image 1: cannot decode the JPEG image: truncated or corrupt JPEG data"
    for out, i in zip([outs[0], outs[2], outs[3]], [0, 1, 2]):
        assert not isinstance(out, BaseException), out
        np.testing.assert_allclose(out[0], alone[i], atol=1e-6)


def test_a_batch_of_encoded_images_is_decoded_and_classified_in_one_call(trained, fx):
    """One TensorFlow call per batch (decode and forward pass fused), whose probabilities are
    those of the model's own serving signature."""
    import tensorflow as tf

    from trxsfr.serve.rest import Encoded
    from trxsfr.serve.versions import load_version

    base, version = os.path.split(trained["version_dir"])
    lv = load_version(base, int(version))
    calls, fused = [], lv.predict_bytes
    lv.predict_bytes = lambda image_bytes: calls.append(int(image_bytes.shape[0])) or fused(image_bytes)

    def not_alone(image_bytes):
        raise AssertionError("decoded in a call of its own")

    lv.decode_batch = not_alone
    data = []
    for f in heldout_files(fx)[:3]:
        with open(f, "rb") as fh:
            data.append(fh.read())
    out = lv.predict_batch([[Encoded(data[0], "image 0", "JPEG")],
                            [Encoded(d, f"image {i}", "JPEG") for i, d in enumerate(data[1:])]])
    assert calls == [3]
    served = lv.classifier.saved_model.signatures[contract.SIGNATURE_BYTES](
        image_bytes=tf.constant(data))["probabilities"].numpy()
    np.testing.assert_allclose(np.concatenate(out), served, atol=1e-6)


def test_serve_refuses_what_cannot_work(trained, tmp_path):
    """Start-up problems are one clear line and exit 2, before anything listens."""
    r = run_cli("serve", "--model_base_path", tmp_path / "missing")
    assert r.code == 2 and "is not a directory" in r.err, r
    r = run_cli("serve", "--model_base_path", trained["version_dir"])
    assert r.code == 2 and "pass its parent" in r.err, r
    broken = tmp_path / "broken"
    shutil.copytree(trained["version_dir"], broken / "3")
    (broken / "3" / "saved_model.pb").write_bytes(b"garbage")
    r = run_cli("serve", "--model_base_path", broken)
    assert r.code == 2 and "no working model version" in r.err, r
    assert "not serving version 3" in r.err
    r = run_cli("serve", "--model_base_path", trained["base"], "--version_label", "stable")
    assert r.code == 2 and "LABEL=VERSION" in r.err, r
    assert_bad_input(run_cli("serve", "--model_base_path", trained["base"],
                             "--version_label", "a/b=1"), "--version_label a/b=1", "'/'")
    for flag in ("--max_batch_size", "--num_batch_threads"):
        r = run_cli("serve", "--model_base_path", trained["base"], flag, "0")
        assert r.code == 2 and f"{flag} must be positive" in r.err, r
    for flag in ("--parse_threads", "--decode_threads"):  # the older name still works
        r = run_cli("serve", "--model_base_path", trained["base"], flag, "0")
        assert r.code == 2 and "--parse_threads must be positive" in r.err, r
    for flags, words in ((("--port", "-1"), "--port -1 is not a TCP port"),
                         (("--port", "70000"), "--port 70000 is not a TCP port"),
                         (("--model_name", "a/b"), "--model_name 'a/b'"),
                         (("--batch_timeout_micros", "-1"), "--batch_timeout_micros"),
                         (("--host", "no.such.host.invalid"), "cannot listen on no.such.host")):
        assert_bad_input(run_cli("serve", "--model_base_path", trained["base"], *flags), words)
    afile = tmp_path / "afile.txt"
    afile.write_text("mine\n")
    assert_bad_input(run_cli("serve", "--model_base_path", afile), "is not a directory")
    (tmp_path / "empty").mkdir()
    assert_bad_input(run_cli("serve", "--model_base_path", tmp_path / "empty"),
                     "no working model version")
    for value in ("0", "nan", "inf"):  # inf once killed the version watcher, NaN passed
        r = run_cli("serve", "--model_base_path", trained["base"],
                    "--file_system_poll_wait_seconds", value)
        assert_bad_input(r, "--file_system_poll_wait_seconds must be in (0, 86400]")
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        r = run_cli("serve", "--model_base_path", trained["base"], "--port", taken.getsockname()[1])
        assert r.code == 2 and "cannot listen on 127.0.0.1:" in r.err, r
    finally:
        taken.close()


def test_serve_config_check_gives_python_callers_the_cli_errors(tmp_path):
    """Unit: ServeConfig.check() holds every settings check; serve() runs it before loading."""
    import math

    from trxsfr.base.config import ServeConfig
    from trxsfr.base.errors import InputError
    from trxsfr.serve import serve

    ServeConfig().check()
    bad = {
        "max_batch_size": (0, "--max_batch_size must be positive, got 0"),
        "max_body_bytes": (-1, "--max_body_bytes must be positive"),
        "max_images_per_request": (0, "--max_images_per_request must be positive"),
        "max_image_pixels": (0, "--max_image_pixels must be positive"),
        "parse_threads": (0, "--parse_threads must be positive"),
        "num_batch_threads": (0, "--num_batch_threads must be positive"),
        "batch_timeout_micros": (-1, "--batch_timeout_micros must be 0 or more"),
        "poll_seconds": (math.inf, "--file_system_poll_wait_seconds must be in (0, 86400]"),
        "port": (65536, "--port 65536 is not a TCP port"),
        "grpc_port": (-1, "--grpc_port -1 is not a TCP port"),
        "model_name": ("a b", "--model_name 'a b'"),
        "version_labels": ((("stable", "1"),), "expected (label, version) pairs"),
    }
    for field, (value, words) in bad.items():
        config = ServeConfig(model_base_path=str(tmp_path), **{field: value})
        with pytest.raises(InputError) as e:
            config.check()
        assert words in str(e.value) and "\n" not in str(e.value), (field, str(e.value))
        with pytest.raises(InputError, match=re.escape(words)):
            serve(config)  # before anything loads or listens
    with pytest.raises(InputError, match="a label cannot be empty"):
        ServeConfig(version_labels=(("", 1),)).check()
