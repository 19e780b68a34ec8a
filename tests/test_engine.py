"""Greedy generation equals the official package: same codes, then the same audio (float32)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from q3tts.api import InputError, Qwen3TTS, VoiceClonePromptItem
from q3tts.generate.engine import LengthCapWarning
from q3tts.generate.prompt import Utterance

GREEDY = dict(do_sample=False, subtalker_dosample=False)
AUDIO_TOL = 1e-4
TEXT = "Hello world, this is a small test of the speech system."


def reference_clip(seconds=1.7, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(24000 * seconds)) / 24000
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


CASES = {
    "custom_voice": ("custom_voice", dict(call="custom_voice", text=TEXT, language="English", speaker="Vivian")),
    "custom_voice_instruct": ("custom_voice", dict(call="custom_voice", text=TEXT, language="English",
                                                   speaker="Ryan", instruct="Speak slowly and clearly.")),
    "dialect_speaker": ("custom_voice", dict(call="custom_voice", text="你好，世界。今天天气很好。", language="Chinese",
                                             speaker="Dylan")),
    "voice_design": ("voice_design", dict(call="voice_design", text=TEXT, language="Auto",
                                          instruct="A warm and friendly voice, speaking slowly.")),
    "clone_xvector": ("base", dict(call="voice_clone", text=TEXT, language="English", x_vector_only_mode=True)),
    "clone_icl": ("base", dict(call="voice_clone", text=TEXT, language="English",
                               ref_text="The quick brown fox jumps over the lazy dog.")),
    "batch_of_3": ("custom_voice", dict(call="custom_voice", text=["Hello.", TEXT, "A calm narrator reads a story."],
                                        language=["English", "English", "Chinese"],
                                        speaker=["Vivian", "Ryan", "Uncle_Fu"])),
}  # fmt: skip
MAX_NEW = {"batch_of_3": 30}


@pytest.fixture(scope="module")
def models(make_tiny):
    return {kind: Qwen3TTS.from_pretrained(make_tiny(kind), device="cpu", dtype="float32")
            for kind in ("base", "custom_voice", "voice_design")}  # fmt: skip


@pytest.fixture(scope="module")
def reference(make_tiny, oracle, tmp_path_factory):
    clip = tmp_path_factory.mktemp("ref") / "clip.npy"
    np.save(clip, reference_clip())
    jobs = []
    for name, (kind, args) in CASES.items():
        extra = {"ref_audio": str(clip), "ref_sr": 24000} if kind == "base" else {}
        jobs.append(dict(id=name, op="generate", checkpoint=str(make_tiny(kind)), max_new_tokens=MAX_NEW.get(name, 40),
                         **args, **extra))  # fmt: skip
    return oracle(jobs)


def run_ours(model: Qwen3TTS, name: str):
    _, args = CASES[name]
    args = {k: v for k, v in args.items() if k != "call"}
    kw = dict(max_new_tokens=MAX_NEW.get(name, 40), **GREEDY)
    call = CASES[name][1]["call"]
    if call == "custom_voice":
        return model.generate_custom_voice(**args, **kw)
    if call == "voice_design":
        return model.generate_voice_design(**args, **kw)
    return model.generate_voice_clone(ref_audio=(reference_clip(), 24000), **args, **kw)


def utterances_for(model: Qwen3TTS, name: str) -> list[Utterance]:
    _, args = CASES[name]
    args = {k: v for k, v in args.items() if k != "call"}
    call = CASES[name][1]["call"]
    if call == "custom_voice":
        return model._custom_voice_utterances(
            args["text"], args["speaker"], args["language"], args.get("instruct"), True
        )
    if call == "voice_design":
        return model._voice_design_utterances(args["text"], args["instruct"], args["language"], True)
    return model._clone_utterances(args["text"], args["language"], (reference_clip(), 24000), args.get("ref_text"),
                                   args.get("x_vector_only_mode", False), None, False)  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_codes_and_audio_match_reference(name, models, reference):
    kind = CASES[name][0]
    model = models[kind]
    ref = reference[name]
    codes = model.generate_codes(utterances_for(model, name), max_new_tokens=MAX_NEW.get(name, 40), **GREEDY)
    assert len(codes) == len(ref["codes"])
    for ours, theirs in zip(codes, ref["codes"]):
        assert ours.shape[0] > 0
        np.testing.assert_array_equal(ours.numpy(), theirs)
    wavs, sr = run_ours(model, name)
    assert sr == ref["sample_rate"] == 24000
    for ours, theirs in zip(wavs, ref["audio"]):
        # ICL: the reference cuts the decoded reference part by a float ratio, which can leave one
        # extra sample at the start; compare the aligned ends.
        assert abs(ours.shape[0] - theirs.shape[0]) <= (1 if name == "clone_icl" else 0)
        n = min(ours.shape[0], theirs.shape[0])
        assert np.max(np.abs(ours[-n:] - theirs[-n:])) < AUDIO_TOL


def test_batch_rows_equal_single_runs(models):
    model = models["custom_voice"]
    utts = utterances_for(model, "batch_of_3")
    batch = model.generate_codes(utts, max_new_tokens=30, **GREEDY)
    for utt, codes in zip(utts, batch):
        (single,) = model.generate_codes([utt], max_new_tokens=30, **GREEDY)
        assert torch.equal(single, codes)


def test_missing_eos_stops_at_cap_with_warning(models, monkeypatch):
    """A talker that never says EOS is stopped by the text-derived cap, with a warning."""
    model = models["custom_voice"]
    monkeypatch.setattr("q3tts.api.length_cap", lambda tokens: 7)
    eos = model.checkpoint.config.talker.codec_eos_token_id
    head = model.checkpoint.networks.talker.codec_head

    def never_eos(module, inputs, logits):
        return logits.index_fill(-1, torch.tensor([eos]), float("-inf"))

    hook = head.register_forward_hook(never_eos)
    try:
        with pytest.warns(LengthCapWarning, match="length limit for its text"):
            wavs, sr = model.generate_custom_voice("Hi.", speaker="Vivian", max_new_tokens=500, **GREEDY)
    finally:
        hook.remove()
    assert wavs[0].shape[0] == 7 * 1920


def test_concurrent_calls_equal_sequential(models):
    model = models["custom_voice"]
    texts = ["Hello there.", "A longer sentence to speak now.", "Numbers 1 2 3.", "The fox."]
    expected = [model.generate_custom_voice(t, speaker="Vivian", max_new_tokens=25, seed=1)[0][0] for t in texts]
    results = [None] * 4

    def work(i):
        results[i] = model.generate_custom_voice(texts[i], speaker="Vivian", max_new_tokens=25, seed=1)[0][0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_seeded_sampling_is_reproducible(models):
    model = models["voice_design"]
    a = model.generate_voice_design("Hello.", instruct="calm", max_new_tokens=20, seed=3)[0][0]
    b = model.generate_voice_design("Hello.", instruct="calm", max_new_tokens=20, seed=3)[0][0]
    c = model.generate_voice_design("Hello.", instruct="calm", max_new_tokens=20, seed=4)[0][0]
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_voice_prompt_round_trip(models, tmp_path):
    model = models["base"]
    (item,) = model.create_voice_clone_prompt((reference_clip(), 24000), ref_text="The quick brown fox.")
    item.save(tmp_path / "voice.safetensors")
    loaded = VoiceClonePromptItem.load(tmp_path / "voice.safetensors")
    assert torch.equal(loaded.ref_code.cpu(), item.ref_code.cpu()) and loaded.ref_text == item.ref_text
    a = model.generate_voice_clone(TEXT, voice_clone_prompt=[item], max_new_tokens=15, **GREEDY)[0][0]
    b = model.generate_voice_clone(
        TEXT, voice_clone_prompt=tmp_path / "voice.safetensors", max_new_tokens=15, **GREEDY
    )[0][0]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kind,call,match",
    [
        ("custom_voice", lambda m: m.generate_custom_voice("", speaker="Vivian"), "text is empty"),
        ("custom_voice", lambda m: m.generate_custom_voice("Hi", speaker="Nobody"), "unknown speaker 'Nobody'"),
        ("custom_voice", lambda m: m.generate_custom_voice("Hi", speaker="Vivian", language="Klingon"),
         "unsupported language 'Klingon'"),
        ("custom_voice", lambda m: m.generate_voice_design("Hi", instruct="calm"), "needs a voice_design checkpoint"),
        ("voice_design", lambda m: m.generate_voice_clone("Hi", ref_audio=(reference_clip(), 24000),
                                                          x_vector_only_mode=True), "needs a base checkpoint"),
        ("base", lambda m: m.generate_voice_clone("Hi", ref_audio=(reference_clip(0.5), 24000),
                                                  x_vector_only_mode=True), "at least 1 s"),
        ("base", lambda m: m.generate_voice_clone("Hi", ref_audio=(reference_clip(61), 24000),
                                                  x_vector_only_mode=True), "at most 60 s"),
        ("base", lambda m: m.generate_voice_clone("Hi", ref_audio=(np.zeros(48000, np.float32), 24000),
                                                  x_vector_only_mode=True), "silent"),
        ("base", lambda m: m.generate_voice_clone("Hi", ref_audio=b"not audio at all", x_vector_only_mode=True),
         "^cannot decode audio bytes: Format not recognised"),
        ("base", lambda m: m.generate_voice_clone("Hi", ref_audio="/nonexistent/ref.wav", x_vector_only_mode=True),
         "audio file not found: /nonexistent/ref.wav"),
        ("base", lambda m: m.generate_voice_clone("Hi", ref_audio=(reference_clip(), 24000)), "ref_text is required"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error(kind, call, match, models):
    with pytest.raises(ValueError, match=match) as info:
        call(models[kind])
    assert "\n" not in str(info.value)


def test_wrong_kind_voice_prompt_file(models, tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="voice prompt"):
        models["base"].generate_voice_clone("Hi", voice_clone_prompt=tmp_path / "x.safetensors")


def test_voice_prompt_of_another_kind_or_size(models, tmp_path):
    from safetensors.torch import save_file

    save_file({"ref_spk_embedding": torch.zeros(8)}, str(tmp_path / "plain.safetensors"))  # no q3tts metadata
    with pytest.raises(InputError, match="not a q3tts voice prompt file"):
        models["base"].generate_voice_clone("Hi", voice_clone_prompt=tmp_path / "plain.safetensors")
    (item,) = models["base"].create_voice_clone_prompt((reference_clip(), 24000), x_vector_only_mode=True)
    wider = VoiceClonePromptItem(None, torch.zeros(item.ref_spk_embedding.shape[-1] * 2), True, False, None)
    wider.save(tmp_path / "wider.safetensors")
    with pytest.raises(InputError, match="hidden size"):
        models["base"].generate_voice_clone("Hi", voice_clone_prompt=tmp_path / "wider.safetensors")


def test_instruct_on_the_small_custom_voice_model_is_refused(make_tiny, tmp_path):
    import json
    import shutil

    folder = shutil.copytree(make_tiny("custom_voice"), tmp_path / "cv-0b6")
    config = json.loads((folder / "config.json").read_text())
    config["tts_model_size"] = "0b6"  # what the released 0.6B CustomVoice config says
    (folder / "config.json").write_text(json.dumps(config))
    model = Qwen3TTS.from_pretrained(folder, device="cpu", dtype="float32")
    with pytest.raises(InputError, match="0.6B CustomVoice model does not support instruct"):
        model.generate_custom_voice("Hi", speaker="Vivian", instruct="Speak slowly.")
    wavs, _ = model.generate_custom_voice("Hi", speaker="Vivian", max_new_tokens=3, **GREEDY)
    assert wavs[0].size > 0
