"""Streaming through the API, and long texts generated in pieces with one continuous codec stream."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from q3tts.api import Qwen3TTS
from q3tts.generate.segment import split_text

GREEDY = dict(do_sample=False, subtalker_dosample=False)


def words(s: str) -> int:
    return len(s.split()) + sum(1 for c in s if "\u4e00" <= c <= "\u9fff")


# ----------------------------------------------------------------------------- split_text


LONG_EN = ("The weather was fine. Pi is 3.14 exactly! Was it? Yes, it was; really, truly, it was.\n\n"
           "A new paragraph starts here, and it goes on for a while, clause after clause, without a stop") * 4  # fmt: skip


@pytest.mark.parametrize("budget", [3, 8, 12, 30])
def test_split_respects_budget_and_keeps_every_character(budget):
    pieces = split_text(LONG_EN, budget, words)
    assert len(pieces) > 1
    assert all(0 < words(p) <= budget for p in pieces)
    assert "".join(pieces).replace(" ", "").replace("\n", "") == LONG_EN.replace(" ", "").replace("\n", "")


def test_split_prefers_sentence_ends():
    pieces = split_text(LONG_EN, 12, words)
    # Every piece that is not the last ends at a sentence end or clause mark when one fits.
    assert sum(p[-1] in ".!?,;" for p in pieces[:-1]) == len(pieces) - 1
    assert not any(p.endswith("3.") or p.startswith("14") for p in pieces), "a decimal number was cut"


def test_split_short_text_is_whole_and_cjk_is_cut_at_its_punctuation():
    assert split_text("  Hello there.  ", 10, words) == ["Hello there."]
    zh = "你好，世界。今天天气很好！我们去公园吧。"
    assert split_text(zh, 9, words) == ["你好，世界。", "今天天气很好！", "我们去公园吧。"]
    run = "你" * 30  # no punctuation at all: cut inside, still within budget
    pieces = split_text(run, 8, words)
    assert "".join(pieces) == run and all(words(p) <= 8 for p in pieces)


# ----------------------------------------------------------------------------- API


@pytest.fixture(scope="module")
def custom(make_tiny):
    return Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def base(make_tiny):
    return Qwen3TTS.from_pretrained(make_tiny("base"), device="cpu", dtype="float32")


@pytest.mark.parametrize("chunk, first", [(1, 1), (3, 2), (25, 4)])
def test_stream_equals_generate(custom, chunk, first):
    text = "Streaming should give exactly the same samples."
    kw = dict(speaker="Vivian", language="English", max_new_tokens=40, **GREEDY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (offline,), sr = custom.generate_custom_voice(text, **kw)
        chunks = list(custom.stream(text, chunk_frames=chunk, first_chunk_frames=first, **kw))
    assert chunks[0].shape[0] == first * 1920
    assert all(c.shape[0] <= chunk * 1920 and c.shape[0] % 1920 == 0 for c in chunks[1:])
    assert np.array_equal(np.concatenate(chunks), offline)


def test_long_text_is_pieces_joined_by_one_codec_stream(custom):
    text = "One short sentence here. Another one follows it. And a third closes the text."
    tok = custom.checkpoint.tokenizer
    budget = max(len(tok.encode(s)) for s in ("One short sentence here.", "Another one follows it.",
                                              "And a third closes the text."))  # fmt: skip
    kw = dict(speaker="Ryan", language="English", max_new_tokens=15, **GREEDY)
    utt = custom._custom_voice_utterances(text, "Ryan", "English", None, True)[0]
    pieces = custom._pieces(utt, budget)
    assert [p.text for p in pieces] == [
        "One short sentence here.",
        "Another one follows it.",
        "And a third closes the text.",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codes = [custom.generate_codes([p], max_new_tokens=15, **GREEDY)[0] for p in pieces]
        (long,), _ = custom.generate_custom_voice(text, max_piece_tokens=budget, **kw)
        (whole,), _ = custom.generate_custom_voice(text, max_piece_tokens=0, **kw)
    joined = torch.cat(codes)  # [sum T, 16]
    decoder = custom.checkpoint.speech_tokenizer.decoder
    expected = decoder(joined.T[None])[0, 0].numpy()
    assert long.shape == expected.shape and np.array_equal(long, expected)
    # Not the same as restarting the codec per piece: the join is decoded with the past in view.
    restarted = np.concatenate([decoder(c.T[None])[0, 0].numpy() for c in codes])
    assert not np.array_equal(long, restarted)
    assert whole.shape[0] == 14 * 1920  # unsplit: one generation, one cap


def test_long_text_batch_rows_with_different_piece_counts(custom):
    texts = ["Short one.", "First part here. Second part there. Third part last."]
    kw = dict(speaker=["Vivian", "Ryan"], language="English", max_new_tokens=10, max_piece_tokens=6, **GREEDY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both, _ = custom.generate_custom_voice(texts, **kw)
        alone = [
            custom.generate_custom_voice(t, **{**kw, "speaker": s})[0][0] for t, s in zip(texts, ["Vivian", "Ryan"])
        ]
    for a, b in zip(both, alone):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    assert both[1].shape[0] > both[0].shape[0]


def test_long_clone_computes_the_voice_once(base, monkeypatch):
    t = np.arange(int(24000 * 1.5)) / 24000
    clip = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    calls = []
    encoder = base.checkpoint.networks.speaker_encoder
    hook = encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (wav,), _ = base.generate_voice_clone("First sentence. Second sentence. Third one.", language="English",
                                                  ref_audio=(clip, 24000), ref_text="A reference transcript.",
                                                  max_new_tokens=8, max_piece_tokens=4, **GREEDY)  # fmt: skip
    finally:
        hook.remove()
    assert len(calls) == 1
    from q3tts.generate.prompt import Utterance

    pieces = base._pieces(Utterance("First sentence. Second sentence. Third one."), 4)
    assert len(pieces) >= 3
    assert wav.shape[0] == len(pieces) * 7 * 1920  # 7 frames a piece (random weights never say EOS)
