"""Planted faults that once gave a silently wrong model: symlink loops in image folders,
decompression bombs, and a cache whose index files disagree with its records."""

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from helpers import FAST_TRAIN, REPO, run_cli, subprocess_env

from trxsfr.kit import write_image_set
from trxsfr.train.cache import KEY_BYTES, BottleneckStore

# ---------------------------------------------------------------- symlinks

def _tree(root, classes=("blue", "green", "red"), per_class=3):
    for c in classes:
        os.makedirs(root / c)
        for i in range(per_class):
            (root / c / f"{c}{i}.jpg").write_bytes(f"{c}{i}".encode())
    return root


@pytest.mark.parametrize("links, named", [
    ({"blue/loop": ".."}, "blue/loop"),  # to the image folder: every class again
    ({"green/self": "."}, "green/self"),  # to itself
    ({"red/sib": "../green"}, "red/sib"),  # into a sibling class
    ({"red/a": "b", "red/b": "a"}, "red/a"),  # a chain that ends nowhere
    ({"blue/x": "../red", "red/y": "../blue"}, "blue/x"),  # two classes into each other
])
def test_symlink_loops_count_each_real_file_once_and_are_named(tmp_path, links, named):
    from trxsfr.train import dataset

    root = _tree(tmp_path / "img")
    for link, target in links.items():
        os.symlink(target, root / link)
    found = dataset.discover(str(root), 0, 0)
    assert {label: sum(row.values()) for label, row in found.counts().items()} == {
        "blue": 3, "green": 3, "red": 3}
    reasons = {s.path: s.reason for s in found.skipped}
    assert named in reasons, reasons
    assert all("link" in r for r in reasons.values()), reasons


def test_many_loops_walk_in_bounded_time_and_links_outside_are_followed_once(tmp_path):
    from trxsfr.train import dataset

    root = _tree(tmp_path / "img")
    outside = tmp_path / "more"
    outside.mkdir()
    (outside / "m.jpg").write_bytes(b"m")
    for c in ("blue", "green", "red"):  # ten loops per class: exponential for os.walk
        for i in range(10):
            os.symlink("..", root / c / f"up{i}")
    os.symlink(str(outside), root / "red" / "more")
    os.symlink(str(outside), root / "red" / "more_again")
    found = dataset.discover(str(root), 0, 0)
    assert sum(found.counts()["red"].values()) == 4  # three files and more/m.jpg once
    assert any(s.path == "red/more_again" and "already listed" in s.reason
               for s in found.skipped)


def test_the_same_file_in_two_classes_is_a_named_conflict(tmp_path):
    from trxsfr.train import dataset

    root = _tree(tmp_path / "img")
    os.link(root / "blue" / "blue0.jpg", root / "green" / "also_blue.jpg")
    found = dataset.discover(str(root), 0, 0)
    reasons = {s.path: s.reason for s in found.skipped}
    assert "labelling conflict" in reasons["green/also_blue.jpg"]
    assert "labelling conflict" in reasons["blue/blue0.jpg"]
    assert sum(found.counts()["blue"].values()) == 2


def test_label_walks_past_loops_too(trained, tmp_path):
    held = tmp_path / "held"
    write_image_set(str(held), per_class=2, seed=9)
    os.symlink("..", held / "blue" / "loop")
    result = run_cli("label", "--model", trained["base"], str(held), "--format", "json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["evaluation"]["count"] == 6
    assert any(s["path"].endswith("blue/loop") and "loop" in s["reason"]
               for s in doc["skipped"])


# ---------------------------------------------------------------- decompression bombs

def bomb_png(width: int, height: int) -> bytes:
    """A valid grayscale PNG of zeros: about 400 KB on disk for 20000 x 20000 pixels."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    comp, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                                0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(bomb_png(20000, 20000))
    return path


def _peak_rss_of(*argv) -> tuple[int, str]:
    """(peak RSS in KiB of a child running `trxsfr argv`, its stdout)."""
    code = textwrap.dedent(f"""
        import resource, subprocess, sys
        r = subprocess.run([sys.executable, "-m", "trxsfr", *{list(argv)!r}],
                           capture_output=True, text=True)
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        print(r.returncode)
        sys.stdout.write(r.stdout)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=subprocess_env(), cwd=REPO, timeout=600).stdout.split("\n", 2)
    assert out[1] == "0", out
    return int(out[0]), out[2]


