"""Training losses: talker cross-entropy on codebook 0 (+ EOS) and code-predictor cross-entropy
on codebooks 1..G-1.

Labels are aligned ONCE, here, by position: the talker hidden state at position p is scored
against the codebook-0 id *fed at position p + 1* (the next frame), exactly what generation
samples from it. Nothing downstream shifts again (`F.cross_entropy` on gathered positions,
no Hugging Face-style internal shift). A second shift is the bug behind "speech gets faster
every epoch" (QwenLM/Qwen3-TTS#179): the model learns to skip a frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nn.code_predictor import CodePredictor
from ..nn.talker import Talker


def talker_targets(prefill_len: int, codes: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [T + 1] whose hidden states are scored, and their labels [T + 1].

    Position P-1 (the prompt's last, `codec_bos`) predicts frame 0; position P-1+i (the input
    of frame i-1) predicts frame i; position P-1+T (the input of the last frame) predicts EOS."""
    T = codes.shape[0]
    positions = torch.arange(prefill_len - 1, prefill_len + T, device=codes.device)
    labels = torch.cat([codes[:, 0], codes.new_tensor([eos])])
    return positions, labels


def predictor_inputs(talker: Talker, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The code predictor's teacher-forced sequence per frame, as `Engine.predict_rest` builds it
    step by step: [talker hidden, emb(code 0), emb_1(code 1), ..., emb_{G-2}(code G-2)].
    hidden [N, H] (the state that produced code 0), codes [N, G] -> [N, G, H]."""
    parts = [hidden, talker.embed_codec(codes[:, 0])]
    parts += [talker.code_predictor.embed_code(k, codes[:, k]) for k in range(1, codes.shape[1] - 1)]
    return torch.stack(parts, dim=1)


def predictor_logits(cp: CodePredictor, states: torch.Tensor) -> torch.Tensor:
    """states: the code predictor's final hidden states [N, G, h] -> logits [N, G-1, V];
    head k reads position k + 1 and predicts codebook k + 1."""
    return torch.stack([head(states[:, k + 1]) for k, head in enumerate(cp.lm_head)], dim=1)


@dataclass
class LossParts:
    """Summed cross-entropies and their counts, so micro-batches and processes average exactly."""

    talker_sum: torch.Tensor
    talker_n: torch.Tensor
    cp_sum: torch.Tensor
    cp_n: torch.Tensor

    def talker(self) -> torch.Tensor:
        return self.talker_sum / self.talker_n.clamp(min=1)

    def cp(self) -> torch.Tensor:
        return self.cp_sum / self.cp_n.clamp(min=1)

    def total(self, cp_weight: float) -> torch.Tensor:
        return self.talker() + cp_weight * self.cp()

    def as_tensor(self) -> torch.Tensor:
        return torch.stack([self.talker_sum, self.talker_n, self.cp_sum, self.cp_n]).detach().float()


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), reduction="sum")
