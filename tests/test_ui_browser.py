"""The web UI in a real browser: Chromium (Debian's, /usr/bin/chromium) driven by Playwright, against
`python -m q3tts.server.ui` on tiny random checkpoints. Plus the ModelManager it runs on.

Skips when gradio, playwright or chromium is missing, unless Q3TTS_REQUIRE_BROWSER=1 (CI), where
it fails instead; `tools/setup_browser.sh` installs chromium and ffmpeg (Gradio's streamed audio).
A screenshot is left in test-artifacts/ui.png.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("Q3TTS_CHROMIUM") or (
    "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium") or "chromium"
)
# Without the background-networking flags Chromium's connections are refused on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
REQUIRED = os.environ.get("Q3TTS_REQUIRE_BROWSER", "0") == "1"
MAX_NEW_TOKENS = 16  # tiny random models never end by themselves: 15 frames = 1.2 s of audio


def _missing() -> str | None:
    for module in ("gradio", "playwright.sync_api"):
        try:
            __import__(module)
        except ImportError:
            return f"{module.split('.')[0]} is not installed (pip install -e '.[ui]' playwright)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"chromium not found at {CHROMIUM} (run tools/setup_browser.sh)"
    if REQUIRED and not shutil.which("ffmpeg"):
        return "ffmpeg not found: the UI cannot stream audio (run tools/setup_browser.sh)"
    return None


def _need_browser() -> None:
    reason = _missing()
    if reason:
        if REQUIRED:
            pytest.fail(f"Q3TTS_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui_server(make_tiny, tmp_path_factory):
    _need_browser()
    tmp = tmp_path_factory.mktemp("ui")
    port = _free_port()
    cmd = [sys.executable, "-m", "q3tts.server.ui", "--port", str(port), "--device", "cpu", "--threads", "1",
           "--voices-dir", str(tmp / "voices"), "--model", f"cv={make_tiny('custom_voice')}",
           "--model", f"vd={make_tiny('voice_design')}", "--model", f"base={make_tiny('base')}"]  # fmt: skip
    log = open(tmp / "server.log", "w+")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/ui/"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"the UI server did not start:\n{log.read()[-3000:]}")
            time.sleep(0.3)
        yield url, tmp
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_stats(page, prefix: str) -> str:
    page.wait_for_function(
        f"(document.querySelector('#{prefix}-stats') || {{}}).innerText?.includes('time to first audio')",
        timeout=60_000,
    )
    return page.locator(f"#{prefix}-stats").inner_text()


def _check_audio(page, prefix: str) -> None:
    """The result player holds a fetchable WAV; with ffmpeg the live player streamed into an <audio>."""
    href = page.locator(f"#{prefix}-audio a[download]").get_attribute("href")
    assert href and href.endswith(".wav"), href
    body = page.request.get(href).body()
    assert body[:4] == b"RIFF" and len(body) > 44 + 2 * 24000 // 2, len(body)  # over half a second
    if shutil.which("ffmpeg"):
        src = page.locator(f"#{prefix}-stream audio").get_attribute("src")
        assert src, "the live player got no stream"


def test_ui_in_browser(ui_server):
    from playwright.sync_api import sync_playwright

    url, tmp = ui_server
    ref = tmp / "ref.wav"
    t = np.arange(2 * 24000) / 24000
    sf.write(ref, (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32), 24000)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#custom-run", timeout=30_000)
            page.click("#settings")
            box = page.locator("#max-new-tokens input[type=number]")
            box.fill(str(MAX_NEW_TOKENS))
            box.press("Enter")

            page.fill("#custom-text textarea", "Hello from the browser test.")
            page.click("#custom-run")
            stats = _wait_stats(page, "custom")
            assert "RTF" in stats and "real time" in stats, stats
            _check_audio(page, "custom")

            page.get_by_role("tab", name="Voice Design").click()
            page.fill("#design-description textarea", "a calm, low voice")
            page.fill("#design-text textarea", "Designed speech.")
            page.click("#design-run")
            assert "RTF" in _wait_stats(page, "design")
            _check_audio(page, "design")

            page.get_by_role("tab", name="Voice Clone").click()
            page.set_input_files("#clone-ref input[type=file]", str(ref))
            page.locator("#clone-ref a[download]").wait_for(timeout=20_000)  # the upload is in
            page.fill("#clone-ref-text textarea", "A test tone.")
            page.fill("#clone-text textarea", "Cloned speech.")
            page.click("#clone-run")
            assert "RTF" in _wait_stats(page, "clone")
            _check_audio(page, "clone")
            page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)

            # Design -> Clone keeps the designed voice in the library.
            page.get_by_role("tab", name="Design → Clone").click()
            page.get_by_label("Voice description").last.fill("a bright young voice")
            page.get_by_role("button", name="Design", exact=True).click()
            _wait_stats(page, "design-clone")
            page.get_by_label("Voice name").last.fill("bright")
            page.get_by_role("button", name="Keep as a cloned voice").click()
            page.get_by_text("Saved voice bright").wait_for(timeout=30_000)
            assert (tmp / "voices" / "bright.safetensors").is_file()

            # An error shows as a message, not a traceback.
            page.get_by_role("tab", name="Custom Voice").click()
            page.fill("#custom-text textarea", "")
            page.click("#custom-run")
            page.get_by_text("text is empty").first.wait_for(timeout=20_000)
            assert "Traceback" not in page.content()

            # The Voice Library lists the kept voice; the Models tab shows the models and the
            # memory in use, and unloads one.
            page.get_by_role("tab", name="Voice Library").click()
            page.locator("button:visible", has_text="Refresh").click()
            page.wait_for_function("(document.querySelector('#library-table') || {}).innerText?.includes('bright')",
                                   timeout=20_000)  # fmt: skip
            page.get_by_role("tab", name="Models").click()
            page.locator("button:visible", has_text="Refresh").click()
            page.wait_for_function("(document.querySelector('#models-memory') || {}).innerText?.includes('Memory in use')",
                                   timeout=20_000)  # fmt: skip
            table = page.locator("#models-table").inner_text()
            assert all(name in table for name in ("cv", "vd", "base")), table
            page.locator("button:visible", has_text="Unload").click()  # the model chosen first: cv
            page.get_by_text("Unloaded cv").first.wait_for(timeout=20_000)
            page.screenshot(path=str(ARTIFACTS / "ui-models.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "ui-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert not errors, errors


# ----------------------------------------------------------------------------------------------
# The model manager (no browser)
# ----------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::q3tts.generate.engine.LengthCapWarning")
def test_model_manager_switch_and_memory(make_tiny):
    from q3tts.server.models import ModelManager, ModelUnavailable, parse_model_specs

    specs = parse_model_specs([f"small={make_tiny('custom_voice')}", f"large={make_tiny('custom_voice', seed=1)}",
                               f"clone={make_tiny('base')}"])  # fmt: skip
    models = ModelManager(specs, device="cpu")
    try:
        assert models.info("custom_voice")["name"] == "small" and not models.info("small")["loaded"]
        assert "vivian" in models.info("small")["speakers"]
        with pytest.raises(ModelUnavailable, match="no VoiceDesign model is configured"):
            models.load("voice_design")
        with models.use("custom_voice") as (tts, scheduler):
            job = scheduler.submit(tts.utterances("Hi", speaker="vivian")[0], max_new_tokens=4)
            assert sum(c.shape[0] for c in job.chunks()) > 0
        models.load("clone")
        models.switch("large")  # the active custom_voice model was "small": it is unloaded
        loaded = {e["name"]: e["loaded"] for e in models.entries()}
        assert loaded == {"small": False, "large": True, "clone": True}
        assert models.info("custom_voice")["name"] == "large"
        assert models.memory()["rss_bytes"] > 0
    finally:
        models.close()
    assert not any(e["loaded"] for e in models.entries())
