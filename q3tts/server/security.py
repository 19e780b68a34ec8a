"""What stands between the network and the routes: the Host allow-list, the browser Origin check,
API-key comparison and the redaction of keys from log lines.

Why a Host allow-list: with no API keys (the laptop default) a web page the user visits could
point a DNS name of its own at 127.0.0.1 (DNS rebinding) and drive the server as same-origin.
Such a request carries the attacker's name in `Host`, so only our own names are served. IP
literals are always served: rebinding needs a DNS name.

Why an Origin check: a page on another site can post a multipart form (no CORS preflight) or open
a WebSocket to localhost; browsers then send its `Origin`. State-changing requests and WebSockets
that carry a foreign Origin are refused. Clients that are not browsers send no Origin and pass."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import socket
from typing import Iterable, Optional
from urllib.parse import urlsplit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def key_matches(keys: Iterable[str], given: Optional[str]) -> bool:
    """True if `given` is one of `keys`. Every key is compared, each in constant time over equal-length
    digests, so neither the time nor an early exit says how much of a key was right, or which."""
    given_digest = hashlib.sha256((given or "").encode("utf-8", "surrogatepass")).digest()
    found = False
    for key in keys:
        found |= hmac.compare_digest(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest(), given_digest)
    return found and given is not None


def split_host(value: str) -> tuple[str, Optional[str]]:
    """'Example.com:8000' -> ('example.com', '8000'); '[::1]:8000' -> ('::1', '8000')."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host.rstrip("."), port
    return value.rstrip("."), None


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def machine_names() -> set[str]:
    names = {"localhost"}
    for lookup in (socket.gethostname, socket.getfqdn):
        try:
            names.add(lookup().lower())
        except OSError:
            pass
    return names


class HostPolicy:
    """Which `Host` and `Origin` values a request may carry. `allowed_hosts` adds names (`*.example.com`
    for a domain and its subdomains; `*`: any Host, e.g. behind a proxy that checks it);
    `allowed_origins` adds browser origins (`https://app.example.com`; `*`: any)."""

    def __init__(self, bound_host: str, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()):
        self.names = machine_names()
        bound = split_host(bound_host)[0]
        if bound not in WILDCARD_HOSTS:
            self.names.add(bound)
        extra = [h.strip().lower() for h in allowed_hosts if h.strip()]
        self.any_host = "*" in extra
        self.names |= {h for h in extra if not h.startswith("*")}
        self.suffixes = tuple(h[1:] for h in extra if h.startswith("*.")) + (".localhost",)
        origins = [o.strip().lower().rstrip("/") for o in allowed_origins if o.strip()]
        self.any_origin = "*" in origins
        self.origins = set(origins)

    def host_ok(self, host_header: Optional[str]) -> bool:
        if self.any_host or host_header is None:  # no Host at all: HTTP/1.0, not a browser
            return True
        host, _ = split_host(host_header)
        return is_ip(host) or host in self.names or host.endswith(self.suffixes) or f".{host}" in self.suffixes

    def origin_ok(self, origin: Optional[str], host_header: Optional[str]) -> bool:
        """No Origin (not a browser), the request's own origin, or an allowed one."""
        if origin is None or self.any_origin:
            return True
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or host_header is None:
            return False  # "null" (sandboxed frames, file: pages) and anything odd
        default = "443" if parts.scheme == "https" else "80"
        ours = split_host(host_header)
        theirs = (parts.hostname, str(parts.port) if parts.port else None)
        return ours[0] == theirs[0] and (ours[1] or default) == (theirs[1] or default)


class GuardMiddleware:
    """Refuses, before any route runs: a foreign Host (400), a foreign browser Origin on a
    state-changing request or a WebSocket (403), and more than `max_headers` header lines (431)."""

    def __init__(self, app, policy: HostPolicy, max_headers: int):
        self.app, self.policy, self.max_headers = app, policy, max_headers

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        raw = scope.get("headers") or []
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}
        host, origin = headers.get("host"), headers.get("origin")
        if len(raw) > self.max_headers:
            return await refuse(scope, send, 431, f"more than {self.max_headers} request headers", "too_many_headers")
        if not self.policy.host_ok(host):
            return await refuse(scope, send, 400, f"Host '{host}' is not served here; start the server with "
                                "--allowed-host NAME to serve it", "host_not_allowed")  # fmt: skip
        changes_state = scope["type"] == "websocket" or scope.get("method", "GET") not in SAFE_METHODS
        if changes_state and not self.policy.origin_ok(origin, host):
            return await refuse(scope, send, 403, f"requests from the web page at {origin} are not allowed; start "
                                "the server with --allowed-origin ORIGIN to allow them", "origin_not_allowed")  # fmt: skip
        return await self.app(scope, receive, send)


async def refuse(scope, send, status: int, message: str, code: str) -> None:
    """An error in the server's JSON shape; a WebSocket handshake is refused with HTTP 403."""
    if scope["type"] == "websocket":
        return await send({"type": "websocket.close", "code": 1008, "reason": code})
    from .errors import error_body

    body = json.dumps(error_body(status, message, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 400:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- logs -------------------------------------------------------------------------------------------

# `?api_key=...` (browsers cannot set headers on a WebSocket) and the like, in any logged URL.
_SECRET_PARAM = re.compile(r"((?:api[_-]?key|access[_-]?token|token|key|password)=)[^&\s\"']+", re.IGNORECASE)
_BEARER = re.compile(r"(bearer\s+)[^\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    return _BEARER.sub(r"\1[redacted]", _SECRET_PARAM.sub(r"\1[redacted]", text))


class RedactSecrets(logging.Filter):
    """Replaces query-string keys and bearer tokens by [redacted] in a record's message and in each
    of its arguments (kept as arguments: uvicorn's access formatter unpacks them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error", "q3tts", "q3tts.server", "q3tts.ui")


def install_log_redaction() -> None:
    """On every logger the server writes through (a filter on a logger sees only its own records)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
