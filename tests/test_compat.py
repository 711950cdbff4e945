"""Models exported before the rooms and the typed ModelInfo still work everywhere.

`tests/data/legacy_model/` is a version directory written by trxsfr before
`base/contract.py` existed (`trxsfr fixtures` kit, 200 steps): its files are
kept as they were, so a change to how models are read that breaks older
exports fails here.
"""

import base64
import json
import os
import shutil

import pytest
from helpers import run_cli

LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy_model")


@pytest.fixture
def legacy(tmp_path):
    """A copy of the legacy base dir (nothing a test does touches the kept files)."""
    return shutil.copytree(LEGACY, tmp_path / "legacy")


def test_the_legacy_info_reads_with_defaults_for_what_it_lacks():
    from trxsfr.base import contract

    version = contract.resolve_version(LEGACY)
    info = contract.read_info(contract.info_path(version))
    assert info.labels == ("blue", "green", "red")
    assert info.module.feature_dim == 32 and info.module.image_size == (32, 32)
    assert info.metrics["test_accuracy"] == 1.0 and info.tflite is None
    with open(contract.info_path(version), encoding="utf-8") as f:
        assert info.to_json() == json.load(f)  # read and written back unchanged


def test_label_evaluates_with_a_legacy_model(legacy, fx):
    result = run_cli("label", "--model", str(legacy), fx["heldout"], "--format", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["evaluation"]["accuracy"] == 1.0 and doc["metadata"]["labels"] == [
        "blue", "green", "red"]


def test_export_tflite_and_info_take_a_legacy_model(legacy, tmp_path):
    out = tmp_path / "legacy.tflite"
    assert run_cli("export-tflite", "--model", str(legacy), "--out", str(out)).code == 0
    result = run_cli("info", str(out), "--format", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["labels"] == ["blue", "green", "red"]


def test_serve_answers_with_a_legacy_model(legacy, fx):
    from test_serve import ServerProcess, request

    image = next(os.path.join(dirpath, name) for dirpath, _, names in
                 os.walk(os.path.join(fx["heldout"], "red")) for name in sorted(names))
    with open(image, "rb") as f:
        b64 = base64.b64encode(f.read()).decode()
    server = ServerProcess("--model_base_path", legacy, "--model_name", "legacy")
    try:
        status, body = request(f"{server.url}/v1/models/legacy:predict",
                               {"instances": [{"b64": b64}]})
        assert status == 200, body
        assert body["predictions"][0]["classes"][0] == "red"
    finally:
        server.stop()
