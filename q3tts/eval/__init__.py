"""Evaluation: is this voice, checkpoint or fine-tune good? One small module per metric.

- `text`: normalisation and WER/CER;  `asr`: speech -> words (PocketSphinx offline, Whisper when installed);
- `speaker`: speaker similarity (Resemblyzer, or the checkpoint's own speaker encoder);
- `pacing`: speech rate and duration per character;  `stability`: caps, silence, clipping, loudness;
- `drift`: long-form similarity and loudness of each piece against the first;
- `codec`: the speech tokenizer's encode -> decode round trip;
- `testlist`, `runner`, `report`: `q3tts eval` (lists in, JSON/CSV/Markdown/PNG out).

Only the CLI, `q3tts.train` (in-training eval) and the UI import this package; the heavy optional
packages of the `eval` extra are imported inside the functions that need them."""

from .errors import EvalError, MissingPackage

__all__ = ["EvalError", "MissingPackage"]
