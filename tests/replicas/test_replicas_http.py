"""Replicas behind a load balancer, over HTTP: real `q3tts serve` processes sharing one PostgreSQL
voice library (a voice added through one is used through the other at once; the same name at
once: one 201, one 409; kill -9 mid-upload; a lost database: 503 on the voice routes, built-in
voices and inline references still served), then the folder back-end and consent on servers in
threads."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from serverproc import free_port, serve_in_thread, wait_ready
from voice_helpers import ROOT, require_module, wav_bytes

from q3tts.server import Settings, create_app
from q3tts.server.listen import uvicorn_config

psycopg = require_module("psycopg")
pytestmark = pytest.mark.filterwarnings("ignore::q3tts.generate.engine.LengthCapWarning")
SHORT = {"max_new_tokens": 3, "min_new_tokens": 3, "response_format": "pcm"}


@contextmanager
def replicas_of(*specs: tuple[Path, tuple[str, ...]]):
    """`q3tts serve` processes (no UI, no warm-up), one per (checkpoint, flags), started together;
    yields [(base URL, Popen)] once all are ready."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    started = []
    try:
        for checkpoint, flags in specs:
            port = free_port()
            cmd = [sys.executable, "-m", "q3tts.server", "--model", str(checkpoint), "--device", "cpu", "--port",
                   str(port), "--no-warmup", "--no-ui", "--log-level", "warning", *flags]  # fmt: skip
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started.append((f"http://127.0.0.1:{port}", proc))
        for url, proc in started:
            wait_ready(url, timeout=300, proc=proc)
        yield started
    finally:
        for _, proc in started:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def replica(checkpoint: Path, *flags: str):
    with replicas_of((checkpoint, flags)) as [(url, proc)]:
        yield url, proc


def upload(url: str, name: str, **form) -> httpx.Response:
    return httpx.post(url + "/v1/audio/voices", data={"name": name, "x_vector_only_mode": "true", **form},
                      files={"audio_sample": ("ref.wav", wav_bytes(1.0), "audio/wav")}, timeout=120)  # fmt: skip


def speak(url: str, **body) -> httpx.Response:
    return httpx.post(url + "/v1/audio/speech", json={"input": "Hello.", **SHORT, **body}, timeout=120)


@pytest.fixture(scope="module")
def library(postgres):
    """The module's shared voice library: (its URL, its database name)."""
    name = postgres.new_database()
    return postgres.url(name), name


@pytest.fixture(scope="module")
def replicas(make_tiny, library):
    """Two Base replicas on the shared PostgreSQL library: (url_a, url_b)."""
    flags = ("--voice-store", library[0], "--voice-store-timeout", "2")
    with replicas_of((make_tiny("base"), flags), (make_tiny("base"), flags)) as [(a, _), (b, _)]:
        yield a, b


def test_a_voice_added_through_replica_a_is_used_through_replica_b_at_once(replicas):
    a, b = replicas
    assert upload(a, "shared").status_code == 201
    assert "shared" in [v["name"] for v in httpx.get(b + "/v1/audio/voices").json()["uploaded_voices"]]
    r = speak(b, voice="shared")
    assert r.status_code == 200 and len(r.content) > 0
    assert httpx.delete(b + "/v1/audio/voices/shared").status_code == 200
    r = speak(a, voice="shared")  # deleted through B: gone for A as well, at once
    assert r.status_code == 400 and r.json()["error"]["code"] == "voice_not_found"


def test_the_same_name_on_two_replicas_at_once_one_wins_the_other_gets_409(replicas):
    a, b = replicas
    with ThreadPoolExecutor(2) as pool:
        for round_ in range(3):
            name = f"race-{round_}"
            statuses = sorted(pool.map(lambda url, n=name: upload(url, n).status_code, (a, b)))
            assert statuses == [201, 409], (name, statuses)
    names = [v["name"] for v in httpx.get(a + "/v1/audio/voices").json()["uploaded_voices"]]
    assert names.count("race-0") == names.count("race-2") == 1


def test_a_replica_killed_with_kill_9_mid_upload_leaves_nothing_half_written(make_tiny, library, replicas):
    url_db, _ = library
    a, _ = replicas
    with replica(make_tiny("base"), "--voice-store", url_db) as (c, proc):
        with psycopg.connect(url_db) as lock, psycopg.connect(url_db, autocommit=True) as watch:
            lock.execute("LOCK TABLE q3tts_voices IN SHARE MODE")  # C's INSERT waits here, its transaction open
            threading.Thread(target=lambda: _ignore_errors(upload, c, "victim"), daemon=True).start()
            deadline = time.time() + 120
            while not watch.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND query LIKE 'INSERT INTO q3tts_voices%'").fetchall():  # fmt: skip
                assert time.time() < deadline, "the upload never reached the database"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            lock.rollback()
    listed = [v["name"] for v in httpx.get(a + "/v1/audio/voices").json()["uploaded_voices"]]
    assert "victim" not in listed
    assert upload(a, "victim").status_code == 201  # the name is free, nothing half-written holds it
    assert speak(a, voice="victim").status_code == 200


