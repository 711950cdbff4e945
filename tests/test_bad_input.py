"""Every bad input a user can plant: exit 2 and one `trxsfr: error:` line, or a clean skip.

Bad data is built in tmp_path from copies of the session fixture JPEGs; every
retrain writes its cache, models and summaries inside tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
from helpers import FAST_TRAIN, assert_bad_input, dests, run_cli

from trxsfr.base import contract

CLASSES = ("blue", "green", "red")


# ---------------------------------------------------------------- helpers

def fixture_jpegs(fx, label: str) -> list[str]:
    folder = os.path.join(fx["images"], label)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder))


def make_set(fx, root, classes=CLASSES, per_class: int = 8) -> str:
    """root/<class>/ with `per_class` copies of the fixture JPEGs of that class."""
    for label in classes:
        os.makedirs(os.path.join(root, label), exist_ok=True)
        for src in fixture_jpegs(fx, label)[:per_class]:
            shutil.copy(src, os.path.join(root, label, os.path.basename(src)))
    return str(root)


def retrain(fx, tmp_path, image_dir, *extra, module=True):
    args = ["retrain", "--image_dir", image_dir, *dests(tmp_path)]
    if module:
        args += ["--tfhub_module", fx["module"]]
    return run_cli(*args, *FAST_TRAIN, *extra)


def skipped_section(out: str) -> tuple[int, list[str]]:
    """N of 'Skipped N file(s):' and the indented lines below it."""
    lines = out.splitlines()
    heads = [i for i, line in enumerate(lines) if re.fullmatch(r"Skipped \d+ file\(s\):", line)]
    assert len(heads) == 1, out
    start = heads[0]
    n = int(re.search(r"\d+", lines[start]).group())
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        body.append(line.strip())
    return n, body


def class_counts(out: str) -> dict[str, int]:
    """Total images per class from the 'Images per class and split:' table."""
    counts = {}
    for line in out.splitlines():
        m = re.fullmatch(r"  (\S+)\s+(\d+)\s+(\d+)\s+(\d+)", line)
        if m:
            counts[m.group(1)] = sum(int(m.group(i)) for i in (2, 3, 4))
    return counts


def tree(path) -> dict[str, str]:
    """Relative file path -> sha256 of its content, for every file below `path`."""
    found = {}
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return found


# ---------------------------------------------------------------- retrain: data

def test_image_dir_missing(fx, tmp_path):
    missing = tmp_path / "no_such_dir"
    assert_bad_input(retrain(fx, tmp_path, missing), "--image_dir", missing)


def test_image_dir_empty(fx, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_bad_input(retrain(fx, tmp_path, empty), empty)


def test_single_class(fx, tmp_path):
    root = make_set(fx, tmp_path / "data", classes=("red",))
    line = assert_bad_input(retrain(fx, tmp_path, root), root)
    assert "2 classes" in line


@pytest.mark.parametrize("content", ["txt", "zero_byte_jpg"])
def test_unusable_class_beside_one_good_class(fx, tmp_path, content):
    root = make_set(fx, tmp_path / "data", classes=("red",))
    os.makedirs(os.path.join(root, "blue"))
    if content == "txt":
        with open(os.path.join(root, "blue", "notes.txt"), "w") as f:
            f.write("not an image\n")
    else:
        open(os.path.join(root, "blue", "empty.jpg"), "wb").close()
    result = retrain(fx, tmp_path, root)
    assert_bad_input(result, root)
    assert not os.path.exists(tmp_path / "models"), "no model version from a failed run"
    # The user must learn which class folder was left out, not only that one is missing.
    assert "blue" in result.err, result


@pytest.mark.parametrize("content", ["txt", "zero_byte_jpg"])
def test_unusable_class_beside_two_good_classes_is_left_out(fx, tmp_path, content):
    root = make_set(fx, tmp_path / "data", classes=("red", "green"), per_class=6)
    os.makedirs(os.path.join(root, "blue"))
    if content == "txt":
        with open(os.path.join(root, "blue", "notes.txt"), "w") as f:
            f.write("not an image\n")
    else:
        open(os.path.join(root, "blue", "empty.jpg"), "wb").close()
    result = retrain(fx, tmp_path, root)
    assert result.code == 0, result
    assert "Traceback" not in result.err
    assert re.search(r"class folder blue .*left out", result.out + result.err), result
    assert set(class_counts(result.out)) == {"green", "red"}, result
    with open(contract.labels_path(result.lines[-1])) as f:
        assert f.read().split() == ["green", "red"]


def test_percentages_leave_no_training_split(fx, tmp_path):
    result = retrain(fx, tmp_path, fx["images"],
                     "--validation_percentage", "50", "--testing_percentage", "50")
    assert_bad_input(result, "--validation_percentage", "--testing_percentage")


# ---------------------------------------------------------------- retrain: module

def test_module_path_missing(fx, tmp_path):
    missing = tmp_path / "no_module"
    assert_bad_input(retrain(fx, tmp_path, fx["images"], "--tfhub_module", missing, module=False),
                     missing)


def test_module_dir_not_a_saved_model(fx, tmp_path):
    not_model = tmp_path / "not_model"
    not_model.mkdir()
    (not_model / "README.txt").write_text("hello\n")
    line = assert_bad_input(
        retrain(fx, tmp_path, fx["images"], "--tfhub_module", not_model, module=False), not_model)
    assert "SavedModel" in line


@pytest.fixture(scope="module")
def vector_module(tmp_path_factory):
    """A SavedModel whose __call__ takes float32 [None, 4] vectors: not an image model."""
    import tensorflow as tf

    class VectorModel(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.ones((4, 3), np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.w)

    path = str(tmp_path_factory.mktemp("vector") / "module")
    tf.saved_model.save(VectorModel(), path)
    return path


@pytest.mark.parametrize("image_size", [None, "32"])
def test_module_not_an_image_feature_vector(fx, tmp_path, vector_module, image_size):
    extra = ["--tfhub_module", vector_module]
    if image_size:
        extra += ["--image_size", image_size]
    line = assert_bad_input(retrain(fx, tmp_path, fx["images"], *extra, module=False),
                            vector_module)
    # Say what is wrong with the module; do not send the user after --image_size.
    assert "feature vector" in line or "feature_vector" in line, line


def test_image_size_does_not_fit_module(fx, tmp_path):
    line = assert_bad_input(retrain(fx, tmp_path, fx["images"], "--image_size", "64"),
                            "--image_size", "64")
    assert "32x32" in line


def test_architecture_nonsense(fx, tmp_path):
    result = run_cli("retrain", "--image_dir", fx["images"], *dests(tmp_path),
                     "--architecture", "nonsense", *FAST_TRAIN)
    assert_bad_input(result, "--architecture", "nonsense")


def test_zero_training_steps(fx, tmp_path):
    result = retrain(fx, tmp_path, fx["images"], "--how_many_training_steps", "0")
    assert_bad_input(result, "--how_many_training_steps")


def test_negative_learning_rate_inside_a_sweep(fx, tmp_path):
    result = retrain(fx, tmp_path, fx["images"], "--learning_rate", "0.01,-1")
    assert_bad_input(result, "--learning_rate must be positive, got -1")


@pytest.mark.parametrize("flag, value, words", [
    ("--label_smoothing", "1", "must be in [0, 1), got 1.0"),
    ("--label_smoothing", "0,-0.1", "must be in [0, 1), got -0.1"),
    ("--dropout", "1.5", "must be in [0, 1), got 1.5"),
    ("--l2", "0.1,-1", "must be >= 0, got -1.0"),
    ("--early_stopping_patience", "-2", "must be >= 0, got -2"),
    ("--train_batch_size", "0", "must be positive, got 0"),
    ("--bottleneck_batch_size", "-1", "must be positive, got -1"),
    # NaN passes every range comparison and inf trains a model that answers NaN
    ("--learning_rate", "nan", "must be a finite number, got nan"),
    ("--learning_rate", "0.01,inf", "must be a finite number, got inf"),
    ("--l2", "nan", "must be a finite number, got nan"),
    ("--label_smoothing", "nan", "must be a finite number"),
    ("--dropout", "inf", "must be a finite number"),
    ("--fine_tune_learning_rate", "nan", "must be a finite number"),
    ("--seed", "-1", "must be >= 0, got -1"),
    ("--eval_step_interval", "0", "must be positive, got 0"),
    ("--eval_step_interval", "-3", "must be positive, got -3"),
    ("--image_size", "0", "must be positive, got 0"),
])
def test_settings_out_of_range_stop_before_any_file_is_written(fx, tmp_path, flag, value, words):
    result = retrain(fx, tmp_path, fx["images"], flag, value)
    assert_bad_input(result, flag, words)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flags, words", [
    (("--validation_percentage", "-5"), "--validation_percentage"),
    (("--testing_percentage", "150"), "--testing_percentage"),
    (("--validation_percentage", "nan"), "--validation_percentage"),
    (("--random_crop", "100"), "--random_crop"),
    (("--random_brightness", "nan"), "--random_brightness"),
    (("--flip_left_right", "--augment_copies", "0"), "--augment_copies"),
    (("--fine_tune_steps", "-1"), "--fine_tune_steps"),
    (("--architecture", "mobilenet_0.50_224"), "--architecture"),  # beside --tfhub_module
])
def test_more_settings_no_run_can_use_stop_before_any_file_is_written(fx, tmp_path, flags, words):
    result = retrain(fx, tmp_path, fx["images"], *flags)
    assert_bad_input(result, words)
    assert os.listdir(tmp_path) == []


def test_image_dir_is_a_file(fx, tmp_path):
    picture = fixture_jpegs(fx, "red")[0]
    assert_bad_input(retrain(fx, tmp_path, picture), picture)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flags, words", [
    (("--early_stopping_patience", "3"), "--early_stopping_patience needs a validation split"),
    (("--learning_rate", "0.01,0.1"), "a sweep picks by validation cross-entropy"),
])
def test_choosing_by_validation_without_a_validation_split_stops_before_any_work(
        fx, tmp_path, flags, words):
    result = retrain(fx, tmp_path, fx["images"], "--validation_percentage", "0", *flags)
    assert_bad_input(result, words, "--validation_percentage")
    assert os.listdir(tmp_path) == []  # no cache, no run folder, no model


@pytest.mark.parametrize("args, words", [
    (("export-tflite", "--model", "m", "--out", "o.tflite", "--quantize", "int4"),
     "invalid choice: 'int4'"),
    (("retrain", "--learning_rate", "abc"), "--learning_rate"),
    (("label", "--format", "xml", "x.jpg"), "invalid choice: 'xml'"),
    (("nosuch",), "invalid choice: 'nosuch'"),
])
def test_flag_syntax_errors_are_one_line_too(args, words):
    """Not argparse's usage block: the same one `trxsfr: error:` line as every other error."""
    result = run_cli(*args)
    error = assert_bad_input(result, words, "--help")
    assert result.err.strip() == error and "usage:" not in result.err


