"""Sampling options and the token choice for the talker (codebook 0) and the code predictor."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import GenerationDefaults


@dataclass(frozen=True)
class SamplingOptions:
    do_sample: bool = True  # False: greedy (argmax) for codebook 0
    temperature: float = 0.9
    top_k: int = 50  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    repetition_penalty: float = 1.05  # on codebook-0 ids generated so far (1.0 disables)
    subtalker_dosample: bool = True  # False: greedy for codebooks 1..15
    subtalker_temperature: float = 0.9
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    max_new_tokens: int = 2048  # talker steps; at most max_new_tokens - 1 frames come out
    min_new_tokens: int = 2  # EOS is masked for this many steps
    seed: Optional[int] = None  # seeds a private torch.Generator; None draws from torch's global RNG

    @classmethod
    def from_defaults(cls, defaults: GenerationDefaults, **overrides) -> "SamplingOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        base = {k: v for k, v in dataclasses.asdict(defaults).items() if k in names}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        opts = cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})
        opts.validate()
        return opts

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        for name in ("temperature", "subtalker_temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("top_p", "subtalker_top_p"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        # torch.Generator.manual_seed takes 0..2**64-1 (negatives wrap around; larger overflows).
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    @property
    def subtalker_greedy(self) -> bool:
        return not self.subtalker_dosample or self.subtalker_temperature == 0


def penalise_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [B, V]; seen bool [B, V]. Divides positive and multiplies negative scores of seen ids."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def filtered_scores(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """logits [B, V] -> scores whose softmax is the sampling distribution: the Hugging Face warpers
    in their order (temperature, top-k, top-p), dropped ids at -inf. No host sync, so it can run
    inside a CUDA graph."""
    scores = logits / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop_sorted = cumulative <= 1 - top_p
        drop_sorted[..., -1:] = False  # always keep the most likely id
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def filtered_scores_rows(
    logits: torch.Tensor,  # [B, V]
    temperature: torch.Tensor,  # [B, 1] float, > 0
    top_k: torch.Tensor,  # [B] int64, 0 (or >= V) disables
    top_p: torch.Tensor,  # [B, 1] float, 1.0 disables
) -> torch.Tensor:
    """`filtered_scores` with each row's own settings, as tensors: rows of different requests are
    filtered in one call (and inside one CUDA graph). Row by row it keeps the same ids: the k-th
    largest score is read from a descending sort instead of topk, and top_p = 1 drops only ids
    whose probability is already exactly 0."""
    scores = logits / temperature
    vocab = scores.shape[-1]
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab)
    kth = scores.sort(dim=-1, descending=True).values.gather(-1, (k - 1)[:, None])
    scores = scores.masked_fill(scores < kth, float("-inf"))
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(-1).cumsum(-1)
    drop_sorted = cumulative <= 1 - top_p
    drop_sorted[..., -1:] = False  # always keep the most likely id
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def choose(
    logits: torch.Tensor,  # [B, V] float32
    greedy: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: Optional[torch.Generator],
) -> torch.Tensor:
    """Next ids [B]: argmax when greedy, else a draw from the filtered distribution."""
    if greedy:
        return logits.argmax(-1)
    probs = filtered_scores(logits, temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
