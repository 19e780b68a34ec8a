"""Build a tiny random-weight Qwen3-TTS checkpoint with the REFERENCE classes (dev-only scaffolding).

Run with the oracle venv's python:

    .oracle-venv/bin/python tools/oracle/build_dev_checkpoint.py KIND OUT_DIR [--seed N]
    .oracle-venv/bin/python tools/oracle/build_dev_checkpoint.py all ROOT     # ROOT/tiny-{kind}

KIND is base, custom_voice or voice_design. The folder has the official layout (config.json,
generation_config.json, model.safetensors, text tokenizer files, speech_tokenizer/) and loads with
`qwen_tts.Qwen3TTSModel.from_pretrained`. This is temporary: `q3tts make-checkpoint` (our own
writer) will replace it; tests get their checkpoint path from a single fixture.

Choices that matter for oracle tests (see reference-notes §10):
* Real codec vocab (3072 talker / 2048 per codebook) and the released control-token ids, so id
  handling is exercised with realistic values. Speaker/language ids lie in [2048, 3072), the range
  the talker suppresses, so only codes or EOS can be sampled.
* Shapes chosen to expose easy-to-miss details: code-predictor width (48) != talker width (64) so
  `small_to_mtp_projection` exists; codec-decoder heads*head_dim (64) != hidden (32); Mimi computes
  32 quantizers of which 16 are kept; 2 layers everywhere a stack exists.
* Weights are re-drawn at O(1) scale instead of the 0.02-std HF init: logits get well separated (so
  greedy argmax does not flip on fp32 rounding), norm weights/biases/layer-scales are not trivially
  1/0, and the codec output is audible instead of ~1e-10 (the default ConvNeXt gamma is 1e-6 and
  layer-scale 0.01). The final vocoder conv is rescaled so the waveform sits well inside the
  [-1, 1] clamp.
"""

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402, F401  installs the sox/onnxruntime/torchaudio stubs before qwen_tts loads
import torch  # noqa: E402
from qwen_tts.core.models import (  # noqa: E402
    Qwen3TTSConfig,
    Qwen3TTSForConditionalGeneration,
    Qwen3TTSProcessor,
)
from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import (  # noqa: E402
    Qwen3TTSTokenizerV2Config,
)
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (  # noqa: E402
    Qwen3TTSTokenizerV2Model,
)
from transformers import EncodecFeatureExtractor, Qwen2TokenizerFast  # noqa: E402

KINDS = ("base", "custom_voice", "voice_design")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|tts_pad|>", "<|tts_text_bos|>", "<|tts_text_eod|>"]
# Whole words built by BPE merges. "assistant" and "\n" MUST be single tokens: the reference
# slices the prompt by fixed counts (3 role tokens in front, 5 template tokens at the back).
MERGED_WORDS = ["assistant", "user", "Ġthe", "Ġand", "Ġis", "Ġhello", "Ġworld"]

# Released codec control ids (reference-notes §2.2).
CODEC_IDS = dict(
    codec_pad_id=2148,
    codec_bos_id=2149,
    codec_eos_token_id=2150,
    codec_think_id=2154,
    codec_nothink_id=2155,
    codec_think_bos_id=2156,
    codec_think_eos_id=2157,
)
LANGUAGES = {
    "english": 2050,
    "german": 2052,
    "spanish": 2054,
    "chinese": 2055,
    "japanese": 2058,
    "beijing_dialect": 2074,
    "sichuan_dialect": 2075,
}
SPEAKERS = {"vivian": 3065, "ryan": 3061, "dylan": 2878, "eric": 2875}
DIALECTS = {"vivian": False, "ryan": False, "dylan": "beijing_dialect", "eric": "sichuan_dialect"}

