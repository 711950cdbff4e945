"""`retrain --unknown_threshold`: the threshold is chosen, stored, and applied alike by the
SavedModel's signature, `label`, `serve` (REST and gRPC) and a converted .tflite; a model without one
behaves as before. One retrain (auto threshold) serves the module."""

import base64
import json
import os

import numpy as np
import pytest
from helpers import FAST_TRAIN, assert_bad_input, dests, run_cli, write_label_free_set


@pytest.fixture(scope="module")
def model(fx, tmp_path_factory):
    work = tmp_path_factory.mktemp("unknown")
    result = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                     *dests(work), "--unknown_threshold", "auto", *FAST_TRAIN)
    assert result.code == 0, result
    # Noise pictures (the same ones in every class folder): the model is unsure of many.
    noise = write_label_free_set(work / "noise", 8)
    files = sorted(os.path.join(d, n) for folder in (fx["heldout"], noise)
                   for d, _, names in os.walk(folder) for n in names)
    return {"version": result.lines[-1], "result": result, "noise": noise, "files": files,
            "work": work}


def _signature(version, files):
    """(unknown bool [N], top score [N], threshold attribute) from the SavedModel itself."""
    import tensorflow as tf

    from trxsfr.base import contract

    m = tf.saved_model.load(version)
    blobs = []
    for path in files:
        with open(path, "rb") as f:
            blobs.append(f.read())
    out = m.signatures[contract.SIGNATURE_BYTES](**{contract.INPUT_BYTES: tf.constant(blobs)})
    return (out[contract.OUTPUT_UNKNOWN].numpy(), out[contract.OUTPUT_SCORES].numpy()[:, 0],
            float(getattr(m, contract.ATTR_UNKNOWN_THRESHOLD).numpy()))


def _label_unknown(model_path, files):
    result = run_cli("label", "--model", model_path, *files, "--format", "json")
    assert result.code == 0, result
    doc = json.loads(result.out)
    return {p["path"]: (p["unknown"], max(p["probabilities"])) for p in doc["predictions"]}, doc


def test_auto_threshold_is_stored_and_reported(model):
    from trxsfr.base import contract

    info = contract.read_info(contract.info_path(model["version"]))
    t = info.unknown_threshold
    assert 1 / 3 < t < 1 and t == float(np.float32(t))
    unknown = info.metrics["unknown"]
    assert unknown["mode"] == "auto" and unknown["reached"] and unknown["threshold"] == t
    assert unknown["validation"]["precision"] >= 0.95
    line = next(line for line in model["result"].lines if line.startswith("Unknown threshold"))
    assert f"{t:.4f}" in line and "auto" in line


def test_signature_label_serve_and_tflite_agree(model, tmp_path):
    from test_serve import ServerProcess, request

    from trxsfr.base import contract

    files = model["files"]
    unknown, top, attribute = _signature(model["version"], files)
    threshold = contract.read_info(contract.info_path(model["version"])).unknown_threshold
    assert attribute == threshold
    np.testing.assert_array_equal(unknown, top < np.float32(threshold))
    assert 0 < unknown.sum() < len(files)  # both answers occur
    by_path = dict(zip(files, unknown.tolist()))

    labelled, doc = _label_unknown(model["version"], files)
    assert doc["unknown_threshold"] == threshold
    assert {p: u for p, (u, _) in labelled.items()} == by_path

    text = run_cli("label", "--model", model["version"], *files)
    said = {line.split(" ", 2)[2] for line in text.lines if line.startswith("unknown ")}
    assert said == {p for p, u in by_path.items() if u}

    tflite = tmp_path / "m.tflite"
    assert run_cli("export-tflite", "--model", model["version"], "--out", tflite).code == 0
    lite, _ = _label_unknown(str(tflite), files)
    for path, (u, score) in lite.items():  # float differences only at the very edge
        if abs(score - threshold) > 1e-5:
            assert u == by_path[path], path

    server = ServerProcess("--model_base_path", os.path.dirname(model["version"]),
                           "--model_name", "u", "--grpc_port", "0")
    try:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        blobs = []
        for path in files:
            with open(path, "rb") as f:
                blobs.append(f.read())
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "u"
        req.inputs[contract.INPUT_BYTES].CopyFrom(tf.make_tensor_proto(blobs))
        with grpc.insecure_channel(server.grpc_address) as channel:
            reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                req, timeout=60)
        assert tf.make_ndarray(reply.outputs[contract.OUTPUT_UNKNOWN]).tolist() == \
            unknown.tolist()
        instances = []
        for path in files:
            with open(path, "rb") as f:
                instances.append({"b64": base64.b64encode(f.read()).decode()})
        status, body = request(f"{server.url}/v1/models/u:predict", {"instances": instances})
        assert status == 200, body
        assert [p[contract.OUTPUT_UNKNOWN] for p in body["predictions"]] == unknown.tolist()
        status, body = request(f"{server.url}/v1/models/u:predict", {"inputs": instances[:3]})
        assert status == 200 and body["outputs"][contract.OUTPUT_UNKNOWN] == \
            unknown[:3].tolist()
    finally:
        server.stop()


