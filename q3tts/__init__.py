"""q3tts: a fast, self-contained PyTorch implementation of Qwen3-TTS.

Names load on first use, so `q3tts --help` and other light commands don't import torch."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Qwen3TTS": "api",
    "Qwen3TTSModel": "api",
    "VoiceClonePromptItem": "voices",
    "InputError": "errors",
    "Q3TTSError": "errors",
    "Qwen3TTSTokenizer": "speech_tokenizer",
    "EncodedAudio": "speech_tokenizer",
    "CodesError": "speech_tokenizer",
    "SamplingOptions": "generate.sampling",
    "AudioError": "audio",
    "load_audio": "audio",
    "save_audio": "audio",
    "CheckpointError": "checkpoint",
    "LengthCapWarning": "generate.engine",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'q3tts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
