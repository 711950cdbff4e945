"""discover / split_of: pure functions, no TensorFlow."""

import hashlib
import math
import os
import re
import unicodedata

import pytest

from trxsfr.base.errors import DatasetError
from trxsfr.train import dataset
from trxsfr.train.dataset import Split, split_of


def touch(root, rel, data=b"x"):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# (path relative to image_dir, validation %, testing %, split), computed once and hard-coded
# so that any change to the rule (hash, encoding, modulus, scale, thresholds, _nohash_) moves
# some of them: users' splits, and so their test accuracies, must not move between releases.
# The comment is each path's hash percentage in [0, 100].
GOLDEN_SPLITS = [
    ("daisy/5547758_eea9edfd54_n.jpg", 10, 10, Split.TRAIN),  # 68.685
    ("daisy/5547758_eea9edfd54_n.jpg", 60, 10, Split.TEST),
    ("daisy/5547758_eea9edfd54_n.jpg", 70, 0, Split.VALIDATION),
    ("roses/12240303_80d87f77a3_n.jpg", 50, 10, Split.TEST),  # 56.454
    ("cat/a.jpg", 10, 10, Split.TRAIN),  # 29.871
    ("cat/a.jpg", 0, 0, Split.TRAIN),
    ("cat/a.jpg", 30, 0, Split.VALIDATION),
    ("cat/a.jpg", 25, 5, Split.TEST),
    ("dog/puppies/2019/IMG_0001.JPG", 10, 10, Split.TRAIN),  # 99.503
    ("dog/puppies/2019/IMG_0001.JPG", 0, 99.6, Split.TEST),
    ("dog/puppies/2019/IMG_0002.JPG", 20, 5, Split.TRAIN),  # 96.652
    ("leaf/plant_12_nohash_3.png", 40, 10, Split.TEST),  # 46.343: hashed as "leaf/plant_12"
    ("leaf/plant_12_nohash_0.png", 40, 10, Split.TEST),
    ("leaf/plant_12", 40, 10, Split.TEST),
    ("leaf/plant_12.png", 40, 10, Split.TRAIN),  # 85.029
    ("café/crème brûlée.jpg", 80, 5, Split.TEST),  # 80.988 (NFC, UTF-8)
    ("猫/写真_001.jpeg", 15, 15, Split.TRAIN),  # 86.910
    ("猫/写真_001.jpeg", 87, 0, Split.VALIDATION),
    ("Ünïcödé/ß.webp", 25, 25, Split.VALIDATION),  # 20.396
    ("Ünïcödé/ß.webp", 20, 1, Split.TEST),
    ("a b/c d/e f.gif", 10, 10, Split.TEST),  # 14.956
    ("x/_nohash_.jpg", 10, 10, Split.TRAIN),  # 99.077: hashed as "x/"
    ("x/y.tar.gz.jpg", 40, 0, Split.VALIDATION),  # 36.813
    ("UPPER/Mixed.Case.BMP", 92, 1, Split.VALIDATION),  # 91.251
    ("upper/mixed.case.bmp", 92, 1, Split.TEST),  # 92.466: case matters
    ("deep/a/b/c/d/e/f/g.jpg", 5, 5, Split.TRAIN),  # 86.932
    ("deep/a/b/c/d/e/f/g.jpg", 85, 5, Split.TEST),
    ("emoji/🐱.png", 33.3, 33.3, Split.VALIDATION),  # 1.053
    ("n/1.jpg", 12.5, 12.5, Split.VALIDATION),  # 3.039
    ("n/1.jpg", 2.5, 1, Split.TEST),
]

# TF's retrain.py (create_image_lists) with hashlib, retyped here rather than imported:
# sha1(compat.as_bytes(name)) is SHA-1 of the UTF-8 bytes; MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1.
TF_MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1


def tf_percentage_hash(file_name):
    hash_name = re.sub(r"_nohash_.*$", "", file_name)
    hash_name_hashed = hashlib.sha1(hash_name.encode("utf-8")).hexdigest()
    return ((int(hash_name_hashed, 16) % (TF_MAX_NUM_IMAGES_PER_CLASS + 1))
            * (100.0 / TF_MAX_NUM_IMAGES_PER_CLASS))


def tf_which_set(file_name, validation_percentage, testing_percentage):
    percentage_hash = tf_percentage_hash(file_name)
    if percentage_hash < validation_percentage:
        return Split.VALIDATION
    if percentage_hash < testing_percentage + validation_percentage:
        return Split.TEST
    return Split.TRAIN


@pytest.mark.parametrize("path, validation, testing, split", GOLDEN_SPLITS)
def test_split_of_golden_values(path, validation, testing, split):
    assert unicodedata.is_normalized("NFC", path)  # as typed; NFD bytes would hash otherwise
    assert split_of(path, validation, testing) == split
    assert tf_which_set(path, validation, testing) == split  # and the golden values are TF's


def test_split_of_is_tf_retrain_rule_to_the_last_bit():
    # SHA-1("cat/a.jpg") = 2e77569a...c416, whose value mod 2**27 scales to this float.
    assert hashlib.sha1(b"cat/a.jpg").hexdigest() == "2e77569a96c9e1278a6d213b6fc1e7c69263c416"
    p = 29.871385022039597
    assert tf_percentage_hash("cat/a.jpg") == p
    # Thresholds one float apart from the file's value: any change to the modulus or the
    # scale (100 / (2**27 - 1), not 100 / 2**27) or a <= for < moves the file.
    assert split_of("cat/a.jpg", p, 0) == Split.TRAIN
    assert split_of("cat/a.jpg", math.nextafter(p, 101), 0) == Split.VALIDATION
    assert split_of("cat/a.jpg", p, 1e-9) == Split.TEST
    assert split_of("cat/a.jpg", 0, p) == Split.TRAIN
    for i in range(200):
        path = f"class_{i % 7}/img_{i:05d}.jpg"
        assert split_of(path, 10, 10) == tf_which_set(path, 10, 10), path


def test_names_differing_only_after_nohash_share_a_split():
    for stem in ("cat/x", "leaf/plant_12", "猫/写真"):
        names = [f"{stem}_nohash_{i}.jpg" for i in range(30)] + [f"{stem}_nohash_", stem]
        for v, t in ((10, 10), (30, 30), (0, 50)):
            assert {split_of(n, v, t) for n in names} == {split_of(stem, v, t)}, (stem, v, t)
    # The rule cuts from the first "_nohash_" to the end, in a folder name too (as TF's).
    assert split_of("a_nohash_1/b.jpg", 50, 20) == split_of("a_nohash_2/c.jpg", 50, 20)


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
