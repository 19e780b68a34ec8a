"""`q3tts bench --serve`: the path users deploy, measured from the outside.

Two ways in, both at each of `--streams` concurrent streams (default 1, 4, 16):

  in process   the scheduler `q3tts serve` runs (`SpeechScheduler`), on the bench child's own
               model, right after the engine's batch runs: N consumer threads each submit one
               request per wave and block on `job.chunks()` (no polling, so the client side
               takes no CPU from generation).
  --http       a real `q3tts serve` process on the same checkpoint, device, dtype, threads and
               chunk sizes, after the child has exited: N client threads each POST one streamed
               `response_format=pcm` request per wave and block on the socket.

Only wall-clock times are taken, so the figures hold whatever the scheduler's internals are:
the submit (or request) time, the time each audio chunk is complete (for HTTP: when the bytes of
a whole chunk have arrived, chunk sizes being known), and the end. Every request makes exactly
`--frames` frames (min_new_tokens = max_new_tokens = frames + 1, the engine runs' rule); requests
carry no seed, as a seeded request samples on its own generator, apart from the batch.

Figures per stream count N, over the `--repeat` waves after `--warmup` (all N requests of a wave
start together):

  ms/frame           per stream: (end - submit) / frames, median over requests; beside the
                     engine's total ms/step at batch N (a step = one frame for every row)
  first audio        submit -> first chunk, p50 and p95 over requests
  inter-chunk gap    time between consecutive chunks of one request, p95 over all gaps
  audio-s/s          all requests' audio seconds / the wave's wall time (first submit to last
                     end), median over waves: the aggregate throughput
  RTF                (end - submit) / audio seconds per request, median
"""

from __future__ import annotations

import base64
import http.client
import inspect
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .errors import Q3TTSError

READY_TIMEOUT_S = 600  # a full-size checkpoint on a slow disk, quantised, then warmed up
REQUEST_TIMEOUT_S = 600


class ServingBenchError(Q3TTSError):
    """The HTTP server could not be started or answered badly; reported as one line."""


# ----------------------------------------------------------------------------------------------
# Waves of concurrent requests
# ----------------------------------------------------------------------------------------------


def run_wave(streams: int, one_request: Callable[[], dict]) -> list[dict]:
    """`streams` threads released together by a barrier, each making one request; their records.
    A request still unanswered after REQUEST_TIMEOUT_S is recorded as an error instead of hanging
    the bench (its daemon thread is left behind)."""
    barrier = threading.Barrier(streams)
    records: list[Optional[dict]] = [None] * streams
    started = time.perf_counter()

    def client(i: int) -> None:
        barrier.wait()
        records[i] = one_request()

    threads = [threading.Thread(target=client, args=(i,), name=f"bench-stream-{i}", daemon=True)
               for i in range(streams)]  # fmt: skip
    for t in threads:
        t.start()
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    return [r if r is not None else dict(record(started, [], 0), error=f"no answer in {REQUEST_TIMEOUT_S} s")
            for r in records]  # fmt: skip


def run_waves(config: dict, one_request: Callable[[], dict]) -> dict[str, list[list[dict]]]:
    """{str(N): the measured waves} for every stream count; the warm-up waves are dropped."""
    runs = {}
    for streams in config["streams"]:
        waves = [run_wave(streams, one_request) for _ in range(config["warmup"] + config["repeat"])]
        runs[str(streams)] = waves[config["warmup"] :]
    return runs


def record(submitted: float, chunk_ends: list[float], samples: int, error: Optional[str] = None) -> dict:
    return dict(submitted=submitted, chunk_ends=chunk_ends, samples=samples, ended=time.perf_counter(), error=error)


# ----------------------------------------------------------------------------------------------
# In process: the scheduler on the bench child's model
# ----------------------------------------------------------------------------------------------


