"""Smoke test of the oracle plumbing: tools/oracle/{setup.sh, reference.py, client.py}.

Runs `info` and `codec_decode` through the official package on a tiny checkpoint and checks
shapes. Skips without the oracle venv unless Q3TTS_REQUIRE_ORACLE=1 (then it fails), via the
`oracle` fixture of conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAME = 1920  # samples per 12.5 Hz codec frame at 24 kHz

# Where the checkpoint comes from; switch with Q3TTS_SMOKE_CHECKPOINT:
#   "dev"        tools/oracle/build_dev_checkpoint.py, built with the reference's own classes
#   "make_tiny"  our own writer (q3tts.testing.presets.make_checkpoint, the conftest fixture)
CHECKPOINT_SOURCE = os.environ.get("Q3TTS_SMOKE_CHECKPOINT", "dev")


@pytest.fixture(scope="module")
def smoke_checkpoint(request, oracle, tmp_path_factory) -> Path:
    """A tiny Base checkpoint folder (Base has every network). Requesting `oracle` first makes
    this skip/fail like the rest of the oracle tests when the venv is missing."""
    if CHECKPOINT_SOURCE == "make_tiny":
        return request.getfixturevalue("make_tiny")("base")
    import client

    out = tmp_path_factory.mktemp("dev-checkpoint") / "tiny-base"
    proc = subprocess.run([str(client.oracle_python()), str(ROOT / "tools/oracle/build_dev_checkpoint.py"),
                           "base", str(out)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, f"build_dev_checkpoint failed:\n{proc.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def results(smoke_checkpoint, oracle) -> dict:
    rng = np.random.default_rng(0)
    codebook = json.loads((smoke_checkpoint / "speech_tokenizer/config.json").read_text())["decoder_config"]
    codes = rng.integers(0, codebook["codebook_size"], size=(7, 16), dtype=np.int64)
    ckpt = str(smoke_checkpoint)
    return oracle([
        dict(id="info", op="info", checkpoint=ckpt),
        dict(id="decode", op="codec_decode", checkpoint=ckpt, codes=codes),
        dict(id="decode_list", op="codec_decode", checkpoint=ckpt, codes=[codes, codes[:3]]),
    ])  # fmt: skip


def test_info(results, smoke_checkpoint):
    info = results["info"]
    cfg = json.loads((smoke_checkpoint / "config.json").read_text())
    talker = cfg["talker_config"]
    assert info["model_type"] == "base"
    assert info["sample_rate"] == 24000
    assert "auto" in info["languages"]
    shapes = dict((k, tuple(s)) for k, s in info["state_dict"])
    assert shapes["talker.model.codec_embedding.weight"] == (talker["vocab_size"], talker["hidden_size"])
    assert shapes["talker.codec_head.weight"] == (talker["vocab_size"], talker["hidden_size"])
    assert shapes["talker.model.text_embedding.weight"] == (talker["text_vocab_size"], talker["text_hidden_size"])
    assert any(k.startswith("speaker_encoder.") for k in shapes)
    assert info["state_dict"] == sorted(info["state_dict"])
    codec_keys = {k for k, _ in info["speech_tokenizer_state_dict"]}
    assert "decoder.quantizer.rvq_first.vq.layers.0._codebook.embedding_sum" in codec_keys
    assert any(k.startswith("encoder.") for k in codec_keys)


def test_codec_decode_shapes(results):
    audio = results["decode"]["audio"]
    assert results["decode"]["sample_rate"] == 24000
    assert audio.dtype == np.float32 and audio.shape == (7 * FRAME,)
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    batch = results["decode_list"]["audio"]
    assert [a.shape for a in batch] == [(7 * FRAME,), (3 * FRAME,)]
