"""Codec encoder: shapes and code ranges on a random tiny encoder, batching, and code-for-code
parity with the reference (transformers' Mimi inside qwen-tts)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from q3tts.checkpoint import load_weights
from q3tts.config import CodecEncoderConfig, SpeechTokenizerConfig
from q3tts.nn.codec.encoder import HOP_LENGTH, UNUSED_KEY_PREFIXES, CodecEncoder, random_init_

# The dev-checkpoint shapes: 32 codebooks of which 16 are kept, VQ dim != hidden (projections exist).
TINY = dict(hidden_size=32, num_filters=4, codebook_dim=16, vector_quantization_hidden_dimension=16,
            intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, head_dim=16,
            upsample_groups=32)  # fmt: skip
SR = 24000


def clip(n: int, freq: float, seed: int, noise: float = 0.05) -> np.ndarray:
    """A tone plus white noise, float32 at 24 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(n)).astype(np.float32)


# Lengths that are not multiples of 1920 (plus one that is, and one under a frame); the last one is
# over 10 s, i.e. past Mimi's 250-step sliding window at 25 Hz, which the reference does not apply.
CLIPS = [clip(int(1.3 * SR), 220, 0), clip(HOP_LENGTH * 7 + 5, 440, 1, noise=0.5), clip(3000, 1000, 2),
         clip(HOP_LENGTH * 5, 150, 3), clip(777, 3000, 4), clip(int(10.5 * SR), 330, 5)]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_encoder() -> CodecEncoder:
    enc = CodecEncoder(CodecEncoderConfig(**TINY), valid_quantizers=16)
    random_init_(enc, torch.Generator().manual_seed(0))
    return enc.eval()


def encode_one(enc: CodecEncoder, wav: np.ndarray) -> torch.Tensor:  # -> [T, K]
    return enc.encode(torch.from_numpy(wav)[None, None])[0].T


# ----------------------------------------------------------------------------- (a) shapes, ranges


@pytest.mark.parametrize("n", [1, 777, 1920, 1921, 3000, 13445, 31200])
def test_shapes_and_code_range(tiny_encoder, n):
    codes = tiny_encoder.encode(torch.from_numpy(clip(n, 440, n))[None, None])
    assert codes.dtype == torch.int64
    assert codes.shape == (1, 16, math.ceil(n / 1920))
    assert 0 <= codes.min() and codes.max() < 2048


def test_codes_are_varied(tiny_encoder):
    codes = encode_one(tiny_encoder, CLIPS[0])  # [17, 16]
    assert codes.shape == (17, 16)
    per_book = [len(set(codes[:, k].tolist())) for k in range(16)]
    assert min(per_book) >= 2, f"a codebook is constant over 1.3 s of audio: distinct ids per book {per_book}"
    assert len(set(codes.flatten().tolist())) > 100
    other = encode_one(tiny_encoder, clip(len(CLIPS[0]), 1500, 9))
    assert (codes != other).float().mean() > 0.5, "different audio should give mostly different codes"


def test_random_init_fills_every_tensor():
    with torch.device("meta"):
        enc = CodecEncoder(CodecEncoderConfig(**TINY), valid_quantizers=16)
    enc = enc.to_empty(device="cpu")  # as make-checkpoint does: uninitialised memory
    for t in enc.state_dict().values():
        t.fill_(float("nan"))
    random_init_(enc, torch.Generator().manual_seed(1))
    bad = [k for k, t in enc.state_dict().items() if not torch.isfinite(t).all()]
    assert not bad, f"random_init_ left tensors unset: {bad[:5]}"


def test_state_dict_layout(tiny_encoder):
    keys = set(tiny_encoder.state_dict())
    # SEANet convs sit at the ModuleList indices the ELUs leave; all 1 + 31 codebooks are held.
    for key in ("encoder.layers.0.conv.weight", "encoder.layers.1.block.1.conv.weight",
                "encoder.layers.1.block.3.conv.bias", "encoder.layers.3.conv.weight", "encoder.layers.14.conv.weight",
                "encoder_transformer.layers.0.mlp.fc1.weight", "encoder_transformer.layers.0.input_layernorm.bias",
                "encoder_transformer.layers.0.self_attn_layer_scale.scale", "downsample.conv.weight",
                "quantizer.semantic_residual_vector_quantizer.layers.0.codebook.initialized",
                "quantizer.acoustic_residual_vector_quantizer.layers.30.codebook.embed_sum",
                "quantizer.acoustic_residual_vector_quantizer.output_proj.weight"):  # fmt: skip
        assert key in keys, key
    assert not any(k.startswith(UNUSED_KEY_PREFIXES) for k in keys)


