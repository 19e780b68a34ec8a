"""The public Python API, with the method names and return shapes of the official package.

    tts = Qwen3TTS.from_pretrained("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice")
    wavs, sr = tts.generate_custom_voice("Hello!", speaker="Vivian", language="English")
    for chunk in tts.stream("Hello!", speaker="Vivian"):   # audio while it is generated
        ...

`stream` is the primitive: the batch calls drain it.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from .audio import SAMPLE_RATE, load_audio, mel_spectrogram
from .errors import InputError
from .generate.codec_stream import DEFAULT_CHUNK_FRAMES, CodecStream
from .generate.engine import Engine, length_cap
from .generate.prompt import Prompt, Utterance, build_prompt
from .generate.sampling import SamplingOptions
from .generate.segment import split_text
from .languages import model_languages, resolve_language
from .loader_options import parse_loader_options
from .model import Checkpoint, load_checkpoint
from .nn.quant import QuantizationError, QuantizeSpec, parse_quantize
from .voices import VoiceClonePromptItem

MIN_REFERENCE_SECONDS = 1.0
MAX_REFERENCE_SECONDS = 60.0
# Longer texts are generated in sentence-aware pieces of at most this many text tokens (about a
# minute of speech): one generation drifts in pace on long inputs, and a piece stays far from max_new_tokens.
DEFAULT_MAX_PIECE_TOKENS = 150
SILENCE_RMS = 1e-4  # a reference quieter than this (about -80 dBFS) carries no voice

MaybeList = Union[str, Sequence[str], None]


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # bf16 on GPUs; float32 on CPU, where it is exact and bf16 matmuls are rarely faster.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}  # fmt: skip
    if dtype not in names:
        raise ValueError(f"unknown dtype '{dtype}', expected one of {sorted(names)}")
    return names[dtype]


def resolve_quantize(quantize, device: torch.device) -> Optional[QuantizeSpec]:
    """None/"none" -> None; a mode ("int8", "q8", "int4") or per-network spec
    ("talker=int4,predictor=q8", see nn/quant.py) -> its QuantizeSpec, on CPU only. Refused early,
    before any weight is read (a mode whose kernel cannot be built on this machine included)."""
    if quantize in (None, "none", "float"):
        return None
    if device.type != "cpu":
        raise QuantizationError(f"quantised weights are for CPU; on {device.type} use dtype='bfloat16'")
    return parse_quantize(quantize)


def resolve_codec_dtype(codec_dtype, device: torch.device) -> torch.dtype:
    """ "auto": float32 in every mode. bf16 was the int8 CPU mode's codec on CPUs with AVX512-BF16,
    but measured slower there and lossy (full-size 0.6B codec, chunks of 8, interleaved runs, ms per
    frame of audio, best / median of 4: 1 thread 58.5 / 72.6 float32 vs 91.4 / 97.5 bf16, 2 threads
    wall 39.1 / 47.0 vs 54.4 / 59.2; waveform SNR of bf16 vs float32 24.8 dB): without AMX, oneDNN's
    bf16 convolutions were no faster than its float32 ones (211 vs 182 ms for one chunk's 13 big
    convolutions). codec_dtype="bfloat16" still asks for it."""
    if codec_dtype in (None, "auto"):
        return torch.float32
    return resolve_dtype(codec_dtype, device)


# ----------------------------------------------------------------------------------------------
# Voice clone prompts
# ----------------------------------------------------------------------------------------------


@dataclass
class GenerationPlan:
    """One utterance, ready to generate: a prompt and a frame cap per piece of its text."""

    prompts: list[Prompt]
    caps: list[int]  # frames each piece may emit (its text's length cap, within max_new_tokens)
    opts: SamplingOptions
    ref_codes: Optional[torch.Tensor] = None  # [T_ref, G]: an in-context clone's codec stream starts from these


def _close(rows: list[int], streams: list[CodecStream]) -> Iterator[tuple[int, np.ndarray]]:
    """Rows whose text has ended: the rest of each stream's audio, then the empty end-of-row chunk."""
    for row, chunk in zip(rows, CodecStream.decode_due([streams[r] for r in rows])):
        if chunk.size:
            yield row, chunk
        yield row, np.zeros(0, dtype=np.float32)


