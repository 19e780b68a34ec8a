"""A replica's voice store in its own process (no model), for the race and kill -9 tests:

    python store_worker.py SPEC TAG GO_FILE FRAMES NAME...

opens the store (a folder or a postgresql:// URL), prints "open", waits for GO_FILE, then adds a
voice (transcript TAG, FRAMES reference frames) under each NAME in turn and prints one JSON line {name: "added"|"exists"}."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from voice_helpers import small_voice  # noqa: E402

from q3tts.server.voices import VoiceExists  # noqa: E402
from q3tts.server.voicestore import open_voice_store  # noqa: E402


def main(spec: str, tag: str, go: str, frames: str, *names: str) -> None:
    store = open_voice_store(spec)
    print("open", flush=True)
    while not Path(go).exists():
        time.sleep(0.005)
    results = {}
    for name in names:
        try:
            store.add(name, small_voice(tag, frames=int(frames)), 1.0)
            results[name] = "added"
        except VoiceExists:
            results[name] = "exists"
    print(json.dumps(results), flush=True)
    store.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