@pytest.mark.slow
def test_a_decompression_bomb_is_skipped_in_retrain_and_label_at_normal_memory(fx, bomb,
                                                                                tmp_path):
    images = tmp_path / "images"
    write_image_set(str(images), per_class=12, seed=3)
    clean = [str(images), "--tfhub_module", fx["module"], *FAST_TRAIN]
    base_rss, _ = _peak_rss_of("retrain", "--image_dir", *clean,
                               "--saved_model_dir", str(tmp_path / "m0"),
                               "--bottleneck_dir", str(tmp_path / "c0"),
                               "--summaries_dir", "")
    os.link(bomb, images / "red" / "bomb.png")
    bomb_rss, out = _peak_rss_of("retrain", "--image_dir", *clean,
                                 "--saved_model_dir", str(tmp_path / "m1"),
                                 "--bottleneck_dir", str(tmp_path / "c1"),
                                 "--summaries_dir", "")
    assert "red/bomb.png: too large to decode: 20000x20000" in out
    assert bomb_rss < 1.5 * base_rss, (bomb_rss, base_rss)
    label_rss, out = _peak_rss_of("label", "--model", str(tmp_path / "m1"), str(images))
    assert "bomb.png: too large to decode" in out
    assert label_rss < 1.5 * base_rss, (label_rss, base_rss)


def test_a_bomb_is_refused_from_its_header_alone(bomb):
    import tensorflow as tf

    from trxsfr.base import imaging

    assert imaging.header_size(tf.constant(bomb.read_bytes())).numpy().tolist() == [20000, 20000]
    reason = imaging.decode_error(str(bomb), (32, 32))
    assert reason.startswith("too large to decode: 20000x20000 = 400,000,000 pixels")
    result = run_cli("retrain", "--image_dir", "x", "--max_image_pixels", "0")
    assert result.code == 2 and "--max_image_pixels must be positive" in result.err


@pytest.mark.parametrize("fmt, mode, options", [
    ("JPEG", "RGB", {}), ("PNG", "RGB", {}), ("GIF", "P", {}), ("BMP", "RGB", {}),
    ("WEBP", "RGB", {}), ("WEBP", "RGBA", {"lossless": True}), ("WEBP", "RGB", {"lossless": True}),
    ("WEBP", "RGBA", {}),
])
def test_header_sizes_match_the_images(fmt, mode, options):
    import io

    import tensorflow as tf
    from PIL import Image

    from trxsfr.base import imaging

    for size in ((37, 23), (641, 479)):
        data = io.BytesIO()
        Image.new(mode, size).save(data, fmt, **options)
        got = imaging.header_size(tf.constant(data.getvalue())).numpy().tolist()
        assert got == [size[1], size[0]], (fmt, mode, options, size)


# ---------------------------------------------------------------- the cache's index files

def _store_with(tmp_path, n=40, dim=8):
    keys = [hashlib.sha256(bytes([i])).digest() for i in range(n)]
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    store = BottleneckStore(str(tmp_path), "ns", dim)
    store.put_many(keys, vectors)
    store.close()
    keys_file = next(p for p in (tmp_path / "ns").iterdir() if p.suffix == ".keys")
    return keys, vectors, keys_file


def _entries(raw):
    return [raw[i:i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES)]


def _removed(raw):
    e = _entries(raw)
    return b"".join(e[:7] + e[8:])


def _permuted(raw):
    e = _entries(raw)
    random.Random(1).shuffle(e)
    return b"".join(e)


def _flipped(raw):
    e = bytearray(raw)
    e[5 * KEY_BYTES + 3] ^= 0xFF
    return bytes(e)


@pytest.mark.parametrize("damage", [_removed, _permuted, _flipped])
def test_a_damaged_keys_file_never_hands_out_another_images_vector(tmp_path, damage):
    keys, vectors, keys_file = _store_with(tmp_path)
    keys_file.write_bytes(damage(keys_file.read_bytes()))
    store = BottleneckStore(str(tmp_path), "ns", 8)
    present = [k for k in keys if k in store]
    out = np.zeros((len(present), 8), np.float32)
    bad = store.read_into(present, out)
    good = [i for i in range(len(present)) if i not in bad]
    expected = vectors[[keys.index(present[i]) for i in good]]
    np.testing.assert_array_equal(out[good], expected)  # every vector read is its own
    lost = [keys.index(k) for k in keys if k not in store]  # computed again, as ensure does
    store.put_many([keys[i] for i in lost], vectors[lost])
    store.close()
    again = BottleneckStore(str(tmp_path), "ns", 8)
    out = np.zeros((len(keys), 8), np.float32)
    assert again.read_into(keys, out) == []
    np.testing.assert_array_equal(out, vectors)
    if damage is not _flipped:  # the .keys file was rebuilt from the records: nothing lost
        assert lost == []


