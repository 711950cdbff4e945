"""`download` and `label` on URLs against a loopback HTTP server in this process."""

from __future__ import annotations

import csv
import hashlib
import http.server
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import REPO, assert_bad_input, run_cli, subprocess_env
from PIL import Image

from trxsfr.base import web
from trxsfr.download import DownloadOptions, default_manifest, download

CAP = 50_000  # --max_mb 0.05
TIMEOUT = 0.5  # the stalled URL costs 2 tries of it per run


def _image(fmt: str, seed: int, size=(24, 20)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **({"quality": 90} if fmt != "PNG" else {}))
    return out.getvalue()


JPEG, PNG, WEBP = _image("JPEG", 1), _image("PNG", 2), _image("WEBP", 3)
FLAKY, CHAINED, SHARED, PLACEHOLDER = (_image("JPEG", s) for s in (4, 5, 6, 7))
BIG = _image("PNG", 8, size=(200, 150))  # ~90 KB of noise: over CAP
LARGE = _image("JPEG", 9, size=(160, 120))  # for --max_side
assert len(BIG) > CAP
HTML = b"<!DOCTYPE html><html><body>Sorry, this photo is no longer available</body></html>"


class Server:
    """A loopback HTTP server; `routes` maps a path to (status, headers, body) or a callable."""

    def __init__(self):
        self.hits: dict[str, int] = {}
        self.stop = threading.Event()
        self.delay = 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle's algorithm the body waits for
            # the client's delayed ACK of the headers (40 ms on Linux), which real servers avoid.
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.hits[self.path] = n = server.hits.get(self.path, 0) + 1
                    assert sum(server.hits.values()) < 5000  # bounded: a runaway loop fails
                if server.delay:
                    time.sleep(server.delay)
                status, headers, body = server.answer(self.path, n)
                if status is None:  # stall past the client's timeout, bounded
                    server.stop.wait(3 * TIMEOUT)
                    return
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if isinstance(body, list):  # streamed without Content-Length
                    for chunk in body:
                        self.wfile.write(chunk)
                    self.close_connection = True
                elif body:
                    self.wfile.write(body)

        self.lock = threading.Lock()
        class Quiet(http.server.ThreadingHTTPServer):
            daemon_threads = True
            # socketserver's default backlog of 5 drops the SYNs of 16 parallel connects,
            # which the client's TCP resends after 1 s: a spurious timeout.
            request_queue_size = 128

            def handle_error(self, request, client_address):
                pass  # a client closing its kept-alive connection: not news

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str, n: int):
        jpeg = {"Content-Type": "image/jpeg"}
        fixed = {
            "/good.jpg": (200, jpeg, JPEG),
            "/good.png": (200, {"Content-Type": "image/png"}, PNG),
            "/good.webp": (200, {"Content-Type": "image/webp"}, WEBP),
            "/large.jpg": (200, jpeg, LARGE),
            "/missing.jpg": (404, {}, b"not here"),
            "/chain/1": (302, {"Location": "/chain/2"}, b""),
            "/chain/2": (301, {"Location": self.base + "/chain/3"}, b""),
            "/chain/3": (307, {"Location": "final.jpg"}, b""),
            "/chain/final.jpg": (200, jpeg, CHAINED),
            "/loop/a": (302, {"Location": "/loop/b"}, b""),
            "/loop/b": (302, {"Location": "/loop/a"}, b""),
            "/to-ftp": (302, {"Location": "ftp://127.0.0.1/x.jpg"}, b""),
            "/html.jpg": (200, jpeg, HTML),
            "/truncated.jpg": (200, jpeg, JPEG[: len(JPEG) // 2]),
            "/big.png": (200, {"Content-Type": "image/png"}, BIG),
            "/big-streamed.png": (200, {"Connection": "close"},
                                  [BIG[i:i + 8192] for i in range(0, len(BIG), 8192)]),
            "/stall.jpg": (None, {}, None),
        }
        if path in fixed:
            return fixed[path]
        if path == "/flaky.jpg":  # every other request fails: one retry always succeeds
            return (500, {}, b"busy") if n % 2 else (200, jpeg, FLAKY)
        if path.startswith("/many/"):  # a chain longer than the redirect limit
            return 302, {"Location": f"/many/{int(path[6:]) + 1}"}, b""
        if path == "/busy.jpg":  # 429 with Retry-After on every other request
            return (429, {"Retry-After": "0"}, b"") if n % 2 else (200, jpeg, FLAKY)
        if path.startswith("/shared/"):
            return 200, jpeg, SHARED
        if path.startswith("/placeholder/"):
            return 200, jpeg, PLACEHOLDER
        if path.startswith("/fx/"):
            with open(os.path.join(self.fx_dir, path[len("/fx/"):]), "rb") as f:
                return 200, jpeg, f.read()
        return 404, {}, b""

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


# (path, label, status, reason or reason prefix); the file of a stored one is checked apart.
CASES = (
    [("/good.jpg", "cats", "done", ""),
     ("/good.png", "cats", "done", ""),
     ("/good.webp", "dogs", "done", ""),
     ("/missing.jpg", "cats", "dead", "HTTP 404"),
     ("/flaky.jpg", "dogs", "done", ""),
     ("/chain/1", "dogs", "done", ""),
     ("/loop/a", "cats", "refused", "redirect loop"),
     ("/many/0", "cats", "refused", "more than 10 redirects"),
     ("/to-ftp", "cats", "refused", "redirect to ftp:// refused (only http and https)"),
     ("/html.jpg", "cats", "refused", "not an image: an HTML page (sent as image/jpeg)"),
     ("/truncated.jpg", "cats", "refused", "truncated or corrupt JPEG data"),
     ("/big.png", "cats", "refused", "over 50,000 bytes"),
     ("/big-streamed.png", "cats", "refused", "over 50,000 bytes"),
     ("/stall.jpg", "cats", "failed", "timeout after 0.5 s (2 tries)"),
     ("ftp://127.0.0.1/x.jpg", "cats", "refused", "only http and https URLs are fetched, not ftp://"),
     ("file:///etc/hostname", "cats", "refused",
      "only http and https URLs are fetched, not file://")]
    + [(f"/shared/{i}.jpg", "dogs", "done" if i == 0 else "duplicate",
        "" if i == 0 else "same bytes as ") for i in range(5)]
    + [(f"/placeholder/{i}.jpg", "cats", "refused", "placeholder: the same bytes under 20 URLs")
       for i in range(20)]
)
STORED = {"/good.jpg": JPEG, "/good.png": PNG, "/good.webp": WEBP, "/flaky.jpg": FLAKY,
          "/chain/1": CHAINED, "/shared/0.jpg": SHARED}
FLAGS = ["--allow_private", "--timeout", TIMEOUT, "--retries", 1, "--max_mb", CAP / 1e6, "--quiet"]


def _url(server, path):
    return path if "://" in path else server.base + path


def _write_csv(path, server, cases=CASES):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "label"])
        for p, label, *_ in cases:
            w.writerow([_url(server, p), label])


