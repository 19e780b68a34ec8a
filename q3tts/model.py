"""Assembling the networks of a checkpoint folder and loading their weights.

`TTSNetworks` mirrors `model.safetensors` (talker, code predictor inside it, and the speaker
encoder of Base models); `SpeechTokenizer` mirrors `speech_tokenizer/model.safetensors`. Both
hold weights only: generation state lives in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .checkpoint import MAIN_FILES, SPEECH_TOKENIZER_FILES, CheckpointError, load_weights, require_files, resolve
from .codec.decoder import CodecDecoder
from .codec.encoder import UNUSED_KEY_PREFIXES as ENCODER_UNUSED_KEYS
from .codec.encoder import CodecEncoder
from .config import ConfigError, GenerationDefaults, ModelConfig, SpeechTokenizerConfig
from .quant import Int8Linear, quantize_int8_
from .speaker_encoder import SpeakerEncoder
from .talker import Talker
from .text import TextTokenizer, TokenizerError


class TTSNetworks(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.talker = Talker(cfg.talker)
        self.speaker_encoder = SpeakerEncoder(cfg.speaker_encoder) if cfg.has_speaker_encoder else None
        if self.speaker_encoder is not None and cfg.speaker_encoder.enc_dim != cfg.talker.hidden_size:
            raise ConfigError(
                f"speaker_encoder_config.enc_dim ({cfg.speaker_encoder.enc_dim}) must equal the talker hidden size "
                f"({cfg.talker.hidden_size}): the x-vector is injected as a talker input position"
            )


class SpeechTokenizer(nn.Module):
    """The 12 Hz codec: `encoder` (audio -> 16 codebooks, only needed for cloning and `encode`) and
    `decoder` (codes -> 24 kHz audio)."""

    def __init__(self, cfg: SpeechTokenizerConfig, with_encoder: bool = True):
        super().__init__()
        self.cfg = cfg
        self.decoder = CodecDecoder(cfg.decoder)
        self.encoder = CodecEncoder(cfg.encoder, cfg.encoder_valid_num_quantizers) if with_encoder else None

    @property
    def samples_per_frame(self) -> int:
        return self.cfg.decode_upsample_rate

    @property
    def sample_rate(self) -> int:
        return self.cfg.output_sample_rate


def _build_on_meta(factory):
    with torch.device("meta"):
        return factory()


# The text embedding (151936 x 2048 in the released models: a third of the 0.6B's weights) is only
# ever looked up, a few rows per prompt: inference keeps it at the checkpoint's bf16 instead of
# widening it to float32 on CPU. Widening bf16 is exact, so the looked-up rows are identical.
LOOKUP_TABLES = ("talker.model.text_embedding.",)


def load_networks(folder: Path, cfg: ModelConfig, device="cpu", dtype: Optional[torch.dtype] = None,
                  keep_narrow: tuple[str, ...] = (), quantize: Optional[str] = None) -> TTSNetworks:  # fmt: skip
    """`quantize="int8"`: the talker's linears are quantised from the file's weights one by one,
    before anything is widened, so loading never holds a float32 copy of them."""
    nets = _build_on_meta(lambda: TTSNetworks(cfg))
    load_weights(nets, folder / "model.safetensors", device=device, dtype=None if quantize else dtype,
                 keep_narrow=keep_narrow)  # fmt: skip
    if quantize == "int8":
        quantize_int8_(nets.talker)
        _cast_floats(nets, dtype, keep_narrow)
        # Quantising read every linear's pages of the file mapping, which stays resident while the
        # narrow tables still point into it: take those from a fresh mapping, and the old one goes.
        for name in {n.rsplit(".", 1)[0] for n, _ in nets.named_parameters() if n.startswith(keep_narrow)}:
            load_weights(nets.get_submodule(name), folder / "model.safetensors", prefix=f"{name}.", device=device)
    return nets.eval().requires_grad_(False)


def _cast_floats(module: nn.Module, dtype: Optional[torch.dtype], keep_narrow: tuple[str, ...]) -> None:
    """Cast the float parameters and buffers outside int8 layers to `dtype` (lookup tables under
    `keep_narrow` are not widened)."""
    if dtype is None:
        return
    int8 = tuple(f"{name}." for name, m in module.named_modules() if isinstance(m, Int8Linear))
    for m in module.modules():
        if isinstance(m, Int8Linear):
            m.cast_bias_(dtype)
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if not t.is_floating_point() or t.dtype == dtype or name.startswith(int8):
            continue
        if name.startswith(keep_narrow) and t.element_size() < dtype.itemsize:
            continue
        t.data = t.data.to(dtype)


def load_speech_tokenizer(
    folder: Path, device="cpu", dtype: Optional[torch.dtype] = torch.float32, with_encoder: bool = True
) -> SpeechTokenizer:
    """Load `speech_tokenizer/` (or a standalone Qwen3-TTS-Tokenizer-12Hz folder)."""
    require_files(folder, SPEECH_TOKENIZER_FILES)
    cfg = SpeechTokenizerConfig.from_file(folder / "config.json")
    st = _build_on_meta(lambda: SpeechTokenizer(cfg, with_encoder))
    ignore = tuple(f"encoder.{p}" for p in ENCODER_UNUSED_KEYS)
    if not with_encoder:
        ignore = ("encoder.",)
    load_weights(st, folder / "model.safetensors", ignore_prefixes=ignore, device=device, dtype=dtype)
    return st.eval().requires_grad_(False)


@dataclass
class Checkpoint:
    """Everything a checkpoint folder describes, loaded."""

    path: Path
    config: ModelConfig
    generation: GenerationDefaults
    tokenizer: TextTokenizer
    networks: TTSNetworks
    speech_tokenizer: SpeechTokenizer


def load_checkpoint(
    path_or_repo: str | Path,
    device: str | torch.device = "cpu",
    dtype: Optional[torch.dtype] = None,
    codec_dtype: Optional[torch.dtype] = torch.float32,
    with_codec_encoder: Optional[bool] = None,
    quantize: Optional[str] = None,
) -> Checkpoint:
    """Load a Qwen3-TTS checkpoint folder (or Hugging Face repo id) for inference. `with_codec_encoder`
    defaults to True for Base models only, the ones that clone voices. `quantize="int8"`: see
    load_networks (CPU only)."""
    folder = resolve(path_or_repo)
    require_files(folder, MAIN_FILES)
    config = ModelConfig.from_file(folder / "config.json")
    generation = GenerationDefaults.from_file(folder / "generation_config.json")
    try:
        tokenizer = TextTokenizer.from_dir(folder)
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None
    if tokenizer.vocab_size > config.talker.text_vocab_size:
        raise CheckpointError(
            f"{folder}: the text tokenizer has {tokenizer.vocab_size} ids but the talker's text vocab is "
            f"{config.talker.text_vocab_size}"
        )
    networks = load_networks(folder, config, device, dtype, keep_narrow=LOOKUP_TABLES, quantize=quantize)
    if with_codec_encoder is None:
        with_codec_encoder = config.has_speaker_encoder
    speech = load_speech_tokenizer(folder / "speech_tokenizer", device, codec_dtype, with_codec_encoder)
    return Checkpoint(folder, config, generation, tokenizer, networks, speech)
