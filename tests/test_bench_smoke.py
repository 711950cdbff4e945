"""Smoke tests of the benchmarks: the MobileNet-V2 extractor `python -m benchmarks.bench` builds, and
`python -m benchmarks.bench_serve`'s serving run."""

import os

import numpy as np
import pytest


@pytest.mark.slow
def test_mobilenet_v2_fixture_gives_content_carrying_features(tmp_path):
    from trxsfr.base import extractors
    from trxsfr.mobilenet_fixture import FEATURE_DIM, build_mobilenet_v2_extractor, \
        calibration_images

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
    from trxsfr.train import dataset
    from trxsfr.base import imaging
    from trxsfr.kit import write_image_set

    def features_by_class(root, per_class, seed):
        write_image_set(root, per_class, seed=seed, size_range=(64, 96))
        out = {}
        for name in sorted(os.listdir(root)):
            files = [os.path.join(root, name, f) for f in dataset.list_files(os.path.join(root, name))]
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


def test_serving_benchmark_measures_every_figure(trained, fx):
    """`bench_serve`'s serving run, briefly, on the fixture model: each concurrency answered
    without failures, the CPU behind it accounted, and the report states each figure."""
    from trxsfr import bench_serve

    paths = {"module": fx["module"], "models": trained["base"], "heldout": fx["heldout"],
             "image_size": 32}
    r = bench_serve.bench_serving(paths, seconds=0.6, rounds=1)
    assert [run["concurrency"] for run in r["runs"]] == [1, 8, 32]
    for run in r["runs"]:
        assert run["requests"] > 0 and run["failures"] == 0, run
        assert run["server_cpu_ms_per_request"] > 0 and run["client_cpu_ms_per_request"] > 0, run
        assert 0 < run["cores_busy"] <= r["cores"] + 0.5, run
    assert r["runs"][-1]["mean_batch"] > 1  # 32 clients share forward passes
    assert r["raw"][32] > 0 and r["raw_cpu_ms_per_image"][32] > 0
    assert r["ratio_c32"] > 0 and r["c32_busy_factor"] > 0 and r["c32_cpu_factor"] > 0
    # the two factors multiply to the measured ratio, up to their measuring windows
    assert 0.6 < r["c32_busy_factor"] * r["c32_cpu_factor"] / r["ratio_c32"] < 1.6, r
    last = r["runs"][-1]  # the CPU line's own numbers give its factor
    per_request = last["server_cpu_ms_per_request"] + last["client_cpu_ms_per_request"]
    assert r["c32_raw_cpu_ms_per_image"] / per_request == pytest.approx(r["c32_cpu_factor"])
    text = "\n".join(bench_serve.report_serving(r))
    for needle in ("Concurrency 1 / raw batch 1", "Concurrency 32 / raw batch 32",
                   f"against {r['c32_raw_cpu_ms_per_image']:.2f} ms per image"):
        assert needle in text, text


def test_raw_forward_runs_the_streams_it_is_asked_for(fx):
    """`bench.raw_forward` with several streams: calls overlap, and rates and CPU per image
    come back for every batch size."""
    import threading
    import time

    from trxsfr import bench
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

    from trxsfr import bench

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
