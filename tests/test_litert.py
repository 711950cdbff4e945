"""The LiteRT runtime (`--runtime auto|tf|litert`): conversions that match TensorFlow, the
fallback when they cannot, bit-identical reruns per runtime, and `label`/`serve` on both."""

import json
import logging
import os

import numpy as np
import pytest
from helpers import FAST_TRAIN, assert_bad_input, dests, exported_variables, run_cli

from trxsfr.base import litert


def _tree(path):
    """(relative path, size, mtime) of every file under `path`."""
    out = []
    for root, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(root, name))
            out.append((os.path.relpath(os.path.join(root, name), path), st.st_size,
                        st.st_mtime_ns))
    return sorted(out)


def _image_paths(root):
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs)


def _litert_log(caplog):
    return [r for r in caplog.records if r.name == "trxsfr.base.litert"]


def test_an_in_process_cli_run_leaves_trxsfr_logging_as_it_found_it(tmp_path, caplog):
    """`cli.main` logs to the stderr of its run only: afterwards the `trxsfr` logger's records
    reach pytest's capture again (the caplog tests below rely on it, whatever ran before)."""
    logger = logging.getLogger("trxsfr")
    before = logger.handlers[:], logger.level, logger.propagate
    r = run_cli("retrain", "--image_dir", tmp_path / "missing")
    assert r.code == 2, r
    assert (logger.handlers[:], logger.level, logger.propagate) == before
    caplog.set_level(logging.INFO, logger="trxsfr")
    logging.getLogger("trxsfr.base.litert").info("seen")
    assert [r.getMessage() for r in _litert_log(caplog)] == ["seen"]


@pytest.fixture(scope="module")
def extractor(fx):
    from trxsfr.base import extractors

    return extractors.load(fx["module"])


def test_litert_vectors_match_tensorflow_for_the_fixture_extractor(extractor, fx, tmp_path,
                                                                    caplog):
    from trxsfr.train import cache

    caplog.set_level(logging.INFO, logger="trxsfr")
    lite = litert.for_extraction(extractor, "auto", str(tmp_path / "cache"))
    assert lite.runtime.startswith("litert-") and lite.fn is not extractor.fn
    assert [r.getMessage() for r in _litert_log(caplog)][0].startswith(
        f"extractor {fx['module']} runs on LiteRT (converted in ")
    (tflite,) = [n for n in os.listdir(tmp_path / "cache" / "litert") if n.endswith(".tflite")]
    verdict = json.loads((tmp_path / "cache" / "litert" / tflite.replace(".tflite", ".json"))
                         .read_text())
    assert verdict["ok"] and verdict["relative_error"] <= litert.TOLERANCE

    paths = _image_paths(fx["heldout"])
    vectors = {}
    for e in (extractor, lite):
        store = cache.store_for(str(tmp_path / "cache"), e)
        vectors[e.runtime] = cache.ensure(paths, e, store, 8).features
        store.close()
    tf_vectors, lite_vectors = vectors["tf"], vectors[lite.runtime]
    assert lite_vectors.shape == tf_vectors.shape == (len(paths), extractor.dim)
    assert litert.relative_error(tf_vectors, lite_vectors) <= litert.TOLERANCE

    # The runtimes' vectors live in stores of their own; TF's keeps its old key.
    stores = {}
    for name in os.listdir(tmp_path / "cache"):
        meta = tmp_path / "cache" / name / "meta.json"
        if meta.exists():
            stores[json.loads(meta.read_text())["runtime"]] = name
    assert set(stores) == {"tf", lite.runtime}

    # Cached: the second run converts nothing and says so.
    caplog.clear()
    again = litert.for_extraction(extractor, "auto", str(tmp_path / "cache"))
    assert again.runtime == lite.runtime
    assert "its cached conversion" in _litert_log(caplog)[0].getMessage()


def test_tf_runtime_is_the_extractor_itself(extractor, tmp_path):
    assert litert.for_extraction(extractor, "tf", str(tmp_path)) is extractor
    assert not (tmp_path / "litert").exists()


