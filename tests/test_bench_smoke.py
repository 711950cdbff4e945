"""Smoke tests of the benchmarks in benchmarks/ (repository root, not installed): the
MobileNet-V2 extractor they build, `bench_serve`'s serving run and quantization table, and
the pieces of `bench` and `bench_augment` that read figures from what a run wrote.

Marked `bench`: the default `pytest` run leaves them out (pytest.ini);
`pytest -m bench tests/test_bench_smoke.py` runs them.
"""

import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.bench


def _class_files(root):
    """{class folder name: sorted file paths} of `root/<class>/*`."""
    return {name: [os.path.join(root, name, f)
                   for f in sorted(os.listdir(os.path.join(root, name)))]
            for name in sorted(os.listdir(root))}


@pytest.mark.slow
def test_mobilenet_v2_fixture_gives_content_carrying_features(tmp_path):
    from benchmarks.mobilenet_fixture import (
        FEATURE_DIM,
        build_mobilenet_v2_extractor,
        calibration_images,
    )
    from trxsfr.base import extractors

    path = build_mobilenet_v2_extractor(str(tmp_path / "mnv2"), image_size=64, seed=0)
    extractor = extractors.load(path)  # hub.load, as retrain does
    assert extractor.image_size == (64, 64)
    assert extractor.dim == FEATURE_DIM

    images = calibration_images(6, 64, seed=123)
    features = extractor(images).numpy()
    assert features.shape == (6, FEATURE_DIM) and features.dtype == np.float32
    assert 0.1 <= float(np.mean(features)) <= 3.0  # not Keras' vanishing 1e-12
    # Content survives the depth: different pictures give clearly different vectors.
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cos = unit @ unit.T
    assert cos[np.triu_indices(6, 1)].min() < 0.98
    again = extractor(images).numpy()
    np.testing.assert_allclose(features, again, rtol=1e-5, atol=1e-6)

    # The content is usable: the colour classes of the test fixtures are told apart by the
    # nearest class mean of held-out pictures' features (chance: 1 in 3).
    from trxsfr.base import imaging
    from trxsfr.kit import write_image_set

    def features_by_class(root, per_class, seed):
        write_image_set(root, per_class, seed=seed, size_range=(64, 96))
        out = {}
        for name, files in _class_files(root).items():
            _, batch = next(iter(imaging.image_dataset(files, (64, 64), len(files))))
            out[name] = extractor(batch).numpy()
        return out

    train = features_by_class(str(tmp_path / "train"), 10, seed=1)
    held = features_by_class(str(tmp_path / "held"), 10, seed=2)
    names = sorted(train)
    everything = np.concatenate([train[n] for n in names])
    centre, scale = everything.mean(0), everything.std(0) + 1e-6  # standardised, as the head does
    means = np.stack([((train[n] - centre) / scale).mean(0) for n in names])
    hits = [int(np.argmin(np.linalg.norm(means - (f - centre) / scale, axis=1)) == i)
            for i, n in enumerate(names) for f in held[n]]
    assert np.mean(hits) >= 0.7, np.mean(hits)  # 25 of 30 here; chance: 10 of 30


