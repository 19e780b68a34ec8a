"""Talker and code predictor: parity with the official package on the same random checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from q3tts.config import ModelConfig
from q3tts.model import load_networks
from q3tts.nn.layers import causal_mask
from q3tts.nn.talker import left_padded_inputs

KINDS = ("base", "custom_voice", "voice_design")
TOL = 1e-4


def load_fp32(folder):
    cfg = ModelConfig.from_file(folder / "config.json")
    return load_networks(folder, cfg, dtype=torch.float32)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


PROMPTS = {
    "base": dict(call="voice_clone", text="Hello world, this is a test.", language="English",
                 ref_text="The quick brown fox.", ref_audio="__ref__"),
    "custom_voice": dict(call="custom_voice", text="Hello world, this is a test.", language="English",
                         speaker="Vivian"),
    "voice_design": dict(call="voice_design", text="Hello world.", language="Auto",
                         instruct="Speak slowly and clearly, in a warm voice."),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(make_tiny, oracle, tmp_path_factory):
    """Reference results for all kinds, computed in one oracle call."""
    rng = np.random.default_rng(0)
    ref_audio = tmp_path_factory.mktemp("audio") / "ref.npy"
    t = np.arange(int(24000 * 1.7)) / 24000
    np.save(ref_audio, (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    jobs = []
    for kind in KINDS:
        ckpt = str(make_tiny(kind))
        cfg = ModelConfig.from_file(make_tiny(kind) / "config.json")
        H = cfg.talker.hidden_size
        embeds = rng.standard_normal((2, 9, H)).astype(np.float32)
        mask = np.ones((2, 9), dtype=np.int64)
        mask[1, :3] = 0  # a left-padded row
        cp_embeds = rng.standard_normal((3, 17, H)).astype(np.float32)
        ids = rng.integers(0, 300, size=(2, 7))
        prompt = {k: (str(ref_audio) if v == "__ref__" else v) for k, v in PROMPTS[kind].items()}
        jobs += [
            dict(id=f"{kind}-talker", op="talker_forward", checkpoint=ckpt, inputs_embeds=embeds, attention_mask=mask),
            dict(id=f"{kind}-cp", op="code_predictor_forward", checkpoint=ckpt, inputs_embeds=cp_embeds),
            dict(id=f"{kind}-text", op="text_embed", checkpoint=ckpt, ids=ids),
            dict(id=f"{kind}-codec", op="codec_embed", checkpoint=ckpt, ids=ids, k=4),
            dict(id=f"{kind}-prefill", op="prefill_capture", checkpoint=ckpt, max_new_tokens=3, **prompt),
        ]
    results = oracle(jobs)
    return {job["id"]: (job, results[job["id"]]) for job in jobs}


@pytest.mark.parametrize("kind", KINDS)
def test_talker_forward_matches_reference(kind, make_tiny, reference):
    nets = load_fp32(make_tiny(kind))
    job, ref = reference[f"{kind}-talker"]
    mask = torch.as_tensor(job["attention_mask"])
    positions, attn = left_padded_inputs(mask)
    with torch.no_grad():
        hidden = nets.talker(torch.as_tensor(job["inputs_embeds"]), positions, attn)
        logits = nets.talker.codec_head(hidden)
    valid = mask.bool().numpy()
    assert max_abs(logits.numpy()[valid], ref["logits"][valid]) < TOL
    assert max_abs(hidden.numpy()[valid], ref["hidden"][valid]) < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_logits_match_reference(kind, make_tiny, reference):
    """The reference's own prompt for each mode, through our talker: same prefill logits."""
    nets = load_fp32(make_tiny(kind))
    _, ref = reference[f"{kind}-prefill"]
    mask = torch.as_tensor(ref["attention_mask"])
    positions, attn = left_padded_inputs(mask)
    with torch.no_grad():
        logits = nets.talker.codec_head(nets.talker(torch.as_tensor(ref["inputs_embeds"]), positions, attn))
    assert logits.shape == ref["logits"].shape
    assert max_abs(logits.numpy(), ref["logits"]) < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_code_predictor_matches_reference(kind, make_tiny, reference):
    nets = load_fp32(make_tiny(kind))
    job, ref = reference[f"{kind}-cp"]
    cp = nets.talker.code_predictor
    x = torch.as_tensor(job["inputs_embeds"])
    with torch.no_grad():
        hidden = cp(x, torch.arange(x.shape[1]))
        logits = torch.stack([head(hidden) for head in cp.lm_head], dim=2)
    assert max_abs(hidden.numpy(), ref["hidden"]) < TOL
    assert max_abs(logits.numpy(), ref["logits"]) < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_embeddings_match_reference(kind, make_tiny, reference):
    nets = load_fp32(make_tiny(kind))
    job, text = reference[f"{kind}-text"]
    _, codec = reference[f"{kind}-codec"]
    ids = torch.as_tensor(job["ids"])
    with torch.no_grad():
        assert max_abs(nets.talker.embed_text(ids).numpy(), text["embeds"]) < TOL
        assert max_abs(nets.talker.embed_codec(ids).numpy(), codec["talker"]) < TOL
        assert max_abs(nets.talker.code_predictor.embed_code(5, ids).numpy(), codec["code_predictor"]) < TOL


def test_code_predictor_cached_steps_equal_full_forward(tiny_checkpoint):
    """The one-token steps with the static cache reproduce the full-sequence forward."""
    nets = load_fp32(tiny_checkpoint)
    cp = nets.talker.code_predictor
    x = torch.randn(2, 17, nets.cfg.talker.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = cp(x, torch.arange(17))
        caches = cp.new_caches(2)
        steps = [cp(x[:, :2], torch.arange(2), caches, torch.arange(2))]
        for i in range(2, 17):
            pos = torch.tensor([i])
            steps.append(cp(x[:, i : i + 1], pos, caches, pos))
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_talker_cached_decode_equals_full_forward(tiny_checkpoint):
    nets = load_fp32(tiny_checkpoint)
    talker = nets.talker
    x = torch.randn(2, 12, nets.cfg.talker.hidden_size, generator=torch.Generator().manual_seed(2))
    pad = torch.ones(2, 12, dtype=torch.long)
    pad[1, :4] = 0
    positions, mask = left_padded_inputs(pad)
    with torch.no_grad():
        full = talker(x, positions, mask)
        caches = talker.new_caches(2, 16)
        slots = torch.arange(16)
        valid = torch.zeros(2, 16, dtype=torch.bool)
        valid[:, :8] = pad[:, :8].bool()
        out = [talker(x[:, :8], positions[:, :8], causal_mask(slots[:8], slots, valid), caches, slots[:8])]
        for i in range(8, 12):
            valid[:, i] = True
            pos = slots[i : i + 1]
            out.append(talker(x[:, i : i + 1], positions[:, i : i + 1], causal_mask(pos, slots, valid), caches, pos))
    got = torch.cat(out, 1)
    keep = pad.bool()
    assert torch.allclose(got[keep], full[keep], atol=1e-5)
