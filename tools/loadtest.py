"""Load test of `q3tts serve` on loopback: N concurrent streaming clients for a fixed time, against
a server that batches requests (continuous batching) and one that serves them one at a time.

    .venv/bin/python tools/loadtest.py [--model CHECKPOINT] [--clients 32] [--seconds 30] [--frames 40]

Without --model it writes the tiny random CustomVoice checkpoint first. Each client loops: one
streamed pcm request of exactly `--frames` frames (min_new_tokens = max_new_tokens), read to the end.
Reported per server: requests done, failures (anything but a whole 200 stream and an explicit 429/503), audio
seconds streamed per wall second (throughput), mean time to first byte; then the ratio
batched / one-at-a-time. Prints JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BYTES_PER_SECOND = 24000 * 2  # pcm s16le mono


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, max_batch: int, max_queue: int, voices: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "q3tts.server", "--model", model, "--port", str(port), "--max-batch", str(max_batch),
           "--max-queue", str(max_queue), "--voices-dir", voices, "--no-ui", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit("server did not become ready in 300 s")


async def client(url: str, body: dict, until: float, results: dict, expected_bytes: int) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        while time.time() < until:
            start = time.perf_counter()
            try:
                async with http.stream("POST", url, json=body) as r:
                    if r.status_code in (429, 503):
                        results["rejected"] += 1
                        await r.aread()
                        await asyncio.sleep(0.05)
                        continue
                    if r.status_code != 200:
                        results["failed"] += 1
                        results["errors"].append(f"{r.status_code} {(await r.aread())[:200]!r}")
                        continue
                    first = None
                    size = 0
                    async for piece in r.aiter_bytes():
                        if first is None:
                            first = time.perf_counter() - start
                        size += len(piece)
                if size != expected_bytes:  # a stream cut short (or overlong) is a failure, not a success
                    results["failed"] += 1
                    results["errors"].append(f"200 with {size} bytes, expected {expected_bytes}")
                    continue
                results["done"] += 1
                results["audio_seconds"] += size / BYTES_PER_SECOND
                results["ttfb"].append(first or 0.0)
            except httpx.HTTPError as e:
                results["failed"] += 1
                results["errors"].append(f"{type(e).__name__}: {e}")


async def load(base: str, clients: int, seconds: float, frames: int) -> dict:
    body = {"input": "Load test sentence number one.", "voice": "vivian", "response_format": "pcm",
            "max_new_tokens": frames + 1, "min_new_tokens": frames + 1, "language": "english"}  # fmt: skip
    results = {"done": 0, "failed": 0, "rejected": 0, "audio_seconds": 0.0, "ttfb": [], "errors": []}
    start = time.time()
    expected = frames * 1920 * 2  # samples per frame, bytes per sample
    await asyncio.gather(*[client(base + "/v1/audio/speech", body, start + seconds, results, expected)
                           for _ in range(clients)])  # fmt: skip
    wall = time.time() - start
    ttfb = results.pop("ttfb")
    results.update(wall_seconds=wall, throughput=results["audio_seconds"] / wall,
                   mean_ttfb_seconds=sum(ttfb) / len(ttfb) if ttfb else None, errors=results["errors"][:5])  # fmt: skip
    return results


def run_server(model: str, max_batch: int, args) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as voices:
        proc = start_server(model, port, max_batch, max_queue=args.clients * 2, voices=voices)
        try:
            out = asyncio.run(load(f"http://127.0.0.1:{port}", args.clients, args.seconds, args.frames))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    out["max_batch"] = max_batch
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a CustomVoice checkpoint (default: a tiny random one)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=40, help="frames per request (12.5 per audio second)")
    ap.add_argument("--batch", type=int, default=32, help="max_batch of the batching server")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model = args.model
    if model is None:
        from q3tts.testing.presets import make_checkpoint

        model = str(Path(tempfile.mkdtemp()) / "tiny-custom_voice")
        make_checkpoint(model, "tiny", "custom_voice")
        print(f"using a tiny random CustomVoice checkpoint ({model})", file=sys.stderr)
    batched = run_server(model, args.batch, args)
    single = run_server(model, 1, args)
    report = {"clients": args.clients, "seconds": args.seconds, "frames_per_request": args.frames,
              "batched": batched, "one_at_a_time": single,
              "throughput_ratio": batched["throughput"] / single["throughput"] if single["throughput"] else None,
              "cpu_count": os.cpu_count()}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for name in ("batched", "one_at_a_time"):
        r = report[name]
        ttfb = f"{r['mean_ttfb_seconds']:.2f} s" if r["mean_ttfb_seconds"] is not None else "-"
        print(f"{name:>14}: max_batch {r['max_batch']:>2}  requests {r['done']:>4}  failed {r['failed']}  "
              f"429/503 {r['rejected']}  audio {r['audio_seconds']:7.1f} s  throughput {r['throughput']:6.2f} "
              f"audio-s/s  mean TTFB {ttfb}")  # fmt: skip
        for e in r["errors"]:
            print(f"{'':>16}error: {e}")
    print(f"throughput ratio batched / one at a time: {report['throughput_ratio']:.2f}x")


if __name__ == "__main__":
    main()
