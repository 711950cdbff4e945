"""Fetch one URL safely: http(s) only, public addresses only, bounded in time and size.

`download` and `label` on URLs both fetch through `Fetcher`. What it guarantees:

- Only http and https URLs are fetched, at every redirect hop.
- Unless `allow_private`, no TCP connection is ever opened to an address that is not
  publicly routable (private, loopback, link-local, multicast, reserved, unspecified,
  shared/CGNAT; an IPv4 address inside IPv6 is judged as IPv4). The check runs in the
  connection itself: the host name is resolved once, every address it resolves to is
  checked, and the socket connects to one of those very addresses (`_CheckedBackend`).
  So a DNS answer that changes between a check and a connect (rebinding) cannot reach
  a private address, and every redirect hop and every new pooled connection passes the
  same check. TLS still verifies the certificate against the host name. Proxies from
  the environment are not used: through a proxy the destination could not be checked.
- Each attempt ends within `timeout` seconds of sending the request (connect, each
  read, and the whole body together); a body over `max_bytes` is abandoned as soon as
  Content-Length says so or the streamed bytes pass it, so memory stays bounded.
- 5xx, 408 and 429 answers and timeouts are retried with exponential backoff; other
  failures are not (a 404 stays a 404).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import socket
import time
from typing import Optional

import httpcore
import httpx

from trxsfr.base.errors import InputError

log = logging.getLogger(__name__)

SCHEMES = ("http", "https")
REDIRECTS = (301, 302, 303, 307, 308)
_RETRIED_STATUS = (408, 429)  # and every 5xx
_MAX_RETRY_AFTER = 30.0  # seconds; a longer Retry-After is not waited for
USER_AGENT = "trxsfr (image downloader)"

# How a URL ended, in words that say what a rerun does:
DEAD = "dead"  # the server says it is gone (4xx): final
REFUSED = "refused"  # trxsfr will not fetch or keep it (scheme, address, size, loop): final
FAILED = "failed"  # might work later (timeout, 5xx, network): a rerun tries again


@dataclasses.dataclass(frozen=True)
class FetchOptions:
    """How far one fetch may go. `max_bytes` counts the body as received (decoded)."""

    timeout: float = 10.0  # seconds per attempt
    retries: int = 3  # further attempts after a 5xx, 408, 429 or a timeout
    backoff: float = 0.5  # seconds before the first retry; doubles each time
    max_redirects: int = 10
    max_bytes: int = 20_000_000
    allow_private: bool = False


@dataclasses.dataclass(frozen=True)
class Fetched:
    url: str  # as asked
    final_url: str  # after redirects
    data: bytes
    content_type: str  # as the server declared it ("" when it did not)


class FetchError(Exception):
    """One URL could not be fetched: `reason` in a few words, `status` DEAD, REFUSED or FAILED."""

    def __init__(self, reason: str, status: str = REFUSED):
        super().__init__(reason)
        self.reason = reason
        self.status = status


class _AddressRefused(Exception):
    """Raised inside a connection attempt; travels out of httpx unchanged."""


def size_words(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 1_000_000 else f"{n:,} bytes"


def check_url(url: str) -> httpx.URL:
    """`url` parsed, if it is an http(s) URL with a host.

    Raises:
        FetchError: (REFUSED) another scheme, no host, or not a URL.
    """
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise FetchError(f"not a valid URL ({e})") from e
    if not parsed.scheme:
        raise FetchError("not a URL (no http:// or https://)")
    if parsed.scheme not in SCHEMES:
        raise FetchError(f"only http and https URLs are fetched, not {parsed.scheme}://")
    if not parsed.host:
        raise FetchError("no host in URL")
    return parsed


def address_refusal(address: str) -> Optional[str]:
    """Why a connection to `address` (an IP) is refused without allow_private, or None."""
    ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone index
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if (not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_loopback
            or ip.is_link_local or ip.is_unspecified):
        return f"private address {ip} refused (--allow_private)"
    return None


class _UnknownHost(httpcore.ConnectError):
    """The name does not exist (not: the resolver could not be reached)."""


def checked_addresses(host: str, port: int, allow_private: bool = False) -> list[str]:
    """The addresses `host` resolves to, each one checked unless `allow_private`.

    Raises:
        _AddressRefused: one of them is not public (a host answering with a public and a
            private address is refused: its owner chooses which one we would reach).
        httpcore.ConnectError: the name does not resolve (_UnknownHost: does not exist).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        gone = e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME))
        raise (_UnknownHost if gone else httpcore.ConnectError)(
            f"cannot resolve host {host} ({e.strerror})") from e
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:
        refusal = None if allow_private else address_refusal(address)
        if refusal:
            raise _AddressRefused(refusal)
    return addresses


class _CheckedBackend(httpcore.SyncBackend):
    """Opens TCP connections only to the checked addresses of a host (see the module doc)."""

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        error: Optional[Exception] = None
        # In the resolver's order, falling back to the next address as browsers do.
        for address in checked_addresses(host, port, self.allow_private):
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as e:
                error = e
        raise error or httpcore.ConnectError(f"no address for {host}")


class _CheckedTransport(httpx.HTTPTransport):
    """httpx's own transport, with its connection pool built on `_CheckedBackend`."""

    def __init__(self, limits: httpx.Limits, allow_private: bool):
        super().__init__(limits=limits, trust_env=False)
        # httpx builds its pool without a way to pass a network backend: build the same
        # pool with ours. Fail closed if httpx ever stops keeping it where we replace it.
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError("this httpx version keeps its pool elsewhere; the address check "
                               "cannot be installed")
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CheckedBackend(allow_private),
        )


