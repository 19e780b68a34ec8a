"""Finding 2: with no keys configured (the laptop default) a web page on another site could drive the
server: a cross-origin multipart form created a voice, the WebSocket accepted any Origin, and any
Host header was served (DNS rebinding)."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import live, wav_bytes
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from q3tts.server import Settings, create_app
from q3tts.server.security import HostPolicy

EVIL = "http://evil.example"


def form_upload(url: str, name: str, headers: dict) -> httpx.Response:
    return httpx.post(url + "/v1/audio/voices", data={"name": name}, headers=headers, timeout=60,
                      files={"audio_sample": ("r.wav", wav_bytes(1.2), "audio/wav")})  # fmt: skip


def test_a_form_posted_from_another_site_creates_no_voice(base_server):
    url, voices = base_server
    r = form_upload(url, "drive-by", {"Origin": EVIL})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert form_upload(url, "null-origin", {"Origin": "null"}).status_code == 403  # sandboxed frame, file: page
    assert httpx.delete(url + "/v1/audio/voices/x", headers={"Origin": EVIL}).status_code == 403
    assert not list(voices.glob("*.safetensors"))
    # the server's own pages, and clients that are not browsers (no Origin), are served
    port = url.rsplit(":", 1)[1]
    assert form_upload(url, "same-origin", {"Origin": f"http://127.0.0.1:{port}"}).status_code == 201
    assert form_upload(url, "no-browser", {}).status_code == 201
    # reading is not a change of state: a GET with a foreign Origin is answered (CORS keeps the page from reading it)
    assert httpx.get(url + "/v1/audio/voices", headers={"Origin": EVIL}).status_code == 200


def test_the_websocket_refuses_a_foreign_origin(custom_tts, tmp_path):
    settings = Settings(model="tiny-cv", voices_dir=tmp_path, warmup=False)
    with live(create_app(settings, tts=custom_tts), settings) as url:
        ws_url = url.replace("http", "ws") + "/v1/audio/speech/stream"
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(ws_url, origin=EVIL, open_timeout=10)
        assert refused.value.response.status_code == 403
        with ws_connect(ws_url, origin=url, open_timeout=10) as ws:  # its own origin
            ws.send(json.dumps({"type": "session.config", "max_new_tokens": 3}))
            ws.send(json.dumps({"type": "input.done"}))
            assert json.loads(ws.recv(timeout=30))["type"] == "session.done"


def test_a_foreign_host_is_not_served(base_server):
    url, _ = base_server
    for host in ("evil.example", "evil.example:8000", "localhost.evil.example"):
        r = httpx.get(url + "/v1/models", headers={"Host": host})
        assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed", host
        assert httpx.get(url + "/ui/", headers={"Host": host}).status_code == 400
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "app.localhost"):
        assert httpx.get(url + "/v1/models", headers={"Host": host}).status_code == 200, host


def test_the_allow_lists_open_up_behind_a_proxy(custom_tts, tmp_path):
    settings = Settings(model="tiny-cv", voices_dir=tmp_path, warmup=False, allowed_hosts=["tts.example.com"],
                        allowed_origins=["https://app.example.com"])  # fmt: skip
    with live(create_app(settings, tts=custom_tts), settings) as url:
        assert httpx.get(url + "/health", headers={"Host": "tts.example.com"}).status_code == 200
        assert httpx.get(url + "/health", headers={"Host": "other.example.com"}).status_code == 400
        body = {"input": "Hi.", "voice": "vivian", "response_format": "pcm", "max_new_tokens": 3}
        ok = httpx.post(url + "/v1/audio/speech", json=body, headers={"Origin": "https://app.example.com"})
        assert ok.status_code == 200
        assert httpx.post(url + "/v1/audio/speech", json=body, headers={"Origin": EVIL}).status_code == 403
    anything = HostPolicy("0.0.0.0", ["*"], ["*"])
    assert anything.host_ok("whatever.example") and anything.origin_ok(EVIL, "x")


def test_host_policy_defaults():
    policy = HostPolicy("0.0.0.0")
    assert policy.host_ok("10.1.2.3:8000") and policy.host_ok("localhost") and not policy.host_ok("evil.example")
    assert HostPolicy("tts.lan").host_ok("TTS.LAN:8000")  # the bound name
    assert HostPolicy("x", ["*.corp.example"]).host_ok("a.b.corp.example")
    assert policy.origin_ok("http://localhost:8000", "localhost:8000")
    assert not policy.origin_ok("http://localhost:8001", "localhost:8000")  # another port: another site
    assert policy.origin_ok("https://tts.example", "tts.example:443")
