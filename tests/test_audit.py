"""`trxsfr audit`: planted faults are found, nothing is touched, bad input is one line.

One audit of a planted set (the tiny extractor on `trxsfr fixtures`' pictures with
10 relabelled images, 10 exact and 10 near duplicates, 5 noise pictures) runs once
for the module; the pure parts (blocked similarity, folds, groups) are checked on
small arrays against brute force.
"""

import hashlib
import json
import os

import numpy as np
import pytest
from helpers import assert_bad_input, run_cli

from trxsfr.base.config import AuditConfig


def _tree_digest(root):
    """{relative path: sha256} of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def planted(fx, tmp_path_factory):
    from PIL import Image

    from trxsfr import kit
    from trxsfr.train.dataset import split_of

    work = tmp_path_factory.mktemp("audit")
    images = kit.write_image_set(str(work / "images"), 50, seed=1)
    rng = np.random.default_rng(5)
    noise = []
    for k in range(5):
        path = str(work / f"noise_{k}.png")
        Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(path)
        noise.append(path)
    faults = kit.plant_faults(images, noise, seed=3, split_of=lambda rel: split_of(
        rel, AuditConfig.validation_percentage, AuditConfig.testing_percentage).value)
    before = _tree_digest(images)
    result = run_cli("audit", "--image_dir", images, "--tfhub_module", fx["module"],
                     "--bottleneck_dir", work / "cache", "--format", "json",
                     "--out", work / "audit.html", "--list", work / "review.tsv", "--quiet")
    assert result.code == 0, result
    return {"images": images, "faults": faults, "doc": json.loads(result.out), "work": work,
            "before": before, "result": result, "module": fx["module"]}


def _rel(planted, path):
    return os.path.relpath(path, planted["images"]).replace(os.sep, "/")


def test_planted_label_errors_rank_high(planted):
    issues = [_rel(planted, i["path"]) for i in planted["doc"]["label_issues"]]
    relabelled = planted["faults"]["relabelled"]
    assert sum(r["path"] in issues[:20] for r in relabelled) >= 8, issues[:20]
    first = planted["doc"]["label_issues"][0]
    assert set(first) >= {"path", "given", "suggested", "score"}
    truth = {r["path"]: r["true"] for r in relabelled}
    for issue in planted["doc"]["label_issues"]:  # the suggested class is the true one
        if _rel(planted, issue["path"]) in truth:
            assert issue["suggested"] == truth[_rel(planted, issue["path"])]
            assert issue["given"] != issue["suggested"]
    scores = [i["score"] for i in planted["doc"]["label_issues"]]
    assert scores == sorted(scores)


def test_every_exact_and_most_near_duplicates_with_few_false_pairs(planted):
    doc, faults = planted["doc"], planted["faults"]
    found = {frozenset(_rel(planted, p) for p in d["paths"]): d for d in doc["duplicates"]}
    exact = [frozenset(p) for p in faults["exact"]]
    near = [frozenset(p) for p in faults["near"]]
    assert all(p in found and found[p]["kind"] == "exact" for p in exact)
    assert sum(p in found and found[p]["kind"] == "near" for p in near) >= 8
    false = [p for p in found if p not in exact and p not in near]
    assert len(false) <= 2, false
    for d in doc["duplicates"]:
        assert len(d["paths"]) == 2 and d["kind"] in ("exact", "near")
        assert len(d["splits"]) == 2 and set(d["splits"]) <= {"train", "validation", "test"}
        assert d["leak"] == (d["splits"][0] != d["splits"][1])
        assert (d["similarity"] == 1.0) if d["kind"] == "exact" else \
            d["similarity"] >= AuditConfig.near_duplicate_similarity
    # plant_faults put every other copy into another split, two of each kind in another class
    assert sum(found[p]["leak"] for p in exact + near if p in found) >= 8
    assert sum(not found[p]["same_class"] for p in exact) == 2


def test_the_unrelated_pictures_are_the_top_outliers(planted):
    outliers = [_rel(planted, o["path"]) for o in planted["doc"]["outliers"]]
    assert set(planted["faults"]["outliers"]) <= set(outliers[:10]), outliers[:10]
    scores = [o["score"] for o in planted["doc"]["outliers"]]
    assert scores == sorted(scores, reverse=True)


def test_nothing_is_moved_and_the_page_and_list_are_written(planted):
    assert _tree_digest(planted["images"]) == planted["before"]
    page = (planted["work"] / "audit.html").read_text(encoding="utf-8")
    for section in ('id="label-issues"', 'id="duplicates"', 'id="outliers"',
                    "data:image/jpeg;base64,", 'href="file://'):
        assert section in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    rows = (planted["work"] / "review.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "kind\tpath\tdetail"
    kinds = {row.split("\t")[0] for row in rows[1:]}
    assert kinds == {"label_issue", "duplicate", "outlier"}
    assert "Review list:" in planted["result"].err and "Audit page:" in planted["result"].err


def test_a_warm_audit_decodes_no_image_and_finds_the_same(planted, monkeypatch):
    import PIL.Image

    import trxsfr

    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    config = AuditConfig(image_dir=planted["images"], tfhub_module=planted["module"],
                         bottleneck_dir=str(planted["work"] / "cache"))
    result = trxsfr.audit(config)
    assert result.computed == 0 and result.reused == planted["doc"]["images"]
    assert opened == []  # vectors and thumbnails all came from the cache
    doc = result.to_json()
    for key in ("label_issues", "duplicates", "outliers"):
        assert doc[key] == planted["doc"][key]


def test_an_audit_after_retrain_reads_its_vectors(trained, fx):
    """Both default to --runtime auto, decided the same way: the audit computes nothing."""
    import trxsfr

    result = trxsfr.audit(AuditConfig(image_dir=fx["images"], tfhub_module=fx["module"],
                                      bottleneck_dir=trained["cache"], folds=2,
                                      how_many_training_steps=50))
    assert result.computed == 0 and result.reused > 0
    assert result.to_json()["settings"]["module"]["runtime"].startswith("litert-")


def test_text_output_summarises(planted, fx):
    result = run_cli("audit", "--image_dir", planted["images"], "--tfhub_module", fx["module"],
                     "--bottleneck_dir", planted["work"] / "cache", "--top", "3", "--quiet")
    assert result.code == 0, result
    assert result.lines[0].startswith(f"Audited {planted['doc']['images']} images in 3 classes")
    assert any(line.startswith("Likely label errors:") for line in result.lines)
    assert any(line.startswith("Duplicate pairs: 10 exact") for line in result.lines)


# ---------------------------------------------------------------- bad input


def test_an_existing_output_is_refused_before_any_work(planted, tmp_path):
    taken = tmp_path / "taken.html"
    taken.write_text("mine")
    result = run_cli("audit", "--image_dir", planted["images"], "--tfhub_module",
                     planted["module"], "--bottleneck_dir", tmp_path / "cache", "--out", taken)
    assert_bad_input(result, str(taken), "already exists")
    assert taken.read_text() == "mine" and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("flag, value, needle", [
    ("--folds", "1", "--folds"), ("--near_duplicate_similarity", "1.5", "similarity"),
    ("--near_duplicate_pixel_similarity", "nan", "similarity"), ("--l2", "-1", "--l2"),
    ("--outlier_neighbours", "0", "--outlier_neighbours")])
def test_bad_settings_are_one_line(planted, tmp_path, flag, value, needle):
    result = run_cli("audit", "--image_dir", planted["images"], "--tfhub_module",
                     planted["module"], "--bottleneck_dir", tmp_path / "cache", flag, value)
    assert_bad_input(result, needle)


def test_one_class_cannot_be_audited(tmp_path, fx):
    from trxsfr import kit

    images = kit.write_image_set(str(tmp_path / "one"), 5, classes=("red",))
    result = run_cli("audit", "--image_dir", images, "--tfhub_module", fx["module"],
                     "--bottleneck_dir", tmp_path / "cache")
    assert_bad_input(result, "cannot audit", "at least 2 classes")


def test_without_cleanlab_the_error_says_what_to_install(planted, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cleanlab", None)  # import cleanlab -> ImportError
    result = run_cli("audit", "--image_dir", planted["images"], "--tfhub_module",
                     planted["module"], "--bottleneck_dir", tmp_path / "cache")
    assert_bad_input(result, "cleanlab", "trxsfr[audit]")


# ---------------------------------------------------------------- pure parts


def test_blocked_neighbourhood_equals_brute_force():
    from trxsfr.train import audit

    rng = np.random.default_rng(0)
    x = audit.centred_unit(rng.normal(size=(37, 8)).astype(np.float32))
    x[5] = x[3]  # a near twin (different content)
    content = np.arange(37)
    content[9] = content[8]  # an exact copy: neither a pair nor a neighbour
    got = audit.neighbourhood(x, content, threshold=0.5, max_pairs=1000, block=6)
    s = x @ x.T
    same = content[:, None] == content[None, :]
    s[same] = -np.inf
    want = {(i, j) for i in range(37) for j in range(i + 1, 37) if s[i, j] >= 0.5}
    assert {tuple(p) for p in got.pairs.tolist()} == want
    assert (3, 5) in want and (8, 9) not in want
    sims = got.similarities
    assert np.all(sims[:-1] >= sims[1:])  # most similar first
    capped = audit.neighbourhood(x, content, threshold=0.5, max_pairs=3, block=6)
    assert len(capped.pairs) == 3 and np.allclose(capped.similarities, sims[:3])


def test_blocked_nearest_distances_equal_brute_force():
    from trxsfr.train import audit

    rng = np.random.default_rng(1)
    x = rng.normal(size=(37, 8)).astype(np.float32)
    content = np.arange(37)
    content[9] = content[8]  # an exact copy: not a neighbour
    got = audit.nearest_distances(x, content, k=4, block=6)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    d[content[:, None] == content[None, :]] = np.inf
    np.testing.assert_allclose(got, np.sort(d, axis=1)[:, :4], rtol=1e-4, atol=1e-4)
    # Fewer others than k: the missing ones repeat the farthest found.
    few = audit.nearest_distances(x[:3], np.arange(3), k=4)
    assert few.shape == (3, 4) and np.all(few[:, 2:] == few[:, 1:2])


def test_the_outlier_distance_finds_a_foreign_group_the_cosine_missed():
    """A tight group far out along the set's own directions (as foreign pictures were to
    the random-weight MobileNet-V2): by distance it ranks first; by angle alone (the
    cosine distance the score used before) it ranks last."""
    from trxsfr.train import audit

    rng = np.random.default_rng(2)
    basis = rng.normal(size=(6, 40))
    typical = rng.normal(size=(400, 6)) @ basis + 0.05 * rng.normal(size=(400, 40))
    foreign = 6 * (rng.normal(size=6) @ basis) + 0.3 * rng.normal(size=(5, 40))
    x = np.concatenate([typical, foreign]).astype(np.float32)
    score = audit.nearest_distances(audit.centred(x), np.arange(405), k=10).mean(axis=1)
    assert set(np.argsort(-score)[:5]) == set(range(400, 405))
    u = audit.centred_unit(x)
    cosine = u @ u.T
    np.fill_diagonal(cosine, -np.inf)
    by_angle = 1 - (-np.sort(-cosine, axis=1)[:, :10]).mean(axis=1)
    assert not set(np.argsort(-by_angle)[:50]) & set(range(400, 405))
    np.testing.assert_allclose(audit.centred(x).mean(axis=0), 0, atol=1e-4)


def test_groups_stay_in_one_fold_and_folds_are_stratified():
    from trxsfr.train import audit

    labels = np.repeat([0, 1, 2], [40, 30, 10])
    pairs = np.array([[0, 1], [1, 2], [50, 51], [3, 4]])
    groups = audit.components(len(labels), pairs, max_size=8)
    fold = audit.grouped_folds(labels, groups, 5, seed=0)
    assert fold[0] == fold[1] == fold[2] and fold[50] == fold[51] and fold[3] == fold[4]
    for c in range(3):
        counts = np.bincount(fold[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 3, counts
    chain = np.array([[i, i + 1] for i in range(20)])  # look-alikes chained: capped
    sizes = np.bincount(audit.components(21, chain, max_size=8))
    assert sizes.max() <= 8


def test_review_lines_name_each_finding():
    from trxsfr import audit_page

    doc = {"label_issues": [{"path": "a/1.jpg", "given": "a", "suggested": "b", "score": 0.01}],
           "duplicates": [{"paths": ["a/2.jpg", "a/3.jpg"], "kind": "near", "similarity": 0.9,
                           "pixel_similarity": 0.99, "splits": ["train", "test"],
                           "classes": ["a", "a"]}],
           "outliers": [{"path": "b/4.jpg", "score": 0.5, "robust_z": 9.0},
                        {"path": "b/5.jpg", "score": 0.1, "robust_z": 0.5}]}
    lines = audit_page.review_lines(doc)
    assert [line.split("\t")[:2] for line in lines[1:]] == [
        ["label_issue", "a/1.jpg"], ["duplicate", "a/3.jpg"], ["outlier", "b/4.jpg"]]


def test_the_thumbnail_store_ignores_torn_and_damaged_records(tmp_path):
    from trxsfr.train import audit

    path = str(tmp_path / audit.THUMBNAIL_FILE)
    store = audit.ThumbnailStore(path)
    rows = [(bytes([k]) * 32, bytes([k]) * 768) for k in range(3)]
    store.add_many(rows)
    assert audit.ThumbnailStore(path).get(rows[1][0]) == rows[1][1]
    with open(path, "r+b") as f:  # damage the second record's pixels, tear the end
        f.seek(804 + 40)
        f.write(b"\xff")
        f.seek(0, 2)
        f.write(b"\x01" * 100)
    again = audit.ThumbnailStore(path)
    assert again.get(rows[0][0]) == rows[0][1] and again.get(rows[2][0]) == rows[2][1]
    assert again.get(rows[1][0]) is None


def test_exact_copies_are_every_pair_of_a_group_up_to_the_limit():
    from trxsfr.train import audit

    content = np.array([5, 1, 5, 2, 5, 1])
    pairs, total = audit.exact_copies(content, 100)
    assert pairs == [(0, 2), (0, 4), (2, 4), (1, 5)] and total == 4
    many = np.zeros(500, np.int64)  # one picture 500 times: 124,750 pairs
    pairs, total = audit.exact_copies(many, 10)
    assert len(pairs) == 10 and total == 124_750 and pairs[0] == (0, 1)
