"""The voice store's two back-ends (a folder, PostgreSQL) under what replicas do to them: two stores
open on one library, a race for one name between two processes, a writer killed with kill -9,
the library going away and coming back, consent, deletion. Every test runs on both back-ends
against the real thing (a temporary folder; the session's PostgreSQL server)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from voice_helpers import ROOT, small_voice

from q3tts.server.voices import (
    Consent,
    ConsentRequired,
    VoiceExists,
    VoiceNotFound,
    VoiceStoreUnavailable,
)
from q3tts.server.voicestore import open_voice_store

WORKER = Path(__file__).with_name("store_worker.py")
BIG_FRAMES = 200_000  # a 26 MB voice prompt: its file takes a while to write and fsync


@pytest.fixture(params=["folder", "postgres"])
def spec(request, tmp_path) -> str:
    """A new, empty library of each back-end: a folder path or a postgresql:// URL."""
    if request.param == "folder":
        return str(tmp_path / "voices")
    return request.getfixturevalue("database")


def same_voice(a, b) -> bool:
    return (torch.equal(a.ref_code, b.ref_code) and torch.equal(a.ref_spk_embedding, b.ref_spk_embedding)
            and a.ref_text == b.ref_text)  # fmt: skip


def start_worker(spec: str, tag: str, go: Path, *names: str, frames: int = 8) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(WORKER), spec, tag, str(go), str(frames), *names]
    proc = subprocess.Popen(cmd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout.readline().strip() == "open", proc.stderr.read()[-2000:]
    return proc


def test_a_voice_added_through_one_store_is_usable_through_another_at_once(spec):
    a, b = open_voice_store(spec), open_voice_store(spec)  # two replicas on one library
    try:
        voice = small_voice("from a")
        a.add("shared", voice, 1.5)
        assert "shared" in b and [v.name for v in b.list()] == ["shared"]
        assert same_voice(b.prompt("shared"), voice)
        assert b.get("shared").duration == 1.5 and b.get("shared").mode == "icl"
        with pytest.raises(VoiceExists):
            b.add("shared", small_voice("from b"), 1.0)
        b.delete("shared")  # gone for both at once: no replica keeps serving a deleted voice
        assert "shared" not in a and a.list() == []
        with pytest.raises(VoiceNotFound):
            a.prompt("shared")
        with pytest.raises(VoiceNotFound):
            a.delete("shared")
    finally:
        a.close(), b.close()


def test_two_processes_racing_for_each_name_exactly_one_wins(spec, tmp_path):
    names = [f"race-{i}" for i in range(12)]
    go = tmp_path / "go"
    workers = [start_worker(spec, tag, go, *names) for tag in ("a", "b")]  # both open before the start
    go.touch()
    results = []
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    store = open_voice_store(spec)
    try:
        for name in names:
            outcomes = sorted(r[name] for r in results)
            assert outcomes == ["added", "exists"], (name, outcomes)
            winner = "a" if results[0][name] == "added" else "b"
            assert store.prompt(name).ref_text == winner  # the stored voice is the winner's, whole
        assert [v.name for v in store.list()] == sorted(names)
    finally:
        store.close()


@contextmanager
def mid_upload(spec: str):
    """`with mid_upload(spec) as writer_is_mid_upload:` a predicate that turns true once a writer is
    in the middle of an upload. PostgreSQL: the voices table is locked against INSERT while inside,
    so the writer stays there, its row sent and its transaction open. The folder: its temporary
    file exists (being written or fsync'ed; a big voice makes that take a while)."""
    if spec.startswith("postgresql://"):
        import psycopg

        # pg_stat_activity is read once per transaction: the lock's transaction cannot watch it.
        with psycopg.connect(spec) as conn, psycopg.connect(spec, autocommit=True) as watch:
            conn.execute("LOCK TABLE q3tts_voices IN SHARE MODE")  # reads pass, INSERT waits
            yield lambda: bool(watch.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                             "AND query LIKE 'INSERT INTO q3tts_voices%'").fetchall())  # fmt: skip
            conn.rollback()
    else:
        yield lambda: any("upload-" in p.name for p in Path(spec).iterdir())


def test_a_writer_killed_with_kill_9_mid_upload_leaves_nothing_half_written(spec, tmp_path):
    """Afterwards the name is either free or holds the whole voice, and no temporary file is left."""
    store = open_voice_store(spec)
    try:
        store.add("before", small_voice("before"), 1.0)
        go = tmp_path / "go"
        worker = start_worker(spec, "killed", go, "victim", frames=BIG_FRAMES)
        with mid_upload(spec) as writer_is_mid_upload:
            go.touch()
            deadline = time.time() + 60
            while not writer_is_mid_upload():
                assert time.time() < deadline and worker.poll() is None, worker.stderr.read()[-2000:]
                time.sleep(0.001)
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        after = open_voice_store(spec)  # a replica (re)starting on the library
        try:
            names = [v.name for v in after.list()]
            assert names in (["before"], ["before", "victim"]), names
            if "victim" in names:  # the folder, killed after the rename: the whole file is adopted
                assert same_voice(after.prompt("victim"), small_voice("killed", frames=BIG_FRAMES))
            else:
                after.add("victim", small_voice("again"), 1.0)  # the name is free
            if not spec.startswith("postgresql://"):  # the dead writer's temporary file was removed
                assert not [p.name for p in Path(spec).iterdir() if "upload-" in p.name]
        finally:
            after.close()
    finally:
        store.close()


