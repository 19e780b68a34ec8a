"""Speaker encoder (ECAPA-TDNN x-vector): checkpoint layout and parity with the official package."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from q3tts.audio import SAMPLE_RATE, load_audio, mel_spectrogram
from q3tts.checkpoint import load_weights
from q3tts.config import ModelConfig, SpeakerEncoderConfig
from q3tts.nn.speaker_encoder import SpeakerEncoder, random_init_

EMB_TOL = 1e-5  # relative: ||ours - ref|| / ||ref||
TINY = SpeakerEncoderConfig(
    enc_dim=32, enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16, enc_se_channels=16
)


def tone(seconds: float, sr: int = SAMPLE_RATE, hz: float = 150.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * hz * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t)) + 0.05 * noise).astype(np.float32)


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def official_keys(n_blocks: int = 3, scale: int = 8) -> set[str]:
    """Names under `speaker_encoder.` in the official model.safetensors (reference notes §3.1)."""
    convs = ["blocks.0.conv", "mfa.conv", "asp.tdnn.conv", "asp.conv", "fc"]
    for b in range(1, n_blocks + 1):
        convs += [f"blocks.{b}.{name}" for name in ("tdnn1.conv", "tdnn2.conv", "se_block.conv1", "se_block.conv2")]
        convs += [f"blocks.{b}.res2net_block.blocks.{i}.conv" for i in range(scale - 1)]
    return {f"{c}.{p}" for c in convs for p in ("weight", "bias")}


def test_state_dict_matches_official_layout_at_release_size():
    with torch.device("meta"):
        enc = SpeakerEncoder(SpeakerEncoderConfig(enc_dim=2048))
    sd = enc.state_dict()
    assert set(sd) == official_keys()
    assert sd["blocks.0.conv.weight"].shape == (512, 128, 5)
    assert sd["blocks.2.res2net_block.blocks.6.conv.weight"].shape == (64, 64, 3)
    assert sd["blocks.3.se_block.conv1.weight"].shape == (128, 512, 1)
    assert sd["mfa.conv.weight"].shape == (1536, 1536, 1)
    assert sd["asp.tdnn.conv.weight"].shape == (128, 4608, 1)
    assert sd["asp.conv.weight"].shape == (1536, 128, 1)
    assert sd["fc.weight"].shape == (2048, 3072, 1)
    assert enc.blocks[3].res2net_block.blocks[0].conv.dilation == (4,)


def test_random_init_is_seeded_and_nontrivial():
    a = random_init_(SpeakerEncoder(TINY), torch.Generator().manual_seed(3))
    b = random_init_(SpeakerEncoder(TINY), torch.Generator().manual_seed(3))
    c = random_init_(SpeakerEncoder(TINY), torch.Generator().manual_seed(4))
    for name, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[name])
        assert not torch.equal(t, c.state_dict()[name])
        assert t.std() > 0, name
    with torch.no_grad():
        emb = a.eval()(mel_spectrogram(torch.from_numpy(tone(1.0))))
    assert emb.shape == (1, 32) and torch.isfinite(emb).all() and emb.std() > 0.1


def test_batch_rows_are_independent_and_short_input_is_rejected():
    enc = random_init_(SpeakerEncoder(TINY), torch.Generator().manual_seed(0)).eval()
    mel = mel_spectrogram(torch.from_numpy(np.stack([tone(1.0, seed=1), tone(1.0, hz=300, seed=2)])))
    with torch.no_grad():
        both = enc(mel)
        torch.testing.assert_close(both[1:], enc(mel[1:]), rtol=1e-5, atol=1e-5)
        assert enc.min_frames == 5  # dilation 4, kernel 3: 4 reflected frames per side
        enc(mel[:, :5])
        with pytest.raises(AssertionError, match="at least 5 mel frames"):
            enc(mel[:, :4])


def test_bfloat16_weights_stay_close():
    enc = random_init_(SpeakerEncoder(TINY), torch.Generator().manual_seed(0)).eval()
    mel = mel_spectrogram(torch.from_numpy(tone(2.0)))
    with torch.no_grad():
        ref = enc(mel)
        low = enc.to(torch.bfloat16)(mel)
    assert low.dtype == torch.bfloat16
    assert rel_err(low.float(), ref) < 0.05


@pytest.fixture(scope="module")
def tiny_encoder(tiny_checkpoint) -> SpeakerEncoder:
    """The tiny Base checkpoint's speaker encoder, loaded in float32 by stripping `speaker_encoder.`."""
    cfg = ModelConfig.from_file(tiny_checkpoint / "config.json").speaker_encoder
    with torch.device("meta"):
        enc = SpeakerEncoder(cfg)
    load_weights(enc, tiny_checkpoint / "model.safetensors", prefix="speaker_encoder.", dtype=torch.float32)
    return enc.eval()


def test_embedding_matches_reference(tiny_checkpoint, tiny_encoder, oracle):
    clips = {"a": tone(2.0, seed=1), "b": tone(0.9, hz=260, seed=2), "loud": 3 * tone(1.2, seed=3)}
    hi_rate = tone(1.7, sr=44100, seed=4)
    jobs = [dict(id=k, op="speaker_embedding", checkpoint=str(tiny_checkpoint), audio=v) for k, v in clips.items()]
    jobs.append(dict(id="44k", op="speaker_embedding", checkpoint=str(tiny_checkpoint), audio=hi_rate, sr=44100))
    res = oracle(jobs)
    clips["44k"] = load_audio((hi_rate, 44100))
    for name, wav in clips.items():
        with torch.no_grad():
            emb = tiny_encoder(mel_spectrogram(torch.from_numpy(wav)))[0].numpy()
        ref = res[name]["embedding"]
        assert emb.shape == ref.shape == (tiny_encoder.cfg.enc_dim,)
        assert rel_err(emb, ref) <= EMB_TOL, f"{name}: relative error {rel_err(emb, ref):.2e}"
