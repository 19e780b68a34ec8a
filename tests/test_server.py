"""`q3tts serve` end to end: a real uvicorn server on a loopback port, tiny random checkpoints, and the
official `openai` client. Random weights may say end-of-speech at any step, so requests pin their
length with `frames(n)` (min_new_tokens = max_new_tokens): n frames of 1920 samples each."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")  # the server extra; openai and websockets come with dev
pytest.importorskip("av")
pytest.importorskip("openai")
pytest.importorskip("websockets")
import httpx
import openai
import uvicorn
from serverproc import frames, free_port, serve_in_thread, wait_ready
from websockets.sync.client import connect as ws_connect

from q3tts.api import Qwen3TTS
from q3tts.server import Settings, create_app
from q3tts.server.stream import pop_sentences
from q3tts.server.voices import VoiceExists, VoiceLibrary, VoiceNotFound, check_name
from q3tts.voices import BadVoiceName

pytestmark = pytest.mark.filterwarnings("ignore::q3tts.generate.engine.LengthCapWarning")
FRAME = 1920  # samples per codec frame at 24 kHz
FORMATS = ["wav", "pcm", "mp3", "opus", "aac", "flac"]


LONG_TEXT = "word " * 38  # 115 tiny-tokenizer tokens: a length cap of 1775 frames, half a minute of generation
ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def live(app):
    """Serve `app` with uvicorn in a thread; yields the base URL."""
    with serve_in_thread(lambda port: uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")) as url:
        yield url


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, 24000
    if fmt == "aac":  # libsndfile has no AAC: decode with PyAV, which encoded it
        import av

        with av.open(io.BytesIO(data), format="aac") as container:
            frames = list(container.decode(audio=0))
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]), frames[0].sample_rate
    wav, sr = sf.read(io.BytesIO(data), dtype="float32")
    return wav, sr


def wav_bytes(seconds: float, sr: int = 24000, seed: int = 0) -> bytes:
    noise = (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * 0.1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, noise, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def custom_tts(make_tiny):
    return Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def base_tts(make_tiny):
    return Qwen3TTS.from_pretrained(make_tiny("base"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def cv(custom_tts, tmp_path_factory):
    """A CustomVoice server: (base url, app)."""
    app = create_app(Settings(model="tiny-cv", voices_dir=tmp_path_factory.mktemp("cv-voices"), max_text_chars=200),
                     tts=custom_tts)  # fmt: skip
    with live(app) as url:
        yield url, app


@pytest.fixture()
def client(cv):
    return openai.OpenAI(base_url=cv[0] + "/v1", api_key="unused", max_retries=0)


# -- speech -------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True], ids=["create", "with_streaming_response"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_decodes_to_the_generated_length(client, fmt, streaming):
    request = dict(model="tiny-cv", voice="Vivian", input="Hello there.", response_format=fmt, extra_body=frames(8))
    if streaming:
        with client.audio.speech.with_streaming_response.create(**request) as r:
            headers, data = r.headers, b"".join(r.iter_bytes())
    else:
        r = client.audio.speech.create(**request)
        headers, data = r.response.headers, r.content
    wav, sr = decode(data, fmt)
    assert sr == 24000 and headers["x-sample-rate"] == "24000"
    expected = 8 * FRAME
    if fmt in ("mp3", "aac"):  # lossy codecs add encoder delay and pad to whole codec frames
        assert expected <= wav.shape[0] <= expected + 2 * 1152
    else:
        assert wav.shape[0] == expected
    assert np.abs(wav).max() > 0


def test_streamed_pcm_matches_the_offline_api(client, custom_tts):
    kwargs = {**frames(12), "seed": 5}
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="ryan", input="Streaming now.",
                                                            response_format="pcm", extra_body=kwargs) as r:  # fmt: skip
        assert r.headers["content-type"] == "audio/pcm" and r.headers["x-audio-encoding"] == "pcm_s16le"
        parts = list(r.iter_bytes())
    got = np.frombuffer(b"".join(parts), "<i2")
    (want,), _ = custom_tts.generate_custom_voice("Streaming now.", speaker="ryan", **kwargs)
    assert got.shape[0] == 12 * FRAME
    assert np.abs(got - np.round(np.clip(want, -1, 1) * 32767)).max() <= 1


def test_sse_stream_format(cv):
    body = {"input": "Events.", "voice": "vivian", "response_format": "pcm", "stream_format": "sse", **frames(5)}
    with httpx.stream("POST", cv[0] + "/v1/audio/speech", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(audio) == 5 * FRAME * 2
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] == 5


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "invalid_request"),
    ({"input": "Hi.", "voice": "alloy"}, 400, "voice_not_found"),
    ({"input": "", "voice": "vivian"}, 400, "invalid_request"),
    ({"input": "   ", "voice": "vivian"}, 400, "invalid_input"),
    ({"input": "x" * 201, "voice": "vivian"}, 400, "text_too_long"),
    ({"input": "Hi.", "voice": "vivian", "speed": 4.5}, 400, "invalid_request"),
    ({"input": "Hi.", "voice": "vivian", "response_format": "ogg"}, 400, "invalid_request"),
    ({"input": "Hi.", "voice": "vivian", "task_type": "Base"}, 400, "wrong_task_type"),
    ({"input": "Hi.", "voice": "vivian", "language": "klingon"}, 400, "invalid_input"),
    ({"input": "Hi.", "voice": "vivian", "model": "someone-else"}, 404, "model_not_found"),
    ({"input": "Hi.", "voice": "vivian", "max_new_tokens": "many"}, 400, "invalid_request"),
    ([1, 2, 3], 400, "invalid_request"),
])  # fmt: skip
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(cv, body, status, code):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(cv[0] + "/v1/audio/speech", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]
    ok = httpx.post(cv[0] + "/v1/audio/speech", json={"input": "Still here.", "voice": "vivian",
                                                     "response_format": "pcm", **frames(2)})  # fmt: skip
    assert ok.status_code == 200 and len(ok.content) == 2 * FRAME * 2


def test_openai_client_raises_on_errors(client):
    with pytest.raises(openai.BadRequestError, match="speed: Input should be less than or equal to 4"):
        client.audio.speech.create(model="tiny-cv", voice="vivian", input="Hi.", speed=4.5)
    r = httpx.get(str(client.base_url) + "nowhere")
    assert r.status_code == 404 and "error" in r.json()


def test_client_disconnect_cancels_the_job(cv):
    url, app = cv
    body = {"input": LONG_TEXT, "voice": "vivian", "response_format": "pcm", **frames(1700)}
    with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=60) as r:
        next(r.iter_raw())
        assert app.state.scheduler.stats()["active"] == 1
    deadline = time.time() + 20
    while app.state.scheduler.stats()["active"] and time.time() < deadline:
        time.sleep(0.05)
    assert app.state.scheduler.stats()["active"] == 0


def test_full_queue_gets_429_and_long_requests_are_cut_at_the_timeout(custom_tts, tmp_path):
    settings = Settings(model="tiny", voices_dir=tmp_path, max_batch=1, max_queue=0, request_timeout=2.0, warmup=False)
    long = {"input": LONG_TEXT, "voice": "vivian", "response_format": "pcm", **frames(1700)}
    with live(create_app(settings, tts=custom_tts)) as url:
        started = time.time()
        with httpx.stream("POST", url + "/v1/audio/speech", json=long, timeout=60) as r:
            audio = r.iter_raw()
            first = next(audio)
            busy = httpx.post(url + "/v1/audio/speech", json={**long, **frames(2)})
            assert busy.status_code == 429 and busy.json()["error"]["code"] == "queue_full", busy.text
            audio = first + b"".join(audio)
        assert time.time() - started < 15 and 0 < len(audio) < 1000 * FRAME * 2
        assert 'q3tts_errors_total{kind="timeout"} 1.0' in httpx.get(url + "/metrics").text
        # SSE says why its audio stopped
        r = httpx.post(url + "/v1/audio/speech", json={**long, "stream_format": "sse"}, timeout=60)
        events = [line.split(": ", 1)[1] for line in r.text.splitlines() if line.startswith("event: ")]
        assert events[0] == "speech.audio.delta" and events[-1] == "speech.audio.error"
        last = json.loads(r.text.strip().splitlines()[-1].split(": ", 1)[1])
        assert last["error"]["code"] == "request_timeout" and "request_timeout (2 s)" in last["error"]["message"]


def test_models_health_ready_and_metrics(cv):
    url = cv[0]
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "tiny-cv"
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    assert httpx.get(url + "/ready").json()["kind"] == "CustomVoice"
    voices = httpx.get(url + "/v1/audio/voices").json()
    assert "vivian" in voices["voices"] and voices["uploaded_voices"] == []
    httpx.post(url + "/v1/audio/speech", json={"input": "Count me.", "voice": "vivian", **frames(2)})
    text = httpx.get(url + "/metrics").text
    assert 'q3tts_requests_total{method="POST",route="/v1/audio/speech",status="200"}' in text
    assert 'route="/v1/audio/speech",status="400"' in text  # from the bad-request tests
    count = [float(line.split()[-1]) for line in text.splitlines()
             if line.startswith("q3tts_time_to_first_audio_seconds_count")]  # fmt: skip
    assert count and count[0] >= 1
    assert "q3tts_real_time_factor_bucket" in text and "q3tts_queue_depth" in text


# -- WebSocket --------------------------------------------------------------------------------------


def test_websocket_speaks_each_sentence_as_it_completes(cv):
    ws_url = cv[0].replace("http", "ws") + "/v1/audio/speech/stream"
    with ws_connect(ws_url) as ws:
        ws.send(json.dumps({"type": "session.config", "voice": "serena", **frames(4)}))
        ws.send(json.dumps({"type": "input.text", "text": "Hello there. How a"}))
        ws.send("not json")
        ws.send(json.dumps({"type": "input.text", "text": "re you? I am"}))
        events, audio = [], {}

        def receive_until(kind):
            while True:
                msg = ws.recv(timeout=60)
                if isinstance(msg, bytes):  # belongs to the last audio.start (an error event may come between)
                    current = [e for e in events if e["type"] == "audio.start"][-1]["sentence_index"]
                    audio[current] = audio.get(current, b"") + msg
                    continue
                events.append(json.loads(msg))
                if events[-1]["type"] == kind:
                    return events[-1]

        # Two sentences are complete before input.done: both are spoken without waiting for it.
        assert receive_until("audio.done")["sentence_index"] == 0
        assert receive_until("audio.done")["sentence_index"] == 1
        ws.send(json.dumps({"type": "input.text", "text": " fine"}))
        ws.send(json.dumps({"type": "input.done"}))
        done = receive_until("session.done")
        ws.send(json.dumps({"type": "session.close"}))
    starts = [e["sentence_text"] for e in events if e["type"] == "audio.start"]
    assert starts == ["Hello there.", "How are you?", "I am fine"]
    assert done == {"type": "session.done", "utterance_index": 0, "total_sentences": 3}
    assert any(e["type"] == "error" and e["code"] == "invalid_json" for e in events)
    assert [len(audio[i]) for i in range(3)] == [4 * FRAME * 2] * 3


def test_sentence_splitting():
    assert pop_sentences("One. Two? Thr") == (["One.", "Two?"], "Thr")
    assert pop_sentences("Pi is 3.14 and") == ([], "Pi is 3.14 and")
    assert pop_sentences("你好。再见") == (["你好。"], "再见")
    assert pop_sentences("line one\nline") == (["line one"], "line")


# -- API keys -----------------------------------------------------------------------------------


def test_api_keys(custom_tts, tmp_path):
    app = create_app(Settings(model="tiny", voices_dir=tmp_path, api_keys=["secret"], warmup=False), tts=custom_tts)
    body = {"input": "Hi.", "voice": "vivian", "response_format": "pcm", **frames(2)}
    with live(app) as url:
        r = httpx.post(url + "/v1/audio/speech", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="secret", max_retries=0)
        assert good.models.list().data[0].id == "tiny"
        keyed = httpx.post(url + "/v1/audio/speech", json=body, headers={"Authorization": "Bearer secret"})
        assert keyed.status_code == 200
        assert httpx.get(url + "/health").status_code == 200  # probes need no key
        ws_url = url.replace("http", "ws") + "/v1/audio/speech/stream"
        with ws_connect(ws_url) as ws:
            assert json.loads(ws.recv(timeout=10))["code"] == "invalid_api_key"
        with ws_connect(ws_url + "?api_key=secret") as ws:
            ws.send(json.dumps({"type": "session.config", "max_new_tokens": 3}))
            ws.send(json.dumps({"type": "input.done"}))
            assert json.loads(ws.recv(timeout=30))["type"] == "session.done"


def test_settings_from_environment_and_flags(monkeypatch):
    from q3tts.server.__main__ import build_parser, settings_from_args

    monkeypatch.setenv("Q3TTS_API_KEYS", "a, b")
    monkeypatch.setenv("Q3TTS_MAX_BATCH", "3")
    s = Settings()
    assert s.api_keys == ["a", "b"] and s.max_batch == 3
    s = settings_from_args(build_parser().parse_args(["--model", "m", "--port", "9", "--api-key", "k", "--no-warmup"]))
    assert (s.model, s.port, s.api_keys, s.warmup, s.max_batch) == ("m", 9, ["k"], False, 3)
    monkeypatch.setenv("Q3TTS_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    args = ["--allowed-host", "tts.example", "--allowed-host", "*.lan", "--max-header-bytes", "4096"]
    s = settings_from_args(build_parser().parse_args(args))
    assert s.allowed_hosts == ["tts.example", "*.lan"] and s.max_header_bytes == 4096
    assert s.allowed_origins == ["https://a.example", "https://b.example"]


def test_q3tts_serve_help(capsys):
    from q3tts.cli import main

    assert main(["serve", "--help"]) == 0
    assert "--max-batch" in capsys.readouterr().out


def test_bad_settings_are_one_line(capsys, monkeypatch):
    from q3tts.cli import main

    assert main(["serve", "--model", "m", "--max-batch", "0", "--quantize", "int3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("q3tts serve: error: ")
    assert "max_batch: Input should be greater than or equal to 1" in err and "quantize: " in err
    monkeypatch.setenv("Q3TTS_REQUEST_TIMEOUT", "-1")
    assert main(["serve", "--model", "m"]) == 2
    assert "request_timeout: Input should be greater than 0" in capsys.readouterr().err


# -- voices -------------------------------------------------------------------------------------


def upload(url: str, name: str, audio: bytes, ref_text: str | None = None, **extra) -> httpx.Response:
    data = {"name": name, **({"ref_text": ref_text} if ref_text else {}), **extra}
    return httpx.post(url + "/v1/audio/voices", data=data, files={"audio_sample": ("ref.wav", audio, "audio/wav")},
                      timeout=60)  # fmt: skip


def speak_pcm(url: str, voice: str, **extra) -> httpx.Response:
    body = {"input": "Cloned speech.", "voice": voice, "response_format": "pcm", **frames(3), **extra}
    return httpx.post(url + "/v1/audio/speech", json=body, timeout=60)


def test_voices_upload_list_speak_delete_and_survive_a_restart(base_tts, tmp_path):
    settings = Settings(model="tiny-base", voices_dir=tmp_path / "voices", warmup=False)
    with live(create_app(settings, tts=base_tts)) as url:
        r = upload(url, "narrator", wav_bytes(2.0), ref_text="Some words.")
        assert r.status_code == 201, r.text
        assert r.json()["voice"]["mode"] == "icl" and r.json()["voice"]["duration"] == 2.0
        assert upload(url, "xvec", wav_bytes(1.5, sr=16000, seed=1)).json()["voice"]["mode"] == "x_vector"
        assert upload(url, "narrator", wav_bytes(2.0)).status_code == 409
        listed = httpx.get(url + "/v1/audio/voices").json()
        assert listed["voices"] == ["narrator", "xvec"] and listed["builtin_voices"] == []
        assert len(speak_pcm(url, "narrator").content) == 3 * FRAME * 2
        inline = base64.b64encode(wav_bytes(1.2, seed=2)).decode()
        r = speak_pcm(url, "ignored", ref_audio="data:audio/wav;base64," + inline, x_vector_only_mode=True)
        assert r.status_code == 200 and len(r.content) == 3 * FRAME * 2
        assert httpx.delete(url + "/v1/audio/voices/xvec").json()["deleted"] is True
        assert httpx.delete(url + "/v1/audio/voices/xvec").status_code == 404
        assert speak_pcm(url, "xvec").json()["error"]["code"] == "voice_not_found"
    with live(create_app(settings, tts=base_tts)) as url:  # a restart on the same folder
        assert [v["name"] for v in httpx.get(url + "/v1/audio/voices").json()["uploaded_voices"]] == ["narrator"]
        assert len(speak_pcm(url, "narrator").content) == 3 * FRAME * 2


def test_bad_voice_uploads_get_json_errors(base_tts, tmp_path):
    settings = Settings(model="tiny-base", voices_dir=tmp_path, warmup=False, max_upload_bytes=20 * 1024 * 1024)
    ten_minutes = wav_bytes(600.0, sr=16000)  # 19.2 MB: under the size limit, over the length limit
    good = wav_bytes(2.0)
    with live(create_app(settings, tts=base_tts)) as url:
        cases = [
            (upload(url, "../x", good), 400, "invalid_voice_name"),
            (upload(url, "a b", good), 400, "invalid_voice_name"),
            (upload(url, "text", b"this is not audio at all" * 100), 400, "invalid_input"),
            (upload(url, "cut", good[: len(good) // 2]), 400, "truncated_audio"),
            (upload(url, "cut2", good[:30]), 400, "truncated_audio"),
            (upload(url, "short", wav_bytes(0.3)), 400, "invalid_input"),
            (upload(url, "long", ten_minutes), 400, "reference_too_long"),
            (upload(url, "huge", b"\0" * (21 * 1024 * 1024)), 413, "file_too_large"),
            (httpx.post(url + "/v1/audio/voices", data={"name": "nofile"}), 400, "missing_field"),
            (speak_pcm(url, "nobody"), 400, "voice_not_found"),
            (speak_pcm(url, "x", ref_audio="https://example.com/a.wav"), 400, "invalid_ref_audio"),
            (speak_pcm(url, "x", ref_audio="@@@not base64@@@"), 400, "invalid_ref_audio"),
        ]
        for r, status, code in cases:
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
        assert httpx.get(url + "/v1/audio/voices").json()["uploaded_voices"] == []
        assert upload(url, "fine", good).status_code == 201  # still serving
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fine.safetensors", "voices.db"]


def test_voice_names():
    for good in ["Alice_2.v1-x", "_x", "a..b", "x" * 100]:
        assert check_name(good) == good
    for bad in ["../x", ".hidden", "a/b", "", "x" * 101, "v.safetensors", "naïve", "a b"]:
        with pytest.raises(BadVoiceName):
            check_name(bad)


def x_vector_voice(make_tiny):
    tts = Qwen3TTS.from_pretrained(make_tiny("base"), device="cpu", dtype="float32")
    noise = np.random.default_rng(0).standard_normal(36000).astype(np.float32) * 0.1
    return tts.create_voice_clone_prompt((noise, 24000), x_vector_only_mode=True)[0]


def raw_upload(name: str, audio: bytes) -> bytes:
    """The bytes of a voice upload request, to send over a plain socket."""
    req = httpx.Request("POST", "http://127.0.0.1/v1/audio/voices", data={"name": name, "ref_text": "Words."},
                        files={"audio_sample": ("r.wav", audio, "audio/wav")})  # fmt: skip
    body = req.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    return f"POST /v1/audio/voices HTTP/1.1\r\n{head}\r\n".encode() + body


def test_https_with_a_certificate(make_tiny, tmp_path):
    """--ssl-certfile/--ssl-keyfile serve HTTPS (browsers allow the microphone only on secure pages)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    port = free_port()
    cmd = [sys.executable, "-m", "q3tts.server", "--model", str(make_tiny("custom_voice")), "--device", "cpu",
           "--port", str(port), "--voices-dir", str(tmp_path / "voices"), "--no-warmup", "--no-ui",
           "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None and time.time() < deadline, "the HTTPS server did not come up"
            try:
                if httpx.get(f"https://127.0.0.1:{port}/ready", verify=trust, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = {"input": "Hello.", "voice": "vivian", "response_format": "wav", **frames(3)}
        r = httpx.post(f"https://127.0.0.1:{port}/v1/audio/speech", json=body, verify=trust, timeout=60)
        assert r.status_code == 200 and decode(r.content, "wav")[0].shape[0] == 3 * FRAME
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the same port is not served
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_kill_9_mid_upload_leaves_a_consistent_library(make_tiny, tmp_path):
    voices = tmp_path / "voices"
    port = free_port()
    cmd = [sys.executable, "-m", "q3tts.server", "--model", str(make_tiny("base")), "--device", "cpu",
           "--voices-dir", str(voices), "--port", str(port), "--no-warmup", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    url = f"http://127.0.0.1:{port}"

    def start():
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(url, proc=proc)
        return proc

    proc = start()
    try:
        assert upload(url, "keep", wav_bytes(1.5), ref_text="Kept.").status_code == 201
        # One upload sent whole with no wait for the answer, one cut off half-way; then kill -9.
        whole = socket.create_connection(("127.0.0.1", port))
        whole.sendall(raw_upload("racy", wav_bytes(3.0)))
        half = socket.create_connection(("127.0.0.1", port))
        partial = raw_upload("half", wav_bytes(3.0))
        half.sendall(partial[: len(partial) // 2])
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        whole.close()
        half.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    # What a crash at any point of an upload can leave behind, planted on purpose, plus a voice that
    # another tool (`q3tts voices save`) wrote into the same folder.
    (voices / ".upload-dead.safetensors").write_bytes(b"half a file")
    (voices / "..upload-dead.safetensors.tmp").write_bytes(b"half a file")
    for planted in (".upload-dead.safetensors", "..upload-dead.safetensors.tmp"):  # no owner named: by age
        os.utime(voices / planted, (time.time() - 7200, time.time() - 7200))
    (voices / "garbage.safetensors").write_bytes(b"not a voice prompt")
    x_vector_voice(make_tiny).save(voices / "adopted.safetensors")
    with sqlite3.connect(voices / "voices.db") as db:
        db.execute("INSERT INTO voices VALUES ('ghost', 0, 'icl', 'x', 1.0, 'ghost.safetensors')")
    proc = start()
    try:
        names = {v["name"] for v in httpx.get(url + "/v1/audio/voices").json()["uploaded_voices"]}
        assert {"keep", "adopted"} <= names <= {"keep", "adopted", "racy"}, names
        for name in names:  # every listed voice is whole and usable
            assert len(speak_pcm(url, name).content) == 3 * FRAME * 2
        files = {p.name for p in voices.iterdir()} - {"voices.db", "voices.db-journal"}
        assert files == {f"{n}.safetensors" for n in names} | {"garbage.safetensors"}, files
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_library_follows_the_folder(make_tiny, tmp_path):
    item = x_vector_voice(make_tiny)
    lib = VoiceLibrary(tmp_path)
    lib.add("a", item, 1.5)
    with pytest.raises(VoiceExists):
        lib.add("a", item, 1.5)
    item.save(tmp_path / "b.safetensors")  # saved by another tool while the library is open
    (tmp_path / "c.safetensors").write_bytes(b"no voice")
    (tmp_path / "notes.txt").write_text("not ours: left alone")
    assert [(v.name, v.mode) for v in lib.list()] == [("a", "x_vector"), ("b", "x_vector")]
    assert lib.prompt("b").x_vector_only_mode
    (tmp_path / "a.safetensors").unlink()  # deleted by another tool
    with pytest.raises(VoiceNotFound):
        lib.prompt("a")
    lib.delete("b")
    assert lib.list() == [] and not (tmp_path / "b.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "notes.txt", "voices.db"]


def test_web_ui_is_mounted_and_shares_the_served_model(custom_tts, tmp_path):
    pytest.importorskip("gradio", reason="the `ui` extra (gradio) is not installed")
    settings = Settings(model="tiny-cv", voices_dir=tmp_path, warmup=False)
    app = create_app(settings, tts=custom_tts)
    with live(app) as url:
        page = httpx.get(url + "/ui/", follow_redirects=True, timeout=30)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        models = app.state.models
        assert models.info("custom_voice")["name"] == "tiny-cv" and models.info("custom_voice")["loaded"]
        with models.use("custom_voice") as (tts, scheduler):
            assert tts is custom_tts and scheduler is app.state.scheduler  # one model, one batch
        with pytest.raises(LookupError, match="stays loaded"):
            models.unload("tiny-cv")
    keyed = create_app(Settings(model="tiny-cv", voices_dir=tmp_path, warmup=False, api_keys=["k"]), tts=custom_tts)
    with live(keyed) as url:  # with API keys, the UI wants one too
        assert httpx.get(url + "/ui/config").status_code == 401
        assert httpx.post(url + "/ui/login", data={"username": "me", "password": "wrong"}).status_code == 400
        with httpx.Client(base_url=url) as browser:
            assert browser.post("/ui/login", data={"username": "me", "password": "k"}).json()["success"]
            assert browser.get("/ui/config").status_code == 200
    off = create_app(Settings(model="tiny-cv", voices_dir=tmp_path, warmup=False, ui=False), tts=custom_tts)
    with live(off) as url:
        assert httpx.get(url + "/ui/").status_code == 404
