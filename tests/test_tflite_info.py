"""`export-tflite` in every quantization mode, `label` on a .tflite, and `info` on both formats."""

import json
import os
import sys

import numpy as np
import pytest
from helpers import mark_older_preprocessing, run_cli, run_subprocess

MODES = ("none", "dynamic", "float16", "int8", "int8_per_tensor")


@pytest.fixture(scope="session")
def tflite_models(trained, fx, tmp_path_factory):
    """{mode: path} of the trained model converted in each mode, side by side in one folder."""
    out = tmp_path_factory.mktemp("tflite")
    paths = {}
    for mode in MODES:
        path = out / f"model-{mode}.tflite"
        r = run_cli("export-tflite", "--model", trained["base"], "--out", path, "--quantize", mode,
                    "--representative_dir", fx["images"], "--quiet")
        assert r.code == 0, r
        assert r.lines[-1] == str(path) and f"Quantization: {mode}" in r.out
        paths[mode] = str(path)
    return paths


def label_json(model, *inputs):
    r = run_cli("label", "--model", model, "--format", "json", "--quiet", *inputs)
    assert r.code == 0, r
    return json.loads(r.out)


def test_every_mode_writes_model_labels_and_metadata(tflite_models, trained):
    for mode, path in tflite_models.items():
        assert os.path.getsize(path) > 1000
        stem = path[: -len(".tflite")]
        with open(stem + ".labels.txt") as f:
            assert f.read() == "blue\ngreen\nred\n"
        with open(stem + ".trxsfr.json") as f:
            meta = json.load(f)
        assert meta["tflite"]["quantize"] == mode
        assert meta["tflite"]["source_model"] == os.path.abspath(trained["version_dir"])
        assert meta["tflite"]["image_size"] == [32, 32]
        assert (meta["tflite"]["calibration_images"] > 0) == mode.startswith("int8")
        assert meta["labels"] == ["blue", "green", "red"]
    folder = os.path.dirname(tflite_models["none"])
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # no temporary leftovers


def test_every_mode_labels_the_heldout_set(tflite_models, fx):
    for mode, path in tflite_models.items():
        doc = label_json(path, fx["heldout"])
        assert doc["version"] == os.path.basename(path)
        assert doc["evaluation"]["count"] == 36
        assert doc["evaluation"]["accuracy"] >= 0.9, (mode, doc["evaluation"]["accuracy"])
        for p in doc["predictions"]:
            assert abs(sum(p["probabilities"]) - 1) < 0.02, (mode, p)


def test_int8_scales_per_channel_and_per_tensor(tflite_models):
    """int8 keeps a scale per output channel of a conv kernel; int8_per_tensor one per tensor,
    so its file is smaller."""
    from trxsfr.use.interpreter import interpreter_class

    def kernel_scales(path):
        interpreter = interpreter_class()(model_path=path)
        return [len(t["quantization_parameters"]["scales"]) for t in interpreter.get_tensor_details()
                if t["dtype"] == np.int8 and len(t["shape"]) == 4]

    per_channel, per_tensor = kernel_scales(tflite_models["int8"]), kernel_scales(tflite_models["int8_per_tensor"])
    assert per_channel and max(per_channel) > 1, per_channel
    assert per_tensor and max(per_tensor) == 1, per_tensor
    assert os.path.getsize(tflite_models["int8_per_tensor"]) < os.path.getsize(tflite_models["int8"])


def test_float_tflite_agrees_with_the_saved_model(tflite_models, trained, fx):
    saved = label_json(trained["base"], fx["heldout"])
    lite = label_json(tflite_models["none"], fx["heldout"])
    assert [p["path"] for p in lite["predictions"]] == [p["path"] for p in saved["predictions"]]
    assert [p["top_k"][0]["label"] for p in lite["predictions"]] == \
        [p["top_k"][0]["label"] for p in saved["predictions"]]
    np.testing.assert_allclose([p["probabilities"] for p in lite["predictions"]],
                               [p["probabilities"] for p in saved["predictions"]], atol=1e-3)
    # the text report is the same report
    r = run_cli("label", "--model", tflite_models["none"], fx["heldout"], "--min_accuracy", "0.9", "--quiet")
    assert r.code == 0, r
    assert "Confusion matrix" in r.out and "Accuracy = " in r.out