def test_a_damaged_record_is_healed_once(tmp_path, caplog):
    keys, vectors, keys_file = _store_with(tmp_path)
    bin_file = keys_file.with_suffix(".bin")
    data = bytearray(bin_file.read_bytes())
    data[KEY_BYTES + 2] ^= 0x40  # inside the first record's vector
    bin_file.write_bytes(bytes(data))
    store = BottleneckStore(str(tmp_path), "ns", 8)
    out = np.zeros((len(keys), 8), np.float32)
    assert store.read_into(keys, out) == [0]
    store.put_many(keys[:1], vectors[:1])  # what ensure() does with a computed vector
    store.close()
    healed = BottleneckStore(str(tmp_path), "ns", 8)
    assert healed.read_into(keys, out) == []  # the new record supersedes the damaged one
    np.testing.assert_array_equal(out, vectors)


def test_path_index_lines_with_swapped_keys_are_not_trusted(tmp_path):
    from trxsfr.train.cache import PathIndex, content_keys

    files = []
    for i in range(4):
        path = tmp_path / f"{i}.bin"
        path.write_bytes(bytes([i]) * 50)
        files.append(str(path))
    index = PathIndex(str(tmp_path / "paths.idx"))
    first, _ = content_keys(files, index)
    lines = (tmp_path / "paths.idx").read_text().splitlines()
    a, b = lines[0].split(" ", 1), lines[1].split(" ", 1)
    lines[0], lines[1] = f"{b[0]} {a[1]}", f"{a[0]} {b[1]}"  # keys swapped between files
    (tmp_path / "paths.idx").write_text("\n".join(lines) + "\n")
    again, _ = content_keys(files, PathIndex(str(tmp_path / "paths.idx")))
    assert again == first


@pytest.mark.parametrize("damage", ["keys_removed", "keys_permuted", "keys_flipped",
                                    "paths_permuted"])
def test_retrain_on_a_damaged_cache_exports_the_clean_runs_model(fx, tmp_path, damage):
    from helpers import exported_variables

    common = ["--image_dir", fx["images"], "--tfhub_module", fx["module"], *FAST_TRAIN,
              "--summaries_dir", ""]
    cache = tmp_path / "cache"
    clean = run_cli("retrain", *common, "--bottleneck_dir", str(cache),
                    "--saved_model_dir", str(tmp_path / "m0"))
    assert clean.code == 0, clean.err
    store = next(p for p in cache.iterdir() if p.is_dir())
    if damage.startswith("keys"):
        keys_file = next(p for p in store.iterdir() if p.suffix == ".keys")
        raw = keys_file.read_bytes()
        keys_file.write_bytes({"keys_removed": _removed, "keys_permuted": _permuted,
                               "keys_flipped": _flipped}[damage](raw))
    else:
        lines = (store / "paths.idx").read_text().splitlines()
        heads = [line.split(" ", 1)[0] for line in lines]
        random.Random(2).shuffle(heads)
        (store / "paths.idx").write_text("".join(
            f"{h} {line.split(' ', 1)[1]}\n" for h, line in zip(heads, lines)))
    again = run_cli("retrain", *common, "--bottleneck_dir", str(cache),
                    "--saved_model_dir", str(tmp_path / "m1"))
    assert again.code == 0, again.err
    assert "Bottlenecks: 120 reused from cache, 0 computed" in again.out
    for a, b in zip(exported_variables(clean.lines[-1]), exported_variables(again.lines[-1])):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_record_is_healed_by_one_retrain_and_the_next_is_silent(fx, tmp_path):
    common = ["--image_dir", fx["images"], "--tfhub_module", fx["module"], *FAST_TRAIN,
              "--summaries_dir", "", "--bottleneck_dir", str(tmp_path / "cache")]
    assert run_cli("retrain", *common, "--saved_model_dir", str(tmp_path / "m0")).code == 0
    store = next(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    bin_file = next(p for p in store.iterdir() if p.suffix == ".bin")
    data = bytearray(bin_file.read_bytes())
    data[KEY_BYTES + 1] ^= 0x10  # the first record's vector
    bin_file.write_bytes(bytes(data))
    healing = run_cli("retrain", *common, "--saved_model_dir", str(tmp_path / "m1"))
    assert healing.code == 0 and "failed their checksum" in healing.err
    assert "Bottlenecks: 119 reused from cache, 1 computed" in healing.out
    after = run_cli("retrain", *common, "--saved_model_dir", str(tmp_path / "m2"))
    assert after.code == 0 and "checksum" not in after.err and "rebuilt" not in after.err
    assert "Bottlenecks: 120 reused from cache, 0 computed" in after.out


# ---------------------------------------------------------------- full and read-only disks

@contextlib.contextmanager
def small_disk(tmp_path, kib: int, read_only: bool = False):
    """A tmpfs of `kib` KiB (read-only if asked) at a new folder, or None where this
    process may not mount one (then the caller injects the fault at the write)."""
    mount = tmp_path / f"disk{kib}{'ro' if read_only else ''}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode:
        yield None
        return
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "cache/seg-x.bin")


