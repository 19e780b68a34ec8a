"""Stability of one generated clip: did it stop where it should, and is the audio usable?

- runaway: generation ran into its text-derived frame cap (it never said end-of-speech);
- early stop: far less audio than the text needs (under MIN_SECONDS_PER_CHARACTER);
- silence (leading, trailing, longest pause), clipping and loudness (LUFS)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .levels import FRAME_SECONDS, check_audio, loudness_lufs, speech_mask

# Natural speech runs at 0.05-0.09 s per character of English text (about 12-18 characters per
# second); under a quarter of the slow end no text can have been spoken whole.
MIN_SECONDS_PER_CHARACTER = 0.015
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
LONG_PAUSE_SECONDS = 2.0  # a pause inside speech longer than this is reported as a problem


@dataclass(frozen=True)
class Stability:
    frames: Optional[int]  # codec frames generated (None for existing audio)
    frame_cap: Optional[int]  # the text-derived cap on frames
    runaway: bool  # frames reached the cap
    early_stop: bool  # too little audio for the text
    leading_silence: float  # seconds
    trailing_silence: float
    longest_pause: float  # the longest silence between speech frames, seconds
    silence_ratio: float  # non-speech frames / all frames
    clipping_ratio: float  # samples at full scale / all samples
    loudness_lufs: float  # -inf for silence

    @property
    def problems(self) -> list[str]:
        found = [name for name in ("runaway", "early_stop") if getattr(self, name)]
        if self.clipping_ratio > 0.001:
            found.append("clipping")
        if self.longest_pause > LONG_PAUSE_SECONDS:
            found.append("long_pause")
        return found


def _runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of False strictly between True frames."""
    idx = np.flatnonzero(mask)
    return [int(b - a - 1) for a, b in zip(idx[:-1], idx[1:]) if b - a > 1]


def stability(wav: np.ndarray, sr: int, text: str, frames: Optional[int] = None,
              frame_cap: Optional[int] = None) -> Stability:  # fmt: skip
    wav = check_audio(wav, sr)
    mask = speech_mask(wav, sr)
    idx = np.flatnonzero(mask)
    total = mask.size
    lead = float(idx[0]) * FRAME_SECONDS if idx.size else len(wav) / sr
    trail = float(total - idx[-1] - 1) * FRAME_SECONDS if idx.size else 0.0
    pauses = _runs(mask)
    chars = max(1, len("".join(text.split())))
    return Stability(
        frames=frames,
        frame_cap=frame_cap,
        runaway=frames is not None and frame_cap is not None and frames >= frame_cap,
        early_stop=len(wav) / sr / chars < MIN_SECONDS_PER_CHARACTER,
        leading_silence=lead,
        trailing_silence=trail,
        longest_pause=max(pauses, default=0) * FRAME_SECONDS,
        silence_ratio=1.0 - float(mask.mean()) if total else 1.0,
        clipping_ratio=float(np.mean(np.abs(wav) >= CLIP_LEVEL)) if wav.size else 0.0,
        loudness_lufs=loudness_lufs(wav, sr),
    )