def _last_lines(manifest) -> dict:
    lines = {}
    with open(manifest) as f:
        for text in f:
            line = json.loads(text)
            lines[line["url"]] = line
    return lines


def _visible_files(out) -> dict:
    """relative path -> bytes of every file retrain would see (not hidden)."""
    found = {}
    for root, dirs, names in os.walk(out):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                with open(os.path.join(root, name), "rb") as f:
                    found[os.path.relpath(os.path.join(root, name), out)] = f.read()
    return found


def _expected_files() -> dict:
    labels = {p: label for p, label, *_ in CASES}
    ext = {"/good.png": "png", "/good.webp": "webp"}
    return {f"{labels[p]}/{hashlib.sha256(b).hexdigest()}.{ext.get(p, 'jpg')}": b
            for p, b in STORED.items()}


def _check_state(server, out, manifest):
    assert _visible_files(out) == _expected_files()
    lines = _last_lines(manifest)
    assert len(lines) == len(CASES)
    base = os.path.dirname(manifest)
    for path, label, status, reason in CASES:
        line = lines[_url(server, path)]
        assert (line["label"], line["status"]) == (label, status), line
        assert line["reason"].startswith(reason) if reason else line["reason"] == "", line
        if status in ("done", "duplicate"):
            with open(os.path.join(base, line["file"]), "rb") as f:
                data = f.read()
            assert hashlib.sha256(data).hexdigest() == line["sha256"]
            assert data == STORED.get(path, SHARED)
        else:
            assert line["file"] is None
    assert not os.path.exists(os.path.join(out, ".trxsfr-download"))  # staging cleaned up
    return lines


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory):
    """One uninterrupted `download --csv` of every case: its CSV, output and CLI result."""
    work = tmp_path_factory.mktemp("reference")
    urls = work / "urls.csv"
    _write_csv(urls, server)
    before = dict(server.hits)
    result = run_cli("download", "--csv", urls, "--out", work / "data", *FLAGS)
    hits = {p: n - before.get(p, 0) for p, n in server.hits.items()}
    return {"urls": urls, "out": work / "data", "result": result, "hits": hits}


