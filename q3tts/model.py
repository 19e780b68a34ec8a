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

from .checkpoint import (
    MAIN_FILES,
    SPEECH_TOKENIZER_FILES,
    CheckpointError,
    load_weights,
    read_safetensors_header,
    read_tensor,
    require_files,
    resolve,
)
from .config import ConfigError, GenerationDefaults, ModelConfig, SpeechTokenizerConfig
from .nn.codec.decoder import CodecDecoder
from .nn.codec.encoder import UNUSED_KEY_PREFIXES as ENCODER_UNUSED_KEYS
from .nn.codec.encoder import CodecEncoder
from .nn.lowbit import kernels, use_stack_kernels_
from .nn.quant import QuantizeSpec, int8_targets, quantized_linear, release_freed_memory, replace_linear, resolve_kernel
from .nn.speaker_encoder import SpeakerEncoder
from .nn.talker import Talker
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
# The codec-code tables (the talker's and the code predictor's 15, 134 MB in float32 at 0.6B) are
# looked up the same way, a few rows per frame.
LOOKUP_TABLES = ("talker.model.text_embedding.", "talker.model.codec_embedding.",
                 "talker.code_predictor.model.codec_embedding.")  # fmt: skip


def load_networks(folder: Path, cfg: ModelConfig, device="cpu", dtype: Optional[torch.dtype] = None,
                  keep_narrow: tuple[str, ...] = (), quantize: Optional[QuantizeSpec] = None) -> TTSNetworks:  # fmt: skip
    """`quantize` (nn/quant.py QuantizeSpec): each of the talker's linears is read from the file and
    quantised on its own before the rest loads, so loading never holds more than one float linear
    at a time."""
    nets = _build_on_meta(lambda: TTSNetworks(cfg))
    path = folder / "model.safetensors"
    quantised: tuple[str, ...] = ()
    if quantize is not None:
        kernel, header = resolve_kernel("auto"), read_safetensors_header(path)
        names = [n for n in int8_targets(nets.talker) if quantize.precision_of(n) != "float"]
        for name in names:
            meta = nets.talker.get_submodule(name)
            linear = nn.Linear(meta.in_features, meta.out_features, bias=meta.bias is not None, device="meta")
            for part in ("weight", "bias") if meta.bias is not None else ("weight",):
                tensor = read_tensor(path, f"talker.{name}.{part}", getattr(meta, part).shape, header)
                setattr(linear, part, nn.Parameter(tensor, requires_grad=False))
            quantised_linear = quantized_linear(linear, quantize.precision_of(name), kernel)
            if hasattr(quantised_linear, "cast_bias_"):
                quantised_linear.cast_bias_(dtype or linear.weight.dtype)
            replace_linear(nets.talker, name, quantised_linear)
        quantised = tuple(f"talker.{name}." for name in names)
        release_freed_memory()  # the float reads were carved from the heap, which keeps freed chunks
    load_weights(nets, path, device=device, dtype=dtype, keep_narrow=keep_narrow, skip=quantised)
    if quantize is not None:
        use_stack_kernels_(nets.talker)  # after the norms they read are loaded
    return nets.eval().requires_grad_(False)


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
    relaid = tuple(f"decoder.{name}" for name in st.decoder.relaid_weights())
    load_weights(
        st, folder / "model.safetensors", ignore_prefixes=ignore, device=device, dtype=dtype, own_memory=relaid
    )
    st.decoder.relayout_()
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
    quantize: Optional[QuantizeSpec] = None,
    hub: Optional[dict] = None,
) -> Checkpoint:
    """Load a Qwen3-TTS checkpoint folder (or Hugging Face repo id) for inference. `with_codec_encoder`
    defaults to True for Base models only, the ones that clone voices. `quantize="int8"`: see
    load_networks (CPU only). `hub`: how to find a repo id (checkpoint.resolve: local_files_only, revision,
    cache_dir, token)."""
    folder = resolve(path_or_repo, **(hub or {}))
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
    if (
        quantize is not None
        and quantize.uses_kernel
        and codec_dtype == torch.float32
        and torch.device(device).type == "cpu"
    ):
        # The modes that build our CPU kernels (already loaded for the talker) run the codec's
        # activations through them too; the float modes keep torch's ops, as the reference does.
        speech.decoder.use_kernels_(kernels())
    return Checkpoint(folder, config, generation, tokenizer, networks, speech)
