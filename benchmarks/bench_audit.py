"""Benchmark of `trxsfr audit` (issue 26): planted faults found, and a warm audit's cost.

    python -m benchmarks.bench_audit --quick      # 400 photo-sized pictures; a few minutes
    python -m benchmarks.bench_audit              # the issue's 2,000
    python -m benchmarks.bench_audit --out DIR    # keep pictures, caches, pages in DIR (new)

For each of two extractors -- the tiny one of `trxsfr fixtures` (32x32 input,
32-d vectors) and the MobileNet-V2 architecture with fixed random weights
(`benchmarks.mobilenet_fixture`, 224x224, 1280-d) -- it writes a picture set,
plants known faults with `trxsfr.kit.plant_faults` (10 images moved to
another class, 10 exact and 10 near duplicates -- resized 0.6-0.85x and
re-encoded as JPEG at quality 55-80 -- two of each kind in another class and
every other one named into another split than its original, and 5 pictures of
an unrelated set), audits it cold through `trxsfr.audit` and scores what the
audit returned against what was planted:

- `relabelled_in_top_20`: planted relabelled images among the first 20 label issues (target >= 8);
- `exact_found`, `near_found`: planted pairs reported with that kind (targets 10 and >= 8);
- `false_pairs`: near pairs reported that were not planted (target <= 2);
- `outliers_in_top_10`: unrelated pictures among the first 10 outliers (target 5).

Pictures: the tiny extractor gets `trxsfr fixtures`' colour blobs on pixel noise
(40-72 px); MobileNet-V2 gets 500x375 "object photos" (a coloured disc whose hue names
the class, on a smooth background with clutter). The random-weight MobileNet-V2
tells those classes apart as a pretrained one tells real ones (out-of-fold accuracy
is printed); on `benchmarks.bench`'s texture photos it reaches only about 67% with
80 pictures a class, and no ranking can find 10 planted errors among a third of the
set that the extractor confuses. The unrelated pictures are pure noise (tiny) and
document pages, dark word-shaped bars in lines on paper (MobileNet-V2). Not
`benchmarks.bench`'s texture photos, which earlier runs used: they are drawn by the
same code as the object photos' backgrounds (gradient, smooth noise, clutter), with
a textured square in place of the disc, so they are near relatives of the set, not
an unrelated one (in a trial without the other faults, the whitened score put 4 of
them in its top 10 and the fifth 12th).

Cost, on MobileNet-V2: the cold audit's extraction time (its `bottlenecks_s`: every
vector computed, in this process, TensorFlow already imported) against a warm
audit of the same folder, measured twice: in this process (`trxsfr.audit`, the
module load included: the like-for-like figure, judged against the target
warm <= 0.3 x cold extraction) and as a user runs it, `python -m trxsfr audit
... --format json --out page.html` in a subprocess, beside that command's floor
(a subprocess importing trxsfr's CLI, TensorFlow, TF-Hub and cleanlab, which
took 5.6 s of CPU here, and more wall time on a busy machine).

Prints one JSON document on stdout; progress on stderr. Public API only.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HUES = (0.0, 0.13, 0.33, 0.6, 0.8)  # red, yellow, green, blue, purple
CLASSES = ("red", "yellow", "green", "blue", "purple")
PLANTED = {"relabel": 10, "exact": 10, "near": 10, "outliers": 5}


def object_photo(rng: np.random.Generator, label: int, size=(500, 375)):
    """A coloured disc (hue names the class) on a smooth desaturated background with
    clutter, as a PIL image of `size` (width, height)."""
    from PIL import Image

    from benchmarks.bench import _smooth_noise

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    c0, c1 = np.float32(0.3 * c0 + 0.7 * c0.mean()), np.float32(0.3 * c1 + 0.7 * c1.mean())
    a = np.float32(rng.uniform(0, 2 * np.pi))
    t = np.cos(a) * xx / w + np.sin(a) * yy / h
    t = (t - t.min()) / (t.max() - t.min() + 1e-6)
    img = c0 + (c1 - c0) * t[..., None] + 0.3 * _smooth_noise(rng, h, w)
    for _ in range(int(rng.integers(1, 4))):
        colour = rng.uniform(0, 1, 3)
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        img[y0:y0 + int(rng.integers(10, 100)), x0:x0 + int(rng.integers(10, 120))] = colour
    hue = (HUES[label] + rng.normal(0, 0.015)) % 1.0
    fg = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1), rng.uniform(0.6, 1)), np.float32)
    ry, rx = rng.uniform(0.25, 0.42) * h, rng.uniform(0.25, 0.42) * h
    cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
    disc = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    shade = 1 + 0.15 * _smooth_noise(rng, h, w)
    img = np.where(disc[..., None], fg * shade, img)
    img += np.float32(0.01) * rng.standard_normal(img.shape, np.float32)
    return Image.fromarray(np.uint8(np.clip(img, 0, 1) * 255 + 0.5))


def document_page(rng: np.random.Generator, size=(500, 375)):
    """A page of text as a PIL image: lines of dark word-shaped bars on tinted paper."""
    from PIL import Image, ImageDraw

    w, h = size
    paper = np.array([250, 248, 240]) - rng.integers(0, 15, 3)
    img = Image.new("RGB", size, tuple(int(v) for v in paper))
    draw = ImageDraw.Draw(img)
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    y, left, line_h = int(rng.integers(20, 40)), int(rng.integers(20, 50)), int(rng.integers(12, 20))
    while y < h - 25:
        x = left
        end = w - int(rng.integers(20, 60)) if rng.random() < 0.85 else int(rng.integers(150, 350))
        while x < end:
            word = int(rng.integers(8, 55))
            draw.rectangle([x, y, min(x + word, end), y + line_h // 2], fill=ink)
            x += word + int(rng.integers(4, 9))
        y += line_h + int(rng.integers(0, 6))
    return img


def _write_object(job) -> None:
    path, seed, label, index = job
    object_photo(np.random.default_rng([seed, label, index]), label).save(path, quality=90)


def write_objects(root: str, per_class: int, seed: int, workers: int = 2) -> str:
    """`root/<class>/<class>_<i>.jpg` object photos (with workers > 1 it forks: call it
    before importing TensorFlow)."""
    jobs = []
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        jobs += [(os.path.join(root, name, f"{name}_{i:05d}.jpg"), seed, label, i)
                 for i in range(per_class)]
    if workers <= 1:  # in this process: safe after TensorFlow is imported
        for job in jobs:
            _write_object(job)
        return root
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_write_object, jobs, chunksize=8)
    return root


def score(doc: dict, root: str, planted: dict) -> dict:
    """What an audit document found of the planted faults."""
    def rel(path):
        return os.path.relpath(path, root).replace(os.sep, "/")

    issues = [rel(i["path"]) for i in doc["label_issues"]]
    relabelled = [r["path"] for r in planted["relabelled"]]
    found = {frozenset(map(rel, d["paths"])): d for d in doc["duplicates"]}
    exact = [frozenset(p) for p in planted["exact"]]
    near = [frozenset(p) for p in planted["near"]]
    outliers = [rel(o["path"]) for o in doc["outliers"]]
    near_sims = sorted(found[p]["similarity"] for p in near if p in found)
    return {
        "relabelled_in_top_20": sum(p in issues[:20] for p in relabelled),
        "relabelled_ranks": sorted(issues.index(p) + 1 for p in relabelled if p in issues),
        "label_issues": len(issues),
        "exact_found": sum(p in found and found[p]["kind"] == "exact" for p in exact),
        "near_found": sum(p in found and found[p]["kind"] == "near" for p in near),
        "near_pair_similarities": near_sims,
        "false_pairs": sum(d["kind"] == "near" and p not in near for p, d in found.items())
        + sum(d["kind"] == "exact" and p not in exact for p, d in found.items()),
        "leaks_found": sum(d["leak"] for d in doc["duplicates"]),
        "outliers_in_top_10": sum(p in outliers[:10] for p in planted["outliers"]),
        "outlier_ranks": sorted(outliers.index(p) + 1 for p in planted["outliers"]
                                if p in outliers),
        "out_of_fold_accuracy": doc["out_of_fold_accuracy"],
        "meets_targets": None,
    }


def judged(figures: dict) -> dict:
    figures["meets_targets"] = (figures["relabelled_in_top_20"] >= 8
                                and figures["exact_found"] == PLANTED["exact"]
                                and figures["near_found"] >= 8 and figures["false_pairs"] <= 2
                                and figures["outliers_in_top_10"] == PLANTED["outliers"])
    return figures


def log(message: str) -> None:
    print(f"[bench_audit {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_audit",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="80 object photos a class (400) instead of 400 (2,000).")
    parser.add_argument("--out", default=None, help="Work directory (default: a new temp dir).")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = args.out or tempfile.mkdtemp(prefix="trxsfr-bench-audit-")
    if os.path.isdir(work) and os.listdir(work):
        parser.error(f"--out {work} is not empty: faults are planted in place, pass a new folder")
    os.makedirs(work, exist_ok=True)
    per_class = 80 if args.quick else 400
    photos = os.path.join(work, "objects")
    log(f"work dir {work}: {per_class * len(CLASSES)} object photos")
    # Pictures first: their workers fork before TensorFlow is imported.
    write_objects(photos, per_class, seed=26)
    unrelated = os.path.join(work, "unrelated")
    os.makedirs(unrelated, exist_ok=True)
    pages = []
    for k in range(PLANTED["outliers"]):
        path = os.path.join(unrelated, f"page_{k}.jpg")
        document_page(np.random.default_rng([99, k])).save(path, quality=90)
        pages.append(path)

    from PIL import Image

    import trxsfr
    from benchmarks.mobilenet_fixture import build_mobilenet_v2_extractor
    from trxsfr import kit
    from trxsfr.base.config import AuditConfig
    from trxsfr.train.dataset import split_of

    def splits(rel):
        return split_of(rel, AuditConfig.validation_percentage,
                        AuditConfig.testing_percentage).value

    doc = {"planted": PLANTED, "images": {}, "figures": {}}
    # Tiny extractor on `trxsfr fixtures`' pictures.
    tiny = kit.write_fixtures(os.path.join(work, "tiny"), per_class=60, heldout_per_class=1)
    rng = np.random.default_rng(5)
    noise = []
    for k in range(PLANTED["outliers"]):
        path = os.path.join(unrelated, f"noise_{k}.png")
        Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(path)
        noise.append(path)
    planted_tiny = kit.plant_faults(tiny["images"], noise, split_of=splits, seed=3)
    log("audit: tiny extractor, cold")
    result = trxsfr.audit(AuditConfig(image_dir=tiny["images"], tfhub_module=tiny["module"],
                                      bottleneck_dir=os.path.join(work, "cache-tiny")))
    doc["images"]["tiny"] = result.images
    doc["figures"]["tiny"] = judged(score(result.to_json(), tiny["images"], planted_tiny))
    doc["figures"]["tiny"]["timings"] = result.timings

    # MobileNet-V2 architecture on object photos.
    module = os.path.join(work, "mobilenet_v2")
    if not os.path.exists(os.path.join(module, "saved_model.pb")):
        build_mobilenet_v2_extractor(module)
    planted_m = kit.plant_faults(photos, pages, split_of=splits, seed=3)
    config = AuditConfig(image_dir=photos, tfhub_module=module,
                         bottleneck_dir=os.path.join(work, "cache-mobilenet"))
    log("audit: MobileNet-V2, cold")
    cold = trxsfr.audit(config)
    log("audit: MobileNet-V2, warm (in process)")
    start = time.perf_counter()
    warm = trxsfr.audit(config)
    warm_s = time.perf_counter() - start
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log("the command's floor: python -c 'import trxsfr.cli, tensorflow, tensorflow_hub, cleanlab'")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import trxsfr.cli, tensorflow, tensorflow_hub; "
                    "import cleanlab.filter, cleanlab.rank"], capture_output=True, env=env,
                   check=True)
    floor_s = time.perf_counter() - start
    log("audit: MobileNet-V2, warm (python -m trxsfr audit, with the HTML page)")
    page = os.path.join(work, f"audit-{int(time.time())}.html")
    start = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, "-m", "trxsfr", "audit", "--image_dir", photos, "--tfhub_module",
         module, "--bottleneck_dir", config.bottleneck_dir, "--format", "json", "--out", page,
         "--quiet"], capture_output=True, text=True, env=env)
    cli_s = time.perf_counter() - start
    if cli.returncode != 0:
        log(f"the audit command failed: {cli.stderr[-2000:]}")
        return 1
    cli_doc = json.loads(cli.stdout)
    doc["images"]["mobilenet_v2"] = cold.images
    found = score(cold.to_json(), photos, planted_m)
    same = score(warm.to_json(), photos, planted_m) == score(cli_doc, photos, planted_m) == found
    figures = judged(dict(found))
    figures["warm_runs_find_the_same"] = same
    cold_extraction = cold.timings["bottlenecks_s"]
    figures["cost"] = {
        "images": cold.images, "cold_vectors_computed": cold.computed,
        "warm_vectors_computed": warm.computed + cli_doc["bottlenecks"]["computed"],
        "cold_extraction_s": cold_extraction, "cold_audit_s": cold.timings["total_s"],
        "warm_audit_in_process_s": warm_s, "warm_audit_command_s": cli_s,
        "warm_timings": warm.timings,
        "command_floor_s": floor_s,
        "warm_over_cold_extraction_in_process": warm_s / cold_extraction,
        "warm_over_cold_extraction_command": cli_s / cold_extraction,
        "warm_over_cold_extraction_command_above_floor": (cli_s - floor_s) / cold_extraction,
        "target": "<= 0.3 (2,000 images), in process: the cold extraction is timed in "
                  "process too, TensorFlow already imported",
        "meets_target": warm_s / cold_extraction <= 0.3 if cold.images >= 2000 else None,
        "page_bytes": os.path.getsize(page),
    }
    doc["figures"]["mobilenet_v2"] = figures
    json.dump(doc, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
