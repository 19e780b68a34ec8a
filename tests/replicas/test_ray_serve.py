"""Ray Serve on a local Ray instance (one for the module): 2 replicas of the app on the tiny Base
checkpoint, sharing a PostgreSQL voice library. Requests spread over both; a voice added through
one is used through the other; a replica killed with kill -9 is replaced, and the client's next
request succeeds. Each response names its replica (X-Q3TTS-Replica: id@pid)."""

from __future__ import annotations

import base64
import os
import signal
import time

import httpx
import pytest
from serverproc import free_port
from voice_helpers import ROOT, require_module, wav_bytes

from q3tts.server import Settings

ray = require_module("ray")  # under Q3TTS_REQUIRE_POSTGRES=1 (make test) the `ray` extra must be there
from ray import serve  # noqa: E402

from q3tts.server.ray import REPLICA_HEADER, build_app  # noqa: E402

SPEECH = {"input": "Hello.", "max_new_tokens": 3, "min_new_tokens": 3, "response_format": "pcm"}


@pytest.fixture(scope="module")
def ray_url(make_tiny, postgres):
    port = free_port()
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = Settings(model=str(make_tiny("base")), device="cpu", dtype="float32", ui=False, max_batch=2,
                            max_queue=8, voice_store=postgres.url(postgres.new_database()), replicas=2,
                            replica_cpus=1)  # fmt: skip
        serve.run(build_app(settings), name="q3tts", route_prefix="/")  # returns once both replicas are healthy
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def replica_of(r: httpx.Response) -> str:
    return r.headers[REPLICA_HEADER]


def test_requests_spread_over_both_replicas_and_a_voice_added_through_one_is_used_through_the_other(ray_url):
    seen = {replica_of(httpx.get(ray_url + "/ready", timeout=30)) for _ in range(16)}
    assert len(seen) == 2, seen
    r = httpx.post(ray_url + "/v1/audio/voices", data={"name": "via-ray", "x_vector_only_mode": "true"},
                   files={"audio_sample": ("ref.wav", wav_bytes(1.0), "audio/wav")}, timeout=120)  # fmt: skip
    assert r.status_code == 201, r.text
    added_by, used_by = replica_of(r), set()
    for _ in range(16):
        r = httpx.post(ray_url + "/v1/audio/speech", json={**SPEECH, "voice": "via-ray"}, timeout=120)
        assert r.status_code == 200 and len(r.content) > 0, r.text
        used_by.add(replica_of(r))
        if len(used_by) == 2:
            break
    assert used_by == seen and added_by in seen  # the other replica used it too


def test_a_replica_killed_with_kill_9_is_replaced_and_the_next_request_succeeds(ray_url):
    inline = {**SPEECH, "ref_audio": base64.b64encode(wav_bytes(1.0)).decode(), "x_vector_only_mode": True}
    before = {replica_of(httpx.get(ray_url + "/ready", timeout=30)) for _ in range(16)}
    assert len(before) == 2
    victim = sorted(before)[0]
    os.kill(int(victim.rsplit("@", 1)[1]), signal.SIGKILL)
    r = httpx.post(ray_url + "/v1/audio/speech", json=inline, timeout=120)
    assert r.status_code == 200 and replica_of(r) != victim, r.text
    deadline, now = time.time() + 300, set()
    while len(now - {victim}) < 2:  # Ray starts a replacement; it takes traffic once warmed up
        assert time.time() < deadline, f"no replacement for {victim}: {now}"
        r = httpx.get(ray_url + "/ready", timeout=30)
        assert r.status_code == 200, r.text  # never routed to a replica that is still loading
        now.add(replica_of(r))
        time.sleep(0.1)
    r = httpx.post(ray_url + "/v1/audio/speech", json=inline, timeout=120)
    assert r.status_code == 200
