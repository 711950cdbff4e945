"""--tune auto: the L2 search on synthetic vectors (milliseconds to a second each), its
settings and record, and through the CLI: the default run prints and records the search,
explicit optimiser flags turn it off, tiny folders still train."""

import dataclasses
import json

import numpy as np
import pytest

from helpers import FAST_TRAIN, assert_bad_input, dests, exported_variables, run_cli
from trxsfr.base import contract
from trxsfr.base.config import OPTIMISER_SETTINGS, RetrainConfig
from trxsfr.base.errors import InputError
from trxsfr.kit import write_image_set
from trxsfr.train import tuning
from trxsfr.train.tuning import TuneOptions


def blobs(classes, per_class, dim, signal, seed, informative=None, draw=0):
    """(float32 [N, dim], int64 [N]): unit Gaussian noise plus a class centre of norm about
    `signal` in the first `informative` features (all by default), scaled and shifted as
    raw bottlenecks are. Centres depend on `seed` only, the noise on `draw` too."""
    informative = informative or dim
    centre = np.zeros((classes, dim))
    centre[:, :informative] = np.random.default_rng(seed).normal(
        0, signal / np.sqrt(informative), (classes, informative))
    rng = np.random.default_rng([seed, draw, 1])
    counts = per_class if isinstance(per_class, (list, tuple)) else [per_class] * classes
    x = np.concatenate([centre[c] + rng.normal(0, 1, (n, dim)) for c, n in enumerate(counts)])
    y = np.concatenate([np.full(n, c, np.int64) for c, n in enumerate(counts)])
    return (2 * x + 3).astype(np.float32), y


def accuracy(h, x, y):
    return float(np.mean(h.logits(x).argmax(axis=1) == y))


# ---------------------------------------------------------------- the search

def test_noisy_high_dimensional_data_gets_a_stronger_penalty_than_clean_data():
    clean_x, clean_y = blobs(3, 60, 10, signal=8.0, seed=1)
    noisy_x, noisy_y = blobs(3, 20, 200, signal=2.0, seed=2, informative=5)
    _, clean = tuning.train(clean_x, clean_y, 3)
    _, noisy = tuning.train(noisy_x, noisy_y, 3)
    assert noisy.cv_l2 >= 100 * clean.cv_l2, (noisy.tried, clean.tried)
    # The rule: the highest cross-validated accuracy, then the lowest cross entropy.
    half_decades = [10 ** (-e / 2) for e in range(13)]
    for t in (clean, noisy):
        best = max(r["cv_accuracy"] for r in t.tried)
        tied = [r for r in t.tried if r["cv_accuracy"] == best]
        assert t.chosen is min(tied, key=lambda r: r["cv_cross_entropy"])
        assert t.chosen["l2"] == t.cv_l2
        assert all(any(np.isclose(r["l2"], v) for v in half_decades) for r in t.tried)


def test_the_chosen_penalty_is_at_least_as_accurate_as_the_grids_ends():
    # Class means in 8 of 60 features, unit noise plus a strong nuisance in 3 directions:
    # the strongest penalty (about nearest class mean) is hurt by the nuisance, the
    # weakest fits the noise of 80 images; a penalty between does better than both.
    def nuisance_set(per_class, draw):
        rng = np.random.default_rng(1)
        centre = rng.normal(0, 1, (4, 60)) * (np.arange(60) < 8)
        nuisance = rng.normal(0, 1, (3, 60))
        nuisance /= np.linalg.norm(nuisance, axis=1, keepdims=True)
        noise = np.random.default_rng([1, draw])
        y = np.repeat(np.arange(4), per_class)
        x = (centre[y] + noise.normal(0, 1, (len(y), 60))
             + noise.normal(0, 4, (len(y), 3)) @ nuisance)
        return (2 * x + 3).astype(np.float32), y

    x, y = nuisance_set(20, 0)
    test_x, test_y = nuisance_set(500, 1)
    searched, t = tuning.train(x, y, 4)
    assert min(tuning.GRID) < t.cv_l2 < max(tuning.GRID)
    strong, weak = (tuning.train(x, y, 4, TuneOptions(grid=(end,)))[0]
                    for end in (max(tuning.GRID), min(tuning.GRID)))
    assert accuracy(searched.head, test_x, test_y) > accuracy(strong.head, test_x, test_y) + 0.05
    assert accuracy(searched.head, test_x, test_y) >= accuracy(weak.head, test_x, test_y)