def test_both_formats_take_an_empty_batch(tflite_models, trained):
    """Library callers get [0, classes] for no images from either format (TF's convolutions
    raise an obscure error on an empty batch)."""
    from trxsfr.use.models import load

    for model in (trained["version_dir"], tflite_models["none"]):
        clf = load(model)
        h, w = clf.image_size
        out = clf.predict_images(np.zeros((0, h, w, 3), np.float32))
        assert out.shape == (0, len(clf.labels)) and out.dtype == np.float32, model
        with pytest.raises(ValueError, match=r"\[N, 32, 32, 3\]"):
            clf.predict_images(np.zeros((0, h + 1, w, 3), np.float32))


def test_export_never_overwrites_and_rejects_bad_flags(tflite_models, trained, tmp_path):
    path = tflite_models["none"]
    before = open(path, "rb").read()
    r = run_cli("export-tflite", "--model", trained["base"], "--out", path, "--quiet")
    assert r.code == 2 and "already exists" in r.err, r
    assert open(path, "rb").read() == before
    # a sidecar in the way also stops it, before anything is written
    (tmp_path / "x.labels.txt").write_text("mine\n")
    r = run_cli("export-tflite", "--model", trained["base"], "--out", tmp_path / "x.tflite", "--quiet")
    assert r.code == 2 and "x.labels.txt already exists" in r.err, r
    assert not (tmp_path / "x.tflite").exists() and (tmp_path / "x.labels.txt").read_text() == "mine\n"
    for mode in ("int8", "int8_per_tensor"):
        r = run_cli("export-tflite", "--model", trained["base"], "--out", tmp_path / "y.tflite",
                    "--quantize", mode, "--quiet")
        assert r.code == 2 and f"--quantize {mode} calibrates" in r.err, r
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("export-tflite", "--model", trained["base"], "--out", tmp_path / "y.tflite",
                "--quantize", "int8", "--representative_dir", empty, "--quiet")
    assert r.code == 2 and "no image files" in r.err, r
    r = run_cli("export-tflite", "--model", trained["base"], "--out", tmp_path / "y.lite", "--quiet")
    assert r.code == 2 and "must end in .tflite" in r.err, r
    r = run_cli("export-tflite", "--model", trained["base"], "--out", tmp_path / "y.tflite",
                "--max_representative_images", "0", "--quiet")
    assert r.code == 2 and "--max_representative_images must be positive" in r.err, r
    r = run_cli("export-tflite", "--model", tmp_path / "nope", "--out", tmp_path / "z.tflite", "--quiet")
    assert r.code == 2 and "does not exist" in r.err, r
    for where, words in ((tmp_path / "missing", "is not a directory"),
                         (tflite_models["none"], "is not a directory")):
        r = run_cli("export-tflite", "--model", trained["base"], "--out", tmp_path / "y.tflite",
                    "--quantize", "int8", "--representative_dir", where, "--quiet")
        assert r.code == 2 and f"--representative_dir {where} {words}" in r.err, r
    (tmp_path / "taken.tflite").mkdir()
    r = run_cli("export-tflite", "--model", trained["base"], "--out", tmp_path / "taken.tflite",
                "--quiet")
    assert r.code == 2 and "taken.tflite already exists" in r.err, r
    (tmp_path / "a_file").write_text("mine")
    r = run_cli("export-tflite", "--model", trained["base"], "--out",
                tmp_path / "a_file" / "y.tflite", "--quiet")
    assert r.code == 2 and "a_file" in r.err and (tmp_path / "a_file").read_text() == "mine", r
    r = run_cli("export-tflite", "--model", trained["base"], "--out",
                tmp_path / "new" / "deep" / "m.tflite", "--quiet")  # folders made, as report does
    assert r.code == 0 and (tmp_path / "new" / "deep" / "m.tflite").is_file(), r
    r = run_cli("export-tflite", "--model", tflite_models["none"], "--out", tmp_path / "w.tflite",
                "--quiet")
    assert r.code == 2 and "is already a .tflite" in r.err, r
    assert "w.tflite" not in os.listdir(tmp_path)
    assert not (tmp_path / "y.tflite").exists() and not (tmp_path / "z.tflite").exists()