class Fetcher:
    """A pool of connections shared by threads: `fetch(url)` may be called concurrently.

    Use as a context manager, or call `close()`.
    """

    def __init__(self, options: FetchOptions = FetchOptions(), connections: int = 16):
        self.options = options
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.Client(
            transport=_CheckedTransport(limits, options.allow_private), trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(options.timeout),
            # Images are compressed already; identity also keeps a compression bomb out.
            headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5",
                     "Accept-Encoding": "identity"},
        )

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def fetch(self, url: str) -> Fetched:
        """The body of `url` after redirects.

        Raises:
            FetchError: with a short reason ("HTTP 404", "timeout after 10 s",
                "redirect loop", "over 20 MB", "private address 127.0.0.1 refused
                (--allow_private)") and whether a rerun may succeed (`status`).
        """
        current = check_url(url)
        seen = {str(current)}
        for _ in range(self.options.max_redirects + 1):
            response = self._with_retries(current)
            if isinstance(response, Fetched):
                return dataclasses.replace(response, url=url)
            try:
                current = current.join(response)  # a Location header, relative or absolute
            except (httpx.InvalidURL, ValueError) as e:
                raise FetchError(f"redirect to an invalid URL ({e})") from None
            if current.scheme not in SCHEMES:
                raise FetchError(f"redirect to {current.scheme}:// refused (only http and https)")
            if str(current) in seen:
                raise FetchError("redirect loop")
            seen.add(str(current))
        raise FetchError(f"more than {self.options.max_redirects} redirects")

    def _with_retries(self, url: httpx.URL):
        """One hop: a Fetched, or the Location to go to next."""
        options = self.options
        for attempt in range(options.retries + 1):
            wait = options.backoff * 2 ** attempt
            try:
                return self._attempt(url)
            except _Retry as e:
                if attempt == options.retries:
                    tries = f" ({attempt + 1} tries)" if attempt else ""
                    raise FetchError(e.reason + tries, FAILED) from None
                if e.retry_after is not None:
                    wait = max(wait, min(e.retry_after, _MAX_RETRY_AFTER))
                log.debug("%s: %s; retrying in %.2f s", url, e.reason, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _attempt(self, url: httpx.URL):
        options = self.options
        deadline = time.monotonic() + options.timeout
        timed_out = f"timeout after {options.timeout:g} s"
        try:
            with self._client.stream("GET", url) as response:
                status = response.status_code
                if status in REDIRECTS and "location" in response.headers:
                    return response.headers["location"]
                if status >= 500 or status in _RETRIED_STATUS:
                    raise _Retry(f"HTTP {status}", _retry_after(response))
                if status >= 400:
                    raise FetchError(f"HTTP {status}", DEAD)
                if status != 200:
                    raise FetchError(f"HTTP {status} (expected 200)")
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > options.max_bytes:
                    raise FetchError(f"over {size_words(options.max_bytes)}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > options.max_bytes:
                        raise FetchError(f"over {size_words(options.max_bytes)}")
                    if time.monotonic() > deadline:  # a server trickling bytes
                        raise _Retry(timed_out)
                return Fetched(str(url), str(url), bytes(body),
                               response.headers.get("content-type", ""))
        except _AddressRefused as e:
            raise FetchError(str(e)) from None
        except httpx.InvalidURL as e:
            raise FetchError(f"not a valid URL ({e})") from None
        except httpx.TimeoutException:
            raise _Retry(timed_out) from None
        except httpx.ConnectError as e:
            raise FetchError(_connect_reason(e), _connect_status(e)) from None
        except (httpx.TransportError, httpx.DecodingError) as e:
            raise FetchError(f"connection broken: {_words(e)}", FAILED) from None


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: Optional[float] = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def _retry_after(response: httpx.Response) -> Optional[float]:
    try:  # seconds only; an HTTP date is rare enough to fall back to the backoff
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _words(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:160]


def _causes(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__


def _connect_reason(error: httpx.ConnectError) -> str:
    text = _words(error)
    if text.startswith("cannot resolve host"):  # ours, with the host's name
        return text
    return "cannot connect: " + re.sub(r"^\[Errno -?\d+\] ", "", text)


def _connect_status(error: httpx.ConnectError) -> str:
    """A name that does not exist is DEAD; a refused connection or an unreachable
    resolver might be a passing outage: FAILED, so a rerun tries again. (httpcore's pool
    re-raises `from None`: the exception's class carries this, not its cause.)"""
    return DEAD if any(isinstance(c, _UnknownHost) for c in _causes(error)) else FAILED


# ---------------------------------------------------------------- URL lists

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def looks_like_url(text: str) -> bool:
    """True for "scheme://..." (any scheme: a file:// or ftp:// input is a URL to refuse,
    not a file name to look for)."""
    return bool(_SCHEME.match(text.strip()))


def read_url_list(path: str) -> list[str]:
    """The URLs of a text file: one per line; blank lines and lines starting with # are
    skipped, as is what follows " #" on a line. Lines are returned as written (stripped):
    `Fetcher.fetch` refuses those that are no http(s) URL, with a reason.

    Raises:
        InputError: the file cannot be read as UTF-8 text.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read URL list {path}: {getattr(e, 'strerror', None) or e}") from e
    urls = []
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            urls.append(line)
    return urls
