"""Finding 1: the web UI must read and serve no server file. Through Gradio's API under /ui a client
passed a server path where an audio input is expected: the file was copied into Gradio's cache
(downloadable from /ui/gradio_api/file=...) and a WAV outside every upload folder became a voice."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import live, wav_bytes

from q3tts.server import Settings, create_app

pytest.importorskip("gradio")
FILE = {"_type": "gradio.FileData"}


def call(client: httpx.Client, api: str, data: list) -> tuple[int, list[dict]]:
    """Gradio's REST API: POST /call/<api>, then read its events; (status, events)."""
    r = client.post(f"/ui/gradio_api/call/{api}", json={"data": data}, timeout=60)
    if r.status_code != 200:
        return r.status_code, []
    events, kind = [], None
    with client.stream("GET", f"/ui/gradio_api/call/{api}/{r.json()['event_id']}", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                events.append({"event": kind, "data": json.loads(line[5:])})
    return 200, events


def planted(tmp_path):
    """A secret text file and a WAV outside every upload folder (under /tmp, which Gradio trusts)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("the server's secret")
    clip = outside / "voice.wav"
    sf.write(clip, (np.random.default_rng(0).standard_normal(48000) * 0.1).astype(np.float32), 24000)
    return secret, clip


def test_a_server_path_in_an_audio_input_is_refused(base_server, tmp_path):
    from gradio.utils import get_upload_folder

    url, voices = base_server
    secret, clip = planted(tmp_path)
    started = time.time()
    with httpx.Client(base_url=url) as client:
        client.get("/ui/")
        for path in (clip, secret):
            status, events = call(client, "save_reference", [{"path": str(path), "meta": FILE}, "", True, "stolen"])
            assert status == 403, events
        status, _ = call(client, "run_clone", ["(none: use the reference below)", {"path": str(clip), "meta": FILE},
                                               "", True, "auto", "Hi.", 3, 0.9, 50, -1, 4])  # fmt: skip
        assert status == 403
        # without Gradio's meta marker, and with a path hidden in an `url`-only object
        status, _ = call(client, "save_reference", [{"path": str(clip)}, "", True, "stolen"])
        assert status == 403
        for path in (secret, clip, "/etc/hostname"):
            r = client.get(f"/ui/gradio_api/file={path}")
            assert r.status_code == 404 and b"secret" not in r.content
        assert client.get("/ui/gradio_api/proxy=http://127.0.0.1:1/x").status_code == 403
    assert not (voices / "stolen.safetensors").exists()
    names = httpx.get(url + "/v1/audio/voices").json()["uploaded_voices"]
    assert names == []
    # Before, Gradio copied the named file into its cache (and the error message gave the copy's path).
    copies = [p for p in Path(get_upload_folder()).rglob("*") if p.name in ("secret.txt", "voice.wav")
              and p.stat().st_mtime >= started]  # fmt: skip
    assert copies == []


def test_an_upload_is_usable_by_its_own_browser_only_and_removed_after_use(base_server):
    url, voices = base_server
    with httpx.Client(base_url=url) as mine, httpx.Client(base_url=url) as other:
        mine.get("/ui/")
        other.get("/ui/")
        (path,) = mine.post("/ui/gradio_api/upload", files={"files": ("ref.wav", wav_bytes(1.5), "audio/wav")}).json()
        assert mine.get(f"/ui/gradio_api/file={path}").content[:4] == b"RIFF"
        assert other.get(f"/ui/gradio_api/file={path}").status_code == 404  # another browser
        status, _ = call(other, "save_reference", [{"path": path, "meta": FILE}, "", True, "theirs"])
        assert status == 403
        status, events = call(mine, "save_reference", [{"path": path, "meta": FILE}, "", True, "mine"])
        assert status == 200 and events[-1]["event"] == "complete", events
        assert "Saved voice **mine**" in events[-1]["data"][0]
        assert (voices / "mine.safetensors").is_file() and not (voices / "theirs.safetensors").exists()
        import os

        assert not os.path.exists(path)  # the cached upload is gone once used
        # The same clip again (a second run in the page) works from the decoded copy.
        status, events = call(mine, "save_reference", [{"path": path, "meta": FILE}, "", True, "mine2"])
        assert events[-1]["event"] == "complete", events


def test_outputs_are_served_to_the_browser_they_were_made_for(base_server):
    url, _ = base_server
    with httpx.Client(base_url=url) as mine:
        mine.get("/ui/")
        (path,) = mine.post("/ui/gradio_api/upload", files={"files": ("ref.wav", wav_bytes(1.5), "audio/wav")}).json()
        status, events = call(mine, "run_clone", ["(none: use the reference below)", {"path": path, "meta": FILE}, "",
                                                  True, "auto", "Hello.", 4, 0.9, 50, -1, 4])  # fmt: skip
        assert status == 200 and events[-1]["event"] == "complete", events
        result = events[-1]["data"][1]
        assert result["meta"] == FILE and result["path"].endswith(".wav")
        assert mine.get(f"/ui/gradio_api/file={result['path']}").content[:4] == b"RIFF"
    assert httpx.get(f"{url}/ui/gradio_api/file={result['path']}").status_code == 404  # no cookie: not that browser


def test_the_hole_is_closed_for_a_logged_in_key_holder_and_for_a_foreign_host(base_tts, tmp_path):
    secret, clip = planted(tmp_path)
    settings = Settings(model="tiny-base", voices_dir=tmp_path / "voices", warmup=False, api_keys=["k"])
    with live(create_app(settings, tts=base_tts), settings) as url:
        with httpx.Client(base_url=url) as client:
            assert client.post("/ui/login", data={"username": "me", "password": "k"}).json()["success"]
            status, _ = call(client, "save_reference", [{"path": str(clip), "meta": FILE}, "", True, "stolen"])
            assert status == 403
            assert client.get(f"/ui/gradio_api/file={secret}").status_code == 404
        rebinding = {"Host": "attacker.example:8000", "Origin": "http://attacker.example:8000"}
        r = httpx.post(url + "/ui/gradio_api/call/save_reference", headers=rebinding,
                       json={"data": [{"path": str(clip), "meta": FILE}, "", True, "stolen"]})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed"
    assert not (tmp_path / "voices" / "stolen.safetensors").exists()


def test_outputs_are_found_in_streamed_diffs_too():
    """A generator's updates reach the page as diffs (["add", ["path"], PATH]) before the completed
    event repeats them whole: the page may fetch the file in between."""
    from q3tts.server.ui_files import output_files

    diff = [[["delete", ["__type__"], None], ["add", ["path"], "/c/a.wav"], ["add", ["meta"], FILE]]]
    whole = {"data": [{"path": "/c/b.wav", "url": "x", "meta": FILE}, "text"]}
    assert output_files(diff) == ["/c/a.wav"] and output_files(whole) == ["/c/b.wav"]
    assert output_files({"data": [{"path": "/etc/passwd"}]}) == []  # no FileData marker: not an output file
