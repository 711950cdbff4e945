"""Benchmark of `download`: URLs/s against a loopback server that answers after 50 ms.

    python -m benchmarks.bench_download [--urls N] [--parallel N] [--delay S] [--work DIR]

A child process serves N distinct small JPEGs (64x48 noise, about 5 KB each) over
HTTP/1.1 keep-alive on 127.0.0.1, sleeping `--delay` seconds (default 0.05) before
each answer, as a remote host's latency would. This process downloads all N URLs into
a fresh class folder with `trxsfr.download.download` at the given parallelism (default:
DownloadOptions.parallel), every check on (training's decode check, sha256 names,
staging and manifest lines), after a small warm-up download that imports TensorFlow
and traces the decode check. Target (issue 21): URLs/s >= 0.8 x parallel / delay,
i.e. 256 URLs/s at 16 and 50 ms: the fetcher keeps `parallel` requests in flight and
its own work per URL hides behind the server's latency.

A benchmark, not a test: it prints figures (stdout) and exits 0 whatever they are.
Public API only: trxsfr.download and trxsfr.base.web.
"""

from __future__ import annotations

import argparse
import http.server
import io
import multiprocessing
import os
import tempfile
import time


def _serve(port_queue, delay: float, count: int) -> None:
    """The child process: a threaded HTTP server of `count` distinct JPEGs at /img/<i>.jpg."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    images = []
    for i in range(count):
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=90, comment=f"image {i}")  # distinct bytes per URL
        images.append(out.getvalue())

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle's algorithm the body waits for
        # the client's delayed ACK of the headers (40 ms on Linux), which real servers avoid.
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_GET(self):
            time.sleep(delay)
            try:
                body = images[int(self.path.rsplit("/", 1)[-1].split(".")[0])]
                status = 200
            except (ValueError, IndexError):
                body, status = b"no such image", 404
            self.send_response(status)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024  # socketserver's 5 would drop parallel connects for 1 s

        def handle_error(self, request, client_address):
            pass

    server = Server(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_port)
    server.serve_forever()


def run(urls: int, parallel: int, delay: float, work: str) -> dict:
    from trxsfr.base.web import FetchOptions
    from trxsfr.download import DownloadOptions, download

    ports = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ports, delay, urls), daemon=True)
    server.start()
    try:
        base = f"http://127.0.0.1:{ports.get(timeout=60)}"
        options = DownloadOptions(parallel=parallel, fetch=FetchOptions(allow_private=True))
        warm = min(urls, 2 * parallel)  # TensorFlow's import, the decode check's tracing
        download([(f"{base}/img/{i}.jpg", None) for i in range(warm)],
                 os.path.join(work, "warm-up", "class"), options)
        pairs = [(f"{base}/img/{i}.jpg", None) for i in range(urls)]
        start = time.perf_counter()
        summary = download(pairs, os.path.join(work, "timed", "class"), options)
        seconds = time.perf_counter() - start
    finally:
        server.terminate()
        server.join(timeout=10)
    return {"urls": urls, "parallel": parallel, "delay": delay, "seconds": seconds,
            "fetched": summary.fetched, "duplicate": summary.duplicate,
            "not_fetched": sum(summary.dead.values()) + sum(summary.refused.values())
            + sum(summary.failed.values())}


def main(argv=None) -> int:
    from trxsfr.download import DownloadOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--urls", type=int, default=2000, help="URLs downloaded in the timed run.")
    p.add_argument("--parallel", type=int, default=DownloadOptions.parallel,
                   help="download's --parallel (default: its own default).")
    p.add_argument("--delay", type=float, default=0.05, help="Server latency per request, s.")
    p.add_argument("--work", default=None, help="Folder for the downloads (default: a temporary one).")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        r = run(args.urls, args.parallel, args.delay, args.work or tmp)
    rate = r["urls"] / r["seconds"]
    target = 0.8 * r["parallel"] / r["delay"]
    ceiling = r["parallel"] / r["delay"]
    print(f"download: {r['urls']} URLs in {r['seconds']:.2f} s at --parallel {r['parallel']}, "
          f"server latency {1000 * r['delay']:.0f} ms")
    print(f"  {r['fetched']} fetched, {r['duplicate']} duplicate, {r['not_fetched']} not fetched")
    print(f"  {rate:.1f} URLs/s = {rate / ceiling:.2f} x parallel / latency "
          f"({ceiling:.0f} URLs/s); target >= {target:.0f} URLs/s (0.8 x): "
          f"{'met' if rate >= target else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
