"""One process of the shared-folder test: `python voice_library_worker.py FOLDER TAG GO_FILE`.
Waits for GO_FILE, then runs 4 rounds of 12 adds and 12 listings at once on a VoiceLibrary over
FOLDER, and prints one JSON line: {"errors": [...], "added": n}."""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from q3tts.server.voices import VoiceLibrary
from q3tts.voices import VoiceClonePromptItem

ROUNDS, ADDS, LISTINGS = 4, 12, 12


def main(folder: str, tag: str, go: str) -> None:
    library = VoiceLibrary(folder)
    item = VoiceClonePromptItem(None, torch.zeros(64), x_vector_only_mode=True, icl_mode=False)
    errors: list[str] = []

    def attempt(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # every failure counts: the test wants none
            errors.append(f"{type(e).__name__}: {e}")

    while not os.path.exists(go):
        time.sleep(0.01)
    with ThreadPoolExecutor(ADDS + LISTINGS) as pool:
        for r in range(ROUNDS):
            jobs = [pool.submit(attempt, library.add, f"{tag}{r}-{i:02d}", item, 1.0) for i in range(ADDS)]
            jobs += [pool.submit(attempt, library.list) for _ in range(LISTINGS)]
            for j in jobs:
                j.result()
    print(json.dumps({"errors": errors, "added": ROUNDS * ADDS}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