def test_label_rejects_broken_tflite_inputs(tflite_models, fx, tmp_path):
    image = os.path.join(fx["heldout"], "red", "red_0000.jpg")
    r = run_cli("label", "--model", tmp_path / "missing.tflite", image, "--quiet")
    assert r.code == 2 and "does not exist" in r.err, r
    lonely = tmp_path / "lonely.tflite"
    lonely.write_bytes(open(tflite_models["none"], "rb").read())
    r = run_cli("label", "--model", lonely, image, "--quiet")
    assert r.code == 2 and "lonely.labels.txt" in r.err, r
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer")
    (tmp_path / "junk.labels.txt").write_text("a\nb\n")
    r = run_cli("label", "--model", junk, image, "--quiet")
    assert r.code == 2 and "cannot load TFLite model" in r.err, r
    mismatched = tmp_path / "mismatched.tflite"
    mismatched.write_bytes(open(tflite_models["none"], "rb").read())
    (tmp_path / "mismatched.labels.txt").write_text("a\nb\nc\nd\n")
    r = run_cli("label", "--model", mismatched, image, "--quiet")
    assert r.code == 2 and "outputs do not match its 4 labels" in r.err, r
    (tmp_path / "folder.tflite").mkdir()
    r = run_cli("label", "--model", tmp_path / "folder.tflite", image, "--quiet")
    assert r.code == 2 and "is not a .tflite file" in r.err, r


def test_info_on_saved_model_and_tflite(tflite_models, trained):
    docs = {}
    for name, model in (("saved", trained["base"]), ("none", tflite_models["none"]),
                        ("int8", tflite_models["int8"])):
        r = run_cli("info", model, "--format", "json", "--runs", "3", "--batch_size", "4")
        assert r.code == 0, r
        docs[name] = json.loads(r.out)
    for doc in docs.values():
        assert doc["labels"] == ["blue", "green", "red"] and doc["image_size"] == [32, 32]
        assert doc["parameters"] > 1000 and doc["disk_bytes"] > 1000
        assert doc["rss_after_load_bytes"] > 0 and doc["load_seconds"] > 0
        assert doc["latency_ms_p50"] > 0 and doc["throughput_images_per_s"] > 0
        assert doc["module"] and doc["batch_size"] == 4
    assert docs["saved"]["format"] == "saved_model" and docs["saved"]["quantize"] is None
    assert docs["saved"]["path"] == trained["version_dir"]
    assert docs["int8"]["format"] == "tflite" and docs["int8"]["quantize"] == "int8"
    assert docs["int8"]["disk_bytes"] < docs["none"]["disk_bytes"] < docs["saved"]["disk_bytes"]
    r = run_cli("info", tflite_models["float16"])
    assert r.code == 0, r
    for start in ("Model: ", "Module: ", "Labels (3): blue, green, red", "Image size: 32x32",
                  "Parameters: ", "Size on disk: ", "Load time: ", "Resident memory after load: ",
                  "Latency, 1 image: ", "Throughput, batch 32: "):
        assert any(line.startswith(start) for line in r.lines), (start, r.out)
    r = run_cli("info", trained["base"], "--runs", "0")
    assert r.code == 2 and "--runs" in r.err


def test_tflite_runs_without_tensorflow(tflite_models):
    """Measuring a .tflite needs only the LiteRT runtime: its memory is not TensorFlow's."""
    pytest.importorskip("ai_edge_litert")
    script = ("import sys\n"
              "from trxsfr.info import measure\n"
              "fp = measure(sys.argv[1], batch_size=2, runs=2)\n"
              "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
              "print(fp.parameters, fp.runtime)\n")
    p = run_subprocess(sys.executable, "-c", script, tflite_models["dynamic"])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "ai_edge_litert" in p.stdout


def test_tflite_from_older_preprocessing_warns_that_scores_may_differ(tflite_models, fx, tmp_path):
    import shutil

    from trxsfr.base.contract import tflite_sidecars as sidecar_paths

    src = tflite_models["none"]
    dst = str(tmp_path / "old.tflite")
    for a, b in zip((src, *sidecar_paths(src)), (dst, *sidecar_paths(dst))):
        shutil.copyfile(a, b)
    mark_older_preprocessing(sidecar_paths(dst)[1])
    r = run_cli("label", "--model", dst, os.path.join(fx["heldout"], "red"))
    assert r.code == 0, r
    assert "cannot decode by itself: scores may differ slightly" in r.err, r
