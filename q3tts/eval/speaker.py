"""Speaker similarity: the cosine of two speaker embeddings, from one of two back-ends.

- `ResemblyzerEmbedder`: Resemblyzer's GE2E voice encoder (its weights ship in the wheel).
- `CheckpointEmbedder`: the checkpoint's own speaker encoder (the ECAPA-TDNN that makes a clone's
  x-vector), so "how close is the clone to what the model was told to copy" is asked in the
  model's own terms. Only a trained checkpoint's encoder measures voices; a random one does not.

Both take (samples, sample_rate) and return a unit vector; `similarity(a, b)` is their dot product."""

from __future__ import annotations

import numpy as np
import torch

from ..audio import SAMPLE_RATE, mel_spectrogram, resample
from .errors import EvalError, require

BACKENDS = ("resemblyzer", "checkpoint")
MIN_SECONDS = 0.5  # shorter clips give embeddings dominated by a few frames


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise EvalError("the speaker embedding is zero or not finite (silent audio?)")
    return (v / norm).astype(np.float32)


def _check(wav: np.ndarray, sr: int) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if wav.size < MIN_SECONDS * sr:
        raise EvalError(f"{wav.size / sr:.2f} s of audio is too short for a speaker embedding (>= {MIN_SECONDS} s)")
    return wav


def _webrtcvad_without_pkg_resources() -> None:
    """Resemblyzer imports webrtcvad, whose 2.0.10 release reads its version through pkg_resources,
    which setuptools >= 81 no longer has. We never call its VAD (see embed), so when only that import
    fails, a stand-in module with the compiled VAD keeps Resemblyzer importable."""
    import sys
    import types

    if "webrtcvad" in sys.modules:
        return
    try:
        import webrtcvad  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "pkg_resources":
            return  # not installed at all: require() below names the package
        stand_in = types.ModuleType("webrtcvad")
        stand_in.__doc__ = "webrtcvad without pkg_resources (q3tts.eval.speaker)"
        sys.modules["webrtcvad"] = stand_in


class ResemblyzerEmbedder:
    name = "resemblyzer"
    SAMPLE_RATE = 16000

    def __init__(self, device: str = "cpu"):
        _webrtcvad_without_pkg_resources()
        resemblyzer = require("resemblyzer", "resemblyzer", "Resemblyzer speaker similarity")
        self.encoder = resemblyzer.VoiceEncoder(device=device, verbose=False)

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        wav = resample(_check(wav, sr), sr, self.SAMPLE_RATE)
        # Not resemblyzer.preprocess_wav: its webrtcvad trimming drops the quiet starts of the short
        # pieces drift compares; a peak normalisation keeps the level out of the embedding.
        wav = wav / max(float(np.abs(wav).max()), 1e-6) * 0.9
        return _unit(self.encoder.embed_utterance(wav))


class CheckpointEmbedder:
    """The x-vector of a Base checkpoint's speaker encoder (`model` is a loaded q3tts Qwen3TTS)."""

    name = "checkpoint"

    def __init__(self, model):
        self.encoder = model.checkpoint.networks.speaker_encoder
        if self.encoder is None:
            raise EvalError(f"the {model.kind} checkpoint has no speaker encoder (only Base checkpoints do)")
        self.device = model.device

    @torch.inference_mode()
    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        wav = np.clip(resample(_check(wav, sr), sr, SAMPLE_RATE), -1.0, 1.0)
        mel = mel_spectrogram(torch.from_numpy(wav)[None])
        x = self.encoder(mel.to(self.device, self.encoder.fc.weight.dtype))[0]
        return _unit(x.float().cpu().numpy())


def load_embedder(name: str = "resemblyzer", model=None, device: str = "cpu"):
    if name == "resemblyzer":
        return ResemblyzerEmbedder(device)
    if name == "checkpoint":
        if model is None:
            raise EvalError("the 'checkpoint' speaker back-end needs a Base model (--speaker-model)")
        return CheckpointEmbedder(model)
    raise EvalError(f"unknown speaker back-end '{name}' (choose from {', '.join(BACKENDS)})")


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two unit embeddings, in [-1, 1]."""
    return float(np.dot(a, b))
