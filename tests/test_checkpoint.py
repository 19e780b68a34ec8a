"""Checkpoint writing, loading, configs, sizes and the errors bad checkpoints give."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from q3tts.checkpoint import CheckpointError, resolve
from q3tts.config import ConfigError, ModelConfig, SpeechTokenizerConfig
from q3tts.model import SpeechTokenizer, TTSNetworks, load_checkpoint
from q3tts.testing.presets import LANGUAGE_IDS, SPEAKER_IDS, build_configs, write_text_tokenizer
from q3tts.text import TextTokenizer, assistant_text, instruct_text, reference_text

KINDS = ("base", "custom_voice", "voice_design")


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_checkpoint_loads_in_ours(kind, make_tiny):
    ck = load_checkpoint(make_tiny(kind))
    assert ck.config.tts_model_type == kind
    assert (ck.networks.speaker_encoder is not None) == (kind == "base")
    assert (ck.speech_tokenizer.encoder is not None) == (kind == "base")
    if kind == "custom_voice":
        assert set(ck.config.talker.spk_id) == set(SPEAKER_IDS)
    assert ck.config.talker.codec_language_id == LANGUAGE_IDS
    size = sum(p.stat().st_size for p in make_tiny(kind).rglob("*") if p.is_file())
    assert size < 20e6, f"tiny checkpoint is {size / 1e6:.1f} MB"


@pytest.mark.parametrize("kind", KINDS)
def test_reference_loads_our_checkpoints(kind, make_tiny, oracle):
    ckpt = make_tiny(kind)
    info = oracle([dict(id="info", op="info", checkpoint=str(ckpt))])["info"]
    assert info["model_type"] == kind
    ours = load_checkpoint(ckpt)
    # Same tensors, same shapes, on both sides.
    ref_keys = {k: tuple(s) for k, s in info["state_dict"]}
    our_keys = {k: tuple(v.shape) for k, v in ours.networks.state_dict().items()}
    assert our_keys == ref_keys
    if kind == "custom_voice":
        assert sorted(s.lower() for s in info["speakers"]) == sorted(SPEAKER_IDS)
    assert "auto" in [lang.lower() for lang in info["languages"]]


def test_text_tokenizer_matches_reference(make_tiny, oracle, tmp_path):
    ckpt = make_tiny("custom_voice")
    texts = ["Hello world, this is a test.", "你好，世界！ 123 numbers\nand   spaces", "Ünïcödé café — naïve"]
    slow = tmp_path / "slow"
    shutil.copytree(ckpt, slow, ignore=shutil.ignore_patterns("*.safetensors"))
    (slow / "tokenizer.json").unlink()
    ref = oracle([dict(id="t", op="tokenize", checkpoint=str(ckpt), texts=texts)])["t"]
    for folder in (ckpt, slow):  # with tokenizer.json, and built from vocab.json + merges.txt
        tok = TextTokenizer.from_dir(folder)
        assert [tok.encode(t) for t in texts] == ref["raw"]
        assert [tok.encode(assistant_text(t)) for t in texts] == ref["assistant"]
        assert [tok.encode(reference_text(t)) for t in texts] == ref["ref"]
        assert [tok.encode(instruct_text(t)) for t in texts] == ref["instruct"]


def _meta_params(size: str, kind: str = "base") -> int:
    ids = {t: 151643 + i for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
    ids.update({"<tts_pad>": 151671, "<tts_text_bos>": 151672, "<tts_text_eod>": 151673, "assistant": 77091})
    main, speech = build_configs(size, kind, ids, 151936)
    with torch.device("meta"):
        nets = TTSNetworks(ModelConfig.from_dict(main))
        st = SpeechTokenizer(SpeechTokenizerConfig.from_dict(speech))
    assert all(p.device.type == "meta" for p in nets.parameters())
    return sum(p.numel() for p in nets.parameters()), sum(p.numel() for p in st.decoder.parameters())


@pytest.mark.parametrize("size,expected", [("0.6b", 0.915e9), ("1.7b", 1.93e9)])
def test_full_size_parameter_counts(size, expected):
    main, decoder = _meta_params(size)
    assert abs(main - expected) / expected < 0.01, main
    assert 100e6 < decoder < 130e6, decoder  # the released decoder is ~114 M


def test_full_size_tokenizer_uses_real_special_ids(tmp_path):
    ids, vocab = write_text_tokenizer(tmp_path, "1.7b")
    assert vocab == 151936
    assert (ids["<|im_start|>"], ids["<|im_end|>"]) == (151644, 151645)
    assert (ids["<tts_pad>"], ids["<tts_text_bos>"], ids["<tts_text_eod>"]) == (151671, 151672, 151673)


# ---------------------------------------------------------------------------------------------
# Bad checkpoints: one clear message naming the file and the problem
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def broken(make_tiny, tmp_path):
    def copy(kind="custom_voice"):
        dst = tmp_path / "ckpt"
        shutil.copytree(make_tiny(kind), dst)
        return dst

    return copy


def test_missing_file(broken):
    ck = broken()
    (ck / "generation_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"generation_config\.json: required file is missing"):
        load_checkpoint(ck)


def test_missing_speech_tokenizer(broken):
    ck = broken()
    (ck / "speech_tokenizer" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"speech_tokenizer/model\.safetensors: required file is missing"):
        load_checkpoint(ck)


def test_truncated_safetensors(broken):
    ck = broken()
    path = ck / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        load_checkpoint(ck)


def test_not_a_safetensors_file(broken):
    ck = broken()
    (ck / "model.safetensors").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: (corrupt|truncated)"):
        load_checkpoint(ck)


def test_wrong_shapes(broken):
    ck = broken()
    cfg = json.loads((ck / "config.json").read_text())
    cfg["talker_config"]["intermediate_size"] = 96
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: tensor talker\.model\.layers\.0\.mlp\.\w+_proj\.weight has shape"
    ):
        load_checkpoint(ck)


def test_missing_tensor_for_config(broken):
    ck = broken()
    cfg = json.loads((ck / "config.json").read_text())
    cfg["talker_config"]["num_hidden_layers"] += 1
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: missing \d+ tensor\(s\), e\.g\. talker\.model\.layers\.2\."
    ):
        load_checkpoint(ck)


def test_unknown_tokenizer_type(broken):
    ck = broken()
    tc = json.loads((ck / "tokenizer_config.json").read_text())
    tc["tokenizer_class"] = "LlamaTokenizer"
    (ck / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json: unknown tokenizer type 'LlamaTokenizer'"):
        load_checkpoint(ck)


def test_missing_required_config_key(broken):
    ck = broken()
    cfg = json.loads((ck / "config.json").read_text())
    del cfg["talker_config"]["head_dim"]
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config\.json: talker_config: required key 'head_dim' is missing"):
        load_checkpoint(ck)


def test_unsupported_tokenizer_type_in_config(broken):
    ck = broken()
    cfg = json.loads((ck / "config.json").read_text())
    cfg["tokenizer_type"] = "qwen3_tts_tokenizer_25hz"
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="25hz"):
        load_checkpoint(ck)


def test_extra_config_keys_are_tolerated(broken):
    ck = broken()
    cfg = json.loads((ck / "config.json").read_text())
    cfg["talker_config"]["some_future_key"] = {"x": 1}
    cfg["transformers_version"] = "4.57.3"
    (ck / "config.json").write_text(json.dumps(cfg))
    load_checkpoint(ck)


def test_unknown_path_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve(tmp_path / "nope")


def test_uncached_repo_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        resolve("Qwen/Qwen3-TTS-12Hz-0.6B-Base")


def test_cached_repo_resolves(monkeypatch, tmp_path, make_tiny):
    """A repo id found in the Hugging Face cache loads without the network."""
    cache = tmp_path / "hub" / "models--Qwen--Tiny-TTS"
    snap = cache / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(make_tiny("custom_voice"), snap)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_checkpoint("Qwen/Tiny-TTS").config.tts_model_type == "custom_voice"


def test_cli_errors_are_one_line(broken):
    ck = broken()
    (ck / "config.json").write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "q3tts.cli", "info", str(ck)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "config.json: not valid JSON" in r.stderr, r.stderr


def test_cli_info(make_tiny):
    r = subprocess.run([sys.executable, "-m", "q3tts.cli", "info", "--json", str(make_tiny("custom_voice"))],
                       capture_output=True, text=True, check=True)  # fmt: skip
    info = json.loads(r.stdout)
    assert info["kind"] == "custom_voice" and "vivian" in info["speakers"]
    assert info["dialect_speakers"] == {"eric": "sichuan_dialect", "dylan": "beijing_dialect"}
    assert "english" in info["languages"] and "beijing_dialect" not in info["languages"]


def _tensors(folder) -> dict:
    from safetensors.torch import load_file

    return {f"{p.relative_to(folder)}:{k}": v for p in sorted(folder.rglob("*.safetensors"))
            for k, v in load_file(str(p)).items()}  # fmt: skip


def test_make_checkpoint_command_is_seeded(tmp_path):
    """`q3tts make-checkpoint` writes the whole official layout; the seed alone decides the weights."""

    def make(name: str, seed: int):
        out = tmp_path / name
        r = subprocess.run([sys.executable, "-m", "q3tts.cli", "make-checkpoint", str(out), "--preset", "tiny",
                            "--kind", "voice_design", "--seed", str(seed)], capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert f"to {out}" in r.stdout
        return out

    a, b, c = make("a", 7), make("b", 7), make("c", 8)
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    for needed in ("config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt",
                   "tokenizer_config.json", "speech_tokenizer/config.json", "speech_tokenizer/model.safetensors"):  # fmt: skip
        assert needed in files
    assert ModelConfig.from_file(a / "config.json").tts_model_type == "voice_design"
    ta, tb, tc = _tensors(a), _tensors(b), _tensors(c)
    assert ta.keys() == tb.keys() == tc.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    differ = [k for k in ta if not torch.equal(ta[k], tc[k])]
    assert len(differ) > len(ta) // 2  # another seed: other random weights (norms/biases may coincide)


def test_no_transformers_at_run_time(make_tiny):
    """Load and synthesise with `transformers` made unimportable: the core must not need it."""
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from q3tts import Qwen3TTS\n"
        f"m = Qwen3TTS.from_pretrained({str(make_tiny('custom_voice'))!r}, device='cpu')\n"
        "wavs, sr = m.generate_custom_voice('Hello.', speaker='Vivian', max_new_tokens=4, seed=0)\n"
        "assert sr == 24000 and wavs[0].size > 0\n"
        "print('ok', sorted(k for k in sys.modules if k.split('.')[0] in ('transformers', 'accelerate')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "ok" and "accelerate" not in r.stdout