def _ignore_errors(fn, *args):
    try:
        fn(*args)
    except httpx.HTTPError:
        pass  # the replica died under it


def test_a_replica_that_loses_its_database_answers_503_and_keeps_serving_built_in_voices(
    make_tiny, postgres, library, replicas
):  # fmt: skip
    url_db, database = library
    a, _ = replicas
    assert upload(a, "kept").status_code == 201
    with replica(make_tiny("custom_voice"), "--voice-store", url_db, "--voice-store-timeout", "2") as (cv, _):
        postgres.cut_off(database)
        try:
            for r in (httpx.get(a + "/v1/audio/voices", timeout=30), upload(a, "new"), speak(a, voice="kept"),
                      httpx.delete(a + "/v1/audio/voices/kept", timeout=30), httpx.get(cv + "/v1/audio/voices")):  # fmt: skip
                assert r.status_code == 503 and r.json()["error"]["code"] == "voice_store_unavailable", r.text
            assert speak(cv, voice="vivian").status_code == 200  # built-in voices need no database
            inline = base64.b64encode(wav_bytes(1.0)).decode()
            assert speak(a, ref_audio=inline, x_vector_only_mode=True).status_code == 200  # nor inline references
            assert httpx.get(a + "/ready").status_code == 200
        finally:
            postgres.restore(database)
        deadline = time.time() + 30
        while httpx.get(a + "/v1/audio/voices", timeout=30).status_code != 200:
            assert time.time() < deadline, "the replica did not reconnect"
            time.sleep(0.2)
        assert speak(a, voice="kept").status_code == 200


# -- in-thread servers: the folder back-end, and consent on both ---------------------------------------------------


@contextmanager
def live(tts, **settings):
    s = Settings(model="tiny", warmup=False, ui=False, **settings)
    with serve_in_thread(lambda port: uvicorn_config(create_app(s, tts=tts), s.model_copy(update={"port": port}),
                                                     log_level="warning")) as url:  # fmt: skip
        yield url


def test_folder_replicas_same_name_409_and_a_lost_folder_503(tiny_tts, tmp_path):
    folder = tmp_path / "voices"
    with live(tiny_tts("base"), voices_dir=folder) as a, live(tiny_tts("base"), voices_dir=folder) as b, \
            live(tiny_tts("custom_voice"), voices_dir=folder) as cv:  # fmt: skip
        with ThreadPoolExecutor(2) as pool:
            assert sorted(pool.map(lambda url: upload(url, "same").status_code, (a, b))) == [201, 409]
        assert speak(b, voice="same").status_code == 200
        os.rename(folder, tmp_path / "unmounted")
        for r in (httpx.get(a + "/v1/audio/voices"), speak(b, voice="same"), upload(a, "new")):
            assert r.status_code == 503 and r.json()["error"]["code"] == "voice_store_unavailable", r.text
        assert speak(cv, voice="vivian").status_code == 200
        os.rename(tmp_path / "unmounted", folder)
        assert speak(a, voice="same").status_code == 200


@pytest.fixture(params=["folder", "postgres"])
def store(request, tmp_path) -> dict:
    if request.param == "folder":
        return {"voices_dir": tmp_path / "voices"}
    return {"voice_store": request.getfixturevalue("database"), "voices_dir": tmp_path / "unused"}


def test_require_consent_stores_who_when_and_what_and_delete_removes_the_voice(tiny_tts, store):
    with live(tiny_tts("base"), require_consent=True, **store) as url:
        r = upload(url, "anon")
        assert r.status_code == 400 and r.json()["error"]["code"] == "consent_required"
        assert "consent and consent_by" in r.json()["error"]["message"]
        r = upload(url, "anon", consent="I agree.")
        assert r.status_code == 400 and "consent_by" in r.json()["error"]["message"]
        before = time.time()
        r = upload(url, "ada", consent="I, Ada, agree to have my voice cloned.", consent_by="Ada Lovelace")
        assert r.status_code == 201, r.text
        (listed,) = httpx.get(url + "/v1/audio/voices").json()["uploaded_voices"]
        consent = listed["consent"]
        assert consent["by"] == "Ada Lovelace" and consent["text"] == "I, Ada, agree to have my voice cloned."
        assert before - 1 <= consent["at"] <= time.time() + 1
        assert httpx.delete(url + "/v1/audio/voices/ada").status_code == 200
        assert httpx.get(url + "/v1/audio/voices").json()["uploaded_voices"] == []
        assert speak(url, voice="ada").json()["error"]["code"] == "voice_not_found"
    if "voice_store" in store:
        with psycopg.connect(store["voice_store"]) as conn:
            assert conn.execute("SELECT count(*) FROM q3tts_voices").fetchone() == (0,)
    else:
        assert sorted(p.name for p in store["voices_dir"].iterdir()) == ["voices.db"]