def test_serving_benchmark_measures_every_figure(trained, fx, tmp_path):
    """`bench_serve`'s serving run, briefly, on the fixture model: each concurrency answered
    without failures, the CPU behind it accounted, the raw forward measured on both
    runtimes, issue 23's ratios divided by the right rates, and the report states each
    figure."""
    from benchmarks import bench_serve

    paths = {"module": fx["module"], "models": trained["base"], "heldout": fx["heldout"],
             "image_size": 32, "work": str(tmp_path)}
    # 1.5 s per level: with shorter windows, requests straddling their ends skew the
    # factors against the ratio on a loaded machine.
    r = bench_serve.bench_serving(paths, seconds=1.5, rounds=1)
    assert [run["concurrency"] for run in r["runs"]] == [1, 8, 32]
    for run in r["runs"]:
        assert run["requests"] > 0 and run["failures"] == 0, run
        assert run["server_cpu_ms_per_request"] > 0 and run["client_cpu_ms_per_request"] > 0, run
        assert 0 < run["cores_busy"] <= r["cores"] + 0.5, run
    assert r["runs"][-1]["mean_batch"] > 1  # 32 clients share forward passes
    assert [run["concurrency"] for run in r["grpc_runs"]] == [1, 8, 32]
    for run in r["grpc_runs"]:  # the same, over gRPC, in the same run
        assert run["requests"] > 0 and run["failures"] == 0, run
    assert r["grpc_over_rest_c32"] > 0
    assert r["raw"][32] > 0 and r["raw_cpu_ms_per_image"][32] > 0
    assert r["ratio_c32"] > 0 and r["c32_busy_factor"] > 0 and r["c32_cpu_factor"] > 0
    # the two factors multiply to the measured ratio, up to their measuring windows
    assert 0.6 < r["c32_busy_factor"] * r["c32_cpu_factor"] / r["ratio_c32"] < 1.6, r
    last = r["runs"][-1]  # the CPU line's own numbers give its factor
    per_request = last["server_cpu_ms_per_request"] + last["client_cpu_ms_per_request"]
    assert r["c32_raw_cpu_ms_per_image"] / per_request == pytest.approx(r["c32_cpu_factor"])
    # LiteRT's raw forward, in the same rounds as TensorFlow's (the fixture extractor converts)
    lite = r["litert"]
    assert lite is not None, r["litert_why_not"]
    for b in (1, 32):
        assert lite["raw"][b] > 0 and lite["raw_cpu_ms_per_image"][b] > 0
        for c in (1, 8, 32):
            assert lite["raw_by_concurrency"][c][b] > 0 and r["raw_by_concurrency"][c][b] > 0
    # the server ran at --runtime auto, its conversion kept in the work dir, and says so
    assert r["server_runtime"]["requested"] == "auto"
    assert r["server_runtime"]["ran"] in ("litert", "tf"), r["server_runtime"]
    assert os.listdir(tmp_path / "trxsfr_home" / "litert")
    # issue 23: each protocol's concurrency 1 and 32 over each runtime's raw rate of the
    # same batch size, measured in the rounds of that concurrency
    for protocol, runs in (("rest", r["runs"]), ("grpc", r["grpc_runs"])):
        ratios = r["issue23"][protocol]
        for i, c in ((0, 1), (-1, 32)):
            rate = runs[i]["requests_per_s"]
            assert runs[i]["concurrency"] == c
            assert ratios[f"c{c}_over_tf_b{c}"] == pytest.approx(
                rate / r["raw_by_concurrency"][c][c])
            assert ratios[f"c{c}_over_litert_b{c}"] == pytest.approx(
                rate / lite["raw_by_concurrency"][c][c])
    assert r["issue23"]["rest"]["c32_over_tf_b32"] == pytest.approx(r["ratio_c32"])
    assert r["issue23"]["rest"]["c1_over_tf_b1"] == pytest.approx(r["ratio_c1"])
    text = "\n".join(bench_serve.report_serving(r))
    i23 = r["issue23"]
    for needle in ("Concurrency 1 / raw batch 1", "Concurrency 32 / raw batch 32",
                   "Serving over gRPC", "gRPC / REST at concurrency 32 = ",
                   f"against {r['c32_raw_cpu_ms_per_image']:.2f} ms per image",
                   f"Server: --runtime auto, ran on {r['server_runtime']['ran']}",
                   f"LiteRT's interpreter (float32 conversion, one interpreter, "
                   f"{lite['threads']} threads): batch 1 {lite['raw'][1]:.1f}",
                   f"REST concurrency 32 / TF raw batch 32 = {i23['rest']['c32_over_tf_b32']:.2f}"
                   f" (target >= 1.3",
                   f"/ LiteRT raw batch 32 = {i23['rest']['c32_over_litert_b32']:.2f}",
                   f"gRPC concurrency 32 / TF raw batch 32 = {i23['grpc']['c32_over_tf_b32']:.2f}",
                   f"/ LiteRT raw batch 32 = {i23['grpc']['c32_over_litert_b32']:.2f}",
                   f"REST concurrency 1 / TF raw batch 1 = {i23['rest']['c1_over_tf_b1']:.2f}"
                   f" (target >= 1.0",
                   f"/ LiteRT raw batch 1 = {i23['rest']['c1_over_litert_b1']:.2f}",
                   f"gRPC concurrency 1 / TF raw batch 1 = {i23['grpc']['c1_over_tf_b1']:.2f}",
                   f"/ LiteRT raw batch 1 = {i23['grpc']['c1_over_litert_b1']:.2f}"):
        assert needle in text, (needle, text)
    json.dumps(r)  # --json writes it as it is


