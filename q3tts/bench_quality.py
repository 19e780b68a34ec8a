"""`q3tts bench --quality MODE[,MODE...]`: what each lossy mode costs in accuracy, against float32.

    q3tts bench --model PATH --quality int8 --frames 24 --threads 2
    q3tts bench --model PATH --quality int8,none@bfloat16 --json

    from q3tts.bench_quality import quality_report
    report = quality_report(PATH, ["int8"], frames=24)      # report.modes[0].top1_mean, .kl_mean, ...

A MODE is what `Qwen3TTS.from_pretrained(quantize=...)` takes ("none" for float weights), passed
through untouched, so a new mode needs no change here; `MODE@DTYPE` also sets the codec's dtype
(`codec_dtype=`, "auto" when left out: the mode's own default, e.g. bf16 with int8 on CPUs with
native bf16). `none@bfloat16` measures the codec alone.

Method. Float32 weights with a float32 codec generate a reference of `frames` frames once: greedy
for every codebook, end of speech masked (as bench does), no repetition penalty. Then each model,
float32 included, is teacher-forced over that same sequence on the engine's own decode core
(decode.py, the eager step form): the same prompt prefill, then at every frame the real step runs
(codebook-0 scores from the talker's codec_head, the code predictor fed the reference codes of
codebooks 0..g-1 for codebook g, the reference frame fed back to the talker) with every choice
replaced by the reference code and every distribution recorded. Both models are conditioned on
the same history at every step, so the figures measure a mode's error per step, not the drift of
two generations that parted. Float32 teacher-forced over its own greedy reference must choose it
again (`reference_top1` = 1.0): the check that the forcing feeds the right codes.

Figures, per codebook (0: the talker's codec_head as sampling sees it, control ids suppressed and
end of speech masked; 1..15: the code predictor's heads) and their mean over the codebooks:

  top-1       fraction of steps whose argmax equals float32's
  KL          mean KL(float32 || mode) of the softmax over the step's ids, in nats
  codec SNR   the reference codes decoded by float32's codec and by the mode's (its codec dtype):
              10 log10(signal / difference energy) in dB; inf when the samples are identical
"""

from __future__ import annotations

import dataclasses
import gc
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from .api import Qwen3TTS, resolve_codec_dtype, resolve_device, resolve_quantize
from .errors import InputError, Q3TTSError
from .generate.decode import DecodeBatch, RowRequest
from .generate.engine import Engine, LengthCapWarning
from .generate.prompt import Prompt, Utterance
from .generate.sampling import SamplingOptions

DEFAULT_TEXT = ("Hello! This is a check of how closely a quantised model follows the full-precision one, "
                "frame by frame.")  # fmt: skip
DEFAULT_INSTRUCT = "A calm, clear adult voice."  # VoiceDesign checkpoints
FLOAT_CODEC = "float32"


class QualityError(Q3TTSError):
    """A mode that cannot be measured, or teacher forcing that did not replay the reference."""


@dataclass(frozen=True)
class LossyMode:
    """A way to load the model, measured against float32."""

    quantize: Optional[str] = None  # passed to from_pretrained(quantize=) as it is; None: float weights
    codec_dtype: str = "auto"  # passed to from_pretrained(codec_dtype=); auto: the mode's default

    @classmethod
    def parse(cls, text: str) -> "LossyMode":
        """ "int8" -> LossyMode("int8"); "int8@bfloat16" also sets the codec dtype; "none": float weights."""
        quantize, at, codec = text.strip().partition("@")
        if not quantize or (at and not codec):
            raise InputError(f"a quality mode is QUANTIZE or QUANTIZE@CODEC_DTYPE (int8, none@bfloat16), got {text!r}")
        return cls(None if quantize == "none" else quantize, codec or "auto")

    @property
    def label(self) -> str:
        name = self.quantize or "none"
        return name if self.codec_dtype == "auto" else f"{name}@{self.codec_dtype}"


