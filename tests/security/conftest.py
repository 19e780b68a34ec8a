"""Shared pieces of the hostile-input suite: servers built as `q3tts serve` builds them (our uvicorn
config: h11 with bounded heads, Host/Origin guard), in a thread or as a real process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
from serverproc import free_port, serve_in_thread, wait_ready

from q3tts.api import Qwen3TTS
from q3tts.server import Settings, create_app
from q3tts.server.listen import uvicorn_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::q3tts.generate.engine.LengthCapWarning")


@contextmanager
def live(app, settings: Settings):
    """Serve `app` in a thread with the uvicorn config `q3tts serve` uses; yields the base URL."""

    def config(port: int):
        return uvicorn_config(app, settings.model_copy(update={"port": port}), log_level="warning")

    with serve_in_thread(config) as url:
        yield url


@contextmanager
def serve_process(checkpoint: Path, *flags: str, log: Path | None = None, env: dict | None = None,
                  tree: Path = ROOT):  # fmt: skip
    """`python -m q3tts.server` of the source `tree` as a real process; yields (base URL, Popen)."""
    port = free_port()
    cmd = [sys.executable, "-m", "q3tts.server", "--model", str(checkpoint), "--device", "cpu", "--port", str(port),
           "--no-warmup", *flags]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", **(env or {})}
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, cwd=tree, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()


def wav_bytes(seconds: float, sr: int = 24000, seed: int = 0) -> bytes:
    noise = (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * 0.1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, noise, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="session")
def custom_tts(make_tiny):
    return Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def base_tts(make_tiny):
    return Qwen3TTS.from_pretrained(make_tiny("base"), device="cpu", dtype="float32")


@pytest.fixture()
def base_server(base_tts, tmp_path):
    """A Base server with the web UI and no API keys (the laptop default): (url, voices folder)."""
    settings = Settings(model="tiny-base", voices_dir=tmp_path / "voices", warmup=False)
    with live(create_app(settings, tts=base_tts), settings) as url:
        yield url, tmp_path / "voices"