def test_serving_benchmark_says_which_runtime_the_server_ran(tmp_path):
    """`server_runtime` without a /healthz answer: the flag, auto's fallback warning on the
    server's stderr, or a checked conversion in its $TRXSFR_HOME."""
    from benchmarks import bench_serve

    class Fake:
        ready = {"status": "ok"}
        stderr = ""

        def stderr_text(self):
            return self.stderr

    served, home = Fake(), str(tmp_path)
    assert bench_serve.server_runtime(served, "tf", home)["ran"] == "tf"
    assert bench_serve.server_runtime(served, "litert", home)["ran"] == "litert"
    assert bench_serve.server_runtime(served, "auto", home)["ran"] == "unknown"
    os.makedirs(tmp_path / "litert")
    (tmp_path / "litert" / "k.json").write_text(json.dumps({"ok": True}))
    assert bench_serve.server_runtime(served, "auto", home)["ran"] == "litert"
    served.stderr = ("trxsfr: warning: model /m/1 runs on TensorFlow, not LiteRT: "
                     "its outputs differ\n")
    said = bench_serve.server_runtime(served, "auto", home)
    assert said["ran"] == "tf" and "its outputs differ" in said["how"]
    served.ready = {"status": "ok", "runtime": "litert"}
    assert bench_serve.server_runtime(served, "auto", home) == {
        "requested": "auto", "ran": "litert", "how": "its /healthz"}


def test_raw_forward_runs_the_streams_it_is_asked_for(fx):
    """`bench.raw_forward` with several streams: calls overlap, and rates and CPU per image
    come back for every batch size."""
    import threading
    import time

    from benchmarks import bench
    from trxsfr.base import extractors

    extractor = extractors.load(fx["module"])
    lock, running, most = threading.Lock(), [0], [0]

    def forward(x):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)  # long enough for the other stream's call to start meanwhile
        with lock:
            running[0] -= 1
        return extractor(x)

    images = np.random.default_rng(0).random((4, 32, 32, 3), np.float32)
    cpu = {}
    rates = bench.raw_forward(forward, images, 0.1, cpu, streams=2, batch_sizes=(4, 8))
    assert sorted(rates) == [4, 8] and all(v > 0 for v in rates.values())
    assert sorted(cpu) == [4, 8] and all(v > 0 for v in cpu.values())
    assert most[0] == 2
    most[0] = 0
    bench.raw_forward(forward, images, 0.1, streams=1, batch_sizes=(4,))
    assert most[0] == 1


