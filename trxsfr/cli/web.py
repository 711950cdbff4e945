"""Command line of the web commands: `download`, and the flags `label` takes for URLs.

Registered by `cli.build_parser`; like the other CLI modules, this only parses flags,
calls the library (trxsfr/download.py, base/web.py) and prints results.
"""

from __future__ import annotations

import argparse
import os

from trxsfr.base.errors import InputError
from trxsfr.base.web import FetchOptions
from trxsfr.cli import process
from trxsfr.cli.common import EXIT_OK, Formatter, ProgressBars, out


def add_download_parser(sub) -> None:
    from trxsfr.download import DownloadOptions as d

    f = FetchOptions
    p = sub.add_parser(
        "download", formatter_class=Formatter,
        help="Fetch lists of image URLs into class folders for retrain.",
        description=(
            "trxsfr download LIST.txt --out DIR/CLASS     one URL per line (# comments)\n"
            "trxsfr download --csv FILE --out DIR          columns url,label -> DIR/<label>/\n\n"
            "Files are named <sha256>.<format> after their bytes (the same image under several\n"
            "URLs is stored once) and kept only if the decoder retrain uses reads them. Bytes\n"
            "that --placeholder_min or more URLs answer with (an 'image unavailable' picture)\n"
            "are refused for all of them; that is decided when every URL is in, so files reach\n"
            "the class folders at the end of the run. A manifest of JSON lines (url, label,\n"
            "file, sha256, status, reason) is kept beside the output folder; a rerun skips\n"
            "URLs that are done, duplicate, dead or refused, and tries failed ones again."
        ),
    )
    g = p.add_argument_group("Data")
    g.add_argument("url_list", nargs="?", metavar="LIST.txt",
                   help="A text file of URLs, one per line, all of one class (--out names its folder).")
    g.add_argument("--csv", metavar="FILE",
                   help="A CSV file with url and label columns; labels name sub-folders of --out "
                        "and must be plain folder names.")
    g.add_argument("--out", required=True, default=argparse.SUPPRESS, metavar="DIR",
                   help="Required. With LIST.txt: the class folder; with --csv: the folder of "
                        "class folders (retrain's --image_dir). Created if missing.")
    g.add_argument("--manifest", default=None, metavar="PATH",
                   help="The manifest file; unset: .NAME.manifest.jsonl beside --out DIR/NAME "
                        "(hidden, outside every class folder).")
    g = p.add_argument_group("Fetching")
    g.add_argument("--parallel", type=int, default=d.parallel,
                   help="URLs fetched at once (latency-bound: more helps until the uplink or "
                        "the CPU's decode check is full).")
    g.add_argument("--timeout", type=float, default=f.timeout,
                   help="Seconds one attempt at a URL may take, body included.")
    g.add_argument("--retries", type=int, default=f.retries,
                   help="Further attempts after a 5xx, 408 or 429 answer or a timeout, with "
                        "exponential backoff; other failures are not retried.")
    g.add_argument("--max_mb", type=float, default=f.max_bytes / 1e6,
                   help="Largest body kept, in MB; larger ones are abandoned while streaming.")
    add_fetch_flags(g)
    g = p.add_argument_group("Files")
    g.add_argument("--max_side", type=int, default=d.max_side, metavar="PX",
                   help="Shrink images whose longer side is larger to this many pixels, in their "
                        "own format and quality; unset: keep them as fetched.")
    g.add_argument("--placeholder_min", type=int, default=d.placeholder_min,
                   help="Identical bytes under this many distinct URLs are a placeholder and "
                        "refused for all of them; fewer are stored once.")
    p.add_argument("--quiet", action="store_true", help="No progress bar; the summary only.")
    p.set_defaults(run=run_download)


def add_fetch_flags(group) -> None:
    """Flags of every command that fetches URLs (download, label)."""
    group.add_argument("--allow_private", action="store_true",
                       help="Also fetch from private, loopback and link-local addresses "
                            "(refused by default, so a URL list cannot reach this machine's or "
                            "its network's services).")


def fetch_options(args) -> FetchOptions:
    """The FetchOptions a command's flags ask for (defaults for flags it does not have)."""
    d = FetchOptions()
    max_mb = getattr(args, "max_mb", d.max_bytes / 1e6)
    return FetchOptions(timeout=getattr(args, "timeout", d.timeout),
                        retries=getattr(args, "retries", d.retries),
                        max_bytes=int(max_mb * 1e6) if 0 < max_mb < 1e12 else 0,  # 0: refused
                        allow_private=args.allow_private)


def run_download(args) -> int:
    from trxsfr import download as dl
    from trxsfr.base.web import read_url_list

    if bool(args.url_list) == bool(args.csv):
        raise InputError("give a URL list file (LIST.txt) or --csv FILE, one of the two")
    options = dl.DownloadOptions(parallel=args.parallel, placeholder_min=args.placeholder_min,
                                 max_side=args.max_side, manifest=args.manifest,
                                 fetch=fetch_options(args))
    options.check()
    if args.csv:
        pairs = dl.read_csv(args.csv)
    else:
        if not os.path.isfile(args.url_list):
            raise InputError(f"URL list {args.url_list} "
                             f"{'is a folder' if os.path.isdir(args.url_list) else 'does not exist'}")
        pairs = [(url, None) for url in read_url_list(args.url_list)]
    if not pairs:
        raise InputError(f"no URLs in {args.csv or args.url_list}")
    process.import_tensorflow_quietly()  # the decode check's; after the checks above
    with ProgressBars(not args.quiet) as bars:
        summary = dl.download(pairs, args.out, options, bars)
    for line in summary_lines(summary):
        out(line)
    return EXIT_OK


def summary_lines(s) -> list[str]:
    lines = [f"URLs: {s.listed} listed, {s.already} already final in the manifest "
             f"(not fetched again)",
             f"Fetched: {s.fetched} new file(s)",
             f"Duplicate: {s.duplicate} (same bytes as a stored file)"]
    for title, counter in (("Dead", s.dead), ("Refused", s.refused),
                           ("Failed (a rerun tries them again)", s.failed)):
        lines.append(f"{title}: {sum(counter.values())}")
        lines += [f"  {reason}: {n}" for reason, n in counter.most_common()]
    lines.append(f"Manifest: {s.manifest}")
    return lines
