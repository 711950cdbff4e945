"""`trxsfr serve` under hostile or broken clients: oversized headers, slow clients, deep
JSON, huge numbers, unknown paths, disconnects. One server process serves the module
(with 2 s read timeouts); after each test it still answers `/healthz`.
"""

import json
import math
import re
import shutil
import socket
import threading
import time

import pytest
from helpers import assert_bad_input, run_cli
from test_serve import ServerProcess, b64_file, heldout_files, request

MODEL = "flowers"
TIMEOUT = 2.0  # --header_timeout_seconds and --body_timeout_seconds of the served process


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    base = tmp_path_factory.mktemp("limits") / "models"
    shutil.copytree(trained["version_dir"], base / "1")
    server = ServerProcess("--model_base_path", base, "--model_name", MODEL,
                           "--header_timeout_seconds", TIMEOUT, "--body_timeout_seconds", TIMEOUT)
    host, port = re.match(r"http://([\d.]+):(\d+)$", server.url).groups()
    yield {"server": server, "url": server.url, "address": (host, int(port)),
           "predict": f"{server.url}/v1/models/{MODEL}:predict"}
    server.stop()


@pytest.fixture
def still_serving(served):
    """After the test: the server process lives and answers."""
    yield served
    assert served["server"].proc.poll() is None, served["server"].log[-3000:]
    status, health = request(f"{served['url']}/healthz", timeout=5)
    assert status == 200 and health["status"] == "ok", health


def read_all(sock, limit_seconds=10.0) -> bytes:
    """Everything the server sends until it closes (or a reset), bounded in time."""
    sock.settimeout(limit_seconds)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:  # a reset after the answer, when the server closed on unread bytes
        pass
    return data


