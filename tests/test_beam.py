"""The Apache Beam pipelines: `extract` into the bottleneck store, `label --runner`.

One extract run with the DirectRunner in multi-processing mode (2 worker processes, each
importing TensorFlow: seconds of start-up apiece) is shared by the module's tests.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("apache_beam", reason="Apache Beam is not installed: "
                                          "pip install -e '.[beam]' runs these tests")

from helpers import FAST_TRAIN, assert_bad_input, exported_variables, run_cli  # noqa: E402

pytestmark = pytest.mark.slow
TWO_WORKERS = ["--runner", "DirectRunner", "--direct_num_workers=2",
               "--direct_running_mode=multi_processing"]
BROKEN = b"\xff\xd8\xff\xe0 this JPEG stops here"


@pytest.fixture(scope="module")
def beam_run(fx, tmp_path_factory):
    """Fixture images plus one corrupt JPEG; `extract` with 2 workers, then again in-process."""
    work = tmp_path_factory.mktemp("beam")
    images = work / "images"
    shutil.copytree(fx["images"], images)
    (images / "blue" / "broken.jpg").write_bytes(BROKEN)
    extract = ["extract", "--image_dir", images, "--tfhub_module", fx["module"],
               "--bottleneck_dir", work / "store", "--quiet"]
    first = run_cli(*extract, *TWO_WORKERS)
    again = run_cli(*extract)  # the DirectRunner in this process: no worker start-up
    return {"work": work, "images": images, "first": first, "again": again}


def _store_dir(result) -> str:
    return result.lines[-1]


def test_extract_fills_the_store_with_a_segment_per_worker(beam_run):
    first = beam_run["first"]
    assert first.code == 0, first
    assert first.lines[0] == "Images: 121 (120 computed, 0 reused from the store, 1 skipped)", first
    broken = os.path.join(beam_run["images"], "blue", "broken.jpg")
    assert f"skipped: {broken}: truncated or corrupt JPEG data" in first.lines, first
    segments = sorted(n for n in os.listdir(_store_dir(first)) if n.endswith(".bin"))
    # Each worker process appends to a segment of its own (never two writers on one file).
    assert len(segments) == 2, segments
    assert not [n for n in os.listdir(beam_run["work"] / "store") if n.startswith(".extract-")]


def test_a_second_extract_computes_nothing(beam_run):
    again = beam_run["again"]
    assert again.code == 0, again
    assert again.lines[0] == "Images: 121 (0 computed, 120 reused from the store, 1 skipped)", again
    assert _store_dir(again) == _store_dir(beam_run["first"])


@pytest.fixture(scope="module")
def retrained(beam_run, fx):
    """retrain on extract's store, and a plain retrain with a cache of its own."""
    work = beam_run["work"]
    runs = {}
    for name, store in (("on_store", work / "store"), ("plain", work / "plain_cache")):
        runs[name] = run_cli("retrain", "--image_dir", beam_run["images"],
                             "--tfhub_module", fx["module"], "--bottleneck_dir", store,
                             "--saved_model_dir", work / f"models_{name}",
                             "--summaries_dir", work / "runs", *FAST_TRAIN)
        assert runs[name].code == 0, runs[name]
    return runs


def test_retrain_on_the_store_computes_nothing_and_exports_the_same_model(retrained):
    assert "Bottlenecks: 120 reused from cache, 0 computed" in retrained["on_store"].lines
    assert "Bottlenecks: 0 reused from cache, 120 computed" in retrained["plain"].lines
    weights, bias = exported_variables(retrained["on_store"].lines[-1])
    plain_weights, plain_bias = exported_variables(retrained["plain"].lines[-1])
    np.testing.assert_allclose(weights, plain_weights, atol=1e-5)
    np.testing.assert_allclose(bias, plain_bias, atol=1e-5)