def test_a_lost_library_raises_unavailable_and_recovers_by_itself(spec, request, tmp_path):
    store = open_voice_store(spec, timeout=1.0)
    try:
        store.add("kept", small_voice("kept"), 1.0)
        if spec.startswith("postgresql://"):
            postgres, database = request.getfixturevalue("postgres"), spec.rsplit("/", 1)[1]
            lose, restore = (lambda: postgres.cut_off(database)), (lambda: postgres.restore(database))
        else:  # the disk is unmounted (renamed away) and mounted back
            away = tmp_path / "unmounted"
            lose, restore = (lambda: os.rename(spec, away)), (lambda: os.rename(away, spec))
        lose()
        for call in (store.list, lambda: store.prompt("kept"), lambda: store.add("new", small_voice("n"), 1.0),
                     lambda: "kept" in store, lambda: store.delete("kept")):  # fmt: skip
            started = time.monotonic()
            with pytest.raises(VoiceStoreUnavailable):
                call()
            assert time.monotonic() - started < 10  # a prompt answer, not a hang
        assert not Path(spec).exists() or spec.startswith("postgresql://")  # nothing re-created behind the mount
        restore()
        deadline = time.time() + 30
        while True:  # the pool reconnects in the background
            try:
                assert [v.name for v in store.list()] == ["kept"]
                break
            except VoiceStoreUnavailable:
                assert time.time() < deadline
                time.sleep(0.2)
        assert same_voice(store.prompt("kept"), small_voice("kept"))
    finally:
        store.close()


def test_consent_is_required_stored_and_deleted_with_the_voice(spec):
    store = open_voice_store(spec, require_consent=True)
    try:
        with pytest.raises(ConsentRequired):
            store.add("anon", small_voice("a"), 1.0)
        with pytest.raises(ConsentRequired):
            store.add("anon", small_voice("a"), 1.0, Consent(" ", "I agree", time.time()))
        assert store.list() == []
        consent = Consent("Ada Lovelace", "I, Ada, agree that my voice is cloned for the demo.", 1764633600.0)
        store.add("ada", small_voice("Ada's unique transcript"), 2.0, consent)
        other = open_voice_store(spec)
        try:
            assert other.get("ada").consent == consent and other.list()[0].public()["consent"] == {
                "by": "Ada Lovelace", "text": consent.text, "at": 1764633600.0}  # fmt: skip
            other.delete("ada")
        finally:
            other.close()
        assert store.list() == [] and "ada" not in store
        if spec.startswith("postgresql://"):
            import psycopg

            with psycopg.connect(spec) as conn:
                assert conn.execute("SELECT count(*) FROM q3tts_voices").fetchone()[0] == 0
        else:  # no file, no row, and not a byte of the transcript or consent left in the index file
            folder = Path(spec)
            assert sorted(p.name for p in folder.iterdir()) == ["voices.db"]
            with sqlite3.connect(folder / "voices.db") as db:
                assert db.execute(
                    "SELECT (SELECT count(*) FROM voices) + (SELECT count(*) FROM consents)"
                ).fetchone() == (0,)
            raw = (folder / "voices.db").read_bytes()
            assert b"Ada" not in raw and b"unique transcript" not in raw
    finally:
        store.close()


def test_the_postgres_schema_is_created_versioned_and_migrated(postgres):
    import psycopg

    from q3tts.server.voices_postgres import MIGRATIONS, SCHEMA_VERSION, PostgresVoiceStore, VoiceStoreError

    url = postgres.url(postgres.new_database())
    with psycopg.connect(url) as conn:  # a database left by a version-1 q3tts, with a voice in it
        conn.execute(MIGRATIONS[1])
        conn.execute("CREATE TABLE q3tts_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO q3tts_schema VALUES (1)")
        conn.execute("INSERT INTO q3tts_voices VALUES ('old', gen_random_uuid(), 0, 'icl', 'old', 1.0, %s)",
                     (small_voice("old").to_bytes(),))  # fmt: skip
    with ThreadPoolExecutor(3) as pool:  # replicas starting together: one migrates, under the advisory lock
        stores = list(pool.map(lambda _: PostgresVoiceStore(url), range(3)))
    try:
        assert [s.schema_version() for s in stores] == [SCHEMA_VERSION] * 3
        assert stores[1].get("old").consent is None and same_voice(stores[2].prompt("old"), small_voice("old"))
    finally:
        for s in stores:
            s.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM q3tts_schema").fetchone() == (1,)
        conn.execute("UPDATE q3tts_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(VoiceStoreError, match="newer|upgrade q3tts"):
        PostgresVoiceStore(url)