def _as_list(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and n > 1:
            return list(value) * n
        if len(value) != n:
            raise InputError(f"batch size mismatch: {n} text(s) but {len(value)} {name}(s)")
        return list(value)
    return [value] * n


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class Qwen3TTS:
    """A loaded Qwen3-TTS checkpoint. Safe to share between threads: calls keep their state local."""

    def __init__(self, path_or_repo: str | Path, device="auto", dtype="auto", codec_dtype="auto", lazy=False,
                 quantize: Optional[str] = None, cuda_graphs: bool = True, hub: Optional[dict] = None):  # fmt: skip
        self.source = path_or_repo
        self.hub = dict(hub or {})  # local_files_only, revision, cache_dir, token (checkpoint.resolve)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.quantize = resolve_quantize(quantize, self.device)
        self.codec_dtype = resolve_codec_dtype(codec_dtype, self.device)
        self.cuda_graphs = cuda_graphs
        self._checkpoint: Optional[Checkpoint] = None
        self._engine: Optional[Engine] = None
        if not lazy:
            self.load()

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, device=None, dtype=None, **kwargs) -> "Qwen3TTS":
        """Load a checkpoint folder or Hugging Face repo id. `dtype`: "auto" (bf16 on GPU, fp32 on
        CPU), "float32", "bfloat16", "float16" or a torch.dtype. `quantize="int8"` (CPU only)
        stores the talker's and code predictor's linears as int8 (see quant.py). On CUDA the
        decode steps are replayed as CUDA graphs unless `cuda_graphs=False` (static_decode.py).

        The official loader's options work too (loader_options.py): `device_map` ("cuda:0", 0,
        {"": "cuda:0"}) and `torch_dtype` set the device and dtype; `local_files_only`, `revision`,
        `cache_dir` and `token` how a repo id is found; `attn_implementation` and the other
        transformers options we do not implement are accepted with a one-line warning."""
        own = ("codec_dtype", "lazy", "quantize", "cuda_graphs")
        options, rest = parse_loader_options("Qwen3TTS.from_pretrained", device, dtype, own, **kwargs)
        return cls(path_or_repo, device=options.device, dtype=options.dtype, hub=options.hub, **rest)

    # -- lifecycle ------------------------------------------------------------------------------
    def load(self) -> "Qwen3TTS":
        if self._checkpoint is None:
            ck = load_checkpoint(self.source, self.device, self.dtype, self.codec_dtype, quantize=self.quantize,
                                 hub=self.hub)  # fmt: skip
            self._checkpoint, self._engine = ck, Engine(ck.networks, ck.config, "auto" if self.cuda_graphs else "off")
        return self

    def unload(self) -> None:
        """Free the weights; the next call loads them again."""
        self._checkpoint = self._engine = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def loaded(self) -> bool:
        return self._checkpoint is not None

    @property
    def checkpoint(self) -> Checkpoint:
        return self.load()._checkpoint  # type: ignore[return-value]

    @property
    def engine(self) -> Engine:
        return self.load()._engine  # type: ignore[return-value]

    @property
    def kind(self) -> str:
        return self.checkpoint.config.tts_model_type

    @property
    def sample_rate(self) -> int:
        return self.checkpoint.speech_tokenizer.sample_rate

    # -- what the checkpoint supports ------------------------------------------------------------
    def get_supported_speakers(self) -> Optional[list[str]]:
        speakers = self.checkpoint.config.talker.spk_id
        return sorted(s.lower() for s in speakers) if speakers else None

    def get_supported_languages(self) -> list[str]:
        return model_languages(self.checkpoint.config.talker.codec_language_id)

    def _require_kind(self, kind: str, what: str) -> None:
        if self.kind != kind:
            raise InputError(f"{what} needs a {kind} checkpoint; this one is {self.kind}")

    def _check_language(self, language: Optional[str]) -> str:
        """A language name, ISO code or tag (languages.py) -> the model's name for it."""
        return resolve_language(language, self.get_supported_languages())

    def _check_text(self, text) -> str:
        if not isinstance(text, str) or not text.strip():
            raise InputError("text is empty")
        return text

    # -- utterances ------------------------------------------------------------------------------
    def _custom_voice_utterances(self, text, speaker, language, instruct, non_streaming_mode) -> list[Utterance]:
        self._require_kind("custom_voice", "generate_custom_voice")
        texts = [self._check_text(t) for t in (text if isinstance(text, (list, tuple)) else [text])]
        n = len(texts)
        speakers = _as_list(speaker, n, "speaker")
        supported = self.get_supported_speakers() or []
        for s in speakers:
            if not s or s.lower() not in supported:
                raise InputError(f"unknown speaker '{s}'; supported: {', '.join(supported)}")
        instructs = _as_list(instruct, n, "instruct")
        if (self.checkpoint.config.tts_model_size or "") == "0b6" and any(instructs):
            # The 0.6B CustomVoice model was not trained with instructions (the official package
            # drops them silently); say so instead.
            raise InputError("the 0.6B CustomVoice model does not support instruct; use the 1.7B model")
        langs = [self._check_language(lang) for lang in _as_list(language, n, "language")]
        return [Utterance(t, lang, speaker=s, instruct=i or None, non_streaming_mode=non_streaming_mode)
                for t, lang, s, i in zip(texts, langs, speakers, instructs)]  # fmt: skip

    def _voice_design_utterances(self, text, instruct, language, non_streaming_mode) -> list[Utterance]:
        self._require_kind("voice_design", "generate_voice_design")
        texts = [self._check_text(t) for t in (text if isinstance(text, (list, tuple)) else [text])]
        n = len(texts)
        instructs = _as_list(instruct, n, "instruct")
        langs = [self._check_language(lang) for lang in _as_list(language, n, "language")]
        return [Utterance(t, lang, instruct=i or None, non_streaming_mode=non_streaming_mode)
                for t, lang, i in zip(texts, langs, instructs)]  # fmt: skip

    def _clone_utterances(self, text, language, ref_audio, ref_text, x_vector_only_mode, voice_clone_prompt,
                          non_streaming_mode) -> list[Utterance]:  # fmt: skip
        self._require_kind("base", "generate_voice_clone")
        texts = [self._check_text(t) for t in (text if isinstance(text, (list, tuple)) else [text])]
        n = len(texts)
        if voice_clone_prompt is None:
            if ref_audio is None:
                raise InputError("voice cloning needs ref_audio or a voice_clone_prompt")
            voice_clone_prompt = self.create_voice_clone_prompt(ref_audio, ref_text, x_vector_only_mode)
        if isinstance(voice_clone_prompt, (str, Path)):
            voice_clone_prompt = [VoiceClonePromptItem.load(voice_clone_prompt)]
        if isinstance(voice_clone_prompt, VoiceClonePromptItem):
            voice_clone_prompt = [voice_clone_prompt]
        if isinstance(voice_clone_prompt, dict):  # the official "dict of lists" form
            d = voice_clone_prompt
            voice_clone_prompt = [
                VoiceClonePromptItem(rc, emb, xv, icl, rt)
                for rc, emb, xv, icl, rt in zip(d["ref_code"], d["ref_spk_embedding"], d["x_vector_only_mode"],
                                                d["icl_mode"], d.get("ref_text", [None] * len(d["ref_code"])))
            ]  # fmt: skip
        items = _as_list(list(voice_clone_prompt), n, "voice prompt")
        hidden = self.checkpoint.config.talker.hidden_size
        utts = []
        for t, lang, item in zip(texts, _as_list(language, n, "language"), items):
            if item.ref_spk_embedding.shape[-1] != hidden:
                raise InputError(
                    f"voice prompt was made for a model of hidden size {item.ref_spk_embedding.shape[-1]}, "
                    f"this model has {hidden}"
                )
            icl = item.icl_mode and item.ref_code is not None
            if icl and not item.ref_text:
                raise InputError("in-context cloning needs ref_text (the transcript of the reference)")
            utts.append(Utterance(t, self._check_language(lang), xvector=item.ref_spk_embedding,
                                  ref_codes=item.ref_code if icl else None, ref_text=item.ref_text if icl else None,
                                  non_streaming_mode=non_streaming_mode))  # fmt: skip
        return utts

    def create_voice_clone_prompt(
        self, ref_audio, ref_text=None, x_vector_only_mode=False
    ) -> list[VoiceClonePromptItem]:
        """Reference clip(s) -> reusable voice prompt items (x-vector, and codes + text for ICL)."""
        self._require_kind("base", "create_voice_clone_prompt")
        audios = list(ref_audio) if isinstance(ref_audio, list) else [ref_audio]
        texts = _as_list(ref_text, len(audios), "ref_text")
        modes = _as_list(x_vector_only_mode, len(audios), "x_vector_only_mode")
        ck = self.checkpoint
        items = []
        for audio, text, xvec_only in zip(audios, texts, modes):
            if not xvec_only and not (text and text.strip()):
                raise InputError("ref_text is required for in-context cloning (or pass x_vector_only_mode=True)")
            wav = self._reference_audio(audio)
            with torch.inference_mode():
                mel = mel_spectrogram(torch.from_numpy(wav)[None])
                enc = ck.networks.speaker_encoder
                emb = enc(mel.to(self.device, enc.fc.weight.dtype))[0]
                codes = None
                if not xvec_only:
                    codes = ck.speech_tokenizer.encoder.encode_batch([wav])[0].to(self.device)
            items.append(VoiceClonePromptItem(codes, emb, bool(xvec_only), not xvec_only, text))
        return items

    def _reference_audio(self, audio) -> np.ndarray:
        if isinstance(audio, tuple) and len(audio) == 2 and isinstance(audio[1], (int, np.integer)):
            wav = load_audio(audio)
        elif isinstance(audio, np.ndarray):
            raise InputError("pass reference audio as a path, bytes, or an (array, sample_rate) tuple")
        else:
            wav = load_audio(audio)
        seconds = wav.shape[0] / SAMPLE_RATE
        if seconds < MIN_REFERENCE_SECONDS:
            raise InputError(f"reference audio is {seconds:.2f} s; at least {MIN_REFERENCE_SECONDS:g} s is needed")
        if seconds > MAX_REFERENCE_SECONDS:
            raise InputError(f"reference audio is {seconds:.1f} s; at most {MAX_REFERENCE_SECONDS:g} s is allowed")
        if float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) < SILENCE_RMS:
            raise InputError("reference audio is silent")
        return np.clip(wav, -1.0, 1.0)

    # -- generation ------------------------------------------------------------------------------
    def options(self, **kwargs) -> SamplingOptions:
        """Generation options: the checkpoint's generation_config.json defaults, overridden by
        `kwargs` (None keeps the default). Raises InputError for unknown or out-of-range options."""
        try:
            return SamplingOptions.from_defaults(self.checkpoint.generation, **kwargs)
        except (TypeError, ValueError) as e:
            raise InputError(str(e)) from None

    def plan(self, utterance: Utterance, max_piece_tokens: Optional[int] = None,
             opts: Optional[SamplingOptions] = None, **kwargs) -> GenerationPlan:  # fmt: skip
        """What generating `utterance` takes: its pieces' prompts and frame caps and the options.
        The Python API and the server's scheduler both generate from plans."""
        opts = opts or self.options(**kwargs)
        pieces = self._pieces(utterance, max_piece_tokens)
        caps = [min(c, opts.max_new_tokens - 1) for c in self._caps(pieces)]
        return GenerationPlan(self._prompts(pieces), caps, opts, utterance.ref_codes)

    def _prompts(self, utts: list[Utterance]) -> list[Prompt]:
        ck = self.checkpoint
        return [build_prompt(ck.networks.talker, ck.config, ck.tokenizer, u) for u in utts]

    def _caps(self, utts: list[Utterance]) -> list[int]:
        tok = self.checkpoint.tokenizer
        return [length_cap(len(tok.encode(u.text))) for u in utts]

    def _pieces(self, utt: Utterance, max_piece_tokens: Optional[int]) -> list[Utterance]:
        """`utt` cut into sentence-aware pieces of at most `max_piece_tokens` text tokens (0: never cut)."""
        budget = DEFAULT_MAX_PIECE_TOKENS if max_piece_tokens is None else int(max_piece_tokens)
        if budget <= 0:
            return [utt]
        tok = self.checkpoint.tokenizer
        texts = split_text(utt.text, budget, lambda t: len(tok.encode(t)))
        return [dataclasses.replace(utt, text=t) for t in texts] or [utt]

    def stream_batch(
        self,
        utts: list[Utterance],
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        first_chunk_frames: int = 1,
        max_piece_tokens: Optional[int] = None,
        **kwargs,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (row, audio chunk) as frames are generated; every row ends with an empty chunk.

        Each row has its own causal codec state, so its chunks concatenate to exactly the offline
        decode of its codes. An in-context clone's state starts from the reference codes, as the
        official package decodes reference + generated codes and cuts the reference off.

        Texts over `max_piece_tokens` are generated piece by piece (all rows' k-th pieces batched
        together), with the same voice, and the codec state runs on across pieces: the joins are
        decoded like any other pair of consecutive frames."""
        if chunk_frames < 1 or first_chunk_frames < 1:
            raise InputError("chunk sizes must be at least 1 frame")
        opts = self.options(**kwargs)
        plans = [self.plan(u, max_piece_tokens, opts) for u in utts]
        pieces = [p.prompts for p in plans]
        generator = self.generator(opts)
        decoder = self.checkpoint.speech_tokenizer.decoder
        streams = [CodecStream(decoder, p.ref_codes, chunk_frames, first_chunk_frames) for p in plans]
        for k in range(max(len(p) for p in pieces)):
            rows = [r for r in range(len(utts)) if k < len(pieces[r])]
            running = set(rows)
            prompts, caps = [pieces[r][k] for r in rows], [plans[r].caps[k] for r in rows]
            for step in self.engine.frames(prompts, opts, caps, generator):
                due, ended = [], []
                for i, row in enumerate(rows):
                    if bool(step.emitted[i]):
                        streams[row].push(step.codes[i])
                        if streams[row].due:
                            due.append(row)
                    elif row in running:
                        ended.append(row)
                yield from zip(due, CodecStream.decode_due([streams[r] for r in due]))
                running.difference_update(ended)
                yield from _close([r for r in ended if k == len(pieces[r]) - 1], streams)
            yield from _close([r for r in sorted(running) if k == len(pieces[r]) - 1], streams)

    def generator(self, opts: SamplingOptions) -> Optional[torch.Generator]:
        """The call's random generator: seeded from `opts.seed`, or None for torch's global RNG."""
        return torch.Generator(device=self.device).manual_seed(opts.seed) if opts.seed is not None else None

    def _synthesize(self, utts: list[Utterance], **kwargs) -> tuple[list[np.ndarray], int]:
        parts: list[list[np.ndarray]] = [[] for _ in utts]
        for row, chunk in self.stream_batch(utts, chunk_frames=kwargs.pop("chunk_frames", 25), **kwargs):
            parts[row].append(chunk)
        return [np.concatenate(p) if p else np.zeros(0, np.float32) for p in parts], self.sample_rate

    def generate_custom_voice(self, text, speaker, language=None, instruct=None, non_streaming_mode=True, **kwargs):
        """Speak `text` with a built-in speaker (CustomVoice). Returns (list of float32 arrays, sample rate)."""
        return self._synthesize(self._custom_voice_utterances(text, speaker, language, instruct, non_streaming_mode),
                                **kwargs)  # fmt: skip

    def generate_voice_design(self, text, instruct, language=None, non_streaming_mode=True, **kwargs):
        """Speak `text` in a voice described by `instruct` (VoiceDesign)."""
        return self._synthesize(self._voice_design_utterances(text, instruct, language, non_streaming_mode), **kwargs)

    def generate_voice_clone(self, text, language=None, ref_audio=None, ref_text=None, x_vector_only_mode=False,
                             voice_clone_prompt=None, non_streaming_mode=False, **kwargs):  # fmt: skip
        """Speak `text` in the voice of a reference clip or a saved voice prompt (Base)."""
        utts = self._clone_utterances(text, language, ref_audio, ref_text, x_vector_only_mode, voice_clone_prompt,
                                      non_streaming_mode)  # fmt: skip
        return self._synthesize(utts, **kwargs)

    def utterances(self, text, *, speaker=None, instruct=None, language=None, ref_audio=None, ref_text=None,
                   x_vector_only_mode=False, voice_clone_prompt=None, non_streaming_mode=None) -> list[Utterance]:  # fmt: skip
        """Validated utterances for `text` (a string or a list) in the checkpoint's own mode: a speaker
        (CustomVoice), an instruct (VoiceDesign) or a reference / voice prompt (Base). Raises InputError."""
        if self.kind == "custom_voice":
            return self._custom_voice_utterances(text, speaker, language, instruct, non_streaming_mode is not False)
        if self.kind == "voice_design":
            return self._voice_design_utterances(text, instruct, language, non_streaming_mode is not False)
        return self._clone_utterances(text, language, ref_audio, ref_text, x_vector_only_mode, voice_clone_prompt,
                                      bool(non_streaming_mode))  # fmt: skip

    def stream(self, text: str, *, speaker=None, instruct=None, language=None, ref_audio=None, ref_text=None,
               x_vector_only_mode=False, voice_clone_prompt=None, non_streaming_mode=None,
               chunk_frames: int = DEFAULT_CHUNK_FRAMES, first_chunk_frames: int = 1, **kwargs) -> Iterator[np.ndarray]:  # fmt: skip
        """Yield float32 audio chunks for one text while it is being generated. The mode follows the
        checkpoint: a speaker (CustomVoice), an instruct (VoiceDesign) or a reference (Base)."""
        utts = self.utterances(text, speaker=speaker, instruct=instruct, language=language, ref_audio=ref_audio,
                               ref_text=ref_text, x_vector_only_mode=x_vector_only_mode,
                               voice_clone_prompt=voice_clone_prompt, non_streaming_mode=non_streaming_mode)  # fmt: skip
        if len(utts) != 1:
            raise InputError("stream() takes one text; use the generate_* calls for batches")
        for _, chunk in self.stream_batch(utts, chunk_frames, first_chunk_frames, **kwargs):
            if chunk.size:
                yield chunk

    # -- codes, for the tokenizer API and tests ----------------------------------------------------
    def generate_codes(self, utts: list[Utterance], **kwargs) -> list[torch.Tensor]:
        """Greedy/sampled codes [T, G] per utterance, without decoding audio."""
        opts = self.options(**kwargs)
        generator = self.generator(opts)
        frames: list[list[torch.Tensor]] = [[] for _ in utts]
        for step in self.engine.frames(self._prompts(utts), opts, self._caps(utts), generator):
            for row in range(len(utts)):
                if bool(step.emitted[row]):
                    frames[row].append(step.codes[row])
        G = self.checkpoint.config.talker.num_code_groups
        return [torch.stack(f) if f else torch.zeros(0, G, dtype=torch.long) for f in frames]


Qwen3TTSModel = Qwen3TTS  # the official package's class name, so switching is one import
