"""`q3tts eval`'s work: every item of a test list, for each model (generated) or an audio folder
(existing), scored by every metric that applies; one flat row of numbers per (model, item).

What applies: content (WER/CER) always; speaker similarity and the pace ratio when the item has a
reference clip; drift when the clip holds at least two drift pieces; stability always (with the
frame cap for generated audio). A metric that cannot run (a language the ASR lacks, a clip too
short to embed) leaves its fields empty and says why in the row's `notes`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..audio import SAMPLE_RATE, load_audio
from .asr import load_asr
from .drift import drift
from .errors import EvalError
from .pacing import pacing
from .speaker import load_embedder, similarity
from .stability import stability
from .testlist import TestItem
from .text import error_rate

FRAME_SAMPLES = 1920  # 24 kHz samples per 12.5 Hz codec frame
NATURALNESS_NOTE = "naturalness (UTMOS/DNSMOS) skipped: no such model is installed"


@dataclass
class Scorers:
    """The metric back-ends of one run (built once: the ASR and the embedder load models)."""

    asr_name: str = "pocketsphinx"
    speaker_backend: str = "resemblyzer"  # or "checkpoint", or "none"
    speaker_model: object = None  # a Base Qwen3TTS, for speaker_backend="checkpoint"
    drift_piece_seconds: float = 3.0
    _asr: dict = field(default_factory=dict, init=False, repr=False)  # language -> loaded back-end
    _embedder: object = field(default=None, init=False, repr=False)

    def asr(self, language: str):
        key = "english" if self.asr_name == "pocketsphinx" else language
        if key not in self._asr:
            self._asr[key] = load_asr(self.asr_name, language)
        return self._asr[key]

    def embedder(self):
        if self.speaker_backend == "none":
            return None
        if self._embedder is None:
            self._embedder = load_embedder(self.speaker_backend, self.speaker_model)
        return self._embedder


def _finite(value) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def score_item(item: TestItem, wav: np.ndarray, sr: int, scorers: Scorers, frames: Optional[int] = None,
               frame_cap: Optional[int] = None) -> dict:  # fmt: skip
    """One row: every metric of `wav` (the audio of `item`) that applies."""
    row: dict = {"id": item.id, "language": item.language, "seconds": round(len(wav) / sr, 3)}
    notes: list[str] = []
    _content(row, notes, item, wav, sr, scorers)
    ref = load_audio(item.ref_audio) if item.ref_audio else None
    ref_rate = None
    if ref is not None and item.ref_text:
        ref_rate = pacing(ref, SAMPLE_RATE, item.ref_text, item.language).words_per_second or None
    pace = pacing(wav, sr, item.text, item.language, ref_rate)
    row.update(words_per_second=pace.words_per_second, rate_ratio=pace.rate_ratio,
               seconds_per_character=pace.seconds_per_character, speech_ratio=pace.speech_ratio)  # fmt: skip
    st = stability(wav, sr, item.text, frames, frame_cap)
    row.update(frames=st.frames, frame_cap=st.frame_cap, runaway=st.runaway, early_stop=st.early_stop,
               silence_ratio=st.silence_ratio, clipping_ratio=st.clipping_ratio,
               loudness_lufs=_finite(st.loudness_lufs), problems=" ".join(st.problems))  # fmt: skip
    _voice(row, notes, wav, sr, ref, scorers)
    row["notes"] = "; ".join(notes)
    return row


def _content(row: dict, notes: list, item: TestItem, wav, sr, scorers: Scorers) -> None:
    try:
        transcript = scorers.asr(item.language).transcribe(wav, sr).text
    except EvalError as e:
        notes.append(f"content: {e}")
        return
    er = error_rate(item.text, transcript, item.language)
    row.update(transcript=transcript, **{er.metric: er.rate})


def _voice(row: dict, notes: list, wav, sr, ref, scorers: Scorers) -> None:
    try:
        embedder = scorers.embedder()
        if embedder is None:
            return
        if ref is not None:
            row["speaker_similarity"] = similarity(embedder.embed(wav, sr), embedder.embed(ref, SAMPLE_RATE))
        if len(wav) / sr >= 2 * scorers.drift_piece_seconds:
            d = drift(wav, sr, embedder, piece_seconds=scorers.drift_piece_seconds)
            row.update(drift_min_similarity=d.min_similarity, drift_worst_piece=d.worst,
                       drift_flagged=" ".join(map(str, d.flagged)), drift_loudness_range_lu=d.loudness_range_lu)  # fmt: skip
    except EvalError as e:
        notes.append(f"speaker: {e}")


def generate_item(model, item: TestItem, **options) -> tuple[np.ndarray, int, int, int]:
    """Speak `item` with a loaded Qwen3TTS in its own mode -> (samples, sr, frames, frame cap)."""
    language = None if item.language == "auto" else item.language
    kw = dict(speaker=item.speaker, instruct=item.instruct, language=language)
    if model.kind == "base":
        if not item.ref_audio:
            raise EvalError(f"item {item.id}: a Base checkpoint clones, so the item needs ref_audio")
        kw = dict(language=language, ref_audio=item.ref_audio, ref_text=item.ref_text,
                  x_vector_only_mode=not item.ref_text)  # fmt: skip
    utts = model.utterances(item.text, **kw)
    opts = model.options(**options)
    cap = sum(sum(model.plan(u, opts=opts).caps) for u in utts)
    wav = np.concatenate([chunk for _, chunk in model.stream_batch(utts, chunk_frames=25, **options)])
    return wav, model.sample_rate, len(wav) // FRAME_SAMPLES, cap


def evaluate_model(model, label: str, items: list[TestItem], scorers: Scorers, audio_out: Optional[Path] = None,
                   progress: Callable[[str], None] = lambda s: None, **options) -> list[dict]:  # fmt: skip
    """Generate and score every item with one model; the audio is written to `audio_out` when given."""
    from ..audio import save_audio

    rows = []
    for n, item in enumerate(items, 1):
        progress(f"{label}: {n}/{len(items)} {item.id}")
        wav, sr, frames, cap = generate_item(model, item, **options)
        if audio_out is not None:
            audio_out.mkdir(parents=True, exist_ok=True)
            save_audio(str(audio_out / f"{item.id}.wav"), wav, sr)
        rows.append({"model": label, **score_item(item, wav, sr, scorers, frames, cap)})
    return rows


def evaluate_audio_dir(folder: Path, items: list[TestItem], scorers: Scorers, label: Optional[str] = None,
                       progress: Callable[[str], None] = lambda s: None) -> list[dict]:  # fmt: skip
    """Score existing audio: `folder/<id>.wav` (or .flac/.mp3/.ogg) for every item."""
    rows = []
    for n, item in enumerate(items, 1):
        found = [folder / f"{item.id}.{ext}" for ext in ("wav", "flac", "mp3", "ogg", "opus")]
        path = next((p for p in found if p.is_file()), None)
        if path is None:
            raise EvalError(f"{folder}: no audio for item '{item.id}' (expected {item.id}.wav)")
        progress(f"{label or folder.name}: {n}/{len(items)} {item.id}")
        rows.append({"model": label or folder.name, **score_item(item, load_audio(str(path)), SAMPLE_RATE, scorers)})
    return rows
