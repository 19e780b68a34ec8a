"""Frame energies, the speech/silence mask and loudness, shared by pacing, stability and drift."""

from __future__ import annotations

import numpy as np

from .errors import EvalError, require

FRAME_SECONDS = 0.02  # 20 ms energy frames
# A frame is speech when its RMS is within 35 dB of the loud frames (95th percentile): espeak-ng and
# TTS output have near-digital silence between words, real recordings a noise floor 40-60 dB down.
SPEECH_DB_BELOW_LOUD = 35.0
MIN_RMS = 1e-4  # -80 dBFS: below this nothing counts as speech, however quiet the clip


def frame_rms(wav: np.ndarray, sr: int) -> np.ndarray:
    """RMS per 20 ms frame: [frames]."""
    hop = max(1, int(sr * FRAME_SECONDS))
    n = len(wav) // hop
    if n == 0:
        return np.zeros(0, np.float32)
    frames = np.asarray(wav[: n * hop], dtype=np.float64).reshape(n, hop)
    return np.sqrt(np.mean(frames**2, axis=1)).astype(np.float32)


def speech_mask(wav: np.ndarray, sr: int) -> np.ndarray:
    """[frames] bool: frames that hold speech (see SPEECH_DB_BELOW_LOUD)."""
    rms = frame_rms(wav, sr)
    if rms.size == 0:
        return np.zeros(0, bool)
    loud = float(np.percentile(rms, 95))
    return rms > max(MIN_RMS, loud * 10 ** (-SPEECH_DB_BELOW_LOUD / 20))


def speech_span(wav: np.ndarray, sr: int) -> tuple[float, float]:
    """(start, end) in seconds of the first and last speech frame; (0, 0) for silence."""
    idx = np.flatnonzero(speech_mask(wav, sr))
    if idx.size == 0:
        return 0.0, 0.0
    return float(idx[0] * FRAME_SECONDS), float((idx[-1] + 1) * FRAME_SECONDS)


def loudness_lufs(wav: np.ndarray, sr: int) -> float:
    """Integrated loudness (ITU-R BS.1770, via pyloudnorm); -inf for silence or clips under 0.4 s."""
    pyloudnorm = require("pyloudnorm", "pyloudnorm", "loudness (LUFS)")
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)
    if wav.size < 0.4 * sr:  # one gating block
        return float("-inf")
    return float(pyloudnorm.Meter(sr).integrated_loudness(wav))


def check_audio(wav: np.ndarray, sr: int, what: str = "audio") -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise EvalError(f"{what}: expected mono samples [N], got shape {tuple(wav.shape)}")
    if sr <= 0 or not np.all(np.isfinite(wav)):
        raise EvalError(f"{what}: bad sample rate {sr} or non-finite samples")
    return wav
