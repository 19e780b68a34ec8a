"""Typed configs parsed from the official Qwen3-TTS `config.json` files.

The released files carry many keys that no network reads (generic Hugging Face dumps such as
`max_length`, `architectures`, `position_id_per_seconds`); those are ignored. Keys a network
cannot run without and that have no safe default raise `ConfigError` naming the file and key.

Defaults mirror the official classes' defaults, not the released values (several are
left over from Qwen3-Omni), so a file that omits a key behaves as it does in `qwen-tts`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

from .errors import Q3TTSError

T = TypeVar("T")

REQUIRED = object()  # sentinel for fields that must be present in config.json


class ConfigError(Q3TTSError, ValueError):
    """A config file is missing, unreadable, or lacks a required key."""


def _required():
    return field(default=REQUIRED)  # type: ignore[arg-type]


def parse(cls: type[T], data: dict, where: str) -> T:
    """Build dataclass `cls` from `data`, ignoring unknown keys; `where` names the source in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in data and data[f.name] is not None:
            kwargs[f.name] = data[f.name]
        elif f.default is REQUIRED:
            raise ConfigError(f"{where}: required key '{f.name}' is missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------------------
# Talker and code predictor
# --------------------------------------------------------------------------------------


@dataclass
class CodePredictorConfig:
    vocab_size: int = 2048
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 5
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    num_code_groups: int = 32


@dataclass
class TalkerConfig:
    head_dim: int = _required()  # the official fallback hidden/heads is wrong for 0.6B
    text_vocab_size: int = _required()
    vocab_size: int = 3072
    hidden_size: int = 1024
    intermediate_size: int = 2048
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    attention_bias: bool = False
    num_code_groups: int = 32
    text_hidden_size: int = 2048
    codec_eos_token_id: int = 4198
    codec_think_id: int = 4202
    codec_nothink_id: int = 4203
    codec_think_bos_id: int = 4204
    codec_think_eos_id: int = 4205
    codec_pad_id: int = 4196
    codec_bos_id: int = 4197
    spk_id: dict = field(default_factory=dict)
    spk_is_dialect: dict = field(default_factory=dict)
    codec_language_id: dict = field(default_factory=dict)
    code_predictor: CodePredictorConfig = field(default_factory=CodePredictorConfig)

    @property
    def codebook_size(self) -> int:
        """Codebook-0 entries; the top 1024 ids of the talker vocab are control/language/speaker ids."""
        return self.vocab_size - 1024

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "TalkerConfig":
        cfg = parse(cls, {k: v for k, v in d.items() if k != "code_predictor_config"}, where)
        cfg.code_predictor = parse(
            CodePredictorConfig, d.get("code_predictor_config") or {}, f"{where}.code_predictor_config"
        )
        return cfg


@dataclass
class SpeakerEncoderConfig:
    mel_dim: int = 128
    enc_dim: int = 1024
    enc_channels: list = field(default_factory=lambda: [512, 512, 512, 512, 1536])
    enc_kernel_sizes: list = field(default_factory=lambda: [5, 3, 3, 3, 1])
    enc_dilations: list = field(default_factory=lambda: [1, 2, 3, 4, 1])
    enc_attention_channels: int = 128
    enc_res2net_scale: int = 8
    enc_se_channels: int = 128
    sample_rate: int = 24000


MODEL_TYPES = ("base", "custom_voice", "voice_design")


@dataclass
class ModelConfig:
    """Top-level `config.json` of a Qwen3-TTS checkpoint."""

    talker: TalkerConfig
    speaker_encoder: SpeakerEncoderConfig
    tts_model_type: str = _required()
    tokenizer_type: str = "qwen3_tts_tokenizer_12hz"
    tts_model_size: Optional[str] = None
    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    tts_pad_token_id: int = 151671
    tts_bos_token_id: int = 151672
    tts_eos_token_id: int = 151673

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json") -> "ModelConfig":
        if "talker_config" not in d:
            raise ConfigError(f"{where}: required key 'talker_config' is missing")
        talker = TalkerConfig.from_dict(d["talker_config"], f"{where}: talker_config")
        speaker = parse(SpeakerEncoderConfig, d.get("speaker_encoder_config") or {}, f"{where}: speaker_encoder_config")
        top = {k: v for k, v in d.items() if k not in ("talker_config", "speaker_encoder_config")}
        cfg = parse(cls, {**top, "talker": talker, "speaker_encoder": speaker}, where)
        if cfg.tts_model_type not in MODEL_TYPES:
            raise ConfigError(f"{where}: tts_model_type '{cfg.tts_model_type}' is not one of {MODEL_TYPES}")
        if cfg.tokenizer_type != "qwen3_tts_tokenizer_12hz":
            raise ConfigError(
                f"{where}: tokenizer_type '{cfg.tokenizer_type}' is not supported "
                "(only the 12 Hz speech tokenizer, used by every released model)"
            )
        return cfg

    @classmethod
    def from_file(cls, path: Path) -> "ModelConfig":
        return cls.from_dict(read_json(path), str(path))

    @property
    def has_speaker_encoder(self) -> bool:
        return self.tts_model_type == "base"


# --------------------------------------------------------------------------------------
# Speech tokenizer (12 Hz codec)
# --------------------------------------------------------------------------------------


@dataclass
class CodecDecoderConfig:
    codebook_dim: int = _required()
    codebook_size: int = 2048
    hidden_size: int = 1024
    latent_dim: int = 1024
    max_position_embeddings: int = 8000
    rope_theta: float = 10000.0
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: Optional[int] = None
    attention_bias: bool = False
    sliding_window: int = 72
    intermediate_size: int = 3072
    hidden_act: str = "silu"
    layer_scale_initial_scale: float = 0.01
    rms_norm_eps: float = 1e-5
    num_hidden_layers: int = 8
    num_quantizers: int = 16
    upsample_rates: list = field(default_factory=lambda: [8, 5, 4, 3])
    upsampling_ratios: list = field(default_factory=lambda: [2, 2])
    decoder_dim: int = 1536

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.codebook_dim % 2:
            raise ValueError(f"codebook_dim must be even, got {self.codebook_dim}")


@dataclass
class CodecEncoderConfig:
    """The Mimi encoder half; defaults are those of transformers' MimiConfig."""

    sampling_rate: int = 24000
    frame_rate: Optional[float] = None
    audio_channels: int = 1
    hidden_size: int = 512
    num_filters: int = 64
    num_residual_layers: int = 1
    upsampling_ratios: list = field(default_factory=lambda: [8, 6, 5, 4])
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "constant"
    compress: int = 2
    trim_right_ratio: float = 1.0
    codebook_size: int = 2048
    codebook_dim: int = 256
    num_quantizers: int = 32
    use_conv_shortcut: bool = False
    vector_quantization_hidden_dimension: int = 256
    num_semantic_quantizers: int = 1
    upsample_groups: int = 512
    num_hidden_layers: int = 8
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    head_dim: Optional[int] = None
    hidden_act: str = "gelu"
    max_position_embeddings: int = 8000
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int = 250
    layer_scale_initial_scale: float = 0.01
    attention_bias: bool = False

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.frame_rate is None:  # as MimiConfig derives it: the SEANet hop times the stride-2 downsample
            hop = 1
            for r in self.upsampling_ratios:
                hop *= r
            self.frame_rate = self.sampling_rate / (2 * hop)


@dataclass
class SpeechTokenizerConfig:
    """`speech_tokenizer/config.json` (also the root of `Qwen/Qwen3-TTS-Tokenizer-12Hz`)."""

    encoder: CodecEncoderConfig
    decoder: CodecDecoderConfig
    encoder_valid_num_quantizers: int = 16
    input_sample_rate: int = 24000
    output_sample_rate: int = 24000
    encode_downsample_rate: int = 1920
    decode_upsample_rate: int = 1920

    @classmethod
    def from_dict(cls, d: dict, where: str = "speech_tokenizer/config.json") -> "SpeechTokenizerConfig":
        model_type = d.get("model_type", "qwen3_tts_tokenizer_12hz")
        if model_type != "qwen3_tts_tokenizer_12hz":
            raise ConfigError(f"{where}: speech tokenizer model_type '{model_type}' is not supported")
        if "decoder_config" not in d:
            raise ConfigError(f"{where}: required key 'decoder_config' is missing")
        decoder = parse(CodecDecoderConfig, d["decoder_config"], f"{where}: decoder_config")
        enc_d = dict(d.get("encoder_config") or {})
        if "_frame_rate" in enc_d and "frame_rate" not in enc_d:
            enc_d["frame_rate"] = enc_d["_frame_rate"]
        encoder = parse(CodecEncoderConfig, enc_d, f"{where}: encoder_config")
        top = {k: v for k, v in d.items() if k not in ("encoder_config", "decoder_config")}
        return parse(cls, {**top, "encoder": encoder, "decoder": decoder}, where)

    @classmethod
    def from_file(cls, path: Path) -> "SpeechTokenizerConfig":
        return cls.from_dict(read_json(path), str(path))


# --------------------------------------------------------------------------------------
# generation_config.json
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampling defaults; values in `generation_config.json` override these wrapper defaults."""

    do_sample: bool = True
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 0.9
    repetition_penalty: float = 1.05
    subtalker_dosample: bool = True
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    subtalker_temperature: float = 0.9
    max_new_tokens: int = 2048

    @classmethod
    def from_file(cls, path: Path) -> "GenerationDefaults":
        return parse(cls, read_json(path), str(path))
