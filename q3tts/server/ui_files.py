"""Which files the web UI may read and serve: only what each browser uploaded to it, or what it
produced for that browser.

Gradio alone is not enough here: an app mounted with `gr.mount_gradio_app` never "launches", and
Gradio checks file paths in API inputs only for launched apps, so a client could pass any server
path where an audio input is expected; Gradio copied the file into its cache (readable through
`/gradio_api/file=`) and our handler cloned it. So, in front of the mounted UI, `UIFileGuard`:
  - gives each browser a random client id with the page (an HttpOnly, SameSite=Strict cookie);
  - records the paths `/gradio_api/upload` returns to it, and the files in the outputs it is sent;
  - refuses (403) any request whose JSON names a file that client did not upload, before Gradio
    sees it, and serves `/gradio_api/file=PATH` (404 otherwise) only for that client's files;
  - refuses `/gradio_api/proxy=` (the UI loads no remote Space).
The UI's handlers check every input path again (`UploadRegistry.read_audio`).

Reference clips and microphone recordings are biometric data, so no copy stays on disk longer than
it is needed. An upload (and Gradio's conversion of it, `clip.wav` beside `clip.mp3`) is deleted:
  - once decoded for a run (the decoded audio stays in memory for reruns with the same clip);
  - when its browser session ends: the last page of that browser closed or reloaded (each open
    page holds a Gradio heartbeat connection; the guard counts them per client);
  - when it has waited `max_age` seconds unused (a clip replaced in the page, or never used);
  - at once when no browser session can use it (an upload without the UI's client cookie), and
    when its session is dropped from the registry (the least recently seen of `max_clients`).
Decoded clips leave memory with their session, or `max_age` seconds after their last use."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Callable, Optional

import numpy as np

COOKIE = "q3tts_ui_client"
MAX_JSON_BODY = 8 * 1024 * 1024  # a UI event body: text fields and file references, never file bytes
UPLOAD_MAX_AGE = 600.0  # seconds an unused upload (or a decoded clip since its last use) is kept
SWEEP_INTERVAL = 30.0  # seconds between checks for expired uploads


class UploadRefused(Exception):
    """A file path the client did not upload (or that was not produced for it)."""


def _real(path: str) -> str:
    return os.path.realpath(path)


class _Client:
    def __init__(self):
        self.uploads: dict[str, float] = {}  # real paths /upload returned to this client -> when
        self.downloads: set[str] = set()  # uploads + files in outputs sent to it


class UploadRegistry:
    """Per-client file sets (at most `max_clients`, least recently seen dropped first), and the
    last `max_decoded` decoded uploads of all clients (a 60 s clip is 5.8 MB as float32, so at
    most about 90 MB). Uploads and decoded clips expire after `max_age` seconds unused."""

    def __init__(self, max_clients: int = 256, max_files: int = 256, max_decoded: int = 16,
                 max_age: float = UPLOAD_MAX_AGE):  # fmt: skip
        self.max_clients, self.max_files, self.max_decoded = max_clients, max_files, max_decoded
        self.max_age = float(max_age)
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        # (client, path) -> (audio, last use)
        self._decoded: OrderedDict[tuple[str, str], tuple[np.ndarray, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._pages: dict[str, int] = {}  # client -> open pages (heartbeat connections)
        self._stop = threading.Event()
        self._sweeper: Optional[threading.Thread] = None

    def _client(self, token: str) -> _Client:
        client = self._clients.pop(token, None) or _Client()
        self._clients[token] = client
        while len(self._clients) > self.max_clients:
            _, dropped = self._clients.popitem(last=False)
            _remove_all(dropped.uploads)
        return client

    def add_uploads(self, token: Optional[str], paths: list[str]) -> None:
        if not token:  # a client that never loaded the page: nothing can use its uploads
            _remove_all(paths)
            return
        now = time.monotonic()
        with self._lock:
            client = self._client(token)
            for path in paths:
                client.uploads[_real(path)] = now
                client.downloads.add(_real(path))
            while len(client.uploads) > self.max_files:  # the oldest go first
                oldest = next(iter(client.uploads))
                del client.uploads[oldest]
                _remove_upload(Path(oldest))

    def add_outputs(self, token: Optional[str], paths: list[str]) -> None:
        if not token:
            return
        with self._lock:
            client = self._client(token)
            client.downloads.update(_real(p) for p in paths)
            _trim(client.downloads, self.max_files)

    def owns_upload(self, token: Optional[str], path: str) -> bool:
        """`path` is an upload of this client, or the file Gradio converted it into (same folder and
        stem, another suffix: gr.Audio writes `clip.wav` beside an uploaded `clip.mp3`)."""
        if not token or not isinstance(path, str):
            return False
        with self._lock:
            client = self._clients.get(token)
            return client is not None and self._is_upload(client, path)

    def may_download(self, token: Optional[str], path: str) -> bool:
        if not token:
            return False
        with self._lock:
            client = self._clients.get(token)
            return client is not None and (_real(path) in client.downloads or self._is_upload(client, path))

    def _is_upload(self, client: _Client, path: str) -> bool:
        real = Path(_real(path))
        return any(Path(u).parent == real.parent and Path(u).stem == real.stem for u in client.uploads)

    def read_audio(self, token: Optional[str], path: str, load: Callable[[str], np.ndarray]) -> np.ndarray:
        """The audio of an upload of this client: decoded once, then its file (and Gradio's conversion
        of it) removed from the cache; later calls with the same path reuse the decoded audio."""
        if not self.owns_upload(token, path):
            raise UploadRefused("this file was not uploaded in this browser session; upload the clip again")
        key = (token, _real(path))
        with self._lock:
            if key in self._decoded:
                self._decoded.move_to_end(key)
                wav = self._decoded[key][0]
                self._decoded[key] = (wav, time.monotonic())
                self._touch(token, key[1])  # in use: its record lives on as long as the decoded clip
                return wav
        if not os.path.isfile(key[1]):
            raise UploadRefused("the uploaded clip is no longer on the server; upload it again")
        try:
            wav = load(key[1])
        finally:  # decoded or not (a file that is no audio), the upload has served its purpose
            _remove_upload(Path(key[1]))
        with self._lock:
            self._decoded[key] = (wav, time.monotonic())
            while len(self._decoded) > self.max_decoded:
                self._decoded.popitem(last=False)
        return wav

    def _touch(self, token: str, path: str) -> None:
        client, real = self._clients.get(token), Path(path)
        for upload in [u for u in (client.uploads if client else ()) if Path(u).parent == real.parent
                       and Path(u).stem == real.stem]:  # fmt: skip
            client.uploads[upload] = time.monotonic()

    # -- expiry ----------------------------------------------------------------------------------
    def page_opened(self, token: Optional[str]) -> None:
        if token:
            with self._lock:
                self._pages[token] = self._pages.get(token, 0) + 1

    def page_closed(self, token: Optional[str]) -> None:
        """A page's heartbeat ended; with the client's last page, its session ends (forget_client)."""
        if not token:
            return
        with self._lock:
            left = self._pages.get(token, 1) - 1
            if left > 0:
                self._pages[token] = left
                return
            self._pages.pop(token, None)
        self.forget_client(token)

    def forget_client(self, token: Optional[str]) -> None:
        """A browser session ended: its uploads leave the disk and its decoded clips the memory."""
        if not token:
            return
        with self._lock:
            client = self._clients.pop(token, None)
            for key in [k for k in self._decoded if k[0] == token]:
                del self._decoded[key]
        if client is not None:
            _remove_all(client.uploads)

    def sweep(self, now: Optional[float] = None) -> int:
        """Delete uploads unused for `max_age` seconds and drop decoded clips unused as long; -> files removed."""
        now = time.monotonic() if now is None else now
        expired: list[str] = []
        with self._lock:
            for client in self._clients.values():
                for path, added in list(client.uploads.items()):
                    if now - added >= self.max_age:
                        expired.append(path)
                        del client.uploads[path]
            for key in [k for k, (_, used) in self._decoded.items() if now - used >= self.max_age]:
                del self._decoded[key]
        return _remove_all(expired)

    def start_sweeper(self, interval: float = SWEEP_INTERVAL) -> None:
        """A daemon thread that sweeps every `interval` seconds until `stop_sweeper`."""
        if self._sweeper is not None:
            return

        def loop():
            while not self._stop.wait(min(interval, self.max_age)):
                self.sweep()

        self._sweeper = threading.Thread(target=loop, name="q3tts-ui-uploads", daemon=True)
        self._sweeper.start()

    def stop_sweeper(self) -> None:
        self._stop.set()


def _trim(paths: set[str], limit: int) -> None:
    while len(paths) > limit:
        paths.pop()


def _remove_upload(path: Path) -> int:
    """The upload, its conversions (same stem) and its folder if that leaves it empty; -> files removed."""
    removed = 0
    for sibling in path.parent.glob(f"{path.stem}.*"):
        if sibling.is_file():
            sibling.unlink(missing_ok=True)
            removed += 1
    try:
        path.parent.rmdir()
    except OSError:
        pass
    return removed


def _remove_all(paths) -> int:
    return sum(_remove_upload(Path(p)) for p in list(paths) if p)


def file_paths(value) -> list[str]:
    """Every `path` of a file-like object (a dict with a "path" or a gradio.FileData meta) in JSON data."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            meta = item.get("meta")
            if "path" in item or (isinstance(meta, dict) and meta.get("_type") == "gradio.FileData"):
                found.append(item.get("path") if isinstance(item.get("path"), str) else "")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def output_files(value) -> list[str]:
    """The files in UI outputs: gradio.FileData objects with a local path, and the paths of
    streamed updates, which Gradio sends as diffs against the last value (["add", ["path"], PATH])."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            meta = item.get("meta")
            path = item.get("path")
            if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData" and isinstance(path, str):
                found.append(path)
            stack.extend(item.values())
        elif isinstance(item, list):
            if (len(item) == 3 and item[0] in ("add", "replace") and isinstance(item[1], list) and item[1]
                    and item[1][-1] == "path" and isinstance(item[2], str)):  # fmt: skip
                found.append(item[2])
            stack.extend(item)
    return found


def client_token(scope) -> Optional[str]:
    for name, value in scope.get("headers") or []:
        if name == b"cookie":
            cookie = SimpleCookie()
            try:
                cookie.load(value.decode("latin-1"))
            except Exception:
                continue
            if COOKIE in cookie and len(cookie[COOKIE].value) == 43:
                return cookie[COOKIE].value
    return None


class UIFileGuard:
    """ASGI middleware in front of the UI mounted at `path` (see the module docstring)."""

    def __init__(self, app, path: str, uploads: UploadRegistry):
        self.app, self.prefix, self.uploads = app, path.rstrip("/"), uploads

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not (
            path == self.prefix or path.startswith(self.prefix + "/")
        ):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        token = client_token(scope)
        new_token = None
        sub = path[len(self.prefix) :]
        if token is None and sub in ("", "/") and scope.get("method") == "GET":
            # The page itself: the browser's id for the session. Only here: a cookie set on each of
            # the requests a page load fires at once would change the id under a running event.
            token = new_token = secrets.token_urlsafe(32)
            scope = dict(scope, headers=[*scope["headers"], (b"cookie", f"{COOKIE}={token}".encode())])
        if sub.startswith("/gradio_api/heartbeat/") and token is not None:
            return await self._heartbeat(scope, receive, send, token)
        if "/proxy=" in sub:
            return await _plain(send, 403, "the UI fetches no remote files", new_token, self.prefix)
        if "/file=" in sub or sub.startswith(("/file/", "/gradio_api/file/")):
            wanted = sub.split("/file=", 1)[1] if "/file=" in sub else sub.split("/file/", 1)[1]
            if not self.uploads.may_download(token, wanted):
                return await _plain(send, 404, "no such file for this browser session", new_token, self.prefix)
            return await self.app(scope, receive, _with_cookie(send, new_token, self.prefix))
        method = scope.get("method", "GET")
        content_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        if method == "POST" and content_type not in (b"multipart/form-data", b"application/x-www-form-urlencoded"):
            body, receive = await _buffer(receive)
            if body is None:
                return await _plain(send, 413, "the UI request body is too large", new_token, self.prefix)
            try:
                data = json.loads(body) if body.strip() else None
            except ValueError:
                data = None  # not JSON: Gradio answers it
            for file_path in file_paths(data):
                if not self.uploads.owns_upload(token, file_path):
                    return await _plain(send, 403, "a file input names a file that was not uploaded in this browser "
                                        "session", new_token, self.prefix)  # fmt: skip
        recorder = _OutputRecorder(self.uploads, token, upload=sub.endswith("/upload"))
        await self.app(scope, receive, recorder.wrap(_with_cookie(send, new_token, self.prefix)))

    async def _heartbeat(self, scope, receive, send, token: str) -> None:
        """A page holds its heartbeat connection open while it is shown, so the page is closed when the
        client disconnects (or the stream ends). The app's call may return before its stream does
        (Gradio streams from a task), so the end is read from the messages, not from the return."""
        closed = False

        def close_once() -> None:
            nonlocal closed
            if not closed:
                closed = True
                self.uploads.page_closed(token)

        async def watched_receive():
            message = await receive()
            if message["type"] == "http.disconnect":
                close_once()
            return message

        async def watched_send(message):
            try:
                await send(message)
            except BaseException:
                close_once()
                raise
            if message["type"] == "http.response.body" and not message.get("more_body"):
                close_once()

        self.uploads.page_opened(token)
        try:
            await self.app(scope, watched_receive, watched_send)
        except BaseException:
            close_once()
            raise


async def _buffer(receive):
    """The whole request body (None if over MAX_JSON_BODY), and a receive that replays it."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_JSON_BODY:
            return None, receive
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def _with_cookie(send, token: Optional[str], prefix: str):
    if token is None:
        return send

    async def send_with_cookie(message):
        if message["type"] == "http.response.start":
            cookie = f"{COOKIE}={token}; Path={prefix or '/'}; HttpOnly; SameSite=Strict"
            message = dict(message, headers=[*message.get("headers", []), (b"set-cookie", cookie.encode())])
        await send(message)

    return send_with_cookie