def parse_modes(text: str) -> list[LossyMode]:
    """ "int8,none@bfloat16" -> the modes, in order. A per-network spec keeps its own commas:
    "int4,talker=int4,predictor=q8" is two modes (a network named twice starts a new one)."""
    parts: list[str] = []
    named: set[str] = set()  # networks in the per-network spec being read
    for item in (p.strip() for p in text.split(",")):
        network = item.partition("=")[0] if "=" in item else None
        if network is not None and parts and named and network not in named and "@" not in parts[-1]:
            parts[-1] += "," + item
            named.add(network)
        elif item:
            parts.append(item)
            named = {network} if network is not None else set()
    modes = [LossyMode.parse(part) for part in parts]
    if not modes:
        raise InputError("--quality needs at least one mode, e.g. int8")
    return modes


@dataclass(frozen=True)
class CodebookFigures:
    codebook: int  # 0: the talker's codebook; 1..15: the code predictor's
    top1: float  # fraction of steps whose argmax equals float32's
    kl: float  # mean KL(float32 || mode) per step, nats


@dataclass(frozen=True)
class ModeQuality:
    mode: str  # the label asked for (LossyMode.label)
    quantize: Optional[str]
    codec_dtype: str  # as resolved by the loader
    codebooks: list[CodebookFigures]
    top1_mean: float  # over the codebooks
    kl_mean: float
    reference_top1: float  # fraction of all picks whose argmax is the reference's code
    codec_snr_db: float  # inf: the samples are identical


@dataclass(frozen=True)
class QualityReport:
    model: str
    kind: str
    size: str
    frames: int
    text: str
    device: str
    reference_top1: float  # float32 teacher-forced over its own greedy reference: 1.0 when forcing is right
    modes: list[ModeQuality]

    def to_json(self) -> dict:
        """The report as plain JSON values: a non-finite float (an inf SNR) becomes its name, "inf"."""

        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(dataclasses.asdict(self))


# ----------------------------------------------------------------------------------------------
# Teacher forcing on the decode core
# ----------------------------------------------------------------------------------------------


def forcing_options(frames: int) -> SamplingOptions:
    """Greedy everywhere, no repetition penalty, end of speech masked for all `frames` frames."""
    return SamplingOptions(do_sample=False, subtalker_dosample=False, repetition_penalty=1.0,
                           max_new_tokens=frames + 1, min_new_tokens=frames + 1)  # fmt: skip


class TeacherForcedBatch(DecodeBatch):
    """A one-row eager DecodeBatch whose choices are the reference's codes. The real step runs
    (codec_head and its scores, the code predictor, the talker step, the bookkeeping); only
    `choose_grouped`, which both the codebook-0 choice and the code predictor's picks go through,
    is replaced: it records the log-softmax of the scores it is shown and returns the reference code."""

    def __init__(self, engine: Engine, reference: torch.Tensor):
        super().__init__(engine, 1)
        self.reference = reference  # [N, G] int64
        self.frame = 0
        self.group = -1  # the codebook of the last pick in this frame
        self.logprobs: list[list[torch.Tensor]] = [[] for _ in range(engine.groups)]  # per codebook: [V] per frame

    def choose_grouped(self, scores: torch.Tensor, groups: list) -> torch.Tensor:
        self.group = 0 if groups is self._code0_groups else self.group + 1
        self.logprobs[self.group].append(torch.log_softmax(scores[0].float(), dim=-1).cpu())
        return self.reference[self.frame, self.group].view(1).to(scores.device)


@torch.inference_mode()
def teacher_forced_logprobs(tts: Qwen3TTS, utterance: Utterance, reference: torch.Tensor) -> list[torch.Tensor]:
    """Log-softmax [N, V_g] of codebook g at every frame, per codebook, with the model fed `reference`
    [N, G]. Raises QualityError when the step did not take the reference codes (a step form that
    picks without `choose_grouped`)."""
    engine = Engine(tts.checkpoint.networks, tts.checkpoint.config, static="off")
    if reference.ndim != 2 or reference.shape[0] < 1 or reference.shape[1] != engine.groups:
        raise InputError(f"reference codes must be [frames, {engine.groups}], got {list(reference.shape)}")
    frames, groups = reference.shape
    prompt = own_prompt(tts, utterance, frames)
    batch = TeacherForcedBatch(engine, reference)
    batch.admit([RowRequest(prompt, forcing_options(frames), cap=frames)])
    for t in range(frames):
        batch.frame, batch.group = t, -1
        events = batch.step()
        took = len(events) == 1 and events[0].codes is not None and torch.equal(events[0].codes, reference[t])
        if not took or batch.group != groups - 1:
            made = events[0].codes.tolist() if len(events) == 1 and events[0].codes is not None else events
            raise QualityError(f"teacher forcing did not take at frame {t}: {batch.group + 1} of {groups} picks "
                               f"were forced and the step made {made}, not {reference[t].tolist()}")  # fmt: skip
    return [torch.stack(lp) for lp in batch.logprobs]