def test_download_csv_ends_with_the_good_deduplicated_files(server, reference):
    result, out = reference["result"], reference["out"]
    assert result.code == 0, result
    manifest = default_manifest(str(out))
    assert manifest == str(out.parent / ".data.manifest.jsonl")
    lines = _check_state(server, out, manifest)
    with open(manifest) as f:
        assert len(f.readlines()) == len(CASES)  # one line per URL in one uninterrupted run
    assert reference["hits"]["/flaky.jpg"] == 2  # the 500 was retried
    assert reference["hits"]["/stall.jpg"] == 2  # so was the timeout
    assert reference["hits"]["/missing.jpg"] == 1  # a 404 was not
    assert lines[server.base + "/shared/1.jpg"]["file"] == lines[server.base + "/shared/0.jpg"]["file"]
    assert "Fetched: 6 new file(s)" in result.out and "Duplicate: 4" in result.out
    assert "  placeholder: the same bytes under 20 URLs: 20" in result.out
    assert "Dead: 1" in result.out and "  HTTP 404: 1" in result.out
    assert f"Manifest: {manifest}" in result.out


def test_a_rerun_fetches_only_what_failed(server, reference, tmp_path):
    import shutil

    out = tmp_path / "data"
    shutil.copytree(reference["out"], out)
    shutil.copy(default_manifest(str(reference["out"])), default_manifest(str(out)))
    hits = dict(server.hits)
    again = run_cli("download", "--csv", reference["urls"], "--out", out, *FLAGS)
    assert again.code == 0, again
    assert f"URLs: {len(CASES)} listed, {len(CASES) - 1} already final" in again.out
    assert {p for p, n in server.hits.items() if n != hits.get(p)} == {"/stall.jpg"}
    assert _visible_files(out) == _expected_files()


def test_download_list_into_one_class_folder_with_max_side(server, tmp_path):
    urls = tmp_path / "dogs.txt"
    urls.write_text(f"# dogs\n{server.base}/large.jpg\n\n{server.base}/good.png  # a comment\n"
                    f"{server.base}/missing.jpg\n")
    out = tmp_path / "data" / "dog"
    result = run_cli("download", urls, "--out", out, "--max_side", 40, *FLAGS)
    assert result.code == 0, result
    files = _visible_files(out)
    assert len(files) == 2
    small = next(b for name, b in files.items() if name.endswith(".jpg"))
    assert Image.open(io.BytesIO(small)).size == (40, 30)
    assert files[f"{hashlib.sha256(PNG).hexdigest()}.png"] == PNG  # small enough: as fetched
    lines = _last_lines(tmp_path / "data" / ".dog.manifest.jsonl")
    assert {line["label"] for line in lines.values()} == {"dog"}
    assert lines[f"{server.base}/large.jpg"]["file"] == f"dog/{hashlib.sha256(small).hexdigest()}.jpg"
    assert lines[f"{server.base}/missing.jpg"]["status"] == "dead"


