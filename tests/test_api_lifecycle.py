"""Lazy loading and unload(): one process can switch models and get the memory back."""

from __future__ import annotations

import gc
import weakref

import pytest

from q3tts.api import Qwen3TTS
from q3tts.checkpoint import CheckpointError


def test_lazy_load_then_unload_frees_the_weights(make_tiny):
    tts = Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu", dtype="float32", lazy=True)
    assert not tts.loaded
    assert "vivian" in tts.get_supported_speakers()  # first use loads
    assert tts.loaded
    talker = weakref.ref(tts.checkpoint.networks.talker)
    decoder = weakref.ref(tts.checkpoint.speech_tokenizer.decoder)
    tts.unload()
    gc.collect()
    assert not tts.loaded
    assert talker() is None and decoder() is None, "unload() left the weights reachable"
    (wav,), sr = tts.generate_custom_voice("Hi.", speaker="Vivian", max_new_tokens=5, do_sample=False,
                                           subtalker_dosample=False)  # fmt: skip
    assert tts.loaded and sr == 24000 and wav.shape[0] > 0


def test_lazy_missing_checkpoint_fails_on_first_use(tmp_path):
    tts = Qwen3TTS.from_pretrained(tmp_path / "nothing", device="cpu", lazy=True)
    with pytest.raises(CheckpointError, match="nothing"):
        tts.get_supported_languages()
