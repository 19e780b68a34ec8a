"""Many models in one `q3tts serve`: `--model NAME=PATH` repeated, routing by `model` / `task_type`,
least-recently-used unloading under `--max-loaded-models`, /v1/models, per-model metrics; and the web
UI's model switch on the server's own manager (it frees the model it leaves, or refuses first).
Real servers on loopback ports, tiny random checkpoints."""

from __future__ import annotations

import base64
import gc
import io
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
import httpx
from serverproc import frames, free_port, wait_ready

from q3tts.server.models import ModelManager, ModelsBusy, parse_model_specs

pytestmark = pytest.mark.filterwarnings("ignore::q3tts.generate.engine.LengthCapWarning")
ROOT = Path(__file__).resolve().parents[1]
FRAME = 1920


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def ref_audio_b64(seconds: float = 1.5) -> str:
    t = np.arange(int(24000 * seconds)) / 24000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 24000, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


REQUESTS = {  # one request per kind, each naming its model
    "cv": {"voice": "vivian"},
    "vd": {"instructions": "A calm, low voice."},
    "clone": {"ref_audio": ref_audio_b64(), "x_vector_only_mode": True},
}


@pytest.fixture(scope="module")
def three_models(make_tiny, tmp_path_factory):
    """`q3tts serve` with a CustomVoice, a VoiceDesign and a Base model, at most 2 loaded: (url, proc, log)."""
    tmp = tmp_path_factory.mktemp("three")
    port, log = free_port(), tmp / "server.log"
    cmd = [sys.executable, "-m", "q3tts.cli", "serve", "--model", f"cv={make_tiny('custom_voice')}",
           "--model", f"vd={make_tiny('voice_design')}", "--model", f"clone={make_tiny('base')}",
           "--max-loaded-models", "2", "--device", "cpu", "--voices-dir", str(tmp / "voices"), "--port", str(port),
           "--no-ui", "--log-format", "json"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc=proc)
        yield url, proc, log
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def speak(url: str, model, n: int = 4, **extra) -> httpx.Response:
    body = {"input": "Hello there.", "response_format": "pcm", **frames(n), **extra}
    if model is not None:
        body["model"] = model
    return httpx.post(url + "/v1/audio/speech", json=body, timeout=120)


def loaded(url: str) -> dict[str, bool]:
    return {m["id"]: m["loaded"] for m in httpx.get(url + "/v1/models").json()["data"]}


def test_three_models_take_turns_within_two_loaded(three_models):
    url, proc, _ = three_models
    cards = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
    assert {k: (c["kind"], c["loaded"], c["default"]) for k, c in cards.items()} == {
        "cv": ("CustomVoice", True, True), "vd": ("VoiceDesign", False, False), "clone": ("Base", False, False)}  # fmt: skip
    assert all(c["size"] == "tiny" and c["weights_bytes"] > 0 for c in cards.values())
    rss = []
    for _round in range(3):
        for name in ("cv", "vd", "clone"):
            r = speak(url, name, **REQUESTS[name])
            assert r.status_code == 200, r.text
            assert r.headers["x-model"] == name and len(r.content) == 4 * FRAME * 2
            now = loaded(url)
            assert now[name] and sum(now.values()) <= 2, now
            rss.append(rss_bytes(proc.pid))
    # The least recently used goes: after clone, cv (used longest ago) is the one unloaded.
    assert loaded(url) == {"cv": False, "vd": True, "clone": True}
    mib = [round(b / 2**20) for b in rss]
    print(f"\nRSS (MiB) after each request, 3 rounds of cv, vd, clone with --max-loaded-models 2: {mib}")
    # Bounded: models come and go, the process does not keep growing by a model per round.
    assert max(rss[3:]) <= rss[2] + 48 * 2**20, mib


def test_routing_by_task_type_and_unknown_models(three_models):
    url = three_models[0]
    r = speak(url, None, task_type="VoiceDesign", **REQUESTS["vd"])
    assert r.status_code == 200 and r.headers["x-model"] == "vd"
    r = speak(url, "tts-1", voice="ryan")  # OpenAI's names mean the default model
    assert r.status_code == 200 and r.headers["x-model"] == "cv"
    r = speak(url, "nobody", voice="ryan")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and "cv, vd, clone" in err["message"]
    r = speak(url, "cv", voice="ryan", task_type="Base")
    assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_task_type"