def test_library_retrain_checks_settings_like_the_cli(fx, tmp_path):
    """`trxsfr.retrain(RetrainConfig(...))` from Python gets the same one-line errors."""
    import trxsfr
    from trxsfr.base.config import RetrainConfig
    from trxsfr.base.errors import InputError

    for bad, flag in (({"dropout": 1.0}, "--dropout"), ({"l2": -0.5}, "--l2"),
                      ({"sweep": (("label_smoothing", (0.0, 2.0)),)}, "--label_smoothing"),
                      ({"learning_rate": 0.0}, "--learning_rate")):
        with pytest.raises(InputError, match=flag):
            trxsfr.retrain(RetrainConfig(image_dir=fx["images"], tfhub_module=fx["module"],
                                         bottleneck_dir=str(tmp_path / "c"),
                                         saved_model_dir=str(tmp_path / "m"),
                                         summaries_dir=str(tmp_path / "s"), **bad))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- retrain: destinations

def test_saved_model_dir_is_a_file(fx, tmp_path):
    target = tmp_path / "model_file"
    target.write_text("mine\n")
    result = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                     "--bottleneck_dir", tmp_path / "cache", "--summaries_dir", tmp_path / "runs",
                     "--saved_model_dir", target, *FAST_TRAIN)
    assert_bad_input(result, "--saved_model_dir", target)
    assert target.read_text() == "mine\n"


