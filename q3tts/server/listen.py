"""The uvicorn server `q3tts serve` runs: h11 with a bounded request head, a deadline to send it,
keep-alive and connection limits, and keys redacted from the logs.

Why not uvicorn's default (httptools): it buffers a request head of any size, so 8 connections
sending unfinished 40 MB headers grew the server by 306 MiB. Here a head is refused with 431 once
it passes `max_header_bytes`, and a connection that has not sent a whole head within
`header_timeout` seconds is closed (slow-loris clients)."""

from __future__ import annotations

import asyncio
import json
from typing import Optional

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .security import install_log_redaction
from .settings import Settings


def _too_large_response(limit: int) -> bytes:
    error = {"message": f"the request head is over {limit} bytes", "type": "invalid_request_error", "param": None,
             "code": "headers_too_large"}  # fmt: skip
    body = json.dumps({"error": error}).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a size limit and a deadline on each request head."""

    max_head_bytes = 32 * 1024
    head_timeout = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: Optional[asyncio.TimerHandle] = None
        self._arm_head_deadline()

    def connection_lost(self, exc) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_size(data) > self.max_head_bytes:
            self.transport.write(_too_large_response(self.max_head_bytes))
            self.transport.close()
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self._head_deadline is not None:
            self._head_deadline.cancel()  # the head is in: its deadline no longer applies
            self._head_deadline = None

    def _head_size(self, data: bytes) -> int:
        """Bytes of the request head so far, with `data` (body bytes after the head do not count)."""
        pending = self.conn.trailing_data[0]
        tail = pending[-3:]
        end = (tail + data).find(b"\r\n\r\n")
        return len(pending) + (end + 4 - len(tail) if end >= 0 else len(data))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()  # the next request head on this connection has its own deadline

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_overdue)

    def _head_overdue(self) -> None:
        self._head_deadline = None
        idle = self.cycle is None or self.cycle.response_complete
        if self.conn.their_state is h11.IDLE and idle and not self.transport.is_closing():
            self.transport.close()  # no whole request head within head_timeout seconds


def uvicorn_config(app, settings: Settings, log_level: str = "info", **overrides) -> uvicorn.Config:
    """The uvicorn Config for `app` under `settings`' connection limits."""
    protocol = type("Q3TTSH11Protocol", (LimitedH11Protocol,),
                    {"max_head_bytes": settings.max_header_bytes, "head_timeout": settings.header_timeout})  # fmt: skip
    options = dict(
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        http=protocol,
        h11_max_incomplete_event_size=2 * settings.max_header_bytes,  # a backstop: heads are cut at 1x above
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_timeout,
        # A WebSocket message may carry a base64 reference clip (session.config ref_audio).
        ws_max_size=settings.max_upload_bytes * 4 // 3 + (1 << 20),
        server_header=False,
    )
    options.update(overrides)
    config = uvicorn.Config(app, **options)
    install_log_redaction()  # after Config(), which (re)configures uvicorn's loggers
    return config
