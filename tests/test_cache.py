"""Bottleneck cache: content keys, crash safety, resume, other modules untouched."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import FAST_TRAIN, REPO, run_cli

from trxsfr.kit import build_extractor, write_image_set
from trxsfr.train.cache import BottleneckStore


def keys(n, salt=b""):
    return [hashlib.sha256(salt + bytes([i % 256, i // 256])).digest() for i in range(n)]


def get_many(store, ks):
    out = np.empty((len(ks), store.dim), np.float32)
    return out, store.read_into(ks, out)


def segments(folder):
    return [n for n in os.listdir(folder) if n.startswith("seg-") and n.endswith(".bin")]


def test_store_roundtrip_and_reopen(tmp_path):
    store = BottleneckStore(str(tmp_path), "ns", 8)
    vecs = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    store.put_many(keys(50), vecs)
    store.close()
    again = BottleneckStore(str(tmp_path), "ns", 8)
    assert len(again) == 50
    got, bad = get_many(again, keys(50)[::-1])
    assert bad == []
    np.testing.assert_array_equal(got, vecs[::-1])


def test_torn_tail_is_ignored_and_never_appended_to(tmp_path):
    store = BottleneckStore(str(tmp_path), "ns", 8)
    store.put_many(keys(10), np.ones((10, 8), np.float32))
    store.close()
    seg = segments(tmp_path / "ns")
    assert len(seg) == 1
    with open(tmp_path / "ns" / seg[0], "ab") as f:  # a crash mid-write: half a record
        f.write(b"\x07" * 20)
    reopened = BottleneckStore(str(tmp_path), "ns", 8)
    assert len(reopened) == 10
    reopened.put_many(keys(5, b"new"), np.zeros((5, 8), np.float32))
    reopened.close()
    assert len(segments(tmp_path / "ns")) == 2  # the torn one and a new one
    final = BottleneckStore(str(tmp_path), "ns", 8)
    assert len(final) == 15
    assert get_many(final, keys(10))[1] == []


def test_lost_keys_file_tail_is_rebuilt_from_records(tmp_path):
    store = BottleneckStore(str(tmp_path), "ns", 4)
    vecs = np.arange(40, dtype=np.float32).reshape(10, 4)
    store.put_many(keys(10), vecs)
    store.close()
    (seg,) = segments(tmp_path / "ns")
    keys_file = tmp_path / "ns" / seg.replace(".bin", ".keys")
    keys_file.write_bytes(keys_file.read_bytes()[:32 * 6])  # killed between the two writes
    again = BottleneckStore(str(tmp_path), "ns", 4)
    got, bad = get_many(again, keys(10))
    assert bad == [] and np.array_equal(got, vecs)
    again.put_many(keys(3, b"x"), np.zeros((3, 4), np.float32))  # not appended to the torn pair
    again.close()
    assert len(segments(tmp_path / "ns")) == 2


def test_corrupt_record_is_detected(tmp_path):
    store = BottleneckStore(str(tmp_path), "ns", 4)
    store.put_many(keys(3), np.arange(12, dtype=np.float32).reshape(3, 4))
    store.close()
    (seg,) = segments(tmp_path / "ns")
    path = tmp_path / "ns" / seg
    data = bytearray(path.read_bytes())
    data[store.record_bytes + 40] ^= 0xFF  # flip a bit in the 2nd vector
    path.write_bytes(bytes(data))
    got, bad = get_many(BottleneckStore(str(tmp_path), "ns", 4), keys(3))
    assert bad == [1]


def test_segment_count_stays_small(tmp_path):
    store = BottleneckStore(str(tmp_path), "ns", 4)
    for run in range(20):  # 20 runs of 50 vectors: appended to one segment
        store.put_many(keys(50, bytes([run])), np.zeros((50, 4), np.float32))
        store.close()
        store = BottleneckStore(str(tmp_path), "ns", 4)
    assert len(segments(tmp_path / "ns")) == 1
    assert len(store) == 1000


def test_other_modules_entries_untouched(fx, tmp_path):
    other = build_extractor(str(tmp_path / "other_module"), seed=1)
    cache = tmp_path / "cache"
    common = ["--image_dir", fx["images"], "--bottleneck_dir", cache,
              "--saved_model_dir", tmp_path / "m", "--summaries_dir", tmp_path / "r", *FAST_TRAIN]
    assert run_cli("retrain", "--tfhub_module", fx["module"], *common).code == 0

    def stores():  # beside them: litert/, the extractors' LiteRT conversions
        return [n for n in os.listdir(cache) if n != "litert"]

    (first_ns,) = stores()

    def snapshot(ns):
        return {n: (cache / ns / n).read_bytes() for n in os.listdir(cache / ns)}

    before = snapshot(first_ns)
    r = run_cli("retrain", "--tfhub_module", other, *common)
    assert r.code == 0 and "0 reused from cache, 120 computed" in r.out, r
    assert len(stores()) == 2  # same architecture, other weights: other key
    assert snapshot(first_ns) == before


@pytest.mark.slow
def test_kill_during_extraction_then_resume(tmp_path):
    """SIGKILL a real retrain mid-extraction; the rerun computes only what is missing."""
    module = build_extractor(str(tmp_path / "slow_module"), image_size=160, channels=(64, 128, 256))
    data = write_image_set(str(tmp_path / "data"), 150, seed=3)
    total = 450

    def args(cache, models):
        return [sys.executable, "-m", "trxsfr", "retrain", "--image_dir", data,
                "--tfhub_module", module, "--bottleneck_dir", cache, "--saved_model_dir", models,
                "--summaries_dir", tmp_path / "runs", "--bottleneck_batch_size", "8",
                "--how_many_training_steps", "100", "--train_batch_size", "32", "--quiet"]

    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([str(a) for a in args(tmp_path / "cache", tmp_path / "m1")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    record = 32 + 4 * 512 + 4
    written = 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        segs = [os.path.join(r, n) for r, _, ns in os.walk(tmp_path / "cache") for n in ns
                if n.startswith("seg-") and n.endswith(".bin")]
        written = sum(os.path.getsize(s) for s in segs) // record
        if written >= 40:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "extraction finished before it could be killed"
    assert 40 <= written < total
    assert not os.path.exists(tmp_path / "m1") or not [
        n for n in os.listdir(tmp_path / "m1") if n.isdigit()]

    resumed = subprocess.run([str(a) for a in args(tmp_path / "cache", tmp_path / "m1")],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    line = next(l for l in resumed.stdout.splitlines() if l.startswith("Bottlenecks:"))
    reused = int(line.split()[1])
    computed = int(line.split(",")[1].split()[0])
    assert reused + computed == total
    assert reused >= written - 8 and computed <= total - written + 8  # at most a batch in flight
    clean = subprocess.run([str(a) for a in args(tmp_path / "cache2", tmp_path / "m2")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]

    import tensorflow as tf

    a = tf.saved_model.load(resumed.stdout.strip().splitlines()[-1])
    b = tf.saved_model.load(clean.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(a.weights.numpy(), b.weights.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.bias.numpy(), b.bias.numpy(), rtol=1e-4, atol=1e-5)


def byte_files(folder, n=5):
    """n files of 100 bytes, file i all bytes i: distinct content keys."""
    for i in range(n):
        (folder / f"{i}.jpg").write_bytes(bytes([i]) * 100)
    return [str(folder / f"{i}.jpg") for i in range(n)]


def count_hashing(monkeypatch) -> list:
    """The paths the cache reads and hashes from now on, in the list returned."""
    from trxsfr.train import cache

    calls, real = [], cache._file_key
    monkeypatch.setattr(cache, "_file_key", lambda p: calls.append(p) or real(p))
    return calls


def test_path_index_skips_rehash_and_catches_changes(tmp_path, monkeypatch):
    from trxsfr.train import cache

    files = byte_files(tmp_path)
    index = cache.PathIndex(str(tmp_path / "paths.idx"))
    first, failed = cache.content_keys(files, index)
    assert failed == [] and first[0] == hashlib.sha256(b"\x00" * 100).digest()

    calls = count_hashing(monkeypatch)
    reopened = cache.PathIndex(str(tmp_path / "paths.idx"))
    assert cache.content_keys(files, reopened)[0] == first
    assert calls == []  # nothing re-read
    st = os.stat(files[2])
    with open(files[2], "wb") as f:  # same size, new content, new mtime
        f.write(b"\xff" * 100)
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = cache.content_keys(files, reopened)[0]
    assert calls == [files[2]]
    assert again[2] == hashlib.sha256(b"\xff" * 100).digest()
    assert again[:2] == first[:2]
    with open(tmp_path / "paths.idx", "ab") as f:  # a torn line from a crash is ignored
        f.write(b"abc 12")
    assert cache.PathIndex(str(tmp_path / "paths.idx")).get(files[0], os.stat(files[0])) == first[0]


def test_key_prefetch_hashes_what_no_index_knows_and_content_keys_trusts_it(tmp_path, monkeypatch):
    from trxsfr.train import cache

    files = byte_files(tmp_path)
    root = tmp_path / "cache"
    assert cache.KeyPrefetch(str(root), files).stop(finish=True) != []  # no cache yet
    (root / "other-store").mkdir(parents=True)
    cache.content_keys(files[:2], cache.PathIndex(str(root / "other-store" / "paths.idx")))

    missing = str(tmp_path / "gone.jpg")  # left for content_keys to report
    rows = cache.KeyPrefetch(str(root), files + [missing]).stop(finish=True)
    assert sorted(path for path, _, _ in rows) == files[2:]  # 0 and 1 are indexed, unchanged
    st = os.stat(files[3])
    with open(files[3], "wb") as f:  # changed after it was hashed
        f.write(b"\xff" * 100)
    os.utime(files[3], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    (root / "store").mkdir()
    index = cache.PathIndex(str(root / "store" / "paths.idx"))
    index.add_many(rows)
    calls = count_hashing(monkeypatch)
    got, failed = cache.content_keys(files + [missing], index)
    assert sorted(calls) == [files[0], files[1], files[3]]  # prefetched 2 and 4 not re-read
    contents = [bytes([0]) * 100, bytes([1]) * 100, bytes([2]) * 100, b"\xff" * 100, bytes([4]) * 100]
    assert got[:5] == [hashlib.sha256(c).digest() for c in contents] and got[5] is None
    assert [f.path for f in failed] == [missing]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_pipeline_threads_run_at_low_priority_and_compute_threads_do_not(fx):
    from trxsfr.base import imaging

    def nice_of(tid):
        with open(f"/proc/self/task/{tid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])

    def threads():
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    out[int(tid)] = (f.read().strip(), nice_of(tid))
            except OSError:
                continue
        return out

    before = threads()
    paths = [os.path.join(r, n) for r, _, ns in os.walk(fx["images"]) for n in ns][:40]
    seen = {}
    for _ in imaging.batches(imaging.image_dataset(paths, (32, 32), 8)):
        seen.update(threads())
    new = {tid: v for tid, v in seen.items() if tid not in before}
    assert any(nice == 19 for _, nice in new.values()), new  # the decode threads
    compute = [nice for name, nice in seen.values() if name.startswith("tf_")]
    assert compute and all(nice == 0 for nice in compute), seen
    assert nice_of(threading.get_native_id()) == 0  # the consumer (forward pass) keeps its own


def test_map_batches_overlaps_forward_passes_in_order_at_normal_priority(fx):
    from trxsfr.base import imaging

    paths = sorted(os.path.join(r, n) for r, _, ns in os.walk(fx["images"]) for n in ns)[:40]
    both_running = threading.Barrier(2, timeout=20)  # passes only if two calls overlap
    calls = []

    def forward(images):
        calls.append(os.getpriority(os.PRIO_PROCESS, 0) if sys.platform.startswith("linux") else 0)
        if len(calls) <= 2:
            both_running.wait()
        return images.numpy().mean(axis=(1, 2, 3))

    ds = imaging.image_dataset(paths, (32, 32), 8)
    out = list(imaging.map_batches(ds, forward, streams=2))
    assert [list(pos) for pos, _ in out] == [list(range(i, i + 8)) for i in range(0, 40, 8)]
    expected = [float(imaging.decode_and_resize(open(p, "rb").read(), (32, 32)).numpy().mean())
                for p in paths]
    np.testing.assert_allclose(np.concatenate([v for _, v in out]), expected, rtol=1e-5)
    assert calls == [0] * 5  # forward threads are not demoted with the decode threads

    alone = threading.Barrier(2, timeout=0.5)
    with pytest.raises(threading.BrokenBarrierError):  # one stream: no second call to meet
        list(imaging.map_batches(ds, lambda images: alone.wait(), streams=1))

    def fails(images):
        raise ValueError("forward failed")

    with pytest.raises(ValueError, match="forward failed"):
        list(imaging.map_batches(ds, fails, streams=2))


def test_damaged_record_is_computed_again_also_when_shared_by_identical_files(fx, tmp_path):
    import shutil

    from trxsfr.base import extractors
    from trxsfr.train import cache

    extractor = extractors.load(fx["module"])
    red = os.path.join(fx["images"], "red")
    src = sorted(os.path.join(red, n) for n in os.listdir(red))[:4]
    files = []
    for i, p in enumerate(src + src[:1]):  # the last file has the first one's bytes
        files.append(str(tmp_path / f"{i}.jpg"))
        shutil.copyfile(p, files[-1])
    store = cache.store_for(str(tmp_path / "cache"), extractor)
    first = cache.ensure(files, extractor, store, 2)
    store.close()
    assert first.computed == 4
    (seg,) = segments(store.dir)
    with open(os.path.join(store.dir, seg), "r+b") as f:  # flip a byte of the first record's vector
        f.seek(cache.KEY_BYTES + 5)
        byte = f.read(1)
        f.seek(cache.KEY_BYTES + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    store = cache.store_for(str(tmp_path / "cache"), extractor)
    again = cache.ensure(files, extractor, store, 2)
    store.close()
    assert again.computed == 1 and again.failed == []
    np.testing.assert_allclose(again.features, first.features, rtol=1e-5, atol=1e-6)
