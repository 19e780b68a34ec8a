"""q3tts: a fast, self-contained PyTorch implementation of Qwen3-TTS."""

from .api import InputError, Qwen3TTS, Qwen3TTSModel, VoiceClonePromptItem
from .audio import AudioError, load_audio, save_audio
from .checkpoint import CheckpointError
from .engine import LengthCapWarning
from .sampling import SamplingOptions
from .speech_tokenizer import CodesError, EncodedAudio, Qwen3TTSTokenizer

__all__ = [
    "Qwen3TTS",
    "Qwen3TTSModel",
    "Qwen3TTSTokenizer",
    "EncodedAudio",
    "CodesError",
    "VoiceClonePromptItem",
    "SamplingOptions",
    "InputError",
    "AudioError",
    "CheckpointError",
    "LengthCapWarning",
    "load_audio",
    "save_audio",
]