def test_a_failed_conversion_falls_back_with_one_line_and_is_not_tried_again(
        extractor, tmp_path, monkeypatch, caplog):
    calls = []

    def broken(*args):
        calls.append(1)
        raise litert.ConversionError("the TFLite converter failed: op Frobnicate is not "
                                     "supported")

    monkeypatch.setattr(litert, "convert", broken)
    caplog.set_level(logging.INFO, logger="trxsfr")
    assert litert.for_extraction(extractor, "auto", str(tmp_path)) is extractor
    (line,) = _litert_log(caplog)
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (f"extractor {extractor.handle} runs on TensorFlow, not LiteRT: "
                                 f"the TFLite converter failed: op Frobnicate is not supported")
    caplog.clear()
    assert litert.for_extraction(extractor, "auto", str(tmp_path)) is extractor
    assert len(calls) == 1  # the verdict is kept: never paid twice
    (line,) = _litert_log(caplog)
    assert "op Frobnicate is not supported (found earlier)" in line.getMessage()
    with pytest.raises(litert.ModelError, match="--runtime litert: extractor .* cannot run on "
                                                "LiteRT: the TFLite converter failed"):
        litert.for_extraction(extractor, "litert", str(tmp_path))


def test_outputs_that_differ_from_tensorflow_are_not_used(extractor, tmp_path, monkeypatch,
                                                          caplog):
    """A conversion that runs but computes something else (here: TF's reference scaled by
    1.01) fails the check and is never used."""
    prepare = litert.prepare

    def with_other_reference(what, key, conversions, runtime, to_convert, reference, size):
        return prepare(what, key, conversions, runtime, to_convert,
                       lambda x: 1.01 * reference(x), size)

    monkeypatch.setattr(litert, "prepare", with_other_reference)
    caplog.set_level(logging.INFO, logger="trxsfr")
    assert litert.for_extraction(extractor, "auto", str(tmp_path)) is extractor
    (line,) = _litert_log(caplog)
    assert "its outputs differ from TensorFlow's by 0.0099 relative (tolerance 0.0001)" \
        in line.getMessage()
    assert not [n for n in os.listdir(tmp_path / "litert") if n.endswith(".tflite")]


def test_a_damaged_cached_conversion_is_made_again(extractor, tmp_path):
    first = litert.for_extraction(extractor, "auto", str(tmp_path))
    (tflite,) = [p for p in (tmp_path / "litert").iterdir() if p.suffix == ".tflite"]
    tflite.write_bytes(tflite.read_bytes()[:100])  # not what its verdict judged
    again = litert.for_extraction(extractor, "auto", str(tmp_path))
    assert again.runtime == first.runtime  # the same bytes again, so the same store
    assert litert.relative_error(extractor.features(litert.probe_images((32, 32))),
                                 again.features(litert.probe_images((32, 32)))) <= 1e-4


def test_a_pipeline_worker_runs_the_conversion_the_driver_checked(extractor, tmp_path):
    """`extract`'s workers get a Conversion (picklable) naming the kept `.tflite`; one that is
    not there as it was checked is a one-line error, not another network."""
    import pickle

    from trxsfr.base.errors import ModelError

    assert litert.extraction_conversion(extractor, str(tmp_path)) is None  # TensorFlow's
    lite = litert.for_extraction(extractor, "litert", str(tmp_path))
    conversion = pickle.loads(pickle.dumps(litert.extraction_conversion(lite, str(tmp_path))))
    assert lite.runtime == f"litert-{conversion.sha256[:16]}"
    images = litert.probe_images((32, 32))
    np.testing.assert_array_equal(conversion.load()(images), lite.features(images))
    tflite = tmp_path / "litert" / f"{conversion.key}.tflite"
    tflite.write_bytes(tflite.read_bytes()[:100])
    with pytest.raises(ModelError, match="is not in .* as it was checked"):
        conversion.load()
    with pytest.raises(ModelError, match="cannot keep the LiteRT conversion of extractor"):
        litert.extraction_conversion(lite, str(tmp_path))


def test_interpreter_pool_runs_calls_at_once_and_any_batch_size(extractor, tmp_path):
    import concurrent.futures

    lite = litert.for_extraction(extractor, "litert", str(tmp_path))
    pool = lite.fn
    images = litert.probe_images((32, 32), n=7, seed=3)
    want = extractor.features(images)
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        outs = list(ex.map(lambda n: pool(images[:n]), [7, 1, 3, 7, 2, 5]))
    for n, out in zip([7, 1, 3, 7, 2, 5], outs):
        assert out.shape == (n, extractor.dim)
        assert litert.relative_error(want[:n], out) <= litert.TOLERANCE
    assert 1 <= pool.size <= 3