def test_metrics_have_per_model_series_and_queue_wait(three_models):
    url = three_models[0]
    assert speak(url, "vd", **REQUESTS["vd"]).status_code == 200
    text = httpx.get(url + "/metrics").text
    assert 'q3tts_model_loaded{model="vd"} 1.0' in text
    assert 'q3tts_model_requests_total{model="vd"}' in text
    count = [line for line in text.splitlines() if line.startswith('q3tts_queue_wait_seconds_count{model="vd"}')]
    assert count and float(count[0].split()[-1]) >= 1
    assert 'q3tts_model_active_requests{model="vd"} 0.0' in text


def test_request_ids_on_responses_and_json_log_lines(three_models):
    url, _, log = three_models
    r = speak(url, "cv", voice="ryan", n=2)
    made = r.headers["x-request-id"]
    assert len(made) == 32
    given = httpx.post(url + "/v1/audio/speech", json={"model": "nobody", "input": "x"},
                       headers={"X-Request-ID": "trace-42"})  # fmt: skip
    assert given.status_code == 404 and given.headers["x-request-id"] == "trace-42"
    assert httpx.get(url + "/health").headers["x-request-id"]
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message", "request_id"} <= r.keys() for r in records)
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(r["request_id"] == "trace-42" and "/v1/audio/speech" in r["message"] for r in access)
    assert any(r["request_id"] == made for r in access)


# -- the web UI's switch on the server's manager (issue 11 item 15) ----------------------------------


def test_switching_models_frees_the_one_left_or_refuses_first(make_tiny, tmp_path):
    pytest.importorskip("gradio", reason="the `ui` extra (gradio) is not installed")
    from q3tts.server import Settings, create_app

    small, large = make_tiny("custom_voice"), make_tiny("custom_voice", seed=1)
    settings = Settings(models=[f"small={small}", f"large={large}"], device="cpu", voices_dir=tmp_path,
                        warmup=False)  # fmt: skip
    app = create_app(settings)
    models: ModelManager = app.state.models  # the UI's manager is the API's (ui.py gets this object)
    networks = weakref.ref(models.load("small")[0].checkpoint.networks)
    lease = models.acquire("small")  # a request streaming from it
    with pytest.raises(ModelsBusy, match="'small' is serving 1 request"):
        models.switch("large")
    assert models.info("custom_voice")["name"] == "small"  # nothing changed
    assert models.loaded_names() == ["small"]
    lease.release()
    models.switch("large")
    assert models.loaded_names() == ["large"] and models.info("custom_voice")["name"] == "large"
    gc.collect()
    assert networks() is None  # the weights of the model left are gone, not merely marked unloaded
    models.close()


def test_the_manager_unloads_the_least_recently_used_idle_model(make_tiny):
    specs = parse_model_specs([f"a={make_tiny('custom_voice')}", f"b={make_tiny('voice_design')}",
                               f"c={make_tiny('base')}"])  # fmt: skip
    models = ModelManager(specs, device="cpu", max_loaded=2)
    try:
        models.load("a")
        held = models.acquire("b")
        models.load("c")  # a is idle and least recent: unloaded; b is held
        assert models.loaded_names() == ["b", "c"]
        busy = models.acquire("c")
        with pytest.raises(ModelsBusy, match="cannot load 'a' now"):
            models.load("a")  # both loaded models are in use
        held.release(), busy.release()
        models.load("a")
        assert models.loaded_names() == ["a", "c"]  # b was used before c
        budget = ModelManager(specs, device="cpu")
        # Room for one model: the estimates before loading (from the files) are the larger figures.
        budget.memory_budget = int(max(budget.info("a")["weights_bytes"], budget.info("b")["weights_bytes"]) * 1.1)
        budget.load("a")
        budget.load("b")
        assert budget.loaded_names() == ["b"]
        budget.close()
    finally:
        models.close()
