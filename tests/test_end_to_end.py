"""retrain -> versioned SavedModel -> label, through the CLI, as a user runs it."""

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
from helpers import (
    FAST_TRAIN,
    REPO,
    exported_variables,
    mark_older_preprocessing,
    run_cli,
    run_subprocess,
    write_label_free_set,
)

from trxsfr.base import contract
from trxsfr.kit import write_image_set


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_export_layout_and_metadata(trained):
    v = trained["version_dir"]
    assert os.path.dirname(v) == trained["base"]
    assert os.path.basename(v).isdigit()
    assert os.path.exists(os.path.join(v, "saved_model.pb"))
    with open(contract.labels_path(v)) as f:
        assert f.read().split("\n") == ["blue", "green", "red", ""]
    with open(trained["work"] / "labels.txt") as f:
        assert f.read() == "blue\ngreen\nred\n"
    meta = read_json(contract.info_path(v))
    assert meta["module"]["image_size"] == [32, 32] and meta["module"]["feature_dim"] == 32
    assert meta["config"]["how_many_training_steps"] == 200
    assert meta["labels"] == ["blue", "green", "red"]
    assert set(meta["split_counts"]["red"]) == {"train", "validation", "test"}
    assert meta["metrics"]["test_accuracy"] >= 0.9
    assert meta["history"][-1]["step"] == 200
    # no staging leftovers next to the version
    assert os.listdir(trained["base"]) == [os.path.basename(v)]


def test_retrain_prints_table_and_final_accuracy(trained):
    out = trained["result"].out
    assert "class  train  validation  test" in out
    for label in ("blue", "green", "red"):
        assert any(line.strip().startswith(label) for line in out.splitlines())
    assert "Final test accuracy = " in out and "(N=" in out
    assert "Misclassified test images: " in out
    assert "Bottlenecks: 0 reused from cache, 120 computed" in out


