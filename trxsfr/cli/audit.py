"""`audit`: flags -> AuditConfig -> the audit -> printed results, HTML page, review list."""

from __future__ import annotations

import argparse
import json

from trxsfr.base.config import DEFAULT_MODULE, RUNTIMES, AuditConfig
from trxsfr.cli.common import EXIT_OK, Formatter, ProgressBars, note, out


def add_audit_parser(sub) -> None:
    d = AuditConfig
    p = sub.add_parser(
        "audit", formatter_class=Formatter,
        help="Find likely label errors, duplicates (and split leakage) and outliers in class "
             "folders.",
        description=(
            "Works on the bottleneck cache `retrain` fills (a warm audit computes no vector):\n"
            "out-of-fold class probabilities for every image (a head per fold), likely label\n"
            "errors by confident learning (cleanlab), exact duplicates (same bytes) and near\n"
            "duplicates (similar vectors confirmed by similar thumbnails) within a class,\n"
            "across classes and across the train/validation/test splits, and outliers (far from\n"
            "their nearest neighbours). It never moves, deletes or rewrites an image.\n"
            "Needs the audit extra: pip install 'trxsfr[audit]'."
        ),
    )
    g = p.add_argument_group("Data")
    g.add_argument("--image_dir", required=True, default=argparse.SUPPRESS,
                   help="Required. Folder with one sub-folder of images per class.")
    g.add_argument("--validation_percentage", type=float, default=d.validation_percentage,
                   help="As retrain's: decides which split each image belongs to.")
    g.add_argument("--testing_percentage", type=float, default=d.testing_percentage,
                   help="As retrain's: decides which split each image belongs to.")
    g.add_argument("--max_image_pixels", type=int, default=d.max_image_pixels,
                   help="Skip (and name) images whose header declares more pixels than this.")
    g = p.add_argument_group("Module")
    g.add_argument("--tfhub_module", default=DEFAULT_MODULE,
                   help="Feature-vector module, as retrain's (use the same one to reuse its cache).")
    g.add_argument("--image_size", type=int, default=d.image_size,
                   help="Input size for modules that do not fix it.")
    g.add_argument("--bottleneck_dir", default=d.bottleneck_dir,
                   help="Cache of bottleneck vectors, shared with retrain.")
    g.add_argument("--bottleneck_batch_size", type=int, default=d.bottleneck_batch_size,
                   help="Images per forward pass of the feature extractor.")
    g.add_argument("--runtime", choices=RUNTIMES, default=d.runtime,
                   help="What runs the extractor, as retrain's --runtime (use the same one to "
                        "reuse its vectors: each runtime's are cached apart).")
    g = p.add_argument_group("Audit")
    g.add_argument("--folds", type=int, default=d.folds,
                   help="Folds of the out-of-fold probabilities (a head is trained per fold).")
    g.add_argument("--how_many_training_steps", type=int, default=d.how_many_training_steps,
                   help="Training steps of each fold's head.")
    g.add_argument("--learning_rate", type=float, default=d.learning_rate,
                   help="Learning rate of each fold's head.")
    g.add_argument("--l2", type=float, default=d.l2,
                   help="L2 penalty of each fold's head (standardised weights); it keeps "
                        "out-of-fold probabilities from overconfidence.")
    g.add_argument("--seed", type=int, default=d.seed, help="Seed of the folds and the heads.")
    g.add_argument("--near_duplicate_similarity", type=float,
                   default=d.near_duplicate_similarity,
                   help="Cosine similarity of centred bottleneck vectors at or above which a "
                        "pair is a near-duplicate candidate.")
    g.add_argument("--near_duplicate_pixel_similarity", type=float,
                   default=d.near_duplicate_pixel_similarity,
                   help="Similarity of the two images' 16x16 colour thumbnails at or above "
                        "which a candidate is a near duplicate.")
    g.add_argument("--outlier_neighbours", type=int, default=d.outlier_neighbours,
                   help="Outlier score: mean Euclidean distance (centred vectors) to this "
                        "many nearest images.")
    g.add_argument("--outliers", type=int, default=d.outliers,
                   help="How many of the most isolated images are listed.")
    g.add_argument("--max_pairs", type=int, default=d.max_pairs,
                   help="Duplicate pairs (and near-duplicate candidates) kept at most.")
    g = p.add_argument_group("Output")
    g.add_argument("--out", default=None, metavar="HTML",
                   help="Also write a self-contained HTML page (thumbnails inlined, links to the "
                        "files) to this new file; an existing file is never replaced.")
    g.add_argument("--list", dest="review_list", default=None, metavar="TSV",
                   help="Also write what to review (kind, path, detail; tab-separated) to this "
                        "new file, for you to act on: nothing is moved or deleted.")
    g.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: a summary; json: the whole audit as one JSON document.")
    g.add_argument("--top", type=int, default=20,
                   help="Label issues, duplicate pairs and outliers printed per kind (text).")
    g.add_argument("--quiet", action="store_true", help="No progress bar.")
    p.set_defaults(run=run_audit)


