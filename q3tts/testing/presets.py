"""Random-weight checkpoints in the exact official folder layout.

Real weights cannot be downloaded everywhere (CI, this project's own machines), so tests and
benchmarks run on checkpoints written here: every config file the official loader reads, a
byte-level BPE tokenizer with the Qwen special tokens, `model.safetensors` and
`speech_tokenizer/`. Control, language and speaker ids follow the released layout as far as it
is publicly known. `tiny` is a few MB for tests; `0.6b` and `1.7b` have the released shapes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..config import MODEL_TYPES, ModelConfig, SpeechTokenizerConfig

# Codec-track control ids of the released talker vocab (3072 = 2048 codes + 1024 specials).
CONTROL_IDS = dict(
    codec_pad_id=2148,
    codec_bos_id=2149,
    codec_eos_token_id=2150,
    codec_think_id=2154,
    codec_nothink_id=2155,
    codec_think_bos_id=2156,
    codec_think_eos_id=2157,
)
LANGUAGE_IDS = {
    "chinese": 2055,
    "english": 2050,
    "german": 2053,
    "italian": 2070,
    "portuguese": 2071,
    "spanish": 2054,
    "japanese": 2058,
    "korean": 2064,
    "french": 2061,
    "russian": 2069,
    "beijing_dialect": 2074,
    "sichuan_dialect": 2062,
}
SPEAKER_IDS = {
    "serena": 3066,
    "vivian": 3065,
    "uncle_fu": 3010,
    "ryan": 3061,
    "aiden": 2861,
    "ono_anna": 2873,
    "sohee": 2864,
    "eric": 2875,
    "dylan": 2878,
}
SPEAKER_DIALECTS = {name: False for name in SPEAKER_IDS} | {"eric": "sichuan_dialect", "dylan": "beijing_dialect"}

GENERATION_CONFIG = {
    "do_sample": True,
    "top_k": 50,
    "top_p": 1.0,
    "temperature": 0.9,
    "repetition_penalty": 1.05,
    "subtalker_dosample": True,
    "subtalker_top_k": 50,
    "subtalker_top_p": 1.0,
    "subtalker_temperature": 0.9,
    "max_new_tokens": 8192,
}

# Special tokens of the Qwen2/Qwen3 tokenizer, from id 151643 on; the TTS model reads
# im_start/im_end and the three tts_* ids (151671..151673) from its config.
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
    "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
]  # fmt: skip
REAL_TEXT_VOCAB = 151936
REAL_FIRST_SPECIAL = 151643


def _talker(size: str) -> dict:
    if size == "tiny":
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, text_hidden_size=32)  # fmt: skip
        section = [4, 2, 2]
        predictor = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16)  # fmt: skip
    else:
        hidden = {"0.6b": 1024, "1.7b": 2048}[size]
        shape = dict(hidden_size=hidden, intermediate_size={"0.6b": 3072, "1.7b": 6144}[size], num_hidden_layers=28,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128, text_hidden_size=2048)  # fmt: skip
        section = [24, 20, 20]
        predictor = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=16,
                         num_key_value_heads=8, head_dim=128)  # fmt: skip
    return dict(
        **shape,
        vocab_size=3072,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000,
        rope_scaling={"rope_type": "default", "mrope_section": section, "interleaved": True},
        attention_bias=False,
        num_code_groups=16,
        position_id_per_seconds=13,
        **CONTROL_IDS,
        codec_language_id=dict(LANGUAGE_IDS),
        code_predictor_config=dict(
            **predictor,
            vocab_size=2048,
            hidden_act="silu",
            max_position_embeddings=65536,
            rms_norm_eps=1e-6,
            rope_theta=1000000,
            num_code_groups=16,
            attention_bias=False,
            model_type="qwen3_tts_talker_code_predictor",
        ),  # fmt: skip
        model_type="qwen3_tts_talker",
    )


def _speech_tokenizer(size: str) -> dict:
    if size == "tiny":
        decoder = dict(codebook_dim=32, hidden_size=32, latent_dim=32, num_attention_heads=2, num_key_value_heads=2,
                       head_dim=16, intermediate_size=64, num_hidden_layers=1, decoder_dim=64)  # fmt: skip
        encoder = dict(hidden_size=32, num_filters=4, codebook_dim=16, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, head_dim=16, upsample_groups=32,
                       vector_quantization_hidden_dimension=16)  # fmt: skip
    else:
        decoder = dict(codebook_dim=512, hidden_size=512, latent_dim=1024, num_attention_heads=16,
                       num_key_value_heads=16, head_dim=64, intermediate_size=1024, num_hidden_layers=8,
                       decoder_dim=1536)  # fmt: skip
        encoder = dict(hidden_size=512, num_filters=64, codebook_dim=256, intermediate_size=2048, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=8, head_dim=64, upsample_groups=512,
                       vector_quantization_hidden_dimension=256)  # fmt: skip
    return {
        "architectures": ["Qwen3TTSTokenizerV2Model"],
        "model_type": "qwen3_tts_tokenizer_12hz",
        "encoder_valid_num_quantizers": 16,
        "input_sample_rate": 24000,
        "output_sample_rate": 24000,
        "encode_downsample_rate": 1920,
        "decode_upsample_rate": 1920,
        "decoder_config": dict(
            **decoder,
            codebook_size=2048,
            num_quantizers=16,
            num_semantic_quantizers=1,
            semantic_codebook_size=4096,
            vector_quantization_hidden_dimension=decoder["codebook_dim"],
            attention_bias=False,
            hidden_act="silu",
            layer_scale_initial_scale=0.01,
            max_position_embeddings=8000,
            rms_norm_eps=1e-5,
            rope_theta=10000,
            sliding_window=72,
            upsample_rates=[8, 5, 4, 3],
            upsampling_ratios=[2, 2],
        ),  # fmt: skip
        "encoder_config": dict(
            **encoder,
            _frame_rate=12.5,
            frame_rate=12.5,
            sampling_rate=24000,
            audio_channels=1,
            codebook_size=2048,
            num_quantizers=32,
            num_semantic_quantizers=1,
            num_residual_layers=1,
            upsampling_ratios=[8, 6, 5, 4],
            kernel_size=7,
            last_kernel_size=3,
            residual_kernel_size=3,
            dilation_growth_rate=2,
            use_causal_conv=True,
            pad_mode="constant",
            compress=2,
            trim_right_ratio=1.0,
            use_conv_shortcut=False,
            hidden_act="gelu",
            max_position_embeddings=8000,
            norm_eps=1e-5,
            rope_theta=10000,
            sliding_window=250,
            layer_scale_initial_scale=0.01,
            use_streaming=False,
            model_type="mimi",
        ),  # fmt: skip
    }


def model_config(size: str, kind: str, special_ids: dict[str, int], text_vocab_size: int) -> dict:
    if kind not in MODEL_TYPES:
        raise ValueError(f"unknown kind '{kind}', expected one of {MODEL_TYPES}")
    talker = _talker(size)
    talker["text_vocab_size"] = text_vocab_size
    if kind == "custom_voice":
        talker["spk_id"] = dict(SPEAKER_IDS)
        talker["spk_is_dialect"] = dict(SPEAKER_DIALECTS)
    else:
        talker["spk_id"], talker["spk_is_dialect"] = {}, {}
    # The official speaker-encoder config class rejects any extra key, so only these two.
    speaker = {"enc_dim": talker["hidden_size"], "sample_rate": 24000}
    if size == "tiny":
        speaker.update(enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16, enc_se_channels=16,
                       enc_res2net_scale=4)  # fmt: skip
    return {
        "architectures": ["Qwen3TTSForConditionalGeneration"],
        "model_type": "qwen3_tts",
        "tokenizer_type": "qwen3_tts_tokenizer_12hz",
        "tts_model_size": {"tiny": "tiny", "0.6b": "0b6", "1.7b": "1b7"}[size],
        "tts_model_type": kind,
        "im_start_token_id": special_ids["<|im_start|>"],
        "im_end_token_id": special_ids["<|im_end|>"],
        "tts_pad_token_id": special_ids["<tts_pad>"],
        "tts_bos_token_id": special_ids["<tts_text_bos>"],
        "tts_eos_token_id": special_ids["<tts_text_eod>"],
        "assistant_token_id": special_ids["assistant"],
        "talker_config": talker,
        "speaker_encoder_config": speaker,
    }


# ------------------------------------------------------------------------------------------
# Text tokenizer
# ------------------------------------------------------------------------------------------

_CORPUS = [
    "assistant\nHello world, this is a small test of the speech system.",
    "user\nSpeak slowly and clearly, in a warm and friendly voice.",
    "The quick brown fox jumps over the lazy dog. Numbers: 1 2 3 4 5 6 7 8 9 0.",
    "A calm narrator reads a long story about the sea, the wind and the stars!",
    "assistant assistant assistant user user user",
    "你好，世界。今天天气很好。我们一起去公园散步吧。",
    "Bonjour, comment allez-vous? Guten Tag! ¿Qué tal? こんにちは。안녕하세요.",
]


def write_text_tokenizer(out: Path, size: str) -> tuple[dict[str, int], int]:
    """Train a small byte-level BPE with the Qwen2 split rules; return (special ids, text vocab size).

    Full-size presets put the special tokens at their real ids (151643 on) by padding the BPE
    vocab with unreachable placeholder entries, so prompts carry the real id values."""
    from tokenizers import models, pre_tokenizers, trainers

    from ..text import TextTokenizer, qwen2_pipeline

    tok = qwen2_pipeline(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False, special_tokens=[]
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    vocab = tok.get_vocab()
    merges = json.loads(tok.to_str())["model"]["merges"]
    if size != "tiny":
        for i in range(len(vocab), REAL_FIRST_SPECIAL):
            vocab[f"<|placeholder_{i}|>"] = i
    first = len(vocab)
    special_ids = {t: first + i for i, t in enumerate(QWEN_SPECIALS)}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = [m if isinstance(m, str) else " ".join(m) for m in merges]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merge_lines) + "\n", encoding="utf-8")
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in special_ids.items()
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "model_max_length": 131072,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    loaded = TextTokenizer.from_dir(out)  # also proves our own slow-file path reads it back
    (out / "tokenizer.json").write_text(loaded.tokenizer.to_str(pretty=False), encoding="utf-8")
    assert loaded.encode("<|im_start|>assistant\n") == [special_ids["<|im_start|>"], vocab["assistant"], vocab["Ċ"]]
    special_ids["assistant"] = vocab["assistant"]
    text_vocab = REAL_TEXT_VOCAB if size != "tiny" else (loaded.vocab_size + 63) // 64 * 64
    return special_ids, text_vocab


# ------------------------------------------------------------------------------------------
# Writing a checkpoint
# ------------------------------------------------------------------------------------------

PRESETS = ("tiny", "0.6b", "1.7b")


def build_configs(size: str, kind: str, special_ids: dict[str, int], text_vocab: int):
    main = model_config(size, kind, special_ids, text_vocab)
    speech = _speech_tokenizer(size)
    return main, speech


def _materialise(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return module.to(dtype=dtype).to_empty(device="cpu")


def make_checkpoint(out: str | Path, preset: str = "tiny", kind: str = "custom_voice", seed: int = 0,
                    dtype: torch.dtype = torch.bfloat16) -> Path:  # fmt: skip
    """Write a complete random-weight checkpoint folder; returns its path."""
    from safetensors.torch import save_file

    from ..model import SpeechTokenizer, TTSNetworks
    from ..nn import speaker_encoder, talker
    from ..nn.codec import decoder as codec_decoder
    from ..nn.codec import encoder as codec_encoder

    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}', expected one of {PRESETS}")
    out = Path(out)
    (out / "speech_tokenizer").mkdir(parents=True, exist_ok=True)
    special_ids, text_vocab = write_text_tokenizer(out, preset)
    main, speech = build_configs(preset, kind, special_ids, text_vocab)
    (out / "config.json").write_text(json.dumps(main, indent=2), encoding="utf-8")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2), encoding="utf-8")
    (out / "speech_tokenizer" / "config.json").write_text(json.dumps(speech, indent=2), encoding="utf-8")
    (out / "speech_tokenizer" / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_extractor_type": "EncodecFeatureExtractor",
                "feature_size": 1,
                "sampling_rate": 24000,
                "padding_side": "right",
                "padding_value": 0.0,
                "return_attention_mask": True,
                "chunk_length_s": None,
                "overlap": None,
            },
            indent=2,
        ),  # fmt: skip
        encoding="utf-8",
    )
    gen = torch.Generator().manual_seed(seed)
    cfg = ModelConfig.from_dict(copy.deepcopy(main))
    with torch.device("meta"):
        nets = TTSNetworks(cfg)
    nets = _materialise(nets, dtype)
    talker.random_init_(nets.talker, gen)
    if nets.speaker_encoder is not None:
        speaker_encoder.random_init_(nets.speaker_encoder, gen)
    save_file({k: v.contiguous() for k, v in nets.state_dict().items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    del nets
    scfg = SpeechTokenizerConfig.from_dict(copy.deepcopy(speech))
    with torch.device("meta"):
        st = SpeechTokenizer(scfg)
    st = _materialise(st, torch.float32)
    codec_decoder.random_init_(st.decoder, gen)
    codec_encoder.random_init_(st.encoder, gen)
    save_file({k: v.contiguous() for k, v in st.state_dict().items()}, str(out / "speech_tokenizer" / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    return out
