"""Helpers for tests that run real servers on localhost: a free port, waiting for /ready, a server in a
thread, and request options for an exact number of frames."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn


def frames(n: int) -> dict:
    """Request options for exactly n frames: the length cap, and no end of speech before it."""
    return {"max_new_tokens": n + 1, "min_new_tokens": n + 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 120.0, proc=None) -> None:
    """Until `url`/ready answers 200; fails early if the server process `proc` exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@contextmanager
def serve_in_thread(config_for_port: Callable[[int], uvicorn.Config]) -> Iterator[str]:
    """Run the uvicorn config `config_for_port(free port)` in a thread until /ready; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(config_for_port(port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
