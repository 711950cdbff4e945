"""`trxsfr serve --grpc_port`: TF Serving's gRPC API through Google's own client
(`tensorflow-serving-api`), REST :classify, the Prometheus metrics page, and the
classify signature export writes.

One server process serves the module: version 1 is the legacy model (exported before
the classify signature existed, kept under the label "legacy"), version 2 the
session's trained model; the last test drops in version 3 under a looping client.
"""

import base64
import json
import os
import shutil
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest
from helpers import assert_bad_input, run_cli
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from test_serve import ServerProcess, heldout_files, request

from trxsfr.base import contract

MODEL = "flowers"
LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy_model")
LIMIT_BODY = 1_000_000
C = grpc.StatusCode


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    base = tmp_path_factory.mktemp("grpc") / "models"
    base.mkdir()
    legacy = os.path.join(LEGACY, os.listdir(LEGACY)[0])
    shutil.copytree(legacy, base / "1")
    shutil.copytree(trained["version_dir"], base / "2")
    server = ServerProcess(
        "--model_base_path", base, "--model_name", MODEL, "--grpc_port", "0",
        "--file_system_poll_wait_seconds", "0.5", "--max_images_per_request", "4",
        "--max_image_pixels", "250000", "--max_body_bytes", LIMIT_BODY,
        "--batch_timeout_micros", "2000", "--version_label", "legacy=1")
    assert server.grpc_address, server.log[-2000:]
    channel = grpc.insecure_channel(server.grpc_address)
    yield {"server": server, "url": server.url, "base": base, "channel": channel,
           "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
           "models": model_service_pb2_grpc.ModelServiceStub(channel)}
    channel.close()
    server.stop()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def tensor(values, dtype=None):
    import tensorflow as tf

    return tf.make_tensor_proto(values, dtype=dtype)


def ndarray(proto):
    import tensorflow as tf

    return tf.make_ndarray(proto)


def predict_request(images, signature="", version=None, label=None, input_name="image_bytes"):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    if signature:
        req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    req.inputs[input_name].CopyFrom(images if isinstance(images, type(req.inputs[input_name]))
                                    else tensor(images))
    return req


def classify_request(datas, signature="classify", context=None, label=None):
    req = classification_pb2.ClassificationRequest()
    req.model_spec.name = MODEL
    req.model_spec.signature_name = signature
    if label is not None:
        req.model_spec.version_label = label
    holder = (req.input.example_list_with_context if context is not None
              else req.input.example_list)
    if context is not None:
        holder.context.features.feature[contract.FEATURE_IMAGE].bytes_list.value.append(context)
    for data in datas:
        example = holder.examples.add()
        if data is not None:
            example.features.feature[contract.FEATURE_IMAGE].bytes_list.value.append(data)
        example.features.feature["image/format"].bytes_list.value.append(b"jpeg")  # ignored
    return req


def label_probabilities(trained, files):
    labelled = run_cli("label", "--model", trained["version_dir"], "--format", "json", "--quiet",
                       *files)
    assert labelled.code == 0, labelled
    preds = json.loads(labelled.out)["predictions"]
    assert [p["path"] for p in preds] == list(files)
    return np.array([p["probabilities"] for p in preds])


def names(rows):
    return [[label for label, _ in row] for row in rows]


def scores(rows):
    return [[score for _, score in row] for row in rows]


def status_of(call):
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return C.OK, ""


