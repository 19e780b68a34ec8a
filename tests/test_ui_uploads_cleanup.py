"""Reference clips uploaded or recorded in the web UI are biometric data: no copy of one stays on disk
once it is used (Gradio's conversion included), when its page closes, after the unused-upload age,
or when no browser session could use it. A real `q3tts serve` app on a loopback port, Gradio's own
upload route and cache folder, and its REST API as a browser's page drives it."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("gradio")
pytest.importorskip("fastapi")
import uvicorn  # noqa: E402
from serverproc import serve_in_thread  # noqa: E402

from q3tts.server import Settings, create_app  # noqa: E402
from q3tts.server.ui_files import UploadRegistry  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::q3tts.generate.engine.LengthCapWarning")
FILE = {"_type": "gradio.FileData"}
NO_VOICE = "(none: use the reference below)"


def clip(seed: int, seconds: float = 1.5, sr: int = 24000) -> np.ndarray:
    """A voice-like clip unique to `seed`: its own pitch and noise, so its copies can be recognised."""
    t = np.arange(int(sr * seconds)) / sr
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * (150 + 10 * seed) * t) + 0.05 * noise).astype(np.float32)


def encoded(samples: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, 24000, format=fmt)
    return buf.getvalue()


def copies_of(samples: np.ndarray, data: bytes, root: Path) -> list[Path]:
    """Files under `root` holding these bytes, or audio that decodes to these samples (any format)."""
    found = []
    for path in [p for p in root.rglob("*") if p.is_file()]:
        try:
            raw = path.read_bytes()
        except OSError:  # removed while we looked
            continue
        if raw == data:
            found.append(path)
            continue
        try:
            audio, _ = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
        except Exception:
            continue
        audio = audio.mean(axis=1)
        n = min(audio.size, samples.size)
        if abs(audio.size - samples.size) < 0.02 * samples.size and np.corrcoef(audio[:n], samples[:n])[0, 1] > 0.99:
            found.append(path)
    return found


def call(client: httpx.Client, api: str, data: list, status: int = 200) -> list[dict]:
    """Gradio's REST API: POST /call/<api>, then its events."""
    r = client.post(f"/ui/gradio_api/call/{api}", json={"data": data}, timeout=60)
    assert r.status_code == status, r.text
    if status != 200:
        return [r.json()]
    events, kind = [], None
    with client.stream("GET", f"/ui/gradio_api/call/{api}/{r.json()['event_id']}", timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                events.append({"event": kind, "data": json.loads(line[5:])})
    return events


def upload(client: httpx.Client, name: str, data: bytes) -> str:
    (path,) = client.post("/ui/gradio_api/upload", files={"files": (name, data, "audio/*")}).json()
    return path


def wait_gone(path: str, timeout: float = 20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not Path(path).exists():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def cache_root() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def serve(tts, tmp_path, **settings):
    app = create_app(Settings(model="tiny", voices_dir=tmp_path / "voices", warmup=False, **settings), tts=tts)
    return serve_in_thread(lambda port: uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))


@pytest.fixture(scope="module")
def base_url(tiny_tts, tmp_path_factory):
    with serve(tiny_tts("base"), tmp_path_factory.mktemp("ui-cleanup")) as url:
        yield url


def test_after_a_clone_in_the_ui_no_copy_of_the_reference_remains(base_url, cache_root):
    # An uploaded FLAC (Gradio converts it to WAV beside it) and a recording (the microphone's WAV).
    cases = [(clip(1), "my voice.flac", "FLAC"), (clip(2), "audio.wav", "WAV")]
    with httpx.Client(base_url=base_url) as page:
        page.get("/ui/")
        for samples, name, fmt in cases:
            data = encoded(samples, fmt)
            path = upload(page, name, data)
            assert copies_of(samples, data, cache_root) == [Path(path)]  # the upload itself, in Gradio's cache
            # language as a user types it: an ISO code (q3tts/languages.py)
            events = call(page, "run_clone", [NO_VOICE, {"path": path, "meta": FILE}, "", True, "en", "Hello.",
                                              4, 0.9, 50, -1, 4])  # fmt: skip
            assert events[-1]["event"] == "complete", events
            assert events[-1]["data"][1]["path"].endswith(".wav")  # the result clip, which is kept for playback
            assert copies_of(samples, data, cache_root) == []
            assert not Path(path).parent.exists()  # the upload's folder went with it
            # a rerun in the same page still works, from the decoded clip in memory
            events = call(page, "run_clone", [NO_VOICE, {"path": path, "meta": FILE}, "", True, "auto", "Hi.",
                                              4, 0.9, 50, -1, 4])  # fmt: skip
            assert events[-1]["event"] == "complete", events


def test_an_unused_upload_is_deleted_when_its_last_page_closes(base_url, cache_root):
    samples = clip(3)
    data = encoded(samples, "WAV")
    with httpx.Client(base_url=base_url) as browser:
        browser.get("/ui/")
        path = upload(browser, "ref.wav", data)
        # Each open page holds Gradio's heartbeat connection; two tabs of one browser share its cookie.
        # (Each line iterator is kept: a dropped one closes its stream.)
        with browser.stream("GET", "/ui/gradio_api/heartbeat/tab-1", timeout=30) as tab1:
            lines1 = tab1.iter_lines()
            assert next(lines1).startswith("data:")
            with browser.stream("GET", "/ui/gradio_api/heartbeat/tab-2", timeout=30) as tab2:
                lines2 = tab2.iter_lines()
                assert next(lines2).startswith("data:")
            time.sleep(1.0)
            assert Path(path).exists()  # the other tab is still open
        assert wait_gone(path), "the upload outlived its pages"
    assert copies_of(samples, data, cache_root) == []


def test_an_upload_without_the_ui_cookie_is_deleted_at_once(base_url, cache_root):
    samples = clip(4)
    data = encoded(samples, "WAV")
    with httpx.Client(base_url=base_url) as no_page:  # never loaded /ui/: no client id
        path = upload(no_page, "ref.wav", data)
    assert not Path(path).exists()
    assert copies_of(samples, data, cache_root) == []


def test_an_upload_left_unused_expires(tiny_tts, tmp_path, cache_root):
    samples = clip(5)
    data = encoded(samples, "WAV")
    with serve(tiny_tts("base"), tmp_path, ui_upload_max_age=1.0) as url, httpx.Client(base_url=url) as page:
        page.get("/ui/")
        path = upload(page, "ref.wav", data)
        assert wait_gone(path, timeout=15), "an unused upload outlived ui_upload_max_age"
        assert copies_of(samples, data, cache_root) == []
        # and a run that names it now is refused in one line, before Gradio looks for the file
        (refusal,) = call(page, "run_clone", [NO_VOICE, {"path": path, "meta": FILE}, "", True, "auto", "Hi.",
                                              4, 0.9, 50, -1, 4], status=403)  # fmt: skip
        assert "not uploaded in this browser session" in refusal["error"]["message"]


def test_the_registry_deletes_the_uploads_of_sessions_it_drops(tmp_path):
    files = []
    for i in range(3):
        folder = tmp_path / f"hash{i}"
        folder.mkdir()
        (folder / "clip.mp3").write_bytes(b"x")
        (folder / "clip.wav").write_bytes(b"y")  # Gradio's conversion
        files.append(str(folder / "clip.mp3"))
    registry = UploadRegistry(max_clients=1, max_files=1)
    registry.add_uploads("a" * 43, [files[0], files[1]])  # one file per session: the older one goes
    assert not Path(files[0]).parent.exists() and Path(files[1]).exists()
    registry.add_uploads("b" * 43, [files[2]])  # one session at a time: the first one's uploads go
    assert not Path(files[1]).parent.exists() and Path(files[2]).exists()
    registry.forget_client("b" * 43)
    assert not Path(files[2]).parent.exists()