def test_tensorboard_summaries(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = os.listdir(trained["runs"])
    assert len(runs) == 1 and runs[0].startswith("run-")
    train = EventAccumulator(os.path.join(trained["runs"], runs[0], "train"),
                             size_guidance={"tensors": 0}).Reload()
    val = EventAccumulator(os.path.join(trained["runs"], runs[0], "validation"),
                           size_guidance={"tensors": 0}).Reload()
    assert {"accuracy", "cross_entropy", "final_layer/weights"} <= set(train.Tags()["tensors"])
    assert {"accuracy", "cross_entropy"} <= set(val.Tags()["tensors"])
    assert len(val.Tensors("accuracy")) >= 10


def test_signature_on_image_bytes_equals_label(trained, fx, tmp_path):
    """Plain TensorFlow (no trxsfr import) on raw JPEG, PNG and WebP (also transparent) bytes
    gives label's scores."""
    from PIL import Image

    files = sorted(os.path.join(fx["heldout"], c, n)
                   for c in ("red", "blue") for n in os.listdir(os.path.join(fx["heldout"], c)))[::4]
    for ext in ("png", "webp"):
        other = str(tmp_path / f"{os.path.basename(files[0])}.{ext}")
        Image.open(files[0]).save(other)
        files.append(other)
    seethrough = Image.open(files[1]).convert("RGBA")  # a WebP TF decodes only with 4 channels
    seethrough.putalpha(90)
    seethrough.save(str(tmp_path / "seethrough.webp"))
    files.append(str(tmp_path / "seethrough.webp"))
    script = tmp_path / "plain.py"
    script.write_text(
        "import json, sys\n"
        "import tensorflow as tf\n"
        "assert 'trxsfr' not in sys.modules\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "files = sys.argv[2:]\n"
        "data = tf.constant([open(f, 'rb').read() for f in files])\n"
        "out = m.signatures['serving_default'](image_bytes=data)\n"
        "print(json.dumps({f: {'probabilities': p.tolist(), 'top': c[0].decode()}\n"
        "  for f, p, c in zip(files, out['probabilities'].numpy(), out['classes'].numpy())}))\n"
        "assert 'trxsfr' not in sys.modules\n"
    )
    plain = run_subprocess(sys.executable, script, trained["version_dir"], *files)
    assert plain.returncode == 0, plain.stderr[-2000:]
    served = json.loads(plain.stdout.strip().splitlines()[-1])
    labelled = run_cli("label", "--model", trained["base"], "--format", "json", "--quiet", *files)
    assert labelled.code == 0, labelled
    doc = json.loads(labelled.out)
    assert len(doc["predictions"]) == len(files)
    for pred in doc["predictions"]:
        s = served[pred["path"]]
        assert pred["top_k"][0]["label"] == s["top"]
        np.testing.assert_allclose(pred["probabilities"], s["probabilities"], atol=1e-5)


def test_heldout_accuracy_gate(trained, fx):
    r = run_cli("label", "--model", trained["base"], fx["heldout"], "--min_accuracy", "0.95", "--quiet")
    assert r.code == 0, r
    line = next(l for l in r.lines if l.startswith("Accuracy = "))
    assert float(line.split("=")[1].split("%")[0]) >= 95
    assert "Confusion matrix" in r.out and "Per-class accuracy:" in r.out
    assert any(l.startswith("Model load time: ") for l in r.lines)
    assert any(l.startswith("Mean inference time: ") for l in r.lines)


def test_noise_does_not_pass_the_gate(fx, tmp_path):
    write_image_set(str(tmp_path / "noise"), 40, seed=5, noise=True)
    held = write_label_free_set(tmp_path / "noise_heldout", 20, seed=6)
    r = run_cli("retrain", "--image_dir", tmp_path / "noise", "--tfhub_module", fx["module"],
                "--bottleneck_dir", tmp_path / "c", "--saved_model_dir", tmp_path / "m",
                "--summaries_dir", tmp_path / "r", *FAST_TRAIN)
    assert r.code == 0, r
    gate = run_cli("label", "--model", tmp_path / "m", held, "--min_accuracy", "0.9", "--quiet")
    assert gate.code == 1, gate
    line = next(l for l in gate.lines if l.startswith("Accuracy = "))
    assert float(line.split("=")[1].split("%")[0]) <= 100 / 3 + 0.01, line  # one folder in three
    assert "below --min_accuracy 0.9" in gate.err


def test_same_seed_same_weights_and_cache_reuse(trained, fx, tmp_path):
    def again(seed, run):
        r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                    "--bottleneck_dir", trained["cache"], "--saved_model_dir", tmp_path / f"m{run}",
                    "--summaries_dir", tmp_path / "r", "--seed", seed, "--train_batch_size", 16,
                    *FAST_TRAIN)
        assert r.code == 0, r
        assert "Bottlenecks: 120 reused from cache, 0 computed" in r.out
        return exported_variables(r.lines[-1])

    w0, b0 = again(3, "a")
    w1, b1 = again(3, "b")
    np.testing.assert_array_equal(w0, w1)
    np.testing.assert_array_equal(b0, b1)
    w2, _ = again(7, "c")
    assert not np.array_equal(w0, w2)