TALKER_HIDDEN = 64


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = [], 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def write_text_tokenizer(out: Path) -> Qwen2TokenizerFast:
    vocab = {s: i for i, s in enumerate(byte_symbols())}
    merges = []
    for word in MERGED_WORDS:  # left-to-right merges: a s -> as, as s -> ass, ...
        prefix = word[0]
        for ch in word[1:]:
            merges.append(f"{prefix} {ch}")
            prefix += ch
            vocab.setdefault(prefix, len(vocab))
    tmp = out / "_bpe"
    tmp.mkdir(parents=True)
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = Qwen2TokenizerFast(
        vocab_file=str(tmp / "vocab.json"),
        merges_file=str(tmp / "merges.txt"),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    shutil.rmtree(tmp)
    role = tok("<|im_start|>assistant\n")["input_ids"]
    assert len(role) == 3, f"role prefix must be 3 tokens, got {tok.convert_ids_to_tokens(role)}"
    Qwen3TTSProcessor(tokenizer=tok).save_pretrained(str(out))
    return tok


def main_config(kind: str, tok: Qwen2TokenizerFast) -> dict:
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    talker = dict(
        vocab_size=3072,
        hidden_size=TALKER_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        # mrope_section must sum to head_dim / 2; with identical t/h/w rows this is plain RoPE.
        rope_scaling={"rope_type": "default", "mrope_section": [4, 2, 2], "interleaved": True},
        num_code_groups=16,
        text_hidden_size=32,
        text_vocab_size=len(tok),
        position_id_per_seconds=13,  # present (unused) in released configs
        spk_id=SPEAKERS if kind == "custom_voice" else {},
        spk_is_dialect=DIALECTS if kind == "custom_voice" else {},
        codec_language_id=LANGUAGES,
        code_predictor_config=dict(
            vocab_size=2048,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            hidden_act="silu",
            max_position_embeddings=65536,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            num_code_groups=16,
        ),
        **CODEC_IDS,
    )
    # Only constructor keys here: this config class rejects anything else (reference-notes §2.4).
    speaker_encoder = dict(
        mel_dim=128,
        enc_dim=TALKER_HIDDEN,
        enc_channels=[32, 32, 32, 32, 96],
        enc_kernel_sizes=[5, 3, 3, 3, 1],
        enc_dilations=[1, 2, 3, 4, 1],
        enc_attention_channels=16,
        enc_res2net_scale=8,
        enc_se_channels=16,
        sample_rate=24000,
    )
    return dict(
        architectures=["Qwen3TTSForConditionalGeneration"],
        model_type="qwen3_tts",
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        tts_model_size="tiny",  # NOT a substring of "0b6": custom voice keeps `instruct`
        tts_model_type=kind,
        im_start_token_id=ids["<|im_start|>"],
        im_end_token_id=ids["<|im_end|>"],
        tts_pad_token_id=ids["<|tts_pad|>"],
        tts_bos_token_id=ids["<|tts_text_bos|>"],
        tts_eos_token_id=ids["<|tts_text_eod|>"],
        assistant_token_id=tok.convert_tokens_to_ids("assistant"),
        talker_config=talker,
        speaker_encoder_config=speaker_encoder,
    )


def speech_tokenizer_config() -> Qwen3TTSTokenizerV2Config:
    mimi = dict(
        sampling_rate=24000,
        frame_rate=12.5,
        hidden_size=32,
        num_filters=4,
        codebook_size=2048,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        num_quantizers=32,
        num_semantic_quantizers=1,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=250,
        use_streaming=False,
        upsample_groups=32,
    )  # the unused Mimi upsampler is still built; groups | hidden
    decoder = dict(
        codebook_size=2048,
        codebook_dim=32,
        hidden_size=32,
        latent_dim=32,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        intermediate_size=64,
        num_hidden_layers=2,
        num_quantizers=16,
        decoder_dim=64,
        upsample_rates=[8, 5, 4, 3],
        upsampling_ratios=[2, 2],
        sliding_window=72,
        max_position_embeddings=8000,
        rope_theta=10000.0,
    )
    return Qwen3TTSTokenizerV2Config(
        encoder_config=mimi,
        decoder_config=decoder,
        encoder_valid_num_quantizers=16,
        input_sample_rate=24000,
        output_sample_rate=24000,
        decode_upsample_rate=1920,
        encode_downsample_rate=1920,
        architectures=["Qwen3TTSTokenizerV2Model"],
    )


@torch.no_grad()
def redraw(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-draw every tensor of the state dict at O(1) scale (see module docstring)."""
    for name, t in module.state_dict(keep_vars=True).items():
        if not t.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]

        def randn(std, shape=t.shape):
            return torch.randn(shape, generator=gen) * std

        if leaf in ("embedding_sum", "embed_sum"):  # codebook sums
            t.copy_(randn(1.0))
        elif leaf == "cluster_usage":  # divides the sums: keep it positive and non-trivial
            t.copy_(0.5 + 1.5 * torch.rand(t.shape, generator=gen))
        elif leaf in ("alpha", "beta"):  # SnakeBeta, stored in log space
            t.copy_(randn(0.1))
        elif leaf == "initialized":
            t.fill_(1.0)
        elif t.dim() == 1:
            t.copy_(randn(0.05) if leaf == "bias" else 1.0 + randn(0.1))  # biases / norms, scales
        elif "embedding" in name:
            t.copy_(randn(1.0))
        else:  # Linear / Conv weights: unit gain
            t.copy_(randn(1.0 / math.sqrt(t[0].numel())))


@torch.no_grad()
def calibrate_vocoder(st: Qwen3TTSTokenizerV2Model, gen: torch.Generator) -> None:
    """Scale the last (linear) conv so the pre-clamp waveform has RMS 0.2, far from the clamp."""
    last = st.decoder.decoder[-1]
    seen = {}
    hook = last.register_forward_hook(lambda mod, args, out: seen.update(wav=out))
    st.decoder(torch.randint(0, 2048, (1, 16, 20), generator=gen))
    hook.remove()
    gain = 0.2 / seen["wav"].pow(2).mean().sqrt().item()
    last.conv.weight.mul_(gain)
    last.conv.bias.mul_(gain)


def build(kind: str, out: Path, seed: int) -> None:
    assert kind in KINDS, f"kind must be one of {KINDS}, got {kind!r}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # One stream per kind, so the three checkpoints differ and a mixed-up path cannot pass a test.
    gen = torch.Generator().manual_seed(seed * len(KINDS) + KINDS.index(kind))

    tok = write_text_tokenizer(out)
    cfg = main_config(kind, tok)
    model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**cfg)).eval()
    redraw(model, gen)
    model.save_pretrained(str(out))
    # Hand-written config.json: the reference's own save writes a speaker_encoder_config it
    # cannot reload (reference-notes §2.4).
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    # qwen_tts reads this file as a plain dict of its generate() defaults (released values).
    gen_cfg = dict(
        do_sample=True,
        top_k=50,
        top_p=1.0,
        temperature=0.9,
        repetition_penalty=1.05,
        subtalker_dosample=True,
        subtalker_top_k=50,
        subtalker_top_p=1.0,
        subtalker_temperature=0.9,
        max_new_tokens=8192,
    )
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")

    st = Qwen3TTSTokenizerV2Model(speech_tokenizer_config()).eval()
    redraw(st, gen)
    with torch.no_grad():  # damp the 12 vocoder residual units, or activations grow ~30x over the
        for name, p in st.decoder.named_parameters():  # stack and fp32 rounding with them
            if ".conv2.conv." in name:
                p.mul_(0.3)
    calibrate_vocoder(st, gen)
    st.save_pretrained(str(out / "speech_tokenizer"))
    EncodecFeatureExtractor(
        feature_size=1, sampling_rate=24000, padding_value=0.0, return_attention_mask=True
    ).save_pretrained(str(out / "speech_tokenizer"))
    n_main = sum(p.numel() for p in model.parameters())
    n_st = sum(p.numel() for p in st.parameters())
    print(f"[build] {kind}: {out} (main {n_main / 1e6:.2f} M params, speech tokenizer {n_st / 1e6:.2f} M)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=[*KINDS, "all"])
    ap.add_argument("out", type=Path, help="checkpoint folder (with 'all': parent of tiny-{kind})")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    kinds = KINDS if args.kind == "all" else (args.kind,)
    for kind in kinds:
        build(kind, args.out / f"tiny-{kind}" if args.kind == "all" else args.out, args.seed)


if __name__ == "__main__":
    main()