# ----------------------------------------------------------------------------- (b) batching


def test_batch_equals_one_by_one_for_equal_lengths(tiny_encoder):
    wavs = torch.from_numpy(np.stack([clip(13445, f, i) for i, f in enumerate((200, 700, 2500))]))[:, None]
    batch = tiny_encoder.encode(wavs)
    for i in range(3):
        assert torch.equal(batch[i], tiny_encoder.encode(wavs[i : i + 1])[0])


def test_encode_batch_pads_like_the_reference(tiny_encoder):
    clips = CLIPS[:5]
    got = tiny_encoder.encode_batch(clips)
    longest = max(len(c) for c in clips)
    for c, codes in zip(clips, got):
        n_frames = math.ceil(len(c) / HOP_LENGTH)
        assert codes.shape == (n_frames, 16)
        # Exactly: the clip zero-padded to the batch length, encoded, cut to its own frames.
        padded = np.pad(c, (0, longest - len(c)))
        assert torch.equal(codes, encode_one(tiny_encoder, padded)[:n_frames])
        # Causality: only the last frame may see the padding (through the convs' right padding).
        assert torch.equal(codes[:-1], encode_one(tiny_encoder, c)[:-1])


# ----------------------------------------------------------------------------- (c) reference parity


@pytest.fixture(scope="module")
def reference_codec(tiny_checkpoint) -> tuple:
    """(our encoder loaded from the checkpoint, the speech-tokenizer folder)."""
    folder = tiny_checkpoint / "speech_tokenizer"
    cfg = SpeechTokenizerConfig.from_file(folder / "config.json")
    with torch.device("meta"):
        enc = CodecEncoder(cfg.encoder, cfg.encoder_valid_num_quantizers)
    load_weights(enc, folder / "model.safetensors", prefix="encoder.", ignore_prefixes=UNUSED_KEY_PREFIXES,
                 dtype=torch.float32)  # fmt: skip
    return enc.eval(), folder


def test_codes_identical_to_reference(reference_codec, oracle):
    enc, folder = reference_codec
    # sdpa: the attention backend transformers picks by default, the one our encoder mirrors op for op.
    batch = CLIPS[:-1]  # the 10.5 s clip alone: in the batch it would pad every clip to 10.5 s
    jobs = [dict(id="batch", op="codec_encode", checkpoint=folder, audio=batch, attn="sdpa"),
            dict(id="info", op="info", checkpoint=folder)]  # fmt: skip
    jobs += [dict(id=f"one{i}", op="codec_encode", checkpoint=folder, audio=c, attn="sdpa")
             for i, c in enumerate(CLIPS)]  # fmt: skip
    res = oracle(jobs)

    ref_keys = {k[len("encoder."):]: tuple(s) for k, s in res["info"]["speech_tokenizer_state_dict"]
                if k.startswith("encoder.")}  # fmt: skip
    assert ref_keys == {k: tuple(v.shape) for k, v in enc.state_dict().items()}

    for i, c in enumerate(CLIPS):
        ref_one = res[f"one{i}"]["codes"]
        assert ref_one.shape == (math.ceil(len(c) / HOP_LENGTH), 16)
        np.testing.assert_array_equal(encode_one(enc, c).numpy(), ref_one, err_msg=f"clip {i} alone")
    ref_batch = res["batch"]["codes"]
    assert len(ref_batch) == len(batch)
    for i, (ours, ref) in enumerate(zip(enc.encode_batch(batch), ref_batch)):
        np.testing.assert_array_equal(ours.numpy(), ref, err_msg=f"clip {i} in the batch")