def test_private_addresses_and_other_schemes_are_refused_without_allow_private(server, tmp_path):
    options = web.FetchOptions(timeout=TIMEOUT, retries=0)
    hits = sum(server.hits.values())
    with web.Fetcher(options) as fetcher:
        for url, reason in [
            (server.base + "/good.jpg", "private address 127.0.0.1 refused (--allow_private)"),
            (f"http://localhost:{server.httpd.server_port}/good.jpg", "refused (--allow_private)"),
            ("http://[::1]/x.jpg", "private address ::1 refused (--allow_private)"),
            ("http://169.254.169.254/latest/meta-data/", "private address 169.254.169.254 refused"),
            ("http://10.0.0.1/x.jpg", "private address 10.0.0.1 refused"),
            ("http://224.0.0.1/x.jpg", "private address 224.0.0.1 refused"),
            ("http://[::ffff:127.0.0.1]/x.jpg", "private address 127.0.0.1 refused"),
            ("file:///etc/passwd", "only http and https URLs are fetched, not file://"),
            ("ftp://example.com/x.jpg", "only http and https URLs are fetched, not ftp://"),
            ("example.com/x.jpg", "not a URL (no http:// or https://)"),
        ]:
            with pytest.raises(web.FetchError) as caught:
                fetcher.fetch(url)
            assert caught.value.status == web.REFUSED and reason in caught.value.reason, url
    assert web.address_refusal("93.184.215.14") is None
    assert sum(server.hits.values()) == hits  # no request reached the server


def test_the_address_is_checked_where_the_connection_is_made(server, monkeypatch):
    """A name that resolves to loopback only at connection time (DNS rebinding) is refused:
    the check and the connect use the same resolution."""
    real = socket.getaddrinfo

    def resolver(host, *args, **kwargs):
        if host == "rebind.example":
            return real("127.0.0.1", *args, **kwargs)
        if host == "gone.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host == "offline.example":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with web.Fetcher(web.FetchOptions(timeout=TIMEOUT)) as fetcher:
        for host, status in [("gone.example", web.DEAD), ("offline.example", web.FAILED)]:
            with pytest.raises(web.FetchError, match=f"cannot resolve host {host}") as caught:
                fetcher.fetch(f"http://{host}/x.jpg")
            assert caught.value.status == status
    hits = sum(server.hits.values())
    with web.Fetcher(web.FetchOptions(timeout=TIMEOUT)) as fetcher:
        with pytest.raises(web.FetchError, match="private address 127.0.0.1 refused"):
            fetcher.fetch(f"http://rebind.example:{server.httpd.server_port}/good.jpg")
    assert sum(server.hits.values()) == hits
    # A redirect hop to a private address is refused the same way.
    with web.Fetcher(web.FetchOptions(timeout=TIMEOUT, allow_private=True)) as fetcher:
        got = fetcher.fetch(f"http://rebind.example:{server.httpd.server_port}/chain/1")
        assert got.data == CHAINED and got.final_url.endswith("/chain/final.jpg")


def test_retry_after_429_then_200(server):
    before = server.hits.get("/busy.jpg", 0)
    with web.Fetcher(web.FetchOptions(timeout=TIMEOUT, retries=2, backoff=0.01,
                                      allow_private=True)) as fetcher:
        got = fetcher.fetch(server.base + "/busy.jpg")
    assert got.data == FLAKY and got.content_type == "image/jpeg"
    assert server.hits["/busy.jpg"] - before in (1, 2)  # 429 then 200, or 200 at once
    with web.Fetcher(web.FetchOptions(timeout=TIMEOUT, retries=0, allow_private=True)) as fetcher:
        for _ in range(2):  # with no retries, one of two answers is the 429
            try:
                fetcher.fetch(server.base + "/busy.jpg")
            except web.FetchError as e:
                assert (e.status, e.reason) == (web.FAILED, "HTTP 429")
                break
        else:
            pytest.fail("no 429 seen")


