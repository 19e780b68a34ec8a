"""The vox-tts side of `q3tts bench --peer vox-tts`: the CPU peer engine on the same checkpoint.

    PEER_PYTHON q3tts/bench_peer_vox.py --probe                 # prints {"version": ...} or fails
    PEER_PYTHON q3tts/bench_peer_vox.py CONFIG.json RESULT.json

Run by path with the peer environment's Python (tools/peers/setup_vox.sh makes one); our package
never imports this file and this file imports nothing of ours. CONFIG is the bench configuration
written by q3tts/bench.py plus a "peer" entry (the converted .tmod, the voice); RESULT receives
the same raw fields as our side at batch 1 (vox synthesises one utterance per session).

What is measured, and how it matches ours:
- a run is one whole `Engine.synthesize` call, text in and audio out, prefill included;
- the length is forced: `max_frames` = frames, and VOX_DEBUG_NO_EOS=1 (set by the parent) masks
  end-of-speech, so each run makes exactly `frames` frames (counted from the audio: samples / 1920);
- the split (prefill, talker, code predictor, codec) is the difference of the engine's own stage
  counters (`Engine.stats()`) over the run. vox decodes audio on its own thread where it can, so
  the parts may add up to more than the wall time;
- first audio: a session with 1-frame chunks (`chunk_frames=1`, vox's smallest), from the call
  to the first chunk;
- peak RSS: VmHWM of this process, which loads nothing but vox and numpy.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

# Executed by path, this file's folder (q3tts/) would be first on sys.path, and our modules
# (audio, text, ...) would shadow same-named top-level imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

STAGES = {"prefill": "prefill", "talker": "talker", "predictor": "code_predictor", "codec": "codec"}


def memory_kib(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process, from /proc; 0 where there is no /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reference_clip(np, seconds: float = 3.0, sr: int = 24000):
    """The deterministic voiced-like clip the other bench sides clone in Base benches."""
    t = np.arange(int(seconds * sr)) / sr
    wav = sum(0.2 / k * np.sin(2 * np.pi * 140 * k * t) for k in range(1, 6))
    wav = wav * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * np.random.default_rng(0).standard_normal(t.shape)
    return wav.astype(np.float32), sr


def make_voice(engine, np, peer: dict, cfg: dict):
    """The voice for the checkpoint's kind, as ours uses: a named speaker, a description, or an
    x-vector clone of the bench clip."""
    if peer["kind"] == "custom_voice":
        wanted = (peer.get("speaker") or "").lower()
        speakers = engine.speakers
        return engine.speaker_voice(wanted if wanted in speakers else speakers[0])
    if peer["kind"] == "voice_design":
        return engine.design_voice(cfg["instruct"])
    return engine.clone_voice(reference_clip(np), xvector_only=True)


def stage_seconds(engine) -> dict:
    seconds = engine.stats().get("backend", {}).get("seconds", {})
    return {ours: float(seconds.get(theirs, 0.0)) for theirs, ours in STAGES.items()}


def measure(cfg: dict) -> dict:
    import numpy as np
    import vox

    peer = cfg["peer"]
    start = time.perf_counter()
    engine = vox.Engine(peer["model_file"], device="cpu", threads=cfg["threads"])
    load_seconds = time.perf_counter() - start
    rss_after_load = memory_kib("VmRSS") * 1024
    audio_info = engine.info["manifest"]["audio"]
    samples_per_frame, sr = int(audio_info["samples_per_frame"]), int(audio_info["sample_rate"])
    voice = make_voice(engine, np, peer, cfg)
    options = dict(max_frames=cfg["frames"], seed=cfg["seed"], language=cfg["language"])
    samples = []
    for i in range(cfg["warmup"] + cfg["repeat"]):
        before = stage_seconds(engine)
        start = time.perf_counter()
        wav = engine.synthesize(cfg["text"], voice, **options)
        wall = time.perf_counter() - start
        after = stage_seconds(engine)
        if i >= cfg["warmup"]:
            samples.append(dict(
                wall_s=wall, seconds={part: after[part] - before[part] for part in after}, calls={},
                parts_timed=list(after), frames_per_row=[len(wav) // samples_per_frame],
                audio_seconds_per_row=[len(wav) / sr],
            ))  # fmt: skip
    first_chunk_ms, first_chunk_samples = [], 0
    for i in range(cfg["warmup"] + cfg["repeat"]):
        start = time.perf_counter()
        session = engine.session(voice, chunk_frames=1, **options)
        session.feed(cfg["text"])
        first = next(iter(session))
        elapsed = 1e3 * (time.perf_counter() - start)
        session.cancel()
        if i >= cfg["warmup"]:
            first_chunk_ms.append(elapsed)
            first_chunk_samples = len(first)
    threads = engine.info.get("plan", {}).get("threads")
    return dict(
        implementation="vox-tts",
        env=dict(
            vox=vox.__version__,
            python=sys.version.split()[0],
            device="cpu",
            threads=threads,
            quant=peer["quant"],
            backend=engine.info.get("backend"),
            debug_no_eos=os.environ.get("VOX_DEBUG_NO_EOS") == "1",
        ),
        checkpoint=dict(kind=peer["kind"]),
        load_seconds=load_seconds,
        rss_after_load_bytes=rss_after_load,
        peak_rss_bytes=memory_kib("VmHWM") * 1024,
        first_chunk_ms=statistics.median(first_chunk_ms),
        first_chunk_ms_min=min(first_chunk_ms),
        first_chunk_frames=first_chunk_samples / samples_per_frame,
        runs={"1": samples},
        samples_per_frame=samples_per_frame,
        sample_rate=sr,
    )


def main(argv: list[str]) -> int:
    if argv == ["--probe"]:
        import vox

        vox.devices()  # loads the native module: a wheel for another CPU fails here, not mid-run
        print(json.dumps(dict(version=vox.__version__)))
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    cfg = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(measure(cfg), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