class _OutputRecorder:
    """Reads the UI's responses as they pass: the paths /upload returns, and the files in outputs
    (JSON bodies and Server-Sent Events `data:` lines)."""

    def __init__(self, uploads: UploadRegistry, token: Optional[str], upload: bool):
        self.uploads, self.token, self.upload = uploads, token, upload
        self.kind = None  # "json" | "sse" | None (not read)
        self.pending = b""

    def wrap(self, send):
        async def recording_send(message):
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                content_type = headers.get(b"content-type", b"").lower()
                if b"text/event-stream" in content_type:
                    self.kind = "sse"
                elif b"json" in content_type and message.get("status", 200) < 300:
                    self.kind = "json"
            elif message["type"] == "http.response.body" and self.kind:
                self.pending += message.get("body", b"")
                if self.kind == "sse":
                    *lines, self.pending = self.pending.split(b"\n")
                    for line in lines:
                        if line.startswith(b"data:"):
                            self._record(line[5:])
                elif not message.get("more_body"):
                    self._record(self.pending)
                    self.pending = b""
                if len(self.pending) > MAX_JSON_BODY:  # nothing of ours is that large: stop reading
                    self.kind, self.pending = None, b""
            await send(message)

        return recording_send

    def _record(self, raw: bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            return
        if self.upload and isinstance(data, list):
            self.uploads.add_uploads(self.token, [p for p in data if isinstance(p, str)])
        elif paths := output_files(data):
            self.uploads.add_outputs(self.token, paths)


async def _plain(send, status: int, message: str, token: Optional[str], prefix: str) -> None:
    from .errors import error_body

    body = json.dumps(error_body(status, message, "file_not_allowed")).encode()
    send = _with_cookie(send, token, prefix)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