def test_subprocess_figures_divide_by_the_raw_rounds_run_beside_them():
    """`label`'s figure uses the raw rounds measured beside its runs, not the in-process ones
    of minutes before; without such rounds (their step failed) it falls back to those."""
    import types

    from benchmarks import bench

    runs = [{"images": 1000, "inference_seconds": s, "wall_s": s + 4} for s in (8.0, 8.0, 9.0)]
    b = types.SimpleNamespace(raw={
        "raw_forward_rounds": [{16: 100.0, 32: 90.0}] * 2,
        "raw_forward_rounds_beside_label": [{16: 150.0, 32: 160.0}, {16: 140.0, 32: 170.0},
                                            {16: 150.0, 32: 175.0}],
        "label_folder": runs,
    })
    fig = bench.fig_label(b)
    assert fig["raw"]["raw_forward_limit"]["best_batch_size"] == 32
    assert fig["value"] == pytest.approx(125.0 / 170.0)  # medians: 125 images/s, 170 at batch 32
    assert "scaled" not in fig["note"]
    del b.raw["raw_forward_rounds_beside_label"]
    assert bench.fig_label(b)["value"] == pytest.approx(125.0 / 100.0)
    for run in runs:  # a --quick run's smaller folder says so
        run["images"] = 300
    assert "scaled: 300 images instead of 1000" in bench.fig_label(b)["note"]


def test_model_figures_come_from_the_exported_model(trained):
    """`bench` reads a retrain's model and test accuracy from what it exported."""
    from benchmarks import bench
    from trxsfr.base import contract

    base = trained["base"]
    version = bench.new_version(base, [])
    assert version == trained["version_dir"]
    with pytest.raises(RuntimeError, match="expected one new model version"):
        bench.new_version(base, contract.versions(base))
    figures = bench.model_figures(version)
    info = contract.read_info(contract.info_path(version))
    assert figures["test_accuracy"] == info.metrics["test_accuracy"]
    assert 0.5 < figures["test_accuracy"] <= 1 and figures["test_count"] > 0


@pytest.mark.slow
def test_subprocess_runs_report_through_files_and_json(fx, tmp_path):
    """`bench`'s subprocess steps: a default-flag `retrain` read through its model, the bare
    one-image script through its JSON file, one-image `label` through `--format json`; the
    bare script and `label` agree on the top class."""
    from benchmarks import bench
    from trxsfr.base import contract

    b = bench.Bench(str(tmp_path), bench.QUICK)
    b.module = fx["module"]
    info = b.retrain(fx["images"], str(tmp_path / "run"))
    assert os.path.dirname(info["version_dir"]) == str(tmp_path / "run" / "trxsfr_model")
    assert info["test_accuracy"] > 0.5 and info["wall_s"] > 0 and info["max_rss_bytes"] > 0
    image = bench.image_paths(fx["heldout"])[0]
    p, doc = b.runner.script(bench.BARE_LABEL_SCRIPT, "bare_label.py", info["version_dir"],
                             image, contract.SIGNATURE_BYTES, contract.INPUT_BYTES,
                             contract.OUTPUT_CLASSES, contract.OUTPUT_SCORES)
    labels = contract.read_info(contract.info_path(info["version_dir"])).labels
    assert p.wall_s > 0 and doc["load_s"] > 0 and doc["label"] in labels
    p = b.runner.trxsfr("label", "--model", info["version_dir"], image, "--format", "json")
    top = json.loads(p.check().out)["predictions"][0]["top_k"][0]
    assert top["label"] == doc["label"]
    assert top["score"] == pytest.approx(doc["score"], abs=1e-4)


@pytest.mark.slow
def test_tflite_table_measures_every_mode(trained, fx, tmp_path):
    """`bench_serve --tflite-table` on the fixture model: each mode converted through the CLI,
    its mode read back from its metadata, accuracy and latency measured."""
    from benchmarks import bench_serve

    paths = {"version": trained["version_dir"], "work": str(tmp_path), "images": fx["images"],
             "heldout": fx["heldout"]}
    rows = bench_serve.tflite_table(paths, runs=2)
    assert [r["variant"] for r in rows] == ["float SavedModel"] + [
        f"tflite {m}" for m in bench_serve.QUANTIZE_MODES]
    count = sum(len(files) for files in _class_files(fx["heldout"]).values())
    for r in rows:
        assert r["count"] == count and r["accuracy"] > 0.5 and r["latency_ms"] > 0, r
        assert r["bytes"] > 0
    assert rows[1]["top1_agrees"] == 1.0  # "none" is the float model
    text = "\n".join(bench_serve.report_tflite(rows))
    assert "tflite int8" in text