def own_prompt(tts: Qwen3TTS, utterance: Utterance, frames: int) -> Prompt:
    """The utterance's prompt built by this model's own networks, in one piece."""
    return tts.plan(utterance, max_piece_tokens=0, opts=forcing_options(frames)).prompts[0]


@torch.inference_mode()
def reference_codes(tts: Qwen3TTS, utterance: Utterance, frames: int) -> torch.Tensor:
    """Greedy codes [frames, G] of the utterance, end of speech masked, on the eager step form
    (the form the teacher forcing runs, so float32 can replay them exactly)."""
    engine = Engine(tts.checkpoint.networks, tts.checkpoint.config, static="off")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthCapWarning)  # the cap is how the reference stops
        steps = list(engine.frames([own_prompt(tts, utterance, frames)], forcing_options(frames), [frames]))
    codes = torch.stack([s.codes[0] for s in steps])
    assert codes.shape[0] == frames, f"expected {frames} frames, got {codes.shape[0]}"
    return codes


@torch.inference_mode()
def decode(tts: Qwen3TTS, codes: torch.Tensor) -> np.ndarray:
    """Codes [N, G] -> float32 samples, offline, with this model's codec in its dtype."""
    decoder = tts.checkpoint.speech_tokenizer.decoder
    device = next(decoder.parameters()).device
    return decoder(codes.T[None].to(device))[0, 0].float().cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def codebook_figures(reference: list[torch.Tensor], mode: list[torch.Tensor]) -> list[CodebookFigures]:
    """Per codebook: top-1 agreement and mean KL(reference || mode), from log-probs [N, V]."""
    out = []
    for g, (p, q) in enumerate(zip(reference, mode)):
        top1 = (p.argmax(-1) == q.argmax(-1)).double().mean().item()
        p64, q64 = p.double(), q.double()
        prob = p64.exp()
        # ids the step masked (-inf in both) carry no mass: 0 * (-inf - -inf) would be nan
        kl = torch.where(prob > 0, prob * (p64 - q64), 0.0).sum(-1).clamp(min=0).mean().item()
        out.append(CodebookFigures(g, top1, kl))
    return out


def reference_agreement(logprobs: list[torch.Tensor], reference: torch.Tensor) -> float:
    """Fraction of all picks (frames x codebooks) whose argmax is the reference's code."""
    hits = sum(int((lp.argmax(-1) == reference[:, g]).sum()) for g, lp in enumerate(logprobs))
    return hits / reference.numel()


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10 log10(energy of `reference` / energy of the difference); inf when identical."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - test.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return math.inf
    return -math.inf if signal == 0 else 10 * math.log10(signal / noise)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------

Voice = Union[dict, Callable[[Qwen3TTS], dict], None]


def default_voice(tts: Qwen3TTS) -> dict:
    if tts.kind == "custom_voice":
        return dict(speaker=tts.get_supported_speakers()[0])
    if tts.kind == "voice_design":
        return dict(instruct=DEFAULT_INSTRUCT)
    raise InputError("a Base checkpoint needs voice=dict(voice_clone_prompt=...) (or `q3tts bench --quality`, "
                     "which clones a synthetic clip)")  # fmt: skip


def check_modes(modes: Sequence[LossyMode], device: torch.device) -> None:
    """Refuse a mode the loader would refuse, before the float32 reference is made."""
    for mode in modes:
        try:
            resolve_quantize(mode.quantize, device)
            resolve_codec_dtype(mode.codec_dtype, device)
        except (Q3TTSError, ValueError) as e:
            raise QualityError(f"mode {mode.label}: {e}") from None


def load(model, device: torch.device, quantize: Optional[str], codec_dtype: str) -> Qwen3TTS:
    return Qwen3TTS.from_pretrained(model, device=device, dtype="float32", quantize=quantize, codec_dtype=codec_dtype)