def test_runtime_settings_are_checked():
    from trxsfr.base.config import (AuditConfig, ExtractConfig, LabelConfig, RetrainConfig,
                                    ServeConfig)
    from trxsfr.base.errors import InputError

    for config in (RetrainConfig(image_dir="x", runtime="gpu"),
                   LabelConfig(inputs=("x",), runtime="gpu"),
                   ServeConfig(model_base_path="x", runtime="gpu"),
                   ExtractConfig(image_dir="x", runtime="gpu"),
                   AuditConfig(image_dir="x", runtime="gpu")):
        with pytest.raises(InputError, match="--runtime must be one of auto, tf, litert, "
                                             "got 'gpu'"):
            config.check()
    # Every command that computes bottlenecks decides as retrain does, so they share a store.
    assert RetrainConfig.runtime == LabelConfig.runtime == ServeConfig.runtime == "auto"
    assert ExtractConfig.runtime == AuditConfig.runtime == RetrainConfig.runtime


@pytest.mark.parametrize("command", ["retrain", "label", "serve", "extract", "audit"])
def test_runtime_flag_takes_only_known_runtimes(command, tmp_path):
    args = {"retrain": ["--image_dir", tmp_path], "label": [tmp_path],
            "serve": ["--model_base_path", tmp_path], "extract": ["--image_dir", tmp_path],
            "audit": ["--image_dir", tmp_path]}[command]
    r = run_cli(command, *args, "--runtime", "gpu")
    assert r.code == 2 and "argument --runtime: invalid choice: 'gpu'" in r.err, r
    assert "Traceback" not in r.err


def test_retrain_forced_conversion_failure_auto_falls_back_litert_is_an_error(
        fx, tmp_path, monkeypatch):
    def broken(*args):
        raise litert.ConversionError("the TFLite converter failed: planted")

    monkeypatch.setattr(litert, "convert", broken)
    r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                *dests(tmp_path / "litert"), "--runtime", "litert", *FAST_TRAIN)
    assert_bad_input(r, "--runtime litert: extractor", "cannot run on LiteRT", "planted")
    assert not (tmp_path / "litert" / "models").exists()
    r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                *dests(tmp_path / "auto"), *FAST_TRAIN)
    assert r.code == 0, r
    lines = [line for line in r.err.splitlines() if "LiteRT" in line]
    assert lines == [f"trxsfr: warning: extractor {fx['module']} runs on TensorFlow, not "
                     f"LiteRT: the TFLite converter failed: planted"], r.err