def test_predict_bytes_and_float_images_equal_label(served, trained, fx):
    from trxsfr.base.imaging import decode_and_resize

    files = heldout_files(fx)[:8]
    expected = label_probabilities(trained, files)
    stub = served["predict"]
    got = []
    for chunk in (files[:4], files[4:]):
        r = stub.Predict(predict_request([read(f) for f in chunk]), timeout=30)
        assert (r.model_spec.name, r.model_spec.version.value, r.model_spec.signature_name) == (
            MODEL, 2, "serving_default")
        assert set(r.outputs) == set(contract.OUTPUTS)
        got.append(ndarray(r.outputs["probabilities"]))
        classes = ndarray(r.outputs["classes"])
        assert classes.dtype == object and classes.shape == (len(chunk), 3)
        assert r.outputs["class_ids"].dtype == 9 and r.outputs["scores"].dtype == 1  # INT64, FLOAT
        np.testing.assert_allclose(ndarray(r.outputs["scores"]),
                                   -np.sort(-ndarray(r.outputs["probabilities"]), axis=1))
    np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-5)
    import tensorflow as tf

    images = np.stack([decode_and_resize(tf.io.read_file(f), (32, 32)).numpy() for f in files[:3]])
    r = stub.Predict(predict_request(images.astype(np.float32), "predict_images",
                                     input_name="images"), timeout=30)
    assert r.model_spec.signature_name == "predict_images"
    np.testing.assert_allclose(ndarray(r.outputs["probabilities"]), expected[:3], atol=1e-5)
    # float_val instead of tensor_content, as a hand-made TensorProto has it
    proto = tensor(images[:1].astype(np.float32))
    by_value = type(proto)(dtype=proto.dtype, tensor_shape=proto.tensor_shape,
                           float_val=images[:1].ravel().tolist())
    r = stub.Predict(predict_request(by_value, "predict_images", input_name="images"), timeout=30)
    np.testing.assert_allclose(ndarray(r.outputs["probabilities"]), expected[:1], atol=1e-5)
    # output_filter, and a version by number and by label (the legacy model answers too)
    req = predict_request([read(files[0])], version=2)
    req.output_filter.append("scores")
    r = stub.Predict(req, timeout=30)
    assert list(r.outputs) == ["scores"] and r.model_spec.version.value == 2
    r = stub.Predict(predict_request([read(files[0])], label="legacy"), timeout=30)
    assert r.model_spec.version.value == 1
    assert ndarray(r.outputs["classes"])[0, 0].decode() in ("blue", "green", "red")


def test_classify_over_grpc_rest_and_the_saved_signature_agree_with_label(served, trained, fx):
    import tensorflow as tf

    files = heldout_files(fx)[:4]
    datas = [read(f) for f in files]
    expected = label_probabilities(trained, files)
    ranked = [sorted(zip(["blue", "green", "red"], row), key=lambda x: -x[1]) for row in expected]
    r = served["predict"].Classify(classify_request(datas), timeout=30)
    assert (r.model_spec.version.value, r.model_spec.signature_name) == (2, "classify")
    got = [[(c.label, c.score) for c in result.classes] for result in r.result.classifications]
    assert names(got) == names(ranked)
    np.testing.assert_allclose(scores(got), scores(ranked), atol=1e-5)
    # the context's image, shared by every example
    r = served["predict"].Classify(classify_request([None, None], context=datas[1]), timeout=30)
    assert [c.label for c in r.result.classifications[1].classes] == names(ranked)[1]
    # REST :classify, as TF Serving's REST API has it
    status, doc = request(f"{served['url']}/v1/models/{MODEL}:classify", {
        "signature_name": "classify",
        "examples": [{contract.FEATURE_IMAGE: {"b64": base64.b64encode(d).decode()}, "id": 3}
                     for d in datas]})
    assert status == 200, doc
    assert names(doc["results"]) == names(ranked)
    np.testing.assert_allclose(scores(doc["results"]), scores(ranked), atol=1e-5)
    # Predict on the classify signature: serialized tf.Example in, classes and scores out
    examples = [e.SerializeToString() for e in classify_request(datas).input.example_list.examples]
    r = served["predict"].Predict(predict_request(examples, "classify", input_name="inputs"),
                                  timeout=30)
    assert set(r.outputs) == {"classes", "scores"}
    np.testing.assert_allclose(ndarray(r.outputs["scores"]), scores(ranked), atol=1e-5)
    status, doc = request(f"{served['url']}/v1/models/{MODEL}:predict", {
        "signature_name": "classify",
        "instances": [{"b64": base64.b64encode(e).decode()} for e in examples]})
    assert status == 200 and set(doc["predictions"][0]) == {"classes", "scores"}, doc
    np.testing.assert_allclose([p["scores"] for p in doc["predictions"]], scores(ranked),
                               atol=1e-5)
    # the SavedModel's own classify signature, which TF Serving runs, gives the same
    model = tf.saved_model.load(trained["version_dir"])
    out = model.signatures[contract.SIGNATURE_CLASSIFY](inputs=tf.constant(examples))
    assert [[c.decode() for c in row] for row in out["classes"].numpy()] == names(ranked)
    np.testing.assert_allclose(out["scores"].numpy(), scores(ranked), atol=1e-5)