def answer(raw: bytes):
    """(status, parsed JSON body) of one raw HTTP/1.1 answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


class HealthTimer:
    """Times GET /healthz on one keep-alive connection, over and over, until stopped."""

    def __init__(self, address):
        import http.client

        self.conn = http.client.HTTPConnection(*address, timeout=10)
        self.times, self.failures, self._stop = [], [], threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        while not self._stop.is_set() and len(self.times) < 2000:
            t0 = time.perf_counter()
            try:
                self.conn.request("GET", "/healthz")
                r = self.conn.getresponse()
                r.read()
                if r.status != 200:
                    self.failures.append(r.status)
            except OSError as e:
                self.failures.append(repr(e))
                return
            self.times.append(time.perf_counter() - t0)
            time.sleep(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(15)
        self.conn.close()

    def p95(self):
        ordered = sorted(self.times)
        return ordered[math.ceil(0.95 * len(ordered)) - 1]


def test_a_1_mib_header_is_refused_at_once_while_others_are_served(still_serving):
    served = still_serving
    waits = []
    with HealthTimer(served["address"]) as health:
        time.sleep(0.2)
        for _ in range(5):
            sock = socket.create_connection(served["address"])
            head = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")

            def send(sock=sock, head=head):
                try:
                    sock.sendall(head)
                except OSError:  # the server closed after its answer: that is the point
                    pass

            t0 = time.perf_counter()
            sender = threading.Thread(target=send)
            sender.start()
            raw = read_all(sock)
            waits.append(time.perf_counter() - t0)
            sender.join(10)
            sock.close()
            status, doc = answer(raw)
            assert status in (431, 400), raw[:300]
            assert doc == {"error": "the request header is over the limit of 65,536 bytes"}
        time.sleep(0.2)
    print(f"\n1 MiB header answered in {max(waits) * 1e3:.1f} ms at most; /healthz meanwhile: "
          f"{len(health.times)} requests, p95 {health.p95() * 1e3:.1f} ms, "
          f"max {max(health.times) * 1e3:.1f} ms")
    assert max(waits) < 1.0, waits
    assert not health.failures and len(health.times) >= 10, (health.failures, len(health.times))
    assert health.p95() < 0.050, sorted(health.times)[-10:]
    # a large header under the limit is served
    status, doc = request(f"{served['url']}/healthz", headers={"X-Big": "a" * 60_000})
    assert status == 200, doc
    assert served["server"].log.count("the request header is over the limit of 65,536 bytes") >= 5


def test_slow_clients_are_cut_off_after_the_timeouts_and_others_are_unaffected(still_serving):
    """Slowloris: a header, and a body, trickled a byte every 0.5 s; and a connection that
    sends nothing. Each is disconnected about TIMEOUT s in, while a normal client is served."""
    served = still_serving
    results = {}

    def trickle(name, start: bytes):
        sock = socket.create_connection(served["address"])
        sock.sendall(start)
        t0 = time.monotonic()
        sock.settimeout(0.5)
        data = b""
        while time.monotonic() - t0 < 4 * TIMEOUT:  # bounded whatever the server does
            try:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            except socket.timeout:
                pass
            except OSError:
                break
            try:
                if start:
                    sock.sendall(b"x")
            except OSError:
                pass
        results[name] = (time.monotonic() - t0, data)
        sock.close()

    clients = [
        threading.Thread(target=trickle, args=("header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")),
        threading.Thread(target=trickle, args=(
            "body", f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{".encode())),
        threading.Thread(target=trickle, args=("silent", b"")),
    ]
    with HealthTimer(served["address"]) as health:
        for c in clients:
            c.start()
        for c in clients:
            c.join(6 * TIMEOUT)
    print(f"\ncut off after {', '.join(f'{k} {v[0]:.2f} s' for k, v in results.items())}; "
          f"/healthz meanwhile: {len(health.times)} requests, p95 {health.p95() * 1e3:.1f} ms")
    for name in ("header", "body", "silent"):
        seconds, data = results[name]
        assert TIMEOUT - 0.1 < seconds < TIMEOUT + 1.5, (name, seconds, data)
    status, doc = answer(results["header"][1])
    assert status == 408 and doc == {"error": "the request header was not received within 2 s"}
    status, doc = answer(results["body"][1])
    assert status == 408 and doc == {"error": "the request body was not received within 2 s"}
    assert results["silent"][1] == b""  # nothing was asked, nothing is answered
    assert not health.failures and len(health.times) >= 20, health.failures
    assert health.p95() < 0.050, sorted(health.times)[-10:]
    log = served["server"].log
    assert re.search(r"trxsfr: warning: cut off client 127\.0\.0\.1:\d+: its request header "
                     r"was not complete after 2 s", log), log[-2000:]
    assert re.search(rf"trxsfr: warning: cut off client 127\.0\.0\.1:\d+: the body of POST "
                     rf"/v1/models/{MODEL}:predict was not complete after 2 s", log), log[-2000:]


def test_deep_json_and_huge_numbers_get_400(still_serving):
    served = still_serving
    bad = {
        "100,000-deep nesting": (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                 "the request body's JSON is nested 100,001 levels deep; "
                                 "at most 64 are allowed"),
        "65-deep nesting": (b'{"instances": ' + b"[" * 64 + b"]" * 64 + b"}",
                            "nested 65 levels deep"),
        "50,000-digit integer": (b'{"instances": [' + b"1" * 50_000 + b"]}",
                                 "the request body holds an integer of 50,000 digits; "
                                 "at most 100 are allowed"),
        "101-digit negative integer": (b'{"instances": [-' + b"9" * 101 + b"]}",
                                       "an integer of 101 digits"),
        # within the limits, but past float32: refused as a value, not a crash
        "100-digit integer as a pixel": (
            json.dumps({"signature_name": "predict_images",
                        "instances": [[[[0.5, 0.5, 0.5]] * 32] * 31 + [[[0.5, 0.5, 0.5]] * 31
                                                                        + [[1, 1, 10 ** 99]]]]}
                       ).encode(), "NaN or infinite"),
    }
    for name, (body, words) in bad.items():
        status, doc = request(served["predict"], body)
        assert status == 400 and set(doc) == {"error"} and words in doc["error"], (name, status, doc)
    # brackets and escapes inside strings are not nesting
    tricky = {"instances": [{"b64": "]]]"}], "signature_name": "[" * 100 + '\\"' + "{" * 100}
    status, doc = request(served["predict"], tricky)
    assert status == 400 and "not found in signature def" in doc["error"], doc
    assert "internal error" not in served["server"].log


def test_unknown_paths_get_tf_servings_json_error(still_serving):
    url = still_serving["url"]
    for method, path, code in (("GET", "/nothing", 404), ("GET", "/v1/nothing", 400),
                               ("GET", "/v1/models/flowers/extra", 400),
                               ("DELETE", "/nothing/at/all", 404), ("POST", "/healthz", 405),
                               ("POST", "/", 405)):
        status, doc = request(url + path, method=method, body=b"" if method == "POST" else None)
        assert status == code and doc == {"error": f"Malformed request: {method} {path}"}, \
            (method, path, status, doc)


def test_client_disconnects_are_logged_as_such(still_serving, fx):
    """A client that sends a request (its body cut short, or whole) and closes before the
    answer is an info line, not an internal error; the server goes on."""
    served = still_serving
    whole = json.dumps({"instances": [{"b64": b64_file(f)} for f in heldout_files(fx)[:4]]}).encode()
    starts = [
        f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        .encode() + b'{"instances": ',
        f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(whole)}"
        f"\r\n\r\n".encode() + whole,
    ]
    for start in starts:
        sock = socket.create_connection(served["address"])
        sock.sendall(start)
        sock.close()  # the whole request's answer takes milliseconds: it usually finds no one
        time.sleep(0.5)
    pattern = rf"client 127\.0\.0\.1:\d+ disconnected before the answer to POST /v1/models/{MODEL}:predict"
    log = served["server"].log
    print(f"\n{len(re.findall(pattern, log))} of 2 disconnects logged")
    assert re.search(pattern, log), log[-2000:]  # the cut body's, at least: that one is certain
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]


def test_read_limits_are_checked_before_serving(trained, tmp_path):
    """Unit and CLI: the limits must be positive and finite; one line, exit 2, nothing loads."""
    from trxsfr.base.config import ServeConfig
    from trxsfr.base.errors import InputError

    bad = {
        "max_header_bytes": (0, -1),
        "header_timeout_seconds": (0.0, -1.0, math.nan, math.inf),
        "body_timeout_seconds": (0.0, -5.0, math.nan, math.inf),
    }
    for field, values in bad.items():
        for value in values:
            with pytest.raises(InputError, match=re.escape(f"--{field} must be")) as e:
                ServeConfig(model_base_path=str(tmp_path), **{field: value}).check()
            assert "\n" not in str(e.value)
    for flag, value, words in (
            ("--max_header_bytes", "0", "--max_header_bytes must be positive, got 0"),
            ("--header_timeout_seconds", "nan", "--header_timeout_seconds must be in (0, 86400]"),
            ("--body_timeout_seconds", "inf", "--body_timeout_seconds must be in (0, 86400]"),
            ("--body_timeout_seconds", "0", "got 0.0")):
        assert_bad_input(run_cli("serve", "--model_base_path", trained["base"], flag, value), words)


def test_json_depth_skips_strings_and_escapes():
    """Unit: what the depth scan counts, against Python's own decoder on tricky texts."""
    from trxsfr.serve.rest import json_depth

    def python_depth(value):
        if isinstance(value, list):
            return 1 + max((python_depth(v) for v in value), default=0)
        if isinstance(value, dict):
            return 1 + max((python_depth(v) for v in value.values()), default=0)
        return 0

    texts = ['[]', '{}', '1', '"[[["', '[["]"], {"a": "}"}]', r'["\"[", "\\", "[\\\"]", [[1]]]',
             r'{"x": "\\\\\"[[["}', '[' * 64 + ']' * 64, r'["\u005b", "\n[", {"k[": [{}]}]']
    for text in texts:
        assert json_depth(text.encode()) == python_depth(json.loads(text)), text
    assert json_depth(b"[" * 3_000_000) == 3_000_000  # past one chunk of the running sums