@pytest.mark.parametrize("flag", ["--saved_model_dir", "--bottleneck_dir", "--summaries_dir"])
def test_a_destination_inside_a_file_stops_before_any_work(fx, tmp_path, flag):
    afile = tmp_path / "afile.txt"
    afile.write_text("mine\n")
    args = {"--saved_model_dir": tmp_path / "m", "--bottleneck_dir": tmp_path / "c",
            "--summaries_dir": tmp_path / "s"}
    args[flag] = afile / "sub"
    result = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                     *[str(x) for kv in args.items() for x in kv], *FAST_TRAIN)
    assert_bad_input(result, flag, afile / "sub", f"is inside {afile}, which is a file")
    assert sorted(os.listdir(tmp_path)) == ["afile.txt"]  # not even the cache was started
    assert afile.read_text() == "mine\n"


def test_output_labels_inside_a_file_stops_before_any_work(fx, tmp_path):
    afile = tmp_path / "afile.txt"
    afile.write_text("mine\n")
    result = retrain(fx, tmp_path, fx["images"], "--output_labels", afile / "labels.txt")
    assert_bad_input(result, "--output_labels", f"{afile} is a file")
    assert sorted(os.listdir(tmp_path)) == ["afile.txt"]


def test_a_destination_that_cannot_be_created_is_one_line(fx, tmp_path):
    """No traceback when the folder cannot be made (here: procfs takes no new folders,
    not even from root; elsewhere a permission or a read-only filesystem)."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc")
    result = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                     *dests(tmp_path), "--summaries_dir", "/proc/trxsfr-test/runs", *FAST_TRAIN)
    assert_bad_input(result, "cannot create --summaries_dir /proc/trxsfr-test/runs")


def test_a_broken_cache_meta_file_is_one_line(fx, tmp_path):
    cache = tmp_path / "cache"
    first = retrain(fx, tmp_path, make_set(fx, tmp_path / "data", per_class=4))
    assert first.code == 0, first
    [meta] = list(cache.glob("*/meta.json"))
    meta.write_text("{broken")
    again = retrain(fx, tmp_path, tmp_path / "data")
    assert_bad_input(again, "unreadable meta.json", "--bottleneck_dir")


def test_output_labels_with_other_content_is_kept(fx, tmp_path):
    root = make_set(fx, tmp_path / "data", per_class=4)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    result = retrain(fx, tmp_path, root, "--output_labels", labels)
    assert_bad_input(result, "--output_labels", labels)
    assert labels.read_text() == "cat\ndog\n"
    models = tmp_path / "models"
    assert not os.path.isdir(models) or not os.listdir(models), "no version from a failed run"


# ---------------------------------------------------------------- retrain: bad files in a good set

@pytest.fixture(scope="module")
def bad_files_run(fx, tmp_path_factory):
    """One retrain over 3 good classes with broken, foreign and system files planted."""
    from PIL import Image

    tmp_path = tmp_path_factory.mktemp("bad_files")
    root = make_set(fx, tmp_path / "data", per_class=8)
    good = fixture_jpegs(fx, "red")[0]
    with open(good, "rb") as f:
        jpeg = f.read()
    with open(os.path.join(root, "red", "truncated.jpg"), "wb") as f:
        f.write(jpeg[:200])
    open(os.path.join(root, "green", "zero.jpg"), "wb").close()
    with open(os.path.join(root, "blue", "text.jpg"), "w") as f:
        f.write("this is not a JPEG\n" * 20)
    Image.open(good).save(os.path.join(root, "green", "photo.tiff"))
    for label in ("red", "blue"):
        with open(os.path.join(root, label, ".DS_Store"), "wb") as f:
            f.write(b"\0\0\0\1Bud1" + os.urandom(64))
        with open(os.path.join(root, label, "Thumbs.db"), "wb") as f:
            f.write(os.urandom(128))
    # Formats TF decodes, which must train rather than be skipped.
    src = Image.open(fixture_jpegs(fx, "blue")[-1]).convert("RGB")
    src.save(os.path.join(root, "blue", "extra.png"))
    src.save(os.path.join(root, "blue", "extra.bmp"))
    src.save(os.path.join(root, "red", "UPPER.JPG"), quality=90)
    frames = [Image.open(p).convert("RGB").resize((48, 48)) for p in fixture_jpegs(fx, "green")[-2:]]
    frames[0].save(os.path.join(root, "green", "anim.gif"), save_all=True,
                   append_images=frames[1:], duration=100, loop=0)
    src.save(os.path.join(root, "blue", "still.webp"), quality=90)
    translucent = Image.open(fixture_jpegs(fx, "red")[-1]).convert("RGBA")
    translucent.putalpha(128)  # TF decodes it only with 4 channels
    translucent.save(os.path.join(root, "red", "alpha.webp"), quality=90)
    frames[0].save(os.path.join(root, "green", "anim.webp"), save_all=True,  # TF refuses it
                   append_images=frames[1:], duration=100)
    return retrain(fx, tmp_path, root)


BAD_FILES = ["red/truncated.jpg", "green/zero.jpg", "blue/text.jpg", "green/photo.tiff",
             "green/anim.webp"]


def test_bad_files_are_skipped_named_and_counted(bad_files_run):
    result = bad_files_run
    assert result.code == 0, result
    assert "Traceback" not in result.err
    n, body = skipped_section(result.out)
    assert n == len(BAD_FILES) == len(body), result.out
    for path in BAD_FILES:
        rows = [line for line in body if line.startswith(path + ": ")]
        assert len(rows) == 1, (path, body)
        assert rows[0][len(path) + 2:].strip(), f"no reason given for {path}"
    for name in ("extra.png", "extra.bmp", "UPPER.JPG", "anim.gif", "still.webp", "alpha.webp"):
        assert name not in result.out + result.err, name
    both = (result.out + result.err).lower()
    assert ".ds_store" not in both and "thumbs.db" not in both
    assert class_counts(result.out) == {"blue": 8 + 3, "green": 8 + 1, "red": 8 + 2}, result.out
    reasons = dict(line.split(": ", 1) for line in body)
    assert reasons["green/anim.webp"].startswith("animated WebP"), reasons


def test_skip_reasons_are_plain_words(bad_files_run):
    """A reason is for the user: no TF graph-function names, op names or cut-off words."""
    _, body = skipped_section(bad_files_run.out)
    for line in body:
        reason = line.split(": ", 1)[1]
        assert "{{function_node" not in reason and "[Op:" not in reason, line


# ---------------------------------------------------------------- retrain: empty splits

def test_no_validation_split_trains_with_a_note(fx, tmp_path):
    root = make_set(fx, tmp_path / "data", per_class=10)
    result = retrain(fx, tmp_path, root, "--validation_percentage", "0",
                     "--testing_percentage", "20")
    assert result.code == 0, result
    assert any(line.startswith("Note:") and "validation" in line for line in result.lines), result
    assert "Final validation accuracy" not in result.out
    assert "Final test accuracy" in result.out


def test_no_test_split_trains_with_a_note(fx, tmp_path):
    root = make_set(fx, tmp_path / "data", per_class=10)
    result = retrain(fx, tmp_path, root, "--testing_percentage", "0")
    assert result.code == 0, result
    assert "Final test accuracy" not in result.out
    assert any(line.startswith("Note:") and "test" in line for line in result.lines), result


# ---------------------------------------------------------------- retrain: nothing lost

def test_second_run_keeps_first_version_and_summaries(fx, trained, tmp_path):
    base = tmp_path / "models"
    runs = tmp_path / "runs"
    shutil.copytree(trained["base"], base)
    shutil.copytree(trained["runs"], runs)
    (first_version,) = os.listdir(base)
    (first_run,) = os.listdir(runs)
    before_version, before_run = tree(base / first_version), tree(runs / first_run)
    assert before_version and before_run

    root = make_set(fx, tmp_path / "data", per_class=6)
    result = retrain(fx, tmp_path, root)
    assert result.code == 0, result

    assert tree(base / first_version) == before_version
    assert tree(runs / first_run) == before_run
    new_version = os.path.basename(result.lines[-1])
    assert os.path.dirname(result.lines[-1]) == str(base)
    assert int(new_version) > int(first_version)
    assert sorted(os.listdir(base)) == sorted([first_version, new_version])
    assert len(os.listdir(runs)) == 2


# ---------------------------------------------------------------- label

def label(trained, *args):
    return run_cli("label", "--model", trained["version_dir"], *args)


@pytest.mark.parametrize("kind", ["empty", "random_files", "junk_saved_model"])
def test_label_model_dir_not_a_model(trained, fx, tmp_path, kind):
    model = tmp_path / "model"
    model.mkdir()
    if kind == "random_files":
        (model / "notes.txt").write_text("hello\n")
        (model / "weights.bin").write_bytes(os.urandom(256))
        (model / "variables").mkdir()
    elif kind == "junk_saved_model":
        (model / "saved_model.pb").write_bytes(os.urandom(256))
        (model / "assets").mkdir()
        (model / "assets" / "labels.txt").write_text("a\nb\n")
    result = run_cli("label", "--model", model, fixture_jpegs(fx, "red")[0])
    assert_bad_input(result, model)


@pytest.mark.parametrize("pb, words", [(b"", "saved_model.pb is empty"),
                                       (None, "saved_model.pb holds no graph")])
def test_label_model_with_a_damaged_saved_model_pb(trained, fx, tmp_path, pb, words):
    """TF's own message for these advises a `tags=` argument of its Python API."""
    model = tmp_path / "model"
    shutil.copytree(trained["version_dir"], model)
    if pb is None:  # a valid, empty SavedModel message: zero MetaGraphs
        from tensorflow.core.protobuf import saved_model_pb2

        pb = saved_model_pb2.SavedModel().SerializeToString() or b"\x08\x01"
    (model / "saved_model.pb").write_bytes(pb)
    for command in (["label", "--model", model, fixture_jpegs(fx, "red")[0]], ["info", model]):
        error = assert_bad_input(run_cli(*command), model, words)
        assert "tags=" not in error