def test_the_classify_signature_is_one_tf_serving_accepts(trained):
    """The checks of TF Serving's classifier.cc (GetClassificationSignatureDef,
    PreProcessClassification), on the saved_model.pb; the fingerprint matches the file."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    with open(os.path.join(trained["version_dir"], contract.SAVED_MODEL_FILE), "rb") as f:
        graph = saved_model_pb2.SavedModel.FromString(f.read()).meta_graphs[0]
    sig = graph.signature_def[contract.SIGNATURE_CLASSIFY]
    assert sig.method_name == "tensorflow/serving/classify"
    assert list(sig.inputs) == ["inputs"]
    assert sig.inputs["inputs"].dtype == tf.string.as_datatype_enum
    assert set(sig.outputs) == {"classes", "scores"}
    assert sig.outputs["classes"].dtype == tf.string.as_datatype_enum
    assert sig.outputs["scores"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in sig.outputs["scores"].tensor_shape.dim] == [-1, 3]
    for name in (contract.SIGNATURE_BYTES, contract.SIGNATURE_IMAGES):
        assert graph.signature_def[name].method_name == "tensorflow/serving/predict"
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    written = tf.saved_model.experimental.read_fingerprint(trained["version_dir"])
    fresh = fingerprinting.CreateFingerprintDef(trained["version_dir"])
    assert written == type(written).from_proto(fresh)


def test_metadata_and_status(served):
    stub, models = served["predict"], served["models"]
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = MODEL
    req.metadata_field.append("signature_def")
    r = stub.GetModelMetadata(req, timeout=30)
    assert (r.model_spec.name, r.model_spec.version.value) == (MODEL, 2)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert r.metadata["signature_def"].Unpack(sigs)
    assert sigs.signature_def["classify"].method_name == "tensorflow/serving/classify"
    assert sigs.signature_def["serving_default"].inputs["image_bytes"].dtype == 7  # DT_STRING
    images = sigs.signature_def["predict_images"].inputs["images"]
    assert [d.size for d in images.tensor_shape.dim] == [-1, 32, 32, 3]
    code, rest = request(f"{served['url']}/v1/models/{MODEL}/metadata")
    assert code == 200 and set(rest["metadata"]["signature_def"]["signature_def"]) == set(sigs.signature_def)
    req.model_spec.version_label = "legacy"
    r = stub.GetModelMetadata(req, timeout=30)
    r.metadata["signature_def"].Unpack(sigs)
    assert r.model_spec.version.value == 1 and "classify" not in sigs.signature_def

    def status(**spec):
        req = get_model_status_pb2.GetModelStatusRequest()
        for k, v in spec.items():
            if k == "version":
                req.model_spec.version.value = v
            else:
                setattr(req.model_spec, k, v)
        return models.GetModelStatus(req, timeout=30).model_version_status

    all_versions = status(name=MODEL)
    assert [(s.version, s.state, s.status.error_code) for s in all_versions] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0),
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)]
    assert [s.version for s in status(name=MODEL, version=1)] == [1]
    assert [s.version for s in status(name=MODEL, version_label="legacy")] == [1]
    for spec, code, words in (
            ({"name": MODEL, "version": 7}, C.NOT_FOUND, "Could not find version 7"),
            ({"name": "other"}, C.NOT_FOUND, "Could not find any versions of model other"),
            ({"name": MODEL, "version_label": "x"}, C.INVALID_ARGUMENT,
             "Unrecognized servable version label: x")):
        got = status_of(lambda: status(**spec))
        assert got[0] == code and words in got[1], (spec, got)
    got = status_of(lambda: models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest()))
    assert got == (C.INVALID_ARGUMENT, "Missing ModelSpec")


def test_every_bad_request_gets_tf_servings_status_and_the_server_carries_on(served, fx):
    from tensorflow_serving.apis import input_pb2  # noqa: F401 (the Input message's module)

    stub = served["predict"]
    jpeg = read(heldout_files(fx)[0])
    good = predict_request([jpeg])
    floats = np.full((1, 32, 32, 3), 0.5, np.float32)
    short = tensor(floats)
    short.tensor_content = short.tensor_content[:-4]
    import io

    from PIL import Image

    big = io.BytesIO()
    Image.new("RGB", (600, 500), (200, 30, 30)).save(big, "PNG")
    no_image = classify_request([jpeg])
    del no_image.input.example_list.examples[0].features.feature[contract.FEATURE_IMAGE]
    two_inputs = predict_request([jpeg])
    two_inputs.inputs["extra"].CopyFrom(tensor([1.0]))
    unknown_output = predict_request([jpeg])
    unknown_output.output_filter.append("logits")
    no_name = predict_request([jpeg])
    no_name.model_spec.name = ""
    other_model = predict_request([jpeg])
    other_model.model_spec.name = "other"
    metadata_field = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata_field.model_spec.name = MODEL
    metadata_field.metadata_field.append("labels")
    empty_input = classification_pb2.ClassificationRequest()
    empty_input.model_spec.name = MODEL
    empty_input.model_spec.signature_name = "classify"
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = MODEL
    bad = {
        "malformed TensorProto (tensor_content of the wrong size)": (
            stub.Predict, predict_request(short, "predict_images", input_name="images"),
            C.INVALID_ARGUMENT, "tensor parsing error: images"),
        "wrong dtype (floats for image_bytes)": (
            stub.Predict, predict_request(floats), C.INVALID_ARGUMENT,
            "takes DT_STRING (encoded images); got DT_FLOAT"),
        "wrong dtype (strings for images)": (
            stub.Predict, predict_request([jpeg], "predict_images", input_name="images"),
            C.INVALID_ARGUMENT, "takes DT_FLOAT"),
        "unknown signature": (stub.Predict, predict_request([jpeg], "nope"),
                              C.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
        "wrong input name": (stub.Predict, predict_request([jpeg], input_name="image"),
                             C.INVALID_ARGUMENT, "alias not found in signature: image"),
        "two inputs": (stub.Predict, two_inputs, C.INVALID_ARGUMENT, "input size does not match"),
        "unknown output": (stub.Predict, unknown_output, C.INVALID_ARGUMENT,
                           "output tensor alias not found in signature: logits"),
        "oversized message": (stub.Predict, predict_request([b"x" * (LIMIT_BODY + 1000)]),
                              C.RESOURCE_EXHAUSTED, "larger than max"),
        "too many images": (stub.Predict, predict_request([jpeg] * 5), C.RESOURCE_EXHAUSTED,
                            "at most 4 are allowed"),
        "too many pixels": (stub.Predict, predict_request([big.getvalue()]),
                            C.RESOURCE_EXHAUSTED, "the limit is 250,000"),
        "not an image": (stub.Predict, predict_request([b"hello"]), C.INVALID_ARGUMENT,
                         "image 0: not a JPEG"),
        "truncated JPEG": (stub.Predict, predict_request([jpeg[: len(jpeg) // 3]]),
                           C.INVALID_ARGUMENT, "cannot decode the JPEG image"),
        "float pixels out of range": (
            stub.Predict, predict_request(floats * 255, "predict_images", input_name="images"),
            C.INVALID_ARGUMENT, "in [0, 1]"),
        "no model name": (stub.Predict, no_name, C.INVALID_ARGUMENT, "ModelSpec has no name"),
        "another model": (stub.Predict, other_model, C.NOT_FOUND, "Servable not found"),
        "a version not loaded": (stub.Predict, predict_request([jpeg], version=9), C.NOT_FOUND,
                                 "Specific(flowers, 9)"),
        "an unknown label": (stub.Predict, predict_request([jpeg], label="beta"),
                             C.INVALID_ARGUMENT, "Unrecognized servable version label: beta"),
        "Classify on serving_default": (
            stub.Classify, classify_request([jpeg], signature=""), C.INVALID_ARGUMENT,
            "Expected one or two output Tensors, found 4"),
        "Classify on a model without the signature": (
            stub.Classify, classify_request([jpeg], label="legacy"), C.INVALID_ARGUMENT,
            "No signature was found with the name: classify"),
        "an example without the image": (stub.Classify, no_image, C.INVALID_ARGUMENT,
                                         'feature "image/encoded" (data type: string) is required'),
        "no examples": (stub.Classify, empty_input, C.INVALID_ARGUMENT, "Input is empty."),
        "metadata nobody has": (stub.GetModelMetadata, metadata_field, C.INVALID_ARGUMENT,
                                "Metadata field labels is not supported"),
        "Regress": (stub.Regress, regress, C.INVALID_ARGUMENT, "no regression signature"),
    }
    for name, (method, req, code, words) in bad.items():
        got = status_of(lambda: method(req, timeout=30))
        assert got[0] == code and words in got[1], (name, got)
        r = stub.Predict(good, timeout=30)
        assert ndarray(r.outputs["classes"])[0, 0].decode() in ("blue", "green", "red"), name
    assert served["server"].proc.poll() is None
    # over REST, the legacy model answers :classify with TF Serving's error and :predict as ever
    url = f"{served['url']}/v1/models/{MODEL}/labels/legacy"
    b64 = {"b64": base64.b64encode(jpeg).decode()}
    status, doc = request(url + ":classify", {"signature_name": "classify",
                                              "examples": [{contract.FEATURE_IMAGE: b64}]})
    assert status == 400 and "No signature was found with the name: classify" in doc["error"]
    status, doc = request(url + ":predict", {"instances": [b64]})
    assert status == 200 and len(doc["predictions"]) == 1
    for body, words in (({"examples": []}, "'examples' value is an empty array"),
                        ({"instances": [b64]}, "unknown key"),
                        ({"examples": [{"image": b64}], "signature_name": "classify"},
                         '"image/encoded" (data type: string) is required'),
                        ({"examples": [{contract.FEATURE_IMAGE: 1.5}]}, "must be bytes"),
                        ({"examples": [{contract.FEATURE_IMAGE: b64}]},
                         "Expected one or two output Tensors, found 4")):
        status, doc = request(f"{served['url']}/v1/models/{MODEL}:classify", body)
        assert status == 400 and words in doc["error"], (body, doc)


def scrape(url):
    from prometheus_client.parser import text_string_to_metric_families

    status, text = request(f"{url}/monitoring/prometheus/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def test_metrics_page_counts_the_requests_sent(served, fx, tmp_path):
    url, stub = served["url"], served["predict"]
    files = heldout_files(fx)[:3]
    _, before = scrape(url)
    for f in files:  # 3 REST predictions of 1 image, 2 gRPC ones of 3, 1 gRPC Classify of 2
        assert request(f"{url}/v1/models/{MODEL}:predict",
                       {"instances": [{"b64": base64.b64encode(read(f)).decode()}]})[0] == 200
    for _ in range(2):
        stub.Predict(predict_request([read(f) for f in files]), timeout=30)
    stub.Classify(classify_request([read(f) for f in files[:2]]), timeout=30)
    for _ in range(4):  # refused: an unknown signature, and a 400 over REST
        status_of(lambda: stub.Predict(predict_request([read(files[0])], "nope"), timeout=30))
    assert request(f"{url}/v1/models/{MODEL}:predict", {"instances": []})[0] == 400
    assert request(f"{url}/v1/models/{MODEL}/versions/8")[0] == 404
    text, after = scrape(url)

    def delta(name, **labels):
        key = (name, tuple(sorted(dict(model_name=MODEL, **labels).items())))
        return after.get(key, 0) - before.get(key, 0)

    requests = "trxsfr_serve_requests_total"
    assert delta(requests, API="Predict", entrypoint="REST", status="OK") == 3
    assert delta(requests, API="Predict", entrypoint="GRPC", status="OK") == 2
    assert delta(requests, API="Classify", entrypoint="GRPC", status="OK") == 1
    assert delta(requests, API="Predict", entrypoint="GRPC", status="FAILED_PRECONDITION") == 4
    assert delta(requests, API="Predict", entrypoint="REST", status="INVALID_ARGUMENT") == 1
    assert delta(requests, API="GetModelStatus", entrypoint="REST", status="NOT_FOUND") == 1
    latency = "trxsfr_serve_request_latency_seconds_count"
    assert delta(latency, API="Predict", entrypoint="REST") == 3
    assert delta(latency, API="Predict", entrypoint="GRPC") == 2
    assert delta("trxsfr_serve_batch_size_sum") == 3 + 2 * 3 + 2  # every image, once
    assert 1 <= delta("trxsfr_serve_batch_size_count") <= 6
    assert after[("trxsfr_serve_model_version_loaded",
                  (("model_name", MODEL), ("version", "1")))] == 1
    assert after[("trxsfr_serve_model_latest_version", (("model_name", MODEL),))] == 2
    promtool = shutil.which("promtool")
    if promtool:  # Prometheus' own checker, where it is installed
        p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr


def over_4(samples) -> float:
    """Batches of more than 4 images so far, from a scrape."""
    def bucket(le):
        return samples[("trxsfr_serve_batch_size_bucket", (("le", le), ("model_name", MODEL)))]

    return bucket("+Inf") - bucket("4.0")


def test_rest_and_grpc_requests_share_forward_passes(served, fx):
    """A REST and a gRPC request of 3 images each, sent together, end up in one batch of 6."""
    url, stub = served["url"], served["predict"]
    datas = [read(f) for f in heldout_files(fx)[:3]]
    body = {"instances": [{"b64": base64.b64encode(d).decode()} for d in datas]}
    req = predict_request(datas)
    joined = 0
    for _ in range(30):
        _, before = scrape(url)
        barrier = threading.Barrier(2)
        results = []

        def rest():
            barrier.wait(10)
            results.append(request(f"{url}/v1/models/{MODEL}:predict", body)[0])

        def rpc():
            barrier.wait(10)
            results.append(len(stub.Predict(req, timeout=30).outputs))

        threads = [threading.Thread(target=rest), threading.Thread(target=rpc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(results) == [4, 200]
        _, after = scrape(url)
        joined = over_4(after) - over_4(before)
        if joined:
            break
    assert joined == 1


def test_serve_refuses_bad_grpc_settings(trained):
    import socket

    assert_bad_input(run_cli("serve", "--model_base_path", trained["base"], "--grpc_port",
                             "70000"), "--grpc_port 70000 is not a TCP port")
    assert_bad_input(run_cli("serve", "--model_base_path", trained["base"], "--port", "8600",
                             "--grpc_port", "8600"), "--grpc_port 8600 is also --port")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        r = run_cli("serve", "--model_base_path", trained["base"], "--port", "0",
                    "--grpc_port", port)
        assert_bad_input(r, f"cannot listen on 127.0.0.1:{port} for gRPC (--grpc_port)")
    finally:
        taken.close()


def test_a_new_version_swaps_in_under_a_grpc_client_loop(served, trained, fx):
    """Copy version 3 into the base dir (not atomically, as `cp -r`) while gRPC clients loop
    Predict and Classify: it is served within seconds and no request fails."""
    base, stub = served["base"], served["predict"]
    datas = [read(f) for f in heldout_files(fx, 20)]
    predict, classify = predict_request(datas), classify_request(datas)
    results, versions, stop = [], set(), threading.Event()

    def client(k):
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline and len(results) < 5000:
            try:
                if k % 2:
                    r = stub.Predict(predict, timeout=30)
                    ok = ndarray(r.outputs["probabilities"]).shape == (len(datas), 3)
                else:
                    r = stub.Classify(classify, timeout=30)
                    ok = len(r.result.classifications) == len(datas)
                versions.add(r.model_spec.version.value)
                results.append(ok or "wrong answer")
            except grpc.RpcError as e:
                results.append(f"{e.code()}: {e.details()}")

    def status():
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = MODEL
        return [s.version for s in served["models"].GetModelStatus(req, timeout=30)
                .model_version_status]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        assert status() == [2, 1]
        dropped = time.monotonic()
        shutil.copytree(trained["version_dir"], base / "3")
        while status()[0] != 3 and time.monotonic() - dropped < 30:
            time.sleep(0.2)
        assert status() == [3, 1], served["server"].log[-3000:]
        n = len(results)
        time.sleep(1.0)
        assert len(results) > n, "requests keep flowing after the swap"
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    failed = [r for r in results if r is not True]
    assert len(results) >= 20 and not failed, (len(results), failed[:5])
    assert versions == {2, 3}
