"""discover / split_of: pure functions, no TensorFlow."""

import os

import pytest

from trxsfr.train import dataset
from trxsfr.train.dataset import Split, split_of
from trxsfr.base.errors import DatasetError


def touch(root, rel, data=b"x"):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def test_split_is_stable_and_ignores_nohash_suffix():
    assert split_of("cat/a.jpg", 10, 10) == split_of("cat/a.jpg", 10, 10)
    for i in range(50):
        assert split_of(f"cat/x_nohash_{i}.jpg", 10, 10) == split_of("cat/x", 10, 10)


def test_split_proportions_follow_percentages():
    splits = [split_of(f"c/img{i}.jpg", 20, 30) for i in range(5000)]
    frac = {s: splits.count(s) / len(splits) for s in Split}
    assert abs(frac[Split.VALIDATION] - 0.2) < 0.03
    assert abs(frac[Split.TEST] - 0.3) < 0.03


def test_zero_percent_splits_are_empty():
    assert {split_of(f"c/{i}.jpg", 0, 20) for i in range(500)} == {Split.TRAIN, Split.TEST}
    assert {split_of(f"c/{i}.jpg", 0, 0) for i in range(100)} == {Split.TRAIN}


def test_split_does_not_depend_on_where_the_folder_lives(tmp_path):
    for root in (tmp_path / "a", tmp_path / "b" / "deeper"):
        for cls in ("x", "y"):
            for i in range(30):
                touch(root, f"{cls}/{i}.jpg")
    one = dataset.discover(str(tmp_path / "a"))
    two = dataset.discover(str(tmp_path / "b" / "deeper"))
    assert [(i.path, i.split) for i in one.items] == [(i.path, i.split) for i in two.items]


def test_adding_images_never_moves_existing_ones(tmp_path):
    for i in range(40):
        touch(tmp_path, f"a/{i}.jpg")
        touch(tmp_path, f"b/{i}.jpg")
    before = {i.path: i.split for i in dataset.discover(str(tmp_path)).items}
    for i in range(40, 400):
        touch(tmp_path, f"a/{i}.jpg")
    after = {i.path: i.split for i in dataset.discover(str(tmp_path)).items}
    assert all(after[p] == s for p, s in before.items())


def test_discover_extensions_hidden_and_system_files(tmp_path):
    for name in ("a/1.jpg", "a/2.JPG", "a/3.jpeg", "a/4.png", "a/5.gif", "a/6.BMP",
                 "a/sub/7.jpg", "b/1.jpg", "b/notes.txt", "b/scan.tiff"):
        touch(tmp_path, name)
    for name in ("a/.DS_Store", "a/Thumbs.db", "b/desktop.ini", "a/.hidden.jpg", ".git/x.jpg"):
        touch(tmp_path, name)
    s = dataset.discover(str(tmp_path))
    assert s.labels == ("a", "b")
    assert sorted(i.path for i in s.items) == sorted(
        ["a/1.jpg", "a/2.JPG", "a/3.jpeg", "a/4.png", "a/5.gif", "a/6.BMP", "a/sub/7.jpg", "b/1.jpg"])
    assert sorted(k.path for k in s.skipped) == ["b/notes.txt", "b/scan.tiff"]
    assert all("not an image type" in k.reason for k in s.skipped)


def test_check_trainable_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        dataset.discover(str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="no class folders"):
        dataset.check_trainable(dataset.discover(str(tmp_path)))
    touch(tmp_path, "only/1.jpg")
    touch(tmp_path, "empty/readme.txt")
    s = dataset.discover(str(tmp_path))
    assert s.empty_classes == ("empty",)
    with pytest.raises(DatasetError, match="at least 2 classes"):
        dataset.check_trainable(s)


def test_without_drops_failed_files_and_empty_classes(tmp_path):
    for cls in ("a", "b", "c"):
        for i in range(25):
            touch(tmp_path, f"{cls}/{i}.jpg")
    s = dataset.discover(str(tmp_path))
    failed = [dataset.Skipped(f"b/{i}.jpg", "cannot decode") for i in range(25)]
    t = s.without(failed)
    assert t.labels == ("a", "c") and t.empty_classes == ("b",)
    assert {t.labels[i.label] for i in t.items} == {"a", "c"}
    assert len(t.skipped) == 25
    assert any("b has no usable images" in n for n in dataset.warnings_of(t))


def test_few_images_warning(tmp_path):
    for i in range(5):
        touch(tmp_path, f"a/{i}.jpg")
    for i in range(30):
        touch(tmp_path, f"b/{i}.jpg")
    notes = dataset.warnings_of(dataset.discover(str(tmp_path)))
    assert len(notes) == 1 and "class a has only 5 images" in notes[0]