def test_the_layer_is_scikit_learns_logistic_regression_at_the_exported_penalty(monkeypatch):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = blobs(3, 40, 20, signal=3.0, seed=4)
    default, _ = tuning.train(x, y, 3, TuneOptions(grid=(0.01,)))
    monkeypatch.setattr(tuning, "FINAL_TOLERANCE", 1e-7)  # the same problem, solved tighter
    trained, t = tuning.train(x, y, 3, TuneOptions(grid=(0.01,)))
    assert t.cv_l2 == 0.01
    assert t.l2 == pytest.approx(0.01 * (120 * 4 / 5) / 120)  # the penalty per image kept
    # sum-loss form: C * sum(cross entropy) + |w|^2 / 2, i.e. mean loss + |w|^2 / (2 C N)
    scaler = StandardScaler().fit(x)
    reference = LogisticRegression(C=1 / (2 * t.l2 * len(y)), tol=1e-9, max_iter=10_000).fit(
        scaler.transform(x), y)
    probe = blobs(3, 30, 20, signal=3.0, seed=4, draw=1)[0]
    expected = reference.predict_proba(scaler.transform(probe))
    np.testing.assert_allclose(trained.head.probabilities(probe), expected, atol=1e-4)
    np.testing.assert_allclose(default.head.probabilities(probe), expected, atol=1e-2)


def test_same_inputs_same_weights_and_the_seed_only_deals_the_folds():
    x, y = blobs(3, 30, 40, signal=3.0, seed=6)
    a, ta = tuning.train(x, y, 3, TuneOptions(seed=1))
    b, tb = tuning.train(x, y, 3, TuneOptions(seed=1))
    np.testing.assert_array_equal(a.head.weights, b.head.weights)
    np.testing.assert_array_equal(a.head.bias, b.head.bias)
    assert [r["cv_cross_entropy"] for r in ta.tried] == [r["cv_cross_entropy"] for r in tb.tried]
    _, tc = tuning.train(x, y, 3, TuneOptions(seed=2))
    assert [r["cv_cross_entropy"] for r in ta.tried] != [r["cv_cross_entropy"] for r in tc.tried]


