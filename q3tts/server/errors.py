"""Every error leaves the server as OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..audio import AudioError
from ..errors import Q3TTSError
from ..serving import QueueFull, SchedulerClosed
from .metrics import BodyTooLarge
from .voices import ConsentRequired, VoiceStoreUnavailable

log = logging.getLogger("q3tts.server")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         405: "invalid_request_error", 409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error",
         431: "request_too_large", 503: "service_unavailable", 504: "timeout_error"}  # fmt: skip


class APIError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(status: int, message: str, code: Optional[str] = None, param: Optional[str] = None) -> dict:
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, code: Optional[str] = None, param: Optional[str] = None,
                   headers: Optional[dict] = None) -> JSONResponse:  # fmt: skip
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


def as_api_error(e: Exception) -> APIError:
    """The library's exceptions, as the HTTP errors they stand for."""
    if isinstance(e, APIError):
        return e
    # The server's own conditions first: QueueFull and SchedulerClosed are Q3TTSErrors too.
    if isinstance(e, QueueFull):
        return APIError(429, str(e), "queue_full")
    if isinstance(e, SchedulerClosed):
        return APIError(503, str(e), "shutting_down")
    if isinstance(e, BodyTooLarge):
        return APIError(413, str(e), "body_too_large")
    if isinstance(e, VoiceStoreUnavailable):  # saved voices are down; built-in voices still serve
        return APIError(503, f"{e}; saved voices are unavailable (built-in voices still work)",
                        "voice_store_unavailable")  # fmt: skip
    if isinstance(e, ConsentRequired):
        return APIError(400, str(e), "consent_required", "consent")
    if isinstance(e, (Q3TTSError, AudioError)):  # every other user-facing error of the library is the client's mistake
        return APIError(400, str(e), "invalid_input")
    log.error("request failed", exc_info=e)
    return APIError(500, f"internal error: {type(e).__name__}", "internal_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, Optional[str]]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    param = ".".join(loc) or None
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), param


def _flat_routes(routes):
    """Routes, with included routers opened (FastAPI keeps each as one entry of candidate routes)."""
    for route in routes:
        candidates = getattr(route, "effective_candidates", None)
        yield from (candidates() if callable(candidates) else [route])


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at `path` (HEAD comes with GET)."""
    methods: set[str] = set()
    for route in _flat_routes(app.router.routes):
        regex, served = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and served and regex.match(path):
            methods |= set(served)
    return sorted(methods)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, "invalid_request", param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names the methods of the first route on the path only
            methods = allowed_methods(app, request.url.path)
            headers = {**(headers or {}), "Allow": ", ".join(methods)}
            message = f"{request.method} is not allowed on {request.url.path}; use {' or '.join(methods)}"
            return error_response(405, message, "method_not_allowed", None, headers)
        return error_response(exc.status_code, str(exc.detail), None, None, headers)

    async def _known(request: Request, exc: Exception):
        e = as_api_error(exc)
        return error_response(e.status, e.message, e.code, e.param)

    for cls in (APIError, Q3TTSError, AudioError, BodyTooLarge, QueueFull, SchedulerClosed, VoiceStoreUnavailable,
                ConsentRequired, Exception):  # fmt: skip
        app.add_exception_handler(cls, _known)  # Exception: a 500 in the same shape, never a traceback
