"""Finding 5: every client mistake is a 4xx with a JSON message, and no traceback reaches the log.
Before: a `seed` of 2**64 or more (HTTP and WebSocket) and a lone surrogate in WebSocket
`input.text` ended as internal errors with tracebacks."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import serve_process, wav_bytes
from serverproc import frames
from websockets.sync.client import connect as ws_connect

from q3tts.generate.sampling import SamplingOptions


@pytest.fixture(scope="module")
def server(make_tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mistakes")
    log = tmp / "server.log"
    with serve_process(make_tiny("base"), "--no-ui", "--voices-dir", str(tmp / "voices"), log=log) as (url, _):
        r = httpx.post(url + "/v1/audio/voices", data={"name": "v"}, timeout=60,
                       files={"audio_sample": ("r.wav", wav_bytes(1.2), "audio/wav")})  # fmt: skip
        assert r.status_code == 201, r.text
        yield url, log


def post_json(url: str, raw: bytes) -> httpx.Response:
    return httpx.post(url + "/v1/audio/speech", content=raw, headers={"content-type": "application/json"}, timeout=60)


@pytest.mark.parametrize("raw", [
    b'{"input": "Hi.", "voice": "v", "seed": 18446744073709551616}',  # 2**64
    b'{"input": "Hi.", "voice": "v", "seed": 100000000000000000000000000000}',
    b'{"input": "Hi.", "voice": "v", "seed": -1}',
    b'{"input": "Hi \\ud800 there.", "voice": "v"}',  # a lone surrogate, as JSON escapes can carry
    b'{"input": "Hi.", "voice": "v\\udfff"}',
    b'{"input": "Hi.", "voice": "v", "instructions": "\\ud83d"}',
    b'{"input": "Hi.", "voice": "v", "language": "\\udc80"}',
    b'{"input": "\xff\xfe not utf-8", "voice": "v"}',
    b'{"input": "Hi.", "voice": "v", "max_new_tokens": 1e400}',
    b'{"input": "Hi.", "voice": "v", "temperature": NaN}',
], ids=["seed-2**64", "seed-huge", "seed-negative", "surrogate-input", "surrogate-voice", "surrogate-instructions",
        "surrogate-language", "invalid-utf8", "float-overflow", "nan"])  # fmt: skip
def test_http_mistakes_are_400s(server, raw):
    url, _ = server
    r = post_json(url, raw)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"]


def test_the_largest_seed_the_generator_takes_is_served(server):
    url, _ = server
    body = {"input": "Hi.", "voice": "v", "response_format": "pcm", "seed": 2**64 - 1, **frames(2)}
    r = httpx.post(url + "/v1/audio/speech", json=body, timeout=60)
    assert r.status_code == 200 and len(r.content) == 2 * 1920 * 2


def test_form_and_path_mistakes(server):
    url, _ = server
    r = httpx.post(url + "/v1/audio/voices", files={"name": (None, b"\xff\xfe"), "audio_sample": ("r.wav", b"x")})
    assert r.status_code == 400, r.text
    assert httpx.delete(url + "/v1/audio/voices/%ff%fe").status_code == 404
    assert httpx.delete(url + "/v1/audio/voices/..%2f..%2fetc").status_code == 404


def test_websocket_mistakes_are_error_events_and_the_session_goes_on(server):
    url, _ = server
    with ws_connect(url.replace("http", "ws") + "/v1/audio/speech/stream", open_timeout=10) as ws:
        ws.send('{"type": "session.config", "voice": "v", "seed": 18446744073709551616}')
        assert json.loads(ws.recv(timeout=30))["code"] == "invalid_config"
        ws.send('{"type": "input.text", "text": "Lone \\ud800 surrogate. "}')
        event = json.loads(ws.recv(timeout=30))
        assert event["type"] == "error" and event["code"] == "invalid_text", event
        ws.send(b"\xff\xfe binary")
        assert json.loads(ws.recv(timeout=30))["code"] == "invalid_json"
        ws.send(json.dumps({"type": "session.config", "voice": "v", "seed": 2**64 - 1, **frames(2)}))
        ws.send(json.dumps({"type": "input.text", "text": "Fine now."}))
        ws.send(json.dumps({"type": "input.done"}))
        kinds = []
        while not kinds or kinds[-1] != "session.done":
            message = ws.recv(timeout=60)
            if isinstance(message, str):
                kinds.append(json.loads(message)["type"])
        assert kinds == ["audio.start", "audio.done", "session.done"]


def test_no_traceback_reached_the_log(server):
    url, log = server
    test_http_mistakes_are_400s(server, b'{"input": "x", "voice": "v", "seed": 18446744073709551616}')
    text = log.read_text()
    assert "Traceback" not in text and "internal error" not in text and " 500" not in text, text[-3000:]


def test_sampling_options_bound_the_seed():
    SamplingOptions(seed=2**64 - 1).validate()
    SamplingOptions(seed=0).validate()
    for bad in (2**64, -1):
        with pytest.raises(ValueError, match="seed"):
            SamplingOptions(seed=bad).validate()