def quality_report(
    model,
    modes: Sequence[Union[str, LossyMode]],
    frames: int = 24,
    text: str = DEFAULT_TEXT,
    language: str = "english",
    voice: Voice = None,
    device="cpu",
    progress: Callable[[str], None] = lambda message: None,
) -> QualityReport:
    """Measure each mode against float32 on checkpoint `model` (a folder or repo id) over `frames`
    teacher-forced frames. `modes`: strings ("int8", "none@bfloat16": see LossyMode.parse) or
    LossyModes. `voice`: the voice arguments of the checkpoint's kind (speaker=, instruct=,
    voice_clone_prompt=), or a function of the loaded float32 model that returns them; default: the
    first speaker (CustomVoice) or a fixed description (VoiceDesign). One model is loaded at a time."""
    if frames < 1:
        raise InputError(f"frames must be at least 1, got {frames}")
    modes = [LossyMode.parse(m) if isinstance(m, str) else m for m in modes]
    device = resolve_device(device)
    check_modes(modes, device)
    progress(f"float32 reference: {frames} greedy frames, then teacher-forced")
    base = load(model, device, None, FLOAT_CODEC)
    voice_args = voice(base) if callable(voice) else (voice or default_voice(base))
    utterance = base.utterances(text, language=language, **voice_args)[0]
    reference = reference_codes(base, utterance, frames)
    base_logprobs = teacher_forced_logprobs(base, utterance, reference)
    base_audio = decode(base, reference)
    report = dict(model=str(model), kind=base.kind, size=base.checkpoint.config.tts_model_size or "", frames=frames,
                  text=text, device=str(device), reference_top1=reference_agreement(base_logprobs, reference))  # fmt: skip
    del base
    gc.collect()
    results = []
    for mode in modes:
        progress(f"mode {mode.label}: teacher-forced over the reference")
        tts = load(model, device, mode.quantize, mode.codec_dtype)
        logprobs = teacher_forced_logprobs(tts, utterance, reference)
        figures = codebook_figures(base_logprobs, logprobs)
        results.append(ModeQuality(
            mode=mode.label, quantize=mode.quantize, codec_dtype=str(tts.codec_dtype).removeprefix("torch."),
            codebooks=figures, top1_mean=float(np.mean([f.top1 for f in figures])),
            kl_mean=float(np.mean([f.kl for f in figures])), reference_top1=reference_agreement(logprobs, reference),
            codec_snr_db=snr_db(base_audio, decode(tts, reference)),
        ))  # fmt: skip
        del tts
        gc.collect()
    return QualityReport(**report, modes=results)


def format_quality(report: QualityReport) -> str:
    """The report as a table: a column pair (top-1, KL) per mode, a row per codebook."""
    lines = [
        f"checkpoint  {report.model} ({report.kind}, {report.size}) on {report.device}",
        (
            f"method      {report.frames} frames, greedy float32 reference (float32 codec), every mode "
            "teacher-forced over it; top-1 = argmax equals float32's, KL(float32 || mode) in nats"
        ),
        "",
    ]
    width, cell = 22, 11
    lines.append(f"{'mode':<{width}}" + "".join(f"{m.mode:>{2 * cell}}" for m in report.modes))
    lines.append(f"{'codec dtype':<{width}}" + "".join(f"{m.codec_dtype:>{2 * cell}}" for m in report.modes))
    lines.append(" " * width + "".join(f"{'top-1':>{cell}}{'KL':>{cell}}" for _ in report.modes))
    for g in range(len(report.modes[0].codebooks) if report.modes else 0):
        label = "codebook 0 (talker)" if g == 0 else f"codebook {g}"
        lines.append(f"{label:<{width}}" + "".join(
            f"{m.codebooks[g].top1:>{cell}.3f}{m.codebooks[g].kl:>{cell}.2e}" for m in report.modes))  # fmt: skip
    lines.append(f"{'mean':<{width}}" + "".join(f"{m.top1_mean:>{cell}.3f}{m.kl_mean:>{cell}.2e}"
                                                for m in report.modes))  # fmt: skip
    lines.append(f"{'codec SNR dB':<{width}}" + "".join(f"{m.codec_snr_db:>{2 * cell}.1f}" for m in report.modes))
    if report.reference_top1 < 1.0:
        lines.append(f"warning: float32 teacher-forced chose its own reference at only {report.reference_top1:.3f} "
                     "of the picks (expected 1.000): the figures are not trustworthy")  # fmt: skip
    return "\n".join(lines)