def run_audit(args) -> int:
    from trxsfr import audit_page
    from trxsfr.train import audit

    config = AuditConfig(
        image_dir=args.image_dir, tfhub_module=args.tfhub_module, image_size=args.image_size,
        bottleneck_dir=args.bottleneck_dir, bottleneck_batch_size=args.bottleneck_batch_size,
        validation_percentage=args.validation_percentage,
        testing_percentage=args.testing_percentage, max_image_pixels=args.max_image_pixels,
        runtime=args.runtime, folds=args.folds, how_many_training_steps=args.how_many_training_steps,
        learning_rate=args.learning_rate, l2=args.l2, seed=args.seed,
        near_duplicate_similarity=args.near_duplicate_similarity,
        near_duplicate_pixel_similarity=args.near_duplicate_pixel_similarity,
        outlier_neighbours=args.outlier_neighbours, outliers=args.outliers,
        max_pairs=args.max_pairs)
    config.check()
    audit_page.check_new(args.out)  # before the work, not after it
    audit_page.check_new(args.review_list)
    with ProgressBars(not args.quiet and args.format != "json") as bars:
        result = audit.audit(config, on_progress=bars)
    doc = result.to_json()
    if args.format == "json":
        out(json.dumps(doc, indent=1))
    else:
        for line in text_lines(doc, args.top):
            out(line)
    if args.out:
        written = audit_page.write(doc, args.out)
        note(f"Audit page: {written.path} ({written.bytes / 1e6:.2f} MB, "
             f"{written.thumbnails} thumbnails)")
    if args.review_list:
        count = audit_page.write_review_list(doc, args.review_list)
        note(f"Review list: {args.review_list} ({count} entries; nothing was moved or deleted)")
    return EXIT_OK


def text_lines(doc: dict, top: int) -> list[str]:
    """`audit`'s text output: what was audited, then the head of each ranked list."""
    lines = [f"Audited {doc['images']} images in {len(doc['labels'])} classes "
             f"({doc['bottlenecks']['reused']} vectors reused from cache, "
             f"{doc['bottlenecks']['computed']} computed); out-of-fold accuracy "
             f"{100 * doc['out_of_fold_accuracy']:.1f}% ({doc['settings']['folds']} folds)"]
    issues = doc["label_issues"]
    lines.append(f"Likely label errors: {len(issues)} (label quality = out-of-fold probability "
                 f"of the given class, lowest first)")
    lines += [f"  {i['score']:.4f}  {i['path']}  given {i['given']}, looks like {i['suggested']} "
              f"({i['suggested_probability']:.3f})" for i in issues[:top]]
    dups = doc["duplicates"]
    exact = sum(d["kind"] == "exact" for d in dups)
    leaks = sum(d["leak"] for d in dups)
    across = sum(not d["same_class"] for d in dups)
    lines.append(f"Duplicate pairs: {exact} exact, {len(dups) - exact} near; {leaks} across "
                 f"splits (leakage), {across} across classes")
    lines += [f"  {d['kind']:5s} {d['similarity']:.4f}  {d['paths'][0]}  {d['paths'][1]}  "
              f"({'/'.join(d['splits'])}; {'/'.join(d['classes'])})" for d in dups[:top]]
    lines.append(f"Outliers (mean distance to the "
                 f"{doc['settings']['outlier_neighbours']} nearest images, highest first):")
    lines += [f"  {o['score']:.4f}  z {o['robust_z']:5.1f}  {o['path']}" for o in
              doc["outliers"][:top]]
    if doc["skipped"]:
        lines.append(f"Skipped {len(doc['skipped'])} file(s):")
        lines += [f"  {s['path']}: {s['reason']}" for s in doc["skipped"][:top]]
    lines += [f"Note: {n}" for n in doc["notes"]]
    return lines
