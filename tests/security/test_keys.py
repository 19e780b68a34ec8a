"""Finding 4: keys were compared with `in` (short-circuit), a key sent as `?api_key=` was written to
the access log, and `--api-key` put keys in the process list with no word of warning."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import serve_process
from websockets.sync.client import connect as ws_connect

from q3tts.server import Settings
from q3tts.server.__main__ import build_parser, main
from q3tts.server.security import key_matches, redact

SECRET = "s3cret-key-0123456789"


def test_key_matches_checks_every_key():
    keys = ["first-key", SECRET, "third"]
    assert all(key_matches(keys, k) for k in keys)
    for wrong in (None, "", "first", SECRET[:-1], SECRET + "x", "third ", "FIRST-KEY"):
        assert not key_matches(keys, wrong), wrong
    assert not key_matches([], "anything") and not key_matches([], None)


def test_keys_from_the_environment_and_a_file(tmp_path, monkeypatch):
    key_file = tmp_path / "keys"
    key_file.write_text("# one key per line\nfrom-file-1\n\nfrom-file-2\n")
    monkeypatch.setenv("Q3TTS_API_KEYS", "from-env")
    s = Settings(api_key_file=key_file)
    assert s.api_keys == ["from-env", "from-file-1", "from-file-2"]
    help_text = build_parser().format_help()
    assert "process list" in help_text and "--api-key-file" in help_text and "Q3TTS_API_KEYS" in help_text


@pytest.mark.parametrize("content", [None, "", "# only a comment\n"])
def test_a_bad_key_file_is_one_line(tmp_path, capsys, content):
    key_file = tmp_path / "keys"
    if content is not None:
        key_file.write_text(content)
    assert main(["--model", "m", "--api-key-file", str(key_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("q3tts serve: error: ") and err.count("\n") == 1 and "key file" in err


def test_query_string_keys_are_redacted_from_every_log_line(make_tiny, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(SECRET + "\n")
    log = tmp_path / "server.log"
    checkpoint = make_tiny("custom_voice")
    with serve_process(checkpoint, "--no-ui", "--api-key-file", str(key_file), "--voices-dir", str(tmp_path / "v"),
                       "--log-level", "debug", log=log) as (url, proc):  # fmt: skip
        assert SECRET not in " ".join(open(f"/proc/{proc.pid}/cmdline").read().split("\0"))
        assert httpx.get(url + f"/v1/models?api_key={SECRET}").status_code == 401  # HTTP takes the header only
        ok = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {SECRET}"})
        assert ok.status_code == 200
        ws_url = url.replace("http", "ws") + f"/v1/audio/speech/stream?api_key={SECRET}"
        with ws_connect(ws_url, open_timeout=10) as ws:
            ws.send(json.dumps({"type": "session.close"}))
        with ws_connect(url.replace("http", "ws") + "/v1/audio/speech/stream?api_key=wrong-" + SECRET) as ws:
            assert json.loads(ws.recv(timeout=10))["code"] == "invalid_api_key"
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert '"GET /v1/models?api_key=[redacted] HTTP/1.1" 401' in text, text[-2000:]  # the access log
    assert "WebSocket /v1/audio/speech/stream?api_key=[redacted]" in text, text[-2000:]
    assert SECRET not in text, [line for line in text.splitlines() if SECRET in line]


def test_redact():
    assert redact('"GET /v1/x?a=1&api_key=abc&b=2 HTTP/1.1"') == '"GET /v1/x?a=1&api_key=[redacted]&b=2 HTTP/1.1"'
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
