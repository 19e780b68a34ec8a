"""The web UI mounted in `q3tts serve` saves voices through the server's crash-safe VoiceLibrary: a
voice saved in the UI survives a kill -9 of the server and is listed by the API afterwards."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from serverproc import free_port, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def start_server(model: Path, voices: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "q3tts.server", "--model", str(model), "--device", "cpu", "--voices-dir", str(voices),
           "--port", str(port), "--no-warmup", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}", timeout=180, proc=proc)
    except BaseException:
        proc.kill()
        raise
    return proc


def test_a_voice_saved_in_the_ui_survives_kill_9(make_tiny, tmp_path):
    model, voices, port = make_tiny("base"), tmp_path / "voices", free_port()
    url = f"http://127.0.0.1:{port}"
    ref = tmp_path / "ref.wav"
    t = np.arange(24000 * 2) / 24000
    sf.write(ref, (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32), 24000)
    proc = start_server(model, voices, port)
    try:
        # The UI names files only to the browser it gave them to: load the page as a browser would,
        # then make the calls with its client cookie.
        page = httpx.get(f"{url}/ui/", timeout=30)
        cookie = "; ".join(f"{k}={v}" for k, v in page.cookies.items())
        client = Client(f"{url}/ui/", verbose=False, headers={"Cookie": cookie})
        message, *_ = client.predict(handle_file(str(ref)), "A low hum.", False, "from-ui", api_name="/save_reference")
        assert "from-ui" in message
        # written through the library: its index row exists at once (a plain file would only be
        # adopted by the next listing), with the reference's real length
        with sqlite3.connect(voices / "voices.db") as db:
            assert db.execute("SELECT name, mode, duration FROM voices").fetchall() == [("from-ui", "icl", 2.0)]
        proc.send_signal(signal.SIGKILL)  # no shutdown of any kind
        proc.wait(timeout=30)
        proc = start_server(model, voices, port)
        listed = httpx.get(f"{url}/v1/audio/voices", timeout=30).json()
        assert "from-ui" in listed["voices"]
        assert [v["name"] for v in listed["uploaded_voices"]] == ["from-ui"]
        assert (voices / "from-ui.safetensors").is_file()
    finally:
        proc.kill()
        proc.wait(timeout=30)
