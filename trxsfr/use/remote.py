"""`label` on URLs: http(s) URLs and text files of URLs become local files to label.

An input is remote when it looks like a URL ("scheme://...": a file:// or ftp:// one is
skipped with its reason, not looked for as a file name), or when it is a `.txt` file
whose first line (after blank lines and # comments) is an http(s) URL: a list of URLs,
one per line. Any other .txt file stays an ordinary input (and is skipped as no image).

URLs are fetched through base/web.py with the checks `download` makes (public addresses
unless allowed, size and time caps, the decode check training uses), into a temporary
content-addressed folder that lives until the process ends. The bytes are labelled
exactly as fetched, so a URL scores what its downloaded file scores.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import hashlib
import os
import shutil
import tempfile
import threading
from typing import Optional, Sequence

from trxsfr.base import sniff
from trxsfr.base.listing import Skipped
from trxsfr.base.web import (
    Fetcher,
    FetchError,
    FetchOptions,
    looks_like_url,
    read_url_list,
)

URL_LIST_SUFFIX = ".txt"
PARALLEL = 8  # a label run names a handful of URLs; a list of many still overlaps them

_folder: Optional[str] = None
_folder_lock = threading.Lock()


def is_remote(inp: str) -> bool:
    """True for a URL or a text file listing URLs (see the module doc)."""
    return looks_like_url(inp) or is_url_list(inp)


def is_url_list(path: str) -> bool:
    if not path.lower().endswith(URL_LIST_SUFFIX) or not os.path.isfile(path):
        return False
    try:
        urls = read_url_list(path)
    except Exception:  # unreadable: an ordinary input, reported as such
        return False
    return bool(urls) and urls[0].lower().startswith(("http://", "https://"))


def fetch(inputs: Sequence[str], options: FetchOptions = FetchOptions()
          ) -> dict[str, tuple[list[tuple[str, str]], list[Skipped]]]:
    """For each remote input: ((local path, URL) of each image that came, in list order;
    skip records of the URLs that did not). The same bytes under two URLs share a file."""
    if not inputs:
        return {}
    urls_of = {inp: [inp] if looks_like_url(inp) else read_url_list(inp) for inp in inputs}
    unique = list(dict.fromkeys(url for urls in urls_of.values() for url in urls))
    folder = _temporary_folder()
    sniff.load_decoder()  # imports TensorFlow here, not in the threads
    with Fetcher(options, connections=PARALLEL) as fetcher, \
            concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        results = dict(zip(unique, pool.map(lambda url: _fetch_one(fetcher, url, folder), unique)))
    out = {}
    for inp, urls in urls_of.items():
        got, skipped = [], []
        for url in urls:
            path, reason = results[url]
            if path:
                got.append((path, url))
            else:
                skipped.append(Skipped(url, reason))
        out[inp] = (got, skipped)
    return out


def _fetch_one(fetcher: Fetcher, url: str, folder: str) -> tuple[Optional[str], str]:
    try:
        got = fetcher.fetch(url)
    except FetchError as e:
        return None, e.reason
    problem = sniff.decode_problem(got.data, got.content_type)
    if problem:
        return None, problem
    path = os.path.join(folder, f"{hashlib.sha256(got.data).hexdigest()}."
                                f"{sniff.image_format(got.data)}")
    if not os.path.exists(path):
        tmp = f"{path}.{threading.get_ident()}.part"
        with open(tmp, "wb") as f:
            f.write(got.data)
        os.replace(tmp, path)  # same name, same bytes: whichever thread wins is right
    return path, ""


def _temporary_folder() -> str:
    global _folder
    with _folder_lock:
        if _folder is None:
            _folder = tempfile.mkdtemp(prefix="trxsfr-urls-")
            atexit.register(shutil.rmtree, _folder, True)
    return _folder
