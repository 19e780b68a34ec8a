"""Continuous batching: requests that share steps get what they would get alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from q3tts.api import InputError, Qwen3TTS
from q3tts.serving import QueueFull, SchedulerClosed, SpeechScheduler

GREEDY = dict(do_sample=False, subtalker_dosample=False)
pytestmark = pytest.mark.filterwarnings(
    "ignore::q3tts.generate.engine.LengthCapWarning"
)  # random weights never say EOS


@pytest.fixture(scope="module")
def tts(make_tiny):
    return Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def base(make_tiny):
    return Qwen3TTS.from_pretrained(make_tiny("base"), device="cpu", dtype="float32")


def collect(job) -> np.ndarray:
    return np.concatenate(list(job.chunks()) or [np.zeros(0, np.float32)])


def solo(tts, text, speaker, max_new, **kw):
    (wav,), _ = tts.generate_custom_voice(text, speaker=speaker, language="English", max_new_tokens=max_new, **kw)
    return wav


def test_single_request_equals_the_api(tts):
    with SpeechScheduler(tts, max_batch=4) as sched:
        utt = tts.utterances("Hello from the scheduler.", speaker="Vivian", language="English")[0]
        job = sched.submit(utt, chunk_frames=3, max_new_tokens=20, **GREEDY)
        wav = collect(job)
    assert job.finish_reason in ("stop", "length") and job.first_chunk_seconds is not None
    assert np.max(np.abs(wav - solo(tts, "Hello from the scheduler.", "Vivian", 20, **GREEDY))) < 1e-5


def test_concurrent_requests_share_steps_and_match_solo_runs(tts):
    texts = ["Short.", "A somewhat longer sentence to speak.", "Numbers one two three.", "The end."]
    speakers = ["Vivian", "Ryan", "Serena", "Uncle_Fu"]
    lengths = [12, 30, 21, 17]
    expected = [solo(tts, t, s, n, **GREEDY) for t, s, n in zip(texts, speakers, lengths)]
    with SpeechScheduler(tts, max_batch=3) as sched:  # 4 jobs, 3 slots: one waits and joins later
        jobs = [sched.submit(tts.utterances(t, speaker=s, language="English")[0], max_new_tokens=n, **GREEDY)
                for t, s, n in zip(texts, speakers, lengths)]  # fmt: skip
        results = [None] * 4

        def drain(i):
            results[i] = collect(jobs[i])

        threads = [threading.Thread(target=drain, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stats = sched.stats()
    assert stats["mean_rows_per_step"] > 1.5, stats  # the steps really were shared
    for got, want in zip(results, expected):
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) < 1e-4


def test_seeded_sampling_in_a_batch_matches_solo(tts):
    utt = tts.utterances("Sampled speech.", speaker="Ryan", language="English")[0]
    want = solo(tts, "Sampled speech.", "Ryan", 15, seed=7)
    with SpeechScheduler(tts, max_batch=4) as sched:
        other = sched.submit(tts.utterances("Another one.", speaker="Vivian")[0], max_new_tokens=15, seed=3)
        job = sched.submit(utt, max_new_tokens=15, seed=7)
        got = collect(job)
        collect(other)
    assert np.max(np.abs(got - want)) < 1e-4


def test_long_text_pieces_match_the_api(tts):
    text = "First piece is here. Second piece follows. Third piece ends it."
    kw = dict(max_new_tokens=9, max_piece_tokens=6, **GREEDY)
    with SpeechScheduler(tts) as sched:
        got = collect(sched.submit(tts.utterances(text, speaker="Vivian", language="English")[0], **kw))
    (want,), _ = tts.generate_custom_voice(text, speaker="Vivian", language="English", **kw)
    assert got.shape == want.shape and np.max(np.abs(got - want)) < 1e-4
    assert got.shape[0] > 8 * 1920


def test_in_context_clone_matches_the_api(base):
    t = np.arange(int(24000 * 1.4)) / 24000
    clip = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    prompt = base.create_voice_clone_prompt((clip, 24000), ref_text="A short reference.")
    utt = base.utterances("Cloned speech here.", language="English", voice_clone_prompt=prompt)[0]
    with SpeechScheduler(base) as sched:
        got = collect(sched.submit(utt, max_new_tokens=12, **GREEDY))
    (want,), _ = base.generate_voice_clone("Cloned speech here.", language="English", voice_clone_prompt=prompt,
                                           max_new_tokens=12, **GREEDY)  # fmt: skip
    assert got.shape == want.shape and np.max(np.abs(got - want)) < 1e-4


def test_cancel_frees_the_slot_within_a_step(tts):
    with SpeechScheduler(tts, max_batch=2) as sched:
        job = sched.submit(tts.utterances("Go on for a long time.", speaker="Vivian")[0], max_new_tokens=2000,
                           max_piece_tokens=0, **GREEDY)  # fmt: skip
        it = job.chunks()
        next(it)
        next(it)
        job.cancel()
        at_cancel = job.frames_generated
        deadline = time.time() + 10
        while sched.stats()["active"] and time.time() < deadline:
            time.sleep(0.01)
        assert sched.stats()["active"] == 0
        frames = job.frames_generated
        time.sleep(0.2)
        # at most the step already running when cancel() returned adds a frame
        assert job.frames_generated == frames <= at_cancel + 1 and job.finish_reason == "cancelled"
        # Abandoning the iterator (a client that goes away) cancels too.
        job2 = sched.submit(tts.utterances("Again.", speaker="Vivian")[0], max_new_tokens=2000, **GREEDY)
        it2 = job2.chunks()
        next(it2)
        it2.close()
        assert job2.cancelled.is_set()


def test_concurrent_submits_never_overfill_the_queue(tts):
    """20 threads submit at once while the only batch slot is busy: exactly max_queue get in."""
    sched = SpeechScheduler(tts, max_batch=1, max_queue=3).start()
    utt = tts.utterances("Busy.", speaker="Vivian")[0]
    try:
        running = sched.submit(utt, max_new_tokens=2000, max_piece_tokens=0, **GREEDY)
        deadline = time.time() + 10
        while sched.stats()["active"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        start, outcomes = threading.Barrier(20), []

        def submit():
            start.wait()
            try:
                sched.submit(utt, max_new_tokens=5, **GREEDY)
                outcomes.append("queued")
            except QueueFull:
                outcomes.append("full")

        threads = [threading.Thread(target=submit) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("queued") == 3 and outcomes.count("full") == 17
        assert running.finish_reason is None  # still holding the slot throughout
    finally:
        sched.close()


def test_queue_full_and_closed(tts):
    sched = SpeechScheduler(tts, max_batch=1, max_queue=1).start()
    utt = tts.utterances("Busy.", speaker="Vivian")[0]
    try:
        first = sched.submit(utt, max_new_tokens=500, **GREEDY)
        deadline = time.time() + 10
        while sched.stats()["active"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        second = sched.submit(utt, max_new_tokens=5, **GREEDY)  # waits in the queue
        with pytest.raises(QueueFull):
            sched.submit(utt, max_new_tokens=5, **GREEDY)
        with pytest.raises(InputError):
            sched.submit(utt, bogus_option=1)
    finally:
        sched.close()
    assert first.finish_reason == "cancelled" and second.finish_reason == "cancelled"
    with pytest.raises(SchedulerClosed):
        list(second.chunks())
    with pytest.raises(SchedulerClosed):
        sched.submit(utt)
