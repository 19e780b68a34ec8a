"""Operations and `speed` on a real server: SIGTERM drains (a stream in flight finishes whole, later
requests get 503, the process exits 0), and `speed` time-scales every format and the WebSocket as
the audio streams, equal to scaling the offline audio (tests/test_timescale.py checks the pitch)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("websockets")
import httpx
import uvicorn
from serverproc import frames, free_port, serve_in_thread, wait_ready
from websockets.sync.client import connect as ws_connect

from q3tts.server import Settings, create_app
from q3tts.timescale import time_stretch

pytestmark = pytest.mark.filterwarnings("ignore::q3tts.generate.engine.LengthCapWarning")
ROOT = Path(__file__).resolve().parents[1]
FRAME = 1920


# -- SIGTERM drains ----------------------------------------------------------------------------------


def test_sigterm_lets_the_stream_in_flight_finish_and_refuses_new_requests(make_tiny, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "q3tts.server", "--model", str(make_tiny("custom_voice")), "--device", "cpu",
           "--voices-dir", str(tmp_path), "--port", str(port), "--no-ui", "--no-warmup", "--drain-timeout", "120"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc)
        n = 150  # 2.5 s (unloaded) to 20 s (a busy 2-core machine) of generation: still running at SIGTERM
        body = {"input": "word " * 38, "voice": "vivian", "response_format": "wav", "seed": 1, **frames(n)}
        with httpx.Client(timeout=120) as client, client.stream("POST", url + "/v1/audio/speech", json=body) as r:
            assert r.status_code == 200
            parts = r.iter_bytes()
            first = next(parts)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # the signal handler runs between the server's event-loop ticks
            with httpx.Client(timeout=10) as other:  # a new connection, as a load balancer opens
                late = other.post(url + "/v1/audio/speech", json={"input": "Too late.", "voice": "vivian"})
                ready = other.get(url + "/ready")
                health = other.get(url + "/health")
            assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
            assert late.headers["x-request-id"]
            assert ready.status_code == 503 and ready.json()["reason"] == "draining"
            assert health.status_code == 200
            assert proc.poll() is None  # still serving the stream
            data = first + b"".join(parts)
        wav, sr = sf.read(io.BytesIO(data), dtype="float32")
        assert sr == 24000 and wav.shape[0] == n * FRAME  # the whole file, every frame
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "SIGTERM: draining (1 in flight" in text and "drained after" in text


# -- speed --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(custom_voice_tts, tmp_path_factory):
    app = create_app(Settings(model="tiny-cv", voices_dir=tmp_path_factory.mktemp("voices"), ui=False),
                     tts=custom_voice_tts)  # fmt: skip
    config = lambda port: uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")  # noqa: E731
    with serve_in_thread(config) as url:
        yield url


def speak(url: str, fmt: str, speed: float, n: int = 10) -> httpx.Response:
    body = {"input": "Speed test.", "voice": "ryan", "response_format": fmt, "speed": speed, "seed": 3, **frames(n)}
    r = httpx.post(url + "/v1/audio/speech", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_streams_what_scaling_the_offline_audio_gives(server, custom_voice_tts, speed):
    r = speak(server, "pcm", speed)
    assert r.headers["x-audio-speed"] == f"{speed:g}"
    got = np.frombuffer(r.content, "<i2").astype(np.int32)
    (offline,), _ = custom_voice_tts.generate_custom_voice("Speed test.", speaker="ryan", seed=3, **frames(10))
    want = np.round(np.clip(time_stretch(offline, speed), -1, 1) * 32767)
    assert got.shape[0] == round(10 * FRAME / speed)
    assert np.abs(got - want).max() <= 1  # int16 rounding only: no seam where chunks met


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "aac"])
def test_speed_on_every_format(server, fmt):
    from test_server import decode

    wav, sr = decode(speak(server, fmt, 2.0).content, fmt)
    expected = round(10 * FRAME / 2.0)
    assert sr == 24000 or fmt == "opus"
    if fmt in ("wav", "flac"):
        assert wav.shape[0] == expected
    else:  # lossy codecs pad to whole codec frames and add an encoder delay
        assert expected * 0.9 <= wav.shape[0] * 24000 / sr <= expected + 3000


def test_speed_on_the_websocket(server):
    ws_url = server.replace("http", "ws") + "/v1/audio/speech/stream"
    audio = b""
    with ws_connect(ws_url) as ws:
        ws.send(json.dumps({"type": "session.config", "voice": "ryan", "speed": 0.5, "seed": 3, **frames(10)}))
        ws.send(json.dumps({"type": "input.text", "text": "Speed test."}))
        ws.send(json.dumps({"type": "input.done"}))
        while True:
            msg = ws.recv(timeout=60)
            if isinstance(msg, bytes):
                audio += msg
            elif json.loads(msg)["type"] == "session.done":
                break
        ws.send(json.dumps({"type": "session.close"}))
    assert audio == speak(server, "pcm", 0.5).content  # the same samples as the HTTP stream


def test_speed_out_of_range_is_a_400(server):
    r = httpx.post(server + "/v1/audio/speech", json={"input": "x", "voice": "ryan", "speed": 0.1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "speed"
