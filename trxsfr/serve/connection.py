"""One HTTP connection of `serve`: uvicorn's httptools protocol with the limits it lacks.

uvicorn (0.55) has a keep-alive timeout and, with its h11 parser only, a limit
on a request header's size (`h11_max_incomplete_event_size`); it has no read
timeout with either parser. We keep httptools, whose C parser cost 0.10 ms of
server CPU per `/healthz` request on loopback against h11's 0.20 ms (medians of
6 runs of 3,000), and add what `ServeConfig` asks for here, for about 0.01 ms:

- a request header over `max_header_bytes` gets a 431 and the connection is
  closed as soon as the bytes received say so (within one read, at most
  256 KiB), never read whole;
- a header not complete `header_timeout_seconds` after its first byte (or after
  the connection opened) gets a 408 and the connection is closed; a connection
  that never sent a byte is closed without a word;
- a body not complete `body_timeout_seconds` after its header gets a 408 (if no
  answer started) and the connection is closed;
- a client that goes away before its answer is logged as such, at info level.

Each deadline is set once per header or body, so a trickle of bytes cannot
renew it. Between requests, uvicorn's keep-alive timeout closes an idle connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Optional

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from trxsfr.base.config import ServeConfig

log = logging.getLogger(__name__)

# Where a connection is in its current request.
_IDLE, _HEAD, _BODY = "idle", "head", "body"


def guarded_protocol(config: ServeConfig) -> type:
    """The protocol class for uvicorn.Config(http=...), with `config`'s limits."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {
        "max_header_bytes": config.max_header_bytes,
        "header_timeout": config.header_timeout_seconds,
        "body_timeout": config.body_timeout_seconds,
    })


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus a header size limit, header and body read deadlines, and
    disconnects logged; the limits are class attributes (see `guarded_protocol`)."""

    max_header_bytes = ServeConfig.max_header_bytes
    header_timeout = ServeConfig.header_timeout_seconds
    body_timeout = ServeConfig.body_timeout_seconds

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._phase = _IDLE
        self._head_bytes = 0  # bytes received since the current head began (or a little more)
        self._deadline: Optional[asyncio.TimerHandle] = None
        self._too_big = False
        self._closed_by_us = False

    # -- asyncio.Protocol

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        # A connection that sends nothing, or not a whole first header, is held this long.
        self._arm(self.header_timeout, self._header_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._closed_by_us:
            return
        if self._phase != _BODY:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._too_big or (self._phase == _HEAD and self._head_bytes > self.max_header_bytes):
            self._refuse(431, f"the request header is over the limit of "
                              f"{self.max_header_bytes:,} bytes")
        elif self._deadline is None:  # armed once per phase, so a trickle cannot renew it
            if self._phase == _HEAD:
                self._arm(self.header_timeout, self._header_timed_out)
            elif self._phase == _BODY:
                self._arm(self.body_timeout, self._body_timed_out)

    def connection_lost(self, exc) -> None:
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not self._closed_by_us:
            log.info("client %s disconnected before the answer to %s %s", self._who(),
                     cycle.scope.get("method"), cycle.scope.get("path"))
        super().connection_lost(exc)

    # -- httptools parser callbacks (called by super().data_received)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = _HEAD

    def on_headers_complete(self) -> None:
        self._disarm()
        if self._too_big:
            return
        # A whole head can arrive within one read (up to 256 KiB): measure what was parsed.
        if len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers) > self.max_header_bytes:
            self._too_big = True  # refused once the parser returns
            return
        self._phase, self._head_bytes = _BODY, 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._too_big:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._phase, self._head_bytes = _IDLE, 0
        if not self._too_big:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._closed_by_us = True  # uvicorn refuses a request httptools cannot parse
        super().send_400_response(msg)

    # -- deadlines

    def _arm(self, seconds: float, callback) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._phase == _IDLE:  # not a byte of a request: an idle or pre-opened connection
            log.debug("closing connection from %s: no request within %g s", self._who(),
                      self.header_timeout)
            self._closed_by_us = True
            self.transport.close()
            return
        log.warning("cut off client %s: its request header was not complete after %g s",
                    self._who(), self.header_timeout)
        self._refuse(408, f"the request header was not received within {self.header_timeout:g} s")

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        scope = self.cycle.scope
        log.warning("cut off client %s: the body of %s %s was not complete after %g s",
                    self._who(), scope.get("method"), scope.get("path"), self.body_timeout)
        if self.cycle.response_started:
            self._closed_by_us = True
            self.transport.close()
        else:
            self._refuse(408, f"the request body was not received within {self.body_timeout:g} s")

    # -- answers of our own

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with TF Serving's {"error": ...} and close the connection."""
        if status == 431:
            log.warning("refused client %s: %s", self._who(), message)
        body = json.dumps({"error": message}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n",
                 b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n"]
        self._closed_by_us = True
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _who(self) -> str:
        return "%s:%d" % self.client if self.client else "unknown"
