"""Finding 3 (memory from headers) and the server items of finding 7: 8 connections sending
unfinished 40 MB headers grew the server by 306 MiB (a 100 KB header was accepted), a 40 MB
chunked body was a 400 instead of a 413, and `--port 99999` listened on another port."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from conftest import serve_process

from q3tts.server.__main__ import main

MiB = 1024 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def hold_unfinished_headers(port: int, connections: int, header_bytes: int) -> list[socket.socket]:
    """`connections` sockets, each sending one header of `header_bytes` that never ends (no blank
    line), as fast as the server takes it; they stay open."""
    socks = []

    def push(sock: socket.socket) -> None:
        piece = b"a" * MiB
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            for _ in range(header_bytes // MiB):
                sock.sendall(piece)
        except OSError:
            pass  # the server refused the head and closed

    threads = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        socks.append(sock)
        threads.append(threading.Thread(target=push, args=(sock,), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return socks


@pytest.fixture(scope="module")
def server(make_tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    flags = ["--no-ui", "--voices-dir", str(tmp / "voices"), "--header-timeout", "2", "--log-level", "warning"]
    with serve_process(make_tiny("base"), *flags) as (url, proc):
        yield url, proc


def test_held_open_large_headers_cost_little_memory(server):
    url, proc = server
    port = int(url.rsplit(":", 1)[1])
    httpx.get(url + "/health")
    before = rss(proc.pid)
    socks = hold_unfinished_headers(port, connections=16, header_bytes=40 * MiB)
    peak = rss(proc.pid)
    growth = (peak - before) / MiB
    print(f"\n16 connections x 40 MB unfinished headers: RSS {before / MiB:.1f} -> {peak / MiB:.1f} MiB "
          f"(+{growth:.1f} MiB)")  # fmt: skip
    for s in socks:
        s.close()
    assert growth < 20, growth
    assert httpx.get(url + "/health").status_code == 200


def raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b"connection: close" not in data.lower():
                break
        return data


def test_header_size_and_count_limits(server):
    url, _ = server
    r = httpx.get(url + "/health", headers={"X-Big": "a" * 100_000})
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
    many = {f"X-H{i}": "1" for i in range(150)}
    r = httpx.get(url + "/health", headers=many)
    assert r.status_code == 431 and r.json()["error"]["code"] == "too_many_headers"
    assert httpx.get(url + "/health", headers={"X-Ok": "a" * 8000}).status_code == 200


def test_a_slow_request_head_is_cut(server):
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.time()
        s.sendall(b"X-Slow: 1\r\n")
        assert s.recv(100) == b""  # closed by the server, not answered
        assert time.time() - started < 8  # --header-timeout 2
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:  # a silent connection too
        started = time.time()
        assert s.recv(100) == b"" and time.time() - started < 8


def test_a_large_chunked_body_is_a_413(server):
    url, _ = server

    def body(head: bytes = b"", tail: bytes = b""):  # sent chunked: no Content-Length to refuse it by
        yield head
        piece = b"x" * MiB
        for _ in range(40):
            yield piece
        yield tail

    head = (b'--xyz\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n--xyz\r\n'
            b'Content-Disposition: form-data; name="audio_sample"; filename="a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n")  # fmt: skip
    r = httpx.post(url + "/v1/audio/voices", content=body(head, b"\r\n--xyz--\r\n"), timeout=60,
                   headers={"content-type": "multipart/form-data; boundary=xyz"})  # fmt: skip
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text
    r = httpx.post(url + "/v1/audio/speech", content=body(), headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413
    # a body the form parser refuses at its first bytes is still measured: too large is a 413
    r = httpx.post(url + "/v1/audio/voices", content=body(), headers={"content-type": "multipart/form-data; boundary=z"},
                   timeout=60)  # fmt: skip
    assert r.status_code == 413, r.text
    small = httpx.post(
        url + "/v1/audio/voices", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=z"}
    )
    assert small.status_code == 400


@pytest.mark.parametrize("port", ["99999", "0", "-1", "65536"])
def test_a_port_out_of_range_is_refused(port, capsys):
    assert main(["--model", "m", "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.startswith("q3tts serve: error: port: ") and err.count("\n") == 1