def test_same_runtime_gives_bit_identical_vectors_and_weights(fx, tmp_path):
    """Two cold runs per runtime into fresh caches: identical vectors and weights each; the
    runtimes' weights agree within float rounding, and their test accuracy is the same."""
    from trxsfr.base import extractors
    from trxsfr.train import cache

    weights, vectors = {}, {}
    for runtime in ("litert", "tf"):
        for run in (0, 1):
            work = tmp_path / f"{runtime}-{run}"
            r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                        *dests(work), "--runtime", runtime, *FAST_TRAIN)
            assert r.code == 0, r
            weights[runtime, run] = exported_variables(r.lines[-1])
            computing = litert.for_extraction(extractors.load(fx["module"]), runtime,
                                              str(work / "cache"))
            store = cache.store_for(str(work / "cache"), computing)
            got = cache.ensure(_image_paths(fx["images"]), computing, store, 8)
            store.close()
            assert got.computed == 0  # retrain cached them in this runtime's store
            vectors[runtime, run] = got.features
    for runtime in ("litert", "tf"):
        assert np.array_equal(vectors[runtime, 0], vectors[runtime, 1])
        for a, b in zip(weights[runtime, 0], weights[runtime, 1]):
            assert np.array_equal(a, b)
    assert litert.relative_error(vectors["tf", 0], vectors["litert", 0]) <= litert.TOLERANCE
    for a, b in zip(weights["tf", 0], weights["litert", 0]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def _label(model, inputs, *flags):
    r = run_cli("label", "--model", model, *inputs, "--format", "json", *flags)
    assert r.code == 0, r
    return json.loads(r.out), r


def test_label_on_both_runtimes_gives_the_same_top_labels(trained, fx, trxsfr_home, caplog):
    before = _tree(trained["version_dir"])
    tf_doc, _ = _label(trained["base"], [fx["heldout"]], "--runtime", "tf")
    lite_doc, r = _label(trained["base"], [fx["heldout"]], "--runtime", "litert")
    assert "runs on LiteRT (converted in" in r.err
    assert [p["top_k"][0]["label"] for p in tf_doc["predictions"]] == \
        [p["top_k"][0]["label"] for p in lite_doc["predictions"]]
    np.testing.assert_allclose([p["probabilities"] for p in tf_doc["predictions"]],
                               [p["probabilities"] for p in lite_doc["predictions"]], atol=1e-5)
    assert lite_doc["evaluation"]["accuracy"] == tf_doc["evaluation"]["accuracy"]
    # The conversion is kept under $TRXSFR_HOME, never in the version directory.
    assert _tree(trained["version_dir"]) == before
    assert any(n.endswith(".tflite") for n in os.listdir(os.path.join(trxsfr_home, "litert")))
    # auto takes the cached conversion for any number of images
    _, r = _label(trained["base"], _image_paths(fx["heldout"])[:1])
    assert "runs on LiteRT (its cached conversion" in r.err


def test_auto_label_converts_only_when_it_pays(trained, fx, tmp_path, monkeypatch):
    from trxsfr.use import converted, models

    monkeypatch.setenv("TRXSFR_HOME", str(tmp_path / "home"))  # nothing cached
    few = _image_paths(fx["heldout"])[:3]
    clf = models.load(trained["base"], runtime="auto")
    clf.predict_paths(few)
    assert not clf.on_litert and not (tmp_path / "home" / "litert").exists()
    monkeypatch.setattr(converted, "AUTO_CONVERT_MIN_IMAGES", 3)
    clf = models.load(trained["base"], runtime="auto")
    preds = clf.predict_paths(few)
    assert clf.on_litert and len(preds.ok) == 3
    assert "LiteRT" in clf.runtime and clf.load_seconds > 0


def test_runtime_that_cannot_run_a_format_is_a_one_line_error(trained, tmp_path):
    r = run_cli("export-tflite", "--model", trained["base"], "--out", tmp_path / "m.tflite",
                "--quiet")
    assert r.code == 0, r
    r = run_cli("label", "--model", tmp_path / "m.tflite", "--runtime", "tf", tmp_path)
    assert_bad_input(r, "--runtime tf:", "m.tflite is a .tflite, which only LiteRT runs")
    (tmp_path / "graph.pb").write_bytes(b"")
    r = run_cli("label", "--model", tmp_path / "graph.pb", "--runtime", "litert", tmp_path)
    assert_bad_input(r, "--runtime litert:", "graph.pb is a frozen graph, which only "
                                             "TensorFlow runs")


def test_serve_versions_on_both_runtimes_agree(trained, fx):
    from trxsfr.serve.rest import Encoded
    from trxsfr.serve.versions import load_version

    base, version = os.path.split(trained["version_dir"])
    data = []
    for f in _image_paths(fx["heldout"])[::4]:
        with open(f, "rb") as fh:
            data.append(Encoded(fh.read(), "image", "JPEG"))
    out = {}
    for runtime in ("tf", "litert"):
        lv = load_version(base, int(version), runtime)
        assert getattr(lv.classifier, "on_litert", False) == (runtime == "litert")
        if runtime == "litert":  # one interpreter per batch thread, each on every core
            from trxsfr.base import imaging

            assert lv.classifier.interpreters == (imaging.FORWARD_STREAMS,
                                                  imaging.usable_cores())
        out[runtime] = np.concatenate(lv.predict_batch([data[:3], data[3:]]))
        images = np.stack([litert.probe_images(lv.image_size, 2)[0]] * 2)
        out[runtime + "-images"] = lv.predict_batch([images])[0]
    np.testing.assert_allclose(out["tf"], out["litert"], atol=1e-5)
    assert np.array_equal(out["tf"].argmax(1), out["litert"].argmax(1))
    np.testing.assert_allclose(out["tf-images"], out["litert-images"], atol=1e-5)


@pytest.mark.bench
@pytest.mark.slow
def test_mobilenet_v2_fixture_converts_within_tolerance(tmp_path):
    from benchmarks.mobilenet_fixture import (
        build_mobilenet_v2_extractor,
        calibration_images,
    )
    from trxsfr.base import extractors

    extractor = extractors.load(build_mobilenet_v2_extractor(str(tmp_path / "mnv2"), 96))
    lite = litert.for_extraction(extractor, "litert", str(tmp_path / "cache"))
    images = calibration_images(8, 96, seed=5)
    assert litert.relative_error(extractor.features(images), lite.features(images)) \
        <= litert.TOLERANCE
