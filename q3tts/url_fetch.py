"""Fetching reference audio from http(s) URLs, with a time limit, a size limit and, for servers, an
address guard.

    data = fetch_url("https://example.com/ref.wav")                      # the API and the CLI
    data = fetch_url(url, guard=PublicAddressGuard(["cdn.example.com"]))  # the server, when allowed

Standard library only (urllib). The guard checks the host name against an allow-list and every
address the name resolves to against the private, loopback, link-local, multicast and reserved
ranges, and then connects to the very address it checked: a DNS answer that changes between the
check and the connection (rebinding) cannot slip a private address through. Redirects are followed
(at most `MAX_REDIRECTS`), each to a new connection that passes the same checks. With a guard, proxy
settings from the environment are ignored: a proxy would make the checked address the proxy's."""

from __future__ import annotations

import fnmatch
import http.client
import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterable, Optional

from .errors import Q3TTSError

DEFAULT_TIMEOUT = 30.0  # seconds for the whole download (connect, redirects, body)
DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # a 60 s reference is 23 MB even as 48 kHz stereo float32 WAV
MAX_REDIRECTS = 5
READ_CHUNK = 64 * 1024
URL_SCHEMES = ("http://", "https://")


class FetchError(Q3TTSError, ValueError):
    """A URL that could not be fetched, was too large or too slow, or is not allowed."""


def is_url(text) -> bool:
    return isinstance(text, str) and text.strip().lower().startswith(URL_SCHEMES)


def shown(url: str) -> str:
    """The URL without credentials or query (a signed URL's query is a secret), for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class PublicAddressGuard:
    """Allows host names matching `hosts` ("cdn.example.com", "*.example.com", "*") that resolve to
    public addresses only."""

    def __init__(self, hosts: Iterable[str]):
        self.hosts = [h.strip().lower().rstrip(".") for h in hosts if h.strip()]

    def check_host(self, host: str) -> None:
        name = (host or "").lower().rstrip(".")
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.hosts):
            raise FetchError(f"ref_audio URLs on host '{host}' are not allowed by this server")

    def check_address(self, host: str, address: str) -> None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise FetchError(f"ref_audio host '{host}' resolves to a private, loopback or reserved address ({ip})")


def _guarded_connection(base: type, guard: PublicAddressGuard) -> type:
    class GuardedConnection(base):
        """Connects only to the addresses the guard passed (all of the host's, checked first)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = self._create_checked

        def _create_checked(self, address, timeout=None, source_address=None):
            host, port = address
            guard.check_host(host)
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as e:
                raise FetchError(f"cannot resolve ref_audio host '{host}': {e.strerror}") from None
            for info in infos:
                guard.check_address(host, info[4][0])
            error: Optional[OSError] = None
            for family, kind, proto, _, sockaddr in infos:  # connect to a checked address, never re-resolve
                sock = socket.socket(family, kind, proto)
                try:
                    sock.settimeout(timeout)
                    sock.connect(sockaddr)
                    return sock
                except OSError as e:
                    sock.close()
                    error = e
            raise error or OSError(f"no address for {host}")

    return GuardedConnection


def _guarded_handlers(guard: PublicAddressGuard) -> list:
    http_conn = _guarded_connection(http.client.HTTPConnection, guard)
    https_conn = _guarded_connection(http.client.HTTPSConnection, guard)

    class GuardedHTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_conn, req)

    class GuardedHTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(https_conn, req, context=self._context)

    return [urllib.request.ProxyHandler({}), GuardedHTTP(), GuardedHTTPS()]


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not is_url(newurl):
            raise FetchError(f"{shown(req.full_url)} redirects to a non-http(s) URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_url(url: str, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES,
              guard: Optional[PublicAddressGuard] = None) -> bytes:  # fmt: skip
    """The body of `url` (http or https), at most `max_bytes`, within `timeout` seconds in all.
    Raises FetchError (one line) for anything else."""
    url = url.strip()
    if not is_url(url):
        raise FetchError(f"not an http(s) URL: {url[:80]}")
    handlers = [*(_guarded_handlers(guard) if guard is not None else []), _Redirects()]
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"User-Agent": "q3tts", "Accept": "audio/*, */*"})
    deadline = time.monotonic() + timeout
    try:
        with opener.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"{shown(url)} is {int(declared)} bytes; at most {max_bytes} are allowed")
            chunks, size = [], 0
            while chunk := response.read1(READ_CHUNK):  # what one socket read brings: the deadline holds
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"{shown(url)} is larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(f"{shown(url)} took longer than {timeout:g} s to download")
                chunks.append(chunk)
            return b"".join(chunks)
    except FetchError:
        raise
    except urllib.error.HTTPError as e:
        raise FetchError(f"{shown(url)}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, FetchError):
            raise reason from None
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise FetchError(f"{shown(url)}: no answer within {timeout:g} s") from None
        raise FetchError(f"cannot fetch {shown(url)}: {getattr(reason, 'strerror', None) or reason}") from None
    except (socket.timeout, TimeoutError):
        raise FetchError(f"{shown(url)}: no answer within {timeout:g} s") from None
    except (http.client.HTTPException, OSError, ValueError) as e:
        raise FetchError(f"cannot fetch {shown(url)}: {str(e) or type(e).__name__}") from None
