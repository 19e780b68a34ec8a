"""Reading one training clip, and every reason to reject it.

A rejected clip raises `Rejected(kind, detail)`; `kind` is one of `REASONS` (the keys of the
prepare report), `detail` says what exactly was wrong. Nothing here raises anything else for
bad input, so one broken file can never stop a dataset run.

Channels: mono is kept, stereo is down-mixed (the mean of the two channels, as the official
package does for references); more than 2 channels is rejected, since a multi-channel
recording (ambisonics, a mic array, a 5.1 mix) has no single obvious speech channel.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

from ..audio import SAMPLE_RATE, resample
from ..errors import Q3TTSError

MIN_SECONDS = 0.5
MAX_SECONDS = 30.0
SILENCE_DBFS = -60.0  # RMS below this (0.001 of full scale) is taken as silence
CLIP_LEVEL = 0.999  # |sample| at or above this counts as full scale
MAX_CLIPPED_FRACTION = 0.01  # more than 1% of samples at full scale: clipped
MAX_CHANNELS = 2

REASONS = {
    "bad_line": "manifest line is not a JSON object with 'audio' and 'text'",
    "duplicate": "the same item appears earlier in the input",
    "empty_text": "text is empty",
    "bad_language": "language not supported by the model",
    "missing_file": "audio file not found",
    "unreadable": "audio cannot be decoded",
    "channels": f"more than {MAX_CHANNELS} channels",
    "non_finite": "NaN or infinite samples",
    "too_short": f"shorter than {MIN_SECONDS} s",
    "too_long": f"longer than {MAX_SECONDS} s",
    "silent": f"RMS below {SILENCE_DBFS} dBFS",
    "clipped": f"more than {MAX_CLIPPED_FRACTION:.0%} of samples at full scale",
    "ref_audio": "ref_audio is unusable",
}


class Rejected(Q3TTSError):
    def __init__(self, kind: str, detail: str):
        assert kind in REASONS, kind
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass
class Limits:
    min_seconds: float = MIN_SECONDS
    max_seconds: float = MAX_SECONDS


def _open(source) -> tuple[np.ndarray, int]:
    """source: a path, raw encoded bytes, or (samples [N] / [N, C], rate) -> ([N, C] float32, rate)."""
    if isinstance(source, tuple):
        samples, rate = source
        samples = np.asarray(samples)
        if np.issubdtype(samples.dtype, np.integer):
            samples = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
        samples = samples.astype(np.float32, copy=False)
        return (samples[:, None] if samples.ndim == 1 else samples), int(rate)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise Rejected("missing_file", f"{path}" + (" is not a file" if path.exists() else " does not exist"))
        file = path
    else:
        file = io.BytesIO(bytes(source))
    try:
        samples, rate = sf.read(file, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 (libsndfile raises several types for garbage: all mean "unreadable")
        raise Rejected("unreadable", str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    return samples, int(rate)


def read_clip(source, limits: Optional[Limits] = None) -> np.ndarray:
    """A clip as float32 mono at 24 kHz [N], or Rejected. Level checks run on the original
    samples (resampling can overshoot full scale and would fake clipping)."""
    limits = limits or Limits()
    samples, rate = _open(source)
    if samples.ndim != 2 or samples.shape[1] == 0:
        raise Rejected("unreadable", f"unexpected sample array shape {samples.shape}")
    if samples.shape[1] > MAX_CHANNELS:
        raise Rejected("channels", f"{samples.shape[1]} channels (mono or stereo only)")
    if rate <= 0:
        raise Rejected("unreadable", f"sample rate {rate}")
    if not np.isfinite(samples).all():
        raise Rejected("non_finite", "the audio holds NaN or infinite samples")
    seconds = samples.shape[0] / rate
    if seconds < limits.min_seconds:
        raise Rejected("too_short", f"{seconds:.2f} s < {limits.min_seconds:g} s")
    if seconds > limits.max_seconds:
        raise Rejected("too_long", f"{seconds:.1f} s > {limits.max_seconds:g} s")
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    rms = float(np.sqrt(np.mean(mono.astype(np.float64) ** 2)))
    dbfs = 20 * np.log10(max(rms, 1e-12))
    if dbfs < SILENCE_DBFS:
        raise Rejected("silent", f"RMS {dbfs:.1f} dBFS")
    clipped = float(np.mean(np.abs(samples) >= CLIP_LEVEL))
    if clipped > MAX_CLIPPED_FRACTION:
        raise Rejected("clipped", f"{clipped:.1%} of samples at full scale")
    return np.ascontiguousarray(resample(np.ascontiguousarray(mono), rate, SAMPLE_RATE), dtype=np.float32)


def check_text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise Rejected("empty_text", "no text" if text is None else f"text is {text!r}")
    return text.strip()


def check_language(language, supported: set[str]) -> str:
    lang = (language or "auto").strip().lower() if isinstance(language, str) or language is None else None
    if lang is None or (lang != "auto" and lang not in supported):
        raise Rejected("bad_language", f"{language!r} (supported: auto, {', '.join(sorted(supported))})")
    return lang