def test_label_model_with_an_edited_trxsfr_json(trained, fx, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained["version_dir"], model)
    meta = pathlib.Path(contract.info_path(model))
    for text, words in (("{broken", "is not readable JSON"), ("[1, 2]", "must hold a JSON object")):
        meta.write_text(text)
        result = run_cli("label", "--model", model, fixture_jpegs(fx, "red")[0])
        assert_bad_input(result, meta, words, "export the model again")


@pytest.mark.parametrize("flags, words", [
    (("--top_k", "0"), "--top_k"),
    (("--batch_size", "-2"), "--batch_size"),
    (("--min_accuracy", "nan"), "--min_accuracy"),
])
def test_label_settings_no_run_can_use(trained, fx, flags, words):
    assert_bad_input(label(trained, *flags, fixture_jpegs(fx, "red")[0]), words)


def test_label_without_inputs(trained):
    assert_bad_input(label(trained), "nothing to label")


def test_other_commands_settings_no_run_can_use(trained, fx, tmp_path):
    picture = fixture_jpegs(fx, "red")[0]
    assert_bad_input(run_cli("explain", "--model", trained["base"], "--out", tmp_path / "why",
                             "--batch_size", "-1", picture), "--batch_size")
    assert_bad_input(run_cli("fixtures", tmp_path / "kit", "--per_class", "0"), "--per_class")
    assert_bad_input(run_cli("report", tmp_path / "run.json", "--out", tmp_path / "r.html",
                             "--thumbnails", "-1"), "--thumbnails")
    assert sorted(os.listdir(tmp_path)) == []