def test_retrain_py_distortion_is_seeded_and_in_range(fx):
    """`bench_augment`'s emulation of retrain.py's per-step distortion: batches of the
    requested shape in [0, 1]; the same seeds give the same pictures."""
    from benchmarks import bench_augment

    files = [f for fs in _class_files(fx["images"]).values() for f in fs][:6]
    seeds = np.arange(12, dtype=np.int64).reshape(6, 2)
    distortion = dict(flip_left_right=True, random_crop=10.0, random_scale=10.0,
                      random_brightness=10.0)
    first = [b.numpy() for b in bench_augment.retrain_py_batches(files, (32, 32), 4, distortion,
                                                                 seeds)]
    assert [b.shape for b in first] == [(4, 32, 32, 3), (2, 32, 32, 3)]
    assert all(b.min() >= 0 and b.max() <= 1 for b in first)
    again = [b.numpy() for b in bench_augment.retrain_py_batches(files, (32, 32), 4, distortion,
                                                                 seeds)]
    np.testing.assert_array_equal(first[0], again[0])


def test_linear_reference_uses_the_split_retrain_returned(trained, fx, tmp_path):
    """`bench`'s accuracy reference is scored on the test split RetrainResult.image_set
    carries (retrain's own), on vectors from retrain's cache; its figure divides the test
    accuracy the model records by it."""
    import types

    import trxsfr
    from benchmarks import bench
    from trxsfr.base import extractors, litert
    from trxsfr.base.config import RetrainConfig

    result = trxsfr.retrain(RetrainConfig(
        image_dir=fx["images"], tfhub_module=fx["module"], bottleneck_dir=trained["cache"],
        saved_model_dir=str(tmp_path / "models"), summaries_dir="",
        how_many_training_steps=200))
    # The extractor retrain computed its vectors with (--runtime auto: LiteRT's, whose
    # conversion retrain kept in the cache), as bench.reference passes it.
    computing = litert.for_extraction(extractors.load(fx["module"]), "auto", trained["cache"])
    ref = bench.linear_reference(result.image_set, computing,
                                 trained["cache"], fx["heldout"], str(tmp_path / "heldout-cache"))
    assert ref["test_count"] == result.test_count and ref["cached_computed"] == 0
    assert ref["heldout_count"] == len(bench.image_paths(fx["heldout"]))
    assert ref["accuracy"] > 0.5 and ref["heldout_accuracy"] > 0.5
    cold = bench.model_figures(result.version_dir)
    b = types.SimpleNamespace(raw={"linear_reference": ref, "cold_retrain": [cold]})
    fig = bench.fig_accuracy(b)
    assert fig["value"] == pytest.approx(cold["test_accuracy"] / ref["accuracy"])
    assert fig["raw"]["retrain_test_count"] == result.test_count


def test_audit_benchmark_scores_what_an_audit_found(tmp_path):
    from benchmarks import bench_audit

    root = str(tmp_path / "images")
    planted = {"relabelled": [{"path": "a/1.jpg", "true": "b", "given": "a"}],
               "exact": [["a/2.jpg", "a/2_exact0.jpg"]], "near": [["b/3.jpg", "a/3_near0.jpg"]],
               "outliers": ["b/unrelated_000.png"]}
    doc = {"label_issues": [{"path": os.path.join(root, "a", "1.jpg")}],
           "duplicates": [
               {"paths": [os.path.join(root, "a", "2.jpg"), os.path.join(root, "a", "2_exact0.jpg")],
                "kind": "exact", "similarity": 1.0, "leak": True},
               {"paths": [os.path.join(root, "a", "5.jpg"), os.path.join(root, "a", "6.jpg")],
                "kind": "near", "similarity": 0.9, "leak": False}],
           "outliers": [{"path": os.path.join(root, "b", "unrelated_000.png")}],
           "out_of_fold_accuracy": 0.9}
    got = bench_audit.score(doc, root, planted)
    assert got["relabelled_in_top_20"] == 1 and got["exact_found"] == 1
    assert got["near_found"] == 0 and got["false_pairs"] == 1 and got["outliers_in_top_10"] == 1
    assert got["leaks_found"] == 1


