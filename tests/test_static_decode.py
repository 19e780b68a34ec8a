"""The fixed-shape decode path (replayed as CUDA graphs on a GPU) run eagerly on CPU: the same
greedy codes as the dynamic loop, per-row stopping, repeatable seeded sampling, and a decoder
lent to one call at a time."""

from __future__ import annotations

import warnings

import pytest
import torch

from q3tts.api import Qwen3TTS
from q3tts.generate.engine import Engine
from q3tts.generate.steps import CACHE_BUCKET, Replayable

GREEDY = dict(do_sample=False, subtalker_dosample=False)
TEXTS = ["Hello.", "Hello world, this is a small test of the speech system.", "A calm narrator reads a story."]


@pytest.fixture(scope="module")
def pair(make_tiny):
    """(dynamic model, the same weights on the static path)."""
    dynamic = Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu", dtype="float32")
    static = Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu", dtype="float32", lazy=True)
    static._checkpoint = dynamic.checkpoint
    static._engine = Engine(dynamic.checkpoint.networks, dynamic.checkpoint.config, static="eager")
    assert dynamic.engine.pool is None and static.engine.pool is not None
    return dynamic, static


def codes(model, texts, **kw):
    utts = model.utterances(texts, speaker=["Vivian", "Ryan", "Uncle_Fu"][: len(texts)], language="English")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.generate_codes(utts, **kw)


def test_greedy_codes_equal_the_dynamic_loop(pair):
    dynamic, static = pair
    want = codes(dynamic, TEXTS, max_new_tokens=40, **GREEDY)
    got = codes(static, TEXTS, max_new_tokens=40, **GREEDY)
    assert [c.shape for c in got] == [c.shape for c in want] and got[0].shape[0] > 30
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    # the batch went back to the pool, keyed by its capacity (3 rows -> 4 slots), and is reused
    ((capacity, batch),) = static.engine.pool._free.items()
    assert capacity == 4 and batch.length % CACHE_BUCKET == 0 and len(batch) == 0
    again = codes(static, TEXTS, max_new_tokens=40, **GREEDY)
    assert all(torch.equal(a, b) for a, b in zip(again, want))
    assert list(static.engine.pool._free.values()) == [batch]


def test_audio_equals_the_dynamic_loop(pair):
    dynamic, static = pair
    kw = dict(speaker="Vivian", language="English", max_new_tokens=20, **GREEDY)
    (a,), _ = dynamic.generate_custom_voice(TEXTS[1], **kw)
    (b,), _ = static.generate_custom_voice(TEXTS[1], **kw)
    assert a.shape == b.shape and (abs(a - b).max() < 1e-5)


def test_rows_stop_on_their_own(pair, force_eos):
    _, static = pair
    stop = [4, 2, 6]
    with force_eos(static, stop):
        got = codes(static, TEXTS, max_new_tokens=30, **GREEDY)
    assert [c.shape[0] for c in got] == stop


def test_seeded_sampling_is_repeatable_and_valid(pair):
    _, static = pair
    kw = dict(max_new_tokens=15, seed=11, subtalker_temperature=0.8, subtalker_top_k=20, subtalker_top_p=0.9)
    a = codes(static, TEXTS[:2], **kw)
    b = codes(static, TEXTS[:2], **kw)
    c = codes(static, TEXTS[:2], **{**kw, "seed": 12})
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, c))
    vocab = static.checkpoint.config.talker.code_predictor.vocab_size
    assert all(int(x[:, 1:].min()) >= 0 and int(x[:, 1:].max()) < vocab for x in a)


def test_sub_talker_top_k_1_is_greedy(pair):
    """Gumbel-max over scores filtered to one id must pick that id: the sampled path with top_k=1
    gives the greedy sub-talker codes."""
    _, static = pair
    greedy = codes(static, TEXTS[:1], max_new_tokens=12, **GREEDY)
    top1 = codes(static, TEXTS[:1], max_new_tokens=12, do_sample=False, subtalker_top_k=1, seed=0)
    assert torch.equal(greedy[0], top1[0])


def test_a_busy_batch_is_not_shared(pair):
    """While a call holds the pooled fixed-shape batch of a capacity, another call of that capacity
    runs eager steps instead of sharing its buffers; both give the same codes."""
    _, static = pair
    codes(static, TEXTS[:1], max_new_tokens=25, **GREEDY)  # the pool now holds a 1-slot batch with caches
    pool = static.engine.pool
    held = pool.acquire(1)
    with torch.inference_mode():  # blank, so a later call that borrows it shows in its caches
        for c in held.caches:
            c.k.zero_()
            c.v.zero_()
    try:
        assert pool.acquire(1) is None
        before = [t.clone() for c in held.caches for t in (c.k, c.v)]
        while_held = codes(static, TEXTS[:1], max_new_tokens=25, **GREEDY)
        assert all(torch.equal(a, b) for a, b in zip(before, [t for c in held.caches for t in (c.k, c.v)]))
    finally:
        pool.release(held)
    after = codes(static, TEXTS[:1], max_new_tokens=25, **GREEDY)
    assert torch.equal(while_held[0], after[0])
    assert not all(torch.equal(a, b) for a, b in zip(before, [t for c in held.caches for t in (c.k, c.v)]))


def test_a_failed_capture_falls_back_to_eager_steps():
    """Where a graph cannot be captured (here: no CUDA at all), the step still runs, eagerly, with a warning."""
    calls = []

    def fn() -> torch.Tensor:
        calls.append(1)
        return torch.tensor([len(calls)])

    step = Replayable(fn, capture=True)  # as on CUDA
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        first = step()
    assert step.capture is False and step.graph is None
    assert first.item() == len(calls) and step().item() == len(calls)  # eager from then on
