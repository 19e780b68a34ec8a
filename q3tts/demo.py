"""The main job (`make demo`): synthesise a sentence, streaming, and write it to out/demo.wav.

Uses the checkpoint named by Q3TTS_MODEL (a folder or a Hugging Face repo id). Without one, it
writes a tiny random-weight checkpoint and says so: that audio is noise, not speech.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

TEXT = "Hello! This is q3tts speaking, streaming audio while it is still being generated."


def main() -> int:
    from .api import Qwen3TTS
    from .audio import save_audio
    from .console import show_warning
    from .testing.presets import make_checkpoint

    model = os.environ.get("Q3TTS_MODEL")
    if not model:
        model = "checkpoints/tiny-custom_voice"
        if not (Path(model) / "model.safetensors").exists():
            make_checkpoint(model, "tiny", "custom_voice", seed=0)
        print("NOTE: no real model configured (set Q3TTS_MODEL=<folder or Qwen/... repo id>);")
        print(f"      using the tiny RANDOM-weight checkpoint {model}: the audio is noise, not speech.")
    t0 = time.perf_counter()
    tts = Qwen3TTS.from_pretrained(model)
    print(f"loaded {model} ({tts.kind}) on {tts.device} in {time.perf_counter() - t0:.2f} s")
    kwargs = {}
    if tts.kind == "custom_voice":
        kwargs["speaker"] = (tts.get_supported_speakers() or ["vivian"])[0]
    elif tts.kind == "voice_design":
        kwargs["instruct"] = "A warm, calm female voice, speaking clearly."
    else:
        print("this is a Base (voice clone) checkpoint: run `q3tts clone` with a reference clip instead")
        return 1
    t0 = time.perf_counter()
    chunks, first = [], None
    with warnings.catch_warnings():  # one line each (random weights never say end-of-speech), as the CLI does
        warnings.showwarning = show_warning
        for chunk in tts.stream(TEXT, language="english", max_new_tokens=200, **kwargs):
            first = first or time.perf_counter() - t0
            chunks.append(chunk)
    wall = time.perf_counter() - t0
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    seconds = audio.size / tts.sample_rate
    Path("out").mkdir(exist_ok=True)
    save_audio("out/demo.wav", audio, tts.sample_rate)
    print(f"wrote out/demo.wav: {seconds:.2f} s of audio in {len(chunks)} chunks, first chunk after "
          f"{(first or 0) * 1000:.0f} ms, real-time factor {wall / max(seconds, 1e-9):.2f} (wall/audio)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