def test_added_images_compute_only_new_vectors(fx, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(fx["images"], data)
    args = ["retrain", "--image_dir", data, "--tfhub_module", fx["module"],
            "--bottleneck_dir", tmp_path / "c", "--saved_model_dir", tmp_path / "m",
            "--summaries_dir", tmp_path / "r", *FAST_TRAIN]
    assert "0 reused from cache, 120 computed" in run_cli(*args).out
    write_image_set(str(tmp_path / "more"), 5, seed=9)
    for cls in os.listdir(tmp_path / "more"):
        for name in os.listdir(tmp_path / "more" / cls):
            shutil.copy(tmp_path / "more" / cls / name, data / cls / ("new_" + name))
    r = run_cli(*args)
    assert "120 reused from cache, 15 computed" in r.out, r
    assert len(os.listdir(tmp_path / "m")) == 2


def test_label_flat_folder_lines_and_top_k(trained, fx, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, cls in enumerate(("red", "green")):
        shutil.copy(os.path.join(fx["heldout"], cls, f"{cls}_0000.jpg"), flat / f"{i}.jpg")
    r = run_cli("label", "--model", trained["base"], flat, "--top_k", "2", "--quiet")
    assert r.code == 0, r
    rows = [l.split() for l in r.lines if l.endswith(".jpg")]
    assert len(rows) == 4
    assert rows[0][0] == "red" and rows[0][2].endswith("0.jpg")
    assert float(rows[0][1]) >= float(rows[1][1])
    assert rows[2][0] == "green"
    assert "Accuracy" not in r.out


def test_label_picks_highest_complete_version(trained, fx, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(trained["version_dir"], base / "5")
    shutil.copytree(trained["version_dir"], base / "12")
    (base / "99").mkdir()  # incomplete: no saved_model.pb
    (base / "not-a-version").mkdir()
    r = run_cli("label", "--model", base, "--format", "json", "--quiet",
                os.path.join(fx["heldout"], "red", "red_0000.jpg"))
    assert r.code == 0, r
    assert json.loads(r.out)["version"] == "12"


def test_codelab_output(trained, fx):
    image = os.path.join(fx["heldout"], "green", "green_0001.jpg")
    r = run_cli("label", "--format", "codelab", "--graph", trained["base"], "--image", image,
                "--labels", trained["work"] / "labels.txt", "--input_mean", "0", "--quiet")
    assert r.code == 0, r
    assert r.lines[0].startswith("Evaluation time (1-image): ") and r.lines[0].endswith("s")
    assert r.lines[1] == ""
    assert r.lines[2].startswith("green (score=0.")
    assert len(r.lines) == 5


def test_saved_model_cli_lists_both_signatures(trained):
    cli = shutil.which("saved_model_cli")
    assert cli, "saved_model_cli ships with tensorflow"
    p = run_subprocess(cli, "show", "--all", "--dir", trained["version_dir"])
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    serving = out.split("signature_def['serving_default']")[1]
    images = out.split("signature_def['predict_images']")[1].split("signature_def[")[0]
    assert "inputs['image_bytes']" in serving and "DT_STRING" in serving
    assert "inputs['images']" in images and "(-1, 32, 32, 3)" in images
    for name in ("probabilities", "classes", "class_ids", "scores"):
        assert f"outputs['{name}']" in serving and f"outputs['{name}']" in images


@pytest.mark.slow
def test_scripts_from_scratch(tmp_path):
    """The README's offline smoke run: fixtures, train.sh, test_infer_validation.sh, label_image.py
    and the installed `trxsfr` command."""
    py = sys.executable
    env_py = {"PYTHON": py}
    kit = tmp_path / "kit"
    p = run_subprocess(py, "-m", "trxsfr", "fixtures", kit, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    bad = run_subprocess(os.path.join(REPO, "train.sh"), cwd=tmp_path)
    assert bad.returncode == 2 and "usage:" in bad.stderr
    os.environ.update(env_py)
    try:
        p = run_subprocess(os.path.join(REPO, "train.sh"), kit / "images", "--tfhub_module",
                           kit / "module", "--how_many_training_steps", "300", cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
        version = p.stdout.strip().splitlines()[-1]
        assert os.path.isdir(tmp_path / version) and os.path.basename(version).isdigit()
        assert version.startswith("trxsfr_model")  # defaults land in the working directory
        assert os.path.isdir(tmp_path / "trxsfr_cache") and os.path.isdir(tmp_path / "trxsfr_runs")
        # The process exits with frozen objects (cli.entry_point): what it wrote is complete.
        from tensorboard.backend.event_processing.event_accumulator import (
            EventAccumulator,
        )

        (run,) = os.listdir(tmp_path / "trxsfr_runs")
        val = EventAccumulator(str(tmp_path / "trxsfr_runs" / run / "validation"),
                               size_guidance={"tensors": 0}).Reload()
        assert len(val.Tensors("accuracy")) >= 10
        v = run_subprocess(os.path.join(REPO, "test_infer_validation.sh"), kit / "heldout",
                           "--min_accuracy", "0.95", cwd=tmp_path)
        assert v.returncode == 0, v.stdout[-2000:] + v.stderr[-2000:]
        assert "Accuracy = " in v.stdout
        noise = write_label_free_set(tmp_path / "noise", 10)
        gate = run_subprocess(os.path.join(REPO, "test_infer_validation.sh"), noise,
                              "trxsfr_model", "--min_accuracy", "0.9", cwd=tmp_path)
        assert gate.returncode == 1, gate.stdout[-2000:] + gate.stderr[-2000:]
        assert "below --min_accuracy 0.9" in gate.stderr
        missing = run_subprocess(os.path.join(REPO, "test_infer_validation.sh"), tmp_path / "nope",
                                 cwd=tmp_path)
        # one line on stderr, with none of TensorFlow's C++ start-up lines before it
        assert missing.returncode == 2, missing.stderr
        assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
        assert missing.stderr.startswith("trxsfr: error:"), missing.stderr
        lab = run_subprocess(py, os.path.join(REPO, "label_image.py"), "--graph", "trxsfr_model",
                             "--image", kit / "heldout" / "red" / "red_0000.jpg", cwd=tmp_path)
        assert lab.returncode == 0 and "red (score=" in lab.stdout, lab.stderr[-2000:]
        assert "absl::InitializeLog" not in lab.stderr and not re.search(
            r"^[IWE]\d{4} ", lab.stderr, re.M), lab.stderr
        # The `trxsfr` command pip installed, as the README's other examples use it (a legacy
        # setuptools script once failed here when tensorflow_hub imported pkg_resources).
        trxsfr = os.path.join(os.path.dirname(sys.executable), "trxsfr")  # this environment's
        assert os.path.isfile(trxsfr), "pip install -e . puts a trxsfr command beside python"
        p = run_subprocess(trxsfr, "retrain", "--image_dir", kit / "images", "--tfhub_module",
                           kit / "module", "--how_many_training_steps", "50", cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
        assert p.stdout.strip().splitlines()[-1] != version  # a new version
        assert "reused from cache, 0 computed" in p.stdout, p.stdout  # the cache was whole
    finally:
        os.environ.pop("PYTHON", None)


def test_model_from_older_preprocessing_is_labelled_with_its_own_decode(trained, fx, tmp_path):
    old = tmp_path / "old" / "7"
    shutil.copytree(trained["version_dir"], old)
    mark_older_preprocessing(contract.info_path(old))
    files = [os.path.join(fx["heldout"], "blue", "blue_0002.jpg"), __file__]
    r = run_cli("label", "--model", old, "--format", "json", *files)
    assert r.code == 0, r
    assert "decoding with the model's own signature" in r.err
    doc = json.loads(r.out)
    assert len(doc["predictions"]) == 1 and len(doc["skipped"]) == 1
    import tensorflow as tf

    served = tf.saved_model.load(str(old)).signatures[contract.SIGNATURE_BYTES](
        image_bytes=tf.constant([open(files[0], "rb").read()]))
    np.testing.assert_allclose(doc["predictions"][0]["probabilities"],
                               served["probabilities"].numpy()[0], atol=1e-6)


def test_native_start_up_lines_are_dropped_and_nothing_else(capfd, monkeypatch):
    """TensorFlow's and LiteRT's C++ notices on file descriptor 2 (which no setting
    silences) are dropped inside `native_stderr.quiet()`; real errors and our own lines pass."""
    from trxsfr.cli import native_stderr

    lines = [
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        b"I0000 00:00:1796020187.587857   18818 port.cc:153] oneDNN custom operations are on.\n",
        b"I0000 00:00:1796020187.588226   18818 cudart_stub.cc:31] Could not find cuda drivers\n",
        b"E0000 00:00:1796019755.456629   17354 cuda_platform.cc:52] failed call to cuInit\n",
        b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
        b"E0000 00:00:1796019755.456629   17354 saved_model.cc:99] a real error\n",
        b"trxsfr: error: our own line\n",
    ]
    monkeypatch.setattr(native_stderr, "enabled", True)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr.quiet():
        for line in lines:
            os.write(2, line)
    assert capfd.readouterr().err.encode() == lines[-2] + lines[-1]
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # asks for every line
    with native_stderr.quiet():
        os.write(2, lines[1])
    assert capfd.readouterr().err.encode() == lines[1]
