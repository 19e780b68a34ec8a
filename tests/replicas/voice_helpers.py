"""Plain helpers of the replica tests, importable by name from the tests and from store_worker.py
(a second `conftest` module name would clash with tests/security's)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = os.environ.get("Q3TTS_REQUIRE_POSTGRES", "0") == "1"


def small_voice(tag: str, frames: int = 8, hidden: int = 32, seed: int = 0):
    """A voice prompt made without a model: `tag` as its transcript, so a reader can tell whose it is."""
    from q3tts.voices import VoiceClonePromptItem

    g = torch.Generator().manual_seed(seed)
    return VoiceClonePromptItem(ref_code=torch.randint(0, 2048, (frames, 16), generator=g),
                                ref_spk_embedding=torch.randn(hidden, generator=g), x_vector_only_mode=False,
                                icl_mode=True, ref_text=tag)  # fmt: skip


def missing(reason: str):
    if REQUIRED:
        pytest.fail(f"Q3TTS_REQUIRE_POSTGRES=1 but {reason} (run tools/setup_postgres.sh)")
    pytest.skip(reason, allow_module_level=True)  # also called while a test module is imported


def require_module(name: str):
    """The module, else a skip (a failure under Q3TTS_REQUIRE_POSTGRES=1)."""
    try:
        return __import__(name)
    except ImportError:
        missing(f"{name} is not installed (the `postgres` and `ray` extras)")


def wav_bytes(seconds: float, sr: int = 24000, seed: int = 0) -> bytes:
    noise = (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * 0.1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, noise, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()
