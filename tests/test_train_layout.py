"""Fine-tuning sequences and labels (q3tts/train/layout.py, loss.py) against generation.

* Labels are aligned once: a predictor that always outputs the next fed frame scores zero loss,
  and the same predictor scored with one extra shift (the #179 bug) does not.
* The training sequence IS generation's: on a random model, greedy codes from Engine.frames,
  fed back through the training forward pass, are the argmax at every labelled position, for
  the talker and for every code-predictor head.
* A new speaker given by its embedding (+ dialect) gives the prefill that the exported model
  builds from its speaker id.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from q3tts.generate.engine import Engine
from q3tts.generate.prompt import Utterance, build_prompt
from q3tts.generate.sampling import SamplingOptions
from q3tts.nn.layers import rope_tables
from q3tts.train.config import TrainConfig
from q3tts.train.data import Example
from q3tts.train.layout import build_sequence, utterance
from q3tts.train.loss import talker_targets
from q3tts.train.module import TrainModule, load_base, run_blocks
from q3tts.train.speakers import Speakers, assign_ids
from q3tts.train.trainer import lr_factor

EOS = 2150


def test_labels_aligned_once():
    """Position p is scored against the frame fed at p + 1 (EOS after the last frame)."""
    P, T, V = 7, 9, 3072
    codes = torch.randint(0, 2048, (T, 16))
    fed = torch.full((P + T,), -1)  # codebook-0 id fed at each position (-1: prompt)
    fed[P:] = codes[:, 0]
    next_fed = torch.cat([fed[1:], torch.tensor([EOS])])  # a perfect next-frame predictor's output
    logits = F.one_hot(next_fed.clamp(min=0), V).float() * 50.0

    positions, labels = talker_targets(P, codes, EOS)
    assert positions.tolist() == list(range(P - 1, P + T)) and labels[-1] == EOS
    assert F.cross_entropy(logits[positions], labels).item() < 1e-6
    # The double shift: the same predictor scored against the frame two positions ahead.
    assert F.cross_entropy(logits[positions[:-1]], labels[1:]).item() > 10


@pytest.fixture(scope="module")
def base(make_tiny):
    return load_base(str(make_tiny("base", seed=3, dtype=torch.float32)))


def test_training_sequence_is_generation(base):
    talker, cfg = base.networks.talker, base.config
    vec = torch.randn(cfg.talker.hidden_size)
    module = TrainModule(base, Speakers({"alice": vec}, {"alice": 3000}, {"alice": False}, set()),
                         TrainConfig(model="x", data="x", speaker_name="alice")).eval()  # fmt: skip
    ex = Example("a", "Hello world, this is a small test.", torch.zeros(0, 16, dtype=torch.long), None, "english")
    utt = module.utterance(ex)
    opts = SamplingOptions(do_sample=False, subtalker_dosample=False, repetition_penalty=1.0, max_new_tokens=25)
    engine = Engine(base.networks, cfg)
    prompt = build_prompt(talker, cfg, base.tokenizer, utt)
    with warnings.catch_warnings():  # a random model rarely stops: the length-cap warning is expected
        warnings.simplefilter("ignore")
        codes = torch.stack([step.codes[0] for step in engine.frames([prompt], opts)])

    with torch.no_grad():
        seq = build_sequence(talker, cfg, base.tokenizer, utt, codes)
        assert torch.equal(seq.inputs[: seq.prefill_len], prompt.prefill)
        x = seq.inputs[None]
        pos = torch.arange(x.shape[1])[None]
        hidden = run_blocks(talker.model.layers, talker.model.norm, x,
                            rope_tables(pos, talker.cfg.head_dim, talker.cfg.rope_theta), False)[0]  # fmt: skip
        positions, _ = talker_targets(seq.prefill_len, codes, cfg.talker.codec_eos_token_id)
        logits = talker.codec_head(hidden[positions]).float()
        seen = torch.zeros_like(logits, dtype=torch.bool)
        scores = engine.code0_scores(logits, seen, 1.0, allow_eos=True)
        scores[: opts.min_new_tokens, cfg.talker.codec_eos_token_id] = float("-inf")
        assert torch.equal(scores.argmax(-1)[:-1], codes[:, 0])
        cp_logits = module.predictor_logits(hidden[positions[:-1]], codes)
        assert torch.equal(cp_logits.argmax(-1), codes[:, 1:])
        parts = module.losses([Example("a", ex.text, codes, None, "english")])
        assert parts.talker_n.item() == codes.shape[0] + 1 and parts.cp_n.item() == codes.shape[0] * 15


def test_new_speaker_prefill_matches_exported_speaker(base):
    """Training feeds a new speaker's embedding; the exported model reads it from its codec row.
    With a dialect, the language id becomes the dialect's, as generation's rule does."""
    talker = copy.deepcopy(base.networks.talker)
    cfg = copy.deepcopy(base.config)
    vec = torch.randn(cfg.talker.hidden_size)
    sid = assign_ids(cfg.talker, {"bob": None})["bob"]
    for language, dialect in [("auto", "sichuan_dialect"), ("chinese", "sichuan_dialect"), ("english", None),
                              ("auto", None)]:  # fmt: skip
        train_utt = utterance("你好，世界。", language, xvector=vec, dialect=dialect)
        trained = build_prompt(talker, cfg, base.tokenizer, train_utt).prefill
        exported_cfg = copy.deepcopy(cfg)
        exported_cfg.talker.spk_id["bob"] = sid
        exported_cfg.talker.spk_is_dialect["bob"] = dialect or False
        with torch.no_grad():
            talker.model.codec_embedding.weight[sid] = vec
        generated = build_prompt(
            talker, exported_cfg, base.tokenizer, Utterance("你好，世界。", language, speaker="bob")
        ).prefill
        assert torch.equal(trained, generated), (language, dialect)


def test_speaker_ids_and_schedule(base):
    t = base.config.talker
    ids = assign_ids(t, {"a": None, "b": 3001, "c": None})
    assert ids == {"a": 3000, "b": 3001, "c": 3002}
    with pytest.raises(ValueError):
        assign_ids(t, {"x": t.codec_eos_token_id})
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(1 / 11)
    assert lr_factor(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
