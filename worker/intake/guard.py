"""uvicorn's httptools protocol with the deadlines and limits it lacks.

uvicorn bounds only the idle time *between* requests (``timeout_keep_alive``): a client
that connects and sends nothing, or trickles its headers a byte at a time, holds its socket
for ever, and httptools buffers a header of any length in memory.  Here:

- the headers of a request must arrive within ``RECON_INTAKE_HEADER_TIMEOUT`` of its first
  byte (of the connection, for one that sends nothing): 408 and the connection closed;
- the request line and headers may take at most ``RECON_INTAKE_MAX_HEADER_BYTES``: 431 and
  the connection closed, however the bytes are split into headers or packets.

The body's deadline (``RECON_INTAKE_BODY_TIMEOUT``) is kept by the webhook route itself
(worker/intake/app.py), which answers 408 with the reason counted.  The connection cap is
uvicorn's ``limit_concurrency`` (serve.py).  Both limits are read from the settings in the
process that serves, so the class can be named by serve() and rebuilt in spawned workers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from worker import metrics
from worker.settings import get_settings

__all__ = ["GuardedHttpToolsProtocol"]


class _HeadersTooLarge(Exception):
    pass


def _answer(status: int, phrase: str, error: str) -> bytes:
    body = orjson.dumps({"error": error})
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


_TOO_LARGE = _answer(431, "Request Header Fields Too Large", "request headers too large")
_TOO_SLOW = _answer(408, "Request Timeout", "request headers not received in time")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.header_timeout = settings.intake_header_timeout.total_seconds()
        self.max_header_bytes = settings.intake_max_header_bytes
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._too_large = False

    # -------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_head:
            self._arm()
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._too_large:
                self._refuse(_TOO_LARGE, "headers_too_large")
                return
            metrics.count_rejection("malformed_http")
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            # No WebSocket here: the request goes on as a plain one (as uvicorn does).
            self._unsupported_upgrade_warning()
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse(_TOO_LARGE, "headers_too_large")

    # -------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        # A request's deadline starts with its first byte; between requests the keep-alive
        # timeout (uvicorn's) bounds an idle connection.  Called from the parser, so a
        # pipelined request's body is never counted as headers.
        super().on_message_begin()
        self._in_head = True
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.max_header_bytes:
            self._too_large = True
            # Raised through the parser, which stops there; data_received answers 431.
            raise _HeadersTooLarge
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            # uvicorn answers it 503 (Stripe retries); counted here, where it is known.
            metrics.count_rejection("over_capacity")
        super().on_headers_complete()

    # -------------------------------------------------------------- the guards

    def _arm(self) -> None:
        if self._head_timer is None and self.transport is not None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(_TOO_SLOW, "slow_headers")

    def _refuse(self, answer: bytes, reason: str) -> None:
        self._disarm()
        metrics.count_rejection(reason)
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()