def test_stratified_folds_deal_each_class_evenly():
    y = np.repeat(np.arange(4), [7, 3, 12, 1])
    fold = tuning.stratified_folds(y, 5, seed=0)
    np.testing.assert_array_equal(fold, tuning.stratified_folds(y, 5, seed=0))
    sizes = np.bincount(fold, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for c in range(4):
        per = np.bincount(fold[y == c], minlength=5)
        assert per.max() - per.min() <= 1


def test_two_classes_and_many_classes():
    x, y = blobs(2, 25, 16, signal=4.0, seed=7)
    trained, t = tuning.train(x, y, 2)
    assert trained.head.weights.shape == (16, 2) and t.folds == 5
    assert accuracy(trained.head, x, y) > 0.9
    x, y = blobs(60, 6, 32, signal=8.0, seed=8)
    trained, t = tuning.train(x, y, 60)
    assert trained.head.weights.shape == (32, 60) and t.search_classes == 60
    assert t.folds == 5 and accuracy(trained.head, x, y) > 0.9


def test_tiny_sets_use_fewer_folds_or_a_stated_fallback():
    x, y = blobs(3, 3, 8, signal=6.0, seed=9)  # 3 images a class
    trained, t = tuning.train(x, y, 3)
    assert t.folds == 3 and t.tried
    assert any("3 folds: the median class has 3" in n for n in t.notes)
    x, y = blobs(3, [1, 1, 4], 8, signal=6.0, seed=10)  # one class with 2+ images
    trained, t = tuning.train(x, y, 3)
    assert t.folds == 0 and not t.tried and t.cv_l2 is None
    assert t.l2 == tuning.FALLBACK_L2
    assert any("no cross-validation" in n for n in t.notes)
    assert np.all(np.isfinite(trained.head.weights))
    x, y = blobs(3, [1, 2, 2], 8, signal=6.0, seed=11)  # a single image: 2 folds still
    _, t = tuning.train(x, y, 3)
    assert t.folds == 2 and t.tried
    x, y = blobs(3, [1, 5, 5], 8, signal=6.0, seed=11)  # the median class decides
    _, t = tuning.train(x, y, 3)
    assert t.folds == 5 and t.tried


def test_balanced_class_weights_on_a_ten_to_one_set_raise_minority_recall():
    x, y = blobs(3, [300, 60, 30], 20, signal=2.5, seed=12)
    test_x, test_y = blobs(3, [300, 300, 300], 20, signal=2.5, seed=12, draw=1)
    plain, _ = tuning.train(x, y, 3)
    balanced, t = tuning.train(x, y, 3, TuneOptions(class_weight="balanced"))
    assert t.tried

    def minority_recall(h):
        pred = h.logits(test_x).argmax(axis=1)
        return float(np.mean(pred[test_y == 2] == 2))

    assert minority_recall(balanced.head) > minority_recall(plain.head) + 0.05
    with pytest.raises(ValueError, match="class_weight"):
        tuning.train(x, y, 3, TuneOptions(class_weight="inverse"))


def test_validation_rows_join_the_pool_and_views_join_only_the_fit():
    x, y = blobs(2, 40, 12, signal=4.0, seed=13)
    vx, vy = blobs(2, 10, 12, signal=4.0, seed=14)
    views = np.concatenate([x, x + 0.01])  # the images, then one distorted view of each
    trained, t = tuning.train(views, np.concatenate([y, y]), 2, validation=(vx, vy),
                              plain_rows=len(y))
    assert t.search_images == 100 and t.pool_images == 100
    assert len(trained.history) == t.fit_iterations
    assert {"step", "train_accuracy", "train_cross_entropy"} <= set(trained.history[-1])


def test_a_large_search_takes_a_seeded_sample_and_a_huge_fit_takes_steps(monkeypatch):
    x, y = blobs(30, 40, 24, signal=6.0, seed=15)
    options = TuneOptions(search_budget=24 * 5 * 8 * tuning.MIN_PER_CLASS * 8)
    trained, t = tuning.train(x, y, 30, options)
    assert t.search_classes == 8 and t.search_images < len(y)
    assert any("seeded sample" in n and "8 of 30 classes" in n for n in t.notes)
    assert t.fit == "lbfgs" and t.pool_images == len(y)
    assert accuracy(trained.head, x, y) > 0.9
    again, t2 = tuning.train(x, y, 30, options)
    np.testing.assert_array_equal(trained.head.weights, again.head.weights)
    monkeypatch.setattr(tuning, "STEPS_ROWS", 1000)
    stepped, t3 = tuning.train(x, y, 30, dataclasses.replace(options, final_budget=1000))
    assert t3.fit == "steps" and t3.l2 == t.l2 and t3.fit_iterations > 0
    assert accuracy(stepped.head, x, y) > 0.9


def test_label_smoothing_reaches_the_fit():
    x, y = blobs(3, 40, 10, signal=8.0, seed=16)
    sharp, _ = tuning.train(x, y, 3, TuneOptions(grid=(1e-4,)))
    smooth, _ = tuning.train(x, y, 3, TuneOptions(grid=(1e-4,), label_smoothing=0.3))
    assert smooth.head.probabilities(x).max() < sharp.head.probabilities(x).max()


def test_lbfgs_finds_a_quadratics_minimum():
    a = np.diag(np.linspace(1, 50, 30))
    target = np.linspace(-1, 1, 30)
    x, _, iterations = tuning.lbfgs(lambda v: (0.5 * (v - target) @ a @ (v - target),
                                               a @ (v - target)), np.zeros(30), 200, 1e-9)
    np.testing.assert_allclose(x, target, atol=1e-8)
    assert iterations < 100


# ---------------------------------------------------------------- settings and record

def test_tune_auto_yields_to_any_optimiser_setting_or_sweep():
    assert RetrainConfig().tunes
    assert not RetrainConfig(tune="off").tunes
    assert not RetrainConfig(sweep=(("label_smoothing", (0.0, 0.1)),)).tunes
    changed = {"l2": 0.01, "learning_rate": 0.1, "how_many_training_steps": 10,
               "optimizer": "sgd", "train_batch_size": 5, "dropout": 0.1,
               "early_stopping_patience": 3, "eval_step_interval": 7,
               "intermediate_store_frequency": 5}  # the codelab's graphs every N steps
    assert set(changed) == set(OPTIMISER_SETTINGS)
    for name, value in changed.items():
        assert not dataclasses.replace(RetrainConfig(), **{name: value}).tunes, name
    # Settings the search honours keep it on.
    assert RetrainConfig(class_weight="balanced", label_smoothing=0.1, seed=3).tunes


@pytest.mark.parametrize("kwargs,needle", [({"tune": "maybe"}, "--tune"),
                                           ({"tune_folds": 1}, "--tune_folds"),
                                           ({"tune_folds": 2.5}, "--tune_folds")])
def test_bad_tune_settings_are_refused_in_one_line(kwargs, needle):
    with pytest.raises(InputError, match=needle):
        RetrainConfig(image_dir="x", **kwargs).check()


def test_model_info_keeps_the_tuning_record():
    record = {"l2": 0.008, "cv_l2": 0.01, "tried": [{"l2": 0.01, "chosen": True}]}
    info = contract.ModelInfo(tuning=record)
    again = contract.ModelInfo.from_json(json.loads(info.dumps()))
    assert again.tuning == record and again.extra == {}
    assert contract.ModelInfo.from_json({"tuning": "garbled"}).tuning is None
    assert contract.ModelInfo.from_json({}).tuning is None
    assert "tuning" not in contract.ModelInfo().to_json()  # older files round-trip unchanged


# ---------------------------------------------------------------- through the CLI

def test_default_retrain_searches_prints_the_table_and_records_it(fx, tmp_path):
    r = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                *dests(tmp_path), "--quiet")
    assert r.code == 0, r
    assert "L2 penalty by 5-fold cross-validation on " in r.out
    assert "<- chosen" in r.out and "Exported layer: l2 = " in r.out
    assert "Cross-validated accuracy = " in r.out and "Final test accuracy = 100.0%" in r.out
    info = contract.read_info(contract.info_path(r.lines[-1]))
    t = info.tuning
    assert t is not None and t["folds"] == 5 and t["fit"] == "lbfgs"
    assert sum(row["chosen"] for row in t["tried"]) == 1
    assert {"l2", "cv_cross_entropy", "cv_accuracy", "iterations", "seconds"} <= set(t["tried"][0])
    assert info.config["tune"] == "auto" and info.config["l2"] == t["l2"]
    counts = info.split_counts
    assert t["pool_images"] == sum(c["train"] + c["validation"] for c in counts.values())
    assert info.metrics["cv_accuracy"] == next(row for row in t["tried"] if row["chosen"])[
        "cv_accuracy"]
    assert info.metrics["validation_accuracy"] is None  # the validation images were fitted on
    again = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                    *dests(tmp_path, "again"), "--quiet")
    assert again.code == 0, again
    for a, b in zip(exported_variables(r.lines[-1]), exported_variables(again.lines[-1])):
        np.testing.assert_array_equal(a, b)  # same data and seed, same weights