@pytest.mark.slow
def test_object_photos_are_written_per_class(tmp_path):
    from benchmarks import bench_audit

    root = bench_audit.write_objects(str(tmp_path / "objects"), 2, seed=0, workers=1)
    assert sorted(os.listdir(root)) == sorted(bench_audit.CLASSES)
    assert all(len(os.listdir(os.path.join(root, c))) == 2 for c in bench_audit.CLASSES)


def test_issue_23_figures_divide_by_both_raw_limits_at_batch_32():
    """Cold extraction and `label` against TF's and LiteRT's raw rates of the same rounds
    (batch 32), `label`'s one-image start-up subtracted; held-out accuracy of both runtimes."""
    import types

    from benchmarks import bench

    b = types.SimpleNamespace(main_paths=["x"] * 400, raw={
        "raw_forward_rounds": [{16: 90.0, 32: 100.0}, {16: 95.0, 32: 110.0}],
        "litert_raw_forward_rounds": [{1: 50.0, 32: 180.0}, {1: 50.0, 32: 200.0}],
        "cold_extraction": [{"images_per_s": v} for v in (150.0, 160.0, 170.0)],
        "tf_cold_extraction": [{"images_per_s": 90.0}],
        "litert_conversion": {"mobilenet": {"seconds": 2.0, "runtime": "litert-ab"}},
        "raw_forward_rounds_beside_label": [{32: 100.0}, {32: 100.0}],
        "litert_raw_forward_rounds_beside_label": [{32: 190.0}, {32: 190.0}],
        "label_folder": [{"images": 300, "wall_s": w, "inference_seconds": 2.0,
                          "accuracy": 0.9, "runtime": "LiteRT"} for w in (7.0, 6.0, 6.0)],
        "label_one_image": [{"wall_s": 4.0}] * 3,
        "tf_runtime_run": {"heldout_accuracy": 0.89, "heldout_images": 300},
        "cold_retrain": [{"test_accuracy": 0.9}],
    })
    assert bench.fig_cold_vs_tf(b)["value"] == pytest.approx(160.0 / 105.0)
    assert bench.fig_cold_vs_litert(b)["value"] == pytest.approx(160.0 / 190.0)
    assert bench.fig_cold_vs_tf(b)["raw"]["tf_runtime_cold_extraction_vs_tf_raw_b32"] == \
        pytest.approx(90.0 / 105.0)
    assert bench.fig_label_vs_tf(b)["value"] == pytest.approx(300.0 / (6.0 - 4.0) / 100.0)
    assert bench.fig_label_vs_litert(b)["value"] == pytest.approx(150.0 / 190.0)
    assert bench.fig_runtime_accuracy(b)["value"] == pytest.approx(0.01)
    del b.raw["litert_raw_forward_rounds"]  # LiteRT fell back: no limit, an error not a figure
    with pytest.raises(RuntimeError, match="no raw rounds at batch 32"):
        bench.fig_cold_vs_litert(b)


def test_litert_raw_forward_measures_the_extractors_conversion(fx, tmp_path):
    from benchmarks import bench
    from trxsfr.base import extractors, litert

    lite = litert.for_extraction(extractors.load(fx["module"]), "litert", str(tmp_path))
    images = np.random.default_rng(0).random((4, 32, 32, 3), np.float32)
    cpu = {}
    rates = bench.litert_raw_forward(lite, images, 0.1, cpu, batch_sizes=(1, 4))
    assert sorted(rates) == [1, 4] and all(v > 0 for v in rates.values()) and sorted(cpu) == [1, 4]
    assert bench.litert_raw_forward(lite, images, 0.1, streams=2, batch_sizes=(4,))[4] > 0
