"""Speech -> words with timings, through a pluggable back-end.

- "pocketsphinx" (the default): PocketSphinx's US English model, shipped in its wheel: no download.
- "faster-whisper" / "whisper": when the user has the package and its weights (any language).

`load_asr(name, language)` picks one and says what to install when it cannot serve the language."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..audio import resample
from .errors import EvalError, require

ENGLISH = {"english", "en", "en-us", "en-gb", "auto"}
BACKENDS = ("pocketsphinx", "faster-whisper", "whisper")


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds from the start of the clip
    end: float


@dataclass(frozen=True)
class Transcript:
    text: str
    words: tuple[Word, ...]


class PocketSphinxASR:
    """Offline US English recognition; each clip is decoded alone, so its transcript does not depend on others."""

    name = "pocketsphinx"
    SAMPLE_RATE = 16000
    FRAME_SECONDS = 0.01  # the decoder's frame shift
    # A fixed -50 dBFS noise floor before decoding: on synthetic speech with digitally silent gaps
    # the decoder's noise and cepstral-mean estimates go wrong. Measured on 3 espeak-ng sentences
    # at 140 wpm: WER 0.57 without it, 0.24 with it (0.22 with the klatt2 voice).
    NOISE_FLOOR = 0.003

    def __init__(self):
        self.pocketsphinx = require("pocketsphinx", "pocketsphinx", "the offline ASR back-end")

    def transcribe(self, wav: np.ndarray, sr: int) -> Transcript:
        pcm = resample(np.asarray(wav, dtype=np.float32), sr, self.SAMPLE_RATE)
        pcm = pcm + self.NOISE_FLOOR * np.random.default_rng(0).standard_normal(pcm.size)  # seeded: repeatable
        # A fresh decoder per clip (0.4 s): one decoder carries its cepstral-mean estimate from clip to
        # clip, so a clip's transcript (measured: 0.7 or 1.0 WER by the order) depended on the clips before it.
        decoder = self.pocketsphinx.Decoder(samprate=self.SAMPLE_RATE, dither=True, loglevel="FATAL")
        decoder.start_utt()
        decoder.process_raw((np.clip(pcm, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        words = []
        for seg in decoder.seg():
            word = seg.word.split("(")[0]  # "read(2)": the dictionary's second pronunciation
            if word.startswith("<") or word.startswith("[") or word == "<sil>":
                continue
            words.append(Word(word, seg.start_frame * self.FRAME_SECONDS, (seg.end_frame + 1) * self.FRAME_SECONDS))
        return Transcript(hyp.hypstr if hyp else "", tuple(words))


class WhisperASR:
    """faster-whisper or openai-whisper, with the user's own weights (`model` is a size or a path)."""

    def __init__(self, backend: str, model: str = "small", language: Optional[str] = None):
        self.name, self.language = backend, None if language in (None, "auto") else language
        if backend == "faster-whisper":
            fw = require("faster_whisper", "faster-whisper", "the faster-whisper ASR back-end")
            self.model = fw.WhisperModel(model, device="auto", compute_type="default")
        else:
            whisper = require("whisper", "openai-whisper", "the whisper ASR back-end")
            self.model = whisper.load_model(model)

    def transcribe(self, wav: np.ndarray, sr: int) -> Transcript:
        audio = resample(np.asarray(wav, dtype=np.float32), sr, 16000)
        if self.name == "faster-whisper":
            segments, _ = self.model.transcribe(audio, language=self.language, word_timestamps=True)
            segments = list(segments)
            words = [Word(w.word.strip(), w.start, w.end) for s in segments for w in (s.words or ())]
            return Transcript(" ".join(s.text.strip() for s in segments), tuple(words))
        result = self.model.transcribe(audio, language=self.language, word_timestamps=True)
        words = [Word(w["word"].strip(), w["start"], w["end"]) for s in result["segments"] for w in s.get("words", ())]
        return Transcript(result["text"].strip(), tuple(words))


def load_asr(name: str = "pocketsphinx", language: str = "english", model: str = "small"):
    """An ASR back-end by name that can transcribe `language`; EvalError naming what to install if none."""
    if name not in BACKENDS:
        raise EvalError(f"unknown ASR back-end '{name}' (choose from {', '.join(BACKENDS)})")
    if name == "pocketsphinx":
        if language.lower() not in ENGLISH:
            raise EvalError(f"the offline pocketsphinx ASR knows only English, not '{language}': "
                            "pip install faster-whisper (or openai-whisper) and pass --asr faster-whisper")  # fmt: skip
        return PocketSphinxASR()
    return WhisperASR(name, model, language)
