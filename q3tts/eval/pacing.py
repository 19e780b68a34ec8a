"""Pacing: how fast a clip speaks, and how that compares with its reference speaker.

The rate is words per second of speech: the words of the text (or of the ASR transcript when no
text is given) over the span from the first to the last speech frame, so leading and trailing
silence do not count but the pauses between words do, as they do for a listener."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .levels import check_audio, speech_mask, speech_span
from .text import normalize


@dataclass(frozen=True)
class Pacing:
    seconds: float  # the whole clip
    speech_seconds: float  # first to last speech frame
    speech_ratio: float  # speech frames / all frames (a VAD's voiced-frame ratio)
    words: int  # words of the (normalised) text
    words_per_second: float  # words / speech_seconds; 0 for a silent clip
    seconds_per_character: float  # clip seconds per character of the text (no spaces)
    rate_ratio: Optional[float] = None  # words_per_second / the reference's (1: same pace; > 1: faster)


def pacing(wav: np.ndarray, sr: int, text: str, language: str = "english",
           reference_rate: Optional[float] = None) -> Pacing:  # fmt: skip
    """The pacing of `wav` speaking `text`; `reference_rate` (words/s) fills `rate_ratio`."""
    wav = check_audio(wav, sr)
    start, end = speech_span(wav, sr)
    mask = speech_mask(wav, sr)
    words = len(normalize(text, language).split())
    chars = max(1, len("".join(text.split())))
    rate = words / (end - start) if end > start else 0.0
    ratio = rate / reference_rate if reference_rate else None
    return Pacing(len(wav) / sr, end - start, float(mask.mean()) if mask.size else 0.0, words, rate,
                  len(wav) / sr / chars, ratio)  # fmt: skip
