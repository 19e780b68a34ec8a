"""Speech metrics during training: every validation, the first `eval_generate` held-out items are
spoken by the current weights (exported to output_dir/.speech-eval, a CustomVoice checkpoint) with
their own speakers, and scored against the item: speaker similarity of the generated audio to the
item's own recording (its codes through the codec) and WER of the ASR transcript against its text.

The metrics come from q3tts.eval (the `eval` extra); the validation record gets `speaker_similarity`
and `wer` (means over the items; `wer` only over the items the ASR's language covers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from .data import Example
from .export import export_model

EVAL_FOLDER = ".speech-eval"
BEST_METRICS = {"loss": "lower", "wer": "lower", "speaker_similarity": "higher"}


class SpeechEval:
    """Built once per run: the ASR and the speaker embedder load their models once."""

    def __init__(self, asr: str = "pocketsphinx", speaker_backend: str = "resemblyzer"):
        from ..eval.runner import Scorers

        self.scorers = Scorers(asr, speaker_backend)

    @torch.no_grad()
    def __call__(self, module, source, out_dir: Path, items: list[Example], default_speaker: str, dtype) -> dict:
        from ..api import Qwen3TTS
        from ..eval.errors import EvalError
        from ..eval.speaker import similarity
        from ..eval.text import error_rate

        folder = out_dir / EVAL_FOLDER
        export_model(module, source, folder, dtype)
        tts = Qwen3TTS.from_pretrained(folder, device="cpu", dtype="float32")
        decoder = tts.checkpoint.speech_tokenizer.decoder
        embedder = self.scorers.embedder()
        sims, wers = [], []
        for ex in items:
            # Capped at twice the recording plus 2 s: an early, still-runaway model would otherwise
            # speak to the text's length cap at every validation (140 frames for "Hello there.").
            cap = 2 * ex.codes.shape[0] + 25
            wavs, sr = tts.generate_custom_voice(ex.text, speaker=ex.speaker or default_speaker, seed=0,
                                                 max_new_tokens=cap)  # fmt: skip
            wav = wavs[0]
            truth = decoder(ex.codes.T[None].to(tts.device))[0, 0].float().cpu().numpy()
            try:
                sims.append(similarity(embedder.embed(wav, sr), embedder.embed(truth, sr)))
            except EvalError:
                pass  # too short or silent to embed: the item counts for WER only
            try:
                heard = self.scorers.asr(ex.language if ex.language != "auto" else "english").transcribe(wav, sr)
                wers.append(error_rate(ex.text, heard.text, ex.language).rate)
            except EvalError:
                pass  # a language the ASR lacks
        tts.unload()
        shutil.rmtree(folder, ignore_errors=True)
        result = {"speech_eval_items": len(items)}
        if sims:
            result["speaker_similarity"] = float(np.mean(sims))
        if wers:
            result["wer"] = float(np.mean(wers))
        return result


def check_settings(tc) -> None:
    from .config import ConfigError

    if tc.metric_for_best not in BEST_METRICS:
        raise ConfigError(f"metric_for_best must be one of {', '.join(BEST_METRICS)}, got {tc.metric_for_best!r}")
    if tc.metric_for_best != "loss" and tc.eval_generate < 1:
        raise ConfigError(f"metric_for_best={tc.metric_for_best} needs eval_generate >= 1 (items spoken per eval)")
    if tc.eval_generate < 0:
        raise ConfigError("eval_generate must be >= 0")


def better(metric: str, value, best) -> bool:
    """Whether `value` of `metric` beats `best` (None: nothing yet, so yes)."""
    if best is None:
        return True
    if value is None:
        return False
    return value > best if BEST_METRICS[metric] == "higher" else value < best