def test_a_full_disk_under_the_cache_is_one_line_and_the_rerun_computes_only_the_rest(
        fx, tmp_path, monkeypatch):
    common = ["--image_dir", fx["images"], "--tfhub_module", fx["module"], *FAST_TRAIN,
              "--summaries_dir", "", "--saved_model_dir", str(tmp_path / "m")]
    # 48 KiB: the index and the extractor's LiteRT conversion (about 8 KiB) fit, the
    # vectors of 120 images do not.
    with small_disk(tmp_path, 48) as disk:
        if disk is None:
            monkeypatch.setattr(BottleneckStore, "put_many", _no_space)
            cache = tmp_path / "cache"
        else:
            cache = disk / "cache"
        full = run_cli("retrain", *common, "--bottleneck_dir", str(cache))
        assert full.code == 2, full
        assert full.err.count("\n") == 1 and "No space left on device" in full.err
        assert "free space" in full.err and "Traceback" not in full.err
        assert not (tmp_path / "m").exists() or not os.listdir(tmp_path / "m")
        monkeypatch.undo()
        if disk is not None:
            shutil.copytree(cache, tmp_path / "cache")  # what was written, on a roomy disk
    again = run_cli("retrain", *common, "--bottleneck_dir", str(tmp_path / "cache"))
    assert again.code == 0, again.err
    reused, computed = map(int, re.search(r"Bottlenecks: (\d+) reused from cache, (\d+) "
                                          r"computed", again.out).groups())
    assert reused + computed == 120 and (disk is None or reused > 0)


def test_a_full_disk_under_the_export_is_one_line_and_leaves_no_version(fx, tmp_path,
                                                                        monkeypatch):
    import tensorflow as tf

    with small_disk(tmp_path, 64) as disk:
        if disk is None:
            def no_space(*args, **kwargs):
                raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
            monkeypatch.setattr(tf.saved_model, "save", no_space)
            base = tmp_path / "models"
        else:
            base = disk / "models"
        result = run_cli("retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
                         *FAST_TRAIN, "--summaries_dir", "",
                         "--bottleneck_dir", str(tmp_path / "cache"), "--saved_model_dir",
                         str(base))
        assert result.code == 2, result
        assert result.err.count("\n") == 1 and "No space left on device" in result.err
        assert os.listdir(base) == []  # no version, no staging folder left behind


def test_a_read_only_cache_that_needs_new_vectors_is_one_line(fx, tmp_path, monkeypatch):
    common = ["--image_dir", fx["images"], "--tfhub_module", fx["module"], *FAST_TRAIN,
              "--summaries_dir", "", "--saved_model_dir", str(tmp_path / "m")]
    with small_disk(tmp_path, 64, read_only=True) as disk:
        if disk is None:
            def read_only(*args, **kwargs):
                raise OSError(errno.EROFS, "Read-only file system", "cache")
            monkeypatch.setattr(BottleneckStore, "put_many", read_only)
            cache = tmp_path / "cache"
        else:
            cache = disk
        result = run_cli("retrain", *common, "--bottleneck_dir", str(cache))
        assert result.code == 2, result
        assert result.err.count("\n") == 1 and "Read-only file system" in result.err
        assert "writable" in result.err or "Read-only" in result.err


def test_many_skipped_files_are_counted_by_reason_unless_verbose(trained, tmp_path):
    held = tmp_path / "held"
    write_image_set(str(held), per_class=2, seed=9)
    for i in range(14):
        (held / "red" / f"note{i:02d}.txt").write_text("not an image")
    (held / "blue" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    result = run_cli("label", "--model", trained["base"], str(held))
    assert result.code == 0, result.err
    summary = [line for line in result.lines if line.startswith(("skipped", "  "))]
    assert "skipped: 15 files, by reason (--verbose lists each):" in summary
    assert any(line.startswith("  14 not an image type TensorFlow decodes: ")
               and line.endswith("(11 more)") for line in summary), summary
    assert any(line.startswith("  1 not a JPEG, PNG, GIF, BMP or WebP file: ")
               and line.endswith("broken.jpg") for line in summary), summary
    verbose = run_cli("label", "--model", trained["base"], str(held), "--verbose")
    assert sum(line.startswith("skipped: ") for line in verbose.lines) == 15
