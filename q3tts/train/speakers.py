"""Speakers of a fine-tuning run.

A speaker the checkpoint already has (a CustomVoice model's `spk_id`) is trained through its
own codec-embedding row. A new speaker gets:
  * an embedding: the mean, in float32, of the speaker encoder's vectors over the speaker's
    clips (computed in `prepare`; averaging in bf16 mixes speakers up, vspeech/Qwen3-TTS-Train#3),
    rounded once to the export dtype so training sees the very vector generation will read;
  * a free codec id (the official recipe uses 3000; we take the first free id from 3000 up, then
    below it): an id in the talker's control range [codebook_size, vocab) that no control,
    language or speaker entry uses. Generation never samples those ids;
  * its name in `talker_config.spk_id` (and `spk_is_dialect`) of the exported config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from ..config import TalkerConfig
from .config import ConfigError
from .data import Example

FIRST_SPEAKER_ID = 3000


@dataclass
class Speakers:
    new: dict = field(default_factory=dict)  # name -> embedding [H] float32
    ids: dict = field(default_factory=dict)  # name -> codec id (new speakers)
    dialects: dict = field(default_factory=dict)  # name -> dialect key or False (new speakers)
    existing: set = field(default_factory=set)  # names already in the checkpoint

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: vec.contiguous() for name, vec in self.new.items()}

    def meta(self) -> dict:
        return {"ids": self.ids, "dialects": self.dialects, "existing": sorted(self.existing)}

    @classmethod
    def restore(cls, tensors: dict, meta: dict) -> "Speakers":
        return cls(dict(tensors), dict(meta["ids"]), dict(meta["dialects"]), set(meta["existing"]))


def used_ids(t: TalkerConfig) -> set[int]:
    ids = {t.codec_pad_id, t.codec_bos_id, t.codec_eos_token_id, t.codec_think_id, t.codec_nothink_id,
           t.codec_think_bos_id, t.codec_think_eos_id}  # fmt: skip
    return ids | set(t.codec_language_id.values()) | set(t.spk_id.values())


def assign_ids(t: TalkerConfig, wanted: dict[str, Optional[int]]) -> dict[str, int]:
    """name -> free codec id; an explicit id must be free and inside the control range."""
    used = used_ids(t)
    lo, hi = t.codebook_size, t.vocab_size
    out = {}
    for name, sid in wanted.items():
        if sid is not None:
            if not lo <= sid < hi or sid in used:
                raise ConfigError(f"speaker {name!r}: id {sid} is taken or outside [{lo}, {hi})")
            out[name] = sid
            used.add(sid)
    candidates = [
        i for i in [*range(max(lo, FIRST_SPEAKER_ID), hi), *range(lo, min(FIRST_SPEAKER_ID, hi))] if i not in used
    ]
    for name, sid in wanted.items():
        if sid is None:
            if not candidates:
                raise ConfigError("no free speaker id left in the talker vocab")
            out[name] = candidates.pop(0)
    return out


def mean_embeddings(examples: Iterable[Example], default_name: str) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Each item's speaker name, and the float32 mean of each speaker's stored embeddings
    (summed in float64 over one pass, so the examples may be streamed)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    names = set()
    for e in examples:
        name = speaker_of(e, default_name)
        names.add(name)
        if e.xvector is None:
            continue
        sums[name] = sums.get(name, 0) + e.xvector.to(torch.float64)
        counts[name] = counts.get(name, 0) + 1
    return sorted(names), {n: (sums[n] / counts[n]).float() for n in sums}


def plan_speakers(examples: Iterable[Example], talker: TalkerConfig, default_name: str, options,
                  round_to: torch.dtype) -> Speakers:  # fmt: skip
    """Speakers of the training examples. `options(name)` -> SpeakerOptions (dialect, id)."""
    existing = {k.lower() for k in talker.spk_id}
    names, vectors = mean_embeddings(examples, default_name.lower())
    new_names = [n for n in names if n not in existing]
    missing = [n for n in new_names if n not in vectors]
    if missing:
        raise ConfigError(f"new speaker(s) {', '.join(missing)} have no speaker embeddings in the prepared data: "
                         "prepare it from a Base model, or pass --speaker-model BASE to prepare")  # fmt: skip
    opts = {n: options(n) for n in new_names}
    for n, o in opts.items():
        if o.dialect and o.dialect not in talker.codec_language_id:
            raise ConfigError(f"speaker {n!r}: dialect {o.dialect!r} is not in codec_language_id")
    ids = assign_ids(talker, {n: o.id for n, o in opts.items()})
    new = {n: vectors[n].to(round_to).float() for n in new_names}
    return Speakers(new, ids, {n: opts[n].dialect or False for n in new_names}, existing & set(names))


def speaker_of(example: Example, default_name: str) -> str:
    return (example.speaker or default_name).lower()
