"""Operations: a request id on every response and log line, JSON logs, and draining on SIGTERM.

- `OpsMiddleware` (outermost): takes the client's `X-Request-ID` (if it is a short token) or makes
  one, sends it back on every HTTP response, and keeps it in a context variable that
  `RequestIdFilter` puts on every log record written while the request runs (worker threads
  started with asyncio.to_thread inherit it). It also counts the requests in flight and, once the
  server drains, answers new ones 503 (`draining`) while /health, /ready and /metrics stay open.
- `DrainingServer`: uvicorn's Server with SIGTERM meaning "drain": stop admitting, /ready says 503,
  let what is in flight finish for up to `drain_timeout` seconds, then shut down and exit 0. A
  second SIGTERM or a SIGINT stops at once (uvicorn's own handling).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import signal
import time
import uuid
from typing import Optional

import uvicorn

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("q3tts_request_id", default="-")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a client's id is echoed only if it is a plain token
ALWAYS_OPEN = ("/health", "/ready", "/metrics")  # answered while draining (probes and scrapes)


class OpsState:
    """What the middleware and the server share: requests in flight and whether we drain."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False
        self.drain_started: Optional[float] = None

    def start_draining(self) -> None:
        if not self.draining:
            self.draining, self.drain_started = True, time.monotonic()


class OpsMiddleware:
    def __init__(self, app, state: OpsState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        try:
            if self.state.draining and scope.get("path") not in ALWAYS_OPEN:
                return await self._refuse(scope, receive, send, rid)

            async def send_with_id(message):
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                await send(message)

            self.state.in_flight += 1
            try:
                await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)
            finally:
                self.state.in_flight -= 1
        finally:
            request_id.reset(token)

    async def _refuse(self, scope, receive, send, rid: str) -> None:
        logging.getLogger("q3tts.server").info("refused %s: the server is draining", scope.get("path"))
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1013, "reason": "the server is shutting down"})
            return
        error = {"message": "the server is shutting down; retry on another replica", "type": "service_unavailable",
                 "param": None, "code": "draining"}  # fmt: skip
        body = json.dumps({"error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close"), (b"retry-after", b"1"), (b"x-request-id", rid.encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class DrainingServer(uvicorn.Server):
    """SIGTERM drains (see the module docstring); uvicorn's own exit follows once drained."""

    def __init__(self, config: uvicorn.Config, state: OpsState, drain_timeout: float):
        super().__init__(config)
        self.ops, self.drain_timeout = state, drain_timeout

    def handle_exit(self, sig: int, frame) -> None:
        if sig == signal.SIGTERM and not self.ops.draining and not self.should_exit:
            # Not recorded in _captured_signals: uvicorn would re-raise it after shutting down,
            # and the process would die of SIGTERM instead of exiting 0.
            logging.getLogger("q3tts.server").info(
                "SIGTERM: draining (%d in flight, up to %gs)", self.ops.in_flight, self.drain_timeout
            )
            self.ops.start_draining()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.ops.draining and not self.should_exit:
            waited = time.monotonic() - (self.ops.drain_started or 0.0)
            if self.ops.in_flight == 0 or waited >= self.drain_timeout:
                log = logging.getLogger("q3tts.server")
                if self.ops.in_flight:
                    log.warning("drain timeout (%gs): %d request(s) cut", self.drain_timeout, self.ops.in_flight)
                else:
                    log.info("drained after %.1fs; shutting down", waited)
                self.should_exit = True
        return await super().on_tick(counter)


# -- logging ----------------------------------------------------------------------------------------


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def configure_logging(level: str, fmt: str) -> None:
    """The root handler every logger (uvicorn's included: run it with log_config=None) writes to."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
