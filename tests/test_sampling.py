"""Sampling: the warpers keep exactly the ids they should, defaults come from generation_config.json,
rows of a batch stop on their own, and a stream longer than 30 s equals the offline decode."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from q3tts.api import Qwen3TTS
from q3tts.generate.sampling import SamplingOptions, choose, penalise_repeats

GREEDY = dict(do_sample=False, subtalker_dosample=False)


def draws(logits: torch.Tensor, n: int = 4000, **kw) -> set[int]:
    """The set of ids `choose` picks for one row over n draws."""
    gen = torch.Generator().manual_seed(0)
    ids = choose(logits.expand(n, -1), False, kw.get("temperature", 1.0), kw.get("top_k", 0), kw.get("top_p", 1.0), gen)
    return set(ids.tolist())


def test_top_k_keeps_the_k_best():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9, -1.0, 2.8]])
    assert draws(logits, top_k=3) == {1, 3, 5}
    assert draws(logits, top_k=1) == {1}


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert draws(logits, top_p=0.75) == {0, 1}  # 0.5 < 0.75 <= 0.5 + 0.3
    assert draws(logits, top_p=0.85) == {0, 1, 2}
    assert draws(logits, top_p=0.01) == {0}  # the most likely id always stays


def test_temperature_sharpens_and_greedy_is_argmax():
    logits = torch.tensor([[0.0, 1.0, 0.5]])
    gen = torch.Generator().manual_seed(0)
    cold = choose(logits.expand(2000, -1), False, 0.05, 0, 1.0, gen)
    hot = choose(logits.expand(2000, -1), False, 5.0, 0, 1.0, gen)
    assert (cold == 1).float().mean() > 0.99
    assert 0.25 < (hot == 1).float().mean() < 0.5  # near uniform over 3 ids
    assert choose(logits, True, 0.9, 50, 1.0, None).item() == 1
    assert SamplingOptions(temperature=0.0).greedy and SamplingOptions(do_sample=False).greedy


def test_repetition_penalty_only_on_seen_ids():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = penalise_repeats(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_defaults_come_from_generation_config(make_tiny, tmp_path):
    folder = shutil.copytree(make_tiny("custom_voice"), tmp_path / "ck")
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(do_sample=False, subtalker_dosample=False, max_new_tokens=9, repetition_penalty=1.3)
    (folder / "generation_config.json").write_text(json.dumps(config))
    model = Qwen3TTS.from_pretrained(folder, device="cpu", dtype="float32")
    opts = model.options()
    assert (opts.greedy, opts.subtalker_greedy, opts.max_new_tokens, opts.repetition_penalty) == (True, True, 9, 1.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (a,), _ = model.generate_custom_voice("Hello there.", speaker="Vivian")  # the file's defaults: greedy
        (b,), _ = model.generate_custom_voice("Hello there.", speaker="Vivian", max_new_tokens=9,
                                              repetition_penalty=1.3, **GREEDY)  # fmt: skip
        (c,), _ = model.generate_custom_voice("Hello there.", speaker="Vivian", repetition_penalty=1.0)
    assert a.shape[0] == 8 * 1920  # max_new_tokens 9 -> 8 frames
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # an override beats the file


def test_rows_stop_at_their_own_eos(custom_voice_tts, force_eos):
    """Row r says EOS at talker step stop[r]: it yields stop[r] frames, and the rows still running
    keep the codes they have without the EOS of the others."""
    texts = ["Hello there.", "A second, longer row of text to speak.", "Third row."]
    utts = custom_voice_tts.utterances(texts, speaker="Vivian", language="English")
    free = custom_voice_tts.generate_codes(utts, max_new_tokens=12, **GREEDY)
    stop = [3, 9, 5]
    with force_eos(custom_voice_tts, stop) as steps:
        codes = custom_voice_tts.generate_codes(utts, max_new_tokens=12, **GREEDY)
    assert [c.shape[0] for c in codes] == stop
    for row, c in enumerate(codes):
        assert torch.equal(c, free[row][: stop[row]])
    assert len(steps) == max(stop) + 1  # the loop ends once the last row has stopped


LONG_TEXT = " ".join(["Every word of this sentence keeps the speech going for a while longer."] * 3)
LONG_KW = dict(
    speaker="Vivian", language="English", max_new_tokens=401, min_new_tokens=401, max_piece_tokens=0, **GREEDY
)  # no end of speech before 400 frames (32 s)


@pytest.fixture(scope="module")
def long_offline(custom_voice_tts) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return custom_voice_tts.generate_custom_voice(LONG_TEXT, **LONG_KW)[0][0]


@pytest.mark.parametrize("chunk", [1, 2, 4, 25])
def test_api_stream_equals_offline_beyond_30s(custom_voice_tts, long_offline, chunk):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chunks = list(
            custom_voice_tts.stream(LONG_TEXT, chunk_frames=chunk, first_chunk_frames=min(chunk, 2), **LONG_KW)
        )
    assert long_offline.shape[0] / 24000 > 30
    assert len(chunks) >= 400 // chunk
    assert np.array_equal(np.concatenate(chunks), long_offline)