def test_a_second_run_on_the_same_manifest_is_refused(server, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    urls = tmp_path / "one.txt"
    urls.write_text(server.base + "/good.jpg\n")
    manifest = tmp_path / "data" / ".x.manifest.jsonl"
    manifest.parent.mkdir()
    with open(manifest, "ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        result = run_cli("download", urls, "--out", tmp_path / "data" / "x", *FLAGS)
    assert_bad_input(result, "another trxsfr download is writing", manifest)


def test_download_refuses_a_private_address_in_a_list(server, tmp_path):
    urls = tmp_path / "one.txt"
    urls.write_text(server.base + "/good.jpg\n")
    result = run_cli("download", urls, "--out", tmp_path / "data" / "x", "--quiet")
    assert result.code == 0, result
    line = _last_lines(tmp_path / "data" / ".x.manifest.jsonl")[server.base + "/good.jpg"]
    assert (line["status"], line["reason"]) == (
        "refused", "private address 127.0.0.1 refused (--allow_private)")
    assert _visible_files(tmp_path / "data") == {}


@pytest.mark.parametrize("label", ["../up", "a/b", "..", ".hidden", ""])
def test_csv_labels_must_be_plain_folder_names(server, tmp_path, label):
    urls = tmp_path / "urls.csv"
    urls.write_text(f"url,label\n{server.base}/good.jpg,cats\n{server.base}/good.png,{label}\n")
    result = run_cli("download", "--csv", urls, "--out", tmp_path / "data", *FLAGS)
    assert_bad_input(result, "--csv", "line 3", "label")
    assert sorted(os.listdir(tmp_path)) == ["urls.csv"]


def test_download_bad_inputs(server, tmp_path):
    urls = tmp_path / "urls.csv"
    urls.write_text("address,class\nhttp://x/y.jpg,cats\n")
    assert_bad_input(run_cli("download", "--csv", urls, "--out", tmp_path / "d"),
                     "url and label columns")
    assert_bad_input(run_cli("download", "--out", tmp_path / "d"), "LIST.txt", "--csv")
    assert_bad_input(run_cli("download", tmp_path / "none.txt", "--out", tmp_path / "d"),
                     "does not exist")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    assert_bad_input(run_cli("download", empty, "--out", tmp_path / "d"), "no URLs in")
    for flag, value in [("--parallel", 0), ("--placeholder_min", 1), ("--max_side", 0),
                        ("--timeout", 0), ("--retries", -1), ("--max_mb", 0)]:
        assert_bad_input(run_cli("download", empty, "--out", tmp_path / "d", flag, value), flag)
    assert_bad_input(run_cli("download", empty, "--out", tmp_path / "d", "--manifest", tmp_path),
                     "no URLs in")  # the list is checked first; a folder as manifest:
    one = tmp_path / "one.txt"
    one.write_text(server.base + "/good.jpg\n")
    assert_bad_input(run_cli("download", one, "--out", tmp_path / "d", "--manifest", tmp_path),
                     "--manifest", "is a folder")
    assert_bad_input(run_cli("download", one, "--out", tmp_path / "d", "--manifest", one),
                     "--manifest", "is not a trxsfr download manifest")
    assert one.read_text() == server.base + "/good.jpg\n"
    assert not os.path.exists(tmp_path / "d")


def test_killed_at_a_random_moment_then_rerun_ends_in_the_same_state(server, reference, tmp_path):
    urls = reference["urls"]
    reference_lines = _last_lines(default_manifest(str(reference["out"])))

    out = tmp_path / "data"
    command = [sys.executable, "-m", "trxsfr", "download", "--csv", str(urls), "--out", str(out),
               "--parallel", "4", *map(str, FLAGS)]
    # Killed once it has written a seeded-random number of lines (manifest and staging
    # journal), which all come during the fetching; the rerun then finishes the job.
    kill_after = random.Random(21).randint(1, 35)
    server.delay = 0.01  # so that the fetching lasts long enough to be hit
    manifest = default_manifest(str(out))
    journal = out / ".trxsfr-download" / "staged.jsonl"
    try:
        process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while (_count_lines(manifest) + _count_lines(journal) < kill_after
               and process.poll() is None and time.monotonic() < deadline):
            _assert_no_partial_file(out)
            time.sleep(0.001)
        process.kill()
        assert process.wait(timeout=30) == -9, process.stderr.read()  # killed, not finished
        _assert_no_partial_file(out)
        assert _count_lines(manifest) + _count_lines(journal) >= kill_after
    finally:
        server.delay = 0.0
    result = run_cli("download", "--csv", urls, "--out", out, *FLAGS)
    assert result.code == 0, result
    lines = _check_state(server, out, default_manifest(str(out)))
    assert lines == reference_lines  # the same lines (files are named relative to the manifest)


def _count_lines(path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _assert_no_partial_file(out) -> None:
    """Every file a class folder shows is whole: its name is its bytes' sha256."""
    for name, data in _visible_files(out).items():
        assert os.path.basename(name).split(".")[0] == hashlib.sha256(data).hexdigest(), name


def test_label_a_url_scores_as_its_downloaded_file(server, trained, fx, tmp_path):
    server.fx_dir = fx["heldout"]
    red = sorted(os.listdir(os.path.join(fx["heldout"], "red")))[0]
    blue = sorted(os.listdir(os.path.join(fx["heldout"], "blue")))[0]
    url = f"{server.base}/fx/red/{red}"
    urls = tmp_path / "more.txt"
    urls.write_text(f"# two more\n{server.base}/fx/blue/{blue}\n{server.base}/gone.jpg\n")
    out = tmp_path / "data" / "red"
    listed = tmp_path / "one.txt"
    listed.write_text(url + "\n")
    assert run_cli("download", listed, "--out", out, *FLAGS).code == 0
    (downloaded,) = _visible_files(out)
    local = str(out / downloaded)
    on_file = run_cli("label", "--model", trained["base"], local, "--quiet")
    assert on_file.code == 0, on_file
    dead = server.base + "/missing.jpg"
    report = tmp_path / "urls.html"
    on_url = run_cli("label", "--model", trained["base"], "--allow_private", "--quiet", url,
                     dead, urls, local, "--report", report)
    assert on_url.code == 0, on_url
    # The report's thumbnails of URL inputs come from their fetched copies.
    page = report.read_text(encoding="utf-8")
    assert "image not found" not in page and url in page
    scores = [line for line in on_file.lines if line.endswith(" " + local)]
    assert scores and [line.replace(local, url) for line in scores] == \
        [line for line in on_url.lines if line.endswith(" " + url)]
    assert scores == [line for line in on_url.lines if line.endswith(" " + local)]
    assert any(line.endswith(f" {server.base}/fx/blue/{blue}") for line in on_url.lines)
    assert f"skipped: {dead}: HTTP 404" in on_url.lines
    assert f"skipped: {server.base}/gone.jpg: HTTP 404" in on_url.lines
    assert "Images: 3 labelled, 2 skipped" in on_url.out

    refused = run_cli("label", "--model", trained["base"], "--quiet", url, "ftp://host/x.jpg",
                      local)
    assert refused.code == 0, refused
    assert f"skipped: {url}: private address 127.0.0.1 refused (--allow_private)" in refused.lines
    assert "skipped: ftp://host/x.jpg: only http and https URLs are fetched, not ftp://" \
        in refused.lines
    assert_bad_input(run_cli("label", "--model", trained["base"], "--allow_private", dead),
                     "no image files in", dead)


def test_a_crash_while_files_are_moved_into_place_resumes_to_the_same_state(
        server, tmp_path, monkeypatch):
    """Kills in the last phase (staged files linked into class folders, their lines written)
    last milliseconds, too short to hit from outside: crash there from inside instead."""
    from trxsfr import download as dl

    cases = [c for c in CASES if c[0] != "/stall.jpg"]
    pairs = [(_url(server, p), label) for p, label, *_ in cases]
    options = DownloadOptions(fetch=web.FetchOptions(timeout=TIMEOUT, retries=1, backoff=0.01,
                                                     max_bytes=CAP, allow_private=True))
    reference = download(pairs, str(tmp_path / "reference"), options)
    assert (reference.fetched, reference.duplicate) == (6, 4)
    expected = _last_lines(default_manifest(str(tmp_path / "reference")))
    real_place = dl._place
    for crash_at in (1, 4):
        out = tmp_path / f"crash{crash_at}"
        calls = []

        def place(blob, target, sha):
            problem = real_place(blob, target, sha)
            calls.append(target)
            if len(calls) == crash_at:  # the file is in place, its line not yet written
                raise KeyboardInterrupt
            return problem

        monkeypatch.setattr(dl, "_place", place)
        with pytest.raises(KeyboardInterrupt):
            download(pairs, str(out), options)
        _assert_no_partial_file(out)
        monkeypatch.setattr(dl, "_place", real_place)
        hits = dict(server.hits)
        summary = download(pairs, str(out), options)
        assert server.hits == hits  # nothing fetched again: all of it was staged
        assert summary.fetched + summary.duplicate + sum(summary.refused.values()) > 0
        lines = _last_lines(default_manifest(str(out)))
        assert {u: (l["status"], l["reason"].replace(f"crash{crash_at}/", ""), l["sha256"])
                for u, l in lines.items()} == \
            {u: (l["status"], l["reason"].replace("reference/", ""), l["sha256"])
             for u, l in expected.items()}
        assert _visible_files(out) == _visible_files(tmp_path / "reference")
