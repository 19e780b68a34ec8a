"""The one decode core (decode.py) behind both front doors: the server's scheduler gives every
request what a solo API call gives it, on either form of the steps, while requests join at
staggered steps with different sampling settings; joiners share one prefill; a step copies to
the host once."""

from __future__ import annotations

import time
import warnings
from collections import Counter

import pytest
import torch

from q3tts.api import Qwen3TTS
from q3tts.generate.decode import RowRequest
from q3tts.generate.engine import Engine
from q3tts.serving import SpeechScheduler

pytestmark = pytest.mark.filterwarnings(
    "ignore::q3tts.generate.engine.LengthCapWarning"
)  # random weights never say EOS

GREEDY = dict(do_sample=False, subtalker_dosample=False)
# (text, speaker, options, frames the previous request has made when this one is submitted)
REQUESTS = [
    ("Hello there, this is the first request.", "Vivian", dict(max_new_tokens=30, **GREEDY), 0),
    ("A sampled voice, seeded.", "Ryan", dict(max_new_tokens=25, seed=5, temperature=0.8, top_k=30,
                                             subtalker_temperature=0.7, subtalker_top_k=20, subtalker_top_p=0.9), 5),
    ("Greedy, with a strong repetition penalty.", "Serena", dict(max_new_tokens=20, repetition_penalty=1.3,
                                                                 **GREEDY), 3),
    ("Sampled from the global generator.", "Uncle_Fu", dict(max_new_tokens=18), 2),
]  # fmt: skip


@pytest.fixture(scope="module")
def models(make_tiny):
    """{"off": eager steps, "eager": the fixed-shape steps run eagerly}: the same weights."""
    eager = Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu", dtype="float32")
    fixed = Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu", dtype="float32", lazy=True)
    fixed._checkpoint = eager.checkpoint
    fixed._engine = Engine(eager.checkpoint.networks, eager.checkpoint.config, static="eager")
    return {"off": eager, "eager": fixed}


def utterance(model, text, speaker):
    return model.utterances(text, speaker=speaker, language="English")[0]


def wait_for(condition, timeout=60.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


@pytest.mark.parametrize("static", ["off", "eager"])
def test_staggered_mixed_requests_equal_solo_runs(models, static):
    model = models[static]
    solo = [model.generate_codes([utterance(model, t, s)], **kw)[0] for t, s, kw, _ in REQUESTS[:3]]
    with SpeechScheduler(model, max_batch=4, static=static) as sched:
        jobs = []
        for text, speaker, kw, after in REQUESTS:
            if jobs:
                wait_for(lambda n=after: jobs[-1].frames_generated >= n or jobs[-1].finish_reason is not None)
            jobs.append(sched.submit(utterance(model, text, speaker), chunk_frames=2, **kw))
        for job in jobs:
            assert sum(c.shape[0] for c in job.chunks()) == job.frames_generated * 1920
        stats = sched.stats()
    assert stats["mean_rows_per_step"] > 1.5, stats  # the requests really shared steps
    for job, want in zip(jobs, solo):
        assert torch.equal(job.codes(), want)
    noise = jobs[3].codes()  # the unseeded row ran beside them and is made of valid codes
    assert noise.shape[0] > 0 and int(noise.min()) >= 0


def test_the_fixed_shape_scheduler_equals_the_eager_one_for_greedy_rows(models):
    got = {}
    for static, model in models.items():
        with SpeechScheduler(model, max_batch=3, static=static) as sched:
            jobs = [sched.submit(utterance(model, t, s), **kw) for t, s, kw, _ in (REQUESTS[0], REQUESTS[2])]
            for job in jobs:
                list(job.chunks())
        got[static] = [job.codes() for job in jobs]
    assert all(torch.equal(a, b) for a, b in zip(got["off"], got["eager"]))


def test_joiners_share_one_prefill(models):
    """Requests waiting together are admitted with one prompt forward, and still equal solo runs."""
    model = models["off"]
    talker = model.checkpoint.networks.talker
    texts = [(t, s) for t, s, _, _ in REQUESTS[:3]]
    solo = [model.generate_codes([utterance(model, t, s)], max_new_tokens=12, **GREEDY)[0] for t, s in texts]
    prefills = []
    hook = talker.register_forward_hook(
        lambda m, args, out: prefills.append(args[0].shape[0]) if args[0].shape[1] > 1 else None
    )
    try:
        with SpeechScheduler(model, max_batch=4) as sched:
            with sched._cond:  # the scheduler thread waits on this lock: all three are queued before it looks
                jobs = [sched.submit(utterance(model, t, s), max_new_tokens=12, **GREEDY) for t, s in texts]
            for job in jobs:
                list(job.chunks())
    finally:
        hook.remove()
    assert prefills == [3]  # one forward over the three prompts
    assert all(torch.equal(job.codes(), want) for job, want in zip(jobs, solo))


@pytest.mark.parametrize("static", ["off", "eager"])
def test_a_step_copies_to_the_host_once(models, static, monkeypatch):
    """End-of-speech and caps are decided on the device: a step of three rows with different
    settings reads back one tensor and never asks a tensor for a Python value."""
    model = models[static]
    batch = model.engine.new_batch(4)
    reqs = []
    for text, speaker, kw, _ in REQUESTS[:3]:
        opts = model.options(**kw)
        plan = model.plan(utterance(model, text, speaker), opts=opts)
        reqs.append(RowRequest(plan.prompts[0], opts, plan.caps[0], model.generator(opts)))
    batch.admit(reqs)
    batch.step()  # first-call costs out of the way
    calls = Counter()
    for name in ("cpu", "item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        events = batch.step()
    monkeypatch.undo()
    assert len(events) == 3
    assert dict(calls) == {"cpu": 1}


def test_a_long_joiner_is_prefilled_in_chunks_between_steps(models):
    """A joining prompt runs 8 positions per step while the running row keeps generating, then
    the row joins and generates what it generates alone."""
    model = models["off"]
    text = "A much longer prompt joins later: it is run in small pieces between the steps of the others."

    def request(text, speaker, tag, max_new_tokens=12):
        opts = model.options(max_new_tokens=max_new_tokens, **GREEDY)
        plan = model.plan(utterance(model, text, speaker), opts=opts)
        return RowRequest(plan.prompts[0], opts, plan.caps[0], tag=tag)

    want = model.generate_codes([utterance(model, text, "Ryan")], max_new_tokens=12, **GREEDY)[0]
    batch = model.engine.new_batch(2)
    batch.admit([request("Hello.", "Vivian", "running", max_new_tokens=200)])
    batch.step()
    joiner = request(text, "Ryan", "joiner")
    positions = joiner.prompt.prefill.shape[0]
    assert positions > 32
    batch.admit([joiner], chunk_tokens=8)
    steps_while_prefilling, got = 0, []
    while batch.prefilling:
        batch.advance_prefills(8)
        events = batch.step()
        steps_while_prefilling += 1
        assert [e.tag for e in events] == ["running", "joiner"] if not batch.prefilling else ["running"]
        got += [e.codes for e in events if e.tag == "joiner"]
    assert steps_while_prefilling == -(-positions // 8)
    while any(tag == "joiner" for _, tag in batch.tags()):
        got += [e.codes for e in batch.step() if e.tag == "joiner" and e.codes is not None]
    assert torch.equal(torch.stack(got), want)