def test_info_shows_the_threshold(model):
    from trxsfr.base import contract

    threshold = contract.read_info(contract.info_path(model["version"])).unknown_threshold
    doc = json.loads(run_cli("info", model["version"], "--runs", "1", "--format", "json").out)
    assert doc["unknown_threshold"] == threshold
    text = run_cli("info", model["version"], "--runs", "1")
    assert f"Unknown threshold: {threshold:.4f}" in text.out


def test_label_evaluation_and_report_show_coverage(model, tmp_path):
    report = tmp_path / "r.html"
    result = run_cli("label", "--model", model["version"], model["noise"], "--report", report)
    assert result.code == 0, result
    assert any(line.startswith("Unknown (top score below") for line in result.lines)
    page = report.read_text(encoding="utf-8")
    assert 'id="coverage"' in page and 'id="unknown-threshold"' in page
    assert "the model&#x27;s" in page


def test_a_model_without_threshold_is_unchanged(trained, fx):
    import tensorflow as tf

    from trxsfr.base import contract

    assert contract.read_info(contract.info_path(trained["version_dir"])).unknown_threshold is None
    m = tf.saved_model.load(trained["version_dir"])
    outputs = m.signatures[contract.SIGNATURE_BYTES].structured_outputs
    assert set(outputs) == set(contract.OUTPUTS)
    assert not hasattr(m, contract.ATTR_UNKNOWN_THRESHOLD)
    result = run_cli("label", "--model", trained["version_dir"], fx["heldout"], "--format", "json")
    doc = json.loads(result.out)
    assert "unknown_threshold" not in doc and "unknown" not in doc["predictions"][0]
    assert "unknown" not in doc["evaluation"]
    assert not any(line.startswith("Unknown threshold") for line in trained["result"].lines)


@pytest.mark.parametrize("setting", ["auto", "0.6"])
def test_with_the_default_search_the_threshold_sees_only_held_out_images(model, fx, tmp_path,
                                                                       setting):
    """--tune auto fits on training + validation images; an auto threshold is chosen on
    the validation split, so that split then stays out of the search and the fit, and a
    given threshold reports no figures from images the layer was fitted on."""
    from trxsfr.base import contract

    result = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                     "--bottleneck_dir", model["work"] / "cache", "--saved_model_dir",
                     tmp_path / "models", "--unknown_threshold", setting, "--quiet")
    assert result.code == 0, result
    info = contract.read_info(contract.info_path(result.lines[-1]))
    counts = {split: sum(c.get(split, 0) for c in info.split_counts.values())
              for split in ("train", "validation")}
    assert info.tuning is not None and info.tuning["tried"]
    unknown = info.metrics["unknown"]
    if setting == "auto":
        assert info.tuning["pool_images"] == counts["train"]
        assert any("--unknown_threshold auto" in note for note in info.tuning["notes"])
        assert not info.tuning["with_validation"]
        assert any(line.endswith("training images (rule: highest cross-validated accuracy, "
                                 "then lowest cross entropy):") for line in result.lines)
        assert info.metrics["validation_accuracy"] is not None
        assert unknown["validation"]["accepted"] >= 1
    else:
        assert info.tuning["pool_images"] == counts["train"] + counts["validation"]
        assert info.tuning["with_validation"]
        assert info.metrics["validation_accuracy"] is None
        assert "validation" not in unknown and unknown["threshold"] == pytest.approx(0.6)


# ---------------------------------------------------------------- choosing, bad input


def test_choose_keeps_the_most_images_at_the_target_precision():
    from trxsfr.train.unknown import choose

    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    right = np.array([True, True, True, False, True])
    assert choose(scores, right, 0.95, 3) == (pytest.approx(0.75), True)  # 3 accepted
    assert choose(scores, right, 0.8, 3) == (pytest.approx((0.6 + 1 / 3) / 2), True)
    threshold, reached = choose(np.array([0.9, 0.8]), np.array([False, False]), 0.9, 2)
    assert not reached and threshold == pytest.approx((0.8 + 0.5) / 2)
    # Tied scores are accepted or refused together.
    tied = choose(np.array([0.9, 0.8, 0.8, 0.5]), np.array([True, True, False, True]), 0.9, 2)
    assert tied == (pytest.approx(0.85), True)


@pytest.mark.parametrize("args, needle", [
    (["--unknown_threshold", "1.5"], "--unknown_threshold"),
    (["--unknown_threshold", "often"], "--unknown_threshold"),
    (["--unknown_threshold", "auto", "--unknown_precision", "0"], "--unknown_precision"),
    (["--unknown_threshold", "auto", "--validation_percentage", "0"], "validation split"),
])
def test_bad_thresholds_are_one_line(fx, tmp_path, args, needle):
    result = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                     *dests(tmp_path), *args, *FAST_TRAIN)
    assert_bad_input(result, needle)
    assert not (tmp_path / "models").exists()
