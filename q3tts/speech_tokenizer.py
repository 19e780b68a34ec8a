"""The 12 Hz speech tokenizer on its own: audio -> codes and codes -> audio.

Same names as the official `Qwen3TTSTokenizer` (`from_pretrained`, `encode`, `decode`, the sample
rate getters), so code written against it runs unchanged; `decode_stream` adds exact streaming.
It loads a standalone `Qwen3-TTS-Tokenizer-12Hz` folder or the `speech_tokenizer/` of a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from .api import resolve_device, resolve_dtype
from .audio import AudioError, load_audio
from .checkpoint import CheckpointError, resolve
from .errors import Q3TTSError
from .generate.codec_stream import CodecStream
from .loader_options import parse_loader_options
from .model import SpeechTokenizer, load_speech_tokenizer


class CodesError(Q3TTSError, ValueError):
    """Codes that the decoder cannot take (wrong shape or out-of-range ids)."""


@dataclass
class EncodedAudio:
    """What `encode` returns: `audio_codes[i]` is a [T_i, 16] int64 tensor (the official field name)."""

    audio_codes: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.audio_codes)


def _speech_tokenizer_folder(path_or_repo: str | Path, hub: Optional[dict] = None) -> Path:
    folder = resolve(path_or_repo, **(hub or {}))
    if (folder / "speech_tokenizer" / "config.json").exists():
        return folder / "speech_tokenizer"
    return folder


class Qwen3TTSTokenizer:
    def __init__(self, model: SpeechTokenizer):
        self.model = model

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, device=None, dtype=None, with_encoder: bool = True,
                        **kwargs) -> "Qwen3TTSTokenizer":  # fmt: skip
        """A tokenizer folder, a model folder (its `speech_tokenizer/`), or a Hugging Face repo id.
        `device` (default cpu) and `dtype` (default float32, the codec's exact dtype); the official
        `device_map="cuda:0"` and `torch_dtype` work too, and the other loader options as for
        Qwen3TTS.from_pretrained (loader_options.py)."""
        options, _ = parse_loader_options("Qwen3TTSTokenizer.from_pretrained", device, dtype, default_device="cpu",
                                          **kwargs)  # fmt: skip
        target = resolve_device(options.device)
        # "auto" keeps float32 here: the codec is small and exact in it, on every device.
        dtype = torch.float32 if options.dtype in (None, "auto") else resolve_dtype(options.dtype, target)
        folder = _speech_tokenizer_folder(path_or_repo, options.hub)
        return cls(load_speech_tokenizer(folder, target, dtype, with_encoder))

    # -- the official getters ----------------------------------------------------------------------
    def get_model_type(self) -> str:
        return "qwen3_tts_tokenizer_12hz"

    def get_input_sample_rate(self) -> int:
        return self.model.cfg.input_sample_rate

    def get_output_sample_rate(self) -> int:
        return self.model.sample_rate

    def get_encode_downsample_rate(self) -> int:
        return self.model.cfg.encode_downsample_rate

    def get_decode_upsample_rate(self) -> int:
        return self.model.samples_per_frame

    @property
    def num_codebooks(self) -> int:
        return self.model.cfg.decoder.num_quantizers

    @property
    def codebook_size(self) -> int:
        return self.model.cfg.decoder.codebook_size

    # -- audio -> codes ----------------------------------------------------------------------------
    def encode(self, audios, sr: Optional[int] = None) -> EncodedAudio:
        """One clip or a list: paths, URLs/base64 strings, raw bytes, float arrays (with `sr`, default
        24 kHz), or (array, sr) tuples. Clips are batched as the official tokenizer batches them."""
        if self.model.encoder is None:
            raise CheckpointError("this tokenizer was loaded without its encoder (with_encoder=False)")
        items = list(audios) if isinstance(audios, list) else [audios]
        if not items:
            raise AudioError("no audio to encode")
        rate = self.get_input_sample_rate()
        clips = []
        for item in items:
            if isinstance(item, (np.ndarray, torch.Tensor)):
                item = (
                    np.asarray(item.cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float32),
                    sr or rate,
                )
            clip = load_audio(item, sr=rate)
            if clip.size == 0:
                raise AudioError("cannot encode an empty clip")
            clips.append(clip)
        return EncodedAudio(self.model.encoder.encode_batch(clips))

    # -- codes -> audio ----------------------------------------------------------------------------
    def _as_code_list(self, encoded) -> list[torch.Tensor]:
        if isinstance(encoded, EncodedAudio):
            items = encoded.audio_codes
        elif isinstance(encoded, dict):
            items = encoded["audio_codes"]
        elif isinstance(encoded, list) and encoded and isinstance(encoded[0], dict):
            items = [e["audio_codes"] for e in encoded]
        else:
            items = encoded
        if isinstance(items, (np.ndarray, torch.Tensor)):
            items = torch.as_tensor(items)
            items = list(items) if items.dim() == 3 else [items]
        return [
            self._check_codes(torch.as_tensor(np.asarray(c) if not isinstance(c, torch.Tensor) else c)) for c in items
        ]

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.dim() != 2 or codes.shape[1] != self.num_codebooks:
            raise CodesError(f"codes must be [frames, {self.num_codebooks}], got {list(codes.shape)}")
        if codes.is_floating_point():
            raise CodesError("codes must be integers")
        codes = codes.long()
        # Official batches right-pad with -1: a frame with any negative id ends the clip.
        bad = (codes < 0).any(-1)
        if bool(bad.any()):
            first = int(bad.float().argmax())
            if bool(bad[first:].all()):
                codes = codes[:first]
            else:
                raise CodesError("negative code ids appear before the end of the clip")
        if codes.numel() and int(codes.max()) >= self.codebook_size:
            raise CodesError(f"code id {int(codes.max())} is out of range (codebook size {self.codebook_size})")
        return codes

    @torch.inference_mode()
    def decode(self, encoded) -> tuple[list[np.ndarray], int]:
        """`encode`'s output, a dict/list of dicts with `audio_codes`, or [T, 16] / [B, T, 16] codes
        -> (list of float32 waveforms, sample rate)."""
        decoder = self.model.decoder
        device = next(decoder.parameters()).device
        wavs = []
        for codes in self._as_code_list(encoded):
            wav = decoder(codes.T[None].to(device))[0, 0] if codes.shape[0] else torch.zeros(0)
            wavs.append(wav.float().cpu().numpy())
        return wavs, self.get_output_sample_rate()

    @torch.inference_mode()
    def decode_stream(self, chunks: Iterable[torch.Tensor]) -> Iterator[np.ndarray]:
        """Decode frames as they arrive: each chunk is [n, 16] codes; yields its n * 1920 samples.
        The pieces concatenate exactly to `decode` of all the codes."""
        stream = CodecStream(self.model.decoder)
        for chunk in chunks:
            for frame in self._check_codes(torch.as_tensor(chunk)):
                stream.push(frame)
            yield stream.decode()