def measure_scheduler(tts, utterance, config: dict) -> dict:
    """Waves of requests through `SpeechScheduler` on `tts` (already loaded and warmed up)."""
    from .serving import SpeechScheduler

    largest = max(config["streams"])
    kwargs: dict[str, Any] = dict(max_batch=largest, max_queue=largest)
    if "static" in inspect.signature(SpeechScheduler).parameters:  # the one-core scheduler takes it
        kwargs["static"] = config["static"]
    options = generation_options(config)
    chunk_frames = config["chunk_frames"]

    def one_request() -> dict:
        submitted, ends, samples = time.perf_counter(), [], 0
        try:
            job = scheduler.submit(utterance, chunk_frames=chunk_frames, first_chunk_frames=1, **options)
            for chunk in job.chunks():  # blocks on the job's queue until the scheduler thread puts a chunk
                ends.append(time.perf_counter())
                samples += len(chunk)
        except Exception as e:  # noqa: BLE001 - counted and reported per request
            return record(submitted, ends, samples, f"{type(e).__name__}: {e}")
        return record(submitted, ends, samples)

    scheduler = SpeechScheduler(tts, **kwargs).start()
    try:
        runs = run_waves(config, one_request)
    finally:
        scheduler.close()
    return dict(static=kwargs.get("static"), max_batch=largest, runs=runs)


def generation_options(config: dict) -> dict:
    """Exactly `frames` frames: end of speech is masked for every step the cap allows."""
    return dict(max_new_tokens=config["frames"] + 1, min_new_tokens=config["frames"] + 1)


# ----------------------------------------------------------------------------------------------
# Over HTTP: a real `q3tts serve` process
# ----------------------------------------------------------------------------------------------


