"""Finding 6: two servers on one voice folder (replicas on a shared disk). Concurrent uploads and
listings gave 500 `database is locked` (2-4 per round of 48 requests). Now: 4 rounds of 24 uploads
and 24 listings spread over both servers at once, 0 errors, and the index matches the files."""

from __future__ import annotations

import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from conftest import serve_process, wav_bytes

ROUNDS, UPLOADS, LISTINGS = 4, 24, 24


def test_two_servers_share_one_voice_folder(make_tiny, tmp_path):
    folder = tmp_path / "shared-voices"
    checkpoint = make_tiny("base")
    flags = ("--no-ui", "--voices-dir", str(folder), "--log-level", "warning")
    # Q3TTS_OLD_TREE=<a checkout>: run the same against older code (how the failure was reproduced)
    tree = Path(os.environ.get("Q3TTS_OLD_TREE") or Path(__file__).resolve().parents[2])
    clip = wav_bytes(1.0)
    with serve_process(checkpoint, *flags, tree=tree) as (a, _), serve_process(checkpoint, *flags, tree=tree) as (b, _):
        servers = (a, b)

        def upload(i: int) -> int:
            r = httpx.post(servers[i % 2] + "/v1/audio/voices", data={"name": f"v{i:03d}", "x_vector_only_mode": "true"},
                           files={"audio_sample": ("r.wav", clip, "audio/wav")}, timeout=120)  # fmt: skip
            return r.status_code

        def listing(i: int) -> int:
            return httpx.get(servers[i % 2] + "/v1/audio/voices", timeout=120).status_code

        statuses: list[int] = []
        with ThreadPoolExecutor(UPLOADS + LISTINGS) as pool:
            for round_ in range(ROUNDS):
                first = round_ * UPLOADS
                jobs = [pool.submit(upload, first + i) for i in range(UPLOADS)]
                jobs += [pool.submit(listing, i) for i in range(LISTINGS)]
                statuses += [j.result() for j in jobs]
        errors = [s for s in statuses if s >= 400]
        assert not errors, f"{len(errors)} errors of {len(statuses)} requests: {sorted(set(errors))}"
        names = {f"v{i:03d}" for i in range(ROUNDS * UPLOADS)}
        for url in servers:
            assert {v["name"] for v in httpx.get(url + "/v1/audio/voices").json()["uploaded_voices"]} == names
    files = {p.name[: -len(".safetensors")] for p in folder.glob("*.safetensors")}
    with sqlite3.connect(folder / "voices.db") as db:
        index = {name for (name,) in db.execute("SELECT name FROM voices")}
    assert files == index == names


def test_two_voice_libraries_in_two_processes_share_one_folder(tmp_path):
    """The same, on the library alone (no model: far more operations collide per second)."""
    import json
    import subprocess
    import sys

    folder, go = tmp_path / "voices", tmp_path / "go"
    worker = Path(__file__).with_name("voice_library_worker.py")
    tree = os.environ.get("Q3TTS_OLD_TREE") or str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(worker), str(folder), tag, str(go)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for tag in ("a", "b")]  # fmt: skip
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    errors = [e for r in results for e in r["errors"]]
    assert not errors, f"{len(errors)} errors: {sorted(set(errors))[:3]}"
    files = {p.name[: -len(".safetensors")] for p in folder.glob("*.safetensors")}
    with sqlite3.connect(folder / "voices.db") as db:
        index = {name for (name,) in db.execute("SELECT name FROM voices")}
    assert files == index and len(files) == sum(r["added"] for r in results)


def test_a_starting_library_leaves_other_processes_uploads_alone(tmp_path):
    """Start-up removes the temporary files of dead writers only: another server on the folder
    may be writing its upload right now."""
    import socket
    import time

    from q3tts.server.voices import VoiceLibrary

    tmp_path.mkdir(exist_ok=True)
    host = socket.gethostname()
    live_writer = tmp_path / f".upload-{os.getpid()}@{host}@abc.safetensors"  # this process: alive
    dead_writer = tmp_path / f".upload-999999999@{host}@abc.safetensors"
    other_host = tmp_path / ".upload-1@another-machine@abc.safetensors"
    old_other_host = tmp_path / ".upload-2@another-machine@def.safetensors"
    for path in (live_writer, dead_writer, other_host, old_other_host):
        path.write_bytes(b"half an upload")
    os.utime(old_other_host, (time.time() - 7200, time.time() - 7200))
    VoiceLibrary(tmp_path)
    assert live_writer.exists() and other_host.exists()
    assert not dead_writer.exists() and not old_other_host.exists()
