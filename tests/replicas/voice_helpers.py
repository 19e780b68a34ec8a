"""Plain helpers of the replica tests, importable by name from the tests and from store_worker.py
(a second `conftest` module name would clash with tests/security's)."""

from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def small_voice(tag: str, frames: int = 8, hidden: int = 32, seed: int = 0):
    """A voice prompt made without a model: `tag` as its transcript, so a reader can tell whose it is."""
    from q3tts.voices import VoiceClonePromptItem

    g = torch.Generator().manual_seed(seed)
    return VoiceClonePromptItem(ref_code=torch.randint(0, 2048, (frames, 16), generator=g),
                                ref_spk_embedding=torch.randn(hidden, generator=g), x_vector_only_mode=False,
                                icl_mode=True, ref_text=tag)  # fmt: skip