def measure_http(config: dict, voice: dict, samples_per_frame: int, env: dict) -> dict:
    """Start `python -m q3tts.server` on the bench's checkpoint, run the waves against it, stop it.
    `voice`: the request's voice fields (a speaker, an instruct or a reference clip)."""
    largest = max(config["streams"])
    with tempfile.TemporaryDirectory(prefix="q3tts-bench-serve-") as tmp:
        port = free_port()
        log_path = Path(tmp) / "server.log"
        command = [sys.executable, "-m", "q3tts.server", "--model", config["model"], "--port", str(port),
                   "--device", config["device"], "--dtype", config["dtype"], "--quantize", config["quantize"],
                   "--max-batch", str(largest), "--max-queue", str(largest), "--chunk-frames",
                   str(config["chunk_frames"]), "--first-chunk-frames", "1", "--voices-dir", str(Path(tmp) / "voices"),
                   "--no-ui", "--log-level", "warning"]  # fmt: skip
        # torch reads these at start: the server gets the bench child's thread count
        server_env = dict(env, OMP_NUM_THREADS=str(config["threads"]), MKL_NUM_THREADS=str(config["threads"]))
        with open(log_path, "w") as log:
            proc = subprocess.Popen(command, env=server_env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            started = time.perf_counter()
            wait_ready(proc, port, log_path)
            ready_seconds = time.perf_counter() - started
            body = json.dumps(request_body(config, voice)).encode()
            chunk_bytes = 2 * samples_per_frame * config["chunk_frames"]
            runs = run_waves(config, lambda: http_request(port, body, 2 * samples_per_frame, chunk_bytes))
            peak_rss = process_memory_bytes(proc.pid, "VmHWM")
        finally:
            stop(proc)
    return dict(static=None, max_batch=largest, runs=runs, ready_seconds=ready_seconds, server_peak_rss_bytes=peak_rss)


def request_body(config: dict, voice: dict) -> dict:
    body = dict(input=config["text"], response_format="pcm", language=config["language"], initial_codec_chunk_frames=1,
                **generation_options(config), **voice)  # fmt: skip
    return body


def http_voice(kind: str, speaker: Optional[str], config: dict, reference_clip: Callable) -> dict:
    """The request fields that pick the voice the in-process runs use."""
    if kind == "custom_voice":
        return dict(voice=speaker)
    if kind == "voice_design":
        return dict(instructions=config["instruct"])
    import soundfile as sf

    wav, sr = reference_clip()
    buffer = io.BytesIO()
    sf.write(buffer, wav, sr, format="WAV", subtype="PCM_16")
    return dict(ref_audio=base64.b64encode(buffer.getvalue()).decode(), x_vector_only_mode=True)


def http_request(port: int, body: bytes, first_chunk_bytes: int, chunk_bytes: int) -> dict:
    """POST one speech request and read the pcm stream to its end. A chunk's time is when its last
    byte arrived: TCP may split or merge the server's writes, the chunk sizes are fixed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    submitted, ends, received = time.perf_counter(), [], 0
    try:
        conn.request("POST", "/v1/audio/speech", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            return record(
                submitted, ends, 0, f"HTTP {response.status}: {response.read()[:300].decode(errors='replace')}"
            )
        next_end, covered, last_piece_at = first_chunk_bytes, 0, submitted
        while piece := response.read1(1 << 16):
            received += len(piece)
            last_piece_at = time.perf_counter()
            while received >= next_end:
                ends.append(last_piece_at)
                covered, next_end = next_end, next_end + chunk_bytes
        if received > covered:  # the last chunk, shorter than the others
            ends.append(last_piece_at)
    except (OSError, http.client.HTTPException) as e:
        return record(submitted, ends, received // 2, f"{type(e).__name__}: {e}")
    finally:
        conn.close()
    return record(submitted, ends, received // 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServingBenchError(f"q3tts serve exited ({proc.returncode}): {last_line(log_path)}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.25)  # only while the server loads: nothing is being measured yet
    raise ServingBenchError(f"q3tts serve was not ready after {READY_TIMEOUT_S} s: {last_line(log_path)}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def process_memory_bytes(pid: int, field: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------------------------
# Figures from the records (the same definitions for both ways in)
# ----------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> Optional[float]:
    return float(np.percentile(values, q)) if values else None


def summarise_streams(waves: list[list[dict]], frames_requested: int, samples_per_frame: int,
                      sample_rate: int) -> dict:  # fmt: skip
    requests = [r for wave in waves for r in wave]
    done = [r for r in requests if r["error"] is None]
    frames = [r["samples"] / samples_per_frame for r in done]
    audio = [r["samples"] / sample_rate for r in done]
    seconds = [r["ended"] - r["submitted"] for r in done]
    first = [1e3 * (r["chunk_ends"][0] - r["submitted"]) for r in done if r["chunk_ends"]]
    gaps = [1e3 * (b - a) for r in done for a, b in zip(r["chunk_ends"], r["chunk_ends"][1:])]
    throughput = []
    for wave in waves:
        ok = [r for r in wave if r["error"] is None]
        if ok:
            wall = max(r["ended"] for r in ok) - min(r["submitted"] for r in wave)
            throughput.append(sum(r["samples"] for r in ok) / sample_rate / wall)
    errors = [r["error"] for r in requests if r["error"] is not None]
    return dict(
        streams=len(waves[0]) if waves else 0,
        waves=len(waves),
        requests=len(requests),
        errors=len(errors),
        first_error=errors[0] if errors else None,
        frames_requested=frames_requested,
        frames_min=min(frames) if frames else None,
        frames_max=max(frames) if frames else None,
        frames_ok=bool(done) and not errors and all(f == frames_requested for f in frames),
        chunks_per_request=percentile([len(r["chunk_ends"]) for r in done], 50),
        audio_seconds_per_request=percentile(audio, 50),
        ms_per_frame=percentile([1e3 * s / f for s, f in zip(seconds, frames) if f], 50),
        first_audio_ms_p50=percentile(first, 50),
        first_audio_ms_p95=percentile(first, 95),
        inter_chunk_gap_ms_p50=percentile(gaps, 50),
        inter_chunk_gap_ms_p95=percentile(gaps, 95),
        audio_seconds_per_second=percentile(throughput, 50),
        rtf=percentile([s / a for s, a in zip(seconds, audio) if a], 50),
    )


def summarise_way(result: dict, frames: int, samples_per_frame: int, sample_rate: int) -> dict:
    out = {k: v for k, v in result.items() if k != "runs"}
    out["streams"] = {n: summarise_streams(waves, frames, samples_per_frame, sample_rate)
                      for n, waves in result["runs"].items()}  # fmt: skip
    return out


def serving_ratios(engine: dict, way: dict) -> dict:
    """server / engine, per stream count N against the engine's batch N (ms/frame: above 1 is a
    slower server; audio-s/s: below 1 is less throughput), and at N = 1 the first-audio gap."""

    def ratio(a, b):
        return a / b if a is not None and b else None

    out = {}
    for n, f in way["streams"].items():
        batch = engine["runs"].get(n)
        if batch is None:
            continue
        entry = dict(
            ms_per_frame=ratio(f["ms_per_frame"], batch["total_ms_per_step"]),
            audio_seconds_per_second=ratio(f["audio_seconds_per_second"], batch["audio_seconds_per_second"]),
        )
        if n == "1" and engine.get("first_chunk_ms") is not None and f["first_audio_ms_p50"] is not None:
            entry["first_audio"] = ratio(f["first_audio_ms_p50"], engine["first_chunk_ms"])
            entry["first_audio_ms_minus_engine"] = f["first_audio_ms_p50"] - engine["first_chunk_ms"]
        out[f"streams_{n}"] = entry
    return out


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

ROWS = [  # (label, key, format)
    ("ms/frame per stream", "ms_per_frame", "{:.1f}"),
    ("first audio p50 ms", "first_audio_ms_p50", "{:.0f}"),
    ("first audio p95 ms", "first_audio_ms_p95", "{:.0f}"),
    ("inter-chunk gap p95 ms", "inter_chunk_gap_ms_p95", "{:.0f}"),
    ("audio-s/s, all streams", "audio_seconds_per_second", "{:.2f}"),
    ("RTF (wall/audio)", "rtf", "{:.3f}"),
]


def format_serving(serving: dict) -> list[str]:
    columns = []
    for way, label in (("in_process", "sched"), ("http", "http")):
        if serving.get(way) and "streams" in serving[way]:
            columns += [(f"{label} n={n}", f) for n, f in serving[way]["streams"].items()]
    lines = ["", "serving (a stream = one request; n requests at once)"]
    if columns:
        width = 24
        lines.append(" " * width + "".join(f"{name:>14}" for name, _ in columns))
        for label, key, fmt in ROWS:
            cells = ["-" if f.get(key) is None else fmt.format(f[key]) for _, f in columns]
            lines.append(f"{label:<{width}}" + "".join(f"{c:>14}" for c in cells))
    for way in ("in_process", "http"):
        for n, r in (serving.get("ratios", {}).get(way) or {}).items():
            parts = [f"ms/frame {r['ms_per_frame']:.2f}x" if r.get("ms_per_frame") else None,
                     f"audio-s/s {r['audio_seconds_per_second']:.2f}x" if r.get("audio_seconds_per_second") else None]  # fmt: skip
            if r.get("first_audio_ms_minus_engine") is not None:
                parts.append(f"first audio {r['first_audio_ms_minus_engine']:+.0f} ms")
            n_streams = n.removeprefix("streams_")
            text = ", ".join(p for p in parts if p)
            lines.append(f"{way} {n_streams} vs engine b={n_streams}: {text} (server / engine)")
        if serving.get(way) and serving[way].get("error"):
            lines.append(f"error: {way} serving: {serving[way]['error']}")
        for n, f in (serving.get(way) or {}).get("streams", {}).items():
            if not f["frames_ok"]:
                lines.append(f"warning: {way} n={n}: {f['errors']} failed requests ({f['first_error']}); frames "
                             f"{f['frames_min']}..{f['frames_max']}, not {f['frames_requested']}")  # fmt: skip
    return lines


def package_env() -> dict:
    """The environment for a child Python that must import this very q3tts."""
    root = str(Path(__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