def test_explicit_l2_trains_as_before_and_tune_auto_with_it_is_refused(fx, tmp_path):
    given = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                    *dests(tmp_path, "given"), "--l2", "0", "--quiet")
    off = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                  *dests(tmp_path, "off"), "--tune", "off", "--quiet")
    assert given.code == 0 and off.code == 0, (given, off)
    assert "L2 penalty by" not in given.out and "Final validation accuracy" in given.out
    info = contract.read_info(contract.info_path(given.lines[-1]))
    assert info.tuning is None and info.config["tune"] == "off" and info.config["l2"] == 0
    for a, b in zip(exported_variables(given.lines[-1]), exported_variables(off.lines[-1])):
        np.testing.assert_array_equal(a, b)
    both = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                   *dests(tmp_path, "both"), "--tune", "auto", "--l2", "0.1", *FAST_TRAIN)
    assert_bad_input(both, "--tune auto", "--l2", "--how_many_training_steps")
    assert_bad_input(run_cli("retrain", "--image_dir", fx["images"], "--tune_folds", "1"),
                     "--tune_folds")


def test_five_images_a_class_train_with_fewer_folds(fx, tmp_path):
    images = write_image_set(str(tmp_path / "tiny"), 5, seed=21)
    r = run_cli("retrain", "--image_dir", images, "--tfhub_module", fx["module"],
                *dests(tmp_path), "--quiet")
    assert r.code == 0, r
    t = contract.read_info(contract.info_path(r.lines[-1])).tuning
    assert 2 <= t["folds"] <= 5 and t["tried"]
    assert t["pool_images"] <= 15


# ---------------------------------------------------------------- the benchmark's image sets

@pytest.mark.bench
def test_the_benchmarks_image_sets_have_the_issues_shape(tmp_path):
    from PIL import Image

    from benchmarks import tuning_sets

    specs = tuning_sets.specs()
    assert len(specs) >= 5 and len({s.picture for s in specs}) == len(specs)
    assert min(len(s.classes) for s in specs) == 2 and max(len(s.classes) for s in specs) == 20
    counts = [c for s in specs for c in s.per_class]
    assert min(counts) >= 20 and max(counts) <= 500
    assert any(max(s.per_class) == 10 * min(s.per_class) for s in specs)
    for spec in tuning_sets.specs(scale=0.02):  # 5 images a class
        root = tuning_sets.write_set(spec, str(tmp_path / spec.name))
        paths, y = tuning_sets.labelled_files(root, spec.classes)
        assert len(paths) == spec.images and sorted(set(y)) == list(range(len(spec.classes)))
        with Image.open(paths[0]) as image:
            assert image.mode == "RGB"
    train, held = tuning_sets.write_digits(str(tmp_path / "d"), str(tmp_path / "h"), scale=0.05)
    assert len(tuning_sets.labelled_files(train, [f"digit{i}" for i in range(10)])[0]) > 40
