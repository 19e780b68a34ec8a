"""Codec fidelity of the speech tokenizer alone: encode -> decode, compared with the input.

Metrics: log-mel L1 distance (lower is better), SI-SNR in dB (higher is better), STOI (0-1, via
pystoi) and wide-band PESQ (1-4.5) when the `pesq` package is installed (else None)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..audio import SAMPLE_RATE, mel_spectrogram, resample
from .errors import require
from .levels import check_audio


@dataclass(frozen=True)
class CodecFidelity:
    frames: int  # codec frames of the clip
    mel_distance: float  # mean |log-mel(in) - log-mel(out)|
    si_snr_db: float
    stoi: float
    pesq: Optional[float]  # None when `pesq` is not installed


def si_snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant signal-to-noise ratio in dB of `estimate` against `reference` (equal lengths)."""
    ref = reference.astype(np.float64) - reference.mean()
    est = estimate.astype(np.float64) - estimate.mean()
    target = np.dot(est, ref) / max(np.dot(ref, ref), 1e-12) * ref
    noise = est - target
    return float(10 * np.log10(max(np.dot(target, target), 1e-12) / max(np.dot(noise, noise), 1e-12)))


def mel_distance(reference: np.ndarray, estimate: np.ndarray) -> float:
    a = mel_spectrogram(torch.from_numpy(reference.astype(np.float32))[None])
    b = mel_spectrogram(torch.from_numpy(estimate.astype(np.float32))[None])
    return float((a - b).abs().mean())


def _pesq(reference: np.ndarray, estimate: np.ndarray) -> Optional[float]:
    try:
        from pesq import pesq
    except ImportError:
        return None
    return float(pesq(16000, resample(reference, SAMPLE_RATE, 16000), resample(estimate, SAMPLE_RATE, 16000), "wb"))


def compare(reference: np.ndarray, estimate: np.ndarray, frames: int = 0) -> CodecFidelity:
    """The fidelity metrics of `estimate` against `reference`, both mono at 24 kHz (trimmed to the shorter)."""
    pystoi = require("pystoi", "pystoi", "STOI")
    n = min(len(reference), len(estimate))
    ref, est = reference[:n].astype(np.float32), estimate[:n].astype(np.float32)
    stoi = float(pystoi.stoi(ref, est, SAMPLE_RATE, extended=False))
    return CodecFidelity(frames, mel_distance(ref, est), si_snr(ref, est), stoi, _pesq(ref, est))


def round_trip(tokenizer, wav: np.ndarray, sr: int) -> CodecFidelity:
    """Encode and decode `wav` with a q3tts Qwen3TTSTokenizer and compare the result with the input."""
    wav = resample(check_audio(wav, sr), sr, SAMPLE_RATE)
    encoded = tokenizer.encode(wav, sr=SAMPLE_RATE)
    frames = int(encoded.audio_codes[0].shape[0])
    decoded, out_sr = tokenizer.decode(encoded)
    return compare(wav, resample(decoded[0], out_sr, SAMPLE_RATE), frames)