def test_inputs_that_are_not_what_the_command_takes(trained, fx, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert_bad_input(label(trained, text), "no image files in", text)
    assert_bad_input(run_cli("explain", "--model", trained["base"], "--out", tmp_path / "why",
                             fx["heldout"]), fx["heldout"], "is not a file")
    a_list = tmp_path / "list.json"
    a_list.write_text("[1]")
    assert_bad_input(run_cli("report", a_list, "--out", tmp_path / "r.html"),
                     "expected a JSON object")
    (tmp_path / "taken.html").mkdir()
    assert_bad_input(run_cli("report", a_list, "--out", tmp_path / "taken.html"),
                     "taken.html already exists")
    assert_bad_input(run_cli("fixtures", tmp_path), tmp_path, "is not an empty directory")
    assert sorted(os.listdir(tmp_path)) == ["list.json", "notes.txt", "taken.html"]


def test_label_labels_file_is_a_folder(trained, fx, tmp_path):
    result = label(trained, "--labels", tmp_path, fixture_jpegs(fx, "red")[0])
    assert_bad_input(result, "--labels", "is a folder")


def test_model_given_as_a_picture(trained, fx):
    """label and info take a SavedModel dir or a .tflite file; a JPEG in its place says so."""
    picture = fixture_jpegs(fx, "red")[0]
    for command in (["label", "--model", picture, picture], ["info", picture]):
        assert_bad_input(run_cli(*command), picture, "not a .tflite", "version dir")


def test_label_model_missing(fx, tmp_path):
    missing = tmp_path / "no_model"
    result = run_cli("label", "--model", missing, fixture_jpegs(fx, "red")[0])
    assert_bad_input(result, missing)


def test_label_empty_input_folder(trained, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_bad_input(label(trained, empty), empty)


def test_label_input_missing(trained, tmp_path):
    missing = tmp_path / "nothing.jpg"
    assert_bad_input(label(trained, missing), missing)


def test_label_min_accuracy_without_labelled_images_stops_before_labelling(trained, fx, tmp_path,
                                                                          monkeypatch):
    """Loose files cannot be scored against a gate: said before any image is labelled, and a
    folder whose labelled images all fail to decode is refused naming one of them."""
    from trxsfr.use.classifier import Classifier

    real_predict_paths = Classifier.predict_paths

    def not_now(*args, **kwargs):
        raise AssertionError("images were labelled before the missing evaluation set was found")

    monkeypatch.setattr(Classifier, "predict_paths", not_now)
    result = label(trained, fixture_jpegs(fx, "red")[0], "--min_accuracy", "0.9")
    assert_bad_input(result, "--min_accuracy needs an evaluation set")
    assert result.out == ""
    monkeypatch.setattr(Classifier, "predict_paths", real_predict_paths)
    broken = tmp_path / "set" / "red"
    broken.mkdir(parents=True)
    (broken / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = label(trained, tmp_path / "set", "--min_accuracy", "0.9")
    assert_bad_input(result, "--min_accuracy needs an evaluation set", "could be read",
                     "a.jpg: ")


def test_label_min_accuracy_out_of_range(trained, fx):
    result = label(trained, fx["heldout"], "--min_accuracy", "5")
    assert_bad_input(result, "--min_accuracy")


def test_label_unknown_subfolder_not_evaluated(trained, fx, tmp_path):
    heldout = tmp_path / "heldout"
    shutil.copytree(fx["heldout"], heldout)
    os.makedirs(heldout / "cats")
    for src in fixture_jpegs(fx, "red")[:3]:
        shutil.copy(src, heldout / "cats" / os.path.basename(src))
    known = sum(len(os.listdir(heldout / c)) for c in CLASSES)

    result = label(trained, heldout)
    assert result.code == 0, result
    assert "Traceback" not in result.err
    assert any(line.startswith("not evaluated:") and str(heldout / "cats") in line
               for line in result.lines), result.out
    (accuracy,) = [line for line in result.lines if line.startswith("Accuracy = ")]
    assert f"(N={known})" in accuracy, (accuracy, known)
    assert f"Images: {known} labelled" in result.out
    cats = os.path.join(str(heldout / "cats"), "")
    assert cats not in "\n".join(
        line for line in result.lines if not line.startswith("not evaluated:")), result.out


def test_label_broken_jpeg_is_skipped(trained, fx, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in fixture_jpegs(fx, "green")[:3]:
        shutil.copy(src, folder / os.path.basename(src))
    with open(fixture_jpegs(fx, "green")[0], "rb") as f:
        (folder / "broken.jpg").write_bytes(f.read()[:200])

    result = label(trained, folder)
    assert result.code == 0, result
    assert "Traceback" not in result.err
    broken = str(folder / "broken.jpg")
    assert any(line.startswith(f"skipped: {broken}: ") for line in result.lines), result.out
    assert "Images: 3 labelled, 1 skipped" in result.out