def test_label_pipeline_evaluates_as_local_label(retrained, beam_run, fx):
    model = retrained["on_store"].lines[-1]
    heldout = beam_run["work"] / "heldout"
    shutil.copytree(fx["heldout"], heldout)
    (heldout / "red" / "broken.jpg").write_bytes(BROKEN)
    local = run_cli("label", "--model", model, heldout, "--format", "json", "--quiet")
    assert local.code == 0, local
    prefix = beam_run["work"] / "labels" / "heldout"
    piped = run_cli("label", "--model", model, heldout, "--format", "json", "--quiet",
                    "--output", prefix, *TWO_WORKERS)
    assert piped.code == 0, piped
    want, got = json.loads(local.out), json.loads(piped.out)
    # --runtime auto: the driver converts and checks the model, the workers run it on LiteRT.
    assert got["runtime"].startswith("LiteRT"), got["runtime"]

    want_eval = {k: v for k, v in want["evaluation"].items() if k != "misclassified"}
    got_eval = {k: v for k, v in got["evaluation"].items() if k != "misclassified"}
    assert got_eval == want_eval  # counts, confusion matrix, every metric
    assert sorted(m["path"] for m in got["evaluation"]["misclassified"]) == \
        sorted(m["path"] for m in want["evaluation"]["misclassified"])
    assert [s["path"] for s in got["skipped"]] == [str(heldout / "red" / "broken.jpg")]
    assert got["skipped"] == want["skipped"]

    lines = []
    for path in got["outputs"]:
        with open(path, encoding="utf-8") as f:
            lines += [json.loads(line) for line in f]
    assert got["labelled"] == len(lines) == len(want["predictions"])
    by_path = {p["path"]: p for p in want["predictions"]}
    for line in lines:
        expected = by_path[line["path"]]
        assert line["true_label"] == expected["true_label"]
        assert line["top_k"][0]["label"] == expected["top_k"][0]["label"]
        np.testing.assert_allclose(line["probabilities"], expected["probabilities"], atol=1e-5)
    with open(got["evaluation_file"], encoding="utf-8") as f:
        assert json.load(f) == got["evaluation"]

    again = run_cli("label", "--model", model, heldout, "--output", prefix, *TWO_WORKERS)
    assert_bad_input(again, "--output", "exists; pick a new prefix")
    on_tf = run_cli("label", "--model", model, heldout, "--format", "json", "--quiet",
                    "--runtime", "tf", "--output", beam_run["work"] / "labels" / "tf",
                    *TWO_WORKERS)
    assert on_tf.code == 0, on_tf
    tf_doc = json.loads(on_tf.out)
    assert tf_doc["runtime"].startswith("tensorflow") and tf_doc["evaluation"] == got["evaluation"]
    # A .tflite runs on LiteRT on the workers too, whatever the driver's runtime flag.
    tflite = beam_run["work"] / "model.tflite"
    assert run_cli("export-tflite", "--model", model, "--out", tflite).code == 0
    on_file = run_cli("label", "--model", tflite, heldout, "--format", "json", "--quiet",
                      "--output", beam_run["work"] / "labels" / "tflite", *TWO_WORKERS)
    assert on_file.code == 0, on_file
    assert json.loads(on_file.out)["evaluation"]["count"] == got["evaluation"]["count"]


def test_evaluation_combined_from_parts_equals_metrics_of_the_whole():
    from trxsfr.use import beam_label, metrics

    labels = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=50).astype(np.float32)
    truth = rng.integers(0, 4, size=50)
    fn = beam_label.Evaluation(labels)
    parts = []
    for chunk in np.array_split(np.arange(50), 3):  # three workers' partial sums
        acc = fn.create_accumulator()
        for i in chunk:
            acc = fn.add_input(acc, ((f"img{i:02d}", int(truth[i])), probs[i]))
        parts.append(acc)
    combined = fn.extract_output(fn.merge_accumulators(parts))
    whole = metrics.metrics(truth, probs.argmax(axis=1), labels, probs)
    assert {k: v for k, v in combined.items() if k != "misclassified"} == whole
    assert [m["path"] for m in combined["misclassified"]] == \
        [f"img{i:02d}" for i in range(50) if probs[i].argmax() != truth[i]]
    assert fn.extract_output(fn.create_accumulator()) is None


def test_two_store_writers_never_share_a_segment(tmp_path):
    from trxsfr.train import cache

    stores = [cache.BottleneckStore(str(tmp_path), "ns", 4) for _ in range(2)]
    for n, store in enumerate(stores):
        store.put_many([bytes([n, i]) * 16 for i in range(3)], np.full((3, 4), n, np.float32))
    assert len([f for f in os.listdir(tmp_path / "ns") if f.endswith(".bin")]) == 2
    reader = cache.BottleneckStore(str(tmp_path), "ns", 4)
    out = np.zeros((6, 4), np.float32)
    assert reader.read_into([bytes([n, i]) * 16 for n in range(2) for i in range(3)], out) == []
    assert out[:3].max() == 0 and out[3:].min() == 1
    for store in stores:
        store.close()


@pytest.mark.parametrize("args, needles", [
    (["--direct_num_worker=2"], ["--direct_num_worker", "did you mean --direct_num_workers"]),
    (["--bottleneck_dir", "gs://bucket/store"], ["--bottleneck_dir", "local or mounted"]),
])
def test_extract_bad_options_are_one_line_errors(fx, tmp_path, args, needles):
    result = run_cli("extract", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                     "--bottleneck_dir", tmp_path / "store", *args)
    assert_bad_input(result, *needles)


def test_label_pipeline_flags_need_each_other(fx, tmp_path):
    result = run_cli("label", "--model", tmp_path / "m", fx["heldout"], "--output", tmp_path / "p")
    assert_bad_input(result, "--runner")
    result = run_cli("label", "--model", tmp_path / "m", fx["heldout"], "--runner", "DirectRunner")
    assert_bad_input(result, "--output")
    result = run_cli("label", "--model", tmp_path / "m", fx["heldout"], "--direct_num_workers=2")
    assert_bad_input(result, "unrecognized arguments: --direct_num_workers=2")
